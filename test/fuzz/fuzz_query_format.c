/*-------------------------------------------------------------------------
 *
 * fuzz_query_format.c
 *		  libFuzzer harness for the stored format of cached query results
 *		  (src/query_format.c): the decoder, and the encoder's round trip.
 *
 * Input layout: byte 0 mod 3 selects the path.
 *
 *	0: byte 1 is the length of a meta line that follows, the rest is data,
 *	   and the full check runs (meta, length, checksum, then rows).
 *	1: the rest goes straight to rcq_rows_open(), skipping the checksum a
 *	   fuzzer cannot forge, so the structural decoder gets the attention.
 *	2: the rest describes a row set (see rows_from_input), which is encoded
 *	   with the encoder, decoded with the decoder and compared exactly.
 *
 * Every accepted cell is read back to the end; AddressSanitizer reports any
 * out-of-bounds byte, and a round trip that does not give back the same
 * cells aborts.
 *
 * Built and run with a fixed seed and run count by test/t/070_fuzz.pl,
 * together with roundtrip_query_format.c.
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_rows.h"
#include "query_format.h"

/* a byte of the input, or 0 past its end */
static unsigned
byte_at(const uint8_t *in, size_t size, size_t *pos)
{
	return *pos < size ? in[(*pos)++] : 0;
}

/*
 * A row set from the input: columns (1 + byte mod 16), rows (byte mod 32),
 * per column 2 bytes of type OID and an encoding bit, then per cell a
 * length byte: 255 is NULL, 254 a 70,000-byte value, else mod 64; values
 * are the input's next bytes (a repeating pattern past its end).  The
 * values live in arena, which the caller frees.
 */
static void
rows_from_input(const uint8_t *in, size_t size, FuzzRows *rows,
				unsigned char **arena)
{
	size_t		pos = 0;
	size_t		used = 0;
	size_t		cap = 0;
	uint64_t	ncells;
	uint64_t	i;
	uint32_t	c;
	size_t	   *offsets;

	rows->ncolumns = 1 + byte_at(in, size, &pos) % 16;
	rows->nrows = byte_at(in, size, &pos) % 32;
	rows->types = malloc(sizeof(uint32_t) * rows->ncolumns);
	rows->encodings = malloc(sizeof(uint32_t) * rows->ncolumns);
	for (c = 0; c < rows->ncolumns; c++)
	{
		unsigned	hi = byte_at(in, size, &pos);
		unsigned	lo = byte_at(in, size, &pos);

		rows->types[c] = (hi << 8 | lo) >> 1;
		rows->encodings[c] = lo & 1;
	}
	ncells = (uint64_t) rows->nrows * rows->ncolumns;
	rows->cells = calloc(ncells ? ncells : 1, sizeof(FuzzCell));
	offsets = calloc(ncells ? ncells : 1, sizeof(size_t));
	*arena = NULL;
	for (i = 0; i < ncells; i++)
	{
		unsigned	b = byte_at(in, size, &pos);
		size_t		len;
		size_t		k;

		offsets[i] = SIZE_MAX;	/* NULL */
		if (b == 255)
			continue;
		len = b == 254 ? 70000 : b % 64;
		if (used + len + 1 > cap)
		{
			cap = (used + len + 1) * 2;
			*arena = realloc(*arena, cap);
			if (*arena == NULL)
				abort();
		}
		for (k = 0; k < len; k++)
			(*arena)[used + k] = pos < size ? in[pos++] : (unsigned char) (k * 31 + i);
		offsets[i] = used;
		rows->cells[i].len = len;
		used += len + 1;
	}
	if (*arena == NULL)
		*arena = malloc(1);
	/* the arena moved while it grew: point the cells into it now */
	for (i = 0; i < ncells; i++)
		rows->cells[i].value = offsets[i] == SIZE_MAX ? NULL : *arena + offsets[i];
	free(offsets);
}

static void
round_trip(const uint8_t *in, size_t size)
{
	FuzzRows	rows;
	FuzzBuf		out = {0};
	unsigned char *arena;
	unsigned char *exact;
	const char *why;

	rows_from_input(in, size, &rows, &arena);
	if (!fuzz_rows_encode(&rows, &out))
		abort();				/* every row set of this layout fits */
	/* an exact-size copy, so ASan sees any read past the end */
	exact = malloc(out.len);
	memcpy(exact, out.data, out.len);
	why = fuzz_rows_compare(&rows, exact, out.len);
	if (why != NULL)
	{
		fprintf(stderr, "round trip: %s\n", why);
		abort();
	}
	free(exact);
	fuzz_buf_free(&out);
	free(arena);
	free(rows.cells);
	free(rows.types);
	free(rows.encodings);
}

int
LLVMFuzzerTestOneInput(const uint8_t *input, size_t size)
{
	RcqRows		rows;

	if (size < 1)
		return 0;
	switch (input[0] % 3)
	{
		case 1:
			if (rcq_rows_open(input + 1, size - 1, &rows) == RCQ_OK)
				fuzz_walk_cells(&rows, input + 1, size - 1);
			break;
		case 2:
			round_trip(input + 1, size - 1);
			break;
		default:
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
					fuzz_walk_cells(&rows, input + 2 + metalen, size - 2 - metalen);
				free(meta);
			}
			break;
	}
	return 0;
}
