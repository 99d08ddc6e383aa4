/* redis_cache--1.0--1.1.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION redis_cache UPDATE TO '1.1'" to load this file. \quit

CREATE FUNCTION cache_version(
    OUT expected text,
    OUT stored text,
    OUT run_id text,
    OUT checked_at timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'cache_version'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cache_version() IS
'Cache version expected by this server, version stored in Redis, Redis run_id and when this backend last checked';

-- Row-change invalidation

CREATE FUNCTION cache_invalidate()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cache_invalidate'
LANGUAGE C;

COMMENT ON FUNCTION cache_invalidate() IS
'Trigger: invalidates the Redis keys named by its templates (''tenant:id:{id}'', ''product:variants:{id}:*'') for the OLD and NEW rows, at commit';

CREATE FUNCTION cache_check_templates(tbl regclass, key_templates text[])
RETURNS void
AS 'MODULE_PATHNAME', 'cache_check_templates'
LANGUAGE C STRICT STABLE;

COMMENT ON FUNCTION cache_check_templates(regclass, text[]) IS
'Raises an error unless every key template is valid for the table';

CREATE FUNCTION cache_watch(tbl regclass, VARIADIC key_templates text[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    args text;
BEGIN
    PERFORM @extschema@.cache_check_templates(tbl, key_templates);
    SELECT string_agg(quote_literal(t), ', ' ORDER BY ord)
      INTO args
      FROM unnest(key_templates) WITH ORDINALITY AS u(t, ord);
    PERFORM @extschema@.cache_unwatch(tbl);
    EXECUTE format('CREATE TRIGGER redis_cache_invalidate AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION @extschema@.cache_invalidate(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER redis_cache_invalidate_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.cache_invalidate(%s)', tbl, args);
END
$$;

COMMENT ON FUNCTION cache_watch(regclass, text[]) IS
'Installs the row and TRUNCATE triggers that invalidate the given key templates when the table changes';

CREATE FUNCTION cache_unwatch(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    trg name;
BEGIN
    FOR trg IN SELECT tgname FROM pg_trigger
                WHERE tgrelid = tbl
                  AND tgname IN ('redis_cache_invalidate', 'redis_cache_invalidate_truncate')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trg, tbl);
    END LOOP;
END
$$;

COMMENT ON FUNCTION cache_unwatch(regclass) IS
'Removes the invalidation triggers that cache_watch() installed';

CREATE FUNCTION cache_watches(
    OUT tbl regclass,
    OUT trigger_name name,
    OUT events text,
    OUT key_templates text[])
RETURNS SETOF record
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.tgrelid::regclass, t.tgname,
           CASE WHEN t.tgtype & 32 <> 0 THEN 'TRUNCATE'
                ELSE 'INSERT, UPDATE, DELETE' END,
           (SELECT array_agg(replace(a, '\\', '\') ORDER BY n)
              FROM unnest(string_to_array(encode(t.tgargs, 'escape'), '\000'))
                   WITH ORDINALITY AS u(a, n)
             WHERE n <= t.tgnargs)
      FROM pg_trigger t
     WHERE t.tgfoid = '@extschema@.cache_invalidate()'::regprocedure
     ORDER BY t.tgrelid::regclass::text COLLATE "C", t.tgname COLLATE "C"
$$;

COMMENT ON FUNCTION cache_watches() IS
'Lists the tables whose changes invalidate Redis keys, with their key templates';

-- Statistics and health

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
    OUT circuit text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'cache_stats'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cache_stats() IS
'Cache statistics: one row of totals (family NULL) and one per key family; scope says whether they cover the server or this backend';

CREATE VIEW cache_stats AS SELECT * FROM cache_stats();

COMMENT ON VIEW cache_stats IS
'Cache statistics; latency_buckets counts round trips under 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 100, 250 ms and above';

CREATE FUNCTION cache_stats_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'cache_stats_reset'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cache_stats_reset() IS
'Zeroes the cache statistics';

REVOKE ALL ON FUNCTION cache_stats_reset() FROM PUBLIC;

CREATE FUNCTION cache_health()
RETURNS jsonb
AS 'MODULE_PATHNAME', 'cache_health'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cache_health() IS
'Health of the Redis server: reachability, ping latency, version, memory, clients, keyspace hits/misses, evictions, run_id, circuit breaker state';
