#!/usr/bin/env bash
# test/demo.sh: a short tour of redis_cache (also `make demo`).  Builds and
# installs the extension, starts a temporary PostgreSQL and redis-server on
# loopback (test/lib.sh), runs a few functions, shows that redis-cli sees
# the same keys, then stops Redis to show what an outage looks like from SQL.
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

say() { printf '\n== %s\n' "$*"; }
# psql echoing each statement; WARNINGs go to stderr, merged here.
sql() { psql -X -q -e -v ON_ERROR_STOP=1 2>&1; }

echo "PostgreSQL on 127.0.0.1:$PGPORT, redis-server on 127.0.0.1:$REDIS_PORT"

say "install the extension"
sql <<'SQL'
CREATE EXTENSION redis_cache;
SQL

say "set, get, miss"
sql <<'SQL'
SELECT cache_set('tenant:id:42', '{"id":42,"name":"Acme"}', 600);
SELECT cache_get('tenant:id:42');
SELECT cache_get('tenant:id:43') IS NULL AS miss;
SQL

say "the application's own Redis client sees the same key"
echo "\$ redis-cli get tenant:id:42"
redis_cli get tenant:id:42
echo "\$ redis-cli ttl tenant:id:42"
redis_cli ttl tenant:id:42
echo "\$ redis-cli set tenant:subdomain:acme 42"
redis_cli set tenant:subdomain:acme 42

say "many keys in one round trip (NULL for a miss)"
sql <<'SQL'
SELECT cache_mget(ARRAY['tenant:subdomain:acme', 'tenant:subdomain:globex', 'counter:none']);
SQL

say "counters"
sql <<'SQL'
SELECT cache_incr('counter:signups');
SELECT cache_incr('counter:signups', 10);
SQL

say "locks"
sql <<'SQL'
SELECT cache_lock('lock:nightly-report', 30) AS token \gset
SELECT cache_lock('lock:nightly-report') IS NULL AS held_elsewhere;
SELECT cache_unlock('lock:nightly-report', :'token') AS released;
SQL

say "outage: redis-server stopped (one WARNING, NULL, the query succeeds)"
redis_stop
sql <<'SQL'
\timing on
SELECT cache_get('tenant:id:42') AS value;
-- later faults in this backend stay quiet for 10 s; the circuit breaker skips Redis
SELECT count(*) AS misses FROM generate_series(1, 1000) g WHERE cache_get('tenant:id:' || g) IS NULL;
SQL

say "redis-server started again (no persistence: the data is gone)"
redis_start
sql <<'SQL'
SELECT cache_ping();
SELECT cache_get('tenant:id:42') IS NULL AS miss;
SELECT cache_set('tenant:id:42', '{"id":42,"name":"Acme"}');
SELECT cache_get('tenant:id:42');
SQL

say "done"
