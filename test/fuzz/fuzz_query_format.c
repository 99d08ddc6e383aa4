/*-------------------------------------------------------------------------
 *
 * fuzz_query_format.c
 *		  libFuzzer harness for the decoder of cached query results.
 *
 * Input layout: byte 0 selects the path.  Even: byte 1 is the length of a
 * meta line that follows, the rest is data, and the full check runs (meta,
 * length, checksum, then rows).  Odd: the rest goes straight to
 * rcq_rows_open(), skipping the checksum a fuzzer cannot forge, so the
 * structural decoder gets the attention.  Every accepted cell is read back
 * to the end; AddressSanitizer reports any out-of-bounds byte.
 *
 * Built and run for a bounded time by test/t/070_fuzz.pl.
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "query_format.h"

/* keeps the reads from being optimised away */
volatile unsigned fuzz_sink;

static void
read_all_cells(const RcqRows *rows)
{
	const unsigned char *pos = rows->cells;
	uint64_t	ncells = (uint64_t) rows->nrows * rows->ncolumns;
	uint64_t	i;
	unsigned	sum = 0;
	uint32_t	c;

	for (c = 0; c < rows->ncolumns; c++)
		sum += rcq_column_type(rows, c) + rcq_column_encoding(rows, c);
	for (i = 0; i < ncells; i++)
	{
		const char *value;
		uint32_t	len;

		if (!rcq_next_cell(&pos, &value, &len) && len > 0)
			sum += (unsigned char) value[0] + (unsigned char) value[len - 1];
	}
	fuzz_sink = sum;
	if (pos != rows->end)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *input, size_t size)
{
	RcqRows		rows;

	if (size < 1)
		return 0;
	if (input[0] & 1)
	{
		if (rcq_rows_open(input + 1, size - 1, &rows) == RCQ_OK)
			read_all_cells(&rows);
	}
	else
	{
		size_t		metalen;
		RcqKind		kind;
		char	   *meta;

		if (size < 2 || (size_t) input[1] > size - 2)
			return 0;
		metalen = input[1];
		/* a separate allocation, so ASan sees reads past the meta line */
		meta = malloc(metalen ? metalen : 1);
		memcpy(meta, input + 2, metalen);
		if (rcq_check_meta(meta, metalen, input + 2 + metalen,
						   size - 2 - metalen, &kind) == RCQ_OK &&
			kind == RCQ_KIND_ROWS &&
			rcq_rows_open(input + 2 + metalen, size - 2 - metalen, &rows) == RCQ_OK)
			read_all_cells(&rows);
		free(meta);
	}
	return 0;
}
