
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# Redis Cluster (issue 15): 3 masters and 3 replicas on loopback
# (RedisCache::Cluster), redis_cache.host a list of seeds, the cluster
# detected by itself.  Three clusters, each with a PostgreSQL node of its
# own: plain TCP (key_prefix 'shop:'), TLS everywhere with verify-full
# (tls-cluster, empty key_prefix) and one requiring a password
# (password_file, key_prefix 'pw:').  On each, with keys chosen so that
# every master owns some (RedisCache::Cluster::owners):
#
#   1. cache_ping, cache_health() (cluster, cluster_masters);
#   2. the key-value functions on every node: cache_set/cache_get read back
#      from the owning node with a plain GET (no redirection: the routing
#      went there itself), cache_mget in order across nodes (also 2,500
#      keys), cache_set_many, cache_delete of many keys, and
#      cache_add/touch/ttl/exists/incr/lock/unlock/get_bytea per node (the
#      Lua script of cache_unlock on every node);
#   3. an application client in cluster mode (redis-cli -c) and SQL
#      reading and writing the same keys;
#   4. commit-time invalidation whose keys span every node: a 30-row
#      UPDATE, a ROLLBACK, one row, a pattern template (SCAN on every
#      master), TRUNCATE;
#   5. cache_delete_pattern on every master;
#   6. cache_query miss, fill, hit and invalidation: every key of the
#      namespace (results, generations, dependency sets) in one slot, the
#      hashtag {<system identifier>.<timeline>};
#   7. a cache version change flushes the owned keys on every master and
#      nothing else (sessions, queues, keys outside the prefix survive).
#
# On the plain cluster only:
#
#   8. seeds: the first seed dead, a replica as the only seed, no seed
#      answering (a bounded miss with a WARNING);
#   9. a commit while one master is paused (SIGSTOP, shorter than the node
#      timeout): the other masters' keys are deleted at commit, the paused
#      master's part is replayed by the worker, exactly (other keys stay);
#  10. MOVED: a quiet reshard (redis-cli --cluster reshard) under an open
#      session that keeps its map;
#  11. ASK: a slot moved by hand (SETSLOT MIGRATING/IMPORTING) with part of
#      its keys migrated: reads, writes, an invalidation at commit and a
#      cache_mget whose keys are split (TRYAGAIN) while it is open;
#  12. failover with a lost invalidation: the master holding the query
#      namespace and a cached key loses its replica link (the replica
#      paused, its link killed), a commit deletes the key and bumps the
#      generation there, the master is SIGKILLed and the replica, which
#      never saw them, is promoted: its owned keys must be flushed before
#      anything is served (0 stale entries), application keys kept;
#  13. CLUSTERDOWN (a master and its replica killed): a bounded miss with a
#      WARNING, commits go on and their invalidations are replayed when
#      the cluster is back.
#
# Assertions are on states (what each node holds, read with plain GET or
# SCAN on that node) and counters (cache_stats, cache_health); waits poll
# a state with a deadline.  Figures (diag): how long a failover took
# before the first cache operation succeeded, counters' deltas.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Cluster;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(time usleep);

my $timeout = $PostgreSQL::Test::Utils::timeout_default;

*poll = \&RedisCache::Server::poll_until;

# The cluster and node under test, and their key_prefix and label: set by
# use_cluster() for each of the three clusters.
my ($C, $NODE, $P, $L);

sub use_cluster
{
	($C, $NODE, $P, $L) = @_;
	return;
}

sub sql { return $NODE->safe_psql('postgres', $_[0]); }

# A psql script in a new session, never hanging the test:
# (stdout, stderr, milliseconds).
sub run_script
{
	my ($script, $on) = @_;
	$on //= $NODE;
	my ($stdout, $stderr) = ('', '');
	my $t0 = time();
	$on->psql('postgres', $script, stdout => \$stdout, stderr => \$stderr,
		timeout => $timeout);
	return ($stdout, $stderr, (time() - $t0) * 1000);
}

# A query in a background psql: (stdout, the stderr it produced).
sub bg_query
{
	my ($bg, $q) = @_;
	$bg->{stderr} = '';
	my $out = $bg->query($q);
	my $err = $bg->{stderr};
	$bg->{stderr} = '';
	return ($out, $err);
}

# cache_health() fields of a fresh session, 'NULL' for a JSON null or a
# missing field.
sub health
{
	my (@fields) = @_;
	my $out = sql("SELECT concat_ws('|', "
		  . join(', ', map { "coalesce(h->>'$_', 'NULL')" } @fields)
		  . ') FROM cache_health() h');
	return split /\|/, $out, -1;
}

# A totals column of cache_stats (server-wide counters: preloaded).
sub stat_total { return sql("SELECT $_[0] FROM cache_stats WHERE family IS NULL"); }

# hits|misses|sets of the 'query' family (cached query results).
sub query_stats
{
	my $r = sql("SELECT hits || '|' || misses || '|' || sets FROM cache_stats WHERE family = 'query'");
	return $r eq '' ? (0, 0, 0) : split /\|/, $r;
}

sub set_conf
{
	my ($name, $value) = @_;
	sql(defined $value
		? "ALTER SYSTEM SET $name = '$value'"
		: "ALTER SYSTEM RESET $name");
	$NODE->reload;
	$NODE->poll_query_until('postgres',
		"SELECT setting FROM pg_settings WHERE name = '$name'", $value // '')
	  or die "$name not reloaded";
	return;
}

sub count_log
{
	my ($re, $offset) = @_;
	my $log = slurp_file($NODE->logfile, $offset // 0);
	return scalar(() = $log =~ /$re/g);
}

# Keys (without the prefix) made from sprintf($fmt, N), N = 1, 2, ...,
# until every master owns $per of them; returned in the order of N.
sub pick_keys
{
	my ($fmt, $per) = @_;
	my @m = $C->masters;
	my %n = map { $_->port => 0 } @m;
	my @picked;
	my $i = 0;
	while (grep { $_ < $per } values %n)
	{
		my @cand = map { sprintf($fmt, $_) } $i + 1 .. $i + 200;
		$i += 200;
		die "pick_keys($fmt): no luck" if $i > 20000;
		my @o = $C->owners(map { "$P$_" } @cand);
		for my $j (0 .. $#cand)
		{
			my $port = $o[$j]->port;
			next if $n{$port} >= $per;
			$n{$port}++;
			push @picked, $cand[$j];
		}
	}
	return @picked;
}

# "port=N port=N port=N" for prefixed keys: how many each master owns.
sub spread
{
	my (@keys) = @_;
	my %n = map { $_->port => 0 } $C->masters;
	$n{ $_->port }++ for $C->owners(@keys);
	return join(' ', map { "$_=$n{$_}" } sort keys %n);
}

sub masters_owning_all { return !grep { /=0$/ } split / /, spread(@_); }

# SQL array literal of keys
sub arr { return 'ARRAY[' . join(', ', map { "'$_'" } @_) . ']::text[]'; }

# number of defined values get_all finds for prefixed keys
sub present
{
	my $v = $C->get_all(@_);
	return scalar(grep { defined $v->{$_} } @_);
}

# present() for keys whose owners are already known (a hashref key =>
# node): plain GETs on those nodes only
sub present_known
{
	my ($owner, @keys) = @_;
	my %by;
	push @{ $by{ $owner->{$_}->port } }, $_ for @keys;
	my $n = 0;
	for my $port (keys %by)
	{
		my @k = @{ $by{$port} };
		my ($node) = grep { $_->port == $port } map { $owner->{$_} } @k;
		my $out = $node->cli(join('', map { "GET $_\n" } @k)) // die "GET on $port";
		$n += grep { $_ ne '' } split /\n/, $out;
	}
	return $n;
}

# every key matching a (prefixed) pattern on every master: a flat list
sub scan_all
{
	my $found = $C->scan_masters($_[0]);
	return map { @$_ } values %$found;
}

# Masters holding no key of the cache version's bookkeeping and no key of
# the query namespace: faults there test the routing, not the version check.
sub plain_masters
{
	my %busy = map { $_->port => 1 } $C->owners(
		grep { /cache\W*:?\W*(version|versions|run_id|flush|flushed)\b|query:/ } scan_all("${P}*"));
	return grep { !$busy{ $_->port } } $C->masters;
}

sub tenant_keys
{
	my ($from, $to) = @_;
	my @subs = split /\n/, sql("SELECT subdomain FROM tenants WHERE id BETWEEN $from AND $to ORDER BY id");
	return ((map { "${P}tenant:id:$_" } $from .. $to), map { "${P}tenant:subdomain:$_" } @subs);
}

sub fill_tenants
{
	return sql(q{SELECT count(*) FROM tenants
 WHERE cache_set('tenant:id:' || id, name, 600) AND cache_set('tenant:subdomain:' || subdomain, id::text, 600)});
}

# =====================================================================
# The checks every cluster gets
# =====================================================================
sub common_checks
{
	my $what = $L;

	# --- 1. connect -------------------------------------------------------
	{
		my ($out, $err) = run_script('SELECT cache_ping()');
		is($out, 'PONG', "$what: cache_ping() through the seeds");
		unlike($err, qr/WARNING|ERROR/, "$what: no warning") or diag($err);
		my ($cluster, $masters, $reachable, $tls) =
		  health(qw(cluster cluster_masters reachable tls));
		is("$cluster|$masters|$reachable", 'true|3|true',
			"$what: cache_health() says cluster, 3 masters, reachable");
		if ($C->{tls})
		{
			like($tls, qr/^TLS/, "$what: cache_health() tls is $tls");
		}
		diag("$what: cache_health() = " . sql('SELECT cache_health()'));
	}

	# --- 2. key-value functions on every node ---------------------------
	{
		my @k = pick_keys('kv:%d', 2);
		my @pk = map { "$P$_" } @k;
		is(join(' ', map { $_->port } $C->owners(@pk)),
			join(' ', map { $C->node_for_key($_)->port } @pk),
			"$what: the Perl slot map agrees with CLUSTER KEYSLOT for @k");
		my $vals = join(',', map { "v:$_" } @k);
		is(sql("SELECT string_agg(cache_set(k, 'v:' || k, 600)::text, ',' ORDER BY o) FROM unnest("
				  . arr(@k) . ') WITH ORDINALITY u(k, o)'),
			join(',', ('true') x @k), "$what: cache_set of keys on every master (" . spread(@pk) . ')');
		my $v = $C->get_all(@pk);
		is(join(',', map { $v->{$_} // 'NULL' } @pk), $vals,
			"$what: each value is on the master owning its slot (plain GET there)");
		is(sql("SELECT string_agg(cache_get(k), ',' ORDER BY o) FROM unnest(" . arr(@k)
				  . ') WITH ORDINALITY u(k, o)'),
			$vals, "$what: cache_get reads them back");
		my @mixed = (reverse(@k), 'kv:missing');
		is(sql("SELECT array_to_string(cache_mget(ARRAY[" . join(', ', map { "'$_'" } @mixed)
				  . ", NULL]::text[]), ',', '*')"),
			join(',', (map { "v:$_" } reverse @k), '*', '*'),
			"$what: cache_mget over every master returns the values in order, NULL for a miss and a NULL key");

		is(sql(q{SELECT cache_set_many(array_agg('bulk:' || g ORDER BY g), array_agg('b' || g ORDER BY g), 600)
  FROM generate_series(1, 2500) g}),
			'2500', "$what: cache_set_many of 2,500 keys");
		my $found = $C->scan_masters("${P}bulk:*");
		my @counts = map { scalar @{ $found->{$_} } } sort keys %$found;
		is(scalar(grep { $_ > 0 } @counts) . '|' . eval { my $s = 0; $s += $_ for @counts; $s },
			'3|2500', "$what: the 2,500 keys are on the 3 masters (@counts)");
		is(sql(q{SELECT count(*) FROM unnest(cache_mget(ARRAY(SELECT 'bulk:' || g FROM generate_series(1, 2500) g ORDER BY g)))
  WITH ORDINALITY u(v, i) WHERE v = 'b' || i}),
			'2500', "$what: cache_mget of the 2,500 keys: every value in its place");
		is(sql("SELECT cache_delete(VARIADIC " . arr(@k, 'kv:missing') . ')'),
			scalar(@k), "$what: cache_delete of keys on every master counts those that existed");
		is(present(@pk), 0, "$what: ... and they are gone from their masters");
		is(sql(q{SELECT cache_delete(VARIADIC ARRAY(SELECT 'bulk:' || g FROM generate_series(1, 2500) g))}),
			'2500', "$what: cache_delete of the 2,500 keys");
		is(scalar(scan_all("${P}bulk:*")), 0, "$what: ... none left on any master");

		# one key per master through every other key-value function
		my @one = pick_keys('fn:%d', 1);
		my @bad;
		for my $key (@one)
		{
			my ($owner) = $C->owners("$P$key");
			my ($out, $err) = run_script(qq{
SELECT cache_add('$key', 'a', 60);
SELECT cache_add('$key', 'b', 60);
SELECT cache_get('$key');
SELECT cache_touch('$key', 900);
SELECT cache_ttl('$key') > 800;
SELECT cache_exists('$key');
SELECT cache_delete('$key');
SELECT cache_incr('$key', 5, 60);
SELECT cache_incr('$key');
});
			push @bad, "$key: $out $err" unless $out eq "t\nf\na\nt\nt\nt\n1\n5\n6" && $err eq '';
			push @bad, "$key: counter not on its master"
			  unless ($owner->cli('get', "$P$key") // '') eq '6';
			my $tok = sql("SELECT cache_lock('lock:$key', 30)");
			my ($lowner) = $C->owners("${P}lock:$key");
			push @bad, "lock:$key: token not on its master"
			  unless $tok =~ /^[0-9a-f]{32}$/ && ($lowner->cli('get', "${P}lock:$key") // '') eq $tok;
			push @bad, "lock:$key: not released"
			  unless sql("SELECT cache_unlock('lock:$key', '$tok')") eq 't'
			  && ($lowner->cli('exists', "${P}lock:$key") // '') eq '0';
			push @bad, "$key: bytea"
			  unless sql(qq{SELECT cache_set('$key', '\\x00ff0a41'::bytea, 60)::text || encode(cache_get_bytea('$key'), 'hex')})
			  eq 'true00ff0a41';
		}
		is(join('; ', @bad), '',
			"$what: cache_add/touch/ttl/exists/delete/incr/lock/unlock/get_bytea on a key of each master ("
			  . spread(map { "$P$_" } @one) . ')');
		sql('SELECT cache_delete(VARIADIC ' . arr(@one) . ')');
	}

	# --- 3. an application client in cluster mode ------------------------
	{
		my @a = pick_keys('appkey:%d', 1);
		my @bad = grep { ($C->cli_c('set', "$P$_", "from-app-$_") // '') ne 'OK' } @a;
		is("@bad", '', "$what: redis-cli -c writes keys on every master");
		is(sql('SELECT string_agg(cache_get(k), \',\' ORDER BY o) FROM unnest(' . arr(@a)
				  . ') WITH ORDINALITY u(k, o)'),
			join(',', map { "from-app-$_" } @a), "$what: cache_get reads what the application wrote");
		my @s = pick_keys('sqlkey:%d', 1);
		sql("SELECT cache_set(k, 'from-sql-' || k, 600) FROM unnest(" . arr(@s) . ') k');
		my @m = $C->masters;
		@bad = grep {
			my $key = $_;
			my ($owner) = $C->owners("$P$key");
			my ($other) = grep { $_ != $owner } @m;
			($C->cli_c_at($other, 'get', "$P$key") // '') ne "from-sql-$key"
		} @s;
		is("@bad", '', "$what: redis-cli -c, asking another master (MOVED), reads what cache_set wrote");
		sql('SELECT cache_delete(VARIADIC ' . arr(@a, @s) . ')');
	}

	# --- 4. commit-time invalidation over every node -----------------------
	{
		is(fill_tenants(), '30', "$what: 30 tenants cached (60 keys)");
		my @tk = tenant_keys(1, 30);
		ok(masters_owning_all(@tk), "$what: the 60 tenant keys span the masters (" . spread(@tk) . ')');
		sql("BEGIN; UPDATE tenants SET name = name || '!'; ROLLBACK;");
		is(present(@tk), 60, "$what: a rolled-back UPDATE deletes nothing");

		my ($sent, $queued) = (stat_total('invalidations_sent'), stat_total('invalidations_queued'));
		my ($out, $err) = run_script("UPDATE tenants SET name = name || 'x'");
		is($err, '', "$what: a 30-row UPDATE commits without a message");
		is(present(@tk), 0, "$what: ... and its 60 keys are gone from every master at commit");
		my $sent_d = stat_total('invalidations_sent') - $sent;
		cmp_ok($sent_d, '>', 0, "$what: invalidations_sent rose ($sent_d)");
		is(stat_total('invalidations_queued') - $queued, 0, "$what: nothing handed to the worker");
		is((health('replay_queued'))[0], '0', "$what: replay queue empty");

		fill_tenants();
		my $n = 7;
		my ($sub) = sql("SELECT subdomain FROM tenants WHERE id = $n");
		sql("UPDATE tenants SET subdomain = subdomain || 'y' WHERE id = $n");
		my $v = $C->get_all(@tk);
		my @gone = grep { !defined $v->{$_} } @tk;
		is("@gone", "${P}tenant:id:$n ${P}tenant:subdomain:$sub",
			"$what: a one-row UPDATE deletes exactly its 2 keys, the 58 others stay");

		# a pattern template: the worker SCANs every master
		my @var = pick_keys('product:variants:7:c%d', 2);
		my @keep = ('product:variants:70:c1', 'product:variants:8:c1', 'product:variants:7');
		sql("SELECT cache_set(k, 'v', 600) FROM unnest(" . arr(@var, @keep) . ') k');
		is(present(map { "$P$_" } @var, @keep), @var + @keep,
			"$what: variant keys of product 7 on every master (" . spread(map { "$P$_" } @var) . ')');
		sql("UPDATE products SET name = 'renamed' WHERE id = 7");
		poll("$what: the pattern product:variants:7:* empties every master",
			sub { present(map { "$P$_" } @var) == 0 });
		is(present(map { "$P$_" } @keep), scalar(@keep),
			"$what: product:variants:70:c1, product:variants:8:c1 and product:variants:7 stay");
		sql('SELECT cache_delete(VARIADIC ' . arr(@keep) . ')');

		# TRUNCATE: every key of every template, on every master
		fill_tenants();
		my @rows = split /\n/, sql("SELECT id || ',' || quote_literal(subdomain) || ',' || quote_literal(name) FROM tenants ORDER BY id");
		sql('TRUNCATE tenants');
		poll("$what: TRUNCATE removes the tenant families from every master",
			sub { scalar(scan_all("${P}tenant:*")) == 0 });
		sql('INSERT INTO tenants VALUES ' . join(', ', map { "($_)" } @rows));
	}

	# --- 5. cache_delete_pattern on every master ----------------------------
	{
		my @t = (pick_keys('tmp:%d', 3), map { "tmp:x$_" } 1 .. 20);
		my %seen;
		@t = grep { !$seen{$_}++ } @t;
		sql("SELECT cache_set(k, 'v', 600) FROM unnest(" . arr(@t, 'tmpx:1') . ') k');
		$C->cli_c('set', 'other:tmp:1', 'v') if $P ne '';
		is(sql(q{SELECT cache_delete_pattern('tmp:*')}), scalar(@t),
			"$what: cache_delete_pattern('tmp:*') counts the " . scalar(@t) . ' keys of every master ('
			  . spread(map { "$P$_" } @t) . ')');
		is(scalar(scan_all("${P}tmp:*")), 0, "$what: ... none left on any master");
		is(present("${P}tmpx:1"), 1, "$what: tmpx:1 stays");
		is($C->cli_c('get', 'other:tmp:1'), 'v', "$what: a key outside the prefix stays")
		  if $P ne '';
		sql(q{SELECT cache_delete('tmpx:1')});
	}

	# --- 6. cache_query --------------------------------------------------------
	{
		my $q = 'SELECT id, name FROM tenants WHERE id <= $1 ORDER BY id';
		my $direct = sub {
			return "(SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]') FROM (SELECT id, name FROM tenants WHERE id <= $_[0] ORDER BY id) s)";
		};
		my @s0 = query_stats();
		is(sql("SELECT cache_query_json('$q', ARRAY['5']) = " . $direct->(5)), 't',
			"$what: cache_query_json, first call: the query's rows");
		my @s1 = query_stats();
		is(($s1[1] - $s0[1]) . '|' . ($s1[2] - $s0[2]), '1|1', "$what: ... a miss, then stored");
		my $key = sql("SELECT cache_query_key('$q', ARRAY['5'])");
		like($key, qr/^\Q$P\Equery:\{\d+\.\d+\}:/,
			"$what: the result key carries the namespace hashtag: $key");
		my $data = $C->cli_c('hget', $key, 'data');
		is(sql("SELECT \$rc\$$data\$rc\$::jsonb = " . $direct->(5)), 't',
			"$what: redis-cli -c HGET <key> data reads the result");
		is(sql("SELECT cache_query_json('$q', ARRAY['5']) = " . $direct->(5)), 't',
			"$what: second call: same rows");
		my @s2 = query_stats();
		is($s2[0] - $s1[0], 1, "$what: ... a hit");
		is(sql("SELECT string_agg(id || '=' || name, ',') FROM cache_query('$q', ARRAY['4']) AS t(id int, name text)")
			  . '|'
			  . sql("SELECT string_agg(id || '=' || name, ',') FROM cache_query('$q', ARRAY['4']) AS t(id int, name text)"),
			join('|', (sql("SELECT string_agg(id || '=' || name, ',' ORDER BY id) FROM tenants WHERE id <= 4")) x 2),
			"$what: cache_query (rows), miss then hit: the query's rows");
		my @s3 = query_stats();
		is($s3[0] - $s2[0], 1, "$what: ... the second a hit");

		my $found = $C->scan_masters("${P}query:*");
		my @ns = map { @{ $found->{$_} } } sort keys %$found;
		my %slots = map { RedisCache::Cluster::key_hash_slot($_) => 1 } @ns;
		my @holders = grep { @{ $found->{$_} } } sort keys %$found;
		cmp_ok(scalar(@ns), '>=', 3, "$what: the namespace holds " . scalar(@ns) . ' keys (results, generations, dependencies)');
		is(scalar(@holders) . '|' . scalar(keys %slots), '1|1',
			"$what: all of them on one master, in one slot");
		diag("$what: query namespace keys: @ns[0 .. ($#ns < 5 ? $#ns : 5)]");

		sql("UPDATE tenants SET name = 'changed-$what' WHERE id = 3");
		my @s4 = query_stats();
		is(sql("SELECT cache_query_json('$q', ARRAY['5']) = " . $direct->(5)), 't',
			"$what: after an UPDATE of a row it read: the new rows");
		like(sql("SELECT cache_query_json('$q', ARRAY['5'])::text"), qr/changed-\Q$what\E/,
			"$what: ... with the changed name");
		my @s5 = query_stats();
		is($s5[0] - $s4[0], 1, "$what: ... the first call after the write was a miss, the second a hit");
		$data = $C->cli_c('hget', $key, 'data') // '';
		is(sql("SELECT \$rc\$$data\$rc\$::jsonb = " . $direct->(5)), 't',
			"$what: what Redis holds under the key now is the new result");
		cmp_ok(sql("SELECT cache_query_invalidate('tenants')"), '>=', 1,
			"$what: cache_query_invalidate('tenants') deletes the cached results");
		is($C->cli_c('exists', $key), '0', "$what: ... the result key is gone");
	}

	# --- 7. a cache version change --------------------------------------------
	{
		fill_tenants();
		my @owned_tk = tenant_keys(1, 30);
		my @prod = pick_keys('product:details:%d', 2);
		sql("SELECT cache_set(k, 'p', 600) FROM unnest(" . arr(@prod) . ') k');
		sql(q{SELECT count(*) FROM generate_series(1, 3) g, LATERAL cache_query('SELECT id FROM tenants WHERE id = $1', ARRAY[g::text], 600) AS t(id int)});
		# the application's data, in the same Redis
		my @sess = pick_keys('session:%d', 2);
		my @queues = pick_keys('queues:q%d', 1);
		my @bad;
		push @bad, grep { ($C->cli_c('set', "$P$_", "user-$_") // '') ne 'OK' } @sess;
		for my $qk (@queues)
		{
			$C->cli_c('del', "$P$qk");
			push @bad, $qk unless ($C->cli_c('rpush', "$P$qk", 'j1', 'j2', 'j3') // '') eq '3';
		}
		my @outside = $P ne '' ? map { "other:session:$_" } 1 .. 6 : ();
		push @bad, grep { ($C->cli_c('set', $_, 'keep') // '') ne 'OK' } @outside;
		is("@bad", '', "$what: application data written: sessions ("
			  . spread(map { "$P$_" } @sess) . '), queues (' . spread(map { "$P$_" } @queues) . ')'
			  . (@outside ? ', keys outside the prefix' : ''));
		my @results = grep { !/:(gen|deps|deps-dead)(:|$)/ && !/:lock$/ } scan_all("${P}query:*");
		cmp_ok(scalar(@results), '>=', 3, "$what: query results cached before the change");
		is(present(@owned_tk, map { "$P$_" } @prod), 60 + @prod, "$what: owned keys cached before the change");

		my $flushes = stat_total('flushes');
		my $offset = -s $NODE->logfile;
		set_conf('redis_cache.version', "deploy-$what-2");
		poll("$what: a new session sees the new version and flushes", sub {
			sql('SELECT cache_ping()');
			return count_log(qr/cache version mismatch/, $offset) > 0;
		});
		diag("$what: " . $_) for grep { /mismatch|flushed/ } split /\n/, slurp_file($NODE->logfile, $offset);
		is(scalar(scan_all("${P}tenant:*")), 0, "$what: version change: no watched family key left on any master");
		is(scalar(scan_all("${P}product:*")), 0, "$what: version change: no declared family key left on any master");
		@results = grep { !/:(gen|deps|deps-dead)(:|$)/ && !/:lock$/ } scan_all("${P}query:*");
		is(scalar(@results), 0, "$what: version change: no query result left") or diag("@results");
		my $v = $C->get_all(map { "$P$_" } @sess);
		is(scalar(grep { ($v->{"$P$_"} // '') eq "user-$_" } @sess), scalar(@sess),
			"$what: version change: the sessions on every master survive");
		is(join(',', map { $C->cli_c('llen', "$P$_") } @queues), join(',', ('3') x @queues),
			"$what: version change: the queues survive with their jobs");
		is(scalar(grep { ($C->cli_c('get', $_) // '') eq 'keep' } @outside), scalar(@outside),
			"$what: version change: keys outside the prefix survive")
		  if @outside;
		is(sql('SELECT expected || \'|\' || stored FROM cache_version()'), "deploy-$what-2|deploy-$what-2",
			"$what: cache_version(): the new version is in force");
		my $fd = stat_total('flushes') - $flushes;
		cmp_ok($fd, '>=', 1, "$what: cache_stats.flushes rose ($fd)");
		# the version's bookkeeping keys share one slot
		my @book = grep { /cache\W*:?\W*(version|versions|run_id|flush|flushed)\b/ } scan_all("${P}*cache*");
		my %bslots = map { RedisCache::Cluster::key_hash_slot($_) => 1 } @book;
		cmp_ok(scalar(@book), '>=', 1, "$what: bookkeeping keys found: @book");
		is(scalar(keys %bslots), 1, "$what: the cache version's bookkeeping keys share one slot");
		sql('SELECT cache_delete(VARIADIC ' . arr(@sess, @queues) . ')');
		$C->cli_c('del', $_) for @outside;
	}
	return;
}

# The schema of every node.
sub create_schema
{
	sql(q{
CREATE EXTENSION redis_cache;
CREATE TABLE tenants (id int PRIMARY KEY, subdomain text NOT NULL, name text NOT NULL);
INSERT INTO tenants SELECT g, 's' || g, 'tenant ' || g FROM generate_series(1, 30) g;
SELECT cache_watch('tenants', 'tenant:id:{id}', 'tenant:subdomain:{subdomain}');
CREATE TABLE products (id int PRIMARY KEY, name text);
INSERT INTO products SELECT g, 'p' || g FROM generate_series(1, 10) g;
INSERT INTO products VALUES (70, 'p70');
SELECT cache_watch('products', 'product:variants:{id}:*');
});
	return;
}

# =====================================================================
# the plain cluster
# =====================================================================
my $t0 = time();
my $plain = RedisCache::Cluster->new('plain');
$plain->start;
diag(sprintf('plain cluster of %d nodes: created in %.1f s, ok after %.1f s',
		scalar($plain->nodes), $plain->create_seconds, time() - $t0));
my $pnode = $plain->new_pg_node('cl_plain', conf => q{
redis_cache.key_prefix = 'shop:'
redis_cache.cache_families = 'product:*'
redis_cache.commit_timeout_ms = 300
redis_cache.circuit_open_seconds = 1
log_statement = none
});
$pnode->start;
use_cluster($plain, $pnode, 'shop:', 'plain');
create_schema();
common_checks();

# --- 8. seeds ------------------------------------------------------------------
{
	my $what = 'seeds';
	my $dead = PostgreSQL::Test::Cluster::get_free_port();
	my $seeds = $plain->seeds_conf;
	set_conf('redis_cache.host', "127.0.0.1:$dead, $seeds");
	my ($out, $err) = run_script("SELECT cache_set('seed:a', 'x', 60); SELECT cache_get('seed:a');");
	is($out, "t\nx", "$what: the first seed dead: the next one is used");
	unlike($err, qr/ERROR/, "$what: ... no error") or diag($err);

	my ($r) = $plain->replicas_of(($plain->masters)[0]);
	set_conf('redis_cache.host', $plain->addr($r));
	my @k = pick_keys('seed:r%d', 1);
	($out, $err) = run_script('SELECT string_agg(cache_set(k, k, 60)::text, \',\') FROM unnest(' . arr(@k) . ') k');
	is($out, 'true,true,true', "$what: a replica as the only seed: the map comes from it, writes go to the masters");
	is(present(map { "shop:$_" } @k), 3, "$what: ... the keys are on their masters");
	is((health('cluster_masters'))[0], '3', "$what: ... cache_health counts 3 masters");

	my $dead2 = PostgreSQL::Test::Cluster::get_free_port();
	set_conf('redis_cache.host', "127.0.0.1:$dead, 127.0.0.1:$dead2");
	my $ms;
	($out, $err, $ms) = run_script(q{SELECT (cache_get('seed:a') IS NULL) || '|' || cache_set('seed:b', 'x', 60)});
	is($out, 'true|false', "$what: no seed answers: cache_get misses, cache_set returns false");
	like($err, qr/WARNING/, "$what: ... with a WARNING") or diag($err);
	unlike($err, qr/ERROR/, "$what: ... no error");
	diag(sprintf('%s: no seed answers: the session took %.0f ms; it said: %s', $what, $ms, $err));
	cmp_ok($ms, '<', 10000, "$what: ... the miss is bounded");
	set_conf('redis_cache.host', $seeds);
	is(sql(q{SELECT cache_get('seed:a')}), 'x', "$what: seeds restored");
	sql(q{SELECT cache_delete(VARIADIC ARRAY['seed:a', 'seed:b']) + cache_delete(VARIADIC } . arr(@k) . ')');
}

# --- 9. one master paused during a commit: the worker replays its part --------
{
	my $what = 'paused master at commit';
	fill_tenants();
	my @upd = tenant_keys(1, 20);
	my @stay = tenant_keys(21, 30);
	my ($victim) = plain_masters();
	ok($victim, "$what: a master without bookkeeping or query keys: " . ($victim ? $victim->port : 'none'));
	$victim //= ($plain->masters)[0];
	my @on_victim = grep { $_ == $victim } $plain->owners(@upd);
	my @stay_on_victim = grep { $_ == $victim } $plain->owners(@stay);
	ok(@on_victim && @stay_on_victim,
		"$what: the paused master holds keys the UPDATE deletes and keys it does not");
	# owners read now: while a node is paused, nothing may ask it
	# (RedisCache::Cluster's views ask the first running node)
	my %owner;
	@owner{@upd} = $plain->owners(@upd);
	my @others_upd = grep { $owner{$_} != $victim } @upd;
	my $queued = stat_total('invalidations_queued');
	my $offset = -s $pnode->logfile;
	$victim->pause;
	my $t_pause = time();
	my ($out, $err) = run_script("UPDATE tenants SET name = name || 'p' WHERE id <= 20");
	# while it is paused: the other masters' part was delivered at commit
	my $others_left = present_known(\%owner, @others_upd);
	my $paused_for = time() - $t_pause;
	# resumed well within the node timeout (2 s): no failover, no CLUSTERDOWN
	$victim->resume;
	my $queued_d = stat_total('invalidations_queued') - $queued;
	ok($plain->wait_ok, "$what: the cluster is ok after the pause") or diag($plain->describe);
	unlike($err, qr/ERROR/, "$what: the commit went through");
	diag("$what: the committing session said: $err") if $err ne '';
	# a session that connects at this commit cannot reach every master in
	# commit_timeout_ms and hands the whole commit to the worker (README,
	# Redis Cluster: a master that hangs): the replay below deletes them
	note("$what: " . $others_left . ' of ' . scalar(@others_upd)
		  . ' keys on the other masters left at commit (a connection opened at commit)');
	cmp_ok($queued_d, '>', 0, "$what: the paused master's part was handed to the worker ($queued_d)");
	diag(sprintf('%s: master %d paused %.2f s (node timeout 2 s, commit_timeout_ms 300)',
			$what, $victim->port, $paused_for));
	poll("$what: the replay queue drains", sub { (health('replay_queued'))[0] eq '0' });
	is(present(@upd), 0, "$what: the updated rows' keys on the paused master are gone too");
	is(present(@stay), scalar(@stay), "$what: the other rows' keys stay, on every master (an exact replay)");
	ok(count_log(qr/replayed \d+ invalidations that could not be delivered at commit/, $offset) >= 1,
		"$what: the worker logged the replay");
	is(count_log(qr/flushed \d+ owned keys/, $offset), 0, "$what: nothing was flushed");
}

# --- 10. MOVED: a quiet reshard under an open session -------------------------
{
	my $what = 'MOVED';
	my @m = $plain->masters;
	my ($from, $to) = @m[ 0, 1 ];
	my ($first) = $plain->slots_of($from);
	my ($lo, $hi) = ($first->[0], $first->[0] + 99);
	my @k;
	for (my $i = 1; @k < 4 && $i < 100000; $i++)
	{
		my $s = RedisCache::Cluster::key_hash_slot("shop:mv:$i");
		push @k, "mv:$i" if $s >= $lo && $s <= $hi;
	}
	is(scalar(@k), 4, "$what: 4 keys in the 100 slots that move (@k)");
	my $s = $pnode->background_psql('postgres', on_error_stop => 0);
	my ($out, $err) = bg_query($s, 'SELECT string_agg(cache_set(k, k, 600)::text, \',\') FROM unnest(' . arr(@k) . ') k');
	is($out, 'true,true,true,true', "$what: an open session stores them on " . $from->port);
	my $h = $plain->reshard($from, $to, 100);
	ok($plain->finish_reshard($h), "$what: 100 slots resharded to " . $to->port) or diag($h->{out} . $h->{err});
	is(join(',', map { $_->port } $plain->owners(map { "shop:$_" } @k)), join(',', ($to->port) x 4),
		"$what: the keys moved with their slots");
	($out, $err) = bg_query($s, 'SELECT string_agg(cache_get(k), \',\') FROM unnest(' . arr(@k) . ') k');
	is($out, join(',', @k), "$what: the open session (old map) reads them: MOVED followed");
	is($err, '', "$what: ... without a message");
	($out, $err) = bg_query($s, "SELECT cache_set('$k[0]', 'new', 600)");
	is($out . '|' . ($to->cli('get', "shop:$k[0]") // ''), 't|new', "$what: its cache_set lands on the new owner");
	($out) = bg_query($s, "SELECT cache_health()->>'cluster_moved'");
	cmp_ok($out || 0, '>=', 1, "$what: cache_health() of the session counts the MOVED it followed ($out)");
	is((health('cluster', 'reachable'))[1], 'true', "$what: cache_health reachable");
	bg_query($s, 'SELECT cache_delete(VARIADIC ' . arr(@k) . ')');
	$s->quit;
}

# --- 11. ASK: a slot half migrated by hand ---------------------------------------
{
	my $what = 'ASK';
	fill_tenants();
	my $pk = 'shop:tenant:id:5';
	my $slot = RedisCache::Cluster::key_hash_slot($pk);
	my ($from) = $plain->owners($pk);
	my ($to) = grep { $_ != $from } $plain->masters;
	# keys of the same slot: the hash tag is the whole key of tenant 5
	my ($a, $b, $c) = map { "ask:{$pk}:$_" } qw(a b c);
	my $name5 = sql('SELECT name FROM tenants WHERE id = 5');
	is(sql("SELECT cache_set('$a', 'A', 600) AND cache_set('$b', 'B', 600)"), 't', "$what: keys of slot $slot stored");
	is(RedisCache::Cluster::key_hash_slot("shop:$a"), $slot, "$what: ... in the slot of $pk");
	my $s = $pnode->background_psql('postgres', on_error_stop => 0);
	bg_query($s, "SELECT cache_get('$b')");    # the session's map and connections
	$plain->slot_open($slot, $to);
	is($plain->migrate_keys($slot, $to, "shop:$a", $pk), 2, "$what: slot $slot migrating "
		  . $from->port . ' -> ' . $to->port . ": $a and $pk moved, $b not");
	like($from->cli('get', "shop:$a"), qr/^ASK $slot /, "$what: the source answers ASK for a moved key");

	my ($out, $err) = bg_query($s, "SELECT cache_get('$a') || '|' || cache_get('$b')");
	is($out, 'A|B', "$what: an open session reads the moved key (ASK) and the other (source)");
	is($err, '', "$what: ... without a message");
	($out, $err) = run_script("SELECT cache_get('$a') || '|' || cache_get('$b')");
	is($out, 'A|B', "$what: so does a new session");
	($out, $err) = bg_query($s, "SELECT cache_set('$c', 'C', 600)");
	is($out, 't', "$what: cache_set of a new key of the migrating slot");
	is($to->cli("asking\nget shop:$c\n"), "OK\nC", "$what: ... it went to the target (ASK)");
	like($from->cli('exists', "shop:$c"), qr/^ASK $slot /, "$what: ... not to the source (which answers ASK: it does not have it)");
	($out) = bg_query($s, "SELECT cache_health()->>'cluster_asked'");
	cmp_ok($out || 0, '>=', 2, "$what: cache_health() of the session counts the ASKs it followed ($out)");
	is($to->cli("asking\nget $pk\n"), "OK\n$name5", "$what: the watched key sits on the target");
	($out, $err) = bg_query($s, "UPDATE tenants SET name = name || 'a' WHERE id = 5");
	is($to->cli("asking\nexists $pk\n"), "OK\n0", "$what: an UPDATE of tenant 5 deleted it there at commit (ASK)");
	is((health('replay_queued'))[0], '0', "$what: ... nothing left to the worker");
	($out, $err) = bg_query($s, "SELECT array_to_string(cache_mget(ARRAY['$a', '$b']), ',', '*')");
	ok($out =~ /^(A|\*),(B|\*)$/, "$what: cache_mget of keys split between source and target: no wrong value ($out)");
	my ($tryagain) = bg_query($s, "SELECT cache_health()->>'cluster_tryagain'");
	diag("$what: cache_mget of split keys gave '$out' (cluster_tryagain $tryagain)" . ($err ne '' ? ", with: $err" : ''));
	unlike($err, qr/ERROR/, "$what: ... no error");
	is(sql("SELECT cache_delete('$b')"), '1', "$what: cache_delete of the key still on the source");

	$plain->migrate_keys($slot, $to);
	$plain->slot_close($slot, $to);
	ok($plain->wait_ok, "$what: slot $slot now on " . $to->port) or diag($plain->describe);
	($out, $err) = bg_query($s, "SELECT cache_get('$a') || '|' || cache_get('$c')");
	is($out, 'A|C', "$what: after the move the open session reads both (MOVED)");
	bg_query($s, "SELECT cache_delete('$a', '$c')");
	$s->quit;
}

# --- 12. failover: the promoted replica missed an invalidation -------------------
{
	my $what = 'failover';
	fill_tenants();
	my $q = 'SELECT id, name FROM tenants WHERE id = $1';
	sql("SELECT cache_query_json('$q', ARRAY['1'])");
	my $qkey = sql("SELECT cache_query_key('$q', ARRAY['1'])");
	my ($qm) = $plain->owners($qkey);
	# a tenant whose key is on the same master
	my ($id) = grep { ($plain->owners("shop:tenant:id:$_"))[0] == $qm } 1 .. 30;
	ok(defined $id, "$what: tenant " . ($id // "?") . "'s key and the query namespace are on master " . $qm->port);
	$id //= 1;
	my $pk = "shop:tenant:id:$id";
	sql("SELECT cache_query_json('$q', ARRAY['$id'])");
	my $qkey2 = sql("SELECT cache_query_key('$q', ARRAY['$id'])");
	my ($r) = $plain->replicas_of($qm);
	my $name = sql("SELECT name FROM tenants WHERE id = $id");
	# an application key in the same slot (its hash tag is the tenant key)
	my $app = "shop:session:{$pk}";
	$plain->cli_c('set', $app, 'user-fo');
	poll("$what: the replica has the cached key, the result and the application key",
		sub { ($r->cli("readonly\nget $pk\nexists $qkey2\nget $app\n") // '') eq "OK\n$name\n1\nuser-fo" });
	my $s = $pnode->background_psql('postgres', on_error_stop => 0);
	my ($out) = bg_query($s, "SELECT cache_get('tenant:id:$id')");
	is($out, $name, "$what: an open session reads tenant $id from " . $qm->port);

	# the replica stops hearing from its master, then the master gets writes
	$r->pause;
	my $killed = $qm->cli('client', 'kill', 'type', 'replica');
	sql("UPDATE tenants SET name = 'renamed $id' WHERE id = $id");
	is($qm->cli('exists', $pk), '0', "$what: the UPDATE deleted $pk on the master");
	is(sql("SELECT cache_query_json('$q', ARRAY['$id'])->0->>'name'"), "renamed $id",
		"$what: cache_query_json sees the new name before the kill");
	my $offset = -s $pnode->logfile;
	my $t_kill = time();
	$plain->kill_master($qm);
	$r->resume;
	is($r->cli("readonly\nget $pk\n"), "OK\n$name",
		"$what: the replica, still a replica, never saw the delete: it holds the old entry");
	my $new = $plain->wait_failover($qm);
	is($new, $r, "$what: the replica was promoted (replica link killed: $killed)") or diag($plain->describe);
	diag(sprintf('%s: the cluster was ok %.2f s after the SIGKILL', $what, $plain->failover_seconds // -1));

	# nothing stale may be served, from an open session or a new one
	my $err;
	($out, $err) = bg_query($s, "SELECT coalesce(cache_get('tenant:id:$id'), 'NULL')");
	my $t_first = time() - $t_kill;
	is($out, 'NULL', "$what: the open session does not get the stale entry");
	diag(sprintf("%s: the open session's first cache_get came %.2f s after the kill%s",
			$what, $t_first, $err ne '' ? "; it said: $err" : ''));
	is($r->cli('exists', $pk), '0', "$what: the new master's owned keys were flushed");
	is(sql("SELECT cache_query_json('$q', ARRAY['$id'])->0->>'name'"), "renamed $id",
		"$what: cache_query_json does not serve the stale result");
	is($r->cli('get', $app), 'user-fo', "$what: the application key on the new master survives");
	my @log = grep { /run_id|restart detected|flush/i } split /\n/, slurp_file($pnode->logfile, $offset);
	ok(@log, "$what: the server log says the new master was treated as restarted");
	diag("$what: $_") for @log[ 0 .. ($#log < 4 ? $#log : 4) ];
	($out, $err) = bg_query($s, "SELECT cache_set('tenant:id:$id', 'fresh', 60)");
	is($out . '|' . ($r->cli('get', $pk) // ''), 't|fresh', "$what: the open session writes to the new master");
	$s->quit;
	ok($plain->restart($qm), "$what: the killed master comes back (as a replica)") or diag($plain->describe);
	$plain->cli_c('del', $app);
}

# --- 13. CLUSTERDOWN -----------------------------------------------------------------
{
	my $what = 'CLUSTERDOWN';
	fill_tenants();
	my ($d) = plain_masters();
	ok($d, "$what: a master without bookkeeping or query keys: " . ($d ? $d->port : 'none'));
	$d //= ($plain->masters)[2];
	my ($dr) = $plain->replicas_of($d);
	my ($alive) = grep { $_ != $d } $plain->masters;
	my @healthy_upd = grep { ($plain->owners($_))[0] != $d } tenant_keys(1, 20);
	my @healthy_stay = grep { ($plain->owners($_))[0] != $d } tenant_keys(21, 30);
	$dr->kill9;
	$d->kill9;
	poll("$what: the cluster reports cluster_state:fail",
		sub { ($alive->cli('cluster', 'info') // '') =~ /^cluster_state:fail/m });
	my $key_ok = $healthy_stay[0];
	(my $k = $key_ok) =~ s/^shop://;
	my ($out, $err, $ms) = run_script("SELECT (cache_get('$k') IS NULL) || '|' || cache_set('cd:x', 'x', 60)");
	is($out, 'true|false', "$what: cache_get misses, cache_set returns false");
	like($err, qr/WARNING/, "$what: ... with a WARNING") or diag($err);
	unlike($err, qr/ERROR/, "$what: ... no error");
	diag(sprintf('%s: the session took %.0f ms; it said: %s', $what, $ms, $err));
	cmp_ok($ms, '<', 10000, "$what: ... bounded");
	my $queued = stat_total('invalidations_queued');
	($out, $err) = run_script("UPDATE tenants SET name = name || 'd' WHERE id <= 20");
	unlike($err, qr/ERROR/, "$what: an UPDATE of watched rows commits");
	cmp_ok(stat_total('invalidations_queued') - $queued, '>', 0, "$what: its invalidations were handed to the worker");
	# (the masters that stayed up refuse every command meanwhile, GETs too)
	my $t_back = time();
	$d->start;
	$dr->start;
	ok($plain->wait_ok, "$what: the master and its replica restarted, cluster ok") or diag($plain->describe);
	poll("$what: the replay queue drains", sub { (health('replay_queued'))[0] eq '0' });
	diag(sprintf('%s: replay done %.2f s after the restart', $what, time() - $t_back));
	is(present(@healthy_upd), 0, "$what: the updated rows' keys are gone from the masters that stayed up");
	# the restarted master has a new run_id: the owned keys of every master
	# may have been flushed (README, Redis Cluster: Failover)
	diag(sprintf('%s: %d of the %d keys of rows not updated on the masters that stayed up survived',
			$what, present(@healthy_stay), scalar(@healthy_stay)));
	is(sql(q{SELECT cache_set('cd:y', 'y', 60)::text || cache_get('cd:y')}), 'truey', "$what: the cache works again");
	sql(q{SELECT cache_delete('cd:y')});
}

my $log = slurp_file($pnode->logfile);
my @crashes = $log =~ /^(.*(?:terminated by signal|PANIC|was terminated|server process .* exited).*)$/mg;
is(scalar(@crashes), 0, 'plain: no crash, no PANIC in the server log')
  or diag(join("\n", @crashes[ 0 .. ($#crashes < 9 ? $#crashes : 9) ]));
$pnode->stop;
$plain->stop;
diag(sprintf('plain cluster part: %.0f s', time() - $t0));

# =====================================================================
# TLS everywhere (tls-cluster), verify-full
# =====================================================================
$t0 = time();
my $tls = RedisCache::Cluster->new('tls', tls => 1);
$tls->start;
my $tnode = $tls->new_pg_node('cl_tls', conf => q{
redis_cache.key_prefix = ''
redis_cache.cache_families = 'product:*'
log_statement = none
});
like(slurp_file($tnode->data_dir . '/postgresql.conf'), qr/^redis_cache\.sslmode = 'verify-full'$/m,
	'tls: the node is configured with sslmode verify-full');
$tnode->start;
use_cluster($tls, $tnode, '', 'tls');
create_schema();
common_checks();
$tnode->stop;
$tls->stop;
diag(sprintf('TLS cluster part: %.0f s', time() - $t0));

# =====================================================================
# a cluster requiring a password
# =====================================================================
$t0 = time();
my $pwc = RedisCache::Cluster->new('pw', password => 'cluster-pw-' . int(rand(1e9)));
$pwc->start;
my $wnode = $pwc->new_pg_node('cl_pw', conf => q{
redis_cache.key_prefix = 'pw:'
redis_cache.cache_families = 'product:*'
log_statement = none
});
$wnode->start;
use_cluster($pwc, $wnode, 'pw:', 'password');
create_schema();
common_checks();
unlike(slurp_file($wnode->logfile), qr/\Q$pwc->{password}\E/, 'password: the password never appears in the server log');
$wnode->stop;
$pwc->stop;
diag(sprintf('password cluster part: %.0f s', time() - $t0));

diag(sprintf('250_cluster.pl total %.0f s', time() - $^T));
done_testing();
