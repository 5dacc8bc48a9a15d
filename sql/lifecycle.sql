-- lifecycle.sql: the ends of things.  Soft delete that stops schedules and
-- runs at once, the restore window (dalgo.restore_days) and the purge after
-- it; a deleted organization takes its warehouse schema and role with it;
-- a user leaves for good (dalgo.delete_my_account, dalgo.erase_user).

-- ---------------------------------------------------------------------------
-- Soft delete
-- ---------------------------------------------------------------------------

-- Is what a run acts on still there?  A run of a soft-deleted organization,
-- source or transformation is never claimed.
CREATE FUNCTION dalgo_internal.target_is_live(organization_id uuid, source_id uuid, transformation_id uuid)
	RETURNS boolean
	LANGUAGE sql STABLE PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT EXISTS (SELECT FROM dalgo.organizations o
				   WHERE o.id = target_is_live.organization_id AND o.deleted_at IS NULL)
		AND (target_is_live.source_id IS NULL
			 OR EXISTS (SELECT FROM dalgo.sources s WHERE s.id = target_is_live.source_id AND s.deleted_at IS NULL))
		AND (target_is_live.transformation_id IS NULL
			 OR EXISTS (SELECT FROM dalgo.transformations t
						WHERE t.id = target_is_live.transformation_id AND t.deleted_at IS NULL));
END;
REVOKE ALL ON FUNCTION dalgo_internal.target_is_live(uuid, uuid, uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.target_is_live(uuid, uuid, uuid) IS
	'Internal: true while the organization, and the source or transformation when given, are not soft-deleted; the run claims skip runs whose target is gone';

-- A soft delete stamps what it stops with its own deleted_at, so that a
-- restore brings back exactly what the delete took: the schedules of a
-- source, an output or an organization, and the outputs of a
-- transformation.  Pending runs fail at once with a message that says why.
-- Every statement names the organization: on a Citus cluster the trigger
-- fires on the row's shard, on a worker, and reaches only the co-located
-- shards of that organization.
CREATE FUNCTION dalgo_internal.cascade_organization(organization_id uuid, old_deleted_at timestamptz,
													new_deleted_at timestamptz)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := cascade_organization.organization_id;
	stopped_at timestamptz := clock_timestamp();
BEGIN
	IF old_deleted_at IS NULL AND new_deleted_at IS NOT NULL THEN
		-- Schedules first: a claim holding a schedule's row finishes before
		-- this goes on, so the run it made is cancelled below.
		UPDATE dalgo.schedules x SET deleted_at = new_deleted_at
			WHERE x.organization_id = org AND x.deleted_at IS NULL;
		UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stopped_at,
			error_message = 'cancelled: the organization was deleted', details = r.details || '{"cancelled": true}'
			WHERE r.organization_id = org AND r.status = 'pending';
		UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = stopped_at,
			error_message = 'cancelled: the organization was deleted', details = r.details || '{"cancelled": true}'
			WHERE r.organization_id = org AND r.status = 'pending';
	ELSIF old_deleted_at IS NOT NULL AND new_deleted_at IS NULL THEN
		-- Restored: what the delete stamped comes back, unless its own target
		-- is still deleted (schedules start again from their next slot after
		-- now: set_schedule_next_run).
		UPDATE dalgo.schedules x SET deleted_at = NULL, next_run_at = NULL
			WHERE x.organization_id = org AND x.deleted_at = old_deleted_at
			  AND (x.source_id IS NULL
				   OR x.source_id IN (SELECT s.id FROM dalgo.sources s WHERE s.organization_id = org AND s.deleted_at IS NULL))
			  AND (x.output_id IS NULL
				   OR x.output_id IN (SELECT o.id FROM dalgo.outputs o WHERE o.organization_id = org AND o.deleted_at IS NULL));
	END IF;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.cascade_organization(uuid, timestamptz, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.cascade_organization(uuid, timestamptz, timestamptz) IS
	'Internal: the soft-delete cascade of an organization (old and new deleted_at): its schedules stamped and its pending runs failed, or on restore the schedules with that stamp back; run by the soft_delete_cascade trigger, on a Citus cluster by dalgo.soft_delete() and dalgo.restore()';

CREATE FUNCTION dalgo_internal.cascade_soft_delete() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	-- On a Citus shard the table is sources_102040: the table it belongs to.
	on_shard boolean := TG_TABLE_NAME ~ '_[0-9]+$';
	tbl text := regexp_replace(TG_TABLE_NAME, '_[0-9]+$', '');
	deleting boolean := OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL;
	noun text := CASE tbl WHEN 'organizations' THEN 'organization' WHEN 'sources' THEN 'source'
						  WHEN 'transformations' THEN 'transformation' ELSE 'output' END;
	msg text;
	stopped_at timestamptz := clock_timestamp();
	org uuid;
	schedule_ids text[];
BEGIN
	IF dalgo.restoring() THEN RETURN NULL; END IF;
	IF tbl = 'organizations' THEN
		-- organizations is a reference table on a cluster: its trigger fires
		-- on every node's copy, where the organization's shards are out of
		-- reach; dalgo.soft_delete() and dalgo.restore() cascade there.
		IF NOT on_shard THEN
			PERFORM dalgo_internal.cascade_organization(NEW.id, OLD.deleted_at, NEW.deleted_at);
		END IF;
		RETURN NULL;
	END IF;
	org := NEW.organization_id;
	IF deleting THEN
		msg := pg_catalog.format('cancelled: the %s was deleted', noun);
		-- Schedules first: a claim holding a schedule's row finishes before
		-- this goes on, so the run it made is cancelled below.
		IF tbl = 'transformations' THEN
			UPDATE dalgo.outputs x SET deleted_at = NEW.deleted_at
				WHERE x.organization_id = org AND x.transformation_id = NEW.id AND x.deleted_at IS NULL;
		ELSE
			UPDATE dalgo.schedules x SET deleted_at = NEW.deleted_at
				WHERE x.organization_id = org AND x.deleted_at IS NULL
				  AND ((tbl = 'sources' AND x.source_id = NEW.id) OR (tbl = 'outputs' AND x.output_id = NEW.id));
		END IF;
		IF tbl = 'sources' THEN
			UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stopped_at, error_message = msg,
				details = r.details || '{"cancelled": true}'
				WHERE r.organization_id = org AND r.status = 'pending' AND r.source_id = NEW.id;
		ELSIF tbl = 'outputs' THEN
			schedule_ids := ARRAY(SELECT x.id::text FROM dalgo.schedules x WHERE x.organization_id = org AND x.output_id = NEW.id);
			UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = stopped_at, error_message = msg,
				details = r.details || '{"cancelled": true}'
				WHERE r.organization_id = org AND r.status = 'pending' AND r.transformation_id = NEW.transformation_id
				  AND (r.details->>'output_id' = NEW.id::text OR r.details->>'schedule_id' = ANY (schedule_ids));
		ELSE
			UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = stopped_at, error_message = msg,
				details = r.details || '{"cancelled": true}'
				WHERE r.organization_id = org AND r.status = 'pending' AND r.transformation_id = NEW.id;
		END IF;
	ELSIF OLD.deleted_at IS NOT NULL AND NEW.deleted_at IS NULL THEN
		-- Restored: what the delete stamped comes back (schedules start again
		-- from their next slot after now: set_schedule_next_run), while the
		-- organization is live.
		IF tbl = 'transformations' THEN
			UPDATE dalgo.outputs x SET deleted_at = NULL
				WHERE x.organization_id = org AND x.transformation_id = NEW.id
				  AND x.deleted_at = OLD.deleted_at;
		ELSIF EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL) THEN
			UPDATE dalgo.schedules x SET deleted_at = NULL, next_run_at = NULL
				WHERE x.organization_id = org AND x.deleted_at = OLD.deleted_at
				  AND ((tbl = 'sources' AND x.source_id = NEW.id) OR (tbl = 'outputs' AND x.output_id = NEW.id));
		END IF;
	END IF;
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.cascade_soft_delete() FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.cascade_soft_delete() IS
	'AFTER UPDATE OF deleted_at row trigger on organizations, sources, transformations and outputs: a soft delete stamps their schedules (a transformation: its outputs) with the same deleted_at and fails their pending runs; a restore brings back what carries that stamp';
CREATE TRIGGER soft_delete_cascade AFTER UPDATE OF deleted_at ON dalgo.organizations
	FOR EACH ROW WHEN (OLD.deleted_at IS DISTINCT FROM NEW.deleted_at) EXECUTE FUNCTION dalgo_internal.cascade_soft_delete();
CREATE TRIGGER soft_delete_cascade AFTER UPDATE OF deleted_at ON dalgo.sources
	FOR EACH ROW WHEN (OLD.deleted_at IS DISTINCT FROM NEW.deleted_at) EXECUTE FUNCTION dalgo_internal.cascade_soft_delete();
CREATE TRIGGER soft_delete_cascade AFTER UPDATE OF deleted_at ON dalgo.transformations
	FOR EACH ROW WHEN (OLD.deleted_at IS DISTINCT FROM NEW.deleted_at) EXECUTE FUNCTION dalgo_internal.cascade_soft_delete();
CREATE TRIGGER soft_delete_cascade AFTER UPDATE OF deleted_at ON dalgo.outputs
	FOR EACH ROW WHEN (OLD.deleted_at IS DISTINCT FROM NEW.deleted_at) EXECUTE FUNCTION dalgo_internal.cascade_soft_delete();
COMMENT ON TRIGGER soft_delete_cascade ON dalgo.organizations IS 'A soft delete stops the schedules and pending runs; a restore brings the schedules back';
COMMENT ON TRIGGER soft_delete_cascade ON dalgo.sources IS 'A soft delete stops the schedules and pending runs; a restore brings the schedules back';
COMMENT ON TRIGGER soft_delete_cascade ON dalgo.transformations IS 'A soft delete takes the outputs and stops pending runs; a restore brings the outputs back';
COMMENT ON TRIGGER soft_delete_cascade ON dalgo.outputs IS 'A soft delete stops the schedules and pending runs; a restore brings the schedules back';

-- The tables whose rows an app soft-deletes and restores, with the role it
-- takes to delete one (that of the table's delete policy).
CREATE FUNCTION dalgo_internal.soft_delete_role(tbl regclass) RETURNS dalgo.member_role
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT CASE tbl
		WHEN 'dalgo.organizations'::regclass THEN 'owner'::dalgo.member_role
		WHEN 'dalgo.sources'::regclass THEN 'admin'::dalgo.member_role
		WHEN 'dalgo.transformations'::regclass THEN 'member'::dalgo.member_role
		WHEN 'dalgo.outputs'::regclass THEN 'member'::dalgo.member_role
	END;
END;
REVOKE ALL ON FUNCTION dalgo_internal.soft_delete_role(regclass) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.soft_delete_role(regclass) IS
	'Internal: the role that soft-deletes a row of organizations (owner), sources (admin), transformations or outputs (member); NULL for any other table';

-- The caller's role in an organization, whether or not it is soft-deleted
-- (the membership functions see none in a deleted organization): a live
-- membership of an active, live user, a superadmin being owner.  An API
-- key has none here: it acts only in a live organization.
CREATE FUNCTION dalgo_internal.dormant_role(organization_id uuid) RETURNS dalgo.member_role
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT CASE WHEN dalgo.current_api_key_id() IS NOT NULL THEN NULL
				WHEN u.is_superadmin THEN 'owner'::dalgo.member_role
				ELSE (SELECT m.role FROM dalgo.organization_members m
					  WHERE m.organization_id = dormant_role.organization_id AND m.user_id = u.id AND m.deleted_at IS NULL)
		   END
	FROM dalgo.users u
	WHERE u.id = dalgo.current_user_id() AND u.is_active AND u.deleted_at IS NULL
	  AND EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = dormant_role.organization_id);
END;
REVOKE ALL ON FUNCTION dalgo_internal.dormant_role(uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.dormant_role(uuid) IS
	'Internal: the caller''s role in an organization even while it is soft-deleted (live membership, active live user; superadmin: owner; API key: none)';

-- A row of a table whose rows are soft-deleted, locked for soft_delete()
-- or restore(): its organization and deleted_at, NULLs when there is none.
-- Found first, then locked naming its organization: on a Citus cluster a
-- row lock must be in one shard; there the reads also go over one
-- connection per node, since the caller goes on to write tables that
-- reference organizations (a reference table).
CREATE FUNCTION dalgo_internal.lock_lifecycle_row(tbl regclass, id uuid, OUT organization_id uuid, OUT deleted_at timestamptz)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org_column text := CASE WHEN tbl = 'dalgo.organizations'::regclass THEN 'id' ELSE 'organization_id' END;
BEGIN
	IF dalgo_internal.citus_distributed('dalgo.sources') THEN
		PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
	END IF;
	EXECUTE pg_catalog.format('SELECT %s FROM %s WHERE id OPERATOR(pg_catalog.=) $1', org_column, tbl)
		INTO organization_id USING lock_lifecycle_row.id;
	IF organization_id IS NOT NULL THEN
		EXECUTE pg_catalog.format('SELECT %1$s, deleted_at FROM %2$s WHERE %1$s OPERATOR(pg_catalog.=) $2 '
								  'AND id OPERATOR(pg_catalog.=) $1 FOR NO KEY UPDATE', org_column, tbl)
			INTO organization_id, deleted_at USING lock_lifecycle_row.id, organization_id;
	END IF;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.lock_lifecycle_row(regclass, uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.lock_lifecycle_row(regclass, uuid) IS
	'Internal: the organization and deleted_at of a row of organizations, sources, transformations or outputs, locked FOR NO KEY UPDATE through its organization (one shard on a Citus cluster); NULLs when there is none';

CREATE FUNCTION dalgo.soft_delete(tbl regclass, id uuid) RETURNS timestamptz
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	need dalgo.member_role := dalgo_internal.soft_delete_role(tbl);
	org_column text := CASE WHEN tbl = 'dalgo.organizations'::regclass THEN 'id' ELSE 'organization_id' END;
	citus boolean := dalgo_internal.citus_distributed('dalgo.sources');
	org uuid;
	was timestamptz;
	stamp timestamptz := now();
BEGIN
	IF need IS NULL THEN
		RAISE EXCEPTION '% is not a table whose rows are soft-deleted', tbl
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'dalgo.soft_delete takes dalgo.organizations, dalgo.sources, dalgo.transformations or dalgo.outputs.';
	END IF;
	SELECT l.organization_id, l.deleted_at INTO org, was FROM dalgo_internal.lock_lifecycle_row(tbl, soft_delete.id) l;
	IF org IS NULL OR was IS NOT NULL OR NOT dalgo.caller_may(org, need) THEN
		RAISE EXCEPTION 'no live row % in % that you may delete', soft_delete.id, tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = pg_catalog.format('Deleting a row of %s takes the %s role in its organization.', tbl, need);
	END IF;
	EXECUTE pg_catalog.format('UPDATE %1$s SET deleted_at = $2 WHERE %2$s OPERATOR(pg_catalog.=) $3 AND id OPERATOR(pg_catalog.=) $1',
							  tbl, org_column)
		USING soft_delete.id, stamp, org;
	IF citus AND tbl = 'dalgo.organizations'::regclass THEN
		-- The trigger of a reference table cannot reach the shards (cascade_soft_delete).
		PERFORM dalgo_internal.cascade_organization(org, NULL, stamp);
	END IF;
	RETURN stamp;
END
$$;
REVOKE ALL ON FUNCTION dalgo.soft_delete(regclass, uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo.soft_delete(regclass, uuid) IS
	'Soft-delete a row of dalgo.organizations (owners), dalgo.sources (admins), dalgo.transformations or dalgo.outputs (members): it drops out of what apps read, its schedules stop and its pending runs fail at once; dalgo.restore brings it back within dalgo.restore_days. Returns its deleted_at';

CREATE FUNCTION dalgo.deleted_items(organization_id uuid)
	RETURNS TABLE (tbl regclass, id uuid, name text, deleted_at timestamptz, restorable_until timestamptz)
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := deleted_items.organization_id;
	days integer := pg_catalog.current_setting('dalgo.restore_days')::integer;
	org_deleted timestamptz;
	allowed boolean;
BEGIN
	SELECT o.deleted_at INTO org_deleted FROM dalgo.organizations o WHERE o.id = org;
	-- Admins of a live organization; owners of a deleted one.
	allowed := FOUND;
	IF allowed AND org_deleted IS NULL THEN
		allowed := dalgo.caller_may(org, 'admin');
	ELSIF allowed THEN
		allowed := coalesce(dalgo_internal.dormant_role(org) = 'owner', false)
				   OR (dalgo.current_user_id() IS NULL AND dalgo.caller_may(org, 'viewer'));
	END IF;
	IF NOT allowed THEN
		RAISE EXCEPTION 'organization % does not exist or you are not one of its admins', org
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN QUERY
		SELECT x.tbl, x.id, x.name, x.deleted_at, x.deleted_at + pg_catalog.make_interval(days => days)
		FROM (SELECT 'dalgo.organizations'::regclass AS tbl, o.id, o.name, o.deleted_at
			  FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NOT NULL
			  UNION ALL
			  SELECT 'dalgo.sources'::regclass, s.id, s.name, s.deleted_at
			  FROM dalgo.sources s WHERE s.organization_id = org AND s.deleted_at IS NOT NULL
			  UNION ALL
			  SELECT 'dalgo.transformations'::regclass, t.id, t.name, t.deleted_at
			  FROM dalgo.transformations t WHERE t.organization_id = org AND t.deleted_at IS NOT NULL
			  UNION ALL
			  SELECT 'dalgo.outputs'::regclass, p.id, p.name, p.deleted_at
			  FROM dalgo.outputs p WHERE p.organization_id = org AND p.deleted_at IS NOT NULL) x
		ORDER BY x.deleted_at DESC, x.tbl::text, x.id;
END
$$;
REVOKE ALL ON FUNCTION dalgo.deleted_items(uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo.deleted_items(uuid) IS
	'The soft-deleted organization, sources, transformations and outputs of an organization, newest first, with the time until which dalgo.restore brings each back (deleted_at + dalgo.restore_days); for its admins, or its owners once the organization itself is deleted';

CREATE FUNCTION dalgo.restore(tbl regclass, id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org_column text := CASE WHEN tbl = 'dalgo.organizations'::regclass THEN 'id' ELSE 'organization_id' END;
	citus boolean := dalgo_internal.citus_distributed('dalgo.sources');
	org uuid;
	was timestamptz;
	days integer := pg_catalog.current_setting('dalgo.restore_days')::integer;
	allowed boolean;
	parent_gone text;
BEGIN
	IF dalgo_internal.soft_delete_role(tbl) IS NULL THEN
		RAISE EXCEPTION '% is not a table whose rows are restored', tbl
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'dalgo.restore takes dalgo.organizations, dalgo.sources, dalgo.transformations or dalgo.outputs.';
	END IF;
	SELECT l.organization_id, l.deleted_at INTO org, was FROM dalgo_internal.lock_lifecycle_row(tbl, restore.id) l;
	-- An organization is brought back by its owners; a row in one by its admins.
	IF tbl = 'dalgo.organizations'::regclass THEN
		allowed := dalgo_internal.dormant_role(org) = 'owner'
				   OR (dalgo.current_user_id() IS NULL AND dalgo.caller_may(org, 'viewer'));
	ELSE
		allowed := dalgo.caller_may(org, 'admin');
	END IF;
	IF org IS NULL OR was IS NULL OR NOT coalesce(allowed, false) THEN
		RAISE EXCEPTION 'no deleted row % in % that you may restore', restore.id, tbl
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'dalgo.deleted_items(organization_id) lists what an admin may restore.';
	END IF;
	IF was < now() - pg_catalog.make_interval(days => days) THEN
		RAISE EXCEPTION 'the restore window has passed: % was deleted at %, more than dalgo.restore_days (%) ago', restore.id, was, days
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'It is purged by dalgo.purge_deleted() and cannot come back.';
	END IF;
	IF tbl = 'dalgo.outputs'::regclass THEN
		SELECT t.name INTO parent_gone FROM dalgo.outputs p
			JOIN dalgo.transformations t ON t.organization_id = p.organization_id AND t.id = p.transformation_id
			WHERE p.organization_id = org AND p.id = restore.id AND t.deleted_at IS NOT NULL;
		IF parent_gone IS NOT NULL THEN
			RAISE EXCEPTION 'the transformation "%" of this output is deleted', parent_gone
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  HINT = 'Restore the transformation first: that brings back the outputs it took with it.';
		END IF;
	END IF;
	EXECUTE pg_catalog.format('UPDATE %1$s SET deleted_at = NULL WHERE %2$s OPERATOR(pg_catalog.=) $2 AND id OPERATOR(pg_catalog.=) $1',
							  tbl, org_column)
		USING restore.id, org;
	IF citus AND tbl = 'dalgo.organizations'::regclass THEN
		PERFORM dalgo_internal.cascade_organization(org, was, NULL);
	END IF;
END
$$;
REVOKE ALL ON FUNCTION dalgo.restore(regclass, uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo.restore(regclass, uuid) IS
	'Bring back a soft-deleted row of dalgo.organizations (its owners), dalgo.sources, dalgo.transformations or dalgo.outputs (admins of its organization) within dalgo.restore_days of its deletion, with the schedules (a transformation: the outputs) its deletion stopped. Not to be confused with dalgo.restoring(), the pg_restore mode';

-- ---------------------------------------------------------------------------
-- An organization's warehouse goes with it
-- ---------------------------------------------------------------------------

-- Drop the warehouse schema org_<hex> with everything in it, everything
-- else the role dalgo_wh_<hex> owns or was granted in this database, and the
-- role.  A role still used in another database of the cluster (a copy of
-- this one) is left to that database, with a warning.
CREATE FUNCTION dalgo_internal.drop_warehouse(organization_id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	SET client_min_messages = warning	-- not a NOTICE per dropped table
AS $$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	role_name text := dalgo_internal.warehouse_role_name(organization_id);
	owner_name text;
	-- On a Citus node the warehouse is that node's own (ensure_warehouse):
	-- nothing is sent to other nodes.  NULL without Citus.
	ddl_propagation text := current_setting('citus.enable_ddl_propagation', true);
BEGIN
	IF ddl_propagation IS NOT NULL THEN
		PERFORM set_config('citus.enable_ddl_propagation', 'off', true);
	END IF;
	SELECT r.rolname INTO owner_name FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE n.nspname = schema_name;
	-- dalgo drops only a schema it made: one its warehouse role owns.
	IF owner_name = role_name THEN
		EXECUTE pg_catalog.format('DROP SCHEMA %I CASCADE', schema_name);
	ELSIF owner_name IS NOT NULL THEN
		RAISE WARNING 'schema "%" is not owned by the warehouse role "%": left in place', schema_name, role_name;
	END IF;
	IF EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
		EXECUTE pg_catalog.format('DROP OWNED BY %I CASCADE', role_name);
		BEGIN
			EXECUTE pg_catalog.format('DROP ROLE %I', role_name);
		EXCEPTION WHEN dependent_objects_still_exist THEN
			RAISE WARNING 'role "%" is still used in another database: left in place', role_name
				USING DETAIL = SQLERRM;
		END;
	END IF;
	IF ddl_propagation IS NOT NULL THEN
		PERFORM set_config('citus.enable_ddl_propagation', ddl_propagation, true);
	END IF;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.drop_warehouse(uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.drop_warehouse(uuid) IS
	'Internal: drop an organization''s warehouse schema (if its warehouse role owns it) with everything in it, whatever else that role owns or was granted in this database, and the role (left with a warning while another database still uses it)';

CREATE FUNCTION dalgo_internal.drop_organization_warehouse() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF dalgo.restoring() THEN RETURN NULL; END IF;
	PERFORM dalgo_internal.drop_warehouse(OLD.id);
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.drop_organization_warehouse() FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.drop_organization_warehouse() IS
	'AFTER DELETE row trigger on organizations: the organization''s warehouse schema and role are dropped in the same transaction';
CREATE TRIGGER drop_warehouse AFTER DELETE ON dalgo.organizations
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.drop_organization_warehouse();
COMMENT ON TRIGGER drop_warehouse ON dalgo.organizations IS 'A deleted organization takes its warehouse schema and role with it';

-- ---------------------------------------------------------------------------
-- Purge after the restore window
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.purge_deleted(max_rows integer DEFAULT 1000) RETURNS bigint
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cutoff timestamptz := now() - pg_catalog.make_interval(days => pg_catalog.current_setting('dalgo.restore_days')::integer);
	left_over integer := max_rows;
	n bigint;
	gone bigint;
	total bigint := 0;
	t text;
	victim record;
	stopped_at timestamptz := clock_timestamp();
BEGIN
	IF NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user)
	   AND NOT pg_has_role(session_user, 'dalgo_service', 'USAGE') THEN
		RAISE EXCEPTION 'only dalgo_service or a superuser may purge deleted rows'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF max_rows IS NULL OR max_rows < 1 THEN
		RAISE EXCEPTION 'max_rows must be at least 1' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF dalgo_internal.citus_distributed('dalgo.sources') THEN
		-- Reads and writes of distributed tables and of the reference tables
		-- they reference, in one transaction: one connection per node.
		PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
	END IF;
	-- Organizations first (each drops a warehouse, so they count 100 rows
	-- against the batch's locks), then what else outlived its window: found
	-- first, then each deleted by its organization and id (one shard each on
	-- a Citus cluster).
	FOREACH t IN ARRAY ARRAY['organizations', 'transformations', 'outputs', 'sources'] LOOP
		EXIT WHEN left_over <= 0;
		n := 0;
		FOR victim IN EXECUTE pg_catalog.format(
			'SELECT y.%2$I AS organization_id, y.id FROM dalgo.%1$I y WHERE y.deleted_at < $1 ORDER BY y.deleted_at LIMIT $2',
			t, CASE WHEN t = 'organizations' THEN 'id' ELSE 'organization_id' END)
			USING cutoff, CASE WHEN t = 'organizations' THEN greatest(left_over / 100, 1) ELSE left_over END
		LOOP
			EXECUTE pg_catalog.format('DELETE FROM dalgo.%1$I x WHERE x.%2$I = $1 AND x.id = $2 AND x.deleted_at < $3',
									  t, CASE WHEN t = 'organizations' THEN 'id' ELSE 'organization_id' END)
				USING victim.organization_id, victim.id, cutoff;
			GET DIAGNOSTICS gone = ROW_COUNT;
			n := n + gone;
		END LOOP;
		total := total + n;
		left_over := left_over - CASE WHEN t = 'organizations' THEN n * 100 ELSE n END;
	END LOOP;
	-- Stragglers: a run queued for something deleted meanwhile never runs
	-- (what target_is_live() tells, as joins in the run's organization).
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stopped_at,
		error_message = 'cancelled: its source or organization was deleted', details = r.details || '{"cancelled": true}'
		WHERE r.status = 'pending'
		  AND (NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = r.organization_id AND o.deleted_at IS NULL)
			   OR (r.source_id IS NOT NULL
				   AND NOT EXISTS (SELECT FROM dalgo.sources s WHERE s.organization_id = r.organization_id
								   AND s.id = r.source_id AND s.deleted_at IS NULL)));
	UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = stopped_at,
		error_message = 'cancelled: its transformation or organization was deleted', details = r.details || '{"cancelled": true}'
		WHERE r.status = 'pending'
		  AND (NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = r.organization_id AND o.deleted_at IS NULL)
			   OR (r.transformation_id IS NOT NULL
				   AND NOT EXISTS (SELECT FROM dalgo.transformations x WHERE x.organization_id = r.organization_id
								   AND x.id = r.transformation_id AND x.deleted_at IS NULL)));
	RETURN total;
END
$$;
REVOKE ALL ON FUNCTION dalgo.purge_deleted(integer) FROM PUBLIC;
COMMENT ON FUNCTION dalgo.purge_deleted(integer) IS
	'Hard-delete (cascading) the organizations, transformations, outputs and sources soft-deleted more than dalgo.restore_days ago, at most max_rows per call (an organization, whose warehouse is dropped, counts 100); returns how many rows went. Call it until it returns 0. Only dalgo_service and superusers';

-- ---------------------------------------------------------------------------
-- Leaving for good
-- ---------------------------------------------------------------------------

-- Replace every string value that holds one of the needles
-- (case-insensitively), and every value under the keys given, by
-- "[erased]".  Ids (keys "id" and "*_id") are never touched.  A user picks
-- their own name, so a needle matches inside a longer string only when it
-- has 5 characters or more, a letter among them; a shorter or letterless
-- one ("-4000-", "202") must equal the whole value.
CREATE FUNCTION dalgo_internal.erase_in_jsonb(j jsonb, needles text[], keys text[], whole_values_only boolean DEFAULT false)
	RETURNS jsonb
	LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	CASE jsonb_typeof(j)
	WHEN 'object' THEN
		RETURN coalesce((SELECT jsonb_object_agg(e.key, CASE WHEN e.key = 'id' OR e.key LIKE '%\_id' THEN e.value
															 WHEN e.key = ANY (keys) AND jsonb_typeof(e.value) <> 'null'
															 THEN '"[erased]"'::jsonb
															 ELSE dalgo_internal.erase_in_jsonb(e.value, needles, keys, whole_values_only) END)
						 FROM jsonb_each(j) e), '{}'::jsonb);
	WHEN 'array' THEN
		RETURN coalesce((SELECT jsonb_agg(dalgo_internal.erase_in_jsonb(a.value, needles, keys, whole_values_only) ORDER BY a.n)
						 FROM jsonb_array_elements(j) WITH ORDINALITY a(value, n)), '[]'::jsonb);
	WHEN 'string' THEN
		IF EXISTS (SELECT FROM unnest(needles) x
				   WHERE length(btrim(x)) >= 3
					 AND (lower(btrim(j #>> '{}')) = lower(btrim(x))
						  OR (NOT coalesce(whole_values_only, false) AND length(btrim(x)) >= 5 AND btrim(x) ~ '[[:alpha:]]'
							  AND strpos(lower(j #>> '{}'), lower(btrim(x))) > 0))) THEN
			RETURN '"[erased]"'::jsonb;
		END IF;
		RETURN j;
	ELSE
		RETURN j;
	END CASE;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.erase_in_jsonb(jsonb, text[], text[], boolean) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.erase_in_jsonb(jsonb, text[], text[], boolean) IS
	'Internal: a jsonb value with every string holding one of the needles (case-insensitively; inside a longer string only for needles of 5 characters or more with a letter and not whole_values_only, else the whole value, and never under 3 characters) and every value under one of the keys replaced by "[erased]"; ids (keys id and *_id) are never touched';

CREATE FUNCTION dalgo_internal.anonymize_audit_logs(user_id uuid, needles text[], organization_ids uuid[]) RETURNS bigint
	AS 'MODULE_PATHNAME', 'dalgo_anonymize_audit_logs'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION dalgo_internal.anonymize_audit_logs(uuid, text[], uuid[]) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.anonymize_audit_logs(uuid, text[], uuid[]) IS
	'Internal: the one path past the audit trail''s append-only guard: in the rows by or about the user, and the rows of organizations the user was a member of that name one of the needles, personal data in details is erased and the client address and user agent of the user''s own rows dropped; ids, actions and times stay. Rows of other organizations are never touched';

-- The work of both ways to leave: memberships end, the personal
-- organization goes (with its warehouse), tokens and keys die, the user row
-- and the audit trail keep the id and lose the person.
CREATE FUNCTION dalgo_internal.erase_account(user_id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	uid uuid := erase_account.user_id;
	u record;
	blocking record;
	needles text[];
	orgs uuid[];
	anon text := 'erased-' || replace(erase_account.user_id::text, '-', '') || '@erased.invalid';
	-- A value, not now() inside coalesce (Citus refuses non-IMMUTABLE calls there).
	erased_at timestamptz := now();
BEGIN
	IF dalgo_internal.citus_distributed('dalgo.invitations') THEN
		-- Writes to reference tables (users, memberships, tokens) and to the
		-- distributed invitations and audit trail that reference them, in
		-- one transaction: one connection per node.
		PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
	END IF;
	SELECT x.id, x.email, x.full_name, x.deleted_at INTO u FROM dalgo.users x WHERE x.id = uid FOR UPDATE;
	IF u.id IS NULL THEN
		RAISE EXCEPTION 'user % does not exist', uid USING ERRCODE = 'no_data_found';
	END IF;
	-- Team organizations must keep an owner: under each organization's row
	-- lock, against the latest committed state (as guard_membership counts).
	FOR blocking IN
		SELECT o.id, o.name FROM dalgo.organization_members m JOIN dalgo.organizations o ON o.id = m.organization_id
		WHERE m.user_id = uid AND m.role = 'owner' AND m.deleted_at IS NULL
		  AND o.org_type = 'team' AND o.deleted_at IS NULL
		ORDER BY o.id
	LOOP
		PERFORM FROM dalgo.organizations o WHERE o.id = blocking.id FOR NO KEY UPDATE;
		IF dalgo_internal.live_owner_count(blocking.id,
				(SELECT m.id FROM dalgo.organization_members m
				 WHERE m.organization_id = blocking.id AND m.user_id = uid AND m.deleted_at IS NULL)) = 0 THEN
			RAISE EXCEPTION 'you are the last owner of the organization "%" (%)', blocking.name, blocking.id
				USING ERRCODE = 'check_violation',
					  HINT = 'Make another member an owner, or delete the organization, first.';
		END IF;
	END LOOP;

	-- The organizations whose audit rows may name the user: theirs, before
	-- the personal one goes.  No other organization's trail is touched.
	orgs := ARRAY(SELECT DISTINCT m.organization_id FROM dalgo.organization_members m WHERE m.user_id = uid);

	-- Personal organizations of the user go at once, warehouse and all.
	DELETE FROM dalgo.organizations o
		WHERE o.org_type = 'personal'
		  AND EXISTS (SELECT FROM dalgo.organization_members m
					  WHERE m.organization_id = o.id AND m.user_id = uid AND m.role = 'owner' AND m.deleted_at IS NULL);
	-- Memberships end (the rows keep their ids for the audit trail).
	UPDATE dalgo.organization_members m SET deleted_at = now() WHERE m.user_id = uid AND m.deleted_at IS NULL;

	-- Sessions, reset tokens, API keys and pending mail.
	UPDATE dalgo.refresh_tokens t SET revoked_at = now() WHERE t.user_id = uid AND t.revoked_at IS NULL;
	UPDATE dalgo.password_reset_tokens t SET used_at = now() WHERE t.user_id = uid AND t.used_at IS NULL;
	UPDATE dalgo.api_keys k SET revoked_at = now() WHERE k.created_by_id = uid AND k.revoked_at IS NULL;
	UPDATE dalgo.mail_messages m SET state = 'cancelled', payload = NULL, completed_at = now()
		WHERE lower(m.recipient) = lower(u.email) AND m.state IN ('pending', 'sending');
	UPDATE dalgo.mail_messages m SET recipient = anon WHERE lower(m.recipient) = lower(u.email);
	UPDATE dalgo.invitations i SET email = anon WHERE lower(i.email) = lower(u.email);
	DELETE FROM dalgo.sign_in_attempts a
		WHERE a.user_id = uid OR a.email_hash = dalgo_internal.email_key(u.email);

	-- The user row: the id stays, the person goes.
	UPDATE dalgo.users x SET email = anon, full_name = NULL, password_hash = NULL, is_active = false,
		deleted_at = coalesce(x.deleted_at, erased_at)
		WHERE x.id = uid;

	-- The audit trail: what the user did and what was done to them stays, by id.
	needles := ARRAY[u.email, u.full_name]
		|| ARRAY(SELECT DISTINCT v.value FROM dalgo.audit_logs a,
					 LATERAL jsonb_path_query(a.details, 'strict $.**.email.**') q,
					 LATERAL (SELECT q #>> '{}' AS value) v
				 WHERE a.resource_type = 'users' AND a.resource_id = uid AND jsonb_typeof(q) = 'string'
				   AND v.value <> anon)
		|| ARRAY(SELECT DISTINCT v.value FROM dalgo.audit_logs a,
					 LATERAL jsonb_path_query(a.details, 'strict $.**.full_name.**') q,
					 LATERAL (SELECT q #>> '{}' AS value) v
				 WHERE a.resource_type = 'users' AND a.resource_id = uid AND jsonb_typeof(q) = 'string');
	PERFORM dalgo_internal.anonymize_audit_logs(uid, array_remove(needles, NULL), orgs);
	PERFORM dalgo_internal.account_audit('account_erased', NULL, NULL, 'user', uid);
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.erase_account(uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.erase_account(uuid) IS
	'Internal: delete_my_account and erase_user: refuse while the user is the last owner of a live team organization; delete their personal organizations (warehouse included); end memberships; revoke refresh tokens, reset tokens and API keys; cancel their mail; anonymize the user row and the audit trail';

CREATE FUNCTION dalgo.delete_my_account() RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
BEGIN
	PERFORM dalgo_internal.refuse_api_key('deleting an account');
	IF me IS NULL OR NOT EXISTS (SELECT FROM dalgo.users u WHERE u.id = me AND u.is_active AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'deleting an account needs a signed-in user' USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM dalgo_internal.erase_account(me);
END
$$;
REVOKE ALL ON FUNCTION dalgo.delete_my_account() FROM PUBLIC;
COMMENT ON FUNCTION dalgo.delete_my_account() IS
	'Leave for good, as the signed-in user: refused (23514, with a hint) while the last owner of a team organization; otherwise the personal organization is deleted with its warehouse, memberships end, sessions, reset tokens and API keys are revoked, the account is anonymized (email replaced, name and password removed) and the audit trail keeps its ids but no personal data';

CREATE FUNCTION dalgo.erase_user(user_id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF dalgo.current_user_id() IS NOT NULL THEN
		RAISE EXCEPTION 'erase_user is service work; it runs without a user identity'
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'A user leaves with dalgo.delete_my_account().';
	END IF;
	IF NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user)
	   AND NOT pg_has_role(session_user, 'dalgo_service', 'USAGE') THEN
		RAISE EXCEPTION 'only dalgo_service or a superuser may erase a user' USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM dalgo_internal.erase_account(erase_user.user_id);
END
$$;
REVOKE ALL ON FUNCTION dalgo.erase_user(uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo.erase_user(uuid) IS
	'Service side of a data-subject erasure request: what dalgo.delete_my_account() does, for any user (the same last-owner refusal); dalgo_service and superusers, without a user identity';

GRANT EXECUTE ON FUNCTION dalgo.soft_delete(regclass, uuid), dalgo.deleted_items(uuid), dalgo.restore(regclass, uuid),
	dalgo.delete_my_account()
	TO dalgo_authenticated, dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.purge_deleted(integer), dalgo.erase_user(uuid) TO dalgo_service;
