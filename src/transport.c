/*-------------------------------------------------------------------------
 *
 * transport.c
 *		  Bytes to and from one Redis server: a non-blocking socket, the
 *		  waits, pipelined round trips and reply parsing.
 *
 * Design rules:
 *
 * - hiredis is used only for what is pure computation: formatting commands
 *   (redisFormatCommandArgv) and parsing replies (redisReader).  The socket is
 *   ours, non-blocking, and every wait goes through one long-lived
 *   WaitEventSet per socket with the process latch and postmaster death, so
 *   statement_timeout, pg_cancel_backend() and shutdown interrupt a call
 *   blocked on a paused Redis, as in postgres_fdw.  Every wait is also
 *   bounded by the caller's deadline, except during a commit's delivery,
 *   whose operations all end by the limit it sets
 *   (redis_transport_limit_waits()) and by nothing a role may lower.
 *   Where interrupts are held (commit callbacks) CHECK_FOR_INTERRUPTS()
 *   does nothing, so a pending terminate ends the wait itself: the caller
 *   sees a timeout and the backend dies once interrupts resume.  A cancel
 *   does not (it cannot undo the commit).  The background worker's SIGTERM
 *   (ShutdownRequestPending) ends a wait too.
 *
 * - Bytes move through the send/recv/pending/close functions of
 *   RedisTransportOps: plain sockets, or TLS (tls.c, which never waits).
 *   An operation that cannot go on says which direction it waits for
 *   (io_wait): a TLS read may need the socket writable and a write
 *   readable.  The TLS handshake runs inside redis_socket_open(), waiting
 *   the same way, so connect, handshake, send and receive are all bounded
 *   by the one deadline and interruptible.  Bytes OpenSSL has already
 *   decrypted are read before any wait (a readable socket is not the only
 *   sign that a reply is there).
 *
 * - hiredis allocates with malloc.  Replies are deep-copied into palloc'd
 *   RedisReply trees and freed at once; the reader belongs to the socket and
 *   is freed with it.  An ERROR thrown while a command is outstanding
 *   (cancel, out of memory) leaves the protocol out of sync: the caller
 *   closes the socket in PG_CATCH before re-throwing.
 *
 * - Redis is untrusted: before any byte reaches redisReader, our own
 *   incremental pre-scanner checks every header against bounds fixed when
 *   the commands are sent (bytes, one string, elements, nesting, line
 *   length; see "the reply pre-scanner"), so a hostile "*2000000000" is a
 *   protocol fault before hiredis allocates anything for it.  A fault or a
 *   reader error is final: the caller closes the socket.  Interrupts and
 *   the deadline are checked between chunks, also while bytes keep coming.
 *
 * - A socket may instead carry a stream (the tracking worker's subscriber,
 *   tracking.c): commands are queued and sent without waiting
 *   (redis_socket_send_async()), and whatever complete replies have come
 *   are read without waiting (redis_socket_read_async()); the caller waits
 *   on redis_socket_fd() for redis_socket_wait_events() in its own
 *   WaitEventSet.  The pre-scanner bounds each message of the stream
 *   instead of a round trip's replies; a message over its bounds is a
 *   protocol fault like any other.  Once streaming, a socket is never used
 *   for a round trip again (the reader may hold part of a message).
 *
 * - Faults are described once, here or by the client above, as a
 *   RedisFaultKind and a message (fault.c).  This file knows nothing of breakers,
 *   retries or which server to choose: that is connection.c.
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
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "redis_cache.h"

/* Reply bytes allowed per command on top of max_value_bytes. */
#define RC_REPLY_SLACK_BYTES	(64 * 1024)

#define RC_RECV_CHUNK			16384

/*
 * How bytes reach the server: plain TCP/Unix sockets or TLS.  send and
 * recv return -1 with errno EAGAIN when they must wait, having set
 * s->io_wait to the socket event to wait for; any other -1 has set the
 * fault.  pending says whether bytes can be read without waiting.
 */
typedef struct RedisTransportOps
{
	ssize_t		(*send) (RedisSocket *s, const char *buf, size_t len);
	ssize_t		(*recv) (RedisSocket *s, char *buf, size_t len);
	bool		(*pending) (RedisSocket *s);
	void		(*close) (RedisSocket *s);
} RedisTransportOps;

struct RedisSocket
{
	pgsocket	sock;
	const RedisTransportOps *ops;
	RedisTls   *tls;			/* NULL for plain sockets */
	uint32		io_wait;		/* what the last EAGAIN waits for */
	redisReader *reader;
	WaitEventSet *wait_set;
	int			socket_event_pos;	/* position of the socket in wait_set */
	uint32		socket_events;	/* events currently waited for */
	bool		external_fd_acquired;
	int			timeout_ms;		/* bound of the wait in progress, for messages */
	char		label[300];		/* "host:port", for messages */
	StringInfoData send_buffer; /* formatted commands, in TopMemoryContext */
	/* streaming (redis_socket_send_async/read_async): */
	struct ReplyScanner *stream;	/* per-message bounds; NULL until used */
	size_t		stream_sent;	/* bytes of send_buffer already sent */
	uint32		stream_read_wait;	/* what the last read's EAGAIN waits for */
};


/* Deadline of every wait while a commit delivers (0: none), and its bound. */
static TimestampTz wait_limit = 0;
static int	wait_limit_ms = 0;

/* The caller's deadline counts at commit too, when shorter (sentinels). */
static bool strict_deadlines = false;

static ssize_t plain_send(RedisSocket *s, const char *buf, size_t len);
static ssize_t plain_recv(RedisSocket *s, char *buf, size_t len);
static bool plain_pending(RedisSocket *s);
static void plain_close(RedisSocket *s);
static ssize_t tls_send(RedisSocket *s, const char *buf, size_t len);
static ssize_t tls_recv(RedisSocket *s, char *buf, size_t len);
static bool tls_pending(RedisSocket *s);
static void tls_close(RedisSocket *s);

static const RedisTransportOps plain_ops = {
	plain_send, plain_recv, plain_pending, plain_close
};

static const RedisTransportOps tls_ops = {
	tls_send, tls_recv, tls_pending, tls_close
};

/* ---- plain sockets -------------------------------------------------------- */

static ssize_t
plain_send(RedisSocket *s, const char *buf, size_t len)
{
	ssize_t		n = send(s->sock, buf, len, MSG_NOSIGNAL);

	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
	{
		s->io_wait = WL_SOCKET_WRITEABLE;
		errno = EAGAIN;
	}
	else if (n < 0)
		redis_fault_set(RC_FAULT_IO, "could not send to Redis at %s: %s",
						s->label, strerror(errno));
	else if (n == 0)
	{
		redis_fault_set(RC_FAULT_IO, "could not send to Redis at %s: connection closed",
						s->label);
		n = -1;
		errno = EPIPE;
	}
	return n;
}

static ssize_t
plain_recv(RedisSocket *s, char *buf, size_t len)
{
	ssize_t		n = recv(s->sock, buf, len, 0);

	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
	{
		s->io_wait = WL_SOCKET_READABLE;
		errno = EAGAIN;
	}
	else if (n <= 0)
	{
		redis_fault_set(RC_FAULT_IO, "lost connection to Redis at %s: %s", s->label,
						n < 0 ? strerror(errno) : "server closed the connection");
		n = -1;
		errno = ECONNRESET;
	}
	return n;
}

static bool
plain_pending(RedisSocket *s)
{
	return false;
}

static void
plain_close(RedisSocket *s)
{
	if (s->sock != PGINVALID_SOCKET)
		close(s->sock);
	s->sock = PGINVALID_SOCKET;
}

/* ---- TLS (tls.c) ---------------------------------------------------------- */

/* The result of a TLS call, in the terms of the ops (see above). */
static ssize_t
tls_result(RedisSocket *s, ssize_t n, RedisTlsStatus status)
{
	switch (status)
	{
		case RC_TLS_OK:
			return n;
		case RC_TLS_WANT_READ:
			s->io_wait = WL_SOCKET_READABLE;
			errno = EAGAIN;
			return -1;
		case RC_TLS_WANT_WRITE:
			s->io_wait = WL_SOCKET_WRITEABLE;
			errno = EAGAIN;
			return -1;
		case RC_TLS_FAILED:
			break;
	}
	errno = ECONNRESET;
	return -1;
}

static ssize_t
tls_send(RedisSocket *s, const char *buf, size_t len)
{
	RedisTlsStatus status;
	ssize_t		n = redis_tls_write(s->tls, buf, len, &status, s->label);

	return tls_result(s, n, status);
}

static ssize_t
tls_recv(RedisSocket *s, char *buf, size_t len)
{
	RedisTlsStatus status;
	ssize_t		n = redis_tls_read(s->tls, buf, len, &status, s->label);

	return tls_result(s, n, status);
}

static bool
tls_pending(RedisSocket *s)
{
	return redis_tls_pending(s->tls);
}

static void
tls_close(RedisSocket *s)
{
	redis_tls_end(s->tls);
	s->tls = NULL;
	plain_close(s);
}

/*
 * The TLS version and cipher of s; false for a plain socket.
 */
bool
redis_socket_tls(RedisSocket *s, const char **version, const char **cipher)
{
	if (s == NULL || s->tls == NULL)
		return false;
	*version = redis_tls_version(s->tls);
	*cipher = redis_tls_cipher(s->tls);
	return true;
}

/* "host:port" (or the socket path) of s, for messages. */
const char *
redis_socket_label(RedisSocket *s)
{
	return s->label;
}

/* An empty StringInfo in TopMemoryContext (repalloc keeps it there). */
static void
init_long_lived_buffer(StringInfo buf)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	initStringInfo(buf);
	MemoryContextSwitchTo(old);
}

/*
 * Close the socket and free everything it owns.  Never throws, so it is
 * safe in PG_CATCH.
 */
void
redis_socket_close(RedisSocket *s)
{
	if (s == NULL)
		return;
	if (s->wait_set)
		FreeWaitEventSet(s->wait_set);
	if (s->reader)
		redisReaderFree(s->reader);
	if (s->send_buffer.data)
		pfree(s->send_buffer.data);
	if (s->stream)
		pfree(s->stream);
	s->ops->close(s);
	if (s->external_fd_acquired)
		ReleaseExternalFD();
	pfree(s);
}

/*
 * Bound every wait that follows by limit (0 lifts the bound); limit_ms is
 * the setting behind it, for messages.  The commit pipeline sets it for
 * its delivery, so that the whole send, connection and retry included,
 * ends by redis_cache.commit_timeout_ms.
 */
void
redis_transport_limit_waits(TimestampTz limit, int limit_ms)
{
	wait_limit = limit;
	wait_limit_ms = limit_ms;
}

/*
 * The commit's bound in force (0: none) and the setting behind it, for
 * callers that share it out.
 */
TimestampTz
redis_transport_wait_limit(int *limit_ms)
{
	*limit_ms = wait_limit != 0 ? wait_limit_ms : 0;
	return wait_limit;
}

/*
 * While on, a caller's deadline shorter than the commit's limit is kept
 * (a sentinel's share of the discovery); the setting any role may lower
 * does not reach here, sentinel.c computes the share from the limit.
 */
void
redis_transport_strict_deadlines(bool on)
{
	strict_deadlines = on;
}

/*
 * The deadline of an operation starting now: at commit the superuser's cap
 * is the one deadline, since the settings any role may lower (command and
 * connect timeouts) must not let it make its own deliveries fail on
 * purpose.  Otherwise the caller's.
 */
static TimestampTz
operation_deadline(RedisSocket *s, TimestampTz deadline)
{
	if (wait_limit == 0)
		return deadline;
	if (strict_deadlines && deadline < wait_limit)
		return deadline;
	if (s != NULL)
		s->timeout_ms = wait_limit_ms;
	return wait_limit;
}

/*
 * Whether a wait must end now although CHECK_FOR_INTERRUPTS() returned: a
 * terminate that cannot be serviced because interrupts are held (the
 * commit callback), or the background worker's shutdown request (its
 * SIGTERM handler sets a flag and the latch, which this loop resets).
 *
 * Not a cancel: a cancel cannot undo a committed transaction, the commit's
 * wait is bounded by the superuser's cap anyway, and a role able to cancel
 * its own commits at will must not be able to make their deliveries fail
 * (until the worker replays them exactly, a missed delivery flushes the
 * namespace).
 */
static bool
wait_must_end(void)
{
	if (ShutdownRequestPending)
		return true;
	return !INTERRUPTS_CAN_BE_PROCESSED() && ProcDiePending;
}

/*
 * The fault of a wait_for_socket() that returned false: a timeout, or a
 * wait ended by wait_must_end().  doing is "connecting to", "sending to"...
 */
static void
set_wait_fault(RedisSocket *s, const char *doing)
{
	if (wait_must_end())
		redis_fault_set(RC_FAULT_TIMEOUT, "stopped %s Redis at %s: %s",
						doing, s->label,
						ShutdownRequestPending ? "shutting down" : "terminating");
	else
		redis_fault_set(RC_FAULT_TIMEOUT, "timed out %s Redis at %s after %d ms",
						doing, s->label, s->timeout_ms);
}

/*
 * Wait until the socket is readable or writable, the deadline passes, or an
 * interrupt arrives.  Returns false on timeout, and when an interrupt that
 * cannot be serviced now asks the wait to end (wait_must_end()).
 * Interrupts are serviced by CHECK_FOR_INTERRUPTS(), which may throw:
 * callers close the socket then.
 */
static bool
wait_for_socket(RedisSocket *s, uint32 events, TimestampTz deadline)
{
	if (wait_limit != 0 && deadline > wait_limit)
		deadline = wait_limit;

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		long		timeout_ms;
		WaitEvent	event;
		int			rc;

		CHECK_FOR_INTERRUPTS();
		if (wait_must_end())
			return false;

		if (now >= deadline)
			return false;
		timeout_ms = TimestampDifferenceMilliseconds(now, deadline);
		if (timeout_ms <= 0)
			timeout_ms = 1;

		if (s->socket_events != events)
		{
			ModifyWaitEvent(s->wait_set, s->socket_event_pos, events, NULL);
			s->socket_events = events;
		}

		rc = WaitEventSetWait(s->wait_set, timeout_ms, &event, 1,
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
connect_socket(RedisSocket *s, struct sockaddr *addr, socklen_t addrlen,
			   TimestampTz deadline)
{
	int			one = 1;
	int			so_error = 0;
	socklen_t	optlen = sizeof(so_error);

	s->sock = socket(addr->sa_family, SOCK_STREAM, 0);
	if (s->sock == PGINVALID_SOCKET)
	{
		redis_fault_set(RC_FAULT_CONNECT, "could not create socket: %s", strerror(errno));
		return false;
	}
	if (fcntl(s->sock, F_SETFL, O_NONBLOCK) < 0 ||
		fcntl(s->sock, F_SETFD, FD_CLOEXEC) < 0)
	{
		redis_fault_set(RC_FAULT_CONNECT, "could not set socket options: %s", strerror(errno));
		return false;
	}
	if (addr->sa_family != AF_UNIX)
		(void) setsockopt(s->sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	if (connect(s->sock, addr, addrlen) == 0)
	{
		s->socket_event_pos = AddWaitEventToSet(s->wait_set, WL_SOCKET_READABLE,
												s->sock, NULL, NULL);
		s->socket_events = WL_SOCKET_READABLE;
		return true;
	}
	if (errno != EINPROGRESS && errno != EINTR)
	{
		redis_fault_set(RC_FAULT_CONNECT, "could not connect to Redis at %s: %s",
						s->label, strerror(errno));
		return false;
	}

	s->socket_event_pos = AddWaitEventToSet(s->wait_set, WL_SOCKET_WRITEABLE,
											s->sock, NULL, NULL);
	s->socket_events = WL_SOCKET_WRITEABLE;
	if (!wait_for_socket(s, WL_SOCKET_WRITEABLE, deadline))
	{
		set_wait_fault(s, "connecting to");
		return false;
	}
	if (getsockopt(s->sock, SOL_SOCKET, SO_ERROR, &so_error, &optlen) < 0)
		so_error = errno;
	if (so_error != 0)
	{
		redis_fault_set(RC_FAULT_CONNECT, "could not connect to Redis at %s: %s",
						s->label, strerror(so_error));
		return false;
	}
	return true;
}

/* Resolve host (or take it as a Unix socket path) and connect. */
static bool
connect_address(RedisSocket *s, const char *host, int port, TimestampTz deadline)
{
	if (host[0] == '/')
	{
		struct sockaddr_un addr;

		memset(&addr, 0, sizeof(addr));
		addr.sun_family = AF_UNIX;
		if (strlen(host) >= sizeof(addr.sun_path))
		{
			redis_fault_set(RC_FAULT_CONNECT, "Unix socket path \"%s\" is too long", host);
			return false;
		}
		strlcpy(addr.sun_path, host, sizeof(addr.sun_path));
		return connect_socket(s, (struct sockaddr *) &addr, sizeof(addr), deadline);
	}
	else
	{
		struct addrinfo hints;
		struct addrinfo *addrs = NULL;
		char		portstr[16];
		int			rc;
		bool		ok;

		memset(&hints, 0, sizeof(hints));
		hints.ai_family = AF_UNSPEC;
		hints.ai_socktype = SOCK_STREAM;
		snprintf(portstr, sizeof(portstr), "%d", port);
		rc = getaddrinfo(host, portstr, &hints, &addrs);
		if (rc != 0 || addrs == NULL)
		{
			redis_fault_set(RC_FAULT_CONNECT, "could not resolve Redis host \"%s\": %s",
							host, gai_strerror(rc));
			return false;
		}
		/* first address only: one wait set slot per socket */
		ok = connect_socket(s, addrs->ai_addr, addrs->ai_addrlen, deadline);
		freeaddrinfo(addrs);
		return ok;
	}
}

/*
 * Connect to host:port (host may be a Unix socket path) before deadline,
 * over TLS unless tls_mode is RC_TLS_DISABLE.  Returns NULL with the fault
 * set.  timeout_ms is only for messages.  May
 * throw on interrupts, after closing what it opened.
 */
/*
 * The TLS handshake over s's connected socket, waiting as OpenSSL asks,
 * within deadline.
 */
static bool
tls_handshake(RedisSocket *s, const char *host, int tls_mode,
			  TimestampTz deadline)
{
	s->tls = redis_tls_begin(s->sock, host, tls_mode, s->label);
	if (s->tls == NULL)
		return false;
	s->ops = &tls_ops;
	for (;;)
	{
		switch (redis_tls_handshake(s->tls, s->label))
		{
			case RC_TLS_OK:
				return true;
			case RC_TLS_WANT_READ:
				if (!wait_for_socket(s, WL_SOCKET_READABLE, deadline))
				{
					set_wait_fault(s, "in the TLS handshake with");
					return false;
				}
				break;
			case RC_TLS_WANT_WRITE:
				if (!wait_for_socket(s, WL_SOCKET_WRITEABLE, deadline))
				{
					set_wait_fault(s, "in the TLS handshake with");
					return false;
				}
				break;
			case RC_TLS_FAILED:
				return false;
		}
	}
}

RedisSocket *
redis_socket_open(const char *host, int port, int tls_mode, int timeout_ms,
				  TimestampTz requested_deadline)
{
	RedisSocket *s;
	volatile bool ok = false;
	volatile TimestampTz deadline;

	if (!AcquireExternalFD())
	{
		redis_fault_set(RC_FAULT_CONNECT, "could not connect to Redis: too many open files in this backend");
		return NULL;
	}
	s = MemoryContextAllocZero(TopMemoryContext, sizeof(RedisSocket));
	s->sock = PGINVALID_SOCKET;
	s->ops = &plain_ops;
	s->external_fd_acquired = true;
	s->timeout_ms = timeout_ms;
	/* set once before PG_TRY: not clobbered by its longjmp */
	deadline = operation_deadline(s, requested_deadline);
	if (host[0] == '/')
		strlcpy(s->label, host, sizeof(s->label));
	else
		snprintf(s->label, sizeof(s->label), "%s:%d", host, port);

	PG_TRY();
	{
		init_long_lived_buffer(&s->send_buffer);
		s->wait_set = CreateWaitEventSet(TopMemoryContext, 3);
		AddWaitEventToSet(s->wait_set, WL_LATCH_SET, PGINVALID_SOCKET,
						  MyLatch, NULL);
		AddWaitEventToSet(s->wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET,
						  NULL, NULL);
		ok = connect_address(s, host, port, deadline);
		if (ok && tls_mode != RC_TLS_DISABLE)
		{
			if (host[0] == '/')
			{
				redis_fault_set(RC_FAULT_CONNECT, "TLS is not used over the Unix socket %s: set redis_cache.sslmode to disable for Unix sockets",
								s->label);
				ok = false;
			}
			else
				ok = tls_handshake(s, host, tls_mode, deadline);
		}
		if (ok)
		{
			s->reader = redisReaderCreate();
			if (s->reader == NULL)
			{
				redis_fault_set(RC_FAULT_IO, "out of memory creating the Redis reply reader");
				ok = false;
			}
		}
	}
	PG_CATCH();
	{
		redis_socket_close(s);
		PG_RE_THROW();
	}
	PG_END_TRY();

	if (!ok)
	{
		redis_socket_close(s);
		return NULL;
	}
	return s;
}

/* ---- the reply pre-scanner ------------------------------------------------ */

/*
 * Bounds of the replies of one round trip, decided before any byte reaches
 * hiredis.  hiredis allocates as soon as it reads a header: a "*N" header
 * callocs N pointers at once, each element is a malloc'd redisReply (about
 * 64 bytes, then our palloc'd copy), and a status line is buffered until
 * its CRLF, re-searched on every feed.  So every header is checked here
 * first, on the raw bytes, and nothing is fed once a bound is crossed.
 *
 * - Bytes: max_value_bytes + RC_REPLY_SLACK_BYTES per value a command may
 *   return (one per key argument, at most 64 per command) for the whole
 *   round trip.  A cached value is never larger than max_value_bytes (the
 *   writers refuse larger ones); the slack covers INFO (about 5 kB), a
 *   query entry's metadata, and SCAN's cursor.
 * - One bulk string: max_value_bytes + RC_REPLY_SLACK_BYTES, and no more
 *   than the bytes left.
 * - Elements (every value hiredis allocates, nested ones included):
 *   RC_REPLY_BASE_ELEMENTS plus one more than the arguments of each
 *   command.  What we send returns at most one element per argument (MGET,
 *   the generations script) or a SCAN batch (COUNT 1000, which Redis may
 *   exceed a little); 65536 covers that with room, and costs at most about
 *   10 MB of reply structures.  An array header must also fit in the bytes
 *   left (each element takes at least 3 bytes on the wire).
 * - Nesting: RC_REPLY_MAX_DEPTH arrays.  Our deepest reply is SCAN's (2);
 *   hiredis itself refuses more than 7.
 * - Lines: headers ("$N", "*N", ":N") are decimal numbers of at most 20
 *   characters; status and error lines at most RC_REPLY_MAX_LINE bytes
 *   (Redis' longest are script errors of a few hundred bytes).
 * - Nothing may follow the last expected reply: a stray byte would become
 *   the reply to the next command.
 */
#define RC_REPLY_BASE_ELEMENTS	65536
#define RC_REPLY_MAX_DEPTH		4
#define RC_REPLY_MAX_HEADER		20
#define RC_REPLY_MAX_LINE		(64 * 1024)
#define RC_REPLY_MIN_ELEMENT_BYTES	3	/* "+\r\n" */

typedef enum ScanState
{
	SCAN_TYPE,					/* expecting the type byte of a value */
	SCAN_LINE,					/* in the line after the type byte */
	SCAN_LINE_CR,				/* after a CR in that line */
	SCAN_BULK,					/* in a bulk string's payload */
	SCAN_BULK_CR,				/* expecting the CR after the payload */
	SCAN_BULK_LF				/* expecting the LF after the payload */
} ScanState;

typedef struct ReplyScanner
{
	ScanState	state;
	char		type;			/* type byte of the value being read */
	char		header[RC_REPLY_MAX_HEADER + 1];
	size_t		line_len;		/* bytes of the current line so far */
	size_t		bulk_left;		/* payload bytes still to come */
	int			depth;			/* arrays open */
	size_t		pending[RC_REPLY_MAX_DEPTH];	/* elements still to come */
	int			replies_left;	/* top-level replies still expected */
	size_t		bytes_budget;	/* bytes allowed for the round trip */
	size_t		bytes_left;		/* of bytes_budget */
	size_t		elements_left;	/* of the round trip's element budget */
	size_t		bulk_max;		/* largest bulk string */
	const char *label;			/* "host:port", for messages */
	bool		stream;			/* bounds per message, no count of them */
	size_t		elements_budget;	/* of each message, when streaming */
} ReplyScanner;

/* Bounds for the replies to commands (see above). */
static void
scanner_init(ReplyScanner *sc, const RedisCommand *commands, int ncommands,
			 const char *label)
{
	int			i;

	memset(sc, 0, sizeof(*sc));
	sc->state = SCAN_TYPE;
	sc->replies_left = ncommands;
	sc->bulk_max = (size_t) redis_cache_max_value_bytes + RC_REPLY_SLACK_BYTES;
	sc->elements_left = RC_REPLY_BASE_ELEMENTS;
	for (i = 0; i < ncommands; i++)
	{
		sc->bytes_left += sc->bulk_max *
			(size_t) Min(Max(commands[i].argc - 1, 1), 64);
		sc->elements_left += (size_t) commands[i].argc + 1;
	}
	sc->bytes_budget = sc->bytes_left;
	sc->label = label;
}

/*
 * A header's decimal number: an optional '-' then 1 to 19 digits, within
 * int64.  hiredis 0.14 would read garbage as -1 (nil) and wrap overflows.
 */
static bool
scanner_number(const char *s, size_t len, int64 *result)
{
	bool		negative = false;
	uint64		v = 0;
	size_t		i = 0;

	if (len > 0 && s[0] == '-')
	{
		negative = true;
		i = 1;
	}
	if (i == len || len - i > 19)
		return false;
	for (; i < len; i++)
	{
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (uint64) (s[i] - '0');
	}
	if (v > (uint64) PG_INT64_MAX)
		return false;
	*result = negative ? -(int64) v : (int64) v;
	return true;
}

/* A value ended: close the arrays it completes, maybe the reply. */
static void
scanner_value_done(ReplyScanner *sc)
{
	sc->state = SCAN_TYPE;
	while (sc->depth > 0)
	{
		if (--sc->pending[sc->depth - 1] > 0)
			return;
		sc->depth--;
	}
	sc->replies_left--;
}

/*
 * The line of the current value is complete (in sc->header for numbers).
 * remaining is what is left of the byte budget after this line.
 */
static bool
scanner_line_done(ReplyScanner *sc, size_t remaining)
{
	int64		n = 0;

	if (sc->type == '+' || sc->type == '-')
	{
		scanner_value_done(sc);
		return true;
	}
	if (!scanner_number(sc->header, sc->line_len, &n))
	{
		redis_fault_set(RC_FAULT_PROTOCOL, "invalid reply from Redis at %s: malformed number after '%c'",
						sc->label, sc->type);
		return false;
	}
	if (sc->type == ':' || n == -1 || (sc->type == '*' && n == 0))
	{
		scanner_value_done(sc);
		return true;
	}
	if (n < 0)
	{
		redis_fault_set(RC_FAULT_PROTOCOL, "invalid reply from Redis at %s: negative length " INT64_FORMAT,
						sc->label, n);
		return false;
	}
	if (sc->type == '$')
	{
		if ((uint64) n > sc->bulk_max || (uint64) n + 2 > remaining)
		{
			redis_fault_set(RC_FAULT_PROTOCOL, "%s from Redis at %s announces a string of " INT64_FORMAT " bytes, which exceeds the %zu allowed%s",
							sc->stream ? "a message" : "reply", sc->label, n,
							Min(sc->bulk_max, remaining),
							sc->stream ? "" : " (redis_cache.max_value_bytes)");
			return false;
		}
		sc->bulk_left = (size_t) n;
		sc->state = (n == 0) ? SCAN_BULK_CR : SCAN_BULK;
		return true;
	}

	/* '*' with n > 0 elements */
	if (sc->depth == RC_REPLY_MAX_DEPTH)
	{
		redis_fault_set(RC_FAULT_PROTOCOL, "reply from Redis at %s nests arrays deeper than %d levels",
						sc->label, RC_REPLY_MAX_DEPTH);
		return false;
	}
	if ((uint64) n > sc->elements_left ||
		(uint64) n > remaining / RC_REPLY_MIN_ELEMENT_BYTES)
	{
		redis_fault_set(RC_FAULT_PROTOCOL, "reply from Redis at %s announces an array of " INT64_FORMAT " elements, which exceeds the %zu allowed",
						sc->label, n,
						Min(sc->elements_left, remaining / RC_REPLY_MIN_ELEMENT_BYTES));
		return false;
	}
	sc->elements_left -= (size_t) n;
	sc->pending[sc->depth++] = (size_t) n;
	sc->state = SCAN_TYPE;
	return true;
}

/*
 * Check the next len bytes of the replies against the bounds, keeping the
 * state for the next chunk.  Returns false with a protocol fault set at the
 * first violation: then none of these bytes may reach hiredis.
 */
static bool
scanner_check(ReplyScanner *sc, const char *buf, size_t len)
{
	const char *p = buf;
	const char *end = buf + len;

	/*
	 * Between two messages of a stream there is nothing to count yet: the
	 * next message's budget starts at its first byte (below).
	 */
	if (sc->stream && sc->state == SCAN_TYPE && sc->depth == 0)
		;
	else if (len > sc->bytes_left)
	{
		redis_fault_set(RC_FAULT_PROTOCOL, "%s from Redis at %s exceeds %zu bytes%s",
						sc->stream ? "a message" : "reply", sc->label,
						sc->bytes_budget,
						sc->stream ? "" : " (redis_cache.max_value_bytes)");
		return false;
	}
	else
		sc->bytes_left -= len;

	while (p < end)
	{
		switch (sc->state)
		{
			case SCAN_TYPE:
				if (sc->depth == 0 && sc->stream)
				{
					/*
					 * A new message: a fresh budget, charged with the rest
					 * of this chunk as a round trip's is with the whole
					 * chunk (the budget is larger than a chunk).
					 */
					sc->replies_left = 1;
					sc->bytes_left = sc->bytes_budget - (size_t) (end - p);
					sc->elements_left = sc->elements_budget;
				}
				if (sc->depth == 0)
				{
					if (sc->replies_left == 0)
					{
						redis_fault_set(RC_FAULT_PROTOCOL, "Redis at %s sent more replies than commands",
										sc->label);
						return false;
					}
					/* a top-level value; elements were reserved by their array */
					if (sc->elements_left == 0)
					{
						redis_fault_set(RC_FAULT_PROTOCOL, "reply from Redis at %s has too many elements",
										sc->label);
						return false;
					}
					sc->elements_left--;
				}
				sc->type = *p++;
				if (sc->type != '+' && sc->type != '-' && sc->type != ':' &&
					sc->type != '$' && sc->type != '*')
				{
					redis_fault_set(RC_FAULT_PROTOCOL, "invalid reply from Redis at %s: unknown type byte 0x%02x",
									sc->label, (unsigned char) sc->type);
					return false;
				}
				sc->line_len = 0;
				sc->state = SCAN_LINE;
				break;

			case SCAN_LINE:
				{
					const char *cr = memchr(p, '\r', end - p);
					size_t		n = (cr ? cr : end) - p;
					bool		text = (sc->type == '+' || sc->type == '-');

					if (sc->line_len + n > (text ? RC_REPLY_MAX_LINE : RC_REPLY_MAX_HEADER))
					{
						redis_fault_set(RC_FAULT_PROTOCOL, "reply from Redis at %s has a '%c' line longer than %d bytes",
										sc->label, sc->type,
										text ? RC_REPLY_MAX_LINE : RC_REPLY_MAX_HEADER);
						return false;
					}
					if (!text)
						memcpy(sc->header + sc->line_len, p, n);
					sc->line_len += n;
					p += n;
					if (cr)
					{
						p++;
						sc->state = SCAN_LINE_CR;
					}
				}
				break;

			case SCAN_LINE_CR:
				if (*p == '\n')
				{
					p++;
					if (!scanner_line_done(sc, sc->bytes_left + (size_t) (end - p)))
						return false;
				}
				else if (sc->type == '+' || sc->type == '-')
				{
					/* a lone CR is text, as in hiredis; p is looked at again */
					if (++sc->line_len > RC_REPLY_MAX_LINE)
					{
						redis_fault_set(RC_FAULT_PROTOCOL, "reply from Redis at %s has a '%c' line longer than %d bytes",
										sc->label, sc->type, RC_REPLY_MAX_LINE);
						return false;
					}
					sc->state = SCAN_LINE;
				}
				else
				{
					redis_fault_set(RC_FAULT_PROTOCOL, "invalid reply from Redis at %s: malformed '%c' line",
									sc->label, sc->type);
					return false;
				}
				break;

			case SCAN_BULK:
				{
					size_t		n = Min(sc->bulk_left, (size_t) (end - p));

					p += n;
					sc->bulk_left -= n;
					if (sc->bulk_left == 0)
						sc->state = SCAN_BULK_CR;
				}
				break;

			case SCAN_BULK_CR:
			case SCAN_BULK_LF:
				if (*p++ != (sc->state == SCAN_BULK_CR ? '\r' : '\n'))
				{
					redis_fault_set(RC_FAULT_PROTOCOL, "invalid reply from Redis at %s: string not followed by CRLF",
									sc->label);
					return false;
				}
				if (sc->state == SCAN_BULK_CR)
					sc->state = SCAN_BULK_LF;
				else
					scanner_value_done(sc);
				break;
		}
	}
	return true;
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
 * A palloc'd copy of a hiredis reply, which is freed whatever happens (the
 * copy may throw out of memory).  A function of its own so that the
 * caller's loop variables are not live across the longjmp.
 */
static RedisReply *
take_reply(void *raw)
{
	RedisReply *volatile copy = NULL;

	PG_TRY();
	{
		copy = copy_reply((redisReply *) raw);
	}
	PG_CATCH();
	{
		freeReplyObject(raw);
		PG_RE_THROW();
	}
	PG_END_TRY();
	freeReplyObject(raw);
	return copy;
}

/* Append every command, formatted, to out. */
static void
append_commands(StringInfo out, const RedisCommand *commands, int ncommands)
{
	int			i;

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
}

/* Format every command into the socket's send buffer. */
static void
format_commands(StringInfo out, const RedisCommand *commands, int ncommands)
{
	resetStringInfo(out);
	append_commands(out, commands, ncommands);
}

/*
 * One socket's part of a round trip, advanced by round_trip_advance()
 * without ever waiting, so that one loop can drive the parts of several
 * sockets (a Redis Cluster's masters) through one wait.
 */
typedef enum RoundTripState
{
	RT_SEND,					/* bytes of the send buffer left to send */
	RT_RECEIVE,					/* replies left to read */
	RT_DONE,
	RT_FAILED					/* the fault is set */
} RoundTripState;

typedef struct RoundTrip
{
	RedisSocket *s;
	int			ncommands;
	RedisReply **replies;
	int			nreplies;
	size_t		sent;
	size_t		received;
	bool		just_sent;		/* nothing read since the send finished */
	bool		nothing_received;
	RoundTripState state;
	uint32		wait_events;	/* unfinished: the socket events it waits for */
	const char *doing;			/* "sending to", "waiting for": messages */
	ReplyScanner scanner;
} RoundTrip;

/* Format the commands and set up rt to send them over s. */
static void
round_trip_begin(RoundTrip *rt, RedisSocket *s, const RedisCommand *commands,
				 int ncommands, RedisReply **replies)
{
	/* a streaming socket's reader may hold part of a message */
	Assert(s->stream == NULL);
	memset(rt, 0, sizeof(RoundTrip));
	rt->s = s;
	rt->ncommands = ncommands;
	rt->replies = replies;
	rt->nothing_received = true;
	rt->state = RT_SEND;
	/* the socket's buffer: no allocation per command once warmed up */
	format_commands(&s->send_buffer, commands, ncommands);
	scanner_init(&rt->scanner, commands, ncommands, s->label);
}

/* rt failed; the fault is set.  Returns true (finished). */
static bool
round_trip_failed(RoundTrip *rt)
{
	rt->state = RT_FAILED;
	return true;
}

/* rt must wait for events before going on.  Returns false (unfinished). */
static bool
round_trip_wait(RoundTrip *rt, uint32 events, const char *doing)
{
	rt->wait_events = events;
	rt->doing = doing;
	return false;
}

/*
 * Send what is left, then read one reply per command, as far as the socket
 * allows without waiting.  Returns true when rt is finished (RT_DONE, or
 * RT_FAILED with the fault set: I/O error, protocol error or a reply over
 * its bounds), false when it must wait for rt->wait_events.  The deadline
 * is checked between chunks, also while bytes keep coming.  May throw on
 * interrupts or out of memory; the caller closes the socket then.
 */
static bool
round_trip_advance(RoundTrip *rt, TimestampTz deadline)
{
	RedisSocket *s = rt->s;
	char		buf[RC_RECV_CHUNK];

	if (rt->state == RT_SEND)
	{
		StringInfo	out = &s->send_buffer;

		while (rt->sent < (size_t) out->len)
		{
			ssize_t		n = s->ops->send(s, out->data + rt->sent,
										 out->len - rt->sent);

			if (n > 0)
			{
				rt->sent += n;
				continue;
			}
			if (errno == EAGAIN)
				return round_trip_wait(rt, s->io_wait, "sending to");
			return round_trip_failed(rt);	/* the op set the fault */
		}
		redis_stats_add(RC_STAT_BYTES_OUT, out->len);
		/* a large pipeline must not pin its buffer for the session */
		if (out->maxlen > 64 * 1024)
		{
			pfree(out->data);
			init_long_lived_buffer(out);
		}
		rt->state = RT_RECEIVE;
		rt->just_sent = true;
	}

	while (rt->nreplies < rt->ncommands)
	{
		void	   *raw = NULL;
		ssize_t		n;

		if (redisReaderGetReply(s->reader, &raw) != REDIS_OK)
		{
			redis_fault_set(RC_FAULT_PROTOCOL, "invalid reply from Redis at %s: %s", s->label,
							s->reader->errstr[0] ? s->reader->errstr : "protocol error");
			return round_trip_failed(rt);
		}
		if (raw != NULL)
		{
			rt->replies[rt->nreplies++] = take_reply(raw);
			continue;
		}

		/*
		 * Right after sending, the reply is never there yet: wait first
		 * instead of paying for a recv() that returns EAGAIN.
		 */
		if (rt->just_sent)
		{
			rt->just_sent = false;
			if (!s->ops->pending(s))
				return round_trip_wait(rt, WL_SOCKET_READABLE, "waiting for");
		}
		n = s->ops->recv(s, buf, sizeof(buf));
		if (n > 0)
		{
			rt->nothing_received = false;
			rt->received += n;
			/* every header is checked before hiredis allocates for it */
			if (!scanner_check(&rt->scanner, buf, (size_t) n))
				return round_trip_failed(rt);
			if (redisReaderFeed(s->reader, buf, n) != REDIS_OK)
			{
				redis_fault_set(RC_FAULT_IO, "out of memory reading from Redis");
				return round_trip_failed(rt);
			}

			/*
			 * A server that keeps sending never makes us wait: cancel and
			 * the deadline are checked between chunks too.
			 */
			CHECK_FOR_INTERRUPTS();
			if (GetCurrentTimestamp() >= deadline)
			{
				redis_fault_set(RC_FAULT_TIMEOUT, "timed out reading from Redis at %s after %d ms",
								s->label, s->timeout_ms);
				return round_trip_failed(rt);
			}
			continue;
		}
		if (errno == EAGAIN)
			return round_trip_wait(rt, s->io_wait, "waiting for");
		return round_trip_failed(rt);	/* the op set the fault */
	}
	redis_stats_add(RC_STAT_BYTES_IN, rt->received);
	rt->state = RT_DONE;
	return true;
}

/*
 * Send all commands, then read one reply per command.  Returns false with
 * the fault set on timeout, I/O error or protocol error (a reply over its
 * bounds included); *nothing_received then says whether the server never
 * answered anything (the caller may retry once over a fresh connection;
 * not after a timeout: slow is not dead).  May throw on interrupts or out
 * of memory; the caller closes the socket then.
 */
static bool
round_trip_io(RedisSocket *s, const RedisCommand *commands, int ncommands,
			  RedisReply **replies, TimestampTz deadline, bool *nothing_received)
{
	RoundTrip	rt;

	round_trip_begin(&rt, s, commands, ncommands, replies);
	while (!round_trip_advance(&rt, deadline))
	{
		if (!wait_for_socket(s, rt.wait_events, deadline))
		{
			set_wait_fault(s, rt.doing);
			*nothing_received = false;
			return false;
		}
	}
	*nothing_received = rt.nothing_received;
	return rt.state == RT_DONE;
}

/*
 * AUTH [user] password into cmd, with argv and len (3 slots each) as its
 * storage; user may be NULL or "" (AUTH password).  The command carries
 * the secret: callers never put it into a message.
 */
void
redis_auth_command(RedisCommand *cmd, const char **argv, size_t *len,
				   const char *user, const char *password)
{
	int			argc = 0;

	argv[argc] = "AUTH";
	len[argc++] = 4;
	if (user != NULL && user[0] != '\0')
	{
		argv[argc] = user;
		len[argc++] = strlen(user);
	}
	argv[argc] = password;
	len[argc++] = strlen(password);
	cmd->argc = argc;
	cmd->argv = argv;
	cmd->argvlen = len;
	/* keyless, and never grown (see command_builder.c) */
	cmd->first_key = 0;
	cmd->nkeys = 0;
	cmd->node = 0;
	cmd->capacity = argc;
}

/*
 * One pipelined round trip, counted with its latency.  timeout_ms is the
 * bound behind deadline, for messages.
 */
bool
redis_socket_round_trip(RedisSocket *s, const RedisCommand *commands,
						int ncommands, RedisReply **replies,
						TimestampTz deadline, int timeout_ms,
						bool *nothing_received)
{
	TimestampTz start = GetCurrentTimestamp();
	bool		ok;

	s->timeout_ms = timeout_ms;
	deadline = operation_deadline(s, deadline);
	ok = round_trip_io(s, commands, ncommands, replies, deadline,
					   nothing_received);
	redis_stats_add(RC_STAT_ROUND_TRIPS, 1);
	redis_stats_latency(GetCurrentTimestamp() - start);
	return ok;
}

/*
 * A WaitEventSet over the sockets of the unfinished parts, the latch and
 * postmaster death, in CurrentMemoryContext; positions[k] is part k's.
 */
static WaitEventSet *
parts_wait_set(RedisSocketPart *parts, RoundTrip *rts, int nparts,
			   int *positions)
{
	WaitEventSet *set = CreateWaitEventSet(CurrentMemoryContext, nparts + 2);
	int			k;

	AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	for (k = 0; k < nparts; k++)
	{
		positions[k] = -1;
		if (rts[k].state == RT_DONE || rts[k].state == RT_FAILED)
			continue;
		positions[k] = AddWaitEventToSet(set, rts[k].wait_events,
										 parts[k].socket->sock, NULL,
										 (void *) (intptr_t) k);
	}
	return set;
}

/*
 * The loop of redis_sockets_round_trip(); *set is the caller's, so that
 * it is freed whatever happens.
 */
static void
parts_round_trip(RedisSocketPart *parts, RoundTrip *rts, int nparts,
				 TimestampTz deadline, WaitEventSet **set)
{
	int		   *positions = palloc(sizeof(int) * nparts);
	WaitEvent  *events = palloc(sizeof(WaitEvent) * (nparts + 2));
	bool		rebuild = true;
	int			k;

	for (;;)
	{
		int			unfinished = 0;
		TimestampTz now;
		long		timeout_ms;
		int			nevents;
		int			e;

		for (k = 0; k < nparts; k++)
		{
			RoundTrip  *rt = &rts[k];
			uint32		before = rt->wait_events;

			if (rt->state == RT_DONE || rt->state == RT_FAILED)
				continue;
			if (round_trip_advance(rt, deadline))
			{
				rebuild = true; /* its socket leaves the wait */
				continue;
			}
			unfinished++;
			if (!rebuild && positions[k] >= 0 && before != rt->wait_events)
				ModifyWaitEvent(*set, positions[k], rt->wait_events, NULL);
		}
		if (unfinished == 0)
			return;

		if (rebuild)
		{
			if (*set != NULL)
				FreeWaitEventSet(*set);
			*set = NULL;
			*set = parts_wait_set(parts, rts, nparts, positions);
			rebuild = false;
		}

		/* wait for any socket, the deadline or an interrupt */
		for (;;)
		{
			CHECK_FOR_INTERRUPTS();
			now = GetCurrentTimestamp();
			if (wait_must_end() || now >= deadline)
			{
				for (k = 0; k < nparts; k++)
				{
					if (rts[k].state == RT_DONE || rts[k].state == RT_FAILED)
						continue;
					set_wait_fault(parts[k].socket, rts[k].doing);
					rts[k].state = RT_FAILED;
					rts[k].nothing_received = false;
				}
				return;
			}
			timeout_ms = TimestampDifferenceMilliseconds(now, deadline);
			if (timeout_ms <= 0)
				timeout_ms = 1;
			nevents = WaitEventSetWait(*set, timeout_ms, events, nparts + 2,
									   PG_WAIT_EXTENSION);
			for (e = 0; e < nevents; e++)
				if (events[e].events & WL_LATCH_SET)
					ResetLatch(MyLatch);
			for (e = 0; e < nevents; e++)
				if (events[e].events & WL_SOCKET_MASK)
					break;
			if (e < nevents)
				break;
		}
	}
}

/* parts_round_trip(), freeing its wait set whatever happens. */
static void
parts_round_trip_freeing(RedisSocketPart *parts, RoundTrip *rts, int nparts,
						 TimestampTz deadline, WaitEventSet **set)
{
	PG_TRY();
	{
		parts_round_trip(parts, rts, nparts, deadline, set);
	}
	PG_CATCH();
	{
		if (*set != NULL)
			FreeWaitEventSet(*set);
		*set = NULL;
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (*set != NULL)
		FreeWaitEventSet(*set);
	*set = NULL;
}

/*
 * One round trip over several sockets at once (a Redis Cluster's masters,
 * cluster.c): parts[k] sends its commands over its own socket, one part
 * per socket.  Every part is sent before any reply is awaited and every
 * wait is one WaitEventSet over the sockets still busy, the latch and
 * postmaster death, so the wall time is that of the slowest server rather
 * than the sum, and the same deadline, interrupts and commit limit apply
 * as to one socket.  A part that fails does not stop the others:
 * parts[k].ok says which succeeded (a failed part's socket is out of sync:
 * the caller closes it), parts[k].nothing_received whether its server
 * answered nothing.  Returns true when all succeeded; the fault is that of
 * the last failure.  May throw on interrupts; the caller closes every
 * socket of the call then.
 */
bool
redis_sockets_round_trip(RedisSocketPart *parts, int nparts,
						 TimestampTz deadline, int timeout_ms)
{
	TimestampTz start = GetCurrentTimestamp();
	RoundTrip  *rts = palloc(sizeof(RoundTrip) * nparts);
	/* in memory, not a local: what the loop created is freed on an ERROR */
	WaitEventSet **set = palloc0(sizeof(WaitEventSet *));
	bool		ok = true;
	TimestampTz until = operation_deadline(NULL, deadline);
	int			k;

	if (wait_limit != 0 && until > wait_limit)
		until = wait_limit;
	for (k = 0; k < nparts; k++)
	{
		parts[k].socket->timeout_ms = wait_limit != 0 && !strict_deadlines ?
			wait_limit_ms : timeout_ms;
		round_trip_begin(&rts[k], parts[k].socket, parts[k].commands,
						 parts[k].ncommands, parts[k].replies);
	}
	parts_round_trip_freeing(parts, rts, nparts, until, set);
	for (k = 0; k < nparts; k++)
	{
		parts[k].ok = rts[k].state == RT_DONE;
		parts[k].nothing_received = rts[k].nothing_received;
		ok &= parts[k].ok;
	}
	redis_stats_add(RC_STAT_ROUND_TRIPS, 1);
	redis_stats_latency(GetCurrentTimestamp() - start);
	pfree(rts);
	pfree(set);
	return ok;
}

/* ---- streams -------------------------------------------------------------- */

/*
 * Bounds of one message of a stream (see "the reply pre-scanner"): an
 * invalidation message names every key of a prefix written during one
 * event loop iteration of Redis, so it may be much larger than a reply,
 * but hiredis and our copy hold it whole (about 150 bytes per element):
 * a message over these bounds is a protocol fault, which the tracking
 * worker handles like a lost subscription (the local cache is emptied).
 */
#define RC_STREAM_MAX_BYTES		(16 * 1024 * 1024)
#define RC_STREAM_MAX_ELEMENTS	(256 * 1024)

StaticAssertDecl(RC_STREAM_MAX_BYTES > RC_RECV_CHUNK,
				 "a stream message's budget must exceed a chunk");

/* The socket's descriptor, for a caller's WaitEventSet. */
int
redis_socket_fd(RedisSocket *s)
{
	return s->sock;
}

/* Make s a streaming socket (see the header comment). */
static void
stream_begin(RedisSocket *s)
{
	ReplyScanner *sc;

	if (s->stream != NULL)
		return;
	sc = MemoryContextAllocZero(TopMemoryContext, sizeof(ReplyScanner));
	sc->state = SCAN_TYPE;
	sc->stream = true;
	sc->bytes_budget = RC_STREAM_MAX_BYTES;
	sc->bulk_max = RC_STREAM_MAX_BYTES;
	sc->elements_budget = RC_STREAM_MAX_ELEMENTS;
	sc->label = s->label;
	s->stream = sc;
	resetStringInfo(&s->send_buffer);
	s->stream_sent = 0;
	s->stream_read_wait = 0;
}

/*
 * Send what is queued, as far as the socket takes it now.  Returns false
 * with the fault set on an I/O error.
 */
static bool
stream_flush(RedisSocket *s)
{
	StringInfo	out = &s->send_buffer;

	while (s->stream_sent < (size_t) out->len)
	{
		ssize_t		n = s->ops->send(s, out->data + s->stream_sent,
									 out->len - s->stream_sent);

		if (n > 0)
		{
			s->stream_sent += n;
			continue;
		}
		if (errno == EAGAIN)
			return true;		/* the rest goes when the socket is writable */
		return false;
	}
	redis_stats_add(RC_STAT_BYTES_OUT, out->len);
	resetStringInfo(out);
	s->stream_sent = 0;
	return true;
}

/*
 * Queue commands on the streaming socket s and send as much as the socket
 * takes without waiting; the rest is sent by later calls of this function
 * or redis_socket_read_async() (wait for redis_socket_wait_events()).
 * Their replies come through redis_socket_read_async().  Returns false
 * with the fault set on an I/O error: the caller closes the socket.
 */
bool
redis_socket_send_async(RedisSocket *s, const RedisCommand *commands,
						int ncommands)
{
	stream_begin(s);
	append_commands(&s->send_buffer, commands, ncommands);
	return stream_flush(s);
}

/*
 * The socket events a caller waiting for the streaming socket s must wait
 * for: readable always, writable while queued bytes wait to be sent or
 * when TLS needs it to read.
 */
uint32
redis_socket_wait_events(RedisSocket *s)
{
	uint32		events = WL_SOCKET_READABLE;

	if (s->stream != NULL &&
		(s->stream_sent < (size_t) s->send_buffer.len ||
		 s->stream_read_wait == WL_SOCKET_WRITEABLE))
		events |= WL_SOCKET_WRITEABLE;
	return events;
}

/*
 * Read, without waiting, the complete replies and messages the streaming
 * socket s has received, at most max of them, into replies (palloc'd in
 * CurrentMemoryContext), after sending what is queued.  Returns how many,
 * or -1 with the fault set (I/O error, end of file, protocol fault or a
 * message over its bounds): the caller closes the socket then.  *more says
 * that max was reached, so more may be there already: the caller calls
 * again before waiting (bytes OpenSSL has decrypted do not make the socket
 * readable).  Otherwise everything available was read, TLS buffers
 * included.  May throw out of memory; the caller closes the socket then.
 */
int
redis_socket_read_async(RedisSocket *s, RedisReply **replies, int max,
						bool *more)
{
	char		buf[RC_RECV_CHUNK];
	int			n = 0;

	stream_begin(s);
	*more = false;
	if (!stream_flush(s))
		return -1;
	s->stream_read_wait = 0;
	for (;;)
	{
		ssize_t		got;

		/* first what the reader holds already */
		while (n < max)
		{
			void	   *raw = NULL;

			if (redisReaderGetReply(s->reader, &raw) != REDIS_OK)
			{
				redis_fault_set(RC_FAULT_PROTOCOL, "invalid message from Redis at %s: %s", s->label,
								s->reader->errstr[0] ? s->reader->errstr : "protocol error");
				return -1;
			}
			if (raw == NULL)
				break;
			replies[n++] = take_reply(raw);
		}
		if (n == max)
		{
			*more = true;
			return n;
		}

		got = s->ops->recv(s, buf, sizeof(buf));
		if (got > 0)
		{
			redis_stats_add(RC_STAT_BYTES_IN, got);
			/* every header is checked before hiredis allocates for it */
			if (!scanner_check(s->stream, buf, (size_t) got))
				return -1;
			if (redisReaderFeed(s->reader, buf, got) != REDIS_OK)
			{
				redis_fault_set(RC_FAULT_IO, "out of memory reading from Redis");
				return -1;
			}
			continue;
		}
		if (errno == EAGAIN)
		{
			s->stream_read_wait = s->io_wait;
			return n;
		}
		return -1;				/* the op set the fault */
	}
}
