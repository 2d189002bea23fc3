-- Rollback of 0010. The functions of this release that use these objects stay
-- until the API of the release you roll back to is applied.
DROP TRIGGER IF EXISTS analyses_extra_fields ON parecer.analyses;
DROP FUNCTION IF EXISTS parecer.create_script_version(text, text, text, text[], text, text, boolean, text[], jsonb);
ALTER TYPE parecer.script_info DROP ATTRIBUTE extra_fields CASCADE;
ALTER TABLE parecer.scripts DROP COLUMN extra_fields CASCADE;
