-- 0009: throughput and spend under control, decided in PostgreSQL so that any
-- number of runners agree: a shared rate limiter per provider key + model,
-- usage and cost per attempt, budgets per client (fail-closed at claim), fair
-- claiming across clients, and backlog runs.

INSERT INTO parecer._settings (name, default_value, kind, min_value, max_value, description) VALUES
    ('default_rpm', '400', 'integer', 1, 1000000,
     'Requests per minute for a provider key + model without its own limit (seed 003: 80% of 500).'),
    ('default_tpm', '160000', 'integer', 100, 1000000000,
     'Tokens per minute for a provider key + model without its own limit (80% of 200k).'),
    ('rate_burst_seconds', '6', 'integer', 1, 60,
     'Bucket size in seconds of the rate: a burst never exceeds this many seconds of the limit.'),
    ('budget_timezone', 'UTC', 'text', NULL, NULL,
     'Time zone whose calendar days and months budgets and spend are counted in (e.g. America/Sao_Paulo).');

-- set_setting validates text settings that name a time zone.
CREATE FUNCTION parecer._check_text_setting() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.name = 'budget_timezone' AND NEW.value IS NOT NULL
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_timezone_names z WHERE z.name = NEW.value) THEN
        RAISE EXCEPTION 'invalid value for budget_timezone: %', left(NEW.value, 100)
            USING ERRCODE = 'PR009', HINT = 'Use a time zone name from pg_timezone_names, e.g. UTC or America/Sao_Paulo.';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER settings_text_check BEFORE UPDATE ON parecer._settings
    FOR EACH ROW EXECUTE FUNCTION parecer._check_text_setting();

-- Lowering max_attempts: items waiting for a retry they no longer have become terminal
-- (otherwise claim would never take them and their runs would never settle).
CREATE FUNCTION parecer._max_attempts_changed() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE parecer.analyses a
       SET next_retry_at = NULL, updated_at = now(),
           error = COALESCE(a.error, 'failed') || ' (terminal: max_attempts lowered to ' || parecer._setting_int('max_attempts') || ')'
     WHERE a.status = 'failed' AND a.next_retry_at IS NOT NULL
       AND a.retry_count >= parecer._setting_int('max_attempts');
    RETURN NULL;
END
$$;
CREATE TRIGGER settings_max_attempts AFTER UPDATE ON parecer._settings
    FOR EACH ROW WHEN (NEW.name = 'max_attempts') EXECUTE FUNCTION parecer._max_attempts_changed();

-- The calendar day in the budget time zone.
CREATE FUNCTION parecer._budget_day(p_ts timestamptz DEFAULT now()) RETURNS date
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT (p_ts AT TIME ZONE parecer._setting('budget_timezone'))::date $$;

------------------------------------------------------------------------------
-- Rate limits: one token bucket pair (requests, tokens) per limit key.
------------------------------------------------------------------------------
CREATE TABLE parecer._rate_limits (
    limit_key            text PRIMARY KEY,          -- '<key label>:<model>', never the key itself
    rpm                  integer,                   -- NULL: setting default_rpm
    tpm                  integer,                   -- NULL: setting default_tpm
    -- bucket contents; a new key starts full (capped to the burst at the first refill)
    req_tokens           double precision NOT NULL DEFAULT 1e9,
    tok_tokens           double precision NOT NULL DEFAULT 1e12,
    refilled_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    paused_until         timestamptz,
    pause_reason         text,
    granted              bigint NOT NULL DEFAULT 0,
    throttled            bigint NOT NULL DEFAULT 0,  -- 429s reported
    observed_remaining_requests integer,
    observed_remaining_tokens   integer,
    observed_at          timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TYPE parecer.rate_grant AS (granted boolean, wait_seconds double precision);

-- Validate a limit key (a label and a model, never an API key).
CREATE FUNCTION parecer._limit_key(p_key text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_key IS NULL OR p_key !~ '^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$' THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid limit_key "%s"', COALESCE(left(p_key, 50), 'NULL')),
                                 'A limit key is "<key label>:<model>", e.g. ''default:gpt-5-mini'' (letters, digits, . _ : / @ -).');
    END IF;
    IF p_key ~ '^sk-' THEN
        PERFORM parecer._invalid('limit_key looks like an API key', 'Use a label for the key, never the key itself.');
    END IF;
    RETURN p_key;
END
$$;

-- Ask for one request of about `tokens` tokens under a shared limit.
CREATE FUNCTION parecer.acquire_rate(limit_key text, tokens integer DEFAULT 1000)
RETURNS parecer.rate_grant
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_key   text := parecer._limit_key(acquire_rate.limit_key);
    v_row   parecer._rate_limits;
    v_now   timestamptz := clock_timestamp();
    v_rpm   double precision;
    v_tpm   double precision;
    v_burst double precision := parecer._setting_int('rate_burst_seconds');
    v_need  double precision;
    v_req   double precision;
    v_tok   double precision;
    v_wait  double precision;
BEGIN
    IF tokens IS NULL OR tokens < 0 OR tokens > 10000000 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid tokens: %s', COALESCE(tokens::text, 'NULL')),
                                 'tokens is the estimated size of the call (prompt + output), 0..10000000.');
    END IF;
    INSERT INTO parecer._rate_limits AS r (limit_key, refilled_at)
    VALUES (v_key, v_now)
    ON CONFLICT ON CONSTRAINT _rate_limits_pkey DO NOTHING;
    SELECT * INTO v_row FROM parecer._rate_limits r WHERE r.limit_key = v_key FOR UPDATE;

    v_rpm := COALESCE(v_row.rpm, parecer._setting_int('default_rpm'));
    v_tpm := COALESCE(v_row.tpm, parecer._setting_int('default_tpm'));
    v_need := LEAST(tokens, v_tpm);
    -- refill since the last call; buckets hold at most rate_burst_seconds of the rate
    v_req := LEAST(GREATEST(1.0, v_rpm * v_burst / 60.0),
                   v_row.req_tokens + extract(epoch FROM v_now - v_row.refilled_at) * v_rpm / 60.0);
    v_tok := LEAST(GREATEST(v_need, v_tpm * v_burst / 60.0),
                   v_row.tok_tokens + extract(epoch FROM v_now - v_row.refilled_at) * v_tpm / 60.0);

    IF v_row.paused_until > v_now THEN
        v_wait := extract(epoch FROM v_row.paused_until - v_now);
        UPDATE parecer._rate_limits r SET req_tokens = 0, tok_tokens = v_tok, refilled_at = v_now
         WHERE r.limit_key = v_key;
        RETURN ROW(false, v_wait)::parecer.rate_grant;
    END IF;

    IF v_req >= 1.0 AND v_tok >= v_need THEN
        UPDATE parecer._rate_limits r
           SET req_tokens = v_req - 1.0, tok_tokens = v_tok - v_need, refilled_at = v_now,
               granted = r.granted + 1, updated_at = v_now
         WHERE r.limit_key = v_key;
        RETURN ROW(true, 0.0)::parecer.rate_grant;
    END IF;

    v_wait := GREATEST((1.0 - v_req) * 60.0 / v_rpm, (v_need - v_tok) * 60.0 / v_tpm, 0.01);
    UPDATE parecer._rate_limits r SET req_tokens = v_req, tok_tokens = v_tok, refilled_at = v_now
     WHERE r.limit_key = v_key;
    RETURN ROW(false, v_wait)::parecer.rate_grant;
END
$$;
COMMENT ON FUNCTION parecer.acquire_rate(text, integer) IS
'Shared rate limiter: take one request and `tokens` tokens from the buckets of limit_key (e.g. ''default:gpt-5-mini''), or learn how long to wait. Every runner on every machine consults the same row, so together they never exceed rpm/tpm. Errors: PR010.';

-- Feed back what the provider said: 429 Retry-After pauses every runner of the key; remaining headers; actual tokens.
CREATE FUNCTION parecer.report_rate(
    limit_key           text,
    retry_after_seconds double precision DEFAULT NULL,
    remaining_requests  integer DEFAULT NULL,
    remaining_tokens    integer DEFAULT NULL,
    reset_seconds       double precision DEFAULT NULL,
    estimated_tokens    integer DEFAULT NULL,
    actual_tokens       integer DEFAULT NULL,
    reason              text DEFAULT NULL
) RETURNS timestamptz
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_key   text := parecer._limit_key(report_rate.limit_key);
    v_now   timestamptz := clock_timestamp();
    v_pause timestamptz;
BEGIN
    IF retry_after_seconds < 0 OR retry_after_seconds > 86400 OR reset_seconds < 0 OR reset_seconds > 86400 THEN
        PERFORM parecer._invalid('retry_after_seconds and reset_seconds must be between 0 and 86400', 'Pass the provider''s Retry-After in seconds.');
    END IF;
    INSERT INTO parecer._rate_limits AS r (limit_key) VALUES (v_key) ON CONFLICT ON CONSTRAINT _rate_limits_pkey DO NOTHING;
    IF retry_after_seconds IS NOT NULL THEN
        v_pause := v_now + make_interval(secs => retry_after_seconds);
    ELSIF remaining_requests = 0 AND reset_seconds IS NOT NULL THEN
        v_pause := v_now + make_interval(secs => reset_seconds);
    END IF;
    UPDATE parecer._rate_limits r
       SET paused_until = CASE WHEN v_pause > COALESCE(r.paused_until, '-infinity') THEN v_pause ELSE r.paused_until END,
           pause_reason = CASE WHEN v_pause > COALESCE(r.paused_until, '-infinity')
                               THEN left(COALESCE(report_rate.reason, 'rate limited by the provider'), 200) ELSE r.pause_reason END,
           -- after a pause, start from an empty request bucket: the rate ramps back up
           req_tokens = CASE WHEN v_pause IS NOT NULL THEN 0 ELSE r.req_tokens END,
           throttled = r.throttled + (retry_after_seconds IS NOT NULL)::int,
           tok_tokens = r.tok_tokens + CASE WHEN estimated_tokens IS NOT NULL AND actual_tokens IS NOT NULL
                                            THEN GREATEST(estimated_tokens - actual_tokens, -1000000) ELSE 0 END,
           observed_remaining_requests = COALESCE(remaining_requests, r.observed_remaining_requests),
           observed_remaining_tokens = COALESCE(remaining_tokens, r.observed_remaining_tokens),
           observed_at = CASE WHEN remaining_requests IS NOT NULL OR remaining_tokens IS NOT NULL THEN v_now ELSE r.observed_at END,
           updated_at = v_now
     WHERE r.limit_key = v_key
    RETURNING CASE WHEN r.paused_until > v_now THEN r.paused_until END INTO v_pause;
    RETURN v_pause;
END
$$;
COMMENT ON FUNCTION parecer.report_rate(text, double precision, integer, integer, double precision, integer, integer, text) IS
'Feed back the provider''s answer for limit_key: a 429''s Retry-After pauses every runner of the key (then the rate ramps back), x-ratelimit-remaining-* = 0 pauses until reset, actual vs estimated tokens corrects the token bucket. Returns the pause end (NULL: not paused). Errors: PR010.';

-- The shared limits, as runners see them.
CREATE VIEW parecer.rate_limits AS
SELECT r.limit_key,
       COALESCE(r.rpm, (SELECT COALESCE(st.value, st.default_value)::integer FROM parecer._settings st
                        WHERE st.name = 'default_rpm')) AS rpm,
       COALESCE(r.tpm, (SELECT COALESCE(st.value, st.default_value)::integer FROM parecer._settings st
                        WHERE st.name = 'default_tpm')) AS tpm,
       r.rpm IS NULL AND r.tpm IS NULL AS is_default,
       CASE WHEN r.paused_until > clock_timestamp() THEN r.paused_until END AS paused_until,
       CASE WHEN r.paused_until > clock_timestamp() THEN r.pause_reason END AS pause_reason,
       r.granted, r.throttled, r.observed_remaining_requests, r.observed_remaining_tokens, r.observed_at,
       r.updated_at
FROM parecer._rate_limits r
ORDER BY r.limit_key;
COMMENT ON VIEW parecer.rate_limits IS 'Shared rate limits per provider key label + model: configured rpm/tpm, current pause, requests granted, 429s reported.';

-- Set (or with NULLs reset to the defaults) the limits of a key + model.
CREATE FUNCTION parecer.set_rate_limit(limit_key text, rpm integer DEFAULT NULL, tpm integer DEFAULT NULL)
RETURNS SETOF parecer.rate_limits
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_key text := parecer._limit_key(set_rate_limit.limit_key);
BEGIN
    IF rpm IS NOT NULL AND (rpm < 1 OR rpm > 1000000) OR tpm IS NOT NULL AND (tpm < 100 OR tpm > 1000000000) THEN
        PERFORM parecer._invalid('rpm must be 1..1000000 and tpm 100..1000000000', 'Seed 003 ran at 80% of the official limits: e.g. rpm => 400, tpm => 160000.');
    END IF;
    INSERT INTO parecer._rate_limits AS r (limit_key, rpm, tpm) VALUES (v_key, rpm, tpm)
    ON CONFLICT ON CONSTRAINT _rate_limits_pkey DO UPDATE SET rpm = EXCLUDED.rpm, tpm = EXCLUDED.tpm, updated_at = now();
    RETURN QUERY SELECT * FROM parecer.rate_limits l WHERE l.limit_key = v_key;
END
$$;
COMMENT ON FUNCTION parecer.set_rate_limit(text, integer, integer) IS
'Configure requests and tokens per minute for a provider key label + model (NULL: the default_rpm / default_tpm settings). Errors: PR010.';

------------------------------------------------------------------------------
-- Prices, usage and cost.
------------------------------------------------------------------------------
CREATE TABLE parecer._model_prices (
    model                     text PRIMARY KEY,   -- matched as a prefix: gpt-5-mini matches gpt-5-mini-2025-08-07
    input_usd_per_mtok        numeric NOT NULL CHECK (input_usd_per_mtok >= 0),
    cached_input_usd_per_mtok numeric NOT NULL CHECK (cached_input_usd_per_mtok >= 0),
    output_usd_per_mtok       numeric NOT NULL CHECK (output_usd_per_mtok >= 0),
    source                    text NOT NULL,
    taken_on                  date NOT NULL
);
-- Public list prices (USD per million tokens, standard tier) as data: edit with parecer.set_model_price.
INSERT INTO parecer._model_prices VALUES
    ('gpt-5',        1.25,  0.125, 10.00, 'OpenAI API pricing page, standard tier', '2025-08-07'),
    ('gpt-5-mini',   0.25,  0.025,  2.00, 'OpenAI API pricing page, standard tier', '2025-08-07'),
    ('gpt-5-nano',   0.05,  0.005,  0.40, 'OpenAI API pricing page, standard tier', '2025-08-07'),
    ('gpt-4.1',      2.00,  0.50,   8.00, 'OpenAI API pricing page, standard tier', '2025-04-14'),
    ('gpt-4.1-mini', 0.40,  0.10,   1.60, 'OpenAI API pricing page, standard tier', '2025-04-14'),
    ('gpt-4.1-nano', 0.10,  0.025,  0.40, 'OpenAI API pricing page, standard tier', '2025-04-14'),
    ('gpt-4o',       2.50,  1.25,  10.00, 'OpenAI API pricing page, standard tier', '2024-11-20'),
    ('gpt-4o-mini',  0.15,  0.075,  0.60, 'OpenAI API pricing page, standard tier', '2024-07-18'),
    ('parecer-standin', 0.25, 0.025, 2.00, 'not a real model: priced like gpt-5-mini so demos and benchmarks exercise budgets', '2026-11-22');

CREATE VIEW parecer.model_prices AS
SELECT p.model, p.input_usd_per_mtok, p.cached_input_usd_per_mtok, p.output_usd_per_mtok, p.source, p.taken_on
FROM parecer._model_prices p ORDER BY p.model;
COMMENT ON VIEW parecer.model_prices IS 'Model prices in USD per million tokens (input, cached input, output), with where and when they were taken.';

-- Add or change a model's price.
CREATE FUNCTION parecer.set_model_price(model text, input_usd_per_mtok numeric, cached_input_usd_per_mtok numeric,
                                        output_usd_per_mtok numeric, source text DEFAULT 'set by operator',
                                        taken_on date DEFAULT CURRENT_DATE)
RETURNS SETOF parecer.model_prices
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF model IS NULL OR model !~ '^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$' THEN
        PERFORM parecer._invalid('invalid model name', 'e.g. gpt-5-mini (prices match by prefix).');
    END IF;
    IF input_usd_per_mtok IS NULL OR cached_input_usd_per_mtok IS NULL OR output_usd_per_mtok IS NULL
       OR LEAST(input_usd_per_mtok, cached_input_usd_per_mtok, output_usd_per_mtok) < 0
       OR GREATEST(input_usd_per_mtok, cached_input_usd_per_mtok, output_usd_per_mtok) > 100000 THEN
        PERFORM parecer._invalid('prices must be numbers between 0 and 100000 USD per million tokens', 'e.g. 0.25, 0.025, 2.00');
    END IF;
    INSERT INTO parecer._model_prices AS p VALUES (model, input_usd_per_mtok, cached_input_usd_per_mtok,
        output_usd_per_mtok, COALESCE(left(source, 200), 'set by operator'), COALESCE(taken_on, CURRENT_DATE))
    ON CONFLICT ON CONSTRAINT _model_prices_pkey DO UPDATE
        SET input_usd_per_mtok = EXCLUDED.input_usd_per_mtok,
            cached_input_usd_per_mtok = EXCLUDED.cached_input_usd_per_mtok,
            output_usd_per_mtok = EXCLUDED.output_usd_per_mtok,
            source = EXCLUDED.source, taken_on = EXCLUDED.taken_on;
    RETURN QUERY SELECT * FROM parecer.model_prices mp WHERE mp.model = set_model_price.model;
END
$$;
COMMENT ON FUNCTION parecer.set_model_price(text, numeric, numeric, numeric, text, date) IS
'Add or change a model''s price (USD per million input, cached input and output tokens). Errors: PR010.';

-- Cost in USD of a usage object for a model (longest price prefix); NULL when unpriced.
CREATE FUNCTION parecer._cost(p_model text, p_usage jsonb) RETURNS numeric
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT round((GREATEST(COALESCE((p_usage ->> 'input_tokens')::numeric, 0)
                           - COALESCE((p_usage ->> 'cached_input_tokens')::numeric, 0), 0) * p.input_usd_per_mtok
                 + COALESCE((p_usage ->> 'cached_input_tokens')::numeric, 0) * p.cached_input_usd_per_mtok
                 + COALESCE((p_usage ->> 'output_tokens')::numeric, 0) * p.output_usd_per_mtok) / 1000000, 8)
    FROM parecer._model_prices p
    WHERE starts_with(p_model, p.model)
    ORDER BY length(p.model) DESC
    LIMIT 1
$$;

-- Spend per client and day (budget time zone), kept current by a trigger on attempts.
CREATE TABLE parecer._spend (
    client_id           text NOT NULL,
    client_slug         text NOT NULL,
    day                 date NOT NULL,
    attempts            integer NOT NULL DEFAULT 0,
    input_tokens        bigint NOT NULL DEFAULT 0,
    cached_input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    cost_usd            numeric NOT NULL DEFAULT 0,
    -- Counters are sharded by backend so that concurrent mark_done calls of one
    -- client do not serialise on one row; readers sum the shards.
    shard               smallint NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, day, shard)
);

ALTER TABLE parecer._attempts ADD COLUMN cost_usd numeric;

-- Budgets and priority per client.
CREATE TABLE parecer._client_policy (
    client_id          text PRIMARY KEY,
    client_slug        text NOT NULL,
    daily_budget_usd   numeric CHECK (daily_budget_usd >= 0),
    monthly_budget_usd numeric CHECK (monthly_budget_usd >= 0),
    priority           integer NOT NULL DEFAULT 1 CHECK (priority BETWEEN 1 AND 100),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
INSERT INTO parecer._client_policy (client_id, client_slug)
SELECT DISTINCT ON (a.client_id) a.client_id, a.client_slug FROM parecer.analyses a ON CONFLICT DO NOTHING;

CREATE TABLE parecer._budget_alerts (
    client_id    text NOT NULL,
    period       text NOT NULL CHECK (period IN ('day', 'month')),
    period_start date NOT NULL,
    threshold    integer NOT NULL,          -- percent: 80 or 100
    spent_usd    numeric NOT NULL,
    budget_usd   numeric NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, period, period_start, threshold)
);

-- Record an attempt's cost when its usage arrives; raise budget alerts (NOTIFY parecer_budget) at 80% and 100%.
CREATE FUNCTION parecer._attempt_cost() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_a      record;
    v_day    date := parecer._budget_day();
    v_pol    parecer._client_policy;
    v_spent  numeric;
    v_period text;
    v_budget numeric;
    v_start  date;
    v_pct    integer;
BEGIN
    IF NEW.usage IS NULL OR jsonb_typeof(NEW.usage) <> 'object' OR OLD.usage IS NOT NULL THEN
        RETURN NEW;
    END IF;
    NEW.cost_usd := parecer._cost(COALESCE(NEW.model, NEW.usage ->> 'model', NEW.usage ->> 'requested_model', ''), NEW.usage);
    SELECT a.client_id, a.client_slug INTO v_a FROM parecer.analyses a WHERE a.analysis_id = NEW.analysis_id;
    INSERT INTO parecer._spend AS s (client_id, client_slug, day, shard, attempts, input_tokens, cached_input_tokens,
                                     output_tokens, cost_usd)
    VALUES (v_a.client_id, v_a.client_slug, v_day, pg_backend_pid() % 16, 1,
            COALESCE((NEW.usage ->> 'input_tokens')::bigint, 0), COALESCE((NEW.usage ->> 'cached_input_tokens')::bigint, 0),
            COALESCE((NEW.usage ->> 'output_tokens')::bigint, 0), COALESCE(NEW.cost_usd, 0))
    ON CONFLICT (client_id, day, shard) DO UPDATE
        SET attempts = s.attempts + 1, input_tokens = s.input_tokens + EXCLUDED.input_tokens,
            cached_input_tokens = s.cached_input_tokens + EXCLUDED.cached_input_tokens,
            output_tokens = s.output_tokens + EXCLUDED.output_tokens, cost_usd = s.cost_usd + EXCLUDED.cost_usd;

    SELECT * INTO v_pol FROM parecer._client_policy p WHERE p.client_id = v_a.client_id;
    IF v_pol.daily_budget_usd IS NULL AND v_pol.monthly_budget_usd IS NULL THEN
        RETURN NEW;
    END IF;
    FOREACH v_period IN ARRAY ARRAY['day', 'month'] LOOP
        v_budget := CASE v_period WHEN 'day' THEN v_pol.daily_budget_usd ELSE v_pol.monthly_budget_usd END;
        CONTINUE WHEN v_budget IS NULL;
        v_start := CASE v_period WHEN 'day' THEN v_day ELSE date_trunc('month', v_day)::date END;
        SELECT COALESCE(sum(s.cost_usd), 0) INTO v_spent FROM parecer._spend s
         WHERE s.client_id = v_a.client_id AND s.day >= v_start AND s.day <= v_day;
        FOREACH v_pct IN ARRAY ARRAY[80, 100] LOOP
            IF v_spent >= v_budget * v_pct / 100.0 THEN
                INSERT INTO parecer._budget_alerts (client_id, period, period_start, threshold, spent_usd, budget_usd)
                VALUES (v_a.client_id, v_period, v_start, v_pct, v_spent, v_budget)
                ON CONFLICT DO NOTHING;
                IF FOUND THEN
                    PERFORM pg_notify('parecer_budget', json_build_object(
                        'client', v_a.client_slug, 'period', v_period, 'threshold', v_pct,
                        'spent_usd', round(v_spent, 4), 'budget_usd', v_budget)::text);
                END IF;
            END IF;
        END LOOP;
    END LOOP;
    RETURN NEW;
END
$$;
CREATE TRIGGER attempts_cost BEFORE UPDATE OF usage ON parecer._attempts
    FOR EACH ROW EXECUTE FUNCTION parecer._attempt_cost();

-- Every client that ever had work gets a policy row (default priority, no budget).
CREATE FUNCTION parecer._register_clients() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO parecer._client_policy (client_id, client_slug)
    SELECT DISTINCT n.client_id, n.client_slug FROM new_rows n
    ON CONFLICT (client_id) DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER analyses_register_clients AFTER INSERT ON parecer.analyses
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION parecer._register_clients();

-- Budget state per client right now. Views reached by parecer_reader call no
-- functions of ours (a view's functions run with the reader's rights): the
-- budget calendar is inlined here.
CREATE VIEW parecer._budget_state AS
WITH cal AS (
    SELECT (now() AT TIME ZONE (SELECT COALESCE(st.value, st.default_value) FROM parecer._settings st
                                WHERE st.name = 'budget_timezone'))::date AS today
)
SELECT p.client_id, p.client_slug, p.priority, p.daily_budget_usd, p.monthly_budget_usd,
       sp.spent_today, sp.spent_month,
       CASE
           WHEN p.daily_budget_usd IS NOT NULL AND sp.spent_today >= p.daily_budget_usd
               THEN pg_catalog.format('daily budget reached: %s of %s USD', round(sp.spent_today, 4), p.daily_budget_usd)
           WHEN p.monthly_budget_usd IS NOT NULL AND sp.spent_month >= p.monthly_budget_usd
               THEN pg_catalog.format('monthly budget reached: %s of %s USD', round(sp.spent_month, 4), p.monthly_budget_usd)
       END AS blocked_reason
FROM parecer._client_policy p
CROSS JOIN cal
CROSS JOIN LATERAL (
    SELECT COALESCE(sum(s.cost_usd) FILTER (WHERE s.day = cal.today), 0) AS spent_today,
           COALESCE(sum(s.cost_usd), 0) AS spent_month
    FROM parecer._spend s
    WHERE s.client_id = p.client_id AND s.day >= date_trunc('month', cal.today)::date AND s.day <= cal.today
) sp;

-- Why a client may not get work now (NULL: it may).
CREATE FUNCTION parecer._blocked_reason(p_client_id text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT b.blocked_reason FROM parecer._budget_state b WHERE b.client_id = p_client_id $$;

-- Budgets and spend per client.
CREATE VIEW parecer.budgets AS
SELECT b.client_slug, b.priority, b.daily_budget_usd, b.spent_today AS spent_today_usd,
       b.monthly_budget_usd, b.spent_month AS spent_month_usd, b.blocked_reason
FROM parecer._budget_state b
ORDER BY b.client_slug;
COMMENT ON VIEW parecer.budgets IS 'Per client: priority, daily and monthly budget, spend so far (budget_timezone calendar), and why claim hands out no work (blocked_reason).';

CREATE VIEW parecer.spend_daily AS
SELECT s.client_slug, s.day, sum(s.attempts)::bigint AS attempts, sum(s.input_tokens)::bigint AS input_tokens,
       sum(s.cached_input_tokens)::bigint AS cached_input_tokens, sum(s.output_tokens)::bigint AS output_tokens,
       sum(s.cost_usd) AS cost_usd
FROM parecer._spend s GROUP BY s.client_slug, s.day ORDER BY s.day DESC, s.client_slug;
COMMENT ON VIEW parecer.spend_daily IS 'Tokens and cost per client and day (budget_timezone calendar), all attempts included (failed ones cost too).';

CREATE VIEW parecer.spend_monthly AS
SELECT s.client_slug, date_trunc('month', s.day)::date AS month, sum(s.attempts)::bigint AS attempts,
       sum(s.input_tokens)::bigint AS input_tokens, sum(s.cached_input_tokens)::bigint AS cached_input_tokens,
       sum(s.output_tokens)::bigint AS output_tokens, sum(s.cost_usd) AS cost_usd
FROM parecer._spend s GROUP BY 1, 2 ORDER BY 2 DESC, 1;
COMMENT ON VIEW parecer.spend_monthly IS 'Tokens and cost per client and month.';

CREATE VIEW parecer.run_costs AS
SELECT ri.run_id, count(t.*) FILTER (WHERE t.usage IS NOT NULL) AS attempts,
       COALESCE(sum((t.usage ->> 'input_tokens')::bigint), 0) AS input_tokens,
       COALESCE(sum((t.usage ->> 'cached_input_tokens')::bigint), 0) AS cached_input_tokens,
       COALESCE(sum((t.usage ->> 'output_tokens')::bigint), 0) AS output_tokens,
       COALESCE(sum(t.cost_usd), 0) AS cost_usd
FROM parecer.run_items ri
LEFT JOIN parecer._attempts t ON t.analysis_id = ri.analysis_id
GROUP BY ri.run_id;
COMMENT ON VIEW parecer.run_costs IS 'Tokens and cost per run (every attempt of the run''s items).';

-- Set a client's daily / monthly budget in USD (NULL: none).
CREATE FUNCTION parecer.set_budget(client_slug text, daily_usd numeric DEFAULT NULL, monthly_usd numeric DEFAULT NULL)
RETURNS SETOF parecer.budgets
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_client record := parecer._client(set_budget.client_slug);
BEGIN
    IF daily_usd < 0 OR monthly_usd < 0 OR daily_usd > 1e9 OR monthly_usd > 1e9 THEN
        PERFORM parecer._invalid('budgets must be between 0 and 1e9 USD', 'e.g. daily_usd => 5, monthly_usd => 100 (seed 003''s thresholds); NULL for none.');
    END IF;
    INSERT INTO parecer._client_policy AS p (client_id, client_slug, daily_budget_usd, monthly_budget_usd)
    VALUES (v_client.client_id, v_client.client_slug, daily_usd, monthly_usd)
    ON CONFLICT (client_id) DO UPDATE SET daily_budget_usd = EXCLUDED.daily_budget_usd,
        monthly_budget_usd = EXCLUDED.monthly_budget_usd, updated_at = now();
    RETURN QUERY SELECT * FROM parecer.budgets b WHERE b.client_slug = v_client.client_slug;
END
$$;
COMMENT ON FUNCTION parecer.set_budget(text, numeric, numeric) IS
'Set a client''s daily and monthly budget in USD (NULL: no limit). A client at or over budget gets no work from claim (fail-closed) until the period turns; alerts at 80% and 100% (NOTIFY parecer_budget). Errors: PR001, PR010.';

-- Set a client's claim priority (weight in the round-robin: 2 gets twice the share of 1).
CREATE FUNCTION parecer.set_client_priority(client_slug text, priority integer)
RETURNS SETOF parecer.budgets
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_client record := parecer._client(set_client_priority.client_slug);
BEGIN
    IF priority IS NULL OR priority < 1 OR priority > 100 THEN
        PERFORM parecer._invalid('priority must be between 1 and 100', 'The weight of the client in claim''s round-robin: 2 gets twice the share of 1 (VIP first).');
    END IF;
    INSERT INTO parecer._client_policy AS p (client_id, client_slug, priority)
    VALUES (v_client.client_id, v_client.client_slug, priority)
    ON CONFLICT (client_id) DO UPDATE SET priority = EXCLUDED.priority, updated_at = now();
    RETURN QUERY SELECT * FROM parecer.budgets b WHERE b.client_slug = v_client.client_slug;
END
$$;
COMMENT ON FUNCTION parecer.set_client_priority(text, integer) IS
'Set a client''s weight in claim''s round-robin (1..100, default 1): with weights 2 and 1, two items of the first per item of the second. Errors: PR001, PR010.';

-- Average cost per done analysis of a script (then of its client) so far; NULL without history.
CREATE FUNCTION parecer.estimate_cost(script_id bigint, sessions integer) RETURNS numeric
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH per_script AS (
        SELECT sum(t.cost_usd) / NULLIF(count(DISTINCT a.analysis_id) FILTER (WHERE a.status = 'done'), 0) AS c
        FROM parecer.analyses a JOIN parecer._attempts t ON t.analysis_id = a.analysis_id
        WHERE a.script_id = estimate_cost.script_id AND t.cost_usd IS NOT NULL
    ), per_client AS (
        SELECT sum(t.cost_usd) / NULLIF(count(DISTINCT a.analysis_id) FILTER (WHERE a.status = 'done'), 0) AS c
        FROM parecer.analyses a JOIN parecer._attempts t ON t.analysis_id = a.analysis_id
        WHERE a.client_id = (SELECT s.client_id FROM parecer.scripts s WHERE s.script_id = estimate_cost.script_id)
          AND t.cost_usd IS NOT NULL
    )
    SELECT round(COALESCE((SELECT c FROM per_script), (SELECT c FROM per_client)) * GREATEST(sessions, 0), 4)
$$;
COMMENT ON FUNCTION parecer.estimate_cost(bigint, integer) IS
'Estimated cost in USD of analysing `sessions` sessions with a script: the average cost per done analysis (all attempts included) of the script, else of its client; NULL without history.';

------------------------------------------------------------------------------
-- Fair claiming and backlog runs.
------------------------------------------------------------------------------
ALTER TABLE parecer.analyses ADD COLUMN backlog boolean NOT NULL DEFAULT false;
DROP INDEX parecer.analyses_claim_idx;
CREATE INDEX analyses_fresh_idx ON parecer.analyses (client_id, session_ended_at DESC NULLS LAST, created_at DESC)
    WHERE (status = 'pending' OR (status = 'failed' AND next_retry_at IS NOT NULL)) AND NOT backlog;
CREATE INDEX analyses_backlog_idx ON parecer.analyses (client_id, session_ended_at ASC NULLS FIRST, created_at)
    WHERE (status = 'pending' OR (status = 'failed' AND next_retry_at IS NOT NULL)) AND backlog;

-- Mark a run's waiting items as backlog (lower priority, oldest first) or back to fresh.
CREATE FUNCTION parecer.set_run_backlog(run_id bigint, backlog boolean DEFAULT true) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_n integer;
BEGIN
    IF NOT EXISTS (SELECT FROM parecer.runs r WHERE r.run_id = set_run_backlog.run_id) THEN
        RAISE EXCEPTION 'unknown run %', COALESCE(set_run_backlog.run_id::text, 'NULL')
            USING ERRCODE = 'PR012', HINT = 'SELECT run_id FROM parecer.runs_overview lists the runs.';
    END IF;
    UPDATE parecer.analyses a SET backlog = COALESCE(set_run_backlog.backlog, true), updated_at = now()
      FROM parecer.run_items ri
     WHERE ri.run_id = set_run_backlog.run_id AND a.analysis_id = ri.analysis_id
       AND a.status IN ('pending', 'failed') AND a.backlog IS DISTINCT FROM COALESCE(set_run_backlog.backlog, true);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;
COMMENT ON FUNCTION parecer.set_run_backlog(bigint, boolean) IS
'Mark a run''s waiting items as backlog (claimed only when no fresh work is claimable, oldest session first: seed 003''s nightly processor) or, with false, back to fresh. Returns how many items changed. Errors: PR012.';

-- The claim, fair across clients: weighted round-robin by client priority, each
-- client's fresh work newest-ended first, then backlog oldest first; clients over
-- budget get nothing.
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

    IF EXISTS (SELECT FROM parecer.analyses a WHERE a.status = 'processing' AND a.lease_expires_at < now()) THEN
        PERFORM parecer._expire_leases();
    END IF;

    RETURN QUERY
    WITH pol AS (
        SELECT p.client_id, p.priority
        FROM parecer._client_policy p
        WHERE (v_client IS NULL OR p.client_slug = v_client)
          AND ((p.daily_budget_usd IS NULL AND p.monthly_budget_usd IS NULL)
               OR parecer._blocked_reason(p.client_id) IS NULL)
    ), fresh AS (
        SELECT 0 AS tier, pol.priority, x.analysis_id, x.rn
        FROM pol CROSS JOIN LATERAL (
            SELECT a.analysis_id, row_number() OVER (ORDER BY a.session_ended_at DESC NULLS LAST, a.created_at DESC) AS rn
            FROM (SELECT a.analysis_id, a.session_ended_at, a.created_at
                  FROM parecer.analyses a
                  WHERE a.client_id = pol.client_id AND NOT a.backlog
                    AND ((a.status = 'pending' AND (a.next_retry_at IS NULL OR a.next_retry_at <= now()))
                      OR (a.status = 'failed' AND a.next_retry_at <= now() AND a.retry_count < v_max))
                  ORDER BY a.session_ended_at DESC NULLS LAST, a.created_at DESC
                  LIMIT v_limit
                  FOR UPDATE SKIP LOCKED) a
        ) x
    ), old AS (
        SELECT 1 AS tier, pol.priority, x.analysis_id, x.rn
        FROM pol CROSS JOIN LATERAL (
            SELECT a.analysis_id, row_number() OVER (ORDER BY a.session_ended_at ASC NULLS FIRST, a.created_at) AS rn
            FROM (SELECT a.analysis_id, a.session_ended_at, a.created_at
                  FROM parecer.analyses a
                  WHERE a.client_id = pol.client_id AND a.backlog
                    AND ((a.status = 'pending' AND (a.next_retry_at IS NULL OR a.next_retry_at <= now()))
                      OR (a.status = 'failed' AND a.next_retry_at <= now() AND a.retry_count < v_max))
                  ORDER BY a.session_ended_at ASC NULLS FIRST, a.created_at
                  LIMIT v_limit
                  FOR UPDATE SKIP LOCKED) a
        ) x
        WHERE (SELECT count(*) FROM fresh) < v_limit
    ), c AS MATERIALIZED (
        SELECT f.analysis_id,
               row_number() OVER (ORDER BY f.tier, (f.rn - 1) / f.priority, f.race, f.rn) AS ord
        FROM (SELECT u.*, -ln(1.0 - random()) / u.priority AS race   -- weighted race: ties within a round go
              FROM (SELECT * FROM fresh UNION ALL SELECT * FROM old) u) f  -- to client i with p_i / sum(p)
        ORDER BY f.tier, (f.rn - 1) / f.priority, f.race, f.rn
        LIMIT v_limit
    ), u AS (
        UPDATE parecer.analyses a
           SET status = 'processing',
               claims = a.claims + 1,
               worker = v_worker,
               lease_token = gen_random_uuid(),
               lease_expires_at = now() + make_interval(secs => v_lease),
               next_retry_at = NULL,
               started_at = now(),
               updated_at = now()
          FROM c
         WHERE a.analysis_id = c.analysis_id
        RETURNING a.*, c.ord
    ), att AS (
        INSERT INTO parecer._attempts (analysis_id, attempt, worker, lease_token, claimed_at)
        SELECT u.analysis_id, u.claims, u.worker, u.lease_token, now() FROM u
    )
    SELECT u.analysis_id, u.lease_token, u.claims, u.client_slug, u.session_id, u.script_id,
           s.script_key, s.version, s.model, u.lease_expires_at, u.retry_count
    FROM u JOIN parecer.scripts s ON s.script_id = u.script_id
    ORDER BY u.ord;
END
$$;

COMMENT ON FUNCTION parecer.claim(text, integer, integer, text) IS
'Claim up to max_items claimable items (pending, or failed with a retry due) with a lease of lease_seconds (default: setting lease_seconds). Fair across clients: weighted round-robin by client priority, each client''s fresh work newest-ended session first, then backlog runs oldest first; clients over budget get nothing (see parecer.budgets). Items whose lease expired are recovered first, as a failed attempt. Errors: PR010.';

-- next_due, now that claim skips clients over budget and items past max_attempts.
CREATE OR REPLACE FUNCTION parecer.next_due(client_slug text DEFAULT NULL) RETURNS timestamptz
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT min(COALESCE(a.next_retry_at, a.lease_expires_at, now()))
    FROM parecer.analyses a
    JOIN parecer._budget_state b ON b.client_id = a.client_id AND b.blocked_reason IS NULL
    WHERE (a.status IN ('pending', 'processing')
           OR (a.status = 'failed' AND a.next_retry_at IS NOT NULL
               AND a.retry_count < parecer._setting_int('max_attempts')))
      AND (next_due.client_slug IS NULL OR a.client_slug = next_due.client_slug)
$$;

-- Queue overview with spend: extend status with the budget state.
CREATE VIEW parecer.client_status AS
SELECT b.client_slug, b.priority,
       COALESCE(q.pending, 0) AS pending, COALESCE(q.processing, 0) AS processing, COALESCE(q.done, 0) AS done,
       COALESCE(q.retrying, 0) AS retrying, COALESCE(q.failed, 0) AS failed,
       b.spent_today_usd, b.daily_budget_usd, b.spent_month_usd, b.monthly_budget_usd, b.blocked_reason
FROM parecer.budgets b
LEFT JOIN (SELECT qs.client_slug, sum(qs.pending) AS pending, sum(qs.processing) AS processing, sum(qs.done) AS done,
                  sum(qs.retrying) AS retrying, sum(qs.failed) AS failed
           FROM parecer.queue_status qs GROUP BY qs.client_slug) q ON q.client_slug = b.client_slug
ORDER BY b.client_slug;
COMMENT ON VIEW parecer.client_status IS 'Per client: queue counts, spend today and this month against budgets, and why claim is holding its work back.';

-- Grants for this migration's API.
REVOKE ALL ON ALL TABLES IN SCHEMA parecer FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA parecer FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    parecer.acquire_rate(text, integer),
    parecer.report_rate(text, double precision, integer, integer, double precision, integer, integer, text)
TO parecer_runner;
GRANT EXECUTE ON FUNCTION
    parecer.set_rate_limit(text, integer, integer),
    parecer.set_model_price(text, numeric, numeric, numeric, text, date),
    parecer.set_budget(text, numeric, numeric),
    parecer.set_client_priority(text, integer),
    parecer.set_run_backlog(bigint, boolean),
    parecer.estimate_cost(bigint, integer)
TO parecer_admin;
GRANT SELECT ON parecer.rate_limits, parecer.model_prices, parecer.budgets, parecer.spend_daily,
                parecer.spend_monthly, parecer.run_costs, parecer.client_status TO parecer_reader;
