-- cache_query(), cache_query_json(), cache_query_invalidate(): results,
-- automatic invalidation, bypasses, role isolation, input errors.
-- runs counts executions: a hit returns the run number of the fill.
-- test_nextval() is nextval() declared IMMUTABLE, a lie on purpose: a query
-- calling a volatile function is never cached, an IMMUTABLE function of the
-- database is trusted.  With a constant argument the planner runs it once
-- per execution of the query.
SET redis_cache.key_prefix = 'regress:query:';
SELECT cache_delete_pattern('*') >= 0 AS cleared;

CREATE SEQUENCE runs;
CREATE FUNCTION test_nextval(regclass) RETURNS bigint LANGUAGE sql IMMUTABLE
AS 'SELECT nextval($1)';
CREATE TABLE qt_tenants (id int PRIMARY KEY, name text, plan text);
INSERT INTO qt_tenants VALUES (1, 'acme', 'pro'), (2, 'globex', 'free'), (3, 'initech', 'pro');

-- is a result stored?  (cache_exists() adds key_prefix itself)
CREATE FUNCTION cached(q text, p text[] DEFAULT '{}', f text DEFAULT 'rows')
RETURNS boolean LANGUAGE sql
AS $$ SELECT cache_exists(substr(cache_query_key(q, p, f), length('regress:query:') + 1)) $$;

-- miss, then hit: the same run number
SELECT * FROM cache_query('SELECT id, name, test_nextval(''runs'') AS run FROM qt_tenants WHERE plan = $1 ORDER BY id',
                          ARRAY['pro'], 600) AS t(id int, name text, run bigint);
SELECT * FROM cache_query('SELECT id, name, test_nextval(''runs'') AS run FROM qt_tenants WHERE plan = $1 ORDER BY id',
                          ARRAY['pro'], 600) AS t(id int, name text, run bigint);
-- other parameters, other entry
SELECT * FROM cache_query('SELECT id, name, test_nextval(''runs'') AS run FROM qt_tenants WHERE plan = $1 ORDER BY id',
                          ARRAY['free'], 600) AS t(id int, name text, run bigint);
SELECT cached('SELECT id, name, test_nextval(''runs'') AS run FROM qt_tenants WHERE plan = $1 ORDER BY id', ARRAY['pro']);

-- NULLs, types that print and parse, an empty result
SELECT * FROM cache_query($q$SELECT NULL::text AS a, 1.50::numeric AS b, '{1,2}'::int[] AS c,
                                 '2026-01-02 03:04:05+00'::timestamptz AS d, 'x"y'::text AS e,
                                 true AS f, -2.5e-3::float8 AS g, 9007199254740993::int8 AS h,
                                 '1 day 02:03:04'::interval AS i, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS j,
                                 '2026-02-28'::date AS k, 'NaN'::numeric AS l, NULL::int AS m$q$)
  AS t(a text, b numeric, c int[], d timestamptz, e text, f bool, g float8, h int8,
       i interval, j uuid, k date, l numeric, m int);
-- the same again: now a hit, decoded from Redis
\g
SELECT count(*) FROM cache_query('SELECT id FROM qt_tenants WHERE false') AS t(id int);
SELECT count(*) FROM cache_query('SELECT id FROM qt_tenants WHERE false') AS t(id int);

-- JSON: an array of row objects, readable with HGET <key> data
SELECT cache_query_json('SELECT id, name, test_nextval(''runs'') AS run FROM qt_tenants WHERE id = $1', ARRAY['1']);
SELECT cache_query_json('SELECT id, name, test_nextval(''runs'') AS run FROM qt_tenants WHERE id = $1', ARRAY['1']);
SELECT cache_query_json('SELECT id FROM qt_tenants WHERE false');
SELECT cache_query_key('SELECT 1') ~ '^regress:query:query:\{[0-9]+\.[0-9]+\}:[0-9]+:[0-9]+:[0-9a-f]{64}$' AS key_layout;
SELECT cache_query_key('SELECT 1') <> cache_query_key('SELECT 1', '{}', 'rows') AS kinds_differ;

-- a committed write ends the results that read the table
UPDATE qt_tenants SET name = 'acme corp' WHERE id = 1;
SELECT * FROM cache_query('SELECT id, name, test_nextval(''runs'') AS run FROM qt_tenants WHERE plan = $1 ORDER BY id',
                          ARRAY['pro'], 600) AS t(id int, name text, run bigint);
SELECT cache_query_json('SELECT id, name, test_nextval(''runs'') AS run FROM qt_tenants WHERE id = $1', ARRAY['1']);

-- every kind of write, each ends the cached count
CREATE FUNCTION tenant_count() RETURNS text LANGUAGE sql
AS $$ SELECT cache_query_json('SELECT count(*) AS n, test_nextval(''runs'') AS run FROM qt_tenants')::text $$;
SELECT tenant_count();
SELECT tenant_count();
INSERT INTO qt_tenants VALUES (4, 'umbrella', 'free');
SELECT tenant_count();
DELETE FROM qt_tenants WHERE id = 4;
SELECT tenant_count();
MERGE INTO qt_tenants t USING (VALUES (5, 'hooli', 'pro')) AS s(id, name, plan) ON t.id = s.id
  WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.name, s.plan);
SELECT tenant_count();
COPY qt_tenants FROM stdin;
6	stark	pro
\.
SELECT tenant_count();
WITH gone AS (DELETE FROM qt_tenants WHERE id = 6 RETURNING id) SELECT count(*) FROM gone;
SELECT tenant_count();
-- a rolled-back write changes nothing
BEGIN;
DELETE FROM qt_tenants WHERE id = 5;
ROLLBACK;
SELECT tenant_count();

-- through a view
CREATE VIEW qt_pro AS SELECT id, name FROM qt_tenants WHERE plan = 'pro';
SELECT cache_query_json('SELECT count(*) AS n, test_nextval(''runs'') AS run FROM qt_pro');
SELECT cache_query_json('SELECT count(*) AS n, test_nextval(''runs'') AS run FROM qt_pro');
UPDATE qt_tenants SET plan = 'free' WHERE id = 5;
SELECT cache_query_json('SELECT count(*) AS n, test_nextval(''runs'') AS run FROM qt_pro');

-- partitions: a row moving between partitions ends readers of either
CREATE TABLE qt_orders (region text, id int) PARTITION BY LIST (region);
CREATE TABLE qt_orders_eu PARTITION OF qt_orders FOR VALUES IN ('eu');
CREATE TABLE qt_orders_us PARTITION OF qt_orders FOR VALUES IN ('us');
INSERT INTO qt_orders VALUES ('eu', 1);
SELECT cache_query_json('SELECT count(*) AS n, test_nextval(''runs'') AS run FROM qt_orders_us');
SELECT cache_query_json('SELECT count(*) AS n, test_nextval(''runs'') AS run FROM qt_orders_us');
UPDATE qt_orders SET region = 'us' WHERE id = 1;
SELECT cache_query_json('SELECT count(*) AS n, test_nextval(''runs'') AS run FROM qt_orders_us');
INSERT INTO qt_orders_eu VALUES ('eu', 2);
SELECT cache_query_json('SELECT count(*) AS n, test_nextval(''runs'') AS run FROM qt_orders');

-- TRUNCATE and DDL
TRUNCATE qt_orders;
SELECT cache_query_json('SELECT count(*) AS n, test_nextval(''runs'') AS run FROM qt_orders');
SELECT tenant_count();
ALTER TABLE qt_orders ADD COLUMN note text;
SELECT tenant_count();

-- cache_query_invalidate(): deletes now, counts what it deleted
SELECT tenant_count();
SELECT cache_query_invalidate('qt_tenants') >= 1 AS deleted;
SELECT tenant_count();
SELECT cache_query_invalidate('qt_orders_eu') >= 0 AS no_error;

-- own writes: the transaction sees its uncommitted row, nobody else's result
BEGIN;
INSERT INTO qt_tenants VALUES (7, 'wayne', 'pro');
SELECT tenant_count();
-- and stores nothing, even for queries that name none of its tables
SELECT cache_query_json('SELECT 7 AS seven');
SELECT cached('SELECT 7 AS seven', '{}', 'json');
ROLLBACK;
SELECT tenant_count();
-- REPEATABLE READ neither reads nor fills
SELECT cache_query_invalidate('qt_tenants') >= 0 AS cleared;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT tenant_count();
SELECT tenant_count();
COMMIT;
SELECT cached('SELECT count(*) AS n, test_nextval(''runs'') AS run FROM qt_tenants', '{}', 'json');

-- roles: each role its own entry; row-level security is never cached
CREATE ROLE regress_query_a;
CREATE ROLE regress_query_b;
GRANT SELECT ON qt_tenants TO regress_query_a, regress_query_b;
GRANT USAGE, UPDATE ON SEQUENCE runs TO regress_query_a, regress_query_b;
SET ROLE regress_query_a;
SELECT cache_query_json('SELECT current_user AS who, test_nextval(''runs'') AS run');
SET ROLE regress_query_b;
SELECT cache_query_json('SELECT current_user AS who, test_nextval(''runs'') AS run');
SET ROLE regress_query_a;
SELECT cache_query_json('SELECT current_user AS who, test_nextval(''runs'') AS run');
RESET ROLE;
CREATE TABLE qt_secret (owner name, v int);
ALTER TABLE qt_secret ENABLE ROW LEVEL SECURITY;
CREATE POLICY mine ON qt_secret USING (owner = current_user);
GRANT SELECT ON qt_secret TO regress_query_a;
INSERT INTO qt_secret VALUES ('regress_query_a', 1), ('regress_query_b', 2);
SET ROLE regress_query_a;
SELECT cache_query_json('SELECT v FROM qt_secret');
SELECT cached('SELECT v FROM qt_secret', '{}', 'json');
RESET ROLE;
-- search_path is part of the key: the same text, other tables
CREATE SCHEMA qt_s1;
CREATE SCHEMA qt_s2;
CREATE TABLE qt_s1.site (name text);
CREATE TABLE qt_s2.site (name text);
INSERT INTO qt_s1.site VALUES ('one');
INSERT INTO qt_s2.site VALUES ('two');
SET search_path = qt_s1, public;
SELECT cache_query_json('SELECT name FROM site');
SET search_path = qt_s2, public;
SELECT cache_query_json('SELECT name FROM site');
RESET search_path;
DROP TABLE qt_s1.site, qt_s2.site;
DROP SCHEMA qt_s1, qt_s2;
-- temporary tables are never shared, and never shadowed by a cached result
SELECT cache_query_json('SELECT count(*) AS n FROM qt_tenants');
CREATE TEMP TABLE qt_tenants (id int);
SELECT cache_query_json('SELECT count(*) AS n FROM qt_tenants');
DROP TABLE pg_temp.qt_tenants;
CREATE TABLE qt_parent (v int);
CREATE TEMP TABLE qt_child () INHERITS (qt_parent);
INSERT INTO qt_child VALUES (1);
SELECT cache_query_json('SELECT count(*) AS n FROM qt_parent');
SELECT cached('SELECT count(*) AS n FROM qt_parent', '{}', 'json');
DROP TABLE qt_child, qt_parent;
CREATE TEMP TABLE qt_temp AS SELECT 1 AS v;
SELECT cache_query_json('SELECT v FROM qt_temp');
SELECT cached('SELECT v FROM qt_temp', '{}', 'json');

-- larger than max_value_bytes: returned, not stored
SET redis_cache.max_value_bytes = 1024;
SELECT count(*) FROM cache_query('SELECT g, repeat(''x'', 20) FROM generate_series(1, 50) g') AS t(g int, x text);
SELECT cached('SELECT g, repeat(''x'', 20) FROM generate_series(1, 50) g');
SELECT count(*) FROM cache_query('SELECT g, repeat(''x'', 20) FROM generate_series(1, 5) g') AS t(g int, x text);
SELECT cached('SELECT g, repeat(''x'', 20) FROM generate_series(1, 5) g');
RESET redis_cache.max_value_bytes;

-- the cache disabled: the query still runs
SET redis_cache.enabled = off;
SELECT cache_query_json('SELECT 42 AS answer');
RESET redis_cache.enabled;

-- bad input
\set VERBOSITY default
SELECT * FROM cache_query('SELECT id, name FROM qt_tenants') AS t(id int, name int);
SELECT * FROM cache_query('SELECT id, name FROM qt_tenants') AS t(id int);
SELECT * FROM cache_query('UPDATE qt_tenants SET name = name') AS t(id int);
SELECT * FROM cache_query('WITH d AS (DELETE FROM qt_tenants RETURNING id) SELECT id FROM d') AS t(id int);
SELECT * FROM cache_query('SELECT id FROM qt_tenants FOR UPDATE') AS t(id int);
SELECT * FROM cache_query('SELECT 1; SELECT 2') AS t(n int);
SELECT * FROM cache_query('CREATE TABLE nope (a int)') AS t(n int);
SELECT * FROM cache_query('SELECT id FROM qt_tenants WHERE id = $1', ARRAY['1', '2']) AS t(id int);
SELECT * FROM cache_query('SELECT id FROM qt_tenants WHERE id = $2', ARRAY['1', '2']) AS t(id int);
SELECT * FROM cache_query('SELECT $1 AS v', ARRAY['x']) AS t(v text);
SELECT * FROM cache_query('SELECT id FROM qt_tenants WHERE id = $1', ARRAY['one']) AS t(id int);
SELECT * FROM cache_query('SELECT 1', ARRAY[['a'], ['b']]) AS t(n int);
SELECT * FROM cache_query(NULL) AS t(n int);
SELECT cache_query_json('SELECT 1', '{}', 0);
SELECT cache_query_key('SELECT 1', '{}', 'xml');
SELECT cache_query_invalidate('qt_tenants'::regclass::oid::regclass) >= 0 AS ok;
SET ROLE regress_query_b;
SELECT cache_query_invalidate('qt_tenants');
RESET ROLE;
\set VERBOSITY terse

DROP TABLE qt_secret;
REVOKE ALL ON qt_tenants FROM regress_query_a, regress_query_b;
REVOKE ALL ON SEQUENCE runs FROM regress_query_a, regress_query_b;
DROP ROLE regress_query_a;
DROP ROLE regress_query_b;
DROP TABLE qt_temp;
DROP FUNCTION cached(text, text[], text), tenant_count(), test_nextval(regclass);
DROP VIEW qt_pro;
DROP TABLE qt_tenants, qt_orders;
DROP SEQUENCE runs;

-- leave nothing behind (test/sql/leave_nothing.psql)
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/leave_nothing.psql
