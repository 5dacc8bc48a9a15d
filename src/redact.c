/*
 * redact.c
 *		The one redaction of secrets that every part of dalgo shares.
 *
 * Two rules:
 *
 *	- A json object key names a secret when, compared case-insensitively and
 *	  with camelCase, '-', '.' and ' ' read as '_' (so "apiKey", "API-KEY" and
 *	  "api_key" are one name), it is one of password, passwd, pwd, pass,
 *	  passphrase, secret, token, api_key, apikey, access_token, refresh_token,
 *	  private_key, client_secret, dsn, connection_string, credentials,
 *	  credential, authorization, cookie; or ends in _secret, _key, _token,
 *	  _password, _passwd, _pwd, _passphrase, _credential(s) (and their
 *	  plurals); or contains password, passwd or secret anywhere.  Its whole
 *	  value, object or array included, becomes "[redacted]".
 *
 *	- Inside any string: the user information of a URL (the "user:pass"
 *	  or "token" before the '@' of scheme://user:pass@host), the value of a key=value pair whose key names a
 *	  secret (query strings, libpq conninfo: password=***), and the
 *	  credential after "Bearer " become ***.
 *
 * dalgo.audit_trigger() uses both for the audit trail; dalgo.redact(jsonb)
 * and dalgo.redact(text) give SQL the same rules.
 */
#include "dalgo.h"

#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

PG_FUNCTION_INFO_V1(dalgo_redact_jsonb_sql);
PG_FUNCTION_INFO_V1(dalgo_redact_text_sql);

/* Whole (normalized) key names that name a secret. */
static const char *const secret_names[] = {
	"password", "passwd", "pwd", "pass", "passphrase", "secret", "token",
	"api_key", "apikey", "access_token", "refresh_token", "private_key",
	"client_secret", "dsn", "connection_string", "credentials", "credential",
	"authorization", "cookie", NULL
};

/* Endings of (normalized) key names that name a secret. */
static const char *const secret_suffixes[] = {
	"_secret", "_secrets", "_key", "_keys", "_token", "_tokens", "_password",
	"_passwd", "_pwd", "_passphrase", "_credential", "_credentials", NULL
};

/* Words that make any key containing them secret. */
static const char *const secret_words[] = {"password", "passwd", "secret", NULL};

#define REDACTED_URL "***"

/* Normalize a key: lower case, camelCase boundaries and - . space as '_'. */
static char *
normalize_key(const char *key, int len, char *buf, int bufsize, int *outlen)
{
	char	   *out = (2 * len + 1 <= bufsize) ? buf : palloc(2 * len + 1);
	int			n = 0;

	for (int i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) key[i];

		if (c == '-' || c == '.' || c == ' ')
			c = '_';
		else if (c >= 'A' && c <= 'Z')
		{
			if (i > 0 && ((key[i - 1] >= 'a' && key[i - 1] <= 'z') ||
						  (key[i - 1] >= '0' && key[i - 1] <= '9')))
				out[n++] = '_';
			c = c - 'A' + 'a';
		}
		out[n++] = (char) c;
	}
	out[n] = '\0';
	*outlen = n;
	return out;
}

/* True if a json object key (or the key of a key=value pair) names a secret. */
bool
dalgo_secret_key(const char *key, int len)
{
	char		buf[128];
	int			n;
	char	   *k;
	bool		result = false;

	if (len <= 0)
		return false;
	k = normalize_key(key, len, buf, sizeof(buf), &n);
	for (int i = 0; !result && secret_names[i] != NULL; i++)
		result = strcmp(k, secret_names[i]) == 0;
	for (int i = 0; !result && secret_suffixes[i] != NULL; i++)
	{
		int			slen = strlen(secret_suffixes[i]);

		result = n > slen && strcmp(k + n - slen, secret_suffixes[i]) == 0;
	}
	for (int i = 0; !result && secret_words[i] != NULL; i++)
		result = strstr(k, secret_words[i]) != NULL;
	if (k != buf)
		pfree(k);
	return result;
}

/* Characters of a URL scheme. */
static inline bool
scheme_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		c == '+' || c == '.' || c == '-';
}

/* Characters of a key in key=value text. */
static inline bool
kv_key_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		c == '_' || c == '-' || c == '.';
}

/* Characters that end a URL's authority or an unquoted value. */
static inline bool
url_end_char(char c)
{
	return c == '/' || c == '?' || c == '#' || c == ' ' || c == '\t' || c == '\n' ||
		c == '\r' || c == '"' || c == '\'' || c == '<' || c == '>' || c == '`';
}

/* Characters that end an unquoted value of key=value text. */
static inline bool
value_end_char(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '&' || c == ';' ||
		c == ',' || c == '"' || c == '\'' || c == '}' || c == ')' || c == '>';
}

/* Replace s[from, to) with *** in the lazily started output. */
static void
replace_range(StringInfo out, bool *started, const char *s, int *copied, int from, int to)
{
	if (!*started)
	{
		initStringInfo(out);
		*started = true;
	}
	appendBinaryStringInfo(out, s + *copied, from - *copied);
	appendStringInfoString(out, REDACTED_URL);
	*copied = to;
}

/* True if s[from, to) is already "***". */
static inline bool
already_redacted(const char *s, int from, int to)
{
	return to - from == 3 && memcmp(s + from, REDACTED_URL, 3) == 0;
}

/*
 * Strip credentials from free text (see the file header): returns a new
 * palloc'd string, and its length in *newlen, or NULL when there was
 * nothing to strip.
 */
char *
dalgo_redact_text(const char *s, int len, int *newlen)
{
	StringInfoData out;
	bool		started = false;
	int			copied = 0;
	int			i = 0;

	while (i < len)
	{
		char		c = s[i];

		/* scheme://userinfo@host */
		if (c == ':' && i + 2 < len && s[i + 1] == '/' && s[i + 2] == '/' &&
			i > 0 && scheme_char(s[i - 1]))
		{
			int			a = i + 3;
			int			e = a;
			int			at = -1;

			while (e < len && !url_end_char(s[e]))
			{
				if (s[e] == '@')
					at = e;
				e++;
			}
			if (at > a && !already_redacted(s, a, at))
				replace_range(&out, &started, s, &copied, a, at);
			i = e;
			continue;
		}
		/* secret_key=value */
		if (c == '=' && i > 0)
		{
			int			ke = i;
			int			ks;
			int			vs = i + 1;
			int			ve;

			while (ke > 0 && s[ke - 1] == ' ')
				ke--;
			ks = ke;
			while (ks > 0 && kv_key_char(s[ks - 1]))
				ks--;
			if (ks < ke && ks >= copied && dalgo_secret_key(s + ks, ke - ks))
			{
				while (vs < len && s[vs] == ' ')
					vs++;
				ve = vs;
				if (vs < len && (s[vs] == '\'' || s[vs] == '"'))
				{
					char		q = s[vs];

					ve = vs + 1;
					while (ve < len && s[ve] != q)
						ve += (s[ve] == '\\' && ve + 1 < len) ? 2 : 1;
					if (ve < len)
						ve++;
				}
				else
					while (ve < len && !value_end_char(s[ve]))
						ve++;
				if (ve > vs && !already_redacted(s, vs, ve))
					replace_range(&out, &started, s, &copied, vs, ve);
				i = ve > i + 1 ? ve : i + 1;
				continue;
			}
		}
		/* Bearer <credential> */
		if ((c == 'b' || c == 'B') && i + 7 < len && pg_strncasecmp(s + i, "bearer ", 7) == 0 &&
			(i == 0 || !kv_key_char(s[i - 1])))
		{
			int			vs = i + 7;
			int			ve;

			while (vs < len && s[vs] == ' ')
				vs++;
			ve = vs;
			while (ve < len && !value_end_char(s[ve]))
				ve++;
			if (ve > vs && !already_redacted(s, vs, ve))
				replace_range(&out, &started, s, &copied, vs, ve);
			i = ve > i ? ve : i + 1;
			continue;
		}
		i++;
	}
	if (!started)
		return NULL;
	appendBinaryStringInfo(&out, s + copied, len - copied);
	*newlen = out.len;
	return out.data;
}

/* Push the string "[redacted]" as a value or element. */
static void
push_redacted(JsonbParseState **st, JsonbIteratorToken tok)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = DALGO_REDACTED;
	v.val.string.len = strlen(DALGO_REDACTED);
	pushJsonbValue(st, tok, &v);
}

/* True if the raw bytes may hold something dalgo_redact_text() strips. */
static bool
may_hold_credentials(const char *p, Size len)
{
	for (Size i = 0; i < len; i++)
	{
		char		c = p[i];

		if (c == '=' || (c == ':' && i + 2 < len && p[i + 1] == '/' && p[i + 2] == '/') ||
			((c == 'b' || c == 'B') && i + 7 <= len && pg_strncasecmp(p + i, "bearer ", 7) == 0))
			return true;
	}
	return false;
}

/*
 * First pass, without building anything: false when the document surely
 * holds nothing to redact (the common case).
 */
static bool
may_need_redaction(Jsonb *in, bool keys)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			newlen;

	if (!may_hold_credentials((const char *) VARDATA(in), VARSIZE(in) - VARHDRSZ))
	{
		if (!keys || JB_ROOT_IS_SCALAR(in))
			return false;
	}
	it = JsonbIteratorInit(&in->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if (tok == WJB_KEY && keys && dalgo_secret_key(v.val.string.val, v.val.string.len))
			return true;
		if ((tok == WJB_VALUE || tok == WJB_ELEM) && v.type == jbvString &&
			dalgo_redact_text(v.val.string.val, v.val.string.len, &newlen) != NULL)
			return true;
	}
	return false;
}

/*
 * Copy a jsonb document: the value of every key that key_hit names (at any
 * depth; none when key_hit is NULL) becomes "[redacted]", and every string
 * that clean rewrites is replaced by what it returns.  Returns the input
 * itself when nothing changed.  The one walker behind dalgo.redact, the
 * audit trail and the toolkit's dalgo.redact_jsonb.
 */
Jsonb *
dalgo_redact_walk(Jsonb *in, DalgoRedactKeyFn key_hit, DalgoRedactStringFn clean, const void *arg)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	JsonbParseState *st = NULL;
	JsonbValue *res = NULL;
	bool		redact_next = false;
	bool		changed = false;
	int			skip_depth = 0;

	it = JsonbIteratorInit(&in->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if (skip_depth > 0)
		{
			if (tok == WJB_BEGIN_OBJECT || tok == WJB_BEGIN_ARRAY)
				skip_depth++;
			else if (tok == WJB_END_OBJECT || tok == WJB_END_ARRAY)
				skip_depth--;
			continue;
		}
		if (redact_next)
		{
			redact_next = false;
			changed = true;
			push_redacted(&st, WJB_VALUE);
			if (tok == WJB_BEGIN_OBJECT || tok == WJB_BEGIN_ARRAY)
				skip_depth = 1;
			continue;
		}
		switch (tok)
		{
			case WJB_KEY:
				redact_next = key_hit != NULL && key_hit(arg, v.val.string.val, v.val.string.len);
				res = pushJsonbValue(&st, tok, &v);
				break;
			case WJB_VALUE:
			case WJB_ELEM:
				if (v.type == jbvString)
				{
					int			newlen;
					char	   *cleaned = clean(arg, v.val.string.val, v.val.string.len, &newlen);

					if (cleaned != NULL)
					{
						v.val.string.val = cleaned;
						v.val.string.len = newlen;
						changed = true;
					}
				}
				res = pushJsonbValue(&st, tok, &v);
				break;
			case WJB_BEGIN_ARRAY:
				res = pushJsonbValue(&st, tok, v.val.array.rawScalar ? &v : NULL);
				break;
			default:
				res = pushJsonbValue(&st, tok, NULL);
				break;
		}
	}
	return changed ? JsonbValueToJsonb(res) : in;
}

/* dalgo_redact_walk's key test for dalgo's own secret names. */
static bool
secret_key_hit(const void *arg, const char *key, int len)
{
	return dalgo_secret_key(key, len);
}

/* dalgo_redact_walk's string cleaner: credentials inside strings stripped. */
static char *
strip_credentials(const void *arg, const char *s, int len, int *newlen)
{
	return dalgo_redact_text(s, len, newlen);
}

/*
 * Copy a jsonb document with secrets redacted: when keys is true, the value
 * of every key naming a secret becomes "[redacted]"; in every case,
 * credentials inside strings are stripped.  Returns the input itself when
 * nothing changed.
 */
Jsonb *
dalgo_redact_jsonb(Jsonb *in, bool keys)
{
	if (!may_need_redaction(in, keys))
		return in;
	return dalgo_redact_walk(in, keys ? secret_key_hit : NULL, strip_credentials, NULL);
}

/* SQL: dalgo.redact(jsonb): the document with secrets redacted. */
Datum
dalgo_redact_jsonb_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_JSONB_P(dalgo_redact_jsonb(PG_GETARG_JSONB_P(0), true));
}

/* SQL: dalgo.redact(text): the text with credentials stripped. */
Datum
dalgo_redact_text_sql(PG_FUNCTION_ARGS)
{
	text	   *in = PG_GETARG_TEXT_PP(0);
	int			newlen;
	char	   *out = dalgo_redact_text(VARDATA_ANY(in), VARSIZE_ANY_EXHDR(in), &newlen);

	if (out == NULL)
		PG_RETURN_TEXT_P(in);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(out, newlen));
}
