/*
 * recipe_guard.c
 *		The functions of schema dalgo_recipe: the recipe steps and whitelisted
 *		functions that can build a value larger than their inputs (concat,
 *		concat_ws, replace, lpad, rpad) call these instead of the built-ins.
 *		Each works out the size of its result before building it, and
 *		refuses one over max_value_bytes (RECIPE_MAX_VALUE_BYTES) with
 *		program_limit_exceeded, so that no expression of a recipe can make
 *		a backend allocate without bound.
 */
#include "recipe.h"

#include "access/detoast.h"
#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

PG_FUNCTION_INFO_V1(dalgo_recipe_concat);
PG_FUNCTION_INFO_V1(dalgo_recipe_concat_ws);
PG_FUNCTION_INFO_V1(dalgo_recipe_replace);
PG_FUNCTION_INFO_V1(dalgo_recipe_lpad);
PG_FUNCTION_INFO_V1(dalgo_recipe_rpad);

/* Refuse a value of bytes bytes built by fname. */
static void
check_value_bytes(const char *fname, int64 bytes)
{
	if (bytes > RECIPE_MAX_VALUE_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("recipe value too large: %s would build " INT64_FORMAT " bytes, over the limit max_value_bytes = %d",
						fname, bytes, RECIPE_MAX_VALUE_BYTES),
				 errhint("The recipe limits are listed in docs/recipes-limits.md.")));
}

/* CONCAT / CONCAT_WS of the arguments from first on, checking the size as it grows. */
static text *
guarded_concat(FunctionCallInfo fcinfo, const char *fname, const char *sep, int first)
{
	StringInfoData str;
	bool		first_arg = true;

	if (get_fn_expr_variadic(fcinfo->flinfo))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s takes its arguments one by one, not as a VARIADIC array", fname)));
	initStringInfo(&str);
	for (int i = first; i < PG_NARGS(); i++)
	{
		Datum		value;
		Oid			type;
		Oid			output;
		bool		isvarlena;
		char	   *s;

		CHECK_FOR_INTERRUPTS();
		if (PG_ARGISNULL(i))
			continue;
		value = PG_GETARG_DATUM(i);
		type = get_fn_expr_argtype(fcinfo->flinfo, i);
		if (!OidIsValid(type))
			elog(ERROR, "could not determine the data type of %s's argument %d", fname, i + 1);
		getTypeOutputInfo(type, &output, &isvarlena);
		if (!first_arg)
			appendStringInfoString(&str, sep);
		first_arg = false;
		/* text-like values are measured before they are detoasted */
		if (type == TEXTOID || type == VARCHAROID || type == BPCHAROID)
			check_value_bytes(fname, (int64) str.len + toast_raw_datum_size(value) - VARHDRSZ);
		s = OidOutputFunctionCall(output, value);
		check_value_bytes(fname, (int64) str.len + strlen(s));
		appendStringInfoString(&str, s);
		pfree(s);
	}
	return cstring_to_text_with_len(str.data, str.len);
}

/* SQL: dalgo_recipe.concat(VARIADIC "any"): CONCAT, at most max_value_bytes. */
Datum
dalgo_recipe_concat(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(guarded_concat(fcinfo, "concat", "", 0));
}

/* SQL: dalgo_recipe.concat_ws(text, VARIADIC "any"): CONCAT_WS, at most max_value_bytes. */
Datum
dalgo_recipe_concat_ws(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(guarded_concat(fcinfo, "concat_ws", text_to_cstring(PG_GETARG_TEXT_PP(0)), 1));
}

/*
 * SQL: dalgo_recipe.replace(text, text, text): REPLACE, refusing a result
 * over max_value_bytes.  Only a replacement longer than what it finds can
 * grow the value; then the matches are counted first (by removing them,
 * which only shrinks the value) and the result's size worked out.
 */
Datum
dalgo_recipe_replace(PG_FUNCTION_ARGS)
{
	text	   *src = PG_GETARG_TEXT_PP(0);
	text	   *from = PG_GETARG_TEXT_PP(1);
	text	   *to = PG_GETARG_TEXT_PP(2);
	int64		src_len = VARSIZE_ANY_EXHDR(src);
	int64		from_len = VARSIZE_ANY_EXHDR(from);
	int64		to_len = VARSIZE_ANY_EXHDR(to);
	Oid			collation = PG_GET_COLLATION();

	if (from_len > 0 && to_len > from_len &&
		src_len + (src_len / from_len) * (to_len - from_len) > RECIPE_MAX_VALUE_BYTES)
	{
		text	   *removed = DatumGetTextPP(DirectFunctionCall3Coll(replace_text, collation,
																	 PointerGetDatum(src), PointerGetDatum(from),
																	 PointerGetDatum(cstring_to_text(""))));
		int64		matches = (src_len - (int64) VARSIZE_ANY_EXHDR(removed)) / from_len;

		if (matches > 0)
			check_value_bytes("replace", src_len + matches * (to_len - from_len));
		pfree(removed);
	}
	return DirectFunctionCall3Coll(replace_text, collation, PointerGetDatum(src),
								   PointerGetDatum(from), PointerGetDatum(to));
}

/* LPAD or RPAD (pad), with the fill ' ' unless given, at most max_value_bytes. */
static Datum
guarded_pad(FunctionCallInfo fcinfo, const char *fname, PGFunction pad)
{
	text	   *string = PG_GETARG_TEXT_PP(0);
	int32		len = PG_GETARG_INT32(1);
	Datum		fill = PG_NARGS() > 2 ? PG_GETARG_DATUM(2) : PointerGetDatum(cstring_to_text(" "));
	Datum		result;

	/* a longer result has at least len bytes; padding to fewer characters truncates */
	if (len > RECIPE_MAX_VALUE_BYTES &&
		len > pg_mbstrlen_with_len(VARDATA_ANY(string), VARSIZE_ANY_EXHDR(string)))
		check_value_bytes(fname, len);
	result = DirectFunctionCall3(pad, PointerGetDatum(string), Int32GetDatum(len), fill);
	check_value_bytes(fname, VARSIZE_ANY_EXHDR(DatumGetPointer(result)));
	return result;
}

/* SQL: dalgo_recipe.lpad(text, integer [, text]): LPAD, at most max_value_bytes. */
Datum
dalgo_recipe_lpad(PG_FUNCTION_ARGS)
{
	return guarded_pad(fcinfo, "lpad", lpad);
}

/* SQL: dalgo_recipe.rpad(text, integer [, text]): RPAD, at most max_value_bytes. */
Datum
dalgo_recipe_rpad(PG_FUNCTION_ARGS)
{
	return guarded_pad(fcinfo, "rpad", rpad);
}
