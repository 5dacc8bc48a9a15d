/*
 * audit_writer.c
 *		Writing audit rows into dalgo.audit_logs: the riskiest code of dalgo,
 *		kept apart from the trigger (audit.c) that decides what to write.
 *
 * Why it is risky.  To keep auditing cheap, rows normally bypass the
 * executor: they go straight into audit_logs' heap (table_multi_insert,
 * several at once) and its indexes (ExecInsertIndexTuples), as COPY does.
 * Nothing an INSERT would do happens on that path: no defaults, no CHECK
 * or NOT NULL checks, no generated columns, no rules, no triggers, no
 * permission checks.  A mistake here writes a row PostgreSQL itself would
 * have refused, or crashes the backend.
 *
 * What it guarantees.
 *	 - The direct path is taken only when audit_logs has exactly the shape
 *	   the install script gives it (audit_logs_direct_ok): an ordinary table,
 *	   the eleven columns in order and of their types with no typmod, no
 *	   generated columns, CHECK constraints, rules or INSERT triggers, and no
 *	   NOT NULL on a column the writer may leave NULL.  With that shape the
 *	   direct write stores exactly what an INSERT would.
 *	 - For any other shape, rows go through a prepared INSERT run as
 *	   audit_logs' owner (only the INSERT: the details were built as the
 *	   caller), which honours defaults, constraints, generated columns,
 *	   rules and triggers; an INSERT that writes no row, or several, is an
 *	   error, so a rule or trigger cannot silently drop the audit trail.
 *	 - A missing column, or one of another type or generated, is a clear
 *	   error naming it, and the audited change is refused; no shape of
 *	   audit_logs crashes the server.
 *	 - Memory: queued rows are copied into the sink's batch context, reset
 *	   after every batch of at most AUDIT_BATCH_ROWS rows, so the caller may
 *	   free a row and its details as soon as dalgo_audit_add_row returns.
 *
 * The sink: dalgo_audit_open_sink (once per firing: the actor, the client
 * address and user agent, the time, and the choice of path),
 * dalgo_audit_add_row (per audited row), dalgo_audit_close_sink (flush,
 * release).
 */
#include "audit.h"

#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

static const char *const audit_log_columns[AL_NCOLUMNS] = {
	"id", "organization_id", "user_id", "action", "resource_type", "resource_id",
	"details", "ip_address", "user_agent", "created_at", "updated_at"
};

static const Oid audit_log_types[AL_NCOLUMNS] = {
	UUIDOID, UUIDOID, UUIDOID, TEXTOID, TEXTOID, UUIDOID,
	JSONBOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID
};

/* Columns the writer never leaves NULL (a NOT NULL on them is honoured by construction). */
static const bool audit_log_always_set[AL_NCOLUMNS] = {
	true, false, false, true, true, false, true, false, false, true, true
};

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

/*
 * Check audit_logs' shape.  Every column the writer fills must exist with
 * its type, or this raises an error naming it.  Returns true when the
 * table has exactly the shape of the install script, so that the direct
 * writer honours everything an INSERT would.
 */
static bool
audit_logs_direct_ok(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	TriggerDesc *trig = rel->trigdesc;
	bool		direct;

	direct = rel->rd_rel->relkind == RELKIND_RELATION && !rel->rd_rel->relhasrules &&
		desc->natts == AL_NCOLUMNS &&
		(desc->constr == NULL ||
		 (desc->constr->num_check == 0 && !desc->constr->has_generated_stored)) &&
		(trig == NULL ||
		 !(trig->trig_insert_before_row || trig->trig_insert_after_row ||
		   trig->trig_insert_instead_row || trig->trig_insert_before_statement ||
		   trig->trig_insert_after_statement || trig->trig_insert_new_table));

	for (int c = 0; c < AL_NCOLUMNS; c++)
	{
		Form_pg_attribute att = NULL;
		int			pos = -1;

		for (int i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute a = TupleDescAttr(desc, i);

			if (!a->attisdropped && strcmp(NameStr(a->attname), audit_log_columns[c]) == 0)
			{
				att = a;
				pos = i;
				break;
			}
		}
		if (att == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("dalgo.audit_logs has no column \"%s\"", audit_log_columns[c]),
					 errdetail("The audit trail writes %s into every audit row; changes to audited tables are refused until it can.",
							   audit_log_columns[c]),
					 errhint("Add the column back: ALTER TABLE dalgo.audit_logs ADD COLUMN %s %s.",
							 audit_log_columns[c], format_type_be(audit_log_types[c]))));
		if (att->atttypid != audit_log_types[c])
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column \"%s\" of dalgo.audit_logs has type %s, not %s",
							audit_log_columns[c], format_type_be(att->atttypid),
							format_type_be(audit_log_types[c])),
					 errdetail("The audit trail writes %s values; changes to audited tables are refused until it can.",
							   format_type_be(audit_log_types[c])),
					 errhint("Change it back: ALTER TABLE dalgo.audit_logs ALTER COLUMN %s TYPE %s.",
							 audit_log_columns[c], format_type_be(audit_log_types[c]))));
		if (att->attgenerated != '\0')
			ereport(ERROR,
					(errcode(ERRCODE_GENERATED_ALWAYS),
					 errmsg("column \"%s\" of dalgo.audit_logs is a generated column", audit_log_columns[c]),
					 errdetail("The audit trail writes it; changes to audited tables are refused until it can."),
					 errhint("Make it an ordinary column of type %s again.",
							 format_type_be(audit_log_types[c]))));
		if (pos != c || att->atttypmod != -1 || (att->attnotnull && !audit_log_always_set[c]))
			direct = false;
	}
	return direct;
}

/* The prepared INSERT of the fallback writer. */
static SPIPlanPtr
prepare_insert(void)
{
	StringInfoData sql;
	SPIPlanPtr	plan;
	Oid			argtypes[AL_NCOLUMNS];

	initStringInfo(&sql);
	appendStringInfoString(&sql, "INSERT INTO dalgo.audit_logs (");
	for (int c = 0; c < AL_NCOLUMNS; c++)
		appendStringInfo(&sql, "%s%s", c > 0 ? ", " : "", audit_log_columns[c]);
	appendStringInfoString(&sql, ") VALUES (");
	for (int c = 0; c < AL_NCOLUMNS; c++)
		appendStringInfo(&sql, "%s$%d", c > 0 ? ", " : "", c + 1);
	appendStringInfoChar(&sql, ')');
	memcpy(argtypes, audit_log_types, sizeof(argtypes));
	plan = SPI_prepare(sql.data, AL_NCOLUMNS, argtypes);
	if (plan == NULL)
		elog(ERROR, "could not prepare the audit INSERT: %s", SPI_result_code_string(SPI_result));
	return plan;
}

/* Open audit_logs for writing and fill in what every row of this firing shares. */
void
dalgo_audit_open_sink(AuditSink *sink, AuditConfig *cfg, const char *action)
{
	pg_uuid_t  *actor = palloc(sizeof(pg_uuid_t));
	bool		isnull;

	sink->cfg = cfg;
	sink->cxt = CurrentMemoryContext;
	sink->n = 0;
	/* Most statements change a row or a few: the queue grows as needed. */
	sink->capacity = 8;
	sink->values = palloc(sizeof(*sink->values) * sink->capacity);
	sink->nulls = palloc(sizeof(*sink->nulls) * sink->capacity);

	/* What every row shares, taken as the caller (before any change of user). */
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

	sink->batchcxt = AllocSetContextCreate(CurrentMemoryContext, "dalgo audit batch",
										   ALLOCSET_DEFAULT_SIZES);
	sink->rel = relation_open(dalgo_relation_oid("audit_logs"), RowExclusiveLock);
	/* Citus routes rows of a distributed audit_logs to their shards: only an INSERT can. */
	sink->citus = dalgo_citus_is_distributed(RelationGetRelid(sink->rel));
	sink->direct = audit_logs_direct_ok(sink->rel) && !sink->citus;
	if (sink->direct)
	{
		sink->estate = CreateExecutorState();
		sink->rri = makeNode(ResultRelInfo);
		InitResultRelInfo(sink->rri, sink->rel, 0, NULL, 0);
		ExecOpenIndices(sink->rri, false);
		sink->bistate = NULL;
		sink->slots = palloc0(sizeof(TupleTableSlot *) * AUDIT_BATCH_ROWS);
	}
	else
	{
		MemoryContext old = CurrentMemoryContext;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		MemoryContextSwitchTo(old);
		sink->plan = NULL;
	}
}

/* Write the queued rows directly: heap (several at once when there are several), then indexes. */
static void
flush_direct(AuditSink *sink)
{
	CommandId	cid = GetCurrentCommandId(true);
	TupleDesc	desc = RelationGetDescr(sink->rel);

	for (int i = 0; i < sink->n; i++)
	{
		TupleTableSlot *slot = sink->slots[i];

		if (slot == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(sink->cxt);

			slot = sink->slots[i] = MakeSingleTupleTableSlot(desc, &TTSOpsVirtual);
			MemoryContextSwitchTo(old);
		}
		ExecClearTuple(slot);
		memcpy(slot->tts_values, sink->values[i], sizeof(Datum) * AL_NCOLUMNS);
		memcpy(slot->tts_isnull, sink->nulls[i], sizeof(bool) * AL_NCOLUMNS);
		ExecStoreVirtualTuple(slot);
	}
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
}

/*
 * Write the queued rows through the prepared INSERT, as audit_logs' owner.
 * Only the INSERT runs as the owner (with whatever triggers the owner put on
 * audit_logs): the rows' details were built as the caller.  An error
 * restores the caller's identity with the (sub)transaction.
 */
static void
flush_insert(AuditSink *sink)
{
	char		nulls[AL_NCOLUMNS];
	Oid			save_userid;
	int			save_sec;

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(RelationGetForm(sink->rel)->relowner,
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	if (sink->plan == NULL)
		sink->plan = prepare_insert();
	for (int i = 0; i < sink->n; i++)
	{
		int			rc;

		for (int c = 0; c < AL_NCOLUMNS; c++)
			nulls[c] = sink->nulls[i][c] ? 'n' : ' ';

		/*
		 * Citus refuses NULL in a distribution column: on a cluster, a change
		 * outside any organization is recorded under the nil uuid.
		 */
		if (sink->citus && sink->nulls[i][AL_ORGANIZATION_ID])
		{
			static const pg_uuid_t nil_uuid = {{0}};

			sink->values[i][AL_ORGANIZATION_ID] = UUIDPGetDatum(&nil_uuid);
			nulls[AL_ORGANIZATION_ID] = ' ';
		}
		rc = SPI_execute_plan(sink->plan, sink->values[i], nulls, false, 0);
		if (rc != SPI_OK_INSERT && rc != SPI_OK_INSERT_RETURNING)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("an audit row was not written to dalgo.audit_logs"),
					 errdetail("The INSERT returned %s.", SPI_result_code_string(rc)),
					 errhint("A rule or trigger on dalgo.audit_logs may be suppressing inserts.")));
		if (SPI_processed != 1)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("an audit row was not written to dalgo.audit_logs"),
					 errdetail("The INSERT wrote " UINT64_FORMAT " rows instead of one.", SPI_processed),
					 errhint("A rule or trigger on dalgo.audit_logs may be suppressing inserts.")));
	}
	SetUserIdAndSecContext(save_userid, save_sec);
}

/* Write the queued rows and free their memory. */
static void
flush_sink(AuditSink *sink)
{
	MemoryContext old;

	if (sink->n == 0)
		return;
	old = MemoryContextSwitchTo(sink->batchcxt);
	if (sink->direct)
		flush_direct(sink);
	else
		flush_insert(sink);
	MemoryContextSwitchTo(old);
	sink->n = 0;
	MemoryContextReset(sink->batchcxt);
}

/* Flush and release the sink. */
void
dalgo_audit_close_sink(AuditSink *sink)
{
	flush_sink(sink);
	if (sink->direct)
	{
		for (int i = 0; i < AUDIT_BATCH_ROWS && sink->slots[i] != NULL; i++)
			ExecDropSingleTupleTableSlot(sink->slots[i]);
		if (sink->bistate != NULL)
			FreeBulkInsertState(sink->bistate);
		ExecCloseIndices(sink->rri);
		FreeExecutorState(sink->estate);
	}
	else
		SPI_finish();
	relation_close(sink->rel, NoLock);
	MemoryContextDelete(sink->batchcxt);
}

/* Copy a uuid column of a row into the batch, or leave the value NULL. */
static void
queue_uuid(AuditSink *sink, TupleTableSlot *row, AttrNumber attnum, Datum *value, bool *isnull)
{
	pg_uuid_t  *u;

	if (row == NULL || attnum <= 0 || row->tts_isnull[attnum - 1])
		return;
	u = MemoryContextAlloc(sink->batchcxt, sizeof(pg_uuid_t));
	*u = *DatumGetUUIDP(row->tts_values[attnum - 1]);
	*value = UUIDPGetDatum(u);
	*isnull = false;
}

/*
 * Queue one audit row, flushing when the batch is full.  Everything the row
 * needs is copied into the batch context: the caller may free row and
 * details as soon as this returns.
 */
void
dalgo_audit_add_row(AuditSink *sink, TupleTableSlot *row, Jsonb *details)
{
	AuditConfig *cfg = sink->cfg;
	Datum	   *values;
	bool	   *nulls;
	pg_uuid_t  *id = MemoryContextAlloc(sink->batchcxt, sizeof(pg_uuid_t));
	Jsonb	   *copy = MemoryContextAlloc(sink->batchcxt, VARSIZE(details));

	if (sink->n == sink->capacity)
	{
		sink->capacity = Min(sink->capacity * 4, AUDIT_BATCH_ROWS);
		sink->values = repalloc(sink->values, sizeof(*sink->values) * sink->capacity);
		sink->nulls = repalloc(sink->nulls, sizeof(*sink->nulls) * sink->capacity);
	}
	values = sink->values[sink->n];
	nulls = sink->nulls[sink->n];
	memcpy(values, sink->common, sizeof(sink->common));
	memcpy(nulls, sink->common_null, sizeof(sink->common_null));
	dalgo_uuid_v7(id);
	values[AL_ID] = UUIDPGetDatum(id);
	nulls[AL_ID] = false;
	queue_uuid(sink, row, cfg->org_attnum, &values[AL_ORGANIZATION_ID], &nulls[AL_ORGANIZATION_ID]);
	queue_uuid(sink, row, cfg->uuid_pk_attnum, &values[AL_RESOURCE_ID], &nulls[AL_RESOURCE_ID]);
	memcpy(copy, details, VARSIZE(details));
	values[AL_DETAILS] = JsonbPGetDatum(copy);
	nulls[AL_DETAILS] = false;

	if (++sink->n == AUDIT_BATCH_ROWS)
		flush_sink(sink);
}
