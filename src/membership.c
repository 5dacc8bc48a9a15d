/*
 * membership.c
 *		dalgo.is_org_member(), is_org_admin(), org_role(), current_org_ids()
 *		and the per-backend cache that answers them.
 *
 * The cache holds, for one user, the sorted list of (organization, role)
 * pairs that count as membership: a live membership row in a live
 * organization for an active, live user; a superadmin is owner of every
 * live organization.  It is read from the tables directly (tables.c), so
 * row-level security does not recurse and search_path plays no part.
 *
 * Invalidation: a statement-level trigger on users, organizations and
 * organization_members (dalgo.membership_changed) sends a relcache
 * invalidation for the table it fired on.  PostgreSQL delivers it to this
 * backend at the next CommandCounterIncrement (so the next statement of
 * the same transaction sees the change), to other backends once the
 * transaction commits, and again locally if it rolls back.  A relcache
 * callback marks the cache stale.  Each lookup first accepts pending
 * invalidation messages, which costs one unlocked flag test when there are
 * none, so even a long transaction sees other sessions' committed changes
 * at its next statement.  The cache is loaded under a fresh snapshot taken
 * after those messages were accepted, so it is never older than the change
 * a message announced; authorization therefore follows the latest
 * committed state even inside a REPEATABLE READ transaction.
 */
#include "dalgo.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_enum.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "storage/sinval.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(dalgo_is_org_member);
PG_FUNCTION_INFO_V1(dalgo_is_org_admin);
PG_FUNCTION_INFO_V1(dalgo_org_role);
PG_FUNCTION_INFO_V1(dalgo_current_org_ids);
PG_FUNCTION_INFO_V1(dalgo_membership_changed);
PG_FUNCTION_INFO_V1(dalgo_caller_may_sql);
PG_FUNCTION_INFO_V1(dalgo_live_owner_count);
PG_FUNCTION_INFO_V1(dalgo_shares_organization);

typedef struct MembershipEntry
{
	pg_uuid_t	org;
	DalgoRole	role;
} MembershipEntry;

typedef struct MembershipCache
{
	bool		valid;			/* set only after a complete load */
	uint64		generation;		/* bumped by every relevant invalidation */
	bool		has_user;		/* built for a user (else: no identity) */
	pg_uuid_t	user;
	int			nentries;
	MembershipEntry *entries;	/* sorted by org */
	Oid			users_relid;
	Oid			orgs_relid;
	Oid			members_relid;
	Oid			role_oids[DALGO_NUM_ROLES]; /* pg_enum OIDs, viewer..owner */
} MembershipCache;

static MembershipCache cache;
static MemoryContext cache_context = NULL;

/* The labels of dalgo.member_role, viewer..owner: DalgoRole r is dalgo_role_labels[r - 1]. */
const char *const dalgo_role_labels[DALGO_NUM_ROLES] = {"viewer", "member", "admin", "owner"};

/* Relcache callback: any change to the three membership tables invalidates. */
static void
membership_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == cache.users_relid ||
		relid == cache.orgs_relid || relid == cache.members_relid)
	{
		cache.valid = false;
		cache.generation++;
	}
}

/* Order entries by organization id. */
static int
entry_cmp(const void *a, const void *b)
{
	return memcmp(&((const MembershipEntry *) a)->org,
				  &((const MembershipEntry *) b)->org, UUID_LEN);
}

/* Map a dalgo.member_role enum value to its rank; NONE if unknown. */
static DalgoRole
role_from_oid(Oid enumoid)
{
	for (int i = 0; i < DALGO_NUM_ROLES; i++)
		if (cache.role_oids[i] == enumoid)
			return (DalgoRole) (i + 1);
	return DALGO_ROLE_NONE;
}

/* Resolve the relation and enum OIDs the cache depends on. */
static void
resolve_oids(void)
{
	Oid			nsp = dalgo_namespace_oid();
	Oid			typoid;

	cache.users_relid = dalgo_relation_oid("users");
	cache.orgs_relid = dalgo_relation_oid("organizations");
	cache.members_relid = dalgo_relation_oid("organization_members");

	typoid = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid,
							 CStringGetDatum("member_role"), ObjectIdGetDatum(nsp));
	if (!OidIsValid(typoid))
		elog(ERROR, "type dalgo.member_role does not exist");
	for (int i = 0; i < DALGO_NUM_ROLES; i++)
	{
		cache.role_oids[i] = GetSysCacheOid2(ENUMTYPOIDNAME, Anum_pg_enum_oid,
											 ObjectIdGetDatum(typoid),
											 CStringGetDatum(dalgo_role_labels[i]));
		if (!OidIsValid(cache.role_oids[i]))
			elog(ERROR, "dalgo.member_role has no label \"%s\"", dalgo_role_labels[i]);
	}
}

/* True if the organization exists and is not soft-deleted. */
static bool
organization_is_live(Relation orgs, Oid pkey, AttrNumber id_att,
					 AttrNumber deleted_att, const pg_uuid_t *org, Snapshot snapshot)
{
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		live = false;

	scan = dalgo_begin_uuid_scan(orgs, pkey, id_att, org, &key, snapshot);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;

		(void) heap_getattr(tuple, deleted_att, RelationGetDescr(orgs), &isnull);
		live = isnull;
	}
	systable_endscan(scan);
	return live;
}

/* Append an entry to the list being built, growing it as needed. */
static void
add_entry(MembershipEntry **entries, int *n, int *cap, const pg_uuid_t *org, DalgoRole role)
{
	if (*n == *cap)
	{
		*cap *= 2;
		*entries = repalloc(*entries, sizeof(MembershipEntry) * (*cap));
	}
	(*entries)[*n].org = *org;
	(*entries)[*n].role = role;
	(*n)++;
}

/* Read the memberships of one user from the tables into the cache. */
static void
load_memberships(const pg_uuid_t *user)
{
	bool		superadmin = false;
	Relation	orgs;
	AttrNumber	org_id_att,
				org_deleted_att;
	Oid			org_pkey;
	int			cap = 8;
	int			n = 0;
	MembershipEntry *entries;
	Snapshot	snapshot;

	MemoryContextReset(cache_context);
	entries = MemoryContextAlloc(cache_context, sizeof(MembershipEntry) * cap);

	snapshot = dalgo_latest_snapshot();
	if (!dalgo_user_is_active(user, &superadmin, snapshot))
		goto done;

	orgs = table_open(cache.orgs_relid, AccessShareLock);
	org_id_att = dalgo_attnum(cache.orgs_relid, "id");
	org_deleted_att = dalgo_attnum(cache.orgs_relid, "deleted_at");
	org_pkey = dalgo_relation_oid("organizations_pkey");

	if (superadmin)
	{
		/* Owner of every live organization. */
		SysScanDesc scan = systable_beginscan(orgs, InvalidOid, false,
											  snapshot, 0, NULL);
		HeapTuple	tuple;

		while (HeapTupleIsValid(tuple = systable_getnext(scan)))
		{
			bool		isnull;
			Datum		id;
			MemoryContext old;

			(void) heap_getattr(tuple, org_deleted_att, RelationGetDescr(orgs), &isnull);
			if (!isnull)
				continue;
			id = heap_getattr(tuple, org_id_att, RelationGetDescr(orgs), &isnull);
			old = MemoryContextSwitchTo(cache_context);
			add_entry(&entries, &n, &cap, DatumGetUUIDP(id), DALGO_ROLE_OWNER);
			MemoryContextSwitchTo(old);
		}
		systable_endscan(scan);
	}
	else
	{
		Relation	members = table_open(cache.members_relid, AccessShareLock);
		TupleDesc	desc = RelationGetDescr(members);
		AttrNumber	user_att = dalgo_attnum(cache.members_relid, "user_id");
		AttrNumber	org_att = dalgo_attnum(cache.members_relid, "organization_id");
		AttrNumber	role_att = dalgo_attnum(cache.members_relid, "role");
		AttrNumber	deleted_att = dalgo_attnum(cache.members_relid, "deleted_at");
		ScanKeyData key;
		SysScanDesc scan;
		HeapTuple	tuple;

		scan = dalgo_begin_uuid_scan(members,
									 dalgo_relation_oid("organization_members_user_id_idx"),
									 user_att, user, &key, snapshot);
		while (HeapTupleIsValid(tuple = systable_getnext(scan)))
		{
			bool		isnull;
			pg_uuid_t	org;
			DalgoRole	role;
			MemoryContext old;

			(void) heap_getattr(tuple, deleted_att, desc, &isnull);
			if (!isnull)
				continue;
			org = *DatumGetUUIDP(heap_getattr(tuple, org_att, desc, &isnull));
			role = role_from_oid(DatumGetObjectId(heap_getattr(tuple, role_att, desc, &isnull)));
			if (role == DALGO_ROLE_NONE ||
				!organization_is_live(orgs, org_pkey, org_id_att, org_deleted_att, &org, snapshot))
				continue;
			old = MemoryContextSwitchTo(cache_context);
			add_entry(&entries, &n, &cap, &org, role);
			MemoryContextSwitchTo(old);
		}
		systable_endscan(scan);
		table_close(members, AccessShareLock);
	}
	table_close(orgs, AccessShareLock);

	qsort(entries, n, sizeof(MembershipEntry), entry_cmp);

done:
	UnregisterSnapshot(snapshot);
	cache.entries = entries;
	cache.nentries = n;
}

/*
 * Make the cache describe the caller.  Returns false when the caller has
 * no identity (and so no memberships).
 */
static bool
ensure_cache(void)
{
	pg_uuid_t	user;
	bool		has_user;

	if (cache_context == NULL)
		cache_context = AllocSetContextCreate(TopMemoryContext,
											  "dalgo membership cache",
											  ALLOCSET_SMALL_SIZES);

	AcceptInvalidationMessages();
	has_user = dalgo_current_user_id(&user);

	if (cache.valid && cache.has_user == has_user &&
		(!has_user || memcmp(&cache.user, &user, UUID_LEN) == 0))
		return has_user;

	/*
	 * The cache is valid only once a load has completed with no invalidation
	 * arriving meanwhile.  A load that fails (a timeout, a cancel, out of
	 * memory) leaves it invalid, so the next call loads it again; one that
	 * an invalidation overtook is repeated.
	 */
	for (;;)
	{
		uint64		generation;

		cache.valid = false;
		cache.nentries = 0;
		generation = cache.generation;
		resolve_oids();
		if (has_user)
			load_memberships(&user);
		if (cache.generation == generation)
			break;
	}
	cache.has_user = has_user;
	cache.user = user;
	cache.valid = true;

	return has_user;
}

/* The cached role in org, or NONE; ensure_cache() must have run. */
static DalgoRole
cached_role(const pg_uuid_t *org)
{
	MembershipEntry key;
	MembershipEntry *found;

	if (cache.nentries == 0)
		return DALGO_ROLE_NONE;
	key.org = *org;
	found = bsearch(&key, cache.entries, cache.nentries, sizeof(MembershipEntry), entry_cmp);
	/* accounts: an API key caps the role (one organization, at most the key's role) */
	return found ? Min(found->role, dalgo_api_key_cap(org)) : DALGO_ROLE_NONE;
}

/* The caller's role in org, or NONE. */
static DalgoRole
role_in(const pg_uuid_t *org)
{
	return ensure_cache() ? cached_role(org) : DALGO_ROLE_NONE;
}

/* Rank of a member_role argument; the cache must be resolved first. */
static DalgoRole
role_argument(Datum d)
{
	DalgoRole	role = role_from_oid(DatumGetObjectId(d));

	if (role == DALGO_ROLE_NONE)
		elog(ERROR, "unexpected dalgo.member_role value %u", DatumGetObjectId(d));
	return role;
}

/* SQL: dalgo.is_org_member(org uuid, min_role member_role default 'viewer'). */
Datum
dalgo_is_org_member(PG_FUNCTION_ARGS)
{
	DalgoRole	min_role;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_BOOL(false);
	if (!ensure_cache())
		PG_RETURN_BOOL(false);
	min_role = role_argument(PG_GETARG_DATUM(1));
	PG_RETURN_BOOL(cached_role(PG_GETARG_UUID_P(0)) >= min_role);
}

/* SQL: dalgo.is_org_admin(org uuid): admin or owner. */
Datum
dalgo_is_org_admin(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(role_in(PG_GETARG_UUID_P(0)) >= DALGO_ROLE_ADMIN);
}

/* SQL: dalgo.org_role(org uuid): the caller's role, or NULL. */
Datum
dalgo_org_role(PG_FUNCTION_ARGS)
{
	DalgoRole	role;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	role = role_in(PG_GETARG_UUID_P(0));
	if (role == DALGO_ROLE_NONE)
		PG_RETURN_NULL();
	PG_RETURN_OID(cache.role_oids[role - 1]);
}

/* SQL: dalgo.current_org_ids(min_role default 'viewer'): uuid[] of the caller's organizations. */
Datum
dalgo_current_org_ids(PG_FUNCTION_ARGS)
{
	DalgoRole	min_role;
	Datum	   *elems;
	int			n = 0;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	if (ensure_cache())
	{
		min_role = role_argument(PG_GETARG_DATUM(0));
		elems = palloc(sizeof(Datum) * Max(cache.nentries, 1));
		for (int i = 0; i < cache.nentries; i++)
			if (Min(cache.entries[i].role, dalgo_api_key_cap(&cache.entries[i].org)) >= min_role)
				elems[n++] = UUIDPGetDatum(&cache.entries[i].org);
	}
	else
		elems = palloc(sizeof(Datum));
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
}

/*
 * Trigger: after a statement (or, where only row triggers fire, a row)
 * changes membership data, invalidate the caches.  A logical-replication
 * apply worker fires row triggers only, so on a subscriber the row form
 * does the work; repeated invalidations of one relation within a command
 * are merged by PostgreSQL.
 */
Datum
dalgo_membership_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("invalidate_membership_caches() must be fired AFTER ... FOR EACH STATEMENT or ROW")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}

/* Register the relcache callback that keeps the cache honest. */
void
dalgo_membership_init(void)
{
	CacheRegisterRelcacheCallback(membership_relcache_callback, (Datum) 0);
}

/*
 * May the caller act in org with at least min_role?  With an identity, its
 * role decides; without one, only a login that is a superuser or a member
 * of dalgo_service (service work) may.  SQL: dalgo.caller_may().
 */
bool
dalgo_caller_may(const pg_uuid_t *org, DalgoRole min_role)
{
	Oid			service;

	if (ensure_cache())
		return cached_role(org) >= min_role;
	if (superuser_arg(GetSessionUserId()))
		return true;
	service = get_role_oid("dalgo_service", true);
	return OidIsValid(service) && has_privs_of_role(GetSessionUserId(), service);
}

/* SQL: dalgo.caller_may(org uuid, min_role member_role). */
Datum
dalgo_caller_may_sql(PG_FUNCTION_ARGS)
{
	DalgoRole	min_role;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_BOOL(false);
	(void) ensure_cache();
	min_role = role_argument(PG_GETARG_DATUM(1));
	PG_RETURN_BOOL(dalgo_caller_may(PG_GETARG_UUID_P(0), min_role));
}

/*
 * SQL: dalgo.live_owner_count(organization_id uuid, except_membership uuid):
 * the live owner memberships of active, live users in the organization,
 * leaving out the membership except_membership, counted under a snapshot
 * taken now rather than the transaction's.  guard_membership calls it once
 * it holds the organization row's lock: every concurrent owner removal
 * takes that lock too, so whatever committed before the lock was granted
 * is counted, under any isolation level.  A REPEATABLE READ or
 * SERIALIZABLE transaction's own snapshot may predate such a removal.
 */
Datum
dalgo_live_owner_count(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *org;
	pg_uuid_t  *except = NULL;
	Oid			members_relid;
	Relation	members;
	TupleDesc	desc;
	AttrNumber	org_att,
				id_att,
				user_att,
				role_att,
				deleted_att;
	Oid			owner_oid;
	Snapshot	snapshot;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	int32		count = 0;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	org = PG_GETARG_UUID_P(0);
	if (!PG_ARGISNULL(1))
		except = PG_GETARG_UUID_P(1);

	resolve_oids();
	owner_oid = cache.role_oids[DALGO_ROLE_OWNER - 1];
	members_relid = cache.members_relid;
	org_att = dalgo_attnum(members_relid, "organization_id");
	id_att = dalgo_attnum(members_relid, "id");
	user_att = dalgo_attnum(members_relid, "user_id");
	role_att = dalgo_attnum(members_relid, "role");
	deleted_att = dalgo_attnum(members_relid, "deleted_at");

	/* This command's own earlier changes (other rows of the statement) count too. */
	CommandCounterIncrement();
	snapshot = dalgo_latest_snapshot();
	members = table_open(members_relid, AccessShareLock);
	desc = RelationGetDescr(members);
	scan = dalgo_begin_uuid_scan(members,
								 dalgo_relation_oid("organization_members_organization_id_idx"),
								 org_att, org, &key, snapshot);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		d;

		CHECK_FOR_INTERRUPTS();
		(void) heap_getattr(tuple, deleted_att, desc, &isnull);
		if (!isnull)
			continue;
		d = heap_getattr(tuple, role_att, desc, &isnull);
		if (isnull || DatumGetObjectId(d) != owner_oid)
			continue;
		d = heap_getattr(tuple, id_att, desc, &isnull);
		if (except != NULL && memcmp(DatumGetUUIDP(d), except, UUID_LEN) == 0)
			continue;
		d = heap_getattr(tuple, user_att, desc, &isnull);
		if (dalgo_user_is_active(DatumGetUUIDP(d), NULL, snapshot))
			count++;
	}
	systable_endscan(scan);
	table_close(members, AccessShareLock);
	UnregisterSnapshot(snapshot);
	PG_RETURN_INT32(count);
}

/*
 * SQL: dalgo.shares_organization(user_id uuid): user_id has a live
 * membership in an organization where the caller is at least a viewer.
 * The subquery-free form of users' user_select policy on a Citus cluster.
 */
Datum
dalgo_shares_organization(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *user = PG_GETARG_UUID_P(0);
	Relation	members;
	TupleDesc	desc;
	AttrNumber	user_att,
				org_att,
				deleted_att;
	Snapshot	snapshot;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		shares = false;

	if (!ensure_cache() || cache.nentries == 0)
		PG_RETURN_BOOL(false);
	user_att = dalgo_attnum(cache.members_relid, "user_id");
	org_att = dalgo_attnum(cache.members_relid, "organization_id");
	deleted_att = dalgo_attnum(cache.members_relid, "deleted_at");
	snapshot = dalgo_latest_snapshot();
	members = table_open(cache.members_relid, AccessShareLock);
	desc = RelationGetDescr(members);
	scan = dalgo_begin_uuid_scan(members,
								 dalgo_relation_oid("organization_members_user_id_idx"),
								 user_att, user, &key, snapshot);
	while (!shares && HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		org;

		(void) heap_getattr(tuple, deleted_att, desc, &isnull);
		if (!isnull)
			continue;
		org = heap_getattr(tuple, org_att, desc, &isnull);
		shares = !isnull && cached_role(DatumGetUUIDP(org)) >= DALGO_ROLE_VIEWER;
	}
	systable_endscan(scan);
	table_close(members, AccessShareLock);
	UnregisterSnapshot(snapshot);
	PG_RETURN_BOOL(shares);
}
