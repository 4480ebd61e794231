-- Stays of a tenant since the window start (the first and second values):
-- every transition and every account creation (which enters TARGETED), each
-- with the next transition of its account (LEAD over the history, in order).
-- At-risk entries keep the stage (from_stage = to_stage): not a stay.
-- The history of an erased account is kept, but the account (and its creation)
-- is gone: it leaves the report whole, not by its first stay alone.
-- funnel.sql and funnel_median.sql continue it.
WITH entries AS (
  SELECT account_id, seq, to_stage AS stage, to_rank AS stage_rank, occurred_at_ms AS entered_ms
  FROM account_transitions t
  WHERE tenant_id = $1 AND occurred_at_ms >= $2 AND from_stage <> to_stage
    AND EXISTS (SELECT 1 FROM accounts a
                WHERE a.tenant_id = $1 AND a.account_id = t.account_id)
  UNION ALL
  SELECT account_id, 0 AS seq, 'TARGETED' AS stage, 1 AS stage_rank, created_at_ms AS entered_ms
  FROM accounts WHERE tenant_id = $1 AND created_at_ms >= $2
), stays AS (
  SELECT account_id, stage, stage_rank, entered_ms,
    LEAD(stage) OVER (PARTITION BY account_id ORDER BY seq) AS next_stage,
    LEAD(stage_rank) OVER (PARTITION BY account_id ORDER BY seq) AS next_rank,
    LEAD(entered_ms) OVER (PARTITION BY account_id ORDER BY seq) AS exit_ms
  FROM entries
)
