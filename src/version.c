/*-------------------------------------------------------------------------
 *
 * version.c
 *		  Cache version management: no entry written under an old deploy or
 *		  restored from an old Redis snapshot is ever served.
 *
 * Every connection checks its namespace (key_prefix) before the first
 * command of a caller, and again after every reconnect, after a change of
 * redis_cache.version or key_prefix, and while a flush is in progress.  The
 * check is one atomic Lua script (scripts.c) over these keys, all under
 * key_prefix and in one Redis Cluster slot (hashtag {cache}, keys.c):
 *
 *   {cache}:version   the version in force (the key the applications' own
 *                     cache-version code can read too)
 *   {cache}:versions  hash version -> first time it was seen (Redis TIME, ms)
 *   {cache}:run_id    run_id of the Redis process that last checked
 *   {cache}:flush     marker with a TTL while one backend flushes
 *   {cache}:flushed   "version|run_id" whose flush completed
 *   {cache}:families  the owned families (families.c), renamed with the rest
 *
 * Versions 1.1 to 1.6 named them cache:version, ...: on a standalone server
 * the script is also given the legacy names, and the first check that
 * finds no current version but a legacy one renames them all, atomically,
 * before deciding (an upgrade is not a first run, which would skip a flush
 * a new version or a Redis restart needs).
 *
 * The script decides, atomically, exactly one backend that flushes: on a
 * version mismatch with a version never seen before, on a new run_id (a
 * restart, possibly from a snapshot that predates later invalidations), or
 * when an earlier flush was abandoned (marker expired, {cache}:flushed stale).
 * That backend removes the keys the extension owns under the prefix (the
 * query results of every cluster and the owned families, families.c; never
 * the keys above, never anything else: sessions and job queues share the
 * database) with SCAN + UNLINK (never FLUSHDB or KEYS), then records
 * {cache}:flushed.  Others bypass the cache while
 * the marker exists and check again on their next command.
 *
 * Two servers with different versions do not flush each other in a loop:
 * a version already recorded in {cache}:versions as older than the one in
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
#include "utils/guc.h"
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

/* redis_cache.version, and a counter its assign hook bumps */
static char *expected_version = NULL;
static uint64 version_generation = 0;

PG_FUNCTION_INFO_V1(cache_version);

/* The version setting value means: itself, else the environment, else "1". */
static const char *
effective_version(const char *setting)
{
	const char *env;

	if (setting && setting[0])
		return setting;
	env = getenv("REDIS_CACHE_VERSION");
	if (env && env[0] && strlen(env) <= 200 && strchr(env, '|') == NULL)
		return env;
	return "1";
}

/*
 * The version this server expects: redis_cache.version, else the
 * environment variable REDIS_CACHE_VERSION (inherited from the postmaster),
 * else "1".
 */
const char *
redis_version_expected(void)
{
	return effective_version(expected_version);
}

static const char *
current_prefix(void)
{
	return redis_cache_key_prefix ? redis_cache_key_prefix : "";
}

/*
 * Run the check script, flushing when this backend is elected.  flags are
 * the caller's redis_execute() flags, for reporting.
 */
static RedisSessionStatus
run_check(RedisRoundTrip round_trip, int flags)
{
	const char *prefix = current_prefix();
	const char *expected = redis_version_expected();
	const char *run_id = redis_connection_run_id();
	char	   *control[RC_NUM_CONTROL_KEYS];
	char		token[33];
	uint8		random_bytes[16];
	/* a cluster has no legacy keys to rename, and they hash elsewhere */
	bool		migrate = !redis_server_is_cluster();
	RedisCommand cmd;
	RedisReply *reply;
	const char *action;
	int			i;

	for (i = 0; i < (int) RC_NUM_CONTROL_KEYS; i++)
		control[i] = redis_control_key(prefix, i);
	if (!pg_strong_random(random_bytes, sizeof(random_bytes)))
		memset(random_bytes, 0, sizeof(random_bytes));
	for (i = 0; i < 16; i++)
		snprintf(token + i * 2, 3, "%02x", random_bytes[i]);

	redis_script_cmd(&cmd, RC_SCRIPT_VERSION_CHECK,
					 RC_NUM_CONTROL_KEYS * (migrate ? 2 : 1), 4);
	for (i = 0; i < RC_NUM_CONTROL_KEYS; i++)
		redis_cmd_key_str(&cmd, control[i]);
	for (i = 0; migrate && i < RC_NUM_CONTROL_KEYS; i++)
		redis_cmd_key_str(&cmd, redis_legacy_control_key(prefix, i));
	redis_cmd_str(&cmd, expected);
	redis_cmd_str(&cmd, run_id);
	redis_cmd_str(&cmd, token);
	redis_cmd_str(&cmd, RC_FLUSH_MARKER_TTL);

	if (!redis_execute_scripts_on(round_trip, &cmd, 1, &reply))
		return RC_SESSION_FAULT;
	if (reply->type == RC_REPLY_ERROR)
	{
		/*
		 * Refused (out of memory, busy, EVAL disabled): we cannot vouch for
		 * the namespace, so bypass, and check again at the next command.
		 * Not "superseded": nothing says another version is in force.
		 */
		redis_report_reply_error(reply, "the cache version check (the cache is bypassed)",
								 flags);
		check_state = CHECK_NONE;
		return RC_SESSION_BYPASS;
	}
	if (reply->type != RC_REPLY_ARRAY || reply->elements < 2 ||
		reply->element[0]->type != RC_REPLY_STRING ||
		reply->element[1]->type != RC_REPLY_STRING)
	{
		redis_fault_set(RC_FAULT_PROTOCOL,
						"unexpected reply to the cache version check (is this a Redis server?)");
		return RC_SESSION_FAULT;
	}

	action = reply->element[0]->str;
	stored_version_seen[0] = '\0';
	if (reply->elements > 3 && reply->element[3]->type == RC_REPLY_STRING &&
		strcmp(reply->element[3]->str, "1") == 0)
		ereport(LOG,
				(errmsg("redis_cache: renamed the cache version bookkeeping keys of prefix \"%s\" to the names of version 1.7 (%s{cache}:version, ...)",
						prefix, prefix)));
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
		/* text from Redis: printable ASCII only, it reaches messages and SQL */
		strlcpy(stored_version_seen,
				redis_printable(reply->element[1]->str, reply->element[1]->len),
				sizeof(stored_version_seen));
		if (check_state != CHECK_STALE)
			stale_warned = false;
		check_state = CHECK_STALE;
	}
	else if (strcmp(action, "FLUSH") == 0)
	{
		const char *reason = reply->element[1]->str ? reply->element[1]->str : "";
		int64		removed;
		bool		failed;
		char	   *done;
		RedisCommand finish;
		RedisReply *freply;

		if (strcmp(reason, "restart") == 0)
			ereport(LOG,
					(errmsg("redis_cache: Redis restart detected (run_id %s), flushing the cache's own keys under prefix \"%s\"",
							run_id, prefix),
					 errdetail("The server's run_id changed: Redis restarted, was restored, or a replica took over as master (failover); invalidations it may have lost are covered by the flush.")));
		/* the owned keys only: sessions, queues, other data stay */
		removed = redis_flush_owned(prefix, RC_EXEC_INTERNAL, round_trip,
									true, 0, &failed);
		if (failed)
			return RC_SESSION_FAULT;
		redis_stats_add(RC_STAT_FLUSHES, 1);
		if (strcmp(reason, "mismatch") == 0)
			ereport(LOG,
					(errmsg("redis_cache: cache version mismatch (stored %s, expected %s): flushed " INT64_FORMAT " owned keys (query results and owned key families)",
							reply->elements > 2 && reply->element[2]->str ? reply->element[2]->str : "",
							expected, removed)));
		else
			ereport(LOG,
					(errmsg("redis_cache: flushed " INT64_FORMAT " owned keys under prefix \"%s\" (%s)",
							removed, prefix, reason)));

		done = psprintf("%s|%s", expected, run_id);
		redis_script_cmd(&finish, RC_SCRIPT_VERSION_FINISH, 2, 2);
		redis_cmd_key_str(&finish, control[RC_CONTROL_FLUSH]);
		redis_cmd_key_str(&finish, control[RC_CONTROL_FLUSHED]);
		redis_cmd_str(&finish, token);
		redis_cmd_str(&finish, done);
		if (!redis_execute_scripts_on(round_trip, &finish, 1, &freply))
			return RC_SESSION_FAULT;
		check_state = CHECK_OK;
	}
	else
	{
		redis_fault_set(RC_FAULT_PROTOCOL,
						"unexpected reply to the cache version check (is this a Redis server?)");
		return RC_SESSION_FAULT;
	}

	checked_serial = redis_connection_serial();
	checked_version_generation = version_generation;
	strlcpy(checked_prefix, prefix, sizeof(checked_prefix));
	checked_at = GetCurrentTimestamp();

	return check_state == CHECK_OK ? RC_SESSION_OK : RC_SESSION_BYPASS;
}

/*
 * The session check (connection.c calls it on an open connection before a
 * caller's commands; round_trip runs on that connection).  Cheap when
 * nothing changed since the last check.
 */
static RedisSessionStatus
version_session_check(int flags, RedisRoundTrip round_trip)
{
	bool		needed;
	RedisSessionStatus status;

	needed = check_state == CHECK_NONE ||
		check_state == CHECK_FLUSHING ||
		checked_serial != redis_connection_serial() ||
		checked_version_generation != version_generation ||
		strcmp(checked_prefix, current_prefix()) != 0;

	if (!needed && check_state == CHECK_STALE &&
		TimestampDifferenceExceeds(checked_at, GetCurrentTimestamp(),
								   RC_STALE_RECHECK_MS))
		needed = true;

	if (!needed)
		status = check_state == CHECK_OK ? RC_SESSION_OK : RC_SESSION_BYPASS;
	else
		status = run_check(round_trip, flags);

	/* say so once per episode, to a client that can hear it */
	if (status == RC_SESSION_BYPASS && check_state == CHECK_STALE &&
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
	if (!redis_cache_enabled)
		return;

	context = AllocSetContextCreate(TopMemoryContext, "redis_cache startup",
									ALLOCSET_SMALL_SIZES);
	old_context = MemoryContextSwitchTo(context);
	PG_TRY();
	{
		(void) redis_run(redis_cmd_new("PING", 0),
						 RC_EXEC_NO_ERROR | RC_EXEC_STARTUP);
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

/*
 * A new expected version means a new version check; the local cache
 * serves only entries of the version its tracking worker runs with.
 */
static void
assign_version(const char *newval, void *extra)
{
	version_generation++;
	redis_local_set_version(effective_version(newval));
}

static bool
check_version(char **newval, void **extra, GucSource source)
{
	const unsigned char *p;

	if (*newval == NULL)
		return true;
	if (strlen(*newval) > 200)
	{
		GUC_check_errmsg("redis_cache.version is too long");
		GUC_check_errdetail("At most 200 bytes are allowed.");
		return false;
	}
	for (p = (const unsigned char *) *newval; *p; p++)
	{
		if (*p < 0x20 || *p == 0x7F || *p == '|')
		{
			GUC_check_errmsg("redis_cache.version contains a control character or \"|\"");
			GUC_check_errhint("Use a deploy identifier such as a commit hash, for example \"a1b2c3d4\".");
			return false;
		}
	}
	return true;
}

/*
 * From _PG_init: the setting, the session check of every connection and,
 * when preloaded, the check right after authentication.
 */
void
redis_version_init(void)
{
	DefineCustomStringVariable("redis_cache.version",
							   gettext_noop("Sets the expected cache version; a different version stored in Redis flushes the cache's own keys of the namespace."),
							   gettext_noop("Empty means the environment variable REDIS_CACHE_VERSION of the server, else \"1\"."),
							   &expected_version,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_version, assign_version, NULL);

	redis_set_session_check(version_session_check);

	if (process_shared_preload_libraries_in_progress)
	{
		prev_client_authentication_hook = ClientAuthentication_hook;
		ClientAuthentication_hook = redis_cache_client_authentication;
	}
}

/*
 * cache_version() RETURNS TABLE(expected text, stored text, run_id text,
 * checked_at timestamptz)
 *
 * Reading {cache}:version goes through redis_execute(), so it runs the
 * check (and the renaming of the legacy names) first when one is due.
 */
Datum
cache_version(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	RedisCommand *get = redis_cmd_new("GET", 1);
	RedisReply *reply;
	const char *run_id;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	redis_cmd_key_str(get, redis_control_key(current_prefix(), RC_CONTROL_VERSION));
	reply = redis_run(get, 0);
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
