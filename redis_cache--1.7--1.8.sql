/* redis_cache--1.7--1.8.sql: the local cache */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION redis_cache UPDATE TO '1.8'" to load this file. \quit

-- 1.8 adds the local cache (redis_cache.local_cache_size and the other
-- redis_cache.local_* settings; shared_preload_libraries): the library
-- does the work, and cache_stats() gains its counters, as its last
-- columns, so that the 1.7 definition still reads the library's rows
-- between a package upgrade and ALTER EXTENSION ... UPDATE.
DROP VIEW cache_stats;
DROP FUNCTION cache_stats();

CREATE FUNCTION cache_stats(
    OUT scope text,
    OUT family text,
    OUT hits bigint,
    OUT misses bigint,
    OUT sets bigint,
    OUT deletes bigint,
    OUT invalidations_sent bigint,
    OUT invalidations_queued bigint,
    OUT invalidations_retried bigint,
    OUT errors_connect bigint,
    OUT errors_timeout bigint,
    OUT errors_io bigint,
    OUT errors_protocol bigint,
    OUT errors_reply bigint,
    OUT bytes_out bigint,
    OUT bytes_in bigint,
    OUT circuit_opens bigint,
    OUT flushes bigint,
    OUT bypasses bigint,
    OUT round_trips bigint,
    OUT hit_ratio float8,
    OUT latency_buckets bigint[],
    OUT stats_reset timestamptz,
    OUT circuit text,
    OUT local_hits bigint,
    OUT local_fills bigint,
    OUT local_invalidations bigint,
    OUT local_evictions bigint,
    OUT local_flushes bigint,
    OUT local_discards bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'cache_stats'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cache_stats() IS
'Cache statistics: one row of totals (family NULL) and one per key family; scope says whether they cover the server or this backend; local_* count the local cache (totals row)';

CREATE VIEW cache_stats AS SELECT * FROM cache_stats();

COMMENT ON VIEW cache_stats IS
'Cache statistics; latency_buckets counts round trips under 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 100, 250 ms and above; local_* count the local cache';

GRANT SELECT ON cache_stats TO PUBLIC;
