-- test/citus/suite.sql: dalgo on a coordinator and two workers (run by
-- test/citus/run.sh on the coordinator, as postgres).  Each check prints
-- "ok - <name>" or "not ok - <name>: <detail>"; run.sh counts them.
\set ON_ERROR_STOP 1
\pset footer off
\pset tuples_only on
SET client_min_messages = error;
CREATE SCHEMA t;
GRANT USAGE ON SCHEMA t TO PUBLIC;

CREATE FUNCTION t.check(name text, ok boolean, detail text DEFAULT '') RETURNS text
LANGUAGE sql AS $$ SELECT CASE WHEN ok THEN 'ok - ' || name ELSE 'not ok - ' || name || ': ' || coalesce(detail, 'NULL') END $$;
-- todo(name, ok): a known gap (docs/scaling.md, "What does not yet"): printed
-- with "# TODO", not counted as a failure.
CREATE FUNCTION t.todo(name text, ok boolean, detail text DEFAULT '') RETURNS text
LANGUAGE sql AS $$ SELECT CASE WHEN ok THEN 'ok - ' || name || ' # TODO passes now: update docs/scaling.md'
	ELSE 'not ok - ' || name || ' # TODO ' || coalesce(detail, 'NULL') END $$;
-- wait_for_row(q, tries): run q every 0.1 s, at most tries times, until it
-- returns a row (what the coordinator's scheduler commits meanwhile is seen).
CREATE FUNCTION t.wait_for_row(q text, tries integer) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	n bigint;
BEGIN
	FOR i IN 1..tries LOOP
		EXECUTE q;
		GET DIAGNOSTICS n = ROW_COUNT;
		EXIT WHEN n > 0;
		PERFORM pg_sleep(0.1);
	END LOOP;
END $$;
-- refused(sql): the statement raises an error (its SQLSTATE), or NULL when it ran.
CREATE FUNCTION t.refused(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN NULL;
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE;
END $$;

-- A table secured with the toolkit: distribute() takes it along.
CREATE SCHEMA app;
CREATE TABLE app.projects (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), organization_id uuid NOT NULL, name text NOT NULL);
DO $$ BEGIN PERFORM dalgo.enable_org_rows('app.projects'); END $$;

SELECT t.check('distribute() places every table',
	(SELECT count(*) FROM dalgo.distribute()) = 23,
	(SELECT string_agg(table_name::text || '=' || distribution, ', ') FROM dalgo.distribute()));
SELECT t.check('distribute() is idempotent', (SELECT count(*) FROM dalgo.distribute()) = 23);
SELECT t.check('the toolkit table is co-located with the tenant tables',
	(SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'app.projects'::regclass)
	= (SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'dalgo.sources'::regclass));
SELECT t.check('no policy has a subquery after distribute()',
	NOT EXISTS (SELECT FROM pg_policies WHERE (schemaname IN ('dalgo', 'app'))
				AND (qual ~* '\mSELECT\M' OR with_check ~* '\mSELECT\M')),
	(SELECT string_agg(tablename || '.' || policyname, ', ') FROM pg_policies
	 WHERE schemaname IN ('dalgo', 'app') AND (qual ~* '\mSELECT\M' OR with_check ~* '\mSELECT\M')));

-- Two organizations whose shards live on different workers.
CREATE TEMP TABLE orgs AS
WITH cand AS (
	SELECT ('a0000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid AS id, i
	FROM generate_series(1, 64) i),
placed AS (
	SELECT c.id, c.i, n.nodeport
	FROM cand c
	JOIN pg_dist_placement p ON p.shardid = get_shard_id_for_distribution_column('dalgo.sources', c.id)
	JOIN pg_dist_node n ON n.groupid = p.groupid)
SELECT * FROM ((SELECT 1 AS k, id, nodeport FROM placed ORDER BY i LIMIT 1)
	UNION ALL (SELECT 2, id, nodeport FROM placed
			   WHERE nodeport <> (SELECT nodeport FROM placed ORDER BY i LIMIT 1) ORDER BY i LIMIT 1)) x;
SELECT t.check('two organizations on different workers',
	(SELECT count(DISTINCT nodeport) FROM orgs) = 2, (SELECT string_agg(id || '@' || nodeport, ' ') FROM orgs));
SELECT id AS org1 FROM orgs WHERE k = 1 \gset
SELECT id AS org2 FROM orgs WHERE k = 2 \gset

INSERT INTO dalgo.users (id, email) VALUES
	('00000000-0000-4000-a000-000000000001', 'asha@example.org'),   -- owner of org1
	('00000000-0000-4000-a000-000000000002', 'ben@example.org'),    -- viewer of org1
	('00000000-0000-4000-a000-000000000003', 'chen@example.org');   -- admin of org2
INSERT INTO dalgo.organizations (id, name, slug) VALUES (:'org1', 'One', 'one'), (:'org2', 'Two', 'two');
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
	(:'org1', '00000000-0000-4000-a000-000000000001', 'owner'),
	(:'org1', '00000000-0000-4000-a000-000000000002', 'viewer'),
	(:'org2', '00000000-0000-4000-a000-000000000003', 'admin');
INSERT INTO dalgo.sources (organization_id, name, source_type)
	SELECT :'org1'::uuid, 'one-' || i, 'csv'::dalgo.source_type FROM generate_series(1, 3) i
	UNION ALL SELECT :'org2'::uuid, 'two-' || i, 'csv'::dalgo.source_type FROM generate_series(1, 5) i;
INSERT INTO app.projects (organization_id, name) VALUES (:'org1', 'p1'), (:'org2', 'p2'), (:'org2', 'p3');

-- ---- isolation through the coordinator ------------------------------------
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('owner of org1 sees exactly its sources',
	(SELECT count(*) FROM dalgo.sources) = 3 AND (SELECT bool_and(organization_id = :'org1') FROM dalgo.sources),
	(SELECT count(*)::text FROM dalgo.sources));
SELECT t.check('owner of org1 reads its organization only',
	(SELECT array_agg(id) FROM dalgo.organizations) = ARRAY[:'org1'::uuid]);
SELECT t.check('owner of org1 sees its co-members only (users policy on a reference table)',
	(SELECT count(*) FROM dalgo.users) = 2);
SELECT t.check('toolkit table: org1 rows only', (SELECT count(*) FROM app.projects) = 1);
SELECT t.check('a point query for org2 returns nothing',
	(SELECT count(*) FROM dalgo.sources WHERE organization_id = :'org2') = 0);
COMMIT;

BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000003';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('admin of org2 sees exactly its sources',
	(SELECT count(*) FROM dalgo.sources) = 5 AND (SELECT bool_and(organization_id = :'org2') FROM dalgo.sources));
SELECT t.check('toolkit table: org2 rows only', (SELECT count(*) FROM app.projects) = 2);
COMMIT;

-- ---- the role matrix ----------------------------------------------------------
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000002';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('viewer reads', (SELECT count(*) FROM dalgo.sources) = 3);
SELECT t.check('viewer cannot add a source (42501)',
	t.refused(format($$INSERT INTO dalgo.sources (organization_id, name, source_type) VALUES (%L, 'v', 'csv')$$, :'org1')) = '42501');
SELECT t.check('viewer cannot change a source (no row)',
	t.refused($q$DO $d$ BEGIN UPDATE dalgo.sources SET name = 'x'; IF FOUND THEN RAISE 'changed'; END IF; END $d$$q$) IS NULL);
COMMIT;

BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000003';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('admin of org2 adds a source in org2',
	t.refused(format($$INSERT INTO dalgo.sources (organization_id, name, source_type) VALUES (%L, 'mine', 'csv')$$, :'org2')) IS NULL);
SELECT t.check('admin of org2 cannot add a source to org1 (42501)',
	t.refused(format($$INSERT INTO dalgo.sources (organization_id, name, source_type) VALUES (%L, 'theirs', 'csv')$$, :'org1')) = '42501');
SELECT t.check('admin of org2 cannot move a row to org1',
	t.refused(format($$UPDATE dalgo.sources SET organization_id = %L WHERE name = 'mine'$$, :'org1')) IS NOT NULL);
SELECT t.check('admin of org2 cannot delete org1 rows (no row)',
	t.refused(format($q$DO $d$ BEGIN DELETE FROM dalgo.sources WHERE organization_id = %L; IF FOUND THEN RAISE 'deleted'; END IF; END $d$$q$, :'org1')) IS NULL);
COMMIT;

-- A worker lets the roles Citus connects as set dalgo.user_id (the
-- coordinator's SET LOCAL); a set_config() that a query pushes down to a
-- shard must not change the identity there.
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000002';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('a pushed-down set_config(dalgo.user_id) is refused on the workers',
	t.refused($q$SELECT count(*) FROM (SELECT set_config('dalgo.user_id', '00000000-0000-4000-a000-000000000003', true) FROM dalgo.sources) s$q$) IS NOT NULL);
SELECT t.check('... and in a WHERE clause',
	t.refused($q$SELECT count(*) FROM dalgo.sources WHERE set_config('dalgo.user_id', '00000000-0000-4000-a000-000000000003', true) IS NOT NULL$q$) IS NOT NULL);
SELECT t.check('after the attempts the viewer still sees org1 and only org1',
	(SELECT count(*) FROM dalgo.sources) = 3 AND (SELECT count(*) FROM dalgo.sources WHERE organization_id = :'org2') = 0);
COMMIT;

BEGIN;
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('no identity: nothing', (SELECT count(*) FROM dalgo.sources) = 0);
COMMIT;
BEGIN;
SET LOCAL ROLE dalgo_anon;
SELECT t.check('dalgo_anon: permission denied (42501)', t.refused('SELECT count(*) FROM dalgo.sources') = '42501');
COMMIT;
BEGIN;
SET LOCAL ROLE dalgo_service;
SELECT t.check('dalgo_service sees both organizations', (SELECT count(*) FROM dalgo.sources) = 9);
COMMIT;

-- ---- audit and updated_at through the coordinator --------------------------
SELECT t.check('the admin''s insert left its audit row (single shard), naming the row',
	(SELECT count(*) FROM dalgo.audit_logs a WHERE resource_type = 'sources' AND action = 'insert'
	 AND user_id = '00000000-0000-4000-a000-000000000003' AND organization_id = :'org2'
	 AND resource_id = (SELECT id FROM dalgo.sources s WHERE s.name = 'mine')) = 1,
	(SELECT string_agg(resource_type || ':' || action || ':' || coalesce(user_id::text, '-'), ' ') FROM dalgo.audit_logs));
SELECT now() AS before_update \gset
SELECT pg_sleep(0.01);
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
UPDATE dalgo.sources SET name = name || '!';   -- every shard: a multi-shard update
COMMIT;
SELECT t.check('multi-shard update: one audit row per changed row, each in its organization',
	(SELECT count(*) FROM dalgo.audit_logs WHERE resource_type = 'sources' AND action = 'update'
	 AND user_id = '00000000-0000-4000-a000-000000000001') = 9
	AND (SELECT count(DISTINCT organization_id) FROM dalgo.audit_logs WHERE resource_type = 'sources' AND action = 'update') = 2);
SELECT t.check('multi-shard update: updated_at set on every row',
	(SELECT bool_and(updated_at > :'before_update') FROM dalgo.sources));
SELECT t.check('a reference-table change is audited once (not once per node)',
	(SELECT count(*) FROM dalgo.audit_logs WHERE resource_type = 'organizations' AND action = 'insert') = 2,
	(SELECT count(*)::text FROM dalgo.audit_logs WHERE resource_type = 'organizations' AND action = 'insert'));
SELECT t.check('changes outside any organization are audited under the nil uuid',
	(SELECT count(*) FROM dalgo.audit_logs WHERE resource_type = 'users' AND action = 'insert'
	 AND organization_id = '00000000-0000-0000-0000-000000000000') = 3);
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('the owner reads org1''s audit trail and not org2''s',
	(SELECT count(*) FROM dalgo.audit_logs) > 0 AND (SELECT bool_and(organization_id = :'org1') FROM dalgo.audit_logs));
COMMIT;

-- ---- membership changes reach the caches of every node ------------------------
-- The coordinator keeps its worker connections (and their backends, with
-- their membership caches) between transactions.
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000003';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('before: admin of org2 sees its 6 sources', (SELECT count(*) FROM dalgo.sources) = 6);
COMMIT;
UPDATE dalgo.organization_members SET deleted_at = now() WHERE user_id = '00000000-0000-4000-a000-000000000003';
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000003';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('after removal: the same session sees nothing on any worker', (SELECT count(*) FROM dalgo.sources) = 0);
COMMIT;
UPDATE dalgo.organization_members SET deleted_at = NULL WHERE user_id = '00000000-0000-4000-a000-000000000003';
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000003';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('after restoring: visible again', (SELECT count(*) FROM dalgo.sources) = 6);
COMMIT;


-- ---- the scheduler runs on the coordinator only; the warehouse stays there ----
SELECT dalgo.ensure_warehouse(:'org1') AS wh_schema \gset
CREATE TABLE public.live_source (id int, label text);
INSERT INTO public.live_source SELECT g, 'row ' || g FROM generate_series(1, 7) g;
SELECT dalgo_internal.warehouse_role_name(:'org1') AS wh_role \gset
GRANT USAGE ON SCHEMA public TO :"wh_role";
GRANT SELECT ON public.live_source TO :"wh_role";
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000d1', :'org1', 'Live', 'postgres', '{"relation": "public.live_source"}', 'live');
INSERT INTO dalgo.schedules (organization_id, source_id, frequency)
	VALUES (:'org1', '33333333-0000-4000-8000-0000000000d1', 'hourly');
SELECT clock_timestamp() + interval '1 second' AS due \gset
UPDATE dalgo.schedules SET next_run_at = :'due'
	WHERE source_id = '33333333-0000-4000-8000-0000000000d1';
SELECT t.wait_for_row($q$SELECT 1 FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000d1'
	AND status::text IN ('success', 'failed')$q$, 100);
SELECT pg_sleep(2);	-- time for a worker's scheduler to claim it too, were it to
SELECT t.check('a due schedule syncs a postgres source, once, on the coordinator''s scheduler',
	(SELECT count(*) FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000d1') = 1
	AND (SELECT status::text FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000d1') = 'success'
	AND (SELECT rows_synced FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000d1') = 7,
	(SELECT string_agg(status || coalesce(': ' || error_message, ''), '; ') FROM dalgo.sync_runs
	 WHERE source_id = '33333333-0000-4000-8000-0000000000d1'));
SELECT t.check('the synced table is in the warehouse, on the coordinator',
	(SELECT count(*) FROM dalgo.read_warehouse_table(:'org1', 'live')) = 7);
-- An output over the synced table: its transformation is saved through the
-- shard's triggers (the recipe is checked when it runs, on the coordinator),
-- and its schedule refreshes it.
INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name) VALUES
	('55555555-0000-4000-8000-0000000000d1', :'org1', 'Live copy', '{"version": 1, "source": {"table": "live"}, "steps": []}', 'live_copy');
INSERT INTO dalgo.outputs (id, organization_id, transformation_id, name, destination_config) VALUES
	('66666666-0000-4000-8000-0000000000d1', :'org1', '55555555-0000-4000-8000-0000000000d1', 'Live view', '{"type": "view", "name": "live_view"}');
INSERT INTO dalgo.schedules (organization_id, output_id, frequency)
	VALUES (:'org1', '66666666-0000-4000-8000-0000000000d1', 'hourly');
SELECT clock_timestamp() + interval '1 second' AS due \gset
UPDATE dalgo.schedules SET next_run_at = :'due'
	WHERE output_id = '66666666-0000-4000-8000-0000000000d1';
SELECT t.wait_for_row($q$SELECT 1 FROM dalgo.transformation_runs WHERE transformation_id = '55555555-0000-4000-8000-0000000000d1'
	AND status::text IN ('success', 'failed')$q$, 100);
SELECT pg_sleep(1);
SELECT t.check('a due output schedule refreshes the output, on the coordinator''s scheduler',
	(SELECT count(*) FROM dalgo.transformation_runs WHERE transformation_id = '55555555-0000-4000-8000-0000000000d1') = 1
	AND (SELECT status::text FROM dalgo.transformation_runs WHERE transformation_id = '55555555-0000-4000-8000-0000000000d1') = 'success'
	AND (SELECT count(*) FROM dalgo.read_warehouse_table(:'org1', 'live_view')) = 7
	AND (SELECT last_refreshed_at FROM dalgo.outputs WHERE id = '66666666-0000-4000-8000-0000000000d1') IS NOT NULL,
	(SELECT string_agg(status || coalesce(': ' || error_message, ''), '; ') FROM dalgo.transformation_runs
	 WHERE transformation_id = '55555555-0000-4000-8000-0000000000d1'));
SELECT t.check('the coordinator''s scheduler records no error',
	(SELECT last_error IS NULL AND runs_started >= 2 FROM dalgo.scheduler_status()
	 WHERE database_oid = (SELECT oid FROM pg_database WHERE datname = current_database())),
	(SELECT last_error || ' runs=' || runs_started FROM dalgo.scheduler_status()
	 WHERE database_oid = (SELECT oid FROM pg_database WHERE datname = current_database())));
SELECT t.check('the workers'' schedulers idle: no run started, no error',
	(SELECT bool_and(result = '0') FROM run_command_on_workers(
		$q$SELECT count(*) FROM dalgo.scheduler_status() WHERE database_oid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND (runs_started > 0 OR last_error IS NOT NULL)$q$)),
	(SELECT string_agg(nodeport || ':' || result, ' ') FROM run_command_on_workers(
		$q$SELECT string_agg(coalesce(last_error, '') || ' runs=' || runs_started, ';') FROM dalgo.scheduler_status()$q$)));
-- A scheduled sync that fails alerts the organization's admins and owners:
-- the alert trigger fires on the run's shard, on a worker, which leaves the
-- message in the co-located outbox; the coordinator's scheduler mails it.
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000d2', :'org1', 'Gone', 'postgres', '{"relation": "public.no_such_table"}', 'gone');
INSERT INTO dalgo.schedules (organization_id, source_id, frequency)
	VALUES (:'org1', '33333333-0000-4000-8000-0000000000d2', 'hourly');
SELECT clock_timestamp() + interval '1 second' AS due \gset
UPDATE dalgo.schedules SET next_run_at = :'due'
	WHERE source_id = '33333333-0000-4000-8000-0000000000d2';
SELECT t.wait_for_row($q$SELECT 1 FROM dalgo.mail_messages WHERE kind = 'run_failed'$q$, 150);
SELECT t.check('a scheduled sync of a missing table fails',
	(SELECT status::text FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000d2') = 'failed',
	(SELECT string_agg(status || coalesce(': ' || error_message, ''), '; ') FROM dalgo.sync_runs
	 WHERE source_id = '33333333-0000-4000-8000-0000000000d2'));
SELECT array_to_string(array_agg(recipient || ' ' || (payload->>'target_name')), ', ') AS alert_mail
	FROM dalgo.mail_messages WHERE kind = 'run_failed' \gset
SELECT count(*) AS outbox_left FROM dalgo_internal.alert_outbox \gset
SELECT t.check('... and alerts org1''s owner by mail, through the outbox',
	:'alert_mail' = 'asha@example.org Gone' AND :outbox_left = 0,
	'mail: ' || :'alert_mail' || ' outbox: ' || :outbox_left);
UPDATE dalgo.schedules SET is_active = false WHERE source_id = '33333333-0000-4000-8000-0000000000d2';

-- A run writes its tables as the warehouse role, on the coordinator: Citus
-- propagates the (empty) schema and the NOLOGIN role, never the tables.
SET ROLE :"wh_role";
CREATE TABLE :"wh_schema".made_by_a_run AS SELECT g AS n FROM generate_series(1, 3) g;
RESET ROLE;
SELECT t.check('a warehouse table lives on the coordinator only',
	to_regclass(format('%I.made_by_a_run', :'wh_schema')) IS NOT NULL
	AND (SELECT bool_and(result = '0') FROM run_command_on_workers(
		format($q$SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %L$q$, :'wh_schema'))),
	(SELECT string_agg(nodeport || ':' || result, ' ') FROM run_command_on_workers(
		format($q$SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %L$q$, :'wh_schema'))));

-- ---- account functions on a cluster -------------------------------------------
-- The app's request pattern for SECURITY DEFINER functions that write
-- distributed or reference tables: the identity (dalgo.user_id) is sent to
-- the workers, the role is not (citus.propagate_set_commands = 'none' before
-- SET LOCAL ROLE), so that the function's writes reach the workers as its
-- owner, and every other query as the connection's current role
-- (docs/scaling.md, "Identity on the workers").
CREATE FUNCTION t.error_of(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN NULL;
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
SET dalgo.jwt_secret = 'a cluster suite secret of at least 32 bytes!';
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('dalgo.create_organization() makes the caller owner of a new organization', e IS NULL, e)
	FROM (SELECT t.error_of($$SELECT dalgo.create_organization('Three', 'three-org')$$) e) x;
COMMIT;
SELECT t.check('the new organization and its owner are on every node',
	(SELECT count(*) FROM dalgo.organizations o JOIN dalgo.organization_members m ON m.organization_id = o.id
	 WHERE o.slug = 'three-org' AND m.user_id = '00000000-0000-4000-a000-000000000001' AND m.role = 'owner') = 1
	AND (SELECT bool_and(result = '1') FROM run_command_on_workers(
		$q$SELECT count(*) FROM dalgo.organizations WHERE slug = 'three-org'$q$)));
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('with the role not propagated, the identity still reaches the workers',
	(SELECT count(*) FROM dalgo.sources WHERE organization_id = :'org1') = 5	-- 3, Live and Gone
	AND (SELECT count(*) FROM dalgo.sources WHERE organization_id = :'org2') = 0);
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('dalgo.create_api_key() creates a key for an admin''s organization', e IS NULL, e)
	FROM (SELECT t.error_of(format($$SELECT dalgo.create_api_key(%L, 'cluster key')$$, :'org1')) e) x;
COMMIT;
SELECT t.check('the API key is stored, and audited in its organization',
	(SELECT count(*) FROM dalgo.api_keys WHERE organization_id = :'org1' AND name = 'cluster key') = 1
	AND (SELECT count(*) FROM dalgo.audit_logs WHERE organization_id = :'org1' AND action = 'api_key_created') = 1);
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('dalgo.invite_member() invites, and again (the earlier invitation replaced)', e IS NULL, e)
	FROM (SELECT coalesce(t.error_of(format($$SELECT dalgo.invite_member(%L, 'dee@example.org', 'member')$$, :'org1')),
						  t.error_of(format($$SELECT dalgo.invite_member(%L, 'dee@example.org', 'member')$$, :'org1'))) e) x;
COMMIT;
SELECT t.check('one live invitation, one cancelled invitation mail',
	(SELECT count(*) FROM dalgo.invitations WHERE organization_id = :'org1' AND email = 'dee@example.org' AND revoked_at IS NULL) = 1
	AND (SELECT count(*) FROM dalgo.mail_messages WHERE kind = 'invitation' AND state = 'cancelled') = 1
	AND (SELECT count(*) FROM dalgo.mail_messages WHERE kind = 'invitation' AND state = 'pending') = 1);
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_anon;
SELECT t.check('dalgo.sign_up() on a cluster', e IS NULL, e)
	FROM (SELECT t.error_of($$SELECT dalgo.sign_up('zoe@example.org', 'a long enough password 1')$$) e) x;
COMMIT;
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_anon;
SELECT t.check('dalgo.sign_in() on a cluster', e IS NULL, e)
	FROM (SELECT t.error_of($$SELECT dalgo.sign_in('zoe@example.org', 'a long enough password 1')$$) e) x;
COMMIT;
SELECT t.check('sign_in''s audit row, outside any organization, carries the nil uuid',
	(SELECT count(*) FROM dalgo.audit_logs a JOIN dalgo.users u ON u.id = a.user_id
	 WHERE u.email = 'zoe@example.org' AND a.action = 'sign_in'
	   AND a.organization_id = '00000000-0000-0000-0000-000000000000') = 1);

-- ---- identity from a token, an API key or PostgREST's claims ------------------
-- An identity verified on the coordinator (dalgo.authenticate(), an API key)
-- or taken from request.jwt.claims is no SET LOCAL that Citus would send:
-- dalgo sends it to the workers itself, as dalgo.user_id and, for an API
-- key, dalgo.api_key_scope (docs/scaling.md, "Identity on the workers").
INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	VALUES (:'org2', '00000000-0000-4000-a000-000000000001', 'viewer');   -- asha: owner of org1, viewer of org2
SELECT count(*) AS n1 FROM dalgo.sources WHERE organization_id = :'org1' \gset
SELECT count(*) AS n2 FROM dalgo.sources WHERE organization_id = :'org2' \gset
SELECT dalgo_internal.sign_access_token('00000000-0000-4000-a000-000000000001', now() + interval '30 minutes') AS asha_token \gset

BEGIN;
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.authenticate(:'asha_token') AS who \gset
SELECT t.check('a token''s identity reaches the workers',
	(SELECT count(*) FROM dalgo.sources) = :n1 + :n2 AND (SELECT count(*) FROM app.projects) = 3,
	(SELECT count(*)::text FROM dalgo.sources));
SELECT t.check('... and its writes are checked there: asha adds to org1, not as viewer of org2 (42501)',
	t.refused(format($$INSERT INTO dalgo.sources (organization_id, name, source_type) VALUES (%L, 'by token', 'csv')$$, :'org1')) IS NULL
	AND t.refused(format($$INSERT INTO dalgo.sources (organization_id, name, source_type) VALUES (%L, 'by token', 'csv')$$, :'org2')) = '42501');
COMMIT;
SELECT t.check('the token''s write is audited on its shard, under the token''s user',
	(SELECT count(*) FROM dalgo.audit_logs a WHERE resource_type = 'sources' AND action = 'insert'
	 AND user_id = '00000000-0000-4000-a000-000000000001' AND organization_id = :'org1'
	 AND resource_id = (SELECT id FROM dalgo.sources WHERE name = 'by token')) = 1);
SELECT count(*) AS n1 FROM dalgo.sources WHERE organization_id = :'org1' \gset

-- Worker connections opened before the token, in the same transaction, get
-- it too; sign_out() goes back to the setting, then to nobody.
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000003';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('before the token: the setting''s user (admin of org2)', (SELECT count(*) FROM dalgo.sources) = :n2);
SELECT dalgo.authenticate(:'asha_token') AS who \gset
SELECT t.check('connections already open take the token''s identity',
	(SELECT count(*) FROM dalgo.sources) = :n1 + :n2 AND (SELECT count(*) FROM app.projects) = 3);
SELECT dalgo.sign_out();
SELECT t.check('after sign_out() the workers see the setting''s user again', (SELECT count(*) FROM dalgo.sources) = :n2);
COMMIT;
BEGIN;
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.authenticate(:'asha_token') AS who \gset
SELECT t.check('a token alone', (SELECT count(*) FROM dalgo.sources) = :n1 + :n2);
SELECT dalgo.sign_out();
SELECT t.check('token then nobody: the workers forget the identity with sign_out()',
	(SELECT count(*) FROM dalgo.sources) = 0 AND (SELECT count(*) FROM app.projects) = 0);
COMMIT;

-- Subtransactions: Citus forgets the SET LOCALs of a savepoint when it ends.
BEGIN;
SET LOCAL ROLE dalgo_authenticated;
SAVEPOINT s;
SELECT dalgo.authenticate(:'asha_token') AS who \gset
SELECT t.check('inside a savepoint', (SELECT count(*) FROM dalgo.sources) = :n1 + :n2);
RELEASE SAVEPOINT s;
SELECT t.check('after RELEASE SAVEPOINT the identity still reaches the workers',
	(SELECT count(*) FROM dalgo.sources) = :n1 + :n2 AND (SELECT count(*) FROM app.projects) = 3);
SAVEPOINT s2;
SELECT dalgo.sign_out();
SELECT t.check('sign_out() inside a savepoint', (SELECT count(*) FROM dalgo.sources) = 0);
ROLLBACK TO SAVEPOINT s2;
SELECT t.check('rolled back: the identity is back on the workers', (SELECT count(*) FROM dalgo.sources) = :n1 + :n2);
COMMIT;
BEGIN;
SET LOCAL ROLE dalgo_authenticated;
SAVEPOINT s;
SELECT dalgo.authenticate(:'asha_token') AS who \gset
SELECT t.check('authenticated inside a savepoint', (SELECT count(*) FROM dalgo.sources) = :n1 + :n2);
ROLLBACK TO SAVEPOINT s;
SELECT t.check('an authenticate() rolled back to its savepoint: nothing on the workers',
	(SELECT count(*) FROM dalgo.sources) = 0 AND (SELECT count(*) FROM app.projects) = 0);
COMMIT;

-- An API key acts in its organization only, at most at its role, on the
-- workers too (asha is also a viewer of org2, and owner of org1).
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.create_api_key(:'org1', 'viewer key', 'viewer') AS viewer_key \gset
COMMIT;
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.authenticate_api_key(:'viewer_key') AS key_org \gset
SELECT t.check('an API key''s identity reaches the workers, in its organization only',
	(SELECT count(*) FROM dalgo.sources) = :n1 AND (SELECT bool_and(organization_id = :'org1') FROM dalgo.sources)
	AND (SELECT count(*) FROM app.projects) = 1,
	(SELECT count(*)::text FROM dalgo.sources));
SELECT t.check('... at most at its role: a viewer key cannot add a source there (42501)',
	t.refused(format($$INSERT INTO dalgo.sources (organization_id, name, source_type) VALUES (%L, 'by key', 'csv')$$, :'org1')) = '42501');
SELECT t.check('a pushed-down set_config(dalgo.api_key_scope) is refused on the workers',
	t.refused(format($q$SELECT count(*) FROM dalgo.sources WHERE set_config('dalgo.api_key_scope', '%s %s owner', true) IS NOT NULL$q$,
					 '00000000-0000-4000-8000-000000000000', :'org2')) IS NOT NULL);
SELECT t.check('... and the key still sees its organization only', (SELECT count(*) FROM dalgo.sources) = :n1);
COMMIT;
SELECT t.check('the key''s last use is recorded, in a transaction of its own on a cluster',
	(SELECT last_used_at IS NOT NULL FROM dalgo.api_keys WHERE name = 'viewer key'));
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('dalgo_authenticated cannot set dalgo.api_key_scope on the coordinator (42501)',
	t.refused(format($$SET LOCAL dalgo.api_key_scope = '%s %s owner'$$, '00000000-0000-4000-8000-000000000000', :'org2')) = '42501');
COMMIT;

-- PostgREST: the role and the claims come with set_config() in the request's
-- first statement, which Citus does not send; the claims' subject does reach
-- the workers, and a change of claims too.
SET dalgo.claims_authenticators = 'postgres';
BEGIN;
SELECT set_config('role', 'dalgo_authenticated', true) AS r,
	   set_config('request.jwt.claims', '{"sub":"00000000-0000-4000-a000-000000000003","role":"dalgo_authenticated"}', true) AS c \gset
SELECT t.check('PostgREST claims reach the workers (admin of org2)',
	(SELECT count(*) FROM dalgo.sources) = :n2 AND (SELECT count(*) FROM app.projects) = 2);
SELECT set_config('request.jwt.claims', '{"sub":"00000000-0000-4000-a000-000000000001","role":"dalgo_authenticated"}', true) AS c \gset
SELECT t.check('... and new claims in the same transaction too', (SELECT count(*) FROM dalgo.sources) = :n1 + :n2);
COMMIT;
RESET dalgo.claims_authenticators;
BEGIN;
SELECT set_config('role', 'dalgo_authenticated', true) AS r,
	   set_config('request.jwt.claims', '{"sub":"00000000-0000-4000-a000-000000000003"}', true) AS c \gset
SELECT t.check('claims from a session that is no claims authenticator: nothing, on any node',
	(SELECT count(*) FROM dalgo.sources) = 0);
COMMIT;

-- ---- runs on demand, recipes with steps, quotas ---------------------------------
-- An output over a recipe with steps, refreshed now by its owner (queued,
-- run by the coordinator's scheduler), then refused by a runs_per_hour quota.
INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name) VALUES
	('55555555-0000-4000-8000-0000000000d2', :'org1', 'Big rows',
	 '{"version": 1, "source": {"table": "live"}, "steps": [{"type": "filter", "conditions": [{"column": "id", "op": "gt", "value": {"val": 3}}]}, {"type": "select", "columns": ["id", "label"]}]}',
	 'big_rows');
INSERT INTO dalgo.outputs (id, organization_id, transformation_id, name, destination_config) VALUES
	('66666666-0000-4000-8000-0000000000d2', :'org1', '55555555-0000-4000-8000-0000000000d2', 'Big view', '{"type": "view", "name": "big_view"}');
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.refresh_output_now('66666666-0000-4000-8000-0000000000d2') AS now_run \gset
COMMIT;
SELECT t.wait_for_row($q$SELECT 1 FROM dalgo.transformation_runs WHERE transformation_id = '55555555-0000-4000-8000-0000000000d2'
	AND status::text IN ('success', 'failed')$q$, 150);
SELECT t.check('refresh_output_now() of a recipe with steps runs on the coordinator',
	(SELECT status::text FROM dalgo.transformation_runs WHERE id = :'now_run') = 'success'
	AND (SELECT count(*) FROM dalgo.read_warehouse_table(:'org1', 'big_view')) = 4,
	(SELECT string_agg(status || coalesce(': ' || error_message, ''), '; ') FROM dalgo.transformation_runs
	 WHERE transformation_id = '55555555-0000-4000-8000-0000000000d2'));
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('the owner reads the run''s version and its compiled SQL',
	(SELECT count(*) FROM dalgo.transformation_versions WHERE transformation_id = '55555555-0000-4000-8000-0000000000d2') >= 1
	AND (SELECT bool_and(organization_id = :'org1') FROM dalgo.transformation_runs));
SELECT t.check('quota_usage() on a cluster',
	(SELECT used FROM dalgo.quota_usage(:'org1') WHERE quota = 'runs_per_hour') >= 3,
	(SELECT string_agg(quota || '=' || used, ' ') FROM dalgo.quota_usage(:'org1')));
COMMIT;
UPDATE dalgo.organizations SET settings = jsonb_set(settings, '{quotas}', '{"runs_per_hour": 1}') WHERE id = :'org1';
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('a runs_per_hour quota refuses a run now (53400)',
	t.refused($$SELECT dalgo.refresh_output_now('66666666-0000-4000-8000-0000000000d2', true)$$) = '53400',
	t.error_of($$SELECT dalgo.refresh_output_now('66666666-0000-4000-8000-0000000000d2', true)$$));
COMMIT;
UPDATE dalgo.organizations SET settings = settings - 'quotas' WHERE id = :'org1';

-- ---- csv sources: the files are the coordinator's ---------------------------------
-- Each node has its own dalgo.csv_dir (run.sh), as on separate machines.  A
-- source is saved on its shard, on a worker, which checks the path's form
-- only; the run, on the coordinator, reads the file.
SELECT current_setting('dalgo.csv_dir') || '/org_' || replace(:'org2', '-', '') AS csv_org_dir \gset
SELECT format('mkdir -p %s', :'csv_org_dir') AS mk \gset
COPY (SELECT WHERE false) TO PROGRAM :'mk';
\set f :csv_org_dir '/people.csv'
COPY (SELECT g AS id, 'person ' || g AS name FROM generate_series(1, 6) g) TO :'f' WITH (FORMAT csv, HEADER true);
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000003';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('an admin saves a csv source whose file is on the coordinator only', e IS NULL, e)
	FROM (SELECT t.error_of(format($$INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name)
		VALUES ('33333333-0000-4000-8000-0000000000d3', %L, 'People', 'csv', '{"path": "people.csv"}', 'people')$$, :'org2')) e) x;
SELECT t.check('... a path out of the organization''s directory is still refused there (42501)',
	t.refused(format($$INSERT INTO dalgo.sources (organization_id, name, source_type, config)
		VALUES (%L, 'Theirs', 'csv', '{"path": "../org_x/secret.csv"}')$$, :'org2')) = '42501');
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000003';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of($$SELECT dalgo.sync_now('33333333-0000-4000-8000-0000000000d3', true)$$), '') AS csv_sync_error \gset
COMMIT;
SELECT t.check('sync_now(wait => true) of the csv source syncs it, on the coordinator',
	(SELECT status::text || ' ' || rows_synced FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000d3') = 'success 6'
	AND (SELECT count(*) FROM dalgo.read_warehouse_table(:'org2', 'people')) = 6,
	:'csv_sync_error' || ' ' || coalesce((SELECT string_agg(status || coalesce(': ' || error_message, ''), '; ')
		FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000d3'), 'no run'));
INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency)
	VALUES ('88888888-0000-4000-8000-0000000000d3', :'org2', '33333333-0000-4000-8000-0000000000d3', 'daily');
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000003';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of($$SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000d3')$$), '') AS run_now_error \gset
COMMIT;
SELECT t.check('run_schedule_now() by the organization''s admin runs the schedule on a cluster',
	(SELECT count(*) FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000d3' AND status = 'success'
	 AND details->>'schedule_id' = '88888888-0000-4000-8000-0000000000d3') = 1
	AND (SELECT next_run_at > now() FROM dalgo.schedules WHERE id = '88888888-0000-4000-8000-0000000000d3'),
	:'run_now_error' || ' ' || coalesce((SELECT string_agg(status || coalesce(': ' || error_message, ''), '; ')
		FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000d3'), 'no run'));

-- ---- connector runs and uploads on a cluster ----
-- A source loaded by an outside connector (config "connector": true): its
-- owner queues a run, the connector (dalgo_service, no identity) claims it,
-- stages it, loads it and completes it; finish_sync types, swaps and
-- registers it on the coordinator.  The connector, like the app, sends no
-- role to the workers (docs/scaling.md, "Identity on the workers").
-- rows(organization, table): the rows of a warehouse table, -1 when it cannot be read.
CREATE FUNCTION t.rows(organization_id uuid, table_name text) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
	RETURN (SELECT count(*) FROM dalgo.read_warehouse_table(organization_id, table_name));
EXCEPTION WHEN OTHERS THEN
	RETURN -1;
END $$;
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000e1', :'org1', 'Connected', 'postgres', '{"connector": true, "infer_types": true}', 'connected'),
	('33333333-0000-4000-8000-0000000000e2', :'org1', 'Uploaded', 'csv', '{}', 'uploaded'),
	('33333333-0000-4000-8000-0000000000e3', :'org2', 'Late', 'postgres', '{"connector": true}', 'late'),
	('33333333-0000-4000-8000-0000000000e4', :'org2', 'Stalled', 'postgres', '{"connector": true}', 'stalled');
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of($$SELECT dalgo.sync_now('33333333-0000-4000-8000-0000000000e1')$$), '') AS conn_queue_error \gset
COMMIT;
SELECT t.check('sync_now() queues a connector source''s run for the connector',
	(SELECT status::text FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000e1') = 'pending',
	:'conn_queue_error');
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_service;
SELECT coalesce(t.error_of($$SELECT dalgo.claim_sync_run()$$), '') AS claim_error \gset
COMMIT;
SELECT coalesce((SELECT id::text FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000e1'),
				'00000000-0000-0000-0000-000000000000') AS conn_run \gset
SELECT t.check('claim_sync_run() by dalgo_service claims it on a cluster',
	(SELECT status::text || ' ' || (started_at IS NOT NULL) FROM dalgo.sync_runs WHERE id = :'conn_run') = 'running true',
	:'claim_error');
SELECT format('%I.%I', dalgo_internal.warehouse_schema_name(:'org1'), dalgo_internal.staging_table_name(:'conn_run')) AS conn_stage \gset
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_service;
SELECT coalesce(t.error_of(format($$SELECT dalgo.stage_sync_run(%L, ARRAY['id', 'city', 'payload'], ARRAY['text', 'text', 'jsonb'])$$,
								  :'conn_run')), '') AS stage_error \gset
SELECT coalesce(t.error_of(format($$INSERT INTO %s SELECT g::text, 'city ' || g, '{"a": 1}' FROM generate_series(1, 5) g$$,
								  :'conn_stage')), '') AS conn_load_error \gset
COMMIT;
SELECT t.check('stage_sync_run() creates the run''s staging table, and the connector loads it',
	:'stage_error' = '' AND :'conn_load_error' = '' AND to_regclass(:'conn_stage') IS NOT NULL,
	:'stage_error' || ' ' || :'conn_load_error');
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000002';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('... a member cannot write a connector''s staging table (42501)',
	t.refused(format($$INSERT INTO %s (id) VALUES ('x')$$, :'conn_stage')) = '42501');
COMMIT;
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_service;
SELECT coalesce(t.error_of(format($$SELECT dalgo.complete_sync_run(%L, 0)$$, :'conn_run')), '') AS complete_error \gset
COMMIT;
SELECT t.check('complete_sync_run() types, swaps and registers the load (finish_sync)',
	(SELECT status::text || ' ' || rows_synced FROM dalgo.sync_runs WHERE id = :'conn_run') = 'success 5'
	AND t.rows(:'org1', 'connected') = 5
	AND (SELECT string_agg(column_name || ':' || column_type, ' ' ORDER BY column_order) FROM dalgo.source_schemas
		 WHERE source_id = '33333333-0000-4000-8000-0000000000e1') = 'id:bigint city:text payload:jsonb'
	AND (SELECT count(*) FROM dalgo.warehouse_tables WHERE organization_id = :'org1' AND table_name = 'connected'
		 AND source_id = '33333333-0000-4000-8000-0000000000e1' AND deleted_at IS NULL) = 1
	AND (SELECT last_synced_at IS NOT NULL FROM dalgo.sources WHERE id = '33333333-0000-4000-8000-0000000000e1')
	AND to_regclass(:'conn_stage') IS NULL,
	:'complete_error' || ' ' || coalesce((SELECT string_agg(status || coalesce(': ' || error_message, ''), '; ')
		FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000e1'), 'no run'));
-- A second run that the connector fails: the staging table goes, the table stays.
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.sync_now('33333333-0000-4000-8000-0000000000e1') AS conn_run2 \gset
COMMIT;
SELECT format('%I.%I', dalgo_internal.warehouse_schema_name(:'org1'), dalgo_internal.staging_table_name(:'conn_run2')) AS conn_stage2 \gset
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_service;
SELECT coalesce(t.error_of($$SELECT dalgo.claim_sync_run()$$), '')
	|| coalesce(t.error_of(format($$SELECT dalgo.stage_sync_run(%L, ARRAY['id'])$$, :'conn_run2')), '')
	|| coalesce(t.error_of(format($$INSERT INTO %s VALUES ('1')$$, :'conn_stage2')), '')
	|| coalesce(t.error_of(format($$SELECT dalgo.complete_sync_run(%L, 0, 'the API is down')$$, :'conn_run2')), '') AS fail_error \gset
COMMIT;
SELECT t.check('complete_sync_run() with an error fails the run, drops the staging table, keeps the table',
	(SELECT status::text || ' ' || error_message FROM dalgo.sync_runs WHERE id = :'conn_run2') = 'failed the API is down'
	AND to_regclass(:'conn_stage2') IS NULL
	AND t.rows(:'org1', 'connected') = 5,
	:'fail_error' || ' ' || coalesce((SELECT status || coalesce(': ' || error_message, '') FROM dalgo.sync_runs WHERE id = :'conn_run2'), 'no run'));

-- Uploads: asha (owner) uploads into her organization's source; ben (viewer) may not.
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000002';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('a viewer cannot begin an upload (42501)',
	t.refused($$SELECT dalgo.begin_upload('33333333-0000-4000-8000-0000000000e2', ARRAY['city'])$$) = '42501');
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of($$SELECT dalgo.begin_upload('33333333-0000-4000-8000-0000000000e2', ARRAY['city', 'visits'])$$), '') AS up1_error \gset
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of($$SELECT dalgo.begin_upload('33333333-0000-4000-8000-0000000000e2', ARRAY['city', 'visits'])$$), '') AS up2_error \gset
COMMIT;
SELECT t.check('begin_upload() on a cluster, and again (the first upload abandoned)',
	(SELECT string_agg(status || coalesce(': ' || error_message, ''), '; ' ORDER BY created_at) FROM dalgo.sync_runs
	 WHERE source_id = '33333333-0000-4000-8000-0000000000e2') = 'failed: the upload was replaced by a newer one; running',
	:'up1_error' || ' ' || :'up2_error' || ' ' || coalesce((SELECT string_agg(status || coalesce(': ' || error_message, ''), '; ')
		FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000e2'), 'no run'));
SELECT coalesce((SELECT details->>'staging_table' FROM dalgo.sync_runs
				 WHERE source_id = '33333333-0000-4000-8000-0000000000e2' AND status = 'running'), 'none') AS up_stage \gset
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000002';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('... another member cannot write the upload''s staging table (42501)',
	t.refused(format($$INSERT INTO %s VALUES ('x', '1')$$, :'up_stage')) = '42501');
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of(format($$INSERT INTO %s VALUES ('Pune', '10'), ('Delhi', '20'), ('Goa', '')$$, :'up_stage')), '') AS up_load_error \gset
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of($$SELECT dalgo.finish_upload('33333333-0000-4000-8000-0000000000e2')$$), '') AS up_finish_error \gset
COMMIT;
SELECT t.check('the uploader loads the staging table and finish_upload() swaps it in',
	(SELECT status::text || ' ' || rows_synced FROM dalgo.sync_runs
	 WHERE source_id = '33333333-0000-4000-8000-0000000000e2' ORDER BY created_at DESC LIMIT 1) = 'success 3'
	AND t.rows(:'org1', 'uploaded') = 3
	AND (SELECT column_type FROM dalgo.source_schemas WHERE source_id = '33333333-0000-4000-8000-0000000000e2'
		 AND column_name = 'visits') = 'bigint'
	AND to_regclass(:'up_stage') IS NULL,
	:'up_load_error' || ' ' || :'up_finish_error' || ' ' || coalesce((SELECT string_agg(status || coalesce(': ' || error_message, ''), '; ')
		FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000e2'), 'no run'));

-- Tables from anywhere: the event triggers adopt and forget them.
SELECT dalgo_internal.warehouse_schema_name(:'org1') AS wh1 \gset
CREATE TABLE :"wh1".brought_in AS SELECT g AS n FROM generate_series(1, 4) g;
-- (a statement of its own: the warehouse role exists on the coordinator only)
SELECT has_table_privilege(:'wh_role', format('%I.brought_in', :'wh1'), 'SELECT') AS adopted_readable \gset
SELECT t.check('a table a superuser creates in the warehouse is adopted (readable, registered)',
	(SELECT count(*) FROM dalgo.warehouse_tables WHERE organization_id = :'org1' AND table_name = 'brought_in'
	 AND deleted_at IS NULL AND source_id IS NULL) = 1 AND :'adopted_readable',
	'readable: ' || :'adopted_readable');
DROP TABLE :"wh1".brought_in;
SELECT t.check('... and forgotten when dropped',
	(SELECT count(*) FROM dalgo.warehouse_tables WHERE organization_id = :'org1' AND table_name = 'brought_in'
	 AND deleted_at IS NOT NULL) = 1);

-- Expiry and purge, as the coordinator's scheduler calls them on every tick:
-- a connector run nobody claimed, one claimed and abandoned, an old finished run.
-- The abandoned one: claimed and staged by a connector that went away.
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000003';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.sync_now('33333333-0000-4000-8000-0000000000e4') AS stalled_run \gset
COMMIT;
SELECT format('%I.%I', dalgo_internal.warehouse_schema_name(:'org2'), dalgo_internal.staging_table_name(:'stalled_run')) AS stalled_stage \gset
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_service;
SELECT coalesce(t.error_of($$SELECT dalgo.claim_sync_run()$$), '')
	|| coalesce(t.error_of(format($$SELECT dalgo.stage_sync_run(%L, ARRAY['id'])$$, :'stalled_run')), '') AS stalled_error \gset
COMMIT;
UPDATE dalgo.sync_runs SET started_at = now() - interval '2 hours', created_at = now() - interval '3 hours'
	WHERE organization_id = :'org2' AND id = :'stalled_run';
INSERT INTO dalgo.sync_runs (id, organization_id, source_id, status, created_at, details) VALUES
	('77777777-0000-4000-8000-0000000000e3', :'org2', '33333333-0000-4000-8000-0000000000e3', 'pending',
	 now() - interval '2 hours', '{"on_demand": true}');
INSERT INTO dalgo.sync_runs (id, organization_id, source_id, status, created_at, started_at, completed_at) VALUES
	('77777777-0000-4000-8000-0000000000e5', :'org1', '33333333-0000-4000-8000-0000000000e1', 'success',
	 now() - interval '400 days', now() - interval '400 days', now() - interval '400 days');
SELECT coalesce(t.error_of($$SELECT dalgo_internal.expire_connector_runs(900)$$), '')
	|| coalesce(t.error_of($$SELECT dalgo_internal.expire_stalled_connector_runs(3600)$$), '') AS expire_error \gset
SELECT t.check('expire_connector_runs() and expire_stalled_connector_runs() fail the runs left behind',
	(SELECT status::text FROM dalgo.sync_runs WHERE id = '77777777-0000-4000-8000-0000000000e3') = 'failed'
	AND (SELECT error_message FROM dalgo.sync_runs WHERE id = '77777777-0000-4000-8000-0000000000e3') LIKE 'no connector claimed%'
	AND (SELECT status::text FROM dalgo.sync_runs WHERE id = :'stalled_run') = 'failed'
	AND (SELECT error_message FROM dalgo.sync_runs WHERE id = :'stalled_run') LIKE 'the connector did not complete%',
	:'expire_error' || ' ' || coalesce((SELECT string_agg(status || coalesce(': ' || error_message, ''), '; ') FROM dalgo.sync_runs
		WHERE id IN ('77777777-0000-4000-8000-0000000000e3', :'stalled_run')), 'no run'));
SELECT to_regclass(:'stalled_stage') IS NOT NULL AS stale_left \gset
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000003';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of($$SELECT dalgo.begin_upload('33333333-0000-4000-8000-0000000000e3', ARRAY['city'])$$), '') AS stale_error \gset
COMMIT;
SELECT t.check('the expired run''s staging table is dropped when its organization next stages a load',
	:'stalled_error' = '' AND :'stale_left' AND to_regclass(:'stalled_stage') IS NULL,
	:'stalled_error' || ' left after expiry: ' || :'stale_left' || ' ' || :'stale_error');
SELECT coalesce(t.error_of($$SELECT dalgo_internal.purge_run_history(30)$$), '') AS purge_error \gset
SELECT t.check('purge_run_history() deletes old finished runs on every shard',
	(SELECT count(*) FROM dalgo.sync_runs WHERE id = '77777777-0000-4000-8000-0000000000e5') = 0
	AND (SELECT count(*) FROM dalgo.sync_runs WHERE id = :'conn_run') = 1, :'purge_error');
-- A pending connector run waits over a few of the scheduler's ticks.
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.sync_now('33333333-0000-4000-8000-0000000000e1') AS conn_run3 \gset
COMMIT;
SELECT pg_sleep(3);
SELECT t.check('the coordinator''s scheduler records no error while connector runs exist',
	(SELECT last_error IS NULL FROM dalgo.scheduler_status()
	 WHERE database_oid = (SELECT oid FROM pg_database WHERE datname = current_database()))
	AND (SELECT status::text FROM dalgo.sync_runs WHERE id = :'conn_run3') = 'pending',
	(SELECT coalesce(last_error, 'no error') FROM dalgo.scheduler_status()
	 WHERE database_oid = (SELECT oid FROM pg_database WHERE datname = current_database())));

-- ---- accounts, lifecycle and secrets on a cluster ----
-- Each call with the request pattern of docs/scaling.md ("Identity on the
-- workers").  Functions that look a row of a distributed table up by a
-- token or an id find it first, then lock it in its organization's shard.
-- dee accepts the invitation of the account section (its token is in the mail).
INSERT INTO dalgo.users (id, email) VALUES ('00000000-0000-4000-a000-000000000004', 'dee@example.org');
SELECT payload->>'token' AS dee_token FROM dalgo.mail_messages
	WHERE kind = 'invitation' AND state = 'pending' AND recipient = 'dee@example.org' \gset
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000004';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of(format($$SELECT dalgo.accept_invitation(%L)$$, :'dee_token')), '') AS accept_error \gset
COMMIT;
SELECT t.check('dalgo.accept_invitation() on a cluster: a member, the invitation used',
	(SELECT role::text FROM dalgo.organization_members WHERE organization_id = :'org1'
	 AND user_id = '00000000-0000-4000-a000-000000000004' AND deleted_at IS NULL) = 'member'
	AND (SELECT accepted_at IS NOT NULL FROM dalgo.invitations WHERE organization_id = :'org1' AND email = 'dee@example.org'
		 AND revoked_at IS NULL),
	:'accept_error');
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000004';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('... the token works once (55000)',
	t.refused(format($$SELECT dalgo.accept_invitation(%L)$$, :'dee_token')) = '55000',
	t.error_of(format($$SELECT dalgo.accept_invitation(%L)$$, :'dee_token')));
SELECT t.check('... an unknown token is refused (28000)',
	t.refused($$SELECT dalgo.accept_invitation('no such token')$$) = '28000');
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of(format($$SELECT dalgo.invite_member(%L, 'eve@example.org', 'viewer')$$, :'org1')), '') AS eve_error \gset
COMMIT;
SELECT id AS eve_invitation FROM dalgo.invitations WHERE email = 'eve@example.org' \gset
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000003';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('dalgo.revoke_invitation() by an admin of another organization: not found (P0002)',
	t.refused(format($$SELECT dalgo.revoke_invitation(%L)$$, :'eve_invitation')) = 'P0002');
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of(format($$SELECT dalgo.revoke_invitation(%L)$$, :'eve_invitation')), '') AS revoke_error \gset
COMMIT;
SELECT t.check('dalgo.revoke_invitation() on a cluster: revoked, its mail cancelled',
	(SELECT revoked_at IS NOT NULL FROM dalgo.invitations WHERE id = :'eve_invitation')
	AND (SELECT state FROM dalgo.mail_messages WHERE kind = 'invitation' AND recipient = 'eve@example.org') = 'cancelled',
	:'eve_error' || :'revoke_error');

-- Passwords and sessions live in reference tables.
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_anon;
SELECT coalesce(t.error_of($$SELECT dalgo.request_password_reset('zoe@example.org')$$), '') AS reset_req_error \gset
COMMIT;
SELECT coalesce((SELECT payload->>'token' FROM dalgo.mail_messages WHERE kind = 'password_reset' AND state = 'pending'
				 AND recipient = 'zoe@example.org'), '') AS zoe_reset \gset
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_anon;
SELECT coalesce(t.error_of(format($$SELECT dalgo.reset_password(%L, 'a new long password 2')$$, :'zoe_reset')), '') AS reset_error \gset
COMMIT;
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_anon;
SELECT t.check('password reset on a cluster: the new password signs in',
	t.error_of($$SELECT dalgo.sign_in('zoe@example.org', 'a new long password 2')$$) IS NULL,
	:'reset_req_error' || :'reset_error' || coalesce(t.error_of($$SELECT dalgo.sign_in('zoe@example.org', 'a new long password 2')$$), ''));
COMMIT;
SELECT id AS zoe FROM dalgo.users WHERE email = 'zoe@example.org' \gset
BEGIN;
SET LOCAL dalgo.user_id = :'zoe';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of($$SELECT dalgo.change_password('a new long password 2', 'a third long password 3')$$), '') AS change_error \gset
SELECT coalesce(t.error_of($$SELECT dalgo.end_all_sessions()$$), '') AS end_all_error \gset
COMMIT;
SELECT t.check('change_password() and end_all_sessions() on a cluster',
	(SELECT count(*) FROM dalgo.refresh_tokens WHERE user_id = :'zoe' AND revoked_at IS NULL) = 0
	AND (SELECT count(*) FROM dalgo.audit_logs WHERE user_id = :'zoe' AND action IN ('password_changed', 'all_sessions_ended')) = 2,
	:'change_error' || :'end_all_error');

-- Soft delete and restore: the row is locked in its shard, the cascade runs
-- on the shards of the row's organization.
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000003';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of($$SELECT dalgo.soft_delete('dalgo.sources', '33333333-0000-4000-8000-0000000000d3')$$), '') AS sd_error \gset
COMMIT;
SELECT t.check('dalgo.soft_delete() of a source on a cluster stops its schedule',
	(SELECT deleted_at IS NOT NULL FROM dalgo.sources WHERE id = '33333333-0000-4000-8000-0000000000d3')
	AND (SELECT deleted_at IS NOT NULL FROM dalgo.schedules WHERE id = '88888888-0000-4000-8000-0000000000d3'),
	:'sd_error');
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000003';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('dalgo.deleted_items() lists it', e IS NULL AND n = 1, e)
	FROM (SELECT t.error_of(format($$SELECT dalgo.deleted_items(%L)$$, :'org2')) e,
				 (SELECT count(*) FROM dalgo.deleted_items(:'org2') WHERE id = '33333333-0000-4000-8000-0000000000d3') n) x;
SELECT coalesce(t.error_of($$SELECT dalgo.restore('dalgo.sources', '33333333-0000-4000-8000-0000000000d3')$$), '') AS restore_error \gset
COMMIT;
SELECT t.check('dalgo.restore() brings the source and its schedule back',
	:'restore_error' = '' AND (SELECT deleted_at IS NULL FROM dalgo.sources WHERE id = '33333333-0000-4000-8000-0000000000d3')
	AND (SELECT deleted_at IS NULL FROM dalgo.schedules WHERE id = '88888888-0000-4000-8000-0000000000d3'),
	:'restore_error');
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000002';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('a viewer cannot soft-delete (42501)',
	t.refused($$SELECT dalgo.soft_delete('dalgo.transformations', '55555555-0000-4000-8000-0000000000d2')$$) = '42501');
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of($$SELECT dalgo.soft_delete('dalgo.transformations', '55555555-0000-4000-8000-0000000000d2')$$), '') AS sdt_error \gset
COMMIT;
SELECT t.check('soft-deleting a transformation takes its output',
	(SELECT deleted_at IS NOT NULL FROM dalgo.outputs WHERE id = '66666666-0000-4000-8000-0000000000d2'), :'sdt_error');
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of($$SELECT dalgo.restore('dalgo.transformations', '55555555-0000-4000-8000-0000000000d2')$$), '') AS rt_error \gset
COMMIT;
SELECT t.check('... and restoring it brings the output back',
	:'rt_error' = '' AND (SELECT deleted_at IS NULL FROM dalgo.outputs WHERE id = '66666666-0000-4000-8000-0000000000d2'), :'rt_error');
-- An organization: pending runs of it fail at once.
SELECT id AS org3 FROM dalgo.organizations WHERE slug = 'three-org' \gset
INSERT INTO dalgo.sources (id, organization_id, name, source_type) VALUES
	('33333333-0000-4000-8000-0000000000c1', :'org3', 'Three', 'csv');
INSERT INTO dalgo.sync_runs (organization_id, source_id, status) VALUES (:'org3', '33333333-0000-4000-8000-0000000000c1', 'pending');
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of(format($$SELECT dalgo.soft_delete('dalgo.organizations', %L)$$, :'org3')), '') AS sdo_error \gset
COMMIT;
SELECT t.check('soft-deleting an organization fails its pending runs',
	(SELECT deleted_at IS NOT NULL FROM dalgo.organizations WHERE id = :'org3')
	AND (SELECT status::text FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c1') = 'failed',
	:'sdo_error');
-- purge_deleted(), past the restore window.
SET dalgo.restore_days = 0;
SELECT coalesce(t.error_of($$SELECT dalgo.purge_deleted()$$), '') AS purge_error \gset
RESET dalgo.restore_days;
SELECT t.check('dalgo.purge_deleted() on a cluster removes the organization and its rows',
	(SELECT count(*) FROM dalgo.organizations WHERE id = :'org3') = 0
	AND (SELECT count(*) FROM dalgo.sources WHERE id = '33333333-0000-4000-8000-0000000000c1') = 0,
	:'purge_error');

-- Leaving for good.
BEGIN;
SET LOCAL dalgo.user_id = :'zoe';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of($$SELECT dalgo.delete_my_account()$$), '') AS dma_error \gset
COMMIT;
-- The audit trail's append-only guard fires on the shards, on the workers:
-- anonymize_audit_logs() sends them dalgo.audit_anonymizing for its update.
SELECT t.check('dalgo.delete_my_account() on a cluster: personal organization gone, account anonymized',
	(SELECT email LIKE 'erased-%' AND deleted_at IS NOT NULL FROM dalgo.users WHERE id = :'zoe')
	AND (SELECT count(*) FROM dalgo.organization_members m JOIN dalgo.organizations o ON o.id = m.organization_id
		 WHERE m.user_id = :'zoe') = 0,
	:'dma_error');
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_service;
SELECT coalesce(t.error_of($$SELECT dalgo.erase_user('00000000-0000-4000-a000-000000000004')$$), '') AS erase_error \gset
COMMIT;
SELECT t.check('... its audit rows keep their ids and lose the email, on the workers',
	(SELECT count(*) FROM dalgo.audit_logs WHERE user_id = :'zoe') >= 2
	AND (SELECT count(*) FROM dalgo.audit_logs WHERE details::text LIKE '%zoe@example.org%') = 0,
	(SELECT string_agg(action || ' ' || details::text, '; ') FROM dalgo.audit_logs WHERE details::text LIKE '%zoe@example.org%'));
SELECT t.check('the audit trail stays append-only for its owner outside anonymize_audit_logs() (42501)',
	t.refused($$UPDATE dalgo.audit_logs SET details = '{}' WHERE action = 'sign_in'$$) = '42501');
BEGIN;
SET LOCAL dalgo.audit_anonymizing = on;
SELECT t.check('... and with dalgo.audit_anonymizing set, ids still cannot change on the workers (42501)',
	t.refused($$UPDATE dalgo.audit_logs SET action = 'forged' WHERE action = 'sign_in'$$) = '42501');
COMMIT;
SELECT t.check('dalgo.erase_user() on a cluster: the invitation no longer names the email',
	(SELECT count(*) FROM dalgo.invitations WHERE email = 'dee@example.org') = 0
	AND (SELECT email LIKE 'erased-%' FROM dalgo.users WHERE id = '00000000-0000-4000-a000-000000000004'),
	:'erase_error');

-- Secrets: the key file is the same on every node (run.sh puts it there):
-- the credentials are sealed by the trigger on the shard, on a worker, and
-- opened on the coordinator, where runs read them.
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config) VALUES
	('33333333-0000-4000-8000-0000000000f1', :'org2', 'Secret', 'postgres', '{"relation": "public.x", "credentials": {"password": "s3cret"}}');
SELECT t.check('credentials are stored encrypted on the shard',
	(SELECT config->>'credentials' LIKE 'dalgo:pgp1:%' FROM dalgo.sources WHERE id = '33333333-0000-4000-8000-0000000000f1'));
SELECT coalesce(t.error_of($$SELECT dalgo_internal.source_credentials('33333333-0000-4000-8000-0000000000f1')$$), '') AS cred_error \gset
SELECT t.check('source_credentials() on the coordinator opens what the worker sealed',
	:'cred_error' = '' AND (SELECT dalgo_internal.source_credentials('33333333-0000-4000-8000-0000000000f1')->>'password') = 's3cret',
	:'cred_error');
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000003';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('source_config() shows the admin the credentials redacted',
	(SELECT dalgo.source_config('33333333-0000-4000-8000-0000000000f1')->>'credentials') = '[redacted]');
COMMIT;
SELECT t.check('dalgo.rotate_secret_key() refuses on a cluster (0A000), the keys untouched',
	t.refused($$SELECT dalgo.rotate_secret_key()$$) = '0A000'
	AND (SELECT dalgo_internal.source_credentials('33333333-0000-4000-8000-0000000000f1')->>'password') = 's3cret');

-- Versions, lineage and export.
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
UPDATE dalgo.transformations SET recipe = jsonb_set(recipe, '{steps}', '[]') WHERE id = '55555555-0000-4000-8000-0000000000d2';
COMMIT;
-- (A SECURITY DEFINER function in a transaction of its own: Citus refuses a
-- placement written in the transaction by another role.)
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of($$SELECT dalgo.revert_transformation('55555555-0000-4000-8000-0000000000d2', 1)$$), '') AS revert_error \gset
COMMIT;
SELECT t.check('dalgo.revert_transformation() on a cluster saves the old recipe as a new version',
	(SELECT jsonb_array_length(recipe->'steps') = 2 AND current_version = 3 FROM dalgo.transformations WHERE id = '55555555-0000-4000-8000-0000000000d2'),
	:'revert_error' || (SELECT current_version::text FROM dalgo.transformations WHERE id = '55555555-0000-4000-8000-0000000000d2'));
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000002';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('dalgo.diff_versions() on a cluster', e IS NULL, e)
	FROM (SELECT t.error_of($$SELECT dalgo.diff_versions('55555555-0000-4000-8000-0000000000d2', 1, 2)$$) e) x;
SELECT t.check('dalgo.lineage() on a cluster', e IS NULL, e)
	FROM (SELECT t.error_of(format($$SELECT count(*) FROM dalgo.lineage(%L)$$, :'org1')) e) x;
SELECT t.check('dalgo.impact() on a cluster', e IS NULL, e)
	FROM (SELECT t.error_of($$SELECT count(*) FROM dalgo.impact('33333333-0000-4000-8000-0000000000d1')$$) e) x;
SELECT t.check('dalgo.lineage_dot() on a cluster', e IS NULL, e)
	FROM (SELECT t.error_of(format($$SELECT dalgo.lineage_dot(%L)$$, :'org1')) e) x;
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('dalgo.export_organization() on a cluster', e IS NULL, e)
	FROM (SELECT t.error_of(format($$SELECT dalgo.export_organization(%L)$$, :'org1')) e) x;
COMMIT;

-- ---- attacks on the identity sent to the workers ----
-- asha's viewer key of org1 (viewer_key), her token (asha_token); asha is
-- owner of org1 and viewer of org2.  Each attack tries to make a worker
-- evaluate a policy with more than the coordinator grants.
SELECT count(*) AS k_n1 FROM dalgo.sources WHERE organization_id = :'org1' \gset
SELECT count(*) AS k_n2 FROM dalgo.sources WHERE organization_id = :'org2' \gset

-- A reset runs no check hook: set_config(name, NULL, true) pushed down to a
-- shard would drop the key's scope on that worker, leaving asha unscoped there.
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.authenticate_api_key(:'viewer_key') AS key_org \gset
SELECT count(*) AS reset_rows, coalesce(set_config('dalgo.api_key_scope', NULL, true), 'reset') AS reset_result
	FROM dalgo.sources WHERE organization_id = :'org2' \gset
SELECT t.check('a pushed-down reset of dalgo.api_key_scope does not open org2 to an org1 key',
	(SELECT count(*) FROM dalgo.sources WHERE organization_id = :'org2') = 0,
	(SELECT count(*) FROM dalgo.sources WHERE organization_id = :'org2')::text || ' org2 rows seen');
SELECT count(*) AS reset_rows, coalesce(set_config('dalgo.api_key_scope', NULL, true), 'reset') AS reset_result
	FROM dalgo.sources WHERE organization_id = :'org1' \gset
SELECT t.check('... nor lets a viewer key write as its owner in org1 (42501)',
	t.refused(format($$INSERT INTO dalgo.sources (organization_id, name, source_type) VALUES (%L, 'by reset key', 'csv')$$, :'org1')) = '42501',
	t.error_of(format($$INSERT INTO dalgo.sources (organization_id, name, source_type) VALUES (%L, 'by reset key', 'csv')$$, :'org1')));
COMMIT;
SELECT t.check('... and nothing was written by the reset key',
	(SELECT count(*) FROM dalgo.sources WHERE name = 'by reset key') = 0);
DELETE FROM dalgo.sources WHERE name = 'by reset key';	-- (so that the checks below stand alone)
-- The same reset of dalgo.user_id leaves nobody on the worker, not a weaker source.
BEGIN;
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.authenticate(:'asha_token') AS who \gset
SELECT count(*) AS reset_rows, coalesce(set_config('dalgo.user_id', NULL, true), 'reset') AS reset_result
	FROM dalgo.sources WHERE organization_id = :'org2' \gset
SELECT t.check('a pushed-down reset of dalgo.user_id leaves nobody on that worker',
	(SELECT count(*) FROM dalgo.sources WHERE organization_id = :'org2') = 0);
COMMIT;

-- A cursor's query runs on the workers at its first FETCH: the identity in
-- force then counts, not the one before (token, DECLARE, API key, FETCH).
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.authenticate(:'asha_token') AS who \gset
DECLARE ca_cur CURSOR FOR SELECT count(*) AS cur_all, count(*) FILTER (WHERE organization_id = :'org2') AS cur_org2 FROM dalgo.sources;
SELECT dalgo.authenticate_api_key(:'viewer_key') AS key_org \gset
FETCH ca_cur \gset
SELECT t.check('a cursor declared under a token and fetched under an org1 key sees org1 only',
	:cur_org2 = 0 AND :cur_all = :k_n1, :'cur_all' || ' rows, ' || :'cur_org2' || ' of org2');
COMMIT;

-- The app's authenticator may set dalgo.user_id with set_config() (as on one
-- node); Citus sends only SET statements, so dalgo sends this one.
BEGIN;
SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000001';
SELECT set_config('dalgo.user_id', '00000000-0000-4000-a000-000000000002', true) AS ben \gset
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('dalgo.user_id changed by set_config() reaches the workers (ben, viewer of org1 only)',
	(SELECT count(*) FROM dalgo.sources WHERE organization_id = :'org2') = 0
	AND (SELECT count(*) FROM dalgo.sources) = :k_n1,
	(SELECT count(*) FROM dalgo.sources)::text || ' rows');
COMMIT;
BEGIN;
SELECT set_config('dalgo.user_id', '00000000-0000-4000-a000-000000000003', true) AS chen \gset
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('... and alone (chen, admin of org2)', (SELECT count(*) FROM dalgo.sources) = :k_n2,
	(SELECT count(*) FROM dalgo.sources)::text || ' rows');
COMMIT;

-- Savepoints released and new connections opened afterwards (one per shard).
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT count(*) AS warm FROM dalgo.sources \gset
SAVEPOINT a;
SELECT dalgo.authenticate_api_key(:'viewer_key') AS key_org \gset
SELECT count(*) AS in_savepoint FROM dalgo.sources WHERE organization_id = :'org1' \gset
RELEASE SAVEPOINT a;
SET LOCAL citus.force_max_query_parallelization = on;
SELECT t.check('a key set in a released savepoint narrows connections opened later, in parallel',
	(SELECT count(*) FROM dalgo.sources) = :k_n1
	AND (SELECT count(*) FROM dalgo.sources WHERE organization_id = :'org2') = 0);
SAVEPOINT b;
SELECT dalgo.authenticate(:'asha_token') AS who \gset
SELECT count(*) AS with_token FROM dalgo.sources \gset
ROLLBACK TO SAVEPOINT b;
-- (the rollback forgets the identity, as on one node; the key's scope stays)
SELECT t.check('... a token rolled back to its savepoint: the workers see what the coordinator sees',
	(SELECT count(*) FROM dalgo.sources) = CASE WHEN dalgo.current_user_id() IS NULL THEN 0 ELSE :k_n1 END
	AND (SELECT count(*) FROM dalgo.sources WHERE organization_id = :'org2') = 0,
	(SELECT count(*) FROM dalgo.sources)::text || ' rows; ' || :with_token || ' under the token');
COMMIT;

-- authenticate(token) after an API key keeps the key's scope; the other way
-- round, the key's.
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.authenticate_api_key(:'viewer_key') AS key_org \gset
SELECT dalgo.authenticate(:'asha_token') AS who \gset
SELECT t.check('a token after an API key: still the key''s organization and role on the workers',
	(SELECT count(*) FROM dalgo.sources) = :k_n1
	AND t.refused(format($$INSERT INTO dalgo.sources (organization_id, name, source_type) VALUES (%L, 'key then token', 'csv')$$, :'org1')) = '42501');
COMMIT;

-- RESET ALL (Citus sends it) and sign_out() leave nobody on the workers.
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.authenticate_api_key(:'viewer_key') AS key_org \gset
SELECT count(*) AS before_reset FROM dalgo.sources \gset
RESET ALL;
SET LOCAL ROLE dalgo_authenticated;
SELECT t.check('RESET ALL: nobody on the workers', (SELECT count(*) FROM dalgo.sources) = 0 AND :before_reset = :k_n1);
COMMIT;
SET client_min_messages = error;	-- RESET ALL reset them
SET dalgo.jwt_secret = 'a cluster suite secret of at least 32 bytes!';

-- A DO block that commits: the identity ends with the first transaction.
SET ROLE dalgo_authenticated;
SELECT set_config('t.viewer_key', :'viewer_key', false) IS NOT NULL AS stored \gset
DO $$
DECLARE
	n bigint;
BEGIN
	PERFORM dalgo.authenticate_api_key(current_setting('t.viewer_key'));
	PERFORM count(*) FROM dalgo.sources;
	COMMIT;
	SELECT count(*) INTO n FROM dalgo.sources;
	PERFORM set_config('t.after_commit', n::text, false);
END $$;
RESET ROLE;
SELECT t.check('a DO block''s COMMIT ends the key''s identity on the workers too', current_setting('t.after_commit') = '0',
	current_setting('t.after_commit'));
RESET t.viewer_key;

-- COPY FROM into a distributed table under a viewer key: refused (the shard
-- has RLS; Citus copies row by row to the workers).
BEGIN;
SET LOCAL citus.propagate_set_commands = 'none';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.authenticate_api_key(:'viewer_key') AS key_org \gset
\set ON_ERROR_STOP 0
COPY dalgo.sources (organization_id, name, source_type) FROM STDIN;
a0000000-0000-4000-8000-000000000001	copied by a key	csv
\.
\set ON_ERROR_STOP 1
ROLLBACK;
SELECT t.check('COPY FROM under a viewer key writes nothing', (SELECT count(*) FROM dalgo.sources WHERE name = 'copied by a key') = 0);

-- Pushed-down calls that take a secret: the workers' logs never quote them.
BEGIN;
SET LOCAL ROLE dalgo_authenticated;
SELECT coalesce(t.error_of(format($$SELECT count(*) FROM dalgo.sources WHERE dalgo.authenticate(%L) IS NOT NULL$$, :'asha_token')), '') AS pushed_token \gset
SELECT coalesce(t.error_of(format($$SELECT count(*) FROM dalgo.sources WHERE dalgo.authenticate_api_key(%L) IS NOT NULL$$, :'viewer_key')), '') AS pushed_key \gset
COMMIT;
SELECT regexp_replace(current_setting('data_directory'), '/[^/]*$', '') AS run_dir \gset
SELECT t.check('no token or API key in the logs of the coordinator and the workers',
	(SELECT bool_and(position(:'asha_token' IN pg_read_file(:'run_dir' || '/' || n || '.log')) = 0
					 AND position(:'viewer_key' IN pg_read_file(:'run_dir' || '/' || n || '.log')) = 0)
	 FROM unnest(ARRAY['coord', 'w1', 'w2']) n),
	(SELECT string_agg(n, ' ') FROM unnest(ARRAY['coord', 'w1', 'w2']) n
	 WHERE position(:'asha_token' IN pg_read_file(:'run_dir' || '/' || n || '.log')) > 0
		OR position(:'viewer_key' IN pg_read_file(:'run_dir' || '/' || n || '.log')) > 0));
SELECT t.check('... nor in the errors the caller sees', position(:'asha_token' IN :'pushed_token') = 0
	AND position(:'viewer_key' IN :'pushed_key') = 0, :'pushed_token' || ' / ' || :'pushed_key');
