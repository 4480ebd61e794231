-- A transaction's messages in one statement, one array per column
-- (PostgreSQL only; SQLite takes multi-row VALUES): scoring enqueues one
-- message per account of an ingest group, a few hundred at once.
INSERT INTO outbox (id, tenant_id, topic, partition_key, payload, trace_context,
                    state, attempts, created_at_ms, next_attempt_at_ms)
SELECT u.id, $1, $2, u.partition_key, u.payload, $3, 'PENDING', 0, $4, $4
FROM UNNEST($5::varchar[], $6::varchar[], $7::bytea[]) AS u(id, partition_key, payload)
