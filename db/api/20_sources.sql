-- Checks of the source contract as an adapter defines it (parecer db check-adapter).

-- What is wrong with the adapter's views over this host's data: duplicates, future
-- ends, orphan messages, missing indexes, and how much data there is.
CREATE OR REPLACE FUNCTION parecer.check_adapter()
RETURNS TABLE (check_name text, status text, count bigint, detail text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_n       bigint;
    v_sample  text;
    v_plan    jsonb;
    v_seq     text;
    v_old     text := current_setting('enable_seqscan');
    v_probe   record;
BEGIN
    -- sample counts
    RETURN QUERY SELECT 'clients', 'info', (SELECT count(*) FROM parecer.source_clients), 'rows in parecer.source_clients';
    RETURN QUERY SELECT 'sessions', 'info', (SELECT count(*) FROM parecer.source_sessions),
        pg_catalog.format('rows in parecer.source_sessions, %s ended',
                          (SELECT count(*) FROM parecer.source_sessions s WHERE s.ended_at IS NOT NULL));
    RETURN QUERY SELECT 'messages', 'info', (SELECT count(*) FROM parecer.source_messages), 'rows in parecer.source_messages';
    RETURN QUERY SELECT 'contact_tags', 'info', (SELECT count(*) FROM parecer.source_contact_tags), 'rows in parecer.source_contact_tags';

    -- one row per session id (PR015 otherwise)
    SELECT count(*), string_agg(d.session_id, ', ') FILTER (WHERE d.rn <= 5)
      INTO v_n, v_sample
      FROM (SELECT s.session_id, row_number() OVER (ORDER BY s.session_id) AS rn
            FROM parecer.source_sessions s GROUP BY s.session_id HAVING count(*) > 1) d;
    RETURN QUERY SELECT 'duplicate_session_ids', CASE WHEN v_n > 0 THEN 'error' ELSE 'ok' END, v_n,
        CASE WHEN v_n > 0 THEN 'session ids with more than one row (start_run and enqueue raise PR015): ' || v_sample
             ELSE 'every session id has one row' END;

    SELECT count(*), string_agg(f.session_id, ', ') FILTER (WHERE f.rn <= 5)
      INTO v_n, v_sample
      FROM (SELECT s.session_id, row_number() OVER (ORDER BY s.ended_at DESC) AS rn
            FROM parecer.source_sessions s WHERE s.ended_at > now()) f;
    RETURN QUERY SELECT 'future_ended_at', CASE WHEN v_n > 0 THEN 'warn' ELSE 'ok' END, v_n,
        CASE WHEN v_n > 0 THEN 'sessions ending in the future (never eligible; time zone of a timestamp column?): ' || v_sample
             ELSE 'no session ends in the future' END;

    SELECT count(*), string_agg(o.message_id, ', ') FILTER (WHERE o.rn <= 5)
      INTO v_n, v_sample
      FROM (SELECT m.message_id, row_number() OVER (ORDER BY m.message_id) AS rn
            FROM parecer.source_messages m
            WHERE NOT EXISTS (SELECT FROM parecer.source_sessions s WHERE s.session_id = m.session_id)) o;
    RETURN QUERY SELECT 'messages_without_session', CASE WHEN v_n > 0 THEN 'warn' ELSE 'ok' END, v_n,
        CASE WHEN v_n > 0 THEN 'messages whose session_id is not in source_sessions (never analysed): ' || v_sample
             ELSE 'every message belongs to a session' END;

    -- contract v2 (optional views): senders from the list, one row per message; metadata objects, one per session
    SELECT count(*), string_agg(x.message_id, ', ') FILTER (WHERE x.rn <= 5)
      INTO v_n, v_sample
      FROM (SELECT d.message_id, row_number() OVER (ORDER BY d.message_id) AS rn
            FROM parecer.source_message_senders d
            GROUP BY d.message_id, d.session_id
            HAVING count(*) > 1 OR bool_or(d.sender IS NULL OR d.sender NOT IN ('customer', 'agent', 'bot', 'supervisor', 'system', 'note'))) x;
    RETURN QUERY SELECT 'message_senders', CASE WHEN v_n > 0 THEN 'warn' ELSE 'ok' END, v_n,
        CASE WHEN v_n > 0 THEN 'messages with more than one sender row or a sender outside customer, agent, bot, supervisor, system, note (labelled by from_me): ' || v_sample
             ELSE 'every sender row is one of the six senders, one per message (or the view is empty)' END;
    SELECT count(*), string_agg(x.session_id, ', ') FILTER (WHERE x.rn <= 5)
      INTO v_n, v_sample
      FROM (SELECT md.session_id, row_number() OVER (ORDER BY md.session_id) AS rn
            FROM parecer.source_session_metadata md
            GROUP BY md.session_id
            HAVING count(*) > 1 OR bool_or(jsonb_typeof(md.metadata) IS DISTINCT FROM 'object')) x;
    RETURN QUERY SELECT 'session_metadata', CASE WHEN v_n > 0 THEN 'warn' ELSE 'ok' END, v_n,
        CASE WHEN v_n > 0 THEN 'sessions with more than one metadata row or metadata that is not a JSON object: ' || v_sample
             ELSE 'one JSON object per session (or the view is empty)' END;

    -- Indexes: ask the planner, with sequential scans switched off, how it would
    -- look up the keys parecer filters by; a table it still scans whole has no
    -- index for that key (whatever the view's joins and casts).
    PERFORM set_config('enable_seqscan', 'off', true);
    FOR v_probe IN SELECT * FROM (VALUES
            ('index:source_sessions.session_id', 'SELECT * FROM parecer.source_sessions WHERE session_id = %L'),
            ('index:source_messages.session_id', 'SELECT * FROM parecer.source_messages WHERE session_id = %L'),
            ('index:source_contact_tags.contact_id', 'SELECT * FROM parecer.source_contact_tags WHERE contact_id = %L'))
            p(name, query) LOOP
        EXECUTE 'EXPLAIN (FORMAT JSON) ' || pg_catalog.format(v_probe.query, 'parecer-check-adapter') INTO v_plan;
        SELECT string_agg(DISTINCT r #>> '{}', ', ') INTO v_seq
          FROM jsonb_path_query(v_plan, 'strict $.**? (@."Node Type" == "Seq Scan")."Relation Name"') r;
        RETURN QUERY SELECT v_probe.name, CASE WHEN v_seq IS NULL THEN 'ok' ELSE 'warn' END,
            NULL::bigint,
            CASE WHEN v_seq IS NULL THEN 'looked up through an index'
                 ELSE 'read by a sequential scan of ' || v_seq || ': add an index on the host column behind this key (docs/adapters.md)' END;
    END LOOP;
    PERFORM set_config('enable_seqscan', v_old, true);
END
$$;
COMMENT ON FUNCTION parecer.check_adapter() IS
'Check the installed adapter against this host''s data: row counts of the four source views (info), duplicate session ids (error: start_run raises PR015), sessions ending in the future and messages without a session (warn), contract v2 rows (source_message_senders: a sender outside the six or two rows for a message; source_session_metadata: not an object or two rows for a session: warn), and whether the planner can look up source_sessions.session_id, source_messages.session_id and source_contact_tags.contact_id through an index (warn: a table it scans whole). Reads every source row: run it when installing or changing an adapter, not in a loop.';
