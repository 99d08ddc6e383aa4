
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# TLS to real redis-servers (RedisCache::Server->new_tls) with a test PKI
# made by the openssl CLI (RedisCache::Server::certs): a CA, a server
# certificate for localhost/127.0.0.1, one for wrong.example only, an
# unknown CA with a server certificate of its own, and a client
# certificate.  Checked:
#
#   1. verify-full by name and by IP; cache_health() shows tls/tls_cipher,
#      null for a plain server;
#   2. a certificate with the wrong name: refused by verify-full, accepted
#      by verify-ca and require;
#   3. an unknown CA: refused by verify-ca and verify-full, accepted by
#      require;
#   4. mutual TLS: refused without a client certificate, accepted with it; a
#      group-readable key refused;
#   5. plain to a TLS port and TLS to a plain port: bounded misses;
#   6. a paused (SIGSTOP) TLS server: a pending reply bounded by
#      command_timeout_ms, interruptible by pg_cancel_backend (pending reply
#      and handshake), a hanging handshake bounded by connect_timeout_ms;
#   7. cache_watch invalidation, cache_query_json, the worker's replay, all
#      over TLS;
#   8. redis_cache.url = 'rediss://...'; a URL with a password refused;
#   9. the password (redis_cache.password_file) never in the server log.
#
# Each session is a new backend (one WARNING per backend per 10 s); the
# node's own configuration points at a good TLS server, sessions aim
# elsewhere with SET.  Assertions are on states and counters; the only
# wall-clock bounds are the ones that are the feature, and are generous.

use strict;
use warnings;

use File::Copy qw(copy);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;
use Time::HiRes qw(time usleep);

my $timeout = $PostgreSQL::Test::Utils::timeout_default;
my $tmp = $PostgreSQL::Test::Utils::tmp_check;

my $certs = RedisCache::Server::certs();
my $CA = $certs->{ca};

my $good = RedisCache::Server->new_tls('tls_good');
my $wrong = RedisCache::Server->new_tls('tls_wrong', cert => 'wrong');
my $other = RedisCache::Server->new_tls('tls_other', cert => 'other');
my $mtls = RedisCache::Server->new_tls('tls_mtls', auth_clients => 'yes');
my $stall = RedisCache::Server->new_tls('tls_stall');
my $password = sprintf('tlspw-%08x%08x', int(rand(2**32)), int(rand(2**32)));
my $pw = RedisCache::Server->new_tls('tls_pw', password => $password);
my $plain = RedisCache::Server->new('tls_plain');
$_->start for ($good, $wrong, $other, $mtls, $stall, $pw, $plain);

is($good->cli('ping'), 'PONG', 'redis-cli --tls reaches the TLS server');
is($plain->cli('ping'), 'PONG', 'redis-cli reaches the plain server');

my $node = $good->new_pg_node('tls',
	pg_conf => { host => 'localhost' },
	conf => "redis_cache.commit_timeout_ms = 100\n");
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION redis_cache;
CREATE TABLE items (id int PRIMARY KEY, v text);
INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 10) g;
SELECT cache_watch('items', 'item:{id}');});

# polls a state with a deadline (RedisCache::Server)
*poll = \&RedisCache::Server::poll_until;

# A psql script run against the node, never hanging the test.
sub run_script
{
	my ($sql, %params) = @_;
	my ($stdout, $stderr) = ('', '');
	$node->psql('postgres', $sql,
		stdout => \$stdout, stderr => \$stderr,
		timeout => $timeout, %params);
	return ($stdout, $stderr);
}

# Fields "name=value" of a script's output as a hash (psql -A puts the
# columns of a row on one line, separated by "|").
sub tagged
{
	my ($out) = @_;
	my %h;
	for (map { split /\|(?=\w+=)/ } split /\n/, $out)
	{
		$h{$1} = $2 if /^(\w+)=(.*)$/;
	}
	return \%h;
}

# SET lines aiming a session at $server: verify-full against the test CA,
# no client certificate, unless %settings say otherwise.
sub aim
{
	my ($server, %settings) = @_;
	my %set = (
		host => '127.0.0.1',
		port => $server->port,
		sslmode => 'verify-full',
		sslrootcert => $CA,
		sslcert => '',
		sslkey => '',
		%settings);
	return join('', map { "SET redis_cache.$_ = '$set{$_}';\n" } sort keys %set);
}

# ms since the psql variable ts was set
my $ELAPSED = q{round(extract(epoch FROM clock_timestamp() - :'ts'::timestamptz) * 1000)};

# One session aimed at $server: cache_set and cache_get of $key (value
# "v-$key"), what it took, the counters' deltas, and cache_health()'s TLS
# fields.  Returns the tags and stderr as {err}.
sub attempt
{
	my ($server, $key, %settings) = @_;
	my $extra = delete $settings{extra} // '';
	my ($out, $err) = run_script(
		q{SELECT errors_connect AS c0, errors_timeout AS t0, errors_io AS i0 FROM cache_stats WHERE family IS NULL \gset
}
		  . aim($server, %settings) . $extra . qq{
SELECT clock_timestamp() AS ts \\gset
SELECT 'set=' || cache_set('$key', 'v-$key', 300);
SELECT 'get=' || coalesce(cache_get('$key'), 'NULL');
SELECT 'ms=' || $ELAPSED;
SELECT 'dconnect=' || (errors_connect - :c0), 'dtimeout=' || (errors_timeout - :t0),
       'dio=' || (errors_io - :i0), 'dall=' || (errors_connect + errors_timeout + errors_io - :c0 - :t0 - :i0)
  FROM cache_stats WHERE family IS NULL;
SELECT cache_health() AS health \\gset
SELECT 'reachable=' || (:'health'::jsonb->>'reachable');
SELECT 'tls=' || coalesce(:'health'::jsonb->>'tls', 'NULL'),
       'tlstype=' || coalesce(jsonb_typeof(:'health'::jsonb->'tls'), 'missing'),
       'cipher=' || coalesce(:'health'::jsonb->>'tls_cipher', 'NULL'),
       'ciphertype=' || coalesce(jsonb_typeof(:'health'::jsonb->'tls_cipher'), 'missing');
SELECT 'done=1';
});
	my $r = tagged($out);
	$r->{err} = $err;
	note "attempt $key: " . join(' ', map { "$_=$r->{$_}" } grep { $_ ne 'err' } sort keys %$r);
	note "attempt $key stderr: $err" if $err ne '';
	return $r;
}

# A round trip that worked: set, get, redis-cli sees it, TLS in health.
sub works
{
	my ($what, $server, $r, $key) = @_;
	is("$r->{set}|$r->{get}", "true|v-$key", "$what: cache_set then cache_get round trip");
	is($server->cli('get', $key), "v-$key", "$what: redis-cli --tls sees the value");
	unlike($r->{err}, qr/WARNING/, "$what: no warning");
	like($r->{tls} // '', qr/^TLS/, "$what: cache_health() tls is $r->{tls}");
	return;
}

# A connection that was refused: miss, WARNING matching $re, a counted
# connect fault.
sub refused
{
	my ($what, $r, $re, %opt) = @_;
	is("$r->{set}|$r->{get}", 'false|NULL', "$what: cache_set fails, cache_get is a miss");
	like($r->{err}, qr/WARNING:.*(?:tls|ssl|certificate)/i, "$what: the WARNING is about TLS");
	like($r->{err}, $re, "$what: the WARNING says why");
	my $counter = $opt{counter} // 'dconnect';
	cmp_ok($r->{$counter} // 0, '>=', 1, "$what: counted in cache_stats ($counter)");
	return;
}

# --- 1. verify-full by name and by IP; cache_health -------------------------
my $r = attempt($good, 'tls:byname', host => 'localhost');
works('verify-full, host localhost', $good, $r, 'tls:byname');
isnt($r->{cipher}, 'NULL', "verify-full: cache_health() tls_cipher is $r->{cipher}");
is($r->{reachable}, 'true', 'verify-full: cache_health() reachable');

$r = attempt($good, 'tls:byip', host => '127.0.0.1');
works('verify-full, host 127.0.0.1', $good, $r, 'tls:byip');
isnt($r->{cipher}, 'NULL', 'verify-full by IP: tls_cipher set');

$r = attempt($plain, 'tls:plain', sslmode => 'disable');
is("$r->{set}|$r->{get}", 'true|v-tls:plain', 'plain server, sslmode disable: round trip');
is("$r->{tlstype}|$r->{ciphertype}", 'null|null',
	'plain server: cache_health() tls and tls_cipher are JSON null');

# --- 2. a certificate for another name --------------------------------------
$r = attempt($wrong, 'tls:wrongname', host => 'localhost');
refused('wrong name, verify-full', $r, qr/certificate.*(?:name|host|match)|(?:name|host|match).*certificate/i);
$r = attempt($wrong, 'tls:wrongip', host => '127.0.0.1');
refused('wrong name, verify-full by IP', $r, qr/certificate.*(?:IP|address|match|name)/i);
$r = attempt($wrong, 'tls:wrongca', host => 'localhost', sslmode => 'verify-ca');
works('wrong name, verify-ca', $wrong, $r, 'tls:wrongca');
$r = attempt($wrong, 'tls:wrongreq', host => 'localhost', sslmode => 'require');
works('wrong name, require', $wrong, $r, 'tls:wrongreq');

# --- 3. an unknown CA ---------------------------------------------------------
$r = attempt($other, 'tls:otherca', host => 'localhost', sslmode => 'verify-ca');
refused('unknown CA, verify-ca', $r, qr/certificate/i);
$r = attempt($other, 'tls:otherfull', host => 'localhost', sslmode => 'verify-full');
refused('unknown CA, verify-full', $r, qr/certificate/i);
$r = attempt($other, 'tls:otherreq', host => 'localhost', sslmode => 'require');
works('unknown CA, require', $other, $r, 'tls:otherreq');
$r = attempt($other, 'tls:otherown', host => 'localhost', sslmode => 'verify-full',
	sslrootcert => $certs->{other_ca});
works('unknown CA made known (sslrootcert), verify-full', $other, $r, 'tls:otherown');

# --- 4. mutual TLS ------------------------------------------------------------
$r = attempt($mtls, 'tls:nocert');
# TLS 1.3: the server's refusal arrives after the client's side of the
# handshake, as an alert on the first read (of the connection's own
# AUTH/SELECT/INFO round trip): still a connection that could not be
# established, a TLS failure, so a connect fault
refused('mutual TLS without a client certificate', $r,
	qr/certificate|alert|handshake|closed/i);
$r = attempt($mtls, 'tls:withcert',
	sslcert => $certs->{client_cert}, sslkey => $certs->{client_key});
works('mutual TLS with sslcert/sslkey', $mtls, $r, 'tls:withcert');
my $group_key = "$certs->{dir}/client_group.key";
copy($certs->{client_key}, $group_key) or die "copy: $!";
chmod 0640, $group_key;
$r = attempt($mtls, 'tls:groupkey',
	sslcert => $certs->{client_cert}, sslkey => $group_key);
is("$r->{set}|$r->{get}", 'false|NULL', 'group-readable sslkey: miss');
like($r->{err}, qr/WARNING:.*permissions/i,
	'group-readable sslkey: refused, the WARNING is about its permissions');
cmp_ok($r->{dconnect} // 0, '>=', 1, 'group-readable sslkey: a connect fault');

# --- 5. plain to TLS and TLS to plain: bounded misses -------------------------
$r = attempt($good, 'tls:plain2tls', sslmode => 'disable',
	connect_timeout_ms => 500, command_timeout_ms => 500);
is("$r->{set}|$r->{get}", 'false|NULL', 'sslmode disable against a TLS port: miss');
like($r->{err}, qr/WARNING/, 'sslmode disable against a TLS port: a WARNING');
is($r->{done}, '1', 'sslmode disable against a TLS port: the session completed');
note "sslmode disable against a TLS port: cache_set + cache_get took $r->{ms} ms";
cmp_ok($r->{ms} // 1e9, '<', 10000, 'sslmode disable against a TLS port: bounded');
cmp_ok($r->{dall} // 0, '>=', 1, 'sslmode disable against a TLS port: a counted fault');

$r = attempt($plain, 'tls:tls2plain', sslmode => 'require',
	connect_timeout_ms => 500, command_timeout_ms => 500);
is("$r->{set}|$r->{get}", 'false|NULL', 'sslmode require against a plain port: miss');
like($r->{err}, qr/WARNING:.*(?:tls|ssl)/i, 'sslmode require against a plain port: a TLS WARNING');
is($r->{done}, '1', 'sslmode require against a plain port: the session completed');
note "sslmode require against a plain port: cache_set + cache_get took $r->{ms} ms";
cmp_ok($r->{ms} // 1e9, '<', 10000, 'sslmode require against a plain port: bounded');
cmp_ok($r->{dall} // 0, '>=', 1, 'sslmode require against a plain port: a counted fault');

# --- 6. a paused TLS server -----------------------------------------------------
$stall->cli('set', 'tls:k6', 'six');
my $spid = $stall->pid;
my $AIM_STALL = aim($stall, host => 'localhost');

# (a) a pending reply on an established TLS connection
{
	my ($out, $err) = run_script(qq{
$AIM_STALL
SET redis_cache.command_timeout_ms = 300;
SET redis_cache.connect_timeout_ms = 10000;
SELECT 'first=' || coalesce(cache_get('tls:k6'), 'NULL');
\\! kill -STOP $spid
SELECT errors_timeout AS t0, errors_connect AS c0 FROM cache_stats WHERE family IS NULL \\gset
SELECT clock_timestamp() AS ts \\gset
SELECT 'miss=' || (cache_get('tls:k6') IS NULL);
SELECT 'ms=' || $ELAPSED;
SELECT 'dtimeout=' || (errors_timeout - :t0), 'dconnect=' || (errors_connect - :c0) FROM cache_stats WHERE family IS NULL;
\\! kill -CONT $spid
});
	$stall->resume;    # in case the script stopped early
	$r = tagged($out);
	is($r->{first}, 'six', 'paused TLS server: the session read the key over TLS before the pause');
	is($r->{miss}, 'true', 'paused TLS server, pending reply: a miss');
	like($err, qr/WARNING:.*timed out/, 'paused TLS server, pending reply: a timeout WARNING');
	# the bound is the feature: 300 ms; a reconnect would add 10 s
	note "paused TLS server: the call took $r->{ms} ms (command_timeout_ms = 300)";
	cmp_ok($r->{ms} // 1e9, '<', 8000,
		'paused TLS server, pending reply: bounded by command_timeout_ms');
	is($r->{dtimeout}, '1', 'paused TLS server, pending reply: one errors_timeout');
}

# Wait until a backend running a query LIKE $like waits in the extension;
# returns its pid.
sub waiting_pid
{
	my ($like) = @_;
	my $pid = '';
	poll("a backend running $like waits in the extension", sub {
		$pid = $node->safe_psql('postgres', qq{
SELECT pid FROM pg_stat_activity
 WHERE wait_event_type = 'Extension' AND state = 'active'
   AND query LIKE '$like' AND pid <> pg_backend_pid()});
		return $pid ne '';
	});
	return $pid;
}

# (b) pg_cancel_backend interrupts a pending reply (command_timeout_ms 60 s)
{
	my $s = RedisCache::Server::start_psql($node,
		$AIM_STALL
		  . "SET redis_cache.command_timeout_ms = 60000; SET redis_cache.connect_timeout_ms = 60000;"
		  . "SELECT 'first=' || coalesce(cache_get('tls:k6'), 'NULL');",
		"\\! kill -STOP $spid",
		"SELECT 'blocked=' || coalesce(cache_get('tls:k6b'), 'NULL')");
	my $bpid = waiting_pid('%tls:k6b%');
	ok($bpid ne '', 'pending TLS reply: pg_stat_activity shows the Extension wait');
	my $t0 = time();
	$node->safe_psql('postgres', "SELECT pg_cancel_backend($bpid)") if $bpid ne '';
	RedisCache::Server::finish_psql($s);
	my $cancel_ms = (time() - $t0) * 1000;
	$stall->resume;
	like($s->{out}, qr/first=six/, 'pending TLS reply: the connection was established first');
	like($s->{err}, qr/canceling statement due to user request/,
		'pending TLS reply: pg_cancel_backend interrupts the wait');
	unlike($s->{err}, qr/timed out/, 'pending TLS reply: not a timeout that ended it');
	note sprintf('pending TLS reply: the cancel ended the call after %.0f ms', $cancel_ms);
	cmp_ok($cancel_ms, '<', 30000, 'pending TLS reply: the 60 s command timeout was not waited for');
}

# (b') pg_cancel_backend interrupts a hanging TLS handshake (connect 60 s)
{
	$stall->pause;
	my $s = RedisCache::Server::start_psql($node,
		$AIM_STALL
		  . "SET redis_cache.command_timeout_ms = 60000; SET redis_cache.connect_timeout_ms = 60000;"
		  . "SELECT 'blocked=' || coalesce(cache_get('tls:k6h'), 'NULL')");
	my $bpid = waiting_pid('%tls:k6h%');
	ok($bpid ne '', 'hanging TLS handshake: pg_stat_activity shows the Extension wait');
	$node->safe_psql('postgres', "SELECT pg_cancel_backend($bpid)") if $bpid ne '';
	RedisCache::Server::finish_psql($s);
	$stall->resume;
	like($s->{err}, qr/canceling statement due to user request/,
		'hanging TLS handshake: pg_cancel_backend interrupts it');
}

# (c) a fresh connection: TCP accepted by the kernel, the handshake hangs
{
	$stall->pause;
	my ($out, $err) = run_script(qq{
$AIM_STALL
SET redis_cache.connect_timeout_ms = 500;
SET redis_cache.command_timeout_ms = 60000;
SELECT errors_timeout AS t0, errors_connect AS c0 FROM cache_stats WHERE family IS NULL \\gset
SELECT clock_timestamp() AS ts \\gset
SELECT 'miss=' || (cache_get('tls:k6') IS NULL);
SELECT 'ms=' || $ELAPSED;
SELECT 'dfault=' || (errors_timeout + errors_connect - :t0 - :c0) FROM cache_stats WHERE family IS NULL;
});
	$stall->resume;
	$r = tagged($out);
	is($r->{miss}, 'true', 'hanging TLS handshake: a miss');
	like($err, qr/WARNING:.*(?:timed out|timeout)/i, 'hanging TLS handshake: a timeout WARNING');
	# the bound is the feature: 500 ms, against 60 s of command_timeout_ms
	note "hanging TLS handshake: the call took $r->{ms} ms (connect_timeout_ms = 500)";
	cmp_ok($r->{ms} // 1e9, '<', 8000, 'hanging TLS handshake: bounded by connect_timeout_ms');
	cmp_ok($r->{dfault} // 0, '>=', 1, 'hanging TLS handshake: a counted fault');
}
is($stall->cli('get', 'tls:k6'), 'six', 'the paused server is back');

# --- 7. invalidation, cache_query_json and replay over TLS ---------------------
# the node's configuration: $good, verify-full, host localhost
is($node->safe_psql('postgres', q{SELECT cache_health()->>'tls' LIKE 'TLS%'}), 't',
	'the node is configured for TLS (verify-full, localhost)');
$node->safe_psql('postgres', q{SELECT cache_set('item:1', 'cached-1'), cache_set('item:3', 'cached-3')});
is($good->cli('get', 'item:1'), 'cached-1', 'watch: item:1 cached over TLS');
$node->safe_psql('postgres', q{UPDATE items SET v = 'one' WHERE id = 1});
is($good->cli('exists', 'item:1'), '0', 'watch: the UPDATE deleted item:1 at commit, over TLS');
is($good->cli('exists', 'item:3'), '1', 'watch: item:3 stays');

my $Q = q{SELECT cache_query_json('SELECT v FROM items WHERE id = 2')};
my $STATS = q{SELECT hits || '|' || misses FROM cache_stats WHERE family IS NULL};
my ($h0, $m0) = split /\|/, $node->safe_psql('postgres', $STATS);
is($node->safe_psql('postgres', $Q), '[{"v": "v2"}]', 'cache_query_json over TLS: first call');
my ($h1, $m1) = split /\|/, $node->safe_psql('postgres', $STATS);
is($node->safe_psql('postgres', $Q), '[{"v": "v2"}]', 'cache_query_json over TLS: second call');
my ($h2, $m2) = split /\|/, $node->safe_psql('postgres', $STATS);
ok($m1 > $m0, "cache_query_json over TLS: the first call was a miss (hits $h0->$h1, misses $m0->$m1)");
ok($h2 > $h1, "cache_query_json over TLS: the second call was a hit (hits $h1->$h2)");
$node->safe_psql('postgres', q{UPDATE items SET v = 'two' WHERE id = 2});
is($node->safe_psql('postgres', $Q), '[{"v": "two"}]',
	'cache_query_json over TLS: an UPDATE invalidated the result');

{
	my $log_offset = -s $node->logfile;
	$good->pause;
	my $s = RedisCache::Server::start_psql($node,
		q{UPDATE items SET v = 'three' WHERE id = 3});
	RedisCache::Server::finish_psql($s);
	is($node->safe_psql('postgres', q{SELECT v FROM items WHERE id = 3}), 'three',
		'replay: the commit succeeded while the TLS server was paused');
	$good->resume;
	ok(poll('replay: item:3 deleted by the worker over TLS',
			sub { ($good->cli('exists', 'item:3') // '') eq '0' }),
		'replay: the worker deleted the key after the server came back');
	ok(poll('replay: the worker logged the replay',
			sub { slurp_file($node->logfile, $log_offset) =~
				  /replayed \d+ invalidations that could not be delivered at commit/ }),
		'replay: the worker logged an exact replay');
}

# --- 8. redis_cache.url ---------------------------------------------------------
{
	my $port = $good->port;
	my ($out, $err) = run_script(qq{
SET redis_cache.sslmode = 'disable';
SET redis_cache.sslrootcert = '$CA';
SET redis_cache.url = 'rediss://localhost:$port/2';
SELECT 'set=' || cache_set('tls:url', 'via-url', 300);
SELECT 'get=' || coalesce(cache_get('tls:url'), 'NULL');
SELECT 'tls=' || coalesce(cache_health()->>'tls', 'NULL');
});
	$r = tagged($out);
	is("$r->{set}|$r->{get}", 'true|via-url', 'rediss:// URL with sslmode disable: round trip');
	is($err, '', 'rediss:// URL: no warning');
	like($r->{tls} // '', qr/^TLS/, 'rediss:// URL: the connection is TLS (rediss implies verify-full)');
	is($good->cli('-n', 2, 'get', 'tls:url'), 'via-url', 'rediss:// URL: the value is in database 2');
	is($good->cli('exists', 'tls:url'), '0', 'rediss:// URL: and not in database 0');

	# rediss:// verifies, as redis-py and ioredis do: a certificate for
	# another name is refused with sslmode left at disable, and accepted
	# when sslmode names a TLS mode that does not check the name
	my $wport = $wrong->port;
	($out, $err) = run_script(qq{
SET redis_cache.sslmode = 'disable';
SET redis_cache.sslrootcert = '$CA';
SET redis_cache.url = 'rediss://localhost:$wport/0';
SELECT 'get=' || coalesce(cache_get('tls:url'), 'NULL');
});
	$r = tagged($out);
	is($r->{get}, 'NULL', 'rediss:// URL, sslmode disable, certificate for another name: a miss');
	like($err, qr/certificate verification failed: hostname mismatch/,
		'rediss:// URL: verify-full by default (the name is checked)');
	($out, $err) = run_script(qq{
SET redis_cache.sslmode = 'require';
SET redis_cache.url = 'rediss://localhost:$wport/0';
SELECT 'set=' || cache_set('tls:url', 'require', 60);
});
	$r = tagged($out);
	is($r->{set}, 'true', 'rediss:// URL with sslmode require: the mode set is used (no check)');

	my $log_offset = -s $node->logfile;
	# log_statement (all in TAP nodes) and log_min_error_statement:
	# PostgreSQL itself logs the client's own statement text; what is
	# checked is what the extension and the GUC machinery say
	my $QUIET = 'SET log_statement = none; SET log_min_error_statement = panic;';
	my ($ret, $o, $e) = $node->psql('postgres',
		"$QUIET ALTER SYSTEM SET redis_cache.url = 'rediss://u:secret\@localhost:1/0'");
	isnt($ret, 0, 'a URL with a password: ALTER SYSTEM fails');
	like($e, qr/ERROR:.*redis_cache\.url|ERROR:.*password/i, 'a URL with a password: an ERROR about it');
	unlike($e, qr/secret/, 'a URL with a password: the error does not echo it');
	($ret, $o, $e) = $node->psql('postgres',
		"$QUIET SET redis_cache.url = 'rediss://u:secret\@localhost:1/0'");
	isnt($ret, 0, 'a URL with a password: SET fails too');
	unlike($e, qr/secret/, 'a URL with a password: the SET error does not echo it');
	unlike(slurp_file($node->logfile), qr/secret/, "a URL with a password: 'secret' is not in the server log");
	is($node->safe_psql('postgres', q{SHOW redis_cache.url}), '', 'a URL with a password: not in force');
	unlike(slurp_file($node->data_dir . '/postgresql.auto.conf'), qr/secret/,
		'a URL with a password: not written to postgresql.auto.conf');
}

# --- 9. the password stays out of the logs ---------------------------------------
{
	my $pwfile = "$tmp/tls_pw.pw";
	open(my $fh, '>', $pwfile) or die "could not write $pwfile: $!";
	print $fh "$password\n";
	close $fh;
	chmod 0600, $pwfile;

	$r = attempt($pw, 'tls:pw', host => 'localhost', password_file => $pwfile);
	works('password_file over TLS', $pw, $r, 'tls:pw');

	# TLS failures with the password configured: a wrong CA, a wrong name,
	# with every message logged (log_min_messages debug1 in the session)
	$r = attempt($pw, 'tls:pwca', host => 'localhost', password_file => $pwfile,
		sslrootcert => $certs->{other_ca}, extra => "SET log_min_messages = debug1;\n");
	refused('password_file, wrong CA', $r, qr/certificate/i);
	unlike($r->{err}, qr/\Q$password\E/, 'password_file, wrong CA: the password is not in the messages');

	# the same through the configuration: backends' logins and the worker
	my $log_offset = -s $node->logfile;
	my $port = $pw->port;
	$node->safe_psql('postgres', qq{
ALTER SYSTEM SET redis_cache.port = $port;
ALTER SYSTEM SET redis_cache.password_file = '$pwfile';
ALTER SYSTEM SET redis_cache.sslrootcert = '$certs->{other_ca}';
SELECT pg_reload_conf();});
	ok(poll('configured wrong CA: a backend logs the TLS failure', sub {
			$node->psql('postgres', 'SELECT 1');
			return slurp_file($node->logfile, $log_offset) =~ /certificate/i;
		}),
		'configured wrong CA: the TLS failure is in the server log');
	$node->safe_psql('postgres', q{
ALTER SYSTEM RESET redis_cache.port;
ALTER SYSTEM RESET redis_cache.password_file;
ALTER SYSTEM RESET redis_cache.sslrootcert;
SELECT pg_reload_conf();});

	my $log = slurp_file($node->logfile);
	unlike($log, qr/\Q$password\E/, 'the password is never in the server log');
	like($log, qr/certificate/i, 'the server log does have the TLS failures');
}

$node->stop;
unlike(slurp_file($node->logfile), qr/\Q$password\E/, 'the password is not in the log after shutdown either');
done_testing();
