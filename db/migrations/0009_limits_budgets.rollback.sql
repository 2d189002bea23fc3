DROP VIEW IF EXISTS parecer.client_status;
CREATE OR REPLACE FUNCTION parecer.next_due(client_slug text DEFAULT NULL) RETURNS timestamptz
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT min(COALESCE(a.next_retry_at, a.lease_expires_at, now()))
    FROM parecer.analyses a
    WHERE (a.status IN ('pending', 'processing') OR (a.status = 'failed' AND a.next_retry_at IS NOT NULL))
      AND (next_due.client_slug IS NULL OR a.client_slug = next_due.client_slug)
$$;
DROP TRIGGER IF EXISTS settings_max_attempts ON parecer._settings;
DROP FUNCTION IF EXISTS parecer._max_attempts_changed();
-- restore 0005's single-queue claim
DROP INDEX IF EXISTS parecer.analyses_backlog_idx;
DROP INDEX IF EXISTS parecer.analyses_fresh_idx;
CREATE INDEX analyses_claim_idx ON parecer.analyses (session_ended_at DESC NULLS LAST, created_at DESC)
    WHERE status = 'pending' OR (status = 'failed' AND next_retry_at IS NOT NULL);
CREATE OR REPLACE FUNCTION parecer._claim(p_worker text, p_max_items integer, p_lease_seconds integer, p_client_slug text)
RETURNS SETOF parecer.claimed_item
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_worker text := p_worker;
    v_client text := p_client_slug;
    v_limit  integer := p_max_items;
    v_lease  integer := COALESCE(p_lease_seconds, parecer._setting_int('lease_seconds'));
    v_max    integer := parecer._setting_int('max_attempts');
BEGIN
    IF v_worker IS NULL OR btrim(v_worker) = '' OR length(v_worker) > 200 THEN
        PERFORM parecer._invalid('worker must be a non-empty name of up to 200 characters', 'Name the runner, e.g. worker => ''host-1:4242''.');
    END IF;
    IF v_limit IS NULL OR v_limit < 1 OR v_limit > 1000 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid max_items: %s', COALESCE(v_limit::text, 'NULL')), 'max_items must be between 1 and 1000.');
    END IF;
    IF v_lease < 5 OR v_lease > 86400 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid lease_seconds: %s', v_lease), 'lease_seconds must be between 5 and 86400.');
    END IF;
    PERFORM parecer._expire_leases();
    RETURN QUERY
    WITH c AS MATERIALIZED (
        SELECT a.analysis_id FROM parecer.analyses a
        WHERE ((a.status = 'pending' AND (a.next_retry_at IS NULL OR a.next_retry_at <= now()))
            OR (a.status = 'failed' AND a.next_retry_at <= now() AND a.retry_count < v_max))
          AND (v_client IS NULL OR a.client_slug = v_client)
        ORDER BY a.session_ended_at DESC NULLS LAST, a.created_at DESC
        LIMIT v_limit
        FOR UPDATE SKIP LOCKED
    ), u AS (
        UPDATE parecer.analyses a
           SET status = 'processing', claims = a.claims + 1, worker = v_worker, lease_token = gen_random_uuid(),
               lease_expires_at = now() + make_interval(secs => v_lease), next_retry_at = NULL,
               started_at = now(), updated_at = now()
          FROM c WHERE a.analysis_id = c.analysis_id
        RETURNING a.*
    ), att AS (
        INSERT INTO parecer._attempts (analysis_id, attempt, worker, lease_token, claimed_at)
        SELECT u.analysis_id, u.claims, u.worker, u.lease_token, now() FROM u
    )
    SELECT u.analysis_id, u.lease_token, u.claims, u.client_slug, u.session_id, u.script_id,
           s.script_key, s.version, s.model, u.lease_expires_at, u.retry_count
    FROM u JOIN parecer.scripts s ON s.script_id = u.script_id
    ORDER BY u.session_ended_at DESC NULLS LAST, u.created_at DESC;
END
$$;
DROP FUNCTION IF EXISTS parecer.set_run_backlog(bigint, boolean);
ALTER TABLE parecer.analyses DROP COLUMN IF EXISTS backlog;
DROP FUNCTION IF EXISTS parecer.estimate_cost(bigint, integer);
DROP FUNCTION IF EXISTS parecer.set_client_priority(text, integer);
DROP FUNCTION IF EXISTS parecer.set_budget(text, numeric, numeric);
DROP VIEW IF EXISTS parecer.run_costs;
DROP VIEW IF EXISTS parecer.spend_monthly;
DROP VIEW IF EXISTS parecer.spend_daily;
DROP VIEW IF EXISTS parecer.budgets;
DROP FUNCTION IF EXISTS parecer._blocked_reason(text);
DROP VIEW IF EXISTS parecer._budget_state;
DROP TRIGGER IF EXISTS analyses_register_clients ON parecer.analyses;
DROP FUNCTION IF EXISTS parecer._register_clients();
DROP TRIGGER IF EXISTS attempts_cost ON parecer._attempts;
DROP FUNCTION IF EXISTS parecer._attempt_cost();
DROP TABLE IF EXISTS parecer._budget_alerts;
DROP TABLE IF EXISTS parecer._client_policy;
ALTER TABLE parecer._attempts DROP COLUMN IF EXISTS cost_usd;
DROP TABLE IF EXISTS parecer._spend;
DROP FUNCTION IF EXISTS parecer._cost(text, jsonb);
DROP FUNCTION IF EXISTS parecer.set_model_price(text, numeric, numeric, numeric, text, date);
DROP VIEW IF EXISTS parecer.model_prices;
DROP TABLE IF EXISTS parecer._model_prices;
DROP FUNCTION IF EXISTS parecer.set_rate_limit(text, integer, integer);
DROP VIEW IF EXISTS parecer.rate_limits;
DROP FUNCTION IF EXISTS parecer.report_rate(text, double precision, integer, integer, double precision, integer, integer, text);
DROP FUNCTION IF EXISTS parecer.acquire_rate(text, integer);
DROP FUNCTION IF EXISTS parecer._limit_key(text);
DROP TYPE IF EXISTS parecer.rate_grant;
DROP TABLE IF EXISTS parecer._rate_limits;
DROP FUNCTION IF EXISTS parecer._budget_day(timestamptz);
DROP TRIGGER IF EXISTS settings_text_check ON parecer._settings;
DROP FUNCTION IF EXISTS parecer._check_text_setting();
DELETE FROM parecer._settings WHERE name IN ('default_rpm', 'default_tpm', 'rate_burst_seconds', 'budget_timezone');
