-- api_grants: the functions each app role may execute are exactly the API
-- that docs/reference.md documents for it; internal functions are executable by
-- no app role and not by PUBLIC.  A new grant needs a change here.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
SELECT plan(13);

CREATE TEMP VIEW executable AS
	SELECT r.rolname, p.oid::regprocedure::text AS fn
	FROM pg_proc p CROSS JOIN pg_roles r
	WHERE p.pronamespace = 'dalgo'::regnamespace
	  AND r.rolname IN ('dalgo_authenticated', 'dalgo_anon', 'dalgo_service')
	  AND has_function_privilege(r.oid, p.oid, 'EXECUTE');

SELECT set_eq($$SELECT fn FROM executable WHERE rolname = 'dalgo_anon'$$,
	ARRAY['dalgo.authenticate(text,boolean)', 'dalgo.sign_out()',
		-- accounts
		'dalgo.sign_up(text,text,text)', 'dalgo.sign_in(text,text)', 'dalgo.refresh_session(text)',
		'dalgo.end_session(text)', 'dalgo.request_password_reset(text)', 'dalgo.reset_password(text,text)',
		'dalgo.authenticate_api_key(text)', 'dalgo.current_api_key_id()', 'dalgo.restoring()'],
	'dalgo_anon may only sign up, in and out, refresh, reset a password and use an API key');

SELECT set_eq($$SELECT fn FROM executable WHERE rolname = 'dalgo_authenticated'$$,
	ARRAY[
		-- identity and membership
		'dalgo.authenticate(text,boolean)', 'dalgo.sign_out()', 'dalgo.current_user_id()',
		'dalgo.is_org_member(uuid,dalgo.member_role)', 'dalgo.is_org_admin(uuid)', 'dalgo.org_role(uuid)',
		'dalgo.current_org_ids(dalgo.member_role)', 'dalgo.create_organization(text,text,dalgo.org_type)',
		-- helpers that constraints and defaults call as the caller
		'dalgo.validate_timezone(text)', 'dalgo.uuid_v7()',
		-- recipes and warehouse
		'dalgo.compile_recipe(uuid,jsonb)', 'dalgo.preview_recipe(uuid,jsonb,integer)',
		'dalgo.read_warehouse_table(uuid,text,integer,text,jsonb)', 'dalgo.ensure_warehouse(uuid)',
		'dalgo.run_transformation(uuid,boolean)', 'dalgo.transformation_upstream(uuid)',
		'dalgo.recipe_dependencies(jsonb)', 'dalgo.caller_may(uuid,dalgo.member_role)',
		-- scheduling
		'dalgo.next_run(dalgo.schedule_frequency,time without time zone,integer,text,timestamp with time zone)',
		'dalgo.run_schedule_now(uuid)', 'dalgo.is_connector_source(dalgo.source_type)', 'dalgo.run_progress()',
		-- uploads (docs/loading.md)
		'dalgo.begin_upload(uuid,text[])', 'dalgo.finish_upload(uuid)',
		-- quotas
		'dalgo.quota_usage(uuid)',
		-- secrets: a source's config without them, and the redaction itself
		'dalgo.source_config(uuid)', 'dalgo.redact(jsonb)', 'dalgo.redact(text)',
		-- accounts
		'dalgo.sign_up(text,text,text)', 'dalgo.sign_in(text,text)', 'dalgo.refresh_session(text)',
		'dalgo.end_session(text)', 'dalgo.request_password_reset(text)', 'dalgo.reset_password(text,text)',
		'dalgo.authenticate_api_key(text)', 'dalgo.current_api_key_id()', 'dalgo.end_all_sessions()',
		'dalgo.change_password(text,text)', 'dalgo.invite_member(uuid,text,dalgo.member_role)',
		'dalgo.accept_invitation(text)', 'dalgo.revoke_invitation(uuid)',
		'dalgo.create_api_key(uuid,text,dalgo.member_role,timestamp with time zone)', 'dalgo.revoke_api_key(uuid)',
		-- soft delete, restore, leaving for good
		'dalgo.soft_delete(regclass,uuid)', 'dalgo.deleted_items(uuid)', 'dalgo.restore(regclass,uuid)',
		'dalgo.delete_my_account()',
		-- restore mode, asked by triggers
		'dalgo.restoring()',
		-- toolkit: redaction by chosen keys, encrypted secrets
		'dalgo.redact_jsonb(jsonb,text[],boolean)', 'dalgo.read_secret(regclass,name,text)',
		-- journeys: versions, lineage
		'dalgo.revert_transformation(uuid,integer)', 'dalgo.diff_versions(uuid,integer,integer)',
		'dalgo.lineage(uuid,uuid,text)', 'dalgo.impact(uuid)', 'dalgo.lineage_dot(uuid)',
		-- journeys: export
		'dalgo.export_warehouse_table(uuid,text,text)', 'dalgo.export_organization(uuid)',
		-- journeys: runs on demand
		'dalgo.sync_now(uuid,boolean)', 'dalgo.refresh_output_now(uuid,boolean)',
		-- citus: the users policy on a cluster
		'dalgo.shares_organization(uuid)'],
	'dalgo_authenticated executes exactly the documented end-user API');

SELECT set_eq($$SELECT fn FROM executable WHERE rolname = 'dalgo_service'$$,
	ARRAY[
		'dalgo.authenticate(text,boolean)', 'dalgo.sign_out()', 'dalgo.current_user_id()',
		'dalgo.is_org_member(uuid,dalgo.member_role)', 'dalgo.is_org_admin(uuid)', 'dalgo.org_role(uuid)',
		'dalgo.current_org_ids(dalgo.member_role)', 'dalgo.validate_timezone(text)', 'dalgo.uuid_v7()',
		'dalgo.compile_recipe(uuid,jsonb)', 'dalgo.preview_recipe(uuid,jsonb,integer)',
		'dalgo.read_warehouse_table(uuid,text,integer,text,jsonb)', 'dalgo.ensure_warehouse(uuid)',
		'dalgo.run_transformation(uuid,boolean)', 'dalgo.transformation_upstream(uuid)',
		'dalgo.recipe_dependencies(jsonb)', 'dalgo.caller_may(uuid,dalgo.member_role)',
		'dalgo.next_run(dalgo.schedule_frequency,time without time zone,integer,text,timestamp with time zone)',
		'dalgo.run_schedule_now(uuid)', 'dalgo.is_connector_source(dalgo.source_type)', 'dalgo.run_progress()',
		-- service work
		'dalgo.purge_audit_logs(interval)', 'dalgo.run_due_schedules(timestamp with time zone)',
		'dalgo.scheduler_status()', 'dalgo.claim_sync_run()', 'dalgo.complete_sync_run(uuid,integer,text,jsonb)',
		'dalgo.stage_sync_run(uuid,text[],text[])', 'dalgo.quota_usage(uuid)', 'dalgo.redact(jsonb)', 'dalgo.redact(text)',
		-- accounts: the mailer
		'dalgo.claim_messages(integer)', 'dalgo.complete_message(uuid,text)', 'dalgo.current_api_key_id()', 'dalgo.restoring()',
		-- soft delete, restore, the purge after the window, leaving for good
		'dalgo.soft_delete(regclass,uuid)', 'dalgo.deleted_items(uuid)', 'dalgo.restore(regclass,uuid)',
		'dalgo.purge_deleted(integer)', 'dalgo.delete_my_account()', 'dalgo.erase_user(uuid)',
		-- toolkit: redaction, retention
		'dalgo.redact_jsonb(jsonb,text[],boolean)', 'dalgo.apply_retention(integer,integer)', 'dalgo.run_retention(integer)',
		'dalgo.read_secret_service(regclass,name,text)',
		-- journeys: versions, lineage
		'dalgo.revert_transformation(uuid,integer)', 'dalgo.diff_versions(uuid,integer,integer)',
		'dalgo.lineage(uuid,uuid,text)', 'dalgo.impact(uuid)', 'dalgo.lineage_dot(uuid)',
		-- journeys: export
		'dalgo.export_warehouse_table(uuid,text,text)', 'dalgo.export_organization(uuid)',
		-- journeys: runs on demand
		'dalgo.sync_now(uuid,boolean)', 'dalgo.refresh_output_now(uuid,boolean)',
		-- citus: the users policy on a cluster
		'dalgo.shares_organization(uuid)'],
	'dalgo_service executes exactly the documented service API');

SELECT is_empty($$SELECT p.oid::regprocedure::text FROM pg_proc p,
		aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
	WHERE p.pronamespace IN ('dalgo'::regnamespace, 'dalgo_internal'::regnamespace)
	  AND a.grantee = 0 AND a.privilege_type = 'EXECUTE'
	  AND p.oid <> 'dalgo.restoring()'::regprocedure$$,
	'PUBLIC executes no dalgo function (but restoring(), which every writer''s triggers call)');

SELECT is_empty($$SELECT p.oid::regprocedure::text FROM pg_proc p
	WHERE p.pronamespace IN ('dalgo'::regnamespace, 'dalgo_internal'::regnamespace) AND p.prosecdef
	  AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)$$,
	'every SECURITY DEFINER function pins search_path');

-- public_api_surface: schema dalgo holds exactly the documented API (what
-- app roles call, and the administrator's tools); everything else lives in
-- dalgo_internal, which no app role may even look up names in.
SELECT set_eq($$SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'dalgo'::regnamespace$$,
	$$SELECT fn FROM executable UNION
	  SELECT unnest(ARRAY['dalgo.enable_audit(regclass,text[],text)', 'dalgo.disable_audit(regclass)',
						  'dalgo.set_updated_at()',
						  -- the toolkit (docs/toolkit.md): table owners and superusers
						  'dalgo.enable_org_rows(regclass,name,dalgo.member_role,dalgo.member_role,name)', 'dalgo.disable_org_rows(regclass)',
						  'dalgo.enable_own_rows(regclass,name,boolean)', 'dalgo.disable_own_rows(regclass)',
						  'dalgo.enable_public_read(regclass,text)', 'dalgo.disable_public_read(regclass)',
						  'dalgo.enable_shared_rows(regclass,regclass,name,name,name,name,name)', 'dalgo.disable_shared_rows(regclass,regclass)',
						  'dalgo.enable_child_rows(regclass,regclass,name)', 'dalgo.disable_child_rows(regclass)',
						  'dalgo.enable_service_only(regclass)', 'dalgo.enable_updated_at(regclass,name)', 'dalgo.disable_updated_at(regclass)',
						  'dalgo.enable_redaction(regclass,name,text[],boolean)', 'dalgo.disable_redaction(regclass,name)',
						  'dalgo.set_retention(regclass,name,integer,text,text[],name,text,name)', 'dalgo.disable_retention(regclass)',
						  'dalgo.enable_encryption(regclass,name,name,dalgo.member_role)', 'dalgo.disable_encryption(regclass,name)',
						  'dalgo.rotate_secret_key(text)', 'dalgo.security_report(name)',
						  -- Citus (docs/scaling.md): superusers
						  'dalgo.distribute()',
						  -- sources over HTTP: the address check, for superusers
						  'dalgo.http_address_allowed(inet)'])$$,
	'public_api_surface: \df dalgo.* lists the app roles'' API and the documented admin tools, nothing else');
SELECT is_empty($$SELECT r.rolname FROM pg_roles r
	WHERE r.rolname IN ('dalgo_authenticated', 'dalgo_anon', 'dalgo_service', 'public')
	  AND has_schema_privilege(r.oid, 'dalgo_internal', 'USAGE')
	UNION ALL SELECT 'PUBLIC' FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
	WHERE n.nspname = 'dalgo_internal' AND a.grantee = 0$$,
	'public_api_surface: no app role and not PUBLIC has USAGE on dalgo_internal');
SELECT is_empty($$SELECT p.oid::regprocedure::text FROM pg_proc p, pg_roles r
	WHERE p.pronamespace = 'dalgo_internal'::regnamespace
	  AND r.rolname IN ('dalgo_authenticated', 'dalgo_anon', 'dalgo_service')
	  AND has_function_privilege(r.oid, p.oid, 'EXECUTE')$$,
	'public_api_surface: no app role may execute an internal function');
SELECT is_empty($$SELECT p.oid::regprocedure::text FROM pg_proc p
	WHERE p.pronamespace = 'dalgo'::regnamespace AND (p.prorettype = 'trigger'::regtype
	   OR obj_description(p.oid, 'pg_proc') LIKE 'Internal:%')
	  AND p.oid <> 'dalgo.set_updated_at()'::regprocedure$$,
	'public_api_surface: trigger functions and Internal: helpers are not in schema dalgo');

-- naming: organization parameters are named organization_id everywhere,
-- and every trigger function is named for what it does, verb first.
SELECT is_empty($$SELECT p.oid::regprocedure::text FROM pg_proc p
	WHERE p.pronamespace IN ('dalgo'::regnamespace, 'dalgo_internal'::regnamespace)
	  AND p.proargnames && ARRAY['org', 'org_id']$$,
	'naming: no function takes an organization as org or org_id');
SELECT is_empty($$SELECT p.proname FROM pg_proc p
	WHERE p.pronamespace IN ('dalgo'::regnamespace, 'dalgo_internal'::regnamespace)
	  AND p.prorettype = 'trigger'::regtype
	  AND p.proname !~ '^(audit|cascade|check|create|drop|encrypt|fill|guard|invalidate|record|redact|refuse|set|wake)_'$$,
	'naming: trigger functions are named verb first');

-- check_recipe_sql runs any SQL in the warehouse: internal, yet saving a
-- transformation (which calls it from its trigger) still works for members.
\i test/fixtures/two_orgs.sql
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok($$SELECT dalgo_internal.check_recipe_sql('22222222-0000-4000-8000-0000000000a0', 'SELECT 1')$$,
	'42501', NULL, 'a member cannot call check_recipe_sql');
SELECT lives_ok($$INSERT INTO dalgo.transformations (organization_id, name, recipe)
	VALUES ('22222222-0000-4000-8000-0000000000a0', 'checked', '{"version": 1, "source": {"table": "visits"}, "steps": []}')$$,
	'a member still saves a transformation, which type-checks its recipe');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
