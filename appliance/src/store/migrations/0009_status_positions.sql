-- Status positions are drawn at random from a list's free ones (issue 16):
-- every position ever drawn is kept here, taken by a credential or not, so
-- none is handed out twice. `status_lists.next_index` now counts the
-- positions drawn from a list. Lists opened before this migration were
-- handed out in order: any that holds a position is closed (no more draws)
-- and the next ones come from a new list.
CREATE TABLE status_positions (list {int} NOT NULL, idx {int} NOT NULL, PRIMARY KEY (list, idx));
INSERT INTO status_positions (list, idx) SELECT status_list, status_index FROM credentials;
UPDATE status_lists SET next_index = size WHERE next_index > 0;
-- A credential suspended because its DS key was revoked (not by a
-- revoker) may be refreshed: re-signed by a valid key at a new position.
-- The position it leaves is revoked for good (`revoked_positions`), so
-- what the compromised key signed never reads valid again.
ALTER TABLE credentials ADD COLUMN suspended_for_key {bool} NOT NULL DEFAULT FALSE;
CREATE TABLE revoked_positions (list {int} NOT NULL, idx {int} NOT NULL, PRIMARY KEY (list, idx));
