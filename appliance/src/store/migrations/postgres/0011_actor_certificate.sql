ALTER TABLE audit_queue ADD COLUMN actor_certificate BYTEA;
