-- A group's scored activities in one statement, one array per column
-- (PostgreSQL only; SQLite takes one JSON array, insert_activities.sqlite.sql).
-- Measured against 256-row VALUES chunks in docs/performance.md: one round
-- trip and one short plan per group instead of ~20 statements with ~3,000
-- bound values each. Rows arrive sorted by event id, so concurrent groups
-- take index locks in the same order. contact_id '' stands for NULL (arrays
-- of text cannot carry NULLs through the driver; ids are never empty).
-- No ON CONFLICT: a stored id fails the statement (unique violation) and the
-- group is retried checking first, as repeats are rare. The speculative
-- insertion ON CONFLICT DO NOTHING makes read 12.9 buffers per row against
-- 9.3 without it (docs/performance.md, round 16).
INSERT INTO activities (
    tenant_id, event_id, account_id, contact_id, activity_type, occurred_at_ms,
    model_version, rule_points, counted_points, capped, intent, recorded_at_ms)
SELECT $1, u.event_id, u.account_id, NULLIF(u.contact_id, ''), u.activity_type,
       u.occurred_at_ms, $2, u.rule_points, u.counted_points, u.capped, u.intent, $3
FROM UNNEST($4::varchar[], $5::varchar[], $6::varchar[], $7::varchar[],
            $8::bigint[], $9::integer[], $10::integer[], $11::boolean[], $12::boolean[])
     AS u(event_id, account_id, contact_id, activity_type, occurred_at_ms,
          rule_points, counted_points, capped, intent)
