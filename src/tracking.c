/*-------------------------------------------------------------------------
 *
 * tracking.c
 *		  The tracking worker: keeps the local cache coherent (stub).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "redis_cache.h"

void
redis_tracking_init(void)
{
}
