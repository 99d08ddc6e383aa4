-- Redis unreachable: functions return miss values and the query goes on.
-- Nothing listens on port 1, so every connect is refused at once.
SET redis_cache.key_prefix = 'regress:degraded:';
SET redis_cache.port = 1;
SET redis_cache.circuit_failure_threshold = 1000;
\set VERBOSITY terse

-- one WARNING, then quiet for 10 s: the whole query succeeds
SELECT cache_get('tenant:id:1') IS NULL AS miss,
       cache_set('tenant:id:1', 'x') AS stored,
       cache_exists('tenant:id:1') AS present,
       cache_delete('tenant:id:1') AS deleted,
       cache_incr('counter') IS NULL AS incr_null,
       cache_ttl('tenant:id:1') IS NULL AS ttl_null,
       cache_mget(ARRAY['a', 'b']) AS mget,
       cache_delete_pattern('*') AS pattern_deleted,
       cache_lock('lock:x', 5) IS NULL AS no_lock,
       cache_unlock('lock:x', 't') AS unlocked;
SELECT count(*) FROM generate_series(1, 50) g WHERE cache_get('k' || g) IS NULL;

-- on_error = error: a clear ERROR of class 08
SET redis_cache.on_error = 'error';
\set VERBOSITY default
SELECT cache_get('tenant:id:1');
DO $$
BEGIN
  PERFORM cache_set('tenant:id:1', 'x');
EXCEPTION WHEN connection_exception THEN
  RAISE NOTICE 'caught SQLSTATE %', SQLSTATE;
END $$;

-- on_error = silent: no message at all
SET redis_cache.on_error = 'silent';
SELECT cache_get('tenant:id:1') IS NULL AS silent_miss;
RESET redis_cache.on_error;

-- circuit breaker: after the threshold, Redis is skipped without connecting
-- (a new server address starts with a closed breaker)
SET redis_cache.port = 2;
SET redis_cache.circuit_failure_threshold = 2;
SET redis_cache.on_error = 'error';
\set VERBOSITY terse
SELECT cache_get('a');
SELECT cache_get('a');
SELECT cache_get('a');
-- the health check still probes
SELECT cache_ping();
RESET redis_cache.on_error;

-- changing the port takes effect on the next command: back to a live Redis
RESET redis_cache.port;
RESET redis_cache.circuit_failure_threshold;
SELECT cache_ping();

-- leave nothing behind (test/sql/leave_nothing.psql)
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/leave_nothing.psql
