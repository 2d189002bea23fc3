-- 0010: the hot path (claim, mark_done) without needless per-call work.
--
-- A function with a SET clause is never inlined, and a non-inlined SQL function
-- is parsed and planned on every call: with `SET search_path` the tiny private
-- helpers (_setting_int, _norm, _cost...) cost 0.1-0.3 ms per call, several
-- times per claim and per report check. The public functions keep
-- `SET search_path = pg_catalog, pg_temp` (they are the security boundary); the
-- private `_` helpers run only inside them, so they inherit that pinned path, and
-- no role but the owner may execute them (checked by tests/test_catalog.py).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'parecer' AND p.proname LIKE '\_%' AND NOT p.prosecdef
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s RESET search_path', f);
    END LOOP;
END
$$;

-- The claim's plan is the same for every call; re-planning it each time (a
-- custom plan per LIMIT value) cost as much as running it.
ALTER FUNCTION parecer._claim(text, integer, integer, text) SET plan_cache_mode = force_generic_plan;

-- SQL helpers with a FROM clause are never inlined and are planned on every
-- call; as PL/pgSQL their plans are cached for the session. Same results.
CREATE OR REPLACE FUNCTION parecer._setting(p_name text) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT COALESCE(s.value, s.default_value) FROM parecer._settings s WHERE s.name = p_name);
END
$$;

CREATE OR REPLACE FUNCTION parecer._setting_int(p_name text) RETURNS integer
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT COALESCE(s.value, s.default_value) FROM parecer._settings s WHERE s.name = p_name)::integer;
END
$$;

CREATE OR REPLACE FUNCTION parecer._backoff(p_failures integer) RETURNS interval
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    sched interval[] := parecer._setting('backoff_schedule')::interval[];
BEGIN
    RETURN sched[LEAST(GREATEST(p_failures, 1), cardinality(sched))];
END
$$;

CREATE OR REPLACE FUNCTION parecer._usage_ok(p_usage jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    k text;
BEGIN
    IF jsonb_typeof(p_usage) IS DISTINCT FROM 'object' THEN
        RETURN false;
    END IF;
    FOREACH k IN ARRAY ARRAY['input_tokens', 'cached_input_tokens', 'output_tokens'] LOOP
        IF COALESCE(jsonb_typeof(p_usage -> k), 'null') <> 'null'
           AND (jsonb_typeof(p_usage -> k) <> 'number' OR (p_usage ->> k) !~ '^[0-9]{1,12}$') THEN
            RETURN false;
        END IF;
    END LOOP;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION parecer._cost(p_model text, p_usage jsonb) RETURNS numeric
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (
        SELECT round((GREATEST(COALESCE((p_usage ->> 'input_tokens')::numeric, 0)
                               - COALESCE((p_usage ->> 'cached_input_tokens')::numeric, 0), 0) * p.input_usd_per_mtok
                     + COALESCE((p_usage ->> 'cached_input_tokens')::numeric, 0) * p.cached_input_usd_per_mtok
                     + COALESCE((p_usage ->> 'output_tokens')::numeric, 0) * p.output_usd_per_mtok) / 1000000, 8)
        FROM parecer._model_prices p
        WHERE starts_with(p_model, p.model)
        ORDER BY length(p.model) DESC
        LIMIT 1);
END
$$;

CREATE OR REPLACE FUNCTION parecer._budget_day(p_ts timestamptz DEFAULT now()) RETURNS date
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (p_ts AT TIME ZONE parecer._setting('budget_timezone'))::date;
END
$$;
