-- 0019: claim_with_prompts builds its items' prompts before leasing them, and the
-- lease's UPDATE records each prompt's hash (one row version per item instead of
-- a lease and a second update of the row in the same transaction). The private
-- helpers gain parameters; their old signatures go, so that no call is ambiguous
-- (db/api/ defines the new ones, and the new parecer._claim_ids).
DROP FUNCTION IF EXISTS parecer._lease_items(uuid[], text, integer, name);
DROP FUNCTION IF EXISTS parecer._prompts(uuid[]);
