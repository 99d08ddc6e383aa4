# Copyright (c) redis_cache contributors; the PostgreSQL License.

# Pattern invalidations queued faster than the worker's SCANs run.  Every
# UPDATE of a product queues 'product:variants:{id}:*', one SCAN of the
# whole keyspace (here kept large by keys of another application, outside
# key_prefix).  8 pgbench clients UPDATE as fast as they can: the queue
# (256 patterns) overflows within a second, the namespace is marked
# "missed" and must be flushed.  The flush must come while the writers go
# on, not once they stop (before the fix, the worker kept taking the
# patterns queued meanwhile and never reached the flush: stale keys stayed
# for the whole load).  Asserted:
#
# (a) the flush LOG line appears while pgbench still runs (skipped, with a
#     diag, when the queue never overflowed on this machine);
# (b) once pgbench ended, within RC_PQ_STALE_DEADLINE seconds (default 30),
#     no variants key is stale: the test sets every product's
#     product:variants:N:v1 (through redis-cli) before the load and once a
#     second during it but its last 2 s, and the UPDATE records
#     clock_timestamp(): a key still in Redis whose product was updated
#     after the last SET completed is stale;
# (c) with the worker stopped (SIGSTOP) and the queue overflowed by one
#     commit, cache_get and cache_mget miss keys Redis still holds (no
#     stale hit while the namespace is marked missed), and
# (d) once the worker resumes, its flush drops the 256 queued patterns it
#     covers: one flush, no SCAN per pattern after it.
#
# RC_PQ_SECONDS (default 10) is the length of the load, RC_PQ_FILLER
# (default 20000) the number of keys of the other application.

use strict;
use warnings;

use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(time usleep);

my $timeout = $PostgreSQL::Test::Utils::timeout_default;
my $load_seconds = $ENV{RC_PQ_SECONDS} || 10;
my $nfiller = $ENV{RC_PQ_FILLER} || 20000;
my $stale_deadline = $ENV{RC_PQ_STALE_DEADLINE} || 30;
my $nproducts = 2000;
my $clients = 8;
my $flush_re = qr/redis_cache: flushed \d+ owned keys under prefix "app:"/;

my $redis = RedisCache::Server->new('pq');
$redis->start;
my $node = $redis->new_pg_node('pq', conf => q{
redis_cache.key_prefix = 'app:'
log_statement = none
});
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }

$node->safe_psql('postgres', qq{
CREATE EXTENSION redis_cache;
CREATE TABLE products (id int PRIMARY KEY, details text NOT NULL, updated_at timestamptz);
INSERT INTO products SELECT g, md5(g::text), NULL FROM generate_series(1, $nproducts) g;
SELECT cache_watch('products', 'product:details:{id}', 'product:variants:{id}:*');});

# Server-wide counters (totals row of cache_stats).
sub counters
{
	my %c;
	@c{qw(queued retried flushes bypasses)} = split /\|/, sql(q{
SELECT invalidations_queued, invalidations_retried, flushes, bypasses
  FROM cache_stats WHERE family IS NULL});
	return \%c;
}

# Wait until the worker has nothing left: its counters stay the same over
# 3 s (a SCAN of the keyspace takes milliseconds).  No write runs.
sub wait_quiet
{
	my $prev = '';
	my $stable = 0;
	my $deadline = time() + $timeout;
	while (time() < $deadline)
	{
		my $c = counters();
		my $now = join(' ', @$c{qw(queued retried flushes)});
		$stable = ($now eq $prev) ? $stable + 1 : 0;
		$prev = $now;
		return 1 if $stable >= 3;
		sleep(1);
	}
	return 0;
}

my @variant_keys = map { "app:product:variants:$_:v1" } 1 .. $nproducts;

# SET every variants key (pipelined): [time before, time after].
sub fill_variants
{
	my ($round) = @_;
	my $before = time();
	$redis->cli(join('', map { "SET $_ r$round\n" } @variant_keys))
	  // die 'redis-cli SET failed';
	return [ $before, time() ];
}

# Variants keys present in Redis.
sub present_variants
{
	my @present;
	my @keys = @variant_keys;
	while (my @batch = splice(@keys, 0, 500))
	{
		my $out = $redis->cli(join('', map { "EXISTS $_\n" } @batch)) // die 'redis-cli EXISTS';
		my @e = split /\n/, $out;
		die 'redis-cli EXISTS: wrong number of replies' unless @e == @batch;
		push @present, map { $batch[$_] } grep { $e[$_] eq '1' } 0 .. $#batch;
	}
	return @present;
}

# --- the keyspace ---------------------------------------------------------------
# Keys of another application sharing the Redis (outside key_prefix: no
# flush removes them, every SCAN visits them).
for (my $i = 1; $i <= $nfiller; $i += 5000)
{
	my $last = $i + 4999 > $nfiller ? $nfiller : $i + 4999;
	$redis->cli(join('', map { "SET other:filler:$_ x\n" } $i .. $last))
	  // die 'redis-cli SET failed';
}
my $fill = fill_variants(0);
cmp_ok($redis->cli('dbsize'), '>=', $nfiller + $nproducts, 'the keyspace is filled');

# --- (a) the load ---------------------------------------------------------------
my $dir = $PostgreSQL::Test::Utils::tmp_check;
my $script = "$dir/170_update.sql";
unlink $script;
append_to_file($script, qq{
\\set id random(1, $nproducts)
UPDATE products SET details = md5(random()::text), updated_at = clock_timestamp() WHERE id = :id;
});
my $pgb_out = "$dir/170_pgbench.out";
my $pgb_err = "$dir/170_pgbench.err";
unlink $pgb_out, $pgb_err;

my $counters_before = counters();
my $log_offset = -s $node->logfile;
# a session probing the readers during the load: cache_get() of a key
# (absent or not) counts a bypass while the namespace is marked missed
my $probe = $node->background_psql('postgres');

my $t_start = time();
my $pgb_pid = fork();
die "fork: $!" unless defined $pgb_pid;
if ($pgb_pid == 0)
{
	open(STDIN, '<', '/dev/null');
	open(STDOUT, '>', $pgb_out);
	open(STDERR, '>', $pgb_err);
	exec('pgbench', '-n', '-c', $clients, '-j', 2, '-T', $load_seconds,
		'-f', $script, '-h', $node->host, '-p', $node->port, 'postgres')
	  or POSIX::_exit(127);
}

my ($flush_at, $overflow_at);
my $pgb_status;
my $pgb_killed = 0;
my $round = 0;
my $next_fill_at = $t_start + 1;
while (1)
{
	my $now = time();
	if (waitpid($pgb_pid, POSIX::WNOHANG()) == $pgb_pid)
	{
		$pgb_status = $?;
		last;
	}
	if ($now > $t_start + $load_seconds + $timeout && !$pgb_killed)
	{
		diag('pgbench did not end: killed');
		kill 'TERM', $pgb_pid;
		$pgb_killed = 1;
	}
	if (!defined $flush_at && slurp_file($node->logfile, $log_offset) =~ $flush_re)
	{
		$flush_at = $now - $t_start;
	}
	if (!defined $overflow_at)
	{
		my $bypasses = $probe->query_safe(q{
SELECT cache_get('probe') IS NULL;
SELECT bypasses FROM cache_stats WHERE family IS NULL});
		($bypasses) = $bypasses =~ /(\d+)\s*$/;
		$overflow_at = $now - $t_start if $bypasses > $counters_before->{bypasses};
	}
	# not in the last 2 s: updates come after the last fill
	if ($now >= $next_fill_at && $now < $t_start + $load_seconds - 2)
	{
		$fill = fill_variants(++$round);
		$next_fill_at = time() + 1;
	}
	usleep(100_000);
}
my $t_end = time();
$probe->quit;
my $after_load = counters();

is($pgb_status, 0, 'pgbench exits with status 0')
  or diag('pgbench stderr: ' . substr(slurp_file($pgb_err), -2000));
my ($xacts) = slurp_file($pgb_out) =~ /^number of transactions actually processed: (\d+)/m;
my ($tps) = slurp_file($pgb_out) =~ /^tps = ([0-9.]+)/m;
diag(sprintf('load: %.1f s, %d clients, %s UPDATEs, tps %s; %d patterns queued, %d patterns and flushes done, %d flushes during the load; variants keys set %d times',
		$t_end - $t_start, $clients, $xacts // '?', $tps // '?',
		$after_load->{queued} - $counters_before->{queued},
		$after_load->{retried} - $counters_before->{retried},
		$after_load->{flushes} - $counters_before->{flushes}, $round + 1));

SKIP:
{
	if (!defined $overflow_at && !defined $flush_at)
	{
		diag('the pattern queue never overflowed during the load on this machine '
			  . '(the worker kept up with the writers): nothing to flush, (a) skipped; '
			  . 'raise RC_PQ_FILLER to make each SCAN longer');
		skip 'the pattern queue never overflowed', 1;
	}
	diag(sprintf('queue overflow seen by a reader at t=%.1f s, first flush at %s',
			$overflow_at // -1,
			defined $flush_at ? sprintf('t=%.1f s', $flush_at) : 'none during the load'));
	ok(defined $flush_at,
		'(a) the pattern queue overflowed: the namespace flush ran while the writers went on');
}

# --- (b) no stale key soon after the load -----------------------------------------
# A key present now was set by the last fill (every fill sets them all).
# Its product's UPDATE evaluated clock_timestamp() after that SET had
# completed: the commit queued its pattern after the key existed.
my %updated_at = map { split /\|/ } split /\n/,
  sql('SELECT id, extract(epoch FROM updated_at) FROM products WHERE updated_at IS NOT NULL');
my $updated = grep { $_ > $fill->[1] } values %updated_at;
diag(sprintf('%d products updated during the load, %d of them after the last fill of the variants keys',
		scalar(keys %updated_at), $updated));
my @stale;
my ($stale_at, $stale_at_end);
my $deadline = $t_end + $stale_deadline;
while (1)
{
	@stale = grep {
		my ($id) = /:variants:(\d+):/;
		($updated_at{$id} // 0) > $fill->[1]
	} present_variants();
	$stale_at_end //= scalar @stale;
	if (!@stale)
	{
		$stale_at = time() - $t_end;
		last;
	}
	last if time() > $deadline;
	usleep(100_000);
}
is(scalar(@stale), 0,
	"(b) no stale variants key within $stale_deadline s after the load")
  or diag(scalar(@stale) . ' stale keys, such as ' . join(', ', @stale[ 0 .. ($#stale < 4 ? $#stale : 4) ]));
diag(sprintf('%d stale variants keys when the load ended, none %.1f s after it',
		$stale_at_end, $stale_at)) if defined $stale_at;
ok(wait_quiet(), 'the worker reaches quiescence after the load');

# --- (c) no hit while the namespace is marked missed --------------------------------
# the postmaster's child titled "postgres: pq: redis_cache invalidation worker"
my ($postmaster_pid) = split /\n/, slurp_file($node->data_dir . '/postmaster.pid');
my $worker_pid;
opendir(my $proc, '/proc') or die "opendir /proc: $!";
for my $pid (grep { /^\d+$/ } readdir $proc)
{
	my $stat = eval { slurp_file("/proc/$pid/stat") } // next;
	my ($ppid) = $stat =~ /\) \S+ (\d+)/ or next;
	next unless $ppid == $postmaster_pid;
	my $cmd = eval { slurp_file("/proc/$pid/cmdline") } // next;
	$worker_pid = $pid if $cmd =~ /redis_cache invalidation worker/;
}
closedir $proc;
ok($worker_pid, 'the worker runs');
$redis->cli("SET app:probe cached\nSET app:product:variants:1:v1 old\n");
is(sql(q{SELECT cache_get('probe')}), 'cached', 'before: cache_get hits');

# The worker is stopped: one commit queues 300 patterns, 256 fit, the
# namespace is marked missed.  Quiescent, with nothing pending and no
# second delete scheduled, it waits on its latch without a timeout, so
# the SIGSTOP finds it holding no lock.  The commit sets the latch, which
# the worker only sees once resumed.
kill 'STOP', $worker_pid;
my $c0 = counters();
$log_offset = -s $node->logfile;
sql('UPDATE products SET updated_at = clock_timestamp() WHERE id <= 300');
is(sql(q{SELECT cache_get('probe') IS NULL, cache_get('product:variants:1:v1') IS NULL,
                cache_mget(ARRAY['probe', 'product:variants:1:v1'])}),
	't|t|{NULL,NULL}',
	'(c) queue overflowed: cache_get and cache_mget miss while the namespace waits for its flush');
is($redis->cli("GET app:probe\nGET app:product:variants:1:v1\n"), "cached\nold",
	'(c) ... although Redis still holds both keys (one of them stale)');
cmp_ok(counters()->{bypasses} - $c0->{bypasses}, '>=', 2, '(c) the misses are counted as bypasses');

# --- (d) the flush covers the queued patterns ----------------------------------------
kill 'CONT', $worker_pid;
ok(defined eval { $node->wait_for_log($flush_re, $log_offset) },
	'(d) the worker flushes the namespace once resumed');
ok(wait_quiet(), '(d) the worker reaches quiescence');
my $c1 = counters();
is($c1->{flushes} - $c0->{flushes}, 1, '(d) one flush');
is($c1->{retried} - $c0->{retried}, 1,
	'(d) the flush dropped the 256 patterns queued before it: no SCAN per pattern after it');
is($redis->cli('exists', 'app:product:variants:1:v1'), '0',
	'(d) the flush removed the owned key (family product:variants:*:*)');
is($redis->cli('get', 'app:probe'), 'cached',
	'(d) the flush kept app:probe, which no watched template or declared family owns');
is(sql(q{SELECT cache_set('probe', 'again'), cache_get('probe')}), 't|again',
	'(d) after the flush, cache_get hits again');
cmp_ok($redis->cli('dbsize'), '>=', $nfiller, 'the other application\'s keys are kept');

$node->stop;
done_testing();
