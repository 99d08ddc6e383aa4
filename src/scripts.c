/*-------------------------------------------------------------------------
 *
 * scripts.c
 *		  Every Lua script the extension runs in Redis, and how it is run.
 *
 * Design rules:
 *
 * - One file holds the scripts, so the keys each one touches can be read in
 *   one place.  Each comment names its KEYS and ARGV.
 * - Every script declares in KEYS every key it touches that can be named
 *   before it runs, and all the keys of one call share one Redis Cluster
 *   slot: the hashtag of the query namespace ("query:{<sysid>.<tli>}:",
 *   keys.c) or of the bookkeeping ("{cache}:").  A cluster routes the call
 *   by those keys; the keys a script finds while running (members of a
 *   dependency set, a set moved aside) are in the same slot by
 *   construction, and are touched with redis.pcall where a slot in
 *   migration may have moved them already (the call then does less
 *   clean-up, never less invalidation: what ends results, the generations,
 *   is declared and done first).
 * - Scripts are sent with EVALSHA (redis_script_cmd(), then
 *   redis_execute_scripts() or redis_run_script()): the body goes on the
 *   wire only for the commands Redis answers NOSCRIPT (first use, a
 *   restart, SCRIPT FLUSH, a new cluster node), in one more round trip.
 *   Pipelines too: no caller sends EVAL with a body itself.
 * - Scripts never trust what they read: a value of the wrong type is
 *   deleted or ignored, never an error that leaves half the work done.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/cryptohash.h"
#include "common/sha1.h"

#include "redis_cache.h"

/*
 * Version check (version.c), the atomic compare step.  KEYS: version,
 * versions, run_id, flush, flushed, families (prefix||"{cache}:..."),
 * then, on a standalone server only, the same six under their legacy names
 * (prefix||"cache:...", versions 1.1 to 1.6).  ARGV: expected version,
 * run_id ("" if unknown), marker token, marker TTL.  Returns {action,
 * detail, stored, migrated}: INIT, OK, STALE stored, FLUSHING, FLUSH
 * mismatch stored, FLUSH restart, FLUSH resume; migrated is "1" when the
 * legacy keys were renamed.
 *
 * Legacy migration: no current version but a legacy one means an upgrade
 * from 1.6, not a first run (which would skip a flush a new version or a
 * restart needs).  Each legacy key that exists is renamed to its current
 * name, all in this one atomic script, before the check proceeds as usual.
 * The families set is merged (SMEMBERS, SADD: no command beyond README's
 * ACL line) when a 1.7 commit recorded one meanwhile; a
 * legacy key of an unexpected type where a set is needed stays where it is
 * (still reserved).  A cluster gets no legacy keys (they hash elsewhere):
 * 1.6 never ran there.
 */
static const char version_check_script[] =
"local stored = redis.call('GET', KEYS[1])\n"
"local migrated = ''\n"
"if not stored and #KEYS >= 12 and redis.call('EXISTS', KEYS[7]) == 1 then\n"
"  for i = 1, 6 do\n"
"    local old = KEYS[6 + i]\n"
"    local ot = redis.call('TYPE', old).ok\n"
"    local nt = redis.call('TYPE', KEYS[i]).ok\n"
"    if ot ~= 'none' then\n"
"      if nt == 'none' or i < 6 then\n"
"        redis.call('RENAME', old, KEYS[i])\n"
"      elseif ot == 'set' and nt == 'set' then\n"
"        local m = redis.call('SMEMBERS', old)\n"
"        for j = 1, #m, 1000 do\n"
"          redis.call('SADD', KEYS[i], unpack(m, j, math.min(j + 999, #m)))\n"
"        end\n"
"        redis.call('UNLINK', old)\n"
"      end\n"
"    end\n"
"  end\n"
"  migrated = '1'\n"
"  stored = redis.call('GET', KEYS[1])\n"
"end\n"
"local t = redis.call('TIME')\n"
"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
"local done = ARGV[1] .. '|' .. ARGV[2]\n"
"if not stored then\n"
"  redis.call('SET', KEYS[1], ARGV[1])\n"
"  redis.call('HSETNX', KEYS[2], ARGV[1], now)\n"
"  redis.call('SET', KEYS[3], ARGV[2])\n"
"  redis.call('SET', KEYS[5], done)\n"
"  return {'INIT', '', '', migrated}\n"
"end\n"
"if stored ~= ARGV[1] then\n"
"  local mine = redis.call('HGET', KEYS[2], ARGV[1])\n"
"  local theirs = redis.call('HGET', KEYS[2], stored)\n"
"  if mine and (not theirs or tonumber(mine) < tonumber(theirs)) then\n"
"    return {'STALE', stored, stored, migrated}\n"
"  end\n"
"  redis.call('SET', KEYS[1], ARGV[1])\n"
"  redis.call('HSETNX', KEYS[2], ARGV[1], now)\n"
"  redis.call('SET', KEYS[3], ARGV[2])\n"
"  redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[4])\n"
"  return {'FLUSH', 'mismatch', stored, migrated}\n"
"end\n"
"local seen = redis.call('GET', KEYS[3])\n"
"if ARGV[2] ~= '' and seen ~= ARGV[2] then\n"
"  redis.call('SET', KEYS[3], ARGV[2])\n"
"  redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[4])\n"
"  return {'FLUSH', 'restart', seen or '', migrated}\n"
"end\n"
"if redis.call('EXISTS', KEYS[4]) == 1 then\n"
"  return {'FLUSHING', '', '', migrated}\n"
"end\n"
"if redis.call('GET', KEYS[5]) ~= done then\n"
"  redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[4])\n"
"  return {'FLUSH', 'resume', '', migrated}\n"
"end\n"
"return {'OK', '', '', migrated}\n";

/*
 * Version flush done: release the marker if still ours, record completion.
 * KEYS: flush, flushed (prefix||"{cache}:..."); ARGV: token,
 * "version|run_id".
 */
static const char version_finish_script[] =
"if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
"  redis.call('DEL', KEYS[1])\n"
"end\n"
"redis.call('SET', KEYS[2], ARGV[2])\n"
"return 1\n";


/*
 * Hit: KEYS entry, lock, then the generation keys of every item the caller
 * expects the entry to depend on (its tables, the database's DDL item and
 * "ddl"); ARGV base, mode (take|peek|none), token, lock ms, the database's
 * DDL generation item, and "learn" when the caller does not know the
 * tables yet (only the DDL items declared), else "strict".  Returns {1,
 * meta, data} for a current entry, {2, f} lock taken, {3, f, holder's
 * token} locked by another session, {0, f} plain miss, {4, f, deps} (learn
 * only) the entry's recorded "item=gen,..." to look up again with those
 * generation keys declared, nothing changed.  A stale entry is deleted,
 * and so is a value that is not a hash (f = 1: the caller warns).
 *
 * Stale: a recorded generation differs, or (strict) the entry records an
 * item whose generation key was not declared (the caller's idea of the
 * tables is out of date, or the entry is foreign: it cannot be checked
 * without reading an undeclared key, so it is not served), or it does not
 * depend on the database's DDL generation (stored by version 1.2, which
 * had one DDL generation for all databases).  The generations compared
 * are always those the entry records, as before 1.7: declaring them only
 * decides which keys the script may read.
 */
static const char lookup_script[] =
"local f = 0 "
"local t = redis.call('TYPE', KEYS[1]).ok "
"if t ~= 'none' and t ~= 'hash' then redis.call('UNLINK', KEYS[1]) f = 1 t = 'none' end "
"local e = {} "
"if t == 'hash' then e = redis.call('HMGET', KEYS[1], 'meta', 'deps', 'data') end "
"if e[1] and e[3] then "
"  local declared = {} "
"  for i = 3, #KEYS do declared[KEYS[i]] = true end "
"  local current = true "
"  local ddl = false "
"  for item, gen in string.gmatch(e[2] or '', '([^=,]+)=([^,]+)') do "
"    local g = ARGV[1] .. 'gen:' .. item "
"    if item == ARGV[5] then ddl = true end "
"    if not declared[g] then "
"      if ARGV[6] == 'learn' then return {4, f, e[2]} end "
"      current = false break "
"    end "
"    if redis.call('GET', g) ~= gen then current = false break end "
"  end "
"  if current and ddl then return {1, e[1], e[3]} end "
"  redis.call('UNLINK', KEYS[1]) "
"end "
"if ARGV[2] == 'take' then "
"  if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then return {2, f} end "
"  return {3, f, redis.call('GET', KEYS[2])} "
"elseif ARGV[2] == 'peek' and redis.call('EXISTS', KEYS[2]) == 1 then "
"  return {3, f, redis.call('GET', KEYS[2])} "
"end "
"return {0, f}";

/*
 * Generations: KEYS the generation keys; no ARGV.  Returns their values in
 * KEYS order.  A table never seen gets a time-based value, so that a
 * generation lost to eviction never comes back equal.
 */
static const char generations_script[] =
"local t = redis.call('TIME') "
"local fresh = t[1] .. string.format('%06d', tonumber(t[2])) .. '000' "
"local r = {} "
"for i = 1, #KEYS do "
"  local g = redis.call('GET', KEYS[i]) "
"  if not g then redis.call('SET', KEYS[i], fresh) g = fresh end "
"  r[#r + 1] = g "
"end "
"return r";

/*
 * Store: KEYS entry, lock, the n generation keys, the n dependency set
 * keys (both in the order of the items of deps); ARGV token, ttl, meta,
 * data, deps ("item=gen,...", what a lookup compares).  Stores only if
 * every generation is unchanged; releases our lock.
 *
 * Each dependency set gets the entry and a TTL never shorter than the
 * entry's, so a set outlives none of its results and expires with the
 * last of them.  A set that keeps being refreshed (a table read often and
 * never written) would still collect the names of results gone by expiry
 * or eviction: each store checks two random members and removes those
 * whose result no longer exists, which keeps at most about half of a set
 * dead.  Members are results of this namespace, in this slot; they are
 * not declared (pcall: a member a slot migration moved already, or foreign
 * data naming another slot, is kept).  A TTL below one second (never sent)
 * stores nothing.  The DDL generations ("ddl", "ddl:<db>") have sets too,
 * so that DDL and REVOKE delete the entries they end, not only make SQL
 * stop serving them: an application reading HGET <entry> data sees them
 * go (within the invalidate script's budget; the rest drains with later
 * invalidations).
 */
static const char store_script[] =
"local stored = 0 "
"local current = true "
"local n = (#KEYS - 2) / 2 "
"local ttl = tonumber(ARGV[2]) or 0 "
"if ttl < 1 then current = false end "
"local gens = {} "
"for item, gen in string.gmatch(ARGV[5], '([^=,]+)=([^,]+)') do gens[#gens + 1] = gen end "
"if #gens ~= n then current = false end "
"for i = 1, n do "
"  if not current then break end "
"  if redis.call('GET', KEYS[2 + i]) ~= gens[i] then current = false end "
"end "
"if current then "
"  redis.call('UNLINK', KEYS[1]) "
"  redis.call('HSET', KEYS[1], 'meta', ARGV[3], 'deps', ARGV[5], 'data', ARGV[4]) "
"  redis.call('EXPIRE', KEYS[1], ttl) "
"  for i = 1, n do "
"    local s = KEYS[2 + n + i] "
"    local st = redis.call('TYPE', s).ok "
"    if st ~= 'set' and st ~= 'none' then redis.call('UNLINK', s) end "
"    for _, m in ipairs(redis.call('SRANDMEMBER', s, 2)) do "
"      if redis.pcall('EXISTS', m) == 0 then redis.call('SREM', s, m) end "
"    end "
"    redis.call('SADD', s, KEYS[1]) "
"    if redis.call('TTL', s) < ttl then redis.call('EXPIRE', s, ttl) end "
"  end "
"  stored = 1 "
"end "
"if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end "
"return stored";

/*
 * Unlock, compare-and-delete: KEYS lock; ARGV token.  Returns 1 when the
 * lock was ours and is released.  cache_unlock() and cache_query's
 * stampede lock both use it.
 */
static const char unlock_script[] =
"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
"return 0";

/*
 * Invalidate: KEYS the list base||deps-dead, then per item its generation
 * key and its dependency set key (KEYS[2i], KEYS[2i + 1]); ARGV base, the
 * n items.  Bumps each generation and deletes the results recorded as
 * reading it, doing at most RC_DEPS_BUDGET members' work per call, so that
 * one commit never blocks Redis for long however many results read a
 * table (Redis runs one script at a time: every client waits).  Returns
 * how many results were deleted.  Built by redis_invalidate_script_cmd().
 *
 * The bump alone ends every result listed: a lookup compares generations,
 * never serves a stale entry and deletes it.  So every generation is
 * bumped first, before anything that may fail half way.  Deleting is only
 * for memory:
 *
 * - A dependency set within the remaining budget is deleted with its
 *   results at once, as all its members are stale now.
 * - A larger one is moved aside in O(1) (RENAME, keeping its TTL, which is
 *   never shorter than its members') to base||deps-dead:<stamp>:<item>, and
 *   its name queued on the list base||deps-dead.  The table's set starts
 *   empty.
 * - The rest of the budget drains the oldest queued set (SPOP).  A member
 *   stored again since the table's last bump is listed in the table's new
 *   set and is kept (SMISMEMBER; without it, Redis < 6.2, it is deleted:
 *   one more miss).  A queued set that expired or was drained leaves the
 *   queue.
 *
 * The keys found while running -- the members (results), the sets moved
 * aside (deps-dead:<name>) and the live set of a drained item -- are all
 * named from base, so they are in the slot of the declared keys by
 * construction.  They are touched with redis.pcall: while a slot migrates,
 * one that moved already is an error, which only leaves clean-up to later
 * calls (members are then deleted one by one, those still here; a set
 * that cannot be moved aside stays in place, stale).
 *
 * A generation that does not exist is left alone: no stored result can
 * match it (the generations script creates it before any fill reads it).
 * A key of the wrong type where a set or the queue should be is deleted.
 * Also sent at commit by invalidation.c and replayed by worker.c.
 */
#define RC_DEPS_BUDGET "1000"
static const char invalidate_script[] =
"local base = ARGV[1] "
"local budget = " RC_DEPS_BUDGET " "
"local n = 0 "
"local dead = KEYS[1] "
"local nitems = #ARGV - 1 "
"local t = redis.call('TIME') "
"local stamp = t[1] .. string.format('%06d', tonumber(t[2])) "
"local function unlink(keys) "
"  for j = 1, #keys, 1000 do "
"    local r = redis.pcall('UNLINK', unpack(keys, j, math.min(j + 999, #keys))) "
"    if type(r) == 'number' then n = n + r "
"    else "
"      for k = j, math.min(j + 999, #keys) do "
"        r = redis.pcall('UNLINK', keys[k]) "
"        if type(r) == 'number' then n = n + r end "
"      end "
"    end "
"  end "
"end "
"for i = 1, nitems do "
"  local g = KEYS[2 * i] "
"  if redis.call('EXISTS', g) == 1 then redis.call('INCR', g) end "
"end "
"if redis.call('TYPE', dead).ok ~= 'list' then redis.call('UNLINK', dead) end "
"for i = 1, nitems do "
"  local s = KEYS[2 * i + 1] "
"  local st = redis.call('TYPE', s).ok "
"  if st ~= 'set' then "
"    if st ~= 'none' then redis.call('UNLINK', s) end "
"  else "
"    local c = redis.call('SCARD', s) "
"    if c <= budget then "
"      unlink(redis.call('SMEMBERS', s)) "
"      redis.call('UNLINK', s) "
"      budget = budget - c "
"    else "
"      local name = stamp .. '-' .. i .. ':' .. ARGV[i + 1] "
"      while redis.pcall('EXISTS', base .. 'deps-dead:' .. name) == 1 do "
"        name = 'x' .. name "
"      end "
"      local ttl = redis.call('PTTL', s) "
"      local left = redis.call('PTTL', dead) "
"      local moved = redis.pcall('RENAME', s, base .. 'deps-dead:' .. name) "
"      if type(moved) == 'table' and moved.ok then "
"        redis.call('RPUSH', dead, name) "
"        if ttl < 0 then redis.call('PERSIST', dead) "
"        elseif left == -2 or (left >= 0 and left < ttl) then "
"          redis.call('PEXPIRE', dead, ttl) "
"        end "
"      end "
"    end "
"  end "
"end "
"while budget > 0 do "
"  local name = redis.call('LINDEX', dead, 0) "
"  if not name then break end "
"  local s = base .. 'deps-dead:' .. name "
"  local st = redis.pcall('TYPE', s) "
"  if type(st) ~= 'table' or not st.ok then break end "
"  st = st.ok "
"  local m = {} "
"  if st == 'set' then "
"    m = redis.call('SPOP', s, budget) "
"  elseif st ~= 'none' then "
"    redis.call('UNLINK', s) "
"  end "
"  budget = budget - math.max(#m, 1) "
"  if #m > 0 then "
"    local item = string.match(name, '^[^:]*:(.*)$') or '' "
"    local live = redis.pcall('SMISMEMBER', base .. 'deps:' .. item, unpack(m)) "
"    local gone = {} "
"    for j = 1, #m do "
"      if type(live) ~= 'table' or live[j] ~= 1 then gone[#gone + 1] = m[j] end "
"    end "
"    unlink(gone) "
"  end "
"  if redis.call('EXISTS', s) == 0 then redis.call('LPOP', dead) end "
"end "
"return n";

/*
 * Bulk delete, for Redis Cluster (cluster.c sends it, registered by
 * redis_scripts_init()): KEYS one key, which routes the call to its
 * master; ARGV more keys of other slots of the same master.  UNLINKs them
 * all, one master's share of a multi-key delete in one command instead of
 * one per slot.  allow-cross-slot-keys (Redis 7.0) lets a script reach the
 * keys of every slot its node serves; the keys in ARGV are therefore not
 * declared.  A key the node no longer serves (a slot migrating) is an
 * error: cluster.c then sends the keys per slot, like any command; so
 * does a server before 7.0, which refuses the flags line.
 */
static const char bulk_delete_script[] =
"#!lua flags=allow-cross-slot-keys\n"
"local n = redis.call('UNLINK', KEYS[1])\n"
"for i = 1, #ARGV do n = n + redis.call('UNLINK', ARGV[i]) end\n"
"return n\n";

/* At library load: hand the bulk delete to the cluster client. */
void
redis_scripts_init(void)
{
	redis_cluster_set_bulk_delete(bulk_delete_script);
}

typedef struct RedisScript
{
	const char *body;
	char		sha1[SHA1_DIGEST_LENGTH * 2 + 1];	/* computed on first use */
} RedisScript;

/* In RedisScriptId order. */
static RedisScript scripts[RC_NUM_SCRIPTS] = {
	{version_check_script, ""},
	{version_finish_script, ""},
	{lookup_script, ""},
	{generations_script, ""},
	{store_script, ""},
	{unlock_script, ""},
	{invalidate_script, ""},
};

/* The script's SHA-1, computed on first use (may ERROR: not at COMMIT). */
static const char *
script_sha1(RedisScriptId id)
{
	RedisScript *script = &scripts[id];

	Assert(id >= 0 && id < RC_NUM_SCRIPTS);
	if (script->sha1[0] == '\0')
		redis_hash_hex(PG_SHA1, script->body, strlen(script->body), script->sha1);
	return script->sha1;
}

/*
 * Start cmd as "EVALSHA <sha1> <nkeys>" of script id, with room for nkeys
 * keys and nargs arguments, which the caller adds next, in this order:
 * exactly nkeys redis_cmd_key() calls, then the arguments.  Computes the
 * SHA-1 on first use, so build script commands before XACT_EVENT_COMMIT.
 */
void
redis_script_cmd(RedisCommand *cmd, RedisScriptId id, int nkeys, int nargs)
{
	redis_cmd_init(cmd, "EVALSHA", 2 + nkeys + nargs);
	redis_cmd_arg(cmd, script_sha1(id), SHA1_DIGEST_LENGTH * 2);
	redis_cmd_int(cmd, nkeys);
}

/* The script an EVALSHA command runs, or -1 (another command). */
static int
script_of_command(const RedisCommand *cmd)
{
	int			i;

	if (cmd->argc < 3 || cmd->argvlen[0] != 7 ||
		memcmp(cmd->argv[0], "EVALSHA", 7) != 0 ||
		cmd->argvlen[1] != SHA1_DIGEST_LENGTH * 2)
		return -1;
	for (i = 0; i < RC_NUM_SCRIPTS; i++)
		if (scripts[i].sha1[0] != '\0' &&
			memcmp(cmd->argv[1], scripts[i].sha1, SHA1_DIGEST_LENGTH * 2) == 0)
			return i;
	return -1;
}

/* A round trip through round_trip when given, else redis_execute(). */
static bool
round_trip_or_execute(RedisRoundTrip round_trip, const RedisCommand *cmds,
					  int n, RedisReply **replies, int flags)
{
	if (round_trip != NULL)
		return round_trip(cmds, n, replies);
	return redis_execute(cmds, n, replies, flags);
}

/*
 * Run cmds in one round trip; the EVALSHA commands Redis answers NOSCRIPT
 * are sent again, and only they, with EVAL and the body, in one more
 * round trip, their replies replacing the NOSCRIPT errors.  No ERROR of
 * ours and no allocation beyond two small arrays in the current memory
 * context (the argument arrays are switched to EVAL in place and switched
 * back), so usable at XACT_EVENT_COMMIT in a context prepared before.
 * The commands may mix scripts and plain commands; they must be
 * independent of each other, as the retried ones run after the others.
 */
static bool
execute_scripts(RedisRoundTrip round_trip, RedisCommand *cmds, int n,
				RedisReply **replies, int flags)
{
	int			nretry = 0;
	RedisCommand *retry;
	RedisReply **retry_replies;
	int		   *retry_index;
	int		   *retry_id;
	int			i;
	int			j;
	bool		ok;

	if (!round_trip_or_execute(round_trip, cmds, n, replies, flags))
		return false;
	for (i = 0; i < n; i++)
		if (replies[i] != NULL && replies[i]->type == RC_REPLY_ERROR &&
			redis_reply_error_kind(replies[i]) == RC_ERR_NOSCRIPT &&
			script_of_command(&cmds[i]) >= 0)
			nretry++;
	if (nretry == 0)
		return true;

	retry = palloc(sizeof(RedisCommand) * nretry);
	retry_replies = palloc0(sizeof(RedisReply *) * nretry);
	retry_index = palloc(sizeof(int) * nretry);
	retry_id = palloc(sizeof(int) * nretry);
	for (i = 0, j = 0; i < n && j < nretry; i++)
	{
		int			id;

		if (replies[i] == NULL || replies[i]->type != RC_REPLY_ERROR ||
			redis_reply_error_kind(replies[i]) != RC_ERR_NOSCRIPT ||
			(id = script_of_command(&cmds[i])) < 0)
			continue;
		/* shares cmds[i]'s arrays: switched to EVAL now, back below */
		retry[j] = cmds[i];
		retry[j].argv[0] = "EVAL";
		retry[j].argvlen[0] = 4;
		retry[j].argv[1] = scripts[id].body;
		retry[j].argvlen[1] = strlen(scripts[id].body);
		retry_index[j] = i;
		retry_id[j] = id;
		j++;
	}
	ok = round_trip_or_execute(round_trip, retry, nretry, retry_replies, flags);
	for (j = 0; j < nretry; j++)
	{
		RedisCommand *cmd = &cmds[retry_index[j]];

		cmd->argv[0] = "EVALSHA";
		cmd->argvlen[0] = 7;
		cmd->argv[1] = scripts[retry_id[j]].sha1;
		cmd->argvlen[1] = SHA1_DIGEST_LENGTH * 2;
		if (ok)
			replies[retry_index[j]] = retry_replies[j];
	}
	pfree(retry);
	pfree(retry_replies);
	pfree(retry_index);
	pfree(retry_id);
	return ok;
}

/*
 * Run a pipeline of commands (script commands from redis_script_cmd() and
 * plain ones) through redis_execute() with flags, loading the scripts
 * Redis does not know (see execute_scripts()).  Returns false on a fault
 * (reported per flags).  Usable at XACT_EVENT_COMMIT with
 * RC_EXEC_NO_ERROR.
 */
bool
redis_execute_scripts(RedisCommand *cmds, int n, RedisReply **replies,
					  int flags)
{
	return execute_scripts(NULL, cmds, n, replies, flags);
}

/*
 * The same on the connection being checked (the version check's
 * round_trip).
 */
bool
redis_execute_scripts_on(RedisRoundTrip round_trip, RedisCommand *cmds,
						 int n, RedisReply **replies)
{
	Assert(round_trip != NULL);
	return execute_scripts(round_trip, cmds, n, replies, 0);
}

/*
 * Run one script: args are its nkeys keys, then its other arguments.
 * Returns NULL on a fault (reported per flags, as redis_run()).
 */
RedisReply *
redis_run_script(RedisScriptId id, int nkeys, int nargs, const char **args,
				 size_t *lens, int flags)
{
	RedisCommand cmd;
	RedisReply *reply = NULL;
	int			i;

	redis_script_cmd(&cmd, id, nkeys, nargs - nkeys);
	for (i = 0; i < nargs; i++)
	{
		if (i < nkeys)
			redis_cmd_key(&cmd, args[i], lens[i]);
		else
			redis_cmd_arg(&cmd, args[i], lens[i]);
	}
	if (!redis_execute_scripts(&cmd, 1, &reply, flags))
		reply = NULL;
	pfree(cmd.argv);
	pfree(cmd.argvlen);
	return reply;
}

/*
 * The invalidate script's command for nitems generation items of the
 * namespace whose query base is base: KEYS base||deps-dead, then the
 * generation key and the dependency set key of each item; ARGV base, the
 * items (see invalidate_script).  The commit, cache_query_invalidate() and
 * the worker's replay send the same commands.  Arguments are referenced,
 * key names allocated in the current memory context.
 */
void
redis_invalidate_script_cmd(RedisCommand *cmd, const char *base,
							const char *const *items, const size_t *lens,
							int nitems)
{
	int			i;

	redis_script_cmd(cmd, RC_SCRIPT_QUERY_INVALIDATE, 1 + 2 * nitems,
					 1 + nitems);
	redis_cmd_key_str(cmd, redis_query_dead_list_key(base));
	for (i = 0; i < nitems; i++)
	{
		redis_cmd_key_str(cmd, redis_query_gen_key(base, items[i], lens[i]));
		redis_cmd_key_str(cmd, redis_query_deps_key(base, items[i], lens[i]));
	}
	redis_cmd_str(cmd, base);
	for (i = 0; i < nitems; i++)
		redis_cmd_arg(cmd, items[i], lens[i]);
}
