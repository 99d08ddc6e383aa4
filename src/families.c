/*-------------------------------------------------------------------------
 *
 * families.c
 *		  Which keys the extension owns: the families of watched tables'
 *		  key templates and the families a DBA declares as cache.
 *
 * The Redis database is shared with what applications keep beside their
 * cache (sessions, job queues, another framework's keys), often with no
 * key prefix at all.  So a bulk delete (the flush after a PostgreSQL crash,
 * after a Redis restart or restore, on a cache version change, and the
 * fallback of an overflowing replay queue) touches only:
 *
 *   - the query-result namespace (prefix||"query:...", keys.c);
 *   - the families of the templates of watched tables, each placeholder
 *     taken as '*': 'tenant:id:{id}' owns 'tenant:id:*';
 *   - the globs of redis_cache.cache_families (a superuser setting, read
 *     by every backend and the worker alike: PGC_SIGHUP).
 *
 * Never a whole prefix or database: a family must begin with literal text
 * (keys.c, redis_family_unacceptable), which cache_watch() checks for
 * templates and the setting's check hook for declared families.
 *
 * Where the template families are kept.  In Redis itself, in the set
 * prefix||"cache:families" (a bookkeeping key: never written by the SQL
 * functions on a caller's behalf, never removed by a flush): it is shared
 * by every PostgreSQL server that writes to the namespace, and readable by
 * whichever backend the version check elects to flush, preloaded or not,
 * with no catalog access.  cache_watch() adds a table's families at its
 * commit; a backend's first commit on each connection that deletes a
 * template's keys adds the template's family again in the same round trip
 * (invalidation.c; SADD of a member already there changes nothing), so a
 * set lost with a Redis restore is rebuilt by the next writes, and a watch created before version 1.5 is recorded by its first
 * write.  A member that is not an acceptable family (foreign or hostile
 * data) is ignored, never obeyed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/varlena.h"

#include "redis_cache.h"

/* redis_cache.cache_families: comma-separated globs after key_prefix */
static char *cache_families_setting = NULL;

/* Most families read from the Redis set: more is foreign data. */
#define RC_MAX_FAMILIES		4096

PG_FUNCTION_INFO_V1(cache_families);

/*
 * Split the setting into its globs (trimmed, non-empty), palloc'd.
 * Returns the count.  The check hook has validated the text.
 */
static int
declared_families(const char *setting, char ***globs)
{
	char	   *copy;
	List	   *items = NIL;
	ListCell   *lc;
	int			n = 0;

	*globs = NULL;
	if (setting == NULL || setting[0] == '\0')
		return 0;
	copy = pstrdup(setting);
	/* globs may contain any character but ',': split by hand */
	{
		char	   *p = copy;

		for (;;)
		{
			char	   *comma = strchr(p, ',');
			char	   *end;

			if (comma)
				*comma = '\0';
			while (*p == ' ' || *p == '\t')
				p++;
			end = p + strlen(p);
			while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
				*--end = '\0';
			if (*p)
				items = lappend(items, p);
			if (!comma)
				break;
			p = comma + 1;
		}
	}
	*globs = palloc(sizeof(char *) * Max(list_length(items), 1));
	foreach(lc, items)
		(*globs)[n++] = (char *) lfirst(lc);
	list_free(items);
	return n;
}

static bool
check_cache_families(char **newval, void **extra, GucSource source)
{
	char	  **globs;
	int			n;
	int			i;

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	n = declared_families(*newval, &globs);
	for (i = 0; i < n; i++)
	{
		const char *why = redis_family_unacceptable(globs[i], strlen(globs[i]));

		if (why != NULL)
		{
			GUC_check_errmsg("invalid entry \"%s\" in redis_cache.cache_families: %s",
							 globs[i], why);
			GUC_check_errhint("List glob patterns of cache keys, for example 'tenant:*, product:*, settings:*'.");
			return false;
		}
	}
	return true;
}

/*
 * The families of namespace "prefix" (globs after the prefix), palloc'd:
 * the declared ones, then the members of prefix||"cache:families" that are
 * acceptable.  round_trip, when not NULL, is the connection to use (the
 * version check's); otherwise redis_execute() with flags.  Returns the
 * count, or -1 when Redis could not be read (the caller must not flush
 * with a partial list: keys of a family it missed would stay).
 */
int
redis_owned_families(const char *prefix, int flags, RedisRoundTrip round_trip,
					 char ***globs)
{
	char	  **declared;
	int			ndeclared = declared_families(cache_families_setting, &declared);
	char	   *key = redis_control_key(prefix, RC_CONTROL_FAMILIES);
	RedisCommand cmd;
	RedisReply *reply = NULL;
	int			n = 0;
	size_t		i;
	bool		ok;

	redis_cmd_init(&cmd, "SMEMBERS", 1);
	redis_cmd_key_str(&cmd, key);
	if (round_trip != NULL)
		ok = round_trip(&cmd, 1, &reply);
	else
		ok = redis_execute(&cmd, 1, &reply, flags);
	if (!ok)
		return -1;
	if (reply->type == RC_REPLY_ERROR)
	{
		/* a key of another type where the set should be: no families */
		if (redis_reply_error_kind(reply) != RC_ERR_WRONGTYPE)
		{
			if (round_trip == NULL)
				redis_report_reply_error(reply, "reading the owned key families (SMEMBERS)", flags);
			else
				redis_fault_set(RC_FAULT_PROTOCOL, "Redis refused SMEMBERS %s: %s", key,
								redis_printable(reply->str, reply->len));
			return -1;
		}
	}

	*globs = palloc(sizeof(char *) * (ndeclared + RC_MAX_FAMILIES + 1));
	for (i = 0; i < (size_t) ndeclared; i++)
		(*globs)[n++] = declared[i];
	if (reply->type == RC_REPLY_ARRAY)
	{
		for (i = 0; i < reply->elements && i < RC_MAX_FAMILIES; i++)
		{
			RedisReply *m = reply->element[i];

			if (m->type != RC_REPLY_STRING ||
				redis_family_unacceptable(m->str, m->len) != NULL ||
				strlen(m->str) != m->len)
				continue;
			(*globs)[n++] = m->str;
		}
	}
	return n;
}

/*
 * SADD the families to prefix||"cache:families" (cache_watch()).  Faults
 * degrade per flags; false when they were not recorded.
 */
bool
redis_record_families(const char *prefix, char *const *globs, int nglobs,
					  int flags)
{
	RedisCommand cmd;
	RedisReply *reply;
	int			i;

	if (nglobs == 0)
		return true;
	/* SADD key member ...: one key, the members are values */
	redis_cmd_init(&cmd, "SADD", nglobs + 1);
	redis_cmd_key_str(&cmd, redis_control_key(prefix, RC_CONTROL_FAMILIES));
	for (i = 0; i < nglobs; i++)
		redis_cmd_str(&cmd, globs[i]);
	reply = redis_run(&cmd, flags);
	if (reply == NULL)
		return false;
	if (reply->type == RC_REPLY_ERROR)
	{
		redis_report_reply_error(reply, "recording the owned key families (SADD)", flags);
		return false;
	}
	return true;
}

/*
 * cache_families() RETURNS TABLE(family text, source text): what bulk
 * deletes of the current namespace may remove besides the query results:
 * source 'setting' (redis_cache.cache_families) or 'watch' (recorded in
 * Redis by cache_watch() and by commits).  Empty when Redis is unreachable
 * (with the usual degradation).
 */
static int
compare_globs(const void *a, const void *b)
{
	return strcmp(*(const char *const *) a, *(const char *const *) b);
}

Datum
cache_families(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	  **declared;
	int			ndeclared;
	char	  **globs;
	int			n;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	ndeclared = declared_families(cache_families_setting, &declared);
	n = redis_owned_families(redis_cache_key_prefix ? redis_cache_key_prefix : "",
							 0, NULL, &globs);
	if (n < 0)
	{
		/* the declared ones are known without Redis */
		globs = declared;
		n = ndeclared;
	}
	/* the declared ones in the setting's order, then the recorded ones sorted */
	if (n > ndeclared)
		qsort(&globs[ndeclared], n - ndeclared, sizeof(char *), compare_globs);
	for (i = 0; i < n; i++)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};

		/* a declared family also recorded by a watch is listed once */
		if (i >= ndeclared)
		{
			int			j;

			for (j = 0; j < ndeclared; j++)
				if (strcmp(declared[j], globs[i]) == 0)
					break;
			if (j < ndeclared)
				continue;
		}
		values[0] = CStringGetTextDatum(globs[i]);
		values[1] = CStringGetTextDatum(i < ndeclared ? "setting" : "watch");
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

void
redis_families_define_gucs(void)
{
	DefineCustomStringVariable("redis_cache.cache_families",
							   gettext_noop("Declares families of keys (glob patterns after key_prefix) that hold cache, which bulk deletes may remove."),
							   gettext_noop("For example 'tenant:*, product:*, settings:*'. Families of watched tables' key templates are owned without being listed; a family must begin with literal text. Nothing else of the Redis database is ever deleted in bulk."),
							   &cache_families_setting,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_cache_families, NULL, NULL);
}
