-- Deals of a tenant closed in the window (closed_at_ms from the third value
-- up to the fourth) per kind, currency and status, counted and summed as
-- pipeline_open.sql does.
SELECT kind, value_currency, status, COUNT(*) AS n,
       CAST(SUM(value_units / 1000000) AS BIGINT) AS millions,
       CAST(SUM(value_units % 1000000) AS BIGINT) AS units,
       CAST(SUM(value_nanos) AS BIGINT) AS nanos
FROM opportunities
WHERE tenant_id = $1 AND status <> $2 AND closed_at_ms >= $3 AND closed_at_ms < $4
GROUP BY kind, value_currency, status
