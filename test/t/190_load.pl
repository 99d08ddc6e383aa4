
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# Load with faults: 20 pgbench clients mix cache-aside reads (cache_get /
# cache_set), writes to watched tables and cached queries (cache_query,
# cache_query_json) for RC_LOAD_SECONDS (default 60), while this script
# pauses Redis (SIGSTOP for 0.2 to 2 s), kills it (SIGKILL, then a new
# server on the same port) and restarts it cleanly, and samples the memory
# of every backend and of the worker once a second.  Then it waits for
# quiescence and asserts: no failed transaction, no crash, no stale entry,
# no backend above a memory bound.  The whole file takes about
# RC_LOAD_SECONDS + 30 s (66 to 70 s measured for 60 s of load).
# RC_LOAD_RATE (default 0: as fast as the machine goes) is the total rate
# of transactions.
#
# The faults are random but replayable: their kinds, lengths and the pauses
# between them are drawn in order from RC_LOAD_SEED (printed), and only how
# many fit into the run depends on the machine's speed.  The assertions do
# not depend on the timing: they are on the state once everything stopped.
#
# What "stale" means here is what the extension promises, nothing more:
#
# - Keys the application fills itself (cache-aside) can legitimately be
#   stale when the reader stores a value it read before a concurrent
#   commit's delete.  So the readers here store only while holding a FOR
#   SHARE lock on the row they read: a writer of that row waits for the
#   reader's transaction, so its commit (and its delete, sent at commit)
#   comes after the reader's SET; a reader that waited for a writer reads
#   the row it committed.  With that, every key of a template must be
#   absent or equal to the value derived from the current row.
# - Cached query results are filled by the extension itself, which
#   promises never to store or serve a result a committed write has made
#   stale: every cached JSON result (read raw from Redis) and every result
#   served now must equal the query run directly.

use strict;
use warnings;

use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(time usleep);

my $timeout = $PostgreSQL::Test::Utils::timeout_default;
my $load_seconds = $ENV{RC_LOAD_SECONDS} || 60;
my $seed = $ENV{RC_LOAD_SEED} // int(rand(2**31));
srand($seed);
diag("RC_LOAD_SEED=$seed RC_LOAD_SECONDS=$load_seconds (set them to replay the fault sequence)");

# The fault sequence, drawn from the seed before anything else uses rand():
# [kind, length (pause: seconds stopped; kill: seconds down), gap after].
my @plan;
for (1 .. 200)
{
	my $r = rand();
	my $kind = $r < 0.6 ? 'pause' : $r < 0.8 ? 'kill9' : 'restart';
	push @plan, [ $kind, $kind eq 'pause' ? 0.2 + rand(1.8) : rand(1.0), 1 + rand(3) ];
}

my $clients = 20;
# Total transactions per second (pgbench -R; 0: as fast as it goes).
# Unbounded, the pattern invalidations (product:variants:{id}:*, one SCAN
# of the keyspace each) overflow the worker's queue and the namespace is
# flushed during the load (170_pattern_queue.pl tests that on its own); a
# bounded rate (e.g. 1000) lets the worker keep up and keeps runs
# comparable.
my $rate = $ENV{RC_LOAD_RATE} // 0;
my $ntenants = 200;
my $nproducts = 2000;    # 10 per tenant
my @setting_names = qw(locale plan theme tz currency);
# Peak resident memory (VmHWM) allowed per backend and for the worker.  It
# includes the shared buffers a process touched (16 MB here).  Measured
# peaks: 22 MB for a backend, 8 MB for the worker; the bound leaves room
# for other machines and builds, and is far below the gigabytes a reply
# without limits could take (issue 12, point 6).
my $rss_bound_kb = 100 * 1024;

my $redis = RedisCache::Server->new('load');
$redis->start;
my $node = $redis->new_pg_node('load', conf => qq{
shared_buffers = 16MB
log_statement = none
redis_cache.circuit_open_seconds = 1
log_min_messages = warning
});
$node->start;

my $names_sql = join(', ', map { "'$_'" } @setting_names);
$node->safe_psql('postgres', qq{
CREATE EXTENSION redis_cache;
CREATE TABLE tenants (id int PRIMARY KEY, subdomain text NOT NULL, name text NOT NULL);
CREATE TABLE products (id int PRIMARY KEY, tenant_id int NOT NULL, details text NOT NULL);
CREATE INDEX ON products (tenant_id);
CREATE TABLE settings (org int, name text, value text NOT NULL, PRIMARY KEY (org, name));
INSERT INTO tenants SELECT g, 'sub' || g, 'tenant ' || g FROM generate_series(1, $ntenants) g;
INSERT INTO products SELECT g, 1 + (g - 1) % $ntenants, md5(g::text) FROM generate_series(1, $nproducts) g;
INSERT INTO settings SELECT o, n, n || ' of ' || o
  FROM generate_series(1, $ntenants) o, unnest(ARRAY[$names_sql]) n;
SELECT cache_watch('tenants', 'tenant:id:{id}', 'tenant:subdomain:{subdomain}');
SELECT cache_watch('products', 'product:details:{id}', 'product:variants:{id}:*');
SELECT cache_watch('settings', 'settings:org:{org}:{name}');

-- The value each key holds, derived from the row: the staleness check
-- below derives the same in Perl.
CREATE FUNCTION tenant_value(t tenants) RETURNS text LANGUAGE sql IMMUTABLE
AS \$\$ SELECT t.name || '|' || t.subdomain \$\$;
CREATE FUNCTION product_value(p products) RETURNS text LANGUAGE sql IMMUTABLE
AS \$\$ SELECT p.tenant_id || '|' || p.details \$\$;

-- Cache-aside readers.  On a miss they read the row FOR SHARE and store
-- it while holding that lock, in the calling statement's transaction:
-- a writer of the row commits (and deletes the keys) only after the SET.
CREATE FUNCTION load_tenant(p_id int) RETURNS text LANGUAGE plpgsql AS \$\$
DECLARE
	v text := cache_get('tenant:id:' || p_id);
	r tenants;
BEGIN
	IF v IS NOT NULL THEN
		RETURN v;
	END IF;
	SELECT * INTO r FROM tenants WHERE id = p_id FOR SHARE;
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	v := tenant_value(r);
	PERFORM cache_set('tenant:id:' || p_id, v, 600);
	PERFORM cache_set('tenant:subdomain:' || r.subdomain, r.id::text, 600);
	RETURN v;
END \$\$;

CREATE FUNCTION tenant_by_subdomain(p_sub text) RETURNS int LANGUAGE plpgsql AS \$\$
DECLARE
	v text := cache_get('tenant:subdomain:' || p_sub);
	found_id int;
BEGIN
	IF v IS NOT NULL THEN
		RETURN v::int;
	END IF;
	SELECT id INTO found_id FROM tenants WHERE subdomain = p_sub FOR SHARE;
	IF found_id IS NOT NULL THEN
		PERFORM cache_set('tenant:subdomain:' || p_sub, found_id::text, 600);
	END IF;
	RETURN found_id;
END \$\$;

CREATE FUNCTION load_product(p_id int, p_variant int) RETURNS text LANGUAGE plpgsql AS \$\$
DECLARE
	v text := cache_get('product:details:' || p_id);
	r products;
BEGIN
	IF v IS NOT NULL AND cache_exists('product:variants:' || p_id || ':v' || p_variant) THEN
		RETURN v;
	END IF;
	SELECT * INTO r FROM products WHERE id = p_id FOR SHARE;
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	v := product_value(r);
	PERFORM cache_set('product:details:' || p_id, v, 600);
	PERFORM cache_set('product:variants:' || p_id || ':v' || p_variant, v, 600);
	RETURN v;
END \$\$;

CREATE FUNCTION load_setting(p_org int, p_name text) RETURNS text LANGUAGE plpgsql AS \$\$
DECLARE
	k text := 'settings:org:' || p_org || ':' || p_name;
	v text := cache_get(k);
BEGIN
	IF v IS NOT NULL THEN
		RETURN v;
	END IF;
	SELECT value INTO v FROM settings WHERE org = p_org AND name = p_name FOR SHARE;
	IF v IS NOT NULL THEN
		PERFORM cache_set(k, v, 600);
	END IF;
	RETURN v;
END \$\$;});

# The cached queries, per tenant: (name, format, query, column list).
my @queries = (
	[ 'products_json', 'json',
	  'SELECT id, details FROM products WHERE tenant_id = $1 ORDER BY id' ],
	[ 'tenant_json', 'json',
	  'SELECT t.id, t.name, t.subdomain, count(p.id) AS products FROM tenants t '
	  . 'LEFT JOIN products p ON p.tenant_id = t.id WHERE t.id = $1 GROUP BY t.id' ],
	[ 'settings_rows', 'rows',
	  'SELECT name, value FROM settings WHERE org = $1 ORDER BY name',
	  'name text, value text' ],
);
my %query = map { $_->[0] => $_ } @queries;

# --- the pgbench scripts ----------------------------------------------------
# name => [weight, script]
my $dir = $PostgreSQL::Test::Utils::tmp_check;
my $names_array = "ARRAY[$names_sql]";
my %scripts = (
	read_tenant => [ 15, qq{
\\set id random(1, $ntenants)
SELECT load_tenant(:id);
} ],
	read_subdomain => [ 5, qq{
\\set id random(1, $ntenants)
\\set b random(0, 1)
SELECT tenant_by_subdomain('sub' || :id || CASE WHEN :b = 1 THEN '-b' ELSE '' END);
} ],
	read_product => [ 15, qq{
\\set id random(1, $nproducts)
\\set v random(1, 2)
SELECT load_product(:id, :v);
} ],
	read_setting => [ 10, qq{
\\set org random(1, $ntenants)
\\set n random(1, ${\ scalar @setting_names})
SELECT load_setting(:org, ($names_array)[:n]);
} ],
	query_products_json => [ 10, qq{
\\set t random(1, $ntenants)
SELECT jsonb_array_length(cache_query_json('$query{products_json}[2]', ARRAY[:t]::text[]));
} ],
	query_tenant_json => [ 7, qq{
\\set t random(1, $ntenants)
SELECT cache_query_json('$query{tenant_json}[2]', ARRAY[:t]::text[]);
} ],
	query_settings_rows => [ 8, qq{
\\set t random(1, $ntenants)
SELECT count(*) FROM cache_query('$query{settings_rows}[2]', ARRAY[:t]::text[]) AS s($query{settings_rows}[3]);
} ],
	# one tenant: a new name, and one time in 10 a new subdomain (sub<id>
	# and sub<id>-b alternate), which ends both subdomain keys
	write_tenant => [ 5, qq{
\\set id random(1, $ntenants)
\\set r random(1, 10)
UPDATE tenants SET name = 'n' || left(md5(random()::text), 8),
  subdomain = CASE WHEN :r > 1 THEN subdomain
                   WHEN subdomain LIKE '%-b' THEN 'sub' || id ELSE 'sub' || id || '-b' END
  WHERE id = :id;
} ],
	# one product: new details, and one time in 10 another tenant
	write_product => [ 2, qq{
\\set id random(1, $nproducts)
\\set r random(1, 10)
\\set t random(1, $ntenants)
UPDATE products SET details = md5(random()::text),
  tenant_id = CASE WHEN :r = 1 THEN :t ELSE tenant_id END
  WHERE id = :id;
} ],
	write_setting => [ 5, qq{
\\set org random(1, $ntenants)
\\set n random(1, ${\ scalar @setting_names})
UPDATE settings SET value = left(md5(random()::text), 10)
  WHERE org = :org AND name = ($names_array)[:n];
} ],
	# rows of two tables in one transaction, a savepoint rolled back, and
	# a rolled back transaction (rows always locked products first, then
	# settings, one row each: no deadlock with the other scripts)
	write_multi => [ 1, qq{
\\set id random(1, $nproducts)
\\set org random(1, $ntenants)
\\set n random(1, ${\ scalar @setting_names})
BEGIN;
UPDATE products SET details = md5(random()::text) WHERE id = :id;
SAVEPOINT s;
UPDATE settings SET value = 'rolled back' WHERE org = :org AND name = ($names_array)[:n];
ROLLBACK TO SAVEPOINT s;
UPDATE settings SET value = left(md5(random()::text), 10) WHERE org = :org AND name = ($names_array)[:n];
COMMIT;
BEGIN;
UPDATE settings SET value = 'rolled back' WHERE org = :org AND name = ($names_array)[:n];
ROLLBACK;
} ],
	# DELETE and INSERT of the same product id in one transaction
	write_delete_insert => [ 1, qq{
\\set id random(1, $nproducts)
\\set t random(1, $ntenants)
BEGIN;
-- two clients deleting and re-inserting the same id would collide on the
-- key (READ COMMITTED): one id at a time
SELECT pg_advisory_xact_lock(190, :id);
DELETE FROM products WHERE id = :id;
INSERT INTO products VALUES (:id, :t, md5(random()::text));
COMMIT;
} ],
);
my @script_names = sort keys %scripts;
my @script_args;
for my $name (@script_names)
{
	my $file = "$dir/190_$name.sql";
	unlink $file;
	append_to_file($file, $scripts{$name}[1]);
	push @script_args, '-f', "$file\@$scripts{$name}[0]";
}

# --- helpers ------------------------------------------------------------------

sub sql { return $node->safe_psql('postgres', $_[0]); }

# /proc/<pid>/status fields in kB: VmRSS, VmHWM, RssAnon.
sub proc_memory
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/status") or return undef;
	my %m;
	while (<$fh>)
	{
		$m{$1} = $2 if /^(VmRSS|VmHWM|RssAnon):\s+(\d+) kB/;
	}
	close $fh;
	return defined $m{VmHWM} ? \%m : undef;
}

# [pid, kind] of the postmaster's children: kind is 'client backend',
# 'redis_cache worker' or 'other' (checkpointer, walwriter, ...).
my ($postmaster_pid) = split /\n/, slurp_file($node->data_dir . '/postmaster.pid');
sub server_processes
{
	my @result;
	opendir(my $d, '/proc') or return;
	for my $pid (grep { /^\d+$/ } readdir $d)
	{
		open(my $fh, '<', "/proc/$pid/stat") or next;
		my $stat = <$fh> // '';
		close $fh;
		my ($ppid) = $stat =~ /\) \S+ (\d+)/ or next;
		next unless $ppid == $postmaster_pid;
		open($fh, '<', "/proc/$pid/cmdline") or next;
		my $cmd = <$fh> // '';
		close $fh;
		my $kind =
		    $cmd =~ /redis_cache/ ? 'redis_cache worker'
		  : $cmd =~ /\[local\]|\d\(\d+\)/ ? 'client backend'
		  : 'other';
		push @result, [ $pid, $kind ];
	}
	closedir $d;
	return @result;
}

# Server-wide counters of cache_stats (totals row).
sub counters
{
	my $row = sql(q{
SELECT invalidations_sent || ' ' || invalidations_queued || ' ' || invalidations_retried
       || ' ' || flushes || ' ' || errors_connect || ' ' || errors_timeout || ' ' || errors_io
       || ' ' || bypasses || ' ' || hits || ' ' || misses || ' ' || sets
  FROM cache_stats WHERE family IS NULL});
	my %c;
	@c{qw(sent queued retried flushes econnect etimeout eio bypasses hits misses sets)} =
	  split / /, $row;
	return \%c;
}

# Values of KEYS in Redis (undef when absent), in one pipelined redis-cli.
sub redis_mget
{
	my (@keys) = @_;
	my @values;
	while (my @batch = splice(@keys, 0, 500))
	{
		my $out = $redis->cli("MGET @batch\n") // die 'redis-cli MGET failed';
		my @v = split /\n/, $out, -1;
		die 'redis-cli MGET: ' . scalar(@v) . ' values for ' . scalar(@batch) . ' keys'
		  unless @v == @batch;
		push @values, map { $_ eq '' ? undef : $_ } @v;
	}
	return @values;
}

# Every key in Redis (SCAN through redis-cli).
sub redis_keys
{
	my ($in, $out, $err) = ('', '', '');
	IPC::Run::run([ 'redis-cli', '-h', '127.0.0.1', '-p', $redis->port, '--scan' ],
		\$in, \$out, \$err, IPC::Run::timeout($timeout))
	  or die "redis-cli --scan: $err";
	return split /\n/, $out;
}

# --- before the load ------------------------------------------------------------
my $pm_start = sql('SELECT pg_postmaster_start_time()');
my $counters_before = counters();
my $log_offset = -s $node->logfile;

# --- the load -------------------------------------------------------------------
my $pgb_out = "$dir/190_pgbench.out";
my $pgb_err = "$dir/190_pgbench.err";
unlink $pgb_out, $pgb_err;
my @pgbench = ('pgbench', '-n', '-c', $clients, '-j', 4, '-T', $load_seconds,
	'-P', 10, ($rate ? ('-R', $rate) : ()), @script_args, '-h', $node->host, '-p', $node->port, 'postgres');
my $t_start = time();
my $pgb_pid = fork();
die "fork: $!" unless defined $pgb_pid;
if ($pgb_pid == 0)
{
	open(STDIN, '<', '/dev/null');
	open(STDOUT, '>', $pgb_out);
	open(STDERR, '>', $pgb_err);
	exec(@pgbench) or POSIX::_exit(127);
}

# Memory of the server's processes, once a second: the postmaster's
# children found in /proc, by their titles ("postgres: load: user db
# [local] SELECT", "postgres: load: redis_cache invalidation worker").
my %peak;           # process kind => { VmRSS, VmHWM, RssAnon } (maxima, kB)
my $samples = 0;
my $max_backends = 0;
sub sample_memory
{
	my $n = 0;
	for my $p (server_processes())
	{
		my ($pid, $kind) = @$p;
		my $m = proc_memory($pid) or next;    # it ended meanwhile
		$n++ if $kind eq 'client backend';
		for my $f (keys %$m)
		{
			$peak{$kind}{$f} = $m->{$f} if $m->{$f} > ($peak{$kind}{$f} // 0);
		}
	}
	$max_backends = $n if $n > $max_backends;
	$samples++;
	return;
}

my @faults;         # "kind length" as injected
my %fault_count = (pause => 0, kill9 => 0, restart => 0);
my $last_fault_at = $t_start + $load_seconds - 5;    # Redis stays up at the end
my $next_fault_at = $t_start + 2;
my $next_sample_at = $t_start;
my $paused_until;
my $pgb_status;
my $pgb_killed = 0;
while (1)
{
	my $now = time();
	if (waitpid($pgb_pid, POSIX::WNOHANG()) == $pgb_pid)
	{
		$pgb_status = $?;
		last;
	}
	if ($now > $t_start + $load_seconds + $timeout && !$pgb_killed)
	{
		diag('pgbench did not end: killed');
		kill 'TERM', $pgb_pid;
		$pgb_killed = 1;
	}
	if (defined $paused_until && $now >= $paused_until)
	{
		$redis->resume;
		$paused_until = undef;
	}
	if (!defined $paused_until && $now >= $next_fault_at && $now < $last_fault_at
		&& @faults < @plan)
	{
		my ($kind, $length, $gap) = @{ $plan[ scalar @faults ] };
		my $at = sprintf('%.1f', $now - $t_start);
		if ($kind eq 'pause')
		{
			$redis->pause;
			$paused_until = $now + $length;
			diag(sprintf('t=%5.1f s: fault %d: SIGSTOP Redis for %.1f s',
					$at, @faults + 1, $length));
		}
		elsif ($kind eq 'kill9')
		{
			$redis->kill9;
			usleep(int($length * 1e6));
			$redis->start;
			diag(sprintf('t=%5.1f s: fault %d: SIGKILL Redis, restarted after %.1f s',
					$at, @faults + 1, $length));
		}
		else
		{
			$redis->restart;
			diag(sprintf('t=%5.1f s: fault %d: clean restart of Redis', $at, @faults + 1));
		}
		push @faults, "$kind $length";
		$fault_count{$kind}++;
		$next_fault_at = time() + ($kind eq 'pause' ? $length : 0) + $gap;
	}
	if ($now >= $next_sample_at)
	{
		sample_memory();
		$next_sample_at = $now + 1;
	}
	usleep(50_000);
}
$redis->resume if defined $paused_until;
my $t_load = time() - $t_start;
sample_memory();

# --- pgbench's report ------------------------------------------------------------
my $out = slurp_file($pgb_out);
my $err = slurp_file($pgb_err);
is($pgb_status, 0, 'pgbench exits with status 0')
  or diag("pgbench stderr:\n" . substr($err, -3000));
my ($failed) = $out =~ /^number of failed transactions: (\d+)/m;
is($failed, '0', 'pgbench: number of failed transactions: 0');
my ($xacts) = $out =~ /^number of transactions actually processed: (\d+)/m;
my ($tps) = $out =~ /^tps = ([0-9.]+)/m;
cmp_ok($xacts // 0, '>', 0, 'pgbench processed transactions');
my @aborted = $err =~ /^(.*(?:aborted|ERROR).*)$/mg;
is(scalar(@aborted), 0, 'no client aborted, no ERROR reached a client')
  or diag(join("\n", @aborted[ 0 .. ($#aborted < 9 ? $#aborted : 9) ]));
my $client_warnings = () = $err =~ /WARNING:/g;
diag(sprintf('load: %.0f s, %d clients, %s transactions, tps %s, %d WARNINGs seen by clients',
		$t_load, $clients, $xacts // '?', $tps // '?', $client_warnings));
for my $progress ($err =~ /^(progress: .*)$/mg)
{
	diag($progress);
}
# per script: "SQL script N: <file>" then " - N transactions (...)", ...
my $scripts_ran = 0;
while ($out =~ /^SQL script \d+: \S*190_(\w+)\.sql\n(.*?)(?=^SQL script|\z)/msg)
{
	my ($name, $block) = ($1, $2);
	my ($n, $stps) = $block =~ /- (\d+) transactions \([^,]*, tps = ([0-9.]+)\)/;
	my ($nfailed) = $block =~ /- number of failed transactions: (\d+)/;
	my ($lat) = $block =~ /- latency average = ([0-9.]+ ms)/;
	diag(sprintf('  %-20s %7s transactions, tps %8s, failed %s, latency %s',
			$name, $n // '?', $stps // '?', $nfailed // '?', $lat // '?'));
	$scripts_ran++ if ($n // 0) > 0;
}
is($scripts_ran, scalar @script_names, 'every script ran transactions');

my $nfaults = @faults;
diag(sprintf('faults injected: %d (%d SIGSTOP pauses, %d SIGKILL + start, %d clean restarts)',
		$nfaults, $fault_count{pause}, $fault_count{kill9}, $fault_count{restart}));
cmp_ok($nfaults, '>', 0, 'faults were injected during the load');

# --- quiescence -----------------------------------------------------------------
# Redis answers a new backend, then the worker has nothing left: its
# counters (invalidations handed over and retried, namespace flushes) stay
# the same over 3 s, six times its 500 ms retry period.  No write runs any
# more, so nothing new can be handed to it.
my $t_quiet = time();
ok( $node->poll_query_until('postgres',
		q{SELECT (cache_health()->>'reachable')::bool}),
	'quiescence: Redis reachable');
my $stable = 0;
my $prev = '';
my $deadline = time() + $timeout;
while (time() < $deadline)
{
	my $c = counters();
	my $now = join(' ', @$c{qw(queued retried flushes)});
	$stable = ($now eq $prev) ? $stable + 1 : 0;
	$prev = $now;
	last if $stable >= 3;
	sleep(1);
}
ok($stable >= 3, 'quiescence: the worker has nothing left to do');
diag(sprintf('quiescence reached %.1f s after the load', time() - $t_quiet));

my $c = counters();
diag(sprintf('cache_stats during the run: %d hits, %d misses, %d sets, %d invalidations sent at commit, %d handed to the worker, %d retried, %d namespace flushes, %d connect / %d timeout / %d I/O errors, %d bypasses',
		map { $c->{$_} - $counters_before->{$_} }
		  qw(hits misses sets sent queued retried flushes econnect etimeout eio bypasses)));

# --- no stale entry ---------------------------------------------------------------
my %expected;    # key => value derived from the current rows
for (split /\n/, sql('SELECT id, name, subdomain FROM tenants'))
{
	my ($id, $name, $sub) = split /\|/;
	$expected{"tenant:id:$id"} = "$name|$sub";
	$expected{"tenant:subdomain:$sub"} = $id;
}
for (split /\n/, sql('SELECT id, tenant_id, details FROM products'))
{
	my ($id, $t, $details) = split /\|/;
	$expected{"product:details:$id"} = "$t|$details";
	$expected{"product:variants:$id:v$_"} = "$t|$details" for 1 .. 2;
}
for (split /\n/, sql('SELECT org, name, value FROM settings'))
{
	my ($org, $name, $value) = split /\|/;
	$expected{"settings:org:$org:$name"} = $value;
}

my @all_keys = redis_keys();
my @app_keys = grep { /^(tenant|product|settings):/ } @all_keys;
my @values = redis_mget(@app_keys);
my @stale;
my $app_checked = 0;
for my $i (0 .. $#app_keys)
{
	next unless defined $values[$i];    # expired or deleted meanwhile
	$app_checked++;
	my $want = $expected{ $app_keys[$i] };
	push @stale, "$app_keys[$i] = '$values[$i]', row says "
	  . (defined $want ? "'$want'" : 'no such row')
	  if !defined $want || $want ne $values[$i];
}
diag("$app_checked template keys in Redis checked against the rows");
cmp_ok($app_checked, '>', 0, 'the load left template keys to check');
is(scalar(@stale), 0, 'no stale template key at quiescence')
  or diag(join("\n", @stale[ 0 .. ($#stale < 19 ? $#stale : 19) ]));

# Cached query results: the key of every (query, tenant) the load used,
# computed in a session with the load's role, database and settings.
my %result_key;    # redis key => [query name, tenant]
my $key_sql = join("\nUNION ALL\n", map {
		my ($name, $format, $q) = @$_;
		"SELECT '$name', t, cache_query_key('$q', ARRAY[t::text], '$format') "
		  . "FROM generate_series(1, $ntenants) t"
	} @queries);
for (split /\n/, sql($key_sql))
{
	my ($name, $t, $key) = split /\|/;
	$result_key{$key} = [ $name, $t ];
}
my @result_keys = grep { /^query:\d+:\d+:[0-9a-f]+$/ } @all_keys;
my @unknown = grep { !$result_key{$_} } @result_keys;
is(scalar(@unknown), 0, 'every cached query result in Redis is one the check knows')
  or diag(join("\n", @unknown[ 0 .. ($#unknown < 9 ? $#unknown : 9) ]));

# raw JSON data, as an application reading HGET <key> data sees it
my @json_keys = grep { $result_key{$_}[0] =~ /_json$/ } @result_keys;
my @checks;
if (@json_keys)
{
	my $out = $redis->cli(join('', map { "HGET $_ data\n" } @json_keys)) // die 'HGET';
	my @data = split /\n/, $out, -1;
	die 'redis-cli HGET: wrong number of replies' unless @data == @json_keys;
	for my $i (0 .. $#json_keys)
	{
		next if $data[$i] eq '';    # deleted since the SCAN
		my ($name, $t) = @{ $result_key{ $json_keys[$i] } };
		(my $q = $query{$name}[2]) =~ s/\$1/$t/;
		push @checks, "('$json_keys[$i]', \$rc\$$data[$i]\$rc\$::jsonb, "
		  . "(SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]') FROM ($q) s))";
	}
}
my @stale_results;
if (@checks)
{
	@stale_results = split /\n/, sql(
		"SELECT k || ': cached ' || cached || ', query gives ' || direct FROM (VALUES "
		  . join(",\n", @checks) . ") v(k, cached, direct) WHERE cached <> direct");
}
diag(sprintf('%d cached query results in Redis (%d JSON, raw data compared)',
		scalar @result_keys, scalar @checks));
is(scalar(@stale_results), 0, 'no stale cached JSON result in Redis at quiescence')
  or diag(join("\n", @stale_results[ 0 .. ($#stale_results < 9 ? $#stale_results : 9) ]));

# What cache_query_json and cache_query serve now, twice: the first round
# serves what the load left or fills, the second serves those fills.
my $served_sql = qq{
SELECT coalesce(string_agg(q || ' tenant ' || t, ', '), '') FROM (
  SELECT 'products_json' AS q, t FROM generate_series(1, $ntenants) t
   WHERE cache_query_json('$query{products_json}[2]', ARRAY[t::text])
         <> (SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]') FROM
               (SELECT id, details FROM products WHERE tenant_id = t ORDER BY id) s)
  UNION ALL
  SELECT 'tenant_json', t FROM generate_series(1, $ntenants) t
   WHERE cache_query_json('$query{tenant_json}[2]', ARRAY[t::text])
         <> (SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]') FROM
               (SELECT t2.id, t2.name, t2.subdomain, count(p.id) AS products FROM tenants t2
                  LEFT JOIN products p ON p.tenant_id = t2.id WHERE t2.id = t GROUP BY t2.id) s)
  UNION ALL
  SELECT 'settings_rows', t FROM generate_series(1, $ntenants) t
   WHERE (SELECT coalesce(array_agg(c.name || '=' || c.value), '{}')
            FROM cache_query('$query{settings_rows}[2]', ARRAY[t::text]) AS c($query{settings_rows}[3]))
         IS DISTINCT FROM
         (SELECT coalesce(array_agg(name || '=' || value ORDER BY name), '{}')
            FROM settings WHERE org = t)) bad};
for my $round (1, 2)
{
	my $hits_before = counters()->{hits};
	is(sql($served_sql), '',
		"cache_query and cache_query_json serve no stale result at quiescence (round $round)");
	diag(sprintf('served check, round %d: %d results, %d of them hits',
			$round, 3 * $ntenants, counters()->{hits} - $hits_before));
}

# --- memory -------------------------------------------------------------------
for my $type (sort keys %peak)
{
	diag(sprintf('peak memory of %-28s VmHWM %6.1f MB, VmRSS %6.1f MB, RssAnon %6.1f MB',
			"'$type':", $peak{$type}{VmHWM} / 1024, $peak{$type}{VmRSS} / 1024,
			($peak{$type}{RssAnon} // 0) / 1024));
}
diag("memory sampled $samples times, up to $max_backends client backends at once");
ok($peak{'client backend'} && $peak{'redis_cache worker'},
	'memory of the client backends and of the worker was sampled');
my @over = grep { $peak{$_}{VmHWM} > $rss_bound_kb }
  ('client backend', 'redis_cache worker');
is(scalar(@over), 0,
	sprintf('no backend and not the worker above %d MB resident (VmHWM)', $rss_bound_kb / 1024));

# --- no crash -------------------------------------------------------------------
is(sql('SELECT pg_postmaster_start_time()'), $pm_start,
	'the server ran through (no crash restart)');
my $log = slurp_file($node->logfile, $log_offset);
my @crashes = $log =~ /^(.*(?:terminated by signal|PANIC|was terminated|exited with exit code|server process .* exited).*)$/mg;
is(scalar(@crashes), 0, 'no crash, no PANIC in the server log')
  or diag(join("\n", @crashes[ 0 .. ($#crashes < 9 ? $#crashes : 9) ]));
my $errors_logged = () = $log =~ /^.*\bERROR:/mg;
my $warnings_logged = () = $log =~ /^.*\bWARNING:/mg;
diag("server log during the test: $errors_logged ERROR, $warnings_logged WARNING lines");

$node->stop;
unlike(slurp_file($node->logfile, $log_offset), qr/terminated by signal|PANIC/,
	'no backend crashed up to the clean stop');
diag(sprintf('190_load.pl total %.0f s', time() - $^T));

done_testing();
