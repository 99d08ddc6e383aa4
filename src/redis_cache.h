/*-------------------------------------------------------------------------
 *
 * redis_cache.h
 *		  Declarations shared by the files of the redis_cache extension.
 *
 * Groups follow the file that defines them, as in postgres_fdw.h.  Nothing
 * here exposes hiredis types: callers of the connection layer only ever see
 * RedisReply, a palloc'd copy, so no foreign allocation can outlive an
 * ERROR raised by a caller.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REDIS_CACHE_H
#define REDIS_CACHE_H

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "utils/timestamp.h"

/* Same numbering as hiredis' REDIS_REPLY_* so conversion is a plain copy. */
#define RC_REPLY_STRING		1
#define RC_REPLY_ARRAY		2
#define RC_REPLY_INTEGER	3
#define RC_REPLY_NIL		4
#define RC_REPLY_STATUS		5
#define RC_REPLY_ERROR		6

/* Longest key (before key_prefix is added) that the SQL functions accept. */
#define RC_MAX_KEY_BYTES	1024

/* Keys per UNLINK/MGET command when a caller passes many keys. */
#define RC_KEYS_PER_COMMAND 1000

/*
 * A reply from Redis, deep-copied into the current memory context.
 */
typedef struct RedisReply
{
	int			type;			/* RC_REPLY_* */
	long long	integer;		/* RC_REPLY_INTEGER */
	char	   *str;			/* STRING, STATUS, ERROR; NUL-terminated */
	size_t		len;
	size_t		elements;		/* RC_REPLY_ARRAY */
	struct RedisReply **element;
} RedisReply;

/*
 * One command of a pipeline: argv[i] is argvlen[i] bytes (binary safe).
 */
typedef struct RedisCommand
{
	int			argc;
	const char **argv;
	size_t	   *argvlen;
} RedisCommand;

/* Shared state of the invalidation worker (worker.c) */
#define RC_MAX_NAMESPACES		16
#define RC_MAX_PENDING_PATTERNS	256
#define RC_MAX_REDELETES		1024

typedef struct RedisNamespace
{
	char		prefix[RC_MAX_KEY_BYTES + 1];
	bool		missed;			/* an invalidation was lost: flush it */
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

/* Statistics (stats.c) */
typedef enum RedisCounter
{
	RC_STAT_HITS,
	RC_STAT_MISSES,
	RC_STAT_SETS,
	RC_STAT_DELETES,
	RC_STAT_INVALIDATIONS_SENT,
	RC_STAT_INVALIDATIONS_QUEUED,
	RC_STAT_INVALIDATIONS_RETRIED,
	RC_STAT_ERRORS_CONNECT,
	RC_STAT_ERRORS_TIMEOUT,
	RC_STAT_ERRORS_IO,
	RC_STAT_ERRORS_PROTOCOL,
	RC_STAT_ERRORS_REPLY,
	RC_STAT_BYTES_OUT,
	RC_STAT_BYTES_IN,
	RC_STAT_CIRCUIT_OPENS,
	RC_STAT_FLUSHES,
	RC_STAT_BYPASSES,
	RC_STAT_ROUND_TRIPS,
	RC_NUM_COUNTERS
} RedisCounter;

typedef enum RedisFamilyCounter
{
	RC_FAM_HITS,
	RC_FAM_MISSES,
	RC_FAM_SETS,
	RC_FAM_DELETES,
	RC_NUM_FAMILY_COUNTERS
} RedisFamilyCounter;

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
	pg_atomic_uint64 counters[RC_NUM_COUNTERS];
	pg_atomic_uint64 latency[RC_LATENCY_BUCKETS];
	int			nfamilies;
	RedisFamilyStats families[RC_MAX_FAMILIES];
	TimestampTz reset_at;
} RedisStats;

/*
 * Tables some cached query result depends on (query_deps.c): one bit per
 * hash of (database, table).  Writers skip the commit-time generation bump
 * for tables whose bit is clear.  Bits are never cleared; a collision only
 * costs a needless bump.
 */
#define RC_QUERY_TABLE_BITS		65536
#define RC_QUERY_TABLE_WORDS	(RC_QUERY_TABLE_BITS / 64)

typedef struct RedisCacheShared
{
	LWLock	   *lock;
	Latch	   *worker_latch;	/* NULL while no worker runs */
	pg_atomic_uint32 in_flight; /* commits sending invalidations now */
	bool		state_dirty;	/* state file needs rewriting */
	int			nnamespaces;
	RedisNamespace namespaces[RC_MAX_NAMESPACES];
	int			npatterns;
	RedisPendingPattern patterns[RC_MAX_PENDING_PATTERNS];
	int			redelete_head;
	int			nredeletes;
	RedisRedelete redeletes[RC_MAX_REDELETES];
	RedisStats	stats;
	pg_atomic_uint32 query_tables_any;	/* any bit set */
	pg_atomic_uint64 query_tables[RC_QUERY_TABLE_WORDS];
} RedisCacheShared;

/* on_error values */
typedef enum RedisOnError
{
	RC_ON_ERROR_WARNING,
	RC_ON_ERROR_ERROR,
	RC_ON_ERROR_SILENT
} RedisOnError;

/* Flags for redis_execute() */
#define RC_EXEC_NO_ERROR		0x01	/* never ereport(ERROR): degrade */
#define RC_EXEC_SKIP_BREAKER	0x02	/* probe even if the breaker is open */
#define RC_EXEC_INTERNAL		0x04	/* bookkeeping: skip the version check */
#define RC_EXEC_STARTUP			0x08	/* backend start: faults to the log only */
#define RC_EXEC_FAST_CONNECT	0x10	/* connect within command_timeout_ms */
#define RC_EXEC_IGNORE_ENABLED	0x20	/* invalidation: even when disabled */

/* Outcome of the cache version check of a connection (version.c) */
typedef enum RedisVersionStatus
{
	RC_VERSION_OK,				/* namespace is current: go on */
	RC_VERSION_BYPASS,			/* flush in progress or superseded: miss */
	RC_VERSION_FAULT			/* Redis failed during the check */
} RedisVersionStatus;

/* in guc.c */
extern char *redis_cache_host;
extern int	redis_cache_port;
extern char *redis_cache_user;
extern char *redis_cache_password;
extern char *redis_cache_password_file;
extern int	redis_cache_database;
extern char *redis_cache_key_prefix;
extern bool redis_cache_enabled;
extern int	redis_cache_connect_timeout_ms;
extern int	redis_cache_command_timeout_ms;
extern int	redis_cache_default_ttl;
extern int	redis_cache_on_error;
extern int	redis_cache_max_value_bytes;
extern int	redis_cache_circuit_failure_threshold;
extern int	redis_cache_circuit_open_seconds;
extern char *redis_cache_version;
extern int	redis_cache_redelete_delay_ms;
extern int	redis_cache_query_lock_timeout_ms;
extern uint64 redis_cache_server_config_generation;
extern uint64 redis_cache_version_generation;
extern void redis_cache_define_gucs(void);

/* in connection.c */
extern bool redis_execute(const RedisCommand *commands, int ncommands,
						  RedisReply **replies, int flags);
extern RedisReply *redis_command(int flags, int argc, const char **argv,
								 size_t *argvlen);
extern void redis_report_reply_error(const RedisReply *reply,
									 const char *what, int flags);
extern bool redis_internal_round_trip(const RedisCommand *commands,
									  int ncommands, RedisReply **replies);
extern uint64 redis_connection_serial(void);
extern const char *redis_connection_run_id(void);
extern void redis_disconnect(void);
extern const char *redis_circuit_state(void);
extern bool redis_warning_due(TimestampTz *last_warning);

/* Faults of one kind give at most one WARNING per this interval. */
#define RC_WARNING_INTERVAL_MS	10000

/* in version.c */
extern RedisVersionStatus redis_version_verify(int flags);
extern void redis_version_startup_check(void);
extern const char *redis_version_expected(void);
extern void redis_version_install_hooks(void);
extern bool redis_is_control_key(const char *key, size_t len,
								 const char *prefix, size_t prefixlen);

/* in version.c (flushing, shared with the worker) */
extern int64 redis_scan_unlink(const char *prefix, const char *pattern,
							   size_t patternlen, int flags,
							   TimestampTz deadline, bool *failed);
extern int64 redis_flush_prefix(const char *prefix);
extern int64 redis_unlink_pattern(const char *prefix, const char *pattern);
extern int64 redis_unlink_pattern_until(const char *prefix,
										const char *pattern,
										TimestampTz deadline);
extern bool redis_unlink_raw(const char *key);

/* in worker.c */
extern RedisCacheShared *redis_cache_shared;
extern bool redis_write_file_durably(const char *tmp, const char *path,
									 const void *data, size_t len);
extern void redis_worker_init(void);
extern int	redis_register_namespace(const char *prefix);
extern void redis_mark_missed(int namespace_index);
extern void redis_queue_pattern(int namespace_index, const char *pattern);
extern void redis_queue_redelete(int namespace_index, const char *key,
								 size_t len, TimestampTz due);

/* in stats.c */
extern RedisStats *redis_stats(void);
extern void redis_stats_init(RedisStats *stats);
extern void redis_stats_add(RedisCounter counter, uint64 n);
extern void redis_stats_latency(int64 us);
extern void redis_stats_family(const char *key, size_t len,
							   RedisFamilyCounter counter);

/* in invalidation.c */
extern void redis_invalidation_init(void);
extern void redis_queue_generation_bump(const char *item, int len);

/* in query_deps.c */
#define RC_DDL_GENERATION	"ddl"

typedef struct QueryDependencies
{
	int			nrelids;
	Oid		   *relids;			/* sorted, read directly or through views */
	const char *not_cacheable;	/* why the result must not be cached */
} QueryDependencies;

extern void redis_query_hooks_init(void);
extern void redis_query_dependencies(List *query_list, Oid cache_function,
									 QueryDependencies *deps);
extern bool redis_query_xact_has_writes(void);
extern bool redis_query_xact_wrote_any(const QueryDependencies *deps);
extern void redis_query_note_trigger_write(Oid relid);
extern void redis_query_register_tables(const QueryDependencies *deps);
extern bool redis_query_generation_needed(const char *item, int len);
extern void redis_query_tables_load(void);
extern bool redis_query_tables_save(void);
extern char *redis_query_generation_item(Oid relid);

/* in query_cache.c */
extern const char *redis_query_invalidate_script;

/* in keys.c */
extern void redis_validate_key(const char *key, size_t len, const char *what);
extern char *redis_make_key(text *key, size_t *len);
extern char *redis_make_key_cstring(const char *key, size_t keylen,
									size_t *len);
extern void redis_append_glob_escaped(StringInfo buf, const char *str,
									  size_t len);
extern void redis_check_ttl(int ttl_seconds);

#endif							/* REDIS_CACHE_H */
