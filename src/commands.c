/*-------------------------------------------------------------------------
 *
 * commands.c
 *		  The key-value SQL functions: cache_get, cache_get_bytea,
 *		  cache_set (text and bytea), cache_add, cache_set_many,
 *		  cache_touch, cache_delete, cache_exists, cache_ttl, cache_incr,
 *		  cache_mget, cache_delete_pattern, cache_lock, cache_unlock,
 *		  cache_ping.
 *
 * Every function validates its input first (ERROR, SQLSTATE 22023), then
 * builds its commands with command_builder.c (every key marked, so that a
 * Redis Cluster routes each command, and splits a multi-key UNLINK or MGET
 * per slot) and runs them with redis_run() or, pipelined, redis_execute().
 * Commands whose keys are interleaved with values (MSET) are not used:
 * cache_set_many pipelines one SET per key.  On a Redis fault the function
 * returns its miss value (NULL, false, 0) unless redis_cache.on_error is
 * 'error'; the fault itself is reported by the connection layer.
 *
 * Values are plain Redis strings, readable and writable by any Redis client.
 * What comes back is untrusted: a value that is not valid in the database
 * encoding (or contains NUL) is a miss with a WARNING, never invalid text;
 * cache_get_bytea returns any value as its raw bytes (serialized values of
 * other frameworks, binary data stored with cache_set(text, bytea)).
 *
 * Keys reserved to the extension (keys.c: the cache version's bookkeeping,
 * the query-result namespace) are never written or deleted here, whoever
 * calls: cache_set, cache_incr, cache_delete, cache_lock and cache_unlock
 * raise ERROR (42501), cache_delete_pattern skips them.  Reads are allowed:
 * results are hashes that GET cannot read, and generations and versions are
 * no secret.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "redis_cache.h"

PG_FUNCTION_INFO_V1(cache_get);
PG_FUNCTION_INFO_V1(cache_set);
PG_FUNCTION_INFO_V1(cache_delete);
PG_FUNCTION_INFO_V1(cache_exists);
PG_FUNCTION_INFO_V1(cache_ttl);
PG_FUNCTION_INFO_V1(cache_incr);
PG_FUNCTION_INFO_V1(cache_mget);
PG_FUNCTION_INFO_V1(cache_delete_pattern);
PG_FUNCTION_INFO_V1(cache_lock);
PG_FUNCTION_INFO_V1(cache_unlock);
PG_FUNCTION_INFO_V1(cache_ping);
PG_FUNCTION_INFO_V1(cache_get_bytea);
PG_FUNCTION_INFO_V1(cache_add);
PG_FUNCTION_INFO_V1(cache_set_many);
PG_FUNCTION_INFO_V1(cache_touch);

/*
 * Turn a bulk-string reply into text, or NULL when it is a miss, not a
 * string, or not valid in the database encoding.  "key" is the user's key,
 * for messages.
 */
static text *
reply_to_text(const RedisReply *reply, text *key_text)
{
	char	   *key;

	if (reply == NULL || reply->type == RC_REPLY_NIL)
		return NULL;
	if (reply->type == RC_REPLY_ERROR)
	{
		char	   *what = psprintf("reading key \"%s\"", text_to_cstring(key_text));

		redis_report_reply_error(reply, what, 0);
		return NULL;
	}
	if (reply->type != RC_REPLY_STRING)
		return NULL;
	if (!pg_verifymbstr(reply->str, (int) reply->len, true))
	{
		/* the key is copied for messages only, off the hot path */
		key = text_to_cstring(key_text);
		if (redis_cache_on_error != RC_ON_ERROR_SILENT)
			ereport(WARNING,
					(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
					 errmsg("redis_cache: value of key \"%s\" is not valid %s text",
							key, GetDatabaseEncodingName()),
					 errdetail("The value is treated as a cache miss."),
					 errhint("Store text in the database encoding, or read binary values with cache_get_bytea().")));
		return NULL;
	}
	return cstring_to_text_with_len(reply->str, (int) reply->len);
}

static char *
text_key_for_message(text *key)
{
	return text_to_cstring(key);
}

/*
 * ERROR when one of the given (prefixed) keys is reserved to the extension.
 * skip (if not NULL) marks array slots to ignore; action says what was
 * refused ("write", "delete").
 */
static void
refuse_reserved_keys(char *const *keys, const size_t *lens, const bool *skip,
					 int nkeys, const char *action)
{
	char	  **namespaces = NULL;
	int			nnamespaces = 0;
	int			i;

	for (i = 0; i < nkeys; i++)
	{
		if ((skip && skip[i]) || !redis_may_be_reserved_key(keys[i], lens[i]))
			continue;
		if (namespaces == NULL)
			nnamespaces = redis_reserved_namespaces(redis_cache_key_prefix ? redis_cache_key_prefix : "",
													&namespaces);
		if (redis_is_reserved_key(keys[i], lens[i], namespaces, nnamespaces))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("redis_cache: cannot %s key \"%s\": it belongs to the extension",
							action, keys[i]),
					 errdetail("Keys ending in the name of a cache version bookkeeping key (such as cache:version) and keys under key_prefix || 'query:' are kept by redis_cache itself."),
					 errhint("Change the cache version with the setting redis_cache.version, end cached query results with cache_query_invalidate(), or use another key name.")));
	}
}

/* The same for one key. */
static void
refuse_reserved_key(char *key, size_t len, const char *action)
{
	refuse_reserved_keys(&key, &len, NULL, 1, action);
}

/* Statistics of one read: hit or miss, totals and per key family. */
static void
count_read(text *key, bool hit)
{
	redis_stats_add(hit ? RC_STAT_HITS : RC_STAT_MISSES, 1);
	redis_stats_family(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key),
					   hit ? RC_FAM_HITS : RC_FAM_MISSES);
}

/*
 * Run "name key", a command whose only argument is one (prefixed) key, with
 * the default flags.  NULL on a fault (reported).
 */
static RedisReply *
run_on_key(const char *name, const char *rkey, size_t klen)
{
	RedisCommand cmd;

	redis_cmd_init(&cmd, name, 1);
	redis_cmd_key(&cmd, rkey, klen);
	return redis_run(&cmd, 0);
}

/*
 * A reply standing for a value the local cache served (local_cache.c).
 */
static RedisReply *
local_reply(char *value, size_t len)
{
	RedisReply *reply = palloc0(sizeof(RedisReply));

	reply->type = RC_REPLY_STRING;
	reply->str = value;
	reply->len = len;
	return reply;
}

/*
 * GET key through the local cache: a hit there makes no round trip; a
 * miss reads the value and its PTTL in one round trip and installs them
 * unless the key was invalidated meanwhile (the fill snapshot is taken
 * before the read is sent).  When Redis fails, the entries kept for
 * redis_cache.local_serve_on_error are served.
 */
static RedisReply *
get_value_locally(const char *rkey, size_t klen, const char *key, size_t keylen)
{
	RedisCommand cmds[2];
	RedisReply *replies[2];
	RedisLocalFill *fill;
	char	   *value;
	size_t		len;

	if (redis_local_lookup(rkey, klen, false, &value, &len))
		return local_reply(value, len);
	fill = redis_local_fill_begin(rkey, klen, NULL, NULL, 0);

	/*
	 * Owed to the worker since the check in get_value() (a commit queued a
	 * pattern or a replay after it): what Redis answers may be stale until
	 * the worker is done, so it must not be installed.
	 */
	if (fill != NULL &&
		redis_key_pending(redis_cache_key_prefix ? redis_cache_key_prefix : "",
						  key, keylen))
		fill = NULL;
	redis_cmd_init(&cmds[0], "GET", 1);
	redis_cmd_key(&cmds[0], rkey, klen);
	/* the TTL only for a reply that may be installed */
	redis_cmd_init(&cmds[1], "PTTL", 1);
	redis_cmd_key(&cmds[1], rkey, klen);
	if (!redis_execute(cmds, fill != NULL ? 2 : 1, replies, 0))
	{
		if (redis_local_lookup(rkey, klen, true, &value, &len))
			return local_reply(value, len);
		return NULL;
	}
	if (fill != NULL && replies[0]->type == RC_REPLY_STRING &&
		replies[1]->type == RC_REPLY_INTEGER)
		redis_local_fill_end(fill, replies[0]->str, replies[0]->len,
							 replies[1]->integer);
	return replies[0];
}

/*
 * GET key: the reply, or NULL on a fault and while the worker owes this
 * key an invalidation (a miss, never the stale value).
 */
static RedisReply *
get_value(text *key)
{
	size_t		klen;
	char	   *rkey = redis_make_key(key, &klen);

	if (redis_key_pending(redis_cache_key_prefix ? redis_cache_key_prefix : "",
						  VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)))
	{
		redis_stats_add(RC_STAT_BYPASSES, 1);
		return NULL;
	}
	if (redis_local_wants_key(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)))
		return get_value_locally(rkey, klen, VARDATA_ANY(key),
								 VARSIZE_ANY_EXHDR(key));
	return run_on_key("GET", rkey, klen);
}

Datum
cache_get(PG_FUNCTION_ARGS)
{
	text	   *key = PG_GETARG_TEXT_PP(0);
	RedisReply *reply = get_value(key);
	text	   *result;

	result = reply_to_text(reply, key);
	count_read(key, result != NULL);
	if (result == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(result);
}

/* The TTL argument: NULL is redis_cache.default_ttl (0: no expiry). */
static int
ttl_argument(FunctionCallInfo fcinfo, int argno)
{
	int			ttl;

	if (PG_ARGISNULL(argno))
		return redis_cache_default_ttl;
	ttl = PG_GETARG_INT32(argno);
	redis_check_ttl(ttl);
	return ttl;
}

/* ERROR unless a value of len bytes may be cached. */
static void
check_value_size(size_t len)
{
	if (len > (size_t) redis_cache_max_value_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("redis_cache: value is too large to cache"),
				 errdetail("The value is %zu bytes; redis_cache.max_value_bytes is %d.",
						   len, redis_cache_max_value_bytes),
				 errhint("Cache a smaller value or raise redis_cache.max_value_bytes.")));
}

/*
 * SET key value [EX ttl] [NX] into cmd (key and value referenced, not
 * copied).
 */
static void
build_set(RedisCommand *cmd, const char *rkey, size_t klen,
		  const char *value, size_t vlen, int ttl, bool only_if_absent)
{
	redis_cmd_init(cmd, "SET", 5);
	redis_cmd_key(cmd, rkey, klen);
	redis_cmd_arg(cmd, value, vlen);
	if (ttl > 0)
	{
		redis_cmd_str(cmd, "EX");
		redis_cmd_int(cmd, ttl);
	}
	if (only_if_absent)
		redis_cmd_str(cmd, "NX");
}

/*
 * The body of cache_set (text or bytea: any varlena value, stored as its
 * bytes) and cache_add (only_if_absent).  Returns 1 stored, 0 not stored
 * (a fault, an error reply, or NX found the key), -1 for cache_add's
 * "Redis unavailable" (NULL).
 */
static int
store_value(FunctionCallInfo fcinfo, bool only_if_absent)
{
	text	   *key = PG_GETARG_TEXT_PP(0);
	struct varlena *value;
	int			ttl;
	size_t		klen;
	char	   *rkey;
	RedisCommand cmd;
	RedisReply *reply;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("redis_cache: cannot cache a NULL value"),
				 errhint("Use cache_delete() to remove a key.")));
	value = PG_GETARG_VARLENA_PP(1);
	rkey = redis_make_key(key, &klen);
	refuse_reserved_key(rkey, klen, "write");
	ttl = ttl_argument(fcinfo, 2);
	check_value_size(VARSIZE_ANY_EXHDR(value));

	build_set(&cmd, rkey, klen, VARDATA_ANY(value), VARSIZE_ANY_EXHDR(value),
			  ttl, only_if_absent);
	reply = redis_run(&cmd, 0);
	/* after the write: no fill that read the old value may stay */
	redis_local_invalidate(rkey, klen);
	if (reply == NULL)
		return only_if_absent ? -1 : 0;
	if (reply->type == RC_REPLY_ERROR)
	{
		redis_report_reply_error(reply,
								 psprintf("storing key \"%s\"", text_key_for_message(key)),
								 0);
		return only_if_absent ? -1 : 0;
	}
	if (reply->type != RC_REPLY_STATUS)
		return 0;				/* NX: the key exists (nil) */
	redis_stats_add(RC_STAT_SETS, 1);
	redis_stats_family(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), RC_FAM_SETS);
	return 1;
}

/*
 * cache_get_bytea(key text) RETURNS bytea: the value's raw bytes, whatever
 * they are (no encoding check); NULL on a miss.
 */
Datum
cache_get_bytea(PG_FUNCTION_ARGS)
{
	text	   *key = PG_GETARG_TEXT_PP(0);
	RedisReply *reply = get_value(key);
	bytea	   *result;

	if (reply != NULL && reply->type == RC_REPLY_ERROR)
		redis_report_reply_error(reply,
								 psprintf("reading key \"%s\"", text_key_for_message(key)),
								 0);
	if (reply == NULL || reply->type != RC_REPLY_STRING)
	{
		count_read(key, false);
		PG_RETURN_NULL();
	}
	count_read(key, true);
	result = palloc(VARHDRSZ + reply->len);
	SET_VARSIZE(result, VARHDRSZ + reply->len);
	memcpy(VARDATA(result), reply->str, reply->len);
	PG_RETURN_BYTEA_P(result);
}

/*
 * cache_set(key text, value text|bytea, ttl_seconds int DEFAULT NULL)
 * RETURNS boolean: true when stored.
 */
Datum
cache_set(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	PG_RETURN_BOOL(store_value(fcinfo, false) == 1);
}

/*
 * cache_add(key text, value text, ttl_seconds int DEFAULT NULL) RETURNS
 * boolean: SET NX; true when stored, false when the key exists, NULL when
 * Redis is unavailable.
 */
Datum
cache_add(PG_FUNCTION_ARGS)
{
	int			stored;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	stored = store_value(fcinfo, true);
	if (stored < 0)
		PG_RETURN_NULL();
	PG_RETURN_BOOL(stored == 1);
}

/*
 * cache_set_many(keys text[], values text[], ttl_seconds int DEFAULT NULL)
 * RETURNS bigint: keys[i] = values[i], all with the TTL, pipelined
 * (RC_KEYS_PER_COMMAND commands per round trip).  Returns how many were
 * stored; 0 when Redis is unavailable.
 */
Datum
cache_set_many(PG_FUNCTION_ARGS)
{
	ArrayType  *karr;
	ArrayType  *varr;
	Datum	   *kelems;
	Datum	   *velems;
	bool	   *knulls;
	bool	   *vnulls;
	int			nkeys;
	int			nvalues;
	int			ttl;
	char	  **rkeys;
	size_t	   *klens;
	RedisCommand *cmds;
	MemoryContext chunk_context;
	MemoryContext old_context;
	int64		stored = 0;
	int			i;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("redis_cache: keys and values must not be NULL"),
				 errhint("Pass two arrays of the same length.")));
	karr = PG_GETARG_ARRAYTYPE_P(0);
	varr = PG_GETARG_ARRAYTYPE_P(1);
	if (ARR_NDIM(karr) > 1 || ARR_NDIM(varr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("redis_cache: keys and values must be one-dimensional arrays")));
	deconstruct_array(karr, TEXTOID, -1, false, TYPALIGN_INT,
					  &kelems, &knulls, &nkeys);
	deconstruct_array(varr, TEXTOID, -1, false, TYPALIGN_INT,
					  &velems, &vnulls, &nvalues);
	if (nkeys != nvalues)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("redis_cache: %d keys but %d values", nkeys, nvalues),
				 errhint("Pass one value per key.")));
	ttl = ttl_argument(fcinfo, 2);
	if (nkeys == 0)
		PG_RETURN_INT64(0);

	rkeys = palloc(sizeof(char *) * nkeys);
	klens = palloc(sizeof(size_t) * nkeys);
	for (i = 0; i < nkeys; i++)
	{
		if (knulls[i] || vnulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("redis_cache: element %d of %s is NULL", i + 1,
							knulls[i] ? "keys" : "values"),
					 errhint("Use cache_delete() to remove keys.")));
		rkeys[i] = redis_make_key(DatumGetTextPP(kelems[i]), &klens[i]);
		check_value_size(VARSIZE_ANY_EXHDR(DatumGetTextPP(velems[i])));
	}
	refuse_reserved_keys(rkeys, klens, NULL, nkeys, "write");

	/* one SET per key (never MSET: its keys are not contiguous), pipelined */
	cmds = palloc(sizeof(RedisCommand) * Min(nkeys, RC_KEYS_PER_COMMAND));
	chunk_context = AllocSetContextCreate(CurrentMemoryContext,
										  "redis_cache set_many chunk",
										  ALLOCSET_DEFAULT_SIZES);
	old_context = MemoryContextSwitchTo(chunk_context);
	for (i = 0; i < nkeys; i += RC_KEYS_PER_COMMAND)
	{
		int			n = Min(nkeys - i, RC_KEYS_PER_COMMAND);
		RedisReply **replies = palloc(sizeof(RedisReply *) * n);
		int			j;
		bool		reported = false;

		for (j = 0; j < n; j++)
		{
			text	   *value = DatumGetTextPP(velems[i + j]);

			build_set(&cmds[j], rkeys[i + j], klens[i + j], VARDATA_ANY(value),
					  VARSIZE_ANY_EXHDR(value), ttl, false);
		}
		if (!redis_execute(cmds, n, replies, 0))
			replies = NULL;
		for (j = 0; j < n; j++)
			redis_local_invalidate(rkeys[i + j], klens[i + j]);
		if (replies == NULL)
			break;
		for (j = 0; j < n; j++)
		{
			text	   *key = DatumGetTextPP(kelems[i + j]);

			if (replies[j]->type == RC_REPLY_STATUS)
			{
				stored++;
				redis_stats_family(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key),
								   RC_FAM_SETS);
			}
			else if (replies[j]->type == RC_REPLY_ERROR && !reported)
			{
				/* one report per round trip: a full Redis refuses them all */
				redis_report_reply_error(replies[j],
										 psprintf("storing key \"%s\"", text_key_for_message(key)),
										 0);
				reported = true;
			}
		}
		/* the commands and replies of this chunk */
		MemoryContextReset(chunk_context);
	}
	MemoryContextSwitchTo(old_context);
	MemoryContextDelete(chunk_context);
	redis_stats_add(RC_STAT_SETS, stored);
	PG_RETURN_INT64(stored);
}

/*
 * cache_touch(key text, ttl_seconds int DEFAULT NULL) RETURNS boolean: a
 * new TTL for an existing key (EXPIRE; with a default_ttl of 0, PERSIST);
 * true when the key exists.
 */
Datum
cache_touch(PG_FUNCTION_ARGS)
{
	text	   *key;
	size_t		klen;
	char	   *rkey;
	int			ttl;
	RedisCommand cmds[2];
	RedisReply *replies[2];
	int			ncmds = 1;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	key = PG_GETARG_TEXT_PP(0);
	rkey = redis_make_key(key, &klen);
	refuse_reserved_key(rkey, klen, "write");
	ttl = ttl_argument(fcinfo, 1);

	if (ttl > 0)
	{
		redis_cmd_init(&cmds[0], "EXPIRE", 2);
		redis_cmd_key(&cmds[0], rkey, klen);
		redis_cmd_int(&cmds[0], ttl);
	}
	else
	{
		/* PERSIST says 0 for a key without a TTL too: ask EXISTS as well */
		redis_cmd_init(&cmds[0], "PERSIST", 1);
		redis_cmd_key(&cmds[0], rkey, klen);
		redis_cmd_init(&cmds[1], "EXISTS", 1);
		redis_cmd_key(&cmds[1], rkey, klen);
		ncmds = 2;
	}
	if (!redis_execute(cmds, ncmds, replies, 0))
		replies[0] = NULL;
	redis_local_invalidate(rkey, klen);
	if (replies[0] == NULL)
		PG_RETURN_BOOL(false);
	if (replies[0]->type == RC_REPLY_ERROR)
	{
		redis_report_reply_error(replies[0],
								 psprintf("setting the TTL of key \"%s\"", text_key_for_message(key)),
								 0);
		PG_RETURN_BOOL(false);
	}
	PG_RETURN_BOOL(replies[ncmds - 1]->type == RC_REPLY_INTEGER &&
				   replies[ncmds - 1]->integer == 1);
}

/*
 * Pull the non-NULL elements of a one-dimensional text array, validated and
 * prefixed.  *nulls (if given) marks NULL elements.
 */
static int
array_to_keys(ArrayType *arr, char ***keys, size_t **lens, bool **isnull)
{
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	int			i;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("redis_cache: keys must be a one-dimensional array")));

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &nelems);
	*keys = palloc0(sizeof(char *) * Max(nelems, 1));
	*lens = palloc0(sizeof(size_t) * Max(nelems, 1));
	for (i = 0; i < nelems; i++)
	{
		if (nulls[i])
			continue;
		(*keys)[i] = redis_make_key(DatumGetTextPP(elems[i]), &(*lens)[i]);
	}
	*isnull = nulls;
	return nelems;
}

/*
 * UNLINK the given (already prefixed) keys in batches of
 * RC_KEYS_PER_COMMAND, pipelined in one round trip (a Redis Cluster splits
 * each batch per slot and sums the counts).  Returns the number removed,
 * or -1 on a fault.
 */
static int64
unlink_keys(char **keys, size_t *lens, bool *skip, int nkeys, int flags)
{
	int			nwanted = 0;
	int			ncommands;
	RedisCommand *cmds;
	RedisReply **replies;
	int			i;
	int			c = -1;
	int64		removed = 0;
	bool		ok;

	for (i = 0; i < nkeys; i++)
		if (!(skip && skip[i]))
			nwanted++;
	if (nwanted == 0)
		return 0;

	ncommands = (nwanted + RC_KEYS_PER_COMMAND - 1) / RC_KEYS_PER_COMMAND;
	cmds = palloc(sizeof(RedisCommand) * ncommands);
	for (i = 0; i < nkeys; i++)
	{
		if (skip && skip[i])
			continue;
		if (c < 0 || cmds[c].nkeys == RC_KEYS_PER_COMMAND)
		{
			c++;
			redis_cmd_init(&cmds[c], "UNLINK",
						   Min(RC_KEYS_PER_COMMAND,
							   nwanted - c * RC_KEYS_PER_COMMAND));
		}
		redis_cmd_key(&cmds[c], keys[i], lens[i]);
	}

	replies = palloc(sizeof(RedisReply *) * ncommands);
	ok = redis_execute(cmds, ncommands, replies, flags);
	for (i = 0; i < nkeys; i++)
		if (!(skip && skip[i]))
			redis_local_invalidate(keys[i], lens[i]);
	if (!ok)
		return -1;
	for (i = 0; i < ncommands; i++)
	{
		if (replies[i]->type == RC_REPLY_INTEGER)
			removed += replies[i]->integer;
		else if (replies[i]->type == RC_REPLY_ERROR)
			redis_report_reply_error(replies[i], "deleting keys", flags);
	}
	return removed;
}

/*
 * cache_delete(VARIADIC keys text[]) RETURNS bigint
 */
Datum
cache_delete(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	char	  **keys;
	size_t	   *lens;
	bool	   *nulls;
	int			nkeys;
	int64		removed;

	nkeys = array_to_keys(arr, &keys, &lens, &nulls);
	refuse_reserved_keys(keys, lens, nulls, nkeys, "delete");
	removed = unlink_keys(keys, lens, nulls, nkeys, 0);
	if (removed > 0)
	{
		/* per family: the keys asked for (Redis only says how many existed) */
		size_t		plen = strlen(redis_cache_key_prefix ? redis_cache_key_prefix : "");
		int			i;

		redis_stats_add(RC_STAT_DELETES, removed);
		for (i = 0; i < nkeys; i++)
			if (!nulls[i])
				redis_stats_family(keys[i] + plen, lens[i] - plen, RC_FAM_DELETES);
	}
	PG_RETURN_INT64(removed < 0 ? 0 : removed);
}

/*
 * cache_exists(key text) RETURNS boolean
 */
Datum
cache_exists(PG_FUNCTION_ARGS)
{
	text	   *key = PG_GETARG_TEXT_PP(0);
	size_t		klen;
	char	   *rkey = redis_make_key(key, &klen);
	RedisReply *reply;

	reply = run_on_key("EXISTS", rkey, klen);
	PG_RETURN_BOOL(reply != NULL && reply->type == RC_REPLY_INTEGER &&
				   reply->integer > 0);
}

/*
 * cache_ttl(key text) RETURNS int: seconds left, NULL when absent or
 * without expiry.
 */
Datum
cache_ttl(PG_FUNCTION_ARGS)
{
	text	   *key = PG_GETARG_TEXT_PP(0);
	size_t		klen;
	char	   *rkey = redis_make_key(key, &klen);
	RedisReply *reply;

	reply = run_on_key("TTL", rkey, klen);
	if (reply == NULL || reply->type != RC_REPLY_INTEGER || reply->integer < 0 ||
		reply->integer > PG_INT32_MAX)
		PG_RETURN_NULL();
	PG_RETURN_INT32((int32) reply->integer);
}

/*
 * cache_incr(key text, delta bigint DEFAULT 1, ttl_seconds int DEFAULT NULL)
 * RETURNS bigint
 *
 * MULTI / SET key 0 EX ttl NX / INCRBY / EXEC: the expiry is set only when
 * this call creates the counter, so an application's persistent counter
 * never gains a TTL, and creation plus increment are atomic.
 */
Datum
cache_incr(PG_FUNCTION_ARGS)
{
	text	   *key;
	int64		delta;
	int			ttl;
	size_t		klen;
	char	   *rkey;
	RedisCommand cmds[4];
	RedisReply *replies[4];
	int			n = 0;
	RedisReply *exec;
	RedisReply *incr;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	key = PG_GETARG_TEXT_PP(0);
	delta = PG_GETARG_INT64(1);
	rkey = redis_make_key(key, &klen);
	refuse_reserved_key(rkey, klen, "write");
	if (PG_ARGISNULL(2))
		ttl = redis_cache_default_ttl;
	else
	{
		ttl = PG_GETARG_INT32(2);
		redis_check_ttl(ttl);
	}

	/*
	 * MULTI and EXEC name no key: on a Redis Cluster they must go where the
	 * commands between them go (the key's master), as one transaction.
	 */
	redis_cmd_init(&cmds[n++], "MULTI", 0);
	if (ttl > 0)
		build_set(&cmds[n++], rkey, klen, "0", 1, ttl, true);
	redis_cmd_init(&cmds[n], "INCRBY", 2);
	redis_cmd_key(&cmds[n], rkey, klen);
	redis_cmd_int(&cmds[n++], delta);
	redis_cmd_init(&cmds[n++], "EXEC", 0);

	if (!redis_execute(cmds, n, replies, 0))
		replies[n - 1] = NULL;
	redis_local_invalidate(rkey, klen);
	if (replies[n - 1] == NULL)
		PG_RETURN_NULL();

	exec = replies[n - 1];
	if (exec->type == RC_REPLY_ERROR)
	{
		redis_report_reply_error(exec,
								 psprintf("incrementing key \"%s\"", text_key_for_message(key)),
								 0);
		PG_RETURN_NULL();
	}
	if (exec->type != RC_REPLY_ARRAY || exec->elements != (size_t) (n - 2))
		PG_RETURN_NULL();
	incr = exec->element[exec->elements - 1];
	if (incr->type == RC_REPLY_ERROR)
	{
		redis_report_reply_error(incr,
								 psprintf("incrementing key \"%s\"", text_key_for_message(key)),
								 0);
		PG_RETURN_NULL();
	}
	if (incr->type != RC_REPLY_INTEGER)
		PG_RETURN_NULL();
	PG_RETURN_INT64((int64) incr->integer);
}

/*
 * cache_mget(keys text[]) RETURNS text[]: one element per key, NULL for
 * misses, all in one round trip.
 */
Datum
cache_mget(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	char	  **keys;
	size_t	   *lens;
	bool	   *nulls;
	int			nkeys;
	int			nvalid = 0;
	int			ncommands;
	RedisCommand *cmds;
	RedisReply **replies;
	Datum	   *values;
	bool	   *result_nulls;
	int			i;
	int			dims[1];
	int			lbs[1] = {1};
	bool		ok;

	nkeys = array_to_keys(arr, &keys, &lens, &nulls);
	if (nkeys == 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(TEXTOID));

	values = palloc0(sizeof(Datum) * nkeys);
	result_nulls = palloc(sizeof(bool) * nkeys);
	for (i = 0; i < nkeys; i++)
	{
		result_nulls[i] = true;
		if (!nulls[i])
			nvalid++;
	}

	/* MGET in chunks; non-NULL keys only, mapped back below */
	ncommands = (nvalid + RC_KEYS_PER_COMMAND - 1) / RC_KEYS_PER_COMMAND;
	/* all misses while the worker owes this namespace invalidations */
	if (ncommands > 0 &&
		redis_recovery_pending(redis_cache_key_prefix ? redis_cache_key_prefix : ""))
	{
		redis_stats_add(RC_STAT_BYPASSES, 1);
		ncommands = 0;
	}
	if (ncommands > 0)
	{
		int			key_index = 0;
		int			c;

		/* a Redis Cluster splits each MGET per slot, replies in key order */
		cmds = palloc(sizeof(RedisCommand) * ncommands);
		for (c = 0; c < ncommands; c++)
		{
			int			chunk = Min(RC_KEYS_PER_COMMAND, nvalid - c * RC_KEYS_PER_COMMAND);

			redis_cmd_init(&cmds[c], "MGET", chunk);
			while (cmds[c].nkeys < chunk)
			{
				if (!nulls[key_index])
					redis_cmd_key(&cmds[c], keys[key_index], lens[key_index]);
				key_index++;
			}
		}
		replies = palloc(sizeof(RedisReply *) * ncommands);
		ok = redis_execute(cmds, ncommands, replies, 0);

		if (ok)
		{
			Datum	   *elems;
			bool	   *elem_nulls;
			int			nelems;

			deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT,
							  &elems, &elem_nulls, &nelems);
			key_index = 0;
			for (c = 0; c < ncommands; c++)
			{
				RedisReply *reply = replies[c];
				size_t		j;

				if (reply->type == RC_REPLY_ERROR)
				{
					redis_report_reply_error(reply, "reading keys (MGET)", 0);
					break;
				}
				if (reply->type != RC_REPLY_ARRAY ||
					reply->elements != (size_t) cmds[c].nkeys)
					break;
				for (j = 0; j < reply->elements; j++)
				{
					text	   *t;

					while (nulls[key_index])
						key_index++;
					t = reply_to_text(reply->element[j], DatumGetTextPP(elems[key_index]));
					/* a miss while the worker owes this key an invalidation */
					if (t != NULL &&
						redis_key_pending(redis_cache_key_prefix ? redis_cache_key_prefix : "",
										  VARDATA_ANY(DatumGetTextPP(elems[key_index])),
										  VARSIZE_ANY_EXHDR(DatumGetTextPP(elems[key_index]))))
					{
						redis_stats_add(RC_STAT_BYPASSES, 1);
						t = NULL;
					}
					count_read(DatumGetTextPP(elems[key_index]), t != NULL);
					if (t != NULL)
					{
						values[key_index] = PointerGetDatum(t);
						result_nulls[key_index] = false;
					}
					key_index++;
				}
			}
		}
	}

	dims[0] = nkeys;
	PG_RETURN_ARRAYTYPE_P(construct_md_array(values, result_nulls, 1, dims, lbs,
											 TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * cache_delete_pattern(pattern text) RETURNS bigint
 *
 * SCAN MATCH key_prefix||pattern on every master (flush.c), UNLINK each
 * batch, leaving the keys reserved to the extension alone.  SCAN may miss keys created during the
 * iteration: this is a clean-up tool, not a guarantee.
 */
Datum
cache_delete_pattern(PG_FUNCTION_ARGS)
{
	text	   *pattern = PG_GETARG_TEXT_PP(0);
	const char *prefix = redis_cache_key_prefix ? redis_cache_key_prefix : "";
	bool		failed;
	int64		removed;

	redis_validate_key(VARDATA_ANY(pattern), VARSIZE_ANY_EXHDR(pattern), "pattern");
	/* on a fault: what was removed until then, the fault already reported */
	removed = redis_scan_unlink(prefix, VARDATA_ANY(pattern),
								VARSIZE_ANY_EXHDR(pattern), RC_SCAN_KEEP_RESERVED,
								NULL, 0, &failed);
	{
		StringInfoData glob;

		initStringInfo(&glob);
		redis_append_glob_escaped(&glob, prefix, strlen(prefix));
		appendBinaryStringInfo(&glob, VARDATA_ANY(pattern), VARSIZE_ANY_EXHDR(pattern));
		redis_local_invalidate_pattern(glob.data, glob.len);
	}
	redis_stats_add(RC_STAT_DELETES, removed);
	PG_RETURN_INT64(removed);
}

/*
 * cache_lock(name text, ttl_seconds int) RETURNS text: a random token when
 * the lock was taken (SET NX EX), NULL when it is held elsewhere or Redis is
 * unavailable.
 */
Datum
cache_lock(PG_FUNCTION_ARGS)
{
	text	   *name = PG_GETARG_TEXT_PP(0);
	int			ttl = PG_GETARG_INT32(1);
	size_t		klen;
	char	   *rkey;
	uint8		random_bytes[16];
	char		token[33];
	RedisCommand cmd;
	RedisReply *reply;
	int			i;

	rkey = redis_make_key(name, &klen);
	refuse_reserved_key(rkey, klen, "write");
	redis_check_ttl(ttl);
	if (!pg_strong_random(random_bytes, sizeof(random_bytes)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("redis_cache: could not generate a random lock token")));
	for (i = 0; i < 16; i++)
		snprintf(token + i * 2, 3, "%02x", random_bytes[i]);

	/* SET key token EX ttl NX (ttl is positive) */
	build_set(&cmd, rkey, klen, token, 32, ttl, true);
	reply = redis_run(&cmd, 0);
	redis_local_invalidate(rkey, klen);
	if (reply == NULL)
		PG_RETURN_NULL();
	if (reply->type == RC_REPLY_ERROR)
	{
		redis_report_reply_error(reply,
								 psprintf("taking lock \"%s\"", text_key_for_message(name)),
								 0);
		PG_RETURN_NULL();
	}
	if (reply->type != RC_REPLY_STATUS)
		PG_RETURN_NULL();			/* nil: held by somebody else */
	PG_RETURN_TEXT_P(cstring_to_text(token));
}

/*
 * cache_unlock(name text, token text) RETURNS boolean: true when the lock
 * was held with this token and is now released.
 */
Datum
cache_unlock(PG_FUNCTION_ARGS)
{
	text	   *name = PG_GETARG_TEXT_PP(0);
	text	   *token = PG_GETARG_TEXT_PP(1);
	size_t		klen;
	char	   *rkey = redis_make_key(name, &klen);
	const char *args[2];
	size_t		lens[2];
	RedisReply *reply;

	refuse_reserved_key(rkey, klen, "delete");
	/* the compare-and-delete of scripts.c, by its SHA-1 */
	args[0] = rkey;
	lens[0] = klen;
	args[1] = VARDATA_ANY(token);
	lens[1] = VARSIZE_ANY_EXHDR(token);
	reply = redis_run_script(RC_SCRIPT_UNLOCK, 1, 2, args, lens, 0);
	redis_local_invalidate(rkey, klen);
	if (reply == NULL)
		PG_RETURN_BOOL(false);
	if (reply->type == RC_REPLY_ERROR)
	{
		redis_report_reply_error(reply,
								 psprintf("releasing lock \"%s\"", text_key_for_message(name)),
								 0);
		PG_RETURN_BOOL(false);
	}
	PG_RETURN_BOOL(reply->type == RC_REPLY_INTEGER && reply->integer == 1);
}

/*
 * cache_ping() RETURNS text: 'PONG', or NULL when Redis cannot be reached
 * or answers something that is not valid text (NUL, invalid in the
 * database encoding: a protocol fault, with a rate-limited WARNING).
 * A health check must really probe, so it ignores an open circuit breaker.
 */
Datum
cache_ping(PG_FUNCTION_ARGS)
{
	RedisCommand cmd;
	RedisReply *reply;

	/* keyless: a Redis Cluster's first master (node 0) answers */
	redis_cmd_init(&cmd, "PING", 0);
	reply = redis_run(&cmd, RC_EXEC_SKIP_BREAKER);
	if (reply == NULL)
		PG_RETURN_NULL();
	if (reply->type == RC_REPLY_ERROR)
	{
		redis_report_reply_error(reply, "PING", 0);
		PG_RETURN_NULL();
	}
	if (reply->type != RC_REPLY_STATUS && reply->type != RC_REPLY_STRING)
		PG_RETURN_NULL();
	if (!pg_verifymbstr(reply->str, (int) reply->len, true))
	{
		/* NUL or invalid text: not a Redis, never into a text result */
		static TimestampTz last_warning = 0;

		redis_stats_add(RC_STAT_ERRORS_PROTOCOL, 1);
		if (redis_warning_due(&last_warning))
			ereport(WARNING,
					(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
					 errmsg("redis_cache: reply to PING from Redis at %s:%d is not valid %s text",
							redis_server_host(), redis_server_port(),
							GetDatabaseEncodingName()),
					 errdetail("Redis replied: %s",
							   redis_printable(reply->str, reply->len))));
		PG_RETURN_NULL();
	}
	PG_RETURN_TEXT_P(cstring_to_text_with_len(reply->str, (int) reply->len));
}
