REVOKE ALL ON ALL TABLES IN SCHEMA parecer FROM parecer_reader, parecer_runner, parecer_admin;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA parecer FROM parecer_reader, parecer_runner, parecer_admin;
REVOKE parecer_reader FROM parecer_admin;
