
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

=head1 DESCRIPTION

Starts, stops, pauses and kills redis-server processes on loopback, each in
a directory of its own under the test's tmp_check, and builds
PostgreSQL::Test::Cluster nodes configured to use them.  Every server is
stopped when the test script ends, also when it dies halfway.  Later
issues add TLS servers, sentinels and clusters here.

Design rules: no sleeps that a test could depend on (waits poll a state
with a deadline); the port is chosen once per server and kept across
restarts, so PostgreSQL settings stay valid.

=cut

package RedisCache::Server;

use strict;
use warnings;

use Carp;
use File::Path qw(make_path);
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
extra redis-server arguments used at every start.

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
	};
	bless $self, $class;
	push @all_servers, $self;
	return $self;
}

=pod

=item $server->port, $server->pid, $server->dir, $server->logfile

=cut

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
	my @cmd = (
		'redis-server', '--port', $self->{port},
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

=item $server->pg_conf

postgresql.conf lines pointing redis_cache at this server.

=item $server->new_pg_node($name, %params)

A PostgreSQL::Test::Cluster node, initialised, with redis_cache preloaded
(unless C<preload =E<gt> 0>) and pointed at this server; C<conf> adds
lines.  Not started.

=cut

sub pg_conf
{
	my ($self) = @_;
	return "redis_cache.host = '127.0.0.1'\nredis_cache.port = $self->{port}\n";
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
		. $self->pg_conf
		. ($params{conf} // ''));
	return $node;
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
