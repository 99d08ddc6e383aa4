-- Row-change invalidation with the applications' key conventions.
SET redis_cache.key_prefix = 'regress:inv:';
SELECT cache_delete_pattern('*') >= 0 AS cleaned;

CREATE TABLE tenants (id int PRIMARY KEY, subdomain text, domain text, plan text);
CREATE TABLE products (id int PRIMARY KEY, name text);
CREATE TABLE settings (org_id int, name text, value text, PRIMARY KEY (org_id, name));
INSERT INTO tenants VALUES (42, 'acme', 'acme.example', 'pro'), (43, 'globex', NULL, 'free'),
                           (44, 'initech', 'initech.example', 'pro');
INSERT INTO products VALUES (7, 'Anvil'), (70, 'Rocket');
INSERT INTO settings VALUES (3, 'locale', 'de-DE'), (3, 'currency', 'EUR'), (4, 'locale', 'fr-FR');

SELECT cache_watch('tenants', 'tenant:id:{id}', 'tenant:subdomain:{subdomain}', 'tenant:domain:{domain}');
SELECT cache_watch('products', 'product:details:{id}', 'product:variants:{id}:*');
SELECT cache_watch('settings', 'settings:org:{org_id}:{name}', 'settings:org:{org_id}:all');
SELECT * FROM cache_watches();

-- Pattern invalidations are applied by the background worker, one SCAN at
-- a time, oldest first.  Waiting until the keys a step checks are gone is
-- not enough: the SCAN may still run over the rest of the keyspace and
-- delete what the next fill() sets.  wait_patterns() queues one more
-- pattern, on a key of its own, and waits until that key is gone: every
-- pattern queued before it has then finished, and what remains of its own
-- SCAN deletes no other key.
CREATE TABLE sync_marks (n int);
SELECT cache_watch('sync_marks', 'sync:{n}:*');
CREATE SEQUENCE sync_seq;
CREATE PROCEDURE wait_patterns(INOUT done boolean DEFAULT NULL) LANGUAGE plpgsql AS $$
DECLARE
  n bigint := nextval('sync_seq');
BEGIN
  PERFORM cache_set('sync:' || n || ':mark', 'x');
  INSERT INTO sync_marks VALUES (n);
  COMMIT;
  FOR i IN 1..600 LOOP
    done := NOT cache_exists('sync:' || n || ':mark');
    EXIT WHEN done;
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$;

CREATE FUNCTION fill() RETURNS void LANGUAGE sql AS $$
  SELECT cache_set(k, 'cached') FROM unnest(ARRAY[
    'tenant:id:42', 'tenant:id:43', 'tenant:id:44', 'tenant:subdomain:acme', 'tenant:subdomain:acme2',
    'tenant:subdomain:globex', 'tenant:domain:acme.example', 'tenant:domain:',
    'product:details:7', 'product:variants:7:red', 'product:variants:7:blue',
    'product:details:70', 'product:variants:70:red',
    'settings:org:3:locale', 'settings:org:3:currency', 'settings:org:3:all',
    'settings:org:4:locale', 'settings:org:4:all']) k
$$;
CREATE FUNCTION cached() RETURNS text[] LANGUAGE sql AS $$
  SELECT array_agg(k ORDER BY k COLLATE "C") FROM unnest(ARRAY[
    'tenant:id:42', 'tenant:id:43', 'tenant:id:44', 'tenant:subdomain:acme', 'tenant:subdomain:acme2',
    'tenant:subdomain:globex', 'tenant:domain:acme.example', 'tenant:domain:',
    'product:details:7', 'product:variants:7:red', 'product:variants:7:blue',
    'product:details:70', 'product:variants:70:red',
    'settings:org:3:locale', 'settings:org:3:currency', 'settings:org:3:all',
    'settings:org:4:locale', 'settings:org:4:all']) k WHERE cache_exists(k)
$$;

-- UPDATE: OLD and NEW keys (a subdomain change kills the old subdomain too)
SELECT fill();
UPDATE tenants SET subdomain = 'acme2' WHERE id = 42;
SELECT cached();

-- nothing is sent before COMMIT
SELECT fill();
BEGIN;
UPDATE tenants SET plan = 'enterprise' WHERE id = 44;
SELECT cache_exists('tenant:id:44') AS still_cached_before_commit;
COMMIT;
SELECT cache_exists('tenant:id:44') AS gone_after_commit;

-- a rolled-back transaction sends nothing
SELECT fill();
BEGIN;
UPDATE tenants SET plan = 'x' WHERE id = 44;
ROLLBACK;
SELECT cache_exists('tenant:id:44') AS kept_after_rollback;

-- savepoints: only what survives is sent
BEGIN;
SAVEPOINT a;
UPDATE tenants SET plan = 'x' WHERE id = 43;
ROLLBACK TO SAVEPOINT a;
SAVEPOINT b;
SAVEPOINT c;
UPDATE tenants SET plan = 'y' WHERE id = 44;
RELEASE SAVEPOINT c;
SAVEPOINT d;
UPDATE products SET name = 'x' WHERE id = 70;
RELEASE SAVEPOINT d;
ROLLBACK TO SAVEPOINT b;
UPDATE settings SET value = 'CHF' WHERE org_id = 3 AND name = 'currency';
COMMIT;
SELECT cached();

-- an exception block is a subtransaction too
SELECT fill();
DO $$
BEGIN
  UPDATE tenants SET plan = 'z' WHERE id = 43;
  RAISE EXCEPTION 'undo';
EXCEPTION WHEN raise_exception THEN
  UPDATE tenants SET plan = 'z' WHERE id = 44;
END $$;
SELECT cache_exists('tenant:id:43') AS kept, cache_exists('tenant:id:44') AS invalidated;

-- NULL column values produce no key; DELETE and INSERT invalidate too
SELECT fill();
UPDATE tenants SET plan = 'pro' WHERE id = 43;
SELECT cache_exists('tenant:domain:') AS empty_domain_key_untouched,
       cache_exists('tenant:id:43') AS id_invalidated,
       cache_exists('tenant:subdomain:globex') AS subdomain_invalidated;
DELETE FROM tenants WHERE id = 44;
INSERT INTO tenants VALUES (45, 'hooli', NULL, 'free');
SELECT cache_exists('tenant:id:44') AS deleted_row_invalidated;

-- pattern templates: product:variants:7:* but not product:variants:70:*
SELECT fill();
UPDATE products SET name = 'Anvil 2' WHERE id = 7;
CALL wait_patterns();
SELECT cached();

-- settings: the entry and the org's "all" entry
SELECT fill();
UPDATE settings SET value = 'en-GB' WHERE org_id = 3 AND name = 'locale';
SELECT cached();

-- TRUNCATE: every key of every template, placeholders as wildcards
SELECT fill();
TRUNCATE settings;
CALL wait_patterns();
SELECT cached();

-- many rows, deduplicated, one round trip; other tables' keys untouched
SELECT fill();
INSERT INTO tenants SELECT g, 'sub' || g, NULL, 'free' FROM generate_series(1000, 3999) g;
UPDATE tenants SET plan = 'bulk';
SELECT cached();

-- bad templates and misuse
\set VERBOSITY default
SELECT cache_watch('tenants', 'tenant:plan:{nope}');
SELECT cache_watch('tenants', 'tenant:{id');
SELECT cache_watch('tenants', 'tenant:{}');
SELECT cache_watch('tenants', '');
SELECT cache_watch('tenants', E'tenant:\n{id}');
SELECT cache_check_templates('tenants', '{}');
CREATE TABLE misuse (id int);
CREATE TRIGGER before_trg BEFORE UPDATE ON misuse FOR EACH ROW EXECUTE FUNCTION cache_invalidate('m:{id}');
INSERT INTO misuse VALUES (1);
UPDATE misuse SET id = 2;
DROP TRIGGER before_trg ON misuse;
CREATE TRIGGER stmt_trg AFTER UPDATE ON misuse FOR EACH STATEMENT EXECUTE FUNCTION cache_invalidate('m:{id}');
UPDATE misuse SET id = 2;
DROP TRIGGER stmt_trg ON misuse;
CREATE TRIGGER noargs AFTER UPDATE ON misuse FOR EACH ROW EXECUTE FUNCTION cache_invalidate();
UPDATE misuse SET id = 2;
DROP TRIGGER noargs ON misuse;
CREATE TRIGGER badcol AFTER UPDATE ON misuse FOR EACH ROW EXECUTE FUNCTION cache_invalidate('m:{missing}');
UPDATE misuse SET id = 2;
DROP TABLE misuse;
SELECT cache_invalidate();

-- PREPARE TRANSACTION with queued invalidations is refused
BEGIN;
UPDATE tenants SET plan = 'p' WHERE id = 42;
PREPARE TRANSACTION 'regress_rc';
\set VERBOSITY terse

-- unwatch: no more invalidation
SELECT cache_unwatch('tenants');
SELECT fill();
UPDATE tenants SET plan = 'q' WHERE id = 42;
SELECT cache_exists('tenant:id:42') AS not_invalidated_after_unwatch;
SELECT tbl, trigger_name FROM cache_watches();

DROP TABLE tenants, products, settings, sync_marks;
DROP SEQUENCE sync_seq;
DROP PROCEDURE wait_patterns;
DROP FUNCTION fill(), cached();

-- leave nothing behind (test/sql/leave_nothing.psql)
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/leave_nothing.psql
