-- Batch issuance (OpenID4VCI): one document in several copies, each bound
-- to its own phone key with its own status position, for presentations a
-- verifier cannot link. A copy names the credential it is a copy of; one
-- live ID per holder now counts documents, not copies (one holder per
-- phone key is unchanged: every copy's key is its own).
ALTER TABLE credentials ADD COLUMN batch_of TEXT;
DROP INDEX one_live_per_holder;
CREATE UNIQUE INDEX one_live_per_holder ON credentials (holder)
    WHERE state IN ('active', 'suspended') AND batch_of IS NULL;
CREATE INDEX credentials_by_batch ON credentials (batch_of) WHERE batch_of IS NOT NULL;
