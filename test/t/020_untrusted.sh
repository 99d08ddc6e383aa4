#!/usr/bin/env bash
# Redis content and Redis peers are untrusted: foreign types, invalid
# text, oversized replies and a server speaking garbage must give a
# WARNING and a miss, never a crash.  Also AUTH (legacy and ACL user) and
# the password's invisibility to non-superusers.
set -u
. "$RC_ROOT/test/lib.sh"

q -c "CREATE EXTENSION IF NOT EXISTS redis_cache" >/dev/null
P="SET redis_cache.key_prefix = 'untrusted:';"

# the application stored a hash where we expect a string
redis_cli hset untrusted:tenant:id:1 name acme >/dev/null
out=$(q -c "$P SELECT cache_get('tenant:id:1') IS NULL AS miss" 2>&1)
like "$out" 'WARNING:  redis_cache: Redis rejected reading key "tenant:id:1"' "WRONGTYPE: WARNING names the key"
like "$out" "WRONGTYPE" "WRONGTYPE: detail carries Redis' message"
like "$out" "t$" "WRONGTYPE: a miss"
out=$(q -c "SET redis_cache.on_error = 'error'" -c "$P SELECT cache_get('tenant:id:1')" 2>&1)
like "$out" "ERROR:  redis_cache: Redis rejected reading key" "WRONGTYPE under on_error=error: ERROR"
out=$(q -c "$P SELECT cache_mget(ARRAY['tenant:id:1'])" 2>&1)
is "$out" "{NULL}" "WRONGTYPE in MGET: the element is a miss"

# bytes that are not valid UTF-8, and NUL bytes
printf '\xff\xfe\xfd' | redis_cli -x set untrusted:bad:utf8 >/dev/null
printf 'a\0b' | redis_cli -x set untrusted:bad:nul >/dev/null
out=$(q -c "$P SELECT cache_get('bad:utf8') IS NULL, cache_get('bad:nul') IS NULL" 2>&1)
like "$out" 'value of key "bad:utf8" is not valid UTF8 text' "invalid UTF-8 value: WARNING"
like "$out" 'value of key "bad:nul" is not valid UTF8 text' "NUL byte in value: WARNING"
like "$out" "t\|t$" "invalid values are misses"
out=$(q -c "$P SELECT cache_mget(ARRAY['bad:utf8', 'bad:nul'])" 2>/dev/null)
is "$out" "{NULL,NULL}" "invalid values in MGET are misses"

# a value larger than max_value_bytes written by somebody else
head -c 300000 /dev/zero | tr '\0' 'x' | redis_cli -x set untrusted:big >/dev/null
out=$(q -c "SET redis_cache.max_value_bytes = '100kB'" \
	-c "$P SELECT cache_get('big') IS NULL AS miss" -c "$P SELECT cache_set('small', 'ok')" \
	-c "$P SELECT cache_get('small')" 2>&1)
like "$out" "exceeds" "oversized reply: WARNING"
like "$out" "ok$" "oversized reply: the next call reconnects and works"
out=$(q -c "$P SELECT length(cache_get('big'))" 2>&1)
is "$out" "300000" "values up to max_value_bytes (default 8 MB) are read"

# a peer that is not Redis: garbage, a lying bulk length, a silent peer
fake_port=$(free_port 47000)
python3 - "$fake_port" >"$RC_TMP/fake.log" 2>&1 <<'PY' &
import socket, sys, threading
port = int(sys.argv[1])
answers = [b"garbage\r\n", b"$99999999999\r\n" + b"x" * 100000, b"*3\r\n:1\r\n", b"+OK\r\n" * 5]
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(16)
n = 0
def handle(c, i):
    try:
        c.recv(65536)
        c.sendall(answers[i % len(answers)])
        if i % len(answers) == 2:
            c.recv(65536)
    except OSError:
        pass
    c.close()
srv.settimeout(60)
while n < 40:
    try:
        c, _ = srv.accept()
    except socket.timeout:
        break
    threading.Thread(target=handle, args=(c, n), daemon=True).start()
    n += 1
PY
fake=$!
sleep 0.3
out=$(for i in 1 2 3 4; do
	q -c "SET redis_cache.port = $fake_port" -c "SET redis_cache.command_timeout_ms = 300" \
		-c "SELECT coalesce(cache_get('x'), 'miss'), 'alive'" 2>&1
done)
is "$(echo "$out" | grep -c 'miss|alive')" "4" "garbage, lying length, short and foreign replies: miss, query succeeds"
like "$out" "invalid reply from Redis|protocol error" "protocol garbage: WARNING names the problem"
kill $fake 2>/dev/null; wait $fake 2>/dev/null

# redis_cache.database: SELECT on connect, takes effect on the next command
out=$(q -c "$P SELECT cache_set('db0', 'zero')" -c "SET redis_cache.database = 3" \
	-c "$P SELECT cache_set('db3', 'three')" -c "$P SELECT coalesce(cache_get('db0'), 'miss')")
is "$out" "$(printf 't\nt\nmiss')" "changing redis_cache.database switches databases at the next command"
is "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" -n 3 get untrusted:db3)" "three" "the value is in Redis database 3"
is "$(redis_cli get untrusted:db3)" "" "and not in database 0"

# --- AUTH ----------------------------------------------------------------
redis_cli config set requirepass s3cret-pw >/dev/null
export REDISCLI_AUTH=s3cret-pw
out=$(q -c "$P SELECT cache_get('x') IS NULL" 2>&1)
like "$out" "requires authentication: NOAUTH" "no password against requirepass: refused with a WARNING"
out=$(q -c "SET redis_cache.password = 'wrong-pw'" -c "$P SELECT cache_get('x') IS NULL" 2>&1)
like "$out" "refused authentication" "wrong password: WARNING"
if [[ "$out" == *wrong-pw* ]]; then not_ok "the password never appears in messages"; else ok "the password never appears in messages"; fi
out=$(q -c "SET redis_cache.password = 's3cret-pw'" -c "$P SELECT cache_set('auth', 'yes')" -c "$P SELECT cache_get('auth')" 2>&1)
is "$out" "$(printf 't\nyes')" "legacy AUTH with the password works"
redis_cli acl setuser rc_app on '>app-pw' '~*' '+@all' >/dev/null
out=$(q -c "SELECT set_config('redis_cache.user', 'rc_app', false) IS NULL" -c "SET redis_cache.password = 'app-pw'" -c "$P SELECT cache_get('auth')" 2>&1)
is "$out" "$(printf 'f\nyes')" "ACL user + password works"
redis_cli acl deluser rc_app >/dev/null
redis_cli config set requirepass "" >/dev/null
unset REDISCLI_AUTH

# password_file: read at connect, never shown or logged
redis_cli config set requirepass file-pw >/dev/null
echo file-pw > "$RC_TMP/redis.pw"; chown "$RC_PG_OS_USER" "$RC_TMP/redis.pw"; chmod 600 "$RC_TMP/redis.pw"
q -c "ALTER SYSTEM SET redis_cache.password_file = '$RC_TMP/redis.pw'" -c "SELECT pg_reload_conf()" >/dev/null
sleep 0.3
out=$(REDISCLI_AUTH=file-pw q -c "$P SELECT cache_set('pwfile', 'yes')" 2>&1)
is "$out" "t" "redis_cache.password_file: AUTH with the file's first line"
REDISCLI_AUTH=file-pw redis_cli config set requirepass "" >/dev/null
q -c "ALTER SYSTEM RESET redis_cache.password_file" -c "SELECT pg_reload_conf()" >/dev/null

# the password is invisible to non-superusers
q -c "ALTER SYSTEM SET redis_cache.password = 'hidden-pw'" -c "SELECT pg_reload_conf()" >/dev/null
q -c "DROP ROLE IF EXISTS regress_rc_user" -c "CREATE ROLE regress_rc_user LOGIN" >/dev/null
sleep 0.3
out=$(psql -X -At -U regress_rc_user -c "SHOW redis_cache.password" 2>&1)
like "$out" "must be superuser|permission denied|privileges" "SHOW redis_cache.password refused to a non-superuser"
out=$(psql -X -At -U regress_rc_user -c "SELECT count(*) FROM pg_settings WHERE name = 'redis_cache.password'" -c "SHOW ALL" 2>&1)
if [[ "$out" == *hidden-pw* ]]; then not_ok "password absent from pg_settings and SHOW ALL"; else ok "password absent from pg_settings and SHOW ALL"; fi
out=$(psql -X -At -U regress_rc_user -c "SET redis_cache.password = 'x'" -c "SET redis_cache.host = 'evil.example'" 2>&1)
is "$(echo "$out" | grep -c 'permission denied')" "2" "non-superusers cannot change password or host"
# (a reload of redis_cache.password itself is logged by the postmaster as
# 'parameter changed to', which is why README recommends password_file)
if grep -q "file-pw\|s3cret-pw\|app-pw\|wrong-pw" "$RC_TMP/postgres.log"; then not_ok "no password in the server log"; else ok "no password in the server log"; fi
q -c "ALTER SYSTEM RESET redis_cache.password" -c "SELECT pg_reload_conf()" -c "DROP ROLE regress_rc_user" >/dev/null

if grep -q "terminated by signal" "$RC_TMP/postgres.log"; then
	not_ok "no backend crashed" "$(grep 'terminated by signal' "$RC_TMP/postgres.log")"
else
	ok "no backend crashed"
fi
