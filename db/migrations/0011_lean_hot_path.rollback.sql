-- Undo 0011: attempt rows written at claim and updated at the end again, the
-- dropped indexes back, the lease checked by _lease, claim as a SQL wrapper of _claim.

-- Attempts in flight get their row back (as 0005 wrote it at claim).
INSERT INTO parecer._attempts (analysis_id, attempt, worker, lease_token, claimed_at)
SELECT a.analysis_id, a.claims, a.worker, a.lease_token, COALESCE(a.started_at, now())
FROM parecer.analyses a WHERE a.status = 'processing';
ALTER TABLE parecer._attempts ALTER COLUMN outcome DROP NOT NULL,
                              ALTER COLUMN finished_at DROP NOT NULL;
CREATE INDEX attempts_finished_idx ON parecer._attempts (finished_at);
CREATE INDEX analyses_client_idx ON parecer.analyses (client_id, script_id, status);
ALTER TABLE parecer.analyses
    DROP CONSTRAINT analyses_state_check,
    ADD CONSTRAINT analyses_status_check CHECK (status IN ('pending', 'processing', 'done', 'failed')),
    ADD CONSTRAINT analyses_retry_count_check CHECK (retry_count >= 0),
    ADD CONSTRAINT analyses_check CHECK ((status = 'processing') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)),
    ADD CONSTRAINT analyses_check1 CHECK (status <> 'done' OR (report IS NOT NULL AND next_retry_at IS NULL)),
    ADD CONSTRAINT analyses_check2 CHECK (status <> 'processing' OR next_retry_at IS NULL);

-- Every claim of every item and how it ended.
UPDATE parecer.analyses a SET usage = t.usage
  FROM parecer._attempts t
 WHERE a.status = 'done' AND a.usage IS NULL AND t.analysis_id = a.analysis_id AND t.attempt = a.claims;
CREATE OR REPLACE VIEW parecer.reports AS
SELECT a.analysis_id, a.client_slug, a.session_id, s.script_key, s.version AS script_version,
       a.analysis_version_tag, a.report, a.model, a.prompt_hash, a.processed_at, a.usage
FROM parecer.analyses a
JOIN parecer.scripts s ON s.script_id = a.script_id
WHERE a.status = 'done';

CREATE OR REPLACE VIEW parecer.attempts AS
SELECT t.analysis_id, t.attempt, t.worker, t.claimed_at, t.finished_at,
       COALESCE(t.outcome, 'processing') AS outcome, t.error, t.model, t.usage,
       a.client_slug, a.session_id
FROM parecer._attempts t
JOIN parecer.analyses a ON a.analysis_id = t.analysis_id;
COMMENT ON VIEW parecer.attempts IS 'Attempt history: one row per claim (outcome done, failed, released, expired, reset, or processing while in flight).';

DROP FUNCTION parecer._end_attempt(uuid, integer, text, uuid, timestamptz, text, text, text, text, jsonb, text, text);
DROP FUNCTION parecer._budget_alerts_check(text, text, date, numeric, numeric);
-- Record an attempt's cost when its usage arrives; raise budget alerts (NOTIFY parecer_budget) at 80% and 100%.
CREATE FUNCTION parecer._attempt_cost() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_a      record;
    v_day    date := parecer._budget_day();
    v_pol    parecer._client_policy;
    v_spent  numeric;
    v_period text;
    v_budget numeric;
    v_start  date;
    v_pct    integer;
BEGIN
    IF NEW.usage IS NULL OR jsonb_typeof(NEW.usage) <> 'object' OR OLD.usage IS NOT NULL THEN
        RETURN NEW;
    END IF;
    NEW.cost_usd := parecer._cost(COALESCE(NEW.model, NEW.usage ->> 'model', NEW.usage ->> 'requested_model', ''), NEW.usage);
    SELECT a.client_id, a.client_slug INTO v_a FROM parecer.analyses a WHERE a.analysis_id = NEW.analysis_id;
    INSERT INTO parecer._spend AS s (client_id, client_slug, day, shard, attempts, input_tokens, cached_input_tokens,
                                     output_tokens, cost_usd)
    VALUES (v_a.client_id, v_a.client_slug, v_day, pg_backend_pid() % 16, 1,
            COALESCE((NEW.usage ->> 'input_tokens')::bigint, 0), COALESCE((NEW.usage ->> 'cached_input_tokens')::bigint, 0),
            COALESCE((NEW.usage ->> 'output_tokens')::bigint, 0), COALESCE(NEW.cost_usd, 0))
    ON CONFLICT (client_id, day, shard) DO UPDATE
        SET attempts = s.attempts + 1, input_tokens = s.input_tokens + EXCLUDED.input_tokens,
            cached_input_tokens = s.cached_input_tokens + EXCLUDED.cached_input_tokens,
            output_tokens = s.output_tokens + EXCLUDED.output_tokens, cost_usd = s.cost_usd + EXCLUDED.cost_usd;

    SELECT * INTO v_pol FROM parecer._client_policy p WHERE p.client_id = v_a.client_id;
    IF v_pol.daily_budget_usd IS NULL AND v_pol.monthly_budget_usd IS NULL THEN
        RETURN NEW;
    END IF;
    FOREACH v_period IN ARRAY ARRAY['day', 'month'] LOOP
        v_budget := CASE v_period WHEN 'day' THEN v_pol.daily_budget_usd ELSE v_pol.monthly_budget_usd END;
        CONTINUE WHEN v_budget IS NULL;
        v_start := CASE v_period WHEN 'day' THEN v_day ELSE date_trunc('month', v_day)::date END;
        SELECT COALESCE(sum(s.cost_usd), 0) INTO v_spent FROM parecer._spend s
         WHERE s.client_id = v_a.client_id AND s.day >= v_start AND s.day <= v_day;
        FOREACH v_pct IN ARRAY ARRAY[80, 100] LOOP
            IF v_spent >= v_budget * v_pct / 100.0 THEN
                INSERT INTO parecer._budget_alerts (client_id, period, period_start, threshold, spent_usd, budget_usd)
                VALUES (v_a.client_id, v_period, v_start, v_pct, v_spent, v_budget)
                ON CONFLICT DO NOTHING;
                IF FOUND THEN
                    PERFORM pg_notify('parecer_budget', json_build_object(
                        'client', v_a.client_slug, 'period', v_period, 'threshold', v_pct,
                        'spent_usd', round(v_spent, 4), 'budget_usd', v_budget)::text);
                END IF;
            END IF;
        END LOOP;
    END LOOP;
    RETURN NEW;
END
$$;
CREATE TRIGGER attempts_cost BEFORE UPDATE OF usage ON parecer._attempts
    FOR EACH ROW EXECUTE FUNCTION parecer._attempt_cost();

-- Give back expired leases: the runner died; that counts as a failed attempt.
CREATE OR REPLACE FUNCTION parecer._expire_leases() RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v_max integer := parecer._setting_int('max_attempts');
    v_n   integer;
BEGIN
    WITH x AS MATERIALIZED (
        SELECT a.analysis_id
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
        RETURNING a.analysis_id, a.claims, a.error
    ), t AS (
        UPDATE parecer._attempts t
           SET outcome = 'expired', finished_at = now(), error = u.error
          FROM u
         WHERE t.analysis_id = u.analysis_id AND t.attempt = u.claims AND t.outcome IS NULL
    )
    SELECT count(*) INTO v_n FROM u;
    RETURN v_n;
END
$$;

-- The claim, fair across clients: weighted round-robin by client priority, each
-- client's fresh work newest-ended first, then backlog oldest first; clients over
-- budget get nothing.
CREATE FUNCTION parecer._claim(p_worker text, p_max_items integer, p_lease_seconds integer, p_client_slug text)
RETURNS SETOF parecer.claimed_item
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_worker text := p_worker;
    v_client text := p_client_slug;
    v_limit  integer := p_max_items;
    v_lease  integer := COALESCE(p_lease_seconds, parecer._setting_int('lease_seconds'));
    v_max    integer := parecer._setting_int('max_attempts');
BEGIN
    IF v_worker IS NULL OR btrim(v_worker) = '' OR length(v_worker) > 200 THEN
        PERFORM parecer._invalid('worker must be a non-empty name of up to 200 characters', 'Name the runner, e.g. worker => ''host-1:4242''.');
    END IF;
    IF v_limit IS NULL OR v_limit < 1 OR v_limit > 1000 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid max_items: %s', COALESCE(v_limit::text, 'NULL')), 'max_items must be between 1 and 1000.');
    END IF;
    IF v_lease < 5 OR v_lease > 86400 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid lease_seconds: %s', v_lease), 'lease_seconds must be between 5 and 86400.');
    END IF;

    IF EXISTS (SELECT FROM parecer.analyses a WHERE a.status = 'processing' AND a.lease_expires_at < now()) THEN
        PERFORM parecer._expire_leases();
    END IF;

    RETURN QUERY
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
    ), c AS MATERIALIZED (
        SELECT f.analysis_id,
               row_number() OVER (ORDER BY f.tier, (f.rn - 1) / f.priority, f.race, f.rn) AS ord
        FROM (SELECT u.*, -ln(1.0 - random()) / u.priority AS race   -- weighted race: ties within a round go
              FROM (SELECT * FROM fresh UNION ALL SELECT * FROM old) u) f  -- to client i with p_i / sum(p)
        ORDER BY f.tier, (f.rn - 1) / f.priority, f.race, f.rn
        LIMIT v_limit
    ), u AS (
        UPDATE parecer.analyses a
           SET status = 'processing',
               claims = a.claims + 1,
               worker = v_worker,
               lease_token = gen_random_uuid(),
               lease_expires_at = now() + make_interval(secs => v_lease),
               next_retry_at = NULL,
               started_at = now(),
               updated_at = now()
          FROM c
         WHERE a.analysis_id = c.analysis_id
        RETURNING a.*, c.ord
    ), att AS (
        INSERT INTO parecer._attempts (analysis_id, attempt, worker, lease_token, claimed_at)
        SELECT u.analysis_id, u.claims, u.worker, u.lease_token, now() FROM u
    )
    SELECT u.analysis_id, u.lease_token, u.claims, u.client_slug, u.session_id, u.script_id,
           s.script_key, s.version, s.model, u.lease_expires_at, u.retry_count
    FROM u JOIN parecer.scripts s ON s.script_id = u.script_id
    ORDER BY u.ord;
END
$$;
ALTER FUNCTION parecer._claim(text, integer, integer, text) SET plan_cache_mode = force_generic_plan;

CREATE OR REPLACE FUNCTION parecer.claim(
    worker        text,
    max_items     integer DEFAULT 1,
    lease_seconds integer DEFAULT NULL,
    client_slug   text DEFAULT NULL
) RETURNS SETOF parecer.claimed_item
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM parecer._claim($1, $2, $3, $4) $$;
COMMENT ON FUNCTION parecer.claim(text, integer, integer, text) IS
'Claim up to max_items claimable items (pending, or failed with a retry due) with a lease of lease_seconds (default: setting lease_seconds). Fair across clients: weighted round-robin by client priority, each client''s fresh work newest-ended session first, then backlog runs oldest first; clients over budget get nothing (see parecer.budgets). Items whose lease expired are recovered first, as a failed attempt. Errors: PR010.';

DROP FUNCTION parecer._lease_refused(uuid, uuid);
DROP FUNCTION parecer._report_ok(jsonb, text[], text);

-- Store a checked report for an item you hold.
CREATE OR REPLACE FUNCTION parecer.mark_done(analysis_id uuid, lease_token uuid, report jsonb, model text,
                                  prompt_hash text, usage jsonb DEFAULT NULL)
RETURNS parecer.item_outcome
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row    parecer.analyses;
    v_topics text[];
BEGIN
    v_row := parecer._lease(mark_done.analysis_id, mark_done.lease_token);
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
    SELECT s.topics INTO v_topics FROM parecer.scripts s WHERE s.script_id = v_row.script_id;
    PERFORM parecer._check_report(mark_done.report, v_topics, v_row.session_id);

    UPDATE parecer.analyses a
       SET status = 'done', report = mark_done.report, model = mark_done.model,
           prompt_hash = mark_done.prompt_hash, usage = mark_done.usage, error = NULL,
           next_retry_at = NULL, lease_token = NULL, lease_expires_at = NULL,
           processed_at = now(), updated_at = now()
     WHERE a.analysis_id = v_row.analysis_id
    RETURNING a.* INTO v_row;
    UPDATE parecer._attempts t
       SET outcome = 'done', finished_at = now(), model = mark_done.model,
           prompt_hash = mark_done.prompt_hash, usage = mark_done.usage
     WHERE t.analysis_id = v_row.analysis_id AND t.attempt = v_row.claims;
    RETURN ROW(v_row.status, v_row.retry_count, v_row.next_retry_at)::parecer.item_outcome;
END
$$;
COMMENT ON FUNCTION parecer.mark_done(uuid, uuid, jsonb, text, text, jsonb) IS
'Store the report of an item you hold, after checking it against the report schema and grounding every evidence in the session''s messages. A failing report changes nothing. Errors: PR006 stale lease, PR007 invalid report, PR008 ungrounded evidence, PR010, PR011.';

-- Record a failed attempt: backoff per backoff_schedule, terminal after max_attempts or when not retryable.
CREATE OR REPLACE FUNCTION parecer.mark_failed(analysis_id uuid, lease_token uuid, error text, retryable boolean DEFAULT true,
                                    usage jsonb DEFAULT NULL)
RETURNS parecer.item_outcome
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row   parecer.analyses;
    v_max   integer := parecer._setting_int('max_attempts');
    v_error text := left(COALESCE(NULLIF(btrim(mark_failed.error), ''), 'unspecified error'), 1000);
BEGIN
    v_row := parecer._lease(mark_failed.analysis_id, mark_failed.lease_token);
    UPDATE parecer.analyses a
       SET status = 'failed',
           retry_count = a.retry_count + 1,
           next_retry_at = CASE WHEN NOT COALESCE(retryable, true) OR a.retry_count + 1 >= v_max THEN NULL
                                ELSE now() + parecer._backoff(a.retry_count + 1) END,
           error = v_error,
           lease_token = NULL, lease_expires_at = NULL, updated_at = now()
     WHERE a.analysis_id = v_row.analysis_id
    RETURNING a.* INTO v_row;
    UPDATE parecer._attempts t SET outcome = 'failed', finished_at = now(), error = v_error,
                                   usage = CASE WHEN parecer._usage_ok(mark_failed.usage) THEN mark_failed.usage END
     WHERE t.analysis_id = v_row.analysis_id AND t.attempt = v_row.claims;
    RETURN ROW(v_row.status, v_row.retry_count, v_row.next_retry_at)::parecer.item_outcome;
END
$$;
COMMENT ON FUNCTION parecer.mark_failed(uuid, uuid, text, boolean, jsonb) IS
'Record a failed attempt of an item you hold (usage: tokens the failed call cost, if any): retry_count + 1 and next_retry_at = now() + backoff_schedule[retry_count]; terminal (next_retry_at NULL) after max_attempts or at once with retryable => false. Errors: PR006, PR011.';

-- Give an item back without spending an attempt (shutdown, provider throttling).
CREATE OR REPLACE FUNCTION parecer.release(analysis_id uuid, lease_token uuid, delay_seconds integer DEFAULT 0, reason text DEFAULT NULL)
RETURNS parecer.item_outcome
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row    parecer.analyses;
    v_max    integer := parecer._setting_int('max_attempts');
    v_delay  integer := COALESCE(release.delay_seconds, 0);
    v_reason text := left(COALESCE(NULLIF(btrim(release.reason), ''), 'released'), 1000);
BEGIN
    IF v_delay < 0 OR v_delay > 86400 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid delay_seconds: %s', v_delay), 'delay_seconds must be between 0 and 86400.');
    END IF;
    v_row := parecer._lease(release.analysis_id, release.lease_token);
    UPDATE parecer.analyses a
       SET status = CASE WHEN a.retry_count = 0 THEN 'pending' ELSE 'failed' END,
           next_retry_at = CASE WHEN a.retry_count = 0 AND v_delay = 0 THEN NULL
                                -- No retry left (max_attempts lowered while in flight): terminal, since
                                -- claim would never take it and it would wait as "retrying" forever.
                                WHEN a.retry_count >= v_max THEN NULL
                                ELSE now() + make_interval(secs => v_delay) END,
           lease_token = NULL, lease_expires_at = NULL, updated_at = now()
     WHERE a.analysis_id = v_row.analysis_id
    RETURNING a.* INTO v_row;
    UPDATE parecer._attempts t SET outcome = 'released', finished_at = now(), error = v_reason
     WHERE t.analysis_id = v_row.analysis_id AND t.attempt = v_row.claims;
    RETURN ROW(v_row.status, v_row.retry_count, v_row.next_retry_at)::parecer.item_outcome;
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
    ), closeatt AS (
        -- A forced reset ends the attempt of an item that was in flight.
        UPDATE parecer._attempts t SET outcome = 'reset', finished_at = now(), error = 'reset by enqueue(force_reprocess)'
        FROM ins
        WHERE force_reprocess AND NOT ins.inserted AND t.analysis_id = ins.analysis_id AND t.outcome IS NULL
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

CREATE OR REPLACE FUNCTION parecer._transcript_text(p_session_id text, p_language text) RETURNS text
LANGUAGE sql STABLE
AS $$
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
$$;

CREATE OR REPLACE FUNCTION parecer._blocked_reason(p_client_id text) RETURNS text
LANGUAGE sql STABLE
AS $$ SELECT b.blocked_reason FROM parecer._budget_state b WHERE b.client_id = p_client_id $$;

-- Functions are executable by PUBLIC when created (a per-schema default privilege
-- cannot take that back): revoke, as every migration that creates functions does.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA parecer FROM PUBLIC;
