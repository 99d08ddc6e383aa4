/*-------------------------------------------------------------------------
 *
 * scripts.c
 *		  Every Lua script the extension runs in Redis, and how it is run.
 *
 * Design rules:
 *
 * - One file holds the scripts, so the keys each one touches can be read in
 *   one place.  Each comment names its KEYS and ARGV.
 * - redis_run_script() sends EVALSHA and loads the script with EVAL only on
 *   NOSCRIPT (first use, a restart, SCRIPT FLUSH): one round trip on the
 *   hot path, the body on the wire only when needed.  Pipelined callers
 *   (the commit path, the version check) send EVAL with the body.
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
 * Version check (version.c), the atomic compare step.  KEYS: version, versions, run_id, flush, flushed.
 * ARGV: expected version, run_id ("" if unknown), marker token, marker TTL.
 * Returns {action, detail}: INIT, OK, STALE stored, FLUSHING,
 * FLUSH mismatch stored, FLUSH restart, FLUSH resume.
 */
static const char version_check_script[] =
"local stored = redis.call('GET', KEYS[1])\n"
"local t = redis.call('TIME')\n"
"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
"local done = ARGV[1] .. '|' .. ARGV[2]\n"
"if not stored then\n"
"  redis.call('SET', KEYS[1], ARGV[1])\n"
"  redis.call('HSETNX', KEYS[2], ARGV[1], now)\n"
"  redis.call('SET', KEYS[3], ARGV[2])\n"
"  redis.call('SET', KEYS[5], done)\n"
"  return {'INIT', ''}\n"
"end\n"
"if stored ~= ARGV[1] then\n"
"  local mine = redis.call('HGET', KEYS[2], ARGV[1])\n"
"  local theirs = redis.call('HGET', KEYS[2], stored)\n"
"  if mine and (not theirs or tonumber(mine) < tonumber(theirs)) then\n"
"    return {'STALE', stored}\n"
"  end\n"
"  redis.call('SET', KEYS[1], ARGV[1])\n"
"  redis.call('HSETNX', KEYS[2], ARGV[1], now)\n"
"  redis.call('SET', KEYS[3], ARGV[2])\n"
"  redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[4])\n"
"  return {'FLUSH', 'mismatch', stored}\n"
"end\n"
"local seen = redis.call('GET', KEYS[3])\n"
"if ARGV[2] ~= '' and seen ~= ARGV[2] then\n"
"  redis.call('SET', KEYS[3], ARGV[2])\n"
"  redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[4])\n"
"  return {'FLUSH', 'restart', seen or ''}\n"
"end\n"
"if redis.call('EXISTS', KEYS[4]) == 1 then\n"
"  return {'FLUSHING', ''}\n"
"end\n"
"if redis.call('GET', KEYS[5]) ~= done then\n"
"  redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[4])\n"
"  return {'FLUSH', 'resume', ''}\n"
"end\n"
"return {'OK', ''}\n";

/* Version flush done: release the marker if still ours, record completion. */
static const char version_finish_script[] =
"if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
"  redis.call('DEL', KEYS[1])\n"
"end\n"
"redis.call('SET', KEYS[2], ARGV[2])\n"
"return 1\n";


/*
 * Hit: KEYS entry, lock; ARGV base, mode (take|peek|none), token, lock ms,
 * the database's DDL generation item.  Returns {1, meta, data} for a
 * current entry, {2, f} lock taken, {3, f, holder's token} locked by
 * another session, {0, f} plain miss.  A stale entry is deleted, and so is a value that is
 * not a hash (f = 1: the caller warns).  An entry that does not depend on
 * the database's DDL generation (stored by version 1.2, which had one DDL
 * generation for all databases) is stale.
 */
static const char lookup_script[] =
"local f = 0 "
"local t = redis.call('TYPE', KEYS[1]).ok "
"if t ~= 'none' and t ~= 'hash' then redis.call('UNLINK', KEYS[1]) f = 1 t = 'none' end "
"local e = {} "
"if t == 'hash' then e = redis.call('HMGET', KEYS[1], 'meta', 'deps', 'data') end "
"if e[1] and e[3] then "
"  local n = 0 "
"  local current = true "
"  local ddl = false "
"  for item, gen in string.gmatch(e[2] or '', '([^=,]+)=([^,]+)') do "
"    n = n + 1 "
"    if item == ARGV[5] then ddl = true end "
"    if redis.call('GET', ARGV[1] .. 'gen:' .. item) ~= gen then current = false break end "
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
 * Generations: ARGV base, items.  A table never seen gets a time-based
 * value, so that a generation lost to eviction never comes back equal.
 */
static const char generations_script[] =
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
 *
 * Each dependency set gets the entry and a TTL never shorter than the
 * entry's, so a set outlives none of its results and expires with the
 * last of them.  A set that keeps being refreshed (a table read often and
 * never written) would still collect the names of results gone by expiry
 * or eviction: each store checks two random members and removes those
 * whose result no longer exists, which keeps at most about half of a set
 * dead.  A TTL below one second (never sent) stores nothing.  The DDL
 * generations ("ddl", "ddl:<db>") have sets too, so that DDL and REVOKE
 * delete the entries they end, not only make SQL stop serving them: an
 * application reading HGET <entry> data sees them go (within the
 * invalidate script's budget; the rest drains with later invalidations).
 */
static const char store_script[] =
"local stored = 0 "
"local current = true "
"local ttl = tonumber(ARGV[3]) or 0 "
"if ttl < 1 then current = false end "
"for item, gen in string.gmatch(ARGV[6], '([^=,]+)=([^,]+)') do "
"  if not current then break end "
"  if redis.call('GET', ARGV[1] .. 'gen:' .. item) ~= gen then current = false end "
"end "
"if current then "
"  redis.call('UNLINK', KEYS[1]) "
"  redis.call('HSET', KEYS[1], 'meta', ARGV[4], 'deps', ARGV[6], 'data', ARGV[5]) "
"  redis.call('EXPIRE', KEYS[1], ttl) "
"  for item in string.gmatch(ARGV[6], '([^=,]+)=') do "
"    local s = ARGV[1] .. 'deps:' .. item "
"    local st = redis.call('TYPE', s).ok "
"    if st ~= 'set' and st ~= 'none' then redis.call('UNLINK', s) end "
"    for _, m in ipairs(redis.call('SRANDMEMBER', s, 2)) do "
"      if redis.call('EXISTS', m) == 0 then redis.call('SREM', s, m) end "
"    end "
"    redis.call('SADD', s, KEYS[1]) "
"    if redis.call('TTL', s) < ttl then redis.call('EXPIRE', s, ttl) end "
"  end "
"  stored = 1 "
"end "
"if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end "
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
 * Invalidate: ARGV base, generation items.  Bumps each generation and
 * deletes the results recorded as reading it, doing at most
 * RC_DEPS_BUDGET members' work per call, so that one commit never blocks
 * Redis for long however many results read a table (Redis runs one script
 * at a time: every client waits).  Returns how many results were deleted.
 *
 * The bump alone ends every result listed: a lookup compares generations,
 * never serves a stale entry and deletes it.  Deleting is only for memory:
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
 * A generation that does not exist is left alone: no stored result can
 * match it (the generations script creates it before any fill reads it).
 * A key of the wrong type where a set or the queue should be is deleted.
 * Also sent at commit by invalidation.c.
 */
#define RC_DEPS_BUDGET "1000"
static const char invalidate_script[] =
"local base = ARGV[1] "
"local budget = " RC_DEPS_BUDGET " "
"local n = 0 "
"local dead = base .. 'deps-dead' "
"local t = redis.call('TIME') "
"local stamp = t[1] .. string.format('%06d', tonumber(t[2])) "
"local function unlink(keys) "
"  for j = 1, #keys, 1000 do "
"    n = n + redis.call('UNLINK', unpack(keys, j, math.min(j + 999, #keys))) "
"  end "
"end "
"if redis.call('TYPE', dead).ok ~= 'list' then redis.call('UNLINK', dead) end "
"for i = 2, #ARGV do "
"  local g = base .. 'gen:' .. ARGV[i] "
"  if redis.call('EXISTS', g) == 1 then redis.call('INCR', g) end "
"  local s = base .. 'deps:' .. ARGV[i] "
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
"      local name = stamp .. '-' .. i .. ':' .. ARGV[i] "
"      while redis.call('EXISTS', base .. 'deps-dead:' .. name) == 1 do "
"        name = 'x' .. name "
"      end "
"      local ttl = redis.call('PTTL', s) "
"      local left = redis.call('PTTL', dead) "
"      redis.call('RENAME', s, base .. 'deps-dead:' .. name) "
"      redis.call('RPUSH', dead, name) "
"      if ttl < 0 then redis.call('PERSIST', dead) "
"      elseif left == -2 or (left >= 0 and left < ttl) then "
"        redis.call('PEXPIRE', dead, ttl) "
"      end "
"    end "
"  end "
"end "
"while budget > 0 do "
"  local name = redis.call('LINDEX', dead, 0) "
"  if not name then break end "
"  local s = base .. 'deps-dead:' .. name "
"  local st = redis.call('TYPE', s).ok "
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

const char *
redis_script_body(RedisScriptId id)
{
	Assert(id >= 0 && id < RC_NUM_SCRIPTS);
	return scripts[id].body;
}

/*
 * Run a script by its SHA-1, loading it with EVAL when Redis does not know
 * it (first use, or after a restart or SCRIPT FLUSH).  args are the
 * arguments after the key count, KEYS first.  Returns NULL on a fault
 * (reported per flags, as redis_command()).
 */
RedisReply *
redis_run_script(RedisScriptId id, int nkeys, int nargs, const char **args,
				 size_t *lens, int flags)
{
	RedisScript *script = &scripts[id];
	const char **argv = palloc(sizeof(char *) * (nargs + 3));
	size_t	   *argvlen = palloc(sizeof(size_t) * (nargs + 3));
	char		nkeys_str[12];
	RedisReply *reply;

	if (script->sha1[0] == '\0')
		redis_hash_hex(PG_SHA1, script->body, strlen(script->body), script->sha1);
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
		redis_reply_error_kind(reply) == RC_ERR_NOSCRIPT)
	{
		argv[0] = "EVAL";
		argvlen[0] = 4;
		argv[1] = script->body;
		argvlen[1] = strlen(script->body);
		reply = redis_command(flags, nargs + 3, argv, argvlen);
	}
	pfree(argv);
	pfree(argvlen);
	return reply;
}
