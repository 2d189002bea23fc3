-- Rollback of 0017. The API of the release you roll back to defines the
-- custom-field trigger and its PL/pgSQL _extra_problem again when it is applied;
-- the helper this release split out of _extra_problem goes.
DROP FUNCTION IF EXISTS parecer._declared_fields_problem(jsonb, jsonb);
