-- recipes.sql: the recipe compiler, the per-organization warehouse, and the
-- transformation engine (versions, dependency graph, runs, previews).

CREATE FUNCTION dalgo.compile_recipe(organization_id uuid, recipe jsonb) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_compile_recipe'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.compile_recipe(uuid, jsonb) IS
	'Compile a JSON recipe (see the recipe contract) into one SELECT over the organization''s warehouse; errors are 22023 and name the step, its type and the field';

CREATE FUNCTION dalgo_internal.warehouse_execute(organization_id uuid, sql text) RETURNS bigint
	AS 'MODULE_PATHNAME', 'dalgo_warehouse_execute'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo_internal.warehouse_execute(uuid, text) IS
	'Internal: run a command as the organization''s warehouse role (search_path pinned, dalgo.statement_timeout); returns rows processed';

CREATE FUNCTION dalgo_internal.warehouse_query(organization_id uuid, sql text, row_limit integer) RETURNS SETOF jsonb
	AS 'MODULE_PATHNAME', 'dalgo_warehouse_query'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo_internal.warehouse_query(uuid, text, integer) IS
	'Internal: the rows of a query as jsonb, run as the organization''s warehouse role; row_limit 0 only parse-analyzes it';

-- The one rule that names an organization's warehouse: schema org_<hex>,
-- owned by role dalgo_wh_<hex>, <hex> the organization id without dashes.
CREATE FUNCTION dalgo_internal.warehouse_schema_name(organization_id uuid) RETURNS text
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN 'org_' || replace(organization_id::text, '-', '');
COMMENT ON FUNCTION dalgo_internal.warehouse_schema_name(uuid) IS
	'Internal: the name of an organization''s warehouse schema, org_<id without dashes>';
CREATE FUNCTION dalgo_internal.warehouse_role_name(organization_id uuid) RETURNS text
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN 'dalgo_wh_' || replace(organization_id::text, '-', '');
COMMENT ON FUNCTION dalgo_internal.warehouse_role_name(uuid) IS
	'Internal: the name of the role that owns an organization''s warehouse schema, dalgo_wh_<id without dashes>';
REVOKE ALL ON FUNCTION dalgo_internal.warehouse_schema_name(uuid), dalgo_internal.warehouse_role_name(uuid) FROM PUBLIC;

CREATE FUNCTION dalgo.caller_may(organization_id uuid, min_role dalgo.member_role) RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_caller_may_sql'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.caller_may(uuid, dalgo.member_role) IS
	'True if the caller may act in the organization with min_role: the signed-in user''s role, or, without an identity, a login that is a superuser or dalgo_service';

CREATE FUNCTION dalgo.ensure_warehouse(organization_id uuid) RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	role_name text := dalgo_internal.warehouse_role_name(organization_id);
	r pg_roles;
	problem text;
	-- On a Citus coordinator the warehouse is the coordinator's alone
	-- (docs/scaling.md): its role and schema are not sent to the workers,
	-- which would also fail once the transaction read a distributed table
	-- in parallel ("cannot create or modify role because there was a
	-- parallel operation").  NULL without Citus.
	ddl_propagation text := current_setting('citus.enable_ddl_propagation', true);
BEGIN
	IF organization_id IS NULL THEN
		RAISE EXCEPTION 'organization_id is required' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF ddl_propagation IS NOT NULL THEN
		PERFORM set_config('citus.enable_ddl_propagation', 'off', true);
	END IF;
	IF NOT dalgo.caller_may(organization_id, 'viewer')
	   OR NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = ensure_warehouse.organization_id AND o.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- Two first uses at once (two syncs of a new organization): the second
	-- waits for the first and then finds its role and schema, instead of
	-- failing on pg_authid's unique name.
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name)
	   OR NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = schema_name) THEN
		PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('dalgo warehouse ' || organization_id::text, 0));
	END IF;
	SELECT * INTO r FROM pg_roles WHERE rolname = role_name;
	IF NOT FOUND THEN
		EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT', role_name);
		EXECUTE format('COMMENT ON ROLE %I IS %L', role_name, 'dalgo: owns the warehouse of organization ' || organization_id);
	ELSE
		-- A role of that name that dalgo did not make the way it makes them is
		-- never adopted: everything a viewer previews runs as this role.
		problem := concat_ws(', ',
			CASE WHEN r.rolcanlogin THEN 'it can log in' END,
			CASE WHEN r.rolsuper THEN 'it is a superuser' END,
			CASE WHEN r.rolbypassrls THEN 'it bypasses row-level security' END,
			CASE WHEN r.rolcreaterole THEN 'it can create roles' END,
			CASE WHEN r.rolcreatedb THEN 'it can create databases' END,
			CASE WHEN r.rolreplication THEN 'it is a replication role' END,
			(SELECT 'it is a member of ' || string_agg(quote_ident(g.rolname), ', ' ORDER BY g.rolname)
			 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid),
			(SELECT 'it is granted to ' || string_agg(quote_ident(u.rolname), ', ' ORDER BY u.rolname)
			 FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member WHERE m.roleid = r.oid));
		IF problem <> '' THEN
			RAISE EXCEPTION 'role "%" exists but is not a warehouse role dalgo can use: %', role_name, problem
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  HINT = 'A warehouse role is NOLOGIN, NOSUPERUSER, NOBYPASSRLS, NOCREATEROLE, NOCREATEDB, NOREPLICATION and in no role membership; a superuser must fix or drop it.';
		END IF;
	END IF;
	IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = schema_name) THEN
		EXECUTE format('CREATE SCHEMA %I AUTHORIZATION %I', schema_name, role_name);
		EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', schema_name);
		EXECUTE format('COMMENT ON SCHEMA %I IS %L', schema_name, 'dalgo: warehouse of organization ' || organization_id);
	ELSIF NOT EXISTS (SELECT FROM pg_namespace n JOIN pg_roles o ON o.oid = n.nspowner
					  WHERE n.nspname = schema_name AND o.rolname = role_name) THEN
		RAISE EXCEPTION 'schema "%" exists but is not owned by the warehouse role "%"', schema_name, role_name
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'dalgo never adopts a schema it did not create for the organization; a superuser must fix its owner or drop it.';
	END IF;
	IF ddl_propagation IS NOT NULL THEN
		PERFORM set_config('citus.enable_ddl_propagation', ddl_propagation, true);
	END IF;
	INSERT INTO dalgo.warehouse_connections (organization_id, database_name, is_connected, last_connected_at)
		SELECT ensure_warehouse.organization_id, current_database(), true, now()
		WHERE NOT EXISTS (SELECT FROM dalgo.warehouse_connections w
						  WHERE w.organization_id = ensure_warehouse.organization_id AND w.deleted_at IS NULL);
	RETURN schema_name;
END
$$;
COMMENT ON FUNCTION dalgo.ensure_warehouse(uuid) IS
	'The organization''s warehouse schema (org_<id>, owned by role dalgo_wh_<id>), created with its warehouse_connections row on first use; a role or schema of that name that dalgo would not have made (login, superuser, role memberships, another owner...) is refused, never adopted';

CREATE FUNCTION dalgo_internal.create_warehouse_for_connection() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF dalgo.restoring() THEN RETURN NULL; END IF;	-- restored: the schema is in the dump
	-- On a Citus shard (warehouse_connections_102041, on a worker): the
	-- warehouse lives on the coordinator, where ensure_warehouse() made it.
	IF TG_TABLE_NAME ~ '_[0-9]+$' THEN RETURN NULL; END IF;
	PERFORM dalgo.ensure_warehouse(NEW.organization_id);
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo_internal.create_warehouse_for_connection() IS 'AFTER INSERT trigger on warehouse_connections: creates the warehouse schema (not on a Citus shard: the warehouse is the coordinator''s)';
CREATE TRIGGER create_warehouse AFTER INSERT ON dalgo.warehouse_connections
	FOR EACH ROW WHEN (NEW.deleted_at IS NULL) EXECUTE FUNCTION dalgo_internal.create_warehouse_for_connection();
COMMENT ON TRIGGER create_warehouse ON dalgo.warehouse_connections IS 'A warehouse connection creates its warehouse schema';

CREATE FUNCTION dalgo_internal.register_warehouse_table(organization_id uuid, table_name text, source_id uuid,
											   transformation_id uuid, row_count bigint)
	RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	rel regclass := to_regclass(format('%I.%I', schema_name, table_name));
	conn uuid;
	info jsonb;
	-- Computed here, on this node: on a Citus cluster the UPDATE below runs
	-- on the organization's worker, which neither has the table nor allows a
	-- volatile function in it.
	size bigint := pg_total_relation_size(rel);
BEGIN
	SELECT id INTO conn FROM dalgo.warehouse_connections w
	WHERE w.organization_id = register_warehouse_table.organization_id AND w.deleted_at IS NULL;
	SELECT coalesce(jsonb_agg(jsonb_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
												 'nullable', NOT a.attnotnull) ORDER BY a.attnum), '[]')
	INTO info FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped;
	UPDATE dalgo.warehouse_tables w SET row_count = register_warehouse_table.row_count,
		size_bytes = size, schema_info = info, last_updated_at = now(),
		source_id = register_warehouse_table.source_id, transformation_id = register_warehouse_table.transformation_id
	WHERE w.organization_id = register_warehouse_table.organization_id AND w.warehouse_connection_id = conn
	  AND w.table_name = register_warehouse_table.table_name AND w.deleted_at IS NULL;
	IF NOT FOUND THEN
		INSERT INTO dalgo.warehouse_tables (organization_id, warehouse_connection_id, table_name, source_id,
											transformation_id, row_count, size_bytes, schema_info, last_updated_at)
		VALUES (register_warehouse_table.organization_id, conn, register_warehouse_table.table_name,
				register_warehouse_table.source_id, register_warehouse_table.transformation_id,
				register_warehouse_table.row_count, size, info, now());
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.register_warehouse_table(uuid, text, uuid, uuid, bigint) IS
	'Internal: record a warehouse table''s row count, size and columns in warehouse_tables';

-- ---------------------------------------------------------------------------
-- Versions and the dependency graph
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.recipe_dependencies(recipe jsonb) RETURNS uuid[]
	AS 'MODULE_PATHNAME', 'dalgo_recipe_dependencies'
	LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.recipe_dependencies(jsonb) IS
	'Ids of the transformations a recipe reads, only from where the recipe contract allows a reference: source, join.with and union.with[] ({"transformation_id": ...}); sorted, without duplicates';

CREATE FUNCTION dalgo.transformation_upstream(transformation_id uuid)
	RETURNS TABLE (id uuid, depth integer)
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
	bad uuid;
BEGIN
	SELECT t.organization_id INTO org FROM dalgo.transformations t WHERE t.id = transformation_upstream.transformation_id;
	-- The walk follows only transformations of the same organization; any
	-- other dependency (another organization's, deleted, unknown) is an error,
	-- with or without an identity (run workers have none).  Every query names
	-- the organization: on a Citus cluster each is then a single-shard query,
	-- recursion included.
	SELECT d INTO bad
	FROM dalgo.transformations t, unnest(dalgo.recipe_dependencies(t.recipe)) d
	WHERE t.organization_id = org AND t.id = transformation_upstream.transformation_id
	  AND NOT EXISTS (SELECT FROM dalgo.transformations x WHERE x.id = d AND x.organization_id = org AND x.deleted_at IS NULL)
	LIMIT 1;
	IF bad IS NULL THEN
		WITH RECURSIVE up(id, depth) AS (
			SELECT d, 1 FROM dalgo.transformations t, unnest(dalgo.recipe_dependencies(t.recipe)) d
			WHERE t.organization_id = org AND t.id = transformation_upstream.transformation_id
			UNION ALL
			SELECT d, up.depth + 1 FROM up JOIN dalgo.transformations t ON t.id = up.id AND t.organization_id = org,
				unnest(dalgo.recipe_dependencies(t.recipe)) d
			WHERE up.depth < 100)
		SELECT u.id INTO bad FROM up u
		WHERE NOT EXISTS (SELECT FROM dalgo.transformations x WHERE x.id = u.id AND x.organization_id = org AND x.deleted_at IS NULL)
		LIMIT 1;
	END IF;
	IF bad IS NOT NULL THEN
		RAISE EXCEPTION 'transformation % reads %, which is not a live transformation of its organization', transformation_id, bad
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN QUERY
		WITH RECURSIVE up(id, depth) AS (
			SELECT d, 1 FROM dalgo.transformations t, unnest(dalgo.recipe_dependencies(t.recipe)) d
			WHERE t.organization_id = org AND t.id = transformation_upstream.transformation_id
			UNION ALL
			SELECT d, up.depth + 1 FROM up JOIN dalgo.transformations t ON t.id = up.id AND t.organization_id = org,
				unnest(dalgo.recipe_dependencies(t.recipe)) d
			WHERE up.depth < 100)
		SELECT u.id, max(u.depth) FROM up u GROUP BY u.id ORDER BY max(u.depth) DESC, u.id;
END
$$;
COMMENT ON FUNCTION dalgo.transformation_upstream(uuid) IS
	'The transformations a transformation reads, directly or not, deepest first (the order to run them in); all of its own organization, or an error';

CREATE FUNCTION dalgo_internal.check_recipe_sql(organization_id uuid, sql text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	msg text;
BEGIN
	IF NOT dalgo.caller_may(organization_id, 'member') THEN
		RAISE EXCEPTION 'saving a transformation needs the member role' USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM dalgo.ensure_warehouse(organization_id);
	BEGIN
		PERFORM * FROM dalgo_internal.warehouse_query(organization_id, sql, 0);
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
		RAISE EXCEPTION 'recipe does not type-check: %', msg USING ERRCODE = 'invalid_parameter_value';
	END;
END
$$;
COMMENT ON FUNCTION dalgo_internal.check_recipe_sql(uuid, text) IS 'Internal: parse-analyze compiled recipe SQL in the organization''s warehouse';

CREATE FUNCTION dalgo_internal.warehouse_table_claimant(organization_id uuid, table_name text, source_id uuid,
												transformation_id uuid, output_id uuid) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_warehouse_table_claimant'
	LANGUAGE C VOLATILE PARALLEL UNSAFE
	SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION dalgo_internal.warehouse_table_claimant(uuid, text, uuid, uuid, uuid) IS
	'Internal: which other live source, transformation or output of the organization claims a warehouse table name (NULL if none); serialized per organization and read from the latest committed rows';

CREATE FUNCTION dalgo_internal.check_warehouse_table_name(organization_id uuid, table_name text, source_id uuid,
												 transformation_id uuid, output_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	claimant text := dalgo_internal.warehouse_table_claimant(organization_id, table_name, source_id, transformation_id, output_id);
BEGIN
	IF claimant IS NOT NULL AND NOT dalgo.caller_may(organization_id, 'viewer') THEN
		-- Never name another organization's objects: row-level security refuses this row anyway.
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF claimant IS NOT NULL THEN
		RAISE EXCEPTION 'warehouse table "%" already belongs to %', table_name, claimant
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Each warehouse table has one producer: a source, a transformation or an output. Choose another name.';
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.check_warehouse_table_name(uuid, text, uuid, uuid, uuid) IS
	'Internal: refuse a warehouse table name that another live producer of the organization claims';

CREATE FUNCTION dalgo_internal.check_transformation() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	deps uuid[];
BEGIN
	IF TG_OP = 'INSERT' AND dalgo.restoring() THEN RETURN NEW; END IF;	-- restored as dumped
	-- The output table name is checked on every insert and update, whatever changed
	-- (a move to another organization is refused by the tenant_fixed trigger).
	IF NEW.deleted_at IS NULL AND NEW.output_table_name IS NOT NULL
	   AND (TG_OP = 'INSERT' OR NEW.organization_id = OLD.organization_id) THEN
		PERFORM dalgo_internal.check_warehouse_table_name(NEW.organization_id, NEW.output_table_name, NULL, NEW.id, NULL);
	END IF;
	IF TG_OP = 'UPDATE' AND NEW.recipe IS NOT DISTINCT FROM OLD.recipe THEN
		NEW.current_version := OLD.current_version;
		RETURN NEW;
	END IF;
	-- On a Citus cluster this trigger fires on the organization's shard, on a
	-- worker, while the warehouse lives on the coordinator: the recipe is
	-- then checked when it runs (build_transformation compiles it there),
	-- not here (docs/scaling.md).
	IF TG_TABLE_NAME !~ '_[0-9]+$' THEN
		PERFORM dalgo_internal.check_recipe_sql(NEW.organization_id, dalgo.compile_recipe(NEW.organization_id, NEW.recipe));
	END IF;
	deps := dalgo.recipe_dependencies(NEW.recipe);
	IF NEW.id = ANY (deps) OR EXISTS (
		WITH RECURSIVE walk(id) AS (
			SELECT unnest(deps)
			UNION
			SELECT d FROM walk JOIN dalgo.transformations t ON t.id = walk.id AND t.organization_id = NEW.organization_id,
				unnest(dalgo.recipe_dependencies(t.recipe)) d)
		SELECT FROM walk WHERE walk.id = NEW.id) THEN
		RAISE EXCEPTION 'recipe: transformation % would depend on itself (a dependency cycle)', NEW.id
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	NEW.current_version := CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE OLD.current_version + 1 END;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo_internal.check_transformation() IS
	'BEFORE trigger on transformations: the output table must belong to no other producer (every insert and update); a new or changed recipe must compile and type-check, must not create a cycle, and bumps current_version';
CREATE TRIGGER before_save BEFORE INSERT OR UPDATE ON dalgo.transformations
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.check_transformation();
COMMENT ON TRIGGER before_save ON dalgo.transformations IS 'Validates recipes and numbers versions';

CREATE FUNCTION dalgo_internal.check_source_table_name() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.deleted_at IS NULL AND NEW.warehouse_table_name IS NOT NULL
	   AND (TG_OP = 'INSERT' OR NEW.organization_id = OLD.organization_id) THEN
		PERFORM dalgo_internal.check_warehouse_table_name(NEW.organization_id, NEW.warehouse_table_name, NEW.id, NULL, NULL);
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo_internal.check_source_table_name() IS
	'BEFORE trigger on sources: the warehouse table must belong to no other producer (every insert and update)';
CREATE TRIGGER check_table_name BEFORE INSERT OR UPDATE ON dalgo.sources
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.check_source_table_name();
COMMENT ON TRIGGER check_table_name ON dalgo.sources IS 'A source''s warehouse table belongs to no transformation or output';

CREATE FUNCTION dalgo_internal.check_output_table_name() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.deleted_at IS NULL AND NEW.destination_config ? 'name'
	   AND (TG_OP = 'INSERT' OR NEW.organization_id = OLD.organization_id) THEN
		IF jsonb_typeof(NEW.destination_config->'name') <> 'string' OR NEW.destination_config->>'name' = '' THEN
			RAISE EXCEPTION 'destination_config.name must be a non-empty string' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		-- Publishing the transformation's own table claims nothing of its own.
		IF NEW.destination_config->>'name' IS DISTINCT FROM
		   (SELECT t.output_table_name FROM dalgo.transformations t
			WHERE t.id = NEW.transformation_id AND t.organization_id = NEW.organization_id) THEN
			PERFORM dalgo_internal.check_warehouse_table_name(NEW.organization_id, NEW.destination_config->>'name', NULL,
													 NEW.transformation_id, NEW.id);
		END IF;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo_internal.check_output_table_name() IS
	'BEFORE trigger on outputs: destination_config.name must belong to no other producer (every insert and update)';
CREATE TRIGGER check_table_name BEFORE INSERT OR UPDATE ON dalgo.outputs
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.check_output_table_name();
COMMENT ON TRIGGER check_table_name ON dalgo.outputs IS 'An output''s destination table belongs to no source or other transformation';

CREATE FUNCTION dalgo_internal.record_transformation_version() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	generated text;
BEGIN
	IF TG_OP = 'INSERT' AND dalgo.restoring() THEN RETURN NULL; END IF;	-- its versions are restored too
	-- No generated SQL on a Citus shard: a worker has no warehouse.
	IF TG_TABLE_NAME !~ '_[0-9]+$' THEN
		generated := dalgo.compile_recipe(NEW.organization_id, NEW.recipe);
	END IF;
	INSERT INTO dalgo.transformation_versions (organization_id, transformation_id, version_number, recipe,
											   generated_sql, created_by_id, change_description)
	VALUES (NEW.organization_id, NEW.id, NEW.current_version, NEW.recipe, generated, dalgo.current_user_id(),
			nullif(current_setting('dalgo.change_description'), ''));
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo_internal.record_transformation_version() IS
	'AFTER trigger on transformations: records a transformation_versions row for each new recipe (change_description from the setting dalgo.change_description)';
CREATE TRIGGER record_version AFTER INSERT OR UPDATE OF recipe ON dalgo.transformations
	FOR EACH ROW WHEN (NEW.current_version > 0) EXECUTE FUNCTION dalgo_internal.record_transformation_version();
COMMENT ON TRIGGER record_version ON dalgo.transformations IS 'Records versions';

-- ---------------------------------------------------------------------------
-- Runs and previews
-- ---------------------------------------------------------------------------

-- Swap a freshly built warehouse table in under its real name.
CREATE FUNCTION dalgo_internal.swap_warehouse_table(organization_id uuid, build_name text, table_name text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	by_source uuid;
	by_transformation uuid;
	by_output uuid;
	context uuid;
	claimant text;
	reg dalgo.warehouse_tables;
	dropped jsonb;
BEGIN
	-- The producer is the run the build is named after: dalgo names each
	-- build table _dalgo_build_<transformation run>, _dalgo_sync_<sync run>
	-- or _dalgo_out_<output refresh run>.
	IF build_name ~ '^_dalgo_build_[0-9a-f]{32}$' THEN
		SELECT r.transformation_id INTO by_transformation FROM dalgo.transformation_runs r
		WHERE r.id = substr(build_name, 14)::uuid AND r.organization_id = swap_warehouse_table.organization_id;
		context := by_transformation;
	ELSIF build_name ~ '^_dalgo_sync_[0-9a-f]{32}$' THEN
		SELECT r.source_id INTO by_source FROM dalgo.sync_runs r
		WHERE r.id = substr(build_name, 13)::uuid AND r.organization_id = swap_warehouse_table.organization_id;
	ELSIF build_name ~ '^_dalgo_out_[0-9a-f]{32}$' THEN
		-- The output is the run's schedule's, or, for a run queued by
		-- refresh_output_now, the one its details name.
		SELECT o.id, o.transformation_id INTO by_output, context
		FROM dalgo.transformation_runs r
		LEFT JOIN dalgo.schedules s ON s.id::text = r.details->>'schedule_id' AND s.organization_id = r.organization_id
		JOIN dalgo.outputs o ON o.id::text = coalesce(s.output_id::text, r.details->>'output_id')
			AND o.organization_id = r.organization_id
		WHERE r.id = substr(build_name, 12)::uuid AND r.organization_id = swap_warehouse_table.organization_id
		  AND o.transformation_id = r.transformation_id;
	END IF;
	IF num_nonnulls(by_source, by_transformation, by_output) <> 1 THEN
		RAISE EXCEPTION 'warehouse table build "%" belongs to no run of this organization', build_name
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- Checked again at the moment of the swap, under the organization's name lock.
	claimant := dalgo_internal.warehouse_table_claimant(organization_id, table_name, by_source, context, by_output);
	IF claimant IS NOT NULL THEN
		RAISE EXCEPTION 'warehouse table "%" belongs to %; it is not replaced', table_name, claimant
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	SELECT * INTO reg FROM dalgo.warehouse_tables w
	WHERE w.organization_id = swap_warehouse_table.organization_id AND w.table_name = swap_warehouse_table.table_name
	  AND w.deleted_at IS NULL
	FOR UPDATE;
	-- A table may be replaced only by the producer that made it.
	IF to_regclass(format('%I.%I', schema_name, table_name)) IS NOT NULL
	   AND (reg.id IS NULL OR reg.source_id IS DISTINCT FROM by_source
			OR reg.transformation_id IS DISTINCT FROM by_transformation OR reg.output_id IS DISTINCT FROM by_output) THEN
		RAISE EXCEPTION 'warehouse table "%" was not produced by this %; it is not replaced', table_name,
			CASE WHEN by_source IS NOT NULL THEN 'source' WHEN by_transformation IS NOT NULL THEN 'transformation' ELSE 'output' END
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = CASE WHEN reg.id IS NULL THEN 'The table is not registered in dalgo.warehouse_tables.'
						   ELSE 'dalgo.warehouse_tables records another producer for it.' END;
	END IF;
	-- Output views over the table depend on it: drop them around the swap
	-- (in this transaction, so readers never miss them).
	dropped := dalgo_internal.drop_output_views(organization_id, ARRAY[table_name]);
	PERFORM dalgo_internal.warehouse_execute(organization_id, format('DROP TABLE IF EXISTS %I.%I', schema_name, table_name));
	PERFORM dalgo_internal.warehouse_execute(organization_id, format('ALTER TABLE %I.%I RENAME TO %I', schema_name, build_name, table_name));
	PERFORM dalgo_internal.restore_output_views(organization_id, dropped);
	-- Record the producer (row count and size follow in register_warehouse_table).
	IF reg.id IS NOT NULL THEN
		UPDATE dalgo.warehouse_tables w SET source_id = by_source, transformation_id = by_transformation,
			output_id = by_output, last_updated_at = now()
		WHERE w.id = reg.id;
	ELSE
		INSERT INTO dalgo.warehouse_tables (organization_id, warehouse_connection_id, table_name, source_id,
											transformation_id, output_id, last_updated_at)
		SELECT swap_warehouse_table.organization_id, c.id, swap_warehouse_table.table_name, by_source,
			by_transformation, by_output, now()
		FROM dalgo.warehouse_connections c
		WHERE c.organization_id = swap_warehouse_table.organization_id AND c.deleted_at IS NULL;
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.swap_warehouse_table(uuid, text, text) IS
	'Internal: replace a warehouse table by a freshly built one, atomically; only the producer (source, transformation or output) that the build''s run names, whose name no other producer claims, and that produced the existing table, if any; records it in warehouse_tables';

CREATE FUNCTION dalgo_internal.build_transformation(transformation_id uuid, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t dalgo.transformations;
	sql text;
	schema_name text;
	build_name text := '_dalgo_build_' || replace(run_id::text, '-', '');
	n bigint;
	err text;
	stamp timestamptz;
BEGIN
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = build_transformation.transformation_id;
	UPDATE dalgo.transformation_runs r SET version_number = t.current_version
	WHERE r.organization_id = t.organization_id AND r.id = run_id;
	BEGIN
		IF t.output_table_name IS NULL THEN
			RAISE EXCEPTION 'transformation % has no output_table_name', t.id USING ERRCODE = 'invalid_parameter_value';
		END IF;
		schema_name := dalgo.ensure_warehouse(t.organization_id);
		-- Tables that reached the warehouse where the event trigger did not see them.
		PERFORM dalgo_internal.adopt_warehouse_tables(t.organization_id);
		sql := dalgo.compile_recipe(t.organization_id, t.recipe);
		-- Build under a private name, then swap: readers never see a half-built table,
		-- and a failure leaves the previous output as it was.
		n := dalgo_internal.warehouse_execute(t.organization_id, format('CREATE TABLE %I.%I AS %s', schema_name, build_name, sql));
		PERFORM dalgo_internal.check_warehouse_quota(t.organization_id, t.output_table_name);
		PERFORM dalgo_internal.swap_warehouse_table(t.organization_id, build_name, t.output_table_name);
		PERFORM dalgo_internal.register_warehouse_table(t.organization_id, t.output_table_name, NULL, t.id, n);
		UPDATE dalgo.transformations x SET last_run_at = now() WHERE x.organization_id = t.organization_id AND x.id = t.id;
		-- completed_at computed once: Citus refuses a volatile function in an UPDATE.
		stamp := clock_timestamp();
		UPDATE dalgo.transformation_runs r SET status = 'success', completed_at = stamp,
			rows_affected = least(n, 2147483647), executed_sql = sql
		WHERE r.organization_id = t.organization_id AND r.id = run_id;
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS err = MESSAGE_TEXT;
		stamp := clock_timestamp();
		UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = stamp,
			error_message = err, executed_sql = sql
		WHERE r.id = run_id;
		RAISE WARNING 'transformation run % failed: %', run_id, err;
	END;
END
$$;
COMMENT ON FUNCTION dalgo_internal.build_transformation(uuid, uuid) IS
	'Internal: build a transformation''s output for an existing run row (atomic swap) and record the outcome on it';

CREATE FUNCTION dalgo.run_transformation(transformation_id uuid, with_upstream boolean DEFAULT false)
	RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t dalgo.transformations;
	run_id uuid;
	up record;
BEGIN
	SELECT * INTO t FROM dalgo.transformations x
	WHERE x.id = run_transformation.transformation_id AND x.deleted_at IS NULL;
	IF NOT FOUND OR NOT dalgo.caller_may(t.organization_id, 'viewer') THEN
		RAISE EXCEPTION 'transformation % does not exist', transformation_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT dalgo.caller_may(t.organization_id, 'member') THEN
		RAISE EXCEPTION 'running a transformation needs the member role' USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM dalgo_internal.check_run_quota(t.organization_id);
	-- The run_seconds quota caps this call with its upstream (the outermost cap wins).
	PERFORM dalgo_internal.cap_statement_deadline(dalgo_internal.organization_quota(t.organization_id, 'run_seconds'));
	BEGIN
		IF with_upstream THEN
			-- transformation_upstream refuses a dependency outside the organization;
			-- checked again here for each run, identity or not.
			FOR up IN SELECT u.id, x.organization_id FROM dalgo.transformation_upstream(t.id) u
					  LEFT JOIN dalgo.transformations x ON x.id = u.id LOOP
				IF up.organization_id IS DISTINCT FROM t.organization_id THEN
					RAISE EXCEPTION 'transformation % reads %, which is not a transformation of its organization', t.id, up.id
						USING ERRCODE = 'invalid_parameter_value';
				END IF;
				PERFORM dalgo.run_transformation(up.id, false);
			END LOOP;
		END IF;
		INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, version_number, status, started_at,
											   triggered_by_id, details)
		VALUES (t.organization_id, t.id, t.current_version, 'running', clock_timestamp(), dalgo.current_user_id(),
				jsonb_build_object('runner_pid', pg_backend_pid()))
		RETURNING id INTO run_id;
		PERFORM dalgo_internal.build_transformation(t.id, run_id);
	EXCEPTION WHEN query_canceled THEN
		IF dalgo_internal.run_time_quota_hit() THEN
			RAISE EXCEPTION 'quota run_seconds exceeded: the run with its upstream took more than % seconds',
				dalgo_internal.organization_quota(t.organization_id, 'run_seconds')
				USING ERRCODE = 'configuration_limit_exceeded',
					  HINT = 'Split the work, or ask a superuser to raise the quota.';
		END IF;
		RAISE;
	END;
	RETURN run_id;
END
$$;
COMMENT ON FUNCTION dalgo.run_transformation(uuid, boolean) IS
	'Build a transformation''s output table (atomic swap) and record the run; with_upstream runs what it reads first. Members and above. A failure is recorded on the run row, reported as a WARNING, and leaves the previous output intact';

CREATE FUNCTION dalgo.preview_recipe(organization_id uuid, recipe jsonb, row_limit integer DEFAULT 50)
	RETURNS SETOF jsonb
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT dalgo.caller_may(organization_id, 'viewer') THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF row_limit IS NULL OR row_limit < 1 OR row_limit > 10000 THEN
		RAISE EXCEPTION 'row_limit must be between 1 and 10000' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM dalgo.ensure_warehouse(organization_id);
	RETURN QUERY SELECT * FROM dalgo_internal.warehouse_query(organization_id, dalgo.compile_recipe(organization_id, recipe), row_limit);
END
$$;
COMMENT ON FUNCTION dalgo.preview_recipe(uuid, jsonb, integer) IS
	'The first row_limit rows of a recipe''s result, as jsonb, for the editor''s live preview; members of the organization only; runs in the organization''s warehouse';

CREATE FUNCTION dalgo.read_warehouse_table(organization_id uuid, table_name text, row_limit integer DEFAULT 100,
										   key_column text DEFAULT NULL, after jsonb DEFAULT NULL)
	RETURNS SETOF jsonb
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	steps jsonb := '[]';
BEGIN
	-- Keyset paging: rows in key_column order, after the key of the previous
	-- page's last row; the compiler checks the column and quotes the value.
	IF after IS NOT NULL AND key_column IS NULL THEN
		RAISE EXCEPTION 'after needs key_column, the column the pages are ordered by'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF after IS NOT NULL AND jsonb_typeof(after) NOT IN ('string', 'number', 'boolean') THEN
		RAISE EXCEPTION 'after must be the key of the last row read: a string, a number or a boolean'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF key_column IS NOT NULL THEN
		IF after IS NOT NULL THEN
			steps := steps || jsonb_build_array(jsonb_build_object('type', 'filter', 'conditions',
				jsonb_build_array(jsonb_build_object('column', key_column, 'op', 'gt', 'value', jsonb_build_object('val', after)))));
		END IF;
		steps := steps || jsonb_build_array(jsonb_build_object('type', 'sort', 'by',
			jsonb_build_array(jsonb_build_object('column', key_column))));
	END IF;
	RETURN QUERY SELECT * FROM dalgo.preview_recipe(organization_id,
		jsonb_build_object('version', 1, 'source', jsonb_build_object('table', table_name), 'steps', steps), row_limit);
END
$$;
COMMENT ON FUNCTION dalgo.read_warehouse_table(uuid, text, integer, text, jsonb) IS
	'The rows of one of the organization''s warehouse tables, for its members, at most row_limit (1 to 10,000). Keyset paging: with key_column the rows come in its order, and after (the key of the previous page''s last row) starts the page after it; the key should be unique and not null';

REVOKE ALL ON FUNCTION dalgo.compile_recipe(uuid, jsonb), dalgo_internal.warehouse_execute(uuid, text),
	dalgo_internal.warehouse_query(uuid, text, integer), dalgo.caller_may(uuid, dalgo.member_role),
	dalgo.ensure_warehouse(uuid), dalgo_internal.create_warehouse_for_connection(),
	dalgo_internal.register_warehouse_table(uuid, text, uuid, uuid, bigint), dalgo.recipe_dependencies(jsonb),
	dalgo.transformation_upstream(uuid), dalgo_internal.check_recipe_sql(uuid, text), dalgo_internal.check_transformation(),
	dalgo_internal.record_transformation_version(), dalgo.run_transformation(uuid, boolean), dalgo_internal.build_transformation(uuid, uuid),
	dalgo_internal.swap_warehouse_table(uuid, text, text),
	dalgo.preview_recipe(uuid, jsonb, integer), dalgo.read_warehouse_table(uuid, text, integer, text, jsonb),
	dalgo_internal.warehouse_table_claimant(uuid, text, uuid, uuid, uuid), dalgo_internal.check_warehouse_table_name(uuid, text, uuid, uuid, uuid),
	dalgo_internal.check_source_table_name(), dalgo_internal.check_output_table_name()
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.compile_recipe(uuid, jsonb), dalgo.caller_may(uuid, dalgo.member_role),
	dalgo.ensure_warehouse(uuid), dalgo.recipe_dependencies(jsonb), dalgo.transformation_upstream(uuid),
	dalgo.run_transformation(uuid, boolean),
	dalgo.preview_recipe(uuid, jsonb, integer), dalgo.read_warehouse_table(uuid, text, integer, text, jsonb)
	TO dalgo_authenticated, dalgo_service;

-- ---------------------------------------------------------------------------
-- Value guards: the steps and functions of a recipe that can build a value
-- larger than their inputs call these (compiled SQL names them), which refuse
-- a result over max_value_bytes (docs/recipes-limits.md).  The warehouse
-- roles run them, so the schema is usable by everyone; it holds only these.
-- ---------------------------------------------------------------------------

CREATE SCHEMA dalgo_recipe;
COMMENT ON SCHEMA dalgo_recipe IS 'dalgo: size-guarded text functions that compiled recipe SQL calls';
GRANT USAGE ON SCHEMA dalgo_recipe TO PUBLIC;

CREATE FUNCTION dalgo_recipe.concat(VARIADIC "any") RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_concat'
	LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.concat("any") IS
	'CONCAT that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.concat_ws(text, VARIADIC "any") RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_concat_ws'
	LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.concat_ws(text, "any") IS
	'CONCAT_WS that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.replace(text, text, text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_replace'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.replace(text, text, text) IS
	'REPLACE that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.lpad(text, integer) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_lpad'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.lpad(text, integer) IS
	'LPAD that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.lpad(text, integer, text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_lpad'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.lpad(text, integer, text) IS
	'LPAD that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.rpad(text, integer) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_rpad'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.rpad(text, integer) IS
	'RPAD that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.rpad(text, integer, text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_rpad'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.rpad(text, integer, text) IS
	'RPAD that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
