/* redis_cache--1.1--1.2.sql: query result caching */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION redis_cache UPDATE TO '1.2'" to load this file. \quit

CREATE FUNCTION cache_query(query text, params text[] DEFAULT '{}', ttl_seconds integer DEFAULT NULL)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'cache_query'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION cache_query(text, text[], integer) IS
'Runs a read-only query with parameters $1..$n, or returns its result from Redis; use with a column definition list';

CREATE FUNCTION cache_query_json(query text, params text[] DEFAULT '{}', ttl_seconds integer DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'cache_query_json'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION cache_query_json(text, text[], integer) IS
'Runs a read-only query and returns its rows as a JSON array, or returns that array from Redis';

CREATE FUNCTION cache_query_key(query text, params text[] DEFAULT '{}', format text DEFAULT 'json')
RETURNS text
AS 'MODULE_PATHNAME', 'cache_query_key'
LANGUAGE C STABLE PARALLEL SAFE;

COMMENT ON FUNCTION cache_query_key(text, text[], text) IS
'Returns the Redis key holding the cached result of a query for the current role (format json or rows)';

CREATE FUNCTION cache_query_invalidate(tbl regclass)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cache_query_invalidate'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION cache_query_invalidate(regclass) IS
'Deletes now every cached query result that read the table; returns how many were deleted';

-- Watching a table only for cached query results (no key templates):
-- needed without shared_preload_libraries.
CREATE FUNCTION cache_watch(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @extschema@.cache_unwatch(tbl);
    EXECUTE format('CREATE TRIGGER redis_cache_invalidate AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION @extschema@.cache_invalidate()', tbl);
    EXECUTE format('CREATE TRIGGER redis_cache_invalidate_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.cache_invalidate()', tbl);
END
$$;

COMMENT ON FUNCTION cache_watch(regclass) IS
'Installs the triggers that end cached query results of the table when it changes, without key templates';
