-- dalgo 0.1.0: the released install script, frozen.  Never edit it; change the fragments and the upgrade script instead.
\echo Use "CREATE EXTENSION dalgo" to load this file. \quit

-- ---- sql/schema.sql ----
-- schema.sql: the Dalgo Lite schema (types, tables, keys, indexes) plus the
-- generic row helpers it relies on: set_updated_at() and the tenant-column
-- filler for child tables.

-- The schema is created here rather than by the control file so that it is a
-- member of the extension: DROP EXTENSION removes it with everything else.
CREATE SCHEMA dalgo;
COMMENT ON SCHEMA dalgo IS 'Dalgo Lite: every table, type and function of the dalgo extension';

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

CREATE FUNCTION dalgo.fill_organization_id() RETURNS trigger
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
COMMENT ON FUNCTION dalgo.fill_organization_id() IS
	'BEFORE INSERT row trigger for tenant-owned child tables: fills organization_id from the parent row (trigger args: parent table, parent-id column) when the insert omits it';

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
	CONSTRAINT warehouse_tables_connection_fkey FOREIGN KEY (organization_id, warehouse_connection_id)
		REFERENCES dalgo.warehouse_connections (organization_id, id) ON DELETE CASCADE,
	CONSTRAINT warehouse_tables_source_fkey FOREIGN KEY (organization_id, source_id)
		REFERENCES dalgo.sources (organization_id, id) ON DELETE CASCADE,
	CONSTRAINT warehouse_tables_one_producer CHECK (num_nonnulls(source_id, transformation_id) <= 1)
);
COMMENT ON TABLE dalgo.warehouse_tables IS 'Registry of the tables in each organization''s warehouse';
COMMENT ON COLUMN dalgo.warehouse_tables.organization_id IS 'Tenant column (a dalgo addition), filled from the warehouse connection when an insert omits it';
COMMENT ON COLUMN dalgo.warehouse_tables.schema_info IS 'Columns and types of the table, refreshed after each run';
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

CREATE TRIGGER fill_organization_id BEFORE INSERT ON dalgo.source_schemas
	FOR EACH ROW EXECUTE FUNCTION dalgo.fill_organization_id('dalgo.sources', 'source_id');
CREATE TRIGGER fill_organization_id BEFORE INSERT ON dalgo.sync_runs
	FOR EACH ROW EXECUTE FUNCTION dalgo.fill_organization_id('dalgo.sources', 'source_id');
CREATE TRIGGER fill_organization_id BEFORE INSERT ON dalgo.warehouse_tables
	FOR EACH ROW EXECUTE FUNCTION dalgo.fill_organization_id('dalgo.warehouse_connections', 'warehouse_connection_id');
CREATE TRIGGER fill_organization_id BEFORE INSERT ON dalgo.transformation_versions
	FOR EACH ROW EXECUTE FUNCTION dalgo.fill_organization_id('dalgo.transformations', 'transformation_id');
CREATE TRIGGER fill_organization_id BEFORE INSERT ON dalgo.transformation_runs
	FOR EACH ROW EXECUTE FUNCTION dalgo.fill_organization_id('dalgo.transformations', 'transformation_id');
COMMENT ON TRIGGER fill_organization_id ON dalgo.source_schemas IS 'Fills organization_id from the source';
COMMENT ON TRIGGER fill_organization_id ON dalgo.sync_runs IS 'Fills organization_id from the source';
COMMENT ON TRIGGER fill_organization_id ON dalgo.warehouse_tables IS 'Fills organization_id from the warehouse connection';
COMMENT ON TRIGGER fill_organization_id ON dalgo.transformation_versions IS 'Fills organization_id from the transformation';
COMMENT ON TRIGGER fill_organization_id ON dalgo.transformation_runs IS 'Fills organization_id from the transformation';

-- ---- sql/identity.sql ----
-- identity.sql: the roles, the caller's identity (dalgo.current_user_id,
-- dalgo.authenticate) and organization membership (dalgo.is_org_member and
-- friends), with the triggers that keep membership caches current and
-- protect owners.

-- ---------------------------------------------------------------------------
-- Roles (cluster-wide, so created only if missing: a second database's
-- install and a re-install after DROP EXTENSION reuse them)
-- ---------------------------------------------------------------------------

DO $$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['dalgo_authenticated', 'dalgo_anon', 'dalgo_service']
	LOOP
		IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
			EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN NOINHERIT NOBYPASSRLS', r);
		END IF;
	END LOOP;
END
$$;
COMMENT ON ROLE dalgo_authenticated IS 'dalgo: end-user requests; row-level security applies and follows the caller''s organization roles';
COMMENT ON ROLE dalgo_anon IS 'dalgo: unauthenticated requests; no table access, only the public functions (authenticate)';
COMMENT ON ROLE dalgo_service IS 'dalgo: background jobs and administration; passes the tenant policies';

GRANT USAGE ON SCHEMA dalgo TO dalgo_authenticated, dalgo_anon, dalgo_service;

-- ---------------------------------------------------------------------------
-- Identity
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.current_user_id() RETURNS uuid
	AS 'MODULE_PATHNAME', 'dalgo_current_user_id_sql'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.current_user_id() IS
	'The caller''s user id: from dalgo.authenticate(), else the dalgo.user_id setting, else request.jwt.claims->>''sub'' when dalgo.trust_jwt_claims is on; NULL when there is none or it is malformed';

CREATE FUNCTION dalgo.authenticate(token text, session boolean DEFAULT false) RETURNS uuid
	AS 'MODULE_PATHNAME', 'dalgo_authenticate'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo.authenticate(text, boolean) IS
	'Verify an HS256 JWT signed with dalgo.jwt_secret (exp required, nbf honoured, sub = an active user) and make its subject the caller''s identity for this transaction, or the session if session is true; any failure raises 28000 "authentication failed"';

CREATE FUNCTION dalgo.sign_out() RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_sign_out'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo.sign_out() IS 'Forget any identity set by dalgo.authenticate() (DISCARD ALL and RESET ALL do the same)';

-- ---------------------------------------------------------------------------
-- Membership
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.is_org_member(org uuid, min_role dalgo.member_role DEFAULT 'viewer') RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_is_org_member'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.is_org_member(uuid, dalgo.member_role) IS
	'True if the caller holds at least min_role in the organization (live membership, live organization, active live user; superadmins are owners everywhere); false for NULL arguments';

CREATE FUNCTION dalgo.is_org_admin(org uuid) RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_is_org_admin'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.is_org_admin(uuid) IS 'True if the caller is an admin or owner of the organization';

CREATE FUNCTION dalgo.org_role(org uuid) RETURNS dalgo.member_role
	AS 'MODULE_PATHNAME', 'dalgo_org_role'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.org_role(uuid) IS 'The caller''s role in the organization, or NULL when not a member';

CREATE FUNCTION dalgo.current_org_ids(min_role dalgo.member_role DEFAULT 'viewer') RETURNS uuid[]
	AS 'MODULE_PATHNAME', 'dalgo_current_org_ids'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.current_org_ids(dalgo.member_role) IS
	'Ids of the organizations where the caller holds at least min_role; the index-friendly form for policies: organization_id = ANY ((SELECT dalgo.current_org_ids())::uuid[])';

CREATE FUNCTION dalgo.membership_changed() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_membership_changed'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo.membership_changed() IS
	'AFTER statement trigger on users, organizations and organization_members: invalidates every backend''s membership cache (this transaction''s next statement, other sessions at commit)';

CREATE TRIGGER membership_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dalgo.users
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo.membership_changed();
CREATE TRIGGER membership_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dalgo.organizations
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo.membership_changed();
CREATE TRIGGER membership_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dalgo.organization_members
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo.membership_changed();
COMMENT ON TRIGGER membership_changed ON dalgo.users IS 'Invalidates membership caches';
COMMENT ON TRIGGER membership_changed ON dalgo.organizations IS 'Invalidates membership caches';
COMMENT ON TRIGGER membership_changed ON dalgo.organization_members IS 'Invalidates membership caches';

-- ---------------------------------------------------------------------------
-- Role protection
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.guard_membership() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	org uuid;
	my_role dalgo.member_role;
	was_owner boolean := false;
	stays_owner boolean := false;
BEGIN
	IF TG_OP = 'DELETE' THEN
		org := OLD.organization_id;
	ELSE
		org := NEW.organization_id;
	END IF;

	IF TG_OP = 'UPDATE' AND (NEW.organization_id <> OLD.organization_id OR NEW.user_id <> OLD.user_id) THEN
		RAISE EXCEPTION 'a membership cannot be moved to another organization or user'
			USING ERRCODE = 'insufficient_privilege', HINT = 'Remove it and add a new membership.';
	END IF;

	-- What the acting user may do (service work without an identity is not limited here).
	IF me IS NOT NULL THEN
		my_role := dalgo.org_role(org);
		-- (The first owner of a new organization, which has no members yet, is allowed.)
		IF TG_OP = 'INSERT' AND NEW.role = 'owner' AND my_role IS DISTINCT FROM 'owner'
		   AND EXISTS (SELECT FROM dalgo.organization_members m
					   WHERE m.organization_id = org AND m.deleted_at IS NULL) THEN
			RAISE EXCEPTION 'only an owner can add an owner'
				USING ERRCODE = 'insufficient_privilege';
		END IF;
		IF TG_OP = 'UPDATE' THEN
			IF OLD.user_id = me AND NEW.role > OLD.role THEN
				RAISE EXCEPTION 'you cannot raise your own role'
					USING ERRCODE = 'insufficient_privilege';
			END IF;
			IF (NEW.role = 'owner' OR OLD.role = 'owner') AND NEW.role <> OLD.role
			   AND my_role IS DISTINCT FROM 'owner' THEN
				RAISE EXCEPTION 'only an owner can grant or revoke the owner role'
					USING ERRCODE = 'insufficient_privilege';
			END IF;
			IF OLD.role = 'owner' AND OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL
			   AND my_role IS DISTINCT FROM 'owner' THEN
				RAISE EXCEPTION 'only an owner can remove an owner'
					USING ERRCODE = 'insufficient_privilege';
			END IF;
		END IF;
		IF TG_OP = 'DELETE' AND OLD.role = 'owner' AND my_role IS DISTINCT FROM 'owner' THEN
			RAISE EXCEPTION 'only an owner can remove an owner'
				USING ERRCODE = 'insufficient_privilege';
		END IF;
	END IF;

	-- An organization never loses its last owner (whoever acts).
	IF TG_OP IN ('UPDATE', 'DELETE') THEN
		was_owner := OLD.role = 'owner' AND OLD.deleted_at IS NULL;
	END IF;
	IF TG_OP = 'UPDATE' THEN
		stays_owner := NEW.role = 'owner' AND NEW.deleted_at IS NULL;
	END IF;
	IF was_owner AND NOT stays_owner THEN
		-- Lock the organization so concurrent owner changes are serialized.
		-- A deleted organization (its members cascading away) has no row left.
		PERFORM FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL FOR UPDATE;
		IF FOUND AND NOT EXISTS (
			SELECT FROM dalgo.organization_members m JOIN dalgo.users u ON u.id = m.user_id
			WHERE m.organization_id = org AND m.role = 'owner' AND m.deleted_at IS NULL
			  AND m.id <> OLD.id AND u.is_active AND u.deleted_at IS NULL) THEN
			RAISE EXCEPTION 'cannot remove the last owner of organization %', org
				USING ERRCODE = 'check_violation',
					  HINT = 'Make another member an owner first, or delete the organization.';
		END IF;
	END IF;

	IF TG_OP = 'DELETE' THEN
		RETURN OLD;
	END IF;
	RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION dalgo.guard_membership() FROM PUBLIC;
COMMENT ON FUNCTION dalgo.guard_membership() IS
	'BEFORE row trigger on organization_members: only owners grant, revoke or remove the owner role, nobody raises their own role, memberships never move, and an organization keeps at least one live owner';
CREATE TRIGGER guard_membership BEFORE INSERT OR UPDATE OR DELETE ON dalgo.organization_members
	FOR EACH ROW EXECUTE FUNCTION dalgo.guard_membership();
COMMENT ON TRIGGER guard_membership ON dalgo.organization_members IS 'Role protection';

CREATE FUNCTION dalgo.guard_organization() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.deleted_at IS DISTINCT FROM OLD.deleted_at AND dalgo.current_user_id() IS NOT NULL
	   AND dalgo.org_role(OLD.id) IS DISTINCT FROM 'owner' THEN
		RAISE EXCEPTION 'only an owner can delete or restore an organization'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION dalgo.guard_organization() FROM PUBLIC;
COMMENT ON FUNCTION dalgo.guard_organization() IS 'BEFORE UPDATE row trigger on organizations: only an owner soft-deletes or restores it';
CREATE TRIGGER guard_organization BEFORE UPDATE ON dalgo.organizations
	FOR EACH ROW EXECUTE FUNCTION dalgo.guard_organization();
COMMENT ON TRIGGER guard_organization ON dalgo.organizations IS 'Only owners soft-delete an organization';

CREATE FUNCTION dalgo.create_organization(name text, slug text, org_type dalgo.org_type DEFAULT 'team')
	RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	org uuid;
BEGIN
	IF me IS NULL OR NOT EXISTS (SELECT FROM dalgo.users u WHERE u.id = me AND u.is_active AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'creating an organization needs a signed-in, active user'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	INSERT INTO dalgo.organizations (name, slug, org_type)
		VALUES (create_organization.name, create_organization.slug, create_organization.org_type)
		RETURNING id INTO org;
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES (org, me, 'owner');
	RETURN org;
END
$$;
REVOKE ALL ON FUNCTION dalgo.create_organization(text, text, dalgo.org_type) FROM PUBLIC;
COMMENT ON FUNCTION dalgo.create_organization(text, text, dalgo.org_type) IS
	'Create an organization with the calling user as its owner; returns its id';

-- ---- sql/rls.sql ----
-- rls.sql: privileges and row-level security on every dalgo table.
--
-- Reads on organization tables use organization_id = ANY ((SELECT
-- dalgo.current_org_ids(...))::uuid[]): the membership list is computed once per
-- statement (an initPlan) and the planner uses the organization_id index.
-- Writes use the same test in USING and WITH CHECK, so no row can be
-- written into, or moved into, an organization where the caller lacks the
-- role.  dalgo_service passes every tenant policy.

-- ---------------------------------------------------------------------------
-- Privileges
-- ---------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA dalgo FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA dalgo FROM PUBLIC;

-- End users: tables of their organizations, never secrets, never TRUNCATE.
GRANT SELECT, INSERT, UPDATE, DELETE ON
	dalgo.organization_members, dalgo.sources, dalgo.source_schemas, dalgo.sync_runs,
	dalgo.warehouse_tables, dalgo.transformations, dalgo.transformation_runs,
	dalgo.outputs, dalgo.schedules
	TO dalgo_authenticated;
GRANT SELECT, UPDATE, DELETE ON dalgo.organizations TO dalgo_authenticated;
GRANT SELECT, INSERT ON dalgo.transformation_versions TO dalgo_authenticated;
GRANT SELECT ON dalgo.audit_logs TO dalgo_authenticated;
GRANT SELECT (id, email, full_name, is_active, is_superadmin, created_at, updated_at, deleted_at),
	  UPDATE (email, full_name)
	ON dalgo.users TO dalgo_authenticated;
GRANT SELECT (id, email, organization_id, role, expires_at, accepted_at, invited_by_id, created_at, updated_at),
	  INSERT, UPDATE, DELETE
	ON dalgo.invitations TO dalgo_authenticated;
GRANT SELECT (id, organization_id, database_name, is_connected, last_connected_at, config,
			  created_at, updated_at, deleted_at),
	  INSERT, UPDATE, DELETE
	ON dalgo.warehouse_connections TO dalgo_authenticated;

-- Service: everything but TRUNCATE; the audit trail is read-only here too.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA dalgo TO dalgo_service;
REVOKE INSERT, UPDATE, DELETE ON dalgo.audit_logs FROM dalgo_service;

GRANT EXECUTE ON FUNCTION
	dalgo.current_user_id(), dalgo.is_org_member(uuid, dalgo.member_role), dalgo.is_org_admin(uuid),
	dalgo.org_role(uuid), dalgo.current_org_ids(dalgo.member_role), dalgo.validate_timezone(text),
	dalgo.authenticate(text, boolean), dalgo.sign_out()
	TO dalgo_authenticated, dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.create_organization(text, text, dalgo.org_type) TO dalgo_authenticated;
GRANT EXECUTE ON FUNCTION dalgo.authenticate(text, boolean), dalgo.sign_out() TO dalgo_anon;

-- ---------------------------------------------------------------------------
-- Row-level security
-- ---------------------------------------------------------------------------

-- Tenant tables: (table, role that reads, role that inserts/updates, role that deletes).
-- NULL means no end user may do it.
DO $$
DECLARE
	t record;
	cond text;
BEGIN
	FOR t IN SELECT * FROM (VALUES
		('sources', 'viewer', 'admin', 'admin'),
		('source_schemas', 'viewer', 'admin', 'admin'),
		('sync_runs', 'viewer', 'admin', 'admin'),
		('warehouse_connections', 'viewer', 'admin', 'admin'),
		('warehouse_tables', 'viewer', 'admin', 'admin'),
		('transformations', 'viewer', 'member', 'member'),
		('transformation_versions', 'viewer', 'member', NULL),
		('transformation_runs', 'viewer', 'member', 'admin'),
		('outputs', 'viewer', 'member', 'member'),
		('schedules', 'viewer', 'admin', 'admin'),
		('invitations', 'admin', 'admin', 'admin'),
		('audit_logs', 'admin', NULL, NULL)) AS v(tbl, read_role, write_role, delete_role)
	LOOP
		cond := 'organization_id OPERATOR(pg_catalog.=) ANY ((SELECT dalgo.current_org_ids(%L))::uuid[])';
		EXECUTE format('CREATE POLICY tenant_select ON dalgo.%I FOR SELECT TO dalgo_authenticated USING (' || cond || ')',
					   t.tbl, t.read_role);
		EXECUTE format('COMMENT ON POLICY tenant_select ON dalgo.%I IS %L', t.tbl,
					   format('Rows of organizations where the caller is at least %s', t.read_role));
		IF t.write_role IS NOT NULL THEN
			EXECUTE format('CREATE POLICY tenant_insert ON dalgo.%I FOR INSERT TO dalgo_authenticated WITH CHECK (' || cond || ')',
						   t.tbl, t.write_role);
			EXECUTE format('CREATE POLICY tenant_update ON dalgo.%I FOR UPDATE TO dalgo_authenticated USING (' || cond
						   || ') WITH CHECK (' || cond || ')', t.tbl, t.write_role, t.write_role);
			EXECUTE format('COMMENT ON POLICY tenant_insert ON dalgo.%I IS %L', t.tbl,
						   format('Only %s and above add rows, and only to their organizations', t.write_role));
			EXECUTE format('COMMENT ON POLICY tenant_update ON dalgo.%I IS %L', t.tbl,
						   format('Only %s and above change rows, and cannot move them to another organization', t.write_role));
		END IF;
		IF t.delete_role IS NOT NULL THEN
			EXECUTE format('CREATE POLICY tenant_delete ON dalgo.%I FOR DELETE TO dalgo_authenticated USING (' || cond || ')',
						   t.tbl, t.delete_role);
			EXECUTE format('COMMENT ON POLICY tenant_delete ON dalgo.%I IS %L', t.tbl,
						   format('Only %s and above delete rows', t.delete_role));
		END IF;
	END LOOP;
END
$$;

-- Organizations: members read; admins edit; owners delete (and soft-delete, see guard_organization).
CREATE POLICY org_select ON dalgo.organizations FOR SELECT TO dalgo_authenticated
	USING (id = ANY ((SELECT dalgo.current_org_ids('viewer'))::uuid[]));
CREATE POLICY org_update ON dalgo.organizations FOR UPDATE TO dalgo_authenticated
	USING (id = ANY ((SELECT dalgo.current_org_ids('admin'))::uuid[]))
	WITH CHECK (id = ANY ((SELECT dalgo.current_org_ids('admin'))::uuid[]));
CREATE POLICY org_delete ON dalgo.organizations FOR DELETE TO dalgo_authenticated
	USING (id = ANY ((SELECT dalgo.current_org_ids('owner'))::uuid[]));
COMMENT ON POLICY org_select ON dalgo.organizations IS 'Members see their organizations';
COMMENT ON POLICY org_update ON dalgo.organizations IS 'Admins and owners edit their organizations';
COMMENT ON POLICY org_delete ON dalgo.organizations IS 'Only owners delete an organization';

-- Memberships: members see co-members; admins manage them (owner rules in guard_membership);
-- anyone may leave.
CREATE POLICY member_select ON dalgo.organization_members FOR SELECT TO dalgo_authenticated
	USING (organization_id = ANY ((SELECT dalgo.current_org_ids('viewer'))::uuid[]));
CREATE POLICY member_insert ON dalgo.organization_members FOR INSERT TO dalgo_authenticated
	WITH CHECK (organization_id = ANY ((SELECT dalgo.current_org_ids('admin'))::uuid[]));
CREATE POLICY member_update ON dalgo.organization_members FOR UPDATE TO dalgo_authenticated
	USING (organization_id = ANY ((SELECT dalgo.current_org_ids('admin'))::uuid[]))
	WITH CHECK (organization_id = ANY ((SELECT dalgo.current_org_ids('admin'))::uuid[]));
CREATE POLICY member_delete ON dalgo.organization_members FOR DELETE TO dalgo_authenticated
	USING (organization_id = ANY ((SELECT dalgo.current_org_ids('admin'))::uuid[]) OR user_id = (SELECT dalgo.current_user_id()));
COMMENT ON POLICY member_select ON dalgo.organization_members IS 'Members see the memberships of their organizations';
COMMENT ON POLICY member_insert ON dalgo.organization_members IS 'Admins add members (owners only add owners)';
COMMENT ON POLICY member_update ON dalgo.organization_members IS 'Admins change members (owners only change owners)';
COMMENT ON POLICY member_delete ON dalgo.organization_members IS 'Admins remove members; anyone may leave';

-- Users: your own row, and co-members' (column privileges hide password_hash).
CREATE POLICY user_select ON dalgo.users FOR SELECT TO dalgo_authenticated
	USING (id = (SELECT dalgo.current_user_id())
		   OR EXISTS (SELECT FROM dalgo.organization_members m
					  WHERE m.user_id = users.id AND m.deleted_at IS NULL
						AND m.organization_id = ANY ((SELECT dalgo.current_org_ids('viewer'))::uuid[])));
CREATE POLICY user_update ON dalgo.users FOR UPDATE TO dalgo_authenticated
	USING (id = (SELECT dalgo.current_user_id()))
	WITH CHECK (id = (SELECT dalgo.current_user_id()));
COMMENT ON POLICY user_select ON dalgo.users IS 'Users see themselves and the members of their organizations';
COMMENT ON POLICY user_update ON dalgo.users IS 'Users edit only their own name and email';

-- Service role and RLS on every table.
DO $$
DECLARE
	t text;
BEGIN
	FOR t IN SELECT c.relname FROM pg_catalog.pg_class c
			 WHERE c.relnamespace = 'dalgo'::regnamespace AND c.relkind IN ('r', 'p')
	LOOP
		EXECUTE format('ALTER TABLE dalgo.%I ENABLE ROW LEVEL SECURITY', t);
		EXECUTE format('ALTER TABLE dalgo.%I FORCE ROW LEVEL SECURITY', t);
		EXECUTE format('CREATE POLICY service_all ON dalgo.%I TO dalgo_service USING (true) WITH CHECK (true)', t);
		EXECUTE format('COMMENT ON POLICY service_all ON dalgo.%I IS %L', t,
					   'dalgo_service passes the tenant policies');
	END LOOP;
END
$$;

-- ---- sql/audit.sql ----
-- audit.sql: the audit trail.  dalgo.audit_trigger() (C) records who
-- changed what in every dalgo table and in any table handed to
-- dalgo.enable_audit(); dalgo.audit_logs is append-only.

CREATE FUNCTION dalgo.uuid_v7() RETURNS uuid
	AS 'MODULE_PATHNAME', 'dalgo_uuid_v7_sql'
	LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.uuid_v7() IS 'A time-ordered (version 7) uuid; audit rows use these ids';

CREATE FUNCTION dalgo.audit_trigger() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_audit_trigger'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo.audit_trigger() IS
	'AFTER trigger writing dalgo.audit_logs: per statement with transition tables (per row on foreign tables); arguments: organization column ('''' for none), then excluded columns. Attach it with dalgo.enable_audit()';

CREATE FUNCTION dalgo.audit_log_guard() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_audit_log_guard'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo.audit_log_guard() IS 'Refuses UPDATE, DELETE and TRUNCATE of dalgo.audit_logs (except inside dalgo.purge_audit_logs)';

CREATE FUNCTION dalgo.purge_audit_logs(older_than interval) RETURNS bigint
	AS 'MODULE_PATHNAME', 'dalgo_purge_audit_logs'
	LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo.purge_audit_logs(interval) IS
	'Delete audit rows created more than older_than ago; returns the number deleted. Only dalgo_service and superusers';

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON dalgo.audit_logs
	FOR EACH ROW EXECUTE FUNCTION dalgo.audit_log_guard();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON dalgo.audit_logs
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo.audit_log_guard();
COMMENT ON TRIGGER append_only ON dalgo.audit_logs IS 'The audit trail is append-only';
COMMENT ON TRIGGER append_only_truncate ON dalgo.audit_logs IS 'The audit trail is append-only';

CREATE FUNCTION dalgo.disable_audit(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t text;
BEGIN
	FOR t IN SELECT tgname FROM pg_trigger WHERE tgrelid = tbl AND NOT tgisinternal
			   AND tgname IN ('dalgo_audit', 'dalgo_audit_insert', 'dalgo_audit_update',
							  'dalgo_audit_delete', 'dalgo_audit_truncate')
	LOOP
		EXECUTE format('DROP TRIGGER %I ON %s', t, tbl);
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo.disable_audit(regclass) IS 'Stop auditing a table (drops the triggers dalgo.enable_audit created)';

CREATE FUNCTION dalgo.enable_audit(tbl regclass, exclude text[] DEFAULT '{}', organization_column text DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	kind "char";
	orgcol text := organization_column;
	c text;
	args text;
BEGIN
	SELECT relkind INTO kind FROM pg_class WHERE oid = tbl;
	IF kind IS NULL OR kind NOT IN ('r', 'p', 'f') THEN
		RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = 'wrong_object_type';
	END IF;
	IF tbl = 'dalgo.audit_logs'::regclass THEN
		RAISE EXCEPTION 'dalgo.audit_logs cannot audit itself' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOREACH c IN ARRAY coalesce(exclude, '{}') LOOP
		IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = c AND attnum > 0 AND NOT attisdropped) THEN
			RAISE EXCEPTION 'column "%" of % does not exist', c, tbl USING ERRCODE = 'undefined_column';
		END IF;
	END LOOP;
	IF orgcol IS NULL THEN
		orgcol := CASE WHEN EXISTS (SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = 'organization_id'
									AND atttypid = 'uuid'::regtype AND NOT attisdropped)
					   THEN 'organization_id' ELSE '' END;
	ELSIF orgcol <> '' AND NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = orgcol
									   AND atttypid = 'uuid'::regtype AND NOT attisdropped) THEN
		RAISE EXCEPTION 'organization column "%" of % does not exist or is not a uuid', orgcol, tbl
			USING ERRCODE = 'undefined_column';
	END IF;

	PERFORM dalgo.disable_audit(tbl);
	SELECT string_agg(quote_literal(a), ', ') INTO args FROM unnest(ARRAY[orgcol] || coalesce(exclude, '{}')) a;
	IF kind = 'f' THEN
		-- Foreign tables cannot have transition tables: audit them row by row.
		EXECUTE format('CREATE TRIGGER dalgo_audit AFTER INSERT OR UPDATE OR DELETE ON %s '
					   'FOR EACH ROW EXECUTE FUNCTION dalgo.audit_trigger(%s)', tbl, args);
	ELSE
		EXECUTE format('CREATE TRIGGER dalgo_audit_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
					   'FOR EACH STATEMENT EXECUTE FUNCTION dalgo.audit_trigger(%s)', tbl, args);
		EXECUTE format('CREATE TRIGGER dalgo_audit_update AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows '
					   'NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dalgo.audit_trigger(%s)', tbl, args);
		EXECUTE format('CREATE TRIGGER dalgo_audit_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
					   'FOR EACH STATEMENT EXECUTE FUNCTION dalgo.audit_trigger(%s)', tbl, args);
		EXECUTE format('CREATE TRIGGER dalgo_audit_truncate AFTER TRUNCATE ON %s '
					   'FOR EACH STATEMENT EXECUTE FUNCTION dalgo.audit_trigger(%s)', tbl, args);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.enable_audit(regclass, text[], text) IS
	'Audit a table: exclude lists columns written as "[redacted]" (besides password_hash, token, token_hash, access_token_encrypted); organization_column names the uuid column of the organization (default: organization_id if present; '''' for none)';

REVOKE ALL ON FUNCTION dalgo.uuid_v7(), dalgo.audit_trigger(), dalgo.audit_log_guard(),
	dalgo.purge_audit_logs(interval), dalgo.enable_audit(regclass, text[], text), dalgo.disable_audit(regclass)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.purge_audit_logs(interval) TO dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.uuid_v7() TO dalgo_authenticated, dalgo_service;

-- Audit every dalgo table but the log itself.
SELECT dalgo.enable_audit(c.oid::regclass, '{}',
	CASE c.relname WHEN 'organizations' THEN 'id' WHEN 'users' THEN '' END)
FROM pg_catalog.pg_class c
WHERE c.relnamespace = 'dalgo'::regnamespace AND c.relkind = 'r' AND c.relname <> 'audit_logs';

-- ---- sql/recipes.sql ----
-- recipes.sql: the recipe compiler, the per-organization warehouse, and the
-- transformation engine (versions, dependency graph, runs, previews).

CREATE FUNCTION dalgo.compile_recipe(organization_id uuid, recipe jsonb) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_compile_recipe'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.compile_recipe(uuid, jsonb) IS
	'Compile a JSON recipe (see the recipe contract) into one SELECT over the organization''s warehouse; errors are 22023 and name the step, its type and the field';

CREATE FUNCTION dalgo.warehouse_execute(organization_id uuid, sql text) RETURNS bigint
	AS 'MODULE_PATHNAME', 'dalgo_warehouse_execute'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo.warehouse_execute(uuid, text) IS
	'Internal: run a command as the organization''s warehouse role (search_path pinned, dalgo.statement_timeout); returns rows processed';

CREATE FUNCTION dalgo.warehouse_query(organization_id uuid, sql text, row_limit integer) RETURNS SETOF jsonb
	AS 'MODULE_PATHNAME', 'dalgo_warehouse_query'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo.warehouse_query(uuid, text, integer) IS
	'Internal: the rows of a query as jsonb, run as the organization''s warehouse role; row_limit 0 only parse-analyzes it';

CREATE FUNCTION dalgo.caller_may(organization_id uuid, min_role dalgo.member_role) RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_caller_may_sql'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.caller_may(uuid, dalgo.member_role) IS
	'True if the caller may act in the organization with min_role: the signed-in user''s role, or, without an identity, a login that is a superuser or dalgo_service';

CREATE FUNCTION dalgo.warehouse_schema(organization_id uuid) RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	hex text := replace(organization_id::text, '-', '');
	schema_name text := 'org_' || hex;
	role_name text := 'dalgo_wh_' || hex;
BEGIN
	IF organization_id IS NULL THEN
		RAISE EXCEPTION 'organization_id is required' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT dalgo.caller_may(organization_id, 'viewer')
	   OR NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = warehouse_schema.organization_id AND o.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
		EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT', role_name);
		EXECUTE format('COMMENT ON ROLE %I IS %L', role_name, 'dalgo: owns the warehouse of organization ' || organization_id);
	END IF;
	IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = schema_name) THEN
		EXECUTE format('CREATE SCHEMA %I AUTHORIZATION %I', schema_name, role_name);
		EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', schema_name);
		EXECUTE format('COMMENT ON SCHEMA %I IS %L', schema_name, 'dalgo: warehouse of organization ' || organization_id);
	END IF;
	INSERT INTO dalgo.warehouse_connections (organization_id, database_name, is_connected, last_connected_at)
		SELECT warehouse_schema.organization_id, current_database(), true, now()
		WHERE NOT EXISTS (SELECT FROM dalgo.warehouse_connections w
						  WHERE w.organization_id = warehouse_schema.organization_id AND w.deleted_at IS NULL);
	RETURN schema_name;
END
$$;
COMMENT ON FUNCTION dalgo.warehouse_schema(uuid) IS
	'The organization''s warehouse schema (org_<id>, owned by role dalgo_wh_<id>), created with its warehouse_connections row on first use';

CREATE FUNCTION dalgo.create_warehouse_for_connection() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo.warehouse_schema(NEW.organization_id);
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo.create_warehouse_for_connection() IS 'AFTER INSERT trigger on warehouse_connections: creates the warehouse schema';
CREATE TRIGGER create_warehouse AFTER INSERT ON dalgo.warehouse_connections
	FOR EACH ROW WHEN (NEW.deleted_at IS NULL) EXECUTE FUNCTION dalgo.create_warehouse_for_connection();
COMMENT ON TRIGGER create_warehouse ON dalgo.warehouse_connections IS 'A warehouse connection creates its warehouse schema';

CREATE FUNCTION dalgo.register_warehouse_table(organization_id uuid, table_name text, source_id uuid,
											   transformation_id uuid, row_count bigint)
	RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := 'org_' || replace(organization_id::text, '-', '');
	rel regclass := to_regclass(format('%I.%I', schema_name, table_name));
	conn uuid;
	info jsonb;
BEGIN
	SELECT id INTO conn FROM dalgo.warehouse_connections w
	WHERE w.organization_id = register_warehouse_table.organization_id AND w.deleted_at IS NULL;
	SELECT coalesce(jsonb_agg(jsonb_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
												 'nullable', NOT a.attnotnull) ORDER BY a.attnum), '[]')
	INTO info FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped;
	UPDATE dalgo.warehouse_tables w SET row_count = register_warehouse_table.row_count,
		size_bytes = pg_total_relation_size(rel), schema_info = info, last_updated_at = now(),
		source_id = register_warehouse_table.source_id, transformation_id = register_warehouse_table.transformation_id
	WHERE w.warehouse_connection_id = conn AND w.table_name = register_warehouse_table.table_name AND w.deleted_at IS NULL;
	IF NOT FOUND THEN
		INSERT INTO dalgo.warehouse_tables (organization_id, warehouse_connection_id, table_name, source_id,
											transformation_id, row_count, size_bytes, schema_info, last_updated_at)
		VALUES (register_warehouse_table.organization_id, conn, register_warehouse_table.table_name,
				register_warehouse_table.source_id, register_warehouse_table.transformation_id,
				register_warehouse_table.row_count, pg_total_relation_size(rel), info, now());
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.register_warehouse_table(uuid, text, uuid, uuid, bigint) IS
	'Internal: record a warehouse table''s row count, size and columns in warehouse_tables';

-- ---------------------------------------------------------------------------
-- Versions and the dependency graph
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.recipe_dependencies(recipe jsonb) RETURNS uuid[]
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
	AS $$ SELECT coalesce(array_agg(DISTINCT (v #>> '{}')::uuid), '{}')
		  FROM jsonb_path_query(recipe, 'strict $.**.transformation_id') v
		  WHERE jsonb_typeof(v) = 'string' $$;
COMMENT ON FUNCTION dalgo.recipe_dependencies(jsonb) IS 'Ids of the transformations a recipe reads (source, join and union inputs)';

CREATE FUNCTION dalgo.transformation_upstream(transformation_id uuid)
	RETURNS TABLE (id uuid, depth integer)
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
	AS $$
		WITH RECURSIVE up(id, depth) AS (
			SELECT d, 1 FROM dalgo.transformations t, unnest(dalgo.recipe_dependencies(t.recipe)) d
			WHERE t.id = transformation_upstream.transformation_id
			UNION ALL
			SELECT d, up.depth + 1 FROM up JOIN dalgo.transformations t ON t.id = up.id,
				unnest(dalgo.recipe_dependencies(t.recipe)) d
			WHERE up.depth < 100)
		SELECT id, max(depth) FROM up GROUP BY id ORDER BY max(depth) DESC, id
	$$;
COMMENT ON FUNCTION dalgo.transformation_upstream(uuid) IS
	'The transformations a transformation reads, directly or not, deepest first (the order to run them in)';

CREATE FUNCTION dalgo.check_recipe_sql(organization_id uuid, sql text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	msg text;
BEGIN
	IF NOT dalgo.caller_may(organization_id, 'member') THEN
		RAISE EXCEPTION 'saving a transformation needs the member role' USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM dalgo.warehouse_schema(organization_id);
	BEGIN
		PERFORM * FROM dalgo.warehouse_query(organization_id, sql, 0);
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
		RAISE EXCEPTION 'recipe does not type-check: %', msg USING ERRCODE = 'invalid_parameter_value';
	END;
END
$$;
COMMENT ON FUNCTION dalgo.check_recipe_sql(uuid, text) IS 'Internal: parse-analyze compiled recipe SQL in the organization''s warehouse';

CREATE FUNCTION dalgo.transformation_before_save() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	deps uuid[];
BEGIN
	IF TG_OP = 'UPDATE' AND NEW.recipe IS NOT DISTINCT FROM OLD.recipe THEN
		NEW.current_version := OLD.current_version;
		RETURN NEW;
	END IF;
	PERFORM dalgo.check_recipe_sql(NEW.organization_id, dalgo.compile_recipe(NEW.organization_id, NEW.recipe));
	deps := dalgo.recipe_dependencies(NEW.recipe);
	IF NEW.id = ANY (deps) OR EXISTS (
		WITH RECURSIVE walk(id) AS (
			SELECT unnest(deps)
			UNION
			SELECT d FROM walk JOIN dalgo.transformations t ON t.id = walk.id,
				unnest(dalgo.recipe_dependencies(t.recipe)) d)
		SELECT FROM walk WHERE walk.id = NEW.id) THEN
		RAISE EXCEPTION 'recipe: transformation % would depend on itself (a dependency cycle)', NEW.id
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NEW.output_table_name IS NOT NULL AND EXISTS (
		SELECT FROM dalgo.sources s WHERE s.organization_id = NEW.organization_id AND s.deleted_at IS NULL
		AND s.warehouse_table_name = NEW.output_table_name) THEN
		RAISE EXCEPTION 'output table "%" is a source''s warehouse table', NEW.output_table_name
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	NEW.current_version := CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE OLD.current_version + 1 END;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo.transformation_before_save() IS
	'BEFORE trigger on transformations: a new or changed recipe must compile and type-check, must not create a cycle, and bumps current_version';
CREATE TRIGGER before_save BEFORE INSERT OR UPDATE ON dalgo.transformations
	FOR EACH ROW EXECUTE FUNCTION dalgo.transformation_before_save();
COMMENT ON TRIGGER before_save ON dalgo.transformations IS 'Validates recipes and numbers versions';

CREATE FUNCTION dalgo.transformation_record_version() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO dalgo.transformation_versions (organization_id, transformation_id, version_number, recipe,
											   generated_sql, created_by_id, change_description)
	VALUES (NEW.organization_id, NEW.id, NEW.current_version, NEW.recipe,
			dalgo.compile_recipe(NEW.organization_id, NEW.recipe), dalgo.current_user_id(),
			nullif(current_setting('dalgo.change_description'), ''));
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo.transformation_record_version() IS
	'AFTER trigger on transformations: records a transformation_versions row for each new recipe (change_description from the setting dalgo.change_description)';
CREATE TRIGGER record_version AFTER INSERT OR UPDATE OF recipe ON dalgo.transformations
	FOR EACH ROW WHEN (NEW.current_version > 0) EXECUTE FUNCTION dalgo.transformation_record_version();
COMMENT ON TRIGGER record_version ON dalgo.transformations IS 'Records versions';

-- ---------------------------------------------------------------------------
-- Runs and previews
-- ---------------------------------------------------------------------------

-- Swap a freshly built warehouse table in under its real name.
CREATE FUNCTION dalgo.swap_warehouse_table(organization_id uuid, build_name text, table_name text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := 'org_' || replace(organization_id::text, '-', '');
BEGIN
	PERFORM dalgo.warehouse_execute(organization_id, format('DROP TABLE IF EXISTS %I.%I', schema_name, table_name));
	PERFORM dalgo.warehouse_execute(organization_id, format('ALTER TABLE %I.%I RENAME TO %I', schema_name, build_name, table_name));
END
$$;
COMMENT ON FUNCTION dalgo.swap_warehouse_table(uuid, text, text) IS 'Internal: replace a warehouse table by a freshly built one, atomically';

CREATE FUNCTION dalgo.build_transformation(transformation_id uuid, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t dalgo.transformations;
	sql text;
	schema_name text;
	build_name text := '_dalgo_build_' || replace(run_id::text, '-', '');
	n bigint;
	err text;
BEGIN
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = build_transformation.transformation_id;
	UPDATE dalgo.transformation_runs r SET version_number = t.current_version WHERE r.id = run_id;
	BEGIN
		IF t.output_table_name IS NULL THEN
			RAISE EXCEPTION 'transformation % has no output_table_name', t.id USING ERRCODE = 'invalid_parameter_value';
		END IF;
		schema_name := dalgo.warehouse_schema(t.organization_id);
		sql := dalgo.compile_recipe(t.organization_id, t.recipe);
		-- Build under a private name, then swap: readers never see a half-built table,
		-- and a failure leaves the previous output as it was.
		n := dalgo.warehouse_execute(t.organization_id, format('CREATE TABLE %I.%I AS %s', schema_name, build_name, sql));
		PERFORM dalgo.swap_warehouse_table(t.organization_id, build_name, t.output_table_name);
		PERFORM dalgo.register_warehouse_table(t.organization_id, t.output_table_name, NULL, t.id, n);
		UPDATE dalgo.transformations x SET last_run_at = now() WHERE x.id = t.id;
		UPDATE dalgo.transformation_runs r SET status = 'success', completed_at = clock_timestamp(),
			rows_affected = least(n, 2147483647), executed_sql = sql
		WHERE r.id = run_id;
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS err = MESSAGE_TEXT;
		UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(),
			error_message = err, executed_sql = sql
		WHERE r.id = run_id;
		RAISE WARNING 'transformation run % failed: %', run_id, err;
	END;
END
$$;
COMMENT ON FUNCTION dalgo.build_transformation(uuid, uuid) IS
	'Internal: build a transformation''s output for an existing run row (atomic swap) and record the outcome on it';

CREATE FUNCTION dalgo.run_transformation(transformation_id uuid, with_upstream boolean DEFAULT false)
	RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t dalgo.transformations;
	run_id uuid;
	up record;
BEGIN
	SELECT * INTO t FROM dalgo.transformations x
	WHERE x.id = run_transformation.transformation_id AND x.deleted_at IS NULL;
	IF NOT FOUND OR NOT dalgo.caller_may(t.organization_id, 'viewer') THEN
		RAISE EXCEPTION 'transformation % does not exist', transformation_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT dalgo.caller_may(t.organization_id, 'member') THEN
		RAISE EXCEPTION 'running a transformation needs the member role' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF with_upstream THEN
		FOR up IN SELECT * FROM dalgo.transformation_upstream(t.id) LOOP
			PERFORM dalgo.run_transformation(up.id, false);
		END LOOP;
	END IF;
	INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, version_number, status, started_at,
										   triggered_by_id)
	VALUES (t.organization_id, t.id, t.current_version, 'running', clock_timestamp(), dalgo.current_user_id())
	RETURNING id INTO run_id;
	PERFORM dalgo.build_transformation(t.id, run_id);
	RETURN run_id;
END
$$;
COMMENT ON FUNCTION dalgo.run_transformation(uuid, boolean) IS
	'Build a transformation''s output table (atomic swap) and record the run; with_upstream runs what it reads first. Members and above. A failure is recorded on the run row, reported as a WARNING, and leaves the previous output intact';

CREATE FUNCTION dalgo.preview_recipe(organization_id uuid, recipe jsonb, row_limit integer DEFAULT 50)
	RETURNS SETOF jsonb
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT dalgo.caller_may(organization_id, 'viewer') THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF row_limit IS NULL OR row_limit < 1 OR row_limit > 10000 THEN
		RAISE EXCEPTION 'row_limit must be between 1 and 10000' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM dalgo.warehouse_schema(organization_id);
	RETURN QUERY SELECT * FROM dalgo.warehouse_query(organization_id, dalgo.compile_recipe(organization_id, recipe), row_limit);
END
$$;
COMMENT ON FUNCTION dalgo.preview_recipe(uuid, jsonb, integer) IS
	'The first row_limit rows of a recipe''s result, as jsonb, for the editor''s live preview; members of the organization only; runs in the organization''s warehouse';

CREATE FUNCTION dalgo.read_warehouse_table(organization_id uuid, table_name text, row_limit integer DEFAULT 100)
	RETURNS SETOF jsonb
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
	AS $$ SELECT * FROM dalgo.preview_recipe(organization_id,
		jsonb_build_object('version', 1, 'source', jsonb_build_object('table', table_name), 'steps', '[]'::jsonb), row_limit) $$;
COMMENT ON FUNCTION dalgo.read_warehouse_table(uuid, text, integer) IS 'The rows of one of the organization''s warehouse tables, for its members';

REVOKE ALL ON FUNCTION dalgo.compile_recipe(uuid, jsonb), dalgo.warehouse_execute(uuid, text),
	dalgo.warehouse_query(uuid, text, integer), dalgo.caller_may(uuid, dalgo.member_role),
	dalgo.warehouse_schema(uuid), dalgo.create_warehouse_for_connection(),
	dalgo.register_warehouse_table(uuid, text, uuid, uuid, bigint), dalgo.recipe_dependencies(jsonb),
	dalgo.transformation_upstream(uuid), dalgo.check_recipe_sql(uuid, text), dalgo.transformation_before_save(),
	dalgo.transformation_record_version(), dalgo.run_transformation(uuid, boolean), dalgo.build_transformation(uuid, uuid),
	dalgo.swap_warehouse_table(uuid, text, text),
	dalgo.preview_recipe(uuid, jsonb, integer), dalgo.read_warehouse_table(uuid, text, integer)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.compile_recipe(uuid, jsonb), dalgo.caller_may(uuid, dalgo.member_role),
	dalgo.warehouse_schema(uuid), dalgo.recipe_dependencies(jsonb), dalgo.transformation_upstream(uuid),
	dalgo.check_recipe_sql(uuid, text), dalgo.run_transformation(uuid, boolean),
	dalgo.preview_recipe(uuid, jsonb, integer), dalgo.read_warehouse_table(uuid, text, integer)
	TO dalgo_authenticated, dalgo_service;

-- ---- sql/scheduler.sql ----
-- scheduler.sql: schedule time arithmetic, the run lifecycle the background
-- workers drive (claim, start, execute, fail, recover, expire, purge), the
-- connector protocol, and the functions to run schedules by hand.

CREATE FUNCTION dalgo.next_run(frequency dalgo.schedule_frequency, run_at_time time, run_at_day integer,
							   timezone text, after timestamptz)
	RETURNS timestamptz
	AS 'MODULE_PATHNAME', 'dalgo_next_run_sql'
	LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.next_run(dalgo.schedule_frequency, time, integer, text, timestamptz) IS
	'The first slot of a schedule strictly after "after": local dates in the time zone, DST gaps run at the gap''s end, repeated times run once at their second occurrence, monthly days clamp to the month''s end';

CREATE FUNCTION dalgo.wake_scheduler() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_wake_scheduler'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo.wake_scheduler() IS 'Statement trigger on schedules: wakes this database''s scheduler when the transaction commits';

CREATE FUNCTION dalgo.wake_launcher() RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_wake_launcher'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo.wake_launcher() IS 'Ask the launcher to start this database''s scheduler once the transaction commits (CREATE EXTENSION calls it)';

CREATE FUNCTION dalgo.scheduler_status()
	RETURNS TABLE (database_oid oid, dalgo_installed boolean, worker_pid integer, last_tick timestamptz,
				   due integer, running integer, runs_started bigint, last_error text)
	AS 'MODULE_PATHNAME', 'dalgo_scheduler_status'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION dalgo.scheduler_status() IS
	'Per database the launcher knows: whether dalgo is installed, the scheduler''s pid, its last tick, due and running counts, runs started, and the last error';

-- next_run_at follows the schedule's definition.
CREATE FUNCTION dalgo.schedule_before_save() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT NEW.is_active OR NEW.deleted_at IS NOT NULL THEN
		NEW.next_run_at := NULL;
	ELSIF TG_OP = 'INSERT' OR NEW.next_run_at IS NULL
		  OR (NEW.frequency, NEW.run_at_time, NEW.run_at_day, NEW.timezone)
			 IS DISTINCT FROM (OLD.frequency, OLD.run_at_time, OLD.run_at_day, OLD.timezone) THEN
		NEW.next_run_at := dalgo.next_run(NEW.frequency, NEW.run_at_time, NEW.run_at_day, NEW.timezone, now());
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo.schedule_before_save() IS
	'BEFORE trigger on schedules: keeps next_run_at current on insert, on a change of frequency, time, day or zone, and when is_active or deleted_at change';
CREATE TRIGGER before_save BEFORE INSERT OR UPDATE ON dalgo.schedules
	FOR EACH ROW EXECUTE FUNCTION dalgo.schedule_before_save();
COMMENT ON TRIGGER before_save ON dalgo.schedules IS 'Keeps next_run_at current';
CREATE TRIGGER wake_scheduler AFTER INSERT OR UPDATE OR DELETE ON dalgo.schedules
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo.wake_scheduler();
COMMENT ON TRIGGER wake_scheduler ON dalgo.schedules IS 'A change to schedules wakes the scheduler';

-- ---------------------------------------------------------------------------
-- The run lifecycle
-- ---------------------------------------------------------------------------

-- Which sources an external connector syncs (the rest sync in the database).
CREATE FUNCTION dalgo.is_connector_source(source_type dalgo.source_type) RETURNS boolean
	LANGUAGE sql IMMUTABLE PARALLEL SAFE
	AS $$ SELECT source_type OPERATOR(pg_catalog.=) ANY ('{google_sheets,api}'::dalgo.source_type[]) $$;
COMMENT ON FUNCTION dalgo.is_connector_source(dalgo.source_type) IS
	'True for sources an external connector syncs (google_sheets, api); postgres and csv sources sync in the database';

-- Claim due schedules: lock with SKIP LOCKED, advance next_run_at past "at"
-- (missed slots run once), skip a schedule whose previous run is still going,
-- and create the run row.  run_kind: 'o' output refresh, 's' in-database sync,
-- 'connector' (queued for a connector, NOTIFY dalgo_sync), 'skipped'.
CREATE FUNCTION dalgo.claim_due_schedules(at timestamptz, max_runs integer, only_schedule uuid DEFAULT NULL)
	RETURNS TABLE (schedule_id uuid, run_kind text, run_id uuid)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s dalgo.schedules;
	src dalgo.sources;
	out dalgo.outputs;
	busy boolean;
	det jsonb;
	rid uuid;
BEGIN
	IF max_runs <= 0 THEN
		RETURN;
	END IF;
	FOR s IN SELECT * FROM dalgo.schedules x
			 WHERE x.is_active AND x.deleted_at IS NULL AND x.next_run_at <= at
			   AND (only_schedule IS NULL OR x.id = only_schedule)
			 ORDER BY x.next_run_at LIMIT max_runs FOR UPDATE SKIP LOCKED
	LOOP
		det := jsonb_build_object('schedule_id', s.id, 'attempt', 1,
								  'lag_ms', round(extract(epoch FROM clock_timestamp() - s.next_run_at) * 1000));
		UPDATE dalgo.schedules x SET last_run_at = at,
			next_run_at = dalgo.next_run(s.frequency, s.run_at_time, s.run_at_day, s.timezone, greatest(at, s.next_run_at))
		WHERE x.id = s.id;
		schedule_id := s.id;
		IF s.source_id IS NOT NULL THEN
			SELECT * INTO src FROM dalgo.sources x WHERE x.id = s.source_id;
			busy := EXISTS (SELECT FROM dalgo.sync_runs r WHERE r.source_id = s.source_id
							AND r.status IN ('pending', 'running') AND r.deleted_at IS NULL);
			IF busy THEN
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, started_at, completed_at, error_message, details)
				VALUES (s.organization_id, s.source_id, 'failed', clock_timestamp(), clock_timestamp(),
						'skipped: the previous run of this schedule is still going', det || '{"skipped": true}')
				RETURNING id INTO rid;
				run_kind := 'skipped';
			ELSE
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, details)
				VALUES (s.organization_id, s.source_id, 'pending', det) RETURNING id INTO rid;
				IF dalgo.is_connector_source(src.source_type) THEN
					PERFORM pg_notify('dalgo_sync', rid::text);
					run_kind := 'connector';
				ELSE
					run_kind := 's';
				END IF;
			END IF;
		ELSE
			SELECT * INTO out FROM dalgo.outputs x WHERE x.id = s.output_id;
			busy := EXISTS (SELECT FROM dalgo.transformation_runs r WHERE r.transformation_id = out.transformation_id
							AND r.status IN ('pending', 'running') AND r.details->>'schedule_id' = s.id::text);
			INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, started_at, completed_at,
												   error_message, details)
			VALUES (s.organization_id, out.transformation_id, CASE WHEN busy THEN 'failed' ELSE 'pending' END::dalgo.run_status,
					CASE WHEN busy THEN clock_timestamp() END, CASE WHEN busy THEN clock_timestamp() END,
					CASE WHEN busy THEN 'skipped: the previous run of this schedule is still going' END,
					det || CASE WHEN busy THEN '{"skipped": true}'::jsonb ELSE '{}'::jsonb END)
			RETURNING id INTO rid;
			run_kind := CASE WHEN busy THEN 'skipped' ELSE 'o' END;
		END IF;
		run_id := rid;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo.claim_due_schedules(timestamptz, integer, uuid) IS
	'Internal: claim up to max_runs due schedules (FOR UPDATE SKIP LOCKED), advance them and create their run rows';

-- Take the oldest pending in-database run (SKIP LOCKED) and mark it running;
-- run workers loop on this until nothing is left.
CREATE FUNCTION dalgo.take_pending_run(OUT run_kind text, OUT run_id uuid)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	SELECT 's', r.id INTO run_kind, run_id FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
	WHERE r.status = 'pending' AND NOT dalgo.is_connector_source(s.source_type) AND r.details ? 'schedule_id'
	ORDER BY r.created_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED;
	IF NOT FOUND THEN
		SELECT 'o', r.id INTO run_kind, run_id FROM dalgo.transformation_runs r
		WHERE r.status = 'pending' AND r.details ? 'schedule_id'
		ORDER BY r.created_at LIMIT 1 FOR UPDATE SKIP LOCKED;
	END IF;
	IF run_id IS NOT NULL THEN
		PERFORM dalgo.start_scheduled_run(run_kind, run_id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.take_pending_run() IS 'Internal: a run worker takes the oldest pending in-database run and marks it running';

CREATE FUNCTION dalgo.pending_runs() RETURNS integer
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
	AS $$ SELECT (SELECT count(*) FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
				  WHERE r.status = 'pending' AND NOT dalgo.is_connector_source(s.source_type) AND r.details ? 'schedule_id')::integer
			   + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.status = 'pending' AND r.details ? 'schedule_id')::integer $$;
COMMENT ON FUNCTION dalgo.pending_runs() IS 'Internal: in-database runs waiting for a run worker';

CREATE INDEX sync_runs_active_idx ON dalgo.sync_runs (created_at) WHERE status IN ('pending', 'running');
COMMENT ON INDEX dalgo.sync_runs_active_idx IS 'Pending and running sync runs: the run queue and the one-run-at-a-time check';
CREATE INDEX transformation_runs_active_idx ON dalgo.transformation_runs (created_at) WHERE status IN ('pending', 'running');
COMMENT ON INDEX dalgo.transformation_runs_active_idx IS 'Pending and running transformation runs: the run queue and the one-run-at-a-time check';

CREATE FUNCTION dalgo.start_scheduled_run(run_kind text, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF run_kind = 's' THEN
		UPDATE dalgo.sync_runs r SET status = 'running', started_at = clock_timestamp(),
			details = r.details || jsonb_build_object('runner_pid', pg_backend_pid())
		WHERE r.id = run_id;
	ELSE
		UPDATE dalgo.transformation_runs r SET status = 'running', started_at = clock_timestamp(),
			details = r.details || jsonb_build_object('runner_pid', pg_backend_pid())
		WHERE r.id = run_id;
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.start_scheduled_run(text, uuid) IS 'Internal: mark a claimed run running (committed before it executes)';

CREATE FUNCTION dalgo.fail_scheduled_run(run_kind text, run_id uuid, message text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF run_kind = 's' THEN
		UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(), error_message = message
		WHERE r.id = run_id;
	ELSE
		UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(), error_message = message
		WHERE r.id = run_id;
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.fail_scheduled_run(text, uuid, text) IS 'Internal: record a run''s failure';

-- The relation a postgres source syncs from: config {"relation": "schema.table"}
-- or {"schema": ..., "table": ...}; never dalgo's own schema.
CREATE FUNCTION dalgo.source_relation(config jsonb) RETURNS text
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	parts text[];
	rel text;
BEGIN
	IF config ? 'relation' THEN
		parts := parse_ident(config->>'relation');
	ELSIF config ? 'table' THEN
		parts := ARRAY[coalesce(config->>'schema', 'public'), config->>'table'];
	ELSE
		RAISE EXCEPTION 'a postgres source needs config.relation (or config.schema and config.table)'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF array_length(parts, 1) = 1 THEN
		parts := ARRAY['public'] || parts;
	END IF;
	IF array_length(parts, 1) <> 2 OR parts[1] IN ('dalgo', 'pg_catalog', 'information_schema') OR parts[1] LIKE 'pg\_%' THEN
		RAISE EXCEPTION 'source relation "%" is not allowed', array_to_string(parts, '.')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	rel := format('%I.%I', parts[1], parts[2]);
	IF to_regclass(rel) IS NULL THEN
		RAISE EXCEPTION 'source relation % does not exist', rel USING ERRCODE = 'undefined_table';
	END IF;
	RETURN rel;
END
$$;
COMMENT ON FUNCTION dalgo.source_relation(jsonb) IS 'Internal: the relation a postgres source reads, from its config';

-- An in-database sync: postgres sources copy a table, view or foreign table the
-- organization's warehouse role may read; csv sources load a file under dalgo.csv_dir.
CREATE FUNCTION dalgo.sync_source(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	src dalgo.sources;
	schema_name text;
	build_name text := '_dalgo_sync_' || replace(run_id::text, '-', '');
	target text;
	n bigint;
	relation text;
	path text;
	header text;
	cols text;
BEGIN
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.id = run_id;
	SELECT * INTO src FROM dalgo.sources x WHERE x.id = r.source_id AND x.deleted_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'the source of run % no longer exists', run_id;
	END IF;
	schema_name := dalgo.warehouse_schema(src.organization_id);
	target := coalesce(src.warehouse_table_name, 'source_' || left(replace(src.id::text, '-', ''), 12));
	IF src.source_type = 'postgres' THEN
		-- Read as the warehouse role: it sees only what it was granted.
		relation := dalgo.source_relation(src.config);
		n := dalgo.warehouse_execute(src.organization_id,
			format('CREATE TABLE %I.%I AS SELECT * FROM %s', schema_name, build_name, relation));
	ELSIF src.source_type = 'csv' THEN
		path := dalgo.csv_path(src.config->>'path');
		header := split_part(pg_read_file(path, 0, 65536), E'\n', 1);
		SELECT string_agg(format('%I text', trim(both '"' FROM trim(c))), ', ') INTO cols
		FROM unnest(string_to_array(rtrim(header, E'\r'), ',')) c;
		IF cols IS NULL THEN
			RAISE EXCEPTION 'csv file % has no header line', src.config->>'path' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		PERFORM dalgo.warehouse_execute(src.organization_id, format('CREATE TABLE %I.%I (%s)', schema_name, build_name, cols));
		EXECUTE format('COPY %I.%I FROM %L WITH (FORMAT csv, HEADER true)', schema_name, build_name, path);
		GET DIAGNOSTICS n = ROW_COUNT;
	ELSE
		RAISE EXCEPTION '% sources are synced by a connector', src.source_type;
	END IF;
	PERFORM dalgo.swap_warehouse_table(src.organization_id, build_name, target);
	PERFORM dalgo.register_warehouse_table(src.organization_id, target, src.id, NULL, n);

	-- source_schemas: columns, types, order and nullability of what was synced.
	DELETE FROM dalgo.source_schemas x WHERE x.source_id = src.id;
	INSERT INTO dalgo.source_schemas (organization_id, source_id, column_name, column_type, column_order, is_nullable)
	SELECT src.organization_id, src.id, a.attname, format_type(a.atttypid, a.atttypmod), a.attnum, NOT a.attnotnull
	FROM pg_attribute a
	WHERE a.attrelid = to_regclass(format('%I.%I', schema_name, target)) AND a.attnum > 0 AND NOT a.attisdropped;
	IF relation IS NOT NULL THEN
		UPDATE dalgo.source_schemas x SET is_nullable = NOT a.attnotnull
		FROM pg_attribute a
		WHERE x.source_id = src.id AND a.attrelid = relation::regclass
		  AND a.attname = x.column_name;
	END IF;

	UPDATE dalgo.sources x SET last_synced_at = now(), warehouse_table_name = target WHERE x.id = src.id;
	UPDATE dalgo.sync_runs x SET status = 'success', completed_at = clock_timestamp(), rows_synced = least(n, 2147483647)
	WHERE x.id = run_id;
END
$$;
COMMENT ON FUNCTION dalgo.sync_source(uuid) IS 'Internal: an in-database sync of a postgres or csv source into its warehouse table';

-- An output refresh: the transformation (and what it reads), then the destination.
CREATE FUNCTION dalgo.refresh_output(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.transformation_runs;
	o dalgo.outputs;
	t dalgo.transformations;
	schema_name text;
	dest text;
	kind text;
BEGIN
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;
	SELECT * INTO o FROM dalgo.outputs x WHERE x.id = (SELECT output_id FROM dalgo.schedules WHERE id = (r.details->>'schedule_id')::uuid);
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = r.transformation_id;
	FOR t IN SELECT x.* FROM dalgo.transformation_upstream(r.transformation_id) u JOIN dalgo.transformations x ON x.id = u.id LOOP
		PERFORM dalgo.run_transformation(t.id, false);
	END LOOP;
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = r.transformation_id;
	PERFORM dalgo.build_transformation(t.id, run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;
	IF r.status <> 'success' THEN
		RETURN;
	END IF;
	schema_name := 'org_' || replace(o.organization_id::text, '-', '');
	kind := coalesce(o.destination_config->>'type', 'table');
	dest := coalesce(o.destination_config->>'name', t.output_table_name);
	IF kind = 'view' THEN
		PERFORM dalgo.warehouse_execute(o.organization_id, format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I',
			schema_name, dest, schema_name, t.output_table_name));
	ELSIF kind = 'table' AND dest <> t.output_table_name THEN
		PERFORM dalgo.warehouse_execute(o.organization_id, format('CREATE TABLE %I.%I AS SELECT * FROM %I.%I',
			schema_name, '_dalgo_out_' || replace(run_id::text, '-', ''), schema_name, t.output_table_name));
		PERFORM dalgo.swap_warehouse_table(o.organization_id, '_dalgo_out_' || replace(run_id::text, '-', ''), dest);
	ELSIF kind NOT IN ('table', 'view') THEN
		RAISE EXCEPTION 'unknown destination type "%" (use table or view)', kind USING ERRCODE = 'invalid_parameter_value';
	END IF;
	UPDATE dalgo.outputs x SET last_refreshed_at = now() WHERE x.id = o.id;
END
$$;
COMMENT ON FUNCTION dalgo.refresh_output(uuid) IS
	'Internal: run an output''s transformation with its upstream, then refresh destination_config ({"type": "table"|"view", "name": ...})';

CREATE FUNCTION dalgo.execute_scheduled_run(run_kind text, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF run_kind = 's' THEN
		PERFORM dalgo.sync_source(run_id);
	ELSIF run_kind = 'o' THEN
		PERFORM dalgo.refresh_output(run_id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.execute_scheduled_run(text, uuid) IS 'Internal: execute a claimed run (what a run worker does)';

CREATE FUNCTION dalgo.recover_interrupted_runs() RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	m integer;
	live integer[] := ARRAY(SELECT pid FROM pg_stat_activity WHERE backend_type = 'dalgo run' OR pid = pg_backend_pid());
BEGIN
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = 'the server restarted while the run was in progress'
	FROM dalgo.sources s
	WHERE s.id = r.source_id AND NOT dalgo.is_connector_source(s.source_type) AND r.status = 'running'
	  AND r.details ? 'schedule_id' AND NOT coalesce((r.details->>'runner_pid')::integer = ANY (live), false);
	GET DIAGNOSTICS n = ROW_COUNT;
	UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = 'the server restarted while the run was in progress'
	WHERE r.status = 'running' AND r.details ? 'schedule_id'
	  AND NOT coalesce((r.details->>'runner_pid')::integer = ANY (live), false);
	GET DIAGNOSTICS m = ROW_COUNT;
	RETURN n + m;
END
$$;
COMMENT ON FUNCTION dalgo.recover_interrupted_runs() IS
	'Mark scheduled runs left running by no live run worker (a crash or restart interrupted them) as failed; the scheduler calls it when it starts (pending runs simply wait for a worker)';

CREATE FUNCTION dalgo.expire_connector_runs(timeout_seconds integer) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
BEGIN
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = format('no connector claimed the run within %s seconds', timeout_seconds)
	WHERE r.status = 'pending' AND r.created_at < now() - make_interval(secs => timeout_seconds)
	  AND EXISTS (SELECT FROM dalgo.sources s WHERE s.id = r.source_id AND dalgo.is_connector_source(s.source_type));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo.expire_connector_runs(integer) IS 'Mark connector runs nobody claimed in time as failed';

CREATE FUNCTION dalgo.purge_run_history(days integer) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
	m bigint;
BEGIN
	DELETE FROM dalgo.sync_runs WHERE status IN ('success', 'failed') AND completed_at < now() - make_interval(days => days);
	GET DIAGNOSTICS n = ROW_COUNT;
	DELETE FROM dalgo.transformation_runs WHERE status IN ('success', 'failed') AND completed_at < now() - make_interval(days => days);
	GET DIAGNOSTICS m = ROW_COUNT;
	RETURN n + m;
END
$$;
COMMENT ON FUNCTION dalgo.purge_run_history(integer) IS 'Delete finished runs older than the given number of days (dalgo.run_history_days)';

-- ---------------------------------------------------------------------------
-- Running by hand
-- ---------------------------------------------------------------------------

-- Execute claimed runs here and now, each in a subtransaction (the worker's
-- code path without the worker).
CREATE FUNCTION dalgo.execute_claimed(claimed_runs uuid[], kinds text[]) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	msg text;
	n integer := 0;
BEGIN
	FOR i IN 1..coalesce(array_length(claimed_runs, 1), 0) LOOP
		CONTINUE WHEN kinds[i] NOT IN ('s', 'o');
		PERFORM dalgo.start_scheduled_run(kinds[i], claimed_runs[i]);
		BEGIN
			PERFORM dalgo.execute_scheduled_run(kinds[i], claimed_runs[i]);
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
			PERFORM dalgo.fail_scheduled_run(kinds[i], claimed_runs[i], msg);
		END;
		n := n + 1;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo.execute_claimed(uuid[], text[]) IS 'Internal: execute claimed runs in this session';

CREATE FUNCTION dalgo.run_due_schedules(at timestamptz DEFAULT now()) RETURNS integer
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ids uuid[];
	kinds text[];
BEGIN
	IF dalgo.current_user_id() IS NOT NULL OR NOT pg_has_role(session_user, 'dalgo_service', 'MEMBER') THEN
		RAISE EXCEPTION 'run_due_schedules is for dalgo_service and superusers' USING ERRCODE = 'insufficient_privilege';
	END IF;
	SELECT array_agg(c.run_id), array_agg(c.run_kind) INTO ids, kinds FROM dalgo.claim_due_schedules(at, 1000) c;
	PERFORM dalgo.execute_claimed(ids, kinds);
	RETURN (SELECT count(*) FROM unnest(kinds) k WHERE k IN ('s', 'o', 'connector'));
END
$$;
COMMENT ON FUNCTION dalgo.run_due_schedules(timestamptz) IS
	'Claim every schedule due at "at" and run it synchronously, through the scheduler''s own claim and run code; returns the runs started (skips not counted). dalgo_service and superusers';

CREATE FUNCTION dalgo.run_schedule_now(schedule_id uuid) RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s dalgo.schedules;
	c record;
BEGIN
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = run_schedule_now.schedule_id AND x.deleted_at IS NULL;
	IF NOT FOUND OR NOT dalgo.caller_may(s.organization_id, 'admin') THEN
		RAISE EXCEPTION 'schedule % does not exist or you are not an admin of its organization', schedule_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- Make it due now and claim it like the scheduler would (a concurrent claim wins the lock).
	PERFORM FROM dalgo.schedules x WHERE x.id = s.id FOR UPDATE;
	UPDATE dalgo.schedules x SET next_run_at = clock_timestamp(), is_active = true WHERE x.id = s.id;
	SELECT * INTO c FROM dalgo.claim_due_schedules(clock_timestamp(), 1, s.id);
	PERFORM dalgo.execute_claimed(ARRAY[c.run_id], ARRAY[c.run_kind]);
	UPDATE dalgo.schedules x SET is_active = s.is_active,
		next_run_at = CASE WHEN s.is_active THEN dalgo.next_run(s.frequency, s.run_at_time, s.run_at_day, s.timezone, now()) END
	WHERE x.id = s.id;
	RETURN c.run_id;
END
$$;
COMMENT ON FUNCTION dalgo.run_schedule_now(uuid) IS 'Run a schedule now, synchronously (admins of its organization); returns the run id';

-- ---------------------------------------------------------------------------
-- The connector protocol
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.claim_sync_run() RETURNS dalgo.sync_runs
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
BEGIN
	SELECT x.* INTO r FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
	WHERE x.status = 'pending' AND dalgo.is_connector_source(s.source_type) AND x.deleted_at IS NULL
	ORDER BY x.created_at LIMIT 1 FOR UPDATE OF x SKIP LOCKED;
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	UPDATE dalgo.sync_runs x SET status = 'running', started_at = clock_timestamp() WHERE x.id = r.id RETURNING * INTO r;
	RETURN r;
END
$$;
COMMENT ON FUNCTION dalgo.claim_sync_run() IS
	'Connector protocol: claim the oldest pending connector sync run (SKIP LOCKED) and mark it running; NULL when there is none';

CREATE FUNCTION dalgo.complete_sync_run(run_id uuid, rows_synced integer, error_message text DEFAULT NULL,
										details jsonb DEFAULT '{}')
	RETURNS dalgo.sync_runs
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
BEGIN
	UPDATE dalgo.sync_runs x SET status = CASE WHEN complete_sync_run.error_message IS NULL THEN 'success' ELSE 'failed' END::dalgo.run_status,
		completed_at = clock_timestamp(), rows_synced = complete_sync_run.rows_synced,
		error_message = complete_sync_run.error_message, details = x.details || coalesce(complete_sync_run.details, '{}')
	WHERE x.id = run_id AND x.status = 'running'
	RETURNING * INTO r;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'sync run % is not running (claim it first)', run_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF r.status = 'success' THEN
		UPDATE dalgo.sources s SET last_synced_at = now() WHERE s.id = r.source_id;
	END IF;
	RETURN r;
END
$$;
COMMENT ON FUNCTION dalgo.complete_sync_run(uuid, integer, text, jsonb) IS
	'Connector protocol: finish a claimed run with its row count, or with an error message (then it fails)';

CREATE FUNCTION dalgo.csv_path(relative_path text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_csv_path'
	LANGUAGE C STABLE;
COMMENT ON FUNCTION dalgo.csv_path(text) IS 'Internal: resolve a csv source''s path under dalgo.csv_dir; paths that leave it are refused';

REVOKE ALL ON FUNCTION dalgo.next_run(dalgo.schedule_frequency, time, integer, text, timestamptz),
	dalgo.wake_scheduler(), dalgo.wake_launcher(), dalgo.scheduler_status(), dalgo.schedule_before_save(),
	dalgo.claim_due_schedules(timestamptz, integer, uuid), dalgo.start_scheduled_run(text, uuid),
	dalgo.take_pending_run(), dalgo.pending_runs(),
	dalgo.fail_scheduled_run(text, uuid, text), dalgo.source_relation(jsonb),
	dalgo.sync_source(uuid), dalgo.refresh_output(uuid), dalgo.execute_scheduled_run(text, uuid),
	dalgo.recover_interrupted_runs(), dalgo.expire_connector_runs(integer), dalgo.purge_run_history(integer),
	dalgo.execute_claimed(uuid[], text[]), dalgo.run_due_schedules(timestamptz), dalgo.run_schedule_now(uuid),
	dalgo.claim_sync_run(), dalgo.complete_sync_run(uuid, integer, text, jsonb), dalgo.csv_path(text)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.next_run(dalgo.schedule_frequency, time, integer, text, timestamptz)
	TO dalgo_authenticated, dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.run_schedule_now(uuid) TO dalgo_authenticated, dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.run_due_schedules(timestamptz), dalgo.scheduler_status(),
	dalgo.claim_sync_run(), dalgo.complete_sync_run(uuid, integer, text, jsonb) TO dalgo_service;

SELECT dalgo.wake_launcher();
