/*
 * recipe.h
 *		Declarations shared by the recipe compiler's three files:
 *		recipe_parse.c (JSON access, errors, literals and identifiers),
 *		recipe_resolve.c (sources and column lists from the catalog) and
 *		recipe_emit.c (one CTE per step, and compile_recipe itself).
 */
#ifndef DALGO_RECIPE_H
#define DALGO_RECIPE_H

#include "dalgo.h"

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"

/*
 * Limits on what one recipe may ask of the compiler and of the server
 * (docs/recipes-limits.md).  Each keeps compilation linear and bounded; a
 * recipe over one is refused with program_limit_exceeded, naming the limit
 * and the figure.
 */
#define RECIPE_MAX_BYTES		(256 * 1024)	/* max_recipe_bytes: the recipe's jsonb size */
#define RECIPE_MAX_STEPS		500 /* max_steps */
#define RECIPE_MAX_COLUMNS		1600	/* max_columns: columns of any step's output */
#define RECIPE_MAX_KEYS			1000	/* max_flatten_keys: keys of one flatten_json step */
#define RECIPE_MAX_PAIRS		100 /* max_replace_pairs: pairs of one replace step */
#define RECIPE_MAX_ITEMS		1000	/* max_list_items: items of any other list or map */
#define RECIPE_MAX_STRING_BYTES	(16 * 1024) /* max_string_bytes: one string (key or value) */
#define RECIPE_MAX_DEPTH		32	/* max_nesting_depth: JSON nesting of the recipe */
#define RECIPE_MAX_SQL_BYTES	(4 * 1024 * 1024)	/* max_sql_bytes: the generated SQL */
#define RECIPE_MAX_ANALYZE		8	/* max_type_checks: union/sql steps that type-check the chain */
#define RECIPE_MAX_WEIGHT		2000	/* expression size before a step is fenced (OFFSET 0) */
#define RECIPE_MAX_VALUE_BYTES	(64 * 1024)	/* max_value_bytes: one computed text value */

/* One column of a step's output; type is InvalidOid where not tracked. */
typedef struct RecipeColumn
{
	char	   *name;
	Oid			type;
	int32		typmod;
	int64		weight;			/* size of its expression once the CTEs are inlined */
} RecipeColumn;

/* The compiler's state while it walks the steps. */
typedef struct RecipeCompiler
{
	pg_uuid_t	org;
	char	   *schema;			/* the organization's warehouse schema */
	int			step;			/* 1-based; 0 while compiling the source */
	const char *steptype;
	List	   *columns;		/* RecipeColumn *, the previous step's output */
	StringInfoData sql;			/* the WITH list so far */
	List	   *dependencies;	/* pg_uuid_t * of transformations read */
	bool		raw_sql_checked;
	int64		ref_weight;		/* weight of the column references made so far in this step */
	int			analyzed;		/* type checks of the chain so far */
} RecipeCompiler;

/* recipe_parse.c */
extern void recipe_limit_error(RecipeCompiler *rc, const char *field, const char *what,
							   int64 figure, const char *limit_name, int64 limit) pg_attribute_noreturn();
extern void recipe_check_shape_limits(RecipeCompiler *rc, Jsonb *recipe);
extern JsonbContainer *recipe_array_limited(RecipeCompiler *rc, JsonbValue *v, const char *field,
											int min_items, int max_items, const char *what,
											const char *limit_name, int limit);
extern void recipe_error(RecipeCompiler *rc, const char *field, const char *fmt,...) pg_attribute_printf(3, 4) pg_attribute_noreturn();
extern void recipe_column_error(RecipeCompiler *rc, const char *field, const char *name) pg_attribute_noreturn();
extern JsonbValue *recipe_get(JsonbContainer *obj, const char *key);
extern JsonbContainer *recipe_object(RecipeCompiler *rc, JsonbValue *v, const char *field);
extern JsonbContainer *recipe_array(RecipeCompiler *rc, JsonbValue *v, const char *field,
									int min_items, int max_items);
extern JsonbValue *recipe_item(JsonbContainer *array, int i);
extern char *recipe_string(RecipeCompiler *rc, JsonbValue *v, const char *field);
extern bool recipe_bool(RecipeCompiler *rc, JsonbValue *v, const char *field, bool dflt);
extern void recipe_check_keys(RecipeCompiler *rc, JsonbContainer *obj, const char *field,
							  const char *const *allowed);
extern char *recipe_name(RecipeCompiler *rc, JsonbValue *v, const char *field);
extern void recipe_append_ident(StringInfo buf, const char *name);
extern void recipe_append_literal(RecipeCompiler *rc, StringInfo buf, JsonbValue *v, const char *field);
extern void recipe_append_operand(RecipeCompiler *rc, StringInfo buf, JsonbValue *v,
								  const char *field, const char *prefix);
extern void recipe_append_condition(RecipeCompiler *rc, StringInfo buf, JsonbValue *v,
									const char *field, const char *prefix);

/* recipe_resolve.c */
extern char *recipe_source_relation(RecipeCompiler *rc, JsonbValue *source, const char *field,
									List **columns);
extern void recipe_index_reset(void);
extern RecipeColumn *recipe_find_column(List *columns, const char *name);
extern RecipeColumn *recipe_require_column(RecipeCompiler *rc, const char *field, const char *name);
extern RecipeColumn *recipe_new_column(const char *name, Oid type, int32 typmod);
extern void recipe_check_new_name(RecipeCompiler *rc, List *columns, const char *field, const char *name);
extern char *recipe_parse_type(RecipeCompiler *rc, const char *field, const char *typestr,
							   Oid *type, int32 *typmod);
extern char *recipe_format_type(Oid type, int32 typmod);
extern void recipe_check_regex(RecipeCompiler *rc, const char *field, const char *pattern);
extern void recipe_analyze_output(RecipeCompiler *rc, int cte);
extern void recipe_check_raw_select(RecipeCompiler *rc, const char *field, const char *sql);

#endif							/* DALGO_RECIPE_H */
