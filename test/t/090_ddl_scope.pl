
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# DDL ends the cached query results of its own database only; changes of
# roles end those of every database; CREATE/DROP DATABASE end none.  A
# result of version 1.2's layout (no database DDL generation) is stale.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;

my $redis = RedisCache::Server->new('main');
$redis->start;
my $node = $redis->new_pg_node('ddl');
$node->start;

for my $db ('db1', 'db2')
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, q{
CREATE EXTENSION redis_cache;
CREATE TABLE t (v int);
INSERT INTO t VALUES (1);
CREATE SEQUENCE runs;
-- nextval() declared IMMUTABLE, on purpose: a query calling a volatile
-- function is never cached, an IMMUTABLE function of the database is trusted
CREATE FUNCTION test_nextval(regclass) RETURNS bigint LANGUAGE sql IMMUTABLE
AS 'SELECT nextval($1)';});
}

# the run number tells whether the query ran (miss) or was served (hit)
my $q = q{SELECT cache_query_json('SELECT v, test_nextval(''runs'') AS run FROM t')};
my %first = map { $_ => $node->safe_psql($_, $q) } ('db1', 'db2');
is($node->safe_psql('db1', $q), $first{db1}, 'db1: second call is a hit');
is($node->safe_psql('db2', $q), $first{db2}, 'db2: second call is a hit');

$node->safe_psql('db1', 'CREATE TABLE other (x int)');
isnt($node->safe_psql('db1', $q), $first{db1}, 'DDL in db1 ends the results of db1');
is($node->safe_psql('db2', $q), $first{db2}, 'DDL in db1 leaves the results of db2');

my %now = map { $_ => $node->safe_psql($_, $q) } ('db1', 'db2');
$node->safe_psql('postgres', 'CREATE DATABASE db3');
$node->safe_psql('postgres', 'DROP DATABASE db3');
is($node->safe_psql('db1', $q), $now{db1}, 'CREATE and DROP DATABASE end no result of db1');

# DROP DATABASE ends the results of the dropped database
$node->safe_psql('postgres', 'CREATE DATABASE db4');
$node->safe_psql('db4', q{
CREATE EXTENSION redis_cache;
CREATE TABLE t (v int);
SELECT cache_query_json('SELECT v FROM t');});
my $db4 = $node->safe_psql('postgres', q{SELECT oid FROM pg_database WHERE datname = 'db4'});
# the namespace of this cluster's query results (keys.c)
my ($base) = $node->safe_psql('db1', q{SELECT cache_query_key('SELECT 1')})
  =~ /^(query:\{\d+\.\d+\}:)/;
my $gen = $redis->cli('get', "${base}gen:ddl:$db4");
ok(defined $gen && $gen ne '', 'a result of db4 depends on its DDL generation');
$node->safe_psql('postgres', 'DROP DATABASE db4');
isnt($redis->cli('get', "${base}gen:ddl:$db4"), $gen,
	'DROP DATABASE bumps the DDL generation of the dropped database');

# CREATE ROLE alone: role names read before (to_regrole, ::regrole) change
%now = map { $_ => $node->safe_psql($_, $q) } ('db1', 'db2');
is($node->safe_psql('db1', $q), $now{db1}, 'db1: cached before CREATE ROLE');
$node->safe_psql('postgres', 'CREATE ROLE someone');
isnt($node->safe_psql('db1', $q), $now{db1}, 'CREATE ROLE ends the results of db1');
isnt($node->safe_psql('db2', $q), $now{db2}, 'and of db2');
%now = map { $_ => $node->safe_psql($_, $q) } ('db1', 'db2');
$node->safe_psql('db2', 'ALTER ROLE someone BYPASSRLS');
isnt($node->safe_psql('db1', $q), $now{db1}, 'a change of roles ends the results of db1');
isnt($node->safe_psql('db2', $q), $now{db2}, 'and of db2');

# an entry as version 1.2 stored it: its deps lack "ddl:<db>"
%now = map { $_ => $node->safe_psql($_, $q) } ('db1', 'db2');
my $key = $node->safe_psql('db1',
	q{SELECT cache_query_key('SELECT v, test_nextval(''runs'') AS run FROM t')});
my $deps = $redis->cli('hget', $key, 'deps');
like($deps, qr/(^|,)ddl:\d+=/, 'a result depends on its database DDL generation');
(my $old_deps = $deps) =~ s/(^|,)ddl:\d+=[^,]+//;
$redis->cli('hset', $key, 'deps', $old_deps);
isnt($node->safe_psql('db1', $q), $now{db1},
	'a result without the database DDL generation (1.2 layout) is not served');

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no backend crashed');

done_testing();
