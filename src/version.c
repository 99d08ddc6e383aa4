/*-------------------------------------------------------------------------
 *
 * version.c
 *		  Cache version management: no entry written under an old deploy or
 *		  restored from an old Redis snapshot is ever served.
 *
 * Every connection checks its namespace (key_prefix) before the first
 * command of a caller, and again after every reconnect, after a change of
 * redis_cache.version or key_prefix, and while a flush is in progress.  The
 * check is one atomic Lua script over these keys (all under key_prefix):
 *
 *   cache:version    the version in force (the key the applications' own
 *                    cache-version code uses too)
 *   cache:versions   hash version -> first time it was seen (Redis TIME, ms)
 *   cache:run_id     run_id of the Redis process that last checked
 *   cache:flush      marker with a TTL while one backend flushes
 *   cache:flushed    "version|run_id" whose flush completed
 *
 * The script decides, atomically, exactly one backend that flushes: on a
 * version mismatch with a version never seen before, on a new run_id (a
 * restart, possibly from a snapshot that predates later invalidations), or
 * when an earlier flush was abandoned (marker expired, cache:flushed stale).
 * That backend removes every key under the prefix except the ones above with
 * SCAN + UNLINK (never FLUSHDB or KEYS: keys outside the prefix and managed
 * Redis survive), then records cache:flushed.  Others bypass the cache while
 * the marker exists and check again on their next command.
 *
 * Two servers with different versions do not flush each other in a loop:
 * a version already recorded in cache:versions as older than the one in
 * force is superseded, and its servers bypass the cache (every read a miss,
 * every write skipped) until they are deployed with a new version.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "funcapi.h"
#include "libpq/auth.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "redis_cache.h"

/* Seconds a flushing backend may take before another one resumes. */
#define RC_FLUSH_MARKER_TTL		"60"

/* A superseded server looks again this often, in case it became current. */
#define RC_STALE_RECHECK_MS		10000

typedef enum CheckState
{
	CHECK_NONE,					/* not checked for this connection/namespace */
	CHECK_OK,
	CHECK_FLUSHING,				/* another backend is flushing: re-check */
	CHECK_STALE					/* our version is superseded */
} CheckState;

/* Per-backend result of the last check. */
static CheckState check_state = CHECK_NONE;
static uint64 checked_serial = 0;
static uint64 checked_version_generation = 0;
static TimestampTz checked_at = 0;
static char checked_prefix[RC_MAX_KEY_BYTES + 1];
static char stored_version_seen[256];
static bool stale_warned = false;	/* told the client since going stale */

static ClientAuthentication_hook_type prev_client_authentication_hook = NULL;

PG_FUNCTION_INFO_V1(cache_version);

/*
 * The atomic compare step.  KEYS: version, versions, run_id, flush, flushed.
 * ARGV: expected version, run_id ("" if unknown), marker token, marker TTL.
 * Returns {action, detail}: INIT, OK, STALE stored, FLUSHING,
 * FLUSH mismatch stored, FLUSH restart, FLUSH resume.
 */
static const char *check_script =
"local stored = redis.call('GET', KEYS[1])\n"
"local t = redis.call('TIME')\n"
"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
"local done = ARGV[1] .. '|' .. ARGV[2]\n"
"if not stored then\n"
"  redis.call('SET', KEYS[1], ARGV[1])\n"
"  redis.call('HSETNX', KEYS[2], ARGV[1], now)\n"
"  redis.call('SET', KEYS[3], ARGV[2])\n"
"  redis.call('SET', KEYS[5], done)\n"
"  return {'INIT', ''}\n"
"end\n"
"if stored ~= ARGV[1] then\n"
"  local mine = redis.call('HGET', KEYS[2], ARGV[1])\n"
"  local theirs = redis.call('HGET', KEYS[2], stored)\n"
"  if mine and (not theirs or tonumber(mine) < tonumber(theirs)) then\n"
"    return {'STALE', stored}\n"
"  end\n"
"  redis.call('SET', KEYS[1], ARGV[1])\n"
"  redis.call('HSETNX', KEYS[2], ARGV[1], now)\n"
"  redis.call('SET', KEYS[3], ARGV[2])\n"
"  redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[4])\n"
"  return {'FLUSH', 'mismatch', stored}\n"
"end\n"
"local seen = redis.call('GET', KEYS[3])\n"
"if ARGV[2] ~= '' and seen ~= ARGV[2] then\n"
"  redis.call('SET', KEYS[3], ARGV[2])\n"
"  redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[4])\n"
"  return {'FLUSH', 'restart', seen or ''}\n"
"end\n"
"if redis.call('EXISTS', KEYS[4]) == 1 then\n"
"  return {'FLUSHING', ''}\n"
"end\n"
"if redis.call('GET', KEYS[5]) ~= done then\n"
"  redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[4])\n"
"  return {'FLUSH', 'resume', ''}\n"
"end\n"
"return {'OK', ''}\n";

/* Release the marker only if it is still ours, and record completion. */
static const char *finish_script =
"if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
"  redis.call('DEL', KEYS[1])\n"
"end\n"
"redis.call('SET', KEYS[2], ARGV[2])\n"
"return 1\n";

static const char *const control_suffixes[] = {
	"cache:version", "cache:versions", "cache:run_id", "cache:flush",
	"cache:flushed"
};

#define NUM_CONTROL_KEYS lengthof(control_suffixes)

/*
 * The version this server expects: redis_cache.version, else the
 * environment variable REDIS_CACHE_VERSION (inherited from the postmaster),
 * else "1".
 */
const char *
redis_version_expected(void)
{
	const char *env;

	if (redis_cache_version && redis_cache_version[0])
		return redis_cache_version;
	env = getenv("REDIS_CACHE_VERSION");
	if (env && env[0] && strlen(env) <= 200 && strchr(env, '|') == NULL)
		return env;
	return "1";
}

static const char *
current_prefix(void)
{
	return redis_cache_key_prefix ? redis_cache_key_prefix : "";
}

/*
 * True for the bookkeeping keys of the namespace "prefix", which flushes
 * and cache_delete_pattern() leave alone.
 */
bool
redis_is_control_key(const char *key, size_t len, const char *prefix,
					 size_t prefixlen)
{
	int			i;

	if (len < prefixlen || memcmp(key, prefix, prefixlen) != 0)
		return false;
	for (i = 0; i < (int) NUM_CONTROL_KEYS; i++)
	{
		size_t		slen = strlen(control_suffixes[i]);

		if (len - prefixlen == slen &&
			memcmp(key + prefixlen, control_suffixes[i], slen) == 0)
			return true;
	}
	return false;
}

/*
 * One round trip for redis_scan_unlink(): internal ones (inside a version
 * check, or the worker) skip the connection layer's retries and reporting.
 */
static bool
scan_round_trip(RedisCommand *cmd, RedisReply **reply, int flags,
				const char *what)
{
	if (flags & RC_EXEC_INTERNAL)
		return redis_internal_round_trip(cmd, 1, reply);
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
 * version's control keys.  pattern is a glob whose literal parts are
 * already escaped; the prefix is escaped here.  Returns the number of keys
 * removed; on a fault (or when deadline, if not 0, passes between two SCAN
 * rounds) sets *failed and returns what was removed until then.  flags:
 * RC_EXEC_INTERNAL for the version check and the worker, else the caller's
 * redis_execute() flags (faults reported per on_error).
 */
int64
redis_scan_unlink(const char *prefix, const char *pattern, size_t patternlen,
				  int flags, TimestampTz deadline, bool *failed)
{
	size_t		prefixlen = strlen(prefix);
	StringInfoData match;
	char	   *cursor = pstrdup("0");
	int64		removed = 0;
	MemoryContext batch_context;
	MemoryContext old_context;

	*failed = false;
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
		if (!scan_round_trip(&cmd, &reply, flags, "SCAN") ||
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
				redis_is_control_key(k->str, k->len, prefix, prefixlen))
				continue;
			unlink_cmd.argv[unlink_cmd.argc] = k->str;
			unlink_cmd.argvlen[unlink_cmd.argc] = k->len;
			unlink_cmd.argc++;
		}
		if (unlink_cmd.argc > 1)
		{
			if (!scan_round_trip(&unlink_cmd, &unlink_reply, flags, "deleting keys"))
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

/* The worker's and the version check's form: -1 on any fault. */
static int64
unlink_matching(const char *prefix, const char *pattern, TimestampTz deadline)
{
	bool		failed;
	int64		removed = redis_scan_unlink(prefix, pattern, strlen(pattern),
											RC_EXEC_INTERNAL, deadline, &failed);

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
 * Remove every key of the namespace except its version bookkeeping.
 * Returns the count, or -1 on a fault (nothing is raised).
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
 * Run the check script, flushing when this backend is elected.
 */
static RedisVersionStatus
run_check(void)
{
	const char *prefix = current_prefix();
	const char *expected = redis_version_expected();
	const char *run_id = redis_connection_run_id();
	char	   *control[NUM_CONTROL_KEYS];
	char		token[33];
	uint8		random_bytes[16];
	const char *argv[3 + NUM_CONTROL_KEYS + 4];
	size_t		argvlen[3 + NUM_CONTROL_KEYS + 4];
	RedisCommand cmd;
	RedisReply *reply;
	const char *action;
	int			i;
	int			argc = 0;

	for (i = 0; i < (int) NUM_CONTROL_KEYS; i++)
		control[i] = psprintf("%s%s", prefix, control_suffixes[i]);
	if (!pg_strong_random(random_bytes, sizeof(random_bytes)))
		memset(random_bytes, 0, sizeof(random_bytes));
	for (i = 0; i < 16; i++)
		snprintf(token + i * 2, 3, "%02x", random_bytes[i]);

	argv[argc++] = "EVAL";
	argv[argc++] = check_script;
	argv[argc++] = "5";
	for (i = 0; i < (int) NUM_CONTROL_KEYS; i++)
		argv[argc++] = control[i];
	argv[argc++] = expected;
	argv[argc++] = run_id;
	argv[argc++] = token;
	argv[argc++] = RC_FLUSH_MARKER_TTL;
	for (i = 0; i < argc; i++)
		argvlen[i] = strlen(argv[i]);
	cmd.argc = argc;
	cmd.argv = argv;
	cmd.argvlen = argvlen;

	if (!redis_internal_round_trip(&cmd, 1, &reply))
		return RC_VERSION_FAULT;
	if (reply->type == RC_REPLY_ERROR)
	{
		/* EVAL disabled or similar: we cannot vouch for the namespace */
		ereport(WARNING,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("redis_cache: cache version check failed, the cache is bypassed"),
				 errdetail("Redis replied: %s", reply->str)));
		check_state = CHECK_STALE;
		return RC_VERSION_BYPASS;
	}
	if (reply->type != RC_REPLY_ARRAY || reply->elements < 2 ||
		reply->element[0]->type != RC_REPLY_STRING)
		return RC_VERSION_FAULT;

	action = reply->element[0]->str;
	stored_version_seen[0] = '\0';
	if (strcmp(action, "INIT") == 0)
	{
		ereport(LOG,
				(errmsg("redis_cache: cache version initialized to \"%s\" for prefix \"%s\"",
						expected, prefix)));
		check_state = CHECK_OK;
	}
	else if (strcmp(action, "OK") == 0)
		check_state = CHECK_OK;
	else if (strcmp(action, "FLUSHING") == 0)
		check_state = CHECK_FLUSHING;
	else if (strcmp(action, "STALE") == 0)
	{
		strlcpy(stored_version_seen, reply->element[1]->str ? reply->element[1]->str : "",
				sizeof(stored_version_seen));
		if (check_state != CHECK_STALE)
			stale_warned = false;
		check_state = CHECK_STALE;
	}
	else if (strcmp(action, "FLUSH") == 0)
	{
		const char *reason = reply->element[1]->str ? reply->element[1]->str : "";
		int64		removed;
		char	   *done;
		const char *fargv[7];
		size_t		flen[7];
		RedisCommand finish;
		RedisReply *freply;

		if (strcmp(reason, "restart") == 0)
			ereport(LOG,
					(errmsg("redis_cache: Redis restart detected (run_id %s), flushing prefix \"%s\"",
							run_id, prefix)));
		removed = unlink_matching(prefix, "*", 0);
		if (removed < 0)
			return RC_VERSION_FAULT;
		redis_stats_add(RC_STAT_FLUSHES, 1);
		if (strcmp(reason, "mismatch") == 0)
			ereport(LOG,
					(errmsg("redis_cache: cache version mismatch (stored %s, expected %s): flushing " INT64_FORMAT " keys",
							reply->elements > 2 && reply->element[2]->str ? reply->element[2]->str : "",
							expected, removed)));
		else
			ereport(LOG,
					(errmsg("redis_cache: flushed " INT64_FORMAT " keys under prefix \"%s\" (%s)",
							removed, prefix, reason)));

		done = psprintf("%s|%s", expected, run_id);
		fargv[0] = "EVAL";
		fargv[1] = finish_script;
		fargv[2] = "2";
		fargv[3] = control[3];
		fargv[4] = control[4];
		fargv[5] = token;
		fargv[6] = done;
		for (i = 0; i < 7; i++)
			flen[i] = strlen(fargv[i]);
		finish.argc = 7;
		finish.argv = fargv;
		finish.argvlen = flen;
		if (!redis_internal_round_trip(&finish, 1, &freply))
			return RC_VERSION_FAULT;
		check_state = CHECK_OK;
	}
	else
		return RC_VERSION_FAULT;

	checked_serial = redis_connection_serial();
	checked_version_generation = redis_cache_version_generation;
	strlcpy(checked_prefix, prefix, sizeof(checked_prefix));
	checked_at = GetCurrentTimestamp();

	return check_state == CHECK_OK ? RC_VERSION_OK : RC_VERSION_BYPASS;
}

/*
 * Called by redis_execute() on an open connection before a caller's
 * commands.  Cheap when nothing changed since the last check.
 */
RedisVersionStatus
redis_version_verify(int flags)
{
	bool		needed;
	RedisVersionStatus status;

	needed = check_state == CHECK_NONE ||
		check_state == CHECK_FLUSHING ||
		checked_serial != redis_connection_serial() ||
		checked_version_generation != redis_cache_version_generation ||
		strcmp(checked_prefix, current_prefix()) != 0;

	if (!needed && check_state == CHECK_STALE &&
		TimestampDifferenceExceeds(checked_at, GetCurrentTimestamp(),
								   RC_STALE_RECHECK_MS))
		needed = true;

	if (!needed)
		status = check_state == CHECK_OK ? RC_VERSION_OK : RC_VERSION_BYPASS;
	else
		status = run_check();

	/* say so once per episode, to a client that can hear it */
	if (status == RC_VERSION_BYPASS && check_state == CHECK_STALE &&
		!stale_warned && !(flags & RC_EXEC_STARTUP))
	{
		stale_warned = true;
		ereport(WARNING,
				(errmsg("redis_cache: cache version \"%s\" is older than \"%s\" in force in Redis; the cache is bypassed",
						redis_version_expected(), stored_version_seen),
				 errhint("Deploy this server with a new redis_cache.version to use the cache again.")));
	}
	return status;
}

/*
 * Check the version as soon as the backend starts, without ever failing the
 * connection: a fault or even an ERROR is logged and the check is retried
 * at the next command.
 */
void
redis_version_startup_check(void)
{
	MemoryContext context;
	MemoryContext old_context;
	const char *argv[1] = {"PING"};
	size_t		argvlen[1] = {4};

	if (!redis_cache_enabled)
		return;

	context = AllocSetContextCreate(TopMemoryContext, "redis_cache startup",
									ALLOCSET_SMALL_SIZES);
	old_context = MemoryContextSwitchTo(context);
	PG_TRY();
	{
		(void) redis_command(RC_EXEC_NO_ERROR | RC_EXEC_STARTUP, 1, argv, argvlen);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(context);
		edata = CopyErrorData();
		FlushErrorState();
		ereport(LOG,
				(errmsg("redis_cache: cache version check at backend start failed: %s",
						edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old_context);
	MemoryContextDelete(context);
}

/*
 * With shared_preload_libraries, run the check right after authentication,
 * before the first query.  Settings from postgresql.conf and ALTER SYSTEM
 * are in force there; per-database or per-role key_prefix values are
 * applied later and checked at first use.
 */
static void
redis_cache_client_authentication(Port *port, int status)
{
	if (prev_client_authentication_hook)
		prev_client_authentication_hook(port, status);
	if (status == STATUS_OK && AmRegularBackendProcess())
		redis_version_startup_check();
}

void
redis_version_install_hooks(void)
{
	prev_client_authentication_hook = ClientAuthentication_hook;
	ClientAuthentication_hook = redis_cache_client_authentication;
}

/*
 * cache_version() RETURNS TABLE(expected text, stored text, run_id text,
 * checked_at timestamptz)
 *
 * Reading cache:version goes through redis_execute(), so it runs the check
 * first when one is due.
 */
Datum
cache_version(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	size_t		klen;
	const char *k = "cache:version";
	char	   *key = redis_make_key_cstring(k, strlen(k), &klen);
	const char *argv[2] = {"GET", key};
	size_t		argvlen[2] = {3, klen};
	RedisReply *reply;
	const char *run_id;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	reply = redis_command(0, 2, argv, argvlen);
	values[0] = CStringGetTextDatum(redis_version_expected());
	if (reply != NULL && reply->type == RC_REPLY_STRING &&
		pg_verifymbstr(reply->str, (int) reply->len, true))
		values[1] = PointerGetDatum(cstring_to_text_with_len(reply->str, (int) reply->len));
	else if (check_state == CHECK_STALE && stored_version_seen[0])
		values[1] = CStringGetTextDatum(stored_version_seen);
	else
		nulls[1] = true;
	run_id = redis_connection_run_id();
	if (run_id[0])
		values[2] = CStringGetTextDatum(run_id);
	else
		nulls[2] = true;
	if (checked_at != 0)
		values[3] = TimestampTzGetDatum(checked_at);
	else
		nulls[3] = true;

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
