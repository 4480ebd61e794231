//! The metrics operators alert on, as OpenTelemetry instruments: exported
//! over OTLP when configured, and on a Prometheus `/metrics` endpoint when
//! `telemetry.metrics_port` is set (off by default). Names follow the
//! OpenTelemetry style (`cascade.outbox.pending`); Prometheus sees them with
//! underscores and unit suffixes (`cascade_outbox_pending`).
//!
//! - `cascade.outbox.pending`, `cascade.outbox.oldest_pending_age` (s),
//!   `cascade.outbox.dead`: the backlog per topic, sampled by the deliverer;
//! - `cascade.outbox.deliveries`: messages per topic and outcome
//!   (`delivered`, `failed`, `dead`), failures by code (`error.type`: a
//!   peer's gRPC code, a webhook's HTTP status, `unreachable`, `internal`);
//! - `cascade.webhook.duration` (s): webhook calls by HTTP status (`error`
//!   when there was no answer);
//! - `cascade.db.pool.connections`: the pool's connections by state
//!   (`used`, `idle`, and `waiting`: write transactions waiting to begin,
//!   mostly for a connection), sampled with the health probe;
//! - `cascade.db.pool.wait` (s): how long each write transaction waited to
//!   begin. (sqlx counts no waiters, and reads acquire inside SeaORM, so
//!   reads are not in these two; a pool they exhaust shows as `idle` 0.)
//! - `cascade.lifecycle.transitions`: stage moves by stage and cause;
//! - `cascade.scoring.activities`: ingested activities by outcome;
//! - `cascade.scoring.unreadable_pending_folds`: pending folds the last fold
//!   could not decode and passed over; above 0, their tenant's score reads
//!   fail until an operator repairs or deletes them (README);
//! - `rpc.server.call.duration` (s, `trace.rs`): every RPC by method and code.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};

/// Bucket bounds for durations in seconds, 5 ms to 10 s (the OpenTelemetry
/// SDK's default bounds are for milliseconds: in seconds every call would
/// land in the first bucket).
pub const SECONDS_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// A histogram of durations in seconds.
pub fn seconds_histogram(name: &'static str, description: &'static str) -> Histogram<f64> {
    meter()
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(SECONDS_BOUNDARIES.to_vec())
        .build()
}

fn meter() -> Meter {
    opentelemetry::global::meter("cascade")
}

/// The instruments, bound to the global meter provider on first use
/// (`telemetry::init` installs it before anything is recorded).
pub struct Instruments {
    outbox_pending: Gauge<u64>,
    outbox_oldest_age: Gauge<f64>,
    outbox_dead: Gauge<u64>,
    outbox_deliveries: Counter<u64>,
    webhook_duration: Histogram<f64>,
    pool_connections: Gauge<u64>,
    pool_wait: Histogram<f64>,
    transitions: Counter<u64>,
    activities: Counter<u64>,
    unreadable_pending_folds: Gauge<u64>,
    account_reads: Counter<u64>,
}

/// The process's instruments.
pub fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = meter();
        Instruments {
            outbox_pending: meter
                .u64_gauge("cascade.outbox.pending")
                .with_description("Outbox messages waiting for delivery")
                .build(),
            outbox_oldest_age: meter
                .f64_gauge("cascade.outbox.oldest_pending_age")
                .with_unit("s")
                .with_description("Age of the oldest outbox message waiting for delivery")
                .build(),
            outbox_dead: meter
                .u64_gauge("cascade.outbox.dead")
                .with_description("Dead-lettered outbox messages (OutboxAdminService)")
                .build(),
            outbox_deliveries: meter
                .u64_counter("cascade.outbox.deliveries")
                .with_description(
                    "Outbox messages by outcome (delivered, failed and retried, dead) and error code",
                )
                .build(),
            webhook_duration: seconds_histogram(
                "cascade.webhook.duration",
                "Webhook calls by HTTP status",
            ),
            pool_connections: meter
                .u64_gauge("cascade.db.pool.connections")
                .with_description("Database pool connections by state (used, idle, waiting)")
                .build(),
            pool_wait: seconds_histogram(
                "cascade.db.pool.wait",
                "Time a write transaction waited to begin",
            ),
            transitions: meter
                .u64_counter("cascade.lifecycle.transitions")
                .with_description("Account stage moves by stage entered and cause")
                .build(),
            activities: meter
                .u64_counter("cascade.scoring.activities")
                .with_description("Ingested activities by outcome")
                .build(),
            unreadable_pending_folds: meter
                .u64_gauge("cascade.scoring.unreadable_pending_folds")
                .with_description(
                    "Pending folds the last fold could not decode (their tenant's score reads fail)",
                )
                .build(),
            account_reads: meter
                .u64_counter("cascade.lifecycle.account_reads")
                .with_description("GetAccount answers by where they came from (cache, database)")
                .build(),
        }
    })
}

impl Instruments {
    /// The backlog of a topic: pending messages, the oldest one's age, dead ones.
    pub fn outbox_backlog(&self, topic: &str, pending: u64, oldest_age_s: f64, dead: u64) {
        let attributes = [KeyValue::new("topic", topic.to_owned())];
        self.outbox_pending.record(pending, &attributes);
        self.outbox_oldest_age.record(oldest_age_s, &attributes);
        self.outbox_dead.record(dead, &attributes);
    }

    /// `count` messages of `topic` ended a call as `outcome`; a failure
    /// carries its code as `error.type` (see `outbox::DeliveryError`).
    pub fn outbox_delivered(
        &self,
        topic: &str,
        outcome: &'static str,
        error_code: Option<&str>,
        count: u64,
    ) {
        if count > 0 {
            let mut attributes = vec![
                KeyValue::new("topic", topic.to_owned()),
                KeyValue::new("outcome", outcome),
            ];
            if let Some(code) = error_code {
                attributes.push(KeyValue::new("error.type", code.to_owned()));
            }
            self.outbox_deliveries.add(count, &attributes);
        }
    }

    /// A webhook call took `seconds` and answered `status` (`None`: no answer).
    pub fn webhook_call(&self, seconds: f64, status: Option<u16>) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.webhook_duration.record(
            seconds,
            &[KeyValue::new("http.response.status_code", status)],
        );
    }

    /// The database pool's connections.
    pub fn pool(&self, used: u64, idle: u64) {
        self.pool_connections
            .record(used, &[KeyValue::new("state", "used")]);
        self.pool_connections
            .record(idle, &[KeyValue::new("state", "idle")]);
        self.pool_connections.record(
            WAITING.load(Ordering::Relaxed),
            &[KeyValue::new("state", "waiting")],
        );
    }

    /// GetAccount answered from `answered_from` (`cache` or `database`).
    pub fn account_read(&self, answered_from: &'static str) {
        self.account_reads
            .add(1, &[KeyValue::new("answered_from", answered_from)]);
    }

    /// An account entered `stage` because of `cause`.
    pub fn transition(&self, stage: &'static str, cause: &'static str) {
        self.transitions.add(
            1,
            &[KeyValue::new("stage", stage), KeyValue::new("cause", cause)],
        );
    }

    /// `count` ingested activities ended as `outcome`.
    pub fn activities(&self, outcome: &'static str, count: u64) {
        if count > 0 {
            self.activities
                .add(count, &[KeyValue::new("outcome", outcome)]);
        }
    }

    /// The unreadable pending folds the last fold passed over.
    pub fn unreadable_pending_folds(&self, count: u64) {
        self.unreadable_pending_folds.record(count, &[]);
    }
}

/// Write transactions waiting to begin, now.
static WAITING: AtomicU64 = AtomicU64::new(0);

/// A write transaction waiting to begin: counted as waiting until dropped,
/// when its wait is recorded.
pub struct PoolWait(Instant);

impl PoolWait {
    pub fn start() -> Self {
        WAITING.fetch_add(1, Ordering::Relaxed);
        Self(Instant::now())
    }
}

impl Drop for PoolWait {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::Relaxed);
        instruments()
            .pool_wait
            .record(self.0.elapsed().as_secs_f64(), &[]);
    }
}

/// The pool's used and idle connections, recorded (called with the health
/// probe, so every few seconds).
pub fn sample_pool(database: &sea_orm::DatabaseConnection) {
    use sea_orm::DbBackend;
    let (size, idle) = match database.get_database_backend() {
        DbBackend::Postgres => {
            let pool = database.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        DbBackend::Sqlite => {
            let pool = database.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => return,
    };
    let idle = u64::try_from(idle).unwrap_or(u64::MAX);
    instruments().pool(u64::from(size).saturating_sub(idle), idle);
}

/// Serves the Prometheus text format of `registry` on `address`, path
/// `/metrics`, until the process ends.
pub async fn serve_prometheus(
    address: std::net::SocketAddr,
    registry: prometheus::Registry,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {address}: {e}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut text = String::new();
                match prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text) {
                    Ok(()) => (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            prometheus::TEXT_FORMAT.to_owned(),
                        )],
                        text,
                    )
                        .into_response(),
                    Err(error) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        error.to_string(),
                    )
                        .into_response(),
                }
            }
        }),
    );
    tracing::info!(address = %bound, "serving metrics");
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(%error, "metrics endpoint stopped");
        }
    }))
}

use axum::response::IntoResponse as _;
