/*
 * accounts.c
 *		The C half of dalgo's accounts (sql/accounts.sql holds the flows):
 *		the settings, access-token signing, the autonomous recorder that
 *		keeps a failed sign-in or a replayed refresh token on record although
 *		the caller's transaction ends in an error, the API-key scope that
 *		caps membership, and the log filter that keeps secrets out of the
 *		server log.
 *
 * Autonomous recorder.  PostgreSQL has no autonomous transactions.  A
 * failed sign-in must raise 28P01 (so the caller's transaction aborts) and
 * yet be counted for the lockout; a replayed refresh token must fail and
 * yet revoke its family.  On a Citus cluster, an API key's last use is
 * recorded the same way (a write to a reference table as the function's
 * owner would bar the request's own role from those nodes for the rest of
 * its transaction).  dalgo.run_autonomously() starts a short-lived
 * dynamic background worker in the same database that runs one of a fixed
 * set of SQL functions (never caller-supplied SQL) in its own transaction,
 * commits, and reports back through a small dynamic shared memory segment;
 * the caller waits for it and only then raises its error.  If no worker
 * can be started the caller fails as well (closed, never open).  A worker
 * once started records even if its caller was cancelled meanwhile, so a
 * short statement_timeout cannot learn "wrong password" without the
 * attempt being counted.  The caller must not hold a lock the worker needs.
 */
#include "dalgo.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "common/base64.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "lib/stringinfo.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(dalgo_sign_access_token);
PG_FUNCTION_INFO_V1(dalgo_run_autonomously);
PG_FUNCTION_INFO_V1(dalgo_set_api_key_identity);
PG_FUNCTION_INFO_V1(dalgo_current_api_key_id);
PG_FUNCTION_INFO_V1(dalgo_act_as);
PG_FUNCTION_INFO_V1(dalgo_api_key_is_live);

PGDLLEXPORT void dalgo_autonomous_main(Datum arg);

/* Settings (all PGC_SUSET: each one can weaken security if lowered or raised). */
static int	min_password_length = 10;
static int	bcrypt_cost = 10;
static int	access_token_ttl = 15 * 60;
static int	refresh_token_ttl = 30 * 24 * 3600;
static int	max_failed_sign_ins = 5;
static int	sign_in_lockout = 15 * 60;
static int	password_reset_ttl = 3600;
static int	invitation_ttl = 7 * 24 * 3600;
static int	mail_claim_timeout = 5 * 60;

/* Actions the autonomous worker can run: a fixed list, nothing else. */
typedef enum AutonomousAction
{
	AUTONOMOUS_FAILED_SIGN_IN = 1,
	AUTONOMOUS_TOKEN_REUSE = 2,
	AUTONOMOUS_API_KEY_USED = 3
} AutonomousAction;

/* What the caller hands the worker, in bgw_extra. */
typedef struct AutonomousRequest
{
	int32		action;
	bool		has_key;
	bool		has_id;
	uint8		key[PG_SHA256_DIGEST_LENGTH];
	pg_uuid_t	id;
	dsm_handle	result;
} AutonomousRequest;

StaticAssertDecl(sizeof(AutonomousRequest) <= BGW_EXTRALEN, "autonomous request fits in bgw_extra");

/* The worker's answer, in dynamic shared memory. */
typedef struct AutonomousResult
{
	bool		done;
} AutonomousResult;

/* The API-key scope of this transaction (see dalgo_api_key_cap). */
typedef struct ApiKeyScope
{
	bool		set;
	int			level;			/* subtransaction level that set it */
	pg_uuid_t	key_id;
	pg_uuid_t	org;
	DalgoRole	role;
} ApiKeyScope;

static ApiKeyScope api_scope;

static emit_log_hook_type prev_emit_log_hook = NULL;

/* Encode bytes as unpadded base64url into a palloc'd string. */
static char *
base64url_encode(const uint8 *src, int len)
{
	int			enclen = pg_b64_enc_len(len);
	char	   *buf = palloc(enclen + 1);
	int			n = pg_b64_encode((const char *) src, len, buf, enclen);
	int			j = 0;

	if (n < 0)
		elog(ERROR, "could not base64-encode");
	for (int i = 0; i < n; i++)
	{
		if (buf[i] == '=')
			break;
		buf[j++] = buf[i] == '+' ? '-' : buf[i] == '/' ? '_' : buf[i];
	}
	buf[j] = '\0';
	return buf;
}

/*
 * SQL: dalgo.sign_access_token(user_id uuid, expires_at timestamptz): an
 * HS256 JWT {"sub", "iat", "exp"} signed with dalgo.jwt_secret, with "aud"
 * and "iss" when dalgo.jwt_audience and dalgo.jwt_issuer are set.
 */
Datum
dalgo_sign_access_token(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *user_id = PG_GETARG_UUID_P(0);
	TimestampTz expires_at = PG_GETARG_TIMESTAMPTZ(1);
	const char *secret = GetConfigOption("dalgo.jwt_secret", true, false);
	const char *audience = GetConfigOption("dalgo.jwt_audience", true, false);
	const char *issuer = GetConfigOption("dalgo.jwt_issuer", true, false);
	StringInfoData buf;
	const char *header = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
	char	   *sub = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(user_id)));
	int64		iat = (int64) (GetCurrentTransactionStartTimestamp() / USECS_PER_SEC) +
		(int64) ((POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY);
	int64		exp = (int64) (expires_at / USECS_PER_SEC) +
		(int64) ((POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY);
	char	   *payload;
	char	   *signing_input;
	uint8		mac[PG_SHA256_DIGEST_LENGTH];
	pg_hmac_ctx *ctx;

	if (secret == NULL || strlen(secret) < 32)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("dalgo.jwt_secret is not set"),
				 errhint("A superuser sets dalgo.jwt_secret (at least 32 bytes) to enable sign-in.")));

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"sub\":\"%s\",\"iat\":" INT64_FORMAT ",\"exp\":" INT64_FORMAT,
					 sub, iat, exp);
	/* What dalgo.authenticate() requires when they are set. */
	if (audience != NULL && audience[0] != '\0')
	{
		appendStringInfoString(&buf, ",\"aud\":");
		escape_json(&buf, audience);
	}
	if (issuer != NULL && issuer[0] != '\0')
	{
		appendStringInfoString(&buf, ",\"iss\":");
		escape_json(&buf, issuer);
	}
	appendStringInfoChar(&buf, '}');
	payload = buf.data;
	signing_input = psprintf("%s.%s",
							 base64url_encode((const uint8 *) header, strlen(header)),
							 base64url_encode((const uint8 *) payload, strlen(payload)));

	ctx = pg_hmac_create(PG_SHA256);
	if (ctx == NULL)
		elog(ERROR, "out of memory creating an HMAC context");
	if (pg_hmac_init(ctx, (const uint8 *) secret, strlen(secret)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) signing_input, strlen(signing_input)) < 0 ||
		pg_hmac_final(ctx, mac, sizeof(mac)) < 0)
	{
		const char *msg = pg_hmac_error(ctx);

		pg_hmac_free(ctx);
		elog(ERROR, "could not compute HMAC-SHA256: %s", msg);
	}
	pg_hmac_free(ctx);

	PG_RETURN_TEXT_P(cstring_to_text(psprintf("%s.%s", signing_input,
											  base64url_encode(mac, sizeof(mac)))));
}

/*
 * SQL: dalgo.run_autonomously(action text, key bytea, id uuid): run one of
 * the fixed recorder functions in a background worker's own transaction,
 * wait for its commit, and fail if it did not happen.
 */
Datum
dalgo_run_autonomously(PG_FUNCTION_ARGS)
{
	char	   *action;
	AutonomousRequest req;
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	dsm_segment *seg;
	AutonomousResult *result;
	BgwHandleStatus status;
	pid_t		pid;
	bool		done;

	if (PG_ARGISNULL(0))
		elog(ERROR, "run_autonomously: action is NULL");
	action = text_to_cstring(PG_GETARG_TEXT_PP(0));
	memset(&req, 0, sizeof(req));
	if (strcmp(action, "failed_sign_in") == 0)
		req.action = AUTONOMOUS_FAILED_SIGN_IN;
	else if (strcmp(action, "token_reuse") == 0)
		req.action = AUTONOMOUS_TOKEN_REUSE;
	else if (strcmp(action, "api_key_used") == 0)
		req.action = AUTONOMOUS_API_KEY_USED;
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown autonomous action \"%s\"", action)));
	if (!PG_ARGISNULL(1))
	{
		bytea	   *key = PG_GETARG_BYTEA_PP(1);

		if (VARSIZE_ANY_EXHDR(key) != PG_SHA256_DIGEST_LENGTH)
			elog(ERROR, "run_autonomously: key must be %d bytes", PG_SHA256_DIGEST_LENGTH);
		memcpy(req.key, VARDATA_ANY(key), PG_SHA256_DIGEST_LENGTH);
		req.has_key = true;
	}
	if (!PG_ARGISNULL(2))
	{
		req.id = *PG_GETARG_UUID_P(2);
		req.has_id = true;
	}

	seg = dsm_create(sizeof(AutonomousResult), 0);
	result = dsm_segment_address(seg);
	result->done = false;
	req.result = dsm_segment_handle(seg);

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "dalgo");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "dalgo_autonomous_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "dalgo accounts recorder");
	snprintf(worker.bgw_type, BGW_MAXLEN, "dalgo accounts recorder");
	worker.bgw_main_arg = ObjectIdGetDatum(MyDatabaseId);
	memcpy(worker.bgw_extra, &req, sizeof(req));
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not record the attempt"),
				 errhint("Raise max_worker_processes.")));
	status = WaitForBackgroundWorkerStartup(handle, &pid);
	if (status == BGWH_STARTED)
		status = WaitForBackgroundWorkerShutdown(handle);
	if (status == BGWH_POSTMASTER_DIED)
		ereport(FATAL,
				(errcode(ERRCODE_ADMIN_SHUTDOWN),
				 errmsg("postmaster exited while recording an attempt")));
	pg_read_barrier();
	done = result->done;
	dsm_detach(seg);
	if (!done)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not record the attempt"),
				 errdetail("The recorder worker did not commit; see the server log.")));
	PG_RETURN_VOID();
}

/* Worker main: run the one requested recorder function and commit. */
void
dalgo_autonomous_main(Datum arg)
{
	AutonomousRequest req;
	dsm_segment *seg;
	Oid			argtypes[2] = {BYTEAOID, UUIDOID};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	const char *sql;

	memcpy(&req, MyBgworkerEntry->bgw_extra, sizeof(req));
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(arg), InvalidOid, 0);
	pgstat_report_appname("dalgo accounts recorder");

	/*
	 * Record even if the caller is gone (cancelled while waiting): once a
	 * failed attempt has been handed over, it is counted.
	 */
	seg = dsm_attach(req.result);

	switch (req.action)
	{
		case AUTONOMOUS_FAILED_SIGN_IN:
			sql = "SELECT dalgo_internal.note_failed_sign_in($1, $2)";
			break;
		case AUTONOMOUS_TOKEN_REUSE:
			sql = "SELECT dalgo_internal.note_token_reuse($1, $2)";
			break;
		case AUTONOMOUS_API_KEY_USED:
			sql = "SELECT dalgo_internal.note_api_key_use($1, $2)";
			break;
		default:
			elog(ERROR, "unknown autonomous action %d", req.action);
	}
	if (req.has_key)
	{
		bytea	   *key = palloc(VARHDRSZ + PG_SHA256_DIGEST_LENGTH);

		SET_VARSIZE(key, VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
		memcpy(VARDATA(key), req.key, PG_SHA256_DIGEST_LENGTH);
		values[0] = PointerGetDatum(key);
	}
	else
		nulls[0] = 'n';
	if (req.has_id)
		values[1] = UUIDPGetDatum(&req.id);
	else
		nulls[1] = 'n';

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(sql, 2, argtypes, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "recorder function failed");
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();

	if (seg != NULL)
	{
		((AutonomousResult *) dsm_segment_address(seg))->done = true;
		pg_write_barrier();
		dsm_detach(seg);
	}
	proc_exit(0);
}

/* Rank of a member_role label; NONE for anything else. */
static DalgoRole
role_from_label(const char *label)
{
	for (int i = 0; i < DALGO_NUM_ROLES; i++)
		if (strcmp(dalgo_role_labels[i], label) == 0)
			return (DalgoRole) (i + 1);
	return DALGO_ROLE_NONE;
}

/*
 * SQL: dalgo.set_api_key_identity(key_id uuid, user_id uuid,
 * organization_id uuid, role text): for this transaction, the caller is
 * user_id, seen by every membership function only in organization_id and
 * at most at role.  Called by dalgo.authenticate_api_key() only.
 */
Datum
dalgo_set_api_key_identity(PG_FUNCTION_ARGS)
{
	DalgoRole	role;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		elog(ERROR, "set_api_key_identity: NULL argument");
	role = role_from_label(text_to_cstring(PG_GETARG_TEXT_PP(3)));
	if (role == DALGO_ROLE_NONE)
		elog(ERROR, "set_api_key_identity: unknown role");

	api_scope.set = true;
	api_scope.level = GetCurrentTransactionNestLevel();
	api_scope.key_id = *PG_GETARG_UUID_P(0);
	api_scope.org = *PG_GETARG_UUID_P(2);
	api_scope.role = role;
	dalgo_set_transaction_identity(PG_GETARG_UUID_P(1));
	PG_RETURN_VOID();
}

/* SQL: dalgo.act_as(user_id uuid): the caller is user_id for the rest of the transaction. */
Datum
dalgo_act_as(PG_FUNCTION_ARGS)
{
	dalgo_set_transaction_identity(PG_GETARG_UUID_P(0));
	PG_RETURN_VOID();
}

/*
 * SQL: dalgo.api_key_is_live(id uuid): the key exists, is not revoked and
 * has not expired in the latest committed state, whatever the caller's
 * isolation level (a REPEATABLE READ snapshot taken before a revocation
 * must not revive the key).
 */
Datum
dalgo_api_key_is_live(PG_FUNCTION_ARGS)
{
	Oid			relid = dalgo_relation_oid("api_keys");
	Relation	rel = table_open(relid, AccessShareLock);
	Snapshot	snapshot = dalgo_latest_snapshot();
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		live = false;

	scan = dalgo_begin_uuid_scan(rel, dalgo_relation_oid("api_keys_pkey"),
								 dalgo_attnum(relid, "id"), PG_GETARG_UUID_P(0), &key, snapshot);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		TupleDesc	desc = RelationGetDescr(rel);
		bool		isnull;
		Datum		d;

		(void) heap_getattr(tuple, dalgo_attnum(relid, "revoked_at"), desc, &isnull);
		live = isnull;
		d = heap_getattr(tuple, dalgo_attnum(relid, "expires_at"), desc, &isnull);
		if (live && !isnull && DatumGetTimestampTz(d) <= GetCurrentTimestamp())
			live = false;
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	PG_RETURN_BOOL(live);
}

/*
 * Parse "<key id> <organization id> <role>", the form of
 * dalgo.api_key_scope; any output may be NULL.  False if malformed.
 */
bool
dalgo_parse_api_key_scope(const char *text, pg_uuid_t *key_id, pg_uuid_t *org,
						  DalgoRole *role)
{
	pg_uuid_t	k,
				o;
	DalgoRole	r;

	if (strlen(text) < 2 * 37 + 1 || text[36] != ' ' || text[73] != ' ' ||
		!dalgo_parse_uuid(text, 36, &k) || !dalgo_parse_uuid(text + 37, 36, &o))
		return false;
	r = role_from_label(text + 74);
	if (r == DALGO_ROLE_NONE)
		return false;
	if (key_id)
		*key_id = k;
	if (org)
		*org = o;
	if (role)
		*role = r;
	return true;
}

/*
 * The API-key scope of this transaction as dalgo.api_key_scope carries it
 * to Citus workers, into buf; false when the transaction has no API key.
 */
bool
dalgo_api_key_scope_text(char *buf, size_t size)
{
	char	   *key;
	char	   *org;

	if (!api_scope.set)
		return false;
	key = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&api_scope.key_id)));
	org = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&api_scope.org)));
	snprintf(buf, size, "%s %s %s", key, org, dalgo_role_labels[api_scope.role - 1]);
	pfree(key);
	pfree(org);
	return true;
}

/*
 * The API-key scope in force: the one dalgo.authenticate_api_key() set in
 * this backend, else the one a Citus coordinator sent in
 * dalgo.api_key_scope (parsed once per value); NULL without a key.
 */
static const ApiKeyScope *
current_scope(void)
{
	static ApiKeyScope carried;
	static char *carried_text = NULL;
	const char *text;

	if (api_scope.set)
		return &api_scope;
	text = dalgo_api_key_scope_setting_value();
	if (text == NULL)
		return NULL;
	if (carried_text == NULL || strcmp(carried_text, text) != 0)
	{
		/* The check hook refused anything malformed; fail closed anyway. */
		memset(&carried, 0, sizeof(carried));
		carried.set = true;
		if (!dalgo_parse_api_key_scope(text, &carried.key_id, &carried.org, &carried.role))
			carried.role = DALGO_ROLE_NONE;
		if (carried_text)
			pfree(carried_text);
		carried_text = MemoryContextStrdup(TopMemoryContext, text);
	}
	return &carried;
}

/* SQL: dalgo.current_api_key_id(): the API key of this transaction, or NULL. */
Datum
dalgo_current_api_key_id(PG_FUNCTION_ARGS)
{
	const ApiKeyScope *scope = current_scope();
	pg_uuid_t  *result;

	if (scope == NULL)
		PG_RETURN_NULL();
	result = palloc(sizeof(pg_uuid_t));
	*result = scope->key_id;
	PG_RETURN_UUID_P(result);
}

/*
 * The highest role the caller may hold in org under this transaction's
 * API-key scope: the key's role in the key's organization, none elsewhere;
 * owner (no cap) without a key.  membership.c takes the lesser of this and
 * the caller's current role, so a key never exceeds its creator.
 */
DalgoRole
dalgo_api_key_cap(const pg_uuid_t *org)
{
	const ApiKeyScope *scope = current_scope();

	if (scope == NULL)
		return DALGO_ROLE_OWNER;
	if (memcmp(org, &scope->org, UUID_LEN) != 0)
		return DALGO_ROLE_NONE;
	return scope->role;
}

/* The API-key scope ends with its transaction. */
static void
api_key_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			memset(&api_scope, 0, sizeof(api_scope));
			break;
		default:
			break;
	}
}

/* A scope set inside an aborted subtransaction is forgotten, as the identity is. */
static void
api_key_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (!api_scope.set || api_scope.level < level)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
		memset(&api_scope, 0, sizeof(api_scope));
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
		api_scope.level = level - 1;
}

/*
 * Does the statement name a function that takes a password, a token or a
 * key?  Then no message about it may quote the statement.
 */
static bool
statement_carries_secret(const char *query)
{
	static const char *const names[] = {
		"sign_in", "sign_up", "refresh_session", "end_session", "reset_password",
		"change_password", "accept_invitation", "authenticate", NULL
	};

	if (query == NULL)
		return false;
	for (int i = 0; names[i] != NULL; i++)
	{
		const char *p = query;

		/* A call: the name, perhaps more of it (authenticate_api_key) or a quote, then "(". */
		while ((p = strcasestr(p, names[i])) != NULL)
		{
			p += strlen(names[i]);
			while (*p == '_' || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))
				p++;
			if (*p == '"')
				p++;
			while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
				p++;
			if (*p == '(')
				return true;
		}
	}
	return false;
}

/*
 * Log hook: never write the text of a statement that carries a secret,
 * neither after an error (STATEMENT:) nor in log_statement or
 * log_min_duration_statement lines, which quote it in their message.
 */
static void
accounts_emit_log_hook(ErrorData *edata)
{
	if (!edata->hide_stmt && statement_carries_secret(debug_query_string))
		edata->hide_stmt = true;
	if (edata->elevel == LOG && edata->message != NULL &&
		(strncmp(edata->message, "statement: ", 11) == 0 ||
		 strncmp(edata->message, "duration: ", 10) == 0 ||
		 strncmp(edata->message, "execute ", 8) == 0) &&
		statement_carries_secret(edata->message))
		edata->message = pstrdup("statement: [hidden by dalgo: it calls an accounts function that takes a secret]");
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/* Define one PGC_SUSET duration setting in seconds. */
static void
define_seconds(const char *name, const char *desc, int *var, int def, int min, int max)
{
	DefineCustomIntVariable(name, desc, NULL, var, def, min, max,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
}

/* Define the account settings and install the callbacks and the log hook. */
void
dalgo_accounts_init(void)
{
	DefineCustomIntVariable("dalgo.min_password_length",
							"Shortest password dalgo.sign_up() and the password changes accept, in characters.",
							NULL, &min_password_length, 10, 8, 72,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("dalgo.bcrypt_cost",
							"bcrypt cost (log2 rounds) of new password hashes.",
							NULL, &bcrypt_cost, 10, 4, 16,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("dalgo.max_failed_sign_ins",
							"Failed sign-ins for one email within dalgo.sign_in_lockout before it is locked.",
							NULL, &max_failed_sign_ins, 5, 1, 1000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	define_seconds("dalgo.access_token_ttl", "Lifetime of the access tokens that sign-in and refresh issue.",
				   &access_token_ttl, 15 * 60, 30, 24 * 3600);
	define_seconds("dalgo.refresh_token_ttl", "Lifetime of a refresh token.",
				   &refresh_token_ttl, 30 * 24 * 3600, 60, 365 * 24 * 3600);
	define_seconds("dalgo.sign_in_lockout", "Window in which failed sign-ins are counted, and the lockout that follows.",
				   &sign_in_lockout, 15 * 60, 1, 7 * 24 * 3600);
	define_seconds("dalgo.password_reset_ttl", "Lifetime of a password reset token.",
				   &password_reset_ttl, 3600, 60, 7 * 24 * 3600);
	define_seconds("dalgo.invitation_ttl", "Lifetime of an invitation.",
				   &invitation_ttl, 7 * 24 * 3600, 60, 90 * 24 * 3600);
	define_seconds("dalgo.mail_claim_timeout", "After this long a claimed, unfinished mail message can be claimed again.",
				   &mail_claim_timeout, 5 * 60, 10, 24 * 3600);

	RegisterXactCallback(api_key_xact_callback, NULL);
	RegisterSubXactCallback(api_key_subxact_callback, NULL);
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = accounts_emit_log_hook;
}
