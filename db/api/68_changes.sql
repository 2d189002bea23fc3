-- Changed sessions: a done item remembers what it analysed (message count and last
-- message time, its fingerprint); parecer.stale_reports lists the done items whose
-- session no longer matches, and start_run(reanalyse_changed => true) queues them
-- again. Seed 001 keeps one conversation per chat across episodes, and late
-- messages arrive: without this a changed session is never noticed.

-- The fingerprint is recorded by the UPDATE that makes an item done (_store_reports
-- in 60_reports.sql, behind mark_done and mark_done_many: the one way to done),
-- from the source as it is at that moment. A message that arrives between
-- prompt_for and mark_done is counted without having been analysed; the min_idle
-- rule makes that rare, and the next change of the session flags the item again.
-- (Until migration 0016 a trigger did it, with one query per row.)

-- Done items whose session changed since it was analysed.
CREATE OR REPLACE VIEW parecer.stale_reports WITH (security_barrier = true) AS
SELECT a.analysis_id, a.client_slug, a.session_id, s.script_key, s.version AS script_version, a.analysis_version_tag,
       a.processed_at,
       a.analysed_message_count, f.message_count,
       a.analysed_last_message_at, f.last_message_at
FROM parecer.analyses a
JOIN parecer.scripts s ON s.script_id = a.script_id
CROSS JOIN LATERAL (SELECT count(*) AS message_count, max(m.sent_at) AS last_message_at
                    FROM parecer.source_messages m WHERE m.session_id = a.session_id) f
WHERE a.status = 'done' AND ((SELECT sc.all_clients FROM parecer._caller_scope sc) OR a.client_id = ANY ((SELECT sc.client_ids FROM parecer._caller_scope sc)::text[]))
  AND a.analysed_message_count IS NOT NULL
  AND (a.analysed_message_count IS DISTINCT FROM f.message_count
       OR a.analysed_last_message_at IS DISTINCT FROM f.last_message_at);
COMMENT ON VIEW parecer.stale_reports IS
'Done items whose session changed since they were analysed: message count or last message time differ from the fingerprint mark_done recorded (items done before parecer recorded fingerprints are not listed). start_run(..., reanalyse_changed => true) queues them again.';
