-- 0015: mark_done with fewer expressions to prepare per call.
--
-- PL/pgSQL prepares each expression anew in every transaction and checks its
-- plan on every use; at 8 workers that was ~10% of the backends' CPU. So:
-- * mark_done's argument checks and the report check are one expression on
--   the success path (the separate checks run only to pick the error, in the
--   same order as before: usage, prompt_hash, model, then the report);
-- * the script's topics come from a primary-key subquery in the UPDATE's
--   RETURNING instead of a join (whose generic plan hashed the scripts table);
-- * _report_ok checks the report, outcome and sentiment in one expression and
--   each topic and flag in one, and checks every evidence item in the same
--   query that grounds it.
-- pgbench, both versions interleaved in one run (claim, mark_done, rolled
-- back): 0.46-0.55 vs 0.49-0.59 ms per mark_done. tests/test_fuzz.py checks
-- _report_ok against _check_report on every generated report.

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
    v         jsonb;
    v_evs     jsonb;
    v_topics  text[] := '{}';
    i         integer;
BEGIN
    -- The report, its outcome and its sentiment: objects whose keys are exactly the
    -- schema's (all present, nothing left without them), with the schema's types and values.
    IF (jsonb_typeof(p_report) IS NOT DISTINCT FROM 'object' AND p_report ?& k_report AND (p_report - k_report) = '{}'
            AND jsonb_typeof(p_report -> 'schema_version') = 'string' AND p_report ->> 'schema_version' = 'parecer.report.v1'
            AND jsonb_typeof(p_report -> 'summary') = 'string'
            AND jsonb_typeof(p_report -> 'insufficient_context') = 'boolean'
            AND jsonb_typeof(p_report -> 'next_action') IN ('string', 'null')
            AND jsonb_typeof(p_report -> 'topics') = 'array' AND jsonb_typeof(p_report -> 'flags') = 'array'
            AND jsonb_typeof(p_report -> 'outcome') = 'object' AND (p_report -> 'outcome') ?& k_outcome
            AND ((p_report -> 'outcome') - k_outcome) = '{}'
            AND jsonb_typeof(p_report #> '{outcome,status}') = 'string'
            AND p_report #>> '{outcome,status}' IN ('resolved', 'unresolved', 'escalated', 'abandoned', 'unknown')
            AND jsonb_typeof(p_report #> '{outcome,evidence}') = 'array'
            AND jsonb_typeof(p_report -> 'sentiment') = 'object' AND (p_report -> 'sentiment') ?& k_senti
            AND ((p_report -> 'sentiment') - k_senti) = '{}'
            AND jsonb_typeof(p_report #> '{sentiment,start}') = 'string' AND jsonb_typeof(p_report #> '{sentiment,end}') = 'string'
            AND p_report #>> '{sentiment,start}' IN ('positive', 'neutral', 'negative', 'unknown')
            AND p_report #>> '{sentiment,end}' IN ('positive', 'neutral', 'negative', 'unknown')
            AND jsonb_typeof(p_report #> '{sentiment,evidence}') = 'array') IS NOT TRUE THEN
        RETURN false;
    END IF;
    v_evs := (p_report #> '{outcome,evidence}') || (p_report #> '{sentiment,evidence}');

    FOR i IN 0 .. jsonb_array_length(p_report -> 'topics') - 1 LOOP
        v := p_report -> 'topics' -> i;
        IF (jsonb_typeof(v) = 'object' AND v ?& k_topic AND (v - k_topic) = '{}'
                AND jsonb_typeof(v -> 'topic') = 'string' AND jsonb_typeof(v -> 'present') = 'boolean'
                AND jsonb_typeof(v -> 'confidence') = 'number' AND jsonb_typeof(v -> 'evidence') = 'array'
                AND (v ->> 'confidence')::numeric BETWEEN 0 AND 1
                AND array_position(v_topics, v ->> 'topic') IS NULL) IS NOT TRUE THEN   -- each topic once
            RETURN false;
        END IF;
        v_topics := v_topics || (v ->> 'topic');
        v_evs := v_evs || (v -> 'evidence');
    END LOOP;
    IF cardinality(v_topics) <> cardinality(p_topics) OR NOT (v_topics <@ p_topics AND v_topics @> p_topics) THEN
        RETURN false;
    END IF;

    FOR i IN 0 .. jsonb_array_length(p_report -> 'flags') - 1 LOOP
        v := p_report -> 'flags' -> i;
        IF (jsonb_typeof(v) = 'object' AND v ?& k_flag AND (v - k_flag) = '{}'
                AND jsonb_typeof(v -> 'flag') = 'string'
                AND v ->> 'flag' IN ('churn_risk', 'complaint', 'legal_threat', 'agent_error', 'slow_response',
                                     'sensitive_data', 'abusive_language', 'human_requested')
                AND jsonb_typeof(v -> 'evidence') = 'array') IS NOT TRUE THEN
            RETURN false;
        END IF;
        v_evs := v_evs || (v -> 'evidence');
    END LOOP;

    -- Every evidence, in one query: an object of exactly message_id and excerpt
    -- (strings; the excerpt non-blank and at most 500 characters) citing a message
    -- of this session whose text contains the excerpt. A verbatim excerpt (the
    -- usual case) is found in the lowercased text without normalising it: a
    -- substring of a text is a substring of its normalised form too.
    RETURN NOT EXISTS (
        SELECT FROM jsonb_array_elements(v_evs) AS e(v)
        WHERE (jsonb_typeof(e.v) = 'object' AND e.v ?& '{message_id,excerpt}' AND (e.v - '{message_id,excerpt}'::text[]) = '{}'
                   AND jsonb_typeof(e.v -> 'message_id') = 'string' AND jsonb_typeof(e.v -> 'excerpt') = 'string'
                   AND length(e.v ->> 'excerpt') <= 500 AND parecer._norm(e.v ->> 'excerpt') <> ''
                   AND EXISTS (
                        SELECT FROM parecer.source_messages m
                        WHERE m.message_id = e.v ->> 'message_id' AND m.session_id = p_session_id
                          AND (strpos(lower(m.body), lower(e.v ->> 'excerpt')) > 0
                               OR strpos(lower(m.transcription), lower(e.v ->> 'excerpt')) > 0
                               OR strpos(parecer._norm(m.body), parecer._norm(e.v ->> 'excerpt')) > 0
                               OR strpos(parecer._norm(m.transcription), parecer._norm(e.v ->> 'excerpt')) > 0))) IS NOT TRUE);
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
     WHERE a.analysis_id = mark_done.analysis_id AND a.status = 'processing'
       AND a.lease_token = mark_done.lease_token AND a.lease_expires_at >= now()
    RETURNING a.session_id, (SELECT s.topics FROM parecer.scripts s WHERE s.script_id = a.script_id), a.claims, a.worker, a.started_at, a.retry_count, a.client_id, a.client_slug
         INTO v_session, v_topics, v_claims, v_worker, v_started, v_retries, v_client, v_slug;
    IF NOT FOUND THEN
        PERFORM parecer._lease_refused(mark_done.analysis_id, mark_done.lease_token);
    END IF;
    -- Any error from here on undoes the UPDATE: a refused report changes nothing.
    IF (mark_done.usage IS NULL OR parecer._usage_ok(mark_done.usage))
       AND mark_done.prompt_hash ~ '^[0-9a-f]{64}$'
       AND btrim(mark_done.model) <> '' AND length(mark_done.model) <= 200
       AND parecer._report_ok(mark_done.report, v_topics, v_session) THEN
        NULL;   -- all good: one expression instead of four
    ELSIF mark_done.usage IS NOT NULL AND NOT parecer._usage_ok(mark_done.usage) THEN
        PERFORM parecer._invalid('usage must be a JSON object with non-negative integer token counts, or NULL',
                                 'e.g. {"input_tokens": 1200, "cached_input_tokens": 0, "output_tokens": 300}');
    ELSIF mark_done.prompt_hash IS NULL OR mark_done.prompt_hash !~ '^[0-9a-f]{64}$' THEN
        PERFORM parecer._invalid('prompt_hash must be a sha256 hex digest', 'Use prompt_hash from parecer.prompt_for.');
    ELSIF mark_done.model IS NULL OR btrim(mark_done.model) = '' OR length(mark_done.model) > 200 THEN
        PERFORM parecer._invalid('model must name the model that answered', 'Pass the model from the provider''s response.');
    ELSE
        PERFORM parecer._check_report(mark_done.report, v_topics, v_session);   -- raises PR007 / PR008
    END IF;

    PERFORM parecer._end_attempt(mark_done.analysis_id, v_claims, v_worker, mark_done.lease_token, v_started, 'done',
                                 NULL, mark_done.model, mark_done.prompt_hash, mark_done.usage, v_client, v_slug);
    RETURN ROW('done', v_retries, NULL)::parecer.item_outcome;
END
$$;
