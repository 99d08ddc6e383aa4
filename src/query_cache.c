/*-------------------------------------------------------------------------
 *
 * query_cache.c
 *		  Query result caching: cache_query(), cache_query_json(),
 *		  cache_query_invalidate() and cache_query_key().
 *
 * Keys, all under redis_cache.key_prefix ("base" below is
 * prefix||"query:{<system identifier>.<timeline>}:", keys.c; the braces
 * are the Redis Cluster hashtag that puts them all in one slot):
 *
 *		base||<db oid>:<role oid>:<sha256>		a result (hash: meta, deps, data)
 *		base||<db oid>:<role oid>:<sha256>:lock	stampede lock
 *		base||gen:<db oid>:<table oid>			a table's generation
 *		base||gen:ddl							generation of DDL and privileges
 *		base||gen:ddl:<db oid>					generation of a database's DDL
 *		base||deps:<db oid>:<table oid>			set of results that read a table
 *		base||deps-dead:<stamp>:<db>:<table>	such a set moved aside, draining
 *		base||deps-dead							list of the sets moved aside
 *
 * The SHA-256 covers the query text, the parameters, the function (rows or
 * JSON), the resolved search_path and the settings that change a result
 * (keys.c).  The role is part of the key itself, so one role can never be
 * served another role's result, whatever the hash.
 *
 * No stale fill.  A miss reads the generations of every table the query
 * depends on (a Lua script that also gives never-seen tables a fresh,
 * time-based value) before the query takes its snapshot, and stores the
 * result with a Lua script that compares them again: a writer that
 * committed in between has bumped one (at its commit, after its rows were
 * visible), so the result is dropped instead of stored.  A hit is one Lua
 * script that returns the entry only if every generation it recorded is
 * still current (a stale one is deleted).  Every key a script touches is
 * declared (scripts.c), so the lookup is given the generation keys of the
 * tables the query reads: this backend remembers them per query shape
 * (keys.c: everything in the key but the parameters) from the last time it
 * prepared the query or was served a hit.  A shape not known yet looks up
 * with the DDL generations only and learns the tables from the entry, if
 * there is one, in a second round trip (lookup()): the query is still not
 * planned before the lookup, which takes the stampede lock.  An entry
 * recording a table not declared by a shape that is known (the tables
 * changed since, by DDL, which ends the entry anyway) is stale: deleted, a
 * miss, and the miss prepares the query again.  A writer's commit bumps the
 * generations and deletes the results listed in the tables' dependency
 * sets, at most 1000 per script (a set too large is moved aside and
 * drained by later invalidations; scripts.c), so that Redis is never
 * blocked long.
 *
 * Bypass.  A transaction at REPEATABLE READ or SERIALIZABLE, or one that
 * wrote a table the query reads, runs the query directly: its snapshot is
 * not the one a shared result was computed under.  Results that may depend
 * on anything outside the key are never stored (query_deps.c: temporary,
 * foreign and row-level security tables, sequences, system catalogs,
 * functions of the database that are not IMMUTABLE, volatile functions,
 * the clock, the session, current_setting()), so no hit can serve them.
 * A standby serves hits but does not fill.
 *
 * Stampede.  The first session to miss takes a lock (SET NX PX) in the same
 * script that found the miss; the others poll for the result until
 * redis_cache.query_lock_timeout_ms and then run the query themselves.  A
 * holder that fails releases the lock (in PG_CATCH, also when it was
 * interrupted before the reply to its take arrived), and one poller takes
 * it over.  The lock's token names the holder's server, backend and
 * transaction: a poller of the same server takes over the lock of a holder
 * that has gone or moved on without releasing it (Redis was unreachable).
 *
 * Everything read from Redis is checked by query_format.c before use.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "access/detoast.h"
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
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
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
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "query_format.h"
#include "redis_cache.h"

PG_FUNCTION_INFO_V1(cache_query);
PG_FUNCTION_INFO_V1(cache_query_json);
PG_FUNCTION_INFO_V1(cache_query_invalidate);
PG_FUNCTION_INFO_V1(cache_query_key);

typedef enum LookupOutcome
{
	LOOKUP_MISS,				/* no entry (lock not asked for, or free) */
	LOOKUP_HIT,
	LOOKUP_LOCK_TAKEN,
	LOOKUP_LOCKED_ELSEWHERE,
	LOOKUP_FAULT,				/* Redis failed: run without caching */
	LOOKUP_LEARN				/* lookup_once(): the entry names its tables */
} LookupOutcome;

/* At most this many items are taken from an entry (foreign data). */
#define RC_MAX_ENTRY_ITEMS		10000

/*
 * A lock token: system identifier, postmaster start time, PID and local
 * transaction id of the holder (so that a waiter of the same server can
 * tell that the holder gave up), then 128 random bits.
 */
#define RC_LOCK_TOKEN_LEN	(16 + 1 + 16 + 1 + 10 + 1 + 8 + 1 + 32 + 1)

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
	StringInfoData base;		/* redis_query_base(prefix) */
	StringInfoData entry_key;
	StringInfoData lock_key;
	char		shape[RC_QUERY_SHAPE_LEN];	/* "" until make_keys() */
	int			nitems;			/* dependency items: tables, "ddl:<db>", "ddl" */
	char	  **items;
	char	  **gen_keys;		/* base||gen:item, in items order */
	bool		learning;		/* items not known: only the DDL ones */
	char		token[RC_LOCK_TOKEN_LEN];
	bool		holds_lock;		/* the lock may be ours: release it */
	RedisLocalFill *local_fill; /* the local cache's snapshot, or NULL */
	int			local_nitems;	/* the items local_fill depends on */
	char	  **local_gen_keys;
	int64		entry_pttl;		/* read with a lookup for local_fill */
} QueryCall;

/* The query, prepared on a miss. */
typedef struct PreparedQuery
{
	SPIPlanPtr	plan;
	ParamListInfo params;
	QueryDependencies deps;
} PreparedQuery;

static TimestampTz last_decode_warning = 0;

/* redis_cache.query_lock_timeout_ms */
static int	query_lock_timeout_ms = 5000;

/*
 * The dependency items of the query shapes this backend prepared or was
 * served (shape -> items), so that a lookup can declare their generation
 * keys in one round trip.  Forgotten all at once when full: one more
 * learning lookup per shape.
 */
#define RC_MAX_KNOWN_SHAPES		1024

typedef struct KnownShape
{
	char		shape[RC_QUERY_SHAPE_LEN];	/* hash key */
	int			nitems;
	char	  **items;			/* in known_shapes_context */
} KnownShape;

static HTAB *known_shapes = NULL;
static MemoryContext known_shapes_context = NULL;

static void warn_undecodable(QueryCall *call, const char *why);

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

/*
 * Compute base, entry and lock keys of the call (keys.c hashes everything
 * the result depends on).
 */
static void
make_keys(QueryCall *call)
{
	initStringInfo(&call->base);
	appendStringInfoString(&call->base,
						   redis_query_base(redis_cache_key_prefix ? redis_cache_key_prefix : ""));
	initStringInfo(&call->entry_key);
	appendStringInfoString(&call->entry_key,
						   redis_query_entry_key(call->base.data,
												 call->kind == RCQ_KIND_JSON ? "json" : "rows",
												 call->query, call->nparams,
												 call->param_values,
												 call->param_nulls,
												 call->shape));
	initStringInfo(&call->lock_key);
	appendStringInfoString(&call->lock_key,
						   redis_query_lock_key(call->entry_key.data));
}

/* ---- dependency items ------------------------------------------------------ */

/*
 * Use items (copied) as the call's dependency items, with their generation
 * keys.
 */
static void
set_items(QueryCall *call, int nitems, char *const *items)
{
	int			i;

	call->nitems = nitems;
	call->items = palloc(sizeof(char *) * nitems);
	call->gen_keys = palloc(sizeof(char *) * nitems);
	for (i = 0; i < nitems; i++)
	{
		call->items[i] = pstrdup(items[i]);
		call->gen_keys[i] = redis_query_gen_key(call->base.data, items[i],
												strlen(items[i]));
	}
}

/*
 * The shape of the call remembers the call's items (see known_shapes).
 */
static void
remember_items(QueryCall *call)
{
	KnownShape *known;
	bool		found;
	MemoryContext old;
	int			i;

	if (call->shape[0] == '\0')
		return;
	if (known_shapes != NULL && hash_get_num_entries(known_shapes) >= RC_MAX_KNOWN_SHAPES)
	{
		/* the table lives in the context: both go */
		MemoryContextReset(known_shapes_context);
		known_shapes = NULL;
	}
	if (known_shapes == NULL)
	{
		HASHCTL		ctl;

		if (known_shapes_context == NULL)
			known_shapes_context = AllocSetContextCreate(TopMemoryContext,
														 "redis_cache query shapes",
														 ALLOCSET_DEFAULT_SIZES);
		ctl.keysize = RC_QUERY_SHAPE_LEN;
		ctl.entrysize = sizeof(KnownShape);
		ctl.hcxt = known_shapes_context;
		known_shapes = hash_create("redis_cache query shapes", 64, &ctl,
								   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
	known = hash_search(known_shapes, call->shape, HASH_ENTER, &found);
	old = MemoryContextSwitchTo(known_shapes_context);
	if (found)
	{
		for (i = 0; i < known->nitems; i++)
			pfree(known->items[i]);
		pfree(known->items);
	}
	known->nitems = call->nitems;
	known->items = palloc(sizeof(char *) * call->nitems);
	for (i = 0; i < call->nitems; i++)
		known->items[i] = pstrdup(call->items[i]);
	MemoryContextSwitchTo(old);
}

/*
 * The call's items are those of the prepared query: its tables, then the
 * database's DDL item and "ddl" (every result depends on both); the shape
 * remembers them.
 */
static void
set_items_from_deps(QueryCall *call, const QueryDependencies *deps)
{
	int			nitems = deps->nrelids + 2;
	char	  **items = palloc(sizeof(char *) * nitems);
	int			i;

	for (i = 0; i < deps->nrelids; i++)
		items[i] = redis_query_generation_item(deps->relids[i]);
	items[nitems - 2] = redis_query_database_ddl_item();
	items[nitems - 1] = RC_DDL_GENERATION;
	set_items(call, nitems, items);
	call->learning = false;
	remember_items(call);
}

/*
 * Items of a call whose tables are not known: the DDL ones only, which
 * every entry records.
 */
static void
set_ddl_items(QueryCall *call)
{
	char	   *items[2];

	items[0] = redis_query_database_ddl_item();
	items[1] = RC_DDL_GENERATION;
	set_items(call, 2, items);
}

/* Whether the len bytes at item are "ddl", "ddl:<digits>" or "<digits>:<digits>". */
static bool
valid_item(const char *item, size_t len)
{
	size_t		i = 0;
	size_t		digits;

	if (len == 3 && memcmp(item, "ddl", 3) == 0)
		return true;
	if (len > 4 && memcmp(item, "ddl:", 4) == 0)
		i = 4;
	else
	{
		for (digits = 0; i < len && isdigit((unsigned char) item[i]); i++)
			digits++;
		if (digits == 0 || i >= len || item[i++] != ':')
			return false;
	}
	for (digits = 0; i < len && isdigit((unsigned char) item[i]); i++)
		digits++;
	return digits > 0 && i == len;
}

/*
 * The call's items are those an entry records (its "item=gen,..."), with
 * the DDL ones: false when the text is not what a store writes (foreign
 * data), the items then unchanged.
 */
static bool
set_items_from_entry(QueryCall *call, const char *deps)
{
	char	   *ddl = redis_query_database_ddl_item();
	char	  **items = palloc(sizeof(char *) * (RC_MAX_ENTRY_ITEMS + 2));
	int			nitems = 0;
	bool		has_ddl = false;
	bool		has_db_ddl = false;
	const char *p = deps;

	while (*p != '\0')
	{
		size_t		len = strcspn(p, "=,");

		if (p[len] != '=' || !valid_item(p, len) || nitems == RC_MAX_ENTRY_ITEMS)
			return false;
		items[nitems] = pnstrdup(p, len);
		has_ddl |= strcmp(items[nitems], RC_DDL_GENERATION) == 0;
		has_db_ddl |= strcmp(items[nitems], ddl) == 0;
		nitems++;
		p += len + 1;
		p += strcspn(p, ",");
		if (*p == ',')
			p++;
	}
	if (!has_db_ddl)
		items[nitems++] = ddl;
	if (!has_ddl)
		items[nitems++] = RC_DDL_GENERATION;
	set_items(call, nitems, items);
	return true;
}

/*
 * The items remembered for the call's shape, if any: true when the call
 * has them now.
 */
static bool
set_known_items(QueryCall *call)
{
	KnownShape *known;

	if (known_shapes == NULL || call->shape[0] == '\0')
		return false;
	known = hash_search(known_shapes, call->shape, HASH_FIND, NULL);
	if (known == NULL)
		return false;
	set_items(call, known->nitems, known->items);
	return true;
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
							 call->query, call->nparams, call->param_values,
							 call->param_nulls, cache_function, &pq->deps);
	return pq;
}

/* ---- lookups ----------------------------------------------------------------- */

/*
 * Look the entry up; mode "take" also takes the stampede lock on a miss,
 * "peek" only reports it.  When another session holds the lock,
 * *lock_value (if not NULL) is set to its token (or NULL).
 *
 * A "take" marks the lock as possibly ours before it is sent: a cancel or
 * timeout while waiting for the reply, or a reply that never arrives, may
 * leave it set in Redis, and only its release (by token, so harmless when
 * not ours) keeps the next reader from waiting for it.
 */
static LookupOutcome
lookup_once(QueryCall *call, const char *mode, RedisReply **hit,
			char **lock_value, char **learned)
{
	RedisCommand cmd;
	RedisReply *reply = NULL;
	char	   *database_ddl = redis_query_database_ddl_item();
	bool		take = strcmp(mode, "take") == 0;
	int			i;

	/* KEYS entry, lock, generations; ARGV base, mode, token, ms, DDL item, learn */
	redis_script_cmd(&cmd, RC_SCRIPT_QUERY_LOOKUP, 2 + call->nitems, 6);
	redis_cmd_key(&cmd, call->entry_key.data, call->entry_key.len);
	redis_cmd_key(&cmd, call->lock_key.data, call->lock_key.len);
	for (i = 0; i < call->nitems; i++)
		redis_cmd_key_str(&cmd, call->gen_keys[i]);
	redis_cmd_arg(&cmd, call->base.data, call->base.len);
	redis_cmd_str(&cmd, mode);
	redis_cmd_str(&cmd, call->token);
	redis_cmd_int(&cmd, Max(query_lock_timeout_ms, 1));
	redis_cmd_str(&cmd, database_ddl);
	redis_cmd_str(&cmd, call->learning ? "learn" : "strict");

	if (lock_value)
		*lock_value = NULL;
	if (take)
		call->holds_lock = true;
	call->entry_pttl = -2;
	if (call->local_fill == NULL)
	{
		if (!redis_execute_scripts(&cmd, 1, &reply, 0))
			reply = NULL;
	}
	else
	{
		/* the local cache holds a hit until its Redis TTL: ask for it too */
		RedisCommand cmds[2];
		RedisReply *replies[2];

		cmds[0] = cmd;
		redis_cmd_init(&cmds[1], "PTTL", 1);
		redis_cmd_key(&cmds[1], call->entry_key.data, call->entry_key.len);
		if (!redis_execute_scripts(cmds, 2, replies, 0))
			reply = NULL;
		else
		{
			reply = replies[0];
			if (replies[1]->type == RC_REPLY_INTEGER)
				call->entry_pttl = replies[1]->integer;
		}
	}
	/* no answer: the take may still land; keep holds_lock for the release */
	if (script_failed(reply, "a cached query lookup"))
		return LOOKUP_FAULT;
	if (take)
		call->holds_lock = false;
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
			if (lock_value && reply->elements > 2 &&
				reply->element[2]->type == RC_REPLY_STRING)
				*lock_value = pnstrdup(reply->element[2]->str, reply->element[2]->len);
			return LOOKUP_LOCKED_ELSEWHERE;
		case 4:
			if (!call->learning || reply->elements != 3 ||
				reply->element[2]->type != RC_REPLY_STRING)
				return LOOKUP_FAULT;
			*learned = pnstrdup(reply->element[2]->str, reply->element[2]->len);
			return LOOKUP_LEARN;
		default:
			return LOOKUP_MISS;
	}
}

/*
 * Look the entry up (see lookup_once()).  A call that does not know its
 * tables yet declares only the DDL generation keys ("learn"): when an
 * entry exists, the script answers with the items it records, and the
 * lookup is made again with their keys declared (two round trips, once
 * per query shape and backend: a hit teaches the shape its items).  So
 * the first lookup still comes before the query is planned, and takes the
 * stampede lock before the tables are locked.  An entry recording what no
 * store writes is looked up with the DDL keys only: stale, deleted.
 */
static LookupOutcome
lookup(QueryCall *call, const char *mode, RedisReply **hit, char **lock_value)
{
	char	   *learned = NULL;
	LookupOutcome outcome = lookup_once(call, mode, hit, lock_value, &learned);

	if (outcome != LOOKUP_LEARN)
		return outcome;
	if (!set_items_from_entry(call, learned))
		set_ddl_items(call);
	call->learning = false;
	outcome = lookup_once(call, mode, hit, lock_value, &learned);
	if (outcome == LOOKUP_HIT)
		remember_items(call);
	return outcome == LOOKUP_LEARN ? LOOKUP_FAULT : outcome;
}

/*
 * The compare-and-delete of the call's lock if it holds token (scripts.c:
 * KEYS lock, ARGV token).  NULL on a fault (reported per flags).
 */
static RedisReply *
unlock_if(QueryCall *call, const char *token, int flags)
{
	RedisCommand cmd;
	RedisReply *reply = NULL;

	redis_script_cmd(&cmd, RC_SCRIPT_UNLOCK, 1, 1);
	redis_cmd_key(&cmd, call->lock_key.data, call->lock_key.len);
	redis_cmd_str(&cmd, token);
	if (!redis_execute_scripts(&cmd, 1, &reply, flags))
		return NULL;
	return reply;
}

/*
 * Release the stampede lock if it may be ours (the script deletes it only
 * if it still holds our token).  Never throws: also called in PG_CATCH,
 * with interrupts held, bounded by command_timeout_ms (a new connection
 * too: an interrupted round trip closed the old one).
 */
static void
release_lock(QueryCall *call)
{
	if (!call->holds_lock)
		return;
	call->holds_lock = false;
	(void) unlock_if(call, call->token, RC_EXEC_NO_ERROR | RC_EXEC_FAST_CONNECT);
}

/*
 * The lock token of this call (see RC_LOCK_TOKEN_LEN).
 */
static void
make_lock_token(QueryCall *call)
{
	uint8		random_bytes[16];
	char		random_hex[33];

	if (!pg_strong_random(random_bytes, sizeof(random_bytes)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("redis_cache: could not generate a random lock token")));
	random_hex[hex_encode((const char *) random_bytes, sizeof(random_bytes), random_hex)] = '\0';
	snprintf(call->token, sizeof(call->token), "%016" INT64_MODIFIER "x-%016" INT64_MODIFIER "x-%d-%08x-%s",
			 GetSystemIdentifier(), (uint64) PgStartTime, MyProcPid,
			 (unsigned int) MyProc->lxid, random_hex);
}

/*
 * Whether a lock token names a holder of this server that gave up: its
 * backend is gone, has moved on to another transaction (a holder cancelled
 * while its release could not reach Redis), or is this very backend (which
 * is waiting, not computing).  The holder of another server cannot be
 * checked: its lock is waited for, up to query_lock_timeout_ms.
 */
static bool
lock_holder_gone(const char *token)
{
	unsigned long long sysid;
	unsigned long long started;
	int			pid;
	unsigned int lxid;
	PGPROC	   *proc;

	if (token == NULL ||
		sscanf(token, "%16llx-%16llx-%d-%8x-", &sysid, &started, &pid, &lxid) != 4)
		return false;
	if ((uint64) sysid != GetSystemIdentifier() ||
		(uint64) started != (uint64) PgStartTime)
		return false;
	if (pid == MyProcPid)
		return true;
	proc = BackendPidGetProc(pid);
	/* an unlocked read: lxid is stable while the holder computes */
	return proc == NULL || ((volatile PGPROC *) proc)->lxid != (LocalTransactionId) lxid;
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
		*result = redis_json_decode(data->str, data->len, &why);
	else
		why = redis_rows_decode(call->expected, call->entry_key.data, data->str, data->len, store);

	if (why == NULL)
		return true;
	if (strcmp(why, "shape") != 0)
		warn_undecodable(call, why);
	return false;
}

/*
 * Wait for the session holding the lock to store the result.  When the
 * holder releases it without a result (its query failed, was not
 * cacheable, its fill was ended by a write), every waiter runs the query
 * at once, as without the lock.  A holder of this server that gave up
 * without releasing (lock_holder_gone) has its lock removed (by its token)
 * and taken over.  Returns the outcome of the last look: HIT, LOCK_TAKEN,
 * MISS (released without a result, or timeout: run the query without the
 * lock) or FAULT.
 */
static LookupOutcome
wait_for_result(QueryCall *call, RedisReply **hit)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   query_lock_timeout_ms);
	long		delay = 2;
	bool		took_over = false;

	for (;;)
	{
		LookupOutcome outcome;
		char	   *holder;
		long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);

		if (left <= 0)
			return LOOKUP_MISS;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(delay, left), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();

		/*
		 * Peek: a holder that releases without storing (a result too large,
		 * a fill ended by a write) lets every waiter run the query at once,
		 * rather than one after the other.  Take only the lock of a holder
		 * that is gone, which nobody else will release.
		 */
		outcome = lookup(call, took_over ? "take" : "peek", hit, &holder);
		if (outcome != LOOKUP_LOCKED_ELSEWHERE)
			return outcome;
		took_over = false;
		if (lock_holder_gone(holder))
		{
			ereport(DEBUG1,
					(errmsg_internal("redis_cache: taking over the lock of \"%s\" from a holder that gave up",
									 call->entry_key.data)));
			if (unlock_if(call, holder, 0) == NULL)
				return LOOKUP_FAULT;
			took_over = true;
			continue;
		}
		delay = Min(delay * 2, 50);
	}
}

/*
 * Generations of the call's items now, as "item=gen,...", in items order
 * (the tables, then the DDL ones).  NULL on a fault.
 */
static char *
read_generations(QueryCall *call)
{
	RedisCommand cmd;
	RedisReply *reply = NULL;
	StringInfoData out;
	int			i;

	/* KEYS the generations; no ARGV */
	redis_script_cmd(&cmd, RC_SCRIPT_QUERY_GENERATIONS, call->nitems, 0);
	for (i = 0; i < call->nitems; i++)
		redis_cmd_key_str(&cmd, call->gen_keys[i]);
	if (!redis_execute_scripts(&cmd, 1, &reply, 0))
		reply = NULL;
	if (script_failed(reply, "reading query result generations"))
		return NULL;
	if (reply->type != RC_REPLY_ARRAY || reply->elements != (size_t) call->nitems)
		return NULL;
	initStringInfo(&out);
	for (i = 0; i < call->nitems; i++)
	{
		RedisReply *gen = reply->element[i];

		if (gen->type != RC_REPLY_STRING || gen->len == 0 ||
			strcspn(gen->str, "=,") != gen->len)
			return NULL;
		appendStringInfo(&out, "%s%s=%s", i > 0 ? "," : "", call->items[i], gen->str);
	}
	return out.data;
}

/*
 * Store the result under the generations read before its snapshot (deps,
 * from read_generations()), releasing the lock.
 */
static bool
store(QueryCall *call, const char *deps, StringInfo data)
{
	char		meta[RCQ_META_MAX + 1];
	size_t		metalen;
	RedisCommand cmd;
	RedisReply *reply = NULL;
	int			i;

	/* KEYS entry, lock, generations, sets; ARGV token, ttl, meta, data, deps */
	metalen = rcq_format_meta(meta, sizeof(meta), call->kind, data->data, data->len);
	redis_script_cmd(&cmd, RC_SCRIPT_QUERY_STORE, 2 + 2 * call->nitems, 5);
	redis_cmd_key(&cmd, call->entry_key.data, call->entry_key.len);
	redis_cmd_key(&cmd, call->lock_key.data, call->lock_key.len);
	for (i = 0; i < call->nitems; i++)
		redis_cmd_key_str(&cmd, call->gen_keys[i]);
	for (i = 0; i < call->nitems; i++)
		redis_cmd_key_str(&cmd, redis_query_deps_key(call->base.data, call->items[i],
													 strlen(call->items[i])));
	redis_cmd_str(&cmd, call->token);
	redis_cmd_int(&cmd, call->ttl);
	redis_cmd_arg(&cmd, meta, metalen);
	redis_cmd_arg(&cmd, data->data, data->len);
	redis_cmd_str(&cmd, deps);

	if (!redis_execute_scripts(&cmd, 1, &reply, 0))
		reply = NULL;
	call->holds_lock = false;
	if (script_failed(reply, "storing a query result"))
		return false;
	if (reply->type == RC_REPLY_INTEGER && reply->integer == 1)
	{
		redis_stats_add(RC_STAT_SETS, 1);
		redis_stats_family("query:", 6, RC_FAM_SETS);
		return true;
	}
	return false;
}

/* ---- the local cache (local_cache.c) ----------------------------------------- */

/*
 * Local entries hold results in the form a hit returns, so that a local
 * hit decodes nothing: rows as minimal tuples (detoasted, each at a
 * MAXALIGNed offset) after the column types, JSON as the jsonb datum.
 * They are written by this server from results it decoded or computed,
 * never from Redis bytes, so they are trusted.
 */
#define RC_LOCAL_ROWS	0x52435231	/* "RCR1" */
#define RC_LOCAL_JSONB	0x52434a31	/* "RCJ1" */

typedef struct LocalRowsHeader
{
	uint32		format;			/* RC_LOCAL_ROWS */
	uint32		natts;
	uint32		ntuples;
	uint32		pad;
	/* natts type oids, then MAXALIGNed minimal tuples */
} LocalRowsHeader;

/*
 * Before the lookup: the snapshot for installing what this call returns
 * (only when the call declares its tables' generations: they are what a
 * local entry depends on).
 */
static void
local_fill_begin(QueryCall *call)
{
	size_t	   *lens;
	int			i;

	call->local_fill = NULL;
	if (call->learning || !redis_local_wants_queries())
		return;
	lens = palloc(sizeof(size_t) * Max(call->nitems, 1));
	for (i = 0; i < call->nitems; i++)
		lens[i] = strlen(call->gen_keys[i]);
	call->local_fill = redis_local_fill_begin(call->entry_key.data,
											  call->entry_key.len,
											  (const char *const *) call->gen_keys,
											  lens, call->nitems);
	/* owed missed invalidations since the caller checked: install nothing */
	if (call->local_fill != NULL &&
		redis_results_pending(redis_cache_key_prefix ? redis_cache_key_prefix : ""))
		call->local_fill = NULL;
	call->local_nitems = call->nitems;
	call->local_gen_keys = call->gen_keys;
}

/*
 * A result held locally, into store_rows (rows) or *result (JSON, in the
 * current memory context).  False on a miss, or an entry of another shape.
 */
static bool
local_hit(QueryCall *call, Tuplestorestate *store_rows, Datum *result)
{
	char	   *value;
	size_t		len;
	uint32		format;

	if (!redis_local_wants_queries() ||
		!redis_local_lookup(call->entry_key.data, call->entry_key.len, false,
							&value, &len) ||
		len < sizeof(uint32))
		return false;
	memcpy(&format, value, sizeof(format));
	if (call->kind == RCQ_KIND_JSON)
	{
		if (format != RC_LOCAL_JSONB || len < MAXALIGN(sizeof(uint32)) + VARHDRSZ)
			return false;
		{
			/* a chunk of its own, which the caller may free */
			struct varlena *jb = (struct varlena *) (value + MAXALIGN(sizeof(uint32)));
			struct varlena *copy = palloc(VARSIZE(jb));

			memcpy(copy, jb, VARSIZE(jb));
			pfree(value);
			*result = PointerGetDatum(copy);
		}
		return true;
	}
	else
	{
		LocalRowsHeader *h = (LocalRowsHeader *) value;
		TupleDesc	desc = call->expected;
		size_t		off;
		TupleTableSlot *slot;
		uint32		i;

		if (format != RC_LOCAL_ROWS || len < sizeof(LocalRowsHeader) ||
			h->natts != (uint32) desc->natts)
			return false;
		off = sizeof(LocalRowsHeader);
		for (i = 0; i < h->natts; i++)
		{
			Oid			type;

			memcpy(&type, value + off + i * sizeof(Oid), sizeof(Oid));
			if (type != TupleDescAttr(desc, i)->atttypid)
				return false;
		}
		off = MAXALIGN(off + h->natts * sizeof(Oid));
		slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
		for (i = 0; i < h->ntuples && off + sizeof(uint32) <= len; i++)
		{
			MinimalTuple tuple = (MinimalTuple) (value + off);

			if (off + tuple->t_len > len)
				break;
			ExecStoreMinimalTuple(tuple, slot, false);
			tuplestore_puttupleslot(store_rows, slot);
			off += MAXALIGN(tuple->t_len);
		}
		ExecDropSingleTupleTableSlot(slot);
		return true;
	}
}

/* Append padding up to the next MAXALIGN boundary. */
static void
pad_to_maxalign(StringInfo buf)
{
	static const char zeros[MAXIMUM_ALIGNOF] = {0};

	if (buf->len != MAXALIGN(buf->len))
		appendBinaryStringInfo(buf, zeros, MAXALIGN(buf->len) - buf->len);
}

/*
 * The rows of store_rows (read back, then rewound for the caller) in the
 * local form; false when they exceed limit bytes.
 */
static bool
encode_local_rows(TupleDesc desc, Tuplestorestate *store, StringInfo out,
				  size_t limit)
{
	LocalRowsHeader h;
	TupleTableSlot *slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	Datum	   *values = palloc(sizeof(Datum) * Max(desc->natts, 1));
	bool		ok = true;
	int			i;

	memset(&h, 0, sizeof(h));
	h.format = RC_LOCAL_ROWS;
	h.natts = desc->natts;
	appendBinaryStringInfo(out, (const char *) &h, sizeof(h));
	for (i = 0; i < desc->natts; i++)
		appendBinaryStringInfo(out, (const char *) &TupleDescAttr(desc, i)->atttypid,
							   sizeof(Oid));
	pad_to_maxalign(out);
	tuplestore_rescan(store);
	while (ok && tuplestore_gettupleslot(store, true, false, slot))
	{
		MinimalTuple tuple;

		slot_getallattrs(slot);
		for (i = 0; i < desc->natts; i++)
		{
			values[i] = slot->tts_values[i];
			/* a TOAST pointer would name rows of the table: detoast */
			if (!slot->tts_isnull[i] && TupleDescAttr(desc, i)->attlen == -1 &&
				VARATT_IS_EXTERNAL(DatumGetPointer(values[i])))
				values[i] = PointerGetDatum(detoast_external_attr((struct varlena *) DatumGetPointer(values[i])));
		}
		tuple = heap_form_minimal_tuple(desc, values, slot->tts_isnull);
		appendBinaryStringInfo(out, (const char *) tuple, tuple->t_len);
		pad_to_maxalign(out);
		heap_free_minimal_tuple(tuple);
		h.ntuples++;
		ok = (size_t) out->len <= limit;
	}
	tuplestore_rescan(store);
	ExecDropSingleTupleTableSlot(slot);
	memcpy(out->data, &h, sizeof(h));
	return ok;
}

/*
 * Install what the call returns (store_rows or result) locally, valid for
 * ttl_ms (-1: no TTL), if it still depends on the generations its
 * snapshot read.
 */
static void
local_install(QueryCall *call, Tuplestorestate *store_rows, Datum result,
			  int64 ttl_ms)
{
	StringInfoData value;
	int			i;

	if (call->local_fill == NULL)
		return;
	if (call->local_nitems != call->nitems)
		return;
	for (i = 0; i < call->nitems; i++)
		if (strcmp(call->local_gen_keys[i], call->gen_keys[i]) != 0)
			return;
	initStringInfo(&value);
	if (call->kind == RCQ_KIND_JSON)
	{
		uint32		format = RC_LOCAL_JSONB;
		struct varlena *jb = PG_DETOAST_DATUM(result);

		appendBinaryStringInfo(&value, (const char *) &format, sizeof(format));
		pad_to_maxalign(&value);
		appendBinaryStringInfo(&value, (const char *) jb, VARSIZE(jb));
	}
	else if (!encode_local_rows(call->expected, store_rows, &value,
								(size_t) redis_cache_max_value_bytes))
		return;
	redis_local_fill_end(call->local_fill, value.data, value.len, ttl_ms);
	call->local_fill = NULL;
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
	/* not while the worker owes this namespace missed invalidations */
	bool		use_cache = redis_cache_enabled && !IsolationUsesXactSnapshot() &&
		!redis_results_pending(redis_cache_key_prefix ? redis_cache_key_prefix : "");
	/* a result may read this transaction's uncommitted rows (functions) */
	bool		may_store = !RecoveryInProgress() && !redis_query_xact_has_writes();
	PreparedQuery *pq = NULL;
	RedisReply *hit = NULL;
	LookupOutcome outcome = LOOKUP_FAULT;
	Datum		result = (Datum) 0;
	volatile bool connected = false;
	bool		served_locally = false;
	bool		local_tried = false;

	/* a local hit needs neither SPI nor Redis */
	if (use_cache && redis_local_wants_queries() && !redis_query_xact_has_writes())
	{
		/* an entry records what it depends on: no need to know the shape */
		make_keys(call);
		local_tried = true;
		if (local_hit(call, store_rows, &result))
		{
			count_lookup(true);
			return result;
		}
	}

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
			const char *mode = "none";

			if (call->entry_key.data == NULL)
				make_keys(call);
			/* the lookup declares the generation keys of the tables */
			if (pq != NULL)
				set_items_from_deps(call, &pq->deps);
			else if (!set_known_items(call))
			{
				set_ddl_items(call);
				call->learning = true;
			}
			if (may_store && query_lock_timeout_ms > 0)
			{
				make_lock_token(call);
				mode = "take";
			}
			{
				MemoryContext old = MemoryContextSwitchTo(caller_context);

				served_locally = !local_tried &&
					local_hit(call, store_rows, &result);
				MemoryContextSwitchTo(old);
			}
			if (served_locally)
				outcome = LOOKUP_HIT;
			else
			{
				local_fill_begin(call);
				outcome = lookup(call, mode, &hit, NULL);
				if (outcome == LOOKUP_LOCKED_ELSEWHERE)
					outcome = wait_for_result(call, &hit);
			}
			if (outcome == LOOKUP_HIT)
			{
				MemoryContext old = MemoryContextSwitchTo(caller_context);
				bool		decoded = served_locally ||
					use_hit(call, hit, store_rows, &result);

				if (decoded && !served_locally)
					local_install(call, store_rows, result, call->entry_pttl);
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
			{
				pq = prepare_query(call, cache_function);
				if (use_cache)
					set_items_from_deps(call, &pq->deps);
			}
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
				redis_query_register_tables(pq->deps.nrelids, pq->deps.relids);
				if (redis_cache_preloaded() &&
					redis_register_namespace(redis_cache_key_prefix ? redis_cache_key_prefix : "") < 0)
					generations = NULL;
				else
					generations = read_generations(call);
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
					payload_fits = redis_rows_encode(SPI_tuptable, SPI_processed, &payload);
			}
			else
			{
				MemoryContext old;

				redis_json_encode(SPI_tuptable, SPI_processed, &payload);
				payload_fits = payload.len <= redis_cache_max_value_bytes;
				old = MemoryContextSwitchTo(caller_context);
				result = DirectFunctionCall1(jsonb_in, CStringGetDatum(payload.data));
				MemoryContextSwitchTo(old);
			}

			if (generations != NULL && payload_fits)
			{
				if (store(call, generations, &payload))
				{
					MemoryContext old = MemoryContextSwitchTo(caller_context);

					local_install(call, store_rows, result,
								  call->ttl > 0 ? (int64) call->ttl * 1000 : -1);
					MemoryContextSwitchTo(old);
				}
			}
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
 * cache_query_key(query text, params text[], format text, with_prefix
 * boolean) RETURNS text: the Redis key of a result for the current role,
 * so that applications can read cache_query_json() results with HGET key
 * data; with key_prefix unless with_prefix is false.
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

	/* with_prefix => false (1.6): for clients that add key_prefix themselves */
	if (PG_NARGS() > 3 && !PG_ARGISNULL(3) && !PG_GETARG_BOOL(3))
	{
		size_t		plen = redis_cache_key_prefix ? strlen(redis_cache_key_prefix) : 0;

		Assert((size_t) call.entry_key.len >= plen);
		PG_RETURN_TEXT_P(cstring_to_text_with_len(call.entry_key.data + plen,
												  call.entry_key.len - (int) plen));
	}
	PG_RETURN_TEXT_P(cstring_to_text_with_len(call.entry_key.data, call.entry_key.len));
}

/*
 * cache_query_invalidate(tbl regclass) RETURNS bigint: end every cached
 * result that read the table (or a table inheriting from it), now, in
 * every namespace known to this server.  Returns how many results it
 * deleted now: all those listed for the tables, but at most 1000 per
 * namespace (the rest of a larger set is moved aside and deleted by later
 * invalidations, and a lookup never serves one); the count may include
 * results of earlier invalidations drained now.
 */
Datum
cache_query_invalidate(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	List	   *tables;
	ListCell   *lc;
	int64		removed;
	char	  **items;
	int			nitems = 0;

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
	items = palloc(sizeof(char *) * list_length(tables));
	foreach(lc, tables)
		items[nitems++] = redis_query_generation_item(lfirst_oid(lc));
	/* the commit pipeline's sender (invalidation.c) */
	removed = redis_invalidate_generations_now(items, nitems);
	if (removed < 0)
		PG_RETURN_NULL();
	redis_stats_add(RC_STAT_DELETES, removed);
	PG_RETURN_INT64(removed);
}

/*
 * From _PG_init: this file's setting.
 */
void
redis_query_cache_define_gucs(void)
{
	DefineCustomIntVariable("redis_cache.query_lock_timeout_ms",
							gettext_noop("Sets how long cache_query() waits for another session that is computing the same result."),
							gettext_noop("After this time the waiting session runs the query itself. 0 disables the stampede lock."),
							&query_lock_timeout_ms,
							5000, 0, 600000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
}
