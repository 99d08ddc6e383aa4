/*-------------------------------------------------------------------------
 *
 * roundtrip_query_format.c
 *		  Deterministic round trip of the stored format of cached query
 *		  results (src/query_format.c): random row sets through the encoder
 *		  and back through the decoder, random damage to what was encoded.
 *
 * usage: roundtrip_query_format SEED ROWSETS MUTATIONS JSONSETS
 *
 * With a seed, the same row sets, mutations and figures every run.
 *
 * - Row sets: 1 to 1664 columns (random type OIDs, text or binary
 *   encoding), 0 to 1000 rows, cells NULL, empty, short, up to 4 kB, and
 *   now and then one of 64 kB to 1 MB, of random bytes (runs of 0xFF that
 *   look like the NULL marker too).  Each is encoded by the encoder and by
 *   a reference encoder written here from the format's description; the
 *   two must be the same bytes, the meta line must be accepted, and the
 *   decoder must give back every column and cell exactly.
 * - MUTATIONS per row set: one to three of bit flips, changed bytes,
 *   truncation, extension, deleted, inserted and repeated ranges, and
 *   length words of the header and cells set to edge values.  The meta
 *   line of the original must reject every mutated data (length or
 *   CRC-32C), and rcq_rows_open() must either reject it with a status or
 *   accept data whose every cell lies within it (fuzz_walk_cells aborts
 *   otherwise).  Mutated meta lines must be rejected too.
 * - JSON arrays: the encoder's framing against the reference, and their
 *   meta lines.
 * - The encoder refuses, writing nothing, what the decoder would reject.
 * - Golden bytes: the CRC-32C check value, and a hand-written entry.
 *
 * Prints "name value" lines for test/t/070_fuzz.pl, which asserts on them;
 * exits 1 on any mismatch (after printing it), and AddressSanitizer and
 * UBSan abort on any bad access.
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_rows.h"
#include "query_format.h"

/* ---- a seeded generator (splitmix64) --------------------------------------- */

static uint64_t rng_state;

static uint64_t
rng_next(void)
{
	uint64_t	z = (rng_state += 0x9E3779B97F4A7C15ull);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* uniform in [lo, hi] */
static uint64_t
rng_between(uint64_t lo, uint64_t hi)
{
	return lo + rng_next() % (hi - lo + 1);
}

/* true with probability percent / 100 */
static int
rng_percent(unsigned percent)
{
	return rng_next() % 100 < percent;
}

/* ---- figures ---------------------------------------------------------------- */

static struct
{
	uint64_t	rowsets;
	uint64_t	columns;
	uint64_t	cells;
	uint64_t	nulls;
	uint64_t	empty;
	uint64_t	large;
	uint64_t	max_columns;
	uint64_t	zero_rows;
	uint64_t	bytes;
	uint64_t	identical;		/* encoder bytes == reference bytes */
	uint64_t	decoded;		/* decoder gave back every cell */
	uint64_t	meta_ok;
	uint64_t	meta_mutations;
	uint64_t	meta_rejected;
	uint64_t	mutations;
	uint64_t	checksum_rejected;
	uint64_t	length_rejected;	/* of those: by the length */
	uint64_t	rejected;		/* rcq_rows_open() said no */
	uint64_t	within_bounds;	/* accepted, every cell inside */
	uint64_t	json_sets;
	uint64_t	json_identical;
	uint64_t	refusals;
	uint64_t	refused;
	uint64_t	golden;
	uint64_t	golden_ok;
	uint64_t	failures;
} st;

static void
fail(const char *what, uint64_t which)
{
	if (st.failures++ < 20)
		fprintf(stderr, "FAIL: %s (case %llu)\n", what,
				(unsigned long long) which);
}

/* ---- row sets --------------------------------------------------------------- */

static const uint32_t real_types[] = {
	16, 17, 20, 21, 23, 25, 26, 114, 700, 701, 1043, 1082, 1083, 1114, 1184,
	1186, 1700, 2950, 3802
};

/*
 * A random row set; its values live in *arena (freed by the caller with
 * free_rows).
 */
static void
random_rows(FuzzRows *rows, unsigned char **arena)
{
	unsigned	p = (unsigned) rng_between(0, 99);
	uint64_t	ncells;
	uint64_t	i;
	uint64_t	large = UINT64_MAX;
	size_t	   *lens;
	size_t		total = 0;
	size_t		used = 0;
	uint32_t	c;

	if (p < 70)
		rows->ncolumns = (uint32_t) rng_between(1, 8);
	else if (p < 90)
		rows->ncolumns = (uint32_t) rng_between(9, 64);
	else if (p < 98)
		rows->ncolumns = (uint32_t) rng_between(65, 400);
	else
		rows->ncolumns = rng_percent(25) ? RCQ_MAX_COLUMNS :
			(uint32_t) rng_between(1000, RCQ_MAX_COLUMNS);
	p = (unsigned) rng_between(0, 99);
	if (p < 10)
		rows->nrows = 0;
	else if (p < 70)
		rows->nrows = (uint32_t) rng_between(1, 10);
	else if (p < 95)
		rows->nrows = (uint32_t) rng_between(11, 100);
	else
		rows->nrows = (uint32_t) rng_between(101, 1000);
	while ((uint64_t) rows->nrows * rows->ncolumns > 20000)
		rows->nrows /= 2;

	rows->types = malloc(sizeof(uint32_t) * rows->ncolumns);
	rows->encodings = malloc(sizeof(uint32_t) * rows->ncolumns);
	for (c = 0; c < rows->ncolumns; c++)
	{
		rows->types[c] = rng_percent(25) ? (uint32_t) rng_next() :
			real_types[rng_between(0, sizeof(real_types) / sizeof(real_types[0]) - 1)];
		rows->encodings[c] = (uint32_t) rng_between(0, 1);
	}

	ncells = (uint64_t) rows->nrows * rows->ncolumns;
	rows->cells = calloc(ncells ? ncells : 1, sizeof(FuzzCell));
	lens = malloc(sizeof(size_t) * (ncells ? ncells : 1));
	if (ncells > 0 && rng_percent(2))
		large = rng_between(0, ncells - 1);
	for (i = 0; i < ncells; i++)
	{
		p = (unsigned) rng_between(0, 99);
		if (i == large)
			lens[i] = (size_t) rng_between(65536, 1 << 20);
		else if (p < 15)
			lens[i] = SIZE_MAX; /* NULL */
		else if (p < 25)
			lens[i] = 0;
		else if (p < 98)
			lens[i] = (size_t) rng_between(1, 32);
		else
			lens[i] = (size_t) rng_between(33, 4000);
		if (lens[i] != SIZE_MAX)
			total += lens[i];
	}
	*arena = malloc(total ? total : 1);
	for (i = 0; i < ncells; i++)
	{
		size_t		k;

		if (lens[i] == SIZE_MAX)
		{
			rows->cells[i].value = NULL;
			st.nulls++;
			continue;
		}
		rows->cells[i].value = *arena + used;
		rows->cells[i].len = lens[i];
		if (lens[i] == 0)
			st.empty++;
		if (i == large)
			st.large++;
		if (rng_percent(20))
			memset(*arena + used, 0xFF, lens[i]);
		else
			for (k = 0; k < lens[i]; k++)
				(*arena)[used + k] = (unsigned char) rng_next();
		used += lens[i];
	}
	free(lens);
	st.rowsets++;
	st.columns += rows->ncolumns;
	st.cells += ncells;
	if (rows->ncolumns == RCQ_MAX_COLUMNS)
		st.max_columns++;
	if (rows->nrows == 0)
		st.zero_rows++;
}

static void
free_rows(FuzzRows *rows, unsigned char *arena)
{
	free(rows->types);
	free(rows->encodings);
	free(rows->cells);
	free(arena);
}

/* ---- the reference encoder: the format comment of query_format.c ------------- */

static void
ref_u32(FuzzBuf *out, uint32_t v)
{
	unsigned char *p = fuzz_reserve(out, 4);

	p[0] = (unsigned char) (v >> 24);
	p[1] = (unsigned char) (v >> 16);
	p[2] = (unsigned char) (v >> 8);
	p[3] = (unsigned char) v;
}

/*
 * uint32 ncolumns, ncolumns x (uint32 type OID, uint32 encoding), uint32
 * nrows, nrows x ncolumns cells: uint32 length (0xFFFFFFFF = NULL), bytes
 */
static void
reference_encode(const FuzzRows *rows, FuzzBuf *out)
{
	uint64_t	ncells = (uint64_t) rows->nrows * rows->ncolumns;
	uint64_t	i;
	uint32_t	c;

	ref_u32(out, rows->ncolumns);
	for (c = 0; c < rows->ncolumns; c++)
	{
		ref_u32(out, rows->types[c]);
		ref_u32(out, rows->encodings[c]);
	}
	ref_u32(out, rows->nrows);
	for (i = 0; i < ncells; i++)
	{
		if (rows->cells[i].value == NULL)
		{
			ref_u32(out, 0xFFFFFFFFu);
			continue;
		}
		ref_u32(out, (uint32_t) rows->cells[i].len);
		if (rows->cells[i].len > 0)
			memcpy(fuzz_reserve(out, rows->cells[i].len), rows->cells[i].value,
				   rows->cells[i].len);
	}
}

/* an exact-size copy, so AddressSanitizer sees any read past the end */
static unsigned char *
exact_copy(const void *data, size_t len)
{
	unsigned char *copy = malloc(len ? len : 1);

	if (len > 0)
		memcpy(copy, data, len);
	return copy;
}

/* ---- mutations -------------------------------------------------------------- */

/*
 * Offsets of the length words of encoded rows (column count, encodings,
 * row count, each cell's length), from the original's layout.
 */
static size_t *
length_words(const FuzzRows *rows, size_t *nwords)
{
	uint64_t	ncells = (uint64_t) rows->nrows * rows->ncolumns;
	size_t	   *words = malloc(sizeof(size_t) * (2 + rows->ncolumns + ncells));
	size_t		n = 0;
	size_t		pos;
	uint64_t	i;
	uint32_t	c;

	words[n++] = 0;
	for (c = 0; c < rows->ncolumns; c++)
		words[n++] = 4 + (size_t) c * 8 + 4;
	pos = 4 + (size_t) rows->ncolumns * 8;
	words[n++] = pos;
	pos += 4;
	for (i = 0; i < ncells; i++)
	{
		words[n++] = pos;
		pos += 4 + (rows->cells[i].value ? rows->cells[i].len : 0);
	}
	*nwords = n;
	return words;
}

static void
put_be(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char) (v >> 24);
	p[1] = (unsigned char) (v >> 16);
	p[2] = (unsigned char) (v >> 8);
	p[3] = (unsigned char) v;
}

/*
 * One to three random mutations of data into a new exact-size buffer,
 * always different from data.
 */
static unsigned char *
mutate(const unsigned char *data, size_t len, const size_t *words,
	   size_t nwords, size_t *outlen)
{
	size_t		cap = len + 3 * 4096 + 64;
	unsigned char *buf = malloc(cap);
	size_t		cur = len;
	int			nops = (int) rng_between(1, 3);
	int			op;
	unsigned char *result;

	memcpy(buf, data, len);
	for (op = 0; op < nops; op++)
	{
		unsigned	kind = (unsigned) rng_between(0, 7);
		size_t		at = cur ? (size_t) rng_between(0, cur - 1) : 0;
		size_t		n;
		size_t		k;

		if (cur == 0)
			kind = 3;
		switch (kind)
		{
			case 0:				/* flip a bit */
				buf[at] ^= (unsigned char) (1u << rng_between(0, 7));
				break;
			case 1:				/* another byte */
				buf[at] ^= (unsigned char) rng_between(1, 255);
				break;
			case 2:				/* truncate */
				cur = (size_t) rng_between(0, cur - 1);
				break;
			case 3:				/* extend */
				n = (size_t) rng_between(1, 16);
				for (k = 0; k < n; k++)
					buf[cur + k] = (unsigned char) rng_next();
				cur += n;
				break;
			case 4:				/* delete a range */
				n = (size_t) rng_between(1, cur - at < 64 ? cur - at : 64);
				memmove(buf + at, buf + at + n, cur - at - n);
				cur -= n;
				break;
			case 5:				/* insert random bytes */
				n = (size_t) rng_between(1, 16);
				memmove(buf + at + n, buf + at, cur - at);
				for (k = 0; k < n; k++)
					buf[at + k] = (unsigned char) rng_next();
				cur += n;
				break;
			case 6:				/* repeat a range */
				n = (size_t) rng_between(1, cur - at < 4096 ? cur - at : 4096);
				memmove(buf + at + n, buf + at, cur - at);
				cur += n;
				break;
			default:			/* a length word to an edge value */
				{
					size_t		w = words[rng_between(0, nwords - 1)];
					uint32_t	edges[] = {
						0, 1, 3, 4, 7, 8, 0x7FFFFFFFu, 0x80000000u,
						0xFFFFFFFEu, 0xFFFFFFFFu, RCQ_MAX_COLUMNS,
						RCQ_MAX_COLUMNS + 1, 2
					};
					uint32_t	v;

					if (w + 4 > cur)
						break;
					switch (rng_between(0, 3))
					{
						case 0:
							v = edges[rng_between(0, sizeof(edges) / sizeof(edges[0]) - 1)];
							break;
						case 1:	/* one more or less */
							v = (((uint32_t) buf[w] << 24) | ((uint32_t) buf[w + 1] << 16) |
								 ((uint32_t) buf[w + 2] << 8) | buf[w + 3]) +
								(rng_percent(50) ? 1u : 0xFFFFFFFFu);
							break;
						case 2:	/* what is left after it, and one more */
							v = (uint32_t) (cur - w - 4) + (uint32_t) rng_between(0, 1);
							break;
						default:
							v = (uint32_t) rng_next();
							break;
					}
					put_be(buf + w, v);
				}
				break;
		}
	}
	if (cur == len && memcmp(buf, data, len) == 0)
	{
		if (cur > 0)
			buf[rng_between(0, cur - 1)] ^= 0x01;
		else
			buf[cur++] = 0;
	}
	result = exact_copy(buf, cur);
	free(buf);
	*outlen = cur;
	return result;
}

/*
 * A random change to a meta line (into a new exact-size buffer), always
 * different from it.
 */
static char *
mutate_meta(const char *meta, size_t len, size_t *outlen)
{
	char		buf[RCQ_META_MAX * 2 + 16];
	size_t		cur = len;
	size_t		at = (size_t) rng_between(0, len - 1);
	const char *chars = "0123456789abcdefABCDEF /rowsjn";
	char	   *p;
	char	   *result;

	memcpy(buf, meta, len);
	switch (rng_between(0, 8))
	{
		case 0:
			buf[at] ^= (char) (1u << rng_between(0, 7));
			break;
		case 1:
			buf[at] = chars[rng_between(0, strlen(chars) - 1)];
			break;
		case 2:
			cur = (size_t) rng_between(0, len - 1);
			break;
		case 3:
			buf[cur++] = chars[rng_between(0, strlen(chars) - 1)];
			break;
		case 4:				/* insert a character */
			memmove(buf + at + 1, buf + at, cur - at);
			buf[at] = chars[rng_between(0, strlen(chars) - 1)];
			cur++;
			break;
		case 5:				/* an upper-case checksum digit */
			for (p = buf + cur - 1; p > buf + cur - 9; p--)
				if (*p >= 'a' && *p <= 'f')
				{
					*p = (char) (*p - 'a' + 'A');
					break;
				}
			break;
		case 6:				/* a leading zero on the length */
			p = memchr(buf + strlen(RCQ_META_TAG) + 1, ' ', cur - strlen(RCQ_META_TAG) - 1);
			memmove(p + 2, p + 1, (size_t) (buf + cur - (p + 1)));
			p[1] = '0';
			cur++;
			break;
		case 7:				/* the other kind */
			memcpy(buf + strlen(RCQ_META_TAG) + 1, "json", 4);
			break;
		default:			/* another version */
			buf[strlen(RCQ_META_TAG) - 1] = '2';
			break;
	}
	if (cur == len && memcmp(buf, meta, len) == 0)
		buf[at] ^= 0x20;
	result = malloc(cur ? cur : 1);
	memcpy(result, buf, cur);
	*outlen = cur;
	return result;
}

/* ---- the checks ------------------------------------------------------------- */

static void
check_rowset(uint64_t n, unsigned mutations)
{
	FuzzRows	rows;
	unsigned char *arena;
	FuzzBuf		enc = {0};
	FuzzBuf		ref = {0};
	unsigned char *data;
	char		meta[RCQ_META_MAX + 1];
	size_t		metalen;
	RcqKind		kind;
	size_t	   *words;
	size_t		nwords;
	unsigned	m;
	const char *why;

	random_rows(&rows, &arena);
	if (!fuzz_rows_encode(&rows, &enc))
	{
		fail("the encoder refuses a valid row set", n);
		free_rows(&rows, arena);
		return;
	}
	st.bytes += enc.len;
	reference_encode(&rows, &ref);
	if (enc.len == ref.len && memcmp(enc.data, ref.data, enc.len) == 0)
		st.identical++;
	else
		fail("the encoder's bytes differ from the reference encoding", n);

	data = exact_copy(enc.data, enc.len);
	why = fuzz_rows_compare(&rows, data, enc.len);
	if (why == NULL)
		st.decoded++;
	else
		fail(why, n);

	metalen = rcq_format_meta(meta, sizeof(meta), RCQ_KIND_ROWS, data, enc.len);
	if (metalen > 0 && metalen <= RCQ_META_MAX &&
		rcq_check_meta(meta, metalen, data, enc.len, &kind) == RCQ_OK &&
		kind == RCQ_KIND_ROWS)
		st.meta_ok++;
	else
		fail("the meta line is not accepted", n);

	for (m = 0; m < 2; m++)
	{
		size_t		mlen;
		char	   *bad = mutate_meta(meta, metalen, &mlen);

		st.meta_mutations++;
		if (rcq_check_meta(bad, mlen, data, enc.len, &kind) != RCQ_OK ||
			kind != RCQ_KIND_ROWS)
			st.meta_rejected++;
		else
			fail("a mutated meta line is accepted", n);
		free(bad);
	}

	words = length_words(&rows, &nwords);
	for (m = 0; m < mutations; m++)
	{
		size_t		mlen;
		unsigned char *bad = mutate(data, enc.len, words, nwords, &mlen);
		RcqRows		opened;

		st.mutations++;
		switch (rcq_check_meta(meta, metalen, bad, mlen, &kind))
		{
			case RCQ_BAD_LENGTH:
				st.length_rejected++;
				st.checksum_rejected++;
				break;
			case RCQ_BAD_CHECKSUM:
				st.checksum_rejected++;
				break;
			default:
				fail("the meta line accepts mutated data", n);
				break;
		}
		if (rcq_rows_open(bad, mlen, &opened) == RCQ_OK)
		{
			fuzz_walk_cells(&opened, bad, mlen);
			st.within_bounds++;
		}
		else
			st.rejected++;
		free(bad);
	}
	free(words);
	free(data);
	fuzz_buf_free(&enc);
	fuzz_buf_free(&ref);
	free_rows(&rows, arena);
}

static void
check_json(uint64_t n)
{
	uint64_t	nelements = rng_between(0, 50);
	FuzzBuf		enc = {0};
	FuzzBuf		ref = {0};
	RcqEncoder	encoder;
	char		meta[RCQ_META_MAX + 1];
	size_t		metalen;
	RcqKind		kind;
	uint64_t	i;

	rcq_encoder_init(&encoder, fuzz_reserve, &enc);
	rcq_json_begin(&encoder);
	*fuzz_reserve(&ref, 1) = '[';
	for (i = 0; i < nelements; i++)
	{
		size_t		len = (size_t) rng_between(0, 200);
		char	   *element = malloc(len ? len : 1);
		size_t		k;

		for (k = 0; k < len; k++)
			element[k] = (char) rng_between(1, 255);
		rcq_json_element(&encoder, element, len);
		if (i > 0)
			*fuzz_reserve(&ref, 1) = ',';
		if (len > 0)
			memcpy(fuzz_reserve(&ref, len), element, len);
		free(element);
	}
	rcq_json_end(&encoder);
	*fuzz_reserve(&ref, 1) = ']';
	st.json_sets++;
	metalen = rcq_format_meta(meta, sizeof(meta), RCQ_KIND_JSON, enc.data, enc.len);
	if (encoder.len == enc.len && enc.len == ref.len &&
		memcmp(enc.data, ref.data, enc.len) == 0 &&
		rcq_check_meta(meta, metalen, enc.data, enc.len, &kind) == RCQ_OK &&
		kind == RCQ_KIND_JSON)
		st.json_identical++;
	else
		fail("a JSON array differs from the reference or its meta line", n);
	fuzz_buf_free(&enc);
	fuzz_buf_free(&ref);
}

/* the encoder returned false and wrote nothing */
static void
expect_refused(bool result, const RcqEncoder *enc, const FuzzBuf *buf,
			   size_t before, const char *what)
{
	st.refusals++;
	if (!result && enc->len == before && buf->len == before)
		st.refused++;
	else
		fail(what, st.refusals);
}

static void
check_refusals(void)
{
	static uint32_t types[RCQ_MAX_COLUMNS + 1];
	static uint32_t encodings[RCQ_MAX_COLUMNS + 1];
	uint32_t	bad_encoding[2] = {RCQ_ENCODING_TEXT, 2};
	FuzzBuf		buf = {0};
	RcqEncoder	enc;
	size_t		before;

	rcq_encoder_init(&enc, fuzz_reserve, &buf);
	expect_refused(rcq_encode_header(&enc, 0, types, encodings, 1), &enc, &buf, 0,
				   "no columns");
	expect_refused(rcq_encode_header(&enc, RCQ_MAX_COLUMNS + 1, types, encodings, 1),
				   &enc, &buf, 0, "too many columns");
	expect_refused(rcq_encode_header(&enc, 2, types, bad_encoding, 1), &enc, &buf, 0,
				   "an unknown encoding");
	expect_refused(rcq_encode_header(&enc, 1, types, encodings, (uint64_t) UINT32_MAX + 1),
				   &enc, &buf, 0, "more rows than a uint32");
	expect_refused(rcq_encode_cell(&enc, "x", 1), &enc, &buf, 0,
				   "a cell before the header");
	expect_refused(rcq_encode_finish(&enc), &enc, &buf, 0,
				   "finished without a header");

	/* one column, one row */
	if (!rcq_encode_header(&enc, 1, types, encodings, 1))
		fail("a header of one column and one row is refused", 0);
	before = buf.len;
	expect_refused(rcq_encode_header(&enc, 1, types, encodings, 1), &enc, &buf, before,
				   "a second header");
	expect_refused(rcq_encode_finish(&enc), &enc, &buf, before,
				   "finished with a cell missing");
	/* never read: refused on its length */
	expect_refused(rcq_encode_cell(&enc, "x", (size_t) RCQ_NULL_LENGTH), &enc, &buf,
				   before, "a cell as long as the NULL marker");
	if (!rcq_encode_cell(&enc, "x", 1) || !rcq_encode_finish(&enc))
		fail("the one cell is refused", 0);
	before = buf.len;
	expect_refused(rcq_encode_cell(&enc, NULL, 0), &enc, &buf, before,
				   "more cells than the header announced");
	fuzz_buf_free(&buf);

	/* the largest header the decoder accepts */
	rcq_encoder_init(&enc, fuzz_reserve, &buf);
	st.refusals++;
	if (rcq_encode_header(&enc, RCQ_MAX_COLUMNS, types, encodings, 0) &&
		rcq_encode_finish(&enc))
	{
		RcqRows		rows;

		if (rcq_rows_open(buf.data, buf.len, &rows) == RCQ_OK &&
			rows.ncolumns == RCQ_MAX_COLUMNS && rows.nrows == 0)
			st.refused++;		/* counted as a case passed */
		else
			fail("the largest header does not decode", st.refusals);
	}
	else
		fail("the largest header is refused", st.refusals);
	fuzz_buf_free(&buf);
}

/*
 * Bytes written by hand from the format's description: int4 (binary) and
 * text columns; rows (42, 'acme') and (NULL, '').  The meta line was
 * computed once and is pinned, as is the standard CRC-32C check value.
 */
static void
check_golden(void)
{
	static const unsigned char expected[] = {
		0, 0, 0, 2,
		0, 0, 0, 23, 0, 0, 0, 1,
		0, 0, 0, 25, 0, 0, 0, 0,
		0, 0, 0, 2,
		0, 0, 0, 4, 0, 0, 0, 42,
		0, 0, 0, 4, 'a', 'c', 'm', 'e',
		0xFF, 0xFF, 0xFF, 0xFF,
		0, 0, 0, 0
	};
	static const char expected_meta[] = "redis_cache/1 rows 48 66531cb1";
	static const char json[] = "[{\"id\":42},{\"id\":null}]";
	static const char expected_json_meta[] = "redis_cache/1 json 23 c239acb1";
	static const unsigned char v42[] = {0, 0, 0, 42};
	uint32_t	types[2] = {23, 25};
	uint32_t	encodings[2] = {RCQ_ENCODING_BINARY, RCQ_ENCODING_TEXT};
	FuzzCell	cells[4] = {
		{v42, 4}, {(const unsigned char *) "acme", 4},
		{NULL, 0}, {(const unsigned char *) "", 0}
	};
	FuzzRows	rows = {2, 2, types, encodings, cells};
	FuzzBuf		buf = {0};
	RcqEncoder	enc;
	char		meta[RCQ_META_MAX + 1];

	st.golden++;
	if (rcq_crc32c("123456789", 9) == 0xE3069283u)
		st.golden_ok++;
	else
		fail("CRC-32C of \"123456789\" is not e3069283", 0);

	st.golden++;
	rcq_format_meta(meta, sizeof(meta), RCQ_KIND_ROWS, expected, sizeof(expected));
	printf("golden_meta %s\n", meta);
	if (fuzz_rows_encode(&rows, &buf) && buf.len == sizeof(expected) &&
		memcmp(buf.data, expected, sizeof(expected)) == 0 &&
		strcmp(meta, expected_meta) == 0)
		st.golden_ok++;
	else
		fail("the hand-written rows entry", 0);
	fuzz_buf_free(&buf);

	st.golden++;
	rcq_encoder_init(&enc, fuzz_reserve, &buf);
	rcq_json_begin(&enc);
	rcq_json_element(&enc, "{\"id\":42}", 9);
	rcq_json_element(&enc, "{\"id\":null}", 11);
	rcq_json_end(&enc);
	rcq_format_meta(meta, sizeof(meta), RCQ_KIND_JSON, buf.data, buf.len);
	printf("golden_json_meta %s\n", meta);
	if (buf.len == strlen(json) && memcmp(buf.data, json, buf.len) == 0 &&
		strcmp(meta, expected_json_meta) == 0)
		st.golden_ok++;
	else
		fail("the hand-written JSON entry", 0);
	fuzz_buf_free(&buf);
}

int
main(int argc, char **argv)
{
	uint64_t	seed;
	uint64_t	rowsets;
	unsigned	mutations;
	uint64_t	jsonsets;
	uint64_t	i;

	if (argc != 5)
	{
		fprintf(stderr, "usage: %s SEED ROWSETS MUTATIONS JSONSETS\n", argv[0]);
		return 2;
	}
	seed = strtoull(argv[1], NULL, 10);
	rowsets = strtoull(argv[2], NULL, 10);
	mutations = (unsigned) strtoul(argv[3], NULL, 10);
	jsonsets = strtoull(argv[4], NULL, 10);
	rng_state = seed;

	check_golden();
	check_refusals();
	for (i = 0; i < rowsets; i++)
		check_rowset(i, mutations);
	for (i = 0; i < jsonsets; i++)
		check_json(i);

#define FIGURE(name) printf("%s %llu\n", #name, (unsigned long long) st.name)
	printf("seed %llu\n", (unsigned long long) seed);
	FIGURE(rowsets);
	FIGURE(columns);
	FIGURE(cells);
	FIGURE(nulls);
	FIGURE(empty);
	FIGURE(large);
	FIGURE(max_columns);
	FIGURE(zero_rows);
	FIGURE(bytes);
	FIGURE(identical);
	FIGURE(decoded);
	FIGURE(meta_ok);
	FIGURE(meta_mutations);
	FIGURE(meta_rejected);
	FIGURE(mutations);
	FIGURE(checksum_rejected);
	FIGURE(length_rejected);
	FIGURE(rejected);
	FIGURE(within_bounds);
	FIGURE(json_sets);
	FIGURE(json_identical);
	FIGURE(refusals);
	FIGURE(refused);
	FIGURE(golden);
	FIGURE(golden_ok);
	FIGURE(failures);
	return st.failures == 0 ? 0 : 1;
}
