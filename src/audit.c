/*
 * audit.c
 *		dalgo.audit_trigger(): who changed what, written to dalgo.audit_logs.
 *
 * On ordinary and partitioned tables the trigger runs once per statement
 * with transition tables (one trigger each for INSERT, UPDATE and DELETE,
 * plus TRUNCATE): it turns every affected row into an audit row in C and
 * writes them in batches of AUDIT_BATCH_ROWS.  On foreign tables, which
 * cannot have transition tables, it runs per row.  The audit row is written
 * with the rights of audit_logs' owner, so end-user roles need (and have)
 * no INSERT right on the log.
 *
 * This file decides what to write; audit_writer.c writes it.  Two writers
 * there: when audit_logs has exactly the shape the install script gives it
 * (the eleven columns in order and of their types, no generated columns,
 * CHECK constraints, rules, INSERT triggers, or NOT NULL on a column the
 * writer may leave NULL), rows go straight into the heap and its indexes,
 * as COPY does.  For any other shape they go through a prepared INSERT,
 * which honours defaults, constraints, generated columns and triggers.  A
 * missing column, or one of another type, is a clear error naming it; no
 * shape crashes the server.
 *
 * Memory: each transition-table row is turned into details in a context
 * reset after every row; the rows waiting to be written are copied into
 * their own context, reset after each batch.
 *
 * details holds the row for INSERT and DELETE, and only the changed columns
 * as {"col": {"old": ..., "new": ...}} for UPDATE; an UPDATE that changes
 * nothing, or only updated_at, writes nothing.  Excluded columns (the
 * trigger's arguments after the first, always including password_hash,
 * token, token_hash and access_token_encrypted) are written as
 * "[redacted]".  The shared redaction of redact.c applies to the rest:
 * inside every json column, the value of every key naming a secret; in
 * every string, URL credentials, secret=value pairs and bearer tokens.  A
 * primary key that is not one uuid column is recorded in
 * details as "_key".
 *
 * Trigger arguments: the organization column ('' for none), then the
 * excluded columns.  dalgo.enable_audit() builds them.
 *
 * Configurations are cached per trigger; a relcache change of the table or
 * a change of any schema (resource_type names it) invalidates them, and
 * invalid ones are freed at the start of the next outermost firing.
 *
 * audit_logs itself is append-only: dalgo.audit_log_guard() refuses UPDATE,
 * DELETE and TRUNCATE except inside dalgo.purge_audit_logs().
 */
#include "audit.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(dalgo_audit_trigger);
PG_FUNCTION_INFO_V1(dalgo_audit_log_guard);
PG_FUNCTION_INFO_V1(dalgo_anonymize_audit_logs);
PG_FUNCTION_INFO_V1(dalgo_purge_audit_logs);

static const char *const always_excluded[] = {
	"password_hash", "token", "token_hash", "access_token_encrypted", NULL
};
static const char *const ignored_columns[] = {"updated_at", "updatedAt", NULL};

/* Settings an authenticator sets per request (the writer records them). */
char	   *dalgo_client_ip = NULL;
char	   *dalgo_user_agent = NULL;

/* Hash entry: trigger OID to its current configuration. */
typedef struct AuditConfigEntry
{
	Oid			tgoid;			/* hash key */
	AuditConfig *cfg;
} AuditConfigEntry;

static HTAB *audit_configs = NULL;
static AuditConfig *retired_configs = NULL;
static int	audit_depth = 0;		/* firings under way in this backend */
static bool audit_sweep_needed = false;	/* some configuration is invalid or retired */
static bool purge_in_progress = false;

/* True only while dalgo.anonymize_audit_logs() runs its UPDATE. */
static bool anonymize_in_progress = false;

/*
 * dalgo.audit_anonymizing: on a Citus cluster the coordinator's
 * anonymize_audit_logs() sends it to the workers for its UPDATE, whose
 * guard fires there, on the shards, as a superuser.  Any role may set it;
 * it lets only a superuser's id-keeping update of a shard's row through.
 */
static bool audit_anonymizing = false;

/* True if name appears in the NULL-terminated list. */
static bool
in_list(const char *name, const char *const *list)
{
	for (int i = 0; list[i] != NULL; i++)
		if (strcmp(name, list[i]) == 0)
			return true;
	return false;
}

/* Relcache callback: configurations of a changed table are rebuilt on next use. */
static void
audit_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	AuditConfigEntry *e;

	if (audit_configs == NULL)
		return;
	hash_seq_init(&status, audit_configs);
	while ((e = hash_seq_search(&status)) != NULL)
		if (relid == InvalidOid || e->cfg->relid == relid)
		{
			e->cfg->valid = false;
			audit_sweep_needed = true;
		}
}

/* Syscache callback on schemas: a renamed schema changes resource_type. */
static void
audit_namespace_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	HASH_SEQ_STATUS status;
	AuditConfigEntry *e;

	if (audit_configs == NULL)
		return;
	hash_seq_init(&status, audit_configs);
	while ((e = hash_seq_search(&status)) != NULL)
		if (hashvalue == 0 ||
			GetSysCacheHashValue1(NAMESPACEOID, ObjectIdGetDatum(e->cfg->nspid)) == hashvalue)
		{
			e->cfg->valid = false;
			audit_sweep_needed = true;
		}
}

/*
 * Free invalidated configurations.  Called only by the outermost firing,
 * before it looks its own up, so no firing under way holds one.
 */
static void
free_invalid_configs(void)
{
	HASH_SEQ_STATUS status;
	AuditConfigEntry *e;

	audit_sweep_needed = false;
	while (retired_configs != NULL)
	{
		AuditConfig *next = retired_configs->next_retired;

		MemoryContextDelete(retired_configs->cxt);
		retired_configs = next;
	}
	hash_seq_init(&status, audit_configs);
	while ((e = hash_seq_search(&status)) != NULL)
		if (!e->cfg->valid)
		{
			MemoryContextDelete(e->cfg->cxt);
			hash_search(audit_configs, &e->tgoid, HASH_REMOVE, NULL);
		}
}

/* Bind to_jsonb() to one column type, so any type converts exactly as SQL would. */
static void
bind_to_jsonb(AuditAttr *attr, Form_pg_attribute att, MemoryContext cxt)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	FuncExpr   *expr;

	fmgr_info_cxt(F_TO_JSONB, &attr->to_jsonb, cxt);
	expr = makeFuncExpr(F_TO_JSONB, JSONBOID,
						list_make1(makeNullConst(att->atttypid, att->atttypmod, att->attcollation)),
						InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
	fmgr_info_set_expr((Node *) expr, &attr->to_jsonb);
	MemoryContextSwitchTo(old);
}

/* Read the table's primary key into cfg. */
static void
load_primary_key(AuditConfig *cfg, Relation rel)
{
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);
	HeapTuple	tup;
	Form_pg_index idx;

	cfg->npk = 0;
	cfg->uuid_pk_attnum = 0;
	if (!OidIsValid(pkoid))
		return;
	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pkoid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for index %u", pkoid);
	idx = (Form_pg_index) GETSTRUCT(tup);
	cfg->npk = idx->indnkeyatts;
	for (int i = 0; i < cfg->npk; i++)
		cfg->pk_attnums[i] = idx->indkey.values[i];
	ReleaseSysCache(tup);
	if (cfg->npk == 1 && cfg->pk_attnums[0] > 0 &&
		TupleDescAttr(RelationGetDescr(rel), cfg->pk_attnums[0] - 1)->atttypid == UUIDOID)
		cfg->uuid_pk_attnum = cfg->pk_attnums[0];

	/*
	 * On a Citus cluster dalgo.distribute() widens a tenant table's key to
	 * (organization_id, id): the row is still named by its id.
	 */
	if (cfg->npk == 2 && cfg->pk_attnums[0] > 0 && cfg->pk_attnums[1] > 0 &&
		strcmp(NameStr(TupleDescAttr(RelationGetDescr(rel), cfg->pk_attnums[0] - 1)->attname),
			   "organization_id") == 0 &&
		TupleDescAttr(RelationGetDescr(rel), cfg->pk_attnums[1] - 1)->atttypid == UUIDOID)
		cfg->uuid_pk_attnum = cfg->pk_attnums[1];
}

/*
 * Build the configuration of one audit trigger on one table, in a new
 * context under the caller's: an error while building frees it with the
 * caller's memory.  The caller moves it under CacheMemoryContext.
 */
static AuditConfig *
build_config(TriggerData *trigdata)
{
	Trigger    *trigger = trigdata->tg_trigger;
	Relation	rel = trigdata->tg_relation;
	TupleDesc	desc = RelationGetDescr(rel);
	MemoryContext cxt;
	MemoryContext old;
	AuditConfig *cfg;
	const char *orgcol;

	cxt = AllocSetContextCreate(CurrentMemoryContext, "dalgo audit configuration",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	cfg = palloc0(sizeof(AuditConfig));
	cfg->cxt = cxt;
	cfg->relid = RelationGetRelid(rel);
	cfg->nspid = RelationGetNamespace(rel);

	{
		/* On a Citus node the trigger fires on a shard: name its table. */
		char		partmethod;
		Oid			logical = dalgo_citus_shard_of(rel, &partmethod);
		const char *relname = OidIsValid(logical) ? get_rel_name(logical)
			: RelationGetRelationName(rel);

		if (cfg->nspid == get_namespace_oid(DALGO_SCHEMA, true))
			cfg->resource_type = pstrdup(relname);
		else
			cfg->resource_type = psprintf("%s.%s", get_namespace_name(cfg->nspid), relname);
	}

	orgcol = trigger->tgnargs > 0 ? trigger->tgargs[0] : "";
	cfg->org_attnum = 0;
	if (orgcol[0] != '\0')
	{
		int			attnum = SPI_fnumber(desc, orgcol);

		if (attnum <= 0 || TupleDescAttr(desc, attnum - 1)->atttypid != UUIDOID)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("organization column \"%s\" of table \"%s\" is missing or not a uuid",
							orgcol, RelationGetRelationName(rel)),
					 errhint("Run dalgo.enable_audit() again for this table.")));
		cfg->org_attnum = attnum;
	}

	cfg->attrs = palloc0(sizeof(AuditAttr) * desc->natts);
	cfg->nattrs = 0;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		AuditAttr  *a;

		if (att->attisdropped)
			continue;
		a = &cfg->attrs[cfg->nattrs++];
		a->attnum = att->attnum;
		a->name = pstrdup(NameStr(att->attname));
		a->namelen = strlen(a->name);
		a->typlen = att->attlen;
		a->typbyval = att->attbyval;
		a->typid = att->atttypid;
		a->excluded = in_list(a->name, always_excluded);
		for (int j = 1; j < trigger->tgnargs; j++)
			if (strcmp(a->name, trigger->tgargs[j]) == 0)
				a->excluded = true;
		a->ignored = in_list(a->name, ignored_columns);
		bind_to_jsonb(a, att, cxt);
	}
	load_primary_key(cfg, rel);
	MemoryContextSwitchTo(old);
	cfg->valid = true;
	return cfg;
}

/* Find (or build) the configuration of the trigger that fired. */
static AuditConfig *
audit_config(TriggerData *trigdata)
{
	Oid			tgoid = trigdata->tg_trigger->tgoid;
	AuditConfigEntry *e;
	AuditConfig *cfg;
	bool		found;

	if (audit_configs == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(AuditConfigEntry);
		audit_configs = hash_create("dalgo audit configurations", 64, &ctl,
									HASH_ELEM | HASH_BLOBS);
		CacheRegisterRelcacheCallback(audit_relcache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, audit_namespace_callback, (Datum) 0);
	}
	if (audit_depth == 1 && audit_sweep_needed)
		free_invalid_configs();

	e = hash_search(audit_configs, &tgoid, HASH_FIND, NULL);
	if (e != NULL && e->cfg->valid)
		return e->cfg;

	cfg = build_config(trigdata);
	MemoryContextSetParent(cfg->cxt, CacheMemoryContext);
	e = hash_search(audit_configs, &tgoid, HASH_ENTER, &found);
	if (found)
	{
		/* A firing under way may still use the old one: free it later. */
		e->cfg->next_retired = retired_configs;
		retired_configs = e->cfg;
		audit_sweep_needed = true;
	}
	e->cfg = cfg;
	return cfg;
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

/*
 * Convert the common scalar types straight to a JsonbValue, exactly as
 * to_jsonb() would (strings with credentials stripped); false for any
 * other type.
 */
static bool
scalar_to_jsonb_value(Oid typid, Datum value, JsonbValue *v)
{
	char	   *str;
	int			len;

	switch (typid)
	{
		case BOOLOID:
			v->type = jbvBool;
			v->val.boolean = DatumGetBool(value);
			return true;
		case INT2OID:
			v->type = jbvNumeric;
			v->val.numeric = DatumGetNumeric(DirectFunctionCall1(int2_numeric, value));
			return true;
		case INT4OID:
			v->type = jbvNumeric;
			v->val.numeric = DatumGetNumeric(DirectFunctionCall1(int4_numeric, value));
			return true;
		case INT8OID:
			v->type = jbvNumeric;
			v->val.numeric = DatumGetNumeric(DirectFunctionCall1(int8_numeric, value));
			return true;
		case NUMERICOID:
			if (numeric_is_nan(DatumGetNumeric(value)) || numeric_is_inf(DatumGetNumeric(value)))
				return false;	/* to_jsonb writes these as strings */
			v->type = jbvNumeric;
			v->val.numeric = DatumGetNumeric(value);
			return true;
		case TEXTOID:
		case VARCHAROID:
			{
				text	   *t = DatumGetTextPP(value);
				char	   *stripped = dalgo_redact_text(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), &len);

				if (stripped == NULL)
				{
					str = VARDATA_ANY(t);
					len = VARSIZE_ANY_EXHDR(t);
				}
				else
					str = stripped;
				v->type = jbvString;
				v->val.string.val = str;
				v->val.string.len = len;
				return true;
			}
		case UUIDOID:
			str = DatumGetCString(DirectFunctionCall1(uuid_out, value));
			break;
		case TIMESTAMPTZOID:
		case TIMESTAMPOID:
		case DATEOID:
			str = JsonEncodeDateTime(NULL, value, typid, NULL);
			break;
		default:
			return false;
	}
	v->type = jbvString;
	v->val.string.val = str;
	v->val.string.len = strlen(str);
	return true;
}

/* Push one column's value (converted as to_jsonb would, redacted as configured). */
static void
push_value(JsonbParseState **st, AuditAttr *a, Datum value, bool isnull)
{
	JsonbValue	v;
	Jsonb	   *j;

	if (a->excluded)
	{
		push_redacted(st, WJB_VALUE);
		return;
	}
	if (isnull)
	{
		v.type = jbvNull;
		pushJsonbValue(st, WJB_VALUE, &v);
		return;
	}
	if (scalar_to_jsonb_value(a->typid, value, &v))
	{
		pushJsonbValue(st, WJB_VALUE, &v);
		return;
	}
	if (a->typid == JSONBOID)
		j = DatumGetJsonbP(value);
	else
		j = DatumGetJsonbP(FunctionCall1(&a->to_jsonb, value));
	j = dalgo_redact_jsonb(j, true);
	v.type = jbvBinary;
	v.val.binary.data = &j->root;
	v.val.binary.len = VARSIZE(j) - VARHDRSZ;
	pushJsonbValue(st, WJB_VALUE, &v);
}

/* Push an object key. */
static void
push_key(JsonbParseState **st, const char *key, int len)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = unconstify(char *, key);
	v.val.string.len = len;
	pushJsonbValue(st, WJB_KEY, &v);
}

/* Find the AuditAttr of an attribute number. */
static AuditAttr *
attr_of(AuditConfig *cfg, AttrNumber attnum)
{
	for (int i = 0; i < cfg->nattrs; i++)
		if (cfg->attrs[i].attnum == attnum)
			return &cfg->attrs[i];
	return NULL;
}

/* Push "_key": {pk columns} when the key is not a single uuid column. */
static void
push_key_object(JsonbParseState **st, AuditConfig *cfg, TupleTableSlot *slot)
{
	if (cfg->npk == 0 || cfg->uuid_pk_attnum != 0)
		return;
	push_key(st, "_key", 4);
	pushJsonbValue(st, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < cfg->npk; i++)
	{
		AuditAttr  *a = attr_of(cfg, cfg->pk_attnums[i]);

		if (a == NULL)
			continue;
		push_key(st, a->name, a->namelen);
		push_value(st, a, slot->tts_values[a->attnum - 1], slot->tts_isnull[a->attnum - 1]);
	}
	pushJsonbValue(st, WJB_END_OBJECT, NULL);
}

/* details for INSERT and DELETE: the whole row. */
static Jsonb *
row_details(AuditConfig *cfg, TupleTableSlot *slot)
{
	JsonbParseState *st = NULL;
	JsonbValue *res;

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < cfg->nattrs; i++)
	{
		AuditAttr  *a = &cfg->attrs[i];

		push_key(&st, a->name, a->namelen);
		push_value(&st, a, slot->tts_values[a->attnum - 1], slot->tts_isnull[a->attnum - 1]);
	}
	push_key_object(&st, cfg, slot);
	res = pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(res);
}

/* True if two non-null values of a column are stored identically. */
static bool
same_value(AuditAttr *a, Datum x, Datum y)
{
	if (a->typlen == -1)
	{
		struct varlena *rx = (struct varlena *) DatumGetPointer(x);
		struct varlena *ry = (struct varlena *) DatumGetPointer(y);
		struct varlena *vx;
		struct varlena *vy;

		/* An unchanged toasted value keeps its toast pointer: no need to fetch it. */
		if (VARATT_IS_EXTERNAL_ONDISK(rx) && VARATT_IS_EXTERNAL_ONDISK(ry) &&
			VARSIZE_EXTERNAL(rx) == VARSIZE_EXTERNAL(ry) &&
			memcmp(rx, ry, VARSIZE_EXTERNAL(rx)) == 0)
			return true;
		vx = pg_detoast_datum_packed(rx);
		vy = pg_detoast_datum_packed(ry);
		return VARSIZE_ANY_EXHDR(vx) == VARSIZE_ANY_EXHDR(vy) &&
			memcmp(VARDATA_ANY(vx), VARDATA_ANY(vy), VARSIZE_ANY_EXHDR(vx)) == 0;
	}
	return datumIsEqual(x, y, a->typbyval, a->typlen);
}

/* details for UPDATE: the changed columns, or NULL when nothing that counts changed. */
static Jsonb *
diff_details(AuditConfig *cfg, TupleTableSlot *oldslot, TupleTableSlot *newslot)
{
	JsonbParseState *st = NULL;
	JsonbValue *res;
	int			nchanged = 0;

	for (int i = 0; i < cfg->nattrs; i++)
	{
		AuditAttr  *a = &cfg->attrs[i];
		int			k = a->attnum - 1;
		bool		on = oldslot->tts_isnull[k];
		bool		nn = newslot->tts_isnull[k];

		if (a->ignored)
			continue;
		if (on && nn)
			continue;
		if (!on && !nn && same_value(a, oldslot->tts_values[k], newslot->tts_values[k]))
			continue;
		if (nchanged++ == 0)
			pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
		push_key(&st, a->name, a->namelen);
		pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
		push_key(&st, "old", 3);
		push_value(&st, a, oldslot->tts_values[k], on);
		push_key(&st, "new", 3);
		push_value(&st, a, newslot->tts_values[k], nn);
		pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	}
	if (nchanged == 0)
		return NULL;
	push_key_object(&st, cfg, newslot);
	res = pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(res);
}

/* Audit every row of a transition table (INSERT or DELETE). */
static void
audit_rows(AuditSink *b, Tuplestorestate *rows, TupleDesc desc, MemoryContext rowcxt)
{
	TupleTableSlot *slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);

	tuplestore_rescan(rows);
	while (tuplestore_gettupleslot(rows, true, false, slot))
	{
		MemoryContext old = MemoryContextSwitchTo(rowcxt);
		Jsonb	   *details;

		slot_getallattrs(slot);
		details = row_details(b->cfg, slot);
		MemoryContextSwitchTo(old);
		dalgo_audit_add_row(b, slot, details);
		MemoryContextReset(rowcxt);
	}
	ExecDropSingleTupleTableSlot(slot);
}

/* Audit the old/new row pairs of an UPDATE's transition tables. */
static void
audit_updates(AuditSink *b, Tuplestorestate *oldrows, Tuplestorestate *newrows,
			  TupleDesc desc, MemoryContext rowcxt)
{
	TupleTableSlot *oldslot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	TupleTableSlot *newslot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);

	tuplestore_rescan(oldrows);
	tuplestore_rescan(newrows);
	while (tuplestore_gettupleslot(oldrows, true, false, oldslot) &&
		   tuplestore_gettupleslot(newrows, true, false, newslot))
	{
		MemoryContext old = MemoryContextSwitchTo(rowcxt);
		Jsonb	   *details;

		slot_getallattrs(oldslot);
		slot_getallattrs(newslot);
		details = diff_details(b->cfg, oldslot, newslot);
		MemoryContextSwitchTo(old);
		if (details != NULL)
			dalgo_audit_add_row(b, newslot, details);
		MemoryContextReset(rowcxt);
	}
	ExecDropSingleTupleTableSlot(oldslot);
	ExecDropSingleTupleTableSlot(newslot);
}

/* Audit one row of a row-level firing (foreign tables). */
static void
audit_one_row(AuditSink *b, TriggerData *trigdata)
{
	TupleTableSlot *slot = trigdata->tg_trigslot;
	Jsonb	   *details;

	slot_getallattrs(slot);
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		slot_getallattrs(trigdata->tg_newslot);
		details = diff_details(b->cfg, slot, trigdata->tg_newslot);
		slot = trigdata->tg_newslot;
	}
	else
		details = row_details(b->cfg, slot);
	if (details != NULL)
		dalgo_audit_add_row(b, slot, details);
}

/* Write the audit rows of one firing. */
static void
audit_firing(TriggerData *trigdata)
{
	TriggerEvent ev = trigdata->tg_event;
	AuditSink  *sink;
	MemoryContext rowcxt;
	TupleDesc	desc;

	sink = palloc0(sizeof(AuditSink));
	dalgo_audit_open_sink(sink, audit_config(trigdata),
			  TRIGGER_FIRED_BY_INSERT(ev) ? "insert" :
			  TRIGGER_FIRED_BY_UPDATE(ev) ? "update" :
			  TRIGGER_FIRED_BY_DELETE(ev) ? "delete" : "truncate");
	desc = RelationGetDescr(trigdata->tg_relation);
	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "dalgo audit row", ALLOCSET_DEFAULT_SIZES);

	if (TRIGGER_FIRED_FOR_ROW(ev))
		audit_one_row(sink, trigdata);
	else if (TRIGGER_FIRED_BY_TRUNCATE(ev))
	{
		JsonbParseState *st = NULL;

		pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
		dalgo_audit_add_row(sink, NULL, JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL)));
	}
	else if (TRIGGER_FIRED_BY_UPDATE(ev))
		audit_updates(sink, trigdata->tg_oldtable, trigdata->tg_newtable, desc, rowcxt);
	else
		audit_rows(sink, TRIGGER_FIRED_BY_INSERT(ev) ? trigdata->tg_newtable : trigdata->tg_oldtable,
				   desc, rowcxt);

	dalgo_audit_close_sink(sink);
	MemoryContextDelete(rowcxt);
	pfree(sink);
}

/* Trigger: write audit rows for the statement (or row) that fired it. */
Datum
dalgo_audit_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TriggerEvent ev;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("audit_change() was not called by the trigger manager")));
	ev = trigdata->tg_event;
	if (!TRIGGER_FIRED_AFTER(ev))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("audit_change() must be fired AFTER"),
				 errhint("Use dalgo.enable_audit() to attach it.")));
	if (TRIGGER_FIRED_FOR_STATEMENT(ev) && !TRIGGER_FIRED_BY_TRUNCATE(ev) &&
		(TRIGGER_FIRED_BY_DELETE(ev) ? trigdata->tg_oldtable == NULL : trigdata->tg_newtable == NULL ||
		 (TRIGGER_FIRED_BY_UPDATE(ev) && trigdata->tg_oldtable == NULL)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("audit_change() per statement needs its transition tables"),
				 errhint("Use dalgo.enable_audit() to attach it.")));
	/*
	 * A restore loads rows and their audit trail as dumped: no new rows, also
	 * for what restore-mode triggers do to put a row back (an UPDATE of an
	 * installed row that a dumped one replaces).
	 */
	if (dalgo_restoring())
		return PointerGetDatum(NULL);

	/*
	 * Citus: a change to a reference table is applied to its shard on every
	 * node, and this trigger fires on each.  The coordinator's copy writes
	 * the audit row; the workers' copies write none.
	 */
	{
		char		partmethod;

		if (OidIsValid(dalgo_citus_shard_of(trigdata->tg_relation, &partmethod)) &&
			partmethod == 'n' && dalgo_citus_is_worker())
			return PointerGetDatum(NULL);
	}

	audit_depth++;
	PG_TRY();
	{
		audit_firing(trigdata);
	}
	PG_FINALLY();
	{
		audit_depth--;
	}
	PG_END_TRY();
	return PointerGetDatum(NULL);
}

/*
 * Does an anonymizing update of an audit row keep everything but details,
 * ip_address, user_agent and updated_at?
 */
static bool
audit_row_keeps_ids(Relation rel, HeapTuple oldtup, HeapTuple newtup)
{
	static const char *const kept[] = {"id", "organization_id", "user_id", "action",
	"resource_type", "resource_id", "created_at"};
	TupleDesc	desc = RelationGetDescr(rel);

	for (int i = 0; i < (int) lengthof(kept); i++)
	{
		int			attnum = SPI_fnumber(desc, kept[i]);
		Form_pg_attribute att;
		bool		oldnull,
					newnull;
		Datum		oldval,
					newval;

		if (attnum <= 0)
			return false;
		att = TupleDescAttr(desc, attnum - 1);
		oldval = heap_getattr(oldtup, attnum, desc, &oldnull);
		newval = heap_getattr(newtup, attnum, desc, &newnull);
		if (oldnull != newnull ||
			(!oldnull && !datumIsEqual(oldval, newval, att->attbyval, att->attlen)))
			return false;
	}
	return true;
}

/* Trigger: audit_logs is append-only, except inside purge_audit_logs() and anonymize_audit_logs(). */
Datum
dalgo_audit_log_guard(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("guard_audit_logs() was not called by the trigger manager")));
	if (purge_in_progress && TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		return PointerGetDatum(trigdata->tg_trigtuple);
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) && TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
	{
		char		partmethod;
		bool		allowed = anonymize_in_progress;

		/* A Citus shard, updated by the coordinator's anonymize_audit_logs(). */
		if (!allowed && audit_anonymizing && superuser())
			allowed = OidIsValid(dalgo_citus_shard_of(trigdata->tg_relation, &partmethod));
		if (allowed &&
			audit_row_keeps_ids(trigdata->tg_relation, trigdata->tg_trigtuple, trigdata->tg_newtuple))
			return PointerGetDatum(trigdata->tg_newtuple);
	}
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("dalgo.audit_logs is append-only"),
			 errdetail("UPDATE, DELETE and TRUNCATE of the audit trail are refused."),
			 errhint("Old rows are removed with dalgo.purge_audit_logs().")));
	PG_RETURN_NULL();			/* not reached */
}

/* SQL: dalgo.purge_audit_logs(older_than interval): delete old audit rows; returns how many. */
Datum
dalgo_purge_audit_logs(PG_FUNCTION_ARGS)
{
	Interval   *older_than = PG_GETARG_INTERVAL_P(0);
	Oid			service = get_role_oid("dalgo_service", true);
	Datum		cutoff;
	Oid			argtypes[1] = {TIMESTAMPTZOID};
	Datum		values[1];
	Oid			save_userid;
	int			save_sec;
	int			rc;
	uint64		deleted;

	if (!superuser() && !(OidIsValid(service) && has_privs_of_role(GetUserId(), service)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only dalgo_service or a superuser may purge the audit trail")));
	if (older_than->time < 0 || older_than->day < 0 || older_than->month < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("older_than must not be negative")));

	cutoff = DirectFunctionCall2(timestamptz_mi_interval,
								 TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()),
								 IntervalPGetDatum(older_than));
	values[0] = cutoff;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(dalgo_relation_owner(dalgo_relation_oid("audit_logs")),
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	purge_in_progress = true;
	PG_TRY();
	{
		rc = SPI_execute_with_args("DELETE FROM dalgo.audit_logs WHERE created_at < $1",
								   1, argtypes, values, NULL, false, 0);
	}
	PG_FINALLY();
	{
		purge_in_progress = false;
	}
	PG_END_TRY();
	SetUserIdAndSecContext(save_userid, save_sec);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "audit purge failed: %s", SPI_result_code_string(rc));
	deleted = SPI_processed;
	SPI_finish();
	PG_RETURN_INT64((int64) deleted);
}

/*
 * SQL: dalgo_internal.anonymize_audit_logs(user_id uuid, needles text[],
 * organization_ids uuid[]): the one way past the append-only guard besides
 * the purge, for a user who leaves (dalgo_internal.erase_account).  In every
 * audit row by or about the user, and in the rows of the organizations they
 * belonged to that name one of the needles (their email and name, old ones
 * too), the personal data in details becomes "[erased]", and the user's own
 * rows lose the client address and user agent.  Ids, actions, resource and
 * times stay; the guard checks that they do.  Returns the rows changed.
 */
Datum
dalgo_anonymize_audit_logs(PG_FUNCTION_ARGS)
{
	Oid			argtypes[3] = {UUIDOID, TEXTARRAYOID, UUIDARRAYOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	Oid			save_userid;
	int			save_sec;
	int			rc;
	uint64		changed;
	bool		on_citus;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("user_id must not be NULL")));
	values[0] = PG_GETARG_DATUM(0);
	if (PG_ARGISNULL(1))
	{
		values[1] = (Datum) 0;
		nulls[1] = 'n';
	}
	else
		values[1] = PG_GETARG_DATUM(1);
	if (PG_ARGISNULL(2))
	{
		values[2] = (Datum) 0;
		nulls[2] = 'n';
	}
	else
		values[2] = PG_GETARG_DATUM(2);

	/*
	 * On a Citus coordinator the UPDATE runs on the workers' shards, whose
	 * guard does not see this backend's flag: it is sent as a setting,
	 * for this UPDATE only.
	 */
	on_citus = dalgo_citus_is_coordinator() &&
		dalgo_citus_is_distributed(dalgo_relation_oid("audit_logs"));
	if (on_citus)
		dalgo_citus_send_setting("dalgo.audit_anonymizing", "on");

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(dalgo_relation_owner(dalgo_relation_oid("audit_logs")),
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	anonymize_in_progress = true;
	PG_TRY();
	{
		/*
		 * Rows by or about the user: needles and personal keys.  Rows of the
		 * organizations they belonged to: needles.  Rows of no organization
		 * (account mail and the like; on a Citus cluster they carry the nil
		 * uuid): only values that equal a needle whole.  Rows of any other
		 * organization: never.
		 */
		rc = SPI_execute_with_args("UPDATE dalgo.audit_logs a SET"
								   " details = dalgo_internal.erase_in_jsonb(a.details, coalesce($2, '{}'),"
								   "   CASE WHEN a.user_id = $1 OR a.resource_id = $1"
								   "        THEN ARRAY['email', 'full_name', 'recipient', 'ip_address', 'user_agent']"
								   "        ELSE '{}'::text[] END,"
								   "   (a.organization_id IS NULL OR a.organization_id = '00000000-0000-0000-0000-000000000000')"
								   "   AND a.user_id IS DISTINCT FROM $1"
								   "   AND a.resource_id IS DISTINCT FROM $1),"
								   " ip_address = CASE WHEN a.user_id = $1 THEN NULL ELSE a.ip_address END,"
								   " user_agent = CASE WHEN a.user_id = $1 THEN NULL ELSE a.user_agent END"
								   " WHERE a.user_id = $1 OR a.resource_id = $1"
								   "    OR ((a.organization_id = ANY (coalesce($3, '{}')) OR a.organization_id IS NULL"
								   "         OR a.organization_id = '00000000-0000-0000-0000-000000000000')"
								   "        AND a.details IS NOT NULL AND a.details IS DISTINCT FROM"
								   "        dalgo_internal.erase_in_jsonb(a.details, coalesce($2, '{}'), '{}',"
								   "                                      a.organization_id IS NULL"
								   "                                      OR a.organization_id = '00000000-0000-0000-0000-000000000000'))",
								   3, argtypes, values, nulls, false, 0);
	}
	PG_FINALLY();
	{
		anonymize_in_progress = false;
	}
	PG_END_TRY();
	SetUserIdAndSecContext(save_userid, save_sec);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "audit anonymization failed: %s", SPI_result_code_string(rc));
	changed = SPI_processed;
	SPI_finish();
	if (on_citus)
		dalgo_citus_send_setting("dalgo.audit_anonymizing", NULL);
	PG_RETURN_INT64((int64) changed);
}

/* Define the request settings the audit trail records. */
void
dalgo_audit_init(void)
{
	DefineCustomStringVariable("dalgo.client_ip",
							   "Client address recorded in the audit trail, set per request by an authenticator role.",
							   "Falls back to the connection's address.",
							   &dalgo_client_ip, "", PGC_SUSET, GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("dalgo.user_agent",
							   "Client user agent recorded in the audit trail, set per request by an authenticator role.",
							   "Falls back to application_name.",
							   &dalgo_user_agent, "", PGC_SUSET, GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);
	DefineCustomBoolVariable("dalgo.audit_anonymizing",
							 "Internal, Citus: set by a coordinator's anonymize_audit_logs() for its update of the audit trail's shards.",
							 "Lets a superuser's id-keeping update of an audit shard's row pass the append-only guard; without effect for any other role or table.",
							 &audit_anonymizing, false, PGC_USERSET, GUC_NOT_IN_SAMPLE,
							 NULL, NULL, NULL);
}
