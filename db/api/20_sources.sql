-- Checks of the source contract as an adapter defines it (parecer db check-adapter).

-- What is wrong with the adapter's views over this host's data: duplicates, future
-- ends, orphan messages, missing indexes, and how much data there is.
CREATE OR REPLACE FUNCTION parecer.check_adapter()
RETURNS TABLE (check_name text, status text, count bigint, detail text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
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

    -- The data checks: each finds the offending ids (ordered for the sample); a check
    -- with none is ok, else its level with the count and the first five ids.
    RETURN QUERY
    WITH checks (pos, name, level, problem, fine) AS (VALUES
        (1, 'duplicate_session_ids', 'error',
         'session ids with more than one row (start_run and enqueue raise PR015): ',
         'every session id has one row'),
        (2, 'future_ended_at', 'warn',
         'sessions ending in the future (never eligible; time zone of a timestamp column?): ',
         'no session ends in the future'),
        (3, 'messages_without_session', 'warn',
         'messages whose session_id is not in source_sessions (never analysed): ',
         'every message belongs to a session'),
        -- contract v2 (optional views): senders from the list, one row per message; metadata objects, one per session
        (4, 'message_senders', 'warn',
         'messages with more than one sender row or a sender outside customer, agent, bot, supervisor, system, note (labelled by from_me): ',
         'every sender row is one of the six senders, one per message (or the view is empty)'),
        (5, 'session_metadata', 'warn',
         'sessions with more than one metadata row or metadata that is not a JSON object: ',
         'one JSON object per session (or the view is empty)')
    ), found (pos, id, rn) AS (
        SELECT 1, s.session_id, row_number() OVER (ORDER BY s.session_id)
        FROM parecer.source_sessions s GROUP BY s.session_id HAVING count(*) > 1
        UNION ALL
        SELECT 2, s.session_id, row_number() OVER (ORDER BY s.ended_at DESC)
        FROM parecer.source_sessions s WHERE s.ended_at > now()
        UNION ALL
        SELECT 3, m.message_id, row_number() OVER (ORDER BY m.message_id)
        FROM parecer.source_messages m
        WHERE NOT EXISTS (SELECT FROM parecer.source_sessions s WHERE s.session_id = m.session_id)
        UNION ALL
        SELECT 4, d.message_id, row_number() OVER (ORDER BY d.message_id)
        FROM parecer.source_message_senders d
        GROUP BY d.message_id, d.session_id
        HAVING count(*) > 1 OR bool_or(d.sender IS NULL OR d.sender NOT IN ('customer', 'agent', 'bot', 'supervisor', 'system', 'note'))
        UNION ALL
        SELECT 5, md.session_id, row_number() OVER (ORDER BY md.session_id)
        FROM parecer.source_session_metadata md
        GROUP BY md.session_id
        HAVING count(*) > 1 OR bool_or(jsonb_typeof(md.metadata) IS DISTINCT FROM 'object')
    )
    SELECT c.name, CASE WHEN count(f.pos) > 0 THEN c.level ELSE 'ok' END, count(f.pos),
           CASE WHEN count(f.pos) > 0 THEN c.problem || string_agg(f.id, ', ' ORDER BY f.rn) FILTER (WHERE f.rn <= 5)
                ELSE c.fine END
    FROM checks c LEFT JOIN found f ON f.pos = c.pos
    GROUP BY c.pos, c.name, c.level, c.problem, c.fine
    ORDER BY c.pos;

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
