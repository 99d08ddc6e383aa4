
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# Nothing unkillable, no stale window (issue 12, points 6, 7 and 8):
# (a) a commit waiting on a paused Redis with command_timeout_ms = 600 s set
#     by an ordinary role ends at once on pg_terminate_backend() and
#     pg_cancel_backend(), releases its locks, and its invalidations are
#     applied once Redis is back; redis_cache.commit_timeout_ms (superuser)
#     bounds the commit by itself;
# (d) after a stall that made commits miss their delivery, no cached result
#     is served (neither stale rows nor rows a revoked role may no longer
#     read) and cache_get() misses until the worker has applied what was
#     missed; then the cache works again;
# (b) pg_ctl stop -m fast ends while the worker waits on a paused Redis with
#     600 s timeouts;
# (c) a fake server whose SCAN cursor never returns to 0: the worker's flush
#     ends with a WARNING within its bound, and SIGTERM stops the worker in
#     the middle of an endless SCAN.
# The wall-clock bounds asserted are the feature (a wait must end) and are
# generous; the figures are printed.

use strict;
use warnings;

use IO::Select;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(time usleep);

my $timeout = $PostgreSQL::Test::Utils::timeout_default;

my $redis = RedisCache::Server->new('waits');
$redis->start;
my $node = $redis->new_pg_node('waits');
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION redis_cache;
CREATE TABLE items (id int PRIMARY KEY, v text);
INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 10) g;
SELECT cache_watch('items', 'item:{id}');
CREATE ROLE regress_app LOGIN;
CREATE ROLE regress_other LOGIN;
GRANT SELECT, UPDATE ON items TO regress_app;
GRANT SELECT ON items TO regress_other;});

my @worker_stopped;    # pids to SIGCONT if the test dies halfway

END
{
	kill 'CONT', $_ for @worker_stopped;
}

# Poll until KEY is gone from Redis; the elapsed seconds, or undef.
sub wait_gone
{
	my ($key) = @_;
	my $t0 = time();
	while (time() - $t0 < $timeout)
	{
		return time() - $t0 if ($redis->cli('exists', $key) // '') eq '0';
		usleep(50_000);
	}
	return undef;
}

sub set_system
{
	my ($name, $value) = @_;
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET $name = '$value'; SELECT pg_reload_conf()");
	$node->poll_query_until('postgres',
		"SELECT setting = '$value' FROM pg_settings WHERE name = '$name'")
	  or die "$name not reloaded";
	return;
}

# A background session of ROLE with command_timeout_ms = 600 s (any role
# may set it), connected to Redis while it runs; returns (session, pid).
sub long_timeout_session
{
	my ($role) = @_;
	my $bg = $node->background_psql('postgres', on_error_stop => 0,
		extra_params => [ '-U', $role ]);
	my $pid = $bg->query_safe(q{
SET redis_cache.command_timeout_ms = 600000;
SELECT cache_set('warm-up', 'x');
SELECT pg_backend_pid()});
	$pid = (split /\n/, $pid)[-1];
	return ($bg, $pid);
}

# Start a statement in a background session without waiting for it.
sub send_async
{
	my ($bg, $sql) = @_;
	$bg->{stdin} .= "$sql\n";
	$bg->{run}->pump_nb();
	return;
}

# Poll until backend PID waits in the extension (Redis) running a query
# like PATTERN; true when it does.
sub wait_in_commit
{
	my ($pid, $pattern) = @_;
	return $node->poll_query_until('postgres', qq{
SELECT wait_event_type = 'Extension' AND query LIKE '$pattern'
FROM pg_stat_activity WHERE pid = $pid});
}

# Send a signal function to PID; returns the seconds until its wait ended
# (the backend is gone, or no longer waits), undef after the timeout.
sub signal_and_time
{
	my ($function, $pid, $gone) = @_;
	my $t0 = time();
	$node->safe_psql('postgres', "SELECT $function($pid)");
	my $cond = $gone
	  ? "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid"
	  : "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid AND wait_event_type = 'Extension' AND state = 'active'";
	while (time() - $t0 < $timeout)
	{
		return time() - $t0 if $node->safe_psql('postgres', $cond) eq 't';
		usleep(50_000);
	}
	return undef;
}

# --- (a) terminate a commit waiting on a paused Redis -----------------------
# The superuser lifts the commit cap, so that only the terminate can end
# the wait: the 600 s the role asked for would otherwise hold the locks.
set_system('redis_cache.commit_timeout_ms', 600000);
my ($bg, $pid) = long_timeout_session('regress_app');
# the next part's session, connected while Redis runs
my ($bg2, $pid2) = long_timeout_session('regress_app');
$redis->cli('set', 'item:1', 'cached');
$redis->cli('set', 'item:2', 'cached');
my $log_offset = -s $node->logfile;
$redis->pause;
send_async($bg, q{UPDATE items SET v = 'terminated' WHERE id = 1;});
ok(wait_in_commit($pid, 'UPDATE items%'),
	'terminate: the UPDATE waits for the paused Redis');
my $el = signal_and_time('pg_terminate_backend', $pid, 1);
ok(defined $el, 'terminate: the backend ends while Redis stays paused');
note(sprintf('terminate: backend gone %.0f ms after pg_terminate_backend (command_timeout_ms = commit_timeout_ms = 600 s)',
		($el // $timeout) * 1000));
cmp_ok($el // 1e9, '<', 15, 'terminate: within 15 s instead of 600 s');
eval { $bg->quit };
is($node->safe_psql('postgres',
		"SELECT count(*) FROM pg_locks WHERE pid = $pid"),
	'0', 'terminate: the backend holds no lock any more');
is($node->safe_psql('postgres', q{SELECT v FROM items WHERE id = 1}),
	'terminated', 'terminate: the transaction committed');
my ($ret, $out, $err) = $node->psql('postgres', q{
SET lock_timeout = '10s';
SET redis_cache.commit_timeout_ms = 200;  -- a superuser session: Redis is still paused
UPDATE items SET v = 'after' WHERE id = 1 RETURNING v;});
is($out, 'after', 'terminate: another session updates the row (locks released)');

# --- (a) cancel: the commit keeps waiting, then delivers -----------------------
# A cancel cannot undo a commit, and a role cancelling its own commits must
# not make their deliveries fail: the wait goes on, bounded by the cap.
($bg, $pid) = ($bg2, $pid2);
send_async($bg, q{UPDATE items SET v = 'cancelled' WHERE id = 2;});
ok(wait_in_commit($pid, 'UPDATE items%'),
	'cancel: the UPDATE waits for the paused Redis');
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
usleep(500_000);
ok(wait_in_commit($pid, 'UPDATE items%'),
	'cancel: the commit still waits for Redis (a cancel does not end it)');
$redis->resume;
is($bg->query('SELECT 41 + 1'), '42', 'cancel: the session goes on once Redis answers');
is($node->safe_psql('postgres', q{SELECT v FROM items WHERE id = 2}),
	'cancelled', 'cancel: the transaction committed');
eval { $bg->quit };
ok(defined wait_gone('item:1'),
	'terminate: the missed delivery is applied after SIGCONT (item:1 gone)');
ok(defined wait_gone('item:2'),
	'cancel: the commit delivered after SIGCONT (item:2 gone)');
ok($node->wait_for_log(qr/replayed \d+ invalidations that could not be delivered|apply invalidations that could not be delivered/, $log_offset),
	'the worker applied what the commits missed');

# --- (a) the cap bounds the commit by itself --------------------------------
set_system('redis_cache.commit_timeout_ms', 2000);
$log_offset = -s $node->logfile;
($bg, $pid) = long_timeout_session('regress_app');
$redis->cli('set', 'item:3', 'cached');
$redis->pause;
my $t0 = time();
$bg->query(q{UPDATE items SET v = 'capped' WHERE id = 3});
my $commit_secs = time() - $t0;
note(sprintf('cap: the UPDATE took %.0f ms (command_timeout_ms = 600 s, commit_timeout_ms = 2 s)',
		$commit_secs * 1000));
cmp_ok($commit_secs, '<', 15,
	'cap: redis_cache.commit_timeout_ms bounds the commit although command_timeout_ms is 600 s');
like($bg->{stderr}, qr/after 2000 ms/, 'cap: the WARNING names the cap');
$bg->quit;
is($node->safe_psql('postgres', q{SELECT v FROM items WHERE id = 3}),
	'capped', 'cap: the transaction committed');
($ret, $out, $err) = $node->psql('postgres',
	q{SET redis_cache.commit_timeout_ms = 600000},
	extra_params => [ '-U', 'regress_app' ]);
like($err, qr/permission denied to set parameter "redis_cache.commit_timeout_ms"/,
	'cap: an ordinary role cannot lift it');
$redis->resume;
ok(defined wait_gone('item:3'), 'cap: the missed delivery is applied after SIGCONT');
# the keys go during the flush; the namespace is clear once it is logged
ok($node->wait_for_log(qr/replayed \d+ invalidations that could not be delivered|apply invalidations that could not be delivered/, $log_offset),
	'cap: the worker applied the missed delivery');

# --- (a) a role's own short timeouts do not apply at commit -----------------
# Otherwise any role could make its deliveries fail on purpose (and fill
# the replay queue).
{
	my $handed = $node->safe_psql('postgres',
		q{SELECT invalidations_queued FROM cache_stats WHERE family IS NULL});
	my ($bg3, $pid3) = long_timeout_session('regress_app');
	$bg3->query_safe(q{SET redis_cache.command_timeout_ms = 1;
SET redis_cache.connect_timeout_ms = 1});
	$redis->cli('set', 'item:4', 'cached');
	$redis->pause;
	send_async($bg3, q{UPDATE items SET v = 'short' WHERE id = 4;});
	ok(wait_in_commit($pid3, 'UPDATE items%'),
		'short timeouts: the commit waits for the paused Redis (bounded by the cap, 2 s)');
	$redis->resume;
	is($bg3->query('SELECT 41 + 1'), '42', 'short timeouts: the session goes on');
	$bg3->quit;
	ok(defined wait_gone('item:4'), 'short timeouts: the key is gone');
	is($node->safe_psql('postgres',
			q{SELECT invalidations_queued FROM cache_stats WHERE family IS NULL}),
		$handed, 'short timeouts: the commit delivered itself (nothing handed to the worker)');
}

# --- (d) no stale hit while missed deliveries are pending -------------------
my $Q = q{SELECT cache_query_json('SELECT v FROM items WHERE id = 5')};
sub as_role
{
	my ($role, $sql) = @_;
	my ($r, $o, $e) = $node->psql('postgres', $sql,
		extra_params => [ '-U', $role ]);
	return $e =~ /ERROR:\s+(.*)/ ? "ERROR: $1" : $o;
}
sub hits
{
	return $node->safe_psql('postgres',
		'SELECT hits FROM cache_stats WHERE family IS NULL');
}

for my $variant ('worker stopped', 'worker racing')
{
	my $v = $variant eq 'worker stopped' ? 'stale1' : 'stale2';
	my $next = $variant eq 'worker stopped' ? 'fresh1' : 'fresh2';
	$node->safe_psql('postgres', qq{
UPDATE items SET v = '$v' WHERE id = 5;
GRANT SELECT ON items TO regress_other});
	as_role($_, $Q) for qw(regress_app regress_other);
	my $h = hits();
	is(as_role('regress_app', $Q), qq{[{"v": "$v"}]}, "$variant: result cached");
	is(as_role('regress_other', $Q), qq{[{"v": "$v"}]}, "$variant: result cached for the other role");
	cmp_ok(hits() - $h, '>=', 2, "$variant: both were hits");
	$redis->cli('set', 'item:5', 'cached');

	$log_offset = -s $node->logfile;
	$redis->pause;
	$node->safe_psql('postgres', qq{
UPDATE items SET v = '$next' WHERE id = 5;
REVOKE SELECT ON items FROM regress_other;});
	my $wpid;
	if ($variant eq 'worker stopped')
	{
		# the worker cannot finish: the window stays open for certain
		# not in pg_stat_activity (no database connection): its log line
		($wpid) = slurp_file($node->logfile) =~
		  /.*\[(\d+)\] LOG:  redis_cache invalidation worker started/s;
		die 'no worker pid in the log' unless $wpid;
		kill 'STOP', $wpid;
		push @worker_stopped, $wpid;
		$redis->resume;
	}
	else
	{
		$redis->resume;
	}
	# right after SIGCONT, and while the worker has not finished
	my @got;
	for (1 .. 3)
	{
		push @got, as_role('regress_app', $Q) . ' / '
		  . as_role('regress_other', $Q) . ' / '
		  . (as_role('regress_app', q{SELECT coalesce(cache_get('item:5'), 'miss')}));
	}
	my $expect = qq{[{"v": "$next"}] / ERROR: permission denied for table items / miss};
	if ($variant eq 'worker stopped')
	{
		is(join("\n", @got), join("\n", ($expect) x 3),
			"$variant: fresh rows, the revoke enforced and cache_get misses while the worker has not applied the missed delivery");
		ok(!$node->log_contains(qr/replayed \d+ invalidations that could not be delivered|apply invalidations that could not be delivered/, $log_offset),
			"$variant: the worker had indeed not applied it yet");
		kill 'CONT', $wpid;
		@worker_stopped = ();
	}
	else
	{
		is(join("\n", @got), join("\n", ($expect) x 3),
			"$variant: fresh rows, the revoke enforced and cache_get misses right after SIGCONT");
	}
	ok(defined wait_gone('item:5'), "$variant: the worker applied the missed delivery");
	ok($node->wait_for_log(qr/replayed \d+ invalidations that could not be delivered|apply invalidations that could not be delivered/, $log_offset),
		"$variant: the worker finished its flush");
	is(as_role('regress_app', $Q), qq{[{"v": "$next"}]}, "$variant: fresh after the worker");
	$h = hits();
	is(as_role('regress_app', $Q), qq{[{"v": "$next"}]}, "$variant: fresh again");
	cmp_ok(hits() - $h, '>=', 1, "$variant: and cached again (a hit)");
	like(as_role('regress_other', $Q), qr/permission denied/,
		"$variant: the revoked role is still refused");
}

# --- (b) fast stop while the worker waits on a paused Redis -----------------
set_system('redis_cache.command_timeout_ms', 600000);
set_system('redis_cache.connect_timeout_ms', 600000);
$redis->cli('set', 'item:6', 'cached');
# connected before the pause: a login would wait for the paused Redis too
($bg, $pid) = long_timeout_session('regress_app');
$redis->pause;
$bg->query(q{UPDATE items SET v = 'stop' WHERE id = 6});
$bg->quit;
# the worker was woken by the missed delivery and now waits for Redis
usleep(1_000_000);
$t0 = time();
my $stopped;
{
	local $ENV{PGCTLTIMEOUT} = 60;
	$stopped = $node->stop('fast', fail_ok => 1);
}
my $stop_secs = time() - $t0;
note(sprintf('fast stop took %.0f ms with the worker waiting on a paused Redis (600 s timeouts)',
		$stop_secs * 1000));
ok($stopped, 'pg_ctl stop -m fast completes while the worker waits on a paused Redis');
cmp_ok($stop_secs, '<', 30, 'fast stop within 30 s');
$redis->resume;
unless ($stopped)
{
	$node->stop('fast');    # the wait ends with SIGCONT
}
$node->start;
ok(defined wait_gone('item:6'),
	'fast stop: the next worker applies the delivery the stopped one could not');

# --- (c) a server whose SCAN cursor never returns to 0 ----------------------
# A fake server answering the handshake (INFO server), PING, DBSIZE with
# $dbsize, SCAN with cursor 7 and one key (after $delay s), UNLINK; every
# command name is appended to $log.
sub fake_server
{
	my ($dbsize, $delay, $log) = @_;
	my $listen = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 16,
		ReuseAddr => 1, Proto => 'tcp') or die "listen: $!";
	my $port = $listen->sockport;
	my $fpid = fork();
	die "fork: $!" unless defined $fpid;
	if ($fpid == 0)
	{
		open(my $lf, '>>', $log) or die;
		$lf->autoflush(1);
		my $sel = IO::Select->new($listen);
		my %buf;
		while (1)
		{
			for my $fh ($sel->can_read(1))
			{
				if ($fh == $listen)
				{
					my $c = $listen->accept;
					$sel->add($c) if $c;
					next;
				}
				my $n = sysread($fh, my $chunk, 65536);
				if (!$n)
				{
					$sel->remove($fh);
					delete $buf{$fh};
					close $fh;
					next;
				}
				$buf{$fh} .= $chunk;
				# complete RESP arrays of bulk strings
				while ($buf{$fh} =~ /^\*(\d+)\r\n/)
				{
					my ($count, $pos, @args) = ($1, length($&));
					my $ok = 1;
					for (1 .. $count)
					{
						if (substr($buf{$fh}, $pos) =~ /^\$(\d+)\r\n/)
						{
							my $len = $1;
							my $start = $pos + length($&);
							if (length($buf{$fh}) < $start + $len + 2) { $ok = 0; last; }
							push @args, substr($buf{$fh}, $start, $len);
							$pos = $start + $len + 2;
						}
						else { $ok = 0; last; }
					}
					last unless $ok;
					substr($buf{$fh}, 0, $pos) = '';
					my $cmd = uc($args[0] // '');
					print $lf "$cmd\n";
					my $reply;
					if ($cmd eq 'INFO')
					{
						my $info = "# Server\r\nredis_version:7.0.0\r\nrun_id:fake0000000000000000000000000000000000\r\n";
						$reply = '$' . length($info) . "\r\n$info\r\n";
					}
					elsif ($cmd eq 'PING') { $reply = "+PONG\r\n"; }
					elsif ($cmd eq 'DBSIZE') { $reply = ":$dbsize\r\n"; }
					elsif ($cmd eq 'SCAN')
					{
						usleep($delay * 1e6) if $delay;
						$reply = "*2\r\n\$1\r\n7\r\n*1\r\n\$7\r\nfakekey\r\n";
					}
					elsif ($cmd eq 'UNLINK') { $reply = ":1\r\n"; }
					elsif ($cmd eq 'SMEMBERS') { $reply = "*0\r\n"; }    # no families
					elsif ($cmd eq 'AUTH' || $cmd eq 'SELECT') { $reply = "+OK\r\n"; }
					else { $reply = "-ERR unknown command '$cmd'\r\n"; }
					syswrite($fh, $reply);
				}
			}
		}
		exit 0;
	}
	close $listen;
	return ($fpid, $port);
}

sub count_in
{
	my ($file, $word) = @_;
	open(my $fh, '<', $file) or return 0;
	my $n = grep { $_ eq "$word\n" } <$fh>;
	close $fh;
	return $n;
}

my $fake_log = "$PostgreSQL::Test::Utils::tmp_check/fake_scan.log";
my ($fake_pid, $fake_port) = fake_server(3, 0, $fake_log);
END { kill 'KILL', $fake_pid if $fake_pid; }

# an unclean stop: the next worker flushes every namespace it knows
$node->safe_psql('postgres', q{
ALTER SYSTEM RESET redis_cache.command_timeout_ms;
ALTER SYSTEM RESET redis_cache.connect_timeout_ms;});
$node->stop('immediate');
$node->append_conf('postgresql.conf', qq{
redis_cache.port = $fake_port
redis_cache.command_timeout_ms = 1000
redis_cache.connect_timeout_ms = 1000
});
$log_offset = -s $node->logfile;
$node->start;
ok( $node->wait_for_log(qr/WARNING:.*SCAN MATCH "\*" did not finish within 116 rounds \(DBSIZE 3\)/,
		$log_offset),
	'endless cursor: the flush stops at its bound with a WARNING');
my $scans = count_in($fake_log, 'SCAN');
note "endless cursor: $scans SCAN commands by the first WARNING (bound 116 per attempt)";
cmp_ok($scans, '<=', 2 * 116, 'endless cursor: the loop is bounded');
ok($node->safe_psql('postgres', q{SELECT 1}) eq '1',
	'endless cursor: the server goes on');
$t0 = time();
{
	local $ENV{PGCTLTIMEOUT} = 60;
	$stopped = $node->stop('fast', fail_ok => 1);
}
note(sprintf('endless cursor: fast stop took %.0f ms', (time() - $t0) * 1000));
ok($stopped, 'endless cursor: fast stop completes');
kill 'KILL', $fake_pid;
waitpid($fake_pid, 0);

# A server claiming 10^12 keys (the bound is then huge) and answering SCAN
# slowly: SIGTERM must stop the worker in the middle of the loop.
unlink $fake_log;
($fake_pid, $fake_port) = fake_server(1_000_000_000_000, 0.05, $fake_log);
$node->append_conf('postgresql.conf', "redis_cache.port = $fake_port\n");
$node->start;
# still unclean: the previous worker never finished its flush
my $deadline = time() + $timeout;
usleep(100_000) while count_in($fake_log, 'SCAN') < 20 && time() < $deadline;
cmp_ok(count_in($fake_log, 'SCAN'), '>=', 20, 'slow endless cursor: the worker is in its SCAN loop');
$t0 = time();
{
	local $ENV{PGCTLTIMEOUT} = 60;
	$stopped = $node->stop('fast', fail_ok => 1);
}
my $slow_stop = time() - $t0;
note(sprintf('slow endless cursor: fast stop took %.0f ms', $slow_stop * 1000));
ok($stopped, 'slow endless cursor: SIGTERM stops the worker in the middle of the loop');
cmp_ok($slow_stop, '<', 30, 'slow endless cursor: within 30 s');
kill 'KILL', $fake_pid;
waitpid($fake_pid, 0);
$fake_pid = undef;

done_testing();
