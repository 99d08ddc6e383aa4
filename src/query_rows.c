/*-------------------------------------------------------------------------
 *
 * query_rows.c
 *		  The PostgreSQL side of cached query results: tuples to values
 *		  (each column type's binary send or text output form, or one
 *		  row_to_json() object per row) for the encoder of query_format.c,
 *		  and the decoder's cells back to tuples in a tuplestore (or one
 *		  jsonb document).  The bytes themselves are query_format.c's.
 *
 * Design rules:
 *
 * - Redis content is untrusted.  query_format.c checks the container (no
 *   PostgreSQL headers, so it is fuzzed on its own); this file checks what
 *   only PostgreSQL can: column count and types against the caller's
 *   column definition list, text validity in the database encoding before
 *   any input function sees it, and that a binary receive function consumed
 *   every byte (as exec_bind_message() does).
 * - Binary form only for types whose receive function validates its input
 *   and does not depend on client_encoding.
 * - Decoding one row allocates in a per-row context, reset after each row.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/jsonapi.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "query_format.h"
#include "redis_cache.h"

/*
 * Types stored in their binary send format: parsing them is the bulk of a
 * hit's decoding otherwise.  Only types whose receive function validates
 * its input and does not convert from client_encoding (text-like types
 * do) qualify.
 */
static bool
use_binary_encoding(Oid type)
{
	switch (type)
	{
		case BOOLOID:
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case OIDOID:
		case FLOAT4OID:
		case FLOAT8OID:
		case NUMERICOID:
		case DATEOID:
		case TIMEOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
		case INTERVALOID:
		case UUIDOID:
			return true;
		default:
			return false;
	}
}

/*
 * The encoder's reserve callback: n more bytes at the end of a StringInfo.
 * enlargeStringInfo() raises an error when the buffer cannot grow.
 */
static unsigned char *
reserve_in_string(void *buffer, size_t n)
{
	StringInfo	out = buffer;
	unsigned char *p;

	if (n >= MaxAllocSize)
		elog(ERROR, "redis_cache: cannot append %zu bytes to a query result", n);
	enlargeStringInfo(out, (int) n);
	p = (unsigned char *) out->data + out->len;
	out->len += (int) n;
	out->data[out->len] = '\0';
	return p;
}

/*
 * Encode SPI's result as rows data (query_format.c writes the bytes: each
 * column's type and encoding, then each value's send or output function
 * result); false when it exceeds max_value_bytes or the format.
 */
bool
redis_rows_encode(SPITupleTable *table, uint64 nrows, StringInfo out)
{
	TupleDesc	desc = table->tupdesc;
	FmgrInfo   *output = palloc(sizeof(FmgrInfo) * desc->natts);
	bool	   *binary = palloc(sizeof(bool) * desc->natts);
	uint32	   *types = palloc(sizeof(uint32) * desc->natts);
	uint32	   *encodings = palloc(sizeof(uint32) * desc->natts);
	RcqEncoder	enc;
	MemoryContext row_context;
	MemoryContext old;
	uint64		r;
	int			c;

	for (c = 0; c < desc->natts; c++)
	{
		Oid			type = TupleDescAttr(desc, c)->atttypid;
		Oid			typoutput;
		bool		varlena;

		binary[c] = use_binary_encoding(type);
		if (binary[c])
			getTypeBinaryOutputInfo(type, &typoutput, &varlena);
		else
			getTypeOutputInfo(type, &typoutput, &varlena);
		fmgr_info(typoutput, &output[c]);
		types[c] = type;
		encodings[c] = binary[c] ? RCQ_ENCODING_BINARY : RCQ_ENCODING_TEXT;
	}
	rcq_encoder_init(&enc, reserve_in_string, out);
	if (!rcq_encode_header(&enc, (uint32) desc->natts, types, encodings, nrows))
		return false;

	row_context = AllocSetContextCreate(CurrentMemoryContext, "redis_cache encode",
										ALLOCSET_SMALL_SIZES);
	for (r = 0; r < nrows; r++)
	{
		HeapTuple	tuple = table->vals[r];
		bool		fits = true;

		old = MemoryContextSwitchTo(row_context);
		for (c = 0; c < desc->natts && fits; c++)
		{
			bool		isnull;
			Datum		value = heap_getattr(tuple, c + 1, desc, &isnull);

			if (isnull)
				fits = rcq_encode_cell(&enc, NULL, 0);
			else if (binary[c])
			{
				bytea	   *bytes = SendFunctionCall(&output[c], value);

				fits = rcq_encode_cell(&enc, VARDATA(bytes),
									   VARSIZE(bytes) - VARHDRSZ);
			}
			else
			{
				char	   *str = OutputFunctionCall(&output[c], value);

				fits = rcq_encode_cell(&enc, str, strlen(str));
			}
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(row_context);
		if (!fits || out->len > redis_cache_max_value_bytes)
		{
			MemoryContextDelete(row_context);
			return false;
		}
	}
	MemoryContextDelete(row_context);
	if (!rcq_encode_finish(&enc))
		elog(ERROR, "redis_cache: encoded rows do not match their header");
	return true;
}

/*
 * Decode a hit into the tuplestore.  Returns NULL on success, else why the
 * entry cannot be used (nothing was added then).  A result of another shape
 * than the column definition list (the list changed) is reported as
 * "shape", not as damage.
 */
const char *
redis_rows_decode(TupleDesc desc, const char *entry_key, const char *data,
				  size_t len, Tuplestorestate *store)
{
	RcqRows		rows;
	RcqStatus	status = rcq_rows_open(data, len, &rows);
	FmgrInfo   *input;
	bool	   *binary;
	Oid		   *ioparams;
	Datum	   *values;
	bool	   *nulls;
	const unsigned char *pos;
	StringInfoData cell;
	MemoryContext row_context;
	MemoryContext old;
	uint32		r;
	uint32		c;

	if (status != RCQ_OK)
		return rcq_status_message(status);
	if (rows.ncolumns != (uint32) desc->natts)
		return "shape";
	binary = palloc(sizeof(bool) * desc->natts);
	for (c = 0; c < rows.ncolumns; c++)
	{
		Oid			type = TupleDescAttr(desc, c)->atttypid;

		if (rcq_column_type(&rows, c) != type)
			return "shape";
		binary[c] = rcq_column_encoding(&rows, c) == RCQ_ENCODING_BINARY;
		if (binary[c] != use_binary_encoding(type))
			return "a column is not in the encoding its type uses";
	}

	/* text must be valid before any input function sees it */
	pos = rows.cells;
	for (r = 0; r < rows.nrows; r++)
	{
		for (c = 0; c < rows.ncolumns; c++)
		{
			const char *value;
			uint32		vlen;

			if (!rcq_next_cell(&pos, &value, &vlen) && !binary[c] &&
				!pg_verifymbstr(value, (int) vlen, true))
				return "a value is not valid text in the database encoding";
		}
	}

	input = palloc(sizeof(FmgrInfo) * desc->natts);
	ioparams = palloc(sizeof(Oid) * desc->natts);
	values = palloc(sizeof(Datum) * desc->natts);
	nulls = palloc(sizeof(bool) * desc->natts);
	for (c = 0; c < rows.ncolumns; c++)
	{
		Oid			typinput;

		if (binary[c])
			getTypeBinaryInputInfo(TupleDescAttr(desc, c)->atttypid, &typinput, &ioparams[c]);
		else
			getTypeInputInfo(TupleDescAttr(desc, c)->atttypid, &typinput, &ioparams[c]);
		fmgr_info(typinput, &input[c]);
	}

	initStringInfo(&cell);
	row_context = AllocSetContextCreate(CurrentMemoryContext, "redis_cache decode",
										ALLOCSET_SMALL_SIZES);
	pos = rows.cells;
	for (r = 0; r < rows.nrows; r++)
	{
		old = MemoryContextSwitchTo(row_context);
		for (c = 0; c < rows.ncolumns; c++)
		{
			const char *value;
			uint32		vlen;

			nulls[c] = rcq_next_cell(&pos, &value, &vlen) != 0;
			if (nulls[c])
			{
				values[c] = binary[c] ?
					ReceiveFunctionCall(&input[c], NULL, ioparams[c], -1) :
					InputFunctionCall(&input[c], NULL, ioparams[c], -1);
				continue;
			}
			resetStringInfo(&cell);
			appendBinaryStringInfo(&cell, value, (int) vlen);
			if (!binary[c])
			{
				values[c] = InputFunctionCall(&input[c], cell.data, ioparams[c], -1);
				continue;
			}
			/* as exec_bind_message() does: every byte must be consumed */
			values[c] = ReceiveFunctionCall(&input[c], &cell, ioparams[c], -1);
			if (cell.cursor != cell.len)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_CORRUPTED),
						 errmsg("redis_cache: cached query result \"%s\" has a malformed binary value in column %u",
								entry_key, c + 1)));
		}
		tuplestore_putvalues(store, desc, values, nulls);
		MemoryContextSwitchTo(old);
		MemoryContextReset(row_context);
	}
	MemoryContextDelete(row_context);
	pfree(cell.data);
	return NULL;
}

/* ---- JSON: encode and decode ----------------------------------------------- */

/*
 * Encode SPI's result as JSON data: one row_to_json() object per row, in
 * the array query_format.c writes.
 */
void
redis_json_encode(SPITupleTable *table, uint64 nrows, StringInfo out)
{
	TupleDesc	desc = table->tupdesc;
	RcqEncoder	enc;
	MemoryContext row_context;
	MemoryContext old;
	uint64		r;

	BlessTupleDesc(desc);
	rcq_encoder_init(&enc, reserve_in_string, out);
	rcq_json_begin(&enc);
	row_context = AllocSetContextCreate(CurrentMemoryContext, "redis_cache json",
										ALLOCSET_SMALL_SIZES);
	for (r = 0; r < nrows; r++)
	{
		text	   *row;

		old = MemoryContextSwitchTo(row_context);
		row = DatumGetTextPP(DirectFunctionCall1(row_to_json,
												 heap_copy_tuple_as_datum(table->vals[r], desc)));
		MemoryContextSwitchTo(old);
		rcq_json_element(&enc, VARDATA_ANY(row), VARSIZE_ANY_EXHDR(row));
		MemoryContextReset(row_context);
	}
	MemoryContextDelete(row_context);
	rcq_json_end(&enc);
}

/*
 * JSON text from Redis to jsonb: NULL when it is not valid (why in *why).
 * pg_parse_json reports errors instead of raising them.
 */
Datum
redis_json_decode(const char *data, size_t len, const char **why)
{
	JsonLexContext *lex;

	if (len == 0 || data[0] != '[')
	{
		*why = "not a JSON array";
		return (Datum) 0;
	}
	if (!pg_verifymbstr(data, (int) len, true))
	{
		*why = "not valid text in the database encoding";
		return (Datum) 0;
	}
	lex = makeJsonLexContextCstringLen((char *) data, (int) len,
									   GetDatabaseEncoding(), true);
	if (pg_parse_json(lex, &nullSemAction) != JSON_SUCCESS)
	{
		*why = "not valid JSON";
		return (Datum) 0;
	}
	*why = NULL;
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(data));
}

