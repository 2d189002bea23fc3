-- Undo 0015: _report_ok as 0013 left it, mark_done as 0011 did.
CREATE OR REPLACE FUNCTION parecer._report_ok(p_report jsonb, p_topics text[], p_session_id text) RETURNS boolean
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
    v_raw     text[] := '{}';
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
        v_raw := v_raw || lower(v ->> 'excerpt');
    END LOOP;

    -- Grounding, one query for all: each evidence cites a message of this session
    -- whose text contains the excerpt. A verbatim excerpt (the usual case) is found
    -- in the lowercased text without normalising it: a substring of the text is a
    -- substring of its normalised form too, so the regexp runs only when needed.
    RETURN cardinality(v_ids) = 0 OR NOT EXISTS (
        SELECT FROM unnest(v_ids, v_excerpt, v_raw) AS e(message_id, excerpt, raw)
        WHERE NOT EXISTS (
            SELECT FROM parecer.source_messages m
            WHERE m.message_id = e.message_id AND m.session_id = p_session_id
              AND (strpos(lower(m.body), e.raw) > 0 OR strpos(lower(m.transcription), e.raw) > 0
                   OR strpos(parecer._norm(m.body), e.excerpt) > 0
                   OR strpos(parecer._norm(m.transcription), e.excerpt) > 0)));
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
