-- toolkit.sql: secure any table with one call (docs/toolkit.md).
--
-- Policy patterns (enable_org_rows, enable_own_rows, enable_public_read,
-- enable_shared_rows) and helpers (enable_updated_at, enable_redaction),
-- each idempotent with a disable_ counterpart; retention policies; a
-- security report.  Who may call them: the functions run with the caller's
-- rights (no SECURITY DEFINER), EXECUTE is revoked from PUBLIC, and each
-- checks that the caller owns the table: superusers, or a table owner a
-- superuser granted EXECUTE to.  search_path is pinned to pg_catalog,
-- pg_temp and every name is built from the catalog with %I, so neither a
-- caller's search_path nor a temporary object changes what is created.
-- Generated policies use the index-friendly forms of sql/rls.sql: the
-- membership list and the caller's id are computed once per statement (an
-- initPlan over dalgo.current_org_ids / dalgo.current_user_id).

CREATE FUNCTION dalgo.redact_jsonb(value jsonb, keys text[] DEFAULT NULL, pii boolean DEFAULT false)
	RETURNS jsonb
	AS 'MODULE_PATHNAME', 'dalgo_redact_jsonb_keys'
	LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.redact_jsonb(jsonb, text[], boolean) IS
	'The document with the values of keys (at any depth; NULL: the secret names the audit trail redacts) made "[redacted]", credentials inside strings stripped, and with pii e-mail addresses and phone numbers masked (***); the audit trail''s rules (src/redact.c)';

CREATE FUNCTION dalgo_internal.redact_trigger() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_redact_trigger'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo_internal.redact_trigger() IS
	'BEFORE INSERT OR UPDATE row trigger redacting one jsonb or text column (arguments: column, pii flag, keys); attach it with dalgo.enable_redaction()';

CREATE FUNCTION dalgo_internal.toolkit_condition(tbl regclass, condition text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_toolkit_condition'
	LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION dalgo_internal.toolkit_condition(regclass, text) IS
	'Internal: parses and analyzes a public-read condition (one boolean expression over the table''s own columns, no subquery, only immutable functions) and returns it deparsed';

CREATE FUNCTION dalgo_internal.toolkit_policy_problems(qual pg_node_tree) RETURNS text[]
	AS 'MODULE_PATHNAME', 'dalgo_toolkit_policy_problems'
	LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION dalgo_internal.toolkit_policy_problems(pg_node_tree) IS
	'Internal: the volatile and per-row function calls of a policy expression, for dalgo.security_report()';

CREATE FUNCTION dalgo_internal.is_secret_name(name text) RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_is_secret_name'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_internal.is_secret_name(text) IS
	'True if a key or column name names a secret by the audit trail''s rules (password, token, api_key, *_secret, ...)';

-- The checked, schema-qualified name of a table the caller may secure.
CREATE FUNCTION dalgo_internal.toolkit_target(tbl regclass) RETURNS text
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c record;
BEGIN
	SELECT n.nspname, r.relname, r.relkind, r.relowner, r.relpersistence INTO c
	FROM pg_catalog.pg_class r JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) r.relnamespace
	WHERE r.oid OPERATOR(pg_catalog.=) tbl;
	IF NOT FOUND OR c.relkind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = 'wrong_object_type';
	END IF;
	IF c.nspname = 'dalgo' THEN
		RAISE EXCEPTION 'dalgo''s own tables have their own policies' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'The toolkit secures the tables of other schemas.';
	END IF;
	IF c.relpersistence = 't' THEN
		RAISE EXCEPTION '% is a temporary table', tbl USING ERRCODE = 'wrong_object_type';
	END IF;
	IF NOT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', c.relname USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN pg_catalog.format('%I.%I', c.nspname, c.relname);
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_target(regclass) IS
	'Internal: the qualified name of a table the caller owns, outside schema dalgo; raises otherwise';

-- The type of a column of tbl, checked against the allowed types.
CREATE FUNCTION dalgo_internal.toolkit_column(tbl regclass, col name, types regtype[]) RETURNS regtype
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t regtype;
BEGIN
	SELECT a.atttypid::regtype INTO t FROM pg_catalog.pg_attribute a
	WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) col
	  AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped;
	IF t IS NULL THEN
		RAISE EXCEPTION 'column "%" of % does not exist', col, tbl USING ERRCODE = 'undefined_column';
	END IF;
	IF types IS NOT NULL AND NOT t OPERATOR(pg_catalog.=) ANY (types) THEN
		RAISE EXCEPTION 'column "%" of % is of type %, not %', col, tbl, t, pg_catalog.array_to_string(types, ' or ')
			USING ERRCODE = 'datatype_mismatch';
	END IF;
	RETURN t;
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_column(regclass, name, regtype[]) IS
	'Internal: the type of a column, which must exist and be of one of the given types';

-- Create a btree index on col unless an index already leads with it.
CREATE FUNCTION dalgo_internal.toolkit_ensure_index(tbl regclass, col name) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	attnum int2;
BEGIN
	SELECT a.attnum INTO attnum FROM pg_catalog.pg_attribute a
	WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) col AND NOT a.attisdropped;
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_index i
				   WHERE i.indrelid OPERATOR(pg_catalog.=) tbl AND i.indkey[0] OPERATOR(pg_catalog.=) attnum
					 AND i.indpred IS NULL AND i.indisvalid) THEN
		EXECUTE pg_catalog.format('CREATE INDEX ON %s (%I)', dalgo_internal.toolkit_target(tbl), col);
		RAISE NOTICE 'dalgo: created an index on %(%)', tbl, col;
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_ensure_index(regclass, name) IS
	'Internal: creates the btree index a policy pattern needs on a column (with a NOTICE) unless an index leads with it';

-- Drop the policies of tbl whose names start with prefix.
CREATE FUNCTION dalgo_internal.toolkit_drop_policies(tbl regclass, prefix text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p name;
	target text := dalgo_internal.toolkit_target(tbl);
BEGIN
	FOR p IN SELECT polname FROM pg_catalog.pg_policy
			 WHERE polrelid OPERATOR(pg_catalog.=) tbl AND pg_catalog.starts_with(polname, prefix)
	LOOP
		EXECUTE pg_catalog.format('DROP POLICY %I ON %s', p, target);
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_drop_policies(regclass, text) IS 'Internal: drops the policies a pattern created';

-- Enable and force RLS, give the schema to the app roles, let dalgo_service through.
CREATE FUNCTION dalgo_internal.toolkit_prepare(tbl regclass, roles text[], service_writes boolean DEFAULT true)
	RETURNS text
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	nsp oid := (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) tbl);
	r text;
	s text;
BEGIN
	EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', target);
	EXECUTE pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', target);
	FOREACH r IN ARRAY roles || ARRAY['dalgo_service'] LOOP
		IF NOT pg_catalog.has_schema_privilege(r, nsp, 'USAGE') THEN
			EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %I TO %I', nsp::regnamespace::text, r);
		END IF;
		-- Sequences behind identity and serial columns, for INSERT.
		FOR s IN SELECT pg_catalog.format('%I.%I', sn.nspname, sc.relname)
				 FROM pg_catalog.pg_depend d
				 JOIN pg_catalog.pg_class sc ON sc.oid OPERATOR(pg_catalog.=) d.objid AND sc.relkind = 'S'
				 JOIN pg_catalog.pg_namespace sn ON sn.oid OPERATOR(pg_catalog.=) sc.relnamespace
				 WHERE d.refobjid OPERATOR(pg_catalog.=) tbl AND d.classid = 'pg_catalog.pg_class'::regclass
				   AND d.deptype IN ('a', 'i')
		LOOP
			IF r <> 'dalgo_anon' THEN
				EXECUTE pg_catalog.format('GRANT USAGE ON SEQUENCE %s TO %I', s, r);
			END IF;
		END LOOP;
	END LOOP;
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_service');
	IF service_writes THEN
		EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO dalgo_service', target);
		EXECUTE pg_catalog.format('CREATE POLICY dalgo_service ON %s TO dalgo_service USING (true) WITH CHECK (true)', target);
		EXECUTE pg_catalog.format('COMMENT ON POLICY dalgo_service ON %s IS %L', target, 'dalgo_service passes (dalgo toolkit)');
	ELSE
		EXECUTE pg_catalog.format('GRANT SELECT, INSERT ON %s TO dalgo_service', target);
		EXECUTE pg_catalog.format('REVOKE UPDATE, DELETE, TRUNCATE ON %s FROM dalgo_service', target);
		EXECUTE pg_catalog.format('CREATE POLICY dalgo_service_select ON %s FOR SELECT TO dalgo_service USING (true)', target);
		EXECUTE pg_catalog.format('CREATE POLICY dalgo_service_insert ON %s FOR INSERT TO dalgo_service WITH CHECK (true)', target);
		EXECUTE pg_catalog.format('COMMENT ON POLICY dalgo_service_select ON %s IS %L', target, 'dalgo_service reads (dalgo toolkit, immutable rows)');
		EXECUTE pg_catalog.format('COMMENT ON POLICY dalgo_service_insert ON %s IS %L', target, 'dalgo_service inserts (dalgo toolkit, immutable rows)');
	END IF;
	RETURN target;
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_prepare(regclass, text[], boolean) IS
	'Internal: enables and forces row-level security, grants the schema and sequences to the app roles and lets dalgo_service through';

-- Create one policy with its comment.
CREATE FUNCTION dalgo_internal.toolkit_policy(tbl regclass, policy name, command text, roles text, using_expr text,
									 check_expr text, description text)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
BEGIN
	EXECUTE pg_catalog.format('CREATE POLICY %I ON %s FOR %s TO %s', policy, target, command, roles)
		|| CASE WHEN using_expr IS NOT NULL THEN ' USING (' || using_expr || ')' ELSE '' END
		|| CASE WHEN check_expr IS NOT NULL THEN ' WITH CHECK (' || check_expr || ')' ELSE '' END;
	EXECUTE pg_catalog.format('COMMENT ON POLICY %I ON %s IS %L', policy, target, description || ' (dalgo toolkit)');
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_policy(regclass, name, text, text, text, text, text) IS
	'Internal: creates one policy of a pattern, with its comment';

-- The index-friendly test "the caller is at least role in the row's organization".
CREATE FUNCTION dalgo_internal.toolkit_org_test(col name, role dalgo.member_role) RETURNS text
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
	RETURN pg_catalog.format('%I OPERATOR(pg_catalog.=) ANY ((SELECT dalgo.current_org_ids(%L::dalgo.member_role))::uuid[])',
							 col, role);
COMMENT ON FUNCTION dalgo_internal.toolkit_org_test(name, dalgo.member_role) IS
	'Internal: the policy expression testing membership at a role, an initPlan over dalgo.current_org_ids()';

-- The index-friendly test "the row is the caller's".
CREATE FUNCTION dalgo_internal.toolkit_own_test(col name) RETURNS text
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
	RETURN pg_catalog.format('%I OPERATOR(pg_catalog.=) (SELECT dalgo.current_user_id())', col);
COMMENT ON FUNCTION dalgo_internal.toolkit_own_test(name) IS
	'Internal: the policy expression testing ownership, an initPlan over dalgo.current_user_id()';

-- ---------------------------------------------------------------------------
-- Policy patterns
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.disable_org_rows(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_org_');
END
$$;
COMMENT ON FUNCTION dalgo.disable_org_rows(regclass) IS
	'Removes the policies of dalgo.enable_org_rows(); row-level security stays on (no end user sees the rows until another pattern or policy allows it)';

CREATE FUNCTION dalgo.enable_org_rows(tbl regclass, org_column name DEFAULT 'organization_id',
									  read_role dalgo.member_role DEFAULT 'viewer',
									  write_role dalgo.member_role DEFAULT 'member',
									  owner_column name DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	r_read text := dalgo_internal.toolkit_org_test(org_column, read_role);
	r_write text := dalgo_internal.toolkit_org_test(org_column, write_role);
	w_check text;
BEGIN
	IF read_role IS NULL OR write_role IS NULL THEN
		RAISE EXCEPTION 'read_role and write_role are required' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF write_role OPERATOR(pg_catalog.<) read_role THEN
		RAISE EXCEPTION 'write_role (%) must be at least read_role (%)', write_role, read_role
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM dalgo_internal.toolkit_column(tbl, org_column, ARRAY['uuid'::regtype]);
	w_check := r_write;
	IF owner_column IS NOT NULL THEN
		PERFORM dalgo_internal.toolkit_column(tbl, owner_column, ARRAY['uuid'::regtype]);
		r_read := r_read || ' OR ' || dalgo_internal.toolkit_own_test(owner_column);
		-- An owner's row may stay outside any organization; it never enters
		-- one where the owner lacks write_role.
		w_check := r_write || pg_catalog.format(' OR (%I IS NULL AND ', org_column) || dalgo_internal.toolkit_own_test(owner_column) || ')';
		r_write := r_write || ' OR ' || dalgo_internal.toolkit_own_test(owner_column);
	END IF;
	PERFORM dalgo_internal.toolkit_prepare(tbl, ARRAY['dalgo_authenticated']);
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_org_');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_org_select', 'SELECT', 'dalgo_authenticated', r_read, NULL,
		pg_catalog.format('Rows of organizations where the caller is at least %s', read_role)
		|| CASE WHEN owner_column IS NOT NULL THEN ', and the caller''s own rows' ELSE '' END);
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_org_insert', 'INSERT', 'dalgo_authenticated', NULL, w_check,
		pg_catalog.format('Only %s and above add rows, and only to their organizations', write_role));
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_org_update', 'UPDATE', 'dalgo_authenticated', r_write, w_check,
		pg_catalog.format('Only %s and above change rows, and never move them to an organization where they are less', write_role));
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_org_delete', 'DELETE', 'dalgo_authenticated', r_write, NULL,
		pg_catalog.format('Only %s and above delete rows', write_role));
	EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO dalgo_authenticated', target);
	PERFORM dalgo_internal.toolkit_ensure_index(tbl, org_column);
	IF owner_column IS NOT NULL THEN
		PERFORM dalgo_internal.toolkit_ensure_index(tbl, owner_column);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.enable_org_rows(regclass, name, dalgo.member_role, dalgo.member_role, name) IS
	'Secure a table by organization: members at read_role or above read, at write_role or above write; with owner_column the owner also reads and writes their rows. No row enters an organization where the writer lacks write_role. Idempotent; undo with dalgo.disable_org_rows()';

CREATE FUNCTION dalgo.disable_own_rows(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_own_');
END
$$;
COMMENT ON FUNCTION dalgo.disable_own_rows(regclass) IS
	'Removes the policies of dalgo.enable_own_rows(); row-level security stays on';

CREATE FUNCTION dalgo.enable_own_rows(tbl regclass, owner_column name DEFAULT 'user_id', immutable boolean DEFAULT false)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	mine text := dalgo_internal.toolkit_own_test(owner_column);
BEGIN
	PERFORM dalgo_internal.toolkit_column(tbl, owner_column, ARRAY['uuid'::regtype]);
	PERFORM dalgo_internal.toolkit_prepare(tbl, ARRAY['dalgo_authenticated'], NOT coalesce(immutable, false));
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_own_');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_own_select', 'SELECT', 'dalgo_authenticated', mine, NULL,
		'Users read only their own rows');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_own_insert', 'INSERT', 'dalgo_authenticated', NULL, mine,
		'Users add rows only as themselves');
	IF coalesce(immutable, false) THEN
		EXECUTE pg_catalog.format('GRANT SELECT, INSERT ON %s TO dalgo_authenticated', target);
		EXECUTE pg_catalog.format('REVOKE UPDATE, DELETE, TRUNCATE ON %s FROM dalgo_authenticated, dalgo_anon', target);
	ELSE
		PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_own_update', 'UPDATE', 'dalgo_authenticated', mine, mine,
			'Users change only their own rows, and cannot give them away');
		PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_own_delete', 'DELETE', 'dalgo_authenticated', mine, NULL,
			'Users delete only their own rows');
		EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO dalgo_authenticated', target);
	END IF;
	PERFORM dalgo_internal.toolkit_ensure_index(tbl, owner_column);
END
$$;
COMMENT ON FUNCTION dalgo.enable_own_rows(regclass, name, boolean) IS
	'Secure a table by owner: only the owner reads and writes a row. With immutable (zero trust), rows are only inserted and read: no update or delete by anyone, dalgo_service included. Idempotent; undo with dalgo.disable_own_rows()';

CREATE FUNCTION dalgo.disable_public_read(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_public_');
	EXECUTE pg_catalog.format('REVOKE SELECT ON %s FROM dalgo_anon', dalgo_internal.toolkit_target(tbl));
END
$$;
COMMENT ON FUNCTION dalgo.disable_public_read(regclass) IS
	'Removes the policy of dalgo.enable_public_read() and dalgo_anon''s SELECT; row-level security stays on';

CREATE FUNCTION dalgo.enable_public_read(tbl regclass, condition text DEFAULT NULL) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	cond text := 'true';
BEGIN
	IF condition IS NOT NULL THEN
		cond := dalgo_internal.toolkit_condition(tbl, condition);
	END IF;
	PERFORM dalgo_internal.toolkit_prepare(tbl, ARRAY['dalgo_authenticated', 'dalgo_anon']);
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_public_');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_public_select', 'SELECT', 'dalgo_anon, dalgo_authenticated', cond, NULL,
		CASE WHEN condition IS NULL THEN 'Everyone reads every row' ELSE 'Everyone reads the rows where ' || cond END);
	EXECUTE pg_catalog.format('GRANT SELECT ON %s TO dalgo_anon, dalgo_authenticated', target);
END
$$;
COMMENT ON FUNCTION dalgo.enable_public_read(regclass, text) IS
	'Everyone, dalgo_anon included, reads the rows where condition holds (a boolean expression over the table''s own columns: no subquery, only immutable functions; NULL: every row); only dalgo_service writes. Idempotent; undo with dalgo.disable_public_read()';

-- Checked outside the policies: a policy on the shares table that read the
-- shared table would recurse (that table's policy reads the shares).
CREATE FUNCTION dalgo_internal.guard_shares() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	owned boolean;
BEGIN
	-- Arguments: shared table (qualified), its key column, the shares' key column, its owner column.
	IF TG_NARGS <> 4 THEN
		RAISE EXCEPTION 'dalgo_internal.guard_shares() takes 4 arguments' USING ERRCODE = 'E0001',
			HINT = 'Attach it with dalgo.enable_shared_rows().';
	END IF;
	IF pg_catalog.pg_has_role(current_user, 'dalgo_authenticated', 'MEMBER')
	   AND NOT pg_catalog.pg_has_role(current_user, 'dalgo_service', 'MEMBER') THEN
		EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s p WHERE p.%I OPERATOR(pg_catalog.=) ($1).%I '
								  'AND p.%I OPERATOR(pg_catalog.=) dalgo.current_user_id())',
								  TG_ARGV[0], TG_ARGV[1], TG_ARGV[2], TG_ARGV[3])
			INTO owned USING NEW;
		IF NOT owned THEN
			RAISE EXCEPTION 'only the owner of a row shares it' USING ERRCODE = 'insufficient_privilege';
		END IF;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo_internal.guard_shares() IS
	'BEFORE INSERT OR UPDATE trigger of a shares table (dalgo.enable_shared_rows()): end users share only rows they own';

CREATE FUNCTION dalgo.disable_shared_rows(tbl regclass, shares regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_shared_');
	PERFORM dalgo_internal.toolkit_drop_policies(shares, 'dalgo_shares_');
	EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS dalgo_shares_guard ON %s', dalgo_internal.toolkit_target(shares));
END
$$;
COMMENT ON FUNCTION dalgo.disable_shared_rows(regclass, regclass) IS
	'Removes the policies of dalgo.enable_shared_rows() from both tables; row-level security stays on';

CREATE FUNCTION dalgo.enable_shared_rows(tbl regclass, shares regclass,
										 owner_column name DEFAULT 'user_id',
										 shared_with_column name DEFAULT 'user_id',
										 permission_column name DEFAULT 'permission',
										 shared_by_column name DEFAULT 'shared_by',
										 public_column name DEFAULT 'is_public')
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	shares_target text := dalgo_internal.toolkit_target(shares);
	key_col name;
	ref_col name;
	has_public boolean;
	mine text := dalgo_internal.toolkit_own_test(owner_column);
	shared text;
	editable text;
	read_expr text;
	cols text;
BEGIN
	-- The shares table points at tbl with a one-column foreign key.
	SELECT ka.attname, ra.attname INTO key_col, ref_col
	FROM pg_catalog.pg_constraint c
	JOIN pg_catalog.pg_attribute ka ON ka.attrelid OPERATOR(pg_catalog.=) c.conrelid AND ka.attnum OPERATOR(pg_catalog.=) c.conkey[1]
	JOIN pg_catalog.pg_attribute ra ON ra.attrelid OPERATOR(pg_catalog.=) c.confrelid AND ra.attnum OPERATOR(pg_catalog.=) c.confkey[1]
	WHERE c.contype = 'f' AND c.conrelid OPERATOR(pg_catalog.=) shares AND c.confrelid OPERATOR(pg_catalog.=) tbl
	  AND pg_catalog.cardinality(c.conkey) OPERATOR(pg_catalog.=) 1
	ORDER BY c.conname LIMIT 1;
	IF key_col IS NULL THEN
		RAISE EXCEPTION '% has no one-column foreign key to %', shares, tbl USING ERRCODE = 'invalid_foreign_key';
	END IF;
	PERFORM dalgo_internal.toolkit_column(tbl, owner_column, ARRAY['uuid'::regtype]);
	PERFORM dalgo_internal.toolkit_column(shares, shared_with_column, ARRAY['uuid'::regtype]);
	PERFORM dalgo_internal.toolkit_column(shares, permission_column, NULL);
	PERFORM dalgo_internal.toolkit_column(shares, shared_by_column, ARRAY['uuid'::regtype]);
	has_public := public_column IS NOT NULL AND EXISTS (SELECT FROM pg_catalog.pg_attribute
		WHERE attrelid OPERATOR(pg_catalog.=) tbl AND attname OPERATOR(pg_catalog.=) public_column AND NOT attisdropped);
	IF has_public THEN
		PERFORM dalgo_internal.toolkit_column(tbl, public_column, ARRAY['boolean'::regtype]);
	END IF;

	-- Row ids shared with the caller: one uncorrelated subquery (an initPlan).
	shared := pg_catalog.format('%I OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT s.%I FROM %s s WHERE s.%I OPERATOR(pg_catalog.=) '
		'(SELECT dalgo.current_user_id()) AND s.%I::text OPERATOR(pg_catalog.=) ANY (%%L::text[])))',
		ref_col, key_col, shares_target, shared_with_column, permission_column);
	editable := pg_catalog.format(shared, '{edit}');
	shared := pg_catalog.format(shared, '{view,edit}');
	read_expr := mine || ' OR ' || shared;
	IF has_public THEN
		read_expr := read_expr || pg_catalog.format(' OR %I', public_column);
	END IF;

	PERFORM dalgo_internal.toolkit_prepare(tbl, ARRAY['dalgo_authenticated']);
	PERFORM dalgo_internal.toolkit_prepare(shares, ARRAY['dalgo_authenticated']);
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_shared_');
	PERFORM dalgo_internal.toolkit_drop_policies(shares, 'dalgo_shares_');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_shared_select', 'SELECT', 'dalgo_authenticated', read_expr, NULL,
		'Owners, users with a view or edit share' || CASE WHEN has_public THEN ', and everyone signed in for public rows' ELSE '' END);
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_shared_insert', 'INSERT', 'dalgo_authenticated', NULL, mine,
		'Users create rows only as their owner');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_shared_update', 'UPDATE', 'dalgo_authenticated', mine || ' OR ' || editable,
		mine || ' OR ' || editable, 'Owners and users with an edit share change rows (never the owner or the id)');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_shared_delete', 'DELETE', 'dalgo_authenticated', mine, NULL,
		'Only owners delete rows');
	-- Editors change every column but the owner and the shared id.
	SELECT pg_catalog.string_agg(pg_catalog.quote_ident(attname), ', ' ORDER BY attnum) INTO cols
	FROM pg_catalog.pg_attribute
	WHERE attrelid OPERATOR(pg_catalog.=) tbl AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped
	  AND attname NOT IN (owner_column, ref_col);
	EXECUTE pg_catalog.format('REVOKE UPDATE ON %s FROM dalgo_authenticated', target);
	EXECUTE pg_catalog.format('GRANT SELECT, INSERT, DELETE ON %s TO dalgo_authenticated', target);
	IF cols IS NOT NULL THEN
		EXECUTE pg_catalog.format('GRANT UPDATE (%s) ON %s TO dalgo_authenticated', cols, target);
	END IF;

	-- The shares: seen by the user shared with and by who shared; made by
	-- the row's owner (checked by a trigger, see dalgo_internal.guard_shares).
	PERFORM dalgo_internal.toolkit_policy(shares, 'dalgo_shares_select', 'SELECT', 'dalgo_authenticated',
		dalgo_internal.toolkit_own_test(shared_with_column) || ' OR ' || dalgo_internal.toolkit_own_test(shared_by_column), NULL,
		'A share is seen by the user it is for and by who shared');
	PERFORM dalgo_internal.toolkit_policy(shares, 'dalgo_shares_insert', 'INSERT', 'dalgo_authenticated', NULL,
		dalgo_internal.toolkit_own_test(shared_by_column), 'Shares are made in the name of who shares, the row''s owner');
	PERFORM dalgo_internal.toolkit_policy(shares, 'dalgo_shares_update', 'UPDATE', 'dalgo_authenticated',
		dalgo_internal.toolkit_own_test(shared_by_column), dalgo_internal.toolkit_own_test(shared_by_column),
		'Who shared changes the share');
	PERFORM dalgo_internal.toolkit_policy(shares, 'dalgo_shares_delete', 'DELETE', 'dalgo_authenticated',
		dalgo_internal.toolkit_own_test(shared_by_column) || ' OR ' || dalgo_internal.toolkit_own_test(shared_with_column), NULL,
		'Who shared revokes a share; the user it is for leaves it');
	EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER dalgo_shares_guard BEFORE INSERT OR UPDATE ON %s '
							  'FOR EACH ROW EXECUTE FUNCTION dalgo_internal.guard_shares(%L, %L, %L, %L)',
							  shares_target, target, ref_col, key_col, owner_column);
	EXECUTE pg_catalog.format('COMMENT ON TRIGGER dalgo_shares_guard ON %s IS %L', shares_target,
							  pg_catalog.format('Only the owner of a %s row shares it (dalgo toolkit)', target));
	EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO dalgo_authenticated', shares_target);

	PERFORM dalgo_internal.toolkit_ensure_index(tbl, owner_column);
	PERFORM dalgo_internal.toolkit_ensure_index(shares, shared_with_column);
	PERFORM dalgo_internal.toolkit_ensure_index(shares, key_col);
	PERFORM dalgo_internal.toolkit_ensure_index(shares, shared_by_column);
END
$$;
COMMENT ON FUNCTION dalgo.enable_shared_rows(regclass, regclass, name, name, name, name, name) IS
	'Secure an owner-plus-shares table: owners read and write their rows; users with a view or edit share (a row of shares, found by its foreign key to tbl) read them, edit shares change them (never the owner column); rows whose public_column is true are read by everyone signed in. Also secures shares: only a row''s owner shares it, in their name (shared_by_column). Idempotent; undo with dalgo.disable_shared_rows()';

CREATE FUNCTION dalgo.disable_child_rows(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_child_');
END
$$;
COMMENT ON FUNCTION dalgo.disable_child_rows(regclass) IS
	'Removes the policies of dalgo.enable_child_rows(); row-level security stays on';

CREATE FUNCTION dalgo.enable_child_rows(tbl regclass, parent regclass, parent_column name DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	parent_target text := dalgo_internal.toolkit_target(parent);
	key_col name;
	ref_col name;
	readable text;
	writable text;
BEGIN
	SELECT ka.attname, ra.attname INTO key_col, ref_col
	FROM pg_catalog.pg_constraint c
	JOIN pg_catalog.pg_attribute ka ON ka.attrelid OPERATOR(pg_catalog.=) c.conrelid AND ka.attnum OPERATOR(pg_catalog.=) c.conkey[1]
	JOIN pg_catalog.pg_attribute ra ON ra.attrelid OPERATOR(pg_catalog.=) c.confrelid AND ra.attnum OPERATOR(pg_catalog.=) c.confkey[1]
	WHERE c.contype = 'f' AND c.conrelid OPERATOR(pg_catalog.=) tbl AND c.confrelid OPERATOR(pg_catalog.=) parent
	  AND pg_catalog.cardinality(c.conkey) OPERATOR(pg_catalog.=) 1
	  AND (parent_column IS NULL OR ka.attname OPERATOR(pg_catalog.=) parent_column)
	ORDER BY c.conname LIMIT 1;
	IF key_col IS NULL THEN
		RAISE EXCEPTION '% has no one-column foreign key to %', tbl, parent USING ERRCODE = 'invalid_foreign_key';
	END IF;
	-- The parent rows the caller reads (its SELECT policies), and those it
	-- may update (a locking clause applies its UPDATE policies too; KEY
	-- SHARE, the lock a foreign key takes, blocks no ordinary update): one
	-- uncorrelated subquery each, an initPlan.
	readable := pg_catalog.format('%I OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT p.%I FROM %s p))', key_col, ref_col, parent_target);
	writable := pg_catalog.format('%I OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT p.%I FROM %s p FOR KEY SHARE))', key_col, ref_col, parent_target);
	PERFORM dalgo_internal.toolkit_prepare(tbl, ARRAY['dalgo_authenticated']);
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_child_');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_child_select', 'SELECT', 'dalgo_authenticated', readable, NULL,
		pg_catalog.format('Rows whose %s row the caller reads', parent_target));
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_child_insert', 'INSERT', 'dalgo_authenticated', NULL, writable,
		pg_catalog.format('Rows are added under a %s row the caller may change', parent_target));
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_child_update', 'UPDATE', 'dalgo_authenticated', writable, writable,
		pg_catalog.format('Rows under a %s row the caller may change are changed, and stay under one', parent_target));
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_child_delete', 'DELETE', 'dalgo_authenticated', writable, NULL,
		pg_catalog.format('Rows under a %s row the caller may change are deleted', parent_target));
	EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO dalgo_authenticated', target);
	PERFORM dalgo_internal.toolkit_ensure_index(tbl, key_col);
END
$$;
COMMENT ON FUNCTION dalgo.enable_child_rows(regclass, regclass, name) IS
	'Secure a table whose rows belong to a row of parent (through a one-column foreign key, or parent_column): a row is read by whoever reads its parent and written by whoever may update its parent, by the parent''s own policies. Idempotent; undo with dalgo.disable_child_rows()';

CREATE FUNCTION dalgo.enable_service_only(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
BEGIN
	PERFORM dalgo_internal.toolkit_prepare(tbl, '{}'::text[]);
	EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM dalgo_authenticated, dalgo_anon', target);
END
$$;
COMMENT ON FUNCTION dalgo.enable_service_only(regclass) IS
	'Secure a table for dalgo_service alone (the service-role pattern): row-level security on and forced, no end-user privilege. Undo by enabling another pattern';

-- ---------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.disable_updated_at(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS dalgo_updated_at ON %s', dalgo_internal.toolkit_target(tbl));
END
$$;
COMMENT ON FUNCTION dalgo.disable_updated_at(regclass) IS 'Removes the trigger of dalgo.enable_updated_at()';

CREATE FUNCTION dalgo.enable_updated_at(tbl regclass, "column" name DEFAULT 'updated_at') RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
BEGIN
	PERFORM dalgo_internal.toolkit_column(tbl, "column", ARRAY['timestamptz'::regtype, 'timestamp'::regtype]);
	EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER dalgo_updated_at BEFORE UPDATE ON %s '
							  'FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at(%L)', target, "column");
	EXECUTE pg_catalog.format('COMMENT ON TRIGGER dalgo_updated_at ON %s IS %L', target,
							  pg_catalog.format('%s is set on every update (dalgo toolkit)', "column"));
END
$$;
COMMENT ON FUNCTION dalgo.enable_updated_at(regclass, name) IS
	'Attach dalgo.set_updated_at() to a table: the column (timestamptz or timestamp) is set on every update. Idempotent; undo with dalgo.disable_updated_at()';

CREATE FUNCTION dalgo.disable_redaction(tbl regclass, "column" name) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s', 'dalgo_redact_' || "column", dalgo_internal.toolkit_target(tbl));
END
$$;
COMMENT ON FUNCTION dalgo.disable_redaction(regclass, name) IS 'Removes the trigger of dalgo.enable_redaction()';

CREATE FUNCTION dalgo.enable_redaction(tbl regclass, "column" name, keys text[] DEFAULT NULL, pii boolean DEFAULT false)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	args text;
BEGIN
	PERFORM dalgo_internal.toolkit_column(tbl, "column", ARRAY['jsonb'::regtype, 'text'::regtype, 'varchar'::regtype]);
	SELECT pg_catalog.string_agg(pg_catalog.quote_literal(a), ', ' ORDER BY o) INTO args
	FROM pg_catalog.unnest(ARRAY["column", CASE WHEN pii THEN 't' ELSE 'f' END]
						   || coalesce(keys, '{}'::text[])) WITH ORDINALITY AS u(a, o)
	WHERE a IS NOT NULL;
	EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER %I BEFORE INSERT OR UPDATE ON %s '
							  'FOR EACH ROW EXECUTE FUNCTION dalgo_internal.redact_trigger(%s)',
							  'dalgo_redact_' || "column", target, args);
	EXECUTE pg_catalog.format('COMMENT ON TRIGGER %I ON %s IS %L', 'dalgo_redact_' || "column", target,
							  pg_catalog.format('%s is redacted before it is stored (dalgo toolkit)', "column"));
END
$$;
COMMENT ON FUNCTION dalgo.enable_redaction(regclass, name, text[], boolean) IS
	'Redact a jsonb or text column before every insert and update, as dalgo.redact_jsonb(value, keys, pii) does (keys NULL: the secret names). Idempotent; undo with dalgo.disable_redaction()';

-- ---------------------------------------------------------------------------
-- Retention
-- ---------------------------------------------------------------------------

CREATE TABLE dalgo.retention_policies (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	table_name regclass NOT NULL UNIQUE,
	time_column name NOT NULL,
	retention_days integer NOT NULL CHECK (retention_days > 0),
	action text NOT NULL DEFAULT 'delete' CHECK (action IN ('delete', 'anonymize')),
	columns text[] CHECK ((action = 'anonymize') = (columns IS NOT NULL AND cardinality(columns) > 0)),
	enabled boolean NOT NULL DEFAULT true,
	last_run_at timestamptz,
	last_rows bigint,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now(),
	user_column name,
	user_days_table regclass,
	user_days_column name,
	user_key_column name,
	CONSTRAINT retention_policies_user_days CHECK (num_nulls(user_column, user_days_table, user_days_column, user_key_column) IN (0, 4))
);
COMMENT ON TABLE dalgo.retention_policies IS
	'One retention policy per table: rows whose time_column is older than retention_days are deleted, or have columns set to NULL (anonymize), by dalgo.apply_retention(). Written by superusers through dalgo.set_retention()';
COMMENT ON COLUMN dalgo.retention_policies.id IS 'Primary key';
COMMENT ON COLUMN dalgo.retention_policies.table_name IS 'The table the policy covers (one policy per table)';
COMMENT ON COLUMN dalgo.retention_policies.time_column IS 'The timestamp column that dates a row';
COMMENT ON COLUMN dalgo.retention_policies.retention_days IS 'Rows older than this many days are expired';
COMMENT ON COLUMN dalgo.retention_policies.action IS 'delete, or anonymize (set columns to NULL)';
COMMENT ON COLUMN dalgo.retention_policies.columns IS 'For anonymize: the columns set to NULL';
COMMENT ON COLUMN dalgo.retention_policies.enabled IS 'Disabled policies are kept but not applied';
COMMENT ON COLUMN dalgo.retention_policies.last_run_at IS 'When dalgo.apply_retention() last applied the policy';
COMMENT ON COLUMN dalgo.retention_policies.last_rows IS 'Rows deleted or anonymized by that run';
COMMENT ON COLUMN dalgo.retention_policies.created_at IS 'When the policy was created';
COMMENT ON COLUMN dalgo.retention_policies.updated_at IS 'When the policy was last changed';
COMMENT ON COLUMN dalgo.retention_policies.user_column IS 'Per-user override: the column of the table naming the row''s user';
COMMENT ON COLUMN dalgo.retention_policies.user_days_table IS 'Per-user override: the table holding each user''s number of days';
COMMENT ON COLUMN dalgo.retention_policies.user_days_column IS 'Per-user override: its column of days (NULL or below 1: retention_days)';
COMMENT ON COLUMN dalgo.retention_policies.user_key_column IS 'Per-user override: its column matched to user_column (unique)';
COMMENT ON CONSTRAINT retention_policies_user_days ON dalgo.retention_policies IS 'A per-user override names all four, or none';
ALTER TABLE dalgo.retention_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE dalgo.retention_policies FORCE ROW LEVEL SECURITY;
REVOKE ALL ON dalgo.retention_policies FROM PUBLIC;
CREATE TRIGGER set_updated_at BEFORE UPDATE ON dalgo.retention_policies
	FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at();
-- The audit trail is covered too (through dalgo.purge_audit_logs()).
INSERT INTO dalgo.retention_policies (table_name, time_column, retention_days)
	VALUES ('dalgo.audit_logs', 'created_at', 365);

-- The install script writes the audit_logs policy above; a restore brings
-- the dumped one back.  While restoring, a dumped policy for a table that
-- already has one replaces it (with its id), instead of failing on the
-- unique key, so a changed audit_logs policy survives pg_dump/pg_restore.
CREATE FUNCTION dalgo_internal.record_restored_retention_policy() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT dalgo.restoring() THEN
		RETURN NEW;
	END IF;
	UPDATE dalgo.retention_policies p
	SET id = NEW.id, time_column = NEW.time_column, retention_days = NEW.retention_days, action = NEW.action,
		columns = NEW.columns, enabled = NEW.enabled, last_run_at = NEW.last_run_at, last_rows = NEW.last_rows,
		created_at = NEW.created_at, updated_at = NEW.updated_at, user_column = NEW.user_column,
		user_days_table = NEW.user_days_table, user_days_column = NEW.user_days_column, user_key_column = NEW.user_key_column
	WHERE p.table_name = NEW.table_name;
	IF FOUND THEN
		RETURN NULL;
	END IF;
	RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.record_restored_retention_policy() FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.record_restored_retention_policy() IS
	'Internal: BEFORE INSERT trigger on retention_policies; while restoring a dump, a policy for a table that already has one (the installed audit_logs policy) replaces it';
CREATE TRIGGER restore_retention_policy BEFORE INSERT ON dalgo.retention_policies
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.record_restored_retention_policy();
COMMENT ON TRIGGER restore_retention_policy ON dalgo.retention_policies IS
	'A restored policy replaces the one the install script wrote';
SELECT dalgo.enable_audit('dalgo.retention_policies', '{}', '');

CREATE FUNCTION dalgo.disable_retention(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM dalgo.retention_policies WHERE table_name OPERATOR(pg_catalog.=) tbl;
END
$$;
COMMENT ON FUNCTION dalgo.disable_retention(regclass) IS 'Removes a table''s retention policy';

CREATE FUNCTION dalgo.set_retention(tbl regclass, time_column name, retention_days integer,
								   action text DEFAULT 'delete', columns text[] DEFAULT NULL,
								   user_column name DEFAULT NULL, user_days text DEFAULT NULL, user_key name DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c text;
	parts text[];
	days_tbl regclass;
	days_col name;
	key_col name;
BEGIN
	IF tbl OPERATOR(pg_catalog.<>) 'dalgo.audit_logs'::regclass THEN
		PERFORM dalgo_internal.toolkit_target(tbl);
		IF (SELECT relkind FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) tbl) = 'p' THEN
			RAISE EXCEPTION '% is partitioned', tbl USING ERRCODE = 'wrong_object_type',
				HINT = 'Expire the rows of a partitioned table by detaching and dropping its old partitions.';
		END IF;
	ELSIF time_column <> 'created_at' OR action <> 'delete' OR user_column IS NOT NULL THEN
		RAISE EXCEPTION 'the audit trail only expires by created_at, with delete' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM dalgo_internal.toolkit_column(tbl, time_column, ARRAY['timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype]);
	IF action IS NULL OR action NOT IN ('delete', 'anonymize') THEN
		RAISE EXCEPTION 'action must be delete or anonymize' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF action = 'anonymize' THEN
		IF columns IS NULL OR pg_catalog.cardinality(columns) = 0 THEN
			RAISE EXCEPTION 'anonymize needs the columns to set to NULL' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		FOREACH c IN ARRAY columns LOOP
			PERFORM dalgo_internal.toolkit_column(tbl, c, NULL);
			IF EXISTS (SELECT FROM pg_catalog.pg_attribute WHERE attrelid OPERATOR(pg_catalog.=) tbl
					   AND attname OPERATOR(pg_catalog.=) c AND attnotnull) THEN
				RAISE EXCEPTION 'column "%" of % is NOT NULL and cannot be anonymized', c, tbl
					USING ERRCODE = 'invalid_parameter_value';
			END IF;
		END LOOP;
	ELSIF columns IS NOT NULL THEN
		RAISE EXCEPTION 'columns are only for anonymize' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- Per-user override: user_days names a column "schema.table.column" of
	-- days, found by the row's user_column in its unique column user_key.
	IF (user_column IS NULL) <> (user_days IS NULL) OR (user_key IS NOT NULL AND user_column IS NULL) THEN
		RAISE EXCEPTION 'a per-user retention needs both user_column and user_days' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF user_column IS NOT NULL THEN
		parts := pg_catalog.parse_ident(user_days);
		IF pg_catalog.cardinality(parts) OPERATOR(pg_catalog.<>) 3 THEN
			RAISE EXCEPTION 'user_days must name a column as schema.table.column' USING ERRCODE = 'invalid_parameter_value',
				HINT = 'Quote names with capitals: ''app.prefs."retentionDays"''.';
		END IF;
		days_tbl := pg_catalog.to_regclass(pg_catalog.format('%I.%I', parts[1], parts[2]));
		IF days_tbl IS NULL THEN
			RAISE EXCEPTION 'table %.% does not exist', parts[1], parts[2] USING ERRCODE = 'undefined_table';
		END IF;
		days_col := parts[3];
		key_col := coalesce(user_key, user_column);
		PERFORM dalgo_internal.toolkit_column(days_tbl, days_col, ARRAY['int2'::regtype, 'int4'::regtype, 'int8'::regtype]);
		IF dalgo_internal.toolkit_column(tbl, user_column, NULL) OPERATOR(pg_catalog.<>) dalgo_internal.toolkit_column(days_tbl, key_col, NULL) THEN
			RAISE EXCEPTION 'column "%" of % and column "%" of % are of different types', user_column, tbl, key_col, days_tbl
				USING ERRCODE = 'datatype_mismatch';
		END IF;
		-- The caller reads what decides the deletions.
		IF NOT pg_catalog.has_column_privilege(days_tbl, days_col, 'SELECT')
		   OR NOT pg_catalog.has_column_privilege(days_tbl, key_col, 'SELECT') THEN
			RAISE EXCEPTION 'permission denied for table %', days_tbl USING ERRCODE = 'insufficient_privilege';
		END IF;
		-- One row per user, found through an index.
		IF NOT EXISTS (SELECT FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
						   ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]
					   WHERE i.indrelid OPERATOR(pg_catalog.=) days_tbl AND i.indisunique AND i.indnkeyatts OPERATOR(pg_catalog.=) 1
						 AND i.indpred IS NULL AND i.indisvalid AND a.attname OPERATOR(pg_catalog.=) key_col) THEN
			RAISE EXCEPTION 'column "%" of % needs a unique index: one number of days per user', key_col, days_tbl
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
	END IF;
	INSERT INTO dalgo.retention_policies AS p (table_name, time_column, retention_days, action, columns,
											   user_column, user_days_table, user_days_column, user_key_column)
		VALUES (tbl, time_column, retention_days, action, columns, user_column, days_tbl, days_col, key_col)
		ON CONFLICT (table_name) DO UPDATE
		SET time_column = excluded.time_column, retention_days = excluded.retention_days,
			action = excluded.action, columns = excluded.columns, enabled = true, user_column = excluded.user_column,
			user_days_table = excluded.user_days_table, user_days_column = excluded.user_days_column,
			user_key_column = excluded.user_key_column;
	IF tbl OPERATOR(pg_catalog.<>) 'dalgo.audit_logs'::regclass THEN
		PERFORM dalgo_internal.toolkit_ensure_index(tbl, time_column);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.set_retention(regclass, name, integer, text, text[], name, text, name) IS
	'Add or replace a table''s retention policy: rows whose time_column is older than retention_days are deleted, or (action anonymize) have columns set to NULL, by dalgo.apply_retention(). With user_column and user_days (''schema.table.column'' of days, matched on its unique column user_key, default user_column''s name), each user''s own number of days overrides retention_days. Superusers (the policies table is theirs)';

CREATE FUNCTION dalgo.apply_retention(batch_size integer DEFAULT 10000, max_batches integer DEFAULT NULL)
	RETURNS TABLE (table_name text, action text, rows_affected bigint, batches integer)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p record;
	target text;
	cutoff timestamptz;
	stmt text;
	expired text;
	shortest bigint;
	n bigint;
BEGIN
	IF batch_size IS NULL OR batch_size < 1 THEN
		RAISE EXCEPTION 'batch_size must be positive' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR p IN SELECT r.*, c.relnamespace, c.relname
			 FROM dalgo.retention_policies r JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.table_name
			 WHERE r.enabled ORDER BY r.table_name::oid
	LOOP
		cutoff := pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(days => p.retention_days);
		table_name := p.table_name::text;
		action := p.action;
		rows_affected := 0;
		batches := 0;
		IF p.table_name OPERATOR(pg_catalog.=) 'dalgo.audit_logs'::regclass THEN
			rows_affected := dalgo.purge_audit_logs(pg_catalog.make_interval(days => p.retention_days));
			batches := 1;
		ELSE
			target := pg_catalog.format('%I.%I', p.relnamespace::regnamespace::text, p.relname);
			expired := pg_catalog.format('t.%I OPERATOR(pg_catalog.<) $1', p.time_column);
			IF p.user_column IS NOT NULL THEN
				-- A row is expired after its user's days (or retention_days).
				-- The time index finds the candidates older than the shortest
				-- retention anyone has; the unique index of the days table
				-- finds each candidate's user.
				EXECUTE pg_catalog.format('SELECT pg_catalog.min(d.%I) FROM %s d WHERE d.%I OPERATOR(pg_catalog.>=) 1',
										  p.user_days_column, p.user_days_table, p.user_days_column) INTO shortest;
				cutoff := pg_catalog.now() OPERATOR(pg_catalog.-)
						  pg_catalog.make_interval(days => LEAST(p.retention_days, shortest::integer));
				expired := expired || pg_catalog.format(' AND t.%I OPERATOR(pg_catalog.<) ($3 OPERATOR(pg_catalog.-) '
					'pg_catalog.make_interval(days => coalesce((SELECT d.%I::integer FROM %s d WHERE d.%I OPERATOR(pg_catalog.=) t.%I '
					'AND d.%I OPERATOR(pg_catalog.>=) 1), $4)))',
					p.time_column, p.user_days_column, p.user_days_table, p.user_key_column, p.user_column, p.user_days_column);
			END IF;
			IF p.action = 'delete' THEN
				stmt := pg_catalog.format('DELETE FROM ONLY %s WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY('
					'SELECT t.ctid FROM ONLY %s t WHERE %s LIMIT $2 FOR UPDATE OF t SKIP LOCKED))',
					target, target, expired);
			ELSE
				stmt := pg_catalog.format('UPDATE ONLY %s SET %s WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY('
					'SELECT t.ctid FROM ONLY %s t WHERE %s AND (%s) LIMIT $2 FOR UPDATE OF t SKIP LOCKED))',
					target,
					(SELECT pg_catalog.string_agg(pg_catalog.format('%I = NULL', c), ', ') FROM pg_catalog.unnest(p.columns) c),
					target, expired,
					(SELECT pg_catalog.string_agg(pg_catalog.format('t.%I IS NOT NULL', c), ' OR ') FROM pg_catalog.unnest(p.columns) c));
			END IF;
			LOOP
				EXECUTE stmt USING cutoff, batch_size, pg_catalog.now(), p.retention_days;
				GET DIAGNOSTICS n = ROW_COUNT;
				rows_affected := rows_affected OPERATOR(pg_catalog.+) n;
				batches := batches OPERATOR(pg_catalog.+) 1;
				EXIT WHEN n OPERATOR(pg_catalog.<) batch_size
					OR (max_batches IS NOT NULL AND batches OPERATOR(pg_catalog.>=) max_batches);
			END LOOP;
		END IF;
		UPDATE dalgo.retention_policies r SET last_run_at = pg_catalog.now(), last_rows = rows_affected
			WHERE r.table_name OPERATOR(pg_catalog.=) p.table_name;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo.apply_retention(integer, integer) IS
	'Apply every enabled retention policy, batch_size rows per statement (at most max_batches per table; NULL: until done); returns what it did per table. Superusers and dalgo_service. Run daily with CALL dalgo.run_retention(), which commits between batches';

-- A procedure with SET or SECURITY DEFINER cannot commit: this one has
-- neither, runs with the caller's rights, and names everything qualified.
CREATE PROCEDURE dalgo.run_retention(batch_size integer DEFAULT 10000)
	LANGUAGE plpgsql
AS $$
DECLARE
	n bigint;
BEGIN
	LOOP
		SELECT pg_catalog.sum(r.rows_affected) INTO n FROM dalgo.apply_retention(batch_size, 1) r;
		COMMIT;
		EXIT WHEN n IS NULL OR n OPERATOR(pg_catalog.=) 0;
	END LOOP;
END
$$;
COMMENT ON PROCEDURE dalgo.run_retention(integer) IS
	'Apply every retention policy one batch at a time, committing after each batch, so that no lock is held longer than one batch; run it daily (docs/toolkit.md#retention)';

-- ---------------------------------------------------------------------------
-- Secrets at rest
-- ---------------------------------------------------------------------------
-- A column handed to dalgo.enable_encryption() stores
-- 'dalgo:pgp1:' || base64(pgp_sym_encrypt(value, key)) (as a JSON string in
-- json and jsonb columns), written by a BEFORE trigger; the key lives in the
-- file dalgo_secret.key of the data directory, readable by superusers only,
-- never in the database (so never in a dump).  Readers get plaintext from
-- dalgo.read_secret() (members at the column's read_role) or
-- dalgo.read_secret_service() (dalgo_service).

-- pgp_sym_encrypt and pgp_sym_decrypt in pgcrypto's library, as
-- sql/accounts.sql does for crypt(): no CREATE EXTENSION pgcrypto needed.
CREATE FUNCTION dalgo_internal.pgcrypto_pgp_sym_encrypt(data text, key text, options text) RETURNS bytea
	AS '$libdir/pgcrypto', 'pgp_sym_encrypt_text'
	LANGUAGE C STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_internal.pgcrypto_pgp_sym_encrypt(text, text, text) IS 'pgcrypto''s pgp_sym_encrypt(data, key, options), called in pgcrypto''s library (private)';

CREATE FUNCTION dalgo_internal.pgcrypto_pgp_sym_decrypt(data bytea, key text) RETURNS text
	AS '$libdir/pgcrypto', 'pgp_sym_decrypt_text'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_internal.pgcrypto_pgp_sym_decrypt(bytea, text) IS 'pgcrypto''s pgp_sym_decrypt(data, key), called in pgcrypto''s library (private)';

-- The current key, from the data directory.
CREATE FUNCTION dalgo_internal.toolkit_secret_key() RETURNS text
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
BEGIN
	IF k IS NULL OR k = '' THEN
		RAISE EXCEPTION 'no secret key is set' USING ERRCODE = 'object_not_in_prerequisite_state',
			HINT = 'A superuser sets one with SELECT dalgo.rotate_secret_key();';
	END IF;
	RETURN k;
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_secret_key() IS
	'Internal: the encryption key, read from dalgo_secret.key in the data directory';

-- Write the key file: keys is the current key, then the previous one on
-- the next line.  The keys never appear in a statement's text (logs, error
-- contexts): COPY reads them from a transaction-local setting.
CREATE FUNCTION dalgo_internal.write_secret_key(keys text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM pg_catalog.set_config('dalgo_toolkit.pending_key', keys, true);
	EXECUTE pg_catalog.format('COPY (SELECT pg_catalog.unnest(pg_catalog.string_to_array('
							  'pg_catalog.current_setting(''dalgo_toolkit.pending_key''), E''\n''))) TO %L',
							  pg_catalog.current_setting('data_directory') || '/dalgo_secret.key');
	PERFORM pg_catalog.set_config('dalgo_toolkit.pending_key', '', true);
END
$$;
COMMENT ON FUNCTION dalgo_internal.write_secret_key(text) IS
	'Internal: writes dalgo_secret.key in the data directory (the current key, then the previous one)';

-- A line in the server log without the client's statement (which may hold
-- the secret being written); RAISE LOG would attach it.
CREATE FUNCTION dalgo_internal.log_without_statement(message text) RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_log_without_statement'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION dalgo_internal.log_without_statement(text) IS
	'Internal: write a message to the server log at LOG level without the statement that led to it';
REVOKE ALL ON FUNCTION dalgo_internal.log_without_statement(text) FROM PUBLIC;

-- The key to encrypt with: created (32 random bytes) when there is none yet.
CREATE FUNCTION dalgo_internal.secret_key_for_writing() RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
BEGIN
	IF (k IS NULL OR k = '') AND dalgo_internal.citus_distributed('dalgo.sources') THEN
		-- On a Citus cluster shards are written on the workers and read on
		-- the coordinator: a key made by one node would open nothing on
		-- another.
		RAISE EXCEPTION 'no secret key is set on this node of the Citus cluster'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Put the same dalgo_secret.key in the data directory of every node (docs/scaling.md).';
	END IF;
	IF k IS NULL OR k = '' THEN
		-- One creator at a time; the file outlives a rollback, so a
		-- second creator finds it after the first one's lock is gone.
		PERFORM pg_catalog.pg_advisory_xact_lock(7316028433216171853);
		k := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
		IF k IS NULL OR k = '' THEN
			k := pg_catalog.encode(dalgo_internal.pgcrypto_random_bytes(32), 'hex');
			PERFORM dalgo_internal.write_secret_key(k);
			PERFORM dalgo_internal.log_without_statement(
				'dalgo: created the secret key dalgo_secret.key in the data directory; back it up apart from the database');
		END IF;
	END IF;
	RETURN k;
END
$$;
COMMENT ON FUNCTION dalgo_internal.secret_key_for_writing() IS
	'Internal: the encryption key, created (32 random bytes in dalgo_secret.key of the data directory) on first need';

-- Encrypt one value (already encrypted values are returned as they are).
CREATE FUNCTION dalgo_internal.toolkit_encrypt(plain text, key text) RETURNS text
	LANGUAGE plpgsql VOLATILE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c bytea;
BEGIN
	IF plain IS NULL OR pg_catalog.starts_with(plain, 'dalgo:pgp1:') THEN
		RETURN plain;
	END IF;
	-- s2k-mode=1 (salted, not iterated): the key is random, not a password,
	-- and iterating would cost a quarter millisecond per value.
	c := dalgo_internal.pgcrypto_pgp_sym_encrypt(plain, pg_catalog.split_part(key, E'\n', 1), 'cipher-algo=aes256, s2k-mode=1');
	RETURN 'dalgo:pgp1:' || pg_catalog.translate(pg_catalog.encode(c, 'base64'), E'\n', '');
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_encrypt(text, text) IS 'Internal: pgp_sym_encrypt (AES-256) a value into dalgo''s stored form';

-- Decrypt one stored value.
CREATE FUNCTION dalgo_internal.toolkit_decrypt(stored text, key text) RETURNS text
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text;
BEGIN
	IF stored IS NULL OR NOT pg_catalog.starts_with(stored, 'dalgo:pgp1:') THEN
		RETURN stored;
	END IF;
	-- The current key first, then the previous one (see rotate_secret_key).
	FOREACH k IN ARRAY pg_catalog.string_to_array(key, E'\n') LOOP
		BEGIN
			RETURN dalgo_internal.pgcrypto_pgp_sym_decrypt(pg_catalog.decode(pg_catalog.substr(stored, 12), 'base64'), k);
		EXCEPTION WHEN external_routine_invocation_exception OR data_exception THEN
			NULL;
		END;
	END LOOP;
	RAISE EXCEPTION 'a stored secret cannot be decrypted with the current or the previous key'
		USING ERRCODE = 'data_corrupted';
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_decrypt(text, text) IS
	'Internal: decrypt a value stored by dalgo_internal.toolkit_encrypt(), with the current key or else the previous one';

-- The stored text of a column value (a JSON string is its content).
CREATE FUNCTION dalgo_internal.toolkit_stored_text(value jsonb, is_json boolean) RETURNS text
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
	RETURN CASE WHEN value IS NULL OR value OPERATOR(pg_catalog.=) 'null'::jsonb THEN NULL
				WHEN NOT is_json OR pg_catalog.jsonb_typeof(value) = 'string' THEN value OPERATOR(pg_catalog.#>>) '{}'::text[]
				ELSE value::text END;
COMMENT ON FUNCTION dalgo_internal.toolkit_stored_text(jsonb, boolean) IS 'Internal: the text that encryption reads from a column value';

CREATE FUNCTION dalgo_internal.set_encrypted_column() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	col text := TG_ARGV[0];
	is_json boolean;
	plain text;
BEGIN
	SELECT a.atttypid IN ('json'::regtype, 'jsonb'::regtype) INTO is_json FROM pg_catalog.pg_attribute a
	WHERE a.attrelid OPERATOR(pg_catalog.=) TG_RELID AND a.attname OPERATOR(pg_catalog.=) col;
	plain := dalgo_internal.toolkit_stored_text(pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.->) col, is_json);
	IF plain IS NULL OR pg_catalog.starts_with(plain, 'dalgo:pgp1:') THEN
		RETURN NEW;
	END IF;
	RETURN pg_catalog.jsonb_populate_record(NEW, pg_catalog.jsonb_build_object(col,
		dalgo_internal.toolkit_encrypt(plain, dalgo_internal.toolkit_secret_key())));
END
$$;
COMMENT ON FUNCTION dalgo_internal.set_encrypted_column() IS
	'BEFORE INSERT OR UPDATE trigger storing a column encrypted (arguments: column, organization column, read role); attach it with dalgo.enable_encryption()';

-- Rewrite a column without the audit trail recording the rewrite: the
-- values do not change, and an audit row would hold the plaintext.
CREATE FUNCTION dalgo_internal.toolkit_rewrite_unaudited(tbl regclass, stmt text, arg1 text DEFAULT NULL, arg2 text DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	quiet name[];
	t name;
	n bigint;
BEGIN
	SELECT pg_catalog.array_agg(tgname) INTO quiet FROM pg_catalog.pg_trigger
	WHERE tgrelid OPERATOR(pg_catalog.=) tbl AND tgname IN ('dalgo_audit', 'dalgo_audit_update') AND tgenabled <> 'D';
	FOREACH t IN ARRAY coalesce(quiet, '{}') LOOP
		EXECUTE pg_catalog.format('ALTER TABLE %s DISABLE TRIGGER %I', target, t);
	END LOOP;
	EXECUTE stmt USING arg1, arg2;
	GET DIAGNOSTICS n = ROW_COUNT;
	FOREACH t IN ARRAY coalesce(quiet, '{}') LOOP
		EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE TRIGGER %I', target, t);
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_rewrite_unaudited(regclass, text, text, text) IS
	'Internal: runs an UPDATE that encrypts or decrypts a column in place with the table''s audit triggers off';

CREATE FUNCTION dalgo.enable_encryption(tbl regclass, "column" name, org_column name DEFAULT 'organization_id',
										read_role dalgo.member_role DEFAULT 'admin')
	RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
BEGIN
	PERFORM dalgo_internal.secret_key_for_writing();
	PERFORM dalgo_internal.toolkit_column(tbl, "column", ARRAY['text'::regtype, 'varchar'::regtype, 'json'::regtype, 'jsonb'::regtype]);
	PERFORM dalgo_internal.toolkit_column(tbl, org_column, ARRAY['uuid'::regtype]);
	IF read_role IS NULL THEN
		RAISE EXCEPTION 'read_role is required' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF (SELECT pg_catalog.count(*) FROM pg_catalog.pg_constraint WHERE conrelid OPERATOR(pg_catalog.=) tbl AND contype = 'p'
		AND pg_catalog.cardinality(conkey) OPERATOR(pg_catalog.=) 1) OPERATOR(pg_catalog.<>) 1 THEN
		RAISE EXCEPTION '% needs a one-column primary key', tbl USING ERRCODE = 'invalid_table_definition';
	END IF;
	EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER %I BEFORE INSERT OR UPDATE ON %s '
							  'FOR EACH ROW EXECUTE FUNCTION dalgo_internal.set_encrypted_column(%L, %L, %L)',
							  'dalgo_encrypt_' || "column", target, "column", org_column, read_role);
	EXECUTE pg_catalog.format('COMMENT ON TRIGGER %I ON %s IS %L', 'dalgo_encrypt_' || "column", target,
							  pg_catalog.format('%s is stored encrypted (dalgo toolkit)', "column"));
	-- Encrypt what is there (the trigger does the work).
	RETURN dalgo_internal.toolkit_rewrite_unaudited(tbl,
		pg_catalog.format('UPDATE %s SET %I = %I WHERE %I IS NOT NULL', target, "column", "column", "column"));
END
$$;
COMMENT ON FUNCTION dalgo.enable_encryption(regclass, name, name, dalgo.member_role) IS
	'Store a text, json or jsonb column encrypted at rest (pgcrypto, AES-256, key in the data directory): existing values are encrypted now, new ones on write. Members at read_role of the row''s organization read it with dalgo.read_secret(), dalgo_service with dalgo.read_secret_service(). Superusers; returns the rows encrypted';

CREATE FUNCTION dalgo.disable_encryption(tbl regclass, "column" name) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	is_json boolean;
	coltype text;
	k text := dalgo_internal.toolkit_secret_key();
BEGIN
	EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s', 'dalgo_encrypt_' || "column", target);
	SELECT a.atttypid IN ('json'::regtype, 'jsonb'::regtype), pg_catalog.format_type(a.atttypid, a.atttypmod)
	INTO is_json, coltype FROM pg_catalog.pg_attribute a
	WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) "column";
	RETURN dalgo_internal.toolkit_rewrite_unaudited(tbl,
		pg_catalog.format('UPDATE %s SET %I = dalgo_internal.toolkit_decrypt(dalgo_internal.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1::boolean), $2)::%s '
						  'WHERE pg_catalog.starts_with(dalgo_internal.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1::boolean), ''dalgo:pgp1:'')',
						  target, "column", "column", coltype, "column"), is_json::text, k);
END
$$;
COMMENT ON FUNCTION dalgo.disable_encryption(regclass, name) IS
	'Store a column in plaintext again: drops the trigger of dalgo.enable_encryption() and decrypts the stored values; returns the rows decrypted';

-- Read one encrypted value: the row by its primary key, checked by the caller.
CREATE FUNCTION dalgo_internal.toolkit_read_secret(tbl regclass, "column" name, id text, check_membership boolean) RETURNS text
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	args text[];
	pk name;
	pktype text;
	is_json boolean;
	org uuid;
	stored jsonb;
BEGIN
	-- Only columns a superuser handed to enable_encryption().
	SELECT pg_catalog.string_to_array(pg_catalog.rtrim(pg_catalog.encode(t.tgargs, 'escape'), E'\\000'), E'\\000') INTO args
	FROM pg_catalog.pg_trigger t
	WHERE t.tgrelid OPERATOR(pg_catalog.=) tbl AND t.tgname OPERATOR(pg_catalog.=) ('dalgo_encrypt_' || "column")::name
	  AND t.tgfoid OPERATOR(pg_catalog.=) 'dalgo_internal.set_encrypted_column()'::regprocedure;
	IF args IS NULL OR args[1] OPERATOR(pg_catalog.<>) "column" THEN
		RAISE EXCEPTION 'column "%" of % is not encrypted by dalgo', "column", tbl USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) INTO pk, pktype
	FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_attribute a
		ON a.attrelid OPERATOR(pg_catalog.=) c.conrelid AND a.attnum OPERATOR(pg_catalog.=) c.conkey[1]
	WHERE c.conrelid OPERATOR(pg_catalog.=) tbl AND c.contype = 'p';
	SELECT a.atttypid IN ('json'::regtype, 'jsonb'::regtype) INTO is_json FROM pg_catalog.pg_attribute a
	WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) "column";
	EXECUTE pg_catalog.format('SELECT %I, pg_catalog.to_jsonb(%I) FROM %s WHERE %I OPERATOR(pg_catalog.=) $1::%s',
							  args[2], "column", tbl, pk, pktype)
		INTO org, stored USING id;
	IF check_membership AND NOT coalesce(org OPERATOR(pg_catalog.=) ANY (dalgo.current_org_ids(args[3]::dalgo.member_role)), false) THEN
		RETURN NULL;
	END IF;
	RETURN dalgo_internal.toolkit_decrypt(dalgo_internal.toolkit_stored_text(stored, is_json), dalgo_internal.toolkit_secret_key());
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_read_secret(regclass, name, text, boolean) IS
	'Internal: the plaintext of one encrypted value, by the row''s primary key, with or without the membership check';

CREATE FUNCTION dalgo.read_secret(tbl regclass, "column" name, id text) RETURNS text
	LANGUAGE sql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	RETURN dalgo_internal.toolkit_read_secret(tbl, "column", id, true);
COMMENT ON FUNCTION dalgo.read_secret(regclass, name, text) IS
	'The plaintext of an encrypted column (dalgo.enable_encryption()) of the row whose primary key is id, for members at the column''s read_role of the row''s organization; NULL for anyone else or no such row';

CREATE FUNCTION dalgo.read_secret_service(tbl regclass, "column" name, id text) RETURNS text
	LANGUAGE sql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	RETURN dalgo_internal.toolkit_read_secret(tbl, "column", id, false);
COMMENT ON FUNCTION dalgo.read_secret_service(regclass, name, text) IS
	'The plaintext of an encrypted column of the row whose primary key is id, for dalgo_service (workers that use the credentials)';

CREATE FUNCTION dalgo.rotate_secret_key(new_key text DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	old_key text;
	k text := new_key;
	t record;
	n bigint;
	total bigint := 0;
BEGIN
	IF dalgo_internal.citus_distributed('dalgo.sources') THEN
		-- Each node reads its own key file, and a key must not travel in a
		-- statement's text: rotating it on every node at once is not done yet.
		RAISE EXCEPTION 'dalgo.rotate_secret_key() does not run on a Citus cluster yet'
			USING ERRCODE = 'feature_not_supported',
				  HINT = 'The key file dalgo_secret.key must stay the same on every node; see docs/scaling.md.';
	END IF;
	-- One writer of the key file at a time (dalgo_internal.secret_key_for_writing).
	PERFORM pg_catalog.pg_advisory_xact_lock(7316028433216171853);
	old_key := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
	IF k IS NULL THEN
		k := pg_catalog.encode(dalgo_internal.pgcrypto_random_bytes(32), 'hex');
	ELSIF pg_catalog.length(k) OPERATOR(pg_catalog.<) 16 OR k !~ '^[A-Za-z0-9+/=_-]+$' THEN
		RAISE EXCEPTION 'a secret key has at least 16 characters among A-Z, a-z, 0-9, +, /, =, _ and -'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF old_key IS NOT NULL AND old_key <> '' THEN
		old_key := dalgo_internal.toolkit_secret_key();
		FOR t IN SELECT tr.tgrelid::regclass AS tbl, a.attname, a.atttypid IN ('json'::regtype, 'jsonb'::regtype) AS is_json,
					  pg_catalog.format_type(a.atttypid, a.atttypmod) AS coltype
				 FROM pg_catalog.pg_trigger tr
				 JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) tr.tgrelid
					AND a.attname OPERATOR(pg_catalog.=) pg_catalog.split_part(pg_catalog.encode(tr.tgargs, 'escape'), E'\\000', 1)
				 WHERE tr.tgfoid OPERATOR(pg_catalog.=) 'dalgo_internal.set_encrypted_column()'::regprocedure
		LOOP
			EXECUTE pg_catalog.format('UPDATE %s SET %I = %s(dalgo_internal.toolkit_encrypt(dalgo_internal.toolkit_decrypt('
				'dalgo_internal.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1), $2), $3))::%s '
				'WHERE pg_catalog.starts_with(dalgo_internal.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1), ''dalgo:pgp1:'')',
				t.tbl, t.attname, CASE WHEN t.is_json THEN 'pg_catalog.to_jsonb' ELSE '' END, t.attname, t.coltype, t.attname)
				USING t.is_json, old_key, k;
			GET DIAGNOSTICS n = ROW_COUNT;
			total := total OPERATOR(pg_catalog.+) n;
		END LOOP;
		-- dalgo's own secrets: sources.config.credentials, warehouse access tokens.
		total := total OPERATOR(pg_catalog.+) dalgo_internal.reseal_own_secrets(old_key, k);
	END IF;
	-- The file keeps the previous key after the new one: if this transaction
	-- rolls back after the file is written, the values it re-encrypted are
	-- still readable.
	PERFORM dalgo_internal.write_secret_key(k || coalesce(E'\n' || NULLIF(pg_catalog.split_part(old_key, E'\n', 1), ''), ''));
	RETURN total;
END
$$;
COMMENT ON FUNCTION dalgo.rotate_secret_key(text) IS
	'Set the encryption key (new_key, or 32 random bytes) and re-encrypt under it every value stored by dalgo.enable_encryption(), the credentials in dalgo.sources.config and the warehouse access tokens; returns the values re-encrypted. Superusers. The key is the file dalgo_secret.key in the data directory: back it up apart from the database';

-- ---------------------------------------------------------------------------
-- Security report
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.security_report(schema name DEFAULT NULL)
	RETURNS TABLE (table_name text, severity text, problem text, fix text)
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	WITH nsp AS (
		SELECT n.oid, n.nspname FROM pg_catalog.pg_namespace n
		WHERE (security_report.schema IS NULL AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
			   AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%')
		   OR n.nspname OPERATOR(pg_catalog.=) security_report.schema
	), rel AS (
		SELECT c.oid, c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity, c.relacl, c.relispartition,
			   pg_catalog.format('%I.%I', nsp.nspname, c.relname) AS qname
		FROM pg_catalog.pg_class c JOIN nsp ON nsp.oid OPERATOR(pg_catalog.=) c.relnamespace
	), findings AS (
		SELECT r.qname, 'high' AS severity, 'row-level security is not enabled' AS problem,
			   pg_catalog.format('SELECT dalgo.enable_org_rows(%L) (or enable_own_rows, enable_public_read, enable_shared_rows)', r.qname) AS fix
		FROM rel r WHERE r.relkind IN ('r', 'p') AND NOT r.relispartition AND NOT r.relrowsecurity
		UNION ALL
		SELECT r.qname, 'medium', 'row-level security is not forced: the table owner bypasses it',
			   pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', r.qname)
		FROM rel r WHERE r.relkind IN ('r', 'p') AND NOT r.relispartition AND r.relrowsecurity AND NOT r.relforcerowsecurity
		UNION ALL
		SELECT r.qname, 'medium', pg_catalog.format('policy %I %s', pol.polname, prob),
			   'Wrap per-row calls in a scalar subquery, (SELECT f()), so they run once per statement; never call volatile functions in a policy'
		FROM rel r JOIN pg_catalog.pg_policy pol ON pol.polrelid OPERATOR(pg_catalog.=) r.oid
		CROSS JOIN LATERAL pg_catalog.unnest(
			coalesce(dalgo_internal.toolkit_policy_problems(pol.polqual), '{}'::text[])
			OPERATOR(pg_catalog.||) coalesce(dalgo_internal.toolkit_policy_problems(pol.polwithcheck), '{}'::text[])) AS prob
		UNION ALL
		SELECT DISTINCT r.qname, 'medium',
			   pg_catalog.format('column %I is tested by a policy but has no index', a.attname),
			   pg_catalog.format('CREATE INDEX ON %s (%I)', r.qname, a.attname)
		FROM rel r
		JOIN pg_catalog.pg_depend d ON d.refobjid OPERATOR(pg_catalog.=) r.oid
			AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_policy'::pg_catalog.regclass
			AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
			AND d.refobjsubid OPERATOR(pg_catalog.>) 0
		JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) r.oid
			AND a.attnum OPERATOR(pg_catalog.=) d.refobjsubid
		WHERE a.atttypid IN ('uuid'::pg_catalog.regtype, 'int4'::pg_catalog.regtype, 'int8'::pg_catalog.regtype)
		  AND NOT EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid OPERATOR(pg_catalog.=) r.oid
						  AND i.indkey[0] OPERATOR(pg_catalog.=) a.attnum AND i.indpred IS NULL)
		UNION ALL
		SELECT r.qname, 'high',
			   pg_catalog.format('column %I looks like a credential and is stored in plaintext', a.attname),
			   pg_catalog.format('SELECT dalgo.enable_encryption(%L, %L), store only a hash, or SELECT dalgo.enable_redaction(%L, %L)', r.qname, a.attname, r.qname, a.attname)
		FROM rel r JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) r.oid
		WHERE r.relkind IN ('r', 'p', 'f', 'v', 'm') AND NOT r.relispartition AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
		  AND dalgo_internal.is_secret_name(a.attname::text)
		  AND a.attname::text !~* '(hash|digest|encrypted|_enc)$'
		  AND coalesce(pg_catalog.col_description(r.oid, a.attnum) !~ '\[not a secret\]', true)
		  AND a.atttypid NOT IN ('bytea'::pg_catalog.regtype, 'bool'::pg_catalog.regtype)
		  AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid OPERATOR(pg_catalog.=) r.oid
						  AND t.tgname IN (('dalgo_redact_' OPERATOR(pg_catalog.||) a.attname::text)::name,
										   ('dalgo_encrypt_' OPERATOR(pg_catalog.||) a.attname::text)::name))
		UNION ALL
		SELECT r.qname, CASE WHEN acl.privilege_type = 'SELECT' THEN 'medium' ELSE 'high' END,
			   pg_catalog.format('PUBLIC has %s', acl.privilege_type),
			   pg_catalog.format('REVOKE %s ON %s FROM PUBLIC', acl.privilege_type, r.qname)
		FROM rel r CROSS JOIN LATERAL pg_catalog.aclexplode(r.relacl) acl
		WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND acl.grantee OPERATOR(pg_catalog.=) 0
		UNION ALL
		SELECT p.oid::pg_catalog.regprocedure::text, 'high',
			   CASE WHEN NOT coalesce(pg_catalog.array_to_string(p.proconfig, ',') ~ 'search_path=', false)
					THEN 'SECURITY DEFINER function without a fixed search_path'
					ELSE 'SECURITY DEFINER function whose search_path does not list pg_temp (it is searched first)' END,
			   pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', p.oid::pg_catalog.regprocedure)
		FROM pg_catalog.pg_proc p JOIN nsp ON nsp.oid OPERATOR(pg_catalog.=) p.pronamespace
		WHERE p.prosecdef AND NOT EXISTS (SELECT FROM pg_catalog.unnest(p.proconfig) s
										  WHERE s ~ '^search_path=' AND s ~ 'pg_temp')
		UNION ALL
		SELECT p.oid::pg_catalog.regprocedure::text, 'high',
			   'PUBLIC may execute this SECURITY DEFINER function',
			   pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', p.oid::pg_catalog.regprocedure)
		FROM pg_catalog.pg_proc p JOIN nsp ON nsp.oid OPERATOR(pg_catalog.=) p.pronamespace
		CROSS JOIN LATERAL pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) acl
		WHERE p.prosecdef AND acl.grantee OPERATOR(pg_catalog.=) 0
		UNION ALL
		SELECT nsp.nspname::text, 'high', 'PUBLIC may create objects in the schema',
			   pg_catalog.format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', nsp.nspname)
		FROM nsp JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) nsp.oid
		CROSS JOIN LATERAL pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) acl
		WHERE acl.grantee OPERATOR(pg_catalog.=) 0 AND acl.privilege_type = 'CREATE'
	)
	SELECT f.qname, f.severity, f.problem, f.fix FROM findings f
	ORDER BY CASE f.severity WHEN 'high' THEN 0 ELSE 1 END, 1, 3;
END;
COMMENT ON FUNCTION dalgo.security_report(name) IS
	'What is unprotected in a schema (NULL: every schema): tables without row-level security or not forcing it, policies calling volatile or per-row functions, policy columns without an index, SECURITY DEFINER functions without a fixed search_path or executable by PUBLIC, grants to PUBLIC, credentials-looking columns in plaintext (a column whose comment says [not a secret] is not one)';

REVOKE ALL ON FUNCTION
	dalgo.redact_jsonb(jsonb, text[], boolean), dalgo_internal.redact_trigger(), dalgo_internal.toolkit_condition(regclass, text),
	dalgo_internal.toolkit_policy_problems(pg_node_tree), dalgo_internal.is_secret_name(text), dalgo_internal.toolkit_target(regclass),
	dalgo_internal.toolkit_column(regclass, name, regtype[]), dalgo_internal.toolkit_ensure_index(regclass, name),
	dalgo_internal.toolkit_drop_policies(regclass, text), dalgo_internal.toolkit_prepare(regclass, text[], boolean),
	dalgo_internal.toolkit_policy(regclass, name, text, text, text, text, text),
	dalgo_internal.toolkit_org_test(name, dalgo.member_role), dalgo_internal.toolkit_own_test(name),
	dalgo.enable_org_rows(regclass, name, dalgo.member_role, dalgo.member_role, name), dalgo.disable_org_rows(regclass),
	dalgo.enable_own_rows(regclass, name, boolean), dalgo.disable_own_rows(regclass),
	dalgo.enable_public_read(regclass, text), dalgo.disable_public_read(regclass),
	dalgo.enable_shared_rows(regclass, regclass, name, name, name, name, name), dalgo.disable_shared_rows(regclass, regclass),
	dalgo_internal.guard_shares(), dalgo.enable_child_rows(regclass, regclass, name), dalgo.disable_child_rows(regclass), dalgo.enable_service_only(regclass),
	dalgo.enable_updated_at(regclass, name), dalgo.disable_updated_at(regclass),
	dalgo.enable_redaction(regclass, name, text[], boolean), dalgo.disable_redaction(regclass, name),
	dalgo.set_retention(regclass, name, integer, text, text[], name, text, name), dalgo.disable_retention(regclass),
	dalgo.apply_retention(integer, integer), dalgo.security_report(name),
	dalgo_internal.pgcrypto_pgp_sym_encrypt(text, text, text), dalgo_internal.pgcrypto_pgp_sym_decrypt(bytea, text),
	dalgo_internal.write_secret_key(text), dalgo_internal.secret_key_for_writing(), dalgo_internal.toolkit_secret_key(), dalgo_internal.toolkit_encrypt(text, text), dalgo_internal.toolkit_decrypt(text, text),
	dalgo_internal.toolkit_stored_text(jsonb, boolean), dalgo_internal.set_encrypted_column(),
	dalgo.enable_encryption(regclass, name, name, dalgo.member_role), dalgo.disable_encryption(regclass, name),
	dalgo_internal.toolkit_read_secret(regclass, name, text, boolean), dalgo.read_secret(regclass, name, text),
	dalgo.read_secret_service(regclass, name, text), dalgo.rotate_secret_key(text),
	dalgo_internal.toolkit_rewrite_unaudited(regclass, text, text, text)
	FROM PUBLIC;
REVOKE ALL ON PROCEDURE dalgo.run_retention(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.redact_jsonb(jsonb, text[], boolean) TO dalgo_authenticated, dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.apply_retention(integer, integer) TO dalgo_service;
GRANT EXECUTE ON PROCEDURE dalgo.run_retention(integer) TO dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.read_secret(regclass, name, text) TO dalgo_authenticated;
GRANT EXECUTE ON FUNCTION dalgo.read_secret_service(regclass, name, text) TO dalgo_service;
