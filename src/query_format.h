/*-------------------------------------------------------------------------
 *
 * query_format.h
 *		  The stored format of cached query results (query_format.c).
 *
 * Kept free of PostgreSQL headers so that the encoder and the decoder can
 * be built alone into the fuzzing harnesses under test/fuzz (define
 * RCQ_STANDALONE).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUERY_FORMAT_H
#define QUERY_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* "meta" field of an entry: "redis_cache/1 <kind> <bytes> <crc32c hex>" */
#define RCQ_META_TAG		"redis_cache/1"
#define RCQ_META_MAX		64

/* How a column's values are stored. */
#define RCQ_ENCODING_TEXT	0	/* the type's text output */
#define RCQ_ENCODING_BINARY	1	/* the type's binary send output */

/* A cell length meaning SQL NULL. */
#define RCQ_NULL_LENGTH		0xFFFFFFFFu

/* Columns a rows entry may have (MaxTupleAttributeNumber). */
#define RCQ_MAX_COLUMNS		1664

typedef enum RcqKind
{
	RCQ_KIND_ROWS,				/* binary rows: cache_query() */
	RCQ_KIND_JSON				/* JSON array text: cache_query_json() */
} RcqKind;

typedef enum RcqStatus
{
	RCQ_OK,
	RCQ_BAD_META,				/* not our format, or another version */
	RCQ_BAD_LENGTH,				/* data is not as long as meta says */
	RCQ_BAD_CHECKSUM,			/* data changed after it was written */
	RCQ_BAD_STRUCTURE			/* rows do not parse */
} RcqStatus;

/*
 * A validated rows entry.  rcq_rows_open() walked every cell, so reading
 * them with rcq_next_cell() in order cannot go out of bounds.
 */
typedef struct RcqRows
{
	uint32_t	ncolumns;
	const unsigned char *columns;	/* ncolumns x (type OID, encoding) */
	uint32_t	nrows;
	const unsigned char *cells; /* first cell */
	const unsigned char *end;
} RcqRows;

/*
 * The encoder appends to a buffer it does not own: reserve(buffer, n) makes
 * room for n more bytes at the buffer's end, counts them as written and
 * returns where they go.  It never returns NULL (the server's raises an
 * error, test/fuzz's aborts).
 */
typedef unsigned char *(*RcqReserve) (void *buffer, size_t n);

typedef struct RcqEncoder
{
	RcqReserve	reserve;
	void	   *buffer;
	size_t		len;			/* bytes written so far */
	uint32_t	ncolumns;		/* rows: 0 until the header is written */
	uint64_t	cells_left;		/* rows: announced and not yet written */
	uint64_t	elements;		/* json: array elements written */
} RcqEncoder;

/* encoder */
extern void rcq_encoder_init(RcqEncoder *enc, RcqReserve reserve,
							 void *buffer);
extern bool rcq_encode_header(RcqEncoder *enc, uint32_t ncolumns,
							  const uint32_t *types,
							  const uint32_t *encodings, uint64_t nrows);
extern bool rcq_encode_cell(RcqEncoder *enc, const void *value, size_t len);
extern bool rcq_encode_finish(const RcqEncoder *enc);
extern void rcq_json_begin(RcqEncoder *enc);
extern void rcq_json_element(RcqEncoder *enc, const char *json, size_t len);
extern void rcq_json_end(RcqEncoder *enc);
extern size_t rcq_format_meta(char *buf, size_t bufsize, RcqKind kind,
							  const void *data, size_t len);

/* decoder */
extern RcqStatus rcq_check_meta(const char *meta, size_t metalen,
								const void *data, size_t datalen,
								RcqKind *kind);
extern RcqStatus rcq_rows_open(const void *data, size_t len, RcqRows *rows);
extern uint32_t rcq_column_type(const RcqRows *rows, uint32_t column);
extern uint32_t rcq_column_encoding(const RcqRows *rows, uint32_t column);
extern int	rcq_next_cell(const unsigned char **pos, const char **value,
						  uint32_t *len);
extern const char *rcq_status_message(RcqStatus status);

/* both */
extern uint32_t rcq_crc32c(const void *data, size_t len);

/* Big-endian integers of the rows format. */
static inline void
rcq_put_u32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char) (v >> 24);
	p[1] = (unsigned char) (v >> 16);
	p[2] = (unsigned char) (v >> 8);
	p[3] = (unsigned char) v;
}

static inline uint32_t
rcq_get_u32(const unsigned char *p)
{
	return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) |
		((uint32_t) p[2] << 8) | (uint32_t) p[3];
}

#endif							/* QUERY_FORMAT_H */
