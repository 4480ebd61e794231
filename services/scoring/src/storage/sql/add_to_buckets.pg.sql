-- Adds a group's points and counts to its buckets in one statement, one
-- array per column (PostgreSQL only; SQLite takes one JSON array,
-- add_to_buckets.sqlite.sql). Keys arrive aggregated and sorted, so no row is hit
-- twice and concurrent groups lock buckets in the same order.
INSERT INTO score_buckets (
    tenant_id, account_id, contact_id, activity_type, intent, day, points, activity_count)
SELECT $1, u.account_id, u.contact_id, u.activity_type, u.intent, u.day, u.points, u.activity_count
FROM UNNEST($2::varchar[], $3::varchar[], $4::varchar[], $5::boolean[],
            $6::bigint[], $7::bigint[], $8::bigint[])
     AS u(account_id, contact_id, activity_type, intent, day, points, activity_count)
ON CONFLICT (tenant_id, account_id, contact_id, activity_type, intent, day) DO UPDATE
SET points = score_buckets.points + excluded.points,
    activity_count = score_buckets.activity_count + excluded.activity_count
