-- schema_shape: the Dalgo Lite document's tables, columns, types, enums,
-- keys and indexes exist exactly, plus a golden dump of the catalog.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
SELECT plan(47);

SELECT tables_are('dalgo', ARRAY[
	'users', 'organizations', 'organization_members', 'invitations', 'refresh_tokens',
	'password_reset_tokens', 'sources', 'source_schemas', 'sync_runs', 'warehouse_connections',
	'warehouse_tables', 'transformations', 'transformation_versions', 'transformation_runs',
	'outputs', 'schedules', 'audit_logs', 'sign_in_attempts', 'mail_messages', 'api_keys', 'retention_policies'],
	'the 17 tables of the document, the accounts tables (sign-in attempts, mail queue, API keys) and retention_policies (docs/toolkit.md)');

-- The document's columns; tenant child tables also carry organization_id (a dalgo addition).
SELECT columns_are('dalgo', 'users', ARRAY['id', 'email', 'password_hash', 'full_name', 'is_active',
	'is_superadmin', 'created_at', 'updated_at', 'deleted_at']);
SELECT columns_are('dalgo', 'organizations', ARRAY['id', 'name', 'slug', 'description', 'org_type',
	'settings', 'created_at', 'updated_at', 'deleted_at']);
SELECT columns_are('dalgo', 'organization_members', ARRAY['id', 'user_id', 'organization_id', 'role',
	'created_at', 'updated_at', 'deleted_at']);
SELECT columns_are('dalgo', 'invitations', ARRAY['id', 'email', 'organization_id', 'role', 'token',
	'expires_at', 'accepted_at', 'invited_by_id', 'created_at', 'updated_at', 'revoked_at']);
SELECT columns_are('dalgo', 'refresh_tokens', ARRAY['id', 'user_id', 'token_hash', 'expires_at',
	'revoked_at', 'created_at', 'updated_at', 'family_id', 'replaced_at']);
SELECT columns_are('dalgo', 'password_reset_tokens', ARRAY['id', 'user_id', 'token_hash', 'expires_at',
	'used_at', 'created_at', 'updated_at']);
SELECT columns_are('dalgo', 'sources', ARRAY['id', 'organization_id', 'name', 'description',
	'source_type', 'config', 'warehouse_table_name', 'last_synced_at', 'created_by_id', 'created_at',
	'updated_at', 'deleted_at']);
SELECT columns_are('dalgo', 'source_schemas', ARRAY['id', 'organization_id', 'source_id', 'column_name',
	'column_type', 'column_order', 'is_nullable', 'metadata', 'created_at', 'updated_at', 'deleted_at']);
SELECT columns_are('dalgo', 'sync_runs', ARRAY['id', 'organization_id', 'source_id', 'status',
	'started_at', 'completed_at', 'rows_synced', 'error_message', 'details', 'triggered_by_id',
	'created_at', 'updated_at', 'deleted_at']);
SELECT columns_are('dalgo', 'warehouse_connections', ARRAY['id', 'organization_id', 'database_name',
	'access_token_encrypted', 'is_connected', 'last_connected_at', 'config', 'created_at', 'updated_at',
	'deleted_at']);
SELECT columns_are('dalgo', 'warehouse_tables', ARRAY['id', 'organization_id', 'warehouse_connection_id',
	'table_name', 'source_id', 'transformation_id', 'row_count', 'size_bytes', 'last_updated_at',
	'schema_info', 'created_at', 'updated_at', 'deleted_at', 'output_id']);
SELECT columns_are('dalgo', 'transformations', ARRAY['id', 'organization_id', 'name', 'description',
	'recipe', 'output_table_name', 'current_version', 'last_run_at', 'created_by_id', 'created_at',
	'updated_at', 'deleted_at']);
SELECT columns_are('dalgo', 'transformation_versions', ARRAY['id', 'organization_id', 'transformation_id',
	'version_number', 'recipe', 'generated_sql', 'created_by_id', 'change_description', 'created_at',
	'updated_at', 'deleted_at']);
SELECT columns_are('dalgo', 'transformation_runs', ARRAY['id', 'organization_id', 'transformation_id',
	'version_number', 'status', 'started_at', 'completed_at', 'executed_sql', 'rows_affected',
	'error_message', 'details', 'triggered_by_id', 'created_at', 'updated_at', 'deleted_at']);
SELECT columns_are('dalgo', 'outputs', ARRAY['id', 'organization_id', 'transformation_id', 'name',
	'description', 'destination_config', 'last_refreshed_at', 'created_by_id', 'created_at', 'updated_at',
	'deleted_at']);
SELECT columns_are('dalgo', 'schedules', ARRAY['id', 'organization_id', 'source_id', 'output_id',
	'frequency', 'run_at_time', 'run_at_day', 'timezone', 'is_active', 'last_run_at', 'next_run_at',
	'created_by_id', 'created_at', 'updated_at', 'deleted_at']);
SELECT columns_are('dalgo', 'audit_logs', ARRAY['id', 'organization_id', 'user_id', 'action',
	'resource_type', 'resource_id', 'details', 'ip_address', 'user_agent', 'created_at', 'updated_at']);

-- Enums, with the document's values.
SELECT enum_has_labels('dalgo', 'org_type', ARRAY['team', 'personal']);
SELECT enum_has_labels('dalgo', 'member_role', ARRAY['viewer', 'member', 'admin', 'owner']);
SELECT enum_has_labels('dalgo', 'source_type', ARRAY['google_sheets', 'csv', 'postgres', 'api']);
SELECT enum_has_labels('dalgo', 'run_status', ARRAY['pending', 'running', 'success', 'failed']);
SELECT enum_has_labels('dalgo', 'schedule_frequency', ARRAY['hourly', 'daily', 'weekly', 'monthly']);
SELECT ok('owner'::dalgo.member_role > 'admin' AND 'admin'::dalgo.member_role > 'member'
		  AND 'member'::dalgo.member_role > 'viewer', 'member_role sorts by privilege');

-- Column typing rules across every table.
SELECT is_empty($$SELECT table_name || '.' || column_name FROM information_schema.columns
	WHERE table_schema = 'dalgo' AND data_type LIKE 'timestamp%' AND data_type <> 'timestamp with time zone'$$,
	'every timestamp is timestamptz');
SELECT is_empty($$SELECT c.relname FROM pg_class c
	JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'id'
	LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
	WHERE c.relnamespace = 'dalgo'::regnamespace AND c.relkind = 'r'
	  AND (a.atttypid <> 'uuid'::regtype OR pg_get_expr(d.adbin, d.adrelid) IS DISTINCT FROM 'gen_random_uuid()')$$,
	'every id is a uuid defaulting to gen_random_uuid()');
SELECT is_empty($$SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'dalgo'::regnamespace
	AND c.relkind = 'r' AND NOT EXISTS (SELECT 1 FROM pg_constraint p WHERE p.conrelid = c.oid AND p.contype = 'p'
	AND p.conkey = ARRAY[(SELECT attnum FROM pg_attribute WHERE attrelid = c.oid AND attname = 'id')])$$,
	'every table''s primary key is id');
SELECT is_empty($$SELECT table_name || '.' || column_name FROM information_schema.columns
	WHERE table_schema = 'dalgo' AND column_name IN ('settings', 'config', 'recipe', 'metadata', 'details',
	'schema_info', 'destination_config') AND data_type <> 'jsonb'$$, 'documented jsonb columns are jsonb');
SELECT is_empty($$SELECT table_name || '.' || column_name FROM information_schema.columns
	WHERE table_schema = 'dalgo' AND column_name IN ('created_at', 'updated_at')
	AND (is_nullable = 'YES' OR column_default IS DISTINCT FROM 'now()')$$,
	'created_at and updated_at are NOT NULL DEFAULT now()');
SELECT is_empty($$SELECT table_name FROM information_schema.columns c
	WHERE table_schema = 'dalgo' AND column_name = 'organization_id' AND is_nullable = 'YES'
	AND table_name <> 'audit_logs'$$, 'organization_id is NOT NULL wherever it is a tenant key');

-- Every foreign key from a tenant table cascades from its parent; user references do too or set NULL.
SELECT is_empty($$SELECT conrelid::regclass::text || ' ' || conname FROM pg_constraint
	WHERE connamespace = 'dalgo'::regnamespace AND contype = 'f'
	AND confrelid <> 'dalgo.users'::regclass AND confdeltype <> 'c'$$,
	'child records cascade on delete');
SELECT is_empty($$SELECT conrelid::regclass::text || ' ' || conname FROM pg_constraint
	WHERE connamespace = 'dalgo'::regnamespace AND contype = 'f'
	AND confrelid = 'dalgo.users'::regclass AND confdeltype NOT IN ('c', 'n')$$,
	'user references cascade (ownership) or set NULL (authorship)');
SELECT is_empty($$SELECT conrelid::regclass::text || ' ' || conname FROM pg_constraint
	WHERE connamespace = 'dalgo'::regnamespace AND contype = 'f'
	AND confrelid NOT IN ('dalgo.users'::regclass, 'dalgo.organizations'::regclass)
	AND array_length(conkey, 1) <> 2$$,
	'every child-to-parent reference below the organization is composite');

-- Every foreign key column has an index that starts with it.
SELECT is_empty($$SELECT c.conrelid::regclass::text || '.' || a.attname
	FROM pg_constraint c CROSS JOIN LATERAL unnest(c.conkey) k(attnum)
	JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
	WHERE c.connamespace = 'dalgo'::regnamespace AND c.contype = 'f'
	AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.conrelid AND i.indkey[0] = k.attnum
					AND i.indpred IS NULL)$$,
	'every foreign key column leads a full index');

-- The indexes the document names.
SELECT ok(EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = 'dalgo' AND tablename = 'users'
	AND indexdef LIKE 'CREATE UNIQUE INDEX % ON dalgo.users USING btree (lower(email)) WHERE (deleted_at IS NULL)'),
	'users.email: unique case-insensitively among live users');
SELECT ok(EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = 'dalgo' AND tablename = 'organizations'
	AND indexdef LIKE 'CREATE UNIQUE INDEX % USING btree (slug) WHERE (deleted_at IS NULL)'),
	'organizations.slug: unique among live organizations');
SELECT ok(EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = 'dalgo' AND tablename = 'organization_members'
	AND indexdef LIKE 'CREATE UNIQUE INDEX % USING btree (organization_id, user_id) WHERE (deleted_at IS NULL)'),
	'membership unique among live rows');
SELECT ok(EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = 'dalgo' AND tablename = 'invitations'
	AND indexdef LIKE 'CREATE UNIQUE INDEX % USING btree (token)'), 'invitations.token is unique and indexed');
SELECT ok(EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = 'dalgo' AND tablename = 'refresh_tokens'
	AND indexdef LIKE 'CREATE UNIQUE INDEX % USING btree (token_hash)'), 'refresh_tokens.token_hash is unique and indexed');
SELECT ok(EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = 'dalgo' AND tablename = 'password_reset_tokens'
	AND indexdef LIKE 'CREATE UNIQUE INDEX % USING btree (token_hash)'), 'password_reset_tokens.token_hash is unique and indexed');
SELECT ok(EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = 'dalgo' AND tablename = 'audit_logs'
	AND indexdef LIKE '% USING btree (action)'), 'audit_logs.action is indexed');
SELECT ok(EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = 'dalgo' AND tablename = 'warehouse_connections'
	AND indexdef LIKE 'CREATE UNIQUE INDEX % USING btree (organization_id) WHERE (deleted_at IS NULL)'),
	'one live warehouse connection per organization');
SELECT is_empty($$SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
	AND a.attname = 'organization_id' WHERE c.relnamespace = 'dalgo'::regnamespace AND c.relkind = 'r'
	AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indkey[0] = a.attnum)$$,
	'every organization_id is indexed');

-- updated_at trigger everywhere; every object documented.
SELECT is_empty($$SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'dalgo'::regnamespace
	AND c.relkind = 'r' AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid
	AND t.tgfoid = 'dalgo.set_updated_at()'::regprocedure)$$, 'set_updated_at is attached to every table');
SELECT is_empty($$SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'dalgo'::regnamespace
	AND c.relkind IN ('r', 'i', 'v') AND obj_description(c.oid, 'pg_class') IS NULL
	AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = c.oid)$$,
	'every table, view and free-standing index has a comment');
SELECT is_empty($$SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace IN ('dalgo'::regnamespace, 'dalgo_internal'::regnamespace)
	AND obj_description(p.oid, 'pg_proc') IS NULL$$, 'every function has a comment');
SELECT is_empty($$SELECT t.typname FROM pg_type t WHERE t.typnamespace = 'dalgo'::regnamespace
	AND t.typtype = 'e' AND obj_description(t.oid, 'pg_type') IS NULL$$, 'every type has a comment');

SELECT * FROM finish();
ROLLBACK;

-- Golden dump: constraints and indexes exactly as installed.
\pset tuples_only false
\pset format aligned
SELECT conrelid::regclass AS "table", conname, pg_get_constraintdef(oid) AS definition
FROM pg_constraint WHERE connamespace = 'dalgo'::regnamespace AND contype IN ('f', 'u', 'c')
ORDER BY conrelid::regclass::text, conname;
SELECT indexrelid::regclass AS index, pg_get_indexdef(indexrelid) AS definition
FROM pg_index WHERE indrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'dalgo'::regnamespace)
ORDER BY indexrelid::regclass::text;
