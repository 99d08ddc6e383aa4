/*-------------------------------------------------------------------------
 *
 * tls.c
 *		  TLS with OpenSSL over a socket that is not ours to wait on: the
 *		  settings, the context, certificate checks, and non-blocking
 *		  handshake, read and write steps.
 *
 * Design rules:
 *
 * - This file never waits.  Every step returns at once with what OpenSSL
 *   needs next (RC_TLS_WANT_READ / RC_TLS_WANT_WRITE), and transport.c
 *   waits for that through its WaitEventSet, bounded by its deadline and
 *   interruptible, as libpq's fe-secure-openssl.c leaves the waiting to
 *   fe-misc.c.  Handshake, reads and writes may each want either
 *   direction (TLS 1.3 key updates, session tickets).
 *
 * - The OpenSSL error queue is per thread and shared with the backend's
 *   own client connection when that uses SSL: it is cleared before every
 *   call here and emptied after every failure, so neither side ever reads
 *   the other's errors.
 *
 * - Settings are named and behave as libpq's: sslmode (disable, require,
 *   verify-ca, verify-full), sslrootcert (a file, or "system"; empty also
 *   means the system store), sslcert and sslkey for mutual TLS, with a key
 *   file refused when group or others may read it.  require encrypts
 *   without checking the certificate.  verify-full checks the name the
 *   caller connects to (a DNS name or an IP address) against the
 *   certificate's subjectAltName; SNI is sent for names.  All superuser
 *   settings: whoever chooses the CA chooses the server.
 *
 * - The SSL_CTX is built on first use and rebuilt when a setting changes;
 *   an SSL object lives exactly as long as its socket.  Both are OpenSSL
 *   allocations: freed on every path, errors included, by their owner
 *   (redis_tls_end, or the context rebuild).
 *
 * - Messages never carry secrets: there are none in this file (the key
 *   file's contents stay inside OpenSSL), and file names are the
 *   superuser's settings.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "utils/guc.h"

#include "redis_cache.h"

struct RedisTls
{
	SSL		   *ssl;
};

/* settings of this file */
static int	tls_mode = RC_TLS_DISABLE;
static char *tls_root_cert = NULL;
static char *tls_cert = NULL;
static char *tls_key = NULL;

/* bumped by a change of any setting above: the context is rebuilt */
static uint64 tls_config_generation = 1;

static SSL_CTX *context = NULL;
static uint64 context_generation = 0;
static int	context_mode = RC_TLS_DISABLE;

static const struct config_enum_entry tls_mode_options[] = {
	{"disable", RC_TLS_DISABLE, false},
	{"require", RC_TLS_REQUIRE, false},
	{"verify-ca", RC_TLS_VERIFY_CA, false},
	{"verify-full", RC_TLS_VERIFY_FULL, false},
	{NULL, 0, false}
};

int
redis_tls_configured_mode(void)
{
	return tls_mode;
}

uint64
redis_tls_config_generation(void)
{
	return tls_config_generation;
}

const char *
redis_tls_mode_name(int mode)
{
	const struct config_enum_entry *e;

	for (e = tls_mode_options; e->name; e++)
		if (e->val == mode)
			return e->name;
	return "?";
}

/*
 * The first error of OpenSSL's queue as text, and the queue emptied.
 * buf receives at most len bytes.
 */
static const char *
take_openssl_error(char *buf, size_t len)
{
	unsigned long code = ERR_get_error();

	if (code == 0)
		strlcpy(buf, "no further detail from OpenSSL", len);
	else
		ERR_error_string_n(code, buf, len);
	ERR_clear_error();
	return buf;
}

/*
 * A private key file others may read is refused, as libpq refuses it:
 * u=rw (0600) or less when owned by us, u=rw,g=r (0640) or less when
 * owned by root.
 */
static bool
check_key_file(const char *path)
{
	struct stat st;

	if (stat(path, &st) != 0)
	{
		redis_fault_set(RC_FAULT_CONNECT, "could not read redis_cache.sslkey \"%s\": %s",
						path, strerror(errno));
		return false;
	}
	if (!S_ISREG(st.st_mode))
	{
		redis_fault_set(RC_FAULT_CONNECT, "redis_cache.sslkey \"%s\" is not a regular file",
						path);
		return false;
	}
	if ((st.st_uid == geteuid() && (st.st_mode & (S_IRWXG | S_IRWXO))) ||
		(st.st_uid == 0 && (st.st_mode & (S_IWGRP | S_IXGRP | S_IRWXO))))
	{
		redis_fault_set(RC_FAULT_CONNECT, "redis_cache.sslkey \"%s\" has group or world access: its permissions must be u=rw (0600) or less if owned by the database user, or u=rw,g=r (0640) or less if owned by root",
						path);
		return false;
	}
	return true;
}

/*
 * Build the context for mode from the settings.  Returns NULL with the
 * fault set; never throws.
 */
static SSL_CTX *
build_context(int mode)
{
	SSL_CTX    *ctx;
	char		err[256];

	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL)
	{
		redis_fault_set(RC_FAULT_CONNECT, "could not create a TLS context: %s",
						take_openssl_error(err, sizeof(err)));
		return NULL;
	}
	(void) SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* our writes may be retried with a moved buffer after WANT_WRITE */
	SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
					 SSL_MODE_ENABLE_PARTIAL_WRITE);
	/*
	 * Prefer AES-128-GCM: as safe for a cache link and cheaper for both
	 * ends (the server may still choose otherwise).
	 */
	(void) SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
	/* one read() per reply instead of one per record header and body */
	SSL_CTX_set_read_ahead(ctx, 1);

	if (mode >= RC_TLS_VERIFY_CA)
	{
		const char *root = tls_root_cert ? tls_root_cert : "";
		int			ok;

		if (root[0] == '\0' || strcmp(root, "system") == 0)
			ok = SSL_CTX_set_default_verify_paths(ctx);
		else
			ok = SSL_CTX_load_verify_locations(ctx, root, NULL);
		if (ok != 1)
		{
			redis_fault_set(RC_FAULT_CONNECT, "could not load the root certificates of redis_cache.sslrootcert \"%s\": %s",
							root[0] ? root : "system",
							take_openssl_error(err, sizeof(err)));
			SSL_CTX_free(ctx);
			return NULL;
		}
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	}
	else
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);

	if (tls_cert && tls_cert[0])
	{
		if (SSL_CTX_use_certificate_chain_file(ctx, tls_cert) != 1)
		{
			redis_fault_set(RC_FAULT_CONNECT, "could not load the client certificate redis_cache.sslcert \"%s\": %s",
							tls_cert, take_openssl_error(err, sizeof(err)));
			SSL_CTX_free(ctx);
			return NULL;
		}
		if (tls_key == NULL || tls_key[0] == '\0')
		{
			redis_fault_set(RC_FAULT_CONNECT, "redis_cache.sslcert is set but redis_cache.sslkey is not");
			SSL_CTX_free(ctx);
			return NULL;
		}
		if (!check_key_file(tls_key))
		{
			SSL_CTX_free(ctx);
			return NULL;
		}
		if (SSL_CTX_use_PrivateKey_file(ctx, tls_key, SSL_FILETYPE_PEM) != 1 ||
			SSL_CTX_check_private_key(ctx) != 1)
		{
			redis_fault_set(RC_FAULT_CONNECT, "could not load the client key redis_cache.sslkey \"%s\": %s",
							tls_key, take_openssl_error(err, sizeof(err)));
			SSL_CTX_free(ctx);
			return NULL;
		}
	}
	return ctx;
}

/* The context for mode, built or rebuilt as needed. */
static SSL_CTX *
current_context(int mode)
{
	if (context != NULL &&
		(context_generation != tls_config_generation || context_mode != mode))
	{
		SSL_CTX_free(context);
		context = NULL;
	}
	if (context == NULL)
	{
		context = build_context(mode);
		if (context == NULL)
			return NULL;
		context_generation = tls_config_generation;
		context_mode = mode;
	}
	return context;
}

static bool
is_ip_literal(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, host, buf) == 1 ||
		inet_pton(AF_INET6, host, buf) == 1;
}

/*
 * A TLS session over the connected socket sock, to host (the name or IP
 * the caller connected to: SNI and the verify-full check use it).  The
 * handshake is not started.  Returns NULL with the fault set.
 */
RedisTls *
redis_tls_begin(int sock, const char *host, int mode, const char *label)
{
	SSL_CTX    *ctx = current_context(mode);
	SSL		   *ssl;
	RedisTls   *tls;
	char		err[256];
	bool		ok = true;

	if (ctx == NULL)
		return NULL;
	ERR_clear_error();
	ssl = SSL_new(ctx);
	if (ssl == NULL)
	{
		redis_fault_set(RC_FAULT_CONNECT, "could not start TLS with Redis at %s: %s",
						label, take_openssl_error(err, sizeof(err)));
		return NULL;
	}
	if (SSL_set_fd(ssl, sock) != 1)
		ok = false;
	if (ok && !is_ip_literal(host) && host[0] != '/')
		ok = SSL_set_tlsext_host_name(ssl, host) == 1;
	if (ok && mode == RC_TLS_VERIFY_FULL)
	{
		X509_VERIFY_PARAM *param = SSL_get0_param(ssl);

		X509_VERIFY_PARAM_set_hostflags(param,
										X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		if (is_ip_literal(host))
			ok = X509_VERIFY_PARAM_set1_ip_asc(param, host) == 1;
		else
			ok = X509_VERIFY_PARAM_set1_host(param, host, 0) == 1;
	}
	if (!ok)
	{
		redis_fault_set(RC_FAULT_CONNECT, "could not start TLS with Redis at %s: %s",
						label, take_openssl_error(err, sizeof(err)));
		SSL_free(ssl);
		return NULL;
	}
	tls = malloc(sizeof(RedisTls));
	if (tls == NULL)
	{
		redis_fault_set(RC_FAULT_CONNECT, "out of memory starting TLS");
		SSL_free(ssl);
		return NULL;
	}
	tls->ssl = ssl;
	return tls;
}

/*
 * What an SSL call's result asks for next.  On RC_TLS_FAILED the fault is
 * set (doing: "handshake with", "reading from", "sending to").
 */
static RedisTlsStatus
classify(RedisTls *tls, int rc, const char *doing, const char *label)
{
	int			save_errno = errno;
	int			code = SSL_get_error(tls->ssl, rc);
	char		err[256];

	switch (code)
	{
		case SSL_ERROR_WANT_READ:
			return RC_TLS_WANT_READ;
		case SSL_ERROR_WANT_WRITE:
			return RC_TLS_WANT_WRITE;
		case SSL_ERROR_ZERO_RETURN:
			ERR_clear_error();
			redis_fault_set(RC_FAULT_IO, "Redis at %s closed the TLS connection", label);
			return RC_TLS_FAILED;
		case SSL_ERROR_SYSCALL:
			if (ERR_peek_error() == 0)
			{
				redis_fault_set(RC_FAULT_IO, "TLS %s Redis at %s failed: %s", doing, label,
								(rc == 0 || save_errno == 0) ? "server closed the connection" : strerror(save_errno));
				return RC_TLS_FAILED;
			}
			/* FALLTHROUGH */
		default:
			{
				/*
				 * A certificate check failed only if one was made, in the
				 * handshake: under require OpenSSL still records a result.
				 */
				long		verify = (SSL_get_verify_mode(tls->ssl) != SSL_VERIFY_NONE &&
									  !SSL_is_init_finished(tls->ssl)) ?
					SSL_get_verify_result(tls->ssl) : X509_V_OK;

				if (verify != X509_V_OK)
				{
					ERR_clear_error();
					redis_fault_set(RC_FAULT_CONNECT, "TLS %s Redis at %s failed: server certificate verification failed: %s",
									doing, label,
									X509_verify_cert_error_string(verify));
				}
				else
					redis_fault_set(code == SSL_ERROR_SSL && strcmp(doing, "handshake with") == 0 ? RC_FAULT_CONNECT : RC_FAULT_IO,
									"TLS %s Redis at %s failed: %s", doing, label,
									take_openssl_error(err, sizeof(err)));
				return RC_TLS_FAILED;
			}
	}
}

/* One step of the handshake. */
RedisTlsStatus
redis_tls_handshake(RedisTls *tls, const char *label)
{
	int			rc;

	ERR_clear_error();
	errno = 0;
	rc = SSL_connect(tls->ssl);
	if (rc == 1)
		return RC_TLS_OK;
	return classify(tls, rc, "handshake with", label);
}

/*
 * Read up to len bytes: > 0 bytes read, else -1 with *status saying what
 * to wait for (or RC_TLS_FAILED with the fault set).
 */
ssize_t
redis_tls_read(RedisTls *tls, char *buf, size_t len, RedisTlsStatus *status,
			   const char *label)
{
	size_t		got = 0;
	int			rc;

	ERR_clear_error();
	errno = 0;
	rc = SSL_read_ex(tls->ssl, buf, len, &got);
	if (rc == 1)
	{
		*status = RC_TLS_OK;
		return (ssize_t) got;
	}
	*status = classify(tls, rc, "reading from", label);
	return -1;
}

/* Write up to len bytes, as redis_tls_read(). */
ssize_t
redis_tls_write(RedisTls *tls, const char *buf, size_t len,
				RedisTlsStatus *status, const char *label)
{
	size_t		written = 0;
	int			rc;

	ERR_clear_error();
	errno = 0;
	rc = SSL_write_ex(tls->ssl, buf, len, &written);
	if (rc == 1)
	{
		*status = RC_TLS_OK;
		return (ssize_t) written;
	}
	*status = classify(tls, rc, "sending to", label);
	return -1;
}

/*
 * Whether OpenSSL holds bytes not yet read, decrypted or not: then the
 * next read must come before any wait (read-ahead may have taken a whole
 * record off the socket, which is then no longer readable).
 */
bool
redis_tls_pending(RedisTls *tls)
{
	return SSL_has_pending(tls->ssl) == 1;
}

const char *
redis_tls_version(RedisTls *tls)
{
	return SSL_get_version(tls->ssl);
}

const char *
redis_tls_cipher(RedisTls *tls)
{
	return SSL_get_cipher_name(tls->ssl);
}

/*
 * End the session: one close_notify if the socket takes it now (never a
 * wait), then free.  Safe on NULL and in PG_CATCH.
 */
void
redis_tls_end(RedisTls *tls)
{
	if (tls == NULL)
		return;
	ERR_clear_error();
	if (SSL_is_init_finished(tls->ssl))
		(void) SSL_shutdown(tls->ssl);
	SSL_free(tls->ssl);
	ERR_clear_error();
	free(tls);
}

/* ---- settings ------------------------------------------------------------- */

static void
assign_tls_string(const char *newval, void *extra)
{
	tls_config_generation++;
}

static void
assign_tls_mode(int newval, void *extra)
{
	tls_config_generation++;
}

void
redis_tls_define_gucs(void)
{
	DefineCustomEnumVariable("redis_cache.sslmode",
							 gettext_noop("Sets whether Redis is reached over TLS, and how the server's certificate is checked."),
							 gettext_noop("disable, require (encrypt, no check), verify-ca (the chain must verify against redis_cache.sslrootcert) or verify-full (also the host name or IP address), as in libpq."),
							 &tls_mode,
							 RC_TLS_DISABLE,
							 tls_mode_options,
							 PGC_SUSET,
							 0,
							 NULL, assign_tls_mode, NULL);

	DefineCustomStringVariable("redis_cache.sslrootcert",
							   gettext_noop("Sets the file of certificate authorities that verify Redis' certificate, or \"system\"."),
							   gettext_noop("Empty or \"system\" uses the operating system's store. Used by sslmode verify-ca and verify-full."),
							   &tls_root_cert,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, assign_tls_string, NULL);

	DefineCustomStringVariable("redis_cache.sslcert",
							   gettext_noop("Sets the client certificate file for mutual TLS with Redis."),
							   NULL,
							   &tls_cert,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, assign_tls_string, NULL);

	DefineCustomStringVariable("redis_cache.sslkey",
							   gettext_noop("Sets the private key file of redis_cache.sslcert."),
							   gettext_noop("Refused when group or others may read it, as libpq does."),
							   &tls_key,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   NULL, assign_tls_string, NULL);
}
