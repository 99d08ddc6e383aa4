/* redis_cache--1.2--1.3.sql: per-database DDL generations, forgetting namespaces */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION redis_cache UPDATE TO '1.3'" to load this file. \quit

-- Every cached query result now also depends on its database's DDL
-- generation ("ddl:<database oid>"): DDL in one database no longer ends the
-- results of every other database.  Results stored by 1.2 lack it and are
-- treated as stale (refilled on their next use): the upgrade removes no
-- key, each old result is replaced when it is next read.

CREATE FUNCTION cache_forget_namespace(prefix text DEFAULT current_setting('redis_cache.key_prefix'))
RETURNS boolean
AS 'MODULE_PATHNAME', 'cache_forget_namespace'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION cache_forget_namespace(text) IS
'Stops tracking a key_prefix no longer in use (not flushed after a crash, not sent query generation bumps); true when it was tracked';

-- bookkeeping of the whole server: superusers only
REVOKE ALL ON FUNCTION cache_forget_namespace(text) FROM PUBLIC;
