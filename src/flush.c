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
 * Every SCAN iteration is bounded: DBSIZE, pipelined with the first SCAN,
 * gives a number of rounds no real server needs (RC_SCAN_ROUNDS); a server
 * whose cursor has not come back to 0 by then is a fault (WARNING), and
 * the caller keeps its work pending.  Each round checks for interrupts and
 * for the background worker's shutdown request.
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
	RedisReply *last;

	if (round_trip != NULL)
	{
		if (!round_trip(cmds, ncmds, replies))
			return false;
		last = replies[ncmds - 1];
		if (last->type == RC_REPLY_ERROR)
		{
			redis_fault_set(RC_FAULT_PROTOCOL, "Redis rejected %s: %s", what,
							redis_printable(last->str, last->len));
			return false;
		}
		return true;
	}
	if (!redis_execute(cmds, ncmds, replies, flags))
		return false;
	last = replies[ncmds - 1];
	if (last->type == RC_REPLY_ERROR)
	{
		redis_report_reply_error(last, what, flags);
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
scan_bound_hit(const char *match, int64 rounds, int64 keys, int flags,
			   RedisRoundTrip round_trip)
{
	redis_fault_set(RC_FAULT_PROTOCOL,
					"SCAN MATCH \"%s\" did not finish within " INT64_FORMAT " rounds (DBSIZE " INT64_FORMAT "): the server's cursor never returned to 0",
					match, rounds, keys);
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
 * SCAN MATCH prefix||pattern and UNLINK what it finds, except the cache
 * version's control keys, with RC_SCAN_KEEP_RESERVED in flags every key
 * reserved to the extension, and, when own_base is not NULL, the query
 * results of other clusters (keys.c).  pattern is a glob whose literal parts are
 * already escaped; the prefix is escaped here.  Returns the number of keys
 * removed; on a fault (or when deadline, if not 0, passes between two SCAN
 * rounds, or the rounds run out, or the worker is asked to stop) sets
 * *failed and returns what was removed until then.  flags are
 * the redis_execute() flags (faults reported per on_error); round_trip, if
 * not NULL, replaces redis_execute() (the version check's flush).
 */
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

static int64
scan_unlink(const char *prefix, const char *pattern, size_t patternlen,
			int flags, RedisRoundTrip round_trip, TimestampTz deadline,
			const char *own_base, const OwnedKeys *owned, bool *failed)
{
	size_t		prefixlen = strlen(prefix);
	size_t		own_baselen = own_base ? strlen(own_base) : 0;
	StringInfoData match;
	char	   *cursor = pstrdup("0");
	int64		removed = 0;
	int64		rounds = 0;
	int64		max_rounds = 0;
	int64		dbsize = 0;
	MemoryContext batch_context;
	MemoryContext old_context;
	char	  **reserved = NULL;
	int			nreserved = 0;
	bool		keep_reserved = (flags & RC_SCAN_KEEP_RESERVED) != 0;

	*failed = false;
	flags &= ~RC_SCAN_KEEP_RESERVED;
	if (keep_reserved)
		nreserved = redis_reserved_namespaces(prefix, &reserved);
	initStringInfo(&match);
	redis_append_glob_escaped(&match, prefix, prefixlen);
	appendBinaryStringInfo(&match, pattern, (int) patternlen);

	batch_context = AllocSetContextCreate(CurrentMemoryContext,
										  "redis_cache scan batch",
										  ALLOCSET_DEFAULT_SIZES);
	do
	{
		const char *argv[6] = {"SCAN", cursor, "MATCH", match.data, "COUNT",
		CppAsString2(RC_SCAN_COUNT)};
		size_t		argvlen[6];
		const char *dbsize_argv[1] = {"DBSIZE"};
		size_t		dbsize_argvlen[1] = {6};
		RedisCommand cmds[2];
		int			ncmds = 0;
		RedisCommand unlink_cmd;
		RedisReply *replies[2];
		RedisReply *reply;
		RedisReply *unlink_reply;
		RedisReply *keys;
		size_t		i;

		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
		{
			redis_fault_set(RC_FAULT_TIMEOUT, "SCAN interrupted by shutdown");
			*failed = true;
			break;
		}
		if (deadline != 0 && GetCurrentTimestamp() >= deadline)
		{
			*failed = true;
			break;
		}
		if (rounds > 0 && rounds >= max_rounds)
		{
			scan_bound_hit(match.data, rounds, dbsize, flags, round_trip);
			*failed = true;
			break;
		}
		old_context = MemoryContextSwitchTo(batch_context);
		/* the bound comes with the first round, in the same round trip */
		if (rounds == 0)
		{
			cmds[ncmds].argc = 1;
			cmds[ncmds].argv = dbsize_argv;
			cmds[ncmds].argvlen = dbsize_argvlen;
			ncmds++;
		}
		for (i = 0; i < 6; i++)
			argvlen[i] = strlen(argv[i]);
		argvlen[3] = match.len;
		cmds[ncmds].argc = 6;
		cmds[ncmds].argv = argv;
		cmds[ncmds].argvlen = argvlen;
		ncmds++;
		if (!scan_round_trip(round_trip, cmds, ncmds, replies, flags, "SCAN"))
		{
			MemoryContextSwitchTo(old_context);
			*failed = true;
			break;
		}
		if (rounds == 0)
			max_rounds = scan_round_limit(replies[0], &dbsize);
		rounds++;
		reply = replies[ncmds - 1];
		if (reply->type != RC_REPLY_ARRAY || reply->elements != 2 ||
			reply->element[0]->type != RC_REPLY_STRING ||
			reply->element[1]->type != RC_REPLY_ARRAY)
		{
			redis_fault_set(RC_FAULT_PROTOCOL, "unexpected reply to SCAN");
			MemoryContextSwitchTo(old_context);
			*failed = true;
			break;
		}

		keys = reply->element[1];
		unlink_cmd.argv = palloc(sizeof(char *) * (keys->elements + 1));
		unlink_cmd.argvlen = palloc(sizeof(size_t) * (keys->elements + 1));
		unlink_cmd.argv[0] = "UNLINK";
		unlink_cmd.argvlen[0] = 6;
		unlink_cmd.argc = 1;
		for (i = 0; i < keys->elements; i++)
		{
			RedisReply *k = keys->element[i];

			/* the cache version bookkeeping is never removed */
			if (k->type != RC_REPLY_STRING ||
				redis_is_control_key(k->str, k->len, prefix, prefixlen) ||
				(keep_reserved &&
				 redis_is_reserved_key(k->str, k->len, reserved, nreserved)))
				continue;
			if (own_base != NULL &&
				redis_is_foreign_query_key(k->str, k->len, prefix, prefixlen,
										   own_base, own_baselen))
				continue;
			/* a flush: only what the extension owns */
			if (owned != NULL &&
				(k->len < prefixlen ||
				 !is_owned(owned, k->str + prefixlen, k->len - prefixlen)))
				continue;
			unlink_cmd.argv[unlink_cmd.argc] = k->str;
			unlink_cmd.argvlen[unlink_cmd.argc] = k->len;
			unlink_cmd.argc++;
		}
		if (unlink_cmd.argc > 1)
		{
			if (!scan_round_trip(round_trip, &unlink_cmd, 1, &unlink_reply, flags, "deleting keys"))
			{
				MemoryContextSwitchTo(old_context);
				*failed = true;
				break;
			}
			if (unlink_reply->type == RC_REPLY_INTEGER)
				removed += unlink_reply->integer;
		}
		MemoryContextSwitchTo(old_context);
		pfree(cursor);
		cursor = pstrdup(reply->element[0]->str);
		MemoryContextReset(batch_context);
	} while (strcmp(cursor, "0") != 0);

	MemoryContextDelete(batch_context);
	pfree(match.data);
	return removed;
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
	const char *argv[1] = {"PING"};
	size_t		argvlen[1] = {4};

	return redis_command(RC_EXEC_INTERNAL | RC_EXEC_NO_ERROR |
						 RC_EXEC_FAST_CONNECT | RC_EXEC_IGNORE_ENABLED,
						 1, argv, argvlen) != NULL;
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
	const char *argv[2] = {"UNLINK", key};
	size_t		argvlen[2] = {6, strlen(key)};

	return redis_command(RC_EXEC_INTERNAL | RC_EXEC_NO_ERROR |
						 RC_EXEC_IGNORE_ENABLED, 2, argv, argvlen) != NULL;
}

/*
 * UNLINK the cache version's bookkeeping keys of namespace prefix (a
 * namespace retired by cache_forget_namespace()).  False on a fault.
 */
bool
redis_unlink_bookkeeping(const char *prefix)
{
	const char *argv[1 + RC_NUM_CONTROL_KEYS];
	size_t		argvlen[1 + RC_NUM_CONTROL_KEYS];
	int			i;

	argv[0] = "UNLINK";
	argvlen[0] = 6;
	for (i = 0; i < RC_NUM_CONTROL_KEYS; i++)
	{
		argv[i + 1] = redis_control_key(prefix, i);
		argvlen[i + 1] = strlen(argv[i + 1]);
	}
	return redis_command(RC_EXEC_INTERNAL | RC_EXEC_NO_ERROR |
						 RC_EXEC_IGNORE_ENABLED, 1 + RC_NUM_CONTROL_KEYS,
						 argv, argvlen) != NULL;
}
