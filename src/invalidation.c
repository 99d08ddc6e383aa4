/*-------------------------------------------------------------------------
 *
 * invalidation.c
 *		  The commit pipeline: the per-transaction queue of invalidations,
 *		  the PRE_COMMIT build, the COMMIT send and the hand-off to the
 *		  worker.
 *
 * Items (keys, patterns and the templates' families from the watch
 * triggers of triggers.c and cache_watch(), and query result generation
 * bumps from query_deps.c) are queued during the transaction.  Nothing is sent before the transaction commits, and nothing
 * of a rolled-back transaction or subtransaction is ever sent:
 *
 * - Items are allocated in CurTransactionContext and kept in one list per
 *   subtransaction nesting level (as async.c does for NOTIFY).  A
 *   subtransaction commit hands its items to the parent; an abort drops
 *   them, and its memory goes with it.
 *
 * - XACT_EVENT_PRE_COMMIT deduplicates the keys, builds the pipelined UNLINK
 *   commands, one SADD of the families per namespace (families.c: what a
 *   flush may remove), the generation bump scripts (one per namespace known
 *   to hold query results) and the replay items a failed delivery hands
 *   over, in a context of our own (nothing is allocated later), and registers the namespace with the worker, durably (may
 *   ERROR: the transaction then aborts cleanly).  PREPARE TRANSACTION with
 *   queued keys is refused at XACT_EVENT_PRE_PREPARE.
 *
 * - XACT_EVENT_COMMIT runs with interrupts held and must not fail: it drops
 *   the generation bumps no cached result needs (query_tables.c, decided
 *   only now), sends everything in one round trip bounded by
 *   command_timeout_ms (a new connection too), inside PG_TRY, downgrading
 *   any problem to a WARNING.  What could not be delivered (no reply, or
 *   an error reply to an UNLINK or a script) is handed over exactly to the
 *   replay queue (replay.c), which the worker sends once Redis answers; a
 *   commit whose keys do not fit falls back to its templates' families (the
 *   worker's pattern queue), and only beyond that to a flush of the
 *   namespace's owned keys: never more than the cache owns.  Pattern
 *   invalidations need SCAN and go to the worker; without
 *   shared_preload_libraries they run at commit within commit_timeout_ms.
 *   cache_query_invalidate() sends the same bump commands at once
 *   (redis_invalidate_generations_now()).
 *
 * - The commit holds its locks while it waits, and the command and connect
 *   timeouts are any role's to set: the delivery (connect, retry and
 *   pattern scans included) is bounded by redis_cache.commit_timeout_ms
 *   alone, a superuser setting (transport.c applies the limit), so that no
 *   role can lower it to make its deliveries fail on purpose.  A terminate
 *   arriving meanwhile ends the wait at once (interrupts are held, so
 *   transport.c checks for it itself); the undelivered work goes to the
 *   worker as after a timeout, and the backend dies as soon as interrupts
 *   resume.  A cancel does not end it: it cannot undo the commit.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/xact.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "redis_cache.h"


/*
 * A queued invalidation: key or glob pattern after key_prefix, or the
 * generation of a table ("<db oid>:<table oid>", or "ddl") whose cached
 * query results it ends (query_deps.c).
 */
typedef struct PendingItem
{
	int			prefix_index;	/* into transaction_prefixes */
	bool		is_generation;
	bool		is_family;		/* a template's family (triggers.c) */
	bool		is_pattern;
	int			len;
	char		key[FLEXIBLE_ARRAY_MEMBER];
} PendingItem;

typedef struct PendingLevel
{
	int			nest_level;
	List	   *items;
	struct PendingLevel *upper;
} PendingLevel;

static PendingLevel *pending = NULL;

/* key_prefix values used by this transaction (TopTransactionContext) */
static List *transaction_prefixes = NIL;

/* Built at PRE_COMMIT, consumed at COMMIT. */
typedef struct CommitWork
{
	MemoryContext context;
	int			ncommands;
	RedisCommand *commands;
	RedisReply **replies;
	int			nprefixes;
	char	  **prefixes;
	int		   *namespace_index;	/* per prefix, -1 without the worker */
	int			npatterns;
	PendingItem **patterns;
	int			nkeys;
	PendingItem **keys;
	int			ngenerations;
	PendingItem **generations;
	int			nfamilies;
	PendingItem **families;
	int			first_generation_command;	/* UNLINKs, SADDs, then EVALSHAs */
	char		(*numkeys)[12];	/* per command: a bump's key count, rewritten at COMMIT */
	int			nreplay;		/* the hand-over if delivery fails */
	RedisReplayItem *replay;
	bool		counted_in_flight;
	/* the local cache's share (local_cache.c): full key names and globs */
	int			nlocal;
	char	  **local_keys;
	size_t	   *local_lens;
	int			nlocal_globs;
	char	  **local_globs;
	size_t	   *local_glob_lens;
} CommitWork;

static CommitWork *commit_work = NULL;

static void prepare_local_invalidations(CommitWork *work);

/* redis_cache.redelete_delay_ms */
static int	redelete_delay_ms = 0;

/* redis_cache.commit_timeout_ms */
static int	commit_timeout_ms = 1000;

static bool callbacks_registered = false;
static TimestampTz last_lost_warning = 0;
static TimestampTz last_overflow_warning = 0;

/*
 * Test hook (test/specs): a session-level advisory lock key that a
 * committing transaction waits for after its PRE_COMMIT work is built, so
 * an isolation spec can run another session between PRE_COMMIT and COMMIT,
 * as PostgreSQL 17's injection points would.  0 (the default) is off.
 */
static int	debug_pre_commit_lock = 0;

/* ---- the queue ----------------------------------------------------------- */

/*
 * The index under which this transaction queues items for the current
 * key_prefix.
 */
int
redis_queue_prefix_index(void)
{
	const char *prefix = redis_cache_key_prefix ? redis_cache_key_prefix : "";
	ListCell   *lc;
	int			i = 0;
	MemoryContext old;

	/* a session that lost its configured settings could not deliver this */
	redis_settings_check_trusted();
	foreach(lc, transaction_prefixes)
	{
		if (strcmp((const char *) lfirst(lc), prefix) == 0)
			return i;
		i++;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	transaction_prefixes = lappend(transaction_prefixes, pstrdup(prefix));
	MemoryContextSwitchTo(old);
	return i;
}

static void
queue_any_item(const char *key, int len, bool is_pattern, bool is_generation,
			   bool is_family, int prefix_index)
{
	int			level = GetCurrentTransactionNestLevel();
	MemoryContext old = MemoryContextSwitchTo(CurTransactionContext);
	PendingItem *item;

	if (pending == NULL || pending->nest_level < level)
	{
		PendingLevel *l = palloc(sizeof(PendingLevel));

		l->nest_level = level;
		l->items = NIL;
		l->upper = pending;
		pending = l;
	}

	/* rows of one statement often repeat the last key (UPDATE OLD = NEW) */
	if (pending->items != NIL)
	{
		PendingItem *last = (PendingItem *) llast(pending->items);

		if (last->len == len && last->is_pattern == is_pattern &&
			last->is_generation == is_generation &&
			last->is_family == is_family &&
			last->prefix_index == prefix_index && memcmp(last->key, key, len) == 0)
		{
			MemoryContextSwitchTo(old);
			return;
		}
	}

	item = palloc(offsetof(PendingItem, key) + len + 1);
	item->prefix_index = prefix_index;
	item->is_pattern = is_pattern;
	item->is_generation = is_generation;
	item->is_family = is_family;
	item->len = len;
	memcpy(item->key, key, len);
	item->key[len] = '\0';
	pending->items = lappend(pending->items, item);
	MemoryContextSwitchTo(old);
}

/*
 * Queue the delete of key (or, is_pattern, of the keys matching the glob)
 * under the namespace prefix_index (redis_queue_prefix_index()).
 */
void
redis_queue_invalidation(const char *key, int len, bool is_pattern,
						 int prefix_index)
{
	queue_any_item(key, len, is_pattern, false, false, prefix_index);
}

/*
 * Queue the family (a glob after key_prefix, every placeholder '*') of a
 * template whose keys this transaction deletes (triggers.c): recorded in
 * Redis with the deletes (families.c), and the fallback of a hand-over that
 * does not fit the replay queue.
 */
void
redis_queue_family(const char *glob, int len, int prefix_index)
{
	queue_any_item(glob, len, true, false, true, prefix_index);
}

/*
 * Queue the bump of a query result generation (query_deps.c), sent at
 * commit to every namespace known to hold cached query results.
 */
void
redis_queue_generation_bump(const char *item, int len)
{
	/* generations are not per prefix: note the prefix, queue under 0 */
	(void) redis_queue_prefix_index();
	queue_any_item(item, len, false, true, false, 0);
}

/*
 * Families this backend has recorded in Redis (SADD) on the current
 * connection: a commit records only new ones, so a watched table's writes
 * do not each pay an SADD.  A new connection (a Redis restart, new server
 * settings) records them again.  Entries are added at PRE_COMMIT
 * (allocation allowed) and marked recorded at COMMIT once delivered.
 */
#define RC_RECORDED_FAMILIES	64

typedef struct RecordedFamily
{
	char	   *name;			/* prefix, NUL, family (TopMemoryContext) */
	uint64		serial;			/* redis_connection_serial(); 0: pending */
} RecordedFamily;

static RecordedFamily recorded_families[RC_RECORDED_FAMILIES];
static int	nrecorded_families = 0;

static RecordedFamily *
find_recorded(const char *prefix, const char *family)
{
	size_t		plen = strlen(prefix);
	int			i;

	for (i = 0; i < nrecorded_families; i++)
	{
		const char *name = recorded_families[i].name;

		if (strcmp(name, prefix) == 0 && strcmp(name + plen + 1, family) == 0)
			return &recorded_families[i];
	}
	return NULL;
}

/*
 * Whether family of prefix was recorded on the current connection.  With
 * note_pending (PRE_COMMIT), a family not recorded is remembered as pending
 * (while there is room) for mark_families_recorded().
 */
static bool
family_recorded(const char *prefix, const char *family, bool note_pending)
{
	RecordedFamily *r = find_recorded(prefix, family);

	if (r != NULL)
	{
		if (r->serial != 0 && r->serial == redis_connection_serial())
			return true;
		r->serial = 0;
		return false;
	}
	if (note_pending && nrecorded_families < RC_RECORDED_FAMILIES)
	{
		size_t		plen = strlen(prefix);
		size_t		flen = strlen(family);
		char	   *name = MemoryContextAlloc(TopMemoryContext, plen + flen + 2);

		memcpy(name, prefix, plen + 1);
		memcpy(name + plen + 1, family, flen + 1);
		recorded_families[nrecorded_families].name = name;
		recorded_families[nrecorded_families].serial = 0;
		nrecorded_families++;
	}
	return false;
}

/* COMMIT, delivered: the pending families are recorded (no allocation). */
static void
mark_families_recorded(void)
{
	uint64		serial = redis_connection_serial();
	int			i;

	for (i = 0; i < nrecorded_families; i++)
		if (recorded_families[i].serial == 0)
			recorded_families[i].serial = serial;
}

/* Commands of a bump of nitems generations in one namespace. */
static int
bump_command_count(int nitems)
{
	return (nitems + RC_KEYS_PER_COMMAND - 1) / RC_KEYS_PER_COMMAND;
}

/*
 * The invalidate script (scripts.c, redis_invalidate_script_cmd(): KEYS
 * the namespace's deps-dead list, then each item's generation and
 * dependency set; ARGV the query base of prefix and the items): the bump
 * of nitems generations in namespace prefix, which also deletes the
 * results of their dependency sets, RC_KEYS_PER_COMMAND items per command,
 * into commands (bump_command_count() of them).  The keys of one command
 * share the namespace's hashtag, hence one Redis Cluster slot.  The commit
 * and cache_query_invalidate() send the same commands.  Returns the count.
 */
static int
build_bump_commands(const char *prefix, char **items, const size_t *lens,
					int nitems, RedisCommand *commands)
{
	char	   *base = redis_query_base(prefix);
	int			c = 0;
	int			i;

	for (i = 0; i < nitems; i += RC_KEYS_PER_COMMAND)
		redis_invalidate_script_cmd(&commands[c++], base,
									(const char *const *) items + i, lens + i,
									Min(RC_KEYS_PER_COMMAND, nitems - i));
	return c;
}

/*
 * The local cache forgets the results that depend on the generations of
 * items in the namespace prefix (local_cache.c).
 */
static void
invalidate_generations_locally(const char *prefix, char **items,
							   const size_t *lens, int nitems)
{
	char	   *base;
	int			i;

	if (!redis_local_configured())
		return;
	base = redis_query_base(prefix);
	for (i = 0; i < nitems; i++)
	{
		char	   *key = redis_query_gen_key(base, items[i], lens[i]);

		redis_local_invalidate(key, strlen(key));
		pfree(key);
	}
	pfree(base);
}

/*
 * Bump generations now, outside the commit (cache_query_invalidate()): the
 * commit's commands, for the current namespace and every namespace the
 * worker knows (sessions with another key_prefix may hold results of these
 * tables).  Faults are reported per on_error.  Returns the count of
 * results removed, or -1.
 */
int64
redis_invalidate_generations_now(char **items, int nitems)
{
	const char *current = redis_cache_key_prefix ? redis_cache_key_prefix : "";
	size_t	   *lens = palloc(sizeof(size_t) * Max(nitems, 1));
	RedisCommand *commands = palloc0(sizeof(RedisCommand) * bump_command_count(nitems));
	char	  **known;
	int			nknown = redis_worker_namespaces(&known);
	int64		removed = 0;
	int			k;
	int			i;

	for (i = 0; i < nitems; i++)
		lens[i] = strlen(items[i]);
	/* k = -1: the current namespace, then the others */
	for (k = -1; k < nknown; k++)
	{
		const char *prefix = k < 0 ? current : known[k];
		int			ncommands;
		RedisReply **replies;
		bool		ok;

		if (k >= 0 && (prefix == NULL || strcmp(prefix, current) == 0))
			continue;
		ncommands = build_bump_commands(prefix, items, lens, nitems, commands);
		replies = palloc0(sizeof(RedisReply *) * ncommands);
		/* before and after the send, as a commit does */
		invalidate_generations_locally(prefix, items, lens, nitems);
		/* other namespaces are bookkeeping: no version check of theirs */
		ok = redis_execute_scripts(commands, ncommands, replies,
								   k < 0 ? 0 : RC_EXEC_INTERNAL);
		invalidate_generations_locally(prefix, items, lens, nitems);
		if (!ok)
			return -1;
		for (i = 0; i < ncommands; i++)
		{
			if (replies[i]->type == RC_REPLY_ERROR)
			{
				redis_report_reply_error(replies[i], "invalidating cached query results", 0);
				return -1;
			}
			if (replies[i]->type == RC_REPLY_INTEGER)
				removed += replies[i]->integer;
		}
	}
	return removed;
}

/* ---- transaction callbacks ---------------------------------------------- */

static int
compare_items(const void *a, const void *b)
{
	const PendingItem *x = *(PendingItem *const *) a;
	const PendingItem *y = *(PendingItem *const *) b;
	int			c;

	if (x->is_generation != y->is_generation)
		return (int) x->is_generation - (int) y->is_generation;
	if (x->is_family != y->is_family)
		return (int) x->is_family - (int) y->is_family;
	if (x->prefix_index != y->prefix_index)
		return x->prefix_index - y->prefix_index;
	c = memcmp(x->key, y->key, Min(x->len, y->len));
	if (c != 0)
		return c;
	return x->len - y->len;
}

/*
 * PRE_COMMIT: everything the commit-time send needs, allocated now.
 */
static void
prepare_commit_work(void)
{
	CommitWork *work;
	List	   *items = NIL;
	PendingLevel *l;
	PendingItem **all;
	int			nall = 0;
	int			i;
	ListCell   *lc;
	MemoryContext old;
	bool	   *has_keys;
	char	  **known = NULL;
	int			nknown;
	int			ncommands_families;

	for (l = pending; l != NULL; l = l->upper)
		items = list_concat(items, l->items);
	if (items == NIL)
		return;

	work = MemoryContextAllocZero(TopMemoryContext, sizeof(CommitWork));
	work->context = AllocSetContextCreate(TopMemoryContext,
										  "redis_cache commit",
										  ALLOCSET_DEFAULT_SIZES);
	commit_work = work;
	old = MemoryContextSwitchTo(work->context);

	all = palloc(sizeof(PendingItem *) * list_length(items));
	foreach(lc, items)
		all[nall++] = (PendingItem *) lfirst(lc);
	qsort(all, nall, sizeof(PendingItem *), compare_items);

	work->nprefixes = list_length(transaction_prefixes);
	has_keys = palloc0(sizeof(bool) * work->nprefixes);
	work->keys = palloc(sizeof(PendingItem *) * nall);
	work->patterns = palloc(sizeof(PendingItem *) * nall);
	work->generations = palloc(sizeof(PendingItem *) * nall);
	work->families = palloc(sizeof(PendingItem *) * nall);
	for (i = 0; i < nall; i++)
	{
		PendingItem *item = all[i];
		PendingItem *copy;

		if (i > 0 && compare_items(&all[i - 1], &all[i]) == 0 &&
			all[i - 1]->is_pattern == item->is_pattern)
			continue;
		copy = palloc(offsetof(PendingItem, key) + item->len + 1);
		memcpy(copy, item, offsetof(PendingItem, key) + item->len + 1);
		if (item->is_generation)
			work->generations[work->ngenerations++] = copy;
		else if (item->is_family)
			work->families[work->nfamilies++] = copy;
		else
		{
			has_keys[item->prefix_index] = true;
			if (item->is_pattern)
				work->patterns[work->npatterns++] = copy;
			else
				work->keys[work->nkeys++] = copy;
		}
	}

	/*
	 * The namespaces of this transaction, and, for generation bumps, every
	 * namespace the worker knows: sessions with another key_prefix may have
	 * cached results of these tables.
	 */
	nknown = work->ngenerations > 0 ? redis_worker_namespaces(&known) : 0;
	work->prefixes = palloc(sizeof(char *) * (work->nprefixes + nknown));
	work->namespace_index = palloc(sizeof(int) * (work->nprefixes + nknown));
	i = 0;
	foreach(lc, transaction_prefixes)
	{
		work->prefixes[i] = pstrdup((const char *) lfirst(lc));

		/*
		 * A namespace that gets keys deleted is registered, durably (may
		 * ERROR, which aborts cleanly here).  One with generation bumps only
		 * is not: if it holds cached results, their fill registered it.
		 */
		if (has_keys[i])
			work->namespace_index[i] = redis_register_namespace(work->prefixes[i]);
		else
			work->namespace_index[i] = redis_find_namespace(work->prefixes[i]);
		i++;
	}
	for (i = 0; i < nknown; i++)
	{
		int			j;

		if (known[i] == NULL)
			continue;
		for (j = 0; j < work->nprefixes; j++)
			if (strcmp(work->prefixes[j], known[i]) == 0)
				break;
		if (j == work->nprefixes)
		{
			work->prefixes[work->nprefixes] = known[i];
			work->namespace_index[work->nprefixes] = i;
			work->nprefixes++;
		}
	}

	/*
	 * UNLINK prefix||key, RC_KEYS_PER_COMMAND keys per command; one SADD of
	 * the families per prefix; the generation bumps of every namespace.
	 */
	work->ncommands = (work->nkeys + RC_KEYS_PER_COMMAND - 1) / RC_KEYS_PER_COMMAND;
	ncommands_families = work->nfamilies > 0 ? work->nprefixes : 0;
	work->first_generation_command = work->ncommands + ncommands_families;
	work->ncommands = work->first_generation_command +
		(work->ngenerations > 0 ?
		 work->nprefixes * bump_command_count(work->ngenerations) : 0);
	work->commands = palloc0(sizeof(RedisCommand) * Max(work->ncommands, 1));
	work->replies = palloc0(sizeof(RedisReply *) * Max(work->ncommands, 1));
	work->numkeys = palloc(sizeof(*work->numkeys) * Max(work->ncommands, 1));

	/* keys, bumps of every namespace, families: the worst case */
	work->replay = palloc(sizeof(RedisReplayItem) *
						  (work->nkeys + work->nfamilies +
						   work->ngenerations * work->nprefixes + 1));
	for (i = 0; i < work->nkeys; i++)
	{
		int			c = i / RC_KEYS_PER_COMMAND;
		RedisCommand *cmd = &work->commands[c];
		PendingItem *item = work->keys[i];
		const char *prefix = work->prefixes[item->prefix_index];
		size_t		plen = strlen(prefix);
		char	   *full;
		RedisReplayItem *r = &work->replay[work->nreplay++];

		if (cmd->argc == 0)
			redis_cmd_init(cmd, "UNLINK",
						   Min(RC_KEYS_PER_COMMAND, work->nkeys - c * RC_KEYS_PER_COMMAND));
		full = palloc(plen + item->len + 1);
		memcpy(full, prefix, plen);
		memcpy(full + plen, item->key, item->len + 1);
		redis_cmd_key(cmd, full, plen + item->len);

		r->namespace_index = work->namespace_index[item->prefix_index];
		r->kind = RC_REPLAY_KEY;
		r->data = full;
		r->len = (uint32) (plen + item->len);
		r->hash = redis_replay_key_hash(full, plen + item->len);
	}

	/* SADD <prefix>{cache}:families family... (families.c) */
	if (ncommands_families > 0)
	{
		int			c = (work->nkeys + RC_KEYS_PER_COMMAND - 1) / RC_KEYS_PER_COMMAND;
		int			p;

		for (p = 0; p < work->nprefixes; p++)
		{
			RedisCommand *cmd = &work->commands[c + p];

			redis_cmd_init(cmd, "SADD", work->nfamilies + 1);
			redis_cmd_key_str(cmd, redis_control_key(work->prefixes[p], RC_CONTROL_FAMILIES));
			for (i = 0; i < work->nfamilies; i++)
			{
				PendingItem *f = work->families[i];
				RedisReplayItem *r;

				if (f->prefix_index != p ||
					family_recorded(work->prefixes[p], f->key, true))
					continue;
				redis_cmd_arg(cmd, f->key, f->len);
				/* a namespace the worker does not track: SADD at commit only */
				if (work->namespace_index[p] < 0)
					continue;
				r = &work->replay[work->nreplay++];
				r->namespace_index = work->namespace_index[p];
				r->kind = RC_REPLAY_FAMILY;
				r->data = f->key;
				r->len = (uint32) f->len;
				r->hash = 0;
			}
		}
		/* prefixes without families: drop their empty SADDs */
		{
			int			kept = c;

			for (p = 0; p < work->nprefixes; p++)
				if (work->commands[c + p].argc > 2)
					work->commands[kept++] = work->commands[c + p];
			memmove(&work->commands[kept], &work->commands[c + work->nprefixes],
					sizeof(RedisCommand) * (work->ncommands - c - work->nprefixes));
			work->ncommands -= c + work->nprefixes - kept;
			work->first_generation_command -= c + work->nprefixes - kept;
		}
	}

	if (work->ngenerations > 0)
	{
		char	  **items = palloc(sizeof(char *) * work->ngenerations);
		size_t	   *lens = palloc(sizeof(size_t) * work->ngenerations);
		int			c = work->first_generation_command;
		int			p;

		for (i = 0; i < work->ngenerations; i++)
		{
			items[i] = work->generations[i]->key;
			lens[i] = work->generations[i]->len;
		}
		for (p = 0; p < work->nprefixes; p++)
		{
			c += build_bump_commands(work->prefixes[p], items, lens,
									 work->ngenerations, &work->commands[c]);
			/* a namespace the worker does not know holds no results */
			for (i = 0; i < work->ngenerations && work->namespace_index[p] >= 0; i++)
			{
				RedisReplayItem *r = &work->replay[work->nreplay++];

				r->namespace_index = work->namespace_index[p];
				r->kind = RC_REPLAY_GENERATION;
				r->data = items[i];
				r->len = (uint32) lens[i];
				r->hash = 0;
			}
		}
	}

	if (redis_local_configured())
		prepare_local_invalidations(work);

	/* room for replies and messages at COMMIT */
	(void) palloc(64 * 1024);

	MemoryContextSwitchTo(old);

	redis_worker_commit_begin();
	work->counted_in_flight = true;
}

/*
 * What the local cache of this server must forget at COMMIT: the keys,
 * the generation keys of every namespace's bumps (before
 * drop_unneeded_generations(), which only knows about Redis), the globs.
 */
static void
prepare_local_invalidations(CommitWork *work)
{
	int			i;
	int			p;

	work->local_keys = palloc(sizeof(char *) *
							  (work->nkeys + work->ngenerations * work->nprefixes + 1));
	work->local_lens = palloc(sizeof(size_t) *
							  (work->nkeys + work->ngenerations * work->nprefixes + 1));
	for (i = 0; i < work->nreplay; i++)
		if (work->replay[i].kind == RC_REPLAY_KEY)
		{
			work->local_keys[work->nlocal] = (char *) work->replay[i].data;
			work->local_lens[work->nlocal++] = work->replay[i].len;
		}
	for (p = 0; p < work->nprefixes && work->ngenerations > 0; p++)
	{
		char	   *base = redis_query_base(work->prefixes[p]);

		for (i = 0; i < work->ngenerations; i++)
		{
			char	   *key = redis_query_gen_key(base, work->generations[i]->key,
												  work->generations[i]->len);

			work->local_keys[work->nlocal] = key;
			work->local_lens[work->nlocal++] = strlen(key);
		}
	}
	work->local_globs = palloc(sizeof(char *) * (work->npatterns + 1));
	work->local_glob_lens = palloc(sizeof(size_t) * (work->npatterns + 1));
	for (i = 0; i < work->npatterns; i++)
	{
		PendingItem *item = work->patterns[i];
		const char *prefix = work->prefixes[item->prefix_index];
		StringInfoData glob;

		initStringInfo(&glob);
		redis_append_glob_escaped(&glob, prefix, strlen(prefix));
		appendBinaryStringInfo(&glob, item->key, item->len);
		work->local_globs[work->nlocal_globs] = glob.data;
		work->local_glob_lens[work->nlocal_globs++] = glob.len;
	}
}

/*
 * Forget locally what the commit invalidates: before its send (so that no
 * reader of this server is served it once COMMIT returns, whatever the
 * send does) and after it (so that no read begun before the send landed
 * installs what it overwrote).  No allocation, no ERROR.
 */
static void
invalidate_locally(CommitWork *work)
{
	int			i;

	for (i = 0; i < work->nlocal; i++)
		redis_local_invalidate(work->local_keys[i], work->local_lens[i]);
	for (i = 0; i < work->nlocal_globs; i++)
		redis_local_invalidate_pattern(work->local_globs[i], work->local_glob_lens[i]);
}

/*
 * Delivery failed: hand the worker exactly what this commit had to send
 * (replay.c), and the patterns, which the worker runs anyway.  When the
 * keys do not fit, the worker deletes the families of the templates
 * concerned instead (pattern queue); when bumps or families do not fit,
 * or the pattern queue is full, it flushes the namespace's owned keys.
 * Never more than the cache owns.  XACT_EVENT_COMMIT: no ERROR, no
 * allocation.
 */
static void
hand_everything_to_worker(CommitWork *work)
{
	int			failed;
	int			i;

	redis_stats_add(RC_STAT_INVALIDATIONS_QUEUED,
					work->nkeys + work->npatterns + work->ngenerations);
	failed = redis_replay_hand_over(work->replay, work->nreplay);
	redis_worker_wake();
	if (failed & RC_REPLAY_FAILED(RC_REPLAY_KEY))
	{
		for (i = 0; i < work->nfamilies; i++)
		{
			PendingItem *f = work->families[i];

			redis_queue_pattern(work->namespace_index[f->prefix_index], f->key);
		}
		for (i = 0; i < work->nkeys; i++)
		{
			int			p = work->keys[i]->prefix_index;
			int			j;

			/* keys of a prefix without families: the flush covers them */
			for (j = 0; j < work->nfamilies; j++)
				if (work->families[j]->prefix_index == p)
					break;
			if (j == work->nfamilies)
				redis_mark_missed(work->namespace_index[p]);
		}
	}
	if (failed & (RC_REPLAY_FAILED(RC_REPLAY_GENERATION) |
				  RC_REPLAY_FAILED(RC_REPLAY_FAMILY)))
	{
		for (i = 0; i < work->nreplay; i++)
			if (work->replay[i].kind != RC_REPLAY_KEY)
				redis_mark_missed(work->replay[i].namespace_index);
	}
	if (failed && redis_warning_due(&last_overflow_warning))
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("redis_cache: the replay queue is full; the worker will delete the owned key families of this transaction's tables instead of its %d keys",
						work->nkeys),
				 errhint("Raise redis_cache.replay_queue_keys (server start) to keep exact replays through longer Redis outages.")));
	for (i = 0; i < work->npatterns; i++)
	{
		PendingItem *p = work->patterns[i];

		redis_queue_pattern(work->namespace_index[p->prefix_index], p->key);
	}
}

static void
warn_lost(CommitWork *work, const char *why)
{
	if (!redis_warning_due(&last_lost_warning))
		return;
	ereport(WARNING,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("redis_cache: %d cache invalidations of this transaction were not delivered: %s",
					work->nkeys + work->npatterns + work->ngenerations, why),
			 errhint("Add redis_cache to shared_preload_libraries so that missed invalidations are applied when Redis is back.")));
}

/*
 * COMMIT: keep only the generation bumps some cached result may need
 * (decided now, after the transaction became visible; query_deps.c), in
 * place, without allocating.  A bump command is EVALSHA sha nkeys dead
 * {gen deps}*n base item*n (redis_invalidate_script_cmd()): an item and
 * its two keys go or stay together, and the key count is rewritten into
 * the command's buffer of numkeys, allocated at PRE_COMMIT.
 */
static void
drop_unneeded_generations(CommitWork *work)
{
	int			keep = work->first_generation_command;
	int			chunks = (work->ngenerations + RC_KEYS_PER_COMMAND - 1) / RC_KEYS_PER_COMMAND;
	int			needed = 0;
	int			c;

	for (c = work->first_generation_command; c < work->ncommands; c++)
	{
		RedisCommand *cmd = &work->commands[c];
		int			n = (cmd->argc - 5) / 3;
		int			items_at = 5 + 2 * n;
		int			w = 0;
		int			j;

		Assert(cmd->argc == 5 + 3 * n && cmd->first_key == 3 &&
			   cmd->nkeys == 1 + 2 * n);
		for (j = 0; j < n; j++)
		{
			if (!redis_query_generation_needed(cmd->argv[items_at + j],
											   (int) cmd->argvlen[items_at + j]))
				continue;
			/* writes never pass reads: w <= j, and the regions are apart */
			cmd->argv[4 + 2 * w] = cmd->argv[4 + 2 * j];
			cmd->argvlen[4 + 2 * w] = cmd->argvlen[4 + 2 * j];
			cmd->argv[5 + 2 * w] = cmd->argv[5 + 2 * j];
			cmd->argvlen[5 + 2 * w] = cmd->argvlen[5 + 2 * j];
			cmd->argv[items_at + w] = cmd->argv[items_at + j];
			cmd->argvlen[items_at + w] = cmd->argvlen[items_at + j];
			w++;
		}
		/* base and the kept items follow the kept keys */
		memmove(&cmd->argv[4 + 2 * w], &cmd->argv[4 + 2 * n],
				sizeof(char *) * (1 + w));
		memmove(&cmd->argvlen[4 + 2 * w], &cmd->argvlen[4 + 2 * n],
				sizeof(size_t) * (1 + w));
		cmd->argc = 5 + 3 * w;
		cmd->nkeys = 1 + 2 * w;
		snprintf(work->numkeys[c], sizeof(work->numkeys[c]), "%d", cmd->nkeys);
		cmd->argv[2] = work->numkeys[c];
		cmd->argvlen[2] = strlen(work->numkeys[c]);
		/* the same items for every prefix: count the first prefix's */
		if (c < work->first_generation_command + chunks)
			needed += w;
		if (w > 0)
			work->commands[keep++] = *cmd;
	}
	work->ncommands = keep;
	work->ngenerations = needed;

	/* the hand-over too */
	keep = 0;
	for (c = 0; c < work->nreplay; c++)
	{
		RedisReplayItem *r = &work->replay[c];

		if (r->kind == RC_REPLAY_GENERATION &&
			!redis_query_generation_needed(r->data, (int) r->len))
			continue;
		work->replay[keep++] = *r;
	}
	work->nreplay = keep;
}

/*
 * COMMIT: deliver.  Interrupts are held and an ERROR here would be a PANIC,
 * so everything is caught and downgraded.
 */
static void
send_commit_work(void)
{
	CommitWork *work = commit_work;
	MemoryContext old;
	bool		have_worker;
	uint32		saved_holdoff = InterruptHoldoffCount;
	uint32		saved_cancel_holdoff = QueryCancelHoldoffCount;
	TimestampTz limit;

	if (work == NULL)
		return;
	have_worker = redis_worker_running();

	/* every wait below, whatever command_timeout_ms says */
	limit = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), commit_timeout_ms);
	redis_transport_limit_waits(limit, commit_timeout_ms);

	old = MemoryContextSwitchTo(work->context);
	invalidate_locally(work);
	PG_TRY();
	{
		bool		delivered = true;
		int			i;

		drop_unneeded_generations(work);

		/* EVALSHA; the scripts Redis lacks go again as EVAL (scripts.c) */
		if (work->ncommands > 0)
			delivered = redis_execute_scripts(work->commands, work->ncommands,
											  work->replies,
											  RC_EXEC_NO_ERROR | RC_EXEC_INTERNAL |
											  RC_EXEC_FAST_CONNECT | RC_EXEC_IGNORE_ENABLED |
											  RC_EXEC_AT_COMMIT);
		/*
		 * A refused UNLINK (an ACL) or a script that failed half way
		 * (foreign data): the worker replays it, and reports what Redis
		 * says.  A refused family record (SADD) is reported here; the next
		 * commit records it again.
		 */
		for (i = 0; delivered && i < work->ncommands; i++)
		{
			RedisReply *reply = work->replies[i];

			if (reply != NULL && reply->type != RC_REPLY_ERROR)
				continue;
			if (reply != NULL && strcmp(work->commands[i].argv[0], "SADD") == 0)
			{
				if (redis_reply_error_kind(reply) != RC_ERR_WRONGTYPE)
					redis_report_reply_error(reply, "recording the owned key families (SADD)",
											 RC_EXEC_NO_ERROR);
				continue;
			}
			delivered = false;
		}
		if (delivered)
		{
			redis_stats_add(RC_STAT_INVALIDATIONS_SENT, work->nkeys + work->ngenerations);
			mark_families_recorded();
		}
		if (!delivered)
		{
			if (have_worker)
				hand_everything_to_worker(work);
			else
				warn_lost(work, "Redis is unreachable");
		}
		else
		{
			TimestampTz now = GetCurrentTimestamp();

			for (i = 0; i < work->npatterns; i++)
			{
				PendingItem *p = work->patterns[i];

				if (have_worker)
				{
					redis_queue_pattern(work->namespace_index[p->prefix_index], p->key);
					redis_stats_add(RC_STAT_INVALIDATIONS_QUEUED, 1);
				}
				else if (redis_unlink_pattern_until(work->prefixes[p->prefix_index], p->key,
													limit) < 0)
				{
					warn_lost(work, "a pattern invalidation did not finish within redis_cache.commit_timeout_ms");
					break;
				}
			}
			if (have_worker && redelete_delay_ms > 0)
			{
				TimestampTz due = TimestampTzPlusMilliseconds(now, redelete_delay_ms);

				for (i = 0; i < work->nkeys; i++)
				{
					PendingItem *k = work->keys[i];

					redis_queue_redelete(work->namespace_index[k->prefix_index],
										 k->key, k->len, due);
				}
			}
		}
	}
	PG_CATCH();
	{
		/*
		 * errfinish() zeroed the holdoff counts for the ERROR we swallow;
		 * CommitTransaction() still expects its HOLD_INTERRUPTS().
		 */
		InterruptHoldoffCount = saved_holdoff;
		QueryCancelHoldoffCount = saved_cancel_holdoff;
		MemoryContextSwitchTo(work->context);
		FlushErrorState();
		if (have_worker)
			hand_everything_to_worker(work);
		else
			warn_lost(work, "an error occurred while sending");
	}
	PG_END_TRY();
	redis_transport_limit_waits(0, 0);
	invalidate_locally(work);
	MemoryContextSwitchTo(old);
}

static void
release_commit_work(void)
{
	CommitWork *work = commit_work;

	commit_work = NULL;
	if (work == NULL)
		return;
	if (work->counted_in_flight)
		redis_worker_commit_end();
	MemoryContextDelete(work->context);
	pfree(work);
}

/* Wait until the test's advisory lock is free (interruptible). */
static void
pause_for_test(int key)
{
	DirectFunctionCall1(pg_advisory_lock_int8, Int64GetDatum(key));
	DirectFunctionCall1(pg_advisory_unlock_int8, Int64GetDatum(key));
}

static void
invalidation_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
			prepare_commit_work();
			if (debug_pre_commit_lock != 0 && commit_work != NULL)
				pause_for_test(debug_pre_commit_lock);
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (pending != NULL)
			{
				PendingLevel *l;
				ListCell   *lc;

				/*
				 * Generation bumps are not needed: COMMIT PREPARED bumps
				 * the DDL generation of every database, which ends every
				 * cached result (query_deps.c).  Key deletes are.
				 */
				for (l = pending; l != NULL; l = l->upper)
					foreach(lc, l->items)
						if (!((PendingItem *) lfirst(lc))->is_generation)
							ereport(ERROR,
									(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
									 errmsg("redis_cache: cannot PREPARE a transaction that has queued cache invalidations"),
									 errdetail("Invalidations are sent when the transaction commits, which a prepared transaction does outside this session."),
									 errhint("Commit the transaction directly, or invalidate with cache_delete() after COMMIT PREPARED.")));
			}
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			send_commit_work();
			release_commit_work();
			pending = NULL;
			transaction_prefixes = NIL;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			release_commit_work();
			pending = NULL;
			transaction_prefixes = NIL;
			break;
	}
}

static void
invalidation_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
							  SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (pending == NULL || pending->nest_level < level)
		return;

	if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		PendingLevel *child = pending;

		if (child->upper != NULL && child->upper->nest_level == level - 1)
		{
			/* cells live on in the child's CurTransactionContext */
			MemoryContext old = MemoryContextSwitchTo(CurTransactionContext);

			child->upper->items = list_concat(child->upper->items, child->items);
			MemoryContextSwitchTo(old);
			pending = child->upper;
		}
		else
			child->nest_level = level - 1;
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		/* its memory is released with the subtransaction */
		pending = pending->upper;
	}
}

void
redis_invalidation_init(void)
{
	if (callbacks_registered)
		return;
	RegisterXactCallback(invalidation_xact_callback, NULL);
	RegisterSubXactCallback(invalidation_subxact_callback, NULL);
	callbacks_registered = true;

	DefineCustomIntVariable("redis_cache.redelete_delay_ms",
							gettext_noop("Sets the delay of a second delete of invalidated keys after commit; 0 disables it."),
							gettext_noop("Covers applications that fill the cache from a read that began before the commit. Needs shared_preload_libraries."),
							&redelete_delay_ms,
							0, 0, 3600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("redis_cache.commit_timeout_ms",
							gettext_noop("Sets the longest time a commit waits for Redis to deliver its invalidations."),
							gettext_noop("The one bound of a commit's delivery, connection, retry and pattern scans included, while the transaction still holds its locks (the command and connect timeouts do not apply there); what is not delivered in time goes to the worker."),
							&commit_timeout_ms,
							1000, 1, 600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("redis_cache.debug_pre_commit_lock",
							"Test hook: advisory lock key a commit waits for between PRE_COMMIT and COMMIT.",
							"For isolation tests only; 0 disables.",
							&debug_pre_commit_lock, 0, 0, INT_MAX,
							PGC_SUSET, GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							NULL, NULL, NULL);
}
