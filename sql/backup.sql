-- backup.sql: make pg_dump a real backup.  Every dalgo table (and sequence,
-- should one appear) is an extension configuration table, so pg_dump dumps
-- its rows; dalgo.restoring() tells the triggers that a restore is loading
-- them back, so that they leave restored rows exactly as they were dumped
-- (docs/backup.md).

CREATE FUNCTION dalgo.restoring() RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_restoring_sql'
	LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.restoring() IS
	'True while the session restores a dump: row_security is off (pg_dump and pg_restore set it) and both the current and the outer role bypass row-level security. Triggers return early on restored INSERTs then. App roles cannot write dalgo tables with row_security off, so they never see true';
-- Every role that writes a dalgo table runs the triggers that ask.
GRANT EXECUTE ON FUNCTION dalgo.restoring() TO PUBLIC;

DO $$
DECLARE
	r regclass;
BEGIN
	FOR r IN SELECT c.oid FROM pg_catalog.pg_class c
			 WHERE c.relnamespace = 'dalgo'::regnamespace AND c.relkind IN ('r', 'p', 'S')
			 ORDER BY c.relname
	LOOP
		PERFORM pg_catalog.pg_extension_config_dump(r, '');
	END LOOP;
END
$$;
