#!/usr/bin/env bash
# Without shared_preload_libraries: statistics are per backend, invalidation
# still happens at commit (patterns scanned at commit), and an undeliverable
# invalidation is reported instead of silently dropped.  The server is
# restarted with preloading again at the end.
set -u
. "$RC_ROOT/test/lib.sh"

LOG="$RC_TMP/postgres.log"
q -c "ALTER SYSTEM SET shared_preload_libraries = 'plpgsql'" >/dev/null
pg_restart
q -c "CREATE EXTENSION IF NOT EXISTS redis_cache" >/dev/null

out=$(q -c "SET redis_cache.key_prefix = 'np:'" -c "SELECT cache_get('tenant:id:1')" \
	-c "SELECT scope, misses FROM cache_stats WHERE family IS NULL")
is "$(echo "$out" | tail -1)" "backend|1" "without preloading cache_stats covers this backend and says so"

q -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS products" \
  -c "CREATE TABLE products (id int PRIMARY KEY, name text)" \
  -c "INSERT INTO products VALUES (7, 'anvil')" \
  -c "SELECT cache_watch('products', 'product:details:{id}', 'product:variants:{id}:*')" >/dev/null
redis_cli set product:details:7 x >/dev/null
redis_cli set product:variants:7:red x >/dev/null
redis_cli set product:variants:70:red x >/dev/null
q -c "UPDATE products SET name = 'anvil2' WHERE id = 7" >/dev/null
is "$(redis_cli exists product:details:7 product:variants:7:red)" "0" "without preloading keys and patterns are invalidated when COMMIT returns"
is "$(redis_cli exists product:variants:70:red)" "1" "the pattern is exact (70 untouched)"

redis_cli set product:details:7 x >/dev/null
cat > "$RC_TMP/np.sql" <<SQL
SELECT cache_ping();
\\! kill -STOP \$(cat $RC_TMP/redis.pid)
UPDATE products SET name = 'anvil3' WHERE id = 7;
\\! kill -CONT \$(cat $RC_TMP/redis.pid)
SQL
out=$(psql -X -At -f "$RC_TMP/np.sql" 2>&1)
like "$out" "cache invalidations of this transaction were not delivered" "without preloading a lost invalidation is reported"
like "$out" "shared_preload_libraries" "the WARNING recommends preloading"
is "$(q -c "SELECT name FROM products WHERE id = 7")" "anvil3" "the commit itself succeeded"

# cache_query: only results over watched tables are cached
q -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS np_q" -c "DROP SEQUENCE IF EXISTS np_runs" \
  -c "CREATE TABLE np_q (id int, v int)" -c "INSERT INTO np_q VALUES (1, 1)" -c "CREATE SEQUENCE np_runs" >/dev/null
Q="SELECT v, nextval(''np_runs'') AS run FROM np_q"
a=$(q -c "SELECT cache_query_json('$Q')")
b=$(q -c "SELECT cache_query_json('$Q')")
[ "$a" != "$b" ] && ok "without preloading results over an unwatched table are not cached ($a, $b)" \
	|| not_ok "without preloading results over an unwatched table are not cached" "$a = $b"
q -c "SELECT cache_watch('np_q')" >/dev/null
a=$(q -c "SELECT cache_query_json('$Q')")
b=$(q -c "SELECT cache_query_json('$Q')")
is "$b" "$a" "after cache_watch(table) its results are cached"
q -c "UPDATE np_q SET v = 2" >/dev/null
like "$(q -c "SELECT cache_query_json('$Q')")" '"v": 2' "the watch trigger of another session ends them at commit"
q -c "DROP TABLE np_q" -c "DROP SEQUENCE np_runs" >/dev/null

q -c "ALTER SYSTEM RESET shared_preload_libraries" -c "DROP TABLE products" >/dev/null
pg_restart
is "$(q -c "SELECT scope FROM cache_stats WHERE family IS NULL")" "server" "with preloading cache_stats covers the server"
if grep -q "terminated by signal" "$LOG"; then not_ok "no backend crashed"; else ok "no backend crashed"; fi
