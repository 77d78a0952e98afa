-- An emergency revocation, and its sweeps every 10 s for 10 minutes,
-- find a key's credentials by index, not by scanning the registry.
CREATE INDEX credentials_by_key ON credentials (kid, state);
