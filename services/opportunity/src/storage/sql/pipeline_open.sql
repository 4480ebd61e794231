-- Open deals of a tenant per kind, currency and step: how many, and the sums
-- of their amounts split so that no accepted input can overflow a 64-bit SUM
-- on either backend (units at most 10^12 each, so the millions part is at
-- most 10^6 and the rest below 10^6 per deal; cast because PostgreSQL sums
-- BIGINT into NUMERIC). Deals without an amount or estimate have no
-- currency: they are counted under NULL and in the sums of no currency.
SELECT kind, value_currency, step, COUNT(*) AS n,
       CAST(SUM(value_units / 1000000) AS BIGINT) AS millions,
       CAST(SUM(value_units % 1000000) AS BIGINT) AS units,
       CAST(SUM(value_nanos) AS BIGINT) AS nanos
FROM opportunities
WHERE tenant_id = $1 AND status = $2
GROUP BY kind, value_currency, step
