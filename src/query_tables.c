/*-------------------------------------------------------------------------
 *
 * query_tables.c
 *		  The shared bitmap of tables some cached query result depends on.
 *
 * Design rules:
 *
 * - One bit per hash of (database, table), in a shared memory segment of
 *   this file's own ("redis_cache query tables"), lock-free (atomics).
 *   Writers skip the commit-time generation bump for tables whose bit is
 *   clear.  Bits are never cleared; a collision only costs a needless bump.
 *
 * - The order of operations is the correctness argument.  A reader sets
 *   its bits (a full barrier) before it reads generations and takes its
 *   snapshot (redis_query_register_tables).  A writer ends its transaction
 *   (ProcArrayLock) before reading the bits at XACT_EVENT_COMMIT
 *   (redis_query_generation_needed).  So either the writer sees the bit and
 *   bumps, or the reader's snapshot sees the write.  The isolation spec
 *   commit_registration runs a reader between a writer's PRE_COMMIT and
 *   COMMIT to hold this.
 *
 * - Without shared_preload_libraries there is no bitmap: every bump queued
 *   is sent (only watch triggers queue them then).
 *
 * - The bitmap survives clean restarts in pg_stat/redis_cache.tables
 *   (state_file.c): loaded by the postmaster when shared memory is set up,
 *   saved by the worker at a clean stop.  After a crash the file may be
 *   stale, but every namespace is flushed then anyway (worker.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"

#include "redis_cache.h"

#define RC_QUERY_TABLE_BITS		65536
#define RC_QUERY_TABLE_WORDS	(RC_QUERY_TABLE_BITS / 64)

#define RC_TABLES_FILE			"redis_cache.tables"
#define RC_TABLES_FORMAT		3
#define RC_LEGACY_TABLES_FILE	"redis_cache.tables"	/* 1.2, data directory */
#define RC_LEGACY_TABLES_MAGIC	0x52435432

typedef struct QueryTables
{
	pg_atomic_uint32 any;		/* any bit set */
	pg_atomic_uint64 words[RC_QUERY_TABLE_WORDS];
} QueryTables;

static QueryTables *query_tables = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static uint32
table_bit(Oid dbid, Oid relid)
{
	return (uint32) ((relid * 2654435761u) ^ (dbid * 40503u)) % RC_QUERY_TABLE_BITS;
}

/*
 * Version 1.2 kept the bitmap in the data directory, after a magic number.
 * Read it, so an upgrade keeps the tables of results cached before it; it
 * is removed once the new file is saved.
 */
static uint64 *
read_legacy_bitmap(size_t *len)
{
	/* its layout: uint32 magic, padding to 8 bytes, the words */
	size_t		legacy_size = 8 + sizeof(uint64) * RC_QUERY_TABLE_WORDS;
	size_t		got;
	char	   *data = redis_legacy_file_read(RC_LEGACY_TABLES_FILE, legacy_size, &got);
	uint32		magic;
	uint64	   *words = NULL;

	if (data == NULL)
		return NULL;
	memcpy(&magic, data, sizeof(magic));
	if (got == legacy_size && magic == RC_LEGACY_TABLES_MAGIC)
	{
		words = palloc(sizeof(uint64) * RC_QUERY_TABLE_WORDS);
		memcpy(words, data + 8, sizeof(uint64) * RC_QUERY_TABLE_WORDS);
		*len = sizeof(uint64) * RC_QUERY_TABLE_WORDS;
	}
	pfree(data);
	return words;
}

/*
 * Postmaster, when shared memory is set up: the bitmap of the last clean
 * stop.  A missing or damaged file leaves it empty.
 */
static void
load_bitmap(void)
{
	size_t		len;
	uint64	   *words = redis_state_file_read(RC_TABLES_FILE, RC_TABLES_FORMAT, &len);
	bool		any = false;
	int			i;

	if (words == NULL)
		words = read_legacy_bitmap(&len);
	if (words == NULL)
		return;
	if (len == sizeof(uint64) * RC_QUERY_TABLE_WORDS)
	{
		for (i = 0; i < RC_QUERY_TABLE_WORDS; i++)
		{
			pg_atomic_write_u64(&query_tables->words[i], words[i]);
			any |= words[i] != 0;
		}
		pg_atomic_write_u32(&query_tables->any, any ? 1 : 0);
	}
	pfree(words);
}

static void
query_tables_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(QueryTables)));
}

static void
query_tables_shmem_startup(void)
{
	bool		found;
	int			i;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	query_tables = ShmemInitStruct("redis_cache query tables",
								   sizeof(QueryTables), &found);
	if (!found)
	{
		pg_atomic_init_u32(&query_tables->any, 0);
		for (i = 0; i < RC_QUERY_TABLE_WORDS; i++)
			pg_atomic_init_u64(&query_tables->words[i], 0);
		load_bitmap();
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * From _PG_init under shared_preload_libraries.
 */
void
redis_query_tables_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = query_tables_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = query_tables_shmem_startup;
}

/*
 * At XACT_EVENT_COMMIT, after the transaction became visible: whether a
 * queued bump (item "<db>:<table>", "ddl:<db>" or "ddl") must be sent.  The bitmap is
 * read this late on purpose (see the file header).  No allocation, no
 * ERROR.
 */
bool
redis_query_generation_needed(const char *item, int len)
{
	uint64		parts[2] = {0, 0};
	int			part = 0;
	int			i;
	uint32		bit;

	if (query_tables == NULL)
		return true;
	pg_memory_barrier();
	if (pg_atomic_read_u32(&query_tables->any) == 0)
		return false;
	if (len == (int) strlen(RC_DDL_GENERATION) &&
		memcmp(item, RC_DDL_GENERATION, len) == 0)
		return true;
	for (i = 0; i < len; i++)
	{
		if (item[i] == ':' && part == 0)
			part = 1;
		else if (item[i] >= '0' && item[i] <= '9')
			parts[part] = parts[part] * 10 + (uint64) (item[i] - '0');
		else
			return true;		/* not ours to judge: send it */
	}
	bit = table_bit((Oid) parts[0], (Oid) parts[1]);
	return (pg_atomic_read_u64(&query_tables->words[bit / 64]) &
			(UINT64CONST(1) << (bit % 64))) != 0;
}

/*
 * Before a result's generations are read: from now on, writers of these
 * tables (of the current database) bump them.
 */
void
redis_query_register_tables(int nrelids, const Oid *relids)
{
	int			i;

	if (query_tables == NULL)
		return;
	for (i = 0; i < nrelids; i++)
	{
		uint32		bit = table_bit(MyDatabaseId, relids[i]);

		pg_atomic_fetch_or_u64(&query_tables->words[bit / 64],
							   UINT64CONST(1) << (bit % 64));
	}
	if (pg_atomic_read_u32(&query_tables->any) == 0)
		pg_atomic_write_u32(&query_tables->any, 1);
	pg_memory_barrier();
}

/*
 * Worker, at a clean stop, before the worker's state says "clean" (which
 * it must not say when this fails: the next start would trust the bitmap).
 */
bool
redis_query_tables_save(void)
{
	uint64	   *words;
	bool		saved;
	int			i;

	if (query_tables == NULL)
		return true;
	words = palloc(sizeof(uint64) * RC_QUERY_TABLE_WORDS);
	for (i = 0; i < RC_QUERY_TABLE_WORDS; i++)
		words[i] = pg_atomic_read_u64(&query_tables->words[i]);
	saved = redis_state_file_write(RC_TABLES_FILE, RC_TABLES_FORMAT, words,
								   sizeof(uint64) * RC_QUERY_TABLE_WORDS);
	if (saved)
		(void) unlink(RC_LEGACY_TABLES_FILE);	/* taken over, if there was one */
	pfree(words);
	return saved;
}
