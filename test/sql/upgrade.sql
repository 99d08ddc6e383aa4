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
