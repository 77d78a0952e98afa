-- Decisions are queued in their transaction and placed in the log by
-- one sequencer at a time: a head row taken by every issuance serialised
-- the whole cluster's commits.
CREATE TABLE audit_queue (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    node TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    rule TEXT,
    policy_hash TEXT NOT NULL,
    profile TEXT,
    credential_id TEXT,
    key_id TEXT,
    payload BYTEA,
    holder BYTEA
);
