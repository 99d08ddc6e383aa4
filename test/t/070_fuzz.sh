#!/usr/bin/env bash
# libFuzzer + AddressSanitizer + UBSan on the decoder of cached query results
# (src/query_format.c), for RC_FUZZ_SECONDS (default 30).  Seeds are valid
# rows and JSON entries written by test/fuzz/make_corpus.c.  Any crash,
# out-of-bounds read or undefined behaviour fails the test.
set -u
. "$RC_ROOT/test/lib.sh"

seconds=${RC_FUZZ_SECONDS:-30}
dir="$RC_TMP/fuzz"
mkdir -p "$dir/corpus"
src="$RC_ROOT/src"

if ! clang -g -O1 -DRCQ_STANDALONE -I"$src" -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=undefined \
	"$RC_ROOT/test/fuzz/fuzz_query_format.c" "$src/query_format.c" -o "$dir/fuzz" \
	>"$dir/build.log" 2>&1; then
	cat "$dir/build.log"
	not_ok "the fuzzing harness builds (clang with libFuzzer)"
	exit 0
fi
ok "the fuzzing harness builds (clang with libFuzzer)"

clang -DRCQ_STANDALONE -I"$src" "$RC_ROOT/test/fuzz/make_corpus.c" "$src/query_format.c" \
	-o "$dir/make_corpus" && "$dir/make_corpus" "$dir/corpus"
is "$?" "0" "the seed entries pass every check of the decoder"

"$dir/fuzz" -max_total_time="$seconds" -timeout=5 -rss_limit_mb=1024 \
	-artifact_prefix="$dir/" "$dir/corpus" >"$dir/fuzz.log" 2>&1
rc=$?
tail -3 "$dir/fuzz.log" | sed 's/^/# /'
runs=$(grep -oE 'Done [0-9]+ runs' "$dir/fuzz.log" | grep -oE '[0-9]+')
if [ $rc = 0 ]; then
	ok "decoder fuzzed for ${seconds} s: ${runs:-?} inputs, no crash"
else
	grep -E 'ERROR|SUMMARY' "$dir/fuzz.log" | head -5 | sed 's/^/# /'
	not_ok "decoder fuzzed for ${seconds} s without a crash" "artifacts in $dir"
fi
