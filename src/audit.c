/*
 * audit.c
 *		dalgo.audit_trigger(): who changed what, written to dalgo.audit_logs.
 *
 * On ordinary and partitioned tables the trigger runs once per statement
 * with transition tables (one trigger each for INSERT, UPDATE and DELETE,
 * plus TRUNCATE): it turns every affected row into an audit row in C and
 * writes all of them with one INSERT (in chunks of AUDIT_BATCH_ROWS)
 * through a saved plan.  On foreign tables, which cannot have transition
 * tables, it runs per row.  The audit row is inserted with the rights of
 * audit_logs' owner, so end-user roles need (and have) no INSERT right on
 * the log.
 *
 * details holds the row for INSERT and DELETE, and only the changed columns
 * as {"col": {"old": ..., "new": ...}} for UPDATE; an UPDATE that changes
 * nothing, or only updated_at, writes nothing.  Excluded columns (the
 * trigger's arguments after the first, always including password_hash,
 * token, token_hash and access_token_encrypted) and, inside json columns
 * whose names say config, credential, setting, propert(y|ies) or secret,
 * every key containing secret, token, password or key are written as
 * "[redacted]".  A primary key that is not one uuid column is recorded in
 * details as "_key".
 *
 * Trigger arguments: the organization column ('' for none), then the
 * excluded columns.  dalgo.enable_audit() builds them.
 *
 * audit_logs itself is append-only: dalgo.audit_log_guard() refuses UPDATE,
 * DELETE and TRUNCATE except inside dalgo.purge_audit_logs().
 */
#include "dalgo.h"

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
PG_FUNCTION_INFO_V1(dalgo_purge_audit_logs);

/* Rows written by one INSERT. */
#define AUDIT_BATCH_ROWS 1000

static const char *const always_excluded[] = {
	"password_hash", "token", "token_hash", "access_token_encrypted", NULL
};
static const char *const ignored_columns[] = {"updated_at", "updatedAt", NULL};
static const char *const json_config_words[] = {
	"config", "credential", "setting", "propert", "secret", NULL
};
static const char *const sensitive_key_words[] = {"secret", "token", "password", "key", NULL};

/* Settings an authenticator sets per request. */
static char *dalgo_client_ip = NULL;
static char *dalgo_user_agent = NULL;

typedef struct AuditAttr
{
	AttrNumber	attnum;
	char	   *name;
	int			namelen;
	int16		typlen;
	bool		typbyval;
	bool		excluded;
	bool		ignored;		/* not diffed on UPDATE */
	bool		redact_json;	/* redact sensitive keys inside */
	Oid			typid;			/* converted directly when a common scalar type */
	FmgrInfo	to_jsonb;		/* to_jsonb() bound to this column's type, for the rest */
} AuditAttr;

typedef struct AuditConfig
{
	Oid			tgoid;			/* hash key: the trigger */
	bool		valid;
	Oid			relid;
	MemoryContext cxt;
	char	   *resource_type;
	int			nattrs;
	AuditAttr  *attrs;
	AttrNumber	org_attnum;		/* 0: none */
	AttrNumber	uuid_pk_attnum; /* 0: key is not one uuid column */
	int			npk;
	AttrNumber	pk_attnums[INDEX_MAX_KEYS];
} AuditConfig;

/* Columns of dalgo.audit_logs that the trigger fills. */
enum
{
	AL_ID,
	AL_ORGANIZATION_ID,
	AL_USER_ID,
	AL_ACTION,
	AL_RESOURCE_TYPE,
	AL_RESOURCE_ID,
	AL_DETAILS,
	AL_IP_ADDRESS,
	AL_USER_AGENT,
	AL_CREATED_AT,
	AL_UPDATED_AT,
	AL_NCOLUMNS
};

static const char *const audit_log_columns[AL_NCOLUMNS] = {
	"id", "organization_id", "user_id", "action", "resource_type", "resource_id",
	"details", "ip_address", "user_agent", "created_at", "updated_at"
};

/*
 * Where one firing's audit rows go: audit_logs opened for a direct insert
 * (heap plus indexes, as COPY does), and the rows waiting to be written.
 */
typedef struct AuditSink
{
	AuditConfig *cfg;
	MemoryContext cxt;			/* where the slots live */
	Relation	rel;
	TupleDesc	desc;			/* unpinned copy of audit_logs' descriptor, for the slots */
	EState	   *estate;
	ResultRelInfo *rri;
	BulkInsertState bistate;
	AttrNumber	col[AL_NCOLUMNS];	/* 0-based positions in audit_logs */
	Datum		common[AL_NCOLUMNS];	/* values shared by every row */
	bool		common_null[AL_NCOLUMNS];
	int			n;
	TupleTableSlot *slots[AUDIT_BATCH_ROWS];
} AuditSink;

static HTAB *audit_configs = NULL;
static bool purge_in_progress = false;

/* Case-insensitive substring test. */
static bool
contains_word(const char *s, int len, const char *word)
{
	int			wlen = strlen(word);

	for (int i = 0; i + wlen <= len; i++)
		if (pg_strncasecmp(s + i, word, wlen) == 0)
			return true;
	return false;
}

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
	AuditConfig *cfg;

	if (audit_configs == NULL)
		return;
	hash_seq_init(&status, audit_configs);
	while ((cfg = hash_seq_search(&status)) != NULL)
		if (relid == InvalidOid || cfg->relid == relid)
			cfg->valid = false;
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
}

/* Build (or find) the configuration of one audit trigger on one table. */
static AuditConfig *
audit_config(TriggerData *trigdata)
{
	Trigger    *trigger = trigdata->tg_trigger;
	Relation	rel = trigdata->tg_relation;
	TupleDesc	desc = RelationGetDescr(rel);
	AuditConfig *cfg;
	bool		found;
	MemoryContext old;
	const char *orgcol;
	Oid			nsp = RelationGetNamespace(rel);

	if (audit_configs == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(AuditConfig);
		audit_configs = hash_create("dalgo audit configurations", 64, &ctl,
									HASH_ELEM | HASH_BLOBS);
		CacheRegisterRelcacheCallback(audit_relcache_callback, (Datum) 0);
	}

	cfg = hash_search(audit_configs, &trigger->tgoid, HASH_ENTER, &found);
	if (found && cfg->valid)
		return cfg;
	if (found)
		MemoryContextDelete(cfg->cxt);

	cfg->valid = false;
	cfg->relid = RelationGetRelid(rel);
	cfg->cxt = AllocSetContextCreate(CacheMemoryContext, "dalgo audit configuration",
									 ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cfg->cxt);

	if (nsp == get_namespace_oid(DALGO_SCHEMA, true))
		cfg->resource_type = pstrdup(RelationGetRelationName(rel));
	else
		cfg->resource_type = psprintf("%s.%s", get_namespace_name(nsp),
									  RelationGetRelationName(rel));

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
		if (att->atttypid == JSONBOID || att->atttypid == JSONOID)
			for (int j = 0; json_config_words[j] != NULL; j++)
				if (contains_word(a->name, a->namelen, json_config_words[j]))
					a->redact_json = true;
		bind_to_jsonb(a, att, cfg->cxt);
	}
	load_primary_key(cfg, rel);
	MemoryContextSwitchTo(old);
	cfg->valid = true;
	return cfg;
}

/* True if a json object key names something secret. */
static bool
sensitive_key(const char *key, int len)
{
	for (int i = 0; sensitive_key_words[i] != NULL; i++)
		if (contains_word(key, len, sensitive_key_words[i]))
			return true;
	return false;
}

/* Push the string "[redacted]" as a value or element. */
static void
push_redacted(JsonbParseState **st, JsonbIteratorToken tok)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = "[redacted]";
	v.val.string.len = strlen("[redacted]");
	pushJsonbValue(st, tok, &v);
}

/* Copy a jsonb document, writing "[redacted]" for the value of every sensitive key. */
static Jsonb *
redact_jsonb(Jsonb *in)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	JsonbParseState *st = NULL;
	JsonbValue *res = NULL;
	bool		redact_next = false;
	bool		changed = false;
	int			skip_depth = 0;

	if (JB_ROOT_IS_SCALAR(in))
		return in;
	it = JsonbIteratorInit(&in->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if (skip_depth > 0)
		{
			if (tok == WJB_BEGIN_OBJECT || tok == WJB_BEGIN_ARRAY)
				skip_depth++;
			else if (tok == WJB_END_OBJECT || tok == WJB_END_ARRAY)
				skip_depth--;
			continue;
		}
		if (redact_next)
		{
			redact_next = false;
			changed = true;
			push_redacted(&st, WJB_VALUE);
			if (tok == WJB_BEGIN_OBJECT || tok == WJB_BEGIN_ARRAY)
				skip_depth = 1;
			continue;
		}
		if (tok == WJB_KEY)
			redact_next = sensitive_key(v.val.string.val, v.val.string.len);
		res = pushJsonbValue(&st, tok,
							 (tok == WJB_BEGIN_OBJECT || tok == WJB_BEGIN_ARRAY ||
							  tok == WJB_END_OBJECT || tok == WJB_END_ARRAY) ? NULL : &v);
	}
	return changed ? JsonbValueToJsonb(res) : in;
}

/*
 * Convert the common scalar types straight to a JsonbValue, exactly as
 * to_jsonb() would; false for any other type.
 */
static bool
scalar_to_jsonb_value(Oid typid, Datum value, JsonbValue *v)
{
	char	   *str;

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
			str = TextDatumGetCString(value);
			break;
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
	if (a->redact_json)
		j = redact_jsonb(j);
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
		struct varlena *vx = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(x));
		struct varlena *vy = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(y));

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

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
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
		nchanged++;
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

/* The client address: dalgo.client_ip, else inet_client_addr(), else NULL. */
static Datum
client_ip(bool *isnull)
{
	LOCAL_FCINFO(addr_fcinfo, 0);
	Datum		addr;

	*isnull = false;
	if (dalgo_client_ip != NULL && dalgo_client_ip[0] != '\0')
		return CStringGetTextDatum(dalgo_client_ip);
	InitFunctionCallInfoData(*addr_fcinfo, NULL, 0, InvalidOid, NULL, NULL);
	addr = inet_client_addr(addr_fcinfo);
	if (addr_fcinfo->isnull)
	{
		*isnull = true;
		return (Datum) 0;
	}
	return CStringGetTextDatum(DatumGetCString(DirectFunctionCall1(inet_out, addr)));
}

/* The user agent: dalgo.user_agent, else application_name, else NULL. */
static Datum
user_agent(bool *isnull)
{
	const char *ua = dalgo_user_agent;

	if (ua == NULL || ua[0] == '\0')
		ua = application_name;
	*isnull = (ua == NULL || ua[0] == '\0');
	return *isnull ? (Datum) 0 : CStringGetTextDatum(ua);
}

/* Open audit_logs for direct inserts and fill in what every row of this firing shares. */
static void
open_sink(AuditSink *sink, AuditConfig *cfg, const char *action)
{
	TupleDesc	desc;
	pg_uuid_t  *actor = palloc(sizeof(pg_uuid_t));
	bool		isnull;

	sink->cfg = cfg;
	sink->cxt = CurrentMemoryContext;
	sink->rel = table_open(dalgo_relation_oid("audit_logs"), RowExclusiveLock);
	desc = RelationGetDescr(sink->rel);
	sink->desc = CreateTupleDescCopy(desc);
	for (int i = 0; i < AL_NCOLUMNS; i++)
	{
		int			attnum = SPI_fnumber(desc, audit_log_columns[i]);

		if (attnum <= 0)
			elog(ERROR, "dalgo.audit_logs has no column \"%s\"", audit_log_columns[i]);
		sink->col[i] = attnum - 1;
	}
	sink->estate = CreateExecutorState();
	sink->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(sink->rri, sink->rel, 0, NULL, 0);
	ExecOpenIndices(sink->rri, false);
	sink->bistate = NULL;
	sink->n = 0;

	memset(sink->common_null, true, sizeof(sink->common_null));
	if (dalgo_current_user_id(actor))
	{
		sink->common[AL_USER_ID] = UUIDPGetDatum(actor);
		sink->common_null[AL_USER_ID] = false;
	}
	sink->common[AL_ACTION] = CStringGetTextDatum(action);
	sink->common[AL_RESOURCE_TYPE] = CStringGetTextDatum(cfg->resource_type);
	sink->common[AL_IP_ADDRESS] = client_ip(&isnull);
	sink->common_null[AL_IP_ADDRESS] = isnull;
	sink->common[AL_USER_AGENT] = user_agent(&isnull);
	sink->common_null[AL_USER_AGENT] = isnull;
	sink->common[AL_CREATED_AT] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	sink->common[AL_UPDATED_AT] = sink->common[AL_CREATED_AT];
	sink->common_null[AL_ACTION] = sink->common_null[AL_RESOURCE_TYPE] = false;
	sink->common_null[AL_CREATED_AT] = sink->common_null[AL_UPDATED_AT] = false;
}

/* Write the waiting rows: heap (several at once when there are several), then indexes. */
static void
flush_sink(AuditSink *sink)
{
	CommandId	cid = GetCurrentCommandId(true);

	if (sink->n == 0)
		return;
	if (sink->n == 1)
		table_tuple_insert(sink->rel, sink->slots[0], cid, 0, NULL);
	else
	{
		if (sink->bistate == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(sink->cxt);

			sink->bistate = GetBulkInsertState();
			MemoryContextSwitchTo(old);
		}
		table_multi_insert(sink->rel, sink->slots, sink->n, cid, 0, sink->bistate);
	}
	for (int i = 0; i < sink->n; i++)
	{
		ExecInsertIndexTuples(sink->rri, sink->slots[i], sink->estate, false, false, NULL, NIL);
		ExecClearTuple(sink->slots[i]);
		ResetPerTupleExprContext(sink->estate);
	}
	sink->n = 0;
}

/* Flush and release the sink. */
static void
close_sink(AuditSink *sink)
{
	flush_sink(sink);
	for (int i = 0; i < AUDIT_BATCH_ROWS && sink->slots[i] != NULL; i++)
		ExecDropSingleTupleTableSlot(sink->slots[i]);
	if (sink->bistate != NULL)
		FreeBulkInsertState(sink->bistate);
	ExecCloseIndices(sink->rri);
	FreeExecutorState(sink->estate);
	table_close(sink->rel, NoLock);
}

/* Queue one audit row, flushing when the batch is full. */
static void
add_row(AuditSink *sink, TupleTableSlot *row, Jsonb *details)
{
	AuditConfig *cfg = sink->cfg;
	TupleTableSlot *slot;
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));
	Datum	   *values;
	bool	   *nulls;

	if (sink->slots[sink->n] == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(sink->cxt);

		sink->slots[sink->n] = MakeSingleTupleTableSlot(sink->desc, &TTSOpsVirtual);
		MemoryContextSwitchTo(old);
	}
	slot = sink->slots[sink->n];
	ExecClearTuple(slot);
	values = slot->tts_values;
	nulls = slot->tts_isnull;
	for (int i = 0; i < AL_NCOLUMNS; i++)
	{
		values[sink->col[i]] = sink->common[i];
		nulls[sink->col[i]] = sink->common_null[i];
	}

	dalgo_uuid_v7(id);
	values[sink->col[AL_ID]] = UUIDPGetDatum(id);
	nulls[sink->col[AL_ID]] = false;
	/*
	 * The row's values live in its transition-table slot, which the next row
	 * overwrites: copy the two uuids.  The rest was allocated in the caller's
	 * row context, which is reset only after the batch is written.
	 */
	if (row != NULL && cfg->org_attnum > 0 && !row->tts_isnull[cfg->org_attnum - 1])
	{
		pg_uuid_t  *org = palloc(sizeof(pg_uuid_t));

		*org = *DatumGetUUIDP(row->tts_values[cfg->org_attnum - 1]);
		values[sink->col[AL_ORGANIZATION_ID]] = UUIDPGetDatum(org);
		nulls[sink->col[AL_ORGANIZATION_ID]] = false;
	}
	if (row != NULL && cfg->uuid_pk_attnum > 0 && !row->tts_isnull[cfg->uuid_pk_attnum - 1])
	{
		pg_uuid_t  *rid = palloc(sizeof(pg_uuid_t));

		*rid = *DatumGetUUIDP(row->tts_values[cfg->uuid_pk_attnum - 1]);
		values[sink->col[AL_RESOURCE_ID]] = UUIDPGetDatum(rid);
		nulls[sink->col[AL_RESOURCE_ID]] = false;
	}
	values[sink->col[AL_DETAILS]] = JsonbPGetDatum(details);
	nulls[sink->col[AL_DETAILS]] = false;
	ExecStoreVirtualTuple(slot);

	if (++sink->n == AUDIT_BATCH_ROWS)
		flush_sink(sink);
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

		slot_getallattrs(slot);
		add_row(b, slot, row_details(b->cfg, slot));
		MemoryContextSwitchTo(old);
		if (b->n == 0)
			MemoryContextReset(rowcxt); /* that batch is written */
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
		if (details != NULL)
			add_row(b, newslot, details);
		MemoryContextSwitchTo(old);
		if (b->n == 0)
			MemoryContextReset(rowcxt); /* that batch is written */
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
		add_row(b, slot, details);
}

/* Trigger: write audit rows for the statement (or row) that fired it. */
Datum
dalgo_audit_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TriggerEvent ev;
	AuditSink  *sink;
	MemoryContext rowcxt;
	TupleDesc	desc;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("audit_trigger() was not called by the trigger manager")));
	ev = trigdata->tg_event;
	if (!TRIGGER_FIRED_AFTER(ev))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("audit_trigger() must be fired AFTER"),
				 errhint("Use dalgo.enable_audit() to attach it.")));
	if (TRIGGER_FIRED_FOR_STATEMENT(ev) && !TRIGGER_FIRED_BY_TRUNCATE(ev) &&
		(TRIGGER_FIRED_BY_DELETE(ev) ? trigdata->tg_oldtable == NULL : trigdata->tg_newtable == NULL ||
		 (TRIGGER_FIRED_BY_UPDATE(ev) && trigdata->tg_oldtable == NULL)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("audit_trigger() per statement needs its transition tables"),
				 errhint("Use dalgo.enable_audit() to attach it.")));
	/* A restore loads rows and their audit trail as dumped: no new rows. */
	if (TRIGGER_FIRED_BY_INSERT(ev) && dalgo_restoring())
		return PointerGetDatum(NULL);

	sink = palloc0(sizeof(AuditSink));
	open_sink(sink, audit_config(trigdata),
			  TRIGGER_FIRED_BY_INSERT(ev) ? "insert" :
			  TRIGGER_FIRED_BY_UPDATE(ev) ? "update" :
			  TRIGGER_FIRED_BY_DELETE(ev) ? "delete" : "truncate");
	desc = RelationGetDescr(trigdata->tg_relation);
	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "dalgo audit rows", ALLOCSET_DEFAULT_SIZES);

	if (TRIGGER_FIRED_FOR_ROW(ev))
		audit_one_row(sink, trigdata);
	else if (TRIGGER_FIRED_BY_TRUNCATE(ev))
	{
		JsonbParseState *st = NULL;

		pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
		add_row(sink, NULL, JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL)));
	}
	else if (TRIGGER_FIRED_BY_UPDATE(ev))
		audit_updates(sink, trigdata->tg_oldtable, trigdata->tg_newtable, desc, rowcxt);
	else
		audit_rows(sink, TRIGGER_FIRED_BY_INSERT(ev) ? trigdata->tg_newtable : trigdata->tg_oldtable,
				   desc, rowcxt);

	close_sink(sink);
	MemoryContextDelete(rowcxt);
	return PointerGetDatum(NULL);
}

/* Trigger: audit_logs is append-only, except inside purge_audit_logs(). */
Datum
dalgo_audit_log_guard(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("audit_log_guard() was not called by the trigger manager")));
	if (purge_in_progress && TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		return PointerGetDatum(trigdata->tg_trigtuple);
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
}
