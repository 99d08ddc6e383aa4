/*-------------------------------------------------------------------------
 *
 * query_cache.c
 *		  Query result caching: cache_query(), cache_query_json(),
 *		  cache_query_invalidate() and cache_query_key().
 *
 * Keys, all under redis_cache.key_prefix ("base" below is prefix||"query:"):
 *
 *		base||<db oid>:<role oid>:<sha256>		a result (hash: meta, deps, data)
 *		base||<db oid>:<role oid>:<sha256>:lock	stampede lock
 *		base||gen:<db oid>:<table oid>			a table's generation
 *		base||gen:ddl							generation of DDL and privileges
 *		base||deps:<db oid>:<table oid>			set of results that read a table
 *
 * The SHA-256 covers the query text, the parameters, the function (rows or
 * JSON), the resolved search_path and the settings that change how values
 * print.  The role is part of the key itself, so one role can never be
 * served another role's result, whatever the hash.
 *
 * No stale fill.  A miss reads the generations of every table the query
 * depends on (a Lua script that also gives never-seen tables a fresh,
 * time-based value) before the query takes its snapshot, and stores the
 * result with a Lua script that compares them again: a writer that
 * committed in between has bumped one (at its commit, after its rows were
 * visible), so the result is dropped instead of stored.  A hit is one Lua
 * script that returns the entry only if every generation it recorded is
 * still current.  A writer's commit bumps the generations and deletes the
 * results listed in the tables' dependency sets.
 *
 * Bypass.  A transaction at REPEATABLE READ or SERIALIZABLE, or one that
 * wrote a table the query reads, runs the query directly: its snapshot is
 * not the one a shared result was computed under.  Results that must not be
 * shared (temporary tables, row-level security, foreign tables; see
 * query_deps.c) are never stored.  A standby serves hits but does not fill.
 *
 * Stampede.  The first session to miss takes a lock (SET NX PX) in the same
 * script that found the miss; the others poll for the result until
 * redis_cache.query_lock_timeout_ms and then run the query themselves.
 *
 * Everything read from Redis is checked by query_format.c before use.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/jsonapi.h"
#include "common/sha1.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "parser/analyze.h"
#include "parser/parser.h"
#include "pgstat.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/plancache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "query_format.h"
#include "redis_cache.h"

PG_FUNCTION_INFO_V1(cache_query);
PG_FUNCTION_INFO_V1(cache_query_json);
PG_FUNCTION_INFO_V1(cache_query_invalidate);
PG_FUNCTION_INFO_V1(cache_query_key);

/*
 * Hit: KEYS entry, lock; ARGV base, mode (take|peek|none), token, lock ms.
 * Returns {1, meta, data} for a current entry, {2, f} lock taken, {3, f}
 * locked by another session, {0, f} plain miss.  A stale entry is deleted,
 * and so is a value that is not a hash (f = 1: the caller warns).
 */
static const char *lookup_script =
"local f = 0 "
"local t = redis.call('TYPE', KEYS[1]).ok "
"if t ~= 'none' and t ~= 'hash' then redis.call('UNLINK', KEYS[1]) f = 1 t = 'none' end "
"local e = {} "
"if t == 'hash' then e = redis.call('HMGET', KEYS[1], 'meta', 'deps', 'data') end "
"if e[1] and e[3] then "
"  local n = 0 "
"  local current = true "
"  for item, gen in string.gmatch(e[2] or '', '([^=,]+)=([^,]+)') do "
"    n = n + 1 "
"    if redis.call('GET', ARGV[1] .. 'gen:' .. item) ~= gen then current = false break end "
"  end "
"  if current and n > 0 then return {1, e[1], e[3]} end "
"  redis.call('UNLINK', KEYS[1]) "
"end "
"if ARGV[2] == 'take' then "
"  if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then return {2, f} end "
"  return {3, f} "
"elseif ARGV[2] == 'peek' and redis.call('EXISTS', KEYS[2]) == 1 then "
"  return {3, f} "
"end "
"return {0, f}";

/*
 * Generations: ARGV base, items.  A table never seen gets a time-based
 * value, so that a generation lost to eviction never comes back equal.
 */
static const char *generations_script =
"local t = redis.call('TIME') "
"local fresh = t[1] .. string.format('%06d', tonumber(t[2])) .. '000' "
"local r = {} "
"for i = 2, #ARGV do "
"  local k = ARGV[1] .. 'gen:' .. ARGV[i] "
"  local g = redis.call('GET', k) "
"  if not g then redis.call('SET', k, fresh) g = fresh end "
"  r[#r + 1] = g "
"end "
"return r";

/*
 * Store: KEYS entry, lock; ARGV base, token, ttl, meta, data, deps.
 * Stores only if every generation is unchanged; releases our lock.
 */
static const char *store_script =
"local stored = 0 "
"local current = true "
"for item, gen in string.gmatch(ARGV[6], '([^=,]+)=([^,]+)') do "
"  if redis.call('GET', ARGV[1] .. 'gen:' .. item) ~= gen then current = false break end "
"end "
"if current then "
"  local ttl = tonumber(ARGV[3]) "
"  redis.call('UNLINK', KEYS[1]) "
"  redis.call('HSET', KEYS[1], 'meta', ARGV[4], 'deps', ARGV[6], 'data', ARGV[5]) "
"  redis.call('EXPIRE', KEYS[1], ttl) "
"  for item in string.gmatch(ARGV[6], '([^=,]+)=') do "
"    if item ~= 'ddl' then "
"      local s = ARGV[1] .. 'deps:' .. item "
"      redis.call('SADD', s, KEYS[1]) "
"      if redis.call('TTL', s) < ttl then redis.call('EXPIRE', s, ttl) end "
"    end "
"  end "
"  stored = 1 "
"end "
"if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end "
"return stored";

/* Unlock: KEYS lock; ARGV token. */
static const char *unlock_script =
"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
"return 0";

/*
 * Invalidate: ARGV base, generation items.  Bumps each generation, deletes
 * the results recorded as reading it; returns how many were deleted.
 * A generation that does not exist is left alone: no stored result can
 * match it (the generations script creates it before any fill reads it).
 * Also sent at commit by invalidation.c.
 */
const char *redis_query_invalidate_script =
"local n = 0 "
"for i = 2, #ARGV do "
"  local g = ARGV[1] .. 'gen:' .. ARGV[i] "
"  if redis.call('EXISTS', g) == 1 then redis.call('INCR', g) end "
"  local s = ARGV[1] .. 'deps:' .. ARGV[i] "
"  local m = redis.call('SMEMBERS', s) "
"  for j = 1, #m, 1000 do "
"    n = n + redis.call('UNLINK', unpack(m, j, math.min(j + 999, #m))) "
"  end "
"  redis.call('UNLINK', s) "
"end "
"return n";

/* A script with its SHA-1, for EVALSHA. */
typedef struct QueryScript
{
	const char *const *body;
	char		sha1[SHA1_DIGEST_LENGTH * 2 + 1];
} QueryScript;

static QueryScript lookup_sha = {&lookup_script};
static QueryScript generations_sha = {&generations_script};
static QueryScript store_sha = {&store_script};
static QueryScript unlock_sha = {&unlock_script};

typedef enum LookupOutcome
{
	LOOKUP_MISS,				/* no entry (lock not asked for, or free) */
	LOOKUP_HIT,
	LOOKUP_LOCK_TAKEN,
	LOOKUP_LOCKED_ELSEWHERE,
	LOOKUP_FAULT				/* Redis failed: run without caching */
} LookupOutcome;

/* One call of cache_query() or cache_query_json(). */
typedef struct QueryCall
{
	RcqKind		kind;
	const char *query;
	int			nparams;
	Datum	   *param_values;	/* text, as given */
	bool	   *param_nulls;
	int			ttl;
	TupleDesc	expected;		/* rows: the column definition list */
	StringInfoData base;		/* prefix||"query:" */
	StringInfoData entry_key;
	StringInfoData lock_key;
	char		token[33];
	bool		holds_lock;
} QueryCall;

/* The query, prepared on a miss. */
typedef struct PreparedQuery
{
	SPIPlanPtr	plan;
	ParamListInfo params;
	QueryDependencies deps;
} PreparedQuery;

static TimestampTz last_decode_warning = 0;

static void warn_undecodable(QueryCall *call, const char *why);

/* ---- Redis scripts -------------------------------------------------------- */

/* bytes as lower-case hex into out (2n + 1 bytes), NUL-terminated */
static void
hex_encode_bytes(const uint8 *bytes, int n, char *out)
{
	out[hex_encode((const char *) bytes, n, out)] = '\0';
}

static void
digest(pg_cryptohash_type type, const void *data, size_t len, uint8 *out,
	   size_t outlen)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(type);

	if (ctx == NULL ||
		pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, data, len) < 0 ||
		pg_cryptohash_final(ctx, out, outlen) < 0)
	{
		const char *why = ctx ? pg_cryptohash_error(ctx) : "out of memory";

		pg_cryptohash_free(ctx);
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("redis_cache: could not compute a hash: %s", why)));
	}
	pg_cryptohash_free(ctx);
}

/*
 * Run a script by its SHA-1, loading it with EVAL when Redis does not know
 * it (first use, or after a restart or SCRIPT FLUSH).  args are the
 * arguments after the key count.  Returns NULL on a fault (reported).
 */
static RedisReply *
run_script(QueryScript *script, int nkeys, int nargs, const char **args,
		   size_t *lens, int flags)
{
	const char **argv = palloc(sizeof(char *) * (nargs + 3));
	size_t	   *argvlen = palloc(sizeof(size_t) * (nargs + 3));
	char		nkeys_str[12];
	RedisReply *reply;

	if (script->sha1[0] == '\0')
	{
		uint8		sha[SHA1_DIGEST_LENGTH];

		digest(PG_SHA1, *script->body, strlen(*script->body), sha, sizeof(sha));
		hex_encode_bytes(sha, SHA1_DIGEST_LENGTH, script->sha1);
	}
	snprintf(nkeys_str, sizeof(nkeys_str), "%d", nkeys);
	argv[0] = "EVALSHA";
	argvlen[0] = 7;
	argv[1] = script->sha1;
	argvlen[1] = SHA1_DIGEST_LENGTH * 2;
	argv[2] = nkeys_str;
	argvlen[2] = strlen(nkeys_str);
	memcpy(argv + 3, args, sizeof(char *) * nargs);
	memcpy(argvlen + 3, lens, sizeof(size_t) * nargs);

	reply = redis_command(flags, nargs + 3, argv, argvlen);
	if (reply != NULL && reply->type == RC_REPLY_ERROR &&
		reply->str != NULL && strncmp(reply->str, "NOSCRIPT", 8) == 0)
	{
		argv[0] = "EVAL";
		argvlen[0] = 4;
		argv[1] = *script->body;
		argvlen[1] = strlen(*script->body);
		reply = redis_command(flags, nargs + 3, argv, argvlen);
	}
	pfree(argv);
	pfree(argvlen);
	return reply;
}

/* A script's reply was a Redis error: report it, treat as a fault. */
static bool
script_failed(RedisReply *reply, const char *what)
{
	if (reply == NULL)
		return true;
	if (reply->type == RC_REPLY_ERROR)
	{
		redis_report_reply_error(reply, what, 0);
		return true;
	}
	return false;
}

/* ---- keys ------------------------------------------------------------------ */

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
 * Compute base, entry and lock keys of the call for the current role,
 * database, search_path and settings.
 */
static void
make_keys(QueryCall *call)
{
	StringInfoData input;
	uint8		sha[PG_SHA256_DIGEST_LENGTH];
	char		hex[PG_SHA256_DIGEST_LENGTH * 2 + 1];
	static const char *const settings[] = {
		"TimeZone", "DateStyle", "IntervalStyle", "extra_float_digits",
		"bytea_output", "standard_conforming_strings", "lc_monetary",
		"lc_numeric", "lc_time", "default_text_search_config",
		"timezone_abbreviations", "array_nulls"
	};
	List	   *path = fetch_search_path(true);
	ListCell   *lc;
	int			i;

	initStringInfo(&input);
	hash_append(&input, call->kind == RCQ_KIND_JSON ? "json" : "rows", 4);
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
	for (i = 0; i < lengthof(settings); i++)
		hash_append_setting(&input, settings[i]);
	hash_append(&input, call->query, strlen(call->query));
	for (i = 0; i < call->nparams; i++)
	{
		if (call->param_nulls[i])
			appendStringInfoString(&input, "\xff\xff\xff\xff");
		else
		{
			text	   *t = DatumGetTextPP(call->param_values[i]);

			hash_append(&input, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
		}
	}
	digest(PG_SHA256, input.data, input.len, sha, sizeof(sha));
	hex_encode_bytes(sha, PG_SHA256_DIGEST_LENGTH, hex);
	pfree(input.data);

	initStringInfo(&call->base);
	appendStringInfo(&call->base, "%squery:",
					 redis_cache_key_prefix ? redis_cache_key_prefix : "");
	initStringInfo(&call->entry_key);
	appendStringInfo(&call->entry_key, "%s%u:%u:%s",
					 call->base.data, MyDatabaseId, GetUserId(), hex);
	initStringInfo(&call->lock_key);
	appendStringInfo(&call->lock_key, "%s:lock", call->entry_key.data);
}

/* ---- arguments ------------------------------------------------------------- */

static void
read_arguments(FunctionCallInfo fcinfo, RcqKind kind, bool has_ttl,
			   QueryCall *call)
{
	memset(call, 0, sizeof(*call));
	call->kind = kind;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("redis_cache: query must not be NULL")));
	call->query = text_to_cstring(PG_GETARG_TEXT_PP(0));

	if (!PG_ARGISNULL(1))
	{
		ArrayType  *params = PG_GETARG_ARRAYTYPE_P(1);

		if (ARR_NDIM(params) > 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("redis_cache: params must be a one-dimensional text array"),
					 errhint("Pass ARRAY['a', 'b'] for $1 and $2.")));
		deconstruct_array(params, TEXTOID, -1, false, TYPALIGN_INT,
						  &call->param_values, &call->param_nulls,
						  &call->nparams);
	}

	/* cache_query_key() has a format there instead */
	if (has_ttl)
	{
		call->ttl = PG_ARGISNULL(2) ? redis_cache_default_ttl : PG_GETARG_INT32(2);
		redis_check_ttl(call->ttl);
	}
}

/* ---- preparing and running the query -------------------------------------- */

/*
 * Infer the types of $1..$n as the extended query protocol does (a first
 * analysis with variable parameters, in our memory), so that the query can
 * then be prepared with fixed types.
 */
static void
infer_parameter_types(const char *query, Oid **types, int *count)
{
	List	   *statements = raw_parser(query, RAW_PARSE_DEFAULT);

	if (list_length(statements) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("redis_cache: cache_query accepts exactly one SQL statement"),
				 errdetail("The text contains %d statements.", list_length(statements))));
	*types = NULL;
	*count = 0;
	(void) parse_analyze_varparams(linitial_node(RawStmt, statements), query,
								   types, count, NULL);
}

static const char *
command_name(CachedPlanSource *source)
{
	return GetCommandTagName(source->commandTag);
}

/*
 * Check that the prepared statement is one read-only query whose result
 * matches what the caller expects.
 */
static void
check_statement(QueryCall *call, SPIPlanPtr plan)
{
	List	   *sources = SPI_plan_get_plan_sources(plan);
	CachedPlanSource *source;
	Query	   *query;

	if (list_length(sources) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("redis_cache: cache_query accepts exactly one SQL statement"),
				 errdetail("The text contains %d statements.", list_length(sources))));
	source = linitial(sources);

	if (source->commandTag == CMDTAG_INSERT || source->commandTag == CMDTAG_UPDATE ||
		source->commandTag == CMDTAG_DELETE || source->commandTag == CMDTAG_MERGE)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("redis_cache: cache_query accepts only read-only queries"),
				 errdetail("The statement is %s.", command_name(source)),
				 errhint("Run data-modifying statements directly; their commit invalidates cached results.")));
	if (list_length(source->query_list) != 1 ||
		(query = linitial_node(Query, source->query_list))->commandType != CMD_SELECT ||
		query->utilityStmt != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("redis_cache: cache_query accepts only SELECT, TABLE and VALUES queries"),
				 errdetail("The statement is %s.", command_name(source))));
	if (query->hasModifyingCTE)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("redis_cache: cache_query accepts only read-only queries"),
				 errdetail("A WITH clause contains a data-modifying statement.")));
	if (query->rowMarks != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("redis_cache: cache_query accepts only read-only queries"),
				 errdetail("SELECT ... FOR UPDATE or FOR SHARE locks rows."),
				 errhint("Run locking queries directly.")));

	if (call->kind == RCQ_KIND_ROWS)
	{
		TupleDesc	result = source->resultDesc;
		int			i;

		if (result->natts != call->expected->natts)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("redis_cache: query result does not match the column definition list"),
					 errdetail("The query returns %d columns, the column definition list has %d.",
							   result->natts, call->expected->natts)));
		for (i = 0; i < result->natts; i++)
		{
			Oid			got = TupleDescAttr(result, i)->atttypid;
			Oid			want = TupleDescAttr(call->expected, i)->atttypid;

			if (got != want)
				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("redis_cache: query result does not match the column definition list"),
						 errdetail("Column %d (%s) is %s in the query and %s in the column definition list.",
								   i + 1, NameStr(TupleDescAttr(result, i)->attname),
								   format_type_be(got), format_type_be(want)),
						 errhint("Cast the column in the query, or change the column definition list.")));
		}
	}
}

/*
 * Parse, analyze and check the query, bind its parameters and find what
 * it depends on.  Must run inside SPI.
 */
static PreparedQuery *
prepare_query(QueryCall *call, Oid cache_function)
{
	PreparedQuery *pq = palloc0(sizeof(PreparedQuery));
	Oid		   *types;
	int			ntypes;
	int			i;

	infer_parameter_types(call->query, &types, &ntypes);
	if (ntypes != call->nparams)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg_plural("redis_cache: the query uses %d parameter but %d values were given",
							   "redis_cache: the query uses %d parameters but %d values were given",
							   ntypes, ntypes, call->nparams),
				 errhint("Pass one array element for each of $1, $2, ...")));
	for (i = 0; i < ntypes; i++)
		if (types[i] == InvalidOid || types[i] == UNKNOWNOID)
			ereport(ERROR,
					(errcode(ERRCODE_INDETERMINATE_DATATYPE),
					 errmsg("redis_cache: could not determine data type of parameter $%d", i + 1),
					 errhint("Add a cast, such as $%d::text.", i + 1)));

	pq->plan = SPI_prepare(call->query, ntypes, types);
	if (pq->plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	check_statement(call, pq->plan);

	pq->params = makeParamList(call->nparams);
	for (i = 0; i < call->nparams; i++)
	{
		ParamExternData *prm = &pq->params->params[i];
		Oid			typinput;
		Oid			typioparam;

		getTypeInputInfo(types[i], &typinput, &typioparam);
		prm->ptype = types[i];
		prm->pflags = PARAM_FLAG_CONST;
		prm->isnull = call->param_nulls[i];
		prm->value = prm->isnull ? (Datum) 0 :
			OidInputFunctionCall(typinput, TextDatumGetCString(call->param_values[i]),
								 typioparam, -1);
	}

	redis_query_dependencies(((CachedPlanSource *) linitial(SPI_plan_get_plan_sources(pq->plan)))->query_list,
							 cache_function, &pq->deps);
	return pq;
}

/* ---- lookups ----------------------------------------------------------------- */

/* The first three script arguments: KEYS entry and lock, then ARGV base. */
static void
set_key_arguments(QueryCall *call, const char **args, size_t *lens)
{
	args[0] = call->entry_key.data;
	lens[0] = call->entry_key.len;
	args[1] = call->lock_key.data;
	lens[1] = call->lock_key.len;
	args[2] = call->base.data;
	lens[2] = call->base.len;
}

static LookupOutcome
lookup(QueryCall *call, const char *mode, RedisReply **hit)
{
	char		lock_ms[16];
	const char *args[6];
	size_t		lens[6];
	RedisReply *reply;

	snprintf(lock_ms, sizeof(lock_ms), "%d", Max(redis_cache_query_lock_timeout_ms, 1));
	set_key_arguments(call, args, lens);
	args[3] = mode;
	lens[3] = strlen(mode);
	args[4] = call->token;
	lens[4] = strlen(call->token);
	args[5] = lock_ms;
	lens[5] = strlen(lock_ms);

	reply = run_script(&lookup_sha, 2, 6, args, lens, 0);
	if (script_failed(reply, "a cached query lookup"))
		return LOOKUP_FAULT;
	if (reply->type != RC_REPLY_ARRAY || reply->elements < 1 ||
		reply->element[0]->type != RC_REPLY_INTEGER)
		return LOOKUP_FAULT;
	if (reply->element[0]->integer != 1 && reply->elements > 1 &&
		reply->element[1]->type == RC_REPLY_INTEGER && reply->element[1]->integer == 1)
		warn_undecodable(call, "not a hash (deleted)");
	switch (reply->element[0]->integer)
	{
		case 1:
			if (reply->elements != 3 ||
				reply->element[1]->type != RC_REPLY_STRING ||
				reply->element[2]->type != RC_REPLY_STRING)
				return LOOKUP_FAULT;
			*hit = reply;
			return LOOKUP_HIT;
		case 2:
			call->holds_lock = true;
			return LOOKUP_LOCK_TAKEN;
		case 3:
			return LOOKUP_LOCKED_ELSEWHERE;
		default:
			return LOOKUP_MISS;
	}
}

static void
release_lock(QueryCall *call)
{
	const char *args[2] = {call->lock_key.data, call->token};
	size_t		lens[2] = {call->lock_key.len, strlen(call->token)};

	if (!call->holds_lock)
		return;
	call->holds_lock = false;
	(void) run_script(&unlock_sha, 1, 2, args, lens,
					  RC_EXEC_NO_ERROR | RC_EXEC_FAST_CONNECT);
}

static void
warn_undecodable(QueryCall *call, const char *why)
{
	redis_stats_add(RC_STAT_ERRORS_PROTOCOL, 1);
	if (!redis_warning_due(&last_decode_warning))
		return;
	ereport(WARNING,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("redis_cache: cached query result \"%s\" is unusable: %s",
					call->entry_key.data, why),
			 errdetail("The value is treated as a cache miss and replaced.")));
}

/* ---- rows: encode and decode -------------------------------------------------- */

/*
 * Types stored in their binary send format: parsing them is the bulk of a
 * hit's decoding otherwise.  Only types whose receive function validates
 * its input and does not convert from client_encoding (text-like types
 * do) qualify.
 */
static bool
use_binary_encoding(Oid type)
{
	switch (type)
	{
		case BOOLOID:
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case OIDOID:
		case FLOAT4OID:
		case FLOAT8OID:
		case NUMERICOID:
		case DATEOID:
		case TIMEOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
		case INTERVALOID:
		case UUIDOID:
			return true;
		default:
			return false;
	}
}

/*
 * Encode SPI's result as rows data; false when it exceeds max_value_bytes.
 */
static bool
encode_rows(SPITupleTable *table, uint64 nrows, StringInfo out)
{
	TupleDesc	desc = table->tupdesc;
	FmgrInfo   *output = palloc(sizeof(FmgrInfo) * desc->natts);
	bool	   *binary = palloc(sizeof(bool) * desc->natts);
	unsigned char word[4];
	MemoryContext row_context;
	MemoryContext old;
	uint64		r;
	int			c;

	if (nrows > PG_UINT32_MAX)
		return false;
	rcq_put_u32(word, (uint32) desc->natts);
	appendBinaryStringInfo(out, (char *) word, 4);
	for (c = 0; c < desc->natts; c++)
	{
		Oid			type = TupleDescAttr(desc, c)->atttypid;
		Oid			typoutput;
		bool		varlena;

		binary[c] = use_binary_encoding(type);
		if (binary[c])
			getTypeBinaryOutputInfo(type, &typoutput, &varlena);
		else
			getTypeOutputInfo(type, &typoutput, &varlena);
		fmgr_info(typoutput, &output[c]);
		rcq_put_u32(word, type);
		appendBinaryStringInfo(out, (char *) word, 4);
		rcq_put_u32(word, binary[c] ? RCQ_ENCODING_BINARY : RCQ_ENCODING_TEXT);
		appendBinaryStringInfo(out, (char *) word, 4);
	}
	rcq_put_u32(word, (uint32) nrows);
	appendBinaryStringInfo(out, (char *) word, 4);

	row_context = AllocSetContextCreate(CurrentMemoryContext, "redis_cache encode",
										ALLOCSET_SMALL_SIZES);
	for (r = 0; r < nrows; r++)
	{
		HeapTuple	tuple = table->vals[r];

		old = MemoryContextSwitchTo(row_context);
		for (c = 0; c < desc->natts; c++)
		{
			bool		isnull;
			Datum		value = heap_getattr(tuple, c + 1, desc, &isnull);
			char	   *str;
			size_t		len;

			if (isnull)
			{
				rcq_put_u32(word, RCQ_NULL_LENGTH);
				appendBinaryStringInfo(out, (char *) word, 4);
				continue;
			}
			if (binary[c])
			{
				bytea	   *bytes = SendFunctionCall(&output[c], value);

				str = VARDATA(bytes);
				len = VARSIZE(bytes) - VARHDRSZ;
			}
			else
			{
				str = OutputFunctionCall(&output[c], value);
				len = strlen(str);
			}
			rcq_put_u32(word, (uint32) len);
			appendBinaryStringInfo(out, (char *) word, 4);
			appendBinaryStringInfo(out, str, len);
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(row_context);
		if (out->len > redis_cache_max_value_bytes)
		{
			MemoryContextDelete(row_context);
			return false;
		}
	}
	MemoryContextDelete(row_context);
	return true;
}

/*
 * Decode a hit into the tuplestore.  Returns NULL on success, else why the
 * entry cannot be used (nothing was added then).  A result of another shape
 * than the column definition list (the list changed) is reported as
 * "shape", not as damage.
 */
static const char *
decode_rows(QueryCall *call, const char *data, size_t len,
			Tuplestorestate *store)
{
	TupleDesc	desc = call->expected;
	RcqRows		rows;
	RcqStatus	status = rcq_rows_open(data, len, &rows);
	FmgrInfo   *input;
	bool	   *binary;
	Oid		   *ioparams;
	Datum	   *values;
	bool	   *nulls;
	const unsigned char *pos;
	StringInfoData cell;
	MemoryContext row_context;
	MemoryContext old;
	uint32		r;
	uint32		c;

	if (status != RCQ_OK)
		return rcq_status_message(status);
	if (rows.ncolumns != (uint32) desc->natts)
		return "shape";
	binary = palloc(sizeof(bool) * desc->natts);
	for (c = 0; c < rows.ncolumns; c++)
	{
		Oid			type = TupleDescAttr(desc, c)->atttypid;

		if (rcq_column_type(&rows, c) != type)
			return "shape";
		binary[c] = rcq_column_encoding(&rows, c) == RCQ_ENCODING_BINARY;
		if (binary[c] != use_binary_encoding(type))
			return "a column is not in the encoding its type uses";
	}

	/* text must be valid before any input function sees it */
	pos = rows.cells;
	for (r = 0; r < rows.nrows; r++)
	{
		for (c = 0; c < rows.ncolumns; c++)
		{
			const char *value;
			uint32		vlen;

			if (!rcq_next_cell(&pos, &value, &vlen) && !binary[c] &&
				!pg_verifymbstr(value, (int) vlen, true))
				return "a value is not valid text in the database encoding";
		}
	}

	input = palloc(sizeof(FmgrInfo) * desc->natts);
	ioparams = palloc(sizeof(Oid) * desc->natts);
	values = palloc(sizeof(Datum) * desc->natts);
	nulls = palloc(sizeof(bool) * desc->natts);
	for (c = 0; c < rows.ncolumns; c++)
	{
		Oid			typinput;

		if (binary[c])
			getTypeBinaryInputInfo(TupleDescAttr(desc, c)->atttypid, &typinput, &ioparams[c]);
		else
			getTypeInputInfo(TupleDescAttr(desc, c)->atttypid, &typinput, &ioparams[c]);
		fmgr_info(typinput, &input[c]);
	}

	initStringInfo(&cell);
	row_context = AllocSetContextCreate(CurrentMemoryContext, "redis_cache decode",
										ALLOCSET_SMALL_SIZES);
	pos = rows.cells;
	for (r = 0; r < rows.nrows; r++)
	{
		old = MemoryContextSwitchTo(row_context);
		for (c = 0; c < rows.ncolumns; c++)
		{
			const char *value;
			uint32		vlen;

			nulls[c] = rcq_next_cell(&pos, &value, &vlen) != 0;
			if (nulls[c])
			{
				values[c] = binary[c] ?
					ReceiveFunctionCall(&input[c], NULL, ioparams[c], -1) :
					InputFunctionCall(&input[c], NULL, ioparams[c], -1);
				continue;
			}
			resetStringInfo(&cell);
			appendBinaryStringInfo(&cell, value, (int) vlen);
			if (!binary[c])
			{
				values[c] = InputFunctionCall(&input[c], cell.data, ioparams[c], -1);
				continue;
			}
			/* as exec_bind_message() does: every byte must be consumed */
			values[c] = ReceiveFunctionCall(&input[c], &cell, ioparams[c], -1);
			if (cell.cursor != cell.len)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_CORRUPTED),
						 errmsg("redis_cache: cached query result \"%s\" has a malformed binary value in column %u",
								call->entry_key.data, c + 1)));
		}
		tuplestore_putvalues(store, desc, values, nulls);
		MemoryContextSwitchTo(old);
		MemoryContextReset(row_context);
	}
	MemoryContextDelete(row_context);
	pfree(cell.data);
	return NULL;
}

/* ---- JSON: encode and decode ----------------------------------------------- */

static void
encode_json(SPITupleTable *table, uint64 nrows, StringInfo out)
{
	TupleDesc	desc = table->tupdesc;
	MemoryContext row_context;
	MemoryContext old;
	uint64		r;

	BlessTupleDesc(desc);
	appendStringInfoChar(out, '[');
	row_context = AllocSetContextCreate(CurrentMemoryContext, "redis_cache json",
										ALLOCSET_SMALL_SIZES);
	for (r = 0; r < nrows; r++)
	{
		text	   *row;

		old = MemoryContextSwitchTo(row_context);
		row = DatumGetTextPP(DirectFunctionCall1(row_to_json,
												 heap_copy_tuple_as_datum(table->vals[r], desc)));
		MemoryContextSwitchTo(old);
		if (r > 0)
			appendStringInfoChar(out, ',');
		appendBinaryStringInfo(out, VARDATA_ANY(row), VARSIZE_ANY_EXHDR(row));
		MemoryContextReset(row_context);
	}
	MemoryContextDelete(row_context);
	appendStringInfoChar(out, ']');
}

/*
 * JSON text from Redis to jsonb: NULL when it is not valid (why in *why).
 * pg_parse_json reports errors instead of raising them.
 */
static Datum
decode_json(const char *data, size_t len, const char **why)
{
	JsonLexContext *lex;

	if (len == 0 || data[0] != '[')
	{
		*why = "not a JSON array";
		return (Datum) 0;
	}
	if (!pg_verifymbstr(data, (int) len, true))
	{
		*why = "not valid text in the database encoding";
		return (Datum) 0;
	}
	lex = makeJsonLexContextCstringLen((char *) data, (int) len,
									   GetDatabaseEncoding(), true);
	if (pg_parse_json(lex, &nullSemAction) != JSON_SUCCESS)
	{
		*why = "not valid JSON";
		return (Datum) 0;
	}
	*why = NULL;
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(data));
}

/* ---- the call -------------------------------------------------------------- */

static void
count_lookup(bool hit)
{
	redis_stats_add(hit ? RC_STAT_HITS : RC_STAT_MISSES, 1);
	redis_stats_family("query:", 6, hit ? RC_FAM_HITS : RC_FAM_MISSES);
}

/*
 * Use a hit.  Returns true when it was decoded into *result (JSON) or the
 * tuplestore (rows).
 */
static bool
use_hit(QueryCall *call, RedisReply *reply, Tuplestorestate *store,
		Datum *result)
{
	RedisReply *meta = reply->element[1];
	RedisReply *data = reply->element[2];
	RcqKind		kind;
	RcqStatus	status = rcq_check_meta(meta->str, meta->len, data->str,
										data->len, &kind);
	const char *why = NULL;

	if (status != RCQ_OK)
		why = rcq_status_message(status);
	else if (kind != call->kind)
		why = "a result of the other kind";
	else if (kind == RCQ_KIND_JSON)
		*result = decode_json(data->str, data->len, &why);
	else
		why = decode_rows(call, data->str, data->len, store);

	if (why == NULL)
		return true;
	if (strcmp(why, "shape") != 0)
		warn_undecodable(call, why);
	return false;
}

/*
 * Wait for the session holding the lock to store the result.  Returns the
 * outcome of the last look: HIT, MISS (lock released without a result, or
 * timeout: run it ourselves) or FAULT.
 */
static LookupOutcome
wait_for_result(QueryCall *call, RedisReply **hit)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   redis_cache_query_lock_timeout_ms);
	long		delay = 2;

	for (;;)
	{
		LookupOutcome outcome;
		long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);

		if (left <= 0)
			return LOOKUP_MISS;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(delay, left), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();

		outcome = lookup(call, "peek", hit);
		if (outcome != LOOKUP_LOCKED_ELSEWHERE)
			return outcome;
		delay = Min(delay * 2, 50);
	}
}

/*
 * Generations of deps now, as "item=gen,...", including the DDL one.
 * NULL on a fault.
 */
static char *
read_generations(QueryCall *call, const QueryDependencies *deps)
{
	int			nitems = deps->nrelids + 1;
	const char **args = palloc(sizeof(char *) * (nitems + 1));
	size_t	   *lens = palloc(sizeof(size_t) * (nitems + 1));
	RedisReply *reply;
	StringInfoData out;
	int			i;

	args[0] = call->base.data;
	lens[0] = call->base.len;
	for (i = 0; i < deps->nrelids; i++)
		args[i + 1] = redis_query_generation_item(deps->relids[i]);
	args[nitems] = RC_DDL_GENERATION;
	for (i = 1; i <= nitems; i++)
		lens[i] = strlen(args[i]);

	reply = run_script(&generations_sha, 0, nitems + 1, args, lens, 0);
	if (script_failed(reply, "reading query result generations"))
		return NULL;
	if (reply->type != RC_REPLY_ARRAY || reply->elements != (size_t) nitems)
		return NULL;
	initStringInfo(&out);
	for (i = 0; i < nitems; i++)
	{
		RedisReply *gen = reply->element[i];

		if (gen->type != RC_REPLY_STRING || gen->len == 0 ||
			strcspn(gen->str, "=,") != gen->len)
			return NULL;
		appendStringInfo(&out, "%s%s=%s", i > 0 ? "," : "", args[i + 1], gen->str);
	}
	return out.data;
}

static void
store(QueryCall *call, const char *deps, StringInfo data)
{
	char		meta[RCQ_META_MAX + 1];
	char		ttl[16];
	const char *args[8];
	size_t		lens[8];
	RedisReply *reply;

	snprintf(ttl, sizeof(ttl), "%d", call->ttl);
	set_key_arguments(call, args, lens);
	args[3] = call->token;
	lens[3] = strlen(call->token);
	args[4] = ttl;
	lens[4] = strlen(ttl);
	lens[5] = rcq_format_meta(meta, sizeof(meta), call->kind, data->data, data->len);
	args[5] = meta;
	args[6] = data->data;
	lens[6] = data->len;
	args[7] = deps;
	lens[7] = strlen(deps);

	reply = run_script(&store_sha, 2, 8, args, lens, 0);
	call->holds_lock = false;
	if (script_failed(reply, "storing a query result"))
		return;
	if (reply->type == RC_REPLY_INTEGER && reply->integer == 1)
	{
		redis_stats_add(RC_STAT_SETS, 1);
		redis_stats_family("query:", 6, RC_FAM_SETS);
	}
}

/*
 * The body of cache_query() and cache_query_json(): a hit from Redis, or
 * the query run (and its result stored when allowed).  For rows, the
 * result goes into the tuplestore; for JSON it is returned.
 */
static Datum
run_cached_query(FunctionCallInfo fcinfo, QueryCall *call,
				 Tuplestorestate *store_rows)
{
	MemoryContext caller_context = CurrentMemoryContext;
	Oid			cache_function = fcinfo->flinfo->fn_oid;
	bool		use_cache = redis_cache_enabled && !IsolationUsesXactSnapshot();
	/* a result may read this transaction's uncommitted rows (functions) */
	bool		may_store = !RecoveryInProgress() && !redis_query_xact_has_writes();
	PreparedQuery *pq = NULL;
	RedisReply *hit = NULL;
	LookupOutcome outcome = LOOKUP_FAULT;
	Datum		result = (Datum) 0;
	volatile bool connected = false;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	connected = true;

	PG_TRY();
	{
		char	   *generations = NULL;
		StringInfoData payload;
		bool		payload_fits = false;
		int			ret;

		/* own uncommitted writes: the shared result is not for us */
		if (use_cache && redis_query_xact_has_writes())
		{
			pq = prepare_query(call, cache_function);
			if (redis_query_xact_wrote_any(&pq->deps))
				use_cache = false;
		}

		if (use_cache)
		{
			uint8		random_bytes[16];
			const char *mode = "none";

			make_keys(call);
			if (may_store && redis_cache_query_lock_timeout_ms > 0)
			{
				if (!pg_strong_random(random_bytes, sizeof(random_bytes)))
					ereport(ERROR,
							(errcode(ERRCODE_INTERNAL_ERROR),
							 errmsg("redis_cache: could not generate a random lock token")));
				hex_encode_bytes(random_bytes, sizeof(random_bytes), call->token);
				mode = "take";
			}
			outcome = lookup(call, mode, &hit);
			if (outcome == LOOKUP_LOCKED_ELSEWHERE)
				outcome = wait_for_result(call, &hit);
			if (outcome == LOOKUP_HIT)
			{
				MemoryContext old = MemoryContextSwitchTo(caller_context);
				bool		decoded = use_hit(call, hit, store_rows, &result);

				MemoryContextSwitchTo(old);
				if (decoded)
				{
					count_lookup(true);
					SPI_finish();
					connected = false;
				}
				else
					outcome = LOOKUP_MISS;
			}
		}

		if (connected)
		{
			if (pq == NULL)
				pq = prepare_query(call, cache_function);
			count_lookup(false);
			if (outcome == LOOKUP_FAULT || pq->deps.not_cacheable != NULL || !may_store)
			{
				if (pq->deps.not_cacheable != NULL)
					ereport(DEBUG1,
							(errmsg_internal("redis_cache: result not cached: %s",
											 pq->deps.not_cacheable)));
				release_lock(call);
			}
			else
			{
				/* registered first: writers from now on bump */
				redis_query_register_tables(&pq->deps);
				if (redis_cache_shared != NULL &&
					redis_register_namespace(redis_cache_key_prefix ? redis_cache_key_prefix : "") < 0)
					generations = NULL;
				else
					generations = read_generations(call, &pq->deps);
				if (generations == NULL)
					release_lock(call);
			}

			/* after reading the generations: a new snapshot */
			{
				SPIExecuteOptions options;

				memset(&options, 0, sizeof(options));
				options.params = pq->params;
				options.read_only = false;
				ret = SPI_execute_plan_extended(pq->plan, &options);
				if (ret != SPI_OK_SELECT)
					elog(ERROR, "SPI_execute_plan_extended returned %s",
						 SPI_result_code_string(ret));
			}

			initStringInfo(&payload);
			if (call->kind == RCQ_KIND_ROWS)
			{
				uint64		i;

				for (i = 0; i < SPI_processed; i++)
					tuplestore_puttuple(store_rows, SPI_tuptable->vals[i]);
				if (generations != NULL)
					payload_fits = encode_rows(SPI_tuptable, SPI_processed, &payload);
			}
			else
			{
				MemoryContext old;

				encode_json(SPI_tuptable, SPI_processed, &payload);
				payload_fits = payload.len <= redis_cache_max_value_bytes;
				old = MemoryContextSwitchTo(caller_context);
				result = DirectFunctionCall1(jsonb_in, CStringGetDatum(payload.data));
				MemoryContextSwitchTo(old);
			}

			if (generations != NULL && payload_fits)
				store(call, generations, &payload);
			else
			{
				if (generations != NULL)
					ereport(DEBUG1,
							(errmsg_internal("redis_cache: result of %d bytes not cached: larger than redis_cache.max_value_bytes",
											 payload.len)));
				release_lock(call);
			}
			SPI_finish();
			connected = false;
		}
	}
	PG_CATCH();
	{
		/* let the sessions waiting for this result go on at once */
		if (call->holds_lock)
		{
			MemoryContext error_context = MemoryContextSwitchTo(caller_context);

			HOLD_INTERRUPTS();
			release_lock(call);
			RESUME_INTERRUPTS();
			MemoryContextSwitchTo(error_context);
		}
		PG_RE_THROW();
	}
	PG_END_TRY();
	return result;
}

/*
 * cache_query(query text, params text[], ttl_seconds int) RETURNS SETOF record
 */
Datum
cache_query(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	QueryCall	call;

	read_arguments(fcinfo, RCQ_KIND_ROWS, true, &call);
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	call.expected = rsinfo->setDesc;
	(void) run_cached_query(fcinfo, &call, rsinfo->setResult);
	return (Datum) 0;
}

/*
 * cache_query_json(query text, params text[], ttl_seconds int) RETURNS jsonb
 */
Datum
cache_query_json(PG_FUNCTION_ARGS)
{
	QueryCall	call;

	read_arguments(fcinfo, RCQ_KIND_JSON, true, &call);
	PG_RETURN_DATUM(run_cached_query(fcinfo, &call, NULL));
}

/*
 * cache_query_key(query text, params text[], format text) RETURNS text:
 * the Redis key of a result for the current role, so that applications can
 * read cache_query_json() results with HGET key data.
 */
Datum
cache_query_key(PG_FUNCTION_ARGS)
{
	QueryCall	call;
	RcqKind		kind = RCQ_KIND_JSON;

	if (!PG_ARGISNULL(2))
	{
		char	   *format = text_to_cstring(PG_GETARG_TEXT_PP(2));

		if (strcmp(format, "rows") == 0)
			kind = RCQ_KIND_ROWS;
		else if (strcmp(format, "json") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("redis_cache: unknown result format \"%s\"", format),
					 errhint("Use 'json' for cache_query_json() or 'rows' for cache_query().")));
	}
	read_arguments(fcinfo, kind, false, &call);
	make_keys(&call);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(call.entry_key.data, call.entry_key.len));
}

/*
 * cache_query_invalidate(tbl regclass) RETURNS bigint: end every cached
 * result that read the table (or a table inheriting from it), now, in
 * every namespace known to this server.  Returns how many were deleted.
 */
Datum
cache_query_invalidate(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	List	   *tables;
	List	   *prefixes = NIL;
	const char *current = redis_cache_key_prefix ? redis_cache_key_prefix : "";
	ListCell   *lc;
	int64		removed = 0;
	int			nargs;
	const char **args;
	size_t	   *lens;
	int			i;

	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("redis_cache: relation with OID %u does not exist", relid)));
	if (pg_class_aclcheck(relid, GetUserId(),
						  ACL_INSERT | ACL_UPDATE | ACL_DELETE | ACL_TRUNCATE) != ACLCHECK_OK &&
		!pg_class_ownercheck(relid, GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("redis_cache: permission denied to invalidate cached results of %s",
						get_rel_name(relid)),
				 errhint("Invalidating needs a privilege to change the table: INSERT, UPDATE, DELETE or TRUNCATE.")));

	tables = find_all_inheritors(relid, AccessShareLock, NULL);
	nargs = list_length(tables) + 1;
	args = palloc(sizeof(char *) * nargs);
	lens = palloc(sizeof(size_t) * nargs);
	i = 1;
	foreach(lc, tables)
	{
		args[i] = redis_query_generation_item(lfirst_oid(lc));
		lens[i] = strlen(args[i]);
		i++;
	}

	prefixes = lappend(prefixes, pstrdup(current));
	if (redis_cache_shared != NULL)
	{
		LWLockAcquire(redis_cache_shared->lock, LW_SHARED);
		for (i = 0; i < redis_cache_shared->nnamespaces; i++)
			if (strcmp(redis_cache_shared->namespaces[i].prefix, current) != 0)
				prefixes = lappend(prefixes, pstrdup(redis_cache_shared->namespaces[i].prefix));
		LWLockRelease(redis_cache_shared->lock);
	}

	foreach(lc, prefixes)
	{
		char	   *base = psprintf("%squery:", (char *) lfirst(lc));
		RedisCommand command;
		RedisReply *reply = NULL;

		args[0] = base;
		lens[0] = strlen(base);
		command.argc = nargs + 3;
		command.argv = palloc(sizeof(char *) * (nargs + 3));
		command.argvlen = palloc(sizeof(size_t) * (nargs + 3));
		command.argv[0] = "EVAL";
		command.argv[1] = redis_query_invalidate_script;
		command.argv[2] = "0";
		command.argvlen[0] = 4;
		command.argvlen[1] = strlen(redis_query_invalidate_script);
		command.argvlen[2] = 1;
		memcpy(command.argv + 3, args, sizeof(char *) * nargs);
		memcpy(command.argvlen + 3, lens, sizeof(size_t) * nargs);

		/* other namespaces are bookkeeping: no version check of theirs */
		if (!redis_execute(&command, 1, &reply,
						   strcmp(lfirst(lc), current) == 0 ? 0 : RC_EXEC_INTERNAL))
			PG_RETURN_NULL();
		if (script_failed(reply, "invalidating cached query results"))
			PG_RETURN_NULL();
		if (reply->type == RC_REPLY_INTEGER)
			removed += reply->integer;
	}
	redis_stats_add(RC_STAT_DELETES, removed);
	PG_RETURN_INT64(removed);
}
