/* redis_cache--1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION redis_cache" to load this file. \quit

CREATE FUNCTION cache_get(key text)
RETURNS text
AS 'MODULE_PATHNAME', 'cache_get'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION cache_get(text) IS
'Returns the value stored in Redis under key_prefix || key, or NULL on a miss or when Redis is unavailable';

CREATE FUNCTION cache_set(key text, value text, ttl_seconds int DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'cache_set'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cache_set(text, text, int) IS
'Stores value under key_prefix || key with a TTL (NULL: redis_cache.default_ttl); true when stored';

CREATE FUNCTION cache_delete(VARIADIC keys text[])
RETURNS bigint
AS 'MODULE_PATHNAME', 'cache_delete'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION cache_delete(text[]) IS
'Removes the given keys in one round trip; returns how many existed';

CREATE FUNCTION cache_exists(key text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'cache_exists'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION cache_exists(text) IS
'True when key exists in Redis';

CREATE FUNCTION cache_ttl(key text)
RETURNS int
AS 'MODULE_PATHNAME', 'cache_ttl'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION cache_ttl(text) IS
'Seconds until key expires; NULL when it is absent or has no expiry';

CREATE FUNCTION cache_incr(key text, delta bigint DEFAULT 1, ttl_seconds int DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cache_incr'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cache_incr(text, bigint, int) IS
'Atomically adds delta to a counter and returns the new value; the TTL applies only when the call creates the counter';

CREATE FUNCTION cache_mget(keys text[])
RETURNS text[]
AS 'MODULE_PATHNAME', 'cache_mget'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION cache_mget(text[]) IS
'Reads many keys in one round trip; NULL elements are misses';

CREATE FUNCTION cache_delete_pattern(pattern text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cache_delete_pattern'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION cache_delete_pattern(text) IS
'Removes keys matching a glob pattern within key_prefix, using SCAN and UNLINK in batches';

CREATE FUNCTION cache_lock(name text, ttl_seconds int DEFAULT 30)
RETURNS text
AS 'MODULE_PATHNAME', 'cache_lock'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION cache_lock(text, int) IS
'Takes a lock key with SET NX EX; returns the token that releases it, or NULL when held elsewhere';

CREATE FUNCTION cache_unlock(name text, token text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'cache_unlock'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION cache_unlock(text, text) IS
'Releases a lock if it is still held with this token (atomic compare-and-delete)';

CREATE FUNCTION cache_ping()
RETURNS text
AS 'MODULE_PATHNAME', 'cache_ping'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION cache_ping() IS
'Health check: PONG when Redis answers, NULL otherwise';
