/*
 * util.c
 *		Small helpers that several capabilities share: parsing and printing
 *		uuids without raising.  Nothing here knows about dalgo's tables; a
 *		capability that needs one calls it here rather than reaching into
 *		another capability's file.
 */
#include "dalgo.h"

#include "utils/builtins.h"
#include "utils/uuid.h"

/* Value of one hexadecimal digit, or -1. */
int
dalgo_hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Parse a uuid without raising: 32 hex digits, either plain or in the
 * canonical 8-4-4-4-12 grouping.  Returns false for anything else.
 */
bool
dalgo_parse_uuid(const char *str, size_t len, pg_uuid_t *result)
{
	bool		hyphens;
	int			j = 0;

	if (len == 36)
		hyphens = true;
	else if (len == 32)
		hyphens = false;
	else
		return false;

	for (size_t i = 0; i < len; i++)
	{
		int			hi,
					lo;

		if (hyphens && (i == 8 || i == 13 || i == 18 || i == 23))
		{
			if (str[i] != '-')
				return false;
			continue;
		}
		if (i + 1 >= len)
			return false;
		hi = dalgo_hex_value(str[i]);
		lo = dalgo_hex_value(str[i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		result->data[j++] = (unsigned char) ((hi << 4) | lo);
		i++;
	}
	return j == UUID_LEN;
}

/* Write a uuid as 32 lower-case hex digits, no dashes, into hex (2 * UUID_LEN + 1 bytes). */
void
dalgo_uuid_hex(const pg_uuid_t *id, char *hex)
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < UUID_LEN; i++)
	{
		hex[2 * i] = digits[id->data[i] >> 4];
		hex[2 * i + 1] = digits[id->data[i] & 0xF];
	}
	hex[2 * UUID_LEN] = '\0';
}

PG_FUNCTION_INFO_V1(dalgo_log_without_statement);

/*
 * Write a message to the server log without the statement that led to it.
 * A LOG-level message from PL/pgSQL (RAISE LOG) carries the client's
 * statement into the log, and that statement may hold a secret being
 * written; this one hides it.
 */
Datum
dalgo_log_without_statement(PG_FUNCTION_ARGS)
{
	if (!PG_ARGISNULL(0))
		ereport(LOG,
				errmsg_internal("%s", text_to_cstring(PG_GETARG_TEXT_PP(0))),
				errhidestmt(true),
				errhidecontext(true));
	PG_RETURN_VOID();
}
