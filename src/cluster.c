/*-------------------------------------------------------------------------
 *
 * cluster.c
 *		  Redis Cluster: the slot map, one connection per master, routing
 *		  of every command by the slot of its keys, redirections.
 *
 * Design rules:
 *
 * - The client (connection.c) detects a cluster by itself (INFO cluster:
 *   cluster_enabled:1 on the seed it reached) and hands the seed's
 *   connection to redis_cluster_create(), which reads the slot map with
 *   CLUSTER SLOTS and connects to every master through the client's own
 *   connect-and-handshake callback (AUTH, INFO for the run_id; TLS names
 *   as the nodes announce them).  Everything read is checked: a node list
 *   or slot range that is not what Redis sends is a protocol fault.
 *
 * - A command is routed by its keys (command_builder.c records them): slot
 *   = CRC16-XMODEM of the key, or of its {hashtag}, mod 16384.  A keyless
 *   command goes to master RedisCommand.node.  UNLINK, DEL, EXISTS, TOUCH
 *   and MGET whose keys span slots are split per slot and their replies
 *   merged (integers summed, MGET's values put back in order), since a
 *   cluster refuses multi-key commands across slots even on one node.  A
 *   MULTI ... EXEC block goes whole to the node of its first key.
 *
 * - A caller's pipeline becomes one pipeline per master, all sent before
 *   any reply is awaited and waited for through one WaitEventSet
 *   (transport.c, redis_sockets_round_trip): multi-key work costs one round
 *   trip of wall time, bounded by the same deadline and interruptible.
 *
 * - Redirections: MOVED updates the slot and has the whole map read again
 *   after the round trip; ASK sends ASKING then the command to the node
 *   named, once, map unchanged; TRYAGAIN (a multi-key command during a
 *   slot's migration) waits a short, growing, interruptible time and tries
 *   again.  CLUSTERDOWN, an unserved slot and more than
 *   RC_CLUSTER_MAX_ROUNDS rounds are faults, degraded by the client as any
 *   fault.  A failed node's part fails alone: the others' replies stand
 *   (the caller decides; the commit hands everything to the worker).
 *
 * - Identity: the digest of every master's node id and run_id stands for
 *   the run_id of a single server (redis_cluster_identity()).  A master
 *   restarted, or replaced by its replica after a failover (another node
 *   id, and asynchronous replication may have lost writes), changes it;
 *   so does a map that names other masters (redis_cluster_changed()): the
 *   client then drops the connection, and the next one's session check
 *   (version.c) treats the new identity like a restarted Redis and
 *   flushes the owned keys on every master before anything is served.
 *   Moving slots between the same masters changes nothing.
 *
 * - All state is per backend, in TopMemoryContext; sockets are closed on
 *   every fault and by redis_cluster_free(), which never throws.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "common/cryptohash.h"
#include "common/sha1.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "redis_cache.h"

#define RC_CLUSTER_SLOTS		16384
#define RC_CLUSTER_NO_NODE		0xFFFF
/* More masters than this in one map is not what Redis sends us. */
#define RC_CLUSTER_MAX_NODES	1000
/* Rounds of one call: the first, then redirections and TRYAGAIN waits. */
#define RC_CLUSTER_MAX_ROUNDS	6
/* First TRYAGAIN wait; doubled each round. */
#define RC_CLUSTER_TRYAGAIN_MS	10

typedef struct ClusterNode
{
	char		host[256];
	int			port;
	char		id[48];			/* node id from the map; "" if unknown */
	char		run_id[64];		/* from its handshake */
	bool		in_identity;	/* its run_id is part of the identity */
	RedisSocket *socket;		/* NULL until needed, and after a fault */
} ClusterNode;

struct RedisCluster
{
	int			nnodes;
	ClusterNode *nodes;			/* the masters, in the map's order */
	uint16		slot_node[RC_CLUSTER_SLOTS];
	bool		map_stale;		/* a MOVED was seen: read the map again */
	bool		changed;		/* the masters are not those connected to */
	char		identity[SHA1_DIGEST_LENGTH * 2 + 1];
	RedisNodeOpen open;
	uint64		moved;
	uint64		asked;
	uint64		retried;
	bool		no_bulk;		/* the bulk delete script failed: per slot */
	int			unreachable;	/* masters not reached at connect */
};

/*
 * The bulk delete script (scripts.c registers it): UNLINK or DEL of the
 * keys of several slots of one master in one command.
 */
static const char *bulk_delete_body = NULL;
static char bulk_delete_sha1[SHA1_DIGEST_LENGTH * 2 + 1];

void
redis_cluster_set_bulk_delete(const char *body)
{
	bulk_delete_body = body;
	bulk_delete_sha1[0] = '\0';
}

/* ---- slots ---------------------------------------------------------------- */

/* CRC16 XMODEM (polynomial 0x1021), as Redis Cluster's keyHashSlot(). */
static uint16 crc16_table[256];
static bool crc16_ready = false;

static uint16
crc16(const char *buf, size_t len)
{
	uint16		crc = 0;
	size_t		i;

	if (!crc16_ready)
	{
		int			byte;
		int			b;

		for (byte = 0; byte < 256; byte++)
		{
			uint16		c = (uint16) (byte << 8);

			for (b = 0; b < 8; b++)
				c = (c & 0x8000) ? (uint16) ((c << 1) ^ 0x1021) : (uint16) (c << 1);
			crc16_table[byte] = c;
		}
		crc16_ready = true;
	}
	for (i = 0; i < len; i++)
		crc = (uint16) ((crc << 8) ^
						crc16_table[((crc >> 8) ^ (unsigned char) buf[i]) & 0xFF]);
	return crc;
}

/*
 * The slot of a key: of its hashtag (what is between the first '{' and the
 * next '}', when not empty), else of the whole key.
 */
int
redis_key_slot(const char *key, size_t len)
{
	size_t		open;
	size_t		close;

	for (open = 0; open < len && key[open] != '{'; open++)
		;
	if (open < len)
	{
		for (close = open + 1; close < len && key[close] != '}'; close++)
			;
		if (close < len && close > open + 1)
			return crc16(key + open + 1, close - open - 1) & (RC_CLUSTER_SLOTS - 1);
	}
	return crc16(key, len) & (RC_CLUSTER_SLOTS - 1);
}

/* ---- the map ---------------------------------------------------------------- */

static int
find_node(RedisCluster *c, const char *host, int port)
{
	int			i;

	for (i = 0; i < c->nnodes; i++)
		if (c->nodes[i].port == port && strcmp(c->nodes[i].host, host) == 0)
			return i;
	return -1;
}

/* The node at host:port, added (not connected) when new; -1 if full. */
static int
find_or_add_node(RedisCluster *c, const char *host, int port)
{
	int			i = find_node(c, host, port);

	if (i >= 0)
		return i;
	if (c->nnodes >= RC_CLUSTER_MAX_NODES)
		return -1;
	c->nodes = repalloc(c->nodes, sizeof(ClusterNode) * (c->nnodes + 1));
	memset(&c->nodes[c->nnodes], 0, sizeof(ClusterNode));
	strlcpy(c->nodes[c->nnodes].host, host, sizeof(c->nodes[c->nnodes].host));
	c->nodes[c->nnodes].port = port;
	/* a master not in the map we connected under */
	c->changed = true;
	return c->nnodes++;
}

/* Whether s is something Redis could send as a host name or address. */
static bool
plausible_host(const RedisReply *r)
{
	size_t		i;

	if (r->type != RC_REPLY_STRING || r->len == 0 || r->len >= 256)
		return false;
	for (i = 0; i < r->len; i++)
	{
		unsigned char ch = (unsigned char) r->str[i];

		if (!(isalnum(ch) || ch == '.' || ch == '-' || ch == ':' || ch == '_'))
			return false;
	}
	return true;
}

/*
 * A map from a CLUSTER SLOTS reply: entries {start, end, {host, port, id,
 * ...}, replicas...}.  An empty host means the node asked (seed_host).
 * Returns the masters and fills slot_node, or false with a protocol fault.
 */
static bool
parse_slots(const RedisReply *reply, const char *seed_host, const char *label,
			ClusterNode **nodes_out, int *nnodes_out, uint16 *slot_node)
{
	ClusterNode *nodes = MemoryContextAllocZero(TopMemoryContext, sizeof(ClusterNode));
	int			nnodes = 0;
	size_t		i;

	for (i = 0; i < RC_CLUSTER_SLOTS; i++)
		slot_node[i] = RC_CLUSTER_NO_NODE;
	if (reply->type != RC_REPLY_ARRAY)
		goto bad;
	for (i = 0; i < reply->elements; i++)
	{
		const RedisReply *e = reply->element[i];
		const RedisReply *m;
		const char *host;
		long long	start;
		long long	end;
		long long	port;
		int			n;
		long long	s;

		if (e->type != RC_REPLY_ARRAY || e->elements < 3 ||
			e->element[0]->type != RC_REPLY_INTEGER ||
			e->element[1]->type != RC_REPLY_INTEGER ||
			e->element[2]->type != RC_REPLY_ARRAY)
			goto bad;
		start = e->element[0]->integer;
		end = e->element[1]->integer;
		m = e->element[2];
		if (start < 0 || end < start || end >= RC_CLUSTER_SLOTS ||
			m->elements < 2 || m->element[1]->type != RC_REPLY_INTEGER)
			goto bad;
		port = m->element[1]->integer;
		if (port <= 0 || port > 65535)
			goto bad;
		if (m->element[0]->type == RC_REPLY_STRING && m->element[0]->len == 0)
			host = seed_host;
		else if (plausible_host(m->element[0]))
			host = m->element[0]->str;
		else
			continue;			/* "?": an endpoint unknown to the node */

		for (n = 0; n < nnodes; n++)
			if (nodes[n].port == port && strcmp(nodes[n].host, host) == 0)
				break;
		if (n == nnodes)
		{
			if (nnodes >= RC_CLUSTER_MAX_NODES)
				goto bad;
			nodes = repalloc(nodes, sizeof(ClusterNode) * (nnodes + 1));
			memset(&nodes[nnodes], 0, sizeof(ClusterNode));
			strlcpy(nodes[nnodes].host, host, sizeof(nodes[nnodes].host));
			nodes[nnodes].port = (int) port;
			if (m->elements >= 3 && m->element[2]->type == RC_REPLY_STRING &&
				m->element[2]->len < sizeof(nodes[nnodes].id))
				memcpy(nodes[nnodes].id, m->element[2]->str, m->element[2]->len + 1);
			nnodes++;
		}
		for (s = start; s <= end; s++)
			slot_node[s] = (uint16) n;
	}
	if (nnodes == 0)
		goto bad;
	*nodes_out = nodes;
	*nnodes_out = nnodes;
	return true;

bad:
	pfree(nodes);
	redis_fault_set(RC_FAULT_PROTOCOL, "Redis Cluster node %s sent a slot map (CLUSTER SLOTS) that is not understood",
					label);
	return false;
}

/* The identity of the masters: SHA-1 over their sorted "id=run_id" lines. */
static void
compute_identity(const ClusterNode *nodes, int nnodes, char *out)
{
	char	  **lines = palloc(sizeof(char *) * nnodes);
	StringInfoData all;
	int			i;
	int			j;

	for (i = 0; i < nnodes; i++)
		lines[i] = psprintf("%s=%s\n", nodes[i].id, nodes[i].run_id);
	/* insertion sort: a handful of masters */
	for (i = 1; i < nnodes; i++)
		for (j = i; j > 0 && strcmp(lines[j - 1], lines[j]) > 0; j--)
		{
			char	   *t = lines[j];

			lines[j] = lines[j - 1];
			lines[j - 1] = t;
		}
	initStringInfo(&all);
	for (i = 0; i < nnodes; i++)
		appendStringInfoString(&all, lines[i]);
	redis_hash_hex(PG_SHA1, all.data, all.len, out);
	pfree(all.data);
	for (i = 0; i < nnodes; i++)
		pfree(lines[i]);
	pfree(lines);
}

/* Whether two maps name the same masters (ids, or addresses without ids). */
static bool
same_masters(const ClusterNode *a, int na, const ClusterNode *b, int nb)
{
	int			i;
	int			j;

	if (na != nb)
		return false;
	for (i = 0; i < na; i++)
	{
		for (j = 0; j < nb; j++)
			if (strcmp(a[i].id, b[j].id) == 0 &&
				(a[i].id[0] != '\0' ||
				 (a[i].port == b[j].port && strcmp(a[i].host, b[j].host) == 0)))
				break;
		if (j == nb)
			return false;
	}
	return true;
}

/* Close one node's connection (a fault: out of sync or dead). */
static void
close_node(ClusterNode *node)
{
	if (node->socket != NULL)
		redis_socket_close(node->socket);
	node->socket = NULL;
}

/*
 * Connect to node i if it is not; false with the fault set.  A node whose
 * run_id differs from the one it had when the identity was taken has
 * restarted: the identity changed.
 */
static bool
ensure_node(RedisCluster *c, int i, TimestampTz deadline, int timeout_ms)
{
	ClusterNode *node = &c->nodes[i];
	char		run_id[64];

	if (node->socket != NULL)
		return true;
	run_id[0] = '\0';
	/* the share given counts at commit too (transport.c) */
	redis_transport_strict_deadlines(true);
	PG_TRY();
	{
		node->socket = c->open(node->host, node->port, run_id, sizeof(run_id),
							   deadline, timeout_ms);
	}
	PG_FINALLY();
	{
		redis_transport_strict_deadlines(false);
	}
	PG_END_TRY();
	if (node->socket == NULL)
		return false;
	/* restarted, or a master the identity lacks (unreachable at connect) */
	if (!node->in_identity ||
		(node->run_id[0] != '\0' && strcmp(node->run_id, run_id) != 0))
		c->changed = true;
	strlcpy(node->run_id, run_id, sizeof(node->run_id));
	return true;
}

/*
 * Create the client of the cluster that seed (already through its
 * handshake, run_id seed_run_id) belongs to: read the map, connect to
 * every master, take the identity.  seed is adopted (kept for its node, or
 * closed).  Returns NULL with the fault set.  May throw on interrupts: the
 * caller frees what redis_cluster_create() published through *out first.
 */
RedisCluster *
redis_cluster_create(RedisSocket *seed, const char *seed_host, int seed_port,
					 const char *seed_run_id, RedisNodeOpen open,
					 TimestampTz deadline, int timeout_ms, RedisCluster **out)
{
	RedisCluster *c = MemoryContextAllocZero(TopMemoryContext, sizeof(RedisCluster));
	RedisCommand cmd;
	RedisReply *reply;
	bool		nothing;
	int			seed_index;
	int			unreachable = 0;
	int			i;

	c->open = open;
	c->nodes = MemoryContextAllocZero(TopMemoryContext, sizeof(ClusterNode));
	*out = c;

	redis_cmd_init(&cmd, "CLUSTER", 1);
	redis_cmd_str(&cmd, "SLOTS");
	if (!redis_socket_round_trip(seed, &cmd, 1, &reply, deadline, timeout_ms,
								 &nothing))
	{
		redis_socket_close(seed);
		return NULL;
	}
	if (reply->type == RC_REPLY_ERROR)
	{
		redis_fault_set(RC_FAULT_CONNECT, "Redis Cluster node %s refused CLUSTER SLOTS: %s",
						redis_socket_label(seed),
						redis_printable(reply->str, reply->len));
		redis_socket_close(seed);
		return NULL;
	}
	pfree(c->nodes);
	c->nodes = NULL;
	if (!parse_slots(reply, seed_host, redis_socket_label(seed), &c->nodes,
					 &c->nnodes, c->slot_node))
	{
		c->nodes = MemoryContextAllocZero(TopMemoryContext, sizeof(ClusterNode));
		redis_socket_close(seed);
		return NULL;
	}
	seed_index = find_node(c, seed_host, seed_port);
	if (seed_index >= 0)
	{
		c->nodes[seed_index].socket = seed;
		strlcpy(c->nodes[seed_index].run_id, seed_run_id,
				sizeof(c->nodes[seed_index].run_id));
	}
	else
		redis_socket_close(seed);	/* a replica, or named otherwise */

	/*
	 * Every master within its share of the time left, so that one that
	 * hangs (paused, not yet failed over) costs its share only: the others
	 * serve their slots, and a commit delivers their part.  A master not
	 * reached is left out of the identity; reaching it later makes the
	 * client changed (a reconnect, whose session check sees the complete
	 * identity as new and flushes, as after a restart: it may have been a
	 * restart).  None reached is a fault.
	 */
	for (i = 0; i < c->nnodes; i++)
	{
		TimestampTz now = GetCurrentTimestamp();
		long		left = TimestampDifferenceMilliseconds(now, deadline);
		int			share = (int) Max(left / (c->nnodes - i), Min(left, 100));
		TimestampTz until = Min(deadline, TimestampTzPlusMilliseconds(now, share));

		if (c->nodes[i].socket == NULL &&
			!ensure_node(c, i, until, share))
		{
			unreachable++;
			continue;
		}
		c->nodes[i].in_identity = true;
	}
	if (unreachable == c->nnodes)
		return NULL;
	compute_identity(c->nodes, c->nnodes, c->identity);
	c->changed = false;
	c->unreachable = unreachable;
	return c;
}

/* Close every connection and free the client.  Never throws. */
void
redis_cluster_free(RedisCluster *c)
{
	int			i;

	if (c == NULL)
		return;
	for (i = 0; i < c->nnodes; i++)
		close_node(&c->nodes[i]);
	if (c->nodes)
		pfree(c->nodes);
	pfree(c);
}

/* Masters not reached when the client was created. */
int
redis_cluster_unreachable(RedisCluster *c)
{
	return c->unreachable;
}

int
redis_cluster_master_count(RedisCluster *c)
{
	return c->nnodes;
}

const char *
redis_cluster_identity(RedisCluster *c)
{
	return c->identity;
}

/*
 * Whether the masters are no longer those the identity was taken from (a
 * failover, a restart, a master added): the client reconnects.
 */
bool
redis_cluster_changed(RedisCluster *c)
{
	return c->changed;
}

/* A connected node's socket (TLS details for cache_health), or NULL. */
RedisSocket *
redis_cluster_any_socket(RedisCluster *c)
{
	int			i;

	for (i = 0; i < c->nnodes; i++)
		if (c->nodes[i].socket != NULL)
			return c->nodes[i].socket;
	return NULL;
}

/* Figures for cache_health: redirections followed by this backend. */
void
redis_cluster_counts(RedisCluster *c, uint64 *moved, uint64 *asked,
					 uint64 *retried)
{
	*moved = c->moved;
	*asked = c->asked;
	*retried = c->retried;
}

/* The masters' addresses and slot counts, for cache_health. */
int
redis_cluster_nodes(RedisCluster *c, char ***addresses, int **slots)
{
	int			i;

	*addresses = palloc(sizeof(char *) * c->nnodes);
	*slots = palloc0(sizeof(int) * c->nnodes);
	for (i = 0; i < c->nnodes; i++)
		(*addresses)[i] = psprintf("%s:%d", c->nodes[i].host, c->nodes[i].port);
	for (i = 0; i < RC_CLUSTER_SLOTS; i++)
		if (c->slot_node[i] != RC_CLUSTER_NO_NODE)
			(*slots)[c->slot_node[i]]++;
	return c->nnodes;
}

/*
 * Read the map again (after a MOVED) from any connected master.  A map
 * naming other masters marks the client changed; sockets of masters that
 * stay are kept.  Faults leave the old map (the next MOVED asks again).
 */
static void
refresh_map(RedisCluster *c, TimestampTz deadline, int timeout_ms)
{
	RedisCommand cmd;
	RedisReply *reply;
	ClusterNode *nodes;
	int			nnodes;
	uint16	   *slot_node;
	bool		nothing;
	int			i;
	int			j;

	c->map_stale = false;
	for (i = 0; i < c->nnodes && c->nodes[i].socket == NULL; i++)
		;
	if (i == c->nnodes)
		return;
	redis_cmd_init(&cmd, "CLUSTER", 1);
	redis_cmd_str(&cmd, "SLOTS");
	if (!redis_socket_round_trip(c->nodes[i].socket, &cmd, 1, &reply, deadline,
								 timeout_ms, &nothing))
	{
		close_node(&c->nodes[i]);
		return;
	}
	slot_node = palloc(sizeof(uint16) * RC_CLUSTER_SLOTS);
	if (reply->type == RC_REPLY_ERROR ||
		!parse_slots(reply, c->nodes[i].host, redis_socket_label(c->nodes[i].socket),
					 &nodes, &nnodes, slot_node))
	{
		pfree(slot_node);
		return;
	}
	if (!same_masters(c->nodes, c->nnodes, nodes, nnodes))
		c->changed = true;
	/* keep the connections of the masters that stay */
	for (j = 0; j < nnodes; j++)
	{
		i = find_node(c, nodes[j].host, nodes[j].port);
		if (i >= 0 && strcmp(c->nodes[i].id, nodes[j].id) == 0)
		{
			nodes[j].socket = c->nodes[i].socket;
			nodes[j].in_identity = c->nodes[i].in_identity;
			strlcpy(nodes[j].run_id, c->nodes[i].run_id, sizeof(nodes[j].run_id));
			c->nodes[i].socket = NULL;
		}
	}
	for (i = 0; i < c->nnodes; i++)
		close_node(&c->nodes[i]);
	pfree(c->nodes);
	c->nodes = nodes;
	c->nnodes = nnodes;
	memcpy(c->slot_node, slot_node, sizeof(uint16) * RC_CLUSTER_SLOTS);
	pfree(slot_node);
}

/* ---- routing ---------------------------------------------------------------- */

/*
 * One command as sent to one node: a caller's command, or its part for
 * one slot (split), or a whole MULTI ... EXEC block's member.
 */
typedef struct SubCommand
{
	int			origin;			/* index of the caller's command */
	RedisCommand cmd;
	bool		split;			/* a part of a command split per slot or node */
	bool		bulk;			/* a part: the bulk delete script of one node */
	bool		dropped;		/* a bulk part replaced by per-slot parts */
	int		   *positions;		/* a part's keys among the command's */
	int			npositions;
	int			slot;			/* -1: keyless */
	int			node;
	bool		asking;			/* send ASKING first */
	bool		done;
	RedisReply *reply;
} SubCommand;

/* A key of a command to split, and its slot. */
typedef struct SlotKey
{
	int			node;			/* bulk: its master; else -1 */
	int			slot;
	int			index;			/* among the command's keys */
} SlotKey;

/* By master, slot, then position: each slot's keys keep their order. */
static int
compare_slot_keys(const void *a, const void *b)
{
	const SlotKey *x = a;
	const SlotKey *y = b;

	if (x->node != y->node)
		return x->node < y->node ? -1 : 1;
	if (x->slot != y->slot)
		return x->slot < y->slot ? -1 : 1;
	return x->index < y->index ? -1 : (x->index > y->index);
}

static bool
is_splittable(const RedisCommand *cmd)
{
	static const char *const names[] = {"UNLINK", "DEL", "EXISTS", "TOUCH", "MGET"};
	int			i;

	for (i = 0; i < lengthof(names); i++)
		if (cmd->argvlen[0] == strlen(names[i]) &&
			pg_strncasecmp(cmd->argv[0], names[i], cmd->argvlen[0]) == 0)
			return true;
	return false;
}

static bool
is_named(const RedisCommand *cmd, const char *name)
{
	return cmd->argvlen[0] == strlen(name) &&
		pg_strncasecmp(cmd->argv[0], name, cmd->argvlen[0]) == 0;
}

static int
command_slot(const RedisCommand *cmd)
{
	if (cmd->nkeys == 0)
		return -1;
	return redis_key_slot(cmd->argv[cmd->first_key], cmd->argvlen[cmd->first_key]);
}

/* The node serving slot (or a keyless command's node); -1 if none. */
static int
slot_owner(RedisCluster *c, int slot, const RedisCommand *cmd)
{
	if (slot < 0)
		return cmd->node >= 0 && cmd->node < c->nnodes ? cmd->node : -1;
	return c->slot_node[slot] == RC_CLUSTER_NO_NODE ? -1 : c->slot_node[slot];
}

/* The sub-commands of one call, growing. */
typedef struct SubList
{
	SubCommand *subs;
	int			n;
	int			room;
} SubList;

static SubCommand *
new_sub(SubList *l, int origin)
{
	SubCommand *sub;

	if (l->n == l->room)
	{
		l->room *= 2;
		l->subs = repalloc(l->subs, sizeof(SubCommand) * l->room);
	}
	sub = &l->subs[l->n++];
	memset(sub, 0, sizeof(SubCommand));
	sub->origin = origin;
	return sub;
}

/* A part of cmd holding its keys keyidx[0 .. nk-1], as cmd itself. */
static void
add_part(SubList *l, int origin, const RedisCommand *cmd, const int *keyidx,
		 int nk, int slot)
{
	SubCommand *sub = new_sub(l, origin);
	int			k;

	sub->split = true;
	sub->slot = slot;
	sub->positions = palloc(sizeof(int) * nk);
	sub->npositions = nk;
	redis_cmd_init(&sub->cmd, cmd->argv[0], nk);
	sub->cmd.argvlen[0] = cmd->argvlen[0];
	for (k = 0; k < nk; k++)
	{
		redis_cmd_key(&sub->cmd, cmd->argv[cmd->first_key + keyidx[k]],
					  cmd->argvlen[cmd->first_key + keyidx[k]]);
		sub->positions[k] = keyidx[k];
	}
}

/*
 * The bulk delete part of cmd for the keys keyidx[0 .. nk-1], all served
 * by one master: EVALSHA <bulk> 1 <first key> <other keys>, routed by its
 * declared first key; the others are keys of other slots of the same
 * master (the script's allow-cross-slot-keys flag).
 */
static void
add_bulk_part(SubList *l, int origin, const RedisCommand *cmd,
			  const int *keyidx, int nk, int slot)
{
	SubCommand *sub = new_sub(l, origin);
	int			k;

	if (bulk_delete_sha1[0] == '\0')
		redis_hash_hex(PG_SHA1, bulk_delete_body, strlen(bulk_delete_body),
					   bulk_delete_sha1);
	sub->split = true;
	sub->bulk = true;
	sub->slot = slot;
	sub->positions = palloc(sizeof(int) * nk);
	sub->npositions = nk;
	redis_cmd_init(&sub->cmd, "EVALSHA", nk + 3);
	redis_cmd_str(&sub->cmd, bulk_delete_sha1);
	redis_cmd_str(&sub->cmd, "1");
	for (k = 0; k < nk; k++)
	{
		const char *key = cmd->argv[cmd->first_key + keyidx[k]];
		size_t		len = cmd->argvlen[cmd->first_key + keyidx[k]];

		if (k == 0)
			redis_cmd_key(&sub->cmd, key, len);
		else
			redis_cmd_arg(&sub->cmd, key, len);
		sub->positions[k] = keyidx[k];
	}
}

/*
 * The parts of a multi-key command for its keys keyidx[0 .. nk-1]: one
 * per slot (the keys of each in their order); for UNLINK and DEL, when the
 * bulk delete script may be used, one per master instead wherever a
 * master serves several of the slots, which turns a 1,000-key invalidation
 * into one command per master rather than one per key.
 */
static void
split_command(RedisCluster *c, SubList *l, int origin,
			  const RedisCommand *cmd, const int *keyidx, int nk,
			  bool allow_bulk)
{
	SlotKey    *order = palloc(sizeof(SlotKey) * nk);
	int		   *keys = palloc(sizeof(int) * nk);
	bool		bulk = allow_bulk && !c->no_bulk && bulk_delete_body != NULL &&
		(is_named(cmd, "UNLINK") || is_named(cmd, "DEL"));
	int			start;
	int			k;

	for (k = 0; k < nk; k++)
	{
		order[k].slot = redis_key_slot(cmd->argv[cmd->first_key + keyidx[k]],
									   cmd->argvlen[cmd->first_key + keyidx[k]]);
		/* by master first when bulk, so each master's keys are adjacent */
		order[k].node = bulk && c->slot_node[order[k].slot] != RC_CLUSTER_NO_NODE ?
			c->slot_node[order[k].slot] : -1;
		order[k].index = keyidx[k];
	}
	qsort(order, nk, sizeof(SlotKey), compare_slot_keys);
	for (start = 0; start < nk;)
	{
		int			end = start;
		int			nslots = 1;
		int			m;

		if (bulk && order[start].node >= 0)
		{
			while (end < nk && order[end].node == order[start].node)
			{
				if (end > start && order[end].slot != order[end - 1].slot)
					nslots++;
				end++;
			}
		}
		else
			while (end < nk && order[end].slot == order[start].slot &&
				   order[end].node == order[start].node)
				end++;
		for (m = start; m < end; m++)
			keys[m - start] = order[m].index;
		/* one slot: the plain command */
		if (nslots > 1)
			add_bulk_part(l, origin, cmd, keys, end - start, order[start].slot);
		else
			add_part(l, origin, cmd, keys, end - start, order[start].slot);
		start = end;
	}
	pfree(order);
	pfree(keys);
}

/*
 * The sub-commands of the caller's pipeline: one per command, except for
 * multi-key commands whose keys span slots (split_command).
 */
static void
expand(RedisCluster *c, const RedisCommand *commands, int ncommands,
	   SubList *l)
{
	int			i;
	int			block_slot = -2;	/* inside MULTI: the block's slot */
	int			block_start = -1;

	l->room = ncommands + 8;
	l->subs = palloc0(sizeof(SubCommand) * l->room);
	l->n = 0;
	for (i = 0; i < ncommands; i++)
	{
		const RedisCommand *cmd = &commands[i];
		int			slot = command_slot(cmd);
		bool		split = false;
		int			k;

		if (cmd->nkeys > 1 && is_splittable(cmd))
			for (k = 1; k < cmd->nkeys && !split; k++)
				split = redis_key_slot(cmd->argv[cmd->first_key + k],
									   cmd->argvlen[cmd->first_key + k]) != slot;
		if (split)
		{
			int		   *all = palloc(sizeof(int) * cmd->nkeys);

			for (k = 0; k < cmd->nkeys; k++)
				all[k] = k;
			split_command(c, l, i, cmd, all, cmd->nkeys, true);
			pfree(all);
			continue;
		}
		{
			SubCommand *sub = new_sub(l, i);

			sub->cmd = *cmd;
			sub->slot = slot;
		}
		if (is_named(cmd, "MULTI"))
		{
			block_start = l->n - 1;
			block_slot = -1;
		}
		else if (block_start >= 0 && block_slot == -1 && slot >= 0)
			block_slot = slot;
		if (block_start >= 0 && is_named(cmd, "EXEC"))
		{
			/* the whole block on its first key's node */
			for (k = block_start; k < l->n; k++)
			{
				l->subs[k].slot = block_slot;
				if (block_slot < 0)
					l->subs[k].cmd.node = cmd->node;
			}
			block_start = -1;
		}
	}
}

/* "MOVED 3999 127.0.0.1:6381" or "ASK ...": the slot and node. */
static bool
parse_redirection(const RedisReply *reply, int *slot, char *host,
				  size_t hostlen, int *port)
{
	const char *p = strchr(reply->str, ' ');
	const char *colon;
	char	   *end;
	long		v;

	if (p == NULL)
		return false;
	v = strtol(p + 1, &end, 10);
	if (end == p + 1 || *end != ' ' || v < 0 || v >= RC_CLUSTER_SLOTS)
		return false;
	*slot = (int) v;
	p = end + 1;
	colon = strrchr(p, ':');
	if (colon == NULL || colon == p || (size_t) (colon - p) >= hostlen)
		return false;
	v = strtol(colon + 1, &end, 10);
	if (end == colon + 1 || *end != '\0' || v <= 0 || v > 65535)
		return false;
	memcpy(host, p, colon - p);
	host[colon - p] = '\0';
	*port = (int) v;
	return true;
}

static bool
error_starts(const RedisReply *r, const char *word)
{
	size_t		len = strlen(word);

	return r->type == RC_REPLY_ERROR && r->len >= len &&
		strncmp(r->str, word, len) == 0 &&
		(r->len == len || r->str[len] == ' ');
}

/* Wait ms, interruptibly, without going past deadline. */
static void
backoff(int ms, TimestampTz deadline)
{
	long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);

	if (left <= 0)
		return;
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 Min(ms, left), PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * One round: send every unfinished sub-command to its node, all nodes at
 * once.  Failed nodes are closed and their subs stay unfinished with
 * *failed set.  Returns whether anything was received at all
 * (*nothing_received otherwise).
 */
static void
send_round(RedisCluster *c, SubList *l, TimestampTz deadline,
		   int timeout_ms, bool *failed, bool *anything_received)
{
	SubCommand *subs = l->subs;
	int			nsubs = l->n;
	int		   *per_node = palloc0(sizeof(int) * c->nnodes);
	RedisSocketPart *parts = palloc0(sizeof(RedisSocketPart) * c->nnodes);
	int		  **sub_of = palloc0(sizeof(int *) * c->nnodes);
	int			nparts = 0;
	int			i;
	int			p;
	int			node;

	for (i = 0; i < nsubs; i++)
	{
		if (subs[i].done || subs[i].dropped)
			continue;
		if (subs[i].node < 0 || subs[i].node >= c->nnodes)
		{
			/* no owner: the caller's round sees it as a fault */
			*failed = true;
			continue;
		}
		per_node[subs[i].node] += subs[i].asking ? 2 : 1;
	}
	for (node = 0; node < c->nnodes; node++)
	{
		RedisCommand *cmds;
		int			n = 0;

		if (per_node[node] == 0)
			continue;

		/*
		 * A master to connect to first gets half the time left at most:
		 * one that hangs must leave the others' parts time to go.
		 */
		if (c->nodes[node].socket == NULL)
		{
			long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);

			if (!ensure_node(c, node,
							 TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Max(left / 2, 1)),
							 (int) Max(left / 2, 1)))
			{
				*failed = true;
				continue;
			}
		}
		if (!ensure_node(c, node, deadline, timeout_ms))
		{
			*failed = true;
			continue;
		}
		cmds = palloc(sizeof(RedisCommand) * per_node[node]);
		sub_of[node] = palloc(sizeof(int) * per_node[node]);
		for (i = 0; i < nsubs; i++)
		{
			if (subs[i].done || subs[i].dropped || subs[i].node != node)
				continue;
			if (subs[i].asking)
			{
				redis_cmd_init(&cmds[n], "ASKING", 0);
				sub_of[node][n++] = -1;
			}
			cmds[n] = subs[i].cmd;
			sub_of[node][n++] = i;
		}
		parts[nparts].socket = c->nodes[node].socket;
		parts[nparts].commands = cmds;
		parts[nparts].ncommands = n;
		parts[nparts].replies = palloc0(sizeof(RedisReply *) * n);
		/* remember the node in ok's place until the call */
		parts[nparts].ok = false;
		nparts++;
	}
	if (nparts == 0)
		return;

	if (nparts == 1)
	{
		parts[0].ok = redis_socket_round_trip(parts[0].socket, parts[0].commands,
											  parts[0].ncommands, parts[0].replies,
											  deadline, timeout_ms,
											  &parts[0].nothing_received);
	}
	else
		(void) redis_sockets_round_trip(parts, nparts, deadline, timeout_ms);

	for (p = 0; p < nparts; p++)
	{
		for (node = 0; node < c->nnodes; node++)
			if (c->nodes[node].socket == parts[p].socket)
				break;
		if (!parts[p].nothing_received)
			*anything_received = true;
		if (!parts[p].ok)
		{
			close_node(&c->nodes[node]);
			*failed = true;
			continue;
		}
		for (i = 0; i < parts[p].ncommands; i++)
		{
			int			s = sub_of[node][i];

			if (s < 0)
				continue;		/* ASKING's +OK */
			subs[s].reply = parts[p].replies[i];
			subs[s].done = true;
			subs[s].asking = false;
		}
	}
}

/*
 * A bulk delete part answered an error: NOSCRIPT loads the script (EVAL,
 * next round); anything else has its keys sent per slot (next round),
 * which redirections and TRYAGAIN then handle like any command.  An error
 * that is not about the slot's state (a server before Redis 7.0, which
 * knows no script flags) stops bulk deletes for this client.
 */
static void
bulk_part_failed(RedisCluster *c, SubList *l, int i,
				 const RedisCommand *commands)
{
	SubCommand *sub = &l->subs[i];
	RedisReply *r = sub->reply;

	if (error_starts(r, "NOSCRIPT") &&
		strcmp(sub->cmd.argv[0], "EVALSHA") == 0)
	{
		RedisCommand eval;

		redis_cmd_copy(&eval, &sub->cmd);
		eval.argv[0] = "EVAL";
		eval.argvlen[0] = 4;
		eval.argv[1] = bulk_delete_body;
		eval.argvlen[1] = strlen(bulk_delete_body);
		sub->cmd = eval;
		sub->done = false;
		sub->reply = NULL;
		return;
	}
	if (!error_starts(r, "MOVED") && !error_starts(r, "ASK") &&
		!error_starts(r, "TRYAGAIN") && !error_starts(r, "CLUSTERDOWN") &&
		strstr(r->str, "non local key") == NULL)
		c->no_bulk = true;
	sub->dropped = true;
	sub->reply = NULL;
	{
		int			origin = sub->origin;
		int		   *keys = sub->positions;
		int			nk = sub->npositions;
		int			first = l->n;
		int			k;

		/* sub may move: l->subs grows */
		split_command(c, l, origin, &commands[origin], keys, nk, false);
		for (k = first; k < l->n; k++)
			l->subs[k].node = slot_owner(c, l->subs[k].slot, &l->subs[k].cmd);
	}
}

/*
 * Look at the replies of a round: redirections and TRYAGAIN make their
 * subs unfinished again.  Returns false (fault set) on CLUSTERDOWN.
 */
static bool
follow_redirections(RedisCluster *c, SubList *l, const RedisCommand *commands,
					bool *again, bool *tryagain)
{
	int			n = l->n;
	int			i;

	for (i = 0; i < n; i++)
	{
		SubCommand *sub = &l->subs[i];
		RedisReply *r = sub->reply;
		char		host[256];
		int			slot;
		int			port;
		int			node;

		if (!sub->done || sub->dropped || r == NULL || r->type != RC_REPLY_ERROR)
			continue;
		if (sub->bulk)
		{
			bulk_part_failed(c, l, i, commands);
			*again = true;
			continue;
		}
		if (error_starts(r, "MOVED") || error_starts(r, "ASK"))
		{
			bool		ask = error_starts(r, "ASK");

			if (!parse_redirection(r, &slot, host, sizeof(host), &port) ||
				(node = find_or_add_node(c, host, port)) < 0)
			{
				redis_fault_set(RC_FAULT_PROTOCOL, "Redis Cluster sent a redirection that is not understood: %s",
								redis_printable(r->str, r->len));
				return false;
			}
			if (ask)
			{
				sub->asking = true;
				c->asked++;
			}
			else
			{
				c->slot_node[slot] = (uint16) node;
				c->map_stale = true;
				c->moved++;
			}
			sub->node = node;
			sub->done = false;
			sub->reply = NULL;
			*again = true;
		}
		else if (error_starts(r, "TRYAGAIN"))
		{
			sub->done = false;
			sub->reply = NULL;
			c->retried++;
			*again = true;
			*tryagain = true;
		}
		else if (error_starts(r, "CLUSTERDOWN"))
		{
			redis_fault_set(RC_FAULT_IO, "Redis Cluster is down: %s",
							redis_printable(r->str, r->len));
			return false;
		}
	}
	return true;
}

/* The caller's replies from the subs' (split commands merged). */
static void
merge_replies(const RedisCommand *commands, int ncommands, SubCommand *subs,
			  int nsubs, RedisReply **replies)
{
	int			i;

	for (i = 0; i < ncommands; i++)
		replies[i] = NULL;
	for (i = 0; i < nsubs; i++)
	{
		SubCommand *sub = &subs[i];
		const RedisCommand *cmd = &commands[sub->origin];
		RedisReply *r = sub->reply;
		RedisReply *merged = replies[sub->origin];

		if (sub->dropped)
			continue;
		if (!sub->split)
		{
			replies[sub->origin] = r;
			continue;
		}
		if (merged != NULL && merged->type == RC_REPLY_ERROR)
			continue;			/* the first error stands for the command */
		if (r->type == RC_REPLY_ERROR)
		{
			replies[sub->origin] = r;
			continue;
		}
		if (is_named(cmd, "MGET"))
		{
			size_t		k;

			if (merged == NULL)
			{
				merged = palloc0(sizeof(RedisReply));
				merged->type = RC_REPLY_ARRAY;
				merged->elements = cmd->nkeys;
				merged->element = palloc0(sizeof(RedisReply *) * cmd->nkeys);
				replies[sub->origin] = merged;
			}
			if (r->type != RC_REPLY_ARRAY || r->elements != (size_t) sub->npositions)
			{
				replies[sub->origin] = r;	/* the caller sees the odd reply */
				continue;
			}
			for (k = 0; k < r->elements; k++)
				merged->element[sub->positions[k]] = r->element[k];
		}
		else
		{
			if (merged == NULL)
			{
				merged = palloc0(sizeof(RedisReply));
				merged->type = RC_REPLY_INTEGER;
				replies[sub->origin] = merged;
			}
			if (r->type == RC_REPLY_INTEGER)
				merged->integer += r->integer;
		}
	}
}

/*
 * Run a caller's pipeline on the cluster (see the header comment).  On
 * success replies[i] answers commands[i]; on a fault returns false with
 * the fault set, *nothing_received saying whether no node answered
 * anything (the client may retry once over fresh connections).
 */
bool
redis_cluster_round_trip(RedisCluster *c, const RedisCommand *commands,
						 int ncommands, RedisReply **replies,
						 TimestampTz deadline, int timeout_ms,
						 bool *nothing_received)
{
	SubList		l;
	bool		anything = false;
	bool		failed = false;
	int			round;
	int			limit_ms;
	TimestampTz limit = redis_transport_wait_limit(&limit_ms);
	int			i;

	/* a commit's limit bounds the TRYAGAIN waits too */
	if (limit != 0 && limit < deadline)
		deadline = limit;
	for (i = 0; i < ncommands; i++)
		if (commands[i].nkeys < 0 || commands[i].argc < 1 ||
			(commands[i].nkeys > 0 &&
			 (commands[i].first_key < 1 ||
			  commands[i].first_key + commands[i].nkeys > commands[i].argc)))
			elog(ERROR, "redis_cache: a command was not built by command_builder.c");
	if (c->map_stale)
		refresh_map(c, deadline, timeout_ms);
	expand(c, commands, ncommands, &l);
	for (i = 0; i < l.n; i++)
		l.subs[i].node = slot_owner(c, l.subs[i].slot, &l.subs[i].cmd);

	for (round = 0;; round++)
	{
		bool		again = false;
		bool		tryagain = false;

		for (i = 0; i < l.n; i++)
			if (!l.subs[i].done && !l.subs[i].dropped && l.subs[i].node < 0)
			{
				redis_fault_set(RC_FAULT_IO, "no master of the Redis Cluster serves slot %d",
								l.subs[i].slot);
				*nothing_received = false;
				return false;
			}
		send_round(c, &l, deadline, timeout_ms, &failed, &anything);
		if (failed)
		{
			*nothing_received = !anything;
			return false;
		}
		if (!follow_redirections(c, &l, commands, &again, &tryagain))
		{
			*nothing_received = false;
			return false;
		}
		if (!again)
			break;
		if (round + 1 >= RC_CLUSTER_MAX_ROUNDS)
		{
			redis_fault_set(RC_FAULT_IO, "Redis Cluster redirected a command more than %d times",
							RC_CLUSTER_MAX_ROUNDS - 1);
			*nothing_received = false;
			return false;
		}
		if (tryagain)
			backoff(RC_CLUSTER_TRYAGAIN_MS << round, deadline);
	}
	merge_replies(commands, ncommands, l.subs, l.n, replies);
	if (c->map_stale)
		refresh_map(c, deadline, timeout_ms);
	*nothing_received = false;
	return true;
}
