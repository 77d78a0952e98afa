-- 48 more shards, then what is left of the quota spread evenly over all
-- 64 (as `quota::set` does): each keeps `used <= quota` and the quotas
-- still add up to the quota, so the total can never go one over. Nodes of
-- the previous build may be issuing meanwhile: the table is locked first,
-- or a copy they took after this transaction's snapshot would be counted
-- as room and the quota would grow by one per copy.
LOCK TABLE quota_shards IN EXCLUSIVE MODE;
INSERT INTO quota_shards (name, shard, used, quota)
    SELECT 'free_first_time', s, 0, 0 FROM generate_series(16, 63) AS s
    ON CONFLICT DO NOTHING;
WITH total AS (
    SELECT GREATEST(SUM(quota) - SUM(used), 0)::BIGINT AS room, COUNT(*) AS n
      FROM quota_shards WHERE name = 'free_first_time'),
ranked AS (
    SELECT shard, ROW_NUMBER() OVER (ORDER BY shard) - 1 AS i
      FROM quota_shards WHERE name = 'free_first_time')
UPDATE quota_shards q
   SET quota = q.used + total.room / total.n
             + CASE WHEN ranked.i < total.room % total.n THEN 1 ELSE 0 END
  FROM total, ranked
 WHERE q.name = 'free_first_time' AND q.shard = ranked.shard;
