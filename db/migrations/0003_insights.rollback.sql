-- Rollback of 0003: parecer.insight_sessions returns this type and goes with it.
DROP TYPE parecer.insight_session CASCADE;
