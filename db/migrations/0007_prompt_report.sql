-- 0007: what the model sees (transcript, prompt) and what parecer accepts
-- back (report checks, grounding), plus the views that read results.

-- Transcript of a session in the deterministic order (sent_at, message_id), no media filter.
CREATE FUNCTION parecer.session_transcript(session_id text)
RETURNS TABLE (message_id text, "position" bigint, from_me boolean, sent_at timestamptz,
               media_type text, body text, transcription text)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_session text := session_transcript.session_id;
BEGIN
    IF NOT EXISTS (SELECT FROM parecer.source_sessions s WHERE s.session_id = v_session) THEN
        RAISE EXCEPTION 'unknown session "%"', COALESCE(left(v_session, 100), '<null>')
            USING ERRCODE = 'PR014', HINT = 'Session ids come from parecer.eligible_sessions(client_slug) or parecer.reports.';
    END IF;
    RETURN QUERY
    SELECT m.message_id, row_number() OVER (ORDER BY m.sent_at NULLS LAST, m.message_id NULLS LAST), m.from_me,
           m.sent_at, m.media_type, m.body, m.transcription
    FROM parecer.source_messages m
    WHERE m.session_id = v_session
    ORDER BY m.sent_at NULLS LAST, m.message_id NULLS LAST;
END
$$;
COMMENT ON FUNCTION parecer.session_transcript(text) IS
'A session''s messages in transcript order (sent_at, message_id) with their position; no media-type filter. Errors: PR014 unknown session.';

-- The transcript as the model reads it: one line per message, carrying its id.
CREATE FUNCTION parecer._transcript_text(p_session_id text, p_language text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
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

-- Exactly what the model is sent for an analysis.
CREATE FUNCTION parecer.prompt_for(analysis_id uuid)
RETURNS TABLE (instructions text, input text, report_schema json, prompt_hash text, model text)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_id     uuid := prompt_for.analysis_id;
    v_a      parecer.analyses;
    v_s      parecer.scripts;
    v_input  text;
BEGIN
    SELECT * INTO v_a FROM parecer.analyses a WHERE a.analysis_id = v_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown analysis %', COALESCE(v_id::text, 'NULL')
            USING ERRCODE = 'PR011', HINT = 'analysis_id comes from parecer.claim or parecer.reports.';
    END IF;
    SELECT * INTO v_s FROM parecer.scripts s WHERE s.script_id = v_a.script_id;
    v_input := parecer._transcript_text(v_a.session_id, v_s.language);
    RETURN QUERY SELECT v_s.instructions, v_input, v_s.report_schema,
        encode(sha256(convert_to(v_s.instructions || E'\n\n' || v_input, 'UTF8')), 'hex'),
        v_s.model;
END
$$;
COMMENT ON FUNCTION parecer.prompt_for(uuid) IS
'Exactly what the model is sent for an analysis: instructions (fixed per script version), input (the transcript, one line per message with its id), the strict report schema, prompt_hash = sha256 hex of instructions || E''\n\n'' || input, and the script''s model (NULL: runner default). Errors: PR011.';

-- Lowercase and collapse whitespace, for grounding checks.
CREATE FUNCTION parecer._norm(p text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT lower(btrim(regexp_replace(p, '\s+', ' ', 'g'))) $$;

-- Raise PR007 (report does not match the schema).
CREATE FUNCTION parecer._bad_report(p_what text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'invalid report: %', p_what
        USING ERRCODE = 'PR007',
              HINT = 'The report must follow report_schema from parecer.prompt_for (parecer.report.v1) exactly.';
END
$$;

-- Check one object's keys are exactly p_keys.
CREATE FUNCTION parecer._check_keys(p_obj jsonb, p_keys text[], p_where text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF jsonb_typeof(p_obj) IS DISTINCT FROM 'object' THEN
        PERFORM parecer._bad_report(p_where || ' must be an object');
    END IF;
    IF NOT (p_obj ?& p_keys) THEN
        PERFORM parecer._bad_report(p_where || ' lacks ' || array_to_string(
            ARRAY(SELECT k FROM unnest(p_keys) k WHERE NOT p_obj ? k), ', '));
    END IF;
    IF EXISTS (SELECT FROM jsonb_object_keys(p_obj) k WHERE k <> ALL (p_keys)) THEN
        PERFORM parecer._bad_report(p_where || ' has unexpected keys');
    END IF;
END
$$;

-- Check an evidence array's shape; returns its items.
CREATE FUNCTION parecer._check_evidence(p_ev jsonb, p_where text) RETURNS SETOF jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e jsonb;
BEGIN
    IF jsonb_typeof(p_ev) IS DISTINCT FROM 'array' THEN
        PERFORM parecer._bad_report(p_where || '.evidence must be an array');
    END IF;
    FOR e IN SELECT * FROM jsonb_array_elements(p_ev) LOOP
        PERFORM parecer._check_keys(e, ARRAY['message_id', 'excerpt'], p_where || '.evidence[]');
        IF jsonb_typeof(e -> 'message_id') <> 'string' OR jsonb_typeof(e -> 'excerpt') <> 'string'
           OR parecer._norm(e ->> 'excerpt') = '' OR length(e ->> 'excerpt') > 500 THEN
            PERFORM parecer._bad_report(p_where || '.evidence[] needs a message_id string and a non-empty excerpt of at most 500 characters');
        END IF;
        RETURN NEXT e;
    END LOOP;
END
$$;

-- Check a report against the script's schema and ground its evidence in the session.
CREATE FUNCTION parecer._check_report(p_report jsonb, p_topics text[], p_session_id text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ev     jsonb[] := '{}';
    v_item   jsonb;
    v_topics text[] := '{}';
    v_bad    text;
    v_n      integer;
BEGIN
    PERFORM parecer._check_keys(p_report, ARRAY['schema_version', 'summary', 'outcome', 'sentiment', 'topics',
                                                 'flags', 'insufficient_context', 'next_action'], 'report');
    IF p_report ->> 'schema_version' IS DISTINCT FROM 'parecer.report.v1' THEN
        PERFORM parecer._bad_report('schema_version must be "parecer.report.v1"');
    END IF;
    IF jsonb_typeof(p_report -> 'summary') <> 'string' THEN
        PERFORM parecer._bad_report('summary must be a string');
    END IF;
    IF jsonb_typeof(p_report -> 'insufficient_context') <> 'boolean' THEN
        PERFORM parecer._bad_report('insufficient_context must be a boolean');
    END IF;
    IF jsonb_typeof(p_report -> 'next_action') NOT IN ('string', 'null') THEN
        PERFORM parecer._bad_report('next_action must be a string or null');
    END IF;

    PERFORM parecer._check_keys(p_report -> 'outcome', ARRAY['evidence', 'status'], 'outcome');
    IF (p_report #>> '{outcome,status}') IS NULL OR jsonb_typeof(p_report #> '{outcome,status}') <> 'string'
       OR (p_report #>> '{outcome,status}') NOT IN ('resolved', 'unresolved', 'escalated', 'abandoned', 'unknown') THEN
        PERFORM parecer._bad_report('outcome.status must be resolved, unresolved, escalated, abandoned or unknown');
    END IF;
    v_ev := v_ev || ARRAY(SELECT parecer._check_evidence(p_report #> '{outcome,evidence}', 'outcome'));

    PERFORM parecer._check_keys(p_report -> 'sentiment', ARRAY['evidence', 'start', 'end'], 'sentiment');
    IF jsonb_typeof(p_report #> '{sentiment,start}') <> 'string' OR jsonb_typeof(p_report #> '{sentiment,end}') <> 'string'
       OR (p_report #>> '{sentiment,start}') NOT IN ('positive', 'neutral', 'negative', 'unknown')
       OR (p_report #>> '{sentiment,end}') NOT IN ('positive', 'neutral', 'negative', 'unknown') THEN
        PERFORM parecer._bad_report('sentiment.start and sentiment.end must be positive, neutral, negative or unknown');
    END IF;
    v_ev := v_ev || ARRAY(SELECT parecer._check_evidence(p_report #> '{sentiment,evidence}', 'sentiment'));

    IF jsonb_typeof(p_report -> 'topics') <> 'array' THEN
        PERFORM parecer._bad_report('topics must be an array');
    END IF;
    FOR v_item IN SELECT * FROM jsonb_array_elements(p_report -> 'topics') LOOP
        PERFORM parecer._check_keys(v_item, ARRAY['topic', 'evidence', 'present', 'confidence'], 'topics[]');
        IF jsonb_typeof(v_item -> 'topic') <> 'string' OR jsonb_typeof(v_item -> 'present') <> 'boolean'
           OR jsonb_typeof(v_item -> 'confidence') <> 'number'
           OR (v_item ->> 'confidence')::numeric NOT BETWEEN 0 AND 1 THEN
            PERFORM parecer._bad_report('topics[] needs topic (string), present (boolean), confidence (0..1)');
        END IF;
        v_topics := v_topics || (v_item ->> 'topic');
        v_ev := v_ev || ARRAY(SELECT parecer._check_evidence(v_item -> 'evidence', 'topics[]'));
    END LOOP;
    IF cardinality(v_topics) <> cardinality(p_topics)
       OR (SELECT count(DISTINCT t) FROM unnest(v_topics) t) <> cardinality(v_topics)
       OR NOT (v_topics <@ p_topics AND v_topics @> p_topics) THEN
        PERFORM parecer._bad_report('topics must hold exactly one entry per script topic');
    END IF;

    IF jsonb_typeof(p_report -> 'flags') <> 'array' THEN
        PERFORM parecer._bad_report('flags must be an array');
    END IF;
    FOR v_item IN SELECT * FROM jsonb_array_elements(p_report -> 'flags') LOOP
        PERFORM parecer._check_keys(v_item, ARRAY['evidence', 'flag'], 'flags[]');
        IF jsonb_typeof(v_item -> 'flag') <> 'string' OR (v_item ->> 'flag') NOT IN (
            'churn_risk', 'complaint', 'legal_threat', 'agent_error', 'slow_response',
            'sensitive_data', 'abusive_language', 'human_requested') THEN
            PERFORM parecer._bad_report('flags[].flag is not one of the schema''s flags');
        END IF;
        v_ev := v_ev || ARRAY(SELECT parecer._check_evidence(v_item -> 'evidence', 'flags[]'));
    END LOOP;

    -- Grounding: each evidence cites a message of this session whose text contains the excerpt.
    SELECT e ->> 'message_id', count(*) OVER () INTO v_bad, v_n
    FROM unnest(v_ev) e
    WHERE NOT EXISTS (
        SELECT FROM parecer.source_messages m
        WHERE m.message_id = e ->> 'message_id' AND m.session_id = p_session_id
          AND (strpos(parecer._norm(m.body), parecer._norm(e ->> 'excerpt')) > 0
               OR strpos(parecer._norm(m.transcription), parecer._norm(e ->> 'excerpt')) > 0))
    LIMIT 1;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'ungrounded evidence: % evidence item(s), first citing message "%", not found in the session''s messages',
                        v_n, left(v_bad, 100)
            USING ERRCODE = 'PR008',
                  HINT = 'Every evidence must cite a message_id of this session and an excerpt that occurs in that message''s body or transcription.';
    END IF;
END
$$;

-- Store a checked report for an item you hold.
CREATE FUNCTION parecer.mark_done(analysis_id uuid, lease_token uuid, report jsonb, model text,
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

-- Results, for parecer_reader.
CREATE VIEW parecer.reports AS
SELECT a.analysis_id, a.client_slug, a.session_id, s.script_key, s.version AS script_version,
       a.analysis_version_tag, a.report, a.model, a.prompt_hash, a.processed_at, a.usage
FROM parecer.analyses a
JOIN parecer.scripts s ON s.script_id = a.script_id
WHERE a.status = 'done';
COMMENT ON VIEW parecer.reports IS 'Checked, grounded reports: one row per done analysis.';

-- Every claim of every item and how it ended.
CREATE VIEW parecer.attempts AS
SELECT t.analysis_id, t.attempt, t.worker, t.claimed_at, t.finished_at,
       COALESCE(t.outcome, 'processing') AS outcome, t.error, t.model, t.usage,
       a.client_slug, a.session_id
FROM parecer._attempts t
JOIN parecer.analyses a ON a.analysis_id = t.analysis_id;
COMMENT ON VIEW parecer.attempts IS 'Attempt history: one row per claim (outcome done, failed, released, expired, reset, or processing while in flight).';
