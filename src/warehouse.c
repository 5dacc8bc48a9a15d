/*
 * warehouse.c
 *		Running SQL inside an organization's warehouse.  Each organization has
 *		a schema org_<id> owned by a role dalgo_wh_<id> (see
 *		dalgo.warehouse_schema()).  Recipe SQL, previews and output builds run
 *		as that role, with search_path pinned to pg_catalog, pg_temp and the
 *		statement timeout dalgo.statement_timeout: whatever a recipe says, it
 *		can reach nothing but its own organization's tables.
 *
 * These functions are internal: EXECUTE is granted to nobody, and the
 * SECURITY DEFINER functions that call them check membership first.
 */
#include "dalgo.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "lib/stringinfo.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timeout.h"

PG_FUNCTION_INFO_V1(dalgo_warehouse_execute);
PG_FUNCTION_INFO_V1(dalgo_warehouse_query);
PG_FUNCTION_INFO_V1(dalgo_export_warehouse_table);

int			dalgo_statement_timeout = 300000;
static int	dalgo_max_result_bytes = 64 * 1024 * 1024;

/*
 * Refuse to act as a warehouse role that has more rights than dalgo gives
 * it: someone may have altered it (or created it before dalgo did).
 */
static void
warehouse_role_check(Oid role, const char *name)
{
	HeapTuple	tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(role));
	Form_pg_authid form;
	bool		bad;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for role %u", role);
	form = (Form_pg_authid) GETSTRUCT(tup);
	bad = form->rolsuper || form->rolbypassrls || form->rolcreaterole || form->rolcreatedb ||
		form->rolreplication || form->rolcanlogin;
	ReleaseSysCache(tup);
	if (bad)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("warehouse role \"%s\" has attributes dalgo does not give it", name),
				 errdetail("A warehouse role must be NOLOGIN, NOSUPERUSER, NOBYPASSRLS, NOCREATEROLE, NOCREATEDB and NOREPLICATION."),
				 errhint("A superuser must correct the role before the organization's warehouse is used again.")));
}

/* The role that owns an organization's warehouse; raises if it does not exist yet. */
static Oid
warehouse_role(const pg_uuid_t *org)
{
	char	   *name = dalgo_warehouse_role_name(org);
	Oid			role;

	role = get_role_oid(name, true);
	if (!OidIsValid(role))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the organization has no warehouse yet"),
				 errhint("Call dalgo.ensure_warehouse(organization_id) first.")));
	warehouse_role_check(role, name);
	return role;
}

typedef struct WarehouseContext
{
	Oid			save_userid;
	int			save_sec;
	int			save_nestlevel;
	bool		entered;		/* between enter_warehouse and leave_warehouse */
	DalgoDeadline deadline;		/* the statement's dalgo.statement_timeout */
} WarehouseContext;

/*
 * Become the warehouse role, pin search_path, arm the statement timeout.
 * Every setting changed from here on belongs to a GUC nest level of its own
 * that leave_warehouse rolls back, whatever the step did (SET, set_config
 * with is_local false, a function's SET clause).  read_only makes the step
 * read-only: transaction_read_only is on inside the nest level, so the
 * executor refuses every write and utility command, however it is reached.
 */
static void
enter_warehouse(const pg_uuid_t *org, WarehouseContext *wc, bool read_only, bool with_deadline)
{
	Oid			role = warehouse_role(org);

	GetUserIdAndSecContext(&wc->save_userid, &wc->save_sec);
	wc->save_nestlevel = NewGUCNestLevel();
	wc->entered = true;
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (read_only)
		(void) set_config_option("transaction_read_only", "on", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	SetUserIdAndSecContext(role, wc->save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	/* One deadline for the whole top-level statement (deadline.c); the earlier one wins. */
	wc->deadline.armed = false;
	if (with_deadline)
		dalgo_deadline_enter(&wc->deadline);
}

/* Disarm our timeout and re-arm the caller's, if it had one. */
static void
restore_timeout(WarehouseContext *wc)
{
	dalgo_deadline_leave(&wc->deadline);
}

/*
 * Undo enter_warehouse, on success and on error alike: the caller's timeout,
 * user and security context, and every setting as it was before the step
 * (AtEOXact_GUC with isCommit false: even a session-level SET made inside
 * the step is rolled back, so nothing leaks into the caller's session or a
 * run worker's next run).
 */
static void
leave_warehouse(WarehouseContext *wc)
{
	restore_timeout(wc);
	if (!wc->entered)
		return;
	wc->entered = false;
	SetUserIdAndSecContext(wc->save_userid, wc->save_sec);
	AtEOXact_GUC(false, wc->save_nestlevel);
}

/* SQL: dalgo.warehouse_execute(org, sql): run a command as the warehouse role; rows processed. */
Datum
dalgo_warehouse_execute(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *org = PG_GETARG_UUID_P(0);
	char	   *sql = text_to_cstring(PG_GETARG_TEXT_PP(1));
	WarehouseContext wc;
	int			rc;
	uint64		processed;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	enter_warehouse(org, &wc, false, true);
	PG_TRY();
	{
		rc = SPI_execute(sql, false, 0);
	}
	PG_CATCH();
	{
		leave_warehouse(&wc);
		PG_RE_THROW();
	}
	PG_END_TRY();
	processed = SPI_processed;
	leave_warehouse(&wc);
	if (rc < 0)
		elog(ERROR, "warehouse command failed: %s", SPI_result_code_string(rc));
	SPI_finish();
	PG_RETURN_INT64((int64) processed);
}

/* The result of one call is over dalgo.max_result_bytes. */
static void
result_too_large(int64 bytes)
{
	ereport(ERROR,
			(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
			 errmsg("the result is larger than dalgo.max_result_bytes = %d bytes (" INT64_FORMAT " bytes so far)",
					dalgo_max_result_bytes, bytes),
			 errhint("Ask for fewer rows (row_limit) or fewer and smaller columns.")));
}

/*
 * The bytes a row holds once its values are detoasted, computed without
 * detoasting them.
 */
static int64
row_raw_bytes(TupleDesc desc, Datum *values, bool *nulls)
{
	int64		bytes = 0;

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (nulls[i] || att->attisdropped)
			continue;
		if (att->attlen == -1)
			bytes += toast_raw_datum_size(values[i]);
		else if (att->attlen == -2)
			bytes += strlen(DatumGetCString(values[i])) + 1;
		else
			bytes += att->attlen;
	}
	return bytes;
}

/*
 * Stream the rows of a prepared query through a cursor into the call's
 * tuplestore (which spills to disk past work_mem), each as jsonb.  A batch
 * of rows is fetched at a time, sized so that a batch holds about 1 MB;
 * each row's jsonb is built in a context reset per row, after its raw size
 * was checked against what is left of dalgo.max_result_bytes.  Memory per
 * call stays flat whatever the query returns.
 */
static void
stream_rows(SPIPlanPtr plan, ReturnSetInfo *rsinfo)
{
	Portal		portal = SPI_cursor_open(NULL, plan, NULL, NULL, true);
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "dalgo result row",
												 ALLOCSET_DEFAULT_SIZES);
	TupleDesc	desc = NULL;
	Datum	   *values = NULL;
	bool	   *nulls = NULL;
	FmgrInfo	to_jsonb;
	int64		total = 0;
	long		batch = 1;

	fmgr_info(F_TO_JSONB, &to_jsonb);
	for (;;)
	{
		int64		batch_bytes = 0;

		SPI_cursor_fetch(portal, true, batch);
		if (SPI_processed == 0)
			break;
		if (desc == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);

			/* a blessed copy, so that composite_to_jsonb finds the row type */
			desc = BlessTupleDesc(CreateTupleDescCopy(SPI_tuptable->tupdesc));
			values = palloc(sizeof(Datum) * Max(desc->natts, 1));
			nulls = palloc(sizeof(bool) * Max(desc->natts, 1));
			fmgr_info_set_expr((Node *) makeFuncExpr(F_TO_JSONB, JSONBOID,
													 list_make1(makeNullConst(RECORDOID, -1, InvalidOid)),
													 InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL),
							   &to_jsonb);
			MemoryContextSwitchTo(old);
		}
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tuple = SPI_tuptable->vals[i];
			MemoryContext old;
			Datum		row;
			Datum		json;
			bool		isnull = false;
			int64		raw;

			CHECK_FOR_INTERRUPTS();
			heap_deform_tuple(tuple, desc, values, nulls);
			raw = row_raw_bytes(desc, values, nulls);
			batch_bytes += raw;
			if (total + raw > dalgo_max_result_bytes)
				result_too_large(total + raw);
			old = MemoryContextSwitchTo(rowcxt);
			row = heap_copy_tuple_as_datum(tuple, desc);
			json = FunctionCall1(&to_jsonb, row);
			total += VARSIZE_ANY(DatumGetPointer(json));
			if (total > dalgo_max_result_bytes)
				result_too_large(total);
			MemoryContextSwitchTo(old);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &json, &isnull);
			MemoryContextReset(rowcxt);
		}
		SPI_freetuptable(SPI_tuptable);
		/* next batch: about 1 MB of rows, 1 to 1,000 rows */
		batch = (long) Min(((int64) 1 << 20) * (int64) SPI_processed / Max(batch_bytes, 1), 1000);
		batch = Max(batch, 1);
	}
	SPI_cursor_close(portal);
	MemoryContextDelete(rowcxt);
}

/*
 * SQL: dalgo.warehouse_query(org, sql, row_limit): the rows of a query as
 * jsonb, run as the warehouse role; row_limit 0 only parse-analyzes it.
 * The rows are streamed through a cursor and the call's result is capped
 * at dalgo.max_result_bytes.
 */
Datum
dalgo_warehouse_query(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	pg_uuid_t  *org = PG_GETARG_UUID_P(0);
	char	   *sql = text_to_cstring(PG_GETARG_TEXT_PP(1));
	int32		row_limit = PG_GETARG_INT32(2);
	WarehouseContext wc;
	char	   *query;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (row_limit < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("row_limit must not be negative")));
	query = psprintf("SELECT * FROM (%s\n) q LIMIT %d", sql, row_limit);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	enter_warehouse(org, &wc, true, true);
	PG_TRY();
	{
		SPIPlanPtr	plan = SPI_prepare(query, 0, NULL);

		if (plan == NULL)
			elog(ERROR, "could not prepare the query: %s", SPI_result_code_string(SPI_result));
		if (row_limit > 0)
			stream_rows(plan, rsinfo);
		SPI_freeplan(plan);
	}
	PG_CATCH();
	{
		leave_warehouse(&wc);
		PG_RE_THROW();
	}
	PG_END_TRY();
	leave_warehouse(&wc);
	SPI_finish();
	return (Datum) 0;
}

/*
 * Export: every row of a warehouse table, one line of text per call
 * (value-per-call), read through a cursor in batches of about 1 MB.  Only
 * the current batch is in memory: the call streams a table of any size in
 * flat memory, and a consumer that stops early (LIMIT) closes the cursor.
 */
typedef enum ExportFormat
{
	EXPORT_CSV,
	EXPORT_TEXT,
	EXPORT_JSON
} ExportFormat;

typedef struct ExportState
{
	pg_uuid_t	org;
	char	   *portal_name;	/* NULL once closed */
	ExportFormat format;
	TupleDesc	desc;			/* blessed copy of the cursor's row type */
	FmgrInfo   *out_funcs;
	MemoryContext batchcxt;		/* the current batch's lines; reset per batch */
	MemoryContext rowcxt;		/* one row's output function results; reset per row */
	Datum	   *lines;
	uint64		nlines;
	uint64		next;
	long		batch;
	bool		header_pending;
} ExportState;

/* Append a value as COPY (FORMAT csv) writes it: quoted when it must be. */
static void
csv_append(StringInfo buf, const char *value, bool single_column)
{
	bool		quote = (*value == '\0') || (single_column && strcmp(value, "\\.") == 0);

	for (const char *p = value; !quote && *p; p++)
		quote = (*p == ',' || *p == '"' || *p == '\n' || *p == '\r');
	if (!quote)
	{
		appendStringInfoString(buf, value);
		return;
	}
	appendStringInfoChar(buf, '"');
	for (const char *p = value; *p; p++)
	{
		if (*p == '"')
			appendStringInfoChar(buf, '"');
		appendStringInfoChar(buf, *p);
	}
	appendStringInfoChar(buf, '"');
}

/* Append a value as COPY (FORMAT text) writes it: backslash escapes. */
static void
text_append(StringInfo buf, const char *value)
{
	for (const char *p = value; *p; p++)
	{
		switch (*p)
		{
			case '\\':
				appendStringInfoString(buf, "\\\\");
				break;
			case '\b':
				appendStringInfoString(buf, "\\b");
				break;
			case '\f':
				appendStringInfoString(buf, "\\f");
				break;
			case '\n':
				appendStringInfoString(buf, "\\n");
				break;
			case '\r':
				appendStringInfoString(buf, "\\r");
				break;
			case '\t':
				appendStringInfoString(buf, "\\t");
				break;
			case '\v':
				appendStringInfoString(buf, "\\v");
				break;
			default:
				appendStringInfoChar(buf, *p);
		}
	}
}

/* The CSV header: the column names, quoted as COPY's HEADER quotes them. */
static Datum
export_header(ExportState *st)
{
	StringInfoData buf;
	int			live = 0;

	initStringInfo(&buf);
	for (int i = 0; i < st->desc->natts; i++)
		live += TupleDescAttr(st->desc, i)->attisdropped ? 0 : 1;
	for (int i = 0, n = 0; i < st->desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(st->desc, i);

		if (att->attisdropped)
			continue;
		if (n++ > 0)
			appendStringInfoChar(&buf, ',');
		csv_append(&buf, NameStr(att->attname), live == 1);
	}
	return PointerGetDatum(cstring_to_text_with_len(buf.data, buf.len));
}

/* One row as a line of the export's format, allocated in the batch context. */
static Datum
export_line(ExportState *st, HeapTuple tuple)
{
	MemoryContext old = MemoryContextSwitchTo(st->rowcxt);
	StringInfoData buf;
	Datum		line;
	int			live = 0;

	initStringInfo(&buf);
	if (st->format == EXPORT_JSON)
	{
		Datum		row = heap_copy_tuple_as_datum(tuple, st->desc);
		text	   *json = DatumGetTextPP(DirectFunctionCall1(row_to_json, row));

		appendBinaryStringInfo(&buf, VARDATA_ANY(json), VARSIZE_ANY_EXHDR(json));
	}
	else
	{
		for (int i = 0; i < st->desc->natts; i++)
			live += TupleDescAttr(st->desc, i)->attisdropped ? 0 : 1;
		for (int i = 0, n = 0; i < st->desc->natts; i++)
		{
			bool		isnull;
			Datum		value;

			if (TupleDescAttr(st->desc, i)->attisdropped)
				continue;
			if (n++ > 0)
				appendStringInfoChar(&buf, st->format == EXPORT_CSV ? ',' : '\t');
			value = heap_getattr(tuple, i + 1, st->desc, &isnull);
			if (isnull)
			{
				if (st->format == EXPORT_TEXT)
					appendStringInfoString(&buf, "\\N");
				continue;
			}
			if (st->format == EXPORT_CSV)
				csv_append(&buf, OutputFunctionCall(&st->out_funcs[i], value), live == 1);
			else
				text_append(&buf, OutputFunctionCall(&st->out_funcs[i], value));
		}
	}
	MemoryContextSwitchTo(st->batchcxt);
	line = PointerGetDatum(cstring_to_text_with_len(buf.data, buf.len));
	MemoryContextSwitchTo(old);
	MemoryContextReset(st->rowcxt);
	return line;
}

/* Fetch the next batch of rows as the warehouse role; none left closes the cursor. */
static void
export_fetch(ExportState *st)
{
	WarehouseContext wc;
	volatile int64 bytes = 0;

	MemoryContextReset(st->batchcxt);
	st->nlines = st->next = 0;
	if (st->portal_name == NULL)
		return;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	enter_warehouse(&st->org, &wc, true, false);
	PG_TRY();
	{
		Portal		portal = SPI_cursor_find(st->portal_name);

		if (portal == NULL)
			elog(ERROR, "export cursor \"%s\" is gone", st->portal_name);
		SPI_cursor_fetch(portal, true, st->batch);
		st->lines = MemoryContextAlloc(st->batchcxt, sizeof(Datum) * Max(SPI_processed, 1));
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			CHECK_FOR_INTERRUPTS();
			st->lines[i] = export_line(st, SPI_tuptable->vals[i]);
			bytes += VARSIZE_ANY(DatumGetPointer(st->lines[i]));
		}
		st->nlines = SPI_processed;
		SPI_freetuptable(SPI_tuptable);
		if (st->nlines == 0)
		{
			SPI_cursor_close(portal);
			pfree(st->portal_name);
			st->portal_name = NULL;
		}
	}
	PG_CATCH();
	{
		leave_warehouse(&wc);
		PG_RE_THROW();
	}
	PG_END_TRY();
	leave_warehouse(&wc);
	SPI_finish();
	/* next batch: about 1 MB of lines, 1 to 10,000 rows */
	if (st->nlines > 0)
		st->batch = (long) Max(Min(((int64) 1 << 20) * (int64) st->nlines / Max(bytes, 1), 10000), 1);
}

/* Executor shutdown (the consumer stopped early, or the scan ended): close the cursor. */
static void
export_shutdown(Datum arg)
{
	ExportState *st = (ExportState *) DatumGetPointer(arg);

	if (st->portal_name != NULL)
	{
		Portal		portal = GetPortalByName(st->portal_name);

		if (PortalIsValid(portal) && portal->status != PORTAL_ACTIVE)
			PortalDrop(portal, false);
		st->portal_name = NULL;
	}
}

/*
 * SQL: dalgo.export_warehouse_table(organization_id, table_name, format):
 * every row of a warehouse table as lines of csv (a header line first),
 * text (COPY's text format) or json (one object per row).  A SECURITY
 * DEFINER function: dalgo_internal.export_query checks that the caller
 * may read the organization's warehouse and compiles the read; the rows are
 * read as the warehouse role, read-only, exactly as read_warehouse_table.
 */
Datum
dalgo_export_warehouse_table(PG_FUNCTION_ARGS)
{
	FuncCallContext *funcctx;
	ExportState *volatile st;

	if (SRF_IS_FIRSTCALL())
	{
		ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
		MemoryContext old;
		char	   *format;
		char	   *sql;
		Datum		args[2];
		Oid			argtypes[2] = {UUIDOID, TEXTOID};
		WarehouseContext wc;
		bool		isnull;

		if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("organization_id and table_name are required")));
		format = PG_ARGISNULL(2) ? "csv" : text_to_cstring(PG_GETARG_TEXT_PP(2));
		if (strcmp(format, "csv") != 0 && strcmp(format, "text") != 0 && strcmp(format, "json") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown export format \"%.*s\"%s", pg_mbcliplen(format, strlen(format), 20), format,
							strlen(format) > 20 ? "..." : ""),
					 errhint("Use csv, text or json.")));
		if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("export_warehouse_table must be called where a set is accepted")));

		funcctx = SRF_FIRSTCALL_INIT();
		old = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
		st = palloc0(sizeof(ExportState));
		memcpy(&st->org, PG_GETARG_UUID_P(0), sizeof(pg_uuid_t));
		st->format = format[0] == 'c' ? EXPORT_CSV : format[0] == 't' ? EXPORT_TEXT : EXPORT_JSON;
		st->batchcxt = AllocSetContextCreate(funcctx->multi_call_memory_ctx, "dalgo export batch",
											 ALLOCSET_DEFAULT_SIZES);
		st->rowcxt = AllocSetContextCreate(funcctx->multi_call_memory_ctx, "dalgo export row",
										   ALLOCSET_DEFAULT_SIZES);
		st->batch = 100;
		MemoryContextSwitchTo(old);

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		/* Membership, the warehouse, the table name: as read_warehouse_table checks them. */
		args[0] = PG_GETARG_DATUM(0);
		args[1] = PG_GETARG_DATUM(1);
		if (SPI_execute_with_args("SELECT dalgo_internal.export_query($1, $2)", 2, argtypes, args, NULL,
								  false, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "dalgo_internal.export_query failed");
		sql = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		enter_warehouse(&st->org, &wc, true, false);
		PG_TRY();
		{
			SPIPlanPtr	plan = SPI_prepare(sql, 0, NULL);
			Portal		portal;

			if (plan == NULL)
				elog(ERROR, "could not prepare the export: %s", SPI_result_code_string(SPI_result));
			portal = SPI_cursor_open(NULL, plan, NULL, NULL, true);
			old = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
			st->portal_name = pstrdup(portal->name);
			st->desc = BlessTupleDesc(CreateTupleDescCopy(portal->tupDesc));
			st->out_funcs = palloc0(sizeof(FmgrInfo) * Max(st->desc->natts, 1));
			for (int i = 0; i < st->desc->natts; i++)
			{
				Oid			outfunc;
				bool		varlena;

				if (TupleDescAttr(st->desc, i)->attisdropped)
					continue;
				getTypeOutputInfo(TupleDescAttr(st->desc, i)->atttypid, &outfunc, &varlena);
				fmgr_info(outfunc, &st->out_funcs[i]);
			}
			MemoryContextSwitchTo(old);
		}
		PG_CATCH();
		{
			leave_warehouse(&wc);
			PG_RE_THROW();
		}
		PG_END_TRY();
		leave_warehouse(&wc);
		SPI_finish();
		st->header_pending = (st->format == EXPORT_CSV);
		funcctx->user_fctx = st;
		RegisterExprContextCallback(rsinfo->econtext, export_shutdown, PointerGetDatum(st));
	}

	funcctx = SRF_PERCALL_SETUP();
	st = (ExportState *) funcctx->user_fctx;
	if (st->header_pending)
	{
		st->header_pending = false;
		SRF_RETURN_NEXT(funcctx, export_header(st));
	}
	if (st->next >= st->nlines)
		export_fetch(st);
	if (st->next < st->nlines)
		SRF_RETURN_NEXT(funcctx, st->lines[st->next++]);
	SRF_RETURN_DONE(funcctx);
}

/* Define the warehouse settings. */
void
dalgo_warehouse_init(void)
{
	DefineCustomIntVariable("dalgo.statement_timeout",
							"Statement timeout for recipe SQL run in a warehouse (previews and transformation runs).",
							"0 disables it.",
							&dalgo_statement_timeout,
							300000, 0, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("dalgo.max_result_bytes",
							"Most bytes that one preview or warehouse read may return (its rows as jsonb).",
							"A call whose result would be larger fails with program_limit_exceeded.",
							&dalgo_max_result_bytes,
							64 * 1024 * 1024, 1024, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);
}
