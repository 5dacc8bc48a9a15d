/*
 * jwt.c
 *		Verification of HS256 JSON Web Tokens, and the small non-throwing JSON
 *		helpers it and the identity code share.
 *
 * A token is accepted only if its header's alg is exactly "HS256" (no
 * "none", no other algorithm, no "crit" extensions), its signature is the
 * HMAC-SHA256 of "header.payload" under the secret (PostgreSQL's own
 * common/hmac, compared in constant time), it carries a numeric "exp" in
 * the future and any "nbf" in the past, and its "sub" is a uuid.  The
 * header must not carry "crit" at all, whatever its value.  When
 * dalgo.jwt_issuer is set, "iss" must equal it; when dalgo.jwt_audience is
 * set, "aud" (a string or an array of strings) must name it.  Every failure
 * is reported the same way, as false: callers must not tell a user which
 * check failed.
 *
 * JSON is parsed with the backend's pg_parse_json, which reports malformed
 * input as a return code rather than an error.  It has two throwing paths:
 * a stack-depth check on deep nesting, so inputs are first scanned for
 * their nesting depth; and the conversion of a \u escape to the server
 * encoding, which fails in a database that is not UTF-8 for characters the
 * encoding lacks, so there escapes of non-ASCII characters are first
 * replaced by \u0001 (no name or value dalgo compares can contain it).
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
	DalgoJsonField *fields;
	int			pending;		/* field whose value comes next, or -1 */
	int			in_array;		/* field whose array value is being read, or -1 */
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

/* JSON callback: an object starts (inside a wanted array, a non-string element). */
static void
top_fields_object_start(void *state)
{
	TopFieldsState *st = (TopFieldsState *) state;

	if (st->depth == 0)
		st->top_is_object = true;
	if (st->in_array >= 0 && st->depth == 2)
		st->fields[st->in_array].elements_ok = false;
	st->pending = -1;
	st->depth++;
}

/* JSON callback: an object or array ends. */
static void
top_fields_end(void *state)
{
	TopFieldsState *st = (TopFieldsState *) state;

	st->depth--;
	if (st->depth == 1)
		st->in_array = -1;
}

/* JSON callback: an array starts; the value of a wanted field is read element by element. */
static void
top_fields_array_start(void *state)
{
	TopFieldsState *st = (TopFieldsState *) state;

	if (st->pending >= 0 && st->depth == 1)
	{
		st->fields[st->pending].is_array = true;
		st->fields[st->pending].elements_ok = true;
		st->in_array = st->pending;
	}
	else if (st->in_array >= 0 && st->depth == 2)
		st->fields[st->in_array].elements_ok = false;
	st->pending = -1;
	st->depth++;
}

/* JSON callback: a field name; remember it if it is a wanted top-level field. */
static void
top_fields_field_start(void *state, char *fname, bool isnull)
{
	TopFieldsState *st = (TopFieldsState *) state;

	st->pending = -1;
	if (st->depth != 1 || fname == NULL)
		return;
	for (int i = 0; i < st->nfields; i++)
	{
		if (strcmp(fname, st->names[i]) == 0)
		{
			st->fields[i].count++;
			st->pending = i;
			break;
		}
	}
}

/* JSON callback: a scalar; store it if it is the value or an element of a wanted field. */
static void
top_fields_scalar(void *state, char *token, JsonTokenType tokentype)
{
	TopFieldsState *st = (TopFieldsState *) state;

	if (st->pending >= 0 && st->depth == 1)
	{
		st->fields[st->pending].value = token;
		st->fields[st->pending].is_string = (tokentype == JSON_TOKEN_STRING);
	}
	else if (st->in_array >= 0 && st->depth == 2)
	{
		DalgoJsonField *f = &st->fields[st->in_array];

		if (tokentype == JSON_TOKEN_STRING && token != NULL)
			f->elements = lappend(f->elements, token);
		else
			f->elements_ok = false;
	}
	st->pending = -1;
}

/*
 * In a database that is not UTF-8, return a copy of json in which every
 * \u escape of a non-ASCII character (a surrogate pair counts as one) is
 * \u0001, so that the parser never has to convert it to the server
 * encoding, which raises an error for characters the encoding lacks.
 * Lone surrogates and malformed escapes are left for the parser to refuse.
 * Returns json itself when nothing needs replacing.
 */
static const char *
ascii_escapes_only(const char *json, size_t len, size_t *newlen)
{
	StringInfoData buf;
	bool		in_string = false;
	bool		changed = false;

	*newlen = len;
	if (GetDatabaseEncoding() == PG_UTF8 || memchr(json, '\\', len) == NULL)
		return json;

	initStringInfo(&buf);
	for (size_t i = 0; i < len; i++)
	{
		char		c = json[i];

		if (!in_string)
		{
			if (c == '"')
				in_string = true;
			appendStringInfoChar(&buf, c);
			continue;
		}
		if (c == '"')
		{
			in_string = false;
			appendStringInfoChar(&buf, c);
			continue;
		}
		if (c != '\\' || i + 1 >= len)
		{
			appendStringInfoChar(&buf, c);
			continue;
		}
		if (json[i + 1] == 'u' && i + 6 <= len)
		{
			int			code = 0;
			bool		hex = true;

			for (int k = 2; k < 6; k++)
			{
				int			v = dalgo_hex_value(json[i + k]);

				if (v < 0)
					hex = false;
				code = (code << 4) | Max(v, 0);
			}
			if (hex && code >= 0x80 && (code < 0xD800 || code > 0xDFFF))
			{
				appendStringInfoString(&buf, "\\u0001");
				i += 5;
				changed = true;
				continue;
			}
			if (hex && code >= 0xD800 && code <= 0xDBFF && i + 12 <= len &&
				json[i + 6] == '\\' && json[i + 7] == 'u')
			{
				int			low = 0;
				bool		lowhex = true;

				for (int k = 8; k < 12; k++)
				{
					int			v = dalgo_hex_value(json[i + k]);

					if (v < 0)
						lowhex = false;
					low = (low << 4) | Max(v, 0);
				}
				if (lowhex && low >= 0xDC00 && low <= 0xDFFF)
				{
					appendStringInfoString(&buf, "\\u0001");
					i += 11;
					changed = true;
					continue;
				}
			}
		}
		/* Any other escape: copy it whole, so an escaped backslash stays one. */
		appendStringInfoChar(&buf, c);
		appendStringInfoChar(&buf, json[i + 1]);
		i++;
	}
	if (!changed)
	{
		pfree(buf.data);
		return json;
	}
	*newlen = buf.len;
	return buf.data;
}

/*
 * Read top-level fields of a JSON object without raising errors.
 *
 * fields[i] describes names[i]: how often it appears, its scalar text
 * (JSON null comes back as "null" with is_string false), or for an array
 * its string elements.  Returns false if json is not a well-formed object
 * or is nested too deeply.
 */
bool
dalgo_json_fields(const char *json, size_t len, int nfields,
				  const char *const *names, DalgoJsonField *fields)
{
	JsonLexContext *lex;
	JsonSemAction sem;
	TopFieldsState st;

	memset(fields, 0, sizeof(DalgoJsonField) * nfields);
	if (len > DALGO_MAX_TOKEN_LEN || !dalgo_json_depth_ok(json, len, DALGO_MAX_JSON_DEPTH))
		return false;
	json = ascii_escapes_only(json, len, &len);

	memset(&st, 0, sizeof(st));
	st.nfields = nfields;
	st.names = names;
	st.fields = fields;
	st.pending = -1;
	st.in_array = -1;

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
	return pg_parse_json(lex, &sem) == JSON_SUCCESS && st.top_is_object;
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
	DalgoJsonField *fields = palloc(sizeof(DalgoJsonField) * nfields);
	bool		ok = dalgo_json_fields(json, len, nfields, names, fields);

	for (int i = 0; i < nfields; i++)
	{
		values[i] = ok ? fields[i].value : NULL;
		is_string[i] = ok && fields[i].is_string;
		if (fields[i].count > 1)
			ok = false;
	}
	pfree(fields);
	return ok;
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

/* True if an aud claim (a string, or an array of strings) names audience. */
static bool
audience_matches(const DalgoJsonField *aud, const char *audience)
{
	ListCell   *lc;

	if (aud->count != 1)
		return false;
	if (aud->is_string)
		return aud->value != NULL && strcmp(aud->value, audience) == 0;
	if (!aud->is_array || !aud->elements_ok)
		return false;
	foreach(lc, aud->elements)
	{
		if (strcmp((const char *) lfirst(lc), audience) == 0)
			return true;
	}
	return false;
}

/*
 * Verify an HS256 token under secret; on success store its subject.
 * audience and issuer, when not NULL or empty, must be named by the
 * token's aud and iss claims.  Returns false on any failure, without
 * saying which.
 */
bool
dalgo_jwt_verify_hs256(const char *token, const char *secret, const char *audience,
					   const char *issuer, pg_uuid_t *subject)
{
	static const char *const header_fields[] = {"alg", "crit"};
	static const char *const claim_fields[] = {"sub", "exp", "nbf", "aud", "iss"};
	enum
	{
		H_ALG, H_CRIT, H_N
	};
	enum
	{
		C_SUB, C_EXP, C_NBF, C_AUD, C_ISS, C_N
	};
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
	DalgoJsonField h[H_N];
	DalgoJsonField c[C_N];
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

	/* Header: alg exactly HS256, once; no crit in any form (array, object, null, ...). */
	if (!dalgo_json_fields(header, header_len, H_N, header_fields, h))
		return false;
	if (h[H_ALG].count != 1 || h[H_ALG].value == NULL || !h[H_ALG].is_string ||
		strcmp(h[H_ALG].value, "HS256") != 0)
		return false;
	if (h[H_CRIT].count != 0)
		return false;

	/* Claims: each wanted claim at most once; sub a uuid. */
	if (!dalgo_json_fields(payload, payload_len, C_N, claim_fields, c))
		return false;
	for (int i = 0; i < C_N; i++)
		if (c[i].count > 1)
			return false;
	if (c[C_SUB].value == NULL || !c[C_SUB].is_string ||
		!dalgo_parse_uuid(c[C_SUB].value, strlen(c[C_SUB].value), subject))
		return false;

	now = (double) timestamptz_to_time_t(GetCurrentTimestamp());
	if (!parse_numeric_date(c[C_EXP].value, c[C_EXP].is_string, &exp) || now >= exp)
		return false;
	if (c[C_NBF].count > 0 &&
		(!parse_numeric_date(c[C_NBF].value, c[C_NBF].is_string, &nbf) || now < nbf))
		return false;

	if (issuer != NULL && issuer[0] != '\0' &&
		(c[C_ISS].value == NULL || !c[C_ISS].is_string || strcmp(c[C_ISS].value, issuer) != 0))
		return false;
	if (audience != NULL && audience[0] != '\0' && !audience_matches(&c[C_AUD], audience))
		return false;
	return true;
}
