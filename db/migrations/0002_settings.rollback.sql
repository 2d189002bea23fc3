DROP FUNCTION IF EXISTS parecer.set_setting(text, text);
DROP VIEW IF EXISTS parecer.settings;
DROP FUNCTION IF EXISTS parecer._backoff(integer);
DROP FUNCTION IF EXISTS parecer._setting_int(text);
DROP FUNCTION IF EXISTS parecer._setting(text);
DROP TABLE IF EXISTS parecer._settings;
