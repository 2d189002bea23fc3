ALTER FUNCTION parecer._claim(text, integer, integer, text) RESET plan_cache_mode;
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'parecer' AND p.proname LIKE '\_%' AND NOT p.prosecdef
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION parecer._setting(p_name text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT COALESCE(s.value, s.default_value) FROM parecer._settings s WHERE s.name = p_name $$;
CREATE OR REPLACE FUNCTION parecer._setting_int(p_name text) RETURNS integer
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT parecer._setting(p_name)::integer $$;
CREATE OR REPLACE FUNCTION parecer._backoff(p_failures integer) RETURNS interval
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT sched[LEAST(GREATEST(p_failures, 1), cardinality(sched))]
    FROM (SELECT parecer._setting('backoff_schedule')::interval[] AS sched) s
$$;
CREATE OR REPLACE FUNCTION parecer._usage_ok(p_usage jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_typeof(p_usage) = 'object'
       AND NOT EXISTS (SELECT FROM unnest(ARRAY['input_tokens', 'cached_input_tokens', 'output_tokens']) k
                       WHERE COALESCE(jsonb_typeof(p_usage -> k), 'null') <> 'null'
                         AND (jsonb_typeof(p_usage -> k) <> 'number' OR (p_usage ->> k) !~ '^[0-9]{1,12}$'))
$$;
CREATE OR REPLACE FUNCTION parecer._cost(p_model text, p_usage jsonb) RETURNS numeric
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
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
CREATE OR REPLACE FUNCTION parecer._budget_day(p_ts timestamptz DEFAULT now()) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT (p_ts AT TIME ZONE parecer._setting('budget_timezone'))::date $$;
