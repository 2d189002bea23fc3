-- 0010: custom report fields per script version (issue 15; seed 003's remarketing
-- type, suggested message, priority, keywords, confidence).
-- * scripts.extra_fields: the typed fields a version declares (NULL: none), merged
--   into its report schema under "extra";
-- * create_script_version gains extra_fields: its 0009 signature goes here,
--   db/api/ defines the new one.
ALTER TABLE parecer.scripts ADD COLUMN extra_fields jsonb;
COMMENT ON COLUMN parecer.scripts.extra_fields IS
'The custom report fields this version declares (a JSON array, see create_script_version), NULL: none. The report''s "extra" object has exactly these fields.';
ALTER TYPE parecer.script_info ADD ATTRIBUTE extra_fields jsonb;

DROP FUNCTION IF EXISTS parecer.create_script_version(text, text, text, text[], text, text, boolean, text[]);
