/*-------------------------------------------------------------------------
 *
 * guc.c
 *		  Configuration parameters of redis_cache (all under "redis_cache.").
 *
 * Contexts are deliberate.  Anything that chooses which server we talk to
 * (host, port, user, password, database) or what we may store
 * (key_prefix, max_value_bytes) is PGC_SUSET: otherwise any user could point
 * the extension at a server of their own, harvest the AUTH password or
 * poison the cache for everybody.  The password is also hidden from
 * SHOW ALL, pg_settings and the sample file.  Knobs that only change how
 * this session reacts (timeouts, on_error, default_ttl) are PGC_USERSET.
 *
 * Changing any server parameter bumps redis_cache_server_config_generation;
 * the connection layer compares it before every command and reconnects, so
 * a SET takes effect on the next command, not only in new sessions.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "utils/guc.h"

#include "redis_cache.h"

char	   *redis_cache_host = NULL;
int			redis_cache_port = 6379;
char	   *redis_cache_user = NULL;
char	   *redis_cache_password = NULL;
char	   *redis_cache_password_file = NULL;
int			redis_cache_database = 0;
char	   *redis_cache_key_prefix = NULL;
bool		redis_cache_enabled = true;
int			redis_cache_connect_timeout_ms = 1000;
int			redis_cache_command_timeout_ms = 250;
int			redis_cache_default_ttl = 3600;
int			redis_cache_on_error = RC_ON_ERROR_WARNING;
int			redis_cache_max_value_bytes = 8 * 1024 * 1024;
int			redis_cache_circuit_failure_threshold = 3;
int			redis_cache_circuit_open_seconds = 5;

char	   *redis_cache_version = NULL;
int			redis_cache_redelete_delay_ms = 0;
int			redis_cache_query_lock_timeout_ms = 5000;

uint64		redis_cache_server_config_generation = 0;
uint64		redis_cache_version_generation = 0;

static const struct config_enum_entry on_error_options[] = {
	{"warning", RC_ON_ERROR_WARNING, false},
	{"error", RC_ON_ERROR_ERROR, false},
	{"silent", RC_ON_ERROR_SILENT, false},
	{NULL, 0, false}
};

/*
 * Any change to where or how we connect invalidates the open connection.
 * Assign hooks must not fail, so only a counter is touched here.
 */
static void
assign_server_string(const char *newval, void *extra)
{
	redis_cache_server_config_generation++;
}

static void
assign_server_int(int newval, void *extra)
{
	redis_cache_server_config_generation++;
}

/* A new expected version or namespace means a new version check. */
static void
assign_version_string(const char *newval, void *extra)
{
	redis_cache_version_generation++;
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

static bool
check_key_prefix(char **newval, void **extra, GucSource source)
{
	const unsigned char *p;

	if (*newval == NULL)
		return true;
	if (strlen(*newval) > RC_MAX_KEY_BYTES)
	{
		GUC_check_errmsg("redis_cache.key_prefix is too long");
		GUC_check_errdetail("The prefix is %zu bytes; at most %d are allowed.",
							strlen(*newval), RC_MAX_KEY_BYTES);
		return false;
	}
	for (p = (const unsigned char *) *newval; *p; p++)
	{
		if (*p < 0x20 || *p == 0x7F)
		{
			GUC_check_errmsg("redis_cache.key_prefix contains a control character");
			GUC_check_errhint("Use printable characters, for example \"dev:\".");
			return false;
		}
	}
	return true;
}

/*
 * Define every parameter.  Called once from _PG_init.
 */
void
redis_cache_define_gucs(void)
{
	DefineCustomStringVariable("redis_cache.host",
							   gettext_noop("Sets the Redis server host name, IP address or Unix socket directory path."),
							   gettext_noop("A value starting with a slash is the path of a Unix domain socket."),
							   &redis_cache_host,
							   "127.0.0.1",
							   PGC_SUSET,
							   0,
							   NULL, assign_server_string, NULL);

	DefineCustomIntVariable("redis_cache.port",
							gettext_noop("Sets the Redis server TCP port."),
							NULL,
							&redis_cache_port,
							6379, 1, 65535,
							PGC_SUSET,
							0,
							NULL, assign_server_int, NULL);

	DefineCustomStringVariable("redis_cache.user",
							   gettext_noop("Sets the Redis ACL user name; empty means legacy AUTH with the password only."),
							   NULL,
							   &redis_cache_user,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, assign_server_string, NULL);

	DefineCustomStringVariable("redis_cache.password",
							   gettext_noop("Sets the Redis password; empty means no AUTH."),
							   gettext_noop("Visible to superusers only."),
							   &redis_cache_password,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   NULL, assign_server_string, NULL);

	DefineCustomStringVariable("redis_cache.password_file",
							   gettext_noop("Sets a file whose first line is the Redis password, read at each connect."),
							   gettext_noop("Preferred over redis_cache.password: the secret never passes through the configuration system or its log messages."),
							   &redis_cache_password_file,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   NULL, assign_server_string, NULL);

	DefineCustomIntVariable("redis_cache.database",
							gettext_noop("Selects the Redis logical database number."),
							NULL,
							&redis_cache_database,
							0, 0, 1023,
							PGC_SUSET,
							0,
							NULL, assign_server_int, NULL);

	DefineCustomStringVariable("redis_cache.key_prefix",
							   gettext_noop("Sets the prefix prepended to every Redis key, such as an environment name."),
							   NULL,
							   &redis_cache_key_prefix,
							   "",
							   PGC_SUSET,
							   0,
							   check_key_prefix, assign_version_string, NULL);

	DefineCustomStringVariable("redis_cache.version",
							   gettext_noop("Sets the expected cache version; a different version stored in Redis flushes the namespace."),
							   gettext_noop("Empty means the environment variable REDIS_CACHE_VERSION of the server, else \"1\"."),
							   &redis_cache_version,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_version, assign_version_string, NULL);

	DefineCustomBoolVariable("redis_cache.enabled",
							 gettext_noop("Enables the cache; when off every function is a miss that never contacts Redis."),
							 NULL,
							 &redis_cache_enabled,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("redis_cache.connect_timeout_ms",
							gettext_noop("Sets the longest wait for a connection to Redis, including AUTH and SELECT."),
							NULL,
							&redis_cache_connect_timeout_ms,
							1000, 1, 600000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("redis_cache.command_timeout_ms",
							gettext_noop("Sets the longest wait for one Redis round trip."),
							NULL,
							&redis_cache_command_timeout_ms,
							250, 1, 600000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("redis_cache.default_ttl",
							gettext_noop("Sets the expiry of entries stored without an explicit TTL; 0 means no expiry."),
							NULL,
							&redis_cache_default_ttl,
							3600, 0, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("redis_cache.on_error",
							 gettext_noop("Chooses what a Redis fault does to the calling query: warning, error or silent."),
							 gettext_noop("With warning and silent the function returns a miss and the query goes on."),
							 &redis_cache_on_error,
							 RC_ON_ERROR_WARNING,
							 on_error_options,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("redis_cache.max_value_bytes",
							gettext_noop("Sets the largest value stored or accepted from Redis."),
							NULL,
							&redis_cache_max_value_bytes,
							8 * 1024 * 1024, 1024, 512 * 1024 * 1024,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("redis_cache.circuit_failure_threshold",
							gettext_noop("Sets how many consecutive Redis failures open the circuit breaker."),
							NULL,
							&redis_cache_circuit_failure_threshold,
							3, 1, 1000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("redis_cache.circuit_open_seconds",
							gettext_noop("Sets how long an open circuit breaker skips Redis before one trial call."),
							NULL,
							&redis_cache_circuit_open_seconds,
							5, 0, 3600,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("redis_cache.redelete_delay_ms",
							gettext_noop("Sets the delay of a second delete of invalidated keys after commit; 0 disables it."),
							gettext_noop("Covers applications that fill the cache from a read that began before the commit. Needs shared_preload_libraries."),
							&redis_cache_redelete_delay_ms,
							0, 0, 3600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("redis_cache.query_lock_timeout_ms",
							gettext_noop("Sets how long cache_query() waits for another session that is computing the same result."),
							gettext_noop("After this time the waiting session runs the query itself. 0 disables the stampede lock."),
							&redis_cache_query_lock_timeout_ms,
							5000, 0, 600000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("redis_cache");
}
