-- Writes a group's contact scores in one statement, one array per column
-- (PostgreSQL only; SQLite takes the multi-row upsert that sea-query
-- builds). Contacts arrive unique and sorted, so concurrent groups lock
-- them in the same order.
INSERT INTO contact_scores (
    tenant_id, contact_id, account_id, engagement_score, computed_day, engaged)
SELECT $1, u.contact_id, u.account_id, u.engagement_score, $2, u.engaged
FROM UNNEST($3::varchar[], $4::varchar[], $5::double precision[], $6::boolean[])
     AS u(contact_id, account_id, engagement_score, engaged)
ON CONFLICT (tenant_id, contact_id) DO UPDATE
SET account_id = excluded.account_id,
    engagement_score = excluded.engagement_score,
    computed_day = excluded.computed_day,
    engaged = excluded.engaged
