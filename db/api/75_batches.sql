-- Batch API backlog mode: a backlog run's items sent through the provider's Batch
-- API (half price, results within 24 hours) instead of one call each.
--
-- A batch is a row of parecer._batches, recorded before anything leaves the
-- database, and the items it holds (parecer._batch_items: each with the lease it
-- was claimed under). The runner (`parecer batch submit` / `parecer batch poll`,
-- runner/parecer/batch.py) moves it along; every step is recorded here first, so a
-- process killed at any point is resumed from the row by the next poll:
--
--   open_batch ──> preparing ──batch_uploaded──> uploaded ──batch_submitted──> submitted
--                  (items claimed,               (input file     (provider batch id;
--                   prompts being written)        id recorded)    metadata parecer_batch_id
--                                                                 finds it after a crash)
--   submitted ──batch_progress(terminal provider status)──> ingesting
--   ingesting ──(results stored through mark_done / mark_failed)──finish_batch──>
--               completed | failed | expired | cancelled
--
-- Items are claimed through parecer._candidates (the one claimable condition) and
-- leased by parecer._lease_items, like parecer.claim, with the batch_lease_seconds
-- setting (the 24-hour window plus a margin). finish_batch releases every item the
-- batch still holds (no attempt spent): an expired, failed or cancelled batch is not
-- its items' fault. A batch lease that runs out is a release too (_expire_leases).
-- Results go through parecer.mark_done / mark_failed with each item's lease token,
-- so the grounding and schema checks are the same as for the synchronous runner,
-- and an item already finished is refused (PR006): nothing is stored twice.

-- A batch as its callers see it: the provider's view, and the items' outcomes and
-- cost from the attempts the batch made (the attempt number recorded per item).
CREATE OR REPLACE VIEW parecer.batches WITH (security_barrier = true) AS
SELECT b.batch_id, b.run_id, b.client_slug, b.status, b.provider_status, b.provider_batch_id,
       b.input_file_id, b.output_file_id, b.error_file_id,
       COALESCE(c.items, 0)::integer AS items,
       COALESCE(c.in_flight, 0)::integer AS in_flight,
       COALESCE(c.done, 0)::integer AS done,
       COALESCE(c.failed, 0)::integer AS failed,
       COALESCE(c.released, 0)::integer AS released,
       b.request_total, b.request_completed, b.request_failed,
       COALESCE(c.cost_usd, 0)::numeric AS cost_usd,
       b.worker, b.created_by, b.error, b.created_at, b.submitted_at, b.finished_at, b.updated_at
FROM parecer._batches b
LEFT JOIN LATERAL (
    SELECT count(*) AS items,
           count(*) FILTER (WHERE a.status = 'processing' AND a.lease_token = bi.lease_token) AS in_flight,
           count(*) FILTER (WHERE (a.status = 'done' AND a.claims = bi.attempt) OR t.outcome = 'done') AS done,
           count(*) FILTER (WHERE t.outcome IN ('failed', 'expired')) AS failed,
           count(*) FILTER (WHERE t.outcome IN ('released', 'reset')) AS released,
           sum(COALESCE(t.cost_usd, CASE WHEN a.status = 'done' AND a.claims = bi.attempt THEN a.cost_usd END)) AS cost_usd
    FROM parecer._batch_items bi
    JOIN parecer.analyses a ON a.analysis_id = bi.analysis_id
    LEFT JOIN parecer._attempts t ON t.analysis_id = bi.analysis_id AND t.attempt = bi.attempt
    WHERE bi.batch_id = b.batch_id
) c ON true
WHERE ((SELECT sc.all_clients FROM parecer._caller_scope sc) OR b.client_id = ANY ((SELECT sc.client_ids FROM parecer._caller_scope sc)::text[]))
ORDER BY b.batch_id;
COMMENT ON VIEW parecer.batches IS
'Batch API batches of backlog runs (parecer.open_batch): status (preparing, uploaded, submitted, ingesting, then completed, failed, expired or cancelled), the provider''s batch id, status, request counts and files, and the items'' outcomes (in_flight, done, failed, released) and cost_usd at the batch price. With the isolation setting on, only the caller''s clients.';

-- A batch the caller may act on, locked, in a state the step may follow: PR019
-- when unknown or another client's, PR020 when not in p_allowed (NULL: any state).
CREATE OR REPLACE FUNCTION parecer._batch(p_batch_id bigint, p_allowed text[], p_step text) RETURNS parecer._batches
LANGUAGE plpgsql AS $$
DECLARE
    v_b   parecer._batches;
    v_ids text[] := parecer._caller_clients();
BEGIN
    SELECT * INTO v_b FROM parecer._batches b WHERE b.batch_id = p_batch_id FOR UPDATE;
    IF NOT FOUND OR (v_ids IS NOT NULL AND NOT (v_b.client_id = ANY (v_ids))) THEN
        RAISE EXCEPTION 'unknown batch %', COALESCE(p_batch_id::text, 'NULL')
            USING ERRCODE = 'PR019', HINT = 'SELECT batch_id, run_id, status FROM parecer.list_batches() lists the batches you may act on.';
    END IF;
    IF NOT (v_b.status = ANY (COALESCE(p_allowed, ARRAY[v_b.status]))) THEN
        RAISE EXCEPTION 'batch % is %: % needs %', v_b.batch_id, v_b.status, p_step, array_to_string(p_allowed, ' or ')
            USING ERRCODE = 'PR020',
                  HINT = 'parecer batch poll (or parecer.list_batches()) shows where each batch is; it resumes every step in order.';
    END IF;
    RETURN v_b;
END
$$;

-- PR010 unless p_value looks like an id the provider gave (a file or a batch).
CREATE OR REPLACE FUNCTION parecer._check_provider_id(p_value text, p_name text, p_kind text, p_example text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_value IS NULL OR btrim(p_value) = '' OR length(p_value) > 200 THEN
        PERFORM parecer._invalid(pg_catalog.format('%s must be the provider''s %s id', p_name, p_kind),
                                 pg_catalog.format('Pass the id the %s API returned, e.g. %L.',
                                                   CASE p_kind WHEN 'file' THEN 'Files' ELSE 'Batches' END, p_example));
    END IF;
END
$$;

-- Claim the claimable items of a backlog run into a new batch.
CREATE OR REPLACE FUNCTION parecer.open_batch(run_id bigint, worker text, max_items integer DEFAULT NULL)
RETURNS SETOF parecer.batches
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_run   parecer.runs;
    v_scope text[] := parecer._caller_clients();
    v_who   name := (SELECT sc.who FROM parecer._caller_scope sc);
    v_limit integer := COALESCE(open_batch.max_items, parecer._setting_int('batch_max_items'));
    v_ids   uuid[];
    v_batch bigint;
BEGIN
    SELECT * INTO v_run FROM parecer.runs r WHERE r.run_id = open_batch.run_id;
    IF NOT FOUND OR (v_scope IS NOT NULL AND NOT (v_run.client_id = ANY (v_scope))) THEN
        RAISE EXCEPTION 'unknown run %', COALESCE(open_batch.run_id::text, 'NULL')
            USING ERRCODE = 'PR012', HINT = 'SELECT run_id, client_slug, created_at FROM parecer.runs_overview lists the runs.';
    END IF;
    PERFORM parecer._check_worker(open_batch.worker);
    IF v_limit < 1 OR v_limit > parecer._setting_int('batch_max_items') THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid max_items: %s', v_limit),
                                 pg_catalog.format('max_items must be between 1 and %s (setting batch_max_items).',
                                                   parecer._setting_int('batch_max_items')));
    END IF;
    IF NOT COALESCE((v_run.params ->> 'backlog')::boolean, false)
       AND NOT EXISTS (SELECT FROM parecer.run_items ri JOIN parecer.analyses a ON a.analysis_id = ri.analysis_id
                       WHERE ri.run_id = v_run.run_id AND a.backlog) THEN
        RAISE EXCEPTION 'run % is not a backlog run', v_run.run_id
            USING ERRCODE = 'PR021',
                  HINT = 'Batch mode is for backlog runs: start the run with backlog => true, or mark it with parecer.set_run_backlog(run_id).';
    END IF;

    -- As parecer.claim: recover expired leases, then nothing for a client over budget.
    IF EXISTS (SELECT FROM parecer.analyses a WHERE a.status = 'processing' AND a.lease_expires_at < now()) THEN
        PERFORM parecer._expire_leases();
    END IF;
    IF parecer._global_blocked_reason() IS NOT NULL OR parecer._blocked_reason(v_run.client_id) IS NOT NULL THEN
        RETURN;
    END IF;
    -- Under a budget, no more items than the money left is expected to pay for (85_spend.sql).
    v_limit := LEAST(v_limit, parecer._batch_budget_items(v_run.client_id, v_run.script_id));
    v_ids := ARRAY(SELECT c.analysis_id FROM parecer._candidates(v_run.client_id, v_limit, v_run.run_id) c);
    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;

    INSERT INTO parecer._batches (run_id, client_id, client_slug, worker, created_by)
    VALUES (v_run.run_id, v_run.client_id, v_run.client_slug, worker, v_who)
    RETURNING _batches.batch_id INTO v_batch;
    INSERT INTO parecer._batch_items (batch_id, analysis_id, attempt, lease_token)
    SELECT v_batch, l.analysis_id, l.attempt, l.lease_token
    FROM parecer._lease_items(v_ids, worker, parecer._setting_int('batch_lease_seconds'), v_who) l;
    RETURN QUERY SELECT * FROM parecer.batches b WHERE b.batch_id = v_batch;
END
$$;
COMMENT ON FUNCTION parecer.open_batch(bigint, text, integer) IS
'Claim up to max_items (default and cap: setting batch_max_items) claimable items of a backlog run into a new Batch API batch (status preparing), leased for batch_lease_seconds (26 hours: the 24-hour window and a margin), and return the batch; no row when nothing is claimable or the client is over budget. Under a budget (the client''s or the installation''s, day or month), no more items than the money left, less what the open batches'' items are expected to cost, pays for at the script''s past cost per analysis (parecer.estimate_cost; at least one; no cap without history). Claims as parecer.claim does (expired leases recovered first; with the isolation setting on, only a run of the caller''s clients). Errors: PR010, PR012 unknown run, PR021 not a backlog run.';

-- The items a batch still holds, with their lease tokens (for mark_done / mark_failed).
CREATE OR REPLACE FUNCTION parecer.batch_items(batch_id bigint)
RETURNS TABLE (analysis_id uuid, lease_token uuid, attempt integer, client_slug text, session_id text,
               script_id bigint, script_key text, script_version integer, model text,
               lease_expires_at timestamptz, retry_count integer, prompt_hash text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM parecer._batch(batch_items.batch_id, NULL, 'batch_items');
    RETURN QUERY
    SELECT a.analysis_id, a.lease_token, a.claims, a.client_slug, a.session_id, a.script_id,
           s.script_key, s.version, s.model, a.lease_expires_at, a.retry_count, a.given_prompt_hash
    FROM parecer._batch_items bi
    JOIN parecer.analyses a ON a.analysis_id = bi.analysis_id
    JOIN parecer.scripts s ON s.script_id = a.script_id
    WHERE bi.batch_id = batch_items.batch_id
      AND a.status = 'processing' AND a.lease_token = bi.lease_token AND a.lease_expires_at >= now()
    ORDER BY a.session_ended_at ASC NULLS FIRST, a.analysis_id;
END
$$;
COMMENT ON FUNCTION parecer.batch_items(bigint) IS
'The items a batch still holds (its lease on them is live): the fields of parecer.claim and prompt_hash, the hash parecer.prompt_for gave under that lease (NULL before it was asked). Items already finished, released or reset are left out. Errors: PR019 unknown batch.';

-- Record the uploaded input file (step 2).
CREATE OR REPLACE FUNCTION parecer.batch_uploaded(batch_id bigint, input_file_id text)
RETURNS SETOF parecer.batches
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_b parecer._batches := parecer._batch(batch_uploaded.batch_id, '{preparing}', 'batch_uploaded');
BEGIN
    PERFORM parecer._check_provider_id(input_file_id, 'input_file_id', 'file', 'file-abc123');
    UPDATE parecer._batches b SET status = 'uploaded', input_file_id = batch_uploaded.input_file_id, updated_at = now()
     WHERE b.batch_id = v_b.batch_id;
    RETURN QUERY SELECT * FROM parecer.batches b WHERE b.batch_id = v_b.batch_id;
END
$$;
COMMENT ON FUNCTION parecer.batch_uploaded(bigint, text) IS
'Record the provider file id of a preparing batch''s uploaded input (status uploaded). Errors: PR010, PR019 unknown batch, PR020 not preparing.';

-- Record the provider's batch (step 3).
CREATE OR REPLACE FUNCTION parecer.batch_submitted(batch_id bigint, provider_batch_id text, provider_status text DEFAULT NULL)
RETURNS SETOF parecer.batches
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_b parecer._batches := parecer._batch(batch_submitted.batch_id, NULL, 'batch_submitted');
BEGIN
    IF v_b.status = 'submitted' AND v_b.provider_batch_id = batch_submitted.provider_batch_id THEN
        RETURN QUERY SELECT * FROM parecer.batches b WHERE b.batch_id = v_b.batch_id;   -- recorded already
        RETURN;
    END IF;
    PERFORM parecer._batch(v_b.batch_id, '{uploaded}', 'batch_submitted');
    PERFORM parecer._check_provider_id(provider_batch_id, 'provider_batch_id', 'batch', 'batch_abc123');
    UPDATE parecer._batches b
       SET status = 'submitted', provider_batch_id = batch_submitted.provider_batch_id,
           provider_status = left(batch_submitted.provider_status, 50), submitted_at = now(), updated_at = now()
     WHERE b.batch_id = v_b.batch_id;
    RETURN QUERY SELECT * FROM parecer.batches b WHERE b.batch_id = v_b.batch_id;
END
$$;
COMMENT ON FUNCTION parecer.batch_submitted(bigint, text, text) IS
'Record the provider''s batch id of an uploaded batch (status submitted); recording the same id again changes nothing. Errors: PR010, PR019 unknown batch, PR020 not uploaded.';

-- Record what the provider says of a submitted batch (step 4, every poll).
CREATE OR REPLACE FUNCTION parecer.batch_progress(batch_id bigint, provider_status text, request_total integer DEFAULT NULL,
                                                  request_completed integer DEFAULT NULL, request_failed integer DEFAULT NULL,
                                                  output_file_id text DEFAULT NULL, error_file_id text DEFAULT NULL,
                                                  error text DEFAULT NULL)
RETURNS SETOF parecer.batches
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_b parecer._batches := parecer._batch(batch_progress.batch_id, '{submitted,ingesting}', 'batch_progress');
BEGIN
    IF provider_status IS NULL OR provider_status NOT IN ('validating', 'failed', 'in_progress', 'finalizing', 'completed',
                                                          'expired', 'cancelling', 'cancelled') THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid provider_status: %s', COALESCE(left(provider_status, 50), 'NULL')),
                                 'provider_status is the Batch API status: validating, failed, in_progress, finalizing, completed, expired, cancelling or cancelled.');
    END IF;
    IF LEAST(request_total, request_completed, request_failed) < 0 THEN
        PERFORM parecer._invalid('request counts must not be negative', 'Pass the batch''s request_counts as the provider gives them.');
    END IF;
    UPDATE parecer._batches b
       SET provider_status = batch_progress.provider_status,
           status = CASE WHEN batch_progress.provider_status IN ('completed', 'failed', 'expired', 'cancelled')
                         THEN 'ingesting' ELSE b.status END,
           request_total = COALESCE(batch_progress.request_total, b.request_total),
           request_completed = COALESCE(batch_progress.request_completed, b.request_completed),
           request_failed = COALESCE(batch_progress.request_failed, b.request_failed),
           output_file_id = COALESCE(batch_progress.output_file_id, b.output_file_id),
           error_file_id = COALESCE(batch_progress.error_file_id, b.error_file_id),
           error = COALESCE(left(batch_progress.error, 1000), b.error),
           updated_at = now()
     WHERE b.batch_id = v_b.batch_id;
    RETURN QUERY SELECT * FROM parecer.batches b WHERE b.batch_id = v_b.batch_id;
END
$$;
COMMENT ON FUNCTION parecer.batch_progress(bigint, text, integer, integer, integer, text, text, text) IS
'Record the provider''s status, request counts, output and error file ids of a submitted batch; a final provider status (completed, failed, expired, cancelled) makes the batch ingesting: its results are to be stored, then parecer.finish_batch. Errors: PR010, PR019 unknown batch, PR020 not submitted.';

-- End a batch: release what it still holds (step 5).
CREATE OR REPLACE FUNCTION parecer.finish_batch(batch_id bigint, reason text DEFAULT NULL)
RETURNS SETOF parecer.batches
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- Ingested, or never sent: a submitted batch is still the provider's (its results would be lost).
    v_b      parecer._batches := parecer._batch(finish_batch.batch_id, '{preparing,uploaded,ingesting}', 'finish_batch');
    v_status text;
    v_reason text;
    v_i      record;
BEGIN
    v_status := CASE WHEN v_b.status = 'ingesting' AND v_b.provider_status IN ('failed', 'expired', 'cancelled')
                     THEN v_b.provider_status
                     WHEN v_b.status = 'ingesting' THEN 'completed'
                     ELSE 'cancelled' END;
    v_reason := left(COALESCE(NULLIF(btrim(finish_batch.reason), ''),
                              pg_catalog.format('batch %s %s without a result for this item', v_b.batch_id, v_status)), 1000);
    FOR v_i IN
        SELECT bi.analysis_id, bi.lease_token
        FROM parecer._batch_items bi JOIN parecer.analyses a ON a.analysis_id = bi.analysis_id
        WHERE bi.batch_id = v_b.batch_id
          AND a.status = 'processing' AND a.lease_token = bi.lease_token AND a.lease_expires_at >= now()
        ORDER BY bi.analysis_id
    LOOP
        PERFORM parecer.release(v_i.analysis_id, v_i.lease_token, 0, v_reason);
    END LOOP;
    UPDATE parecer._batches b
       SET status = v_status, finished_at = now(), updated_at = now(),
           error = COALESCE(b.error, NULLIF(btrim(finish_batch.reason), ''))
     WHERE b.batch_id = v_b.batch_id;
    RETURN QUERY SELECT * FROM parecer.batches b WHERE b.batch_id = v_b.batch_id;
END
$$;
COMMENT ON FUNCTION parecer.finish_batch(bigint, text) IS
'End a batch whose results are stored (ingesting) or that was never sent (preparing, uploaded): every item it still holds is released (no attempt spent; reason, or "batch N <status> without a result for this item") and the batch becomes completed, failed, expired or cancelled (the provider''s final status; cancelled when never sent). Errors: PR019 unknown batch, PR020 submitted (still the provider''s).';

-- The batches a process may resume or poll.
CREATE OR REPLACE FUNCTION parecer.list_batches(run_id bigint DEFAULT NULL, open_only boolean DEFAULT true)
RETURNS SETOF parecer.batches
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT b.* FROM parecer.batches b
    WHERE (list_batches.run_id IS NULL OR b.run_id = list_batches.run_id)
      AND (NOT COALESCE(list_batches.open_only, true) OR b.status IN ('preparing', 'uploaded', 'submitted', 'ingesting'))
    ORDER BY b.batch_id
$$;
COMMENT ON FUNCTION parecer.list_batches(bigint, boolean) IS
'The batches of a run (NULL: every run), only those not finished unless open_only => false, as parecer.batches shows them; with the isolation setting on, only the caller''s clients. What parecer batch poll resumes.';
