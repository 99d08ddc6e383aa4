
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# Redis Sentinel: one master, one replica and three sentinels
# (RedisCache::Sentinel), with redis_cache.host/port pointing at a port
# nothing listens on, so every working call went through the sentinels.
#
#   1. Discovery: cache_set/cache_get reach the master the sentinels name;
#      cache_health names it and the sentinel_master; with the first
#      listed sentinel killed the next one answers; a master name no
#      sentinel knows gives a bounded miss and a WARNING naming it.
#   2. SENTINEL FAILOVER under pgbench load: 4 clients with persistent
#      connections (cache-aside reads and UPDATEs of a watched table) and
#      2 clients connecting per transaction (-C, cache-aside reads only).
#   3. SIGKILL of the master under the same load; the killed server comes
#      back as a replica; an idle session opened before the kill works.
#   3b. A master demoted by hand (REPLICAOF, which unlike Sentinel does
#      not disconnect its clients): a session connected to it gets
#      READONLY and must find the new master.
#   4. Sentinels requiring a password (redis_cache.sentinel_password_file,
#      then redis_cache.sentinel_user): discovery works; a wrong password
#      gives a WARNING; no password text reaches the PostgreSQL log.
#
# The cache-aside readers store a value only while holding a FOR SHARE
# lock on the row they read (as in 190_load.pl): a writer of that row
# commits, and sends its delete, only after the reader's SET.  So at
# quiescence every tenant:id:{id} key on the master in use must be absent
# or equal to the row's current name, whatever the failover did: that is
# the "0 stale entries" assertion.  Note the window Sentinel leaves open on
# a SENTINEL FAILOVER: the old master stays a writable master for about
# 10 s after the promotion (until the sentinels reconfigure it and kill
# its clients), so backends connected before the failover keep sending
# their deletes there while new connections (the -C readers) fill the new
# master.
#
# Figures (diag): how long after the failover or kill a cache_set from a
# fresh session and from a session opened before reaches the new master,
# pgbench's failed transactions, the number of stale entries.  Waits poll
# states with deadlines; no assertion depends on a sleep.

use strict;
use warnings;

use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use RedisCache::Sentinel;
use Test::More;
use Time::HiRes qw(time usleep);

my $timeout = $PostgreSQL::Test::Utils::timeout_default;
# The load runs 10 s, the failover or kill comes 3 s into it: on a SENTINEL
# FAILOVER the load ends while the old master is still a writable master
# (about 10 s), so what happened in that window is not overwritten by
# later writes before the staleness check.
my $load_seconds = $ENV{RC_SENTINEL_LOAD_SECONDS} || 10;
my $fault_at = 3;    # seconds into the load
my $ntenants = 200;
my $tmp = $PostgreSQL::Test::Utils::tmp_check;

*poll = \&RedisCache::Server::poll_until;

my $t_setup = time();
my $sent = RedisCache::Sentinel->new('ha');
$sent->start;
my ($m1, $m2) = $sent->servers;
diag(sprintf('master %d, replica %d, sentinels %s: settled in %.1f s',
		$m1->port, $m2->port, $sent->sentinels_setting, time() - $t_setup));

# host/port of a server never started: a call that works went through the
# sentinels
my $dead = RedisCache::Server->new('dead');
my $node = $dead->new_pg_node('sentinel', conf => $sent->pg_conf . q{
redis_cache.circuit_open_seconds = 1
log_statement = none
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION redis_cache');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# A psql script on a node, never hanging the test: (stdout, stderr, ms).
sub run_script
{
	my ($sql, $on) = @_;
	$on //= $node;
	my ($stdout, $stderr) = ('', '');
	my $t0 = time();
	$on->psql('postgres', $sql, stdout => \$stdout, stderr => \$stderr,
		timeout => $timeout);
	return ($stdout, $stderr, (time() - $t0) * 1000);
}

# A query in a background psql: (stdout, the stderr it produced).
sub bg_query
{
	my ($bg, $q) = @_;
	$bg->{stderr} = '';
	my $out = $bg->query($q);
	my $err = $bg->{stderr};
	$bg->{stderr} = '';
	return ($out, $err);
}

# cache_health() of a fresh session: reachable|host|port|sentinel_master|replay_queued
sub health
{
	my ($on) = @_;
	my ($out) = run_script(
		"SELECT concat_ws('|', "
		  . join(', ', map { "coalesce(h->>'$_', 'NULL')" }
			  qw(reachable host port sentinel_master replay_queued))
		  . ") FROM cache_health() h",
		$on);
	return $out;
}

sub count_log
{
	my ($re, $on, $offset) = @_;
	$on //= $node;
	my $log = slurp_file($on->logfile, $offset // 0);
	return scalar(() = $log =~ /$re/g);
}

sub set_conf
{
	my ($on, $name, $value) = @_;
	$on->safe_psql('postgres',
		defined $value
		? "ALTER SYSTEM SET $name = '$value'"
		: "ALTER SYSTEM RESET $name");
	$on->reload;
	$on->poll_query_until('postgres',
		"SELECT setting FROM pg_settings WHERE name = '$name'", $value // '')
	  or die "$name not reloaded";
	return;
}

# =====================================================================
# 1. Discovery
# =====================================================================
is($sent->master_port, $m1->port, 'discovery: the sentinels name the first server as master');
{
	my ($out, $err) = run_script(
		"SELECT cache_set('disc:a', 'v1', 60); SELECT cache_get('disc:a');");
	is($out, "t\nv1",
		'discovery: cache_set and cache_get work, redis_cache.host/port pointing at a dead port');
	unlike($err, qr/WARNING|ERROR/, 'discovery: no warning') or diag($err);
	is($m1->cli('get', 'disc:a'), 'v1', 'discovery: the value is on the master (redis-cli)');
	is(health(), 'true|127.0.0.1|' . $m1->port . '|mymaster|0',
		'discovery: cache_health shows reachable, the master in use and sentinel_master');
}

# the first listed sentinel killed: the next one answers
{
	$sent->kill9_sentinel(0);
	my ($out, $err, $ms) = run_script(
		"SELECT cache_set('disc:b', 'v2', 60); SELECT cache_get('disc:b');");
	is($out, "t\nv2", 'first sentinel killed: cache_set and cache_get still work');
	is($m1->cli('get', 'disc:b'), 'v2', 'first sentinel killed: the value is on the master');
	unlike($err, qr/ERROR/, 'first sentinel killed: no error') or diag($err);
	like(health(), qr/^true\|127\.0\.0\.1\|${\ $m1->port}\|mymaster\|/,
		'first sentinel killed: cache_health reachable, same master');
	diag(sprintf('first sentinel killed: a session (connect, set, get) took %.0f ms', $ms));
	$sent->start_sentinel(0);
	ok($sent->wait_settled($m1->port), 'the first sentinel is back and known')
	  or diag($sent->describe);
}

# a master name no sentinel knows: a bounded miss, a WARNING naming it
{
	set_conf($node, 'redis_cache.sentinel_master', 'nosuchmaster');
	my ($out, $err, $ms) = run_script(qq{
SELECT (cache_get('disc:a') IS NULL) || '|' || cache_set('disc:c', 'x', 60);
SELECT concat_ws('|', h->>'reachable', coalesce(h->>'sentinel_master', 'NULL')) FROM cache_health() h;
});
	my @l = split /\n/, $out;
	is($l[0], 'true|false', 'unknown master name: cache_get misses, cache_set returns false');
	like($err, qr/WARNING:[^\n]*nosuchmaster/, 'unknown master name: a WARNING names the master name')
	  or diag($err);
	unlike($err, qr/ERROR/, 'unknown master name: no error');
	is($l[1], 'false|nosuchmaster',
		'unknown master name: cache_health says unreachable, names the master name');
	is($m1->cli('exists', 'disc:c'), '0', 'unknown master name: nothing written');
	# the bound is the feature: every sentinel answers at once (nil)
	diag(sprintf('unknown master name: the session took %.0f ms', $ms));
	cmp_ok($ms, '<', 10000, 'unknown master name: the miss is bounded');
	set_conf($node, 'redis_cache.sentinel_master', 'mymaster');
	my ($out2) = run_script("SELECT cache_get('disc:a')");
	is($out2, 'v1', 'master name restored: discovery works again');
}

# =====================================================================
# the load
# =====================================================================
sql(qq{
CREATE TABLE tenants (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO tenants SELECT g, 'tenant ' || g FROM generate_series(1, $ntenants) g;
SELECT cache_watch('tenants', 'tenant:id:{id}');
-- cache-aside: on a miss, read the row FOR SHARE and store it while
-- holding the lock (a writer of the row commits after the SET)
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

my $write_sql = "$tmp/230_write.sql";
my $read_sql = "$tmp/230_read.sql";
unlink $write_sql, $read_sql;
append_to_file($write_sql, qq{\\set id random(1, $ntenants)
UPDATE tenants SET name = 'n' || left(md5(random()::text), 10) WHERE id = :id;
});
append_to_file($read_sql, qq{\\set id random(1, $ntenants)
SELECT load_tenant(:id);
});

sub start_pgbench
{
	my ($tag, @args) = @_;
	my $out = "$tmp/230_pgbench_$tag.out";
	my $err = "$tmp/230_pgbench_$tag.err";
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

# Values of tenant:id:1..N on a server: arrayref, undef where absent.
sub tenant_keys
{
	my ($srv) = @_;
	my @keys = map { "tenant:id:$_" } 1 .. $ntenants;
	my $out = $srv->cli("MGET @keys\n") // die 'redis-cli MGET failed';
	my @v = split /\n/, $out, -1;
	die 'redis-cli MGET: ' . scalar(@v) . " values for $ntenants keys" unless @v == $ntenants;
	return [ map { $_ eq '' ? undef : $_ } @v ];
}

# (present, stale, descriptions of up to 10 stale entries) on $srv
sub stale_check
{
	my ($srv) = @_;
	my %name = map { split /\|/, $_, 2 } split /\n/,
	  sql("SELECT id || '|' || name FROM tenants");
	my $v = tenant_keys($srv);
	my ($present, @stale) = (0);
	for my $id (1 .. $ntenants)
	{
		my $c = $v->[ $id - 1 ];
		next unless defined $c;
		$present++;
		push @stale, "tenant:id:$id cached '$c', row has '$name{$id}'" if $c ne $name{$id};
	}
	return ($present, scalar(@stale), @stale[ 0 .. ($#stale < 9 ? $#stale : 9) ]);
}

my $probe_n = 0;

# Runs the load (4 persistent clients writing and reading, 2 readers
# connecting per transaction), calls $fault at $fault_at s, and probes
# every 50 ms: a cache_set from a fresh session and one from the session
# $existing (opened before), each checked on $new_srv with redis-cli.
# Returns a hash of figures.
sub run_load
{
	my ($what, $tag, $fault, $old_srv, $new_srv, $existing) = @_;
	my $old_port = $old_srv->port;
	my @pgb = (
		start_pgbench("${tag}_persistent", '-c', 4, '-j', 2,
			'-f', "$write_sql\@1", '-f', "$read_sql\@3"),
		start_pgbench("${tag}_connect", '-c', 2, '-j', 1, '-C', '-f', $read_sql));
	my $t_start = time();
	my %r = (fresh_probes => 0, existing_probes => 0);
	my $t_fault;
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
		if (!defined $t_fault && $now >= $t_start + $fault_at)
		{
			$fault->();
			$t_fault = time();
			$r{fault_at} = $t_fault - $t_start;
		}
		if (defined $t_fault)
		{
			if (!defined $r{switched}
				&& ($sent->master_port // $old_port) == $new_srv->port)
			{
				$r{switched} = time() - $t_fault;
			}
			if (!defined $r{demoted} && $old_srv->pid
				&& ((split /\n/, ($old_srv->cli('role') // ''))[0] // '') eq 'slave')
			{
				$r{demoted} = time() - $t_fault;
			}
			if (!defined $r{fresh})
			{
				my $n = ++$probe_n;
				my ($out) = run_script("SELECT cache_set('probe:fresh', '$n', 60)");
				$r{fresh_probes}++;
				$r{fresh} = time() - $t_fault
				  if $out eq 't' && ($new_srv->cli('get', 'probe:fresh') // '') eq $n;
			}
			if (!defined $r{existing})
			{
				my $n = ++$probe_n;
				my ($out) = bg_query($existing, "SELECT cache_set('probe:existing', '$n', 60)");
				$r{existing_probes}++;
				$r{existing} = time() - $t_fault
				  if $out eq 't' && ($new_srv->cli('get', 'probe:existing') // '') eq $n;
			}
			last if $load_done
			  && ((defined $r{fresh} && defined $r{existing}
					&& (defined $r{demoted} || !$old_srv->pid))
				|| time() > $t_fault + 60);
		}
		usleep(50_000);
	}
	$r{load} = time() - $t_start;

	# pgbench's reports
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
	return \%r;
}

sub report_times
{
	my ($what, $r) = @_;
	my %t = map { $_ => defined $r->{$_} ? sprintf('%.2f s', $r->{$_}) : 'never' }
	  qw(switched fresh existing demoted);
	diag(sprintf('%s at t=%.1f s of the load: the sentinels named the new master after %s; '
			. 'a cache_set reached it from a fresh session after %s (%d probes), '
			. 'from a session opened before after %s (%d probes)',
			$what, $r->{fault_at}, $t{switched}, $t{fresh}, $r->{fresh_probes},
			$t{existing}, $r->{existing_probes}));
	diag(sprintf('%s: the old master became a replica after %s (load ended at t=%.1f s)',
			$what, $t{demoted}, $load_seconds)) if $r->{demoted} || $what !~ /KILL/;
	ok(defined $r->{fresh}, "$what: a fresh session's cache_set reaches the new master");
	ok(defined $r->{existing},
		"$what: a session opened before the failover writes to the new master again");
	return;
}

# Quiescence on $srv: sentinels settled on it, a fresh session uses it,
# the replay queue is empty.
sub quiesce
{
	my ($what, $srv) = @_;
	ok($sent->wait_settled($srv->port),
		"$what: the sentinels settle on the new master, the old one its replica")
	  or diag($sent->describe);
	my $h;
	poll("$what: a fresh session uses the new master, the replay queue is empty",
		sub { ($h = health()) eq 'true|127.0.0.1|' . $srv->port . '|mymaster|0' })
	  or diag("cache_health: $h");
	return;
}

# =====================================================================
# 2. SENTINEL FAILOVER under load
# =====================================================================
{
	my $what = 'SENTINEL FAILOVER';
	my $log_offset = -s $node->logfile;
	my $existing = $node->background_psql('postgres', on_error_stop => 0);
	my ($out) = bg_query($existing, "SELECT cache_set('probe:existing', 'start', 60)");
	is($out, 't', "$what: the session opened before writes");
	is($m1->cli('get', 'probe:existing'), 'start', "$what: ... to the old master");
	sql("SELECT count(load_tenant(id)) FROM tenants");
	is(scalar(grep { defined } @{ tenant_keys($m1) }), $ntenants,
		"$what: all $ntenants tenants cached before the load");

	my $r = run_load($what, 'failover', sub { $sent->failover or fail('SENTINEL FAILOVER accepted') },
		$m1, $m2, $existing);
	report_times($what, $r);
	quiesce($what, $m2);
	my ($present, $stale, @examples) = stale_check($m2);
	diag("$what: at quiescence $present tenant keys on the new master, $stale stale");
	is($stale, 0, "$what: no stale entry on the new master at quiescence")
	  or diag(join("\n", @examples));
	ok(count_log(qr/flushing the cache's own keys|flushed \d+ owned keys/, $node, $log_offset) >= 1,
		"$what: the new master's own keys were flushed (server log)");

	# invalidation reaches the new master
	sql("SELECT count(load_tenant(id)) FROM tenants");
	is(scalar(grep { defined } @{ tenant_keys($m2) }), $ntenants,
		"$what: afterwards all $ntenants tenants cached on the new master");
	sql("UPDATE tenants SET name = name || '+' WHERE id <= 50");
	my $v = tenant_keys($m2);
	is(scalar(grep { defined } @$v[ 0 .. 49 ]), 0,
		"$what: afterwards an UPDATE of 50 rows deletes their keys on the new master");
	is(scalar(grep { defined } @$v[ 50 .. $ntenants - 1 ]), $ntenants - 50,
		"$what: afterwards the other keys stay");
	$existing->quit;
}

# =====================================================================
# 3. SIGKILL of the master under load
# =====================================================================
{
	my $what = 'master SIGKILL';
	my $log_offset = -s $node->logfile;
	my $existing = $node->background_psql('postgres', on_error_stop => 0);
	my $idle = $node->background_psql('postgres', on_error_stop => 0);
	for my $s ([ $existing, 'probe:existing' ], [ $idle, 'probe:idle' ])
	{
		my ($out) = bg_query($s->[0], "SELECT cache_set('$s->[1]', 'start', 60)");
		is($out, 't', "$what: a session opened before writes ($s->[1])");
		is($m2->cli('get', $s->[1]), 'start', "$what: ... to the master ($s->[1])");
	}
	my $r = run_load($what, 'kill9', sub { $m2->kill9 }, $m2, $m1, $existing);
	report_times($what, $r);

	# the killed master comes back as a replica (of the master now named)
	$sent->restart_server($m2);
	quiesce($what, $m1);
	my ($present, $stale, @examples) = stale_check($m1);
	diag("$what: at quiescence $present tenant keys on the new master, $stale stale");
	is($stale, 0, "$what: no stale entry on the new master at quiescence")
	  or diag(join("\n", @examples));
	ok(count_log(qr/flushing the cache's own keys|flushed \d+ owned keys/, $node, $log_offset) >= 1,
		"$what: the new master's own keys were flushed (server log)");

	# a session idle through the kill and the restart: its first call works
	my ($out, $err) = bg_query($idle, "SELECT cache_set('probe:idle', 'after', 60)");
	is($out, 't', "$what: a session idle since before the kill: its first cache_set works")
	  or diag($err);
	is($m1->cli('get', 'probe:idle'), 'after', "$what: ... and reaches the new master");
	($out) = run_script("SELECT cache_set('probe:fresh2', 'after', 60)");
	is($out . '|' . ($m1->cli('get', 'probe:fresh2') // ''), 't|after',
		"$what: a fresh session writes to the new master");
	$existing->quit;
	$idle->quit;
}

# =====================================================================
# 3b. A master demoted without disconnecting its clients: READONLY
# =====================================================================
{
	my $what = 'demoted by hand (READONLY)';
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	my $s_pid = $s->query_safe('SELECT pg_backend_pid()');
	my $log_offset = -s $node->logfile;
	my ($out) = bg_query($s, "SELECT cache_set('ro:a', 'before', 60)");
	is($out . '|' . ($m1->cli('get', 'ro:a') // ''), 't|before',
		"$what: the session writes to the master");
	is($m2->cli('replicaof', 'no', 'one'), 'OK', "$what: the replica promoted (REPLICAOF NO ONE)");
	is($m1->cli('replicaof', '127.0.0.1', $m2->port), 'OK', "$what: the master demoted (REPLICAOF)");
	poll("$what: the old master refuses writes",
		sub { ($m1->cli('set', 'ro:x', 'y') // '') =~ /READONLY|LOADING/ });
	# before the sentinels hear of it: the session's connection to the old
	# master gets READONLY, so it asks the sentinels again (which still
	# name the old master, now a replica: ROLE refuses it, a miss)
	my (undef, $ro_err) = bg_query($s, "SELECT cache_set('ro:r', 'x', 60)");
	like(slurp_file($node->logfile, $log_offset),
		qr/\[$s_pid\][^\n]*is no longer a writable master of "mymaster"; asking the sentinels again/,
		"$what: the session was refused by the demoted master and asked the sentinels again (server log)");
	like($ro_err, qr/named master "mymaster" by the sentinels, is a slave|WARNING/,
		"$what: ... which still name the demoted master, refused by ROLE: a miss with a WARNING");
	$sent->monitor_on_all($m2->port);
	ok($sent->wait_settled($m2->port), "$what: the sentinels name the new master")
	  or diag($sent->describe);
	# the same session, on its connection to the old master
	my ($attempts, $done, $errs) = (0, 0, '');
	while ($attempts < 5 && !$done)
	{
		$attempts++;
		my ($o, $e) = bg_query($s, "SELECT cache_set('ro:b', '$attempts', 60)");
		$errs .= $e;
		$done = $o eq 't' && ($m2->cli('get', 'ro:b') // '') eq $attempts;
	}
	ok($done, "$what: the session connected to the demoted master writes to the new one");
	diag("$what: the session's cache_set reached the new master at attempt $attempts"
		  . ($errs ne '' ? "; it saw: $errs" : ''));
	unlike($errs, qr/ERROR/, "$what: no error in the session");
	($out) = bg_query($s, "SELECT cache_get('ro:b')");
	is($out, $attempts, "$what: the session reads from the new master");
	($out) = run_script("SELECT cache_set('ro:c', 'fresh', 60)");
	is($out . '|' . ($m2->cli('get', 'ro:c') // ''), 't|fresh',
		"$what: a fresh session writes to the new master");
	is(health(), 'true|127.0.0.1|' . $m2->port . '|mymaster|0',
		"$what: cache_health names the new master");
	$s->quit;
}

# =====================================================================
# 4. Sentinels requiring a password
# =====================================================================
{
	my $what = 'sentinel password';
	my $pw = 'sentinel-secret-5b7e2c';
	my $wrong = 'wrong-sentinel-pw-9d2c41';
	my $user_pw = 'sentinel-user-pw-3fa8e0';
	my $auth = RedisCache::Sentinel->new('auth',
		master => $m2, replicas => [$m1], sentinels => 2,
		master_name => 'authmaster', password => $pw);
	$auth->start;
	my $raw = `redis-cli -h 127.0.0.1 -p ${\ $auth->sentinel_port(0)} sentinel get-master-addr-by-name authmaster 2>&1`;
	like($raw, qr/NOAUTH/, "$what: the sentinels refuse clients without the password");

	my $pwfile = "$tmp/sentinel_password";
	unlink $pwfile;
	append_to_file($pwfile, "$pw\n");
	chmod 0600, $pwfile;
	my $node2 = $dead->new_pg_node('sentauth', conf => $auth->pg_conf
		  . "redis_cache.sentinel_password_file = '$pwfile'\n");
	$node2->start;
	$node2->safe_psql('postgres', 'CREATE EXTENSION redis_cache');
	my ($out, $err) = run_script(
		"SELECT cache_set('auth:a', 'ok', 60); SELECT cache_get('auth:a');", $node2);
	is($out, "t\nok", "$what: discovery with redis_cache.sentinel_password_file works");
	unlike($err, qr/WARNING|ERROR/, "$what: no warning") or diag($err);
	is($m2->cli('get', 'auth:a'), 'ok', "$what: the value is on the master");
	is(health($node2), 'true|127.0.0.1|' . $m2->port . '|authmaster|0',
		"$what: cache_health names the master and sentinel_master");

	# a wrong password in the file (read at each connect)
	unlink $pwfile;
	append_to_file($pwfile, "$wrong\n");
	my $ms;
	($out, $err, $ms) = run_script(
		"SELECT (cache_get('auth:a') IS NULL) || '|' || cache_set('auth:b', 'x', 60);", $node2);
	is($out, 'true|false', "$what: wrong password: a miss, cache_set returns false");
	like($err, qr/WARNING:[^\n]*(?:sentinel|Sentinel)/, "$what: wrong password: a WARNING")
	  or diag($err);
	diag("$what: wrong password: the client saw: $err");
	unlike($err, qr/ERROR/, "$what: wrong password: no error");
	is($m2->cli('exists', 'auth:b'), '0', "$what: wrong password: nothing written");
	cmp_ok($ms, '<', 10000, "$what: wrong password: the miss is bounded");

	# an ACL user of the sentinels
	for my $i (0, 1)
	{
		is($auth->sentinel_cli($i, 'acl', 'setuser', 'pgsentinel', 'on', ">$user_pw", '+@all'),
			'OK', "$what: ACL user pgsentinel on sentinel $i");
	}
	unlink $pwfile;
	append_to_file($pwfile, "$user_pw\n");
	set_conf($node2, 'redis_cache.sentinel_user', 'pgsentinel');
	($out, $err) = run_script("SELECT cache_set('auth:c', 'user', 60)", $node2);
	is($out . '|' . ($m2->cli('get', 'auth:c') // ''), 't|user',
		"$what: discovery as redis_cache.sentinel_user with its password works");
	unlike($err, qr/WARNING|ERROR/, "$what: sentinel_user: no warning") or diag($err);

	my $log2 = slurp_file($node2->logfile);
	my $log1 = slurp_file($node->logfile);
	for my $p ([ 'the password', $pw ], [ 'the wrong password', $wrong ],
		[ "the ACL user's password", $user_pw ])
	{
		ok(index($log2, $p->[1]) < 0 && index($log1, $p->[1]) < 0,
			"$what: $p->[0] never appears in the PostgreSQL log");
	}
	$node2->stop;
	$auth->stop_sentinel($_) for 0, 1;
}

# --- no crash ------------------------------------------------------------------
my $log = slurp_file($node->logfile);
my @crashes = $log =~ /^(.*(?:terminated by signal|PANIC|was terminated|server process .* exited).*)$/mg;
is(scalar(@crashes), 0, 'no crash, no PANIC in the server log')
  or diag(join("\n", @crashes[ 0 .. ($#crashes < 9 ? $#crashes : 9) ]));
$node->stop;
diag(sprintf('230_sentinel.pl total %.0f s', time() - $^T));

done_testing();
