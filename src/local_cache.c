/*-------------------------------------------------------------------------
 *
 * local_cache.c
 *		  The local cache: Redis values and cache_query results held in
 *		  shared memory, served without a network round trip, kept coherent
 *		  by Redis' client-side tracking (requires shared_preload_libraries
 *		  and redis_cache.local_cache_size > 0).
 *
 * This file owns the shared memory, the settings redis_cache.local_*, and
 * the rules below; it does no I/O.  The tracking worker (tracking.c) holds
 * the subscriptions (CLIENT TRACKING ... BCAST, one per master) and calls
 * redis_local_tracking_confirmed(), _lost(), _invalidate(), _flush() and
 * _heartbeat(); the readers (commands.c, query_cache.c) call
 * redis_local_lookup() and the fill pair; the commit (invalidation.c) and
 * the SQL writers call redis_local_invalidate().
 *
 * Coherence rules:
 *
 * - Invalidation counters.  An array of atomic counters, indexed by a hash
 *   of a Redis key name: every invalidation of a key (a tracking message,
 *   a local commit, a local write) increments its counter.  An entry
 *   records, for each key it depends on (a cache_get value: its own key; a
 *   cache_query result: the generation keys of its tables), the counter's
 *   value read before the read that filled it was sent.  A hit requires
 *   them all unchanged; a collision only costs a miss.
 * - No stale fill.  redis_local_fill_begin() takes that snapshot (and the
 *   epoch, and the pattern generation) per request, before the request is
 *   sent; redis_local_fill_end() installs the reply only if none of them
 *   moved meanwhile: an invalidation that arrived between the read and the
 *   fill discards it (local_discards).
 * - Epochs.  Nothing is served unless the tracking worker has confirmed
 *   every master's subscription (state "tracking") and its heartbeat is
 *   younger than RC_LOCAL_HEARTBEAT_LIMIT_MS.  A confirmation, a loss of
 *   any subscription, a FLUSHALL/FLUSHDB (null message), a change of the
 *   cache version bookkeeping keys (a version flush, a Redis restart seen
 *   by a session check) and a missed namespace each start a new epoch and
 *   empty the cache; fills begun in an older epoch are discarded.
 * - Read-your-writes.  A commit of this server invalidates its keys and
 *   generations here before its send and again once its send is done, so
 *   that no read begun before the send can install what it overwrote.
 * - Ages.  An entry expires at its Redis TTL (PTTL read in the same round
 *   trip) or after redis_cache.local_max_age, whichever is first.
 * - Outages.  With redis_cache.local_serve_on_error > 0, the entries of the
 *   epoch that was tracking when tracking was lost are kept and served for
 *   that many seconds, to a reader whose Redis call failed; local commits
 *   still invalidate them.  The next confirmation empties them.
 *
 * Memory: one LWLock guards the index and the arena.  The arena is a ring
 * written in order and evicted oldest first (FIFO), so that a fill costs
 * no search for free space and the memory used is exactly
 * local_cache_size: header, bucket heads, counters and arena are carved
 * from it.  Entries are variable-sized, 8-byte aligned, chained per hash
 * bucket by offset.  An invalidated entry is unlinked at once; its space
 * is reclaimed when the ring comes round.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"
#include "utils/wait_event.h"

#include "redis_cache.h"

/* Room for the tracked prefixes, NUL-separated. */
#define RC_LOCAL_PREFIX_BYTES	8192
#define RC_LOCAL_MAX_PREFIXES	64

/* An entry larger than this fraction of the arena is not held. */
#define RC_LOCAL_MAX_ENTRY_FRACTION	8

typedef struct LocalDep
{
	uint64		stamp;			/* counters[index] when the read was sent */
	uint32		index;
	uint32		pad;
} LocalDep;

/* An entry in the arena; deps, key and value follow it. */
typedef struct LocalEntry
{
	uint32		size;			/* bytes, header included, MAXALIGNed */
	uint32		next;			/* next in the bucket: slot + 1, 0 none */
	uint32		hash;
	uint16		live;			/* linked into its bucket */
	uint16		ndeps;
	uint32		keylen;
	uint32		valuelen;
	uint64		epoch;
	TimestampTz expires;		/* the Redis TTL; PG_INT64_MAX: none */
	TimestampTz filled_at;
} LocalEntry;

typedef struct LocalShared
{
	LWLock	   *lock;			/* arena, index and the fields below */
	pg_atomic_uint64 epoch;
	pg_atomic_uint64 pattern_generation;
	pg_atomic_uint32 state;		/* RedisLocalState */
	pg_atomic_uint64 heartbeat; /* TimestampTz */
	pg_atomic_uint32 nentries;	/* a hint for invalidations */
	pg_atomic_uint64 version;	/* hash of the tracking worker's cache version */
	TimestampTz lost_at;
	uint64		fallback_epoch; /* 0: none */
	int			nmasters;
	int			nprefixes;
	int			prefixes_len;
	char		prefixes[RC_LOCAL_PREFIX_BYTES];
	/* geometry, fixed at startup */
	Size		total;			/* all of it: local_cache_size */
	uint32		nbuckets;		/* power of 2 */
	uint32		ncounters;		/* power of 2 */
	uint64		capacity;		/* arena bytes */
	Size		buckets_off;
	Size		counters_off;
	Size		arena_off;
	/* the ring */
	uint64		head;			/* next write */
	uint64		evict;			/* oldest entry after head, or capacity */
	uint64		data_end;		/* end of the entries above head */
	uint64		used;			/* bytes of live entries */
} LocalShared;

struct RedisLocalFill
{
	uint64		epoch;
	uint64		pattern_generation;
	uint64		hash;
	TimestampTz sent;			/* before the read: TTLs count from here */
	char	   *key;
	size_t		keylen;
	int			ndeps;
	LocalDep	deps[FLEXIBLE_ARRAY_MEMBER];
};

/* settings */
static int	local_cache_size_kb = 0;
static char *local_cache_keys = NULL;
static bool local_cache_queries = true;
static int	local_max_age = 60;
static int	local_serve_on_error = 0;
static int	local_fill_delay_ms = 0;

static LocalShared *local = NULL;
static uint32 *local_buckets;
static pg_atomic_uint64 *local_counters;
static char *local_arena;
static bool local_requested = false;

/* local_cache_keys, parsed (per backend, when the setting changes) */
static char *parsed_keys_source = NULL;
static List *parsed_keys = NIL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* ---- geometry ------------------------------------------------------------ */

static uint32
pow2_at_least(uint64 n, uint32 lo, uint32 hi)
{
	uint32		p = lo;

	while (p < n && p < hi)
		p <<= 1;
	return p;
}

static Size
local_total_size(void)
{
	return (Size) local_cache_size_kb * 1024;
}

/* ---- settings ------------------------------------------------------------ */

static bool
check_local_cache_keys(char **newval, void **extra, GucSource source)
{
	char	   *copy;
	List	   *globs;

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	copy = pstrdup(*newval);
	/* SplitGUCList: keys are case-sensitive and may be long */
	if (!SplitGUCList(copy, ',', &globs))
	{
		GUC_check_errdetail("The value must be a comma-separated list of key globs, such as 'tenant:*, settings:*'.");
		return false;
	}
	list_free(globs);
	pfree(copy);
	return true;
}

void
redis_local_define_gucs(void)
{
	/* a PGC_POSTMASTER setting can only be defined at server start */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("redis_cache.local_cache_size",
								gettext_noop("Sets the shared memory of the local cache, which serves hot keys and query results without a round trip to Redis (0 disables it)."),
								gettext_noop("Requires shared_preload_libraries. The index and invalidation counters are carved from the same memory."),
								&local_cache_size_kb,
								0, 0, 16 * 1024 * 1024,
								PGC_POSTMASTER, GUC_UNIT_KB,
								NULL, NULL, NULL);
	DefineCustomStringVariable("redis_cache.local_cache_keys",
							   gettext_noop("Lists the key globs (before key_prefix) whose cache_get values are held in the local cache."),
							   gettext_noop("For example 'tenant:*, settings:*'. Empty: no key-value keys are held locally."),
							   &local_cache_keys,
							   "",
							   PGC_SIGHUP, GUC_LIST_INPUT,
							   check_local_cache_keys, NULL, NULL);
	DefineCustomBoolVariable("redis_cache.local_cache_queries",
							 gettext_noop("Holds cache_query and cache_query_json results in the local cache."),
							 NULL,
							 &local_cache_queries,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("redis_cache.local_max_age",
							gettext_noop("Sets the longest time an entry is served from the local cache."),
							gettext_noop("Entries also expire with their Redis TTL. 0 holds nothing locally."),
							&local_max_age,
							60, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("redis_cache.local_serve_on_error",
							gettext_noop("Sets how long entries already held locally keep being served while Redis is unreachable (0: not at all)."),
							gettext_noop("Writes made meanwhile by other servers cannot reach this cache: they may be served stale for that long."),
							&local_serve_on_error,
							0, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("redis_cache.local_fill_delay_ms",
							gettext_noop("Testing only: waits this long between a Redis reply and its local fill."),
							NULL,
							&local_fill_delay_ms,
							0, 0, 60000,
							PGC_SUSET, GUC_UNIT_MS | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							NULL, NULL, NULL);
}

/* Whether the local cache exists (shared memory requested). */
bool
redis_local_configured(void)
{
	return redis_cache_preloaded() && local_cache_size_kb > 0;
}

/* ---- shared memory ------------------------------------------------------- */

static void
local_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(local_total_size()));
	RequestNamedLWLockTranche("redis_cache local cache", 1);
}

/* Empty the arena and the index.  Lock held exclusively. */
static void
clear_arena(void)
{
	memset(local_buckets, 0, sizeof(uint32) * local->nbuckets);
	local->head = 0;
	local->evict = local->capacity;
	local->data_end = 0;
	local->used = 0;
	pg_atomic_write_u32(&local->nentries, 0);
}

static void
local_shmem_startup(void)
{
	bool		found;
	Size		total = MAXALIGN(local_total_size());

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	local = ShmemInitStruct("redis_cache local cache", total, &found);
	if (!found)
	{
		Size		off = MAXALIGN(sizeof(LocalShared));
		uint32		i;

		memset(local, 0, sizeof(LocalShared));
		local->lock = &(GetNamedLWLockTranche("redis_cache local cache"))->lock;
		local->total = total;
		/* about one bucket per 512 bytes and one counter per 256 */
		local->nbuckets = pow2_at_least(total / 512, 1024, 1 << 24) / 2;
		local->ncounters = pow2_at_least(total / 256, 4096, 1 << 22) / 2;
		local->buckets_off = off;
		off += MAXALIGN(sizeof(uint32) * local->nbuckets);
		local->counters_off = off;
		off += MAXALIGN(sizeof(pg_atomic_uint64) * local->ncounters);
		local->arena_off = off;
		local->capacity = total > off + 4096 ? (total - off) & ~(uint64) 7 : 0;
		pg_atomic_init_u64(&local->epoch, 1);
		pg_atomic_init_u64(&local->pattern_generation, 1);
		pg_atomic_init_u32(&local->state, RC_LOCAL_WAITING);
		pg_atomic_init_u64(&local->heartbeat, 0);
		pg_atomic_init_u32(&local->nentries, 0);
		pg_atomic_init_u64(&local->version, 0);
		local_counters = (pg_atomic_uint64 *) ((char *) local + local->counters_off);
		for (i = 0; i < local->ncounters; i++)
			pg_atomic_init_u64(&local_counters[i], 0);
	}
	local_buckets = (uint32 *) ((char *) local + local->buckets_off);
	local_counters = (pg_atomic_uint64 *) ((char *) local + local->counters_off);
	local_arena = (char *) local + local->arena_off;
	if (!found)
		clear_arena();
	LWLockRelease(AddinShmemInitLock);
}

/* From _PG_init under shared_preload_libraries. */
void
redis_local_shmem_init(void)
{
	if (local_cache_size_kb <= 0)
		return;
	if (local_total_size() < 1024 * 1024)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("redis_cache.local_cache_size must be 0 or at least 1MB"),
				 errhint("Set redis_cache.local_cache_size = '64MB', for example, or 0 to disable the local cache.")));
	local_requested = true;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = local_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = local_shmem_startup;
}

/* ---- helpers ------------------------------------------------------------- */

#define ENTRY_AT(off)		((LocalEntry *) (local_arena + (off)))
#define ENTRY_DEPS(e)		((LocalDep *) ((char *) (e) + MAXALIGN(sizeof(LocalEntry))))
#define ENTRY_KEY(e)		((char *) ENTRY_DEPS(e) + sizeof(LocalDep) * (e)->ndeps)
#define ENTRY_VALUE(e)		(ENTRY_KEY(e) + (e)->keylen)

static inline uint64
key_hash(const char *key, size_t len)
{
	return hash_bytes_extended((const unsigned char *) key, (int) len, 0);
}

static inline uint32
counter_index(uint64 hash)
{
	return (uint32) (hash & (local->ncounters - 1));
}

static inline uint32
hash_high(uint64 hash)
{
	return (uint32) (hash >> 32);
}

static inline uint32 *
bucket_of(uint32 high)
{
	return &local_buckets[high & (local->nbuckets - 1)];
}

static bool
usable(void)
{
	return local != NULL && local->capacity > 0;
}

/*
 * A hash of this process's cache version (version.c sets it): a backend is
 * served only entries of the version the tracking worker runs with (a
 * deploy that changes it reloads both; the first session check of the new
 * version flushes the cache, which the worker sees).
 */
static uint64 my_version_hash = 1;

void
redis_local_set_version(const char *version)
{
	my_version_hash = hash_bytes_extended((const unsigned char *) version,
										  (int) strlen(version), 0) | 1;
}

static inline uint64
version_hash(void)
{
	return my_version_hash;
}

static bool
heartbeat_fresh(TimestampTz now)
{
	TimestampTz beat = (TimestampTz) pg_atomic_read_u64(&local->heartbeat);

	return beat != 0 && now - beat <= (TimestampTz) RC_LOCAL_HEARTBEAT_LIMIT_MS * 1000;
}

static inline uint32
slot_of(LocalEntry *e)
{
	return (uint32) (((char *) e - local_arena) / 8) + 1;
}

/* The live entry of key (lock held). */
static LocalEntry *
find_entry(uint64 hash, const char *key, size_t len)
{
	uint32		high = hash_high(hash);
	uint32		slot = *bucket_of(high);

	while (slot != 0)
	{
		LocalEntry *e = ENTRY_AT((uint64) (slot - 1) * 8);

		if (e->hash == high && e->keylen == len &&
			memcmp(ENTRY_KEY(e), key, len) == 0)
			return e;
		slot = e->next;
	}
	return NULL;
}

/* Unlink e from its bucket (lock held exclusively). */
static void
unlink_entry(LocalEntry *e)
{
	uint32	   *link = bucket_of(e->hash);
	uint32		me = slot_of(e);

	if (!e->live)
		return;
	while (*link != 0 && *link != me)
		link = &ENTRY_AT((uint64) (*link - 1) * 8)->next;
	if (*link == me)
		*link = e->next;
	e->live = 0;
	local->used -= e->size;
	pg_atomic_fetch_sub_u32(&local->nentries, 1);
}

/*
 * Room for size bytes at the head of the ring, evicting the oldest entries
 * (lock held exclusively).  NULL if size can never fit.
 */
static LocalEntry *
alloc_entry(uint32 size)
{
	if (size > local->capacity)
		return NULL;
	for (;;)
	{
		LocalEntry *e;

		if (local->evict - local->head >= size)
		{
			e = ENTRY_AT(local->head);
			local->head += size;
			return e;
		}
		if (local->evict >= local->capacity)
		{
			/* free up to the end, but not enough: wrap to the oldest */
			if (local->head == 0)
				return NULL;
			local->data_end = local->head;
			local->head = 0;
			local->evict = 0;
			continue;
		}
		e = ENTRY_AT(local->evict);
		if (e->live)
		{
			unlink_entry(e);
			redis_stats_add(RC_STAT_LOCAL_EVICTIONS, 1);
		}
		local->evict += e->size;
		if (local->evict >= local->data_end)
			local->evict = local->capacity;
	}
}

/* Calls fn for every live entry of the ring (lock held exclusively). */
static void
for_each_live_entry(void (*fn) (LocalEntry *e, void *arg), void *arg)
{
	uint64		off;

	if (local->evict < local->capacity)
		for (off = local->evict; off < local->data_end;)
		{
			LocalEntry *e = ENTRY_AT(off);

			off += e->size;
			if (e->live)
				fn(e, arg);
		}
	for (off = 0; off < local->head;)
	{
		LocalEntry *e = ENTRY_AT(off);

		off += e->size;
		if (e->live)
			fn(e, arg);
	}
}

/* Whether every counter an entry or fill recorded is unchanged. */
static bool
deps_unchanged(const LocalDep *deps, int ndeps)
{
	int			i;

	for (i = 0; i < ndeps; i++)
		if (pg_atomic_read_u64(&local_counters[deps[i].index]) != deps[i].stamp)
			return false;
	return true;
}

/* Whether key starts with one of the tracked prefixes (lock held). */
static bool
covered(const char *key, size_t len)
{
	const char *p = local->prefixes;
	int			i;

	for (i = 0; i < local->nprefixes; i++)
	{
		size_t		plen = strlen(p);

		if (plen <= len && memcmp(key, p, plen) == 0)
			return true;
		p += plen + 1;
	}
	return false;
}

/* ---- what is held locally ------------------------------------------------ */

/* local_cache_keys as a list of globs, parsed again when it changes. */
static List *
key_globs(void)
{
	const char *source = local_cache_keys ? local_cache_keys : "";

	if (parsed_keys_source == NULL || strcmp(parsed_keys_source, source) != 0)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		char	   *copy = pstrdup(source);
		List	   *globs = NIL;

		if (parsed_keys_source)
			pfree(parsed_keys_source);
		list_free_deep(parsed_keys);
		parsed_keys = NIL;
		if (copy[0] != '\0' && SplitGUCList(copy, ',', &globs))
		{
			ListCell   *lc;

			foreach(lc, globs)
				parsed_keys = lappend(parsed_keys, pstrdup((char *) lfirst(lc)));
		}
		list_free(globs);
		pfree(copy);
		parsed_keys_source = pstrdup(source);
		MemoryContextSwitchTo(old);
	}
	return parsed_keys;
}

/*
 * Whether cache_get values of key (before key_prefix) are held locally.
 */
bool
redis_local_wants_key(const char *key, size_t len)
{
	ListCell   *lc;

	if (!usable() || local_max_age <= 0 || !redis_cache_enabled)
		return false;
	foreach(lc, key_globs())
	{
		const char *glob = (const char *) lfirst(lc);

		if (redis_glob_match(glob, strlen(glob), key, len))
			return true;
	}
	return false;
}

/* Whether cache_query results are held locally. */
bool
redis_local_wants_queries(void)
{
	return usable() && local_cache_queries && local_max_age > 0 &&
		redis_cache_enabled;
}

/* ---- readers ------------------------------------------------------------- */

/*
 * The value held for key (the full Redis key), palloc'd, if it may be
 * served: normally (on_error false) only while tracking is confirmed and
 * alive; on_error (the reader's Redis call failed) also the entries kept
 * from before a loss, for local_serve_on_error seconds.
 */
bool
redis_local_lookup(const char *key, size_t len, bool on_error,
				   char **value, size_t *valuelen)
{
	uint32		state;
	TimestampTz now;
	uint64		hash;
	uint64		want = 0;
	LocalEntry *e;
	bool		ok = false;

	if (!usable())
		return false;
	state = pg_atomic_read_u32(&local->state);
	if (state == RC_LOCAL_WAITING || (on_error && local_serve_on_error <= 0))
		return false;
	now = GetCurrentTimestamp();
	if (!on_error && (state != RC_LOCAL_TRACKING || !heartbeat_fresh(now)))
		return false;
	if (pg_atomic_read_u64(&local->version) != version_hash())
		return false;
	hash = key_hash(key, len);

	LWLockAcquire(local->lock, LW_SHARED);
	if (!on_error)
		want = pg_atomic_read_u64(&local->epoch);
	else if (state == RC_LOCAL_LOST && local->fallback_epoch != 0 &&
			 now - local->lost_at <= (TimestampTz) local_serve_on_error * USECS_PER_SEC)
		want = local->fallback_epoch;
	else if (state == RC_LOCAL_TRACKING)
	{
		TimestampTz beat = (TimestampTz) pg_atomic_read_u64(&local->heartbeat);

		if (now - beat <= (TimestampTz) local_serve_on_error * USECS_PER_SEC)
			want = pg_atomic_read_u64(&local->epoch);
	}
	e = want != 0 ? find_entry(hash, key, len) : NULL;
	/* local_max_age bounds coherence, not the outage fallback */
	if (e != NULL && e->epoch == want && now < e->expires &&
		(on_error || now - e->filled_at < (TimestampTz) local_max_age * USECS_PER_SEC) &&
		deps_unchanged(ENTRY_DEPS(e), e->ndeps))
		ok = true;
	if (ok)
	{
		*valuelen = e->valuelen;
		*value = palloc(e->valuelen + 1);
		memcpy(*value, ENTRY_VALUE(e), e->valuelen);
		(*value)[e->valuelen] = '\0';
	}
	LWLockRelease(local->lock);
	if (ok)
		redis_stats_add(RC_STAT_LOCAL_HITS, 1);
	return ok;
}

/*
 * Before a read of key whose reply may be installed locally: the snapshot
 * of this request (epoch, pattern generation, the counters of the keys it
 * depends on: deps, or key itself when ndeps is 0).  NULL when nothing
 * may be installed (not tracking, or a key no tracked prefix covers).
 */
RedisLocalFill *
redis_local_fill_begin(const char *key, size_t len, const char *const *deps,
					   const size_t *deplens, int ndeps)
{
	RedisLocalFill *fill;
	uint64		epoch;
	TimestampTz now;
	bool		ok = true;
	int			n = ndeps > 0 ? ndeps : 1;
	int			i;

	if (!usable() || local_max_age <= 0 || ndeps > RC_LOCAL_MAX_DEPS ||
		len > RC_MAX_KEY_BYTES * 2)
		return NULL;
	now = GetCurrentTimestamp();
	epoch = pg_atomic_read_u64(&local->epoch);
	pg_read_barrier();
	if (pg_atomic_read_u32(&local->state) != RC_LOCAL_TRACKING ||
		!heartbeat_fresh(now) ||
		pg_atomic_read_u64(&local->version) != version_hash())
		return NULL;

	LWLockAcquire(local->lock, LW_SHARED);
	if (ndeps == 0)
		ok = covered(key, len);
	for (i = 0; ok && i < ndeps; i++)
		ok = covered(deps[i], deplens[i]);
	LWLockRelease(local->lock);
	if (!ok)
		return NULL;

	fill = palloc(offsetof(RedisLocalFill, deps) + sizeof(LocalDep) * n);
	fill->epoch = epoch;
	fill->sent = now;
	fill->pattern_generation = pg_atomic_read_u64(&local->pattern_generation);
	fill->hash = key_hash(key, len);
	fill->key = pnstrdup(key, len);
	fill->keylen = len;
	fill->ndeps = n;
	for (i = 0; i < n; i++)
	{
		uint64		h = ndeps > 0 ? key_hash(deps[i], deplens[i]) : fill->hash;

		fill->deps[i].index = counter_index(h);
		fill->deps[i].pad = 0;
		fill->deps[i].stamp = pg_atomic_read_u64(&local_counters[fill->deps[i].index]);
	}
	/* the snapshot is taken before the request leaves */
	pg_memory_barrier();
	return fill;
}

/* redis_cache.local_fill_delay_ms: an interruptible pause (tests). */
static void
fill_delay(void)
{
	TimestampTz end = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												  local_fill_delay_ms);

	for (;;)
	{
		long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), end);

		if (left <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Install the reply to the read fill was taken for: value, whose Redis TTL
 * was ttl_ms (-1: none; -2 or 0: gone, nothing installed).  Discarded if
 * anything it depends on was invalidated since redis_local_fill_begin().
 */
void
redis_local_fill_end(RedisLocalFill *fill, const char *value,
					 size_t valuelen, int64 ttl_ms)
{
	Size		size;
	LocalEntry *old;
	LocalEntry *e;
	uint32	   *bucket;
	bool		valid;

	if (fill == NULL || value == NULL || ttl_ms == 0 || ttl_ms < -1)
		return;
	if (local_fill_delay_ms > 0)
		fill_delay();
	size = MAXALIGN(MAXALIGN(sizeof(LocalEntry)) + sizeof(LocalDep) * fill->ndeps +
					fill->keylen + valuelen);
	if (size > local->capacity / RC_LOCAL_MAX_ENTRY_FRACTION)
		return;

	LWLockAcquire(local->lock, LW_EXCLUSIVE);
	valid = pg_atomic_read_u32(&local->state) == RC_LOCAL_TRACKING &&
		pg_atomic_read_u64(&local->epoch) == fill->epoch &&
		pg_atomic_read_u64(&local->pattern_generation) == fill->pattern_generation &&
		deps_unchanged(fill->deps, fill->ndeps);
	if (!valid)
	{
		LWLockRelease(local->lock);
		redis_stats_add(RC_STAT_LOCAL_DISCARDS, 1);
		return;
	}
	old = find_entry(fill->hash, fill->key, fill->keylen);
	if (old != NULL)
		unlink_entry(old);
	e = alloc_entry((uint32) size);
	if (e == NULL)
	{
		LWLockRelease(local->lock);
		return;
	}
	e->size = (uint32) size;
	e->hash = hash_high(fill->hash);
	e->ndeps = (uint16) fill->ndeps;
	e->keylen = (uint32) fill->keylen;
	e->valuelen = (uint32) valuelen;
	e->epoch = fill->epoch;
	/* ages count from before the read: the reply may have waited */
	e->filled_at = fill->sent;
	e->expires = ttl_ms > 0 ? fill->sent + ttl_ms * 1000 : PG_INT64_MAX;
	memcpy(ENTRY_DEPS(e), fill->deps, sizeof(LocalDep) * fill->ndeps);
	memcpy(ENTRY_KEY(e), fill->key, fill->keylen);
	memcpy(ENTRY_VALUE(e), value, valuelen);
	bucket = bucket_of(e->hash);
	e->next = *bucket;
	*bucket = slot_of(e);
	e->live = 1;
	local->used += size;
	pg_atomic_fetch_add_u32(&local->nentries, 1);
	LWLockRelease(local->lock);
	redis_stats_add(RC_STAT_LOCAL_FILLS, 1);
}

/* ---- invalidation -------------------------------------------------------- */

/* Empty the cache and start a new epoch (lock held exclusively). */
static void
new_epoch(void)
{
	if (pg_atomic_read_u32(&local->nentries) > 0 || local->head > 0)
		redis_stats_add(RC_STAT_LOCAL_FLUSHES, 1);
	pg_atomic_fetch_add_u64(&local->epoch, 1);
	local->fallback_epoch = 0;
	clear_arena();
}

/*
 * A Redis key changed (a tracking message, a commit or a write of this
 * server): what depends on it is no longer served, fills in flight that
 * read it are discarded.  A change of the cache version bookkeeping
 * (key_prefix||"{cache}:..." but the families) empties the cache.  Never
 * allocates: called at COMMIT.
 */
void
redis_local_invalidate(const char *key, size_t len)
{
	const char *prefix = redis_cache_key_prefix ? redis_cache_key_prefix : "";
	size_t		plen = strlen(prefix);
	uint64		hash;
	LocalEntry *e;

	if (!usable())
		return;
	if (len > plen + 8 && memcmp(key, prefix, plen) == 0 &&
		memcmp(key + plen, "{cache}:", 8) == 0 &&
		!(len == plen + 16 && memcmp(key + plen + 8, "families", 8) == 0))
	{
		redis_local_flush("the cache version bookkeeping changed");
		return;
	}
	hash = key_hash(key, len);
	pg_atomic_fetch_add_u64(&local_counters[counter_index(hash)], 1);
	if (pg_atomic_read_u32(&local->nentries) == 0)
		return;
	LWLockAcquire(local->lock, LW_EXCLUSIVE);
	e = find_entry(hash, key, len);
	if (e != NULL)
		unlink_entry(e);
	LWLockRelease(local->lock);
	if (e != NULL)
		redis_stats_add(RC_STAT_LOCAL_INVALIDATIONS, 1);
}

typedef struct PatternWalk
{
	const char *glob;
	size_t		len;
	int64		removed;
} PatternWalk;

static void
unlink_if_matches(LocalEntry *e, void *arg)
{
	PatternWalk *walk = (PatternWalk *) arg;

	if (redis_glob_match(walk->glob, walk->len, ENTRY_KEY(e), e->keylen))
	{
		unlink_entry(e);
		walk->removed++;
	}
}

/*
 * A pattern invalidation (a full-key glob): every matching entry goes, and
 * every fill in flight is discarded (it cannot be told whether its key
 * matches cheaply).
 */
void
redis_local_invalidate_pattern(const char *glob, size_t len)
{
	PatternWalk walk;

	if (!usable())
		return;
	pg_atomic_fetch_add_u64(&local->pattern_generation, 1);

	/*
	 * Always under the lock, even when the cache looks empty: a fill that
	 * passed its check before the bump may be linking its entry now.
	 */
	walk.glob = glob;
	walk.len = len;
	walk.removed = 0;
	LWLockAcquire(local->lock, LW_EXCLUSIVE);
	for_each_live_entry(unlink_if_matches, &walk);
	LWLockRelease(local->lock);
	if (walk.removed > 0)
		redis_stats_add(RC_STAT_LOCAL_INVALIDATIONS, (uint64) walk.removed);
}

/*
 * Empty the local cache (FLUSHALL/FLUSHDB, a version change, a lost
 * invalidation): a new epoch; tracking stays as it is.
 */
void
redis_local_flush(const char *why)
{
	if (!usable())
		return;
	LWLockAcquire(local->lock, LW_EXCLUSIVE);
	new_epoch();
	LWLockRelease(local->lock);
	elog(DEBUG1, "redis_cache: local cache emptied: %s", why);
}

/* ---- the tracking worker's side ------------------------------------------ */

static int
compare_length(const void *a, const void *b)
{
	size_t		x = strlen(*(char *const *) a);
	size_t		y = strlen(*(char *const *) b);

	return x < y ? -1 : (x > y ? 1 : strcmp(*(char *const *) a, *(char *const *) b));
}

/*
 * The prefixes to track (BCAST PREFIX), full key names, none a prefix of
 * another (Redis refuses overlapping ones): key_prefix||the literal start
 * of each local_cache_keys glob, the generation keys of this server's
 * query namespace when results are held, and key_prefix||"{cache}:" (the
 * version bookkeeping, whose change empties the cache).  A "" prefix
 * means every key: track without PREFIX.  palloc'd.
 */
int
redis_local_tracking_prefixes(char ***prefixes)
{
	const char *prefix = redis_cache_key_prefix ? redis_cache_key_prefix : "";
	List	   *globs = key_globs();
	char	  **all = palloc(sizeof(char *) * (list_length(globs) + 2));
	char	  **out;
	int			n = 0;
	int			nout = 0;
	int			i;
	ListCell   *lc;

	foreach(lc, globs)
	{
		const char *glob = (const char *) lfirst(lc);

		all[n++] = psprintf("%s%.*s", prefix, (int) strcspn(glob, "*?[\\"), glob);
	}
	if (local_cache_queries)
		all[n++] = psprintf("%sgen:", redis_query_base(prefix));
	all[n++] = psprintf("%s{cache}:", prefix);
	qsort(all, n, sizeof(char *), compare_length);
	out = palloc(sizeof(char *) * n);
	for (i = 0; i < n; i++)
	{
		int			j;
		bool		overlaps = false;

		for (j = 0; j < nout && !overlaps; j++)
			overlaps = strncmp(all[i], out[j], strlen(out[j])) == 0;
		if (!overlaps && nout < RC_LOCAL_MAX_PREFIXES)
			out[nout++] = all[i];
	}
	*prefixes = out;
	return nout;
}

/*
 * Every master's subscription is confirmed: a new epoch, served from now
 * on, for keys under prefixes.
 */
void
redis_local_tracking_confirmed(char *const *prefixes, int n, int nmasters)
{
	int			i;
	int			len = 0;

	if (!usable())
		return;
	LWLockAcquire(local->lock, LW_EXCLUSIVE);
	new_epoch();
	local->nprefixes = 0;
	for (i = 0; i < n; i++)
	{
		size_t		plen = strlen(prefixes[i]);

		if (len + plen + 1 > RC_LOCAL_PREFIX_BYTES)
			break;				/* not covered: not held, never stale */
		memcpy(local->prefixes + len, prefixes[i], plen + 1);
		len += plen + 1;
		local->nprefixes++;
	}
	local->prefixes_len = len;
	local->nmasters = nmasters;
	pg_atomic_write_u64(&local->version, version_hash());
	pg_atomic_write_u64(&local->heartbeat, (uint64) GetCurrentTimestamp());
	pg_write_barrier();
	pg_atomic_write_u32(&local->state, RC_LOCAL_TRACKING);
	LWLockRelease(local->lock);
	elog(DEBUG1, "redis_cache: local cache tracking %d master(s)", nmasters);
}

/*
 * A subscription is lost (or about to be renewed): nothing is served
 * normally any more; with local_serve_on_error, this epoch's entries stay
 * for the outage fallback.
 */
void
redis_local_tracking_lost(const char *why)
{
	if (!usable())
		return;
	LWLockAcquire(local->lock, LW_EXCLUSIVE);
	if (pg_atomic_read_u32(&local->state) == RC_LOCAL_TRACKING)
	{
		uint64		epoch = pg_atomic_read_u64(&local->epoch);

		pg_atomic_write_u32(&local->state, RC_LOCAL_LOST);
		if (local_serve_on_error > 0)
		{
			/* a new epoch without clearing: fills in flight are discarded */
			pg_atomic_fetch_add_u64(&local->epoch, 1);
			local->fallback_epoch = epoch;
			local->lost_at = GetCurrentTimestamp();
		}
		else
			new_epoch();
		elog(DEBUG1, "redis_cache: local cache tracking lost: %s", why);
	}
	else if (pg_atomic_read_u32(&local->state) == RC_LOCAL_WAITING)
		pg_atomic_write_u32(&local->state, RC_LOCAL_LOST);
	LWLockRelease(local->lock);
}

/*
 * Every master answered the tracking worker's heartbeat.  A new cache
 * version (the worker reloaded its settings) empties the cache.
 */
void
redis_local_heartbeat(void)
{
	uint64		version;

	if (!usable())
		return;
	version = version_hash();
	if (pg_atomic_read_u64(&local->version) != version)
	{
		LWLockAcquire(local->lock, LW_EXCLUSIVE);
		new_epoch();
		pg_atomic_write_u64(&local->version, version);
		LWLockRelease(local->lock);
		elog(DEBUG1, "redis_cache: local cache emptied: redis_cache.version changed");
	}
	pg_atomic_write_u64(&local->heartbeat, (uint64) GetCurrentTimestamp());
}

RedisLocalState
redis_local_state(void)
{
	if (!usable())
		return RC_LOCAL_DISABLED;
	return (RedisLocalState) pg_atomic_read_u32(&local->state);
}

/* cache_health()'s "local_cache": a JSON object appended to json. */
void
redis_local_health(StringInfo json)
{
	static const char *const names[] = {"disabled", "waiting", "tracking", "lost"};
	RedisLocalState state = redis_local_state();
	TimestampTz now = GetCurrentTimestamp();
	const char *p;
	int			i;

	appendStringInfo(json, "{\"state\": \"%s\"", names[state]);
	if (state == RC_LOCAL_DISABLED)
	{
		appendStringInfo(json, ", \"size_bytes\": 0}");
		return;
	}
	LWLockAcquire(local->lock, LW_SHARED);
	appendStringInfo(json, ", \"size_bytes\": " UINT64_FORMAT
					 ", \"arena_bytes\": " UINT64_FORMAT
					 ", \"used_bytes\": " UINT64_FORMAT
					 ", \"entries\": %u, \"epoch\": " UINT64_FORMAT
					 ", \"masters\": %d",
					 (uint64) local->total, local->capacity, local->used,
					 pg_atomic_read_u32(&local->nentries),
					 pg_atomic_read_u64(&local->epoch), local->nmasters);
	appendStringInfoString(json, ", \"prefixes\": [");
	p = local->prefixes;
	for (i = 0; i < local->nprefixes; i++)
	{
		if (i > 0)
			appendStringInfoString(json, ", ");
		escape_json(json, p);
		p += strlen(p) + 1;
	}
	appendStringInfoChar(json, ']');
	{
		TimestampTz beat = (TimestampTz) pg_atomic_read_u64(&local->heartbeat);

		if (beat != 0)
			appendStringInfo(json, ", \"heartbeat_age_ms\": " INT64_FORMAT,
							 (now - beat) / 1000);
		else
			appendStringInfoString(json, ", \"heartbeat_age_ms\": null");
	}
	if (state == RC_LOCAL_LOST && local->fallback_epoch != 0)
		appendStringInfo(json, ", \"lost_for_ms\": " INT64_FORMAT,
						 (now - local->lost_at) / 1000);
	LWLockRelease(local->lock);
	appendStringInfo(json, ", \"serve_on_error_s\": %d, \"max_age_s\": %d}",
					 local_serve_on_error, local_max_age);
}
