-- citus.sql: dalgo.distribute(), dalgo's tables sharded across a Citus
-- cluster (docs/scaling.md).  Without Citus nothing here runs: the policies
-- of rls.sql stay in their single-node form.

-- Policy expressions with the membership test as a plain function call.
-- Citus refuses subqueries in the policies of its tables, and dalgo's
-- single-node form wraps dalgo.current_org_ids() and
-- dalgo.current_user_id() in a scalar subquery (an initPlan, computed once
-- per statement).  Unwrapped, the call is STABLE: as an index condition it
-- is still computed once per scan.
CREATE FUNCTION dalgo_internal.citus_policy_expr(expr text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pg_catalog.regexp_replace(pg_catalog.regexp_replace(expr,
		'\(\s*SELECT (dalgo\.current_org_ids\([^()]*\)) AS current_org_ids\)', '\1', 'g'),
		'\(\s*SELECT dalgo\.current_user_id\(\) AS current_user_id\)', 'dalgo.current_user_id()', 'g')
$$;
REVOKE ALL ON FUNCTION dalgo_internal.citus_policy_expr(text) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.citus_policy_expr(text) IS
	'Internal: a policy expression with its scalar subqueries over current_org_ids()/current_user_id() unwrapped, the form Citus accepts';

-- The coordinator's local copy of a table's rows, once Citus copied them
-- into the shards.  The rows moved, nothing was deleted: no trigger fires
-- (no TRUNCATE in the audit trail, no refusal by audit_logs' guard).
CREATE FUNCTION dalgo_internal.citus_drop_local_copy(rel regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET session_replication_role = replica
AS $$
BEGIN
	PERFORM truncate_local_data_after_distributing_table(rel);
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.citus_drop_local_copy(regclass) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.citus_drop_local_copy(regclass) IS
	'Internal: empty the coordinator''s local copy of a distributed table''s rows, without firing triggers';

-- dalgo.shares_organization(user_id): the caller and user_id are members
-- of a common organization; the subquery-free test of users' user_select
-- policy on a cluster.
CREATE FUNCTION dalgo.shares_organization(user_id uuid) RETURNS boolean
LANGUAGE c STABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'dalgo_shares_organization';
COMMENT ON FUNCTION dalgo.shares_organization(uuid) IS
	'True when the caller and user_id are live members of a common organization (the cluster form of the users policy)';
REVOKE ALL ON FUNCTION dalgo.shares_organization(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.shares_organization(uuid) TO dalgo_authenticated, dalgo_service;

-- dalgo.distribute(): distribute dalgo's tables, and the tables secured with
-- the toolkit, over the Citus cluster this database is the coordinator of.
CREATE FUNCTION dalgo.distribute()
RETURNS TABLE (table_name regclass, distribution text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	-- Shared tables, every node holds all rows: membership is checked on
	-- every node for every statement, so organization_members is one of them.
	reference_tables text[] := ARRAY['users', 'organizations', 'organization_members', 'api_keys',
									 'retention_policies',
	-- Accounts: per user, not per organization.  Citus local tables (kept on
	-- the coordinator) would fit better, but Citus cannot add a table that
	-- an extension owns to its metadata that way.
									 'refresh_tokens', 'password_reset_tokens', 'sign_in_attempts',
									 'mail_messages'];
	-- Tenant tables, by organization_id, co-located with sources; parents first.
	tenant_tables text[] := ARRAY['sources', 'transformations', 'warehouse_connections', 'outputs',
								  'schedules', 'source_schemas', 'sync_runs', 'warehouse_tables',
								  'transformation_versions', 'transformation_runs', 'invitations',
								  'audit_logs',
	-- Failure alerts that the shards of the run tables write (journeys.sql).
								  'dalgo_internal.alert_outbox'];
	t text;
	r record;
	p record;
	rel regclass;
	expr text;
	check_expr text;
	distributed regclass[] := '{}';
	fkeys text[] := '{}';
BEGIN
	IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
		RAISE EXCEPTION 'dalgo.distribute() needs the citus extension'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'The citus extension is not installed in this database.',
				  HINT = 'Preload citus before dalgo (shared_preload_libraries = ''citus,dalgo''), run CREATE EXTENSION citus on every node and add the workers; see docs/scaling.md.';
	END IF;
	IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
		RAISE EXCEPTION 'only a superuser may distribute dalgo''s tables' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF NOT EXISTS (SELECT FROM pg_dist_node WHERE groupid = 0) THEN
		RAISE EXCEPTION 'the coordinator is not in the cluster''s metadata'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'dalgo reads its shared tables locally, so every node, the coordinator included, holds a copy.',
				  HINT = 'Run SELECT citus_set_coordinator_host(''<host>'', <port>) on the coordinator first.';
	END IF;
	IF (SELECT groupid FROM pg_dist_local_group) <> 0 THEN
		RAISE EXCEPTION 'dalgo.distribute() runs on the coordinator' USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	IF NOT EXISTS (SELECT FROM pg_dist_node WHERE groupid <> 0 AND isactive) THEN
		RAISE EXCEPTION 'the cluster has no worker'
			USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Add workers with citus_add_node() first.';
	END IF;
	-- dalgo's triggers are written to be correct on shards (docs/scaling.md).
	PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
	-- Foreign keys to reference tables need one connection per node.
	PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);

	-- A dalgo table this list does not know yet (a later release's): by
	-- organization_id when it has the column, else a reference table.
	FOR r IN
		SELECT c.relname::text AS t,
			   EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'organization_id'
					   AND NOT a.attisdropped) AS tenant
		FROM pg_class c
		WHERE c.relnamespace = 'dalgo'::regnamespace AND c.relkind = 'r'
		  AND c.relname <> ALL (reference_tables || tenant_tables)
		  AND NOT EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = c.oid)
		ORDER BY 1
	LOOP
		IF r.tenant THEN
			tenant_tables := tenant_tables || r.t;
		ELSE
			reference_tables := reference_tables || r.t;
		END IF;
	END LOOP;

	-- Toolkit-secured tables with an organization_id column join the tenant tables.
	FOR r IN
		SELECT DISTINCT c.oid::regclass AS rel
		FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'organization_id' AND NOT a.attisdropped
		WHERE pol.polname LIKE 'dalgo\_%' AND c.relnamespace <> 'dalgo'::regnamespace AND c.relkind = 'r'
		ORDER BY 1
	LOOP
		tenant_tables := tenant_tables || r.rel::text;
	END LOOP;

	-- 1. Policies: the form without subqueries (generated here, so rls.sql
	-- keeps the single-node form).  users' policy reads organization_members.
	FOR r IN
		SELECT c.oid::regclass AS rel FROM pg_class c
		WHERE c.relkind = 'r' AND (c.relnamespace = 'dalgo'::regnamespace
			OR c.oid::regclass::text = ANY (tenant_tables))
	LOOP
		FOR p IN SELECT pol.polname, pg_get_expr(pol.polqual, pol.polrelid) AS qual,
						pg_get_expr(pol.polwithcheck, pol.polrelid) AS wcheck
				 FROM pg_policy pol WHERE pol.polrelid = r.rel
		LOOP
			expr := dalgo_internal.citus_policy_expr(p.qual);
			check_expr := dalgo_internal.citus_policy_expr(p.wcheck);
			IF r.rel = 'dalgo.users'::regclass AND p.polname = 'user_select' THEN
				expr := 'id = dalgo.current_user_id() OR dalgo.shares_organization(id)';
			END IF;
			IF expr ~* '\mSELECT\M' OR check_expr ~* '\mSELECT\M' THEN
				RAISE EXCEPTION 'policy % on % has a subquery that Citus refuses', p.polname, r.rel
					USING ERRCODE = 'feature_not_supported',
						  DETAIL = format('USING (%s) WITH CHECK (%s)', expr, check_expr),
						  HINT = 'Rewrite it with functions instead of subqueries (docs/scaling.md).';
			END IF;
			IF expr IS DISTINCT FROM p.qual THEN
				EXECUTE format('ALTER POLICY %I ON %s USING (%s)', p.polname, r.rel, expr);
			END IF;
			IF check_expr IS DISTINCT FROM p.wcheck THEN
				EXECUTE format('ALTER POLICY %I ON %s WITH CHECK (%s)', p.polname, r.rel, check_expr);
			END IF;
		END LOOP;
	END LOOP;

	-- 2. Foreign keys are dropped and put back once every table is in
	-- place: Citus would otherwise convert the tables that reference a new
	-- reference table on its own, in an order of its choosing.
	FOR p IN
		SELECT con.conrelid::regclass AS rel, con.conname, pg_get_constraintdef(con.oid) AS def
		FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
		WHERE con.contype = 'f' AND NOT EXISTS (SELECT FROM pg_dist_partition d WHERE d.logicalrelid = con.conrelid)
		  AND (c.relnamespace = 'dalgo'::regnamespace OR con.confrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'dalgo'::regnamespace)
			   OR con.conrelid::regclass::text = ANY (tenant_tables))
		ORDER BY 1, 2
	LOOP
		fkeys := fkeys || format('ALTER TABLE %s ADD CONSTRAINT %I %s', p.rel, p.conname, p.def);
		EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', p.rel, p.conname);
		-- The workers' copies of dalgo's tables (from their CREATE EXTENSION)
		-- too: putting the key back reaches every node.
		PERFORM run_command_on_workers(format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', p.rel, p.conname));
	END LOOP;

	-- 3. Shared tables first: foreign keys point at them.
	FOREACH t IN ARRAY reference_tables LOOP
		rel := ('dalgo.' || quote_ident(t))::regclass;
		IF NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = rel) THEN
			PERFORM create_reference_table(rel);
			PERFORM dalgo_internal.citus_drop_local_copy(rel);
		END IF;
		table_name := rel; distribution := 'reference'; RETURN NEXT;
	END LOOP;

	-- 4. Tenant tables by organization_id.  Citus wants the distribution
	-- column in every primary key and unique constraint: (id) becomes
	-- (organization_id, id).
	FOREACH t IN ARRAY tenant_tables LOOP
		rel := CASE WHEN t LIKE '%.%' THEN t::regclass ELSE ('dalgo.' || quote_ident(t))::regclass END;
		IF NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = rel) THEN
			-- audit_logs: Citus refuses NULL in a distribution column, so changes
			-- outside any organization are recorded under the nil uuid (the
			-- audit writer does the same on a cluster).
			IF rel = 'dalgo.audit_logs'::regclass THEN
				ALTER TABLE dalgo.audit_logs DISABLE TRIGGER append_only;
				UPDATE dalgo.audit_logs SET organization_id = '00000000-0000-0000-0000-000000000000'
					WHERE organization_id IS NULL;
				ALTER TABLE dalgo.audit_logs ENABLE TRIGGER append_only;
			END IF;
			FOR p IN SELECT con.conname, con.contype,
							array_agg(a.attname ORDER BY k.ord) AS cols
					 FROM pg_constraint con
					 CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
					 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
					 WHERE con.conrelid = rel AND con.contype IN ('p', 'u')
					 GROUP BY con.conname, con.contype
			LOOP
				CONTINUE WHEN 'organization_id' = ANY (p.cols);
				EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', rel, p.conname);
				EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s (organization_id, %s)', rel, p.conname,
							   CASE p.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END,
							   (SELECT string_agg(quote_ident(c), ', ') FROM unnest(p.cols) c));
			END LOOP;
			-- Unique indexes that back no constraint (partial ones): the same.
			FOR p IN
				SELECT i.indexrelid::regclass AS idx, pg_get_indexdef(i.indexrelid) AS def
				FROM pg_index i
				WHERE i.indrelid = rel AND i.indisunique
				  AND NOT EXISTS (SELECT FROM pg_constraint con WHERE con.conindid = i.indexrelid)
				  AND NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = 'organization_id'
								  AND a.attnum = ANY (i.indkey))
			LOOP
				EXECUTE format('DROP INDEX %s', p.idx);
				EXECUTE regexp_replace(p.def, ' USING (\w+) \(', ' USING \1 (organization_id, ');
			END LOOP;
			IF distributed = '{}' THEN
				PERFORM create_distributed_table(rel, 'organization_id', colocate_with => 'none');
			ELSE
				PERFORM create_distributed_table(rel, 'organization_id', colocate_with => distributed[1]::text);
			END IF;
			PERFORM dalgo_internal.citus_drop_local_copy(rel);
		END IF;
		distributed := distributed || rel;
		table_name := rel; distribution := 'hash(organization_id)'; RETURN NEXT;
	END LOOP;

	-- 5. The foreign keys, now between Citus tables.
	FOREACH t IN ARRAY fkeys LOOP
		EXECUTE t;
	END LOOP;
END
$fn$;
COMMENT ON FUNCTION dalgo.distribute() IS
	'Citus: distribute dalgo''s tables (users, organizations, organization_members, api_keys as reference tables, tenant tables and toolkit tables with organization_id by organization_id, co-located) with policies Citus accepts; run once on the coordinator';
REVOKE ALL ON FUNCTION dalgo.distribute() FROM PUBLIC;
