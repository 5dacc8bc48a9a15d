/*
 * recipe_resolve.c
 *		Names in a recipe, resolved inside the organization's own warehouse
 *		only: sources, transformations and tables become relations of schema
 *		org_<id>, and column lists come from the catalog.  Also the checks
 *		that need PostgreSQL's own parser (types, regular expressions, the raw
 *		SQL step), each run in a subtransaction so that a bad input becomes a
 *		recipe error rather than a parser error.
 */
#include "recipe.h"

#include "access/relation.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "parser/parse_type.h"
#include "parser/parser.h"
#include "regex/regex.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/plancache.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/uuid.h"

/* A new column descriptor. */
RecipeColumn *
recipe_new_column(const char *name, Oid type, int32 typmod)
{
	RecipeColumn *c = palloc(sizeof(RecipeColumn));

	c->name = pstrdup(name);
	c->type = type;
	c->typmod = typmod;
	c->weight = 1;
	return c;
}

/*
 * Column lookups by name use a hash index per column list, so that a step
 * over n columns costs O(n), not O(n^2).  Lists only grow in place
 * (lappend) or are replaced, so an index keyed by the list's address stays
 * valid while it covers a prefix of the list; it is extended with the items
 * appended since.  A few indexes are kept; recipe_index_reset() forgets
 * them when a compilation starts (their memory belongs to the previous one).
 */
#define RECIPE_INDEX_SLOTS 8
#define RECIPE_INDEX_MIN 16		/* shorter lists are searched linearly */

typedef struct ColumnIndexEntry
{
	char		name[NAMEDATALEN];
	RecipeColumn *column;
} ColumnIndexEntry;

typedef struct ColumnIndex
{
	List	   *list;
	int			covered;		/* items of list in the hash table */
	HTAB	   *hash;
	uint64		used;			/* for least-recently-used replacement */
} ColumnIndex;

static ColumnIndex column_indexes[RECIPE_INDEX_SLOTS];
static uint64 column_index_clock = 0;

/* Forget every column index (a new compilation starts). */
void
recipe_index_reset(void)
{
	memset(column_indexes, 0, sizeof(column_indexes));
	column_index_clock = 0;
}

/* The hash index of a column list, built or extended as needed. */
static HTAB *
column_index(List *columns)
{
	ColumnIndex *slot = NULL;
	int			n = list_length(columns);

	for (int i = 0; i < RECIPE_INDEX_SLOTS; i++)
		if (column_indexes[i].list == columns && column_indexes[i].hash != NULL)
			slot = &column_indexes[i];
	if (slot != NULL && slot->covered > n)
		slot->hash = NULL;		/* cannot happen: lists do not shrink */
	if (slot == NULL || slot->hash == NULL)
	{
		HASHCTL		ctl;

		if (slot == NULL)
		{
			slot = &column_indexes[0];
			for (int i = 1; i < RECIPE_INDEX_SLOTS; i++)
				if (column_indexes[i].used < slot->used)
					slot = &column_indexes[i];
		}
		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(ColumnIndexEntry);
		ctl.hcxt = CurrentMemoryContext;
		slot->hash = hash_create("dalgo recipe columns", Max(n, 64), &ctl,
								 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		slot->list = columns;
		slot->covered = 0;
	}
	for (; slot->covered < n; slot->covered++)
	{
		RecipeColumn *c = list_nth(columns, slot->covered);
		bool		found;
		ColumnIndexEntry *e;

		CHECK_FOR_INTERRUPTS();
		e = hash_search(slot->hash, c->name, HASH_ENTER, &found);
		if (!found)
			e->column = c;
	}
	slot->used = ++column_index_clock;
	return slot->hash;
}

/* The column called name, or NULL (the first one, if a list has two). */
RecipeColumn *
recipe_find_column(List *columns, const char *name)
{
	ColumnIndexEntry *e;

	if (strlen(name) >= NAMEDATALEN)
		return NULL;
	if (list_length(columns) < RECIPE_INDEX_MIN)
	{
		ListCell   *lc;

		foreach(lc, columns)
			if (strcmp(((RecipeColumn *) lfirst(lc))->name, name) == 0)
				return lfirst(lc);
		return NULL;
	}
	e = hash_search(column_index(columns), name, HASH_FIND, NULL);
	return e ? e->column : NULL;
}

/* The column called name, or an error with the available columns. */
RecipeColumn *
recipe_require_column(RecipeCompiler *rc, const char *field, const char *name)
{
	RecipeColumn *c = recipe_find_column(rc->columns, name);

	if (c == NULL)
		recipe_column_error(rc, field, name);
	rc->ref_weight += c->weight;
	return c;
}

/* A new output name must not collide with an existing column. */
void
recipe_check_new_name(RecipeCompiler *rc, List *columns, const char *field, const char *name)
{
	if (recipe_find_column(columns, name) != NULL)
		recipe_error(rc, field, "column \"%s\" already exists", name);
}

/* Look up a uuid-keyed name in a dalgo table of this organization, as the caller sees it. */
static char *
lookup_owned_name(RecipeCompiler *rc, const char *field, const char *what, const char *query,
				  const char *idtext)
{
	pg_uuid_t	id;
	Oid			types[2] = {UUIDOID, UUIDOID};
	Datum		values[2];
	char	   *result = NULL;
	int			rc_spi;

	if (!dalgo_parse_uuid(idtext, strlen(idtext), &id))
		recipe_error(rc, field, "\"%s\" is not a uuid", idtext);
	values[0] = UUIDPGetDatum(&id);
	values[1] = UUIDPGetDatum(&rc->org);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc_spi = SPI_execute_with_args(query, 2, types, values, NULL, true, 1);
	if (rc_spi == SPI_OK_SELECT && SPI_processed == 1)
	{
		char	   *name = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (name != NULL)
			result = MemoryContextStrdup(TopTransactionContext, name);
	}
	SPI_finish();
	if (result == NULL)
		recipe_error(rc, field, "unknown %s %s in this organization (or it has no warehouse table yet)",
					 what, idtext);
	return pstrdup(result);
}

/*
 * Resolve a source ({"source_id"}, {"transformation_id"} or {"table"}) to
 * a relation of the organization's warehouse; returns it as SQL and its
 * columns from the catalog.
 */
char *
recipe_source_relation(RecipeCompiler *rc, JsonbValue *source, const char *field, List **columns)
{
	static const char *const keys[] = {"source_id", "transformation_id", "table", NULL};
	JsonbContainer *obj = recipe_object(rc, source, field);
	JsonbValue *sid = recipe_get(obj, "source_id");
	JsonbValue *tid = recipe_get(obj, "transformation_id");
	JsonbValue *tbl = recipe_get(obj, "table");
	char	   *fkey;
	char	   *table;
	Oid			nsp;
	Oid			relid;
	Relation	rel;
	TupleDesc	desc;
	StringInfoData sql;

	recipe_check_keys(rc, obj, field, keys);
	if ((sid != NULL) + (tid != NULL) + (tbl != NULL) != 1)
		recipe_error(rc, field, "a source has exactly one of \"source_id\", \"transformation_id\" and \"table\"");

	if (sid != NULL)
	{
		fkey = psprintf("%s.source_id", field);
		table = lookup_owned_name(rc, fkey, "source", "SELECT warehouse_table_name FROM dalgo.sources"
								  " WHERE id = $1 AND organization_id = $2 AND deleted_at IS NULL",
								  recipe_string(rc, sid, fkey));
	}
	else if (tid != NULL)
	{
		pg_uuid_t  *dep = palloc(sizeof(pg_uuid_t));
		char	   *idtext;

		fkey = psprintf("%s.transformation_id", field);
		idtext = recipe_string(rc, tid, fkey);
		table = lookup_owned_name(rc, fkey, "transformation", "SELECT output_table_name FROM dalgo.transformations"
								  " WHERE id = $1 AND organization_id = $2 AND deleted_at IS NULL", idtext);
		(void) dalgo_parse_uuid(idtext, strlen(idtext), dep);
		rc->dependencies = lappend(rc->dependencies, dep);
	}
	else
	{
		fkey = psprintf("%s.table", field);
		table = recipe_name(rc, tbl, fkey);
	}

	nsp = get_namespace_oid(rc->schema, true);
	relid = OidIsValid(nsp) ? get_relname_relid(table, nsp) : InvalidOid;
	if (!OidIsValid(relid))
		recipe_error(rc, fkey, "unknown table \"%s\" in the organization's warehouse", table);

	rel = relation_open(relid, AccessShareLock);
	if (rel->rd_rel->relkind != RELKIND_RELATION && rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE &&
		rel->rd_rel->relkind != RELKIND_VIEW && rel->rd_rel->relkind != RELKIND_MATVIEW &&
		rel->rd_rel->relkind != RELKIND_FOREIGN_TABLE)
		recipe_error(rc, fkey, "\"%s\" is not a table or view", table);
	desc = RelationGetDescr(rel);
	*columns = NIL;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped)
			*columns = lappend(*columns, recipe_new_column(NameStr(att->attname), att->atttypid, att->atttypmod));
	}
	relation_close(rel, AccessShareLock);

	initStringInfo(&sql);
	recipe_append_ident(&sql, rc->schema);
	appendStringInfoChar(&sql, '.');
	recipe_append_ident(&sql, table);
	return sql.data;
}

typedef void (*guarded_fn) (void *arg);

/*
 * Errors of the parser and of type resolution that a recipe can cause:
 * these become recipe errors.  Everything else (a cancel or timeout, out of
 * memory, a limit, a deadlock, an internal error) is re-thrown unchanged.
 */
static bool
is_recipe_error(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_DATA_EXCEPTION:	/* 22: bad values, invalid regular expressions */
		case ERRCODE_SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION:	/* 42: syntax, unknown names, types */
		case ERRCODE_FEATURE_NOT_SUPPORTED: /* 0A */
			return true;
		default:
			return false;
	}
}

/*
 * Run fn in a subtransaction; a recipe error in it becomes a recipe error
 * for field, any other error is re-thrown as it was.
 */
static void
run_guarded(RecipeCompiler *rc, const char *field, const char *what, guarded_fn fn, void *arg)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		if (!is_recipe_error(edata->sqlerrcode))
			ReThrowError(edata);
		if (what != NULL)
			recipe_error(rc, field, "%s: %s", what, edata->message);
		recipe_error(rc, field, "%s", edata->message);
	}
	PG_END_TRY();
}

typedef struct TypeArg
{
	const char *str;
	const char *schema;			/* the organization's warehouse schema */
	Oid			nsp;			/* its namespace, or InvalidOid if none yet */
	Oid			type;
	int32		typmod;
} TypeArg;

/* Refuse a type name outside pg_catalog and the organization's warehouse schema. */
static void
refuse_type(TypeName *tn)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("type \"%s\" is neither a built-in type nor a type of the organization's warehouse",
					TypeNameToString(tn))));
}

/*
 * Guarded: parse a type name with PostgreSQL's own type-name grammar, then
 * look the name up by hand in pg_catalog and then the organization's
 * warehouse schema only: never through search_path, which for types
 * includes pg_temp (a caller's temporary domain or composite type).  An
 * explicit schema must be one of those two.  The type found is then handed
 * to the parser by OID (arrays and typmods as the grammar gave them).
 */
static void
parse_type_guarded(void *arg)
{
	TypeArg    *t = arg;
	TypeName   *tn = typeStringToTypeName(t->str);
	char	   *schemaname;
	char	   *typname;
	Oid			typoid = InvalidOid;
	Type		typ;

	if (tn->pct_type || tn->setof || tn->names == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("not a plain type name")));
	DeconstructQualifiedName(tn->names, &schemaname, &typname);
	if (schemaname != NULL && strcmp(schemaname, "pg_catalog") != 0 && strcmp(schemaname, t->schema) != 0)
		refuse_type(tn);
	if (schemaname == NULL || strcmp(schemaname, "pg_catalog") == 0)
		typoid = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid, PointerGetDatum(typname),
								 ObjectIdGetDatum(PG_CATALOG_NAMESPACE));
	if (!OidIsValid(typoid) && OidIsValid(t->nsp) && (schemaname == NULL || strcmp(schemaname, t->schema) == 0))
		typoid = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid, PointerGetDatum(typname),
								 ObjectIdGetDatum(t->nsp));
	if (!OidIsValid(typoid))
	{
		/* Say "not allowed" for a type that exists elsewhere, "does not exist" otherwise. */
		if (schemaname == NULL && OidIsValid(TypenameGetTypid(typname)))
			refuse_type(tn);
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("type \"%s\" does not exist", TypeNameToString(tn))));
	}
	tn->names = NIL;
	tn->typeOid = typoid;
	typ = LookupTypeName(NULL, tn, NULL, false);
	if (typ == NULL)
		elog(ERROR, "cache lookup failed for type %u", typoid);
	if (!((Form_pg_type) GETSTRUCT(typ))->typisdefined)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("type \"%s\" is only a shell", typname)));
	ReleaseSysCache(typ);
	typenameTypeIdAndMod(NULL, tn, &t->type, &t->typmod);
}

/* A type as SQL, always schema-qualified (or one of SQL's own type keywords). */
char *
recipe_format_type(Oid type, int32 typmod)
{
	return format_type_extended(type, typmod, FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY);
}

/*
 * Resolve a type name of a recipe (cast, unpivot's cast_to): a built-in type
 * or one of the organization's warehouse schema, never a temporary or any
 * other schema's type; returns its canonical, schema-qualified spelling.
 */
char *
recipe_parse_type(RecipeCompiler *rc, const char *field, const char *typestr, Oid *type, int32 *typmod)
{
	TypeArg		t = {typestr, rc->schema, InvalidOid, InvalidOid, -1};

	if (typestr[0] == '\0' || strlen(typestr) > 200)
		recipe_error(rc, field, "invalid type name \"%s\"", typestr);
	t.nsp = get_namespace_oid(rc->schema, true);
	run_guarded(rc, field, psprintf("invalid type \"%s\"", typestr), parse_type_guarded, &t);
	if (get_typtype(t.type) == TYPTYPE_PSEUDO)
		recipe_error(rc, field, "type \"%s\" cannot be used here", typestr);
	*type = t.type;
	*typmod = t.typmod;
	return recipe_format_type(t.type, t.typmod);
}

/* Guarded: compile a regular expression. */
static void
check_regex_guarded(void *arg)
{
	(void) RE_compile_and_cache(cstring_to_text((const char *) arg), REG_ADVANCED, DEFAULT_COLLATION_OID);
}

/* A regular expression must compile. */
void
recipe_check_regex(RecipeCompiler *rc, const char *field, const char *pattern)
{
	run_guarded(rc, field, NULL, check_regex_guarded, unconstify(char *, pattern));
}

typedef struct AnalyzeArg
{
	const char *sql;
	Oid			role;			/* the organization's warehouse role */
	List	   *columns;
	char	   *denied;			/* a permission error's message, or NULL */
} AnalyzeArg;

/*
 * Guarded: parse-analyze a query as the warehouse role (never as the
 * caller, who may be a SECURITY DEFINER function's owner) and collect its
 * output columns.  On error the subtransaction's abort restores the user.
 */
static void
analyze_as_warehouse(AnalyzeArg *a)
{
	SPIPlanPtr	plan;
	List	   *sources;
	TupleDesc	desc;
	Oid			save_userid;
	int			save_sec;

	GetUserIdAndSecContext(&save_userid, &save_sec);
	if (!OidIsValid(a->role))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the organization has no warehouse yet")));
	SetUserIdAndSecContext(a->role, save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = SPI_prepare(a->sql, 0, NULL);
	if (plan == NULL)
		elog(ERROR, "could not prepare the query: %s", SPI_result_code_string(SPI_result));
	sources = SPI_plan_get_plan_sources(plan);
	desc = ((CachedPlanSource *) linitial(sources))->resultDesc;
	a->columns = NIL;
	for (int i = 0; desc != NULL && i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

		a->columns = lappend(a->columns, recipe_new_column(NameStr(att->attname), att->atttypid, att->atttypmod));
		MemoryContextSwitchTo(old);
	}
	SPI_freeplan(plan);
	SPI_finish();
	SetUserIdAndSecContext(save_userid, save_sec);
}

/*
 * Guarded: analyze_as_warehouse in a subtransaction of its own, so that a
 * permission error (the raw SQL names what the warehouse role may not
 * read) is kept apart and reported as such, not as a type error.
 */
static void
analyze_guarded(void *arg)
{
	AnalyzeArg *a = arg;
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		analyze_as_warehouse(a);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		if (edata->sqlerrcode != ERRCODE_INSUFFICIENT_PRIVILEGE)
			ReThrowError(edata);
		a->denied = edata->message;
	}
	PG_END_TRY();
}

/*
 * Learn the exact names and types of CTE _s<cte> by parse-analyzing the
 * query so far, with search_path pinned.  Only union (when a type is not
 * tracked) and the raw sql step need this.
 */
void
recipe_analyze_output(RecipeCompiler *rc, int cte)
{
	AnalyzeArg	a;
	StringInfoData q;
	ListCell   *lc;
	int			save_nestlevel;

	initStringInfo(&q);
	appendStringInfo(&q, "%s\nSELECT * FROM _s%d", rc->sql.data, cte);
	a.sql = q.data;
	a.role = get_role_oid(dalgo_warehouse_role_name(&rc->org), true);
	a.columns = NIL;
	a.denied = NULL;
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	run_guarded(rc, NULL, "the steps so far do not type-check", analyze_guarded, &a);
	AtEOXact_GUC(false, save_nestlevel);
	if (a.denied != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("recipe step %d (%s): %s", rc->step, rc->steptype ? rc->steptype : "?", a.denied)));
	rc->columns = NIL;
	foreach(lc, a.columns)
	{
		RecipeColumn *c = lfirst(lc);

		rc->columns = lappend(rc->columns, recipe_new_column(c->name, c->type, c->typmod));
	}
}

/* Guarded: the raw SQL must parse as exactly one SELECT. */
static void
check_raw_guarded(void *arg)
{
	List	   *stmts = raw_parser((const char *) arg, RAW_PARSE_DEFAULT);

	if (list_length(stmts) != 1 || !IsA(((RawStmt *) linitial(stmts))->stmt, SelectStmt))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("it must be a single SELECT")));
}

/* The raw sql step's statement must parse as a single SELECT. */
void
recipe_check_raw_select(RecipeCompiler *rc, const char *field, const char *sql)
{
	run_guarded(rc, field, "invalid SQL", check_raw_guarded, unconstify(char *, sql));
}

PG_FUNCTION_INFO_V1(dalgo_recipe_dependencies);

/* The transformation named by a source object ({"transformation_id": uuid}), if any. */
static List *
add_source_dependency(List *deps, JsonbValue *source)
{
	JsonbValue *tid;
	pg_uuid_t  *id;

	if (source == NULL || source->type != jbvBinary || !JsonContainerIsObject(source->val.binary.data))
		return deps;
	tid = recipe_get(source->val.binary.data, "transformation_id");
	if (tid == NULL || tid->type != jbvString)
		return deps;
	id = palloc(sizeof(pg_uuid_t));
	if (!dalgo_parse_uuid(tid->val.string.val, tid->val.string.len, id))
		return deps;
	return lappend(deps, id);
}

/* Order uuids bytewise, as uuid_cmp does. */
static int
uuid_ptr_cmp(const ListCell *a, const ListCell *b)
{
	return memcmp(lfirst(a), lfirst(b), UUID_LEN);
}

/*
 * SQL: dalgo.recipe_dependencies(recipe jsonb) returns uuid[]: the
 * transformations a recipe reads, taken only from where the recipe contract
 * allows a reference (the source, a join's "with", each of a union's "with"
 * sources), never from anywhere else in the recipe (a column named
 * transformation_id, a rename map, a literal).  Sorted, without duplicates;
 * a malformed recipe yields what its well-formed places name (saving it
 * fails in the compiler anyway).
 */
Datum
dalgo_recipe_dependencies(PG_FUNCTION_ARGS)
{
	List	   *deps = NIL;
	Datum	   *elems;
	int			n = 0;
	ListCell   *lc;

	if (!PG_ARGISNULL(0))
	{
		Jsonb	   *recipe = PG_GETARG_JSONB_P(0);

		if (JB_ROOT_IS_OBJECT(recipe) && !JB_ROOT_IS_SCALAR(recipe))
		{
			JsonbValue *steps;

			deps = add_source_dependency(deps, recipe_get(&recipe->root, "source"));
			steps = recipe_get(&recipe->root, "steps");
			if (steps != NULL && steps->type == jbvBinary && JsonContainerIsArray(steps->val.binary.data) &&
				!JsonContainerIsScalar(steps->val.binary.data))
			{
				int			nsteps = JsonContainerSize(steps->val.binary.data);

				for (int i = 0; i < nsteps; i++)
				{
					JsonbValue *step = recipe_item(steps->val.binary.data, i);
					JsonbValue *type;
					JsonbValue *with;

					CHECK_FOR_INTERRUPTS();
					if (step->type != jbvBinary || !JsonContainerIsObject(step->val.binary.data))
						continue;
					type = recipe_get(step->val.binary.data, "type");
					with = recipe_get(step->val.binary.data, "with");
					if (type == NULL || type->type != jbvString || with == NULL)
						continue;
					if (type->val.string.len == 4 && memcmp(type->val.string.val, "join", 4) == 0)
						deps = add_source_dependency(deps, with);
					else if (type->val.string.len == 5 && memcmp(type->val.string.val, "union", 5) == 0 &&
							 with->type == jbvBinary && JsonContainerIsArray(with->val.binary.data) &&
							 !JsonContainerIsScalar(with->val.binary.data))
					{
						int			nwith = JsonContainerSize(with->val.binary.data);

						for (int k = 0; k < nwith; k++)
							deps = add_source_dependency(deps, recipe_item(with->val.binary.data, k));
					}
				}
			}
		}
	}

	list_sort(deps, uuid_ptr_cmp);
	elems = palloc(sizeof(Datum) * (list_length(deps) + 1));
	foreach(lc, deps)
	{
		if (n > 0 && memcmp(DatumGetUUIDP(elems[n - 1]), lfirst(lc), UUID_LEN) == 0)
			continue;
		elems[n++] = UUIDPGetDatum((pg_uuid_t *) lfirst(lc));
	}
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
}
