-- The audit log replaces the decision records. The counter row makes
-- one gapless sequence: each append locks it until its transaction ends,
-- so entries commit in sequence order.
DROP TABLE decisions;
CREATE TABLE audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), size {int} NOT NULL);
INSERT INTO audit_head (id, size) VALUES (1, 0);
CREATE TABLE audit_log (
    seq {int} PRIMARY KEY,
    node TEXT NOT NULL,
    node_seq {int} NOT NULL,
    entry {bytes} NOT NULL,
    leaf {bytes} NOT NULL,
    UNIQUE (node, node_seq)
);
CREATE TABLE checkpoints (size {int} PRIMARY KEY, note TEXT NOT NULL);
