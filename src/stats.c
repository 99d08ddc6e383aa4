/*-------------------------------------------------------------------------
 *
 * stats.c
 *		  Statistics (cache_stats view, cache_stats_reset) and health
 *		  (cache_health).
 *
 * With shared_preload_libraries the counters live in shared memory and
 * count for every backend of the server; otherwise each backend counts for
 * itself and the view says so (scope = 'backend').  Counters are atomics,
 * so the hot path takes no lock.  Per key family (the first segment of a
 * key, such as "tenant" in "tenant:id:42") there is a bounded table: a
 * family is added under the lock the first time it is seen; when the table
 * is full, further families are counted under "(other)"; keys without a
 * ':' are counted under "(none)".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "redis_cache.h"

PG_FUNCTION_INFO_V1(cache_stats);
PG_FUNCTION_INFO_V1(cache_stats_reset);
PG_FUNCTION_INFO_V1(cache_health);

/* Upper bounds (microseconds) of the latency histogram buckets. */
static const int64 latency_bounds_us[RC_LATENCY_BUCKETS - 1] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000, 250000
};

static RedisStats local_stats;
static bool local_stats_initialized = false;

/* The counters in use: shared when preloaded, this backend's otherwise. */
RedisStats *
redis_stats(void)
{
	if (redis_cache_shared != NULL)
		return &redis_cache_shared->stats;
	if (!local_stats_initialized)
	{
		redis_stats_init(&local_stats);
		local_stats_initialized = true;
	}
	return &local_stats;
}

void
redis_stats_init(RedisStats *stats)
{
	int			i;

	memset(stats, 0, sizeof(RedisStats));
	for (i = 0; i < RC_NUM_COUNTERS; i++)
		pg_atomic_init_u64(&stats->counters[i], 0);
	for (i = 0; i < RC_LATENCY_BUCKETS; i++)
		pg_atomic_init_u64(&stats->latency[i], 0);
	for (i = 0; i < RC_MAX_FAMILIES; i++)
	{
		int			j;

		for (j = 0; j < RC_NUM_FAMILY_COUNTERS; j++)
			pg_atomic_init_u64(&stats->families[i].counters[j], 0);
	}
	stats->reset_at = GetCurrentTimestamp();
}

void
redis_stats_add(RedisCounter counter, uint64 n)
{
	pg_atomic_fetch_add_u64(&redis_stats()->counters[counter], n);
}

void
redis_stats_latency(int64 us)
{
	int			i;

	for (i = 0; i < RC_LATENCY_BUCKETS - 1; i++)
		if (us < latency_bounds_us[i])
			break;
	pg_atomic_fetch_add_u64(&redis_stats()->latency[i], 1);
}

/* Whether family is named name (len bytes, len < RC_FAMILY_NAME_LEN). */
static inline bool
family_is(const RedisFamilyStats *family, const char *name, size_t len)
{
	return memcmp(family->name, name, len) == 0 && family->name[len] == '\0';
}

/*
 * Count a hit/miss/set/delete for the family of key (user key, without
 * key_prefix).
 */
void
redis_stats_family(const char *key, size_t len, RedisFamilyCounter counter)
{
	RedisStats *stats = redis_stats();
	LWLock	   *lock = redis_cache_shared ? redis_cache_shared->lock : NULL;
	const char *colon = memchr(key, ':', len);
	size_t		flen;
	int			i;
	int			found = -1;

	/* a key without segments has no family worth a row of its own */
	if (colon == NULL)
	{
		key = "(none)";
		flen = strlen(key);
	}
	else
		flen = (size_t) (colon - key);

	if (flen >= RC_FAMILY_NAME_LEN)
		flen = RC_FAMILY_NAME_LEN - 1;

	/* families are only ever added: a racy read finds at most fewer */
	for (i = 0; i < stats->nfamilies; i++)
	{
		if (family_is(&stats->families[i], key, flen))
		{
			found = i;
			break;
		}
	}
	if (found < 0)
	{
		if (lock)
			LWLockAcquire(lock, LW_EXCLUSIVE);
		for (i = 0; i < stats->nfamilies; i++)
		{
			if (family_is(&stats->families[i], key, flen))
				break;
		}
		if (i == stats->nfamilies && stats->nfamilies < RC_MAX_FAMILIES - 1)
		{
			memcpy(stats->families[i].name, key, flen);
			stats->families[i].name[flen] = '\0';
			pg_write_barrier();
			stats->nfamilies++;
		}
		else if (i == stats->nfamilies)
		{
			/* full: the last slot is "(other)" */
			i = RC_MAX_FAMILIES - 1;
			strlcpy(stats->families[i].name, "(other)", RC_FAMILY_NAME_LEN);
		}
		found = i;
		if (lock)
			LWLockRelease(lock);
	}
	pg_atomic_fetch_add_u64(&stats->families[found].counters[counter], 1);
}

/*
 * cache_stats(): one row of totals (family NULL), then one per family.
 */
Datum
cache_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	RedisStats *stats = redis_stats();
	const char *scope = redis_cache_shared ? "server" : "backend";
	Datum		values[RC_NUM_COUNTERS + 6];
	bool		nulls[RC_NUM_COUNTERS + 6];
	Datum		buckets[RC_LATENCY_BUCKETS];
	uint64		hits;
	uint64		misses;
	int			i;
	int			nfamilies;

	InitMaterializedSRF(fcinfo, 0);

	memset(nulls, 0, sizeof(nulls));
	values[0] = CStringGetTextDatum(scope);
	nulls[1] = true;			/* family */
	for (i = 0; i < RC_NUM_COUNTERS; i++)
		values[2 + i] = Int64GetDatum((int64) pg_atomic_read_u64(&stats->counters[i]));
	hits = pg_atomic_read_u64(&stats->counters[RC_STAT_HITS]);
	misses = pg_atomic_read_u64(&stats->counters[RC_STAT_MISSES]);
	if (hits + misses > 0)
		values[2 + RC_NUM_COUNTERS] = Float8GetDatum((double) hits / (double) (hits + misses));
	else
		nulls[2 + RC_NUM_COUNTERS] = true;
	for (i = 0; i < RC_LATENCY_BUCKETS; i++)
		buckets[i] = Int64GetDatum((int64) pg_atomic_read_u64(&stats->latency[i]));
	values[3 + RC_NUM_COUNTERS] = PointerGetDatum(construct_array(buckets, RC_LATENCY_BUCKETS,
																  INT8OID, 8, FLOAT8PASSBYVAL,
																  TYPALIGN_DOUBLE));
	values[4 + RC_NUM_COUNTERS] = TimestampTzGetDatum(stats->reset_at);
	values[5 + RC_NUM_COUNTERS] = CStringGetTextDatum(redis_circuit_state());
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);

	nfamilies = stats->nfamilies;
	pg_read_barrier();
	for (i = 0; i < RC_MAX_FAMILIES; i++)
	{
		RedisFamilyStats *f = &stats->families[i];
		int			j;
		uint64		fh;
		uint64		fm;

		if (i >= nfamilies && !(i == RC_MAX_FAMILIES - 1 && f->name[0]))
			continue;
		memset(nulls, true, sizeof(nulls));
		values[0] = CStringGetTextDatum(scope);
		nulls[0] = false;
		values[1] = CStringGetTextDatum(f->name);
		nulls[1] = false;
		for (j = 0; j < RC_NUM_FAMILY_COUNTERS; j++)
		{
			values[2 + j] = Int64GetDatum((int64) pg_atomic_read_u64(&f->counters[j]));
			nulls[2 + j] = false;
		}
		fh = pg_atomic_read_u64(&f->counters[RC_FAM_HITS]);
		fm = pg_atomic_read_u64(&f->counters[RC_FAM_MISSES]);
		if (fh + fm > 0)
		{
			values[2 + RC_NUM_COUNTERS] = Float8GetDatum((double) fh / (double) (fh + fm));
			nulls[2 + RC_NUM_COUNTERS] = false;
		}
		values[4 + RC_NUM_COUNTERS] = TimestampTzGetDatum(stats->reset_at);
		nulls[4 + RC_NUM_COUNTERS] = false;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * cache_stats_reset(): zero every counter (of the server when preloaded).
 */
Datum
cache_stats_reset(PG_FUNCTION_ARGS)
{
	RedisStats *stats = redis_stats();
	int			i;
	int			j;

	if (redis_cache_shared)
		LWLockAcquire(redis_cache_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < RC_NUM_COUNTERS; i++)
		pg_atomic_write_u64(&stats->counters[i], 0);
	for (i = 0; i < RC_LATENCY_BUCKETS; i++)
		pg_atomic_write_u64(&stats->latency[i], 0);
	for (i = 0; i < RC_MAX_FAMILIES; i++)
		for (j = 0; j < RC_NUM_FAMILY_COUNTERS; j++)
			pg_atomic_write_u64(&stats->families[i].counters[j], 0);
	stats->reset_at = GetCurrentTimestamp();
	if (redis_cache_shared)
		LWLockRelease(redis_cache_shared->lock);
	PG_RETURN_VOID();
}

/* Value of "name:" in an INFO reply, or NULL. */
static char *
info_field(const char *info, const char *name)
{
	size_t		nlen = strlen(name);
	const char *p = info;

	while (p && *p)
	{
		if (strncmp(p, name, nlen) == 0 && p[nlen] == ':')
			return pnstrdup(p + nlen + 1, strcspn(p + nlen + 1, "\r\n"));
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return NULL;
}

static void
append_json_field(StringInfo buf, const char *name, const char *value, bool numeric)
{
	if (buf->len > 1)
		appendStringInfoString(buf, ", ");
	escape_json(buf, name);
	appendStringInfoString(buf, ": ");
	if (value == NULL)
		appendStringInfoString(buf, "null");
	else if (numeric && strspn(value, "0123456789.-") == strlen(value) && value[0])
		appendStringInfoString(buf, value);
	else
		escape_json(buf, value);
}

/*
 * cache_health() RETURNS jsonb: one PING (timed) and one INFO.
 */
Datum
cache_health(PG_FUNCTION_ARGS)
{
	const char *ping_argv[1] = {"PING"};
	size_t		ping_len[1] = {4};
	const char *info_argv[1] = {"INFO"};
	size_t		info_len[1] = {4};
	RedisCommand cmds[2];
	RedisReply *replies[2];
	StringInfoData buf;
	TimestampTz start;
	bool		ok;
	char		latency[32];
	static const char *const numeric_fields[] = {
		"used_memory", "maxmemory", "connected_clients", "keyspace_hits",
		"keyspace_misses", "evicted_keys", "uptime_in_seconds"
	};
	int			i;

	cmds[0].argc = 1;
	cmds[0].argv = ping_argv;
	cmds[0].argvlen = ping_len;
	cmds[1].argc = 1;
	cmds[1].argv = info_argv;
	cmds[1].argvlen = info_len;

	start = GetCurrentTimestamp();
	ok = redis_execute(cmds, 2, replies, RC_EXEC_SKIP_BREAKER | RC_EXEC_NO_ERROR);

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	append_json_field(&buf, "reachable", ok ? "true" : "false", true);
	append_json_field(&buf, "circuit", redis_circuit_state(), false);
	append_json_field(&buf, "host", redis_cache_host, false);
	snprintf(latency, sizeof(latency), "%d", redis_cache_port);
	append_json_field(&buf, "port", latency, true);
	if (ok)
	{
		const char *info = replies[1]->type == RC_REPLY_STRING ? replies[1]->str : "";

		snprintf(latency, sizeof(latency), "%.3f",
				 (double) (GetCurrentTimestamp() - start) / 1000.0);
		append_json_field(&buf, "ping_ms", latency, true);
		append_json_field(&buf, "redis_version", info_field(info, "redis_version"), false);
		append_json_field(&buf, "run_id", info_field(info, "run_id"), false);
		for (i = 0; i < (int) lengthof(numeric_fields); i++)
			append_json_field(&buf, numeric_fields[i],
							  info_field(info, numeric_fields[i]), true);
		append_json_field(&buf, "maxmemory_policy", info_field(info, "maxmemory_policy"), false);
	}
	appendStringInfoChar(&buf, '}');

	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
