/*-------------------------------------------------------------------------
 *
 * replay.c
 *		  The replay queue: the exact invalidations a commit could not
 *		  deliver, kept in shared memory until the background worker has
 *		  sent them (requires shared_preload_libraries).
 *
 * A commit that cannot deliver (Redis down, paused, slow, the breaker
 * open) hands its key deletes, generation bumps and family records to this
 * queue (invalidation.c, at XACT_EVENT_COMMIT: no ERROR, no allocation, one
 * LWLock), and the worker (worker.c) sends exactly them as soon as Redis
 * answers, oldest first, in batches of one round trip.  A 250 ms stall
 * during a one-row UPDATE so removes that row's keys and nothing else: the
 * rest of the family stays cached.
 *
 * Bounds: redis_cache.replay_queue_keys entries (default 65536), in a ring
 * of RC_REPLAY_BYTES_PER_KEY bytes per entry (8 MB by default): whichever
 * fills first.  A commit's keys go in whole or not at all; when they do not
 * fit, the caller falls back to its families (the worker's pattern queue),
 * and beyond that to a flush of the namespace's owned keys.  Nothing here
 * ever deletes more than was asked.
 *
 * Readers.  While an entry is queued its key may be stale in Redis, so
 * cache_get()/cache_mget() miss on it (a filter of counters by key hash:
 * a false positive costs a miss, never a stale hit), and cache_query()
 * bypasses a namespace with generation bumps queued.  One atomic read when
 * the queue is empty.
 *
 * Entries name their namespace by the worker's index (worker.c resolves
 * it); what is queued is lost with shared memory (a crash, a stop), which
 * the worker handles as an unclean stop: it flushes the owned keys at the
 * next start.  The queue is private to this file; its lock is only ever
 * held for memory accesses, never across a Redis call.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "redis_cache.h"

/* Ring bytes per entry of redis_cache.replay_queue_keys (average). */
#define RC_REPLAY_BYTES_PER_KEY		128

/* Counters of the readers' filter of queued keys. */
#define RC_REPLAY_FILTER_SLOTS		16384

/* Entries sent per round trip by the worker. */
#define RC_REPLAY_BATCH				1000

/* Most namespaces (worker.c's table). */
#define RC_REPLAY_NAMESPACES		16

/* An entry in the ring: header, then len bytes, padded to 8. */
typedef struct ReplayEntry
{
	uint16		namespace_index;
	uint8		kind;			/* RedisReplayKind, or REPLAY_WRAP */
	uint8		padding;
	uint32		len;
	uint32		hash;			/* of prefix||key (keys only) */
	uint32		total;			/* bytes of this entry, header included */
	char		data[FLEXIBLE_ARRAY_MEMBER];
} ReplayEntry;

#define REPLAY_WRAP		255		/* the rest of the ring is unused */

typedef struct ReplayShared
{
	LWLock	   *lock;
	pg_atomic_uint32 queued;	/* entries; readers' fast path */
	uint64		head;			/* next byte written (monotonic) */
	uint64		tail;			/* oldest byte in use (monotonic) */
	uint64		ring_size;
	int			max_entries;
	int			nentries;
	uint64		enqueued;		/* statistics */
	uint64		replayed;
	uint64		overflows;
	uint32		bumps[RC_REPLAY_NAMESPACES];	/* queued generation bumps */
	uint32		filter[RC_REPLAY_FILTER_SLOTS];
	char		ring[FLEXIBLE_ARRAY_MEMBER];
} ReplayShared;

static ReplayShared *replay = NULL;

/* redis_cache.replay_queue_keys */
static int	replay_queue_keys = 65536;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
replay_shmem_size(void)
{
	return add_size(offsetof(ReplayShared, ring),
					mul_size((Size) replay_queue_keys, RC_REPLAY_BYTES_PER_KEY));
}

static void
replay_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(replay_shmem_size()));
	RequestNamedLWLockTranche("redis_cache replay", 1);
}

static void
replay_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	replay = ShmemInitStruct("redis_cache replay", replay_shmem_size(), &found);
	if (!found)
	{
		memset(replay, 0, offsetof(ReplayShared, ring));
		replay->lock = &(GetNamedLWLockTranche("redis_cache replay"))->lock;
		pg_atomic_init_u32(&replay->queued, 0);
		replay->ring_size = (uint64) replay_queue_keys * RC_REPLAY_BYTES_PER_KEY;
		replay->max_entries = replay_queue_keys;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* The hash of a full key (prefix included) for the readers' filter. */
uint32
redis_replay_key_hash(const char *key, size_t len)
{
	return hash_bytes((const unsigned char *) key, (int) len);
}

static inline uint32
entry_size(uint32 len)
{
	return (uint32) TYPEALIGN(8, offsetof(ReplayEntry, data) + len);
}

static inline ReplayEntry *
entry_at(uint64 pos)
{
	return (ReplayEntry *) (replay->ring + (pos % replay->ring_size));
}

/*
 * The entry at *pos, or NULL after moving *pos to the start of the ring
 * when the rest of it is unused (a WRAP entry, or a tail shorter than a
 * header).
 */
static ReplayEntry *
entry_or_wrap(uint64 *pos)
{
	ReplayEntry *e = entry_at(*pos);
	uint64		offset = *pos % replay->ring_size;

	if (replay->ring_size - offset < offsetof(ReplayEntry, data) ||
		e->kind == REPLAY_WRAP)
	{
		*pos += replay->ring_size - offset;
		return NULL;
	}
	return e;
}

/*
 * Reserve room for an entry of len bytes at head (wrapping with a WRAP
 * entry when it does not fit before the end of the ring).  NULL when the
 * ring is full.  Caller holds the lock exclusively.
 */
static ReplayEntry *
reserve(uint32 len)
{
	uint32		need = entry_size(len);
	uint64		offset = replay->head % replay->ring_size;
	uint64		room_to_end = replay->ring_size - offset;
	uint64		used = replay->head - replay->tail;
	ReplayEntry *e;

	if (room_to_end < need)
	{
		/* skip to the start: the skipped bytes count as used */
		if (used + room_to_end + need > replay->ring_size)
			return NULL;
		e = entry_at(replay->head);
		if (room_to_end >= offsetof(ReplayEntry, data))
		{
			e->kind = REPLAY_WRAP;
			e->total = (uint32) room_to_end;
		}
		/* a tail shorter than a header: the reader skips it by offset */
		replay->head += room_to_end;
		used += room_to_end;
	}
	if (used + need > replay->ring_size)
		return NULL;
	e = entry_at(replay->head);
	e->total = need;
	replay->head += need;
	return e;
}

/*
 * Hand over the items of one commit (XACT_EVENT_COMMIT: no ERROR, no
 * allocation).  The keys go in whole or not at all; generation bumps and
 * family records, few per commit, go in first and separately.  Returns a
 * mask of RC_REPLAY_* kinds that did not fit (0 when everything is queued)
 * for the caller's fallback.  False positives are impossible: what is
 * reported as queued is queued.
 */
int
redis_replay_hand_over(const RedisReplayItem *items, int nitems)
{
	int			failed = 0;
	int			pass;

	if (replay == NULL || nitems == 0)
		return nitems == 0 ? 0 : ~0;

	LWLockAcquire(replay->lock, LW_EXCLUSIVE);
	for (pass = 0; pass < 2; pass++)
	{
		uint64		head_before = replay->head;
		int			entries_before = replay->nentries;
		int			added = 0;
		bool		full = false;
		int			i;

		for (i = 0; i < nitems; i++)
		{
			const RedisReplayItem *item = &items[i];
			ReplayEntry *e;

			/* pass 0: bumps and families; pass 1: keys, all or none */
			if ((item->kind == RC_REPLAY_KEY) != (pass == 1))
				continue;
			if (item->namespace_index < 0 ||
				item->namespace_index >= RC_REPLAY_NAMESPACES ||
				replay->nentries >= replay->max_entries ||
				(e = reserve(item->len)) == NULL)
			{
				full = true;
				failed |= (1 << item->kind);
				if (pass == 1)
					break;
				continue;
			}
			e->namespace_index = (uint16) item->namespace_index;
			e->kind = (uint8) item->kind;
			e->len = item->len;
			e->hash = item->hash;
			memcpy(e->data, item->data, item->len);
			replay->nentries++;
			added++;
		}
		if (pass == 1 && full)
		{
			/* undo this commit's keys: nothing half queued */
			replay->head = head_before;
			replay->nentries = entries_before;
			added = 0;
		}
		else
		{
			/* account what was queued */
			uint64		pos = head_before;

			while (pos < replay->head)
			{
				ReplayEntry *e = entry_or_wrap(&pos);

				if (e == NULL)
					continue;
				if (e->kind == RC_REPLAY_KEY)
					replay->filter[e->hash % RC_REPLAY_FILTER_SLOTS]++;
				else if (e->kind == RC_REPLAY_GENERATION)
					replay->bumps[e->namespace_index]++;
				pos += e->total;
			}
		}
		replay->enqueued += added;
	}
	if (failed)
		replay->overflows++;
	pg_atomic_write_u32(&replay->queued, (uint32) replay->nentries);
	LWLockRelease(replay->lock);
	return failed;
}

/*
 * Whether a delete of the full key (prefix included) is queued: a reader
 * must then miss.  One atomic read when the queue is empty.
 */
bool
redis_replay_key_queued(const char *key, size_t len)
{
	bool		result;

	if (replay == NULL || pg_atomic_read_u32(&replay->queued) == 0)
		return false;
	LWLockAcquire(replay->lock, LW_SHARED);
	result = replay->filter[redis_replay_key_hash(key, len) % RC_REPLAY_FILTER_SLOTS] > 0;
	LWLockRelease(replay->lock);
	return result;
}

/* Whether generation bumps of namespace index are queued. */
bool
redis_replay_bumps_queued(int namespace_index)
{
	bool		result;

	if (replay == NULL || pg_atomic_read_u32(&replay->queued) == 0 ||
		namespace_index < 0 || namespace_index >= RC_REPLAY_NAMESPACES)
		return false;
	LWLockAcquire(replay->lock, LW_SHARED);
	result = replay->bumps[namespace_index] > 0;
	LWLockRelease(replay->lock);
	return result;
}

/* Entries queued now (0 without shared memory). */
int
redis_replay_queued(void)
{
	if (replay == NULL)
		return 0;
	return (int) pg_atomic_read_u32(&replay->queued);
}

/*
 * Statistics for cache_health(): queued, capacity, ever queued, replayed,
 * overflows.
 */
void
redis_replay_counts(int64 *queued, int64 *capacity, int64 *enqueued,
					int64 *replayed, int64 *overflows)
{
	*queued = *capacity = *enqueued = *replayed = *overflows = 0;
	if (replay == NULL)
		return;
	LWLockAcquire(replay->lock, LW_SHARED);
	*queued = replay->nentries;
	*capacity = replay->max_entries;
	*enqueued = (int64) replay->enqueued;
	*replayed = (int64) replay->replayed;
	*overflows = (int64) replay->overflows;
	LWLockRelease(replay->lock);
}

/*
 * Worker: copy up to RC_REPLAY_BATCH of the oldest entries into items
 * (palloc'd in the current context), without removing them.  Returns the
 * count; *consumed is how far the tail may move once they are delivered.
 */
int
redis_replay_peek(RedisReplayItem **items, uint64 *consumed)
{
	uint64		pos;
	int			n = 0;

	*items = NULL;
	*consumed = 0;
	if (replay == NULL || pg_atomic_read_u32(&replay->queued) == 0)
		return 0;
	*items = palloc(sizeof(RedisReplayItem) * RC_REPLAY_BATCH);
	LWLockAcquire(replay->lock, LW_SHARED);
	pos = replay->tail;
	while (pos < replay->head && n < RC_REPLAY_BATCH)
	{
		ReplayEntry *e = entry_or_wrap(&pos);
		RedisReplayItem *item;
		char	   *copy;

		if (e == NULL)
			continue;
		item = &(*items)[n++];
		copy = palloc(e->len + 1);
		memcpy(copy, e->data, e->len);
		copy[e->len] = '\0';
		item->namespace_index = e->namespace_index;
		item->kind = e->kind;
		item->data = copy;
		item->len = e->len;
		item->hash = e->hash;
		pos += e->total;
	}
	LWLockRelease(replay->lock);
	*consumed = pos;
	return n;
}

/*
 * Worker: the entries returned by the last peek were delivered: remove
 * them (only the worker removes, so they are still the oldest).
 */
void
redis_replay_consume(uint64 consumed)
{
	uint64		pos;

	LWLockAcquire(replay->lock, LW_EXCLUSIVE);
	pos = replay->tail;
	while (pos < consumed)
	{
		ReplayEntry *e = entry_or_wrap(&pos);

		if (e == NULL)
			continue;
		if (e->kind == RC_REPLAY_KEY)
			replay->filter[e->hash % RC_REPLAY_FILTER_SLOTS]--;
		else if (e->kind == RC_REPLAY_GENERATION)
			replay->bumps[e->namespace_index]--;
		replay->nentries--;
		replay->replayed++;
		pos += e->total;
	}
	replay->tail = consumed;
	if (replay->nentries == 0)
		replay->head = replay->tail = 0;
	pg_atomic_write_u32(&replay->queued, (uint32) replay->nentries);
	LWLockRelease(replay->lock);
}

/*
 * From _PG_init: the setting (read at server start) and, preloaded, the
 * shared memory.
 */
void
redis_replay_init(void)
{
	/* a PGC_POSTMASTER setting can only be defined at server start */
	if (!process_shared_preload_libraries_in_progress)
		return;
	DefineCustomIntVariable("redis_cache.replay_queue_keys",
							gettext_noop("Sets how many undelivered invalidations the worker keeps to send exactly once Redis answers."),
							gettext_noop("Each entry takes 128 bytes of shared memory on average. A commit that does not fit invalidates the owned families of its tables instead."),
							&replay_queue_keys,
							65536, 16, 16 * 1024 * 1024,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = replay_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = replay_shmem_startup;
}
