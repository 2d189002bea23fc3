-- Settings: the knobs an operator turns, and the helpers every other file reads them with.
--
-- A setting is a row of parecer._settings; value NULL means "the default applies".
-- The catalogue, db/api/settings.json (name, kind, default, bounds, description),
-- is the one place a knob is declared: applying this file adds new knobs and
-- refreshes defaults, bounds and descriptions, and keeps every value an operator set.

INSERT INTO parecer._settings AS s (name, default_value, kind, min_value, max_value, description)
SELECT c.name, c."default", c.kind, c.min, c.max, c.description
-- db/api/settings.json, which parecer db migrate passes in as this setting
FROM jsonb_to_recordset(pg_catalog.current_setting('parecer.settings_catalogue')::jsonb)
     AS c(name text, "default" text, kind text, min numeric, max numeric, description text)
ON CONFLICT (name) DO UPDATE
    SET default_value = EXCLUDED.default_value, kind = EXCLUDED.kind, min_value = EXCLUDED.min_value,
        max_value = EXCLUDED.max_value, description = EXCLUDED.description;

-- Raise PR010 (invalid argument) with a hint.
CREATE OR REPLACE FUNCTION parecer._invalid(p_message text, p_hint text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION '%', p_message USING ERRCODE = 'PR010', HINT = p_hint;
END
$$;

-- Raise PR009 (invalid value for a setting) with a hint.
CREATE OR REPLACE FUNCTION parecer._raise_invalid_setting(p_name text, p_value text, p_hint text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION 'invalid value for %: %', p_name, left(p_value, 100) USING ERRCODE = 'PR009', HINT = p_hint;
END
$$;

-- Raise an error given as data: the error a batch function recorded for one of
-- its items (sqlstate, message, detail and hint, both may be NULL), raised by the
-- function's single form exactly as it would have raised it itself.
CREATE OR REPLACE FUNCTION parecer._raise(p_sqlstate text, p_message text, p_detail text, p_hint text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_detail IS NOT NULL AND p_hint IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = p_sqlstate, MESSAGE = p_message, DETAIL = p_detail, HINT = p_hint;
    ELSIF p_detail IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = p_sqlstate, MESSAGE = p_message, DETAIL = p_detail;
    ELSIF p_hint IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = p_sqlstate, MESSAGE = p_message, HINT = p_hint;
    END IF;
    RAISE EXCEPTION USING ERRCODE = p_sqlstate, MESSAGE = p_message;
END
$$;

-- Current value of a setting (the default when unset). PL/pgSQL, not SQL: a SQL
-- helper with a FROM clause is never inlined and is planned on every call; here
-- the plan is cached for the session.
CREATE OR REPLACE FUNCTION parecer._setting(p_name text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT COALESCE(s.value, s.default_value) FROM parecer._settings s WHERE s.name = p_name);
END
$$;

-- A setting as an interval, as an integer (SQL: inlined, the cost of _setting alone).
CREATE OR REPLACE FUNCTION parecer._setting_interval(p_name text) RETURNS interval
LANGUAGE sql STABLE AS $$ SELECT parecer._setting(p_name)::interval $$;
CREATE OR REPLACE FUNCTION parecer._setting_int(p_name text) RETURNS integer
LANGUAGE sql STABLE AS $$ SELECT parecer._setting(p_name)::integer $$;

-- Backoff after the n-th failure: backoff_schedule[n], the last entry repeating.
CREATE OR REPLACE FUNCTION parecer._backoff(p_failures integer) RETURNS interval
LANGUAGE plpgsql STABLE AS $$
DECLARE
    sched interval[] := parecer._setting('backoff_schedule')::interval[];
BEGIN
    RETURN sched[LEAST(GREATEST(p_failures, 1), cardinality(sched))];
END
$$;

-- The settings an operator can see and change (value shows the default when unset).
CREATE OR REPLACE VIEW parecer.settings AS
SELECT s.name,
       COALESCE(s.value, s.default_value) AS value,
       s.default_value                    AS "default",
       s.value IS NULL                    AS is_default,
       s.kind,
       s.description,
       s.updated_at,
       s.updated_by
FROM parecer._settings s
ORDER BY s.name;
COMMENT ON VIEW parecer.settings IS 'parecer settings: name, current value, default, description. Change with parecer.set_setting(name, value).';

-- Change a setting (NULL value: back to the default). Raises PR009 on an unknown name or a bad value.
CREATE OR REPLACE FUNCTION parecer.set_setting(name text, value text)
RETURNS SETOF parecer.settings
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_def parecer._settings;
    v_iv  interval[];
    v_num numeric;
    v_int interval;
BEGIN
    SELECT * INTO v_def FROM parecer._settings s WHERE s.name = set_setting.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown setting "%"', left(set_setting.name, 100)
            USING ERRCODE = 'PR009',
                  HINT = 'SELECT name FROM parecer.settings lists the settings.';
    END IF;

    IF set_setting.value IS NOT NULL THEN
        IF v_def.kind = 'interval[]' THEN
            BEGIN
                v_iv := set_setting.value::interval[];
            EXCEPTION WHEN OTHERS THEN
                v_iv := NULL;
            END;
            IF v_iv IS NULL OR cardinality(v_iv) = 0 OR cardinality(v_iv) > 100
               OR array_ndims(v_iv) <> 1           -- before array_position, which refuses 2-D arrays (0A000)
               OR array_position(v_iv, NULL) IS NOT NULL
               OR EXISTS (SELECT FROM unnest(v_iv) d WHERE d <= interval '0' OR d > interval '30 days') THEN
                PERFORM parecer._raise_invalid_setting(v_def.name, set_setting.value,
                    'Give a non-empty array of positive intervals up to 30 days, e.g. ''{1 minute,5 minutes,15 minutes}''.');
            END IF;
            -- Stored 1-based ('[0:1]={...}' would make _backoff index past the array and return NULL).
            set_setting.value := ARRAY(SELECT d FROM unnest(v_iv) WITH ORDINALITY u(d, o) ORDER BY o)::text;
        ELSIF v_def.kind IN ('integer', 'numeric') THEN
            BEGIN
                v_num := set_setting.value::numeric;
            EXCEPTION WHEN OTHERS THEN
                v_num := NULL;
            END;
            IF v_num IS NULL OR v_num = 'NaN'::numeric
               OR (v_def.kind = 'integer' AND v_num <> trunc(v_num))
               OR (v_def.min_value IS NOT NULL AND v_num < v_def.min_value)
               OR (v_def.max_value IS NOT NULL AND v_num > v_def.max_value) THEN
                PERFORM parecer._raise_invalid_setting(v_def.name, set_setting.value,
                    pg_catalog.format('%s must be %s between %s and %s.', v_def.name,
                                      CASE v_def.kind WHEN 'integer' THEN 'an integer' ELSE 'a number' END,
                                      COALESCE(v_def.min_value::text, '-inf'), COALESCE(v_def.max_value::text, 'inf')));
            END IF;
            -- An integer is stored without a fractional part ('4.0' -> '4'): _setting_int casts it to integer.
            set_setting.value := CASE WHEN v_def.kind = 'integer' THEN trunc(v_num)::text ELSE v_num::text END;
        ELSIF v_def.kind = 'interval' THEN
            BEGIN
                v_int := set_setting.value::interval;
            EXCEPTION WHEN OTHERS THEN
                v_int := NULL;
            END;
            -- bounds in seconds (min_value, max_value); months count as 30 days
            IF v_int IS NULL
               OR (v_def.min_value IS NOT NULL AND extract(epoch FROM v_int) < v_def.min_value)
               OR (v_def.max_value IS NOT NULL AND extract(epoch FROM v_int) > v_def.max_value) THEN
                PERFORM parecer._raise_invalid_setting(v_def.name, set_setting.value,
                    pg_catalog.format('%s must be an interval between %s and %s, e.g. ''24 hours''.', v_def.name,
                                      COALESCE(make_interval(secs => v_def.min_value)::text, '-inf'),
                                      COALESCE(make_interval(secs => v_def.max_value)::text, 'inf')));
            END IF;
            set_setting.value := v_int::text;
        ELSIF v_def.name = 'isolation' AND set_setting.value NOT IN ('on', 'off') THEN
            PERFORM parecer._raise_invalid_setting(v_def.name, set_setting.value,
                                                   'isolation is on (multi-tenant) or off (single tenant).');
        ELSIF v_def.name IN ('single_tenant_slug', 'single_tenant_name')
              AND (btrim(set_setting.value) = '' OR length(set_setting.value) > 200) THEN
            PERFORM parecer._raise_invalid_setting(v_def.name, set_setting.value, 'Give 1-200 characters, e.g. ''lia''.');
        ELSIF v_def.name = 'display_currency' AND set_setting.value !~ '^[A-Z]{3}$' THEN
            PERFORM parecer._raise_invalid_setting(v_def.name, set_setting.value,
                                                   'Use an ISO 4217 code in capitals, e.g. BRL, and set usd_exchange_rate to match.');
        ELSIF v_def.name = 'budget_timezone'
              AND NOT EXISTS (SELECT FROM pg_catalog.pg_timezone_names z WHERE z.name = set_setting.value) THEN
            PERFORM parecer._raise_invalid_setting(v_def.name, set_setting.value,
                                                   'Use a time zone name from pg_timezone_names, e.g. UTC or America/Sao_Paulo.');
        END IF;
    END IF;

    UPDATE parecer._settings s
       SET value = set_setting.value, updated_at = now(), updated_by = session_user::text
     WHERE s.name = v_def.name;

    -- Lowering max_attempts: items waiting for a retry they no longer have fail
    -- terminally (claim would otherwise take them for attempts they do not have).
    IF v_def.name = 'max_attempts' THEN
        UPDATE parecer.analyses a
           SET status = 'failed', next_retry_at = NULL, updated_at = now(),
               error = COALESCE(a.error, 'failed') || ' (terminal: max_attempts lowered to '
                       || parecer._setting_int('max_attempts') || ')'
         WHERE a.status = 'pending' AND a.retry_count >= parecer._setting_int('max_attempts');
    END IF;

    RETURN QUERY SELECT * FROM parecer.settings st WHERE st.name = v_def.name;
END
$$;
COMMENT ON FUNCTION parecer.set_setting(text, text) IS
'Change a setting; NULL restores the default. Errors: PR009 unknown setting or invalid value.';
