CREATE OR REPLACE VIEW parecer.model_prices AS
SELECT p.model, p.input_usd_per_mtok, p.cached_input_usd_per_mtok, p.output_usd_per_mtok, p.source, p.taken_on,
       p.batch_price_factor
FROM parecer._model_prices p ORDER BY p.model;
COMMENT ON VIEW parecer.model_prices IS 'Model prices in USD per million tokens (input, cached input, output), with where and when they were taken; batch_price_factor: the Batch API price as a fraction of these (0.5: half price).';

-- Add or change a model's price.
CREATE OR REPLACE FUNCTION parecer.set_model_price(model text, input_usd_per_mtok numeric, cached_input_usd_per_mtok numeric,
                                        output_usd_per_mtok numeric, source text DEFAULT 'set by operator',
                                        taken_on date DEFAULT CURRENT_DATE, batch_price_factor numeric DEFAULT NULL)
RETURNS SETOF parecer.model_prices
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF model IS NULL OR model !~ '^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$' THEN
        PERFORM parecer._invalid('invalid model name', 'e.g. gpt-5-mini (prices match by prefix).');
    END IF;
    IF input_usd_per_mtok IS NULL OR cached_input_usd_per_mtok IS NULL OR output_usd_per_mtok IS NULL
       OR LEAST(input_usd_per_mtok, cached_input_usd_per_mtok, output_usd_per_mtok) < 0
       OR GREATEST(input_usd_per_mtok, cached_input_usd_per_mtok, output_usd_per_mtok) > 100000 THEN
        PERFORM parecer._invalid('prices must be numbers between 0 and 100000 USD per million tokens', 'e.g. 0.25, 0.025, 2.00');
    END IF;
    IF batch_price_factor < 0 OR batch_price_factor > 1 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid batch_price_factor: %s', batch_price_factor),
                                 'batch_price_factor is the Batch API price as a fraction of the standard price, from 0 to 1 (OpenAI: 0.5).');
    END IF;
    INSERT INTO parecer._model_prices AS p VALUES (model, input_usd_per_mtok, cached_input_usd_per_mtok,
        output_usd_per_mtok, COALESCE(left(source, 200), 'set by operator'), COALESCE(taken_on, CURRENT_DATE),
        COALESCE(batch_price_factor, 0.5))
    ON CONFLICT ON CONSTRAINT _model_prices_pkey DO UPDATE
        SET input_usd_per_mtok = EXCLUDED.input_usd_per_mtok,
            cached_input_usd_per_mtok = EXCLUDED.cached_input_usd_per_mtok,
            output_usd_per_mtok = EXCLUDED.output_usd_per_mtok,
            source = EXCLUDED.source, taken_on = EXCLUDED.taken_on,
            batch_price_factor = COALESCE(set_model_price.batch_price_factor, p.batch_price_factor);
    RETURN QUERY SELECT * FROM parecer.model_prices mp WHERE mp.model = set_model_price.model;
END
$$;
COMMENT ON FUNCTION parecer.set_model_price(text, numeric, numeric, numeric, text, date, numeric) IS
'Add or change a model''s price (USD per million input, cached input and output tokens). batch_price_factor: the Batch API price as a fraction of those (NULL: keep the model''s, 0.5 for a new one). Errors: PR010.';

-- Tokens of a usage object at per-million prices, in USD per million (no rounding).
CREATE OR REPLACE FUNCTION parecer._usd_mtok(p_usage jsonb, p_input numeric, p_cached numeric, p_output numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT GREATEST(COALESCE((p_usage ->> 'input_tokens')::numeric, 0)
                    - COALESCE((p_usage ->> 'cached_input_tokens')::numeric, 0), 0) * p_input
           + COALESCE((p_usage ->> 'cached_input_tokens')::numeric, 0) * p_cached
           + COALESCE((p_usage ->> 'output_tokens')::numeric, 0) * p_output
$$;

-- The cost in USD of an attempt's usage at the model's price (the longest priced
-- prefix of the model's name), as a one-row set (none when the model has no price).
-- The tokens under usage.batch (a Batch API call, 75_batches.sql) are part of the
-- totals and are charged at batch_price_factor times the standard price. A SQL
-- function returning a set, so that the planner inlines it into the query that
-- joins it (_store_reports prices a batch in its UPDATE, no function call per item).
CREATE OR REPLACE FUNCTION parecer._cost_set(p_model text, p_usage jsonb) RETURNS TABLE (cost_usd numeric)
LANGUAGE sql STABLE AS $$
    SELECT round((parecer._usd_mtok(p_usage, p.input_usd_per_mtok, p.cached_input_usd_per_mtok, p.output_usd_per_mtok)
                  - (1 - p.batch_price_factor)
                    * parecer._usd_mtok(b.batch, p.input_usd_per_mtok, p.cached_input_usd_per_mtok, p.output_usd_per_mtok))
                 / 1000000, 8)
    FROM (SELECT CASE WHEN jsonb_typeof(p_usage -> 'batch') = 'object' THEN p_usage -> 'batch' ELSE '{}' END AS batch) b,
         parecer._model_prices p
    WHERE starts_with(p_model, p.model)
    ORDER BY length(p.model) DESC
    LIMIT 1
$$;

-- _cost_set as a scalar, for ad-hoc use (psql, tests, benchmarks): NULL when unpriced.
CREATE OR REPLACE FUNCTION parecer._cost(p_model text, p_usage jsonb) RETURNS numeric
LANGUAGE sql STABLE AS $$ SELECT c.cost_usd FROM parecer._cost_set(p_model, p_usage) c $$;

CREATE OR REPLACE FUNCTION parecer._budget_day(p_ts timestamptz DEFAULT now()) RETURNS date
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (p_ts AT TIME ZONE parecer._setting('budget_timezone'))::date;
END
$$;

-- Add attempts' usages and their total cost to their client's spend of the day
-- (one attempt per usage), and raise the budget alerts when the client has a
-- budget. A batch of one client's attempts is added in one update.
CREATE OR REPLACE FUNCTION parecer._add_spend(p_client_id text, p_client_slug text, p_day date, p_usages jsonb[],
                                              p_cost numeric)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_shard   smallint := pg_backend_pid() % 16;
    v_n       integer;
    v_in      bigint;
    v_cached  bigint;
    v_out     bigint;
    v_daily   numeric;
    v_monthly numeric;
BEGIN
    SELECT count(*), COALESCE(sum(COALESCE((u ->> 'input_tokens')::bigint, 0)), 0),
           COALESCE(sum(COALESCE((u ->> 'cached_input_tokens')::bigint, 0)), 0),
           COALESCE(sum(COALESCE((u ->> 'output_tokens')::bigint, 0)), 0)
      INTO v_n, v_in, v_cached, v_out
    FROM unnest(p_usages) u;
    -- Counters are sharded by backend so that concurrent calls for one client do not
    -- serialise on one row; readers sum the shards. A plain UPDATE first: the upsert's
    -- conflict path locks the row and writes one more WAL record per attempt.
    UPDATE parecer._spend s
       SET attempts = s.attempts + v_n,
           input_tokens = s.input_tokens + v_in,
           cached_input_tokens = s.cached_input_tokens + v_cached,
           output_tokens = s.output_tokens + v_out,
           cost_usd = s.cost_usd + COALESCE(p_cost, 0)
     WHERE s.client_id = p_client_id AND s.day = p_day AND s.shard = v_shard
    RETURNING (SELECT pol.daily_budget_usd FROM parecer._client_policy pol WHERE pol.client_id = p_client_id),
              (SELECT pol.monthly_budget_usd FROM parecer._client_policy pol WHERE pol.client_id = p_client_id)
         INTO v_daily, v_monthly;
    IF NOT FOUND THEN
        INSERT INTO parecer._spend AS s (client_id, client_slug, day, shard, attempts, input_tokens,
                                         cached_input_tokens, output_tokens, cost_usd)
        VALUES (p_client_id, p_client_slug, p_day, v_shard, v_n, v_in, v_cached, v_out, COALESCE(p_cost, 0))
        ON CONFLICT (client_id, day, shard) DO UPDATE
            SET attempts = s.attempts + EXCLUDED.attempts, input_tokens = s.input_tokens + EXCLUDED.input_tokens,
                cached_input_tokens = s.cached_input_tokens + EXCLUDED.cached_input_tokens,
                output_tokens = s.output_tokens + EXCLUDED.output_tokens, cost_usd = s.cost_usd + EXCLUDED.cost_usd;
        SELECT pol.daily_budget_usd, pol.monthly_budget_usd INTO v_daily, v_monthly
        FROM parecer._client_policy pol WHERE pol.client_id = p_client_id;
    END IF;
    IF v_daily IS NOT NULL OR v_monthly IS NOT NULL THEN
        PERFORM parecer._budget_alerts_check(p_client_id, p_client_slug, p_day, v_daily, v_monthly);
    END IF;
    PERFORM parecer._global_budget_alerts_check(p_day);
END
$$;

-- Every client that ever had work gets a policy row (default priority, no budget).
CREATE OR REPLACE FUNCTION parecer._register_clients() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO parecer._client_policy (client_id, client_slug)
    SELECT DISTINCT n.client_id, n.client_slug FROM new_rows n
    ON CONFLICT (client_id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER analyses_register_clients AFTER INSERT ON parecer.analyses
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION parecer._register_clients();

-- The installation's budget state right now: one row, its sums read only when a
-- global budget is set (parecer.set_global_budget). Inlined calendar, as in
-- _budget_state below.
CREATE OR REPLACE VIEW parecer._global_budget_state AS
WITH cal AS (
    SELECT (now() AT TIME ZONE (SELECT COALESCE(st.value, st.default_value) FROM parecer._settings st
                                WHERE st.name = 'budget_timezone'))::date AS today
), gb AS (
    SELECT b.daily_budget_usd, b.monthly_budget_usd FROM (SELECT) one LEFT JOIN parecer._global_budget b ON true
)
SELECT gb.daily_budget_usd, gb.monthly_budget_usd,
       COALESCE(sp.spent_today, 0) AS spent_today, COALESCE(sp.spent_month, 0) AS spent_month,
       CASE
           WHEN gb.daily_budget_usd IS NOT NULL AND sp.spent_today >= gb.daily_budget_usd
               THEN pg_catalog.format('installation daily budget reached: %s of %s USD', round(sp.spent_today, 4), gb.daily_budget_usd)
           WHEN gb.monthly_budget_usd IS NOT NULL AND sp.spent_month >= gb.monthly_budget_usd
               THEN pg_catalog.format('installation monthly budget reached: %s of %s USD', round(sp.spent_month, 4), gb.monthly_budget_usd)
       END AS blocked_reason
FROM gb
CROSS JOIN cal
LEFT JOIN LATERAL (
    SELECT COALESCE(sum(s.cost_usd) FILTER (WHERE s.day = cal.today), 0) AS spent_today,
           COALESCE(sum(s.cost_usd), 0) AS spent_month
    FROM parecer._spend s
    WHERE (gb.daily_budget_usd IS NOT NULL OR gb.monthly_budget_usd IS NOT NULL)
      AND s.day >= date_trunc('month', cal.today)::date AND s.day <= cal.today
) sp ON true;

-- Why claim hands out no work at all (the installation's budget), NULL when it may.
-- A single lookup when no global budget is set.
CREATE OR REPLACE FUNCTION parecer._global_blocked_reason() RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM parecer._global_budget b
                   WHERE b.daily_budget_usd IS NOT NULL OR b.monthly_budget_usd IS NOT NULL) THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT g.blocked_reason FROM parecer._global_budget_state g);
END
$$;

-- Budget state per client right now. Views reached by parecer_reader call no
-- functions of ours (a view's functions run with the reader's rights): the
-- budget calendar is inlined here.
CREATE OR REPLACE VIEW parecer._budget_state AS
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
           ELSE g.blocked_reason
       END AS blocked_reason
FROM parecer._client_policy p
CROSS JOIN cal
CROSS JOIN parecer._global_budget_state g
CROSS JOIN LATERAL (
    SELECT COALESCE(sum(s.cost_usd) FILTER (WHERE s.day = cal.today), 0) AS spent_today,
           COALESCE(sum(s.cost_usd), 0) AS spent_month
    FROM parecer._spend s
    WHERE s.client_id = p.client_id AND s.day >= date_trunc('month', cal.today)::date AND s.day <= cal.today
) sp;

-- Why claim holds a client's work back, as PL/pgSQL for the same reason: the
-- claim asks it for every client with a budget, on every call, and as a SQL
-- function it re-planned the budget-state view each time.
CREATE OR REPLACE FUNCTION parecer._blocked_reason(p_client_id text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT b.blocked_reason FROM parecer._budget_state b WHERE b.client_id = p_client_id);
END
$$;

-- How many items one more Batch API batch of a client's script may take under
-- the budgets (the client's and the installation's, day and month): the money
-- left, less what the items the open batches hold are expected to cost, over
-- the expected cost of one item (parecer.estimate_cost: the past analyses of the
-- script, else of the client, all attempts, at the prices paid; from synchronous
-- history it is about twice a batch's price, so the batch errs small). At least
-- 1: open_batch is not called for a client over budget. NULL: no budget set, or
-- no history to estimate from. A batch's cost is spent only when its results are
-- stored, hours later, so without this a client near its budget could send a
-- whole batch (up to batch_max_items) past it (75_batches.sql, open_batch).
CREATE OR REPLACE FUNCTION parecer._batch_budget_items(p_client_id text, p_script_id bigint) RETURNS integer
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_client numeric := (SELECT LEAST(b.daily_budget_usd - b.spent_today, b.monthly_budget_usd - b.spent_month)
                         FROM parecer._budget_state b WHERE b.client_id = p_client_id);
    v_all    numeric := (SELECT LEAST(g.daily_budget_usd - g.spent_today, g.monthly_budget_usd - g.spent_month)
                         FROM parecer._global_budget_state g);
    v_each   numeric;
    v_held   bigint;   -- items the client's open batches hold
    v_held_all bigint; -- items every open batch holds
BEGIN
    IF v_client IS NULL AND v_all IS NULL THEN
        RETURN NULL;   -- no budget: nothing to size the batch to
    END IF;
    v_each := parecer.estimate_cost(p_script_id, 1);
    IF v_each IS NULL OR v_each <= 0 THEN
        RETURN NULL;
    END IF;
    SELECT count(*) FILTER (WHERE b.client_id = p_client_id), count(*) INTO v_held, v_held_all
    FROM parecer._batches b
    JOIN parecer._batch_items bi ON bi.batch_id = b.batch_id
    JOIN parecer.analyses a ON a.analysis_id = bi.analysis_id AND a.lease_token = bi.lease_token
    WHERE b.status IN ('preparing', 'uploaded', 'submitted', 'ingesting') AND a.status = 'processing';
    RETURN LEAST(GREATEST(floor(LEAST(v_client - v_held * v_each, v_all - v_held_all * v_each) / v_each), 1),
                 2147483647)::integer;
END
$$;

-- Raise budget alerts (NOTIFY parecer_budget, once per client, period and threshold) at 80% and 100%.
-- The client id '*' stands for the installation (parecer._global_budget_alerts_check):
-- its spend is every client's, its notification says "client": null, "scope": "installation".
CREATE OR REPLACE FUNCTION parecer._budget_alerts_check(p_client_id text, p_client_slug text, p_day date,
                                             p_daily numeric, p_monthly numeric) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_spent  numeric;
    v_period text;
    v_budget numeric;
    v_start  date;
    v_pct    integer;
BEGIN
    FOREACH v_period IN ARRAY ARRAY['day', 'month'] LOOP
        v_budget := CASE v_period WHEN 'day' THEN p_daily ELSE p_monthly END;
        CONTINUE WHEN v_budget IS NULL;
        v_start := CASE v_period WHEN 'day' THEN p_day ELSE date_trunc('month', p_day)::date END;
        IF p_client_id = '*' THEN
            SELECT COALESCE(sum(s.cost_usd), 0) INTO v_spent FROM parecer._spend s WHERE s.day >= v_start AND s.day <= p_day;
        ELSE
            SELECT COALESCE(sum(s.cost_usd), 0) INTO v_spent FROM parecer._spend s
             WHERE s.client_id = p_client_id AND s.day >= v_start AND s.day <= p_day;
        END IF;
        FOREACH v_pct IN ARRAY ARRAY[80, 100] LOOP
            IF v_spent >= v_budget * v_pct / 100.0 THEN
                INSERT INTO parecer._budget_alerts (client_id, period, period_start, threshold, spent_usd, budget_usd)
                VALUES (p_client_id, v_period, v_start, v_pct, v_spent, v_budget)
                ON CONFLICT DO NOTHING;
                IF FOUND THEN
                    PERFORM pg_notify('parecer_budget', (CASE WHEN p_client_id = '*' THEN json_build_object(
                        'client', NULL, 'scope', 'installation', 'period', v_period, 'threshold', v_pct,
                        'spent_usd', round(v_spent, 4), 'budget_usd', v_budget) ELSE json_build_object(
                        'client', p_client_slug, 'period', v_period, 'threshold', v_pct,
                        'spent_usd', round(v_spent, 4), 'budget_usd', v_budget) END)::text);
                END IF;
            END IF;
        END LOOP;
    END LOOP;
END
$$;

-- Budgets and spend per client.
CREATE OR REPLACE VIEW parecer.budgets WITH (security_barrier = true) AS
SELECT b.client_slug, b.priority, b.daily_budget_usd, b.spent_today AS spent_today_usd,
       b.monthly_budget_usd, b.spent_month AS spent_month_usd, b.blocked_reason
FROM parecer._budget_state b
WHERE ((SELECT sc.all_clients FROM parecer._caller_scope sc) OR b.client_id = ANY ((SELECT sc.client_ids FROM parecer._caller_scope sc)::text[]))
ORDER BY b.client_slug;
COMMENT ON VIEW parecer.budgets IS 'Per client: priority, daily and monthly budget, spend so far (budget_timezone calendar), and why claim hands out no work (blocked_reason).';

CREATE OR REPLACE VIEW parecer.spend_daily WITH (security_barrier = true) AS
SELECT s.client_slug, s.day, sum(s.attempts)::bigint AS attempts, sum(s.input_tokens)::bigint AS input_tokens,
       sum(s.cached_input_tokens)::bigint AS cached_input_tokens, sum(s.output_tokens)::bigint AS output_tokens,
       sum(s.cost_usd) AS cost_usd
FROM parecer._spend s
WHERE ((SELECT sc.all_clients FROM parecer._caller_scope sc) OR s.client_id = ANY ((SELECT sc.client_ids FROM parecer._caller_scope sc)::text[]))
GROUP BY s.client_slug, s.day ORDER BY s.day DESC, s.client_slug;
COMMENT ON VIEW parecer.spend_daily IS 'Tokens and cost per client and day (budget_timezone calendar), all attempts included (failed ones cost too).';

CREATE OR REPLACE VIEW parecer.spend_monthly WITH (security_barrier = true) AS
SELECT s.client_slug, date_trunc('month', s.day)::date AS month, sum(s.attempts)::bigint AS attempts,
       sum(s.input_tokens)::bigint AS input_tokens, sum(s.cached_input_tokens)::bigint AS cached_input_tokens,
       sum(s.output_tokens)::bigint AS output_tokens, sum(s.cost_usd) AS cost_usd
FROM parecer._spend s
WHERE ((SELECT sc.all_clients FROM parecer._caller_scope sc) OR s.client_id = ANY ((SELECT sc.client_ids FROM parecer._caller_scope sc)::text[]))
GROUP BY 1, 2 ORDER BY 2 DESC, 1;
COMMENT ON VIEW parecer.spend_monthly IS 'Tokens and cost per client and month.';

-- Write a client's policy row (parecer.budgets shows it): its budgets when
-- p_budgets, else its priority. For set_budget and set_client_priority, which
-- check the same way: PR001 for an unknown client, then PR010 for a bad value.
CREATE OR REPLACE FUNCTION parecer._set_client_policy(p_slug text, p_budgets boolean, p_daily numeric,
                                                      p_monthly numeric, p_priority integer)
RETURNS SETOF parecer.budgets
LANGUAGE plpgsql AS $$
DECLARE
    v_client record := parecer._client(p_slug);
BEGIN
    IF p_budgets AND (p_daily < 0 OR p_monthly < 0 OR p_daily > 1e9 OR p_monthly > 1e9) THEN
        PERFORM parecer._invalid('budgets must be between 0 and 1e9 USD', 'e.g. daily_usd => 5, monthly_usd => 100 (seed 003''s thresholds); NULL for none.');
    ELSIF NOT p_budgets AND (p_priority IS NULL OR p_priority < 1 OR p_priority > 100) THEN
        PERFORM parecer._invalid('priority must be between 1 and 100', 'The weight of the client in claim''s round-robin: 2 gets twice the share of 1 (VIP first).');
    END IF;
    INSERT INTO parecer._client_policy AS p (client_id, client_slug, daily_budget_usd, monthly_budget_usd, priority)
    VALUES (v_client.client_id, v_client.client_slug, p_daily, p_monthly, COALESCE(p_priority, 1))   -- 1: the column's default
    ON CONFLICT (client_id) DO UPDATE
        SET daily_budget_usd = CASE WHEN p_budgets THEN EXCLUDED.daily_budget_usd ELSE p.daily_budget_usd END,
            monthly_budget_usd = CASE WHEN p_budgets THEN EXCLUDED.monthly_budget_usd ELSE p.monthly_budget_usd END,
            priority = CASE WHEN p_budgets THEN p.priority ELSE EXCLUDED.priority END,
            updated_at = now();
    RETURN QUERY SELECT * FROM parecer.budgets b WHERE b.client_slug = v_client.client_slug;
END
$$;

-- Set a client's daily / monthly budget in USD (NULL: none).
CREATE OR REPLACE FUNCTION parecer.set_budget(client_slug text, daily_usd numeric DEFAULT NULL, monthly_usd numeric DEFAULT NULL)
RETURNS SETOF parecer.budgets
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM parecer._set_client_policy(set_budget.client_slug, true, set_budget.daily_usd, set_budget.monthly_usd, NULL)
$$;
COMMENT ON FUNCTION parecer.set_budget(text, numeric, numeric) IS
'Set a client''s daily and monthly budget in USD (NULL: no limit). A client at or over budget gets no work from claim (fail-closed) until the period turns; alerts at 80% and 100% (NOTIFY parecer_budget). Errors: PR001, PR010.';

-- Set a client's claim priority (weight in the round-robin: 2 gets twice the share of 1).
CREATE OR REPLACE FUNCTION parecer.set_client_priority(client_slug text, priority integer)
RETURNS SETOF parecer.budgets
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM parecer._set_client_policy(set_client_priority.client_slug, false, NULL, NULL, set_client_priority.priority)
$$;
COMMENT ON FUNCTION parecer.set_client_priority(text, integer) IS
'Set a client''s weight in claim''s round-robin (1..100, default 1): with weights 2 and 1, two items of the first per item of the second. Errors: PR001, PR010.';

-- Queue overview with spend: extend status with the budget state.
CREATE OR REPLACE VIEW parecer.client_status AS
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

CREATE OR REPLACE VIEW parecer._finished_attempts AS
SELECT t.analysis_id, t.attempt, t.worker, t.lease_token, t.claimed_at, t.finished_at, t.outcome, t.error,
       t.model, t.prompt_hash, t.usage, t.cost_usd
FROM parecer._attempts t
UNION ALL
SELECT a.analysis_id, a.claims, COALESCE(a.worker, '?'), NULL::uuid, COALESCE(a.started_at, a.processed_at), a.processed_at,
       'done', NULL::text, a.model, a.prompt_hash, a.usage, a.cost_usd
FROM parecer.analyses a
WHERE a.status = 'done' AND a.claims > 0;
COMMENT ON VIEW parecer._finished_attempts IS
'Every attempt that ended: the rows of parecer._attempts and, for each done item, the attempt that finished it (the item''s row).';

CREATE OR REPLACE VIEW parecer.attempts WITH (security_barrier = true) AS
SELECT t.analysis_id, t.attempt, t.worker, t.claimed_at, t.finished_at,
       t.outcome, t.error, t.model, t.usage,
       a.client_slug, a.session_id, t.cost_usd
FROM parecer._finished_attempts t
JOIN parecer.analyses a ON a.analysis_id = t.analysis_id
WHERE ((SELECT sc.all_clients FROM parecer._caller_scope sc) OR a.client_id = ANY ((SELECT sc.client_ids FROM parecer._caller_scope sc)::text[]))
UNION ALL
SELECT a.analysis_id, a.claims, a.worker, a.started_at, NULL::timestamptz,
       'processing', NULL::text, NULL::text, NULL::jsonb,
       a.client_slug, a.session_id, NULL::numeric
FROM parecer.analyses a
WHERE a.status = 'processing' AND ((SELECT sc.all_clients FROM parecer._caller_scope sc) OR a.client_id = ANY ((SELECT sc.client_ids FROM parecer._caller_scope sc)::text[]));
COMMENT ON VIEW parecer.attempts IS 'Attempt history: one row per claim (outcome done, failed, released, expired, reset, or processing while in flight), with its usage and cost.';

CREATE OR REPLACE VIEW parecer.run_costs WITH (security_barrier = true) AS
SELECT ri.run_id, count(t.*) FILTER (WHERE t.usage IS NOT NULL) AS attempts,
       COALESCE(sum((t.usage ->> 'input_tokens')::bigint), 0) AS input_tokens,
       COALESCE(sum((t.usage ->> 'cached_input_tokens')::bigint), 0) AS cached_input_tokens,
       COALESCE(sum((t.usage ->> 'output_tokens')::bigint), 0) AS output_tokens,
       COALESCE(sum(t.cost_usd), 0) AS cost_usd
FROM parecer.run_items ri
LEFT JOIN parecer._finished_attempts t ON t.analysis_id = ri.analysis_id
WHERE EXISTS (SELECT FROM parecer.runs r
              WHERE r.run_id = ri.run_id AND ((SELECT sc.all_clients FROM parecer._caller_scope sc) OR r.client_id = ANY ((SELECT sc.client_ids FROM parecer._caller_scope sc)::text[])))
GROUP BY ri.run_id;
COMMENT ON VIEW parecer.run_costs IS 'Tokens and cost per run (every attempt of the run''s items).';

CREATE OR REPLACE FUNCTION parecer.estimate_cost(script_id bigint, sessions integer) RETURNS numeric
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH per_script AS (
        SELECT sum(t.cost_usd) / NULLIF(count(DISTINCT a.analysis_id) FILTER (WHERE a.status = 'done'), 0) AS c
        FROM parecer.analyses a JOIN parecer._finished_attempts t ON t.analysis_id = a.analysis_id
        WHERE a.script_id = estimate_cost.script_id AND t.cost_usd IS NOT NULL
    ), per_client AS (
        SELECT sum(t.cost_usd) / NULLIF(count(DISTINCT a.analysis_id) FILTER (WHERE a.status = 'done'), 0) AS c
        FROM parecer.analyses a JOIN parecer._finished_attempts t ON t.analysis_id = a.analysis_id
        WHERE a.client_id = (SELECT s.client_id FROM parecer.scripts s WHERE s.script_id = estimate_cost.script_id)
          AND t.cost_usd IS NOT NULL
    )
    SELECT round(COALESCE((SELECT c FROM per_script), (SELECT c FROM per_client)) * GREATEST(sessions, 0), 4)
$$;
COMMENT ON FUNCTION parecer.estimate_cost(bigint, integer) IS
'Estimated cost in USD of analysing `sessions` sessions with a script: the average cost per done analysis (all attempts included) of the script, else of its client; NULL without history.';


-- Raise the installation's budget alerts (NOTIFY parecer_budget with "client": null,
-- "scope": "installation"), once per period and threshold, at 80% and 100%.
-- Stored in _budget_alerts under the client id '*' (no source client id is '*'
-- in practice; purge treats the rows like any other).
CREATE OR REPLACE FUNCTION parecer._global_budget_alerts_check(p_day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_b parecer._global_budget;
BEGIN
    SELECT * INTO v_b FROM parecer._global_budget;
    IF v_b.daily_budget_usd IS NULL AND v_b.monthly_budget_usd IS NULL THEN
        RETURN;
    END IF;
    PERFORM parecer._budget_alerts_check('*', NULL, p_day, v_b.daily_budget_usd, v_b.monthly_budget_usd);
END
$$;

-- The installation's budgets and spend.
CREATE OR REPLACE VIEW parecer.global_budget AS
SELECT g.daily_budget_usd, g.spent_today AS spent_today_usd, g.monthly_budget_usd, g.spent_month AS spent_month_usd,
       g.blocked_reason
FROM parecer._global_budget_state g;
COMMENT ON VIEW parecer.global_budget IS 'The installation''s daily and monthly budget (all clients together, USD), spend so far (budget_timezone calendar; summed only while a budget is set, else 0), and why claim hands out no work at all (blocked_reason).';

-- Set the installation's daily / monthly budget in USD (NULL: none).
CREATE OR REPLACE FUNCTION parecer.set_global_budget(daily_usd numeric DEFAULT NULL, monthly_usd numeric DEFAULT NULL)
RETURNS SETOF parecer.global_budget
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF daily_usd < 0 OR monthly_usd < 0 OR daily_usd > 1e9 OR monthly_usd > 1e9 THEN
        PERFORM parecer._invalid('budgets must be between 0 and 1e9 USD',
                                 'Budgets are in USD: seed 003''s R$10/day and R$200/month at 5.40 BRL per USD are daily_usd => 1.85, monthly_usd => 37.04; NULL for none.');
    END IF;
    INSERT INTO parecer._global_budget AS b (singleton, daily_budget_usd, monthly_budget_usd)
    VALUES (true, daily_usd, monthly_usd)
    ON CONFLICT (singleton) DO UPDATE SET daily_budget_usd = EXCLUDED.daily_budget_usd,
        monthly_budget_usd = EXCLUDED.monthly_budget_usd, updated_at = now();
    RETURN QUERY SELECT * FROM parecer.global_budget;
END
$$;
COMMENT ON FUNCTION parecer.set_global_budget(numeric, numeric) IS
'Set the installation''s daily and monthly budget in USD, all clients together (NULL: no limit). At or over it, claim hands out no work to anyone (fail-closed) until the period turns; per-client budgets still apply beside it; alerts at 80% and 100% (NOTIFY parecer_budget, "scope": "installation"). Errors: PR010.';

-- Units of a currency per US dollar: 1 for USD, the usd_exchange_rate setting for display_currency.
CREATE OR REPLACE FUNCTION parecer.exchange_rate(currency text DEFAULT NULL) RETURNS numeric
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_display text := parecer._setting('display_currency');
    v_cur     text := upper(COALESCE(exchange_rate.currency, v_display));
BEGIN
    IF v_cur = 'USD' THEN
        RETURN 1;
    ELSIF v_cur = v_display THEN
        RETURN parecer._setting('usd_exchange_rate')::numeric;
    END IF;
    RAISE EXCEPTION 'no exchange rate for %: display_currency is %', left(v_cur, 20), v_display
        USING ERRCODE = 'PR030',
              HINT = pg_catalog.format('Set the currency and its rate: parecer.set_setting(''display_currency'', ''%s''), then parecer.set_setting(''usd_exchange_rate'', ''<units per USD>'').', left(v_cur, 20));
END
$$;
COMMENT ON FUNCTION parecer.exchange_rate(text) IS
'Units of currency per US dollar (default: the display_currency setting): 1 for USD, the usd_exchange_rate setting for display_currency. parecer keeps every price, cost and budget in USD; this converts for display only. Errors: PR030 no rate for that currency.';

-- Month-to-date spend extrapolated to the whole month, per client and in total.
CREATE OR REPLACE FUNCTION parecer.spend_projection(currency text DEFAULT NULL)
RETURNS TABLE (client_slug text, month date, days_elapsed numeric, days_in_month integer,
               spent_today_usd numeric, projected_today_usd numeric, spent_month_usd numeric, projected_month_usd numeric,
               currency_code text, spent_today numeric, projected_today numeric, spent_month numeric,
               projected_month numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_rate    numeric := parecer.exchange_rate(spend_projection.currency);
    v_cur     text := upper(COALESCE(spend_projection.currency, parecer._setting('display_currency')));
    v_local   timestamp := now() AT TIME ZONE parecer._setting('budget_timezone');
    v_today   date := v_local::date;
    v_month   date := date_trunc('month', v_local)::date;
    v_days    integer := ((v_month + interval '1 month')::date - v_month);
    -- days of the month gone by, today counted by the fraction elapsed (at least a minute)
    v_elapsed numeric := GREATEST(extract(epoch FROM v_local - v_month::timestamp) / 86400.0, 1.0 / 1440);
    -- the fraction of today gone by (at least a minute)
    v_day     numeric := GREATEST(extract(epoch FROM v_local - v_today::timestamp) / 86400.0, 1.0 / 1440);
BEGIN
    RETURN QUERY
    SELECT g.client_slug, v_month, round(v_elapsed, 4), v_days, g.today, round(g.today / v_day, 4), g.mtd,
           round(g.mtd / v_elapsed * v_days, 4), v_cur,
           round(g.today * v_rate, 4), round(g.today / v_day * v_rate, 4), round(g.mtd * v_rate, 4),
           round(g.mtd / v_elapsed * v_days * v_rate, 4)
    FROM (SELECT s.client_slug, COALESCE(sum(s.cost_usd) FILTER (WHERE s.day = v_today), 0) AS today,
                 COALESCE(sum(s.cost_usd), 0) AS mtd
          FROM parecer._spend s
          WHERE s.day >= v_month AND s.day <= v_today
          GROUP BY GROUPING SETS ((s.client_slug), ())) g
    ORDER BY g.client_slug NULLS FIRST;
END
$$;
COMMENT ON FUNCTION parecer.spend_projection(text) IS
'Spend extrapolated linearly, budget_timezone calendar: this month''s to the whole month (month-to-date / days elapsed, today counted by its elapsed fraction, * days in the month) and today''s to the whole day (today / fraction of the day gone by); one row per client with spend this month, and a first row with client_slug NULL for the installation. Costs in USD and in currency (default: display_currency, via parecer.exchange_rate). Errors: PR030.';
