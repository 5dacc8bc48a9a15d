-- journeys.sql: what completes the journeys of a data team (issue 14):
-- versions that can be used (revert, diff), lineage and impact, export, syncs
-- and refreshes on demand, and failure alerts.  docs/journeys.md walks
-- through them.

-- ---------------------------------------------------------------------------
-- Versions
-- ---------------------------------------------------------------------------

-- Version rows are written only by the record_version trigger
-- (transformation_versions grants no INSERT to any app role): a revert is a
-- save of the old recipe, which numbers and records the new version itself.
CREATE FUNCTION dalgo.revert_transformation(transformation_id uuid, version integer) RETURNS integer
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t dalgo.transformations;
	old_recipe jsonb;
	previous text := current_setting('dalgo.change_description');
	new_version integer;
BEGIN
	SELECT * INTO t FROM dalgo.transformations x
	WHERE x.id = revert_transformation.transformation_id AND x.deleted_at IS NULL;
	IF NOT FOUND OR NOT dalgo.caller_may(t.organization_id, 'viewer') THEN
		RAISE EXCEPTION 'transformation % does not exist', transformation_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT dalgo.caller_may(t.organization_id, 'member') THEN
		RAISE EXCEPTION 'reverting a transformation needs the member role' USING ERRCODE = 'insufficient_privilege';
	END IF;
	SELECT v.recipe INTO old_recipe FROM dalgo.transformation_versions v
	WHERE v.transformation_id = t.id AND v.organization_id = t.organization_id
	  AND v.version_number = revert_transformation.version AND v.deleted_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'transformation % has no version %', transformation_id, version
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = format('Its versions are 1 to %s.', t.current_version);
	END IF;
	IF old_recipe = t.recipe THEN
		RAISE NOTICE 'version % is the current recipe of transformation %; nothing saved', version, t.id;
		RETURN t.current_version;
	END IF;
	-- The save's own triggers check the recipe, number the version and record
	-- it, with the caller as its author.
	PERFORM set_config('dalgo.change_description',
					   coalesce(nullif(previous, ''), format('revert to version %s', version)), true);
	UPDATE dalgo.transformations x SET recipe = old_recipe WHERE x.organization_id = t.organization_id AND x.id = t.id
	RETURNING x.current_version INTO new_version;
	PERFORM set_config('dalgo.change_description', previous, true);
	RETURN new_version;
END
$$;
COMMENT ON FUNCTION dalgo.revert_transformation(uuid, integer) IS
	'Save an earlier version''s recipe as the transformation''s new version (checked, numbered and recorded like any save; change_description "revert to version N" unless dalgo.change_description is set); returns the new version number. Members and above';

-- A step-by-step diff: the two step lists are aligned on their longest
-- common subsequence (equal steps); in each gap between aligned steps a
-- removed and an added step of the same type are one changed step.
CREATE FUNCTION dalgo.diff_versions(transformation_id uuid, a integer, b integer) RETURNS jsonb
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
	ra jsonb;
	rb jsonb;
	sa jsonb;
	sb jsonb;
	n integer;
	m integer;
	l integer[];
	i integer;
	j integer;
	ops jsonb := '[]';
	removed integer[] := '{}';
	added integer[] := '{}';
	out jsonb := '[]';
	k integer;
	q integer;
	used boolean[];
	changed_keys jsonb;
	other jsonb;
	ta text[];
	tb text[];
BEGIN
	SELECT x.organization_id INTO org FROM dalgo.transformations x
	WHERE x.id = diff_versions.transformation_id AND x.deleted_at IS NULL;
	IF NOT FOUND OR NOT dalgo.caller_may(org, 'viewer') THEN
		RAISE EXCEPTION 'transformation % does not exist', transformation_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT v.recipe INTO ra FROM dalgo.transformation_versions v
	WHERE v.transformation_id = diff_versions.transformation_id AND v.organization_id = org AND v.version_number = a;
	SELECT v.recipe INTO rb FROM dalgo.transformation_versions v
	WHERE v.transformation_id = diff_versions.transformation_id AND v.organization_id = org AND v.version_number = b;
	IF ra IS NULL OR rb IS NULL THEN
		RAISE EXCEPTION 'transformation % has no version %', transformation_id, CASE WHEN ra IS NULL THEN a ELSE b END
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	sa := CASE WHEN jsonb_typeof(ra->'steps') = 'array' THEN ra->'steps' ELSE '[]' END;
	sb := CASE WHEN jsonb_typeof(rb->'steps') = 'array' THEN rb->'steps' ELSE '[]' END;
	n := jsonb_array_length(sa);
	m := jsonb_array_length(sb);
	-- Steps compared as their canonical jsonb text (equal jsonb, equal text).
	ta := ARRAY(SELECT e::text FROM jsonb_array_elements(sa) WITH ORDINALITY x(e, ord) ORDER BY x.ord);
	tb := ARRAY(SELECT e::text FROM jsonb_array_elements(sb) WITH ORDINALITY x(e, ord) ORDER BY x.ord);
	-- l[(i)*(m+1)+j+1]: length of the longest common subsequence of sa[i:] and sb[j:].
	l := array_fill(0, ARRAY[(n + 1) * (m + 1)]);
	FOR i IN REVERSE n - 1..0 LOOP
		FOR j IN REVERSE m - 1..0 LOOP
			IF ta[i + 1] = tb[j + 1] THEN
				l[i * (m + 1) + j + 1] := l[(i + 1) * (m + 1) + j + 2] + 1;
			ELSE
				l[i * (m + 1) + j + 1] := greatest(l[(i + 1) * (m + 1) + j + 1], l[i * (m + 1) + j + 2]);
			END IF;
		END LOOP;
	END LOOP;
	-- Walk the alignment; flush each gap's removed and added steps at an equal step and at the end.
	i := 0;
	j := 0;
	LOOP
		IF i < n AND j < m AND ta[i + 1] = tb[j + 1] THEN
			ops := ops || jsonb_build_object('r', to_jsonb(removed), 'a', to_jsonb(added));
			removed := '{}';
			added := '{}';
			i := i + 1;
			j := j + 1;
		ELSIF j < m AND (i >= n OR l[i * (m + 1) + j + 2] >= l[(i + 1) * (m + 1) + j + 1]) THEN
			added := added || j;
			j := j + 1;
		ELSIF i < n THEN
			removed := removed || i;
			i := i + 1;
		ELSE
			EXIT;
		END IF;
	END LOOP;
	ops := ops || jsonb_build_object('r', to_jsonb(removed), 'a', to_jsonb(added));
	-- Each gap: pair a removed step with the first unpaired added step of the same type.
	FOR k IN 0..jsonb_array_length(ops) - 1 LOOP
		removed := ARRAY(SELECT jsonb_array_elements_text(ops->k->'r')::integer);
		added := ARRAY(SELECT jsonb_array_elements_text(ops->k->'a')::integer);
		used := array_fill(false, ARRAY[greatest(cardinality(added), 1)]);
		FOR i IN 1..cardinality(removed) LOOP
			q := NULL;
			FOR j IN 1..cardinality(added) LOOP
				IF NOT used[j] AND sa->removed[i]->'type' = sb->added[j]->'type' THEN
					q := j;
					EXIT;
				END IF;
			END LOOP;
			IF q IS NULL THEN
				out := out || jsonb_build_object('change', 'removed', 'position_a', removed[i] + 1, 'type', sa->removed[i]->'type',
												 'step', sa->removed[i]);
			ELSE
				used[q] := true;
				SELECT coalesce(jsonb_agg(key ORDER BY key), '[]') INTO changed_keys
				FROM (SELECT key FROM jsonb_object_keys(CASE WHEN jsonb_typeof(sa->removed[i]) = 'object' THEN sa->removed[i] ELSE '{}' END) key
					  UNION SELECT key FROM jsonb_object_keys(CASE WHEN jsonb_typeof(sb->added[q]) = 'object' THEN sb->added[q] ELSE '{}' END) key) ks
				WHERE sa->removed[i]->key IS DISTINCT FROM sb->added[q]->key;
				out := out || jsonb_build_object('change', 'changed', 'position_a', removed[i] + 1, 'position_b', added[q] + 1,
												 'type', sa->removed[i]->'type', 'keys', changed_keys,
												 'from', sa->removed[i], 'to', sb->added[q]);
			END IF;
		END LOOP;
		FOR j IN 1..cardinality(added) LOOP
			IF NOT used[j] THEN
				out := out || jsonb_build_object('change', 'added', 'position_b', added[j] + 1, 'type', sb->added[j]->'type',
												 'step', sb->added[j]);
			END IF;
		END LOOP;
	END LOOP;
	-- What changed outside the steps (the source, the version field...).
	SELECT coalesce(jsonb_object_agg(key, jsonb_build_object('from', ra->key, 'to', rb->key)), '{}') INTO other
	FROM (SELECT jsonb_object_keys(ra) AS key UNION SELECT jsonb_object_keys(rb)) ks
	WHERE key <> 'steps' AND ra->key IS DISTINCT FROM rb->key;
	RETURN jsonb_build_object(
		'transformation_id', transformation_id, 'a', a, 'b', b,
		'recipe', other,
		'steps', out,
		'summary', jsonb_build_object(
			'added', (SELECT count(*) FROM jsonb_array_elements(out) e WHERE e->>'change' = 'added'),
			'removed', (SELECT count(*) FROM jsonb_array_elements(out) e WHERE e->>'change' = 'removed'),
			'changed', (SELECT count(*) FROM jsonb_array_elements(out) e WHERE e->>'change' = 'changed'),
			'unchanged', l[1]));
END
$$;
COMMENT ON FUNCTION dalgo.diff_versions(uuid, integer, integer) IS
	'What changed from version a to version b of a transformation, step by step, as jsonb: steps added, removed and changed (with the keys that changed; steps aligned on the longest run of equal steps), other recipe keys that changed (the source), and a summary. Members of its organization';

-- ---------------------------------------------------------------------------
-- Lineage
-- ---------------------------------------------------------------------------

-- Every relation a recipe reads, from where the recipe contract allows one:
-- the source, a join's "with" and each of a union's "with" sources; each as
-- (kind, value) with kind source_id, transformation_id or table.
CREATE FUNCTION dalgo_internal.recipe_references(recipe jsonb) RETURNS TABLE (ref_kind text, ref text)
	LANGUAGE sql IMMUTABLE PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
AS $$
	WITH src(obj) AS (
		SELECT recipe->'source' WHERE jsonb_typeof(recipe) = 'object'
		UNION ALL
		SELECT s->'with' FROM jsonb_array_elements(CASE WHEN jsonb_typeof(recipe->'steps') = 'array' THEN recipe->'steps' ELSE '[]' END) s
		WHERE jsonb_typeof(s) = 'object' AND s->>'type' = 'join'
		UNION ALL
		SELECT w FROM jsonb_array_elements(CASE WHEN jsonb_typeof(recipe->'steps') = 'array' THEN recipe->'steps' ELSE '[]' END) s,
			jsonb_array_elements(CASE WHEN jsonb_typeof(s->'with') = 'array' THEN s->'with' ELSE '[]' END) w
		WHERE jsonb_typeof(s) = 'object' AND s->>'type' = 'union')
	SELECT DISTINCT k, obj->>k FROM src, unnest(ARRAY['source_id', 'transformation_id', 'table']) k
	WHERE jsonb_typeof(obj) = 'object' AND jsonb_typeof(obj->k) = 'string'
$$;
COMMENT ON FUNCTION dalgo_internal.recipe_references(jsonb) IS
	'Internal: every relation a recipe reads (source, join.with, union.with[]), as (source_id | transformation_id | table, value)';

-- The whole graph of one organization.  A warehouse table's node id is its
-- dalgo.warehouse_tables id, or, for a table not registered there (not yet
-- built, or made outside dalgo), a uuid derived from the organization and
-- the name.
CREATE FUNCTION dalgo_internal.lineage_graph(organization_id uuid)
	RETURNS TABLE (node_type text, id uuid, name text, depends_on uuid[])
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	-- PL/pgSQL, not SQL: Citus plans a SQL function's body with its
	-- parameters unbound, and cannot route that to the organization's shard.
	RETURN QUERY
	WITH
	src AS (SELECT s.id, s.name,
				   coalesce(s.warehouse_table_name, 'source_' || left(replace(s.id::text, '-', ''), 12)) AS table_name
			FROM dalgo.sources s WHERE s.organization_id = lineage_graph.organization_id AND s.deleted_at IS NULL),
	tr AS (SELECT t.id, t.name, t.recipe, t.output_table_name
		   FROM dalgo.transformations t WHERE t.organization_id = lineage_graph.organization_id AND t.deleted_at IS NULL),
	outp AS (SELECT o.id, o.name, o.transformation_id, o.destination_config->>'name' AS dest
			 FROM dalgo.outputs o JOIN tr ON tr.id = o.transformation_id
			 WHERE o.organization_id = lineage_graph.organization_id AND o.deleted_at IS NULL),
	refs AS (SELECT tr.id AS tid, r.ref_kind, r.ref FROM tr, dalgo_internal.recipe_references(tr.recipe) r),
	-- Every table name any node produces or reads.
	names AS (SELECT table_name AS n FROM src
			  UNION SELECT output_table_name FROM tr WHERE output_table_name IS NOT NULL
			  UNION SELECT dest FROM outp WHERE dest IS NOT NULL
			  UNION SELECT ref FROM refs WHERE ref_kind = 'table'),
	tbl AS (SELECT names.n, coalesce(
				(SELECT w.id FROM dalgo.warehouse_tables w
				 WHERE w.organization_id = lineage_graph.organization_id AND w.table_name = names.n AND w.deleted_at IS NULL
				 ORDER BY w.created_at LIMIT 1),
				md5('dalgo warehouse table ' || lineage_graph.organization_id::text || '/' || names.n)::uuid) AS tid
			FROM names),
	edges AS (
		SELECT 'source'::text AS node_type, src.id, src.name, NULL::uuid AS dep FROM src
		UNION ALL
		SELECT 'warehouse_table', tbl.tid, src.table_name, src.id FROM src JOIN tbl ON tbl.n = src.table_name
		UNION ALL
		SELECT 'transformation', tr.id, tr.name, NULL FROM tr
		UNION ALL
		-- A transformation reads tables: a source's, another transformation's
		-- output table (or the transformation, if it has none), or a table by name.
		SELECT 'transformation', refs.tid, tr.name,
			CASE refs.ref_kind
				WHEN 'table' THEN (SELECT tbl.tid FROM tbl WHERE tbl.n = refs.ref)
				WHEN 'source_id' THEN (SELECT tbl.tid FROM src JOIN tbl ON tbl.n = src.table_name WHERE src.id::text = refs.ref)
				ELSE (SELECT coalesce((SELECT tbl.tid FROM tbl WHERE tbl.n = up.output_table_name), up.id)
					  FROM tr up WHERE up.id::text = refs.ref) END
		FROM refs JOIN tr ON tr.id = refs.tid
		UNION ALL
		SELECT 'warehouse_table', tbl.tid, tr.output_table_name, tr.id FROM tr JOIN tbl ON tbl.n = tr.output_table_name
		UNION ALL
		SELECT 'output', outp.id, outp.name, outp.transformation_id FROM outp
		UNION ALL
		SELECT 'warehouse_table', tbl.tid, outp.dest, outp.id
		FROM outp JOIN tr ON tr.id = outp.transformation_id JOIN tbl ON tbl.n = outp.dest
		WHERE outp.dest IS DISTINCT FROM tr.output_table_name
		UNION ALL
		SELECT 'warehouse_table', tbl.tid, tbl.n, NULL FROM tbl
		UNION ALL
		SELECT 'schedule', s.id, format('%s at %s (%s)', s.frequency, to_char(s.run_at_time, 'HH24:MI'), s.timezone),
			coalesce(s.source_id, s.output_id)
		FROM dalgo.schedules s
		WHERE s.organization_id = lineage_graph.organization_id AND s.deleted_at IS NULL
		  AND (s.source_id IN (SELECT src.id FROM src) OR s.output_id IN (SELECT outp.id FROM outp)))
	SELECT min(e.node_type), e.id, min(e.name),
		coalesce(array_agg(DISTINCT e.dep ORDER BY e.dep) FILTER (WHERE e.dep IS NOT NULL), '{}')
	FROM edges e GROUP BY e.id;
END
$$;
COMMENT ON FUNCTION dalgo_internal.lineage_graph(uuid) IS
	'Internal: the lineage graph of an organization''s live objects: (node_type, id, name, depends_on)';

-- The organization of a lineage node, for impact(): the object's own row.
CREATE FUNCTION dalgo_internal.lineage_node_organization(node_id uuid) RETURNS uuid
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
BEGIN
	-- One statement per table, in this order (Citus plans each on its own).
	SELECT x.organization_id INTO org FROM dalgo.sources x WHERE x.id = node_id AND x.deleted_at IS NULL;
	IF org IS NULL THEN
		SELECT x.organization_id INTO org FROM dalgo.transformations x WHERE x.id = node_id AND x.deleted_at IS NULL;
	END IF;
	IF org IS NULL THEN
		SELECT x.organization_id INTO org FROM dalgo.outputs x WHERE x.id = node_id AND x.deleted_at IS NULL;
	END IF;
	IF org IS NULL THEN
		SELECT x.organization_id INTO org FROM dalgo.schedules x WHERE x.id = node_id AND x.deleted_at IS NULL;
	END IF;
	IF org IS NULL THEN
		SELECT x.organization_id INTO org FROM dalgo.warehouse_tables x WHERE x.id = node_id AND x.deleted_at IS NULL;
	END IF;
	RETURN org;
END
$$;
COMMENT ON FUNCTION dalgo_internal.lineage_node_organization(uuid) IS
	'Internal: the organization of a source, transformation, output, schedule or registered warehouse table';

CREATE FUNCTION dalgo.lineage(organization_id uuid, node_id uuid DEFAULT NULL, direction text DEFAULT 'both')
	RETURNS TABLE (node_type text, id uuid, name text, depends_on uuid[])
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF organization_id IS NULL OR NOT dalgo.caller_may(organization_id, 'viewer') THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF direction IS NULL OR direction NOT IN ('both', 'upstream', 'downstream') THEN
		RAISE EXCEPTION 'direction must be both, upstream or downstream' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF node_id IS NULL THEN
		RETURN QUERY SELECT g.* FROM dalgo_internal.lineage_graph(organization_id) g ORDER BY g.node_type, g.name, g.id;
		RETURN;
	END IF;
	IF NOT EXISTS (SELECT FROM dalgo_internal.lineage_graph(organization_id) g WHERE g.id = node_id) THEN
		RAISE EXCEPTION 'node % is not in the lineage of organization %', node_id, organization_id
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN QUERY
		WITH RECURSIVE g AS MATERIALIZED (SELECT * FROM dalgo_internal.lineage_graph(organization_id)),
		up(id) AS (SELECT lineage.node_id WHERE direction IN ('both', 'upstream')
				   UNION SELECT d FROM up JOIN g ON g.id = up.id, unnest(g.depends_on) d),
		down(id) AS (SELECT lineage.node_id WHERE direction IN ('both', 'downstream')
					 UNION SELECT g.id FROM down JOIN g ON down.id = ANY (g.depends_on))
		SELECT g.* FROM g WHERE g.id IN (SELECT up.id FROM up UNION SELECT down.id FROM down)
		ORDER BY g.node_type, g.name, g.id;
END
$$;
COMMENT ON FUNCTION dalgo.lineage(uuid, uuid, text) IS
	'The lineage graph of an organization: sources, warehouse tables, transformations (every source, join, union and transformation reference of their recipes), outputs and schedules, as (node_type, id, name, depends_on); with node_id, only what it depends on (upstream), what depends on it (downstream), or both. Members of the organization';

CREATE FUNCTION dalgo.impact(node_id uuid)
	RETURNS TABLE (run_order integer, node_type text, id uuid, name text)
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := dalgo_internal.lineage_node_organization(node_id);
	g jsonb;
	down uuid[];
	levels jsonb;
	step jsonb;
BEGIN
	IF org IS NULL OR NOT dalgo.caller_may(org, 'viewer') THEN
		RAISE EXCEPTION 'node % does not exist or you are not a member of its organization', node_id
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT jsonb_object_agg(l.id, jsonb_build_object('t', l.node_type, 'n', l.name, 'd', to_jsonb(l.depends_on)))
	INTO g FROM dalgo_internal.lineage_graph(org) l;
	-- Everything downstream (a set: no path is walked twice).
	WITH RECURSIVE d(id) AS (
		SELECT impact.node_id
		UNION
		SELECT k::uuid FROM d, jsonb_each(g) e(k, v)
		WHERE v->'d' ? d.id::text)
	SELECT array_agg(d.id) INTO down FROM d;
	-- run_order: the longest path from node_id, level by level (each node
	-- after everything it reads); what a cycle leaves comes last.
	levels := jsonb_build_object(node_id::text, 0);
	LOOP
		SELECT jsonb_object_agg(x.id, x.lvl) INTO step
		FROM (SELECT u.id, max((levels->>dep)::integer) + 1 AS lvl
			  FROM unnest(down) u(id), jsonb_array_elements_text(g->u.id::text->'d') dep
			  WHERE NOT levels ? u.id::text AND dep::uuid = ANY (down)
			  GROUP BY u.id
			  HAVING bool_and(levels ? dep)) x;
		EXIT WHEN step IS NULL;
		levels := levels || step;
	END LOOP;
	RETURN QUERY
		SELECT coalesce((levels->>u.id::text)::integer,
						(SELECT max(v::text::integer) + 1 FROM jsonb_each(levels) e(k, v))),
			   g->u.id::text->>'t', u.id, g->u.id::text->>'n'
		FROM unnest(down) u(id)
		WHERE u.id <> impact.node_id
		ORDER BY 1, 2, 4, 3;
END
$$;
COMMENT ON FUNCTION dalgo.impact(uuid) IS
	'Everything downstream of a source, warehouse table, transformation or output that a change would touch, in run order (run_order 1 first); members of its organization';

CREATE FUNCTION dalgo.lineage_dot(organization_id uuid) RETURNS text
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	dot text;
BEGIN
	IF organization_id IS NULL OR NOT dalgo.caller_may(organization_id, 'viewer') THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- Names are users' text: in a DOT string only backslash, double quote and
	-- line breaks need escaping.
	WITH g AS MATERIALIZED (SELECT * FROM dalgo_internal.lineage_graph(organization_id))
	SELECT concat_ws(E'\n',
		'digraph lineage {',
		'  rankdir=LR;',
		'  node [fontname="Helvetica", fontsize=11];',
		(SELECT string_agg(format('  "%s" [label="%s\n%s", shape=%s, style=filled, fillcolor="%s"];', g.id,
								  replace(g.node_type, '_', ' '),
								  replace(replace(replace(replace(g.name, '\', '\\'), '"', '\"'), E'\r', ''), E'\n', '\n'),
								  CASE g.node_type WHEN 'source' THEN 'cylinder' WHEN 'warehouse_table' THEN 'box'
									   WHEN 'transformation' THEN 'ellipse' WHEN 'output' THEN 'note' ELSE 'octagon' END,
								  CASE g.node_type WHEN 'source' THEN '#cfe2f3' WHEN 'warehouse_table' THEN '#eeeeee'
									   WHEN 'transformation' THEN '#d9ead3' WHEN 'output' THEN '#fff2cc' ELSE '#f4cccc' END),
						  E'\n' ORDER BY g.node_type, g.name, g.id) FROM g),
		(SELECT string_agg(format('  "%s" -> "%s";', d, g.id), E'\n' ORDER BY g.id, d) FROM g, unnest(g.depends_on) d),
		'}') INTO dot;
	RETURN dot;
END
$$;
COMMENT ON FUNCTION dalgo.lineage_dot(uuid) IS
	'The lineage graph of an organization as Graphviz DOT (dot -Tsvg renders it); members of the organization';

REVOKE ALL ON FUNCTION dalgo.revert_transformation(uuid, integer), dalgo.diff_versions(uuid, integer, integer),
	dalgo_internal.recipe_references(jsonb), dalgo_internal.lineage_graph(uuid), dalgo_internal.lineage_node_organization(uuid),
	dalgo.lineage(uuid, uuid, text), dalgo.impact(uuid), dalgo.lineage_dot(uuid)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.revert_transformation(uuid, integer), dalgo.diff_versions(uuid, integer, integer),
	dalgo.lineage(uuid, uuid, text), dalgo.impact(uuid), dalgo.lineage_dot(uuid)
	TO dalgo_authenticated, dalgo_service;

-- ---------------------------------------------------------------------------
-- Export
-- ---------------------------------------------------------------------------

-- What export_warehouse_table reads: the checks and the compiled read of
-- read_warehouse_table (membership, the warehouse, a plain table name of the
-- organization's own schema).
CREATE FUNCTION dalgo_internal.export_query(organization_id uuid, table_name text) RETURNS text
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT dalgo.caller_may(organization_id, 'viewer') THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM dalgo.ensure_warehouse(organization_id);
	RETURN dalgo.compile_recipe(organization_id,
		jsonb_build_object('version', 1, 'source', jsonb_build_object('table', table_name), 'steps', '[]'::jsonb));
END
$$;
COMMENT ON FUNCTION dalgo_internal.export_query(uuid, text) IS
	'Internal: check that the caller may read the organization''s warehouse and return the compiled read of one of its tables';

-- A C set-returning function in value-per-call mode: one line per call,
-- read through a cursor in batches of about 1 MB, so that a table of any
-- size streams in flat memory.
CREATE FUNCTION dalgo.export_warehouse_table(organization_id uuid, table_name text, format text DEFAULT 'csv')
	RETURNS SETOF text
	AS 'MODULE_PATHNAME', 'dalgo_export_warehouse_table'
	LANGUAGE C VOLATILE SECURITY DEFINER PARALLEL UNSAFE
	SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION dalgo.export_warehouse_table(uuid, text, text) IS
	'Every row of one of the organization''s warehouse tables, one line per row, without a row cap: csv (a header line, then the rows as COPY (FORMAT csv) writes them), text (COPY''s text format) or json (one object per row). Streams in flat memory (call it in the select list); read as the warehouse role, read-only, for members of the organization, like read_warehouse_table';

-- Everything of an organization but its data and its secrets.
CREATE FUNCTION dalgo.export_organization(organization_id uuid) RETURNS jsonb
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org dalgo.organizations;
BEGIN
	SELECT * INTO org FROM dalgo.organizations o WHERE o.id = export_organization.organization_id AND o.deleted_at IS NULL;
	IF NOT FOUND OR NOT dalgo.caller_may(org.id, 'viewer') THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF NOT dalgo.caller_may(org.id, 'owner') THEN
		RAISE EXCEPTION 'exporting an organization needs the owner role' USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN jsonb_build_object(
		'format', 'dalgo organization export',
		'version', 1,
		'exported_at', now(),
		'organization', jsonb_build_object('id', org.id, 'name', org.name, 'slug', org.slug, 'description', org.description,
										   'org_type', org.org_type, 'settings', org.settings, 'created_at', org.created_at),
		'members', (SELECT coalesce(jsonb_agg(jsonb_build_object('user_id', u.id, 'email', u.email, 'full_name', u.full_name,
																  'role', m.role, 'since', m.created_at) ORDER BY m.role DESC, u.email), '[]')
					FROM dalgo.organization_members m JOIN dalgo.users u ON u.id = m.user_id
					WHERE m.organization_id = org.id AND m.deleted_at IS NULL AND u.deleted_at IS NULL),
		-- Credentials stay behind: the config as dalgo.redact shows it.
		'sources', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', s.id, 'name', s.name, 'description', s.description,
																  'source_type', s.source_type, 'config', dalgo.redact(s.config),
																  'warehouse_table_name', s.warehouse_table_name,
																  'last_synced_at', s.last_synced_at, 'created_at', s.created_at)
											 ORDER BY s.name, s.id), '[]')
					FROM dalgo.sources s WHERE s.organization_id = org.id AND s.deleted_at IS NULL),
		'transformations', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', t.id, 'name', t.name, 'description', t.description,
																  'recipe', t.recipe, 'output_table_name', t.output_table_name,
																  'current_version', t.current_version,
																  'versions', (SELECT coalesce(jsonb_agg(jsonb_build_object(
																		'version_number', v.version_number, 'recipe', v.recipe,
																		'created_by_id', v.created_by_id, 'change_description', v.change_description,
																		'created_at', v.created_at) ORDER BY v.version_number), '[]')
																	FROM dalgo.transformation_versions v
																	WHERE v.transformation_id = t.id AND v.organization_id = org.id
																	  AND v.deleted_at IS NULL))
											 ORDER BY t.name, t.id), '[]')
					FROM dalgo.transformations t WHERE t.organization_id = org.id AND t.deleted_at IS NULL),
		'outputs', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', o.id, 'name', o.name, 'description', o.description,
																  'transformation_id', o.transformation_id,
																  'destination_config', o.destination_config) ORDER BY o.name, o.id), '[]')
					FROM dalgo.outputs o WHERE o.organization_id = org.id AND o.deleted_at IS NULL),
		'schedules', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', s.id, 'source_id', s.source_id, 'output_id', s.output_id,
																	'frequency', s.frequency, 'run_at_time', s.run_at_time,
																	'run_at_day', s.run_at_day, 'timezone', s.timezone,
																	'is_active', s.is_active) ORDER BY s.created_at, s.id), '[]')
					  FROM dalgo.schedules s WHERE s.organization_id = org.id AND s.deleted_at IS NULL),
		'warehouse_tables', (SELECT coalesce(jsonb_agg(jsonb_build_object('table_name', w.table_name, 'row_count', w.row_count,
																	'size_bytes', w.size_bytes, 'columns', w.schema_info,
																	'last_updated_at', w.last_updated_at) ORDER BY w.table_name), '[]')
							 FROM dalgo.warehouse_tables w WHERE w.organization_id = org.id AND w.deleted_at IS NULL));
END
$$;
COMMENT ON FUNCTION dalgo.export_organization(uuid) IS
	'An organization''s metadata as one jsonb document: the organization, members, sources (config redacted: no credentials), transformations with every version, outputs, schedules and warehouse tables (names, sizes, columns; the rows come from export_warehouse_table). Owners only';

REVOKE ALL ON FUNCTION dalgo_internal.export_query(uuid, text), dalgo.export_warehouse_table(uuid, text, text),
	dalgo.export_organization(uuid)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.export_warehouse_table(uuid, text, text), dalgo.export_organization(uuid)
	TO dalgo_authenticated, dalgo_service;

-- ---------------------------------------------------------------------------
-- Syncs and refreshes on demand
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo_internal.wake_scheduler_at_commit() RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_wake_scheduler'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo_internal.wake_scheduler_at_commit() IS
	'Internal: wake this database''s scheduler when the transaction commits, so that it starts run workers for a run queued now';

-- Wait until a committed run finishes (each poll reads the latest committed
-- row); the caller's statement_timeout bounds the wait.
CREATE FUNCTION dalgo_internal.wait_for_run(run_kind dalgo.run_kind, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	LOOP
		IF run_kind = 'sync' THEN
			EXIT WHEN NOT EXISTS (SELECT FROM dalgo.sync_runs r WHERE r.id = run_id AND r.status IN ('pending', 'running'));
		ELSE
			EXIT WHEN NOT EXISTS (SELECT FROM dalgo.transformation_runs r WHERE r.id = run_id AND r.status IN ('pending', 'running'));
		END IF;
		PERFORM pg_sleep(0.05);
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo_internal.wait_for_run(dalgo.run_kind, uuid) IS
	'Internal: wait until a run another transaction committed is no longer pending or running';

-- The run of a source or an output that is pending or running, if any: the
-- one-run-at-a-time rule of claim_due_schedules, for both kinds of run.
-- (PL/pgSQL, one query per kind, each on the organization's rows: on a
-- Citus cluster a single-shard query, and no SQL function with parameters,
-- which Citus cannot plan over distributed tables.)
CREATE FUNCTION dalgo_internal.active_run(run_kind dalgo.run_kind, organization_id uuid, target_id uuid) RETURNS uuid
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	rid uuid;
BEGIN
	IF run_kind = 'sync' THEN
		SELECT r.id INTO rid FROM dalgo.sync_runs r
		WHERE r.organization_id = active_run.organization_id AND r.source_id = target_id
		  AND r.status IN ('pending', 'running') AND r.deleted_at IS NULL
		LIMIT 1;
	ELSE
		SELECT r.id INTO rid FROM dalgo.outputs o
		JOIN dalgo.transformation_runs r ON r.transformation_id = o.transformation_id AND r.organization_id = o.organization_id
		LEFT JOIN dalgo.schedules s ON s.output_id = o.id AND s.organization_id = o.organization_id
		WHERE o.organization_id = active_run.organization_id AND o.id = target_id AND r.status IN ('pending', 'running')
		  AND (r.details->>'output_id' = o.id::text OR r.details->>'schedule_id' = s.id::text)
		LIMIT 1;
	END IF;
	RETURN rid;
END
$$;
COMMENT ON FUNCTION dalgo_internal.active_run(dalgo.run_kind, uuid, uuid) IS
	'Internal: the pending or running run of a source (sync) or an output (output) of an organization, if any';

-- The scheduler's rules, without a schedule: the same run rows, queue, run
-- workers, quotas and one-run-at-a-time rule.  The target's row is held FOR
-- UPDATE from the check until the caller's transaction ends, so that the
-- scheduler's claim (FOR KEY SHARE SKIP LOCKED) counts this run as going and
-- two calls queue one run.  A run already pending or running is the answer
-- (and the lock is given back: its worker updates the target's row).  wait:
-- a run queued by this call cannot reach a worker before the caller commits,
-- so it runs here, through the worker's own code (start, execute, fail); a
-- run already committed is waited for while a worker runs it.
CREATE FUNCTION dalgo_internal.run_now(run_kind dalgo.run_kind, target_id uuid, wait boolean) RETURNS uuid
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
	src dalgo.sources;
	o dalgo.outputs;
	tid uuid;
	rid uuid;
	connector boolean := false;
	noun text := CASE WHEN run_kind = 'sync' THEN 'source' ELSE 'output' END;
BEGIN
	IF run_kind = 'sync' THEN
		SELECT * INTO src FROM dalgo.sources x WHERE x.id = target_id AND x.deleted_at IS NULL;
		org := src.organization_id;
		connector := dalgo_internal.synced_by_connector(src.config);
	ELSE
		SELECT * INTO o FROM dalgo.outputs x WHERE x.id = target_id AND x.deleted_at IS NULL;
		org := o.organization_id;
		SELECT x.id INTO tid FROM dalgo.transformations x
		WHERE x.id = o.transformation_id AND x.organization_id = org AND x.deleted_at IS NULL;
	END IF;
	IF org IS NULL OR NOT dalgo.caller_may(org, 'viewer') OR (run_kind = 'output' AND tid IS NULL) THEN
		RAISE EXCEPTION '% % does not exist', noun, target_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT dalgo.caller_may(org, 'member') THEN
		RAISE EXCEPTION 'running a % now needs the member role', CASE WHEN run_kind = 'sync' THEN 'sync' ELSE 'refresh' END
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF wait AND connector THEN
		RAISE EXCEPTION 'a % source is synced by a connector, which sees the run only once this transaction commits', src.source_type
			USING ERRCODE = 'feature_not_supported',
				  HINT = 'Call sync_now with wait => false, commit, and read the run in dalgo.sync_runs.';
	END IF;
	IF wait AND src.source_type IN ('google_sheets', 'api') THEN
		RAISE EXCEPTION 'a % source is fetched by a run worker, which sees the run only once this transaction commits', src.source_type
			USING ERRCODE = 'feature_not_supported',
				  HINT = 'Call sync_now with wait => false, commit, and read the run in dalgo.sync_runs or dalgo.run_progress().';
	END IF;
	IF wait AND current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'wait => true needs READ COMMITTED: the call must see the run finish'
			USING ERRCODE = 'feature_not_supported';
	END IF;
	rid := dalgo_internal.active_run(run_kind, org, target_id);
	IF rid IS NULL THEN
		BEGIN
			IF run_kind = 'sync' THEN
				PERFORM FROM dalgo.sources x WHERE x.organization_id = org AND x.id = target_id FOR UPDATE;
			ELSE
				PERFORM FROM dalgo.outputs x WHERE x.organization_id = org AND x.id = target_id FOR UPDATE;
			END IF;
			-- Checked again under the lock: a run committed while we waited for it.
			rid := dalgo_internal.active_run(run_kind, org, target_id);
			IF rid IS NOT NULL THEN
				RAISE EXCEPTION USING ERRCODE = 'DL001';	-- gives the lock back
			END IF;
		EXCEPTION WHEN SQLSTATE 'DL001' THEN
			NULL;
		END;
	END IF;
	IF rid IS NOT NULL THEN
		RAISE NOTICE 'a run of % % is already pending or running: %', noun, target_id, rid;
		IF wait THEN
			PERFORM dalgo_internal.wait_for_run(run_kind, rid);
		END IF;
		RETURN rid;
	END IF;
	-- Quotas refuse the call itself (the worker checks them again).
	PERFORM dalgo_internal.check_run_quota(org);
	IF run_kind = 'sync' THEN
		INSERT INTO dalgo.sync_runs (organization_id, source_id, status, triggered_by_id, details)
		VALUES (org, target_id, 'pending', dalgo.current_user_id(), '{"on_demand": true}')
		RETURNING id INTO rid;
	ELSE
		INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, triggered_by_id, details)
		VALUES (org, tid, 'pending', dalgo.current_user_id(), jsonb_build_object('on_demand', true, 'output_id', target_id))
		RETURNING id INTO rid;
	END IF;
	IF wait THEN
		PERFORM dalgo_internal.execute_claimed(ARRAY[rid], ARRAY[run_kind]);
	ELSIF connector THEN
		PERFORM pg_notify('dalgo_sync', '');
	ELSE
		PERFORM dalgo_internal.wake_scheduler_at_commit();
	END IF;
	RETURN rid;
END
$$;
COMMENT ON FUNCTION dalgo_internal.run_now(dalgo.run_kind, uuid, boolean) IS
	'Internal: queue (or, with wait, run here) a sync of a source or a refresh of an output without a schedule, under the scheduler''s rules; returns the run, or the run already pending or running';

CREATE FUNCTION dalgo.sync_now(source_id uuid, wait boolean DEFAULT false) RETURNS uuid
	LANGUAGE sql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	RETURN dalgo_internal.run_now('sync', source_id, coalesce(wait, false));
COMMENT ON FUNCTION dalgo.sync_now(uuid, boolean) IS
	'Sync a source now, without a schedule, for members and above: queues a run for the run workers (an outside connector''s, for a source whose config has "connector": true) and returns its id in dalgo.sync_runs, or the id of the run already pending or running (one run at a time, as for schedules). wait => true returns when the run has finished (postgres and csv sources)';

CREATE FUNCTION dalgo.refresh_output_now(output_id uuid, wait boolean DEFAULT false) RETURNS uuid
	LANGUAGE sql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	RETURN dalgo_internal.run_now('output', output_id, coalesce(wait, false));
COMMENT ON FUNCTION dalgo.refresh_output_now(uuid, boolean) IS
	'Refresh an output now (its transformation with what it reads, then its destination), without a schedule, for members and above: queues a run for the run workers and returns its id in dalgo.transformation_runs, or the id of the run already pending or running. wait => true returns when the run has finished';

REVOKE ALL ON FUNCTION dalgo_internal.wake_scheduler_at_commit(), dalgo_internal.wait_for_run(dalgo.run_kind, uuid),
	dalgo_internal.active_run(dalgo.run_kind, uuid, uuid), dalgo_internal.run_now(dalgo.run_kind, uuid, boolean), dalgo.sync_now(uuid, boolean), dalgo.refresh_output_now(uuid, boolean)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.sync_now(uuid, boolean), dalgo.refresh_output_now(uuid, boolean)
	TO dalgo_authenticated, dalgo_service;

-- ---------------------------------------------------------------------------
-- Failure alerts
-- ---------------------------------------------------------------------------

-- When a scheduled run finishes: the schedule's failure streak is the run of
-- failed runs (skipped slots aside) up to this one.  The admins and owners
-- of the organization get one message when the streak reaches
-- dalgo.alert_after_failures, and one when a run succeeds after such a
-- streak, through the accounts' mail queue (NOTIFY dalgo_mail).  The error
-- is redacted (dalgo.redact) before it is queued.
-- On a Citus cluster the trigger fires on the run's shard, on a worker,
-- which cannot write the mail queue (a reference table: every node) from
-- there.  It writes the message into this outbox instead, co-located with
-- the run (dalgo.distribute() shards it by organization_id), and the
-- coordinator's scheduler moves what it finds into the mail queue on every
-- tick (deliver_run_alerts).  On one node the outbox stays empty.
CREATE TABLE dalgo_internal.alert_outbox (
	organization_id	uuid NOT NULL,
	id				uuid NOT NULL DEFAULT gen_random_uuid(),
	kind			text NOT NULL,
	recipient		text NOT NULL,
	payload			jsonb NOT NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (organization_id, id)
);
COMMENT ON TABLE dalgo_internal.alert_outbox IS
	'Internal, Citus only: failure alerts written on a worker by record_run_alert, until the coordinator''s scheduler queues them as mail (deliver_run_alerts)';
COMMENT ON COLUMN dalgo_internal.alert_outbox.organization_id IS 'The run''s organization (the distribution column on a cluster)';
COMMENT ON COLUMN dalgo_internal.alert_outbox.kind IS 'run_failed or run_recovered, the mail kind';
COMMENT ON COLUMN dalgo_internal.alert_outbox.recipient IS 'An admin''s or owner''s email address';
COMMENT ON COLUMN dalgo_internal.alert_outbox.payload IS 'The message, as queue_mail takes it (error redacted)';
REVOKE ALL ON dalgo_internal.alert_outbox FROM PUBLIC;

CREATE FUNCTION dalgo_internal.record_run_alert() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer := greatest(coalesce(nullif(current_setting('dalgo.alert_after_failures', true), '')::integer, 1), 1);
	sid uuid;
	s dalgo.schedules;
	org dalgo.organizations;
	previous text[];
	before integer;
	target_type text;
	target_name text;
	kind text;
	payload jsonb;
	recipient text;
	on_shard boolean;
BEGIN
	IF dalgo.restoring() OR NEW.details ?| ARRAY['skipped', 'cancelled'] THEN
		RETURN NULL;
	END IF;
	-- On a Citus cluster the trigger fires on the run's shard (sync_runs_102040).
	on_shard := TG_TABLE_NAME ~ '_[0-9]+$' AND dalgo_internal.citus_distributed('dalgo_internal.alert_outbox');
	BEGIN
		sid := (NEW.details->>'schedule_id')::uuid;
	EXCEPTION WHEN invalid_text_representation THEN
		RETURN NULL;
	END;
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = sid AND x.organization_id = NEW.organization_id;
	SELECT * INTO org FROM dalgo.organizations o WHERE o.id = NEW.organization_id AND o.deleted_at IS NULL;
	IF s.id IS NULL OR org.id IS NULL THEN
		RETURN NULL;
	END IF;
	-- The outcomes of the schedule's previous runs, newest first: n of them
	-- tell whether the streak before this run was n - 1 long, or reached n.
	IF TG_TABLE_NAME ~ '^sync_runs(_[0-9]+)?$' THEN
		previous := ARRAY(SELECT r.status::text FROM dalgo.sync_runs r
						  WHERE r.source_id = NEW.source_id AND r.organization_id = NEW.organization_id AND r.id <> NEW.id
							AND r.details->>'schedule_id' = sid::text AND NOT r.details ?| ARRAY['skipped', 'cancelled']
							AND r.status IN ('success', 'failed')
						  ORDER BY r.completed_at DESC NULLS LAST, r.created_at DESC LIMIT n);
		target_type := 'source';
		SELECT x.name INTO target_name FROM dalgo.sources x WHERE x.organization_id = s.organization_id AND x.id = s.source_id;
	ELSE
		previous := ARRAY(SELECT r.status::text FROM dalgo.transformation_runs r
						  WHERE r.transformation_id = NEW.transformation_id AND r.organization_id = NEW.organization_id
							AND r.id <> NEW.id AND r.details->>'schedule_id' = sid::text AND NOT r.details ?| ARRAY['skipped', 'cancelled']
							AND r.status IN ('success', 'failed')
						  ORDER BY r.completed_at DESC NULLS LAST, r.created_at DESC LIMIT n);
		target_type := 'output';
		SELECT x.name INTO target_name FROM dalgo.outputs x WHERE x.organization_id = s.organization_id AND x.id = s.output_id;
	END IF;
	before := coalesce(array_position(previous, 'success') - 1, cardinality(previous));
	IF NEW.status = 'failed' AND before = n - 1 THEN
		kind := 'run_failed';
	ELSIF NEW.status = 'success' AND before >= n THEN
		kind := 'run_recovered';
	ELSE
		RETURN NULL;
	END IF;
	-- Names are members' text: no control character (a line break would
	-- become a header in a mailer that writes the subject into one).
	org.name := regexp_replace(org.name, '[[:cntrl:]]', ' ', 'g');
	target_name := regexp_replace(target_name, '[[:cntrl:]]', ' ', 'g');
	payload := jsonb_build_object(
		'organization_id', org.id, 'organization_name', org.name,
		'schedule_id', s.id, 'target_type', target_type, 'target_id', coalesce(s.source_id, s.output_id),
		'target_name', target_name, 'run_id', NEW.id, 'at', NEW.completed_at,
		'failures', CASE WHEN kind = 'run_failed' THEN n END,
		'error', CASE WHEN kind = 'run_failed' THEN dalgo.redact(NEW.error_message) END,
		'subject', CASE WHEN kind = 'run_failed'
						THEN format('[%s] %s "%s" failed%s', org.name, CASE WHEN target_type = 'source' THEN 'sync of' ELSE 'refresh of' END,
									target_name, CASE WHEN n > 1 THEN format(' %s times in a row', n) ELSE '' END)
						ELSE format('[%s] %s "%s" is back to normal', org.name,
									CASE WHEN target_type = 'source' THEN 'sync of' ELSE 'refresh of' END, target_name) END);
	FOR recipient IN
		SELECT DISTINCT u.email FROM dalgo.organization_members m JOIN dalgo.users u ON u.id = m.user_id
		WHERE m.organization_id = org.id AND m.deleted_at IS NULL AND m.role >= 'admin'
		  AND u.deleted_at IS NULL AND u.is_active
		ORDER BY u.email
	LOOP
		IF on_shard THEN
			INSERT INTO dalgo_internal.alert_outbox (organization_id, kind, recipient, payload)
				VALUES (NEW.organization_id, kind, recipient, payload);
		ELSE
			PERFORM dalgo_internal.queue_mail(kind, recipient, payload);
		END IF;
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo_internal.record_run_alert() IS
	'AFTER UPDATE trigger on sync_runs and transformation_runs: when a scheduled run fails for the dalgo.alert_after_failures-th time in a row, or succeeds after such a streak, queue one run_failed or run_recovered message (error redacted) to each admin and owner of the organization (on a Citus shard: into alert_outbox)';

-- Citus: queue the alerts that shards wrote into the outbox, oldest first,
-- each removed as it is queued, in the scheduler's transaction (called on
-- the coordinator on every tick).  Returns how many were queued.
CREATE FUNCTION dalgo_internal.deliver_run_alerts(max integer DEFAULT 1000) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a record;
	n integer := 0;
BEGIN
	IF NOT dalgo_internal.citus_distributed('dalgo_internal.alert_outbox') THEN
		RETURN 0;
	END IF;
	-- The mail queue is a reference table: Citus lets a transaction write it
	-- after reading a distributed table only over one connection per node.
	PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
	FOR a IN SELECT o.organization_id, o.id, o.kind, o.recipient, o.payload FROM dalgo_internal.alert_outbox o
			 ORDER BY o.created_at, o.id LIMIT max
	LOOP
		PERFORM dalgo_internal.queue_mail(a.kind, a.recipient, a.payload);
		DELETE FROM dalgo_internal.alert_outbox o WHERE o.organization_id = a.organization_id AND o.id = a.id;
		n := n + 1;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.deliver_run_alerts(integer) IS
	'Internal, Citus: move up to max failure alerts from alert_outbox (written on the workers) into the mail queue, oldest first; 0 without Citus';
REVOKE ALL ON FUNCTION dalgo_internal.deliver_run_alerts(integer) FROM PUBLIC;
CREATE TRIGGER alert_on_outcome AFTER UPDATE OF status ON dalgo.sync_runs
	FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('success', 'failed')
					   AND NEW.details ? 'schedule_id')
	EXECUTE FUNCTION dalgo_internal.record_run_alert();
COMMENT ON TRIGGER alert_on_outcome ON dalgo.sync_runs IS 'Failure alerts: one message per failure streak of a schedule, one on recovery';
CREATE TRIGGER alert_on_outcome AFTER UPDATE OF status ON dalgo.transformation_runs
	FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('success', 'failed')
					   AND NEW.details ? 'schedule_id')
	EXECUTE FUNCTION dalgo_internal.record_run_alert();
COMMENT ON TRIGGER alert_on_outcome ON dalgo.transformation_runs IS 'Failure alerts: one message per failure streak of a schedule, one on recovery';
REVOKE ALL ON FUNCTION dalgo_internal.record_run_alert() FROM PUBLIC;

-- Run errors are read by every member of the organization (and mailed to
-- its admins): whatever wrote one (a worker, a connector, a failed build),
-- it is stored redacted, so that a secret of a source's write-only config
-- quoted by an error does not reach them.
CREATE FUNCTION dalgo_internal.redact_run_error() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP = 'INSERT' AND dalgo.restoring() THEN RETURN NEW; END IF;	-- restored as dumped
	NEW.error_message := dalgo.redact(NEW.error_message);
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo_internal.redact_run_error() IS
	'BEFORE INSERT OR UPDATE trigger on sync_runs and transformation_runs: stores error_message redacted (dalgo.redact)';
CREATE TRIGGER redact_error BEFORE INSERT OR UPDATE OF error_message ON dalgo.sync_runs
	FOR EACH ROW WHEN (NEW.error_message IS NOT NULL) EXECUTE FUNCTION dalgo_internal.redact_run_error();
COMMENT ON TRIGGER redact_error ON dalgo.sync_runs IS 'Run errors are stored redacted';
CREATE TRIGGER redact_error BEFORE INSERT OR UPDATE OF error_message ON dalgo.transformation_runs
	FOR EACH ROW WHEN (NEW.error_message IS NOT NULL) EXECUTE FUNCTION dalgo_internal.redact_run_error();
COMMENT ON TRIGGER redact_error ON dalgo.transformation_runs IS 'Run errors are stored redacted';
REVOKE ALL ON FUNCTION dalgo_internal.redact_run_error() FROM PUBLIC;
