/*
 * recipe_parse.c
 *		The recipe compiler's reading of JSON: typed access to a recipe's
 *		fields, errors that name the step, its type and the field, and the
 *		emission of the pieces that come straight from the recipe:
 *		identifiers (always double-quoted), literals (quote_literal_cstr,
 *		numbers canonical and negatives in parentheses), operands and
 *		conditions (operators from a fixed enum, never copied).
 */
#include "recipe.h"

#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/numeric.h"

/* Raise 22023 "recipe step N (type) field: message". */
void
recipe_error(RecipeCompiler *rc, const char *field, const char *fmt,...)
{
	StringInfoData msg;
	StringInfoData where;
	va_list		args;

	initStringInfo(&msg);
	for (;;)
	{
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&msg, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&msg, needed);
	}
	initStringInfo(&where);
	if (rc->step > 0)
		appendStringInfo(&where, "recipe step %d (%s)", rc->step, rc->steptype ? rc->steptype : "?");
	else
		appendStringInfoString(&where, "recipe");
	if (field != NULL && field[0] != '\0')
		appendStringInfo(&where, " %s", field);
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s: %s", where.data, msg.data)));
	pg_unreachable();
}

/*
 * Raise 54000 (program_limit_exceeded): "recipe step N (type) field: what is
 * figure, over the limit limit_name = limit".
 */
void
recipe_limit_error(RecipeCompiler *rc, const char *field, const char *what, int64 figure,
				   const char *limit_name, int64 limit)
{
	StringInfoData where;

	initStringInfo(&where);
	if (rc->step > 0)
		appendStringInfo(&where, "recipe step %d (%s)", rc->step, rc->steptype ? rc->steptype : "?");
	else
		appendStringInfoString(&where, "recipe");
	if (field != NULL && field[0] != '\0')
		appendStringInfo(&where, " %s", field);
	ereport(ERROR,
			(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
			 errmsg("%s: %s is " INT64_FORMAT ", over the limit %s = " INT64_FORMAT,
					where.data, what, figure, limit_name, limit),
			 errhint("The recipe limits are listed in docs/recipes-limits.md.")));
	pg_unreachable();
}

/*
 * Limits that one linear pass over the whole recipe checks before anything
 * else: its size, its nesting depth and the length of every string in it.
 */
void
recipe_check_shape_limits(RecipeCompiler *rc, Jsonb *recipe)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			depth = 0;

	if (VARSIZE(recipe) > RECIPE_MAX_BYTES)
		recipe_limit_error(rc, NULL, "the recipe's size in bytes", (int64) VARSIZE(recipe),
						   "max_recipe_bytes", RECIPE_MAX_BYTES);
	it = JsonbIteratorInit(&recipe->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		CHECK_FOR_INTERRUPTS();
		if (tok == WJB_BEGIN_ARRAY || tok == WJB_BEGIN_OBJECT)
		{
			if (++depth > RECIPE_MAX_DEPTH)
				recipe_limit_error(rc, NULL, "the nesting depth", depth,
								   "max_nesting_depth", RECIPE_MAX_DEPTH);
		}
		else if (tok == WJB_END_ARRAY || tok == WJB_END_OBJECT)
			depth--;
		else if (v.type == jbvString && v.val.string.len > RECIPE_MAX_STRING_BYTES)
			recipe_limit_error(rc, NULL, "the length in bytes of a string", v.val.string.len,
							   "max_string_bytes", RECIPE_MAX_STRING_BYTES);
	}
}

/* Raise "unknown column", with the available columns as a hint. */
void
recipe_column_error(RecipeCompiler *rc, const char *field, const char *name)
{
	StringInfoData hint;
	ListCell   *lc;

	initStringInfo(&hint);
	foreach(lc, rc->columns)
	{
		if (hint.len > 0)
			appendStringInfoString(&hint, ", ");
		recipe_append_ident(&hint, ((RecipeColumn *) lfirst(lc))->name);
	}
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 rc->step > 0 ?
			 errmsg("recipe step %d (%s) %s: unknown column \"%s\"", rc->step, rc->steptype, field, name) :
			 errmsg("recipe %s: unknown column \"%s\"", field, name),
			 errhint("Available columns: %s.", hint.data)));
	pg_unreachable();
}

/* The value of key in a JSON object, or NULL. */
JsonbValue *
recipe_get(JsonbContainer *obj, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = unconstify(char *, key);
	k.val.string.len = strlen(key);
	return findJsonbValueFromContainer(obj, JB_FOBJECT, &k);
}

/* v must be a JSON object. */
JsonbContainer *
recipe_object(RecipeCompiler *rc, JsonbValue *v, const char *field)
{
	if (v == NULL)
		recipe_error(rc, field, "is required");
	if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		recipe_error(rc, field, "must be an object");
	return v->val.binary.data;
}

/*
 * v must be a JSON array with min_items..max_items items; max_items < 0
 * means the general limit on list items (max_list_items).
 */
JsonbContainer *
recipe_array(RecipeCompiler *rc, JsonbValue *v, const char *field, int min_items, int max_items)
{
	if (max_items < 0)
		return recipe_array_limited(rc, v, field, min_items, -1, "the number of items",
									"max_list_items", RECIPE_MAX_ITEMS);
	return recipe_array_limited(rc, v, field, min_items, max_items, NULL, NULL, 0);
}

/*
 * v must be a JSON array with min_items..max_items items (max < 0: none),
 * and at most limit items: more is a limit error naming limit_name.
 */
JsonbContainer *
recipe_array_limited(RecipeCompiler *rc, JsonbValue *v, const char *field, int min_items,
					 int max_items, const char *what, const char *limit_name, int limit)
{
	int			n;

	if (v == NULL)
		recipe_error(rc, field, "is required");
	if (v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data) ||
		JsonContainerIsScalar(v->val.binary.data))
		recipe_error(rc, field, "must be an array");
	n = JsonContainerSize(v->val.binary.data);
	if (n < min_items)
		recipe_error(rc, field, "needs at least %d item%s", min_items, min_items == 1 ? "" : "s");
	if (max_items >= 0 && n > max_items)
		recipe_error(rc, field, "takes at most %d item%s", max_items, max_items == 1 ? "" : "s");
	if (limit_name != NULL && n > limit)
		recipe_limit_error(rc, field, what, n, limit_name, limit);
	return v->val.binary.data;
}

/* Item i of an array. */
JsonbValue *
recipe_item(JsonbContainer *array, int i)
{
	return getIthJsonbValueFromContainer(array, i);
}

/* v must be a JSON string; returns it NUL-terminated. */
char *
recipe_string(RecipeCompiler *rc, JsonbValue *v, const char *field)
{
	if (v == NULL)
		recipe_error(rc, field, "is required");
	if (v->type != jbvString)
		recipe_error(rc, field, "must be a string");
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* v must be a JSON boolean, or absent (dflt). */
bool
recipe_bool(RecipeCompiler *rc, JsonbValue *v, const char *field, bool dflt)
{
	if (v == NULL)
		return dflt;
	if (v->type != jbvBool)
		recipe_error(rc, field, "must be true or false");
	return v->val.boolean;
}

/* Refuse keys of obj that are not in the NULL-terminated allowed list. */
void
recipe_check_keys(RecipeCompiler *rc, JsonbContainer *obj, const char *field,
				  const char *const *allowed)
{
	JsonbIterator *it = JsonbIteratorInit(obj);
	JsonbValue	v;
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		bool		ok = false;

		CHECK_FOR_INTERRUPTS();
		if (tok != WJB_KEY)
			continue;
		for (int i = 0; allowed[i] != NULL; i++)
			if ((int) strlen(allowed[i]) == v.val.string.len &&
				strncmp(allowed[i], v.val.string.val, v.val.string.len) == 0)
				ok = true;
		if (!ok)
			recipe_error(rc, field, "unknown field \"%.*s\"", v.val.string.len, v.val.string.val);
	}
}

/* v must be a usable column name: a non-empty string of at most 63 bytes. */
char *
recipe_name(RecipeCompiler *rc, JsonbValue *v, const char *field)
{
	char	   *name = recipe_string(rc, v, field);

	if (name[0] == '\0')
		recipe_error(rc, field, "a name must not be empty");
	if (strlen(name) >= NAMEDATALEN)
		recipe_error(rc, field, "name \"%s\" is longer than %d bytes", name, NAMEDATALEN - 1);
	return name;
}

/* Append a double-quoted identifier, doubling embedded quotes. */
void
recipe_append_ident(StringInfo buf, const char *name)
{
	appendStringInfoChar(buf, '"');
	for (const char *p = name; *p; p++)
	{
		if (*p == '"')
			appendStringInfoChar(buf, '"');
		appendStringInfoChar(buf, *p);
	}
	appendStringInfoChar(buf, '"');
}

/* Append a JSON scalar as a SQL literal. */
void
recipe_append_literal(RecipeCompiler *rc, StringInfo buf, JsonbValue *v, const char *field)
{
	switch (v->type)
	{
		case jbvNull:
			appendStringInfoString(buf, "NULL");
			break;
		case jbvBool:
			appendStringInfoString(buf, v->val.boolean ? "true" : "false");
			break;
		case jbvString:
			appendStringInfoString(buf, quote_literal_cstr(pnstrdup(v->val.string.val, v->val.string.len)));
			break;
		case jbvNumeric:
			{
				char	   *num = DatumGetCString(DirectFunctionCall1(numeric_out,
																	  NumericGetDatum(v->val.numeric)));

				if (num[0] == '-')
					appendStringInfo(buf, "(%s)", num);
				else
					appendStringInfoString(buf, num);
				break;
			}
		default:
			recipe_error(rc, field, "must be a string, number, boolean or null");
	}
}

/* Append an Operand: {"col": name} or {"val": scalar}. prefix qualifies columns ("" for none). */
void
recipe_append_operand(RecipeCompiler *rc, StringInfo buf, JsonbValue *v, const char *field,
					  const char *prefix)
{
	static const char *const keys[] = {"col", "val", NULL};
	JsonbContainer *obj = recipe_object(rc, v, field);
	JsonbValue *col = recipe_get(obj, "col");
	JsonbValue *val = recipe_get(obj, "val");

	recipe_check_keys(rc, obj, field, keys);
	if ((col == NULL) == (val == NULL))
		recipe_error(rc, field, "an operand has exactly one of \"col\" and \"val\"");
	if (col != NULL)
	{
		RecipeColumn *c = recipe_require_column(rc, field, recipe_name(rc, col, field));

		appendStringInfoString(buf, prefix);
		recipe_append_ident(buf, c->name);
	}
	else
		recipe_append_literal(rc, buf, val, field);
}

/* Operators of a condition, from the recipe's fixed enum. */
typedef struct CondOp
{
	const char *name;
	const char *sql;
} CondOp;

static const CondOp comparison_ops[] = {
	{"eq", "="}, {"ne", "<>"}, {"lt", "<"}, {"lte", "<="}, {"gt", ">"}, {"gte", ">="}, {NULL, NULL}
};

/* Append a Cond: {"column", "op", "value"}. */
void
recipe_append_condition(RecipeCompiler *rc, StringInfo buf, JsonbValue *v, const char *field,
						const char *prefix)
{
	static const char *const keys[] = {"column", "op", "value", NULL};
	JsonbContainer *obj = recipe_object(rc, v, field);
	char	   *fcol = psprintf("%s.column", field);
	char	   *fop = psprintf("%s.op", field);
	char	   *fval = psprintf("%s.value", field);
	RecipeColumn *col;
	char	   *op;
	JsonbValue *value = recipe_get(obj, "value");
	StringInfoData c;

	recipe_check_keys(rc, obj, field, keys);
	col = recipe_require_column(rc, fcol, recipe_name(rc, recipe_get(obj, "column"), fcol));
	op = recipe_string(rc, recipe_get(obj, "op"), fop);
	initStringInfo(&c);
	appendStringInfoString(&c, prefix);
	recipe_append_ident(&c, col->name);

	for (int i = 0; comparison_ops[i].name; i++)
	{
		if (strcmp(op, comparison_ops[i].name) == 0)
		{
			appendStringInfo(buf, "%s %s ", c.data, comparison_ops[i].sql);
			recipe_append_operand(rc, buf, value, fval, prefix);
			return;
		}
	}
	if (strcmp(op, "in") == 0 || strcmp(op, "not_in") == 0)
	{
		JsonbContainer *arr = recipe_array(rc, value, fval, 1, -1);
		int			n = JsonContainerSize(arr);

		appendStringInfo(buf, "%s %s (", c.data, op[0] == 'i' ? "IN" : "NOT IN");
		for (int i = 0; i < n; i++)
		{
			CHECK_FOR_INTERRUPTS();
			if (i > 0)
				appendStringInfoString(buf, ", ");
			recipe_append_operand(rc, buf, recipe_item(arr, i), psprintf("%s[%d]", fval, i), prefix);
		}
		appendStringInfoChar(buf, ')');
	}
	else if (strcmp(op, "between") == 0)
	{
		JsonbContainer *arr = recipe_array(rc, value, fval, 2, 2);

		appendStringInfo(buf, "%s BETWEEN ", c.data);
		recipe_append_operand(rc, buf, recipe_item(arr, 0), psprintf("%s[0]", fval), prefix);
		appendStringInfoString(buf, " AND ");
		recipe_append_operand(rc, buf, recipe_item(arr, 1), psprintf("%s[1]", fval), prefix);
	}
	else if (strcmp(op, "is_null") == 0 || strcmp(op, "is_not_null") == 0)
	{
		if (value != NULL)
			recipe_error(rc, fval, "\"%s\" takes no value", op);
		appendStringInfo(buf, "%s %s", c.data, strcmp(op, "is_null") == 0 ? "IS NULL" : "IS NOT NULL");
	}
	else if (strcmp(op, "contains") == 0)
	{
		appendStringInfo(buf, "strpos(%s, ", c.data);
		recipe_append_operand(rc, buf, value, fval, prefix);
		appendStringInfoString(buf, ") > 0");
	}
	else if (strcmp(op, "starts_with") == 0)
	{
		appendStringInfo(buf, "starts_with(%s, ", c.data);
		recipe_append_operand(rc, buf, value, fval, prefix);
		appendStringInfoChar(buf, ')');
	}
	else if (strcmp(op, "ends_with") == 0)
	{
		StringInfoData operand;

		initStringInfo(&operand);
		recipe_append_operand(rc, &operand, value, fval, prefix);
		appendStringInfo(buf, "right(%s, length(%s)) = %s", c.data, operand.data, operand.data);
	}
	else
		recipe_error(rc, fop, "unknown operator \"%s\"", op);
}
