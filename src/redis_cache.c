/*-------------------------------------------------------------------------
 *
 * redis_cache.c
 *		  Module entry point of the redis_cache extension.
 *
 * The extension works loaded on demand (CREATE EXTENSION and the first
 * call) as well as from shared_preload_libraries; _PG_init must therefore
 * only do what is legal in both cases.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"

#include "redis_cache.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	redis_cache_define_gucs();
}
