-- membership_fuzz: 3,000 random membership changes - inserts, role changes,
-- soft deletes, restores, hard deletes and moves - by random users of every
-- role (owner, admin, member, viewer, non-member), through RLS as
-- dalgo_authenticated or, a quarter of them, as dalgo_service acting for
-- the user (RLS passes; the guard alone stands).  After every accepted
-- change: every organization
-- still has a live owner; nobody raised their own role or handed out a role
-- above their own (inserting, raising, restoring and moving a row all hand
-- one out); only owners removed an owner; members and viewers changed
-- nothing but their own leaving.  Deterministic: setseed and fixed ids.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
SELECT plan(8);

-- Three organizations, eight users; each organization starts with one
-- owner and a few others.
INSERT INTO dalgo.users (id, email)
	SELECT ('11111111-0000-4000-8000-0000000000' || lpad(i::text, 2, '0'))::uuid, 'fuzz' || i || '@example.org'
	FROM generate_series(1, 8) i;
INSERT INTO dalgo.organizations (id, name, slug)
	SELECT ('22222222-0000-4000-8000-0000000000' || lpad(i::text, 2, '0'))::uuid, 'Fuzz ' || i, 'fuzz-' || i
	FROM generate_series(1, 3) i;
INSERT INTO dalgo.organization_members (id, organization_id, user_id, role)
	SELECT ('99999999-0000-4000-8000-' || lpad((o * 100 + u)::text, 12, '0'))::uuid,
		   ('22222222-0000-4000-8000-0000000000' || lpad(o::text, 2, '0'))::uuid,
		   ('11111111-0000-4000-8000-0000000000' || lpad(u::text, 2, '0'))::uuid,
		   (ARRAY['owner', 'admin', 'member', 'viewer', 'admin'])[1 + (u + o) % 5]::dalgo.member_role
	FROM generate_series(1, 3) o, generate_series(1, 8) u
	WHERE (u * o) % 7 <> 3;

CREATE TEMP TABLE fuzz_log (i integer, actor uuid, actor_role dalgo.member_role, via text, op text, outcome text, detail text);
GRANT ALL ON fuzz_log TO PUBLIC;

CREATE FUNCTION pg_temp.live_role(org uuid, usr uuid) RETURNS dalgo.member_role LANGUAGE sql AS $$
	SELECT m.role FROM dalgo.organization_members m JOIN dalgo.organizations o ON o.id = m.organization_id
	WHERE m.organization_id = org AND m.user_id = usr AND m.deleted_at IS NULL AND o.deleted_at IS NULL $$;

CREATE FUNCTION pg_temp.fuzz(n integer) RETURNS void LANGUAGE plpgsql AS $fuzz$
DECLARE
	roles dalgo.member_role[] := ARRAY['viewer', 'member', 'admin', 'admin', 'owner'];
	ops text[] := ARRAY['insert', 'role', 'soft-delete', 'restore', 'delete', 'move-user', 'move-org', 'leave'];
	org uuid;
	actor uuid;
	actor_role dalgo.member_role;
	op text;
	target record;
	other uuid;
	sql text;
	outcome text;
	bad text[];
	found_bad text;
	before_op dalgo.organization_members[];
	via text;
BEGIN
	PERFORM setseed(0.2023);
	FOR i IN 1 .. n LOOP
		org := ('22222222-0000-4000-8000-0000000000' || lpad((1 + floor(random() * 3))::int::text, 2, '0'))::uuid;
		-- Mostly someone with a role in the organization, sometimes anyone.
		IF random() < 0.7 THEN
			SELECT m.user_id INTO actor FROM dalgo.organization_members m
			WHERE m.organization_id = org AND m.deleted_at IS NULL
			ORDER BY m.id OFFSET floor(random() * (SELECT count(*) FROM dalgo.organization_members x
												   WHERE x.organization_id = org AND x.deleted_at IS NULL)) LIMIT 1;
		ELSE
			actor := ('11111111-0000-4000-8000-0000000000' || lpad((1 + floor(random() * 8))::int::text, 2, '0'))::uuid;
		END IF;
		actor_role := pg_temp.live_role(org, actor);
		op := ops[1 + floor(random() * array_length(ops, 1))::int];
		other := ('11111111-0000-4000-8000-0000000000' || lpad((1 + floor(random() * 8))::int::text, 2, '0'))::uuid;
		-- Through RLS as dalgo_authenticated, or as dalgo_service acting for
		-- the user, which RLS lets through: then the guard alone stands.
		via := CASE WHEN random() < 0.25 THEN 'dalgo_service' ELSE 'dalgo_authenticated' END;
		-- A restore mostly picks a removed row, a soft delete a live one.
		SELECT * INTO target FROM dalgo.organization_members m
		WHERE m.organization_id = org
		  AND (CASE op WHEN 'restore' THEN m.deleted_at IS NOT NULL WHEN 'soft-delete' THEN m.deleted_at IS NULL ELSE true END
			   OR random() < 0.2)
		ORDER BY random() LIMIT 1;
		sql := CASE op
			WHEN 'insert' THEN format('INSERT INTO dalgo.organization_members (id, organization_id, user_id, role, deleted_at) VALUES (%L, %L, %L, %L, %s)',
									  md5('fuzz' || i)::uuid, org, other, roles[1 + floor(random() * 5)::int],
									  CASE WHEN random() < 0.3 THEN 'now()' ELSE 'NULL' END)
			WHEN 'role' THEN format('UPDATE dalgo.organization_members SET role = %L WHERE id = %L', roles[1 + floor(random() * 5)::int], target.id)
			WHEN 'soft-delete' THEN format('UPDATE dalgo.organization_members SET deleted_at = now() WHERE id = %L', target.id)
			WHEN 'restore' THEN format('UPDATE dalgo.organization_members SET deleted_at = NULL WHERE id = %L', target.id)
			WHEN 'delete' THEN format('DELETE FROM dalgo.organization_members WHERE id = %L', target.id)
			WHEN 'move-user' THEN format('UPDATE dalgo.organization_members SET user_id = %L WHERE id = %L', other, target.id)
			WHEN 'move-org' THEN format('UPDATE dalgo.organization_members SET organization_id = %L WHERE id = %L',
										('22222222-0000-4000-8000-0000000000' || lpad((1 + floor(random() * 3))::int::text, 2, '0'))::uuid, target.id)
			WHEN 'leave' THEN format('DELETE FROM dalgo.organization_members WHERE organization_id = %L AND user_id = %L', org, actor)
		END;

		before_op := ARRAY(SELECT m FROM dalgo.organization_members m);
		BEGIN
			PERFORM set_config('dalgo.user_id', actor::text, true);
			PERFORM set_config('role', via, true);
			EXECUTE sql;
			RESET ROLE;
			PERFORM set_config('dalgo.user_id', '', true);
			outcome := 'accepted';
		EXCEPTION
			WHEN insufficient_privilege OR check_violation OR unique_violation THEN
				outcome := 'refused ' || SQLSTATE;
			WHEN OTHERS THEN
				outcome := 'error ' || SQLSTATE || ': ' || SQLERRM;
		END;

		-- The invariants, checked on the tables as they are now.
		bad := '{}';
		IF outcome LIKE 'error%' THEN
			bad := ARRAY[outcome];
		ELSIF outcome = 'accepted' THEN
			SELECT string_agg(format('organization %s has no live owner', o.id), '; ') INTO found_bad
			FROM dalgo.organizations o
			WHERE NOT EXISTS (SELECT FROM dalgo.organization_members m
							  WHERE m.organization_id = o.id AND m.role = 'owner' AND m.deleted_at IS NULL);
			bad := bad || found_bad;
			-- Rows that now give a role they did not give before (new, restored, raised or moved).
			SELECT string_agg(format('%s gave %s the role %s (actor is %s)',
					 op, a.user_id, a.role, coalesce(actor_role::text, 'no member')), '; ') INTO found_bad
			FROM dalgo.organization_members a LEFT JOIN unnest(before_op) b ON b.id = a.id
			WHERE a.deleted_at IS NULL
			  AND (b.id IS NULL OR b.deleted_at IS NOT NULL OR a.role > b.role
				   OR a.user_id <> b.user_id OR a.organization_id <> b.organization_id)
			  AND (actor_role IS NULL OR a.role > actor_role);
			bad := bad || found_bad;
			-- Owner rows that stopped being live owners.
			SELECT string_agg(format('%s removed owner %s (actor is %s)',
					 op, b.user_id, coalesce(actor_role::text, 'no member')), '; ') INTO found_bad
			FROM unnest(before_op) b LEFT JOIN dalgo.organization_members a ON a.id = b.id
			WHERE b.role = 'owner' AND b.deleted_at IS NULL
			  AND (a.id IS NULL OR a.role <> 'owner' OR a.deleted_at IS NOT NULL)
			  AND actor_role IS DISTINCT FROM 'owner';
			bad := bad || found_bad;
			-- Below admin, the only change is leaving (RLS's part).
			IF via = 'dalgo_authenticated' AND (actor_role IS NULL OR actor_role < 'admin') THEN
				SELECT string_agg(format('%s by a %s changed membership %s', op,
						 coalesce(actor_role::text, 'non-member'), coalesce(a.id, b.id)), '; ') INTO found_bad
				FROM dalgo.organization_members a FULL JOIN unnest(before_op) b ON b.id = a.id
				WHERE (a.id IS NULL AND b.user_id <> actor) OR b.id IS NULL
				   OR (a.id IS NOT NULL AND b.id IS NOT NULL AND (a.role, a.user_id, a.organization_id, a.deleted_at)
						IS DISTINCT FROM (b.role, b.user_id, b.organization_id, b.deleted_at));
				bad := bad || found_bad;
			END IF;
			IF NOT EXISTS (SELECT FROM dalgo.organization_members a FULL JOIN unnest(before_op) b ON b.id = a.id
						   WHERE a IS DISTINCT FROM b) THEN
				outcome := 'no change';
			END IF;
		END IF;
		INSERT INTO fuzz_log VALUES (i, actor, actor_role, via, op, outcome, nullif(array_to_string(bad, '; '), ''));
	END LOOP;
END
$fuzz$;

SELECT pg_temp.fuzz(3000) \g /dev/null

SELECT is_empty($$SELECT format('#%s %s by %s: %s', i, op, coalesce(actor_role::text, 'non-member'), detail)
	FROM fuzz_log WHERE detail IS NOT NULL ORDER BY i$$,
	'no accepted change broke an invariant, and nothing failed unexpectedly');
SELECT is_empty($$SELECT o.slug FROM dalgo.organizations o WHERE NOT EXISTS (SELECT FROM dalgo.organization_members m
	WHERE m.organization_id = o.id AND m.role = 'owner' AND m.deleted_at IS NULL)$$,
	'every organization has a live owner at the end');
-- The run covered the ground: every operation was tried by every kind of actor,
-- and the guard both accepted and refused changes.
SELECT is((SELECT count(DISTINCT (op, coalesce(actor_role::text, 'non-member'))) FROM fuzz_log), 40::bigint,
	'every operation was tried by owners, admins, members, viewers and non-members');
SELECT cmp_ok((SELECT count(*) FROM fuzz_log WHERE outcome = 'accepted'), '>=', 300::bigint, 'hundreds of changes were accepted');
SELECT cmp_ok((SELECT count(*) FROM fuzz_log WHERE outcome = 'refused 42501'), '>=', 300::bigint, 'hundreds were refused for privilege');
SELECT cmp_ok((SELECT count(*) FROM fuzz_log WHERE outcome = 'refused 23514'), '>=', 5::bigint, 'last-owner removals were refused');
SELECT cmp_ok((SELECT count(*) FROM fuzz_log WHERE op = 'restore' AND actor_role = 'admin' AND outcome = 'accepted'), '>=', 2::bigint,
	'admins restored memberships');
SELECT cmp_ok((SELECT count(*) FROM fuzz_log WHERE op IN ('insert', 'role') AND actor_role = 'owner' AND outcome = 'accepted'), '>=', 20::bigint,
	'owners added and changed memberships');

SELECT * FROM finish();
ROLLBACK;
