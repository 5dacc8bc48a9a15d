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

/* Recipes longer than this are refused. */
#define RECIPE_MAX_STEPS 500

/* One column of a step's output; type is InvalidOid where not tracked. */
typedef struct RecipeColumn
{
	char	   *name;
	Oid			type;
	int32		typmod;
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
} RecipeCompiler;

/* recipe_parse.c */
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
extern char *recipe_warehouse_schema_name(const pg_uuid_t *org);
extern char *recipe_source_relation(RecipeCompiler *rc, JsonbValue *source, const char *field,
									List **columns);
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
