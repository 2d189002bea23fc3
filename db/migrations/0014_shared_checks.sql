-- 0014: shared checks said once. A batch step reads its batch and checks its state in one call,
-- parecer._batch(batch_id, allowed states, step); the two signatures it replaces go.
DROP FUNCTION IF EXISTS parecer._batch_state(parecer._batches, text[], text);
DROP FUNCTION IF EXISTS parecer._batch(bigint);
-- insights and insight_sessions read their client through parecer._insights_client,
-- which checks the filters too.
DROP FUNCTION IF EXISTS parecer._insights_check(text, text, text, integer, timestamptz, timestamptz);
-- mark_failed and release hand parecer._end_attempt the item's row (and the lease
-- check's outcome) instead of its fields one by one.
DROP FUNCTION IF EXISTS parecer._end_attempt(uuid, integer, text, uuid, timestamptz, text, text, text, text, jsonb, text, text);
