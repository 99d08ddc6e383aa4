/*-------------------------------------------------------------------------
 *
 * query_format.c
 *		  The stored format of cached query results lives here: encoder
 *		  and decoder.
 *
 * An entry is a Redis hash (see query_cache.c) whose "meta" field names the
 * format version, the kind, the exact byte length and the CRC-32C of its
 * "data" field:
 *
 *		redis_cache/1 rows 1234 0a1b2c3d
 *
 * "rows" data, all integers big-endian:
 *
 *		uint32 ncolumns, ncolumns x (uint32 type OID, uint32 encoding),
 *		uint32 nrows, nrows x ncolumns cells: uint32 length (0xFFFFFFFF =
 *		NULL), bytes
 *
 * where the bytes are the type's binary send output (encoding 1, for types
 * whose receive function does not depend on client_encoding) or its text
 * output (encoding 0).  "json" data is the
 * JSON array text itself, so applications can read it with HGET.
 *
 * The encoder writes exactly this and nothing else; query_rows.c turns
 * tuples into cells (send or output functions) and hands them over in
 * order.  It refuses what the decoder would refuse (no columns, more than
 * RCQ_MAX_COLUMNS, another encoding, a cell as long as the NULL marker,
 * more cells than the header announced), so whatever it accepts decodes
 * to the same cells.  test/fuzz checks that round trip.
 *
 * Everything read from Redis is untrusted.  The checks run in order of
 * cost and every one fails softly (a status, never an abort): the meta line
 * must parse exactly, the length must match, the checksum must match, and
 * rows data must account for every byte.  Only then are cells handed out.
 *
 * This file uses no PostgreSQL API except CRC-32C, so that test/fuzz can
 * build it alone (RCQ_STANDALONE) under libFuzzer and AddressSanitizer;
 * the encoder writes through a reserve callback for the same reason (a
 * StringInfo in the server).
 *
 *-------------------------------------------------------------------------
 */
#ifdef RCQ_STANDALONE
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#else
#include "postgres.h"

#include "port/pg_crc32c.h"
#endif

#include "query_format.h"

#ifdef RCQ_STANDALONE
/*
 * CRC-32C (Castagnoli), the same function as pg_crc32c: reflected,
 * polynomial 0x82F63B78, one table lookup per byte.
 */
uint32_t
rcq_crc32c(const void *data, size_t len)
{
	static uint32_t table[256];
	const unsigned char *p = data;
	uint32_t	crc = 0xFFFFFFFFu;
	size_t		i;

	if (table[1] == 0)
	{
		uint32_t	b;
		int			bit;

		for (b = 0; b < 256; b++)
		{
			uint32_t	c = b;

			for (bit = 0; bit < 8; bit++)
				c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
			table[b] = c;
		}
	}
	for (i = 0; i < len; i++)
		crc = (crc >> 8) ^ table[(crc ^ p[i]) & 0xFF];
	return crc ^ 0xFFFFFFFFu;
}
#else
uint32_t
rcq_crc32c(const void *data, size_t len)
{
	pg_crc32c	crc;

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, data, len);
	FIN_CRC32C(crc);
	return (uint32_t) crc;
}
#endif

/* ---- encoder --------------------------------------------------------------- */

/*
 * Start encoding into buffer, which reserve() grows (see query_format.h).
 */
void
rcq_encoder_init(RcqEncoder *enc, RcqReserve reserve, void *buffer)
{
	memset(enc, 0, sizeof(*enc));
	enc->reserve = reserve;
	enc->buffer = buffer;
}

/* room for n more bytes */
static unsigned char *
encoder_space(RcqEncoder *enc, size_t n)
{
	enc->len += n;
	return enc->reserve(enc->buffer, n);
}

/*
 * Write the header of rows data: the column count, each column's type OID
 * and encoding, and the row count.  nrows x ncolumns cells must follow.
 * False, with nothing written, when the format cannot hold it.
 */
bool
rcq_encode_header(RcqEncoder *enc, uint32_t ncolumns, const uint32_t *types,
				  const uint32_t *encodings, uint64_t nrows)
{
	unsigned char *p;
	uint32_t	c;

	if (enc->ncolumns != 0 || ncolumns == 0 || ncolumns > RCQ_MAX_COLUMNS ||
		nrows > UINT32_MAX)
		return false;
	for (c = 0; c < ncolumns; c++)
		if (encodings[c] != RCQ_ENCODING_TEXT &&
			encodings[c] != RCQ_ENCODING_BINARY)
			return false;

	p = encoder_space(enc, 4 + (size_t) ncolumns * 8 + 4);
	rcq_put_u32(p, ncolumns);
	p += 4;
	for (c = 0; c < ncolumns; c++)
	{
		rcq_put_u32(p, types[c]);
		rcq_put_u32(p + 4, encodings[c]);
		p += 8;
	}
	rcq_put_u32(p, (uint32_t) nrows);
	enc->ncolumns = ncolumns;
	enc->cells_left = nrows * ncolumns;
	return true;
}

/*
 * Write the next cell, row by row: len bytes of value (the column's text
 * or binary form, as its header entry says), or SQL NULL when value is
 * NULL (an empty value is a non-NULL pointer with len 0).  False, with
 * nothing written, when the header announced no more cells or the value
 * is too long for the format.
 */
bool
rcq_encode_cell(RcqEncoder *enc, const void *value, size_t len)
{
	unsigned char *p;

	if (enc->cells_left == 0 ||
		(value != NULL && (len >= (size_t) RCQ_NULL_LENGTH || len > SIZE_MAX - 4)))
		return false;
	enc->cells_left--;
	if (value == NULL)
	{
		rcq_put_u32(encoder_space(enc, 4), RCQ_NULL_LENGTH);
		return true;
	}
	p = encoder_space(enc, 4 + len);
	rcq_put_u32(p, (uint32_t) len);
	if (len > 0)
		memcpy(p + 4, value, len);
	return true;
}

/*
 * True when the header and every cell it announced were written.
 */
bool
rcq_encode_finish(const RcqEncoder *enc)
{
	return enc->ncolumns != 0 && enc->cells_left == 0;
}

/*
 * JSON data: "[", the elements (each one row's JSON object, as
 * row_to_json() writes it) separated by ",", then "]".
 */
void
rcq_json_begin(RcqEncoder *enc)
{
	*encoder_space(enc, 1) = '[';
}

void
rcq_json_element(RcqEncoder *enc, const char *json, size_t len)
{
	unsigned char *p;

	if (enc->elements++ > 0)
		*encoder_space(enc, 1) = ',';
	if (len > 0)
	{
		p = encoder_space(enc, len);
		memcpy(p, json, len);
	}
}

void
rcq_json_end(RcqEncoder *enc)
{
	*encoder_space(enc, 1) = ']';
}

static const char *
kind_name(RcqKind kind)
{
	return kind == RCQ_KIND_JSON ? "json" : "rows";
}

/*
 * Write the meta line for data (all of it, once encoded) into buf; returns
 * its length.
 */
size_t
rcq_format_meta(char *buf, size_t bufsize, RcqKind kind, const void *data,
				size_t len)
{
	int			n = snprintf(buf, bufsize, "%s %s %lu %08x", RCQ_META_TAG,
							 kind_name(kind), (unsigned long) len,
							 (unsigned) rcq_crc32c(data, len));

	return n < 0 ? 0 : (size_t) n;
}

/* ---- decoder --------------------------------------------------------------- */

/*
 * Check data against its meta line, exactly as rcq_format_meta() wrote it.
 */
RcqStatus
rcq_check_meta(const char *meta, size_t metalen, const void *data,
			   size_t datalen, RcqKind *kind)
{
	size_t		taglen = strlen(RCQ_META_TAG);
	size_t		pos;
	unsigned long long declared = 0;
	uint32_t	crc = 0;
	int			digits = 0;
	int			i;

	if (meta == NULL || metalen > RCQ_META_MAX || metalen < taglen + 6 ||
		memcmp(meta, RCQ_META_TAG " ", taglen + 1) != 0)
		return RCQ_BAD_META;
	pos = taglen + 1;
	if (memcmp(meta + pos, "rows ", 5) == 0)
		*kind = RCQ_KIND_ROWS;
	else if (memcmp(meta + pos, "json ", 5) == 0)
		*kind = RCQ_KIND_JSON;
	else
		return RCQ_BAD_META;
	pos += 5;

	while (pos < metalen && meta[pos] >= '0' && meta[pos] <= '9')
	{
		if (++digits > 10)
			return RCQ_BAD_META;
		declared = declared * 10 + (unsigned) (meta[pos] - '0');
		pos++;
	}
	if (digits == 0 || (digits > 1 && meta[pos - digits] == '0') ||
		pos >= metalen || meta[pos] != ' ')
		return RCQ_BAD_META;
	pos++;

	if (metalen - pos != 8)
		return RCQ_BAD_META;
	for (i = 0; i < 8; i++)
	{
		char		c = meta[pos + i];
		uint32_t	nibble;

		if (c >= '0' && c <= '9')
			nibble = (uint32_t) (c - '0');
		else if (c >= 'a' && c <= 'f')
			nibble = (uint32_t) (c - 'a' + 10);
		else
			return RCQ_BAD_META;
		crc = (crc << 4) | nibble;
	}

	if (declared != (unsigned long long) datalen)
		return RCQ_BAD_LENGTH;
	if (rcq_crc32c(data, datalen) != crc)
		return RCQ_BAD_CHECKSUM;
	return RCQ_OK;
}

/*
 * Validate rows data completely and describe it in *rows.
 */
RcqStatus
rcq_rows_open(const void *data, size_t len, RcqRows *rows)
{
	const unsigned char *p = data;
	const unsigned char *end = p + len;
	uint64_t	ncells;
	uint64_t	i;

	if (len < 4)
		return RCQ_BAD_STRUCTURE;
	rows->ncolumns = rcq_get_u32(p);
	p += 4;
	if (rows->ncolumns == 0 || rows->ncolumns > RCQ_MAX_COLUMNS ||
		(size_t) (end - p) < (size_t) rows->ncolumns * 8 + 4)
		return RCQ_BAD_STRUCTURE;
	rows->columns = p;
	for (i = 0; i < rows->ncolumns; i++)
	{
		uint32_t	encoding = rcq_get_u32(p + i * 8 + 4);

		if (encoding != RCQ_ENCODING_TEXT && encoding != RCQ_ENCODING_BINARY)
			return RCQ_BAD_STRUCTURE;
	}
	p += (size_t) rows->ncolumns * 8;
	rows->nrows = rcq_get_u32(p);
	p += 4;
	rows->cells = p;
	rows->end = end;

	/* every cell takes at least its 4-byte length */
	ncells = (uint64_t) rows->nrows * rows->ncolumns;
	if (ncells > (uint64_t) (end - p) / 4)
		return RCQ_BAD_STRUCTURE;
	for (i = 0; i < ncells; i++)
	{
		uint32_t	cell;

		if (end - p < 4)
			return RCQ_BAD_STRUCTURE;
		cell = rcq_get_u32(p);
		p += 4;
		if (cell == RCQ_NULL_LENGTH)
			continue;
		if ((size_t) (end - p) < cell)
			return RCQ_BAD_STRUCTURE;
		p += cell;
	}
	if (p != end)
		return RCQ_BAD_STRUCTURE;
	return RCQ_OK;
}

uint32_t
rcq_column_type(const RcqRows *rows, uint32_t column)
{
	return rcq_get_u32(rows->columns + (size_t) column * 8);
}

uint32_t
rcq_column_encoding(const RcqRows *rows, uint32_t column)
{
	return rcq_get_u32(rows->columns + (size_t) column * 8 + 4);
}

/*
 * Read the cell at *pos and advance.  Returns 1 for NULL, 0 for a value
 * (not NUL-terminated).  Only for data rcq_rows_open() accepted.
 */
int
rcq_next_cell(const unsigned char **pos, const char **value, uint32_t *len)
{
	uint32_t	cell = rcq_get_u32(*pos);

	*pos += 4;
	if (cell == RCQ_NULL_LENGTH)
	{
		*value = NULL;
		*len = 0;
		return 1;
	}
	*value = (const char *) *pos;
	*len = cell;
	*pos += cell;
	return 0;
}

const char *
rcq_status_message(RcqStatus status)
{
	switch (status)
	{
		case RCQ_OK:
			return "valid";
		case RCQ_BAD_META:
			return "not a redis_cache/1 query result";
		case RCQ_BAD_LENGTH:
			return "truncated or extended";
		case RCQ_BAD_CHECKSUM:
			return "checksum mismatch";
		case RCQ_BAD_STRUCTURE:
			return "malformed rows";
	}
	return "unknown";
}
