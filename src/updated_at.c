/*
 * updated_at.c
 *		dalgo.set_updated_at(): a BEFORE UPDATE row trigger that stamps a
 *		timestamp column with the transaction's start time, in the spirit of
 *		contrib/spi's moddatetime.
 *
 * The column defaults to "updated_at"; pass another name as the trigger's
 * argument for tables that spell it differently ("updatedAt" in camel-cased
 * schemas).  Both timestamptz and timestamp columns are supported.  The
 * stamp always overwrites what the UPDATE wrote, so a client cannot backdate
 * a row.
 */
#include "dalgo.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(dalgo_set_updated_at);

/* Error out unless called as a BEFORE UPDATE FOR EACH ROW trigger. */
static void
check_trigger_protocol(FunctionCallInfo fcinfo, const char *funcname)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s() was not called by the trigger manager", funcname)));
	if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s() must be fired BEFORE UPDATE FOR EACH ROW", funcname)));
}

/* Trigger: set the named timestamp column of the new row to now(). */
Datum
dalgo_set_updated_at(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	const char *colname;
	int			attnum;
	Oid			coltype;
	Datum		stamp;
	bool		isnull = false;
	HeapTuple	newtuple;

	check_trigger_protocol(fcinfo, "set_updated_at");

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);

	if (trigdata->tg_trigger->tgnargs > 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("set_updated_at() takes at most one argument, the column name"),
				 errdetail("Trigger \"%s\" on table \"%s\" has %d arguments.",
						   trigdata->tg_trigger->tgname,
						   RelationGetRelationName(rel),
						   trigdata->tg_trigger->tgnargs)));
	/* A restore puts rows back as they were dumped, timestamps included. */
	if (dalgo_restoring())
		return PointerGetDatum(trigdata->tg_newtuple);

	colname = trigdata->tg_trigger->tgnargs == 1 ?
		trigdata->tg_trigger->tgargs[0] : "updated_at";

	attnum = SPI_fnumber(tupdesc, colname);
	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist",
						colname, RelationGetRelationName(rel)),
				 errhint("Pass the timestamp column's name as the trigger argument.")));

	coltype = TupleDescAttr(tupdesc, attnum - 1)->atttypid;
	if (coltype == TIMESTAMPTZOID)
		stamp = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	else if (coltype == TIMESTAMPOID)
		stamp = DirectFunctionCall1(timestamptz_timestamp,
									TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()));
	else
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" of relation \"%s\" must be of type timestamptz or timestamp",
						colname, RelationGetRelationName(rel))));

	newtuple = heap_modify_tuple_by_cols(trigdata->tg_newtuple, tupdesc,
										 1, &attnum, &stamp, &isnull);
	return PointerGetDatum(newtuple);
}
