
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# Cache version management against a real redis-server: first run, a
# version change flushing the owned keys (declared families here) exactly
# once and keeping a session under the same prefix (also with 20 racing
# backends), an open session noticing a reload, a Redis restart from an RDB
# snapshot holding a stale key, Redis down at backend start, two versions
# not flushing each other, the REDIS_CACHE_VERSION environment variable,
# and the upgrade from 1.6: the bookkeeping keys' legacy names
# (prefix||cache:version, ...) renamed to prefix||{cache}:version, ... by
# the first check, which then decides as usual (no first-run shortcut).

use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(time usleep);

my $timeout = $PostgreSQL::Test::Utils::timeout_default;

my $redis = RedisCache::Server->new('version');
$redis->start;
my $port = $redis->port;
# an entry the application wrote before the first version check ever ran
$redis->cli('set', 'ver:tenant:id:1', 'from-app');
my $node = $redis->new_pg_node('version',
	conf => "redis_cache.key_prefix = 'ver:'\n"
	  . "redis_cache.cache_families = 'product:*, tenant:*'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION redis_cache');

# A session that never talks to Redis, opened now: it sees a reloaded
# setting only once the postmaster has it, and polling it adds no login
# (each login runs a version check, which would take the flush away from
# the sessions under test).
my $mon = $node->background_psql('postgres');

sub count_log
{
	my ($text) = @_;
	my $log = slurp_file($node->logfile);
	return scalar(() = $log =~ /\Q$text\E/g);
}

# Keys under the prefix, the version control keys (ver:{cache}:*) and the
# application's sessions (ver:session:*, not cache: never flushed) excepted.
sub prefix_keys
{
	my @keys = split /\n/, $redis->cli('--scan', '--pattern', 'ver:*') // '';
	return scalar(grep { !/^ver:\{cache\}:/ && !/^ver:session:/ } @keys);
}

# Poll a session until it sees $name = $value (no Redis involved).
sub wait_setting
{
	my ($session, $name, $value) = @_;
	my $deadline = time() + $timeout;
	while (time() < $deadline)
	{
		return
		  if $session->query_safe("SELECT current_setting('$name')") eq $value;
		usleep(20_000);
	}
	die "$name did not become '$value'";
}

sub set_conf
{
	my ($name, $value) = @_;
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET $name = '$value'; SELECT pg_reload_conf()");
	wait_setting($mon, $name, $value);
	return;
}

# --- first run: store the version, flush nothing ---------------------------
is($node->safe_psql('postgres', "SELECT cache_get('tenant:id:1')"),
	'from-app', 'first run: existing entries are kept');
is($redis->cli('get', 'ver:{cache}:version'), '1',
	"first run: version '1' stored at key_prefix || '{cache}:version'");
is(count_log('cache version initialized to "1" for prefix "ver:"'), 1,
	'first run: logged once');
is( $node->safe_psql('postgres',
		'SELECT expected, stored, length(run_id), checked_at IS NOT NULL FROM cache_version()'),
	'1|1|40|t',
	'cache_version() reports expected, stored, run_id, checked_at');

# --- version change + reload: one flush of the owned keys; keys outside the
# prefix and keys under it that are not cache (a session) survive ---------
$redis->cli(join('', map { "SET ver:product:details:$_ v$_\n" } 1 .. 100));
$redis->cli('set', 'ver:session:abc', 'user-1');
$redis->cli(join('', map { "SET other:key:$_ keep\n" } 1 .. 5));
my $before = prefix_keys();
set_conf('redis_cache.version', 'a1b2c3d4');
is( $node->safe_psql('postgres', "SELECT cache_get('product:details:1') IS NULL"),
	't', 'version change: old entries are not served');
is("$before/" . prefix_keys(), '101/0',
	'version change: every owned key under the prefix removed');
is($redis->cli('get', 'ver:session:abc'), 'user-1',
	'version change: a key that is not cache survives');
my @other = split /\n/, $redis->cli('--scan', '--pattern', 'other:*');
is(scalar(@other), 5, 'version change: keys outside the prefix untouched');
is($redis->cli('get', 'ver:{cache}:version'), 'a1b2c3d4',
	'version change: new version stored');
is(count_log('cache version mismatch (stored 1, expected a1b2c3d4): flushed 101 owned keys'),
	1, 'version change: one flush, logged with the count');

# --- an open session notices the reload at its next command ----------------
my $bg = $node->background_psql('postgres');
my @got = ($bg->query_safe("SELECT cache_set('tenant:live', 'x')"));
set_conf('redis_cache.version', 'live2');
wait_setting($bg, 'redis_cache.version', 'live2');
push @got, $bg->query_safe("SELECT coalesce(cache_get('tenant:live'), 'miss')");
push @got, $bg->query_safe('SELECT stored FROM cache_version()');
is(join("\n", @got), "t\nmiss\nlive2",
	'an existing backend re-checks after pg_reload_conf()');
$bg->quit;

# --- 20 backends racing after a version change: exactly one flush ----------
$redis->cli(join('', map { "SET ver:tenant:id:$_ t$_\n" } 1 .. 500));
set_conf('redis_cache.version', 'race-v3');
my @racers;
for my $i (1 .. 20)
{
	my $r = { out => '', err => '' };
	$r->{h} = IPC::Run::start(
		[
			$node->installed_command('psql'), '-X', '-At',
			'-d', $node->connstr('postgres'),
			'-c', "SELECT cache_get('tenant:id:$i')"
		],
		'>', \$r->{out}, '2>', \$r->{err},
		IPC::Run::timeout($timeout));
	push @racers, $r;
}
$_->{h}->finish for @racers;
note "racer $_: '$racers[$_]{out}' '$racers[$_]{err}'" for 0 .. $#racers;
is(count_log('cache version mismatch (stored live2, expected race-v3)'), 1,
	'20 racing backends: exactly one flush');
is(scalar(grep { $_->{out} =~ /^t\d/m } @racers), 0,
	'20 racing backends: none served an old entry');
is(prefix_keys(), 0, '20 racing backends: owned keys flushed');
is($redis->cli('get', 'ver:session:abc'), 'user-1',
	'20 racing backends: the session survives');

# --- Redis restart from an RDB snapshot holding a stale entry ---------------
$node->safe_psql('postgres', "SELECT cache_set('tenant:id:7', 'stale')");
$redis->cli('save');
# invalidated after the snapshot
$node->safe_psql('postgres', "SELECT cache_delete('tenant:id:7')");
$redis->stop;
$redis->start('--dbfilename', 'dump.rdb');
is($redis->cli('get', 'ver:tenant:id:7'), 'stale',
	'snapshot restored the stale entry into Redis');
is( $node->safe_psql('postgres', "SELECT coalesce(cache_get('tenant:id:7'), 'miss')"),
	'miss', 'Redis restart: the restored stale entry is not served');
is(count_log('Redis restart detected'), 1, 'Redis restart: detected and logged once');
$node->safe_psql('postgres', "SELECT cache_get('x'); SELECT cache_get('y')");
is(count_log('Redis restart detected'), 1, 'Redis restart: one flush per new run_id');

# --- Redis down at backend start: the connection succeeds, checked later ----
$redis->stop;
set_conf('redis_cache.version', 'down-v4');
my $log_offset = -s $node->logfile;
$bg = $node->background_psql('postgres');
is($bg->query_safe("SELECT 'connected'"), 'connected',
	'Redis down at backend start: the connection succeeds');
$redis->start('--dbfilename', 'dump.rdb');
@got = ($bg->query_safe("SELECT coalesce(cache_get('tenant:id:7'), 'miss')"));
push @got, $bg->query_safe("SELECT expected || '/' || stored FROM cache_version()");
is(join("\n", @got), "miss\ndown-v4/down-v4",
	'Redis down at backend start: the check runs on reconnect');
$bg->quit;
like(slurp_file($node->logfile, $log_offset),
	qr/redis_cache: connected to Redis at 127\.0\.0\.1:$port/,
	'connection is logged');

# --- two versions alternating do not flush each other ------------------------
set_conf('redis_cache.version', 'srv-b');
$node->safe_psql('postgres', "SELECT cache_set('shared', 'by-b')");
my $flushes = count_log('cache version mismatch');
set_conf('redis_cache.version', 'down-v4');    # an older deploy still running
my ($ret, $out, $err) = $node->psql('postgres',
	"SELECT coalesce(cache_get('shared'), 'miss'), cache_set('old', 'x')");
like($err, qr/older than "srv-b"/,
	'older version: WARNING that the cache is bypassed');
is($out, 'miss|f', 'older version: reads are misses, writes skipped');
is($redis->cli('get', 'ver:shared'), 'by-b',
	"older version: does not flush the newer one's entries");
is($redis->cli('get', 'ver:{cache}:version'), 'srv-b',
	'older version: the newest version stays in force');
is(count_log('cache version mismatch'), $flushes, 'older version: no flush ping-pong');

# --- REDIS_CACHE_VERSION from the postmaster's environment -----------------
$mon->quit;
$node->safe_psql('postgres', 'ALTER SYSTEM RESET redis_cache.version');
{
	local $ENV{REDIS_CACHE_VERSION} = 'env-v9';
	$node->restart;
}
is($node->safe_psql('postgres', 'SELECT expected, stored FROM cache_version()'),
	'env-v9|env-v9',
	'REDIS_CACHE_VERSION is the expected version when the GUC is unset');
$node->restart;
is($node->safe_psql('postgres', 'SELECT expected FROM cache_version()'),
	'1', "default expected version is '1'");

# --- upgrade from 1.6: the legacy bookkeeping names are renamed ------------
# (a) same version, same Redis, flush done: renamed, nothing flushed
my $run_id = $node->safe_psql('postgres', 'SELECT run_id FROM cache_version()');
$redis->cli("SET mig:cache:version 1\nHSET mig:cache:versions 1 1000\n"
	  . "SET mig:cache:run_id $run_id\nSET mig:cache:flushed 1|$run_id\n"
	  . "SADD mig:cache:families order:*\nSET mig:tenant:id:1 kept\n"
	  . "SET mig:order:1 kept\n");
$log_offset = -s $node->logfile;
is( $node->safe_psql('postgres',
		q{SET redis_cache.key_prefix = 'mig:'; SELECT cache_get('tenant:id:1')}),
	'kept', 'upgrade, same version: nothing flushed');
is( $redis->cli('exists', 'mig:cache:version', 'mig:cache:versions',
		'mig:cache:run_id', 'mig:cache:flushed', 'mig:cache:families'),
	'0', 'upgrade: no legacy bookkeeping key is left');
is( join('|',
		map { $redis->cli('get', "mig:{cache}:$_") } qw(version run_id flushed)),
	"1|$run_id|1|$run_id",
	'upgrade: version, run_id and flushed renamed');
is($redis->cli('hget', 'mig:{cache}:versions', '1'), '1000',
	'upgrade: the history of versions renamed');
is($redis->cli('smembers', 'mig:{cache}:families'), 'order:*',
	'upgrade: the owned families renamed');
my $log = slurp_file($node->logfile, $log_offset);
like($log, qr/renamed the cache version bookkeeping keys of prefix "mig:"/,
	'upgrade: the renaming is logged');
unlike($log, qr/cache version initialized to "1" for prefix "mig:"/,
	'upgrade: not taken for a first run');

# (b) a new version deployed with the upgrade: one flush, as with 1.6, of
# the owned keys, the renamed families included
$redis->cli("SET mig2:cache:version old-deploy\nHSET mig2:cache:versions old-deploy 1000\n"
	  . "SET mig2:cache:run_id $run_id\nSET mig2:cache:flushed old-deploy|$run_id\n"
	  . "SADD mig2:cache:families order:*\nSET mig2:order:1 stale\n"
	  . "SET mig2:tenant:id:1 stale\nSET mig2:session:abc user-2\n");
$log_offset = -s $node->logfile;
is( $node->safe_psql('postgres',
		q{SET redis_cache.key_prefix = 'mig2:';
		  SELECT coalesce(cache_get('tenant:id:1'), 'miss'), stored FROM cache_version()}),
	'miss|1', 'upgrade with a new version: flushed, the new version in force');
is($redis->cli('exists', 'mig2:order:1', 'mig2:tenant:id:1'), '0',
	'upgrade with a new version: owned keys (renamed families too) removed');
is($redis->cli('get', 'mig2:session:abc'), 'user-2',
	'upgrade with a new version: a key that is not cache survives');
$log = slurp_file($node->logfile, $log_offset);
like($log, qr/cache version mismatch \(stored old-deploy, expected 1\)/,
	'upgrade with a new version: the mismatch is seen, not a first run');
unlike($log, qr/cache version initialized/, 'upgrade with a new version: no first-run shortcut');

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no backend crashed');

done_testing();
