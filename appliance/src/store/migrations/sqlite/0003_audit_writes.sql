-- The single writer numbers entries from the log itself, so the head
-- row (never updated here) goes; readiness writes a row of its own.
DROP TABLE audit_head;
CREATE TABLE write_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL);
