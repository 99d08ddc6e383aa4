/*-------------------------------------------------------------------------
 *
 * worker.c
 *		  Shared memory and the background worker that make invalidations
 *		  impossible to lose (requires shared_preload_libraries).
 *
 * Backends send invalidations themselves when their transaction commits.
 * What they could not deliver is handed to this worker through shared
 * memory, and the worker finishes it as soon as Redis is reachable:
 *
 * - a namespace (key_prefix) whose invalidation failed at commit is marked
 *   "missed"; the worker flushes the whole namespace (SCAN + UNLINK, the
 *   cache version keys kept), which removes every key the lost message
 *   named, whatever Redis kept meanwhile (SIGSTOP, network cut);
 * - pattern invalidations (templates ending in '*', TRUNCATE) need SCAN,
 *   which does not fit in a commit's time budget: the worker runs them;
 * - second deletes for redis_cache.redelete_delay_ms.
 *
 * Durability: the file redis_cache.state in the data directory lists every
 * namespace ever invalidated, with "missed" flags, and a "clean" line when
 * the worker stopped with nothing pending and no commit in flight.  The
 * first invalidation of a namespace writes it (fsync) before its commit.
 * At start, the worker flushes every namespace marked missed, or all of
 * them when the last stop was not clean (crash, kill -9, power loss): a
 * commit may have died between its commit record and its send.
 *
 * Locking: RedisCacheShared->lock (one LWLock) protects everything in it
 * except in_flight (atomic).  The worker alone writes the state file,
 * except registrations, which a backend writes under the lock.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "redis_cache.h"

#define RC_STATE_FILE		"redis_cache.state"
#define RC_STATE_TMP		"redis_cache.state.tmp"

/* How often the worker retries pending work while Redis is unreachable. */
#define RC_WORKER_RETRY_MS	500

RedisCacheShared *redis_cache_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
shared_size(void)
{
	return MAXALIGN(sizeof(RedisCacheShared));
}

static void
redis_cache_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(shared_size());
	RequestNamedLWLockTranche("redis_cache", 1);
}

static void
redis_cache_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	redis_cache_shared = ShmemInitStruct("redis_cache", shared_size(), &found);
	if (!found)
	{
		memset(redis_cache_shared, 0, shared_size());
		redis_cache_shared->lock = &(GetNamedLWLockTranche("redis_cache"))->lock;
		pg_atomic_init_u32(&redis_cache_shared->in_flight, 0);
		redis_stats_init(&redis_cache_shared->stats);
		pg_atomic_init_u32(&redis_cache_shared->query_tables_any, 0);
		for (int i = 0; i < RC_QUERY_TABLE_WORDS; i++)
			pg_atomic_init_u64(&redis_cache_shared->query_tables[i], 0);
		redis_query_tables_load();
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Replace path with data atomically: write tmp, fsync, durable rename.
 * Returns false (after a WARNING) on I/O errors; never throws.
 */
bool
redis_write_file_durably(const char *tmp, const char *path,
						 const void *data, size_t len)
{
	int			fd;

	fd = OpenTransientFile(tmp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY);
	if (fd < 0)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("redis_cache: could not create \"%s\": %m", tmp)));
		return false;
	}
	if (write(fd, data, len) != (ssize_t) len || pg_fsync(fd) != 0)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("redis_cache: could not write \"%s\": %m", tmp)));
		CloseTransientFile(fd);
		return false;
	}
	CloseTransientFile(fd);
	return durable_rename(tmp, path, WARNING) == 0;
}

/*
 * Write the state file atomically.  Caller holds the lock.  Returns false
 * (after a WARNING) on I/O errors; never throws.
 */
static bool
write_state_file(bool clean)
{
	RedisCacheShared *sh = redis_cache_shared;
	char		buf[RC_MAX_NAMESPACES * (RC_MAX_KEY_BYTES + 16) + 16];
	int			len = 0;
	int			i;

	for (i = 0; i < sh->nnamespaces; i++)
		len += snprintf(buf + len, sizeof(buf) - len, "%s\t%s\n",
						sh->namespaces[i].missed ? "missed" : "seen",
						sh->namespaces[i].prefix);
	if (clean)
		len += snprintf(buf + len, sizeof(buf) - len, "clean\n");
	return redis_write_file_durably(RC_STATE_TMP, RC_STATE_FILE, buf, len);
}

/*
 * Read the state file into shared memory.  Returns whether the last stop was
 * clean; a missing file is a clean first start.
 */
static bool
read_state_file(void)
{
	RedisCacheShared *sh = redis_cache_shared;
	FILE	   *file;
	char		line[RC_MAX_KEY_BYTES + 32];
	bool		clean = false;

	file = AllocateFile(RC_STATE_FILE, "r");
	if (file == NULL)
		return true;
	while (fgets(line, sizeof(line), file) != NULL)
	{
		char	   *tab = strchr(line, '\t');
		size_t		len = strlen(line);

		if (len > 0 && line[len - 1] == '\n')
			line[--len] = '\0';
		if (strcmp(line, "clean") == 0)
		{
			clean = true;
			continue;
		}
		if (tab == NULL || sh->nnamespaces >= RC_MAX_NAMESPACES)
			continue;
		*tab = '\0';
		strlcpy(sh->namespaces[sh->nnamespaces].prefix, tab + 1,
				sizeof(sh->namespaces[0].prefix));
		sh->namespaces[sh->nnamespaces].missed = (strcmp(line, "missed") == 0);
		sh->nnamespaces++;
	}
	FreeFile(file);
	return clean;
}

/*
 * Index of namespace "prefix" in shared memory, registering it (and making
 * the registration durable) when new.  Called at PRE_COMMIT: may ERROR.
 * Returns -1 when the table is full (the caller warns: weaker guarantee).
 */
int
redis_register_namespace(const char *prefix)
{
	RedisCacheShared *sh = redis_cache_shared;
	int			i;
	int			result = -1;

	if (sh == NULL)
		return -1;

	LWLockAcquire(sh->lock, LW_SHARED);
	for (i = 0; i < sh->nnamespaces; i++)
	{
		if (strcmp(sh->namespaces[i].prefix, prefix) == 0)
		{
			result = i;
			break;
		}
	}
	LWLockRelease(sh->lock);
	if (result >= 0)
		return result;

	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	for (i = 0; i < sh->nnamespaces; i++)
	{
		if (strcmp(sh->namespaces[i].prefix, prefix) == 0)
		{
			result = i;
			break;
		}
	}
	if (result < 0 && sh->nnamespaces < RC_MAX_NAMESPACES)
	{
		result = sh->nnamespaces++;
		strlcpy(sh->namespaces[result].prefix, prefix,
				sizeof(sh->namespaces[0].prefix));
		sh->namespaces[result].missed = false;
		if (!write_state_file(false))
		{
			sh->nnamespaces--;
			LWLockRelease(sh->lock);
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("redis_cache: could not record namespace \"%s\" in \"%s\"",
							prefix, RC_STATE_FILE)));
		}
	}
	LWLockRelease(sh->lock);
	return result;
}

static void
wake_worker(void)
{
	if (redis_cache_shared->worker_latch)
		SetLatch(redis_cache_shared->worker_latch);
}

/*
 * A commit could not deliver its invalidations: the worker flushes the
 * namespace.  Runs in XACT_EVENT_COMMIT: no ERROR, no allocation.
 */
void
redis_mark_missed(int namespace_index)
{
	RedisCacheShared *sh = redis_cache_shared;

	if (sh == NULL || namespace_index < 0)
		return;
	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	sh->namespaces[namespace_index].missed = true;
	sh->state_dirty = true;
	LWLockRelease(sh->lock);
	wake_worker();
}

/*
 * Hand a pattern invalidation to the worker.  When the queue is full the
 * namespace is flushed instead, which covers the pattern.  No ERROR.
 */
void
redis_queue_pattern(int namespace_index, const char *pattern)
{
	RedisCacheShared *sh = redis_cache_shared;

	if (sh == NULL || namespace_index < 0)
		return;
	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	if (sh->npatterns < RC_MAX_PENDING_PATTERNS)
	{
		sh->patterns[sh->npatterns].namespace_index = namespace_index;
		strlcpy(sh->patterns[sh->npatterns].pattern, pattern,
				sizeof(sh->patterns[0].pattern));
		sh->npatterns++;
	}
	else
	{
		sh->namespaces[namespace_index].missed = true;
		sh->state_dirty = true;
	}
	LWLockRelease(sh->lock);
	wake_worker();
}

/*
 * Schedule a second delete of key after redelete_delay_ms.  Best effort: a
 * full ring drops it (the first delete happened).  No ERROR.
 */
void
redis_queue_redelete(int namespace_index, const char *key, size_t len,
					 TimestampTz due)
{
	RedisCacheShared *sh = redis_cache_shared;
	RedisRedelete *slot;

	if (sh == NULL || namespace_index < 0 || len > RC_MAX_KEY_BYTES * 2)
		return;
	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	if (sh->nredeletes < RC_MAX_REDELETES)
	{
		slot = &sh->redeletes[(sh->redelete_head + sh->nredeletes) % RC_MAX_REDELETES];
		slot->namespace_index = namespace_index;
		slot->due = due;
		memcpy(slot->key, key, len);
		slot->key[len] = '\0';
		sh->nredeletes++;
	}
	LWLockRelease(sh->lock);
	wake_worker();
}

/* ---- the worker ---------------------------------------------------------- */

/*
 * Do what is pending.  Returns true when nothing is left; false when Redis
 * failed (retry later).  Work is taken out of shared memory only after it
 * succeeded, so a failure or a crash in the middle loses nothing.
 */
static bool
process_pending(void)
{
	RedisCacheShared *sh = redis_cache_shared;
	int			i;
	bool		all_done = true;

	/* flush missed namespaces */
	for (i = 0; i < RC_MAX_NAMESPACES; i++)
	{
		char		prefix[RC_MAX_KEY_BYTES + 1];
		bool		missed;
		int64		removed;

		LWLockAcquire(sh->lock, LW_SHARED);
		missed = i < sh->nnamespaces && sh->namespaces[i].missed;
		strlcpy(prefix, sh->namespaces[i].prefix, sizeof(prefix));
		LWLockRelease(sh->lock);
		if (!missed)
			continue;

		removed = redis_flush_prefix(prefix);
		if (removed < 0)
			return false;
		redis_stats_add(RC_STAT_FLUSHES, 1);
		redis_stats_add(RC_STAT_INVALIDATIONS_RETRIED, 1);
		ereport(LOG,
				(errmsg("redis_cache: flushed " INT64_FORMAT " keys under prefix \"%s\" to apply invalidations missed while Redis was unreachable",
						removed, prefix)));
		LWLockAcquire(sh->lock, LW_EXCLUSIVE);
		sh->namespaces[i].missed = false;
		sh->state_dirty = true;
		LWLockRelease(sh->lock);
	}

	/* patterns, oldest first */
	for (;;)
	{
		char		pattern[sizeof(sh->patterns[0].pattern)];
		char		prefix[RC_MAX_KEY_BYTES + 1];
		int			ns;

		LWLockAcquire(sh->lock, LW_SHARED);
		if (sh->npatterns == 0)
		{
			LWLockRelease(sh->lock);
			break;
		}
		strlcpy(pattern, sh->patterns[0].pattern, sizeof(pattern));
		ns = sh->patterns[0].namespace_index;
		strlcpy(prefix, sh->namespaces[ns].prefix, sizeof(prefix));
		LWLockRelease(sh->lock);

		if (redis_unlink_pattern(prefix, pattern) < 0)
			return false;
		redis_stats_add(RC_STAT_INVALIDATIONS_RETRIED, 1);

		LWLockAcquire(sh->lock, LW_EXCLUSIVE);
		sh->npatterns--;
		memmove(&sh->patterns[0], &sh->patterns[1],
				sizeof(sh->patterns[0]) * sh->npatterns);
		LWLockRelease(sh->lock);
	}

	/* second deletes that are due */
	for (;;)
	{
		RedisRedelete item;
		TimestampTz now = GetCurrentTimestamp();
		char	   *full;

		LWLockAcquire(sh->lock, LW_SHARED);
		if (sh->nredeletes == 0)
		{
			LWLockRelease(sh->lock);
			break;
		}
		item = sh->redeletes[sh->redelete_head];
		LWLockRelease(sh->lock);
		if (item.due > now)
		{
			all_done = false;
			break;
		}
		full = psprintf("%s%s", sh->namespaces[item.namespace_index].prefix, item.key);
		if (!redis_unlink_raw(full))
			return false;
		pfree(full);
		LWLockAcquire(sh->lock, LW_EXCLUSIVE);
		sh->redelete_head = (sh->redelete_head + 1) % RC_MAX_REDELETES;
		sh->nredeletes--;
		LWLockRelease(sh->lock);
	}

	/* persist cleared or new "missed" flags */
	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	if (sh->state_dirty)
	{
		if (write_state_file(false))
			sh->state_dirty = false;
	}
	LWLockRelease(sh->lock);
	return all_done;
}

/*
 * Milliseconds until the next due redelete, or -1.
 */
static long
next_redelete_ms(void)
{
	RedisCacheShared *sh = redis_cache_shared;
	long		result = -1;

	LWLockAcquire(sh->lock, LW_SHARED);
	if (sh->nredeletes > 0)
	{
		TimestampTz due = sh->redeletes[sh->redelete_head].due;

		result = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), due);
		if (result < 1)
			result = 1;
	}
	LWLockRelease(sh->lock);
	return result;
}

static bool
has_urgent_work(void)
{
	RedisCacheShared *sh = redis_cache_shared;
	bool		result = false;
	int			i;

	LWLockAcquire(sh->lock, LW_SHARED);
	result = sh->npatterns > 0 || sh->state_dirty;
	for (i = 0; i < sh->nnamespaces && !result; i++)
		result = sh->namespaces[i].missed;
	LWLockRelease(sh->lock);
	return result;
}

/*
 * At shutdown: wait (bounded) for commits in flight, then record a clean
 * stop if nothing is pending.
 */
static void
worker_shutdown(void)
{
	RedisCacheShared *sh = redis_cache_shared;
	int			waited = 0;
	bool		clean;
	int			i;

	while (pg_atomic_read_u32(&sh->in_flight) > 0 && waited < 5000)
	{
		pg_usleep(10000);
		waited += 10;
	}
	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	clean = pg_atomic_read_u32(&sh->in_flight) == 0 && sh->npatterns == 0;
	for (i = 0; i < sh->nnamespaces; i++)
		if (sh->namespaces[i].missed)
			clean = false;
	/* before "clean": the next start relies on it */
	if (!redis_query_tables_save())
		clean = false;
	write_state_file(clean);
	sh->worker_latch = NULL;
	LWLockRelease(sh->lock);
}

void		redis_cache_worker_main(Datum main_arg);

PGDLLEXPORT void
redis_cache_worker_main(Datum main_arg)
{
	RedisCacheShared *sh = redis_cache_shared;
	MemoryContext loop_context;
	bool		clean;
	int			i;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	/* faults are retried here, never raised */
	SetConfigOption("redis_cache.on_error", "warning", PGC_SUSET, PGC_S_OVERRIDE);

	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	clean = read_state_file();
	if (!clean)
	{
		for (i = 0; i < sh->nnamespaces; i++)
			sh->namespaces[i].missed = true;
		if (sh->nnamespaces > 0)
			ereport(LOG,
					(errmsg("redis_cache: previous shutdown was not clean; flushing %d cache namespaces to apply invalidations that may have been lost",
							sh->nnamespaces)));
	}
	/* from now until a clean stop, a crash must be assumed to lose work */
	write_state_file(false);
	sh->worker_latch = MyLatch;
	LWLockRelease(sh->lock);

	ereport(LOG, (errmsg("redis_cache invalidation worker started")));

	loop_context = AllocSetContextCreate(TopMemoryContext,
										 "redis_cache worker loop",
										 ALLOCSET_DEFAULT_SIZES);
	while (!ShutdownRequestPending)
	{
		long		timeout = -1;
		bool		done;

		MemoryContextReset(loop_context);
		MemoryContextSwitchTo(loop_context);

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		done = process_pending();
		if (!done || has_urgent_work())
			timeout = RC_WORKER_RETRY_MS;
		else
			timeout = next_redelete_ms();
		MemoryContextSwitchTo(TopMemoryContext);

		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_EXIT_ON_PM_DEATH |
						 (timeout >= 0 ? WL_TIMEOUT : 0),
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}

	worker_shutdown();
	proc_exit(0);
}

/*
 * From _PG_init under shared_preload_libraries.
 */
void
redis_worker_init(void)
{
	BackgroundWorker worker;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = redis_cache_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = redis_cache_shmem_startup;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS;
	worker.bgw_start_time = BgWorkerStart_PostmasterStart;
	worker.bgw_restart_time = 1;
	strlcpy(worker.bgw_library_name, "redis_cache", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "redis_cache_worker_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "redis_cache invalidation worker", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "redis_cache worker", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}
