
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# Redis content and Redis peers are untrusted: foreign types, invalid
# text, oversized replies and a server speaking garbage must give a
# WARNING and a miss, never a crash.  Also redis_cache.database, AUTH
# (legacy and ACL user, password_file) and the password's invisibility to
# non-superusers and in the server log.

use strict;
use warnings;

use IO::Socket::INET;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;

my $timeout = $PostgreSQL::Test::Utils::timeout_default;

my $redis = RedisCache::Server->new('untrusted');
$redis->start;
my $port = $redis->port;
# A UTF8 database, so that invalid bytes are invalid text.  No statement
# logging: the test types passwords in SQL itself, and what must never
# reach the server log is a password logged by the extension.
my $node = $redis->new_pg_node('untrusted',
	init => { extra => [ '--encoding=UTF8', '--locale=C' ] },
	conf => "log_statement = none\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION redis_cache');

my $P = "SET redis_cache.key_prefix = 'untrusted:';";

# A psql script; returns stdout and stderr, never dies on SQL errors.
sub run_script
{
	my ($sql, %params) = @_;
	my ($stdout, $stderr);
	$node->psql('postgres', $sql,
		stdout => \$stdout, stderr => \$stderr,
		on_error_stop => 0, timeout => $timeout, %params);
	return ($stdout, $stderr);
}

# Store a value built by a Lua expression (binary bytes, large values).
sub redis_set_lua
{
	my ($key, $lua_expr) = @_;
	my $r = $redis->cli('eval', "return redis.call('SET', KEYS[1], $lua_expr)", 1, $key);
	die "could not set $key: " . ($r // 'redis-cli failed') unless ($r // '') eq 'OK';
	return;
}

# --- the application stored a hash where we expect a string ---------------
$redis->cli('hset', 'untrusted:tenant:id:1', 'name', 'acme');
my ($out, $err) = run_script("$P SELECT cache_get('tenant:id:1') IS NULL AS miss");
like($err, qr/WARNING:  redis_cache: Redis rejected reading key "tenant:id:1"/,
	'WRONGTYPE: WARNING names the key');
like($err, qr/WRONGTYPE/, "WRONGTYPE: detail carries Redis' message");
is($out, 't', 'WRONGTYPE: a miss');
($out, $err) = run_script(
	"SET redis_cache.on_error = 'error'; $P SELECT cache_get('tenant:id:1')");
like($err, qr/ERROR:  redis_cache: Redis rejected reading key/,
	'WRONGTYPE under on_error=error: ERROR');
($out, $err) = run_script("$P SELECT cache_mget(ARRAY['tenant:id:1'])");
is("$out$err", '{NULL}', 'WRONGTYPE in MGET: the element is a miss, no message');

# --- bytes that are not valid UTF-8, and NUL bytes --------------------------
redis_set_lua('untrusted:bad:utf8', 'string.char(255, 254, 253)');
redis_set_lua('untrusted:bad:nul', "'a' .. string.char(0) .. 'b'");
is($redis->cli('strlen', 'untrusted:bad:utf8') . '|' . $redis->cli('strlen', 'untrusted:bad:nul'),
	'3|3', 'the invalid values are in Redis');
($out, $err) = run_script(
	"$P SELECT cache_get('bad:utf8') IS NULL, cache_get('bad:nul') IS NULL");
like($err, qr/value of key "bad:utf8" is not valid UTF8 text/,
	'invalid UTF-8 value: WARNING');
like($err, qr/value of key "bad:nul" is not valid UTF8 text/,
	'NUL byte in value: WARNING');
is($out, 't|t', 'invalid values are misses');
($out, $err) = run_script("$P SELECT cache_mget(ARRAY['bad:utf8', 'bad:nul'])");
is($out, '{NULL,NULL}', 'invalid values in MGET are misses');

# --- a value larger than max_value_bytes written by somebody else ----------
redis_set_lua('untrusted:big', "string.rep('x', 300000)");
($out, $err) = run_script(qq{
SET redis_cache.max_value_bytes = '100kB';
$P
SELECT cache_get('big') IS NULL AS miss;
SELECT cache_set('small', 'ok');
SELECT cache_get('small');
});
like($err, qr/exceeds/, 'oversized reply: WARNING');
is($out, "t\nt\nok", 'oversized reply: a miss, and the next calls reconnect and work');
($out, $err) = run_script("$P SELECT length(cache_get('big'))");
is("$out$err", '300000',
	'values up to max_value_bytes (default 8 MB) are read, without a message');

# --- a peer that is not Redis: garbage, a lying bulk length, a short reply
# (then silence), and status replies where strings are expected ----------
# The listening socket exists before the fork: no wait for the peer to start.
my @answers = (
	"garbage\r\n",
	"\$99999999999\r\n" . ('x' x 100000),
	"*3\r\n:1\r\n",
	"+OK\r\n" x 5);
# Answer each connection with the next answer, in a process of its own.
sub fake_peer
{
	my ($listener) = @_;
	$SIG{CHLD} = 'IGNORE';
	$SIG{PIPE} = 'IGNORE';
	alarm($timeout);
	my $n = 0;
	while (my $c = $listener->accept)
	{
		my $i = $n++ % @answers;
		my $h = fork();
		if (defined $h && $h == 0)
		{
			eval {
				alarm($timeout);
				my $buf;
				sysread($c, $buf, 65536);
				my $data = $answers[$i];
				while (length $data)
				{
					my $w = syswrite($c, $data);
					last unless $w;
					substr($data, 0, $w) = '';
				}
				# the short reply: keep the connection open, saying nothing more
				sysread($c, $buf, 65536) if $i == 2;
				close $c;
			};
			POSIX::_exit(0);
		}
		close $c;
	}
	return;
}

my $listener = IO::Socket::INET->new(
	LocalAddr => '127.0.0.1',
	LocalPort => 0,
	Proto => 'tcp',
	Listen => 16,
	ReuseAddr => 1) or die "could not listen: $!";
my $fake_port = $listener->sockport;
my $fake_pid = fork();
die "fork failed: $!" unless defined $fake_pid;
if ($fake_pid == 0)
{
	# never return into the test script, not even by die (its END blocks
	# would stop the servers), and do not hold prove's pipes open
	open(STDOUT, '>', '/dev/null');
	open(STDERR, '>', '/dev/null');
	eval { fake_peer($listener); };
	POSIX::_exit(0);
}
close $listener;
END { kill 'KILL', $fake_pid if $fake_pid; }

# Each session's login check goes to the real Redis; the SET then sends
# its cache_get to the fake peer: one connection each, in answer order.
my ($alive, $fake_err) = (0, '');
for my $i (1 .. 4)
{
	($out, $err) = run_script(qq{
SET redis_cache.port = $fake_port;
SET redis_cache.command_timeout_ms = 300;
SELECT coalesce(cache_get('x'), 'miss'), 'alive';
});
	$alive++ if $out eq 'miss|alive';
	$fake_err .= $err;
	note "fake peer, answer $i: stdout '$out', stderr '$err'";
}
is($alive, 4,
	'garbage, lying length, short and foreign replies: miss, query succeeds');
like($fake_err, qr/invalid reply from Redis|protocol error/,
	'protocol garbage: WARNING names the problem');
kill 'KILL', $fake_pid;
waitpid($fake_pid, 0);
$fake_pid = undef;

# --- redis_cache.database: SELECT on connect, effective at the next command
($out, $err) = run_script(qq{
$P
SELECT cache_set('db0', 'zero');
SET redis_cache.database = 3;
SELECT cache_set('db3', 'three');
SELECT coalesce(cache_get('db0'), 'miss');
});
is($out, "t\nt\nmiss",
	'changing redis_cache.database switches databases at the next command');
is($redis->cli('-n', 3, 'get', 'untrusted:db3'), 'three',
	'the value is in Redis database 3');
is($redis->cli('get', 'untrusted:db3'), '', 'and not in database 0');

# --- AUTH --------------------------------------------------------------------
$redis->cli('config', 'set', 'requirepass', 's3cret-pw');
{
	local $ENV{REDISCLI_AUTH} = 's3cret-pw';

	($out, $err) = run_script("$P SELECT cache_get('x') IS NULL");
	like($err, qr/requires authentication: NOAUTH/,
		'no password against requirepass: refused with a WARNING');
	($out, $err) = run_script(
		"SET redis_cache.password = 'wrong-pw'; $P SELECT cache_get('x') IS NULL");
	like($err, qr/refused authentication/, 'wrong password: WARNING');
	unlike("$out\n$err", qr/wrong-pw/, 'the password never appears in messages');
	($out, $err) = run_script(qq{
SET redis_cache.password = 's3cret-pw';
$P
SELECT cache_set('auth', 'yes');
SELECT cache_get('auth');
});
	is("$out$err", "t\nyes", 'legacy AUTH with the password works');
	$redis->cli('acl', 'setuser', 'rc_app', 'on', '>app-pw', '~*', '+@all');
	($out, $err) = run_script(qq{
SELECT set_config('redis_cache.user', 'rc_app', false) IS NULL;
SET redis_cache.password = 'app-pw';
$P
SELECT cache_get('auth');
});
	is("$out$err", "f\nyes", 'ACL user + password works');
	$redis->cli('acl', 'deluser', 'rc_app');
	$redis->cli('config', 'set', 'requirepass', '');
}

# password_file: read at connect, never shown or logged
my $pwfile = "$PostgreSQL::Test::Utils::tmp_check/redis_untrusted.pw";
open(my $fh, '>', $pwfile) or die "could not write $pwfile: $!";
print $fh "file-pw\n";
close $fh;
chmod 0600, $pwfile;
$redis->cli('config', 'set', 'requirepass', 'file-pw');
$node->safe_psql('postgres',
	"ALTER SYSTEM SET redis_cache.password_file = '$pwfile'; SELECT pg_reload_conf()");
$node->poll_query_until('postgres',
	"SELECT setting = '$pwfile' FROM pg_settings WHERE name = 'redis_cache.password_file'")
  or die 'password_file not reloaded';
($out, $err) = run_script("$P SELECT cache_set('pwfile', 'yes')");
is("$out$err", 't', "redis_cache.password_file: AUTH with the file's first line");
{
	local $ENV{REDISCLI_AUTH} = 'file-pw';
	is($redis->cli('get', 'untrusted:pwfile'), 'yes', 'the value is in Redis');
	$redis->cli('config', 'set', 'requirepass', '');
}
$node->safe_psql('postgres',
	"ALTER SYSTEM RESET redis_cache.password_file; SELECT pg_reload_conf()");

# --- the password is invisible to non-superusers ---------------------------
$node->safe_psql('postgres', q{
ALTER SYSTEM RESET redis_cache.password_file;
ALTER SYSTEM SET redis_cache.password = 'hidden-pw';
SELECT pg_reload_conf();
CREATE ROLE regress_rc_user LOGIN;});
$node->poll_query_until('postgres',
	"SELECT current_setting('redis_cache.password') = 'hidden-pw' "
	  . "AND current_setting('redis_cache.password_file') = ''")
  or die 'password not reloaded';
my @as_user = (extra_params => [ '-U', 'regress_rc_user' ]);
($out, $err) = run_script('SHOW redis_cache.password', @as_user);
like($err, qr/must be superuser|permission denied|privileges/,
	'SHOW redis_cache.password refused to a non-superuser');
($out, $err) = run_script(q{
SELECT count(*) FROM pg_settings WHERE name = 'redis_cache.password';
SHOW ALL;}, @as_user);
like($out, qr/redis_cache\.host/, 'SHOW ALL ran for the non-superuser');
unlike("$out\n$err", qr/hidden-pw/, 'password absent from pg_settings and SHOW ALL');
($out, $err) = run_script(q{
SET redis_cache.password = 'x';
SET redis_cache.host = 'evil.example';}, @as_user);
is(scalar(() = $err =~ /permission denied/g), 2,
	'non-superusers cannot change password or host');
# (a reload of redis_cache.password itself is logged by the postmaster as
# 'parameter changed to', which is why README recommends password_file)
unlike(slurp_file($node->logfile), qr/file-pw|s3cret-pw|app-pw|wrong-pw/,
	'no password in the server log');

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no backend crashed');

done_testing();
