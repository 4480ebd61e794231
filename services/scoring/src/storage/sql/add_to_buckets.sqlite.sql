-- Adds a group's points and counts to its buckets in one statement, the
-- rows as one JSON array of arrays (SQLite only; PostgreSQL takes column
-- arrays): one prepared statement and one bound value per group (see
-- insert_activities.sqlite.sql). Row: [account_id, contact_id or "",
-- activity_type, intent, day, points, activity_count]; keys arrive
-- aggregated, so no row is hit twice.
INSERT INTO score_buckets (
    tenant_id, account_id, contact_id, activity_type, intent, day, points, activity_count)
SELECT $1, r.value ->> 0, r.value ->> 1, r.value ->> 2, r.value ->> 3, r.value ->> 4,
       r.value ->> 5, r.value ->> 6
FROM json_each($2) AS r
WHERE true
ON CONFLICT (tenant_id, account_id, contact_id, activity_type, intent, day) DO UPDATE
SET points = score_buckets.points + excluded.points,
    activity_count = score_buckets.activity_count + excluded.activity_count
