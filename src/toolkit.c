/*
 * toolkit.c
 *		C parts of the toolkit that secures any schema (sql/toolkit.sql):
 *
 *	- dalgo.redact_jsonb(value, keys, pii): recursive redaction of a jsonb
 *	  document by the same rules as the audit trail (src/redact.c: secret
 *	  key names, credentials inside strings), with an optional list of keys
 *	  and, when asked, e-mail addresses and phone numbers found in values;
 *	- dalgo_internal.redact_trigger(): the BEFORE trigger dalgo.enable_redaction()
 *	  attaches;
 *	- dalgo_internal.toolkit_condition(tbl, condition): parses and analyzes the
 *	  condition of dalgo.enable_public_read() as a boolean expression over
 *	  the table's own columns and returns it deparsed;
 *	- dalgo_internal.toolkit_policy_problems(qual): what dalgo.security_report() says
 *	  about the functions a policy expression calls;
 *	- dalgo_internal.is_secret_name(name): the audit trail's test of a secret name.
 */
#include "dalgo.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parse_clause.h"
#include "parser/parse_collate.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "parser/parser.h"
#include "rewrite/rewriteHandler.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"

PG_FUNCTION_INFO_V1(dalgo_redact_jsonb_keys);
PG_FUNCTION_INFO_V1(dalgo_redact_trigger);
PG_FUNCTION_INFO_V1(dalgo_toolkit_condition);
PG_FUNCTION_INFO_V1(dalgo_toolkit_policy_problems);
PG_FUNCTION_INFO_V1(dalgo_is_secret_name);

#define PII_MASK "***"

/* What a redaction pass redacts. */
typedef struct RedactOptions
{
	int			nkeys;			/* -1: the default secret names */
	char	  **keys;			/* keys to redact, compared case-insensitively */
	int		   *keylens;
	bool		pii;			/* mask e-mail addresses and phone numbers */
} RedactOptions;

/* True if key names a value this pass redacts. */
static bool
key_redacted(const RedactOptions *opt, const char *key, int len)
{
	if (opt->nkeys < 0)
		return dalgo_secret_key(key, len);
	for (int i = 0; i < opt->nkeys; i++)
		if (opt->keylens[i] == len && pg_strncasecmp(opt->keys[i], key, len) == 0)
			return true;
	return false;
}

/* Characters of the local part or domain of an e-mail address. */
static inline bool
email_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}

/* Characters that may separate the digits of a phone number. */
static inline bool
phone_sep(char c)
{
	return c == ' ' || c == '-' || c == '.' || c == '(' || c == ')';
}

/* Letters, digits and the characters that glue a number to something else. */
static inline bool
glued_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		c == ':' || c == '/' || c == '_';
}

/*
 * Mask e-mail addresses (local@domain.tld) and phone numbers (a '+' and 8
 * to 15 digits, or 10 to 15 digits, with spaces, '-', '.' or parentheses
 * between them, not glued to letters, ':' or '/': dates, times and ids
 * stay) in s; NULL when there is nothing to mask.
 */
static char *
mask_pii(const char *s, int len, int *newlen)
{
	StringInfoData out;
	bool		started = false;
	int			copied = 0;
	int			i = 0;

	while (i < len)
	{
		if (s[i] == '@' && i > 0 && email_char(s[i - 1]))
		{
			int			a = i;
			int			e = i + 1;
			bool		dot = false;

			while (a > 0 && email_char(s[a - 1]))
				a--;
			while (e < len && email_char(s[e]))
			{
				if (s[e] == '.' && e + 1 < len && email_char(s[e + 1]))
					dot = true;
				e++;
			}
			while (e > i + 1 && s[e - 1] == '.')
				e--;
			if (dot && a >= copied && e > i + 1)
			{
				if (!started)
				{
					initStringInfo(&out);
					started = true;
				}
				appendBinaryStringInfo(&out, s + copied, a - copied);
				appendStringInfoString(&out, PII_MASK);
				copied = e;
			}
			i = e;
			continue;
		}
		if ((s[i] == '+' || (s[i] >= '0' && s[i] <= '9') || s[i] == '(') &&
			(i == 0 || !glued_char(s[i - 1])) && i >= copied)
		{
			int			e = i + (s[i] == '+' ? 1 : 0);
			int			digits = 0;
			int			last = i;

			while (e < len && ((s[e] >= '0' && s[e] <= '9') || phone_sep(s[e])))
			{
				if (s[e] >= '0' && s[e] <= '9')
				{
					digits++;
					last = e + 1;
				}
				e++;
			}
			if (digits >= (s[i] == '+' ? 8 : 10) && digits <= 15 &&
				(last >= len || !glued_char(s[last])))
			{
				if (!started)
				{
					initStringInfo(&out);
					started = true;
				}
				appendBinaryStringInfo(&out, s + copied, i - copied);
				appendStringInfoString(&out, PII_MASK);
				copied = last;
				i = last;
				continue;
			}
			i = e > i ? e : i + 1;
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

/* Strip credentials (and, if asked, personal data) from a string; NULL if unchanged. */
static char *
redact_string(const RedactOptions *opt, const char *s, int len, int *newlen)
{
	int			n1;
	char	   *r1 = dalgo_redact_text(s, len, &n1);

	if (opt->pii)
	{
		char	   *r2 = mask_pii(r1 ? r1 : s, r1 ? n1 : len, newlen);

		if (r2 != NULL)
			return r2;
	}
	if (r1 != NULL)
		*newlen = n1;
	return r1;
}

/* dalgo_redact_walk's key test: the keys the options name. */
static bool
walk_key(const void *arg, const char *key, int len)
{
	return key_redacted((const RedactOptions *) arg, key, len);
}

/* dalgo_redact_walk's string cleaner: what the options ask of strings. */
static char *
walk_string(const void *arg, const char *s, int len, int *newlen)
{
	return redact_string((const RedactOptions *) arg, s, len, newlen);
}

/*
 * Copy a document with the values of the chosen keys (at any depth) made
 * "[redacted]" and strings cleaned; returns in itself when nothing changed.
 */
static Jsonb *
redact_document(Jsonb *in, const RedactOptions *opt)
{
	return dalgo_redact_walk(in, walk_key, walk_string, opt);
}

/* Fill opt from a text[] of keys (NULL: the default secret names). */
static void
options_from_array(RedactOptions *opt, ArrayType *keys, bool pii)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	opt->pii = pii;
	opt->nkeys = -1;
	if (keys == NULL)
		return;
	if (ARR_NDIM(keys) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("keys must be a one-dimensional array")));
	deconstruct_array(keys, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	opt->keys = palloc(sizeof(char *) * (n + 1));
	opt->keylens = palloc(sizeof(int) * (n + 1));
	opt->nkeys = 0;
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			continue;
		opt->keys[opt->nkeys] = TextDatumGetCString(elems[i]);
		opt->keylens[opt->nkeys] = strlen(opt->keys[opt->nkeys]);
		opt->nkeys++;
	}
}

/*
 * SQL: dalgo.redact_jsonb(value jsonb, keys text[] DEFAULT NULL, pii boolean
 * DEFAULT false).
 */
Datum
dalgo_redact_jsonb_keys(PG_FUNCTION_ARGS)
{
	RedactOptions opt;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	options_from_array(&opt, PG_ARGISNULL(1) ? NULL : PG_GETARG_ARRAYTYPE_P(1),
					   PG_ARGISNULL(2) ? false : PG_GETARG_BOOL(2));
	PG_RETURN_JSONB_P(redact_document(PG_GETARG_JSONB_P(0), &opt));
}

/*
 * BEFORE INSERT OR UPDATE row trigger: arguments column, pii ('t'/'f'),
 * then the keys (none: the default secret names).  A jsonb column is
 * redacted like dalgo.redact_jsonb(); a text column loses the credentials
 * (and, with pii, the personal data) it holds.
 */
Datum
dalgo_redact_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Trigger    *tg;
	HeapTuple	tuple;
	TupleDesc	desc;
	int			attnum;
	Oid			typid;
	bool		isnull;
	Datum		value;
	Datum		newvalue = (Datum) 0;
	bool		changed = false;
	RedactOptions opt;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || TRIGGER_FIRED_BY_DELETE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("dalgo_internal.redact_trigger() must be a BEFORE INSERT OR UPDATE row trigger"),
				 errhint("Attach it with dalgo.enable_redaction().")));
	tg = td->tg_trigger;
	if (tg->tgnargs < 2)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("dalgo_internal.redact_trigger() needs a column and a pii flag"),
				 errhint("Attach it with dalgo.enable_redaction().")));
	tuple = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	desc = RelationGetDescr(td->tg_relation);
	attnum = SPI_fnumber(desc, tg->tgargs[0]);
	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of %s does not exist", tg->tgargs[0],
						RelationGetRelationName(td->tg_relation))));
	opt.pii = tg->tgargs[1][0] == 't';
	opt.nkeys = -1;
	if (tg->tgnargs > 2)
	{
		opt.nkeys = tg->tgnargs - 2;
		opt.keys = &tg->tgargs[2];
		opt.keylens = palloc(sizeof(int) * opt.nkeys);
		for (int i = 0; i < opt.nkeys; i++)
			opt.keylens[i] = strlen(opt.keys[i]);
	}
	value = heap_getattr(tuple, attnum, desc, &isnull);
	if (isnull)
		return PointerGetDatum(tuple);
	typid = getBaseType(TupleDescAttr(desc, attnum - 1)->atttypid);
	if (typid == JSONBOID)
	{
		Jsonb	   *in = DatumGetJsonbP(value);
		Jsonb	   *out = redact_document(in, &opt);

		changed = out != in;
		newvalue = JsonbPGetDatum(out);
	}
	else if (typid == TEXTOID || typid == VARCHAROID)
	{
		text	   *in = DatumGetTextPP(value);
		int			newlen;
		char	   *s = redact_string(&opt, VARDATA_ANY(in), VARSIZE_ANY_EXHDR(in), &newlen);

		if (s != NULL)
		{
			changed = true;
			newvalue = PointerGetDatum(cstring_to_text_with_len(s, newlen));
		}
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" of %s is neither jsonb nor text", tg->tgargs[0],
						RelationGetRelationName(td->tg_relation))));
	if (changed)
	{
		int			cols[1] = {attnum};
		Datum		vals[1] = {newvalue};
		bool		nulls[1] = {false};

		tuple = heap_modify_tuple_by_cols(tuple, desc, 1, cols, vals, nulls);
	}
	return PointerGetDatum(tuple);
}

/* Walker state for condition_walker(). */
typedef struct ConditionCheck
{
	const char *problem;
} ConditionCheck;

/* Refuse, in a public-read condition, functions of temporary schemas. */
static bool
temp_function_checker(Oid funcid, void *context)
{
	Oid			nsp = get_func_namespace(funcid);

	return isAnyTempNamespace(nsp);
}

/* Find what a public-read condition may not hold besides mutable calls. */
static bool
condition_walker(Node *node, ConditionCheck *ctx)
{
	if (node == NULL)
		return false;
	if (IsA(node, Var))
	{
		Var		   *v = (Var *) node;

		if (v->varlevelsup != 0 || v->varno != 1 || v->varattno <= 0)
		{
			ctx->problem = "it may only use the table's own (user) columns";
			return true;
		}
	}
	else if (IsA(node, SubLink) || IsA(node, Query))
	{
		ctx->problem = "subqueries are not allowed";
		return true;
	}
	else if (IsA(node, Param))
	{
		ctx->problem = "parameters are not allowed";
		return true;
	}
	else if (IsA(node, CoerceToDomain))
	{
		ctx->problem = "casts to domains are not allowed";
		return true;
	}
	if (check_functions_in_node(node, temp_function_checker, NULL))
	{
		ctx->problem = "functions of temporary schemas are not allowed";
		return true;
	}
	return expression_tree_walker(node, condition_walker, (void *) ctx);
}

/*
 * SQL: dalgo_internal.toolkit_condition(tbl regclass, condition text) RETURNS text.
 * The condition must be one boolean expression over tbl's columns: no
 * subquery, no function that is not immutable, nothing but one expression
 * (it is parsed as the target of "SELECT <condition>" and every other
 * clause is refused).  Returns it deparsed, names qualified, which is what
 * the policy embeds: the caller's text never reaches CREATE POLICY.
 */
Datum
dalgo_toolkit_condition(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *cond = text_to_cstring(PG_GETARG_TEXT_PP(1));
	StringInfoData sql;
	List	   *raw;
	RawStmt    *rs;
	SelectStmt *sel;
	ResTarget  *rt;
	Relation	rel;
	ParseState *pstate;
	ParseNamespaceItem *nsitem;
	Node	   *qual;
	ConditionCheck ctx = {NULL};
	char	   *out;

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT %s", cond);
	raw = raw_parser(sql.data, RAW_PARSE_DEFAULT);
	rs = list_length(raw) == 1 ? linitial_node(RawStmt, raw) : NULL;
	sel = (rs != NULL && IsA(rs->stmt, SelectStmt)) ? (SelectStmt *) rs->stmt : NULL;
	if (sel == NULL || sel->op != SETOP_NONE || sel->distinctClause != NIL ||
		sel->intoClause != NULL || sel->fromClause != NIL || sel->whereClause != NULL ||
		sel->groupClause != NIL || sel->havingClause != NULL || sel->windowClause != NIL ||
		sel->valuesLists != NIL || sel->sortClause != NIL || sel->limitOffset != NULL ||
		sel->limitCount != NULL || sel->lockingClause != NIL || sel->withClause != NULL ||
		list_length(sel->targetList) != 1 ||
		((ResTarget *) linitial(sel->targetList))->name != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("condition must be a single boolean expression"),
				 errdetail("Condition: %s", cond)));
	rt = linitial_node(ResTarget, sel->targetList);
	/* "*" and "t.*" are expanded only in a target list; never analyze them. */
	if (IsA(rt->val, ColumnRef) && IsA(llast(((ColumnRef *) rt->val)->fields), A_Star))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("condition must be a single boolean expression"),
				 errdetail("Condition: %s", cond)));

	rel = relation_open(relid, AccessShareLock);
	pstate = make_parsestate(NULL);
	pstate->p_sourcetext = sql.data;
	nsitem = addRangeTableEntryForRelation(pstate, rel, AccessShareLock, NULL, false, false);
	addNSItemToQuery(pstate, nsitem, false, true, true);
	qual = transformWhereClause(pstate, rt->val, EXPR_KIND_POLICY, "POLICY");
	assign_expr_collations(pstate, qual);

	if (pstate->p_hasSubLinks)
		ctx.problem = "subqueries are not allowed";
	else
		condition_walker(qual, &ctx);
	if (ctx.problem == NULL && contain_mutable_functions(qual))
		ctx.problem = "it may only call immutable functions";
	if (ctx.problem == NULL && expression_returns_set(qual))
		ctx.problem = "set-returning functions are not allowed";
	if (ctx.problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("condition is not allowed: %s", ctx.problem),
				 errdetail("Condition: %s", cond),
				 errhint("A public-read condition is a boolean expression over the table's own columns.")));
	out = deparse_expression(qual,
							 deparse_context_for(RelationGetRelationName(rel), relid),
							 false, false);
	free_parsestate(pstate);
	relation_close(rel, NoLock);
	PG_RETURN_TEXT_P(cstring_to_text(out));
}

/* Walker state for policy_walker(). */
typedef struct PolicyCheck
{
	int			sublink_depth;
	List	   *problems;
} PolicyCheck;

/* Record a problem for one function a policy calls. */
static bool
policy_function_checker(Oid funcid, void *context)
{
	PolicyCheck *ctx = (PolicyCheck *) context;
	char		vol = func_volatile(funcid);
	char	   *name = quote_qualified_identifier(get_namespace_name(get_func_namespace(funcid)),
												  get_func_name(funcid));

	if (vol == PROVOLATILE_VOLATILE)
		ctx->problems = lappend(ctx->problems, psprintf("calls volatile function %s()", name));
	else if (ctx->sublink_depth == 0 &&
			 (vol != PROVOLATILE_IMMUTABLE || get_func_namespace(funcid) != PG_CATALOG_NAMESPACE))
		ctx->problems = lappend(ctx->problems,
								psprintf("calls %s() once per row", name));
	return false;
}

/* Walk a policy expression, noting calls outside and inside subqueries. */
static bool
policy_walker(Node *node, PolicyCheck *ctx)
{
	if (node == NULL)
		return false;
	if (IsA(node, Query))
	{
		bool		r;

		ctx->sublink_depth++;
		r = query_tree_walker((Query *) node, policy_walker, (void *) ctx, 0);
		ctx->sublink_depth--;
		return r;
	}
	check_functions_in_node(node, policy_function_checker, (void *) ctx);
	return expression_tree_walker(node, policy_walker, (void *) ctx);
}

/*
 * SQL: dalgo_internal.toolkit_policy_problems(qual pg_node_tree) RETURNS text[]:
 * volatile calls anywhere, and calls evaluated once per row (outside any
 * subquery, to anything but an immutable built-in function).
 */
Datum
dalgo_toolkit_policy_problems(PG_FUNCTION_ARGS)
{
	PolicyCheck ctx = {0, NIL};
	Node	   *qual = stringToNode(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	Datum	   *elems;
	int			n = 0;
	ListCell   *lc;

	policy_walker(qual, &ctx);
	if (ctx.problems == NIL)
		PG_RETURN_NULL();
	elems = palloc(sizeof(Datum) * list_length(ctx.problems));
	foreach(lc, ctx.problems)
		elems[n++] = CStringGetTextDatum((char *) lfirst(lc));
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/* SQL: dalgo_internal.is_secret_name(name text): the audit trail's test of a secret name. */
Datum
dalgo_is_secret_name(PG_FUNCTION_ARGS)
{
	text	   *t = PG_GETARG_TEXT_PP(0);

	PG_RETURN_BOOL(dalgo_secret_key(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)));
}
