/*-------------------------------------------------------------------------
 *
 * worker.c
 *		  The background worker that makes invalidations impossible to lose,
 *		  and the shared memory through which backends hand it work
 *		  (requires shared_preload_libraries).
 *
 * Backends send invalidations themselves when their transaction commits.
 * What they could not deliver is handed to this worker through shared
 * memory, and the worker finishes it as soon as Redis is reachable:
 *
 * - the exact key deletes, generation bumps and family records a commit
 *   could not deliver wait in the replay queue (replay.c); the worker sends
 *   them, oldest first, as soon as Redis answers, and nothing else: a
 *   250 ms stall during a one-row UPDATE removes that row's keys only;
 * - a namespace (key_prefix) whose invalidations could not be queued
 *   exactly (the replay queue full, an unclean stop) is marked "missed";
 *   the worker flushes the keys the namespace owns (flush.c, families.c:
 *   its query results and the owned key families, SCAN + UNLINK), which
 *   covers every key the lost message named, whatever Redis kept
 *   meanwhile, and never touches what the cache does not own (sessions,
 *   job queues, other frameworks' keys in the same database);
 * - pattern invalidations (templates ending in '*', TRUNCATE) need SCAN,
 *   which does not fit in a commit's time budget: the worker runs them;
 * - second deletes for redis_cache.redelete_delay_ms.
 *
 * Durability: the state file pg_stat/redis_cache.state (state_file.c)
 * lists every namespace ever invalidated, with "missed" flags, the
 * identity of the WAL history it was written on ("identity <system
 * identifier>.<timeline>", keys.c) and a "clean" line when the worker
 * stopped with nothing pending and no commit in flight.  The first
 * invalidation of a namespace writes it (fsync) before its commit.  At
 * start, the worker flushes every namespace marked missed, or all of them
 * when the last stop was not clean (crash, kill -9, power loss): a commit
 * may have died between its commit record and its send.
 *
 * Recovery: a server in recovery never writes, so it never misses an
 * invalidation, and a standby reads its primary's query results: the
 * worker reads the state file (a base backup copies the primary's, not
 * clean) but flushes nothing, writes nothing and takes no work until
 * recovery ends.  Then it starts as above, and a file written on another
 * WAL history (promotion, a copy of another server) counts as not clean:
 * the old primary may have died between a commit and its send, and the
 * key-value keys it named were replicated here.  The promoted server's
 * query results start empty in the namespace of its new timeline.
 *
 * Stale window: from the moment a namespace is marked missed until the
 * worker has flushed it (Redis may be back long before that), its cached
 * entries may be stale; so are the keys of queued replays and patterns.
 * redis_key_pending() and redis_results_pending() say so, and the readers
 * (cache_get, cache_mget, cache_query) bypass the cache meanwhile.  It reads one
 * atomic counter when nothing is pending.  Before the worker has read the
 * state file (just after a start or a crash) every namespace counts as
 * pending.  A mark that arrives while its namespace is being flushed is
 * kept for another flush (missed_marks).
 *
 * Shutdown: SIGTERM sets ShutdownRequestPending and the latch; the
 * transport's waits and the SCAN loops end on that flag, and the main loop
 * checks it again before sleeping, since a wait resets the latch.  No
 * LWLock (which holds interrupts) is ever held across a Redis call.
 *
 * Locking: WorkerShared is private to this file.  Its lock protects every
 * field but in_flight and recovery_pending (atomics, the latter written
 * under the lock) and is only ever held for memory accesses.
 * A second lock, file_lock, serialises writes of the state file: a writer
 * takes a snapshot under the first lock, releases it, and writes and
 * fsyncs holding only file_lock, so no backend waits for an fsync to mark
 * a namespace missed or to queue work.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
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
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "redis_cache.h"

#define RC_STATE_FILE		"redis_cache.state"
#define RC_STATE_FORMAT		2
#define RC_LEGACY_STATE_FILE	"redis_cache.state"	/* 1.2, data directory */

#define RC_MAX_NAMESPACES		16
#define RC_MAX_PENDING_PATTERNS	256
#define RC_MAX_REDELETES		1024

/* How often the worker retries pending work while Redis is unreachable. */
#define RC_WORKER_RETRY_MS	500
/* ... and after a protocol fault (a server that is not quite Redis) */
#define RC_WORKER_FAULT_RETRY_MS	10000

typedef struct RedisNamespace
{
	char		prefix[RC_MAX_KEY_BYTES + 1];
	bool		missed;			/* an invalidation was lost: flush it */
	uint32		missed_marks;	/* bumped by every mark, for the flush */
	bool		durable;		/* recorded in the state file */
	bool		forgotten;		/* cache_forget_namespace(): slot unused */
} RedisNamespace;

typedef struct RedisPendingPattern
{
	int			namespace_index;
	char		pattern[RC_MAX_KEY_BYTES * 2 + 1];	/* glob, after key_prefix */
} RedisPendingPattern;

typedef struct RedisRedelete
{
	int			namespace_index;
	TimestampTz due;
	char		key[RC_MAX_KEY_BYTES * 2 + 1];
} RedisRedelete;

typedef struct WorkerShared
{
	LWLock	   *lock;			/* everything below but in_flight */
	LWLock	   *file_lock;		/* serialises state file writes */
	Latch	   *worker_latch;	/* NULL while no worker runs */
	pg_atomic_uint32 in_flight; /* commits sending invalidations now */
	pg_atomic_uint32 recovery_pending;	/* missed namespaces, +1 until
										 * state_loaded */
	pg_atomic_uint32 patterns_queued;	/* npatterns, for readers */
	bool		state_loaded;	/* the worker has read the state file */
	bool		state_dirty;	/* state file needs rewriting */
	int			nnamespaces;
	RedisNamespace namespaces[RC_MAX_NAMESPACES];
	int			npatterns;
	RedisPendingPattern patterns[RC_MAX_PENDING_PATTERNS];
	int			redelete_head;
	int			nredeletes;
	RedisRedelete redeletes[RC_MAX_REDELETES];
} WorkerShared;

static WorkerShared *worker_shared = NULL;

PG_FUNCTION_INFO_V1(cache_forget_namespace);

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
worker_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(WorkerShared)));
	RequestNamedLWLockTranche("redis_cache worker", 2);
}

static void
worker_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	worker_shared = ShmemInitStruct("redis_cache worker", sizeof(WorkerShared), &found);
	if (!found)
	{
		LWLockPadded *locks = GetNamedLWLockTranche("redis_cache worker");

		memset(worker_shared, 0, sizeof(WorkerShared));
		worker_shared->lock = &locks[0].lock;
		worker_shared->file_lock = &locks[1].lock;
		pg_atomic_init_u32(&worker_shared->in_flight, 0);
		/* nothing may be served before the worker knows what was lost */
		pg_atomic_init_u32(&worker_shared->recovery_pending, 1);
		pg_atomic_init_u32(&worker_shared->patterns_queued, 0);
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Recount recovery_pending after a change of "missed" or state_loaded.
 * Called with sh->lock held exclusively.
 */
static void
update_recovery_pending(WorkerShared *sh)
{
	uint32		n = sh->state_loaded ? 0 : 1;
	int			i;

	for (i = 0; i < sh->nnamespaces; i++)
		if (sh->namespaces[i].missed)
			n++;
	pg_atomic_write_u32(&sh->recovery_pending, n);
}

/*
 * Whether cached entries of namespace "prefix" may be stale because the
 * worker has not yet applied invalidations a commit could not deliver (or
 * has not yet read the state file).  Readers then bypass the cache: no hit
 * is served and nothing is stored.  One atomic read when nothing is
 * pending; false without shared memory.  Safe in any backend.
 *
 * False in recovery: a standby never writes, so it has missed nothing; what
 * its copied state file says is its primary's business.  At promotion the
 * worker takes the file over (and flushes), and readers wait for that.
 */
bool
redis_recovery_pending(const char *prefix)
{
	WorkerShared *sh = worker_shared;
	bool		result = false;
	int			i;

	if (sh == NULL || pg_atomic_read_u32(&sh->recovery_pending) == 0 ||
		RecoveryInProgress())
		return false;
	LWLockAcquire(sh->lock, LW_SHARED);
	if (!sh->state_loaded)
		result = true;
	for (i = 0; i < sh->nnamespaces && !result; i++)
		result = sh->namespaces[i].missed && !sh->namespaces[i].forgotten &&
			strcmp(sh->namespaces[i].prefix, prefix) == 0;
	LWLockRelease(sh->lock);
	return result;
}

/*
 * Whether a cached key (after prefix) may be stale: its namespace waits for
 * a flush, its delete waits in the replay queue (replay.c), or a queued
 * pattern of its namespace matches it.  cache_get() and cache_mget() then
 * miss.  Atomic reads only when nothing is pending.
 */
bool
redis_key_pending(const char *prefix, const char *key, size_t len)
{
	WorkerShared *sh = worker_shared;
	bool		result;

	if (sh == NULL || RecoveryInProgress())
		return false;
	if (redis_recovery_pending(prefix))
		return true;
	if (redis_replay_queued() > 0)
	{
		size_t		plen = strlen(prefix);
		char	   *full = palloc(plen + len);

		memcpy(full, prefix, plen);
		memcpy(full + plen, key, len);
		result = redis_replay_key_queued(full, plen + len);
		pfree(full);
		if (result)
			return true;
	}
	if (pg_atomic_read_u32(&sh->patterns_queued) == 0)
		return false;
	result = false;
	LWLockAcquire(sh->lock, LW_SHARED);
	for (int i = 0; i < sh->npatterns && !result; i++)
	{
		RedisPendingPattern *p = &sh->patterns[i];

		result = strcmp(sh->namespaces[p->namespace_index].prefix, prefix) == 0 &&
			redis_glob_match(p->pattern, strlen(p->pattern), key, len);
	}
	LWLockRelease(sh->lock);
	return result;
}

/*
 * Whether cached query results of namespace prefix may be stale: it waits
 * for a flush, or generation bumps of it wait in the replay queue.
 * cache_query() then bypasses the cache.
 */
bool
redis_results_pending(const char *prefix)
{
	if (worker_shared == NULL || RecoveryInProgress())
		return false;
	if (redis_recovery_pending(prefix))
		return true;
	if (redis_replay_queued() == 0)
		return false;
	return redis_replay_bumps_queued(redis_find_namespace(prefix));
}

/*
 * Write the state file from a snapshot of shared memory.  Never called with
 * worker_shared->lock held: the snapshot is taken under it, the fsync
 * happens under file_lock only.  Returns false (after a WARNING) on I/O
 * errors; never throws.  On success every namespace of the snapshot is
 * durable.
 */
static bool
write_state_file(bool clean)
{
	WorkerShared *sh = worker_shared;
	char	   *buf = palloc(RC_MAX_NAMESPACES * (RC_MAX_KEY_BYTES + 16) +
							 RC_QUERY_NAMESPACE_LEN + 32);
	bool		included[RC_MAX_NAMESPACES];
	int			len = 0;
	int			n;
	int			i;
	bool		ok;

	LWLockAcquire(sh->file_lock, LW_EXCLUSIVE);

	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	n = sh->nnamespaces;
	for (i = 0; i < n; i++)
	{
		included[i] = !sh->namespaces[i].forgotten;
		if (included[i])
			len += sprintf(buf + len, "%s\t%s\n",
						   sh->namespaces[i].missed ? "missed" : "seen",
						   sh->namespaces[i].prefix);
	}
	/* no tab: version 1.3 skips this line */
	{
		char		ns[RC_QUERY_NAMESPACE_LEN];

		redis_query_namespace(ns);
		len += sprintf(buf + len, "identity %s\n", ns);
	}
	if (clean)
		len += sprintf(buf + len, "clean\n");
	sh->state_dirty = false;
	LWLockRelease(sh->lock);

	ok = redis_state_file_write(RC_STATE_FILE, RC_STATE_FORMAT, buf, len);

	/* durable: only what this write contained (a slot may have changed) */
	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	if (ok)
	{
		for (i = 0; i < n; i++)
			if (included[i] && !sh->namespaces[i].forgotten)
				sh->namespaces[i].durable = true;
	}
	else
		sh->state_dirty = true;
	LWLockRelease(sh->lock);

	LWLockRelease(sh->file_lock);
	pfree(buf);
	return ok;
}

/*
 * Read the state file into shared memory.  Returns whether the last stop was
 * clean; a missing file is a clean first start, a damaged one is not.  The
 * identity it was written on goes to identity (RC_QUERY_NAMESPACE_LEN
 * bytes), "" when the file has none (version 1.3 and before).
 */
static bool
read_state_file(char *identity)
{
	WorkerShared *sh = worker_shared;
	size_t		len;
	char	   *data = redis_state_file_read(RC_STATE_FILE, RC_STATE_FORMAT, &len);
	char	   *line;
	char	   *next;
	bool		clean = false;
	char		path[MAXPGPATH];
	int			i;

	identity[0] = '\0';
	if (data == NULL)
	{
		struct stat st;

		snprintf(path, sizeof(path), "%s/%s", PGSTAT_STAT_PERMANENT_DIRECTORY,
				 RC_STATE_FILE);
		/* present but unreadable: assume the worst */
		if (stat(path, &st) == 0)
			return false;
		/* version 1.2 kept the same text, headerless, in the data directory */
		data = redis_legacy_file_read(RC_LEGACY_STATE_FILE, 64 * 1024, &len);
		if (data == NULL)
			return true;		/* first start */
	}
	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	for (line = data; line != NULL && *line; line = next)
	{
		char	   *tab;

		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		if (strcmp(line, "clean") == 0)
		{
			clean = true;
			continue;
		}
		if (strncmp(line, "identity ", 9) == 0)
		{
			strlcpy(identity, line + 9, RC_QUERY_NAMESPACE_LEN);
			continue;
		}
		tab = strchr(line, '\t');
		if (tab == NULL || sh->nnamespaces >= RC_MAX_NAMESPACES)
			continue;
		*tab = '\0';
		/* a restarted worker finds shared memory already filled */
		for (i = 0; i < sh->nnamespaces; i++)
			if (strcmp(sh->namespaces[i].prefix, tab + 1) == 0)
				break;
		if (i < sh->nnamespaces)
		{
			if (strcmp(line, "missed") == 0)
				sh->namespaces[i].missed = true;
			continue;
		}
		strlcpy(sh->namespaces[sh->nnamespaces].prefix, tab + 1,
				sizeof(sh->namespaces[0].prefix));
		sh->namespaces[sh->nnamespaces].missed = (strcmp(line, "missed") == 0);
		sh->namespaces[sh->nnamespaces].durable = true;
		sh->nnamespaces++;
	}
	LWLockRelease(sh->lock);
	pfree(data);
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
	WorkerShared *sh = worker_shared;
	int			i;
	int			result = -1;
	bool		durable = false;

	if (sh == NULL)
		return -1;

	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	for (i = 0; i < sh->nnamespaces; i++)
	{
		if (strcmp(sh->namespaces[i].prefix, prefix) == 0)
		{
			/* a forgotten slot is only ever reused by its own prefix */
			if (sh->namespaces[i].forgotten)
			{
				sh->namespaces[i].forgotten = false;
				sh->namespaces[i].durable = false;
			}
			result = i;
			durable = sh->namespaces[i].durable;
			break;
		}
	}
	if (result < 0 && sh->nnamespaces < RC_MAX_NAMESPACES)
	{
		result = sh->nnamespaces++;
		strlcpy(sh->namespaces[result].prefix, prefix,
				sizeof(sh->namespaces[0].prefix));
		sh->namespaces[result].missed = false;
		sh->namespaces[result].durable = false;
		sh->namespaces[result].forgotten = false;
	}
	LWLockRelease(sh->lock);

	/* not durable yet (new, or its first write failed): write it now */
	if (result >= 0 && !durable && !write_state_file(false))
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("redis_cache: could not record namespace \"%s\" in \"%s/%s\"",
						prefix, PGSTAT_STAT_PERMANENT_DIRECTORY, RC_STATE_FILE)));
	return result;
}

/*
 * Index of namespace "prefix", or -1 when it is not registered (or there is
 * no worker).
 */
int
redis_find_namespace(const char *prefix)
{
	WorkerShared *sh = worker_shared;
	int			i;
	int			result = -1;

	if (sh == NULL)
		return -1;
	LWLockAcquire(sh->lock, LW_SHARED);
	for (i = 0; i < sh->nnamespaces; i++)
	{
		if (!sh->namespaces[i].forgotten &&
			strcmp(sh->namespaces[i].prefix, prefix) == 0)
		{
			result = i;
			break;
		}
	}
	LWLockRelease(sh->lock);
	return result;
}

/*
 * The namespaces the worker knows, in index order (palloc'd copies, NULL
 * for a forgotten one); their count is returned.  Without the worker, none.
 */
int
redis_worker_namespaces(char ***prefixes)
{
	WorkerShared *sh = worker_shared;
	int			n;
	int			i;

	*prefixes = NULL;
	if (sh == NULL)
		return 0;
	*prefixes = palloc(sizeof(char *) * RC_MAX_NAMESPACES);
	LWLockAcquire(sh->lock, LW_SHARED);
	n = sh->nnamespaces;
	for (i = 0; i < n; i++)
		(*prefixes)[i] = sh->namespaces[i].forgotten ? NULL :
			pstrdup(sh->namespaces[i].prefix);
	LWLockRelease(sh->lock);
	return n;
}

/*
 * UNLINK the bookkeeping keys of namespace prefix under their names of
 * versions 1.1 to 1.6 (a namespace no 1.7 version check renamed: unused
 * since the upgrade, or a cluster).  False on a fault.
 */
static bool
unlink_legacy_bookkeeping(const char *prefix)
{
	RedisCommand cmd;
	int			i;

	redis_cmd_init(&cmd, "UNLINK", RC_NUM_CONTROL_KEYS);
	for (i = 0; i < RC_NUM_CONTROL_KEYS; i++)
		redis_cmd_key_str(&cmd, redis_legacy_control_key(prefix, i));
	return redis_run(&cmd, RC_EXEC_INTERNAL | RC_EXEC_NO_ERROR |
					 RC_EXEC_IGNORE_ENABLED) != NULL;
}

/*
 * cache_forget_namespace(prefix text) RETURNS boolean: stop tracking a
 * key_prefix no longer in use (a retired environment, a test), so that it
 * is neither flushed after a crash nor sent generation bumps.  Its cached
 * query results (this cluster's, this timeline's) and its cache version
 * bookkeeping are removed first (nothing would end the results any more;
 * the SQL key functions may not delete either).  Refused in recovery.
 * False when it was not tracked (the keys are removed all the same).
 * Refused while it has pending work.  A commit of that prefix still in
 * flight, or a later fill, tracks it again.
 */
Datum
cache_forget_namespace(PG_FUNCTION_ARGS)
{
	WorkerShared *sh = worker_shared;
	char	   *prefix = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *own;
	char	   *legacy;
	StringInfoData pattern;
	StringInfoData legacy_pattern;
	bool		pending = false;
	int			found = -1;
	int			i;

	if (sh == NULL)
		PG_RETURN_BOOL(false);
	/* a standby's query results are its primary's */
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("redis_cache: cannot forget a namespace during recovery"),
				 errdetail("A server in recovery reads the cached query results of its primary."),
				 errhint("Run cache_forget_namespace() on the primary.")));

	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	for (i = 0; i < sh->nnamespaces && found < 0; i++)
		if (!sh->namespaces[i].forgotten &&
			strcmp(sh->namespaces[i].prefix, prefix) == 0)
			found = i;
	if (found >= 0)
	{
		/* replays of any namespace: the queue is not searched by name */
		pending = sh->namespaces[found].missed || redis_replay_queued() > 0;
		for (i = 0; i < sh->npatterns && !pending; i++)
			pending = sh->patterns[i].namespace_index == found;
		for (i = 0; i < sh->nredeletes && !pending; i++)
			pending = sh->redeletes[(sh->redelete_head + i) % RC_MAX_REDELETES].namespace_index == found;
		if (!pending)
			sh->namespaces[found].forgotten = true;
	}
	LWLockRelease(sh->lock);

	if (pending)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("redis_cache: namespace \"%s\" has invalidations pending", prefix),
				 errhint("Retry once Redis is reachable and the worker has applied them.")));

	/*
	 * This cluster's results on this timeline, not another cluster's: in
	 * the layout of 1.7 and in that of 1.4 to 1.6 (what an upgrade left).
	 */
	own = redis_query_base("");
	initStringInfo(&pattern);
	redis_append_glob_escaped(&pattern, own, strlen(own));
	appendStringInfoChar(&pattern, '*');
	legacy = redis_legacy_query_base("");
	initStringInfo(&legacy_pattern);
	redis_append_glob_escaped(&legacy_pattern, legacy, strlen(legacy));
	appendStringInfoChar(&legacy_pattern, '*');
	if (found < 0)
	{
		if (redis_unlink_pattern(prefix, pattern.data) >= 0 &&
			redis_unlink_pattern(prefix, legacy_pattern.data) >= 0 &&
			redis_unlink_bookkeeping(prefix))
			(void) unlink_legacy_bookkeeping(prefix);
		PG_RETURN_BOOL(false);
	}
	if (redis_unlink_pattern(prefix, pattern.data) < 0 ||
		redis_unlink_pattern(prefix, legacy_pattern.data) < 0 ||
		!redis_unlink_bookkeeping(prefix) ||
		!unlink_legacy_bookkeeping(prefix))
	{
		LWLockAcquire(sh->lock, LW_EXCLUSIVE);
		sh->namespaces[found].forgotten = false;
		LWLockRelease(sh->lock);
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("redis_cache: could not remove the cached query results of namespace \"%s\"",
						prefix),
				 errdetail("%s", redis_fault_message()),
				 errhint("Retry once Redis is reachable.")));
	}
	if (!write_state_file(false))
		ereport(WARNING,
				(errmsg("redis_cache: namespace \"%s\" is forgotten until the next restart only",
						prefix)));
	PG_RETURN_BOOL(true);
}

/* Whether a worker runs to take over what a commit could not deliver. */
bool
redis_worker_running(void)
{
	return worker_shared != NULL && worker_shared->worker_latch != NULL;
}

/*
 * A commit is about to send invalidations (PRE_COMMIT) / is done (COMMIT or
 * abort): the worker's clean stop waits for commits in flight.
 */
void
redis_worker_commit_begin(void)
{
	if (worker_shared != NULL)
		pg_atomic_fetch_add_u32(&worker_shared->in_flight, 1);
}

void
redis_worker_commit_end(void)
{
	if (worker_shared != NULL)
		pg_atomic_fetch_sub_u32(&worker_shared->in_flight, 1);
}

static void
wake_worker(void)
{
	if (worker_shared->worker_latch)
		SetLatch(worker_shared->worker_latch);
}

/* Work was handed over elsewhere (replay.c): let the worker see it. */
void
redis_worker_wake(void)
{
	if (worker_shared != NULL)
		wake_worker();
}

/*
 * A commit could not deliver its invalidations: the worker flushes the
 * namespace.  Runs in XACT_EVENT_COMMIT: no ERROR, no allocation.
 */
void
redis_mark_missed(int namespace_index)
{
	WorkerShared *sh = worker_shared;

	/* what the lost invalidations named may be held locally too */
	redis_local_flush("an invalidation was lost");

	if (sh == NULL || namespace_index < 0)
		return;
	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	sh->namespaces[namespace_index].missed = true;
	sh->namespaces[namespace_index].missed_marks++;
	sh->namespaces[namespace_index].forgotten = false;	/* a commit in flight */
	sh->state_dirty = true;
	update_recovery_pending(sh);
	LWLockRelease(sh->lock);
	wake_worker();
}

/*
 * Hand a pattern invalidation to the worker.  When the queue is full, or
 * the pattern longer than a slot, the namespace is flushed instead, which
 * covers the pattern.  No ERROR.
 */
void
redis_queue_pattern(int namespace_index, const char *pattern)
{
	WorkerShared *sh = worker_shared;

	if (sh == NULL || namespace_index < 0)
		return;
	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	sh->namespaces[namespace_index].forgotten = false;	/* a commit in flight */
	/* a pattern that does not fit its slot: the flush covers it */
	if (sh->npatterns < RC_MAX_PENDING_PATTERNS &&
		strlen(pattern) < sizeof(sh->patterns[0].pattern))
	{
		sh->patterns[sh->npatterns].namespace_index = namespace_index;
		strlcpy(sh->patterns[sh->npatterns].pattern, pattern,
				sizeof(sh->patterns[0].pattern));
		sh->npatterns++;
		pg_atomic_write_u32(&sh->patterns_queued, sh->npatterns);
	}
	else
	{
		sh->namespaces[namespace_index].missed = true;
		sh->namespaces[namespace_index].missed_marks++;
		sh->state_dirty = true;
		update_recovery_pending(sh);
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
	WorkerShared *sh = worker_shared;
	RedisRedelete *slot;

	if (sh == NULL || namespace_index < 0 || len > RC_MAX_KEY_BYTES * 2)
		return;
	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	sh->namespaces[namespace_index].forgotten = false;	/* a commit in flight */
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

/* Whether a namespace waits for a flush.  Caller holds sh->lock. */
static bool
any_namespace_missed(WorkerShared *sh)
{
	int			i;

	for (i = 0; i < sh->nnamespaces; i++)
		if (sh->namespaces[i].missed)
			return true;
	return false;
}

/*
 * After a flush of namespace ns: its patterns among the first
 * queued_before (queued before the flush began, so covered by it) are done.
 * Only the worker removes patterns, so those entries are still the first
 * ones.  Caller holds sh->lock exclusively.
 */
static void
drop_patterns_covered(WorkerShared *sh, int ns, int queued_before)
{
	int			kept = 0;
	int			i;

	queued_before = Min(queued_before, sh->npatterns);
	for (i = 0; i < sh->npatterns; i++)
	{
		if (i < queued_before && sh->patterns[i].namespace_index == ns)
			continue;
		if (kept != i)
			sh->patterns[kept] = sh->patterns[i];
		kept++;
	}
	sh->npatterns = kept;
	pg_atomic_write_u32(&sh->patterns_queued, sh->npatterns);
}

/*
 * How the worker talks to Redis: faults retried, never raised, and never
 * skipped by the circuit breaker (the worker is the one that must notice
 * at once that Redis is back: it retries every RC_WORKER_RETRY_MS anyway).
 */
#define RC_WORKER_EXEC_FLAGS \
	(RC_EXEC_INTERNAL | RC_EXEC_NO_ERROR | RC_EXEC_FAST_CONNECT | \
	 RC_EXEC_IGNORE_ENABLED | RC_EXEC_SKIP_BREAKER)

/* The prefix of namespace index ns, palloc'd ("" when out of range). */
static char *
namespace_prefix(int ns)
{
	WorkerShared *sh = worker_shared;
	char	   *prefix;

	LWLockAcquire(sh->lock, LW_SHARED);
	prefix = pstrdup(ns >= 0 && ns < sh->nnamespaces ? sh->namespaces[ns].prefix : "");
	LWLockRelease(sh->lock);
	return prefix;
}

/*
 * Send the replay queue (replay.c), a batch per round trip, oldest first:
 * consecutive entries of one kind and namespace share a command (UNLINK of
 * full keys, the generation bump script by EVALSHA, SADD of families).  A batch is
 * removed only once Redis answered it.  A command Redis refuses (foreign
 * data where a generation should be, an ACL) is reported and its namespace
 * flushed instead, so the queue never stalls on it.  Returns false when
 * Redis failed (retry later).
 */
static bool
replay_pending(void)
{
	int64		total = 0;

	for (;;)
	{
		RedisReplayItem *items;
		uint64		consumed;
		int			n = redis_replay_peek(&items, &consumed);
		RedisCommand *commands;
		RedisReply **replies;
		int		   *command_ns;
		int			ncommands = 0;
		int			i;

		if (n == 0)
			break;
		if (ShutdownRequestPending)
			return false;
		commands = palloc0(sizeof(RedisCommand) * n);
		replies = palloc0(sizeof(RedisReply *) * n);
		command_ns = palloc(sizeof(int) * n);
		for (i = 0; i < n;)
		{
			RedisCommand *cmd = &commands[ncommands];
			int			kind = items[i].kind;
			int			ns = items[i].namespace_index;
			int			run = 1;
			int			j;

			while (i + run < n && run < RC_KEYS_PER_COMMAND &&
				   items[i + run].kind == kind &&
				   items[i + run].namespace_index == ns)
				run++;
			if (kind == RC_REPLAY_KEY)
			{
				redis_cmd_init(cmd, "UNLINK", run);
				for (j = 0; j < run; j++)
					redis_cmd_key(cmd, items[i + j].data, items[i + j].len);
			}
			else if (kind == RC_REPLAY_FAMILY)
			{
				redis_cmd_init(cmd, "SADD", run + 1);
				redis_cmd_key_str(cmd, redis_control_key(namespace_prefix(ns), RC_CONTROL_FAMILIES));
				for (j = 0; j < run; j++)
					redis_cmd_arg(cmd, items[i + j].data, items[i + j].len);
			}
			else
			{
				const char **gen_items = palloc(sizeof(char *) * run);
				size_t	   *lens = palloc(sizeof(size_t) * run);

				for (j = 0; j < run; j++)
				{
					gen_items[j] = items[i + j].data;
					lens[j] = items[i + j].len;
				}
				redis_invalidate_script_cmd(cmd, redis_query_base(namespace_prefix(ns)),
											gen_items, lens, run);
			}
			command_ns[ncommands++] = ns;
			i += run;
		}
		if (!redis_execute_scripts(commands, ncommands, replies, RC_WORKER_EXEC_FLAGS))
			return false;
		for (i = 0; i < ncommands; i++)
		{
			if (replies[i] != NULL && replies[i]->type != RC_REPLY_ERROR)
				continue;
			if (replies[i] != NULL)
				redis_report_reply_error(replies[i], psprintf("a replayed invalidation (%s)", commands[i].argv[0]),
										 RC_WORKER_EXEC_FLAGS);
			redis_mark_missed(command_ns[i]);
		}
		redis_replay_consume(consumed);
		redis_stats_add(RC_STAT_INVALIDATIONS_RETRIED, n);
		total += n;
	}
	if (total > 0)
		ereport(LOG,
				(errmsg("redis_cache: replayed " INT64_FORMAT " invalidations that could not be delivered at commit",
						total)));
	return true;
}

/*
 * Do what is pending.  Returns true when nothing is left; false when Redis
 * failed (retry later).  Work is taken out of shared memory only after it
 * succeeded, so a failure or a crash in the middle loses nothing.
 */
static bool
process_pending(void)
{
	WorkerShared *sh = worker_shared;
	int			i;
	int			pattern_budget;
	bool		all_done = true;
	bool		dirty;

	/* exact replays first: they are what a stalled commit meant */
	if (!replay_pending())
		return false;

	/* flush missed namespaces */
	for (i = 0; i < RC_MAX_NAMESPACES; i++)
	{
		bool		failed;
		char		prefix[RC_MAX_KEY_BYTES + 1];
		bool		missed;
		uint32		marks;
		int			queued_before;
		int64		removed;

		if (ShutdownRequestPending)
			return false;
		LWLockAcquire(sh->lock, LW_SHARED);
		missed = i < sh->nnamespaces && sh->namespaces[i].missed;
		marks = sh->namespaces[i].missed_marks;
		queued_before = sh->npatterns;
		strlcpy(prefix, sh->namespaces[i].prefix, sizeof(prefix));
		LWLockRelease(sh->lock);
		if (!missed)
			continue;

		removed = redis_flush_owned(prefix, RC_WORKER_EXEC_FLAGS, NULL, false,
									0, &failed);
		if (failed)
			return false;
		redis_stats_add(RC_STAT_FLUSHES, 1);
		redis_stats_add(RC_STAT_INVALIDATIONS_RETRIED, 1);
		ereport(LOG,
				(errmsg("redis_cache: flushed " INT64_FORMAT " owned keys under prefix \"%s\" (query results and owned key families) to apply invalidations that could not be delivered or queued exactly",
						removed, prefix)));
		LWLockAcquire(sh->lock, LW_EXCLUSIVE);
		drop_patterns_covered(sh, i, queued_before);
		/* a commit that missed during the flush may have missed it */
		if (sh->namespaces[i].missed_marks == marks)
		{
			sh->namespaces[i].missed = false;
			update_recovery_pending(sh);
		}
		sh->state_dirty = true;
		LWLockRelease(sh->lock);
	}

	/*
	 * Patterns, oldest first: at most those queued when this pass began, so
	 * that writers queueing faster than SCAN runs cannot keep the worker
	 * here, and none once a flush is due (it comes first: it covers them).
	 */
	LWLockAcquire(sh->lock, LW_SHARED);
	pattern_budget = sh->npatterns;
	LWLockRelease(sh->lock);
	while (pattern_budget-- > 0)
	{
		char		pattern[sizeof(sh->patterns[0].pattern)];
		char		prefix[RC_MAX_KEY_BYTES + 1];
		int			ns;

		if (ShutdownRequestPending)
			return false;
		LWLockAcquire(sh->lock, LW_SHARED);
		if (sh->npatterns == 0)
		{
			LWLockRelease(sh->lock);
			break;
		}
		if (any_namespace_missed(sh))
		{
			LWLockRelease(sh->lock);
			all_done = false;
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
		pg_atomic_write_u32(&sh->patterns_queued, sh->npatterns);
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

		if (ShutdownRequestPending)
			return false;
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
		LWLockAcquire(sh->lock, LW_SHARED);
		full = psprintf("%s%s", sh->namespaces[item.namespace_index].prefix, item.key);
		LWLockRelease(sh->lock);
		if (!redis_unlink_raw(full))
			return false;
		pfree(full);
		LWLockAcquire(sh->lock, LW_EXCLUSIVE);
		sh->redelete_head = (sh->redelete_head + 1) % RC_MAX_REDELETES;
		sh->nredeletes--;
		LWLockRelease(sh->lock);
	}

	/* persist cleared or new "missed" flags (outside the lock: fsync) */
	LWLockAcquire(sh->lock, LW_SHARED);
	dirty = sh->state_dirty;
	LWLockRelease(sh->lock);
	if (dirty)
		(void) write_state_file(false);
	return all_done;
}

/*
 * Milliseconds until the next due redelete, or -1.
 */
static long
next_redelete_ms(void)
{
	WorkerShared *sh = worker_shared;
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
	WorkerShared *sh = worker_shared;
	bool		result = false;
	int			i;

	LWLockAcquire(sh->lock, LW_SHARED);
	result = sh->npatterns > 0 || sh->state_dirty || redis_replay_queued() > 0;
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
	WorkerShared *sh = worker_shared;
	int			waited = 0;
	bool		clean;
	int			i;

	while (pg_atomic_read_u32(&sh->in_flight) > 0 && waited < 5000)
	{
		pg_usleep(10000);
		waited += 10;
	}
	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	clean = pg_atomic_read_u32(&sh->in_flight) == 0 && sh->npatterns == 0 &&
		redis_replay_queued() == 0;
	for (i = 0; i < sh->nnamespaces; i++)
		if (sh->namespaces[i].missed)
			clean = false;
	sh->worker_latch = NULL;
	LWLockRelease(sh->lock);
	/* before "clean": the next start relies on it */
	if (!redis_query_tables_save())
		clean = false;
	(void) write_state_file(clean);
}

void		redis_cache_worker_main(Datum main_arg);

PGDLLEXPORT void
redis_cache_worker_main(Datum main_arg)
{
	WorkerShared *sh = worker_shared;
	MemoryContext loop_context;
	TimestampTz last_sentinel_poll;
	bool		clean;
	char		recorded[RC_QUERY_NAMESPACE_LEN];
	char		identity[RC_QUERY_NAMESPACE_LEN];
	int			i;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	/* OpenSSL writes with write(), not send(MSG_NOSIGNAL): EPIPE, not death */
	pqsignal(SIGPIPE, SIG_IGN);
	BackgroundWorkerUnblockSignals();

	/* faults are retried here, never raised */
	SetConfigOption("redis_cache.on_error", "warning", PGC_SUSET, PGC_S_OVERRIDE);

	/* before any backend can register a namespace and rewrite the file */
	clean = read_state_file(recorded);

	/*
	 * In recovery (crash recovery, a standby, a base backup's first start)
	 * nothing is flushed or written: wait until it ends.
	 */
	if (RecoveryInProgress())
	{
		long		delay = 10;
		bool		said = false;

		while (!ShutdownRequestPending && RecoveryInProgress())
		{
			/* not at each start, where recovery takes milliseconds */
			if (delay >= 100 && !said)
			{
				ereport(LOG,
						(errmsg("redis_cache invalidation worker waiting for the end of recovery"),
						 errdetail("A server in recovery flushes nothing.")));
				said = true;
			}
			(void) WaitLatch(MyLatch,
							 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 delay, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			if (ConfigReloadPending)
			{
				ConfigReloadPending = false;
				ProcessConfigFile(PGC_SIGHUP);
			}
			delay = Min(delay * 2, 1000);
		}
		/* the state file stays as found */
		if (ShutdownRequestPending)
			proc_exit(0);
	}

	redis_query_namespace(identity);
	if (clean && recorded[0] != '\0' && strcmp(recorded, identity) != 0)
	{
		ereport(LOG,
				(errmsg("redis_cache: the state file was written on WAL history %s, this server is on %s (promotion or copy); handling it as an unclean stop",
						recorded, identity)));
		clean = false;
	}

	LWLockAcquire(sh->lock, LW_EXCLUSIVE);
	if (!clean)
	{
		for (i = 0; i < sh->nnamespaces; i++)
		{
			sh->namespaces[i].missed = true;
			sh->namespaces[i].missed_marks++;
		}
		if (sh->nnamespaces > 0)
			ereport(LOG,
					(errmsg("redis_cache: previous shutdown was not clean; flushing the owned keys of %d cache namespaces to apply invalidations that may have been lost",
							sh->nnamespaces)));
	}
	sh->worker_latch = MyLatch;
	sh->state_loaded = true;
	update_recovery_pending(sh);
	LWLockRelease(sh->lock);
	/* from now until a clean stop, a crash must be assumed to lose work */
	if (write_state_file(false))
		(void) unlink(RC_LEGACY_STATE_FILE);	/* taken over, if there was one */

	ereport(LOG, (errmsg("redis_cache invalidation worker started")));

	loop_context = AllocSetContextCreate(TopMemoryContext,
										 "redis_cache worker loop",
										 ALLOCSET_DEFAULT_SIZES);
	last_sentinel_poll = 0;
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

		/* under Sentinel: notice a failover even if no backend reconnects */
		if (redis_sentinel_enabled() &&
			TimestampDifferenceExceeds(last_sentinel_poll, GetCurrentTimestamp(),
									   RC_SENTINEL_POLL_MS))
		{
			redis_poll_sentinels();
			last_sentinel_poll = GetCurrentTimestamp();
		}

		done = process_pending();
		if (!done && redis_fault_kind() == RC_FAULT_PROTOCOL)
			timeout = RC_WORKER_FAULT_RETRY_MS;
		else if (!done || has_urgent_work())
			timeout = RC_WORKER_RETRY_MS;
		else
			timeout = next_redelete_ms();
		if (redis_sentinel_enabled() &&
			(timeout < 0 || timeout > RC_SENTINEL_POLL_MS))
			timeout = RC_SENTINEL_POLL_MS;
		MemoryContextSwitchTo(TopMemoryContext);

		/* a Redis wait may have reset the latch SIGTERM set */
		if (ShutdownRequestPending)
			break;

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

	/* keys of every namespace we know are reserved (keys.c) */
	redis_set_namespace_lister(redis_worker_namespaces);

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = worker_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = worker_shmem_startup;

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
