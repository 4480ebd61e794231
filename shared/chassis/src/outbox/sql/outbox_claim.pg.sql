-- Claims the due partition heads of a topic with a lease: parameters
-- 1 lease owner, 2 lease until (ms), 3 topic, 4 now (ms), 5 how many,
-- 6 the tenants not to claim for now (an array: at their limit of calls in
-- flight, or their destination failing).
-- Only the oldest pending message of a partition (its head) may be claimed.
-- The heads are found in one pass over the pending index (GROUP BY
-- partition, MIN(id)); the earlier NOT EXISTS form probed the partition of
-- every pending row in id order and read about 38k buffers per claim once a
-- backlog built up. The outer conditions are checked again under the row
-- lock on PostgreSQL, so a message another replica claimed meanwhile is
-- skipped. The pending state is a literal so that the partial index over
-- pending messages matches even in a cached generic plan (with a parameter,
-- the generic plan scanned the delivered messages kept for retention).
UPDATE outbox SET lease_owner = $1, lease_until_ms = $2
WHERE id IN (
  SELECT o.id FROM (
    SELECT MIN(id) AS id FROM outbox
    WHERE topic = $3 AND state = 'PENDING'
    GROUP BY tenant_id, partition_key) h
  JOIN outbox o ON o.id = h.id
  WHERE o.next_attempt_at_ms <= $4
    AND (o.lease_until_ms IS NULL OR o.lease_until_ms < $4)
    AND NOT (o.tenant_id = ANY($6))
  ORDER BY o.id LIMIT $5)
AND state = 'PENDING' AND (lease_until_ms IS NULL OR lease_until_ms < $4)
RETURNING id, tenant_id, topic, partition_key, payload, attempts, trace_context, created_at_ms
