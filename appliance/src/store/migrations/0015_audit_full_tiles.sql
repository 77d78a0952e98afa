-- Full tiles of the audit log kept whole (issue 15): a checkpoint that
-- completes a tile of 256 hashes (level 0: leaf hashes; above: the rows of
-- `audit_tiles`) stores it as one row of 8,192 bytes, checked against the
-- tile hash above it, so an inclusion or consistency proof reads one row
-- per tile level however large the log. A range of a tile not stored
-- whole (the partial tile at the log's end, a log older than this table)
-- is read row by row as before. (Not WITHOUT ROWID on SQLite: in 1 KiB
-- pages such a table keeps under 240 bytes of a row in place and chains
-- the rest; measured 4x slower to read.)
CREATE TABLE audit_full_tiles (level {int} NOT NULL, idx {int} NOT NULL, hashes {bytes} NOT NULL, PRIMARY KEY (level, idx));
