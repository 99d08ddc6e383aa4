
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# A hostile or broken Redis (issue 12, points 6 and 8): every reply is
# bounded before the backend allocates for it, every wait ends on the
# command timeout, statement_timeout, pg_cancel_backend() and
# pg_terminate_backend(), text from the server never reaches a text or
# jsonb result invalid, a malformed INFO never raises an ERROR; and a real
# Redis at maxmemory (noeviction) gives one rate-limited "out of memory"
# WARNING, never the misleading "version older than" one.
#
# The hostile server is a small fake written here, as the issue allows
# for hostile peers: it answers the handshake (AUTH, SELECT, INFO), the
# cache version check (EVAL with 6 keys, 12 with the legacy names) and
# PING plausibly,
# and answers GET and MGET with the reply named in its "mode" file, read
# at every command.  Peak memory is the backend's own VmHWM, read from
# /proc/self/status in the same session right after the call.

use strict;
use warnings;

use IO::Socket::INET;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(time usleep);

my $timeout = $PostgreSQL::Test::Utils::timeout_default;

# ---- the fake Redis ----------------------------------------------------------

my $fake_dir = "$PostgreSQL::Test::Utils::tmp_check/fake_redis";
mkdir $fake_dir;
my $fake_port = PostgreSQL::Test::Cluster::get_free_port();
my $fake_pid;

sub set_mode
{
	my ($mode) = @_;
	open(my $fh, '>', "$fake_dir/mode.tmp") or die "mode: $!";
	print $fh $mode;
	close $fh;
	rename("$fake_dir/mode.tmp", "$fake_dir/mode") or die "mode: $!";
	return;
}

sub fake_mode
{
	open(my $fh, '<', "$fake_dir/mode") or return 'normal';
	my $mode = <$fh> // 'normal';
	close $fh;
	return $mode;
}

# Write everything, or return false when the client went away.  A fake
# never streams for more than 60 s.
my $stream_until;

sub put
{
	my ($sock, $data) = @_;
	my $off = 0;
	while ($off < length($data))
	{
		return 0 if time() > $stream_until;
		my $n = syswrite($sock, $data, length($data) - $off, $off);
		return 0 unless $n;
		$off += $n;
	}
	return 1;
}

# One command (an array of bulk strings, as hiredis formats them).
sub read_command
{
	my ($sock, $bufref) = @_;
	for (;;)
	{
		my $cmd = parse_command($bufref);
		return $cmd if $cmd;
		my $n = sysread($sock, $$bufref, 65536, length($$bufref));
		return undef unless $n;
	}
}

sub parse_command
{
	my ($bufref) = @_;
	my $buf = $$bufref;
	return undef unless $buf =~ /\A\*(\d+)\r\n/;
	my $argc = $1;
	my $pos = length("*$argc\r\n");
	my @args;
	for (1 .. $argc)
	{
		my $rest = substr($buf, $pos);
		return undef unless $rest =~ /\A\$(\d+)\r\n/;
		my $len = $1;
		my $start = $pos + length("\$$len\r\n");
		return undef if length($buf) < $start + $len + 2;
		push @args, substr($buf, $start, $len);
		$pos = $start + $len + 2;
	}
	substr($$bufref, 0, $pos) = '';
	return \@args;
}

sub info_reply
{
	my ($mode) = @_;
	my %f = (
		redis_version => '7.0.15',
		run_id => 'f' x 40,
		used_memory => '1000000',
		maxmemory => '0',
		maxmemory_policy => 'noeviction',
		connected_clients => '1',
		keyspace_hits => '5',
		keyspace_misses => '6',
		evicted_keys => '0',
		uptime_in_seconds => '100');
	if ($mode eq 'info_badutf8')
	{
		$f{redis_version} = "7.0\xff\xfe";
		$f{maxmemory_policy} = "no\xc3\x28eviction";
	}
	elsif ($mode eq 'info_nul')
	{
		$f{redis_version} = "7.0\0evil";
	}
	elsif ($mode eq 'info_badnum')
	{
		$f{used_memory} = 'abc';
		$f{maxmemory} = '99999999999999999999999999';
		$f{connected_clients} = '1-2';
		$f{keyspace_hits} = '--';
		$f{keyspace_misses} = '1.2.3';
		$f{evicted_keys} = '';
		$f{uptime_in_seconds} = '9' x 200000;
	}
	my $text = "# Server\r\n"
	  . join('', map { "$_:$f{$_}\r\n" } sort keys %f);
	return '$' . length($text) . "\r\n$text\r\n";
}

# The reply to GET or MGET in the given mode; may stream for long.
sub hostile_reply
{
	my ($sock, $mode, $cmd) = @_;
	my $ints = ":1\r\n" x 16384;
	if ($mode eq 'array_huge')
	{
		put($sock, "*2000000000\r\n") or return 0;
		while (put($sock, $ints)) { }
		return 0;
	}
	if ($mode eq 'bulk_huge')
	{
		put($sock, "\$2000000000\r\n") or return 0;
		my $x = 'x' x 65536;
		while (put($sock, $x)) { }
		return 0;
	}
	if ($mode eq 'many_ints')
	{
		# 64 MB of ":1\r\n": 16777216 elements
		put($sock, "*16777216\r\n") or return 0;
		for (1 .. 1024) { put($sock, $ints) or return 0; }
		return 1;
	}
	if ($mode eq 'deep')
	{
		return put($sock, ("*1\r\n" x 100) . ":1\r\n");
	}
	if ($mode eq 'long_line')
	{
		put($sock, '+') or return 0;
		my $a = 'a' x 65536;
		while (put($sock, $a)) { }
		return 0;
	}
	if ($mode eq 'bad_header')
	{
		return put($sock, "\$12abc\r\nhello\r\n");
	}
	if ($mode eq 'extra')
	{
		return put($sock, "\$-1\r\n+OK\r\n");
	}
	if ($mode eq 'drip')
	{
		# valid but endless: one byte every 100 ms
		my $reply = "*1000\r\n" . (":1\r\n" x 1000);
		for my $i (0 .. length($reply) - 1)
		{
			put($sock, substr($reply, $i, 1)) or return 0;
			usleep(100_000);
		}
		return 1;
	}
	if ($mode eq 'trickle')
	{
		# a large string (max_value_bytes raised) arriving steadily
		put($sock, "\$400000000\r\n") or return 0;
		my $x = 'x' x 16384;
		for (1 .. 24414)
		{
			put($sock, $x) or return 0;
			usleep(2000);
		}
		return put($sock, ('x' x (400000000 - 24414 * 16384)) . "\r\n");
	}
	# normal: misses
	if (uc($cmd->[0]) eq 'MGET')
	{
		return put($sock, '*' . (@$cmd - 1) . "\r\n" . ("\$-1\r\n" x (@$cmd - 1)));
	}
	return put($sock, "\$-1\r\n");
}

sub serve_client
{
	my ($sock) = @_;
	my $buf = '';
	binmode($sock);
	while (my $cmd = read_command($sock, \$buf))
	{
		my $mode = fake_mode();
		my $name = uc($cmd->[0]);
		my $ok = 1;
		$stream_until = time() + 60;
		if ($name eq 'INFO')
		{
			$ok = put($sock, info_reply($mode));
		}
		elsif ($name eq 'PING')
		{
			$ok = put($sock,
				  $mode eq 'ping_badutf8' ? "+P\xc3\x28NG\r\n"
				: $mode eq 'ping_nul' ? "\$5\r\nPO\0NG\r\n"
				: "+PONG\r\n");
		}
		elsif ($name eq 'EVAL' && ($cmd->[2] // '') =~ /^(?:6|12)$/)
		{
			# the cache version check: the namespace is current
			$ok = put($sock, "*2\r\n\$2\r\nOK\r\n\$0\r\n\r\n");
		}
		elsif ($name eq 'EVALSHA')
		{
			$ok = put($sock, "-NOSCRIPT No matching script.\r\n");
		}
		elsif ($name eq 'GET' || $name eq 'MGET')
		{
			$ok = hostile_reply($sock, $mode, $cmd);
		}
		else
		{
			$ok = put($sock, "+OK\r\n");
		}
		last unless $ok;
	}
	close($sock);
	return;
}

sub start_fake
{
	my $listener = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => $fake_port,
		Proto => 'tcp',
		Listen => 64,
		ReuseAddr => 1) or die "fake redis: $!";
	$fake_pid = fork();
	die "fork: $!" unless defined $fake_pid;
	if ($fake_pid == 0)
	{
		setpgrp(0, 0);
		$SIG{PIPE} = 'IGNORE';
		$SIG{CHLD} = 'IGNORE';
		for (;;)
		{
			my $client = $listener->accept or next;
			my $pid = fork();
			if (defined $pid && $pid == 0)
			{
				close($listener);
				serve_client($client);
				POSIX::_exit(0);
			}
			close($client);
		}
	}
	close($listener);
	return;
}

END
{
	# the fake and all its connection handlers form one process group
	kill('KILL', -$fake_pid) if $fake_pid;
}

set_mode('normal');
start_fake();

# ---- PostgreSQL pointed at the fake ------------------------------------------

my $node = PostgreSQL::Test::Cluster->new('hostile');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->append_conf('postgresql.conf',
	    "shared_preload_libraries = 'redis_cache'\n"
	  . "max_connections = 20\n"
	  . "redis_cache.host = '127.0.0.1'\n"
	  . "redis_cache.port = $fake_port\n"
	  . "redis_cache.command_timeout_ms = 2000\n"
	  . "redis_cache.circuit_failure_threshold = 1000\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION redis_cache');

my $vmhwm_sql =
  "SELECT 'vmhwm=' || (regexp_match(pg_read_file('/proc/self/status'), 'VmHWM:\\s+(\\d+)'))[1]";

# Run sql in a fresh session, then read its peak memory; returns the
# output lines as a hash (name=value), stderr, the peak in kB and seconds.
sub hostile_call
{
	my ($mode, $sql) = @_;
	set_mode($mode);
	my ($stdout, $stderr) = ('', '');
	my $t0 = time();
	$node->psql('postgres', "$sql;\n$vmhwm_sql;",
		stdout => \$stdout, stderr => \$stderr, timeout => $timeout);
	my $secs = time() - $t0;
	my %h;
	for (split /\n/, $stdout)
	{
		$h{$1} = $2 if /^(\w+)=(.*)$/;
	}
	set_mode('normal');
	return (\%h, $stderr, $h{vmhwm} // 0, $secs);
}

my ($base) = hostile_call('normal', "SELECT 'r=' || coalesce(cache_get('k'), 'miss')");
is($base->{r}, 'miss', 'the fake answers the handshake and the version check');
my $base_kb = $base->{vmhwm};
diag("baseline backend VmHWM: $base_kb kB");

# Peak memory allowed above a plain session: a max_value_bytes string is
# held about three times (reader buffer, hiredis, our copy); 8 MB default.
my $bound_kb = $base_kb + 64 * 1024;

my @cases = (
	[ 'array_huge', "*2000000000 announced, then integers streamed",
		"SELECT 'r=' || coalesce(cache_get('k'), 'miss')",
		qr/announces an array of 2000000000 elements/ ],
	[ 'bulk_huge', "\$2000000000 announced, then bytes streamed",
		"SELECT 'r=' || coalesce(cache_get('k'), 'miss')",
		qr/announces a string of 2000000000 bytes/ ],
	[ 'many_ints', "64 MB array of :1 (16M elements) to MGET",
		"SELECT 'r=' || coalesce(array_to_string(cache_mget(ARRAY['a','b','c','d','e','f','g','h','i','j']), ',', 'miss'), 'null')",
		qr/announces an array of 16777216 elements/ ],
	[ 'deep', "arrays nested 100 deep",
		"SELECT 'r=' || coalesce(cache_get('k'), 'miss')",
		qr/nests arrays deeper than/ ],
	[ 'long_line', "a status line without end",
		"SELECT 'r=' || coalesce(cache_get('k'), 'miss')",
		qr/line longer than/ ],
	[ 'bad_header', "a malformed length",
		"SELECT 'r=' || coalesce(cache_get('k'), 'miss')",
		qr/malformed/ ],
	[ 'extra', "a stray reply after the expected one",
		"SELECT 'r=' || coalesce(cache_get('k'), 'miss')",
		qr/more replies than commands/ ],
	[ 'drip', "a valid reply dripped one byte per 100 ms",
		"SELECT 'r=' || coalesce(cache_get('k'), 'miss')",
		qr/timed out/ ],);

for my $c (@cases)
{
	my ($mode, $what, $sql, $msg) = @$c;
	my ($h, $err, $kb, $secs) = hostile_call($mode, $sql);
	diag(sprintf("%-10s %s: VmHWM %d kB (+%d kB), %.1f s",
			$mode, $what, $kb, $kb - $base_kb, $secs));
	ok(defined $h->{r} && $h->{r} =~ /^(miss|null|miss(,miss)*)$/,
		"$mode: the call returns degraded (a miss)")
	  or diag("stdout r=" . ($h->{r} // 'undef') . " stderr: $err");
	like($err, $msg, "$mode: a WARNING names the fault");
	# generous: the bound is the feature (80 s and more before)
	cmp_ok($secs, '<', 30, "$mode: the call returns promptly");
	cmp_ok($kb, '<', $bound_kb, "$mode: peak memory stays bounded");
}

# a protocol fault counts as one
my $proto = $node->safe_psql('postgres',
	'SELECT errors_protocol > 0 FROM cache_stats() WHERE family IS NULL');
is($proto, 't', 'protocol faults are counted in cache_stats');

# ---- waits end on statement_timeout, cancel and terminate ----------------------

set_mode('drip');
my ($out, $err) = ('', '');
my $t0 = time();
$node->psql('postgres',
	"SET redis_cache.command_timeout_ms = 600000; SET statement_timeout = '1s'; SELECT cache_get('k')",
	stdout => \$out, stderr => \$err, timeout => $timeout);
my $secs = time() - $t0;
like($err, qr/canceling statement due to statement timeout/,
	'drip: statement_timeout ends the call');
cmp_ok($secs, '<', 20, 'drip: statement_timeout honoured promptly');

my $mon = $node->background_psql('postgres');

# Start a call that drips (or trickles) in a background session; returns
# the session and its backend pid once it waits in the extension.
sub start_blocked_call
{
	my ($sql) = @_;
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	my $pid = $bg->query_safe('SELECT pg_backend_pid()');
	$bg->query_until(qr/calling/, "\\echo calling\n$sql;\n");
	my $active = 'f';
	my $deadline = time() + $timeout;
	while (time() < $deadline)
	{
		$active = $mon->query_safe(
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $pid AND state = 'active'");
		last if $active eq 't';
		usleep(50_000);
	}
	usleep(500_000);    # well inside the reply
	return ($bg, $pid);
}

my ($bg, $pid) = start_blocked_call(
	"SET redis_cache.command_timeout_ms = 600000; SELECT cache_get('k')");
$t0 = time();
$mon->query_safe("SELECT pg_cancel_backend($pid)");
$bg->query_until(qr/returned/, "\\echo returned\n");
$secs = time() - $t0;
like($bg->{stderr}, qr/canceling statement due to user request/,
	'drip: pg_cancel_backend ends the call');
cmp_ok($secs, '<', 15, 'drip: cancel honoured promptly');
$bg->quit;

($bg, $pid) = start_blocked_call(
	"SET redis_cache.command_timeout_ms = 600000; SELECT cache_get('k')");
$t0 = time();
$mon->query_safe("SELECT pg_terminate_backend($pid)");
my $gone = 'f';
my $deadline = time() + $timeout;
while (time() < $deadline)
{
	$gone = $mon->query_safe(
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid");
	last if $gone eq 't';
	usleep(50_000);
}
$secs = time() - $t0;
is($gone, 't', 'drip: pg_terminate_backend ends the backend');
cmp_ok($secs, '<', 15, 'drip: terminate honoured promptly');
eval { $bg->quit };

# a large reply arriving steadily (never a wait of its own): cancel is
# checked between chunks
set_mode('trickle');
($bg, $pid) = start_blocked_call(
	"SET redis_cache.max_value_bytes = '512MB'; SET redis_cache.command_timeout_ms = 600000; SELECT cache_get('k')");
usleep(1_000_000);
$t0 = time();
$mon->query_safe("SELECT pg_cancel_backend($pid)");
$bg->query_until(qr/returned/, "\\echo returned\n");
$secs = time() - $t0;
like($bg->{stderr}, qr/canceling statement due to user request/,
	'steady large reply: pg_cancel_backend ends the call');
cmp_ok($secs, '<', 15, 'steady large reply: cancel honoured promptly');
$bg->quit;
set_mode('normal');

# ---- text from the server: PING and INFO ----------------------------------------

for my $mode ('ping_badutf8', 'ping_nul')
{
	my ($h, $err) = hostile_call($mode,
		"SELECT 'r=' || coalesce(cache_ping(), 'null'); SELECT 'h=' || (cache_health()->>'reachable')");
	is($h->{r}, 'null', "$mode: cache_ping returns NULL, not invalid text");
	like($err, qr/reply to PING from Redis at .* is not valid UTF8 text/,
		"$mode: a WARNING says why");
	is($h->{h}, 'true', "$mode: cache_health still works");
}

for my $mode ('info_badutf8', 'info_nul', 'info_badnum')
{
	my ($h, $err) = hostile_call($mode,
		"SELECT 'j=' || encode(convert_to(cache_health()::text, 'UTF8'), 'hex')");
	ok(defined $h->{j}, "$mode: cache_health returns (no ERROR)")
	  or diag($err);
	my $json = pack('H*', $h->{j} // '');
	ok(utf8::decode($json) && $json !~ /\0|\\u0000/,
		"$mode: the jsonb result is valid text without NUL");
	unlike($err, qr/ERROR/, "$mode: no ERROR");
	like($err, qr/INFO reply from Redis at .* has malformed fields/,
		"$mode: a WARNING says fields were dropped");
	if ($mode eq 'info_badnum')
	{
		like($json, qr/"used_memory": null/, 'info_badnum: used_memory:abc is null');
		like($json, qr/"maxmemory": null/, 'info_badnum: an overflowing number is null');
		like($json, qr/"uptime_in_seconds": null/, 'info_badnum: a 200000-digit number is null');
		like($json, qr/"redis_version": "7.0.15"/, 'info_badnum: valid fields are kept');
	}
	else
	{
		like($json, qr/"redis_version": null/, "$mode: the invalid field is null");
		like($json, qr/"used_memory": 1000000/, "$mode: valid fields are kept");
	}
}

# after all this, a normal reply is served normally on a fresh connection
is($node->safe_psql('postgres', "SELECT coalesce(cache_get('k'), 'miss'), cache_ping()"),
	'miss|PONG', 'the fake answers normally again');

unlike(slurp_file($node->logfile), qr/terminated by signal|PANIC|TRAP:/,
	'no backend crashed');

# ---- a real Redis at maxmemory with noeviction ------------------------------------

my $redis = RedisCache::Server->new('oom', args => [ '--maxmemory-policy', 'noeviction' ]);
$redis->start;
my $real = $redis->new_pg_node('oom',
	init => { extra => [ '--encoding=UTF8', '--locale=C' ] });
$real->start;
$real->safe_psql('postgres', 'CREATE EXTENSION redis_cache');
$real->safe_psql('postgres', 'CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 10) g');

# large legitimate replies still pass the bounds: MGET of 3000 keys, a
# value of max_value_bytes
$real->safe_psql('postgres',
	"SELECT count(*) FROM generate_series(1, 3000) g WHERE cache_set('m' || g, 'v' || g)");
is( $real->safe_psql('postgres',
		"SELECT count(*) FROM unnest(cache_mget(ARRAY(SELECT 'm' || g FROM generate_series(1, 3000) g))) v WHERE v IS NOT NULL"),
	'3000', 'MGET of 3000 keys: every value read');
$real->safe_psql('postgres', "SELECT cache_set('big', repeat('x', 8 * 1024 * 1024))");
my ($big_len, $big_kb) = split /\n/,
  $real->safe_psql('postgres', "SELECT length(cache_get('big')); $vmhwm_sql");
is($big_len, '8388608', 'a value of max_value_bytes is read back');
$big_kb =~ s/^vmhwm=//;
diag("legitimate 8 MB value read: backend VmHWM $big_kb kB");
$redis->cli('flushall');

my $oom_bg = $real->background_psql('postgres', on_error_stop => 0);
$oom_bg->query_safe("SELECT cache_set('before', 'v')");    # version checked
$redis->cli('config', 'set', 'maxmemory', '1');
my $log_offset = -s $real->logfile;
$oom_bg->{stderr} = '';
$t0 = time();
$oom_bg->query(
	"SELECT count(*) FROM generate_series(1, 50) g WHERE cache_set('k' || g, 'v')");
$oom_bg->query(
	"SELECT count(*) FROM (SELECT cache_query_json('SELECT * FROM t') FROM generate_series(1, 20)) s");
# one warning per 10 s interval: more only if this machine is very slow
my $intervals = 1 + int((time() - $t0) / 10);
my $oom_err = $oom_bg->{stderr};
my @warnings = ($oom_err =~ /WARNING:  redis_cache: Redis is out of memory/g);
ok(@warnings >= 1 && @warnings <= $intervals,
	'OOM: 50 cache_set and 20 cache_query_json give one WARNING (rate limited)')
  or diag("warnings: " . scalar(@warnings) . "\n$oom_err");
like($oom_err, qr/HINT:  Raise maxmemory in Redis, or set maxmemory-policy/,
	'OOM: the hint names maxmemory and the eviction policy');
unlike($oom_err, qr/older than/, 'OOM: no "version older than" WARNING');
$oom_bg->quit;

# a new session on an empty Redis: the version check must write (INIT)
# and is refused
$redis->cli('config', 'set', 'maxmemory', '0');
$redis->cli('flushall');
$redis->cli('config', 'set', 'maxmemory', '1');
my ($o2, $e2) = ('', '');
$t0 = time();
$real->psql('postgres',
	"SELECT count(*) FROM generate_series(1, 30) g WHERE cache_set('n' || g, 'v') IS NULL",
	stdout => \$o2, stderr => \$e2, timeout => $timeout);
$intervals = 1 + int((time() - $t0) / 10);
@warnings = ($e2 =~ /WARNING:  redis_cache: Redis is out of memory/g);
ok(@warnings >= 1 && @warnings <= $intervals,
	'OOM at the version check: one WARNING for 30 calls')
  or diag("warnings: " . scalar(@warnings) . "\n$e2");
like($e2, qr/refused the cache version check/, 'OOM at the version check: it says what was refused');
unlike($e2, qr/older than/, 'OOM at the version check: no "version older than" WARNING');
my $log = slurp_file($real->logfile, $log_offset);
my @logged = ($log =~ /WARNING:  redis_cache: Redis is out of memory/g);
cmp_ok(scalar(@logged), '<=', 3, 'OOM: the server log has at most one warning per session and interval');
unlike($log, qr/older than/, 'OOM: the server log has no "older than"');

# memory freed: the cache works again at once
$redis->cli('config', 'set', 'maxmemory', '0');
is($real->safe_psql('postgres', "SELECT cache_set('after', 'v'), cache_get('after')"),
	't|v', 'OOM over: the cache works again');

unlike(slurp_file($real->logfile), qr/terminated by signal|PANIC|TRAP:/,
	'no backend crashed (real Redis)');

done_testing();
