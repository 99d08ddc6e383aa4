#!/usr/bin/env bash
# Redis stopped, paused (SIGSTOP) and restarted under a live PostgreSQL:
# misses instead of errors, bounded waits, statement_timeout and
# pg_cancel_backend() interrupt a blocked call, the circuit breaker, and
# reconnection.  Runs inside the stack started by test/run.sh.
set -u
. "$RC_ROOT/test/lib.sh"

q -c "CREATE EXTENSION IF NOT EXISTS redis_cache" >/dev/null
P="SET redis_cache.key_prefix = 'fault:';"

# one connection per backend, reused across calls and transactions
before=$(redis_cli client list | wc -l)
out=$(q -c "$P SELECT count(*) FROM generate_series(1,200) g WHERE cache_set('k'||g, 'v')" \
	-c "\\! redis-cli -h 127.0.0.1 -p $REDIS_PORT client list | wc -l")
during=$(echo "$out" | tail -1)
is "$during" "$((before + 1))" "200 calls in one backend use one Redis connection"

# --- Redis stopped --------------------------------------------------------
redis_stop
t0=$(now_ms)
out=$(q -c "$P SELECT cache_get('k1') IS NULL, cache_set('k1','x'), cache_delete('k1'), 42" 2>&1)
t1=$(now_ms)
like "$out" "t\|f\|0\|42" "stopped Redis: functions return miss values, query succeeds"
like "$out" "WARNING:  redis_cache: could not connect to Redis at 127.0.0.1:$REDIS_PORT: Connection refused" \
	"stopped Redis: a WARNING says why"
is "$(echo "$out" | grep -c WARNING)" "1" "stopped Redis: one WARNING per backend per 10 s"
cmp_le $((t1 - t0)) 1500 "stopped Redis: no hang"

out=$(q -c "SET redis_cache.on_error = 'error'" -c "$P SELECT cache_get('k1')" 2>&1)
like "$out" "ERROR:  redis_cache: could not connect" "stopped Redis, on_error=error: ERROR"

# --- restart: a reused connection recovers transparently --------------------
redis_start
out=$(q -c "$P SELECT cache_set('r1', 'before')" \
	-c "\\! bash -c '. $RC_ROOT/test/lib.sh; redis_stop; redis_start >/dev/null 2>&1'" \
	-c "$P SELECT cache_set('r1', 'after')" -c "$P SELECT cache_get('r1')" 2>&1)
is "$out" "$(printf 't\nt\nafter')" "restarted Redis: the next call reconnects and works, no warning"

# --- paused (SIGSTOP) ------------------------------------------------------
# Each session connects (and checks the cache version) while Redis is up,
# then pauses it itself, so timings measure the call, not the login.
PAUSE="\\! kill -STOP \$(cat $RC_TMP/redis.pid)"
RESUME="\\! kill -CONT \$(cat $RC_TMP/redis.pid)"
q -c "$P SELECT cache_set('p1', 'v')" >/dev/null

cat > "$RC_TMP/paused.sql" <<SQL
SET redis_cache.key_prefix = 'fault:';
SET redis_cache.command_timeout_ms = 250;
SELECT cache_get('p1');
$PAUSE
SELECT extract(epoch FROM clock_timestamp()) * 1000 AS t0 \gset
SELECT cache_get('p1') IS NULL AS miss;
SELECT 'elapsed=' || round(extract(epoch FROM clock_timestamp()) * 1000 - :t0);
SELECT extract(epoch FROM clock_timestamp()) * 1000 AS t0 \gset
SELECT cache_get('p1') IS NULL, cache_set('p2', 'x'), cache_get('p3') IS NULL;
SELECT 'elapsed3=' || round(extract(epoch FROM clock_timestamp()) * 1000 - :t0);
$RESUME
SQL
out=$(psql -X -At -f "$RC_TMP/paused.sql" 2>&1)
like "$out" "timed out waiting for Redis at 127.0.0.1:$REDIS_PORT after 250 ms" "paused Redis: command times out with a WARNING"
like "$out" "
t
" "paused Redis: result is a miss"
cmp_le "$(echo "$out" | sed -n 's/^elapsed=//p')" 600 "paused Redis: one call bounded by command_timeout_ms"
# the first call times out (250 ms) and drops the connection; each later
# one may spend connect_timeout_ms (1 s) on a new connection to the paused
# server, until the circuit breaker opens after 3 failures
cmp_le "$(echo "$out" | sed -n 's/^elapsed3=//p')" 3000 "paused Redis: three calls in one query stay bounded by the timeouts"

# a new backend while Redis is paused: the login is not blocked for long
redis_pause
t0=$(now_ms)
out=$(q -c "SELECT 1" 2>&1)
t1=$(now_ms)
redis_resume
is "$out" "1" "paused Redis at backend start: the connection succeeds"
cmp_le $((t1 - t0)) 1500 "paused Redis at backend start: login delayed at most one command timeout"

# statement_timeout interrupts a call blocked on a paused Redis
cat > "$RC_TMP/stmt_timeout.sql" <<SQL
SET redis_cache.key_prefix = 'fault:';
SET redis_cache.command_timeout_ms = 60000;
SELECT cache_get('p1');
$PAUSE
SET statement_timeout = 500;
SELECT extract(epoch FROM clock_timestamp()) * 1000 AS t0 \gset
SELECT cache_get('p1');
RESET statement_timeout;
SELECT 'elapsed=' || round(extract(epoch FROM clock_timestamp()) * 1000 - :t0);
$RESUME
SELECT 'after:' || cache_get('p1');
SQL
out=$(psql -X -At -f "$RC_TMP/stmt_timeout.sql" 2>&1)
like "$out" "canceling statement due to statement timeout" "paused Redis: statement_timeout interrupts the wait"
cmp_le "$(echo "$out" | sed -n 's/^elapsed=//p')" 1500 "paused Redis: statement_timeout honoured promptly"
like "$out" "after:v" "after statement_timeout the session reconnects cleanly"

# pg_cancel_backend interrupts it; the same session then works again
cat > "$RC_TMP/cancel.sql" <<SQL
SET application_name = 'rc_cancel';
SET redis_cache.command_timeout_ms = 60000;
SET redis_cache.key_prefix = 'fault:';
SELECT cache_get('p1');
$PAUSE
SELECT cache_get('p1');
$RESUME
SELECT 'after:' || coalesce(cache_get('p1'), 'NULL');
SQL
t0=$(now_ms)
psql -X -At -f "$RC_TMP/cancel.sql" >"$RC_TMP/cancel.out" 2>&1 &
bg=$!
n=0
for _ in $(seq 1 50); do
	n=$(q -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rc_cancel' AND wait_event_type = 'Extension' AND state = 'active'")
	[ "$n" = 1 ] && break
	sleep 0.1
done
is "$n" "1" "pg_stat_activity shows the backend waiting on Redis (Extension wait event)"
q -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'rc_cancel'" >/dev/null
wait $bg
t1=$(now_ms)
out=$(cat "$RC_TMP/cancel.out")
like "$out" "canceling statement due to user request" "paused Redis: pg_cancel_backend interrupts the wait"
like "$out" "after:v" "after a cancel the backend reconnects cleanly (no out-of-sync reply)"
cmp_le $((t1 - t0)) 10000 "cancel did not wait for the 60 s command timeout"
redis_resume 2>/dev/null

# --- circuit breaker ------------------------------------------------------
cat > "$RC_TMP/breaker.sql" <<SQL
SET redis_cache.on_error = 'silent';
SET redis_cache.command_timeout_ms = 200;
SET redis_cache.circuit_open_seconds = 2;
SET redis_cache.key_prefix = 'fault:';
CREATE FUNCTION pg_temp.timed_get(k text) RETURNS int LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN PERFORM cache_get(k); RETURN extract(epoch FROM clock_timestamp() - t0) * 1000; END \$\$;
SELECT cache_get('p1');
$PAUSE
SELECT pg_temp.timed_get('a');
SELECT pg_temp.timed_get('a');
SELECT pg_temp.timed_get('a');
SELECT pg_temp.timed_get('a');
SELECT pg_temp.timed_get('a');
$RESUME
SELECT pg_temp.timed_get('a');
SELECT pg_sleep(2.2);
SELECT coalesce(cache_get('p1'), 'NULL');
SQL
out=$(psql -X -At -q -f "$RC_TMP/breaker.sql" 2>&1)
mapfile -t ms <<<"$out"
cmp_le 150 "${ms[1]}" "breaker: 1st failure waits for the command timeout"
cmp_le 150 "${ms[3]}" "breaker: 3rd failure still tries Redis"
cmp_le "${ms[4]}" 20 "breaker: open after 3 failures, 4th call skips Redis"
cmp_le "${ms[6]}" 20 "breaker: still open right after Redis is back"
is "${ms[8]}" "v" "breaker: half-open trial after circuit_open_seconds succeeds and closes it"

if grep -q "terminated by signal" "$RC_TMP/postgres.log"; then
	not_ok "no backend crashed" "$(grep 'terminated by signal' "$RC_TMP/postgres.log")"
else
	ok "no backend crashed"
fi
