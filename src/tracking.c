/*-------------------------------------------------------------------------
 *
 * tracking.c
 *		  The tracking worker: keeps the shared-memory local cache
 *		  (local_cache.c) coherent with Redis through server-assisted
 *		  client-side caching (requires shared_preload_libraries and
 *		  redis_cache.local_cache_size > 0).
 *
 * Design rules:
 *
 * - One background worker, "redis_cache tracking worker", started with
 *   the postmaster (a standby reads through the local cache too) and
 *   restarted after 1 s.  It subscribes once per master and tells
 *   local_cache.c what happens: every invalidated key, the null message
 *   of FLUSHALL/FLUSHDB, a heartbeat per round of PINGs all masters
 *   answered, the confirmation that every master tracks, and every loss.
 *   local_cache.c decides what is served; this file never serves.
 *
 * - A subscription: a socket of its own to the master
 *   (redis_open_subscriber(): the TLS, AUTH, SELECT and ROLE of the
 *   data connection), RESP2 (hiredis 0.14 has no RESP3), CLIENT ID, then
 *   CLIENT TRACKING on REDIRECT <its own id> BCAST PREFIX p ... and
 *   SUBSCRIBE __redis__:invalidate (a client may redirect to itself: the
 *   invalidations come as pub/sub messages on the same socket).  The
 *   prefixes are local_cache.c's (redis_local_tracking_prefixes()), read
 *   at each subscription, after each SIGHUP and at each topology check
 *   (they name the query namespace, whose timeline a promotion changes);
 *   none, nothing is tracked.  The worker subscribes once the timeline is
 *   known (a standby's, once replay has begun).  Tracking is confirmed
 *   only once the +OK and the subscribe reply of every master have come:
 *   then redis_local_tracking_confirmed() empties the local cache, so
 *   nothing read before the subscriptions existed survives them.
 *
 * - Which masters: this process's own connection (connection.c) finds
 *   them, as for any other caller: the server it reached (Sentinel
 *   included: the sentinels are polled as in worker.c), or a Redis
 *   Cluster's masters: those of cluster.c's map, checked against CLUSTER
 *   SLOTS read anew, and those CLUSTER NODES names that own no slot yet (a
 *   master being added receives keys by migration, and reads by ASK,
 *   before CLUSTER SLOTS names it).  The topology is checked every
 *   RC_TRACKING_TOPOLOGY_MS: a renewed connection (its serial), another
 *   run_id or cluster identity, other masters or another address is a
 *   loss, and everything is renewed (so is a slot moving to a master that
 *   owned none: conservative, it costs one emptying of the local cache).
 *
 * - Any doubt is a loss, reported by redis_local_tracking_lost() (once
 *   per confirmation) before the subscriptions are closed: a socket error
 *   or end of file, a reply or message that is not what Redis sends
 *   (Redis is untrusted; a PUBLISH to the channel by any client is one
 *   too, as is a message over transport.c's bounds), a PING unanswered
 *   after max(command_timeout_ms, RC_LOCAL_HEARTBEAT_MS) (a stopped
 *   Redis keeps its sockets open), a subscription not confirmed within
 *   that time, a topology change, a change of prefixes.  The connection
 *   is dropped too (redis_disconnect()), so the next discovery reads the
 *   topology anew.  Faults are retried after RC_TRACKING_RETRY_MS,
 *   doubled at each failure in a row up to RC_TRACKING_MAX_RETRY_MS, and
 *   give one WARNING per RC_WARNING_INTERVAL_MS; a topology change is a
 *   LOG line and renewed at once.
 *
 * - Waits: one WaitEventSet (latch, postmaster death, every subscriber
 *   socket), whose timeout is the next heartbeat, check or retry; the
 *   subscribers are read without waiting (transport.c's streams).  The
 *   only blocking calls are connection.c's and transport.c's round trips
 *   (discovery, the handshake, CLIENT ID), bounded by connect_timeout_ms
 *   or command_timeout_ms and ended by SIGTERM (ShutdownRequestPending).
 *
 * - Memory: sockets live in TopMemoryContext (transport.c), the
 *   subscriptions, prefixes and wait set in tracking_context; everything
 *   else of an iteration in loop_context, reset each time round, and the
 *   replies of a batch in batch_context.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "redis_cache.h"

#define RC_TRACKING_CHANNEL		"__redis__:invalidate"

/* Retry after a fault as worker.c does, then less often (log lines). */
#define RC_TRACKING_RETRY_MS	500
#define RC_TRACKING_MAX_RETRY_MS	2000
/* The topology is checked this often while tracking. */
#define RC_TRACKING_TOPOLOGY_MS	1000
/* What an ACL denial lacks, for the hint. */
#define RC_TRACKING_ACL_HINT	"The local cache needs, for the user of redis_cache.user: ACL SETUSER <user> +ping +cluster|slots +cluster|nodes +client|id +client|tracking +subscribe &__redis__:invalidate"

/* More masters than this is not what Redis sends (cluster.c's bound). */
#define RC_TRACKING_MAX_MASTERS	1000

/* Replies read from one socket at a time, and batches per iteration. */
#define RC_TRACKING_BATCH		64
#define RC_TRACKING_DRAIN_BATCHES	64

/* One master's subscription. */
typedef struct Subscriber
{
	char		host[256];
	int			port;
	char		run_id[64];		/* from its handshake; "" if unknown */
	RedisSocket *socket;
	int			awaiting;		/* replies due: +OK, subscribe; 0 when done */
	bool		pong_due;		/* the heartbeat round's PING unanswered */
	int			wait_pos;		/* its position in the wait set */
	uint32		wait_events;	/* what the wait set waits for */
} Subscriber;

/* A master as discovered. */
typedef struct Master
{
	char		host[256];
	int			port;
	char		run_id[64];		/* last seen (known masters only) */
} Master;

/* The worker's state; its allocations in tracking_context. */
typedef struct Tracking
{
	int			nprefixes;
	char	  **prefixes;		/* those subscribed with, or last read */
	bool		no_prefixes;	/* nothing to track until the next SIGHUP */
	int			nsubs;
	Subscriber *subs;			/* NULL when not subscribed */
	bool		is_cluster;
	bool		confirmed;		/* redis_local_tracking_confirmed() called */
	uint64		serial;			/* redis_connection_serial() at discovery */
	char		identity[64];	/* run_id or cluster identity at discovery */
	TimestampTz subscribed_at;	/* subscriptions sent */
	TimestampTz next_attempt;	/* while not subscribed */
	TimestampTz next_check;		/* topology check */
	TimestampTz round_sent;		/* heartbeat round in flight; 0 when none */
	TimestampTz next_round;
	uint64		round_seq;
	char		round_token[32];	/* PING's argument, echoed in the pong */
	WaitEventSet *wait_set;		/* NULL when not subscribed */
	bool		drain_again;	/* a socket may have more: do not wait */
	int			failures;		/* consecutive, since the last confirmation */
	TimestampTz last_warning;
	const char *loss_hint;		/* for the WARNING of the coming loss */
	int			nknown;			/* masters last subscribed to, */
	Master	   *known;			/* to tell restarts in the log */
} Tracking;

static Tracking trk;
static MemoryContext tracking_context = NULL;
static MemoryContext batch_context = NULL;

void		redis_cache_tracking_main(Datum main_arg);

/* Bound of a heartbeat round and of a subscription's confirmation. */
static int
reply_timeout_ms(void)
{
	return Max(redis_cache_command_timeout_ms, RC_LOCAL_HEARTBEAT_MS);
}

/*
 * A round trip on this process's connection, for discovery: no session
 * check (nothing is flushed from here), no breaker (the worker always
 * looks), and whatever redis_cache.enabled says (a session may enable
 * the cache: its local entries must be coherent then too).
 */
static bool
run_internal(RedisCommand *cmd, RedisReply **reply)
{
	return redis_execute(cmd, 1, reply,
						 RC_EXEC_INTERNAL | RC_EXEC_NO_ERROR |
						 RC_EXEC_SKIP_BREAKER | RC_EXEC_IGNORE_ENABLED);
}

/* Whether r is a string (bulk) equal to the NUL-terminated s. */
static bool
reply_is(const RedisReply *r, const char *s)
{
	return r->type == RC_REPLY_STRING && r->len == strlen(s) &&
		memcmp(r->str, s, r->len) == 0;
}

/* "host:port" split at its last colon (an IPv6 address has several). */
static bool
split_address(const char *address, Master *m)
{
	const char *colon = strrchr(address, ':');
	size_t		len;

	if (colon == NULL)
		return false;
	len = colon - address;
	if (len == 0 || len >= sizeof(m->host))
		return false;
	memcpy(m->host, address, len);
	m->host[len] = '\0';
	m->port = atoi(colon + 1);
	return m->port > 0 && m->port <= 65535;
}

/* The index of host:port in masters, or -1. */
static int
find_master(const Master *masters, int n, const char *host, int port)
{
	int			i;

	for (i = 0; i < n; i++)
		if (masters[i].port == port && strcmp(masters[i].host, host) == 0)
			return i;
	return -1;
}

/*
 * The masters a CLUSTER SLOTS reply names, deduplicated, into *masters
 * (palloc'd); an empty host is that of the node asked (asked_host), an
 * unknown one ("?") is skipped as cluster.c does.  NULL, or why the
 * reply is not understood.
 */
static const char *
parse_cluster_masters(const RedisReply *reply, const char *asked_host,
					  Master **masters, int *nmasters)
{
	int			n = 0;
	size_t		i;

	if (reply->type != RC_REPLY_ARRAY)
		return "CLUSTER SLOTS did not return an array";
	*masters = palloc0(sizeof(Master) * Max(reply->elements, 1));
	for (i = 0; i < reply->elements; i++)
	{
		const RedisReply *e = reply->element[i];
		const RedisReply *m;
		const char *host;
		long long	port;

		if (e->type != RC_REPLY_ARRAY || e->elements < 3 ||
			e->element[2]->type != RC_REPLY_ARRAY ||
			e->element[2]->elements < 2 ||
			e->element[2]->element[0]->type != RC_REPLY_STRING ||
			e->element[2]->element[1]->type != RC_REPLY_INTEGER)
			return "CLUSTER SLOTS returned a slot range that is not understood";
		m = e->element[2];
		port = m->element[1]->integer;
		if (port <= 0 || port > 65535 || m->element[0]->len >= 256 ||
			strlen(m->element[0]->str) != m->element[0]->len)
			return "CLUSTER SLOTS returned an address that is not understood";
		host = m->element[0]->len == 0 ? asked_host : m->element[0]->str;
		if (strcmp(host, "?") == 0)
			continue;
		if (find_master(*masters, n, host, (int) port) >= 0)
			continue;
		strlcpy((*masters)[n].host, host, sizeof((*masters)[n].host));
		(*masters)[n].port = (int) port;
		n++;
	}
	if (n == 0)
		return "CLUSTER SLOTS named no master";
	*nmasters = n;
	return NULL;
}

/*
 * The i-th space-separated field of the line [line, end) into out
 * (outlen bytes); false when there is none or it does not fit.
 */
static bool
line_field(const char *line, const char *end, int i, char *out, size_t outlen)
{
	const char *p = line;

	for (;;)
	{
		const char *f;

		while (p < end && *p == ' ')
			p++;
		if (p == end)
			return false;
		f = p;
		while (p < end && *p != ' ')
			p++;
		if (i-- == 0)
		{
			if ((size_t) (p - f) >= outlen)
				return false;
			memcpy(out, f, p - f);
			out[p - f] = '\0';
			return true;
		}
	}
}

/* Whether the comma-separated flags include flag. */
static bool
has_flag(const char *flags, const char *flag)
{
	size_t		len = strlen(flag);
	const char *p = flags;

	while (*p != '\0')
	{
		size_t		n = strcspn(p, ",");

		if (n == len && strncmp(p, flag, len) == 0)
			return true;
		p += n;
		if (*p == ',')
			p++;
	}
	return false;
}

/*
 * Add to *masters (*nmasters of them, room for max) the masters a CLUSTER
 * NODES reply names that own no slot: a master being added gets keys by
 * migration (ASK redirects reads there) before CLUSTER SLOTS names it.
 * Nodes failing, without address or in handshake are left out.  Their
 * address is the one CLUSTER SLOTS uses for the others: the IP, or the
 * announced hostname when the slot owners are named by theirs.  NULL, or
 * why the reply is not understood.
 */
static const char *
add_slotless_masters(const RedisReply *reply, const char *asked_host,
					 Master *masters, int *nmasters, int max)
{
	const char *p;
	const char *text_end;
	bool		by_ip = false;
	int			pass;

	if (reply->type != RC_REPLY_STRING)
		return "CLUSTER NODES did not return text";
	text_end = reply->str + reply->len;

	/* pass 0: how the slot owners are named; pass 1: the others */
	for (pass = 0; pass < 2; pass++)
	{
		for (p = reply->str; p < text_end;)
		{
			const char *end = memchr(p, '\n', text_end - p);
			char		address[600];
			char		flags[200];
			char		slot[64];
			char		host[256];
			const char *at;
			const char *colon;
			const char *comma;
			bool		owns_slots = false;
			int			port;
			int			f;

			if (end == NULL)
				end = text_end;
			if (!line_field(p, end, 1, address, sizeof(address)) ||
				!line_field(p, end, 2, flags, sizeof(flags)) ||
				!line_field(p, end, 7, slot, sizeof(slot)))
			{
				if (end > p && !(end - p == 1 && *p == '\r'))
					return "CLUSTER NODES returned a line that is not understood";
				p = end + 1;
				continue;
			}
			/* slots, or "[slot->-id]" (migrations, on the node asked only) */
			for (f = 8; line_field(p, end, f, slot, sizeof(slot)); f++)
				if (slot[0] != '[')
					owns_slots = true;
			p = end + 1;

			if (!has_flag(flags, "master") || has_flag(flags, "fail") ||
				has_flag(flags, "fail?") || has_flag(flags, "noaddr") ||
				has_flag(flags, "handshake"))
				continue;
			/* ip:port@cport[,hostname] */
			at = strchr(address, '@');
			if (at == NULL)
				return "CLUSTER NODES returned an address that is not understood";
			comma = strchr(at, ',');
			colon = at;
			while (colon > address && *colon != ':')
				colon--;
			port = atoi(colon + 1);
			if (*colon != ':' || port <= 0 || port > 65535 ||
				(size_t) (colon - address) >= sizeof(host))
				return "CLUSTER NODES returned an address that is not understood";
			memcpy(host, address, colon - address);
			host[colon - address] = '\0';
			if (host[0] == '\0')
				strlcpy(host, asked_host, sizeof(host));

			if (pass == 0)
			{
				if (owns_slots && find_master(masters, *nmasters, host, port) >= 0)
					by_ip = true;
				continue;
			}
			if (owns_slots)
				continue;
			/* ",hostname", then (Redis 7.2) ",name=value" fields */
			if (!by_ip && comma != NULL)
			{
				size_t		n = strcspn(comma + 1, ",");

				if (n > 0 && n < sizeof(host) &&
					memchr(comma + 1, '=', n) == NULL)
				{
					memcpy(host, comma + 1, n);
					host[n] = '\0';
				}
			}
			if (find_master(masters, *nmasters, host, port) >= 0)
				continue;
			if (*nmasters == max)
				return "CLUSTER NODES named too many masters";
			strlcpy(masters[*nmasters].host, host, sizeof(masters[0].host));
			masters[*nmasters].port = port;
			(*nmasters)++;
		}
	}
	return NULL;
}

/*
 * Find the masters through this process's connection, into *masters
 * (palloc'd), with the connection's serial and the identity (run_id, or a
 * cluster's identity) they were found under.  Returns NULL, or why not;
 * *fault says whether that is a fault (else the topology changed while it
 * looked: the connection was dropped, look again at once).
 */
static const char *
discover(Master **masters, int *nmasters, bool *is_cluster, uint64 *serial,
		 char *identity, size_t identity_len, bool *fault)
{
	RedisCommand cmd;
	RedisCommand cmds[2];
	RedisReply *reply;
	RedisReply *replies[2];
	RedisCluster *cluster;
	char	  **addresses;
	int		   *slots;
	int			naddresses;
	Master	   *mapped;
	Master	   *owners;
	int			nowners;
	const char *why;
	int			i;

	*fault = true;
	redis_cmd_init(&cmd, "PING", 0);
	if (!run_internal(&cmd, &reply))
		return psprintf("Redis could not be reached: %s", redis_fault_message());
	if (reply->type == RC_REPLY_ERROR)
	{
		if (redis_reply_error_kind(reply) == RC_ERR_NOPERM)
			trk.loss_hint = RC_TRACKING_ACL_HINT;
		return psprintf("Redis refused PING: %s",
						redis_printable(reply->str, reply->len));
	}
	*serial = redis_connection_serial();
	cluster = redis_connection_cluster();
	*is_cluster = cluster != NULL;
	if (cluster == NULL)
	{
		*masters = palloc0(sizeof(Master));
		strlcpy((*masters)[0].host, redis_server_host(), sizeof((*masters)[0].host));
		(*masters)[0].port = redis_server_port();
		*nmasters = 1;
		strlcpy(identity, redis_connection_run_id(), identity_len);
		return NULL;
	}

	/* the client's map may be older than the cluster's: read it now */
	strlcpy(identity, redis_cluster_identity(cluster), identity_len);
	naddresses = redis_cluster_nodes(cluster, &addresses, &slots);
	if (naddresses == 0)
		return "the Redis Cluster client names no master";
	mapped = palloc0(sizeof(Master) * naddresses);
	for (i = 0; i < naddresses; i++)
		if (!split_address(addresses[i], &mapped[i]))
			return psprintf("the Redis Cluster client names a master \"%s\" that is not understood",
							addresses[i]);
	redis_cmd_init(&cmds[0], "CLUSTER", 1);
	redis_cmd_str(&cmds[0], "SLOTS");
	redis_cmd_on_node(&cmds[0], 0);
	redis_cmd_init(&cmds[1], "CLUSTER", 1);
	redis_cmd_str(&cmds[1], "NODES");
	redis_cmd_on_node(&cmds[1], 0);
	if (!redis_execute(cmds, 2, replies,
					   RC_EXEC_INTERNAL | RC_EXEC_NO_ERROR |
					   RC_EXEC_SKIP_BREAKER | RC_EXEC_IGNORE_ENABLED))
		return psprintf("Redis could not be reached: %s", redis_fault_message());
	for (i = 0; i < 2; i++)
		if (replies[i]->type == RC_REPLY_ERROR)
		{
			if (redis_reply_error_kind(replies[i]) == RC_ERR_NOPERM)
				trk.loss_hint = RC_TRACKING_ACL_HINT;
			return psprintf("Redis refused CLUSTER %s: %s",
							i == 0 ? "SLOTS" : "NODES",
							redis_printable(replies[i]->str, replies[i]->len));
		}
	why = parse_cluster_masters(replies[0], mapped[0].host, &owners, &nowners);
	if (why != NULL)
	{
		redis_stats_add(RC_STAT_ERRORS_PROTOCOL, 1);
		return why;
	}
	*fault = false;				/* Redis answered: the topology changed */
	if (redis_connection_serial() != *serial)
		return "the connection to Redis was renewed during discovery";
	for (i = 0; i < nowners; i++)
		if (find_master(mapped, naddresses, owners[i].host, owners[i].port) < 0)
			break;
	if (i < nowners || nowners != naddresses)
	{
		redis_disconnect();
		return "the masters of the Redis Cluster changed";
	}

	/* the slot owners first, then the masters that own none yet */
	*masters = palloc0(sizeof(Master) * RC_TRACKING_MAX_MASTERS);
	*nmasters = Min(nowners, RC_TRACKING_MAX_MASTERS);
	memcpy(*masters, owners, sizeof(Master) * *nmasters);
	why = add_slotless_masters(replies[1], mapped[0].host, *masters, nmasters,
							   RC_TRACKING_MAX_MASTERS);
	if (why != NULL)
	{
		*fault = true;
		redis_stats_add(RC_STAT_ERRORS_PROTOCOL, 1);
		return why;
	}
	return NULL;
}

/* A rate-limited WARNING about tracking (hint may be NULL). */
static void
tracking_warning(const char *message, const char *hint)
{
	if (!redis_warning_due(&trk.last_warning))
	{
		elog(DEBUG1, "redis_cache tracking: %s", message);
		return;
	}
	ereport(WARNING,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("redis_cache tracking: %s", message),
			 errdetail("Nothing is served from the local cache until the invalidations of every master are tracked again."),
			 hint ? errhint("%s", hint) : 0));
}

/*
 * Why an error reply to a tracking command (what) is a loss; an ACL
 * denial gets the hint of what the user of redis_cache.user lacks, for
 * the WARNING of the loss that follows.
 */
static char *
refused(Subscriber *sub, const RedisReply *reply, const char *what)
{
	redis_stats_add(RC_STAT_ERRORS_REPLY, 1);
	if (redis_reply_error_kind(reply) == RC_ERR_NOPERM)
		trk.loss_hint = RC_TRACKING_ACL_HINT;
	return psprintf("Redis at %s:%d refused %s: %s", sub->host, sub->port,
					what, redis_printable(reply->str, reply->len));
}

/* Close and free the subscriptions, noting their masters' run_ids. */
static void
close_subscribers(void)
{
	int			i;

	if (trk.wait_set != NULL)
		FreeWaitEventSet(trk.wait_set);
	trk.wait_set = NULL;
	if (trk.subs == NULL)
		return;

	if (trk.known != NULL)
		pfree(trk.known);
	trk.known = MemoryContextAllocZero(tracking_context,
									   sizeof(Master) * trk.nsubs);
	trk.nknown = 0;
	for (i = 0; i < trk.nsubs; i++)
	{
		Subscriber *sub = &trk.subs[i];

		redis_socket_close(sub->socket);
		sub->socket = NULL;
		if (sub->run_id[0] != '\0')
		{
			Master	   *m = &trk.known[trk.nknown++];

			strlcpy(m->host, sub->host, sizeof(m->host));
			m->port = sub->port;
			strlcpy(m->run_id, sub->run_id, sizeof(m->run_id));
		}
	}
	pfree(trk.subs);
	trk.subs = NULL;
	trk.nsubs = 0;
}

/*
 * Tracking is lost (why): tell local_cache.c (unless nothing was confirmed
 * since the last loss: nothing is served then), close every subscription,
 * drop the connection so that the next discovery reads the topology anew,
 * and try again at once (a topology change) or after a fault, after
 * RC_TRACKING_RETRY_MS, doubled at each failure in a row up to
 * RC_TRACKING_MAX_RETRY_MS.
 */
static void
lose(const char *why, bool fault)
{
	int			delay = 0;

	if (trk.confirmed)
		redis_local_tracking_lost(why);
	if (fault)
		tracking_warning(why, trk.loss_hint);
	else
		ereport(LOG,
				(errmsg("redis_cache tracking: renewing the subscriptions: %s", why)));
	trk.loss_hint = NULL;
	close_subscribers();
	redis_disconnect();
	trk.confirmed = false;
	trk.round_sent = 0;
	if (fault)
	{
		delay = RC_TRACKING_RETRY_MS << Min(trk.failures, 8);
		delay = Min(delay, RC_TRACKING_MAX_RETRY_MS);
		trk.failures++;
	}
	trk.next_attempt = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay);
}

/* Whether two prefix lists are the same, in the same order. */
static bool
same_prefixes(char **a, int na, char **b, int nb)
{
	int			i;

	if (na != nb)
		return false;
	for (i = 0; i < na; i++)
		if (strcmp(a[i], b[i]) != 0)
			return false;
	return true;
}

/* Keep prefixes (palloc'd by local_cache.c) as the current list. */
static void
set_prefixes(char **prefixes, int n)
{
	int			i;

	for (i = 0; i < trk.nprefixes; i++)
		pfree(trk.prefixes[i]);
	if (trk.prefixes != NULL)
		pfree(trk.prefixes);
	trk.prefixes = MemoryContextAllocZero(tracking_context,
										  sizeof(char *) * Max(n, 1));
	for (i = 0; i < n; i++)
		trk.prefixes[i] = MemoryContextStrdup(tracking_context, prefixes[i]);
	trk.nprefixes = n;
	trk.no_prefixes = (n == 0);
}

/* The wait set over the latch, postmaster death and every subscriber. */
static void
build_wait_set(void)
{
	int			i;

	if (trk.wait_set != NULL)
		FreeWaitEventSet(trk.wait_set);
	trk.wait_set = CreateWaitEventSet(tracking_context, trk.nsubs + 2);
	AddWaitEventToSet(trk.wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch,
					  NULL);
	AddWaitEventToSet(trk.wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET,
					  NULL, NULL);
	for (i = 0; i < trk.nsubs; i++)
	{
		Subscriber *sub = &trk.subs[i];

		sub->wait_events = redis_socket_wait_events(sub->socket);
		sub->wait_pos = AddWaitEventToSet(trk.wait_set, sub->wait_events,
										  redis_socket_fd(sub->socket), NULL,
										  NULL);
	}
}

/* Wait for what each subscriber's socket needs now. */
static void
update_wait_events(void)
{
	int			i;

	if (trk.wait_set == NULL)
		return;
	for (i = 0; i < trk.nsubs; i++)
	{
		Subscriber *sub = &trk.subs[i];
		uint32		events = redis_socket_wait_events(sub->socket);

		if (events != sub->wait_events)
		{
			ModifyWaitEvent(trk.wait_set, sub->wait_pos, events, NULL);
			sub->wait_events = events;
		}
	}
}

/*
 * Open the master's subscription into sub and send its commands; the
 * replies are read with the messages (handle_reply()).  Returns NULL, or
 * why not (the caller loses).
 */
static const char *
subscribe_master(Subscriber *sub, const Master *master)
{
	RedisCommand cmds[2];
	RedisReply *reply;
	bool		nothing;
	int			known;
	int			i;

	strlcpy(sub->host, master->host, sizeof(sub->host));
	sub->port = master->port;
	sub->socket = redis_open_subscriber(sub->host, sub->port, trk.is_cluster,
										sub->run_id, sizeof(sub->run_id));
	if (sub->socket == NULL)
		return psprintf("could not subscribe to Redis at %s:%d: %s",
						sub->host, sub->port, redis_fault_message());

	known = find_master(trk.known, trk.nknown, sub->host, sub->port);
	if (known >= 0 && sub->run_id[0] != '\0' &&
		strcmp(trk.known[known].run_id, sub->run_id) != 0)
		ereport(LOG,
				(errmsg("redis_cache tracking: Redis at %s:%d restarted (run_id %s, was %s)",
						sub->host, sub->port, sub->run_id,
						trk.known[known].run_id)));

	/* the connection and this socket must have reached the same server */
	if (!trk.is_cluster && trk.identity[0] != '\0' && sub->run_id[0] != '\0' &&
		strcmp(trk.identity, sub->run_id) != 0)
		return psprintf("Redis at %s:%d has run_id %s, but the connection found %s (a restart or failover in progress)",
						sub->host, sub->port, sub->run_id, trk.identity);

	redis_cmd_init(&cmds[0], "CLIENT", 1);
	redis_cmd_str(&cmds[0], "ID");
	if (!redis_socket_round_trip(sub->socket, &cmds[0], 1, &reply,
								 TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															 redis_cache_command_timeout_ms),
								 redis_cache_command_timeout_ms, &nothing))
		return psprintf("could not subscribe to Redis at %s:%d: %s",
						sub->host, sub->port, redis_fault_message());
	if (reply->type == RC_REPLY_ERROR)
		return refused(sub, reply, "CLIENT ID");
	if (reply->type != RC_REPLY_INTEGER || reply->integer <= 0)
	{
		redis_stats_add(RC_STAT_ERRORS_PROTOCOL, 1);
		return psprintf("Redis at %s:%d answered CLIENT ID with something else than a client id",
						sub->host, sub->port);
	}

	/* the invalidations come as pub/sub messages on this very socket */
	redis_cmd_init(&cmds[0], "CLIENT", 5 + 2 * trk.nprefixes);
	redis_cmd_str(&cmds[0], "TRACKING");
	redis_cmd_str(&cmds[0], "on");
	redis_cmd_str(&cmds[0], "REDIRECT");
	redis_cmd_int(&cmds[0], reply->integer);
	redis_cmd_str(&cmds[0], "BCAST");
	for (i = 0; i < trk.nprefixes; i++)
	{
		/* "" is every key: BCAST without PREFIX (the others overlap it) */
		if (trk.prefixes[i][0] == '\0')
			continue;
		redis_cmd_str(&cmds[0], "PREFIX");
		redis_cmd_str(&cmds[0], trk.prefixes[i]);
	}
	redis_cmd_init(&cmds[1], "SUBSCRIBE", 1);
	redis_cmd_str(&cmds[1], RC_TRACKING_CHANNEL);
	if (!redis_socket_send_async(sub->socket, cmds, 2))
		return psprintf("could not subscribe to Redis at %s:%d: %s",
						sub->host, sub->port, redis_fault_message());
	sub->awaiting = 2;
	return NULL;
}

/*
 * Read the prefixes, discover the masters and subscribe to each; the
 * confirmation comes with their replies.  On failure, loses.
 */
static void
subscribe(void)
{
	Master	   *masters;
	int			nmasters;
	char	  **prefixes;
	int			nprefixes;
	const char *why;
	bool		fault;
	int			i;

	/* what local_cache.c wants tracked, from this process's settings */
	nprefixes = redis_local_tracking_prefixes(&prefixes);
	set_prefixes(prefixes, nprefixes);
	if (nprefixes == 0)
	{
		elog(DEBUG1, "redis_cache tracking: no key prefix to track");
		return;
	}

	why = discover(&masters, &nmasters, &trk.is_cluster, &trk.serial,
				   trk.identity, sizeof(trk.identity), &fault);
	if (why != NULL)
	{
		lose(why, fault);
		return;
	}

	trk.subs = MemoryContextAllocZero(tracking_context,
									  sizeof(Subscriber) * nmasters);
	trk.nsubs = nmasters;
	for (i = 0; i < nmasters; i++)
	{
		why = subscribe_master(&trk.subs[i], &masters[i]);
		if (why != NULL)
		{
			lose(why, true);
			return;
		}
	}
	trk.subscribed_at = GetCurrentTimestamp();
	trk.confirmed = false;
	trk.round_sent = 0;
	build_wait_set();
	elog(DEBUG1, "redis_cache tracking: subscribing to %d master(s) for %d key prefix(es)",
		 trk.nsubs, trk.nprefixes);
}

/* Once every master's subscription is there, the local cache may serve. */
static void
maybe_confirm(void)
{
	TimestampTz now;
	int			i;

	if (trk.confirmed)
		return;
	for (i = 0; i < trk.nsubs; i++)
		if (trk.subs[i].awaiting > 0)
			return;
	redis_local_tracking_confirmed(trk.prefixes, trk.nprefixes, trk.nsubs);
	/* the replies just read prove every master alive */
	redis_local_heartbeat();
	trk.confirmed = true;
	trk.failures = 0;
	now = GetCurrentTimestamp();
	trk.next_round = TimestampTzPlusMilliseconds(now, RC_LOCAL_HEARTBEAT_MS);
	trk.next_check = TimestampTzPlusMilliseconds(now, RC_TRACKING_TOPOLOGY_MS);
	ereport(LOG,
			(errmsg("redis_cache tracking: tracking %d key prefix(es) on %d master(s)",
					trk.nprefixes, trk.nsubs)));
}

/* A pong came: the round is complete once every master's has. */
static void
pong(Subscriber *sub)
{
	int			i;

	sub->pong_due = false;
	for (i = 0; i < trk.nsubs; i++)
		if (trk.subs[i].pong_due)
			return;
	redis_local_heartbeat();
	trk.next_round = TimestampTzPlusMilliseconds(trk.round_sent,
												 RC_LOCAL_HEARTBEAT_MS);
	trk.round_sent = 0;
}

/* A reply or message that is not what Redis sends: why, counted. */
static char *
not_understood(Subscriber *sub, const char *what)
{
	redis_stats_add(RC_STAT_ERRORS_PROTOCOL, 1);
	return psprintf("Redis at %s:%d sent %s", sub->host, sub->port, what);
}

/*
 * One reply or message from sub's socket, in the order Redis sends them:
 * +OK to CLIENT TRACKING, the subscribe reply, then invalidation messages
 * and pongs.  Returns NULL, or why tracking is lost.
 */
static char *
handle_reply(Subscriber *sub, const RedisReply *r)
{
	if (r->type == RC_REPLY_ERROR)
		return refused(sub, r, sub->awaiting == 2 ? "CLIENT TRACKING" :
					   sub->awaiting == 1 ? "SUBSCRIBE" : "PING");

	if (sub->awaiting == 2)
	{
		if (r->type != RC_REPLY_STATUS || strcmp(r->str, "OK") != 0)
			return not_understood(sub, "an unexpected reply to CLIENT TRACKING");
		sub->awaiting = 1;
		return NULL;
	}
	if (sub->awaiting == 1)
	{
		if (r->type != RC_REPLY_ARRAY || r->elements != 3 ||
			!reply_is(r->element[0], "subscribe") ||
			!reply_is(r->element[1], RC_TRACKING_CHANNEL) ||
			r->element[2]->type != RC_REPLY_INTEGER)
			return not_understood(sub, "an unexpected reply to SUBSCRIBE");
		sub->awaiting = 0;
		maybe_confirm();
		return NULL;
	}

	if (r->type == RC_REPLY_ARRAY && r->elements == 3 &&
		reply_is(r->element[0], "message") &&
		reply_is(r->element[1], RC_TRACKING_CHANNEL))
	{
		const RedisReply *keys = r->element[2];
		size_t		i;

		/* FLUSHALL, FLUSHDB (of any database): a null instead of keys */
		if (keys->type == RC_REPLY_NIL)
		{
			redis_local_flush(psprintf("FLUSHALL or FLUSHDB in Redis at %s:%d",
									   sub->host, sub->port));
			return NULL;
		}
		if (keys->type != RC_REPLY_ARRAY)
			return not_understood(sub, "a message on " RC_TRACKING_CHANNEL " that is not an invalidation (a PUBLISH by a client?)");
		for (i = 0; i < keys->elements; i++)
			if (keys->element[i]->type != RC_REPLY_STRING)
				return not_understood(sub, "an invalidation message naming something else than keys");
		for (i = 0; i < keys->elements; i++)
			redis_local_invalidate(keys->element[i]->str, keys->element[i]->len);
		return NULL;
	}

	if (r->type == RC_REPLY_ARRAY && r->elements == 2 &&
		reply_is(r->element[0], "pong") &&
		r->element[1]->type == RC_REPLY_STRING)
	{
		if (!sub->pong_due || !reply_is(r->element[1], trk.round_token))
			return not_understood(sub, "a pong to no PING of ours");
		pong(sub);
		return NULL;
	}
	return not_understood(sub, "an unexpected message to a subscriber");
}

/*
 * Read what every subscription has received, without waiting, at most
 * RC_TRACKING_DRAIN_BATCHES batches per socket: a flood of invalidations
 * must not starve the heartbeat and the checks (trk.drain_again then
 * says to come back without waiting, since bytes OpenSSL holds do not
 * wake the wait).  A fault loses (and returns).
 */
static void
drain(void)
{
	int			i;

	trk.drain_again = false;
	for (i = 0; trk.subs != NULL && i < trk.nsubs; i++)
	{
		Subscriber *sub = &trk.subs[i];
		bool		more = true;
		int			batches = 0;

		while (more)
		{
			RedisReply *replies[RC_TRACKING_BATCH];
			MemoryContext old;
			char	   *why = NULL;
			int			n;
			int			j;

			if (batches++ == RC_TRACKING_DRAIN_BATCHES)
			{
				trk.drain_again = true;
				break;
			}
			MemoryContextReset(batch_context);
			old = MemoryContextSwitchTo(batch_context);
			n = redis_socket_read_async(sub->socket, replies,
										RC_TRACKING_BATCH, &more);
			if (n < 0)
				why = psprintf("the subscription to Redis at %s:%d was lost: %s",
							   sub->host, sub->port, redis_fault_message());
			for (j = 0; j < n && why == NULL; j++)
				why = handle_reply(sub, replies[j]);
			MemoryContextSwitchTo(old);
			if (why != NULL)
			{
				/* into the loop's context: the batch's is reset */
				lose(pstrdup(why), true);
				return;
			}
		}
	}
	update_wait_events();
}

/*
 * The heartbeat: a PING to every master each RC_LOCAL_HEARTBEAT_MS, one
 * round at a time; a round unanswered after reply_timeout_ms() loses.
 */
static void
heartbeat(TimestampTz now)
{
	RedisCommand cmd;
	int			i;

	if (!trk.confirmed)
		return;
	if (trk.round_sent != 0)
	{
		if (!TimestampDifferenceExceeds(trk.round_sent, now, reply_timeout_ms()))
			return;
		for (i = 0; i < trk.nsubs - 1; i++)
			if (trk.subs[i].pong_due)
				break;
		lose(psprintf("Redis at %s:%d did not answer PING within %d ms",
					  trk.subs[i].host, trk.subs[i].port, reply_timeout_ms()),
			 true);
		return;
	}
	if (now < trk.next_round)
		return;

	snprintf(trk.round_token, sizeof(trk.round_token), "rc" UINT64_FORMAT,
			 ++trk.round_seq);
	redis_cmd_init(&cmd, "PING", 1);
	redis_cmd_str(&cmd, trk.round_token);
	trk.round_sent = now;
	for (i = 0; i < trk.nsubs; i++)
	{
		Subscriber *sub = &trk.subs[i];

		sub->pong_due = true;
		if (!redis_socket_send_async(sub->socket, &cmd, 1))
		{
			lose(psprintf("the subscription to Redis at %s:%d was lost: %s",
						  sub->host, sub->port, redis_fault_message()),
				 true);
			return;
		}
	}
	update_wait_events();
}

/*
 * Whether the topology is still the one subscribed to; if not, loses.
 * Runs every RC_TRACKING_TOPOLOGY_MS while tracking.
 */
static void
check_topology(void)
{
	Master	   *masters;
	int			nmasters;
	bool		is_cluster;
	uint64		serial;
	char		identity[64];
	char	  **prefixes;
	int			nprefixes;
	const char *why;
	bool		fault;
	int			i;

	/* a promotion changes the query namespace, hence the prefixes */
	nprefixes = redis_local_tracking_prefixes(&prefixes);
	if (!same_prefixes(prefixes, nprefixes, trk.prefixes, trk.nprefixes))
	{
		lose("the key prefixes to track changed", false);
		set_prefixes(prefixes, nprefixes);
		return;
	}

	why = discover(&masters, &nmasters, &is_cluster, &serial, identity,
				   sizeof(identity), &fault);
	if (why != NULL)
	{
		lose(why, fault);
		return;
	}
	if (serial != trk.serial)
		why = "the connection to Redis was renewed";
	else if (is_cluster != trk.is_cluster)
		why = "Redis became or stopped being a Redis Cluster";
	else if (strcmp(identity, trk.identity) != 0)
		why = is_cluster ? "the masters of the Redis Cluster changed (failover or restart)" :
			"Redis restarted or was replaced";
	else if (nmasters != trk.nsubs)
		why = "the masters of Redis changed";
	for (i = 0; why == NULL && i < nmasters; i++)
	{
		int			j;

		for (j = 0; j < trk.nsubs; j++)
			if (trk.subs[j].port == masters[i].port &&
				strcmp(trk.subs[j].host, masters[i].host) == 0)
				break;
		if (j == trk.nsubs)
			why = psprintf("Redis at %s:%d is a new master", masters[i].host,
						   masters[i].port);
	}
	if (why != NULL)
		lose(why, false);
}

/* Milliseconds from now until t (0 if past). */
static long
ms_until(TimestampTz now, TimestampTz t)
{
	if (t <= now)
		return 0;
	return TimestampDifferenceMilliseconds(now, t);
}

/* The earlier of timeout (-1: none) and the time until t. */
static long
earlier(long timeout, TimestampTz now, TimestampTz t)
{
	long		ms = ms_until(now, t);

	return (timeout < 0 || ms < timeout) ? ms : timeout;
}

/* How long the loop may wait: until the next due work (-1: no bound). */
static long
next_timeout(TimestampTz now, TimestampTz last_sentinel_poll)
{
	long		timeout = -1;

	if (trk.subs != NULL && trk.drain_again)
		return 0;
	if (trk.subs == NULL)
	{
		/* with no prefix, only a SIGHUP (the latch) changes anything */
		if (!trk.no_prefixes)
			timeout = earlier(timeout, now, trk.next_attempt);
	}
	else if (!trk.confirmed)
		timeout = earlier(timeout, now,
						  TimestampTzPlusMilliseconds(trk.subscribed_at,
													  reply_timeout_ms()));
	else
	{
		timeout = earlier(timeout, now, trk.next_check);
		if (trk.round_sent != 0)
			timeout = earlier(timeout, now,
							  TimestampTzPlusMilliseconds(trk.round_sent,
														  reply_timeout_ms()));
		else
			timeout = earlier(timeout, now, trk.next_round);
	}
	if (redis_sentinel_enabled())
		timeout = earlier(timeout, now,
						  TimestampTzPlusMilliseconds(last_sentinel_poll,
													  RC_SENTINEL_POLL_MS));
	return timeout;
}

/*
 * Whether the timeline of the query namespace (keys.c) is not known yet:
 * before the startup process begins replay, a server in recovery reports
 * timeline 0, and prefixes computed then would name no namespace.
 */
static bool
timeline_unknown(void)
{
	char		ns[RC_QUERY_NAMESPACE_LEN];
	const char *dot;

	if (!RecoveryInProgress())
		return false;
	redis_query_namespace(ns);
	dot = strrchr(ns, '.');
	return dot != NULL && strcmp(dot, ".0") == 0;
}

/*
 * At exit, whatever the cause (an ERROR is FATAL in a background worker):
 * nothing may be served on subscriptions nobody reads any more.
 */
static void
tracking_exit(int code, Datum arg)
{
	/* an ERROR may have left a lock held; local_cache.c takes its own */
	LWLockReleaseAll();
	redis_local_tracking_lost("the tracking worker exited");
	close_subscribers();
	redis_disconnect();
}

PGDLLEXPORT void
redis_cache_tracking_main(Datum main_arg)
{
	MemoryContext loop_context;
	TimestampTz last_sentinel_poll = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	/* OpenSSL writes with write(), not send(MSG_NOSIGNAL): EPIPE, not death */
	pqsignal(SIGPIPE, SIG_IGN);
	BackgroundWorkerUnblockSignals();

	/* faults are retried here, never raised */
	SetConfigOption("redis_cache.on_error", "warning", PGC_SUSET, PGC_S_OVERRIDE);

	memset(&trk, 0, sizeof(trk));
	tracking_context = AllocSetContextCreate(TopMemoryContext,
											 "redis_cache tracking",
											 ALLOCSET_DEFAULT_SIZES);
	batch_context = AllocSetContextCreate(TopMemoryContext,
										  "redis_cache tracking batch",
										  ALLOCSET_DEFAULT_SIZES);
	loop_context = AllocSetContextCreate(TopMemoryContext,
										 "redis_cache tracking loop",
										 ALLOCSET_DEFAULT_SIZES);
	before_shmem_exit(tracking_exit, 0);

	ereport(LOG, (errmsg("redis_cache tracking worker started")));

	/* the prefixes name the query namespace: wait for its timeline */
	while (!ShutdownRequestPending && timeline_unknown())
	{
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}

	while (!ShutdownRequestPending)
	{
		TimestampTz now;
		long		timeout;

		MemoryContextReset(loop_context);
		MemoryContextSwitchTo(loop_context);

		if (ConfigReloadPending)
		{
			char	  **prefixes;
			int			n;

			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			n = redis_local_tracking_prefixes(&prefixes);
			if (!same_prefixes(prefixes, n, trk.prefixes, trk.nprefixes))
			{
				if (trk.subs != NULL)
					lose("the key prefixes to track changed", false);
				set_prefixes(prefixes, n);
				trk.next_attempt = 0;
			}
			/* a server setting may have changed: look at once */
			trk.next_check = 0;
		}

		/* under Sentinel: notice a failover even if nothing else does */
		if (redis_sentinel_enabled() &&
			TimestampDifferenceExceeds(last_sentinel_poll, GetCurrentTimestamp(),
									   RC_SENTINEL_POLL_MS))
		{
			redis_poll_sentinels();
			last_sentinel_poll = GetCurrentTimestamp();
		}

		/* what came first: a check below may take a round trip */
		drain();

		now = GetCurrentTimestamp();
		if (trk.subs == NULL)
		{
			if (!trk.no_prefixes && now >= trk.next_attempt)
				subscribe();
		}
		else if (!trk.confirmed)
		{
			if (TimestampDifferenceExceeds(trk.subscribed_at, now, reply_timeout_ms()))
				lose(psprintf("the subscriptions were not confirmed within %d ms",
							  reply_timeout_ms()), true);
		}
		else
		{
			if (now >= trk.next_check)
			{
				check_topology();
				/* that took a round trip: what came meanwhile first */
				drain();
				now = GetCurrentTimestamp();
				trk.next_check = TimestampTzPlusMilliseconds(now, RC_TRACKING_TOPOLOGY_MS);
			}
			if (trk.subs != NULL)
				heartbeat(now);
		}

		now = GetCurrentTimestamp();
		timeout = next_timeout(now, last_sentinel_poll);
		MemoryContextSwitchTo(TopMemoryContext);

		/* a Redis wait may have reset the latch SIGTERM set */
		if (ShutdownRequestPending)
			break;

		if (trk.wait_set != NULL)
		{
			WaitEvent	events[8];

			/* the sockets are read at the top of the loop */
			(void) WaitEventSetWait(trk.wait_set, timeout, events,
									lengthof(events), PG_WAIT_EXTENSION);
		}
		else
			(void) WaitLatch(MyLatch,
							 WL_LATCH_SET | WL_EXIT_ON_PM_DEATH |
							 (timeout >= 0 ? WL_TIMEOUT : 0),
							 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}

	/* tracking_exit() tells local_cache.c and closes everything */
	proc_exit(0);
}

/*
 * From _PG_init under shared_preload_libraries, after the local cache's
 * shared memory is requested: the worker exists only when there is a
 * local cache to keep coherent.
 */
void
redis_tracking_init(void)
{
	BackgroundWorker worker;

	if (!redis_local_configured())
		return;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS;
	/* a standby serves reads from its local cache too */
	worker.bgw_start_time = BgWorkerStart_PostmasterStart;
	worker.bgw_restart_time = 1;
	strlcpy(worker.bgw_library_name, "redis_cache", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "redis_cache_tracking_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "redis_cache tracking worker", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "redis_cache tracking", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}
