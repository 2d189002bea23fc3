-- The work queue: one row of parecer.analyses per analysis, that is per
-- (session, script version, analysis version tag), and the state machine that
-- moves it. Every transition is a function of this file (enqueue, claim,
-- extend_lease, mark_failed, release) or of 60_reports.sql (mark_done).
--
--                 enqueue
--                    │
--                    v
--   ┌──────────> pending ───────claim───────> processing ──mark_done──> done
--   │       (next_retry_at: not                │  │  │
--   │        claimable before it)              │  │  └─mark_failed, no attempt left──> failed
--   │              ^  ^                        │  │     or retryable => false         (terminal)
--   │              │  └──release(delay)────────┘  │                                     │
--   │              └──mark_failed (retry_count+1, next_retry_at = now() + backoff)──┘   │
--   │                 lease expired: the same, error 'lease expired'                    │
--   └── enqueue(force_reprocess) from any state; retry_failed from failed ──────────────┘
--
-- One word for each state:
--   pending     waiting to be claimed. CLAIMABLE means
--                   status = 'pending' AND (next_retry_at IS NULL OR next_retry_at <= now())
--               the partial indexes analyses_fresh_idx / analyses_backlog_idx hold
--               exactly the pending items; retry_count > 0 says it is a retry
--               (parecer.queue_status counts those as "retrying").
--   processing  leased to one runner: lease_token + lease_expires_at exist exactly
--               then (analyses_state_check). Only the holder of the current token can
--               end the attempt; a stale runner gets PR006 and changes nothing.
--   done        report stored (mark_done, 60_reports.sql).
--   failed      terminal: max_attempts failures, or a failure that is not retryable.
--
-- retry_count counts failed attempts (mark_failed and expired leases); a release
-- is not a failure and costs no attempt, but releases counts it: the release beyond
-- the max_releases setting is terminal, so no item can come back forever. claims counts every claim (the attempt
-- number). Attempts that end are written to parecer._attempts (_end_attempt);
-- the attempt in flight and the one that finished a done item are the item's row.
--
-- Claim order: each client's fresh work newest-ended first, then its backlog
-- oldest first; across clients, a weighted round-robin by priority; clients over
-- budget get nothing (85_spend.sql). No transaction is held across a model call.

-- Check a lease and lock the item; PR011 unknown item, or (isolation on) an item
-- of a client the caller does not serve (now: a role revoked mid-lease too), before
-- anything about its lease is told; PR006 wrong/expired lease. The client is
-- checked in the WHERE: another client's item is not even locked (FOR UPDATE
-- locks only the rows that pass it).
CREATE OR REPLACE FUNCTION parecer._lease(p_analysis_id uuid, p_token uuid) RETURNS parecer.analyses
LANGUAGE plpgsql AS $$
DECLARE
    v_row parecer.analyses;
BEGIN
    SELECT * INTO v_row FROM parecer.analyses a
    WHERE a.analysis_id = p_analysis_id AND parecer._serves(a.client_id)
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown analysis %', COALESCE(p_analysis_id::text, 'NULL')
            USING ERRCODE = 'PR011', HINT = 'analysis_id comes from parecer.claim.';
    END IF;
    IF v_row.status <> 'processing' OR p_token IS NULL OR v_row.lease_token <> p_token THEN
        RAISE EXCEPTION 'stale lease for analysis %', p_analysis_id
            USING ERRCODE = 'PR006',
                  HINT = 'The item is no longer leased to you (it was released, reset, expired or taken by another runner); drop your result.';
    END IF;
    IF v_row.lease_expires_at < now() THEN
        RAISE EXCEPTION 'lease for analysis % expired at %', p_analysis_id, v_row.lease_expires_at
            USING ERRCODE = 'PR006',
                  HINT = 'Extend the lease (parecer.extend_lease) before it runs out; the item will be retried.';
    END IF;
    RETURN v_row;
END
$$;

-- Raise the error that explains why an item is not leased to the caller:
-- PR011 unknown item (or not the caller's client), PR006 stale or expired lease.
-- The functions that end an attempt check the lease in their UPDATE's WHERE (one
-- row visit): `lease_token = <token> AND lease_expires_at >= now() AND
-- parecer._serves(client_id)`; this runs only when that UPDATE found nothing.
CREATE OR REPLACE FUNCTION parecer._lease_refused(p_analysis_id uuid, p_token uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM parecer._lease(p_analysis_id, p_token);
    -- _lease found the lease valid: the caller's UPDATE lost a race it can retry.
    RAISE EXCEPTION 'analysis % changed while it was being updated', p_analysis_id
        USING ERRCODE = '40001', HINT = 'Retry the call.';
END
$$;

-- Lease expiry ends a dead runner's attempt as 'expired': a failure of the item
-- (its runner died holding it), retried after the backoff like mark_failed.
-- An item held by a batch (75_batches.sql) whose batch lease ran out is released
-- instead (outcome 'released', no attempt spent, counted against max_releases):
-- a batch that outlived its window is the provider's or the poller's fault, not
-- the item's.
CREATE OR REPLACE FUNCTION parecer._expire_leases() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_max     integer := parecer._setting_int('max_attempts');
    v_max_rel integer := parecer._setting_int('max_releases');
    v_n       integer;
BEGIN
    WITH x AS MATERIALIZED (
        SELECT a.analysis_id, a.claims, a.worker, a.lease_token, a.started_at,
               EXISTS (SELECT FROM parecer._batch_items bi WHERE bi.lease_token = a.lease_token) AS in_batch
        FROM parecer.analyses a
        WHERE a.status = 'processing' AND a.lease_expires_at < now()
        ORDER BY a.lease_expires_at
        LIMIT 1000
        FOR UPDATE SKIP LOCKED
    ), u AS (
        UPDATE parecer.analyses a
           SET status = CASE WHEN x.in_batch THEN CASE WHEN a.retry_count >= v_max OR a.releases + 1 > v_max_rel
                                                       THEN 'failed' ELSE 'pending' END
                             WHEN a.retry_count + 1 >= v_max THEN 'failed' ELSE 'pending' END,
               retry_count = a.retry_count + CASE WHEN x.in_batch THEN 0 ELSE 1 END,
               releases = a.releases + CASE WHEN x.in_batch THEN 1 ELSE 0 END,
               next_retry_at = CASE WHEN x.in_batch OR a.retry_count + 1 >= v_max THEN NULL
                                    ELSE now() + parecer._backoff(a.retry_count + 1) END,
               error = CASE WHEN x.in_batch THEN 'batch lease expired: worker ' || COALESCE(a.worker, '?') || ' stored no result in time'
                            ELSE 'lease expired: worker ' || COALESCE(a.worker, '?') || ' stopped without reporting' END,
               lease_token = NULL, lease_expires_at = NULL, updated_at = now()
          FROM x
         WHERE a.analysis_id = x.analysis_id
        RETURNING a.analysis_id, a.error
    ), t AS (
        INSERT INTO parecer._attempts (analysis_id, attempt, worker, lease_token, claimed_at, finished_at, outcome, error)
        SELECT x.analysis_id, x.claims, COALESCE(x.worker, '?'), x.lease_token, COALESCE(x.started_at, now()), now(),
               CASE WHEN x.in_batch THEN 'released' ELSE 'expired' END, u.error
        FROM u JOIN x ON x.analysis_id = u.analysis_id
    )
    SELECT count(*) INTO v_n FROM u;
    RETURN v_n;
END
$$;

-- Queue sessions for a script version. With force_reprocess an existing item is
-- reset to pending whatever its state; the attempt in flight ends as 'reset' and
-- a done item's finishing attempt moves into parecer._attempts first.
CREATE OR REPLACE FUNCTION parecer.enqueue(
    session_ids          text[],
    script_id            bigint,
    analysis_version_tag text DEFAULT 'v1',
    force_reprocess      boolean DEFAULT false,
    run_id               bigint DEFAULT NULL
) RETURNS TABLE (enqueued integer, reset integer, skipped integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_script  parecer.scripts;
    v_ids     text[];
    v_missing text[];
    v_enq     integer := 0;
    v_reset   integer := 0;
    v_total   integer;
BEGIN
    SELECT * INTO v_script FROM parecer.scripts s WHERE s.script_id = enqueue.script_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown script_id %', COALESCE(enqueue.script_id::text, 'NULL')
            USING ERRCODE = 'PR002', HINT = 'parecer.resolve_script(client_slug, script_key) gives a script_id.';
    END IF;
    IF analysis_version_tag IS NULL OR analysis_version_tag !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$' THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid analysis_version_tag "%s"', COALESCE(left(analysis_version_tag, 50), 'NULL')),
                                 'A tag is 1-32 characters: letters, digits, "_", "." or "-" (e.g. v1).');
    END IF;
    IF session_ids IS NULL OR array_ndims(session_ids) > 1   -- array_position refuses 2-D arrays (0A000)
       OR array_position(session_ids, NULL) IS NOT NULL THEN
        PERFORM parecer._invalid('session_ids must be a one-dimensional array without NULLs', 'Pass e.g. ARRAY[''s1'',''s2''] (an empty array enqueues nothing).');
    END IF;
    IF enqueue.run_id IS NOT NULL AND NOT EXISTS (
        SELECT FROM parecer.runs r WHERE r.run_id = enqueue.run_id AND r.script_id = v_script.script_id) THEN
        RAISE EXCEPTION 'unknown run % for script_id %', enqueue.run_id, v_script.script_id
            USING ERRCODE = 'PR012', HINT = 'Runs are created by parecer.start_run; leave run_id NULL otherwise.';
    END IF;
    SELECT array_agg(DISTINCT x) INTO v_ids FROM unnest(session_ids) x;
    v_ids := COALESCE(v_ids, '{}');
    v_total := cardinality(v_ids);
    PERFORM parecer._check_unique_sessions(v_ids);

    SELECT array_agg(x) INTO v_missing
    FROM (SELECT x FROM unnest(v_ids) x
          WHERE NOT EXISTS (SELECT FROM parecer.source_sessions s
                            WHERE s.session_id = x AND s.client_id = v_script.client_id)
          LIMIT 5) m;
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'unknown session(s) for client "%": %', v_script.client_slug, left(array_to_string(v_missing, ', '), 300)
            USING ERRCODE = 'PR014', HINT = 'Every session id must be a session of the script''s client, e.g. from parecer.eligible_sessions(client_slug).';
    END IF;

    IF force_reprocess THEN
        -- A forced reset ends the attempt of an item in flight. Lock the items first, so
        -- that none is claimed between this and the reset below.
        -- The attempt that finished a done item lives in the item's row: it moves
        -- into parecer._attempts before the reset below clears the row.
        WITH lk AS (
            SELECT a.analysis_id, a.status, a.claims, a.worker, a.lease_token, a.started_at, a.processed_at,
                   a.model, a.prompt_hash, a.usage, a.cost_usd
            FROM parecer.analyses a
            WHERE a.session_id = ANY (v_ids) AND a.script_id = v_script.script_id
              AND a.analysis_version_tag = enqueue.analysis_version_tag
            ORDER BY a.analysis_id
            FOR UPDATE
        )
        INSERT INTO parecer._attempts (analysis_id, attempt, worker, lease_token, claimed_at, finished_at, outcome, error,
                                       model, prompt_hash, usage, cost_usd)
        SELECT lk.analysis_id, lk.claims, COALESCE(lk.worker, '?'), lk.lease_token, COALESCE(lk.started_at, now()), now(),
               'reset', 'reset by enqueue(force_reprocess)', NULL, NULL, NULL, NULL
        FROM lk WHERE lk.status = 'processing'
        UNION ALL
        SELECT lk.analysis_id, lk.claims, COALESCE(lk.worker, '?'), NULL, COALESCE(lk.started_at, lk.processed_at, now()),
               COALESCE(lk.processed_at, now()), 'done', NULL, lk.model, lk.prompt_hash, lk.usage, lk.cost_usd
        FROM lk WHERE lk.status = 'done' AND lk.claims > 0
        ON CONFLICT (analysis_id, attempt) DO NOTHING;
    END IF;

    WITH src AS (
        SELECT s.session_id, s.ended_at
        FROM parecer.source_sessions s
        WHERE s.session_id = ANY (v_ids) AND s.client_id = v_script.client_id
    ), ins AS (
        INSERT INTO parecer.analyses AS a (client_id, client_slug, session_id, script_id, analysis_version_tag, session_ended_at)
        SELECT v_script.client_id, v_script.client_slug, src.session_id, v_script.script_id,
               enqueue.analysis_version_tag, src.ended_at
        FROM src
        ON CONFLICT ON CONSTRAINT analyses_item_key DO UPDATE
            SET status = 'pending', report = NULL, grounding = NULL, error = NULL, retry_count = 0, releases = 0,
                omitted_messages = NULL, next_retry_at = NULL,
                processed_at = NULL, started_at = NULL, worker = NULL, lease_token = NULL,
                lease_expires_at = NULL, model = NULL, prompt_hash = NULL, usage = NULL, cost_usd = NULL,
                session_ended_at = EXCLUDED.session_ended_at, updated_at = now()
            WHERE force_reprocess
        RETURNING a.analysis_id, (a.xmax = 0) AS inserted
    ), runlink AS (
        INSERT INTO parecer.run_items (run_id, analysis_id)
        SELECT enqueue.run_id, a.analysis_id
        FROM parecer.analyses a
        WHERE enqueue.run_id IS NOT NULL
          AND a.session_id = ANY (v_ids) AND a.script_id = v_script.script_id
          AND a.analysis_version_tag = enqueue.analysis_version_tag
        UNION
        SELECT enqueue.run_id, ins.analysis_id FROM ins WHERE enqueue.run_id IS NOT NULL
        ON CONFLICT DO NOTHING
    )
    SELECT count(*) FILTER (WHERE ins.inserted), count(*) FILTER (WHERE NOT ins.inserted)
    INTO v_enq, v_reset
    FROM ins;

    IF v_enq + v_reset > 0 THEN
        -- One small notification per call, never per row.
        PERFORM pg_notify('parecer_work', json_build_object('client', v_script.client_slug, 'n', v_enq + v_reset)::text);
    END IF;
    RETURN QUERY SELECT v_enq, v_reset, v_total - v_enq - v_reset;
END
$$;
COMMENT ON FUNCTION parecer.enqueue(text[], bigint, text, boolean, bigint) IS
'Queue sessions for a script version and analysis tag: new items are inserted pending, existing ones skipped, or with force_reprocess reset to pending whatever their state. One NOTIFY parecer_work per call. Errors: PR002 unknown script, PR010 bad argument, PR012 unknown run, PR014 unknown session, PR015 session duplicated in source_sessions.';

-- Up to p_limit claimable items of one client, locked (FOR UPDATE SKIP LOCKED),
-- in claim order: fresh work newest-ended first, then backlog oldest first
-- (each walks its partial index; the backlog is read only when the fresh work
-- runs short). Rows come back with the tier they came from. The claimable
-- condition (see the top of this file) is written here and nowhere else.
-- p_run_id: only items of that run (a batch of a backlog run, 75_batches.sql).
CREATE OR REPLACE FUNCTION parecer._candidates(p_client_id text, p_limit integer, p_run_id bigint DEFAULT NULL)
RETURNS TABLE (analysis_id uuid, backlog boolean)
-- Generic plans: the same plan is right at any queue size and any LIMIT, and
-- re-planning per LIMIT value cost as much as running the query.
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_n integer;
BEGIN
    RETURN QUERY
    SELECT a.analysis_id, false
    FROM parecer.analyses a
    WHERE a.client_id = p_client_id AND NOT a.backlog
      AND a.status = 'pending' AND (a.next_retry_at IS NULL OR a.next_retry_at <= now())
      AND (p_run_id IS NULL OR EXISTS (SELECT FROM parecer.run_items ri WHERE ri.run_id = p_run_id AND ri.analysis_id = a.analysis_id))
    ORDER BY a.session_ended_at DESC NULLS LAST, a.created_at DESC
    LIMIT p_limit
    FOR UPDATE SKIP LOCKED;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n < p_limit THEN
        RETURN QUERY
        SELECT a.analysis_id, true
        FROM parecer.analyses a
        WHERE a.client_id = p_client_id AND a.backlog
          AND a.status = 'pending' AND (a.next_retry_at IS NULL OR a.next_retry_at <= now())
          AND (p_run_id IS NULL OR EXISTS (SELECT FROM parecer.run_items ri WHERE ri.run_id = p_run_id AND ri.analysis_id = a.analysis_id))
        ORDER BY a.session_ended_at ASC NULLS FIRST, a.created_at
        LIMIT p_limit - v_n
        FOR UPDATE SKIP LOCKED;
    END IF;
END
$$;

-- Lease locked candidates (ids from parecer._candidates, in claim order) to a worker
-- for p_lease seconds: the one place a claim's lease is written (claim,
-- claim_with_prompts, open_batch). With p_hashes (and p_omitted), the prompt each
-- item is given (by position in p_ids; NULL: none) is recorded by the same UPDATE,
-- as prompt_for records it for the lease holder: one row version per item, not a
-- lease and then a second update of the row (and its foreign key's check) in the
-- same transaction.
-- Updated by primary key (= ANY of the locked ids), never through a join the
-- planner could turn into a hash join over the whole table.
CREATE OR REPLACE FUNCTION parecer._lease_items(p_ids uuid[], p_worker text, p_lease integer, p_who name,
                                                p_hashes text[] DEFAULT NULL, p_omitted integer[] DEFAULT NULL)
RETURNS SETOF parecer.claimed_item
-- not sql: PL/pgSQL keeps the statement's plan across calls
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN QUERY
    WITH u AS (
        UPDATE parecer.analyses a
           SET status = 'processing',
               claims = a.claims + 1,
               worker = p_worker,
               lease_token = gen_random_uuid(),
               lease_expires_at = now() + make_interval(secs => p_lease),
               next_retry_at = NULL,
               started_at = now(),
               updated_at = now(),
               leased_to = p_who,
               -- plain expressions, no subquery: without hashes (claim, open_batch) a row costs
               -- nothing more than before
               given_prompt_hash = CASE WHEN p_hashes IS NOT NULL THEN p_hashes[array_position(p_ids, a.analysis_id)] END,
               omitted_messages = CASE WHEN p_hashes[array_position(p_ids, a.analysis_id)] IS NOT NULL
                                       THEN p_omitted[array_position(p_ids, a.analysis_id)] END,
               prompt_given_at = CASE WHEN p_hashes[array_position(p_ids, a.analysis_id)] IS NOT NULL THEN now() END
         WHERE a.analysis_id = ANY (p_ids)
        RETURNING a.analysis_id, a.lease_token, a.claims, a.client_slug, a.session_id, a.script_id,
                  a.lease_expires_at, a.retry_count
    )
    SELECT u.analysis_id, u.lease_token, u.claims, u.client_slug, u.session_id, u.script_id,
           s.script_key, s.version, s.model, u.lease_expires_at, u.retry_count
    FROM u JOIN parecer.scripts s ON s.script_id = u.script_id
    ORDER BY array_position(p_ids, u.analysis_id);
END
$$;

-- PR010 unless worker names the process that claims (claim, open_batch).
CREATE OR REPLACE FUNCTION parecer._check_worker(p_worker text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_worker IS NULL OR btrim(p_worker) = '' OR length(p_worker) > 200 THEN
        PERFORM parecer._invalid('worker must be a non-empty name of up to 200 characters',
                                 'Name the process, e.g. worker => ''host-1:4242''.');
    END IF;
END
$$;

-- What a claim takes: its checks (PR010), the settings, expired leases recovered,
-- the clients that may get work (scope, client filter, budgets) and the fair
-- choice of up to p_limit candidates, locked (FOR UPDATE SKIP LOCKED) but not yet
-- leased; with the lease length and the caller to lease them to. No candidates:
-- ids is empty. parecer.claim leases them as they are; claim_with_prompts builds
-- their prompts first, so that the lease records each prompt's hash.
CREATE OR REPLACE FUNCTION parecer._claim_ids(p_worker text, p_limit integer, p_lease integer, p_client text,
                                              p_sync boolean, OUT ids uuid[], OUT lease integer, OUT who name)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    v_worker  text := p_worker;
    v_limit   integer := p_limit;
    v_lease   integer;
    v_max_lease integer;   -- settings max_lease_seconds, max_claim_items
    v_max_items integer;
    v_client  text := p_client;
    v_n       integer;
    v_one     text;
    v_ids     uuid[];
    v_expired boolean;
    v_scope   text[];   -- clients the caller serves (NULL: all; tenant isolation, 15_access.sql)
    v_who     name;
BEGIN
    SELECT CASE WHEN sc.all_clients THEN NULL ELSE sc.client_ids END, sc.who INTO v_scope, v_who
    FROM parecer._caller_scope sc;
    -- Settings, whether any lease ran out, and which clients may get work (client
    -- filter, budgets: none, one, or more), in one query.
    WITH pol AS (
        SELECT p.client_id FROM parecer._client_policy p
        WHERE (v_client IS NULL OR p.client_slug = v_client)
          AND (v_scope IS NULL OR p.client_id = ANY (v_scope))
          AND ((p.daily_budget_usd IS NULL AND p.monthly_budget_usd IS NULL)
               OR parecer._blocked_reason(p.client_id) IS NULL)
        LIMIT 2
    )
    SELECT parecer._setting_int('max_lease_seconds'), parecer._setting_int('max_claim_items'),
           EXISTS (SELECT FROM parecer.analyses a WHERE a.status = 'processing' AND a.lease_expires_at < now()),
           (SELECT count(*) FROM pol), (SELECT min(pol.client_id) FROM pol)
      INTO v_max_lease, v_max_items, v_expired, v_n, v_one;
    v_lease := COALESCE(p_lease, LEAST(parecer._setting_int('lease_seconds'), v_max_lease));
    PERFORM parecer._check_worker(v_worker);
    IF v_limit IS NULL OR v_limit < 1 OR v_limit > 1000 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid max_items: %s', COALESCE(v_limit::text, 'NULL')), 'max_items must be between 1 and 1000.');
    END IF;
    IF v_lease < 5 OR v_lease > v_max_lease THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid lease_seconds: %s', v_lease),
                                 pg_catalog.format('lease_seconds must be between 5 and %s (setting max_lease_seconds).',
                                                   v_max_lease));
    END IF;
    -- A claim hands out at most max_claim_items, whatever it asks (it may always get fewer).
    v_limit := LEAST(v_limit, v_max_items);
    IF p_sync IS NULL THEN
        PERFORM parecer._invalid('sync_commit must be true or false', 'Leave it out (true) unless the claim is a transaction of its own.');
    END IF;
    -- A claim need not survive a server crash: lost, it leaves the item claimable as
    -- before, and its holder's mark_done / extend_lease get PR006. Not waiting for
    -- the WAL flush halves the flushes per item (SET LOCAL: until this transaction ends).
    IF NOT p_sync THEN
        PERFORM pg_catalog.set_config('synchronous_commit', 'off', true);
    END IF;

    IF v_expired THEN
        PERFORM parecer._expire_leases();
    END IF;
    ids := '{}';
    IF parecer._global_blocked_reason() IS NOT NULL THEN RETURN; END IF;  -- the installation's budget (85_spend.sql)

    IF v_n = 0 THEN
        RETURN;
    ELSIF v_n = 1 THEN
        v_ids := ARRAY(SELECT c.analysis_id FROM parecer._candidates(v_one, v_limit) c);
    ELSE
        -- Fair across clients: every client's fresh work before anyone's backlog; within
        -- a tier a weighted round-robin by priority (a client of priority p gets p items
        -- per round; ties within a round go to client i with probability p_i / sum(p)).
        v_ids := ARRAY(
            SELECT c.analysis_id
            FROM parecer._client_policy p
            CROSS JOIN LATERAL parecer._candidates(p.client_id, v_limit) WITH ORDINALITY c(analysis_id, backlog, rn)
            WHERE (v_client IS NULL OR p.client_slug = v_client)
              AND (v_scope IS NULL OR p.client_id = ANY (v_scope))
              AND ((p.daily_budget_usd IS NULL AND p.monthly_budget_usd IS NULL)
                   OR parecer._blocked_reason(p.client_id) IS NULL)
            ORDER BY c.backlog, (c.rn - 1) / p.priority, -ln(1.0 - random()) / p.priority, c.rn
            LIMIT v_limit);
    END IF;
    ids := COALESCE(v_ids, '{}');
    lease := v_lease;
    who := v_who;
END
$$;

-- Claim up to max_items claimable items: each gets a lease (token + expiry) and
-- the attempt number; commit before calling the model.
CREATE OR REPLACE FUNCTION parecer.claim(
    worker        text,
    max_items     integer DEFAULT 1,
    lease_seconds integer DEFAULT NULL,
    client_slug   text DEFAULT NULL,
    sync_commit   boolean DEFAULT true
) RETURNS SETOF parecer.claimed_item
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v record;   -- _claim_ids: ids, lease, who (an assignment: a simple expression, no query)
BEGIN
    v := parecer._claim_ids($1, $2, $3, $4, $5);
    IF cardinality(v.ids) > 0 THEN
        RETURN QUERY SELECT * FROM parecer._lease_items(v.ids, $1, v.lease, v.who);
    END IF;
END
$$;
COMMENT ON FUNCTION parecer.claim(text, integer, integer, text, boolean) IS
'Claim up to max_items claimable items (status pending, next_retry_at NULL or past) with a lease of lease_seconds (default: setting lease_seconds). Fair across clients: weighted round-robin by client priority, each client''s fresh work newest-ended session first, then backlog runs oldest first; clients over budget get nothing (see parecer.budgets); with the isolation setting on, only clients granted to the caller (parecer.grant_client), whatever client_slug says. max_items is capped by the max_claim_items setting, lease_seconds by max_lease_seconds. Items whose lease expired are recovered first, as a failed attempt. sync_commit => false: the transaction the claim runs in commits without waiting for its WAL to reach disk (SET LOCAL synchronous_commit = off; the runner claims so, in a transaction of its own); a claim lost in a server crash leaves the item claimable. Errors: PR010.';

-- claim and prompts_for in one call: the items a claim gives (_claim_ids), each
-- with its prompt (or the error prompt_for raises for it), built before the lease
-- so that the lease's own UPDATE records each hash for the lease holder, as
-- prompt_for records it (one row version per item). What a runner calls: one
-- round trip, one transaction and one row version per item fewer than claim
-- followed by prompts_for, with their results. The prompts are built by one
-- statement for the batch: if it fails (the host's data through its adapter,
-- say), the items are leased all the same and every row carries that error
-- instead of a prompt, so prompt_for, asked per item, fails only the item it
-- concerns. Nothing is written inside the exception block.
-- Generic plans: a claim of one or two items (a steady runner's usual claim)
-- otherwise re-planned its last statement on every call, the custom plan for
-- the few ids estimated cheaper than the generic one (log_planner_stats showed
-- it; tests/test_prompt_report.py checks it is planned once).
CREATE OR REPLACE FUNCTION parecer.claim_with_prompts(
    worker        text,
    max_items     integer DEFAULT 1,
    lease_seconds integer DEFAULT NULL,
    client_slug   text DEFAULT NULL,
    sync_commit   boolean DEFAULT true
) RETURNS SETOF parecer.claimed_prompt
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v       record;   -- _claim_ids: ids, lease, who
    v_given parecer.claimed_prompt[];   -- the prompts (their columns only), in the claim's order
    v_state text;
    v_text  text;
BEGIN
    v := parecer._claim_ids($1, $2, $3, $4, $5);
    IF cardinality(v.ids) = 0 THEN
        RETURN;
    END IF;
    BEGIN
        v_given := ARRAY(
            SELECT ROW(p.analysis_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                       p.instructions, p.input, p.report_schema, p.prompt_hash, p.omitted_messages, p.input_tokens,
                       p.repair_calls, p.sqlstate, p.message)::parecer.claimed_prompt
            FROM parecer._prompts(v.ids, true) p
            ORDER BY p.ord);
    EXCEPTION
        WHEN syntax_error_or_access_rule_violation THEN
            RAISE;   -- a bug or a missing grant, not the data's fault
        WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_text = MESSAGE_TEXT;
    END;
    RETURN QUERY
    SELECT l.analysis_id, l.lease_token, l.attempt, l.client_slug, l.session_id, l.script_id, l.script_key,
           l.script_version, l.model, l.lease_expires_at, l.retry_count,
           g.instructions, g.input, g.report_schema, g.prompt_hash, g.omitted_messages, g.input_tokens,
           g.repair_calls, COALESCE(g.sqlstate, v_state), COALESCE(g.message, v_text)
    FROM parecer._lease_items(v.ids, $1, v.lease, v.who,
                              ARRAY(SELECT x.prompt_hash FROM unnest(v_given) x),
                              ARRAY(SELECT x.omitted_messages FROM unnest(v_given) x)) WITH ORDINALITY l
    LEFT JOIN unnest(v_given) g ON g.analysis_id = l.analysis_id
    ORDER BY l.ordinality;
END
$$;
COMMENT ON FUNCTION parecer.claim_with_prompts(text, integer, integer, text, boolean) IS
'parecer.claim and parecer.prompt_for in one call: claims as claim does (same arguments, same order, fairness, budgets, isolation and errors) and gives each claimed item, with claim''s columns, prompt_for''s: instructions, input, report_schema, prompt_hash, omitted_messages, input_tokens, repair_calls; the hash is recorded for the lease holder as prompt_for records it (mark_done requires it, PR017). An item whose prompt cannot be built is claimed all the same, with the sqlstate and message prompt_for raises for it (PR016 prompt too large: mark it failed) and no prompt; if building the batch''s prompts fails (the host''s data through its adapter, say), every item is claimed with that error and no prompt: ask prompt_for per item. Errors: PR010.';

-- Extend the lease of an item in flight (heartbeat).
CREATE OR REPLACE FUNCTION parecer.extend_lease(analysis_id uuid, lease_token uuid, lease_seconds integer DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_lease integer := COALESCE(extend_lease.lease_seconds,
                                LEAST(parecer._setting_int('lease_seconds'), parecer._setting_int('max_lease_seconds')));
    v_exp   timestamptz;
BEGIN
    IF v_lease < 5 OR v_lease > parecer._setting_int('max_lease_seconds') THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid lease_seconds: %s', v_lease),
                                 pg_catalog.format('lease_seconds must be between 5 and %s (setting max_lease_seconds).',
                                                   parecer._setting_int('max_lease_seconds')));
    END IF;
    PERFORM parecer._lease(extend_lease.analysis_id, extend_lease.lease_token);
    UPDATE parecer.analyses a
       SET lease_expires_at = now() + make_interval(secs => v_lease), updated_at = now()
     WHERE a.analysis_id = extend_lease.analysis_id
    RETURNING a.lease_expires_at INTO v_exp;
    RETURN v_exp;
END
$$;
COMMENT ON FUNCTION parecer.extend_lease(uuid, uuid, integer) IS
'Heartbeat: extend the lease of an item you hold to now() + lease_seconds (at most the max_lease_seconds setting); returns the new expiry. Errors: PR006 stale lease, PR010, PR011.';

-- The end of an attempt that did not finish its item (mark_failed, release):
-- p_a is the item as their UPDATE left it, NULL when the lease did not match (the
-- error that explains it is raised). Writes the attempt's row and, when it reports
-- usage, its cost (model price table) into the row and the client's spend.
CREATE OR REPLACE FUNCTION parecer._end_attempt(p_a parecer.analyses, p_analysis_id uuid, p_token uuid,
                                                p_outcome text, p_error text, p_usage jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_spent boolean := jsonb_typeof(p_usage) = 'object';
    v_cost  numeric;
BEGIN
    IF p_a.analysis_id IS NULL THEN
        PERFORM parecer._lease_refused(p_analysis_id, p_token);
    END IF;
    IF v_spent THEN
        v_cost := (SELECT c.cost_usd FROM parecer._cost_set(COALESCE(p_usage ->> 'model', p_usage ->> 'requested_model', ''), p_usage) c);
    END IF;
    INSERT INTO parecer._attempts (analysis_id, attempt, worker, lease_token, claimed_at, finished_at, outcome,
                                   error, usage, cost_usd)
    VALUES (p_a.analysis_id, p_a.claims, COALESCE(p_a.worker, '?'), p_token, COALESCE(p_a.started_at, now()), now(),
            p_outcome, p_error, p_usage, v_cost);
    IF v_spent THEN
        PERFORM parecer._add_spend(p_a.client_id, p_a.client_slug, parecer._budget_day(), ARRAY[p_usage], v_cost);
    END IF;
END
$$;

-- A failed attempt of an item you hold: pending again after the backoff, or
-- failed for good after max_attempts or when not retryable.
CREATE OR REPLACE FUNCTION parecer.mark_failed(analysis_id uuid, lease_token uuid, error text, retryable boolean DEFAULT true,
                                               usage jsonb DEFAULT NULL)
RETURNS parecer.item_outcome
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_max   integer := parecer._setting_int('max_attempts');
    v_error text := left(COALESCE(NULLIF(btrim(mark_failed.error), ''), 'unspecified error'), 1000);
    v_a     parecer.analyses;   -- the item as the UPDATE left it (NULL: the lease did not match)
BEGIN
    UPDATE parecer.analyses a
       SET status = CASE WHEN NOT COALESCE(retryable, true) OR a.retry_count + 1 >= v_max THEN 'failed'
                         ELSE 'pending' END,
           retry_count = a.retry_count + 1,
           next_retry_at = CASE WHEN NOT COALESCE(retryable, true) OR a.retry_count + 1 >= v_max THEN NULL
                                ELSE now() + parecer._backoff(a.retry_count + 1) END,
           error = v_error,
           lease_token = NULL, lease_expires_at = NULL, updated_at = now()
     WHERE a.analysis_id = mark_failed.analysis_id   -- a lease token only while processing (analyses_state_check)
       AND a.lease_token = mark_failed.lease_token AND a.lease_expires_at >= now() AND parecer._serves(a.client_id)
    RETURNING a.* INTO v_a;
    PERFORM parecer._end_attempt(v_a, mark_failed.analysis_id, mark_failed.lease_token, 'failed', v_error,
                                 CASE WHEN parecer._usage_ok(mark_failed.usage) THEN mark_failed.usage END);
    RETURN ROW(v_a.status, v_a.retry_count, v_a.next_retry_at)::parecer.item_outcome;
END
$$;
COMMENT ON FUNCTION parecer.mark_failed(uuid, uuid, text, boolean, jsonb) IS
'Record a failed attempt of an item you hold (usage: tokens the failed call cost, if any): retry_count + 1, pending again at next_retry_at = now() + backoff_schedule[retry_count]; status failed (terminal) after max_attempts or at once with retryable => false. Errors: PR006, PR011.';

-- Give back an item you hold without spending an attempt.
CREATE OR REPLACE FUNCTION parecer.release(analysis_id uuid, lease_token uuid, delay_seconds integer DEFAULT 0, reason text DEFAULT NULL)
RETURNS parecer.item_outcome
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_max    integer := parecer._setting_int('max_attempts');
    v_max_rel integer := parecer._setting_int('max_releases');
    v_delay  integer := COALESCE(release.delay_seconds, 0);
    v_reason text := left(COALESCE(NULLIF(btrim(release.reason), ''), 'released'), 1000);
    v_a      parecer.analyses;   -- the item as the UPDATE left it (NULL: the lease did not match)
BEGIN
    IF v_delay < 0 OR v_delay > 86400 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid delay_seconds: %s', v_delay), 'delay_seconds must be between 0 and 86400.');
    END IF;
    UPDATE parecer.analyses a
       -- No attempt left (max_attempts lowered while it was in flight), or released
       -- more than max_releases times: terminal.
       SET status = CASE WHEN a.retry_count >= v_max OR a.releases + 1 > v_max_rel THEN 'failed' ELSE 'pending' END,
           next_retry_at = CASE WHEN a.retry_count >= v_max OR a.releases + 1 > v_max_rel OR v_delay = 0 THEN NULL
                                ELSE now() + make_interval(secs => v_delay) END,
           error = CASE WHEN a.releases + 1 > v_max_rel AND a.retry_count < v_max
                        THEN left(pg_catalog.format('released %s times without finishing (max_releases %s); last: %s',
                                                    a.releases + 1, v_max_rel, v_reason), 1000)
                        ELSE a.error END,
           releases = a.releases + 1,
           lease_token = NULL, lease_expires_at = NULL, updated_at = now()
     WHERE a.analysis_id = release.analysis_id   -- a lease token only while processing (analyses_state_check)
       AND a.lease_token = release.lease_token AND a.lease_expires_at >= now() AND parecer._serves(a.client_id)
    RETURNING a.* INTO v_a;
    PERFORM parecer._end_attempt(v_a, release.analysis_id, release.lease_token, 'released', v_reason, NULL);
    RETURN ROW(v_a.status, v_a.retry_count, v_a.next_retry_at)::parecer.item_outcome;
END
$$;
COMMENT ON FUNCTION parecer.release(uuid, uuid, integer, text) IS
'Give back an item you hold without spending an attempt, claimable again after delay_seconds (shutdown, provider throttling). Each release is counted (releases); the release beyond the max_releases setting makes the item a terminal failure ("released N times without finishing"), as does a release of an item with no retry left (max_attempts lowered meanwhile). Errors: PR006, PR010, PR011.';

-- When the next item becomes claimable (or a lease runs out), for a runner's poll timer.
-- now() as soon as a claimable item shows among the first 100 pending items of a
-- client that may get work (not over budget, served by the caller, the one asked
-- for), in the order claims take them (the partial indexes' first entries: the
-- usual case, ~0.1 ms); else, as before, the earliest of every scheduled retry,
-- delayed release and lease expiry of those clients (a pass over their pending
-- and processing items: ~6 ms with 6,000 of them). It was always that pass, and as
-- a SQL function with SECURITY DEFINER it was planned anew on each of a runner's
-- polls.
CREATE OR REPLACE FUNCTION parecer.next_due(client_slug text DEFAULT NULL) RETURNS timestamptz
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_slug    text := client_slug;
    v_clients text[];
BEGIN
    v_clients := ARRAY(
        SELECT b.client_id FROM parecer._budget_state b
        WHERE b.blocked_reason IS NULL
          AND (v_slug IS NULL OR b.client_slug = v_slug)
          AND ((SELECT sc.all_clients FROM parecer._caller_scope sc)
               OR b.client_id = ANY ((SELECT sc.client_ids FROM parecer._caller_scope sc)::text[])));
    IF EXISTS (SELECT FROM unnest(v_clients) c(client_id)
               WHERE EXISTS (SELECT FROM (SELECT a.next_retry_at FROM parecer.analyses a
                                          WHERE a.client_id = c.client_id AND a.status = 'pending' AND NOT a.backlog
                                          ORDER BY a.session_ended_at DESC NULLS LAST, a.created_at DESC
                                          LIMIT 100) h
                             WHERE h.next_retry_at IS NULL OR h.next_retry_at <= now())
                  OR EXISTS (SELECT FROM (SELECT a.next_retry_at FROM parecer.analyses a
                                          WHERE a.client_id = c.client_id AND a.status = 'pending' AND a.backlog
                                          ORDER BY a.session_ended_at ASC NULLS FIRST, a.created_at
                                          LIMIT 100) h
                             WHERE h.next_retry_at IS NULL OR h.next_retry_at <= now())) THEN
        RETURN now();
    END IF;
    RETURN (SELECT min(COALESCE(a.next_retry_at, a.lease_expires_at, now()))
            FROM parecer.analyses a
            WHERE a.status IN ('pending', 'processing') AND a.client_id = ANY (v_clients));
END
$$;
COMMENT ON FUNCTION parecer.next_due(text) IS
'The earliest time an item becomes claimable (a retry or a delayed release falling due, a lease running out; now() if one is claimable already), NULL when nothing is waiting; with the isolation setting on, only items of the caller''s clients count. Runners sleep until then at most.';
