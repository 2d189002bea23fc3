DROP FUNCTION IF EXISTS parecer.retry_failed(bigint, text, text);
DROP VIEW IF EXISTS parecer.queue_status;
DROP VIEW IF EXISTS parecer.runs_overview;
DROP FUNCTION IF EXISTS parecer.run_summary(bigint);
DROP FUNCTION IF EXISTS parecer._run_summary(bigint);
DROP FUNCTION IF EXISTS parecer.start_run(text, text, integer, integer, jsonb, text, boolean, boolean, integer, timestamptz, timestamptz, boolean);
DROP TYPE IF EXISTS parecer.run_result;
