
# Copyright (c) redis_cache contributors; the PostgreSQL License.

=pod

=head1 NAME

RedisCache::Server - a real redis-server for redis_cache's TAP tests

=head1 SYNOPSIS

  use RedisCache::Server;

  my $redis = RedisCache::Server->new('main');
  $redis->start;
  my $node = $redis->new_pg_node('primary');   # preloads redis_cache
  $node->start;
  is($redis->cli('get', 'tenant:id:1'), 'cached', 'read through redis-cli');
  $redis->pause;  $redis->resume;   # SIGSTOP / SIGCONT
  $redis->kill9;  $redis->start;    # crash and restart

  my $tls = RedisCache::Server->new_tls('tls', cert => 'wrong', auth_clients => 'yes');
  $tls->start;                      # redis-cli --tls from then on
  my $tnode = $tls->new_pg_node('t', pg_conf => { host => 'localhost' });
  my $certs = RedisCache::Server::certs();   # ca, client_cert, ...

=head1 DESCRIPTION

Starts, stops, pauses and kills redis-server processes on loopback, each in
a directory of its own under the test's tmp_check, and builds
PostgreSQL::Test::Cluster nodes configured to use them.  Every server is
stopped when the test script ends, also when it dies halfway.  TLS
servers (new_tls) use a test PKI made with the openssl CLI (certs()).
Later issues add sentinels and clusters here.

Design rules: no sleeps that a test could depend on (waits poll a state
with a deadline); the port is chosen once per server and kept across
restarts, so PostgreSQL settings stay valid.

=cut

package RedisCache::Server;

use strict;
use warnings;

use Carp;
use File::Path qw(make_path);
use File::Spec;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More ();
use Time::HiRes qw(time usleep);

my @all_servers;

=pod

=head1 METHODS

=over

=item RedisCache::Server->new($name, %params)

A server not yet started.  C<port> may be given; C<args> is an arrayref of
extra redis-server arguments used at every start.  C<password> starts it
with C<--requirepass> (and cli() authenticates with it).  C<tls> (a
hashref, see new_tls) makes it a TLS server.

=item RedisCache::Server->new_tls($name, %params)

A TLS server (C<--port 0 --tls-port> the server's port): C<cert> is which
certificate of certs() it presents: C<'server'> (the default: the CA's,
SAN localhost and 127.0.0.1), C<'wrong'> (the CA's, SAN DNS:wrong.example
only) or C<'other'> (signed by the unknown CA, SAN localhost and
127.0.0.1); C<auth_clients> is C<'no'> (the default), C<'yes'> or
C<'optional'> (client certificates verified against the CA).  C<port>,
C<args> and C<password> as for new().  cli() then speaks TLS, trusting the
CA that signed the server's certificate and presenting the client
certificate.

=cut

sub new
{
	my ($class, $name, %params) = @_;
	my $dir = "$PostgreSQL::Test::Utils::tmp_check/redis_$name";
	make_path($dir);
	my $self = {
		name => $name,
		port => $params{port} // PostgreSQL::Test::Cluster::get_free_port(),
		dir => $dir,
		args => $params{args} // [],
		pid => undef,
		tls => $params{tls},
		password => $params{password},
	};
	bless $self, $class;
	push @all_servers, $self;
	return $self;
}

=pod

=item $server->port, $server->pid, $server->dir, $server->logfile

=item $server->is_tls, $server->ca_file, $server->password

Whether it is a TLS server; the CA file that verifies its certificate
(undef for a plain server); its requirepass (undef if none).

=cut

sub is_tls   { return defined $_[0]->{tls}; }
sub ca_file  { return $_[0]->{tls} ? $_[0]->{tls}{ca} : undef; }
sub password { return $_[0]->{password}; }

sub new_tls
{
	my ($class, $name, %params) = @_;
	my $cert = delete $params{cert} // 'server';
	my $auth = delete $params{auth_clients} // 'no';
	croak "unknown TLS certificate '$cert'" unless $cert =~ /^(server|wrong|other)$/;
	croak "unknown tls-auth-clients '$auth'" unless $auth =~ /^(no|yes|optional)$/;
	my $c = certs();
	return $class->new($name, %params,
		tls => {
			cert => $c->{"${cert}_cert"},
			key => $c->{"${cert}_key"},
			# the CA that signed the server's certificate
			ca => $cert eq 'other' ? $c->{other_ca} : $c->{ca},
			auth_clients => $auth,
		});
}

sub port    { return $_[0]->{port}; }
sub pid     { return $_[0]->{pid}; }
sub dir     { return $_[0]->{dir}; }
sub logfile { return "$_[0]->{dir}/redis.log"; }

=pod

=item $server->start(@extra_args)

Starts redis-server in the foreground of a child process (so that the test
owns its PID) and waits until it answers PING.

=cut

sub start
{
	my ($self, @extra) = @_;
	croak "redis server $self->{name} already running" if $self->{pid};
	my @listen = ('--port', $self->{port});
	if (my $tls = $self->{tls})
	{
		# clients are verified against the test CA (certs()) whatever
		# certificate the server presents
		@listen = (
			'--port', '0', '--tls-port', $self->{port},
			'--tls-cert-file', $tls->{cert}, '--tls-key-file', $tls->{key},
			'--tls-ca-cert-file', certs()->{ca},
			'--tls-auth-clients', $tls->{auth_clients});
	}
	push @listen, '--requirepass', $self->{password}
	  if defined $self->{password};
	my @cmd = (
		'redis-server', @listen,
		'--bind', '127.0.0.1', '--daemonize', 'no',
		'--dir', $self->{dir}, '--save', '', '--appendonly', 'no',
		'--logfile', $self->logfile, @{ $self->{args} }, @extra);
	my $pid = fork();
	croak "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', "$self->{dir}/redis.out");
		open(STDERR, '>&', \*STDOUT);
		exec(@cmd) or die "exec redis-server: $!";
	}
	$self->{pid} = $pid;
	$self->wait_ready;
	return;
}

=pod

=item $server->wait_ready

Polls PING until the server answers PONG (at most the default timeout).

=cut

sub wait_ready
{
	my ($self) = @_;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $deadline)
	{
		return 1 if ($self->cli('ping') // '') eq 'PONG';
		usleep(20_000);
	}
	croak "redis-server $self->{name} on port $self->{port} did not start";
}

=pod

=item $server->stop

SIGTERM (after SIGCONT, in case it is paused), then SIGKILL if it lingers.

=cut

sub stop
{
	my ($self) = @_;
	my $pid = $self->{pid} or return;
	kill 'CONT', $pid;
	kill 'TERM', $pid;
	my $deadline = time() + 10;
	while (time() < $deadline)
	{
		last if waitpid($pid, 1) == $pid;    # WNOHANG
		usleep(20_000);
	}
	if (kill(0, $pid))
	{
		kill 'KILL', $pid;
		waitpid($pid, 0);
	}
	$self->{pid} = undef;
	return;
}

=pod

=item $server->kill9

Kills the server with SIGKILL: no snapshot, no goodbye to clients.

=cut

sub kill9
{
	my ($self) = @_;
	my $pid = $self->{pid} or return;
	kill 'KILL', $pid;
	waitpid($pid, 0);
	$self->{pid} = undef;
	return;
}

=pod

=item $server->restart(@extra_args)

=item $server->pause, $server->resume

SIGSTOP and SIGCONT: the server keeps its sockets but answers nothing.

=cut

sub restart
{
	my ($self, @extra) = @_;
	$self->stop;
	$self->start(@extra);
	return;
}

sub pause  { my ($self) = @_; kill 'STOP', $self->{pid}; return; }
sub resume { my ($self) = @_; kill 'CONT', $self->{pid}; return; }

=pod

=item $server->cli(@args)

Runs redis-cli against the server and returns its output, chomped (undef
when redis-cli fails).  A single argument containing newlines is fed to
redis-cli on standard input instead (pipelined commands).

=cut

sub cli
{
	my ($self, @args) = @_;
	my ($in, $out, $err) = ('', '', '');
	my @cmd = ('redis-cli', '-h', '127.0.0.1', '-p', $self->{port});
	if (my $tls = $self->{tls})
	{
		my $c = certs();
		push @cmd, '--tls', '--cacert', $tls->{ca},
		  '--cert', $c->{client_cert}, '--key', $c->{client_key};
	}
	# REDISCLI_AUTH, not -a: no warning on stderr, no password in ps
	my %auth = defined $self->{password} ? (REDISCLI_AUTH => $self->{password}) : ();
	local @ENV{ keys %auth } = values %auth;
	if (@args == 1 && $args[0] =~ /\n/)
	{
		$in = $args[0];
	}
	else
	{
		push @cmd, @args;
	}
	my $ok = IPC::Run::run(\@cmd, \$in, \$out, \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return undef unless $ok;
	chomp $out;
	return $out;
}

=pod

=item $server->pg_conf(%opts)

postgresql.conf lines pointing redis_cache at this server.  For a TLS
server also redis_cache.sslmode (C<sslmode>, default 'verify-full') and
redis_cache.sslrootcert (C<sslrootcert>, default ca_file), and, when the
server verifies clients (or C<client_cert =E<gt> 1>), redis_cache.sslcert
and redis_cache.sslkey with the client certificate of certs().  C<host>
(default '127.0.0.1') may be given, for plain servers too.

=item $server->new_pg_node($name, %params)

A PostgreSQL::Test::Cluster node, initialised, with redis_cache preloaded
(unless C<preload =E<gt> 0>) and pointed at this server; C<conf> adds
lines; C<pg_conf> (a hashref) is passed to pg_conf.  Not started.

=cut

sub pg_conf
{
	my ($self, %opts) = @_;
	my $host = $opts{host} // '127.0.0.1';
	my $conf = "redis_cache.host = '$host'\nredis_cache.port = $self->{port}\n";
	if (my $tls = $self->{tls})
	{
		my $c = certs();
		$conf .= "redis_cache.sslmode = '" . ($opts{sslmode} // 'verify-full') . "'\n"
		  . "redis_cache.sslrootcert = '" . ($opts{sslrootcert} // $tls->{ca}) . "'\n";
		$conf .= "redis_cache.sslcert = '$c->{client_cert}'\n"
		  . "redis_cache.sslkey = '$c->{client_key}'\n"
		  if $opts{client_cert} // ($tls->{auth_clients} ne 'no');
	}
	return $conf;
}

sub new_pg_node
{
	my ($self, $name, %params) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $params{init} // {} });
	my $preload = $params{preload} // 1;
	$node->append_conf('postgresql.conf',
		  ($preload ? "shared_preload_libraries = 'redis_cache'\n" : '')
		. "max_connections = 50\n"
		. $self->pg_conf(%{ $params{pg_conf} // {} })
		. ($params{conf} // ''));
	return $node;
}

=pod

=item RedisCache::Server::certs()

The test PKI, made once per test script with the openssl CLI in
tmp_check/certs (EC P-256 keys, mode 0600).  Returns a hashref of paths:

  ca, ca_key                 the CA the tests trust
  server_cert, server_key    signed by ca, SAN DNS:localhost, IP:127.0.0.1
  wrong_cert, wrong_key      signed by ca, SAN DNS:wrong.example only
  other_ca, other_ca_key     a second CA, trusted by nobody
  other_cert, other_key      signed by other_ca, SAN DNS:localhost, IP:127.0.0.1
  client_cert, client_key    a client certificate (clientAuth) signed by ca
  dir                        the directory

=cut

my $certs;

sub certs
{
	return $certs if $certs;
	# absolute: PostgreSQL and redis-server run in directories of their own
	my $dir = File::Spec->rel2abs("$PostgreSQL::Test::Utils::tmp_check/certs");
	make_path($dir);
	my $cnf = "$dir/openssl.cnf";
	my $leaf = "basicConstraints = critical, CA:FALSE\n"
	  . "keyUsage = critical, digitalSignature, keyEncipherment\n";
	open(my $fh, '>', $cnf) or croak "could not write $cnf: $!";
	print $fh "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n"
	  . "[ca]\nbasicConstraints = critical, CA:TRUE\n"
	  . "keyUsage = critical, keyCertSign, cRLSign\n"
	  . "subjectKeyIdentifier = hash\n"
	  . "[server]\n${leaf}extendedKeyUsage = serverAuth\n"
	  . "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
	  . "[wrong]\n${leaf}extendedKeyUsage = serverAuth\n"
	  . "subjectAltName = DNS:wrong.example\n"
	  . "[client]\n${leaf}extendedKeyUsage = clientAuth\n";
	close $fh;

	my $openssl = sub {
		my ($out, $err) = ('', '');
		IPC::Run::run([ 'openssl', @_ ], '<', '/dev/null', '>', \$out, '2>', \$err)
		  or croak "openssl @_ failed: $err";
	};
	my @newkey = ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes');
	my %c = (dir => $dir);
	for my $ca ([ 'ca', 'redis_cache test CA' ], [ 'other_ca', 'redis_cache unknown CA' ])
	{
		my ($n, $cn) = @$ca;
		$openssl->('req', '-config', $cnf, '-x509', @newkey,
			'-keyout', "$dir/$n.key", '-out', "$dir/$n.crt",
			'-days', '3650', '-subj', "/CN=$cn", '-extensions', 'ca');
		$c{$n} = "$dir/$n.crt";
		$c{"${n}_key"} = "$dir/$n.key";
	}
	my $serial = 1;
	for my $leafcert (
		[ 'server', 'ca', 'server', 'localhost' ],
		[ 'wrong', 'ca', 'wrong', 'wrong.example' ],
		[ 'other', 'other_ca', 'server', 'localhost' ],
		[ 'client', 'ca', 'client', 'redis_cache client' ])
	{
		my ($n, $ca, $ext, $cn) = @$leafcert;
		$openssl->('req', '-config', $cnf, '-new', @newkey,
			'-keyout', "$dir/$n.key", '-out', "$dir/$n.csr", '-subj', "/CN=$cn");
		$openssl->('x509', '-req', '-in', "$dir/$n.csr",
			'-CA', $c{$ca}, '-CAkey', $c{"${ca}_key"}, '-set_serial', ++$serial,
			'-days', '3650', '-out', "$dir/$n.crt",
			'-extfile', $cnf, '-extensions', $ext);
		$c{"${n}_cert"} = "$dir/$n.crt";
		$c{"${n}_key"} = "$dir/$n.key";
	}
	chmod 0600, map { $c{$_} } grep { /_key$/ } keys %c;
	$certs = \%c;
	return $certs;
}

=pod

=item RedisCache::Server::start_psql($node, @statements)

Starts psql in the background on $node's postgres database, one C<-c> per
statement, and returns a handle for finish_psql.  Standard output and error
are collected in C<< $s->{out} >> and C<< $s->{err} >>.

=item RedisCache::Server::finish_psql($s)

Waits for that psql to end; returns the handle, C<out> chomped.

=cut

=pod

=item RedisCache::Server::poll_until($what, $check)

Calls C<$check> every 50 ms until it returns true (then returns 1), at
most the default timeout; then records a failed test C<"$what (timed
out)"> and returns 0.

=cut

sub poll_until
{
	my ($what, $check) = @_;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $deadline)
	{
		return 1 if $check->();
		usleep(50_000);
	}
	Test::More::fail("$what (timed out)");
	return 0;
}

sub start_psql
{
	my ($node, @statements) = @_;
	my $s = { out => '', err => '' };
	$s->{h} = IPC::Run::start(
		[
			$node->installed_command('psql'), '-XAtq',
			'-d', $node->connstr('postgres'),
			map { ('-c', $_) } @statements
		],
		'<', '/dev/null', '>', \$s->{out}, '2>', \$s->{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return $s;
}

sub finish_psql
{
	my ($s) = @_;
	$s->{h}->finish;
	chomp $s->{out};
	return $s;
}

END
{
	my $exit = $?;
	$_->stop for @all_servers;
	$? = $exit;
}

=pod

=back

=cut

1;
