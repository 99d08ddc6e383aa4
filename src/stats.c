/*-------------------------------------------------------------------------
 *
 * stats.c
 *		  Statistics counters: their shared memory, their lock, the rows of
 *		  the cache_stats view and cache_stats_reset().
 *
 * Design rules:
 *
 * - This file alone knows the layout of the counters.  With
 *   shared_preload_libraries they live in a shared memory segment of their
 *   own ("redis_cache stats") and count for every backend of the server;
 *   otherwise each backend counts for itself and the view says so
 *   (scope = 'backend').
 *
 * - Counters are atomics, so the hot path takes no lock.  Per key family
 *   (the first segment of a key, such as "tenant" in "tenant:id:42") there
 *   is a bounded table: a family is added under this file's own LWLock the
 *   first time it is seen; when the table is full, further families are
 *   counted under "(other)"; keys without a ':' are counted under "(none)".
 *   The same lock serialises cache_stats_reset().
 *
 * - The lowest layer: it calls no other file of the extension, so any file
 *   may count.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "redis_cache.h"

PG_FUNCTION_INFO_V1(cache_stats_reset);

#define RC_LATENCY_BUCKETS	11
#define RC_MAX_FAMILIES		64
#define RC_FAMILY_NAME_LEN	64

typedef struct RedisFamilyStats
{
	char		name[RC_FAMILY_NAME_LEN];
	pg_atomic_uint64 counters[RC_NUM_FAMILY_COUNTERS];
} RedisFamilyStats;

typedef struct RedisStats
{
	LWLock	   *lock;			/* NULL in backend-local statistics */
	pg_atomic_uint64 counters[RC_NUM_COUNTERS];
	pg_atomic_uint64 latency[RC_LATENCY_BUCKETS];
	int			nfamilies;
	RedisFamilyStats families[RC_MAX_FAMILIES];
	TimestampTz reset_at;
} RedisStats;

/* Upper bounds (microseconds) of the latency histogram buckets. */
static const int64 latency_bounds_us[RC_LATENCY_BUCKETS - 1] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000, 250000
};

static RedisStats *shared_stats = NULL;
static RedisStats local_stats;
static bool local_stats_initialized = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
stats_init(RedisStats *stats, LWLock *lock)
{
	int			i;

	memset(stats, 0, sizeof(RedisStats));
	stats->lock = lock;
	for (i = 0; i < RC_NUM_COUNTERS; i++)
		pg_atomic_init_u64(&stats->counters[i], 0);
	for (i = 0; i < RC_LATENCY_BUCKETS; i++)
		pg_atomic_init_u64(&stats->latency[i], 0);
	for (i = 0; i < RC_MAX_FAMILIES; i++)
	{
		int			j;

		for (j = 0; j < RC_NUM_FAMILY_COUNTERS; j++)
			pg_atomic_init_u64(&stats->families[i].counters[j], 0);
	}
	stats->reset_at = GetCurrentTimestamp();
}

static void
stats_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(RedisStats)));
	RequestNamedLWLockTranche("redis_cache stats", 1);
}

static void
stats_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared_stats = ShmemInitStruct("redis_cache stats", sizeof(RedisStats), &found);
	if (!found)
		stats_init(shared_stats,
				   &(GetNamedLWLockTranche("redis_cache stats"))->lock);
	LWLockRelease(AddinShmemInitLock);
}

/*
 * From _PG_init under shared_preload_libraries: server-wide counters.
 */
void
redis_stats_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = stats_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = stats_shmem_startup;
}

/* The counters in use: shared when preloaded, this backend's otherwise. */
static RedisStats *
current_stats(void)
{
	if (shared_stats != NULL)
		return shared_stats;
	if (!local_stats_initialized)
	{
		stats_init(&local_stats, NULL);
		local_stats_initialized = true;
	}
	return &local_stats;
}

void
redis_stats_add(RedisCounter counter, uint64 n)
{
	pg_atomic_fetch_add_u64(&current_stats()->counters[counter], n);
}

void
redis_stats_latency(int64 us)
{
	int			i;

	for (i = 0; i < RC_LATENCY_BUCKETS - 1; i++)
		if (us < latency_bounds_us[i])
			break;
	pg_atomic_fetch_add_u64(&current_stats()->latency[i], 1);
}

/* Whether family is named name (len bytes, len < RC_FAMILY_NAME_LEN). */
static inline bool
family_is(const RedisFamilyStats *family, const char *name, size_t len)
{
	return memcmp(family->name, name, len) == 0 && family->name[len] == '\0';
}

/*
 * Count a hit/miss/set/delete for the family of key (user key, without
 * key_prefix).
 */
void
redis_stats_family(const char *key, size_t len, RedisFamilyCounter counter)
{
	RedisStats *stats = current_stats();
	const char *colon = memchr(key, ':', len);
	size_t		flen;
	int			i;
	int			found = -1;

	/* a key without segments has no family worth a row of its own */
	if (colon == NULL)
	{
		key = "(none)";
		flen = strlen(key);
	}
	else
		flen = (size_t) (colon - key);

	if (flen >= RC_FAMILY_NAME_LEN)
		flen = RC_FAMILY_NAME_LEN - 1;

	/* families are only ever added: a racy read finds at most fewer */
	for (i = 0; i < stats->nfamilies; i++)
	{
		if (family_is(&stats->families[i], key, flen))
		{
			found = i;
			break;
		}
	}
	if (found < 0)
	{
		if (stats->lock)
			LWLockAcquire(stats->lock, LW_EXCLUSIVE);
		for (i = 0; i < stats->nfamilies; i++)
		{
			if (family_is(&stats->families[i], key, flen))
				break;
		}
		if (i == stats->nfamilies && stats->nfamilies < RC_MAX_FAMILIES - 1)
		{
			memcpy(stats->families[i].name, key, flen);
			stats->families[i].name[flen] = '\0';
			pg_write_barrier();
			stats->nfamilies++;
		}
		else if (i == stats->nfamilies)
		{
			/* full: the last slot is "(other)" */
			i = RC_MAX_FAMILIES - 1;
			strlcpy(stats->families[i].name, "(other)", RC_FAMILY_NAME_LEN);
		}
		found = i;
		if (stats->lock)
			LWLockRelease(stats->lock);
	}
	pg_atomic_fetch_add_u64(&stats->families[found].counters[counter], 1);
}

/*
 * The rows of cache_stats() into a materialized SRF: one row of totals
 * (family NULL), then one per family.  circuit is the caller's breaker
 * state (the connection layer's, which this file does not call).
 */
/*
 * The column of counter i: the counters up to round_trips, then hit_ratio,
 * latency_buckets, stats_reset and circuit, then the local cache's (1.8).
 */
#define RC_FIRST_LOCAL_COUNTER	RC_STAT_LOCAL_HITS

static int
column_of(int i)
{
	return i < RC_FIRST_LOCAL_COUNTER ? 2 + i : 6 + i;
}

void
redis_stats_materialize(FunctionCallInfo fcinfo, const char *circuit)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	RedisStats *stats = current_stats();
	const char *scope = shared_stats ? "server" : "backend";
	Datum		values[RC_NUM_COUNTERS + 4 + 2];
	bool		nulls[RC_NUM_COUNTERS + 4 + 2];
	Datum		buckets[RC_LATENCY_BUCKETS];
	uint64		hits;
	uint64		misses;
	int			i;
	int			nfamilies;

	InitMaterializedSRF(fcinfo, 0);

	memset(nulls, 0, sizeof(nulls));
	values[0] = CStringGetTextDatum(scope);
	nulls[1] = true;			/* family */
	for (i = 0; i < RC_NUM_COUNTERS; i++)
		values[column_of(i)] = Int64GetDatum((int64) pg_atomic_read_u64(&stats->counters[i]));
	hits = pg_atomic_read_u64(&stats->counters[RC_STAT_HITS]);
	misses = pg_atomic_read_u64(&stats->counters[RC_STAT_MISSES]);
	if (hits + misses > 0)
		values[2 + RC_FIRST_LOCAL_COUNTER] = Float8GetDatum((double) hits / (double) (hits + misses));
	else
		nulls[2 + RC_FIRST_LOCAL_COUNTER] = true;
	for (i = 0; i < RC_LATENCY_BUCKETS; i++)
		buckets[i] = Int64GetDatum((int64) pg_atomic_read_u64(&stats->latency[i]));
	values[3 + RC_FIRST_LOCAL_COUNTER] = PointerGetDatum(construct_array(buckets, RC_LATENCY_BUCKETS,
																  INT8OID, 8, FLOAT8PASSBYVAL,
																  TYPALIGN_DOUBLE));
	values[4 + RC_FIRST_LOCAL_COUNTER] = TimestampTzGetDatum(stats->reset_at);
	values[5 + RC_FIRST_LOCAL_COUNTER] = CStringGetTextDatum(circuit);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);

	nfamilies = stats->nfamilies;
	pg_read_barrier();
	for (i = 0; i < RC_MAX_FAMILIES; i++)
	{
		RedisFamilyStats *f = &stats->families[i];
		int			j;
		uint64		fh;
		uint64		fm;

		if (i >= nfamilies && !(i == RC_MAX_FAMILIES - 1 && f->name[0]))
			continue;
		memset(nulls, true, sizeof(nulls));
		values[0] = CStringGetTextDatum(scope);
		nulls[0] = false;
		values[1] = CStringGetTextDatum(f->name);
		nulls[1] = false;
		for (j = 0; j < RC_NUM_FAMILY_COUNTERS; j++)
		{
			values[2 + j] = Int64GetDatum((int64) pg_atomic_read_u64(&f->counters[j]));
			nulls[2 + j] = false;
		}
		fh = pg_atomic_read_u64(&f->counters[RC_FAM_HITS]);
		fm = pg_atomic_read_u64(&f->counters[RC_FAM_MISSES]);
		if (fh + fm > 0)
		{
			values[2 + RC_FIRST_LOCAL_COUNTER] = Float8GetDatum((double) fh / (double) (fh + fm));
			nulls[2 + RC_FIRST_LOCAL_COUNTER] = false;
		}
		values[4 + RC_FIRST_LOCAL_COUNTER] = TimestampTzGetDatum(stats->reset_at);
		nulls[4 + RC_FIRST_LOCAL_COUNTER] = false;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
}

/*
 * cache_stats_reset(): zero every counter (of the server when preloaded).
 */
Datum
cache_stats_reset(PG_FUNCTION_ARGS)
{
	RedisStats *stats = current_stats();
	int			i;
	int			j;

	if (stats->lock)
		LWLockAcquire(stats->lock, LW_EXCLUSIVE);
	for (i = 0; i < RC_NUM_COUNTERS; i++)
		pg_atomic_write_u64(&stats->counters[i], 0);
	for (i = 0; i < RC_LATENCY_BUCKETS; i++)
		pg_atomic_write_u64(&stats->latency[i], 0);
	for (i = 0; i < RC_MAX_FAMILIES; i++)
		for (j = 0; j < RC_NUM_FAMILY_COUNTERS; j++)
			pg_atomic_write_u64(&stats->families[i].counters[j], 0);
	stats->reset_at = GetCurrentTimestamp();
	if (stats->lock)
		LWLockRelease(stats->lock);
	PG_RETURN_VOID();
}
