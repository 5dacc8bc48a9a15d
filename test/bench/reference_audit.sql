-- A reference audit trigger in PL/pgSQL, for the audit benchmark: a
-- row-level AFTER trigger that writes the same audit row dalgo does
-- (actor, action, table, row id, organization, the row or the changed
-- columns, client address, user agent) into dalgo.audit_logs.
CREATE FUNCTION bench.plpgsql_audit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	diff jsonb;
BEGIN
	IF TG_OP = 'UPDATE' THEN
		SELECT jsonb_object_agg(n.key, jsonb_build_object('old', o.value, 'new', n.value)) INTO diff
		FROM jsonb_each(to_jsonb(NEW)) n JOIN jsonb_each(to_jsonb(OLD)) o USING (key)
		WHERE n.value IS DISTINCT FROM o.value AND n.key <> 'updated_at';
		IF diff IS NULL THEN
			RETURN NULL;
		END IF;
	END IF;
	INSERT INTO dalgo.audit_logs (organization_id, user_id, action, resource_type, resource_id, details,
								  ip_address, user_agent)
	VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.organization_id ELSE NEW.organization_id END,
			dalgo.current_user_id(), lower(TG_OP), TG_TABLE_NAME,
			CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END,
			CASE TG_OP WHEN 'INSERT' THEN to_jsonb(NEW) WHEN 'DELETE' THEN to_jsonb(OLD) ELSE diff END,
			coalesce(nullif(current_setting('dalgo.client_ip'), ''), inet_client_addr()::text),
			coalesce(nullif(current_setting('dalgo.user_agent'), ''), current_setting('application_name')));
	RETURN NULL;
END
$$;
