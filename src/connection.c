/*-------------------------------------------------------------------------
 *
 * connection.c
 *		  The backend's connection to Redis: connect, pipelined round trips,
 *		  timeouts, the circuit breaker and fault reporting.
 *
 * Design rules:
 *
 * - One connection per backend, opened lazily, reused across calls and
 *   transactions, dropped and reopened when a server parameter changes (see
 *   guc.c) or after any fault.
 *
 * - hiredis is used only for what is pure computation: formatting commands
 *   (redisFormatCommandArgv) and parsing replies (redisReader).  The socket is
 *   ours, non-blocking, and every wait goes through one long-lived
 *   WaitEventSet with the process latch and postmaster death, so
 *   statement_timeout, pg_cancel_backend() and shutdown interrupt a call
 *   blocked on a paused Redis, as in postgres_fdw.  Every wait is also
 *   bounded by connect_timeout_ms / command_timeout_ms, which is what bounds
 *   it where interrupts are held (commit callbacks).
 *
 * - Bytes move through RedisTransport, so TLS can be added as a second
 *   transport without touching callers.
 *
 * - hiredis allocates with malloc.  Replies are deep-copied into palloc'd
 *   RedisReply trees and freed at once; the reader belongs to the connection
 *   and is freed with it.  An ERROR thrown while a command is outstanding
 *   (cancel, out of memory) leaves the protocol out of sync, so the
 *   connection is closed in PG_CATCH before re-throwing.
 *
 * - Redis is untrusted: replies are capped in size (max_value_bytes per
 *   command plus slack), a reader error drops the connection.
 *
 * - Faults never reach the caller as an ERROR unless on_error = 'error'; by
 *   default they become one WARNING per backend per 10 s and the function
 *   returns its miss value.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "redis_cache.h"

/* Seconds between two fault WARNINGs of one backend. */

/* Reply bytes allowed per command on top of max_value_bytes. */
#define RC_REPLY_SLACK_BYTES	(64 * 1024)

#define RC_RECV_CHUNK			16384

typedef struct RedisConnection RedisConnection;

/*
 * How bytes reach the server.  Only plain TCP/Unix sockets today; a TLS
 * transport would wrap SSL_read/SSL_write behind the same three calls.
 */
typedef struct RedisTransport
{
	ssize_t		(*send) (RedisConnection *conn, const char *buf, size_t len);
	ssize_t		(*recv) (RedisConnection *conn, char *buf, size_t len);
	void		(*close) (RedisConnection *conn);
} RedisTransport;

struct RedisConnection
{
	pgsocket	sock;
	const RedisTransport *transport;
	redisReader *reader;
	WaitEventSet *wait_set;
	int			socket_event_pos;	/* position of the socket in wait_set */
	uint32		socket_events;	/* events currently waited for */
	uint64		config_generation;	/* redis_cache_server_config_generation */
	bool		external_fd_acquired;
	uint64		serial;			/* distinguishes successive connections */
	char		run_id[64];		/* INFO server run_id; "" if unknown */
	StringInfoData send_buffer; /* formatted commands, in TopMemoryContext */
};

static uint64 connection_serial = 0;

static RedisConnection *connection = NULL;

/* Circuit breaker, per backend. */
static int	consecutive_failures = 0;
static TimestampTz circuit_open_until = 0;
static bool circuit_half_open = false;
static uint64 breaker_config_generation = 0;

/* Rate limiting of fault warnings. */
static TimestampTz last_warning_at = 0;
static int	suppressed_warnings = 0;

/* Set when an internal round trip found the connection dead (not slow). */
static bool internal_connection_dead = false;

/* The bound of the wait in progress, for messages. */
static int	current_timeout_ms = 0;

/* Description of the last fault, kept without palloc. */
static char fault_message[512];

static ssize_t plain_send(RedisConnection *conn, const char *buf, size_t len);
static ssize_t plain_recv(RedisConnection *conn, char *buf, size_t len);
static void plain_close(RedisConnection *conn);

static const RedisTransport plain_transport = {
	plain_send, plain_recv, plain_close
};

static void set_fault(const char *fmt,...) pg_attribute_printf(1, 2);
static bool connect_to_server(TimestampTz deadline);
static bool round_trip(RedisConnection *conn, const RedisCommand *commands,
					   int ncommands, RedisReply **replies,
					   TimestampTz deadline, bool *nothing_received);
static void report_fault(int flags);

/* An empty StringInfo in TopMemoryContext (repalloc keeps it there). */
static void
init_long_lived_buffer(StringInfo buf)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	initStringInfo(buf);
	MemoryContextSwitchTo(old);
}

static ssize_t
plain_send(RedisConnection *conn, const char *buf, size_t len)
{
	return send(conn->sock, buf, len, MSG_NOSIGNAL);
}

static ssize_t
plain_recv(RedisConnection *conn, char *buf, size_t len)
{
	return recv(conn->sock, buf, len, 0);
}

static void
plain_close(RedisConnection *conn)
{
	if (conn->sock != PGINVALID_SOCKET)
		close(conn->sock);
	conn->sock = PGINVALID_SOCKET;
}

static void
set_fault(const char *fmt,...)
{
	va_list		args;

	va_start(args, fmt);
	vsnprintf(fault_message, sizeof(fault_message), fmt, args);
	va_end(args);
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

	if (conn->wait_set)
		FreeWaitEventSet(conn->wait_set);
	if (conn->reader)
		redisReaderFree(conn->reader);
	if (conn->send_buffer.data)
		pfree(conn->send_buffer.data);
	conn->transport->close(conn);
	if (conn->external_fd_acquired)
		ReleaseExternalFD();
	pfree(conn);
}

/*
 * Wait until the socket is readable or writable, the deadline passes, or an
 * interrupt arrives.  Returns false on timeout.  Interrupts are serviced by
 * CHECK_FOR_INTERRUPTS(), which may throw: callers hold the connection in a
 * PG_TRY that drops it.
 */
static bool
wait_for_socket(RedisConnection *conn, uint32 events, TimestampTz deadline)
{
	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		long		timeout_ms;
		WaitEvent	event;
		int			rc;

		CHECK_FOR_INTERRUPTS();

		if (now >= deadline)
			return false;
		timeout_ms = TimestampDifferenceMilliseconds(now, deadline);
		if (timeout_ms <= 0)
			timeout_ms = 1;

		if (conn->socket_events != events)
		{
			ModifyWaitEvent(conn->wait_set, conn->socket_event_pos, events, NULL);
			conn->socket_events = events;
		}

		rc = WaitEventSetWait(conn->wait_set, timeout_ms, &event, 1,
							  PG_WAIT_EXTENSION);
		if (rc == 0)
			continue;			/* timed out: the loop re-checks the deadline */

		if (event.events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			continue;
		}
		if (event.events & events)
			return true;
	}
}

/*
 * Open a non-blocking socket to one address and wait for the TCP handshake.
 */
static bool
connect_socket(RedisConnection *conn, struct sockaddr *addr, socklen_t addrlen,
			   TimestampTz deadline)
{
	int			one = 1;
	int			so_error = 0;
	socklen_t	optlen = sizeof(so_error);

	conn->sock = socket(addr->sa_family, SOCK_STREAM, 0);
	if (conn->sock == PGINVALID_SOCKET)
	{
		set_fault("could not create socket: %s", strerror(errno));
		return false;
	}
	if (fcntl(conn->sock, F_SETFL, O_NONBLOCK) < 0 ||
		fcntl(conn->sock, F_SETFD, FD_CLOEXEC) < 0)
	{
		set_fault("could not set socket options: %s", strerror(errno));
		return false;
	}
	if (addr->sa_family != AF_UNIX)
		(void) setsockopt(conn->sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	if (connect(conn->sock, addr, addrlen) == 0)
		goto connected;
	if (errno != EINPROGRESS && errno != EINTR)
	{
		set_fault("could not connect to Redis at %s:%d: %s",
				  redis_cache_host, redis_cache_port, strerror(errno));
		return false;
	}

	conn->socket_event_pos = AddWaitEventToSet(conn->wait_set,
											   WL_SOCKET_WRITEABLE,
											   conn->sock, NULL, NULL);
	conn->socket_events = WL_SOCKET_WRITEABLE;
	if (!wait_for_socket(conn, WL_SOCKET_WRITEABLE, deadline))
	{
		set_fault("timed out connecting to Redis at %s:%d after %d ms",
				  redis_cache_host, redis_cache_port, current_timeout_ms);
		return false;
	}
	if (getsockopt(conn->sock, SOL_SOCKET, SO_ERROR, &so_error, &optlen) < 0)
		so_error = errno;
	if (so_error != 0)
	{
		set_fault("could not connect to Redis at %s:%d: %s",
				  redis_cache_host, redis_cache_port, strerror(so_error));
		return false;
	}
	return true;

connected:
	conn->socket_event_pos = AddWaitEventToSet(conn->wait_set,
											   WL_SOCKET_READABLE,
											   conn->sock, NULL, NULL);
	conn->socket_events = WL_SOCKET_READABLE;
	return true;
}

/*
 * Allocate the connection skeleton: wait set with latch and postmaster
 * death; the socket is added by connect_socket().  The caller has acquired
 * one external FD for the socket.
 */
static RedisConnection *
new_connection(void)
{
	RedisConnection *conn;

	conn = MemoryContextAllocZero(TopMemoryContext, sizeof(RedisConnection));
	conn->sock = PGINVALID_SOCKET;
	conn->transport = &plain_transport;
	conn->config_generation = redis_cache_server_config_generation;
	conn->external_fd_acquired = true;
	init_long_lived_buffer(&conn->send_buffer);
	/* published before anything can throw, so redis_disconnect() frees it */
	connection = conn;
	conn->wait_set = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(conn->wait_set, WL_LATCH_SET, PGINVALID_SOCKET,
					  MyLatch, NULL);
	AddWaitEventToSet(conn->wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET,
					  NULL, NULL);
	return conn;
}

/*
 * The password to send: redis_cache.password, else the first line of
 * redis_cache.password_file.  Returns NULL (with set_fault) when the file
 * cannot be read, "" when there is no password.  The result is palloc'd and
 * wiped by the caller.
 */
static char *
read_password(void)
{
	FILE	   *file;
	char		line[1024];
	size_t		len;

	if (redis_cache_password && redis_cache_password[0])
		return pstrdup(redis_cache_password);
	if (redis_cache_password_file == NULL || redis_cache_password_file[0] == '\0')
		return pstrdup("");

	file = AllocateFile(redis_cache_password_file, "r");
	if (file == NULL)
	{
		set_fault("could not open redis_cache.password_file \"%s\": %s",
				  redis_cache_password_file, strerror(errno));
		return NULL;
	}
	if (fgets(line, sizeof(line), file) == NULL)
		line[0] = '\0';
	FreeFile(file);
	len = strlen(line);
	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		line[--len] = '\0';
	if (len == 0)
	{
		set_fault("redis_cache.password_file \"%s\" is empty",
				  redis_cache_password_file);
		return NULL;
	}
	return pstrdup(line);
}

/*
 * Resolve the configured address and connect, then AUTH and SELECT.  On
 * success "connection" is set; on failure set_fault() says why.  Throws only
 * on interrupts (the caller's PG_TRY cleans up).
 */
static bool
connect_to_server(TimestampTz deadline)
{
	RedisConnection *conn;
	bool		ok = false;
	const char *host = redis_cache_host ? redis_cache_host : "127.0.0.1";
	char	   *password;

	password = read_password();
	if (password == NULL)
		return false;

	if (!AcquireExternalFD())
	{
		set_fault("could not connect to Redis: too many open files in this backend");
		return false;
	}

	conn = new_connection();

	if (host[0] == '/')
	{
		struct sockaddr_un addr;

		memset(&addr, 0, sizeof(addr));
		addr.sun_family = AF_UNIX;
		if (strlen(host) >= sizeof(addr.sun_path))
			set_fault("Unix socket path \"%s\" is too long", host);
		else
		{
			strlcpy(addr.sun_path, host, sizeof(addr.sun_path));
			ok = connect_socket(conn, (struct sockaddr *) &addr, sizeof(addr),
								deadline);
		}
	}
	else
	{
		struct addrinfo hints;
		struct addrinfo *addrs = NULL;
		char		port[16];
		int			rc;

		memset(&hints, 0, sizeof(hints));
		hints.ai_family = AF_UNSPEC;
		hints.ai_socktype = SOCK_STREAM;
		snprintf(port, sizeof(port), "%d", redis_cache_port);
		rc = getaddrinfo(host, port, &hints, &addrs);
		if (rc != 0 || addrs == NULL)
			set_fault("could not resolve Redis host \"%s\": %s",
					  host, gai_strerror(rc));
		else
		{
			/* first address only: one wait set slot per connection */
			ok = connect_socket(conn, addrs->ai_addr, addrs->ai_addrlen,
								deadline);
			freeaddrinfo(addrs);
		}
	}

	if (ok)
	{
		conn->reader = redisReaderCreate();
		if (conn->reader == NULL)
		{
			set_fault("out of memory creating the Redis reply reader");
			ok = false;
		}
	}

	/*
	 * AUTH, SELECT and INFO server, pipelined, within the connect deadline.
	 * INFO gives the run_id that version.c uses to detect restarts.
	 */
	if (ok)
	{
		RedisCommand cmds[3];
		const char *auth_argv[3];
		size_t		auth_len[3];
		const char *select_argv[2];
		size_t		select_len[2];
		const char *info_argv[2] = {"INFO", "server"};
		size_t		info_len[2] = {4, 6};
		char		dbstr[16];
		int			n = 0;
		int			auth_index = -1;
		RedisReply *replies[3];
		bool		nothing;
		int			i;

		if (password[0] != '\0')
		{
			int			argc = 0;

			auth_argv[argc] = "AUTH";
			auth_len[argc++] = 4;
			if (redis_cache_user && redis_cache_user[0])
			{
				auth_argv[argc] = redis_cache_user;
				auth_len[argc++] = strlen(redis_cache_user);
			}
			auth_argv[argc] = password;
			auth_len[argc++] = strlen(password);
			cmds[n].argc = argc;
			cmds[n].argv = auth_argv;
			cmds[n].argvlen = auth_len;
			auth_index = n++;
		}
		if (redis_cache_database != 0)
		{
			snprintf(dbstr, sizeof(dbstr), "%d", redis_cache_database);
			select_argv[0] = "SELECT";
			select_len[0] = 6;
			select_argv[1] = dbstr;
			select_len[1] = strlen(dbstr);
			cmds[n].argc = 2;
			cmds[n].argv = select_argv;
			cmds[n].argvlen = select_len;
			n++;
		}
		cmds[n].argc = 2;
		cmds[n].argv = info_argv;
		cmds[n].argvlen = info_len;
		n++;

		ok = round_trip(conn, cmds, n, replies, deadline, &nothing);
		for (i = 0; ok && i < n - 1; i++)
		{
			if (replies[i]->type == RC_REPLY_ERROR)
			{
				/* never echo the command: it carries the password */
				set_fault("Redis at %s:%d refused %s: %s",
						  host, redis_cache_port,
						  (i == auth_index) ? "authentication" : "SELECT",
						  replies[i]->str);
				ok = false;
			}
		}
		if (ok && replies[n - 1]->type == RC_REPLY_ERROR &&
			strncmp(replies[n - 1]->str, "NOAUTH", 6) == 0)
		{
			set_fault("Redis at %s:%d requires authentication: %s",
					  host, redis_cache_port, replies[n - 1]->str);
			ok = false;
		}
		/* INFO may be renamed away on managed Redis: then no restart detection */
		if (ok && replies[n - 1]->type == RC_REPLY_STRING)
		{
			const char *p = strstr(replies[n - 1]->str, "run_id:");

			if (p != NULL)
			{
				size_t		len;

				p += strlen("run_id:");
				len = strcspn(p, "\r\n");
				if (len >= sizeof(conn->run_id))
					len = sizeof(conn->run_id) - 1;
				memcpy(conn->run_id, p, len);
				conn->run_id[len] = '\0';
			}
		}
	}

	if (ok)
	{
		conn->serial = ++connection_serial;
		ereport(LOG,
				(errmsg("redis_cache: connected to Redis at %s:%d", host, redis_cache_port)));
	}

	explicit_bzero(password, strlen(password));
	pfree(password);
	if (!ok)
		redis_disconnect();
	return ok;
}

/*
 * Deep-copy a hiredis reply into palloc'd memory.
 */
static RedisReply *
copy_reply(const redisReply *src)
{
	RedisReply *dst = palloc0(sizeof(RedisReply));

	dst->type = src->type;
	switch (src->type)
	{
		case REDIS_REPLY_STRING:
		case REDIS_REPLY_STATUS:
		case REDIS_REPLY_ERROR:
			dst->len = src->len;
			dst->str = palloc(src->len + 1);
			memcpy(dst->str, src->str, src->len);
			dst->str[src->len] = '\0';
			break;
		case REDIS_REPLY_INTEGER:
			dst->integer = src->integer;
			break;
		case REDIS_REPLY_ARRAY:
			dst->elements = src->elements;
			if (src->elements > 0)
			{
				size_t		i;

				dst->element = palloc(sizeof(RedisReply *) * src->elements);
				for (i = 0; i < src->elements; i++)
					dst->element[i] = copy_reply(src->element[i]);
			}
			break;
		default:
			break;
	}
	return dst;
}

/*
 * Send all commands, then read one reply per command.  Returns false with
 * set_fault() on timeout, I/O error or protocol error; *nothing_received
 * then says whether the server never answered anything (used to decide on
 * one retry over a fresh connection).  May throw on interrupts or out of
 * memory; the caller drops the connection then.
 */
static bool round_trip_io(RedisConnection *conn, const RedisCommand *commands,
						  int ncommands, RedisReply **replies,
						  TimestampTz deadline, bool *nothing_received);

/*
 * round_trip_io() with its statistics: count and latency.
 */
static bool
round_trip(RedisConnection *conn, const RedisCommand *commands, int ncommands,
		   RedisReply **replies, TimestampTz deadline, bool *nothing_received)
{
	TimestampTz start = GetCurrentTimestamp();
	bool		ok;

	ok = round_trip_io(conn, commands, ncommands, replies, deadline,
					   nothing_received);
	redis_stats_add(RC_STAT_ROUND_TRIPS, 1);
	redis_stats_latency(GetCurrentTimestamp() - start);
	return ok;
}

static bool
round_trip_io(RedisConnection *conn, const RedisCommand *commands, int ncommands,
			  RedisReply **replies, TimestampTz deadline, bool *nothing_received)
{
	StringInfo	out;
	bool		just_sent = true;
	size_t		sent = 0;
	size_t		received = 0;
	size_t		budget;
	int			nreplies = 0;
	int			i;
	char		buf[RC_RECV_CHUNK];

	*nothing_received = true;

	/* the connection's buffer: no allocation per command once warmed up */
	out = &conn->send_buffer;
	resetStringInfo(out);
	for (i = 0; i < ncommands; i++)
	{
		char	   *formatted = NULL;
		int			len;

		len = redisFormatCommandArgv(&formatted, commands[i].argc,
									 commands[i].argv, commands[i].argvlen);
		if (len < 0 || formatted == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory formatting a Redis command")));
		appendBinaryStringInfo(out, formatted, len);
		redisFreeCommand(formatted);
	}

	/*
	 * hiredis buffers a bulk string until it is complete, so the bytes read
	 * bound its memory.  Allow one value per key argument (MGET), at most 64.
	 */
	budget = 0;
	for (i = 0; i < ncommands; i++)
		budget += ((size_t) redis_cache_max_value_bytes + RC_REPLY_SLACK_BYTES) *
			(size_t) Min(Max(commands[i].argc - 1, 1), 64);

	while (sent < (size_t) out->len)
	{
		ssize_t		n = conn->transport->send(conn, out->data + sent,
											  out->len - sent);

		if (n > 0)
		{
			sent += n;
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		{
			if (!wait_for_socket(conn, WL_SOCKET_WRITEABLE, deadline))
			{
				set_fault("timed out sending to Redis at %s:%d after %d ms",
						  redis_cache_host, redis_cache_port, current_timeout_ms);
				*nothing_received = false;	/* slow, not dead: no retry */
				return false;
			}
			continue;
		}
		set_fault("could not send to Redis at %s:%d: %s",
				  redis_cache_host, redis_cache_port,
				  n < 0 ? strerror(errno) : "connection closed");
		return false;
	}
	redis_stats_add(RC_STAT_BYTES_OUT, out->len);
	/* a large pipeline must not pin its buffer for the session */
	if (out->maxlen > 64 * 1024)
	{
		pfree(out->data);
		init_long_lived_buffer(out);
	}

	while (nreplies < ncommands)
	{
		void	   *raw = NULL;
		ssize_t		n;

		if (redisReaderGetReply(conn->reader, &raw) != REDIS_OK)
		{
			set_fault("invalid reply from Redis at %s:%d: %s",
					  redis_cache_host, redis_cache_port,
					  conn->reader->errstr[0] ? conn->reader->errstr : "protocol error");
			return false;
		}
		if (raw != NULL)
		{
			PG_TRY();
			{
				replies[nreplies] = copy_reply((redisReply *) raw);
			}
			PG_FINALLY();
			{
				freeReplyObject(raw);
			}
			PG_END_TRY();
			nreplies++;
			continue;
		}

		/*
		 * Right after sending, the reply is never there yet: wait first
		 * instead of paying for a recv() that returns EAGAIN.
		 */
		if (just_sent)
		{
			just_sent = false;
			if (!wait_for_socket(conn, WL_SOCKET_READABLE, deadline))
			{
				set_fault("timed out waiting for Redis at %s:%d after %d ms",
						  redis_cache_host, redis_cache_port, current_timeout_ms);
				*nothing_received = false;	/* slow, not dead: no retry */
				return false;
			}
		}
		n = conn->transport->recv(conn, buf, sizeof(buf));
		if (n > 0)
		{
			*nothing_received = false;
			received += n;
			if (received > budget)
			{
				set_fault("reply from Redis at %s:%d exceeds %zu bytes (redis_cache.max_value_bytes)",
						  redis_cache_host, redis_cache_port, budget);
				return false;
			}
			if (redisReaderFeed(conn->reader, buf, n) != REDIS_OK)
			{
				set_fault("out of memory reading from Redis");
				return false;
			}
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		{
			if (!wait_for_socket(conn, WL_SOCKET_READABLE, deadline))
			{
				set_fault("timed out waiting for Redis at %s:%d after %d ms",
						  redis_cache_host, redis_cache_port, current_timeout_ms);
				*nothing_received = false;	/* slow, not dead: no retry */
				return false;
			}
			continue;
		}
		set_fault("lost connection to Redis at %s:%d: %s",
				  redis_cache_host, redis_cache_port,
				  n < 0 ? strerror(errno) : "server closed the connection");
		return false;
	}
	redis_stats_add(RC_STAT_BYTES_IN, received);
	return true;
}

/*
 * One round trip over the current connection, for the connection layer's
 * own bookkeeping (version.c) while redis_execute() is in progress.  No
 * retry, breaker or reporting: returns false with the fault recorded, and
 * the calling redis_execute() treats it as its own failure.
 */
bool
redis_internal_round_trip(const RedisCommand *commands, int ncommands,
						  RedisReply **replies)
{
	bool		nothing;

	Assert(connection != NULL);
	current_timeout_ms = redis_cache_command_timeout_ms;
	if (round_trip(connection, commands, ncommands, replies,
				   TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											   redis_cache_command_timeout_ms),
				   &nothing))
		return true;
	internal_connection_dead = nothing;
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
 * State of the per-backend circuit breaker, for cache_health() and tests.
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

/* Classify the fault in fault_message for the statistics. */
static RedisCounter
fault_counter(void)
{
	if (strncmp(fault_message, "timed out", 9) == 0)
		return RC_STAT_ERRORS_TIMEOUT;
	if (strstr(fault_message, "invalid reply") || strstr(fault_message, "exceeds"))
		return RC_STAT_ERRORS_PROTOCOL;
	if (strncmp(fault_message, "could not connect", 17) == 0 ||
		strncmp(fault_message, "could not resolve", 17) == 0 ||
		strstr(fault_message, "refused") || strstr(fault_message, "authentication") ||
		strstr(fault_message, "password_file"))
		return RC_STAT_ERRORS_CONNECT;
	return RC_STAT_ERRORS_IO;
}

static void
record_failure(void)
{
	redis_stats_add(fault_counter(), 1);
	consecutive_failures++;
	if (circuit_half_open ||
		consecutive_failures >= redis_cache_circuit_failure_threshold)
	{
		if (circuit_half_open || circuit_open_until == 0)
			redis_stats_add(RC_STAT_CIRCUIT_OPENS, 1);
		circuit_open_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														 redis_cache_circuit_open_seconds * 1000);
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
 * Report the fault described by fault_message according to on_error.
 */
static void
report_fault(int flags)
{
	if (redis_cache_on_error == RC_ON_ERROR_ERROR && !(flags & RC_EXEC_NO_ERROR))
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("redis_cache: %s", fault_message),
				 errhint("Set redis_cache.on_error to 'warning' to treat Redis faults as cache misses.")));

	if (redis_cache_on_error == RC_ON_ERROR_SILENT)
	{
		elog(DEBUG1, "redis_cache: %s", fault_message);
		return;
	}
	if (flags & RC_EXEC_STARTUP)
	{
		/* the client is not ready for messages yet: server log only */
		ereport(LOG,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("redis_cache: %s", fault_message),
				 errdetail("The cache version will be checked when Redis can be reached.")));
		return;
	}

	if (!redis_warning_due(&last_warning_at))
	{
		suppressed_warnings++;
		elog(DEBUG1, "redis_cache: %s", fault_message);
		return;
	}
	if (suppressed_warnings > 0)
		ereport(WARNING,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("redis_cache: %s", fault_message),
				 errdetail("The cache is bypassed; %d similar warnings were suppressed in the last %d seconds.",
						   suppressed_warnings, RC_WARNING_INTERVAL_MS / 1000)));
	else
		ereport(WARNING,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("redis_cache: %s", fault_message),
				 errdetail("The cache is bypassed: reads are misses and writes are skipped.")));
	suppressed_warnings = 0;
}

/*
 * Report an error reply to a data command (WRONGTYPE, OOM, ...).  Not a
 * connection fault: the breaker is untouched and the warning is not rate
 * limited, as it points at a specific key.
 */
void
redis_report_reply_error(const RedisReply *reply, const char *what, int flags)
{
	int			elevel = WARNING;

	redis_stats_add(RC_STAT_ERRORS_REPLY, 1);
	if (redis_cache_on_error == RC_ON_ERROR_ERROR && !(flags & RC_EXEC_NO_ERROR))
		elevel = ERROR;
	else if (redis_cache_on_error == RC_ON_ERROR_SILENT)
		elevel = DEBUG1;

	ereport(elevel,
			(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
			 errmsg("redis_cache: Redis rejected %s", what),
			 errdetail("Redis replied: %s", reply->str ? reply->str : "(no message)")));
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

	/* a different server deserves a fresh breaker */
	if (breaker_config_generation != redis_cache_server_config_generation)
	{
		breaker_config_generation = redis_cache_server_config_generation;
		record_success();
	}

	if (circuit_open_until != 0 && !(flags & RC_EXEC_SKIP_BREAKER))
	{
		if (GetCurrentTimestamp() < circuit_open_until)
		{
			set_fault("circuit breaker open after %d consecutive failures; Redis is skipped for up to %d s",
					  consecutive_failures, redis_cache_circuit_open_seconds);
			redis_stats_add(RC_STAT_BYPASSES, 1);
			report_fault(flags);
			return false;
		}
		circuit_half_open = true;
	}

	if (connection != NULL &&
		connection->config_generation != redis_cache_server_config_generation)
		redis_disconnect();

	for (attempt = 0; attempt < 2 && !ok && !bypass; attempt++)
	{
		bool		reused = (connection != NULL);
		bool		nothing_received = false;

		PG_TRY();
		{
			if (connection == NULL)
			{
				int			timeout_ms = redis_cache_connect_timeout_ms;

				/* a backend's start is never delayed beyond one command */
				if (flags & (RC_EXEC_STARTUP | RC_EXEC_FAST_CONNECT))
					timeout_ms = Min(timeout_ms, redis_cache_command_timeout_ms);
				current_timeout_ms = timeout_ms;
				ok = connect_to_server(TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																   timeout_ms));
			}
			else
				ok = true;

			/*
			 * No command of a caller reaches a connection whose namespace
			 * has not been checked against the expected cache version.
			 */
			if (ok && !(flags & RC_EXEC_INTERNAL))
			{
				internal_connection_dead = false;
				switch (redis_version_verify(flags))
				{
					case RC_VERSION_OK:
						break;
					case RC_VERSION_BYPASS:
						bypass = true;
						break;
					case RC_VERSION_FAULT:
						/* a dead reused connection: retry once like below */
						ok = false;
						nothing_received = internal_connection_dead;
						break;
				}
			}
			current_timeout_ms = redis_cache_command_timeout_ms;
			if (ok && !bypass)
				ok = round_trip(connection, commands, ncommands, replies,
								TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															redis_cache_command_timeout_ms),
								&nothing_received);
		}
		PG_CATCH();
		{
			/* the protocol is out of sync: never reuse this connection */
			redis_disconnect();
			PG_RE_THROW();
		}
		PG_END_TRY();

		if (!ok)
		{
			redis_disconnect();
			if (!(reused && nothing_received))
				break;
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
	return true;
}

/*
 * Convenience wrapper for a single command.  Returns NULL on a fault (already
 * reported).
 */
RedisReply *
redis_command(int flags, int argc, const char **argv, size_t *argvlen)
{
	RedisCommand cmd;
	RedisReply *reply;

	cmd.argc = argc;
	cmd.argv = argv;
	cmd.argvlen = argvlen;
	if (!redis_execute(&cmd, 1, &reply, flags))
		return NULL;
	return reply;
}
