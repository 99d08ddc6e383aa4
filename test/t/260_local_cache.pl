
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# The shared-memory local cache kept coherent by Redis client-side tracking
# (issue 16), against real redis-servers:
#
#   1. settings (the fill-delay hook hidden and superuser only),
#      cache_health()->'local_cache' and the cache_stats columns; what is
#      held locally (local_cache_keys globs without key_prefix); a session
#      with another key_prefix is not held (and costs one command a read);
#      local_cache_keys reloaded: the new prefix tracked, held, invalidated;
#   2. an application write through redis-cli (SET, DEL, EXPIRE 0) is seen
#      by the next cache_get within 100 ms (20 rounds, the max in diag);
#      so are RENAME, MULTI/EXEC, a Lua script, COPY, APPEND, MOVE, SWAPDB
#      and FLUSHDB;
#   3. a commit in another backend is seen at once: a watched table
#      (template tenant:id:{id}) updated in session A, cache_get in session
#      B right after COMMIT returns; a pattern template; cache_set and
#      cache_delete of another backend; a cache_query result over that
#      table refreshed at once; a commit on another PostgreSQL server
#      sharing the Redis seen within 100 ms;
#   4. local hits make no Redis round trip (INFO commandstats: get and
#      evalsha calls unchanged over 1000 cache_get and 100 cache_query
#      local hits, also prepared, and cache_get_bytea; local_hits grew by
#      as much);
#   5. TTL: SET ... EX 1 and EXPIRE 1 of a held key are not served after
#      they expired, with Redis' active expiry off (no invalidation comes:
#      only the local TTL can end the entry), also when the fill was
#      delayed; local_max_age honoured;
#   6. the stale-fill race made deterministic with local_fill_delay_ms: an
#      invalidation (redis-cli SET; a commit bumping a cache_query
#      generation) arriving between the read and the fill discards the
#      fill (local_discards);
#   7. a Redis restart, a FLUSHALL, a killed tracking connection (found by
#      its flags P, then t; one new subscription replaces it), a PUBLISH on
#      the invalidation channel and a new cache version each empty the
#      local cache (local_flushes, epoch, entries 0); writes made meanwhile
#      whose invalidation was lost are never hidden by an old entry;
#   8. a race of application writers (SET/DEL/PEXPIRE from two clients on
#      raw sockets) against pgbench readers doing cache_get on the same 20
#      keys for RC_LOCAL_RACE_SECONDS (default 30): at quiescence (writers
#      stopped, TTLs run out, a tracking heartbeat since) every key equals
#      redis-cli GET;
#   9. local_serve_on_error: 30 s, Redis SIGSTOPped: held keys still served
#      (state lost), a local commit still removes its key, other keys miss
#      within the timeouts; 0: misses; after SIGCONT the cache is emptied
#      before serving again and a write queued during the pause is seen;
#  10. local_cache_size respected (a restart with 1MB): entries stop
#      growing, evictions counted, used_bytes <= size_bytes, coherence
#      after the ring wrapped (writes, cache_delete_pattern); size 0:
#      disabled, nothing held, no tracking connection;
#  11. a Redis Cluster (3 masters, 1 replica each): one tracking
#      subscription per master and none on replicas, keys on every master
#      invalidated by redis-cli -c writes; a graceful CLUSTER FAILOVER
#      (the old master's connection stays open) empties the local cache,
#      moves the subscription to the new master, and a write there is
#      seen.
#
# RC_LOCAL_RACE_SECONDS sets the race's length; RC_LOCAL_FORCE=1 runs every
# section even when the local cache never reaches state tracking (to check
# the script itself against a build without the tracking worker).
#
# Assertions are on states and counters (cache_health, cache_stats, INFO
# commandstats, CLIENT LIST); waits poll with deadlines.  The only
# wall-clock bounds are the ones the feature promises (100 ms, TTLs,
# local_max_age).

use strict;
use warnings;

use IO::Socket::INET;
use JSON::PP;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Cluster;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(time usleep);

my $timeout = $PostgreSQL::Test::Utils::timeout_default;
my $race_seconds = $ENV{RC_LOCAL_RACE_SECONDS} || 30;
my $P = 'lc:';    # key_prefix: local_cache_keys match keys without it

my $LOCAL_CONF = qq{
redis_cache.key_prefix = '$P'
redis_cache.local_cache_size = '64MB'
redis_cache.local_cache_keys = 'tenant:*, settings:*'
};

# DEBUG SET-ACTIVE-EXPIRE (section 5) needs the debug command
my $redis = RedisCache::Server->new('local', args => [ '--enable-debug-command', 'yes' ]);
$redis->start;
my $node = $redis->new_pg_node('local', conf => $LOCAL_CONF);
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION redis_cache;
CREATE TABLE tenants (id int PRIMARY KEY, name text);
INSERT INTO tenants SELECT g, 'name' || g FROM generate_series(1, 100) g;
SELECT cache_watch('tenants', 'tenant:id:{id}');
CREATE TABLE orgs (id int PRIMARY KEY, locale text);
INSERT INTO orgs SELECT g, 'en' FROM generate_series(1, 10) g;
SELECT cache_watch('orgs', 'settings:org:{id}:*');});

# ---------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------
my $N = $node;    # the node the helpers talk to

sub sql { return $N->safe_psql('postgres', $_[0]); }

# cache_health()->'local_cache' of a fresh session, decoded ({} if absent)
sub lc_health
{
	my ($on) = @_;
	my $j = ($on // $N)->safe_psql('postgres',
		"SELECT coalesce(cache_health()::jsonb->'local_cache', '{}')");
	return eval { decode_json($j) } // {};
}

sub lc_state { return lc_health($_[0])->{state} // 'NULL'; }

# The totals row of cache_stats as a hash (missing columns: undef)
sub totals
{
	my ($on) = @_;
	my $j = ($on // $N)->safe_psql('postgres',
		'SELECT to_jsonb(s) FROM cache_stats s WHERE family IS NULL');
	return eval { decode_json($j) } // {};
}

# the same from a background session (no new login)
sub bg_totals
{
	my ($bg) = @_;
	my $j = bgq($bg, 'SELECT to_jsonb(s) FROM cache_stats s WHERE family IS NULL');
	return eval { decode_json($j) } // {};
}

# A query in a background psql; stderr (warnings) is dropped
sub bgq
{
	my ($bg, $q) = @_;
	$bg->{stderr} = '';
	my $out = $bg->query($q);
	$bg->{stderr} = '';
	return $out;
}

# quit, whatever the session's timer says (it runs while the session idles)
sub bg_quit { my ($bg) = @_; eval { $bg->quit; }; return; }

sub new_bg
{
	my ($on) = @_;
	my $bg = ($on // $N)->background_psql('postgres', on_error_stop => 0);
	$bg->set_query_timer_restart;
	return $bg;
}

# Reads with $sql until one read is $n local hits (default 1) returning
# $expect (if given): the entry is then held.  A fill may be discarded, by
# design, when an invalidation arrives between its read and its install,
# such as the tracking echo of the write that just stored the key.
sub hold
{
	my ($bg, $sql, $n, $expect) = @_;
	$n //= 1;
	for (1 .. 50)
	{
		my $h0 = bg_totals($bg)->{local_hits};
		my $v = bgq($bg, $sql);
		return 1 if bg_totals($bg)->{local_hits} - $h0 >= $n && (!defined $expect || $v eq $expect);
	}
	return 0;
}

# calls of a command in INFO commandstats (0 if never called)
sub calls
{
	my ($cmd, $server) = @_;
	my $info = ($server // $redis)->cli('info', 'commandstats') // '';
	return $info =~ /^cmdstat_\Q$cmd\E:calls=(\d+)/m ? $1 : 0;
}

sub poll_for
{
	my ($what, $secs, $check) = @_;
	my $deadline = time() + $secs;
	while (time() < $deadline)
	{
		return 1 if $check->();
		usleep(20_000);
	}
	fail("$what (timed out after $secs s)");
	return 0;
}

sub wait_tracking
{
	my ($what, $on, $secs) = @_;
	return poll_for("$what: local cache back to tracking", $secs // $timeout,
		sub { lc_state($on) eq 'tracking' });
}

sub set_conf
{
	my ($name, $value, $on) = @_;
	$on //= $N;
	$on->safe_psql('postgres', defined $value
		? "ALTER SYSTEM SET $name = '$value'"
		: "ALTER SYSTEM RESET $name");
	$on->reload;
	# the worker and idle backends read the file at their next SIGHUP
	# processing; a fresh session shows the setting once the postmaster has
	my $want = defined $value ? "'$value'" : 'boot_val';
	$on->poll_query_until('postgres',
		"SELECT setting = $want FROM pg_settings WHERE name = '$name'")
	  or diag("$name not reloaded");
	return;
}

# the tracking clients on a redis-server: CLIENT LIST entries as hashes
sub clients
{
	my ($server) = @_;
	my @c;
	for my $line (split /\n/, ($server // $redis)->cli('client', 'list') // '')
	{
		my %h = map { /^([^=]+)=(.*)$/ ? ($1 => $2) : () } split / /, $line;
		push @c, \%h if %h;
	}
	return @c;
}

sub pubsub_clients { return grep { $_->{flags} =~ /P/ } clients(@_); }
sub tracking_clients { return grep { $_->{flags} =~ /t/ } clients(@_); }

# ---------------------------------------------------------------------
# 1. the surface
# ---------------------------------------------------------------------
my %settings = map { split /\|/ } split /\n/, sql(q{
SELECT name || '|' || context || ':' || coalesce(unit, '') || ':' || boot_val
  FROM pg_settings WHERE name LIKE 'redis_cache.local%'});
note explain \%settings;
for my $s (
	[ 'redis_cache.local_cache_size', qr/^postmaster:/ ],
	[ 'redis_cache.local_cache_keys', qr/^sighup::$/ ],
	[ 'redis_cache.local_cache_queries', qr/^sighup::on$/ ],
	[ 'redis_cache.local_max_age', qr/^sighup:s:60$/ ],
	[ 'redis_cache.local_serve_on_error', qr/^sighup:s:0$/ ])
{
	like($settings{ $s->[0] } // 'missing', $s->[1], "setting $s->[0] (context:unit:default)");
}
like($settings{'redis_cache.local_cache_size'} // '', qr/^postmaster:(kB|MB|8kB|B):0$/,
	'local_cache_size is a memory setting, 0 (off) by default');
# the test hook: hidden from SHOW ALL (so from pg_settings), superuser only
is(sql("SELECT current_setting('redis_cache.local_fill_delay_ms')"), '0', 'local_fill_delay_ms exists, 0 by default');
{
	my ($ret, $out, $err) = $N->psql('postgres', q{
CREATE ROLE lc_user LOGIN;
SET ROLE lc_user;
SET redis_cache.local_fill_delay_ms = 10;});
	like($err, qr/permission denied to set parameter "redis_cache\.local_fill_delay_ms"/,
		'local_fill_delay_ms: superuser only');
}

my $tracking_ok = poll_for('the local cache reaches state tracking', $timeout,
	sub { lc_state() eq 'tracking' });
my $h = lc_health();
note 'cache_health local_cache: ' . encode_json($h);
for my $f (qw(state size_bytes used_bytes entries epoch masters prefixes heartbeat_age_ms))
{
	ok(exists $h->{$f}, "cache_health local_cache has $f");
}
is($h->{masters}, 1, 'standalone: one master tracked');
is($h->{size_bytes}, 64 * 1024 * 1024, 'size_bytes is local_cache_size');
my @prefixes = @{ ref $h->{prefixes} eq 'ARRAY' ? $h->{prefixes} : [] };
ok((grep { $_ eq "${P}tenant:" } @prefixes) && (grep { $_ eq "${P}settings:" } @prefixes),
	'the tracked prefixes include the key_prefix and the globs\' literal parts')
  or diag("prefixes: @prefixes");
my $t = totals();
for my $c (qw(local_hits local_fills local_invalidations local_evictions local_flushes local_discards))
{
	ok(exists $t->{$c}, "cache_stats has $c");
}
my @trk = tracking_clients();
my @sub = pubsub_clients();
note 'tracking clients: ' . join('; ', map { "id=$_->{id} flags=$_->{flags} cmd=$_->{cmd}" } @trk, @sub);
cmp_ok(scalar(@sub), '==', 1, 'one pubsub (invalidation) connection on Redis');

unless ($tracking_ok || $ENV{RC_LOCAL_FORCE})
{
	diag('local cache never reached state tracking: ' . encode_json(lc_health()));
	done_testing();
	exit 0;
}

# what is held locally: keys matching local_cache_keys (without key_prefix)
{
	$redis->cli('set', "${P}tenant:w", 'a');
	$redis->cli('set', "${P}other:w", 'b');
	$redis->cli('set', "${P}settingsx", 'c');
	my $bg = new_bg();
	bgq($bg, "SELECT cache_get('other:w'), cache_get('settingsx')");
	hold($bg, "SELECT cache_get('tenant:w')");
	my $t0 = bg_totals($bg);
	my $g0 = calls('get');
	my $out = bgq($bg, "SELECT cache_get('tenant:w') || cache_get('other:w') || cache_get('settingsx')");
	my $t1 = bg_totals($bg);
	my $g1 = calls('get');
	is($out, 'abc', 'values read through the local cache and Redis');
	is($t1->{local_hits} - $t0->{local_hits}, 1, 'only the tenant:* key was a local hit');
	is($g1 - $g0, 2, 'the keys not matching the globs went to Redis');
	bg_quit($bg);
}

# a session with another key_prefix: its keys are outside the tracked
# prefixes, so they are not held (nothing would invalidate them)
{
	my $bg = new_bg();
	bgq($bg, "SET redis_cache.key_prefix = 'alt:'");
	$redis->cli('set', 'alt:tenant:p', 'one');
	bgq($bg, "SELECT cache_get('tenant:p')") for 1 .. 2;
	my $h0 = bg_totals($bg)->{local_hits};
	my ($g0, $p0) = (calls('get'), calls('pttl'));
	is(bgq($bg, "SELECT cache_get('tenant:p')"), 'one', 'key_prefix alt: read from Redis');
	is(bg_totals($bg)->{local_hits} - $h0, 0, 'key_prefix alt: not held locally (outside the tracked prefixes)');
	# nothing can be installed: one GET, no PTTL for a fill that cannot be
	is((calls('get') - $g0) . ' ' . (calls('pttl') - $p0), '1 0',
		'key_prefix alt: a read that cannot fill costs one command (GET, no PTTL)');
	$redis->cli('set', 'alt:tenant:p', 'two');
	is(bgq($bg, "SELECT cache_get('tenant:p')"), 'two', 'key_prefix alt: an application write is seen at once');
	bg_quit($bg);
}

# local_cache_keys changed by a reload: the worker tracks the new prefix,
# then its keys are held and invalidated
{
	set_conf('redis_cache.local_cache_keys', 'tenant:*, settings:*, extra:*');
	poll_for('reload: the new prefix is tracked', 30, sub {
		my $h = lc_health();
		return $h->{state} eq 'tracking' && grep { $_ eq "${P}extra:" } @{ $h->{prefixes} // [] };
	});
	my $bg = new_bg();
	$redis->cli('set', "${P}extra:k", 'one');
	hold($bg, "SELECT cache_get('extra:k')");
	my $h0 = bg_totals($bg)->{local_hits};
	bgq($bg, "SELECT cache_get('extra:k')");
	is(bg_totals($bg)->{local_hits} - $h0, 1, 'reload: keys of the new glob are held locally');
	$redis->cli('set', "${P}extra:k", 'two');
	my $t0 = time();
	my $v = '';
	$v = bgq($bg, "SELECT cache_get('extra:k')") until $v eq 'two' || time() > $t0 + 5;
	my $ms = (time() - $t0) * 1000;
	ok($v eq 'two' && $ms <= 100, sprintf('reload: an application write on the new prefix seen within 100 ms (%.1f ms)', $ms));
	bg_quit($bg);
}

# ---------------------------------------------------------------------
# 2. application writes through redis-cli, seen within 100 ms
# ---------------------------------------------------------------------
{
	my $bg = new_bg();
	my $k = 'tenant:app';
	my @delays;
	my $not_local = 0;
	for my $i (1 .. 20)
	{
		$redis->cli('set', "$P$k", "v$i");
		# fill, then a local hit
		$not_local++ unless hold($bg, "SELECT cache_get('$k')", 1, "v$i");
		# the write: SET, DEL or EXPIRE 0, then poll until the next
		# cache_get sees it
		my ($cmd, $expect) =
			$i % 3 == 0 ? ([ 'set', "$P$k", "w$i" ], "w$i")
		  : $i % 3 == 1 ? ([ 'del', "$P$k" ], '')
		  : ([ 'expire', "$P$k", '0' ], '');
		$redis->cli(@$cmd);
		my $t0 = time();
		my $seen;
		while (time() < $t0 + 5)
		{
			$seen = bgq($bg, "SELECT cache_get('$k')");
			last if $seen eq $expect;
		}
		push @delays, $seen eq $expect ? (time() - $t0) * 1000 : 5000;
	}
	my ($max) = sort { $b <=> $a } @delays;
	diag(sprintf('application write -> next cache_get sees it: max %.1f ms, median %.1f ms over %d rounds (SET/DEL/EXPIRE 0)',
		$max, (sort { $a <=> $b } @delays)[ @delays / 2 ], scalar @delays));
	is($not_local, 0, 'each round the value was held locally (a local hit) before the write');
	cmp_ok($max, '<=', 100, 'every application write was seen by the next cache_get within 100 ms');
	bg_quit($bg);
}

# other ways an application changes a key: each seen by the next cache_get
{
	my $bg = new_bg();
	my $k = "${P}tenant:other";
	my @cases = (
		[ 'RENAME onto it', "SET ${P}tenant:src renamed\nRENAME ${P}tenant:src $k", 'renamed' ],
		[ 'MULTI/EXEC', "MULTI\nSET $k multi\nEXEC", 'multi' ],
		[ 'a Lua script', "EVAL \"return redis.call('SET', KEYS[1], 'lua')\" 1 $k", 'lua' ],
		[ 'COPY ... REPLACE', "SET ${P}settings:copysrc copied\nCOPY ${P}settings:copysrc $k REPLACE", 'copied' ],
		[ 'APPEND', "APPEND $k +", undef ],
		[ 'MOVE from another database', "DEL $k\nSELECT 1\nSET $k moved\nMOVE $k 0", 'moved' ],
		[ 'SWAPDB', "SELECT 1\nSET $k swapped\nSWAPDB 0 1", 'swapped' ],
		[ 'FLUSHDB of the database', "FLUSHDB", '' ],
	);
	for my $c (@cases)
	{
		my ($what, $cmds, $expect) = @$c;
		$redis->cli('set', $k, "before-$what");
		$redis->cli("SELECT 1\nDEL $k") if $what eq 'SWAPDB';
		if (!hold($bg, "SELECT cache_get('tenant:other')", 1, "before-$what"))
		{
			fail("$what: the key was held locally before");
			next;
		}
		$expect //= "before-$what+";
		$redis->cli("$cmds\n");    # on standard input, one command a line
		my $t0 = time();
		my $v;
		while (time() < $t0 + 3)
		{
			$v = bgq($bg, "SELECT coalesce(cache_get('tenant:other'), '')");
			last if $v eq $expect;
		}
		my $ms = (time() - $t0) * 1000;
		ok($v eq $expect && $ms <= 100, sprintf('%s: seen by the next cache_get (%.1f ms)', $what, $ms))
		  or diag("$what: got '$v', Redis has '" . ($redis->cli('get', $k) // '') . "'");
		$redis->cli('swapdb', '0', '1') if $what eq 'SWAPDB';    # back
	}
	bg_quit($bg);
}

# ---------------------------------------------------------------------
# 3. a commit in another backend is seen at once
# ---------------------------------------------------------------------
{
	my $a = new_bg();
	my $b = new_bg();
	my ($stale, $held) = (0, 0);
	for my $i (1 .. 20)
	{
		my $id = $i;
		bgq($a, "SELECT cache_set('tenant:id:$id', (SELECT name FROM tenants WHERE id = $id))");
		$held++ if hold($b, "SELECT cache_get('tenant:id:$id')", 1, "name$id");
		# autocommit: the UPDATE's COMMIT has returned when query() does
		bgq($a, "UPDATE tenants SET name = 'new$i' WHERE id = $id");
		my $v = bgq($b, "SELECT coalesce(cache_get('tenant:id:$id'), '<null>')");
		$stale++ unless $v eq '<null>';
	}
	is($held, 20, 'commit: the key was held locally by session B before each UPDATE');
	is($stale, 0, 'commit: cache_get in B right after A\'s COMMIT returned never served the old value');

	# inside an explicit transaction, and a delete plus a new value
	bgq($a, "SELECT cache_set('tenant:id:21', 'old')");
	hold($b, "SELECT cache_get('tenant:id:21')");
	bgq($a, "BEGIN; UPDATE tenants SET name = 'x21' WHERE id = 21; COMMIT;");
	is(bgq($b, "SELECT coalesce(cache_get('tenant:id:21'), '<null>')"), '<null>',
		'commit of BEGIN ... COMMIT: B sees the deletion at once');

	# a pattern template (settings:org:{id}:*): every held key under it goes
	bgq($a, "SELECT cache_set('settings:org:5:' || k, 'old') FROM unnest(ARRAY['locale', 'tz', 'plan']) k");
	ok(hold($b, "SELECT count(cache_get('settings:org:5:' || k)) FROM unnest(ARRAY['locale', 'tz', 'plan']) k", 3),
		'pattern template: three keys held locally');
	bgq($a, "UPDATE orgs SET locale = 'de' WHERE id = 5");
	is(bgq($b, "SELECT count(cache_get('settings:org:5:' || k)) FROM unnest(ARRAY['locale', 'tz', 'plan']) k"), '0',
		'pattern template: B misses every key under the pattern right after A\'s COMMIT');

	# cache_set and cache_delete by another backend (no commit involved)
	my ($set_stale, $del_stale) = (0, 0);
	for my $i (1 .. 10)
	{
		bgq($a, "SELECT cache_set('settings:s$i', 'one')");
		hold($b, "SELECT cache_get('settings:s$i')");
		bgq($a, "SELECT cache_set('settings:s$i', 'two')");
		$set_stale++ unless bgq($b, "SELECT cache_get('settings:s$i')") eq 'two';
		bgq($a, "SELECT cache_delete('settings:s$i')");
		$del_stale++ unless bgq($b, "SELECT coalesce(cache_get('settings:s$i'), '<null>')") eq '<null>';
	}
	is($set_stale, 0, 'cache_set in A: B\'s next cache_get returns the new value at once');
	is($del_stale, 0, 'cache_delete in A: B\'s next cache_get misses at once');

	# a cache_query result over the watched table
	my $Q = q{cache_query_json('SELECT name FROM tenants WHERE id = $1', ARRAY['50'])};
	hold($b, "SELECT $Q");
	my $h0 = bg_totals($b)->{local_hits};
	my $e0 = calls('evalsha');
	my $v = bgq($b, "SELECT $Q");
	ok(bg_totals($b)->{local_hits} == $h0 + 1 && calls('evalsha') == $e0,
		'cache_query: the result is a local hit (no EVALSHA)') or diag("got $v");
	my $qstale = 0;
	for my $i (1 .. 10)
	{
		bgq($a, "UPDATE tenants SET name = 'q$i' WHERE id = 50");
		my $r = bgq($b, "SELECT $Q->>0");
		$qstale++ unless ($r // '') =~ /"q$i"/;
		bgq($b, "SELECT $Q");    # fill again
	}
	is($qstale, 0, 'cache_query: the result is refreshed right after each COMMIT of another backend');
	# the same after an UPDATE in the reading backend itself
	bgq($b, "UPDATE tenants SET name = 'own' WHERE id = 50");
	like(bgq($b, "SELECT $Q"), qr/"own"/, 'cache_query: read-your-writes in the same backend');
	bg_quit($a);
	bg_quit($b);
}

# a commit on another PostgreSQL server sharing the Redis: its deletes
# reach this server's local cache through tracking
{
	my $other = $redis->new_pg_node('other', conf => "redis_cache.key_prefix = '$P'\n");
	$other->start;
	$other->safe_psql('postgres', q{
CREATE EXTENSION redis_cache;
CREATE TABLE tenants (id int PRIMARY KEY, name text);
INSERT INTO tenants SELECT g, 'name' || g FROM generate_series(1, 100) g;
SELECT cache_watch('tenants', 'tenant:id:{id}');});
	my $bg = new_bg();
	my ($held, $late, $maxd) = (0, 0, 0);
	for my $id (81 .. 90)
	{
		$other->safe_psql('postgres', "SELECT cache_set('tenant:id:$id', 'there$id')");
		$held++ if hold($bg, "SELECT cache_get('tenant:id:$id')", 1, "there$id");
		$other->safe_psql('postgres', "UPDATE tenants SET name = 'moved' WHERE id = $id");
		my $t0 = time();
		my $v = 'x';
		$v = bgq($bg, "SELECT coalesce(cache_get('tenant:id:$id'), '')") until $v eq '' || time() > $t0 + 3;
		my $d = (time() - $t0) * 1000;
		$maxd = $d if $d > $maxd;
		$late++ if $v ne '' || $d > 100;
	}
	note sprintf('a commit on the other server -> seen here: max %.1f ms', $maxd);
	is($held, 10, 'other server: its keys held locally here');
	is($late, 0, 'other server: each of its commits seen here within 100 ms');
	bg_quit($bg);
	$other->stop;
}

# ---------------------------------------------------------------------
# 4. local hits make no Redis round trip
# ---------------------------------------------------------------------
{
	my $bg = new_bg();
	$redis->cli('set', "${P}tenant:hot", 'hotvalue');
	hold($bg, "SELECT cache_get('tenant:hot')");
	my $Q = q{cache_query_json('SELECT id, name FROM tenants WHERE id <= 3')};
	hold($bg, "SELECT $Q");
	my $t0 = bg_totals($bg);
	my ($g0, $e0) = (calls('get'), calls('evalsha'));
	my $n = bgq($bg, "SELECT count(*) FROM generate_series(1, 1000) WHERE cache_get('tenant:hot') = 'hotvalue'");
	my $nq = bgq($bg, "SELECT count(*) FROM generate_series(1, 100) g WHERE jsonb_array_length($Q) = 3");
	my $t1 = bg_totals($bg);
	my ($g1, $e1) = (calls('get'), calls('evalsha'));
	is("$n $nq", '1000 100', '1000 cache_get and 100 cache_query hits return the value');
	is($g1 - $g0, 0, 'no GET reached Redis over 1000 local cache_get hits');
	is($e1 - $e0, 0, 'no EVALSHA reached Redis over 100 local cache_query hits');
	is($t1->{local_hits} - $t0->{local_hits}, 1100, 'local_hits grew by 1100');
	# the same through a prepared statement (as pgbench -M prepared and
	# most drivers run it): the call site keeps its prepared query
	bgq($bg, q{PREPARE lq(int) AS SELECT cache_query_json('SELECT name FROM tenants WHERE id = $1', ARRAY[$1::text])});
	bgq($bg, "EXECUTE lq($_)") for 1 .. 3;    # shape learned, results stored
	my $ok = 1;
	for my $id (1 .. 3)
	{
		$ok = 0 unless hold($bg, "EXECUTE lq($id)");
	}
	my ($ph, $pe) = (bg_totals($bg)->{local_hits}, calls('evalsha'));
	my $got = join(',', map { bgq($bg, "EXECUTE lq($_)") } 1 .. 3);
	ok($ok && bg_totals($bg)->{local_hits} - $ph == 3 && calls('evalsha') == $pe,
		'a prepared cache_query_json is served locally (3 hits, no EVALSHA)')
	  or diag("prepared: held $ok, local hits +" . (bg_totals($bg)->{local_hits} - $ph)
		  . ", evalsha +" . (calls('evalsha') - $pe) . ": $got");

	my $b0 = calls('get');
	my $bh = bg_totals($bg)->{local_hits};
	is(bgq($bg, "SELECT convert_from(cache_get_bytea('tenant:hot'), 'UTF8')"), 'hotvalue',
		'cache_get_bytea reads the value');
	ok(bg_totals($bg)->{local_hits} - $bh >= 1 && calls('get') == $b0,
		'cache_get_bytea is served locally too (no GET)');
	cmp_ok($t1->{hits} - $t0->{hits}, '>=', 1100, 'a local hit also counts in hits');
	bg_quit($bg);
}

# ---------------------------------------------------------------------
# 5. TTL and local_max_age
# ---------------------------------------------------------------------
{
	# no active expiry: an expired key is only removed when read in Redis,
	# so no invalidation tells the local cache
	is($redis->cli('debug', 'set-active-expire', '0'), 'OK', 'Redis active expiry off');
	my $bg = new_bg();
	for my $how ('set ex 1', 'expire 1')
	{
		my $k = $how eq 'set ex 1' ? 'tenant:ttl1' : 'tenant:ttl2';
		my $t_set;
		# the key expires in Redis at most 1 s after the command returned
		if ($how eq 'set ex 1')
		{
			$redis->cli('set', "$P$k", 'short', 'px', '1000');
		}
		else
		{
			$redis->cli('set', "$P$k", 'short');
			hold($bg, "SELECT cache_get('$k')");    # held without TTL
			$redis->cli('pexpire', "$P$k", '1000');
		}
		$t_set = time();
		my $h0 = bg_totals($bg)->{local_hits};
		my ($served_late, $first_null, $reads) = (0, undef, 0);
		while (time() < $t_set + 3)
		{
			# the time before the read: a read sent before the TTL ran
			# out may be answered just after it
			my $sent = time();
			my $v = bgq($bg, "SELECT coalesce(cache_get('$k'), '<null>')");
			my $now = time();
			$reads++;
			$served_late++ if $v eq 'short' && $sent > $t_set + 1.0;
			$first_null //= $now - $t_set if $v eq '<null>';
			usleep(10_000);
		}
		my $local = bg_totals($bg)->{local_hits} - $h0;
		note sprintf("%s: %d reads, %d local hits, first miss %.0f ms after the write",
			$how, $reads, $local, ($first_null // 99) * 1000);
		cmp_ok($local, '>', 0, "$how: the key was served locally before it expired");
		is($served_late, 0, "$how: never served after its Redis TTL");
	}
	# the TTL counts from the read, not from the fill: a fill delayed by
	# local_fill_delay_ms (standing for a slow reply path) must not outlive
	# the key's Redis TTL
	{
		my $k = 'tenant:ttl3';
		$redis->cli('set', "$P$k", 'short', 'px', '2000');
		my $t_set = time();
		my $s = RedisCache::Server::start_psql($N,
			'SET redis_cache.local_fill_delay_ms = 1500', "SELECT cache_get('$k')");
		RedisCache::Server::finish_psql($s);
		my ($late, $reads) = (0, 0);
		while (time() < $t_set + 3.4)
		{
			my $sent = time();
			my $v = bgq($bg, "SELECT coalesce(cache_get('$k'), '<null>')");
			$reads++;
			$late++ if $v eq 'short' && $sent > $t_set + 2.0;
			usleep(10_000);
		}
		note "delayed fill: $reads reads, $late served after the TTL";
		is($s->{out}, 'short', 'delayed fill: the reader got the value');
		is($late, 0, 'delayed fill: the entry is not served after the key\'s Redis TTL (TTL counted from the read)');
	}
	$redis->cli('debug', 'set-active-expire', '1');

	# local_max_age: an entry is refetched from Redis after that long
	set_conf('redis_cache.local_max_age', '2');
	bg_quit($bg);
	$bg = new_bg();
	$redis->cli('set', "${P}tenant:age", 'aged');
	bgq($bg, "SELECT cache_get('tenant:age')");
	my $t_fill = time();
	my $g0 = calls('get');
	my $refetch;
	while (time() < $t_fill + 6)
	{
		bgq($bg, "SELECT cache_get('tenant:age')");
		if (calls('get') > $g0) { $refetch = time() - $t_fill; last; }
		usleep(50_000);
	}
	note sprintf('local_max_age = 2: refetched from Redis %.2f s after the fill',
		$refetch // -1);
	ok(defined $refetch && $refetch <= 2.5 && $refetch >= 1.0,
		'local_max_age: the entry was refetched from Redis after about 2 s');
	set_conf('redis_cache.local_max_age', undef);
	bg_quit($bg);
}

# ---------------------------------------------------------------------
# 6. the stale-fill race, made deterministic
# ---------------------------------------------------------------------
{
	my $locker = new_bg();
	$redis->cli('set', "${P}tenant:x", 'v1');
	my $d0 = totals()->{local_discards};
	bgq($locker, 'SELECT pg_advisory_lock(4242)');
	my $s = RedisCache::Server::start_psql($N,
		'SET redis_cache.local_fill_delay_ms = 1500',
		'SELECT pg_advisory_lock_shared(4242)',
		"SELECT cache_get('tenant:x')");
	$N->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
		WHERE wait_event = 'advisory' AND query LIKE '%4242%' AND pid <> pg_backend_pid()})
	  or diag('the reader did not wait for the lock');
	my $g0 = calls('get');
	bgq($locker, 'SELECT pg_advisory_unlock(4242)');
	# the reader's GET has been answered: it now sleeps before the fill
	poll_for('the reader sent its GET', 10, sub { calls('get') > $g0 });
	my $t_read = time();
	$redis->cli('set', "${P}tenant:x", 'v2');
	my $during = time() - $t_read;
	RedisCache::Server::finish_psql($s);
	my $elapsed = time() - $t_read;
	my ($got) = reverse split /\n/, $s->{out};
	is($got, 'v1', 'race: the delayed reader returns what it read (v1)');
	cmp_ok($during, '<', 1.0, 'race: the SET came within the fill delay');
	cmp_ok($elapsed, '>', 1.0, 'race: the reader did sleep (local_fill_delay_ms applied)');
	is(sql("SELECT cache_get('tenant:x')"), 'v2', 'race: afterwards cache_get returns v2');
	is(sql("SELECT cache_get('tenant:x')"), 'v2', 'race: and again (no v1 entry held)');
	is(totals()->{local_discards} - $d0, 1, 'race: local_discards grew by one');

	# the same for cache_query: a result stored in Redis (by another
	# session's miss, which fills nothing locally) is read by A, whose fill
	# is delayed; meanwhile a commit bumps the table's generation
	my $Q = q{SELECT name FROM tenants WHERE id = $1};
	sql("SELECT cache_query_json('$Q', ARRAY['60'])");
	$d0 = totals()->{local_discards};
	bgq($locker, 'SELECT pg_advisory_lock(4243)');
	$s = RedisCache::Server::start_psql($N,
		'SET redis_cache.local_fill_delay_ms = 1500',
		"SELECT cache_query_json('$Q', ARRAY['61'])",    # the backend learns the shape
		'SELECT pg_advisory_lock_shared(4243)',
		"SELECT cache_query_json('$Q', ARRAY['60'])->0->>'name'");
	$N->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
		WHERE wait_event = 'advisory' AND query LIKE '%4243%' AND pid <> pg_backend_pid()})
	  or diag('the query reader did not wait for the lock');
	# the lookup is pipelined with a PTTL only when a local fill is begun
	my $p0 = calls('pttl');
	bgq($locker, 'SELECT pg_advisory_unlock(4243)');
	poll_for('the query reader looked its result up in Redis', 5, sub { calls('pttl') > $p0 });
	sql("UPDATE tenants SET name = 'after60' WHERE id = 60");
	RedisCache::Server::finish_psql($s);
	my ($last) = reverse split /\n/, $s->{out};
	is($last, 'name60', 'query race: the delayed reader returns the result it read');
	is(sql("SELECT cache_query_json('$Q', ARRAY['60'])->0->>'name'"), 'after60',
		'query race: afterwards cache_query returns the committed value');
	cmp_ok(totals()->{local_discards} - $d0, '>=', 1, 'query race: the fill was discarded');
	bg_quit($locker);
}

# ---------------------------------------------------------------------
# 7. restart, FLUSHALL, killed tracking connections empty the local cache
# ---------------------------------------------------------------------
my @fk = map { "tenant:f:$_" } 1 .. 20;

# fill @fk with value $v; returns whether all were held (local hits)
sub fill_fk
{
	my ($bg, $v) = @_;
	$redis->cli(join('', map { "SET $P$_ $v\n" } @fk));
	return hold($bg, "SELECT count(*) FROM unnest(ARRAY['" . join("','", @fk)
		  . "']) k WHERE cache_get(k) = '$v'", scalar(@fk), scalar(@fk));
}

sub read_fk
{
	my ($bg) = @_;
	return bgq($bg, "SELECT string_agg(coalesce(cache_get(k), '<null>'), ' ') FROM unnest(ARRAY['"
		  . join("','", @fk) . "']) k");
}

sub flush_case
{
	my ($what, $fault, $expect) = @_;
	my $bg = new_bg();
	ok(fill_fk($bg, 'old'), "$what: 20 keys held locally");
	my $t0 = totals();
	my $h0 = lc_health();
	cmp_ok($h0->{entries}, '>=', 20, "$what: entries before ($h0->{entries})");
	my $left = $fault->();
	poll_for("$what: a local flush", $timeout, sub { totals()->{local_flushes} > $t0->{local_flushes} });
	my $h1 = lc_health();
	is($h1->{entries}, 0, "$what: the local cache is empty after the flush");
	cmp_ok($h1->{epoch}, '>', $h0->{epoch}, "$what: a new epoch");
	note "$what: state after the flush: $h1->{state}; left tracking: " . ($left // 'not seen');
	wait_tracking($what);
	# a miss while the backend's circuit breaker skips Redis is acceptable,
	# an old value is not; then twice what Redis holds (fill, local hit)
	my $want = join(' ', ($expect) x @fk);
	my ($old, $same) = (0, 0);
	my $reached = poll_for("$what: the values Redis holds are served", 30, sub {
		my $got = read_fk($bg);
		$old += () = $got =~ /\bold\b/g;
		$same = $got eq $want ? $same + 1 : 0;
		return $same >= 2;
	});
	is($old, 0, "$what: no old value served afterwards");
	ok($reached, "$what: then the current values, also on the next (local) read");
	bg_quit($bg);
	return;
}

flush_case('Redis restart', sub {
	$redis->stop;
	my $left;
	poll_for('Redis stopped: state leaves tracking', $timeout,
		sub { $left = lc_state(); $left ne 'tracking' });
	$redis->start;
	# new values, written before tracking is back
	$redis->cli(join('', map { "SET $P$_ new\n" } @fk));
	return $left;
}, 'new');

flush_case('FLUSHALL', sub {
	$redis->cli('flushall');
	return undef;
}, '<null>');

for my $kind ('pubsub', 'tracking')
{
	my @killed;
	flush_case("killed $kind connection", sub {
		my @c = $kind eq 'pubsub' ? pubsub_clients() : tracking_clients();
		@killed = map { $_->{id} } @c;
		if (!@c)
		{
			fail("no $kind client in CLIENT LIST");
			return undef;
		}
		# the writes in the same pipeline: their invalidations can reach
		# no connection of ours
		$redis->cli(join('', map { "CLIENT KILL ID $_->{id}\n" } @c)
			  . join('', map { "SET $P$_ new\n" } @fk));
		return undef;
	}, 'new');
	my @now = pubsub_clients();
	my %was = map { $_ => 1 } @killed;
	ok(@now == 1 && !$was{ $now[0]{id} },
		"killed $kind connection: one new tracking subscription replaces it")
	  or diag('killed ' . join(',', @killed) . '; now ' . join(',', map { "$_->{id}($_->{flags})" } @now));
}

# a client publishing on the invalidation channel: the worker cannot tell
# it from Redis' own messages' bounds, so it is a loss (README)
flush_case('a PUBLISH to __redis__:invalidate', sub {
	$redis->cli("PUBLISH __redis__:invalidate ${P}tenant:f:1\n"
		  . join('', map { "SET $P$_ new\n" } @fk));
	return undef;
}, 'new');

# a new cache version (a deploy) empties the local cache too
{
	my $bg = new_bg();
	ok(fill_fk($bg, 'old'), 'version change: 20 keys held locally');
	my $t0 = totals();
	my $e0 = lc_health()->{epoch};
	set_conf('redis_cache.version', 'deploy-2');
	poll_for('version change: a local flush', 30, sub { totals()->{local_flushes} > $t0->{local_flushes} });
	my $h1 = lc_health();
	cmp_ok($h1->{epoch}, '>', $e0, 'version change: a new epoch');
	is($h1->{entries}, 0, 'version change: the local cache is empty');
	bg_quit($bg);
	$bg = new_bg();    # a session of the new version
	wait_tracking('version change');
	ok(hold($bg, "SELECT count(*) FROM unnest(ARRAY['" . join("','", @fk) . "']) k WHERE cache_get(k) = 'old'",
		scalar(@fk), scalar(@fk)), 'version change: the keys are held again under the new version');
	bg_quit($bg);
}

# ---------------------------------------------------------------------
# 8. the race: application writers against SQL readers
# ---------------------------------------------------------------------
{
	my $nkeys = 20;
	$redis->cli(join('', map { "SET ${P}tenant:race:$_ init\n" } 0 .. $nkeys - 1));
	my $t0 = totals();
	my $end = time() + $race_seconds;
	my @writers;
	for my $w (1 .. 2)
	{
		my $pid = fork();
		die "fork: $!" unless defined $pid;
		if ($pid == 0)
		{
			srand($$ ^ int(time() * 1000));
			my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $redis->port)
			  or POSIX::_exit(2);
			my $seq = 0;
			while (time() < $end)
			{
				for (1 .. 20)
				{
					my $k = "${P}tenant:race:" . int(rand($nkeys));
					my $r = rand();
					$seq++;
					my $cmd = $r < 0.7 ? "SET $k w$w-$seq"
					  : $r < 0.85 ? "DEL $k"
					  : "PEXPIRE $k " . (50 + int(rand(500)));
					print $sock "$cmd\r\n";
					my $reply = <$sock>;
					POSIX::_exit(3) unless defined $reply;
				}
				usleep(2_000);    # ~5000 writes/s per writer at most
			}
			POSIX::_exit(0);
		}
		push @writers, $pid;
	}
	my $script = "$PostgreSQL::Test::Utils::tmp_check/race_reader.sql";
	open(my $fh, '>', $script) or die;
	print $fh "\\set id random(0, " . ($nkeys - 1) . ")\nSELECT cache_get('tenant:race:' || :id);\n";
	close $fh;
	my ($bout, $berr) = ('', '');
	my $bench = IPC::Run::start(
		[ 'pgbench', '-n', '-c', '2', '-j', '2', '-T', $race_seconds, '-f', $script,
		  '-h', $N->host, '-p', $N->port, 'postgres' ],
		'>', \$bout, '2>', \$berr, IPC::Run::timeout($race_seconds + $timeout));
	my $werr = 0;
	for my $pid (@writers)
	{
		waitpid($pid, 0);
		$werr++ if $? != 0;
	}
	my $t_stop = time();
	my $bench_ok = $bench->finish;
	is($werr, 0, 'race: the writers ran without error');
	ok($bench_ok, 'race: the pgbench readers ran without error') or diag($berr);
	my ($xacts) = $bout =~ /number of transactions actually processed: (\d+)/;
	my $writes = calls('set') + calls('del') + calls('pexpire');
	note "race: $writes SET/DEL/PEXPIRE calls on Redis so far";
	# quiescence: no key left with a TTL (the PEXPIREs have run out; PTTL
	# expires the key in Redis if it is due, which sends its invalidation),
	# then a heartbeat of the tracking connection since (Redis answers it
	# after every invalidation queued before)
	poll_for('race: no key left with a TTL', 30, sub {
		my $out = $redis->cli(join('', map { "PTTL ${P}tenant:race:$_\n" } 0 .. $nkeys - 1)) // '';
		return !grep { $_ >= 0 } split /\n/, $out;
	});
	my $t_quiet = time();
	poll_for('race: a tracking heartbeat after the writers stopped', 30, sub {
		my $hb = lc_health()->{heartbeat_age_ms};
		return defined $hb && $hb < (time() - $t_quiet) * 1000 - 5;
	});
	my $keys = join(',', map { "'tenant:race:$_'" } 0 .. $nkeys - 1);
	my %redis_now;
	my @vals = split /\n/, $redis->cli(join('', map { "GET ${P}tenant:race:$_\n" } 0 .. $nkeys - 1)), -1;
	$redis_now{$_} = $vals[$_] // '' for 0 .. $nkeys - 1;
	my $stale = 0;
	for my $pass (1, 2)
	{
		my $out = sql("SELECT string_agg(coalesce(cache_get(k), ''), E'\\n' ORDER BY o)
			FROM unnest(ARRAY[$keys]) WITH ORDINALITY AS u(k, o)");
		my @got = split /\n/, $out, -1;
		for my $i (0 .. $nkeys - 1)
		{
			next if ($got[$i] // '') eq $redis_now{$i};
			$stale++;
			diag("stale: tenant:race:$i local '" . ($got[$i] // '') . "' Redis '$redis_now{$i}' (pass $pass)");
		}
	}
	my $t1 = totals();
	diag(sprintf('race %d s: %s reads, %d local hits, %d local fills, %d local invalidations, %d discards; 0 expected stale: %d',
		$race_seconds, $xacts // '?', $t1->{local_hits} - $t0->{local_hits},
		$t1->{local_fills} - $t0->{local_fills},
		$t1->{local_invalidations} - $t0->{local_invalidations},
		$t1->{local_discards} - $t0->{local_discards}, $stale));
	cmp_ok($t1->{local_hits} - $t0->{local_hits}, '>', 0, 'race: the readers had local hits');
	cmp_ok($t1->{local_invalidations} - $t0->{local_invalidations}, '>', 0,
		'race: application writes invalidated local entries');
	is($stale, 0, 'race: 0 stale reads at quiescence (every key equals redis-cli GET)');
}

# ---------------------------------------------------------------------
# 9. local_serve_on_error
# ---------------------------------------------------------------------
{
	set_conf('redis_cache.local_serve_on_error', '30');
	my @sk = map { "tenant:soe:$_" } 1 .. 5;
	$redis->cli(join('', map { "SET $P$_ last-$_\n" } @sk) . "SET ${P}tenant:id:70 held70\n");
	my $bg = new_bg();
	bgq($bg, 'SET redis_cache.command_timeout_ms = 200');
	bgq($bg, 'SET redis_cache.connect_timeout_ms = 200');
	my $ALL = "SELECT string_agg(coalesce(cache_get(k), '<null>'), ' ') FROM unnest(ARRAY['"
	  . join("','", @sk) . "']) k";
	my $want = join(' ', map { "last-$_" } @sk);
	ok(hold($bg, $ALL, scalar(@sk)) && hold($bg, "SELECT cache_get('tenant:id:70')"),
		'serve_on_error: the keys are held locally before the pause');
	my $t0 = totals();
	my $mon = new_bg();    # a session connected before: totals and health
	bgq($mon, 'SET redis_cache.command_timeout_ms = 200');
	bgq($mon, 'SET redis_cache.connect_timeout_ms = 200');
	$redis->pause;
	poll_for('Redis paused: state lost', $timeout, sub {
		(decode_json(bgq($mon, "SELECT coalesce(cache_health()::jsonb->'local_cache', '{}')"))->{state} // '') eq 'lost';
	});
	is(bgq($bg, $ALL), $want, 'serve_on_error 30, Redis paused: held keys still served, last values');
	# a commit of this server still removes what it invalidates
	is(bgq($bg, "SELECT cache_get('tenant:id:70')"), 'held70', 'serve_on_error 30: a watched key held');
	bgq($mon, "UPDATE tenants SET name = 'during' WHERE id = 70");
	is(bgq($bg, "SELECT coalesce(cache_get('tenant:id:70'), '<null>')"), '<null>',
		'serve_on_error 30, Redis paused: a local commit removed its key from the fallback');
	my $t_miss = time();
	is(bgq($bg, "SELECT coalesce(cache_get('tenant:soe:never'), '<null>')"), '<null>',
		'serve_on_error 30, Redis paused: a key not held misses');
	my $miss_ms = (time() - $t_miss) * 1000;
	note sprintf('the miss took %.0f ms (command_timeout_ms 200)', $miss_ms);
	cmp_ok($miss_ms, '<', 2000, 'serve_on_error 30: the miss is bounded by the timeouts');

	# off: nothing served while Redis is unreachable (reload works without Redis)
	$mon->query_safe("ALTER SYSTEM SET redis_cache.local_serve_on_error = 0");
	$mon->query_safe('SELECT pg_reload_conf()');
	poll_for('serve_on_error 0 loaded', 10, sub {
		bgq($bg, "SELECT current_setting('redis_cache.local_serve_on_error')") =~ /^0/;
	});
	is(bgq($bg, $ALL), join(' ', ('<null>') x @sk), 'serve_on_error 0, Redis paused: held keys miss');

	# a write queued in the paused server's socket: it runs on SIGCONT, while
	# the local cache still holds last-tenant:soe:1
	my ($cin, $cout, $cerr) = ('', '', '');
	my $w = IPC::Run::start([ 'redis-cli', '-h', '127.0.0.1', '-p', $redis->port,
		'set', "${P}tenant:soe:1", 'after-pause' ], \$cin, \$cout, \$cerr,
		IPC::Run::timeout($timeout));
	$redis->resume;
	$w->finish;
	poll_for('after SIGCONT: a local flush', $timeout,
		sub { bg_totals($mon)->{local_flushes} > $t0->{local_flushes} });
	is(lc_health()->{entries}, 0, 'after SIGCONT: the local cache was emptied');
	wait_tracking('after SIGCONT');
	# fresh sessions: a backend that timed out may bypass Redis for a while
	# (circuit breaker): a miss is acceptable, an old value is not
	my $after = join(' ', 'after-pause', map { "last-$_" } @sk[1 .. $#sk]);
	my $old = 0;
	my $reached = poll_for('after SIGCONT: the new value served', 30, sub {
		my $got = sql($ALL);
		$old++ if $got =~ /^last-/;
		return $got eq $after;
	});
	is($old, 0, 'after SIGCONT: the value held before the pause is never served again');
	ok($reached, 'after SIGCONT: the write made during the pause is served');
	bg_quit($bg);
	bg_quit($mon);
	set_conf('redis_cache.local_serve_on_error', undef);
}

# ---------------------------------------------------------------------
# 10. local_cache_size respected; 0 disables
# ---------------------------------------------------------------------
{
	$node->append_conf('postgresql.conf', "redis_cache.local_cache_size = '1MB'\n");
	$node->restart;
	wait_tracking('local_cache_size 1MB');
	my $h = lc_health();
	is($h->{size_bytes}, 1024 * 1024, 'size_bytes is 1MB');
	my $tb = totals();
	sql(q{SELECT count(cache_set('tenant:big:' || g, repeat('x', 1000), 600)) FROM generate_series(1, 10000) g});
	sql(q{SELECT count(cache_get('tenant:big:' || g)) FROM generate_series(1, 5000) g});
	my $h1 = lc_health();
	sql(q{SELECT count(cache_get('tenant:big:' || g)) FROM generate_series(5001, 10000) g});
	my $h2 = lc_health();
	my $t = totals();
	note "after 5000 keys: $h1->{entries} entries, $h1->{used_bytes} bytes; after 10000: $h2->{entries}, $h2->{used_bytes}; evictions " . ($t->{local_evictions} - $tb->{local_evictions});
	cmp_ok($h1->{entries}, '<', 1100, 'entries bounded by local_cache_size (~1000 values of 1 kB at most)');
	cmp_ok($h2->{entries}, '<=', $h1->{entries} * 1.1 + 10, 'entries stop growing');
	cmp_ok($h2->{used_bytes}, '<=', $h2->{size_bytes}, 'used_bytes <= size_bytes');
	cmp_ok($t->{local_evictions} - $tb->{local_evictions}, '>=', 9000 - $h2->{entries},
		'evictions counted');
	# coherence after the ring wrapped many times: the most recent keys are
	# held; application writes and a pattern delete reach them
	my @recent = map { "tenant:big:$_" } 9951 .. 10000;
	my $arr = "ARRAY['" . join("','", @recent) . "']";
	my $hb = totals()->{local_hits};
	sql("SELECT count(cache_get(k)) FROM unnest($arr) k");
	cmp_ok(totals()->{local_hits} - $hb, '>=', 40, 'wrapped ring: the most recent keys are held');
	$redis->cli(join('', map { "SET $P$_ new\n" } @recent[0 .. 24]));
	my $new_ok = poll_for('wrapped ring: application writes seen', 5, sub {
		sql("SELECT count(*) FROM unnest($arr) WITH ORDINALITY u(k, o) WHERE o <= 25 AND cache_get(k) = 'new'") == 25;
	});
	ok($new_ok, 'wrapped ring: every overwritten key read anew');
	sql("SELECT cache_delete_pattern('tenant:big:99[89]*')");
	is(sql("SELECT count(cache_get('tenant:big:' || g)) FROM generate_series(9980, 9999) g"), '0',
		'wrapped ring: cache_delete_pattern removes the held keys it matches');

	# the cache still works once full
	my $t0 = totals();
	sql(q{SELECT cache_get('tenant:big:10000'), cache_get('tenant:big:10000')});
	cmp_ok(totals()->{local_hits} - $t0->{local_hits}, '>=', 1, 'a full local cache still serves hits');

	$node->append_conf('postgresql.conf', "redis_cache.local_cache_size = 0\n");
	$node->restart;
	is(lc_state(), 'disabled', 'local_cache_size 0: state disabled');
	$t0 = totals();
	sql(q{SELECT cache_get('tenant:big:1'), cache_get('tenant:big:1'), cache_get('tenant:big:1')});
	is(totals()->{local_hits} - $t0->{local_hits}, 0, 'local_cache_size 0: no local hits');
	is(scalar(pubsub_clients()), 0, 'local_cache_size 0: no tracking connection');
	$node->stop;
}

# ---------------------------------------------------------------------
# 11. a Redis Cluster: one subscription per master
# ---------------------------------------------------------------------
{
	my $C = RedisCache::Cluster->new('lcc', masters => 3, replicas => 1);
	$C->start;
	my $cn = $C->new_pg_node('lcc', conf => $LOCAL_CONF);
	$cn->start;
	$N = $cn;
	sql('CREATE EXTENSION redis_cache');
	if (wait_tracking('cluster', $cn))
	{
		my $h = lc_health();
		is($h->{masters}, 3, 'cluster: three masters tracked');
		for my $m ($C->masters)
		{
			is(scalar(pubsub_clients($m)), 1, 'cluster: one tracking subscription on master ' . $m->port);
			is(scalar(map { pubsub_clients($_) } $C->replicas_of($m)), 0,
				'cluster: no tracking subscription on the replica of ' . $m->port);
		}
		# keys on every master
		my %per;
		my @keys;
		my @own = $C->owners(map { "${P}tenant:c:$_" } 1 .. 300);
		for my $i (1 .. 300)
		{
			my $o = $own[ $i - 1 ];
			next if ($per{ $o->port } //= 0) >= 2;
			$per{ $o->port }++;
			push @keys, "tenant:c:$i";
			last if @keys == 6;
		}
		is(scalar(@keys), 6, 'cluster: two keys on each master');
		my $bg = new_bg($cn);
		my ($held, $late, $maxd) = (0, 0, 0);
		for my $k (@keys)
		{
			$C->cli_c('set', "$P$k", 'one');
			$held++ if hold($bg, "SELECT cache_get('$k')", 1, 'one');
			$C->cli_c('set', "$P$k", 'two');
			my $t0 = time();
			my $v = '';
			$v = bgq($bg, "SELECT cache_get('$k')") until $v eq 'two' || time() > $t0 + 5;
			my $d = (time() - $t0) * 1000;
			$maxd = $d if $d > $maxd;
			$late++ if $v ne 'two' || $d > 100;
		}
		diag(sprintf('cluster: redis-cli -c write -> seen by cache_get: max %.1f ms', $maxd));
		is($held, 6, 'cluster: every key held locally before the write');
		is($late, 0, 'cluster: writes on every master seen by the next cache_get within 100 ms');

		# A graceful failover (CLUSTER FAILOVER on a replica): the old
		# master stays up as a replica and its tracking connection stays
		# open, so only the worker's topology check can tell that writes
		# now go elsewhere.  It must empty the local cache, subscribe on
		# the new master and drop the old one's subscription.
		my $k = $keys[0];
		my ($old) = $C->owners("$P$k");
		my ($rep) = $C->replicas_of($old);
		ok(hold($bg, "SELECT cache_get('$k')", 1, 'two'), 'cluster failover: the key is held before');
		my $before = totals($cn);
		my $epoch0 = lc_health($cn)->{epoch};
		my $fo = $rep->cli('cluster', 'failover') // '';
		like($fo, qr/OK/, 'cluster failover: CLUSTER FAILOVER accepted by the replica');
		poll_for('cluster failover: the replica became master', $timeout,
			sub { ($C->role($rep) // '') eq 'master' && ($C->role($old) // '') eq 'replica' });
		# the write the old master's subscription cannot report; the old
		# entry would otherwise be served until local_max_age (60 s)
		my $t0 = time();
		$C->cli_c('set', "$P$k", 'three');
		my $v = '';
		$v = bgq($bg, "SELECT cache_get('$k')") until $v eq 'three' || time() > $t0 + $timeout;
		my $seen_ms = (time() - $t0) * 1000;
		diag(sprintf('cluster failover: a write on the new master seen by cache_get after %.0f ms', $seen_ms));
		is($v, 'three', 'cluster failover: a write on the new master is seen (the old entry is not kept)');
		cmp_ok($seen_ms, '<', 5000, 'cluster failover: within the topology check (about 1 s), not the entry\'s age');
		# While the old master turns into a replica it is for a moment a
		# master without slots, which the worker also tracks (to be safe):
		# wait for the settled topology, renewed at the next check.
		poll_for('cluster failover: tracking three masters, one subscription on the new master, none on the old',
			$timeout, sub {
				my $h = lc_health($cn);
				($h->{state} // '') eq 'tracking' && ($h->{masters} // 0) == 3
				  && scalar(pubsub_clients($rep)) == 1 && scalar(pubsub_clients($old)) == 0;
			});
		my $h2 = lc_health($cn);
		cmp_ok(totals($cn)->{local_flushes}, '>', $before->{local_flushes}, 'cluster failover: the local cache was emptied');
		cmp_ok($h2->{epoch}, '>', $epoch0, 'cluster failover: a new epoch');
		is($h2->{masters}, 3, 'cluster failover: three masters tracked');
		is(scalar(pubsub_clients($rep)), 1, 'cluster failover: one tracking subscription on the new master');
		is(scalar(pubsub_clients($old)), 0, 'cluster failover: none left on the old master, now a replica');
		# and the subscription works: held again, then a write seen at once
		ok(hold($bg, "SELECT cache_get('$k')", 1, 'three'), 'cluster failover: the key is held again');
		$C->cli_c('set', "$P$k", 'four');
		$t0 = time();
		$v = '';
		$v = bgq($bg, "SELECT cache_get('$k')") until $v eq 'four' || time() > $t0 + 5;
		cmp_ok((time() - $t0) * 1000, '<', 100, 'cluster failover: a later write on the new master seen within 100 ms');
		bg_quit($bg);
	}
	$cn->stop;
}

done_testing();
