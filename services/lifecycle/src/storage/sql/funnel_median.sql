-- The middle one or two of the ended stays of one stage (the fourth value)
-- by length: the database sorts, the service reads one or two rows (LIMIT
-- and OFFSET are the fifth and sixth values).
SELECT exit_ms - entered_ms AS duration FROM stays
WHERE entered_ms >= $2 AND entered_ms < $3 AND exit_ms < $3 AND stage = $4
ORDER BY duration LIMIT $5 OFFSET $6
