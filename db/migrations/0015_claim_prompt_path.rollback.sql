-- Rollback of 0015. The functions of this release stay until the API of the
-- release you roll back to is applied; these signatures are not in it.
DROP FUNCTION IF EXISTS parecer._transcript_lines(text, text);
DROP FUNCTION IF EXISTS parecer._transcript_cut(text[], text, bigint);
