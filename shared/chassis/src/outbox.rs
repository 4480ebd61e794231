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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, Value};
use sea_orm_migration::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

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
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            poll_interval_ms: 500,
            min_backoff_ms: 200,
            max_backoff_ms: 60_000,
            lease_ms: 30_000,
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
            ..DelivererConfig::default()
        }
    }
}

const PENDING: &str = "PENDING";
const DELIVERED: &str = "DELIVERED";

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
}

/// Why a delivery did not go through. Every failure is retried with backoff.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DeliveryError(pub String);

impl DeliveryError {
    /// A peer service's failure to take a delivery: retried.
    pub fn from_peer(peer: &str, status: &tonic::Status) -> Self {
        Self(format!(
            "{peer} answered {:?}: {}",
            status.code(),
            status.message()
        ))
    }
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
    let message = Message {
        partition_key: partition_key.to_owned(),
        payload,
    };
    let mut ids = enqueue_many(conn, tenant_id, topic, vec![message]).await?;
    ids.pop()
        .ok_or_else(|| DbErr::Custom("no message enqueued".into()))
}

/// Writes messages in the caller's transaction, in as few statements as the
/// database's limit on bound values allows; returns their ids in order.
pub async fn enqueue_many(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    topic: &str,
    messages: Vec<Message>,
) -> Result<Vec<String>, DbErr> {
    const WIDTH: usize = 8;
    let now = now_ms();
    let trace_context = current_trace_context();
    if conn.get_database_backend() == DbBackend::Postgres {
        let ids: Vec<String> = messages
            .iter()
            .map(|_| cascade_domain::ids::new_id())
            .collect();
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
            ids.clone().into(),
            keys.into(),
            payloads.into(),
        ];
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            include_str!("sql/outbox_enqueue.pg.sql"),
            values,
        ))
        .await?;
        return Ok(ids);
    }
    let sizes: Vec<usize> = crate::db::statement_chunks(&messages, WIDTH)
        .iter()
        .map(|c| c.len())
        .collect();
    let mut ids = Vec::with_capacity(messages.len());
    let mut messages = messages.into_iter();
    for size in sizes {
        let mut values: Vec<Value> = Vec::with_capacity(size * WIDTH);
        let mut tuples = Vec::with_capacity(size);
        for (n, message) in messages.by_ref().take(size).enumerate() {
            let id = cascade_domain::ids::new_id();
            let p = n * WIDTH;
            tuples.push(format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, 0, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6,
                p + 7,
                p + 8,
                p + 8
            ));
            values.extend([
                id.clone().into(),
                tenant_id.into(),
                topic.into(),
                message.partition_key.into(),
                message.payload.into(),
                trace_context.clone().into(),
                PENDING.into(),
                now.into(),
            ]);
            ids.push(id);
        }
        let sql = format!(
            "INSERT INTO outbox (id, tenant_id, topic, partition_key, payload, trace_context, \
             state, attempts, created_at_ms, next_attempt_at_ms) VALUES {}",
            tuples.join(", ")
        );
        conn.execute_raw(crate::db::statement(
            conn.get_database_backend(),
            &sql,
            values,
        ))
        .await?;
    }
    Ok(ids)
}

/// Tuning of a deliverer.
#[derive(Debug, Clone)]
pub struct DelivererConfig {
    /// How long a claim lasts; an unfinished claim is taken over after it.
    pub lease: Duration,
    /// How often to look for due messages when not woken.
    pub poll_interval: Duration,
    /// Partitions claimed per round.
    pub batch_size: u32,
    /// Messages of one partition handed to the sink at once.
    pub run_size: u32,
    /// Partitions delivered at the same time.
    pub concurrency: usize,
    /// Backoff between attempts of one message.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Delivered messages are deleted after this long.
    pub retention: Duration,
}

impl Default for DelivererConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            batch_size: 64,
            run_size: 256,
            concurrency: 8,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(60),
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// A background task delivering one topic's messages to a sink.
pub struct Deliverer {
    db: DatabaseConnection,
    topic: &'static str,
    sink: Arc<dyn Sink>,
    config: DelivererConfig,
    wake: Arc<Notify>,
    owner: String,
}

impl Deliverer {
    pub fn new(
        db: DatabaseConnection,
        topic: &'static str,
        sink: Arc<dyn Sink>,
        config: DelivererConfig,
    ) -> Self {
        Self {
            db,
            topic,
            sink,
            config,
            wake: Arc::new(Notify::new()),
            owner: cascade_domain::ids::new_id(),
        }
    }

    /// A handle whose `notify_one` makes the deliverer look right away (call
    /// it after committing a message).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs until the task is aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run().await })
    }

    async fn run(self) {
        let mut rounds: u64 = 0;
        loop {
            let started = std::time::Instant::now();
            let delivered_any = match self.round().await {
                Ok(n) => {
                    if n > 0 {
                        tracing::debug!(
                            topic = self.topic,
                            delivered = n,
                            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                            "outbox round"
                        );
                    }
                    n > 0
                }
                Err(error) => {
                    tracing::warn!(topic = self.topic, error = %crate::secret::redact_urls(&error.to_string()), "outbox round failed");
                    false
                }
            };
            rounds += 1;
            if rounds.is_multiple_of(1000)
                && let Err(error) = self.prune().await
            {
                tracing::warn!(topic = self.topic, %error, "outbox prune failed");
            }
            if !delivered_any {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                }
            }
        }
    }

    /// Claims due partition heads, delivers their runs; returns how many
    /// messages were delivered.
    pub async fn round(&self) -> Result<usize, DbErr> {
        use futures::StreamExt;
        let heads = self.claim().await?;
        if heads.is_empty() {
            return Ok(0);
        }
        let runs = self.runs(heads).await?;
        // Calls carry runs of one tenant, up to what the sink takes at once.
        let per_call = self.sink.partitions_per_call().max(1);
        let mut calls: Vec<Vec<Vec<Entry>>> = Vec::new();
        for run in runs {
            match calls.last_mut() {
                Some(call) if call.len() < per_call && call[0][0].tenant_id == run[0].tenant_id => {
                    call.push(run);
                }
                _ => calls.push(vec![run]),
            }
        }
        // Partitions are independent: several calls in flight hide the
        // sink's latency; within one partition the order stays the claim's.
        let results: Vec<Result<usize, DbErr>> = futures::stream::iter(calls)
            .map(|call| self.deliver_call(call))
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        let mut delivered = 0;
        for result in results {
            delivered += result?;
        }
        Ok(delivered)
    }

    async fn claim(&self) -> Result<Vec<Entry>, DbErr> {
        let now = now_ms();
        let lease_until = now + self.config.lease.as_millis() as i64;
        // Only the oldest pending message of a partition (its head) may be
        // claimed. The heads are found in one pass over the pending index
        // (GROUP BY partition, MIN(id)); the earlier NOT EXISTS form probed
        // the partition of every pending row in id order and read ~38k
        // buffers per claim once a backlog built up. The outer conditions are
        // re-checked under the row lock on PostgreSQL, so a message claimed
        // by another replica meanwhile is skipped. `state = 'PENDING'` is a
        // literal so that the partial index over pending messages matches
        // even in a cached generic plan (with a parameter, PostgreSQL's
        // generic plan scanned the delivered messages kept for `retention`).
        // Claiming the most recently changed partitions first for half the
        // batch was tried for the crossing latency and gave nothing
        // measurable (docs/performance.md).
        let sql = "UPDATE outbox SET lease_owner = $1, lease_until_ms = $2 \
                   WHERE id IN ( \
                     SELECT o.id FROM ( \
                       SELECT MIN(id) AS id FROM outbox \
                       WHERE topic = $3 AND state = 'PENDING' \
                       GROUP BY tenant_id, partition_key) h \
                     JOIN outbox o ON o.id = h.id \
                     WHERE o.next_attempt_at_ms <= $4 \
                       AND (o.lease_until_ms IS NULL OR o.lease_until_ms < $4) \
                     ORDER BY o.id LIMIT $5) \
                   AND state = 'PENDING' AND (lease_until_ms IS NULL OR lease_until_ms < $4) \
                   RETURNING id, tenant_id, topic, partition_key, payload, attempts, trace_context";
        let rows = self
            .db
            .query_all_raw(crate::db::statement(
                self.db.get_database_backend(),
                sql,
                [
                    self.owner.clone().into(),
                    lease_until.into(),
                    self.topic.into(),
                    now.into(),
                    i64::from(self.config.batch_size).into(),
                ],
            ))
            .await?;
        let mut entries = rows
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(entries)
    }

    /// Each claimed head with the pending messages after it in its
    /// partition, up to `run_size`, grouped by tenant: one read per tenant.
    /// The heads are ours; the messages after them cannot be claimed by
    /// anyone else until the heads are delivered.
    async fn runs(&self, heads: Vec<Entry>) -> Result<Vec<Vec<Entry>>, DbErr> {
        let mut by_tenant: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for head in heads {
            by_tenant
                .entry(head.tenant_id.clone())
                .or_default()
                .push(head);
        }
        let mut runs = Vec::new();
        for (tenant_id, heads) in by_tenant {
            if self.config.run_size <= 1 {
                runs.extend(heads.into_iter().map(|head| vec![head]));
                continue;
            }
            let mut followers: HashMap<String, Vec<Entry>> = HashMap::new();
            for chunk in crate::db::statement_chunks(&heads, 1) {
                let keys = (0..chunk.len())
                    .map(|i| format!("${}", i + 4))
                    .collect::<Vec<_>>()
                    .join(", ");
                // The window keeps a long backlog of one partition from
                // being read whole.
                let sql = format!(
                    "SELECT id, tenant_id, topic, partition_key, payload, attempts, trace_context \
                     FROM (SELECT id, tenant_id, topic, partition_key, payload, attempts, trace_context, \
                       ROW_NUMBER() OVER (PARTITION BY partition_key ORDER BY id) AS n \
                       FROM outbox WHERE topic = $1 AND tenant_id = $2 AND state = 'PENDING' \
                       AND partition_key IN ({keys})) r \
                     WHERE n <= $3 ORDER BY partition_key, id"
                );
                let mut values: Vec<Value> = vec![
                    self.topic.into(),
                    tenant_id.clone().into(),
                    i64::from(self.config.run_size).into(),
                ];
                values.extend(chunk.iter().map(|h| Value::from(h.partition_key.clone())));
                let rows = self
                    .db
                    .query_all_raw(crate::db::statement(
                        self.db.get_database_backend(),
                        &sql,
                        values,
                    ))
                    .await?;
                for row in &rows {
                    let entry = entry_from_row(row)?;
                    followers
                        .entry(entry.partition_key.clone())
                        .or_default()
                        .push(entry);
                }
            }
            for head in heads {
                let mut run = vec![head];
                if let Some(rest) = followers.remove(&run[0].partition_key) {
                    let head_id = run[0].id.clone();
                    run.extend(rest.into_iter().filter(|e| e.id > head_id));
                }
                runs.push(run);
            }
        }
        Ok(runs)
    }

    /// Hands runs of one tenant to the sink in one call, then marks what it
    /// delivered and schedules the retry of what it did not.
    async fn deliver_call(&self, runs: Vec<Vec<Entry>>) -> Result<usize, DbErr> {
        let messages: usize = runs.iter().map(Vec::len).sum();
        let span = tracing::info_span!(
            "outbox.deliver",
            otel.kind = "producer",
            messaging.destination.name = self.topic,
            messaging.batch.message_count = messages,
            outbox.partition = %runs[0][0].partition_key,
            outbox.partitions = runs.len(),
        );
        // The call joins the trace of its oldest message's request.
        if let Some(context) = runs
            .iter()
            .map(|run| &run[0])
            .min_by(|a, b| a.id.cmp(&b.id))
            .and_then(|head| head.trace_context.as_ref())
        {
            let _ = span.set_parent(extract_trace_context(context));
        }
        let results = if runs.len() == 1 {
            vec![self.sink.deliver(&runs[0]).instrument(span).await]
        } else {
            self.sink.deliver_many(&runs).instrument(span).await
        };
        let now = now_ms();
        // Heads are marked last: while a head is pending (and leased by us)
        // its partition cannot be claimed, so no one sees a follower as the
        // new head between the statements below.
        let (mut followers, mut heads): (Vec<Value>, Vec<Value>) = (Vec::new(), Vec::new());
        let mut total = 0;
        for (i, run) in runs.iter().enumerate() {
            let result = results.get(i).cloned().unwrap_or_else(|| {
                Err((
                    0,
                    DeliveryError("the sink returned no result for this run".into()),
                ))
            });
            let (delivered, failure) = match result {
                Ok(n) => (n.min(run.len()), None),
                Err((n, error)) => (n.min(run.len()), Some(error)),
            };
            total += delivered;
            if delivered > 0 {
                heads.push(run[0].id.clone().into());
                followers.extend(run[1..delivered].iter().map(|e| Value::from(e.id.clone())));
            }
            if let Some(error) = failure
                && let Some(failed) = run.get(delivered)
            {
                self.retry_later(failed, &error, now).await?;
            } else if delivered < run.len() {
                // The sink took fewer than offered without an error: release the rest.
                self.release(&run[delivered]).await?;
            }
        }
        followers.append(&mut heads);
        for chunk in crate::db::statement_chunks(&followers, 1) {
            let placeholders = (0..chunk.len())
                .map(|i| format!("${}", i + 3))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "UPDATE outbox SET state = $1, delivered_at_ms = $2, lease_owner = NULL, \
                 lease_until_ms = NULL WHERE id IN ({placeholders})"
            );
            let mut values: Vec<Value> = vec![DELIVERED.into(), now.into()];
            values.extend(chunk.iter().cloned());
            self.db
                .execute_raw(crate::db::statement(
                    self.db.get_database_backend(),
                    &sql,
                    values,
                ))
                .await?;
        }
        Ok(total)
    }

    async fn retry_later(
        &self,
        failed: &Entry,
        error: &DeliveryError,
        now: i64,
    ) -> Result<(), DbErr> {
        let attempts = failed.attempts + 1;
        let delay = self.backoff(attempts);
        tracing::warn!(
            topic = self.topic,
            message = %failed.id,
            attempts,
            retry_in_ms = delay.as_millis() as u64,
            %error,
            "outbox delivery failed; will retry"
        );
        let sql = "UPDATE outbox SET attempts = $1, next_attempt_at_ms = $2, last_error = $3, \
                   lease_owner = NULL, lease_until_ms = NULL WHERE id = $4";
        self.db
            .execute_raw(crate::db::statement(
                self.db.get_database_backend(),
                sql,
                [
                    attempts.into(),
                    (now + delay.as_millis() as i64).into(),
                    truncate(&error.0, 1000).into(),
                    failed.id.clone().into(),
                ],
            ))
            .await
            .map(|_| ())
    }

    async fn release(&self, entry: &Entry) -> Result<(), DbErr> {
        let sql = "UPDATE outbox SET lease_owner = NULL, lease_until_ms = NULL WHERE id = $1 AND lease_owner = $2";
        self.db
            .execute_raw(crate::db::statement(
                self.db.get_database_backend(),
                sql,
                [entry.id.clone().into(), self.owner.clone().into()],
            ))
            .await
            .map(|_| ())
    }

    fn backoff(&self, attempts: i32) -> Duration {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.config.min_backoff)
            .with_max_delay(self.config.max_backoff)
            .with_jitter()
            .without_max_times()
            .build();
        let n = usize::try_from(Ord::max(attempts, 1) - 1).unwrap_or(0);
        let n = Ord::min(n, 64);
        delays.nth(n).unwrap_or(self.config.max_backoff)
    }

    async fn prune(&self) -> Result<(), DbErr> {
        let cutoff = now_ms() - self.config.retention.as_millis() as i64;
        let sql = "DELETE FROM outbox WHERE topic = $1 AND state = $2 AND delivered_at_ms < $3";
        self.db
            .execute_raw(crate::db::statement(
                self.db.get_database_backend(),
                sql,
                [self.topic.into(), DELIVERED.into(), cutoff.into()],
            ))
            .await
            .map(|_| ())
    }
}

/// Pending (not yet delivered) messages of a topic, for tests and health.
pub async fn pending_count(conn: &impl ConnectionTrait, topic: &str) -> Result<i64, DbErr> {
    let row = conn
        .query_one_raw(crate::db::statement(
            conn.get_database_backend(),
            "SELECT COUNT(*) AS n FROM outbox WHERE topic = $1 AND state = $2",
            [topic.into(), PENDING.into()],
        ))
        .await?;
    row.map_or(Ok(0), |r| r.try_get::<i64>("", "n"))
}

fn entry_from_row(row: &sea_orm::QueryResult) -> Result<Entry, DbErr> {
    Ok(Entry {
        id: row.try_get("", "id")?,
        tenant_id: row.try_get("", "tenant_id")?,
        topic: row.try_get("", "topic")?,
        partition_key: row.try_get("", "partition_key")?,
        payload: row.try_get("", "payload")?,
        attempts: row.try_get("", "attempts")?,
        trace_context: row.try_get("", "trace_context")?,
    })
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

fn now_ms() -> i64 {
    crate::time::now().timestamp_millis()
}

/// The current span's W3C trace context as `key=value` lines, if any.
fn current_trace_context() -> Option<String> {
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

fn extract_trace_context(stored: &str) -> opentelemetry::Context {
    let carrier: HashMap<String, String> = stored
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier))
}

/// The outbox table; every service that uses the outbox lists this migration.
pub struct OutboxMigration;

impl MigrationName for OutboxMigration {
    fn name(&self) -> &str {
        "m20261124_100000_outbox"
    }
}

/// A partial index over pending messages only: the claim (heads by
/// partition) and the run read touch the pending rows, not the delivered
/// ones kept for `retention`.
pub struct OutboxPendingIndexMigration;

impl MigrationName for OutboxPendingIndexMigration {
    fn name(&self) -> &str {
        "m20261201_000000_outbox_pending_indexes"
    }
}

#[tonic::async_trait]
impl MigrationTrait for OutboxPendingIndexMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Plain SQL, the same on PostgreSQL and SQLite: the predicate must
        // match the literal `state = 'PENDING'` the claim and run queries use.
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS ix_outbox_pending_partition \
             ON outbox (topic, tenant_id, partition_key, id) WHERE state = 'PENDING'",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX IF EXISTS ix_outbox_pending_partition")
            .await?;
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    TenantId,
    Topic,
    PartitionKey,
    Payload,
    TraceContext,
    State,
    Attempts,
    CreatedAtMs,
    NextAttemptAtMs,
    LeaseOwner,
    LeaseUntilMs,
    DeliveredAtMs,
    LastError,
}

#[tonic::async_trait]
impl MigrationTrait for OutboxMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Outbox::Id)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Outbox::TenantId).string_len(64).not_null())
                    .col(ColumnDef::new(Outbox::Topic).string_len(64).not_null())
                    .col(
                        ColumnDef::new(Outbox::PartitionKey)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Outbox::Payload).blob().not_null())
                    .col(ColumnDef::new(Outbox::TraceContext).text().null())
                    .col(ColumnDef::new(Outbox::State).string_len(16).not_null())
                    .col(
                        ColumnDef::new(Outbox::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(Outbox::CreatedAtMs).big_integer().not_null())
                    .col(
                        ColumnDef::new(Outbox::NextAttemptAtMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Outbox::LeaseOwner).string_len(36).null())
                    .col(ColumnDef::new(Outbox::LeaseUntilMs).big_integer().null())
                    .col(ColumnDef::new(Outbox::DeliveredAtMs).big_integer().null())
                    .col(ColumnDef::new(Outbox::LastError).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_outbox_partition")
                    .table(Outbox::Table)
                    .col(Outbox::Topic)
                    .col(Outbox::State)
                    .col(Outbox::PartitionKey)
                    .col(Outbox::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_outbox_due")
                    .table(Outbox::Table)
                    .col(Outbox::Topic)
                    .col(Outbox::State)
                    .col(Outbox::NextAttemptAtMs)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Outbox::Table).to_owned())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

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
            assert_eq!(error.0, format!("lifecycle answered {retried:?}: no"));
        }
    }
}
