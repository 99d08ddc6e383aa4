/*-------------------------------------------------------------------------
 *
 * keys.c
 *		  Key names: validation of keys, TTLs and patterns, key_prefix
 *		  handling, the cache version's bookkeeping keys and the keys of
 *		  cached query results.  Every key name the extension makes for
 *		  itself is built here.
 *
 * Keys are what the application's own Redis client uses too, so they are
 * stored exactly as given, behind redis_cache.key_prefix.  We refuse what
 * would make them ambiguous or unreadable in logs and redis-cli: empty keys,
 * control characters and keys longer than RC_MAX_KEY_BYTES.
 *
 * Cached query results, their generations, dependency sets and stampede
 * locks live in the namespace of one WAL history:
 * prefix||"query:{<system identifier>.<timeline>}:" (redis_query_base(),
 * the only place that builds it).  Table and database OIDs are only
 * meaningful inside one cluster, and generations are only bumped by the
 * writes of one history:
 *
 * - the system identifier (chosen at initdb) separates clusters that share
 *   a Redis and a key_prefix (same migrations give the same OIDs);
 * - the timeline separates a promoted standby from its old primary: results
 *   stored while the old primary ran were ended by the old primary's writes
 *   only, so the promoted server starts with an empty namespace.  A standby
 *   reads the namespace of the timeline it replays, i.e. its primary's.
 *
 * The braces make the namespace a Redis Cluster hashtag (1.7): every key of
 * one namespace hashes to one slot, so each Lua script (scripts.c) can
 * declare every key it touches and still run on one node, and the keys a
 * script finds while it runs (members of a dependency set, a set moved
 * aside) are in that slot by construction.  The trade-off: one shard holds
 * all the cached results of one PostgreSQL cluster (memory and load are
 * spread per PostgreSQL cluster, not per result); the key-value keys are
 * the application's and spread as it names them.  A key_prefix containing
 * "{}" or a "{...}" of its own takes the hashtag's place: still one slot per
 * namespace, as all of a namespace's keys share the prefix.  Versions 1.4
 * to 1.6 used prefix||"query:<system identifier>.<timeline>:" (no braces):
 * such keys are never read again, but our own are still ours to delete
 * (redis_is_own_query_key()) and another cluster's stay foreign.
 *
 * Physical copies keep the system identifier: a copy started as a primary
 * without a timeline switch, or promoted copies whose timelines happen to
 * get the same number without a shared WAL archive, share a namespace and
 * need key_prefix values of their own (README).  The key-value keys and the
 * cache version's bookkeeping keys are per key_prefix, shared on purpose.
 *
 * The bookkeeping keys of the cache version (version.c) and the owned
 * families (families.c) are prefix||"{cache}:<name>" (1.7; before,
 * prefix||"cache:<name>"): one hashtag, so the version check script can
 * declare them all and run on one node.  The prefix stays in front so that
 * ACL key patterns such as ~prefix* still cover them.  The first version
 * check of a standalone server renames the legacy names (scripts.c).
 *
 * Some keys belong to the extension (redis_is_reserved_key): the cache
 * version's bookkeeping (both names) and the query-result namespace.  No
 * SQL function writes or deletes them on a caller's behalf, whoever the
 * caller: one cache_set() of '{cache}:version' would otherwise disable the
 * cache of every server, one forged result would be served to other roles.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "access/xlogrecovery.h"
#include "catalog/namespace.h"
#include "common/cryptohash.h"
#include "common/sha1.h"
#include "common/sha2.h"
#include "miscadmin.h"
#include "parser/parse_expr.h"
#include "parser/parser.h"
#include "pgtime.h"
#include "port/pg_bswap.h"
#include "tsearch/ts_cache.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/bytea.h"
#include "utils/float.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/pg_locale.h"
#include "utils/resowner.h"
#include "utils/xml.h"

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

/* ---- the cache version's bookkeeping keys (version.c) ---------------------- */

/*
 * In RedisControlKey order.  Every key the extension keeps for itself
 * outside the query namespace must be listed here: these names are what the
 * SQL functions refuse to write and bulk deletes leave alone.  The current
 * names share the hashtag {cache}; the legacy names (1.1 to 1.6) stay
 * protected as long as a server may still use them or a migration may
 * still find them.
 */
static const char *const control_suffixes[RC_NUM_CONTROL_KEYS] = {
	"{cache}:version", "{cache}:versions", "{cache}:run_id", "{cache}:flush",
	"{cache}:flushed", "{cache}:families"
};

static const char *const legacy_control_suffixes[RC_NUM_CONTROL_KEYS] = {
	"cache:version", "cache:versions", "cache:run_id", "cache:flush",
	"cache:flushed", "cache:families"
};

/*
 * The full name (prefix included) of bookkeeping key number which of the
 * namespace prefix: prefix||"{cache}:<name>".
 */
char *
redis_control_key(const char *prefix, int which)
{
	Assert(which >= 0 && which < RC_NUM_CONTROL_KEYS);
	return psprintf("%s%s", prefix, control_suffixes[which]);
}

/*
 * The name versions 1.1 to 1.6 gave the same key: prefix||"cache:<name>",
 * which the first version check of a standalone server renames.
 */
char *
redis_legacy_control_key(const char *prefix, int which)
{
	Assert(which >= 0 && which < RC_NUM_CONTROL_KEYS);
	return psprintf("%s%s", prefix, legacy_control_suffixes[which]);
}

/* Whether the len bytes at key are exactly one of the names. */
static bool
is_one_of(const char *key, size_t len, const char *const *names)
{
	int			i;

	for (i = 0; i < RC_NUM_CONTROL_KEYS; i++)
	{
		size_t		slen = strlen(names[i]);

		if (len == slen && memcmp(key, names[i], slen) == 0)
			return true;
	}
	return false;
}

/*
 * True for the bookkeeping keys of the namespace "prefix" (current or
 * legacy names), which flushes and cache_delete_pattern() leave alone.
 */
bool
redis_is_control_key(const char *key, size_t len, const char *prefix,
					 size_t prefixlen)
{
	if (len < prefixlen || memcmp(key, prefix, prefixlen) != 0)
		return false;
	return is_one_of(key + prefixlen, len - prefixlen, control_suffixes) ||
		is_one_of(key + prefixlen, len - prefixlen, legacy_control_suffixes);
}

/* ---- globs and owned families ------------------------------------------- */

/*
 * Whether str matches the Redis glob pattern (the semantics of Redis'
 * stringmatchlen(): '*', '?', '[...]' with '^' and ranges, '\\' escapes),
 * case-sensitive.  Iterative with backtracking to the last '*', so no input
 * can make it recurse or run in exponential time.
 */
bool
redis_glob_match(const char *pattern, size_t plen, const char *str, size_t slen)
{
	size_t		p = 0;
	size_t		s = 0;
	size_t		star_p = (size_t) -1;
	size_t		star_s = 0;

	while (s < slen)
	{
		if (p < plen && pattern[p] == '*')
		{
			while (p < plen && pattern[p] == '*')
				p++;
			if (p == plen)
				return true;
			star_p = p;
			star_s = s;
			continue;
		}
		if (p < plen)
		{
			bool		matched = false;
			size_t		next = p + 1;

			if (pattern[p] == '?')
				matched = true;
			else if (pattern[p] == '[')
			{
				size_t		q = p + 1;
				bool		negate = false;
				bool		found = false;

				if (q < plen && pattern[q] == '^')
				{
					negate = true;
					q++;
				}
				while (q < plen && pattern[q] != ']')
				{
					if (pattern[q] == '\\' && q + 1 < plen)
					{
						q++;
						if (pattern[q] == str[s])
							found = true;
					}
					else if (q + 2 < plen && pattern[q + 1] == '-')
					{
						unsigned char lo = (unsigned char) pattern[q];
						unsigned char hi = (unsigned char) pattern[q + 2];
						unsigned char c = (unsigned char) str[s];

						if (lo > hi)
						{
							unsigned char t = lo;

							lo = hi;
							hi = t;
						}
						if (c >= lo && c <= hi)
							found = true;
						q += 2;
					}
					else if (pattern[q] == str[s])
						found = true;
					q++;
				}
				/* an unterminated class ends the pattern, as in Redis */
				next = q < plen ? q + 1 : q;
				matched = negate ? !found : found;
			}
			else if (pattern[p] == '\\' && p + 1 < plen)
			{
				matched = pattern[p + 1] == str[s];
				next = p + 2;
			}
			else
				matched = pattern[p] == str[s];
			if (matched)
			{
				p = next;
				s++;
				continue;
			}
		}
		if (star_p == (size_t) -1)
			return false;
		p = star_p;
		s = ++star_s;
	}
	while (p < plen && pattern[p] == '*')
		p++;
	return p == plen;
}

/*
 * Whether glob may name a family of keys the extension owns (and so
 * deletes in bulk): it must begin with literal text, so that no family is
 * ever a whole key_prefix or database ("*", "?x", "[a-z]*", "{id}").  NULL
 * when acceptable, else why not.
 */
const char *
redis_family_unacceptable(const char *glob, size_t len)
{
	size_t		i;

	if (len == 0)
		return "a family must not be empty";
	if (len > RC_MAX_PATTERN_BYTES)
		return "a family is too long";
	for (i = 0; i < len; i++)
		if ((unsigned char) glob[i] < 0x20 || glob[i] == 0x7F)
			return "a family must not contain control characters";
	if (glob[0] == '*' || glob[0] == '?' || glob[0] == '[' ||
		(glob[0] == '\\' && len < 2))
		return "a family must begin with literal text, such as \"tenant:\"";
	return NULL;
}

/* ---- the namespace of query results -------------------------------------- */

/*
 * The timeline of this server's WAL history: the one it writes on a
 * primary, the one it replays in recovery (a standby reads its primary's
 * results).  Shared memory only: usable in backends, in the worker and at
 * XACT_EVENT_COMMIT.
 */
static TimeLineID
current_timeline(void)
{
	TimeLineID	tli;

	if (!RecoveryInProgress())
		return GetWALInsertionTimeLine();
	(void) GetXLogReplayRecPtr(&tli);
	return tli;
}

/*
 * "<system identifier>.<timeline>" into buf (RC_QUERY_NAMESPACE_LEN
 * bytes): the identity of the results this server reads and ends.  No
 * allocation, no catalog access.
 */
void
redis_query_namespace(char *buf)
{
	snprintf(buf, RC_QUERY_NAMESPACE_LEN, UINT64_FORMAT ".%u",
			 GetSystemIdentifier(), (unsigned) current_timeline());
}

/*
 * The base of every key of cached query results (entries, locks,
 * generations, dependency sets) under key_prefix "prefix":
 * prefix||"query:{<system identifier>.<timeline>}:", palloc'd.  The braces
 * are the Redis Cluster hashtag of the namespace (see the file header).
 */
char *
redis_query_base(const char *prefix)
{
	/* the last one, kept: every cache_query call needs it */
	static char *last_prefix = NULL;
	static char *last_base = NULL;
	static TimeLineID last_timeline = 0;
	TimeLineID	timeline = current_timeline();
	char		ns[RC_QUERY_NAMESPACE_LEN];

	if (last_base == NULL || timeline != last_timeline ||
		strcmp(prefix, last_prefix) != 0)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		char	   *base;
		char	   *copy;

		/* the new ones first: an ERROR leaves the old pair intact */
		redis_query_namespace(ns);
		base = psprintf("%s" RC_QUERY_NAMESPACE "{%s}:", prefix, ns);
		copy = pstrdup(prefix);
		if (last_base)
		{
			pfree(last_base);
			pfree(last_prefix);
		}
		last_base = base;
		last_prefix = copy;
		last_timeline = timeline;
		MemoryContextSwitchTo(old);
	}
	return pstrdup(last_base);
}

/*
 * The base versions 1.4 to 1.6 used for the same namespace:
 * prefix||"query:<system identifier>.<timeline>:", palloc'd.  Only to
 * delete what they left (cache_forget_namespace()); nothing reads there.
 */
char *
redis_legacy_query_base(const char *prefix)
{
	char		ns[RC_QUERY_NAMESPACE_LEN];

	redis_query_namespace(ns);
	return psprintf("%s" RC_QUERY_NAMESPACE "%s:", prefix, ns);
}

/*
 * Key names under a query base (the scripts of scripts.c build the same
 * names from the base for the keys they find while running):
 *
 *		base||"gen:"||item		the generation of item ("<db>:<table>", "ddl:<db>", "ddl")
 *		base||"deps:"||item		the set of results that read item
 *		base||"deps-dead"		the list of dependency sets moved aside
 *		entry||":lock"			the stampede lock of a result
 */
char *
redis_query_gen_key(const char *base, const char *item, size_t len)
{
	return psprintf("%sgen:%.*s", base, (int) len, item);
}

char *
redis_query_deps_key(const char *base, const char *item, size_t len)
{
	return psprintf("%sdeps:%.*s", base, (int) len, item);
}

char *
redis_query_dead_list_key(const char *base)
{
	return psprintf("%sdeps-dead", base);
}

char *
redis_query_lock_key(const char *entry_key)
{
	return psprintf("%s:lock", entry_key);
}

/*
 * The namespace ("<digits>.<digits>") of a query key under prefix, in the
 * current layout (prefix||"query:{N.T}:...") or the one of 1.4 to 1.6
 * (prefix||"query:N.T:..."): true with *ns and *nslen set, false for any
 * other key (the layout before 1.4, "query:<db oid>:...", "query:gen:...",
 * is nobody's).
 */
static bool
query_key_namespace(const char *key, size_t len, const char *prefix,
					size_t prefixlen, const char **ns, size_t *nslen)
{
	size_t		qlen = strlen(RC_QUERY_NAMESPACE);
	size_t		i;
	size_t		start;
	size_t		digits;
	bool		braced;

	if (len < prefixlen + qlen || memcmp(key, prefix, prefixlen) != 0 ||
		memcmp(key + prefixlen, RC_QUERY_NAMESPACE, qlen) != 0)
		return false;
	i = prefixlen + qlen;
	braced = i < len && key[i] == '{';
	if (braced)
		i++;
	start = i;
	for (digits = 0; i < len && key[i] >= '0' && key[i] <= '9'; i++)
		digits++;
	if (digits == 0 || i >= len || key[i++] != '.')
		return false;
	for (digits = 0; i < len && key[i] >= '0' && key[i] <= '9'; i++)
		digits++;
	if (digits == 0)
		return false;
	*ns = key + start;
	*nslen = i - start;
	if (braced && (i >= len || key[i++] != '}'))
		return false;
	return i < len && key[i] == ':';
}

/*
 * True for a key of another cluster's (or another timeline's) query
 * results under the same key_prefix, in either layout (see
 * query_key_namespace()), own_base being this server's
 * redis_query_base(prefix).  The worker's flushes and pattern deletes
 * leave them alone: that server ends them itself.  Our own namespace in
 * the layout of 1.4 to 1.6 is not foreign: what 1.6 left is ours to
 * delete.  Keys of the layout before 1.4 are nobody's and not protected.
 */
bool
redis_is_foreign_query_key(const char *key, size_t len, const char *prefix,
						   size_t prefixlen, const char *own_base,
						   size_t own_baselen)
{
	const char *ns;
	size_t		nslen;
	const char *own_ns;
	size_t		own_nslen;

	if (!query_key_namespace(key, len, prefix, prefixlen, &ns, &nslen))
		return false;
	if (!query_key_namespace(own_base, own_baselen, prefix, prefixlen,
							 &own_ns, &own_nslen))
		return true;			/* can't happen: own_base is a query base */
	return nslen != own_nslen || memcmp(ns, own_ns, nslen) != 0;
}

/*
 * True for a key of this server's own query namespace under prefix, in
 * the current layout or in that of 1.4 to 1.6: what a flush of this
 * cluster's results only (the worker's) may delete.
 */
bool
redis_is_own_query_key(const char *key, size_t len, const char *prefix,
					   size_t prefixlen)
{
	char		own[RC_QUERY_NAMESPACE_LEN];
	const char *ns;
	size_t		nslen;

	if (!query_key_namespace(key, len, prefix, prefixlen, &ns, &nslen))
		return false;
	redis_query_namespace(own);
	return nslen == strlen(own) && memcmp(ns, own, nslen) == 0;
}

/* ---- keys reserved to the extension --------------------------------------- */

/*
 * Where the namespaces known to this server come from (the worker's
 * registry, registered by worker.c; NULL without shared memory).
 */
static RedisNamespaceLister namespace_lister = NULL;

void
redis_set_namespace_lister(RedisNamespaceLister lister)
{
	namespace_lister = lister;
}

/* True when the len bytes at key end with one of the names. */
static bool
ends_with_one_of(const char *key, size_t len, const char *const *names)
{
	int			i;

	for (i = 0; i < RC_NUM_CONTROL_KEYS; i++)
	{
		size_t		slen = strlen(names[i]);

		if (len >= slen && memcmp(key + len - slen, names[i], slen) == 0)
			return true;
	}
	return false;
}

/* True when key ends with a control key's name, current or legacy. */
static bool
has_control_suffix(const char *key, size_t len)
{
	return ends_with_one_of(key, len, control_suffixes) ||
		ends_with_one_of(key, len, legacy_control_suffixes);
}

/* True when key starts with prefix||RC_QUERY_NAMESPACE. */
static bool
in_query_namespace(const char *key, size_t len, const char *prefix)
{
	size_t		prefixlen = strlen(prefix);
	size_t		qlen = strlen(RC_QUERY_NAMESPACE);

	return len >= prefixlen + qlen &&
		memcmp(key, prefix, prefixlen) == 0 &&
		memcmp(key + prefixlen, RC_QUERY_NAMESPACE, qlen) == 0;
}

/*
 * The namespaces whose reserved keys redis_is_reserved_key() protects:
 * prefix first, then every other namespace this server knows.  Fetch them
 * once per SQL call or SCAN, not per key (the registry is in shared memory
 * behind a lock).
 */
int
redis_reserved_namespaces(const char *prefix, char ***prefixes)
{
	char	  **known = NULL;
	int			nknown = namespace_lister ? namespace_lister(&known) : 0;
	char	  **result = palloc(sizeof(char *) * (nknown + 1));
	int			n = 0;
	int			i;

	result[n++] = pstrdup(prefix);
	for (i = 0; i < nknown; i++)
		if (known[i] != NULL && strcmp(known[i], prefix) != 0)
			result[n++] = known[i];
	*prefixes = result;
	return n;
}

/*
 * True for a key (full name, prefix included) that belongs to the
 * extension, which the SQL functions neither write nor delete:
 *
 * - the cache version's bookkeeping (control keys), of any namespace:
 *   every key ending in one of their names, current ("{cache}:version")
 *   or legacy ("cache:version"), so that a namespace nested in
 *   another one (key_prefix '' and 'app:' in one Redis database, of this
 *   cluster or another one) cannot reach the other's;
 * - the query-result namespace prefix||"query:" (results, generations,
 *   dependency sets, stampede locks, in every layout) of the given namespaces
 *   (redis_reserved_namespaces()).
 *
 * The query namespaces of another cluster's prefixes are not known here:
 * prefixes of clusters sharing a Redis database should not nest.
 */
bool
redis_is_reserved_key(const char *key, size_t len, char *const *prefixes,
					  int nprefixes)
{
	int			i;

	if (has_control_suffix(key, len))
		return true;
	for (i = 0; i < nprefixes; i++)
		if (in_query_namespace(key, len, prefixes[i]))
			return true;
	return false;
}

/*
 * Cheap pre-test for the hot path: false when key can be reserved in no
 * namespace (no control suffix and no "query:" anywhere), so the caller
 * need not fetch the namespaces.
 */
bool
redis_may_be_reserved_key(const char *key, size_t len)
{
	size_t		qlen = strlen(RC_QUERY_NAMESPACE);
	size_t		i;

	if (has_control_suffix(key, len))
		return true;
	for (i = 0; i + qlen <= len; i++)
		if (key[i] == RC_QUERY_NAMESPACE[0] &&
			memcmp(key + i, RC_QUERY_NAMESPACE, qlen) == 0)
			return true;
	return false;
}

/* ---- hashes in key names and script ids ------------------------------------ */

/*
 * The digest of data in lower-case hex into out (2 * digest length + 1
 * bytes).  type is PG_SHA256 (result keys) or PG_SHA1 (script ids).
 *
 * A backend's cryptohash contexts are tracked by CurrentResourceOwner,
 * which the worker (and a backend between transactions) does not have: it
 * then borrows an owner of ours for the call.
 */
void
redis_hash_hex(pg_cryptohash_type type, const void *data, size_t len, char *out)
{
	static ResourceOwner hash_owner = NULL;
	ResourceOwner saved_owner = CurrentResourceOwner;
	pg_cryptohash_ctx *volatile ctx = NULL;
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	size_t		digestlen = type == PG_SHA1 ? SHA1_DIGEST_LENGTH : PG_SHA256_DIGEST_LENGTH;
	const char *volatile why = NULL;

	Assert(type == PG_SHA1 || type == PG_SHA256);
	if (saved_owner == NULL)
	{
		if (hash_owner == NULL)
			hash_owner = ResourceOwnerCreate(NULL, "redis_cache hashing");
		CurrentResourceOwner = hash_owner;
	}
	PG_TRY();
	{
		ctx = pg_cryptohash_create(type);
		if (ctx == NULL ||
			pg_cryptohash_init(ctx) < 0 ||
			pg_cryptohash_update(ctx, data, len) < 0 ||
			pg_cryptohash_final(ctx, digest, sizeof(digest)) < 0)
			why = ctx ? pstrdup(pg_cryptohash_error(ctx)) : "out of memory";
		pg_cryptohash_free(ctx);
	}
	PG_FINALLY();
	{
		CurrentResourceOwner = saved_owner;
	}
	PG_END_TRY();
	if (why != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("redis_cache: could not compute a hash: %s", why)));
	out[hex_encode((const char *) digest, (unsigned) digestlen, out)] = '\0';
}


/* ---- cached query results ------------------------------------------------- */

static void
hash_append(StringInfo buf, const char *data, int len)
{
	uint32		be = pg_hton32((uint32) len);

	appendBinaryStringInfo(buf, (const char *) &be, sizeof(be));
	appendBinaryStringInfo(buf, data, len);
}

static void
hash_append_setting(StringInfo buf, const char *name)
{
	const char *value = GetConfigOption(name, true, false);

	hash_append(buf, value ? value : "", value ? strlen(value) : 0);
}

/*
 * The variables behind the settings of a result key (see below), to tell
 * cheaply whether the settings block computed last is still current: a
 * hit must not pay 17 GetConfigOption() calls.  Strings are compared by
 * content (a freed value's address may be reused); time zones are cached
 * by PostgreSQL and never freed, so their address is their identity.
 */
typedef struct SettingsSnapshot
{
	pg_tz	   *timezone;
	int			datestyle;
	int			dateorder;
	int			intervalstyle;
	int			extra_float_digits;
	int			bytea_output;
	int			backslash_quote;
	int			xmloption;
	int			xmlbinary;
	bool		standard_conforming_strings;
	bool		array_nulls;
	bool		transform_null_equals;
	bool		quote_all_identifiers;
	char	   *strings[5];		/* lc_monetary, lc_numeric, lc_time, ts config, abbreviations */
} SettingsSnapshot;

static SettingsSnapshot settings_snapshot;
static bool settings_snapshot_valid = false;
static StringInfoData settings_block;

static void
take_settings_snapshot(SettingsSnapshot *snap, const char **strings)
{
	snap->timezone = session_timezone;
	snap->datestyle = DateStyle;
	snap->dateorder = DateOrder;
	snap->intervalstyle = IntervalStyle;
	snap->extra_float_digits = extra_float_digits;
	snap->bytea_output = bytea_output;
	snap->backslash_quote = backslash_quote;
	snap->xmloption = xmloption;
	snap->xmlbinary = xmlbinary;
	snap->standard_conforming_strings = standard_conforming_strings;
	snap->array_nulls = Array_nulls;
	snap->transform_null_equals = Transform_null_equals;
	snap->quote_all_identifiers = quote_all_identifiers;
	strings[0] = locale_monetary;
	strings[1] = locale_numeric;
	strings[2] = locale_time;
	strings[3] = TSCurrentConfig;
	strings[4] = GetConfigOption("timezone_abbreviations", true, false);
}

/* Append the settings' block to input, computing it again if needed. */
static void
append_settings(StringInfo input, const char *const *settings, int nsettings)
{
	SettingsSnapshot now;
	const char *strings[5];
	bool		same;
	int			i;

	memset(&now, 0, sizeof(now));
	take_settings_snapshot(&now, strings);
	same = settings_snapshot_valid &&
		memcmp(&now, &settings_snapshot, offsetof(SettingsSnapshot, strings)) == 0;
	for (i = 0; same && i < 5; i++)
		same = strcmp(strings[i] ? strings[i] : "", settings_snapshot.strings[i]) == 0;
	if (!same)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		/* an ERROR (out of memory) below leaves no half-built block valid */
		settings_snapshot_valid = false;
		if (settings_block.data == NULL)
			initStringInfo(&settings_block);
		resetStringInfo(&settings_block);
		for (i = 0; i < nsettings; i++)
			hash_append_setting(&settings_block, settings[i]);
		for (i = 0; i < 5; i++)
		{
			if (settings_snapshot.strings[i])
				pfree(settings_snapshot.strings[i]);
			settings_snapshot.strings[i] = NULL;
			now.strings[i] = pstrdup(strings[i] ? strings[i] : "");
		}
		settings_snapshot = now;
		settings_snapshot_valid = true;
		MemoryContextSwitchTo(old);
	}
	appendBinaryStringInfo(input, settings_block.data, settings_block.len);
}

/*
 * The key of a cached query result: base||"<db oid>:<role oid>:<sha256>".
 * The role is part of the key itself, so one role can never be served
 * another role's result, whatever the hash.  The SHA-256 covers the format
 * ("rows" or "json"), the resolved search_path (a temporary schema with
 * this session's identity), the settings that change a result, the query
 * text and the parameters.
 *
 * The settings are those a role can change that change which rows a SELECT
 * returns or their text: how the query text and values are parsed
 * (standard_conforming_strings, backslash_quote, array_nulls,
 * transform_null_equals, xmloption, DateStyle, IntervalStyle, TimeZone,
 * timezone_abbreviations), compared and searched (TimeZone,
 * default_text_search_config), and printed (DateStyle, IntervalStyle,
 * extra_float_digits, bytea_output, xmlbinary, quote_all_identifiers,
 * lc_monetary, lc_numeric, lc_time).  Planner, resource, logging and
 * timeout settings change at most the order of rows the query leaves
 * unordered, or whether it fails; client_encoding applies after the
 * result; a query that reads other settings (current_setting()) or with
 * gin_fuzzy_search_limit set is not cached at all (query_deps.c).
 *
 * When shape is not NULL it receives (RC_QUERY_SHAPE_LEN bytes) the hex
 * SHA-256 of the same input without the parameters, with the database and
 * the role: what the tables a query reads depend on (query_cache.c
 * remembers them per shape, to declare their generation keys before a
 * lookup).
 */
char *
redis_query_entry_key(const char *base, const char *format, const char *query,
					  int nparams, const Datum *param_values,
					  const bool *param_nulls, char *shape)
{
	StringInfoData input;
	char		hex[PG_SHA256_DIGEST_LENGTH * 2 + 1];
	static const char *const settings[] = {
		"TimeZone", "DateStyle", "IntervalStyle", "extra_float_digits",
		"bytea_output", "standard_conforming_strings", "lc_monetary",
		"lc_numeric", "lc_time", "default_text_search_config",
		"timezone_abbreviations", "array_nulls", "backslash_quote",
		"transform_null_equals", "xmloption", "xmlbinary",
		"quote_all_identifiers"
	};
	List	   *path = fetch_search_path(true);
	ListCell   *lc;
	int			i;

	initStringInfo(&input);
	hash_append(&input, format, strlen(format));
	foreach(lc, path)
	{
		Oid			nsp = lfirst_oid(lc);

		appendBinaryStringInfo(&input, (const char *) &nsp, sizeof(nsp));

		/*
		 * This session's temporary schema: pg_temp_N is reused by later
		 * sessions, whose temporary tables may shadow other ones.  Such
		 * keys are this session's own.
		 */
		if (isTempNamespace(nsp))
		{
			appendBinaryStringInfo(&input, (const char *) &MyProcPid, sizeof(MyProcPid));
			appendBinaryStringInfo(&input, (const char *) &MyStartTime, sizeof(MyStartTime));
		}
	}
	list_free(path);
	appendStringInfoChar(&input, '\0');
	append_settings(&input, settings, (int) lengthof(settings));
	hash_append(&input, query, strlen(query));
	if (shape != NULL)
	{
		int			len = input.len;
		Oid			role = GetUserId();

		appendBinaryStringInfo(&input, (const char *) &MyDatabaseId, sizeof(Oid));
		appendBinaryStringInfo(&input, (const char *) &role, sizeof(Oid));
		redis_hash_hex(PG_SHA256, input.data, input.len, shape);
		input.len = len;
		input.data[len] = '\0';
	}
	for (i = 0; i < nparams; i++)
	{
		if (param_nulls[i])
			appendStringInfoString(&input, "\xff\xff\xff\xff");
		else
		{
			text	   *t = DatumGetTextPP(param_values[i]);

			hash_append(&input, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
		}
	}
	redis_hash_hex(PG_SHA256, input.data, input.len, hex);
	pfree(input.data);
	return psprintf("%s%u:%u:%s", base, MyDatabaseId, GetUserId(), hex);
}
