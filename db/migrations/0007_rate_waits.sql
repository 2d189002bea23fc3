-- 0007: how often the shared limiter made a caller wait (a request the buckets
-- could not cover yet), beside the 429s the provider sent (throttled).
ALTER TABLE parecer._rate_limits ADD COLUMN waited bigint NOT NULL DEFAULT 0;
