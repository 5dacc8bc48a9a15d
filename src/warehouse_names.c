/*
 * warehouse_names.c
 *		The names of an organization's warehouse, in one place: its schema
 *		org_<id> and its role dalgo_wh_<id> (the id as 32 hex digits, no
 *		dashes; the csv directory of an organization bears the schema's
 *		name), and who may write a warehouse table.
 *
 *		Each table name of an organization's
 *		warehouse belongs to one producer (a source's sync, a transformation's
 *		run, an output's refresh).  dalgo.warehouse_table_claimant() names
 *		another live producer that claims a name, under a per-organization
 *		advisory lock and the latest committed state, so that two concurrent
 *		saves cannot both claim one name at any isolation level.
 */
#include "dalgo.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(dalgo_warehouse_table_claimant);

/* The warehouse schema of an organization: org_ followed by its id in hex (palloc'd). */
char *
dalgo_warehouse_schema_name(const pg_uuid_t *organization_id)
{
	char		hex[2 * UUID_LEN + 1];

	dalgo_uuid_hex(organization_id, hex);
	return psprintf("org_%s", hex);
}

/* The role that owns an organization's warehouse: dalgo_wh_ followed by its id in hex (palloc'd). */
char *
dalgo_warehouse_role_name(const pg_uuid_t *organization_id)
{
	char		hex[2 * UUID_LEN + 1];

	dalgo_uuid_hex(organization_id, hex);
	return psprintf("dalgo_wh_%s", hex);
}

/* First key of dalgo's warehouse-name advisory locks ("dWTN"). */
#define WAREHOUSE_NAME_LOCK_CLASS 0x64575442

/*
 * The claims of other producers: live sources, transformations and outputs
 * of the organization that name the table, except the producer asking ($3
 * source, $4 transformation, $5 output).  A source without a table name yet
 * claims the name its first sync will use (source_<first 12 hex digits>).  An output that publishes its own
 * transformation's table claims nothing of its own, and the outputs of a
 * transformation do not conflict with the transformation itself.
 */
static const char *const claim_query =
"SELECT what FROM ("
" SELECT 1 AS k, 'source \"' || s.name || '\"' AS what FROM dalgo.sources s"
"  WHERE s.organization_id = $1 AND s.deleted_at IS NULL"
"    AND coalesce(s.warehouse_table_name, 'source_' || left(replace(s.id::text, '-', ''), 12)) = $2"
"    AND s.id IS DISTINCT FROM $3"
" UNION ALL"
" SELECT 2, 'transformation \"' || t.name || '\"' FROM dalgo.transformations t"
"  WHERE t.organization_id = $1 AND t.deleted_at IS NULL AND t.output_table_name = $2"
"    AND t.id IS DISTINCT FROM $4"
" UNION ALL"
" SELECT 3, 'output \"' || o.name || '\"' FROM dalgo.outputs o"
"  JOIN dalgo.transformations ot ON ot.id = o.transformation_id AND ot.organization_id = o.organization_id"
"  WHERE o.organization_id = $1 AND o.deleted_at IS NULL AND o.destination_config->>'name' = $2"
"    AND o.destination_config->>'name' IS DISTINCT FROM ot.output_table_name"
"    AND o.id IS DISTINCT FROM $5"
"    AND NOT (o.transformation_id IS NOT DISTINCT FROM $4 AND $5 IS NULL)"
") c ORDER BY k LIMIT 1";

/*
 * SQL: dalgo.warehouse_table_claimant(organization_id, table_name, source_id,
 * transformation_id, output_id) returns text: who else claims table_name in
 * the organization's warehouse ('source "Visits"', ...), or NULL.  Takes the
 * organization's warehouse-name lock for the rest of the transaction first,
 * and reads the latest committed rows (not the transaction's snapshot).
 */
Datum
dalgo_warehouse_table_claimant(PG_FUNCTION_ARGS)
{
	Oid			types[5] = {UUIDOID, TEXTOID, UUIDOID, UUIDOID, UUIDOID};
	Datum		values[5];
	char		nulls[5];
	pg_uuid_t  *org;
	char	   *name;
	LOCKTAG		tag;
	SPIPlanPtr	plan;
	char	   *result = NULL;
	int			rc;
	MemoryContext callercxt = CurrentMemoryContext;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	org = PG_GETARG_UUID_P(0);
	name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (strncmp(name, "_dalgo_", 7) == 0)
		PG_RETURN_TEXT_P(cstring_to_text("dalgo itself (names starting with _dalgo_ are its build tables)"));

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, WAREHOUSE_NAME_LOCK_CLASS,
						 hash_bytes(org->data, UUID_LEN), 2);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);

	for (int i = 0; i < 5; i++)
	{
		values[i] = PG_GETARG_DATUM(i);
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = SPI_prepare(claim_query, 5, types);
	if (plan == NULL)
		elog(ERROR, "could not prepare the warehouse name check: %s", SPI_result_code_string(SPI_result));
	/* The latest committed state: a concurrent save that committed after our snapshot counts. */
	rc = SPI_execute_snapshot(plan, values, nulls, GetLatestSnapshot(), InvalidSnapshot, true, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "warehouse name check failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
		result = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (result != NULL)
		result = MemoryContextStrdup(callercxt, result);
	SPI_finish();
	if (result == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(result));
}
