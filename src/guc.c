/*-------------------------------------------------------------------------
 *
 * guc.c
 *		  The settings several files read: key_prefix, enabled, on_error,
 *		  command_timeout_ms, default_ttl and max_value_bytes; and how the
 *		  library was loaded (redis_cache_preloaded()).
 *
 * A setting read by one file only is defined in that file, with the
 * variable static there: the server settings in connection.c, the cache
 * version in version.c, query_lock_timeout_ms in query_cache.c,
 * redelete_delay_ms in invalidation.c.
 *
 * Contexts are deliberate.  What we may store (key_prefix, max_value_bytes)
 * is PGC_SUSET; knobs that only change how this session reacts (timeouts,
 * on_error, default_ttl) are PGC_USERSET.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "miscadmin.h"
#include "utils/guc.h"

#include "redis_cache.h"

char	   *redis_cache_key_prefix = NULL;
bool		redis_cache_enabled = true;
int			redis_cache_command_timeout_ms = 250;
int			redis_cache_default_ttl = 3600;
int			redis_cache_on_error = RC_ON_ERROR_WARNING;
int			redis_cache_max_value_bytes = 8 * 1024 * 1024;



/* Loaded from shared_preload_libraries (inherited by every backend). */
static bool preloaded = false;

/*
 * Whether the library was loaded from shared_preload_libraries: the shared
 * statistics, the worker and the table bitmap exist only then.
 */
bool
redis_cache_preloaded(void)
{
	return preloaded;
}

static const struct config_enum_entry on_error_options[] = {
	{"warning", RC_ON_ERROR_WARNING, false},
	{"error", RC_ON_ERROR_ERROR, false},
	{"silent", RC_ON_ERROR_SILENT, false},
	{NULL, 0, false}
};

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
 * Define the shared settings and note how the library is being loaded.
 * Called first from _PG_init.
 */
void
redis_cache_define_gucs(void)
{
	preloaded = process_shared_preload_libraries_in_progress;

	DefineCustomStringVariable("redis_cache.key_prefix",
							   gettext_noop("Sets the prefix prepended to every Redis key, such as an environment name."),
							   NULL,
							   &redis_cache_key_prefix,
							   "",
							   PGC_SUSET,
							   0,
							   check_key_prefix, NULL, NULL);

	DefineCustomBoolVariable("redis_cache.enabled",
							 gettext_noop("Enables the cache; when off every function is a miss that never contacts Redis."),
							 NULL,
							 &redis_cache_enabled,
							 true,
							 PGC_USERSET,
							 0,
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
}
