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
