
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# The configured server settings (key_prefix, host, port, user, password,
# database, version, ...) can be neither changed nor lost by a
# non-superuser: PGOPTIONS, SET before or after the library is loaded,
# ALTER ROLE / DATABASE SET and a function's SET clause are refused or
# ignored, and the configured values stay in force (a cache_set lands in
# the configured prefix and database of the configured server; nothing
# reaches an "evil" server).  Without shared_preload_libraries a client
# option replaces the configured value before the library is loaded: such
# a session refuses to use Redis at all (issue 12, point 4).  The password
# is never shown to non-superusers and never logged, also when a reload
# changes it; without preloading redis_cache.password is refused.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;

my $timeout = $PostgreSQL::Test::Utils::timeout_default;

my @passwords = ('pw-one-7c1e', 'pw-two-92ab', 'pw-three-5d0f');
my $pw = $passwords[0];

my $redis = RedisCache::Server->new('main');
$redis->start;
# requirepass after start: wait_ready's PING has no password
$redis->cli('config', 'set', 'requirepass', $pw) eq 'OK'
  or die 'requirepass not set';
my $evil = RedisCache::Server->new('evil');
$evil->start;
my $evil_port = $evil->port;

sub rcli { return $redis->cli('--no-auth-warning', '-a', $pw, @_); }

# Connections the evil server accepted (this INFO call included).
sub evil_connections
{
	my $info = $evil->cli('info', 'stats') // '';
	$info =~ /total_connections_received:(\d+)/
	  or die "no total_connections_received in INFO: $info";
	return $1;
}

sub keys_in
{
	my ($db) = @_;
	my $out = rcli('-n', $db, '--scan') // die 'redis-cli failed';
	return sort grep { $_ ne '' } split /\n/, $out;
}

my $pwfile = "$PostgreSQL::Test::Utils::tmp_check/redis_password";
sub write_pwfile
{
	my ($p) = @_;
	open(my $fh, '>', $pwfile) or die "$pwfile: $!";
	print $fh "$p\n";
	close $fh;
	chmod 0600, $pwfile;
	return;
}
write_pwfile($pw);

# Statements are not logged: what must never reach the log is a password
# logged by PostgreSQL or the extension.
my $common = "log_statement = none\nlog_min_error_statement = panic\n";

# ---------------------------------------------------------------------------
# Without shared_preload_libraries
# ---------------------------------------------------------------------------
my $node = $redis->new_pg_node('np', preload => 0,
	conf => $common
	  . "redis_cache.key_prefix = 'cfg:'\n"
	  . "redis_cache.database = 3\n"
	  . "redis_cache.password_file = '$pwfile'\n");
$node->start;
$node->safe_psql('postgres', q{
CREATE ROLE regress_app LOGIN;
CREATE DATABASE appdb OWNER regress_app;});
$node->safe_psql('appdb', q{
CREATE EXTENSION redis_cache;
CREATE TABLE wt (id int PRIMARY KEY, v text);
INSERT INTO wt VALUES (1, 'a');
SELECT cache_watch('wt', 'wt:{id}');
GRANT ALL ON wt TO regress_app;});

# psql as regress_app (unless user is given) with PGOPTIONS; never dies.
sub run_as
{
	my ($n, $db, $sql, %p) = @_;
	local $ENV{PGOPTIONS} = $p{pgoptions} // '';
	my ($out, $err) = ('', '');
	my $rc = $n->psql($db, $sql,
		stdout => \$out, stderr => \$err, on_error_stop => 0,
		timeout => $timeout,
		extra_params => [ '-U', $p{user} // 'regress_app' ]);
	return ($rc, $out, $err);
}

my ($rc, $out, $err) = run_as($node, 'appdb', q{SELECT cache_set('base', 'v')});
is(rcli('-n', 3, 'get', 'cfg:base'), 'v',
	'baseline: a non-superuser stores under the configured prefix, database and password');

my $evil_before = evil_connections();

# PGOPTIONS: refused when the library loads, and the configured value is
# gone with it; the session refuses to use Redis, even with on_error=silent.
my %pgoptions = (
	key_prefix => 'evil:',
	host => '127.0.0.2',
	port => $evil_port,
	user => 'evil',
	password => 'evil-pw',
	password_file => '/dev/null',
	database => 5,
	version => 'evil',
	circuit_open_seconds => 0);
foreach my $setting (sort keys %pgoptions)
{
	($rc, $out, $err) = run_as($node, 'appdb', qq{
SET redis_cache.on_error = 'silent';
SELECT cache_set('pgopt_$setting', 'v');
SELECT cache_get('base');},
		pgoptions => "-c redis_cache.$setting=$pgoptions{$setting}");
	is(scalar(() = $err =~
		/ERROR:  redis_cache: the configured value of "redis_cache\.$setting" is not in force in this session/g),
		2, "PGOPTIONS redis_cache.$setting: every call refused with an ERROR naming the setting");
}
like($err, qr/HINT:  .*shared_preload_libraries/, 'the hint names shared_preload_libraries');

# other spellings and a crowd of unknown names change nothing
($rc, $out, $err) = run_as($node, 'appdb', q{SELECT cache_set('spelling', 'v')},
	pgoptions => join(' ', (map { "-c redis_cache.aaa$_=1" } 1 .. 80),
		'-c Redis_Cache.Key_Prefix=evil:'));
like($err, qr/configured value of "redis_cache.key_prefix" is not in force/,
	'PGOPTIONS in mixed case among 80 unknown redis_cache names: refused');

# user settings remain the client's to choose
($rc, $out, $err) = run_as($node, 'appdb', q{SELECT cache_set('user_opts', 'v')},
	pgoptions => '-c redis_cache.default_ttl=50 -c redis_cache.on_error=error');
is(rcli('-n', 3, 'ttl', 'cfg:user_opts'), '50',
	'PGOPTIONS with user settings only: accepted, configured server settings in force');

($rc, $out, $err) = run_as($node, 'appdb', q{
UPDATE wt SET v = 'tampered' WHERE id = 1;
SELECT cache_ping();},
	pgoptions => '-c redis_cache.key_prefix=evil:');
like($err, qr/not in force/, 'a write to a watched table in such a session is refused');
is($node->safe_psql('appdb', 'SELECT v FROM wt'), 'a',
	'and does not commit (its invalidation could not be delivered)');

# ... while a normal session's write invalidates under the configured prefix
rcli('-n', 3, 'set', 'cfg:wt:1', 'cached');
run_as($node, 'appdb', q{UPDATE wt SET v = 'b' WHERE id = 1});
is(rcli('-n', 3, 'exists', 'cfg:wt:1'), '0',
	'an untampered write invalidates the configured key');

# SET before the library is loaded: placeholders take it, the load refuses
# it (WARNING), the configured values stay in force.
($rc, $out, $err) = run_as($node, 'appdb', qq{
SET redis_cache.key_prefix = 'evil:';
SET redis_cache.port = $evil_port;
SET redis_cache.database = 5;
SET redis_cache.password = 'evil-pw';
SET redis_cache.version = 'evil';
SELECT cache_set('set_before', 'v');
SHOW redis_cache.key_prefix;
SHOW redis_cache.database;});
like($err, qr/permission denied to set parameter "redis_cache.key_prefix"/,
	'SET before the load: refused when the library loads');
is(rcli('-n', 3, 'get', 'cfg:set_before'), 'v',
	'SET before the load: the configured prefix, database and server are used');
is($out, "t\ncfg:\n3", 'SET before the load: SHOW gives the configured values');

# SET (and set_config) after the load
($rc, $out, $err) = run_as($node, 'appdb', qq{
SELECT cache_get('base');
SET redis_cache.key_prefix = 'evil:';
SELECT set_config('redis_cache.port', '$evil_port', false);
SELECT cache_set('set_after', 'v');});
is(scalar(() = $err =~ /permission denied to set parameter/g), 2,
	'SET and set_config after the load: permission denied');
is(rcli('-n', 3, 'get', 'cfg:set_after'), 'v', 'SET after the load: configured values in force');

# ALTER ROLE / DATABASE SET, a function's SET clause
($rc, $out, $err) = run_as($node, 'appdb', qq{
ALTER ROLE CURRENT_USER SET redis_cache.key_prefix = 'evil:';
ALTER ROLE regress_app IN DATABASE appdb SET redis_cache.port = $evil_port;
ALTER DATABASE appdb SET redis_cache.database = 5;
CREATE FUNCTION evil() RETURNS void LANGUAGE sql SET redis_cache.key_prefix = 'evil:' AS 'SELECT';
SELECT cache_get('base');
ALTER ROLE CURRENT_USER SET redis_cache.host = '127.0.0.2';
ALTER DATABASE appdb SET redis_cache.version = 'evil';});
is(scalar(() = $err =~ /permission denied to set parameter|cannot be changed now/g), 6,
	'ALTER ROLE / DATABASE SET and a SET clause: refused, before and after the load')
  or diag($err);
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM pg_db_role_setting WHERE setconfig::text LIKE '%redis_cache%'}),
	'0', 'nothing stored in pg_db_role_setting');

# A role granted SET on a parameter may set it: PostgreSQL's own judgement.
$node->safe_psql('postgres',
	'GRANT SET ON PARAMETER redis_cache.key_prefix TO regress_app');
($rc, $out, $err) = run_as($node, 'appdb', q{SELECT cache_set('granted', 'v')},
	pgoptions => '-c redis_cache.key_prefix=granted:');
is(rcli('-n', 3, 'get', 'granted:granted'), 'v',
	'GRANT SET ON PARAMETER: the granted role may choose its prefix');
$node->safe_psql('postgres',
	'REVOKE SET ON PARAMETER redis_cache.key_prefix FROM regress_app');
rcli('-n', 3, 'del', 'granted:granted');

is(evil_connections(), $evil_before + 1, 'no connection ever reached the evil server');
is($evil->cli('dbsize'), '0', 'the evil server holds no key');
is(join(',', keys_in(0), keys_in(5)), '', 'nothing in the default or the evil database');
is(join(',', grep { !/^(cfg|granted):/ } keys_in(3)), '',
	'the configured database holds only keys under the configured prefix');

# The password is never visible to non-superusers (password_file: no
# placeholder holds it).
($rc, $out, $err) = run_as($node, 'appdb', q{
SHOW redis_cache.password;
SELECT current_setting('redis_cache.password', true);
SELECT cache_get('base');
SHOW redis_cache.password;
SELECT current_setting('redis_cache.password', true);
SELECT count(*) FROM pg_settings WHERE name = 'redis_cache.password';
SHOW ALL;});
like($err, qr/must be superuser|privileges of pg_read_all_settings/,
	'without preloading, SHOW redis_cache.password is refused once loaded');
unlike("$out\n$err", qr/\Q$pw\E/, 'without preloading the password is never shown');

# redis_cache.password without preloading: any role could SHOW the
# placeholder and a reload logs it, so the extension refuses to use it.
$node->safe_psql('postgres', q{
LOAD 'redis_cache';
ALTER SYSTEM SET redis_cache.password = 'np-conf-pw';
SELECT pg_reload_conf();});
$node->poll_query_until('postgres',
	q{SELECT current_setting('redis_cache.password', true) IS NOT NULL})
  or die 'not reloaded';
($rc, $out, $err) = run_as($node, 'appdb', q{SELECT cache_set('with_conf_pw', 'v')});
like($err, qr/WARNING:  redis_cache: redis_cache.password is not used without shared_preload_libraries.*password_file/,
	'without preloading redis_cache.password is refused, pointing at password_file');
is(rcli('-n', 3, 'exists', 'cfg:with_conf_pw'), '0', 'and nothing was stored');
$node->safe_psql('postgres', q{
LOAD 'redis_cache';
ALTER SYSTEM RESET redis_cache.password;
SELECT pg_reload_conf();});

# Rotate the password (file): new sessions use it, nothing is logged.
rcli('config', 'set', 'requirepass', $passwords[1]) eq 'OK' or die;
$pw = $passwords[1];
write_pwfile($pw);
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok($node->poll_query_until('appdb', q{SELECT cache_set('rotated', 'v')}, 't'),
	'without preloading a rotated password_file is used by new sessions');
is(rcli('-n', 3, 'get', 'cfg:rotated'), 'v', 'stored with the rotated password');

# An invalid configured value would leave the default in force as well.
$node->append_conf('postgresql.conf', "redis_cache.key_prefix = 'bad\\tprefix:'\n");
$node->reload;
$node->poll_query_until('postgres',
	q{SELECT current_setting('redis_cache.key_prefix') LIKE 'bad%'})
  or die 'not reloaded';
($rc, $out, $err) = run_as($node, 'appdb', q{SELECT cache_set('invalid_conf', 'v')});
like($err, qr/configured value of "redis_cache.key_prefix" is not in force/,
	'an invalid configured key_prefix: the session refuses instead of using the default');

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$passwords[0]\E|\Q$passwords[1]\E/, 'without preloading no password in the server log');
unlike($log, qr/terminated by signal/, 'no backend crashed');

# ---------------------------------------------------------------------------
# With shared_preload_libraries: PostgreSQL refuses every route itself
# ---------------------------------------------------------------------------
my $pre = $redis->new_pg_node('pre',
	conf => $common
	  . "redis_cache.key_prefix = 'pre:'\n"
	  . "redis_cache.database = 4\n"
	  . "redis_cache.password = '$pw'\n");
$pre->start;
$pre->safe_psql('postgres', q{
CREATE ROLE regress_app LOGIN;
CREATE DATABASE appdb OWNER regress_app;});
$pre->safe_psql('appdb', 'CREATE EXTENSION redis_cache');

($rc, $out, $err) = run_as($pre, 'appdb', q{SELECT cache_set('base', 'v')});
is(rcli('-n', 4, 'get', 'pre:base'), 'v', 'preloaded baseline: configured prefix, database and password');

$evil_before = evil_connections();
foreach my $setting (sort keys %pgoptions)
{
	($rc, $out, $err) = run_as($pre, 'appdb', q{SELECT cache_set('pgopt', 'v')},
		pgoptions => "-c redis_cache.$setting=$pgoptions{$setting}");
	like($err,
		qr/FATAL:  (permission denied to set parameter|parameter "redis_cache\.\w+" cannot be changed now)/,
		"preloaded, PGOPTIONS redis_cache.$setting: the connection is refused");
}
($rc, $out, $err) = run_as($pre, 'appdb', qq{
SET redis_cache.key_prefix = 'evil:';
SET redis_cache.port = $evil_port;
SET redis_cache.password = 'evil-pw';
ALTER ROLE CURRENT_USER SET redis_cache.key_prefix = 'evil:';
ALTER DATABASE appdb SET redis_cache.database = 5;
CREATE FUNCTION evil() RETURNS void LANGUAGE sql SET redis_cache.key_prefix = 'evil:' AS 'SELECT';
SELECT cache_set('routes', 'v');});
is(scalar(() = $err =~ /permission denied to set parameter/g), 6,
	'preloaded: SET, ALTER ROLE / DATABASE SET and a SET clause refused');
is(rcli('-n', 4, 'get', 'pre:routes'), 'v', 'preloaded: the configured values stay in force');
is(evil_connections(), $evil_before + 1, 'preloaded: nothing reached the evil server');

($rc, $out, $err) = run_as($pre, 'appdb', q{
SHOW redis_cache.password;
SELECT current_setting('redis_cache.password', true);
SELECT count(*) FROM pg_settings WHERE name = 'redis_cache.password';
SHOW ALL;});
like($err, qr/must be superuser|privileges of pg_read_all_settings/,
	'preloaded: SHOW redis_cache.password refused to a non-superuser');
unlike("$out\n$err", qr/\Q$pw\E/, 'preloaded: the password is never shown to a non-superuser');
is($pre->safe_psql('appdb', 'SHOW redis_cache.password'), $pw,
	'a superuser still sees the password with SHOW');

# Change the password in the configuration and reload: the postmaster logs
# the changed settings, never the password.
rcli('config', 'set', 'requirepass', $passwords[2]) eq 'OK' or die;
$pw = $passwords[2];
$pre->append_conf('postgresql.conf',
	"redis_cache.password = '$pw'\nredis_cache.circuit_open_seconds = 7\n");
$pre->reload;
ok($pre->poll_query_until('appdb', q{SELECT cache_set('reloaded', 'v')}, 't'),
	'preloaded: the reloaded password is used');
is(rcli('-n', 4, 'get', 'pre:reloaded'), 'v', 'stored with the new password');
$pre->stop;
$log = slurp_file($pre->logfile);
like($log, qr/parameter "redis_cache.circuit_open_seconds" changed to "7"/,
	'the reload was logged');
unlike($log, qr/parameter "redis_cache.password" changed/,
	'preloaded: a reload does not log the password setting');
unlike($log, qr/\Q$passwords[0]\E|\Q$passwords[1]\E|\Q$passwords[2]\E/,
	'preloaded: no password (old or new) in the server log');
unlike($log, qr/terminated by signal/, 'no backend crashed');

done_testing();
