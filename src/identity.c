/*
 * identity.c
 *		Who the caller is: dalgo.current_user_id(), dalgo.authenticate(),
 *		dalgo.sign_out(), and the settings behind them.
 *
 * The identity is taken from the first source that applies:
 *	 (a) a token verified by dalgo.authenticate(), for the current
 *		 transaction or, if asked, the session;
 *	 (b) the setting dalgo.user_id (PGC_SUSET: superusers and roles granted
 *		 SET on it, i.e. an app server's or pooler's authenticator role);
 *	 (c) request.jwt.claims ->> 'sub' (the PostgREST convention), only while
 *		 the superuser-only setting dalgo.trust_jwt_claims is on.
 * A source applies when it is set (non-empty).  A malformed value in the
 * source that applies gives no identity at all; it never raises an error
 * and never falls through to a weaker source.
 *
 * A verified identity lives in this backend's memory, not in a setting, so
 * nothing but dalgo.authenticate() can produce it.  Transaction scope ends
 * at commit or abort (and with a rolled-back subtransaction that set it);
 * session scope ends with dalgo.sign_out(), DISCARD ALL or RESET ALL.
 */
#include "dalgo.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(dalgo_current_user_id_sql);
PG_FUNCTION_INFO_V1(dalgo_authenticate);
PG_FUNCTION_INFO_V1(dalgo_sign_out);

/* Settings. */
static char *dalgo_user_id_setting = NULL;
static char *dalgo_jwt_secret = NULL;
static bool dalgo_trust_jwt_claims = false;

/* Minimum length of dalgo.jwt_secret: HS256 wants at least 256 bits of key. */
#define DALGO_MIN_SECRET_LEN 32

/* The verified identity set by dalgo.authenticate(). */
typedef struct VerifiedIdentity
{
	bool		set;
	pg_uuid_t	user_id;
} VerifiedIdentity;

static VerifiedIdentity session_identity;	/* committed session identity */
static VerifiedIdentity xact_identity;	/* this transaction's identity */
static bool xact_identity_is_session;	/* becomes the session's at commit */
static int	xact_identity_level;	/* subtransaction level that set it */

/* Last request.jwt.claims value parsed, and its result. */
static char *claims_cache_text = NULL;
static bool claims_cache_valid = false;
static pg_uuid_t claims_cache_user;

static ProcessUtility_hook_type prev_process_utility = NULL;

/* Value of one hexadecimal digit, or -1. */
static inline int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Parse a uuid without raising: 32 hex digits, either plain or in the
 * canonical 8-4-4-4-12 grouping.  Returns false for anything else.
 */
bool
dalgo_parse_uuid(const char *str, size_t len, pg_uuid_t *result)
{
	bool		hyphens;
	int			j = 0;

	if (len == 36)
		hyphens = true;
	else if (len == 32)
		hyphens = false;
	else
		return false;

	for (size_t i = 0; i < len; i++)
	{
		int			hi,
					lo;

		if (hyphens && (i == 8 || i == 13 || i == 18 || i == 23))
		{
			if (str[i] != '-')
				return false;
			continue;
		}
		if (i + 1 >= len)
			return false;
		hi = hex_value(str[i]);
		lo = hex_value(str[i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		result->data[j++] = (unsigned char) ((hi << 4) | lo);
		i++;
	}
	return j == UUID_LEN;
}

/* Identity from request.jwt.claims ->> 'sub'; cached by the claims text. */
static bool
identity_from_claims(const char *claims, pg_uuid_t *result)
{
	static const char *const fields[] = {"sub"};
	char	   *value;
	bool		is_string;
	MemoryContext oldcxt;

	if (claims_cache_text != NULL && strcmp(claims_cache_text, claims) == 0)
	{
		*result = claims_cache_user;
		return claims_cache_valid;
	}

	claims_cache_valid =
		dalgo_json_top_fields(claims, strlen(claims), 1, fields, &value, &is_string) &&
		value != NULL && is_string &&
		dalgo_parse_uuid(value, strlen(value), &claims_cache_user);

	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	if (claims_cache_text)
		pfree(claims_cache_text);
	claims_cache_text = pstrdup(claims);
	MemoryContextSwitchTo(oldcxt);

	*result = claims_cache_user;
	return claims_cache_valid;
}

/* Resolve the caller's identity; false means there is none. */
bool
dalgo_current_user_id(pg_uuid_t *result)
{
	const char *claims;

	if (xact_identity.set)
	{
		*result = xact_identity.user_id;
		return true;
	}
	if (session_identity.set)
	{
		*result = session_identity.user_id;
		return true;
	}
	if (dalgo_user_id_setting != NULL && dalgo_user_id_setting[0] != '\0')
		return dalgo_parse_uuid(dalgo_user_id_setting, strlen(dalgo_user_id_setting), result);
	if (!dalgo_trust_jwt_claims)
		return false;
	claims = GetConfigOption("request.jwt.claims", true, false);
	if (claims == NULL || claims[0] == '\0')
		return false;
	return identity_from_claims(claims, result);
}

/*
 * Look up a user directly (bypassing row-level security): true if the user
 * exists, is active and is not soft-deleted.
 */
bool
dalgo_user_is_active(const pg_uuid_t *user_id, bool *is_superadmin, Snapshot snapshot)
{
	Oid			relid = dalgo_relation_oid("users");
	Relation	rel = table_open(relid, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		active = false;

	scan = dalgo_begin_uuid_scan(rel, dalgo_relation_oid("users_pkey"),
								 dalgo_attnum(relid, "id"), user_id, &key, snapshot);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		TupleDesc	desc = RelationGetDescr(rel);
		bool		isnull;
		Datum		d;

		d = heap_getattr(tuple, dalgo_attnum(relid, "is_active"), desc, &isnull);
		active = !isnull && DatumGetBool(d);
		(void) heap_getattr(tuple, dalgo_attnum(relid, "deleted_at"), desc, &isnull);
		active = active && isnull;
		if (is_superadmin)
		{
			d = heap_getattr(tuple, dalgo_attnum(relid, "is_superadmin"), desc, &isnull);
			*is_superadmin = !isnull && DatumGetBool(d);
		}
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return active;
}

/* SQL: dalgo.current_user_id(): the caller's user id, or NULL. */
Datum
dalgo_current_user_id_sql(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *result = palloc(sizeof(pg_uuid_t));

	if (!dalgo_current_user_id(result))
		PG_RETURN_NULL();
	PG_RETURN_UUID_P(result);
}

/*
 * SQL: dalgo.authenticate(token text, session boolean default false):
 * verify an HS256 token and make its subject the caller's identity.
 */
Datum
dalgo_authenticate(PG_FUNCTION_ARGS)
{
	char	   *token;
	bool		session;
	bool		active;
	pg_uuid_t  *subject = palloc(sizeof(pg_uuid_t));

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("authentication failed")));
	token = text_to_cstring(PG_GETARG_TEXT_PP(0));
	session = !PG_ARGISNULL(1) && PG_GETARG_BOOL(1);

	if (dalgo_jwt_secret == NULL || strlen(dalgo_jwt_secret) < DALGO_MIN_SECRET_LEN ||
		!dalgo_jwt_verify_hs256(token, dalgo_jwt_secret, subject))
		active = false;
	else
	{
		Snapshot	snapshot = dalgo_latest_snapshot();

		active = dalgo_user_is_active(subject, NULL, snapshot);
		UnregisterSnapshot(snapshot);
	}
	if (!active)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("authentication failed")));

	xact_identity.set = true;
	xact_identity.user_id = *subject;
	xact_identity_is_session = session;
	xact_identity_level = GetCurrentTransactionNestLevel();
	PG_RETURN_UUID_P(subject);
}

/*
 * accounts: make user_id the caller's identity for the current transaction,
 * as dalgo.authenticate() does; used by dalgo.authenticate_api_key() after
 * it has verified the key (accounts.c).
 */
void
dalgo_set_transaction_identity(const pg_uuid_t *user_id)
{
	xact_identity.set = true;
	xact_identity.user_id = *user_id;
	xact_identity_is_session = false;
	xact_identity_level = GetCurrentTransactionNestLevel();
}

/* SQL: dalgo.sign_out(): forget any identity set by dalgo.authenticate(). */
Datum
dalgo_sign_out(PG_FUNCTION_ARGS)
{
	memset(&xact_identity, 0, sizeof(xact_identity));
	memset(&session_identity, 0, sizeof(session_identity));
	xact_identity_is_session = false;
	PG_RETURN_VOID();
}

/* Transaction end: a session identity takes effect at commit; the rest ends. */
static void
identity_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			if (xact_identity.set && xact_identity_is_session)
				session_identity = xact_identity;
			/* FALLTHROUGH */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			memset(&xact_identity, 0, sizeof(xact_identity));
			xact_identity_is_session = false;
			break;
		default:
			break;
	}
}

/*
 * Subtransactions: an identity set inside one that aborts is forgotten; one
 * set inside one that commits now belongs to its parent.
 */
static void
identity_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (!xact_identity.set || xact_identity_level < level)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		memset(&xact_identity, 0, sizeof(xact_identity));
		xact_identity_is_session = false;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
		xact_identity_level = level - 1;
}

/* Utility hook: DISCARD ALL and RESET ALL also forget a verified identity. */
static void
identity_process_utility(PlannedStmt *pstmt, const char *queryString,
						 bool readOnlyTree, ProcessUtilityContext context,
						 ParamListInfo params, QueryEnvironment *queryEnv,
						 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;

	if ((IsA(stmt, DiscardStmt) && ((DiscardStmt *) stmt)->target == DISCARD_ALL) ||
		(IsA(stmt, VariableSetStmt) && ((VariableSetStmt *) stmt)->kind == VAR_RESET_ALL))
	{
		memset(&xact_identity, 0, sizeof(xact_identity));
		memset(&session_identity, 0, sizeof(session_identity));
		xact_identity_is_session = false;
	}

	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context,
							 params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

/* Check hook for dalgo.jwt_secret: empty (disabled) or at least 32 bytes. */
static bool
check_jwt_secret(char **newval, void **extra, GucSource source)
{
	if (*newval != NULL && (*newval)[0] != '\0' && strlen(*newval) < DALGO_MIN_SECRET_LEN)
	{
		GUC_check_errdetail("dalgo.jwt_secret must be empty or at least %d bytes long.",
							DALGO_MIN_SECRET_LEN);
		return false;
	}
	return true;
}

/* Define the identity settings and install the callbacks and hook. */
void
dalgo_identity_init(void)
{
	DefineCustomStringVariable("dalgo.user_id",
							   "User id of the caller, set per request by a trusted authenticator role.",
							   "Only superusers and roles granted SET on this parameter can set it; use SET LOCAL under transaction pooling.",
							   &dalgo_user_id_setting,
							   "",
							   PGC_SUSET,
							   GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);

	DefineCustomBoolVariable("dalgo.trust_jwt_claims",
							 "Take the caller's identity from request.jwt.claims ->> 'sub' (PostgREST).",
							 "Only enable when every role that can set request.jwt.claims is trusted.",
							 &dalgo_trust_jwt_claims,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("dalgo.jwt_secret",
							   "HS256 secret that dalgo.authenticate() verifies tokens with.",
							   "Empty disables dalgo.authenticate(); otherwise at least 32 bytes.  Visible to superusers only.",
							   &dalgo_jwt_secret,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   check_jwt_secret, NULL, NULL);

	RegisterXactCallback(identity_xact_callback, NULL);
	RegisterSubXactCallback(identity_subxact_callback, NULL);

	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = identity_process_utility;
}
