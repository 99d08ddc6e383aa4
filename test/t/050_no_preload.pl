
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# Without shared_preload_libraries: statistics are per backend, invalidation
# still happens at commit (patterns scanned at commit), an undeliverable
# invalidation is reported instead of silently dropped, and cache_query
# caches only results over watched tables.  Preloading again at the end
# gives server-wide statistics.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;

my $redis = RedisCache::Server->new('main');
$redis->start;
my $node = $redis->new_pg_node('np', preload => 0);
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION redis_cache');

my $out = $node->safe_psql('postgres', q{
SET redis_cache.key_prefix = 'np:';
SELECT cache_get('tenant:id:1');
SELECT scope, misses FROM cache_stats WHERE family IS NULL;});
is((split /\n/, $out)[-1], 'backend|1',
	'without preloading cache_stats covers this backend and says so');

$node->safe_psql('postgres', q{
CREATE TABLE products (id int PRIMARY KEY, name text);
INSERT INTO products VALUES (7, 'anvil');
SELECT cache_watch('products', 'product:details:{id}', 'product:variants:{id}:*');});
$redis->cli("SET product:details:7 x\nSET product:variants:7:red x\nSET product:variants:70:red x\n");
$node->safe_psql('postgres', q{UPDATE products SET name = 'anvil2' WHERE id = 7});
is($redis->cli('exists', 'product:details:7', 'product:variants:7:red'), '0',
	'without preloading keys and patterns are invalidated when COMMIT returns');
is($redis->cli('exists', 'product:variants:70:red'), '1',
	'the pattern is exact (70 untouched)');

# Redis paused while the UPDATE commits: the session pauses it itself,
# after its connection (and version check) is made.
$redis->cli('set', 'product:details:7', 'x');
my $pid = $redis->pid;
my ($stdout, $stderr);
$node->psql('postgres', qq{
SELECT cache_ping();
\\! kill -STOP $pid
UPDATE products SET name = 'anvil3' WHERE id = 7;
\\! kill -CONT $pid
}, stdout => \$stdout, stderr => \$stderr);
like($stderr, qr/cache invalidations of this transaction were not delivered/,
	'without preloading a lost invalidation is reported');
like($stderr, qr/shared_preload_libraries/, 'the WARNING recommends preloading');
is($node->safe_psql('postgres', 'SELECT name FROM products WHERE id = 7'),
	'anvil3', 'the commit itself succeeded');

# cache_query: only results over watched tables are cached
$node->safe_psql('postgres', q{
CREATE TABLE np_q (id int, v int);
INSERT INTO np_q VALUES (1, 1);
CREATE SEQUENCE np_runs;
-- nextval() declared IMMUTABLE, on purpose: a query calling a volatile
-- function is never cached, an IMMUTABLE function of the database is trusted
CREATE FUNCTION test_nextval(regclass) RETURNS bigint LANGUAGE sql IMMUTABLE
AS 'SELECT nextval($1)';});
my $q = q{SELECT cache_query_json('SELECT v, test_nextval(''np_runs'') AS run FROM np_q')};
my $a = $node->safe_psql('postgres', $q);
my $b = $node->safe_psql('postgres', $q);
isnt($b, $a, "without preloading results over an unwatched table are not cached ($a, $b)");
$node->safe_psql('postgres', q{SELECT cache_watch('np_q')});
$a = $node->safe_psql('postgres', $q);
$b = $node->safe_psql('postgres', $q);
is($b, $a, 'after cache_watch(table) its results are cached');
$node->safe_psql('postgres', 'UPDATE np_q SET v = 2');
like($node->safe_psql('postgres', $q), qr/"v": 2/,
	'the watch trigger of another session ends them at commit');

$node->append_conf('postgresql.conf', "shared_preload_libraries = 'redis_cache'");
$node->restart;
is($node->safe_psql('postgres', 'SELECT scope FROM cache_stats WHERE family IS NULL'),
	'server', 'with preloading cache_stats covers the server');

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no backend crashed');

done_testing();
