/*-------------------------------------------------------------------------
 *
 * redis_cache.h
 *		  The functions the files of the redis_cache extension offer each
 *		  other.
 *
 * Groups follow the file that defines them, lowest layer first, as in
 * postgres_fdw.h.  Layouts of shared memory and of per-file state are
 * private to their file; what crosses files is functions and the few
 * value types their arguments need.  Nothing here exposes hiredis or
 * OpenSSL types: callers of the transport only ever see RedisReply, a
 * palloc'd copy, so no foreign allocation can outlive an ERROR raised by a
 * caller.
 *
 * Layers, lowest first (a file calls only files listed before it; the
 * upper layers register callbacks instead of being called):
 * command_builder, stats,
 * state_file, keys, guc, fault, local_cache, tls, transport, sentinel, cluster,
 * connection, scripts, families, flush,
 * version, query_tables, replay, worker, tracking, invalidation, query_deps,
 * triggers, query_rows, query_cache, commands, monitor, module (_PG_init).
 *
 *-------------------------------------------------------------------------
 */
#ifndef REDIS_CACHE_H
#define REDIS_CACHE_H

#include "common/cryptohash.h"
#include "fmgr.h"
#include "access/tupdesc.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

struct SPITupleTable;

/* Same numbering as hiredis' REDIS_REPLY_* so conversion is a plain copy. */
#define RC_REPLY_STRING		1
#define RC_REPLY_ARRAY		2
#define RC_REPLY_INTEGER	3
#define RC_REPLY_NIL		4
#define RC_REPLY_STATUS		5
#define RC_REPLY_ERROR		6

/* Longest key (before key_prefix is added) that the SQL functions accept. */
#define RC_MAX_KEY_BYTES	1024

/*
 * Longest glob (after key_prefix) of a pattern invalidation: what the
 * worker's queue slots hold.  A longer expansion is replaced by its
 * template's family (triggers.c).
 */
#define RC_MAX_PATTERN_BYTES	(RC_MAX_KEY_BYTES * 2)

/* Keys per UNLINK/MGET command when a caller passes many keys. */
#define RC_KEYS_PER_COMMAND 1000

/* Faults of one kind give at most one WARNING per this interval. */
#define RC_WARNING_INTERVAL_MS	10000

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
 * Built by command_builder.c, which records the keys: argv[first_key ..
 * first_key + nkeys - 1] (first_key 0: none).  A Redis Cluster routes a
 * command by the slot of its keys, a keyless one to master number node.
 */
typedef struct RedisCommand
{
	int			argc;
	const char **argv;
	size_t	   *argvlen;
	int			first_key;
	int			nkeys;
	int			node;
	int			capacity;		/* room in argv and argvlen */
} RedisCommand;

/* in command_builder.c */
extern void redis_cmd_init(RedisCommand *cmd, const char *name, int nargs);
extern RedisCommand *redis_cmd_new(const char *name, int nargs);
extern void redis_cmd_arg(RedisCommand *cmd, const char *arg, size_t len);
extern void redis_cmd_str(RedisCommand *cmd, const char *arg);
extern void redis_cmd_int(RedisCommand *cmd, int64 value);
extern void redis_cmd_key(RedisCommand *cmd, const char *key, size_t len);
extern void redis_cmd_key_str(RedisCommand *cmd, const char *key);
extern void redis_cmd_on_node(RedisCommand *cmd, int node);
extern void redis_cmd_copy(RedisCommand *dst, const RedisCommand *src);

/* in stats.c */
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
	/* the local cache (local_cache.c); last: columns added in 1.8 */
	RC_STAT_LOCAL_HITS,
	RC_STAT_LOCAL_FILLS,
	RC_STAT_LOCAL_INVALIDATIONS,
	RC_STAT_LOCAL_EVICTIONS,
	RC_STAT_LOCAL_FLUSHES,
	RC_STAT_LOCAL_DISCARDS,
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

extern void redis_stats_shmem_init(void);
extern void redis_stats_add(RedisCounter counter, uint64 n);
extern void redis_stats_latency(int64 us);
extern void redis_stats_family(const char *key, size_t len,
							   RedisFamilyCounter counter);
extern void redis_stats_materialize(FunctionCallInfo fcinfo,
									const char *circuit);

/* in state_file.c */
extern bool redis_state_file_write(const char *name, uint32 format,
								   const void *data, size_t len);
extern void *redis_state_file_read(const char *name, uint32 format,
								   size_t *len);
extern char *redis_legacy_file_read(const char *path, size_t max, size_t *len);

/* in keys.c */
typedef enum RedisControlKey
{
	RC_CONTROL_VERSION,
	RC_CONTROL_VERSIONS,
	RC_CONTROL_RUN_ID,
	RC_CONTROL_FLUSH,
	RC_CONTROL_FLUSHED,
	RC_CONTROL_FAMILIES,		/* set of owned families (families.c) */
	RC_NUM_CONTROL_KEYS
} RedisControlKey;

extern void redis_validate_key(const char *key, size_t len, const char *what);
extern char *redis_make_key(text *key, size_t *len);
extern char *redis_make_key_cstring(const char *key, size_t keylen,
									size_t *len);
extern void redis_append_glob_escaped(StringInfo buf, const char *str,
									  size_t len);
extern void redis_check_ttl(int ttl_seconds);
extern char *redis_control_key(const char *prefix, int which);
extern char *redis_legacy_control_key(const char *prefix, int which);
extern bool redis_is_control_key(const char *key, size_t len,
								 const char *prefix, size_t prefixlen);
extern bool redis_glob_match(const char *pattern, size_t plen,
							 const char *str, size_t slen);
extern const char *redis_family_unacceptable(const char *glob, size_t len);
/* "<system identifier>.<timeline>": 20 + 1 + 10 digits and a NUL */
#define RC_QUERY_NAMESPACE_LEN	40

extern void redis_query_namespace(char *buf);
extern char *redis_query_base(const char *prefix);
extern char *redis_legacy_query_base(const char *prefix);
extern char *redis_query_gen_key(const char *base, const char *item,
								 size_t len);
extern char *redis_query_deps_key(const char *base, const char *item,
								  size_t len);
extern char *redis_query_dead_list_key(const char *base);
extern char *redis_query_lock_key(const char *entry_key);
extern bool redis_is_foreign_query_key(const char *key, size_t len,
									   const char *prefix, size_t prefixlen,
									   const char *own_base,
									   size_t own_baselen);
extern bool redis_is_own_query_key(const char *key, size_t len,
								   const char *prefix, size_t prefixlen);

/* After key_prefix: query results, generations, dependency sets, locks. */
#define RC_QUERY_NAMESPACE	"query:"

/* Lists the namespaces (key_prefix values) the server knows; palloc'd. */
typedef int (*RedisNamespaceLister) (char ***prefixes);

extern void redis_set_namespace_lister(RedisNamespaceLister lister);
extern int	redis_reserved_namespaces(const char *prefix, char ***prefixes);
extern bool redis_is_reserved_key(const char *key, size_t len,
								  char *const *prefixes, int nprefixes);
extern bool redis_may_be_reserved_key(const char *key, size_t len);
extern void redis_hash_hex(pg_cryptohash_type type, const void *data,
						   size_t len, char *out);
/* a hex SHA-256 and a NUL */
#define RC_QUERY_SHAPE_LEN		65
extern char *redis_query_entry_key(const char *base, const char *format,
								   const char *query, int nparams,
								   const Datum *param_values,
								   const bool *param_nulls, char *shape);

/* in guc.c: the settings several files read */
typedef enum RedisOnError
{
	RC_ON_ERROR_WARNING,
	RC_ON_ERROR_ERROR,
	RC_ON_ERROR_SILENT
} RedisOnError;

extern char *redis_cache_key_prefix;
extern bool redis_cache_enabled;
extern int	redis_cache_command_timeout_ms;
extern int	redis_cache_default_ttl;
extern int	redis_cache_on_error;
extern int	redis_cache_max_value_bytes;
extern void redis_cache_define_gucs(void);
extern bool redis_cache_preloaded(void);
extern void redis_settings_guard_begin(void);
extern void redis_settings_guard_end(void);
extern const char *redis_settings_untrusted(void);
extern void redis_settings_check_trusted(void);
extern char *redis_read_secret_file(const char *path, const char *setting,
									char **why);

/* in fault.c */
typedef enum RedisFaultKind
{
	RC_FAULT_NONE,
	RC_FAULT_CONNECT,			/* connect, resolve, AUTH, SELECT */
	RC_FAULT_TIMEOUT,
	RC_FAULT_IO,				/* send/recv failed, connection lost */
	RC_FAULT_PROTOCOL,			/* malformed or oversized reply */
	RC_FAULT_BREAKER			/* not tried: the circuit breaker is open */
} RedisFaultKind;

extern void redis_fault_set(RedisFaultKind kind, const char *fmt,...) pg_attribute_printf(2, 3);
extern void redis_fault_reclassify(RedisFaultKind kind);
extern RedisFaultKind redis_fault_kind(void);
extern const char *redis_fault_message(void);
extern char *redis_printable(const char *str, size_t len);

/* in tls.c */
typedef enum RedisTlsMode
{
	RC_TLS_DISABLE,
	RC_TLS_REQUIRE,				/* encrypt, do not check the certificate */
	RC_TLS_VERIFY_CA,			/* the chain must verify */
	RC_TLS_VERIFY_FULL			/* and the name or IP must match */
} RedisTlsMode;

typedef enum RedisTlsStatus
{
	RC_TLS_OK,
	RC_TLS_WANT_READ,			/* wait until readable, then call again */
	RC_TLS_WANT_WRITE,			/* wait until writable, then call again */
	RC_TLS_FAILED				/* the fault is set */
} RedisTlsStatus;

typedef struct RedisTls RedisTls;

extern void redis_tls_define_gucs(void);
extern int	redis_tls_configured_mode(void);
extern uint64 redis_tls_config_generation(void);
extern const char *redis_tls_mode_name(int mode);
extern RedisTls *redis_tls_begin(int sock, const char *host, int mode,
								 const char *label);
extern RedisTlsStatus redis_tls_handshake(RedisTls *tls, const char *label);
extern ssize_t redis_tls_read(RedisTls *tls, char *buf, size_t len,
							  RedisTlsStatus *status, const char *label);
extern ssize_t redis_tls_write(RedisTls *tls, const char *buf, size_t len,
							   RedisTlsStatus *status, const char *label);
extern bool redis_tls_pending(RedisTls *tls);
extern const char *redis_tls_version(RedisTls *tls);
extern const char *redis_tls_cipher(RedisTls *tls);
extern void redis_tls_end(RedisTls *tls);

/* in local_cache.c: the shared-memory local cache (requires preloading) */
typedef enum RedisLocalState
{
	RC_LOCAL_DISABLED,			/* local_cache_size 0 or not preloaded */
	RC_LOCAL_WAITING,			/* tracking not confirmed: nothing served */
	RC_LOCAL_TRACKING,			/* every master tracked: entries served */
	RC_LOCAL_LOST				/* tracking lost: fallback entries only */
} RedisLocalState;

/* Dependencies a fill or a hit is checked against (keys, full names). */
#define RC_LOCAL_MAX_DEPS	64
/* The tracking worker's heartbeat, and the age beyond which none counts. */
#define RC_LOCAL_HEARTBEAT_MS		500
#define RC_LOCAL_HEARTBEAT_LIMIT_MS	2000

typedef struct RedisLocalFill RedisLocalFill;

extern void redis_local_define_gucs(void);
extern void redis_local_shmem_init(void);
extern bool redis_local_configured(void);
extern bool redis_local_wants_key(const char *key, size_t len);
extern bool redis_local_wants_queries(void);
extern bool redis_local_lookup(const char *key, size_t len, bool on_error,
							   char **value, size_t *valuelen);
extern RedisLocalFill *redis_local_fill_begin(const char *key, size_t len,
											  const char *const *deps,
											  const size_t *deplens,
											  int ndeps);
extern void redis_local_fill_end(RedisLocalFill *fill, const char *value,
								 size_t valuelen, int64 ttl_ms);
extern void redis_local_invalidate(const char *key, size_t len);
extern void redis_local_invalidate_pattern(const char *glob, size_t len);
extern void redis_local_flush(const char *why);
extern void redis_local_set_version(const char *version);
/* the tracking worker's side (tracking.c) */
extern int	redis_local_tracking_prefixes(char ***prefixes);
extern void redis_local_tracking_confirmed(char *const *prefixes, int n,
										   int nmasters);
extern void redis_local_tracking_lost(const char *why);
extern void redis_local_heartbeat(void);
extern RedisLocalState redis_local_state(void);
extern void redis_local_health(StringInfo json);

/* in transport.c */
typedef struct RedisSocket RedisSocket;

extern RedisSocket *redis_socket_open(const char *host, int port,
									  int tls_mode, int timeout_ms,
									  TimestampTz deadline);
extern bool redis_socket_tls(RedisSocket *s, const char **version,
							 const char **cipher);
extern const char *redis_socket_label(RedisSocket *s);
extern bool redis_socket_round_trip(RedisSocket *s,
									const RedisCommand *commands,
									int ncommands, RedisReply **replies,
									TimestampTz deadline, int timeout_ms,
									bool *nothing_received);
extern void redis_socket_close(RedisSocket *s);
/* streams (the tracking worker's subscribers) */
extern int	redis_socket_fd(RedisSocket *s);
extern bool redis_socket_send_async(RedisSocket *s,
									const RedisCommand *commands,
									int ncommands);
extern uint32 redis_socket_wait_events(RedisSocket *s);
extern int	redis_socket_read_async(RedisSocket *s, RedisReply **replies,
									int max, bool *more);

/* One socket's share of redis_sockets_round_trip(). */
typedef struct RedisSocketPart
{
	RedisSocket *socket;
	const RedisCommand *commands;
	int			ncommands;
	RedisReply **replies;		/* ncommands of them, set on success */
	bool		ok;				/* out */
	bool		nothing_received;	/* out */
} RedisSocketPart;

extern bool redis_sockets_round_trip(RedisSocketPart *parts, int nparts,
									 TimestampTz deadline, int timeout_ms);
extern void redis_auth_command(RedisCommand *cmd, const char **argv,
							   size_t *len, const char *user,
							   const char *password);
extern void redis_transport_limit_waits(TimestampTz limit, int limit_ms);
extern TimestampTz redis_transport_wait_limit(int *limit_ms);
extern void redis_transport_strict_deadlines(bool on);

/* in sentinel.c */
extern void redis_sentinel_define_gucs(void);
extern bool redis_sentinel_enabled(void);
extern const char *redis_sentinel_master_name(void);
extern uint64 redis_sentinel_config_generation(void);
/* How often the worker asks the sentinels whether the master changed. */
#define RC_SENTINEL_POLL_MS		1000

extern void redis_sentinel_init(void);
extern uint64 redis_sentinel_epoch(void);
extern bool redis_sentinel_discover(int tls_mode, int timeout_ms,
									TimestampTz deadline, char *host,
									size_t hostlen, int *port,
									uint64 *epoch);

/* in cluster.c */
typedef struct RedisCluster RedisCluster;

/* Connect to a node and run the handshake; its run_id into run_id. */
typedef RedisSocket *(*RedisNodeOpen) (const char *host, int port,
									   char *run_id, size_t run_id_len,
									   TimestampTz deadline, int timeout_ms);

extern int	redis_key_slot(const char *key, size_t len);
extern void redis_cluster_set_bulk_delete(const char *body);
extern RedisCluster *redis_cluster_create(RedisSocket *seed,
										  const char *seed_host, int seed_port,
										  const char *seed_run_id,
										  RedisNodeOpen open,
										  TimestampTz deadline, int timeout_ms,
										  RedisCluster **out);
extern void redis_cluster_free(RedisCluster *c);
extern int	redis_cluster_master_count(RedisCluster *c);
extern int	redis_cluster_unreachable(RedisCluster *c);
extern const char *redis_cluster_identity(RedisCluster *c);
extern bool redis_cluster_changed(RedisCluster *c);
extern RedisSocket *redis_cluster_any_socket(RedisCluster *c);
extern void redis_cluster_counts(RedisCluster *c, uint64 *moved,
								 uint64 *asked, uint64 *retried);
extern int	redis_cluster_nodes(RedisCluster *c, char ***addresses,
								int **slots);
extern bool redis_cluster_round_trip(RedisCluster *c,
									 const RedisCommand *commands,
									 int ncommands, RedisReply **replies,
									 TimestampTz deadline, int timeout_ms,
									 bool *nothing_received);

/* in connection.c */

/* Flags for redis_execute() */
#define RC_EXEC_NO_ERROR		0x01	/* never ereport(ERROR): degrade */
#define RC_EXEC_SKIP_BREAKER	0x02	/* probe even if the breaker is open */
#define RC_EXEC_INTERNAL		0x04	/* bookkeeping: skip the session check */
#define RC_EXEC_STARTUP			0x08	/* backend start: faults to the log only */
#define RC_EXEC_FAST_CONNECT	0x10	/* connect within command_timeout_ms */
#define RC_EXEC_IGNORE_ENABLED	0x20	/* invalidation: even when disabled */
#define RC_EXEC_AT_COMMIT		0x40	/* a commit's delivery: says so in faults */

/* A round trip on the connection being checked (no retry, no report). */
typedef bool (*RedisRoundTrip) (const RedisCommand *commands, int ncommands,
								RedisReply **replies);

/* Outcome of the session check an upper layer registers (version.c). */
typedef enum RedisSessionStatus
{
	RC_SESSION_OK,				/* namespace is current: go on */
	RC_SESSION_BYPASS,			/* flush in progress or superseded: miss */
	RC_SESSION_FAULT			/* Redis failed during the check */
} RedisSessionStatus;

typedef RedisSessionStatus (*RedisSessionCheck) (int flags,
												 RedisRoundTrip round_trip);

extern void redis_connection_define_gucs(void);
extern void redis_set_session_check(RedisSessionCheck check);
extern bool redis_execute(const RedisCommand *commands, int ncommands,
						  RedisReply **replies, int flags);
extern RedisReply *redis_run(const RedisCommand *cmd, int flags);
extern int	redis_master_count(void);
extern bool redis_server_is_cluster(void);
extern RedisCluster *redis_connection_cluster(void);
/* What an error reply means: its first word, classified in one place. */
typedef enum RedisErrorKind
{
	RC_ERR_GENERIC,				/* ERR and any code not below */
	RC_ERR_OOM,					/* maxmemory reached (noeviction) */
	RC_ERR_BUSY,				/* a script or module command runs long */
	RC_ERR_LOADING,				/* loading the data set after a start */
	RC_ERR_READONLY,			/* a read-only replica */
	RC_ERR_MISCONF,				/* cannot save: writes refused */
	RC_ERR_NOPERM,				/* ACL: command or key not allowed */
	RC_ERR_NOAUTH,				/* AUTH needed */
	RC_ERR_NOSCRIPT,			/* EVALSHA of a script not loaded */
	RC_ERR_WRONGTYPE,			/* the key holds another type */
	RC_ERR_MOVED,				/* Redis Cluster: the slot moved */
	RC_ERR_ASK,					/* Redis Cluster: the slot is migrating */
	RC_NUM_ERROR_KINDS
} RedisErrorKind;

extern RedisErrorKind redis_reply_error_kind(const RedisReply *reply);
extern void redis_report_reply_error(const RedisReply *reply,
									 const char *what, int flags);
extern RedisSocket *redis_open_subscriber(const char *host, int port,
										  bool cluster_node, char *run_id,
										  size_t run_id_len);
extern uint64 redis_connection_serial(void);
extern const char *redis_connection_run_id(void);
extern void redis_disconnect(void);
extern const char *redis_circuit_state(void);
extern const char *redis_server_host(void);
extern int	redis_server_port(void);
extern bool redis_connection_tls(const char **version, const char **cipher);
extern void redis_poll_sentinels(void);
extern bool redis_warning_due(TimestampTz *last_warning);

/* in scripts.c */
typedef enum RedisScriptId
{
	RC_SCRIPT_VERSION_CHECK,
	RC_SCRIPT_VERSION_FINISH,
	RC_SCRIPT_QUERY_LOOKUP,
	RC_SCRIPT_QUERY_GENERATIONS,
	RC_SCRIPT_QUERY_STORE,
	RC_SCRIPT_UNLOCK,
	RC_SCRIPT_QUERY_INVALIDATE,
	RC_NUM_SCRIPTS
} RedisScriptId;

extern void redis_scripts_init(void);

extern void redis_script_cmd(RedisCommand *cmd, RedisScriptId id, int nkeys,
							 int nargs);
extern bool redis_execute_scripts(RedisCommand *cmds, int n,
								  RedisReply **replies, int flags);
extern bool redis_execute_scripts_on(RedisRoundTrip round_trip,
									 RedisCommand *cmds, int n,
									 RedisReply **replies);
extern RedisReply *redis_run_script(RedisScriptId id, int nkeys, int nargs,
									const char **args, size_t *lens,
									int flags);
extern void redis_invalidate_script_cmd(RedisCommand *cmd, const char *base,
										const char *const *items,
										const size_t *lens, int nitems);

/* in families.c */
extern void redis_families_define_gucs(void);
extern int	redis_owned_families(const char *prefix, int flags,
								 RedisRoundTrip round_trip, char ***globs);
extern bool redis_record_families(const char *prefix, char *const *globs,
								  int nglobs, int flags);

/* in flush.c */

/* redis_scan_unlink() flag: leave redis_is_reserved_key() keys alone too */
#define RC_SCAN_KEEP_RESERVED	0x10000

extern int64 redis_scan_unlink(const char *prefix, const char *pattern,
							   size_t patternlen, int flags,
							   RedisRoundTrip round_trip,
							   TimestampTz deadline, bool *failed);
extern int64 redis_flush_owned(const char *prefix, int flags,
							   RedisRoundTrip round_trip, bool all_clusters,
							   TimestampTz deadline, bool *failed);
extern int64 redis_unlink_pattern(const char *prefix, const char *pattern);
extern int64 redis_unlink_pattern_until(const char *prefix,
										const char *pattern,
										TimestampTz deadline);
extern bool redis_unlink_raw(const char *key);
extern bool redis_unlink_bookkeeping(const char *prefix);

/* in version.c */
extern void redis_version_init(void);
extern void redis_version_startup_check(void);
extern const char *redis_version_expected(void);

/* in query_tables.c */
#define RC_DDL_GENERATION	"ddl"

extern void redis_query_tables_shmem_init(void);
extern bool redis_query_generation_needed(const char *item, int len);
extern void redis_query_register_tables(int nrelids, const Oid *relids);
extern bool redis_query_tables_save(void);

/* in replay.c */
typedef enum RedisReplayKind
{
	RC_REPLAY_KEY,				/* UNLINK data (the full key, prefix included) */
	RC_REPLAY_GENERATION,		/* bump generation item data */
	RC_REPLAY_FAMILY			/* SADD data to the namespace's families */
} RedisReplayKind;

typedef struct RedisReplayItem
{
	int			namespace_index;	/* worker.c's index */
	int			kind;			/* RedisReplayKind */
	const char *data;
	uint32		len;
	uint32		hash;			/* redis_replay_key_hash() of a key */
} RedisReplayItem;

#define RC_REPLAY_FAILED(kind)	(1 << (kind))

extern void redis_replay_init(void);
extern uint32 redis_replay_key_hash(const char *key, size_t len);
extern int	redis_replay_hand_over(const RedisReplayItem *items, int nitems);
extern bool redis_replay_key_queued(const char *key, size_t len);
extern bool redis_replay_bumps_queued(int namespace_index);
extern int	redis_replay_queued(void);
extern void redis_replay_counts(int64 *queued, int64 *capacity,
								int64 *enqueued, int64 *replayed,
								int64 *overflows);
extern int	redis_replay_peek(RedisReplayItem **items, uint64 *consumed);
extern void redis_replay_consume(uint64 consumed);

/* in worker.c */
extern void redis_worker_init(void);
extern int	redis_register_namespace(const char *prefix);
extern int	redis_find_namespace(const char *prefix);
extern int	redis_worker_namespaces(char ***prefixes);
extern bool redis_worker_running(void);
extern void redis_worker_commit_begin(void);
extern void redis_worker_commit_end(void);
extern void redis_mark_missed(int namespace_index);
extern void redis_worker_wake(void);
extern bool redis_recovery_pending(const char *prefix);
extern bool redis_key_pending(const char *prefix, const char *key,
							  size_t len);
extern bool redis_results_pending(const char *prefix);
extern void redis_queue_pattern(int namespace_index, const char *pattern);
extern void redis_queue_redelete(int namespace_index, const char *key,
								 size_t len, TimestampTz due);

/* in tracking.c */
extern void redis_tracking_init(void);

/* in invalidation.c */
extern void redis_invalidation_init(void);
extern int	redis_queue_prefix_index(void);
extern void redis_queue_invalidation(const char *key, int len,
									 bool is_pattern, int prefix_index);
extern void redis_queue_generation_bump(const char *item, int len);
extern void redis_queue_family(const char *glob, int len, int prefix_index);
extern int64 redis_invalidate_generations_now(char **items, int nitems);

/* in query_deps.c */
typedef struct QueryDependencies
{
	int			nrelids;
	Oid		   *relids;			/* sorted, read directly or through views */
	const char *not_cacheable;	/* why the result must not be cached */
} QueryDependencies;

extern void redis_query_hooks_init(void);
extern void redis_query_dependencies(List *query_list, const char *query_string,
									 int nparams, const Datum *param_values,
									 const bool *param_nulls, Oid cache_function,
									 QueryDependencies *deps);
extern bool redis_query_xact_has_writes(void);
extern bool redis_query_xact_wrote_any(const QueryDependencies *deps);
extern void redis_query_note_trigger_write(Oid relid);
extern char *redis_query_generation_item(Oid relid);
extern char *redis_query_database_ddl_item(void);

/* in query_rows.c */
extern bool redis_rows_encode(struct SPITupleTable *table, uint64 nrows,
							  StringInfo out);
extern const char *redis_rows_decode(TupleDesc desc, const char *entry_key,
									 const char *data, size_t len,
									 Tuplestorestate *store);
extern void redis_json_encode(struct SPITupleTable *table, uint64 nrows,
							  StringInfo out);
extern Datum redis_json_decode(const char *data, size_t len,
							   const char **why);

/* in query_cache.c */
extern void redis_query_cache_define_gucs(void);

#endif							/* REDIS_CACHE_H */
