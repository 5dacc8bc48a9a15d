-- identity.sql: the roles, the caller's identity (dalgo.current_user_id,
-- dalgo.authenticate) and organization membership (dalgo.is_org_member and
-- friends), with the triggers that keep membership caches current and
-- protect owners.

-- ---------------------------------------------------------------------------
-- Roles (cluster-wide, so created only if missing: a second database's
-- install and a re-install after DROP EXTENSION reuse them)
-- ---------------------------------------------------------------------------

DO $$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['dalgo_authenticated', 'dalgo_anon', 'dalgo_service']
	LOOP
		IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
			EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN NOINHERIT NOBYPASSRLS', r);
		END IF;
	END LOOP;
END
$$;
COMMENT ON ROLE dalgo_authenticated IS 'dalgo: end-user requests; row-level security applies and follows the caller''s organization roles';
COMMENT ON ROLE dalgo_anon IS 'dalgo: unauthenticated requests; no table access, only the public functions (authenticate)';
COMMENT ON ROLE dalgo_service IS 'dalgo: background jobs and administration; passes the tenant policies';

GRANT USAGE ON SCHEMA dalgo TO dalgo_authenticated, dalgo_anon, dalgo_service;

-- ---------------------------------------------------------------------------
-- Identity
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.current_user_id() RETURNS uuid
	AS 'MODULE_PATHNAME', 'dalgo_current_user_id_sql'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.current_user_id() IS
	'The caller''s user id: from dalgo.authenticate(), else the dalgo.user_id setting, else request.jwt.claims->>''sub'' when session_user is listed in dalgo.claims_authenticators; settings count only in the transaction that set them; NULL when there is none or it is malformed';

CREATE FUNCTION dalgo.authenticate(token text, session boolean DEFAULT false) RETURNS uuid
	AS 'MODULE_PATHNAME', 'dalgo_authenticate'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo.authenticate(text, boolean) IS
	'Verify an HS256 JWT signed with dalgo.jwt_secret (exp required, nbf honoured, no crit header, aud and iss checked when dalgo.jwt_audience and dalgo.jwt_issuer are set, sub = an active user) and make its subject the caller''s identity for this transaction; session => true is refused (0A000); any failure raises 28000 "authentication failed"';

CREATE FUNCTION dalgo.sign_out() RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_sign_out'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo.sign_out() IS 'Forget the identity set by dalgo.authenticate() in this transaction (RESET ALL does the same); refused while a data-modifying statement runs';

-- ---------------------------------------------------------------------------
-- Membership
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.is_org_member(organization_id uuid, min_role dalgo.member_role DEFAULT 'viewer') RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_is_org_member'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.is_org_member(uuid, dalgo.member_role) IS
	'True if the caller holds at least min_role in the organization (live membership, live organization, active live user; superadmins are owners everywhere); false for NULL arguments';

CREATE FUNCTION dalgo.is_org_admin(organization_id uuid) RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_is_org_admin'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.is_org_admin(uuid) IS 'True if the caller is an admin or owner of the organization';

CREATE FUNCTION dalgo.org_role(organization_id uuid) RETURNS dalgo.member_role
	AS 'MODULE_PATHNAME', 'dalgo_org_role'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.org_role(uuid) IS 'The caller''s role in the organization, or NULL when not a member';

CREATE FUNCTION dalgo.current_org_ids(min_role dalgo.member_role DEFAULT 'viewer') RETURNS uuid[]
	AS 'MODULE_PATHNAME', 'dalgo_current_org_ids'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.current_org_ids(dalgo.member_role) IS
	'Ids of the organizations where the caller holds at least min_role; the index-friendly form for policies: organization_id = ANY ((SELECT dalgo.current_org_ids())::uuid[])';

CREATE FUNCTION dalgo_internal.invalidate_membership_caches() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_membership_changed'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo_internal.invalidate_membership_caches() IS
	'AFTER statement (and, for logical-replication apply, row) trigger on users, organizations and organization_members: invalidates every backend''s membership cache (this transaction''s next statement, other sessions at commit)';

-- On users and organizations only the columns membership depends on count:
-- a sign-in, a password change or a renamed organization flushes no cache.
CREATE TRIGGER membership_changed AFTER INSERT OR DELETE OR TRUNCATE ON dalgo.users
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.invalidate_membership_caches();
CREATE TRIGGER membership_changed_update AFTER UPDATE OF id, is_active, deleted_at, is_superadmin ON dalgo.users
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.invalidate_membership_caches();
CREATE TRIGGER membership_changed AFTER INSERT OR DELETE OR TRUNCATE ON dalgo.organizations
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.invalidate_membership_caches();
CREATE TRIGGER membership_changed_update AFTER UPDATE OF id, deleted_at ON dalgo.organizations
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.invalidate_membership_caches();
CREATE TRIGGER membership_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dalgo.organization_members
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.invalidate_membership_caches();
COMMENT ON TRIGGER membership_changed ON dalgo.users IS 'Invalidates membership caches';
COMMENT ON TRIGGER membership_changed ON dalgo.organizations IS 'Invalidates membership caches';
COMMENT ON TRIGGER membership_changed ON dalgo.organization_members IS 'Invalidates membership caches';
COMMENT ON TRIGGER membership_changed_update ON dalgo.users IS 'Invalidates membership caches when is_active, deleted_at or is_superadmin (or id) is written';
COMMENT ON TRIGGER membership_changed_update ON dalgo.organizations IS 'Invalidates membership caches when deleted_at (or id) is written';
-- Also on a logical-replication subscriber, whose apply worker runs with
-- session_replication_role = replica: a replicated change must invalidate
-- the subscriber's caches too.
ALTER TABLE dalgo.users ENABLE ALWAYS TRIGGER membership_changed;
ALTER TABLE dalgo.organizations ENABLE ALWAYS TRIGGER membership_changed;
ALTER TABLE dalgo.organization_members ENABLE ALWAYS TRIGGER membership_changed;
ALTER TABLE dalgo.users ENABLE ALWAYS TRIGGER membership_changed_update;
ALTER TABLE dalgo.organizations ENABLE ALWAYS TRIGGER membership_changed_update;
-- The apply worker fires row triggers only (statement triggers fire for the
-- initial table copy and TRUNCATE): a row trigger, enabled only in replica
-- mode, so it costs nothing on the origin.
CREATE TRIGGER membership_replicated AFTER INSERT OR UPDATE OR DELETE ON dalgo.users
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.invalidate_membership_caches();
CREATE TRIGGER membership_replicated AFTER INSERT OR UPDATE OR DELETE ON dalgo.organizations
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.invalidate_membership_caches();
CREATE TRIGGER membership_replicated AFTER INSERT OR UPDATE OR DELETE ON dalgo.organization_members
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.invalidate_membership_caches();
ALTER TABLE dalgo.users ENABLE REPLICA TRIGGER membership_replicated;
ALTER TABLE dalgo.organizations ENABLE REPLICA TRIGGER membership_replicated;
ALTER TABLE dalgo.organization_members ENABLE REPLICA TRIGGER membership_replicated;
COMMENT ON TRIGGER membership_replicated ON dalgo.users IS 'Invalidates membership caches for rows a logical-replication apply worker writes';
COMMENT ON TRIGGER membership_replicated ON dalgo.organizations IS 'Invalidates membership caches for rows a logical-replication apply worker writes';
COMMENT ON TRIGGER membership_replicated ON dalgo.organization_members IS 'Invalidates membership caches for rows a logical-replication apply worker writes';

-- ---------------------------------------------------------------------------
-- Role protection
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo_internal.live_owner_count(organization_id uuid, except_membership uuid) RETURNS integer
	AS 'MODULE_PATHNAME', 'dalgo_live_owner_count'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION dalgo_internal.live_owner_count(uuid, uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.live_owner_count(uuid, uuid) IS
	'Internal (guard_membership): live owner memberships of active, live users in the organization, but except_membership, counted under a fresh snapshot (the latest committed state), whatever the isolation level';

CREATE FUNCTION dalgo_internal.guard_membership() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	org uuid;
	my_role dalgo.member_role;
	old_role dalgo.member_role;
	new_role dalgo.member_role;
	was_live boolean := false;
	is_live boolean := false;
	grants boolean;
	first_owner boolean := false;
BEGIN
	IF TG_OP = 'UPDATE' AND (NEW.organization_id <> OLD.organization_id OR NEW.user_id <> OLD.user_id) THEN
		RAISE EXCEPTION 'a membership cannot be moved to another organization or user'
			USING ERRCODE = 'insufficient_privilege', HINT = 'Remove it and add a new membership.';
	END IF;

	-- The row before and after: a role held while live.
	IF TG_OP = 'DELETE' THEN
		org := OLD.organization_id;
		-- A membership cascading away with its deleted organization: the
		-- organization's deletion was the decision (its owner's, or service work).
		IF NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = org) THEN
			RETURN OLD;
		END IF;
	ELSE
		org := NEW.organization_id;
		new_role := NEW.role;
		is_live := NEW.deleted_at IS NULL;
	END IF;
	IF TG_OP <> 'INSERT' THEN
		old_role := OLD.role;
		was_live := OLD.deleted_at IS NULL;
	END IF;
	-- Does the change hand out a role the row did not give before?  An
	-- insert, a restore (deleted_at back to NULL) and a raise all do.
	grants := is_live AND (NOT was_live OR new_role > old_role);

	-- What the acting user may do (service work without an identity is not limited here).
	IF me IS NOT NULL THEN
		-- In a soft-deleted organization (no members as far as org_role
		-- goes) the membership rows tell: its owners can still leave it.
		my_role := coalesce(dalgo.org_role(org), dalgo_internal.dormant_role(org));
		-- The first owner of a new organization, which has no live members yet.
		IF TG_OP = 'INSERT' AND new_role = 'owner' AND NEW.user_id = me THEN
			first_owner := NOT EXISTS (SELECT FROM dalgo.organization_members m
									   WHERE m.organization_id = org AND m.deleted_at IS NULL);
		END IF;
		IF NOT first_owner THEN
			-- Nobody raises their own role, also not by restoring an old membership.
			IF grants AND NEW.user_id = me AND (my_role IS NULL OR new_role > my_role) THEN
				RAISE EXCEPTION 'you cannot raise your own role'
					USING ERRCODE = 'insufficient_privilege';
			END IF;
			-- Owner rows are an owner's: adding, granting, revoking, restoring, removing.
			IF my_role IS DISTINCT FROM 'owner' THEN
				IF TG_OP = 'INSERT' AND new_role = 'owner' THEN
					RAISE EXCEPTION 'only an owner can add an owner'
						USING ERRCODE = 'insufficient_privilege';
				ELSIF TG_OP = 'UPDATE' AND (new_role = 'owner' OR old_role = 'owner') AND new_role <> old_role THEN
					RAISE EXCEPTION 'only an owner can grant or revoke the owner role'
						USING ERRCODE = 'insufficient_privilege';
				ELSIF TG_OP = 'UPDATE' AND old_role = 'owner' AND was_live AND NOT is_live THEN
					RAISE EXCEPTION 'only an owner can remove an owner'
						USING ERRCODE = 'insufficient_privilege';
				ELSIF TG_OP = 'UPDATE' AND new_role = 'owner' AND is_live AND NOT was_live THEN
					RAISE EXCEPTION 'only an owner can restore an owner''s membership'
						USING ERRCODE = 'insufficient_privilege',
							  HINT = 'Restoring an owner row grants the owner role.';
				ELSIF TG_OP = 'DELETE' AND old_role = 'owner' THEN
					RAISE EXCEPTION 'only an owner can remove an owner'
						USING ERRCODE = 'insufficient_privilege';
				END IF;
			END IF;
			-- Nobody hands out a role above their own.
			IF grants AND (my_role IS NULL OR new_role > my_role) THEN
				RAISE EXCEPTION 'you cannot grant a role above your own'
					USING ERRCODE = 'insufficient_privilege',
						  DETAIL = pg_catalog.format('Your role is %s; the membership would give %s.',
													 coalesce(my_role::text, 'none'), new_role);
			END IF;
		END IF;
	END IF;

	-- An organization never loses its last owner (whoever acts).
	IF was_live AND old_role = 'owner' AND NOT (is_live AND new_role = 'owner') THEN
		-- Every owner removal locks the organization row, so they run one
		-- at a time; the count then reads the latest committed state, not
		-- this transaction's snapshot, so a removal committed while we
		-- waited is seen under REPEATABLE READ and SERIALIZABLE too.
		-- A deleted organization (its members cascading away) has no row left.
		PERFORM FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL FOR NO KEY UPDATE;
		IF FOUND AND dalgo_internal.live_owner_count(org, OLD.id) = 0 THEN
			RAISE EXCEPTION 'cannot remove the last owner of organization %', org
				USING ERRCODE = 'check_violation',
					  HINT = 'Make another member an owner first, or delete the organization.';
		END IF;
	END IF;

	IF TG_OP = 'DELETE' THEN
		RETURN OLD;
	END IF;
	RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.guard_membership() FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.guard_membership() IS
	'BEFORE row trigger on organization_members: only owners add, grant, revoke, restore or remove the owner role, nobody raises their own role or grants one above their own (restoring a membership grants its role), memberships never move, and an organization keeps at least one live owner (checked under the organization''s row lock against the latest committed state)';
CREATE TRIGGER guard_membership BEFORE INSERT OR UPDATE OR DELETE ON dalgo.organization_members
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.guard_membership();
COMMENT ON TRIGGER guard_membership ON dalgo.organization_members IS 'Role protection';

-- The superadmin flag makes a user an owner of every organization: with an
-- identity in force (an app request, dalgo_service acting for a user) only
-- a superadmin grants or revokes it.  Without one (operator or service work,
-- a restore) it is not limited here; end users cannot write the column.
CREATE FUNCTION dalgo_internal.guard_superadmin() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
BEGIN
	IF me IS NOT NULL
	   AND ((TG_OP = 'INSERT' AND NEW.is_superadmin)
			OR (TG_OP = 'UPDATE' AND NEW.is_superadmin IS DISTINCT FROM OLD.is_superadmin))
	   AND NOT coalesce((SELECT u.is_superadmin AND u.is_active AND u.deleted_at IS NULL
						 FROM dalgo.users u WHERE u.id = me), false) THEN
		RAISE EXCEPTION 'only a superadmin can grant or revoke the superadmin flag'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'A superadmin counts as an owner of every organization.';
	END IF;
	RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.guard_superadmin() FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.guard_superadmin() IS
	'BEFORE INSERT OR UPDATE row trigger on users: with an identity in force, only a superadmin grants or revokes is_superadmin (it makes a user owner of every organization)';
CREATE TRIGGER guard_superadmin BEFORE INSERT OR UPDATE OF is_superadmin ON dalgo.users
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.guard_superadmin();
COMMENT ON TRIGGER guard_superadmin ON dalgo.users IS 'Only a superadmin grants or revokes the superadmin flag';

-- An account that stops being active and live takes its memberships with
-- it.  With an identity in force (dalgo_service acting for a user) only the
-- user themselves deactivates or deletes their account and only a superadmin
-- does it to another's or brings one back; and, whoever acts, no
-- organization loses its last live owner this way (the rule guard_membership
-- keeps for membership rows, under the same organization lock and
-- fresh-snapshot count).
CREATE FUNCTION dalgo_internal.guard_user_liveness() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	was_live boolean := OLD.is_active AND OLD.deleted_at IS NULL;
	is_live boolean := NEW.is_active AND NEW.deleted_at IS NULL;
	m record;
BEGIN
	IF was_live = is_live THEN
		RETURN NEW;
	END IF;
	IF me IS NOT NULL AND NOT coalesce((SELECT u.is_superadmin AND u.is_active AND u.deleted_at IS NULL
										 FROM dalgo.users u WHERE u.id = me), false)
	   AND (is_live OR me <> NEW.id) THEN
		RAISE EXCEPTION 'only the user or a superadmin deactivates or deletes an account, and only a superadmin restores one'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF was_live THEN
		FOR m IN SELECT x.id, x.organization_id FROM dalgo.organization_members x
				 WHERE x.user_id = NEW.id AND x.role = 'owner' AND x.deleted_at IS NULL
				 ORDER BY x.organization_id
		LOOP
			-- A personal organization belongs to its one user: it goes with them.
			PERFORM FROM dalgo.organizations o WHERE o.id = m.organization_id AND o.deleted_at IS NULL
				AND o.org_type <> 'personal' FOR NO KEY UPDATE;
			IF FOUND AND dalgo_internal.live_owner_count(m.organization_id, m.id) = 0 THEN
				RAISE EXCEPTION 'cannot deactivate or delete the last owner of organization %', m.organization_id
					USING ERRCODE = 'check_violation',
						  HINT = 'Make another member an owner first, or delete the organization.';
			END IF;
		END LOOP;
	END IF;
	RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.guard_user_liveness() FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.guard_user_liveness() IS
	'BEFORE UPDATE row trigger on users: with an identity in force only the user deactivates or deletes their own account (a superadmin anyone''s) and only a superadmin restores one; whoever acts, no organization loses its last live owner';
CREATE TRIGGER guard_user_liveness BEFORE UPDATE OF is_active, deleted_at ON dalgo.users
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.guard_user_liveness();
COMMENT ON TRIGGER guard_user_liveness ON dalgo.users IS 'Accounts: who deactivates them, and never the last owner';

CREATE FUNCTION dalgo_internal.guard_organization() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	my_role dalgo.member_role;
BEGIN
	IF NEW.deleted_at IS NOT DISTINCT FROM OLD.deleted_at OR dalgo.current_user_id() IS NULL THEN
		RETURN NEW;
	END IF;
	-- A deleted organization has no members as far as the membership
	-- functions go: its owners are found by their membership rows.
	IF OLD.deleted_at IS NULL THEN
		my_role := dalgo.org_role(OLD.id);
	ELSE
		my_role := dalgo_internal.dormant_role(OLD.id);
	END IF;
	IF my_role IS DISTINCT FROM 'owner' THEN
		RAISE EXCEPTION 'only an owner can delete or restore an organization'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.guard_organization() FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.guard_organization() IS 'BEFORE UPDATE row trigger on organizations: only an owner soft-deletes or restores it (the owner of a deleted organization by their live membership row)';
CREATE TRIGGER guard_organization BEFORE UPDATE ON dalgo.organizations
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.guard_organization();
COMMENT ON TRIGGER guard_organization ON dalgo.organizations IS 'Only owners soft-delete an organization';

CREATE FUNCTION dalgo.create_organization(name text, slug text, org_type dalgo.org_type DEFAULT 'team')
	RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	org uuid;
BEGIN
	IF me IS NULL OR NOT EXISTS (SELECT FROM dalgo.users u WHERE u.id = me AND u.is_active AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'creating an organization needs a signed-in, active user'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	INSERT INTO dalgo.organizations (name, slug, org_type)
		VALUES (create_organization.name, create_organization.slug, create_organization.org_type)
		RETURNING id INTO org;
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES (org, me, 'owner');
	RETURN org;
END
$$;
REVOKE ALL ON FUNCTION dalgo.create_organization(text, text, dalgo.org_type) FROM PUBLIC;
COMMENT ON FUNCTION dalgo.create_organization(text, text, dalgo.org_type) IS
	'Create an organization with the calling user as its owner; returns its id';
