
# Copyright (c) redis_cache contributors; the PostgreSQL License.

=pod

=head1 NAME

RedisCache::Cluster - a Redis Cluster (masters with replicas) for
redis_cache's TAP tests

=head1 SYNOPSIS

  use RedisCache::Cluster;

  my $c = RedisCache::Cluster->new('rc', masters => 3, replicas => 1);
  $c->start;                        # create; returns once the cluster is ok
  my $node = $dead_server->new_pg_node('primary', conf => $c->pg_conf);
  $c->cli_c('set', 'tenant:id:1', 'x');         # follows MOVED / ASK
  my $owner = $c->node_for_key('tenant:id:1');  # a RedisCache::Server
  $owner->cli('get', 'tenant:id:1');
  my @m = $c->masters;  my @r = $c->replicas_of($m[0]);
  my $h = $c->reshard($m[0], $m[1], 100);       # in the background
  ...load...
  $c->finish_reshard($h) or diag($h->{out});
  $c->kill_master($m[2]);
  my $new = $c->wait_failover($m[2]);           # a promoted replica
  $c->restart($m[2]);                           # back as a replica
  $c->stop;

  my $t = RedisCache::Cluster->new('tls', tls => 1);   # TLS everywhere

=head1 DESCRIPTION

C<masters * (1 + replicas)> redis-server processes in cluster mode on
loopback, each a RedisCache::Server (so cli, kill9, pause and resume work
on them as usual) in a directory of its own under the test's tmp_check,
started with

  --cluster-enabled yes --cluster-config-file DIR/nodes.conf
  --cluster-node-timeout 2000 --cluster-port BUSPORT
  --repl-diskless-sync-delay 0

(the last so that a replica's full sync starts at once rather than after
the default 5 s wait for more replicas) and, from RedisCache::Server,
C<--save '' --appendonly no>: a node killed and restarted comes back empty
and resyncs from its master.  Client ports
and cluster bus ports (C<cluster-port>, Redis 7.0) are both taken from
PostgreSQL::Test::Cluster::get_free_port(), rather than the default "client
port + 10000", which nothing reserves.  The cluster is made by
C<redis-cli --cluster create ... --cluster-replicas R --cluster-yes>;
which node becomes whose replica is redis-cli's choice, so the methods
below always read the topology from the nodes (C<CLUSTER NODES>).

With C<tls =E<gt> 1> the nodes are RedisCache::Server->new_tls servers
(the test PKI of RedisCache::Server::certs()) that also speak TLS on the
cluster bus and for replication (C<--tls-cluster yes --tls-replication
yes>); they present the client certificate of certs() when they connect to
each other (C<--tls-client-cert-file>: the server certificate is for
serverAuth only, and the cluster bus always verifies its peers).  Every
redis-cli this module runs uses C<--tls --cacert>, and the client
certificate.

The nodes are stopped by RedisCache::Server when the test script ends,
also when it dies halfway; a reshard still running is killed then too.

Design rules as in RedisCache::Server: no sleeps a test could depend on
(waits poll a state with a deadline and return false when it passes).

=cut

package RedisCache::Cluster;

use strict;
use warnings;

use Carp;
use File::Spec;
use IPC::Run;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Time::HiRes qw(time usleep);

use constant SLOTS => 16384;

my @all_clusters;

=pod

=head1 METHODS

=over

=item RedisCache::Cluster->new($name, %params)

Not started.  C<masters> (3), C<replicas> (1, per master), C<tls> (0),
C<node_timeout_ms> (2000), C<password> (the nodes then require it and
use it towards their masters: C<--masterauth>), C<args> (an arrayref of
extra redis-server arguments for every node).  The nodes are named
C<${name}_0>, C<${name}_1>, ... (directories C<redis_${name}_$i>); a
nodes.conf or dump.rdb left there by an earlier run is removed.

=cut

sub new
{
	my ($class, $name, %params) = @_;
	my $nmasters = $params{masters} // 3;
	my $nreplicas = $params{replicas} // 1;
	croak 'a cluster needs at least 3 masters' if $nmasters < 3;
	my $self = {
		name => $name,
		masters => $nmasters,
		replicas => $nreplicas,
		tls => $params{tls} ? 1 : 0,
		node_timeout_ms => $params{node_timeout_ms} // 2000,
		password => $params{password},
		nodes => [],
		ids => {},         # port => node id (kept in nodes.conf)
		killed => {},      # node id => what it was when kill_master killed it
		reshards => [],
		created => 0,
		last_problems => [],
	};
	bless $self, $class;
	my $c = $self->{tls} ? RedisCache::Server::certs() : undef;
	for my $i (0 .. $nmasters * (1 + $nreplicas) - 1)
	{
		my $nname = "${name}_$i";
		my $dir = File::Spec->rel2abs(
			"$PostgreSQL::Test::Utils::tmp_check/redis_$nname");
		unlink("$dir/nodes.conf", "$dir/dump.rdb");
		my @args = (
			'--cluster-enabled', 'yes',
			'--cluster-config-file', "$dir/nodes.conf",
			'--cluster-node-timeout', $self->{node_timeout_ms},
			'--cluster-port', PostgreSQL::Test::Cluster::get_free_port(),
			'--appendonly', 'no', '--save', '',
			# a master waits 5 s (the default) for more replicas before a
			# diskless full sync: every (re)joining replica would wait
			'--repl-diskless-sync-delay', '0');
		push @args, '--masterauth', $self->{password} if defined $self->{password};
		push @args, '--tls-cluster', 'yes', '--tls-replication', 'yes',
		  '--tls-client-cert-file', $c->{client_cert},
		  '--tls-client-key-file', $c->{client_key}
		  if $self->{tls};
		push @args, @{ $params{args} // [] };
		my %p = (args => \@args, password => $self->{password});
		push @{ $self->{nodes} }, $self->{tls}
		  ? RedisCache::Server->new_tls($nname, %p)
		  : RedisCache::Server->new($nname, %p);
	}
	push @all_clusters, $self;
	return $self;
}

=pod

=item $c->nodes

All nodes (RedisCache::Server objects, running or not), in creation order.

=item $c->running_nodes

Those running.

=item $c->node_by_port($port), $c->node_by_id($id)

The node listening on $port, the node whose cluster node ID is $id (undef
if none of the cluster's).

=item $c->node_id($node)

Its cluster node ID (C<CLUSTER MYID>; asked once, the ID is kept in
nodes.conf across restarts).

=item $c->addr($node)

C<127.0.0.1:PORT>.

=cut

sub nodes         { return @{ $_[0]->{nodes} }; }
sub running_nodes { return grep { $_->pid } @{ $_[0]->{nodes} }; }
sub addr          { return '127.0.0.1:' . $_[1]->port; }

sub node_by_port
{
	my ($self, $port) = @_;
	return (grep { $_->port == ($port // -1) } @{ $self->{nodes} })[0];
}

sub node_id
{
	my ($self, $node) = @_;
	my $id = $self->{ids}{ $node->port };
	return $id if $id;
	$id = $node->cli('cluster', 'myid') // '';
	return undef unless $id =~ /^[0-9a-f]{40}$/;
	$self->{ids}{ $node->port } = $id;
	return $id;
}

sub node_by_id
{
	my ($self, $id) = @_;
	return undef unless defined $id;
	for my $n (@{ $self->{nodes} })
	{
		my $nid = $self->{ids}{ $n->port } // ($n->pid ? $self->node_id($n) : undef);
		return $n if defined $nid && $nid eq $id;
	}
	return undef;
}

=pod

=item $c->start

First call: starts every node, runs C<redis-cli --cluster create> (dies if
it fails) and waits until the cluster is ok (wait_ok; dies if it is not).
Later calls (after stop): start the nodes not running, which find their
cluster in nodes.conf, and wait_ok.

=item $c->create_seconds

How long C<redis-cli --cluster create> took at the first start.

=cut

sub start
{
	my ($self) = @_;
	$_->start for grep { !$_->pid } @{ $self->{nodes} };
	if (!$self->{created})
	{
		my $t0 = time();
		my ($out, $err) = $self->_cluster_cmd(
			'create', (map { $self->addr($_) } @{ $self->{nodes} }),
			'--cluster-replicas', $self->{replicas});
		croak "redis-cli --cluster create failed:\n$out$err"
		  unless defined $out && $out =~ /\[OK\] All \d+ slots covered/;
		$self->{create_seconds} = time() - $t0;
		$self->{create_out} = $out;
		$self->{created} = 1;
	}
	$self->node_id($_) for @{ $self->{nodes} };
	$self->wait_ok
	  or croak "cluster $self->{name} is not ok: " . $self->describe;
	return;
}

sub create_seconds { return $_[0]->{create_seconds}; }

=pod

=item $c->stop

Stops every node (SIGTERM; RedisCache::Server::stop) and kills a reshard
still running.

=cut

sub stop
{
	my ($self) = @_;
	$self->_kill_reshards;
	$_->stop for @{ $self->{nodes} };
	return;
}

=pod

=item $c->redis_cli_cmd($node)

The redis-cli command line (an array) that reaches $node: C<-h -p>, and for
TLS C<--tls --cacert --cert --key>.  A password goes in the environment
(REDISCLI_AUTH) of the calls below, not on the command line.

=item $c->cli_c(@args), $c->cli_c_at($node, @args)

C<redis-cli -c> (cluster mode: follows MOVED and ASK redirections, as an
application's cluster client does) against the first running node, or
against $node; output chomped, undef when redis-cli fails.  As for
RedisCache::Server::cli, a single argument containing newlines is fed on
standard input (one command a line).  Error replies come back as text
(C<ERR ...>, C<CLUSTERDOWN ...>): redis-cli exits 0 on them.

=cut

sub redis_cli_cmd
{
	my ($self, $node) = @_;
	my @cmd = ('redis-cli', '-h', '127.0.0.1', '-p', $node->port);
	if ($node->is_tls)
	{
		my $c = RedisCache::Server::certs();
		push @cmd, '--tls', '--cacert', $node->ca_file,
		  '--cert', $c->{client_cert}, '--key', $c->{client_key};
	}
	return @cmd;
}

sub _env
{
	my ($self) = @_;
	return defined $self->{password} ? (REDISCLI_AUTH => $self->{password}) : ();
}

sub _run
{
	my ($self, $cmd, $in) = @_;
	my ($out, $err) = ('', '');
	my %env = $self->_env;
	local @ENV{ keys %env } = values %env;
	$in //= '';
	my $ok = IPC::Run::run($cmd, \$in, \$out, \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return ($ok, $out, $err);
}

sub cli_c
{
	my ($self, @args) = @_;
	my ($node) = $self->running_nodes or return undef;
	return $self->cli_c_at($node, @args);
}

sub cli_c_at
{
	my ($self, $node, @args) = @_;
	my @cmd = ($self->redis_cli_cmd($node), '-c');
	my $in;
	if (@args == 1 && $args[0] =~ /\n/)
	{
		$in = $args[0];
	}
	else
	{
		push @cmd, @args;
	}
	my ($ok, $out) = $self->_run(\@cmd, $in);
	return undef unless $ok;
	chomp $out;
	return $out;
}

# redis-cli --cluster SUBCOMMAND ARGS --cluster-yes, run to the end:
# (stdout, stderr), stdout undef if redis-cli failed
sub _cluster_cmd
{
	my ($self, @args) = @_;
	my ($node) = $self->running_nodes or croak "no node of $self->{name} runs";
	my ($ok, $out, $err) = $self->_run(
		[ $self->redis_cli_cmd($node), '--cluster', @args, '--cluster-yes' ]);
	return ($ok ? $out : undef, $err);
}

=pod

=item $c->cluster_view($node)

$node's C<CLUSTER NODES>, parsed: a hashref node ID =E<gt> { id, port,
flags (a hashref: myself, master, slave, fail?, fail, handshake, noaddr,
...), master (its master's ID, or '-'), epoch, link, slots (arrayref of
[first, last] ranges), open (arrayref of migrating/importing entries, as
written: C<[93-E<gt>-ID]>) }.  Undef if $node does not answer.  Default
$node: the first running node.

=cut

sub cluster_view
{
	my ($self, $node) = @_;
	($node) = $self->running_nodes unless $node;
	return undef unless $node && $node->pid;
	my $out = $node->cli('cluster', 'nodes') // return undef;
	my %view;
	for my $line (split /\n/, $out)
	{
		my ($id, $addr, $flags, $master, $ping, $pong, $epoch, $link, @slots) =
		  split ' ', $line;
		next unless defined $link && $id =~ /^[0-9a-f]{40}$/;
		my ($port) = $addr =~ /:(\d+)@/;
		my $e = {
			id => $id,
			port => $port,
			flags => { map { $_ => 1 } split /,/, $flags },
			master => $master,
			epoch => $epoch,
			link => $link,
			slots => [],
			open => [],
		};
		for my $s (@slots)
		{
			if ($s =~ /^\[/)            { push @{ $e->{open} }, $s; }
			elsif ($s =~ /^(\d+)-(\d+)$/) { push @{ $e->{slots} }, [ $1, $2 ]; }
			elsif ($s =~ /^(\d+)$/)       { push @{ $e->{slots} }, [ $1, $1 ]; }
		}
		$view{$id} = $e;
	}
	return undef unless grep { $_->{flags}{myself} } values %view;
	return \%view;
}

=pod

=item $c->masters

The current masters: nodes flagged C<master> (and not C<fail>) that own at
least one slot, in the view of the first running node, ordered by their
lowest slot; RedisCache::Server objects.

=item $c->replicas_of($master)

The nodes that are replicas of $master (a RedisCache::Server) in that
view, and not flagged C<fail>; in creation order.

=item $c->master_of($node)

The master $node names in its own view (undef if it is a master or does
not answer).

=item $c->role($node)

C<'master'> or C<'replica'>, as $node says of itself (C<myself> in its
CLUSTER NODES); undef if it does not answer.

=cut

sub _lowest_slot
{
	my ($e) = @_;
	my ($min) = sort { $a <=> $b } map { $_->[0] } @{ $e->{slots} };
	return $min // SLOTS;
}

sub masters
{
	my ($self) = @_;
	my $view = $self->cluster_view // return ();
	my @m = sort { _lowest_slot($a) <=> _lowest_slot($b) }
	  grep { $_->{flags}{master} && !$_->{flags}{fail} && @{ $_->{slots} } }
	  values %$view;
	return grep { defined } map { $self->node_by_port($_->{port}) } @m;
}

sub replicas_of
{
	my ($self, $master) = @_;
	my $id = $self->node_id($master) // return ();
	my $view = $self->cluster_view // return ();
	my %ports = map { $_->{port} => 1 }
	  grep { $_->{master} eq $id && !$_->{flags}{fail} } values %$view;
	return grep { $ports{ $_->port } } @{ $self->{nodes} };
}

sub _myself
{
	my ($self, $node) = @_;
	my $view = $self->cluster_view($node) // return undef;
	return (grep { $_->{flags}{myself} } values %$view)[0];
}

sub role
{
	my ($self, $node) = @_;
	my $me = $self->_myself($node) // return undef;
	return $me->{flags}{master} ? 'master' : 'replica';
}

sub master_of
{
	my ($self, $node) = @_;
	my $me = $self->_myself($node) // return undef;
	return undef if $me->{flags}{master};
	return $self->node_by_id($me->{master});
}

=pod

=item $c->slots_of($node), $c->slot_count($node)

The slots $node owns in the view of the first running node: a list of
[first, last] ranges (ascending); their number.

=item $c->slot_owner($slot)

The node owning $slot in that view (undef if none).

=item $c->keyslot($key)

C<CLUSTER KEYSLOT $key>, asked of the first running node.

=item RedisCache::Cluster::key_hash_slot($key)

The same computed in Perl (CRC16/XMODEM of the key, or of its hash tag,
modulo 16384), for a check that does not trust the server.

=item $c->node_for_key($key)

The node owning the key's slot (keyslot, then slot_owner).

=cut

sub slots_of
{
	my ($self, $node) = @_;
	my $id = $self->node_id($node) // return ();
	my $view = $self->cluster_view // return ();
	my $e = $view->{$id} // return ();
	return sort { $a->[0] <=> $b->[0] } @{ $e->{slots} };
}

sub slot_count
{
	my ($self, $node) = @_;
	my $n = 0;
	$n += $_->[1] - $_->[0] + 1 for $self->slots_of($node);
	return $n;
}

sub slot_owner
{
	my ($self, $slot) = @_;
	my $view = $self->cluster_view // return undef;
	for my $e (values %$view)
	{
		next unless $e->{flags}{master};
		for my $r (@{ $e->{slots} })
		{
			return $self->node_by_port($e->{port})
			  if $slot >= $r->[0] && $slot <= $r->[1];
		}
	}
	return undef;
}

sub keyslot
{
	my ($self, $key) = @_;
	my ($node) = $self->running_nodes or return undef;
	my $s = $node->cli('cluster', 'keyslot', $key) // return undef;
	return $s =~ /^\d+$/ ? $s : undef;
}

sub key_hash_slot
{
	my ($key) = @_;
	if ($key =~ /\{/)
	{
		my $open = index($key, '{');
		my $close = index($key, '}', $open + 1);
		$key = substr($key, $open + 1, $close - $open - 1)
		  if $close > $open + 1;
	}
	my $crc = 0;
	for my $byte (unpack('C*', $key))
	{
		$crc ^= $byte << 8;
		for (1 .. 8)
		{
			$crc = $crc & 0x8000 ? (($crc << 1) ^ 0x1021) : ($crc << 1);
			$crc &= 0xffff;
		}
	}
	return $crc % SLOTS;
}

sub node_for_key
{
	my ($self, $key) = @_;
	my $slot = $self->keyslot($key) // return undef;
	return $self->slot_owner($slot);
}

=pod

=item $c->owners(@keys)

The node owning each key (in order; undef where no master owns its slot),
from one C<CLUSTER NODES> view and key_hash_slot: for many keys, rather
than node_for_key's two redis-cli calls per key.

=item $c->get_all(@keys)

A hashref key =E<gt> value (undef when absent) read with plain C<GET>s
from each key's owner, one pipelined redis-cli per owner: what the cluster
holds, without redirections.  Keys and values must be free of whitespace
and newlines (what redis-cli's line protocol carries); a key whose owner
answers an error (C<MOVED> while the view is stale) dies.

=item $c->scan_masters($pattern)

The keys matching $pattern on every current master (C<redis-cli --scan
--pattern>, which SCANs that one node): a hashref port =E<gt> [keys,
sorted].

=cut

sub owners
{
	my ($self, @keys) = @_;
	my $view = $self->cluster_view // croak 'no cluster view';
	my @ranges;
	for my $e (values %$view)
	{
		next unless $e->{flags}{master};
		my $node = $self->node_by_port($e->{port});
		push @ranges, [ $_->[0], $_->[1], $node ] for @{ $e->{slots} };
	}
	return map {
		my $slot = key_hash_slot($_);
		my ($r) = grep { $slot >= $_->[0] && $slot <= $_->[1] } @ranges;
		$r ? $r->[2] : undef;
	} @keys;
}

sub get_all
{
	my ($self, @keys) = @_;
	my @owners = $self->owners(@keys);
	my (%by_port, %node);
	for my $i (0 .. $#keys)
	{
		my $o = $owners[$i] // croak "no owner for $keys[$i]";
		push @{ $by_port{ $o->port } }, $keys[$i];
		$node{ $o->port } = $o;
	}
	my %values;
	for my $port (keys %by_port)
	{
		my @k = @{ $by_port{$port} };
		my $out = $node{$port}->cli(join('', map { "GET $_\n" } @k))
		  // croak "redis-cli GET on $port failed";
		my @v = split /\n/, $out, -1;
		croak "GET on $port: " . scalar(@v) . ' replies for ' . scalar(@k) . " keys:\n"
		  . join("\n", map { "  $_" } @k) . "\nreplies:\n" . join("\n", map { "  '$_'" } @v)
		  unless @v == @k;
		for my $i (0 .. $#k)
		{
			croak "GET $k[$i] on $port: $v[$i]" if $v[$i] =~ /^(MOVED|ASK|CLUSTERDOWN|TRYAGAIN) /;
			$values{ $k[$i] } = $v[$i] eq '' ? undef : $v[$i];
		}
	}
	return \%values;
}

sub scan_masters
{
	my ($self, $pattern) = @_;
	my %found;
	for my $m ($self->masters)
	{
		my $out = $m->cli('--scan', '--pattern', $pattern)
		  // croak 'redis-cli --scan on ' . $m->port . ' failed';
		$found{ $m->port } = [ sort grep { $_ ne '' } split /\n/, $out ];
	}
	return \%found;
}

=pod

=item $c->slot_open($slot, $to)

Starts moving $slot from its owner to $to by hand, as C<redis-cli
--cluster reshard> does for each slot: C<CLUSTER SETSLOT $slot IMPORTING>
on $to, then C<MIGRATING> on the owner.  From then on the owner answers
C<ASK> for keys of the slot it no longer has (and C<TRYAGAIN> for
multi-key commands whose keys are split).  Returns the owner (the source).

=item $c->migrate_keys($slot, $to, @keys)

C<MIGRATE>s @keys (all of the slot's keys left on the source when @keys
is empty, 100 at a time) from the slot's owner to $to.  Returns how many
keys were sent; dies if the source refuses.

=item $c->slot_close($slot, $to)

Ends the move: C<CLUSTER SETSLOT $slot NODE> on $to, the source and every
other master (the order redis-cli uses).  Keys still on the source are
then unreachable: migrate them first.

=item $c->migrate_slot_bg($slot, $to, %opts)

The three steps above in a child process, so that load runs meanwhile:
open, then C<MIGRATE> the slot's keys C<batch> (default 10) at a time with
C<pause_ms> (default 0) between batches, then close.  Returns a handle
for migrate_running and finish_migrate (C<< $h->{log} >> the child's
output).

=item $c->migrate_running($h), $c->finish_migrate($h)

Whether the child still runs; wait for it, then for wait_ok: true if the
child succeeded and the cluster is ok (C<< $h->{seconds} >> is then how
long the move took, C<< $h->{out} >> what the child wrote).

=cut

sub _owner_of_slot
{
	my ($self, $slot) = @_;
	my $from = $self->slot_owner($slot) // croak "no owner for slot $slot";
	return $from;
}

sub slot_open
{
	my ($self, $slot, $to) = @_;
	my $from = $self->_owner_of_slot($slot);
	croak "slot $slot is already on " . $to->port if $from == $to;
	my $r = $to->cli('cluster', 'setslot', $slot, 'importing', $self->node_id($from)) // '';
	croak "SETSLOT IMPORTING on " . $to->port . ": $r" unless $r eq 'OK';
	$r = $from->cli('cluster', 'setslot', $slot, 'migrating', $self->node_id($to)) // '';
	croak "SETSLOT MIGRATING on " . $from->port . ": $r" unless $r eq 'OK';
	return $from;
}

sub migrate_keys
{
	my ($self, $slot, $to, @keys) = @_;
	my $from = $self->_owner_of_slot($slot);
	my @auth = defined $self->{password} ? ('auth', $self->{password}) : ();
	my $moved = 0;
	my $all = !@keys;
	while (1)
	{
		my @batch;
		if ($all)
		{
			my $out = $from->cli('cluster', 'getkeysinslot', $slot, 100) // croak 'GETKEYSINSLOT failed';
			@batch = grep { $_ ne '' } split /\n/, $out;
		}
		else
		{
			@batch = splice(@keys, 0, 100);
		}
		last unless @batch;
		my $r = $from->cli('migrate', '127.0.0.1', $to->port, '', 0, 5000, @auth,
			'keys', @batch) // croak 'MIGRATE failed';
		croak "MIGRATE on " . $from->port . ": $r" unless $r =~ /^(OK|NOKEY)$/;
		$moved += @batch;
		last if !$all && !@keys;
	}
	return $moved;
}

sub slot_close
{
	my ($self, $slot, $to) = @_;
	my $from = $self->_owner_of_slot($slot);
	my $to_id = $self->node_id($to);
	my $view = $self->cluster_view // croak 'no cluster view';
	my @others = grep { $_ != $to && $_ != $from }
	  map { $self->node_by_port($_->{port}) }
	  grep { $_->{flags}{master} && !$_->{flags}{fail} } values %$view;
	for my $n ($to, ($from == $to ? () : $from), @others)
	{
		next unless $n && $n->pid;
		my $r = $n->cli('cluster', 'setslot', $slot, 'node', $to_id) // '';
		croak "SETSLOT NODE on " . $n->port . ": $r" unless $r eq 'OK';
	}
	return;
}

sub migrate_slot_bg
{
	my ($self, $slot, $to, %opts) = @_;
	my $batch = $opts{batch} // 10;
	my $pause = $opts{pause_ms} // 0;
	my $log = File::Spec->rel2abs("$PostgreSQL::Test::Utils::tmp_check/migrate_${slot}_"
		  . $to->port . '_' . int(time() * 1000) . '.log');
	my $h = { log => $log, started => time(), slot => $slot };
	my $pid = fork();
	croak "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		# the child must not run the END blocks that stop the servers
		my $ok = eval {
			open(my $fh, '>', $log) or die "$log: $!";
			$fh->autoflush(1);
			my $from = $self->slot_open($slot, $to);
			print $fh "opened slot $slot: " . $from->port . ' -> ' . $to->port . "\n";
			my $n = 0;
			while (1)
			{
				my $out = $from->cli('cluster', 'getkeysinslot', $slot, $batch)
				  // die 'GETKEYSINSLOT failed';
				my @k = grep { $_ ne '' } split /\n/, $out;
				last unless @k;
				$n += $self->migrate_keys($slot, $to, @k);
				usleep($pause * 1000) if $pause;
			}
			print $fh "migrated $n keys\n";
			$self->slot_close($slot, $to);
			print $fh "closed\n";
			close $fh;
			1;
		};
		if (!$ok)
		{
			if (open(my $fh, '>>', $log)) { print $fh "failed: $@"; close $fh; }
		}
		POSIX::_exit($ok ? 0 : 1);
	}
	$h->{pid} = $pid;
	push @{ $self->{migrations} }, $h;
	return $h;
}

sub migrate_running
{
	my ($self, $h) = @_;
	return 0 if defined $h->{status};
	if (waitpid($h->{pid}, POSIX::WNOHANG()) == $h->{pid})
	{
		$h->{status} = $?;
		$h->{seconds} = time() - $h->{started};
		return 0;
	}
	return 1;
}

sub finish_migrate
{
	my ($self, $h) = @_;
	if (!defined $h->{status})
	{
		waitpid($h->{pid}, 0);
		$h->{status} = $?;
		$h->{seconds} = time() - $h->{started};
	}
	$h->{out} = -f $h->{log} ? PostgreSQL::Test::Utils::slurp_file($h->{log}) : '';
	return 0 unless $h->{status} == 0;
	return $self->wait_ok;
}

=pod

=item $c->seeds_conf

The current masters as a redis_cache.host value:
C<'127.0.0.1:P1, 127.0.0.1:P2, 127.0.0.1:P3'> (a list of cluster seeds).

=item $c->pg_conf(%opts)

postgresql.conf lines: C<redis_cache.host = 'SEEDS'> (seeds_conf; no
redis_cache.port, every seed has its own) and, for TLS, the sslmode,
sslrootcert, sslcert and sslkey lines of RedisCache::Server::pg_conf
(%opts as there, C<client_cert> included); for a cluster with a
password, C<redis_cache.password_file> naming a file (mode 0600, in
tmp_check) that holds it.

=cut

sub seeds_conf
{
	my ($self) = @_;
	return join(', ', map { $self->addr($_) } $self->masters);
}

sub pg_conf
{
	my ($self, %opts) = @_;
	my $conf = "redis_cache.host = '" . $self->seeds_conf . "'\n";
	if ($self->{tls})
	{
		my $server = $self->{nodes}[0]->pg_conf(%opts);
		$conf .= join('', grep { !/^redis_cache\.(host|port) / } split /^/, $server);
	}
	if (defined $self->{password})
	{
		my $file = File::Spec->rel2abs(
			"$PostgreSQL::Test::Utils::tmp_check/redis_cluster_$self->{name}.pass");
		open(my $fh, '>', $file) or croak "$file: $!";
		print $fh "$self->{password}\n";
		close $fh;
		chmod 0600, $file;
		$conf .= "redis_cache.password_file = '$file'\n";
	}
	return $conf;
}

=pod

=item $c->new_pg_node($name, %params)

A PostgreSQL::Test::Cluster node (initialized, not started) preloading
redis_cache and configured for this cluster (pg_conf, with
C<< %{ $params{pg_conf} } >>), then C<< $params{conf} >> appended.

=cut

sub new_pg_node
{
	my ($self, $name, %params) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'redis_cache'\nmax_connections = 50\n"
		  . $self->pg_conf(%{ $params{pg_conf} // {} })
		  . ($params{conf} // ''));
	return $node;
}

=pod

=item $c->reshard($from, $to, $slots, %opts)

Starts, in the background, C<redis-cli --cluster reshard 127.0.0.1:PORT
--cluster-from ID --cluster-to ID --cluster-slots $slots --cluster-yes>
moving $slots slots (redis-cli takes $from's lowest ones) and their keys
from $from to $to; C<pipeline> (C<--cluster-pipeline>: keys a MIGRATE
moves, redis-cli's default 10) may be given.  Returns a handle (a hashref: C<h> the IPC::Run harness,
C<out>, C<err>, C<started>).  redis-cli refuses to start while the nodes
disagree about the configuration or a slot is open, so it first waits for
wait_ok (and dies if the cluster does not get there).

=item $c->finish_reshard($handle)

Waits for that redis-cli to end, then for wait_ok; returns true if
redis-cli succeeded and the cluster is ok again.  C<< $handle->{seconds} >>
is then how long redis-cli ran.

=item $c->reshard_running($handle)

Whether that redis-cli still runs.

=cut

sub reshard
{
	my ($self, $from, $to, $slots, %opts) = @_;
	$self->wait_ok
	  or croak "cluster $self->{name} is not ok before a reshard: " . $self->describe;
	my $from_id = $self->node_id($from) // croak 'no ID for the source';
	my $to_id = $self->node_id($to) // croak 'no ID for the target';
	my ($via) = $self->running_nodes;
	my $r = { out => '', err => '', started => time() };
	my %env = $self->_env;
	local @ENV{ keys %env } = values %env;
	$r->{h} = IPC::Run::start(
		[
			$self->redis_cli_cmd($via), '--cluster', 'reshard', $self->addr($via),
			'--cluster-from', $from_id, '--cluster-to', $to_id,
			'--cluster-slots', $slots, '--cluster-yes',
			(defined $opts{pipeline} ? ('--cluster-pipeline', $opts{pipeline}) : ())
		],
		'<', '/dev/null', '>', \$r->{out}, '2>', \$r->{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	push @{ $self->{reshards} }, $r;
	return $r;
}

sub reshard_running
{
	my ($self, $r) = @_;
	return 0 if $r->{done} || !$r->{h}->pumpable;
	# pump_nb dies "process ended prematurely" once redis-cli exited
	eval { $r->{h}->pump_nb };
	return $r->{h}->pumpable ? 1 : 0;
}

sub finish_reshard
{
	my ($self, $r) = @_;
	if (!$r->{done})
	{
		$r->{ok} = eval { $r->{h}->finish } ? 1 : 0;
		$r->{err} .= $@ if $@;
		$r->{seconds} = time() - $r->{started};
		$r->{done} = 1;
	}
	return 0 unless $r->{ok} && $r->{out} !~ /\[ERR\]/;
	return $self->wait_ok;
}

sub _kill_reshards
{
	my ($self) = @_;
	for my $r (grep { !$_->{done} } @{ $self->{reshards} })
	{
		eval { $r->{h}->kill_kill };
		$r->{done} = 1;
	}
	return;
}

=pod

=item $c->kill_master($node)

Kills $node, a current master, with SIGKILL (dies if it is not a master);
remembers its slots and replicas for wait_failover.

=item $c->wait_failover($old)

Polls until a replica $old had when it was killed is a master owning all
of $old's slots in the view of every running node, every running node
flags $old C<fail>, and the cluster is ok (wait_ok's checks); returns the
new master, undef on timeout.  C<< $c->failover_seconds >> is then the
time from the kill to that state (to within the 50 ms of a poll).

=item $c->failover_done($old)

One poll of wait_failover's checks, without waiting: the new master, or
undef while the failover is not complete (describe says why).  For a test
that does other work (probes, load) while the cluster fails over;
failover_seconds is set by the first call that sees it done.

=item $c->restart($node)

Starts $node again (a killed or stopped node; a running one is stopped
first, with SIGTERM; it keeps its ID and its view of the cluster in
nodes.conf) and waits until the cluster is ok with it:
a master failed over while it was down comes back as a replica of the
node that took its slots, once it has learnt of the newer configuration.
Returns what wait_ok returns.

=cut

sub kill_master
{
	my ($self, $node) = @_;
	my $id = $self->node_id($node) // croak 'no ID for ' . $node->port;
	my $view = $self->cluster_view($node) // croak $node->port . ' does not answer';
	croak $node->port . ' is not a master' unless $view->{$id}{flags}{master};
	$self->{killed}{$id} = {
		slots => [ @{ $view->{$id}{slots} } ],
		replicas => [ map { $_->{id} } grep { $_->{master} eq $id } values %$view ],
		at => time(),
	};
	delete $self->{failover_seconds};
	$node->kill9;
	return;
}

sub failover_done
{
	my ($self, $old) = @_;
	my $id = $self->node_id($old);
	my $k = $self->{killed}{$id} // croak $old->port . ' was not killed by kill_master';
	my ($new, @problems);
	for my $n ($self->running_nodes)
	{
		my $view = $self->cluster_view($n);
		if (!$view)
		{
			push @problems, $n->port . ' does not answer';
			next;
		}
		push @problems, $n->port . ' does not flag ' . $old->port . ' fail'
		  unless $view->{$id} && $view->{$id}{flags}{fail};
		my ($promoted) = grep {
			my $e = $view->{$_};
			$e && $e->{flags}{master} && _covers($e->{slots}, $k->{slots})
		} @{ $k->{replicas} };
		if (!$promoted)
		{
			push @problems, $n->port . ' sees no promoted replica';
			next;
		}
		push @problems, $n->port . ' sees another promoted replica'
		  if defined $new && $new ne $promoted;
		$new //= $promoted;
	}
	my @ok_problems = $self->ok_problems;
	if (!@problems && !@ok_problems)
	{
		$self->{failover_seconds} //= time() - $k->{at};
		return $self->node_by_id($new);
	}
	$self->{last_problems} = [ @problems, @ok_problems ];
	return undef;
}

sub wait_failover
{
	my ($self, $old) = @_;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $deadline)
	{
		my $new = $self->failover_done($old);
		return $new if $new;
		usleep(50_000);
	}
	return undef;
}

# whether the ranges @$have include every slot of the ranges @$want
sub _covers
{
	my ($have, $want) = @_;
	for my $w (@$want)
	{
		for my $s ($w->[0] .. $w->[1])
		{
			return 0 unless grep { $s >= $_->[0] && $s <= $_->[1] } @$have;
		}
	}
	return 1;
}

sub failover_seconds { return $_[0]->{failover_seconds}; }

sub restart
{
	my ($self, $node) = @_;
	$node->stop if $node->pid;
	$node->start;
	return $self->wait_ok;
}

=pod

=item $c->ok_problems

What keeps the cluster from being ok, as a list of strings (empty when
ok).  For every running node: C<CLUSTER INFO> says cluster_state:ok,
cluster_slots_assigned:16384, cluster_slots_ok:16384 (no slot on a node in
PFAIL or FAIL); its C<CLUSTER NODES> flags no running node C<fail?>,
C<fail>, C<handshake> or C<noaddr>, lists no open (migrating/importing)
slot, and gives the same topology (every node's role, master and slot
ranges, by node ID) as every other running node's; a replica has C<master_link_status:up> to a running
master.  When every node runs: there are C<masters> masters owning slots,
each with C<replicas> replicas.

=item $c->wait_ok

Polls ok_problems until it is empty; returns 1, or 0 on timeout.

=item $c->describe

The last problems found, for a diagnostic.

=cut

sub ok_problems
{
	my ($self) = @_;
	my @problems;
	my @running = $self->running_nodes;
	my %running_port = map { $_->port => 1 } @running;
	my ($first_map, $first_port, $view);
	for my $n (@running)
	{
		my $p = $n->port;
		my $info = $n->cli('cluster', 'info') // '';
		my %i = $info =~ /^(\w+):(\S*?)\r?$/mg;
		for my $want ([ cluster_state => 'ok' ],
			[ cluster_slots_assigned => SLOTS ], [ cluster_slots_ok => SLOTS ])
		{
			my ($k, $v) = @$want;
			push @problems, "$p: $k:" . ($i{$k} // 'none')
			  unless ($i{$k} // '') eq $v;
		}
		$view = $self->cluster_view($n);
		if (!$view)
		{
			push @problems, "$p: no CLUSTER NODES";
			next;
		}
		my @map;
		for my $e (sort { $a->{id} cmp $b->{id} } values %$view)
		{
			my @bad = grep { $e->{flags}{$_} } qw(fail? fail handshake noaddr);
			push @problems, "$p: flags $e->{port} @bad"
			  if @bad && $running_port{ $e->{port} };
			push @problems, "$p: open slots @{ $e->{open} } on $e->{port}"
			  if @{ $e->{open} };
			push @map, "$e->{id}:"
			  . ($e->{flags}{master} ? 'master' : "replica of $e->{master}") . ':'
			  . join(',', map { "$_->[0]-$_->[1]" }
				  sort { $a->[0] <=> $b->[0] } @{ $e->{slots} });
			if ($e->{flags}{myself} && !$e->{flags}{master})
			{
				my $m = $view->{ $e->{master} };
				push @problems, "$p: replica of a stopped or unknown master"
				  unless $m && $running_port{ $m->{port} };
				my $repl = $n->cli('info', 'replication') // '';
				push @problems, "$p: master link not up"
				  unless $repl =~ /^master_link_status:up\r?$/m;
			}
		}
		my $map = join(' ', @map);
		if (!defined $first_map)
		{
			($first_map, $first_port) = ($map, $p);
		}
		elsif ($map ne $first_map)
		{
			push @problems, "$p and $first_port disagree about roles or slots";
		}
	}
	if ($view && @running == @{ $self->{nodes} })
	{
		my @m = grep { $_->{flags}{master} && @{ $_->{slots} } } values %$view;
		push @problems, scalar(@m) . " masters own slots, want $self->{masters}"
		  unless @m == $self->{masters};
		for my $m (@m)
		{
			my $r = grep { $_->{master} eq $m->{id} } values %$view;
			push @problems, "master $m->{port} has $r replicas, want $self->{replicas}"
			  unless $r == $self->{replicas};
		}
	}
	push @problems, 'no node runs' unless @running;
	$self->{last_problems} = \@problems;
	return @problems;
}

sub wait_ok
{
	my ($self) = @_;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $deadline)
	{
		return 1 unless $self->ok_problems;
		usleep(50_000);
	}
	return 0;
}

sub describe
{
	my ($self) = @_;
	return join('; ', @{ $self->{last_problems} // [] });
}

END
{
	my $exit = $?;
	$_->_kill_reshards for @all_clusters;
	for my $c (@all_clusters)
	{
		kill 'KILL', $_->{pid} for grep { $_->{pid} && !defined $_->{status} } @{ $c->{migrations} // [] };
	}
	$? = $exit;
}

=pod

=back

=cut

1;
