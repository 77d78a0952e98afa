-- The queue carries each decision's node number and sealed entry; the
-- sequencer places a node's entries in number order. Decisions queued by
-- an earlier build get the numbers their placement would have given them
-- (after the node's placed ones, in queue order) and keep a NULL entry:
-- the sequencer builds those the old way, unsealed.
ALTER TABLE audit_queue ADD COLUMN node_seq BIGINT;
ALTER TABLE audit_queue ADD COLUMN entry BYTEA;
-- When a row was queued, by the database's clock (one clock for every
-- node): how long a gap in a node's numbers has held its later rows back.
ALTER TABLE audit_queue ADD COLUMN queued_ms BIGINT NOT NULL
    DEFAULT CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT);
UPDATE audit_queue AS q SET node_seq = numbered.node_seq
FROM (
    SELECT id,
           COALESCE((SELECT MAX(l.node_seq) + 1 FROM audit_log l WHERE l.node = queued.node), 0)
             + ROW_NUMBER() OVER (PARTITION BY node ORDER BY id) - 1 AS node_seq
    FROM audit_queue AS queued
) AS numbered
WHERE q.id = numbered.id;
ALTER TABLE audit_queue ALTER COLUMN node_seq SET NOT NULL;
-- One decision per number: a late transaction cannot queue a number
-- twice, and a void cannot take a queued decision's place.
CREATE UNIQUE INDEX audit_queue_node_seq ON audit_queue (node, node_seq);
