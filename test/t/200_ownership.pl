
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# Never delete what the cache does not own.  One Redis database shared, as
# in production, with an empty key_prefix: the cache (watched templates
# 'tenant:id:{id}' and 'tenant:subdomain:{subdomain}', a declared family
# 'product:*', query results) beside application data (a job queue list,
# a hash, a string session, another framework's keys, a settings key that
# nobody declared as cache).  Each recovery path is driven for real and
# must leave the application data intact and no stale entry behind:
#
#   - Redis paused (SIGSTOP) for 250 ms during a one-row UPDATE: the replay
#     queue removes exactly that row's keys, the rest of the family stays;
#   - the replay queue overflowing (redis_cache.replay_queue_keys = 16): the
#     families of the table concerned, not the declared ones;
#   - Redis restarted from an RDB snapshot older than the last write;
#   - PostgreSQL stopped in immediate mode;
#   - a cache version change.
#
# Per path, "deleted N of M" compares what was deleted with what needed
# deleting (diag lines, quoted in the issue note).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(time usleep);

my $timeout = $PostgreSQL::Test::Utils::timeout_default;

my $redis = RedisCache::Server->new('ownership');
$redis->start;
my $node = $redis->new_pg_node('ownership',
	conf => "redis_cache.commit_timeout_ms = 100\n"
	  . "redis_cache.cache_families = 'product:*'\n"
	  . "redis_cache.replay_queue_keys = 16\n");
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION redis_cache;
CREATE TABLE tenants (id int PRIMARY KEY, subdomain text NOT NULL);
INSERT INTO tenants SELECT g, 's' || g FROM generate_series(1, 10) g;
SELECT cache_watch('tenants', 'tenant:id:{id}', 'tenant:subdomain:{subdomain}');
});

# The application's own data, in the same database, no prefix.
my %app = (
	'session:abc'           => 'string',
	'queues:default'        => 'list',
	'app:user:1'            => 'hash',
	'laravel_cache:foo'     => 'string',
	'settings:org:3:locale' => 'string',);

sub write_app_data
{
	$redis->cli("del queues:default\nrpush queues:default job1 job2 job3\n"
		  . "hset app:user:1 name alice plan pro\n"
		  . "set session:abc user-42\n"
		  . "set laravel_cache:foo bar\n"
		  . "set settings:org:3:locale fr_FR\n");
	return;
}

# Every application key is there with its content.
sub app_data_intact
{
	my ($what) = @_;
	my @problems;
	for my $k (sort keys %app)
	{
		my $type = $redis->cli('type', $k) // '';
		push @problems, "$k is $type" if $type ne $app{$k};
	}
	push @problems, 'queue lost jobs'
	  if ($redis->cli('llen', 'queues:default') // '') ne '3';
	push @problems, 'session changed'
	  if ($redis->cli('get', 'session:abc') // '') ne 'user-42';
	push @problems, 'hash changed'
	  if ($redis->cli('hget', 'app:user:1', 'name') // '') ne 'alice';
	is(join(', ', @problems), '', "$what: application data intact");
	return;
}

sub scan_keys
{
	my ($pattern) = @_;
	my @keys = sort split /\n/, ($redis->cli('--scan', '--pattern', $pattern) // '');
	return @keys;
}

# Cache keys by kind: key-value entries of the families, query results.
sub cache_keys
{
	my @kv = (scan_keys('tenant:*'), scan_keys('product:*'));
	my @results = grep { !/:(gen|deps|deps-dead)(:|$)/ && !/:lock$/ }
	  scan_keys('query:*');
	return (\@kv, \@results);
}

sub fill_cache
{
	$node->safe_psql('postgres', q{
SELECT count(*) FROM tenants
 WHERE cache_set('tenant:id:' || id, 'v') AND cache_set('tenant:subdomain:' || subdomain, 'v');
SELECT cache_set('product:details:' || g, 'p') FROM generate_series(1, 3) g;
SELECT count(*) FROM generate_series(1, 10) g,
       LATERAL cache_query('SELECT id, subdomain FROM tenants WHERE id = $1',
                           ARRAY[g::text], 600) AS t(id int, subdomain text);
});
	my ($kv, $results) = cache_keys();
	return (scalar(@$kv), scalar(@$results));
}

# polls a state with a deadline (RedisCache::Server)
*poll = \&RedisCache::Server::poll_until;

sub replay_queued
{
	return $node->safe_psql('postgres',
		"SELECT (cache_health()->>'replay_queued')::int");
}

sub count_log
{
	my ($re) = @_;
	my $log = slurp_file($node->logfile);
	return scalar(() = $log =~ /$re/g);
}

write_app_data();
my $families = $node->safe_psql('postgres',
	"SELECT string_agg(family || '/' || source, ' ' ORDER BY family COLLATE \"C\") FROM cache_families()");
is($families,
	'product:*/setting tenant:id:*/watch tenant:subdomain:*/watch',
	'owned families: declared and recorded by cache_watch');

# --- 1. a 250 ms stall during a one-row UPDATE: exact replay ---------------
{
	my ($nkv, $nresults) = fill_cache();
	is($nkv, 23, 'stall: 20 tenant and 3 product entries cached');
	my %before = map { $_ => 1 } @{ (cache_keys())[0] };

	$redis->pause;
	my $paused_at = time();
	my $s = RedisCache::Server::start_psql($node,
		"UPDATE tenants SET subdomain = 's3x' WHERE id = 3");
	RedisCache::Server::finish_psql($s);
	my $rest = 0.25 - (time() - $paused_at);
	usleep(int($rest * 1e6)) if $rest > 0;
	$redis->resume;

	poll('stall: the replay queue drains', sub { replay_queued() == 0 });
	my @after = @{ (cache_keys())[0] };
	my %after = map { $_ => 1 } @after;
	my @deleted = sort grep { !$after{$_} } keys %before;
	is(join(' ', @deleted), 'tenant:id:3 tenant:subdomain:s3',
		'stall: exactly the row\'s keys were deleted');
	is(scalar(@after), 21, 'stall: the rest of the family stays cached');
	my ($kv, $results) = cache_keys();
	is(scalar(@$results), 0, 'stall: the query results over tenants ended');
	ok(count_log(qr/replayed \d+ invalidations that could not be delivered at commit/) >= 1,
		'stall: the worker logged the replay');
	is(count_log(qr/flushed \d+ owned keys/), 0, 'stall: nothing was flushed');
	app_data_intact('stall');
	diag("recovery path stall (250 ms SIGSTOP during a one-row UPDATE): deleted "
		  . scalar(@deleted) . " of 2 key-value entries that needed deleting (plus $nresults query results of the table)");
}

# --- 2. the replay queue overflows: the table's families --------------------
{
	my ($nkv) = fill_cache();
	$redis->pause;
	my $s = RedisCache::Server::start_psql($node,
		"UPDATE tenants SET subdomain = subdomain || 'y' WHERE id <= 8");
	RedisCache::Server::finish_psql($s);
	$redis->resume;
	like($s->{err}, qr/replay queue is full/,
		'overflow: the commit says it falls back to the families');
	poll('overflow: the tenant families are deleted',
		sub { scalar(scan_keys('tenant:*')) == 0 });
	poll('overflow: the replay queue drains', sub { replay_queued() == 0 });
	is(scalar(scan_keys('product:*')), 3,
		'overflow: a family the table does not write stays cached');
	app_data_intact('overflow');
	diag("recovery path replay overflow (16 entries, 8 rows): deleted 20 of 16 key-value entries that needed deleting (the table's two families)");
}

# --- 3. Redis restarted from a snapshot older than the last write -----------
{
	my ($nkv, $nresults) = fill_cache();
	is($redis->cli('save'), 'OK', 'snapshot: RDB saved');
	# delivered at once, but the snapshot still has the old entries
	$node->safe_psql('postgres', "UPDATE tenants SET subdomain = 's4z' WHERE id = 4");
	is($redis->cli('exists', 'tenant:id:4'), '0', 'snapshot: the write deleted its keys');
	$redis->kill9;
	$redis->start;
	is($redis->cli('exists', 'tenant:id:4'), '1', 'snapshot: Redis restored the stale entry');

	my $flushes = count_log(qr/Redis restart detected/);
	$node->safe_psql('postgres', 'SELECT cache_ping()');
	poll('snapshot: a new backend flushes', sub { count_log(qr/Redis restart detected/) > $flushes });
	my ($kv, $results) = cache_keys();
	is(join(' ', @$kv), '', 'snapshot: no owned entry is left, the stale one included');
	is(scalar(@$results), 0, 'snapshot: no query result is left');
	is($node->safe_psql('postgres', "SELECT cache_get('tenant:id:4') IS NULL"), 't',
		'snapshot: the stale entry is not served');
	app_data_intact('snapshot');
	diag("recovery path Redis restore from an old snapshot: deleted $nkv key-value entries and $nresults query results (all owned) where 2 entries and the table's results were stale; the extension cannot tell which, so it removes its own keys and nothing else");
}

# --- 4. PostgreSQL stopped in immediate mode ---------------------------------
{
	my ($nkv, $nresults) = fill_cache();
	my $unclean = count_log(qr/previous shutdown was not clean/);
	$node->stop('immediate');
	$node->start;
	poll('immediate stop: the worker flushes the owned keys',
		sub { count_log(qr/previous shutdown was not clean/) > $unclean });
	poll('immediate stop: owned entries gone', sub {
		my ($kv, $results) = cache_keys();
		return @$kv == 0 && @$results == 0;
	});
	app_data_intact('immediate stop');
	diag("recovery path PostgreSQL immediate stop: deleted $nkv key-value entries and $nresults query results (all owned; a commit may have died between its commit record and its send)");
}

# --- 5. a cache version change ------------------------------------------------
{
	my ($nkv, $nresults) = fill_cache();
	my $before = count_log(qr/cache version mismatch/);
	$node->safe_psql('postgres', "ALTER SYSTEM SET redis_cache.version = 'deploy-2'");
	$node->reload;
	poll('version: a new backend flushes', sub {
		$node->safe_psql('postgres', 'SELECT cache_ping()');
		return count_log(qr/cache version mismatch/) > $before;
	});
	my ($kv, $results) = cache_keys();
	is(join(' ', @$kv), '', 'version: no owned entry is left');
	is(scalar(@$results), 0, 'version: no query result is left');
	app_data_intact('version');
	diag("recovery path cache version change: deleted $nkv key-value entries and $nresults query results (all owned: every entry is of the old deploy)");
}

# --- the commit pipeline still delivers at once when Redis answers ----------
{
	fill_cache();
	$node->safe_psql('postgres', "UPDATE tenants SET subdomain = 's5q' WHERE id = 5");
	is($redis->cli('exists', 'tenant:id:5'), '0', 'normal commit: keys deleted at commit');
	is(scalar(scan_keys('tenant:id:*')), 9, 'normal commit: the rest stays');
	is(replay_queued(), '0', 'normal commit: nothing handed to the worker');
	app_data_intact('normal commit');
}

$node->stop;
done_testing();
