-- The functions peers have (1.6): add-if-absent, set many, touch, binary
-- values; cache_query_key() without the prefix; the JSON types of
-- cache_health().  Every key lives under regress:peers:.
SET redis_cache.key_prefix = 'regress:peers:';
SELECT cache_delete_pattern('*') >= 0 AS cleaned;

-- cache_add: SET NX
SELECT cache_add('lock:job:7', 'worker-1', 60) AS first_add,
       cache_add('lock:job:7', 'worker-2', 60) AS second_add,
       cache_get('lock:job:7') AS holder;
SELECT cache_ttl('lock:job:7') BETWEEN 50 AND 60 AS add_ttl;
SELECT cache_add('tenant:id:9', 'nine') AS add_default_ttl,
       cache_ttl('tenant:id:9') BETWEEN 3590 AND 3600 AS default_ttl_used;
SELECT cache_add(NULL, 'x') IS NULL AS null_key;
\set VERBOSITY terse
SELECT cache_add('x', NULL);
SELECT cache_add('x', 'v', 0);
SELECT cache_add('cache:version', 'v');
SELECT cache_add('', 'v');
\set VERBOSITY default

-- cache_set_many: one round trip per 1000 keys
SELECT cache_set_many(ARRAY['product:details:1', 'product:details:2', 'product:details:3'],
                      ARRAY['{"id":1}', '{"id":2}', '{"id":3}'], 300) AS stored;
SELECT cache_mget(ARRAY['product:details:1', 'product:details:2', 'product:details:3']);
SELECT cache_ttl('product:details:2') BETWEEN 290 AND 300 AS many_ttl;
SELECT cache_set_many(ARRAY(SELECT 'bulk:' || g FROM generate_series(1, 2500) g),
                      ARRAY(SELECT 'v' || g FROM generate_series(1, 2500) g), 60) AS stored_2500;
SELECT cache_get('bulk:1') AS first, cache_get('bulk:1001') AS second_batch, cache_get('bulk:2500') AS last;
SELECT cache_set_many('{}', '{}') AS nothing;
\set VERBOSITY terse
SELECT cache_set_many(ARRAY['a', 'b'], ARRAY['1']);
SELECT cache_set_many(ARRAY['a', NULL], ARRAY['1', '2']);
SELECT cache_set_many(ARRAY['a', 'b'], ARRAY['1', NULL]);
SELECT cache_set_many(NULL, ARRAY['1']);
SELECT cache_set_many(ARRAY[['a', 'b']], ARRAY[['1', '2']]);
SELECT cache_set_many(ARRAY['a', 'cache:version'], ARRAY['1', '2']);
SELECT cache_set_many(ARRAY['a'], ARRAY['1'], -5);
\set VERBOSITY default
SELECT cache_exists('a') AS nothing_stored_on_error;

-- cache_touch: a new TTL for an existing key
SELECT cache_set('session:abc', 'user42', 30);
SELECT cache_touch('session:abc', 900) AS touched,
       cache_ttl('session:abc') BETWEEN 890 AND 900 AS ttl_extended;
SELECT cache_touch('session:none', 900) AS absent;
SET redis_cache.default_ttl = 0;
SELECT cache_touch('session:abc') AS persisted, cache_ttl('session:abc') IS NULL AS no_expiry;
RESET redis_cache.default_ttl;
SELECT cache_touch('session:abc') AS default_ttl, cache_ttl('session:abc') BETWEEN 3590 AND 3600 AS ttl_default;
SELECT cache_touch(NULL, 10) IS NULL AS null_key;
\set VERBOSITY terse
SELECT cache_touch('session:abc', 0);
SELECT cache_touch('cache:version', 10);
\set VERBOSITY default

-- binary values: stored and read as raw bytes
SELECT cache_set('blob:1', '\x00ff0d0a80'::bytea, 60) AS stored_bytes;
SELECT cache_get_bytea('blob:1');
SELECT cache_get('blob:1') IS NULL AS not_text;
SELECT cache_set('text:1', 'Zürich', 60);
SELECT cache_get_bytea('text:1'), convert_from(cache_get_bytea('text:1'), 'UTF8');
SELECT cache_get_bytea('blob:none') IS NULL AS miss;
SELECT cache_set('blob:empty', ''::bytea, 60), length(cache_get_bytea('blob:empty')) AS empty_length;
-- text literals still choose the text version
SELECT cache_set('plain', 'abc', 60), cache_get('plain');
SELECT cache_set('blob:n', NULL::bytea) IS NULL;

-- cache_query_key with and without the prefix
SELECT cache_query_key('SELECT 1') LIKE 'regress:peers:query:%' AS prefixed,
       cache_query_key('SELECT 1', with_prefix => false) LIKE 'query:%' AS unprefixed,
       'regress:peers:' || cache_query_key('SELECT 1', with_prefix => false) = cache_query_key('SELECT 1') AS same_key;

-- cache_health: JSON booleans and numbers
SELECT jsonb_typeof(h->'reachable') AS reachable, jsonb_typeof(h->'port') AS port,
       jsonb_typeof(h->'ping_ms') AS ping_ms, jsonb_typeof(h->'used_memory') AS used_memory,
       jsonb_typeof(h->'replay_queued') AS replay_queued, jsonb_typeof(h->'circuit') AS circuit,
       jsonb_typeof(h->'tls') AS tls, jsonb_typeof(h->'sentinel_master') AS sentinel_master
  FROM cache_health() h;

-- only a role that may call cache_watch() may check templates: checking
-- records their families as owned, which bulk deletes may remove
CREATE ROLE regress_peers_nobody;
CREATE TABLE regress_peers_t (id int);
GRANT SELECT ON regress_peers_t TO regress_peers_nobody;
SET ROLE regress_peers_nobody;
\set VERBOSITY terse
SELECT cache_check_templates('regress_peers_t', ARRAY['session:{id}']);
\set VERBOSITY default
RESET ROLE;
DROP TABLE regress_peers_t;
DROP ROLE regress_peers_nobody;
SELECT count(*) AS families FROM cache_families();

-- redis_cache.url: a password is refused wherever it hides, and no message
-- echoes the value
\set VERBOSITY terse
SET redis_cache.url = 'redis://default:ab/cd@cache.example:6379';
SET redis_cache.url = 'rediss://u:p?w#x@cache.example';
SET redis_cache.url = 'redis://ho st:6379';
SET redis_cache.url = 'redis://cache.example: 80';
SET redis_cache.url = 'redis://cache.example:6379/+3';
SET redis_cache.url = 'http://cache.example';
\set VERBOSITY default
SHOW redis_cache.url;

-- Redis unreachable: the miss values, one WARNING
SELECT cache_delete_pattern('*') >= 0 AS cleaned;
SET redis_cache.port = 1;
SET redis_cache.circuit_failure_threshold = 1000;
\set VERBOSITY terse
SELECT cache_add('k', 'v') IS NULL AS add_unknown,
       cache_set_many(ARRAY['k'], ARRAY['v']) AS many_stored,
       cache_touch('k', 10) AS touched,
       cache_set('k', '\x01'::bytea) AS bytes_stored,
       cache_get_bytea('k') IS NULL AS bytes_miss;
SET redis_cache.on_error = 'error';
SELECT cache_add('k', 'v');
RESET redis_cache.on_error;
\set VERBOSITY default
RESET redis_cache.port;
RESET redis_cache.circuit_failure_threshold;

-- leave nothing behind (test/sql/leave_nothing.psql)
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/leave_nothing.psql
