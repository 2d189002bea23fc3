-- Insights: what the done reports of a client say, in aggregate (parecer.insights)
-- and session by session with their grounded quotes (parecer.insight_sessions).
-- docs/insights.md documents both, the shape of the insights document and the errors.
--
-- This file is applied after the migrations every time `parecer db migrate` runs,
-- so everything in it is CREATE OR REPLACE (and GRANT/REVOKE, which are idempotent).
-- It reads parecer.analyses directly: no column kept in sync by mark_done.

-- The done reports of one client processed in [p_since, p_until), optionally of one
-- script key, version and analysis tag (NULL: any): the reports insights,
-- _insights_extra and insight_sessions read. Plain SQL without SET clauses, so the
-- planner inlines it into their queries (indexes and plans as if written there).
CREATE OR REPLACE FUNCTION parecer._window_reports(p_client_id text, p_script_key text, p_since timestamptz,
                                                   p_until timestamptz, p_version integer, p_tag text)
RETURNS TABLE (analysis_id uuid, session_id text, script_id bigint, processed_at timestamptz, cost_usd numeric,
               report jsonb, script_key text, version integer, language text, extra_fields jsonb)
LANGUAGE sql STABLE AS $$
    SELECT a.analysis_id, a.session_id, a.script_id, a.processed_at, a.cost_usd, a.report,
           s.script_key, s.version, s.language, s.extra_fields
    FROM parecer.analyses a
    JOIN parecer.scripts s ON s.script_id = a.script_id
    WHERE a.client_id = p_client_id
      AND a.status = 'done'
      AND (p_script_key IS NULL OR s.script_key = p_script_key)
      AND (p_version IS NULL OR s.version = p_version)
      AND (p_tag IS NULL OR a.analysis_version_tag = p_tag)
      AND (p_since IS NULL OR a.processed_at >= p_since)
      AND (p_until IS NULL OR a.processed_at < p_until)
$$;

-- The figures of the done reports of one client in a window, as one jsonb document
-- (whole window plus one entry per ISO week). See parecer.insights.
CREATE OR REPLACE FUNCTION parecer._insights(p_client_id text, p_script_key text, p_since timestamptz,
                                             p_until timestamptz, p_version integer, p_tag text)
RETURNS jsonb
-- JIT compiling this many expressions takes longer (~0.8 s) than running them.
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
WITH base AS MATERIALIZED (
    -- One pass over the reports: jsonb_to_record detoasts each report once and
    -- pulls out the parts the figures need.
    SELECT a.analysis_id, a.script_id, a.processed_at, a.cost_usd,
           (date_trunc('week', a.processed_at AT TIME ZONE 'UTC'))::date AS wk,
           r.outcome ->> 'status' AS outcome,
           r.sentiment ->> 'start' AS s_start,
           r.sentiment ->> 'end' AS s_end,
           r.insufficient_context AS insufficient,
           r.topics, r.flags
    FROM parecer._window_reports(p_client_id, p_script_key, p_since, p_until, p_version, p_tag) a
    CROSS JOIN LATERAL jsonb_to_record(a.report)
        AS r(outcome jsonb, sentiment jsonb, topics jsonb, flags jsonb, insufficient_context boolean)
),
-- Everything is counted per ISO week (wk, the Monday, UTC) in one pass, then the
-- weeks are summed into the whole window (GROUPING SETS: the row with wk NULL).
counts_w AS (
    SELECT b.wk, count(*) AS sessions,
           count(*) FILTER (WHERE b.insufficient) AS insufficient,
           sum(b.cost_usd) AS cost, count(b.cost_usd) AS priced,
           count(*) FILTER (WHERE b.outcome = 'resolved') AS o_resolved,
           count(*) FILTER (WHERE b.outcome = 'unresolved') AS o_unresolved,
           count(*) FILTER (WHERE b.outcome = 'escalated') AS o_escalated,
           count(*) FILTER (WHERE b.outcome = 'abandoned') AS o_abandoned,
           count(*) FILTER (WHERE b.outcome = 'unknown') AS o_unknown
    FROM base b GROUP BY b.wk
),
counts AS (
    -- with no report at all, the empty grouping set still gives the window's row
    SELECT c.wk, COALESCE(sum(c.sessions), 0) AS sessions, COALESCE(sum(c.insufficient), 0) AS insufficient,
           sum(c.cost) AS cost, COALESCE(sum(c.priced), 0) AS priced,
           COALESCE(sum(c.o_resolved), 0) AS o_resolved, COALESCE(sum(c.o_unresolved), 0) AS o_unresolved,
           COALESCE(sum(c.o_escalated), 0) AS o_escalated, COALESCE(sum(c.o_abandoned), 0) AS o_abandoned,
           COALESCE(sum(c.o_unknown), 0) AS o_unknown
    FROM counts_w c GROUP BY GROUPING SETS ((c.wk), ())
),
sent AS (
    -- sentiment order negative < neutral < positive; unknown has no rank
    SELECT v.k, v.rnk FROM (VALUES ('negative', 0), ('neutral', 1), ('positive', 2), ('unknown', NULL)) v(k, rnk)
),
pairs_w AS (
    SELECT b.wk, b.s_start, b.s_end, count(*) AS n FROM base b GROUP BY b.wk, b.s_start, b.s_end
),
pairs AS (
    SELECT p.wk, p.s_start, p.s_end, sum(p.n) AS n FROM pairs_w p
    GROUP BY GROUPING SETS ((p.wk, p.s_start, p.s_end), (p.s_start, p.s_end))
),
trend AS (
    SELECT c.wk,
           COALESCE(sum(p.n) FILTER (WHERE en.rnk > st.rnk), 0) AS improved,
           COALESCE(sum(p.n) FILTER (WHERE en.rnk = st.rnk), 0) AS same,
           COALESCE(sum(p.n) FILTER (WHERE en.rnk < st.rnk), 0) AS worsened,
           COALESCE(sum(p.n) FILTER (WHERE st.rnk IS NULL OR en.rnk IS NULL), 0) AS unknown
    FROM counts c
    LEFT JOIN pairs p ON p.wk IS NOT DISTINCT FROM c.wk
    LEFT JOIN sent st ON st.k = p.s_start
    LEFT JOIN sent en ON en.k = p.s_end
    GROUP BY c.wk
),
matrix_rows AS (
    SELECT c.wk, st.k AS s_start, jsonb_object_agg(en.k, COALESCE(p.n, 0)) AS j
    FROM counts c CROSS JOIN sent st CROSS JOIN sent en
    LEFT JOIN pairs p ON p.wk IS NOT DISTINCT FROM c.wk AND p.s_start = st.k AND p.s_end = en.k
    GROUP BY c.wk, st.k
),
matrix AS (
    SELECT m.wk, jsonb_object_agg(m.s_start, m.j) AS j FROM matrix_rows m GROUP BY m.wk
),
topics_w AS (
    -- jsonb_to_recordset types each entry once; outcomes are pivoted after the sum
    SELECT b.wk, t.topic, b.outcome, count(*) AS assessed,
           count(*) FILTER (WHERE t.present) AS present,
           sum(t.confidence) AS conf_sum,
           sum(t.confidence) FILTER (WHERE t.present) AS conf_present_sum
    FROM base b CROSS JOIN LATERAL jsonb_to_recordset(b.topics) AS t(topic text, present boolean, confidence float8)
    GROUP BY b.wk, t.topic, b.outcome
),
topics AS (
    SELECT x.wk, jsonb_agg(jsonb_build_object(
               'topic', x.topic,
               'assessed', x.assessed,
               'present', x.present,
               'present_share', round(x.present::numeric / x.assessed, 4),
               'mean_confidence', round((x.conf_sum / x.assessed)::numeric, 4),
               'mean_confidence_present', round((x.conf_present_sum / NULLIF(x.present, 0))::numeric, 4),
               'outcomes_when_present', jsonb_build_object(
                   'resolved', x.o_resolved, 'unresolved', x.o_unresolved, 'escalated', x.o_escalated,
                   'abandoned', x.o_abandoned, 'unknown', x.o_unknown))
               ORDER BY x.present DESC, x.topic) AS j
    FROM (
        SELECT t.wk, t.topic, sum(t.assessed) AS assessed, sum(t.present) AS present,
               sum(t.conf_sum) AS conf_sum, sum(t.conf_present_sum) AS conf_present_sum,
               COALESCE(sum(t.present) FILTER (WHERE t.outcome = 'resolved'), 0) AS o_resolved,
               COALESCE(sum(t.present) FILTER (WHERE t.outcome = 'unresolved'), 0) AS o_unresolved,
               COALESCE(sum(t.present) FILTER (WHERE t.outcome = 'escalated'), 0) AS o_escalated,
               COALESCE(sum(t.present) FILTER (WHERE t.outcome = 'abandoned'), 0) AS o_abandoned,
               COALESCE(sum(t.present) FILTER (WHERE t.outcome = 'unknown'), 0) AS o_unknown
        FROM topics_w t GROUP BY GROUPING SETS ((t.wk, t.topic), (t.topic))
    ) x
    GROUP BY x.wk
),
flags_w AS (
    -- sessions with the flag (a report listing a flag twice counts once)
    SELECT b.wk, f.flag, count(DISTINCT b.analysis_id) AS n
    FROM base b CROSS JOIN LATERAL jsonb_to_recordset(b.flags) AS f(flag text)
    GROUP BY b.wk, f.flag
),
flag_counts AS (
    SELECT f.wk, f.flag, sum(f.n) AS n FROM flags_w f GROUP BY GROUPING SETS ((f.wk, f.flag), (f.flag))
),
flags AS (
    SELECT c.wk, jsonb_agg(jsonb_build_object(
               'flag', v.flag, 'sessions', COALESCE(fc.n, 0),
               'share', round(COALESCE(fc.n, 0)::numeric / NULLIF(c.sessions, 0), 4)) ORDER BY v.ord) AS j
    FROM counts c
    CROSS JOIN (VALUES ('churn_risk', 1), ('complaint', 2), ('legal_threat', 3), ('agent_error', 4),
                       ('slow_response', 5), ('sensitive_data', 6), ('abusive_language', 7),
                       ('human_requested', 8)) v(flag, ord)
    LEFT JOIN flag_counts fc ON fc.wk IS NOT DISTINCT FROM c.wk AND fc.flag = v.flag
    GROUP BY c.wk
),
figures AS (
    SELECT c.wk, jsonb_build_object(
        'sessions', c.sessions,
        'outcomes', jsonb_build_object('resolved', c.o_resolved, 'unresolved', c.o_unresolved,
                                       'escalated', c.o_escalated, 'abandoned', c.o_abandoned,
                                       'unknown', c.o_unknown),
        'sentiment', jsonb_build_object(
            'matrix', m.j,
            'improved', tr.improved, 'same', tr.same, 'worsened', tr.worsened, 'unknown', tr.unknown,
            'improved_share', round(tr.improved::numeric / NULLIF(c.sessions - tr.unknown, 0), 4),
            'same_share', round(tr.same::numeric / NULLIF(c.sessions - tr.unknown, 0), 4),
            'worsened_share', round(tr.worsened::numeric / NULLIF(c.sessions - tr.unknown, 0), 4),
            'unknown_share', round(tr.unknown::numeric / NULLIF(c.sessions, 0), 4)),
        'topics', COALESCE(t.j, '[]'::jsonb),
        'flags', f.j,
        'insufficient_context', jsonb_build_object(
            'sessions', c.insufficient,
            'share', round(c.insufficient::numeric / NULLIF(c.sessions, 0), 4)),
        'cost_usd', jsonb_build_object(
            'total', COALESCE(c.cost, 0),
            'priced_sessions', c.priced,
            'per_session', round(c.cost / NULLIF(c.priced, 0), 6))
    ) AS j
    FROM counts c
    JOIN trend tr ON tr.wk IS NOT DISTINCT FROM c.wk
    LEFT JOIN matrix m ON m.wk IS NOT DISTINCT FROM c.wk
    LEFT JOIN topics t ON t.wk IS NOT DISTINCT FROM c.wk
    LEFT JOIN flags f ON f.wk IS NOT DISTINCT FROM c.wk
),
scripts AS (
    SELECT jsonb_agg(jsonb_build_object('script_key', s.script_key, 'version', s.version,
                                        'language', s.language, 'topics', to_jsonb(s.topics),
                                        'sessions', x.n)
                     ORDER BY x.n DESC, s.script_key, s.version) AS j,
           (array_agg(s.language ORDER BY x.n DESC, x.last DESC))[1] AS language
    FROM (SELECT base.script_id, count(*) AS n, max(base.processed_at) AS last FROM base GROUP BY base.script_id) x
    JOIN parecer.scripts s ON s.script_id = x.script_id
)
SELECT (SELECT f.j FROM figures f WHERE f.wk IS NULL)
    || jsonb_build_object(
        'first_processed_at', (SELECT min(base.processed_at) FROM base),
        'last_processed_at', (SELECT max(base.processed_at) FROM base),
        'scripts', COALESCE((SELECT s.j FROM scripts s), '[]'::jsonb),
        'language', (SELECT s.language FROM scripts s),
        'weeks', COALESCE((SELECT jsonb_agg(jsonb_build_object('week', to_char(f.wk, 'IYYY-"W"IW'),
                                                               'week_start', f.wk) || f.j ORDER BY f.wk)
                           FROM figures f WHERE f.wk IS NOT NULL), '[]'::jsonb))
$$;

-- Insights over a client's done reports: one jsonb document (docs/insights.md).
CREATE OR REPLACE FUNCTION parecer.insights(client_slug text, script_key text DEFAULT NULL,
                                            since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL,
                                            script_version integer DEFAULT NULL,
                                            analysis_version_tag text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_client record;
    v_doc    jsonb;
    v_lang   text;
BEGIN
    v_client := parecer._insights_client(insights.client_slug, insights.script_key, insights.script_version,
                                         insights.since, insights.until);
    v_doc := parecer._insights(v_client.client_id, insights.script_key, insights.since, insights.until,
                               insights.script_version, insights.analysis_version_tag);
    IF v_doc ->> 'language' IS NULL THEN
        -- no report in the window: the language of the newest matching script version
        SELECT s.language INTO v_lang FROM parecer.scripts s
        WHERE s.client_id = v_client.client_id
          AND (insights.script_key IS NULL OR s.script_key = insights.script_key)
          AND (insights.script_version IS NULL OR s.version = insights.script_version)
        ORDER BY s.created_at DESC, s.script_id DESC LIMIT 1;
        v_doc := v_doc || jsonb_build_object('language', v_lang);
    END IF;
    v_doc := v_doc || parecer._insights_extra(v_client.client_id, insights.script_key, insights.since, insights.until, insights.script_version, insights.analysis_version_tag);
    RETURN jsonb_build_object(
        'schema_version', 'parecer.insights.v1',
        'client_slug', v_client.client_slug,
        'filters', jsonb_build_object('script_key', insights.script_key, 'since', insights.since,
                                      'until', insights.until, 'script_version', insights.script_version,
                                      'analysis_version_tag', insights.analysis_version_tag),
        'generated_at', now()) || v_doc;
END
$$;

-- The custom report fields (extra_fields) of the same reports, per field name,
-- as {"extra": {...}}; {} when no report in the window has any, so documents of
-- versions without custom fields are unchanged. The type is the newest
-- declaration of the name; a field with evidence is summed by its value.
-- enum and boolean: counts per value; number: n, avg, min, max; string_list:
-- the 20 most frequent items; string (free text): n only.
CREATE OR REPLACE FUNCTION parecer._insights_extra(p_client_id text, p_script_key text, p_since timestamptz,
                                                   p_until timestamptz, p_version integer, p_tag text)
RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
WITH vals AS MATERIALIZED (
    SELECT e.key AS name,
           CASE WHEN jsonb_typeof(e.value) = 'object' AND e.value ? 'value' THEN e.value -> 'value' ELSE e.value END AS v
    FROM parecer._window_reports(p_client_id, p_script_key, p_since, p_until, p_version, p_tag) a
    CROSS JOIN LATERAL jsonb_each(a.report -> 'extra') e
    WHERE a.extra_fields IS NOT NULL AND jsonb_typeof(a.report -> 'extra') = 'object'
), decl AS (
    SELECT DISTINCT ON (f ->> 'name') f ->> 'name' AS name, f ->> 'type' AS type
    FROM parecer.scripts s CROSS JOIN LATERAL jsonb_array_elements(s.extra_fields) f
    WHERE s.client_id = p_client_id AND s.extra_fields IS NOT NULL
    ORDER BY f ->> 'name', s.script_id DESC
), per AS (
    SELECT v.name, d.type,
           CASE d.type
               WHEN 'number' THEN jsonb_build_object('type', d.type, 'n', count(*),
                   'avg', round(avg((v.v #>> '{}')::numeric) FILTER (WHERE jsonb_typeof(v.v) = 'number'), 4),
                   'min', min((v.v #>> '{}')::numeric) FILTER (WHERE jsonb_typeof(v.v) = 'number'),
                   'max', max((v.v #>> '{}')::numeric) FILTER (WHERE jsonb_typeof(v.v) = 'number'))
               WHEN 'string' THEN jsonb_build_object('type', d.type, 'n', count(*))
               WHEN 'string_list' THEN jsonb_build_object('type', d.type, 'n', count(*), 'top', COALESCE((
                   SELECT jsonb_agg(jsonb_build_object('value', t.item, 'count', t.n) ORDER BY t.n DESC, t.item)
                   FROM (SELECT i.item, count(*) AS n
                         FROM vals v2 CROSS JOIN LATERAL jsonb_array_elements_text(
                             CASE WHEN jsonb_typeof(v2.v) = 'array' THEN v2.v END) i(item)
                         WHERE v2.name = v.name GROUP BY i.item ORDER BY count(*) DESC, i.item LIMIT 20) t), '[]'))
               ELSE jsonb_build_object('type', d.type, 'n', count(*), 'counts', (
                   SELECT jsonb_object_agg(c.k, c.n) FROM (
                       SELECT v3.v #>> '{}' AS k, count(*) AS n FROM vals v3 WHERE v3.name = v.name
                       GROUP BY 1) c))
           END AS summary
    FROM vals v JOIN decl d ON d.name = v.name
    GROUP BY v.name, d.type
)
SELECT CASE WHEN count(*) = 0 THEN '{}'::jsonb
            ELSE jsonb_build_object('extra', jsonb_object_agg(per.name, per.summary)) END
FROM per
$$;

-- The client insights and insight_sessions read, after the checks of the filters
-- they share: PR001 for a client the caller may not see, PR002 for a script (or
-- version) the client does not have, PR010 for an empty time window.
CREATE OR REPLACE FUNCTION parecer._insights_client(p_slug text, p_script_key text, p_version integer,
                                                    p_since timestamptz, p_until timestamptz,
                                                    OUT client_id text, OUT client_slug text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    SELECT v.client_id, v.client_slug INTO client_id, client_slug FROM parecer._visible_client(p_slug) v;
    IF p_script_key IS NOT NULL AND NOT EXISTS (
        SELECT FROM parecer.scripts s
        WHERE s.client_id = _insights_client.client_id AND s.script_key = p_script_key
          AND (p_version IS NULL OR s.version = p_version)) THEN
        RAISE EXCEPTION 'unknown script "%"% for client "%"', left(p_script_key, 100),
                        COALESCE(' version ' || p_version, ''), _insights_client.client_slug
            USING ERRCODE = 'PR002',
                  HINT = 'SELECT * FROM parecer.list_scripts(client_slug) lists the client''s scripts.';
    END IF;
    IF p_since IS NOT NULL AND p_until IS NOT NULL AND p_until <= p_since THEN
        PERFORM parecer._invalid('until must be later than since',
                                 'The window is [since, until): processed_at >= since and < until.');
    END IF;
END
$$;

COMMENT ON TYPE parecer.insight_session IS
'A row of parecer.insight_sessions: one done report with its verdicts and its evidence quotes (about, name, message_id, role, match, excerpt).';

-- The done reports of a client matching a filter, newest first, with their
-- verdicts and every evidence quote with the speaker's role (keyset pagination).
CREATE OR REPLACE FUNCTION parecer.insight_sessions(
    client_slug text,
    topic text DEFAULT NULL,
    flag text DEFAULT NULL,
    outcome text DEFAULT NULL,
    sentiment_end text DEFAULT NULL,
    script_key text DEFAULT NULL,
    since timestamptz DEFAULT NULL,
    until timestamptz DEFAULT NULL,
    script_version integer DEFAULT NULL,
    analysis_version_tag text DEFAULT NULL,
    max_rows integer DEFAULT 20,
    before_processed_at timestamptz DEFAULT NULL,
    before_analysis_id uuid DEFAULT NULL)
RETURNS SETOF parecer.insight_session
-- The planner overestimates the per-row evidence subqueries; JIT would then spend
-- ~0.4 s compiling a query that runs in milliseconds.
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    v_client record;
    v_topic  jsonb;
    v_flag   jsonb;
BEGIN
    v_client := parecer._insights_client(insight_sessions.client_slug, insight_sessions.script_key,
                                         insight_sessions.script_version, insight_sessions.since,
                                         insight_sessions.until);
    IF insight_sessions.outcome IS NOT NULL
       AND insight_sessions.outcome NOT IN ('resolved', 'unresolved', 'escalated', 'abandoned', 'unknown') THEN
        PERFORM parecer._invalid(format('invalid outcome %L', left(insight_sessions.outcome, 100)),
                                 'outcome is one of resolved, unresolved, escalated, abandoned, unknown.');
    END IF;
    IF insight_sessions.sentiment_end IS NOT NULL
       AND insight_sessions.sentiment_end NOT IN ('positive', 'neutral', 'negative', 'unknown') THEN
        PERFORM parecer._invalid(format('invalid sentiment_end %L', left(insight_sessions.sentiment_end, 100)),
                                 'sentiment_end is one of positive, neutral, negative, unknown.');
    END IF;
    IF insight_sessions.flag IS NOT NULL
       AND insight_sessions.flag NOT IN ('churn_risk', 'complaint', 'legal_threat', 'agent_error', 'slow_response',
                                         'sensitive_data', 'abusive_language', 'human_requested') THEN
        PERFORM parecer._invalid(format('invalid flag %L', left(insight_sessions.flag, 100)),
                                 'flag is one of churn_risk, complaint, legal_threat, agent_error, slow_response, sensitive_data, abusive_language, human_requested.');
    END IF;
    IF insight_sessions.max_rows IS NULL OR insight_sessions.max_rows NOT BETWEEN 1 AND 500 THEN
        PERFORM parecer._invalid('max_rows must be between 1 and 500', 'Page with before_processed_at and before_analysis_id (the last row of the previous page).');
    END IF;
    IF (insight_sessions.before_processed_at IS NULL) <> (insight_sessions.before_analysis_id IS NULL) THEN
        PERFORM parecer._invalid('before_processed_at and before_analysis_id go together',
                                 'Pass both, from the last row of the previous page, or neither for the first page.');
    END IF;
    IF insight_sessions.topic IS NOT NULL THEN
        v_topic := jsonb_build_object('topics', jsonb_build_array(
                       jsonb_build_object('topic', insight_sessions.topic, 'present', true)));
    END IF;
    IF insight_sessions.flag IS NOT NULL THEN
        v_flag := jsonb_build_object('flags', jsonb_build_array(jsonb_build_object('flag', insight_sessions.flag)));
    END IF;

    RETURN QUERY
    WITH page AS MATERIALIZED (
        SELECT a.analysis_id, a.session_id, a.processed_at, a.script_key, a.version, a.language, a.report,
               a.cost_usd
        FROM parecer._window_reports(v_client.client_id, insight_sessions.script_key, insight_sessions.since,
                                     insight_sessions.until, insight_sessions.script_version,
                                     insight_sessions.analysis_version_tag) a
        WHERE (v_topic IS NULL OR a.report @> v_topic)
          AND (v_flag IS NULL OR a.report @> v_flag)
          AND (insight_sessions.outcome IS NULL OR a.report -> 'outcome' ->> 'status' = insight_sessions.outcome)
          AND (insight_sessions.sentiment_end IS NULL
               OR a.report -> 'sentiment' ->> 'end' = insight_sessions.sentiment_end)
          AND (insight_sessions.before_processed_at IS NULL
               OR (a.processed_at, a.analysis_id)
                  < (insight_sessions.before_processed_at, insight_sessions.before_analysis_id))
        ORDER BY a.processed_at DESC, a.analysis_id DESC
        LIMIT insight_sessions.max_rows
    )
    SELECT p.analysis_id, p.session_id, p.processed_at, p.script_key, p.version, p.language,
           p.report -> 'outcome' ->> 'status',
           p.report -> 'sentiment' ->> 'start',
           p.report -> 'sentiment' ->> 'end',
           (p.report ->> 'insufficient_context')::boolean,
           p.report ->> 'summary',
           p.report ->> 'next_action',
           COALESCE((SELECT jsonb_agg(jsonb_build_object('topic', t.value ->> 'topic',
                                                         'confidence', t.value -> 'confidence') ORDER BY t.n)
                     FROM jsonb_array_elements(p.report -> 'topics') WITH ORDINALITY t(value, n)
                     WHERE (t.value ->> 'present')::boolean), '[]'::jsonb),
           COALESCE((SELECT array_agg(DISTINCT f.value ->> 'flag')
                     FROM jsonb_array_elements(p.report -> 'flags') f), '{}'::text[]),
           COALESCE((
               SELECT jsonb_agg(jsonb_build_object(
                          'about', e.about, 'name', e.name,
                          'message_id', e.item ->> 'message_id',
                          'role', COALESCE(e.item ->> 'role', m.role),
                          'match', e.item -> 'match',
                          'excerpt', e.item ->> 'excerpt') ORDER BY e.o1, e.o2, e.o3)
               FROM (
                   SELECT 'outcome' AS about, NULL::text AS name, x.item, 1 AS o1, 0::bigint AS o2, x.n AS o3
                   FROM jsonb_array_elements(p.report -> 'outcome' -> 'evidence') WITH ORDINALITY x(item, n)
                   UNION ALL
                   SELECT 'sentiment', NULL, x.item, 2, 0, x.n
                   FROM jsonb_array_elements(p.report -> 'sentiment' -> 'evidence') WITH ORDINALITY x(item, n)
                   UNION ALL
                   SELECT 'topic', t.value ->> 'topic', x.item, 3, t.n, x.n
                   FROM jsonb_array_elements(p.report -> 'topics') WITH ORDINALITY t(value, n)
                   CROSS JOIN LATERAL jsonb_array_elements(t.value -> 'evidence') WITH ORDINALITY x(item, n)
                   UNION ALL
                   SELECT 'flag', f.value ->> 'flag', x.item, 4, f.n, x.n
                   FROM jsonb_array_elements(p.report -> 'flags') WITH ORDINALITY f(value, n)
                   CROSS JOIN LATERAL jsonb_array_elements(f.value -> 'evidence') WITH ORDINALITY x(item, n)
               ) e
               LEFT JOIN LATERAL (
                   -- only when the stored item has no role of its own
                   SELECT CASE WHEN sm.from_me THEN 'agent' ELSE 'customer' END AS role
                   FROM parecer.source_messages sm
                   WHERE e.item ->> 'role' IS NULL
                     AND sm.session_id = p.session_id AND sm.message_id = e.item ->> 'message_id'
                   LIMIT 1
               ) m ON true
           ), '[]'::jsonb),
           p.cost_usd
    FROM page p
    ORDER BY p.processed_at DESC, p.analysis_id DESC;
END
$$;

COMMENT ON FUNCTION parecer.insights(text, text, timestamptz, timestamptz, integer, text) IS
'Figures over a client''s done reports processed in [since, until), optionally of one script key, version and analysis tag: sessions, outcome distribution, sentiment start->end matrix and improved/same/worsened shares, per topic presence, confidence and outcomes, per flag counts, insufficient_context share, cost; the same per ISO week; with custom report fields (extra_fields), "extra": per field, counts per value (enum, boolean), n/avg/min/max (number), top items (string_list) or n (string). One jsonb document (docs/insights.md). Errors: PR001 unknown client, PR002 unknown script/version, PR010 until <= since.';
COMMENT ON FUNCTION parecer.insight_sessions(text, text, text, text, text, text, timestamptz, timestamptz, integer, text, integer, timestamptz, uuid) IS
'A client''s done reports matching a filter (topic present, flag, outcome, sentiment end, script, window), newest first, max_rows per page (next page: before_processed_at/before_analysis_id of the last row), with verdicts and every evidence quote (message id, speaker role, excerpt). Errors: PR001, PR002, PR010.';
