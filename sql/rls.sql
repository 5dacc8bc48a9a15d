-- rls.sql: privileges and row-level security on every dalgo table.
--
-- Reads on organization tables use organization_id = ANY ((SELECT
-- dalgo.current_org_ids(...))::uuid[]): the membership list is computed once per
-- statement (an initPlan) and the planner uses the organization_id index.
-- Writes use the same test in USING and WITH CHECK, so no row can be
-- written into, or moved into, an organization where the caller lacks the
-- role.  dalgo_service passes every tenant policy.

-- ---------------------------------------------------------------------------
-- Privileges
-- ---------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA dalgo FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA dalgo, dalgo_internal FROM PUBLIC;

-- End users: tables of their organizations, never secrets, never TRUNCATE.
GRANT SELECT, INSERT, UPDATE, DELETE ON
	dalgo.organization_members, dalgo.sources, dalgo.transformations,
	dalgo.outputs, dalgo.schedules
	TO dalgo_authenticated;
GRANT SELECT, UPDATE, DELETE ON dalgo.organizations TO dalgo_authenticated;
-- What dalgo records about its own work (runs, versions, synced columns,
-- warehouse tables) is written only by dalgo's functions: the workers act on
-- run rows, so a forged one must be impossible.  App roles read these.
GRANT SELECT ON dalgo.source_schemas, dalgo.sync_runs, dalgo.warehouse_tables,
	dalgo.transformation_versions, dalgo.transformation_runs
	TO dalgo_authenticated;
GRANT SELECT ON dalgo.audit_logs TO dalgo_authenticated;
GRANT SELECT (id, email, full_name, is_active, is_superadmin, created_at, updated_at, deleted_at),
	  UPDATE (email, full_name)
	ON dalgo.users TO dalgo_authenticated;
GRANT SELECT (id, email, organization_id, role, expires_at, accepted_at, invited_by_id, created_at, updated_at),
	  INSERT, UPDATE, DELETE
	ON dalgo.invitations TO dalgo_authenticated;
GRANT SELECT (id, organization_id, database_name, is_connected, last_connected_at, config,
			  created_at, updated_at, deleted_at),
	  INSERT, UPDATE, DELETE
	ON dalgo.warehouse_connections TO dalgo_authenticated;

-- Service: everything but TRUNCATE; the audit trail is read-only here too.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA dalgo TO dalgo_service;
REVOKE INSERT, UPDATE, DELETE ON dalgo.audit_logs FROM dalgo_service;
-- Run and version rows: through run_schedule_now, run_due_schedules,
-- claim_sync_run, complete_sync_run and run_transformation only.
REVOKE INSERT, UPDATE, DELETE ON dalgo.sync_runs, dalgo.transformation_runs, dalgo.transformation_versions
	FROM dalgo_service;

GRANT EXECUTE ON FUNCTION
	dalgo.current_user_id(), dalgo.is_org_member(uuid, dalgo.member_role), dalgo.is_org_admin(uuid),
	dalgo.org_role(uuid), dalgo.current_org_ids(dalgo.member_role), dalgo.validate_timezone(text),
	dalgo.authenticate(text, boolean), dalgo.sign_out()
	TO dalgo_authenticated, dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.create_organization(text, text, dalgo.org_type) TO dalgo_authenticated;
GRANT EXECUTE ON FUNCTION dalgo.authenticate(text, boolean), dalgo.sign_out() TO dalgo_anon;

-- ---------------------------------------------------------------------------
-- Row-level security
-- ---------------------------------------------------------------------------

-- Tenant tables: (table, role that reads, role that inserts/updates, role that deletes).
-- NULL means no end user may do it.
DO $$
DECLARE
	t record;
	cond text;
BEGIN
	FOR t IN SELECT * FROM (VALUES
		('sources', 'viewer', 'admin', 'admin'),
		('source_schemas', 'viewer', NULL, NULL),
		('sync_runs', 'viewer', NULL, NULL),
		('warehouse_connections', 'viewer', 'admin', 'admin'),
		('warehouse_tables', 'viewer', NULL, NULL),
		('transformations', 'viewer', 'member', 'member'),
		('transformation_versions', 'viewer', NULL, NULL),
		('transformation_runs', 'viewer', NULL, NULL),
		('outputs', 'viewer', 'member', 'member'),
		('schedules', 'viewer', 'admin', 'admin'),
		('invitations', 'admin', 'admin', 'admin'),
		('audit_logs', 'admin', NULL, NULL)) AS v(tbl, read_role, write_role, delete_role)
	LOOP
		cond := 'organization_id OPERATOR(pg_catalog.=) ANY ((SELECT dalgo.current_org_ids(%L))::uuid[])';
		-- Soft-deleted sources, transformations and outputs drop out of
		-- every read (dalgo.deleted_items lists them for admins).
		IF t.tbl IN ('sources', 'transformations', 'outputs') THEN
			EXECUTE format('CREATE POLICY tenant_select ON dalgo.%I FOR SELECT TO dalgo_authenticated USING (deleted_at IS NULL AND ' || cond || ')',
						   t.tbl, t.read_role);
			EXECUTE format('COMMENT ON POLICY tenant_select ON dalgo.%I IS %L', t.tbl,
						   format('Live (not soft-deleted) rows of organizations where the caller is at least %s', t.read_role));
		ELSE
			EXECUTE format('CREATE POLICY tenant_select ON dalgo.%I FOR SELECT TO dalgo_authenticated USING (' || cond || ')',
						   t.tbl, t.read_role);
			EXECUTE format('COMMENT ON POLICY tenant_select ON dalgo.%I IS %L', t.tbl,
						   format('Rows of organizations where the caller is at least %s', t.read_role));
		END IF;
		IF t.write_role IS NOT NULL THEN
			EXECUTE format('CREATE POLICY tenant_insert ON dalgo.%I FOR INSERT TO dalgo_authenticated WITH CHECK (' || cond || ')',
						   t.tbl, t.write_role);
			EXECUTE format('CREATE POLICY tenant_update ON dalgo.%I FOR UPDATE TO dalgo_authenticated USING (' || cond
						   || ') WITH CHECK (' || cond || ')', t.tbl, t.write_role, t.write_role);
			EXECUTE format('COMMENT ON POLICY tenant_insert ON dalgo.%I IS %L', t.tbl,
						   format('Only %s and above add rows, and only to their organizations', t.write_role));
			EXECUTE format('COMMENT ON POLICY tenant_update ON dalgo.%I IS %L', t.tbl,
						   format('Only %s and above change rows, and cannot move them to another organization', t.write_role));
		END IF;
		IF t.delete_role IS NOT NULL THEN
			EXECUTE format('CREATE POLICY tenant_delete ON dalgo.%I FOR DELETE TO dalgo_authenticated USING (' || cond || ')',
						   t.tbl, t.delete_role);
			EXECUTE format('COMMENT ON POLICY tenant_delete ON dalgo.%I IS %L', t.tbl,
						   format('Only %s and above delete rows', t.delete_role));
		END IF;
	END LOOP;
END
$$;

-- Organizations: members read; admins edit; owners delete (and soft-delete, see guard_organization).
CREATE POLICY org_select ON dalgo.organizations FOR SELECT TO dalgo_authenticated
	USING (id = ANY ((SELECT dalgo.current_org_ids('viewer'))::uuid[]));
CREATE POLICY org_update ON dalgo.organizations FOR UPDATE TO dalgo_authenticated
	USING (id = ANY ((SELECT dalgo.current_org_ids('admin'))::uuid[]))
	WITH CHECK (id = ANY ((SELECT dalgo.current_org_ids('admin'))::uuid[]));
CREATE POLICY org_delete ON dalgo.organizations FOR DELETE TO dalgo_authenticated
	USING (id = ANY ((SELECT dalgo.current_org_ids('owner'))::uuid[]));
COMMENT ON POLICY org_select ON dalgo.organizations IS 'Members see their organizations';
COMMENT ON POLICY org_update ON dalgo.organizations IS 'Admins and owners edit their organizations';
COMMENT ON POLICY org_delete ON dalgo.organizations IS 'Only owners delete an organization';

-- Memberships: members see co-members; admins manage them (owner rules in guard_membership);
-- anyone may leave.
CREATE POLICY member_select ON dalgo.organization_members FOR SELECT TO dalgo_authenticated
	USING (organization_id = ANY ((SELECT dalgo.current_org_ids('viewer'))::uuid[]));
CREATE POLICY member_insert ON dalgo.organization_members FOR INSERT TO dalgo_authenticated
	WITH CHECK (organization_id = ANY ((SELECT dalgo.current_org_ids('admin'))::uuid[]));
CREATE POLICY member_update ON dalgo.organization_members FOR UPDATE TO dalgo_authenticated
	USING (organization_id = ANY ((SELECT dalgo.current_org_ids('admin'))::uuid[]))
	WITH CHECK (organization_id = ANY ((SELECT dalgo.current_org_ids('admin'))::uuid[]));
CREATE POLICY member_delete ON dalgo.organization_members FOR DELETE TO dalgo_authenticated
	USING (organization_id = ANY ((SELECT dalgo.current_org_ids('admin'))::uuid[]) OR user_id = (SELECT dalgo.current_user_id()));
COMMENT ON POLICY member_select ON dalgo.organization_members IS 'Members see the memberships of their organizations';
COMMENT ON POLICY member_insert ON dalgo.organization_members IS 'Admins add members (owners only add owners)';
COMMENT ON POLICY member_update ON dalgo.organization_members IS 'Admins change members (owners only change owners)';
COMMENT ON POLICY member_delete ON dalgo.organization_members IS 'Admins remove members; anyone may leave';

-- Users: your own row, and co-members' (column privileges hide password_hash).
CREATE POLICY user_select ON dalgo.users FOR SELECT TO dalgo_authenticated
	USING (id = (SELECT dalgo.current_user_id())
		   OR EXISTS (SELECT FROM dalgo.organization_members m
					  WHERE m.user_id = users.id AND m.deleted_at IS NULL
						AND m.organization_id = ANY ((SELECT dalgo.current_org_ids('viewer'))::uuid[])));
CREATE POLICY user_update ON dalgo.users FOR UPDATE TO dalgo_authenticated
	USING (id = (SELECT dalgo.current_user_id()))
	WITH CHECK (id = (SELECT dalgo.current_user_id()));
COMMENT ON POLICY user_select ON dalgo.users IS 'Users see themselves and the members of their organizations';
COMMENT ON POLICY user_update ON dalgo.users IS 'Users edit only their own name and email';

-- Service role and RLS on every table.
DO $$
DECLARE
	t text;
BEGIN
	FOR t IN SELECT c.relname FROM pg_catalog.pg_class c
			 WHERE c.relnamespace = 'dalgo'::regnamespace AND c.relkind IN ('r', 'p')
	LOOP
		EXECUTE format('ALTER TABLE dalgo.%I ENABLE ROW LEVEL SECURITY', t);
		EXECUTE format('ALTER TABLE dalgo.%I FORCE ROW LEVEL SECURITY', t);
		EXECUTE format('CREATE POLICY service_all ON dalgo.%I TO dalgo_service USING (true) WITH CHECK (true)', t);
		EXECUTE format('COMMENT ON POLICY service_all ON dalgo.%I IS %L', t,
					   'dalgo_service passes the tenant policies');
	END LOOP;
END
$$;
