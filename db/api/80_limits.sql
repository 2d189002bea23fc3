-- Validate a limit key (a label and a model, never an API key).
CREATE OR REPLACE FUNCTION parecer._limit_key(p_key text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
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

-- Tenant isolation for the shared limiter: with the isolation setting on, a
-- caller that does not serve every client may take from or pause only a key an
-- admin bound to one of its clients (parecer.bind_rate_limit), so a runner of
-- client A can neither drain nor pause a key client B's runners use. Any other
-- key, bound elsewhere, unbound or not there at all, gets the same PR025, and
-- nothing changes. With isolation off: one lookup of the setting, no check.
CREATE OR REPLACE FUNCTION parecer._check_rate_key(p_key text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_ids text[];
BEGIN
    IF (SELECT COALESCE(st.value, st.default_value) FROM parecer._settings st WHERE st.name = 'isolation') = 'off' THEN
        RETURN;
    END IF;
    v_ids := parecer._caller_clients();
    IF v_ids IS NOT NULL AND NOT EXISTS (SELECT FROM parecer._rate_limits r
                                         WHERE r.limit_key = p_key AND r.client_ids && v_ids) THEN
        RAISE EXCEPTION 'limit key "%" is not bound to a client you serve', p_key
            USING ERRCODE = 'PR025',
                  HINT = 'With isolation on, an admin binds each limit key to the clients whose runners use it: SELECT * FROM parecer.bind_rate_limit(''<key>'', ARRAY[''<client_slug>'']); (CLI: parecer limits bind KEY CLIENT...).';
    END IF;
END
$$;

-- The requests-per-day limit of a key (rpd, else setting default_rpd; 0: none),
-- counted per budget_timezone day in the key's row, which the caller holds
-- locked. When today's requests have reached the limit: the seconds until the
-- next budget day begins (the runner pauses the key that long). Otherwise NULL,
-- and when p_grant (the minute buckets grant the request) one more request today.
CREATE OR REPLACE FUNCTION parecer._rate_day_take(p_row parecer._rate_limits, p_now timestamptz, p_grant boolean)
RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    v_rpd   integer := COALESCE(p_row.rpd, parecer._setting_int('default_rpd'));
    v_today date := parecer._budget_day(p_now);
    v_used  integer := CASE WHEN p_row.day = v_today THEN p_row.day_requests ELSE 0 END;
BEGIN
    IF v_rpd > 0 AND v_used >= v_rpd THEN
        RETURN GREATEST(extract(epoch FROM ((v_today + 1)::timestamp AT TIME ZONE parecer._setting('budget_timezone')) - p_now), 1.0);
    END IF;
    IF p_grant THEN
        UPDATE parecer._rate_limits r SET day = v_today, day_requests = v_used + 1 WHERE r.limit_key = p_row.limit_key;
    END IF;
    RETURN NULL;
END
$$;

-- Ask for one request of about `tokens` tokens under a shared limit.
CREATE OR REPLACE FUNCTION parecer.acquire_rate(limit_key text, tokens integer DEFAULT 1000)
RETURNS parecer.rate_grant
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
    PERFORM parecer._check_rate_key(v_key);
    INSERT INTO parecer._rate_limits AS r (limit_key, refilled_at)
    VALUES (v_key, v_now)
    ON CONFLICT ON CONSTRAINT _rate_limits_pkey DO NOTHING;
    SELECT * INTO v_row FROM parecer._rate_limits r WHERE r.limit_key = v_key FOR UPDATE;

    v_rpm := COALESCE(v_row.rpm, parecer._setting_int('default_rpm'));
    v_tpm := COALESCE(v_row.tpm, parecer._setting_int('default_tpm'));
    -- A request bigger than a whole minute of tokens can never be granted: the
    -- item's fault, not a reason to pause the key (the runner fails the item).
    IF tokens > v_tpm THEN
        RAISE EXCEPTION 'prompt too large: a request of % tokens exceeds the % tokens per minute of %', tokens, v_tpm::bigint, v_key
            USING ERRCODE = 'PR016',
                  HINT = 'The item cannot be sent under this limit: mark it failed (retryable => false). Raise the key''s tpm (parecer.set_rate_limit) or lower max_input_tokens.';
    END IF;
    -- Nor is one above the installation's cap on a single request (max_request_tokens).
    IF tokens > parecer._setting_int('max_request_tokens') THEN
        RAISE EXCEPTION 'prompt too large: a request of % tokens exceeds max_request_tokens (%)', tokens,
                        parecer._setting_int('max_request_tokens')
            USING ERRCODE = 'PR016',
                  HINT = 'The item cannot be sent: mark it failed (retryable => false). An admin may raise max_request_tokens (parecer.set_setting).';
    END IF;
    v_need := tokens;
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

    v_wait := parecer._rate_day_take(v_row, v_now, v_req >= 1.0 AND v_tok >= v_need); IF v_wait IS NOT NULL THEN RETURN ROW(false, v_wait)::parecer.rate_grant; END IF;
    IF v_req >= 1.0 AND v_tok >= v_need THEN
        UPDATE parecer._rate_limits r
           SET req_tokens = v_req - 1.0, tok_tokens = v_tok - v_need, refilled_at = v_now,
               granted = r.granted + 1, updated_at = v_now
         WHERE r.limit_key = v_key;
        RETURN ROW(true, 0.0)::parecer.rate_grant;
    END IF;

    v_wait := GREATEST((1.0 - v_req) * 60.0 / v_rpm, (v_need - v_tok) * 60.0 / v_tpm, 0.01);
    UPDATE parecer._rate_limits r SET req_tokens = v_req, tok_tokens = v_tok, refilled_at = v_now,
                                      waited = r.waited + 1
     WHERE r.limit_key = v_key;
    RETURN ROW(false, v_wait)::parecer.rate_grant;
END
$$;
COMMENT ON FUNCTION parecer.acquire_rate(text, integer) IS
'Shared rate limiter: take one request and `tokens` tokens from the buckets of limit_key (e.g. ''default:gpt-5-mini''), or learn how long to wait. Every runner on every machine consults the same row, so together they never exceed rpm/tpm, nor rpd requests per budget_timezone day (then the wait lasts until the next day begins). With the isolation setting on, a caller that does not serve every client may use only a key bound to one of its clients (parecer.bind_rate_limit). Errors: PR010, PR016 tokens above the key''s tokens per minute or the max_request_tokens setting (the request can never be granted), PR025 key not bound to a client you serve.';

-- Feed back what the provider said: 429 Retry-After pauses every runner of the key; remaining headers; actual tokens.
CREATE OR REPLACE FUNCTION parecer.report_rate(
    limit_key           text,
    retry_after_seconds double precision DEFAULT NULL,
    remaining_requests  integer DEFAULT NULL,
    remaining_tokens    integer DEFAULT NULL,
    reset_seconds       double precision DEFAULT NULL,
    estimated_tokens    integer DEFAULT NULL,
    actual_tokens       integer DEFAULT NULL,
    reason              text DEFAULT NULL
) RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_key   text := parecer._limit_key(report_rate.limit_key);
    v_now   timestamptz := clock_timestamp();
    v_pause timestamptz;
    v_cap   integer := parecer._setting_int('max_pause_seconds');
BEGIN
    IF retry_after_seconds < 0 OR retry_after_seconds > 86400 OR reset_seconds < 0 OR reset_seconds > 86400 THEN
        PERFORM parecer._invalid('retry_after_seconds and reset_seconds must be between 0 and 86400', 'Pass the provider''s Retry-After in seconds.');
    END IF;
    PERFORM parecer._check_rate_key(v_key);
    INSERT INTO parecer._rate_limits AS r (limit_key) VALUES (v_key) ON CONFLICT ON CONSTRAINT _rate_limits_pkey DO NOTHING;
    -- One call pauses the key for at most max_pause_seconds (a runner cannot stop the others for a day).
    IF retry_after_seconds IS NOT NULL THEN
        v_pause := v_now + make_interval(secs => LEAST(retry_after_seconds, v_cap));
    ELSIF remaining_requests = 0 AND reset_seconds IS NOT NULL THEN
        v_pause := v_now + make_interval(secs => LEAST(reset_seconds, v_cap));
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
'Feed back the provider''s answer for limit_key: a 429''s Retry-After pauses every runner of the key (then the rate ramps back), x-ratelimit-remaining-* = 0 pauses until reset, actual vs estimated tokens corrects the token bucket. A pause lasts at most the max_pause_seconds setting. With the isolation setting on, a caller that does not serve every client may report only on a key bound to one of its clients (parecer.bind_rate_limit). Returns the pause end (NULL: not paused). Errors: PR010, PR025 key not bound to a client you serve.';

-- The shared limits, as runners see them.
-- security_barrier, filtered by the caller's clients as the other reader views.
CREATE OR REPLACE VIEW parecer.rate_limits WITH (security_barrier = true) AS
SELECT r.limit_key,
       COALESCE(r.rpm, (SELECT COALESCE(st.value, st.default_value)::integer FROM parecer._settings st
                        WHERE st.name = 'default_rpm')) AS rpm,
       COALESCE(r.tpm, (SELECT COALESCE(st.value, st.default_value)::integer FROM parecer._settings st
                        WHERE st.name = 'default_tpm')) AS tpm,
       r.rpm IS NULL AND r.tpm IS NULL AND r.rpd IS NULL AS is_default,
       CASE WHEN r.paused_until > clock_timestamp() THEN r.paused_until END AS paused_until,
       CASE WHEN r.paused_until > clock_timestamp() THEN r.pause_reason END AS pause_reason,
       r.granted, r.throttled, r.observed_remaining_requests, r.observed_remaining_tokens, r.observed_at,
       r.updated_at, r.waited,
       COALESCE(r.rpd, (SELECT COALESCE(st.value, st.default_value)::integer FROM parecer._settings st
                        WHERE st.name = 'default_rpd')) AS rpd,
       CASE WHEN r.day = (clock_timestamp() AT TIME ZONE (SELECT COALESCE(st.value, st.default_value) FROM parecer._settings st
                                                          WHERE st.name = 'budget_timezone'))::date
            THEN r.day_requests ELSE 0 END AS requests_today,
       r.client_slugs
FROM parecer._rate_limits r
WHERE (SELECT sc.all_clients FROM parecer._caller_scope sc) OR r.client_ids && (SELECT sc.client_ids FROM parecer._caller_scope sc)::text[]
ORDER BY r.limit_key;
COMMENT ON VIEW parecer.rate_limits IS 'Shared rate limits per provider key label + model: configured rpm/tpm/rpd (rpd 0: no daily limit), current pause, requests granted, 429s reported (throttled), requests the limiter made wait (waited), requests granted today (budget_timezone day), client_slugs: the clients the key is bound to (parecer.bind_rate_limit). With the isolation setting on, a reader sees only keys bound to its clients.';

-- Set (or with NULLs reset to the defaults) the limits of a key + model.
CREATE OR REPLACE FUNCTION parecer.set_rate_limit(limit_key text, rpm integer DEFAULT NULL, tpm integer DEFAULT NULL,
                                                  rpd integer DEFAULT NULL)
RETURNS SETOF parecer.rate_limits
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_key text := parecer._limit_key(set_rate_limit.limit_key);
BEGIN
    IF rpm IS NOT NULL AND (rpm < 1 OR rpm > 1000000) OR tpm IS NOT NULL AND (tpm < 100 OR tpm > 1000000000)
       OR rpd IS NOT NULL AND (rpd < 1 OR rpd > 100000000) THEN
        PERFORM parecer._invalid('rpm must be 1..1000000, tpm 100..1000000000 and rpd 1..100000000',
                                 'Seed 003 ran at 80% of the official limits: e.g. rpm => 400, tpm => 24000, rpd => 160 (later 1000).');
    END IF;
    INSERT INTO parecer._rate_limits AS r (limit_key, rpm, tpm, rpd) VALUES (v_key, rpm, tpm, rpd)
    ON CONFLICT ON CONSTRAINT _rate_limits_pkey DO UPDATE
        SET rpm = EXCLUDED.rpm, tpm = EXCLUDED.tpm, rpd = EXCLUDED.rpd, updated_at = now();
    RETURN QUERY SELECT * FROM parecer.rate_limits l WHERE l.limit_key = v_key;
END
$$;
COMMENT ON FUNCTION parecer.set_rate_limit(text, integer, integer, integer) IS
'Configure requests and tokens per minute and requests per day (budget_timezone day) for a provider key label + model (NULL: the default_rpm / default_tpm / default_rpd settings). Errors: PR010.';

-- Bind a key to the clients whose runners use it (isolation on: only their
-- runners may take from or pause it).
CREATE OR REPLACE FUNCTION parecer.bind_rate_limit(limit_key text, client_slugs text[])
RETURNS SETOF parecer.rate_limits
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_key   text := parecer._limit_key(bind_rate_limit.limit_key);
    v_ids   text[];
    v_slugs text[];
BEGIN
    IF bind_rate_limit.client_slugs IS NOT NULL
       AND (array_ndims(bind_rate_limit.client_slugs) > 1 OR array_position(bind_rate_limit.client_slugs, NULL) IS NOT NULL) THEN
        PERFORM parecer._invalid('client_slugs must be a one-dimensional array without NULLs',
                                 'Pass e.g. ARRAY[''acme''] (NULL or an empty array: bound to no client).');
    END IF;
    SELECT array_agg(c.client_id ORDER BY c.client_slug), array_agg(c.client_slug ORDER BY c.client_slug)
      INTO v_ids, v_slugs
    FROM (SELECT DISTINCT x FROM unnest(bind_rate_limit.client_slugs) x) u
    CROSS JOIN LATERAL parecer._client(u.x) c;   -- PR001 for an unknown slug
    INSERT INTO parecer._rate_limits AS r (limit_key, client_ids, client_slugs) VALUES (v_key, v_ids, v_slugs)
    ON CONFLICT ON CONSTRAINT _rate_limits_pkey DO UPDATE
        SET client_ids = EXCLUDED.client_ids, client_slugs = EXCLUDED.client_slugs, updated_at = now();
    RETURN QUERY SELECT * FROM parecer.rate_limits l WHERE l.limit_key = v_key;
END
$$;
COMMENT ON FUNCTION parecer.bind_rate_limit(text, text[]) IS
'Bind a limit key to the clients whose runners use it, replacing its previous clients (NULL or empty: none); its limits and state stay. With the isolation setting on, a runner that does not serve every client may call acquire_rate and report_rate only on a key bound to one of its clients (else PR025); a key bound to several clients is shared by their runners (one provider key, one limit). With isolation off the binding is not checked. Errors: PR001 unknown client, PR010.';
