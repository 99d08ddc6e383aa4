#!/usr/bin/env bash
# test/run.sh: the one test command (also `make test`, and what .ci/run
# calls).  On a fresh Debian bookworm machine it installs the packages,
# builds and installs the extension, starts a temporary PostgreSQL (as a
# non-root user) and redis-server on loopback, runs pg_regress and every
# test/t/*.sh fault/concurrency test, stops everything and ends with
# "N passed, N failed".  Exit status is non-zero on any failure.
#
# RC_SKIP_APT=1 skips the package step; RC_KEEP_TMP=1 keeps data and logs;
# test/run.sh t/010_outage.sh runs only the named test scripts.
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

passed=0
failed=0

echo "== pg_regress (make installcheck)"
make -s with_llvm=no installcheck >"$RC_TMP/installcheck.out" 2>&1
cat "$RC_TMP/installcheck.out" | grep -E '^(ok|not ok|test| +[a-z_]+ +\.\.\.)|\.\.\. ' || true
n_ok=$(grep -cE '\.\.\. ok' "$RC_TMP/installcheck.out")
n_bad=$(grep -cE '\.\.\. FAILED|\.\.\. failed' "$RC_TMP/installcheck.out")
if [ "$n_ok" = 0 ] && [ "$n_bad" = 0 ]; then
	cat "$RC_TMP/installcheck.out"
	n_bad=1
fi
if [ "$n_bad" != 0 ] && [ -f regression.diffs ]; then
	head -200 regression.diffs
fi
passed=$((passed + n_ok))
failed=$((failed + n_bad))

if [ $# -gt 0 ]; then
	tests=("$@")
else
	tests=(test/t/*.sh)
fi
for t in "${tests[@]}"; do
	[ -f "$t" ] || t="test/$t"
	[ -f "$t" ] || continue
	echo "== $t"
	out="$RC_TMP/$(basename "$t").out"
	timeout 600 bash "$t" >"$out" 2>&1
	rc=$?
	cat "$out"
	t_ok=$(grep -c '^ok' "$out")
	t_bad=$(grep -c '^not ok' "$out")
	if [ $rc != 0 ] && [ "$t_bad" = 0 ]; then
		echo "not ok - $t exited with status $rc"
		t_bad=1
	fi
	passed=$((passed + t_ok))
	failed=$((failed + t_bad))
done

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
