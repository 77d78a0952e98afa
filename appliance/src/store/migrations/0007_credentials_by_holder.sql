-- Whether a holder has had a mobile ID before (any state: a first-time
-- claim the registry contradicts is refused) is read by index.
CREATE INDEX credentials_by_holder ON credentials (holder);
