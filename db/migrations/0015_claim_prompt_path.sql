-- 0015: a batch of prompts is built by one statement (issue 18): _transcript_lines
-- becomes a set-returning SQL function the planner inlines into its caller; its
-- scalar signature goes here, db/api/ defines the new one.
DROP FUNCTION IF EXISTS parecer._transcript_lines(text, text);
