-- 0008: limits and spend to seed 003's level (issue 15).
--
-- * a requests-per-day limit per key (rpd; NULL: setting default_rpd) and the
--   key's request counter of the current budget day;
-- * one installation-wide daily and monthly budget beside the per-client ones;
-- * set_rate_limit gains rpd: its old signature goes here, db/api/ defines the new one.
ALTER TABLE parecer._rate_limits
    ADD COLUMN rpd          integer CHECK (rpd >= 1),
    ADD COLUMN day          date,
    ADD COLUMN day_requests integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN parecer._rate_limits.rpd IS 'Requests per day of the key (NULL: setting default_rpd; 0 there: no daily limit).';
COMMENT ON COLUMN parecer._rate_limits.day IS 'Budget-time-zone day day_requests counts.';
COMMENT ON COLUMN parecer._rate_limits.day_requests IS 'Requests granted on day.';

-- The installation's budgets: one row at most.
CREATE TABLE parecer._global_budget (
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    daily_budget_usd   numeric CHECK (daily_budget_usd >= 0),
    monthly_budget_usd numeric CHECK (monthly_budget_usd >= 0),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

DROP FUNCTION IF EXISTS parecer.set_rate_limit(text, integer, integer);
