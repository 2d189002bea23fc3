-- Rollback of 0014. The functions of this release stay until the API of the
-- release you roll back to is applied; these signatures are not in it.
DROP FUNCTION IF EXISTS parecer._batch(bigint, text[], text);
DROP FUNCTION IF EXISTS parecer._check_provider_id(text, text, text, text);
DROP FUNCTION IF EXISTS parecer._insights_client(text, text, integer, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS parecer._end_attempt(parecer.analyses, uuid, uuid, text, text, jsonb);
DROP FUNCTION IF EXISTS parecer._check_worker(text);
