-- warehouse_first_use_race: two first uses of a new organization's
-- warehouse at once (two syncs, or a sync and a preview) both succeed; the
-- second waits for the first and finds its role and schema instead of
-- failing on pg_authid's unique role name.  Two sessions through dblink.
\set ECHO none
SET client_min_messages = warning;
INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000e7', 'Race WH', 'race-wh');
SELECT format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
	split_part(current_setting('unix_socket_directories'), ',', 1)) AS conn \gset
SELECT dblink_connect('first', :'conn') AS first_connected, dblink_connect('second', :'conn') AS second_connected;
\set ECHO queries
SELECT dblink_exec('first', 'BEGIN') AS first_begins;
SELECT s AS first_made FROM dblink('first',
	$$SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000e7')$$) AS t(s text);
-- The second asks while the first has not committed: it waits.
SELECT dblink_send_query('second',
	$$SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000e7')$$) AS second_sent;
SELECT pg_sleep(0.3);
SELECT dblink_is_busy('second') AS second_waits;
SELECT dblink_exec('first', 'COMMIT') AS first_commits;
SELECT s AS second_found FROM dblink_get_result('second') AS t(s text);
SELECT dblink_disconnect('first'), dblink_disconnect('second');
SELECT count(*) AS roles FROM pg_roles WHERE rolname = dalgo_internal.warehouse_role_name('22222222-0000-4000-8000-0000000000e7');
\set ECHO none
DELETE FROM dalgo.organizations WHERE id = '22222222-0000-4000-8000-0000000000e7';
SELECT count(*) AS left_behind FROM pg_roles WHERE rolname = dalgo_internal.warehouse_role_name('22222222-0000-4000-8000-0000000000e7');
