/*
 * Writes seed inputs for fuzz_query_format: valid entries of the checked
 * and the raw path, written by the encoder of src/query_format.c, and a
 * row-set description for the round-trip path, so the fuzzer starts from
 * the real format rather than from nothing.
 */
#include <stdio.h>
#include <string.h>

#include "fuzz_rows.h"
#include "query_format.h"

/* int4 (binary) and text columns; rows (42, NULL) and ('acme', '') */
static bool
rows_entry(FuzzBuf *out)
{
	static const unsigned char v42[] = {0, 0, 0, 42};
	uint32_t	types[2] = {23, 25};
	uint32_t	encodings[2] = {RCQ_ENCODING_BINARY, RCQ_ENCODING_TEXT};
	FuzzCell	cells[4] = {
		{v42, 4}, {NULL, 0},
		{(const unsigned char *) "acme", 4}, {(const unsigned char *) "", 0}
	};
	FuzzRows	rows = {2, 2, types, encodings, cells};

	return fuzz_rows_encode(&rows, out) && fuzz_rows_compare(&rows, out->data, out->len) == NULL;
}

static void
write_file(const char *path, const unsigned char *buf, size_t len)
{
	FILE	   *f = fopen(path, "wb");

	if (f == NULL)
	{
		perror(path);
		return;
	}
	fwrite(buf, 1, len, f);
	fclose(f);
}

int
main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : ".";
	FuzzBuf		rows = {0};
	unsigned char input[512];
	char		meta[RCQ_META_MAX + 1];
	char		path[1024];
	size_t		len;
	size_t		mlen;
	const char *json = "[{\"id\":42,\"name\":\"acme\"}]";
	/*
	 * round trip (see rows_from_input): 3 columns, 2 rows; int4 binary,
	 * text, bytea binary; cells 42, NULL, '', 8 bytes, 'abc', 70,000 bytes
	 */
	static const unsigned char description[] = {
		2, 2, 0, 47, 0, 50, 0, 35,
		4, 0, 0, 0, 42, 255, 0, 8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 1, 2, 3,
		3, 'a', 'b', 'c', 254
	};
	RcqRows		decoded;
	RcqKind		kind;

	if (!rows_entry(&rows) || rows.len > 256)
	{
		fprintf(stderr, "the encoder's seed rows entry does not decode\n");
		return 1;
	}
	len = rows.len;
	input[0] = 1;
	memcpy(input + 1, rows.data, len);
	snprintf(path, sizeof(path), "%s/rows_raw", dir);
	write_file(path, input, len + 1);

	mlen = rcq_format_meta(meta, sizeof(meta), RCQ_KIND_ROWS, rows.data, len);
	/* the seeds must pass every check, or the fuzzer starts from nothing */
	if (rcq_check_meta(meta, mlen, rows.data, len, &kind) != RCQ_OK ||
		kind != RCQ_KIND_ROWS ||
		rcq_rows_open(rows.data, len, &decoded) != RCQ_OK ||
		decoded.ncolumns != 2 || decoded.nrows != 2)
	{
		fprintf(stderr, "seed rows entry does not decode\n");
		return 1;
	}
	input[0] = 0;
	input[1] = (unsigned char) mlen;
	memcpy(input + 2, meta, mlen);
	memcpy(input + 2 + mlen, rows.data, len);
	snprintf(path, sizeof(path), "%s/rows_checked", dir);
	write_file(path, input, 2 + mlen + len);

	mlen = rcq_format_meta(meta, sizeof(meta), RCQ_KIND_JSON, json, strlen(json));
	input[1] = (unsigned char) mlen;
	memcpy(input + 2, meta, mlen);
	memcpy(input + 2 + mlen, json, strlen(json));
	snprintf(path, sizeof(path), "%s/json_checked", dir);
	write_file(path, input, 2 + mlen + strlen(json));

	input[0] = 2;
	memcpy(input + 1, description, sizeof(description));
	snprintf(path, sizeof(path), "%s/round_trip", dir);
	write_file(path, input, 1 + sizeof(description));
	fuzz_buf_free(&rows);
	return 0;
}
