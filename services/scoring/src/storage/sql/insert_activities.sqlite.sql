-- A group's scored activities in one statement, the rows as one JSON array
-- of arrays (SQLite only; PostgreSQL takes column arrays). One prepared
-- statement and one bound value per group instead of chunks of 256 rows
-- with 12 bound values each, every one built, copied and bound by the
-- driver while the service's only write lock is held (docs/performance.md,
-- round 21). Row: [event_id, account_id, contact_id or null, activity_type,
-- occurred_at_ms, rule_points, counted_points, capped, intent].
-- The WHERE clause is SQLite's rule for an upsert on INSERT ... SELECT.
INSERT INTO activities (
    tenant_id, event_id, account_id, contact_id, activity_type, occurred_at_ms,
    model_version, rule_points, counted_points, capped, intent, recorded_at_ms)
SELECT $1, r.value ->> 0, r.value ->> 1, r.value ->> 2, r.value ->> 3, r.value ->> 4,
       $2, r.value ->> 5, r.value ->> 6, r.value ->> 7, r.value ->> 8, $3
FROM json_each($4) AS r
WHERE true
ON CONFLICT (tenant_id, event_id) DO NOTHING
