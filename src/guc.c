/*-------------------------------------------------------------------------
 *
 * guc.c
 *		  The settings several files read: key_prefix, enabled, on_error,
 *		  command_timeout_ms, default_ttl and max_value_bytes; how the
 *		  library was loaded (redis_cache_preloaded()); and the guard that
 *		  tells whether this session's server settings are the configured
 *		  ones (redis_settings_untrusted()); reading a password file.
 *
 * A setting read by one file only is defined in that file, with the
 * variable static there: the server settings in connection.c, the cache
 * version in version.c, query_lock_timeout_ms in query_cache.c,
 * redelete_delay_ms in invalidation.c.
 *
 * Contexts are deliberate.  What we may store (key_prefix, max_value_bytes)
 * is PGC_SUSET; knobs that only change how this session reacts (timeouts,
 * on_error, default_ttl) are PGC_USERSET.
 *
 * Server settings (every redis_cache setting that is not PGC_USERSET) are
 * guarded against a session replacing them.  Preloaded, PostgreSQL does it
 * alone: the settings exist before any session, so SET, PGOPTIONS and
 * ALTER ROLE / DATABASE by a non-superuser are refused.  Loaded later, the
 * values a session gave before the load sit in placeholders, and a client
 * option (PGOPTIONS, PGC_S_CLIENT) becomes the placeholder's reset value,
 * replacing the one of postgresql.conf.  Defining the setting then refuses
 * the client's value (permission denied) but the configured one is gone:
 * the setting falls back to its built-in default.  So _PG_init notes the
 * placeholders before defining anything (redis_settings_guard_begin) and
 * compares afterwards (redis_settings_guard_end): a server setting whose
 * reset value or configuration-level value did not survive marks the
 * session untrusted, and redis_settings_check_trusted() refuses to use
 * Redis for the rest of the session.  A plain SET refused at the load is
 * not a loss (the configured value stays in force; PostgreSQL warns).  No
 * catalog lookup is needed: PostgreSQL itself judged each value (superuser,
 * GRANT SET ON PARAMETER) when it re-applied it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <errno.h>
#include <limits.h>

#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/guc.h"
#include "utils/guc_tables.h"
#include "utils/memutils.h"

#include "redis_cache.h"

char	   *redis_cache_key_prefix = NULL;
bool		redis_cache_enabled = true;
int			redis_cache_command_timeout_ms = 250;
int			redis_cache_default_ttl = 3600;
int			redis_cache_on_error = RC_ON_ERROR_WARNING;
int			redis_cache_max_value_bytes = 8 * 1024 * 1024;



/* Loaded from shared_preload_libraries (inherited by every backend). */
static bool preloaded = false;

/*
 * A placeholder of ours seen before the settings were defined: where its
 * reset and current values came from.
 */
#define RC_SETTINGS_PREFIX			"redis_cache."

typedef struct NotedPlaceholder
{
	char		name[NAMEDATALEN];
	GucSource	reset_source;
	GucSource	source;
} NotedPlaceholder;

static NotedPlaceholder *noted = NULL;	/* TopMemoryContext, until the end */
static int	nnoted = 0;

/* The first server setting whose configured value this session lost. */
static char untrusted_setting[NAMEDATALEN];

/*
 * Whether the library was loaded from shared_preload_libraries: the shared
 * statistics, the worker and the table bitmap exist only then.
 */
bool
redis_cache_preloaded(void)
{
	return preloaded;
}

/* The GUC record named name (any case), or NULL. */
static struct config_generic *
find_setting(const char *name)
{
	struct config_generic **vars = get_guc_variables();
	int			n = GetNumConfigOptions();
	int			i;

	for (i = 0; i < n; i++)
		if (pg_strcasecmp(vars[i]->name, name) == 0)
			return vars[i];
	return NULL;
}

/*
 * First thing in _PG_init, before any setting is defined: note our
 * placeholders and where their values came from.  Nothing to do when
 * preloaded (no session has given values yet).
 */
void
redis_settings_guard_begin(void)
{
	struct config_generic **vars;
	int			n;
	int			i;

	untrusted_setting[0] = '\0';
	if (process_shared_preload_libraries_in_progress)
		return;
	vars = get_guc_variables();
	n = GetNumConfigOptions();
	/* room for all: a client may add any number of junk names */
	noted = MemoryContextAlloc(TopMemoryContext, n * sizeof(NotedPlaceholder));
	for (i = 0; i < n; i++)
	{
		struct config_generic *gconf = vars[i];

		/*
		 * Longer names cannot be ours; a value only SET (no reset value of
		 * its own) cannot replace a configured one.
		 */
		if (!(gconf->flags & GUC_CUSTOM_PLACEHOLDER) ||
			pg_strncasecmp(gconf->name, RC_SETTINGS_PREFIX,
						   strlen(RC_SETTINGS_PREFIX)) != 0 ||
			strlen(gconf->name) >= NAMEDATALEN ||
			(gconf->reset_source == PGC_S_DEFAULT &&
			 gconf->source >= PGC_S_INTERACTIVE))
			continue;
		strlcpy(noted[nnoted].name, gconf->name, NAMEDATALEN);
		noted[nnoted].reset_source = gconf->reset_source;
		noted[nnoted].source = gconf->source;
		nnoted++;
	}
}

/*
 * After every setting is defined: a server setting (not PGC_USERSET) whose
 * placeholder's reset value, or current value from a configuration-level
 * source (anything below SET), was not taken over lost its configured value
 * to a value PostgreSQL refused.  The session is then untrusted.
 */
void
redis_settings_guard_end(void)
{
	int			i;

	for (i = 0; i < nnoted && untrusted_setting[0] == '\0'; i++)
	{
		struct config_generic *gconf = find_setting(noted[i].name);

		if (gconf == NULL || (gconf->flags & GUC_CUSTOM_PLACEHOLDER) ||
			gconf->context == PGC_USERSET)
			continue;
		if (gconf->reset_source != noted[i].reset_source ||
			(noted[i].source < PGC_S_INTERACTIVE &&
			 gconf->source != noted[i].source))
			strlcpy(untrusted_setting, gconf->name, NAMEDATALEN);
	}
	if (noted != NULL)
		pfree(noted);
	noted = NULL;
	nnoted = 0;
}

/*
 * The server setting whose configured value this session lost (see the
 * header comment), or NULL when the configuration is in force.
 */
const char *
redis_settings_untrusted(void)
{
	return untrusted_setting[0] ? untrusted_setting : NULL;
}

/*
 * ERROR when this session lost a configured server setting: nothing may
 * reach Redis (or be queued for it) with the built-in defaults in force.
 */
void
redis_settings_check_trusted(void)
{
	if (untrusted_setting[0] == '\0')
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("redis_cache: the configured value of \"%s\" is not in force in this session",
					untrusted_setting),
			 errdetail("When the library was loaded, the value this session had for it (from the client's options such as PGOPTIONS, or an invalid configured value) was refused, which would leave the built-in default in force; this session does not use Redis."),
			 errhint("Remove the redis_cache settings from the client's options, or add redis_cache to shared_preload_libraries.")));
}

static const struct config_enum_entry on_error_options[] = {
	{"warning", RC_ON_ERROR_WARNING, false},
	{"error", RC_ON_ERROR_ERROR, false},
	{"silent", RC_ON_ERROR_SILENT, false},
	{NULL, 0, false}
};

static bool
check_key_prefix(char **newval, void **extra, GucSource source)
{
	const unsigned char *p;

	if (*newval == NULL)
		return true;
	if (strlen(*newval) > RC_MAX_KEY_BYTES)
	{
		GUC_check_errmsg("redis_cache.key_prefix is too long");
		GUC_check_errdetail("The prefix is %zu bytes; at most %d are allowed.",
							strlen(*newval), RC_MAX_KEY_BYTES);
		return false;
	}
	for (p = (const unsigned char *) *newval; *p; p++)
	{
		if (*p < 0x20 || *p == 0x7F)
		{
			GUC_check_errmsg("redis_cache.key_prefix contains a control character");
			GUC_check_errhint("Use printable characters, for example \"dev:\".");
			return false;
		}
	}
	return true;
}

/*
 * Define the shared settings and note how the library is being loaded.
 * Called first from _PG_init.
 */
void
redis_cache_define_gucs(void)
{
	preloaded = process_shared_preload_libraries_in_progress;

	DefineCustomStringVariable("redis_cache.key_prefix",
							   gettext_noop("Sets the prefix prepended to every Redis key, such as an environment name."),
							   NULL,
							   &redis_cache_key_prefix,
							   "",
							   PGC_SUSET,
							   0,
							   check_key_prefix, NULL, NULL);

	DefineCustomBoolVariable("redis_cache.enabled",
							 gettext_noop("Enables the cache; when off every function is a miss that never contacts Redis."),
							 NULL,
							 &redis_cache_enabled,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("redis_cache.command_timeout_ms",
							gettext_noop("Sets the longest wait for one Redis round trip."),
							NULL,
							&redis_cache_command_timeout_ms,
							250, 1, 600000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("redis_cache.default_ttl",
							gettext_noop("Sets the expiry of entries stored without an explicit TTL; 0 means no expiry."),
							NULL,
							&redis_cache_default_ttl,
							3600, 0, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("redis_cache.on_error",
							 gettext_noop("Chooses what a Redis fault does to the calling query: warning, error or silent."),
							 gettext_noop("With warning and silent the function returns a miss and the query goes on."),
							 &redis_cache_on_error,
							 RC_ON_ERROR_WARNING,
							 on_error_options,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("redis_cache.max_value_bytes",
							gettext_noop("Sets the largest value stored or accepted from Redis."),
							NULL,
							&redis_cache_max_value_bytes,
							8 * 1024 * 1024, 1024, 512 * 1024 * 1024,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);
}

/*
 * The first line of the password file path (setting: its setting's name,
 * for messages), palloc'd; the caller wipes it with explicit_bzero.
 * Returns NULL with *why (palloc'd) saying why when the file cannot be
 * read or is empty.  Messages name the file, never its contents.
 */
char *
redis_read_secret_file(const char *path, const char *setting, char **why)
{
	FILE	   *file;
	char		line[1024];
	size_t		len;
	char	   *result;

	file = AllocateFile(path, "r");
	if (file == NULL)
	{
		*why = psprintf("could not open %s \"%s\": %s",
						setting, path, strerror(errno));
		return NULL;
	}
	if (fgets(line, sizeof(line), file) == NULL)
		line[0] = '\0';
	FreeFile(file);
	len = strlen(line);
	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		line[--len] = '\0';
	if (len == 0)
	{
		*why = psprintf("%s \"%s\" is empty", setting, path);
		return NULL;
	}
	result = pstrdup(line);
	explicit_bzero(line, sizeof(line));
	return result;
}
