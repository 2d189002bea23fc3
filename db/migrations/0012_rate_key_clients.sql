-- 0012: rate-limit keys bound to clients (issue 17, tenant isolation).
--
-- With the isolation setting on, a runner that does not serve every client may
-- take from (acquire_rate) or pause (report_rate) only a limit key an admin bound
-- to one of its clients (parecer.bind_rate_limit). NULL: bound to no client (the
-- single-tenant default; only callers that serve every client may use it then).
ALTER TABLE parecer._rate_limits
    ADD COLUMN client_ids   text[],
    ADD COLUMN client_slugs text[];
COMMENT ON COLUMN parecer._rate_limits.client_ids IS
'The clients whose runners may use the key when isolation is on (parecer.bind_rate_limit); NULL: none.';
COMMENT ON COLUMN parecer._rate_limits.client_slugs IS
'The slugs of client_ids, as bound (for display).';
