/*-------------------------------------------------------------------------
 *
 * fuzz_rows.h
 *		  Row sets for the harnesses of test/fuzz (fuzz_rows.c): encode one
 *		  with the encoder of src/query_format.c, compare what the decoder
 *		  returns with it, and walk any accepted data within its bounds.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FUZZ_ROWS_H
#define FUZZ_ROWS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "query_format.h"

/* A growing malloc buffer; fuzz_reserve() is the encoder's callback. */
typedef struct FuzzBuf
{
	unsigned char *data;
	size_t		len;
	size_t		cap;
} FuzzBuf;

/* One cell: value NULL is SQL NULL; an empty value has a non-NULL pointer. */
typedef struct FuzzCell
{
	const unsigned char *value;
	size_t		len;
} FuzzCell;

/* nrows x ncolumns cells, row by row */
typedef struct FuzzRows
{
	uint32_t	ncolumns;
	uint32_t	nrows;
	uint32_t   *types;
	uint32_t   *encodings;
	FuzzCell   *cells;
} FuzzRows;

extern unsigned char *fuzz_reserve(void *buffer, size_t n);
extern void fuzz_buf_free(FuzzBuf *buf);
extern bool fuzz_rows_encode(const FuzzRows *rows, FuzzBuf *out);
extern const char *fuzz_rows_compare(const FuzzRows *rows, const void *data,
									 size_t len);
extern uint64_t fuzz_walk_cells(const RcqRows *rows, const void *data,
								size_t len);

#endif							/* FUZZ_ROWS_H */
