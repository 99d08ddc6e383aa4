
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# cache_query under concurrency and faults, against a real redis-server:
# no stale fill when a writer commits during a miss, a writer/reader race,
# the stampede lock (and its release when the holder fails), damaged and
# foreign values in Redis, Redis stopped and paused, a clean restart (the
# table registry file), writers in sessions with another key_prefix,
# privileges, and two-phase commit.
#
# Races are made certain rather than hoped for: a query that must be slow
# waits for an advisory lock held by the test, and the test goes on once
# pg_stat_activity shows every session where it must be.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(time);

my $timeout = $PostgreSQL::Test::Utils::timeout_default;

my $redis = RedisCache::Server->new('main');
$redis->start;
my $node = $redis->new_pg_node('query');
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION redis_cache;
CREATE TABLE qc (id int PRIMARY KEY, v int);
INSERT INTO qc SELECT g, 1 FROM generate_series(1, 10) g;
CREATE SEQUENCE qc_runs;
-- A query calling a volatile function is never cached; an IMMUTABLE
-- function of the database is trusted.  These two lie on purpose: qc_lock()
-- waits for an advisory lock, qc_run() counts the runs of a query.  Their
-- argument, a column, makes them run with the query, after its snapshot,
-- not once at plan time.
CREATE FUNCTION qc_lock(int, int) RETURNS boolean LANGUAGE sql IMMUTABLE
AS 'SELECT true FROM pg_advisory_xact_lock_shared($1)';
CREATE FUNCTION qc_run(int) RETURNS bigint LANGUAGE sql IMMUTABLE
AS $$SELECT nextval('qc_runs')$$;});

sub sql { return $node->safe_psql('postgres', $_[0]); }

# psql in a new session: (stdout, stderr), as psql -XAtq prints them.
sub psql_out
{
	my ($sql) = @_;
	my ($stdout, $stderr);
	$node->psql('postgres', $sql, stdout => \$stdout, stderr => \$stderr);
	return ($stdout, $stderr);
}

# psql started in the background, one -c per statement (Server.pm).
sub start_psql { return RedisCache::Server::start_psql($node, @_); }
sub finish_psql { return RedisCache::Server::finish_psql(@_); }

# A session of the test holding advisory locks that slow queries wait for.
my $locker = $node->background_psql('postgres');
$locker->set_query_timer_restart;

# Wait until N sessions wait for an advisory lock and M wait in the
# extension (the stampede lock's poll), all running a query matching LIKE.
sub wait_sessions
{
	my ($like, $on_lock, $in_extension) = @_;
	return $node->poll_query_until('postgres', qq{
SELECT count(*) FILTER (WHERE wait_event_type = 'Lock' AND wait_event = 'advisory') = $on_lock
   AND count(*) FILTER (WHERE wait_event_type = 'Extension') = $in_extension
  FROM pg_stat_activity
 WHERE query LIKE '$like' AND pid <> pg_backend_pid()});
}

# ---- no stale fill ----------------------------------------------------------
# The reader's snapshot predates the UPDATE; it stores after the commit.
# The reader's query takes its snapshot, then waits for advisory lock 1.
my $SLOW = 'SELECT qc.v FROM qc WHERE qc.id = 1 AND qc_lock(1, qc.id)';
$locker->query_safe('SELECT pg_advisory_lock(1)');
my $reader = start_psql("SELECT cache_query_json('$SLOW')");
ok(wait_sessions('%qc_lock(1,%', 1, 0),
	'the slow reader is running its query');
sql('UPDATE qc SET v = 2 WHERE id = 1');
$locker->query_safe('SELECT pg_advisory_unlock(1)');
finish_psql($reader);
is($reader->{out}, '[{"v": 1}]',
	'the slow reader saw the row before the commit (the race happened)');
is(sql("SELECT cache_query_json('$SLOW')"), '[{"v": 2}]',
	'its result was not stored: the next call sees the commit');
my $hits = sql('SELECT hits FROM cache_stats WHERE family IS NULL');
is(sql("SELECT cache_query_json('$SLOW')"), '[{"v": 2}]',
	'and the fresh result is served from then on');
cmp_ok(sql('SELECT hits FROM cache_stats WHERE family IS NULL'), '>', $hits,
	'that last call was a hit');

# ---- writers against cache_query readers -------------------------------------
# Load only: 5 rounds of 2 s; the check is on the state after each round.
my $tmp = $PostgreSQL::Test::Utils::tmp_check;
append_to_file("$tmp/060_write.sql", "UPDATE qc SET v = v + 1 WHERE id = 2;\n");
append_to_file("$tmp/060_read.sql", q{SELECT cache_query_json('SELECT v FROM qc WHERE id = 2');
SELECT * FROM cache_query('SELECT sum(v)::bigint FROM qc') AS t(s bigint);
});
my ($stale, $bench_failures, $bench_out) = (0, 0, '');
for my $round (1 .. 5)
{
	my $err = '';
	IPC::Run::run(
		[ 'pgbench', '-n', '-T', '2', '-c', '4', '-j', '2',
		  '-f', "$tmp/060_write.sql\@1", '-f', "$tmp/060_read.sql\@3",
		  '-h', $node->host, '-p', $node->port, 'postgres' ],
		'>', \$bench_out, '2>', \$err, IPC::Run::timeout($timeout))
	  or do { $bench_failures++; diag("round $round: pgbench failed: $err"); };
	my $got = sql(q{SELECT cache_query_json('SELECT v FROM qc WHERE id = 2')});
	my $want = sql(q{SELECT json_agg(json_build_object('v', v))::jsonb FROM qc WHERE id = 2});
	if ($got ne $want) { $stale++; diag("round $round: cached $got, table $want"); }
	$got = sql(q{SELECT s FROM cache_query('SELECT sum(v)::bigint FROM qc') AS t(s bigint)});
	$want = sql('SELECT sum(v) FROM qc');
	if ($got ne $want) { $stale++; diag("round $round: cached sum $got, table $want"); }
}
is($bench_failures, 0, '5 rounds of writers vs cache_query readers ran without error');
is($stale, 0,
	'5 rounds of 2 s writers vs cache_query readers: no stale result after the writers stop');
my ($tps) = $bench_out =~ /tps = ([0-9.]+)/;
note('last round: ' . ($tps // '?') . ' tps');

# ---- stampede ------------------------------------------------------------------
# 20 sessions miss at once: the first takes the stampede lock and waits in
# its query for advisory lock 2; the 19 others wait for its result.  The
# lock timeout is long so that only the result ends their wait.
my $STAMPEDE = q{SELECT qc_run(qc.id) AS run FROM qc WHERE qc.id = 1 AND qc_lock(2, qc.id)};
$locker->query_safe('SELECT pg_advisory_lock(2)');
my @stampede = map {
	start_psql('SET redis_cache.query_lock_timeout_ms = 600000',
		"SELECT cache_query_json('$STAMPEDE')")
} 1 .. 20;
ok(wait_sessions('%qc_lock(2,%', 1, 19),
	'20 backends missed at once: one runs the query, 19 wait for its result');
$locker->query_safe('SELECT pg_advisory_unlock(2)');
finish_psql($_) for @stampede;
my %results = map { ($_->{out} . $_->{err}) => 1 } @stampede;
is(join('|', sort keys %results), '[{"run": 1}]',
	"20 backends missing at once all get the first run's result");
is(sql('SELECT last_value FROM qc_runs'), '1', 'the query ran once');

# The holder fails: its waiter does not wait for the lock timeout.  Both
# sessions have a lock timeout of 120 s (the lock's expiry too), so only
# the release by the failing holder lets the waiter go on soon.
my $FAIL = q{SELECT 1 / (qc_run(qc.id) - 2)::int AS x FROM qc WHERE qc.id = 1 AND qc_lock(3, qc.id)};
$locker->query_safe('SELECT pg_advisory_lock(3)');
my $holder = start_psql('SET redis_cache.query_lock_timeout_ms = 120000',
	"SELECT cache_query_json('$FAIL')");
ok(wait_sessions('%qc_lock(3,%', 1, 0),
	'the lock holder runs its query');
my $waiter = start_psql('SET redis_cache.query_lock_timeout_ms = 120000',
	"SELECT cache_query_json('$FAIL')");
ok(wait_sessions('%qc_lock(3,%', 1, 1),
	'the waiter waits for the lock holder');
my $t0 = time();
$locker->query_safe('SELECT pg_advisory_unlock(3)');
finish_psql($holder);
finish_psql($waiter);
my $waited = time() - $t0;
like($holder->{err}, qr/division by zero/, "the lock holder's query failed");
is($waiter->{out}, '[{"x": 1}]', 'the waiter ran the query itself');
# The bound is the feature (woken by the release, not by the 120 s timeout).
cmp_ok($waited, '<', 60,
	'the waiter went on when the lock was released, not after the lock timeout');
note(sprintf('the waiter finished %.0f ms after the holder was let go', $waited * 1000));
$locker->quit;

# ---- damaged and foreign values ----------------------------------------------------
sql(q{SELECT cache_query_json('SELECT v FROM qc WHERE id = 3')});
my $JKEY = sql(q{SELECT cache_query_key('SELECT v FROM qc WHERE id = 3')});
sql(q{SELECT * FROM cache_query('SELECT id, v FROM qc WHERE id >= 8 ORDER BY id') AS t(id int, v int)});
my $RKEY = sql(q{SELECT cache_query_key('SELECT id, v FROM qc WHERE id >= 8 ORDER BY id', '{}', 'rows')});
is($redis->cli('hget', $JKEY, 'data'), '[{"v":1}]',
	'applications read a JSON result with HGET <key> data');
like($redis->cli('hget', $RKEY, 'meta'), qr/^redis_cache\/1 rows [0-9]+ [0-9a-f]{8}$/,
	'the meta field names format, length and checksum');

# Each call in a new session: warnings are rate-limited per backend.
sub rows_call
{
	return psql_out(q{SELECT string_agg(id || '=' || v, ',') FROM cache_query('SELECT id, v FROM qc WHERE id >= 8 ORDER BY id') AS t(id int, v int)});
}
sub json_call
{
	return psql_out(q{SELECT cache_query_json('SELECT v FROM qc WHERE id = 3')});
}
my $len = $redis->cli('hstrlen', $RKEY, 'data');
$redis->cli('eval', q{local d = redis.call('HGET', KEYS[1], 'data') redis.call('HSET', KEYS[1], 'data', string.sub(d, 1, #d - 3)) return 1}, 1, $RKEY);
my ($out, $err) = rows_call();
like($err, qr/WARNING: .*unusable: truncated/, 'a truncated rows value is a miss with a WARNING');
is($out, '8=1,9=1,10=1', 'and the right rows are returned');
is($redis->cli('hstrlen', $RKEY, 'data'), $len, 'and the entry is stored again');
$redis->cli('eval', q{local d = redis.call('HGET', KEYS[1], 'data') redis.call('HSET', KEYS[1], 'data', string.sub(d, 1, 20) .. 'Z' .. string.sub(d, 22)) return 1}, 1, $RKEY);
($out, $err) = rows_call();
like($err, qr/WARNING: .*unusable: checksum mismatch/, 'a corrupted byte is caught by the checksum');
is($out, '8=1,9=1,10=1', 'and the right rows are returned');
$redis->cli('hset', $RKEY, 'meta', 'redis_cache/9 rows 1 00000000');
($out, $err) = rows_call();
like($err, qr/WARNING: .*unusable: not a redis_cache\/1/,
	'another format version is a miss with a WARNING');
is($out, '8=1,9=1,10=1', 'and the right rows are returned (format version)');
$redis->cli('del', $RKEY);
$redis->cli('set', $RKEY, 'hello');
($out, $err) = rows_call();
like($err, qr/WARNING: .*not a hash/, 'a foreign string at the key is a miss with a WARNING');
is($out, '8=1,9=1,10=1', 'and the right rows are returned');
$redis->cli('hset', $JKEY, 'data', '[{"v": 1');
($out, $err) = json_call();
like($err, qr/WARNING: .*unusable: truncated/, 'a damaged JSON value is a miss with a WARNING');
is($out, '[{"v": 1}]', 'and the right JSON is returned');
# a well-formed entry of another result (valid checksum) without dependencies
sql(q{SELECT cache_query_json('SELECT 7 AS v')});
my $K7 = sql(q{SELECT cache_query_key('SELECT 7 AS v')});
$redis->cli('hset', $JKEY, 'meta', $redis->cli('hget', $K7, 'meta'),
	'data', $redis->cli('hget', $K7, 'data'), 'deps', '');
($out, $err) = json_call();
is($out, '[{"v": 1}]', 'an entry without dependencies is never served');
is($err, '', 'and that miss is silent');

# ---- Redis stopped and paused ---------------------------------------------------
# The bounds are the feature (no hang): without the connect and command
# timeouts these calls would wait as long as Redis is down.  They are
# generous for a loaded machine; the figures are noted.
my $errors_sql = q{SELECT errors_connect + errors_timeout + errors_io FROM cache_stats WHERE family IS NULL};
my $errors = sql($errors_sql);
$redis->stop;
$t0 = time();
($out, $err) = psql_out(q{SELECT cache_query_json('SELECT v FROM qc WHERE id = 4')});
my $secs = time() - $t0;
is($out, '[{"v": 1}]', 'Redis stopped: cache_query_json still returns the result');
cmp_ok($secs, '<', 15, 'Redis stopped: no hang');
note(sprintf('Redis stopped: the call took %.0f ms', $secs * 1000));
cmp_ok(sql($errors_sql), '>', $errors, 'Redis stopped: the failure is counted');
$redis->start;
sql(q{SELECT cache_query_json('SELECT v FROM qc WHERE id = 4')});
$errors = sql($errors_sql);
$redis->pause;
$t0 = time();
($out, $err) = psql_out(q{SET redis_cache.command_timeout_ms = 200;
SELECT string_agg(v::text, ',') FROM cache_query('SELECT v FROM qc WHERE id = 4') AS t(v int)});
$secs = time() - $t0;
$redis->resume;
like($out, qr/(^|[^0-9])1$/, 'Redis paused: cache_query returns the result');
cmp_ok($secs, '<', 15, 'Redis paused: bounded by the timeouts');
note(sprintf('Redis paused: the call took %.0f ms', $secs * 1000));
cmp_ok(sql($errors_sql), '>', $errors, 'Redis paused: the failure is counted');

# ---- a clean restart keeps the table registry --------------------------------------
sql(q{SELECT cache_query_json('SELECT v FROM qc WHERE id = 5')});
$node->restart;
sql('UPDATE qc SET v = 50 WHERE id = 5');
is(sql(q{SELECT cache_query_json('SELECT v FROM qc WHERE id = 5')}), '[{"v": 50}]',
	'after a clean restart the first write still ends the cached result');
ok(-f $node->data_dir . '/pg_stat/redis_cache.tables', 'pg_stat/redis_cache.tables written at shutdown');

# ---- sessions with another key_prefix ------------------------------------------------
is(sql(q{SET redis_cache.key_prefix = 'app1:';
SELECT cache_query_json('SELECT v FROM qc WHERE id = 6')}),
	'[{"v": 1}]', 'a session with key_prefix app1: fills');
sql('UPDATE qc SET v = 60 WHERE id = 6');
is(sql(q{SET redis_cache.key_prefix = 'app1:';
SELECT cache_query_json('SELECT v FROM qc WHERE id = 6')}),
	'[{"v": 60}]', 'a writer with the default prefix ends it');

# ---- DDL and privileges ------------------------------------------------------------
sql('CREATE ROLE regress_qc; GRANT SELECT ON qc TO regress_qc');
is(sql(q{SET ROLE regress_qc; SELECT cache_query_json('SELECT v FROM qc WHERE id = 7')}),
	'[{"v": 1}]', 'a role fills');
sql('REVOKE SELECT ON qc FROM regress_qc');
($out, $err) = psql_out(q{SET ROLE regress_qc; SELECT cache_query_json('SELECT v FROM qc WHERE id = 7')});
like($err, qr/permission denied/, "after REVOKE the role's cached result is not served");
is($out, '', 'and no result is returned');
sql('DROP ROLE regress_qc');

# ---- two-phase commit ------------------------------------------------------------
sql('ALTER SYSTEM SET max_prepared_transactions = 5');
$node->restart;
is(sql(q{SELECT cache_query_json('SELECT v FROM qc WHERE id = 9')}), '[{"v": 1}]',
	'a result is cached before a prepared transaction');
my $rc;
($out, $err) = ('', '');
$rc = $node->psql('postgres', q{BEGIN;
UPDATE qc SET v = 90 WHERE id = 9;
PREPARE TRANSACTION 'rc_2pc';}, stdout => \$out, stderr => \$err);
is("$rc|$out|$err", '0||',
	'PREPARE TRANSACTION of a write to an unwatched table works with preloading');
is(sql(q{SELECT cache_query_json('SELECT v FROM qc WHERE id = 9')}), '[{"v": 1}]',
	'before COMMIT PREPARED the old result is right');
sql(q{COMMIT PREPARED 'rc_2pc'});
is(sql(q{SELECT cache_query_json('SELECT v FROM qc WHERE id = 9')}), '[{"v": 90}]',
	'COMMIT PREPARED ends the cached result');
sql('ALTER SYSTEM RESET max_prepared_transactions');
$node->restart;

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no backend crashed');

done_testing();
