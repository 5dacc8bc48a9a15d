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

#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/syscache.h"
#include "utils/timeout.h"

PG_FUNCTION_INFO_V1(dalgo_warehouse_execute);
PG_FUNCTION_INFO_V1(dalgo_warehouse_query);

static int	dalgo_statement_timeout = 300000;

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
	static const char hex[] = "0123456789abcdef";
	char		name[9 + 2 * UUID_LEN + 1];
	Oid			role;

	memcpy(name, "dalgo_wh_", 9);
	for (int i = 0; i < UUID_LEN; i++)
	{
		name[9 + 2 * i] = hex[org->data[i] >> 4];
		name[10 + 2 * i] = hex[org->data[i] & 0xF];
	}
	name[9 + 2 * UUID_LEN] = '\0';
	role = get_role_oid(name, true);
	if (!OidIsValid(role))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the organization has no warehouse yet"),
				 errhint("Call dalgo.warehouse_schema(organization_id) first.")));
	warehouse_role_check(role, name);
	return role;
}

typedef struct WarehouseContext
{
	Oid			save_userid;
	int			save_sec;
	int			save_nestlevel;
	bool		entered;		/* between enter_warehouse and leave_warehouse */
	bool		armed;			/* we armed our own statement timeout */
	bool		had_timeout;	/* the caller's timeout, re-armed afterwards */
	TimestampTz timeout_at;
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
enter_warehouse(const pg_uuid_t *org, WarehouseContext *wc, bool read_only)
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
	/* The earlier deadline wins: ours, or one the caller already runs under. */
	wc->had_timeout = get_timeout_active(STATEMENT_TIMEOUT);
	wc->timeout_at = wc->had_timeout ? get_timeout_finish_time(STATEMENT_TIMEOUT) : 0;
	wc->armed = dalgo_statement_timeout > 0 &&
		(!wc->had_timeout ||
		 wc->timeout_at > TimestampTzPlusMilliseconds(GetCurrentTimestamp(), dalgo_statement_timeout));
	if (wc->armed)
		enable_timeout_after(STATEMENT_TIMEOUT, dalgo_statement_timeout);
}

/* Disarm our timeout and re-arm the caller's, if it had one. */
static void
restore_timeout(WarehouseContext *wc)
{
	if (!wc->armed)
		return;
	disable_timeout(STATEMENT_TIMEOUT, false);
	if (wc->had_timeout)
		enable_timeout_at(STATEMENT_TIMEOUT, wc->timeout_at);
	wc->armed = false;
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
	enter_warehouse(org, &wc, false);
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

/*
 * SQL: dalgo.warehouse_query(org, sql, row_limit): the rows of a query as
 * jsonb, run as the warehouse role; row_limit 0 only parse-analyzes it.
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
	int			rc = SPI_OK_SELECT;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (row_limit < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("row_limit must not be negative")));
	query = psprintf("SELECT pg_catalog.to_jsonb(q) FROM (%s\n) q LIMIT %d", sql, row_limit);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	enter_warehouse(org, &wc, true);
	PG_TRY();
	{
		if (row_limit == 0)
		{
			SPIPlanPtr	plan = SPI_prepare(query, 0, NULL);

			if (plan == NULL)
				elog(ERROR, "could not prepare the query: %s", SPI_result_code_string(SPI_result));
			SPI_freeplan(plan);
		}
		else
			rc = SPI_execute(query, true, 0);
	}
	PG_CATCH();
	{
		leave_warehouse(&wc);
		PG_RE_THROW();
	}
	PG_END_TRY();
	leave_warehouse(&wc);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "warehouse query failed: %s", SPI_result_code_string(rc));
	if (row_limit > 0)
	{
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			Datum		value = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &value, &isnull);
		}
	}
	SPI_finish();
	return (Datum) 0;
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
}
