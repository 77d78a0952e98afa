-- The claims' HMAC, which a refresh must match.
ALTER TABLE credentials ADD COLUMN claims_mac {bytes};
