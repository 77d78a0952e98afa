-- The registry.
CREATE TABLE credentials (
    id TEXT PRIMARY KEY,
    holder {bytes} NOT NULL,
    device TEXT NOT NULL,
    profile TEXT NOT NULL,
    kid TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'suspended', 'revoked', 'superseded')),
    status_list {int} NOT NULL,
    status_index {int} NOT NULL,
    issued_at {int} NOT NULL,
    valid_until {int} NOT NULL,
    document_expiry TEXT NOT NULL,
    free_copy {bool} NOT NULL,
    UNIQUE (status_list, status_index)
);
CREATE UNIQUE INDEX one_live_per_holder ON credentials (holder) WHERE state IN ('active', 'suspended');
CREATE UNIQUE INDEX one_holder_per_device ON credentials (device) WHERE state IN ('active', 'suspended');
-- One free first-time copy per holder, ever (and the index the quota update's check uses).
CREATE UNIQUE INDEX one_free_copy_per_holder ON credentials (holder) WHERE free_copy;
CREATE TABLE status_lists (id {int} PRIMARY KEY, next_index {int} NOT NULL, size {int} NOT NULL);
INSERT INTO status_lists (id, next_index, size) VALUES (1, 0, 1048576);
CREATE TABLE idempotency (
    client TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash {bytes} NOT NULL,
    response {bytes} NOT NULL,
    credential_id TEXT NOT NULL,
    PRIMARY KEY (client, key)
);
CREATE TABLE decisions (
    seq {serial},
    at {int} NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    rule TEXT,
    policy_hash TEXT NOT NULL,
    credential_id TEXT,
    holder {bytes}
);
