
# Copyright (c) redis_cache contributors; the PostgreSQL License.

=pod

=head1 NAME

RedisCache::Sentinel - a Redis master, its replica and Redis Sentinels for
redis_cache's TAP tests

=head1 SYNOPSIS

  use RedisCache::Sentinel;

  my $s = RedisCache::Sentinel->new('ha');   # master, replica, 3 sentinels
  $s->start;                        # returns once the sentinels agree
  my $node = $dead_server->new_pg_node('primary', conf => $s->pg_conf);
  my $port = $s->master_port;       # asked of a sentinel
  $s->failover;                     # SENTINEL FAILOVER mymaster
  my $new = $s->wait_master_changed($port);
  $s->wait_settled($new);           # old master is a synced replica again
  $s->kill9_sentinel(0);  $s->start_sentinel(0);
  $s->sentinel_cli(1, 'sentinel', 'masters');

=head1 DESCRIPTION

One master and one replica (RedisCache::Server objects, so kill9, start,
pause and cli work on them as usual) and N sentinels, each a redis-server
process in sentinel mode (C<redis-server DIR/sentinel.conf --sentinel>) in
a directory of its own under the test's tmp_check, all on loopback.  The
sentinel configuration is written fresh at the first start; sentinels
rewrite it (known replicas and sentinels, epochs), so a restarted sentinel
keeps what it knew.  Every sentinel is stopped when the test script ends,
also when it dies halfway (the servers by RedisCache::Server).

Defaults: master name C<mymaster>, quorum 2, down-after-milliseconds 1000,
failover-timeout 5000, parallel-syncs 1.  With C<password>, the sentinels
require it (C<requirepass>) and use it among themselves
(C<sentinel sentinel-pass>).

Design rules as in RedisCache::Server: no sleeps a test could depend on
(waits poll a state with a deadline and return false when it passes).

=cut

package RedisCache::Sentinel;

use strict;
use warnings;

use Carp;
use File::Path qw(make_path);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Time::HiRes qw(time usleep);

my @all_groups;

=pod

=head1 METHODS

=over

=item RedisCache::Sentinel->new($name, %params)

Not started.  C<master> and C<replicas> (RedisCache::Server objects, an
arrayref) may be given, e.g. to watch servers of another group under
another C<master_name>; otherwise a master C<${name}_m> and one replica
C<${name}_r> (started with C<--replicaof> the master) are created.
C<sentinels> (3), C<quorum> (2), C<master_name> (mymaster),
C<down_after_ms> (1000), C<failover_timeout_ms> (5000), C<password>.

=cut

sub new
{
	my ($class, $name, %params) = @_;
	my $master = $params{master};
	my $replicas = $params{replicas};
	if (!$master)
	{
		$master = RedisCache::Server->new("${name}_m");
		$replicas = [
			RedisCache::Server->new("${name}_r",
				args => [ '--replicaof', '127.0.0.1', $master->port ])
		];
	}
	my $self = {
		name => $name,
		master_name => $params{master_name} // 'mymaster',
		quorum => $params{quorum} // 2,
		down_after_ms => $params{down_after_ms} // 1000,
		failover_timeout_ms => $params{failover_timeout_ms} // 5000,
		password => $params{password},
		initial_master => $master,
		servers => [ $master, @{ $replicas // [] } ],
		sentinels => [],
	};
	for my $i (0 .. ($params{sentinels} // 3) - 1)
	{
		my $dir = "$PostgreSQL::Test::Utils::tmp_check/sentinel_${name}_$i";
		make_path($dir);
		push @{ $self->{sentinels} }, {
			port => PostgreSQL::Test::Cluster::get_free_port(),
			dir => $dir,
			pid => undef,
			configured => 0,
		};
	}
	bless $self, $class;
	push @all_groups, $self;
	return $self;
}

=pod

=item $s->master_name, $s->servers, $s->sentinel_count, $s->sentinel_port($i)

C<servers> lists the RedisCache::Server objects (master first, as given).
Sentinels are numbered from 0.

=item $s->sentinel_logfile($i), $s->sentinel_pid($i)

=item $s->sentinels_setting

The value for redis_cache.sentinels: C<127.0.0.1:P0, 127.0.0.1:P1, ...>.

=item $s->pg_conf

postgresql.conf lines: redis_cache.sentinels and redis_cache.sentinel_master.

=cut

sub master_name      { return $_[0]->{master_name}; }
sub servers          { return @{ $_[0]->{servers} }; }
sub sentinel_count   { return scalar @{ $_[0]->{sentinels} }; }
sub sentinel_port    { return $_[0]->{sentinels}[ $_[1] ]{port}; }
sub sentinel_pid     { return $_[0]->{sentinels}[ $_[1] ]{pid}; }
sub sentinel_logfile { return "$_[0]->{sentinels}[$_[1]]{dir}/sentinel.log"; }

sub sentinels_setting
{
	my ($self) = @_;
	return join(', ', map { "127.0.0.1:$_->{port}" } @{ $self->{sentinels} });
}

sub pg_conf
{
	my ($self) = @_;
	return "redis_cache.sentinels = '" . $self->sentinels_setting . "'\n"
	  . "redis_cache.sentinel_master = '$self->{master_name}'\n";
}

=pod

=item $s->server_by_port($port)

The RedisCache::Server listening on $port (undef if none of the group).

=cut

sub server_by_port
{
	my ($self, $port) = @_;
	return (grep { $_->port == ($port // -1) } @{ $self->{servers} })[0];
}

=pod

=item $s->start

Starts the servers that are not running, waits until every replica's link
to the master is up, writes the sentinels' configuration (first start
only), starts the sentinels and waits until the group is settled (see
wait_settled).  Dies if it does not settle.

=cut

sub start
{
	my ($self) = @_;
	my $master = $self->{initial_master};
	for my $srv (@{ $self->{servers} })
	{
		$srv->start unless $srv->pid;
	}
	for my $i (0 .. $#{ $self->{sentinels} })
	{
		$self->start_sentinel($i) unless $self->{sentinels}[$i]{pid};
	}
	$self->wait_settled($master->port)
	  or croak "sentinel group $self->{name} did not settle on master port "
	  . $master->port . ": " . $self->describe;
	return;
}

sub write_config
{
	my ($self, $i) = @_;
	my $s = $self->{sentinels}[$i];
	my $m = $self->{master_name};
	my $pw = $self->{password};
	my $conf = "port $s->{port}\n"
	  . "bind 127.0.0.1\n"
	  . "daemonize no\n"
	  . "dir $s->{dir}\n"
	  . "logfile $s->{dir}/sentinel.log\n"
	  . (defined $pw ? "requirepass $pw\nsentinel sentinel-pass $pw\n" : '')
	  . "sentinel monitor $m 127.0.0.1 " . $self->{initial_master}->port . " $self->{quorum}\n"
	  . "sentinel down-after-milliseconds $m $self->{down_after_ms}\n"
	  . "sentinel failover-timeout $m $self->{failover_timeout_ms}\n"
	  . "sentinel parallel-syncs $m 1\n";
	open(my $fh, '>', "$s->{dir}/sentinel.conf") or croak "sentinel.conf: $!";
	print $fh $conf;
	close $fh;
	chmod 0600, "$s->{dir}/sentinel.conf";
	$s->{configured} = 1;
	return;
}

=pod

=item $s->start_sentinel($i), $s->stop_sentinel($i), $s->kill9_sentinel($i)

Starts sentinel $i (in the foreground of a child process, with the
configuration it rewrote if it ran before) and waits until it answers
PING; stops it with SIGTERM (SIGKILL if it lingers); kills it with SIGKILL.

=cut

sub start_sentinel
{
	my ($self, $i) = @_;
	my $s = $self->{sentinels}[$i];
	croak "sentinel $i of $self->{name} already running" if $s->{pid};
	$self->write_config($i) unless $s->{configured};
	my $pid = fork();
	croak "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', "$s->{dir}/sentinel.out");
		open(STDERR, '>&', \*STDOUT);
		exec('redis-server', "$s->{dir}/sentinel.conf", '--sentinel')
		  or die "exec redis-server --sentinel: $!";
	}
	$s->{pid} = $pid;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $deadline)
	{
		return 1 if ($self->sentinel_cli($i, 'ping') // '') eq 'PONG';
		croak "sentinel $i of $self->{name} exited at start (see $s->{dir})"
		  if waitpid($pid, 1) == $pid;
		usleep(20_000);
	}
	croak "sentinel $i of $self->{name} on port $s->{port} did not start";
}

sub stop_sentinel
{
	my ($self, $i) = @_;
	my $s = $self->{sentinels}[$i];
	my $pid = $s->{pid} or return;
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
	$s->{pid} = undef;
	return;
}

sub kill9_sentinel
{
	my ($self, $i) = @_;
	my $s = $self->{sentinels}[$i];
	my $pid = $s->{pid} or return;
	kill 'KILL', $pid;
	waitpid($pid, 0);
	$s->{pid} = undef;
	return;
}

=pod

=item $s->stop

Stops the sentinels, then the servers.

=cut

sub stop
{
	my ($self) = @_;
	$self->stop_sentinel($_) for 0 .. $#{ $self->{sentinels} };
	$_->stop for @{ $self->{servers} };
	return;
}

=pod

=item $s->sentinel_cli($i, @args)

redis-cli against sentinel $i (with the group's password, if any), output
chomped; undef when redis-cli fails or the sentinel is not running.

=cut

sub sentinel_cli
{
	my ($self, $i, @args) = @_;
	my $s = $self->{sentinels}[$i];
	return undef unless $s->{pid};
	my ($in, $out, $err) = ('', '', '');
	my @cmd = ('redis-cli', '-h', '127.0.0.1', '-p', $s->{port});
	push @cmd, '-a', $self->{password}, '--no-auth-warning' if defined $self->{password};
	my $ok = IPC::Run::run([ @cmd, @args ], \$in, \$out, \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return undef unless $ok;
	chomp $out;
	return $out;
}

# A flat redis-cli listing of maps (SENTINEL replicas / sentinels), each
# starting with its "name" field, as a list of hashes.
sub parse_maps
{
	my ($out) = @_;
	my @lines = split /\n/, $out // '';
	my @maps;
	while (@lines >= 2)
	{
		my ($k, $v) = splice(@lines, 0, 2);
		push @maps, {} if $k eq 'name' || !@maps;
		$maps[-1]{$k} = $v;
	}
	return @maps;
}

=pod

=item $s->running_sentinels

Indexes of the sentinels running.

=item $s->master_addr($i), $s->master_port($i)

What sentinel $i (default: the first running one that answers) gives for
C<SENTINEL get-master-addr-by-name>: C<host:port>, the port; undef if no
sentinel answers.

=cut

sub running_sentinels
{
	my ($self) = @_;
	return grep { $self->{sentinels}[$_]{pid} } 0 .. $#{ $self->{sentinels} };
}

sub master_addr
{
	my ($self, $i) = @_;
	for my $j (defined $i ? ($i) : $self->running_sentinels)
	{
		my $out = $self->sentinel_cli($j, 'sentinel', 'get-master-addr-by-name',
			$self->{master_name}) // next;
		my ($host, $port) = split /\n/, $out;
		return "$host:$port" if defined $port && $port =~ /^\d+$/;
	}
	return undef;
}

sub master_port
{
	my ($self, $i) = @_;
	my $addr = $self->master_addr($i) // return undef;
	return (split /:/, $addr)[1];
}

=pod

=item $s->wait_master_changed($old_port)

Polls until every running sentinel names a master other than $old_port;
returns the new port (undef on timeout).

=cut

sub wait_master_changed
{
	my ($self, $old_port) = @_;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $deadline)
	{
		my %ports = map { ($self->master_port($_) // 'none') => 1 } $self->running_sentinels;
		my @p = keys %ports;
		return $p[0] if @p == 1 && $p[0] ne 'none' && $p[0] != $old_port;
		usleep(20_000);
	}
	return undef;
}

=pod

=item $s->failover

SENTINEL FAILOVER on the first running sentinel, retried while it answers
NOGOODSLAVE or INPROG (a replica not yet seen fit, a failover still
ending); returns true once it answered OK.

=cut

sub failover
{
	my ($self) = @_;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	my $out = '';
	while (time() < $deadline)
	{
		my ($i) = $self->running_sentinels;
		$out = $self->sentinel_cli($i, 'sentinel', 'failover', $self->{master_name}) // '';
		return 1 if $out eq 'OK';
		last unless $out =~ /NOGOODSLAVE|INPROG/;
		usleep(50_000);
	}
	carp "SENTINEL FAILOVER $self->{master_name}: $out";
	return 0;
}

=pod

=item $s->restart_server($server)

Starts a (killed or stopped) server of the group as a replica of the
master the sentinels name now.

=cut

sub restart_server
{
	my ($self, $srv) = @_;
	my $port = $self->master_port // croak 'no sentinel names a master';
	$srv->start('--replicaof', '127.0.0.1', $port);
	return;
}

=pod

=item $s->settled_problems($master_port)

What keeps the group from being settled on $master_port, as a list of
strings (empty when settled): every running sentinel names that master,
which says ROLE master; every other running server is its replica with
the link up; every running sentinel lists those replicas (flags C<slave>
only, link ok) and the other running sentinels (flags C<sentinel> only).

=item $s->wait_settled($master_port)

Polls settled_problems until it is empty; returns 1, or 0 on timeout.

=item $s->describe

The last problems found, for a diagnostic.

=cut

sub settled_problems
{
	my ($self, $mport) = @_;
	my @problems;
	my $master = $self->server_by_port($mport);
	return ("no server on port $mport") unless $master && $master->pid;
	my $role = (split /\n/, ($master->cli('role') // ''))[0] // '';
	push @problems, "port $mport has role '$role'" unless $role eq 'master';
	my @replicas = grep { $_->pid && $_->port != $mport } @{ $self->{servers} };
	for my $r (@replicas)
	{
		my $info = $r->cli('info', 'replication') // '';
		push @problems, 'replica ' . $r->port . ' not linked to the master'
		  unless $info =~ /^role:slave\r?$/m
		  && $info =~ /^master_port:$mport\r?$/m
		  && $info =~ /^master_link_status:up\r?$/m;
	}
	my @running = $self->running_sentinels;
	my $m = $self->{master_name};
	for my $i (@running)
	{
		my $p = $self->master_port($i) // 'none';
		if ($p ne $mport)
		{
			push @problems, "sentinel $i names master $p";
			next;
		}
		my %known = map { ($_->{port} // '') => $_ }
		  parse_maps($self->sentinel_cli($i, 'sentinel', 'replicas', $m));
		for my $r (@replicas)
		{
			my $k = $known{ $r->port };
			push @problems, "sentinel $i does not know replica " . $r->port
			  unless $k && $k->{flags} eq 'slave'
			  && ($k->{'master-link-status'} // '') eq 'ok'
			  && ($k->{'master-port'} // '') eq $mport;
		}
		my %others = map { ($_->{port} // '') => $_ }
		  parse_maps($self->sentinel_cli($i, 'sentinel', 'sentinels', $m));
		for my $j (grep { $_ != $i } @running)
		{
			my $o = $others{ $self->{sentinels}[$j]{port} };
			push @problems, "sentinel $i does not know sentinel $j"
			  unless $o && $o->{flags} eq 'sentinel';
		}
	}
	$self->{last_problems} = \@problems;
	return @problems;
}

sub wait_settled
{
	my ($self, $mport) = @_;
	$mport //= $self->master_port;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $deadline)
	{
		return 1 if defined $mport && !$self->settled_problems($mport);
		usleep(50_000);
		$mport //= $self->master_port;
	}
	return 0;
}

sub describe
{
	my ($self) = @_;
	return join('; ', @{ $self->{last_problems} // [] });
}

=pod

=item $s->monitor_on_all($port)

Makes every running sentinel forget the master and monitor the server on
$port under the same name and settings (SENTINEL REMOVE, MONITOR, SET):
for a test that moves the master by hand (REPLICAOF), which sentinels
would otherwise undo or fail over only after long delays.

=cut

sub monitor_on_all
{
	my ($self, $port) = @_;
	my $m = $self->{master_name};
	for my $i ($self->running_sentinels)
	{
		$self->sentinel_cli($i, 'sentinel', 'remove', $m);
		my $ok = $self->sentinel_cli($i, 'sentinel', 'monitor', $m, '127.0.0.1',
			$port, $self->{quorum}) // '';
		croak "sentinel $i: SENTINEL MONITOR: $ok" unless $ok eq 'OK';
		$self->sentinel_cli($i, 'sentinel', 'set', $m,
			'down-after-milliseconds', $self->{down_after_ms},
			'failover-timeout', $self->{failover_timeout_ms},
			'parallel-syncs', 1);
	}
	return;
}

END
{
	my $exit = $?;
	for my $g (@all_groups)
	{
		$g->stop_sentinel($_) for 0 .. $#{ $g->{sentinels} };
	}
	$? = $exit;
}

=pod

=back

=cut

1;
