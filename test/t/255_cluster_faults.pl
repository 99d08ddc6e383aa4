
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# Redis Cluster faults under load (issue 15): 3 masters and 3 replicas
# (RedisCache::Cluster), pgbench running reads (cache-aside cache_get /
# cache_set, cache_query_json, cache_query) and writes (UPDATEs of a
# watched table, which delete keys and end cached results) while:
#
#   a. slots move: `redis-cli --cluster reshard` moves 1000 slots (with
#      their tenant keys) from the master holding the query namespace to
#      another, then the namespace's own slot is migrated by hand
#      (SETSLOT MIGRATING/IMPORTING, MIGRATE 5 keys at a time with pauses),
#      so that for seconds the results, generations and dependency sets are
#      split between two nodes (ASK, TRYAGAIN);
#   b. the master then holding the namespace is SIGKILLed and its replica
#      promoted (asynchronous replication: the last deletes and generation
#      bumps may be lost with it).
#
# Load: 4 clients with persistent connections (writes 1, cache-aside reads
# 2, cached queries 2) and 2 clients connecting per transaction (-C: reads
# and cached queries), for RC_CLUSTER_LOAD_SECONDS (default 12), the fault
# 2 s into it.  The cache-aside readers store a value only while holding a
# FOR SHARE lock on the row (as in 190_load.pl and 230_sentinel.pl): a
# writer of the row commits, and sends its delete, after the reader's SET.
# So at quiescence every tenant:id:{id} key must be absent or equal to the
# row's name, and every cached result (read raw from Redis, and served)
# must equal the query run directly: any entry that disagrees is a lost
# invalidation.  Asserted: pgbench exits 0 with no failed transaction, 0
# stale keys, 0 stale results, the replay queue empty, no crash.
#
# Figures (diag), not asserted: pgbench's transactions, tps and the
# WARNINGs clients saw; probes (a cache_set from a fresh session and from a
# session opened before, checked on the node owning the key) failing during
# the event and the time to recover (for the kill: from the SIGKILL to the
# first probe that reached the new master; for the moves: the longest gap
# between successful probes); the cluster's own failover time; the
# worker's replay counters (cache_stats, cache_health).

use strict;
use warnings;

use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Cluster;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(time usleep);

my $timeout = $PostgreSQL::Test::Utils::timeout_default;
my $load_seconds = $ENV{RC_CLUSTER_LOAD_SECONDS} || 12;
my $fault_at = 2;    # seconds into the load
my $ntenants = 200;
my $ngroups = 20;
my $tmp = $PostgreSQL::Test::Utils::tmp_check;

*poll = \&RedisCache::Server::poll_until;

my $t_setup = time();
my $c = RedisCache::Cluster->new('fl');
$c->start;
diag(sprintf('cluster of %d nodes ok after %.1f s', scalar($c->nodes), time() - $t_setup));
my $node = $c->new_pg_node('cl_faults', conf => q{
redis_cache.circuit_open_seconds = 1
log_statement = none
});
$node->start;

my $QJ = 'SELECT id, name FROM tenants WHERE id = $1';
my $QR = 'SELECT count(*)::int AS n, max(name) AS m FROM tenants WHERE id % 20 = $1::int';
# plans: written rarely, so that cached results of it outlive the load and
# the raw comparison at quiescence has entries to compare
my $QP = 'SELECT id, price FROM plans WHERE id = $1';
my $nplans = 20;

$node->safe_psql('postgres', qq{
CREATE EXTENSION redis_cache;
CREATE TABLE tenants (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO tenants SELECT g, 'tenant ' || g FROM generate_series(1, $ntenants) g;
SELECT cache_watch('tenants', 'tenant:id:{id}');
CREATE TABLE plans (id int PRIMARY KEY, price int NOT NULL);
INSERT INTO plans SELECT g, g * 100 FROM generate_series(1, $nplans) g;
CREATE FUNCTION load_tenant(p_id int) RETURNS text LANGUAGE plpgsql AS \$\$
DECLARE
	v text := cache_get('tenant:id:' || p_id);
BEGIN
	IF v IS NOT NULL THEN
		RETURN v;
	END IF;
	SELECT name INTO v FROM tenants WHERE id = p_id FOR SHARE;
	IF v IS NOT NULL THEN
		PERFORM cache_set('tenant:id:' || p_id, v, 300);
	END IF;
	RETURN v;
END \$\$;
});

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub run_script
{
	my ($script) = @_;
	my ($stdout, $stderr) = ('', '');
	$node->psql('postgres', $script, stdout => \$stdout, stderr => \$stderr,
		timeout => $timeout);
	return ($stdout, $stderr);
}

sub bg_query
{
	my ($bg, $q) = @_;
	$bg->{stderr} = '';
	my $out = $bg->query($q);
	my $err = $bg->{stderr};
	$bg->{stderr} = '';
	return ($out, $err);
}

sub health_field
{
	my ($f) = @_;
	return sql("SELECT coalesce(cache_health()->>'$f', 'NULL')");
}

my @stat_cols = qw(hits misses sets deletes invalidations_sent invalidations_queued
  invalidations_retried errors_connect errors_timeout errors_io errors_protocol
  errors_reply flushes bypasses round_trips);
my @health_cols = qw(replay_enqueued replay_replayed replay_overflows);

sub counters
{
	my %r;
	@r{@stat_cols} = split /\|/,
	  sql('SELECT concat_ws(\'|\', ' . join(', ', @stat_cols) . ') FROM cache_stats WHERE family IS NULL');
	my @h = split /\|/, sql('SELECT concat_ws(\'|\', '
		  . join(', ', map { "coalesce(h->>'$_', '0')" } @health_cols) . ') FROM cache_health() h');
	@r{@health_cols} = @h;
	return \%r;
}

# The first key "$stem$N" whose slot passes $want.
sub first_key
{
	my ($want, $stem) = @_;
	for my $i (1 .. 1_000_000)
	{
		return "$stem$i" if $want->(RedisCache::Cluster::key_hash_slot("$stem$i"));
	}
	die "no key for $stem";
}

sub warm_cache
{
	sql("SELECT count(load_tenant(id)) FROM tenants");
	sql("SELECT count(cache_query_json('$QJ', ARRAY[g::text])) FROM generate_series(1, $ntenants) g");
	sql("SELECT count(*) FROM generate_series(0, $ngroups - 1) g, LATERAL cache_query('$QR', ARRAY[g::text]) AS t(n int, m text)");
	sql("SELECT count(cache_query_json('$QP', ARRAY[g::text])) FROM generate_series(1, $nplans) g");
	return;
}

# The slot of the query namespace (every result key carries its hashtag).
sub namespace_slot
{
	my $key = sql("SELECT cache_query_key('$QJ', ARRAY['1'])");
	return RedisCache::Cluster::key_hash_slot($key);
}

# --- pgbench -----------------------------------------------------------------
my $write_sql = "$tmp/255_write.sql";
my $read_sql = "$tmp/255_read.sql";
my $query_sql = "$tmp/255_query.sql";
my $plan_write_sql = "$tmp/255_plan_write.sql";
unlink $write_sql, $read_sql, $query_sql, $plan_write_sql;
append_to_file($plan_write_sql, qq{\\set p random(1, $nplans)
UPDATE plans SET price = price + 1 WHERE id = :p;
});
append_to_file($write_sql, qq{\\set id random(1, $ntenants)
UPDATE tenants SET name = 'n' || left(md5(random()::text), 10) WHERE id = :id;
});
append_to_file($read_sql, qq{\\set id random(1, $ntenants)
SELECT load_tenant(:id);
});
append_to_file($query_sql, qq{\\set id random(1, $ntenants)
\\set g random(0, @{[ $ngroups - 1 ]})
SELECT cache_query_json('$QJ', ARRAY[:id]::text[]);
SELECT count(*) FROM cache_query('$QR', ARRAY[:g]::text[]) AS t(n int, m text);
\\set p random(1, $nplans)
SELECT cache_query_json('$QP', ARRAY[:p]::text[]);
});

sub start_pgbench
{
	my ($tag, @args) = @_;
	my $out = "$tmp/255_pgbench_$tag.out";
	my $err = "$tmp/255_pgbench_$tag.err";
	unlink $out, $err;
	my @cmd = ($node->installed_command('pgbench'), '-n', @args, '-T', $load_seconds,
		'-h', $node->host, '-p', $node->port, 'postgres');
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>', $out);
		open(STDERR, '>', $err);
		exec(@cmd) or POSIX::_exit(127);
	}
	return { tag => $tag, pid => $pid, out => $out, err => $err, status => undef };
}

sub report_pgbench
{
	my ($what, @pgb) = @_;
	for my $p (@pgb)
	{
		my $out = slurp_file($p->{out});
		my $err = slurp_file($p->{err});
		my ($xacts) = $out =~ /^number of transactions actually processed: (\d+)/m;
		my ($failed) = $out =~ /^number of failed transactions: (\d+)/m;
		my ($tps) = $out =~ /^tps = ([0-9.]+)/m;
		my @aborted = $err =~ /^(.*(?:aborted|ERROR|FATAL).*)$/mg;
		my $warnings = () = $err =~ /WARNING:/g;
		is($p->{status}, 0, "$what: pgbench $p->{tag} exits with status 0")
		  or diag("pgbench $p->{tag} stderr:\n" . substr($err, -2000));
		cmp_ok($xacts // 0, '>', 0, "$what: pgbench $p->{tag} processed transactions");
		is($failed // 'none', '0', "$what: pgbench $p->{tag}: no failed transaction");
		is(scalar(@aborted), 0, "$what: pgbench $p->{tag}: no client aborted, no ERROR")
		  or diag(join("\n", @aborted[ 0 .. ($#aborted < 9 ? $#aborted : 9) ]));
		diag(sprintf('%s: pgbench %s: %s transactions, %s failed, tps %s, %d WARNINGs seen by clients',
				$what, $p->{tag}, $xacts // '?', $failed // '?', $tps // '?', $warnings));
		my %warn;
		for my $w ($err =~ /WARNING:\s+(.*)$/mg)
		{
			(my $k = $w) =~ s/\d+/N/g;
			$warn{$k}++;
		}
		my @top = (sort { $warn{$b} <=> $warn{$a} } keys %warn)[ 0 .. 4 ];
		diag("  $warn{$_} x $_") for grep { defined } @top;
	}
	return;
}

# --- the load with an event -------------------------------------------------
# $event: { start => sub, running => sub (true while the event is not
# over) }.  The probe key should be on a node the event touches.  Returns
# figures.
my $probe_n = 0;

sub run_load
{
	my ($what, $tag, $event, $probe_key, $existing) = @_;
	my @pgb = (
		start_pgbench("${tag}_persistent", '-c', 4, '-j', 2,
			'-f', "$write_sql\@10", '-f', "$read_sql\@20", '-f', "$query_sql\@20",
			'-f', "$plan_write_sql\@1"),
		start_pgbench("${tag}_connect", '-c', 2, '-j', 1, '-C',
			'-f', "$read_sql\@1", '-f', "$query_sql\@1"));
	my $t_start = time();
	my %r = (probes => 0, failed_fresh => 0, failed_existing => 0, max_gap => 0);
	my ($t_event, $t_event_end, $last_ok);
	while (1)
	{
		my $now = time();
		for my $p (grep { !defined $_->{status} } @pgb)
		{
			$p->{status} = $? if waitpid($p->{pid}, POSIX::WNOHANG()) == $p->{pid};
			if (!defined $p->{status} && $now > $t_start + $load_seconds + $timeout)
			{
				diag("pgbench $p->{tag} did not end: killed");
				kill 'TERM', $p->{pid};
			}
		}
		my $load_done = !grep { !defined $_->{status} } @pgb;
		if (!defined $t_event && $now >= $t_start + $fault_at)
		{
			$t_event = time();
			$event->{start}->();
			$r{event_at} = $t_event - $t_start;
			$last_ok = $t_event;
		}
		if (defined $t_event)
		{
			if (!defined $t_event_end && !$event->{running}->())
			{
				$t_event_end = time();
				$r{event_seconds} = $t_event_end - $t_event;
				$r{event_end_at} = $t_event_end - $t_start;
			}
			# probes: a fresh session and the session opened before
			my $n = ++$probe_n;
			$r{probes}++;
			my ($out) = run_script("SELECT cache_set('$probe_key', '$n', 60)");
			my $ok = $out eq 't' && ($c->cli_c('get', $probe_key) // '') eq $n;
			$n = ++$probe_n;
			my ($out2) = bg_query($existing, "SELECT cache_set('$probe_key:e', '$n', 60)");
			my $ok2 = $out2 eq 't' && ($c->cli_c('get', "$probe_key:e") // '') eq $n;
			my $t = time();
			if ($ok)
			{
				$r{first_ok} //= $t - $t_event;
				my $gap = $t - $last_ok;
				$r{max_gap} = $gap if $gap > $r{max_gap};
				$last_ok = $t;
			}
			else
			{
				$r{failed_fresh}++;
				delete $r{first_ok};
			}
			if ($ok2) { $r{first_ok_existing} //= $t - $t_event; }
			else
			{
				$r{failed_existing}++;
				delete $r{first_ok_existing};
			}
			last if $load_done && defined $t_event_end && $ok && $ok2;
			last if time() > $t_event + 120;
		}
		usleep(100_000);
	}
	for my $p (grep { !defined $_->{status} } @pgb)
	{
		waitpid($p->{pid}, 0);
		$p->{status} = $?;
	}
	$r{load} = time() - $t_start;
	report_pgbench($what, @pgb);
	return \%r;
}

# Stale entries at quiescence: tenant keys against the rows, raw JSON
# results against the query, and what cache_query/cache_query_json serve.
sub stale_check
{
	my ($what) = @_;
	my %name = map { split /\|/, $_, 2 } split /\n/,
	  sql("SELECT id || '|' || name FROM tenants");
	my @keys = map { "tenant:id:$_" } 1 .. $ntenants;
	my $v = $c->get_all(@keys);
	my ($present, @stale) = (0);
	for my $id (1 .. $ntenants)
	{
		my $val = $v->{"tenant:id:$id"};
		next unless defined $val;
		$present++;
		push @stale, "tenant:id:$id cached '$val', row has '$name{$id}'" if $val ne $name{$id};
	}
	diag("$what: at quiescence $present of $ntenants tenant keys cached, " . scalar(@stale) . ' stale');
	is(scalar(@stale), 0, "$what: no stale tenant key at quiescence (no lost invalidation)")
	  or diag(join("\n", @stale[ 0 .. ($#stale < 9 ? $#stale : 9) ]));

	# raw results, as an application reading HGET <key> data sees them
	my @rk = split /\n/, sql("SELECT cache_query_key('$QJ', ARRAY[g::text]) FROM generate_series(1, $ntenants) g ORDER BY g");
	my @pk = split /\n/, sql("SELECT cache_query_key('$QP', ARRAY[g::text]) FROM generate_series(1, $nplans) g ORDER BY g");
	my ($owner) = $c->owners($rk[0]);
	my $out = $owner->cli(join('', map { "HGET $_ data\n" } @rk)) // die 'HGET';
	my @data = split /\n/, $out, -1;
	die 'HGET: ' . scalar(@data) . ' replies' unless @data == @rk;
	my @checks;
	for my $i (0 .. $#rk)
	{
		next if $data[$i] eq '';
		die "HGET $rk[$i]: $data[$i]" if $data[$i] =~ /^(MOVED|ASK|CLUSTERDOWN) /;
		my $id = $i + 1;
		push @checks, "($id, \$rc\$$data[$i]\$rc\$::jsonb)";
	}
	$out = $owner->cli(join('', map { "HGET $_ data\n" } @pk)) // die 'HGET';
	@data = split /\n/, $out, -1;
	die 'HGET: ' . scalar(@data) . ' replies' unless @data == @pk;
	my @pchecks;
	for my $i (0 .. $#pk)
	{
		next if $data[$i] eq '';
		die "HGET $pk[$i]: $data[$i]" if $data[$i] =~ /^(MOVED|ASK|CLUSTERDOWN) /;
		push @pchecks, '(' . ($i + 1) . ", \$rc\$$data[$i]\$rc\$::jsonb)";
	}
	my @stale_results;
	if (@pchecks)
	{
		push @stale_results, split /\n/, sql(
			"SELECT 'plan ' || v.id || ': cached ' || v.cached || ', query gives ' || d.direct FROM (VALUES "
			  . join(",\n", @pchecks) . ") v(id, cached), LATERAL (SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]') AS direct FROM (SELECT id, price FROM plans WHERE id = v.id) s) d WHERE v.cached <> d.direct");
	}
	if (@checks)
	{
		push @stale_results, split /\n/, sql(
			"SELECT 'tenant ' || v.id || ': cached ' || v.cached || ', query gives ' || d.direct FROM (VALUES "
			  . join(",\n", @checks) . ") v(id, cached), LATERAL (SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]') AS direct FROM (SELECT id, name FROM tenants WHERE id = v.id) s) d WHERE v.cached <> d.direct");
	}
	diag(sprintf('%s: %d cached JSON results in Redis compared raw (%d of tenants, %d of plans), %d stale',
			$what, @checks + @pchecks, scalar(@checks), scalar(@pchecks), scalar(@stale_results)));
	is(scalar(@stale_results), 0, "$what: no stale cached result in Redis at quiescence")
	  or diag(join("\n", @stale_results[ 0 .. ($#stale_results < 9 ? $#stale_results : 9) ]));

	# what is served, twice: the first round serves what the load left
	my $served = qq{
SELECT count(*) FROM (
  SELECT g FROM generate_series(1, $ntenants) g
   WHERE cache_query_json('$QJ', ARRAY[g::text])
         IS DISTINCT FROM (SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]') FROM (SELECT id, name FROM tenants WHERE id = g) s)
  UNION ALL
  SELECT g FROM generate_series(0, $ngroups - 1) g
   WHERE (SELECT n || '|' || m FROM cache_query('$QR', ARRAY[g::text]) AS t(n int, m text))
         IS DISTINCT FROM (SELECT count(*)::int || '|' || max(name) FROM tenants WHERE id % 20 = g)
  UNION ALL
  SELECT g FROM generate_series(1, $nplans) g
   WHERE cache_query_json('$QP', ARRAY[g::text])
         IS DISTINCT FROM (SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]') FROM (SELECT id, price FROM plans WHERE id = g) s)) bad};
	for my $round (1, 2)
	{
		is(sql($served), '0', "$what: cache_query and cache_query_json serve no stale result (round $round)");
	}
	return (scalar(@stale), scalar(@stale_results));
}

sub quiesce
{
	my ($what) = @_;
	ok($c->wait_ok, "$what: the cluster is ok") or diag($c->describe);
	my $q;
	poll("$what: the replay queue is empty", sub { ($q = health_field('replay_queued')) eq '0' })
	  or diag("replay_queued $q");
	return;
}

sub report_counters
{
	my ($what, $before) = @_;
	my $after = counters();
	my %d = map { $_ => ($after->{$_} // 0) - ($before->{$_} // 0) } @stat_cols, @health_cols;
	diag(sprintf('%s: cache_stats: %d hits, %d misses, %d sets, %d invalidations sent at commit, %d queued for the worker, %d retried; %d flushes; errors %d connect / %d timeout / %d I/O / %d protocol / %d reply; %d bypasses; %d round trips',
			$what, @d{qw(hits misses sets invalidations_sent invalidations_queued invalidations_retried flushes errors_connect errors_timeout errors_io errors_protocol errors_reply bypasses round_trips)}));
	diag(sprintf('%s: cache_health: replay_enqueued +%d, replay_replayed +%d, replay_overflows +%d',
			$what, @d{qw(replay_enqueued replay_replayed replay_overflows)}));
	is($d{replay_overflows}, 0, "$what: the replay queue never overflowed");
	return \%d;
}

sub report_probes
{
	my ($what, $r) = @_;
	diag(sprintf('%s at t=%.1f s of the load, over after %s (t=%s); %d probes: %d failed from a fresh session, %d from the session opened before',
			$what, $r->{event_at}, defined $r->{event_seconds} ? sprintf('%.2f s', $r->{event_seconds}) : 'never',
			defined $r->{event_end_at} ? sprintf('%.1f s', $r->{event_end_at}) : '-',
			$r->{probes}, $r->{failed_fresh}, $r->{failed_existing}));
	diag(sprintf('%s: time to recover (first good probe after the last failed one, from the start of the event): %s from a fresh session, %s from the session opened before; longest gap between good fresh probes %.2f s',
			$what, map({ defined $_ ? sprintf('%.2f s', $_) : 'never' } $r->{first_ok}, $r->{first_ok_existing}),
			$r->{max_gap}));
	ok(defined $r->{first_ok} && defined $r->{first_ok_existing},
		"$what: cache_set works again from a fresh session and from one opened before");
	return;
}

my $log_offset = -s $node->logfile;
my $pm_start = sql('SELECT pg_postmaster_start_time()');
my %lost;

# =====================================================================
# a. slots move under load
# =====================================================================
{
	my $what = 'reshard';
	warm_cache();
	my $ns = namespace_slot();
	my $src = $c->slot_owner($ns);
	my ($dst) = grep { $_ != $src } $c->masters;
	my @src_slots;
	push @src_slots, $_->[0] .. $_->[1] for $c->slots_of($src);
	my %moving = map { $_ => 1 } @src_slots[ 0 .. 999 ];
	my @moving_tenants = grep { $moving{ RedisCache::Cluster::key_hash_slot("tenant:id:$_") } } 1 .. $ntenants;
	my $probe_key = first_key(sub { $moving{ $_[0] } }, 'probe:r');
	diag(sprintf('%s: 1000 slots of %d (%d tenant keys) %d -> %d, then the namespace slot %d (%s)',
			$what, $src->port, scalar(@moving_tenants), $src->port, $dst->port, $ns,
			$moving{$ns} ? 'among them' : 'not among them'));
	my $ns_keys = $src->cli('cluster', 'countkeysinslot', $ns);
	diag("$what: the namespace slot holds $ns_keys keys");
	my $before = counters();
	my $existing = $node->background_psql('postgres', on_error_stop => 0);
	bg_query($existing, "SELECT cache_set('$probe_key:e', 'start', 60)");

	my ($reshard, $migrate, $ns_to);
	my $event = {
		start => sub { $reshard = $c->reshard($src, $dst, 1000); },
		running => sub {
			return 1 if $c->reshard_running($reshard);
			if (!$migrate)
			{
				ok($c->finish_reshard($reshard), "$what: redis-cli --cluster reshard of 1000 slots succeeded")
				  or diag($reshard->{out} . $reshard->{err});
				diag(sprintf('%s: reshard of 1000 slots took %.2f s', $what, $reshard->{seconds}));
				my $owner = $c->slot_owner($ns);
				($ns_to) = grep { $_ != $owner } $c->masters;
				$migrate = $c->migrate_slot_bg($ns, $ns_to, batch => 5, pause_ms => 30);
				return 1;
			}
			return $c->migrate_running($migrate);
		},
	};
	my $r = run_load($what, 'reshard', $event, $probe_key, $existing);
	ok($migrate && $c->finish_migrate($migrate), "$what: the namespace slot was migrated by hand")
	  or diag($migrate ? $migrate->{out} : 'not started');
	diag(sprintf('%s: the namespace slot %d moved to %d in %.2f s: %s', $what, $ns,
			$ns_to ? $ns_to->port : 0, $migrate->{seconds} // -1, join(' ', split /\n/, $migrate->{out} // '')))
	  if $migrate;
	report_probes($what, $r);
	is($c->slot_owner($ns), $ns_to, "$what: the namespace slot is on its new master");
	is(scalar(grep { ($c->owners("tenant:id:$_"))[0] != $dst } @moving_tenants), 0,
		"$what: the moved tenant keys' slots are on " . $dst->port);
	quiesce($what);
	my $d = report_counters($what, $before);
	my ($sk, $sr) = stale_check($what);
	$lost{$what} = $sk + $sr;
	diag("$what: lost invalidations (stale keys + stale results at quiescence): $lost{$what}");
	$existing->quit;
}

# =====================================================================
# b. SIGKILL of the master holding the namespace, under load
# =====================================================================
{
	my $what = 'master SIGKILL';
	warm_cache();
	my $victim = $c->slot_owner(namespace_slot());
	my @victim_tenants = grep { ($c->owners("tenant:id:$_"))[0] == $victim } 1 .. $ntenants;
	my @vr = $c->slots_of($victim);
	my $probe_key = first_key(sub { my $s = $_[0]; grep { $s >= $_->[0] && $s <= $_->[1] } @vr }, 'probe:k');
	diag(sprintf('%s: victim %d holds the query namespace and %d tenant keys', $what,
			$victim->port, scalar(@victim_tenants)));
	my $before = counters();
	my $existing = $node->background_psql('postgres', on_error_stop => 0);
	bg_query($existing, "SELECT cache_set('$probe_key:e', 'start', 60)");
	my $new;
	my $event = {
		start => sub { $c->kill_master($victim); },
		running => sub { $new //= $c->failover_done($victim); return !$new; },
	};
	my $r = run_load($what, 'kill9', $event, $probe_key, $existing);
	ok($new, "$what: a replica was promoted") or diag($c->describe);
	diag(sprintf('%s: the cluster was ok again %.2f s after the SIGKILL (node timeout 2 s)',
			$what, $c->failover_seconds // -1));
	report_probes($what, $r);
	quiesce($what);
	my $d = report_counters($what, $before);
	my ($sk, $sr) = stale_check($what);
	$lost{$what} = $sk + $sr;
	diag("$what: lost invalidations (stale keys + stale results at quiescence): $lost{$what}");
	my @flush_log = grep { /run_id|restart detected|flushed \d+ owned keys|identity/i }
	  split /\n/, slurp_file($node->logfile, $log_offset);
	diag("$what: server log: $_") for @flush_log[ 0 .. ($#flush_log < 4 ? $#flush_log : 4) ];
	$existing->quit;

	ok($c->restart($victim), "$what: the killed master comes back as a replica") or diag($c->describe);
	is($c->role($victim), 'replica', "$what: ... it is a replica");
	# invalidation reaches every master afterwards
	warm_cache();
	sql('UPDATE tenants SET name = name || \'+\'');
	my $v = $c->get_all(map { "tenant:id:$_" } 1 .. $ntenants);
	is(scalar(grep { defined } values %$v), 0, "$what: afterwards an UPDATE of every row deletes every key");
	is(sql("SELECT count(*) FROM generate_series(1, $ntenants) g WHERE cache_query_json('$QJ', ARRAY[g::text])->0->>'name' NOT LIKE '%+'"),
		'0', "$what: afterwards every result served is the new one");
}

diag(join('; ', map { "$_: $lost{$_} lost invalidations" } sort keys %lost));

# --- no crash ---------------------------------------------------------------------
is(sql('SELECT pg_postmaster_start_time()'), $pm_start, 'the server ran through (no crash restart)');
my $log = slurp_file($node->logfile, $log_offset);
my @crashes = $log =~ /^(.*(?:terminated by signal|PANIC|was terminated|server process .* exited).*)$/mg;
is(scalar(@crashes), 0, 'no crash, no PANIC in the server log')
  or diag(join("\n", @crashes[ 0 .. ($#crashes < 9 ? $#crashes : 9) ]));
my $errors_logged = () = $log =~ /^.*\bERROR:/mg;
my $warnings_logged = () = $log =~ /^.*\bWARNING:/mg;
diag("server log during the test: $errors_logged ERROR, $warnings_logged WARNING lines");
$node->stop;
diag(sprintf('255_cluster_faults.pl total %.0f s', time() - $^T));

done_testing();
