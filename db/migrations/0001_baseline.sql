-- 0001: parecer's tables, types and indexes.
--
-- Migrations hold what has data in it: tables, types, indexes and data moves.
-- Every function, view, trigger, comment and grant lives once, by concern, in
-- db/api/*.sql, which `parecer db migrate` applies after the migrations, every
-- time (tests/test_schema.py checks that no later migration creates one).
--
-- Tables are private: the API is the functions and views of db/api/.

CREATE SCHEMA IF NOT EXISTS parecer;
COMMENT ON SCHEMA parecer IS 'parecer: LLM analysis of support chat sessions. Tables are not the API; functions and views are (see docs/sql-api.md).';

-- Three cluster-wide NOLOGIN roles; grant them to your login roles
-- (GRANT parecer_runner TO my_worker_login). What each may do: db/api/99_grants.sql.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'parecer_admin') THEN
        CREATE ROLE parecer_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'parecer_runner') THEN
        CREATE ROLE parecer_runner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'parecer_reader') THEN
        CREATE ROLE parecer_reader NOLOGIN;
    END IF;
END
$$;

------------------------------------------------------------------------------
-- Settings: one row per knob; value NULL means "the default applies". The
-- catalogue of knobs (names, defaults, bounds) is db/api/10_settings.sql.
------------------------------------------------------------------------------
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

------------------------------------------------------------------------------
-- The source contract: parecer reads chat data only through these four views.
-- They start empty and belong to the adapter (db/adapters/*.sql), which
-- replaces them over the host's tables; `parecer db migrate` never touches them
-- again. CREATE OR REPLACE VIEW refuses a different column list or type, so
-- PostgreSQL itself enforces the contract on every adapter.
------------------------------------------------------------------------------
CREATE VIEW parecer.source_clients AS
SELECT NULL::text AS client_id, NULL::text AS slug, NULL::text AS name
WHERE false;

CREATE VIEW parecer.source_sessions AS
SELECT NULL::text AS session_id, NULL::text AS client_id, NULL::text AS contact_id,
       NULL::timestamptz AS ended_at
WHERE false;

CREATE VIEW parecer.source_messages AS
SELECT NULL::text AS message_id, NULL::text AS session_id, NULL::boolean AS from_me,
       NULL::timestamptz AS sent_at, NULL::text AS media_type, NULL::text AS body,
       NULL::text AS transcription
WHERE false;

CREATE VIEW parecer.source_contact_tags AS
SELECT NULL::text AS contact_id, NULL::text AS tag
WHERE false;

COMMENT ON VIEW parecer.source_clients IS 'Source contract: tenants (client_id text, slug text, name text). Defined by an adapter.';
COMMENT ON VIEW parecer.source_sessions IS 'Source contract: chat sessions (session_id, client_id, contact_id text, ended_at timestamptz; NULL = still open). Defined by an adapter.';
COMMENT ON VIEW parecer.source_messages IS 'Source contract: messages (message_id, session_id text, from_me boolean, sent_at timestamptz, media_type, body, transcription text). Transcripts order by sent_at, message_id.';
COMMENT ON VIEW parecer.source_contact_tags IS 'Source contract: contact tags (contact_id text, tag text). Defined by an adapter.';

------------------------------------------------------------------------------
-- Analysis scripts, versioned per (client, script key).
------------------------------------------------------------------------------
CREATE TABLE parecer.scripts (
    script_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id     text NOT NULL,
    client_slug   text NOT NULL,
    script_key    text NOT NULL,
    version       integer NOT NULL CHECK (version > 0),
    script_text   text NOT NULL,
    topics        text[] NOT NULL,
    language      text NOT NULL,
    model         text,
    -- Built once, at creation: byte-identical for every runner and every call
    -- (prompt caching), and what prompt_for returns.
    instructions  text NOT NULL,
    -- json, not jsonb: key order is part of the schema (evidence before verdicts).
    report_schema json NOT NULL,
    is_active     boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL DEFAULT session_user,
    activated_at  timestamptz,
    UNIQUE (client_id, script_key, version)
);
CREATE INDEX scripts_active_idx ON parecer.scripts (client_id, script_key, version DESC) WHERE is_active;

CREATE TYPE parecer.script_info AS (
    script_id     bigint,
    client_slug   text,
    script_key    text,
    version       integer,
    is_active     boolean,
    language      text,
    model         text,
    topics        text[],
    created_at    timestamptz,
    created_by    text,
    script_text   text
);

------------------------------------------------------------------------------
-- The work queue: one row per analysis = (session, script version, analysis
-- version tag). Its states and transitions: db/api/50_queue.sql.
------------------------------------------------------------------------------
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
    -- pending | processing | done | failed (terminal): see db/api/50_queue.sql.
    status               text NOT NULL DEFAULT 'pending',
    -- Denormalised from the source so the claim order has an index to walk.
    session_ended_at     timestamptz,
    -- Backlog items are claimed after fresh ones, oldest first (start_run(backlog => true)).
    backlog              boolean NOT NULL DEFAULT false,
    -- Failed attempts so far: mark_failed and expired leases count, releases do not.
    retry_count          integer NOT NULL DEFAULT 0,
    -- A pending item is claimable from this time on (NULL: at once).
    next_retry_at        timestamptz,
    claims               integer NOT NULL DEFAULT 0,   -- claims ever made (attempt numbers)
    worker               text,
    lease_token          uuid,
    lease_expires_at     timestamptz,
    report               jsonb,
    error                text,
    -- The attempt that finished a done item stays in its row: model, prompt, usage, cost.
    model                text,
    prompt_hash          text,
    usage                jsonb,
    cost_usd             numeric,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    processed_at         timestamptz,
    CONSTRAINT analyses_item_key UNIQUE (session_id, script_id, analysis_version_tag),
    -- One CHECK, not five: every UPDATE prepares each constraint expression.
    CONSTRAINT analyses_state_check CHECK (
        status IN ('pending', 'processing', 'done', 'failed')
        AND retry_count >= 0
        -- a lease exists exactly while an item is processing
        AND (status = 'processing') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)
        -- only a pending item waits for a time
        AND (status = 'pending' OR next_retry_at IS NULL)
        AND (status <> 'done' OR report IS NOT NULL))
);
-- The claim walks these in order: fresh work newest-ended first, backlog oldest first.
CREATE INDEX analyses_fresh_idx ON parecer.analyses (client_id, session_ended_at DESC NULLS LAST, created_at DESC)
    WHERE status = 'pending' AND NOT backlog;
CREATE INDEX analyses_backlog_idx ON parecer.analyses (client_id, session_ended_at ASC NULLS FIRST, created_at)
    WHERE status = 'pending' AND backlog;
-- Lease expiry finds dead runners' items here.
CREATE INDEX analyses_lease_idx ON parecer.analyses (lease_expires_at) WHERE status = 'processing';
CREATE INDEX analyses_processed_idx ON parecer.analyses (processed_at) WHERE status = 'done';

-- Which analyses a run selected (an analysis already queued by an earlier run
-- belongs to both).
CREATE TABLE parecer.run_items (
    run_id      bigint NOT NULL REFERENCES parecer.runs ON DELETE CASCADE,
    analysis_id uuid NOT NULL REFERENCES parecer.analyses ON DELETE CASCADE,
    PRIMARY KEY (run_id, analysis_id)
);
CREATE INDEX run_items_analysis_idx ON parecer.run_items (analysis_id);

-- Attempts that ended without finishing their item (failed, released, expired,
-- reset), written once when they end, and the done attempt of an item queued
-- again with force_reprocess. An attempt in flight, and the attempt that
-- finished a done item, are the item's own row; parecer.attempts shows all.
CREATE TABLE parecer._attempts (
    analysis_id  uuid NOT NULL REFERENCES parecer.analyses ON DELETE CASCADE,
    attempt      integer NOT NULL,
    worker       text NOT NULL,
    lease_token  uuid,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('done', 'failed', 'released', 'expired', 'reset')),
    error        text,
    model        text,
    prompt_hash  text,
    usage        jsonb,
    cost_usd     numeric,
    PRIMARY KEY (analysis_id, attempt)
);

CREATE TYPE parecer.item_outcome AS (
    status        text,
    retry_count   integer,
    next_retry_at timestamptz
);

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

CREATE TYPE parecer.run_result AS (
    run_id            bigint,
    dry_run           boolean,
    eligible          integer,
    already_done      integer,
    already_queued    integer,
    would_enqueue     integer,
    would_process_now integer,
    enqueued          integer,
    reset             integer,
    estimated_cost_usd numeric
);

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

------------------------------------------------------------------------------
-- Prices, spend, budgets and claim priority.
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

-- Spend per client and day (budget time zone), added to when attempts end.
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

-- Budgets and priority per client (a row per client that ever had an item).
CREATE TABLE parecer._client_policy (
    client_id          text PRIMARY KEY,
    client_slug        text NOT NULL,
    daily_budget_usd   numeric CHECK (daily_budget_usd >= 0),
    monthly_budget_usd numeric CHECK (monthly_budget_usd >= 0),
    priority           integer NOT NULL DEFAULT 1 CHECK (priority BETWEEN 1 AND 100),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Budget alerts already raised (80% and 100%), once per period.
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

COMMENT ON TABLE parecer._attempts IS
'Attempts that did not finish their item (failed, released, expired, reset), and done attempts of items queued again. The attempt in flight and the attempt that finished a done item are the item''s row: see parecer._finished_attempts and parecer.attempts.';
COMMENT ON COLUMN parecer.analyses.cost_usd IS
'Cost in USD of the attempt that finished the item (done), from its usage and the price table; NULL without usage or for an unpriced model.';
COMMENT ON COLUMN parecer.analyses.usage IS
'Token usage of the attempt that finished the item (done), as mark_done received it.';
