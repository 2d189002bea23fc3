-- Rollback of 0005. The functions of this release that use these columns and
-- attributes stay until the API of the release you roll back to is applied
-- (parecer db migrate of that release does it).
DROP FUNCTION IF EXISTS parecer.eligible_sessions(text, integer, jsonb, timestamptz, timestamptz, boolean, interval);
DROP FUNCTION IF EXISTS parecer.start_run(text, text, integer, integer, jsonb, text, boolean, boolean, integer,
                                          timestamptz, timestamptz, boolean, boolean, interval, boolean);
ALTER TYPE parecer.run_result DROP ATTRIBUTE min_idle, DROP ATTRIBUTE note, DROP ATTRIBUTE changed;
ALTER TABLE parecer.analyses DROP COLUMN analysed_message_count CASCADE,
                             DROP COLUMN analysed_last_message_at CASCADE;
DELETE FROM parecer._settings WHERE kind = 'interval';
ALTER TABLE parecer._settings DROP CONSTRAINT _settings_kind_check;
ALTER TABLE parecer._settings ADD CONSTRAINT _settings_kind_check
    CHECK (kind IN ('interval[]', 'integer', 'numeric', 'text'));
