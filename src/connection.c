/*-------------------------------------------------------------------------
 *
 * connection.c
 *		  The client: which Redis server the backend talks to, its settings,
 *		  the handshake, the circuit breaker, retries and fault reporting.
 *
 * Design rules:
 *
 * - One connection (a RedisSocket of transport.c, or for a Redis Cluster
 *   the client of cluster.c with one socket per master) per backend, opened
 *   lazily, reused across calls and transactions, dropped and reopened when
 *   a server parameter changes (TLS and sentinel settings included) or
 *   after any fault.  The settings that choose the server (url, host, port,
 *   user, password, password_file, database) are this file's own and
 *   PGC_SUSET: otherwise any user could point the extension at a server of
 *   their own, harvest the AUTH password or poison the cache for
 *   everybody.  The password is hidden from SHOW ALL, pg_settings and the
 *   sample file.
 *
 * - Choosing the server: redis_cache.host may list several addresses,
 *   tried in order, each within its share of the connect timeout; a node
 *   that says cluster_enabled:1 (INFO cluster, in the handshake) makes the
 *   connection a cluster client, whose identity (the masters' node ids and
 *   run_ids) stands for the run_id, and which is dropped when the masters
 *   change (cluster.c).  redis_cache.url, when set, replaces host, port,
 *   user and database (parts it leaves out take their defaults), and
 *   rediss:// asks for TLS: verify-full unless redis_cache.sslmode names
 *   another TLS mode.  A URL never carries the password (its check refuses one
 *   without echoing the value).  With redis_cache.sentinels set, the
 *   address comes from the sentinels (sentinel.c) at each new connection
 *   and the handshake confirms it with ROLE; a READONLY or LOADING reply
 *   (a demoted or restarting master) drops the connection and the call is
 *   retried once on the master discovered anew.  A connection made under
 *   an older master epoch (sentinel.c) is dropped before its next command,
 *   and a round trip that straddled a change of epoch is a fault (its
 *   commands may have reached the old master after the new one was in
 *   use).  A new master is a new
 *   run_id, which the session check treats like a Redis restart.
 *
 * - A session that lost one of its configured server settings before the
 *   library was loaded (guc.c, redis_settings_untrusted) never reaches
 *   Redis: redis_execute() refuses with an ERROR, or with a fault where
 *   ERROR is not allowed, before the breaker, the connect and the version
 *   check (which could flush the namespace of a default prefix).
 *
 * - The password never reaches a log line.  The postmaster logs every
 *   setting a reload changes with its new text ("parameter ... changed
 *   to"), comparing the stored values before and after; so the check hook
 *   stores "" in the setting whatever the password and keeps the password
 *   in the setting's extra (password_value), and SHOW (superusers only)
 *   displays it through the show hook.  Without shared_preload_libraries
 *   the postmaster and every session hold it in a placeholder that any
 *   role can SHOW and that a reload logs: redis_cache.password is then
 *   refused at connect (redis_cache.password_file is not affected).
 *
 * - The handshake (AUTH, SELECT, INFO server, INFO cluster, and ROLE under
 *   Sentinel) is
 *   one pipelined round trip within the connect deadline, after the TCP
 *   and TLS handshakes (transport.c); INFO gives the run_id that tells restarts
 *   apart.  Then the session check registered by an upper layer (version.c:
 *   the cache version) runs before any caller's command reaches the
 *   connection; it gets a round-trip function, so it never calls back into
 *   redis_execute() for its own commands.
 *
 * - The tracking worker's subscriptions (tracking.c) are sockets of their
 *   own, opened by redis_open_subscriber() with the same TLS, AUTH and
 *   handshake to a master the connection found; the caller owns them, and
 *   the breaker, retries and reporting of this file do not apply to them.
 *
 * - Faults never reach the caller as an ERROR unless on_error = 'error'; by
 *   default they become one WARNING per backend per 10 s and the function
 *   returns its miss value.  Faults are classified by RedisFaultKind for
 *   the statistics, never by their text.  Error replies (-OOM, -BUSY, ...)
 *   are classified in one place, redis_reply_error_kind(), and reported by
 *   redis_report_reply_error(): one WARNING per kind per 10 s, naming the
 *   server's state (out of memory, busy, ...) rather than the command.
 *   Text from Redis goes into messages only through redis_printable().
 *
 * - An ERROR thrown while a command is outstanding (cancel, out of memory)
 *   leaves the protocol out of sync: the connection is closed in PG_CATCH
 *   before re-throwing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <errno.h>

#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "redis_cache.h"

/* settings of this file */
static char *server_host = NULL;
static int	server_port = 6379;
static char *server_user = NULL;
static char *server_password = NULL;	/* always "": see check_password */
static const char *password_value = "";	/* the password: the GUC's extra */
static char *server_password_file = NULL;
static int	server_database = 0;
static int	connect_timeout_ms = 1000;
static int	circuit_failure_threshold = 3;
static int	circuit_open_seconds = 5;

/* bumped by any change of a server setting: the next command reconnects */
static uint64 server_config_generation = 0;

/* redis_cache.url, parsed by its check hook (the setting's extra) */
typedef struct ServerUrl
{
	bool		set;
	bool		tls;			/* rediss:// */
	char		host[256];
	int			port;
	char		user[128];
	int			database;
} ServerUrl;

static char *server_url = NULL;
static const ServerUrl *url = NULL;

typedef struct RedisConnection
{
	RedisSocket *socket;
	uint64		config_generation;	/* config_generation() */
	uint64		serial;			/* distinguishes successive connections */
	char		run_id[64];		/* INFO server run_id; "" if unknown */
	char		host[256];		/* the server connected to */
	int			port;
	uint64		master_epoch;	/* redis_sentinel_epoch() it was made under */
	RedisCluster *cluster;		/* a Redis Cluster's client; socket NULL then */
} RedisConnection;

/* Where and how to connect, from the settings (see the header comment). */
typedef struct ServerTarget
{
	const char *host;
	int			port;
	const char *user;
	int			database;
	int			tls_mode;
} ServerTarget;

static uint64 connection_serial = 0;
static RedisConnection *connection = NULL;

/* Registered by an upper layer (version.c). */
static RedisSessionCheck session_check = NULL;

/* Circuit breaker, per backend. */
static int	consecutive_failures = 0;
static TimestampTz circuit_open_until = 0;
static bool circuit_half_open = false;
static uint64 breaker_config_generation = 0;

/* Rate limiting of fault warnings. */
static TimestampTz last_warning_at = 0;
static int	suppressed_warnings = 0;
static TimestampTz last_commit_warning_at = 0;

/* Set when the session check's round trip found the connection dead. */
static bool check_connection_dead = false;

static const char *
host_or_default(void)
{
	return server_host && server_host[0] ? server_host : "127.0.0.1";
}

static void
current_target(ServerTarget *t)
{
	if (url != NULL && url->set)
	{
		t->host = url->host;
		t->port = url->port;
		t->user = url->user;
		t->database = url->database;
	}
	else
	{
		t->host = host_or_default();
		t->port = server_port;
		t->user = server_user ? server_user : "";
		t->database = server_database;
	}
	t->tls_mode = redis_tls_configured_mode();
	/* rediss:// verifies, as redis-py and ioredis do, unless sslmode says */
	if (url != NULL && url->set && url->tls && t->tls_mode == RC_TLS_DISABLE)
		t->tls_mode = RC_TLS_VERIFY_FULL;
}

/* Changes whenever a setting that chooses the server or TLS changes. */
static uint64
config_generation(void)
{
	return server_config_generation + redis_tls_config_generation() +
		redis_sentinel_config_generation();
}

/* The server in use (or that would be used), for messages and health. */
const char *
redis_server_host(void)
{
	ServerTarget t;

	if (connection != NULL)
		return connection->host;
	if (redis_sentinel_enabled())
		return "";
	current_target(&t);
	return t.host;
}

int
redis_server_port(void)
{
	ServerTarget t;

	if (connection != NULL)
		return connection->port;
	if (redis_sentinel_enabled())
		return 0;
	current_target(&t);
	return t.port;
}

/* The TLS version and cipher of the open connection; false if none. */
bool
redis_connection_tls(const char **version, const char **cipher)
{
	RedisSocket *sock;

	if (connection == NULL)
		return false;
	sock = connection->cluster ? redis_cluster_any_socket(connection->cluster) :
		connection->socket;
	return sock != NULL && redis_socket_tls(sock, version, cipher);
}

/* The open connection's cluster client, or NULL (cache_health). */
RedisCluster *
redis_connection_cluster(void)
{
	return connection != NULL ? connection->cluster : NULL;
}

/* Whether the open connection is to a Redis Cluster. */
bool
redis_server_is_cluster(void)
{
	return connection != NULL && connection->cluster != NULL;
}

void
redis_set_session_check(RedisSessionCheck check)
{
	session_check = check;
}

/*
 * Close the connection and free everything it owns.  Safe to call at any
 * time, including from PG_CATCH and with no connection open: it never
 * throws.
 */
void
redis_disconnect(void)
{
	RedisConnection *conn = connection;

	if (conn == NULL)
		return;
	connection = NULL;
	redis_socket_close(conn->socket);
	redis_cluster_free(conn->cluster);
	pfree(conn);
}

/*
 * The password to send: redis_cache.password, else the first line of
 * redis_cache.password_file.  Returns NULL (with the fault set) when the
 * file cannot be read, "" when there is no password.  The result is
 * palloc'd and wiped by the caller.
 */
static char *
read_password(void)
{
	char	   *result;
	char	   *why = NULL;

	if (password_value[0])
	{
		if (!redis_cache_preloaded())
		{
			redis_fault_set(RC_FAULT_CONNECT,
							"redis_cache.password is not used without shared_preload_libraries (any role can read it before the library is loaded, and a reload logs it): use redis_cache.password_file or preload the library");
			return NULL;
		}
		return pstrdup(password_value);
	}
	if (server_password_file == NULL || server_password_file[0] == '\0')
		return pstrdup("");

	result = redis_read_secret_file(server_password_file,
									"redis_cache.password_file", &why);
	if (result == NULL)
		redis_fault_set(RC_FAULT_CONNECT, "%s", why);
	return result;
}

/* The run_id line of an INFO server reply, into run_id. */
static void
remember_run_id(char *run_id, size_t run_id_len, const RedisReply *info)
{
	const char *p;
	size_t		len;

	/* INFO may be renamed away on managed Redis: then no restart detection */
	if (info->type == RC_REPLY_ERROR &&
		redis_reply_error_kind(info) == RC_ERR_NOPERM)
		redis_report_reply_error(info, "reading the server's run_id (INFO server) to detect Redis restarts", RC_EXEC_NO_ERROR);
	if (info->type != RC_REPLY_STRING)
		return;
	p = strstr(info->str, "run_id:");
	if (p == NULL)
		return;
	p += strlen("run_id:");
	/* 40 hex digits from Redis; anything else is not kept (cache_version) */
	len = strspn(p, "0123456789abcdefABCDEF");
	if (len == 0 || len >= run_id_len ||
		(p[len] != '\r' && p[len] != '\n' && p[len] != '\0'))
		return;
	memcpy(run_id, p, len);
	run_id[len] = '\0';
}

/* Whether an INFO cluster reply says cluster_enabled:1. */
static bool
cluster_enabled(const RedisReply *info)
{
	const char *p;

	if (info->type != RC_REPLY_STRING)
		return false;
	p = strstr(info->str, "cluster_enabled:");
	return p != NULL && p[strlen("cluster_enabled:")] == '1';
}

/*
 * What ROLE says conn's server is: NULL when a master, else its role
 * ("slave", "sentinel", or something unexpected) for the message.
 */
static const char *
not_a_master(const RedisReply *role)
{
	if (role->type == RC_REPLY_ERROR)
		return "a server that refused ROLE";
	if (role->type != RC_REPLY_ARRAY || role->elements == 0 ||
		role->element[0]->type != RC_REPLY_STRING)
		return "a server whose ROLE reply is not understood";
	if (strcmp(role->element[0]->str, "master") == 0)
		return NULL;
	return psprintf("a %s", redis_printable(role->element[0]->str,
											 role->element[0]->len));
}

/*
 * AUTH, SELECT, INFO server, INFO cluster and, under Sentinel, ROLE:
 * pipelined, within the connect deadline, over sock to host:port.  The
 * run_id goes into run_id; *is_cluster says whether the server is a Redis
 * Cluster node.  A cluster node (cluster_node: a master of the map) gets
 * AUTH and INFO server only: a cluster has database 0 alone.
 */
static bool
handshake(RedisSocket *sock, const char *host, int port,
		  const ServerTarget *target, const char *password, bool cluster_node,
		  TimestampTz deadline, int timeout_ms, char *run_id,
		  size_t run_id_len, bool *is_cluster)
{
	RedisCommand cmds[5];
	const char *auth_argv[3];
	size_t		auth_len[3];
	int			n = 0;
	int			auth_index = -1;
	int			info_index;
	int			cluster_index = -1;
	int			role_index = -1;
	RedisReply *replies[5];
	bool		nothing;
	int			i;

	*is_cluster = false;
	if (cluster_node && target->database != 0)
	{
		redis_fault_set(RC_FAULT_CONNECT, "Redis at %s:%d is a Redis Cluster node, which has database 0 only, but redis_cache.database is %d",
						host, port, target->database);
		return false;
	}
	if (password[0] != '\0')
	{
		auth_index = n;
		redis_auth_command(&cmds[n++], auth_argv, auth_len, target->user,
						   password);
	}
	if (target->database != 0)
	{
		redis_cmd_init(&cmds[n], "SELECT", 1);
		redis_cmd_int(&cmds[n++], target->database);
	}
	info_index = n;
	redis_cmd_init(&cmds[n], "INFO", 1);
	redis_cmd_str(&cmds[n++], "server");
	if (!cluster_node)
	{
		cluster_index = n;
		redis_cmd_init(&cmds[n], "INFO", 1);
		redis_cmd_str(&cmds[n++], "cluster");
	}
	if (redis_sentinel_enabled() && !cluster_node)
	{
		role_index = n;
		redis_cmd_init(&cmds[n++], "ROLE", 0);
	}

	if (!redis_socket_round_trip(sock, cmds, n, replies, deadline,
								 timeout_ms, &nothing))
		return false;
	for (i = 0; i < info_index; i++)
	{
		if (replies[i]->type == RC_REPLY_ERROR)
		{
			/* never echo the command: it carries the password */
			redis_fault_set(RC_FAULT_CONNECT, "Redis at %s:%d refused %s: %s",
							host, port,
							(i == auth_index) ? "authentication" : "SELECT",
							redis_printable(replies[i]->str, replies[i]->len));
			return false;
		}
	}
	if (redis_reply_error_kind(replies[info_index]) == RC_ERR_NOAUTH)
	{
		redis_fault_set(RC_FAULT_CONNECT, "Redis at %s:%d requires authentication: %s",
						host, port,
						redis_printable(replies[info_index]->str,
										replies[info_index]->len));
		return false;
	}
	if (role_index >= 0)
	{
		const char *role = not_a_master(replies[role_index]);

		if (role != NULL)
		{
			/* a failover in progress: the next connection asks again */
			redis_fault_set(RC_FAULT_CONNECT, "Redis at %s:%d, named master \"%s\" by the sentinels, is %s",
							host, port, redis_sentinel_master_name(), role);
			return false;
		}
	}
	if (cluster_index >= 0)
	{
		*is_cluster = cluster_enabled(replies[cluster_index]);
		if (*is_cluster && target->database != 0)
		{
			redis_fault_set(RC_FAULT_CONNECT, "Redis at %s:%d is a Redis Cluster node, which has database 0 only, but redis_cache.database is %d",
							host, port, target->database);
			return false;
		}
	}
	remember_run_id(run_id, run_id_len, replies[info_index]);
	return true;
}

/*
 * The addresses redis_cache.host lists: "host", "host:port", "[v6]:port"
 * or a Unix socket path, separated by commas (the seeds of a cluster, or
 * servers tried in order).  Entries without a port take redis_cache.port.
 */
#define RC_MAX_SEEDS 16

typedef struct ServerSeed
{
	char		host[256];
	int			port;
} ServerSeed;

static int
parse_seeds(const char *list, int default_port, ServerSeed *seeds)
{
	int			n = 0;
	const char *p = list;

	while (*p != '\0' && n < RC_MAX_SEEDS)
	{
		const char *end = strchr(p, ',');
		size_t		len;
		char		item[300];
		char	   *colon;

		if (end == NULL)
			end = p + strlen(p);
		while (p < end && isspace((unsigned char) *p))
			p++;
		len = end - p;
		while (len > 0 && isspace((unsigned char) p[len - 1]))
			len--;
		if (len > 0 && len < sizeof(item))
		{
			memcpy(item, p, len);
			item[len] = '\0';
			seeds[n].port = default_port;
			colon = (item[0] == '/') ? NULL : strrchr(item, ':');
			if (item[0] == '[' && strchr(item, ']') != NULL)
			{
				/* [IPv6 address] or [IPv6 address]:port */
				char	   *close = strchr(item, ']');

				if (close[1] == ':')
					seeds[n].port = atoi(close + 2);
				*close = '\0';
				memmove(item, item + 1, strlen(item + 1) + 1);
			}
			else if (colon != NULL && strchr(item, ':') == colon)
			{
				/* one colon: host:port (several: a bare IPv6 address) */
				*colon = '\0';
				seeds[n].port = atoi(colon + 1);
			}
			strlcpy(seeds[n].host, item, sizeof(seeds[n].host));
			if (seeds[n].port > 0 && seeds[n].port <= 65535 && seeds[n].host[0] != '\0')
				n++;
		}
		p = (*end == ',') ? end + 1 : end;
	}
	return n;
}

/*
 * Connect to host:port and run the handshake of a cluster node
 * (cluster_node) or of the configured server (SELECT, and ROLE under
 * Sentinel).  A server that turns out to be a cluster node when a single
 * server was expected is a fault (the topology changed).  Returns NULL
 * with the fault set.
 */
static RedisSocket *
open_node(const char *host, int port, bool cluster_node, char *run_id,
		  size_t run_id_len, TimestampTz deadline, int timeout_ms)
{
	ServerTarget target;
	char	   *password;
	RedisSocket *sock;
	bool		is_cluster = false;
	bool		ok;

	current_target(&target);
	password = read_password();
	if (password == NULL)
		return NULL;
	sock = redis_socket_open(host, port, target.tls_mode, timeout_ms, deadline);
	ok = sock != NULL &&
		handshake(sock, host, port, &target, password, cluster_node, deadline,
				  timeout_ms, run_id, run_id_len, &is_cluster);
	explicit_bzero(password, strlen(password));
	pfree(password);
	if (ok && is_cluster && !cluster_node)
	{
		redis_fault_set(RC_FAULT_CONNECT, "Redis at %s:%d has become a Redis Cluster node",
						host, port);
		ok = false;
	}
	if (!ok)
	{
		if (redis_fault_kind() == RC_FAULT_IO)
			redis_fault_reclassify(RC_FAULT_CONNECT);
		redis_socket_close(sock);
		return NULL;
	}
	return sock;
}

/* For cluster.c: connect to one master and run its handshake. */
static RedisSocket *
open_cluster_node(const char *host, int port, char *run_id, size_t run_id_len,
				  TimestampTz deadline, int timeout_ms)
{
	return open_node(host, port, true, run_id, run_id_len, deadline,
					 timeout_ms);
}

/*
 * For the tracking worker: a connection of its own to the master at
 * host:port (one this process's connection found: redis_server_host(), or
 * a master of its cluster map), with the same TLS, AUTH and handshake as
 * the connection's, within redis_cache.connect_timeout_ms; a cluster node
 * (cluster_node) has database 0 only, else redis_cache.database is
 * selected and, under Sentinel, ROLE must say master.  Its run_id goes
 * into run_id ("" if unknown).  Returns NULL with the fault set.  The
 * caller owns the socket (redis_socket_close()); it is never this file's
 * connection, so no breaker, session check or reporting applies.  May
 * throw only on interrupts, having closed what it opened.
 */
RedisSocket *
redis_open_subscriber(const char *host, int port, bool cluster_node,
					  char *run_id, size_t run_id_len)
{
	run_id[0] = '\0';
	if (redis_settings_untrusted() != NULL)
	{
		redis_fault_set(RC_FAULT_CONNECT,
						"the configured value of \"%s\" is not in force in this process, which therefore does not use Redis",
						redis_settings_untrusted());
		return NULL;
	}
	return open_node(host, port, cluster_node, run_id, run_id_len,
					 TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												 connect_timeout_ms),
					 connect_timeout_ms);
}

/*
 * Connect to the configured server (asking the sentinels first, if any;
 * else the addresses of redis_cache.host in turn, each with its share of
 * the time left), then the handshake; a cluster node becomes a cluster
 * client (cluster.c).  On success "connection" is set; on failure the
 * fault says why.  Throws only on interrupts (the caller's PG_TRY cleans
 * up).
 */
static bool
connect_to_server(int timeout_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   timeout_ms);
	RedisConnection *conn;
	ServerTarget target;
	ServerSeed	seeds[RC_MAX_SEEDS];
	int			nseeds = 1;
	char	   *password;
	bool		ok = false;
	bool		is_cluster = false;
	int			i;

	current_target(&target);
	password = read_password();
	if (password == NULL)
		return false;

	conn = MemoryContextAllocZero(TopMemoryContext, sizeof(RedisConnection));
	conn->config_generation = config_generation();
	/* published before anything can throw, so redis_disconnect() frees it */
	connection = conn;
	if (redis_sentinel_enabled())
		ok = redis_sentinel_discover(target.tls_mode, timeout_ms, deadline,
									 seeds[0].host, sizeof(seeds[0].host),
									 &seeds[0].port, &conn->master_epoch);
	else
	{
		nseeds = parse_seeds(target.host, target.port, seeds);
		ok = nseeds > 0;
		if (!ok)
			redis_fault_set(RC_FAULT_CONNECT, "redis_cache.host names no address");
	}
	for (i = 0; ok && i < nseeds; i++)
	{
		TimestampTz now = GetCurrentTimestamp();
		long		left = TimestampDifferenceMilliseconds(now, deadline);
		int			share = (int) Max(left / (nseeds - i), Min(left, 100));
		TimestampTz seed_deadline = i == nseeds - 1 ? deadline :
			TimestampTzPlusMilliseconds(now, share);

		strlcpy(conn->host, seeds[i].host, sizeof(conn->host));
		conn->port = seeds[i].port;
		conn->socket = redis_socket_open(conn->host, conn->port,
										 target.tls_mode, share, seed_deadline);
		if (conn->socket != NULL &&
			handshake(conn->socket, conn->host, conn->port, &target, password,
					  false, seed_deadline, share, conn->run_id,
					  sizeof(conn->run_id), &is_cluster))
			break;
		redis_socket_close(conn->socket);
		conn->socket = NULL;
		if (i == nseeds - 1)
			ok = false;
	}
	explicit_bzero(password, strlen(password));
	pfree(password);

	if (ok && is_cluster)
	{
		RedisSocket *seed = conn->socket;

		/* the cluster client owns the seed's socket from here */
		conn->socket = NULL;
		ok = redis_cluster_create(seed, conn->host, conn->port, conn->run_id,
								  open_cluster_node, deadline, timeout_ms,
								  &conn->cluster) != NULL;
		if (ok)
			strlcpy(conn->run_id, redis_cluster_identity(conn->cluster),
					sizeof(conn->run_id));
	}

	if (!ok)
	{
		/* broken before it was ready: counted as a failed connect */
		if (redis_fault_kind() == RC_FAULT_IO)
			redis_fault_reclassify(RC_FAULT_CONNECT);
		redis_disconnect();
		return false;
	}
	conn->serial = ++connection_serial;
	{
		const char *version;
		const char *cipher;
		RedisSocket *sock = conn->cluster ? redis_cluster_any_socket(conn->cluster) : conn->socket;
		char	   *how = sock != NULL && redis_socket_tls(sock, &version, &cipher) ?
			psprintf(" over %s (%s)", version, cipher) : pstrdup("");

		if (conn->cluster)
			ereport(LOG,
					(errmsg("redis_cache: connected to the Redis Cluster of %s:%d%s, %d masters%s",
							conn->host, conn->port, how,
							redis_cluster_master_count(conn->cluster),
							redis_cluster_unreachable(conn->cluster) > 0 ?
							psprintf(" (%d not reached: %s)",
									 redis_cluster_unreachable(conn->cluster),
									 redis_fault_message()) : "")));
		else if (redis_sentinel_enabled())
			ereport(LOG,
					(errmsg("redis_cache: connected to Redis at %s:%d%s, master \"%s\" of the sentinels",
							conn->host, conn->port, how,
							redis_sentinel_master_name())));
		else
			ereport(LOG,
					(errmsg("redis_cache: connected to Redis at %s:%d%s",
							conn->host, conn->port, how)));
		pfree(how);
	}
	return true;
}

/*
 * One round trip on the open connection: its socket, or the cluster's
 * masters.
 */
static bool
connection_round_trip(const RedisCommand *commands, int ncommands,
					  RedisReply **replies, bool *nothing_received)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   redis_cache_command_timeout_ms);

	Assert(connection != NULL);
	if (connection->cluster != NULL)
		return redis_cluster_round_trip(connection->cluster, commands,
										ncommands, replies, deadline,
										redis_cache_command_timeout_ms,
										nothing_received);
	return redis_socket_round_trip(connection->socket, commands, ncommands,
								   replies, deadline,
								   redis_cache_command_timeout_ms,
								   nothing_received);
}

/*
 * The round trip handed to the session check: the current connection, no
 * retry, breaker or reporting.  Returns false with the fault recorded; the
 * calling redis_execute() treats it as its own failure.
 */
static bool
check_round_trip(const RedisCommand *commands, int ncommands,
				 RedisReply **replies)
{
	bool		nothing;

	if (connection_round_trip(commands, ncommands, replies, &nothing))
		return true;
	check_connection_dead = nothing;
	return false;
}

uint64
redis_connection_serial(void)
{
	return connection ? connection->serial : 0;
}

const char *
redis_connection_run_id(void)
{
	return connection ? connection->run_id : "";
}

/*
 * State of the per-backend circuit breaker, for cache_stats/cache_health.
 */
const char *
redis_circuit_state(void)
{
	if (circuit_open_until == 0)
		return "closed";
	if (GetCurrentTimestamp() < circuit_open_until)
		return "open";
	return "half-open";
}

static RedisCounter
fault_counter(RedisFaultKind kind)
{
	switch (kind)
	{
		case RC_FAULT_TIMEOUT:
			return RC_STAT_ERRORS_TIMEOUT;
		case RC_FAULT_PROTOCOL:
			return RC_STAT_ERRORS_PROTOCOL;
		case RC_FAULT_CONNECT:
			return RC_STAT_ERRORS_CONNECT;
		default:
			return RC_STAT_ERRORS_IO;
	}
}

static void
record_failure(void)
{
	redis_stats_add(fault_counter(redis_fault_kind()), 1);
	consecutive_failures++;
	if (circuit_half_open ||
		consecutive_failures >= circuit_failure_threshold)
	{
		if (circuit_half_open || circuit_open_until == 0)
			redis_stats_add(RC_STAT_CIRCUIT_OPENS, 1);
		circuit_open_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														 circuit_open_seconds * 1000);
		if (!circuit_half_open)
			elog(DEBUG1, "redis_cache: circuit breaker opened after %d consecutive failures",
				 consecutive_failures);
	}
	circuit_half_open = false;
}

static void
record_success(void)
{
	consecutive_failures = 0;
	circuit_open_until = 0;
	circuit_half_open = false;
}

/*
 * Report the current fault according to on_error.
 */
static void
report_fault(int flags)
{
	const char *message = redis_fault_message();

	if (redis_cache_on_error == RC_ON_ERROR_ERROR && !(flags & RC_EXEC_NO_ERROR))
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("redis_cache: %s", message),
				 errhint("Set redis_cache.on_error to 'warning' to treat Redis faults as cache misses.")));

	if (redis_cache_on_error == RC_ON_ERROR_SILENT)
	{
		elog(DEBUG1, "redis_cache: %s", message);
		return;
	}
	if (flags & RC_EXEC_STARTUP)
	{
		/* the client is not ready for messages yet: server log only */
		ereport(LOG,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("redis_cache: %s", message),
				 errdetail("The cache version will be checked when Redis can be reached.")));
		return;
	}

	if (flags & RC_EXEC_AT_COMMIT)
	{
		/* its own rate limit: a read's WARNING must not hide this one */
		if (!redis_warning_due(&last_commit_warning_at))
		{
			elog(DEBUG1, "redis_cache: %s", message);
			return;
		}
		ereport(WARNING,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("redis_cache: %s", message),
				 errdetail("The transaction is committed. The background worker (shared_preload_libraries) delivers its invalidations as soon as Redis answers; until then reads of the keys concerned are misses.")));
		return;
	}
	if (!redis_warning_due(&last_warning_at))
	{
		suppressed_warnings++;
		elog(DEBUG1, "redis_cache: %s", message);
		return;
	}
	if (suppressed_warnings > 0)
		ereport(WARNING,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("redis_cache: %s", message),
				 errdetail("The cache is bypassed; %d similar warnings were suppressed in the last %d seconds.",
						   suppressed_warnings, RC_WARNING_INTERVAL_MS / 1000)));
	else
		ereport(WARNING,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("redis_cache: %s", message),
				 errdetail("The cache is bypassed: reads are misses and writes are skipped.")));
	suppressed_warnings = 0;
}

/*
 * What an error reply means, from its first word (Redis' error code, as
 * in "-OOM command not allowed ...").  The one place replies are
 * classified: callers switch on the kind, never on the text.
 */
RedisErrorKind
redis_reply_error_kind(const RedisReply *reply)
{
	static const struct
	{
		const char *code;
		RedisErrorKind kind;
	}			codes[] = {
		{"OOM", RC_ERR_OOM},
		{"BUSY", RC_ERR_BUSY},
		{"LOADING", RC_ERR_LOADING},
		{"READONLY", RC_ERR_READONLY},
		{"MISCONF", RC_ERR_MISCONF},
		{"NOPERM", RC_ERR_NOPERM},
		{"NOAUTH", RC_ERR_NOAUTH},
		{"NOSCRIPT", RC_ERR_NOSCRIPT},
		{"WRONGTYPE", RC_ERR_WRONGTYPE},
		{"MOVED", RC_ERR_MOVED},
		{"ASK", RC_ERR_ASK},
	};
	size_t		len;
	int			i;

	if (reply == NULL || reply->type != RC_REPLY_ERROR || reply->str == NULL)
		return RC_ERR_GENERIC;
	/* Redis 7.0 reports an ACL denial inside a script as plain ERR */
	if (strstr(reply->str, "The user executing the script can't") != NULL)
		return RC_ERR_NOPERM;
	len = strcspn(reply->str, " ");
	for (i = 0; i < (int) lengthof(codes); i++)
		if (len == strlen(codes[i].code) &&
			strncmp(reply->str, codes[i].code, len) == 0)
			return codes[i].kind;
	return RC_ERR_GENERIC;
}

/* Rate limiting of reply-error warnings, per kind. */
static TimestampTz last_reply_warning_at[RC_NUM_ERROR_KINDS];
static int	suppressed_reply_warnings[RC_NUM_ERROR_KINDS];

/*
 * Report an error reply to a command (OOM, WRONGTYPE, ...): "what" says
 * what was refused, for messages.  Not a connection fault: the breaker is
 * untouched.  With on_error = 'error' (and no RC_EXEC_NO_ERROR) an ERROR;
 * otherwise one WARNING per kind per RC_WARNING_INTERVAL_MS, so a Redis
 * that refuses every write (maxmemory with noeviction) does not flood the
 * log; at backend start (RC_EXEC_STARTUP) a LOG line.  Server-wide states
 * (out of memory, busy, loading, read-only, ...) say so with a hint
 * instead of blaming the command.
 */
void
redis_report_reply_error(const RedisReply *reply, const char *what, int flags)
{
	RedisErrorKind kind = redis_reply_error_kind(reply);
	const char *text = reply->str ? reply->str : "(no message)";
	char	   *replied = redis_printable(text, strlen(text));
	char	   *message;
	const char *hint = NULL;
	int			elevel = WARNING;
	int			suppressed = 0;

	redis_stats_add(RC_STAT_ERRORS_REPLY, 1);
	if (redis_cache_on_error == RC_ON_ERROR_ERROR && !(flags & RC_EXEC_NO_ERROR))
		elevel = ERROR;
	else if (redis_cache_on_error == RC_ON_ERROR_SILENT)
		elevel = DEBUG1;
	else if (flags & RC_EXEC_STARTUP)
		elevel = LOG;			/* the client is not ready for messages */
	else if (!redis_warning_due(&last_reply_warning_at[kind]))
	{
		suppressed_reply_warnings[kind]++;
		elevel = DEBUG1;
	}
	else
	{
		suppressed = suppressed_reply_warnings[kind];
		suppressed_reply_warnings[kind] = 0;
	}

	switch (kind)
	{
		case RC_ERR_OOM:
			message = psprintf("Redis is out of memory and refused %s", what);
			hint = "Raise maxmemory in Redis, or set maxmemory-policy to an evicting policy such as volatile-lru or allkeys-lru; with noeviction a full Redis refuses every write.";
			break;
		case RC_ERR_BUSY:
			message = psprintf("Redis is busy running a script and refused %s", what);
			hint = "A long script or module command blocks Redis: see SCRIPT KILL and busy-reply-threshold.";
			break;
		case RC_ERR_LOADING:
			message = psprintf("Redis is loading its data set and refused %s", what);
			break;
		case RC_ERR_READONLY:
			message = psprintf("Redis at %s:%d is a read-only replica and refused %s",
							   redis_server_host(), redis_server_port(), what);
			hint = redis_sentinel_enabled() ? "The sentinels named it master: a failover may be in progress; the next command asks them again." : "Point redis_cache.host (or redis_cache.url) at the primary, or use redis_cache.sentinels.";
			break;
		case RC_ERR_MISCONF:
			message = psprintf("Redis cannot save its data and refused %s", what);
			hint = "See the Redis log for the snapshot error; Redis refuses writes while stop-writes-on-bgsave-error is yes.";
			break;
		case RC_ERR_NOPERM:
			{
				/* Redis 7: "... permissions to run the 'get' command" */
				const char *open_quote = strchr(text, '\'');
				const char *close_quote = open_quote ? strchr(open_quote + 1, '\'') : NULL;
				const char *prefix = redis_cache_key_prefix ? redis_cache_key_prefix : "";

				if (strstr(text, "script can't run this command") != NULL)
				{
					message = psprintf("Redis denied the ACL permission to run a command inside a script for %s",
									   what);
					hint = "Grant the user of redis_cache.user every command the README lists, those the scripts call included (see src/scripts.c).";
				}
				else if (close_quote != NULL && close_quote - open_quote < 64)
				{
					char	   *command = redis_printable(open_quote + 1,
														  close_quote - open_quote - 1);

					message = psprintf("Redis denied the ACL permission to run command \"%s\" for %s",
									   command, what);
					hint = psprintf("Grant the command to the user of redis_cache.user, for example ACL SETUSER <user> +%s (the README lists every command needed).",
									command);
				}
				else
				{
					char	   *pattern = redis_printable(prefix, strlen(prefix));

					message = psprintf("Redis denied the ACL permission to access a key matching \"%s*\" for %s",
									   pattern, what);
					hint = psprintf("Grant the key pattern to the user of redis_cache.user, for example ACL SETUSER <user> ~%s* (the README lists what is needed).",
									pattern);
				}
			}
			break;
		case RC_ERR_MOVED:
		case RC_ERR_ASK:
			message = psprintf("Redis at %s:%d is a cluster node and redirected %s",
							   redis_server_host(), redis_server_port(), what);
			hint = "Redis Cluster is not supported: point redis_cache.host at a standalone server.";
			break;
		default:
			message = psprintf("Redis rejected %s", what);
			break;
	}

	if (suppressed > 0)
		ereport(elevel,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("redis_cache: %s", message),
				 errdetail("Redis replied: %s (%d similar warnings were suppressed in the last %d seconds)",
						   replied, suppressed, RC_WARNING_INTERVAL_MS / 1000),
				 hint ? errhint("%s", hint) : 0));
	else
		ereport(elevel,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("redis_cache: %s", message),
				 errdetail("Redis replied: %s", replied),
				 hint ? errhint("%s", hint) : 0));
	pfree(message);
	pfree(replied);
}

/*
 * Whether a rate-limited WARNING may be given now (and note that it is):
 * not with on_error = 'silent', and at most once per RC_WARNING_INTERVAL_MS
 * for the caller's *last_warning.
 */
bool
redis_warning_due(TimestampTz *last_warning)
{
	TimestampTz now;

	if (redis_cache_on_error == RC_ON_ERROR_SILENT)
		return false;
	now = GetCurrentTimestamp();
	if (*last_warning != 0 &&
		!TimestampDifferenceExceeds(*last_warning, now, RC_WARNING_INTERVAL_MS))
		return false;
	*last_warning = now;
	return true;
}

/*
 * This session lost a configured server setting (guc.c): nothing reaches
 * Redis.  An ERROR where the caller allows one (whatever on_error says:
 * this is not a Redis fault but a refused privilege), else a fault
 * reported like the others (a WARNING, or LOG at backend start).
 */
static bool
refuse_untrusted_session(int flags)
{
	if (!(flags & RC_EXEC_NO_ERROR))
		redis_settings_check_trusted();
	redis_fault_set(RC_FAULT_CONNECT,
					"the configured value of \"%s\" is not in force in this session, which therefore does not use Redis",
					redis_settings_untrusted());
	redis_stats_add(RC_STAT_BYPASSES, 1);
	report_fault(flags | RC_EXEC_NO_ERROR);
	return false;
}

/*
 * One attempt: connect if needed, run the session check, then the
 * commands.  *bypass is set when the check says the namespace must not be
 * used; *nothing_received when a reused connection turned out dead.
 */
static bool
attempt_round_trip(const RedisCommand *commands, int ncommands,
				   RedisReply **replies, int flags, bool *bypass,
				   bool *nothing_received)
{
	bool		ok = true;

	if (connection == NULL)
	{
		int			timeout_ms = connect_timeout_ms;

		/* a backend's start is never delayed beyond one command */
		if (flags & (RC_EXEC_STARTUP | RC_EXEC_FAST_CONNECT))
			timeout_ms = Min(timeout_ms, redis_cache_command_timeout_ms);
		ok = connect_to_server(timeout_ms);
	}

	/*
	 * A cluster client that did not reach every master (one hangs) serves
	 * the commit's and the worker's deliveries, which need no session
	 * check, but no session check runs on it: its identity lacks a master.
	 */
	if (ok && !(flags & RC_EXEC_INTERNAL) && connection->cluster != NULL &&
		redis_cluster_unreachable(connection->cluster) > 0)
	{
		redis_fault_set(RC_FAULT_CONNECT, "%d master(s) of the Redis Cluster of %s:%d could not be reached when connecting",
						redis_cluster_unreachable(connection->cluster),
						connection->host, connection->port);
		return false;
	}

	/*
	 * No command of a caller reaches a connection whose namespace has not
	 * been checked (against the expected cache version).
	 */
	if (ok && !(flags & RC_EXEC_INTERNAL) && session_check != NULL)
	{
		check_connection_dead = false;
		switch (session_check(flags, check_round_trip))
		{
			case RC_SESSION_OK:
				break;
			case RC_SESSION_BYPASS:
				*bypass = true;
				return false;
			case RC_SESSION_FAULT:
				/* a dead reused connection: retry once like below */
				*nothing_received = check_connection_dead;
				return false;
		}
	}
	if (ok)
		ok = connection_round_trip(commands, ncommands, replies,
								   nothing_received);
	return ok;
}

/*
 * Under Sentinel, whether the open connection was made under an older
 * master epoch (sentinel.c): another backend or the worker has learnt of
 * a newer master since.
 */
static bool
master_changed(void)
{
	return connection != NULL && redis_sentinel_enabled() &&
		connection->master_epoch != redis_sentinel_epoch();
}

/*
 * For the worker, every RC_SENTINEL_POLL_MS under Sentinel: ask the
 * sentinels whether the master changed, so that connections to an old
 * master are dropped even when no backend opens a new one.  Faults are
 * ignored (the next poll asks again); may throw only on interrupts.
 */
void
redis_poll_sentinels(void)
{
	ServerTarget target;
	char		host[256];
	int			port;
	uint64		epoch;

	if (!redis_sentinel_enabled() || redis_settings_untrusted() != NULL)
		return;
	current_target(&target);
	(void) redis_sentinel_discover(target.tls_mode, connect_timeout_ms,
								   TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															   connect_timeout_ms),
								   host, sizeof(host), &port, &epoch);
}

/*
 * Under Sentinel, whether a reply says the server is no longer a usable
 * master: READONLY (demoted to a replica) or LOADING (restarted).  The
 * commands it refused did nothing, so they may be sent again.
 */
static bool
master_demoted(RedisReply **replies, int nreplies)
{
	int			i;

	if (!redis_sentinel_enabled())
		return false;
	for (i = 0; i < nreplies; i++)
	{
		RedisErrorKind kind;

		if (replies[i]->type != RC_REPLY_ERROR)
			continue;
		kind = redis_reply_error_kind(replies[i]);
		if (kind == RC_ERR_READONLY || kind == RC_ERR_LOADING)
			return true;
	}
	return false;
}

/*
 * Run a pipeline of commands in one round trip.
 *
 * On success returns true and replies[i] holds the answer to commands[i]
 * (possibly an RC_REPLY_ERROR the caller must look at).  On a fault returns
 * false after reporting it per on_error (ERROR only when on_error = 'error'
 * and RC_EXEC_NO_ERROR is not given).  When the cache is disabled returns
 * false silently.
 *
 * A reused connection that turns out dead before answering anything (Redis
 * restarted, idle timeout) is retried once over a fresh connection.
 */
bool
redis_execute(const RedisCommand *commands, int ncommands,
			  RedisReply **replies, int flags)
{
	bool		ok = false;
	bool		bypass = false;
	int			attempt;

	if ((!redis_cache_enabled && !(flags & RC_EXEC_IGNORE_ENABLED)) ||
		ncommands <= 0)
		return false;

	if (redis_settings_untrusted() != NULL)
		return refuse_untrusted_session(flags);

	/* a different server deserves a fresh breaker */
	if (breaker_config_generation != config_generation())
	{
		breaker_config_generation = config_generation();
		record_success();
	}

	if (circuit_open_until != 0 && !(flags & RC_EXEC_SKIP_BREAKER))
	{
		if (GetCurrentTimestamp() < circuit_open_until)
		{
			redis_fault_set(RC_FAULT_BREAKER,
							"circuit breaker open after %d consecutive failures; Redis is skipped for up to %d s",
							consecutive_failures, circuit_open_seconds);
			redis_stats_add(RC_STAT_BYPASSES, 1);
			report_fault(flags);
			return false;
		}
		circuit_half_open = true;
	}

	if (connection != NULL &&
		(connection->config_generation != config_generation() ||
		 master_changed()))
		redis_disconnect();

	for (attempt = 0; attempt < 2 && !ok && !bypass; attempt++)
	{
		bool		reused = (connection != NULL);
		bool		nothing_received = false;

		PG_TRY();
		{
			ok = attempt_round_trip(commands, ncommands, replies, flags,
									&bypass, &nothing_received);
		}
		PG_CATCH();
		{
			/* the protocol is out of sync: never reuse this connection */
			redis_disconnect();
			PG_RE_THROW();
		}
		PG_END_TRY();

		if (!ok && !bypass)
		{
			redis_disconnect();
			if (!(reused && nothing_received))
				break;
		}
		else if (ok && master_changed())
		{
			/*
			 * The commands may have reached the old master after another
			 * backend started to use the new one: count them as not
			 * delivered (the commit path replays its invalidations there).
			 */
			redis_fault_set(RC_FAULT_IO, "the sentinels named a new master of \"%s\" while a command was sent to %s:%d",
							redis_sentinel_master_name(), connection->host,
							connection->port);
			redis_disconnect();
			ok = false;
			break;
		}
		else if (ok && attempt == 0 && master_demoted(replies, ncommands))
		{
			/* ask the sentinels again, and retry once on their master */
			elog(LOG, "redis_cache: Redis at %s:%d is no longer a writable master of \"%s\"; asking the sentinels again",
				 connection->host, connection->port,
				 redis_sentinel_master_name());
			redis_disconnect();
			ok = false;
		}
	}

	if (bypass)
	{
		redis_stats_add(RC_STAT_BYPASSES, 1);
		/* Redis answered: not a fault, but this namespace is not usable */
		record_success();
		return false;
	}
	if (!ok)
	{
		record_failure();
		report_fault(flags);
		return false;
	}
	record_success();
	if (connection != NULL && connection->cluster != NULL &&
		redis_cluster_changed(connection->cluster))
	{
		/*
		 * Other masters (a failover) or a master restarted: the next
		 * command reconnects, and its session check sees a new identity.
		 * This call's replies stand: they came from the current masters.
		 */
		elog(LOG, "redis_cache: the masters of the Redis Cluster of %s:%d changed; reconnecting",
			 connection->host, connection->port);
		redis_disconnect();
	}
	return true;
}

/*
 * Run one command built by command_builder.c.  Returns NULL on a fault
 * (already reported per flags).
 */
RedisReply *
redis_run(const RedisCommand *cmd, int flags)
{
	RedisReply *reply;

	if (!redis_execute(cmd, 1, &reply, flags))
		return NULL;
	return reply;
}

/*
 * How many masters the server has: a Redis Cluster's masters as the slot
 * map last seen names them, 1 for a single server.  Keyless commands go
 * to master RedisCommand.node; a caller that must reach every master
 * (SCAN) loops over 0 .. redis_master_count() - 1.
 */
int
redis_master_count(void)
{
	if (connection != NULL && connection->cluster != NULL)
		return redis_cluster_master_count(connection->cluster);
	return 1;
}

/* ---- settings ------------------------------------------------------------- */

/*
 * Any change to where or how we connect invalidates the open connection.
 * Assign hooks must not fail, so only a counter is touched here.
 */
static void
assign_server_string(const char *newval, void *extra)
{
	server_config_generation++;
}

static void
assign_server_int(int newval, void *extra)
{
	server_config_generation++;
}

/*
 * redis_cache.password: keep the password in the extra and store "" in the
 * setting itself, so that the stored value never changes and a reload
 * never logs it (see the header comment).  Never fails but for out of
 * memory, and then without the value in the message.
 */
static bool
check_password(char **newval, void **extra, GucSource source)
{
	const char *value = *newval ? *newval : "";
	char	   *copy = malloc(strlen(value) + 1);
	char	   *empty = NULL;

	if (copy == NULL || (value[0] != '\0' && (empty = strdup("")) == NULL))
	{
		free(copy);
		GUC_check_errcode(ERRCODE_OUT_OF_MEMORY);
		GUC_check_errmsg("out of memory");
		return false;
	}
	strcpy(copy, value);
	if (empty != NULL)
	{
		explicit_bzero(*newval, strlen(*newval));
		free(*newval);
		*newval = empty;
	}
	*extra = copy;
	return true;
}

static void
assign_password(const char *newval, void *extra)
{
	password_value = extra ? (const char *) extra : "";
	server_config_generation++;
}

/* SHOW (superusers and pg_read_all_settings only) displays the password. */
static const char *
show_password(void)
{
	return password_value;
}

/*
 * redis_cache.url: redis://[user@]host[:port][/database], or rediss:// for
 * TLS; IPv6 hosts as [address].  Parsed here into the extra.  A password
 * (user:password@) is refused with a message of our own, which never
 * echoes the value (PostgreSQL's default message would).
 */
static bool
parse_url(const char *value, ServerUrl *u)
{
	const char *p = value;
	const char *at;
	const char *end = value + strlen(value);
	size_t		len;

	memset(u, 0, sizeof(*u));
	u->port = 6379;
	if (*p == '\0')
		return true;
	if (strncmp(p, "rediss://", 9) == 0)
	{
		u->tls = true;
		p += 9;
	}
	else if (strncmp(p, "redis://", 8) == 0)
		p += 8;
	else
	{
		GUC_check_errdetail("The URL must begin with redis:// or rediss://.");
		return false;
	}
	u->set = true;

	/*
	 * The last '@' ends the user information, wherever it is: a password
	 * may hold '/', '?' or '#' (base64 does), and must be recognised as one.
	 */
	at = strrchr(p, '@');
	if (at != NULL)
	{
		const char *c;

		for (c = p; c < at; c++)
			if (*c == ':')
			{
				GUC_check_errmsg("redis_cache.url must not contain a password");
				GUC_check_errhint("Put the password in the file named by redis_cache.password_file.");
				return false;
			}
		len = at - p;
		if (len >= sizeof(u->user))
		{
			GUC_check_errdetail("The user name in the URL is too long.");
			return false;
		}
		for (c = p; c < at; c++)
			if (!(isalnum((unsigned char) *c) || strchr("._~-", *c)))
			{
				GUC_check_errdetail("The user name in the URL may only contain letters, digits and . _ ~ -.");
				return false;
			}
		memcpy(u->user, p, len);
		u->user[len] = '\0';
		p = at + 1;
	}

	if (*p == '[')
	{
		const char *close = strchr(p, ']');

		if (close == NULL)
		{
			GUC_check_errdetail("An IPv6 host in the URL is written [address].");
			return false;
		}
		len = close - p - 1;
		if (len == 0 || len >= sizeof(u->host))
		{
			GUC_check_errdetail("The URL has no valid host.");
			return false;
		}
		memcpy(u->host, p + 1, len);
		u->host[len] = '\0';
		p = close + 1;
	}
	else
	{
		size_t		i;

		len = strcspn(p, ":/?#");
		if (len == 0 || len >= sizeof(u->host))
		{
			GUC_check_errdetail("The URL has no valid host.");
			return false;
		}
		for (i = 0; i < len; i++)
			if (p[i] <= 0x20 || p[i] >= 0x7f)
			{
				GUC_check_errdetail("The URL's host may not contain spaces or control characters.");
				return false;
			}
		memcpy(u->host, p, len);
		u->host[len] = '\0';
		p += len;
	}
	if (*p == ':')
	{
		char	   *pend;
		long		v = isdigit((unsigned char) p[1]) ? strtol(p + 1, &pend, 10) : -1;

		if (v < 1 || v > 65535)
		{
			GUC_check_errdetail("The URL's port must be a number from 1 to 65535.");
			return false;
		}
		u->port = (int) v;
		p = pend;
	}
	if (*p == '/' && p[1] != '\0')
	{
		char	   *pend;
		long		v = isdigit((unsigned char) p[1]) ? strtol(p + 1, &pend, 10) : -1;

		if (v < 0 || v > 1023)
		{
			GUC_check_errdetail("The URL's database must be a number from 0 to 1023.");
			return false;
		}
		u->database = (int) v;
		p = pend;
	}
	else if (*p == '/')
		p++;
	if (p != end)
	{
		GUC_check_errdetail("The URL may only hold a scheme, user, host, port and database (no options).");
		return false;
	}
	return true;
}

static bool
check_url(char **newval, void **extra, GucSource source)
{
	ServerUrl  *u = malloc(sizeof(ServerUrl));

	if (u == NULL)
	{
		GUC_check_errcode(ERRCODE_OUT_OF_MEMORY);
		GUC_check_errmsg("out of memory");
		return false;
	}
	if (!parse_url(*newval ? *newval : "", u))
	{
		/*
		 * Our own message, never PostgreSQL's default one: that would echo
		 * the value, which may hold a password we did not recognise.
		 */
		if (GUC_check_errmsg_string == NULL)
			GUC_check_errmsg("invalid value for parameter \"redis_cache.url\"");
		free(u);
		return false;
	}
	*extra = u;
	return true;
}

static void
assign_url(const char *newval, void *extra)
{
	url = (const ServerUrl *) extra;
	server_config_generation++;
}

/*
 * Define this file's settings.  Called once from _PG_init.
 */
void
redis_connection_define_gucs(void)
{
	DefineCustomStringVariable("redis_cache.url",
							   gettext_noop("Sets the Redis server as a URL: redis://[user@]host[:port][/database], or rediss:// for TLS."),
							   gettext_noop("When set, it replaces redis_cache.host, port, user and database; rediss:// means sslmode verify-full unless redis_cache.sslmode names another TLS mode. The password never goes in the URL: use redis_cache.password_file."),
							   &server_url,
							   "",
							   PGC_SUSET,
							   0,
							   check_url, assign_url, NULL);

	DefineCustomStringVariable("redis_cache.host",
							   gettext_noop("Sets the Redis server host name, IP address or Unix socket file path, or a list of them."),
							   gettext_noop("A value starting with a slash is the path of a Unix domain socket file, such as /run/redis/redis.sock. A comma-separated list of host:port entries is tried in order: the seeds of a Redis Cluster, detected by itself. Not used when redis_cache.url or redis_cache.sentinels is set."),
							   &server_host,
							   "127.0.0.1",
							   PGC_SUSET,
							   0,
							   NULL, assign_server_string, NULL);

	DefineCustomIntVariable("redis_cache.port",
							gettext_noop("Sets the Redis server TCP port."),
							NULL,
							&server_port,
							6379, 1, 65535,
							PGC_SUSET,
							0,
							NULL, assign_server_int, NULL);

	DefineCustomStringVariable("redis_cache.user",
							   gettext_noop("Sets the Redis ACL user name; empty means legacy AUTH with the password only."),
							   NULL,
							   &server_user,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, assign_server_string, NULL);

	DefineCustomStringVariable("redis_cache.password",
							   gettext_noop("Sets the Redis password; empty means redis_cache.password_file, or no AUTH."),
							   gettext_noop("Visible to superusers only."),
							   &server_password,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   check_password, assign_password, show_password);

	DefineCustomStringVariable("redis_cache.password_file",
							   gettext_noop("Sets a file whose first line is the Redis password, read at each connect."),
							   gettext_noop("Preferred over redis_cache.password: the secret never passes through the configuration system or its log messages."),
							   &server_password_file,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   NULL, assign_server_string, NULL);

	DefineCustomIntVariable("redis_cache.database",
							gettext_noop("Selects the Redis logical database number."),
							NULL,
							&server_database,
							0, 0, 1023,
							PGC_SUSET,
							0,
							NULL, assign_server_int, NULL);

	DefineCustomIntVariable("redis_cache.connect_timeout_ms",
							gettext_noop("Sets the longest wait for a connection to Redis: sentinels, TCP, TLS handshake, AUTH and SELECT."),
							NULL,
							&connect_timeout_ms,
							1000, 1, 600000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("redis_cache.circuit_failure_threshold",
							gettext_noop("Sets how many consecutive Redis failures open the circuit breaker."),
							NULL,
							&circuit_failure_threshold,
							3, 1, 1000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("redis_cache.circuit_open_seconds",
							gettext_noop("Sets how long an open circuit breaker skips Redis before one trial call."),
							NULL,
							&circuit_open_seconds,
							5, 0, 3600,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);
}
