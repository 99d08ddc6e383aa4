/*-------------------------------------------------------------------------
 *
 * flush.c
 *		  Bulk removal: SCAN + UNLINK loops over a namespace or a pattern,
 *		  and single raw UNLINKs, for the version check, the worker, the
 *		  commit path and cache_delete_pattern().
 *
 * Design rules: never FLUSHDB, FLUSHALL or KEYS (managed Redis blocks them,
 * and keys outside the namespace must survive); a flush of a namespace
 * removes only the keys the extension owns (families.c): its query-result
 * namespace and the owned families, in one SCAN pass matched here, never
 * every key under the prefix; the cache version's
 * bookkeeping keys (keys.c) are never removed by a scan, and with
 * RC_SCAN_KEEP_RESERVED (cache_delete_pattern) no key reserved to the
 * extension is (keys.c, redis_is_reserved_key); memory of each SCAN batch is
 * released before the next one.  SCAN may miss keys added during the
 * iteration: this is a clean-up tool, generations are what make results
 * stale.
 *
 * Whose keys: the worker's and the commit's deletes leave the query results
 * of other clusters (and other timelines) under the same prefix alone
 * (keys.c): their servers end them.  The version check's flush and
 * cache_delete_pattern() remove every cluster's: after a Redis restart the
 * one flush that cache:run_id elects must serve every cluster sharing the
 * prefix.
 *
 * Every walk covers every master of a Redis Cluster: SCAN is keyless and
 * sees one server's keys, so a walk connects first (PING), takes
 * redis_master_count() once, and each round sends one SCAN per master not
 * done, each to its master (redis_cmd_on_node) with its own cursor and
 * bound, in one pipeline the cluster layer sends to all masters at once:
 * a walk costs the rounds of the largest master, not the sum.  A master
 * index no longer below the current count (the cluster shrank during the
 * walk) counts as finished.  What a round's SCANs find is UNLINKed as one
 * keyed command, which the cluster layer splits per slot.  A single
 * server is master 0 of 1.  A fault on any master ends the whole walk
 * (*failed), with what was removed until then.
 *
 * Every SCAN iteration is bounded: DBSIZE of the same master, pipelined
 * with its first SCAN, gives a number of rounds no real server needs
 * (scan_round_limit); a server whose cursor has not come back to 0 by then
 * is a fault (WARNING), and the caller keeps its work pending.  Each round
 * checks for interrupts and for the background worker's shutdown request.
 *
 * Commands are built with command_builder.c, keys marked.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "redis_cache.h"

/* Keys SCAN is asked to look at per round. */
#define RC_SCAN_COUNT		1000

/*
 * SCAN stops a round once it has COUNT keys or has visited 10 x COUNT
 * buckets, and a Redis hash table has at most a few buckets per key, so a
 * full iteration takes about 2 x DBSIZE / COUNT rounds.  Allowed: 16 per
 * COUNT keys (keys added meanwhile, rehashing, a table left sparse by a
 * mass delete) plus a floor.  DBSIZE is clamped: a hostile reply must not
 * lift the bound (at most 1.6 M rounds, enough for 100 M keys
 * comfortably); the clamp is also used when DBSIZE is refused.
 */
#define RC_SCAN_MIN_ROUNDS	100
#define RC_SCAN_ROUNDS_PER_COUNT 16
#define RC_SCAN_MAX_KEYS	INT64CONST(100000000)

static TimestampTz last_scan_warning = 0;

/*
 * The rounds allowed to a SCAN iteration, from the DBSIZE reply.
 */
static int64
scan_round_limit(const RedisReply *dbsize, int64 *keys)
{
	*keys = RC_SCAN_MAX_KEYS;
	if (dbsize != NULL && dbsize->type == RC_REPLY_INTEGER)
		*keys = Min(Max(dbsize->integer, 0), RC_SCAN_MAX_KEYS);
	return RC_SCAN_MIN_ROUNDS +
		RC_SCAN_ROUNDS_PER_COUNT * (*keys / RC_SCAN_COUNT + 1);
}

/*
 * One round trip for redis_scan_unlink(): over round_trip when the caller
 * has one (the session check runs on the connection it is checking),
 * otherwise through redis_execute() with the caller's flags.  Only the
 * last command's reply is checked for an error (a DBSIZE before it may be
 * refused).
 */
static bool
scan_round_trip(RedisRoundTrip round_trip, RedisCommand *cmds, int ncmds,
				RedisReply **replies, int flags, const char *what)
{
	int			i;

	if (round_trip != NULL)
	{
		if (!round_trip(cmds, ncmds, replies))
			return false;
	}
	else if (!redis_execute(cmds, ncmds, replies, flags))
		return false;
	for (i = 0; i < ncmds; i++)
	{
		RedisReply *r = replies[i];

		/* DBSIZE may be refused (an ACL): the bound then takes its clamp */
		if (r->type != RC_REPLY_ERROR || strcmp(cmds[i].argv[0], "DBSIZE") == 0)
			continue;
		if (round_trip != NULL)
			redis_fault_set(RC_FAULT_PROTOCOL, "Redis rejected %s: %s", what,
							redis_printable(r->str, r->len));
		else
			redis_report_reply_error(r, what, flags);
		return false;
	}
	return true;
}

/*
 * A SCAN iteration ran out of rounds: a fault of the server.  Recorded for
 * the caller, counted, and reported per on_error (rate limited) unless the
 * caller reports faults itself (round_trip: the session check).
 */
static void
scan_bound_hit(const char *match, int node, int nmasters, int64 rounds,
			   int64 keys, int flags, RedisRoundTrip round_trip)
{
	char		where[32] = "";

	if (nmasters > 1)
		snprintf(where, sizeof(where), " on master %d", node);
	redis_fault_set(RC_FAULT_PROTOCOL,
					"SCAN MATCH \"%s\"%s did not finish within " INT64_FORMAT " rounds (DBSIZE " INT64_FORMAT "): the server's cursor never returned to 0",
					match, where, rounds, keys);
	redis_stats_add(RC_STAT_ERRORS_PROTOCOL, 1);
	if (round_trip != NULL)
		return;
	if (redis_cache_on_error == RC_ON_ERROR_ERROR && !(flags & RC_EXEC_NO_ERROR))
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("redis_cache: %s", redis_fault_message()),
				 errhint("Check that redis_cache.host and redis_cache.port name a Redis server.")));
	if (redis_warning_due(&last_scan_warning))
		ereport(WARNING,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("redis_cache: %s", redis_fault_message()),
				 errdetail("The keys were not all removed; the work stays pending where a worker retries it."),
				 errhint("Check that redis_cache.host and redis_cache.port name a Redis server.")));
}

/*
 * What a flush of a namespace may remove (after the prefix): keys starting
 * with query_base, and keys matching one of the globs.
 */
typedef struct OwnedKeys
{
	const char *query_base;
	size_t		query_baselen;
	int			nglobs;
	char	  **globs;
} OwnedKeys;

static bool
is_owned(const OwnedKeys *owned, const char *key, size_t len)
{
	int			i;

	if (len >= owned->query_baselen &&
		memcmp(key, owned->query_base, owned->query_baselen) == 0)
		return true;
	for (i = 0; i < owned->nglobs; i++)
		if (redis_glob_match(owned->globs[i], strlen(owned->globs[i]), key, len))
			return true;
	return false;
}

/* PING with flags: connects when needed (faults reported per flags). */
static bool
ping(int flags)
{
	RedisCommand cmd;

	redis_cmd_init(&cmd, "PING", 0);
	return redis_run(&cmd, flags) != NULL;
}

/* One walk of scan_unlink(): what it matches, keeps, and has removed. */
typedef struct ScanWalk
{
	const char *prefix;
	size_t		prefixlen;
	StringInfoData match;		/* the escaped prefix, then the pattern */
	int			flags;			/* redis_execute() flags */
	RedisRoundTrip round_trip;
	TimestampTz deadline;
	bool		keep_reserved;
	char	  **reserved;
	int			nreserved;
	const char *own_base;
	size_t		own_baselen;
	const OwnedKeys *owned;
	int			nmasters;		/* redis_master_count() at the start */
	int64		removed;
	MemoryContext batch_context;
} ScanWalk;

/* Whether the walk removes key k, one element of a SCAN reply. */
static bool
scan_wants(const ScanWalk *walk, const RedisReply *k)
{
	/* the cache version bookkeeping is never removed */
	if (k->type != RC_REPLY_STRING ||
		redis_is_control_key(k->str, k->len, walk->prefix, walk->prefixlen) ||
		(walk->keep_reserved &&
		 redis_is_reserved_key(k->str, k->len, walk->reserved,
							   walk->nreserved)))
		return false;
	if (walk->own_base != NULL &&
		redis_is_foreign_query_key(k->str, k->len, walk->prefix,
								   walk->prefixlen, walk->own_base,
								   walk->own_baselen))
		return false;
	/* a flush: only what the extension owns */
	if (walk->owned != NULL &&
		(k->len < walk->prefixlen ||
		 !is_owned(walk->owned, k->str + walk->prefixlen,
				   k->len - walk->prefixlen)))
		return false;
	return true;
}

/* Where a walk is on one master. */
typedef struct MasterScan
{
	char	   *cursor;			/* in the walk's context */
	int64		rounds;
	int64		max_rounds;
	int64		dbsize;
	bool		done;
	int			scan_index;		/* of its SCAN in the round's pipeline */
	int			dbsize_index;	/* of its DBSIZE, or -1 */
} MasterScan;

/*
 * The SCAN iterations of every master at once: each round sends one SCAN
 * to every master not done, in one pipeline that the cluster layer sends
 * to all of them together (one round trip of wall time, not one per
 * master), then one UNLINK of the keys the walk wants (split per slot).
 * False on a fault, when the deadline passes between two rounds, when a
 * master's rounds run out or the worker is asked to stop; true when every
 * cursor came back to 0 (a master no longer below redis_master_count() is
 * done: gone).
 */
static bool
scan_masters(ScanWalk *walk)
{
	int			n = walk->nmasters;
	MasterScan *m = palloc0(sizeof(MasterScan) * n);
	RedisCommand *cmds = palloc(sizeof(RedisCommand) * n * 2);
	RedisReply **replies = palloc(sizeof(RedisReply *) * n * 2);
	bool		ok = true;
	int			node;

	for (node = 0; node < n; node++)
		m[node].cursor = pstrdup("0");

	while (ok)
	{
		int			ncmds = 0;
		RedisCommand unlink_cmd;
		RedisReply *unlink_reply;
		MemoryContext old_context;

		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
		{
			redis_fault_set(RC_FAULT_TIMEOUT, "SCAN interrupted by shutdown");
			ok = false;
			break;
		}
		if (walk->deadline != 0 && GetCurrentTimestamp() >= walk->deadline)
		{
			ok = false;
			break;
		}

		old_context = MemoryContextSwitchTo(walk->batch_context);
		for (node = 0; node < n && ok; node++)
		{
			MasterScan *ms = &m[node];

			/* a failover may have left fewer masters: this one is done */
			if (ms->done || node >= redis_master_count())
			{
				ms->done = true;
				continue;
			}
			if (ms->rounds > 0 && ms->rounds >= ms->max_rounds)
			{
				scan_bound_hit(walk->match.data, node, n, ms->rounds,
							   ms->dbsize, walk->flags, walk->round_trip);
				ok = false;
				break;
			}
			/* the bound comes with the first round, in the same round trip */
			ms->dbsize_index = -1;
			if (ms->rounds == 0)
			{
				ms->dbsize_index = ncmds;
				redis_cmd_init(&cmds[ncmds], "DBSIZE", 0);
				redis_cmd_on_node(&cmds[ncmds++], node);
			}
			ms->scan_index = ncmds;
			redis_cmd_init(&cmds[ncmds], "SCAN", 5);
			redis_cmd_str(&cmds[ncmds], ms->cursor);
			redis_cmd_str(&cmds[ncmds], "MATCH");
			redis_cmd_arg(&cmds[ncmds], walk->match.data, walk->match.len);
			redis_cmd_str(&cmds[ncmds], "COUNT");
			redis_cmd_str(&cmds[ncmds], CppAsString2(RC_SCAN_COUNT));
			redis_cmd_on_node(&cmds[ncmds++], node);
		}
		if (!ok || ncmds == 0)
		{
			MemoryContextSwitchTo(old_context);
			break;
		}
		if (!scan_round_trip(walk->round_trip, cmds, ncmds, replies,
							 walk->flags, "SCAN"))
		{
			MemoryContextSwitchTo(old_context);
			ok = false;
			break;
		}

		/* keyed: a Redis Cluster splits it per slot and sums the counts */
		redis_cmd_init(&unlink_cmd, "UNLINK", RC_SCAN_COUNT);
		for (node = 0; node < n && ok; node++)
		{
			MasterScan *ms = &m[node];
			RedisReply *reply;
			RedisReply *keys;
			size_t		i;

			if (ms->done)
				continue;
			if (ms->dbsize_index >= 0)
				ms->max_rounds = scan_round_limit(replies[ms->dbsize_index],
												  &ms->dbsize);
			ms->rounds++;
			reply = replies[ms->scan_index];
			if (reply->type != RC_REPLY_ARRAY || reply->elements != 2 ||
				reply->element[0]->type != RC_REPLY_STRING ||
				reply->element[1]->type != RC_REPLY_ARRAY)
			{
				redis_fault_set(RC_FAULT_PROTOCOL, "unexpected reply to SCAN");
				ok = false;
				break;
			}
			keys = reply->element[1];
			for (i = 0; i < keys->elements; i++)
				if (scan_wants(walk, keys->element[i]))
					redis_cmd_key(&unlink_cmd, keys->element[i]->str,
								  keys->element[i]->len);
			/* the cursor outlives the batch */
			MemoryContextSwitchTo(old_context);
			pfree(ms->cursor);
			ms->cursor = pstrdup(reply->element[0]->str);
			ms->done = strcmp(ms->cursor, "0") == 0;
			MemoryContextSwitchTo(walk->batch_context);
		}
		if (ok && unlink_cmd.nkeys > 0)
		{
			if (!scan_round_trip(walk->round_trip, &unlink_cmd, 1,
								 &unlink_reply, walk->flags, "deleting keys"))
				ok = false;
			else if (unlink_reply->type == RC_REPLY_INTEGER)
				walk->removed += unlink_reply->integer;
		}
		MemoryContextSwitchTo(old_context);
		MemoryContextReset(walk->batch_context);
	}

	for (node = 0; node < n; node++)
		pfree(m[node].cursor);
	pfree(m);
	pfree(cmds);
	pfree(replies);
	MemoryContextReset(walk->batch_context);
	return ok;
}

/*
 * SCAN MATCH prefix||pattern on every master and UNLINK what it finds,
 * except the cache version's control keys, with RC_SCAN_KEEP_RESERVED in
 * flags every key reserved to the extension, when own_base is not NULL
 * the query results of other clusters (keys.c), and when owned is not
 * NULL every key it does not own.  pattern is a glob whose literal parts
 * are already escaped; the prefix is escaped here.  Returns the number of
 * keys removed; on a fault (or when deadline, if not 0, passes between two
 * SCAN rounds, or the rounds run out, or the worker is asked to stop) sets
 * *failed and returns what was removed until then.  flags are the
 * redis_execute() flags (faults reported per on_error); round_trip, if not
 * NULL, replaces redis_execute() (the version check's flush).
 */
static int64
scan_unlink(const char *prefix, const char *pattern, size_t patternlen,
			int flags, RedisRoundTrip round_trip, TimestampTz deadline,
			const char *own_base, const OwnedKeys *owned, bool *failed)
{
	ScanWalk	walk;

	walk.prefix = prefix;
	walk.prefixlen = strlen(prefix);
	walk.keep_reserved = (flags & RC_SCAN_KEEP_RESERVED) != 0;
	walk.flags = flags & ~RC_SCAN_KEEP_RESERVED;
	walk.round_trip = round_trip;
	walk.deadline = deadline;
	walk.reserved = NULL;
	walk.nreserved = 0;
	if (walk.keep_reserved)
		walk.nreserved = redis_reserved_namespaces(prefix, &walk.reserved);
	walk.own_base = own_base;
	walk.own_baselen = own_base ? strlen(own_base) : 0;
	walk.owned = owned;
	walk.removed = 0;
	initStringInfo(&walk.match);
	redis_append_glob_escaped(&walk.match, prefix, walk.prefixlen);
	appendBinaryStringInfo(&walk.match, pattern, (int) patternlen);
	walk.batch_context = AllocSetContextCreate(CurrentMemoryContext,
											   "redis_cache scan batch",
											   ALLOCSET_DEFAULT_SIZES);

	*failed = false;
	/* connected first: a cluster's masters are known from then on */
	if (round_trip == NULL && !ping(walk.flags))
		*failed = true;
	/* once per walk: a master added meanwhile is the next walk's */
	walk.nmasters = redis_master_count();
	if (!*failed)
		*failed = !scan_masters(&walk);

	MemoryContextDelete(walk.batch_context);
	pfree(walk.match.data);
	return walk.removed;
}

/* Every key the pattern matches but the control keys (no other filter). */
int64
redis_scan_unlink(const char *prefix, const char *pattern, size_t patternlen,
				  int flags, RedisRoundTrip round_trip, TimestampTz deadline,
				  bool *failed)
{
	return scan_unlink(prefix, pattern, patternlen, flags, round_trip,
					   deadline, NULL, NULL, failed);
}

/*
 * The worker's and the commit's form, which leaves other clusters' query
 * results alone: -1 on any fault.
 */
static int64
unlink_matching(const char *prefix, const char *pattern, TimestampTz deadline)
{
	bool		failed;
	char	   *own_base = redis_query_base(prefix);
	int64		removed = scan_unlink(prefix, pattern, strlen(pattern),
									  RC_EXEC_INTERNAL | RC_EXEC_NO_ERROR |
									  RC_EXEC_FAST_CONNECT |
									  RC_EXEC_IGNORE_ENABLED,
									  NULL, deadline, own_base, NULL, &failed);

	pfree(own_base);
	return failed ? -1 : removed;
}

/*
 * Open the connection if needed, for the worker's bookkeeping (no version
 * check: the worker only removes keys).
 */
static bool
ensure_connection(void)
{
	return ping(RC_EXEC_INTERNAL | RC_EXEC_NO_ERROR |
				RC_EXEC_FAST_CONNECT | RC_EXEC_IGNORE_ENABLED);
}

/*
 * Flush namespace prefix: remove the keys it owns (families.c), in one SCAN
 * pass, and nothing else: the query-result namespace (every cluster's with
 * all_clusters, the version check's flush, which serves every server
 * sharing the prefix; else this cluster's and timeline's only, the
 * worker's) and the owned families.  The version bookkeeping is kept.
 * flags and round_trip as redis_scan_unlink(); deadline 0 for none.
 * Returns the count; on a fault sets *failed (also when the families could
 * not be read: a partial list would leave stale keys).
 */
int64
redis_flush_owned(const char *prefix, int flags, RedisRoundTrip round_trip,
				  bool all_clusters, TimestampTz deadline, bool *failed)
{
	OwnedKeys	owned;
	char	   *own_base = NULL;
	size_t		prefixlen = strlen(prefix);
	int64		removed;

	*failed = false;
	if (round_trip == NULL && !ensure_connection())
	{
		*failed = true;
		return 0;
	}
	owned.nglobs = redis_owned_families(prefix, flags, round_trip, &owned.globs);
	if (owned.nglobs < 0)
	{
		*failed = true;
		return 0;
	}
	if (all_clusters)
		owned.query_base = RC_QUERY_NAMESPACE;
	else
	{
		own_base = redis_query_base(prefix);
		owned.query_base = own_base + prefixlen;
	}
	owned.query_baselen = strlen(owned.query_base);
	removed = scan_unlink(prefix, "*", 1, flags, round_trip, deadline,
						  own_base, &owned, failed);
	if (own_base)
		pfree(own_base);
	return removed;
}

/*
 * SCAN + UNLINK of prefix || pattern (pattern is a glob whose literal parts
 * are already escaped).  Returns the count, or -1 on a fault.
 */
int64
redis_unlink_pattern(const char *prefix, const char *pattern)
{
	if (!ensure_connection())
		return -1;
	return unlink_matching(prefix, pattern, 0);
}

/*
 * Same, giving up (-1) when the deadline passes between two SCAN rounds.
 */
int64
redis_unlink_pattern_until(const char *prefix, const char *pattern,
						   TimestampTz deadline)
{
	if (!ensure_connection())
		return -1;
	return unlink_matching(prefix, pattern, deadline);
}

/*
 * UNLINK one full key (prefix included).  False on a fault.
 */
bool
redis_unlink_raw(const char *key)
{
	RedisCommand cmd;

	redis_cmd_init(&cmd, "UNLINK", 1);
	redis_cmd_key_str(&cmd, key);
	return redis_run(&cmd, RC_EXEC_INTERNAL | RC_EXEC_NO_ERROR |
					 RC_EXEC_IGNORE_ENABLED) != NULL;
}

/*
 * UNLINK the cache version's bookkeeping keys of namespace prefix (a
 * namespace retired by cache_forget_namespace()).  False on a fault.
 */
bool
redis_unlink_bookkeeping(const char *prefix)
{
	RedisCommand cmd;
	int			i;

	redis_cmd_init(&cmd, "UNLINK", RC_NUM_CONTROL_KEYS);
	for (i = 0; i < RC_NUM_CONTROL_KEYS; i++)
		redis_cmd_key_str(&cmd, redis_control_key(prefix, i));
	return redis_run(&cmd, RC_EXEC_INTERNAL | RC_EXEC_NO_ERROR |
					 RC_EXEC_IGNORE_ENABLED) != NULL;
}
