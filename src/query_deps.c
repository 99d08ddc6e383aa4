/*-------------------------------------------------------------------------
 *
 * query_deps.c
 *		  Which tables a cached query reads, and which tables a transaction
 *		  writes: the two halves of automatic query result invalidation.
 *
 * Reading side: redis_query_dependencies() walks the whole analyzed and
 * rewritten query -- subqueries, CTEs, sublinks, the functions of the range
 * table; views are expanded there, so the tables under a view count -- and
 * adds, for partitions, their ancestors and, for parents, every descendant.
 * It also decides whether a result may be cached at all.  A result is
 * shared by every caller with the same key (keys.c: database, role,
 * search_path, the settings that change a result, query text, parameters),
 * so it must not depend on anything else.  Not cached, therefore, when the
 * query:
 *
 * - reads a temporary table (other sessions cannot see it), a table with
 *   row-level security (the rows depend on more than the role), a foreign
 *   table (changes happen elsewhere), a sequence or a system catalog
 *   (pg_catalog, information_schema, pg_toast: changed by DDL of other
 *   databases, by shared catalogs and by statistics, none of which bumps a
 *   generation); or, without shared_preload_libraries, a table that has no
 *   cache_watch() trigger to report changes;
 * - calls a function of the database that is not IMMUTABLE (its body may
 *   read any table, row-level security, settings or the session, SECURITY
 *   DEFINER or not; for an aggregate, its support functions), a built-in
 *   VOLATILE function, or a built-in STABLE function outside the reviewed
 *   allow-list below (the clock, current_setting(), the session, server
 *   state and statistics);
 * - reads the clock or the session through SQL keywords (CURRENT_DATE,
 *   CURRENT_TIMESTAMP, LOCALTIME, SESSION_USER, ...), a date or time
 *   written 'now' or 'today' (constant or parameter), a system column other
 *   than tableoid, TABLESAMPLE, or runs with gin_fuzzy_search_limit set.
 *
 * IMMUTABLE functions of the database are trusted, as PostgreSQL trusts
 * them when it folds their calls: one that lies may serve stale or other
 * callers' rows.  Functions called through a type rather than by the query
 * (output functions, a user-defined cast to json, domain constraints,
 * operator classes) are not inspected: base types and operator classes are
 * made by superusers.
 *
 * Writing side: every table a transaction writes gets a "generation bump"
 * queued for its commit (invalidation.c sends them with the key deletes):
 *
 * - ExecutorStart_hook sees INSERT, UPDATE, DELETE and MERGE, including
 *   data-modifying CTEs and statements run inside functions and triggers;
 * - ProcessUtility_hook sees COPY FROM, TRUNCATE and REFRESH MATERIALIZED
 *   VIEW; any other DDL or privilege change bumps the "ddl" generation,
 *   which every cached result depends on;
 * - the cache_invalidate() trigger reports its table too, which is all the
 *   tracking there is in sessions that did not load the library when it is
 *   not preloaded.
 *
 * A written partition bumps its ancestors as well, so that routing a row
 * from one partition to another invalidates readers of either.
 *
 * To keep writes free of Redis traffic for tables no cached query reads,
 * a bump is sent only for tables whose bit is set in a shared bitmap
 * (query_tables.c), consulted at XACT_EVENT_COMMIT.  COMMIT PREPARED
 * bumps the DDL generation: what the prepared transaction wrote is not
 * known to the session that commits it.
 *
 * The hooks also remember, per transaction, which tables it wrote, so that
 * cache_query() can bypass the cache for a transaction reading its own
 * uncommitted writes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "access/gin.h"
#include "access/htup_details.h"
#include "access/sysattr.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/catalog.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_aggregate.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "parser/parsetree.h"
#include "storage/proc.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "redis_cache.h"

/* More written tables than this in one transaction: assume it wrote all. */
#define RC_MAX_TRACKED_WRITES	64

static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Writes of the current transaction (TopTransactionContext). */
static List *xact_written = NIL;
static bool xact_wrote_everything = false;
static bool xact_callback_registered = false;

/* ---- writes --------------------------------------------------------------- */

/* "<database oid>:<table oid>", the generation a table's results carry */
char *
redis_query_generation_item(Oid relid)
{
	return psprintf("%u:%u", MyDatabaseId, relid);
}

static void
remember_write(Oid relid)
{
	MemoryContext old;

	if (xact_wrote_everything || list_member_oid(xact_written, relid))
		return;
	if (list_length(xact_written) >= RC_MAX_TRACKED_WRITES)
	{
		xact_wrote_everything = true;
		return;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	xact_written = lappend_oid(xact_written, relid);
	MemoryContextSwitchTo(old);
}

static void
queue_bump(Oid relid, bool registered_only)
{
	char	   *item;

	/* the bitmap is read at COMMIT, not now: see redis_query_generation_needed */
	if (registered_only && !redis_cache_preloaded())
		return;
	item = redis_query_generation_item(relid);
	redis_queue_generation_bump(item, strlen(item));
	pfree(item);
}

/*
 * relid was written: remember it and queue the bumps of it and, for a
 * partition, of its ancestors.  registered_only: only tables in the shared
 * bitmap are bumped, hence nothing without shared_preload_libraries (the
 * hooks); otherwise the bump is sent whatever the bitmap (the trigger of a
 * watched table).
 */
static void
table_written(Oid relid, bool registered_only)
{
	remember_write(relid);
	queue_bump(relid, registered_only);
	if (get_rel_relispartition(relid))
	{
		List	   *ancestors = get_partition_ancestors(relid);
		ListCell   *lc;

		foreach(lc, ancestors)
		{
			remember_write(lfirst_oid(lc));
			queue_bump(lfirst_oid(lc), registered_only);
		}
		list_free(ancestors);
	}
}

/*
 * From cache_invalidate(): its table changed.  Once per statement is
 * enough, so repeated calls for the same table in the same command are
 * cheap.
 */
void
redis_query_note_trigger_write(Oid relid)
{
	static Oid	last_relid = InvalidOid;
	static SubTransactionId last_subxact = InvalidSubTransactionId;
	static CommandId last_command = InvalidCommandId;
	static LocalTransactionId last_xact = InvalidLocalTransactionId;
	SubTransactionId subxact = GetCurrentSubTransactionId();
	CommandId	command = GetCurrentCommandId(false);

	if (relid == last_relid && subxact == last_subxact &&
		command == last_command && MyProc->lxid == last_xact)
		return;
	table_written(relid, false);
	last_relid = relid;
	last_subxact = subxact;
	last_command = command;
	last_xact = MyProc->lxid;
}

static void
note_plan_writes(PlannedStmt *stmt)
{
	ListCell   *lc;

	if (stmt->commandType == CMD_SELECT && !stmt->hasModifyingCTE)
		return;
	foreach(lc, stmt->resultRelations)
	{
		RangeTblEntry *rte = rt_fetch(lfirst_int(lc), stmt->rtable);

		if (rte->rtekind == RTE_RELATION)
			table_written(rte->relid, true);
	}
}

static void
rc_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);

	if ((eflags & EXEC_FLAG_EXPLAIN_ONLY) == 0)
		note_plan_writes(queryDesc->plannedstmt);
}

/*
 * Utility statements that cannot change what any existing query returns.
 */
static bool
utility_is_harmless(Node *parsetree)
{
	switch (nodeTag(parsetree))
	{
		case T_TransactionStmt:
		case T_VariableSetStmt:
		case T_VariableShowStmt:
		case T_ExplainStmt:
		case T_PrepareStmt:
		case T_ExecuteStmt:
		case T_DeallocateStmt:
		case T_DeclareCursorStmt:
		case T_FetchStmt:
		case T_ClosePortalStmt:
		case T_ListenStmt:
		case T_UnlistenStmt:
		case T_NotifyStmt:
		case T_LockStmt:
		case T_CheckPointStmt:
		case T_VacuumStmt:
		case T_ClusterStmt:
		case T_ReindexStmt:
		case T_DoStmt:
		case T_CallStmt:
		case T_DiscardStmt:
		case T_LoadStmt:
		case T_ConstraintsSetStmt:
		case T_CommentStmt:
		case T_SecLabelStmt:
		case T_AlterSystemStmt:
		case T_AlterRoleSetStmt:
		case T_AlterDatabaseSetStmt:
		case T_CreatedbStmt:
		case T_DropdbStmt:		/* another database: see note_dropped_database */
			return true;
		case T_CopyStmt:
			return !((CopyStmt *) parsetree)->is_from;
		case T_CreateStmt:
			return ((CreateStmt *) parsetree)->relation->relpersistence == RELPERSISTENCE_TEMP;
		case T_CreateTableAsStmt:
			return ((CreateTableAsStmt *) parsetree)->into->rel->relpersistence == RELPERSISTENCE_TEMP;
		default:
			return false;
	}
}

/*
 * Role attributes and memberships change privileges and row-level security
 * in every database; any other DDL only changes results of this database.
 */
static bool
changes_roles(Node *parsetree)
{
	switch (nodeTag(parsetree))
	{
		case T_CreateRoleStmt:	/* to_regrole() and role names read before */
		case T_AlterRoleStmt:
		case T_DropRoleStmt:
		case T_GrantRoleStmt:
			return true;
		case T_RenameStmt:
			return ((RenameStmt *) parsetree)->renameType == OBJECT_ROLE;
		default:
			return false;
	}
}

/*
 * "ddl:<database oid>": the DDL generation of the current database, which
 * every cached result of the database depends on besides the global "ddl".
 */
char *
redis_query_database_ddl_item(void)
{
	return psprintf("%s:%u", RC_DDL_GENERATION, MyDatabaseId);
}

/*
 * DROP DATABASE, after success: end the results of the dropped database,
 * so that a database created later with the same OID never sees them.
 */
static void
note_dropped_database(Oid dbid)
{
	char	   *item;

	if (!redis_cache_preloaded())
		return;
	item = psprintf("%s:%u", RC_DDL_GENERATION, dbid);
	redis_queue_generation_bump(item, strlen(item));
	pfree(item);
}

static void
queue_ddl_bump(bool all_databases)
{
	char	   *item;

	if (all_databases)
	{
		redis_queue_generation_bump(RC_DDL_GENERATION, strlen(RC_DDL_GENERATION));
		return;
	}
	item = redis_query_database_ddl_item();
	redis_queue_generation_bump(item, strlen(item));
	pfree(item);
}

static void
note_utility_writes(Node *parsetree)
{
	bool		preloaded = redis_cache_preloaded();
	Oid			relid;

	switch (nodeTag(parsetree))
	{
		case T_TransactionStmt:
			/* what the prepared transaction wrote is not known here */
			/* it may have changed roles, which reach every database */
			if (((TransactionStmt *) parsetree)->kind == TRANS_STMT_COMMIT_PREPARED &&
				preloaded)
				queue_ddl_bump(true);
			return;
		case T_CopyStmt:
			{
				CopyStmt   *copy = (CopyStmt *) parsetree;

				if (!copy->is_from || copy->relation == NULL)
					return;
				relid = RangeVarGetRelid(copy->relation, NoLock, true);
				if (OidIsValid(relid))
					table_written(relid, true);
				return;
			}
		case T_TruncateStmt:
			{
				TruncateStmt *truncate = (TruncateStmt *) parsetree;
				ListCell   *lc;

				foreach(lc, truncate->relations)
				{
					List	   *all;
					ListCell   *lc2;

					relid = RangeVarGetRelid(lfirst(lc), NoLock, true);
					if (!OidIsValid(relid))
						continue;
					all = find_all_inheritors(relid, NoLock, NULL);
					foreach(lc2, all)
						table_written(lfirst_oid(lc2), true);
				}
				/* CASCADE reaches tables not named: treat like DDL */
				if (truncate->behavior == DROP_CASCADE)
					break;
				return;
			}
		case T_RefreshMatViewStmt:
			relid = RangeVarGetRelid(((RefreshMatViewStmt *) parsetree)->relation,
									 NoLock, true);
			if (OidIsValid(relid))
				table_written(relid, true);
			return;
		default:
			if (utility_is_harmless(parsetree))
				return;
			break;
	}

	/* DDL or privileges: every cached result of this database, or of all */
	xact_wrote_everything = true;
	if (preloaded)
		queue_ddl_bump(changes_roles(parsetree));
}

static void
rc_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
				  bool readOnlyTree, ProcessUtilityContext context,
				  ParamListInfo params, QueryEnvironment *queryEnv,
				  DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	Oid			dropped_database = InvalidOid;

	if (IsA(parsetree, DropdbStmt))
		dropped_database = get_database_oid(((DropdbStmt *) parsetree)->dbname, true);

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
							params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	/* after success: a failed statement aborts its transaction anyway */
	if (IsTransactionState())
	{
		note_utility_writes(parsetree);
		if (OidIsValid(dropped_database))
			note_dropped_database(dropped_database);
	}
}

static void
query_deps_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			xact_written = NIL;
			xact_wrote_everything = false;
			break;
		default:
			break;
	}
}

void
redis_query_hooks_init(void)
{
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = rc_ExecutorStart;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = rc_ProcessUtility;

	if (!xact_callback_registered)
	{
		RegisterXactCallback(query_deps_xact_callback, NULL);
		xact_callback_registered = true;
	}

	/* loaded in the middle of a transaction that already wrote: unknown */
	if (IsTransactionState() && TransactionIdIsValid(GetTopTransactionIdIfAny()))
		xact_wrote_everything = true;
}

bool
redis_query_xact_has_writes(void)
{
	return xact_wrote_everything || xact_written != NIL;
}

bool
redis_query_xact_wrote_any(const QueryDependencies *deps)
{
	int			i;

	if (xact_wrote_everything)
		return true;
	for (i = 0; i < deps->nrelids; i++)
		if (list_member_oid(xact_written, deps->relids[i]))
			return true;
	return false;
}

/* ---- reads ---------------------------------------------------------------- */

static int
compare_oids(const void *a, const void *b)
{
	Oid			x = *(const Oid *) a;
	Oid			y = *(const Oid *) b;

	return (x > y) - (x < y);
}

/*
 * The built-in STABLE functions whose result depends only on their
 * arguments and on what the key of a result covers: the database, the
 * role, the resolved search_path, the settings listed in keys.c, and this
 * database's catalogs (which any DDL of the database invalidates).  Every
 * other built-in STABLE function reads the clock (now(), age(x), the
 * run-time input of 'now' and 'today' into a date or time), the session
 * (current_setting(), session_user, pg_backend_pid(), inet_client_addr(),
 * txid_current(), pg_trigger_depth()), privileges and comments that change
 * without DDL of this database (has_*_privilege(), pg_has_role(),
 * obj_description()), tables without naming them (table_to_xml()), or
 * server state and statistics (pg_stat_*, pg_relation_filenode(),
 * pg_column_size(), version(), the catalog inspection functions pg_get_*):
 * a query calling one of them is not cached.  An allow-list, so that a
 * STABLE function added by a later release is refused until reviewed.
 */
static const Oid stable_allowed_init[] = {
	/*
	 * type output, send and receive; input where it cannot read the clock
	 * (date and time input, and arrays, records, ranges and domains that
	 * may hold them, accept 'now' and 'today': not allowed at run time)
	 */
	F_ACLITEMIN, F_ACLITEMOUT, F_ANYARRAY_OUT, F_ANYARRAY_RECV,
	F_ANYARRAY_SEND, F_ANYCOMPATIBLEARRAY_OUT, F_ANYCOMPATIBLEARRAY_RECV,
	F_ANYCOMPATIBLEARRAY_SEND, F_ANYCOMPATIBLEMULTIRANGE_OUT,
	F_ANYCOMPATIBLERANGE_OUT, F_ANYENUM_OUT, F_ANYMULTIRANGE_OUT,
	F_ANYRANGE_OUT, F_ARRAY_OUT, F_ARRAY_RECV, F_ARRAY_SEND, F_BPCHARRECV,
	F_BPCHARSEND, F_BRIN_BLOOM_SUMMARY_RECV, F_BRIN_BLOOM_SUMMARY_SEND,
	F_BRIN_MINMAX_MULTI_SUMMARY_RECV, F_BRIN_MINMAX_MULTI_SUMMARY_SEND,
	F_CASH_IN, F_CASH_OUT, F_CSTRING_RECV, F_CSTRING_SEND, F_DATE_OUT,
	F_DOMAIN_RECV, F_ENUM_IN, F_ENUM_OUT, F_ENUM_RECV, F_ENUM_SEND,
	F_INTERVAL_IN, F_INTERVAL_OUT, F_MULTIRANGE_OUT, F_MULTIRANGE_RECV,
	F_MULTIRANGE_SEND, F_NAMERECV, F_NAMESEND, F_PG_DEPENDENCIES_RECV,
	F_PG_DEPENDENCIES_SEND, F_PG_MCV_LIST_RECV, F_PG_MCV_LIST_SEND,
	F_PG_NDISTINCT_RECV, F_PG_NDISTINCT_SEND, F_PG_NODE_TREE_RECV,
	F_PG_NODE_TREE_SEND, F_RANGE_OUT, F_RANGE_RECV, F_RANGE_SEND, F_RECORD_OUT,
	F_RECORD_RECV, F_RECORD_SEND, F_REGCLASSIN, F_REGCLASSOUT,
	F_REGCOLLATIONIN, F_REGCOLLATIONOUT, F_REGCONFIGIN, F_REGCONFIGOUT,
	F_REGDICTIONARYIN, F_REGDICTIONARYOUT, F_REGNAMESPACEIN, F_REGNAMESPACEOUT,
	F_REGOPERATORIN, F_REGOPERATOROUT, F_REGOPERIN, F_REGOPEROUT,
	F_REGPROCEDUREIN, F_REGPROCEDUREOUT, F_REGPROCIN, F_REGPROCOUT,
	F_REGROLEIN, F_REGROLEOUT, F_REGTYPEIN, F_REGTYPEOUT, F_TEXTRECV,
	F_TEXTSEND, F_TIMESTAMP_OUT, F_TIMESTAMPTZ_OUT, F_VARCHARRECV,
	F_VARCHARSEND, F_XML_IN, F_XML_RECV, F_XML_SEND,
	/*
	 * conversions and comparisons under TimeZone, DateStyle and lc_*; not
	 * age(x), timetz(time) or timezone(text, timetz): the current date
	 */
	F_DATE_TIMESTAMPTZ, F_DATE_CMP_TIMESTAMPTZ, F_DATE_EQ_TIMESTAMPTZ,
	F_DATE_GE_TIMESTAMPTZ, F_DATE_GT_TIMESTAMPTZ, F_DATE_LE_TIMESTAMPTZ,
	F_DATE_LT_TIMESTAMPTZ, F_DATE_NE_TIMESTAMPTZ, F_DATE_PART_TEXT_TIMESTAMPTZ,
	F_DATE_TRUNC_TEXT_TIMESTAMPTZ, F_DATE_TRUNC_TEXT_TIMESTAMPTZ_TEXT,
	F_EXTRACT_TEXT_TIMESTAMPTZ,
	F_GENERATE_SERIES_TIMESTAMPTZ_TIMESTAMPTZ_INTERVAL,
	F_IN_RANGE_TIMESTAMPTZ_TIMESTAMPTZ_INTERVAL_BOOL_BOOL,
	F_INTERVAL_PL_TIMESTAMPTZ,
	F_MAKE_TIMESTAMPTZ_INT4_INT4_INT4_INT4_INT4_FLOAT8,
	F_MAKE_TIMESTAMPTZ_INT4_INT4_INT4_INT4_INT4_FLOAT8_TEXT,
	F_OVERLAPS_TIMESTAMPTZ_INTERVAL_TIMESTAMPTZ_INTERVAL,
	F_OVERLAPS_TIMESTAMPTZ_TIMESTAMPTZ_TIMESTAMPTZ_INTERVAL,
	F_OVERLAPS_TIMESTAMPTZ_INTERVAL_TIMESTAMPTZ_TIMESTAMPTZ,
	F_TIME_TIMESTAMPTZ, F_TIMESTAMP_TIMESTAMPTZ, F_TIMESTAMP_CMP_TIMESTAMPTZ,
	F_TIMESTAMP_EQ_TIMESTAMPTZ, F_TIMESTAMP_GE_TIMESTAMPTZ,
	F_TIMESTAMP_GT_TIMESTAMPTZ, F_TIMESTAMP_LE_TIMESTAMPTZ,
	F_TIMESTAMP_LT_TIMESTAMPTZ, F_TIMESTAMP_NE_TIMESTAMPTZ, F_TIMESTAMPTZ_DATE,
	F_TIMESTAMPTZ_DATE_TIME, F_TIMESTAMPTZ_TIMESTAMP, F_TIMESTAMPTZ_CMP_DATE,
	F_TIMESTAMPTZ_CMP_TIMESTAMP, F_TIMESTAMPTZ_EQ_DATE,
	F_TIMESTAMPTZ_EQ_TIMESTAMP, F_TIMESTAMPTZ_GE_DATE,
	F_TIMESTAMPTZ_GE_TIMESTAMP, F_TIMESTAMPTZ_GT_DATE,
	F_TIMESTAMPTZ_GT_TIMESTAMP, F_TIMESTAMPTZ_LE_DATE,
	F_TIMESTAMPTZ_LE_TIMESTAMP, F_TIMESTAMPTZ_LT_DATE,
	F_TIMESTAMPTZ_LT_TIMESTAMP, F_TIMESTAMPTZ_MI_INTERVAL,
	F_TIMESTAMPTZ_NE_DATE, F_TIMESTAMPTZ_NE_TIMESTAMP,
	F_TIMESTAMPTZ_PL_INTERVAL, F_TIMETZ_TIMESTAMPTZ, F_TO_CHAR_INTERVAL_TEXT,
	F_TO_CHAR_TIMESTAMPTZ_TEXT, F_TO_CHAR_NUMERIC_TEXT, F_TO_CHAR_INT4_TEXT,
	F_TO_CHAR_INT8_TEXT, F_TO_CHAR_FLOAT4_TEXT, F_TO_CHAR_FLOAT8_TEXT,
	F_TO_CHAR_TIMESTAMP_TEXT, F_TO_DATE, F_TO_NUMBER, F_TO_TIMESTAMP_TEXT_TEXT,
	F_MONEY_INT4, F_MONEY_INT8, F_MONEY_NUMERIC, F_NUMERIC_MONEY,
	/*
	 * values through the output functions of their arguments (not
	 * json[b]_populate_record[set] and json[b]_to_record[set]: they run
	 * input functions, and 'today' in the JSON reads the clock)
	 */
	F_ANYTEXTCAT, F_TEXTANYCAT, F_ARRAY_TO_JSON_ANYARRAY,
	F_ARRAY_TO_JSON_ANYARRAY_BOOL, F_ARRAY_TO_STRING_ANYARRAY_TEXT_TEXT,
	F_ARRAY_TO_STRING_ANYARRAY_TEXT, F_CONCAT, F_CONCAT_WS, F_FORMAT_TEXT_ANY,
	F_FORMAT_TEXT, F_QUOTE_LITERAL_ANYELEMENT, F_QUOTE_NULLABLE_ANYELEMENT,
	F_ROW_TO_JSON_RECORD, F_ROW_TO_JSON_RECORD_BOOL, F_TO_JSON, F_TO_JSONB,
	F_JSON_AGG, F_JSON_AGG_TRANSFN, F_JSON_OBJECT_AGG,
	F_JSON_OBJECT_AGG_TRANSFN, F_JSONB_AGG, F_JSONB_AGG_FINALFN,
	F_JSONB_AGG_TRANSFN, F_JSONB_OBJECT_AGG_FINALFN,
	F_JSONB_OBJECT_AGG_TRANSFN, F_JSON_BUILD_ARRAY_ANY, F_JSON_BUILD_ARRAY_,
	F_JSON_BUILD_OBJECT_ANY, F_JSON_BUILD_OBJECT_, F_JSONB_BUILD_ARRAY_ANY,
	F_JSONB_BUILD_ARRAY_, F_JSONB_BUILD_OBJECT_ANY, F_JSONB_BUILD_OBJECT_,
	F_JSONB_PATH_EXISTS_TZ,
	F_JSONB_PATH_MATCH_TZ, F_JSONB_PATH_QUERY_ARRAY_TZ,
	F_JSONB_PATH_QUERY_FIRST_TZ, F_JSONB_PATH_QUERY_TZ,
	/* encodings by name, the database's encoding */
	F_CONVERT, F_CONVERT_FROM, F_CONVERT_TO, F_LENGTH_BYTEA_NAME,
	F_PG_CHAR_TO_ENCODING, F_PG_ENCODING_TO_CHAR, F_GETDATABASEENCODING,
	/* text search under default_text_search_config */
	F_GET_CURRENT_TS_CONFIG, F_JSON_TO_TSVECTOR_JSON_JSONB,
	F_JSONB_TO_TSVECTOR_JSONB_JSONB, F_PHRASETO_TSQUERY_TEXT,
	F_PLAINTO_TSQUERY_TEXT, F_TO_TSQUERY_TEXT, F_TO_TSVECTOR_TEXT,
	F_TO_TSVECTOR_JSONB, F_TO_TSVECTOR_JSON, F_WEBSEARCH_TO_TSQUERY_TEXT,
	F_TS_HEADLINE_TEXT_TSQUERY_TEXT, F_TS_HEADLINE_TEXT_TSQUERY,
	F_TS_HEADLINE_JSONB_TSQUERY_TEXT, F_TS_HEADLINE_JSONB_TSQUERY,
	F_TS_HEADLINE_JSON_TSQUERY_TEXT, F_TS_HEADLINE_JSON_TSQUERY, F_TS_MATCH_TQ,
	F_TS_MATCH_TT, F_TS_DEBUG_REGCONFIG_TEXT, F_TS_DEBUG_TEXT,
	F_TS_PARSE_TEXT_TEXT, F_TS_TOKEN_TYPE_TEXT,
	/* XML parsing under xmloption */
	F_XML, F_XML_IS_WELL_FORMED,
	/* names resolved in this database under search_path */
	F_REGCLASS, F_TO_REGCLASS, F_TO_REGCOLLATION, F_TO_REGNAMESPACE,
	F_TO_REGOPER, F_TO_REGOPERATOR, F_TO_REGPROC, F_TO_REGPROCEDURE,
	F_TO_REGROLE, F_TO_REGTYPE, F_FORMAT_TYPE, F_OIDVECTORTYPES, F_ENUM_FIRST,
	F_ENUM_LAST, F_ENUM_RANGE_ANYENUM_ANYENUM, F_ENUM_RANGE_ANYENUM,
	/* the key's database, role and search_path; types of the arguments */
	F_CURRENT_DATABASE, F_CURRENT_SCHEMA, F_CURRENT_SCHEMAS, F_CURRENT_USER,
	F_GETPGUSERNAME, F_PG_TYPEOF, F_PG_COLLATION_FOR,
};

static Oid	stable_allowed[lengthof(stable_allowed_init)];
static bool stable_allowed_sorted = false;

/* State of one walk over a query: what it reads and the first refusal. */
typedef struct ScopeWalk
{
	List	   *relids;			/* relations of every range table */
	const char *not_cacheable;	/* the first reason found, or NULL */
	bool		has_time_constant;	/* a date/time constant, parsed earlier */
	int			nparams;
	const Datum *param_values;	/* text, as the caller gave them */
	const bool *param_nulls;
} ScopeWalk;

static bool scope_walker(Node *node, ScopeWalk *walk);

static bool
stable_function_allowed(Oid funcid)
{
	if (!stable_allowed_sorted)
	{
		memcpy(stable_allowed, stable_allowed_init, sizeof(stable_allowed));
		qsort(stable_allowed, lengthof(stable_allowed), sizeof(Oid), compare_oids);
		stable_allowed_sorted = true;
	}
	return bsearch(&funcid, stable_allowed, lengthof(stable_allowed),
				   sizeof(Oid), compare_oids) != NULL;
}

/*
 * Why calling funcid makes a result unfit for sharing, or NULL.
 *
 * A function of the database (not built in) may read tables, row-level
 * security, settings or the session in its body: only IMMUTABLE ones are
 * trusted, as PostgreSQL itself trusts them when it folds their calls into
 * constants.  The volatility of an aggregate says nothing (CREATE AGGREGATE
 * marks them all IMMUTABLE): its support functions are judged instead.
 */
static const char *
function_reason(Oid funcid)
{
	char		volatility = func_volatile(funcid);

	if (funcid >= FirstNormalObjectId)
	{
		if (get_func_prokind(funcid) == PROKIND_AGGREGATE)
		{
			HeapTuple	tuple = SearchSysCache1(AGGFNOID, ObjectIdGetDatum(funcid));
			Form_pg_aggregate agg;
			Oid			support[8];
			const char *reason = NULL;
			int			i;

			if (!HeapTupleIsValid(tuple))
				elog(ERROR, "cache lookup failed for aggregate %u", funcid);
			agg = (Form_pg_aggregate) GETSTRUCT(tuple);
			support[0] = agg->aggtransfn;
			support[1] = agg->aggfinalfn;
			support[2] = agg->aggcombinefn;
			support[3] = agg->aggserialfn;
			support[4] = agg->aggdeserialfn;
			support[5] = agg->aggmtransfn;
			support[6] = agg->aggminvtransfn;
			support[7] = agg->aggmfinalfn;
			ReleaseSysCache(tuple);
			for (i = 0; i < (int) lengthof(support) && reason == NULL; i++)
				if (OidIsValid(support[i]))
					reason = function_reason(support[i]);
			return reason;
		}
		if (volatility != PROVOLATILE_IMMUTABLE)
			return psprintf("it calls %s, which is not IMMUTABLE (its body may read tables, row-level security, settings or the session)",
							format_procedure(funcid));
		return NULL;
	}
	if (volatility == PROVOLATILE_VOLATILE)
		return psprintf("it calls the volatile function %s", format_procedure(funcid));
	if (volatility == PROVOLATILE_STABLE && !stable_function_allowed(funcid))
		return psprintf("it calls %s, whose result depends on more than its arguments and the key (time, session, settings or server state)",
						format_procedure(funcid));
	return NULL;
}

/* check_functions_in_node() callback: true (stop) at the first refusal */
static bool
check_function(Oid funcid, void *context)
{
	ScopeWalk  *walk = (ScopeWalk *) context;

	walk->not_cacheable = function_reason(funcid);
	return walk->not_cacheable != NULL;
}

/*
 * Whether values of type hold dates or times, whose input accepts 'now',
 * 'today', 'tomorrow' and 'yesterday' (arrays, ranges and domains of them
 * included).
 */
static bool
type_holds_time(Oid type)
{
	Oid			elem;

	type = getBaseType(type);
	switch (type)
	{
		case DATEOID:
		case TIMEOID:
		case TIMETZOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			return true;
		default:
			break;
	}
	if (OidIsValid(elem = get_element_type(type)))
		return type_holds_time(elem);
	if (type_is_range(type))
		return type_holds_time(get_range_subtype(type));
	if (type_is_multirange(type))
		return type_holds_time(get_multirange_range(type));
	return false;
}

/* Whether text contains needle (lower case ASCII), in any case. */
static bool
pg_strcasestr_simple(const char *text, const char *needle)
{
	size_t		nlen = strlen(needle);

	for (; *text; text++)
		if (pg_strncasecmp(text, needle, nlen) == 0)
			return true;
	return false;
}

/*
 * Whether text has one of the words the date and time input functions read
 * as the current time, as a whole word in any case.
 */
static bool
mentions_current_time(const char *text, size_t len)
{
	static const char *const words[] = {"now", "today", "tomorrow", "yesterday"};
	size_t		i;

	for (i = 0; i < len; i++)
	{
		int			w;

		if (i > 0 && (isalnum((unsigned char) text[i - 1]) || text[i - 1] == '_'))
			continue;
		for (w = 0; w < (int) lengthof(words); w++)
		{
			size_t		wlen = strlen(words[w]);

			if (len - i >= wlen && pg_strncasecmp(text + i, words[w], wlen) == 0 &&
				(len - i == wlen ||
				 !(isalnum((unsigned char) text[i + wlen]) || text[i + wlen] == '_')))
				return true;
		}
	}
	return false;
}

/* The range table of query: its relations, and TABLESAMPLE (not repeatable). */
static void
scan_range_table(Query *query, ScopeWalk *walk)
{
	ListCell   *lc;

	foreach(lc, query->rtable)
	{
		RangeTblEntry *rte = (RangeTblEntry *) lfirst(lc);

		if (rte->rtekind != RTE_RELATION)
			continue;
		walk->relids = list_append_unique_oid(walk->relids, rte->relid);
		if (rte->tablesample != NULL && walk->not_cacheable == NULL)
			walk->not_cacheable = "it samples a table (TABLESAMPLE): the rows depend on the table's physical layout or on chance";
	}
}

/*
 * Walk the whole query -- subqueries, CTEs, sublinks, the functions of the
 * range table -- collecting the relations it reads and stopping at the
 * first node that makes the result depend on something outside the key.
 */
static bool
scope_walker(Node *node, ScopeWalk *walk)
{
	if (node == NULL)
		return false;
	if (walk->not_cacheable != NULL)
		return true;

	switch (nodeTag(node))
	{
		case T_Query:
			scan_range_table((Query *) node, walk);
			if (walk->not_cacheable != NULL)
				return true;
			return query_tree_walker((Query *) node, scope_walker, walk, 0);
		case T_SQLValueFunction:
			switch (((SQLValueFunction *) node)->op)
			{
				case SVFOP_CURRENT_ROLE:
				case SVFOP_CURRENT_USER:
				case SVFOP_USER:
				case SVFOP_CURRENT_CATALOG:
				case SVFOP_CURRENT_SCHEMA:
					/* the role, the database and search_path are in the key */
					break;
				case SVFOP_SESSION_USER:
					walk->not_cacheable = "it reads SESSION_USER, which is not in the key";
					return true;
				default:
					walk->not_cacheable = "it reads the current date or time (CURRENT_DATE, CURRENT_TIMESTAMP, LOCALTIME, ...)";
					return true;
			}
			break;
		case T_NextValueExpr:
			walk->not_cacheable = "it takes a value from a sequence";
			return true;
		case T_Var:
			{
				Var		   *var = (Var *) node;

				/* xmax changes under SELECT FOR UPDATE, ctid under VACUUM FULL */
				if (var->varattno < 0 && var->varattno != TableOidAttributeNumber)
				{
					walk->not_cacheable = "it reads a system column (ctid, xmin, xmax, cmin or cmax), which changes without a write";
					return true;
				}
				break;
			}
		case T_Const:
			if (!((Const *) node)->constisnull && type_holds_time(((Const *) node)->consttype))
				walk->has_time_constant = true;
			break;
		case T_Param:
			{
				Param	   *param = (Param *) node;

				if (param->paramkind == PARAM_EXTERN &&
					param->paramid >= 1 && param->paramid <= walk->nparams &&
					!walk->param_nulls[param->paramid - 1] &&
					type_holds_time(param->paramtype))
				{
					text	   *value = DatumGetTextPP(walk->param_values[param->paramid - 1]);

					if (mentions_current_time(VARDATA_ANY(value), VARSIZE_ANY_EXHDR(value)))
					{
						walk->not_cacheable = psprintf("parameter $%d is read as the current date or time ('now', 'today', ...)",
													   param->paramid);
						return true;
					}
				}
				break;
			}
		default:
			break;
	}

	/* every function the node calls: FuncExpr, OpExpr, Aggref, CoerceViaIO, ... */
	if (check_functions_in_node(node, check_function, walk))
		return true;
	return expression_tree_walker(node, scope_walker, walk);
}

/*
 * Whether a row trigger running the extension's cache_invalidate() (found
 * through the schema of cache_function) is enabled on relid.
 */
static bool
has_watch_trigger(Oid relid, Oid cache_function)
{
	Relation	rel = RelationIdGetRelation(relid);
	Oid			nsp = get_func_namespace(cache_function);
	bool		found = false;
	int			i;

	if (!RelationIsValid(rel))
		return false;
	for (i = 0; rel->trigdesc != NULL && i < rel->trigdesc->numtriggers && !found; i++)
	{
		Trigger    *trigger = &rel->trigdesc->triggers[i];
		char	   *name;

		/* 'R' (replica) triggers do not fire in ordinary sessions */
		if ((trigger->tgenabled != TRIGGER_FIRES_ON_ORIGIN &&
			 trigger->tgenabled != TRIGGER_FIRES_ALWAYS) ||
			!TRIGGER_FOR_ROW(trigger->tgtype))
			continue;
		name = get_func_name(trigger->tgfoid);
		found = name != NULL && strcmp(name, "cache_invalidate") == 0 &&
			get_func_namespace(trigger->tgfoid) == nsp;
	}
	RelationClose(rel);
	return found;
}

/*
 * The tables query_list (analyzed, rewritten) depends on, and whether its
 * result may be cached: deps->not_cacheable says why not.  query_string
 * and the parameters' text are those the key is made of (keys.c);
 * cache_function is the calling function, to find the extension's
 * cache_invalidate() trigger function.
 */
void
redis_query_dependencies(List *query_list, const char *query_string,
						 int nparams, const Datum *param_values,
						 const bool *param_nulls, Oid cache_function,
						 QueryDependencies *deps)
{
	ScopeWalk	walk;
	List	   *all = NIL;
	ListCell   *lc;
	Oid			information_schema = get_namespace_oid("information_schema", true);
	int			i = 0;

	memset(&walk, 0, sizeof(walk));
	walk.nparams = nparams;
	walk.param_values = param_values;
	walk.param_nulls = param_nulls;
	foreach(lc, query_list)
		(void) scope_walker(lfirst(lc), &walk);

	/*
	 * 'now'::timestamptz, date 'today': parsed into a constant long ago.
	 * The words may also hide behind escapes (E'\x6eow', U&'\006Eow',
	 * UESCAPE), which the text check cannot read: refuse those too.
	 */
	if (walk.not_cacheable == NULL && walk.has_time_constant &&
		(mentions_current_time(query_string, strlen(query_string)) ||
		 strchr(query_string, '\\') != NULL ||
		 pg_strcasestr_simple(query_string, "u&") ||
		 pg_strcasestr_simple(query_string, "uescape")))
		walk.not_cacheable = "a date or time constant may be 'now', 'today', 'tomorrow' or 'yesterday'";

	/* GIN index scans then return a random subset of the rows */
	if (walk.not_cacheable == NULL && GinFuzzySearchLimit != 0)
		walk.not_cacheable = "gin_fuzzy_search_limit is set";
	deps->not_cacheable = walk.not_cacheable;

	/* with the children a parent reads and the parents of a partition */
	foreach(lc, walk.relids)
	{
		Oid			relid = lfirst_oid(lc);

		all = list_append_unique_oid(all, relid);
		if (get_rel_relkind(relid) == RELKIND_PARTITIONED_TABLE ||
			has_subclass(relid))
			all = list_concat_unique_oid(all, find_all_inheritors(relid, NoLock, NULL));
		if (get_rel_relispartition(relid))
			all = list_concat_unique_oid(all, get_partition_ancestors(relid));
	}

	/* every one of them must be shareable, not only those named */
	foreach(lc, all)
	{
		Oid			relid = lfirst_oid(lc);
		HeapTuple	tuple;
		Form_pg_class form;
		char	   *relname;

		if (deps->not_cacheable != NULL)
			break;
		tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
		if (!HeapTupleIsValid(tuple))
			elog(ERROR, "cache lookup failed for relation %u", relid);
		form = (Form_pg_class) GETSTRUCT(tuple);
		relname = quote_qualified_identifier(get_namespace_name(form->relnamespace),
											 NameStr(form->relname));
		if (form->relpersistence == RELPERSISTENCE_TEMP)
			deps->not_cacheable = psprintf("it reads the temporary table %s", relname);
		else if (form->relrowsecurity)
			deps->not_cacheable = psprintf("row-level security is enabled on %s", relname);
		else if (form->relkind == RELKIND_FOREIGN_TABLE)
			deps->not_cacheable = psprintf("it reads the foreign table %s", relname);
		else if (form->relkind == RELKIND_SEQUENCE)
			deps->not_cacheable = psprintf("it reads the sequence %s, which changes without a write", relname);
		else if (IsCatalogNamespace(form->relnamespace) ||
				 IsToastNamespace(form->relnamespace) ||
				 form->relnamespace == information_schema)
			deps->not_cacheable = psprintf("it reads the system catalog %s (changed by DDL in other databases, by shared catalogs and by statistics)",
										   relname);
		else if (!redis_cache_preloaded() &&
				 (form->relkind == RELKIND_RELATION ||
				  form->relkind == RELKIND_PARTITIONED_TABLE ||
				  form->relkind == RELKIND_MATVIEW) &&
				 (form->relkind == RELKIND_MATVIEW ||
				  !has_watch_trigger(relid, cache_function)))
			deps->not_cacheable = psprintf("%s is not watched (cache_watch) and redis_cache is not in shared_preload_libraries", relname);
		ReleaseSysCache(tuple);
	}

	deps->nrelids = list_length(all);
	deps->relids = palloc(sizeof(Oid) * Max(deps->nrelids, 1));
	foreach(lc, all)
		deps->relids[i++] = lfirst_oid(lc);
	qsort(deps->relids, deps->nrelids, sizeof(Oid), compare_oids);
	list_free(walk.relids);
	list_free(all);
}
