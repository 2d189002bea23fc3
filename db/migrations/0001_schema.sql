-- 0001: the parecer schema and its three roles.
-- Roles are cluster-wide and NOLOGIN: grant them to your login roles
-- (GRANT parecer_runner TO my_worker_login). Tables are private; the API is the
-- functions and views granted to these roles in 0008 and later migrations.
CREATE SCHEMA IF NOT EXISTS parecer;
COMMENT ON SCHEMA parecer IS 'parecer: LLM analysis of support chat sessions. Tables are not the API; functions and views are (see docs/sql-api.md).';

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'parecer_admin') THEN
        CREATE ROLE parecer_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'parecer_runner') THEN
        CREATE ROLE parecer_runner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'parecer_reader') THEN
        CREATE ROLE parecer_reader NOLOGIN;
    END IF;
END
$$;

REVOKE ALL ON SCHEMA parecer FROM PUBLIC;
GRANT USAGE ON SCHEMA parecer TO parecer_admin, parecer_runner, parecer_reader;
-- Functions created from here on are not executable by PUBLIC unless granted.
ALTER DEFAULT PRIVILEGES IN SCHEMA parecer REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
