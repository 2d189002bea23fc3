-- 0018: a claim can give its items' prompts (issue 18): parecer.claim_with_prompts
-- returns claim's columns and prompt_for's. Its row type goes here (db/api/ defines
-- the function).
CREATE TYPE parecer.claimed_prompt AS (
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
    retry_count      integer,
    instructions     text,
    input            text,
    report_schema    json,
    prompt_hash      text,
    omitted_messages integer,
    input_tokens     integer,
    repair_calls     integer,
    sqlstate         text,
    message          text
);
