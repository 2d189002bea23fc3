-- What the model sees (the transcript, the prompt) and what parecer accepts
-- back: the report's shape, its grounding in the session's messages, and the
-- view that shows stored reports.

-- A message's content on one line, so that nothing in it can pass for another
-- message or role: every line separator (those of Python's str.splitlines:
-- \r, \n, \v, \f, \x1c-\x1e, \x85, U+2028, U+2029) becomes " ↵ ", other control
-- characters are dropped, and "[msg" becomes "［msg" (a full-width bracket:
-- no marker, and _fold still reads it as "[msg").
-- (Not STRICT: a STRICT SQL function whose body is not strict is never inlined.)
CREATE OR REPLACE FUNCTION parecer._one_line(p text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT CASE WHEN p !~ '[\x01-\x1f\x7f\u0085\u2028\u2029]|\[[mM][sS][gG]' THEN p   -- most messages: one test
       ELSE regexp_replace(
              regexp_replace(
                regexp_replace(p, '\r\n|[\r\n\v\f\x1c-\x1e\u0085\u2028\u2029]', ' ↵ ', 'g'),
                '[\x01-\x08\x0e-\x1b\x1f\x7f\t]', ' ', 'g'),
              '\[(msg)', '［\1', 'gi') END
$$;

-- How many messages the size policy leaves out of a session's prompt: 0 without
-- building the transcript when an upper bound of its length fits the budget (a
-- line is at most its id six times over, JSON-escaped, 60 characters of time and
-- role, and its content three times over: each line break becomes " ↵ "), else
-- what _transcript_fit says. mark_done records it.
CREATE OR REPLACE FUNCTION parecer._omitted_messages(p_session_id text, p_language text, p_budget_chars bigint)
RETURNS integer
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
    IF (SELECT COALESCE(sum(6 * length(m.message_id) + 60 + length(COALESCE(m.media_type, ''))
                            + 3 * (COALESCE(length(m.body), 0) + COALESCE(length(m.transcription), 0)) + 60), 0)
        FROM parecer.source_messages m WHERE m.session_id = p_session_id) <= p_budget_chars THEN
        RETURN 0;
    END IF;
    RETURN (SELECT f.omitted FROM parecer._transcript_fit(p_session_id, p_language, p_budget_chars) f);
END
$fn$;

-- A session's transcript as the model reads it, one element per message:
-- "[msg <id>] <UTC time> <ROLE>: <content>", ROLE from the message's sender when
-- the adapter gives one (_sender_label), else from from_me. An id with a space, a bracket, a
-- quote or a control character is shown as a JSON string. (SQL, one SELECT, one
-- row: called in a FROM clause it is inlined into the caller's statement, so the
-- prompts of a batch build their transcripts in one statement, planned once.)
CREATE OR REPLACE FUNCTION parecer._transcript_lines(p_session_id text, p_language text)
RETURNS TABLE (lines text[])
LANGUAGE sql STABLE AS $fn$
SELECT COALESCE(array_agg(
           '[msg ' || CASE WHEN m.message_id ~ '^[^][:space:][:cntrl:]"\u0085\u2028\u2029]+$' THEN m.message_id
                           ELSE COALESCE(translate(to_json(m.message_id)::text, E'\u0085\u2028\u2029', '   '), '?') END || '] '
        || COALESCE(to_char(m.sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), '????-??-??T??:??:??Z') || ' '
        || COALESCE(CASE WHEN sd.sender IS NOT NULL THEN parecer._sender_label(p_language, sd.sender) END,  -- a call only for a sender
                    CASE WHEN m.from_me THEN l.agent ELSE l.customer END) || ': '
        || parecer._one_line(c.content)
         ORDER BY m.sent_at NULLS LAST, m.message_id NULLS LAST), '{}')
FROM parecer.source_messages m
CROSS JOIN parecer._labels(p_language) l
LEFT JOIN parecer.source_message_senders sd ON sd.message_id = m.message_id AND sd.session_id = p_session_id  -- contract v2 (0009)
-- the content as a column of its own (OFFSET 0 keeps it one), so that _one_line,
-- which reads its argument several times, is inlined instead of called per message
CROSS JOIN LATERAL (
    SELECT CASE
             WHEN lower(COALESCE(m.media_type, 'text')) IN ('audio', 'ptt', 'voice') THEN
               CASE WHEN NULLIF(btrim(m.transcription), '') IS NOT NULL
                    THEN l.audio_transcribed || ' ' || btrim(m.transcription)
                    ELSE l.audio_missing END
             WHEN lower(COALESCE(m.media_type, 'text')) IN ('text', 'chat', 'conversation', '') THEN
               COALESCE(NULLIF(btrim(m.body), ''), l.empty_message)
             ELSE
               '[' || lower(m.media_type) || ']' || COALESCE(' ' || NULLIF(btrim(m.body), ''), '')
           END AS content
    OFFSET 0
) c
WHERE m.session_id = p_session_id
$fn$;

-- The line that stands for the messages the size policy leaves out, in the
-- script's language: "[… 12 mensagens omitidas …]".
CREATE OR REPLACE FUNCTION parecer._omission_line(p_language text, p_omitted integer) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT '[… ' || p_omitted || ' ' || CASE p_language
           WHEN 'en' THEN CASE WHEN p_omitted = 1 THEN 'message omitted' ELSE 'messages omitted' END
           WHEN 'es' THEN CASE WHEN p_omitted = 1 THEN 'mensaje omitido' ELSE 'mensajes omitidos' END
           ELSE CASE WHEN p_omitted = 1 THEN 'mensagem omitida' ELSE 'mensagens omitidas' END
       END || ' …]'
$$;

-- The size policy for a transcript longer than p_budget_chars (_transcript_fit
-- decides that): the first messages that fit in half the budget, the omission
-- line, and the last messages that fit in what is left, whole messages only.
-- omitted: how many messages were left out; input NULL when not one message
-- fits (the caller raises PR016).
CREATE OR REPLACE FUNCTION parecer._transcript_cut(p_lines text[], p_language text, p_budget_chars bigint)
RETURNS TABLE (input text, omitted integer)
LANGUAGE plpgsql IMMUTABLE
ROWS 1
AS $fn$
DECLARE
    v_n     integer := cardinality(p_lines);
    v_room  bigint;
    v_head  integer;
    v_used  bigint;
    v_tail  integer;
BEGIN
    -- room for messages: the budget less the omission line (counted at its longest)
    v_room := p_budget_chars - length(parecer._omission_line(p_language, v_n)) - 1;
    WITH l AS (
        SELECT u.n, sum(length(u.line) + 1) OVER (ORDER BY u.n) AS from_start
        FROM unnest(p_lines) WITH ORDINALITY u(line, n)
    )
    SELECT COALESCE(max(l.n), 0), COALESCE(max(l.from_start), 0) INTO v_head, v_used
    FROM l WHERE l.from_start <= v_room / 2;
    WITH l AS (
        SELECT u.n, sum(length(u.line) + 1) OVER (ORDER BY u.n DESC) AS from_end
        FROM unnest(p_lines) WITH ORDINALITY u(line, n)
    )
    SELECT count(*) INTO v_tail FROM l WHERE l.n > v_head AND l.from_end <= v_room - v_used;
    omitted := v_n - v_head - v_tail;
    IF v_head + v_tail = 0 THEN
        input := NULL;
    ELSE
        input := array_to_string(p_lines[1:v_head] || parecer._omission_line(p_language, omitted)
                                 || p_lines[v_n - v_tail + 1:v_n], E'\n');
    END IF;
    RETURN NEXT;
END
$fn$;

-- The size policy: the transcript (lines joined by line feeds) when it has at
-- most p_budget_chars characters, else what _transcript_cut keeps of it.
-- omitted: how many messages were left out; input NULL when not one message
-- fits (the caller raises PR016). (SQL, one SELECT: inlined into a caller that
-- names it in FROM, with _transcript_lines; a transcript that fits costs no call.)
CREATE OR REPLACE FUNCTION parecer._transcript_fit(p_session_id text, p_language text, p_budget_chars bigint)
RETURNS TABLE (input text, omitted integer)
LANGUAGE sql STABLE AS $fn$
SELECT CASE WHEN length(w.whole) <= p_budget_chars THEN w.whole ELSE c.input END,
       CASE WHEN length(w.whole) <= p_budget_chars THEN 0 ELSE c.omitted END
-- one subquery (OFFSET 0: the lines and their join built once) rather than a
-- LATERAL per step: each level of nodes cost a few µs a session
FROM (SELECT t.lines, array_to_string(t.lines, E'\n') AS whole
      FROM parecer._transcript_lines(p_session_id, p_language) t OFFSET 0) w
LEFT JOIN LATERAL (
    SELECT k.input, k.omitted FROM parecer._transcript_cut(w.lines, p_language, p_budget_chars) k
    WHERE length(w.whole) > p_budget_chars   -- called only for a transcript over the budget
    OFFSET 0
) c ON true
$fn$;

-- The character budget of a session's transcript under max_input_tokens: the
-- estimate is ceil(characters / 3) of instructions, report schema and input
-- (Portuguese runs near 3.5 characters a token; 3 errs on the safe side).
CREATE OR REPLACE FUNCTION parecer._input_budget_chars(p_instructions text, p_report_schema json) RETURNS bigint
LANGUAGE sql STABLE AS $$
SELECT parecer._setting_int('max_input_tokens')::bigint * 3
       - length(p_instructions) - length(p_report_schema::text) - 2
$$;

-- Transcript of a session in the deterministic order (sent_at, message_id), no media filter.
CREATE OR REPLACE FUNCTION parecer.session_transcript(session_id text)
RETURNS TABLE (message_id text, "position" bigint, from_me boolean, sent_at timestamptz,
               media_type text, body text, transcription text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM parecer.source_sessions s WHERE s.session_id = session_transcript.session_id) THEN
        RAISE EXCEPTION 'unknown session "%"', COALESCE(left(session_transcript.session_id, 100), '<null>')
            USING ERRCODE = 'PR014', HINT = 'Session ids come from parecer.eligible_sessions(client_slug) or parecer.reports.';
    END IF;
    RETURN QUERY
    SELECT m.message_id, row_number() OVER (ORDER BY m.sent_at NULLS LAST, m.message_id NULLS LAST), m.from_me,
           m.sent_at, m.media_type, m.body, m.transcription
    FROM parecer.source_messages m
    WHERE m.session_id = session_transcript.session_id
    ORDER BY m.sent_at NULLS LAST, m.message_id NULLS LAST;
END
$$;
COMMENT ON FUNCTION parecer.session_transcript(text) IS
'A session''s messages in transcript order (sent_at, message_id) with their position; no media-type filter. For admins (any session of any client); a runner reads the session of an item it holds with parecer.leased_transcript. Errors: PR014 unknown session.';

-- The transcript of the session of an item you hold: a runner reads chat text
-- only through its leases.
CREATE OR REPLACE FUNCTION parecer.leased_transcript(analysis_id uuid, lease_token uuid)
RETURNS TABLE (message_id text, "position" bigint, from_me boolean, sent_at timestamptz,
               media_type text, body text, transcription text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_session text;
BEGIN
    -- Unknown item, wrong or expired lease, client not the caller's: one error.
    SELECT a.session_id INTO v_session
    FROM parecer.analyses a
    WHERE a.analysis_id = leased_transcript.analysis_id
      AND a.lease_token = leased_transcript.lease_token AND a.lease_expires_at >= now()
      AND parecer._serves(a.client_id);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'analysis % is not leased to you', COALESCE(leased_transcript.analysis_id::text, 'NULL')
            USING ERRCODE = 'PR006',
                  HINT = 'Pass analysis_id and lease_token of an item you claimed (parecer.claim) whose lease is live.';
    END IF;
    RETURN QUERY SELECT * FROM parecer.session_transcript(v_session);
END
$$;
COMMENT ON FUNCTION parecer.leased_transcript(uuid, uuid) IS
'The messages of the session of an item you hold (analysis_id + lease_token from parecer.claim, lease live), as parecer.session_transcript gives them. Unknown item, wrong or expired lease and (isolation on) a client not granted to you give the same error. Errors: PR006 not leased to you.';

-- What the model is sent for each of several analyses, under the size policy:
-- one row per id, in order, with the prompt or the error prompt_for raises for
-- it (sqlstate, message, hint). The prompts given to the caller as lease holder
-- are recorded (hash, omitted messages) by the same statement. One statement for
-- the batch: each script's texts, lengths and budget once, the transcripts
-- through the inlined _transcript_fit. p_claimed: the ids are candidates this
-- transaction has locked for the caller and is about to lease (claim_with_prompts,
-- _claim_ids): each is built as for its lease holder, and recorded by the lease
-- itself (_lease_items).
CREATE OR REPLACE FUNCTION parecer._prompts(p_ids uuid[], p_claimed boolean DEFAULT false)
RETURNS TABLE (ord integer, analysis_id uuid, instructions text, input text, report_schema json, prompt_hash text,
               model text, omitted_messages integer, input_tokens integer, repair_calls integer,
               sqlstate text, message text, hint text)
-- records the hashes it gives the lease holder
-- Generic plans: one plan is right for any list of ids, and planning this
-- statement anew for each call cost more than running it.
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    v_sc      parecer._caller_scope;
    v_repair  integer := parecer._setting_int('repair_calls');
BEGIN
    IF NOT p_claimed THEN   -- a claim's candidates are of clients the caller serves (_claim_ids)
        SELECT * INTO v_sc FROM parecer._caller_scope;
    END IF;
    RETURN QUERY
    WITH p AS MATERIALIZED (
        SELECT i.o, i.id, a.lease_token, a.session_id, a.script_id, x.holder, x.visible
        FROM unnest(p_ids) WITH ORDINALITY i(id, o)
        LEFT JOIN parecer.analyses a ON a.analysis_id = i.id
        CROSS JOIN LATERAL (
            SELECT p_claimed OR COALESCE(a.status = 'processing' AND a.lease_expires_at >= now() AND a.leased_to = v_sc.who,
                                         false) AS holder
        ) h
        -- Isolation on: a caller that does not see every client reads only an item of
        -- its clients that it holds a live lease on; any other id is unknown to it.
        CROSS JOIN LATERAL (
            SELECT h.holder,
                   a.analysis_id IS NOT NULL
                   AND (p_claimed OR v_sc.all_clients OR (h.holder AND a.client_id = ANY (v_sc.client_ids))) IS NOT FALSE
                   AS visible
        ) x
    ), sc AS MATERIALIZED (   -- each script of the batch once
        SELECT s.*, parecer._input_budget_chars(s.instructions, s.report_schema) AS budget,
               length(s.instructions) + length(s.report_schema::text) AS fixed_chars
        FROM (
            -- instructions || '': a plain copy, read once (the column is compressed and
            -- may be stored out of line; every item's hash reads it)
            SELECT s.script_id, s.instructions || '' AS instructions, s.report_schema, s.model, s.language, s.metadata_keys
            FROM parecer.scripts s
            WHERE s.script_id IN (SELECT p.script_id FROM p WHERE p.visible)
            OFFSET 0
        ) s
    ), f AS MATERIALIZED (
        SELECT p.o, p.id, p.lease_token, p.holder, sc.instructions, sc.report_schema, sc.model, sc.fixed_chars, t.omitted,
               CASE WHEN t.input IS NOT NULL
                    THEN parecer._metadata_line(p.session_id, sc.metadata_keys, sc.language) || t.input END AS input,  -- contract v2 (30_scripts.sql)
               CASE WHEN NOT p.visible THEN 'PR011' WHEN t.input IS NULL THEN 'PR016' END AS code,
               CASE WHEN NOT p.visible THEN 'unknown analysis ' || COALESCE(p.id::text, 'NULL')
                    WHEN t.input IS NULL
                    THEN pg_catalog.format('prompt too large: not one message of session %s fits in max_input_tokens (%s)',
                                           left(p.session_id, 100), parecer._setting_int('max_input_tokens')) END AS msg,
               CASE WHEN NOT p.visible THEN 'analysis_id comes from parecer.claim or parecer.reports.'
                    WHEN t.input IS NULL
                    THEN 'The item cannot be sent: mark it failed (retryable => false). Raise max_input_tokens (parecer.set_setting) if the model takes more, then parecer.retry_failed.' END AS hint
        FROM p
        LEFT JOIN sc ON sc.script_id = p.script_id AND p.visible   -- nothing of an item the caller may not see
        LEFT JOIN LATERAL (
            SELECT t.input, t.omitted
            FROM parecer._transcript_fit(p.session_id, sc.language, sc.budget) t
            WHERE p.visible   -- not built for an id the caller may not see
            OFFSET 0
        ) t ON true
    ), h AS MATERIALIZED (
        SELECT f.*, encode(sha256(convert_to(f.instructions || E'\n\n' || f.input, 'UTF8')), 'hex') AS hash
        FROM f
    ), g AS MATERIALIZED (   -- given to the lease holder (narrow: the UPDATE keeps a copy of each row)
        SELECT h.id, h.lease_token, h.hash, h.omitted FROM h WHERE h.holder AND h.code IS NULL AND NOT p_claimed
    ), u AS (
        -- What the lease holder is given, for mark_done to check its prompt_hash against
        -- (and to store the omitted count with the report). Not worth a WAL flush: lost
        -- in a server crash, the holder's mark_done gets PR017 and the item is retried,
        -- as a claim lost so (claim's sync_commit) is. SET LOCAL: until this transaction ends.
        UPDATE parecer.analyses a SET given_prompt_hash = g.hash, omitted_messages = g.omitted, prompt_given_at = now()
          FROM g
         WHERE a.analysis_id = g.id AND a.lease_token = g.lease_token
        RETURNING pg_catalog.set_config('synchronous_commit', 'off', true)
    )
    SELECT h.o::integer, h.id, h.instructions, h.input, h.report_schema, h.hash, h.model, h.omitted,
           ceil((h.fixed_chars + length(h.input)) / 3.0)::integer,
           v_repair, h.code, h.msg, h.hint
    FROM h
    ORDER BY h.o;
END
$$;

-- Exactly what the model is sent for an analysis, under the size policy (_prompts, for one id).
CREATE OR REPLACE FUNCTION parecer.prompt_for(analysis_id uuid)
RETURNS TABLE (instructions text, input text, report_schema json, prompt_hash text, model text,
               omitted_messages integer, input_tokens integer, repair_calls integer)
-- records the hash it gives the lease holder
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v record;
BEGIN
    SELECT * INTO v FROM parecer._prompts(ARRAY[prompt_for.analysis_id]);
    IF v.sqlstate IS NOT NULL THEN
        PERFORM parecer._raise(v.sqlstate, v.message, NULL, v.hint);
    END IF;
    RETURN QUERY SELECT v.instructions, v.input, v.report_schema, v.prompt_hash, v.model, v.omitted_messages,
                        v.input_tokens, v.repair_calls;
END
$$;
COMMENT ON FUNCTION parecer.prompt_for(uuid) IS
'Exactly what the model is sent for an analysis: instructions (fixed per script version), input (the transcript, one line per message with its id), the strict report schema, prompt_hash = sha256 hex of instructions || E''\n\n'' || input, the script''s model (NULL: runner default); omitted_messages: messages the size policy left out (a session over max_input_tokens keeps its start and end around a "[… N mensagens omitidas …]" line); input_tokens: the estimate ceil(characters / 3) of instructions, schema and input; repair_calls: the setting a runner follows when mark_done finds ungrounded evidence. Called by the role holding the item''s live lease, it records prompt_hash on the item: mark_done then requires the same hash (PR017). With the isolation setting on, a role that does not see every client gets only items of its clients it holds a live lease on (admins: any). Errors: PR011 unknown analysis (or not yours), PR016 prompt too large (not one message fits).';

-- prompt_for for several items at once (the items a claim gave you): one call, one row per id.
CREATE OR REPLACE FUNCTION parecer.prompts_for(analysis_ids uuid[])
RETURNS TABLE (analysis_id uuid, instructions text, input text, report_schema json, prompt_hash text, model text,
               omitted_messages integer, input_tokens integer, repair_calls integer, sqlstate text, message text)
-- records the hashes it gives the lease holder
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    IF analysis_ids IS NULL OR array_ndims(analysis_ids) > 1 OR cardinality(analysis_ids) > 1000 THEN
        PERFORM parecer._invalid('analysis_ids must be a one-dimensional array of at most 1000 ids',
                                 'Pass the analysis_id of each item parecer.claim gave you, e.g. ARRAY[...]::uuid[].');
    END IF;
    RETURN QUERY
    SELECT p.analysis_id, p.instructions, p.input, p.report_schema, p.prompt_hash, p.model, p.omitted_messages,
           p.input_tokens, p.repair_calls, p.sqlstate, p.message
    FROM parecer._prompts(analysis_ids) p
    ORDER BY p.ord;
END
$$;
COMMENT ON FUNCTION parecer.prompts_for(uuid[]) IS
'parecer.prompt_for for several analyses in one call (e.g. every item a claim gave you): one row per id, in order, with the same columns and, when prompt_for would raise for that id, its sqlstate (PR011 unknown analysis or not yours, PR016 prompt too large) and message instead of a prompt; a bad id does not fail the others. The prompts given to the lease holder are recorded as prompt_for records them. Errors: PR010 analysis_ids not a one-dimensional array of at most 1000.';

-- What is wrong with a report's shape (parecer.report.v1 for these topics), or
-- NULL when nothing is: the one check of a report, for mark_done's decision and
-- for its error message alike. Grounding is _grounding's. A valid report (the
-- usual case) is recognised here in a few simple expressions, with no query
-- unless it has custom fields (the step-by-step check below was ~33 µs a report,
-- a third of it _evidence_lists' query); any other report gets its words from
-- _report_first_problem, which decides: this may only let through what that
-- returns NULL for. The keys of each object are not tested with ?&: a present
-- key is implied by the test of its value (evidence: by the walk of the lists).
CREATE OR REPLACE FUNCTION parecer._report_problem(p_report jsonb, p_topics text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_out    jsonb := p_report -> 'outcome';   -- each taken out once: a -> copies the value
    v_senti  jsonb := p_report -> 'sentiment';
    v_tlist  jsonb;
    v_flist  jsonb;
    v_nt     integer;
    v_nf     integer;
    v_xlists jsonb[];
    v_list   jsonb;
    v        jsonb;
    v_topics text[] := '{}';
BEGIN
    <<valid>>
    BEGIN   -- left (EXIT valid) at the first thing that is not as a valid report has it
        -- "extra" (a version's custom fields) is _extra_problem's (30_scripts.sql), but for its evidence.
        -- (A - on a value that is not an object raises: each comes after the typeof that rules that out.)
        IF (jsonb_typeof(p_report) = 'object'
            AND (p_report - '{schema_version,summary,outcome,sentiment,topics,flags,insufficient_context,next_action}'::text[]
                 - 'extra') = '{}'
            AND p_report -> 'schema_version' = '"parecer.report.v1"' AND jsonb_typeof(p_report -> 'summary') = 'string'
            AND jsonb_typeof(p_report -> 'insufficient_context') = 'boolean'
            AND jsonb_typeof(p_report -> 'next_action') IN ('string', 'null')
            AND jsonb_typeof(v_out) = 'object' AND (v_out - '{evidence,status}'::text[]) = '{}'
            AND jsonb_typeof(v_out -> 'status') = 'string' AND v_out ->> 'status' = ANY (parecer._outcomes())
            AND jsonb_typeof(v_senti) = 'object' AND (v_senti - '{evidence,start,end}'::text[]) = '{}'
            AND jsonb_typeof(v_senti -> 'start') = 'string' AND v_senti ->> 'start' = ANY (parecer._sentiments())
            AND jsonb_typeof(v_senti -> 'end') = 'string' AND v_senti ->> 'end' = ANY (parecer._sentiments())
            AND jsonb_typeof(p_report -> 'topics') = 'array' AND jsonb_typeof(p_report -> 'flags') = 'array') IS NOT TRUE THEN
            EXIT valid;
        END IF;
        v_tlist := p_report -> 'topics';
        v_flist := p_report -> 'flags';
        v_nt := jsonb_array_length(v_tlist);
        v_nf := jsonb_array_length(v_flist);
        -- Each topic, then each flag.
        FOR i IN 0 .. v_nt + v_nf - 1 LOOP
            v := CASE WHEN i < v_nt THEN v_tlist -> i ELSE v_flist -> (i - v_nt) END;
            EXIT valid WHEN (jsonb_typeof(v) = 'object'
                             AND CASE WHEN i < v_nt
                                      THEN (v - '{topic,evidence,present,confidence}'::text[]) = '{}'
                                           AND jsonb_typeof(v -> 'topic') = 'string' AND jsonb_typeof(v -> 'present') = 'boolean'
                                           AND jsonb_typeof(v -> 'confidence') = 'number'
                                           AND (v ->> 'confidence')::numeric BETWEEN 0 AND 1
                                      ELSE (v - '{evidence,flag}'::text[]) = '{}'
                                           AND jsonb_typeof(v -> 'flag') = 'string' AND v ->> 'flag' = ANY (parecer._flags())
                                 END) IS NOT TRUE;
            IF i < v_nt THEN
                v_topics := v_topics || (v ->> 'topic');
            END IF;
        END LOOP;
        EXIT valid WHEN (cardinality(v_topics) = cardinality(p_topics) AND v_topics <@ p_topics AND v_topics @> p_topics) IS NOT TRUE;
        IF jsonb_typeof(p_report -> 'extra') = 'object' THEN   -- the custom fields' lists, as _evidence_lists finds them
            v_xlists := ARRAY(SELECT x.value -> 'evidence' FROM jsonb_each(p_report -> 'extra') x
                              WHERE jsonb_typeof(x.value) = 'object' AND x.value ? 'evidence');
        END IF;
        -- Every evidence list (outcome, sentiment, topics[i], flags[i], custom fields) and every element of it.
        FOR n IN 1 .. 2 + v_nt + v_nf + COALESCE(cardinality(v_xlists), 0) LOOP
            v_list := CASE WHEN n = 1 THEN v_out -> 'evidence' WHEN n = 2 THEN v_senti -> 'evidence'
                           WHEN n <= 2 + v_nt THEN v_tlist -> (n - 3) -> 'evidence'
                           WHEN n <= 2 + v_nt + v_nf THEN v_flist -> (n - 3 - v_nt) -> 'evidence'
                           ELSE v_xlists[n - 2 - v_nt - v_nf] END;
            EXIT valid WHEN jsonb_typeof(v_list) IS DISTINCT FROM 'array';
            FOR i IN 0 .. jsonb_array_length(v_list) - 1 LOOP
                v := v_list -> i;
                EXIT valid WHEN (jsonb_typeof(v) = 'object' AND (v - '{message_id,excerpt}'::text[]) = '{}'
                                 AND jsonb_typeof(v -> 'message_id') = 'string' AND jsonb_typeof(v -> 'excerpt') = 'string'
                                 AND length(v ->> 'excerpt') <= 500 AND v ->> 'excerpt' ~ '[^[:space:]]') IS NOT TRUE;
            END LOOP;
        END LOOP;
        RETURN NULL;   -- a valid report
    END valid;
    RETURN parecer._report_first_problem(p_report, p_topics);
END
$$;

-- The first problem of a report, step by step: _report_problem's words.
CREATE OR REPLACE FUNCTION parecer._report_first_problem(p_report jsonb, p_topics text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
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
    v_where   text;
    v_problem text;
    v_topics  text[] := '{}';
BEGIN
    -- "extra" (a version's custom fields) is _check_extra_fields' (30_scripts.sql). The
    -- usual case in one expression that copies nothing (report - 'extra' copies the report).
    IF (jsonb_typeof(p_report) = 'object' AND p_report ?& k_report AND (p_report - k_report - 'extra') = '{}') IS NOT TRUE THEN
        v_problem := parecer._keys_problem(CASE WHEN jsonb_typeof(p_report) = 'object' THEN p_report - 'extra' ELSE p_report END,
                                           k_report, 'report');
    END IF;
    IF v_problem IS NOT NULL THEN
        RETURN v_problem;
    ELSIF jsonb_typeof(p_report -> 'schema_version') <> 'string' OR p_report ->> 'schema_version' <> 'parecer.report.v1' THEN
        RETURN 'schema_version must be "parecer.report.v1"';
    ELSIF jsonb_typeof(p_report -> 'summary') <> 'string' THEN
        RETURN 'summary must be a string';
    ELSIF jsonb_typeof(p_report -> 'insufficient_context') <> 'boolean' THEN
        RETURN 'insufficient_context must be a boolean';
    ELSIF jsonb_typeof(p_report -> 'next_action') NOT IN ('string', 'null') THEN
        RETURN 'next_action must be a string or null';
    END IF;

    v_problem := parecer._keys_problem(p_report -> 'outcome', k_outcome, 'outcome');
    IF v_problem IS NOT NULL THEN
        RETURN v_problem;
    ELSIF jsonb_typeof(p_report #> '{outcome,status}') <> 'string'
          OR NOT (p_report #>> '{outcome,status}' = ANY (parecer._outcomes())) THEN
        RETURN 'outcome.status must be one of ' || array_to_string(parecer._outcomes(), ', ');
    END IF;

    v_problem := parecer._keys_problem(p_report -> 'sentiment', k_senti, 'sentiment');
    IF v_problem IS NOT NULL THEN
        RETURN v_problem;
    ELSIF jsonb_typeof(p_report #> '{sentiment,start}') <> 'string' OR jsonb_typeof(p_report #> '{sentiment,end}') <> 'string'
          OR NOT (p_report #>> '{sentiment,start}' = ANY (parecer._sentiments()))
          OR NOT (p_report #>> '{sentiment,end}' = ANY (parecer._sentiments())) THEN
        RETURN 'sentiment.start and sentiment.end must be one of ' || array_to_string(parecer._sentiments(), ', ');
    END IF;

    IF jsonb_typeof(p_report -> 'topics') <> 'array' THEN
        RETURN 'topics must be an array';
    END IF;
    -- The first of: an entry of the wrong shape, a topic named twice (both in list
    -- order), a list that is not the script's topics. A topic named twice is looked
    -- for only when an entry of the wrong shape follows it (one sort of the topics
    -- before that entry): otherwise the last test refuses it with the same words,
    -- the script's topics being distinct. (array_position per entry was quadratic:
    -- 4.5 s for 20,000 entries.)
    v_list := p_report -> 'topics';   -- taken out once: each element by index, in simple expressions
    FOR i IN 0 .. jsonb_array_length(v_list) - 1 LOOP
        v := v_list -> i;
        v_problem := parecer._keys_problem(v, k_topic, 'topics[]');
        IF v_problem IS NULL AND (jsonb_typeof(v -> 'topic') <> 'string' OR jsonb_typeof(v -> 'present') <> 'boolean'
              OR jsonb_typeof(v -> 'confidence') <> 'number' OR (v ->> 'confidence')::numeric NOT BETWEEN 0 AND 1) THEN
            v_problem := 'topics[] needs topic (string), present (boolean), confidence (0..1)';
        END IF;
        IF v_problem IS NOT NULL THEN
            IF i > 1 AND (SELECT count(DISTINCT t) FROM unnest(v_topics) t) < i THEN
                RETURN 'topics must hold exactly one entry per script topic';
            END IF;
            RETURN v_problem;
        END IF;
        v_topics := v_topics || (v ->> 'topic');
    END LOOP;
    IF cardinality(v_topics) <> cardinality(p_topics) OR NOT (v_topics <@ p_topics AND v_topics @> p_topics) THEN
        RETURN 'topics must hold exactly one entry per script topic';
    END IF;

    IF jsonb_typeof(p_report -> 'flags') <> 'array' THEN
        RETURN 'flags must be an array';
    END IF;
    v_list := p_report -> 'flags';
    FOR i IN 0 .. jsonb_array_length(v_list) - 1 LOOP
        v := v_list -> i;
        v_problem := parecer._keys_problem(v, k_flag, 'flags[]');
        IF v_problem IS NOT NULL THEN
            RETURN v_problem;
        ELSIF jsonb_typeof(v -> 'flag') <> 'string' OR NOT (v ->> 'flag' = ANY (parecer._flags())) THEN
            RETURN 'flags[].flag is not one of the schema''s flags';
        END IF;
    END LOOP;

    -- Every evidence list: an array of objects of exactly message_id and excerpt (strings,
    -- the excerpt non-blank and at most 500 characters).
    FOR v_where, v_list IN SELECT e.k, e.ev FROM parecer._evidence_lists(p_report) e LOOP
        IF jsonb_typeof(v_list) IS DISTINCT FROM 'array' THEN
            RETURN v_where || ' must be an array';
        END IF;
        FOR i IN 0 .. jsonb_array_length(v_list) - 1 LOOP
            v := v_list -> i;
            IF (jsonb_typeof(v) = 'object' AND v ?& k_ev AND (v - k_ev) = '{}'
                AND jsonb_typeof(v -> 'message_id') = 'string' AND jsonb_typeof(v -> 'excerpt') = 'string'
                AND length(v ->> 'excerpt') <= 500 AND v ->> 'excerpt' ~ '[^[:space:]]') IS NOT TRUE THEN
                RETURN COALESCE(parecer._keys_problem(v, k_ev, v_where || '[]'),
                                v_where || '[] needs a message_id string and a non-empty excerpt of at most 500 characters');
            END IF;
        END LOOP;
    END LOOP;
    RETURN NULL;
END
$$;

-- What is wrong with an object that must have exactly these keys, or NULL.
CREATE OR REPLACE FUNCTION parecer._keys_problem(p_obj jsonb, p_keys text[], p_where text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF jsonb_typeof(p_obj) = 'object' AND p_obj ?& p_keys AND (p_obj - p_keys) = '{}' THEN
        RETURN NULL;   -- the usual case, as one simple expression
    ELSIF jsonb_typeof(p_obj) IS DISTINCT FROM 'object' THEN
        RETURN p_where || ' must be an object';
    ELSIF NOT (p_obj ?& p_keys) THEN
        RETURN p_where || ' lacks ' || array_to_string(ARRAY(SELECT k FROM unnest(p_keys) k WHERE NOT p_obj ? k), ', ');
    END IF;
    RETURN p_where || ' has unexpected keys';
END
$$;

-- Every evidence list of a report with its path: outcome.evidence,
-- sentiment.evidence, topics[i].evidence, flags[i].evidence, then the custom
-- fields declared with evidence. (Element by element in simple expressions: no
-- query to start for a report without custom fields.)
CREATE OR REPLACE FUNCTION parecer._evidence_lists(p_report jsonb) RETURNS TABLE (k text, ev jsonb)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_list jsonb;
    v_name text;
BEGIN
    k := 'outcome.evidence';
    ev := p_report #> '{outcome,evidence}';
    RETURN NEXT;
    k := 'sentiment.evidence';
    ev := p_report #> '{sentiment,evidence}';
    RETURN NEXT;
    FOREACH v_name IN ARRAY ARRAY['topics', 'flags'] LOOP
        v_list := CASE WHEN jsonb_typeof(p_report -> v_name) = 'array' THEN p_report -> v_name END;
        FOR i IN 0 .. COALESCE(jsonb_array_length(v_list), 0) - 1 LOOP
            k := v_name || '[' || i || '].evidence';   -- (format() would look up its argument types on every call)
            ev := v_list -> i -> 'evidence';
            RETURN NEXT;
        END LOOP;
    END LOOP;
    IF jsonb_typeof(p_report -> 'extra') = 'object' THEN   -- custom fields declared with evidence (0010)
        RETURN QUERY
        SELECT 'extra.' || x.key || '.evidence', x.value -> 'evidence'
        FROM jsonb_each(p_report -> 'extra') x
        WHERE jsonb_typeof(x.value) = 'object' AND x.value ? 'evidence';
    END IF;
END
$$;

-- Text folded for grounding, one documented normalisation for the excerpt and
-- the message alike (docs/report-schema.md, "Grounding"): Unicode NFKC (… is
-- "...", a no-break space a space, ｆｕｌｌ width plain), lower case, accents
-- dropped (NFD, then no combining marks: no unaccent extension needed), every
-- quote and apostrophe as ', every dash as -, emoji, arrows, pictographs,
-- variation selectors and zero-width characters dropped, whitespace runs as one
-- space, and punctuation, quotes and spaces trimmed from both ends.
CREATE OR REPLACE FUNCTION parecer._fold(p text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
SELECT btrim(
         regexp_replace(
           translate(
             regexp_replace(
               normalize(lower(normalize(p, NFKC)), NFD),
               '[\u0300-\u036f\u200b-\u200d\u2060\ufeff\ufe00-\ufe0f\u2190-\u21ff\u2300-\u23ff\u2460-\u24ff\u25a0-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff]',
               '', 'g'),
             E'\u2018\u2019\u201a\u201b\u2032\u0060\u00b4\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb\u2039\u203a"\u2010\u2011\u2012\u2013\u2014\u2015\u2212',
             repeat('''', 17) || repeat('-', 7)),
           '\s+', ' ', 'g'),
         E' .,;:!?''-')
$$;

-- How an excerpt occurs in a message's text: 'exact' (verbatim), 'normalised'
-- (after _fold), 'fragments' (parts joined by "..." or "…", each of at least 3
-- characters once folded, all in the text in order), or NULL (it does not). A
-- folded excerpt shorter than 3 characters counts only when it is the whole
-- message. A verbatim excerpt of 3 characters or more is found without folding:
-- that usual case is a SQL expression, inlined into the query that grounds a
-- report (no function call), and _match_folded decides the rest.
CREATE OR REPLACE FUNCTION parecer._match_folded(p_text text, p_excerpt text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_text    text;
    v_excerpt text;
    v_frag    text;
    v_at      integer := 1;
    v_pos     integer;
    v_n       integer := 0;
BEGIN
    v_text := parecer._fold(p_text);
    v_excerpt := parecer._fold(p_excerpt);
    IF v_excerpt = '' OR (length(v_excerpt) < 3 AND v_excerpt <> v_text) THEN
        RETURN NULL;
    ELSIF strpos(v_text, v_excerpt) > 0 THEN
        RETURN 'normalised';
    END IF;
    FOREACH v_frag IN ARRAY regexp_split_to_array(v_excerpt, '\s*\.{3,}\s*') LOOP
        v_frag := btrim(v_frag, E' .,;:!?''-');
        CONTINUE WHEN v_frag = '';   -- a leading or trailing ellipsis
        IF length(v_frag) < 3 THEN
            RETURN NULL;
        END IF;
        v_pos := strpos(substr(v_text, v_at), v_frag);
        IF v_pos = 0 THEN
            RETURN NULL;
        END IF;
        v_at := v_at + v_pos - 1 + length(v_frag);
        v_n := v_n + 1;
    END LOOP;
    RETURN CASE WHEN v_n >= 2 THEN 'fragments' END;
END
$$;

-- (Not STRICT: a STRICT SQL function whose body is not strict is never inlined.)
CREATE OR REPLACE FUNCTION parecer._match(p_text text, p_excerpt text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT CASE WHEN p_text IS NULL OR p_excerpt IS NULL THEN NULL
            WHEN length(btrim(p_excerpt)) >= 3 AND strpos(p_text, btrim(p_excerpt)) > 0 THEN 'exact'
            ELSE parecer._match_folded(p_text, p_excerpt) END
$$;

-- Every evidence item of a well-formed report, grounded in this session: one
-- object per item with its path, message_id, the cited message's role
-- (customer or agent) and how the excerpt matched, plus a "problem" for each
-- item that is not grounded and for each verdict that needs evidence and has
-- none (an outcome other than unknown, unless insufficient_context; any flag).
-- One row. A SQL function returning a set, so that the planner inlines it into
-- the query that reads it: _store_reports grounds a batch's reports in its check
-- query (a subplan started once, not a function and a query per report).
CREATE OR REPLACE FUNCTION parecer._grounding_set(p_report jsonb, p_session_id text) RETURNS TABLE (grounding jsonb)
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(jsonb_agg(g.item ORDER BY g.ord, g.i), '[]')
    FROM (
        SELECT l.ord, e.i,
               -- the keys that have a value (jsonb_object of text arrays: jsonb_build_object
               -- looks up its arguments' types on every call, then jsonb_strip_nulls copies it)
               CASE WHEN m.match IS NOT NULL
                    THEN jsonb_object('{path,message_id,role,match}',
                                      ARRAY[l.k || '[' || (e.i - 1) || ']', e.x ->> 'message_id', m.role, m.match])
                    WHEN m.role IS NOT NULL
                    THEN jsonb_object('{path,message_id,role,problem}',
                                      ARRAY[l.k || '[' || (e.i - 1) || ']', e.x ->> 'message_id', m.role,
                                            'not found in the cited message'])
                    WHEN e.x ->> 'message_id' IS NOT NULL
                    THEN jsonb_object('{path,message_id,problem}',
                                      ARRAY[l.k || '[' || (e.i - 1) || ']', e.x ->> 'message_id',
                                            'no such message in this session'])
                    ELSE jsonb_object('{path,problem}',
                                      ARRAY[l.k || '[' || (e.i - 1) || ']', 'no such message in this session']) END AS item
        FROM parecer._evidence_lists(p_report) WITH ORDINALITY l(k, ev, ord)
        CROSS JOIN LATERAL jsonb_array_elements(l.ev) WITH ORDINALITY e(x, i)
        LEFT JOIN LATERAL (
            SELECT CASE WHEN sm.from_me THEN 'agent' ELSE 'customer' END AS role,
                   COALESCE(parecer._match(sm.body, e.x ->> 'excerpt'),
                            parecer._match(sm.transcription, e.x ->> 'excerpt')) AS match
            FROM parecer.source_messages sm
            WHERE sm.message_id = e.x ->> 'message_id' AND sm.session_id = p_session_id
            ORDER BY 2 NULLS LAST
            LIMIT 1) m ON true
        UNION ALL
        SELECT 0, 0, jsonb_build_object('path', 'outcome.evidence', 'problem', 'a verdict needs evidence: outcome.status '
                                        || (p_report #>> '{outcome,status}') || ' cites no message')
        WHERE p_report #>> '{outcome,status}' <> 'unknown' AND NOT (p_report -> 'insufficient_context')::boolean
          AND jsonb_array_length(p_report #> '{outcome,evidence}') = 0
        UNION ALL
        SELECT 1000 + f.i, 0, jsonb_build_object('path', pg_catalog.format('flags[%s].evidence', f.i - 1),
                                                 'problem', 'a flag needs evidence: ' || (f.x ->> 'flag') || ' cites no message')
        FROM jsonb_array_elements(p_report -> 'flags') WITH ORDINALITY f(x, i)
        WHERE jsonb_array_length(f.x -> 'evidence') = 0
    ) g
$$;

-- Usage: token counts are JSON numbers written as 1 to 12 digits (no sign, fraction or exponent).
CREATE OR REPLACE FUNCTION parecer._usage_ok(p_usage jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
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

-- Whether a prompt_hash is a sha256 digest in lowercase hex.
CREATE OR REPLACE FUNCTION parecer._is_sha256_hex(p text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT length(p) = 64 AND ltrim(p, '0123456789abcdef') = '' $$;

-- mark_done's checks and its write, for a batch of items given as parallel arrays
-- (mark_done is a batch of one, mark_done_many a batch of distinct items): one
-- row per item, in order, with its retry_count when stored or the error
-- mark_done raises for it (sqlstate, message, detail, hint). Every item is
-- checked in one query, in mark_done's order: lease, usage, prompt_hash, model,
-- the hash given (PR017), report and its version's custom fields (PR007),
-- grounding (PR008). The items that pass are stored by one UPDATE whose WHERE
-- checks the lease again (a refused item changes nothing, an item is written
-- once), and each client's spend is added once, clients in order: two batches
-- never take spend rows in opposite orders.
CREATE OR REPLACE FUNCTION parecer._store_reports(p_ids uuid[], p_tokens uuid[], p_reports jsonb[], p_models text[],
                                                  p_hashes text[], p_usages jsonb[])
RETURNS TABLE (ord integer, retry_count integer, sqlstate text, message text, detail text, hint text)
-- as _prompts: one plan for any batch
-- the inlined grounding's row estimates would make each check a 40 ms compile
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET jit = off AS $$
#variable_conflict use_column
DECLARE
    v_n       integer := COALESCE(cardinality(p_ids), 0);
    v_code    text[];
    v_msg     text[];
    v_detail  text[];
    v_hint    text[];
    v_ground  jsonb[];
    v_omitted integer[];
    v_retries integer[];
    v_any     boolean;
    v_os      bigint[];
    v_clients text[];
    v_slugs   text[];
    v_usages  jsonb[];
    v_costs   numeric[];
    v_i       integer;
    v_state   text;
    v_text    text;
    v_more    text;
    v_help    text;
BEGIN
    -- Check every item. A NULL code with no grounding: the lease is not live.
    SELECT array_agg(c.code ORDER BY c.o), array_agg(c.msg ORDER BY c.o), array_agg(c.detail ORDER BY c.o),
           array_agg(c.hint ORDER BY c.o), array_agg(c.grounding ORDER BY c.o), array_agg(c.omitted ORDER BY c.o),
           COALESCE(bool_or(c.code IS NULL AND c.grounding IS NOT NULL), false)
      INTO v_code, v_msg, v_detail, v_hint, v_ground, v_omitted, v_any
    FROM (
        SELECT i.o,
               CASE WHEN r.refusal IS NOT NULL THEN r.code WHEN p.problem IS NOT NULL THEN 'PR007'
                    WHEN jsonb_array_length(b.bad) > 0 THEN 'PR008' END AS code,
               CASE WHEN r.refusal IS NOT NULL THEN r.refusal WHEN p.problem IS NOT NULL THEN 'invalid report: ' || p.problem
                    WHEN jsonb_array_length(b.bad) > 0
                    THEN pg_catalog.format('ungrounded evidence: %s problem(s), first at %s: %s', jsonb_array_length(b.bad),
                                           b.bad -> 0 ->> 'path', b.bad -> 0 ->> 'problem') END AS msg,
               CASE WHEN r.refusal IS NULL AND p.problem IS NULL AND jsonb_array_length(b.bad) > 0 THEN b.bad::text END AS detail,
               CASE WHEN r.refusal IS NOT NULL THEN r.hint
                    WHEN p.problem IS NOT NULL THEN 'The report must follow report_schema from parecer.prompt_for (parecer.report.v1) exactly.'
                    WHEN jsonb_array_length(b.bad) > 0
                    THEN 'Every evidence must cite a message_id of this session and an excerpt that occurs in that message''s body or transcription; verdicts need evidence. DETAIL lists the problems as JSON.'
                    END AS hint,
               g.grounding,
               -- what the size policy left out of the prompt: as prompt_for recorded it with
               -- the hash it gave, else prompt_for's own function, recomputed
               CASE WHEN g.grounding IS NOT NULL
                    THEN COALESCE(CASE WHEN a.given_prompt_hash IS NOT NULL THEN a.omitted_messages END,
                                  parecer._omitted_messages(a.session_id, a.language,
                                                            parecer._input_budget_chars(a.instructions, a.report_schema))) END AS omitted
        FROM unnest(p_ids, p_tokens, p_reports, p_models, p_hashes, p_usages)
             WITH ORDINALITY i(id, token, report, model, hash, usage, o)
        -- the clients of the batch the caller serves: _serves (15_access.sql) once per client
        CROSS JOIN (SELECT ARRAY(SELECT x.client_id
                                 FROM (SELECT DISTINCT a.client_id FROM parecer.analyses a WHERE a.analysis_id = ANY (p_ids)
                                       OFFSET 0) x   -- not pushed below the DISTINCT
                                 WHERE parecer._serves(x.client_id)) AS clients) sv
        LEFT JOIN LATERAL (
            SELECT a.session_id, a.given_prompt_hash, a.omitted_messages, s.topics, s.language, s.instructions,
                   s.report_schema, s.extra_fields
            FROM parecer.analyses a JOIN parecer.scripts s ON s.script_id = a.script_id
            WHERE a.analysis_id = i.id AND a.lease_token = i.token AND a.lease_expires_at >= now()
              AND a.client_id = ANY (sv.clients)   -- the caller still serves the client
        ) a ON true
        CROSS JOIN LATERAL (   -- which of these checks refuses the item first, decided once
            SELECT CASE
                     WHEN a.session_id IS NULL THEN NULL
                     WHEN i.usage IS NOT NULL AND NOT parecer._usage_ok(i.usage) THEN 1
                     WHEN i.hash IS NULL OR NOT parecer._is_sha256_hex(i.hash) THEN 2
                     WHEN i.model IS NULL OR btrim(i.model) = '' OR length(i.model) > 200 THEN 3
                     -- The report must come from the prompt prompt_for gave the lease holder in
                     -- this attempt (with isolation off, an attempt that never asked keeps the
                     -- hash it reports).
                     WHEN a.given_prompt_hash IS DISTINCT FROM i.hash
                          AND (a.given_prompt_hash IS NOT NULL OR parecer._setting('isolation') = 'on') THEN 4
                   END AS k
            OFFSET 0
        ) k
        CROSS JOIN LATERAL (
            SELECT CASE WHEN k.k = 4 THEN 'PR017' WHEN k.k IS NOT NULL THEN 'PR010' END AS code,
                   CASE k.k
                     WHEN 1 THEN 'usage must be a JSON object with non-negative integer token counts, or NULL'
                     WHEN 2 THEN 'prompt_hash must be a sha256 hex digest'
                     WHEN 3 THEN 'model must name the model that answered'
                     WHEN 4 THEN pg_catalog.format('prompt_hash %s is not the hash of the prompt given for this attempt (%s)',
                                                   left(i.hash, 64), COALESCE(a.given_prompt_hash, 'none given'))
                   END AS refusal,
                   CASE k.k
                     WHEN 1 THEN 'e.g. {"input_tokens": 1200, "cached_input_tokens": 0, "output_tokens": 300}'
                     WHEN 2 THEN 'Use prompt_hash from parecer.prompt_for.'
                     WHEN 3 THEN 'Pass the model from the provider''s response.'
                     ELSE 'Report prompt_hash exactly as parecer.prompt_for returned it to you under this lease; call prompt_for after claim and send what it returns.'
                   END AS hint
            OFFSET 0
        ) r
        CROSS JOIN LATERAL (
            SELECT CASE WHEN a.session_id IS NOT NULL AND r.refusal IS NULL
                        THEN CASE WHEN i.report IS NULL THEN 'report must be an object'
                                  -- the standard report, then the version's custom fields (30_scripts.sql)
                                  ELSE COALESCE(parecer._report_problem(i.report, a.topics),
                                                parecer._extra_problem(i.report, a.extra_fields)) END END AS problem
            OFFSET 0
        ) p
        CROSS JOIN LATERAL (
            -- _grounding, inlined: one subplan for the batch (and only for a well-formed report)
            SELECT CASE WHEN a.session_id IS NOT NULL AND r.refusal IS NULL AND p.problem IS NULL
                        THEN (SELECT gs.grounding FROM parecer._grounding_set(i.report, a.session_id) gs) END AS grounding
            OFFSET 0
        ) g
        CROSS JOIN LATERAL (
            SELECT jsonb_path_query_array(g.grounding, '$[*] ? (exists(@.problem))') AS bad
            OFFSET 0
        ) b
    ) c;

    -- Store the items that passed, the lease checked again, the cost priced.
    IF v_any THEN
        WITH ok AS (
            SELECT i.id, i.token, i.report, i.model, i.hash, i.usage, i.grounding, i.omitted, i.o, c.cost_usd
            FROM unnest(p_ids, p_tokens, p_reports, p_models, p_hashes, p_usages, v_ground, v_omitted, v_code)
                 WITH ORDINALITY i(id, token, report, model, hash, usage, grounding, omitted, code, o)
            LEFT JOIN LATERAL parecer._cost_set(COALESCE(i.model, i.usage ->> 'model', ''), i.usage) c   -- _cost, inlined
                   ON i.usage IS NOT NULL
            WHERE i.grounding IS NOT NULL AND i.code IS NULL
        ), u AS (
            UPDATE parecer.analyses a
               SET status = 'done', report = ok.report, grounding = ok.grounding, model = ok.model,
                   omitted_messages = ok.omitted,
                   prompt_hash = ok.hash, usage = ok.usage, error = NULL, cost_usd = ok.cost_usd,
                   next_retry_at = NULL, lease_token = NULL, lease_expires_at = NULL,
                   processed_at = now(), updated_at = now(),
                   -- what was analysed: the session's fingerprint (68_changes.sql) as the source is now
                   (analysed_message_count, analysed_last_message_at) =
                       (SELECT count(*), max(m.sent_at) FROM parecer.source_messages m WHERE m.session_id = a.session_id)
              FROM ok
             WHERE a.analysis_id = ok.id
               AND a.analysis_id = ANY (ARRAY(SELECT ok.id FROM ok))   -- by primary key, never a scan
               AND a.lease_token = ok.token AND a.lease_expires_at >= now()
            RETURNING ok.o, a.retry_count, a.client_id, a.client_slug, a.usage, a.cost_usd
        )
        SELECT array_agg(u.o), array_agg(u.retry_count), array_agg(u.client_id), array_agg(u.client_slug),
               array_agg(u.usage), array_agg(u.cost_usd)
          INTO v_os, v_retries, v_clients, v_slugs, v_usages, v_costs
        FROM u;
        -- each client's attempts at once, clients in order
        PERFORM parecer._add_spend(x.client_id, x.client_slug, parecer._budget_day(), x.usages, x.cost)
        FROM (SELECT c.client_id, c.client_slug, array_agg(c.usage) AS usages, sum(c.cost) AS cost
              FROM unnest(v_clients, v_slugs, v_usages, v_costs) c(client_id, client_slug, usage, cost)
              WHERE c.usage IS NOT NULL
              GROUP BY c.client_id, c.client_slug
              ORDER BY c.client_id, c.client_slug) x;
    END IF;

    -- Not leased to the caller, or lost its lease before the UPDATE: the error that
    -- explains it.
    FOR v_i IN 1 .. v_n LOOP
        CONTINUE WHEN v_code[v_i] IS NOT NULL OR v_i::bigint = ANY (COALESCE(v_os, '{}'));
        BEGIN
            PERFORM parecer._lease_refused(p_ids[v_i], p_tokens[v_i]);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_text = MESSAGE_TEXT,
                                    v_more = PG_EXCEPTION_DETAIL, v_help = PG_EXCEPTION_HINT;
            v_code[v_i] := v_state;
            v_msg[v_i] := v_text;
            v_detail[v_i] := NULLIF(v_more, '');
            v_hint[v_i] := NULLIF(v_help, '');
        END;
    END LOOP;
    RETURN QUERY
    SELECT e.o::integer, d.retry_count, e.code, e.msg, e.detail, e.hint
    FROM unnest(v_code, v_msg, v_detail, v_hint) WITH ORDINALITY e(code, msg, detail, hint, o)
    LEFT JOIN unnest(v_os, v_retries) d(o, retry_count) ON d.o = e.o
    ORDER BY e.o;
END
$$;

-- Store the report of an item you hold, once it passes every check
-- (_store_reports, a batch of one). The item's row is the done attempt: its
-- model, prompt hash, usage and cost stay there.
CREATE OR REPLACE FUNCTION parecer.mark_done(analysis_id uuid, lease_token uuid, report jsonb, model text,
                                             prompt_hash text, usage jsonb DEFAULT NULL)
RETURNS parecer.item_outcome
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v record;
BEGIN
    SELECT * INTO v
    FROM parecer._store_reports(ARRAY[mark_done.analysis_id], ARRAY[mark_done.lease_token], ARRAY[mark_done.report],
                                ARRAY[mark_done.model], ARRAY[mark_done.prompt_hash], ARRAY[mark_done.usage]);
    IF v.sqlstate IS NOT NULL THEN
        PERFORM parecer._raise(v.sqlstate, v.message, v.detail, v.hint);
    END IF;
    RETURN ROW('done', v.retry_count, NULL)::parecer.item_outcome;
END
$$;
COMMENT ON FUNCTION parecer.mark_done(uuid, uuid, jsonb, text, text, jsonb) IS
'Store the report of an item you hold, after checking it against the report schema and grounding every evidence in the session''s messages; its usage and cost stay in the item''s row (parecer.reports, parecer.attempts). A failing report changes nothing. prompt_hash must be the hash prompt_for gave the lease holder in this attempt (with isolation off, an attempt that never called prompt_for is taken at its word). Errors: PR006 stale lease, PR007 invalid report, PR008 ungrounded evidence, PR010, PR011, PR017 prompt hash not the one given.';

-- security_barrier: a reader's own (leaky) functions in a query on the view never
-- see the rows of clients the tenant filter drops (docs/concepts.md, Security).
CREATE OR REPLACE VIEW parecer.reports WITH (security_barrier = true) AS
SELECT a.analysis_id, a.client_slug, a.session_id, s.script_key, s.version AS script_version,
       a.analysis_version_tag, a.report, a.model, a.prompt_hash, a.processed_at, a.usage, a.cost_usd,
       a.grounding, a.omitted_messages
FROM parecer.analyses a
JOIN parecer.scripts s ON s.script_id = a.script_id
WHERE a.status = 'done' AND ((SELECT sc.all_clients FROM parecer._caller_scope sc) OR a.client_id = ANY ((SELECT sc.client_ids FROM parecer._caller_scope sc)::text[]));
COMMENT ON VIEW parecer.reports IS 'With the isolation setting on, only the clients granted to the reader. Checked, grounded reports: one row per done analysis, with the usage and cost of the attempt that produced it, and grounding: per evidence item its path, message_id, the cited message''s role (customer/agent) and how the excerpt matched (exact, normalised, fragments); omitted_messages: messages the size policy left out of the prompt (0: none).';

-- Store several reports in one call (one transaction, one commit to wait for):
-- the items go through mark_done's checks and write together (_store_reports),
-- each refused on its own: a bad item changes nothing and does not fail the
-- others. A batch that cannot go as one set (an item that does not parse, an
-- analysis twice, an unexpected error) goes one item at a time, each through
-- parecer.mark_done in a subtransaction of its own.
CREATE OR REPLACE FUNCTION parecer.mark_done_many(items jsonb)
RETURNS TABLE (analysis_id uuid, outcome text, sqlstate text, message text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_item  jsonb;
    v_id    uuid;
    v_code  text;
    v_msg   text;
    v_ids   uuid[];
    v_codes text[];
    v_msgs  text[];
    v_set   boolean := false;
BEGIN
    IF jsonb_typeof(items) IS DISTINCT FROM 'array' OR jsonb_array_length(items) > 1000 THEN
        PERFORM parecer._invalid('items must be a JSON array of at most 1000 objects',
                                 'e.g. [{"analysis_id": "...", "lease_token": "...", "report": {...}, "model": "...", "prompt_hash": "...", "usage": {...}}]');
    END IF;
    BEGIN
        SELECT array_agg(r.ord ORDER BY r.ord) IS NOT NULL, array_agg(x.id ORDER BY r.ord),
               array_agg(r.sqlstate ORDER BY r.ord), array_agg(r.message ORDER BY r.ord)
          INTO v_set, v_ids, v_codes, v_msgs
        FROM (SELECT array_agg((e.x ->> 'analysis_id')::uuid ORDER BY e.o) AS ids,
                     array_agg((e.x ->> 'lease_token')::uuid ORDER BY e.o) AS tokens,
                     array_agg(e.x -> 'report' ORDER BY e.o) AS reports,
                     array_agg(e.x ->> 'model' ORDER BY e.o) AS models,
                     array_agg(e.x ->> 'prompt_hash' ORDER BY e.o) AS hashes,
                     array_agg(CASE WHEN jsonb_typeof(e.x -> 'usage') = 'null' THEN NULL ELSE e.x -> 'usage' END
                               ORDER BY e.o) AS usages
              FROM jsonb_array_elements(items) WITH ORDINALITY e(x, o)
              HAVING count(DISTINCT (e.x ->> 'analysis_id')::uuid) = count(*)) b   -- an analysis once
        CROSS JOIN LATERAL parecer._store_reports(b.ids, b.tokens, b.reports, b.models, b.hashes, b.usages) r
        CROSS JOIN LATERAL (SELECT b.ids[r.ord] AS id) x;
    EXCEPTION
        WHEN syntax_error_or_access_rule_violation THEN
            RAISE;   -- a bug or a missing grant, not an item's fault
        WHEN OTHERS THEN
            v_set := false;   -- nothing of it stays: one item at a time below
    END;
    IF v_set THEN
        RETURN QUERY
        SELECT i.id, CASE WHEN i.code IS NULL THEN 'done' WHEN i.code IN ('PR006', 'PR011') THEN 'stale' ELSE 'invalid' END,
               i.code, i.msg
        FROM unnest(v_ids, v_codes, v_msgs) i(id, code, msg);
        RETURN;
    END IF;
    FOR v_item IN SELECT x FROM jsonb_array_elements(items) x LOOP
        v_id := NULL;
        v_code := NULL;
        v_msg := NULL;
        BEGIN
            v_id := (v_item ->> 'analysis_id')::uuid;
            PERFORM parecer.mark_done(v_id, (v_item ->> 'lease_token')::uuid, v_item -> 'report', v_item ->> 'model',
                                      v_item ->> 'prompt_hash',
                                      CASE WHEN jsonb_typeof(v_item -> 'usage') = 'null' THEN NULL ELSE v_item -> 'usage' END);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_code = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
        END;
        analysis_id := v_id;
        outcome := CASE WHEN v_code IS NULL THEN 'done' WHEN v_code IN ('PR006', 'PR011') THEN 'stale' ELSE 'invalid' END;
        sqlstate := v_code;
        message := v_msg;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION parecer.mark_done_many(jsonb) IS
'Store up to 1000 reports in one call: items is a JSON array of {analysis_id, lease_token, report, model, prompt_hash, usage}; each is checked as parecer.mark_done checks it (the same checks, the same errors) and the good ones are stored together, a bad item does not fail the others. One row per item: analysis_id, outcome done / stale (PR006, PR011: drop the result) / invalid (any other error: mark_failed it), sqlstate, message. Errors: PR010 items not an array of at most 1000.';
