-- 0005: what the seeds' rules need stored (issue 15).
--
-- * settings of kind 'interval' (min_idle: seed 003's 24-hour rule);
-- * the fingerprint of the transcript a done item analysed (message count and
--   last message time), so parecer.stale_reports can tell a session that changed;
-- * run_result says which idle rule a run applied, and how many changed sessions it re-queued;
-- * eligible_sessions and start_run gain arguments: their old signatures go here,
--   db/api/ defines the new ones (one definition each).
ALTER TABLE parecer._settings DROP CONSTRAINT _settings_kind_check;
ALTER TABLE parecer._settings ADD CONSTRAINT _settings_kind_check
    CHECK (kind IN ('interval', 'interval[]', 'integer', 'numeric', 'text'));

ALTER TABLE parecer.analyses
    ADD COLUMN analysed_message_count   integer,
    ADD COLUMN analysed_last_message_at timestamptz;
COMMENT ON COLUMN parecer.analyses.analysed_message_count IS
'Messages the session had when the item was marked done (fingerprint; see parecer.stale_reports).';
COMMENT ON COLUMN parecer.analyses.analysed_last_message_at IS
'Latest sent_at of the session''s messages when the item was marked done (fingerprint; see parecer.stale_reports).';

ALTER TYPE parecer.run_result
    ADD ATTRIBUTE min_idle interval,
    ADD ATTRIBUTE note text,
    ADD ATTRIBUTE changed integer;

DROP FUNCTION IF EXISTS parecer.eligible_sessions(text, integer, jsonb, timestamptz, timestamptz, boolean);
DROP FUNCTION IF EXISTS parecer.start_run(text, text, integer, integer, jsonb, text, boolean, boolean, integer,
                                          timestamptz, timestamptz, boolean, boolean);
