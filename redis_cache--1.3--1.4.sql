/* redis_cache--1.3--1.4.sql: keys and bulk deletes that belong to the extension */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION redis_cache UPDATE TO '1.4'" to load this file. \quit

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
