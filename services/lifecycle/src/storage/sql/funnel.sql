-- Per stage, the stays that began in the window (the third value is its
-- end): entries, accounts, moved forward or back before the end, stayed,
-- went on to PIPELINE, and ended.
SELECT stage, COUNT(*) AS entered, COUNT(DISTINCT account_id) AS accounts,
  SUM(CASE WHEN exit_ms < $3 AND next_rank > stage_rank THEN 1 ELSE 0 END) AS moved_forward,
  SUM(CASE WHEN exit_ms < $3 AND next_rank < stage_rank THEN 1 ELSE 0 END) AS moved_back,
  SUM(CASE WHEN exit_ms IS NULL OR exit_ms >= $3 THEN 1 ELSE 0 END) AS stayed,
  SUM(CASE WHEN exit_ms < $3 AND next_stage = 'PIPELINE' THEN 1 ELSE 0 END) AS to_pipeline,
  SUM(CASE WHEN exit_ms < $3 THEN 1 ELSE 0 END) AS ended
FROM stays WHERE entered_ms >= $2 AND entered_ms < $3 GROUP BY stage
