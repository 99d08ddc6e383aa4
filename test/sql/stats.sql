-- Statistics and health (scope is 'server' with shared_preload_libraries,
-- 'backend' without; the checks below hold for both).
SET redis_cache.key_prefix = 'regress:stats:';
SELECT cache_stats_reset();
SELECT cache_set('tenant:id:1', 'a'), cache_set('product:details:1', 'b');
SELECT cache_get('tenant:id:1'), cache_get('tenant:id:2'), cache_get('product:details:1');
SELECT cache_mget(ARRAY['tenant:id:1', 'settings:org:1:all']);
SELECT cache_delete('tenant:id:1', 'product:details:1');

SELECT scope IN ('server', 'backend') AS scope_ok, hits >= 3 AS hits, misses >= 2 AS misses,
       sets >= 2 AS sets, deletes >= 2 AS deletes, round_trips >= 6 AS round_trips,
       bytes_out > 0 AS bytes_out, bytes_in > 0 AS bytes_in,
       hit_ratio BETWEEN 0 AND 1 AS ratio, array_length(latency_buckets, 1) AS buckets,
       (SELECT sum(b) FROM unnest(latency_buckets) b) = round_trips AS buckets_sum,
       circuit
  FROM cache_stats WHERE family IS NULL;

SELECT family COLLATE "C", hits, misses, sets, deletes
  FROM cache_stats WHERE family IN ('tenant', 'product', 'settings') ORDER BY 1;

-- faults are counted by kind
SET redis_cache.port = 1;
SET redis_cache.on_error = 'silent';
SELECT cache_get('tenant:id:1');
RESET redis_cache.port;
RESET redis_cache.on_error;
SELECT errors_connect >= 1 AS connect_error_counted FROM cache_stats WHERE family IS NULL;

SELECT cache_stats_reset();
SELECT hits + misses + sets AS after_reset FROM cache_stats WHERE family IS NULL;

SELECT h->>'reachable' AS reachable, h->>'circuit' AS circuit,
       (h->>'ping_ms')::float8 >= 0 AS ping, h->>'redis_version' ~ '^[0-9]+\.' AS version,
       (h->>'used_memory')::bigint > 0 AS used_memory, h ? 'maxmemory' AS maxmemory,
       (h->>'connected_clients')::int >= 1 AS clients, h ? 'keyspace_hits' AS keyspace,
       h ? 'evicted_keys' AS evicted, length(h->>'run_id') AS run_id_len
  FROM cache_health() h;
SET redis_cache.port = 1;
SET redis_cache.on_error = 'silent';
SELECT cache_health()->>'reachable' AS reachable_when_down;
