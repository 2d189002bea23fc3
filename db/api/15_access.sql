-- Tenant isolation: which clients the caller serves and sees.
--
-- The caller is the role a statement runs as before any SECURITY DEFINER
-- function takes over: the role chosen with SET ROLE, else the login role
-- (session_user). Inside a SECURITY DEFINER function current_user is the owner,
-- so it cannot say who called; SET ROLE can only pick a role the login role is a
-- member of, so it narrows what the caller may do, never widens it.
--
-- With the isolation setting off (single tenant, the default) every caller
-- serves and sees every client. With it on, a caller serves and sees the clients
-- granted (parecer.grant_client) to any role it is a member of (directly or
-- through a group role), and nothing when there is none: fail closed. Members of
-- parecer_admin, superusers and the owner of the parecer schema see every client.
--
-- Readers' views filter rows through parecer._caller_scope, read in scalar
-- subqueries (InitPlans: computed once per query, not per row) (security_barrier
-- views, see docs/concepts.md "Security"): a view's functions run with the
-- reader's rights, so the scope is a view of pg_catalog functions only, not a
-- function of ours a reader would need EXECUTE on.

-- The caller, whether it sees every client, and the clients it was granted.
CREATE OR REPLACE VIEW parecer._caller_scope AS
WITH me AS (
    SELECT CASE WHEN pg_catalog.current_setting('role') = 'none' THEN session_user
                ELSE pg_catalog.current_setting('role')::name END AS who
)
SELECT me.who,
       (SELECT COALESCE(st.value, st.default_value) FROM parecer._settings st WHERE st.name = 'isolation') = 'off'
       OR pg_catalog.pg_has_role(me.who, 'parecer_admin', 'MEMBER')
       OR pg_catalog.pg_has_role(me.who, (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'parecer'),
                                 'MEMBER') AS all_clients,
       ARRAY(SELECT g.client_id FROM parecer._client_grants g
             WHERE EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid = g.role_oid)
               AND pg_catalog.pg_has_role(me.who, g.role_oid, 'MEMBER')
             ORDER BY g.client_id) AS client_ids
FROM me;
COMMENT ON VIEW parecer._caller_scope IS
'The caller (SET ROLE role, else session_user), whether it sees every client (isolation off, parecer_admin member, superuser, schema owner), and the client ids granted to roles it is a member of.';

-- The client ids the caller may serve and see; NULL: every client.
CREATE OR REPLACE FUNCTION parecer._caller_clients() RETURNS text[]
LANGUAGE sql STABLE AS $$ SELECT CASE WHEN sc.all_clients THEN NULL ELSE sc.client_ids END FROM parecer._caller_scope sc $$;

-- Whether the caller serves a client: the one tenant check of every call on a
-- leased item (parecer._lease, the lease predicate of mark_done, mark_failed and
-- release, leased_transcript), so a role revoked mid-lease can finish nothing.
-- With isolation off it is one lookup of the setting; with it on, the caller's
-- scope is read again on every call. (No per-transaction cache: a custom GUC or a
-- pg_temp table is the caller's to forge, and SET ROLE may change the caller
-- within a transaction.)
CREATE OR REPLACE FUNCTION parecer._serves(p_client_id text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF (SELECT COALESCE(st.value, st.default_value) FROM parecer._settings st WHERE st.name = 'isolation') = 'off' THEN
        RETURN true;
    END IF;
    RETURN COALESCE((SELECT sc.all_clients OR p_client_id = ANY (sc.client_ids) FROM parecer._caller_scope sc), false);
END
$$;

-- Whether a named role serves a client with isolation on (parecer_admin member,
-- superuser, schema owner, or granted the client directly or through a role it is
-- a member of); false for a role that does not exist. For revoke_client and doctor.
CREATE OR REPLACE FUNCTION parecer._role_serves(p_role name, p_client_id text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_role IS NULL OR NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname = p_role) THEN
        RETURN false;
    END IF;
    RETURN pg_catalog.pg_has_role(p_role, 'parecer_admin', 'MEMBER')
        OR pg_catalog.pg_has_role(p_role, (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'parecer'), 'MEMBER')
        OR EXISTS (SELECT FROM parecer._client_grants g JOIN pg_catalog.pg_roles r ON r.oid = g.role_oid
                   WHERE (p_client_id IS NULL OR g.client_id = p_client_id)
                     AND pg_catalog.pg_has_role(p_role, g.role_oid, 'MEMBER'));
END
$$;

-- Resolve a client slug the caller may see; a client it may not see is unknown
-- to it (PR001, the same error as a slug that does not exist).
CREATE OR REPLACE FUNCTION parecer._visible_client(p_slug text, OUT client_id text, OUT client_slug text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_ids text[] := parecer._caller_clients();
BEGIN
    SELECT c.client_id, c.client_slug INTO client_id, client_slug FROM parecer._client(p_slug) c;
    IF v_ids IS NOT NULL AND NOT (client_id = ANY (v_ids)) THEN
        PERFORM parecer._raise_unknown_client(p_slug);
    END IF;
END
$$;

-- Client grants: which role serves which client.
CREATE OR REPLACE VIEW parecer.client_grants AS
SELECT COALESCE(r.rolname, '#' || g.role_oid::text)::text AS role_name, g.client_slug, g.client_id,
       g.granted_at, g.granted_by, r.rolname IS NOT NULL AS role_exists
FROM parecer._client_grants g
LEFT JOIN pg_catalog.pg_roles r ON r.oid = g.role_oid
ORDER BY 1, g.client_slug;
COMMENT ON VIEW parecer.client_grants IS
'Which role serves which client (parecer.grant_client). With the isolation setting on, a role (or any member of it) claims, reads prompts and transcripts of, reports and sees only the clients granted to it. role_exists false: the role was dropped (the grant binds nobody; revoke it).';

-- Bind a role to a client.
CREATE OR REPLACE FUNCTION parecer.grant_client(role name, client_slug text)
RETURNS SETOF parecer.client_grants
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_oid    oid;
    v_client record;
BEGIN
    SELECT r.oid INTO v_oid FROM pg_catalog.pg_roles r WHERE r.rolname = grant_client.role;
    IF v_oid IS NULL THEN
        RAISE EXCEPTION 'unknown role "%"', COALESCE(left(grant_client.role, 100), '<null>')
            USING ERRCODE = 'PR018', HINT = 'Create the role first (CREATE ROLE ... LOGIN IN ROLE parecer_runner), then grant it clients.';
    END IF;
    v_client := parecer._client(grant_client.client_slug);
    INSERT INTO parecer._client_grants AS g (role_oid, client_id, client_slug)
    VALUES (v_oid, v_client.client_id, v_client.client_slug)
    ON CONFLICT (role_oid, client_id) DO NOTHING;
    RETURN QUERY SELECT * FROM parecer.client_grants cg WHERE cg.role_name = grant_client.role::text;
END
$$;
COMMENT ON FUNCTION parecer.grant_client(name, text) IS
'Bind a role to a client: with the isolation setting on, the role and its members claim, read prompts and transcripts of, report and see only the clients granted to them. Granting twice is harmless. Returns the role''s grants. Errors: PR001 unknown client, PR018 unknown role.';

-- Unbind a role from a client (client_slug NULL: from every client). With
-- isolation on, the items of those clients leased to a role that no longer serves
-- them go back to the queue at once (released, no attempt spent): the revoked role
-- can finish none of them (its calls get PR011), and an allowed runner takes them
-- without waiting for the lease to run out.
CREATE OR REPLACE FUNCTION parecer.revoke_client(role name, client_slug text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_n       integer;
    v_clients text[];
    v_back    integer;
BEGIN
    IF revoke_client.role IS NULL THEN
        PERFORM parecer._invalid('role must be given', 'Name the role, e.g. revoke_client(''runner_acme'', ''acme'').');
    END IF;
    WITH d AS (
        DELETE FROM parecer._client_grants g
         WHERE g.role_oid IN (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = revoke_client.role
                              UNION ALL
                              SELECT g2.role_oid FROM parecer._client_grants g2
                              WHERE '#' || g2.role_oid::text = revoke_client.role)
           AND (revoke_client.client_slug IS NULL OR g.client_slug = revoke_client.client_slug)
        RETURNING g.client_id
    )
    SELECT count(*), array_agg(DISTINCT d.client_id) INTO v_n, v_clients FROM d;
    IF v_n > 0 AND parecer._setting('isolation') = 'on' THEN
        WITH x AS MATERIALIZED (
            SELECT a.analysis_id, a.claims, a.worker, a.lease_token, a.started_at, a.leased_to, a.client_slug
            FROM parecer.analyses a
            WHERE a.status = 'processing' AND a.client_id = ANY (v_clients) AND a.leased_to IS NOT NULL
              AND NOT parecer._role_serves(a.leased_to, a.client_id)
            ORDER BY a.analysis_id
            FOR UPDATE
        ), u AS (
            UPDATE parecer.analyses a
               SET status = 'pending', next_retry_at = NULL, lease_token = NULL, lease_expires_at = NULL,
                   updated_at = now()
              FROM x
             WHERE a.analysis_id = x.analysis_id
            RETURNING a.analysis_id
        ), t AS (
            INSERT INTO parecer._attempts (analysis_id, attempt, worker, lease_token, claimed_at, finished_at, outcome, error)
            SELECT x.analysis_id, x.claims, COALESCE(x.worker, '?'), x.lease_token, COALESCE(x.started_at, now()), now(),
                   'released', left(pg_catalog.format('released by revoke_client: %s no longer serves %s', x.leased_to, x.client_slug), 1000)
            FROM x JOIN u ON u.analysis_id = x.analysis_id
        )
        SELECT count(*) INTO v_back FROM u;
        IF v_back > 0 THEN
            PERFORM pg_notify('parecer_work', json_build_object('n', v_back)::text);
        END IF;
    END IF;
    RETURN v_n;
END
$$;
COMMENT ON FUNCTION parecer.revoke_client(name, text) IS
'Unbind a role from a client (client_slug NULL: from all its clients; a dropped role is named "#<oid>" as parecer.client_grants shows it); returns how many grants went. With the isolation setting on, it takes effect at once: the role''s next call on any item of the client, a lease it holds included, is refused as for an unknown item (PR011), and items of the client leased to a role that no longer serves it go back to the queue (released, no attempt spent; attempts shows why). Errors: PR010.';
