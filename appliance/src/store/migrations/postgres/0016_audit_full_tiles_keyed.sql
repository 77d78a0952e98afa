-- As in 0015: hashes do not compress, stored out of line without trying.
ALTER TABLE audit_full_tiles ALTER COLUMN hashes SET STORAGE EXTERNAL;
