-- Status positions are drawn at random from a list's free ones (issue 16):
-- every position ever drawn is kept here, taken by a credential or not, so
-- none is handed out twice. `status_lists.next_index` now counts the
-- positions drawn from a list. Lists opened before this migration were
-- handed out in order: any that holds a position is closed (no more draws)
-- and the next ones come from a new list.
CREATE TABLE status_positions (list {int} NOT NULL, idx {int} NOT NULL, PRIMARY KEY (list, idx));
INSERT INTO status_positions (list, idx) SELECT status_list, status_index FROM credentials;
UPDATE status_lists SET next_index = size WHERE next_index > 0;
