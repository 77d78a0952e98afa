-- Whether a credential carries a portrait (not the portrait, nor its hash):
-- a holder refreshing from the wallet presents the credential, and may
-- withhold the portrait's disclosure; the flag says it must be there.
-- Unknown (NULL) for credentials issued before; those refresh at the counter.
ALTER TABLE credentials ADD COLUMN has_portrait {bool};
