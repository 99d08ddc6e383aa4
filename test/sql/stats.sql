-- Statistics and health (scope is 'server' with shared_preload_libraries,
-- 'backend' without; the checks below hold for both).  The counters may be
-- the live server's: they are never reset here, only read before and
-- compared after (deltas).
SET redis_cache.key_prefix = 'regress:stats:';
SELECT cache_delete_pattern('*') >= 0 AS cleaned;
SELECT to_jsonb(s) AS before FROM cache_stats s WHERE family IS NULL \gset
SELECT coalesce(jsonb_object_agg(family, to_jsonb(s)), '{}') AS families_before
  FROM cache_stats s WHERE family IN ('tenant', 'product', 'settings') \gset

SELECT cache_set('tenant:id:1', 'a'), cache_set('product:details:1', 'b');
SELECT cache_get('tenant:id:1'), cache_get('tenant:id:2'), cache_get('product:details:1');
SELECT cache_mget(ARRAY['tenant:id:1', 'settings:org:1:all']);
SELECT cache_delete('tenant:id:1', 'product:details:1');

SELECT scope IN ('server', 'backend') AS scope_ok,
       hits - (:'before'::jsonb->>'hits')::bigint >= 3 AS hits,
       misses - (:'before'::jsonb->>'misses')::bigint >= 2 AS misses,
       sets - (:'before'::jsonb->>'sets')::bigint >= 2 AS sets,
       deletes - (:'before'::jsonb->>'deletes')::bigint >= 2 AS deletes,
       round_trips - (:'before'::jsonb->>'round_trips')::bigint >= 6 AS round_trips,
       bytes_out > (:'before'::jsonb->>'bytes_out')::bigint AS bytes_out,
       bytes_in > (:'before'::jsonb->>'bytes_in')::bigint AS bytes_in,
       hit_ratio BETWEEN 0 AND 1 AS ratio, array_length(latency_buckets, 1) AS buckets,
       (SELECT sum(b) FROM unnest(latency_buckets) b) = round_trips AS buckets_sum,
       circuit
  FROM cache_stats WHERE family IS NULL;

-- per family: what the calls above added
SELECT f.family COLLATE "C",
       s.hits - coalesce((:'families_before'::jsonb #>> ARRAY[f.family, 'hits'])::bigint, 0) AS hits,
       s.misses - coalesce((:'families_before'::jsonb #>> ARRAY[f.family, 'misses'])::bigint, 0) AS misses,
       s.sets - coalesce((:'families_before'::jsonb #>> ARRAY[f.family, 'sets'])::bigint, 0) AS sets,
       s.deletes - coalesce((:'families_before'::jsonb #>> ARRAY[f.family, 'deletes'])::bigint, 0) AS deletes
  FROM unnest(ARRAY['tenant', 'product', 'settings']) f(family)
  LEFT JOIN cache_stats s ON s.family = f.family
 ORDER BY 1;

-- faults are counted by kind
SET redis_cache.port = 1;
SET redis_cache.on_error = 'silent';
SELECT cache_get('tenant:id:1');
RESET redis_cache.port;
RESET redis_cache.on_error;
SELECT errors_connect > (:'before'::jsonb->>'errors_connect')::bigint AS connect_error_counted
  FROM cache_stats WHERE family IS NULL;

-- cache_stats_reset() zeroes the counters of the whole server: not for
-- everyone, and not called here
SELECT has_function_privilege('public', 'cache_stats_reset()', 'EXECUTE') AS public_may_reset;
SELECT stats_reset = (:'before'::jsonb->>'stats_reset')::timestamptz AS not_reset
  FROM cache_stats WHERE family IS NULL;

SELECT h->>'reachable' AS reachable, h->>'circuit' AS circuit,
       (h->>'ping_ms')::float8 >= 0 AS ping, h->>'redis_version' ~ '^[0-9]+\.' AS version,
       (h->>'used_memory')::bigint > 0 AS used_memory, h ? 'maxmemory' AS maxmemory,
       (h->>'connected_clients')::int >= 1 AS clients, h ? 'keyspace_hits' AS keyspace,
       h ? 'evicted_keys' AS evicted, length(h->>'run_id') AS run_id_len
  FROM cache_health() h;
SET redis_cache.port = 1;
SET redis_cache.on_error = 'silent';
SELECT cache_health()->>'reachable' AS reachable_when_down;
RESET redis_cache.port;
RESET redis_cache.on_error;

-- leave nothing behind (test/sql/leave_nothing.psql)
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/leave_nothing.psql
