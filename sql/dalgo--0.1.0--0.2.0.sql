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
