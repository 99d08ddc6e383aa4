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
DROP EXTENSION redis_cache;
CREATE EXTENSION redis_cache;

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
