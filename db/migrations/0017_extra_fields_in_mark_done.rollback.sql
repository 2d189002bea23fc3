-- Rollback of 0017. The API of the release you roll back to defines the
-- custom-field trigger and its PL/pgSQL _extra_problem again when it is applied;
-- the helpers this release split out of _extra_problem, _match and
-- _metadata_line go.
DROP FUNCTION IF EXISTS parecer._declared_fields_problem(jsonb, jsonb);
DROP FUNCTION IF EXISTS parecer._match_folded(text, text);
DROP FUNCTION IF EXISTS parecer._metadata_values(text, text[], text);
