
# Copyright (c) redis_cache contributors; the PostgreSQL License.

# What an application's Redis client sees of the 1.6 functions, through
# redis-cli against a real redis-server:
#
#   - cache_query_key(..., with_prefix => false) is the key a client that
#     adds key_prefix itself (ioredis keyPrefix, Laravel's prefix) asks for:
#     prefix || that key holds the cached result (HGET ... data);
#   - cache_set_many() writes plain strings with the TTL, one round trip;
#   - cache_add() and an application's SET NX see each other;
#   - cache_touch() extends a key the application wrote;
#   - cache_set(text, bytea) stores the raw bytes, cache_get_bytea() reads
#     bytes the application wrote (a serialized value).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use RedisCache::Server;
use Test::More;

my $redis = RedisCache::Server->new('apps');
$redis->start;
my $node = $redis->new_pg_node('apps',
	conf => "redis_cache.key_prefix = 'shop:'\n");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION redis_cache;
	CREATE TABLE products (id int PRIMARY KEY, name text, price numeric);
	INSERT INTO products VALUES (1, 'lamp', 19.5), (2, 'desk', 120);
});

sub sql { return $node->safe_psql('postgres', $_[0]); }

# a client with keyPrefix 'shop:' reads the result cache_query_json stored
my $json = sql(q{SELECT cache_query_json('SELECT id, name FROM products ORDER BY id')});
my $unprefixed = sql(q{SELECT cache_query_key('SELECT id, name FROM products ORDER BY id', with_prefix => false)});
my $prefixed = sql(q{SELECT cache_query_key('SELECT id, name FROM products ORDER BY id')});
unlike($unprefixed, qr/^shop:/, 'cache_query_key(with_prefix => false) leaves out key_prefix');
is("shop:$unprefixed", $prefixed, '... and the client adding its prefix gets the full key');
my $data = $redis->cli('hget', "shop:$unprefixed", 'data');
ok(defined $data && $data ne '', 'the client reads the cached result with HGET <prefix><key> data');
is(sql(qq{SELECT '$data'::jsonb = '$json'::jsonb}), 't', '... and it is the JSON cache_query_json returned');

# cache_set_many: plain strings with the TTL, as an app would read them
is(sql(q{SELECT cache_set_many(ARRAY['product:details:1', 'product:details:2'],
                             ARRAY['{"id":1}', '{"id":2}'], 120)}), '2', 'cache_set_many stores 2 keys');
is($redis->cli('get', 'shop:product:details:2'), '{"id":2}', 'the app reads a value cache_set_many wrote');
my $ttl = $redis->cli('ttl', 'shop:product:details:1');
ok($ttl > 100 && $ttl <= 120, "with the TTL ($ttl s)");

# cache_add and the application's SET NX see each other
is($redis->cli('set', 'shop:lock:report', 'app', 'NX', 'EX', '60'), 'OK', 'the app takes a lock with SET NX');
is(sql(q{SELECT cache_add('lock:report', 'sql', 60)}), 'f', 'cache_add finds it taken');
is(sql(q{SELECT cache_add('lock:import', 'sql', 60)}), 't', 'cache_add takes a free one');
is($redis->cli('set', 'shop:lock:import', 'app', 'NX'), '', "the app's SET NX finds it taken");
is($redis->cli('get', 'shop:lock:import'), 'sql', '... held by SQL');

# cache_touch extends what the app wrote
$redis->cli('set', 'shop:session:abc', 'user42', 'EX', '30');
is(sql(q{SELECT cache_touch('session:abc', 900)}), 't', 'cache_touch finds the session the app wrote');
$ttl = $redis->cli('ttl', 'shop:session:abc');
ok($ttl > 800, "its TTL is extended ($ttl s)");

# binary values both ways
is(sql(q{SELECT cache_set('blob:1', '\x00ff0a41'::bytea, 60)}), 't', 'cache_set stores bytes');
is($redis->cli('strlen', 'shop:blob:1'), '4', 'Redis holds the 4 raw bytes');
is($redis->cli('eval', "return redis.call('GET', KEYS[1]) == '\\0\\255\\nA' and 1 or 0", '1', 'shop:blob:1'),
	'1', '... exactly 00 ff 0a 41');
# a value serialized by an app (PHP serialize of an int here, bytes with a NUL)
$redis->cli('eval', "return redis.call('SET', KEYS[1], 'i:42;\\0\\1')", '1', 'shop:framework:v');
is(sql(q{SELECT encode(cache_get_bytea('framework:v'), 'hex')}), '693a34323b0001',
	'cache_get_bytea reads the bytes an app wrote, NUL included');

$node->stop;
done_testing();
