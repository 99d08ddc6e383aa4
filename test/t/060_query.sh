#!/usr/bin/env bash
# cache_query under concurrency and faults, against a real redis-server:
# no stale fill when a writer commits during a miss, a writer/reader race,
# the stampede lock, damaged and foreign values in Redis, Redis stopped and
# paused, a clean restart (the table registry file), and writers in
# sessions with another key_prefix.
set -u
. "$RC_ROOT/test/lib.sh"

LOG="$RC_TMP/postgres.log"
q -c "CREATE EXTENSION IF NOT EXISTS redis_cache" >/dev/null
q -c "SET client_min_messages = warning" \
  -c "DROP TABLE IF EXISTS qc" -c "DROP SEQUENCE IF EXISTS qc_runs" \
  -c "CREATE TABLE qc (id int PRIMARY KEY, v int)" \
  -c "INSERT INTO qc SELECT g, 1 FROM generate_series(1, 10) g" \
  -c "CREATE SEQUENCE qc_runs" >/dev/null

# ---- no stale fill ----------------------------------------------------------
# The reader's snapshot predates the UPDATE; it stores after the commit.
SLOW="SELECT qc.v FROM qc, pg_sleep(1) WHERE qc.id = 1"
q -c "SELECT cache_query_json('$SLOW')" >"$RC_TMP/slow.out" 2>&1 &
reader=$!
sleep 0.3
q -c "UPDATE qc SET v = 2 WHERE id = 1" >/dev/null
wait $reader
is "$(cat "$RC_TMP/slow.out")" '[{"v": 1}]' "the slow reader saw the row before the commit (the race happened)"
is "$(q -c "SELECT cache_query_json('$SLOW')")" '[{"v": 2}]' "its result was not stored: the next call sees the commit"
is "$(q -c "SELECT cache_query_json('$SLOW')")" '[{"v": 2}]' "and the fresh result is served from then on"

# ---- writers against cache_query readers -------------------------------------
cat >"$RC_TMP/qc_write.sql" <<'SQL'
UPDATE qc SET v = v + 1 WHERE id = 2;
SQL
cat >"$RC_TMP/qc_read.sql" <<'SQL'
SELECT cache_query_json('SELECT v FROM qc WHERE id = 2');
SELECT * FROM cache_query('SELECT sum(v)::bigint FROM qc') AS t(s bigint);
SQL
stale=0
for round in 1 2 3 4 5; do
	pgbench -n -T 2 -c 4 -j 2 -f "$RC_TMP/qc_write.sql@1" -f "$RC_TMP/qc_read.sql@3" \
		>"$RC_TMP/qc_bench.out" 2>&1 || { cat "$RC_TMP/qc_bench.out"; stale=$((stale + 100)); }
	got=$(q -c "SELECT cache_query_json('SELECT v FROM qc WHERE id = 2')")
	want=$(q -c "SELECT json_agg(json_build_object('v', v))::jsonb FROM qc WHERE id = 2")
	[ "$got" = "$want" ] || { stale=$((stale + 1)); echo "# round $round: cached $got, table $want"; }
	got=$(q -c "SELECT s FROM cache_query('SELECT sum(v)::bigint FROM qc') AS t(s bigint)")
	want=$(q -c "SELECT sum(v) FROM qc")
	[ "$got" = "$want" ] || { stale=$((stale + 1)); echo "# round $round: cached sum $got, table $want"; }
done
is "$stale" "0" "5 rounds of 2 s writers vs cache_query readers: no stale result after the writers stop"
tps=$(grep -oE 'tps = [0-9.]+' "$RC_TMP/qc_bench.out" | head -1)
echo "# last round: $tps"

# ---- stampede ------------------------------------------------------------------
STAMPEDE="SELECT nextval(''qc_runs'') AS run FROM pg_sleep(0.5)"
for i in $(seq 1 20); do
	q -c "SELECT cache_query_json('$STAMPEDE')" >"$RC_TMP/st.$i" 2>&1 &
done
wait
is "$(cat "$RC_TMP"/st.* | sort -u)" '[{"run": 1}]' "20 backends missing at once all get the first run's result"
is "$(q -c "SELECT last_value FROM qc_runs")" "1" "the query ran once"

# the holder fails: waiters do not wait for the lock timeout
FAIL="SELECT 1 / (nextval(''qc_runs'') - 2)::int AS x FROM pg_sleep(0.5)"
q -c "SELECT cache_query_json('$FAIL')" >"$RC_TMP/fail.out" 2>&1 &
holder=$!
sleep 0.2
t0=$(now_ms)
waiter=$(q -c "SET redis_cache.query_lock_timeout_ms = 10000" -c "SELECT cache_query_json('$FAIL')" 2>&1)
t1=$(now_ms)
wait $holder
like "$(cat "$RC_TMP/fail.out")" "division by zero" "the lock holder's query failed"
is "$waiter" '[{"x": 1}]' "the waiter ran the query itself"
cmp_le $((t1 - t0)) 3000 "the waiter went on when the lock was released, not after 10 s"

# ---- damaged and foreign values ----------------------------------------------------
q -c "SELECT cache_query_json('SELECT v FROM qc WHERE id = 3')" >/dev/null
JKEY=$(q -c "SELECT cache_query_key('SELECT v FROM qc WHERE id = 3')")
q -c "SELECT * FROM cache_query('SELECT id, v FROM qc WHERE id >= 8 ORDER BY id') AS t(id int, v int)" >/dev/null
RKEY=$(q -c "SELECT cache_query_key('SELECT id, v FROM qc WHERE id >= 8 ORDER BY id', '{}', 'rows')")
is "$(redis_cli hget "$JKEY" data)" '[{"v":1}]' "applications read a JSON result with HGET <key> data"
like "$(redis_cli hget "$RKEY" meta)" '^redis_cache/1 rows [0-9]+ [0-9a-f]{8}$' "the meta field names format, length and checksum"

rows_call() {
	psql -X -At -c "SELECT string_agg(id || '=' || v, ',') FROM cache_query('SELECT id, v FROM qc WHERE id >= 8 ORDER BY id') AS t(id int, v int)" 2>&1
}
json_call() {
	psql -X -At -c "SELECT cache_query_json('SELECT v FROM qc WHERE id = 3')" 2>&1
}
data=$(redis_cli --no-raw hget "$RKEY" data)
len=$(redis_cli hstrlen "$RKEY" data)
redis_cli eval "local d = redis.call('HGET', KEYS[1], 'data') redis.call('HSET', KEYS[1], 'data', string.sub(d, 1, #d - 3)) return 1" 1 "$RKEY" >/dev/null
out=$(rows_call)
like "$out" "unusable: truncated" "a truncated rows value is a miss with a WARNING"
like "$out" "8=1,9=1,10=1" "and the right rows are returned"
is "$(redis_cli hstrlen "$RKEY" data)" "$len" "and the entry is stored again"
redis_cli eval "local d = redis.call('HGET', KEYS[1], 'data') redis.call('HSET', KEYS[1], 'data', string.sub(d, 1, 20) .. 'Z' .. string.sub(d, 22)) return 1" 1 "$RKEY" >/dev/null
out=$(rows_call)
like "$out" "unusable: checksum mismatch" "a corrupted byte is caught by the checksum"
like "$out" "8=1,9=1,10=1" "and the right rows are returned"
redis_cli hset "$RKEY" meta "redis_cache/9 rows 1 00000000" >/dev/null
like "$(rows_call)" "unusable: not a redis_cache/1" "another format version is a miss with a WARNING"
redis_cli del "$RKEY" >/dev/null
redis_cli set "$RKEY" "hello" >/dev/null
out=$(rows_call)
like "$out" "not a hash" "a foreign string at the key is a miss with a WARNING"
like "$out" "8=1,9=1,10=1" "and the right rows are returned"
redis_cli hset "$JKEY" data '[{"v": 1' >/dev/null
out=$(json_call)
like "$out" "unusable: truncated" "a damaged JSON value is a miss with a WARNING"
like "$out" '\[\{"v": 1\}\]' "and the right JSON is returned"
# a well-formed entry of another result (valid checksum) without dependencies
q -c "SELECT cache_query_json('SELECT 7 AS v')" >/dev/null
K7=$(q -c "SELECT cache_query_key('SELECT 7 AS v')")
redis_cli hset "$JKEY" meta "$(redis_cli hget "$K7" meta)" data "$(redis_cli hget "$K7" data)" deps "" >/dev/null
like "$(json_call)" '^\[\{"v": 1\}\]$' "an entry without dependencies is never served (silent miss)"

# ---- Redis stopped and paused ---------------------------------------------------
redis_stop
t0=$(now_ms)
out=$(psql -X -At -c "SELECT cache_query_json('SELECT v FROM qc WHERE id = 4')" 2>&1)
t1=$(now_ms)
like "$out" '\[\{"v": 1\}\]' "Redis stopped: cache_query_json still returns the result"
cmp_le $((t1 - t0)) 3000 "Redis stopped: no hang"
redis_start
q -c "SELECT cache_query_json('SELECT v FROM qc WHERE id = 4')" >/dev/null
redis_pause
t0=$(now_ms)
out=$(psql -X -At -c "SET redis_cache.command_timeout_ms = 200" \
	-c "SELECT string_agg(v::text, ',') FROM cache_query('SELECT v FROM qc WHERE id = 4') AS t(v int)" 2>&1)
t1=$(now_ms)
redis_resume
like "$out" '(^|[^0-9])1$' "Redis paused: cache_query returns the result"
cmp_le $((t1 - t0)) 2500 "Redis paused: bounded by the timeouts"

# ---- a clean restart keeps the table registry --------------------------------------
q -c "SELECT cache_query_json('SELECT v FROM qc WHERE id = 5')" >/dev/null
pg_restart
q -c "UPDATE qc SET v = 50 WHERE id = 5" >/dev/null
is "$(q -c "SELECT cache_query_json('SELECT v FROM qc WHERE id = 5')")" '[{"v": 50}]' \
	"after a clean restart the first write still ends the cached result"
[ -f "$RC_TMP/pgdata/redis_cache.tables" ] && ok "redis_cache.tables written at shutdown" || not_ok "redis_cache.tables written at shutdown"

# ---- sessions with another key_prefix ------------------------------------------------
is "$(q -c "SET redis_cache.key_prefix = 'app1:'" -c "SELECT cache_query_json('SELECT v FROM qc WHERE id = 6')")" \
	'[{"v": 1}]' "a session with key_prefix app1: fills"
q -c "UPDATE qc SET v = 60 WHERE id = 6" >/dev/null
is "$(q -c "SET redis_cache.key_prefix = 'app1:'" -c "SELECT cache_query_json('SELECT v FROM qc WHERE id = 6')")" \
	'[{"v": 60}]' "a writer with the default prefix ends it"

# ---- DDL and privileges ------------------------------------------------------------
q -c "SET client_min_messages = warning" -c "DROP ROLE IF EXISTS regress_qc" -c "CREATE ROLE regress_qc" \
  -c "GRANT SELECT ON qc TO regress_qc" >/dev/null
is "$(q -c "SET ROLE regress_qc" -c "SELECT cache_query_json('SELECT v FROM qc WHERE id = 7')")" '[{"v": 1}]' "a role fills"
q -c "REVOKE SELECT ON qc FROM regress_qc" >/dev/null
like "$(psql -X -At -c "SET ROLE regress_qc" -c "SELECT cache_query_json('SELECT v FROM qc WHERE id = 7')" 2>&1)" \
	"permission denied" "after REVOKE the role's cached result is not served"
q -c "DROP ROLE regress_qc" >/dev/null

# ---- two-phase commit ------------------------------------------------------------
q -c "ALTER SYSTEM SET max_prepared_transactions = 5" >/dev/null
pg_restart
is "$(q -c "SELECT cache_query_json('SELECT v FROM qc WHERE id = 9')")" '[{"v": 1}]' "a result is cached before a prepared transaction"
out=$(psql -X -q -At -c "BEGIN" -c "UPDATE qc SET v = 90 WHERE id = 9" -c "PREPARE TRANSACTION 'rc_2pc'" 2>&1)
is "$out" "" "PREPARE TRANSACTION of a write to an unwatched table works with preloading"
is "$(q -c "SELECT cache_query_json('SELECT v FROM qc WHERE id = 9')")" '[{"v": 1}]' "before COMMIT PREPARED the old result is right"
q -c "COMMIT PREPARED 'rc_2pc'" >/dev/null
is "$(q -c "SELECT cache_query_json('SELECT v FROM qc WHERE id = 9')")" '[{"v": 90}]' "COMMIT PREPARED ends the cached result"
q -c "ALTER SYSTEM RESET max_prepared_transactions" >/dev/null
pg_restart

if grep -q "terminated by signal" "$LOG"; then not_ok "no backend crashed"; else ok "no backend crashed"; fi
