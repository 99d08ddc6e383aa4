#!/usr/bin/env bash
# test/demo.sh: the mission of redis_cache, end to end (also `make demo`).
# Builds and installs the extension, starts a temporary PostgreSQL (with
# shared_preload_libraries = 'redis_cache') and a redis-server on loopback
# (test/lib.sh), then walks through: watched tables, cache-aside keys that
# the application's Redis client sees, invalidation at commit, query result
# caching, a cache version per deploy, monitoring, and a Redis outage with
# its recovery.  Each step prints the SQL it runs (psql -e) and what
# redis-cli sees.  The stack is stopped and removed on exit.
#
# RC_SKIP_APT=1 skips the package step; RC_KEEP_TMP=1 keeps data and logs.
set -euo pipefail

cd "$(dirname "$0")/.."
RC_ROOT=$(pwd)
export RC_ROOT

. test/lib.sh
rc_install_packages
echo "== build and install"
rc_build_install
trap stack_stop EXIT    # set first: also cleans up if stack_start fails
stack_start

PGLOG=$RC_TMP/postgres.log

# redis-cli as the application's client would use it, each command echoed.
# Two small scripts, so that psql's \! can run them inside a transaction:
#   rc ARGS...      one command, formatted output ("value", 1) ...)
#   rkeys PATTERN   KEYS PATTERN, sorted, one key a line
mkdir -p "$RC_TMP/bin"
cat > "$RC_TMP/bin/rc" <<'SH'
#!/bin/sh
printf '$ redis-cli'
for a in "$@"; do
	case $a in
	*[!A-Za-z0-9:_.-]*|'') printf " '%s'" "$a" ;;
	*) printf ' %s' "$a" ;;
	esac
done
printf '\n'
exec redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --no-raw "$@"
SH
cat > "$RC_TMP/bin/rkeys" <<'SH'
#!/bin/sh
for p in "$@"; do
	printf "\$ redis-cli KEYS '%s'\n" "$p"
	keys=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --raw KEYS "$p" | sort -V)
	if [ -n "$keys" ]; then printf '%s\n' "$keys" | sed 's/^/  /'; else echo '  (empty)'; fi
done
SH
chmod 755 "$RC_TMP/bin/rc" "$RC_TMP/bin/rkeys"
export PATH="$RC_TMP/bin:$PATH"

say() { printf '\n== %s\n' "$1"; shift; [ $# -eq 0 ] || printf -- '-- %s\n' "$@"; printf '\n'; }
# psql echoing each statement; WARNINGs go to stderr, merged here.
sql() { psql -X -q -e -v ON_ERROR_STOP=1 "$@" 2>&1; }

echo "PostgreSQL on 127.0.0.1:$PGPORT (shared_preload_libraries = 'redis_cache'),"
echo "redis-server on 127.0.0.1:$REDIS_PORT, server log $PGLOG"

# ---------------------------------------------------------------------------
say "1. Install: the extension and three application tables" \
	"A multi-tenant application: tenants, products (and their orders), per-org settings."
sql <<'SQL'
CREATE EXTENSION redis_cache;
SELECT cache_ping();
CREATE TABLE tenants (id int PRIMARY KEY, subdomain text UNIQUE, name text, plan text);
INSERT INTO tenants VALUES
  (1, 'acme', 'Acme Corp', 'pro'),
  (2, 'globex', 'Globex', 'free'),
  (3, 'initech', 'Initech', 'pro');
CREATE TABLE products (id int PRIMARY KEY, name text, price numeric(10,2));
INSERT INTO products SELECT g, 'product ' || g, 10 * g FROM generate_series(1, 20) g;
CREATE TABLE settings (org int, key text, value text, PRIMARY KEY (org, key));
INSERT INTO settings VALUES (1, 'locale', 'en_US'), (1, 'theme', 'dark'), (2, 'locale', 'de_DE');
SQL

# ---------------------------------------------------------------------------
say "2. Watch: which Redis keys describe a row" \
	"At commit, a change to a row deletes the keys its templates name ({column} = the row's value)."
sql <<'SQL'
SELECT cache_watch('tenants', 'tenant:id:{id}', 'tenant:subdomain:{subdomain}');
SELECT cache_watch('products', 'product:details:{id}');
SELECT cache_watch('settings', 'settings:org:{org}:{key}');
SELECT tbl, key_templates FROM cache_watches() WHERE trigger_name = 'redis_cache_invalidate';
SELECT * FROM cache_families() ORDER BY family;
SQL

# ---------------------------------------------------------------------------
say "3. Cache-aside: the application fills the cache" \
	"From SQL with cache_set, or with its own Redis client: the keys are plain strings, shared."
sql <<'SQL'
SELECT count(*) FILTER (WHERE cache_set('tenant:id:' || id, row_to_json(t)::text, 600)) AS tenant_ids,
       count(*) FILTER (WHERE cache_set('tenant:subdomain:' || subdomain, id::text, 600)) AS subdomains
  FROM tenants t;
SQL
rc SET product:details:1 '{"id":1,"name":"product 1","price":10}' EX 600
rc SET product:details:2 '{"id":2,"name":"product 2","price":20}' EX 600
rc SET settings:org:1:locale en_US
rc SET settings:org:2:locale de_DE
rc GET tenant:subdomain:acme
rc GET tenant:id:1
rc TTL tenant:id:1
rkeys 'tenant:*' 'product:*' 'settings:*'
sql <<'SQL'
SELECT cache_get('product:details:2');
SELECT cache_mget(ARRAY['settings:org:1:locale', 'settings:org:2:locale', 'settings:org:3:locale']);
SQL

# ---------------------------------------------------------------------------
say "4. An UPDATE removes exactly its keys at commit" \
	"Globex (id 2) changes plan: tenant:id:2 and tenant:subdomain:globex go at COMMIT, the others stay." \
	"A ROLLBACK sends nothing."
sql <<'SQL'
\! rkeys 'tenant:*'
BEGIN;
UPDATE tenants SET plan = 'pro' WHERE id = 2;
\echo '-- inside the transaction the keys are still there:'
\! rc EXISTS tenant:id:2 tenant:subdomain:globex
COMMIT;
\echo '-- after COMMIT: the two keys of Globex are gone, those of Acme and Initech stay:'
\! rkeys 'tenant:*'
BEGIN;
UPDATE tenants SET plan = 'free' WHERE id = 3;
DELETE FROM settings WHERE org = 1 AND key = 'locale';
ROLLBACK;
\echo '-- after ROLLBACK: nothing was deleted:'
\! rkeys 'tenant:id:3' 'settings:org:1:*'
UPDATE settings SET value = 'fr_FR' WHERE org = 2 AND key = 'locale';
\echo '-- an UPDATE outside a transaction block commits at once: settings:org:2:locale is gone:'
\! rkeys 'settings:*'
SQL

# ---------------------------------------------------------------------------
say "5. cache_query: a query result cached in Redis, ended by a write" \
	"100k orders; the first call runs the query (miss), the second reads Redis (hit)." \
	"No watch is needed: a committed write to a table the query read ends the result."
sql <<'SQL'
CREATE TABLE orders (id int PRIMARY KEY, product_id int REFERENCES products, qty int);
INSERT INTO orders SELECT g, 1 + g % 20, 1 + g % 7 FROM generate_series(1, 100000) g;
ANALYZE orders;
\set top3 'SELECT p.name, count(*) AS orders, sum(o.qty * p.price) AS revenue FROM orders o JOIN products p ON p.id = o.product_id GROUP BY p.name ORDER BY revenue DESC LIMIT 3'
\set one 'SELECT p.name, p.price, sum(o.qty) AS units, sum(o.qty * p.price) AS revenue FROM products p JOIN orders o ON o.product_id = p.id WHERE p.id = $1 GROUP BY p.id'
\timing on
\echo '-- 1st call: a miss, the query runs and its result is stored'
SELECT * FROM cache_query(:'top3', ttl_seconds => 600) AS t(name text, orders bigint, revenue numeric);
\echo '-- 2nd call: a hit, read from Redis'
SELECT * FROM cache_query(:'top3', ttl_seconds => 600) AS t(name text, orders bigint, revenue numeric);
\echo '-- the same as JSON, with a parameter: a miss, then a hit'
SELECT cache_query_json(:'one', ARRAY['1']);
SELECT cache_query_json(:'one', ARRAY['1']);
\timing off
SELECT family, hits, misses, sets FROM cache_stats WHERE family = 'query';
\echo '-- the application can read the JSON result straight from Redis (cache_query_key gives the key):'
SELECT cache_query_key(:'one', ARRAY['1']) AS key \gset
\setenv QKEY :key
\! rc HGET "$QKEY" data
\echo '-- product 1 doubles its price: at commit, the results that read products end'
UPDATE products SET price = price * 2 WHERE id = 1;
\timing on
\echo '-- a miss again, with the new price; then a hit'
SELECT cache_query_json(:'one', ARRAY['1']);
SELECT cache_query_json(:'one', ARRAY['1']);
\timing off
SELECT family, hits, misses, sets FROM cache_stats WHERE family = 'query';
SQL

# ---------------------------------------------------------------------------
say "6. A cache version per deploy" \
	"A new redis_cache.version flushes the keys the cache owns (watched families, query results)," \
	"once; the application's other keys in the same Redis (sessions, job queues) survive."
rc SET session:abc '{"user":42}'
rc RPUSH queues:default job-1 job-2
rkeys 'tenant:*' 'product:*' 'settings:*'
echo "\$ redis-cli --scan --pattern 'query:*' | wc -l"
redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --scan --pattern 'query:*' | wc -l
sql <<'SQL'
SELECT expected, stored FROM cache_version();
ALTER SYSTEM SET redis_cache.version = 'deploy-2';
SELECT pg_reload_conf();
SQL
# new sessions see the new version once the postmaster has reloaded
for _ in $(seq 1 100); do
	[ "$(q -c 'SHOW redis_cache.version')" = deploy-2 ] && break
	sleep 0.05
done
echo "-- a new session (each one checks the version at login):"
sql <<'SQL'
SELECT expected, stored FROM cache_version();
SELECT cache_get('tenant:id:1') IS NULL AS flushed;
SQL
rkeys 'tenant:*' 'product:*' 'settings:*'
echo "\$ redis-cli --scan --pattern 'query:*' | wc -l"
redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --scan --pattern 'query:*' | wc -l
rc GET session:abc
rc LRANGE queues:default 0 -1
rc GET cache:version
echo "\$ grep flushed $PGLOG"
grep flushed "$PGLOG" || true

# ---------------------------------------------------------------------------
say "7. Monitoring" \
	"Server-wide counters: the totals row (family NULL), then one row per key family."
sql <<'SQL'
SELECT scope, family, hits, misses, round(hit_ratio::numeric, 2) AS hit_ratio, sets, deletes, invalidations_sent AS inval_sent,
       flushes, round_trips
  FROM cache_stats;
SELECT jsonb_pretty(cache_health());
SQL

# ---------------------------------------------------------------------------
say "8. A Redis outage and the recovery" \
	"redis-server frozen (SIGSTOP): reads miss after command_timeout_ms (250 ms) with a WARNING, the" \
	"query goes on; a write still commits, its invalidation handed to the background worker."
sql <<'SQL'
SELECT count(cache_set('tenant:id:' || id, row_to_json(t)::text, 600)) AS filled FROM tenants t WHERE id IN (1, 3);
\! rc GET tenant:id:1
\! rkeys 'tenant:*'
\echo '$ kill -STOP <redis-server pid>'
\! kill -STOP "$(cat "$RC_TMP/redis.pid")"
\timing on
SELECT cache_get('tenant:id:3') AS value;
\timing off
SQL
echo "-- another session (its login version check gives up after 250 ms):"
sql <<'SQL'
\timing on
UPDATE tenants SET name = 'Acme Inc' WHERE id = 1;
\timing off
SELECT id, name FROM tenants WHERE id = 1;
SELECT invalidations_queued FROM cache_stats WHERE family IS NULL;
SELECT h -> 'reachable' AS reachable, h -> 'replay_queued' AS replay_queued FROM cache_health() h;
SQL
echo "\$ kill -CONT <redis-server pid>"
t0=$(date +%s%N)
redis_resume
echo "-- until the worker has delivered, SQL misses on tenant:id:1 even if Redis still holds it:"
rc GET tenant:id:1
sql -c "SELECT cache_get('tenant:id:1') AS value;"
echo "-- the worker retries every 500 ms (once its circuit breaker, open after 3 faults, lets it: up to 5 s)"
gone=""
for _ in $(seq 1 300); do
	if [ "$(redis_cli exists tenant:id:1)" = 0 ]; then gone=1; break; fi
	sleep 0.05
done
if [ -z "$gone" ]; then
	echo "tenant:id:1 is still in Redis 15 s after SIGCONT" >&2
	exit 1
fi
echo "-- tenant:id:1 gone $(( ($(date +%s%N) - t0) / 1000000 )) ms after SIGCONT; tenant:id:3 stays:"
rkeys 'tenant:*'
echo "\$ grep replayed $PGLOG"
for _ in $(seq 1 40); do grep -q replayed "$PGLOG" && break; sleep 0.05; done
grep replayed "$PGLOG" || echo "(no such line)"
sql <<'SQL'
SELECT cache_get('tenant:id:1') IS NULL AS miss, cache_get('tenant:id:3') AS value;
SELECT h -> 'reachable' AS reachable, h -> 'replay_queued' AS replay_queued,
       h -> 'replay_replayed' AS replay_replayed FROM cache_health() h;
SQL

say "done"
