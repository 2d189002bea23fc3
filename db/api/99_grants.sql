-- Who may do what: the whole role matrix, in one place.
--
-- Every public function is SECURITY DEFINER with a pinned search_path, so a
-- role needs EXECUTE on it and nothing else: no role has any privilege on a
-- table, and private `_` helpers are executable by their owner only.
-- docs/sql-api.md shows this matrix; tests/test_roles.py checks it.
--
--   parecer_reader   read results and summaries
--   parecer_runner   claim, read the prompt, heartbeat, report, release, rate limits
--   parecer_admin    scripts, runs, settings, budgets, prices, client grants (and all a reader may)
--
-- Tenant isolation (setting isolation = on) narrows this per caller at run time
-- (db/api/15_access.sql): runners and readers serve and see only the clients
-- granted to them with parecer.grant_client; admins see every client.

-- Start from nothing (functions are executable by PUBLIC when created; a
-- per-schema default privilege cannot take that back).
REVOKE ALL ON SCHEMA parecer FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA parecer FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA parecer FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA parecer REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
GRANT USAGE ON SCHEMA parecer TO parecer_admin, parecer_runner, parecer_reader;

-- parecer_reader: results and summaries.
GRANT SELECT ON
    parecer.reports, parecer.attempts, parecer.queue_status, parecer.runs_overview, parecer.settings,
    parecer.rate_limits, parecer.model_prices, parecer.budgets, parecer.spend_daily, parecer.spend_monthly,
    parecer.run_costs, parecer.client_status, parecer.metrics, parecer.stale_reports, parecer.global_budget,
    parecer.batches
TO parecer_reader;
GRANT EXECUTE ON FUNCTION
    parecer.run_summary(bigint),
    parecer.exchange_rate(text),
    parecer.spend_projection(text),
    parecer.insights(text, text, timestamptz, timestamptz, integer, text),
    parecer.insight_sessions(text, text, text, text, text, text, timestamptz, timestamptz, integer, text, integer, timestamptz, uuid)
TO parecer_reader;

-- parecer_runner: claim, read the prompt, heartbeat, report, release; the shared rate limiter.
GRANT EXECUTE ON FUNCTION
    parecer.claim(text, integer, integer, text, boolean),
    parecer.claim_with_prompts(text, integer, integer, text, boolean),
    parecer.prompt_for(uuid),
    parecer.prompts_for(uuid[]),
    parecer.leased_transcript(uuid, uuid),
    parecer.extend_lease(uuid, uuid, integer),
    parecer.mark_done(uuid, uuid, jsonb, text, text, jsonb),
    parecer.mark_done_many(jsonb),
    parecer.mark_failed(uuid, uuid, text, boolean, jsonb),
    parecer.release(uuid, uuid, integer, text),
    parecer.next_due(text),
    parecer.acquire_rate(text, integer),
    parecer.report_rate(text, double precision, integer, integer, double precision, integer, integer, text),
    -- Batch API backlog mode (75_batches.sql)
    parecer.open_batch(bigint, text, integer),
    parecer.batch_items(bigint),
    parecer.batch_uploaded(bigint, text),
    parecer.batch_submitted(bigint, text, text),
    parecer.batch_progress(bigint, text, integer, integer, integer, text, text, text),
    parecer.finish_batch(bigint, text),
    parecer.list_batches(bigint, boolean)
TO parecer_runner;

-- parecer_admin: everything a reader may, scripts, runs, settings, budgets and
-- prices, and the client list (so the PR001 hint can be followed). No other host data.
GRANT parecer_reader TO parecer_admin;
GRANT SELECT ON parecer.source_clients, parecer.client_grants TO parecer_admin;
GRANT EXECUTE ON FUNCTION
    parecer.set_setting(text, text),
    parecer.create_script_version(text, text, text, text[], text, text, boolean, text[], jsonb),
    parecer.list_scripts(text, text, boolean),
    parecer.resolve_script(text, text, integer),
    parecer.activate_script(text, text, integer, boolean),
    parecer.eligible_sessions(text, integer, jsonb, timestamptz, timestamptz, boolean, interval, jsonb),
    parecer.enqueue(text[], bigint, text, boolean, bigint),
    parecer.start_run(text, text, integer, integer, jsonb, text, boolean, boolean, integer, timestamptz, timestamptz, boolean, boolean, interval, boolean, jsonb),
    parecer.retry_failed(bigint, text, text),
    parecer.set_run_backlog(bigint, boolean),
    parecer.estimate_cost(bigint, integer),
    parecer.session_transcript(text),
    parecer.prompt_for(uuid),
    parecer.prompts_for(uuid[]),
    parecer.set_rate_limit(text, integer, integer, integer),
    parecer.bind_rate_limit(text, text[]),
    parecer.set_model_price(text, numeric, numeric, numeric, text, date, numeric),
    parecer.set_budget(text, numeric, numeric),
    parecer.set_global_budget(numeric, numeric),
    parecer.set_client_priority(text, integer),
    parecer.doctor(text, integer),
    parecer.purge(interval, boolean, integer),
    parecer.check_adapter(),
    parecer.grant_client(name, text),
    parecer.revoke_client(name, text)
TO parecer_admin;
