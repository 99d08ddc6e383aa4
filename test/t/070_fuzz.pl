
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# The stored format of cached query results (src/query_format.c: encoder
# and decoder), built standalone (RCQ_STANDALONE) with AddressSanitizer and
# UBSan, every run the same (fixed seeds and counts, not a time budget):
#
# - test/fuzz/roundtrip_query_format.c: random row sets through the encoder
#   and the decoder, compared exactly and with a reference encoding; random
#   mutations of the encoded data and meta lines, each rejected with a
#   status or decoded within bounds; the encoder's refusals; golden bytes.
#   RC_ROUNDTRIP_SETS row sets (default 4000), 8 mutations each.
# - test/fuzz/fuzz_query_format.c under libFuzzer for RC_FUZZ_RUNS inputs
#   (default 300000, seed 1) from seeds written by test/fuzz/make_corpus.c
#   (valid entries that must pass every check, and a round-trip row set).
#
# Any crash, out-of-bounds read or undefined behaviour fails the test.  At
# the end, a server: the bytes a rows and a JSON entry are stored as are
# pinned (no format change when the encoder moved into query_format.c).

use strict;
use warnings;

use File::Basename qw(dirname);
use File::Path qw(make_path);
use File::Spec;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;

my $runs = $ENV{RC_FUZZ_RUNS} || 300000;
my $sets = $ENV{RC_ROUNDTRIP_SETS} || 4000;
my $seed = 15;
# the source tree: test/t/070_fuzz.pl is two levels down
my $root = File::Spec->rel2abs(dirname(__FILE__) . '/../..');
my $src = "$root/src";
my $fuzz = "$root/test/fuzz";
my $dir = "$PostgreSQL::Test::Utils::tmp_check/fuzz";
make_path("$dir/corpus");
my @sanitize = ('-fsanitize=address,undefined', '-fno-sanitize-recover=undefined');
my @common = ('-g', '-O1', '-DRCQ_STANDALONE', "-I$src", "$fuzz/fuzz_rows.c",
	"$src/query_format.c");

# clang ARGS...: true when it built
sub clang
{
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run([ 'clang', @_ ], '>', \$out, '2>', \$err);
	diag("$out$err") unless $ok;
	return $ok;
}

# ---- round trip --------------------------------------------------------------
SKIP:
{
	my $built = clang(@common, @sanitize, "$fuzz/roundtrip_query_format.c",
		'-o', "$dir/roundtrip");
	ok($built, 'the round-trip program builds (clang, ASan, UBSan)');
	skip 'no round-trip program', 12 unless $built;

	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run([ "$dir/roundtrip", $seed, $sets, 8, 2000 ],
		'>', \$out, '2>', \$err,
		IPC::Run::timeout(10 * $PostgreSQL::Test::Utils::timeout_default));
	my %f = $out =~ /^(\w+) (\S+)$/mg;
	note("round trip, seed $seed: " . join(', ', map { "$_ $f{$_}" }
		grep { exists $f{$_} } qw(rowsets columns cells nulls empty large
		  max_columns zero_rows bytes mutations rejected within_bounds
		  length_rejected json_sets)));
	ok($ok && $err eq '' && ($f{failures} // -1) == 0,
		'the round trip ends with no failure and no sanitizer report')
	  or diag($err);
	cmp_ok($f{rowsets} // 0, '==', $sets, "$sets random row sets");
	ok(($f{nulls} // 0) > 0 && ($f{empty} // 0) > 0 && ($f{large} // 0) > 0
		  && ($f{max_columns} // 0) > 0 && ($f{zero_rows} // 0) > 0,
		'with NULL, empty and large (64 kB to 1 MB) cells, 1664 columns and no rows');
	is($f{identical}, $f{rowsets},
		'the encoder writes the bytes of the reference encoding for each');
	is($f{decoded}, $f{rowsets},
		'the decoder gives back every column and cell exactly');
	is($f{meta_ok}, $f{rowsets}, 'and accepts their meta lines');
	is($f{meta_rejected}, $f{meta_mutations},
		'mutated meta lines are all rejected (' . ($f{meta_mutations} // '?') . ')');
	is($f{checksum_rejected}, $f{mutations},
		'the meta line rejects every mutated entry ('
		  . ($f{mutations} // '?') . ', ' . ($f{length_rejected} // '?')
		  . ' by the length, the rest by the CRC-32C)');
	ok(($f{rejected} // 0) > 0 && ($f{within_bounds} // 0) > 0
		  && $f{rejected} + $f{within_bounds} == $f{mutations},
		'without the checksum, rcq_rows_open() rejects '
		  . ($f{rejected} // '?') . ' with a status and '
		  . ($f{within_bounds} // '?') . ' decode within bounds');
	is($f{json_identical}, $f{json_sets},
		'JSON arrays are framed as the reference and their meta accepted ('
		  . ($f{json_sets} // '?') . ')');
	is($f{refused}, $f{refusals},
		'the encoder refuses, writing nothing, what the decoder would reject ('
		  . ($f{refusals} // '?') . ' cases)');
	is($f{golden_ok}, $f{golden},
		'golden bytes: the CRC-32C check value and hand-written entries');
}

# ---- libFuzzer ---------------------------------------------------------------
my $built = clang(@common, '-fsanitize=fuzzer,address,undefined',
	'-fno-sanitize-recover=undefined', "$fuzz/fuzz_query_format.c",
	'-o', "$dir/fuzz");
ok($built, 'the fuzzing harness builds (clang with libFuzzer)');

my ($out, $err) = ('', '');
my $seeded = clang(@common, @sanitize, "$fuzz/make_corpus.c",
	'-o', "$dir/make_corpus")
  && IPC::Run::run([ "$dir/make_corpus", "$dir/corpus" ],
	'>', \$out, '2>', \$err);
ok($seeded, 'the seed entries pass every check of the decoder')
  or diag("$out$err");
my @seeds = glob("$dir/corpus/*");
cmp_ok(scalar(@seeds), '==', 4, 'make_corpus wrote the seed entries');

SKIP:
{
	skip 'no fuzzing harness', 1 unless $built;
	my $log = "$dir/fuzz.log";
	my $ok = IPC::Run::run(
		[ "$dir/fuzz", "-runs=$runs", '-seed=1', '-timeout=5',
		  '-rss_limit_mb=1024', "-artifact_prefix=$dir/", "$dir/corpus" ],
		'>', $log, '2>&1',
		IPC::Run::timeout(20 * $PostgreSQL::Test::Utils::timeout_default));
	my $text = slurp_file($log);
	my ($done) = $text =~ /Done (\d+) runs/;
	my @tail = (split /\n/, $text)[-3 .. -1];
	note($_) for grep { defined } @tail;
	ok($ok && defined $done && $done == $runs,
		"libFuzzer, seed 1: " . ($done // '?') . " inputs (decoder and round trip), no crash")
	  or diag(join("\n", grep { /ERROR|SUMMARY/ } split /\n/, $text)
		  . "\nartifacts in $dir");
}

# ---- the bytes the server stores -------------------------------------------
# The encoder moved from query_rows.c to query_format.c (issue 15) without a
# format change: entries already in Redis must still decode.  The data of a
# result covering every binary-encoded type and text-encoded ones (NULLs,
# empty and large cells, every byte value, multibyte text) is pinned by its
# length, CRC-32C and SHA-1, as the encoder before the move wrote it.
my $redis = RedisCache::Server->new('format');
$redis->start;
my $node = $redis->new_pg_node('format',
	conf => "timezone = 'UTC'\ndatestyle = 'iso, mdy'\n");
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION redis_cache;
CREATE TABLE fmt (id int PRIMARY KEY, b bool, i2 int2, i8 int8, o oid,
	f4 float4, f8 float8, n numeric, d date, t time, ts timestamp,
	tz timestamptz, iv interval, u uuid, tx text, vc varchar(20), by bytea,
	ar int[], js jsonb, tt timetz, ip inet);
INSERT INTO fmt VALUES
	(1, true, 12, 1234567890123, 42, 1.5, 3.141592653589793, 12345.678900,
	 '2024-02-29', '13:14:15.123456', '2024-02-29 13:14:15.5',
	 '2024-02-29 13:14:15.5+02', '1 year 2 months 3 days 04:05:06.7',
	 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'acme', 'var', '\x00ff10',
	 '{1,NULL,3}', '{"k": [1, "two"]}', '13:14:15+05:30', '10.0.0.1/8'),
	(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
	 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
	(3, false, -32768, -9223372036854775808, 4294967295, '-Infinity', 'NaN',
	 'NaN', 'infinity', '24:00:00', '-infinity', 'infinity', '-178000000 years',
	 '00000000-0000-0000-0000-000000000000', '', '', '', '{}', '{}',
	 '00:00:00-15:59', '::1'),
	(4, true, 32767, 9223372036854775807, 0, '-0', '1e-308',
	 '-0.000000000000000000000000000001', '4713-01-01 BC', '00:00:00',
	 '294276-12-31 23:59:59.999999', '4713-11-24 00:00:00+00 BC', '0',
	 'ffffffff-ffff-ffff-ffff-ffffffffffff',
	 'Grüße – 日本 ' || repeat('x', 100000), repeat('é', 20),
	 (SELECT string_agg(set_byte('\x00'::bytea, 0, g), ''::bytea ORDER BY g)
	  FROM generate_series(0, 255) g),
	 ARRAY(SELECT generate_series(1, 1000)), '[null, true, "\u00e9"]',
	 '23:59:59.999999+15:59', 'ffff::/16');});

sub sql { return $node->safe_psql('postgres', $_[0]); }

my $COLS = 'id int, b bool, i2 int2, i8 int8, o oid, f4 float4, f8 float8, '
  . 'n numeric, d date, t time, ts timestamp, tz timestamptz, iv interval, '
  . 'u uuid, tx text, vc varchar(20), by bytea, ar int[], js jsonb, '
  . 'tt timetz, ip inet';
my $Q = 'SELECT * FROM fmt ORDER BY id';
# compared by digest: a failure would print 100 kB otherwise
my $ROWS = "SELECT md5(string_agg(r::text, ',')) FROM cache_query('$Q') AS r($COLS)";
my $JSON = "SELECT md5(cache_query_json('$Q')::text)";
my $direct = sql("SELECT md5(string_agg(r::text, ',' ORDER BY id)) FROM fmt r");
my $direct_json = sql("SELECT md5(jsonb_agg(r ORDER BY id)::text) FROM fmt r");

# meta (length and CRC-32C) and SHA-1 of the data of the entry at a key
sub stored
{
	my ($key) = @_;
	return $redis->cli('eval',
		q{return redis.call('HGET', KEYS[1], 'meta') .. ' ' .. redis.sha1hex(redis.call('HGET', KEYS[1], 'data'))},
		1, $key);
}

is(sql($ROWS), $direct, 'cache_query returns the rows (miss)');
my $rkey = sql("SELECT cache_query_key('$Q', '{}', 'rows')");
my $jkey = sql("SELECT cache_query_key('$Q')");
is(sql($JSON), $direct_json, 'cache_query_json returns the rows (miss)');
# written by the build before the move (commit d02d42c)
is(stored($rkey),
	'redis_cache/1 rows 105425 07554b7e f9ab6062483ce808b03ed3e638d1f1d2c163a6ba',
	'the rows entry has the bytes the encoder wrote before the move');
is(stored($jkey),
	'redis_cache/1 json 105783 ccdf227b dc3a6f6fa073a14f731ac7b01a7fa33fc93657aa',
	'the JSON entry has the bytes the encoder wrote before the move');

my $hits = sql('SELECT hits FROM cache_stats WHERE family IS NULL');
is(sql($ROWS), $direct, 'and it decodes to the same rows (hit)');
is(sql($JSON), $direct_json,
	'and the JSON entry decodes to the same document (hit)');
is(sql('SELECT hits FROM cache_stats WHERE family IS NULL'), $hits + 2,
	'both were hits');

$node->stop;
$redis->stop;

done_testing();
