
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# Redis stopped, paused (SIGSTOP) and restarted under a live PostgreSQL:
# misses instead of errors, bounded waits, statement_timeout and
# pg_cancel_backend() interrupt a blocked call, the circuit breaker, and
# reconnection.  Assertions are on states and counters (cache_stats, the
# server log, Redis' own INFO); the only wall-clock bounds kept are the
# ones that are the feature (a timeout must fire, a wait must be
# interruptible), and they are generous.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(time usleep);

my $timeout = $PostgreSQL::Test::Utils::timeout_default;

my $redis = RedisCache::Server->new('outage');
$redis->start;
my $port = $redis->port;
my $node = $redis->new_pg_node('outage');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION redis_cache');

my $P = "SET redis_cache.key_prefix = 'fault:';";

# Connections Redis has accepted so far (each redis-cli call is one too).
sub connections_received
{
	my $info = $redis->cli('info', 'stats') // '';
	$info =~ /total_connections_received:(\d+)/
	  or die "no total_connections_received in INFO: $info";
	return $1;
}

# A psql script run against the node, never hanging the test; stdout and
# stderr are returned.
sub run_script
{
	my ($sql, %params) = @_;
	my ($stdout, $stderr);
	$node->psql('postgres', $sql,
		stdout => \$stdout, stderr => \$stderr,
		timeout => $timeout, %params);
	return ($stdout, $stderr);
}

# Lines "name=value" of a script's output as a hash.
sub tagged
{
	my ($out) = @_;
	my %h;
	for (split /\n/, $out)
	{
		$h{$1} = $2 if /^(\w+)=(.*)$/;
	}
	return \%h;
}

# A query in a background psql, returning its stdout and the stderr it
# produced (this version of BackgroundPsql keeps stderr across queries).
sub bg_query
{
	my ($bg, $sql) = @_;
	$bg->{stderr} = '';
	my $out = $bg->query($sql);
	my $err = $bg->{stderr};
	$bg->{stderr} = '';
	return ($out, $err);
}

# --- one connection per backend, reused across calls and transactions -----
my $before = connections_received();
is( $node->safe_psql('postgres',
		"$P SELECT count(*) FROM generate_series(1,200) g WHERE cache_set('k'||g, 'v')"),
	'200',
	'200 cache_set calls succeed');
my $after = connections_received();
# $after counts the second redis-cli call itself
is($after - $before - 1, 1,
	'200 calls in one backend use one Redis connection (opened at login, reused)');

# --- Redis stopped ----------------------------------------------------------
$redis->stop;
my $t0 = time();
my ($out, $err) = run_script(qq{
$P
SELECT 'c0=' || errors_connect || '|' || errors_timeout FROM cache_stats WHERE family IS NULL;
SELECT cache_get('k1') IS NULL, cache_set('k1','x'), cache_delete('k1'), 42;
SELECT 'c1=' || errors_connect || '|' || errors_timeout || '|' || bypasses FROM cache_stats WHERE family IS NULL;
});
note sprintf('stopped Redis: the session took %.0f ms', (time() - $t0) * 1000);
my @lines = split /\n/, $out;
is($lines[1], 't|f|0|42',
	'stopped Redis: functions return miss values, query succeeds');
like($err,
	qr/WARNING:  redis_cache: could not connect to Redis at 127\.0\.0\.1:$port: Connection refused/,
	'stopped Redis: a WARNING says why');
is(scalar(() = $err =~ /WARNING/g), 1,
	'stopped Redis: one WARNING per backend per 10 s');
# "no hang": every failure was an immediate refusal, none waited for a
# timeout; cache_get and cache_set failed, then the breaker skipped Redis
my ($c0_connect, $c0_timeout) = split /\|/, tagged($out)->{c0} // '';
my ($c1_connect, $c1_timeout, $c1_bypass) = split /\|/, tagged($out)->{c1} // '';
is($c1_timeout - $c0_timeout, 0,
	'stopped Redis: no hang, no call waited for a timeout');
is($c1_connect - $c0_connect, 2,
	'stopped Redis: cache_get and cache_set were refused at once (errors_connect)');

($out, $err) = run_script(qq{
SET redis_cache.on_error = 'error';
$P
SELECT cache_get('k1');
});
like($err, qr/ERROR:  redis_cache: could not connect/,
	'stopped Redis, on_error=error: ERROR');

# --- restart: a reused connection recovers transparently --------------------
$redis->start;
my $bg = $node->background_psql('postgres', on_error_stop => 0);
my @got;
my $errs = '';
($out, $err) = bg_query($bg, "$P SELECT cache_set('r1', 'before')");
push @got, $out;
$errs .= $err;
$redis->restart;
for my $q ("$P SELECT cache_set('r1', 'after')", "$P SELECT cache_get('r1')")
{
	($out, $err) = bg_query($bg, $q);
	push @got, $out;
	$errs .= $err;
}
is(join("\n", @got), "t\nt\nafter",
	'restarted Redis: the next call reconnects and works');
is($errs, '', 'restarted Redis: no warning');
$bg->quit;

# --- paused (SIGSTOP) ------------------------------------------------------
# Each session connects (and checks the cache version) while Redis is up,
# then pauses it itself, so what is measured is the call, not the login.
my $pid = $redis->pid;
my $PAUSE = "\\! kill -STOP $pid";
my $RESUME = "\\! kill -CONT $pid";
$node->safe_psql('postgres', "$P SELECT cache_set('p1', 'v')");

# ms since the psql variable t0 was set
my $ELAPSED = q{round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000)};
($out, $err) = run_script(qq{
$P
SET redis_cache.command_timeout_ms = 250;
SELECT 'first=' || cache_get('p1');
$PAUSE
SELECT clock_timestamp() AS t0 \\gset
SELECT 'miss=' || (cache_get('p1') IS NULL);
SELECT 'elapsed=' || $ELAPSED;
SELECT errors_timeout AS e0, bypasses AS b0 FROM cache_stats WHERE family IS NULL \\gset
SELECT clock_timestamp() AS t0 \\gset
SELECT 'three=' || (cache_get('p1') IS NULL) || '|' || cache_set('p2', 'x') || '|' || (cache_get('p3') IS NULL);
SELECT 'elapsed3=' || $ELAPSED;
SELECT 'counters3=' || (errors_timeout - :e0) || '|' || (bypasses - :b0) FROM cache_stats WHERE family IS NULL;
$RESUME
});
$redis->resume;    # in case the script stopped early
my $r = tagged($out);
is($r->{first}, 'v', 'paused Redis: the session read the key before the pause');
like($err,
	qr/timed out waiting for Redis at 127\.0\.0\.1:$port after 250 ms/,
	'paused Redis: command times out with a WARNING');
is($r->{miss}, 'true', 'paused Redis: result is a miss');
# the bound is the feature: the call ends by command_timeout_ms (250 ms);
# without it the call would wait for as long as Redis stays paused
note "paused Redis: one call took $r->{elapsed} ms (command_timeout_ms = 250)";
cmp_ok($r->{elapsed} // 1e9, '<', 2500,
	'paused Redis: one call bounded by command_timeout_ms');
# The first call timed out and dropped the connection; the next two each
# spend connect_timeout_ms (1 s) on a new connection to the paused server
# (failures 2 and 3), which opens the circuit breaker, so the third call
# of the query skips Redis.
is($r->{three}, 'true|false|true',
	'paused Redis: three calls in one query give misses');
is($r->{counters3}, '2|1',
	'paused Redis: the three calls waited for two timeouts, then the breaker skipped Redis');
note "paused Redis: three calls took $r->{elapsed3} ms (2 x connect_timeout_ms = 2000)";
cmp_ok($r->{elapsed3} // 1e9, '<', 10000,
	'paused Redis: three calls in one query stay bounded by the timeouts');

# --- a new backend while Redis is paused: the login is not blocked -------
# The check at login uses min(connect_timeout_ms, command_timeout_ms);
# with connect_timeout_ms at 60 s the login must still take one command
# timeout (250 ms), which the server log states.
$node->safe_psql('postgres',
	"ALTER SYSTEM SET redis_cache.connect_timeout_ms = 60000; SELECT pg_reload_conf()");
$node->poll_query_until('postgres',
	"SELECT setting FROM pg_settings WHERE name = 'redis_cache.connect_timeout_ms'", '60000')
  or die 'connect_timeout_ms not reloaded';
my $log_offset = -s $node->logfile;
$redis->pause;
$t0 = time();
my ($ret, $login_out) = $node->psql('postgres', 'SELECT 1', timeout => $timeout);
my $login_ms = (time() - $t0) * 1000;
$redis->resume;
is($login_out, '1', 'paused Redis at backend start: the connection succeeds');
like(slurp_file($node->logfile, $log_offset),
	qr/redis_cache: timed out (?:waiting for|connecting to) Redis at 127\.0\.0\.1:$port after 250 ms/,
	'paused Redis at backend start: the login waited one command timeout, not connect_timeout_ms');
# the bound is the feature: 250 ms expected, 60 s if connect_timeout_ms applied
note sprintf('paused Redis at backend start: the login took %.0f ms', $login_ms);
cmp_ok($login_ms, '<', 10000,
	'paused Redis at backend start: login not blocked for the 60 s connect timeout');
$node->safe_psql('postgres',
	"ALTER SYSTEM RESET redis_cache.connect_timeout_ms; SELECT pg_reload_conf()");
$node->poll_query_until('postgres',
	"SELECT setting FROM pg_settings WHERE name = 'redis_cache.connect_timeout_ms'", '1000')
  or die 'connect_timeout_ms not reset';

# --- statement_timeout interrupts a call blocked on a paused Redis --------
($out, $err) = run_script(qq{
$P
SET redis_cache.command_timeout_ms = 60000;
SELECT 'first=' || cache_get('p1');
$PAUSE
SET statement_timeout = 500;
SELECT clock_timestamp() AS t0 \\gset
SELECT cache_get('p1');
RESET statement_timeout;
SELECT 'elapsed=' || $ELAPSED;
$RESUME
SELECT 'after=' || cache_get('p1');
}, on_error_stop => 0);
$redis->resume;
$r = tagged($out);
is($r->{first}, 'v', 'statement_timeout: the session read the key before the pause');
like($err, qr/canceling statement due to statement timeout/,
	'paused Redis: statement_timeout interrupts the wait');
unlike($err, qr/timed out waiting for Redis/,
	'paused Redis: it was not the 60 s command timeout that ended the wait');
# the bound is the feature: 500 ms statement_timeout against 60 s
note "paused Redis: statement_timeout (500 ms) ended the call after $r->{elapsed} ms";
cmp_ok($r->{elapsed} // 1e9, '<', 10000,
	'paused Redis: statement_timeout honoured promptly');
is($r->{after}, 'v', 'after statement_timeout the session reconnects cleanly');

# --- pg_cancel_backend interrupts it; the same session then works again ---
my $mon = $node->background_psql('postgres');
$bg = $node->background_psql('postgres', on_error_stop => 0);
my $bg_pid = $bg->query_safe('SELECT pg_backend_pid()');
is( $bg->query_safe(
		"SET redis_cache.command_timeout_ms = 60000; $P SELECT cache_get('p1')"),
	'v',
	'cancel: the session read the key before the pause');
$redis->pause;
$bg->query_until(qr/calling/, "\\echo calling\nSELECT cache_get('p1');\n");
my $waiting = 'f';
my $deadline = time() + $timeout;
while (time() < $deadline)
{
	$waiting = $mon->query_safe(
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $bg_pid "
		  . "AND wait_event_type = 'Extension' AND state = 'active'");
	last if $waiting eq 't';
	usleep(50_000);
}
is($waiting, 't',
	'pg_stat_activity shows the backend waiting on Redis (Extension wait event)');
$t0 = time();
$mon->query_safe("SELECT pg_cancel_backend($bg_pid)");
# psql reads the \echo only once the blocked statement has ended
$bg->query_until(qr/returned/, "\\echo returned\n");
my $cancel_ms = (time() - $t0) * 1000;
my $cancel_err = $bg->{stderr};
$redis->resume;
like($cancel_err, qr/canceling statement due to user request/,
	'paused Redis: pg_cancel_backend interrupts the wait');
unlike($cancel_err, qr/timed out waiting for Redis/,
	'paused Redis: the cancel, not the 60 s command timeout, ended the wait');
# the bound is the feature: the wait must be interruptible (60 s otherwise)
note sprintf('pg_cancel_backend ended the call after %.0f ms', $cancel_ms);
cmp_ok($cancel_ms, '<', 10000, 'cancel did not wait for the 60 s command timeout');
($out, $err) = bg_query($bg, "SELECT 'after:' || coalesce(cache_get('p1'), 'NULL')");
is($out, 'after:v',
	'after a cancel the backend reconnects cleanly (no out-of-sync reply)');
$bg->quit;
$mon->quit;

# --- circuit breaker --------------------------------------------------------
# step(k): one cache_get, with what it did according to cache_stats: ms,
# round trips tried, calls skipped by the breaker, timeouts, and the
# breaker's state afterwards (circuit is per backend).
($out, $err) = run_script(qq{
SET redis_cache.on_error = 'silent';
SET redis_cache.command_timeout_ms = 200;
SET redis_cache.circuit_open_seconds = 5;
$P
CREATE FUNCTION pg_temp.step(k text) RETURNS text LANGUAGE plpgsql AS \$\$
DECLARE
	t0 timestamptz := clock_timestamp();
	s0 record;
	s1 record;
	v text;
BEGIN
	SELECT * INTO s0 FROM cache_stats WHERE family IS NULL;
	v := cache_get(k);
	SELECT * INTO s1 FROM cache_stats WHERE family IS NULL;
	RETURN round(extract(epoch FROM clock_timestamp() - t0) * 1000)
		|| '|' || (s1.round_trips - s0.round_trips)
		|| '|' || (s1.bypasses - s0.bypasses)
		|| '|' || (s1.errors_timeout - s0.errors_timeout)
		|| '|' || s1.circuit || '|' || coalesce(v, 'NULL');
END \$\$;
SELECT 'first=' || cache_get('p1');
$PAUSE
SELECT 'step1=' || pg_temp.step('a');
SELECT 'step2=' || pg_temp.step('a');
SELECT 'step3=' || pg_temp.step('a');
SELECT 'step4=' || pg_temp.step('a');
SELECT 'step5=' || pg_temp.step('a');
$RESUME
SELECT 'step6=' || pg_temp.step('a');
-- Waiting out circuit_open_seconds is the behaviour under test: poll the
-- breaker's state (it turns half-open when the time is up), with a deadline.
DO \$\$
DECLARE deadline timestamptz := clock_timestamp() + interval '$timeout s';
BEGIN
	WHILE (SELECT circuit FROM cache_stats WHERE family IS NULL) = 'open'
		AND clock_timestamp() < deadline
	LOOP
		PERFORM pg_sleep(0.05);
	END LOOP;
END \$\$;
SELECT 'state=' || circuit FROM cache_stats WHERE family IS NULL;
SELECT 'step7=' || pg_temp.step('p1');
});
$redis->resume;
$r = tagged($out);
is($r->{first}, 'v', 'breaker: the session read the key before the pause');
my %step;
for my $i (1 .. 7)
{
	my @f = split /\|/, $r->{"step$i"} // '';
	$step{$i} = {
		ms => $f[0] // -1,
		tries => $f[1] // -1,
		skips => $f[2] // -1,
		timeouts => $f[3] // -1,
		circuit => $f[4] // '',
		value => $f[5] // '',
	};
	note "breaker step $i: " . ($r->{"step$i"} // '(missing)');
}
# a lower bound on a wait is not disturbed by a loaded machine
cmp_ok($step{1}{ms}, '>=', 150,
	'breaker: 1st failure waits for the command timeout');
ok( $step{1}{tries} >= 1 && $step{1}{timeouts} == 1 && $step{1}{skips} == 0,
	'breaker: 1st failure tried Redis and timed out');
ok( $step{2}{tries} >= 1 && $step{2}{timeouts} == 1 && $step{2}{circuit} eq 'closed',
	'breaker: 2nd failure tried Redis, the breaker still closed');
cmp_ok($step{3}{ms}, '>=', 150, 'breaker: 3rd failure still waits for a timeout');
ok( $step{3}{tries} >= 1 && $step{3}{timeouts} == 1 && $step{3}{skips} == 0,
	'breaker: 3rd failure still tries Redis');
is($step{3}{circuit}, 'open', 'breaker: open after 3 failures');
ok( $step{4}{tries} == 0 && $step{4}{timeouts} == 0 && $step{4}{skips} == 1
	  && $step{5}{tries} == 0 && $step{5}{skips} == 1,
	'breaker: open after 3 failures, 4th and 5th calls skip Redis');
ok( $step{6}{tries} == 0 && $step{6}{skips} == 1 && $step{6}{circuit} eq 'open',
	'breaker: still open right after Redis is back');
is($r->{state}, 'half-open', 'breaker: half-open after circuit_open_seconds');
ok( $step{7}{value} eq 'v' && $step{7}{tries} >= 1 && $step{7}{circuit} eq 'closed',
	'breaker: half-open trial after circuit_open_seconds succeeds and closes it');

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no backend crashed');

done_testing();
