/*-------------------------------------------------------------------------
 *
 * flush.c
 *		  Bulk removal: SCAN + UNLINK loops over a namespace or a pattern,
 *		  and single raw UNLINKs, for the version check, the worker, the
 *		  commit path and cache_delete_pattern().
 *
 * Design rules: never FLUSHDB, FLUSHALL or KEYS (managed Redis blocks them,
 * and keys outside the namespace must survive); the cache version's
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
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "redis_cache.h"

/*
 * One round trip for redis_scan_unlink(): over round_trip when the caller
 * has one (the session check runs on the connection it is checking),
 * otherwise through redis_execute() with the caller's flags.
 */
static bool
scan_round_trip(RedisRoundTrip round_trip, RedisCommand *cmd,
				RedisReply **reply, int flags, const char *what)
{
	if (round_trip != NULL)
	{
		if (!round_trip(cmd, 1, reply))
			return false;
		if ((*reply)->type == RC_REPLY_ERROR)
		{
			redis_fault_set(RC_FAULT_PROTOCOL, "Redis rejected %s: %s", what,
							(*reply)->str ? (*reply)->str : "(no message)");
			return false;
		}
		return true;
	}
	if (!redis_execute(cmd, 1, reply, flags))
		return false;
	if ((*reply)->type == RC_REPLY_ERROR)
	{
		redis_report_reply_error(*reply, what, flags);
		return false;
	}
	return true;
}

/*
 * SCAN MATCH prefix||pattern and UNLINK what it finds, except the cache
 * version's control keys, with RC_SCAN_KEEP_RESERVED in flags every key
 * reserved to the extension, and, when own_base is not NULL, the query
 * results of other clusters (keys.c).  pattern is a glob whose literal parts are
 * already escaped; the prefix is escaped here.  Returns the number of keys
 * removed; on a fault (or when deadline, if not 0, passes between two SCAN
 * rounds) sets *failed and returns what was removed until then.  flags are
 * the redis_execute() flags (faults reported per on_error); round_trip, if
 * not NULL, replaces redis_execute() (the version check's flush).
 */
static int64
scan_unlink(const char *prefix, const char *pattern, size_t patternlen,
			int flags, RedisRoundTrip round_trip, TimestampTz deadline,
			const char *own_base, bool *failed)
{
	size_t		prefixlen = strlen(prefix);
	size_t		own_baselen = own_base ? strlen(own_base) : 0;
	StringInfoData match;
	char	   *cursor = pstrdup("0");
	int64		removed = 0;
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
		const char *argv[6] = {"SCAN", cursor, "MATCH", match.data, "COUNT", "1000"};
		size_t		argvlen[6];
		RedisCommand cmd;
		RedisCommand unlink_cmd;
		RedisReply *reply;
		RedisReply *unlink_reply;
		RedisReply *keys;
		size_t		i;

		CHECK_FOR_INTERRUPTS();
		if (deadline != 0 && GetCurrentTimestamp() >= deadline)
		{
			*failed = true;
			break;
		}
		old_context = MemoryContextSwitchTo(batch_context);
		for (i = 0; i < 6; i++)
			argvlen[i] = strlen(argv[i]);
		argvlen[3] = match.len;
		cmd.argc = 6;
		cmd.argv = argv;
		cmd.argvlen = argvlen;
		if (!scan_round_trip(round_trip, &cmd, &reply, flags, "SCAN") ||
			reply->type != RC_REPLY_ARRAY || reply->elements != 2 ||
			reply->element[0]->type != RC_REPLY_STRING ||
			reply->element[1]->type != RC_REPLY_ARRAY)
		{
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
			unlink_cmd.argv[unlink_cmd.argc] = k->str;
			unlink_cmd.argvlen[unlink_cmd.argc] = k->len;
			unlink_cmd.argc++;
		}
		if (unlink_cmd.argc > 1)
		{
			if (!scan_round_trip(round_trip, &unlink_cmd, &unlink_reply, flags, "deleting keys"))
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
					   deadline, NULL, failed);
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
									  NULL, deadline, own_base, &failed);

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
 * Remove every key of the namespace except its version bookkeeping and
 * other clusters' query results.  Returns the count, or -1 on a fault
 * (nothing is raised).
 */
int64
redis_flush_prefix(const char *prefix)
{
	if (!ensure_connection())
		return -1;
	return unlink_matching(prefix, "*", 0);
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
