/*
 * identity.c
 *		Who the caller is: dalgo.current_user_id(), dalgo.authenticate(),
 *		dalgo.sign_out(), and the settings behind them.
 *
 * The identity is taken from the first source that applies:
 *	 (a) a token verified by dalgo.authenticate(), for the current
 *		 transaction;
 *	 (b) the setting dalgo.user_id (PGC_SUSET: superusers and roles granted
 *		 SET on it, i.e. an app server's or pooler's authenticator role);
 *	 (c) request.jwt.claims ->> 'sub' (the PostgREST convention), only when
 *		 session_user is one of the roles named in the superuser-only
 *		 setting dalgo.claims_authenticators.
 * A source applies when it is set (non-empty) in the current transaction.
 * A malformed value in the source that applies gives no identity at all; it
 * never raises an error and never falls through to a weaker source.
 *
 * Nothing outlives the transaction that set it, so that a pooled server
 * connection never hands one client's identity to the next: there is no
 * session-scoped authenticate(), and dalgo.user_id and request.jwt.claims
 * count only when they were set (SET, SET LOCAL, set_config() or a
 * function's SET clause) in the current transaction.  A value left over
 * from an earlier transaction, or coming from postgresql.conf, ALTER
 * ROLE/DATABASE ... SET or connection options, is ignored (with one WARNING
 * per transaction for dalgo.user_id).
 *
 * The identity cannot change while a data-modifying statement (INSERT,
 * UPDATE, DELETE, MERGE, a data-modifying WITH, COPY FROM, TRUNCATE) runs
 * at any nesting level: the audit trail records the identity in force when
 * rows change, and it is read when the statement ends.  authenticate(),
 * sign_out() and setting dalgo.user_id are refused then; any other change
 * (request.jwt.claims, a reset) is refused when the identity is next read.
 *
 * A verified identity lives in this backend's memory, not in a setting, so
 * nothing but dalgo.authenticate() can produce it.  It ends at commit or
 * abort (and with a rolled-back subtransaction that set it), with
 * dalgo.sign_out(), or with RESET ALL.
 */
#include "dalgo.h"

#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/proc.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/guc_tables.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/varlena.h"

PG_FUNCTION_INFO_V1(dalgo_current_user_id_sql);
PG_FUNCTION_INFO_V1(dalgo_authenticate);
PG_FUNCTION_INFO_V1(dalgo_sign_out);

/* Settings. */
static char *dalgo_user_id_setting = NULL;
static char *dalgo_api_key_scope_setting = NULL;
static char *dalgo_jwt_secret = NULL;
static char *dalgo_jwt_audience = NULL;
static char *dalgo_jwt_issuer = NULL;
static char *dalgo_claims_authenticators = NULL;
static bool dalgo_trust_jwt_claims = false; /* deprecated, ignored */

/*
 * The seals of dalgo.user_id and dalgo.api_key_scope: hidden superuser
 * settings that only this file changes, to the value a top-level SET, RESET or
 * RESET ALL statement left in the setting, with the same scope (SET LOCAL
 * or not), so that the GUC machinery rolls both back alike at the end of
 * a transaction or subtransaction.  On a Citus worker a setting counts
 * only while it equals its seal: the check hook cannot refuse a reset
 * (set_config(name, NULL, true) in a query pushed down to a shard runs no
 * check hook), and a reset scope would free an API key's user from the
 * key's organization and role.
 */
static char *user_id_seal = NULL;
static char *api_key_scope_seal = NULL;

/* Placeholder value of a carried setting that differs from its seal: parses as nothing. */
#define TAMPERED_SETTING "-"

/* Minimum length of dalgo.jwt_secret: HS256 wants at least 256 bits of key. */
#define DALGO_MIN_SECRET_LEN 32

/* The placeholder setting PostgREST puts the verified claims in. */
#define CLAIMS_SETTING "request.jwt.claims"

/*
 * dalgo.claims_authenticators, parsed by its check hook: the number of role
 * names, then the names, each NUL-terminated.
 */
typedef struct AuthenticatorList
{
	int			count;
	char		names[FLEXIBLE_ARRAY_MEMBER];
} AuthenticatorList;

static AuthenticatorList *claims_authenticators = NULL;

/* Whether session_user is a claims authenticator, cached per role and list. */
static bool auth_cache_valid = false;
static Oid	auth_cache_role = InvalidOid;
static AuthenticatorList *auth_cache_list = NULL;
static bool auth_cache_result = false;

/* The verified identity set by dalgo.authenticate(), for this transaction. */
static bool xact_identity_set = false;
static pg_uuid_t xact_identity;
static int	xact_identity_level;	/* subtransaction level that set it */

/* Last request.jwt.claims value parsed, and its result. */
static char *claims_cache_text = NULL;
static bool claims_cache_valid = false;
static pg_uuid_t claims_cache_user;

/* Local transaction that was last warned about a stale dalgo.user_id. */
static LocalTransactionId stale_warned_lxid = InvalidLocalTransactionId;

/*
 * Data-modifying statements running now, at any nesting level, and the
 * identity that was in force when the outermost one started.
 * depth_at_level[n] is the depth when subtransaction level n started, to
 * restore when it aborts (an error skips ExecutorEnd).
 */
static int	modify_depth = 0;
static bool modify_identity_set = false;
static pg_uuid_t modify_identity;
static int *depth_at_level = NULL;
static int	depth_at_level_size = 0;

/* Where the identity of resolve_identity_from() came from. */
typedef enum IdentitySource
{
	IDENTITY_NONE,
	IDENTITY_VERIFIED,			/* authenticate(), an API key, act_as() */
	IDENTITY_SETTING,			/* dalgo.user_id */
	IDENTITY_CLAIMS				/* request.jwt.claims */
} IdentitySource;

/*
 * What this transaction last sent to the Citus workers (carry_identity):
 * valid once settled, the subtransaction level that sent it, the user id
 * and the API-key scope as text ("" for none).
 */
static bool carried_valid = false;
static int	carried_level;
static char carried_user[UUID_LEN * 2 + 8];
static char carried_scope[DALGO_API_KEY_SCOPE_LEN];

static ProcessUtility_hook_type prev_process_utility = NULL;

/* True while a top-level SET/RESET of dalgo.user_id or api_key_scope runs (Citus workers). */
static bool in_toplevel_user_id_set = false;
static ExecutorStart_hook_type prev_executor_start = NULL;
static ExecutorEnd_hook_type prev_executor_end = NULL;

/* Compare setting names the way guc.c does (ASCII case-insensitive). */
static int
guc_name_cmp(const char *a, const char *b)
{
	while (*a && *b)
	{
		char		ca = *a++;
		char		cb = *b++;

		if (ca >= 'A' && ca <= 'Z')
			ca += 'a' - 'A';
		if (cb >= 'A' && cb <= 'Z')
			cb += 'a' - 'A';
		if (ca != cb)
			return (unsigned char) ca - (unsigned char) cb;
	}
	if (*a)
		return 1;
	if (*b)
		return -1;
	return 0;
}

/*
 * Find a string setting (defined or placeholder) by name, without creating
 * it; NULL when there is none.  guc.c keeps its table sorted by name.
 */
static struct config_string *
find_string_setting(const char *name)
{
	struct config_generic **vars = get_guc_variables();
	int			lo = 0;
	int			hi = GetNumConfigOptions() - 1;

	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;
		int			c = guc_name_cmp(name, vars[mid]->name);

		if (c == 0)
			return vars[mid]->vartype == PGC_STRING ? (struct config_string *) vars[mid] : NULL;
		if (c < 0)
			hi = mid - 1;
		else
			lo = mid + 1;
	}
	return NULL;
}

/*
 * The value of a per-request setting if it was set in the current
 * transaction (it then has a saved prior value, and its source is the
 * session: SET, SET LOCAL, set_config() or a function's SET clause); NULL
 * if it is unset, empty, or left over from an earlier transaction or from a
 * configured default.  *stale tells the last case apart.
 */
static const char *
request_setting(struct config_string *conf, bool *stale)
{
	const char *value;

	*stale = false;
	if (conf == NULL || conf->variable == NULL)
		return NULL;
	value = *conf->variable;
	if (value == NULL || value[0] == '\0')
		return NULL;
	if (conf->gen.stack == NULL || conf->gen.source != PGC_S_SESSION)
	{
		*stale = true;
		return NULL;
	}
	return value;
}

/* Syscache callback: a role changed, so re-check session_user's name. */
static void
authenticator_cache_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	auth_cache_valid = false;
}

/* True if session_user is named in dalgo.claims_authenticators. */
static bool
session_user_is_claims_authenticator(void)
{
	Oid			role = GetSessionUserId();
	char	   *rolname;
	const char *name;
	bool		found = false;

	if (claims_authenticators == NULL || claims_authenticators->count == 0 ||
		!OidIsValid(role))
		return false;
	if (auth_cache_valid && auth_cache_role == role &&
		auth_cache_list == claims_authenticators)
		return auth_cache_result;
	if (!IsTransactionState())
		return false;

	rolname = GetUserNameFromId(role, true);
	name = claims_authenticators->names;
	for (int i = 0; rolname != NULL && i < claims_authenticators->count; i++)
	{
		if (strcmp(name, rolname) == 0)
		{
			found = true;
			break;
		}
		name += strlen(name) + 1;
	}
	if (rolname)
		pfree(rolname);

	auth_cache_role = role;
	auth_cache_list = claims_authenticators;
	auth_cache_result = found;
	auth_cache_valid = true;
	return found;
}

/*
 * The claims document to take the identity from: request.jwt.claims when it
 * was set in this transaction and session_user is a claims authenticator;
 * NULL otherwise.
 */
static const char *
trusted_claims(void)
{
	bool		stale;
	const char *claims;

	if (claims_authenticators == NULL || claims_authenticators->count == 0)
		return NULL;
	claims = request_setting(find_string_setting(CLAIMS_SETTING), &stale);
	if (claims == NULL || !session_user_is_claims_authenticator())
		return NULL;
	return claims;
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

/* True on a Citus worker (or outside a transaction); looked up once per transaction. */
static bool
on_citus_worker(void)
{
	static LocalTransactionId checked_lxid = InvalidLocalTransactionId;
	static bool worker = false;

	/* No catalog to read outside a transaction: count as a worker (fail closed). */
	if (MyProc == NULL || MyProc->lxid == InvalidLocalTransactionId || !IsTransactionState())
		return true;
	if (checked_lxid != MyProc->lxid)
	{
		worker = dalgo_citus_is_worker();
		checked_lxid = MyProc->lxid;
	}
	return worker;
}

/*
 * True if a carried setting's value differs from its seal on a Citus
 * worker: something other than a top-level SET statement changed it (a
 * reset by set_config() inside a query), and it must count for nothing.
 */
static bool
carried_setting_tampered(const char *value, const char *seal)
{
	if (strcmp(value ? value : "", seal ? seal : "") == 0)
		return false;
	return on_citus_worker();
}

/*
 * Seal a carried setting: its seal takes the setting's current value, as
 * SET LOCAL (local) or SET.
 */
static void
seal_carried_setting(const char *name, bool local)
{
	const char *value = GetConfigOption(name, false, false);
	char		seal_name[64];

	snprintf(seal_name, sizeof(seal_name), "%s_seal", name);
	/*
	 * As a superuser would: the caller holds SET on the setting, not on its
	 * seal.  (PGC_SUSET, not PGC_INTERNAL: parallel workers must get the seal
	 * with the setting, and they are sent no internal setting.)
	 */
	(void) set_config_option_ext(seal_name, value ? value : "", PGC_SUSET, PGC_S_SESSION,
								 BOOTSTRAP_SUPERUSERID,
								 local ? GUC_ACTION_LOCAL : GUC_ACTION_SET, true, 0, false);
}

/*
 * dalgo.api_key_scope if it was set in this transaction (see
 * request_setting), else NULL: how a Citus worker learns the API-key scope
 * of the request its coordinator runs (accounts.c).  On a worker, a scope
 * changed other than by a SET statement gives TAMPERED_SETTING, which
 * grants nothing anywhere.
 */
const char *
dalgo_api_key_scope_setting_value(void)
{
	static struct config_string *conf = NULL;
	bool		stale;

	if (carried_setting_tampered(dalgo_api_key_scope_setting, api_key_scope_seal))
		return TAMPERED_SETTING;
	if (dalgo_api_key_scope_setting == NULL || dalgo_api_key_scope_setting[0] == '\0')
		return NULL;
	if (conf == NULL)
		conf = find_string_setting("dalgo.api_key_scope");
	return request_setting(conf, &stale);
}

/* dalgo.user_id if it was set in this transaction (see request_setting). */
static const char *
user_id_request_setting(bool *stale)
{
	static struct config_string *conf = NULL;

	if (conf == NULL)
		conf = find_string_setting("dalgo.user_id");
	return request_setting(conf, stale);
}

/*
 * Resolve the caller's identity from its sources; false means there is
 * none.  *source, when given, tells which source applied.
 */
static bool
resolve_identity_from(pg_uuid_t *result, IdentitySource *source)
{
	const char *value;
	bool		stale;

	if (xact_identity_set)
	{
		*source = IDENTITY_VERIFIED;
		*result = xact_identity;
		return true;
	}

	*source = IDENTITY_SETTING;
	/* On a worker, dalgo.user_id changed other than by a SET statement: nobody. */
	if (carried_setting_tampered(dalgo_user_id_setting, user_id_seal))
		return false;
	value = user_id_request_setting(&stale);
	if (value != NULL)
		return dalgo_parse_uuid(value, strlen(value), result);
	if (stale && MyProc != NULL && MyProc->lxid != InvalidLocalTransactionId &&
		stale_warned_lxid != MyProc->lxid)
	{
		stale_warned_lxid = MyProc->lxid;
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("dalgo.user_id was not set in this transaction and is ignored"),
				 errdetail("A session-level value would pass one client's identity to the next one on a pooled connection."),
				 errhint("Set it per transaction with SET LOCAL dalgo.user_id or set_config('dalgo.user_id', ..., true).")));
	}

	value = trusted_claims();
	*source = IDENTITY_CLAIMS;
	if (value != NULL)
		return identity_from_claims(value, result);
	*source = IDENTITY_NONE;
	return false;
}

/* Resolve the caller's identity from its sources; false means there is none. */
static bool
resolve_identity(pg_uuid_t *result)
{
	IdentitySource source;

	return resolve_identity_from(result, &source);
}

/* Refuse an identity change while a data-modifying statement runs. */
static void
refuse_identity_change_if_modifying(const char *what)
{
	if (modify_depth > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("%s cannot change the identity while a data-modifying statement runs", what),
				 errdetail("The audit trail credits each change to the identity in force when the statement started."),
				 errhint("Change the identity in a statement of its own, before or after the INSERT, UPDATE, DELETE, MERGE, COPY or TRUNCATE.")));
}

/*
 * Resolve the caller's identity; false means there is none.  While a
 * data-modifying statement runs, an identity other than the one it started
 * with is an error: it would be recorded as the author of the change.
 */
bool
dalgo_current_user_id(pg_uuid_t *result)
{
	bool		found = resolve_identity(result);

	if (modify_depth > 0 &&
		(found != modify_identity_set ||
		 (found && memcmp(result->data, modify_identity.data, UUID_LEN) != 0)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("the identity changed while a data-modifying statement was running"),
				 errdetail("The audit trail credits each change to the identity in force when the statement started."),
				 errhint("Change the identity in a statement of its own, before or after the INSERT, UPDATE, DELETE, MERGE, COPY or TRUNCATE.")));
	return found;
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
 * verify an HS256 token and make its subject the caller's identity for the
 * current transaction.  session => true (0.1.0's session scope) is refused:
 * behind a pooler it would outlast the request that asked for it.
 */
Datum
dalgo_authenticate(PG_FUNCTION_ARGS)
{
	char	   *token;
	bool		active;
	pg_uuid_t  *subject = palloc(sizeof(pg_uuid_t));

	if (PG_NARGS() > 1 && !PG_ARGISNULL(1) && PG_GETARG_BOOL(1))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("session-scoped authentication is not supported"),
				 errdetail("Behind a connection pooler a session identity would pass to the next client of the same server connection."),
				 errhint("Call dalgo.authenticate(token) at the start of each transaction; the identity ends with it.")));
	refuse_identity_change_if_modifying("dalgo.authenticate()");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("authentication failed")));
	token = text_to_cstring(PG_GETARG_TEXT_PP(0));

	if (dalgo_jwt_secret == NULL || strlen(dalgo_jwt_secret) < DALGO_MIN_SECRET_LEN ||
		!dalgo_jwt_verify_hs256(token, dalgo_jwt_secret, dalgo_jwt_audience,
								dalgo_jwt_issuer, subject))
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

	xact_identity_set = true;
	xact_identity = *subject;
	xact_identity_level = GetCurrentTransactionNestLevel();
	PG_RETURN_UUID_P(subject);
}

/*
 * accounts: make user_id the caller's identity for the current transaction,
 * as dalgo.authenticate() does; used by dalgo.authenticate_api_key() after
 * it has verified the key, and by dalgo.accept_invitation() (accounts.c).
 */
void
dalgo_set_transaction_identity(const pg_uuid_t *user_id)
{
	refuse_identity_change_if_modifying("an accounts function");
	xact_identity_set = true;
	xact_identity = *user_id;
	xact_identity_level = GetCurrentTransactionNestLevel();
}

/* SQL: dalgo.sign_out(): forget the identity set by dalgo.authenticate(). */
Datum
dalgo_sign_out(PG_FUNCTION_ARGS)
{
	refuse_identity_change_if_modifying("dalgo.sign_out()");
	xact_identity_set = false;
	PG_RETURN_VOID();
}

/* Transaction end: the verified identity and the statement depth end. */
static void
identity_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			xact_identity_set = false;
			modify_depth = 0;
			modify_identity_set = false;
			carried_valid = false;
			carried_user[0] = '\0';
			carried_scope[0] = '\0';
			break;
		default:
			break;
	}
}

/*
 * Subtransactions: an identity set inside one that aborts is forgotten; one
 * set inside one that commits now belongs to its parent.  The depth of
 * data-modifying statements goes back to what it was when an aborted one
 * started.
 */
static void
identity_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (event == SUBXACT_EVENT_START_SUB)
	{
		if (level >= depth_at_level_size)
		{
			int			newsize = Max(16, level * 2);

			if (depth_at_level == NULL)
				depth_at_level = MemoryContextAllocZero(TopMemoryContext, newsize * sizeof(int));
			else
				depth_at_level = repalloc(depth_at_level, newsize * sizeof(int));
			depth_at_level_size = newsize;
		}
		depth_at_level[level] = modify_depth;
		return;
	}
	if (event == SUBXACT_EVENT_ABORT_SUB && level < depth_at_level_size)
		modify_depth = depth_at_level[level];

	/*
	 * Citus forgets the SET LOCAL statements of a subtransaction when it
	 * ends, even when it commits: send again what was sent inside one.
	 */
	if ((event == SUBXACT_EVENT_ABORT_SUB || event == SUBXACT_EVENT_COMMIT_SUB) &&
		carried_valid && carried_level >= level)
		carried_valid = false;

	if (!xact_identity_set || xact_identity_level < level)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
		xact_identity_set = false;
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
		xact_identity_level = level - 1;
}

/*
 * On a Citus coordinator, make the workers see the caller's identity.
 * Citus sends the transaction's SET LOCAL statements to its worker
 * connections, but an identity verified here (authenticate(), an API key,
 * act_as()) or taken from PostgREST's claims is no such statement: the
 * policies on the shards would see nobody.  So before each statement, when
 * the identity (and API-key scope) differs from what this transaction last
 * sent, it is sent as SET LOCAL dalgo.user_id and dalgo.api_key_scope
 * (RESET when gone).  The workers accept those only as statements of their
 * own, from the roles they grant SET on them to (check_identity_setting).
 */
static void
carry_identity(void)
{
	pg_uuid_t	user;
	IdentitySource source = IDENTITY_NONE;
	char		user_text[sizeof(carried_user)] = "";
	char		scope_text[sizeof(carried_scope)] = "";
	bool		has_scope;
	bool		stale;
	const char *setting;
	bool		unsealed;

	/*
	 * dalgo.user_id set in this transaction other than by a top-level SET
	 * statement (set_config() by the app's authenticator), which Citus does
	 * not send.
	 */
	setting = user_id_request_setting(&stale);
	unsealed = setting != NULL && strcmp(setting, user_id_seal ? user_id_seal : "") != 0;

	/*
	 * Nothing to do unless an identity that Citus does not send may be in
	 * force, or one was sent and may have to be withdrawn (after RESET ALL,
	 * which Citus does not send under citus.propagate_set_commands = 'none').
	 */
	if (!carried_valid && !xact_identity_set && !unsealed &&
		carried_user[0] == '\0' && carried_scope[0] == '\0' &&
		(claims_authenticators == NULL || claims_authenticators->count == 0))
		return;
	if (!IsTransactionState() || IsParallelWorker() || modify_depth > 0)
		return;

	if (resolve_identity_from(&user, &source))
		strlcpy(user_text, DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&user))),
				sizeof(user_text));
	has_scope = dalgo_api_key_scope_text(scope_text, sizeof(scope_text));
	if (carried_valid)
	{
		if (strcmp(user_text, carried_user) == 0 && strcmp(scope_text, carried_scope) == 0)
			return;
	}
	else if (source != IDENTITY_VERIFIED && source != IDENTITY_CLAIMS && !has_scope && !unsealed &&
			 carried_user[0] == '\0' && carried_scope[0] == '\0')
		return;				/* a SET LOCAL dalgo.user_id reaches the workers by itself */

	if (dalgo_citus_is_coordinator())
	{
		dalgo_citus_send_setting("dalgo.user_id", user_text[0] ? user_text : NULL);
		if (has_scope || carried_scope[0] != '\0')
			dalgo_citus_send_setting("dalgo.api_key_scope", has_scope ? scope_text : NULL);
	}
	strlcpy(carried_user, user_text, sizeof(carried_user));
	strlcpy(carried_scope, scope_text, sizeof(carried_scope));
	carried_level = GetCurrentTransactionNestLevel();
	carried_valid = true;
}

/* A data-modifying statement starts: remember the identity if outermost. */
static void
modify_begin(void)
{
	if (modify_depth == 0)
		modify_identity_set = resolve_identity(&modify_identity);
	modify_depth++;
}

/* A data-modifying statement ends. */
static void
modify_end(void)
{
	if (modify_depth > 0)
		modify_depth--;
}

/* True if a plan changes rows (directly or in a WITH clause). */
static inline bool
plan_modifies(QueryDesc *queryDesc)
{
	return queryDesc->operation != CMD_SELECT ||
		queryDesc->plannedstmt->hasModifyingCTE;
}

/*
 * ExecutorStart hook: send the identity to Citus workers if it changed;
 * count data-modifying statements.
 */
static void
identity_executor_start(QueryDesc *queryDesc, int eflags)
{
	carry_identity();
	if (plan_modifies(queryDesc))
		modify_begin();
	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/* ExecutorEnd hook: a counted statement is done. */
static void
identity_executor_end(QueryDesc *queryDesc)
{
	bool		modifies = plan_modifies(queryDesc);

	if (prev_executor_end)
		prev_executor_end(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
	if (modifies)
		modify_end();
}

/* True if name is dalgo.user_id or dalgo.api_key_scope, which a worker takes from SET only. */
static bool
is_carried_setting(const char *name)
{
	return name != NULL && (guc_name_cmp(name, "dalgo.user_id") == 0 ||
							guc_name_cmp(name, "dalgo.api_key_scope") == 0);
}

/* True if name is a per-request identity setting. */
static bool
is_identity_setting(const char *name)
{
	if (name == NULL)
		return false;
	if (is_carried_setting(name))
		return true;
	return guc_name_cmp(name, CLAIMS_SETTING) == 0 && trusted_claims() != NULL;
}

/* True if a SET/RESET statement names dalgo.jwt_secret with a value to store. */
static bool
stores_secret(VariableSetStmt *setstmt)
{
	return setstmt != NULL && setstmt->name != NULL &&
		guc_name_cmp(setstmt->name, "dalgo.jwt_secret") == 0 &&
		(setstmt->kind == VAR_SET_VALUE || setstmt->kind == VAR_SET_CURRENT);
}

/* Refuse storing dalgo.jwt_secret in a catalog every role can read. */
static void
refuse_stored_secret(VariableSetStmt *setstmt, const char *where)
{
	if (stores_secret(setstmt))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("dalgo.jwt_secret cannot be set with %s", where),
				 errdetail("Such settings are stored in a system catalog that every role can read."),
				 errhint("Set dalgo.jwt_secret in postgresql.conf or with ALTER SYSTEM.")));
}

/* Refuse a function SET clause that would store dalgo.jwt_secret in pg_proc. */
static void
refuse_secret_in_function_options(List *options)
{
	ListCell   *lc;

	foreach(lc, options)
	{
		DefElem    *def = (DefElem *) lfirst(lc);

		if (strcmp(def->defname, "set") == 0 && def->arg != NULL &&
			IsA(def->arg, VariableSetStmt))
			refuse_stored_secret((VariableSetStmt *) def->arg, "a function's SET clause");
	}
}

/* Run a top-level SET/RESET of a carried setting, marked as such for check_identity_setting(). */
static void
run_user_id_set(PlannedStmt *pstmt, const char *queryString,
				bool readOnlyTree, ProcessUtilityContext context,
				ParamListInfo params, QueryEnvironment *queryEnv,
				DestReceiver *dest, QueryCompletion *qc)
{
	bool		save = in_toplevel_user_id_set;

	in_toplevel_user_id_set = true;
	PG_TRY();
	{
		if (prev_process_utility)
			prev_process_utility(pstmt, queryString, readOnlyTree, context,
								 params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
									params, queryEnv, dest, qc);
	}
	PG_FINALLY();
	{
		in_toplevel_user_id_set = save;
	}
	PG_END_TRY();
	{
		VariableSetStmt *vs = (VariableSetStmt *) pstmt->utilityStmt;

		seal_carried_setting(guc_name_cmp(vs->name, "dalgo.user_id") == 0 ?
							 "dalgo.user_id" : "dalgo.api_key_scope",
							 vs->is_local && vs->kind != VAR_RESET);
	}
}

/*
 * Utility hook: RESET ALL also forgets a verified identity; identity
 * changes are refused inside a data-modifying statement; COPY FROM and
 * TRUNCATE count as data-modifying statements; dalgo.jwt_secret is never
 * stored in pg_db_role_setting or pg_proc.
 */
static void
identity_process_utility(PlannedStmt *pstmt, const char *queryString,
						 bool readOnlyTree, ProcessUtilityContext context,
						 ParamListInfo params, QueryEnvironment *queryEnv,
						 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;
	bool		modifies = false;

	switch (nodeTag(stmt))
	{
		case T_VariableSetStmt:
			{
				VariableSetStmt *vs = (VariableSetStmt *) stmt;

				if (vs->kind == VAR_RESET_ALL)
				{
					refuse_identity_change_if_modifying("RESET ALL");
					xact_identity_set = false;
					carried_valid = false;
				}
				else if (is_identity_setting(vs->name))
				{
					refuse_identity_change_if_modifying(vs->kind == VAR_RESET ? "RESET" : "SET");
					/* Citus sends this one itself: check what was carried before the next statement. */
					carried_valid = false;
				}
				break;
			}
		case T_DiscardStmt:
			if (((DiscardStmt *) stmt)->target == DISCARD_ALL)
			{
				refuse_identity_change_if_modifying("DISCARD ALL");
				xact_identity_set = false;
			}
			break;
		case T_AlterRoleSetStmt:
			refuse_stored_secret(((AlterRoleSetStmt *) stmt)->setstmt, "ALTER ROLE ... SET");
			break;
		case T_AlterDatabaseSetStmt:
			refuse_stored_secret(((AlterDatabaseSetStmt *) stmt)->setstmt, "ALTER DATABASE ... SET");
			break;
		case T_CreateFunctionStmt:
			refuse_secret_in_function_options(((CreateFunctionStmt *) stmt)->options);
			break;
		case T_AlterFunctionStmt:
			refuse_secret_in_function_options(((AlterFunctionStmt *) stmt)->actions);
			break;
		case T_FetchStmt:
			/* Citus runs a cursor's query on the workers at its first FETCH. */
			carry_identity();
			break;
		case T_CopyStmt:
			/* Citus runs COPY of a distributed table from here, not the executor. */
			carry_identity();
			modifies = ((CopyStmt *) stmt)->is_from;
			break;
		case T_TruncateStmt:
			modifies = true;
			break;
		default:
			break;
	}

	if (modifies)
		modify_begin();
	if (context == PROCESS_UTILITY_TOPLEVEL && IsA(stmt, VariableSetStmt) &&
		is_carried_setting(((VariableSetStmt *) stmt)->name))
		run_user_id_set(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context,
							 params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
	if (modifies)
		modify_end();

	/* A top-level RESET ALL (Citus propagates it) resets both carried settings. */
	if (context == PROCESS_UTILITY_TOPLEVEL &&
		((IsA(stmt, VariableSetStmt) && ((VariableSetStmt *) stmt)->kind == VAR_RESET_ALL) ||
		 (IsA(stmt, DiscardStmt) && ((DiscardStmt *) stmt)->target == DISCARD_ALL)))
	{
		seal_carried_setting("dalgo.user_id", false);
		seal_carried_setting("dalgo.api_key_scope", false);
	}
}

/*
 * The common part of the check hooks of dalgo.user_id and
 * dalgo.api_key_scope: no change while a data-modifying statement runs,
 * and on a Citus worker only by a SET statement of its own.
 */
static bool
check_identity_setting(const char *name, GucSource source)
{
	if (modify_depth > 0 && source == PGC_S_SESSION)
	{
		GUC_check_errcode(ERRCODE_INVALID_TRANSACTION_STATE);
		GUC_check_errmsg("%s cannot change while a data-modifying statement runs", name);
		GUC_check_errdetail("The audit trail credits each change to the identity in force when the statement started.");
		GUC_check_errhint("Set %s in a statement of its own, before the INSERT, UPDATE, DELETE, MERGE, COPY or TRUNCATE.", name);
		return false;
	}

	/*
	 * A Citus worker: the roles Citus connects as may set these there (the
	 * coordinator sends the request's SET LOCAL), but a query's set_config()
	 * pushed down to a shard must not change who the caller is.  Only a
	 * top-level SET statement of its own does.
	 */
	if (source == PGC_S_SESSION && !in_toplevel_user_id_set && IsTransactionState() &&
		!superuser() && dalgo_citus_is_worker())
	{
		GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
		GUC_check_errmsg("on a Citus worker, %s is set only by a SET statement of its own", name);
		GUC_check_errdetail("The coordinator sends the request's identity with SET LOCAL; a function inside a query cannot change it.");
		return false;
	}
	return true;
}

/* Check hook for dalgo.user_id (see check_identity_setting). */
static bool
check_user_id(char **newval, void **extra, GucSource source)
{
	return check_identity_setting("dalgo.user_id", source);
}

/*
 * Check hook for dalgo.api_key_scope: empty, or "<key id> <organization
 * id> <role>"; and see check_identity_setting.
 */
static bool
check_api_key_scope(char **newval, void **extra, GucSource source)
{
	if (*newval != NULL && (*newval)[0] != '\0' && !dalgo_parse_api_key_scope(*newval, NULL, NULL, NULL))
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errdetail("dalgo.api_key_scope is empty or an API key's id, its organization's id and its role (viewer, member, admin or owner), separated by single spaces.");
		return false;
	}
	return check_identity_setting("dalgo.api_key_scope", source);
}

/*
 * Check hook for dalgo.jwt_secret: empty (disabled) or at least 32 bytes,
 * and never from ALTER DATABASE/ROLE ... SET, which every role can read in
 * pg_db_role_setting.  The message never quotes the value.
 */
static bool
check_jwt_secret(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	if (source == PGC_S_GLOBAL || source == PGC_S_DATABASE ||
		source == PGC_S_USER || source == PGC_S_DATABASE_USER)
	{
		GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
		GUC_check_errmsg("dalgo.jwt_secret cannot be set with ALTER DATABASE or ALTER ROLE; the value is ignored");
		GUC_check_errdetail("Such settings are stored in pg_db_role_setting, which every role can read.");
		GUC_check_errhint("Remove it with ALTER DATABASE/ROLE ... RESET dalgo.jwt_secret, rotate the secret, and set it in postgresql.conf or with ALTER SYSTEM.");
		return false;
	}
	if (strlen(*newval) < DALGO_MIN_SECRET_LEN)
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errmsg("invalid value for parameter \"dalgo.jwt_secret\"");
		GUC_check_errdetail("dalgo.jwt_secret must be empty or at least %d bytes long.",
							DALGO_MIN_SECRET_LEN);
		return false;
	}
	return true;
}

/* Check hook for dalgo.claims_authenticators: a list of role names. */
static bool
check_claims_authenticators(char **newval, void **extra, GucSource source)
{
	char	   *raw = pstrdup(*newval ? *newval : "");
	List	   *names;
	ListCell   *lc;
	Size		size = offsetof(AuthenticatorList, names);
	AuthenticatorList *list;
	char	   *p;

	if (!SplitIdentifierString(raw, ',', &names))
	{
		GUC_check_errdetail("List syntax is invalid.");
		pfree(raw);
		list_free(names);
		return false;
	}
	foreach(lc, names)
		size += strlen((char *) lfirst(lc)) + 1;
	/* guc.c releases extra with free(). */
	list = (AuthenticatorList *) malloc(size);
	if (list == NULL)
	{
		GUC_check_errcode(ERRCODE_OUT_OF_MEMORY);
		GUC_check_errdetail("Out of memory.");
		return false;
	}
	list->count = list_length(names);
	p = list->names;
	foreach(lc, names)
	{
		size_t		len = strlen((char *) lfirst(lc)) + 1;

		memcpy(p, lfirst(lc), len);
		p += len;
	}
	pfree(raw);
	list_free(names);
	*extra = list;
	return true;
}

/* Assign hook for dalgo.claims_authenticators. */
static void
assign_claims_authenticators(const char *newval, void *extra)
{
	claims_authenticators = (AuthenticatorList *) extra;
	auth_cache_valid = false;
}

/* Define the identity settings and install the callbacks and hooks. */
void
dalgo_identity_init(void)
{
	DefineCustomStringVariable("dalgo.user_id",
							   "User id of the caller, set per transaction by a trusted authenticator role.",
							   "Only superusers and roles granted SET on this parameter can set it.  It counts only in the transaction that set it.",
							   &dalgo_user_id_setting,
							   "",
							   PGC_SUSET,
							   GUC_NOT_IN_SAMPLE,
							   check_user_id, NULL, NULL);

	DefineCustomStringVariable("dalgo.api_key_scope",
							   "The API-key scope of the caller, as a Citus coordinator sends it to its workers: key id, organization id and role.",
							   "Set per transaction, like dalgo.user_id; it narrows the caller to one organization at most at the role.  Only superusers and roles granted SET on this parameter can set it.",
							   &dalgo_api_key_scope_setting,
							   "",
							   PGC_SUSET,
							   GUC_NOT_IN_SAMPLE,
							   check_api_key_scope, NULL, NULL);

	DefineCustomStringVariable("dalgo.user_id_seal",
							   "Internal: the value the last top-level SET statement left in dalgo.user_id.",
							   "On a Citus worker dalgo.user_id counts only while it equals this.",
							   &user_id_seal,
							   "",
							   PGC_SUSET,
							   GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_NO_RESET_ALL | GUC_DISALLOW_IN_FILE,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("dalgo.api_key_scope_seal",
							   "Internal: the value the last top-level SET statement left in dalgo.api_key_scope.",
							   "On a Citus worker dalgo.api_key_scope counts only while it equals this.",
							   &api_key_scope_seal,
							   "",
							   PGC_SUSET,
							   GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_NO_RESET_ALL | GUC_DISALLOW_IN_FILE,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("dalgo.claims_authenticators",
							   "Roles whose sessions may pass the caller's identity in request.jwt.claims (PostgREST's authenticator).",
							   "Comma-separated role names; request.jwt.claims ->> 'sub' counts only when session_user is one of them.",
							   &dalgo_claims_authenticators,
							   "",
							   PGC_SUSET,
							   GUC_LIST_INPUT | GUC_NOT_IN_SAMPLE,
							   check_claims_authenticators, assign_claims_authenticators, NULL);

	DefineCustomBoolVariable("dalgo.trust_jwt_claims",
							 "Deprecated and ignored since dalgo 0.2.0: see dalgo.claims_authenticators.",
							 "Turning it on no longer makes request.jwt.claims count.",
							 &dalgo_trust_jwt_claims,
							 false,
							 PGC_SUSET,
							 GUC_NOT_IN_SAMPLE,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("dalgo.jwt_secret",
							   "HS256 secret that dalgo.authenticate() verifies tokens with.",
							   "Empty disables dalgo.authenticate(); otherwise at least 32 bytes.  Visible to superusers only; refused from ALTER DATABASE/ROLE ... SET.",
							   &dalgo_jwt_secret,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   check_jwt_secret, NULL, NULL);

	DefineCustomStringVariable("dalgo.jwt_audience",
							   "When set, dalgo.authenticate() accepts only tokens whose aud claim (a string or an array of strings) names it.",
							   NULL,
							   &dalgo_jwt_audience,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("dalgo.jwt_issuer",
							   "When set, dalgo.authenticate() accepts only tokens whose iss claim equals it.",
							   NULL,
							   &dalgo_jwt_issuer,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	RegisterXactCallback(identity_xact_callback, NULL);
	RegisterSubXactCallback(identity_subxact_callback, NULL);
	CacheRegisterSyscacheCallback(AUTHOID, authenticator_cache_callback, (Datum) 0);

	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = identity_process_utility;
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = identity_executor_start;
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = identity_executor_end;
}
