-- Select eligible sessions for a script and queue the newest ones (or, dry run, only count).
CREATE OR REPLACE FUNCTION parecer.start_run(
    client_slug          text,
    script_key           text,
    script_version       integer DEFAULT NULL,
    min_messages         integer DEFAULT 20,
    tag_filter           jsonb DEFAULT '{"mode":"none"}',
    analysis_version_tag text DEFAULT 'v1',
    force_reprocess      boolean DEFAULT false,
    dry_run              boolean DEFAULT false,
    max_sessions         integer DEFAULT 100,
    ended_after          timestamptz DEFAULT NULL,
    ended_before         timestamptz DEFAULT NULL,
    require_agent_reply  boolean DEFAULT false,
    backlog              boolean DEFAULT false,
    min_idle             interval DEFAULT NULL,
    reanalyse_changed    boolean DEFAULT false,
    metadata_filter      jsonb DEFAULT NULL
) RETURNS parecer.run_result
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_script   parecer.scripts;
    v_cap      integer := parecer._setting_int('max_sessions_cap');
    v_force    boolean := COALESCE(force_reprocess, false);
    v_res      parecer.run_result;
    v_selected text[];
    v_changed  text[];
    v_enq      record;
    v_idle     interval := parecer._min_idle(start_run.min_idle);
    v_setting  interval := parecer._setting_interval('min_idle');
    v_reanalyse boolean := COALESCE(reanalyse_changed, false);
BEGIN
    v_script := parecer._resolve_script(start_run.client_slug, start_run.script_key, start_run.script_version);
    IF max_sessions IS NULL OR max_sessions < 1 OR max_sessions > v_cap THEN
        RAISE EXCEPTION 'max_sessions % is outside 1..%', COALESCE(max_sessions::text, 'NULL'), v_cap
            USING ERRCODE = 'PR005',
                  HINT = pg_catalog.format('Pass max_sessions between 1 and %s (setting max_sessions_cap; raise it with parecer.set_setting(''max_sessions_cap'', ''N'')), or start several runs.', v_cap);
    END IF;
    IF analysis_version_tag IS NULL OR analysis_version_tag !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$' THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid analysis_version_tag "%s"', COALESCE(left(analysis_version_tag, 50), 'NULL')),
                                 'A tag is 1-32 characters: letters, digits, "_", "." or "-" (e.g. v1).');
    END IF;

    WITH e AS (
        SELECT * FROM parecer.eligible_sessions(start_run.client_slug, start_run.min_messages, start_run.tag_filter,
                                                start_run.ended_after, start_run.ended_before, start_run.require_agent_reply,
                                                v_idle, start_run.metadata_filter)
    ), x AS (
        SELECT e.session_id, e.ended_at, a.status, a.next_retry_at, a.retry_count,
               -- done, and the session's messages changed since (parecer.stale_reports' rule)
               (a.status = 'done' AND a.analysed_message_count IS NOT NULL
                AND (a.analysed_message_count IS DISTINCT FROM e.message_count
                     OR a.analysed_last_message_at IS DISTINCT FROM e.last_message_at)) AS changed
        FROM e
        LEFT JOIN parecer.analyses a
               ON a.session_id = e.session_id AND a.script_id = v_script.script_id
              AND a.analysis_version_tag = start_run.analysis_version_tag
    ), sel AS (
        SELECT * FROM x
        -- done and terminally failed sessions are not selected again without force (terminal
        -- failures come back through parecer.retry_failed): newer runs move on to older sessions
        WHERE v_force OR x.status IS NULL OR x.status NOT IN ('done', 'failed') OR (v_reanalyse AND x.changed)
        ORDER BY x.ended_at DESC, x.session_id
        LIMIT start_run.max_sessions
    )
    SELECT (SELECT count(*) FROM x),
           (SELECT count(*) FROM x WHERE x.status = 'done'),
           (SELECT count(*) FROM x WHERE x.status IN ('pending', 'processing')),
           (SELECT count(*) FROM sel),
           (SELECT count(*) FROM sel
             WHERE v_force OR sel.status IS NULL OR (v_reanalyse AND sel.changed)
                OR (sel.status = 'pending' AND (sel.next_retry_at IS NULL OR sel.next_retry_at <= now()))),
           (SELECT array_agg(sel.session_id) FROM sel WHERE v_force OR NOT (v_reanalyse AND sel.changed)),
           (SELECT array_agg(sel.session_id) FROM sel WHERE NOT v_force AND v_reanalyse AND sel.changed)
    INTO v_res.eligible, v_res.already_done, v_res.already_queued, v_res.would_enqueue,
         v_res.would_process_now, v_selected, v_changed;
    -- A session duplicated by the adapter would be selected twice: PR015 names it (dry run too).
    PERFORM parecer._check_unique_sessions(COALESCE(v_selected, '{}') || COALESCE(v_changed, '{}'));
    v_res.min_idle := v_idle;
    v_res.changed := COALESCE(cardinality(v_changed), 0);
    IF v_idle < v_setting THEN
        v_res.note := pg_catalog.format('min_idle %s is below the min_idle setting (%s): sessions quiet for less may still be going on',
                                        v_idle, v_setting);
    END IF;

    v_res.dry_run := COALESCE(dry_run, false);
    v_res.enqueued := 0;
    v_res.reset := 0;
    v_res.estimated_cost_usd := parecer.estimate_cost(v_script.script_id, v_res.would_enqueue);
    IF v_res.dry_run THEN
        RETURN v_res;   -- writes nothing
    END IF;

    INSERT INTO parecer.runs (client_id, client_slug, script_id, analysis_version_tag, params,
                              eligible, already_done, already_queued, selected)
    VALUES (v_script.client_id, v_script.client_slug, v_script.script_id, start_run.analysis_version_tag,
            jsonb_build_object('script_key', v_script.script_key, 'script_version', v_script.version,
                               'min_messages', start_run.min_messages, 'tag_filter', start_run.tag_filter,
                               'force_reprocess', v_force, 'max_sessions', start_run.max_sessions,
                               'ended_after', start_run.ended_after, 'ended_before', start_run.ended_before,
                               'require_agent_reply', COALESCE(start_run.require_agent_reply, false),
                               'backlog', COALESCE(start_run.backlog, false),
                               'min_idle', v_idle, 'reanalyse_changed', v_reanalyse,
                               'metadata_filter', start_run.metadata_filter),
            v_res.eligible, v_res.already_done, v_res.already_queued, v_res.would_enqueue)
    RETURNING runs.run_id INTO v_res.run_id;

    SELECT * INTO v_enq
    FROM parecer.enqueue(COALESCE(v_selected, '{}'), v_script.script_id, start_run.analysis_version_tag,
                         v_force, v_res.run_id);
    v_res.enqueued := v_enq.enqueued;
    v_res.reset := v_enq.reset;
    IF v_changed IS NOT NULL THEN
        -- changed sessions' done items go back to pending (their old report is kept as an attempt)
        SELECT * INTO v_enq
        FROM parecer.enqueue(v_changed, v_script.script_id, start_run.analysis_version_tag, true, v_res.run_id);
        v_res.reset := v_res.reset + v_enq.reset;
    END IF;
    IF start_run.backlog THEN
        PERFORM parecer.set_run_backlog(v_res.run_id);
    END IF;
    UPDATE parecer.runs r SET enqueued = v_res.enqueued, reset = v_res.reset WHERE r.run_id = v_res.run_id;
    RETURN v_res;
END
$$;
COMMENT ON FUNCTION parecer.start_run(text, text, integer, integer, jsonb, text, boolean, boolean, integer, timestamptz, timestamptz, boolean, boolean, interval, boolean, jsonb) IS
'Select a client''s eligible sessions for a script (highest active version unless script_version) and queue the newest max_sessions not yet done nor terminally failed (any with force_reprocess); backlog => true queues them as a backlog run (see set_run_backlog). Sessions must be idle for min_idle (NULL: the min_idle setting, 24 hours by default); a run asking for less says so in note. reanalyse_changed => true also re-queues done sessions whose messages changed since they were analysed (counted in changed; see parecer.stale_reports). metadata_filter: only sessions whose parecer.source_session_metadata contains it (see eligible_sessions). Returns the counts and estimated_cost_usd (parecer.estimate_cost of what it would enqueue). dry_run => true only counts and writes nothing. Errors: PR001, PR002, PR003, PR004, PR005 max_sessions outside 1..max_sessions_cap, PR010, PR015 session duplicated in source_sessions, PR031 invalid metadata_filter.';

-- The summary itself (see parecer.run_summary).
CREATE OR REPLACE FUNCTION parecer._run_summary(p_run_id bigint)
RETURNS TABLE (run_id bigint, processed integer, failed integer, retrying integer, remaining integer,
               done_sample text[], failed_sample text[], total integer)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    v_run bigint := p_run_id;
BEGIN
    IF NOT EXISTS (SELECT FROM parecer.runs r   -- a run of another client is unknown
                   WHERE r.run_id = v_run AND ((SELECT sc.all_clients FROM parecer._caller_scope sc) OR r.client_id = ANY ((SELECT sc.client_ids FROM parecer._caller_scope sc)::text[]))) THEN
        RAISE EXCEPTION 'unknown run %', COALESCE(v_run::text, 'NULL')
            USING ERRCODE = 'PR012', HINT = 'SELECT run_id, client_slug, created_at FROM parecer.runs_overview lists the runs.';
    END IF;
    RETURN QUERY
    WITH items AS (
        SELECT a.* FROM parecer.run_items ri JOIN parecer.analyses a ON a.analysis_id = ri.analysis_id
        WHERE ri.run_id = v_run
    )
    SELECT v_run,
           (count(*) FILTER (WHERE i.status = 'done'))::integer,
           (count(*) FILTER (WHERE i.status = 'failed'))::integer,
           (count(*) FILTER (WHERE i.status = 'pending' AND i.retry_count > 0))::integer,
           (count(*) FILTER (WHERE i.status IN ('pending', 'processing')))::integer,
           COALESCE((SELECT array_agg(d.session_id) FROM (SELECT i2.session_id FROM items i2 WHERE i2.status = 'done'
                      ORDER BY i2.processed_at DESC, i2.session_id LIMIT 20) d), '{}'),
           COALESCE((SELECT array_agg(f.session_id) FROM (SELECT i3.session_id FROM items i3
                      WHERE i3.status = 'failed'
                      ORDER BY i3.updated_at DESC, i3.session_id LIMIT 20) f), '{}'),
           count(*)::integer
    FROM items i;
END
$$;

-- How a run is going.
CREATE OR REPLACE FUNCTION parecer.run_summary(run_id bigint)
RETURNS TABLE (run_id bigint, processed integer, failed integer, retrying integer, remaining integer,
               done_sample text[], failed_sample text[], total integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT * FROM parecer._run_summary($1) $$;
COMMENT ON FUNCTION parecer.run_summary(bigint) IS
'Progress of a run: processed (done), failed (terminal), retrying (pending again after a failure), remaining (pending + processing + retrying), up to 20 sample session ids each, total. Errors: PR012 unknown run.';

-- Runs with their progress.
CREATE OR REPLACE VIEW parecer.runs_overview WITH (security_barrier = true) AS
SELECT r.run_id, r.client_slug, s.script_key, s.version AS script_version, r.analysis_version_tag,
       r.created_at, r.created_by, r.eligible, r.selected, r.enqueued, r.reset,
       count(a.analysis_id) FILTER (WHERE a.status = 'done') AS done,
       count(a.analysis_id) FILTER (WHERE a.status = 'failed') AS failed,
       count(a.analysis_id) FILTER (WHERE a.status IN ('pending', 'processing')) AS remaining,
       r.params
FROM parecer.runs r
JOIN parecer.scripts s ON s.script_id = r.script_id
LEFT JOIN parecer.run_items ri ON ri.run_id = r.run_id
LEFT JOIN parecer.analyses a ON a.analysis_id = ri.analysis_id
WHERE ((SELECT sc.all_clients FROM parecer._caller_scope sc) OR r.client_id = ANY ((SELECT sc.client_ids FROM parecer._caller_scope sc)::text[]))
GROUP BY r.run_id, s.script_key, s.version;
COMMENT ON VIEW parecer.runs_overview IS 'Every run with what it selected and how far it got.';

-- The queue by client x script x state.
CREATE OR REPLACE VIEW parecer.queue_status WITH (security_barrier = true) AS
SELECT a.client_slug, s.script_key, s.version AS script_version, a.analysis_version_tag,
       count(*) FILTER (WHERE a.status = 'pending' AND a.retry_count = 0) AS pending,
       count(*) FILTER (WHERE a.status = 'processing') AS processing,
       count(*) FILTER (WHERE a.status = 'done') AS done,
       count(*) FILTER (WHERE a.status = 'pending' AND a.retry_count > 0) AS retrying,
       count(*) FILTER (WHERE a.status = 'failed') AS failed,
       min(a.created_at) FILTER (WHERE a.status = 'pending') AS oldest_pending_at,
       count(*) FILTER (WHERE a.status = 'done' AND a.processed_at > now() - interval '1 hour') AS done_last_hour
FROM parecer.analyses a
JOIN parecer.scripts s ON s.script_id = a.script_id
WHERE ((SELECT sc.all_clients FROM parecer._caller_scope sc) OR a.client_id = ANY ((SELECT sc.client_ids FROM parecer._caller_scope sc)::text[]))
GROUP BY a.client_slug, s.script_key, s.version, a.analysis_version_tag;
COMMENT ON VIEW parecer.queue_status IS 'The queue by client x script version x tag: pending (never failed), retrying (pending again after a failure), processing, done, failed (terminal), oldest pending, done in the last hour.';

-- Raise PR012 (unknown run) unless the run exists.
CREATE OR REPLACE FUNCTION parecer._require_run(p_run_id bigint) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM parecer.runs r WHERE r.run_id = p_run_id) THEN
        RAISE EXCEPTION 'unknown run %', COALESCE(p_run_id::text, 'NULL')
            USING ERRCODE = 'PR012', HINT = 'SELECT run_id FROM parecer.runs_overview lists the runs.';
    END IF;
END
$$;

-- Re-queue terminal failures chosen by run, client and/or error text.
CREATE OR REPLACE FUNCTION parecer.retry_failed(run_id bigint DEFAULT NULL, client_slug text DEFAULT NULL,
                                     error_like text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_n integer;
BEGIN
    IF retry_failed.run_id IS NULL AND retry_failed.client_slug IS NULL AND retry_failed.error_like IS NULL THEN
        PERFORM parecer._invalid('retry_failed needs run_id, client_slug or error_like',
                                 'Choose what to retry, e.g. parecer.retry_failed(client_slug => ''acme'') or error_like => ''%timed out%''.');
    END IF;
    -- ILIKE raises 22025 on a pattern ending in an odd number of backslashes, but only once a row reaches it.
    IF retry_failed.error_like ~ '(^|[^\\])(\\\\)*\\$' THEN
        PERFORM parecer._invalid('invalid error_like: the pattern ends with an escape character (\)',
                                 'error_like is an ILIKE pattern, where \ escapes the next character: write \\ for a literal backslash.');
    END IF;
    IF retry_failed.run_id IS NOT NULL THEN
        PERFORM parecer._require_run(retry_failed.run_id);
    END IF;
    IF retry_failed.client_slug IS NOT NULL THEN
        PERFORM parecer._client(retry_failed.client_slug);
    END IF;
    UPDATE parecer.analyses a
       SET status = 'pending', retry_count = 0, releases = 0, next_retry_at = NULL, error = NULL, updated_at = now()
     WHERE a.status = 'failed'
       AND (retry_failed.run_id IS NULL OR EXISTS (
                SELECT FROM parecer.run_items ri WHERE ri.run_id = retry_failed.run_id AND ri.analysis_id = a.analysis_id))
       AND (retry_failed.client_slug IS NULL OR a.client_slug = retry_failed.client_slug)
       AND (retry_failed.error_like IS NULL OR a.error ILIKE retry_failed.error_like);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN
        PERFORM pg_notify('parecer_work', json_build_object('client', retry_failed.client_slug, 'n', v_n)::text);
    END IF;
    RETURN v_n;
END
$$;
COMMENT ON FUNCTION parecer.retry_failed(bigint, text, text) IS
'Re-queue terminal failures (status failed) of a run, a client and/or whose error matches error_like (ILIKE), with a fresh attempt budget; returns how many. Errors: PR001, PR010 nothing chosen, PR012.';

-- Mark a run's waiting items as backlog (lower priority, oldest first) or back to fresh.
CREATE OR REPLACE FUNCTION parecer.set_run_backlog(run_id bigint, backlog boolean DEFAULT true) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_n integer;
BEGIN
    PERFORM parecer._require_run(set_run_backlog.run_id);
    UPDATE parecer.analyses a SET backlog = COALESCE(set_run_backlog.backlog, true), updated_at = now()
      FROM parecer.run_items ri
     WHERE ri.run_id = set_run_backlog.run_id AND a.analysis_id = ri.analysis_id
       AND a.status = 'pending' AND a.backlog IS DISTINCT FROM COALESCE(set_run_backlog.backlog, true);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;
COMMENT ON FUNCTION parecer.set_run_backlog(bigint, boolean) IS
'Mark a run''s waiting items as backlog (claimed only when no fresh work is claimable, oldest session first: seed 003''s nightly processor) or, with false, back to fresh. Returns how many items changed. Errors: PR012.';
