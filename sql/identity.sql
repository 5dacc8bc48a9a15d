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
	'The caller''s user id: from dalgo.authenticate(), else the dalgo.user_id setting, else request.jwt.claims->>''sub'' when dalgo.trust_jwt_claims is on; NULL when there is none or it is malformed';

CREATE FUNCTION dalgo.authenticate(token text, session boolean DEFAULT false) RETURNS uuid
	AS 'MODULE_PATHNAME', 'dalgo_authenticate'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo.authenticate(text, boolean) IS
	'Verify an HS256 JWT signed with dalgo.jwt_secret (exp required, nbf honoured, sub = an active user) and make its subject the caller''s identity for this transaction, or the session if session is true; any failure raises 28000 "authentication failed"';

CREATE FUNCTION dalgo.sign_out() RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_sign_out'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo.sign_out() IS 'Forget any identity set by dalgo.authenticate() (DISCARD ALL and RESET ALL do the same)';

-- ---------------------------------------------------------------------------
-- Membership
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.is_org_member(org uuid, min_role dalgo.member_role DEFAULT 'viewer') RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_is_org_member'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.is_org_member(uuid, dalgo.member_role) IS
	'True if the caller holds at least min_role in the organization (live membership, live organization, active live user; superadmins are owners everywhere); false for NULL arguments';

CREATE FUNCTION dalgo.is_org_admin(org uuid) RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_is_org_admin'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.is_org_admin(uuid) IS 'True if the caller is an admin or owner of the organization';

CREATE FUNCTION dalgo.org_role(org uuid) RETURNS dalgo.member_role
	AS 'MODULE_PATHNAME', 'dalgo_org_role'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.org_role(uuid) IS 'The caller''s role in the organization, or NULL when not a member';

CREATE FUNCTION dalgo.current_org_ids(min_role dalgo.member_role DEFAULT 'viewer') RETURNS uuid[]
	AS 'MODULE_PATHNAME', 'dalgo_current_org_ids'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.current_org_ids(dalgo.member_role) IS
	'Ids of the organizations where the caller holds at least min_role; the index-friendly form for policies: organization_id = ANY ((SELECT dalgo.current_org_ids())::uuid[])';

CREATE FUNCTION dalgo.membership_changed() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_membership_changed'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo.membership_changed() IS
	'AFTER statement trigger on users, organizations and organization_members: invalidates every backend''s membership cache (this transaction''s next statement, other sessions at commit)';

-- On users and organizations only the columns membership depends on count:
-- a sign-in, a password change or a renamed organization flushes no cache.
CREATE TRIGGER membership_changed AFTER INSERT OR DELETE OR TRUNCATE ON dalgo.users
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo.membership_changed();
CREATE TRIGGER membership_changed_update AFTER UPDATE OF id, is_active, deleted_at, is_superadmin ON dalgo.users
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo.membership_changed();
CREATE TRIGGER membership_changed AFTER INSERT OR DELETE OR TRUNCATE ON dalgo.organizations
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo.membership_changed();
CREATE TRIGGER membership_changed_update AFTER UPDATE OF id, deleted_at ON dalgo.organizations
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo.membership_changed();
CREATE TRIGGER membership_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dalgo.organization_members
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo.membership_changed();
COMMENT ON TRIGGER membership_changed ON dalgo.users IS 'Invalidates membership caches';
COMMENT ON TRIGGER membership_changed ON dalgo.organizations IS 'Invalidates membership caches';
COMMENT ON TRIGGER membership_changed ON dalgo.organization_members IS 'Invalidates membership caches';
COMMENT ON TRIGGER membership_changed_update ON dalgo.users IS 'Invalidates membership caches when is_active, deleted_at or is_superadmin (or id) is written';
COMMENT ON TRIGGER membership_changed_update ON dalgo.organizations IS 'Invalidates membership caches when deleted_at (or id) is written';

-- ---------------------------------------------------------------------------
-- Role protection
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.guard_membership() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	org uuid;
	my_role dalgo.member_role;
	was_owner boolean := false;
	stays_owner boolean := false;
BEGIN
	IF TG_OP = 'DELETE' THEN
		org := OLD.organization_id;
	ELSE
		org := NEW.organization_id;
	END IF;

	IF TG_OP = 'UPDATE' AND (NEW.organization_id <> OLD.organization_id OR NEW.user_id <> OLD.user_id) THEN
		RAISE EXCEPTION 'a membership cannot be moved to another organization or user'
			USING ERRCODE = 'insufficient_privilege', HINT = 'Remove it and add a new membership.';
	END IF;

	-- What the acting user may do (service work without an identity is not limited here).
	IF me IS NOT NULL THEN
		my_role := dalgo.org_role(org);
		-- (The first owner of a new organization, which has no members yet, is allowed.)
		IF TG_OP = 'INSERT' AND NEW.role = 'owner' AND my_role IS DISTINCT FROM 'owner'
		   AND EXISTS (SELECT FROM dalgo.organization_members m
					   WHERE m.organization_id = org AND m.deleted_at IS NULL) THEN
			RAISE EXCEPTION 'only an owner can add an owner'
				USING ERRCODE = 'insufficient_privilege';
		END IF;
		IF TG_OP = 'UPDATE' THEN
			IF OLD.user_id = me AND NEW.role > OLD.role THEN
				RAISE EXCEPTION 'you cannot raise your own role'
					USING ERRCODE = 'insufficient_privilege';
			END IF;
			IF (NEW.role = 'owner' OR OLD.role = 'owner') AND NEW.role <> OLD.role
			   AND my_role IS DISTINCT FROM 'owner' THEN
				RAISE EXCEPTION 'only an owner can grant or revoke the owner role'
					USING ERRCODE = 'insufficient_privilege';
			END IF;
			IF OLD.role = 'owner' AND OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL
			   AND my_role IS DISTINCT FROM 'owner' THEN
				RAISE EXCEPTION 'only an owner can remove an owner'
					USING ERRCODE = 'insufficient_privilege';
			END IF;
		END IF;
		IF TG_OP = 'DELETE' AND OLD.role = 'owner' AND my_role IS DISTINCT FROM 'owner' THEN
			RAISE EXCEPTION 'only an owner can remove an owner'
				USING ERRCODE = 'insufficient_privilege';
		END IF;
	END IF;

	-- An organization never loses its last owner (whoever acts).
	IF TG_OP IN ('UPDATE', 'DELETE') THEN
		was_owner := OLD.role = 'owner' AND OLD.deleted_at IS NULL;
	END IF;
	IF TG_OP = 'UPDATE' THEN
		stays_owner := NEW.role = 'owner' AND NEW.deleted_at IS NULL;
	END IF;
	IF was_owner AND NOT stays_owner THEN
		-- Lock the organization so concurrent owner changes are serialized.
		-- A deleted organization (its members cascading away) has no row left.
		PERFORM FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL FOR UPDATE;
		IF FOUND AND NOT EXISTS (
			SELECT FROM dalgo.organization_members m JOIN dalgo.users u ON u.id = m.user_id
			WHERE m.organization_id = org AND m.role = 'owner' AND m.deleted_at IS NULL
			  AND m.id <> OLD.id AND u.is_active AND u.deleted_at IS NULL) THEN
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
REVOKE ALL ON FUNCTION dalgo.guard_membership() FROM PUBLIC;
COMMENT ON FUNCTION dalgo.guard_membership() IS
	'BEFORE row trigger on organization_members: only owners grant, revoke or remove the owner role, nobody raises their own role, memberships never move, and an organization keeps at least one live owner';
CREATE TRIGGER guard_membership BEFORE INSERT OR UPDATE OR DELETE ON dalgo.organization_members
	FOR EACH ROW EXECUTE FUNCTION dalgo.guard_membership();
COMMENT ON TRIGGER guard_membership ON dalgo.organization_members IS 'Role protection';

CREATE FUNCTION dalgo.guard_organization() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.deleted_at IS DISTINCT FROM OLD.deleted_at AND dalgo.current_user_id() IS NOT NULL
	   AND dalgo.org_role(OLD.id) IS DISTINCT FROM 'owner' THEN
		RAISE EXCEPTION 'only an owner can delete or restore an organization'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION dalgo.guard_organization() FROM PUBLIC;
COMMENT ON FUNCTION dalgo.guard_organization() IS 'BEFORE UPDATE row trigger on organizations: only an owner soft-deletes or restores it';
CREATE TRIGGER guard_organization BEFORE UPDATE ON dalgo.organizations
	FOR EACH ROW EXECUTE FUNCTION dalgo.guard_organization();
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
