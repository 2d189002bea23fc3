-- 0003: the row type of parecer.insight_sessions (the drill-down of insights).
CREATE TYPE parecer.insight_session AS (
    analysis_id          uuid,
    session_id           text,
    processed_at         timestamptz,
    script_key           text,
    script_version       integer,
    language             text,
    outcome              text,
    sentiment_start      text,
    sentiment_end        text,
    insufficient_context boolean,
    summary              text,
    next_action          text,
    topics_present       jsonb,
    flags                text[],
    evidence             jsonb,
    cost_usd             numeric
);
