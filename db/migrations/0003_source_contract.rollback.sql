DROP VIEW IF EXISTS parecer.source_contact_tags;
DROP VIEW IF EXISTS parecer.source_messages;
DROP VIEW IF EXISTS parecer.source_sessions;
DROP VIEW IF EXISTS parecer.source_clients;
