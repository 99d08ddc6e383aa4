
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# A cached query result is served only to a caller for whom running the
# query would give the same rows (issue 12, point 1 and the catalog and
# sequence part of point 8).  A query whose result depends on anything
# outside its key -- row-level security or tables read inside a function,
# current_setting(), the clock, the session, sequences, system catalogs --
# is run every time and never stored; the settings that change a result
# are part of the key.  Refused cases assert both the right rows and that
# nothing was stored (the sets counter and the result keys in Redis);
# positive controls assert that the second call is a hit.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;

my $redis = RedisCache::Server->new('main');
$redis->start;
my $node = $redis->new_pg_node('scope', preload => 1);
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION redis_cache;
CREATE ROLE app;
CREATE ROLE docowner;
GRANT USAGE, CREATE ON SCHEMA public TO docowner;

-- the repro of the issue: a tenant's rows behind RLS, read by a function
CREATE TABLE tdocs (tenant text, body text);
INSERT INTO tdocs VALUES ('t1', 't1 private'), ('t2', 't2 private');
ALTER TABLE tdocs ENABLE ROW LEVEL SECURITY;
ALTER TABLE tdocs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_only ON tdocs USING (tenant = current_setting('app.tenant'));
GRANT SELECT ON tdocs TO app, docowner;
CREATE FUNCTION docs_sql() RETURNS SETOF tdocs LANGUAGE sql STABLE
AS 'SELECT * FROM tdocs';

-- variants
CREATE FUNCTION docs_plpgsql() RETURNS SETOF tdocs LANGUAGE plpgsql STABLE
AS $$ BEGIN RETURN QUERY SELECT * FROM tdocs; END $$;
CREATE VIEW docs_view AS SELECT * FROM docs_sql();
CREATE FUNCTION my_tenant() RETURNS text LANGUAGE sql STABLE
AS 'SELECT tenant FROM tdocs LIMIT 1';
CREATE TABLE labels (tenant text, label text);
INSERT INTO labels VALUES ('t1', 'Label One'), ('t2', 'Label Two'), ('t3', NULL);
CREATE TABLE prices (v int);
INSERT INTO prices VALUES (10);
CREATE FUNCTION price() RETURNS int LANGUAGE sql STABLE AS 'SELECT v FROM prices';
CREATE FUNCTION twice(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 * 2';
CREATE FUNCTION add_price(int, int) RETURNS int LANGUAGE sql STABLE
AS 'SELECT $1 + $2 + (SELECT v FROM prices)';
CREATE AGGREGATE sum_priced(int) (sfunc = add_price, stype = int, initcond = '0');
CREATE SEQUENCE seq1;
CREATE TABLE events (ts timestamptz);
INSERT INTO events VALUES ('2024-01-01 12:00:00+00');
GRANT SELECT ON labels, prices, seq1, events, docs_view TO app;
});

# SECURITY DEFINER: the owner, not a superuser, is under the forced policy
$node->safe_psql('postgres', q{
SET ROLE docowner;
CREATE FUNCTION docs_definer() RETURNS SETOF tdocs LANGUAGE sql STABLE SECURITY DEFINER
AS 'SELECT * FROM tdocs';
});

sub sql { return $node->safe_psql('postgres', $_[0]); }

# a string as an SQL literal's content
sub lit { (my $s = $_[0]) =~ s/'/''/g; return $s; }

# cache_query_key(query) under a SET
sub key_under
{
	my ($set, $query) = @_;
	return sql("$set; SELECT cache_query_key('" . lit($query) . "')");
}

sub counter
{
	return sql("SELECT $_[0] FROM cache_stats WHERE family IS NULL");
}

# keys of the query namespace in Redis (query:{<sysid>.<tli>}:...), locks aside
sub result_keys
{
	my $out = $redis->cli('--scan', '--pattern', 'query:{[0-9]*');
	return scalar grep { $_ ne '' && !/:lock$/ } split /\n/, ($out // '');
}

# cache_query_json(query) as role app in a new session with app.tenant set
sub as_tenant
{
	my ($tenant, $query, $setup) = @_;
	$query =~ s/'/''/g;
	return sql("SET ROLE app; SET app.tenant = '$tenant'; " . ($setup // '')
		  . "SELECT cache_query_json('$query')");
}

# Run first, then (after $between) second; the second must give $want and
# neither may have stored anything.
sub refused
{
	my ($name, $first, $second, $want, $between) = @_;
	my ($sets, $keys) = (counter('sets'), result_keys());
	$first->();
	sql($between) if defined $between;
	my $got = $second->();
	if (ref $want eq 'Regexp') { like($got, $want, "$name: right rows"); }
	else { is($got, $want, "$name: right rows"); }
	is(counter('sets'), $sets, "$name: nothing stored (sets counter)");
	is(result_keys(), $keys, "$name: nothing stored (no result key in Redis)");
	return $got;
}

# A query cached and served: the second call is a hit.
sub cached
{
	my ($name, $call, $want) = @_;
	my $first = $call->();
	my $hits = counter('hits');
	my $sets = counter('sets');
	is($call->(), $first, "$name: same rows on the second call");
	is($first, $want, "$name: right rows") if defined $want;
	cmp_ok(counter('hits'), '>', $hits, "$name: the second call is a hit");
	is(counter('sets'), $sets, "$name: the second call stores nothing new");
	return $first;
}

my $T1 = '[{"body": "t1 private", "tenant": "t1"}]';
my $T2 = '[{"body": "t2 private", "tenant": "t2"}]';

# ---- the repro: RLS behind a LANGUAGE sql STABLE function ------------------

my $q = 'SELECT * FROM docs_sql()';
is(as_tenant('t1', $q), $T1, 'repro: tenant t1 sees its row');
refused('repro', sub { as_tenant('t1', $q) }, sub { as_tenant('t2', $q) }, $T2);

# the reason is told at DEBUG1
my ($stdout, $stderr);
$node->psql('postgres',
	"SET ROLE app; SET app.tenant = 't1'; SET client_min_messages = debug1; "
	  . "SELECT cache_query_json('SELECT * FROM docs_sql()')",
	stdout => \$stdout, stderr => \$stderr);
like($stderr, qr/result not cached: it calls docs_sql\(\), which is not IMMUTABLE/,
	'repro: the reason names the function');

# ---- variants of functions, views, places in the query ---------------------

for my $case (
	[ 'plpgsql function',        'SELECT * FROM docs_plpgsql()' ],
	[ 'SECURITY DEFINER function', 'SELECT * FROM docs_definer()' ],
	[ 'view calling the function', 'SELECT * FROM docs_view' ],
	[ 'function in a scalar subquery',
		'SELECT (SELECT body FROM docs_sql() LIMIT 1) AS body, (SELECT tenant FROM docs_sql() LIMIT 1) AS tenant' ],
	[ 'function in a CTE', 'WITH d AS (SELECT * FROM docs_sql()) SELECT * FROM d' ])
{
	my ($name, $query) = @$case;
	is(as_tenant('t1', $query), $T1, "$name: t1 sees its row");
	refused($name, sub { as_tenant('t1', $query) }, sub { as_tenant('t2', $query) }, $T2);
}

$q = 'SELECT label FROM labels WHERE tenant = my_tenant()';
is(as_tenant('t1', $q), '[{"label": "Label One"}]', 'function in WHERE: t1');
refused('function in WHERE', sub { as_tenant('t1', $q) }, sub { as_tenant('t2', $q) },
	'[{"label": "Label Two"}]');

$q = 'SELECT label FROM labels WHERE tenant IN (SELECT tenant FROM docs_sql())';
refused('function in an IN subquery', sub { as_tenant('t1', $q) }, sub { as_tenant('t2', $q) },
	'[{"label": "Label Two"}]');

# a STABLE function reading a plain table the query does not name
$q = q{SELECT cache_query_json('SELECT price() AS p')};
is(sql($q), '[{"p": 10}]', 'stable function reading another table: first value');
refused('stable function reading another table', sub { sql($q) }, sub { sql($q) },
	'[{"p": 11}]', 'UPDATE prices SET v = 11');

# an aggregate of the database with a STABLE support function
$q = q{SELECT cache_query_json('SELECT sum_priced(1) AS s FROM labels')};
refused('aggregate with a STABLE transition function', sub { sql($q) }, sub { sql($q) },
	'[{"s": 39}]', 'UPDATE prices SET v = 12');

# an operator whose function is a STABLE function of the database
sql(q{CREATE FUNCTION above_price(int, int) RETURNS boolean LANGUAGE sql STABLE
AS 'SELECT $1 > $2 + (SELECT v FROM prices)';
CREATE OPERATOR >>> (LEFTARG = int, RIGHTARG = int, FUNCTION = above_price)});
$q = q{SELECT cache_query_json('SELECT count(*) AS n FROM generate_series(1, 20) g WHERE g >>> 0')};
refused('operator of the database', sub { sql($q) }, sub { sql($q) }, '[{"n": 5}]',
	'UPDATE prices SET v = 15');

# ---- built-in functions and keywords reading state outside the key --------

$q = q{SELECT current_setting('app.tenant') AS t};
refused('current_setting()', sub { as_tenant('t1', $q) }, sub { as_tenant('t2', $q) },
	'[{"t": "t2"}]');

for my $case (
	[ 'now()',             q{SELECT cache_query_json('SELECT now() AS t')} ],
	[ 'CURRENT_TIMESTAMP', q{SELECT cache_query_json('SELECT CURRENT_TIMESTAMP AS t')} ],
	[ q{'now' constant},   q{SELECT cache_query_json('SELECT ''now''::timestamptz AS t')} ],
	[ 'clock_timestamp()', q{SELECT cache_query_json('SELECT clock_timestamp() AS t')} ],
	[ 'random()',          q{SELECT cache_query_json('SELECT random() AS t')} ])
{
	my ($name, $call) = @$case;
	my $first;
	my $second = refused($name, sub { $first = sql($call) }, sub { sql($call) },
		qr/^\[\{"t": .+\}\]$/);
	isnt($second, $first, "$name: the second call ran again");
}

$q = q{SELECT cache_query_json('SELECT $1::date - date ''2000-01-01'' AS d', ARRAY['today'])};
refused(q{'today' as a parameter}, sub { sql($q) }, sub { sql($q) }, qr/^\[\{"d": \d+\}\]$/);

$q = q{SELECT cache_query_json('SELECT ''today''::text::date - date ''2000-01-01'' AS d')};
refused('text cast to a date at run time', sub { sql($q) }, sub { sql($q) }, qr/^\[\{"d": \d+\}\]$/);
$q = q{SELECT cache_query_json($x$SELECT r.d - date '2000-01-01' AS d FROM jsonb_to_record('{"d": "today"}') AS r(d date)$x$)};
refused(q{'today' read by jsonb_to_record()}, sub { sql($q) }, sub { sql($q) }, qr/^\[\{"d": \d+\}\]$/);
$q = q{SELECT cache_query_json($x$SELECT E'\\x6eow'::date - date '2000-01-01' AS d$x$)};
refused(q{'now' behind an escape string}, sub { sql($q) }, sub { sql($q) }, qr/^\[\{"d": \d+\}\]$/);

$node->safe_psql('postgres', q{
CREATE ROLE u1; CREATE ROLE u2; CREATE ROLE grp;
GRANT grp TO u1, u2;});
$q = q{SELECT cache_query_json('SELECT session_user AS s, current_user AS c')};
refused('session_user',
	sub { sql("SET SESSION AUTHORIZATION u1; SET ROLE grp; $q") },
	sub { sql("SET SESSION AUTHORIZATION u2; SET ROLE grp; $q") },
	'[{"c": "grp", "s": "u2"}]');

$q = q{SELECT cache_query_json('SELECT pg_backend_pid() AS p')};
refused('pg_backend_pid()', sub { sql($q) }, sub { sql($q) }, qr/^\[\{"p": \d+\}\]$/);

# ---- sequences and catalogs -------------------------------------------------

$q = q{SELECT cache_query_json('SELECT last_value FROM seq1')};
sql(q{SELECT nextval('seq1')});
refused('a sequence', sub { sql($q) }, sub { sql($q) }, '[{"last_value": 2}]',
	q{SELECT nextval('seq1')});

$q = q{SELECT cache_query_json('SELECT nextval(''seq1'') AS n')};
refused('nextval()', sub { sql($q) }, sub { sql($q) }, '[{"n": 4}]');

$q = q{SELECT cache_query_json('SELECT count(*) AS n FROM pg_class WHERE relname = ''scope_probe''')};
refused('a pg_class query', sub { sql($q) }, sub { sql($q) }, '[{"n": 0}]');

# CREATE DATABASE bumps no generation: a cached pg_database read went stale
$q = q{SELECT cache_query_json('SELECT count(*) AS n FROM pg_database WHERE datname = ''scope_probe''')};
refused('a shared catalog (pg_database)', sub { sql($q) }, sub { sql($q) }, '[{"n": 1}]',
	'CREATE DATABASE scope_probe');

$q = q{SELECT cache_query_json('SELECT count(*) AS n FROM information_schema.tables WHERE table_name = ''labels''')};
refused('information_schema', sub { sql($q) }, sub { sql($q) }, '[{"n": 1}]');

$q = q{SELECT cache_query_json('SELECT xmin::text::bigint > 0 AS x FROM labels LIMIT 1')};
refused('a system column', sub { sql($q) }, sub { sql($q) }, '[{"x": true}]');

# ---- settings that change a result are in the key ---------------------------

$q = 'SELECT count(*) AS n FROM labels WHERE label = NULL';
isnt(key_under('SET transform_null_equals = off', $q),
	key_under('SET transform_null_equals = on', $q),
	'transform_null_equals: different keys');
(my $qq = $q) =~ s/'/''/g;
is(sql("SET transform_null_equals = off; SELECT cache_query_json('$qq')"), '[{"n": 0}]',
	'transform_null_equals off: no row equals NULL');
is(sql("SET transform_null_equals = on; SELECT cache_query_json('$qq')"), '[{"n": 1}]',
	'transform_null_equals on: the NULL label counts (not the cached off result)');
is(sql("SET transform_null_equals = off; SELECT cache_query_json('$qq')"), '[{"n": 0}]',
	'transform_null_equals off again: its own result');

$q = q{SELECT xmlparse(content 'a<b/>')::text AS x};
isnt(key_under('SET xmloption = content', $q), key_under('SET xmloption = document', $q),
	'xmloption: different keys');
$q = q{SELECT quote_ident('labels') AS q};
isnt(key_under('SET quote_all_identifiers = off', $q),
	key_under('SET quote_all_identifiers = on', $q),
	'quote_all_identifiers: different keys');
$q = q{SELECT xmlelement(name b, '\x01'::bytea)::text AS x};
isnt(key_under('SET xmlbinary = base64', $q), key_under('SET xmlbinary = hex', $q),
	'xmlbinary: different keys');
is(sql("SET xmlbinary = hex; SELECT cache_query_json('" . lit($q) . "')"), '[{"x": "<b>01</b>"}]',
	'xmlbinary hex: its own text');
is(sql("SET xmlbinary = base64; SELECT cache_query_json('" . lit($q) . "')"), '[{"x": "<b>AQ==</b>"}]',
	'xmlbinary base64: its own text (not the cached hex one)');

$q = q{SELECT cache_query_json('SELECT label FROM labels WHERE tenant = ''t1''')};
refused('gin_fuzzy_search_limit set',
	sub { sql("SET gin_fuzzy_search_limit = 10; $q") },
	sub { sql("SET gin_fuzzy_search_limit = 10; $q") }, '[{"label": "Label One"}]');

# ---- positive controls: still cached ---------------------------------------

cached('plain table',
	sub { sql(q{SELECT cache_query_json('SELECT label FROM labels WHERE tenant = ''t2''')}) },
	'[{"label": "Label Two"}]');
cached('lower()',
	sub { sql(q{SELECT cache_query_json('SELECT lower(label) AS l FROM labels WHERE tenant = ''t1''')}) },
	'[{"l": "label one"}]');
my $utc = cached('to_char(timestamptz) under TimeZone UTC',
	sub { sql(q{SET TimeZone = 'UTC'; SELECT cache_query_json('SELECT to_char(ts, ''YYYY-MM-DD HH24:MI'') AS t FROM events')}) },
	'[{"t": "2024-01-01 12:00"}]');
cached('to_char(timestamptz) under TimeZone Asia/Tokyo',
	sub { sql(q{SET TimeZone = 'Asia/Tokyo'; SELECT cache_query_json('SELECT to_char(ts, ''YYYY-MM-DD HH24:MI'') AS t FROM events')}) },
	'[{"t": "2024-01-01 21:00"}]');
cached('current_user and a parameter for the time',
	sub { sql(q{SET ROLE app; SELECT cache_query_json('SELECT current_user AS u, count(*) AS n FROM events WHERE ts < $1', ARRAY['2030-01-01 00:00+00'])}) },
	'[{"n": 1, "u": "app"}]');
cached('IMMUTABLE function of the database (trusted)',
	sub { sql(q{SELECT cache_query_json('SELECT twice(2) AS t')}) },
	'[{"t": 4}]');

done_testing();
