-- Rollback of 0001 (everything parecer installed). Roles are cluster-wide: each is dropped only when no other
-- database still references it.
DROP SCHEMA IF EXISTS parecer CASCADE;
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['parecer_reader', 'parecer_runner', 'parecer_admin'] LOOP
        BEGIN
            EXECUTE pg_catalog.format('DROP ROLE IF EXISTS %I', r);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            RAISE NOTICE 'role % kept: still referenced elsewhere', r;
        END;
    END LOOP;
END
$$;
