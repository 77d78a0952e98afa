-- Idempotency rows (sealed answers) expire: each records when it was
-- stored, and the acting node deletes those older than
-- server.limits.idempotency_ttl_s (rows from before this migration are 0:
-- old, and go at the first purge).
ALTER TABLE idempotency ADD COLUMN created_at {int} NOT NULL DEFAULT 0;
CREATE INDEX idempotency_by_age ON idempotency (created_at);
