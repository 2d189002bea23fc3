-- Validate a tag filter; returns (mode, tags). PR004 on any other shape.
CREATE OR REPLACE FUNCTION parecer._tag_filter(p_filter jsonb, OUT mode text, OUT tags text[])
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_hint constant text := 'Use {"mode":"none"} (contacts without tags), {"mode":"ignore"} (tags do not matter), or {"mode":"any_of"|"all_of"|"none_of","tags":["tag", ...]} with 1-1000 non-empty tags.';
BEGIN
    IF p_filter IS NULL OR jsonb_typeof(p_filter) <> 'object'
       OR EXISTS (SELECT FROM jsonb_object_keys(p_filter) k WHERE k NOT IN ('mode', 'tags'))
       OR jsonb_typeof(p_filter -> 'mode') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'invalid tag filter' USING ERRCODE = 'PR004', HINT = v_hint;
    END IF;
    mode := p_filter ->> 'mode';
    IF mode IN ('none', 'ignore') THEN
        IF p_filter ? 'tags' THEN
            RAISE EXCEPTION 'tag filter mode "%" takes no tags', mode USING ERRCODE = 'PR004', HINT = v_hint;
        END IF;
        tags := '{}';
    ELSIF mode IN ('any_of', 'all_of', 'none_of') THEN
        IF jsonb_typeof(p_filter -> 'tags') IS DISTINCT FROM 'array'
           OR jsonb_array_length(p_filter -> 'tags') NOT BETWEEN 1 AND 1000
           OR EXISTS (SELECT FROM jsonb_array_elements(p_filter -> 'tags') e
                      WHERE jsonb_typeof(e) <> 'string' OR btrim(e #>> '{}') = '' OR length(e #>> '{}') > 200) THEN
            RAISE EXCEPTION 'tag filter mode "%" needs a non-empty array of tags', mode USING ERRCODE = 'PR004', HINT = v_hint;
        END IF;
        SELECT array_agg(DISTINCT e) INTO tags FROM jsonb_array_elements_text(p_filter -> 'tags') e;
    ELSE
        RAISE EXCEPTION 'unknown tag filter mode "%"', left(mode, 50) USING ERRCODE = 'PR004', HINT = v_hint;
    END IF;
END
$$;

-- Validate a metadata filter (contract v2): a JSON object of 1-20 keys whose
-- values are strings, numbers or booleans; a session matches when its metadata
-- contains it (jsonb @>: every key equal). Passed as a parameter, never spliced.
CREATE OR REPLACE FUNCTION parecer._metadata_filter(p_filter jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_filter IS NULL THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(p_filter) <> 'object'
       OR (SELECT count(*) FROM jsonb_object_keys(p_filter)) NOT BETWEEN 1 AND 20
       OR EXISTS (SELECT FROM jsonb_each(p_filter) e
                  WHERE jsonb_typeof(e.value) NOT IN ('string', 'number', 'boolean') OR length(e.key) > 64
                     OR length(e.value #>> '{}') > 200) THEN
        RAISE EXCEPTION 'invalid metadata filter'
            USING ERRCODE = 'PR031',
                  HINT = 'Use a JSON object of 1-20 keys of parecer.source_session_metadata with string, number or boolean values, e.g. {"department":"vendas","urgent":true}: a session matches when every key is equal.';
    END IF;
    RETURN p_filter;
END
$$;

-- The idle rule a run applies: the min_idle setting unless the run names its own.
CREATE OR REPLACE FUNCTION parecer._min_idle(p_min_idle interval) RETURNS interval
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v interval := COALESCE(p_min_idle, parecer._setting_interval('min_idle'));
BEGIN
    IF v < interval '0' OR v > interval '365 days' THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid min_idle: %s', v),
                                 'min_idle is how long a session must have been quiet, between 0 and 365 days (NULL: the min_idle setting, 24 hours by default).');
    END IF;
    RETURN v;
END
$$;

-- Sessions of a client worth analysing: ended and idle for min_idle, enough messages, tag filter.
CREATE OR REPLACE FUNCTION parecer.eligible_sessions(
    client_slug         text,
    min_messages        integer DEFAULT 20,
    tag_filter          jsonb DEFAULT '{"mode":"none"}',
    ended_after         timestamptz DEFAULT NULL,
    ended_before        timestamptz DEFAULT NULL,
    require_agent_reply boolean DEFAULT false,
    min_idle            interval DEFAULT NULL,
    metadata_filter     jsonb DEFAULT NULL
) RETURNS TABLE (session_id text, ended_at timestamptz, message_count bigint, last_message_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_client record;
    v_filter record;
    v_tag_sql text;
    v_idle    interval;
    v_meta    jsonb := parecer._metadata_filter(eligible_sessions.metadata_filter);
BEGIN
    v_client := parecer._client(eligible_sessions.client_slug);
    v_filter := parecer._tag_filter(tag_filter);
    v_idle := parecer._min_idle(eligible_sessions.min_idle);
    IF min_messages IS NULL OR min_messages < 1 OR min_messages > 1000000 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid min_messages: %s', COALESCE(min_messages::text, 'NULL')),
                                 'min_messages must be between 1 and 1000000.');
    END IF;
    -- Only the predicate the filter needs, so the planner sees a simple query.
    v_tag_sql := CASE v_filter.mode
        WHEN 'none'    THEN 'AND NOT EXISTS (SELECT FROM parecer.source_contact_tags t WHERE t.contact_id = s.contact_id)'
        WHEN 'any_of'  THEN 'AND EXISTS (SELECT FROM parecer.source_contact_tags t WHERE t.contact_id = s.contact_id AND t.tag = ANY ($5))'
        WHEN 'none_of' THEN 'AND NOT EXISTS (SELECT FROM parecer.source_contact_tags t WHERE t.contact_id = s.contact_id AND t.tag = ANY ($5))'
        WHEN 'all_of'  THEN 'AND (SELECT count(DISTINCT t.tag) FROM parecer.source_contact_tags t WHERE t.contact_id = s.contact_id AND t.tag = ANY ($5)) = cardinality($5)'
        ELSE '' END;
    -- Seed 003's 24-hour rule: idle since the later of ended_at and the last message
    -- (a late message reopens the wait); an ended_at in the future is never eligible.
    RETURN QUERY EXECUTE
        'SELECT s.session_id, s.ended_at, count(*)::bigint, max(m.sent_at)
         FROM parecer.source_sessions s
         JOIN parecer.source_messages m ON m.session_id = s.session_id
         LEFT JOIN parecer.source_message_senders sd ON sd.message_id = m.message_id AND sd.session_id = m.session_id
         WHERE s.client_id = $1
           AND s.ended_at <= now() - $7
           AND ($2::timestamptz IS NULL OR s.ended_at >= $2)
           AND ($3::timestamptz IS NULL OR s.ended_at < $3) '
        || v_tag_sql
        || CASE WHEN v_meta IS NOT NULL THEN ' AND EXISTS (SELECT FROM parecer.source_session_metadata md
                                                          WHERE md.session_id = s.session_id AND md.metadata @> $8)' ELSE '' END ||
        ' GROUP BY s.session_id, s.ended_at
          HAVING count(*) >= $4 AND (NOT $6 OR bool_or(CASE WHEN sd.sender IN (''agent'', ''bot'', ''supervisor'') THEN true
                                                        WHEN sd.sender IN (''customer'', ''system'', ''note'') THEN false
                                                        ELSE m.from_me END))
             AND COALESCE(max(m.sent_at), ''-infinity'') <= now() - $7
          ORDER BY s.ended_at DESC, s.session_id'
    USING v_client.client_id, ended_after, ended_before, min_messages, v_filter.tags,
          COALESCE(require_agent_reply, false), v_idle, v_meta;
END
$$;
COMMENT ON FUNCTION parecer.eligible_sessions(text, integer, jsonb, timestamptz, timestamptz, boolean, interval, jsonb) IS
'Ended sessions of a client with at least min_messages messages whose contact passes tag_filter ({"mode":"none"} = contact without tags), optionally ended in [ended_after, ended_before), with an agent reply (an agent, bot or supervisor; else from_me) and whose parecer.source_session_metadata contains metadata_filter, and idle for min_idle (NULL: the min_idle setting, 24 hours by default; seed 003''s rule) since the later of ended_at and the last message; an ended_at in the future is never eligible. Newest first. Errors: PR001, PR004, PR010, PR031 invalid metadata_filter.';

-- Refuse session ids that parecer.source_sessions holds more than once (an adapter
-- joining to a table with several rows per session): PR015 names them, where the
-- queue would otherwise fail with 21000 or count the session's messages twice.
CREATE OR REPLACE FUNCTION parecer._check_unique_sessions(p_session_ids text[]) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_dups text[];
BEGIN
    SELECT array_agg(d.session_id) INTO v_dups
    FROM (SELECT s.session_id FROM parecer.source_sessions s
          WHERE s.session_id = ANY (p_session_ids)
          GROUP BY s.session_id HAVING count(*) > 1
          ORDER BY s.session_id LIMIT 5) d;
    IF v_dups IS NOT NULL THEN
        RAISE EXCEPTION 'duplicate session id(s) in parecer.source_sessions: %', left(array_to_string(v_dups, ', '), 300)
            USING ERRCODE = 'PR015',
                  HINT = 'The adapter''s source_sessions must give one row per session_id: check its joins (parecer.check_adapter() lists every duplicate).';
    END IF;
END
$$;
