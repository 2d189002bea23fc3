-- 0006: tenant isolation (issue 17).
--
-- * parecer._client_grants binds roles to clients (parecer.grant_client /
--   revoke_client); the role is kept by oid, so a role dropped and created again
--   under the same name is bound to nothing (fail closed);
-- * an item remembers the role that claimed it (leased_to) and the hash of the
--   prompt prompt_for gave that role under the lease (given_prompt_hash,
--   prompt_given_at), so mark_done can check the report's prompt_hash.
CREATE TABLE parecer._client_grants (
    role_oid    oid         NOT NULL,
    client_id   text        NOT NULL,
    client_slug text        NOT NULL,
    granted_at  timestamptz NOT NULL DEFAULT now(),
    granted_by  text        NOT NULL DEFAULT session_user,
    PRIMARY KEY (role_oid, client_id)
);
COMMENT ON TABLE parecer._client_grants IS
'Which roles serve which clients (parecer.grant_client); read through parecer.client_grants.';

ALTER TABLE parecer.analyses
    ADD COLUMN leased_to         name,
    ADD COLUMN given_prompt_hash text,
    ADD COLUMN prompt_given_at   timestamptz;
COMMENT ON COLUMN parecer.analyses.leased_to IS
'The role that claimed the item (SET ROLE role, else the login role); prompt_for serves a restricted role only its own leases.';
COMMENT ON COLUMN parecer.analyses.given_prompt_hash IS
'sha256 of the prompt parecer.prompt_for gave the lease holder in this attempt; mark_done requires the same prompt_hash (PR017).';
COMMENT ON COLUMN parecer.analyses.prompt_given_at IS
'When prompt_for last gave the lease holder the prompt of this attempt.';
