
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
use RedisCache::Server;
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
