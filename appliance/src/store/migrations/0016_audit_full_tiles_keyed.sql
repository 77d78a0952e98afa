-- Whole tiles found by one key (issue 15): `tile` = level * 2^40 + index
-- (`audit_tiles::full_tile_key`). On SQLite that is the rowid, so a proof
-- finds its tile in one B-tree descent instead of two (the primary key's
-- index, then the table): at 10^8 entries one cold page fewer per proof.
-- The rows are copied once (about 32 MB per million entries; at 10^8 a
-- few minutes, and SQLite keeps the freed pages for later rows).
CREATE TABLE audit_full_tiles_keyed (tile {int} PRIMARY KEY, hashes {bytes} NOT NULL);
INSERT INTO audit_full_tiles_keyed (tile, hashes)
    SELECT level * 1099511627776 + idx, hashes FROM audit_full_tiles;
DROP TABLE audit_full_tiles;
ALTER TABLE audit_full_tiles_keyed RENAME TO audit_full_tiles;
