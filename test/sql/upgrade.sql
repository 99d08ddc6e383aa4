-- The 1.0 install script followed by every upgrade script gives the
-- current version.
DROP EXTENSION redis_cache;
CREATE EXTENSION redis_cache VERSION '1.0';
SELECT extversion FROM pg_extension WHERE extname = 'redis_cache';
ALTER EXTENSION redis_cache UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'redis_cache';

-- every function is documented
SELECT p.proname
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'redis_cache'
 WHERE obj_description(p.oid, 'pg_proc') IS NULL;

SELECT p.proname COLLATE "C" AS function
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'redis_cache'
 ORDER BY 1;

-- what PUBLIC may not execute (see README, Security)
SELECT p.oid::regprocedure::text COLLATE "C" AS not_for_public
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'redis_cache'
 WHERE NOT EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                    WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
 ORDER BY 1;

-- 1.3 to 1.4: watches made by 1.3 keep working (adopted: listed in
-- cache_adopted_watches), partitions of a watched table get its TRUNCATE
-- trigger.
DROP EXTENSION redis_cache;
CREATE EXTENSION redis_cache VERSION '1.3';
SET redis_cache.key_prefix = 'regress:upgrade:';
CREATE ROLE regress_upgrade_owner;
CREATE ROLE regress_upgrade_other;
CREATE TABLE regress_upgrade_t (id int PRIMARY KEY, name text);
CREATE TABLE regress_upgrade_p (id int, region text) PARTITION BY LIST (region);
CREATE TABLE regress_upgrade_p_eu PARTITION OF regress_upgrade_p FOR VALUES IN ('eu');
CREATE TABLE regress_upgrade_p_us PARTITION OF regress_upgrade_p FOR VALUES IN ('us');
ALTER TABLE regress_upgrade_t OWNER TO regress_upgrade_owner;
ALTER TABLE regress_upgrade_p OWNER TO regress_upgrade_owner;
ALTER TABLE regress_upgrade_p_eu OWNER TO regress_upgrade_owner;
ALTER TABLE regress_upgrade_p_us OWNER TO regress_upgrade_owner;
SELECT cache_watch('regress_upgrade_t', 'upgrade:t:{id}');
SELECT cache_watch('regress_upgrade_p', 'upgrade:p:{region}:{id}');
ALTER EXTENSION redis_cache UPDATE TO '1.4';
SELECT extversion FROM pg_extension WHERE extname = 'redis_cache';
SELECT has_function_privilege('regress_upgrade_owner', 'cache_watch(regclass, text[])', 'EXECUTE') AS owner_granted,
       has_function_privilege('regress_upgrade_other', 'cache_watch(regclass, text[])', 'EXECUTE') AS other_granted,
       has_function_privilege('regress_upgrade_other', 'cache_delete_pattern(text)', 'EXECUTE') AS other_may_delete_pattern;
SELECT tbl, trigger_name, events, key_templates FROM cache_watches()
 WHERE tbl::text LIKE 'regress_upgrade%';
SELECT tbl, owner, key_templates FROM cache_adopted_watches ORDER BY tbl::text COLLATE "C";

-- the owner's writes still invalidate
SET ROLE regress_upgrade_owner;
SELECT cache_set('upgrade:t:1', 'cached');
INSERT INTO regress_upgrade_t VALUES (1, 'one');
SELECT cache_exists('upgrade:t:1') AS t_key_left;
SELECT cache_set('upgrade:p:eu:5', 'cached');
INSERT INTO regress_upgrade_p VALUES (5, 'eu');
TRUNCATE regress_upgrade_p_eu;
RESET ROLE;
-- patterns are applied by the worker, just after the commit
DO $$
BEGIN
    FOR i IN 1..200 LOOP
        EXIT WHEN NOT cache_exists('upgrade:p:eu:5');
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SELECT cache_exists('upgrade:p:eu:5') AS partition_key_left;

-- a role that may not call cache_watch() cannot choose what a trigger deletes
SET ROLE regress_upgrade_other;
CREATE TEMP TABLE regress_upgrade_mine (id int);
CREATE TRIGGER wipe AFTER INSERT ON regress_upgrade_mine
    FOR EACH ROW EXECUTE FUNCTION cache_invalidate('*');
\set VERBOSITY terse
INSERT INTO regress_upgrade_mine VALUES (1);
SELECT cache_watch('regress_upgrade_mine', 'upgrade:t:{id}');
SELECT cache_delete_pattern('*');
SELECT cache_set('cache:version', 'x');
\set VERBOSITY default
DROP TABLE regress_upgrade_mine;
RESET ROLE;

DROP TABLE regress_upgrade_t, regress_upgrade_p;
DROP EXTENSION redis_cache;
CREATE EXTENSION redis_cache;
DROP ROLE regress_upgrade_owner, regress_upgrade_other;

-- 1.4 to 1.5: cache_families(); a watched template's family is owned (and
-- recorded in Redis with the watch); a template must begin with literal
-- text, so that no family covers the whole database.
DROP EXTENSION redis_cache;
CREATE EXTENSION redis_cache VERSION '1.4';
ALTER EXTENSION redis_cache UPDATE TO '1.5';
SELECT extversion FROM pg_extension WHERE extname = 'redis_cache';
CREATE TABLE regress_upgrade_f (id int PRIMARY KEY, name text);
SELECT cache_watch('regress_upgrade_f', 'upgrade:f:{id}', 'upgrade:f:name:{name}');
SELECT family, source FROM cache_families() ORDER BY family COLLATE "C";
\set VERBOSITY terse
SELECT cache_watch('regress_upgrade_f', '{id}:f');
\set VERBOSITY default
DROP TABLE regress_upgrade_f;

-- 1.5 to 1.6: the functions peers have; cache_query_key() gains with_prefix
ALTER EXTENSION redis_cache UPDATE TO '1.6';
SELECT extversion FROM pg_extension WHERE extname = 'redis_cache';
SELECT pg_get_function_arguments('cache_query_key(text, text[], text, boolean)'::regprocedure);

-- 1.6 to 1.7: the key layout for Redis Cluster is the library's; the
-- upgrade script exists and changes no object
ALTER EXTENSION redis_cache UPDATE TO '1.7';
SELECT extversion FROM pg_extension WHERE extname = 'redis_cache';

-- 1.7 to 1.8: cache_stats gains the local cache's counters, as its last
-- columns (the 1.7 definition reads the 1.8 library's rows meanwhile)
SELECT count(*) AS columns_1_7 FROM cache_stats WHERE family IS NULL;
ALTER EXTENSION redis_cache UPDATE TO '1.8';
SELECT extversion FROM pg_extension WHERE extname = 'redis_cache';
SELECT local_hits >= 0 AS has_local_hits, local_discards >= 0 AS has_local_discards
  FROM cache_stats WHERE family IS NULL;

-- a fresh install of the current version (its own install script) holds
-- exactly the objects of 1.0 followed by every upgrade: members, function
-- definitions, privileges, comments, tables and views
CREATE TEMP VIEW regress_extension_objects AS
SELECT pg_describe_object(d.classid, d.objid, d.objsubid) AS object,
       CASE WHEN d.classid = 'pg_proc'::regclass THEN
              (SELECT concat_ws(' | ', pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
                                p.provolatile, p.proisstrict, p.proparallel, p.prosrc, p.probin,
                                p.proacl::text, obj_description(p.oid, 'pg_proc'))
                 FROM pg_proc p WHERE p.oid = d.objid)
            WHEN d.classid = 'pg_class'::regclass THEN
              (SELECT concat_ws(' | ', c.relkind, c.relacl::text, obj_description(c.oid, 'pg_class'),
                                (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
                                   FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
                                CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END)
                 FROM pg_class c WHERE c.oid = d.objid)
       END AS definition
  FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'redis_cache'
 WHERE d.deptype = 'e';
CREATE TEMP TABLE regress_upgraded AS SELECT * FROM regress_extension_objects;
DROP EXTENSION redis_cache;
CREATE EXTENSION redis_cache;
SELECT extversion FROM pg_extension WHERE extname = 'redis_cache';
CREATE TEMP TABLE regress_fresh AS SELECT * FROM regress_extension_objects;
SELECT count(*) AS objects FROM regress_fresh;
SELECT 'only upgraded' AS side, * FROM (SELECT * FROM regress_upgraded EXCEPT SELECT * FROM regress_fresh) u
UNION ALL
SELECT 'only fresh', * FROM (SELECT * FROM regress_fresh EXCEPT SELECT * FROM regress_upgraded) f;
DROP VIEW regress_extension_objects;
DROP TABLE regress_upgraded, regress_fresh;

-- cache_version() after the upgrade, in a namespace of our own.  The version
-- expected is the server's (redis_cache.version, else REDIS_CACHE_VERSION,
-- else "1"): compared, never printed.
SET redis_cache.key_prefix = 'regress:upgrade:';
SELECT current_setting('redis_cache.version') IN ('', expected) AS expected_is_configured,
       stored = expected AS stored_is_expected, run_id ~ '^[0-9a-f]{40}$' AS run_id_ok,
       checked_at IS NOT NULL AS checked
  FROM cache_version();

-- leave nothing behind (test/sql/leave_nothing.psql)
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/leave_nothing.psql
