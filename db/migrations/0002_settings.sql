-- 0002: settings. One row per knob; value NULL means "the default applies".
CREATE TABLE parecer._settings (
    name          text PRIMARY KEY,
    value         text,
    default_value text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('interval[]', 'integer', 'numeric', 'text')),
    min_value     numeric,
    max_value     numeric,
    description   text NOT NULL,
    updated_at    timestamptz,
    updated_by    text
);

INSERT INTO parecer._settings (name, default_value, kind, min_value, max_value, description) VALUES
    ('backoff_schedule', '{"1 minute","5 minutes","15 minutes"}', 'interval[]', NULL, NULL,
     'Delay before retry n after the n-th failed attempt (1-based); the last entry repeats.'),
    ('max_attempts', '4', 'integer', 1, 100,
     'Attempts an item gets before it fails terminally (seed 000: 4).'),
    ('max_sessions_cap', '500', 'integer', 1, 1000000,
     'Upper bound for start_run(max_sessions => ...).'),
    ('lease_seconds', '300', 'integer', 5, 86400,
     'Default lease a claim hands out; heartbeats extend it. An expired lease makes the item claimable again.');

-- Current value of a setting (the default when unset).
CREATE FUNCTION parecer._setting(p_name text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT COALESCE(s.value, s.default_value) FROM parecer._settings s WHERE s.name = p_name
$$;

-- Integer setting.
CREATE FUNCTION parecer._setting_int(p_name text) RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT parecer._setting(p_name)::integer $$;

-- Backoff after the n-th failure: backoff_schedule[n], the last entry repeating.
CREATE FUNCTION parecer._backoff(p_failures integer) RETURNS interval
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT sched[LEAST(GREATEST(p_failures, 1), cardinality(sched))]
    FROM (SELECT parecer._setting('backoff_schedule')::interval[] AS sched) s
$$;

-- The settings an operator can see and change (value shows the default when unset).
CREATE VIEW parecer.settings AS
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
CREATE FUNCTION parecer.set_setting(name text, value text)
RETURNS SETOF parecer.settings
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_def parecer._settings;
    v_iv  interval[];
    v_num numeric;
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
                RAISE EXCEPTION 'invalid value for %: %', v_def.name, left(set_setting.value, 100)
                    USING ERRCODE = 'PR009',
                          HINT = 'Give a non-empty array of positive intervals up to 30 days, e.g. ''{1 minute,5 minutes,15 minutes}''.';
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
                RAISE EXCEPTION 'invalid value for %: %', v_def.name, left(set_setting.value, 100)
                    USING ERRCODE = 'PR009',
                          HINT = pg_catalog.format('%s must be %s between %s and %s.', v_def.name,
                                    CASE v_def.kind WHEN 'integer' THEN 'an integer' ELSE 'a number' END,
                                    COALESCE(v_def.min_value::text, '-inf'), COALESCE(v_def.max_value::text, 'inf'));
            END IF;
            -- An integer is stored without a fractional part ('4.0' -> '4'): _setting_int casts it to integer.
            set_setting.value := CASE WHEN v_def.kind = 'integer' THEN trunc(v_num)::text ELSE v_num::text END;
        END IF;
    END IF;

    UPDATE parecer._settings s
       SET value = set_setting.value, updated_at = now(), updated_by = session_user::text
     WHERE s.name = v_def.name;

    RETURN QUERY SELECT * FROM parecer.settings st WHERE st.name = v_def.name;
END
$$;
COMMENT ON FUNCTION parecer.set_setting(text, text) IS
'Change a setting; NULL restores the default. Errors: PR009 unknown setting or invalid value.';
