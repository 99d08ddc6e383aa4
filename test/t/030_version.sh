#!/usr/bin/env bash
# Cache version management against a real redis-server: first run, a
# version change flushing exactly once (also with 20 racing backends),
# a Redis restart from an RDB snapshot holding a stale key, Redis down at
# backend start, two versions not flushing each other, and the
# REDIS_CACHE_VERSION environment variable.
set -u
. "$RC_ROOT/test/lib.sh"

q -c "CREATE EXTENSION IF NOT EXISTS redis_cache" >/dev/null
LOG="$RC_TMP/postgres.log"
set_conf() { q -c "ALTER SYSTEM SET $1 = '$2'" -c "SELECT pg_reload_conf()" >/dev/null; sleep 0.3; }
count_log() { grep -c "$1" "$LOG"; }
prefix_keys() { redis_cli --scan --pattern 'ver:*' | grep -vc '^ver:cache:'; }

set_conf redis_cache.key_prefix 'ver:'

# --- first run: store the version, flush nothing ---------------------------
redis_cli set ver:tenant:id:1 from-app >/dev/null
out=$(q -c "SELECT cache_get('tenant:id:1')")
is "$out" "from-app" "first run: existing entries are kept"
is "$(redis_cli get ver:cache:version)" "1" "first run: version '1' stored at key_prefix || 'cache:version'"
is "$(count_log 'cache version initialized to "1" for prefix "ver:"')" "1" "first run: logged once"
out=$(q -c "SELECT expected, stored, length(run_id), checked_at IS NOT NULL FROM cache_version()")
is "$out" "1|1|40|t" "cache_version() reports expected, stored, run_id, checked_at"

# --- version change + reload: one flush, keys outside the prefix survive ---
for i in $(seq 1 100); do echo "SET ver:product:details:$i v$i"; done | redis_cli >/dev/null
for i in $(seq 1 5); do echo "SET other:key:$i keep"; done | redis_cli >/dev/null
before=$(prefix_keys)
set_conf redis_cache.version 'a1b2c3d4'
out=$(q -c "SELECT cache_get('product:details:1') IS NULL")
is "$out" "t" "version change: old entries are not served"
is "$before/$(prefix_keys)" "101/0" "version change: every key under the prefix removed"
is "$(redis_cli --scan --pattern 'other:*' | wc -l)" "5" "version change: keys outside the prefix untouched"
is "$(redis_cli get ver:cache:version)" "a1b2c3d4" "version change: new version stored"
is "$(count_log 'cache version mismatch (stored 1, expected a1b2c3d4): flushing 101 keys')" "1" "version change: one flush, logged with the count"

# an open session notices the reload at its next command
cat > "$RC_TMP/live.sql" <<SQL
SELECT cache_set('live', 'x');
\\! psql -X -q -c "ALTER SYSTEM SET redis_cache.version = 'live2'" -c "SELECT pg_reload_conf()" >/dev/null; sleep 0.5
SELECT coalesce(cache_get('live'), 'miss');
SELECT stored FROM cache_version();
SQL
out=$(psql -X -At -f "$RC_TMP/live.sql" 2>&1)
is "$out" "$(printf 't\nmiss\nlive2')" "an existing backend re-checks after pg_reload_conf()"

# --- 20 backends racing after a version change: exactly one flush ----------
for i in $(seq 1 500); do echo "SET ver:tenant:id:$i t$i"; done | redis_cli >/dev/null
set_conf redis_cache.version 'race-v3'
for i in $(seq 1 20); do
	q -c "SELECT cache_get('tenant:id:$i')" >"$RC_TMP/race.$i" 2>&1 &
done
wait
is "$(count_log 'cache version mismatch (stored live2, expected race-v3)')" "1" "20 racing backends: exactly one flush"
served=$(cat "$RC_TMP"/race.* | grep -c '^t[0-9]')
is "$served" "0" "20 racing backends: none served an old entry"
is "$(prefix_keys)" "0" "20 racing backends: namespace flushed"

# --- Redis restart from an RDB snapshot holding a stale entry ---------------
q -c "SELECT cache_set('tenant:id:7', 'stale')" >/dev/null
redis_cli save >/dev/null
q -c "SELECT cache_delete('tenant:id:7')" >/dev/null   # invalidated after the snapshot
redis_stop
redis_start --dbfilename dump.rdb
is "$(redis_cli get ver:tenant:id:7)" "stale" "snapshot restored the stale entry into Redis"
out=$(q -c "SELECT coalesce(cache_get('tenant:id:7'), 'miss')")
is "$out" "miss" "Redis restart: the restored stale entry is not served"
is "$(count_log 'Redis restart detected')" "1" "Redis restart: detected and logged once"
q -c "SELECT cache_get('x')" -c "SELECT cache_get('y')" >/dev/null
is "$(count_log 'Redis restart detected')" "1" "Redis restart: one flush per new run_id"

# --- Redis down at backend start: the connection succeeds, checked later ----
redis_stop
set_conf redis_cache.version 'down-v4'
cat > "$RC_TMP/down.sql" <<SQL
SELECT 'connected';
\\! bash -c '. $RC_ROOT/test/lib.sh; redis_start --dbfilename dump.rdb >/dev/null 2>&1'
SELECT coalesce(cache_get('tenant:id:7'), 'miss');
SELECT expected || '/' || stored FROM cache_version();
SQL
out=$(psql -X -At -f "$RC_TMP/down.sql" 2>&1)
like "$out" "^connected" "Redis down at backend start: the connection succeeds"
like "$out" "miss
down-v4/down-v4" "Redis down at backend start: the check runs on reconnect"
like "$(grep 'redis_cache' "$LOG" | tail -20)" "connected to Redis at 127.0.0.1:$REDIS_PORT" "connection is logged"

# --- two versions alternating do not flush each other ------------------------
set_conf redis_cache.version 'srv-b'
q -c "SELECT cache_set('shared', 'by-b')" >/dev/null
flushes=$(count_log 'cache version mismatch')
set_conf redis_cache.version 'down-v4'   # an older deploy still running
out=$(q -c "SELECT coalesce(cache_get('shared'), 'miss'), cache_set('old', 'x')" 2>&1)
like "$out" "older than \"srv-b\"" "older version: WARNING that the cache is bypassed"
like "$out" "miss\|f" "older version: reads are misses, writes skipped"
is "$(redis_cli get ver:shared)" "by-b" "older version: does not flush the newer one's entries"
is "$(redis_cli get ver:cache:version)" "srv-b" "older version: the newest version stays in force"
is "$(count_log 'cache version mismatch')" "$flushes" "older version: no flush ping-pong"

# --- REDIS_CACHE_VERSION from the postmaster's environment -----------------
q -c "ALTER SYSTEM RESET redis_cache.version" >/dev/null
REDIS_CACHE_VERSION=env-v9 pg_restart
out=$(q -c "SELECT expected, stored FROM cache_version()")
is "$out" "env-v9|env-v9" "REDIS_CACHE_VERSION is the expected version when the GUC is unset"
pg_restart
out=$(q -c "SELECT expected FROM cache_version()")
is "$out" "1" "default expected version is '1'"

q -c "ALTER SYSTEM RESET redis_cache.key_prefix" -c "ALTER SYSTEM RESET redis_cache.version" -c "SELECT pg_reload_conf()" >/dev/null
if grep -q "terminated by signal" "$LOG"; then not_ok "no backend crashed"; else ok "no backend crashed"; fi
