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

-- cache_version() after the upgrade
SELECT expected, stored IS NOT NULL AS has_stored, run_id ~ '^[0-9a-f]{40}$' AS run_id_ok,
       checked_at IS NOT NULL AS checked
  FROM cache_version();
