-- tenant_references: child rows inherit their parent's organization, can
-- never point at another organization's parent, and cascade on delete.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
SELECT plan(26);

-- organization_id is filled from the parent when omitted.
INSERT INTO dalgo.source_schemas (id, source_id, column_name, column_type, column_order)
	VALUES ('77777777-0000-4000-8000-000000000001', '33333333-0000-4000-8000-0000000000a1', 'NGO', 'text', 1);
SELECT is((SELECT organization_id FROM dalgo.source_schemas WHERE id = '77777777-0000-4000-8000-000000000001'),
	'22222222-0000-4000-8000-0000000000a0'::uuid, 'source_schemas.organization_id filled from the source');
INSERT INTO dalgo.sync_runs (id, source_id) VALUES ('77777777-0000-4000-8000-000000000002', '33333333-0000-4000-8000-0000000000b1');
SELECT is((SELECT organization_id FROM dalgo.sync_runs WHERE id = '77777777-0000-4000-8000-000000000002'),
	'22222222-0000-4000-8000-0000000000b0'::uuid, 'sync_runs.organization_id filled from the source');
INSERT INTO dalgo.warehouse_tables (id, warehouse_connection_id, table_name, source_id)
	VALUES ('77777777-0000-4000-8000-000000000003', '44444444-0000-4000-8000-0000000000a1', 'sheet', '33333333-0000-4000-8000-0000000000a1');
SELECT is((SELECT organization_id FROM dalgo.warehouse_tables WHERE id = '77777777-0000-4000-8000-000000000003'),
	'22222222-0000-4000-8000-0000000000a0'::uuid, 'warehouse_tables.organization_id filled from the connection');
INSERT INTO dalgo.transformation_versions (id, transformation_id, version_number, recipe)
	VALUES ('77777777-0000-4000-8000-000000000004', '55555555-0000-4000-8000-0000000000a1', 99, '{}');
SELECT is((SELECT organization_id FROM dalgo.transformation_versions WHERE id = '77777777-0000-4000-8000-000000000004'),
	'22222222-0000-4000-8000-0000000000a0'::uuid, 'transformation_versions.organization_id filled from the transformation');
INSERT INTO dalgo.transformation_runs (id, transformation_id) VALUES ('77777777-0000-4000-8000-000000000005', '55555555-0000-4000-8000-0000000000b1');
SELECT is((SELECT organization_id FROM dalgo.transformation_runs WHERE id = '77777777-0000-4000-8000-000000000005'),
	'22222222-0000-4000-8000-0000000000b0'::uuid, 'transformation_runs.organization_id filled from the transformation');
SELECT throws_ok($$INSERT INTO dalgo.sync_runs (source_id) VALUES ('99999999-0000-4000-8000-000000000000')$$,
	'23502', NULL, 'a child of a missing parent is refused');

-- A child can never point at another organization's parent.
SELECT throws_ok($$INSERT INTO dalgo.source_schemas (organization_id, source_id, column_name, column_type, column_order)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000b1', 'x', 'text', 1)$$,
	'23503', NULL, 'source_schemas -> another organization''s source');
SELECT throws_ok($$INSERT INTO dalgo.sync_runs (organization_id, source_id)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000b1')$$,
	'23503', NULL, 'sync_runs -> another organization''s source');
SELECT throws_ok($$INSERT INTO dalgo.warehouse_tables (organization_id, warehouse_connection_id, table_name)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '44444444-0000-4000-8000-0000000000b1', 'x')$$,
	'23503', NULL, 'warehouse_tables -> another organization''s connection');
SELECT throws_ok($$INSERT INTO dalgo.warehouse_tables (warehouse_connection_id, table_name, transformation_id)
	VALUES ('44444444-0000-4000-8000-0000000000a1', 'x', '55555555-0000-4000-8000-0000000000b1')$$,
	'23503', NULL, 'warehouse_tables -> another organization''s transformation');
SELECT throws_ok($$INSERT INTO dalgo.transformation_versions (organization_id, transformation_id, version_number, recipe)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '55555555-0000-4000-8000-0000000000b1', 99, '{}')$$,
	'23503', NULL, 'transformation_versions -> another organization''s transformation');
SELECT throws_ok($$INSERT INTO dalgo.transformation_runs (organization_id, transformation_id)
	VALUES ('22222222-0000-4000-8000-0000000000b0', '55555555-0000-4000-8000-0000000000a1')$$,
	'23503', NULL, 'transformation_runs -> another organization''s transformation');
SELECT throws_ok($$INSERT INTO dalgo.outputs (organization_id, transformation_id, name)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '55555555-0000-4000-8000-0000000000b1', 'x')$$,
	'23503', NULL, 'outputs -> another organization''s transformation');
SELECT throws_ok($$INSERT INTO dalgo.schedules (organization_id, source_id, frequency)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000b1', 'daily')$$,
	'23503', NULL, 'schedules -> another organization''s source');
SELECT throws_ok($$INSERT INTO dalgo.schedules (organization_id, output_id, frequency)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '66666666-0000-4000-8000-0000000000b1', 'daily')$$,
	'23503', NULL, 'schedules -> another organization''s output');
SELECT throws_ok($$UPDATE dalgo.sync_runs SET organization_id = '22222222-0000-4000-8000-0000000000a0'
	WHERE id = '77777777-0000-4000-8000-000000000002'$$,
	'42501', 'a row of sync_runs cannot move to another organization',
	'moving a child to another organization is refused (before its reference would break)');

-- Soft-deleted rows do not block re-creation of unique names.
UPDATE dalgo.users SET deleted_at = now() WHERE id = '11111111-0000-4000-8000-000000000002';
SELECT lives_ok($$INSERT INTO dalgo.users (email) VALUES ('MEMBER.A@example.org')$$,
	'a soft-deleted user''s email can be registered again');
SELECT throws_ok($$INSERT INTO dalgo.users (email) VALUES ('Owner.A@Example.org')$$,
	'23505', NULL, 'email is unique case-insensitively among live users');

-- Cascades.
INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency)
	VALUES ('88888888-0000-4000-8000-000000000001', '22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000a1', 'daily');
INSERT INTO dalgo.schedules (id, organization_id, output_id, frequency)
	VALUES ('88888888-0000-4000-8000-000000000002', '22222222-0000-4000-8000-0000000000a0', '66666666-0000-4000-8000-0000000000a1', 'daily');
DELETE FROM dalgo.sources WHERE id = '33333333-0000-4000-8000-0000000000a1';
SELECT is((SELECT count(*) FROM dalgo.source_schemas WHERE source_id = '33333333-0000-4000-8000-0000000000a1')
	+ (SELECT count(*) FROM dalgo.warehouse_tables WHERE source_id = '33333333-0000-4000-8000-0000000000a1')
	+ (SELECT count(*) FROM dalgo.schedules WHERE id = '88888888-0000-4000-8000-000000000001'),
	0::bigint, 'deleting a source deletes its schema, warehouse table and schedule');
DELETE FROM dalgo.transformations WHERE id = '55555555-0000-4000-8000-0000000000a1';
SELECT is((SELECT count(*) FROM dalgo.transformation_versions WHERE transformation_id = '55555555-0000-4000-8000-0000000000a1')
	+ (SELECT count(*) FROM dalgo.outputs WHERE transformation_id = '55555555-0000-4000-8000-0000000000a1')
	+ (SELECT count(*) FROM dalgo.schedules WHERE id = '88888888-0000-4000-8000-000000000002'),
	0::bigint, 'deleting a transformation deletes its versions, outputs and their schedules');
DELETE FROM dalgo.users WHERE id = '11111111-0000-4000-8000-000000000002';
SELECT is((SELECT count(*) FROM dalgo.organization_members WHERE user_id = '11111111-0000-4000-8000-000000000002'),
	0::bigint, 'deleting a user deletes their memberships');
SELECT throws_ok($$DELETE FROM dalgo.users WHERE id = '11111111-0000-4000-8000-000000000001'$$, '23514', NULL,
	'a user who is the last owner of an organization cannot be deleted');
INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000003', 'owner');
INSERT INTO dalgo.refresh_tokens (user_id, token_hash, expires_at)
	VALUES ('11111111-0000-4000-8000-000000000001', 'h1', now() + interval '1 day');
INSERT INTO dalgo.sources (organization_id, name, source_type, created_by_id)
	VALUES ('22222222-0000-4000-8000-0000000000b0', 'By owner A', 'api', '11111111-0000-4000-8000-000000000001');
DELETE FROM dalgo.users WHERE id = '11111111-0000-4000-8000-000000000001';
SELECT is((SELECT count(*) FROM dalgo.refresh_tokens), 0::bigint, 'deleting a user deletes their tokens');
SELECT is((SELECT count(*) FROM dalgo.sources WHERE name = 'By owner A' AND created_by_id IS NULL), 1::bigint,
	'deleting a user keeps what they created, with created_by_id set to NULL');
DELETE FROM dalgo.organizations WHERE id = '22222222-0000-4000-8000-0000000000b0';
SELECT is((SELECT sum(n) FROM (
	SELECT count(*) n FROM dalgo.sources WHERE organization_id = '22222222-0000-4000-8000-0000000000b0'
	UNION ALL SELECT count(*) FROM dalgo.sync_runs WHERE organization_id = '22222222-0000-4000-8000-0000000000b0'
	UNION ALL SELECT count(*) FROM dalgo.transformations WHERE organization_id = '22222222-0000-4000-8000-0000000000b0'
	UNION ALL SELECT count(*) FROM dalgo.transformation_runs WHERE organization_id = '22222222-0000-4000-8000-0000000000b0'
	UNION ALL SELECT count(*) FROM dalgo.outputs WHERE organization_id = '22222222-0000-4000-8000-0000000000b0'
	UNION ALL SELECT count(*) FROM dalgo.warehouse_connections WHERE organization_id = '22222222-0000-4000-8000-0000000000b0'
	UNION ALL SELECT count(*) FROM dalgo.organization_members WHERE organization_id = '22222222-0000-4000-8000-0000000000b0') c),
	0::numeric, 'deleting an organization deletes everything it owns');
SELECT is((SELECT count(*) FROM dalgo.warehouse_connections WHERE organization_id = '22222222-0000-4000-8000-0000000000a0'),
	1::bigint, 'the other organization keeps its rows');

SELECT * FROM finish();
ROLLBACK;
