/*-------------------------------------------------------------------------
 *
 * command_builder.c
 *		  The one way a Redis command is put together: its arguments, and
 *		  which of them are keys.
 *
 * Design rules:
 *
 * - Every command the extension sends is built here, so every command
 *   knows its keys: Redis Cluster routes a command by the slot of its keys
 *   (cluster.c), splits a multi-key command per slot and sends a keyless
 *   one to the master it names (RedisCommand.node).  A key is added with
 *   redis_cmd_key(), any other argument with redis_cmd_arg() and friends;
 *   the keys of one command are contiguous (UNLINK k1 k2 ..., EVALSHA sha
 *   n k1 .. kn a1 ..., SET k v), which is all the commands we send need.
 *
 * - Arguments are referenced, not copied: the caller keeps them alive until
 *   the command has been sent.  Numbers are formatted into the command's
 *   own memory.  The arrays are palloc'd in the current memory context and
 *   grow on demand; the size given to redis_cmd_init() is only a hint (a
 *   commit builds its commands before COMMIT, with exact hints, and never
 *   grows them there).
 *
 * - The builder knows nothing of servers or sockets: it is the lowest
 *   layer that names Redis commands.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "redis_cache.h"

/*
 * Start cmd as the command "name" with room for nargs arguments after the
 * name (a hint: it grows as needed).  No keys, node 0.
 */
void
redis_cmd_init(RedisCommand *cmd, const char *name, int nargs)
{
	int			capacity = Max(nargs + 1, 2);

	cmd->argv = palloc(sizeof(char *) * capacity);
	cmd->argvlen = palloc(sizeof(size_t) * capacity);
	cmd->capacity = capacity;
	cmd->argc = 0;
	cmd->first_key = 0;
	cmd->nkeys = 0;
	cmd->node = 0;
	redis_cmd_arg(cmd, name, strlen(name));
}

/* A new command, palloc'd; see redis_cmd_init(). */
RedisCommand *
redis_cmd_new(const char *name, int nargs)
{
	RedisCommand *cmd = palloc(sizeof(RedisCommand));

	redis_cmd_init(cmd, name, nargs);
	return cmd;
}

/* One more argument: len bytes at arg (binary safe, not copied). */
void
redis_cmd_arg(RedisCommand *cmd, const char *arg, size_t len)
{
	if (cmd->argc == cmd->capacity)
	{
		cmd->capacity *= 2;
		cmd->argv = repalloc(cmd->argv, sizeof(char *) * cmd->capacity);
		cmd->argvlen = repalloc(cmd->argvlen, sizeof(size_t) * cmd->capacity);
	}
	cmd->argv[cmd->argc] = arg;
	cmd->argvlen[cmd->argc] = len;
	cmd->argc++;
}

/* One more argument, a NUL-terminated string (not copied). */
void
redis_cmd_str(RedisCommand *cmd, const char *arg)
{
	redis_cmd_arg(cmd, arg, strlen(arg));
}

/* One more argument, a decimal number (formatted into the command's memory). */
void
redis_cmd_int(RedisCommand *cmd, int64 value)
{
	char	   *s = psprintf(INT64_FORMAT, value);

	redis_cmd_arg(cmd, s, strlen(s));
}

/*
 * One more argument that is a key.  The keys of a command are contiguous:
 * a key after a non-key argument that follows keys is a bug.
 */
void
redis_cmd_key(RedisCommand *cmd, const char *key, size_t len)
{
	if (cmd->nkeys == 0)
		cmd->first_key = cmd->argc;
	else if (cmd->first_key + cmd->nkeys != cmd->argc)
		elog(ERROR, "redis_cache: the keys of a %s command are not contiguous",
			 cmd->argv[0]);
	cmd->nkeys++;
	redis_cmd_arg(cmd, key, len);
}

/* A key given as a NUL-terminated string. */
void
redis_cmd_key_str(RedisCommand *cmd, const char *key)
{
	redis_cmd_key(cmd, key, strlen(key));
}

/*
 * For a keyless command (SCAN, INFO, ...): run it on master number node
 * (0 .. redis_master_count() - 1) of a Redis Cluster.  Ignored by a single
 * server, and for commands with keys (their slot decides).
 */
void
redis_cmd_on_node(RedisCommand *cmd, int node)
{
	cmd->node = node;
}

/*
 * A copy of src (keys and node included) with arrays of its own, so that
 * arguments can be replaced (EVALSHA -> EVAL) without touching src.  The
 * copy shares the argument strings.
 */
void
redis_cmd_copy(RedisCommand *dst, const RedisCommand *src)
{
	*dst = *src;
	dst->capacity = Max(src->argc, 2);
	dst->argv = palloc(sizeof(char *) * dst->capacity);
	dst->argvlen = palloc(sizeof(size_t) * dst->capacity);
	memcpy(dst->argv, src->argv, sizeof(char *) * src->argc);
	memcpy(dst->argvlen, src->argvlen, sizeof(size_t) * src->argc);
}
