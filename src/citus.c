/*
 * citus.c
 *		Where dalgo's rows live on a Citus node, read from Citus's metadata
 *		catalogs (pg_dist_partition, pg_dist_shard, pg_dist_local_group)
 *		without linking to Citus: with Citus absent, every function here
 *		answers "plain PostgreSQL" after one syscache lookup.
 *
 * dalgo reads users, organizations, organization_members and api_keys
 * directly (tables.c).  Once dalgo.distribute() made them reference (or
 * Citus local) tables, their rows live in a shard relation,
 * dalgo.<name>_<shardid>, present on every node of the cluster (on the
 * coordinator for a Citus local table); the table of that name holds no
 * rows.  dalgo_rows_relid() maps a table, or one of its indexes, to the
 * relation that holds the rows on this node.  Triggers fire on shard
 * relations: dalgo_citus_shard_of() names the distributed table a shard
 * belongs to, so that the audit trail records "sources", not
 * "sources_102040".
 */
#include "dalgo.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_namespace.h"
#include "miscadmin.h"
#include "parser/parser.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

/* The OID of Citus catalog table pg_catalog.<name>, or InvalidOid without Citus. */
static Oid
citus_catalog(const char *name)
{
	return get_relname_relid(name, PG_CATALOG_NAMESPACE);
}

/*
 * Look a Citus table up: its partition method ('h' hash, 'n' reference or
 * Citus local, ...) and the id of its first shard.  False when relid is not
 * a Citus table (or Citus is absent).
 */
static bool
citus_table_info(Oid relid, char *partmethod, int64 *shardid)
{
	Oid			partition_relid = citus_catalog("pg_dist_partition");
	Oid			shard_relid;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		found = false;
	bool		isnull;

	if (!OidIsValid(partition_relid))
		return false;
	rel = table_open(partition_relid, AccessShareLock);
	ScanKeyInit(&key, dalgo_attnum(partition_relid, "logicalrelid"), BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		Datum		d = heap_getattr(tuple, dalgo_attnum(partition_relid, "partmethod"),
									RelationGetDescr(rel), &isnull);

		*partmethod = isnull ? '?' : DatumGetChar(d);
		found = true;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	if (!found)
		return false;

	*shardid = 0;
	shard_relid = citus_catalog("pg_dist_shard");
	if (!OidIsValid(shard_relid))
		return true;
	rel = table_open(shard_relid, AccessShareLock);
	ScanKeyInit(&key, dalgo_attnum(shard_relid, "logicalrelid"), BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		Datum		d = heap_getattr(tuple, dalgo_attnum(shard_relid, "shardid"),
									RelationGetDescr(rel), &isnull);

		if (!isnull)
			*shardid = DatumGetInt64(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return true;
}

/* The OID of <nsp>.<name>_<shardid>, or InvalidOid. */
static Oid
shard_relation(Oid nsp, const char *name, int64 shardid)
{
	char	   *shardname = psprintf("%s_" INT64_FORMAT, name, shardid);
	Oid			result = InvalidOid;

	/* Citus shortens longer names with a hash; dalgo's names are short. */
	if (strlen(shardname) < NAMEDATALEN)
		result = get_relname_relid(shardname, nsp);
	pfree(shardname);
	return result;
}

/*
 * The relation that holds the rows of relid on this node: relid itself,
 * or, for a reference or Citus local table, its local shard (for an index:
 * the shard's copy of the index, or InvalidOid when there is none, which
 * makes the caller scan the shard's heap).  A reference table without a
 * local shard is an error: reading its empty shell would deny everyone.
 */
Oid
dalgo_rows_relid(Oid relid)
{
	char		relkind = get_rel_relkind(relid);
	Oid			table = relid;
	char		partmethod;
	int64		shardid;
	Oid			shard;

	if (!OidIsValid(citus_catalog("pg_dist_partition")))
		return relid;
	if (relkind == RELKIND_INDEX)
		table = IndexGetRelation(relid, false);
	if (!citus_table_info(table, &partmethod, &shardid) || partmethod != 'n' || shardid == 0)
		return relid;
	if (relkind == RELKIND_INDEX)
		return shard_relation(get_rel_namespace(relid), get_rel_name(relid), shardid);
	shard = shard_relation(get_rel_namespace(relid), get_rel_name(relid), shardid);
	if (!OidIsValid(shard))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s has no shard on this node", get_rel_name(relid)),
				 errdetail("dalgo reads it locally on every node of a Citus cluster."),
				 errhint("Add the coordinator to the cluster's metadata (citus_set_coordinator_host) "
						 "and run SELECT replicate_reference_tables().")));
	return shard;
}

/* True when relid is a Citus table (distributed, reference or Citus local). */
bool
dalgo_citus_is_distributed(Oid relid)
{
	char		partmethod;
	int64		shardid;

	return citus_table_info(relid, &partmethod, &shardid);
}

/*
 * If rel is a shard of a Citus table, return that table's OID and set
 * *partmethod; otherwise InvalidOid.
 */
Oid
dalgo_citus_shard_of(Relation rel, char *partmethod)
{
	const char *name = RelationGetRelationName(rel);
	const char *underscore = strrchr(name, '_');
	Oid			shard_relid = citus_catalog("pg_dist_shard");
	Relation	shards;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			logical = InvalidOid;
	int64		shardid;
	int64		first;
	char	   *end;

	if (!OidIsValid(shard_relid) || underscore == NULL || underscore[1] == '\0')
		return InvalidOid;
	errno = 0;
	shardid = strtoi64(underscore + 1, &end, 10);
	if (errno != 0 || *end != '\0' || shardid <= 0)
		return InvalidOid;

	shards = table_open(shard_relid, AccessShareLock);
	ScanKeyInit(&key, dalgo_attnum(shard_relid, "shardid"), BTEqualStrategyNumber,
				F_INT8EQ, Int64GetDatum(shardid));
	scan = systable_beginscan(shards, InvalidOid, false, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, dalgo_attnum(shard_relid, "logicalrelid"),
									RelationGetDescr(shards), &isnull);

		if (!isnull)
			logical = DatumGetObjectId(d);
	}
	systable_endscan(scan);
	table_close(shards, AccessShareLock);

	/* The shard's name is the table's name and the shard id, in its schema. */
	if (!OidIsValid(logical) || get_rel_namespace(logical) != RelationGetNamespace(rel) ||
		strlen(get_rel_name(logical)) != (size_t) (underscore - name) ||
		strncmp(get_rel_name(logical), name, underscore - name) != 0 ||
		!citus_table_info(logical, partmethod, &first))
		return InvalidOid;
	return logical;
}

/*
 * This node's group in pg_dist_local_group (0 on the coordinator); -1
 * without Citus.
 */
static int32
citus_local_group(void)
{
	Oid			group_relid = citus_catalog("pg_dist_local_group");
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tuple;
	int32		group = -1;

	if (!OidIsValid(group_relid))
		return -1;
	rel = table_open(group_relid, AccessShareLock);
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, dalgo_attnum(group_relid, "groupid"),
									RelationGetDescr(rel), &isnull);

		if (!isnull)
			group = DatumGetInt32(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return group;
}

/*
 * True on a Citus worker: a node whose group is not the coordinator's (0).
 * False without Citus.
 */
bool
dalgo_citus_is_worker(void)
{
	return citus_local_group() > 0;
}

/*
 * True on a Citus coordinator: Citus is loaded (its settings exist) and
 * this node's group is 0.
 */
bool
dalgo_citus_is_coordinator(void)
{
	return GetConfigOption("citus.propagate_set_commands", true, false) != NULL &&
		citus_local_group() == 0;
}

/*
 * On a Citus coordinator: have Citus send SET LOCAL name = value (RESET
 * name when value is NULL) to every worker connection of this transaction,
 * open or yet to open, without changing the setting on this node.  Citus
 * propagates the SET LOCAL statements that pass through its utility hook
 * (with citus.propagate_set_commands = 'local', forced here), so the
 * statement is run through the hooks, as the bootstrap superuser (the
 * caller need not hold SET on the parameter here: the workers decide, by
 * their own grants), inside a GUC nest level that is then rolled back.
 */
void
dalgo_citus_send_setting(const char *name, const char *value)
{
	char	   *sql = value != NULL ?
		psprintf("SET LOCAL %s = %s", name, quote_literal_cstr(value)) :
		psprintf("RESET %s", name);
	int			nest = NewGUCNestLevel();
	Oid			save_userid;
	int			save_sec;
	RawStmt    *raw;
	PlannedStmt *pstmt;

	ereport(DEBUG1,
			(errmsg_internal("dalgo: sending %s %s to the Citus workers",
							 value != NULL ? "SET LOCAL" : "RESET", name)));
	raw = linitial_node(RawStmt, raw_parser(sql, RAW_PARSE_DEFAULT));
	pstmt = makeNode(PlannedStmt);
	pstmt->commandType = CMD_UTILITY;
	pstmt->canSetTag = false;
	pstmt->utilityStmt = raw->stmt;
	pstmt->stmt_location = raw->stmt_location;
	pstmt->stmt_len = raw->stmt_len;

	(void) set_config_option("citus.propagate_set_commands", "local", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		ProcessUtility(pstmt, sql, false, PROCESS_UTILITY_QUERY, NULL, NULL,
					   None_Receiver, NULL);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
	/* This node keeps its own setting: only the workers take the value. */
	AtEOXact_GUC(false, nest);
	pfree(sql);
}
