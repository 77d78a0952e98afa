-- The audit log's tiles above level 0 (c2sp.org/tlog-tiles, issue 15):
-- the root of every perfect subtree of 256^level leaves, stored by the
-- checkpoint that completes it, so proofs, tiles and a node's start read
-- O(log n) rows. Level 0 is the leaf column of `audit_log`. A log that
-- predates this table gets its hashes at the next checkpoint (which
-- reads every leaf once).
CREATE TABLE audit_tiles (level {int} NOT NULL, idx {int} NOT NULL, hash {bytes} NOT NULL, PRIMARY KEY (level, idx));
