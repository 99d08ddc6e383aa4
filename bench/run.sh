#!/usr/bin/env bash
# bench/run.sh: pgbench measurements of redis_cache against baselines
# measured in the same run, on the embedded stack (temporary PostgreSQL
# and redis-server on loopback).  Prints a table of tps and ratios;
# RC_BENCH_CSV=file also writes CSV.  RC_BENCH_SECONDS (default 10) is the
# length of each pgbench run; RC_BENCH_CLIENTS (default 2) its clients.
#
#   bash bench/run.sh            # everything
#   bash bench/run.sh kv         # key-value functions only
#   bash bench/run.sh query        # cache_query only
#   bash bench/run.sh invalidation
#   bash bench/run.sh tls        # cache_get hit over TLS against plain TCP
#   bash bench/run.sh cluster    # a 3-master Redis Cluster against the standalone server
#   bash bench/run.sh local      # the shared-memory local cache (issue 16)
#
# cluster: RC_BENCH_CLUSTER_REPLICAS (default 0) replicas per master;
# RC_BENCH_BULK_RUNS (default 5) commits of the 1,000-row UPDATE per side.
# local: restarts PostgreSQL with redis_cache.local_cache_size (default
# RC_BENCH_LOCAL_SIZE=64MB) and local_cache_keys = 'bench:*';
# RC_BENCH_LOCAL_KEYS (default 1000000) distinct keys for the memory part.
set -uo pipefail
cd "$(dirname "$0")/.."
RC_ROOT=$(pwd)
export RC_ROOT
SECONDS_PER_RUN=${RC_BENCH_SECONDS:-10}
CLIENTS=${RC_BENCH_CLIENTS:-2}
WHAT=${1:-all}

. test/lib.sh
rc_install_packages postgresql-15-pgmemcache memcached
rc_build_install || exit 1
stack_start
MEMCACHED_PID=
CL_PIDS=()
cleanup() {
	[ -n "$MEMCACHED_PID" ] && kill "$MEMCACHED_PID" 2>/dev/null
	for p in "${CL_PIDS[@]}"; do kill "$p" 2>/dev/null; done
	stack_stop
}
trap cleanup EXIT

# the peer: pgmemcache against a memcached on loopback, same key and value
HAVE_PGMEMCACHE=
if [ -f "$(pg_config --sharedir)/extension/pgmemcache.control" ] && command -v memcached >/dev/null; then
	MEMCACHED_PORT=$(free_port 48000)
	memcached -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -u nobody -m 64 &
	MEMCACHED_PID=$!
	cat >> "$RC_TMP/pgdata/postgresql.conf" <<CONF
shared_preload_libraries = 'redis_cache,pgmemcache'
pgmemcache.default_servers = '127.0.0.1:$MEMCACHED_PORT'
CONF
	pg_restart
	HAVE_PGMEMCACHE=1
fi
durability() {  # durability on|off
	if [ "$1" = on ]; then
		q -c "ALTER SYSTEM SET fsync = on" -c "ALTER SYSTEM SET synchronous_commit = on" -c "SELECT pg_reload_conf()" >/dev/null
	else
		q -c "ALTER SYSTEM SET fsync = off" -c "ALTER SYSTEM SET synchronous_commit = off" -c "SELECT pg_reload_conf()" >/dev/null
	fi
	sleep 0.3
}
durability off

q -c "CREATE EXTENSION redis_cache" \
  -c "CREATE TABLE tenants (id int PRIMARY KEY, subdomain text UNIQUE, domain text, plan text, name text)" \
  -c "INSERT INTO tenants SELECT g, 'sub' || g, 'd' || g || '.example', 'pro', 'name' || g FROM generate_series(1, 100000) g" \
  -c "CREATE TABLE tenants_unwatched (LIKE tenants INCLUDING ALL)" \
  -c "INSERT INTO tenants_unwatched SELECT * FROM tenants" \
  -c "SELECT cache_watch('tenants', 'tenant:id:{id}', 'tenant:subdomain:{subdomain}', 'tenant:domain:{domain}')" \
  -c "SELECT count(cache_set('bench:' || g, repeat('v', 100), 86400)) FROM generate_series(1, 1000) g" \
  -c "VACUUM ANALYZE" >/dev/null

declare -A TPS
results=()
run() {  # run NAME SCRIPT-TEXT
	local f="$RC_TMP/$1.sql" out tps
	printf '%s\n' "$2" >"$f"
	out=$(pgbench -n -M prepared -c "$CLIENTS" -j "$CLIENTS" -T "$SECONDS_PER_RUN" -f "$f" 2>&1)
	tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
	TPS[$1]=${tps:-0}
	results+=("$1")
	printf '  %-28s %12.1f tps\n' "$1" "${tps:-0}" >&2
}
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print('%.2f' % (a/b if b else 0))" "$1" "$2"; }

echo "pgbench: $CLIENTS clients, ${SECONDS_PER_RUN} s per run" >&2
run select_1 'SELECT 1;'

if [ "$WHAT" = all ] || [ "$WHAT" = kv ]; then
	run pk_lookup $'\\set id random(1, 100000)\nSELECT row_to_json(t) FROM tenants t WHERE id = :id;'
	run cache_get_hit $'\\set id random(1, 1000)\nSELECT cache_get(\'bench:\' || (:id)::text);'
	run cache_get_miss $'\\set id random(1, 1000)\nSELECT cache_get(\'nope:\' || (:id)::text);'
	run cache_set $'\\set id random(1, 1000)\nSELECT cache_set(\'benchset:\' || (:id)::text, \'value\', 60);'
	run cache_mget_10 $'\\set id random(1, 990)\nSELECT cache_mget(ARRAY(SELECT \'bench:\' || g FROM generate_series(:id, :id + 9) g));'
	if [ -n "$HAVE_PGMEMCACHE" ]; then
		q -c "CREATE EXTENSION pgmemcache" \
		  -c "SELECT count(memcache_set('bench:' || g, repeat('v', 100))) FROM generate_series(1, 1000) g" >/dev/null
		run memcache_get_hit $'\\set id random(1, 1000)\nSELECT memcache_get(\'bench:\' || (:id)::text);'
	fi
	run cache_get_hit_2 $'\\set id random(1, 1000)\nSELECT cache_get(\'bench:\' || (:id)::text);'

	# memory: one backend, many calls, RSS early and at the end
	MEM_CALLS=${RC_BENCH_MEM_CALLS:-1000000}
	printf '%s\n' "SELECT count(cache_get('bench:' || (g % 1000 + 1)::text)) FROM generate_series(1, 10000) g;" >"$RC_TMP/mem.sql"
	pgbench -n -c 1 -t $((MEM_CALLS / 10000)) -f "$RC_TMP/mem.sql" -P 1 >"$RC_TMP/mem.out" 2>&1 &
	mem_bg=$!
	pid=
	for _ in $(seq 1 50); do
		pid=$(q -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench' LIMIT 1")
		[ -n "$pid" ] && break
		sleep 0.1
	done
	sleep 1
	RSS_START=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null)
	RSS_END=$RSS_START
	while kill -0 $mem_bg 2>/dev/null; do
		r=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null)
		[ -n "$r" ] && RSS_END=$r
		sleep 0.5
	done
	wait $mem_bg
fi

if [ "$WHAT" = all ] || [ "$WHAT" = query ]; then
	# an aggregate over 100k rows, a 1-row lookup, a 1,000-row result
	AGG="SELECT region, count(*) AS n, sum(amount) AS total, avg(customer)::numeric(12,2) AS customers FROM bench_orders GROUP BY region ORDER BY region"
	ROWS1000="SELECT id, customer, amount, region FROM bench_orders WHERE id <= 1000 ORDER BY id"
	q -c "CREATE TABLE bench_orders (id int PRIMARY KEY, customer int, amount numeric(12,2), region text)" \
	  -c "INSERT INTO bench_orders SELECT g, g % 5000, (g % 1000) / 7.0, 'r' || (g % 8) FROM generate_series(1, 100000) g" \
	  -c "VACUUM ANALYZE bench_orders" \
	  -c "SELECT count(*) FROM cache_query('$AGG') AS t(region text, n bigint, total numeric, customers numeric)" \
	  -c "SELECT count(*) FROM cache_query('$ROWS1000') AS t(id int, customer int, amount numeric, region text)" \
	  -c "SELECT count(cache_query_json('SELECT * FROM tenants WHERE id = \$1', ARRAY[g::text], 3600)) FROM generate_series(1, 1000) g" >/dev/null
	run agg_direct "$AGG;"
	run agg_cache_query_hit "SELECT * FROM cache_query('$AGG') AS t(region text, n bigint, total numeric, customers numeric);"
	run row1_direct_json $'\\set id random(1, 1000)\nSELECT row_to_json(t) FROM tenants t WHERE id = :id;'
	run row1_cache_query_json_hit $'\\set id random(1, 1000)\nSELECT cache_query_json(\'SELECT * FROM tenants WHERE id = $1\', ARRAY[(:id)::text], 3600);'
	run rows1000_direct "$ROWS1000;"
	run rows1000_cache_query_hit "SELECT * FROM cache_query('$ROWS1000') AS t(id int, customer int, amount numeric, region text);"
fi

if [ "$WHAT" = all ] || [ "$WHAT" = invalidation ]; then
	UW=$'\\set id random(1, 100000)\nUPDATE tenants_unwatched SET name = md5(:id::text) WHERE id = :id;'
	W=$'\\set id random(1, 100000)\nUPDATE tenants SET name = md5(:id::text) WHERE id = :id;'
	# alternate twice so drift in the machine's load hits both sides
	run update_unwatched "$UW"; run update_watched "$W"
	run update_unwatched_2 "$UW"; run update_watched_2 "$W"
	durability on
	run durable_update_unwatched "$UW"; run durable_update_watched "$W"
	run durable_update_unwatched_2 "$UW"; run durable_update_watched_2 "$W"
	durability off

	# bulk: 100k rows, median of 3, alternating to share the machine's noise
	bulk() {
		q -c "\\timing on" -c "UPDATE $1 SET plan = md5(random()::text)" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
	}
	bw=(); bu=()
	for i in 1 2 3; do
		bu+=("$(bulk tenants_unwatched)")
		bw+=("$(bulk tenants)")
		q -c "VACUUM tenants, tenants_unwatched" >/dev/null
	done
	med() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
	BULK_U=$(med "${bu[@]}")
	BULK_W=$(med "${bw[@]}")
fi

if [ "$WHAT" = all ] || [ "$WHAT" = tls ]; then
	# one redis-server listening on a plain and a TLS port: the same server
	# answers both sides, so only the transport differs
	TLS_DIR="$RC_TMP/tls"
	mkdir -p "$TLS_DIR"
	openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.crt" \
		-days 2 -subj "/CN=bench CA" >/dev/null 2>&1
	openssl req -newkey rsa:2048 -nodes -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" \
		-subj "/CN=localhost" >/dev/null 2>&1
	printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$TLS_DIR/ext.cnf"
	openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.crt" -CAkey "$TLS_DIR/ca.key" \
		-CAcreateserial -out "$TLS_DIR/server.crt" -days 2 -extfile "$TLS_DIR/ext.cnf" >/dev/null 2>&1
	chmod 644 "$TLS_DIR"/*.crt
	chown -R "$RC_PG_OS_USER" "$TLS_DIR" 2>/dev/null || true
	BOTH_PORT=$(free_port 47000)
	BOTH_TLS_PORT=$(free_port 47500)
	redis-server --port "$BOTH_PORT" --tls-port "$BOTH_TLS_PORT" --bind 127.0.0.1 --daemonize no \
		--save "" --appendonly no --dir "$TLS_DIR" \
		--tls-cert-file "$TLS_DIR/server.crt" --tls-key-file "$TLS_DIR/server.key" \
		--tls-ca-cert-file "$TLS_DIR/ca.crt" --tls-auth-clients no >"$TLS_DIR/redis.log" 2>&1 &
	TLS_REDIS_PID=$!
	for _ in $(seq 1 50); do redis-cli -p "$BOTH_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
	PLAIN_OPTS="-c redis_cache.port=$BOTH_PORT"
	TLS_OPTS="-c redis_cache.host=localhost -c redis_cache.port=$BOTH_TLS_PORT -c redis_cache.sslmode=verify-full -c redis_cache.sslrootcert=$TLS_DIR/ca.crt"
	PGOPTIONS="$PLAIN_OPTS" q -c "SELECT count(cache_set('bench:' || g, repeat('v', 100), 86400)) FROM generate_series(1, 1000) g" >/dev/null
	GET=$'\\set id random(1, 1000)\nSELECT cache_get(\'bench:\' || (:id)::text);'
	# alternate twice so drift in the machine's load hits both sides
	for i in 1 2; do
		PGOPTIONS="$PLAIN_OPTS" run "cache_get_hit_tcp_$i" "$GET"
		PGOPTIONS="$TLS_OPTS" run "cache_get_hit_tls_$i" "$GET"
	done
	PGOPTIONS="$TLS_OPTS" q -c "SELECT cache_health()->>'tls' || ' ' || (cache_health()->>'tls_cipher')" >"$TLS_DIR/cipher"
	# the ceiling: Redis' own client (hiredis with OpenSSL) against the same
	# two ports, same clients; most of the cost of TLS is the server's
	rb() { redis-benchmark "$@" -t get -c "$CLIENTS" -n 200000 -q 2>/dev/null | tr '\r' '\n' | sed -n 's/^GET: \([0-9.]*\) requests per second.*/\1/p' | tail -1; }
	RB_TCP=$(rb -p "$BOTH_PORT")
	RB_TLS=$(rb -p "$BOTH_TLS_PORT" --tls --cacert "$TLS_DIR/ca.crt")
	kill "$TLS_REDIS_PID" 2>/dev/null
fi

if [ "$WHAT" = all ] || [ "$WHAT" = cluster ]; then
	# 3 masters (and RC_BENCH_CLUSTER_REPLICAS replicas each) on loopback;
	# the same PostgreSQL switches between them and the standalone
	# redis-server with redis_cache.host (ALTER SYSTEM, reload: the worker
	# follows too), and the two sides alternate twice so that drift in
	# the machine's load hits both
	CL_DIR="$RC_TMP/cluster"
	CL_REPLICAS=${RC_BENCH_CLUSTER_REPLICAS:-0}
	CL_N=$((3 * (1 + CL_REPLICAS)))
	CL_PORTS=()
	declare -A CL_TAKEN=()
	cl_port() {  # a free port no other node of ours took
		local p
		while :; do
			p=$(free_port "$1")
			[ -z "${CL_TAKEN[$p]:-}" ] && [ "$p" != "$REDIS_PORT" ] && break
		done
		CL_TAKEN[$p]=1
		echo "$p"
	}
	for i in $(seq 1 "$CL_N"); do
		port=$(cl_port 49000)
		bus=$(cl_port 52000)
		mkdir -p "$CL_DIR/$i"
		redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 --daemonize no \
			--cluster-enabled yes --cluster-config-file "$CL_DIR/$i/nodes.conf" \
			--cluster-node-timeout 2000 --repl-diskless-sync-delay 0 \
			--dir "$CL_DIR/$i" --save "" --appendonly no --logfile "$CL_DIR/$i/redis.log" &
		CL_PIDS+=($!)
		CL_PORTS+=("$port")
	done
	for port in "${CL_PORTS[@]}"; do
		for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
	done
	redis-cli --cluster create $(for port in "${CL_PORTS[@]}"; do printf '127.0.0.1:%s ' "$port"; done) \
		--cluster-replicas "$CL_REPLICAS" --cluster-yes >"$CL_DIR/create.out" 2>&1 ||
		{ echo "redis-cli --cluster create failed:"; cat "$CL_DIR/create.out"; exit 1; }
	for _ in $(seq 1 200); do
		ok=0
		for port in "${CL_PORTS[@]}"; do
			redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && ok=$((ok + 1))
		done
		[ "$ok" = "$CL_N" ] && break
		sleep 0.1
	done
	SEEDS=$(for port in "${CL_PORTS[@]:0:3}"; do printf '127.0.0.1:%s, ' "$port"; done)
	SEEDS=${SEEDS%, }
	use_redis() {  # use_redis cluster|standalone
		if [ "$1" = cluster ]; then
			q -c "ALTER SYSTEM SET redis_cache.host = '$SEEDS'" -c "SELECT pg_reload_conf()" >/dev/null
		else
			q -c "ALTER SYSTEM RESET redis_cache.host" -c "SELECT pg_reload_conf()" >/dev/null
		fi
		sleep 0.5
	}
	ROW1_JSON=$'\\set id random(1, 1000)\nSELECT cache_query_json(\'SELECT * FROM tenants WHERE id = $1\', ARRAY[(:id)::text], 3600);'
	GET=$'\\set id random(1, 1000)\nSELECT cache_get(\'bench:\' || (:id)::text);'
	MGET=$'\\set id random(1, 990)\nSELECT cache_mget(ARRAY(SELECT \'bench:\' || g FROM generate_series(:id, :id + 9) g));'
	fill() {
		q -c "SELECT count(cache_set('bench:' || g, repeat('v', 100), 86400)) FROM generate_series(1, 1000) g" \
		  -c "SELECT count(cache_query_json('SELECT * FROM tenants WHERE id = \$1', ARRAY[g::text], 3600)) FROM generate_series(1, 1000) g" >/dev/null
	}
	use_redis cluster
	q -c "SELECT cache_health()" >"$CL_DIR/health.json"
	fill
	use_redis standalone
	fill
	for i in 1 2; do
		use_redis standalone
		run "cache_get_hit_standalone_$i" "$GET"
		run "cache_mget_10_standalone_$i" "$MGET"
		run "query_json_hit_standalone_$i" "$ROW1_JSON"
		use_redis cluster
		run "cache_get_hit_cluster_$i" "$GET"
		run "cache_mget_10_cluster_$i" "$MGET"
		run "query_json_hit_cluster_$i" "$ROW1_JSON"
	done
	CL_SPREAD=$(for port in "${CL_PORTS[@]}"; do redis-cli -p "$port" dbsize; done | tr '\n' ' ')

	# a 1,000-row UPDATE of the watched table: 3 templates, 3,000 keys
	# (filled just before, so every UNLINK removes a key) spread over
	# every master; the COMMIT's time is the commit-time invalidation
	# (the local commit is tiny with fsync off: the unwatched copy shows it)
	commit_ms() {  # commit_ms TABLE FIRST-ID
		local lo=$2 hi=$(($2 + 999))
		q -c "SELECT count(*) FROM (SELECT cache_set_many(array_agg(k), array_agg('v'::text), 600) FROM (SELECT unnest(ARRAY['tenant:id:' || id, 'tenant:subdomain:' || subdomain, 'tenant:domain:' || domain]) AS k FROM tenants WHERE id BETWEEN $lo AND $hi) s) f" \
		  -c "BEGIN" -c "UPDATE $1 SET name = md5(random()::text) WHERE id BETWEEN $lo AND $hi" \
		  -c "\\timing on" -c "COMMIT" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
	}
	# the same 3,000 keys removed by one cache_delete (no commit involved):
	# the routing's share of the commit's time
	delete_ms() {  # delete_ms FIRST-ID
		local lo=$1 hi=$(($1 + 999))
		local keys="SELECT unnest(ARRAY['tenant:id:' || id, 'tenant:subdomain:' || subdomain, 'tenant:domain:' || domain]) AS k FROM tenants WHERE id BETWEEN $lo AND $hi"
		q -c "SELECT count(*) FROM (SELECT cache_set_many(array_agg(k), array_agg('v'::text), 600) FROM ($keys) s) f" \
		  -c "\\timing on" -c "SELECT cache_delete(VARIADIC ARRAY($keys))" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
	}
	BULK_RUNS=${RC_BENCH_BULK_RUNS:-5}
	cs=(); cc=(); cu=(); ds=(); dc=()
	for i in $(seq 1 "$BULK_RUNS"); do
		lo=$(( (i - 1) * 1000 + 1 ))
		use_redis standalone
		cs+=("$(commit_ms tenants $lo)")
		cu+=("$(commit_ms tenants_unwatched $lo)")
		use_redis cluster
		cc+=("$(commit_ms tenants $((lo + 50000)))")
		dc+=("$(delete_ms $((lo + 50000)))")
		use_redis standalone
		ds+=("$(delete_ms $lo)")
		q -c "VACUUM tenants, tenants_unwatched" >/dev/null
	done
	medn() { printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
	COMMIT_S=$(medn "${cs[@]}")
	COMMIT_C=$(medn "${cc[@]}")
	COMMIT_U=$(medn "${cu[@]}")
	DEL_S=$(medn "${ds[@]}")
	DEL_C=$(medn "${dc[@]}")
	# the keys are gone from every master
	CL_LEFT=$(for port in "${CL_PORTS[@]:0:3}"; do redis-cli -p "$port" --scan --pattern 'tenant:*' | wc -l; done | awk '{s += $1} END {print s}')
	use_redis standalone
fi

if [ "$WHAT" = all ] || [ "$WHAT" = local ]; then
	# the local cache on (local_cache_size is a postmaster setting: a
	# restart), for keys bench:*; the keys rbench:* are outside
	# local_cache_keys, so the same run measures cache_get with its Redis
	# round trip; cache_query results are held locally while
	# local_cache_queries is on (sighup: switched off for its comparison)
	LOCAL_SIZE=${RC_BENCH_LOCAL_SIZE:-64MB}
	LOCAL_KEYS=${RC_BENCH_LOCAL_KEYS:-1000000}
	cat >> "$RC_TMP/pgdata/postgresql.conf" <<CONF
redis_cache.local_cache_size = '$LOCAL_SIZE'
redis_cache.local_cache_keys = 'bench:*'
CONF
	pg_restart
	LOCAL_STATE=
	for _ in $(seq 1 150); do
		LOCAL_STATE=$(q -c "SELECT cache_health()->'local_cache'->>'state'" 2>/dev/null)
		[ "$LOCAL_STATE" = tracking ] && break
		sleep 0.2
	done
	[ "$LOCAL_STATE" = tracking ] || echo "local cache state is '$LOCAL_STATE', not tracking: the local figures measure no local hit" >&2
	ROWS1000="SELECT id, customer, amount, region FROM bench_orders WHERE id <= 1000 ORDER BY id"
	q -c "CREATE TABLE IF NOT EXISTS bench_orders (id int PRIMARY KEY, customer int, amount numeric(12,2), region text)" \
	  -c "INSERT INTO bench_orders SELECT g, g % 5000, (g % 1000) / 7.0, 'r' || (g % 8) FROM generate_series(1, 100000) g ON CONFLICT DO NOTHING" \
	  -c "VACUUM ANALYZE bench_orders" \
	  -c "SELECT count(cache_set('bench:' || g, repeat('v', 100), 86400)) FROM generate_series(1, 1000) g" \
	  -c "SELECT count(cache_set('rbench:' || g, repeat('v', 100), 86400)) FROM generate_series(1, 1000) g" >/dev/null
	# fills: every key and result read twice (the second read a local hit)
	local_warm() {
		q -c "SELECT count(cache_get('bench:' || g)) FROM generate_series(1, 1000) g, generate_series(1, 2)" \
		  -c "SELECT count(cache_query_json('SELECT * FROM tenants WHERE id = \$1', ARRAY[g::text], 3600)) FROM generate_series(1, 1000) g, generate_series(1, 2)" \
		  -c "SELECT count(*) FROM generate_series(1, 2), cache_query('$ROWS1000') AS t(id int, customer int, amount numeric, region text)" >/dev/null
	}
	# DDL first: it bumps the generation every cached result depends on
	if [ -n "$HAVE_PGMEMCACHE" ]; then
		q -c "CREATE EXTENSION IF NOT EXISTS pgmemcache" \
		  -c "SELECT count(memcache_set('bench:' || g, repeat('v', 100))) FROM generate_series(1, 1000) g" >/dev/null
	fi
	local_warm
	LOCAL_T0=$(q -c "SELECT local_hits || ' ' || local_fills || ' ' || local_discards || ' ' || local_flushes FROM cache_stats WHERE family IS NULL")
	LGET=$'\\set id random(1, 1000)\nSELECT cache_get(\'bench:\' || (:id)::text);'
	RGET=$'\\set id random(1, 1000)\nSELECT cache_get(\'rbench:\' || (:id)::text);'
	LROW1=$'\\set id random(1, 1000)\nSELECT cache_query_json(\'SELECT * FROM tenants WHERE id = $1\', ARRAY[(:id)::text], 3600);'
	# each side twice, alternated, so that drift in the machine's load hits all
	for i in 1 2; do
		run "local_select_1_$i" 'SELECT 1;'
		run "local_cache_get_hit_$i" "$LGET"
		[ -n "$HAVE_PGMEMCACHE" ] && run "local_memcache_get_hit_$i" $'\\set id random(1, 1000)\nSELECT memcache_get(\'bench:\' || (:id)::text);'
		run "local_cache_get_redis_$i" "$RGET"
		lq0=$(q -c "SELECT local_hits FROM cache_stats WHERE family IS NULL")
		run "local_query1_hit_$i" "$LROW1"
		LOCAL_QHITS="${LOCAL_QHITS:-} $(( $(q -c "SELECT local_hits FROM cache_stats WHERE family IS NULL") - lq0 ))"
		run "local_rows1000_direct_$i" "$ROWS1000;"
		run "local_rows1000_hit_$i" "SELECT * FROM cache_query('$ROWS1000') AS t(id int, customer int, amount numeric, region text);"
	done
	LOCAL_T1=$(q -c "SELECT local_hits || ' ' || local_fills || ' ' || local_discards || ' ' || local_flushes FROM cache_stats WHERE family IS NULL")
	# cache_query hits with their Redis round trip: local_cache_queries off
	q -c "ALTER SYSTEM SET redis_cache.local_cache_queries = off" -c "SELECT pg_reload_conf()" >/dev/null
	sleep 0.5
	run local_select_1_3 'SELECT 1;'
	run local_query1_redis "$LROW1"
	run local_rows1000_direct_3 "$ROWS1000;"
	run local_rows1000_redis "SELECT * FROM cache_query('$ROWS1000') AS t(id int, customer int, amount numeric, region text);"
	q -c "ALTER SYSTEM RESET redis_cache.local_cache_queries" -c "SELECT pg_reload_conf()" >/dev/null
	sleep 0.5

	# Redis commands per 1,000 hot-key reads: INFO commandstats before and
	# after, from inside the same session (psql \!), less the INFO calls
	per_1000() {  # per_1000 NAME SQL-EXPRESSION: Redis commands over 1,000 evaluations
		local b="$RC_TMP/cmd_$1.before" a="$RC_TMP/cmd_$1.after"
		q -c "SELECT $2" \
		  -c "\\! redis-cli -h 127.0.0.1 -p $REDIS_PORT info commandstats > $b" \
		  -c "SELECT count($2) FROM generate_series(1, 1000)" \
		  -c "\\! redis-cli -h 127.0.0.1 -p $REDIS_PORT info commandstats > $a" >/dev/null
		# "N commands (get N, evalsha N, ...)", the INFO calls excluded
		python3 - "$b" "$a" <<'PY'
import re, sys
def calls(f):
    return {m.group(1): int(m.group(2)) for m in re.finditer(r'^cmdstat_([^:]+):calls=(\d+)', open(f).read(), re.M)}
b, a = calls(sys.argv[1]), calls(sys.argv[2])
d = {k: a[k] - b.get(k, 0) for k in a if k != 'info' and a[k] - b.get(k, 0)}
print('%d commands (%s)' % (sum(d.values()), ', '.join('%s %d' % kv for kv in sorted(d.items(), key=lambda kv: -kv[1])) or 'none'))
PY
	}
	CMD_LOCAL=$(per_1000 local "cache_get('bench:1')")
	CMD_REDIS=$(per_1000 redis "cache_get('rbench:1')")
	CMD_QLOCAL=$(per_1000 qlocal "cache_query_json('SELECT * FROM tenants WHERE id = \$1', ARRAY['1'], 3600)")

	# memory: LOCAL_KEYS distinct keys stored (cache_set_many, 1,000 per
	# round trip), then read once each by one backend whose RSS is sampled
	q -c "SELECT sum(cache_set_many(ARRAY(SELECT 'bench:m:' || g FROM generate_series(b, b + 9999) g),
	        array_fill(repeat('v', 100), ARRAY[10000]), 3600))
	      FROM generate_series(1, $LOCAL_KEYS, 10000) b" >/dev/null
	LOCAL_EV0=$(q -c "SELECT local_evictions FROM cache_stats WHERE family IS NULL")
	PGAPPNAME=local_fill q -c "SELECT count(cache_get('bench:m:' || g)) FROM generate_series(1, $LOCAL_KEYS) g" >/dev/null &
	fill_bg=$!
	pid=
	for _ in $(seq 1 50); do
		pid=$(q -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'local_fill' LIMIT 1")
		[ -n "$pid" ] && break
		sleep 0.1
	done
	LOCAL_RSS=0 LOCAL_ANON=0 LOCAL_SHMEM=0
	while kill -0 $fill_bg 2>/dev/null; do
		read -r r a s <<<"$(awk '/^VmRSS/ {r = $2} /^RssAnon/ {a = $2} /^RssShmem/ {s = $2} END {print r + 0, a + 0, s + 0}' "/proc/$pid/status" 2>/dev/null)"
		[ "${r:-0}" -gt "$LOCAL_RSS" ] && LOCAL_RSS=$r
		[ "${a:-0}" -gt "$LOCAL_ANON" ] && LOCAL_ANON=$a
		[ "${s:-0}" -gt "$LOCAL_SHMEM" ] && LOCAL_SHMEM=$s
		sleep 0.5
	done
	wait $fill_bg
	LOCAL_MEM=$(q -c "SELECT (h->>'size_bytes') || ' ' || (h->>'used_bytes') || ' ' || (h->>'entries') || ' ' || coalesce(h->>'arena_bytes', '?')
	                  FROM (SELECT cache_health()->'local_cache' AS h) s")
	LOCAL_EV1=$(q -c "SELECT local_evictions FROM cache_stats WHERE family IS NULL")
	LOCAL_SHM=$(q -c "SELECT string_agg(name || ': ' || allocated_size, ', ') FROM pg_shmem_allocations WHERE name ILIKE '%redis_cache%local%'")
	LOCAL_STATE_END=$(q -c "SELECT cache_health()->'local_cache'->>'state'")
fi

echo
printf '%-28s %12s %10s\n' "benchmark" "tps" "vs SELECT 1"
for r in "${results[@]}"; do
	printf '%-28s %12.1f %10s\n' "$r" "${TPS[$r]}" "$(ratio "${TPS[$r]}" "${TPS[select_1]}")"
done
if [ -n "${TPS[update_watched]:-}" ]; then
	w=$(python3 -c "print(${TPS[update_watched]} + ${TPS[update_watched_2]})")
	u=$(python3 -c "print(${TPS[update_unwatched]} + ${TPS[update_unwatched_2]})")
	echo
	dw=$(python3 -c "print(${TPS[durable_update_watched]} + ${TPS[durable_update_watched_2]})")
	du=$(python3 -c "print(${TPS[durable_update_unwatched]} + ${TPS[durable_update_unwatched_2]})")
	echo "single-row UPDATE, watched / unwatched, fsync=off synchronous_commit=off: $(ratio "$w" "$u")x"
	echo "single-row UPDATE, watched / unwatched, fsync=on synchronous_commit=on:   $(ratio "$dw" "$du")x  (target >= 0.85x)"
	echo "100k-row UPDATE time, watched / unwatched: $(ratio "$BULK_W" "$BULK_U")x  (${BULK_W} ms vs ${BULK_U} ms, median of 3; target <= 2x)"
fi
if [ -n "${TPS[cache_get_hit]:-}" ]; then
	echo "cache_get hit / primary-key lookup:      $(ratio "${TPS[cache_get_hit]}" "${TPS[pk_lookup]}")x"
	if [ -n "${TPS[memcache_get_hit]:-}" ]; then
		hit=$(python3 -c "print((${TPS[cache_get_hit]} + ${TPS[cache_get_hit_2]}) / 2)")
		echo "cache_get hit / pgmemcache memcache_get:  $(ratio "$hit" "${TPS[memcache_get_hit]}")x  (target >= 1.0x; cache_get averaged over the runs before and after)"
	fi
	echo "backend RSS over ${MEM_CALLS} cache_get calls: ${RSS_START} kB after the first second, ${RSS_END} kB at the end"
fi
if [ -n "${TPS[agg_cache_query_hit]:-}" ]; then
	echo "cache_query hit / 100k-row aggregate run directly: $(ratio "${TPS[agg_cache_query_hit]}" "${TPS[agg_direct]}")x  (target >= 50x; the aggregate alone takes $(python3 -c "print('%.1f' % (1000.0 * $CLIENTS / ${TPS[agg_direct]}))") ms)"
	echo "cache_query_json 1-row hit / SELECT row_to_json(t) ... WHERE id = \$1: $(ratio "${TPS[row1_cache_query_json_hit]}" "${TPS[row1_direct_json]}")x"
	echo "cache_query 1,000-row hit / the query run directly: $(ratio "${TPS[rows1000_cache_query_hit]}" "${TPS[rows1000_direct]}")x  (hit decodes $(python3 -c "print('%.0f' % (1000 * ${TPS[rows1000_cache_query_hit]}))") rows/s, direct returns $(python3 -c "print('%.0f' % (1000 * ${TPS[rows1000_direct]}))") rows/s)"
fi
if [ -n "${TPS[cache_get_hit_tls_1]:-}" ]; then
	t=$(python3 -c "print(${TPS[cache_get_hit_tls_1]} + ${TPS[cache_get_hit_tls_2]})")
	p=$(python3 -c "print(${TPS[cache_get_hit_tcp_1]} + ${TPS[cache_get_hit_tcp_2]})")
	echo "cache_get hit over TLS / plain TCP, same redis-server: $(ratio "$t" "$p")x  (target >= 0.8x; $(cat "$TLS_DIR/cipher"), verify-full)"
	echo "redis-benchmark GET over TLS / plain TCP, same server and clients: $(ratio "${RB_TLS:-0}" "${RB_TCP:-1}")x  (${RB_TLS} vs ${RB_TCP} requests/s: the ceiling Redis' own client reaches)"
fi
if [ -n "${TPS[cache_get_hit_cluster_1]:-}" ]; then
	sum() { python3 -c "import sys; print(sum(float(x) for x in sys.argv[1:]))" "$@"; }
	echo "Redis Cluster (3 masters, $CL_REPLICAS replicas each; keys per node: $CL_SPREAD) against the standalone redis-server, same PostgreSQL, alternated twice:"
	echo "  cache_get hit, cluster / standalone:             $(ratio "$(sum "${TPS[cache_get_hit_cluster_1]}" "${TPS[cache_get_hit_cluster_2]}")" "$(sum "${TPS[cache_get_hit_standalone_1]}" "${TPS[cache_get_hit_standalone_2]}")")x"
	echo "  cache_mget of 10 keys (3 masters), cluster / standalone: $(ratio "$(sum "${TPS[cache_mget_10_cluster_1]}" "${TPS[cache_mget_10_cluster_2]}")" "$(sum "${TPS[cache_mget_10_standalone_1]}" "${TPS[cache_mget_10_standalone_2]}")")x"
	echo "  cache_query_json 1-row hit, cluster / standalone: $(ratio "$(sum "${TPS[query_json_hit_cluster_1]}" "${TPS[query_json_hit_cluster_2]}")" "$(sum "${TPS[query_json_hit_standalone_1]}" "${TPS[query_json_hit_standalone_2]}")")x"
	echo "  COMMIT of a 1,000-row UPDATE (3,000 keys on every master), cluster / standalone: $(ratio "$COMMIT_C" "$COMMIT_S")x  (${COMMIT_C} ms vs ${COMMIT_S} ms, median of $BULK_RUNS; the unwatched table's COMMIT ${COMMIT_U} ms; target <= 1.5x)"
	echo "  runs: standalone ${cs[*]} ms; cluster ${cc[*]} ms; tenant keys left on the masters after the commits: $CL_LEFT"
	echo "  cache_delete of the same 3,000 keys, cluster / standalone: $(ratio "$DEL_C" "$DEL_S")x  (${DEL_C} ms vs ${DEL_S} ms, median of $BULK_RUNS)"
	echo "  cache_health() on the cluster: $(cat "$CL_DIR/health.json")"
fi
if [ -n "${TPS[local_cache_get_hit_1]:-}" ]; then
	ge() { python3 -c "import sys; print('met' if float(sys.argv[1]) >= float(sys.argv[2]) else 'NOT met')" "$1" "$2"; }
	two() { python3 -c "print(${TPS[${1}_1]} + ${TPS[${1}_2]})"; }  # the two alternated runs
	s1=$(two local_select_1)
	lh=$(two local_cache_get_hit)
	echo "local cache (local_cache_size $LOCAL_SIZE, local_cache_keys 'bench:*', state $LOCAL_STATE; each figure the sum of two alternated runs):"
	r=$(ratio "$lh" "$s1"); echo "  cache_get local hit / SELECT 1:                 ${r}x  (target >= 0.8x: $(ge "$r" 0.8))"
	if [ -n "${TPS[local_memcache_get_hit_1]:-}" ]; then
		r=$(ratio "$lh" "$(two local_memcache_get_hit)"); echo "  cache_get local hit / pgmemcache memcache_get:  ${r}x  (target >= 1.5x: $(ge "$r" 1.5))"
	else
		echo "  cache_get local hit / pgmemcache memcache_get:  (pgmemcache or memcached not installed)"
	fi
	echo "  cache_get local hit / cache_get via Redis:      $(ratio "$lh" "$(two local_cache_get_redis)")x  (cache_get via Redis / SELECT 1: $(ratio "$(two local_cache_get_redis)" "$s1")x)"
	r=$(ratio "$(two local_query1_hit)" "$s1"); echo "  cache_query_json 1-row local hit / SELECT 1:    ${r}x  (target >= 0.5x: $(ge "$r" 0.5); via Redis, one run each: $(ratio "${TPS[local_query1_redis]}" "${TPS[local_select_1_3]}")x)"
	r=$(ratio "$(two local_rows1000_hit)" "$(two local_rows1000_direct)"); echo "  cache_query 1,000-row local hit / the query:    ${r}x  (target >= 1.0x: $(ge "$r" 1.0); via Redis, one run each: $(ratio "${TPS[local_rows1000_redis]}" "${TPS[local_rows1000_direct_3]}")x)"
	read -r h0 f0 d0 l0 <<<"$LOCAL_T0"; read -r h1 f1 d1 l1 <<<"$LOCAL_T1"
	echo "  during the runs: $((h1 - h0)) local hits ($LOCAL_QHITS in the two cache_query_json runs), $((f1 - f0)) local fills, $((d1 - d0)) discards, $((l1 - l0)) flushes"
	echo "  Redis commands per 1,000 hot-key reads: cache_get with local cache: $CMD_LOCAL; without (rbench:*): $CMD_REDIS; cache_query_json 1-row with local cache: $CMD_QLOCAL"
	read -r lsize lused lentries larena <<<"$LOCAL_MEM"
	within=$(python3 -c "print('yes' if int('${lused:-0}' or 0) <= int('${lsize:-0}' or 0) else 'NO')")
	echo "  memory after reading $LOCAL_KEYS distinct keys (100-byte values): size_bytes $lsize, arena_bytes $larena, used_bytes $lused (used <= size: $within), entries $lentries, evictions $((LOCAL_EV1 - LOCAL_EV0)), state $LOCAL_STATE_END"
	echo "  pg_shmem_allocations: ${LOCAL_SHM:-(no row)}"
	echo "  the reading backend's RSS at most: VmRSS $LOCAL_RSS kB (RssAnon $LOCAL_ANON kB, RssShmem $LOCAL_SHMEM kB)"
	[ "$within" = yes ] || BENCH_FAILED="used_bytes > size_bytes"
fi
if [ -n "${RC_BENCH_CSV:-}" ]; then
	{ echo "benchmark,tps,ratio_select_1"
	  for r in "${results[@]}"; do echo "$r,${TPS[$r]},$(ratio "${TPS[$r]}" "${TPS[select_1]}")"; done
	} >"$RC_BENCH_CSV"
fi
if [ -n "${BENCH_FAILED:-}" ]; then
	echo "FAILED: $BENCH_FAILED"
	exit 1
fi
