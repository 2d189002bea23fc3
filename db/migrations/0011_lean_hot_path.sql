-- 0011: the hot path, part 2 - one write per attempt, fewer indexes to maintain,
-- the lease checked by the UPDATE that uses it.
--
-- Measured with pgbench (claim -> mark_done, one client, docs/benchmarks.md):
-- writing each attempt row twice (INSERT at claim, UPDATE at the end) cost
-- ~0.1 ms per item; locking the row in _lease and then updating it cost a
-- second row visit and a WAL record; and every status change (never a HOT
-- update: status is in partial-index predicates) inserted into every index of
-- analyses, two of which no query needed.

------------------------------------------------------------------------------
-- 1. An attempt row is written once, when the attempt ends. An attempt in
--    flight is the item's own row (status processing: worker, claims,
--    started_at, lease_token); parecer.attempts shows both.
------------------------------------------------------------------------------
DELETE FROM parecer._attempts t WHERE t.outcome IS NULL;
ALTER TABLE parecer._attempts ALTER COLUMN outcome SET NOT NULL,
                              ALTER COLUMN finished_at SET NOT NULL;
-- Nothing reads attempts by finish time (spend is kept in parecer._spend).
DROP INDEX parecer.attempts_finished_idx;
-- The five CHECK constraints of analyses as one: every UPDATE re-reads and
-- prepares each constraint expression, and an item changes state twice per attempt.
ALTER TABLE parecer.analyses
    DROP CONSTRAINT analyses_status_check, DROP CONSTRAINT analyses_retry_count_check,
    DROP CONSTRAINT analyses_check, DROP CONSTRAINT analyses_check1, DROP CONSTRAINT analyses_check2,
    ADD CONSTRAINT analyses_state_check CHECK (
        status IN ('pending', 'processing', 'done', 'failed')
        AND retry_count >= 0
        -- a lease exists exactly while an item is processing
        AND (status = 'processing') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)
        AND (status <> 'done' OR (report IS NOT NULL AND next_retry_at IS NULL))
        AND (status <> 'processing' OR next_retry_at IS NULL));
-- Nothing filters on (client_id, script_id, status): the claim walks
-- analyses_fresh_idx / analyses_backlog_idx, the rest are whole-queue aggregates.
DROP INDEX parecer.analyses_client_idx;

-- A report's usage is its done attempt's (written once, there).
CREATE OR REPLACE VIEW parecer.reports AS
SELECT a.analysis_id, a.client_slug, a.session_id, s.script_key, s.version AS script_version,
       a.analysis_version_tag, a.report, a.model, a.prompt_hash, a.processed_at, COALESCE(t.usage, a.usage) AS usage
FROM parecer.analyses a
JOIN parecer.scripts s ON s.script_id = a.script_id
LEFT JOIN parecer._attempts t ON t.analysis_id = a.analysis_id AND t.attempt = a.claims
WHERE a.status = 'done';
COMMENT ON VIEW parecer.reports IS 'Checked, grounded reports: one row per done analysis.';

CREATE OR REPLACE VIEW parecer.attempts AS
SELECT t.analysis_id, t.attempt, t.worker, t.claimed_at, t.finished_at,
       t.outcome, t.error, t.model, t.usage,
       a.client_slug, a.session_id
FROM parecer._attempts t
JOIN parecer.analyses a ON a.analysis_id = t.analysis_id
UNION ALL
SELECT a.analysis_id, a.claims, a.worker, a.started_at, NULL::timestamptz,
       'processing', NULL::text, NULL::text, NULL::jsonb,
       a.client_slug, a.session_id
FROM parecer.analyses a
WHERE a.status = 'processing';
COMMENT ON VIEW parecer.attempts IS 'Attempt history: one row per claim (outcome done, failed, released, expired, reset, or processing while in flight).';

-- Spend accounting: the trigger on _attempts (six queries and three nested
-- calls per attempt, 11% of the server's time in benchmark 1) becomes one
-- statement in the function that writes the attempt row; the budget alerts
-- run only for a client with a budget.
DROP TRIGGER attempts_cost ON parecer._attempts;
DROP FUNCTION parecer._attempt_cost();

-- Raise budget alerts (NOTIFY parecer_budget, once per client, period and threshold) at 80% and 100%.
CREATE FUNCTION parecer._budget_alerts_check(p_client_id text, p_client_slug text, p_day date,
                                             p_daily numeric, p_monthly numeric) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_spent  numeric;
    v_period text;
    v_budget numeric;
    v_start  date;
    v_pct    integer;
BEGIN
    FOREACH v_period IN ARRAY ARRAY['day', 'month'] LOOP
        v_budget := CASE v_period WHEN 'day' THEN p_daily ELSE p_monthly END;
        CONTINUE WHEN v_budget IS NULL;
        v_start := CASE v_period WHEN 'day' THEN p_day ELSE date_trunc('month', p_day)::date END;
        SELECT COALESCE(sum(s.cost_usd), 0) INTO v_spent FROM parecer._spend s
         WHERE s.client_id = p_client_id AND s.day >= v_start AND s.day <= p_day;
        FOREACH v_pct IN ARRAY ARRAY[80, 100] LOOP
            IF v_spent >= v_budget * v_pct / 100.0 THEN
                INSERT INTO parecer._budget_alerts (client_id, period, period_start, threshold, spent_usd, budget_usd)
                VALUES (p_client_id, v_period, v_start, v_pct, v_spent, v_budget)
                ON CONFLICT DO NOTHING;
                IF FOUND THEN
                    PERFORM pg_notify('parecer_budget', json_build_object(
                        'client', p_client_slug, 'period', v_period, 'threshold', v_pct,
                        'spent_usd', round(v_spent, 4), 'budget_usd', v_budget)::text);
                END IF;
            END IF;
        END LOOP;
    END LOOP;
END
$$;

-- Write the row of an attempt that ended and, when it reports usage, its cost
-- (model price table) into the attempt and the client's spend of the day.
CREATE FUNCTION parecer._end_attempt(p_analysis_id uuid, p_attempt integer, p_worker text, p_token uuid,
                                     p_claimed_at timestamptz, p_outcome text, p_error text, p_model text,
                                     p_prompt_hash text, p_usage jsonb, p_client_id text, p_client_slug text)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_day     date;
    v_cost    numeric;
    v_daily   numeric;
    v_monthly numeric;
    v_shard   smallint := pg_backend_pid() % 16;
BEGIN
    IF p_usage IS NULL OR jsonb_typeof(p_usage) <> 'object' THEN
        INSERT INTO parecer._attempts (analysis_id, attempt, worker, lease_token, claimed_at, finished_at, outcome,
                                       error, model, prompt_hash, usage)
        VALUES (p_analysis_id, p_attempt, COALESCE(p_worker, '?'), p_token, COALESCE(p_claimed_at, now()), now(),
                p_outcome, p_error, p_model, p_prompt_hash, p_usage);
        RETURN;
    END IF;
    -- The budget day, the cost (longest matching price prefix; NULL when the model is
    -- unpriced) and the client's budgets, in one query.
    SELECT (now() AT TIME ZONE COALESCE(st.value, st.default_value))::date, pr.usd,
           pol.daily_budget_usd, pol.monthly_budget_usd
      INTO v_day, v_cost, v_daily, v_monthly
      FROM parecer._settings st
      LEFT JOIN LATERAL (
            SELECT round((GREATEST(COALESCE((p_usage ->> 'input_tokens')::numeric, 0)
                                   - COALESCE((p_usage ->> 'cached_input_tokens')::numeric, 0), 0) * p.input_usd_per_mtok
                         + COALESCE((p_usage ->> 'cached_input_tokens')::numeric, 0) * p.cached_input_usd_per_mtok
                         + COALESCE((p_usage ->> 'output_tokens')::numeric, 0) * p.output_usd_per_mtok) / 1000000, 8) AS usd
            FROM parecer._model_prices p
            WHERE starts_with(COALESCE(p_model, p_usage ->> 'model', p_usage ->> 'requested_model', ''), p.model)
            ORDER BY length(p.model) DESC
            LIMIT 1) pr ON true
      LEFT JOIN parecer._client_policy pol ON pol.client_id = p_client_id
     WHERE st.name = 'budget_timezone';

    INSERT INTO parecer._attempts (analysis_id, attempt, worker, lease_token, claimed_at, finished_at, outcome,
                                   error, model, prompt_hash, usage, cost_usd)
    VALUES (p_analysis_id, p_attempt, COALESCE(p_worker, '?'), p_token, COALESCE(p_claimed_at, now()), now(),
            p_outcome, p_error, p_model, p_prompt_hash, p_usage, v_cost);

    -- Counters are sharded by backend so that concurrent calls for one client do not
    -- serialise on one row; readers sum the shards. A plain UPDATE first: the upsert's
    -- conflict path locks the row and writes one more WAL record per attempt.
    UPDATE parecer._spend s
       SET attempts = s.attempts + 1,
           input_tokens = s.input_tokens + COALESCE((p_usage ->> 'input_tokens')::bigint, 0),
           cached_input_tokens = s.cached_input_tokens + COALESCE((p_usage ->> 'cached_input_tokens')::bigint, 0),
           output_tokens = s.output_tokens + COALESCE((p_usage ->> 'output_tokens')::bigint, 0),
           cost_usd = s.cost_usd + COALESCE(v_cost, 0)
     WHERE s.client_id = p_client_id AND s.day = v_day AND s.shard = v_shard;
    IF NOT FOUND THEN
        INSERT INTO parecer._spend AS s (client_id, client_slug, day, shard, attempts, input_tokens,
                                         cached_input_tokens, output_tokens, cost_usd)
        VALUES (p_client_id, p_client_slug, v_day, v_shard, 1,
                COALESCE((p_usage ->> 'input_tokens')::bigint, 0), COALESCE((p_usage ->> 'cached_input_tokens')::bigint, 0),
                COALESCE((p_usage ->> 'output_tokens')::bigint, 0), COALESCE(v_cost, 0))
        ON CONFLICT (client_id, day, shard) DO UPDATE
            SET attempts = s.attempts + 1, input_tokens = s.input_tokens + EXCLUDED.input_tokens,
                cached_input_tokens = s.cached_input_tokens + EXCLUDED.cached_input_tokens,
                output_tokens = s.output_tokens + EXCLUDED.output_tokens, cost_usd = s.cost_usd + EXCLUDED.cost_usd;
    END IF;

    IF v_daily IS NOT NULL OR v_monthly IS NOT NULL THEN
        PERFORM parecer._budget_alerts_check(p_client_id, p_client_slug, v_day, v_daily, v_monthly);
    END IF;
END
$$;

-- Lease expiry ends the dead runner's attempt as 'expired'.
CREATE OR REPLACE FUNCTION parecer._expire_leases() RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v_max integer := parecer._setting_int('max_attempts');
    v_n   integer;
BEGIN
    WITH x AS MATERIALIZED (
        SELECT a.analysis_id, a.claims, a.worker, a.lease_token, a.started_at
        FROM parecer.analyses a
        WHERE a.status = 'processing' AND a.lease_expires_at < now()
        ORDER BY a.lease_expires_at
        LIMIT 1000
        FOR UPDATE SKIP LOCKED
    ), u AS (
        UPDATE parecer.analyses a
           SET status = 'failed',
               retry_count = a.retry_count + 1,
               next_retry_at = CASE WHEN a.retry_count + 1 >= v_max THEN NULL
                                    ELSE now() + parecer._backoff(a.retry_count + 1) END,
               error = 'lease expired: worker ' || COALESCE(a.worker, '?') || ' stopped without reporting',
               lease_token = NULL, lease_expires_at = NULL, updated_at = now()
          FROM x
         WHERE a.analysis_id = x.analysis_id
        RETURNING a.analysis_id, a.error
    ), t AS (
        INSERT INTO parecer._attempts (analysis_id, attempt, worker, lease_token, claimed_at, finished_at, outcome, error)
        SELECT x.analysis_id, x.claims, COALESCE(x.worker, '?'), x.lease_token, COALESCE(x.started_at, now()), now(),
               'expired', u.error
        FROM u JOIN x ON x.analysis_id = u.analysis_id
    )
    SELECT count(*) INTO v_n FROM u;
    RETURN v_n;
END
$$;

------------------------------------------------------------------------------
-- 2. The claim: one plpgsql function (no SQL wrapper to plan per call), both
--    settings in one read, no attempt row.
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION parecer.claim(
    worker        text,
    max_items     integer DEFAULT 1,
    lease_seconds integer DEFAULT NULL,
    client_slug   text DEFAULT NULL
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
COMMENT ON FUNCTION parecer.claim(text, integer, integer, text) IS
'Claim up to max_items claimable items (pending, or failed with a retry due) with a lease of lease_seconds (default: setting lease_seconds). Fair across clients: weighted round-robin by client priority, each client''s fresh work newest-ended session first, then backlog runs oldest first; clients over budget get nothing (see parecer.budgets). Items whose lease expired are recovered first, as a failed attempt. Errors: PR010.';
DROP FUNCTION parecer._claim(text, integer, integer, text);

------------------------------------------------------------------------------
-- 3. The report check without nested calls. _check_report walks the report
--    with ~25 nested plpgsql calls and queries to say exactly what is wrong; a
--    report that is right needs none of that. _report_ok answers yes/no with
--    plpgsql "simple expressions" only (evaluated in place, no executor start,
--    no subquery) and one query for the grounding of all evidence at once;
--    only a "no" runs _check_report for the error. tests/test_fuzz.py checks
--    that the two agree on every report it generates.
------------------------------------------------------------------------------
CREATE FUNCTION parecer._report_ok(p_report jsonb, p_topics text[], p_session_id text) RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    k_report  constant text[] := ARRAY['schema_version', 'summary', 'outcome', 'sentiment', 'topics', 'flags',
                                       'insufficient_context', 'next_action'];
    k_outcome constant text[] := ARRAY['evidence', 'status'];
    k_senti   constant text[] := ARRAY['evidence', 'start', 'end'];
    k_topic   constant text[] := ARRAY['topic', 'evidence', 'present', 'confidence'];
    k_flag    constant text[] := ARRAY['evidence', 'flag'];
    k_ev      constant text[] := ARRAY['message_id', 'excerpt'];
    v         jsonb;
    v_list    jsonb;
    v_evs     jsonb := '[]';    -- every evidence array, concatenated
    v_topics  text[] := '{}';
    v_ids     text[] := '{}';
    v_excerpt text[] := '{}';
    i         integer;
BEGIN
    -- An object whose keys are exactly ks: has them all, and nothing is left without them.
    IF jsonb_typeof(p_report) IS DISTINCT FROM 'object' OR NOT p_report ?& k_report
       OR (p_report - k_report) <> '{}' THEN
        RETURN false;
    END IF;
    IF jsonb_typeof(p_report -> 'schema_version') <> 'string' OR p_report ->> 'schema_version' <> 'parecer.report.v1'
       OR jsonb_typeof(p_report -> 'summary') <> 'string'
       OR jsonb_typeof(p_report -> 'insufficient_context') <> 'boolean'
       OR jsonb_typeof(p_report -> 'next_action') NOT IN ('string', 'null') THEN
        RETURN false;
    END IF;

    v := p_report -> 'outcome';
    IF jsonb_typeof(v) <> 'object' OR NOT v ?& k_outcome OR (v - k_outcome) <> '{}'
       OR jsonb_typeof(v -> 'status') <> 'string'
       OR v ->> 'status' NOT IN ('resolved', 'unresolved', 'escalated', 'abandoned', 'unknown')
       OR jsonb_typeof(v -> 'evidence') <> 'array' THEN
        RETURN false;
    END IF;
    v_evs := v_evs || (v -> 'evidence');

    v := p_report -> 'sentiment';
    IF jsonb_typeof(v) <> 'object' OR NOT v ?& k_senti OR (v - k_senti) <> '{}'
       OR jsonb_typeof(v -> 'start') <> 'string' OR jsonb_typeof(v -> 'end') <> 'string'
       OR v ->> 'start' NOT IN ('positive', 'neutral', 'negative', 'unknown')
       OR v ->> 'end' NOT IN ('positive', 'neutral', 'negative', 'unknown')
       OR jsonb_typeof(v -> 'evidence') <> 'array' THEN
        RETURN false;
    END IF;
    v_evs := v_evs || (v -> 'evidence');

    v_list := p_report -> 'topics';
    IF jsonb_typeof(v_list) <> 'array' THEN
        RETURN false;
    END IF;
    FOR i IN 0 .. jsonb_array_length(v_list) - 1 LOOP
        v := v_list -> i;
        IF jsonb_typeof(v) <> 'object' OR NOT v ?& k_topic OR (v - k_topic) <> '{}'
           OR jsonb_typeof(v -> 'topic') <> 'string' OR jsonb_typeof(v -> 'present') <> 'boolean'
           OR jsonb_typeof(v -> 'confidence') <> 'number' OR jsonb_typeof(v -> 'evidence') <> 'array' THEN
            RETURN false;
        END IF;
        IF (v ->> 'confidence')::numeric NOT BETWEEN 0 AND 1          -- a number (checked above)
           OR array_position(v_topics, v ->> 'topic') IS NOT NULL THEN   -- each topic once
            RETURN false;
        END IF;
        v_topics := v_topics || (v ->> 'topic');
        v_evs := v_evs || (v -> 'evidence');
    END LOOP;
    IF cardinality(v_topics) <> cardinality(p_topics) OR NOT (v_topics <@ p_topics AND v_topics @> p_topics) THEN
        RETURN false;
    END IF;

    v_list := p_report -> 'flags';
    IF jsonb_typeof(v_list) <> 'array' THEN
        RETURN false;
    END IF;
    FOR i IN 0 .. jsonb_array_length(v_list) - 1 LOOP
        v := v_list -> i;
        IF jsonb_typeof(v) <> 'object' OR NOT v ?& k_flag OR (v - k_flag) <> '{}'
           OR jsonb_typeof(v -> 'flag') <> 'string'
           OR v ->> 'flag' NOT IN ('churn_risk', 'complaint', 'legal_threat', 'agent_error', 'slow_response',
                                   'sensitive_data', 'abusive_language', 'human_requested')
           OR jsonb_typeof(v -> 'evidence') <> 'array' THEN
            RETURN false;
        END IF;
        v_evs := v_evs || (v -> 'evidence');
    END LOOP;

    FOR i IN 0 .. jsonb_array_length(v_evs) - 1 LOOP
        v := v_evs -> i;
        IF jsonb_typeof(v) <> 'object' OR NOT v ?& k_ev OR (v - k_ev) <> '{}'
           OR jsonb_typeof(v -> 'message_id') <> 'string' OR jsonb_typeof(v -> 'excerpt') <> 'string' THEN
            RETURN false;
        END IF;
        IF parecer._norm(v ->> 'excerpt') = '' OR length(v ->> 'excerpt') > 500 THEN
            RETURN false;
        END IF;
        v_ids := v_ids || (v ->> 'message_id');
        v_excerpt := v_excerpt || parecer._norm(v ->> 'excerpt');
    END LOOP;

    -- Grounding, one query for all: each evidence cites a message of this session
    -- whose text contains the excerpt.
    RETURN cardinality(v_ids) = 0 OR NOT EXISTS (
        SELECT FROM unnest(v_ids, v_excerpt) AS e(message_id, excerpt)
        WHERE NOT EXISTS (
            SELECT FROM parecer.source_messages m
            WHERE m.message_id = e.message_id AND m.session_id = p_session_id
              AND (strpos(parecer._norm(m.body), e.excerpt) > 0
                   OR strpos(parecer._norm(m.transcription), e.excerpt) > 0)));
END
$$;

------------------------------------------------------------------------------
-- 4. Ending an attempt: the lease is checked by the UPDATE itself (one row
--    visit, no separate row lock); _lease only explains a refusal.
------------------------------------------------------------------------------
-- Raise the error that explains why an item is not leased to the caller:
-- PR011 unknown item, PR006 stale or expired lease.
CREATE FUNCTION parecer._lease_refused(p_analysis_id uuid, p_token uuid) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM parecer._lease(p_analysis_id, p_token);
    -- _lease found the lease valid: the caller's UPDATE lost a race it can retry.
    RAISE EXCEPTION 'analysis % changed while it was being updated', p_analysis_id
        USING ERRCODE = '40001', HINT = 'Retry the call.';
END
$$;

CREATE OR REPLACE FUNCTION parecer.mark_done(analysis_id uuid, lease_token uuid, report jsonb, model text,
                                             prompt_hash text, usage jsonb DEFAULT NULL)
RETURNS parecer.item_outcome
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_session text;
    v_topics  text[];
    v_claims  integer;
    v_worker  text;
    v_started timestamptz;
    v_retries integer;
    v_client  text;
    v_slug    text;
BEGIN
    IF mark_done.report IS NULL THEN   -- the UPDATE below would trip the done-needs-a-report CHECK
        PERFORM parecer._lease(mark_done.analysis_id, mark_done.lease_token);
        PERFORM parecer._bad_report('report must be an object');
    END IF;
    UPDATE parecer.analyses a
       SET status = 'done', report = mark_done.report, model = mark_done.model,
           prompt_hash = mark_done.prompt_hash, usage = NULL, error = NULL,   -- usage: in the attempt row
           next_retry_at = NULL, lease_token = NULL, lease_expires_at = NULL,
           processed_at = now(), updated_at = now()
      FROM parecer.scripts s
     WHERE a.analysis_id = mark_done.analysis_id AND a.status = 'processing'
       AND a.lease_token = mark_done.lease_token AND a.lease_expires_at >= now()
       AND s.script_id = a.script_id
    RETURNING a.session_id, s.topics, a.claims, a.worker, a.started_at, a.retry_count, a.client_id, a.client_slug
         INTO v_session, v_topics, v_claims, v_worker, v_started, v_retries, v_client, v_slug;
    IF NOT FOUND THEN
        PERFORM parecer._lease_refused(mark_done.analysis_id, mark_done.lease_token);
    END IF;
    -- Any error from here on undoes the UPDATE: a refused report changes nothing.
    IF mark_done.usage IS NOT NULL AND NOT parecer._usage_ok(mark_done.usage) THEN
        PERFORM parecer._invalid('usage must be a JSON object with non-negative integer token counts, or NULL',
                                 'e.g. {"input_tokens": 1200, "cached_input_tokens": 0, "output_tokens": 300}');
    END IF;
    IF mark_done.prompt_hash IS NULL OR mark_done.prompt_hash !~ '^[0-9a-f]{64}$' THEN
        PERFORM parecer._invalid('prompt_hash must be a sha256 hex digest', 'Use prompt_hash from parecer.prompt_for.');
    END IF;
    IF mark_done.model IS NULL OR btrim(mark_done.model) = '' OR length(mark_done.model) > 200 THEN
        PERFORM parecer._invalid('model must name the model that answered', 'Pass the model from the provider''s response.');
    END IF;
    IF NOT parecer._report_ok(mark_done.report, v_topics, v_session) THEN
        PERFORM parecer._check_report(mark_done.report, v_topics, v_session);   -- raises PR007 / PR008
    END IF;

    PERFORM parecer._end_attempt(mark_done.analysis_id, v_claims, v_worker, mark_done.lease_token, v_started, 'done',
                                 NULL, mark_done.model, mark_done.prompt_hash, mark_done.usage, v_client, v_slug);
    RETURN ROW('done', v_retries, NULL)::parecer.item_outcome;
END
$$;
COMMENT ON FUNCTION parecer.mark_done(uuid, uuid, jsonb, text, text, jsonb) IS
'Store the report of an item you hold, after checking it against the report schema and grounding every evidence in the session''s messages. A failing report changes nothing. Errors: PR006 stale lease, PR007 invalid report, PR008 ungrounded evidence, PR010, PR011.';

CREATE OR REPLACE FUNCTION parecer.mark_failed(analysis_id uuid, lease_token uuid, error text, retryable boolean DEFAULT true,
                                               usage jsonb DEFAULT NULL)
RETURNS parecer.item_outcome
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_max   integer := parecer._setting_int('max_attempts');
    v_error text := left(COALESCE(NULLIF(btrim(mark_failed.error), ''), 'unspecified error'), 1000);
    v_status  text;
    v_retries integer;
    v_next    timestamptz;
    v_claims  integer;
    v_worker  text;
    v_started timestamptz;
    v_client  text;
    v_slug    text;
BEGIN
    UPDATE parecer.analyses a
       SET status = 'failed',
           retry_count = a.retry_count + 1,
           next_retry_at = CASE WHEN NOT COALESCE(retryable, true) OR a.retry_count + 1 >= v_max THEN NULL
                                ELSE now() + parecer._backoff(a.retry_count + 1) END,
           error = v_error,
           lease_token = NULL, lease_expires_at = NULL, updated_at = now()
     WHERE a.analysis_id = mark_failed.analysis_id AND a.status = 'processing'
       AND a.lease_token = mark_failed.lease_token AND a.lease_expires_at >= now()
    RETURNING a.status, a.retry_count, a.next_retry_at, a.claims, a.worker, a.started_at, a.client_id, a.client_slug
         INTO v_status, v_retries, v_next, v_claims, v_worker, v_started, v_client, v_slug;
    IF NOT FOUND THEN
        PERFORM parecer._lease_refused(mark_failed.analysis_id, mark_failed.lease_token);
    END IF;
    PERFORM parecer._end_attempt(mark_failed.analysis_id, v_claims, v_worker, mark_failed.lease_token, v_started,
                                 'failed', v_error, NULL, NULL,
                                 CASE WHEN parecer._usage_ok(mark_failed.usage) THEN mark_failed.usage END, v_client, v_slug);
    RETURN ROW(v_status, v_retries, v_next)::parecer.item_outcome;
END
$$;
COMMENT ON FUNCTION parecer.mark_failed(uuid, uuid, text, boolean, jsonb) IS
'Record a failed attempt of an item you hold (usage: tokens the failed call cost, if any): retry_count + 1 and next_retry_at = now() + backoff_schedule[retry_count]; terminal (next_retry_at NULL) after max_attempts or at once with retryable => false. Errors: PR006, PR011.';

CREATE OR REPLACE FUNCTION parecer.release(analysis_id uuid, lease_token uuid, delay_seconds integer DEFAULT 0, reason text DEFAULT NULL)
RETURNS parecer.item_outcome
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_max    integer := parecer._setting_int('max_attempts');
    v_delay  integer := COALESCE(release.delay_seconds, 0);
    v_reason text := left(COALESCE(NULLIF(btrim(release.reason), ''), 'released'), 1000);
    v_status  text;
    v_retries integer;
    v_next    timestamptz;
    v_claims  integer;
    v_worker  text;
    v_started timestamptz;
    v_client  text;
    v_slug    text;
BEGIN
    IF v_delay < 0 OR v_delay > 86400 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid delay_seconds: %s', v_delay), 'delay_seconds must be between 0 and 86400.');
    END IF;
    UPDATE parecer.analyses a
       SET status = CASE WHEN a.retry_count = 0 THEN 'pending' ELSE 'failed' END,
           next_retry_at = CASE WHEN a.retry_count = 0 AND v_delay = 0 THEN NULL
                                -- No retry left (max_attempts lowered while in flight): terminal, since
                                -- claim would never take it and it would wait as "retrying" forever.
                                WHEN a.retry_count >= v_max THEN NULL
                                ELSE now() + make_interval(secs => v_delay) END,
           lease_token = NULL, lease_expires_at = NULL, updated_at = now()
     WHERE a.analysis_id = release.analysis_id AND a.status = 'processing'
       AND a.lease_token = release.lease_token AND a.lease_expires_at >= now()
    RETURNING a.status, a.retry_count, a.next_retry_at, a.claims, a.worker, a.started_at, a.client_id, a.client_slug
         INTO v_status, v_retries, v_next, v_claims, v_worker, v_started, v_client, v_slug;
    IF NOT FOUND THEN
        PERFORM parecer._lease_refused(release.analysis_id, release.lease_token);
    END IF;
    INSERT INTO parecer._attempts (analysis_id, attempt, worker, lease_token, claimed_at, finished_at, outcome, error)
    VALUES (release.analysis_id, v_claims, v_worker, release.lease_token, v_started, now(), 'released', v_reason);
    RETURN ROW(v_status, v_retries, v_next)::parecer.item_outcome;
END
$$;
COMMENT ON FUNCTION parecer.release(uuid, uuid, integer, text) IS
'Give back an item you hold without spending an attempt, claimable again after delay_seconds (shutdown, provider throttling); an item with no retry left (max_attempts lowered meanwhile) becomes a terminal failure. Errors: PR006, PR010, PR011.';

-- Queue sessions for one script version and tag. Without force, existing items are skipped;
-- with force, they are reset to pending whatever their state (done included).
CREATE OR REPLACE FUNCTION parecer.enqueue(
    session_ids          text[],
    script_id            bigint,
    analysis_version_tag text DEFAULT 'v1',
    force_reprocess      boolean DEFAULT false,
    run_id               bigint DEFAULT NULL
) RETURNS TABLE (enqueued integer, reset integer, skipped integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
        WITH lk AS (
            SELECT a.analysis_id, a.status, a.claims, a.worker, a.lease_token, a.started_at
            FROM parecer.analyses a
            WHERE a.session_id = ANY (v_ids) AND a.script_id = v_script.script_id
              AND a.analysis_version_tag = enqueue.analysis_version_tag
            ORDER BY a.analysis_id
            FOR UPDATE
        )
        INSERT INTO parecer._attempts (analysis_id, attempt, worker, lease_token, claimed_at, finished_at, outcome, error)
        SELECT lk.analysis_id, lk.claims, COALESCE(lk.worker, '?'), lk.lease_token, COALESCE(lk.started_at, now()), now(),
               'reset', 'reset by enqueue(force_reprocess)'
        FROM lk WHERE lk.status = 'processing';
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
            SET status = 'pending', report = NULL, error = NULL, retry_count = 0, next_retry_at = NULL,
                processed_at = NULL, started_at = NULL, worker = NULL, lease_token = NULL,
                lease_expires_at = NULL, model = NULL, prompt_hash = NULL, usage = NULL,
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
'Queue sessions for a script version and analysis tag: new items are inserted pending, existing ones skipped, or with force_reprocess reset to pending whatever their state. One NOTIFY parecer_work per call. Errors: PR002 unknown script, PR010 bad argument, PR012 unknown run, PR014 unknown session.';

-- The transcript text as PL/pgSQL: a SQL function with a FROM clause cannot be
-- inlined and is planned on every call (10% of the server's time when benchmark 1
-- calls prompt_for for each item); a PL/pgSQL function's plan is cached for the
-- session. The same text, byte for byte.
CREATE OR REPLACE FUNCTION parecer._transcript_text(p_session_id text, p_language text) RETURNS text
LANGUAGE plpgsql STABLE
AS $fn$
BEGIN
    RETURN (
        SELECT COALESCE(string_agg(
                   '[msg ' || replace(replace(COALESCE(m.message_id, '?'), ']', ')'), E'\n', ' ') || '] '
                || COALESCE(to_char(m.sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), '????-??-??T??:??:??Z') || ' '
                || CASE WHEN m.from_me THEN l.agent ELSE l.customer END || ': '
                || replace(
                     CASE
                       WHEN lower(COALESCE(m.media_type, 'text')) IN ('audio', 'ptt', 'voice') THEN
                         CASE WHEN NULLIF(btrim(m.transcription), '') IS NOT NULL
                              THEN l.audio_transcribed || ' ' || btrim(m.transcription)
                              ELSE l.audio_missing END
                       WHEN lower(COALESCE(m.media_type, 'text')) IN ('text', 'chat', 'conversation', '') THEN
                         COALESCE(NULLIF(btrim(m.body), ''), l.empty_message)
                       ELSE
                         '[' || lower(m.media_type) || ']' || COALESCE(' ' || NULLIF(btrim(m.body), ''), '')
                     END,
                     E'\n', E'\n    '),
                 E'\n' ORDER BY m.sent_at NULLS LAST, m.message_id NULLS LAST), '')
        FROM parecer.source_messages m
        CROSS JOIN parecer._labels(p_language) l
        WHERE m.session_id = p_session_id
    );
END
$fn$;

-- Why claim holds a client's work back, as PL/pgSQL for the same reason: the
-- claim asks it for every client with a budget, on every call, and as a SQL
-- function it re-planned the budget-state view each time.
CREATE OR REPLACE FUNCTION parecer._blocked_reason(p_client_id text) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT b.blocked_reason FROM parecer._budget_state b WHERE b.client_id = p_client_id);
END
$$;

-- Functions are executable by PUBLIC when created (a per-schema default privilege
-- cannot take that back): revoke, as every migration that creates functions does.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA parecer FROM PUBLIC;
