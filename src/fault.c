/*-------------------------------------------------------------------------
 *
 * fault.c
 *		  The last Redis fault of this backend: its kind and its message.
 *
 * Design rules:
 *
 * - A fault is described once, where it happens (tls.c, transport.c,
 *   sentinel.c, connection.c), as a RedisFaultKind and a message, and
 *   reported once, by the client (connection.c), which counts it by kind:
 *   nothing ever classifies a fault by its text.
 *
 * - The message is kept without palloc, in a static buffer: commit
 *   callbacks read it after their memory is gone.
 *
 * - Text from Redis reaches a message only through redis_printable().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "redis_cache.h"

/* The last fault, kept without palloc. */
static RedisFaultKind fault_kind = RC_FAULT_NONE;
static char fault_message[512];

void
redis_fault_set(RedisFaultKind kind, const char *fmt,...)
{
	va_list		args;

	fault_kind = kind;
	va_start(args, fmt);
	vsnprintf(fault_message, sizeof(fault_message), fmt, args);
	va_end(args);
}

/*
 * Keep the message, change the kind: a connection that broke before it was
 * ready (the server refused the TLS client certificate at its first read,
 * or closed during the handshake) is a connect fault, not an I/O fault.
 */
void
redis_fault_reclassify(RedisFaultKind kind)
{
	fault_kind = kind;
}

RedisFaultKind
redis_fault_kind(void)
{
	return fault_kind;
}

const char *
redis_fault_message(void)
{
	return fault_message;
}

/*
 * A copy of text from Redis fit for a message: printable ASCII only (the
 * rest, invalid UTF-8 and NUL included, becomes '?'), at most 300 bytes.
 * Redis' own messages are ASCII; a hostile server's must not reach the log
 * or the client as invalid text.
 */
char *
redis_printable(const char *str, size_t len)
{
	size_t		n = Min(len, 300);
	char	   *out = palloc(n + 4);
	size_t		i;

	for (i = 0; i < n; i++)
		out[i] = (str[i] >= 0x20 && str[i] < 0x7f) ? str[i] : '?';
	if (n < len)
	{
		memcpy(out + n, "...", 3);
		n += 3;
	}
	out[n] = '\0';
	return out;
}
