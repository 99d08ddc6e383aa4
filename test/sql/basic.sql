-- Key-value functions against a live Redis (redis_cache.host/port come
-- from the server configuration).  Every key lives under regress:basic:,
-- the other prefixes used here too.
SET redis_cache.key_prefix = 'regress:basic:';
SELECT cache_delete_pattern('*') >= 0 AS cleaned;

SELECT cache_ping();

-- miss, set, hit
SELECT cache_get('tenant:id:42') IS NULL AS miss;
SELECT cache_set('tenant:id:42', '{"id":42,"name":"Acme"}');
SELECT cache_get('tenant:id:42');
SELECT cache_exists('tenant:id:42'), cache_exists('tenant:id:43');

-- TTLs: explicit, default, none
SELECT cache_set('tenant:subdomain:acme', '42', 600);
SELECT cache_ttl('tenant:subdomain:acme') BETWEEN 590 AND 600 AS ttl_explicit;
SELECT cache_ttl('tenant:id:42') BETWEEN 3590 AND 3600 AS ttl_default;
SET redis_cache.default_ttl = 0;
SELECT cache_set('settings:org:3:locale', 'de-DE');
SELECT cache_ttl('settings:org:3:locale') IS NULL AS no_expiry;
RESET redis_cache.default_ttl;
SELECT cache_ttl('no:such:key') IS NULL AS absent_ttl;

-- overwrite, unicode, empty value
SELECT cache_set('tenant:id:42', 'Zürich ✓');
SELECT cache_get('tenant:id:42');
SELECT cache_set('empty', '');
SELECT cache_get('empty') = '' AS empty_value;

-- counters: the TTL applies only when the counter is created
SELECT cache_incr('counter:hits');
SELECT cache_incr('counter:hits', 41);
SELECT cache_incr('counter:hits', -2);
SELECT cache_ttl('counter:hits') BETWEEN 3590 AND 3600 AS counter_default_ttl;
SELECT cache_incr('counter:short', 1, 100);
SELECT cache_incr('counter:short', 1, 5000);
SELECT cache_ttl('counter:short') <= 100 AS ttl_kept;

-- mget: one round trip, NULLs for misses and NULL keys
SELECT cache_mget(ARRAY['tenant:id:42', 'nope', NULL, 'tenant:subdomain:acme']);
SELECT cache_mget('{}'::text[]);
SELECT array_length(cache_mget(array_agg('k' || g)), 1) AS big_mget
  FROM generate_series(1, 2500) g;

-- delete: variadic and array forms, NULL elements skipped
SELECT cache_delete('tenant:id:42', 'nope');
SELECT cache_delete(VARIADIC ARRAY['tenant:subdomain:acme', NULL]);
SELECT cache_get('tenant:id:42') IS NULL AS deleted;
SELECT cache_delete(VARIADIC '{}'::text[]);

-- many keys: batched UNLINK/MGET, still one round trip
SELECT count(*) FILTER (WHERE cache_set('product:details:' || g, 'p' || g)) AS stored
  FROM generate_series(1, 2500) g;
SELECT (cache_mget(array_agg('product:details:' || g ORDER BY g)))[2500]
  FROM generate_series(1, 2500) g;
SELECT cache_delete(VARIADIC array_agg('product:details:' || g))
  FROM generate_series(1, 1200) g;

-- pattern delete stays inside key_prefix
SELECT cache_set('product:variants:7:red', 'r'), cache_set('product:variants:7:blue', 'b'),
       cache_set('product:variants:8:red', 'r');
SET redis_cache.key_prefix = 'regress:basic:other:';
SELECT cache_set('product:variants:7:green', 'g');
SET redis_cache.key_prefix = 'regress:basic:';
SELECT cache_delete_pattern('product:variants:7:*');
SELECT cache_exists('product:variants:8:red') AS sibling_kept;
SELECT cache_delete_pattern('product:details:*');
SET redis_cache.key_prefix = 'regress:basic:other:';
SELECT cache_get('product:variants:7:green') AS other_prefix_kept;
SELECT cache_delete_pattern('*');
SET redis_cache.key_prefix = 'regress:basic:';

-- glob characters in the prefix are literal
SET redis_cache.key_prefix = 'regress:basic:[x]*:';
SELECT cache_set('a', '1');
SET redis_cache.key_prefix = 'regress:basic:x:';
SELECT cache_set('a', '2');
SET redis_cache.key_prefix = 'regress:basic:[x]*:';
SELECT cache_delete_pattern('*');
SET redis_cache.key_prefix = 'regress:basic:x:';
SELECT cache_get('a') AS literal_prefix_kept;
SELECT cache_delete('a');
SET redis_cache.key_prefix = 'regress:basic:';
-- the bookkeeping of the nested namespaces is the extension's own: the
-- pattern deletes above leave it, forgetting the namespaces removes it
SELECT bool_or(cache_forget_namespace(p)) AS any_tracked
  FROM unnest(ARRAY['regress:basic:other:', 'regress:basic:[x]*:', 'regress:basic:x:']) p;

-- locks: one holder at a time, release needs the token
SELECT cache_lock('lock:report', 30) AS token \gset
SELECT length(:'token') AS token_length;
SELECT cache_lock('lock:report', 30) IS NULL AS held_elsewhere;
SELECT cache_unlock('lock:report', 'not-the-token');
SELECT cache_unlock('lock:report', :'token');
SELECT cache_unlock('lock:report', :'token');
SELECT cache_lock('lock:report') IS NOT NULL AS retaken;

-- disabled: no-op misses
SET redis_cache.enabled = off;
SELECT cache_set('off', 'x'), cache_get('tenant:subdomain:acme'), cache_exists('empty'),
       cache_delete('empty'), cache_incr('counter:hits'), cache_lock('lock:x', 5),
       cache_ping();
RESET redis_cache.enabled;
SELECT cache_exists('off') AS not_written_while_disabled;

-- NULL handling (STRICT)
SELECT cache_get(NULL), cache_exists(NULL), cache_ttl(NULL), cache_set(NULL, 'x');

-- leave nothing behind (test/sql/leave_nothing.psql)
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/leave_nothing.psql
