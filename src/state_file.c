/*-------------------------------------------------------------------------
 *
 * state_file.c
 *		  Small files of the extension's own under pg_stat/, written
 *		  durably and read back only when they are intact and of the
 *		  format this build writes.
 *
 * Design rules:
 *
 * - Files live in PostgreSQL's permanent statistics directory (pg_stat/),
 *   as pg_stat_statements' do, never at the top of the data directory.
 * - Each file starts with a header: magic, format version, payload length
 *   and a CRC-32C of the payload.  A missing, damaged or other-format file
 *   reads as absent; the caller decides what absence means (for the worker
 *   and the table bitmap: "assume the worst").
 * - A write replaces the file atomically (temporary file, fsync, durable
 *   rename).  It never throws: I/O errors become a WARNING and false.
 * - No lock is taken here, and callers must not hold a lock that other
 *   backends need on their hot path while calling in: an fsync can take
 *   long.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "pgstat.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"

#include "redis_cache.h"

#define RC_STATE_FILE_MAGIC	0x52435346	/* "RCSF" */

typedef struct StateFileHeader
{
	uint32		magic;
	uint32		format;
	uint32		length;
	pg_crc32c	crc;
} StateFileHeader;

static void
state_file_path(char *path, size_t size, const char *name, const char *suffix)
{
	snprintf(path, size, "%s/%s%s", PGSTAT_STAT_PERMANENT_DIRECTORY, name, suffix);
}

static pg_crc32c
payload_crc(const void *data, size_t len)
{
	pg_crc32c	crc;

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, data, len);
	FIN_CRC32C(crc);
	return crc;
}

/*
 * Replace pg_stat/<name> with data (len bytes) in format "format".
 * Returns false after a WARNING on I/O errors; never throws.
 */
bool
redis_state_file_write(const char *name, uint32 format, const void *data,
					   size_t len)
{
	char		path[MAXPGPATH];
	char		tmp[MAXPGPATH];
	StateFileHeader header;
	int			fd;

	state_file_path(path, sizeof(path), name, "");
	state_file_path(tmp, sizeof(tmp), name, ".tmp");
	header.magic = RC_STATE_FILE_MAGIC;
	header.format = format;
	header.length = (uint32) len;
	header.crc = payload_crc(data, len);

	fd = OpenTransientFile(tmp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY);
	if (fd < 0)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("redis_cache: could not create \"%s\": %m", tmp)));
		return false;
	}
	if (write(fd, &header, sizeof(header)) != sizeof(header) ||
		write(fd, data, len) != (ssize_t) len ||
		pg_fsync(fd) != 0)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("redis_cache: could not write \"%s\": %m", tmp)));
		CloseTransientFile(fd);
		return false;
	}
	CloseTransientFile(fd);
	return durable_rename(tmp, path, WARNING) == 0;
}

/*
 * The payload of pg_stat/<name> (palloc'd, with a terminating NUL byte
 * after *len bytes), or NULL when the file is missing, damaged or of
 * another format (the latter two are logged).
 */
void *
redis_state_file_read(const char *name, uint32 format, size_t *len)
{
	char		path[MAXPGPATH];
	StateFileHeader header;
	char	   *data;
	int			fd;
	bool		intact;

	*len = 0;
	state_file_path(path, sizeof(path), name, "");
	fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (fd < 0)
		return NULL;
	if (read(fd, &header, sizeof(header)) != sizeof(header) ||
		header.magic != RC_STATE_FILE_MAGIC || header.format != format ||
		header.length > 64 * 1024 * 1024)
	{
		CloseTransientFile(fd);
		ereport(LOG,
				(errmsg("redis_cache: ignoring \"%s\": not a state file of format %u",
						path, format)));
		return NULL;
	}
	data = palloc(header.length + 1);
	intact = read(fd, data, header.length) == (ssize_t) header.length &&
		payload_crc(data, header.length) == header.crc;
	CloseTransientFile(fd);
	if (!intact)
	{
		pfree(data);
		ereport(LOG,
				(errmsg("redis_cache: ignoring damaged state file \"%s\"", path)));
		return NULL;
	}
	data[header.length] = '\0';
	*len = header.length;
	return data;
}

/*
 * The whole of a file of version 1.2 at the top of the data directory (at
 * most max bytes, NUL-terminated, palloc'd), or NULL when there is none.
 * Callers remove it once their new file is written.
 */
char *
redis_legacy_file_read(const char *path, size_t max, size_t *len)
{
	FILE	   *file = AllocateFile(path, PG_BINARY_R);
	char	   *data;

	*len = 0;
	if (file == NULL)
		return NULL;
	data = palloc(max + 1);
	*len = fread(data, 1, max, file);
	FreeFile(file);
	data[*len] = '\0';
	return data;
}
