#!/usr/bin/env bash
# test/run.sh: the one test command (also `make test`, and what .ci/run
# calls).  On a fresh Debian bookworm machine it installs the packages,
# builds and installs the extension, starts a temporary PostgreSQL (as a
# non-root user) and redis-server on loopback for pg_regress and the
# isolation specs, then runs `make installcheck` in three parts: pg_regress
# (test/sql), pg_isolation_regress (test/specs) and prove (test/t/*.pl,
# which start their own PostgreSQL clusters and redis-servers).  It ends
# with "N passed, N failed" over all three; the exit status is non-zero on
# any failure.
#
# pg_regress and the isolation specs run twice against the live server,
# which has a cache version, statistics and keys of its own, and must find
# them unchanged afterwards (hermetic installcheck).
#
# RC_SKIP_APT=1 skips the package step; RC_KEEP_TMP=1 keeps data and logs;
# test/run.sh test/t/010_outage.pl runs only the named TAP tests (and no
# pg_regress or isolation).
set -uo pipefail

cd "$(dirname "$0")/.."
RC_ROOT=$(pwd)
export RC_ROOT

. test/lib.sh
rc_install_packages
echo "== build and install"
if ! rc_build_install; then
	echo "build or install failed (run as root or with write access to $(pg_config --pkglibdir))"
	echo "0 passed, 1 failed"
	exit 1
fi

stack_start
trap stack_stop EXIT

# The tests run as the OS user that owns the clusters: PostgreSQL refuses
# root, and the TAP tests initdb their own clusters.  They run in a copy of
# the tree that user owns (tmp_check/, results/ and output_iso/ go there).
SRC="$RC_TMP/src"
mkdir -p "$SRC"
tar -C "$RC_ROOT" --exclude=.git --exclude=tmp_check --exclude=results \
	--exclude=output_iso -cf - . | tar -C "$SRC" -xf -
chown -R "$RC_PG_OS_USER" "$SRC" 2>/dev/null || true

run_make() {
	as_pg env PATH="$PATH" PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER="$PGUSER" \
		PGDATABASE="$PGDATABASE" HOME="$SRC" \
		make -s -C "$SRC" with_llvm=no "$@"
}

passed=0
failed=0

# count_pg_regress FILE: pg_regress and pg_isolation_regress print one
# "test NAME ... ok|FAILED" line per test.
count_pg_regress() {
	local ok bad
	ok=$(grep -cE '^(ok|test| ).* \.\.\. +ok' "$1")
	bad=$(grep -cE '\.\.\. +(FAILED|failed)|^not ok' "$1")
	if [ "$ok" = 0 ] && [ "$bad" = 0 ]; then bad=1; fi
	passed=$((passed + ok))
	failed=$((failed + bad))
}

# redis_snapshot: every key with a digest of its value (TTLs excluded: they
# run down), sorted; plus the extension's state file.
redis_snapshot() {
	redis_cli EVAL "local r = {} for _, k in ipairs(redis.call('KEYS', '*')) do r[#r + 1] = k .. ' ' .. redis.sha1hex(redis.call('DUMP', k)) end return r" 0 | sort
	sha1sum "$RC_TMP/pgdata/pg_stat/redis_cache.state" 2>/dev/null | cut -d' ' -f1
}

run_regress_and_isolation() {
	echo "== pg_regress ($1)"
	run_make installcheck ISOLATION= TAP_TESTS= >"$RC_TMP/regress.out" 2>&1
	grep -E '\.\.\.|^(ok|not ok)' "$RC_TMP/regress.out" || cat "$RC_TMP/regress.out"
	count_pg_regress "$RC_TMP/regress.out"
	[ -f "$SRC/regression.diffs" ] && head -200 "$SRC/regression.diffs"

	echo "== isolation ($1)"
	run_make installcheck REGRESS= TAP_TESTS= >"$RC_TMP/isolation.out" 2>&1
	grep -E '\.\.\.|^(ok|not ok)' "$RC_TMP/isolation.out" || cat "$RC_TMP/isolation.out"
	count_pg_regress "$RC_TMP/isolation.out"
	[ -f "$SRC/output_iso/regression.diffs" ] && head -200 "$SRC/output_iso/regression.diffs"
}

if [ $# -eq 0 ]; then
	# The suites run twice against a live server whose cache version and
	# statistics are not the defaults, which has application keys and a
	# cached result of its own: they must pass both times and leave Redis,
	# the server's statistics and its state file as they found them.
	q -c "ALTER SYSTEM SET redis_cache.version = 'deploy-ci-7f3a'" -c "SELECT pg_reload_conf()" >/dev/null
	q -c "CREATE EXTENSION redis_cache" \
	  -c "CREATE TABLE app_settings (org int PRIMARY KEY, locale text)" \
	  -c "INSERT INTO app_settings VALUES (3, 'de-DE')" \
	  -c "SELECT cache_watch('app_settings', 'settings:org:{org}:locale')" \
	  -c "SELECT cache_set('settings:org:3:locale', 'de-DE', 0)" \
	  -c "SELECT cache_get('tenant:id:1'), cache_query_json('SELECT * FROM app_settings')" >/dev/null
	redis_cli rpush queues:default job1 >/dev/null
	redis_cli set session:abc user42 >/dev/null
	before=$(redis_snapshot)
	stats_before=$(q -c "SELECT stats_reset, hits + misses FROM cache_stats WHERE family IS NULL")

	run_regress_and_isolation "first run"
	run_regress_and_isolation "second run"

	after=$(redis_snapshot)
	stats_after=$(q -c "SELECT stats_reset, hits + misses FROM cache_stats WHERE family IS NULL")
	if [ "$before" = "$after" ] && [ "${stats_before%|*}" = "${stats_after%|*}" ] &&
		[ "${stats_after#*|}" -ge "${stats_before#*|}" ]; then
		echo "ok - pg_regress and isolation leave Redis, the statistics and the state file unchanged"
		passed=$((passed + 1))
	else
		echo "not ok - pg_regress and isolation left changes behind"
		diff <(echo "$before") <(echo "$after") | head -40
		echo "statistics: $stats_before -> $stats_after"
		failed=$((failed + 1))
	fi
	tests=""
else
	tests="$*"
fi

echo "== TAP (prove)"
run_make installcheck REGRESS= ISOLATION= ${tests:+PROVE_TESTS="$tests"} \
	PROVE_FLAGS="-I ./test/perl --timer" 2>&1 | tee "$RC_TMP/tap.out"
tap_rc=${PIPESTATUS[0]}
# prove's summary: "Files=7, Tests=156, ..." and, per failing file,
# "Failed N/M subtests"
tap_total=$(sed -n 's/^Files=[0-9]*, Tests=\([0-9]*\),.*/\1/p' "$RC_TMP/tap.out")
tap_bad=$(sed -n 's/.*Failed \([0-9]*\)\/[0-9]* subtests.*/\1/p' "$RC_TMP/tap.out" | awk '{s += $1} END {print s + 0}')
tap_total=${tap_total:-0}
tap_bad=${tap_bad:-0}
if [ "$tap_rc" != 0 ] && [ "$tap_bad" = 0 ]; then
	tap_bad=1   # a script died or exited non-zero without a failing assertion
fi
passed=$((passed + tap_total - tap_bad))
failed=$((failed + tap_bad))
if [ "$tap_bad" != 0 ]; then
	for f in "$SRC"/tmp_check/log/regress_log_*; do
		[ -f "$f" ] && grep -q 'not ok\|died\|Dubious' "$f" && { echo "---- $f"; tail -80 "$f"; }
	done
	if [ -n "${RC_KEEP_TMP:-}" ]; then echo "logs in $SRC/tmp_check/log"; fi
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
