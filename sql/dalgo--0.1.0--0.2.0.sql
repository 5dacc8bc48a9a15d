-- dalgo 0.1.0 -> 0.2.0
--
-- Every change to an installed object made while 0.2.0 is under work goes
-- both into its sql/ fragment (which builds the fresh install script) and
-- here, in the same commit.  test/t/upgrade_equals_fresh.pl checks that a
-- 0.1.0 database updated with this script equals a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION dalgo UPDATE TO '0.2.0'" to load this file. \quit

-- member: EXECUTE grants follow the documented API: check_recipe_sql is
-- internal (its trigger caller runs as definer), is_connector_source is not
-- PUBLIC's
ALTER FUNCTION dalgo.transformation_before_save() SECURITY DEFINER;
REVOKE EXECUTE ON FUNCTION dalgo.check_recipe_sql(uuid, text) FROM dalgo_authenticated, dalgo_service;
REVOKE ALL ON FUNCTION dalgo.is_connector_source(dalgo.source_type) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.is_connector_source(dalgo.source_type) TO dalgo_authenticated, dalgo_service;

-- member: a row never moves to another organization
CREATE FUNCTION dalgo.refuse_tenant_move() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_refuse_tenant_move'
	LANGUAGE C;
REVOKE ALL ON FUNCTION dalgo.refuse_tenant_move() FROM PUBLIC;
COMMENT ON FUNCTION dalgo.refuse_tenant_move() IS
	'BEFORE UPDATE row trigger for tenant tables: a row''s organization (the column named by the trigger argument, default organization_id) is fixed when it is created; changing it is refused (42501), whoever runs the update';

-- A row never moves to another organization: every table with a tenant
-- column refuses a change of organization_id (audit_logs is append-only
-- already).
DO $$
DECLARE
	t text;
BEGIN
	FOR t IN SELECT c.relname FROM pg_catalog.pg_class c
			 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'organization_id' AND NOT a.attisdropped
			 WHERE c.relnamespace = 'dalgo'::regnamespace AND c.relkind = 'r' AND c.relname <> 'audit_logs'
			 ORDER BY c.relname
	LOOP
		EXECUTE format('CREATE TRIGGER tenant_fixed BEFORE UPDATE ON dalgo.%I '
					   'FOR EACH ROW EXECUTE FUNCTION dalgo.refuse_tenant_move()', t);
		EXECUTE format('COMMENT ON TRIGGER tenant_fixed ON dalgo.%I IS %L',
					   t, 'A row never moves to another organization');
	END LOOP;
END
$$;

-- member: a removed owner's membership is restored only by an owner; nobody
-- grants a role above their own; the last-owner check counts owners under a
-- fresh snapshot after the organization's lock (REPEATABLE READ races)
CREATE FUNCTION dalgo.live_owner_count(organization_id uuid, except_membership uuid) RETURNS integer
	AS 'MODULE_PATHNAME', 'dalgo_live_owner_count'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION dalgo.live_owner_count(uuid, uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo.live_owner_count(uuid, uuid) IS
	'Internal (guard_membership): live owner memberships of active, live users in the organization, but except_membership, counted under a fresh snapshot (the latest committed state), whatever the isolation level';

CREATE OR REPLACE FUNCTION dalgo.guard_membership() RETURNS trigger
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
		my_role := dalgo.org_role(org);
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
		IF FOUND AND dalgo.live_owner_count(org, OLD.id) = 0 THEN
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
COMMENT ON FUNCTION dalgo.guard_membership() IS
	'BEFORE row trigger on organization_members: only owners add, grant, revoke, restore or remove the owner role, nobody raises their own role or grants one above their own (restoring a membership grants its role), memberships never move, and an organization keeps at least one live owner (checked under the organization''s row lock against the latest committed state)';

-- member: the membership cache invalidation fires on logical-replication
-- subscribers too
ALTER TABLE dalgo.users ENABLE ALWAYS TRIGGER membership_changed;
ALTER TABLE dalgo.organizations ENABLE ALWAYS TRIGGER membership_changed;
ALTER TABLE dalgo.organization_members ENABLE ALWAYS TRIGGER membership_changed;

-- member: row triggers invalidate the membership cache on a logical-replication
-- subscriber (its apply worker fires row triggers only)
CREATE TRIGGER membership_replicated AFTER INSERT OR UPDATE OR DELETE ON dalgo.users
	FOR EACH ROW EXECUTE FUNCTION dalgo.membership_changed();
CREATE TRIGGER membership_replicated AFTER INSERT OR UPDATE OR DELETE ON dalgo.organizations
	FOR EACH ROW EXECUTE FUNCTION dalgo.membership_changed();
CREATE TRIGGER membership_replicated AFTER INSERT OR UPDATE OR DELETE ON dalgo.organization_members
	FOR EACH ROW EXECUTE FUNCTION dalgo.membership_changed();
ALTER TABLE dalgo.users ENABLE REPLICA TRIGGER membership_replicated;
ALTER TABLE dalgo.organizations ENABLE REPLICA TRIGGER membership_replicated;
ALTER TABLE dalgo.organization_members ENABLE REPLICA TRIGGER membership_replicated;
COMMENT ON TRIGGER membership_replicated ON dalgo.users IS 'Invalidates membership caches for rows a logical-replication apply worker writes';
COMMENT ON TRIGGER membership_replicated ON dalgo.organizations IS 'Invalidates membership caches for rows a logical-replication apply worker writes';
COMMENT ON TRIGGER membership_replicated ON dalgo.organization_members IS 'Invalidates membership caches for rows a logical-replication apply worker writes';
COMMENT ON FUNCTION dalgo.membership_changed() IS
	'AFTER statement (and, for logical-replication apply, row) trigger on users, organizations and organization_members: invalidates every backend''s membership cache (this transaction''s next statement, other sessions at commit)';
