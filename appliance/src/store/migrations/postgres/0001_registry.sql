-- The free-copy counter, sharded: every issuance taking a free copy
-- would otherwise queue on one row's lock for the length of an fsync.
-- The shards' quotas add up to the quota, and each shard is
-- `used <= quota`, so the total can never go one over.
CREATE TABLE quota_shards (
    name TEXT NOT NULL,
    shard INTEGER NOT NULL,
    used BIGINT NOT NULL,
    quota BIGINT NOT NULL,
    PRIMARY KEY (name, shard),
    CHECK (used >= 0 AND used <= quota)
);
INSERT INTO quota_shards (name, shard, used, quota)
    SELECT 'free_first_time', s, 0, 0 FROM generate_series(0, 15) AS s;
