
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# Cached query results belong to one WAL history (keys.c): the namespace
# prefix||"query:{<system identifier>.<timeline>}:" holds the results, the
# generations and the dependency sets (the braces: one Redis Cluster slot
# per namespace).
#
# (a) Two independently initdb'd clusters share one Redis and one
#     key_prefix, with the same schema (same OIDs) and different rows: each
#     is served its own rows, a write on one ends its results only, and the
#     worker's flush after a missed invalidation leaves the other cluster's
#     results alone.
# (b) A primary and a streaming standby share one Redis: the standby reads
#     the primary's results, its start (with the primary's state file
#     copied by the base backup) deletes nothing, and once promoted it
#     never serves a result stored while the old primary ran.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;

my $redis = RedisCache::Server->new('identity');
$redis->start;

my $conf = "redis_cache.key_prefix = 'app:'\nredis_cache.cache_families = 'tenant:*'\n";
my $q = q{SELECT cache_query_json('SELECT id, name FROM items ORDER BY id')};
my $key_sql = q{SELECT cache_query_key('SELECT id, name FROM items ORDER BY id')};

# All keys under app:, sorted, as one string.
sub redis_keys
{
	my @keys = sort split /\n/, ($redis->cli('keys', 'app:*') // '');
	return join("\n", @keys);
}

sub exists_key
{
	my ($key) = @_;
	return $redis->cli('exists', $key) eq '1';
}

# The namespace part of a result key: "<system identifier>.<timeline>".
sub namespace_of
{
	my ($key) = @_;
	$key =~ /^app:query:\{(\d+\.\d+)\}:\d+:\d+:[0-9a-f]{64}$/
	  or die "unexpected key layout: $key";
	return $1;
}

my $schema = q{
CREATE EXTENSION redis_cache;
CREATE TABLE items (id int PRIMARY KEY, name text);
};

# --- (a) two clusters, one Redis, one key_prefix ------------------------------

my $a = $redis->new_pg_node('cluster_a', conf => $conf);
my $b = $redis->new_pg_node('cluster_b', conf => $conf);
$a->start;
$b->start;
$a->safe_psql('postgres', $schema . q{INSERT INTO items VALUES (1, 'a-row');});
$b->safe_psql('postgres', $schema . q{INSERT INTO items VALUES (1, 'b-row');});

my $oid_sql = q{SELECT 'items'::regclass::oid};
is($a->safe_psql('postgres', $oid_sql), $b->safe_psql('postgres', $oid_sql),
	'both clusters gave the table the same OID');
isnt($a->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()'),
	$b->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()'),
	'the clusters have different system identifiers');

my $ka = $a->safe_psql('postgres', $key_sql);
my $kb = $b->safe_psql('postgres', $key_sql);
my $nsa = namespace_of($ka);
my $nsb = namespace_of($kb);
isnt($ka, $kb, 'the same call has different result keys on the two clusters');
is($nsa, $a->safe_psql('postgres',
		q{SELECT system_identifier || '.1' FROM pg_control_system()}),
	'the namespace is the system identifier and the timeline');

like($a->safe_psql('postgres', $q), qr/a-row/, 'cluster A: its own rows');
ok(exists_key($ka), 'cluster A stored its result');
like($b->safe_psql('postgres', $q), qr/b-row/,
	"cluster B: its own rows, not cluster A's stored result");
ok(exists_key($kb), 'cluster B stored its result');
like($a->safe_psql('postgres', $q), qr/a-row/, 'cluster A: still its own rows');
like($b->safe_psql('postgres', $q), qr/b-row/, 'cluster B: still its own rows');

my $oid = $a->safe_psql('postgres', $oid_sql);
ok(exists_key("app:query:{$nsa}:gen:5:$oid") && exists_key("app:query:{$nsb}:gen:5:$oid"),
	'each cluster has its own generation of the table');
ok(exists_key("app:query:{$nsa}:deps:5:$oid") && exists_key("app:query:{$nsb}:deps:5:$oid"),
	'each cluster has its own dependency set of the table');

# a write on B ends B's result, not A's
$b->safe_psql('postgres', q{UPDATE items SET name = 'b-new'});
ok(!exists_key($kb), "a write on cluster B ends cluster B's result");
ok(exists_key($ka), "a write on cluster B leaves cluster A's result");
like($b->safe_psql('postgres', $q), qr/b-new/, 'cluster B: its new rows');
like($a->safe_psql('postgres', $q), qr/a-row/, 'cluster A: its rows, unchanged');

# and the reverse
$a->safe_psql('postgres', q{UPDATE items SET name = 'a-new'});
ok(!exists_key($ka), "a write on cluster A ends cluster A's result");
ok(exists_key($kb), "a write on cluster A leaves cluster B's result");
like($a->safe_psql('postgres', $q), qr/a-new/, 'cluster A: its new rows');
like($b->safe_psql('postgres', $q), qr/b-new/, 'cluster B: its rows, unchanged');
ok(exists_key($ka) && exists_key($kb), 'both results are stored again');

# a missed invalidation on A: the worker replays exactly A's generation
# bump, in A's namespace of query results: it ends A's result, never B's,
# and no key-value key the write did not name
$redis->cli('set', 'app:tenant:id:1', 'cached');
my $offset = -s $a->logfile;
$redis->pause;
$a->psql('postgres', q{
SET redis_cache.command_timeout_ms = 300;
UPDATE items SET name = 'a-missed';});
$redis->resume;
$a->wait_for_log(qr/replayed \d+ invalidations that could not be delivered/, $offset);
ok(exists_key('app:tenant:id:1'), "cluster A's replay left key-value keys the write did not name");
ok(!exists_key($ka), "cluster A's replay removed its own result");
ok(exists_key($kb), "cluster A's replay left cluster B's result");
ok(exists_key("app:query:{$nsb}:gen:5:$oid"),
	"cluster A's replay left cluster B's generations");
ok(exists_key('app:{cache}:version'), "cluster A's replay left the version bookkeeping");
like($a->safe_psql('postgres', $q), qr/a-missed/, 'cluster A: the missed write is seen');
like($b->safe_psql('postgres', $q), qr/b-new/, 'cluster B: still its rows');

$a->stop;
$b->stop;

# --- (b) a streaming standby, then its promotion ------------------------------

$redis->cli('flushall');
my $primary = $redis->new_pg_node('primary', init => { allows_streaming => 1 },
	conf => $conf);
$primary->start;
$primary->safe_psql('postgres', $schema . q{INSERT INTO items VALUES (1, 'old-row');});
like($primary->safe_psql('postgres', $q), qr/old-row/, 'primary: its rows');
my $kp = $primary->safe_psql('postgres', $key_sql);
ok(exists_key($kp), 'primary stored its result');
$redis->cli('set', 'app:tenant:id:1', 'cached');

$primary->backup('bk');
my $bkdir = $primary->backup_dir . '/bk';
my $copied = slurp_file("$bkdir/pg_stat/redis_cache.state");
like($copied, qr/seen\tapp:\n/, "the base backup holds the primary's state file");
unlike($copied, qr/clean\n$/, 'which records no clean stop (the primary runs)');

# the primary stores more after the backup
like($primary->safe_psql('postgres',
		q{SELECT cache_query_json('SELECT name FROM items WHERE id = 1')}),
	qr/old-row/, 'primary: a second result');
my $kp2 = $primary->safe_psql('postgres',
	q{SELECT cache_query_key('SELECT name FROM items WHERE id = 1')});
ok(exists_key($kp2), 'primary stored its second result');

my $before = redis_keys();
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'bk', has_streaming => 1);
$offset = 0;
$standby->start;
$primary->wait_for_catchup($standby);
$standby->wait_for_log(qr/worker waiting for the end of recovery/, $offset);
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');
is(redis_keys(), $before, "the standby's start deleted no key of the primary");
unlike(slurp_file($standby->logfile), qr/flushed \d+ owned keys|not clean; flushing/,
	'the standby flushed nothing');

is($standby->safe_psql('postgres', $key_sql), $kp,
	"the standby reads the primary's namespace");
my $hits_sql = q{SELECT coalesce(sum(hits), 0) FROM cache_stats WHERE family = 'query'};
my $hits = $standby->safe_psql('postgres', $hits_sql);
like($standby->safe_psql('postgres', $q), qr/old-row/, "standby: the primary's rows");
is($standby->safe_psql('postgres', $hits_sql), $hits + 1,
	"standby: served from the primary's stored result (a hit)");
is(redis_keys(), $before, 'reading on the standby deleted or added no key');

# promotion: a new timeline, a fresh namespace
# after the promotion the worker starts: the copied state file was written
# on the old primary's history, so the key_prefix is flushed (key-value
# keys the old primary may have failed to invalidate), never the old
# primary's query results
$offset = -s $standby->logfile;
$standby->promote;
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 'f', 'the standby is promoted');
$standby->wait_for_log(qr/flushed \d+ owned keys under prefix "app:"/, $offset);
ok(!exists_key('app:tenant:id:1'), 'after promotion the key-value keys are flushed');
ok(exists_key($kp), "the old primary's results are left to their TTL");
my $ks = $standby->safe_psql('postgres', $key_sql);
isnt($ks, $kp, 'the promoted server has a result key of its own');
is(namespace_of($ks), (namespace_of($kp) =~ s/\.1$/.2/r),
	'its namespace is the same system identifier on timeline 2');
$standby->safe_psql('postgres', q{UPDATE items SET name = 'new-row'});
my $rows = $standby->safe_psql('postgres', $q);
like($rows, qr/new-row/, 'promoted server: its new rows');
unlike($rows, qr/old-row/, "promoted server: never the old primary's stored result");
$rows = $standby->safe_psql('postgres',
	q{SELECT cache_query_json('SELECT name FROM items WHERE id = 1')});
like($rows, qr/new-row/,
	'promoted server: new rows for the result the old primary stored after the backup');
ok(exists_key($ks), 'the promoted server stores its own results');
like($standby->safe_psql('postgres', $q), qr/new-row/, 'promoted server: a hit of its own');


# the old primary's writes do not end the promoted server's results
$primary->safe_psql('postgres', q{UPDATE items SET name = 'split-brain'});
ok(!exists_key($kp), "the old primary's write ends its own result");
like($standby->safe_psql('postgres', $q), qr/new-row/,
	"promoted server: the old primary's write is not its business");

$standby->stop;
like(slurp_file($standby->data_dir . '/pg_stat/redis_cache.state'),
	qr/identity \d+\.2\nclean\n$/, 'the state file records the new timeline');
$primary->stop;
unlike(slurp_file($a->logfile) . slurp_file($b->logfile)
	  . slurp_file($primary->logfile) . slurp_file($standby->logfile),
	qr/terminated by signal/, 'no backend crashed');

done_testing();
