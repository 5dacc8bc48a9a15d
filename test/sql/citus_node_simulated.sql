-- citus_node_simulated: what dalgo does on a Citus node, proven without
-- Citus (CI cannot build it).  Citus's metadata catalogs are imitated with
-- tables of the same names and columns in pg_catalog, and dropped at the
-- end; test/citus/run.sh proves the same on a real cluster.
--   * reads of a reference table go to its local shard <name>_<shardid>;
--     a reference table without a local shard is an error;
--   * on a worker, dalgo.user_id changes only by a top-level SET, never by
--     a set_config() inside a query (which Citus would push down);
--   * the audit trail names the distributed table, not the shard, and the
--     row by its id under the widened key (organization_id, id); a
--     reference table's copy on a worker writes no audit row.
\set VERBOSITY terse
SET client_min_messages = warning;
SET allow_system_table_mods = on;
CREATE TABLE pg_catalog.pg_dist_local_group (groupid integer);
CREATE TABLE pg_catalog.pg_dist_partition (logicalrelid regclass, partmethod "char");
CREATE TABLE pg_catalog.pg_dist_shard (logicalrelid regclass, shardid bigint);
RESET allow_system_table_mods;
INSERT INTO pg_catalog.pg_dist_local_group VALUES (0);	-- the coordinator

INSERT INTO dalgo.users (id, email) VALUES
	('11111111-0000-4000-8000-0000000000e1', 'shell@example.org'),
	('11111111-0000-4000-8000-0000000000e2', 'shard@example.org');
INSERT INTO dalgo.organizations (id, name, slug) VALUES
	('22222222-0000-4000-8000-0000000000e0', 'Sim', 'sim');
-- The shell table holds one membership, the "shard" another.
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
	('22222222-0000-4000-8000-0000000000e0', '11111111-0000-4000-8000-0000000000e1', 'admin');
CREATE TABLE dalgo.organization_members_102008 (LIKE dalgo.organization_members INCLUDING ALL);
INSERT INTO dalgo.organization_members_102008 (organization_id, user_id, role) VALUES
	('22222222-0000-4000-8000-0000000000e0', '11111111-0000-4000-8000-0000000000e2', 'viewer');

-- Before: not a Citus table, the shell's rows count.
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e1';
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000e0') AS shell_user_role;
COMMIT;
-- organization_members becomes a reference table whose local shard is 102008.
INSERT INTO pg_catalog.pg_dist_partition VALUES ('dalgo.organization_members', 'n');
INSERT INTO pg_catalog.pg_dist_shard VALUES ('dalgo.organization_members', 102008);
-- (Citus invalidates the table's relcache entry when it distributes it; a
-- new session stands in for that here.)
\c
SET client_min_messages = warning;
\set VERBOSITY terse
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e1';
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000e0') AS shell_user_role_now;
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e2';
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000e0') AS shard_user_role;
SELECT dalgo.shares_organization('11111111-0000-4000-8000-0000000000e2') AS shares_with_self_via_shard,
	   dalgo.shares_organization('11111111-0000-4000-8000-0000000000e1') AS shares_with_shell_only_user;
COMMIT;
-- A reference table without a shard on this node: an error, not an empty answer.
INSERT INTO pg_catalog.pg_dist_partition VALUES ('dalgo.organizations', 'n');
INSERT INTO pg_catalog.pg_dist_shard VALUES ('dalgo.organizations', 102009);
\c
SET client_min_messages = warning;
\set VERBOSITY terse
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e2';
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000e0');
ROLLBACK;
DELETE FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'dalgo.organizations'::regclass;
DELETE FROM pg_catalog.pg_dist_shard WHERE logicalrelid = 'dalgo.organizations'::regclass;

-- Identity: a role allowed to set dalgo.user_id, as Citus connects to workers.
CREATE ROLE sim_citus_conn NOLOGIN;
GRANT SET ON PARAMETER dalgo.user_id TO sim_citus_conn;
SET ROLE sim_citus_conn;
BEGIN;		-- on the coordinator: both ways work
SELECT set_config('dalgo.user_id', '11111111-0000-4000-8000-0000000000e1', true) IS NOT NULL AS set_config_on_coordinator;
SELECT current_setting('dalgo.user_id') AS user_id_setting;
COMMIT;
RESET ROLE;
UPDATE pg_catalog.pg_dist_local_group SET groupid = 1;	-- now a worker
SET ROLE sim_citus_conn;
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e1';	-- what Citus sends
SELECT current_setting('dalgo.user_id') AS after_top_level_set;
SELECT set_config('dalgo.user_id', '11111111-0000-4000-8000-0000000000e2', true);
ROLLBACK;
BEGIN;
SELECT count(*) FROM (SELECT set_config('dalgo.user_id', '11111111-0000-4000-8000-0000000000e2', true)) s;
ROLLBACK;
RESET ROLE;
BEGIN;		-- a superuser on a worker still may (maintenance)
SELECT set_config('dalgo.user_id', '11111111-0000-4000-8000-0000000000e2', true) IS NOT NULL AS superuser_set_config;
ROLLBACK;

-- An API key's scope, as the coordinator sends it with the identity: e1
-- (admin here) narrowed to viewer in this organization, to nothing in
-- another; set on a worker only by a SET statement of its own.
INSERT INTO dalgo.organization_members_102008 (organization_id, user_id, role) VALUES
	('22222222-0000-4000-8000-0000000000e0', '11111111-0000-4000-8000-0000000000e1', 'admin');
GRANT SET ON PARAMETER dalgo.api_key_scope TO sim_citus_conn;
GRANT dalgo_authenticated TO sim_citus_conn;	-- as Citus connects: the app's role
SET ROLE sim_citus_conn;
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e1';
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000e0') AS role_without_key;
SET LOCAL dalgo.api_key_scope = '33333333-0000-4000-8000-0000000000e3 22222222-0000-4000-8000-0000000000e0 viewer';
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000e0') AS role_with_viewer_key,
	   dalgo.current_api_key_id() AS key_id;
SET LOCAL dalgo.api_key_scope = '33333333-0000-4000-8000-0000000000e3 44444444-0000-4000-8000-0000000000e4 owner';
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000e0') AS role_with_key_of_other_org;
SELECT set_config('dalgo.api_key_scope', '', true);
ROLLBACK;
-- A reset runs no check hook: set_config(name, NULL) inside a query would
-- drop the scope and free the key's user.  A scope that no SET statement
-- left there grants nothing; a RESET of its own (as the coordinator sends
-- it) and savepoints behave as usual.
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e1';
SET LOCAL dalgo.api_key_scope = '33333333-0000-4000-8000-0000000000e3 22222222-0000-4000-8000-0000000000e0 viewer';
SELECT count(*) FROM (SELECT set_config('dalgo.api_key_scope', NULL, true)) s;
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000e0') AS role_after_pushed_down_reset;
SET LOCAL dalgo.api_key_scope = '33333333-0000-4000-8000-0000000000e3 22222222-0000-4000-8000-0000000000e0 viewer';
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000e0') AS role_after_set_again;
SELECT count(*) FROM (SELECT set_config('dalgo.user_id', NULL, true)) s;
SELECT dalgo.current_user_id() AS user_after_pushed_down_reset;
ROLLBACK;
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e1';
SAVEPOINT s;
SET LOCAL dalgo.api_key_scope = '33333333-0000-4000-8000-0000000000e3 22222222-0000-4000-8000-0000000000e0 viewer';
ROLLBACK TO SAVEPOINT s;
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000e0') AS role_after_rollback_to;
SET LOCAL dalgo.api_key_scope = '33333333-0000-4000-8000-0000000000e3 22222222-0000-4000-8000-0000000000e0 viewer';
SAVEPOINT s2;
RESET dalgo.api_key_scope;
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000e0') AS role_after_reset_statement;
ROLLBACK TO SAVEPOINT s2;
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000e0') AS role_after_reset_rolled_back;
RELEASE SAVEPOINT s2;
ROLLBACK;
BEGIN;		-- the seals: superusers only, a reset too
SELECT set_config('dalgo.api_key_scope_seal', NULL, true);
ROLLBACK;
BEGIN;
SET LOCAL dalgo.api_key_scope = '33333333-0000-4000-8000-0000000000e3 22222222-0000-4000-8000-0000000000e0 superuser';
ROLLBACK;
BEGIN;
SET LOCAL dalgo.api_key_scope = '33333333-0000-4000-8000-0000000000e3  22222222-0000-4000-8000-0000000000e0 viewer';
ROLLBACK;
RESET ROLE;
SET ROLE dalgo_authenticated;	-- no grant: an end user's role never sets it
BEGIN;
SET LOCAL dalgo.api_key_scope = '33333333-0000-4000-8000-0000000000e3 22222222-0000-4000-8000-0000000000e0 viewer';
ROLLBACK;
RESET ROLE;
-- A scope left over from an earlier transaction counts for nothing.
SET dalgo.api_key_scope = '33333333-0000-4000-8000-0000000000e3 44444444-0000-4000-8000-0000000000e4 owner';
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e1';
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000e0') AS role_with_stale_scope,
	   dalgo.current_api_key_id() AS stale_key_id;
COMMIT;
RESET dalgo.api_key_scope;

-- On a coordinator (Citus loaded: its settings exist; a placeholder stands
-- in here), an identity that is no SET LOCAL -- a token, an API key,
-- PostgREST's claims -- is handed to Citus's SET propagation before each
-- statement where it changed (DEBUG1 says so), even with propagation
-- turned off for the request; this node's own settings stay as they were.
UPDATE pg_catalog.pg_dist_local_group SET groupid = 0;
SET citus.propagate_set_commands = 'none';
SET dalgo.jwt_secret = 'a simulated coordinator secret, 32 bytes or more';
SELECT dalgo_internal.sign_access_token('11111111-0000-4000-8000-0000000000e1', now() + interval '5 minutes') AS sim_token \gset
BEGIN;
SELECT dalgo.authenticate(:'sim_token') IS NOT NULL AS authenticated;
SET LOCAL client_min_messages = debug1;
SELECT dalgo.current_user_id() AS token_user, current_setting('dalgo.user_id') AS own_user_id_setting,
	   current_setting('citus.propagate_set_commands') AS own_propagation;
SELECT 'unchanged: nothing sent' AS same_identity;
SELECT dalgo.sign_out();
SELECT dalgo.current_user_id() AS after_sign_out;
SET LOCAL client_min_messages = warning;
SELECT dalgo_internal.set_api_key_identity('33333333-0000-4000-8000-0000000000e3', '11111111-0000-4000-8000-0000000000e1',
										   '22222222-0000-4000-8000-0000000000e0', 'viewer');
SET LOCAL client_min_messages = debug1;
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000e0') AS api_key_role,
	   current_setting('dalgo.api_key_scope') AS own_scope_setting;
COMMIT;
SELECT set_config('dalgo.claims_authenticators', session_user, false) IS NOT NULL AS claims_authenticator;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT set_config('request.jwt.claims', '{"sub":"11111111-0000-4000-8000-0000000000e2"}', true) IS NOT NULL AS claims_set;
SET LOCAL client_min_messages = debug1;
SELECT dalgo.current_user_id() AS claims_user;
SET LOCAL client_min_messages = warning;
SELECT set_config('request.jwt.claims', '{"sub":"11111111-0000-4000-8000-0000000000e1"}', true) IS NOT NULL AS claims_changed;
SET LOCAL client_min_messages = debug1;
SELECT dalgo.current_user_id() AS new_claims_user, current_setting('dalgo.user_id') AS own_user_id_setting;
COMMIT;
RESET dalgo.claims_authenticators;
RESET dalgo.jwt_secret;
UPDATE pg_catalog.pg_dist_local_group SET groupid = 1;

-- Audit on shards: a "shard" of sources on this worker names "sources";
-- a reference table's copy on a worker writes nothing.
-- (its key widened to (organization_id, id), as distribute() does: the
-- audit row still names the row by its id)
CREATE TABLE dalgo.sources_102040 (LIKE dalgo.sources INCLUDING DEFAULTS, PRIMARY KEY (organization_id, id));
CREATE TRIGGER dalgo_audit_insert AFTER INSERT ON dalgo.sources_102040 REFERENCING NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.audit_change('organization_id');
CREATE TABLE dalgo.mail_messages_102050 (LIKE dalgo.mail_messages INCLUDING DEFAULTS, PRIMARY KEY (id));
CREATE TRIGGER dalgo_audit_insert AFTER INSERT ON dalgo.mail_messages_102050 REFERENCING NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.audit_change('');
INSERT INTO pg_catalog.pg_dist_partition VALUES ('dalgo.sources', 'h'), ('dalgo.mail_messages', 'n');
INSERT INTO pg_catalog.pg_dist_shard VALUES ('dalgo.sources', 102040), ('dalgo.mail_messages', 102050);
INSERT INTO dalgo.sources_102040 (organization_id, name, source_type)
	VALUES ('22222222-0000-4000-8000-0000000000e0', 'on a shard', 'csv') RETURNING id AS shard_row \gset
SELECT resource_type, action FROM dalgo.audit_logs WHERE resource_id = :'shard_row';
INSERT INTO dalgo.mail_messages_102050 (kind, recipient) VALUES ('invitation', 'a@example.org')
	RETURNING id AS worker_row \gset
SELECT count(*) AS reference_copy_audit_rows_on_worker FROM dalgo.audit_logs WHERE resource_id = :'worker_row';
UPDATE pg_catalog.pg_dist_local_group SET groupid = 0;	-- the coordinator's copy audits
INSERT INTO dalgo.mail_messages_102050 (kind, recipient) VALUES ('invitation', 'a@example.org')
	RETURNING id AS coordinator_row \gset
SELECT resource_type, action FROM dalgo.audit_logs WHERE resource_id = :'coordinator_row';

-- The audit trail's guard on a shard: a coordinator's anonymize_audit_logs()
-- sends dalgo.audit_anonymizing for its update; with it a superuser's
-- update that keeps the ids passes, without it nothing does, and ids never
-- change.  On the logical table (one node) the setting opens nothing.
UPDATE pg_catalog.pg_dist_local_group SET groupid = 1;
CREATE TABLE dalgo.audit_logs_102060 (LIKE dalgo.audit_logs INCLUDING DEFAULTS);
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON dalgo.audit_logs_102060
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.guard_audit_logs();
INSERT INTO pg_catalog.pg_dist_partition VALUES ('dalgo.audit_logs', 'h');
INSERT INTO pg_catalog.pg_dist_shard VALUES ('dalgo.audit_logs', 102060);
INSERT INTO dalgo.audit_logs_102060 (id, organization_id, action, resource_type, details)
	VALUES ('44444444-0000-4000-8000-0000000000e9', '22222222-0000-4000-8000-0000000000e0', 'sign_in', 'user',
			'{"email": "gone@example.org"}');
UPDATE dalgo.audit_logs_102060 SET details = '{"email": "[erased]"}';
BEGIN;
SET LOCAL dalgo.audit_anonymizing = on;
UPDATE dalgo.audit_logs_102060 SET action = 'forged';
ROLLBACK;
BEGIN;
SET LOCAL dalgo.audit_anonymizing = on;
UPDATE dalgo.audit_logs_102060 SET details = '{"email": "[erased]"}';
SELECT details FROM dalgo.audit_logs_102060;
UPDATE dalgo.audit_logs SET details = '{}' WHERE resource_type = 'sources';
ROLLBACK;

-- Clean up: no imitation of Citus outlives the test.
DROP TABLE dalgo.audit_logs_102060;
DROP TABLE dalgo.sources_102040, dalgo.mail_messages_102050, dalgo.organization_members_102008;
DROP TABLE pg_catalog.pg_dist_local_group, pg_catalog.pg_dist_partition, pg_catalog.pg_dist_shard;
REVOKE SET ON PARAMETER dalgo.user_id, dalgo.api_key_scope FROM sim_citus_conn;
DROP ROLE sim_citus_conn;
