
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# A self-check of test/perl/RedisCache/Cluster.pm (not part of the CI
# suite: it lives outside test/t/).  Against real redis-server processes in
# cluster mode on loopback:
#
#   1. a 3-master, 3-replica cluster is created and becomes ok;
#   2. 100 keys written with redis-cli -c (redirections followed) are read
#      back from the nodes owning them, node_for_key agrees with CLUSTER
#      KEYSLOT, the Perl CRC16 and CLUSTER COUNTKEYSINSLOT, and another
#      master answers MOVED;
#   3. 100 slots holding 5000 keys are resharded from one master to
#      another while redis-cli -c reads migrating keys and writes new ones
#      in the migrating slots; the slots and their keys moved;
#   4. a master is killed (SIGKILL); one of its replicas is promoted and
#      the cluster is ok again; the keys are all readable;
#   5. the killed master restarts as a replica of the promoted one;
#   6. stop.
#
# Standalone:
#   perl -I test/perl -I /usr/lib/postgresql/15/lib/pgxs/src/test/perl \
#       test/cluster_harness_check.pl
# (data and logs under TESTDIR/tmp_check, TESTDIR defaulting to the
# repository root as under `make installcheck`; tmp_check/ is ignored by
# git).  RC_CLUSTER_TLS=1 runs it over TLS, RC_CLUSTER_PASSWORD=pw with
# requirepass/masterauth.

use strict;
use warnings;

use Cwd ();
use IPC::Run ();
use File::Basename ();

BEGIN
{
	# PostgreSQL::Test::Utils makes TESTDIR/tmp_check in its INIT block
	$ENV{TESTDIR} //= Cwd::abs_path(File::Basename::dirname(__FILE__) . '/..');
}

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Cluster;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(time);

my $tls = $ENV{RC_CLUSTER_TLS} ? 1 : 0;
my $c = RedisCache::Cluster->new('hc', masters => 3, replicas => 1, tls => $tls,
	password => $ENV{RC_CLUSTER_PASSWORD});

# 1. create
my $t0 = time();
$c->start;
my $t_ok = time() - $t0;
diag(sprintf('cluster of %d nodes (%s): redis-cli --cluster create %.2f s, ok after %.2f s',
		scalar($c->nodes), $tls ? 'TLS' : 'plain', $c->create_seconds, $t_ok));
my @masters = $c->masters;
is(scalar @masters, 3, 'three masters');
is(scalar(map { $c->replicas_of($_) } @masters), 3, 'three replicas');
is(scalar($c->replicas_of($_)), 1, 'master ' . $_->port . ' has one replica')
  for @masters;
my $total = 0;
$total += $c->slot_count($_) for @masters;
is($total, 16384, 'the masters own all 16384 slots');
is($c->seeds_conf, join(', ', map { '127.0.0.1:' . $_->port } @masters),
	'seeds_conf lists the masters');
like($c->pg_conf, qr/^redis_cache\.host = '127\.0\.0\.1:\d+, 127\.0\.0\.1:\d+, 127\.0\.0\.1:\d+'$/m,
	'pg_conf: the seeds as redis_cache.host');
like($c->pg_conf, qr/^redis_cache\.sslrootcert = /m, 'pg_conf: TLS settings')
  if $tls;
if (defined $ENV{RC_CLUSTER_PASSWORD})
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $c->redis_cli_cmd($masters[0]), 'get', 'x' ], '<', \'', '>', \$out, '2>', \$err);
	like($out, qr/^NOAUTH/, 'the nodes require the password');
}

# 2. keys
my @keys = map { "hc:key:$_" } 1 .. 100;
my @bad = grep { ($c->cli_c('set', $_, "v:$_") // '') ne 'OK' } @keys;
is("@bad", '', 'SET of 100 keys through redis-cli -c');
my (%owner, %slot, %per_node);
for my $k (@keys)
{
	$slot{$k} = $c->keyslot($k);
	$owner{$k} = $c->node_for_key($k);
	$per_node{ $owner{$k}->port }++ if $owner{$k};
}
@bad = grep { !$owner{$_} || ($owner{$_}->cli('get', $_) // '') ne "v:$_" } @keys;
is("@bad", '', 'every key read back (plain GET) from the node node_for_key names');
is(scalar(keys %per_node), 3, 'the keys spread over the three masters: '
	  . join(' ', map { "$_=$per_node{$_}" } sort keys %per_node));
@bad = grep { RedisCache::Cluster::key_hash_slot($_) != $slot{$_} } @keys;
is("@bad", '', 'CLUSTER KEYSLOT agrees with the CRC16 computed in Perl');
is(RedisCache::Cluster::key_hash_slot('{user1000}.following'),
	$c->keyslot('{user1000}.followers'), 'hash tags: same slot');
is(RedisCache::Cluster::key_hash_slot('foo{}{bar}'), $c->keyslot('foo{}{bar}'),
	'an empty hash tag hashes the whole key');
my %count;
$count{ $slot{$_} }++ for @keys;
@bad = grep {
	my $s = $slot{$_};
	($owner{$_}->cli('cluster', 'countkeysinslot', $s) // -1) != $count{$s}
} @keys;
is("@bad", '', 'CLUSTER COUNTKEYSINSLOT on the owner counts the keys of each slot');
@bad = grep {
	my $k = $_;
	grep { $_ != $owner{$k} && ($_->cli('cluster', 'countkeysinslot', $slot{$k}) // -1) != 0 }
	  @masters
} @keys[ 0 .. 9 ];
is("@bad", '', 'the other masters hold no key of those slots');
my $k1 = $keys[0];
my ($other) = grep { $_ != $owner{$k1} } @masters;
like($other->cli('get', $k1), qr/^MOVED $slot{$k1} 127\.0\.0\.1:@{[ $owner{$k1}->port ]}$/,
	'another master answers MOVED to the owner');
like($c->cli_c_at($other, 'get', $k1), qr/^v:\Q$k1\E$/, 'redis-cli -c follows it');

# 3. reshard under load
my ($from, $to) = @masters[ 0, 1 ];
my @from_before = $c->slots_of($from);
my ($n_from, $n_to) = ($c->slot_count($from), $c->slot_count($to));
my @moving;
for my $r (@from_before)
{
	push @moving, $r->[0] .. $r->[1];
}
@moving = @moving[ 0 .. 99 ];
my %moving = map { $_ => 1 } @moving;
my @moving_keys = grep { $moving{ $slot{$_} } } @keys;
# a hash tag for each slot that moves, 50 keys under each: 5000 keys to
# migrate, written to the source in one pipeline
my %tag;
for (my $i = 0; keys %tag < 100; $i++)
{
	my $s = RedisCache::Cluster::key_hash_slot("t$i");
	$tag{$s} //= "t$i" if $moving{$s};
}
my @bulk = map { my $t = $tag{$_}; map { "{$t}:bulk:$_" } 1 .. 50 } @moving;
is($from->cli(join('', map { "SET $_ v:$_\n" } @bulk)), join("\n", ('OK') x @bulk),
	scalar(@bulk) . ' keys in the slots to move, pipelined to the source');
my $h = $c->reshard($from, $to, 100, pipeline => 1);    # one key a MIGRATE: slower
# load meanwhile, through redis-cli -c: a GET of a key being migrated and a
# SET then GET of a new key in a slot being migrated (ASK redirections)
my ($ops, $wrong, $n) = (0, 0, 0);
my @new_keys;
while ($c->reshard_running($h) || $n == 0)
{
	my $k = $bulk[ ($n * 37) % @bulk ];
	my $t = $tag{ $moving[ $n % @moving ] };
	my $nk = "{$t}:new:$n";
	$n++;
	$wrong++ unless ($c->cli_c('get', $k) // '') eq "v:$k";
	$wrong++ unless ($c->cli_c('set', $nk, "n:$nk") // '') eq 'OK';
	$wrong++ unless ($c->cli_c('get', $nk) // '') eq "n:$nk";
	$ops += 3;
	push @new_keys, $nk;
}
ok($c->finish_reshard($h), 'reshard of 100 slots finished, cluster ok')
  or diag("out: $h->{out}\nerr: $h->{err}\n" . $c->describe);
diag(sprintf('reshard of 100 slots, %d keys: %.2f s; %d redis-cli -c commands meanwhile, %d wrong',
		scalar(@bulk) + scalar(@moving_keys), $h->{seconds}, $ops, $wrong));
is($wrong, 0, 'no wrong read during the reshard');
is($c->slot_count($from), $n_from - 100, 'the source lost 100 slots');
is($c->slot_count($to), $n_to + 100, 'the target gained 100 slots');
@bad = grep { ($c->slot_owner($_) // 0) != $to } @moving;
is(scalar @bad, 0, "slots $moving[0]..$moving[-1] (the source's lowest 100) now on the target");
my @view_bad = grep {
	my $ranges = $c->cluster_view($_)->{ $c->node_id($to) }{slots};
	grep {
		my $s = $_;
		!grep { $s >= $_->[0] && $s <= $_->[1] } @$ranges
	} @moving
} $c->running_nodes;
is(scalar @view_bad, 0, 'every node sees them there');
@bad = grep { ($to->cli('get', $_) // '') ne "v:$_" } @moving_keys;
is("@bad", '', 'their keys moved to the target');
is($to->cli(join('', map { "GET $_\n" } @bulk)), join("\n", map { "v:$_" } @bulk),
	'the ' . scalar(@bulk) . ' keys written to the source are on the target');
is($to->cli(join('', map { "GET $_\n" } @new_keys)), join("\n", map { "n:$_" } @new_keys),
	'so are the ' . scalar(@new_keys) . ' keys written during the reshard');
is($from->cli(join('', map { "CLUSTER COUNTKEYSINSLOT $_\n" } @moving)),
	join("\n", (0) x @moving), 'the source has no key left in those slots');
@bad = grep { ($c->node_for_key($_) // 0) != $to } @moving_keys;
is("@bad", '', 'node_for_key names the target for them');
@bad = grep { ($c->cli_c('get', $_) // '') ne "v:$_" } @keys;
is("@bad", '', 'all 100 keys readable through redis-cli -c');

# 4. kill a master
@masters = $c->masters;
my $victim = $masters[2];
my @victim_replicas = $c->replicas_of($victim);
my $victim_slots = $c->slot_count($victim);
my $t_kill = time();
$c->kill_master($victim);
my $new = $c->wait_failover($victim);
my $t_failover = time() - $t_kill;
ok($new, 'a replica was promoted and the cluster is ok') or diag($c->describe);
diag(sprintf('failover: ok %.2f s after SIGKILL (failover_seconds %.2f; node timeout 2000 ms)',
		$t_failover, $c->failover_seconds // -1));
SKIP:
{
	skip 'no failover', 6 unless $new;
	is($new, $victim_replicas[0], 'the promoted node was the victim\'s replica');
	is($c->role($new), 'master', 'it says it is a master');
	is($c->slot_count($new), $victim_slots, 'it owns the victim\'s slots');
	is(scalar($c->masters), 3, 'three masters again');
	ok(!grep({ $_ == $victim } $c->masters), 'the victim is not among them');
	@bad = grep { ($c->cli_c('get', $_) // '') ne "v:$_" } @keys;
	is("@bad", '', 'all 100 keys readable through redis-cli -c after the failover');
}

# 5. restart the victim
my $t_restart = time();
ok($c->restart($victim), 'the killed master restarted, cluster ok')
  or diag($c->describe);
diag(sprintf('restart: ok %.2f s after start', time() - $t_restart));
is($c->role($victim), 'replica', 'it came back as a replica');
is($c->master_of($victim), $new, 'of the promoted node');
ok(grep({ $_ == $victim } $c->replicas_of($new)), 'replicas_of names it');
my ($rk) = grep { ($c->node_for_key($_) // 0) == $new } @keys;
is($victim->cli("readonly\nget $rk\n"), "OK\nv:$rk",
	'it answers READONLY reads of its master\'s keys');
is(scalar(map { $c->replicas_of($_) } $c->masters), 3, 'three replicas again');

# 6. stop
my @pids = map { $_->pid } $c->nodes;
$c->stop;
ok(!grep({ kill 0, $_ } @pids), 'every node stopped');
is(scalar($c->running_nodes), 0, 'none running');

done_testing();
