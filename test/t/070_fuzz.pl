
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# libFuzzer + AddressSanitizer + UBSan on the decoder of cached query results
# (src/query_format.c), for RC_FUZZ_SECONDS (default 30).  Seeds are valid
# rows and JSON entries written by test/fuzz/make_corpus.c, and must pass
# every check of the decoder.  Any crash, out-of-bounds read or undefined
# behaviour fails the test.  Needs no server: the decoder is built
# standalone (RCQ_STANDALONE).

use strict;
use warnings;

use File::Basename qw(dirname);
use File::Path qw(make_path);
use File::Spec;
use PostgreSQL::Test::Utils;
use Test::More;

my $seconds = $ENV{RC_FUZZ_SECONDS} || 30;
# the source tree: test/t/070_fuzz.pl is two levels down
my $root = File::Spec->rel2abs(dirname(__FILE__) . '/../..');
my $src = "$root/src";
my $dir = "$PostgreSQL::Test::Utils::tmp_check/fuzz";
make_path("$dir/corpus");

my ($out, $err) = ('', '');
my $built = IPC::Run::run(
	[ 'clang', '-g', '-O1', '-DRCQ_STANDALONE', "-I$src",
	  '-fsanitize=fuzzer,address,undefined', '-fno-sanitize-recover=undefined',
	  "$root/test/fuzz/fuzz_query_format.c", "$src/query_format.c",
	  '-o', "$dir/fuzz" ],
	'>', \$out, '2>', \$err);
ok($built, 'the fuzzing harness builds (clang with libFuzzer)')
  or diag("$out$err");

($out, $err) = ('', '');
my $seeded = IPC::Run::run(
	[ 'clang', '-DRCQ_STANDALONE', "-I$src",
	  "$root/test/fuzz/make_corpus.c", "$src/query_format.c",
	  '-o', "$dir/make_corpus" ],
	'>', \$out, '2>', \$err)
  && IPC::Run::run([ "$dir/make_corpus", "$dir/corpus" ],
	'>', \$out, '2>', \$err);
ok($seeded, 'the seed entries pass every check of the decoder')
  or diag("$out$err");
my @seeds = glob("$dir/corpus/*");
cmp_ok(scalar(@seeds), '>', 0, 'make_corpus wrote seed entries');

SKIP:
{
	skip 'no fuzzing harness', 1 unless $built;
	my $log = "$dir/fuzz.log";
	my $ok = IPC::Run::run(
		[ "$dir/fuzz", "-max_total_time=$seconds", '-timeout=5',
		  '-rss_limit_mb=1024', "-artifact_prefix=$dir/", "$dir/corpus" ],
		'>', $log, '2>&1',
		IPC::Run::timeout($seconds + $PostgreSQL::Test::Utils::timeout_default));
	my $text = slurp_file($log);
	my ($runs) = $text =~ /Done (\d+) runs/;
	my @tail = (split /\n/, $text)[-3 .. -1];
	note($_) for grep { defined } @tail;
	ok($ok && defined $runs,
		"decoder fuzzed for $seconds s: " . ($runs // '?') . ' inputs, no crash')
	  or diag(join("\n", grep { /ERROR|SUMMARY/ } split /\n/, $text)
		  . "\nartifacts in $dir");
}

done_testing();
