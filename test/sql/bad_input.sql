-- Invalid arguments are rejected before Redis is contacted.
SET redis_cache.key_prefix = 'regress:bad:';
\set VERBOSITY default

SELECT cache_get('');
SELECT cache_set('', 'x');
SELECT cache_get(repeat('k', 1025));
SELECT length(repeat('k', 1024)) AS max_len_ok, cache_get(repeat('k', 1024)) IS NULL AS miss;
SELECT cache_get(E'tenant:\nid');
SELECT cache_set(E'tab\there', 'x');
SELECT cache_get('del' || chr(127));
SELECT cache_mget(ARRAY['ok', '']);
SELECT cache_mget('{{a,b},{c,d}}'::text[]);
SELECT cache_delete('ok', E'bad\r');
SELECT cache_delete_pattern('');
SELECT cache_lock('', 10);

SELECT cache_set('k', 'v', 0);
SELECT cache_set('k', 'v', -5);
SELECT cache_incr('k', 1, 0);
SELECT cache_lock('lock:k', 0);
SELECT cache_set('k', NULL);

-- too large for max_value_bytes: refused without contacting Redis
SET redis_cache.max_value_bytes = '1kB';
SELECT cache_set('big', repeat('x', 1025));
SELECT cache_set('big', repeat('x', 1024));
RESET redis_cache.max_value_bytes;
SELECT cache_delete('big');

-- settings are validated
SET redis_cache.key_prefix = E'bad\nprefix';
SET redis_cache.on_error = 'panic';
SET redis_cache.port = 0;
SET redis_cache.nonexistent = 1;

-- a Redis error reply names the key and never crashes
SELECT cache_set('counter:text', 'not a number');
SELECT cache_incr('counter:text');
SET redis_cache.on_error = 'error';
SELECT cache_incr('counter:text');
RESET redis_cache.on_error;
SELECT cache_delete('counter:text');

-- leave nothing behind (test/sql/leave_nothing.psql)
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/leave_nothing.psql
