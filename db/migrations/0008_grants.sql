-- 0008: who may do what. Every public function is SECURITY DEFINER with a
-- pinned search_path; roles get EXECUTE on exactly their functions and no
-- table privileges (docs/sql-api.md has the matrix; tests/test_roles.py checks it).
REVOKE ALL ON ALL TABLES IN SCHEMA parecer FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA parecer FROM PUBLIC;

-- parecer_reader: results and summaries.
GRANT SELECT ON parecer.reports, parecer.attempts, parecer.queue_status, parecer.runs_overview,
                parecer.settings TO parecer_reader;
GRANT EXECUTE ON FUNCTION parecer.run_summary(bigint) TO parecer_reader;

-- parecer_runner: claim, read the prompt, heartbeat, report.
GRANT EXECUTE ON FUNCTION
    parecer.claim(text, integer, integer, text),
    parecer.prompt_for(uuid),
    parecer.session_transcript(text),
    parecer.extend_lease(uuid, uuid, integer),
    parecer.mark_done(uuid, uuid, jsonb, text, text, jsonb),
    parecer.mark_failed(uuid, uuid, text, boolean, jsonb),
    parecer.next_due(text),
    parecer.release(uuid, uuid, integer, text)
TO parecer_runner;

-- parecer_admin: scripts, runs, settings (and everything a reader sees), and the
-- client list so the PR001 hint can be followed. No other host data.
GRANT parecer_reader TO parecer_admin;
GRANT SELECT ON parecer.source_clients TO parecer_admin;
GRANT EXECUTE ON FUNCTION
    parecer.set_setting(text, text),
    parecer.create_script_version(text, text, text, text[], text, text, boolean),
    parecer.list_scripts(text, text, boolean),
    parecer.resolve_script(text, text, integer),
    parecer.activate_script(text, text, integer, boolean),
    parecer.eligible_sessions(text, integer, jsonb, timestamptz, timestamptz, boolean),
    parecer.enqueue(text[], bigint, text, boolean, bigint),
    parecer.start_run(text, text, integer, integer, jsonb, text, boolean, boolean, integer, timestamptz, timestamptz, boolean),
    parecer.retry_failed(bigint, text, text),
    parecer.session_transcript(text),
    parecer.prompt_for(uuid)
TO parecer_admin;
