-- 0016: the attempt that finishes an item is the item's own row.
--
-- Since 0011 an attempt in flight is the item's row (status processing) and
-- every attempt that ended was written to parecer._attempts. Now the attempt
-- that ends with mark_done stays in the item's row too: the row already holds
-- its worker, claims (the attempt number), started_at, processed_at, model and
-- prompt_hash; it now keeps the usage and the new cost_usd as well. mark_done
-- thus inserts nothing: no attempt row, no primary-key entry, and no foreign-key
-- check (which locked the item's row again: one more WAL record). parecer._attempts
-- keeps the attempts that did not finish their item (failed, released, expired,
-- reset) and, when a done item is queued again with force_reprocess, its done
-- attempt, moved there before the row is reset. parecer._finished_attempts is
-- the union of both; parecer.attempts, run_costs and estimate_cost read it.
--
-- Also:
-- * the lease check of mark_done, mark_failed and release no longer names
--   status = 'processing': a matching lease token implies it (a token exists
--   only while processing, analyses_state_check), and without it the planner
--   stays on the primary key instead of the partial lease index, whose dead
--   entries grow with every lease that ended since the last vacuum;
-- * the usage and prompt_hash checks use no regular expression: `~ '^[0-9a-f]{64}$'`
--   cost ~5 us per call (a bounded repetition), length + ltrim ~0.5 us.
-- pgbench, both versions interleaved in one run (claim, mark_done, rolled back):
-- mark_done 0.49 vs 0.61 ms (0.44 vs 0.48 ms for a first draft, another phase of
-- the VM); WAL per mark_done 5.5 records / 1.46 KiB instead of 8.9 / 1.80 KiB.

ALTER TABLE parecer.analyses ADD COLUMN cost_usd numeric;
COMMENT ON COLUMN parecer.analyses.cost_usd IS
'Cost in USD of the attempt that finished the item (done), from its usage and the price table; NULL without usage or for an unpriced model.';
COMMENT ON COLUMN parecer.analyses.usage IS
'Token usage of the attempt that finished the item (done), as mark_done received it.';

-- The done attempt of a done item moves into its row.
UPDATE parecer.analyses a
   SET usage = t.usage, cost_usd = t.cost_usd
  FROM parecer._attempts t
 WHERE a.status = 'done' AND t.analysis_id = a.analysis_id AND t.attempt = a.claims AND t.outcome = 'done';
DELETE FROM parecer._attempts t
 USING parecer.analyses a
 WHERE a.status = 'done' AND t.analysis_id = a.analysis_id AND t.attempt = a.claims AND t.outcome = 'done';

-- A done attempt moved back from an item's row (force_reprocess) has no lease token:
-- the row does not keep the token of a lease that ended.
ALTER TABLE parecer._attempts ALTER COLUMN lease_token DROP NOT NULL;
COMMENT ON TABLE parecer._attempts IS
'Attempts that did not finish their item (failed, released, expired, reset), and done attempts of items queued again. The attempt in flight and the attempt that finished a done item are the item''s row: see parecer._finished_attempts and parecer.attempts.';

CREATE VIEW parecer._finished_attempts AS
SELECT t.analysis_id, t.attempt, t.worker, t.lease_token, t.claimed_at, t.finished_at, t.outcome, t.error,
       t.model, t.prompt_hash, t.usage, t.cost_usd
FROM parecer._attempts t
UNION ALL
SELECT a.analysis_id, a.claims, COALESCE(a.worker, '?'), NULL::uuid, COALESCE(a.started_at, a.processed_at), a.processed_at,
       'done', NULL::text, a.model, a.prompt_hash, a.usage, a.cost_usd
FROM parecer.analyses a
WHERE a.status = 'done' AND a.claims > 0;
COMMENT ON VIEW parecer._finished_attempts IS
'Every attempt that ended: the rows of parecer._attempts and, for each done item, the attempt that finished it (the item''s row).';

CREATE OR REPLACE VIEW parecer.attempts AS
SELECT t.analysis_id, t.attempt, t.worker, t.claimed_at, t.finished_at,
       t.outcome, t.error, t.model, t.usage,
       a.client_slug, a.session_id, t.cost_usd
FROM parecer._finished_attempts t
JOIN parecer.analyses a ON a.analysis_id = t.analysis_id
UNION ALL
SELECT a.analysis_id, a.claims, a.worker, a.started_at, NULL::timestamptz,
       'processing', NULL::text, NULL::text, NULL::jsonb,
       a.client_slug, a.session_id, NULL::numeric
FROM parecer.analyses a
WHERE a.status = 'processing';
COMMENT ON VIEW parecer.attempts IS 'Attempt history: one row per claim (outcome done, failed, released, expired, reset, or processing while in flight), with its usage and cost.';

CREATE OR REPLACE VIEW parecer.reports AS
SELECT a.analysis_id, a.client_slug, a.session_id, s.script_key, s.version AS script_version,
       a.analysis_version_tag, a.report, a.model, a.prompt_hash, a.processed_at, a.usage, a.cost_usd
FROM parecer.analyses a
JOIN parecer.scripts s ON s.script_id = a.script_id
WHERE a.status = 'done';
COMMENT ON VIEW parecer.reports IS 'Checked, grounded reports: one row per done analysis, with the usage and cost of the attempt that produced it.';

CREATE OR REPLACE VIEW parecer.run_costs AS
SELECT ri.run_id, count(t.*) FILTER (WHERE t.usage IS NOT NULL) AS attempts,
       COALESCE(sum((t.usage ->> 'input_tokens')::bigint), 0) AS input_tokens,
       COALESCE(sum((t.usage ->> 'cached_input_tokens')::bigint), 0) AS cached_input_tokens,
       COALESCE(sum((t.usage ->> 'output_tokens')::bigint), 0) AS output_tokens,
       COALESCE(sum(t.cost_usd), 0) AS cost_usd
FROM parecer.run_items ri
LEFT JOIN parecer._finished_attempts t ON t.analysis_id = ri.analysis_id
GROUP BY ri.run_id;
COMMENT ON VIEW parecer.run_costs IS 'Tokens and cost per run (every attempt of the run''s items).';

CREATE OR REPLACE FUNCTION parecer.estimate_cost(script_id bigint, sessions integer) RETURNS numeric
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH per_script AS (
        SELECT sum(t.cost_usd) / NULLIF(count(DISTINCT a.analysis_id) FILTER (WHERE a.status = 'done'), 0) AS c
        FROM parecer.analyses a JOIN parecer._finished_attempts t ON t.analysis_id = a.analysis_id
        WHERE a.script_id = estimate_cost.script_id AND t.cost_usd IS NOT NULL
    ), per_client AS (
        SELECT sum(t.cost_usd) / NULLIF(count(DISTINCT a.analysis_id) FILTER (WHERE a.status = 'done'), 0) AS c
        FROM parecer.analyses a JOIN parecer._finished_attempts t ON t.analysis_id = a.analysis_id
        WHERE a.client_id = (SELECT s.client_id FROM parecer.scripts s WHERE s.script_id = estimate_cost.script_id)
          AND t.cost_usd IS NOT NULL
    )
    SELECT round(COALESCE((SELECT c FROM per_script), (SELECT c FROM per_client)) * GREATEST(sessions, 0), 4)
$$;
COMMENT ON FUNCTION parecer.estimate_cost(bigint, integer) IS
'Estimated cost in USD of analysing `sessions` sessions with a script: the average cost per done analysis (all attempts included) of the script, else of its client; NULL without history.';

-- Usage: token counts are JSON numbers written as 1 to 12 digits (no sign, fraction or exponent).
CREATE OR REPLACE FUNCTION parecer._usage_ok(p_usage jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
SELECT jsonb_typeof(p_usage) IS NOT DISTINCT FROM 'object'
   AND COALESCE(jsonb_typeof(p_usage -> 'input_tokens'), 'null') IN ('null', 'number')
   AND COALESCE(jsonb_typeof(p_usage -> 'cached_input_tokens'), 'null') IN ('null', 'number')
   AND COALESCE(jsonb_typeof(p_usage -> 'output_tokens'), 'null') IN ('null', 'number')
   AND length(COALESCE(p_usage ->> 'input_tokens', '0')) BETWEEN 1 AND 12
   AND ltrim(COALESCE(p_usage ->> 'input_tokens', '0'), '0123456789') = ''
   AND length(COALESCE(p_usage ->> 'cached_input_tokens', '0')) BETWEEN 1 AND 12
   AND ltrim(COALESCE(p_usage ->> 'cached_input_tokens', '0'), '0123456789') = ''
   AND length(COALESCE(p_usage ->> 'output_tokens', '0')) BETWEEN 1 AND 12
   AND ltrim(COALESCE(p_usage ->> 'output_tokens', '0'), '0123456789') = ''
$$;

-- A prompt_hash is a sha256 digest in lowercase hex.
CREATE FUNCTION parecer._sha256_hex(p text) RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$ SELECT length(p) = 64 AND ltrim(p, '0123456789abcdef') = '' $$;

-- Add an attempt's usage and cost to its client's spend of the day, and raise the
-- budget alerts when the client has a budget.
CREATE FUNCTION parecer._add_spend(p_client_id text, p_client_slug text, p_day date, p_usage jsonb, p_cost numeric)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_shard   smallint := pg_backend_pid() % 16;
    v_daily   numeric;
    v_monthly numeric;
BEGIN
    -- Counters are sharded by backend so that concurrent calls for one client do not
    -- serialise on one row; readers sum the shards. A plain UPDATE first: the upsert's
    -- conflict path locks the row and writes one more WAL record per attempt.
    UPDATE parecer._spend s
       SET attempts = s.attempts + 1,
           input_tokens = s.input_tokens + COALESCE((p_usage ->> 'input_tokens')::bigint, 0),
           cached_input_tokens = s.cached_input_tokens + COALESCE((p_usage ->> 'cached_input_tokens')::bigint, 0),
           output_tokens = s.output_tokens + COALESCE((p_usage ->> 'output_tokens')::bigint, 0),
           cost_usd = s.cost_usd + COALESCE(p_cost, 0)
     WHERE s.client_id = p_client_id AND s.day = p_day AND s.shard = v_shard
    RETURNING (SELECT pol.daily_budget_usd FROM parecer._client_policy pol WHERE pol.client_id = p_client_id),
              (SELECT pol.monthly_budget_usd FROM parecer._client_policy pol WHERE pol.client_id = p_client_id)
         INTO v_daily, v_monthly;
    IF NOT FOUND THEN
        INSERT INTO parecer._spend AS s (client_id, client_slug, day, shard, attempts, input_tokens,
                                         cached_input_tokens, output_tokens, cost_usd)
        VALUES (p_client_id, p_client_slug, p_day, v_shard, 1,
                COALESCE((p_usage ->> 'input_tokens')::bigint, 0), COALESCE((p_usage ->> 'cached_input_tokens')::bigint, 0),
                COALESCE((p_usage ->> 'output_tokens')::bigint, 0), COALESCE(p_cost, 0))
        ON CONFLICT (client_id, day, shard) DO UPDATE
            SET attempts = s.attempts + 1, input_tokens = s.input_tokens + EXCLUDED.input_tokens,
                cached_input_tokens = s.cached_input_tokens + EXCLUDED.cached_input_tokens,
                output_tokens = s.output_tokens + EXCLUDED.output_tokens, cost_usd = s.cost_usd + EXCLUDED.cost_usd;
        SELECT pol.daily_budget_usd, pol.monthly_budget_usd INTO v_daily, v_monthly
        FROM parecer._client_policy pol WHERE pol.client_id = p_client_id;
    END IF;
    IF v_daily IS NOT NULL OR v_monthly IS NOT NULL THEN
        PERFORM parecer._budget_alerts_check(p_client_id, p_client_slug, p_day, v_daily, v_monthly);
    END IF;
END
$$;

-- Write the row of an attempt that ended without finishing its item and, when it
-- reports usage, its cost (model price table) into the row and the client's spend.
CREATE OR REPLACE FUNCTION parecer._end_attempt(p_analysis_id uuid, p_attempt integer, p_worker text, p_token uuid,
                                                p_claimed_at timestamptz, p_outcome text, p_error text, p_model text,
                                                p_prompt_hash text, p_usage jsonb, p_client_id text, p_client_slug text)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_day  date;
    v_cost numeric;
BEGIN
    IF p_usage IS NULL OR jsonb_typeof(p_usage) <> 'object' THEN
        INSERT INTO parecer._attempts (analysis_id, attempt, worker, lease_token, claimed_at, finished_at, outcome,
                                       error, model, prompt_hash, usage)
        VALUES (p_analysis_id, p_attempt, COALESCE(p_worker, '?'), p_token, COALESCE(p_claimed_at, now()), now(),
                p_outcome, p_error, p_model, p_prompt_hash, p_usage);
        RETURN;
    END IF;
    SELECT parecer._budget_day(), parecer._cost(COALESCE(p_model, p_usage ->> 'model', p_usage ->> 'requested_model', ''), p_usage)
      INTO v_day, v_cost;
    INSERT INTO parecer._attempts (analysis_id, attempt, worker, lease_token, claimed_at, finished_at, outcome,
                                   error, model, prompt_hash, usage, cost_usd)
    VALUES (p_analysis_id, p_attempt, COALESCE(p_worker, '?'), p_token, COALESCE(p_claimed_at, now()), now(),
            p_outcome, p_error, p_model, p_prompt_hash, p_usage, v_cost);
    PERFORM parecer._add_spend(p_client_id, p_client_slug, v_day, p_usage, v_cost);
END
$$;


-- mark_done: the item's row is the done attempt (usage and cost included); the
-- cost is computed by the UPDATE that stores it, and nothing is inserted.
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
    v_retries integer;
    v_client  text;
    v_slug    text;
    v_cost    numeric;
    v_day     date;
BEGIN
    IF mark_done.report IS NULL THEN   -- the UPDATE below would trip the done-needs-a-report CHECK
        PERFORM parecer._lease(mark_done.analysis_id, mark_done.lease_token);
        PERFORM parecer._bad_report('report must be an object');
    END IF;
    -- The lease check is in the WHERE (a lease token exists only while the item is
    -- processing: analyses_state_check). The cost: longest matching price prefix, NULL
    -- for an unpriced model or without (valid) usage; an invalid usage is refused below.
    UPDATE parecer.analyses a
       SET status = 'done', report = mark_done.report, model = mark_done.model,
           prompt_hash = mark_done.prompt_hash, usage = mark_done.usage, error = NULL,
           cost_usd = CASE WHEN parecer._usage_ok(mark_done.usage) THEN (
                SELECT round((GREATEST(COALESCE((mark_done.usage ->> 'input_tokens')::numeric, 0)
                                       - COALESCE((mark_done.usage ->> 'cached_input_tokens')::numeric, 0), 0) * p.input_usd_per_mtok
                             + COALESCE((mark_done.usage ->> 'cached_input_tokens')::numeric, 0) * p.cached_input_usd_per_mtok
                             + COALESCE((mark_done.usage ->> 'output_tokens')::numeric, 0) * p.output_usd_per_mtok) / 1000000, 8)
                FROM parecer._model_prices p
                WHERE starts_with(COALESCE(mark_done.model, mark_done.usage ->> 'model',
                                           mark_done.usage ->> 'requested_model', ''), p.model)
                ORDER BY length(p.model) DESC
                LIMIT 1) END,
           next_retry_at = NULL, lease_token = NULL, lease_expires_at = NULL,
           processed_at = now(), updated_at = now()
     WHERE a.analysis_id = mark_done.analysis_id
       AND a.lease_token = mark_done.lease_token AND a.lease_expires_at >= now()
    RETURNING a.session_id, (SELECT s.topics FROM parecer.scripts s WHERE s.script_id = a.script_id),
              a.retry_count, a.client_id, a.client_slug, a.cost_usd,
              (SELECT (now() AT TIME ZONE COALESCE(st.value, st.default_value))::date
               FROM parecer._settings st WHERE st.name = 'budget_timezone')
         INTO v_session, v_topics, v_retries, v_client, v_slug, v_cost, v_day;
    IF NOT FOUND THEN
        PERFORM parecer._lease_refused(mark_done.analysis_id, mark_done.lease_token);
    END IF;
    -- Any error from here on undoes the UPDATE: a refused report changes nothing.
    IF (mark_done.usage IS NULL OR parecer._usage_ok(mark_done.usage))
       AND parecer._sha256_hex(mark_done.prompt_hash)
       AND btrim(mark_done.model) <> '' AND length(mark_done.model) <= 200
       AND parecer._report_ok(mark_done.report, v_topics, v_session) THEN
        NULL;   -- all good: one expression instead of four
    ELSIF mark_done.usage IS NOT NULL AND NOT parecer._usage_ok(mark_done.usage) THEN
        PERFORM parecer._invalid('usage must be a JSON object with non-negative integer token counts, or NULL',
                                 'e.g. {"input_tokens": 1200, "cached_input_tokens": 0, "output_tokens": 300}');
    ELSIF mark_done.prompt_hash IS NULL OR NOT parecer._sha256_hex(mark_done.prompt_hash) THEN
        PERFORM parecer._invalid('prompt_hash must be a sha256 hex digest', 'Use prompt_hash from parecer.prompt_for.');
    ELSIF mark_done.model IS NULL OR btrim(mark_done.model) = '' OR length(mark_done.model) > 200 THEN
        PERFORM parecer._invalid('model must name the model that answered', 'Pass the model from the provider''s response.');
    ELSE
        PERFORM parecer._check_report(mark_done.report, v_topics, v_session);   -- raises PR007 / PR008
    END IF;

    IF mark_done.usage IS NOT NULL THEN
        PERFORM parecer._add_spend(v_client, v_slug, v_day, mark_done.usage, v_cost);
    END IF;
    RETURN ROW('done', v_retries, NULL)::parecer.item_outcome;
END
$$;
COMMENT ON FUNCTION parecer.mark_done(uuid, uuid, jsonb, text, text, jsonb) IS
'Store the report of an item you hold, after checking it against the report schema and grounding every evidence in the session''s messages; its usage and cost stay in the item''s row (parecer.reports, parecer.attempts). A failing report changes nothing. Errors: PR006 stale lease, PR007 invalid report, PR008 ungrounded evidence, PR010, PR011.';

-- mark_failed and release: the lease check by primary key, as in mark_done.
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
     WHERE a.analysis_id = mark_failed.analysis_id   -- a lease token only while processing (analyses_state_check)
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
     WHERE a.analysis_id = release.analysis_id   -- a lease token only while processing (analyses_state_check)
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

-- enqueue(force_reprocess): a done item's done attempt moves into parecer._attempts before the reset.
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
        -- The attempt that finished a done item lives in the item's row (0016): it moves
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
            SET status = 'pending', report = NULL, error = NULL, retry_count = 0, next_retry_at = NULL,
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
'Queue sessions for a script version and analysis tag: new items are inserted pending, existing ones skipped, or with force_reprocess reset to pending whatever their state. One NOTIFY parecer_work per call. Errors: PR002 unknown script, PR010 bad argument, PR012 unknown run, PR014 unknown session.';

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA parecer FROM PUBLIC;
