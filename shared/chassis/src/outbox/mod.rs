//! The one outbox of every service: messages written in the same database
//! transaction as the change that caused them, then delivered by a background
//! deliverer with retries and backoff, surviving restarts.
//!
//! - Order: within a topic, messages of one tenant with the same partition
//!   key (an account) are delivered in the order they were written; only the
//!   oldest pending message of a partition can be claimed, so replicas never
//!   deliver one partition out of order. The tenant is part of the partition:
//!   a run handed to a sink never mixes tenants (another tenant may use the
//!   same key, e.g. record activities for an account id it does not have).
//! - Replicas: a claim is a lease written with a conditional UPDATE, so two
//!   deliverers on one PostgreSQL database never hold the same message.
//! - Delivery is at least once; a message is marked delivered only after the
//!   sink accepts it. Receivers drop repeats by message id.
//! - The W3C trace context of the writing request travels with the message,
//!   so the delivery joins the same trace.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Set, Statement, Value};
use sea_orm_migration::prelude::*;
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;

mod admin;
mod deliverer;
mod entity;
mod migration;

pub use admin::OutboxAdmin;
pub use deliverer::{Deliverer, DelivererConfig, pending_count};
pub use migration::{
    OutboxByteOrderMigration, OutboxChurnMigration, OutboxMigration, OutboxPendingIndexMigration,
};

/// How outbox messages are delivered to other services and webhooks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    /// How often to look for due messages when nothing woke the deliverer.
    pub poll_interval_ms: u64,
    /// First retry delay after a failed delivery; doubles per attempt.
    pub min_backoff_ms: u64,
    /// Longest retry delay.
    pub max_backoff_ms: u64,
    /// How long a deliverer holds a claimed message before another may take it.
    pub lease_ms: u64,
    /// Failed attempts after which a message is dead-lettered (0: never).
    pub max_attempts: u32,
    /// Age after which a failing message is dead-lettered (0: never).
    pub max_age_ms: u64,
    /// Calls in flight to one tenant's destination at most, so a slow or
    /// hanging receiver takes only this many of the deliverer's slots.
    pub per_tenant_concurrency: usize,
    /// Consecutive failed calls to a tenant's destination that open its
    /// circuit: its messages wait (not claimed) for a cool-down that grows
    /// like the backoff, then one call probes it.
    pub breaker_failures: u32,
    /// Keep a delivered message's payload until it is purged, to inspect
    /// what was sent (off: cleared at delivery, so nothing delivered names
    /// an erased person; `DelivererConfig::keep_payloads`).
    pub keep_delivered_payloads: bool,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            poll_interval_ms: 500,
            min_backoff_ms: 200,
            max_backoff_ms: 60_000,
            lease_ms: 30_000,
            // A message failing for a day is given up on, however many
            // attempts that took; a shorter outage loses nothing.
            max_attempts: 0,
            max_age_ms: 24 * 3600 * 1000,
            per_tenant_concurrency: 2,
            breaker_failures: 5,
            keep_delivered_payloads: false,
        }
    }
}

impl OutboxSettings {
    pub fn deliverer_config(&self) -> DelivererConfig {
        DelivererConfig {
            lease: Duration::from_millis(self.lease_ms),
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            min_backoff: Duration::from_millis(self.min_backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
            max_attempts: self.max_attempts,
            max_age: Duration::from_millis(self.max_age_ms),
            per_tenant_concurrency: self.per_tenant_concurrency,
            breaker_failures: self.breaker_failures,
            keep_payloads: self.keep_delivered_payloads,
            ..DelivererConfig::default()
        }
    }
}

const PENDING: &str = "PENDING";
const DELIVERED: &str = "DELIVERED";
/// Given up on after `outbox.max_attempts` or `outbox.max_age_ms`: kept for an
/// operator to list and retry (`OutboxAdminService`), no longer blocking its
/// partition.
const DEAD: &str = "DEAD";

/// One message, as a sink receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// UUIDv7, unique: receivers use it to drop repeats.
    pub id: String,
    pub tenant_id: String,
    pub topic: String,
    pub partition_key: String,
    pub payload: Vec<u8>,
    /// Failed attempts so far.
    pub attempts: i32,
    /// `traceparent` (and `tracestate`) of the request that wrote it.
    pub trace_context: Option<String>,
    /// When it was written (ms since the epoch): its age decides when it is
    /// given up on.
    pub created_at_ms: i64,
}

/// Why a delivery did not go through. Every failure is retried with backoff.
/// `code` labels the `cascade.outbox.deliveries` metric (`error.type`): a
/// peer's gRPC code (`UNAVAILABLE`), a webhook's HTTP status (`503`),
/// `unreachable` when no answer came, `internal` for our own failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    pub message: String,
    pub code: Cow<'static, str>,
}

impl DeliveryError {
    /// A failure on our side (reading or recording), code `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: Cow::Borrowed("internal"),
        }
    }

    /// The same failure under another code.
    #[must_use]
    pub fn with_code(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.code = code.into();
        self
    }

    /// `context: error: its cause: ...`, the whole source chain, so the log
    /// says "connection refused" or "timed out", not only "error sending
    /// request".
    pub fn caused_by(context: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        let mut text = format!("{context}: {error}");
        let mut source = error.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.ends_with(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        Self::internal(text)
    }

    /// A peer service's failure to take a delivery: retried.
    pub fn from_peer(peer: &str, status: &tonic::Status) -> Self {
        Self::internal(format!(
            "{peer} answered {:?}: {}",
            status.code(),
            status.message()
        ))
        .with_code(grpc_code_name(status.code()))
    }
}

/// A gRPC code as the protocol spells it (`DEADLINE_EXCEEDED`).
fn grpc_code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// How a sink reads a peer's answer to the delivery of one partition's
/// message (`what`, for the log). NOT_FOUND and INVALID_ARGUMENT are final:
/// the peer will never take this message, and retrying it would hold its
/// partition back forever, so it is dropped with a warning. Any other
/// failure (the peer down, slow, overloaded or failing) is retried.
pub fn settle_peer_answer<T>(
    peer: &str,
    what: &str,
    partition: &str,
    answer: Result<T, tonic::Status>,
) -> Result<(), DeliveryError> {
    match answer {
        Ok(_) => Ok(()),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::NotFound | tonic::Code::InvalidArgument
            ) =>
        {
            tracing::warn!(
                partition,
                peer,
                code = ?status.code(),
                message = status.message(),
                "{peer} refused {what}; dropped"
            );
            Ok(())
        }
        Err(status) => Err(DeliveryError::from_peer(peer, &status)),
    }
}

/// Where a topic's messages go.
#[tonic::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Delivers a run of pending messages of one partition, oldest first.
    /// Returns how many were delivered; an error after `n` messages marks the
    /// first `n` delivered and retries the rest.
    async fn deliver(&self, run: &[Entry]) -> Result<usize, (usize, DeliveryError)>;

    /// Whether every tenant's messages go to one destination (a peer
    /// service) rather than one per tenant (a tenant's webhook). One tenant's
    /// slow receiver should not hold up another's, so per-tenant receivers
    /// get `outbox.per_tenant_concurrency` calls each and a circuit each; a
    /// shared one gets all the calls and one circuit.
    fn shared_destination(&self) -> bool {
        false
    }

    /// How many partitions' runs one `deliver_many` call may carry. A sink
    /// whose receiver takes many partitions in one request (lifecycle's
    /// ApplyEngagementScores) says so; the default is one at a time.
    fn partitions_per_call(&self) -> usize {
        1
    }

    /// Delivers the runs of several partitions of one tenant (at most
    /// `partitions_per_call`), returning one result per run, each as
    /// `deliver` would. The default delivers the runs one after another.
    async fn deliver_many(
        &self,
        runs: &[Vec<Entry>],
    ) -> Vec<Result<usize, (usize, DeliveryError)>> {
        let mut results = Vec::with_capacity(runs.len());
        for run in runs {
            results.push(self.deliver(run).await);
        }
        results
    }

    /// Told after `entry` was dead-lettered (given up on until an operator
    /// retries it), so a sink that shows delivery elsewhere (lifecycle's
    /// notifications) can say so. The default does nothing.
    async fn dead_lettered(&self, _entry: &Entry) {}
}

/// A message to enqueue.
#[derive(Debug, Clone)]
pub struct Message {
    pub partition_key: String,
    pub payload: Vec<u8>,
}

/// Writes a message in the caller's transaction.
pub async fn enqueue(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    topic: &str,
    partition_key: &str,
    payload: Vec<u8>,
) -> Result<String, DbErr> {
    enqueue_as(
        conn,
        tenant_id,
        topic,
        cascade_domain::ids::new_id(),
        partition_key,
        payload,
    )
    .await
}

/// Writes a message under an id the caller chose (a fresh UUIDv7, as
/// `cascade_domain::ids::new_id` makes), in the caller's transaction: the id
/// of the record it delivers, so an operator finds its dead letter by the id
/// they know.
pub async fn enqueue_as(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    topic: &str,
    id: String,
    partition_key: &str,
    payload: Vec<u8>,
) -> Result<String, DbErr> {
    let message = Message {
        partition_key: partition_key.to_owned(),
        payload,
    };
    insert_messages(conn, tenant_id, topic, vec![id.clone()], vec![message]).await?;
    Ok(id)
}

/// Writes messages in the caller's transaction, in as few statements as the
/// database's limit on bound values allows; returns their ids in order.
pub async fn enqueue_many(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    topic: &str,
    messages: Vec<Message>,
) -> Result<Vec<String>, DbErr> {
    let ids: Vec<String> = messages
        .iter()
        .map(|_| cascade_domain::ids::new_id())
        .collect();
    insert_messages(conn, tenant_id, topic, ids.clone(), messages).await?;
    Ok(ids)
}

/// Writes `messages` under `ids` (one each, in order).
async fn insert_messages(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    topic: &str,
    ids: Vec<String>,
    messages: Vec<Message>,
) -> Result<(), DbErr> {
    let now = now_ms();
    let trace_context = current_trace_context();
    if conn.get_database_backend() == DbBackend::Postgres {
        let mut keys = Vec::with_capacity(messages.len());
        let mut payloads = Vec::with_capacity(messages.len());
        for message in messages {
            keys.push(message.partition_key);
            payloads.push(message.payload);
        }
        let values: Vec<Value> = vec![
            tenant_id.into(),
            topic.into(),
            trace_context.into(),
            now.into(),
            ids.into(),
            keys.into(),
            payloads.into(),
        ];
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            include_str!("sql/outbox_enqueue.pg.sql"),
            values,
        ))
        .await?;
        return Ok(());
    }
    let rows: Vec<entity::ActiveModel> = messages
        .into_iter()
        .zip(ids)
        .map(|(message, id)| entity::ActiveModel {
            id: Set(id),
            tenant_id: Set(tenant_id.to_owned()),
            topic: Set(topic.to_owned()),
            partition_key: Set(message.partition_key),
            payload: Set(message.payload),
            trace_context: Set(trace_context.clone()),
            state: Set(PENDING.to_owned()),
            attempts: Set(0),
            created_at_ms: Set(now),
            next_attempt_at_ms: Set(now),
            ..Default::default()
        })
        .collect();
    crate::db::insert_chunks(conn, rows, None).await?;
    Ok(())
}

/// Rewrites, in the caller's transaction, the payloads of one partition's
/// messages that are not delivered yet: pending ones, and dead letters, which
/// are kept until an operator retries or purges them. An erasure takes the
/// erased person out of them this way. `rewrite` answers a new payload, or
/// `None` to leave the message as it is. Returns how many it rewrote.
///
/// A message marked delivered meanwhile is left alone (the update is guarded
/// by the state read). On PostgreSQL each row is locked as it is updated,
/// in id order; a deliverer marking the same rows at that moment may end in a
/// detected deadlock, and the loser is retried (an erasure by its next poll,
/// a delivery after its lease).
pub async fn rewrite_undelivered(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    topic: &str,
    partition_key: &str,
    mut rewrite: impl FnMut(&[u8]) -> Option<Vec<u8>>,
) -> Result<u64, DbErr> {
    use entity::Column;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
    let mut rewritten = 0;
    for state in [PENDING, DEAD] {
        // A literal, as the pending index's predicate is (`migration.rs`).
        let in_state = || Expr::cust(format!("state = '{state}'"));
        let rows: Vec<(String, Vec<u8>)> = entity::Entity::find()
            .select_only()
            .column(Column::Id)
            .column(Column::Payload)
            .filter(Column::Topic.eq(topic))
            .filter(Column::TenantId.eq(tenant_id))
            .filter(Column::PartitionKey.eq(partition_key))
            .filter(in_state())
            .order_by_asc(Column::Id)
            .into_tuple()
            .all(conn)
            .await?;
        for (id, payload) in rows {
            let Some(payload) = rewrite(&payload) else {
                continue;
            };
            rewritten += entity::Entity::update_many()
                .col_expr(Column::Payload, Expr::value(payload))
                .filter(Column::Id.eq(id))
                .filter(in_state())
                .exec(conn)
                .await?
                .rows_affected;
        }
    }
    Ok(rewritten)
}

pub(super) fn now_ms() -> i64 {
    crate::time::now().timestamp_millis()
}

/// The current span's W3C trace context as `key=value` lines, if any: what
/// a message (or another row handed to a later task) stores to join the
/// writing request's trace.
pub fn current_trace_context() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    if carrier.is_empty() {
        return None;
    }
    let mut pairs: Vec<_> = carrier
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.sort();
    Some(pairs.join("\n"))
}

/// A trace context stored by `current_trace_context`.
pub fn extract_trace_context(stored: &str) -> opentelemetry::Context {
    let carrier: HashMap<String, String> = stored
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    #[test]
    fn a_delivery_error_names_the_whole_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let outer = std::io::Error::other(io);
        let error = DeliveryError::caused_by("webhook unreachable", &outer);
        assert_eq!(error.message, "webhook unreachable: connection refused");
        assert_eq!(error.code, "internal");
    }

    #[test]
    fn a_peer_refusing_for_good_drops_the_message_and_anything_else_is_retried() {
        let answer = |code: Code| {
            settle_peer_answer::<()>(
                "lifecycle",
                "a delivery",
                "a1",
                Err(Status::new(code, "no")),
            )
        };
        assert!(settle_peer_answer("lifecycle", "a delivery", "a1", Ok(())).is_ok());
        for dropped in [Code::NotFound, Code::InvalidArgument] {
            assert!(answer(dropped).is_ok(), "{dropped:?} is dropped");
        }
        for retried in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Internal,
            Code::Unimplemented,
            Code::PermissionDenied,
        ] {
            let error = answer(retried).expect_err("retried");
            assert_eq!(error.message, format!("lifecycle answered {retried:?}: no"));
        }
        let codes = [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Unauthenticated,
        ]
        .map(|code| answer(code).expect_err("retried").code);
        assert_eq!(
            codes,
            ["UNAVAILABLE", "DEADLINE_EXCEEDED", "UNAUTHENTICATED"]
        );
    }
}
