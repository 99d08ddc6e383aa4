
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# The worker's state files under pg_stat/: written with a format header,
# read back after a clean stop, ignored (as an unclean stop) when damaged,
# the files of version 1.2 in the data directory taken over once, and
# cache_forget_namespace() releasing a prefix.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;

my $redis = RedisCache::Server->new('main');
$redis->start;
my $node = $redis->new_pg_node('state',
	conf => "redis_cache.cache_families = 'tenant:*'\n");
$node->start;
my $data = $node->data_dir;

$node->safe_psql('postgres', q{
CREATE EXTENSION redis_cache;
CREATE TABLE tenants (id int PRIMARY KEY, name text);
INSERT INTO tenants VALUES (1, 'a');
SELECT cache_watch('tenants', 'tenant:id:{id}');
SET redis_cache.key_prefix = 'st:';
UPDATE tenants SET name = 'b' WHERE id = 1;});
$node->safe_psql('postgres', q{
SET redis_cache.key_prefix = 'st2:';
SELECT cache_query_json('SELECT name FROM tenants');});

$node->stop;
my $state = slurp_file("$data/pg_stat/redis_cache.state");
is(unpack('L', $state), 0x52435346, 'the state file starts with its header');
like($state, qr/seen\tst:\n/, 'a prefix whose keys were invalidated is recorded');
like($state, qr/seen\tst2:\n/, 'a prefix holding query results is recorded');
like($state, qr/clean\n$/, 'a clean stop is recorded');
ok(-f "$data/pg_stat/redis_cache.tables", 'the table bitmap is saved at a clean stop');
ok(!-e "$data/redis_cache.state", 'nothing at the top of the data directory');

# a damaged file counts as an unclean stop (the namespaces it listed are
# lost with it: the README says so) and is replaced by a good one
my $offset = -s $node->logfile;
open(my $fh, '+<', "$data/pg_stat/redis_cache.state") or die $!;
seek($fh, 20, 0);
print $fh 'X';
close($fh);
$node->start;
$node->wait_for_log(qr/ignoring damaged state file/, $offset);
pass('a damaged state file is reported and ignored');
$node->wait_for_log(qr/invalidation worker started/, $offset);
$node->stop;
like(slurp_file("$data/pg_stat/redis_cache.state"), qr/clean\n$/,
	'after a damaged file the worker writes a good one');

# version 1.2's files: redis_cache.state (text, no header) and
# redis_cache.tables at the top of the data directory
unlink("$data/pg_stat/redis_cache.state", "$data/pg_stat/redis_cache.tables");
open($fh, '>', "$data/redis_cache.state") or die $!;
print $fh "missed\tlegacy:\n";
close($fh);
# 1.2's bitmap: a magic number, padding, 1024 words; every bit set here
open($fh, '>:raw', "$data/redis_cache.tables") or die $!;
print $fh pack('L', 0x52435432) . ("\0" x 4) . ("\xff" x (8 * 1024));
close($fh);
$redis->cli('set', 'legacy:tenant:id:9', 'stale');
$redis->cli('set', 'other:key', 'kept');
$offset = -s $node->logfile;
$node->start;
$node->wait_for_log(qr/flushed 1 owned keys under prefix "legacy:"/, $offset);
is($redis->cli('exists', 'legacy:tenant:id:9'), '0',
	'a namespace marked missed in the 1.2 state file is flushed');
is($redis->cli('get', 'other:key'), 'kept', 'keys of other prefixes stay');
ok(!-e "$data/redis_cache.state", 'the 1.2 state file is taken over and removed');
$node->stop;
like(slurp_file("$data/pg_stat/redis_cache.state"), qr/seen\tlegacy:\n/,
	'the 1.2 namespaces are carried into the new file');
my $tables = slurp_file("$data/pg_stat/redis_cache.tables");
is(substr($tables, 16), "\xff" x (8 * 1024),
	'the 1.2 table bitmap is loaded and saved in the new file');
ok(!-e "$data/redis_cache.tables", 'the 1.2 bitmap file is removed once replaced');

# cache_forget_namespace: superuser only, false for an unknown prefix
$node->start;
$node->safe_psql('postgres', 'CREATE ROLE app LOGIN');
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT cache_forget_namespace('legacy:')}, extra_params => [ '-U', 'app' ]);
like($stderr, qr/permission denied for function cache_forget_namespace/,
	'cache_forget_namespace is not executable by ordinary roles');
# this cluster's namespace of query results (keys.c), and another one's
my ($ns) = $node->safe_psql('postgres', q{SELECT cache_query_key('SELECT 1')})
  =~ /^query:\{(\d+\.\d+)\}:/;
$redis->cli('set', "legacy:query:{$ns}:1:10:abc", 'a result');
$redis->cli('set', "legacy:query:$ns:1:10:abc", 'a result of 1.6');
$redis->cli('set', 'legacy:query:1.1:1:10:abc', 'another cluster');
$redis->cli('set', 'legacy:query:{1.1}:1:10:abc', 'another cluster');
is($node->safe_psql('postgres', q{SELECT cache_forget_namespace('legacy:')}), 't',
	'a tracked prefix is forgotten');
is($redis->cli('exists', "legacy:query:{$ns}:1:10:abc", "legacy:query:$ns:1:10:abc"), '0',
	'forgetting removes the cached query results of the prefix (both layouts)');
is($redis->cli('exists', 'legacy:query:1.1:1:10:abc', 'legacy:query:{1.1}:1:10:abc'), '2',
	'forgetting leaves the query results of another cluster');
$redis->cli('del', 'legacy:query:1.1:1:10:abc', 'legacy:query:{1.1}:1:10:abc');
is($node->safe_psql('postgres', q{SELECT cache_forget_namespace('legacy:')}), 'f',
	'forgetting it again says it was not tracked');
is($node->safe_psql('postgres', q{SELECT cache_forget_namespace('never:')}), 'f',
	'an unknown prefix is not tracked');
$node->safe_psql('postgres', q{
SET redis_cache.key_prefix = 'st2:';
SELECT cache_query_json('SELECT name FROM tenants WHERE id = 1');});
$node->stop('immediate');
unlike(slurp_file("$data/pg_stat/redis_cache.state"), qr/legacy:/,
	'a forgotten prefix is gone from the state file');
$redis->cli('set', 'legacy:tenant:id:9', 'app data now');
$offset = -s $node->logfile;
$node->start;
$node->wait_for_log(qr/previous shutdown was not clean/, $offset);
$node->poll_query_until('postgres', q{SELECT cache_ping() = 'PONG'});
# the flush after the crash covers the tracked prefixes only; wait until
# the worker logged a flush of each of them
$node->wait_for_log(qr/flushed \d+ owned keys under prefix "st2:"/, $offset);
is($redis->cli('get', 'legacy:tenant:id:9'), 'app data now',
	'a forgotten prefix is not flushed after a crash');

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no backend crashed');

done_testing();
