/*
 * dalgo.h
 *		Shared declarations for the dalgo extension: settings, entry points
 *		that one file calls in another, and small version shims.
 *
 * dalgo targets PostgreSQL 15.  Anything that differs between server
 * versions is shimmed here, once, rather than with #if blocks inside
 * functions.
 */
#ifndef DALGO_H
#define DALGO_H

#include "postgres.h"

#include "access/genam.h"
#include "fmgr.h"
#include "pgtime.h"
#include "utils/fmgroids.h"
#include "utils/relcache.h"
#include "utils/snapshot.h"
#include "nodes/pg_list.h"
#include "utils/date.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#if PG_VERSION_NUM < 150000 || PG_VERSION_NUM >= 160000
#error "dalgo builds only against PostgreSQL 15 (use the pg_config of a PostgreSQL 15 installation)"
#endif

/* Schema that holds every dalgo object; the extension is not relocatable. */
#define DALGO_SCHEMA "dalgo"

/* Ranks of dalgo.member_role, in ascending privilege; 0 means no role. */
typedef enum DalgoRole
{
	DALGO_ROLE_NONE = 0,
	DALGO_ROLE_VIEWER,
	DALGO_ROLE_MEMBER,
	DALGO_ROLE_ADMIN,
	DALGO_ROLE_OWNER
} DalgoRole;

#define DALGO_NUM_ROLES 4

/* dalgo.c */
extern void _PG_init(void);

/* tables.c */
extern Oid	dalgo_namespace_oid(void);
extern Oid	dalgo_relation_oid(const char *relname);
extern AttrNumber dalgo_attnum(Oid relid, const char *colname);
extern Oid	dalgo_relation_owner(Oid relid);
extern Snapshot dalgo_latest_snapshot(void);
extern SysScanDesc dalgo_begin_uuid_scan(Relation rel, Oid indexid, AttrNumber attnum,
										 const pg_uuid_t *value, ScanKeyData *key,
										 Snapshot snapshot);

/* identity.c */
extern void dalgo_identity_init(void);
extern bool dalgo_current_user_id(pg_uuid_t *result);
extern bool dalgo_user_is_active(const pg_uuid_t *user_id, bool *is_superadmin,
								 Snapshot snapshot);
extern void dalgo_set_transaction_identity(const pg_uuid_t *user_id);
extern const char *dalgo_api_key_scope_setting_value(void);

/* jwt.c */

/* One top-level field of a JSON object, as dalgo_json_fields() found it. */
typedef struct DalgoJsonField
{
	int			count;			/* times the key appears at the top level */
	char	   *value;			/* scalar text, NULL for an object or array */
	bool		is_string;		/* the scalar is a JSON string */
	bool		is_array;		/* the value is an array */
	List	   *elements;		/* for an array: its string elements */
	bool		elements_ok;	/* for an array: every element is a string */
} DalgoJsonField;

extern bool dalgo_json_depth_ok(const char *json, size_t len, int max_depth);
extern bool dalgo_json_fields(const char *json, size_t len, int nfields,
							  const char *const *names, DalgoJsonField *fields);
extern bool dalgo_json_top_fields(const char *json, size_t len, int nfields,
								  const char *const *names, char **values,
								  bool *is_string);
extern bool dalgo_jwt_verify_hs256(const char *token, const char *secret,
								   const char *audience, const char *issuer,
								   pg_uuid_t *subject);

/* audit.c */
extern void dalgo_audit_init(void);

/* quota.c */
extern void dalgo_quota_init(void);

/* lifecycle.c */
extern void dalgo_lifecycle_init(void);

/* redact.c: the one redaction of secrets (keys, URLs, key=value, Bearer) */
#define DALGO_REDACTED "[redacted]"
extern bool dalgo_secret_key(const char *key, int len);
extern char *dalgo_redact_text(const char *str, int len, int *newlen);
extern Jsonb *dalgo_redact_jsonb(Jsonb *in, bool keys);
typedef bool (*DalgoRedactKeyFn) (const void *arg, const char *key, int len);
typedef char *(*DalgoRedactStringFn) (const void *arg, const char *s, int len, int *newlen);
extern Jsonb *dalgo_redact_walk(Jsonb *in, DalgoRedactKeyFn key_hit, DalgoRedactStringFn clean, const void *arg);

/* citus.c */
extern Oid	dalgo_rows_relid(Oid relid);
extern bool dalgo_citus_is_distributed(Oid relid);
extern Oid	dalgo_citus_shard_of(Relation rel, char *partmethod);
extern bool dalgo_citus_is_worker(void);
extern bool dalgo_citus_is_coordinator(void);
extern void dalgo_citus_send_setting(const char *name, const char *value);

/* membership.c */
extern void dalgo_membership_init(void);
extern bool dalgo_caller_may(const pg_uuid_t *org, DalgoRole min_role);
extern const char *const dalgo_role_labels[DALGO_NUM_ROLES];

/* recipe_emit.c */
extern void dalgo_recipe_init(void);
extern char *dalgo_compile_recipe_text(const pg_uuid_t *org, Jsonb *recipe, List **dependencies);

/* scheduler_shmem.c: the scheduler (launcher.c, scheduler.c, run_worker.c; scheduler.h) */
extern void dalgo_scheduler_init(void);

/* run_worker.c: progress of the run a run worker executes */
extern bool dalgo_in_run_worker(void);
extern void dalgo_run_progress(const pg_uuid_t *run_id, const pg_uuid_t *organization_id,
							   const pg_uuid_t *source_id, int64 rows, int64 bytes, int page);
extern void dalgo_run_progress_clear(void);

/* http.c */
extern void dalgo_http_init(void);

/* sync.c */
extern void dalgo_sync_init(void);
extern char *dalgo_csv_dir;

/* warehouse_names.c: org_<hex> schemas, dalgo_wh_<hex> roles */
extern char *dalgo_warehouse_schema_name(const pg_uuid_t *organization_id);
extern char *dalgo_warehouse_role_name(const pg_uuid_t *organization_id);

/* warehouse.c */
extern void dalgo_warehouse_init(void);
extern int	dalgo_statement_timeout;

/* deadline.c: dalgo.statement_timeout, one deadline per top-level statement */
typedef struct DalgoDeadline
{
	bool		armed;			/* we armed STATEMENT_TIMEOUT */
	bool		had_timeout;	/* the caller's timer, re-armed on leaving */
	TimestampTz caller_at;
} DalgoDeadline;

extern void dalgo_deadline_enter(DalgoDeadline *d);
extern void dalgo_deadline_leave(DalgoDeadline *d);

/* restore.c */
extern bool dalgo_restoring(void);

/* accounts.c */
extern void dalgo_accounts_init(void);
extern DalgoRole dalgo_api_key_cap(const pg_uuid_t *org);
/* An API key's scope as dalgo.api_key_scope carries it: key id, organization id, role. */
#define DALGO_API_KEY_SCOPE_LEN 96
extern bool dalgo_parse_api_key_scope(const char *text, pg_uuid_t *key_id,
									  pg_uuid_t *org, DalgoRole *role);
extern bool dalgo_api_key_scope_text(char *buf, size_t size);

/* util.c: small shared helpers */
extern int	dalgo_hex_value(char c);
extern bool dalgo_parse_uuid(const char *str, size_t len, pg_uuid_t *result);
extern void dalgo_uuid_hex(const pg_uuid_t *id, char *hex);

/* uuid_v7.c */
extern void dalgo_uuid_v7(pg_uuid_t *result);

/* next_run.c */
typedef enum DalgoFrequency
{
	DALGO_FREQ_HOURLY,
	DALGO_FREQ_DAILY,
	DALGO_FREQ_WEEKLY,
	DALGO_FREQ_MONTHLY
} DalgoFrequency;

extern pg_tz *dalgo_lookup_timezone(const char *name);
extern pg_tz *dalgo_require_timezone(const char *name);
extern DalgoFrequency dalgo_frequency_from_label(const char *label);
extern void dalgo_check_run_at_day(DalgoFrequency freq, bool day_isnull, int day);
extern TimestampTz dalgo_next_run(DalgoFrequency freq, TimeADT at, int day, pg_tz *tz,
								  TimestampTz after);

#endif							/* DALGO_H */
