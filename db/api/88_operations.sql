-- Operating parecer: queue-wide metrics, the doctor's database checks, retention.

-- Queue-wide gauges in one row: what `parecer metrics` prints and every runner's
-- /metrics endpoint exports, so one scrape shows the whole queue. Counts scan
-- parecer.analyses once (as parecer.queue_status does); the ages use indexes.
CREATE OR REPLACE VIEW parecer.metrics WITH (security_barrier = true) AS
WITH sc AS (SELECT * FROM parecer._caller_scope), q AS (
    SELECT count(*) FILTER (WHERE a.status = 'pending' AND a.retry_count = 0)         AS pending,
           count(*) FILTER (WHERE a.status = 'pending' AND a.retry_count > 0)         AS retrying,
           count(*) FILTER (WHERE a.status = 'processing')                           AS processing,
           count(*) FILTER (WHERE a.status = 'failed')                               AS failed_terminal,
           count(*) FILTER (WHERE a.status = 'done'
                            AND a.processed_at > now() - interval '1 hour')          AS done_last_hour,
           min(a.created_at) FILTER (WHERE a.status = 'pending')                     AS oldest_pending_at,
           count(DISTINCT a.worker) FILTER (WHERE a.status = 'processing'
                                            AND a.lease_expires_at > now())          AS workers_with_leases
    FROM parecer.analyses a, sc
    WHERE (sc.all_clients OR a.client_id = ANY (sc.client_ids))
), cal AS (
    SELECT (now() AT TIME ZONE (SELECT COALESCE(st.value, st.default_value) FROM parecer._settings st
                                WHERE st.name = 'budget_timezone'))::date AS today
)
SELECT q.pending, q.retrying, q.processing, q.failed_terminal,
       COALESCE(extract(epoch FROM now() - q.oldest_pending_at), 0)::float8 AS oldest_pending_age_seconds,
       q.done_last_hour,
       (SELECT COALESCE(sum(sp.cost_usd), 0) FROM parecer._spend sp, cal, sc
        WHERE sp.day = cal.today AND (sc.all_clients OR sp.client_id = ANY (sc.client_ids))) AS spend_today_usd,
       q.workers_with_leases,
       extract(epoch FROM now() - (SELECT max(d.processed_at) FROM parecer.analyses d, sc
                                   WHERE d.status = 'done' AND (sc.all_clients OR d.client_id = ANY (sc.client_ids))))::float8 AS last_done_age_seconds,
       (SELECT jsonb_build_object('preparing', count(*) FILTER (WHERE b.status = 'preparing'),
                                  'uploaded', count(*) FILTER (WHERE b.status = 'uploaded'),
                                  'submitted', count(*) FILTER (WHERE b.status = 'submitted'),
                                  'ingesting', count(*) FILTER (WHERE b.status = 'ingesting'))
        FROM parecer._batches b, sc
        WHERE b.status IN ('preparing', 'uploaded', 'submitted', 'ingesting')
          AND (sc.all_clients OR b.client_id = ANY (sc.client_ids))) AS open_batches
FROM q;
COMMENT ON VIEW parecer.metrics IS 'Queue-wide gauges in one row: pending (never failed), retrying, processing, failed_terminal, oldest_pending_age_seconds, done_last_hour, spend_today_usd (budget_timezone day), workers_with_leases, last_done_age_seconds (NULL before the first report), open_batches (Batch API batches not finished, by status: {"preparing": n, "uploaded": n, "submitted": n, "ingesting": n}). `parecer metrics` prints them in the Prometheus text format.';

-- The doctor's checks that the database can answer: adapter views, roles,
-- settings, prices and limits of the models in use, runners alive, terminal
-- failures. One row per check: ok, warn or fail, and the fix as a CLI command.
CREATE OR REPLACE FUNCTION parecer.doctor(model text DEFAULT NULL, active_minutes integer DEFAULT 10)
RETURNS TABLE (check_name text, status text, detail text, fix text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_clients  bigint;
    v_sessions bigint;
    v_messages bigint;
    v_role     text;
    v_members  text;
    v_set      record;
    v_bad      text[] := '{}';
    v_model    text;
    v_due      bigint;
    v_alive    boolean;
    v_failed   bigint;
    v_paused   text;
    v_iso      text;
    v_fixes    text[];
BEGIN
    IF active_minutes IS NULL OR active_minutes NOT BETWEEN 1 AND 10080 THEN
        PERFORM parecer._invalid('active_minutes must be between 1 and 10080', 'Pass e.g. active_minutes => 10.');
    END IF;

    -- adapter: the source views read the host's tables (not the empty defaults) and answer
    BEGIN
        SELECT count(*) INTO v_clients FROM (SELECT 1 FROM parecer.source_clients LIMIT 10000) c;
        SELECT count(*) INTO v_sessions FROM (SELECT 1 FROM parecer.source_sessions LIMIT 10000) s;
        SELECT count(*) INTO v_messages FROM (SELECT 1 FROM parecer.source_messages LIMIT 10000) m;
        IF v_clients = 0 OR v_sessions = 0 THEN
            RETURN QUERY SELECT 'adapter'::text, 'fail'::text,
                pg_catalog.format('the source views show %s clients and %s sessions: no adapter is installed, or it reads empty tables',
                                  v_clients, v_sessions),
                'install an adapter: `parecer db adapter reference|prisma|FILE.sql` (docs/adapters.md)'::text;
        ELSIF v_messages = 0 THEN
            RETURN QUERY SELECT 'adapter'::text, 'fail'::text,
                pg_catalog.format('%s clients and %s sessions but no messages', v_clients, v_sessions),
                'check the adapter''s parecer.source_messages view (docs/adapters.md)'::text;
        ELSE
            RETURN QUERY SELECT 'adapter'::text, 'ok'::text,
                pg_catalog.format('source views answer: %s%s clients, %s%s sessions, %s%s messages',
                                  CASE WHEN v_clients = 10000 THEN '≥' ELSE '' END, v_clients,
                                  CASE WHEN v_sessions = 10000 THEN '≥' ELSE '' END, v_sessions,
                                  CASE WHEN v_messages = 10000 THEN '≥' ELSE '' END, v_messages),
                NULL::text;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        RETURN QUERY SELECT 'adapter'::text, 'fail'::text,
            pg_catalog.format('reading the source views fails: %s [%s]', SQLERRM, SQLSTATE),
            'fix or reinstall the adapter: `parecer db adapter NAME|FILE.sql` (docs/adapters.md)'::text;
    END;

    -- roles: the three exist, and some login role holds each
    FOREACH v_role IN ARRAY ARRAY['parecer_admin', 'parecer_runner', 'parecer_reader'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname = v_role) THEN
            RETURN QUERY SELECT 'role ' || v_role, 'fail'::text, 'the role does not exist'::text,
                                'run `parecer db migrate` (it creates the roles)'::text;
            CONTINUE;
        END IF;
        SELECT string_agg(DISTINCT u.rolname, ', ' ORDER BY u.rolname) INTO v_members
        FROM pg_catalog.pg_roles u
        WHERE u.rolcanlogin AND NOT u.rolsuper AND pg_catalog.pg_has_role(u.oid, v_role, 'MEMBER');
        IF v_members IS NULL THEN
            RETURN QUERY SELECT 'role ' || v_role, 'warn'::text,
                'no login role other than superusers holds it'::text,
                pg_catalog.format('GRANT %I TO your_login_role; (README: Roles)', v_role);
        ELSE
            RETURN QUERY SELECT 'role ' || v_role, 'ok'::text, 'held by ' || v_members, NULL::text;
        END IF;
    END LOOP;

    -- tenant isolation: roles that get nothing, grants that bind nobody, grants that do nothing
    v_iso := parecer._setting('isolation');
    v_bad := '{}';
    v_fixes := '{}';
    SELECT string_agg(pg_catalog.format('%s (%s)', cg.role_name, cg.client_slug), ', ' ORDER BY cg.role_name, cg.client_slug)
      INTO v_members FROM parecer.client_grants cg WHERE NOT cg.role_exists;
    IF v_members IS NOT NULL THEN
        v_bad := v_bad || ('grants to dropped roles: ' || v_members);
        v_fixes := v_fixes || '`parecer access revoke ''#OID''` for each (as `parecer access list` names them)'::text;
    END IF;
    IF v_iso = 'on' THEN
        SELECT string_agg(u.rolname, ', ' ORDER BY u.rolname) INTO v_members
        FROM pg_catalog.pg_roles u
        WHERE u.rolcanlogin AND NOT u.rolsuper
          AND EXISTS (SELECT FROM pg_catalog.pg_roles g WHERE g.rolname IN ('parecer_runner', 'parecer_reader')
                      AND pg_catalog.pg_has_role(u.oid, g.oid, 'MEMBER'))
          AND NOT parecer._role_serves(u.rolname, NULL);
        IF v_members IS NOT NULL THEN
            v_bad := v_bad || ('isolation is on and these runner/reader login roles have no client grant, so they get nothing: ' || v_members);
            v_fixes := v_fixes || '`parecer access grant ROLE CLIENT` (or remove the role from parecer_runner / parecer_reader)'::text;
        END IF;
        SELECT string_agg(r.limit_key, ', ' ORDER BY r.limit_key) INTO v_members
        FROM parecer._rate_limits r WHERE COALESCE(cardinality(r.client_ids), 0) = 0;
        IF v_members IS NOT NULL THEN
            v_bad := v_bad || ('isolation is on and these limit keys are bound to no client, so runners bound to clients get PR025 on them: ' || v_members);
            v_fixes := v_fixes || '`parecer limits bind KEY CLIENT...`'::text;
        END IF;
    ELSIF (SELECT count(DISTINCT cg.client_id) FROM parecer.client_grants cg WHERE cg.role_exists) > 1 THEN
        v_bad := v_bad || (SELECT pg_catalog.format('isolation is off while %s clients have grants: every runner and reader serves every client',
                                                    count(DISTINCT cg.client_id))
                           FROM parecer.client_grants cg WHERE cg.role_exists);
        v_fixes := v_fixes || 'probably meant: SELECT parecer.set_setting(''isolation'', ''on''); (docs/operations.md, Multi-tenant setup)'::text;
    END IF;
    RETURN QUERY SELECT 'isolation'::text,
        CASE WHEN cardinality(v_bad) = 0 THEN 'ok' ELSE 'warn' END,
        CASE WHEN cardinality(v_bad) = 0
             THEN pg_catalog.format('isolation %s; %s client grant(s)', v_iso, (SELECT count(*) FROM parecer._client_grants))
             ELSE array_to_string(v_bad, '; ') END,
        CASE WHEN cardinality(v_bad) = 0 THEN NULL ELSE array_to_string(v_fixes, '; ') END;
    v_bad := '{}';

    -- settings: every stored value parses as its kind and lies within its bounds
    FOR v_set IN SELECT s.name, COALESCE(s.value, s.default_value) AS v, s.kind, s.min_value, s.max_value
                 FROM parecer._settings s ORDER BY s.name LOOP
        BEGIN
            IF v_set.kind = 'integer' AND NOT (v_set.v::bigint BETWEEN COALESCE(v_set.min_value, v_set.v::bigint)
                                                               AND COALESCE(v_set.max_value, v_set.v::bigint)) THEN
                v_bad := v_bad || v_set.name;
            ELSIF v_set.kind = 'interval[]' AND cardinality(v_set.v::interval[]) = 0 THEN
                v_bad := v_bad || v_set.name;
            ELSIF v_set.name = 'budget_timezone' AND NOT EXISTS (SELECT FROM pg_catalog.pg_timezone_names z WHERE z.name = v_set.v)
                  AND upper(v_set.v) <> 'UTC' THEN
                v_bad := v_bad || v_set.name;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            v_bad := v_bad || v_set.name;
        END;
    END LOOP;
    RETURN QUERY SELECT 'settings'::text,
        CASE WHEN cardinality(v_bad) = 0 THEN 'ok' ELSE 'fail' END,
        CASE WHEN cardinality(v_bad) = 0 THEN 'every setting is valid'
             ELSE 'invalid: ' || array_to_string(v_bad, ', ') END,
        CASE WHEN cardinality(v_bad) = 0 THEN NULL
             ELSE 'reset it: SELECT parecer.set_setting(''NAME'', NULL); (the default applies)' END;

    -- prices and limits of every model in use: the active scripts' models and the runners' default
    FOR v_model IN SELECT DISTINCT m FROM (
                       SELECT s.model AS m FROM parecer.scripts s WHERE s.is_active AND s.model IS NOT NULL
                       UNION SELECT doctor.model) x
                   WHERE m IS NOT NULL ORDER BY m LOOP
        IF NOT EXISTS (SELECT FROM parecer._model_prices p WHERE v_model LIKE p.model || '%') THEN
            RETURN QUERY SELECT 'price ' || v_model, 'warn'::text,
                'no price: its cost is not counted and budgets cannot hold it back'::text,
                pg_catalog.format('`parecer prices set %s --input USD --cached USD --output USD`', v_model);
        ELSE
            RETURN QUERY SELECT 'price ' || v_model, 'ok'::text,
                (SELECT pg_catalog.format('priced as %s: %s / %s / %s USD per 1M tokens', p.model, p.input_usd_per_mtok,
                                          p.cached_input_usd_per_mtok, p.output_usd_per_mtok)
                 FROM parecer._model_prices p WHERE v_model LIKE p.model || '%' ORDER BY length(p.model) DESC LIMIT 1),
                NULL::text;
        END IF;
    END LOOP;
    SELECT string_agg(pg_catalog.format('%s until %s (%s)', r.limit_key, r.paused_until, r.pause_reason), '; ')
    INTO v_paused FROM parecer._rate_limits r WHERE r.paused_until > clock_timestamp();
    RETURN QUERY SELECT 'rate limits'::text,
        CASE WHEN v_paused IS NULL THEN 'ok' ELSE 'warn' END,
        COALESCE('paused: ' || v_paused,
                 (SELECT pg_catalog.format('%s key(s) + model(s); defaults %s rpm, %s tpm', count(*),
                                           parecer._setting('default_rpm'), parecer._setting('default_tpm'))
                  FROM parecer._rate_limits)),
        CASE WHEN v_paused IS NULL THEN NULL
             ELSE 'the provider asked to wait (429, quota or auth); `parecer limits show` shows why' END;

    -- runners alive: work is due, and nothing holds a lease, reported or asked for capacity lately
    SELECT count(*) INTO v_due FROM parecer.analyses a
    WHERE a.status = 'pending' AND (a.next_retry_at IS NULL OR a.next_retry_at <= now());
    v_alive := EXISTS (SELECT FROM parecer.analyses a WHERE a.status = 'processing' AND a.lease_expires_at > now())
            OR EXISTS (SELECT FROM parecer.analyses a WHERE a.status = 'done'
                       AND a.processed_at > now() - make_interval(mins => active_minutes))
            OR EXISTS (SELECT FROM parecer._rate_limits r WHERE r.updated_at > now() - make_interval(mins => active_minutes));
    RETURN QUERY SELECT 'runners'::text,
        CASE WHEN v_alive THEN 'ok' WHEN v_due = 0 THEN 'ok' ELSE 'fail' END,
        CASE WHEN v_alive THEN pg_catalog.format('active in the last %s minutes; %s item(s) due', active_minutes, v_due)
             WHEN v_due = 0 THEN 'no runner active, and no work is due'
             ELSE pg_catalog.format('%s item(s) due and no runner active in the last %s minutes', v_due, active_minutes) END,
        CASE WHEN v_alive OR v_due = 0 THEN NULL
             ELSE 'start one: `parecer runner` (OPENAI_API_KEY in its environment)' END;

    -- terminal failures wait for a person
    SELECT count(*) INTO v_failed FROM parecer.analyses a WHERE a.status = 'failed';
    RETURN QUERY SELECT 'terminal failures'::text,
        CASE WHEN v_failed = 0 THEN 'ok' ELSE 'warn' END,
        pg_catalog.format('%s item(s) failed terminally', v_failed),
        CASE WHEN v_failed = 0 THEN NULL
             ELSE 'read the errors in parecer.attempts, fix the cause, then `parecer retry --client CLIENT`' END;

    -- Batch API batches left behind: one no process works on (it holds the batch driver's
    -- advisory lock, class 7040118, while it does) and that has not moved for active_minutes
    -- (preparing or uploaded: a killed submit; ingesting: a killed poll); one still
    -- submitted past the 24-hour completion window by more than active_minutes (nothing
    -- polls it: its results wait, and its items are redone when the batch lease runs out).
    SELECT string_agg(pg_catalog.format('batch %s %s for %s min', b.batch_id, b.status,
                                        floor(extract(epoch FROM now() - b.updated_at) / 60)), ', ' ORDER BY b.batch_id)
      INTO v_members
    FROM parecer._batches b
    WHERE b.status IN ('preparing', 'uploaded', 'ingesting')
      AND b.updated_at < now() - make_interval(mins => active_minutes)
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_locks l
                      WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 7040118::oid
                        AND l.objid = (b.batch_id % 2147483648)::oid AND l.objsubid = 2
                        AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database()));
    SELECT string_agg(pg_catalog.format('batch %s submitted %s h ago', b.batch_id,
                                        floor(extract(epoch FROM now() - b.submitted_at) / 3600)), ', ' ORDER BY b.batch_id)
      INTO v_paused
    FROM parecer._batches b
    WHERE b.status = 'submitted'
      AND b.submitted_at < now() - interval '24 hours' - make_interval(mins => active_minutes);
    RETURN QUERY SELECT 'batches'::text,
        CASE WHEN v_members IS NULL AND v_paused IS NULL THEN 'ok' ELSE 'warn' END,
        CASE WHEN v_members IS NULL AND v_paused IS NULL
             THEN (SELECT pg_catalog.format('%s open batch(es)', count(*)) FROM parecer._batches b
                   WHERE b.status IN ('preparing', 'uploaded', 'submitted', 'ingesting'))
             ELSE concat_ws('; ', 'no process works on ' || v_members,
                            'past the 24-hour window: ' || v_paused) END,
        CASE WHEN v_members IS NULL AND v_paused IS NULL THEN NULL
             ELSE '`parecer batch poll` resumes and finishes them (run it from cron); `parecer batch cancel BATCH_ID` gives a batch''s items back' END;
END
$$;
COMMENT ON FUNCTION parecer.doctor(text, integer) IS 'The database''s health checks, one row each (check_name, status ok|warn|fail, detail, fix): adapter views answer with data, roles exist and are held, tenant isolation (isolation on: runner/reader login roles without a client grant, limit keys bound to no client; grants to dropped roles; isolation off while several clients have grants), settings valid, models in use priced, rate-limit pauses, runners active in the last active_minutes when work is due, terminal failures, Batch API batches left behind (preparing, uploaded or ingesting, unchanged for active_minutes and held by no process: a killed submit or poll; submitted more than 24 hours and active_minutes ago). `parecer doctor` adds connection, migrations and API-file checks.';

-- One kind of purge: the rows of p_table matching p_where, at most p_limit of them
-- deleted (one statement: the rows are read and deleted under one snapshot), or
-- with p_dry_run all of them counted. p_where is built by purge with %L literals.
CREATE OR REPLACE FUNCTION parecer._purge_rows(p_table regclass, p_where text, p_dry_run boolean, p_limit integer)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_n bigint;
BEGIN
    EXECUTE pg_catalog.format(
        'WITH c AS (SELECT t.ctid FROM %1$s t WHERE %2$s LIMIT $1),'
        ' d AS (DELETE FROM %1$s x WHERE NOT $2 AND x.ctid = ANY (ARRAY(SELECT c.ctid FROM c)) RETURNING 1)'
        ' SELECT CASE WHEN $2 THEN (SELECT count(*) FROM c) ELSE (SELECT count(*) FROM d) END', p_table, p_where)
    INTO v_n USING CASE WHEN p_dry_run THEN NULL ELSE p_limit END, p_dry_run;
    RETURN v_n;
END
$$;

-- Retention: delete what is older than older_than and no longer needed, one
-- batch per kind per call (short transactions, row locks only on old rows; the
-- CLI calls it until nothing is left). dry_run only counts everything it would
-- delete. Kept always: items not done, the newest analysis generation (tag) of
-- every client's script, and spend and budget alerts of the current budget month.
CREATE OR REPLACE FUNCTION parecer.purge(older_than interval, dry_run boolean DEFAULT true,
                                         batch_size integer DEFAULT 5000)
RETURNS TABLE (kind text, deleted bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_cutoff timestamptz;
    v_month  date;
BEGIN
    IF older_than IS NULL OR older_than < interval '1 day' THEN
        PERFORM parecer._invalid(pg_catalog.format('older_than must be at least 1 day, not %s', COALESCE(older_than::text, 'NULL')),
                                 'Pass e.g. older_than => interval ''180 days'' (CLI: --older-than 180d).');
    END IF;
    IF batch_size IS NULL OR batch_size NOT BETWEEN 1 AND 1000000 THEN
        PERFORM parecer._invalid('batch_size must be between 1 and 1000000', 'Pass e.g. batch_size => 5000.');
    END IF;
    v_cutoff := now() - older_than;
    v_month := date_trunc('month', parecer._budget_day())::date;
    RETURN QUERY
    SELECT k.kind, parecer._purge_rows(k.tbl, k.cond, dry_run, batch_size)
    FROM (VALUES
        -- attempts that ended before the cutoff (the done attempt of a done item is the item's row)
        (1, 'attempts', 'parecer._attempts'::regclass, pg_catalog.format('finished_at < %L', v_cutoff)),
        -- done analyses of past generations: every tag but the newest of its client's script key
        (2, 'analyses of past generations', 'parecer.analyses'::regclass,
         pg_catalog.format('analysis_id IN (SELECT p.analysis_id FROM parecer._purgeable_analyses(%L) p)', v_cutoff)),
        -- spend rows before the cutoff and before the current budget month (budgets read that month)
        (3, 'spend days', 'parecer._spend'::regclass, pg_catalog.format('day < %L AND day < %L', v_cutoff::date, v_month)),
        (4, 'budget alerts', 'parecer._budget_alerts'::regclass,
         pg_catalog.format('period_start < %L AND period_start < %L', v_cutoff::date, v_month))
    ) k(o, kind, tbl, cond)
    ORDER BY k.o;
END
$$;
COMMENT ON FUNCTION parecer.purge(interval, boolean, integer) IS 'Retention: deletes attempts that ended before now() - older_than, done analyses processed before it whose tag is not the newest of their client''s script key, and spend days and budget alerts before it and before the current budget month; at most batch_size rows per kind per call (call again until every count is 0). dry_run (the default) counts all it would delete. `parecer purge --older-than 180d` loops.';

-- Done analyses processed before p_cutoff of a generation (tag) that is not the
-- newest of its client's script key (newest: the tag of the latest created item).
CREATE OR REPLACE FUNCTION parecer._purgeable_analyses(p_cutoff timestamptz)
RETURNS TABLE (analysis_id uuid)
LANGUAGE sql STABLE AS $$
    WITH newest AS (
        SELECT DISTINCT ON (a.client_id, s.script_key) a.client_id, s.script_key, a.analysis_version_tag
        FROM parecer.analyses a JOIN parecer.scripts s ON s.script_id = a.script_id
        ORDER BY a.client_id, s.script_key, a.created_at DESC
    )
    SELECT a.analysis_id
    FROM parecer.analyses a
    JOIN parecer.scripts s ON s.script_id = a.script_id
    JOIN newest n ON n.client_id = a.client_id AND n.script_key = s.script_key
    WHERE a.status = 'done' AND a.processed_at < p_cutoff AND a.analysis_version_tag <> n.analysis_version_tag
$$;
