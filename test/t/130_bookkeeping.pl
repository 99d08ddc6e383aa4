
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# The bookkeeping keys and bulk deletes belong to the extension (issue 12,
# point 5): no role writes the cache version keys or the query namespace
# through the SQL functions, cache_delete_pattern() leaves them alone and
# is not for PUBLIC, and the cache_invalidate() trigger honours key
# templates only on tables of roles allowed to call cache_watch().  Also
# point 8: a pattern template expanding past 2 kB invalidates its family
# instead of a truncated pattern, and TRUNCATE of one partition ends the
# parent's keys and cached results.  Then 1.3 to 1.4: old triggers work.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(usleep);

my $redis = RedisCache::Server->new('main');
$redis->start;
my $node = $redis->new_pg_node('bk');
$node->start;

# poll until $check returns true, for at most 30 s
sub wait_for
{
	my ($check) = @_;
	for (1 .. 600)
	{
		return 1 if $check->();
		usleep(50_000);
	}
	return 0;
}

# run SQL as role $role (a real login, only its own privileges)
sub psql_as
{
	my ($role, $sql, $db) = @_;
	my ($stdout, $stderr);
	my $rc = $node->psql($db // 'postgres', $sql,
		stdout => \$stdout, stderr => \$stderr,
		extra_params => [ '-U', $role ]);
	return ($rc, $stdout, $stderr);
}

$node->safe_psql('postgres', q{
CREATE EXTENSION redis_cache;
CREATE ROLE app LOGIN;
CREATE SCHEMA app AUTHORIZATION app;
CREATE TABLE tenants (id int PRIMARY KEY, subdomain text);
INSERT INTO tenants VALUES (1, 'acme'), (2, 'globex');
GRANT SELECT ON tenants TO app;
SELECT cache_watch('tenants', 'tenant:id:{id}', 'tenant:subdomain:{subdomain}');});

# first contact: the version is initialised ('1')
$node->safe_psql('postgres', q{SELECT cache_set('tenant:id:1', 'acme')});
is($redis->cli('get', '{cache}:version'), '1', 'cache version initialised');
$redis->cli("SET tenant:id:2 globex\nSET session:abc s\nRPUSH queues:default job\n");

# ---- repro 1: cache_set('{cache}:version', 'x') -----------------------------
my ($rc, $out, $err) = psql_as('app', q{SELECT cache_set('{cache}:version', 'x')});
isnt($rc, 0, "cache_set('{cache}:version') by an ordinary role fails");
like($err, qr/cannot write key "\{cache\}:version": it belongs to the extension/,
	'... with an ERROR naming the key');
is($redis->cli('get', '{cache}:version'), '1', '... and {cache}:version is unchanged');
($rc, $out, $err) = psql_as('app', q{
SELECT cache_set('tenant:id:9', 'v');
SELECT cache_get('tenant:id:9');
SELECT stored = expected FROM cache_version();});
is($out, "t\nv\nt", 'a new session is not superseded: it stores and reads');

# a superuser is refused too (redis-cli is the tool for the bookkeeping)
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT cache_set('{cache}:version', 'x')});
like($err, qr/belongs to the extension/, 'a superuser is refused as well');

# the other writers and deleters; the names of 1.1 to 1.6 stay reserved
for my $call (
	q{SELECT cache_set('cache:version', 'x')},
	q{SELECT cache_delete('{cache}:version')},
	q{SELECT cache_set('{cache}:families', 'x')},
	q{SELECT cache_set('app:{cache}:run_id', 'x')},
	q{SELECT cache_delete('cache:version')},
	q{SELECT cache_delete('tenant:id:2', 'cache:run_id')},
	q{SELECT cache_incr('cache:flushed')},
	q{SELECT cache_lock('cache:flush', 600)},
	q{SELECT cache_unlock('cache:flush', 'token')},
	q{SELECT cache_set('cache:versions', 'x')},
	q{SELECT cache_set('staging:cache:version', 'x')},
	q{SELECT cache_set('query:5:10:' || repeat('a', 64), 'forged')},
	q{SELECT cache_delete('query:gen:ddl')})
{
	($rc, $out, $err) = psql_as('app', $call);
	like($err, qr/ERROR:.*belongs to the extension/, "refused: $call");
}
is($redis->cli('exists', '{cache}:version', '{cache}:versions', '{cache}:run_id', 'tenant:id:2'),
	'4', 'the bookkeeping (and the key listed beside it) survive');
is($redis->cli('exists', '{cache}:flush', 'cache:flush'), '0', 'no flush marker was taken');
($rc, $out, $err) = psql_as('app', q{SELECT cache_get('{cache}:version')});
is($out, '1', 'reading a bookkeeping key is allowed');

# ---- cache_delete_pattern -----------------------------------------------
($rc, $out, $err) = psql_as('app', q{SELECT cache_delete_pattern('*')});
like($err, qr/permission denied for function cache_delete_pattern/,
	'cache_delete_pattern() is not executable by PUBLIC');
# a cached query result, so that the query namespace has keys
$node->safe_psql('postgres', q{GRANT EXECUTE ON FUNCTION cache_delete_pattern(text) TO app});
psql_as('app', q{SELECT cache_query_json('SELECT subdomain FROM tenants ORDER BY id')});
my @query_keys = split /\n/, $redis->cli('--scan', '--pattern', 'query:*');
ok(scalar(@query_keys) >= 2, 'a cached result and its generations exist (' . scalar(@query_keys) . ' keys)');
($rc, $out, $err) = psql_as('app', q{SELECT cache_delete_pattern('*') > 0});
is($out, 't', 'a granted role deletes application keys with a pattern');
is($redis->cli('exists', 'tenant:id:2', 'session:abc', 'queues:default'), '0',
	'... the application keys are gone');
is($redis->cli('exists', '{cache}:version', '{cache}:versions', '{cache}:run_id'), '3',
	'... the cache version bookkeeping is left');
my @left = split /\n/, $redis->cli('--scan', '--pattern', 'query:*');
is(scalar(@left), scalar(@query_keys), '... and every key of the query namespace');
($rc, $out, $err) = psql_as('app', q{SELECT stored = expected FROM cache_version()});
is($out, 't', '... so the server is still current');
$node->safe_psql('postgres', q{REVOKE EXECUTE ON FUNCTION cache_delete_pattern(text) FROM app});

# a namespace nested in ours ('b:' under ''), known to the server because
# it cached a result: its query namespace is reserved too
$node->safe_psql('postgres', q{
SET redis_cache.key_prefix = 'b:';
SELECT cache_query_json('SELECT id FROM tenants ORDER BY id');});
ok($redis->cli('--scan', '--pattern', 'b:query:*') ne '', 'namespace b: has a cached result');
($rc, $out, $err) = psql_as('app', q{SELECT cache_set('b:query:5:10:forged', 'x')});
like($err, qr/cannot write key "b:query:5:10:forged": it belongs to the extension/,
	"the query namespace of a nested namespace the server knows is refused");
($rc, $out, $err) = psql_as('app', q{SELECT cache_set('b:{cache}:run_id', 'x')});
like($err, qr/belongs to the extension/, '... and its bookkeeping');
($rc, $out, $err) = psql_as('app', q{SELECT cache_set('bquery:1', 'x'), cache_set('user:query:1', 'x')});
is($out, 't|t', 'keys that merely contain "query" are ordinary keys');

# ---- repro 2: a trigger EXECUTE FUNCTION cache_invalidate('*') ----------
$redis->cli("SET tenant:id:1 acme\nSET tenant:id:2 globex\nSET product:details:7 p\n");
# keys outside the query namespaces (DDL, such as the CREATE TABLEs below,
# ends and deletes cached query results: that is not the trigger's doing)
sub non_query_keys
{
	my @keys = grep { !/(^|:)query:/ } split /\n/, ($redis->cli('--scan') // '');
	return scalar(@keys);
}
my $dbsize = non_query_keys();
($rc, $out, $err) = psql_as('app', q{
CREATE TEMP TABLE wipe (id int);
CREATE TRIGGER wipe AFTER INSERT ON wipe FOR EACH ROW EXECUTE FUNCTION cache_invalidate('*');
INSERT INTO wipe VALUES (1);});
like($err, qr/cache_invalidate\(\) may only run with key templates on tables of roles allowed to call cache_watch\(\)/,
	"a temporary table's trigger cache_invalidate('*') raises ERROR");
like($err, qr/owned by role "app"/, '... naming the owner');
is(non_query_keys(), $dbsize, '... and deletes nothing');

# the same on a regular table the role created, with '*' and with another
# table's template, for each event
for my $args (q{'*'}, q{'tenant:id:{id}'}, q{'tenant:*'})
{
	($rc, $out, $err) = psql_as('app', qq{
CREATE TABLE app.mine (id int);
CREATE TRIGGER t AFTER INSERT OR UPDATE OR DELETE ON app.mine
    FOR EACH ROW EXECUTE FUNCTION cache_invalidate($args);
CREATE TRIGGER tt AFTER TRUNCATE ON app.mine
    FOR EACH STATEMENT EXECUTE FUNCTION cache_invalidate($args);
ALTER TABLE app.mine DISABLE TRIGGER t;
INSERT INTO app.mine VALUES (1), (2);
ALTER TABLE app.mine ENABLE TRIGGER t;
\\set ON_ERROR_STOP 0
INSERT INTO app.mine VALUES (1);
UPDATE app.mine SET id = id;
DELETE FROM app.mine;
TRUNCATE app.mine;
DROP TABLE app.mine;});
	my $n = () = $err =~ /may only run with key templates/g;
	is($n, 4, "cache_invalidate($args) on the role's own table: INSERT, UPDATE, DELETE, TRUNCATE refused");
	is($redis->cli('exists', 'tenant:id:1', 'tenant:id:2', 'product:details:7'), '3',
		"... the keys of other families survive ($args)");
}
is(non_query_keys(), $dbsize, 'no key was deleted by any of these triggers');

# cache_watch() with templates is not for PUBLIC; without templates it is
($rc, $out, $err) = psql_as('app', q{
CREATE TABLE app.mine (id int);
SELECT cache_watch('app.mine', 'tenant:id:{id}');});
like($err, qr/permission denied for function cache_watch/,
	'cache_watch(table, templates) is not executable by PUBLIC');
($rc, $out, $err) = psql_as('app', q{
SELECT cache_watch('app.mine');
INSERT INTO app.mine VALUES (1);
SELECT count(*) FROM app.mine;});
is($out, "\n1", 'cache_watch(table) without templates works for any table owner');
is(non_query_keys(), $dbsize, '... and deletes no key');

# a role the DBA trusts with key families
$node->safe_psql('postgres', q{
CREATE ROLE family_admin LOGIN;
CREATE SCHEMA fa AUTHORIZATION family_admin;
GRANT EXECUTE ON FUNCTION cache_watch(regclass, text[]) TO family_admin;});
($rc, $out, $err) = psql_as('family_admin', q{
CREATE TABLE fa.products (id int PRIMARY KEY, name text);
SELECT cache_watch('fa.products', 'product:details:{id}');
INSERT INTO fa.products VALUES (7, 'anvil');});
is($rc, 0, 'a role granted cache_watch() watches its table');
is($redis->cli('exists', 'product:details:7'), '0', '... and its writes invalidate');

# ---- a pattern template expanding past 2 kB ------------------------------
my $long = 'n' x 3000;
$node->safe_psql('postgres', qq{
CREATE TABLE docs (id int PRIMARY KEY, name text);
INSERT INTO docs VALUES (1, '$long');
SELECT cache_watch('docs', 'doc:{name}:*');});
$redis->cli("SET doc:${long}:v1 x\nSET doc:short:v1 x\nSET docx:1 x\n");
($rc, $out, $err) = $node->psql('postgres', q{UPDATE docs SET id = 1 WHERE id = 1});
like($err, qr/WARNING:.*is 30\d\d bytes long, invalidating the whole family "doc:\*:\*" instead/,
	'a 3 kB pattern gives a WARNING naming the family');
ok(wait_for(sub { $redis->cli('exists', "doc:${long}:v1") eq '0' }),
	'the key behind the long pattern is invalidated');
is($redis->cli('exists', 'doc:short:v1'), '0', '... with its family');
is($redis->cli('exists', 'docx:1'), '1', '... and nothing outside it');

# ---- TRUNCATE of one partition -------------------------------------------
$node->safe_psql('postgres', q{
CREATE TABLE orders (id int, region text) PARTITION BY LIST (region);
CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');
CREATE TABLE orders_us PARTITION OF orders FOR VALUES IN ('us');
INSERT INTO orders VALUES (1, 'eu'), (2, 'eu'), (3, 'us');
SELECT cache_watch('orders', 'order:{region}:{id}');});
is($node->safe_psql('postgres', q{
SELECT string_agg(tbl::text || ' ' || events, ', ' ORDER BY tbl::text COLLATE "C")
  FROM cache_watches() WHERE events = 'TRUNCATE' AND tbl::text LIKE 'orders%'}),
	'orders TRUNCATE, orders_eu TRUNCATE, orders_us TRUNCATE',
	'cache_watch() of a partitioned table installs the TRUNCATE trigger on its partitions');
$redis->cli("SET order:eu:1 x\nSET order:us:3 x\n");
my $q = q{SELECT cache_query_json('SELECT count(*) AS n FROM orders')};
my $before = $node->safe_psql('postgres', $q);
is($node->safe_psql('postgres', $q), $before, 'the count over the parent is cached');
like($before, qr/"n": 3/, '... and is 3');
$node->safe_psql('postgres', 'TRUNCATE orders_eu');
ok(wait_for(sub { $redis->cli('exists', 'order:eu:1') eq '0' }),
	"TRUNCATE of one partition deletes the parent's template keys");
like($node->safe_psql('postgres', $q), qr/"n": 1/,
	'... and the cached result over the parent is not served stale');
# a partition added later: its first write warns, cache_watch() again fixes
($rc, $out, $err) = $node->psql('postgres', q{
CREATE TABLE orders_asia PARTITION OF orders FOR VALUES IN ('asia');
INSERT INTO orders VALUES (9, 'asia');});
like($err, qr/WARNING:.*partition "orders_asia" of a watched table has no TRUNCATE trigger/,
	'a partition added after cache_watch() is reported by its first write');
$node->safe_psql('postgres', q{SELECT cache_watch('orders', 'order:{region}:{id}')});
$redis->cli('set', 'order:asia:9', 'x');
($rc, $out, $err) = $node->psql('postgres', q{
INSERT INTO orders VALUES (10, 'asia');
TRUNCATE orders_asia;});
unlike($err, qr/WARNING/, '... and no longer after cache_watch() again');
ok(wait_for(sub { $redis->cli('exists', 'order:asia:9') eq '0' }),
	'... whose TRUNCATE then invalidates');

# cache_unwatch() removes them again
$node->safe_psql('postgres', q{SELECT cache_unwatch('orders')});
is($node->safe_psql('postgres', q{
SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'redis_cache%'
   AND tgrelid::regclass::text LIKE 'orders%'}), '0',
	'cache_unwatch() of the parent drops the partitions\' triggers too');

# ---- upgrade from 1.3 ------------------------------------------------------
$node->safe_psql('postgres', q{
CREATE DATABASE up;
CREATE ROLE legacy LOGIN;});
$node->safe_psql('up', q{
CREATE EXTENSION redis_cache VERSION '1.3';
CREATE SCHEMA legacy AUTHORIZATION legacy;});
($rc, $out, $err) = psql_as('legacy', q{
CREATE TABLE legacy.items (id int PRIMARY KEY, v int);
CREATE TABLE legacy.parts (id int, r text) PARTITION BY LIST (r);
CREATE TABLE legacy.parts_a PARTITION OF legacy.parts FOR VALUES IN ('a');
SELECT cache_watch('legacy.items', 'item:{id}');
SELECT cache_watch('legacy.parts', 'part:{r}:{id}');}, 'up');
is($rc, 0, 'under 1.3 any table owner calls cache_watch()');
$node->safe_psql('up', 'ALTER EXTENSION redis_cache UPDATE');
is($node->safe_psql('up', q{SELECT extversion FROM pg_extension WHERE extname = 'redis_cache'}),
	$node->safe_psql('up', q{SELECT default_version FROM pg_available_extensions WHERE name = 'redis_cache'}),
	'updated to the current version (the default one)');
$redis->cli("SET item:1 x\nSET part:a:1 x\n");
($rc, $out, $err) = psql_as('legacy', q{
INSERT INTO legacy.items VALUES (1, 1);
INSERT INTO legacy.parts VALUES (1, 'a');
TRUNCATE legacy.parts_a;}, 'up');
is($rc, 0, "the 1.3 triggers of the legacy role's tables still run after the update (adopted)");
is($redis->cli('exists', 'item:1'), '0', '... and invalidate');
ok(wait_for(sub { $redis->cli('exists', 'part:a:1') eq '0' }),
	'... TRUNCATE of a partition watched under 1.3 too');
($rc, $out, $err) = psql_as('legacy', q{SELECT cache_watch('legacy.items', 'item:{id}', 'item:v:{v}')}, 'up');
like($err, qr/permission denied for function cache_watch/,
	'a new cache_watch() by the legacy owner needs a GRANT (none is made by the update)');

is($node->safe_psql('up', q{
SELECT string_agg(tbl::text || ' ' || owner::text || ' ' || key_templates::text, ', '
                  ORDER BY tbl::text COLLATE "C")
  FROM cache_adopted_watches}),
	'legacy.items legacy {"item:{id}"}, legacy.parts legacy {"part:{r}:{id}"}, legacy.parts_a legacy {"part:{r}:{id}"}',
	'the update lists the watches it adopted');

# pg_dump and restore: the GRANT made by the update script is an initial
# privilege of the extension, not dumped; the adopted watches are
my $dump = "$PostgreSQL::Test::Utils::tmp_check/130_dump.sql";
my ($dout, $derr) = ('', '');
ok( IPC::Run::run(
		[ 'pg_dump', '-d', $node->connstr('up'), '-f', $dump ],
		'>', \$dout, '2>', \$derr,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default)),
	'pg_dump of the updated database');
$node->safe_psql('postgres', 'CREATE DATABASE up2');
($rc, $out, $err) = $node->psql('up2', slurp_file($dump));
is($rc, 0, 'the dump restores') or diag($err);
is($node->safe_psql('up2', q{SELECT count(*) FROM cache_adopted_watches}), '3',
	'the adopted watches are restored');
$redis->cli("SET item:2 x
SET part:a:2 x
");
($rc, $out, $err) = psql_as('legacy', q{
INSERT INTO legacy.items VALUES (2, 2);
INSERT INTO legacy.parts VALUES (2, 'a');}, 'up2');
is($rc, 0, "the legacy role's restored triggers still run") or diag($err);
is($redis->cli('exists', 'item:2', 'part:a:2'), '0', '... and invalidate');

# an adopted watch covers its table, owner and templates only
($rc, $out, $err) = psql_as('legacy', q{
DROP TRIGGER redis_cache_invalidate ON legacy.items;
CREATE TRIGGER redis_cache_invalidate AFTER INSERT ON legacy.items
    FOR EACH ROW EXECUTE FUNCTION cache_invalidate('*');
INSERT INTO legacy.items VALUES (3, 3);}, 'up2');
like($err, qr/may only run with key templates/,
	'the legacy owner cannot change the templates of an adopted watch');
$node->safe_psql('up2', q{CREATE SCHEMA app AUTHORIZATION app});
($rc, $out, $err) = psql_as('app', q{
CREATE TABLE app.items (id int PRIMARY KEY, v int);
CREATE TRIGGER redis_cache_invalidate AFTER INSERT ON app.items
    FOR EACH ROW EXECUTE FUNCTION cache_invalidate('item:{id}');
INSERT INTO app.items VALUES (1, 1);}, 'up2');
like($err, qr/may only run with key templates/,
	"another role's copy of an adopted watch is refused");
($rc, $out, $err) = psql_as('app', q{
SET search_path = app, public, pg_catalog;
SELECT * FROM cache_adopted_watches;}, 'up2');
like($err, qr/permission denied for table cache_adopted_watches/,
	'the adopted watches are not readable by PUBLIC');

done_testing();
