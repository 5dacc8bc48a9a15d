/*
 * loading.c
 *		Type inference for synced tables: which of dalgo's column types a text
 *		value is certain to convert to.  dalgo_internal.finish_sync() ANDs the
 *		answer over a column and casts the column to the first type left, so
 *		every check here is at least as strict as the type's input function:
 *		a value accepted here never fails the cast.  Anything unusual is
 *		simply not accepted (the column stays text).
 */
#include "dalgo.h"

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(dalgo_value_kinds);

#define KIND_BOOLEAN		0x01
#define KIND_BIGINT			0x02
#define KIND_NUMERIC		0x04
#define KIND_DATE			0x08
#define KIND_TIMESTAMPTZ	0x10
#define KIND_JSONB			0x20

/* True if s[0..n) are n ASCII digits. */
static bool
all_digits(const char *s, int n)
{
	for (int i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

/* The value of n ASCII digits (the caller checked them). */
static int
digits_value(const char *s, int n)
{
	int			v = 0;

	for (int i = 0; i < n; i++)
		v = v * 10 + (s[i] - '0');
	return v;
}

/* True for true/false and t/f (PostgreSQL's own output) in any case; booleanin accepts more. */
static bool
is_boolean(const char *s, int len)
{
	return len == 1 ||
		(len == 4 && pg_strncasecmp(s, "true", 4) == 0) ||
		(len == 5 && pg_strncasecmp(s, "false", 5) == 0);
}

/* An integer without leading zeros ("007" is an identifier, not a number) that fits in int64. */
static bool
is_bigint(const char *s, int len)
{
	const char *p = s;
	const char *limit;
	int			n;

	if (len > 0 && (*p == '-' || *p == '+'))
		p++;
	n = len - (p - s);
	if (n < 1 || n > 19 || !all_digits(p, n) || (n > 1 && p[0] == '0'))
		return false;
	if (n < 19)
		return true;
	limit = (s[0] == '-') ? "9223372036854775808" : "9223372036854775807";
	return memcmp(p, limit, 19) <= 0;
}

/*
 * A plain decimal number: [+-]digits[.digits][e[+-]digits], no leading zero
 * before other digits, an exponent of at most 3 digits (numeric's range is
 * far wider).  NaN and Infinity are not numbers here.
 */
static bool
is_numeric(const char *s, int len)
{
	int			i = 0;
	int			intdigits = 0;
	int			fracdigits = 0;
	int			expdigits = 0;

	if (i < len && (s[i] == '-' || s[i] == '+'))
		i++;
	while (i < len && s[i] >= '0' && s[i] <= '9')
		i++, intdigits++;
	if (intdigits > 1 && s[i - intdigits] == '0')
		return false;
	if (i < len && s[i] == '.')
	{
		i++;
		while (i < len && s[i] >= '0' && s[i] <= '9')
			i++, fracdigits++;
	}
	if (intdigits + fracdigits == 0)
		return false;
	if (i < len && (s[i] == 'e' || s[i] == 'E'))
	{
		i++;
		if (i < len && (s[i] == '-' || s[i] == '+'))
			i++;
		while (i < len && s[i] >= '0' && s[i] <= '9')
			i++, expdigits++;
		if (expdigits < 1 || expdigits > 3)
			return false;
	}
	return i == len;
}

/* YYYY-MM-DD, a real calendar day of the years 1 to 9999. */
static bool
is_date(const char *s, int len)
{
	static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int			y,
				m,
				d;

	if (len != 10 || s[4] != '-' || s[7] != '-' ||
		!all_digits(s, 4) || !all_digits(s + 5, 2) || !all_digits(s + 8, 2))
		return false;
	y = digits_value(s, 4);
	m = digits_value(s + 5, 2);
	d = digits_value(s + 8, 2);
	if (y < 1 || m < 1 || m > 12 || d < 1 || d > mdays[m - 1])
		return false;
	if (m == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
		return false;
	return true;
}

/*
 * ISO 8601: a date, then T or a space, HH:MM[:SS[.fraction]], then an
 * optional Z or +HH[:MM] / -HH[:MM] / +HHMM of at most 14 hours.
 */
static bool
is_timestamptz(const char *s, int len)
{
	int			i = 11;

	if (len < 16 || !is_date(s, 10) || (s[10] != 'T' && s[10] != ' '))
		return false;
	if (!all_digits(s + i, 2) || s[i + 2] != ':' || !all_digits(s + i + 3, 2) ||
		digits_value(s + i, 2) > 23 || digits_value(s + i + 3, 2) > 59)
		return false;
	i += 5;
	if (i < len && s[i] == ':')
	{
		if (i + 3 > len || !all_digits(s + i + 1, 2) || digits_value(s + i + 1, 2) > 59)
			return false;
		i += 3;
		if (i < len && s[i] == '.')
		{
			int			n = 0;

			i++;
			while (i < len && s[i] >= '0' && s[i] <= '9')
				i++, n++;
			if (n < 1 || n > 9)
				return false;
		}
	}
	if (i == len)
		return true;
	if (s[i] == 'Z' && i + 1 == len)
		return true;
	if (s[i] != '+' && s[i] != '-')
		return false;
	i++;
	if (i + 2 > len || !all_digits(s + i, 2) || digits_value(s + i, 2) > 14)
		return false;
	i += 2;
	if (i == len)
		return true;
	if (s[i] == ':')
		i++;
	return i + 2 == len && all_digits(s + i, 2) && digits_value(s + i, 2) <= 59;
}

/*
 * A JSON object or array (a scalar stays what it is), without \u0000, which
 * jsonb refuses, and nested at most JSON_MAX_DEPTH deep: a deeper value
 * would exceed the stack in the parser, and stays text.
 */
#define JSON_MAX_DEPTH 1000
static bool
is_json_container(char *s, int len)
{
	JsonLexContext *lex;
	bool		ok;

	if (len < 2 || (s[0] != '{' && s[0] != '[') || memmem(s, len, "\\u0000", 6) != NULL ||
		!dalgo_json_depth_ok(s, len, JSON_MAX_DEPTH))
		return false;
	lex = makeJsonLexContextCstringLen(s, len, GetDatabaseEncoding(), false);
	ok = pg_parse_json(lex, &nullSemAction) == JSON_SUCCESS;
	pfree(lex);
	return ok;
}

/*
 * SQL: dalgo_internal.value_kinds(text) RETURNS integer: a bit mask of the
 * types the value converts to for certain (1 boolean, 2 bigint, 4 numeric,
 * 8 date, 16 timestamptz, 32 jsonb); NULL for NULL and the empty string, so
 * that bit_and() over a column ignores missing values.
 */
Datum
dalgo_value_kinds(PG_FUNCTION_ARGS)
{
	text	   *t;
	char	   *s;
	int			len;
	int32		kinds = 0;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	t = PG_GETARG_TEXT_PP(0);
	s = VARDATA_ANY(t);
	len = VARSIZE_ANY_EXHDR(t);
	if (len == 0)
		PG_RETURN_NULL();
	switch (s[0])
	{
		case '{':
		case '[':
			if (is_json_container(s, len))
				kinds |= KIND_JSONB;
			break;
		case 't':
		case 'T':
		case 'f':
		case 'F':
			if (is_boolean(s, len))
				kinds |= KIND_BOOLEAN;
			break;
		default:
			if (is_bigint(s, len))
				kinds |= KIND_BIGINT;
			if (is_numeric(s, len))
				kinds |= KIND_NUMERIC;
			if (len >= 10 && is_date(s, Min(len, 10)))
			{
				if (len == 10)
					kinds |= KIND_DATE | KIND_TIMESTAMPTZ;
				else if (is_timestamptz(s, len))
					kinds |= KIND_TIMESTAMPTZ;
			}
			break;
	}
	PG_FREE_IF_COPY(t, 0);
	PG_RETURN_INT32(kinds);
}
