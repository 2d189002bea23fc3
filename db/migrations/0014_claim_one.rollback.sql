-- Undo 0014: claim as 0012 left it.
CREATE OR REPLACE FUNCTION parecer.claim(
    worker        text,
    max_items     integer DEFAULT 1,
    lease_seconds integer DEFAULT NULL,
    client_slug   text DEFAULT NULL,
    sync_commit   boolean DEFAULT true
) RETURNS SETOF parecer.claimed_item
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- The plans are the same for every call; re-planning them each time (a custom
-- plan per LIMIT value) cost as much as running them. Every statement below is
-- written so that its generic plan is the right one at any queue size: the
-- candidates are locked and collected into an array first, then updated by
-- primary key (= ANY), never through a join the planner could turn into a hash
-- join over the whole table.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_worker text := $1;
    v_limit  integer := $2;
    v_lease  integer;
    v_client text := $4;
    v_max    integer;
    v_n      integer;
    v_one    text;
    v_ids    uuid[];
    v_expired boolean;
BEGIN
    -- Settings, whether any lease ran out, and which clients may get work (client
    -- filter, budgets: none, one, or more), in one query.
    WITH pol AS (
        SELECT p.client_id FROM parecer._client_policy p
        WHERE (v_client IS NULL OR p.client_slug = v_client)
          AND ((p.daily_budget_usd IS NULL AND p.monthly_budget_usd IS NULL)
               OR parecer._blocked_reason(p.client_id) IS NULL)
        LIMIT 2
    )
    SELECT COALESCE($3, max(COALESCE(s.value, s.default_value)::integer) FILTER (WHERE s.name = 'lease_seconds')),
           max(COALESCE(s.value, s.default_value)::integer) FILTER (WHERE s.name = 'max_attempts'),
           EXISTS (SELECT FROM parecer.analyses a WHERE a.status = 'processing' AND a.lease_expires_at < now()),
           (SELECT count(*) FROM pol), (SELECT min(pol.client_id) FROM pol)
      INTO v_lease, v_max, v_expired, v_n, v_one
      FROM parecer._settings s
     WHERE s.name IN ('lease_seconds', 'max_attempts');
    IF v_worker IS NULL OR btrim(v_worker) = '' OR length(v_worker) > 200 THEN
        PERFORM parecer._invalid('worker must be a non-empty name of up to 200 characters', 'Name the runner, e.g. worker => ''host-1:4242''.');
    END IF;
    IF v_limit IS NULL OR v_limit < 1 OR v_limit > 1000 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid max_items: %s', COALESCE(v_limit::text, 'NULL')), 'max_items must be between 1 and 1000.');
    END IF;
    IF v_lease < 5 OR v_lease > 86400 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid lease_seconds: %s', v_lease), 'lease_seconds must be between 5 and 86400.');
    END IF;
    IF sync_commit IS NULL THEN
        PERFORM parecer._invalid('sync_commit must be true or false', 'Leave it out (true) unless the claim is a transaction of its own.');
    END IF;
    -- A claim need not survive a server crash: lost, it leaves the item claimable as
    -- before, and its holder's mark_done / extend_lease get PR006. Not waiting for
    -- the WAL flush halves the flushes per item (SET LOCAL: until this transaction ends).
    IF NOT sync_commit THEN
        PERFORM pg_catalog.set_config('synchronous_commit', 'off', true);
    END IF;

    IF v_expired THEN
        PERFORM parecer._expire_leases();
    END IF;

    IF v_n = 0 THEN
        RETURN;
    ELSIF v_n = 1 THEN
        -- One client: what the fair selection below gives for a single client (its fresh
        -- work newest-ended first, then its backlog oldest first), from plans a fifth of
        -- its size: starting that statement's executor was a third of a claim's time.
        v_ids := ARRAY(
            SELECT a.analysis_id
            FROM parecer.analyses a
            WHERE a.client_id = v_one AND NOT a.backlog
              AND ((a.status = 'pending' AND (a.next_retry_at IS NULL OR a.next_retry_at <= now()))
                OR (a.status = 'failed' AND a.next_retry_at <= now() AND a.retry_count < v_max))
            ORDER BY a.session_ended_at DESC NULLS LAST, a.created_at DESC
            LIMIT v_limit
            FOR UPDATE SKIP LOCKED);
        IF cardinality(v_ids) < v_limit THEN
            v_ids := v_ids || ARRAY(
                SELECT a.analysis_id
                FROM parecer.analyses a
                WHERE a.client_id = v_one AND a.backlog
                  AND ((a.status = 'pending' AND (a.next_retry_at IS NULL OR a.next_retry_at <= now()))
                    OR (a.status = 'failed' AND a.next_retry_at <= now() AND a.retry_count < v_max))
                ORDER BY a.session_ended_at ASC NULLS FIRST, a.created_at
                LIMIT v_limit - cardinality(v_ids)
                FOR UPDATE SKIP LOCKED);
        END IF;
    ELSE
        -- Fair across clients: weighted round-robin by client priority, each client's
        -- fresh work newest-ended first, then backlog oldest first; clients over
        -- budget get nothing.
        v_ids := ARRAY(
            WITH pol AS (
                SELECT p.client_id, p.priority
                FROM parecer._client_policy p
                WHERE (v_client IS NULL OR p.client_slug = v_client)
                  AND ((p.daily_budget_usd IS NULL AND p.monthly_budget_usd IS NULL)
                       OR parecer._blocked_reason(p.client_id) IS NULL)
            ), fresh AS (
                SELECT 0 AS tier, pol.priority, x.analysis_id, x.rn
                FROM pol CROSS JOIN LATERAL (
                    SELECT a.analysis_id, row_number() OVER (ORDER BY a.session_ended_at DESC NULLS LAST, a.created_at DESC) AS rn
                    FROM (SELECT a.analysis_id, a.session_ended_at, a.created_at
                          FROM parecer.analyses a
                          WHERE a.client_id = pol.client_id AND NOT a.backlog
                            AND ((a.status = 'pending' AND (a.next_retry_at IS NULL OR a.next_retry_at <= now()))
                              OR (a.status = 'failed' AND a.next_retry_at <= now() AND a.retry_count < v_max))
                          ORDER BY a.session_ended_at DESC NULLS LAST, a.created_at DESC
                          LIMIT v_limit
                          FOR UPDATE SKIP LOCKED) a
                ) x
            ), old AS (
                SELECT 1 AS tier, pol.priority, x.analysis_id, x.rn
                FROM pol CROSS JOIN LATERAL (
                    SELECT a.analysis_id, row_number() OVER (ORDER BY a.session_ended_at ASC NULLS FIRST, a.created_at) AS rn
                    FROM (SELECT a.analysis_id, a.session_ended_at, a.created_at
                          FROM parecer.analyses a
                          WHERE a.client_id = pol.client_id AND a.backlog
                            AND ((a.status = 'pending' AND (a.next_retry_at IS NULL OR a.next_retry_at <= now()))
                              OR (a.status = 'failed' AND a.next_retry_at <= now() AND a.retry_count < v_max))
                          ORDER BY a.session_ended_at ASC NULLS FIRST, a.created_at
                          LIMIT v_limit
                          FOR UPDATE SKIP LOCKED) a
                ) x
                WHERE (SELECT count(*) FROM fresh) < v_limit
            )
            SELECT f.analysis_id
            FROM (SELECT u.*, -ln(1.0 - random()) / u.priority AS race   -- weighted race: ties within a round go
                  FROM (SELECT * FROM fresh UNION ALL SELECT * FROM old) u) f  -- to client i with p_i / sum(p)
            ORDER BY f.tier, (f.rn - 1) / f.priority, f.race, f.rn
            LIMIT v_limit);
    END IF;
    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;

    RETURN QUERY
    WITH u AS (
        UPDATE parecer.analyses a
           SET status = 'processing',
               claims = a.claims + 1,
               worker = v_worker,
               lease_token = gen_random_uuid(),
               lease_expires_at = now() + make_interval(secs => v_lease),
               next_retry_at = NULL,
               started_at = now(),
               updated_at = now()
         WHERE a.analysis_id = ANY (v_ids)
        RETURNING a.analysis_id, a.lease_token, a.claims, a.client_slug, a.session_id, a.script_id,
                  a.lease_expires_at, a.retry_count
    )
    SELECT u.analysis_id, u.lease_token, u.claims, u.client_slug, u.session_id, u.script_id,
           s.script_key, s.version, s.model, u.lease_expires_at, u.retry_count
    FROM u JOIN parecer.scripts s ON s.script_id = u.script_id
    ORDER BY array_position(v_ids, u.analysis_id);
END
$$;
