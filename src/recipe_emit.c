/*
 * recipe_emit.c
 *		dalgo.compile_recipe(): a JSON recipe becomes one SELECT that chains
 *		CTEs, _s0 reading the source and _s<k> reading _s<k-1>, as the recipe
 *		contract specifies.  Everything the SQL contains comes either from
 *		the catalog (relations, column lists, types), from fixed enums
 *		(operators, aggregates, whitelisted functions), or is a quoted
 *		identifier or literal; nothing is copied from the recipe as SQL text
 *		except the raw sql step, which is off unless a superuser allows it.
 */
#include "recipe.h"

#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/numeric.h"

PG_FUNCTION_INFO_V1(dalgo_compile_recipe);

static bool dalgo_allow_raw_sql = false;
static char *dalgo_change_description = NULL;

typedef void (*step_emitter) (RecipeCompiler *rc, JsonbContainer *step, StringInfo out);

/* Append the current columns as a select list, each optionally qualified. */
static void
append_columns(StringInfo out, List *columns, const char *prefix)
{
	ListCell   *lc;
	bool		first = true;

	foreach(lc, columns)
	{
		CHECK_FOR_INTERRUPTS();
		if (!first)
			appendStringInfoString(out, ", ");
		first = false;
		appendStringInfoString(out, prefix);
		recipe_append_ident(out, ((RecipeColumn *) lfirst(lc))->name);
	}
}

/* The generated SQL must stay under max_sql_bytes. */
static void
check_sql_size(RecipeCompiler *rc, int64 len)
{
	if (len > RECIPE_MAX_SQL_BYTES)
		recipe_limit_error(rc, NULL, "the size in bytes of the generated SQL", len,
						   "max_sql_bytes", RECIPE_MAX_SQL_BYTES);
}

/* A step's output must have at most max_columns columns. */
static void
check_column_count(RecipeCompiler *rc, const char *field, int n)
{
	if (n > RECIPE_MAX_COLUMNS)
		recipe_limit_error(rc, field, "the number of output columns", n, "max_columns", RECIPE_MAX_COLUMNS);
}

/*
 * Type-check the chain up to CTE _s<cte> (recipe_analyze_output), at most
 * max_type_checks times per recipe: each check parses the whole chain.
 * The columns keep their weights.
 */
static void
analyze_output(RecipeCompiler *rc, int cte)
{
	List	   *before = rc->columns;
	ListCell   *a;
	ListCell   *b;

	if (++rc->analyzed > RECIPE_MAX_ANALYZE)
		recipe_limit_error(rc, NULL, "the number of union or sql steps that type-check the steps before them",
						   rc->analyzed, "max_type_checks", RECIPE_MAX_ANALYZE);
	recipe_analyze_output(rc, cte);
	forboth(a, rc->columns, b, before)
		((RecipeColumn *) lfirst(a))->weight = ((RecipeColumn *) lfirst(b))->weight;
}

/* The previous CTE's name. */
static char *
prev(RecipeCompiler *rc)
{
	return psprintf("_s%d", rc->step - 1);
}

/* Read a list of existing column names. */
static List *
column_names(RecipeCompiler *rc, JsonbValue *v, const char *field, int min_items)
{
	JsonbContainer *arr = recipe_array(rc, v, field, min_items, -1);
	int			n = JsonContainerSize(arr);
	List	   *result = NIL;

	for (int i = 0; i < n; i++)
	{
		char	   *f = psprintf("%s[%d]", field, i);
		RecipeColumn *c = recipe_require_column(rc, f, recipe_name(rc, recipe_item(arr, i), f));

		CHECK_FOR_INTERRUPTS();
		if (recipe_find_column(result, c->name) != NULL)
			recipe_error(rc, f, "column \"%s\" is listed twice", c->name);
		result = lappend(result, c);
	}
	return result;
}

/* The output name of a step that adds one column ("as"), checked for collisions. */
static char *
new_name(RecipeCompiler *rc, JsonbContainer *step)
{
	char	   *name = recipe_name(rc, recipe_get(step, "as"), "as");

	recipe_check_new_name(rc, rc->columns, "as", name);
	return name;
}

/* select: keep these columns, in this order. */
static void
emit_select(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	List	   *cols = column_names(rc, recipe_get(step, "columns"), "columns", 1);

	appendStringInfoString(out, "SELECT ");
	append_columns(out, cols, "");
	appendStringInfo(out, " FROM %s", prev(rc));
	rc->columns = cols;
}

/* drop: every column but these. */
static void
emit_drop(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	List	   *dropped = column_names(rc, recipe_get(step, "columns"), "columns", 1);
	List	   *kept = NIL;
	ListCell   *lc;

	foreach(lc, rc->columns)
	{
		RecipeColumn *c = lfirst(lc);

		CHECK_FOR_INTERRUPTS();
		if (recipe_find_column(dropped, c->name) == NULL)
			kept = lappend(kept, c);
	}

	if (kept == NIL)
		recipe_error(rc, "columns", "cannot drop every column");
	appendStringInfoString(out, "SELECT ");
	append_columns(out, kept, "");
	appendStringInfo(out, " FROM %s", prev(rc));
	rc->columns = kept;
}

/* A {column: value} map must name at least one column, and only existing ones. */
static void
require_mapped_columns(RecipeCompiler *rc, JsonbContainer *map, const char *verb)
{
	JsonbIterator *it = JsonbIteratorInit(map);
	JsonbValue	k;
	JsonbIteratorToken tok;

	if (JsonContainerSize(map) == 0)
		recipe_error(rc, "columns", "needs at least one column to %s", verb);
	if (JsonContainerSize(map) > RECIPE_MAX_ITEMS)
		recipe_limit_error(rc, "columns", "the number of items", JsonContainerSize(map),
						   "max_list_items", RECIPE_MAX_ITEMS);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		CHECK_FOR_INTERRUPTS();
		if (tok == WJB_KEY)
			(void) recipe_require_column(rc, "columns", pnstrdup(k.val.string.val, k.val.string.len));
	}
}

/* rename: {old: new}, each in its original position. */
static void
emit_rename(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	JsonbContainer *map = recipe_object(rc, recipe_get(step, "columns"), "columns");
	List	   *result = NIL;
	ListCell   *lc;

	require_mapped_columns(rc, map, "rename");
	appendStringInfoString(out, "SELECT ");
	foreach(lc, rc->columns)
	{
		RecipeColumn *c = lfirst(lc);
		JsonbValue *to = recipe_get(map, c->name);
		char	   *name = c->name;
		RecipeColumn *renamed;

		CHECK_FOR_INTERRUPTS();
		if (lc != list_head(rc->columns))
			appendStringInfoString(out, ", ");
		recipe_append_ident(out, c->name);
		if (to != NULL)
		{
			char	   *f = psprintf("columns.%s", c->name);

			name = recipe_name(rc, to, f);
			appendStringInfoString(out, " AS ");
			recipe_append_ident(out, name);
		}
		if (recipe_find_column(result, name) != NULL)
			recipe_error(rc, "columns", "column \"%s\" would appear twice", name);
		renamed = recipe_new_column(name, c->type, c->typmod);
		renamed->weight = c->weight;
		result = lappend(result, renamed);
	}
	appendStringInfo(out, " FROM %s", prev(rc));
	rc->columns = result;
}

/* cast: {column: type}, in place. */
static void
emit_cast(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	JsonbContainer *map = recipe_object(rc, recipe_get(step, "columns"), "columns");
	List	   *result = NIL;
	ListCell   *lc;

	require_mapped_columns(rc, map, "cast");
	appendStringInfoString(out, "SELECT ");
	foreach(lc, rc->columns)
	{
		RecipeColumn *c = lfirst(lc);
		JsonbValue *to = recipe_get(map, c->name);

		CHECK_FOR_INTERRUPTS();
		if (lc != list_head(rc->columns))
			appendStringInfoString(out, ", ");
		if (to == NULL)
		{
			recipe_append_ident(out, c->name);
			result = lappend(result, c);
		}
		else
		{
			char	   *f = psprintf("columns.%s", c->name);
			Oid			type;
			int32		typmod;
			char	   *canonical = recipe_parse_type(rc, f, recipe_string(rc, to, f), &type, &typmod);

			appendStringInfoString(out, "CAST(");
			recipe_append_ident(out, c->name);
			appendStringInfo(out, " AS %s) AS ", canonical);
			recipe_append_ident(out, c->name);
			result = lappend(result, recipe_new_column(c->name, type, typmod));
			((RecipeColumn *) llast(result))->weight = c->weight + 1;
		}
	}
	appendStringInfo(out, " FROM %s", prev(rc));
	rc->columns = result;
}

/*
 * Steps that add one computed column: SELECT <all>, <expr> AS "as" FROM
 * prev.  The new column weighs what the column references made so far in
 * this step weigh (its expression's), plus one.
 */
static void
finish_added_column(RecipeCompiler *rc, StringInfo out, const char *expr, const char *name, Oid type)
{
	RecipeColumn *c = recipe_new_column(name, type, -1);

	c->weight = rc->ref_weight + 1;
	appendStringInfoString(out, "SELECT ");
	append_columns(out, rc->columns, "");
	appendStringInfo(out, ", %s AS ", expr);
	recipe_append_ident(out, name);
	appendStringInfo(out, " FROM %s", prev(rc));
	rc->columns = lappend(list_copy(rc->columns), c);
}

/* arithmetic: add/sub/mul/div over operands. */
static void
emit_arithmetic(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	char	   *op = recipe_string(rc, recipe_get(step, "op"), "op");
	bool		div = strcmp(op, "div") == 0;
	bool		addsub = strcmp(op, "add") == 0 || strcmp(op, "sub") == 0;
	JsonbContainer *operands;
	StringInfoData e;
	int			n;

	if (!addsub && !div && strcmp(op, "mul") != 0)
		recipe_error(rc, "op", "unknown operator \"%s\" (use add, sub, mul or div)", op);
	operands = recipe_array(rc, recipe_get(step, "operands"), "operands", 2, div ? 2 : -1);
	n = JsonContainerSize(operands);
	initStringInfo(&e);
	for (int i = 0; i < n; i++)
	{
		char	   *f = psprintf("operands[%d]", i);

		CHECK_FOR_INTERRUPTS();
		if (i > 0)
			appendStringInfoString(&e, addsub ? (op[0] == 'a' ? " + " : " - ") : div ? " / " : " * ");
		if (addsub)
		{
			appendStringInfoString(&e, "COALESCE(");
			recipe_append_operand(rc, &e, recipe_item(operands, i), f, "");
			appendStringInfoString(&e, ", 0)");
		}
		else if (div)
		{
			appendStringInfoString(&e, i == 0 ? "(" : "NULLIF((");
			recipe_append_operand(rc, &e, recipe_item(operands, i), f, "");
			appendStringInfoString(&e, i == 0 ? ")" : "), 0)");
		}
		else
			recipe_append_operand(rc, &e, recipe_item(operands, i), f, "");
	}
	finish_added_column(rc, out, e.data, new_name(rc, step), InvalidOid);
}

/* coalesce: the first non-null of columns, else default. */
static void
emit_coalesce(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	List	   *cols = column_names(rc, recipe_get(step, "columns"), "columns", 1);
	JsonbValue *dflt = recipe_get(step, "default");
	StringInfoData e;

	initStringInfo(&e);
	appendStringInfoString(&e, "COALESCE(");
	append_columns(&e, cols, "");
	if (dflt != NULL)
	{
		appendStringInfoString(&e, ", ");
		recipe_append_operand(rc, &e, dflt, "default", "");
	}
	appendStringInfoChar(&e, ')');
	finish_added_column(rc, out, e.data, new_name(rc, step), InvalidOid);
}

/* concat: parts joined as text. */
static void
emit_concat(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	JsonbContainer *parts = recipe_array(rc, recipe_get(step, "parts"), "parts", 1, -1);
	int			n = JsonContainerSize(parts);
	StringInfoData e;

	initStringInfo(&e);
	/* CONCAT that refuses to build a value over max_value_bytes */
	appendStringInfoString(&e, "dalgo_recipe.concat(");
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (i > 0)
			appendStringInfoString(&e, ", ");
		recipe_append_operand(rc, &e, recipe_item(parts, i), psprintf("parts[%d]", i), "");
	}
	appendStringInfoChar(&e, ')');
	finish_added_column(rc, out, e.data, new_name(rc, step), TEXTOID);
}

/* A flattened key's column name: non-alphanumerics to _, leading digit gets a c. */
static char *
flattened_name(const char *column, const char *key)
{
	StringInfoData n;

	initStringInfo(&n);
	for (const char *p = column; *p; p++)
		appendStringInfoChar(&n, isalnum((unsigned char) *p) ? *p : '_');
	appendStringInfoChar(&n, '_');
	for (const char *p = key; *p; p++)
		appendStringInfoChar(&n, isalnum((unsigned char) *p) ? *p : '_');
	if (isdigit((unsigned char) n.data[0]))
		return psprintf("c%s", n.data);
	return n.data;
}

/* flatten_json: one text column per key of a json column. */
static void
emit_flatten_json(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	RecipeColumn *src = recipe_require_column(rc, "column", recipe_name(rc, recipe_get(step, "column"), "column"));
	JsonbContainer *keys = recipe_array_limited(rc, recipe_get(step, "keys"), "keys", 1, -1,
												"the number of keys", "max_flatten_keys", RECIPE_MAX_KEYS);
	bool		keep = recipe_bool(rc, recipe_get(step, "keep_source"), "keep_source", false);
	List	   *result = NIL;
	ListCell   *lc;
	int			n = JsonContainerSize(keys);
	StringInfoData sel;

	initStringInfo(&sel);
	foreach(lc, rc->columns)
		if (keep || lfirst(lc) != src)
			result = lappend(result, lfirst(lc));
	append_columns(&sel, result, "");
	if (list_length(result) + n > RECIPE_MAX_COLUMNS)
		recipe_limit_error(rc, "keys", "the number of output columns", list_length(result) + n,
						   "max_columns", RECIPE_MAX_COLUMNS);
	for (int i = 0; i < n; i++)
	{
		char	   *f = psprintf("keys[%d]", i);
		char	   *key = recipe_string(rc, recipe_item(keys, i), f);
		char	   *base = flattened_name(src->name, key);
		char	   *name = base;
		RecipeColumn *c;

		CHECK_FOR_INTERRUPTS();
		if (strlen(base) + 2 >= NAMEDATALEN)
			recipe_error(rc, f, "column name \"%s\" would be longer than %d bytes", base, NAMEDATALEN - 1);
		/* a hash lookup per candidate: linear in the number of keys */
		for (char suffix = 'b'; recipe_find_column(result, name) != NULL; suffix++)
		{
			if (suffix > 'z')
				recipe_error(rc, f, "too many columns named \"%s\"", base);
			name = psprintf("%s_%c", base, suffix);
		}
		if (sel.len > 0)
			appendStringInfoString(&sel, ", ");
		appendStringInfoString(&sel, "(");
		recipe_append_ident(&sel, src->name);
		appendStringInfo(&sel, "::jsonb) ->> %s AS ", quote_literal_cstr(key));
		recipe_append_ident(&sel, name);
		c = recipe_new_column(name, TEXTOID, -1);
		c->weight = src->weight + 1;
		rc->ref_weight += src->weight;
		result = lappend(result, c);
	}
	appendStringInfo(out, "SELECT %s FROM %s", sel.data, prev(rc));
	rc->columns = result;
}

/* Steps that rewrite one column, in place or as a new column ("as" omitted: in place). */
static void
finish_rewrite(RecipeCompiler *rc, JsonbContainer *step, StringInfo out, RecipeColumn *src,
			   const char *expr)
{
	JsonbValue *as = recipe_get(step, "as");
	ListCell   *lc;
	List	   *result = NIL;

	if (as != NULL)
	{
		finish_added_column(rc, out, expr, new_name(rc, step), TEXTOID);
		return;
	}
	appendStringInfoString(out, "SELECT ");
	foreach(lc, rc->columns)
	{
		RecipeColumn *c = lfirst(lc);

		if (lc != list_head(rc->columns))
			appendStringInfoString(out, ", ");
		CHECK_FOR_INTERRUPTS();
		if (c == src)
		{
			appendStringInfo(out, "%s AS ", expr);
			recipe_append_ident(out, c->name);
			result = lappend(result, recipe_new_column(c->name, TEXTOID, -1));
			((RecipeColumn *) llast(result))->weight = rc->ref_weight + 1;
		}
		else
		{
			recipe_append_ident(out, c->name);
			result = lappend(result, c);
		}
	}
	appendStringInfo(out, " FROM %s", prev(rc));
	rc->columns = result;
}

/* regex_extract: the first match of a pattern. */
static void
emit_regex_extract(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	RecipeColumn *src = recipe_require_column(rc, "column", recipe_name(rc, recipe_get(step, "column"), "column"));
	char	   *pattern = recipe_string(rc, recipe_get(step, "pattern"), "pattern");
	StringInfoData e;

	recipe_check_regex(rc, "pattern", pattern);
	initStringInfo(&e);
	appendStringInfoString(&e, "substring(");
	recipe_append_ident(&e, src->name);
	appendStringInfo(&e, " FROM %s)", quote_literal_cstr(pattern));
	finish_rewrite(rc, step, out, src, e.data);
}

/*
 * replace: find/replace pairs, applied in order.  The nested calls are
 * emitted in one pass (all the openings, the column, then each pair's
 * arguments), so the SQL grows linearly with the pairs.  A pair whose
 * replacement is longer than what it finds can grow the value: it calls
 * dalgo_recipe.replace, which refuses a result over max_value_bytes.
 */
static void
emit_replace(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	static const char *const pairkeys[] = {"find", "replace", NULL};
	RecipeColumn *src = recipe_require_column(rc, "column", recipe_name(rc, recipe_get(step, "column"), "column"));
	JsonbContainer *pairs = recipe_array_limited(rc, recipe_get(step, "pairs"), "pairs", 1, -1,
												 "the number of pairs", "max_replace_pairs", RECIPE_MAX_PAIRS);
	int			n = JsonContainerSize(pairs);
	char	  **finds = palloc(sizeof(char *) * n);
	char	  **repls = palloc(sizeof(char *) * n);
	StringInfoData e;

	for (int i = 0; i < n; i++)
	{
		char	   *f = psprintf("pairs[%d]", i);
		JsonbContainer *pair = recipe_object(rc, recipe_item(pairs, i), f);

		CHECK_FOR_INTERRUPTS();
		recipe_check_keys(rc, pair, f, pairkeys);
		finds[i] = recipe_string(rc, recipe_get(pair, "find"), psprintf("%s.find", f));
		repls[i] = recipe_string(rc, recipe_get(pair, "replace"), psprintf("%s.replace", f));
	}
	initStringInfo(&e);
	for (int i = n - 1; i >= 0; i--)
		appendStringInfoString(&e, strlen(repls[i]) > strlen(finds[i]) ? "dalgo_recipe.replace(" : "REPLACE(");
	recipe_append_ident(&e, src->name);
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		appendStringInfo(&e, ",%s,%s)", quote_literal_cstr(finds[i]), quote_literal_cstr(repls[i]));
	}
	finish_rewrite(rc, step, out, src, e.data);
}

/* filter: rows matching all (or any) conditions. */
static void
emit_filter(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	JsonbValue *matchv = recipe_get(step, "match");
	char	   *match = matchv ? recipe_string(rc, matchv, "match") : "all";
	JsonbContainer *conds = recipe_array(rc, recipe_get(step, "conditions"), "conditions", 1, -1);
	int			n = JsonContainerSize(conds);

	if (strcmp(match, "all") != 0 && strcmp(match, "any") != 0)
		recipe_error(rc, "match", "must be \"all\" or \"any\"");
	appendStringInfoString(out, "SELECT ");
	append_columns(out, rc->columns, "");
	appendStringInfo(out, " FROM %s WHERE (", prev(rc));
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (i > 0)
			appendStringInfoString(out, match[1] == 'l' ? " AND " : " OR ");
		recipe_append_condition(rc, out, recipe_item(conds, i), psprintf("conditions[%d]", i), "");
	}
	appendStringInfoChar(out, ')');
}

/* Append one aggregate {fn, column, as}; adds its output column to *cols. */
static void
append_aggregate(RecipeCompiler *rc, StringInfo out, JsonbValue *v, const char *field, List **cols)
{
	static const char *const keys[] = {"fn", "column", "as", NULL};
	static const char *const fns[][2] = {
		{"count", "COUNT"}, {"count_distinct", "COUNT"}, {"sum", "SUM"}, {"avg", "AVG"},
		{"min", "MIN"}, {"max", "MAX"}
	};
	JsonbContainer *agg = recipe_object(rc, v, field);
	char	   *ffn = psprintf("%s.fn", field);
	char	   *fcol = psprintf("%s.column", field);
	char	   *fas = psprintf("%s.as", field);
	char	   *fn;
	const char *sqlfn = NULL;
	JsonbValue *colv = recipe_get(agg, "column");
	char	   *name;

	recipe_check_keys(rc, agg, field, keys);
	fn = recipe_string(rc, recipe_get(agg, "fn"), ffn);
	for (int i = 0; i < (int) lengthof(fns); i++)
		if (strcmp(fn, fns[i][0]) == 0)
			sqlfn = fns[i][1];
	if (sqlfn == NULL)
		recipe_error(rc, ffn, "unknown aggregate \"%s\" (use count, count_distinct, sum, avg, min or max)", fn);
	name = recipe_name(rc, recipe_get(agg, "as"), fas);
	recipe_check_new_name(rc, *cols, fas, name);
	appendStringInfo(out, "%s(", sqlfn);
	if (colv == NULL && strcmp(fn, "count") == 0)
		appendStringInfoChar(out, '*');
	else
	{
		RecipeColumn *c = recipe_require_column(rc, fcol, recipe_name(rc, colv, fcol));

		if (strcmp(fn, "count_distinct") == 0)
			appendStringInfoString(out, "DISTINCT ");
		recipe_append_ident(out, c->name);
	}
	appendStringInfoString(out, ") AS ");
	recipe_append_ident(out, name);
	*cols = lappend(*cols, recipe_new_column(name, strncmp(fn, "count", 5) == 0 ? INT8OID : InvalidOid, -1));
}

/* group: one row per group with its aggregates. */
static void
emit_group(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	JsonbValue *byv = recipe_get(step, "by");
	List	   *by = byv ? column_names(rc, byv, "by", 0) : NIL;
	JsonbContainer *aggs = recipe_array(rc, recipe_get(step, "aggregates"), "aggregates", by == NIL ? 1 : 0, -1);
	int			n = JsonContainerSize(aggs);
	List	   *result = list_copy(by);

	appendStringInfoString(out, "SELECT ");
	append_columns(out, by, "");
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (i > 0 || by != NIL)
			appendStringInfoString(out, ", ");
		append_aggregate(rc, out, recipe_item(aggs, i), psprintf("aggregates[%d]", i), &result);
	}
	appendStringInfo(out, " FROM %s", prev(rc));
	if (by != NIL)
	{
		appendStringInfoString(out, " GROUP BY ");
		append_columns(out, by, "");
	}
	rc->columns = result;
}

/* aggregate: every row plus whole-table totals. */
static void
emit_aggregate(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	JsonbContainer *aggs = recipe_array(rc, recipe_get(step, "aggregates"), "aggregates", 1, -1);
	int			n = JsonContainerSize(aggs);
	List	   *result = list_copy(rc->columns);
	int			first_new = list_length(result);
	StringInfoData inner;
	char	   *p = prev(rc);

	initStringInfo(&inner);
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (i > 0)
			appendStringInfoString(&inner, ", ");
		append_aggregate(rc, &inner, recipe_item(aggs, i), psprintf("aggregates[%d]", i), &result);
	}
	appendStringInfoString(out, "SELECT ");
	append_columns(out, rc->columns, psprintf("%s.", p));
	for (int i = first_new; i < list_length(result); i++)
	{
		CHECK_FOR_INTERRUPTS();
		appendStringInfoString(out, ", a.");
		recipe_append_ident(out, ((RecipeColumn *) list_nth(result, i))->name);
	}
	appendStringInfo(out, " FROM %s CROSS JOIN (SELECT %s FROM %s) a", p, inner.data, p);
	rc->columns = result;
}

/* case: CASE WHEN cond THEN operand ... ELSE operand END AS "as". */
static void
emit_case(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	static const char *const whenkeys[] = {"if", "then", NULL};
	JsonbContainer *whens = recipe_array(rc, recipe_get(step, "when"), "when", 1, -1);
	JsonbValue *elsev = recipe_get(step, "else");
	int			n = JsonContainerSize(whens);
	StringInfoData e;

	initStringInfo(&e);
	appendStringInfoString(&e, "CASE");
	for (int i = 0; i < n; i++)
	{
		char	   *f = psprintf("when[%d]", i);
		JsonbContainer *w = recipe_object(rc, recipe_item(whens, i), f);

		CHECK_FOR_INTERRUPTS();
		recipe_check_keys(rc, w, f, whenkeys);
		appendStringInfoString(&e, " WHEN ");
		recipe_append_condition(rc, &e, recipe_get(w, "if"), psprintf("%s.if", f), "");
		appendStringInfoString(&e, " THEN ");
		recipe_append_operand(rc, &e, recipe_get(w, "then"), psprintf("%s.then", f), "");
	}
	if (elsev != NULL)
	{
		appendStringInfoString(&e, " ELSE ");
		recipe_append_operand(rc, &e, elsev, "else", "");
	}
	appendStringInfoString(&e, " END");
	finish_added_column(rc, out, e.data, new_name(rc, step), InvalidOid);
}

/* join: the previous step (l) joined with another source (r). */
static void
emit_join(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	static const char *const onkeys[] = {"left", "right", NULL};
	static const char *const hows[][2] = {{"inner", "JOIN"}, {"left", "LEFT JOIN"}, {"right", "RIGHT JOIN"}, {"full", "FULL JOIN"}};
	List	   *right_cols;
	List	   *saved = rc->columns;
	char	   *rel = recipe_source_relation(rc, recipe_get(step, "with"), "with", &right_cols);
	JsonbValue *howv = recipe_get(step, "how");
	char	   *how = howv ? recipe_string(rc, howv, "how") : "inner";
	const char *sqlhow = NULL;
	JsonbContainer *on = recipe_array(rc, recipe_get(step, "on"), "on", 1, -1);
	List	   *picked;
	List	   *result = list_copy(rc->columns);
	StringInfoData cond;
	ListCell   *lc;

	for (int i = 0; i < (int) lengthof(hows); i++)
		if (strcmp(how, hows[i][0]) == 0)
			sqlhow = hows[i][1];
	if (sqlhow == NULL)
		recipe_error(rc, "how", "must be inner, left, right or full");

	initStringInfo(&cond);
	for (int i = 0; i < (int) JsonContainerSize(on); i++)	/* on: at most max_list_items */
	{
		char	   *f = psprintf("on[%d]", i);
		JsonbContainer *pair = recipe_object(rc, recipe_item(on, i), f);
		char	   *fl = psprintf("%s.left", f);
		char	   *fr = psprintf("%s.right", f);
		RecipeColumn *l;
		RecipeColumn *r;

		CHECK_FOR_INTERRUPTS();
		recipe_check_keys(rc, pair, f, onkeys);
		l = recipe_require_column(rc, fl, recipe_name(rc, recipe_get(pair, "left"), fl));
		rc->columns = right_cols;
		r = recipe_require_column(rc, fr, recipe_name(rc, recipe_get(pair, "right"), fr));
		rc->columns = saved;
		if (i > 0)
			appendStringInfoString(&cond, " AND ");
		appendStringInfoString(&cond, "l.");
		recipe_append_ident(&cond, l->name);
		appendStringInfoString(&cond, " = r.");
		recipe_append_ident(&cond, r->name);
	}

	rc->columns = right_cols;
	picked = column_names(rc, recipe_get(step, "columns"), "columns", 0);
	rc->columns = saved;

	appendStringInfoString(out, "SELECT ");
	append_columns(out, saved, "l.");
	foreach(lc, picked)
	{
		RecipeColumn *c = lfirst(lc);
		char	   *name = c->name;

		for (int k = 2; recipe_find_column(result, name) != NULL; k++)
		{
			CHECK_FOR_INTERRUPTS();
			name = psprintf("%s_%d", c->name, k);
		}
		if (strlen(name) >= NAMEDATALEN)
			recipe_error(rc, "columns", "column name \"%s\" would be longer than %d bytes", name, NAMEDATALEN - 1);
		appendStringInfoString(out, ", r.");
		recipe_append_ident(out, c->name);
		if (name != c->name)
		{
			appendStringInfoString(out, " AS ");
			recipe_append_ident(out, name);
		}
		result = lappend(result, recipe_new_column(name, c->type, c->typmod));
	}
	appendStringInfo(out, " FROM %s l %s %s r ON %s", prev(rc), sqlhow, rel, cond.data);
	rc->columns = result;
}

/* union: UNION ALL by column name; missing columns become typed NULLs. */
static void
emit_union(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	JsonbContainer *with = recipe_array(rc, recipe_get(step, "with"), "with", 1, -1);
	int			n = JsonContainerSize(with);
	List	  **parts = palloc(sizeof(List *) * (n + 1));
	char	  **rels = palloc(sizeof(char *) * (n + 1));
	List	   *all;
	ListCell   *lc;

	if (list_length(rc->columns) > 0)
	{
		bool		known = true;

		foreach(lc, rc->columns)
			if (!OidIsValid(((RecipeColumn *) lfirst(lc))->type))
				known = false;
		if (!known)
			analyze_output(rc, rc->step - 1);
	}
	parts[0] = rc->columns;
	rels[0] = prev(rc);
	all = list_copy(rc->columns);
	for (int i = 0; i < n; i++)
	{
		char	   *f = psprintf("with[%d]", i);

		rels[i + 1] = recipe_source_relation(rc, recipe_item(with, i), f, &parts[i + 1]);
		foreach(lc, parts[i + 1])
		{
			RecipeColumn *c = lfirst(lc);
			RecipeColumn *have = recipe_find_column(all, c->name);

			CHECK_FOR_INTERRUPTS();
			if (have == NULL)
			{
				all = lappend(all, c);
				check_column_count(rc, f, list_length(all));
			}
			else if (have->type != c->type)
				recipe_error(rc, f, "column \"%s\" is %s here but %s before; cast one of them first",
							 c->name, format_type_be(c->type), format_type_be(have->type));
		}
	}
	for (int i = 0; i <= n; i++)
	{
		check_sql_size(rc, (int64) rc->sql.len + out->len);
		if (i > 0)
			appendStringInfoString(out, " UNION ALL ");
		appendStringInfoString(out, "SELECT ");
		foreach(lc, all)
		{
			RecipeColumn *c = lfirst(lc);

			CHECK_FOR_INTERRUPTS();
			if (lc != list_head(all))
				appendStringInfoString(out, ", ");
			if (recipe_find_column(parts[i], c->name) != NULL)
				recipe_append_ident(out, c->name);
			else
			{
				appendStringInfo(out, "CAST(NULL AS %s) AS ", recipe_format_type(c->type, c->typmod));
				recipe_append_ident(out, c->name);
			}
		}
		appendStringInfo(out, " FROM %s", rels[i]);
	}
	rc->columns = all;
}

/* pivot: one column per listed value, grouped. */
static void
emit_pivot(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	RecipeColumn *col = recipe_require_column(rc, "column", recipe_name(rc, recipe_get(step, "column"), "column"));
	JsonbContainer *values = recipe_array(rc, recipe_get(step, "values"), "values", 1, -1);
	JsonbValue *gbv = recipe_get(step, "group_by");
	List	   *by = gbv ? column_names(rc, gbv, "group_by", 0) : NIL;
	JsonbValue *fnv = recipe_get(step, "fn");
	JsonbValue *vcv = recipe_get(step, "value_column");
	List	   *result = list_copy(by);
	const char *sqlfn = NULL;
	RecipeColumn *vcol = NULL;
	int			n = JsonContainerSize(values);

	if ((fnv == NULL) != (vcv == NULL))
		recipe_error(rc, fnv ? "value_column" : "fn", "\"fn\" and \"value_column\" go together");
	if (fnv != NULL)
	{
		static const char *const fns[][2] = {{"count", "COUNT"}, {"sum", "SUM"}, {"avg", "AVG"}, {"min", "MIN"}, {"max", "MAX"}};
		char	   *fn = recipe_string(rc, fnv, "fn");

		for (int i = 0; i < (int) lengthof(fns); i++)
			if (strcmp(fn, fns[i][0]) == 0)
				sqlfn = fns[i][1];
		if (sqlfn == NULL)
			recipe_error(rc, "fn", "unknown aggregate \"%s\" (use count, sum, avg, min or max)", fn);
		vcol = recipe_require_column(rc, "value_column", recipe_name(rc, vcv, "value_column"));
	}
	appendStringInfoString(out, "SELECT ");
	append_columns(out, by, "");
	for (int i = 0; i < n; i++)
	{
		char	   *f = psprintf("values[%d]", i);
		char	   *value = recipe_name(rc, recipe_item(values, i), f);

		CHECK_FOR_INTERRUPTS();
		recipe_check_new_name(rc, result, f, value);
		if (i > 0 || by != NIL)
			appendStringInfoString(out, ", ");
		if (vcol == NULL)
		{
			appendStringInfoString(out, "SUM(CASE WHEN ");
			recipe_append_ident(out, col->name);
			appendStringInfo(out, " = %s THEN 1 ELSE 0 END) AS ", quote_literal_cstr(value));
		}
		else
		{
			appendStringInfo(out, "%s(", sqlfn);
			recipe_append_ident(out, vcol->name);
			appendStringInfoString(out, ") FILTER (WHERE ");
			recipe_append_ident(out, col->name);
			appendStringInfo(out, " = %s) AS ", quote_literal_cstr(value));
		}
		recipe_append_ident(out, value);
		result = lappend(result, recipe_new_column(value, vcol == NULL ? INT8OID : InvalidOid, -1));
	}
	appendStringInfo(out, " FROM %s", prev(rc));
	if (by != NIL)
	{
		appendStringInfoString(out, " GROUP BY ");
		append_columns(out, by, "");
	}
	rc->columns = result;
}

/* unpivot: one row per listed column, as (name, value). */
static void
emit_unpivot(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	List	   *cols = column_names(rc, recipe_get(step, "columns"), "columns", 1);
	JsonbValue *keepv = recipe_get(step, "keep");
	List	   *keep = keepv ? column_names(rc, keepv, "keep", 0) : NIL;
	JsonbValue *nv = recipe_get(step, "name_as");
	JsonbValue *vv = recipe_get(step, "value_as");
	JsonbValue *cv = recipe_get(step, "cast_to");
	char	   *name_as = nv ? recipe_name(rc, nv, "name_as") : "field_name";
	char	   *value_as = vv ? recipe_name(rc, vv, "value_as") : "value";
	Oid			type;
	int32		typmod;
	char	   *canonical = recipe_parse_type(rc, "cast_to", cv ? recipe_string(rc, cv, "cast_to") : "text",
											  &type, &typmod);
	List	   *result = list_copy(keep);
	ListCell   *lc;
	char	   *p = prev(rc);

	foreach(lc, cols)
	{
		CHECK_FOR_INTERRUPTS();
		if (recipe_find_column(keep, ((RecipeColumn *) lfirst(lc))->name) != NULL)
			recipe_error(rc, "keep", "column \"%s\" is both kept and unpivoted", ((RecipeColumn *) lfirst(lc))->name);
	}
	recipe_check_new_name(rc, result, "name_as", name_as);
	result = lappend(result, recipe_new_column(name_as, TEXTOID, -1));
	recipe_check_new_name(rc, result, "value_as", value_as);
	result = lappend(result, recipe_new_column(value_as, type, typmod));
	((RecipeColumn *) llast(result))->weight = rc->ref_weight + 1;

	appendStringInfoString(out, "SELECT ");
	append_columns(out, keep, "s.");
	appendStringInfo(out, "%su.", keep != NIL ? ", " : "");
	recipe_append_ident(out, name_as);
	appendStringInfoString(out, ", u.");
	recipe_append_ident(out, value_as);
	appendStringInfo(out, " FROM %s s CROSS JOIN LATERAL (VALUES ", p);
	foreach(lc, cols)
	{
		RecipeColumn *c = lfirst(lc);

		CHECK_FOR_INTERRUPTS();
		if (lc != list_head(cols))
			appendStringInfoString(out, ", ");
		appendStringInfo(out, "(%s, CAST(s.", quote_literal_cstr(c->name));
		recipe_append_ident(out, c->name);
		appendStringInfo(out, " AS %s))", canonical);
	}
	appendStringInfoString(out, ") u(");
	recipe_append_ident(out, name_as);
	appendStringInfoString(out, ", ");
	recipe_append_ident(out, value_as);
	appendStringInfoChar(out, ')');
	rc->columns = result;
}

/*
 * Functions a recipe may call, with their argument counts; the guarded ones
 * can build a value larger than their inputs and are called through
 * dalgo_recipe, which refuses a result over max_value_bytes.
 */
static const struct
{
	const char *name;
	int			min_args;
	int			max_args;
	bool		guarded;
}			function_whitelist[] = {
	{"abs", 1, 1}, {"btrim", 1, 2}, {"ceil", 1, 1}, {"concat_ws", 2, 100, true}, {"date_part", 2, 2},
	{"date_trunc", 2, 3}, {"floor", 1, 1}, {"initcap", 1, 1}, {"left", 2, 2}, {"length", 1, 1},
	{"lower", 1, 1}, {"lpad", 2, 3, true}, {"ltrim", 1, 2}, {"md5", 1, 1}, {"mod", 2, 2},
	{"power", 2, 2}, {"replace", 3, 3, true}, {"reverse", 1, 1}, {"right", 2, 2}, {"round", 1, 2},
	{"rpad", 2, 3, true}, {"rtrim", 1, 2}, {"sign", 1, 1}, {"split_part", 3, 3}, {"sqrt", 1, 1},
	{"strpos", 2, 2}, {"substr", 2, 3}, {"to_char", 2, 2}, {"to_date", 2, 2}, {"to_number", 2, 2},
	{"to_timestamp", 1, 2}, {"trunc", 1, 2}, {"upper", 1, 1}
};

/* function: a whitelisted function, schema-qualified. */
static void
emit_function(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	char	   *fn = recipe_string(rc, recipe_get(step, "fn"), "fn");
	JsonbValue *argsv = recipe_get(step, "args");
	JsonbContainer *args;
	int			idx = -1;
	int			n;
	StringInfoData e;

	for (int i = 0; i < (int) lengthof(function_whitelist); i++)
		if (strcmp(fn, function_whitelist[i].name) == 0)
			idx = i;
	if (idx < 0)
		recipe_error(rc, "fn", "function \"%s\" is not allowed", fn);
	args = recipe_array(rc, argsv, "args", function_whitelist[idx].min_args, function_whitelist[idx].max_args);
	n = JsonContainerSize(args);
	initStringInfo(&e);
	/* the functions that can build a larger value than their inputs are guarded */
	appendStringInfo(&e, "%s.%s(", function_whitelist[idx].guarded ? "dalgo_recipe" : "pg_catalog", fn);
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (i > 0)
			appendStringInfoString(&e, ", ");
		recipe_append_operand(rc, &e, recipe_item(args, i), psprintf("args[%d]", i), "");
	}
	appendStringInfoChar(&e, ')');
	finish_added_column(rc, out, e.data, new_name(rc, step), InvalidOid);
}

/* sort: ORDER BY columns. */
static void
emit_sort(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	static const char *const keys[] = {"column", "desc", NULL};
	JsonbContainer *by = recipe_array(rc, recipe_get(step, "by"), "by", 1, -1);
	int			n = JsonContainerSize(by);

	appendStringInfoString(out, "SELECT ");
	append_columns(out, rc->columns, "");
	appendStringInfo(out, " FROM %s ORDER BY ", prev(rc));
	for (int i = 0; i < n; i++)
	{
		char	   *f = psprintf("by[%d]", i);
		JsonbContainer *o = recipe_object(rc, recipe_item(by, i), f);
		char	   *fc = psprintf("%s.column", f);
		RecipeColumn *c;
		bool		desc;

		CHECK_FOR_INTERRUPTS();
		recipe_check_keys(rc, o, f, keys);
		c = recipe_require_column(rc, fc, recipe_name(rc, recipe_get(o, "column"), fc));
		desc = recipe_bool(rc, recipe_get(o, "desc"), psprintf("%s.desc", f), false);
		if (i > 0)
			appendStringInfoString(out, ", ");
		recipe_append_ident(out, c->name);
		appendStringInfoString(out, desc ? " DESC NULLS LAST" : " ASC NULLS LAST");
	}
}

/* distinct: SELECT DISTINCT, or DISTINCT ON (columns). */
static void
emit_distinct(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	JsonbValue *colsv = recipe_get(step, "columns");

	appendStringInfoString(out, "SELECT DISTINCT ");
	if (colsv != NULL)
	{
		List	   *on = column_names(rc, colsv, "columns", 1);

		appendStringInfoString(out, "ON (");
		append_columns(out, on, "");
		appendStringInfoString(out, ") ");
	}
	append_columns(out, rc->columns, "");
	appendStringInfo(out, " FROM %s", prev(rc));
}

/* limit: at most n rows. */
static void
emit_limit(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	JsonbValue *nv = recipe_get(step, "n");
	int64		n;

	if (nv == NULL)
		recipe_error(rc, "n", "is required");
	if (nv->type != jbvNumeric)
		recipe_error(rc, "n", "must be a number");
	if (numeric_is_nan(nv->val.numeric) || numeric_is_inf(nv->val.numeric) ||
		DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(nv->val.numeric),
										  DirectFunctionCall1(numeric_floor, NumericGetDatum(nv->val.numeric)))) != 0)
		recipe_error(rc, "n", "must be a whole number");
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(nv->val.numeric),
										  DirectFunctionCall1(int8_numeric, Int64GetDatum(PG_INT32_MAX)))) > 0 ||
		DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(nv->val.numeric),
										  DirectFunctionCall1(int8_numeric, Int64GetDatum(0)))) < 0)
		recipe_error(rc, "n", "must be between 0 and %d", PG_INT32_MAX);
	n = DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(nv->val.numeric)));
	if (n < 0 || n > PG_INT32_MAX)
		recipe_error(rc, "n", "must be between 0 and %d", PG_INT32_MAX);
	appendStringInfoString(out, "SELECT ");
	append_columns(out, rc->columns, "");
	appendStringInfo(out, " FROM %s LIMIT " INT64_FORMAT, prev(rc), n);
}

/* sql: raw SQL, only when a superuser allowed it and the caller is an admin. */
static void
emit_sql(RecipeCompiler *rc, JsonbContainer *step, StringInfo out)
{
	char	   *select = recipe_string(rc, recipe_get(step, "select"), "select");
	JsonbValue *tailv = recipe_get(step, "tail");
	char	   *tail = tailv ? recipe_string(rc, tailv, "tail") : "";
	char	   *stmt;

	if (!dalgo_allow_raw_sql)
		recipe_error(rc, NULL, "raw SQL steps are disabled (a superuser can turn on dalgo.allow_raw_sql)");
	if (!dalgo_caller_may(&rc->org, DALGO_ROLE_ADMIN))
		recipe_error(rc, NULL, "only an admin of the organization may use a raw SQL step");
	stmt = psprintf("SELECT %s FROM %s %s", select, prev(rc), tail);
	recipe_check_raw_select(rc, "select", stmt);
	appendStringInfoString(out, stmt);
}

typedef struct StepKind
{
	const char *name;
	step_emitter emit;
	const char *keys[9];
	bool		barrier;		/* the planner never inlines this step's query */
} StepKind;

static const StepKind step_kinds[] = {
	{"select", emit_select, {"type", "columns"}},
	{"drop", emit_drop, {"type", "columns"}},
	{"rename", emit_rename, {"type", "columns"}},
	{"cast", emit_cast, {"type", "columns"}},
	{"arithmetic", emit_arithmetic, {"type", "op", "operands", "as"}},
	{"coalesce", emit_coalesce, {"type", "columns", "default", "as"}},
	{"concat", emit_concat, {"type", "parts", "as"}},
	{"flatten_json", emit_flatten_json, {"type", "column", "keys", "keep_source"}},
	{"regex_extract", emit_regex_extract, {"type", "column", "pattern", "as"}},
	{"replace", emit_replace, {"type", "column", "pairs", "as"}},
	{"filter", emit_filter, {"type", "match", "conditions"}},
	{"group", emit_group, {"type", "by", "aggregates"}, true},
	{"aggregate", emit_aggregate, {"type", "aggregates"}, true},
	{"case", emit_case, {"type", "when", "else", "as"}},
	{"join", emit_join, {"type", "with", "how", "on", "columns"}},
	{"union", emit_union, {"type", "with"}},
	{"pivot", emit_pivot, {"type", "column", "values", "group_by", "fn", "value_column"}, true},
	{"unpivot", emit_unpivot, {"type", "columns", "keep", "name_as", "value_as", "cast_to"}},
	{"function", emit_function, {"type", "fn", "args", "as"}},
	{"sort", emit_sort, {"type", "by"}, true},
	{"distinct", emit_distinct, {"type", "columns"}, true},
	{"limit", emit_limit, {"type", "n"}, true},
	{"sql", emit_sql, {"type", "select", "tail"}},
};

/* Whether the step just emitted weighs enough to be fenced. */
static bool
needs_fence(RecipeCompiler *rc)
{
	ListCell   *lc;

	if (rc->ref_weight > RECIPE_MAX_WEIGHT)
		return true;
	foreach(lc, rc->columns)
		if (((RecipeColumn *) lfirst(lc))->weight > RECIPE_MAX_WEIGHT)
			return true;
	return false;
}

/*
 * Compile a recipe for an organization into one SELECT; also returns the
 * transformations it reads (for the dependency graph).
 */
char *
dalgo_compile_recipe_text(const pg_uuid_t *org, Jsonb *recipe, List **dependencies)
{
	static const char *const topkeys[] = {"version", "source", "steps", NULL};
	RecipeCompiler rc;
	JsonbValue	root;
	JsonbContainer *top;
	JsonbValue *version;
	JsonbContainer *steps;
	char	   *source;
	int			nsteps;
	StringInfoData result;

	memset(&rc, 0, sizeof(rc));
	recipe_index_reset();
	rc.org = *org;
	rc.schema = dalgo_warehouse_schema_name(org);
	initStringInfo(&rc.sql);

	root.type = jbvBinary;
	root.val.binary.data = &recipe->root;
	root.val.binary.len = VARSIZE(recipe) - VARHDRSZ;
	if (JB_ROOT_IS_SCALAR(recipe) || !JB_ROOT_IS_OBJECT(recipe))
		recipe_error(&rc, NULL, "a recipe must be a JSON object");
	recipe_check_shape_limits(&rc, recipe);
	top = recipe_object(&rc, &root, "recipe");
	recipe_check_keys(&rc, top, "(top level)", topkeys);
	version = recipe_get(top, "version");
	if (version == NULL || version->type != jbvNumeric ||
		DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(version->val.numeric),
										  DirectFunctionCall1(int4_numeric, Int32GetDatum(1)))) != 0)
		recipe_error(&rc, "version", "must be 1");
	source = recipe_source_relation(&rc, recipe_get(top, "source"), "source", &rc.columns);
	steps = recipe_array_limited(&rc, recipe_get(top, "steps"), "steps", 0, -1,
								 "the number of steps", "max_steps", RECIPE_MAX_STEPS);
	nsteps = JsonContainerSize(steps);

	initStringInfo(&result);
	if (nsteps == 0)
	{
		appendStringInfo(&result, "SELECT * FROM %s", source);
		*dependencies = rc.dependencies;
		return result.data;
	}

	appendStringInfo(&rc.sql, "WITH _s0 AS (SELECT * FROM %s)", source);
	for (int i = 0; i < nsteps; i++)
	{
		JsonbContainer *step;
		JsonbValue *typev;
		char	   *type;
		const StepKind *kind = NULL;
		StringInfoData body;

		CHECK_FOR_INTERRUPTS();
		rc.step = i + 1;
		rc.steptype = "?";
		rc.ref_weight = 0;
		step = recipe_object(&rc, recipe_item(steps, i), "");
		typev = recipe_get(step, "type");
		if (typev == NULL)
			recipe_error(&rc, "type", "is required");
		type = recipe_string(&rc, typev, "type");
		for (int k = 0; k < (int) lengthof(step_kinds); k++)
			if (strcmp(type, step_kinds[k].name) == 0)
				kind = &step_kinds[k];
		if (kind == NULL)
			recipe_error(&rc, "type", "unknown step type \"%s\"", type);
		rc.steptype = kind->name;
		{
			const char *allowed[10];
			int			k;

			for (k = 0; k < 9 && kind->keys[k] != NULL; k++)
				allowed[k] = kind->keys[k];
			allowed[k] = NULL;
			recipe_check_keys(&rc, step, "", allowed);
		}
		initStringInfo(&body);
		kind->emit(&rc, step, &body);
		check_column_count(&rc, NULL, list_length(rc.columns));
		check_sql_size(&rc, (int64) rc.sql.len + body.len);
		if (kind->barrier || needs_fence(&rc))
		{
			/*
			 * The planner inlines each CTE into the next one and copies a
			 * column's expression into every place that names it: a chain
			 * of steps that each name a computed column twice would grow
			 * the plan exponentially.  A step whose expressions got heavy
			 * is fenced (a subquery with OFFSET 0 is not inlined), and the
			 * steps the planner never inlines (grouping, sorting, limits)
			 * are fences already: after either, each column weighs 1.
			 */
			ListCell   *lc;

			if (!kind->barrier)
			{
				StringInfoData fenced;

				initStringInfo(&fenced);
				appendStringInfo(&fenced, "SELECT * FROM (%s) _f OFFSET 0", body.data);
				body = fenced;
			}
			foreach(lc, rc.columns)
				((RecipeColumn *) lfirst(lc))->weight = 1;
		}
		appendStringInfo(&rc.sql, ",\n_s%d AS (%s)", rc.step, body.data);
		if (strcmp(kind->name, "sql") == 0)
			analyze_output(&rc, rc.step);
	}
	appendStringInfo(&result, "%s\nSELECT * FROM _s%d", rc.sql.data, nsteps);
	*dependencies = rc.dependencies;
	return result.data;
}

/* SQL: dalgo.compile_recipe(organization_id uuid, recipe jsonb) returns text. */
Datum
dalgo_compile_recipe(PG_FUNCTION_ARGS)
{
	List	   *deps;
	DalgoDeadline deadline;
	char	   *volatile sql = NULL;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("recipe: organization_id and recipe are required")));
	if (!dalgo_caller_may(PG_GETARG_UUID_P(0), DALGO_ROLE_VIEWER))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("organization %s does not exist or you are not a member",
						DatumGetCString(DirectFunctionCall1(uuid_out, PG_GETARG_DATUM(0))))));
	/* compilation runs under the statement's dalgo.statement_timeout (deadline.c) */
	dalgo_deadline_enter(&deadline);
	PG_TRY();
	{
		sql = dalgo_compile_recipe_text(PG_GETARG_UUID_P(0), PG_GETARG_JSONB_P(1), &deps);
	}
	PG_CATCH();
	{
		dalgo_deadline_leave(&deadline);
		PG_RE_THROW();
	}
	PG_END_TRY();
	dalgo_deadline_leave(&deadline);
	PG_RETURN_TEXT_P(cstring_to_text(sql));
}

/* Define the recipe settings. */
void
dalgo_recipe_init(void)
{
	DefineCustomBoolVariable("dalgo.allow_raw_sql",
							 "Allow recipes' raw sql steps (for organization admins only).",
							 NULL,
							 &dalgo_allow_raw_sql,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);
	DefineCustomStringVariable("dalgo.change_description",
							   "Description recorded with the next transformation version.",
							   "Set it (SET LOCAL) before saving a recipe.",
							   &dalgo_change_description,
							   "",
							   PGC_USERSET,
							   0,
							   NULL, NULL, NULL);
}
