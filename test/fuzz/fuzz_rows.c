/*-------------------------------------------------------------------------
 *
 * fuzz_rows.c
 *		  Row sets for the harnesses of test/fuzz: the encoder's output
 *		  buffer, one row set through the encoder, the decoder's view of it
 *		  compared cell by cell, and a walk over every cell of data the
 *		  decoder accepted that aborts on any byte outside the data.
 *
 * Failures abort(): under libFuzzer and AddressSanitizer that is a crash
 * with the input kept.
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_rows.h"

/* keeps the reads of fuzz_walk_cells from being optimised away */
volatile unsigned fuzz_sink;

/*
 * The encoder's reserve callback: n more bytes at the end of a FuzzBuf.
 * The buffer grows by doubling, like a StringInfo.
 */
unsigned char *
fuzz_reserve(void *buffer, size_t n)
{
	FuzzBuf    *buf = buffer;
	unsigned char *p;

	if (buf->len + n > buf->cap)
	{
		size_t		cap = buf->cap ? buf->cap : 64;

		while (cap < buf->len + n)
			cap *= 2;
		buf->data = realloc(buf->data, cap);
		if (buf->data == NULL)
			abort();
		buf->cap = cap;
	}
	p = buf->data + buf->len;
	buf->len += n;
	return p;
}

void
fuzz_buf_free(FuzzBuf *buf)
{
	free(buf->data);
	memset(buf, 0, sizeof(*buf));
}

/*
 * Encode rows into out (appended); false when the encoder refuses them.
 * The encoder's own byte count must match the buffer's.
 */
bool
fuzz_rows_encode(const FuzzRows *rows, FuzzBuf *out)
{
	RcqEncoder	enc;
	size_t		start = out->len;
	uint64_t	ncells = (uint64_t) rows->nrows * rows->ncolumns;
	uint64_t	i;

	rcq_encoder_init(&enc, fuzz_reserve, out);
	if (!rcq_encode_header(&enc, rows->ncolumns, rows->types,
						   rows->encodings, rows->nrows))
		return false;
	if (rcq_encode_finish(&enc) != (ncells == 0))
		abort();
	for (i = 0; i < ncells; i++)
		if (!rcq_encode_cell(&enc, rows->cells[i].value, rows->cells[i].len))
			return false;
	if (!rcq_encode_finish(&enc) || enc.len != out->len - start)
		abort();
	return true;
}

/*
 * Decode data and compare it with rows: NULL when every column and cell is
 * the same, else what differs.
 */
const char *
fuzz_rows_compare(const FuzzRows *rows, const void *data, size_t len)
{
	RcqRows		decoded;
	const unsigned char *pos;
	uint64_t	ncells = (uint64_t) rows->nrows * rows->ncolumns;
	uint64_t	i;
	uint32_t	c;

	if (rcq_rows_open(data, len, &decoded) != RCQ_OK)
		return "the decoder rejects the encoder's output";
	if (decoded.ncolumns != rows->ncolumns || decoded.nrows != rows->nrows)
		return "column or row count differs";
	for (c = 0; c < rows->ncolumns; c++)
		if (rcq_column_type(&decoded, c) != rows->types[c] ||
			rcq_column_encoding(&decoded, c) != rows->encodings[c])
			return "a column's type or encoding differs";
	pos = decoded.cells;
	for (i = 0; i < ncells; i++)
	{
		const FuzzCell *want = &rows->cells[i];
		const char *value;
		uint32_t	vlen;
		int			isnull = rcq_next_cell(&pos, &value, &vlen);

		if (isnull != (want->value == NULL))
			return "a cell's NULL flag differs";
		if (isnull)
			continue;
		if (vlen != want->len || memcmp(value, want->value, vlen) != 0)
			return "a cell's bytes differ";
	}
	if (pos != decoded.end)
		return "bytes left after the last cell";
	return NULL;
}

/*
 * Walk every column and cell of data rcq_rows_open() accepted into rows,
 * reading the first and last byte of each value; abort() on anything
 * outside [data, data + len).  Returns the number of cells.
 */
uint64_t
fuzz_walk_cells(const RcqRows *rows, const void *data, size_t len)
{
	const unsigned char *start = data;
	const unsigned char *end = start + len;
	const unsigned char *pos = rows->cells;
	uint64_t	ncells = (uint64_t) rows->nrows * rows->ncolumns;
	uint64_t	i;
	uint32_t	c;
	unsigned	sum = 0;

	if (rows->ncolumns == 0 || rows->ncolumns > RCQ_MAX_COLUMNS ||
		rows->columns < start || rows->columns + (size_t) rows->ncolumns * 8 > end ||
		rows->end != end || pos < start || pos > end)
		abort();
	for (c = 0; c < rows->ncolumns; c++)
	{
		uint32_t	encoding = rcq_column_encoding(rows, c);

		if (encoding != RCQ_ENCODING_TEXT && encoding != RCQ_ENCODING_BINARY)
			abort();
		sum += rcq_column_type(rows, c);
	}
	for (i = 0; i < ncells; i++)
	{
		const char *value;
		uint32_t	vlen;

		if (end - pos < 4)
			abort();
		if (rcq_next_cell(&pos, &value, &vlen))
			continue;
		if ((const unsigned char *) value < start ||
			(size_t) (end - (const unsigned char *) value) < vlen)
			abort();
		if (vlen > 0)
			sum += (unsigned char) value[0] + (unsigned char) value[vlen - 1];
	}
	if (pos != end)
		abort();
	fuzz_sink = sum;
	return ncells;
}
