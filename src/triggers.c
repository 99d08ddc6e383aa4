/*-------------------------------------------------------------------------
 *
 * triggers.c
 *		  Key templates and the cache_invalidate() trigger of watched
 *		  tables.
 *
 * The trigger turns key templates such as 'tenant:subdomain:{subdomain}'
 * into keys from the OLD and NEW rows and queues them in the commit
 * pipeline (invalidation.c), which sends them when the transaction
 * commits, and never for a rolled-back transaction or subtransaction.  A
 * template ending in '*' (and every template at TRUNCATE) is a pattern,
 * whose literal parts and values are glob-escaped.
 *
 * Design rules: templates are parsed once per trigger and transaction (the
 * parse lives in TopTransactionContext, keyed by the local transaction id,
 * trigger and tuple descriptor); a NULL column produces no key; the
 * trigger also reports its table to query_deps.c, so that cached query
 * results over it end at commit even in sessions without the hooks.
 *
 * Who may delete.  Key templates decide which keys of the shared Redis
 * database a table's writers delete, so they are honoured only on tables
 * whose owner (or, for a partition, the owner of an ancestor) is a
 * superuser or may execute cache_watch(regclass, text[]), which is not
 * granted to PUBLIC: any role can create a table and a trigger, but not
 * choose what the trigger deletes.  Watches that existed when 1.4 was
 * installed are listed in the configuration table cache_adopted_watches
 * and keep working for their owners.  Otherwise the trigger raises ERROR.
 * A trigger without templates (cache_watch(tbl)) only ends cached query
 * results of its own table and runs for anyone.
 *
 * Families.  Each template owns its family, every placeholder taken as
 * '*' ('tenant:id:{id}' owns 'tenant:id:*'): the keys the bulk deletes
 * after a crash, a Redis restart or a version change may remove
 * (families.c).  cache_watch() refuses a template that does not begin with
 * literal text, whose family would be the whole database, and queues the
 * families so that its commit records them in Redis; the trigger queues
 * them once per subtransaction with the keys, so the commit records them
 * again and a replay that does not fit falls back to them.
 *
 * Bounded patterns.  A pattern expanded from a row longer than
 * RC_MAX_PATTERN_BYTES would not fit the worker's queue: the template's
 * whole family (every placeholder '*') is invalidated instead, with a
 * WARNING, never a truncated pattern.  cache_watch() of a partitioned table
 * also installs the TRUNCATE trigger on each partition (TRUNCATE triggers
 * are not cloned), so truncating one partition ends the parent's keys; a
 * partition added later is reported (WARNING) by its first write.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "redis_cache.h"

PG_FUNCTION_INFO_V1(cache_invalidate);
PG_FUNCTION_INFO_V1(cache_check_templates);

/* One parsed piece of a template: literal text or a column. */
typedef struct TemplatePart
{
	bool		is_column;
	const char *text;			/* literal, or column name */
	int			len;
	AttrNumber	attnum;
	FmgrInfo	output;			/* the column type's output function */
} TemplatePart;

typedef struct KeyTemplate
{
	const char *source;
	int			nparts;
	TemplatePart *parts;
	bool		is_pattern;		/* ends in '*' */
	char	   *family;			/* every placeholder '*': what it owns */
	int			familylen;
	bool		family_ok;		/* an acceptable family (families.c) */
} KeyTemplate;

/*
 * Parsed templates of the trigger fired last, valid for the current
 * transaction (TopTransactionContext): a bulk UPDATE parses them once, not
 * once per row.  The tuple descriptor is part of the key, so DDL between
 * statements of one transaction gets a fresh parse.
 */
typedef struct TemplateCache
{
	Oid			tgoid;
	TupleDesc	tupdesc;
	int			ntemplates;
	KeyTemplate **templates;
	/* the subtransaction that queued the families last */
	SubTransactionId families_queued_in;
} TemplateCache;

static TemplateCache *template_cache = NULL;
static LocalTransactionId template_cache_lxid = InvalidLocalTransactionId;

/* Last WARNING about a pattern replaced by its family. */
static TimestampTz last_family_warning = 0;

/* Last WARNING about a partition without the TRUNCATE trigger. */
static TimestampTz last_partition_warning = 0;

/*
 * A row trigger cloned from a partitioned table's (PostgreSQL clones row
 * triggers to partitions created later, not TRUNCATE triggers): WARNING
 * when the partition has no TRUNCATE trigger of ours, since truncating it
 * would leave the parent's keys.  Uses the relation's trigger descriptor
 * only, no catalog access.
 */
static void
warn_partition_without_truncate(Relation rel, Trigger *trigger)
{
	TriggerDesc *desc = rel->trigdesc;
	int			i;

	if (!trigger->tgisclone || desc == NULL)
		return;
	for (i = 0; i < desc->numtriggers; i++)
		if (desc->triggers[i].tgfoid == trigger->tgfoid &&
			TRIGGER_FOR_TRUNCATE(desc->triggers[i].tgtype))
			return;
	if (redis_warning_due(&last_partition_warning))
		ereport(WARNING,
				(errmsg("redis_cache: partition \"%s\" of a watched table has no TRUNCATE trigger",
						RelationGetRelationName(rel)),
				 errdetail("TRUNCATE of this partition would not invalidate the keys of its parent's templates."),
				 errhint("Call cache_watch() on the partitioned table again after adding partitions.")));
}

/* ---- who may delete ------------------------------------------------------ */

/*
 * cache_watch(regclass, text[]) of the extension whose cache_invalidate()
 * function is trigger_function, or InvalidOid.
 */
static Oid
cache_watch_function(Oid trigger_function)
{
	Oid			nsp = get_func_namespace(trigger_function);
	char	   *nspname = OidIsValid(nsp) ? get_namespace_name(nsp) : NULL;
	Oid			argtypes[2] = {REGCLASSOID, TEXTARRAYOID};

	if (nspname == NULL)
		return InvalidOid;
	return LookupFuncName(list_make2(makeString(nspname), makeString("cache_watch")),
						  2, argtypes, true);
}

static Oid
relation_owner(Oid relid)
{
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tuple))
		return InvalidOid;
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

static bool
role_may_watch(Oid role, Oid watch_function)
{
	return OidIsValid(role) &&
		(superuser_arg(role) ||
		 (OidIsValid(watch_function) &&
		  pg_proc_aclcheck(watch_function, role, ACL_EXECUTE) == ACLCHECK_OK));
}

/*
 * True when the table (or an ancestor of the partition) is listed in
 * cache_adopted_watches with these templates and its current owner: a
 * watch that existed when 1.4 was installed, kept working for an owner who
 * may not call cache_watch().  The table is an extension configuration
 * table, so the list survives pg_dump and restore (where a GRANT made by
 * the update script does not: it counts as the extension's initial
 * privilege).  False when the table does not exist yet (library newer than
 * the installed extension, whose cache_watch() is still PUBLIC's anyway).
 */
static bool
adopted_watch(Oid nsp, List *relids, Trigger *trigger)
{
	Datum	   *oids;
	Datum	   *args;
	Datum		values[2];
	Oid			types[2] = {OIDARRAYOID, TEXTARRAYOID};
	char	   *sql;
	ListCell   *lc;
	int			i = 0;
	int			ret;
	bool		found;
	Oid			table = get_relname_relid("cache_adopted_watches", nsp);
	Oid			save_userid;
	int			save_sec_context;

	if (!OidIsValid(table))
		return false;
	oids = palloc(sizeof(Datum) * list_length(relids));
	foreach(lc, relids)
		oids[i++] = ObjectIdGetDatum(lfirst_oid(lc));
	values[0] = PointerGetDatum(construct_array(oids, list_length(relids), OIDOID,
												sizeof(Oid), true, TYPALIGN_INT));
	args = palloc(sizeof(Datum) * trigger->tgnargs);
	for (i = 0; i < trigger->tgnargs; i++)
		args[i] = CStringGetTextDatum(trigger->tgargs[i]);
	values[1] = PointerGetDatum(construct_array(args, trigger->tgnargs, TEXTOID,
												-1, false, TYPALIGN_INT));
	/* qualified operators: this runs as the table's owner, whatever search_path */
	sql = psprintf("SELECT 1 FROM %s a JOIN pg_catalog.pg_class c "
				   "ON c.oid OPERATOR(pg_catalog.=) a.tbl::pg_catalog.oid "
				   "WHERE a.tbl::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1) "
				   "AND a.owner::pg_catalog.oid OPERATOR(pg_catalog.=) c.relowner "
				   "AND a.key_templates OPERATOR(pg_catalog.=) $2",
				   quote_qualified_identifier(get_namespace_name(nsp), "cache_adopted_watches"));
	/* as the table's owner (the writer may not read it), as ri_triggers.c does */
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(relation_owner(table),
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_NOFORCE_RLS);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute_with_args(sql, 2, types, values, NULL, true, 1);
	found = ret == SPI_OK_SELECT && SPI_processed > 0;
	SPI_finish();
	SetUserIdAndSecContext(save_userid, save_sec_context);
	return found;
}

/*
 * ERROR unless the templates of trigger on rel may be honoured: the owner of
 * rel, or of one of its partition ancestors, is a superuser or may execute
 * cache_watch(regclass, text[]), or the watch was adopted by the 1.4 update.
 */
static void
check_template_owner(Relation rel, Trigger *trigger)
{
	Oid			watch_function = cache_watch_function(trigger->tgfoid);
	Oid			owner = rel->rd_rel->relowner;
	List	   *relids = list_make1_oid(RelationGetRelid(rel));

	if (role_may_watch(owner, watch_function))
		return;
	if (rel->rd_rel->relispartition)
	{
		List	   *ancestors = get_partition_ancestors(RelationGetRelid(rel));
		ListCell   *lc;

		foreach(lc, ancestors)
			if (role_may_watch(relation_owner(lfirst_oid(lc)), watch_function))
				return;
		relids = list_concat(relids, ancestors);
	}
	if (adopted_watch(get_func_namespace(trigger->tgfoid), relids, trigger))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("redis_cache: cache_invalidate() may only run with key templates on tables of roles allowed to call cache_watch()"),
			 errdetail("Trigger \"%s\" is on \"%s\", owned by role \"%s\", which may not execute cache_watch(regclass, text[]).",
					   trigger->tgname, RelationGetRelationName(rel),
					   GetUserNameFromId(owner, true) ? GetUserNameFromId(owner, true) : "?"),
			 errhint("Key templates choose which Redis keys writers delete. A superuser can GRANT EXECUTE ON FUNCTION cache_watch(regclass, text[]) TO the table's owner, who then calls cache_watch().")));
}

/*
 * Parse a template against the relation's columns.  ERROR on a malformed
 * template or an unknown column.
 */
static KeyTemplate *
parse_template(const char *source, TupleDesc tupdesc, const char *relname)
{
	KeyTemplate *tmpl = palloc0(sizeof(KeyTemplate));
	size_t		srclen = strlen(source);
	const char *p = source;
	int			maxparts = (int) srclen + 1;

	tmpl->source = source;
	tmpl->parts = palloc0(sizeof(TemplatePart) * maxparts);

	if (srclen == 0 || srclen > RC_MAX_KEY_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("redis_cache: invalid key template \"%s\"", source),
				 errdetail("A template is 1 to %d bytes long.", RC_MAX_KEY_BYTES),
				 errhint("Write templates like 'tenant:id:{id}' or 'product:variants:{id}:*'.")));
	redis_validate_key(source, srclen, "key template");
	tmpl->is_pattern = source[srclen - 1] == '*';

	while (*p)
	{
		TemplatePart *part = &tmpl->parts[tmpl->nparts];

		if (*p == '{')
		{
			const char *end = strchr(p + 1, '}');
			const char *nested = strchr(p + 1, '{');
			char	   *name;

			if (end == NULL || (nested != NULL && nested < end) || end == p + 1)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("redis_cache: invalid key template \"%s\"", source),
						 errdetail("A placeholder is a column name between { and }."),
						 errhint("Write templates like 'tenant:subdomain:{subdomain}'.")));
			name = pnstrdup(p + 1, end - p - 1);
			part->is_column = true;
			part->text = name;
			part->len = (int) (end - p - 1);
			part->attnum = SPI_fnumber(tupdesc, name);
			if (part->attnum <= 0)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_COLUMN),
						 errmsg("redis_cache: column \"%s\" of relation \"%s\" does not exist",
								name, relname),
						 errdetail("Key template \"%s\" refers to it.", source),
						 errhint("Use the name of a column of \"%s\" between { and }.", relname)));
			{
				Oid			typoutput;
				bool		typisvarlena;

				getTypeOutputInfo(TupleDescAttr(tupdesc, part->attnum - 1)->atttypid,
								  &typoutput, &typisvarlena);
				fmgr_info(typoutput, &part->output);
			}
			p = end + 1;
		}
		else if (*p == '}')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("redis_cache: invalid key template \"%s\"", source),
					 errdetail("Unbalanced \"}\".")));
		else
		{
			const char *start = p;

			while (*p && *p != '{' && *p != '}')
				p++;
			part->is_column = false;
			part->text = start;
			part->len = (int) (p - start);
		}
		tmpl->nparts++;
	}
	return tmpl;
}

/*
 * Expand a template for one row.  Returns false when a column is NULL (no
 * key).  For pattern templates, literal text and values are glob-escaped and
 * the final '*' kept.  With all_columns_wild (TRUNCATE), every placeholder
 * becomes '*'.
 */
static bool
expand_template(const KeyTemplate *tmpl, HeapTuple tuple, TupleDesc tupdesc,
				bool all_columns_wild, StringInfo out, bool *is_pattern)
{
	bool		pattern = tmpl->is_pattern || all_columns_wild;
	int			i;

	resetStringInfo(out);
	for (i = 0; i < tmpl->nparts; i++)
	{
		const TemplatePart *part = &tmpl->parts[i];

		if (!part->is_column)
		{
			if (!pattern)
				appendBinaryStringInfo(out, part->text, part->len);
			else if (tmpl->is_pattern && i == tmpl->nparts - 1)
			{
				/* the trailing '*' stays a wildcard */
				redis_append_glob_escaped(out, part->text, part->len - 1);
				appendStringInfoChar(out, '*');
			}
			else
				redis_append_glob_escaped(out, part->text, part->len);
		}
		else if (all_columns_wild)
			appendStringInfoChar(out, '*');
		else
		{
			bool		isnull;
			Datum		datum = heap_getattr(tuple, part->attnum, tupdesc, &isnull);
			char	   *value;

			if (isnull)
				return false;
			value = OutputFunctionCall((FmgrInfo *) &part->output, datum);
			if (pattern)
				redis_append_glob_escaped(out, value, (int) strlen(value));
			else
				appendStringInfoString(out, value);
			pfree(value);
		}
	}
	*is_pattern = pattern;
	return true;
}

/*
 * Fill in the template's family: the glob of every key it can produce,
 * which the extension owns (families.c).  A template must begin with
 * literal text for it to be acceptable.
 */
static void
set_template_family(KeyTemplate *tmpl, TupleDesc tupdesc)
{
	StringInfoData buf;
	bool		is_pattern;

	initStringInfo(&buf);
	expand_template(tmpl, NULL, tupdesc, true, &buf, &is_pattern);
	tmpl->family = buf.data;
	tmpl->familylen = buf.len;
	tmpl->family_ok = redis_family_unacceptable(buf.data, buf.len) == NULL;
}

/*
 * Queue the families of the templates (the commit records them in Redis,
 * and falls back to them when its keys do not fit the replay queue).
 */
static void
queue_families(KeyTemplate **templates, int ntemplates, int prefix_index)
{
	int			i;

	for (i = 0; i < ntemplates; i++)
		if (templates[i]->family_ok)
			redis_queue_family(templates[i]->family, templates[i]->familylen,
							   prefix_index);
}

/*
 * Queue the keys of one row.  A pattern too long for the invalidation queue
 * becomes its template's family (every placeholder '*'), which covers it:
 * template sources are at most RC_MAX_KEY_BYTES, so a family, escaped, is
 * at most RC_MAX_PATTERN_BYTES.
 */
static void
queue_row(KeyTemplate **templates, int ntemplates, HeapTuple tuple,
		  TupleDesc tupdesc, int prefix_index, StringInfo buf)
{
	int			i;

	for (i = 0; i < ntemplates; i++)
	{
		bool		is_pattern;

		if (!expand_template(templates[i], tuple, tupdesc, false, buf, &is_pattern))
			continue;
		if (is_pattern && buf->len > RC_MAX_PATTERN_BYTES)
		{
			int			len = buf->len;

			expand_template(templates[i], NULL, tupdesc, true, buf, &is_pattern);
			if (redis_warning_due(&last_family_warning))
				ereport(WARNING,
						(errmsg("redis_cache: a key pattern of template \"%s\" is %d bytes long, invalidating the whole family \"%s\" instead",
								templates[i]->source, len, buf->data),
						 errdetail("Patterns longer than %d bytes do not fit the invalidation queue.",
								   RC_MAX_PATTERN_BYTES),
						 errhint("Use shorter column values in pattern templates, for example an id instead of a name.")));
		}
		redis_queue_invalidation(buf->data, buf->len, is_pattern, prefix_index);
	}
}

/*
 * cache_invalidate(): AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW, or
 * AFTER TRUNCATE FOR EACH STATEMENT, with key templates as arguments.
 */
Datum
cache_invalidate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata;
	Trigger    *trigger;
	TupleDesc	tupdesc;
	const char *relname;
	KeyTemplate **templates;
	int			i;
	int			prefix_index;
	StringInfoData buf;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("redis_cache: cache_invalidate() was not called by the trigger manager"),
				 errhint("Use it in CREATE TRIGGER ... EXECUTE FUNCTION cache_invalidate('key:{column}'), or call cache_watch().")));

	trigdata = (TriggerData *) fcinfo->context;
	trigger = trigdata->tg_trigger;
	tupdesc = RelationGetDescr(trigdata->tg_relation);
	relname = RelationGetRelationName(trigdata->tg_relation);

	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("redis_cache: trigger \"%s\" on \"%s\" must be an AFTER trigger",
						trigger->tgname, relname),
				 errhint("Invalidation is queued after the change and sent at commit.")));
	if (TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event) &&
		!TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("redis_cache: trigger \"%s\" on \"%s\" must be FOR EACH ROW",
						trigger->tgname, relname),
				 errhint("Only TRUNCATE uses a FOR EACH STATEMENT trigger.")));

	/* cached query results that read this table end with this change */
	redis_query_note_trigger_write(RelationGetRelid(trigdata->tg_relation));
	if (trigger->tgnargs == 0)
		return PointerGetDatum(NULL);

	if (template_cache != NULL && template_cache_lxid == MyProc->lxid &&
		template_cache->tgoid == trigger->tgoid &&
		template_cache->tupdesc == tupdesc)
		templates = template_cache->templates;
	else
	{
		MemoryContext old;
		TemplateCache *cache;

		/* once per trigger and transaction, like the parse */
		check_template_owner(trigdata->tg_relation, trigger);
		if (TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
			warn_partition_without_truncate(trigdata->tg_relation, trigger);

		old = MemoryContextSwitchTo(TopTransactionContext);
		cache = palloc0(sizeof(TemplateCache));
		templates = palloc(sizeof(KeyTemplate *) * trigger->tgnargs);
		for (i = 0; i < trigger->tgnargs; i++)
		{
			templates[i] = parse_template(pstrdup(trigger->tgargs[i]), tupdesc, relname);
			set_template_family(templates[i], tupdesc);
		}
		cache->tgoid = trigger->tgoid;
		cache->families_queued_in = InvalidSubTransactionId;
		cache->tupdesc = tupdesc;
		cache->ntemplates = trigger->tgnargs;
		cache->templates = templates;
		template_cache = cache;
		template_cache_lxid = MyProc->lxid;
		MemoryContextSwitchTo(old);
	}

	prefix_index = redis_queue_prefix_index();
	initStringInfo(&buf);

	/* once per subtransaction (an aborted one takes its queue along) */
	if (template_cache->families_queued_in != GetCurrentSubTransactionId())
	{
		queue_families(templates, trigger->tgnargs, prefix_index);
		template_cache->families_queued_in = GetCurrentSubTransactionId();
	}

	if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
	{
		for (i = 0; i < trigger->tgnargs; i++)
		{
			bool		is_pattern;

			expand_template(templates[i], NULL, tupdesc, true, &buf, &is_pattern);
			redis_queue_invalidation(buf.data, buf.len, is_pattern, prefix_index);
		}
	}
	else
	{
		if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ||
			TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
			queue_row(templates, trigger->tgnargs, trigdata->tg_trigtuple,
					  tupdesc, prefix_index, &buf);
		if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
			queue_row(templates, trigger->tgnargs, trigdata->tg_newtuple,
					  tupdesc, prefix_index, &buf);
		if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
			queue_row(templates, trigger->tgnargs, trigdata->tg_trigtuple,
					  tupdesc, prefix_index, &buf);
	}

	return PointerGetDatum(NULL);
}

/*
 * cache_check_templates(tbl regclass, templates text[]) RETURNS void:
 * ERROR unless every template is valid for the table (used by cache_watch).
 */
Datum
cache_check_templates(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(1);
	Relation	rel;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;
	KeyTemplate **templates;

	/*
	 * The families it queues become owned (bulk deletes may remove them):
	 * only roles that may create watches may, as cache_watch() checks.
	 */
	if (!role_may_watch(GetUserId(), cache_watch_function(fcinfo->flinfo->fn_oid)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("redis_cache: permission denied for cache_check_templates()"),
				 errdetail("Checking templates records their key families as owned by the cache, which bulk deletes may remove: only roles that may execute cache_watch(regclass, text[]) may."),
				 errhint("Call cache_watch(), which a superuser can GRANT.")));

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("redis_cache: at least one key template is required"),
				 errhint("For example: SELECT cache_watch('tenants', 'tenant:id:{id}');")));
	rel = relation_open(relid, AccessShareLock);
	templates = palloc(sizeof(KeyTemplate *) * n);
	for (i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("redis_cache: key templates must not be NULL")));
		templates[i] = parse_template(TextDatumGetCString(elems[i]),
									  RelationGetDescr(rel), RelationGetRelationName(rel));
		set_template_family(templates[i], RelationGetDescr(rel));
		if (!templates[i]->family_ok)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("redis_cache: key template \"%s\" must begin with literal text",
							templates[i]->source),
					 errdetail("The extension owns the keys of the family \"%s\" of a watched template and deletes them in bulk after a crash or a Redis restart; a family must not cover every key of the database.",
							   templates[i]->family),
					 errhint("Start the template with a name, for example 'tenant:id:{id}'.")));
	}
	relation_close(rel, AccessShareLock);
	/* recorded in Redis at commit, with the watch (invalidation.c) */
	queue_families(templates, n, redis_queue_prefix_index());
	PG_RETURN_VOID();
}

