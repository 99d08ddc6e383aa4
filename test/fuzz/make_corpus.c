/*
 * Writes seed inputs for fuzz_query_format: valid entries of both paths,
 * so the fuzzer starts from the real format rather than from nothing.
 */
#include <stdio.h>
#include <string.h>

#include "query_format.h"

static size_t
rows_entry(unsigned char *buf)
{
	unsigned char *p = buf;
	const char *cells[] = {"\x00\x00\x00\x2a", NULL, "acme", ""};
	size_t		cell_lens[] = {4, 0, 4, 0};
	int			i;

	rcq_put_u32(p, 2);
	rcq_put_u32(p + 4, 23);		/* int4, binary */
	rcq_put_u32(p + 8, RCQ_ENCODING_BINARY);
	rcq_put_u32(p + 12, 25);	/* text, text */
	rcq_put_u32(p + 16, RCQ_ENCODING_TEXT);
	rcq_put_u32(p + 20, 2);
	p += 24;
	for (i = 0; i < 4; i++)
	{
		if (cells[i] == NULL)
		{
			rcq_put_u32(p, RCQ_NULL_LENGTH);
			p += 4;
			continue;
		}
		rcq_put_u32(p, (uint32_t) cell_lens[i]);
		memcpy(p + 4, cells[i], cell_lens[i]);
		p += 4 + cell_lens[i];
	}
	return (size_t) (p - buf);
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
	unsigned char rows[256];
	unsigned char input[512];
	char		meta[RCQ_META_MAX + 1];
	char		path[1024];
	size_t		len = rows_entry(rows);
	size_t		mlen;
	const char *json = "[{\"id\":42,\"name\":\"acme\"}]";
	RcqRows		decoded;
	RcqKind		kind;

	input[0] = 1;
	memcpy(input + 1, rows, len);
	snprintf(path, sizeof(path), "%s/rows_raw", dir);
	write_file(path, input, len + 1);

	mlen = rcq_format_meta(meta, sizeof(meta), RCQ_KIND_ROWS, rows, len);
	/* the seeds must pass every check, or the fuzzer starts from nothing */
	if (rcq_check_meta(meta, mlen, rows, len, &kind) != RCQ_OK ||
		kind != RCQ_KIND_ROWS ||
		rcq_rows_open(rows, len, &decoded) != RCQ_OK ||
		decoded.ncolumns != 2 || decoded.nrows != 2)
	{
		fprintf(stderr, "seed rows entry does not decode\n");
		return 1;
	}
	input[0] = 0;
	input[1] = (unsigned char) mlen;
	memcpy(input + 2, meta, mlen);
	memcpy(input + 2 + mlen, rows, len);
	snprintf(path, sizeof(path), "%s/rows_checked", dir);
	write_file(path, input, 2 + mlen + len);

	mlen = rcq_format_meta(meta, sizeof(meta), RCQ_KIND_JSON, json, strlen(json));
	input[1] = (unsigned char) mlen;
	memcpy(input + 2, meta, mlen);
	memcpy(input + 2 + mlen, json, strlen(json));
	snprintf(path, sizeof(path), "%s/json_checked", dir);
	write_file(path, input, 2 + mlen + strlen(json));
	return 0;
}
