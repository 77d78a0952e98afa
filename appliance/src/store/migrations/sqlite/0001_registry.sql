-- The free-copy counter: one row (the single writer serialises its takers).
CREATE TABLE quotas (
    name TEXT PRIMARY KEY,
    used INTEGER NOT NULL,
    quota INTEGER NOT NULL,
    CHECK (used >= 0 AND used <= quota)
);
INSERT INTO quotas (name, used, quota) VALUES ('free_first_time', 0, 0);
