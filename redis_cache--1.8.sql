/*
 * redis_cache--1.8.sql: install version 1.8 directly.
 *
 * Made of the 1.0 install script and every upgrade script in order (the
 * "==== from" lines say which part comes from where), so that a fresh
 * install and an upgraded one hold the same objects; test/sql/upgrade.sql
 * compares the two catalogue by catalogue.  Statements of the upgrades that
 * only adapt an existing installation (adopting 1.3's watches, replacing
 * functions an earlier part defined) find nothing to adapt here.
 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION redis_cache" to load this file. \quit

-- ==== from redis_cache--1.0.sql
/* redis_cache--1.0.sql */


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

-- ==== from redis_cache--1.0--1.1.sql
/* redis_cache--1.0--1.1.sql */


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

-- ==== from redis_cache--1.1--1.2.sql
/* redis_cache--1.1--1.2.sql: query result caching */


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

-- ==== from redis_cache--1.2--1.3.sql
/* redis_cache--1.2--1.3.sql: per-database DDL generations, forgetting namespaces */


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

-- ==== from redis_cache--1.3--1.4.sql
/* redis_cache--1.3--1.4.sql: keys and bulk deletes that belong to the extension */


-- Key templates choose which keys of the shared Redis database a table's
-- writers delete.  From 1.4 the cache_invalidate() trigger honours templates
-- only on tables whose owner is a superuser or may execute
-- cache_watch(regclass, text[]), which PUBLIC no longer may: any role can
-- create a table and a trigger, not choose what it deletes.
--
-- Watches with templates that exist when this update runs are adopted:
-- listed in cache_adopted_watches (table, owner, templates), they keep
-- working while the table keeps its owner and the trigger its templates.
-- It is an extension configuration table, so pg_dump keeps it.  Their
-- owners are not granted cache_watch() here (a GRANT made by an extension
-- script counts as an initial privilege, which pg_dump does not dump: it
-- would vanish at the next restore); a DBA grants it to the roles that
-- define key families, for example the migration role.

REVOKE ALL ON FUNCTION cache_watch(regclass, text[]) FROM PUBLIC;

CREATE TABLE cache_adopted_watches (
    tbl regclass NOT NULL,
    owner regrole NOT NULL,
    key_templates text[] NOT NULL,
    PRIMARY KEY (tbl, key_templates)
);

COMMENT ON TABLE cache_adopted_watches IS
'Key templates of tables watched before version 1.4 by roles that may not call cache_watch(): honoured while the table keeps that owner';

REVOKE ALL ON TABLE cache_adopted_watches FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('cache_adopted_watches', '');

INSERT INTO cache_adopted_watches (tbl, owner, key_templates)
SELECT DISTINCT w.tbl, c.relowner::regrole, w.key_templates
  FROM @extschema@.cache_watches() w
  JOIN pg_class c ON c.oid = w.tbl
  JOIN pg_roles r ON r.oid = c.relowner
 WHERE w.key_templates IS NOT NULL AND NOT r.rolsuper;

-- cache_delete_pattern() deletes in bulk (with an empty key_prefix: every
-- key of the database but the extension's own): the DBA grants it.
REVOKE ALL ON FUNCTION cache_delete_pattern(text) FROM PUBLIC;

-- TRUNCATE triggers are not cloned to partitions: cache_watch() of a
-- partitioned table now installs its TRUNCATE trigger on every partition
-- too, so that truncating one partition ends the parent's keys and cached
-- results.  A partition added later gets the row triggers (cloned by
-- PostgreSQL) but not this one: call cache_watch() again.

CREATE OR REPLACE FUNCTION cache_watch(tbl regclass, VARIADIC key_templates text[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    args text;
    part regclass;
BEGIN
    PERFORM @extschema@.cache_check_templates(tbl, key_templates);
    SELECT string_agg(quote_literal(t), ', ' ORDER BY ord)
      INTO args
      FROM unnest(key_templates) WITH ORDINALITY AS u(t, ord);
    PERFORM @extschema@.cache_unwatch(tbl);
    EXECUTE format('CREATE TRIGGER redis_cache_invalidate AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION @extschema@.cache_invalidate(%s)', tbl, args);
    FOR part IN SELECT @extschema@.cache_watch_truncate_targets(tbl)
    LOOP
        EXECUTE format('CREATE TRIGGER redis_cache_invalidate_truncate AFTER TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.cache_invalidate(%s)', part, args);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION cache_watch(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part regclass;
BEGIN
    PERFORM @extschema@.cache_unwatch(tbl);
    EXECUTE format('CREATE TRIGGER redis_cache_invalidate AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION @extschema@.cache_invalidate()', tbl);
    FOR part IN SELECT @extschema@.cache_watch_truncate_targets(tbl)
    LOOP
        EXECUTE format('CREATE TRIGGER redis_cache_invalidate_truncate AFTER TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.cache_invalidate()', part);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION cache_unwatch(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    trg record;
BEGIN
    FOR trg IN SELECT t.tgname, t.tgrelid::regclass AS rel
                 FROM pg_trigger t
                WHERE (t.tgrelid = tbl
                       AND t.tgname IN ('redis_cache_invalidate', 'redis_cache_invalidate_truncate'))
                   OR (t.tgrelid IN (SELECT @extschema@.cache_watch_truncate_targets(tbl))
                       AND t.tgname = 'redis_cache_invalidate_truncate'
                       AND t.tgfoid = '@extschema@.cache_invalidate()'::regprocedure)
                ORDER BY t.tgrelid = tbl DESC
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg.tgname, trg.rel);
    END LOOP;
END
$$;

COMMENT ON FUNCTION cache_unwatch(regclass) IS
'Removes the invalidation triggers that cache_watch() installed (on the partitions too)';

CREATE FUNCTION cache_watch_truncate_targets(tbl regclass)
RETURNS SETOF regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT tbl
    UNION ALL
    SELECT p.relid
      FROM pg_partition_tree(tbl) p
      JOIN pg_class c ON c.oid = p.relid
     WHERE p.relid <> tbl AND c.relkind IN ('r', 'p')
$$;

COMMENT ON FUNCTION cache_watch_truncate_targets(regclass) IS
'The table and its partitions (all levels): where cache_watch() installs a TRUNCATE trigger';

-- Watches of partitioned tables made by 1.3: add the partitions' TRUNCATE
-- triggers (same templates).
DO $$
DECLARE
    w record;
BEGIN
    FOR w IN SELECT x.tbl, x.key_templates
               FROM @extschema@.cache_watches() x
               JOIN pg_class c ON c.oid = x.tbl
              WHERE x.trigger_name = 'redis_cache_invalidate_truncate'
                AND c.relkind = 'p' AND NOT c.relispartition
    LOOP
        IF w.key_templates IS NULL THEN
            PERFORM @extschema@.cache_watch(w.tbl);
        ELSE
            PERFORM @extschema@.cache_watch(w.tbl, VARIADIC w.key_templates);
        END IF;
    END LOOP;
END
$$;

-- ==== from redis_cache--1.4--1.5.sql
/* redis_cache--1.4--1.5.sql: the keys the extension owns */


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

-- ==== from redis_cache--1.5--1.6.sql
/* redis_cache--1.5--1.6.sql: the functions peers have */


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

-- ==== from redis_cache--1.6--1.7.sql
/* redis_cache--1.6--1.7.sql: a key layout for Redis Cluster */


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

-- ==== from redis_cache--1.7--1.8.sql
/* redis_cache--1.7--1.8.sql: the local cache */

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
