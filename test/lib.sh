# test/lib.sh: the embedded stack (a temporary PostgreSQL and redis-server
# on loopback).  Sourced by test/run.sh (the live server of pg_regress and
# the isolation specs), test/demo.sh and bench/run.sh.  The TAP tests
# (test/t/*.pl) start their own servers with test/perl/RedisCache/Server.pm.
#
# Environment (exported by stack_start, inherited by the tests):
#   RC_TMP          temporary directory holding both data directories
#   PGHOST PGPORT PGUSER PGDATABASE   for psql and pg_regress
#   REDIS_PORT      redis-server port
#   RC_PG_OS_USER   OS user running postgres (postgres when we are root)

RC_ROOT=${RC_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
PGBIN=${PGBIN:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}

RC_PACKAGES="postgresql-15 postgresql-server-dev-15 postgresql-contrib libhiredis-dev libkrb5-dev libssl-dev redis-server redis-tools make gcc python3 clang libclang-rt-14-dev libipc-run-perl perl openssl"

# Install the Debian packages the project needs (as root, once; skipped
# with RC_SKIP_APT).  Extra package names may be given as arguments.
rc_install_packages() {
	local missing="" p
	[ "$(id -u)" = 0 ] && [ -z "${RC_SKIP_APT:-}" ] || return 0
	for p in $RC_PACKAGES "$@"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
	done
	[ -n "$missing" ] || return 0
	echo "== installing:$missing"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
}

# Build and install the extension into the server's directories.
rc_build_install() {
	(cd "$RC_ROOT" && make -s with_llvm=no >/dev/null &&
		# a function declared in redis_cache.h but defined nowhere links
		# fine into a shared library and fails only when loaded
		! nm -D redis_cache.so | grep -E ' U (redis_|cache_)' &&
		make -s with_llvm=no install >/dev/null)
}

# Run a command as the OS user that owns the cluster.
as_pg() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u "$RC_PG_OS_USER" -- "$@"
	else
		"$@"
	fi
}

free_port() {
	python3 - "$1" <<'PY'
import socket, sys, random
base = int(sys.argv[1])
for _ in range(200):
    p = base + random.randint(0, 2000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); s.close(); print(p); break
    except OSError:
        s.close()
PY
}

redis_cli() {
	redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"
}

# Start redis-server in the foreground of a background job; extra
# arguments go to redis-server (e.g. --save "" or --dbfilename).
redis_start() {
	mkdir -p "$RC_TMP/redis"
	redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize no \
		--dir "$RC_TMP/redis" --save "" --appendonly no \
		--logfile "$RC_TMP/redis/redis.log" "$@" &
	echo $! > "$RC_TMP/redis.pid"
	for _ in $(seq 1 100); do
		redis_cli ping >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	echo "redis-server did not start" >&2
	return 1
}

redis_pid() { cat "$RC_TMP/redis.pid"; }

redis_stop() {
	local pid
	pid=$(redis_pid 2>/dev/null) || return 0
	kill -CONT "$pid" 2>/dev/null || true
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	rm -f "$RC_TMP/redis.pid"
}

redis_pause() { kill -STOP "$(redis_pid)"; }
redis_resume() { kill -CONT "$(redis_pid)"; }

# Extra postgresql.conf lines may be given as arguments.
pg_init() {
	mkdir -p "$RC_TMP/pgdata"
	chown -R "$RC_PG_OS_USER" "$RC_TMP" 2>/dev/null || true
	as_pg "$PGBIN/initdb" -D "$RC_TMP/pgdata" -U postgres -A trust \
		--no-sync >"$RC_TMP/initdb.log" 2>&1
	cat >> "$RC_TMP/pgdata/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$RC_TMP'
fsync = off
max_connections = 100
shared_preload_libraries = 'redis_cache'
redis_cache.host = '127.0.0.1'
redis_cache.port = $REDIS_PORT
CONF
}

pg_start() {
	as_pg "$PGBIN/pg_ctl" -D "$RC_TMP/pgdata" -l "$RC_TMP/postgres.log" \
		-w -t 60 start >/dev/null
}

pg_stop() {
	as_pg "$PGBIN/pg_ctl" -D "$RC_TMP/pgdata" -m fast -w stop >/dev/null 2>&1 || true
}

pg_restart() {
	as_pg "$PGBIN/pg_ctl" -D "$RC_TMP/pgdata" -l "$RC_TMP/postgres.log" \
		-m fast -w -t 60 restart >/dev/null
}

stack_start() {
	export RC_TMP
	RC_TMP=$(mktemp -d /tmp/redis_cache_test.XXXXXX)
	chmod 755 "$RC_TMP"
	if [ "$(id -u)" = 0 ]; then
		export RC_PG_OS_USER=${RC_PG_OS_USER:-postgres}
	else
		export RC_PG_OS_USER=$(id -un)
	fi
	export PGPORT=${RC_PGPORT:-$(free_port 42000)}
	export REDIS_PORT=${RC_REDIS_PORT:-$(free_port 46000)}
	export PGHOST=127.0.0.1 PGUSER=postgres PGDATABASE=postgres
	redis_start
	pg_init
	pg_start
}

stack_stop() {
	pg_stop
	redis_stop
	if [ -n "${RC_KEEP_TMP:-}" ]; then
		echo "kept $RC_TMP" >&2
	else
		rm -rf "$RC_TMP"
	fi
}

# psql returning unaligned, tuples-only output.
q() {
	psql -X -q -At -v ON_ERROR_STOP=1 "$@"
}
