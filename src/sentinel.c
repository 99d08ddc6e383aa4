/*-------------------------------------------------------------------------
 *
 * sentinel.c
 *		  Redis Sentinel: which server is the master now.  Its settings and
 *		  the discovery the Sentinel client specification describes.
 *
 * Design rules:
 *
 * - Discovery asks the sentinels of redis_cache.sentinels in turn, each
 *   within a short share of the connect deadline (a paused sentinel costs
 *   its share, never the whole budget), for SENTINEL
 *   get-master-addr-by-name.  The first that answers with an address is
 *   moved to the front of this backend's order, as the specification
 *   asks, so later discoveries ask it first.  Confirming the master with
 *   ROLE is the caller's (connection.c adds ROLE to its handshake): the
 *   address may be stale during a failover.
 *
 * - This file never keeps a connection: it opens one to a sentinel, asks,
 *   and closes it.  The caller re-discovers whenever it opens a new
 *   connection to the master, which it does after a connection loss and
 *   after READONLY or LOADING replies (a demoted or restarting master).
 *
 * - Sentinels are reached over TLS exactly when the master is (the same
 *   redis_cache.sslmode and certificates), with their own optional
 *   credentials: redis_cache.sentinel_user and
 *   redis_cache.sentinel_password_file, read at each discovery and never
 *   put into a message.  The settings are PGC_SUSET, as every setting that
 *   chooses the server: whoever names the sentinel names the master.
 *
 * - Sentinel replies are untrusted like any Redis reply: the address must
 *   be a plausible host (printable, no spaces, at most 255 bytes) and the
 *   port a number in 1..65535, or the sentinel is skipped.
 *
 * - A failover has a window where two servers accept writes: after
 *   SENTINEL FAILOVER, Redis 7 leaves the old master writable until the
 *   sentinels demote it (about ten seconds), and sentinels that have not
 *   heard of the failover yet still name it.  A backend filling the new
 *   master while another still deletes on the old one would leave stale
 *   entries.  So this file keeps, in shared memory, the master epoch: a
 *   counter bumped whenever a backend or the worker learns of a master
 *   with a higher Sentinel config-epoch (SENTINEL MASTER's
 *   "config-epoch", which every failover raises).  An answer with a lower
 *   config-epoch than the highest seen is stale and the next sentinel is
 *   asked (unless no sentinel has better: then the sentinels were reset).
 *   connection.c drops a connection made under an older epoch before its
 *   next command, and treats a round trip that straddled a change as
 *   failed (its invalidations go to the worker's exact replay, which sends
 *   them to the new master).  The worker asks the sentinels every
 *   RC_SENTINEL_POLL_MS, so a failover is noticed even when every backend
 *   keeps a connection to the old master.  Without
 *   shared_preload_libraries the epoch is the backend's own.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "redis_cache.h"

#define RC_MAX_SENTINELS	16

/* A sentinel's share of the connect deadline is never below this. */
#define RC_SENTINEL_MIN_MS	100

typedef struct SentinelAddress
{
	char		host[256];
	int			port;
} SentinelAddress;

typedef struct SentinelList
{
	int			n;
	SentinelAddress addrs[RC_MAX_SENTINELS];
} SentinelList;

/* settings of this file */
static char *sentinels_setting = NULL;
static const SentinelList *sentinels = NULL;	/* the setting's extra */
static char *master_name = NULL;
static char *sentinel_user = NULL;
static char *sentinel_password_file = NULL;

static uint64 sentinel_config_generation = 1;

/* this backend's order of asking (indexes into sentinels), and its config */
static int	order[RC_MAX_SENTINELS];
static uint64 order_generation = 0;

/* The master as last learnt, in shared memory when preloaded. */
typedef struct SentinelShared
{
	slock_t		mutex;			/* protects the fields below but epoch */
	pg_atomic_uint64 epoch;		/* bumped when the master changes */
	int64		config_epoch;	/* highest Sentinel config-epoch seen */
	char		host[256];
	int			port;
} SentinelShared;

static SentinelShared *shared = NULL;
static SentinelShared local_state;	/* without shared_preload_libraries */
static bool local_ready = false;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
sentinel_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(SentinelShared)));
}

static void
init_state(SentinelShared *st)
{
	SpinLockInit(&st->mutex);
	pg_atomic_init_u64(&st->epoch, 1);
	st->config_epoch = -1;
	st->host[0] = '\0';
	st->port = 0;
}

static void
sentinel_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("redis_cache sentinel", sizeof(SentinelShared),
							 &found);
	if (!found)
		init_state(shared);
	LWLockRelease(AddinShmemInitLock);
}

/* Under shared_preload_libraries, from _PG_init: the shared master epoch. */
void
redis_sentinel_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = sentinel_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = sentinel_shmem_startup;
}

static SentinelShared *
state(void)
{
	if (shared != NULL)
		return shared;
	if (!local_ready)
	{
		init_state(&local_state);
		local_ready = true;
	}
	return &local_state;
}

/*
 * The master epoch: a connection made under another one must not be used
 * (see the header comment).
 */
uint64
redis_sentinel_epoch(void)
{
	return pg_atomic_read_u64(&state()->epoch);
}

/* The highest config-epoch seen (-1: none yet). */
static int64
known_config_epoch(void)
{
	SentinelShared *st = state();
	int64		v;

	SpinLockAcquire(&st->mutex);
	v = st->config_epoch;
	SpinLockRelease(&st->mutex);
	return v;
}

/*
 * Record what a sentinel said: a different master under a config-epoch at
 * least as high as the known one bumps the master epoch.  reset: accept a
 * lower config-epoch (the sentinels were reset).  Returns false when the
 * answer is older than what another process learnt meanwhile: then the
 * caller asks another sentinel.  *epoch is the master epoch in force.
 */
static bool
note_master(const char *host, int port, int64 config_epoch, bool reset,
			uint64 *epoch)
{
	SentinelShared *st = state();
	bool		changed = false;
	bool		accepted;

	SpinLockAcquire(&st->mutex);
	accepted = config_epoch >= st->config_epoch || reset;
	if (accepted)
	{
		changed = st->host[0] != '\0' &&
			(st->port != port || strcmp(st->host, host) != 0);
		if (changed || st->host[0] == '\0')
		{
			strlcpy(st->host, host, sizeof(st->host));
			st->port = port;
		}
		st->config_epoch = config_epoch;
	}
	SpinLockRelease(&st->mutex);
	if (changed)
	{
		pg_atomic_fetch_add_u64(&st->epoch, 1);
		ereport(LOG,
				(errmsg("redis_cache: the sentinels name a new master for \"%s\": %s:%d (config epoch " INT64_FORMAT ")",
						master_name, host, port, config_epoch),
				 errdetail("Connections to the previous master are dropped before their next command.")));
	}
	*epoch = pg_atomic_read_u64(&st->epoch);
	return accepted;
}

bool
redis_sentinel_enabled(void)
{
	return sentinels != NULL && sentinels->n > 0;
}

const char *
redis_sentinel_master_name(void)
{
	return master_name ? master_name : "";
}

uint64
redis_sentinel_config_generation(void)
{
	return sentinel_config_generation;
}

/* A host and port a sentinel announced, if plausible. */
static bool
plausible_address(const RedisReply *reply, char *host, size_t hostlen,
				  int *port)
{
	const RedisReply *h;
	const RedisReply *p;
	char		portbuf[8];
	char	   *end;
	long		v;
	size_t		i;

	if (reply->type != RC_REPLY_ARRAY || reply->elements != 2)
		return false;
	h = reply->element[0];
	p = reply->element[1];
	if (h->type != RC_REPLY_STRING || p->type != RC_REPLY_STRING ||
		h->len == 0 || h->len >= hostlen || h->len > 255 ||
		p->len == 0 || p->len >= sizeof(portbuf))
		return false;
	for (i = 0; i < h->len; i++)
		if (h->str[i] <= 0x20 || h->str[i] >= 0x7f || h->str[i] == '/')
			return false;
	memcpy(portbuf, p->str, p->len);
	portbuf[p->len] = '\0';
	v = strtol(portbuf, &end, 10);
	if (*end != '\0' || v < 1 || v > 65535)
		return false;
	memcpy(host, h->str, h->len);
	host[h->len] = '\0';
	*port = (int) v;
	return true;
}

/*
 * Ask one sentinel.  Returns true with host/port set; false with the fault
 * set.  May throw on interrupts, after closing its socket.
 */
/* config-epoch in a SENTINEL MASTER reply (field/value pairs); -1 if none */
static int64
config_epoch_of(const RedisReply *reply)
{
	size_t		i;

	if (reply->type != RC_REPLY_ARRAY)
		return -1;
	for (i = 0; i + 1 < reply->elements; i += 2)
	{
		const RedisReply *f = reply->element[i];
		const RedisReply *v = reply->element[i + 1];

		if (f->type == RC_REPLY_STRING && v->type == RC_REPLY_STRING &&
			strcmp(f->str, "config-epoch") == 0)
		{
			char	   *end;
			long long	n = strtoll(v->str, &end, 10);

			return (*end == '\0' && n >= 0) ? (int64) n : -1;
		}
	}
	return -1;
}

static bool
ask_sentinel(const SentinelAddress *sentinel, const char *password,
			 int tls_mode, int timeout_ms, TimestampTz deadline,
			 char *host, size_t hostlen, int *port, int64 *config_epoch)
{
	RedisSocket *volatile s;
	RedisCommand cmds[3] = {0};
	const char *auth_argv[3];
	size_t		auth_len[3];
	RedisReply *replies[3];
	int			ask;
	volatile int n = 0;
	volatile bool ok;
	bool		nothing;
	char		label[300];

	snprintf(label, sizeof(label), "%s:%d", sentinel->host, sentinel->port);
	/* its own share, also at commit: one silent sentinel must not take all */
	redis_transport_strict_deadlines(true);
	PG_TRY();
	{
		s = redis_socket_open(sentinel->host, sentinel->port, tls_mode,
							  timeout_ms, deadline);
	}
	PG_CATCH();
	{
		redis_transport_strict_deadlines(false);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (s == NULL)
	{
		redis_transport_strict_deadlines(false);
		return false;
	}
	if (password[0] != '\0')
		redis_auth_command(&cmds[n++], auth_argv, auth_len, sentinel_user,
						   password);
	ask = n;
	redis_cmd_init(&cmds[n], "SENTINEL", 2);
	redis_cmd_str(&cmds[n], "get-master-addr-by-name");
	redis_cmd_str(&cmds[n++], master_name);
	redis_cmd_init(&cmds[n], "SENTINEL", 2);
	redis_cmd_str(&cmds[n], "MASTER");
	redis_cmd_str(&cmds[n++], master_name);

	PG_TRY();
	{
		ok = redis_socket_round_trip(s, cmds, n, replies, deadline, timeout_ms,
									 &nothing);
	}
	PG_CATCH();
	{
		redis_transport_strict_deadlines(false);
		redis_socket_close(s);
		PG_RE_THROW();
	}
	PG_END_TRY();
	redis_transport_strict_deadlines(false);
	redis_socket_close(s);
	if (!ok)
		return false;

	if (ask == 1 && replies[0]->type == RC_REPLY_ERROR)
	{
		/* never echo the command: it carries the password */
		redis_fault_set(RC_FAULT_CONNECT, "sentinel at %s refused authentication: %s",
						label, redis_printable(replies[0]->str, replies[0]->len));
		return false;
	}
	if (replies[ask]->type == RC_REPLY_NIL)
	{
		redis_fault_set(RC_FAULT_CONNECT, "sentinel at %s does not know a master named \"%s\" (redis_cache.sentinel_master)",
						label, master_name);
		return false;
	}
	if (replies[ask]->type == RC_REPLY_ERROR)
	{
		redis_fault_set(RC_FAULT_CONNECT, "sentinel at %s refused SENTINEL get-master-addr-by-name: %s",
						label, redis_printable(replies[ask]->str, replies[ask]->len));
		return false;
	}
	if (!plausible_address(replies[ask], host, hostlen, port))
	{
		redis_fault_set(RC_FAULT_PROTOCOL, "sentinel at %s answered SENTINEL get-master-addr-by-name with something that is not a host and port",
						label);
		return false;
	}
	/* refused (an ACL without +sentinel|master): no epoch, taken as is */
	*config_epoch = config_epoch_of(replies[ask + 1]);
	return true;
}

/*
 * The master's address as the sentinels see it, before deadline
 * (timeout_ms is the bound behind it, shared among the sentinels).  An
 * answer with a config-epoch below the highest seen is passed over while
 * another sentinel may know better.  Returns false with the fault set;
 * else *epoch is the master epoch the address belongs to.  May throw on
 * interrupts.
 */
bool
redis_sentinel_discover(int tls_mode, int timeout_ms, TimestampTz deadline,
						char *host, size_t hostlen, int *port,
						uint64 *epoch)
{
	char	   *password = pstrdup("");
	char	   *why = NULL;
	int			share_ms;
	int			i;
	int			found = -1;
	int			nanswered = 0;
	int64		known = known_config_epoch();
	char		stale_host[256] = "";
	int			stale_port = 0;
	int64		stale_epoch = -1;
	char		last_fault[512] = "";

	if (master_name == NULL || master_name[0] == '\0')
	{
		redis_fault_set(RC_FAULT_CONNECT, "redis_cache.sentinels is set but redis_cache.sentinel_master is not");
		return false;
	}
	if (order_generation != sentinel_config_generation)
	{
		for (i = 0; i < sentinels->n; i++)
			order[i] = i;
		order_generation = sentinel_config_generation;
	}
	if (sentinel_password_file && sentinel_password_file[0])
	{
		password = redis_read_secret_file(sentinel_password_file,
										  "redis_cache.sentinel_password_file",
										  &why);
		if (password == NULL)
		{
			redis_fault_set(RC_FAULT_CONNECT, "%s", why);
			return false;
		}
	}

	/*
	 * At commit the superuser's limit is the one bound (no role may make
	 * its own deliveries fail by lowering a timeout): share that out.
	 */
	{
		int			limit_ms;
		TimestampTz limit = redis_transport_wait_limit(&limit_ms);

		if (limit != 0)
		{
			timeout_ms = limit_ms;
			deadline = limit;
		}
	}
	share_ms = Max(timeout_ms / sentinels->n, RC_SENTINEL_MIN_MS);
	for (i = 0; i < sentinels->n && found < 0; i++)
	{
		const SentinelAddress *sentinel = &sentinels->addrs[order[i]];
		TimestampTz now = GetCurrentTimestamp();
		TimestampTz own = TimestampTzPlusMilliseconds(now, share_ms);
		int64		config_epoch = -1;

		if (now >= deadline)
			break;
		if (!ask_sentinel(sentinel, password, tls_mode, share_ms,
						  Min(own, deadline), host, hostlen, port,
						  &config_epoch))
		{
			strlcpy(last_fault, redis_fault_message(), sizeof(last_fault));
			continue;
		}
		nanswered++;
		if (config_epoch >= 0 && config_epoch < known)
		{
			/* has not heard of the last failover yet: ask another */
			if (config_epoch > stale_epoch)
			{
				strlcpy(stale_host, host, sizeof(stale_host));
				stale_port = *port;
				stale_epoch = config_epoch;
			}
			snprintf(last_fault, sizeof(last_fault),
					 "sentinel at %s:%d is behind (config epoch " INT64_FORMAT ", " INT64_FORMAT " seen)",
					 sentinel->host, sentinel->port, config_epoch, known);
			continue;
		}
		if (!note_master(host, *port,
						 config_epoch < 0 ? known_config_epoch() : config_epoch,
						 false, epoch))
		{
			/* another process learnt of a newer master meanwhile */
			snprintf(last_fault, sizeof(last_fault),
					 "sentinel at %s:%d is behind another one",
					 sentinel->host, sentinel->port);
			known = known_config_epoch();
			continue;
		}
		found = order[i];
		/* the one that answered is asked first from now on */
		memmove(&order[1], &order[0], i * sizeof(int));
		order[0] = found;
	}
	explicit_bzero(password, strlen(password));
	pfree(password);

	if (found < 0 && stale_host[0] != '\0' && nanswered == sentinels->n)
	{
		/* every sentinel answered and all are behind: they were reset */
		strlcpy(host, stale_host, hostlen);
		*port = stale_port;
		(void) note_master(host, *port, stale_epoch, true, epoch);
		return true;
	}
	if (found < 0)
	{
		redis_fault_set(RC_FAULT_CONNECT, "no sentinel of redis_cache.sentinels gave the address of master \"%s\"%s%s",
						master_name, last_fault[0] ? ": " : "", last_fault);
		return false;
	}
	return true;
}

/* ---- settings ------------------------------------------------------------- */

/*
 * redis_cache.sentinels: "host:port, host:port, ..." (IPv6 as [addr]:port;
 * the port defaults to 26379).  Parsed once here into the extra.
 */
static bool
check_sentinels(char **newval, void **extra, GucSource source)
{
	SentinelList *list = calloc(1, sizeof(SentinelList));
	const char *p = *newval ? *newval : "";

	if (list == NULL)
	{
		GUC_check_errcode(ERRCODE_OUT_OF_MEMORY);
		GUC_check_errmsg("out of memory");
		return false;
	}
	while (*p)
	{
		const char *start;
		const char *end;
		const char *colon = NULL;
		SentinelAddress *a;
		size_t		hostlen;

		while (*p == ' ' || *p == ',' || *p == '\t')
			p++;
		if (*p == '\0')
			break;
		start = p;
		while (*p && *p != ',' && *p != ' ' && *p != '\t')
			p++;
		end = p;
		if (list->n == RC_MAX_SENTINELS)
		{
			GUC_check_errdetail("At most %d sentinels can be listed.", RC_MAX_SENTINELS);
			free(list);
			return false;
		}
		a = &list->addrs[list->n];
		if (*start == '[')
		{
			const char *close = memchr(start, ']', end - start);

			if (close == NULL)
			{
				GUC_check_errdetail("An IPv6 address must be written [address]:port.");
				free(list);
				return false;
			}
			hostlen = close - start - 1;
			memcpy(a->host, start + 1, Min(hostlen, sizeof(a->host) - 1));
			if (close + 1 < end && close[1] == ':')
				colon = close + 1;
			else if (close + 1 != end)
			{
				GUC_check_errdetail("An IPv6 address must be written [address]:port.");
				free(list);
				return false;
			}
		}
		else
		{
			const char *c;

			for (c = start; c < end; c++)
				if (*c == ':')
					colon = c;
			hostlen = (colon ? colon : end) - start;
			memcpy(a->host, start, Min(hostlen, sizeof(a->host) - 1));
		}
		if (hostlen == 0 || hostlen >= sizeof(a->host))
		{
			GUC_check_errdetail("Each sentinel is host:port, with a host of 1 to 255 characters.");
			free(list);
			return false;
		}
		a->host[hostlen] = '\0';
		a->port = 26379;
		if (colon)
		{
			char		portbuf[8];
			char	   *pend;
			long		v;
			size_t		plen = end - colon - 1;

			if (plen == 0 || plen >= sizeof(portbuf))
			{
				GUC_check_errdetail("\"%s\" has no valid port.", a->host);
				free(list);
				return false;
			}
			memcpy(portbuf, colon + 1, plen);
			portbuf[plen] = '\0';
			v = strtol(portbuf, &pend, 10);
			if (*pend != '\0' || v < 1 || v > 65535)
			{
				GUC_check_errdetail("\"%s\" has no valid port.", a->host);
				free(list);
				return false;
			}
			a->port = (int) v;
		}
		list->n++;
	}
	*extra = list;
	return true;
}

static void
assign_sentinels(const char *newval, void *extra)
{
	sentinels = (const SentinelList *) extra;
	sentinel_config_generation++;
}

static void
assign_sentinel_string(const char *newval, void *extra)
{
	sentinel_config_generation++;
}

void
redis_sentinel_define_gucs(void)
{
	DefineCustomStringVariable("redis_cache.sentinels",
							   gettext_noop("Sets the Redis Sentinels that name the master, as host:port, host:port ..."),
							   gettext_noop("When set, redis_cache.host and redis_cache.port are not used: each new connection asks the sentinels for redis_cache.sentinel_master."),
							   &sentinels_setting,
							   "",
							   PGC_SUSET,
							   0,
							   check_sentinels, assign_sentinels, NULL);

	DefineCustomStringVariable("redis_cache.sentinel_master",
							   gettext_noop("Sets the name of the master the sentinels monitor."),
							   NULL,
							   &master_name,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, assign_sentinel_string, NULL);

	DefineCustomStringVariable("redis_cache.sentinel_user",
							   gettext_noop("Sets the ACL user name for the sentinels; empty means AUTH with the password only."),
							   NULL,
							   &sentinel_user,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, assign_sentinel_string, NULL);

	DefineCustomStringVariable("redis_cache.sentinel_password_file",
							   gettext_noop("Sets a file whose first line is the sentinels' password, read at each discovery."),
							   NULL,
							   &sentinel_password_file,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   NULL, assign_sentinel_string, NULL);
}
