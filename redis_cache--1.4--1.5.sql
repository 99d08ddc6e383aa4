/* redis_cache--1.4--1.5.sql: the keys the extension owns */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION redis_cache UPDATE TO '1.5'" to load this file. \quit

-- From 1.5 a bulk delete (after a PostgreSQL crash, a Redis restart or
-- restore, a cache version change, an overflowing replay queue) removes only
-- the keys the extension owns: its query results, the families of watched
-- tables' key templates ('tenant:id:{id}' owns 'tenant:id:*') and the
-- families a superuser declares in redis_cache.cache_families.  Never a
-- whole prefix or database.  Watches made before 1.5 get their families
-- recorded in Redis by their tables' next write.

CREATE FUNCTION cache_families(OUT family text, OUT source text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'cache_families'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION cache_families() IS
'Key families (glob patterns after redis_cache.key_prefix) the cache owns besides its query results: source ''setting'' (redis_cache.cache_families) or ''watch'' (templates of watched tables, recorded in Redis). Bulk deletes remove nothing else.';
