-- Signing keys, leases, officer proposals, the IACA's CRL.
CREATE TABLE signing_keys (
    label TEXT PRIMARY KEY,
    chain TEXT NOT NULL,
    kid TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'retired', 'destroyed')),
    created_at {int} NOT NULL,
    activate_at {int} NOT NULL,
    certificate {bytes},
    public_key {bytes} NOT NULL,
    cert_not_after {int} NOT NULL,
    signatures {int} NOT NULL DEFAULT 0,
    last_valid_until {int},
    revoked_reason TEXT,
    revoked_at {int}
);
CREATE UNIQUE INDEX one_pending_key ON signing_keys (chain) WHERE state = 'pending';
CREATE UNIQUE INDEX one_active_key ON signing_keys (chain) WHERE state = 'active';
CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until_ms {int} NOT NULL);
CREATE TABLE proposals (
    id TEXT PRIMARY KEY,
    created_at {int} NOT NULL,
    body TEXT NOT NULL,
    version {int} NOT NULL
);
CREATE TABLE pki_documents (name TEXT PRIMARY KEY, body TEXT NOT NULL);
