/* redis_cache--1.6--1.7.sql: a key layout for Redis Cluster */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION redis_cache UPDATE TO '1.7'" to load this file. \quit

-- 1.7 changes the layout of the keys the extension keeps for itself, so
-- that each Lua script declares all its keys and they share one Redis
-- Cluster slot; no SQL object changes.  The library does the rest:
--
-- - Query results, generations, dependency sets and locks move from
--   <prefix>query:<system identifier>.<timeline>: to
--   <prefix>query:{<system identifier>.<timeline>}: (a hashtag per
--   PostgreSQL cluster's namespace).  Results of the old layout are never
--   read again: they expire with their TTL, and the next flush of the
--   prefix's owned keys deletes them and the old generation counters.
-- - The cache version's bookkeeping moves from <prefix>cache:version,
--   cache:versions, cache:run_id, cache:flush, cache:flushed and
--   cache:families to <prefix>{cache}:version, ... (one slot).  On a
--   standalone Redis the first version check of the new library renames
--   the old keys atomically, so the upgrade is not taken for a first run;
--   both names stay reserved to the extension.
