
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# Issue 12, point 8: a huge dependency set and the stampede lock.
#
# (a) A table whose dependency set lists 200,000 results (filled here with
#     a Lua script, next to real cached results): one UPDATE's commit moves
#     the set aside and deletes at most 1,000 of them (the invalidation
#     script's budget, RC_DEPS_BUDGET in src/scripts.c), none of the listed
#     results is served afterwards, later calls drain the rest in batches of
#     at most 1,000 while results stored again since are kept, and stores
#     trim members whose result is gone.
# (b) A reader holding the stampede lock that is ended by statement_timeout
#     or pg_cancel_backend() -- while computing, or while its lock-taking
#     round trip waits on a paused Redis -- does not make the next reader
#     (query_lock_timeout_ms = 60 s) wait: the lock is released, or, when the
#     release could not reach Redis, the next reader sees that the holder
#     gave up and takes the lock over.
#
# Assertions are on counts and states (Redis keys, cache_stats); the only
# time bounds are the feature ("promptly" = 15 s against a 60 s lock).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(time usleep);

my $timeout = $PostgreSQL::Test::Utils::timeout_default;
my $BUDGET = 1000;			# RC_DEPS_BUDGET in src/scripts.c

my $redis = RedisCache::Server->new('deps');
$redis->start;
my $node = $redis->new_pg_node('deps');
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION redis_cache;
CREATE TABLE dt (id int PRIMARY KEY, v int);
INSERT INTO dt SELECT g, g FROM generate_series(1, 100) g;
CREATE TABLE dt2 (id int);
CREATE TABLE lt (id int PRIMARY KEY, v int);
INSERT INTO lt SELECT g, 1 FROM generate_series(1, 100) g;});

sub sql { return $node->safe_psql('postgres', $_[0]); }
sub stat_of { return sql("SELECT $_[0] FROM cache_stats WHERE family IS NULL"); }

# A Lua script run by redis-cli; returns its reply.
sub lua
{
	my ($script, @args) = @_;
	my $out = $redis->cli('eval', $script, 0, @args);
	die "redis-cli eval failed" unless defined $out;
	return $out;
}

# ---- (a) a dependency set of 200,000 members ---------------------------------
my $FILL = 200_000;
my $REAL = 20;
my $Q = 'SELECT v FROM dt WHERE id = $1';
sub cached_dt
{
	my ($from, $to) = @_;
	return sql(qq{SELECT string_agg(cache_query_json('$Q', ARRAY[i::text])::text, ';' ORDER BY i)
	              FROM generate_series($from, $to) i});
}
sub table_dt
{
	my ($from, $to) = @_;
	return sql(qq{SELECT string_agg(jsonb_build_array(jsonb_build_object('v', v))::text, ';' ORDER BY id)
	              FROM dt WHERE id BETWEEN $from AND $to});
}
is(cached_dt(1, $REAL), table_dt(1, $REAL), "$REAL results of dt cached");

# The keys are found by scanning, not built: the namespace's base may grow.
my $item = sql(q{SELECT d.oid || ':' || 'dt'::regclass::oid
                 FROM pg_database d WHERE datname = current_database()});
my ($deps) = grep { /deps:\Q$item\E$/ } split /\n/,
  $redis->cli('--scan', '--pattern', "*deps:$item");
ok(defined $deps, 'the dependency set of dt exists');
$deps //= "query:deps:$item";
(my $base = $deps) =~ s/deps:\Q$item\E$//;
my $dead = "${base}deps-dead";
is($redis->cli('scard', $deps), $REAL, "it lists the $REAL results");

# 200,000 more results (small hashes, as stored results are) listed in it.
for (my $i = 1; $i <= $FILL; $i += 50_000)
{
	lua(q{for i = tonumber(ARGV[3]), tonumber(ARGV[4]) do
	        local k = ARGV[2] .. 'fake:' .. i
	        redis.call('HSET', k, 'meta', 'x', 'deps', 'x=1', 'data', 'x')
	        redis.call('EXPIRE', k, 3600)
	        redis.call('SADD', ARGV[1], k)
	      end return 1},
		$deps, $base, $i, $i + 49_999);
}
is($redis->cli('scard', $deps), $FILL + $REAL,
	"the dependency set lists @{[ $FILL + $REAL ]} results");

my $COUNT_FAKE = q{local n = 0
	for i = 1, tonumber(ARGV[2]) do n = n + redis.call('EXISTS', ARGV[1] .. 'fake:' .. i) end
	return n};
sub fake_left { return lua($COUNT_FAKE, $base, $FILL); }

# One UPDATE: its commit bumps dt's generation and does bounded work.
sql('UPDATE dt SET v = v + 1000 WHERE id = 1');
is($redis->cli('exists', $deps), '0',
	'the commit moved the large set aside: the table starts a new one');
is($redis->cli('llen', $dead), '1', 'one set is queued for draining');
my ($aside) = $redis->cli('lindex', $dead, 0);
is($redis->cli('scard', "${base}deps-dead:$aside"), $FILL + $REAL - $BUDGET,
	"the commit took exactly $BUDGET members (the budget) off the set");
my $fake_left = fake_left();
cmp_ok($FILL - $fake_left, '<=', $BUDGET,
	"the commit deleted at most $BUDGET results");
note("the commit deleted " . ($FILL - $fake_left) . " of the $FILL filler results");
cmp_ok($redis->cli('ttl', "${base}deps-dead:$aside"), '>', 0,
	'the set moved aside keeps its TTL (it expires with its results)');

# None of the listed results is served: every call misses and stores anew.
my ($hits, $sets) = (stat_of('hits'), stat_of('sets'));
is(cached_dt(1, $REAL), table_dt(1, $REAL),
	'after the commit every result is current (the changed row included)');
is(stat_of('hits'), $hits, 'none of the listed results was served (no hit)');
is(stat_of('sets') - $sets, $REAL, "all $REAL were computed and stored again");

# Later invalidations (of another table) drain the queue in batches.
my ($calls, $max, $rounds) = (0, 0, 0);
while ($redis->cli('llen', $dead) ne '0' && $rounds++ < 20)
{
	my ($n, $m) = split /\|/, sql(q{
SELECT count(*), max(n) FROM (SELECT cache_query_invalidate('dt2') AS n
                              FROM generate_series(1, 50)) s});
	$calls += $n;
	$max = $m if $m > $max;
}
is($redis->cli('llen', $dead), '0', "later calls drained the queue ($calls calls)");
cmp_ok($max, '<=', $BUDGET, "no call deleted more than $BUDGET results");
cmp_ok($calls, '>=', int(($FILL + $REAL - $BUDGET) / $BUDGET),
	'the draining took as many calls as the budget implies');
is(fake_left(), '0', 'every filler result listed in the set is deleted');
is($redis->cli('--scan', '--pattern', "${base}deps-dead:*"), '',
	'no set is left aside');
($hits, $sets) = (stat_of('hits'), stat_of('sets'));
is(cached_dt(1, $REAL), table_dt(1, $REAL), 'the results stored again are current');
is(stat_of('hits') - $hits, $REAL,
	'and were kept by the draining: all hits (they are listed in the new set)');

# Stores trim members whose result is gone (expired, evicted).
lua(q{for i = 1, 200 do redis.call('SADD', ARGV[1], ARGV[2] .. 'gone:' .. i) end return 1},
	$deps, $base);
my $COUNT_GONE = q{local n = 0
	for _, m in ipairs(redis.call('SMEMBERS', ARGV[1])) do
	  if redis.call('EXISTS', m) == 0 then n = n + 1 end
	end
	return n};
is(lua($COUNT_GONE, $deps), '200', '200 members of gone results added to the set');
cached_dt(101, 400);
my $gone = lua($COUNT_GONE, $deps);
# 300 stores each check 2 random members: about 30 are left on average
cmp_ok($gone, '<', 150, "300 stores trimmed the members of gone results ($gone of 200 left)");
is($redis->cli('scard', $deps), $REAL + 300 + $gone,
	'every result stored is listed in the set');

# ---- (b) the stampede lock of a reader that gave up ---------------------------
# psql started in the background, one -c per statement (Server.pm).
sub start_psql { return RedisCache::Server::start_psql($node, @_); }
sub finish_psql { return RedisCache::Server::finish_psql(@_); }
sub wait_activity
{
	my ($where) = @_;
	return $node->poll_query_until('postgres', qq{
SELECT count(*) > 0 FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND $where});
}
sub lock_keys { return $redis->cli('--scan', '--pattern', '*:lock'); }

my $LONG = 'SET redis_cache.query_lock_timeout_ms = 60000';
my $locker = $node->background_psql('postgres');

# The next reader: with a 60 s lock timeout it must not wait for a holder
# that gave up.  Returns (its output, seconds taken, sets stored).
sub next_reader
{
	my ($query, $expected, $what) = @_;
	my $sets_before = stat_of('sets');
	my $t0 = time();
	my $r = finish_psql(start_psql($LONG, "SELECT cache_query_json('$query')"));
	my $secs = time() - $t0;
	is($r->{out}, $expected, "$what: the next reader gets the result");
	# the bound is the feature: promptly, not after the 60 s lock timeout
	cmp_ok($secs, '<', 15, "$what: the next reader did not wait for the lock");
	note(sprintf('%s: the next reader took %.0f ms', $what, $secs * 1000));
	is(stat_of('sets') - $sets_before, 1,
		"$what: the next reader ran the query itself and stored the result");
	is(lock_keys(), '', "$what: no lock left");
}

# Holder and waiter both wait for the table lock the locker holds; the
# holder took the stampede lock first (the lookup comes before planning).
foreach my $end ('statement_timeout', 'pg_cancel_backend')
{
	(my $alias = $end) =~ s/^pg_//;
	my $query = "SELECT sum(v) AS $alias FROM lt";
	$locker->query_safe('BEGIN; LOCK TABLE lt IN ACCESS EXCLUSIVE MODE');
	my $holder = start_psql($LONG,
		$end eq 'statement_timeout' ? 'SET statement_timeout = 8000' : 'SELECT 1',
		"SELECT cache_query_json('$query')");
	ok(wait_activity(q{wait_event_type = 'Lock' AND query LIKE '%cache_query_json%'}),
		"$end: the holder waits for the table inside its query");
	is(scalar(() = lock_keys() =~ /:lock/g), 1, "$end: the holder took the stampede lock");
	my $waiter = start_psql($LONG, "SELECT cache_query_json('$query')");
	ok(wait_activity(q{wait_event_type = 'Extension' AND query LIKE '%cache_query_json%'}),
		"$end: a waiter polls for the holder's result");
	if ($end eq 'pg_cancel_backend')
	{
		sql(q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity
		      WHERE wait_event_type = 'Lock' AND query LIKE '%cache_query_json%'});
	}
	finish_psql($holder);
	like($holder->{err}, qr/canceling statement due to (statement timeout|user request)/,
		"$end: the holder's query was ended");
	# the waiter took the lock over and now waits for the table itself
	ok(wait_activity(q{wait_event_type = 'Lock' AND query LIKE '%cache_query_json%'}),
		"$end: the waiter went on to compute the result");
	my $t0 = time();
	my $sets_before = stat_of('sets');
	$locker->query_safe('COMMIT');
	finish_psql($waiter);
	is($waiter->{out}, qq([{"$alias": 100}]), "$end: the waiter computed the result");
	cmp_ok(time() - $t0, '<', 15, "$end: the waiter did not wait for the 60 s lock");
	is(stat_of('sets') - $sets_before, 1, "$end: the waiter stored its result");
	is(lock_keys(), '', "$end: no lock left");
}

# The issue's repro: the holder is ended while the round trip that takes the
# lock waits on a slow (here paused) Redis, which sets the lock afterwards.
# The holder waits on advisory lock 7 between warming its connection and the
# query, so that the test can pause Redis at the right time.
sub paused_take
{
	my ($query, $command_timeout) = @_;
	$locker->query_safe('SELECT pg_advisory_lock(7)');
	my $holder = start_psql($LONG,
		"SET redis_cache.command_timeout_ms = $command_timeout",
		'SET redis_cache.connect_timeout_ms = 60000',
		q{SELECT cache_query_json('SELECT 1 AS warm')},
		'SELECT 1 FROM pg_advisory_lock(7)',
		'SET statement_timeout = 500',
		"SELECT cache_query_json('$query')",
		q{SELECT 'holder moved on'});
	wait_activity(q{wait_event_type = 'Lock' AND wait_event = 'advisory'})
	  or die 'the holder did not reach the advisory lock';
	$redis->pause;
	$locker->query_safe('SELECT pg_advisory_unlock(7)');
	return $holder;
}

# The release reaches Redis once it resumes: nothing is left.
{
	my $query = 'SELECT count(*) AS n FROM lt WHERE v = 1';
	my $holder = paused_take($query, 20000);
	# statement_timeout (500 ms) has fired: the holder waits to release, or
	# (without a release to wait for) it has ended
	my $deadline = time() + $timeout;
	while (time() < $deadline)
	{
		$holder->{h}->pump_nb;
		last unless $holder->{h}->pumpable;
		last if sql(q{
SELECT count(*) > 0 FROM pg_stat_activity
 WHERE query LIKE '%count(*) AS n%' AND pid <> pg_backend_pid()
   AND now() - query_start > '1.5 s'}) eq 't';
		usleep(50_000);
	}
	$redis->resume;
	finish_psql($holder);
	like($holder->{err}, qr/canceling statement due to statement timeout/,
		'take on a paused Redis: the holder timed out in the lock-taking round trip');
	is(lock_keys(), '', 'take on a paused Redis: the holder released the lock it may have taken');
	next_reader($query, '[{"n": 100}]', 'take on a paused Redis');
}

# The release cannot reach Redis either (its command timeout is shorter than
# the pause): the lock is set after the holder gave up.
{
	my $query = 'SELECT count(*) AS n FROM lt WHERE v = 1 AND id > 0';
	my $holder = paused_take($query, 1000);
	finish_psql($holder);
	like($holder->{out}, qr/holder moved on/, 'lost release: the holder went on');
	like($holder->{err}, qr/timed out/, 'lost release: the release timed out');
	$redis->resume;
	$redis->wait_ready;
	is(scalar(() = lock_keys() =~ /:lock/g), 1,
		'lost release: the lock was set after the holder gave up');
	next_reader($query, '[{"n": 100}]', 'lost release');
}

$locker->quit;
done_testing();
