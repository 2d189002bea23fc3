-- 0005: the work queue. One row per analysis = (session, script version,
-- analysis version tag); runs record what an operator asked for; attempts keep
-- every claim's history.

CREATE TABLE parecer.runs (
    run_id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id            text NOT NULL,
    client_slug          text NOT NULL,
    script_id            bigint NOT NULL REFERENCES parecer.scripts,
    analysis_version_tag text NOT NULL,
    params               jsonb NOT NULL,
    eligible             integer NOT NULL,
    already_done         integer NOT NULL,
    already_queued       integer NOT NULL,
    selected             integer NOT NULL,
    enqueued             integer NOT NULL DEFAULT 0,
    reset                integer NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    created_by           text NOT NULL DEFAULT session_user
);

CREATE TABLE parecer.analyses (
    analysis_id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    client_id            text NOT NULL,
    client_slug          text NOT NULL,
    session_id           text NOT NULL,
    script_id            bigint NOT NULL REFERENCES parecer.scripts,
    analysis_version_tag text NOT NULL,
    status               text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'processing', 'done', 'failed')),
    -- Denormalised from the source so the claim order has an index to walk.
    session_ended_at     timestamptz,
    retry_count          integer NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    next_retry_at        timestamptz,
    claims               integer NOT NULL DEFAULT 0,   -- claims ever made (attempt numbers)
    worker               text,
    lease_token          uuid,
    lease_expires_at     timestamptz,
    report               jsonb,
    error                text,
    model                text,
    prompt_hash          text,
    usage                jsonb,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    processed_at         timestamptz,
    CONSTRAINT analyses_item_key UNIQUE (session_id, script_id, analysis_version_tag),
    -- A lease exists exactly while an item is processing.
    CHECK ((status = 'processing') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CHECK (status <> 'done' OR (report IS NOT NULL AND next_retry_at IS NULL)),
    CHECK (status <> 'processing' OR next_retry_at IS NULL)
);
-- The claim walks this index in order: pending work and retryable failures.
CREATE INDEX analyses_claim_idx ON parecer.analyses (session_ended_at DESC NULLS LAST, created_at DESC)
    WHERE status = 'pending' OR (status = 'failed' AND next_retry_at IS NOT NULL);
-- Lease expiry finds dead runners' items here.
CREATE INDEX analyses_lease_idx ON parecer.analyses (lease_expires_at) WHERE status = 'processing';
CREATE INDEX analyses_client_idx ON parecer.analyses (client_id, script_id, status);
CREATE INDEX analyses_processed_idx ON parecer.analyses (processed_at) WHERE status = 'done';

-- Which analyses a run selected (an analysis already queued by an earlier run
-- belongs to both).
CREATE TABLE parecer.run_items (
    run_id      bigint NOT NULL REFERENCES parecer.runs ON DELETE CASCADE,
    analysis_id uuid NOT NULL REFERENCES parecer.analyses ON DELETE CASCADE,
    PRIMARY KEY (run_id, analysis_id)
);
CREATE INDEX run_items_analysis_idx ON parecer.run_items (analysis_id);

CREATE TABLE parecer._attempts (
    analysis_id  uuid NOT NULL REFERENCES parecer.analyses ON DELETE CASCADE,
    attempt      integer NOT NULL,
    worker       text NOT NULL,
    lease_token  uuid NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    outcome      text CHECK (outcome IN ('done', 'failed', 'released', 'expired', 'reset')),
    error        text,
    model        text,
    prompt_hash  text,
    usage        jsonb,
    PRIMARY KEY (analysis_id, attempt)
);
CREATE INDEX attempts_finished_idx ON parecer._attempts (finished_at);

-- The outcome of a state change on an item.
CREATE TYPE parecer.item_outcome AS (
    status        text,
    retry_count   integer,
    next_retry_at timestamptz
);

-- Validate a tag filter; returns (mode, tags). PR004 on any other shape.
CREATE FUNCTION parecer._tag_filter(p_filter jsonb, OUT mode text, OUT tags text[])
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_hint constant text := 'Use {"mode":"none"} (contacts without tags), {"mode":"ignore"} (tags do not matter), or {"mode":"any_of"|"all_of"|"none_of","tags":["tag", ...]} with 1-1000 non-empty tags.';
BEGIN
    IF p_filter IS NULL OR jsonb_typeof(p_filter) <> 'object'
       OR EXISTS (SELECT FROM jsonb_object_keys(p_filter) k WHERE k NOT IN ('mode', 'tags'))
       OR jsonb_typeof(p_filter -> 'mode') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'invalid tag filter' USING ERRCODE = 'PR004', HINT = v_hint;
    END IF;
    mode := p_filter ->> 'mode';
    IF mode IN ('none', 'ignore') THEN
        IF p_filter ? 'tags' THEN
            RAISE EXCEPTION 'tag filter mode "%" takes no tags', mode USING ERRCODE = 'PR004', HINT = v_hint;
        END IF;
        tags := '{}';
    ELSIF mode IN ('any_of', 'all_of', 'none_of') THEN
        IF jsonb_typeof(p_filter -> 'tags') IS DISTINCT FROM 'array'
           OR jsonb_array_length(p_filter -> 'tags') NOT BETWEEN 1 AND 1000
           OR EXISTS (SELECT FROM jsonb_array_elements(p_filter -> 'tags') e
                      WHERE jsonb_typeof(e) <> 'string' OR btrim(e #>> '{}') = '' OR length(e #>> '{}') > 200) THEN
            RAISE EXCEPTION 'tag filter mode "%" needs a non-empty array of tags', mode USING ERRCODE = 'PR004', HINT = v_hint;
        END IF;
        SELECT array_agg(DISTINCT e) INTO tags FROM jsonb_array_elements_text(p_filter -> 'tags') e;
    ELSE
        RAISE EXCEPTION 'unknown tag filter mode "%"', left(mode, 50) USING ERRCODE = 'PR004', HINT = v_hint;
    END IF;
END
$$;

-- Sessions of a client worth analysing: ended, enough messages, tag filter.
CREATE FUNCTION parecer.eligible_sessions(
    client_slug         text,
    min_messages        integer DEFAULT 20,
    tag_filter          jsonb DEFAULT '{"mode":"none"}',
    ended_after         timestamptz DEFAULT NULL,
    ended_before        timestamptz DEFAULT NULL,
    require_agent_reply boolean DEFAULT false
) RETURNS TABLE (session_id text, ended_at timestamptz, message_count bigint)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_client record;
    v_filter record;
    v_tag_sql text;
BEGIN
    v_client := parecer._client(eligible_sessions.client_slug);
    v_filter := parecer._tag_filter(tag_filter);
    IF min_messages IS NULL OR min_messages < 1 OR min_messages > 1000000 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid min_messages: %s', COALESCE(min_messages::text, 'NULL')),
                                 'min_messages must be between 1 and 1000000.');
    END IF;
    -- Only the predicate the filter needs, so the planner sees a simple query.
    v_tag_sql := CASE v_filter.mode
        WHEN 'none'    THEN 'AND NOT EXISTS (SELECT FROM parecer.source_contact_tags t WHERE t.contact_id = s.contact_id)'
        WHEN 'any_of'  THEN 'AND EXISTS (SELECT FROM parecer.source_contact_tags t WHERE t.contact_id = s.contact_id AND t.tag = ANY ($5))'
        WHEN 'none_of' THEN 'AND NOT EXISTS (SELECT FROM parecer.source_contact_tags t WHERE t.contact_id = s.contact_id AND t.tag = ANY ($5))'
        WHEN 'all_of'  THEN 'AND (SELECT count(DISTINCT t.tag) FROM parecer.source_contact_tags t WHERE t.contact_id = s.contact_id AND t.tag = ANY ($5)) = cardinality($5)'
        ELSE '' END;
    RETURN QUERY EXECUTE
        'SELECT s.session_id, s.ended_at, count(*)::bigint
         FROM parecer.source_sessions s
         JOIN parecer.source_messages m ON m.session_id = s.session_id
         WHERE s.client_id = $1
           AND s.ended_at IS NOT NULL
           AND ($2::timestamptz IS NULL OR s.ended_at >= $2)
           AND ($3::timestamptz IS NULL OR s.ended_at < $3) '
        || v_tag_sql ||
        ' GROUP BY s.session_id, s.ended_at
          HAVING count(*) >= $4 AND (NOT $6 OR bool_or(m.from_me))
          ORDER BY s.ended_at DESC, s.session_id'
    USING v_client.client_id, ended_after, ended_before, min_messages, v_filter.tags,
          COALESCE(require_agent_reply, false);
END
$$;
COMMENT ON FUNCTION parecer.eligible_sessions(text, integer, jsonb, timestamptz, timestamptz, boolean) IS
'Ended sessions of a client with at least min_messages messages whose contact passes tag_filter ({"mode":"none"} = contact without tags), optionally ended in [ended_after, ended_before) and with an agent reply. Newest first. Errors: PR001, PR004, PR010.';

-- Queue sessions for one script version and tag. Without force, existing items are skipped;
-- with force, they are reset to pending whatever their state (done included).
CREATE FUNCTION parecer.enqueue(
    session_ids          text[],
    script_id            bigint,
    analysis_version_tag text DEFAULT 'v1',
    force_reprocess      boolean DEFAULT false,
    run_id               bigint DEFAULT NULL
) RETURNS TABLE (enqueued integer, reset integer, skipped integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_script  parecer.scripts;
    v_ids     text[];
    v_missing text[];
    v_enq     integer := 0;
    v_reset   integer := 0;
    v_total   integer;
BEGIN
    SELECT * INTO v_script FROM parecer.scripts s WHERE s.script_id = enqueue.script_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown script_id %', COALESCE(enqueue.script_id::text, 'NULL')
            USING ERRCODE = 'PR002', HINT = 'parecer.resolve_script(client_slug, script_key) gives a script_id.';
    END IF;
    IF analysis_version_tag IS NULL OR analysis_version_tag !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$' THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid analysis_version_tag "%s"', COALESCE(left(analysis_version_tag, 50), 'NULL')),
                                 'A tag is 1-32 characters: letters, digits, "_", "." or "-" (e.g. v1).');
    END IF;
    IF session_ids IS NULL OR array_ndims(session_ids) > 1   -- array_position refuses 2-D arrays (0A000)
       OR array_position(session_ids, NULL) IS NOT NULL THEN
        PERFORM parecer._invalid('session_ids must be a one-dimensional array without NULLs', 'Pass e.g. ARRAY[''s1'',''s2''] (an empty array enqueues nothing).');
    END IF;
    IF enqueue.run_id IS NOT NULL AND NOT EXISTS (
        SELECT FROM parecer.runs r WHERE r.run_id = enqueue.run_id AND r.script_id = v_script.script_id) THEN
        RAISE EXCEPTION 'unknown run % for script_id %', enqueue.run_id, v_script.script_id
            USING ERRCODE = 'PR012', HINT = 'Runs are created by parecer.start_run; leave run_id NULL otherwise.';
    END IF;
    SELECT array_agg(DISTINCT x) INTO v_ids FROM unnest(session_ids) x;
    v_ids := COALESCE(v_ids, '{}');
    v_total := cardinality(v_ids);

    SELECT array_agg(x) INTO v_missing
    FROM (SELECT x FROM unnest(v_ids) x
          WHERE NOT EXISTS (SELECT FROM parecer.source_sessions s
                            WHERE s.session_id = x AND s.client_id = v_script.client_id)
          LIMIT 5) m;
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'unknown session(s) for client "%": %', v_script.client_slug, left(array_to_string(v_missing, ', '), 300)
            USING ERRCODE = 'PR014', HINT = 'Every session id must be a session of the script''s client, e.g. from parecer.eligible_sessions(client_slug).';
    END IF;

    WITH src AS (
        SELECT s.session_id, s.ended_at
        FROM parecer.source_sessions s
        WHERE s.session_id = ANY (v_ids) AND s.client_id = v_script.client_id
    ), ins AS (
        INSERT INTO parecer.analyses AS a (client_id, client_slug, session_id, script_id, analysis_version_tag, session_ended_at)
        SELECT v_script.client_id, v_script.client_slug, src.session_id, v_script.script_id,
               enqueue.analysis_version_tag, src.ended_at
        FROM src
        ON CONFLICT ON CONSTRAINT analyses_item_key DO UPDATE
            SET status = 'pending', report = NULL, error = NULL, retry_count = 0, next_retry_at = NULL,
                processed_at = NULL, started_at = NULL, worker = NULL, lease_token = NULL,
                lease_expires_at = NULL, model = NULL, prompt_hash = NULL, usage = NULL,
                session_ended_at = EXCLUDED.session_ended_at, updated_at = now()
            WHERE force_reprocess
        RETURNING a.analysis_id, (a.xmax = 0) AS inserted
    ), runlink AS (
        INSERT INTO parecer.run_items (run_id, analysis_id)
        SELECT enqueue.run_id, a.analysis_id
        FROM parecer.analyses a
        WHERE enqueue.run_id IS NOT NULL
          AND a.session_id = ANY (v_ids) AND a.script_id = v_script.script_id
          AND a.analysis_version_tag = enqueue.analysis_version_tag
        UNION
        SELECT enqueue.run_id, ins.analysis_id FROM ins WHERE enqueue.run_id IS NOT NULL
        ON CONFLICT DO NOTHING
    ), closeatt AS (
        -- A forced reset ends the attempt of an item that was in flight.
        UPDATE parecer._attempts t SET outcome = 'reset', finished_at = now(), error = 'reset by enqueue(force_reprocess)'
        FROM ins
        WHERE force_reprocess AND NOT ins.inserted AND t.analysis_id = ins.analysis_id AND t.outcome IS NULL
    )
    SELECT count(*) FILTER (WHERE ins.inserted), count(*) FILTER (WHERE NOT ins.inserted)
    INTO v_enq, v_reset
    FROM ins;

    IF v_enq + v_reset > 0 THEN
        -- One small notification per call, never per row.
        PERFORM pg_notify('parecer_work', json_build_object('client', v_script.client_slug, 'n', v_enq + v_reset)::text);
    END IF;
    RETURN QUERY SELECT v_enq, v_reset, v_total - v_enq - v_reset;
END
$$;
COMMENT ON FUNCTION parecer.enqueue(text[], bigint, text, boolean, bigint) IS
'Queue sessions for a script version and analysis tag: new items are inserted pending, existing ones skipped, or with force_reprocess reset to pending whatever their state. One NOTIFY parecer_work per call. Errors: PR002 unknown script, PR010 bad argument, PR012 unknown run, PR014 unknown session.';

-- Give back expired leases: the runner died; that counts as a failed attempt.
CREATE FUNCTION parecer._expire_leases() RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_max integer := parecer._setting_int('max_attempts');
    v_n   integer;
BEGIN
    WITH x AS MATERIALIZED (
        SELECT a.analysis_id
        FROM parecer.analyses a
        WHERE a.status = 'processing' AND a.lease_expires_at < now()
        ORDER BY a.lease_expires_at
        LIMIT 1000
        FOR UPDATE SKIP LOCKED
    ), u AS (
        UPDATE parecer.analyses a
           SET status = 'failed',
               retry_count = a.retry_count + 1,
               next_retry_at = CASE WHEN a.retry_count + 1 >= v_max THEN NULL
                                    ELSE now() + parecer._backoff(a.retry_count + 1) END,
               error = 'lease expired: worker ' || COALESCE(a.worker, '?') || ' stopped without reporting',
               lease_token = NULL, lease_expires_at = NULL, updated_at = now()
          FROM x
         WHERE a.analysis_id = x.analysis_id
        RETURNING a.analysis_id, a.claims, a.error
    ), t AS (
        UPDATE parecer._attempts t
           SET outcome = 'expired', finished_at = now(), error = u.error
          FROM u
         WHERE t.analysis_id = u.analysis_id AND t.attempt = u.claims AND t.outcome IS NULL
    )
    SELECT count(*) INTO v_n FROM u;
    RETURN v_n;
END
$$;

-- A claimed item: what parecer.claim returns per row.
CREATE TYPE parecer.claimed_item AS (
    analysis_id      uuid,
    lease_token      uuid,
    attempt          integer,
    client_slug      text,
    session_id       text,
    script_id        bigint,
    script_key       text,
    script_version   integer,
    model            text,
    lease_expires_at timestamptz,
    retry_count      integer
);

-- The claim itself (see parecer.claim).
CREATE FUNCTION parecer._claim(p_worker text, p_max_items integer, p_lease_seconds integer, p_client_slug text)
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
        SELECT a.analysis_id
        FROM parecer.analyses a
        WHERE ((a.status = 'pending' AND (a.next_retry_at IS NULL OR a.next_retry_at <= now()))
            OR (a.status = 'failed' AND a.next_retry_at <= now() AND a.retry_count < v_max))
          AND (v_client IS NULL OR a.client_slug = v_client)
        ORDER BY a.session_ended_at DESC NULLS LAST, a.created_at DESC
        LIMIT v_limit
        FOR UPDATE SKIP LOCKED
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
-- Claim up to max_items items for a worker, with a lease.
CREATE FUNCTION parecer.claim(
    worker        text,
    max_items     integer DEFAULT 1,
    lease_seconds integer DEFAULT NULL,
    client_slug   text DEFAULT NULL
) RETURNS SETOF parecer.claimed_item
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM parecer._claim($1, $2, $3, $4) $$;
COMMENT ON FUNCTION parecer.claim(text, integer, integer, text) IS
'Claim up to max_items claimable items (pending, or failed with a retry due), newest-ended session first, with a lease of lease_seconds (default: setting lease_seconds). Items whose lease expired are recovered first, as a failed attempt. Errors: PR010.';

-- Check a lease and lock the item; PR011 unknown item, PR006 wrong/expired lease.
CREATE FUNCTION parecer._lease(p_analysis_id uuid, p_token uuid) RETURNS parecer.analyses
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row parecer.analyses;
BEGIN
    SELECT * INTO v_row FROM parecer.analyses a WHERE a.analysis_id = p_analysis_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown analysis %', COALESCE(p_analysis_id::text, 'NULL')
            USING ERRCODE = 'PR011', HINT = 'analysis_id comes from parecer.claim.';
    END IF;
    IF v_row.status <> 'processing' OR p_token IS NULL OR v_row.lease_token <> p_token THEN
        RAISE EXCEPTION 'stale lease for analysis %', p_analysis_id
            USING ERRCODE = 'PR006',
                  HINT = 'The item is no longer leased to you (it was released, reset, expired or taken by another runner); drop your result.';
    END IF;
    IF v_row.lease_expires_at < now() THEN
        RAISE EXCEPTION 'lease for analysis % expired at %', p_analysis_id, v_row.lease_expires_at
            USING ERRCODE = 'PR006',
                  HINT = 'Extend the lease (parecer.extend_lease) before it runs out; the item will be retried.';
    END IF;
    RETURN v_row;
END
$$;

-- Extend the lease of an item in flight (heartbeat).
CREATE FUNCTION parecer.extend_lease(analysis_id uuid, lease_token uuid, lease_seconds integer DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_lease integer := COALESCE(extend_lease.lease_seconds, parecer._setting_int('lease_seconds'));
    v_exp   timestamptz;
BEGIN
    IF v_lease < 5 OR v_lease > 86400 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid lease_seconds: %s', v_lease), 'lease_seconds must be between 5 and 86400.');
    END IF;
    PERFORM parecer._lease(extend_lease.analysis_id, extend_lease.lease_token);
    UPDATE parecer.analyses a
       SET lease_expires_at = now() + make_interval(secs => v_lease), updated_at = now()
     WHERE a.analysis_id = extend_lease.analysis_id
    RETURNING a.lease_expires_at INTO v_exp;
    RETURN v_exp;
END
$$;
COMMENT ON FUNCTION parecer.extend_lease(uuid, uuid, integer) IS
'Heartbeat: extend the lease of an item you hold to now() + lease_seconds; returns the new expiry. Errors: PR006 stale lease, PR010, PR011.';

-- A usage object as runners report it: a JSON object whose token counts (input_tokens,
-- cached_input_tokens, output_tokens), when given and not null, are non-negative integers
-- written as plain digits, so that spend accounting can add them up as bigint.
CREATE FUNCTION parecer._usage_ok(p_usage jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_typeof(p_usage) = 'object'
       AND NOT EXISTS (SELECT FROM unnest(ARRAY['input_tokens', 'cached_input_tokens', 'output_tokens']) k
                       WHERE COALESCE(jsonb_typeof(p_usage -> k), 'null') <> 'null'
                         AND (jsonb_typeof(p_usage -> k) <> 'number' OR (p_usage ->> k) !~ '^[0-9]{1,12}$'))
$$;

-- Record a failed attempt: backoff per backoff_schedule, terminal after max_attempts or when not retryable.
CREATE FUNCTION parecer.mark_failed(analysis_id uuid, lease_token uuid, error text, retryable boolean DEFAULT true,
                                    usage jsonb DEFAULT NULL)
RETURNS parecer.item_outcome
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row   parecer.analyses;
    v_max   integer := parecer._setting_int('max_attempts');
    v_error text := left(COALESCE(NULLIF(btrim(mark_failed.error), ''), 'unspecified error'), 1000);
BEGIN
    v_row := parecer._lease(mark_failed.analysis_id, mark_failed.lease_token);
    UPDATE parecer.analyses a
       SET status = 'failed',
           retry_count = a.retry_count + 1,
           next_retry_at = CASE WHEN NOT COALESCE(retryable, true) OR a.retry_count + 1 >= v_max THEN NULL
                                ELSE now() + parecer._backoff(a.retry_count + 1) END,
           error = v_error,
           lease_token = NULL, lease_expires_at = NULL, updated_at = now()
     WHERE a.analysis_id = v_row.analysis_id
    RETURNING a.* INTO v_row;
    UPDATE parecer._attempts t SET outcome = 'failed', finished_at = now(), error = v_error,
                                   usage = CASE WHEN parecer._usage_ok(mark_failed.usage) THEN mark_failed.usage END
     WHERE t.analysis_id = v_row.analysis_id AND t.attempt = v_row.claims;
    RETURN ROW(v_row.status, v_row.retry_count, v_row.next_retry_at)::parecer.item_outcome;
END
$$;
COMMENT ON FUNCTION parecer.mark_failed(uuid, uuid, text, boolean, jsonb) IS
'Record a failed attempt of an item you hold (usage: tokens the failed call cost, if any): retry_count + 1 and next_retry_at = now() + backoff_schedule[retry_count]; terminal (next_retry_at NULL) after max_attempts or at once with retryable => false. Errors: PR006, PR011.';

-- Give an item back without spending an attempt (shutdown, provider throttling).
CREATE FUNCTION parecer.release(analysis_id uuid, lease_token uuid, delay_seconds integer DEFAULT 0, reason text DEFAULT NULL)
RETURNS parecer.item_outcome
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row    parecer.analyses;
    v_max    integer := parecer._setting_int('max_attempts');
    v_delay  integer := COALESCE(release.delay_seconds, 0);
    v_reason text := left(COALESCE(NULLIF(btrim(release.reason), ''), 'released'), 1000);
BEGIN
    IF v_delay < 0 OR v_delay > 86400 THEN
        PERFORM parecer._invalid(pg_catalog.format('invalid delay_seconds: %s', v_delay), 'delay_seconds must be between 0 and 86400.');
    END IF;
    v_row := parecer._lease(release.analysis_id, release.lease_token);
    UPDATE parecer.analyses a
       SET status = CASE WHEN a.retry_count = 0 THEN 'pending' ELSE 'failed' END,
           next_retry_at = CASE WHEN a.retry_count = 0 AND v_delay = 0 THEN NULL
                                -- No retry left (max_attempts lowered while in flight): terminal, since
                                -- claim would never take it and it would wait as "retrying" forever.
                                WHEN a.retry_count >= v_max THEN NULL
                                ELSE now() + make_interval(secs => v_delay) END,
           lease_token = NULL, lease_expires_at = NULL, updated_at = now()
     WHERE a.analysis_id = v_row.analysis_id
    RETURNING a.* INTO v_row;
    UPDATE parecer._attempts t SET outcome = 'released', finished_at = now(), error = v_reason
     WHERE t.analysis_id = v_row.analysis_id AND t.attempt = v_row.claims;
    RETURN ROW(v_row.status, v_row.retry_count, v_row.next_retry_at)::parecer.item_outcome;
END
$$;
COMMENT ON FUNCTION parecer.release(uuid, uuid, integer, text) IS
'Give back an item you hold without spending an attempt, claimable again after delay_seconds (shutdown, provider throttling); an item with no retry left (max_attempts lowered meanwhile) becomes a terminal failure. Errors: PR006, PR010, PR011.';

-- When the next item of the queue becomes claimable (NULL: nothing waiting), for the runner's poll timer.
CREATE FUNCTION parecer.next_due(client_slug text DEFAULT NULL) RETURNS timestamptz
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT min(COALESCE(a.next_retry_at, a.lease_expires_at, now()))
    FROM parecer.analyses a
    WHERE (a.status IN ('pending', 'processing') OR (a.status = 'failed' AND a.next_retry_at IS NOT NULL))
      AND (next_due.client_slug IS NULL OR a.client_slug = next_due.client_slug)
$$;
COMMENT ON FUNCTION parecer.next_due(text) IS
'The earliest time an item becomes claimable (a retry or a delayed release falling due, a lease running out; now() if one is claimable already), NULL when nothing is waiting. Runners sleep until then at most.';
