/*-------------------------------------------------------------------------
 *
 * module.c
 *		  Module entry point of the redis_cache extension (_PG_init).
 *
 * The extension works loaded on demand (CREATE EXTENSION and the first
 * call) as well as from shared_preload_libraries; _PG_init must therefore
 * only do what is legal in both cases.  Each file defines its own settings
 * and, when preloaded, requests its own shared memory; this file only
 * calls them in order.  The definitions are bracketed by guc.c's settings
 * guard, which notes the placeholders a session filled before the library
 * was loaded and then whether their configured values survived.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "redis_cache.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/*
 * Loaded from shared_preload_libraries, install the hook that checks the
 * cache version right after authentication.  Loaded into a backend
 * (session_preload_libraries, or on demand), check it now: a fault is
 * logged, never raised, and the check is repeated at the next command.
 * Not in a session that lost a configured server setting: it never talks
 * to Redis, and says so at each call.
 */
void
_PG_init(void)
{
	/* before any setting is defined: what the session gave beforehand */
	redis_settings_guard_begin();
	redis_cache_define_gucs();
	redis_tls_define_gucs();
	redis_sentinel_define_gucs();
	redis_connection_define_gucs();
	redis_query_cache_define_gucs();
	redis_families_define_gucs();
	redis_local_define_gucs();
	redis_scripts_init();
	redis_replay_init();
	redis_sentinel_init();
	redis_version_init();
	redis_invalidation_init();
	redis_query_hooks_init();
	MarkGUCPrefixReserved("redis_cache");
	redis_settings_guard_end();

	if (redis_cache_preloaded())
	{
		redis_stats_shmem_init();
		redis_query_tables_shmem_init();
		redis_worker_init();
		redis_local_shmem_init();
		redis_tracking_init();
	}
	else if (IsUnderPostmaster && AmRegularBackendProcess() && !IsBinaryUpgrade &&
			 redis_settings_untrusted() == NULL)
		redis_version_startup_check();
}
