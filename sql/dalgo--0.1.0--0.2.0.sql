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
