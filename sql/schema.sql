-- schema.sql: the Dalgo Lite schema (types, tables, keys, indexes) plus the
-- generic row helpers it relies on: set_updated_at() and the tenant-column
-- filler for child tables.

-- The schema is created here rather than by the control file so that it is a
-- member of the extension: DROP EXTENSION removes it with everything else.
CREATE SCHEMA dalgo;
COMMENT ON SCHEMA dalgo IS 'Dalgo Lite: every table, type and function of the dalgo extension';

-- Internal functions (trigger functions, the scheduler's steps, helpers of
-- the public functions) live apart, so that \df dalgo.* lists the API.  No
-- application role has USAGE on this schema.
CREATE SCHEMA dalgo_internal;
COMMENT ON SCHEMA dalgo_internal IS 'dalgo: internal functions (triggers, scheduler steps, helpers); no application role may use them';
REVOKE ALL ON SCHEMA dalgo_internal FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Generic helpers
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.set_updated_at() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_set_updated_at'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo.set_updated_at() IS
	'BEFORE UPDATE row trigger: stamps the column named by the trigger argument (default updated_at, timestamptz or timestamp) with now()';

CREATE FUNCTION dalgo.validate_timezone(tz text) RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_validate_timezone'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.validate_timezone(text) IS
	'True for an IANA time zone name; raises 22023 naming the value otherwise (POSIX TZ strings are refused)';

CREATE FUNCTION dalgo_internal.fill_organization_id() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	parent_id uuid;
	parent_org uuid;
BEGIN
	-- TG_ARGV[0]: the parent table; TG_ARGV[1]: this row's column naming the parent.
	IF NEW.organization_id IS NULL THEN
		parent_id := (pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.->>) TG_ARGV[1])::uuid;
		EXECUTE pg_catalog.format('SELECT organization_id FROM %s WHERE id OPERATOR(pg_catalog.=) $1',
								  TG_ARGV[0]::regclass)
			INTO parent_org USING parent_id;
		NEW.organization_id := parent_org;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo_internal.fill_organization_id() IS
	'BEFORE INSERT row trigger for tenant-owned child tables: fills organization_id from the parent row (trigger args: parent table, parent-id column) when the insert omits it';

CREATE FUNCTION dalgo_internal.refuse_tenant_move() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_refuse_tenant_move'
	LANGUAGE C;
REVOKE ALL ON FUNCTION dalgo_internal.refuse_tenant_move() FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.refuse_tenant_move() IS
	'BEFORE UPDATE row trigger for tenant tables: a row''s organization (the column named by the trigger argument, default organization_id) is fixed when it is created; changing it is refused (42501), whoever runs the update';

-- ---------------------------------------------------------------------------
-- Enum types
-- ---------------------------------------------------------------------------

CREATE TYPE dalgo.org_type AS ENUM ('team', 'personal');
COMMENT ON TYPE dalgo.org_type IS 'team: a full organization (an NGO); personal: a personal workspace';

-- Declared in ascending order of privilege so that role >= 'member' reads naturally.
CREATE TYPE dalgo.member_role AS ENUM ('viewer', 'member', 'admin', 'owner');
COMMENT ON TYPE dalgo.member_role IS
	'Organization role, ordered viewer < member < admin < owner: viewer reads; member edits transformations and outputs; admin manages sources, schedules, the warehouse, invitations and members; owner also deletes the organization and manages owners';

CREATE TYPE dalgo.source_type AS ENUM ('google_sheets', 'csv', 'postgres', 'api');
COMMENT ON TYPE dalgo.source_type IS 'Kind of data source: google_sheets, csv, postgres or api';

CREATE TYPE dalgo.run_status AS ENUM ('pending', 'running', 'success', 'failed');
COMMENT ON TYPE dalgo.run_status IS 'Lifecycle of a sync or transformation run: pending -> running -> success | failed';

CREATE TYPE dalgo.schedule_frequency AS ENUM ('hourly', 'daily', 'weekly', 'monthly');
COMMENT ON TYPE dalgo.schedule_frequency IS 'How often a schedule fires';

-- ---------------------------------------------------------------------------
-- Core entities
-- ---------------------------------------------------------------------------

CREATE TABLE dalgo.users (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	email			text NOT NULL CHECK (email <> '' AND email = btrim(email)),
	password_hash	text,
	full_name		text,
	is_active		boolean NOT NULL DEFAULT true,
	is_superadmin	boolean NOT NULL DEFAULT false,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	deleted_at		timestamptz
);
COMMENT ON TABLE dalgo.users IS 'User accounts with email/password authentication';
COMMENT ON COLUMN dalgo.users.email IS 'Login email; unique case-insensitively among live (not soft-deleted) users';
COMMENT ON COLUMN dalgo.users.password_hash IS 'Password hash (never readable by end-user roles); NULL for users who have not set a password';
COMMENT ON COLUMN dalgo.users.is_superadmin IS 'Platform administrator: counts as owner of every organization';
COMMENT ON COLUMN dalgo.users.deleted_at IS 'Soft-delete time; NULL for a live row';
CREATE UNIQUE INDEX users_email_live_key ON dalgo.users (lower(email)) WHERE deleted_at IS NULL;
COMMENT ON INDEX dalgo.users_email_live_key IS 'Login lookup: WHERE lower(email) = lower($1) AND deleted_at IS NULL; email unique case-insensitively among live users';

CREATE TABLE dalgo.organizations (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	name			text NOT NULL CHECK (name <> ''),
	slug			text NOT NULL CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$' AND length(slug) <= 63),
	description		text,
	org_type		dalgo.org_type NOT NULL DEFAULT 'team',
	settings		jsonb NOT NULL DEFAULT '{}',
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	deleted_at		timestamptz
);
COMMENT ON TABLE dalgo.organizations IS 'Multi-tenant root entity (each NGO is one organization)';
COMMENT ON COLUMN dalgo.organizations.slug IS 'URL name: lower-case letters, digits and single hyphens, at most 63 bytes; unique among live organizations';
CREATE UNIQUE INDEX organizations_slug_live_key ON dalgo.organizations (slug) WHERE deleted_at IS NULL;
COMMENT ON INDEX dalgo.organizations_slug_live_key IS 'Slug unique among live organizations';

CREATE TABLE dalgo.organization_members (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	user_id			uuid NOT NULL REFERENCES dalgo.users (id) ON DELETE CASCADE,
	organization_id	uuid NOT NULL REFERENCES dalgo.organizations (id) ON DELETE CASCADE,
	role			dalgo.member_role NOT NULL DEFAULT 'viewer',
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	deleted_at		timestamptz
);
COMMENT ON TABLE dalgo.organization_members IS 'User membership in organizations with a role';
CREATE UNIQUE INDEX organization_members_live_key ON dalgo.organization_members (organization_id, user_id) WHERE deleted_at IS NULL;
COMMENT ON INDEX dalgo.organization_members_live_key IS 'One live membership per (organization, user)';
CREATE INDEX organization_members_organization_id_idx ON dalgo.organization_members (organization_id);
COMMENT ON INDEX dalgo.organization_members_organization_id_idx IS 'Foreign key and tenant index';
CREATE INDEX organization_members_user_id_idx ON dalgo.organization_members (user_id);
COMMENT ON INDEX dalgo.organization_members_user_id_idx IS 'Foreign key index: a user''s memberships';

-- ---------------------------------------------------------------------------
-- Authentication
-- ---------------------------------------------------------------------------

CREATE TABLE dalgo.invitations (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	email			text NOT NULL CHECK (email <> ''),
	organization_id	uuid NOT NULL REFERENCES dalgo.organizations (id) ON DELETE CASCADE,
	role			dalgo.member_role NOT NULL DEFAULT 'viewer',
	token			text NOT NULL CHECK (token <> ''),
	expires_at		timestamptz NOT NULL,
	accepted_at		timestamptz,
	invited_by_id	uuid REFERENCES dalgo.users (id) ON DELETE SET NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE dalgo.invitations IS 'Pending invitations to join an organization';
COMMENT ON COLUMN dalgo.invitations.token IS 'Invitation secret (never written to the audit trail)';
COMMENT ON COLUMN dalgo.invitations.invited_by_id IS 'Inviting user; set to NULL if that user is hard-deleted';
CREATE UNIQUE INDEX invitations_token_key ON dalgo.invitations (token);
COMMENT ON INDEX dalgo.invitations_token_key IS 'Invitation validation by token';
CREATE INDEX invitations_organization_id_idx ON dalgo.invitations (organization_id);
COMMENT ON INDEX dalgo.invitations_organization_id_idx IS 'Foreign key and tenant index';
CREATE INDEX invitations_invited_by_id_idx ON dalgo.invitations (invited_by_id);
COMMENT ON INDEX dalgo.invitations_invited_by_id_idx IS 'Foreign key index';

CREATE TABLE dalgo.refresh_tokens (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	user_id			uuid NOT NULL REFERENCES dalgo.users (id) ON DELETE CASCADE,
	token_hash		text NOT NULL CHECK (token_hash <> ''),
	expires_at		timestamptz NOT NULL,
	revoked_at		timestamptz,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE dalgo.refresh_tokens IS 'JWT refresh tokens for session management (only their hashes are stored)';
CREATE UNIQUE INDEX refresh_tokens_token_hash_key ON dalgo.refresh_tokens (token_hash);
COMMENT ON INDEX dalgo.refresh_tokens_token_hash_key IS 'Token validation by hash';
CREATE INDEX refresh_tokens_user_id_idx ON dalgo.refresh_tokens (user_id);
COMMENT ON INDEX dalgo.refresh_tokens_user_id_idx IS 'Foreign key index';

CREATE TABLE dalgo.password_reset_tokens (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	user_id			uuid NOT NULL REFERENCES dalgo.users (id) ON DELETE CASCADE,
	token_hash		text NOT NULL CHECK (token_hash <> ''),
	expires_at		timestamptz NOT NULL,
	used_at			timestamptz,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE dalgo.password_reset_tokens IS 'Tokens for the password reset flow (only their hashes are stored)';
CREATE UNIQUE INDEX password_reset_tokens_token_hash_key ON dalgo.password_reset_tokens (token_hash);
COMMENT ON INDEX dalgo.password_reset_tokens_token_hash_key IS 'Token validation by hash';
CREATE INDEX password_reset_tokens_user_id_idx ON dalgo.password_reset_tokens (user_id);
COMMENT ON INDEX dalgo.password_reset_tokens_user_id_idx IS 'Foreign key index';

-- ---------------------------------------------------------------------------
-- Source management
-- ---------------------------------------------------------------------------

CREATE TABLE dalgo.sources (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	organization_id	uuid NOT NULL REFERENCES dalgo.organizations (id) ON DELETE CASCADE,
	name			text NOT NULL CHECK (name <> ''),
	description		text,
	source_type		dalgo.source_type NOT NULL,
	config			jsonb NOT NULL DEFAULT '{}',
	warehouse_table_name text,
	last_synced_at	timestamptz,
	created_by_id	uuid REFERENCES dalgo.users (id) ON DELETE SET NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	deleted_at		timestamptz,
	CONSTRAINT sources_organization_id_id_key UNIQUE (organization_id, id)
);
COMMENT ON TABLE dalgo.sources IS 'Data source configurations (Google Sheets, CSV, PostgreSQL, API)';
COMMENT ON COLUMN dalgo.sources.config IS 'Source settings; keys naming secrets, tokens, passwords or keys are redacted in the audit trail';
COMMENT ON COLUMN dalgo.sources.warehouse_table_name IS 'Table in the organization''s warehouse that a sync fills; unique among the organization''s live sources';
COMMENT ON CONSTRAINT sources_organization_id_id_key ON dalgo.sources IS 'Target of composite (organization_id, source_id) references from child tables';
CREATE INDEX sources_organization_id_idx ON dalgo.sources (organization_id);
COMMENT ON INDEX dalgo.sources_organization_id_idx IS 'Foreign key and tenant index';
CREATE INDEX sources_created_by_id_idx ON dalgo.sources (created_by_id);
COMMENT ON INDEX dalgo.sources_created_by_id_idx IS 'Foreign key index';
CREATE UNIQUE INDEX sources_warehouse_table_live_key ON dalgo.sources (organization_id, warehouse_table_name)
	WHERE deleted_at IS NULL AND warehouse_table_name IS NOT NULL;
COMMENT ON INDEX dalgo.sources_warehouse_table_live_key IS 'Two live sources of one organization never fill the same warehouse table';

CREATE TABLE dalgo.source_schemas (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	organization_id	uuid NOT NULL REFERENCES dalgo.organizations (id) ON DELETE CASCADE,
	source_id		uuid NOT NULL,
	column_name		text NOT NULL CHECK (column_name <> ''),
	column_type		text NOT NULL,
	column_order	integer NOT NULL CHECK (column_order >= 0),
	is_nullable		boolean NOT NULL DEFAULT true,
	metadata		jsonb NOT NULL DEFAULT '{}',
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	deleted_at		timestamptz,
	CONSTRAINT source_schemas_source_fkey FOREIGN KEY (organization_id, source_id)
		REFERENCES dalgo.sources (organization_id, id) ON DELETE CASCADE
);
COMMENT ON TABLE dalgo.source_schemas IS 'Inferred column schema of each source';
COMMENT ON COLUMN dalgo.source_schemas.organization_id IS 'Tenant column (a dalgo addition), filled from the source when an insert omits it';
CREATE INDEX source_schemas_organization_id_idx ON dalgo.source_schemas (organization_id);
COMMENT ON INDEX dalgo.source_schemas_organization_id_idx IS 'Tenant index';
CREATE INDEX source_schemas_source_id_idx ON dalgo.source_schemas (source_id);
COMMENT ON INDEX dalgo.source_schemas_source_id_idx IS 'Foreign key index';
CREATE UNIQUE INDEX source_schemas_column_live_key ON dalgo.source_schemas (source_id, column_name) WHERE deleted_at IS NULL;
COMMENT ON INDEX dalgo.source_schemas_column_live_key IS 'A source has each column once';

CREATE TABLE dalgo.sync_runs (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	organization_id	uuid NOT NULL REFERENCES dalgo.organizations (id) ON DELETE CASCADE,
	source_id		uuid NOT NULL,
	status			dalgo.run_status NOT NULL DEFAULT 'pending',
	started_at		timestamptz,
	completed_at	timestamptz,
	rows_synced		integer CHECK (rows_synced >= 0),
	error_message	text,
	details			jsonb NOT NULL DEFAULT '{}',
	triggered_by_id	uuid REFERENCES dalgo.users (id) ON DELETE SET NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	deleted_at		timestamptz,
	CONSTRAINT sync_runs_source_fkey FOREIGN KEY (organization_id, source_id)
		REFERENCES dalgo.sources (organization_id, id) ON DELETE CASCADE,
	CONSTRAINT sync_runs_completed_after_started CHECK (completed_at >= started_at)
);
COMMENT ON TABLE dalgo.sync_runs IS 'History of data sync operations';
COMMENT ON COLUMN dalgo.sync_runs.organization_id IS 'Tenant column (a dalgo addition), filled from the source when an insert omits it';
CREATE INDEX sync_runs_organization_id_idx ON dalgo.sync_runs (organization_id);
COMMENT ON INDEX dalgo.sync_runs_organization_id_idx IS 'Tenant index';
CREATE INDEX sync_runs_source_id_idx ON dalgo.sync_runs (source_id, created_at);
COMMENT ON INDEX dalgo.sync_runs_source_id_idx IS 'Foreign key index; also a source''s run history in time order';
CREATE INDEX sync_runs_triggered_by_id_idx ON dalgo.sync_runs (triggered_by_id);
COMMENT ON INDEX dalgo.sync_runs_triggered_by_id_idx IS 'Foreign key index';

-- ---------------------------------------------------------------------------
-- Warehouse
-- ---------------------------------------------------------------------------

CREATE TABLE dalgo.warehouse_connections (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	organization_id	uuid NOT NULL REFERENCES dalgo.organizations (id) ON DELETE CASCADE,
	database_name	text,
	access_token_encrypted text,
	is_connected	boolean NOT NULL DEFAULT false,
	last_connected_at timestamptz,
	config			jsonb NOT NULL DEFAULT '{}',
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	deleted_at		timestamptz,
	CONSTRAINT warehouse_connections_organization_id_id_key UNIQUE (organization_id, id)
);
COMMENT ON TABLE dalgo.warehouse_connections IS 'Warehouse connection of each organization (one live row per organization)';
COMMENT ON COLUMN dalgo.warehouse_connections.access_token_encrypted IS 'Encrypted warehouse credential (never readable by end-user roles, never audited)';
COMMENT ON CONSTRAINT warehouse_connections_organization_id_id_key ON dalgo.warehouse_connections IS 'Target of composite (organization_id, warehouse_connection_id) references';
CREATE UNIQUE INDEX warehouse_connections_organization_live_key ON dalgo.warehouse_connections (organization_id) WHERE deleted_at IS NULL;
COMMENT ON INDEX dalgo.warehouse_connections_organization_live_key IS 'One live warehouse connection per organization; also the tenant index';

CREATE TABLE dalgo.warehouse_tables (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	organization_id	uuid NOT NULL REFERENCES dalgo.organizations (id) ON DELETE CASCADE,
	warehouse_connection_id uuid NOT NULL,
	table_name		text NOT NULL CHECK (table_name <> ''),
	source_id		uuid,
	transformation_id uuid,
	row_count		bigint CHECK (row_count >= 0),
	size_bytes		bigint CHECK (size_bytes >= 0),
	last_updated_at	timestamptz,
	schema_info		jsonb,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	deleted_at		timestamptz,
	output_id		uuid,
	CONSTRAINT warehouse_tables_connection_fkey FOREIGN KEY (organization_id, warehouse_connection_id)
		REFERENCES dalgo.warehouse_connections (organization_id, id) ON DELETE CASCADE,
	CONSTRAINT warehouse_tables_source_fkey FOREIGN KEY (organization_id, source_id)
		REFERENCES dalgo.sources (organization_id, id) ON DELETE CASCADE,
	CONSTRAINT warehouse_tables_one_producer CHECK (num_nonnulls(source_id, transformation_id, output_id) <= 1)
);
COMMENT ON TABLE dalgo.warehouse_tables IS 'Registry of the tables in each organization''s warehouse';
COMMENT ON COLUMN dalgo.warehouse_tables.organization_id IS 'Tenant column (a dalgo addition), filled from the warehouse connection when an insert omits it';
COMMENT ON COLUMN dalgo.warehouse_tables.schema_info IS 'Columns and types of the table, refreshed after each run';
COMMENT ON COLUMN dalgo.warehouse_tables.output_id IS 'The output whose refresh produced the table (a dalgo addition); source_id, transformation_id and output_id name the one producer that may replace it';
CREATE INDEX warehouse_tables_organization_id_idx ON dalgo.warehouse_tables (organization_id);
COMMENT ON INDEX dalgo.warehouse_tables_organization_id_idx IS 'Tenant index';
CREATE INDEX warehouse_tables_connection_id_idx ON dalgo.warehouse_tables (warehouse_connection_id);
COMMENT ON INDEX dalgo.warehouse_tables_connection_id_idx IS 'Foreign key index';
CREATE INDEX warehouse_tables_source_id_idx ON dalgo.warehouse_tables (source_id);
COMMENT ON INDEX dalgo.warehouse_tables_source_id_idx IS 'Foreign key index';
CREATE INDEX warehouse_tables_transformation_id_idx ON dalgo.warehouse_tables (transformation_id);
COMMENT ON INDEX dalgo.warehouse_tables_transformation_id_idx IS 'Foreign key index';
CREATE UNIQUE INDEX warehouse_tables_name_live_key ON dalgo.warehouse_tables (warehouse_connection_id, table_name) WHERE deleted_at IS NULL;
COMMENT ON INDEX dalgo.warehouse_tables_name_live_key IS 'A warehouse registers each table name once';

-- ---------------------------------------------------------------------------
-- Transformations
-- ---------------------------------------------------------------------------

CREATE TABLE dalgo.transformations (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	organization_id	uuid NOT NULL REFERENCES dalgo.organizations (id) ON DELETE CASCADE,
	name			text NOT NULL CHECK (name <> ''),
	description		text,
	recipe			jsonb NOT NULL,
	output_table_name text,
	current_version	integer NOT NULL DEFAULT 0 CHECK (current_version >= 0),
	last_run_at		timestamptz,
	created_by_id	uuid REFERENCES dalgo.users (id) ON DELETE SET NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	deleted_at		timestamptz,
	CONSTRAINT transformations_organization_id_id_key UNIQUE (organization_id, id)
);
COMMENT ON TABLE dalgo.transformations IS 'Transformation definitions: a JSON recipe compiled to SQL';
COMMENT ON COLUMN dalgo.transformations.recipe IS 'The editor''s JSON recipe (see the recipe contract)';
COMMENT ON COLUMN dalgo.transformations.output_table_name IS 'Warehouse table the transformation materializes; unique among the organization''s live transformations';
COMMENT ON CONSTRAINT transformations_organization_id_id_key ON dalgo.transformations IS 'Target of composite (organization_id, transformation_id) references';
CREATE INDEX transformations_organization_id_idx ON dalgo.transformations (organization_id);
COMMENT ON INDEX dalgo.transformations_organization_id_idx IS 'Foreign key and tenant index';
CREATE INDEX transformations_created_by_id_idx ON dalgo.transformations (created_by_id);
COMMENT ON INDEX dalgo.transformations_created_by_id_idx IS 'Foreign key index';
CREATE UNIQUE INDEX transformations_output_live_key ON dalgo.transformations (organization_id, output_table_name)
	WHERE deleted_at IS NULL AND output_table_name IS NOT NULL;
COMMENT ON INDEX dalgo.transformations_output_live_key IS 'Two live transformations of one organization never write the same output table';

-- warehouse_tables -> transformations is declared here, once the parent exists.
ALTER TABLE dalgo.warehouse_tables ADD CONSTRAINT warehouse_tables_transformation_fkey
	FOREIGN KEY (organization_id, transformation_id)
	REFERENCES dalgo.transformations (organization_id, id) ON DELETE CASCADE;

CREATE TABLE dalgo.transformation_versions (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	organization_id	uuid NOT NULL REFERENCES dalgo.organizations (id) ON DELETE CASCADE,
	transformation_id uuid NOT NULL,
	version_number	integer NOT NULL CHECK (version_number >= 1),
	recipe			jsonb NOT NULL,
	generated_sql	text,
	created_by_id	uuid REFERENCES dalgo.users (id) ON DELETE SET NULL,
	change_description text,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	deleted_at		timestamptz,
	CONSTRAINT transformation_versions_transformation_fkey FOREIGN KEY (organization_id, transformation_id)
		REFERENCES dalgo.transformations (organization_id, id) ON DELETE CASCADE,
	CONSTRAINT transformation_versions_number_key UNIQUE (transformation_id, version_number)
);
COMMENT ON TABLE dalgo.transformation_versions IS 'Version history of each transformation''s recipe and compiled SQL';
COMMENT ON COLUMN dalgo.transformation_versions.organization_id IS 'Tenant column (a dalgo addition), filled from the transformation when an insert omits it';
COMMENT ON CONSTRAINT transformation_versions_number_key ON dalgo.transformation_versions IS 'Each version number once per transformation; also the foreign key index';
CREATE INDEX transformation_versions_organization_id_idx ON dalgo.transformation_versions (organization_id);
COMMENT ON INDEX dalgo.transformation_versions_organization_id_idx IS 'Tenant index';
CREATE INDEX transformation_versions_created_by_id_idx ON dalgo.transformation_versions (created_by_id);
COMMENT ON INDEX dalgo.transformation_versions_created_by_id_idx IS 'Foreign key index';

CREATE TABLE dalgo.transformation_runs (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	organization_id	uuid NOT NULL REFERENCES dalgo.organizations (id) ON DELETE CASCADE,
	transformation_id uuid NOT NULL,
	version_number	integer CHECK (version_number >= 1),
	status			dalgo.run_status NOT NULL DEFAULT 'pending',
	started_at		timestamptz,
	completed_at	timestamptz,
	executed_sql	text,
	rows_affected	integer CHECK (rows_affected >= 0),
	error_message	text,
	details			jsonb NOT NULL DEFAULT '{}',
	triggered_by_id	uuid REFERENCES dalgo.users (id) ON DELETE SET NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	deleted_at		timestamptz,
	CONSTRAINT transformation_runs_transformation_fkey FOREIGN KEY (organization_id, transformation_id)
		REFERENCES dalgo.transformations (organization_id, id) ON DELETE CASCADE,
	CONSTRAINT transformation_runs_completed_after_started CHECK (completed_at >= started_at)
);
COMMENT ON TABLE dalgo.transformation_runs IS 'Execution history of transformations';
COMMENT ON COLUMN dalgo.transformation_runs.organization_id IS 'Tenant column (a dalgo addition), filled from the transformation when an insert omits it';
CREATE INDEX transformation_runs_organization_id_idx ON dalgo.transformation_runs (organization_id);
COMMENT ON INDEX dalgo.transformation_runs_organization_id_idx IS 'Tenant index';
CREATE INDEX transformation_runs_transformation_id_idx ON dalgo.transformation_runs (transformation_id, created_at);
COMMENT ON INDEX dalgo.transformation_runs_transformation_id_idx IS 'Foreign key index; also a transformation''s run history in time order';
CREATE INDEX transformation_runs_triggered_by_id_idx ON dalgo.transformation_runs (triggered_by_id);
COMMENT ON INDEX dalgo.transformation_runs_triggered_by_id_idx IS 'Foreign key index';

-- ---------------------------------------------------------------------------
-- Outputs and scheduling
-- ---------------------------------------------------------------------------

CREATE TABLE dalgo.outputs (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	organization_id	uuid NOT NULL REFERENCES dalgo.organizations (id) ON DELETE CASCADE,
	transformation_id uuid NOT NULL,
	name			text NOT NULL CHECK (name <> ''),
	description		text,
	destination_config jsonb NOT NULL DEFAULT '{}',
	last_refreshed_at timestamptz,
	created_by_id	uuid REFERENCES dalgo.users (id) ON DELETE SET NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	deleted_at		timestamptz,
	CONSTRAINT outputs_transformation_fkey FOREIGN KEY (organization_id, transformation_id)
		REFERENCES dalgo.transformations (organization_id, id) ON DELETE CASCADE,
	CONSTRAINT outputs_organization_id_id_key UNIQUE (organization_id, id)
);
COMMENT ON TABLE dalgo.outputs IS 'Materialized outputs of transformations';
COMMENT ON CONSTRAINT outputs_organization_id_id_key ON dalgo.outputs IS 'Target of composite (organization_id, output_id) references';
CREATE INDEX outputs_organization_id_idx ON dalgo.outputs (organization_id);
COMMENT ON INDEX dalgo.outputs_organization_id_idx IS 'Foreign key and tenant index';
CREATE INDEX outputs_transformation_id_idx ON dalgo.outputs (transformation_id);
COMMENT ON INDEX dalgo.outputs_transformation_id_idx IS 'Foreign key index';
CREATE INDEX outputs_created_by_id_idx ON dalgo.outputs (created_by_id);
COMMENT ON INDEX dalgo.outputs_created_by_id_idx IS 'Foreign key index';

-- warehouse_tables -> outputs is declared here, once the parent exists.
ALTER TABLE dalgo.warehouse_tables ADD CONSTRAINT warehouse_tables_output_fkey
	FOREIGN KEY (organization_id, output_id)
	REFERENCES dalgo.outputs (organization_id, id) ON DELETE CASCADE;
CREATE INDEX warehouse_tables_output_id_idx ON dalgo.warehouse_tables (output_id);
COMMENT ON INDEX dalgo.warehouse_tables_output_id_idx IS 'Foreign key index';

CREATE TABLE dalgo.schedules (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	organization_id	uuid NOT NULL REFERENCES dalgo.organizations (id) ON DELETE CASCADE,
	source_id		uuid,
	output_id		uuid,
	frequency		dalgo.schedule_frequency NOT NULL,
	run_at_time		time NOT NULL DEFAULT '00:00',
	run_at_day		integer,
	timezone		text NOT NULL DEFAULT 'UTC',
	is_active		boolean NOT NULL DEFAULT true,
	last_run_at		timestamptz,
	next_run_at		timestamptz,
	created_by_id	uuid REFERENCES dalgo.users (id) ON DELETE SET NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	deleted_at		timestamptz,
	CONSTRAINT schedules_source_fkey FOREIGN KEY (organization_id, source_id)
		REFERENCES dalgo.sources (organization_id, id) ON DELETE CASCADE,
	CONSTRAINT schedules_output_fkey FOREIGN KEY (organization_id, output_id)
		REFERENCES dalgo.outputs (organization_id, id) ON DELETE CASCADE,
	CONSTRAINT schedules_one_target CHECK (num_nonnulls(source_id, output_id) = 1),
	CONSTRAINT schedules_run_at_day_range CHECK (
		CASE frequency
			WHEN 'weekly' THEN run_at_day IS NOT NULL AND run_at_day BETWEEN 1 AND 7
			WHEN 'monthly' THEN run_at_day IS NOT NULL AND run_at_day BETWEEN 1 AND 31
			ELSE run_at_day IS NULL
		END),
	CONSTRAINT schedules_timezone_valid CHECK (dalgo.validate_timezone(timezone))
);
COMMENT ON TABLE dalgo.schedules IS 'When a source syncs or an output refreshes';
COMMENT ON COLUMN dalgo.schedules.run_at_time IS 'Local time of day in the schedule''s time zone (hourly: only its minute counts)';
COMMENT ON COLUMN dalgo.schedules.run_at_day IS 'weekly: ISO weekday 1 (Monday) to 7 (Sunday); monthly: day 1 to 31, clamped to the month''s last day; NULL for hourly and daily';
COMMENT ON COLUMN dalgo.schedules.timezone IS 'IANA time zone name, e.g. Europe/Berlin';
COMMENT ON CONSTRAINT schedules_one_target ON dalgo.schedules IS 'A schedule targets exactly one of a source or an output';
COMMENT ON CONSTRAINT schedules_run_at_day_range ON dalgo.schedules IS 'weekly needs an ISO weekday 1-7, monthly a day 1-31; hourly and daily take none';
COMMENT ON CONSTRAINT schedules_timezone_valid ON dalgo.schedules IS 'timezone must be an IANA name; the error names the bad value';
CREATE INDEX schedules_organization_id_idx ON dalgo.schedules (organization_id);
COMMENT ON INDEX dalgo.schedules_organization_id_idx IS 'Foreign key and tenant index';
CREATE UNIQUE INDEX schedules_source_live_key ON dalgo.schedules (source_id) WHERE deleted_at IS NULL AND source_id IS NOT NULL;
COMMENT ON INDEX dalgo.schedules_source_live_key IS 'A source has at most one live schedule; also the foreign key index';
CREATE UNIQUE INDEX schedules_output_live_key ON dalgo.schedules (output_id) WHERE deleted_at IS NULL AND output_id IS NOT NULL;
COMMENT ON INDEX dalgo.schedules_output_live_key IS 'An output has at most one live schedule; also the foreign key index';
CREATE INDEX schedules_source_id_idx ON dalgo.schedules (source_id);
COMMENT ON INDEX dalgo.schedules_source_id_idx IS 'Foreign key index (all rows, for cascades)';
CREATE INDEX schedules_output_id_idx ON dalgo.schedules (output_id);
COMMENT ON INDEX dalgo.schedules_output_id_idx IS 'Foreign key index (all rows, for cascades)';
CREATE INDEX schedules_created_by_id_idx ON dalgo.schedules (created_by_id);
COMMENT ON INDEX dalgo.schedules_created_by_id_idx IS 'Foreign key index';
CREATE INDEX schedules_due_idx ON dalgo.schedules (next_run_at) WHERE is_active AND deleted_at IS NULL;
COMMENT ON INDEX dalgo.schedules_due_idx IS 'The scheduler''s due-schedule scan';

-- ---------------------------------------------------------------------------
-- Audit
-- ---------------------------------------------------------------------------

-- No foreign keys: an audit trail outlives the users and organizations it
-- describes, and a cascade must never delete or rewrite it.
CREATE TABLE dalgo.audit_logs (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	organization_id	uuid,
	user_id			uuid,
	action			text NOT NULL,
	resource_type	text NOT NULL,
	resource_id		uuid,
	details			jsonb,
	ip_address		text,
	user_agent		text,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE dalgo.audit_logs IS 'Action audit trail for compliance; references no other table so it survives what it records';
COMMENT ON COLUMN dalgo.audit_logs.organization_id IS 'Organization the change belongs to (NULL for user rows); deliberately not a foreign key';
COMMENT ON COLUMN dalgo.audit_logs.user_id IS 'Acting user (dalgo.current_user_id()); NULL for service work; deliberately not a foreign key';
CREATE INDEX audit_logs_organization_id_idx ON dalgo.audit_logs (organization_id, created_at);
COMMENT ON INDEX dalgo.audit_logs_organization_id_idx IS 'Tenant index: an organization''s trail in time order';
CREATE INDEX audit_logs_action_idx ON dalgo.audit_logs (action);
COMMENT ON INDEX dalgo.audit_logs_action_idx IS 'Audit filtering by action';

-- ---------------------------------------------------------------------------
-- Row helpers attached to the tables
-- ---------------------------------------------------------------------------

DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['users', 'organizations', 'organization_members', 'invitations',
							 'refresh_tokens', 'password_reset_tokens', 'sources', 'source_schemas',
							 'sync_runs', 'warehouse_connections', 'warehouse_tables', 'transformations',
							 'transformation_versions', 'transformation_runs', 'outputs', 'schedules',
							 'audit_logs']
	LOOP
		EXECUTE format('CREATE TRIGGER set_updated_at BEFORE UPDATE ON dalgo.%I '
					   'FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at()', t);
		EXECUTE format('COMMENT ON TRIGGER set_updated_at ON dalgo.%I IS %L',
					   t, 'Stamps updated_at with now() on every update');
	END LOOP;
END
$$;

-- Tenant-owned child tables take organization_id from their parent row:
-- one line per child table (child, parent, foreign key column, parent as
-- named in the trigger's comment).
DO $$
DECLARE
	c record;
BEGIN
	FOR c IN SELECT * FROM (VALUES
			('source_schemas', 'dalgo.sources', 'source_id', 'source'),
			('sync_runs', 'dalgo.sources', 'source_id', 'source'),
			('warehouse_tables', 'dalgo.warehouse_connections', 'warehouse_connection_id', 'warehouse connection'),
			('transformation_versions', 'dalgo.transformations', 'transformation_id', 'transformation'),
			('transformation_runs', 'dalgo.transformations', 'transformation_id', 'transformation'))
			AS x(child, parent, fkey, parent_noun)
	LOOP
		EXECUTE format('CREATE TRIGGER fill_organization_id BEFORE INSERT ON dalgo.%I '
					   'FOR EACH ROW EXECUTE FUNCTION dalgo_internal.fill_organization_id(%L, %L)',
					   c.child, c.parent, c.fkey);
		EXECUTE format('COMMENT ON TRIGGER fill_organization_id ON dalgo.%I IS %L',
					   c.child, 'Fills organization_id from the ' || c.parent_noun);
	END LOOP;
END
$$;

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
					   'FOR EACH ROW EXECUTE FUNCTION dalgo_internal.refuse_tenant_move()', t);
		EXECUTE format('COMMENT ON TRIGGER tenant_fixed ON dalgo.%I IS %L',
					   t, 'A row never moves to another organization');
	END LOOP;
END
$$;
