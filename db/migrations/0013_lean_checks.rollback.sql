-- Undo 0013: _report_ok and _usage_ok as 0011 and 0010 left them.
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

CREATE OR REPLACE FUNCTION parecer._usage_ok(p_usage jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    k text;
BEGIN
    IF jsonb_typeof(p_usage) IS DISTINCT FROM 'object' THEN
        RETURN false;
    END IF;
    FOREACH k IN ARRAY ARRAY['input_tokens', 'cached_input_tokens', 'output_tokens'] LOOP
        IF COALESCE(jsonb_typeof(p_usage -> k), 'null') <> 'null'
           AND (jsonb_typeof(p_usage -> k) <> 'number' OR (p_usage ->> k) !~ '^[0-9]{1,12}$') THEN
            RETURN false;
        END IF;
    END LOOP;
    RETURN true;
END
$$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA parecer FROM PUBLIC;
