/*
 * tables.c
 *		Direct access to dalgo's own tables from C: relation and index OIDs
 *		resolved through the dalgo namespace, never through search_path, and
 *		index lookups that read the heap directly.
 *
 * Identity and membership checks read users, organizations and
 * organization_members this way.  Row-level security is applied by the
 * query rewriter, so these scans see the rows as they are, without policy
 * recursion and without depending on the caller's privileges or
 * search_path.
 */
#include "dalgo.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "parser/parse_relation.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "catalog/pg_class.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(dalgo_refuse_tenant_move);

/* Return the OID of the dalgo schema, or raise if the extension is missing. */
Oid
dalgo_namespace_oid(void)
{
	Oid			nsp = get_namespace_oid(DALGO_SCHEMA, true);

	if (!OidIsValid(nsp))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("schema \"%s\" does not exist", DALGO_SCHEMA),
				 errhint("Run CREATE EXTENSION dalgo in this database.")));
	return nsp;
}

/*
 * Return the OID of relation dalgo.<relname> (a table or an index), or of
 * the relation that holds its rows on this node (citus.c).
 */
Oid
dalgo_relation_oid(const char *relname)
{
	Oid			relid = get_relname_relid(relname, dalgo_namespace_oid());

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"%s.%s\" does not exist", DALGO_SCHEMA, relname),
				 errhint("The dalgo extension may be damaged; reinstall it.")));
	/* On a Citus node, a reference table's rows live in its local shard. */
	return dalgo_rows_relid(relid);
}

/* Return the attribute number of a column that must exist. */
AttrNumber
dalgo_attnum(Oid relid, const char *colname)
{
	AttrNumber	attnum = get_attnum(relid, colname);

	if (attnum == InvalidAttrNumber)
		elog(ERROR, "column \"%s\" of relation %u does not exist", colname, relid);
	return attnum;
}

/*
 * Register and return a snapshot of the latest committed state (plus this
 * transaction's own earlier commands), for authorization reads.  Taken
 * after pending invalidations were accepted, it is never older than the
 * change an invalidation announced, whatever the isolation level.  The
 * caller unregisters it.
 */
Snapshot
dalgo_latest_snapshot(void)
{
	return RegisterSnapshot(GetLatestSnapshot());
}

/* Start a scan of rel whose uuid column attnum equals *value, through index indexid. */
SysScanDesc
dalgo_begin_uuid_scan(Relation rel, Oid indexid, AttrNumber attnum,
					  const pg_uuid_t *value, ScanKeyData *key, Snapshot snapshot)
{
	ScanKeyInit(key, attnum, BTEqualStrategyNumber, F_UUID_EQ,
				UUIDPGetDatum(value));
	return systable_beginscan(rel, indexid, OidIsValid(indexid), snapshot, 1, key);
}

/* Return the owner of a relation. */
Oid
dalgo_relation_owner(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Trigger: BEFORE UPDATE FOR EACH ROW on a tenant table.  A row's
 * organization is fixed when it is created: an UPDATE that changes the
 * tenant column (the trigger's argument, default organization_id) is
 * refused, whoever runs it.  Moving a row would take it, and its audit
 * trail, away from the organization that owns it.  Restores (pg_dump)
 * insert rows and are not affected.
 */
Datum
dalgo_refuse_tenant_move(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	const char *colname = "organization_id";
	AttrNumber	attnum;
	Form_pg_attribute att;
	Datum		oldval,
				newval;
	bool		oldnull,
				newnull;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) || !TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("refuse_tenant_move() must be fired BEFORE UPDATE ... FOR EACH ROW")));
	rel = trigdata->tg_relation;
	desc = RelationGetDescr(rel);
	if (trigdata->tg_trigger->tgnargs > 0)
		colname = trigdata->tg_trigger->tgargs[0];
	attnum = attnameAttNum(rel, colname, false);
	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist",
						colname, RelationGetRelationName(rel))));
	att = TupleDescAttr(desc, attnum - 1);

	oldval = heap_getattr(trigdata->tg_trigtuple, attnum, desc, &oldnull);
	newval = heap_getattr(trigdata->tg_newtuple, attnum, desc, &newnull);
	if (oldnull != newnull ||
		(!oldnull && !datumIsEqual(oldval, newval, att->attbyval, att->attlen)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("a row of %s cannot move to another organization",
						RelationGetRelationName(rel)),
				 errdetail("Column %s is fixed when the row is created.", colname),
				 errhint("Create the row in the other organization instead.")));
	return PointerGetDatum(trigdata->tg_newtuple);
}
