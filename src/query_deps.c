/*-------------------------------------------------------------------------
 *
 * query_deps.c
 *		  Which tables a cached query reads, and which tables a transaction
 *		  writes: the two halves of automatic query result invalidation.
 *
 * Reading side: redis_query_dependencies() walks the analyzed and rewritten
 * query (views are expanded there, so the tables under a view count) and
 * adds, for partitions, their ancestors and, for parents, every descendant.
 * It also decides whether a result may be cached at all: not when it read a
 * temporary table (other sessions cannot see it), a table with row-level
 * security (the rows depend on more than the role), or a foreign table
 * (changes happen elsewhere); and, without shared_preload_libraries, not
 * when a table it read has no cache_watch() trigger to report changes.
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

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_trigger.h"
#include "commands/dbcommands.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "parser/parsetree.h"
#include "storage/proc.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
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
		case T_CreateRoleStmt:
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

static bool
collect_relations_walker(Node *node, List **relids)
{
	if (node == NULL)
		return false;
	if (IsA(node, Query))
	{
		Query	   *query = (Query *) node;
		ListCell   *lc;

		foreach(lc, query->rtable)
		{
			RangeTblEntry *rte = (RangeTblEntry *) lfirst(lc);

			if (rte->rtekind == RTE_RELATION)
				*relids = list_append_unique_oid(*relids, rte->relid);
		}
		return query_tree_walker(query, collect_relations_walker, relids, 0);
	}
	return expression_tree_walker(node, collect_relations_walker, relids);
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

static int
compare_oids(const void *a, const void *b)
{
	Oid			x = *(const Oid *) a;
	Oid			y = *(const Oid *) b;

	return (x > y) - (x < y);
}

/*
 * The tables query_list (analyzed, rewritten) depends on, and whether its
 * result may be cached.  cache_function is the calling function, to find
 * the extension's cache_invalidate() trigger function.
 */
void
redis_query_dependencies(List *query_list, Oid cache_function,
						 QueryDependencies *deps)
{
	List	   *direct = NIL;
	List	   *all = NIL;
	ListCell   *lc;
	int			i = 0;

	deps->not_cacheable = NULL;
	foreach(lc, query_list)
		(void) collect_relations_walker(lfirst(lc), &direct);

	/* with the children a parent reads and the parents of a partition */
	foreach(lc, direct)
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
	list_free(direct);
	list_free(all);
}
