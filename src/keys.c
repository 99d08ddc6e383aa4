/*-------------------------------------------------------------------------
 *
 * keys.c
 *		  Validation of keys, TTLs and patterns, and key_prefix handling.
 *
 * Keys are what the application's own Redis client uses too, so they are
 * stored exactly as given, behind redis_cache.key_prefix.  We refuse what
 * would make them ambiguous or unreadable in logs and redis-cli: empty keys,
 * control characters and keys longer than RC_MAX_KEY_BYTES.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"

#include "redis_cache.h"

/*
 * ERROR unless key is a usable cache key.  "what" names the argument in the
 * message ("key", "pattern", "lock name").
 */
void
redis_validate_key(const char *key, size_t len, const char *what)
{
	size_t		i;

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("redis_cache: %s must not be empty", what),
				 errhint("Use a non-empty %s such as \"tenant:id:42\".", what)));
	if (len > RC_MAX_KEY_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("redis_cache: %s is too long", what),
				 errdetail("The %s is %zu bytes; at most %d are allowed.",
						   what, len, RC_MAX_KEY_BYTES),
				 errhint("Hash long identifiers, for example with md5(), before using them in a %s.",
						 what)));
	for (i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) key[i];

		if (c < 0x20 || c == 0x7F)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("redis_cache: %s contains a control character", what),
					 errdetail("Byte 0x%02X at position %zu is not allowed.", c, i + 1),
					 errhint("Remove control characters (bytes 0x00-0x1F and 0x7F) from the %s.",
							 what)));
	}
}

/*
 * key_prefix || key as a palloc'd, NUL-terminated string.  Validates key.
 */
char *
redis_make_key_cstring(const char *key, size_t keylen, size_t *len)
{
	const char *prefix = redis_cache_key_prefix ? redis_cache_key_prefix : "";
	size_t		prefixlen = strlen(prefix);
	char	   *result;

	redis_validate_key(key, keylen, "key");
	result = palloc(prefixlen + keylen + 1);
	memcpy(result, prefix, prefixlen);
	memcpy(result + prefixlen, key, keylen);
	result[prefixlen + keylen] = '\0';
	*len = prefixlen + keylen;
	return result;
}

char *
redis_make_key(text *key, size_t *len)
{
	return redis_make_key_cstring(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), len);
}

/*
 * Append str to buf with glob metacharacters backslash-escaped, so that it
 * matches only itself in a SCAN MATCH pattern.
 */
void
redis_append_glob_escaped(StringInfo buf, const char *str, size_t len)
{
	size_t		i;

	for (i = 0; i < len; i++)
	{
		if (str[i] != '\0' && strchr("*?[]\\^", str[i]) != NULL)
			appendStringInfoChar(buf, '\\');
		appendStringInfoChar(buf, str[i]);
	}
}

/*
 * ERROR unless ttl_seconds is a usable expiry.
 */
void
redis_check_ttl(int ttl_seconds)
{
	if (ttl_seconds <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("redis_cache: ttl_seconds must be positive, got %d", ttl_seconds),
				 errhint("Pass NULL to use redis_cache.default_ttl, or call cache_delete() to remove a key.")));
}
