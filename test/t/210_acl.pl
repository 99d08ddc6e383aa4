
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# Everything works under the Redis ACL user that README.md's Security
# section gives: the test takes that very line ("ACL SETUSER pg_cache ...",
# key pattern ~app:*, matching redis_cache.key_prefix = 'app:') from the
# README, applies it verbatim to its own redis-server, and makes the
# `default` user unusable for the extension (it needs a password only the
# test knows), so the extension authenticates as pg_cache through
# redis_cache.user and redis_cache.password_file.  Under that user it runs
# the key-value functions, cache_delete_pattern, locks, cache_ping,
# cache_health, cache_stats, cache_version and cache_families; a watched
# table's UPDATE (keys deleted at commit) and TRUNCATE (a pattern run by
# the worker); cache_query (a miss, a hit, ended by an UPDATE) and
# cache_query_invalidate; the worker's replay of a commit that missed its
# delivery (Redis paused with SIGSTOP); and a cache version change
# flushing the owned keys and keeping the application's session.  Redis'
# ACL LOG must stay empty and the PostgreSQL log must hold no NOPERM.
# Then a command and a key pattern are denied on purpose: each gives a
# WARNING naming the missing command or key pattern (GET in a session
# already checked; the version check of a new session; a key prefix
# outside ~app:*; a command denied inside a Lua script, which Redis 7.0
# answers with ERR, not NOPERM); a commit whose UNLINK is denied is handed
# to the worker, whose WARNING names the command.
#
# Assertions are on states and counters (Redis contents, ACL LOG,
# CLIENT LIST, cache_stats, cache_health, cache_version, the server log);
# waits poll a state with a deadline.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(time usleep);

my $timeout = $PostgreSQL::Test::Utils::timeout_default;

# --- the ACL line, taken from the README --------------------------------
# prove runs in the root of the tree under test (TESTDIR is that directory
# too, under make installcheck).
my $root = $ENV{TESTDIR} // '.';
my $readme_path = "$root/README.md";
$readme_path = 'README.md' unless -f $readme_path;
my $readme = slurp_file($readme_path);
$readme =~ /^## Security\n(.*?)(?=^## )/ms
  or die "no Security section in $readme_path";
my $security = $1;
my @acl_lines;
my $in_code = 0;
for my $l (split /\n/, $security)
{
	if ($l =~ /^\s*```/)
	{
		$in_code = !$in_code;
		next;
	}
	push @acl_lines, $1 if $in_code && $l =~ /^\s*(ACL SETUSER pg_cache\b.*?)\s*$/;
}
die "expected one 'ACL SETUSER pg_cache' line in a code block of the Security "
  . "section of $readme_path, found " . scalar(@acl_lines)
  unless @acl_lines == 1;
my $acl_line = $acl_lines[0];
note "README: $acl_line";
my @acl_words = split ' ', $acl_line;
ok((grep { $_ eq '~app:*' } @acl_words),
	"the README's ACL line confines pg_cache to ~app:*");
my ($pg_cache_pw) = map { /^>(.+)$/ ? $1 : () } @acl_words;
is($pg_cache_pw, 'change-me', "the README's ACL line sets the password change-me");

my $redis = RedisCache::Server->new('acl');
$redis->start;
is($redis->cli(@acl_words), 'OK', "the README's ACL SETUSER line is accepted verbatim");
# The default user needs a password only this test knows (for redis-cli):
# the extension can only work as pg_cache.
my $admin_pw = 'acl-test-admin-5e1f';
is($redis->cli('acl', 'setuser', 'default', 'resetpass', ">$admin_pw"), 'OK',
	'the default user needs a password');
$ENV{REDISCLI_AUTH} = $admin_pw;
like($redis->cli('acl', 'whoami'), qr/^default$/, 'redis-cli works as default');

my $pwfile = "$PostgreSQL::Test::Utils::tmp_check/pg_cache.pw";
open(my $fh, '>', $pwfile) or die "$pwfile: $!";
print $fh "$pg_cache_pw\n";
close $fh;
chmod 0600, $pwfile;

my $node = $redis->new_pg_node('acl',
	conf => "redis_cache.key_prefix = 'app:'\n"
	  . "redis_cache.user = 'pg_cache'\n"
	  . "redis_cache.password_file = '$pwfile'\n"
	  . "redis_cache.commit_timeout_ms = 200\n");
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION redis_cache;
CREATE TABLE tenants (id int PRIMARY KEY, name text);
INSERT INTO tenants SELECT g, 'name' || g FROM generate_series(1, 3) g;});

# A psql script run against the node, never hanging the test.
sub run_script
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql('postgres', $sql,
		stdout => \$out, stderr => \$err,
		on_error_stop => 0, timeout => $timeout);
	return ($out, $err);
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

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub stat_total
{
	my ($column) = @_;
	return sql("SELECT $column FROM cache_stats WHERE family IS NULL");
}

sub scan_keys
{
	my ($pattern) = @_;
	# an array, so that scalar(scan_keys(...)) is the count
	my @keys = sort grep { $_ ne '' }
	  split /\n/, ($redis->cli('--scan', '--pattern', $pattern) // '');
	return @keys;
}

# Stored query results (not their generations, dependency sets or locks).
sub query_results
{
	my @keys = grep { !/:(gen|deps|deps-dead)(:|$)/ && !/:lock$/ }
	  scan_keys('app:query:*');
	return @keys;
}

# polls a state with a deadline (RedisCache::Server)
*poll = \&RedisCache::Server::poll_until;

# Whether the server log matches RE within the default timeout.
sub poll_log
{
	my ($re) = @_;
	my $deadline = time() + $timeout;
	while (time() < $deadline)
	{
		return 1 if slurp_file($node->logfile) =~ $re;
		usleep(50_000);
	}
	return 0;
}

sub exists_key { return ($redis->cli('exists', $_[0]) // '') eq '1'; }

# --- connected as pg_cache --------------------------------------------------
my $bg = $node->background_psql('postgres');
is($bg->query_safe('SELECT cache_ping()'), 'PONG', 'cache_ping() as pg_cache');
# Connections other than this redis-cli's own (an earlier redis-cli may
# take a moment to be gone).
my (@as_pg_cache, @as_other);
poll('only pg_cache connections', sub {
	my @clients = grep { !/cmd=client\|list/ }
	  split /\n/, ($redis->cli('client', 'list') // '');
	@as_pg_cache = grep { /\buser=pg_cache\b/ } @clients;
	@as_other = grep { !/\buser=pg_cache\b/ } @clients;
	return @as_other == 0;
});
cmp_ok(scalar(@as_pg_cache), '>=', 1, 'the extension is connected as pg_cache');
is(join("\n", @as_other), '', 'no other connection than pg_cache\'s');
$bg->quit;

# --- key-value functions ----------------------------------------------------
my ($out, $err) = run_script(q{
SELECT 'set=' || cache_set('kv:a', 'alpha', 600);
SELECT 'get=' || cache_get('kv:a');
SELECT 'mget=' || cache_mget(ARRAY['kv:a', 'kv:none'])::text;
SELECT 'exists=' || cache_exists('kv:a') || '|' || cache_exists('kv:none');
SELECT 'ttl=' || (cache_ttl('kv:a') BETWEEN 1 AND 600);
SELECT 'incr1=' || cache_incr('kv:n');
SELECT 'incr2=' || cache_incr('kv:n', 5, 60);
SELECT 'delete=' || cache_delete('kv:a', 'kv:n', 'kv:none');
SELECT 'gone=' || (cache_get('kv:a') IS NULL);
});
my $r = tagged($out);
is( join(' ', map { "$_=" . ($r->{$_} // '?') } qw(set get mget exists ttl incr1 incr2 delete gone)),
	'set=true get=alpha mget={alpha,NULL} exists=true|false ttl=true incr1=1 incr2=6 delete=2 gone=true',
	'cache_set, cache_get, cache_mget, cache_exists, cache_ttl, cache_incr, cache_delete');
is($err, '', 'key-value functions: no warning');

sql(q{SELECT cache_set('kv:p' || g, 'v') FROM generate_series(1, 3) g});
is(join(' ', scan_keys('app:kv:*')), 'app:kv:p1 app:kv:p2 app:kv:p3',
	'keys are stored under key_prefix app:');
($out, $err) = run_script(q{SELECT cache_delete_pattern('kv:*')});
is("$out$err", '3', 'cache_delete_pattern as superuser');
is(scalar(scan_keys('app:kv:*')), 0, 'cache_delete_pattern removed the keys');

($out, $err) = run_script(q{
SELECT cache_lock('lock:job', 30) AS token \gset
SELECT 'token=' || (:'token' ~ '^[0-9a-f]{32}$');
SELECT 'again=' || (cache_lock('lock:job', 30) IS NULL);
SELECT 'unlock=' || cache_unlock('lock:job', :'token');
SELECT 'unlocked=' || (cache_exists('lock:job') = false);
});
$r = tagged($out);
is( join(' ', map { "$_=" . ($r->{$_} // '?') } qw(token again unlock unlocked)),
	'token=true again=true unlock=true unlocked=true',
	'cache_lock and cache_unlock (EVAL)');
is($err, '', 'locks: no warning');

($out, $err) = run_script(q{
SELECT 'ping=' || cache_ping();
SELECT 'health=' || (h->>'reachable') || '|' || (h->>'circuit') || '|' || (h->>'redis_version' IS NOT NULL)
  FROM cache_health() h;
SELECT 'stats=' || (hits > 0) || '|' || (sets > 0) || '|' || errors_reply
  FROM cache_stats WHERE family IS NULL;
SELECT 'version=' || expected || '|' || stored || '|' || length(run_id) || '|' || (checked_at IS NOT NULL)
  FROM cache_version();
});
$r = tagged($out);
is($r->{ping}, 'PONG', 'cache_ping()');
is($r->{health}, 'true|closed|true', 'cache_health(): reachable, INFO read');
is($r->{stats}, 'true|true|0', 'cache_stats: hits and sets counted, no error reply');
is($r->{version}, '1|1|40|true',
	'cache_version(): version stored, run_id read from INFO at connect');
is($err, '', 'status functions: no warning');

# --- watched table: deletes at commit, TRUNCATE by the worker -------------
sql(q{SELECT cache_watch('tenants', 'tenant:id:{id}')});
is( sql(q{SELECT string_agg(family || '/' || source, ' ') FROM cache_families()}),
	'tenant:id:*/watch', 'cache_families(): the watched family');
ok(exists_key('app:{cache}:families'), 'the family is recorded in Redis');

sql(q{SELECT cache_set('tenant:id:' || g, 'v') FROM generate_series(1, 3) g});
my $queued = stat_total('invalidations_queued');
($out, $err) = run_script(q{UPDATE tenants SET name = 'changed' WHERE id = 1});
is($err, '', 'UPDATE of a watched row: no warning');
ok(!exists_key('app:tenant:id:1'), 'UPDATE: app:tenant:id:1 deleted at commit');
ok(exists_key('app:tenant:id:2'), 'UPDATE: the other rows\' keys stay');
is(stat_total('invalidations_queued'), $queued,
	'UPDATE: delivered at commit, nothing queued for the worker');

($out, $err) = run_script(q{TRUNCATE tenants});
is($err, '', 'TRUNCATE of a watched table: no warning');
poll('TRUNCATE: the worker removes the family',
	sub { scalar(scan_keys('app:tenant:id:*')) == 0 });
is(scalar(scan_keys('app:tenant:id:*')), 0, 'TRUNCATE: every app:tenant:id:* key gone');
sql(q{INSERT INTO tenants SELECT g, 'name' || g FROM generate_series(1, 3) g});

# --- cache_query -------------------------------------------------------------
my $Q = q{SELECT * FROM cache_query('SELECT id, name FROM tenants WHERE id = $1', ARRAY['1'])
                 AS t(id int, name text)};
my $hits = stat_total('hits');
($out, $err) = run_script("$Q; $Q");
is("$out$err", "1|name1\n1|name1", 'cache_query: the same rows twice, no warning');
is(scalar(query_results()), 1, 'cache_query: the result is stored under app:query:');
cmp_ok(stat_total('hits'), '>', $hits, 'cache_query: the second call is a hit');
($out, $err) = run_script(q{UPDATE tenants SET name = 'q2' WHERE id = 1});
is($err, '', 'UPDATE ending a cached result: no warning');
is(scalar(query_results()), 0, 'cache_query: the UPDATE deleted the result');
($out, $err) = run_script($Q);
is("$out$err", '1|q2', 'cache_query: the new rows after the UPDATE');

($out, $err) = run_script(q{
SELECT cache_query_json('SELECT id, name FROM tenants WHERE id = $1', ARRAY['2']);
SELECT cache_query_invalidate('tenants') >= 1;});
is("$out$err", qq{[{"id": 2, "name": "name2"}]\nt},
	'cache_query_json and cache_query_invalidate');
is(scalar(query_results()), 0, 'cache_query_invalidate deleted the results');

# --- the worker replays a commit that missed its delivery ----------------
sql(q{SELECT cache_set('tenant:id:' || g, 'v') FROM generate_series(1, 3) g});
my $log_offset = -s $node->logfile;
$redis->pause;
my $paused_at = time();
my $s = RedisCache::Server::start_psql($node,
	q{UPDATE tenants SET name = 'replayed' WHERE id = 2});
RedisCache::Server::finish_psql($s);
my $rest = 0.3 - (time() - $paused_at);
usleep(int($rest * 1e6)) if $rest > 0;
$redis->resume;
note "the UPDATE during the pause: '$s->{out}' '$s->{err}'";
poll('replay: the key is gone and the queue drained', sub {
	!exists_key('app:tenant:id:2')
	  && sql(q{SELECT cache_health()->>'replay_queued'}) eq '0';
});
ok(!exists_key('app:tenant:id:2'), 'replay: app:tenant:id:2 deleted by the worker');
is(sql(q{SELECT cache_health()->>'replay_queued'}), '0', 'replay: the queue is empty');
ok(exists_key('app:tenant:id:3'), 'replay: exact, the other rows\' keys stay');
like(slurp_file($node->logfile, $log_offset),
	qr/replayed \d+ invalidations that could not be delivered at commit/,
	'replay: the worker logged the replay');

# --- cache version change: owned keys flushed, the session kept ----------
$redis->cli('set', 'app:session:abc', 'user42');
sql(q{SELECT cache_set('tenant:id:3', 'v')});
sql($Q);
is(scalar(query_results()), 1, 'version change: a result stored before');
sql(q{ALTER SYSTEM SET redis_cache.version = '2'; SELECT pg_reload_conf()});
# each poll is a new connection, whose login runs the version check
ok( $node->poll_query_until('postgres',
		q{SELECT expected || '|' || stored FROM cache_version()}, '2|2'),
	'version change: cache_version() shows version 2 stored');
poll('version change: the owned keys are flushed',
	sub { !exists_key('app:tenant:id:3') && scalar(query_results()) == 0 });
ok(!exists_key('app:tenant:id:3'), 'version change: app:tenant:id:3 flushed');
is(scalar(query_results()), 0, 'version change: the query result flushed');
is($redis->cli('get', 'app:session:abc'), 'user42',
	'version change: app:session:abc (not cache) kept');
like(slurp_file($node->logfile, $log_offset),
	qr/cache version mismatch \(stored 1, expected 2\): flushed \d+ owned keys/,
	'version change: the flush is logged');

# --- nothing was denied ------------------------------------------------------
is($redis->cli('acl', 'log'), '',
	'ACL LOG: no denial under the README\'s ACL line');
SKIP:
{
	# the counters came with Redis 7.2; ACL LOG above is the check before
	my $stats = $redis->cli('info', 'stats') // '';
	skip 'no acl_access_denied_* counters in INFO stats before Redis 7.2', 1
	  unless $stats =~ /^acl_access_denied_cmd:/m;
	my @denied = $stats =~ /^(acl_access_denied_\w+:[1-9]\d*)\r?$/mg;
	is(join(' ', @denied), '', 'INFO stats: no ACL denial counted');
}
my $pglog = slurp_file($node->logfile);
my @noperm = grep { /NOPERM|denied the ACL permission/ } split /\n/, $pglog;
is(join("\n", @noperm), '', 'PostgreSQL log: no NOPERM');

# --- a denied command and a denied key pattern give a WARNING ------------
# A session whose version check passed before GET is denied: its cache_get
# sends GET itself (ACL changes apply to open connections at once).
my $sess = $node->background_psql('postgres', on_error_stop => 0);
is($sess->query_safe(q{SELECT coalesce(cache_get('x'), 'miss')}), 'miss',
	'a session connected and checked before GET is denied');
is($redis->cli('acl', 'setuser', 'pg_cache', '-get'), 'OK', 'GET taken from pg_cache');
$sess->{stderr} = '';
$out = $sess->query(q{SELECT cache_get('x') IS NULL});
$err = $sess->{stderr};
$sess->quit;
is($out, 't', 'denied GET: cache_get is a miss, the query goes on');
like($err, qr/WARNING:  redis_cache: Redis denied the ACL permission to run command "get"/,
	'denied GET: a WARNING names the command');
like($err, qr/HINT:  .*ACL SETUSER <user> \+get/, 'denied GET: the hint names +get');

# A new session: its version check (a Lua script calling GET) runs first.
($out, $err) = run_script(q{SELECT cache_get('x') IS NULL});
is($out, 't', 'denied GET, new session: cache_get is a miss, the query goes on');
like($err, qr/WARNING:  redis_cache: /, 'denied GET, new session: a WARNING');
# Redis 7.0 answers a command denied inside a script with "ERR The user
# executing the script can't run this command or subcommand" (7.2 with
# NOPERM): either is reported as an ACL denial.
like($err, qr/WARNING:  redis_cache: Redis denied the ACL permission to run/,
	'denied GET, new session: the WARNING says an ACL denied a command');
note "denied GET, new session: $err";
like($redis->cli('acl', 'log'), qr/\bget\b/, 'denied GET: in Redis\' ACL LOG');
is($redis->cli('acl', 'setuser', 'pg_cache', '+get'), 'OK', 'GET given back');
$redis->cli('acl', 'log', 'reset');

($out, $err) = run_script(q{
SET redis_cache.key_prefix = 'other:';
SELECT cache_get('x') IS NULL;});
is($out, 't', 'denied key pattern: cache_get is a miss, the query goes on');
like($err,
	qr/WARNING:  redis_cache: Redis denied the ACL permission to access a key matching "other:\*"/,
	'denied key pattern: a WARNING names the key pattern');
like($err, qr/HINT:  .*ACL SETUSER <user> ~other:\*/, 'denied key pattern: the hint names ~other:*');
$redis->cli('acl', 'log', 'reset');

# A commit whose UNLINK is refused: the key stays, so the invalidation was
# not delivered; it must not pass for delivered in silence.  (A table no
# cached result read: the commit sends the UNLINK alone, no script.)
sql(q{CREATE TABLE plain (id int PRIMARY KEY, v text);
INSERT INTO plain VALUES (1, 'a');
SELECT cache_watch('plain', 'plain:{id}');});
$redis->cli('set', 'app:plain:1', 'cached');
my $sent = stat_total('invalidations_sent');
$queued = stat_total('invalidations_queued');
is($redis->cli('acl', 'setuser', 'pg_cache', '-unlink'), 'OK', 'UNLINK taken from pg_cache');
($out, $err) = run_script(q{UPDATE plain SET v = 'b' WHERE id = 1});
my $counts = stat_total('invalidations_sent') - $sent . '|'
  . (stat_total('invalidations_queued') - $queued);
note "denied UNLINK at commit: sent|queued $counts, stderr '$err'";
is($redis->cli('get', 'app:plain:1'), 'cached', 'denied UNLINK at commit: the key is still there');
# a refused UNLINK is not a delivery: the worker replays it (and warns)
like($counts, qr/\|[1-9]/, 'denied UNLINK at commit: handed to the worker');
ok(poll_log(qr/denied the ACL permission to run command "unlink"/),
	'denied UNLINK at commit: the worker\'s WARNING names the command');
is($redis->cli('acl', 'setuser', 'pg_cache', '+unlink'), 'OK', 'UNLINK given back');
$redis->cli('del', 'app:plain:1');
poll('UNLINK given back: nothing left to replay',
	sub { sql(q{SELECT cache_health()->>'replay_queued'}) eq '0' });
$redis->cli('acl', 'log', 'reset');

($out, $err) = run_script(q{SELECT cache_get('kv:after') IS NULL, cache_set('kv:after', 'v')});
is("$out$err", 't|t', 'with GET given back: works again without a warning');

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no backend crashed');

done_testing();
