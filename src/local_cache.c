/*-------------------------------------------------------------------------
 *
 * local_cache.c
 *		  The shared-memory local cache (stub: being written).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "redis_cache.h"

void redis_local_define_gucs(void) {}
void redis_local_shmem_init(void) {}
bool redis_local_configured(void) { return false; }
bool redis_local_wants_key(const char *key, size_t len) { return false; }
bool redis_local_wants_queries(void) { return false; }
bool redis_local_lookup(const char *key, size_t len, const char *const *deps, const size_t *deplens, int ndeps, bool on_error, char **value, size_t *valuelen) { return false; }
RedisLocalFill *redis_local_fill_begin(const char *key, size_t len, const char *const *deps, const size_t *deplens, int ndeps) { return NULL; }
void redis_local_fill_end(RedisLocalFill *fill, const char *value, size_t valuelen, int64 ttl_ms) {}
void redis_local_invalidate(const char *key, size_t len) {}
void redis_local_invalidate_pattern(const char *glob, size_t len) {}
void redis_local_flush(const char *why) {}
int redis_local_tracking_prefixes(char ***prefixes) { *prefixes = NULL; return 0; }
void redis_local_tracking_confirmed(char *const *prefixes, int n, int nmasters) {}
void redis_local_tracking_lost(const char *why) {}
void redis_local_heartbeat(void) {}
RedisLocalState redis_local_state(void) { return RC_LOCAL_DISABLED; }
void redis_local_health(StringInfo json) {}
