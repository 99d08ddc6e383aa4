/* redis_cache--1.5--1.6.sql: the functions peers have */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION redis_cache UPDATE TO '1.6'" to load this file. \quit

-- 1.6 adds add-if-absent, set-many, touch and binary values, as pgmemcache
-- and application caches have them, and lets cache_query_key() leave out
-- key_prefix for clients that add it themselves.  Nothing is flushed: the
-- key layout is unchanged.  (The 1.6 library also brings TLS, Sentinel and
-- redis_cache.url, which need no SQL objects.)

CREATE FUNCTION cache_add(key text, value text, ttl_seconds int DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'cache_add'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cache_add(text, text, int) IS
'Stores value under key_prefix || key only if the key does not exist (SET NX) with a TTL (NULL: redis_cache.default_ttl); true when stored, false when the key exists, NULL when Redis is unavailable';

CREATE FUNCTION cache_set_many(keys text[], "values" text[], ttl_seconds int DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cache_set_many'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cache_set_many(text[], text[], int) IS
'Stores keys[i] = values[i] with one TTL (NULL: redis_cache.default_ttl), pipelined in one round trip per 1000 keys; returns how many were stored (0 when Redis is unavailable)';

CREATE FUNCTION cache_touch(key text, ttl_seconds int DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'cache_touch'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cache_touch(text, int) IS
'Gives an existing key a new TTL (NULL: redis_cache.default_ttl; with a default of 0 the key no longer expires); true when the key exists, false when not or when Redis is unavailable';

CREATE FUNCTION cache_set(key text, value bytea, ttl_seconds int DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'cache_set'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cache_set(text, bytea, int) IS
'Stores the raw bytes of value under key_prefix || key with a TTL (NULL: redis_cache.default_ttl); true when stored';

CREATE FUNCTION cache_get_bytea(key text)
RETURNS bytea
AS 'MODULE_PATHNAME', 'cache_get_bytea'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION cache_get_bytea(text) IS
'Returns the raw bytes stored in Redis under key_prefix || key (any value, also one that is not text), or NULL on a miss or when Redis is unavailable';

DROP FUNCTION cache_query_key(text, text[], text);

CREATE FUNCTION cache_query_key(query text, params text[] DEFAULT '{}', format text DEFAULT 'json',
								with_prefix boolean DEFAULT true)
RETURNS text
AS 'MODULE_PATHNAME', 'cache_query_key'
LANGUAGE C STABLE PARALLEL SAFE;

COMMENT ON FUNCTION cache_query_key(text, text[], text, boolean) IS
'Returns the Redis key holding the cached result of a query for the current role (format json or rows): with redis_cache.key_prefix, or without it when with_prefix is false (for clients that add the prefix themselves)';

-- monitoring roles read the statistics through the view as through the
-- function (cache_stats(), which PUBLIC may execute)
GRANT SELECT ON cache_stats TO PUBLIC;
