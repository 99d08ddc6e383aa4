/*-------------------------------------------------------------------------
 *
 * monitor.c
 *		  The monitoring SQL functions: cache_stats() and cache_health().
 *
 * Design rules: the top of the stack.  It reads the counters (stats.c) and
 * the breaker state and talks to Redis through the connection layer; no
 * other file calls it.  INFO is untrusted text: a field that is not valid
 * in the database encoding, or a number that does not parse as an integer,
 * is null in the result (with a rate-limited WARNING), never an ERROR and
 * never invalid jsonb.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <errno.h>

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "redis_cache.h"

PG_FUNCTION_INFO_V1(cache_stats);
PG_FUNCTION_INFO_V1(cache_health);

/* Rate limiting of the warning about a malformed INFO reply. */
static TimestampTz last_invalid_info_warning = 0;

/*
 * cache_stats(): one row of totals (family NULL), then one per family.
 */
Datum
cache_stats(PG_FUNCTION_ARGS)
{
	redis_stats_materialize(fcinfo, redis_circuit_state());
	return (Datum) 0;
}

/*
 * Value of "name:" in an INFO reply of len bytes, or NULL when absent or
 * not valid text (NUL, invalid in the database encoding: INFO comes from
 * an untrusted server, and its text must not reach a jsonb result
 * unchecked).  *invalid is set in the latter case.
 */
static char *
info_field(const char *info, size_t len, const char *name, bool *invalid)
{
	size_t		nlen = strlen(name);
	const char *p = info;
	const char *end = info + len;

	while (p < end)
	{
		const char *eol = memchr(p, '\n', end - p);
		size_t		linelen = (eol ? eol : end) - p;

		if (linelen > nlen && memcmp(p, name, nlen) == 0 && p[nlen] == ':')
		{
			const char *value = p + nlen + 1;
			size_t		vlen = linelen - nlen - 1;

			if (vlen > 0 && value[vlen - 1] == '\r')
				vlen--;
			if (!pg_verifymbstr(value, (int) vlen, true))
			{
				*invalid = true;
				return NULL;
			}
			return pnstrdup(value, vlen);
		}
		if (eol == NULL)
			break;
		p = eol + 1;
	}
	return NULL;
}

/*
 * An INFO field that is an integer, as a decimal string; NULL when absent,
 * malformed (used_memory:abc) or out of range, with *invalid set for the
 * last two.  Never an ERROR: a strange INFO must not break a health check.
 */
static char *
info_integer(const char *info, size_t len, const char *name, bool *invalid)
{
	char	   *value = info_field(info, len, name, invalid);
	char	   *endptr;
	long long	v;

	if (value == NULL)
		return NULL;
	errno = 0;
	v = strtoll(value, &endptr, 10);
	if (errno != 0 || endptr == value || *endptr != '\0' ||
		!(value[0] == '-' || (value[0] >= '0' && value[0] <= '9')))
	{
		*invalid = true;
		return NULL;
	}
	return psprintf("%lld", v);
}

/* value must be valid JSON when numeric (the callers make sure of it). */
static void
append_json_field(StringInfo buf, const char *name, const char *value, bool numeric)
{
	if (buf->len > 1)
		appendStringInfoString(buf, ", ");
	escape_json(buf, name);
	appendStringInfoString(buf, ": ");
	if (value == NULL)
		appendStringInfoString(buf, "null");
	else if (numeric)
		appendStringInfoString(buf, value);
	else
		escape_json(buf, value);
}

/*
 * Redis Cluster: whether the connection is to one, its masters with their
 * slot counts (as this backend's map has them) and the redirections this
 * backend followed.
 */
static void
append_cluster_fields(StringInfo buf)
{
	RedisCluster *cluster = redis_connection_cluster();
	char		number[32];
	char	  **addresses;
	int		   *slots;
	int			n;
	int			i;
	uint64		moved;
	uint64		asked;
	uint64		retried;
	StringInfoData list;

	append_json_field(buf, "cluster", cluster ? "true" : "false", true);
	if (cluster == NULL)
		return;
	n = redis_cluster_nodes(cluster, &addresses, &slots);
	snprintf(number, sizeof(number), "%d", n);
	append_json_field(buf, "cluster_masters", number, true);
	initStringInfo(&list);
	appendStringInfoChar(&list, '[');
	for (i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoString(&list, ", ");
		appendStringInfoString(&list, "{\"address\": ");
		escape_json(&list, addresses[i]);
		appendStringInfo(&list, ", \"slots\": %d}", slots[i]);
	}
	appendStringInfoChar(&list, ']');
	append_json_field(buf, "cluster_nodes", list.data, true);
	redis_cluster_counts(cluster, &moved, &asked, &retried);
	snprintf(number, sizeof(number), UINT64_FORMAT, moved);
	append_json_field(buf, "cluster_moved", number, true);
	snprintf(number, sizeof(number), UINT64_FORMAT, asked);
	append_json_field(buf, "cluster_asked", number, true);
	snprintf(number, sizeof(number), UINT64_FORMAT, retried);
	append_json_field(buf, "cluster_tryagain", number, true);
}

/*
 * cache_health() RETURNS jsonb: one PING (timed) and one INFO.
 */
Datum
cache_health(PG_FUNCTION_ARGS)
{
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

	/* keyless: on a Redis Cluster both go to the first master (node 0) */
	redis_cmd_init(&cmds[0], "PING", 0);
	redis_cmd_init(&cmds[1], "INFO", 0);

	start = GetCurrentTimestamp();
	ok = redis_execute(cmds, 2, replies, RC_EXEC_SKIP_BREAKER | RC_EXEC_NO_ERROR);
	/* refused (an ACL, a renamed command): say which, and do not pretend */
	if (ok && replies[0]->type == RC_REPLY_ERROR)
	{
		redis_report_reply_error(replies[0], "the health check (PING)", RC_EXEC_NO_ERROR);
		ok = false;
	}
	if (ok && replies[1]->type == RC_REPLY_ERROR)
		redis_report_reply_error(replies[1], "the health check (INFO)", RC_EXEC_NO_ERROR);

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	append_json_field(&buf, "reachable", ok ? "true" : "false", true);
	append_json_field(&buf, "circuit", redis_circuit_state(), false);
	append_json_field(&buf, "host", redis_server_host(), false);
	snprintf(latency, sizeof(latency), "%d", redis_server_port());
	append_json_field(&buf, "port", latency, true);
	{
		const char *version;
		const char *cipher;

		if (redis_connection_tls(&version, &cipher))
		{
			append_json_field(&buf, "tls", version, false);
			append_json_field(&buf, "tls_cipher", cipher, false);
		}
		else
		{
			append_json_field(&buf, "tls", "null", true);
			append_json_field(&buf, "tls_cipher", "null", true);
		}
	}
	if (redis_sentinel_enabled())
		append_json_field(&buf, "sentinel_master", redis_sentinel_master_name(), false);
	else
		append_json_field(&buf, "sentinel_master", "null", true);
	append_cluster_fields(&buf);
	{
		StringInfoData local;

		initStringInfo(&local);
		redis_local_health(&local);
		append_json_field(&buf, "local_cache", local.data, true);
	}
	{
		/* the worker's replay queue (replay.c): exact, undelivered work */
		int64		counts[5];
		static const char *const names[] = {
			"replay_queued", "replay_capacity", "replay_enqueued",
			"replay_replayed", "replay_overflows"
		};

		redis_replay_counts(&counts[0], &counts[1], &counts[2], &counts[3],
							&counts[4]);
		for (i = 0; i < 5; i++)
		{
			snprintf(latency, sizeof(latency), INT64_FORMAT, counts[i]);
			append_json_field(&buf, names[i], latency, true);
		}
	}
	if (ok)
	{
		const char *info = "";
		size_t		info_bytes = 0;
		bool		invalid = false;

		if (replies[1]->type == RC_REPLY_STRING)
		{
			info = replies[1]->str;
			info_bytes = replies[1]->len;
		}
		snprintf(latency, sizeof(latency), "%.3f",
				 (double) (GetCurrentTimestamp() - start) / 1000.0);
		append_json_field(&buf, "ping_ms", latency, true);
		append_json_field(&buf, "redis_version",
						  info_field(info, info_bytes, "redis_version", &invalid), false);
		append_json_field(&buf, "run_id",
						  info_field(info, info_bytes, "run_id", &invalid), false);
		for (i = 0; i < (int) lengthof(numeric_fields); i++)
			append_json_field(&buf, numeric_fields[i],
							  info_integer(info, info_bytes, numeric_fields[i], &invalid),
							  true);
		append_json_field(&buf, "maxmemory_policy",
						  info_field(info, info_bytes, "maxmemory_policy", &invalid), false);
		if (invalid)
		{
			redis_stats_add(RC_STAT_ERRORS_PROTOCOL, 1);
			if (redis_warning_due(&last_invalid_info_warning))
				ereport(WARNING,
						(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
						 errmsg("redis_cache: INFO reply from Redis at %s:%d has malformed fields",
								redis_server_host(), redis_server_port()),
						 errdetail("Fields that are not valid text or not valid numbers are reported as null.")));
		}
	}
	appendStringInfoChar(&buf, '}');

	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
