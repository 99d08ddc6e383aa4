/*-------------------------------------------------------------------------
 *
 * monitor.c
 *		  The monitoring SQL functions: cache_stats() and cache_health().
 *
 * Design rules: the top of the stack.  It reads the counters (stats.c) and
 * the breaker state and talks to Redis through the connection layer; no
 * other file calls it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "redis_cache.h"

PG_FUNCTION_INFO_V1(cache_stats);
PG_FUNCTION_INFO_V1(cache_health);

/*
 * cache_stats(): one row of totals (family NULL), then one per family.
 */
Datum
cache_stats(PG_FUNCTION_ARGS)
{
	redis_stats_materialize(fcinfo, redis_circuit_state());
	return (Datum) 0;
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
	append_json_field(&buf, "host", redis_server_host(), false);
	snprintf(latency, sizeof(latency), "%d", redis_server_port());
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
