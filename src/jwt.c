/*
 * jwt.c
 *		Verification of HS256 JSON Web Tokens, and the small non-throwing JSON
 *		helpers it and the identity code share.
 *
 * A token is accepted only if its header's alg is exactly "HS256" (no
 * "none", no other algorithm, no "crit" extensions), its signature is the
 * HMAC-SHA256 of "header.payload" under the secret (PostgreSQL's own
 * common/hmac, compared in constant time), it carries a numeric "exp" in
 * the future and any "nbf" in the past, and its "sub" is a uuid.  Every
 * failure is reported the same way, as false: callers must not tell a user
 * which check failed.
 *
 * JSON is parsed with the backend's pg_parse_json, which reports malformed
 * input as a return code rather than an error.  Its only throwing path is a
 * stack-depth check on deep nesting, so inputs are first scanned for their
 * nesting depth.
 */
#include "dalgo.h"

#include <math.h>

#include "common/cryptohash.h"
#include "common/hmac.h"
#include "common/jsonapi.h"
#include "common/sha2.h"
#include "mb/pg_wchar.h"
#include "utils/timestamp.h"

/* Tokens and JSON documents larger than this are refused outright. */
#define DALGO_MAX_TOKEN_LEN 16384
#define DALGO_MAX_JSON_DEPTH 32

typedef struct TopFieldsState
{
	int			depth;			/* current nesting depth */
	bool		top_is_object;
	int			nfields;
	const char *const *names;
	char	  **values;
	bool	   *is_string;
	int		   *counts;
	int			pending;		/* field whose value comes next, or -1 */
} TopFieldsState;

/* Return true if json nests objects and arrays at most max_depth deep. */
bool
dalgo_json_depth_ok(const char *json, size_t len, int max_depth)
{
	int			depth = 0;
	bool		in_string = false;
	bool		escaped = false;

	for (size_t i = 0; i < len; i++)
	{
		char		c = json[i];

		if (in_string)
		{
			if (escaped)
				escaped = false;
			else if (c == '\\')
				escaped = true;
			else if (c == '"')
				in_string = false;
		}
		else if (c == '"')
			in_string = true;
		else if (c == '{' || c == '[')
		{
			if (++depth > max_depth)
				return false;
		}
		else if (c == '}' || c == ']')
			depth--;
	}
	return true;
}

/* JSON callback: an object starts. */
static void
top_fields_object_start(void *state)
{
	TopFieldsState *st = (TopFieldsState *) state;

	if (st->depth == 0)
		st->top_is_object = true;
	st->pending = -1;
	st->depth++;
}

/* JSON callback: an object or array ends. */
static void
top_fields_end(void *state)
{
	((TopFieldsState *) state)->depth--;
}

/* JSON callback: an array starts (a wanted field with an array value stays unset). */
static void
top_fields_array_start(void *state)
{
	TopFieldsState *st = (TopFieldsState *) state;

	st->pending = -1;
	st->depth++;
}

/* JSON callback: a field name; remember it if it is a wanted top-level field. */
static void
top_fields_field_start(void *state, char *fname, bool isnull)
{
	TopFieldsState *st = (TopFieldsState *) state;

	st->pending = -1;
	if (st->depth != 1)
		return;
	for (int i = 0; i < st->nfields; i++)
	{
		if (strcmp(fname, st->names[i]) == 0)
		{
			st->counts[i]++;
			st->pending = i;
			break;
		}
	}
}

/* JSON callback: a scalar; store it if it is the value of a wanted field. */
static void
top_fields_scalar(void *state, char *token, JsonTokenType tokentype)
{
	TopFieldsState *st = (TopFieldsState *) state;

	if (st->pending >= 0 && st->depth == 1)
	{
		st->values[st->pending] = token;
		st->is_string[st->pending] = (tokentype == JSON_TOKEN_STRING);
	}
	st->pending = -1;
}

/*
 * Extract top-level scalar fields of a JSON object without raising errors.
 *
 * values[i] receives the scalar text of names[i] (NULL when absent or not a
 * scalar; JSON null comes back as "null" with is_string false).  Returns
 * false if json is not a well-formed object, is nested too deeply, or names
 * a wanted field twice.
 */
bool
dalgo_json_top_fields(const char *json, size_t len, int nfields,
					  const char *const *names, char **values, bool *is_string)
{
	JsonLexContext *lex;
	JsonSemAction sem;
	TopFieldsState st;

	if (len > DALGO_MAX_TOKEN_LEN || !dalgo_json_depth_ok(json, len, DALGO_MAX_JSON_DEPTH))
		return false;

	memset(&st, 0, sizeof(st));
	st.nfields = nfields;
	st.names = names;
	st.values = values;
	st.is_string = is_string;
	st.counts = palloc0(sizeof(int) * nfields);
	st.pending = -1;
	for (int i = 0; i < nfields; i++)
	{
		values[i] = NULL;
		is_string[i] = false;
	}

	memset(&sem, 0, sizeof(sem));
	sem.semstate = &st;
	sem.object_start = top_fields_object_start;
	sem.object_end = top_fields_end;
	sem.array_start = top_fields_array_start;
	sem.array_end = top_fields_end;
	sem.object_field_start = top_fields_field_start;
	sem.scalar = top_fields_scalar;

	lex = makeJsonLexContextCstringLen(unconstify(char *, json), (int) len,
									   GetDatabaseEncoding(), true);
	if (pg_parse_json(lex, &sem) != JSON_SUCCESS || !st.top_is_object)
		return false;
	for (int i = 0; i < nfields; i++)
		if (st.counts[i] > 1)
			return false;
	return true;
}

/* Decode unpadded base64url; returns the length, or -1 for invalid input. */
static int
base64url_decode(const char *src, int len, uint8 *dst)
{
	uint32		acc = 0;
	int			bits = 0;
	int			out = 0;

	if (len % 4 == 1)
		return -1;
	for (int i = 0; i < len; i++)
	{
		char		c = src[i];
		int			v;

		if (c >= 'A' && c <= 'Z')
			v = c - 'A';
		else if (c >= 'a' && c <= 'z')
			v = c - 'a' + 26;
		else if (c >= '0' && c <= '9')
			v = c - '0' + 52;
		else if (c == '-')
			v = 62;
		else if (c == '_')
			v = 63;
		else
			return -1;
		acc = (acc << 6) | (uint32) v;
		bits += 6;
		if (bits >= 8)
		{
			bits -= 8;
			dst[out++] = (uint8) ((acc >> bits) & 0xFF);
		}
	}
	/* Leftover bits must be zero, so every token has one encoding. */
	if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
		return -1;
	return out;
}

/* Decode one base64url segment into a NUL-terminated palloc'd buffer. */
static char *
decode_segment(const char *src, int len, int *outlen)
{
	char	   *buf = palloc(len * 3 / 4 + 2);
	int			n = base64url_decode(src, len, (uint8 *) buf);

	if (n < 0)
		return NULL;
	buf[n] = '\0';
	*outlen = n;
	return buf;
}

/* Compare two buffers in time independent of where they differ. */
static bool
constant_time_equal(const uint8 *a, const uint8 *b, size_t len)
{
	volatile uint8 diff = 0;

	for (size_t i = 0; i < len; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

/* Parse a JSON NumericDate (seconds since the epoch); false if not a finite number. */
static bool
parse_numeric_date(const char *token, bool is_string, double *result)
{
	char	   *end;

	if (token == NULL || is_string || strcmp(token, "null") == 0 ||
		strcmp(token, "true") == 0 || strcmp(token, "false") == 0)
		return false;
	errno = 0;
	*result = strtod(token, &end);
	return errno == 0 && *end == '\0' && isfinite(*result);
}

/* Compute HMAC-SHA256(secret, data) into mac. */
static void
hmac_sha256(const char *secret, const char *data, size_t datalen, uint8 *mac)
{
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);

	if (ctx == NULL)
		elog(ERROR, "out of memory creating an HMAC context");
	if (pg_hmac_init(ctx, (const uint8 *) secret, strlen(secret)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) data, datalen) < 0 ||
		pg_hmac_final(ctx, mac, PG_SHA256_DIGEST_LENGTH) < 0)
	{
		const char *msg = pg_hmac_error(ctx);

		pg_hmac_free(ctx);
		elog(ERROR, "could not compute HMAC-SHA256: %s", msg);
	}
	pg_hmac_free(ctx);
}

/*
 * Verify an HS256 token under secret; on success store its subject.
 * Returns false on any failure, without saying which.
 */
bool
dalgo_jwt_verify_hs256(const char *token, const char *secret, pg_uuid_t *subject)
{
	static const char *const header_fields[] = {"alg", "crit"};
	static const char *const claim_fields[] = {"sub", "exp", "nbf"};
	const char *dot1;
	const char *dot2;
	size_t		toklen;
	char	   *header;
	char	   *payload;
	char	   *sig;
	int			header_len;
	int			payload_len;
	int			sig_len;
	uint8		mac[PG_SHA256_DIGEST_LENGTH];
	char	   *hvalues[2];
	bool		hstring[2];
	char	   *cvalues[3];
	bool		cstring[3];
	double		exp;
	double		nbf;
	double		now;

	if (token == NULL || secret == NULL || secret[0] == '\0')
		return false;
	toklen = strlen(token);
	if (toklen > DALGO_MAX_TOKEN_LEN)
		return false;
	dot1 = strchr(token, '.');
	if (dot1 == NULL)
		return false;
	dot2 = strchr(dot1 + 1, '.');
	if (dot2 == NULL || strchr(dot2 + 1, '.') != NULL)
		return false;

	header = decode_segment(token, dot1 - token, &header_len);
	payload = decode_segment(dot1 + 1, dot2 - dot1 - 1, &payload_len);
	sig = decode_segment(dot2 + 1, token + toklen - dot2 - 1, &sig_len);
	if (header == NULL || payload == NULL || sig == NULL ||
		sig_len != PG_SHA256_DIGEST_LENGTH)
		return false;

	/* The signature first: nothing of an unsigned token is trusted. */
	hmac_sha256(secret, token, dot2 - token, mac);
	if (!constant_time_equal(mac, (const uint8 *) sig, PG_SHA256_DIGEST_LENGTH))
		return false;

	if (!dalgo_json_top_fields(header, header_len, 2, header_fields, hvalues, hstring))
		return false;
	if (hvalues[0] == NULL || !hstring[0] || strcmp(hvalues[0], "HS256") != 0)
		return false;
	if (hvalues[1] != NULL)
		return false;

	if (!dalgo_json_top_fields(payload, payload_len, 3, claim_fields, cvalues, cstring))
		return false;
	if (cvalues[0] == NULL || !cstring[0] ||
		!dalgo_parse_uuid(cvalues[0], strlen(cvalues[0]), subject))
		return false;

	now = (double) timestamptz_to_time_t(GetCurrentTimestamp());
	if (!parse_numeric_date(cvalues[1], cstring[1], &exp) || now >= exp)
		return false;
	if (cvalues[2] != NULL &&
		(!parse_numeric_date(cvalues[2], cstring[2], &nbf) || now < nbf))
		return false;
	return true;
}
