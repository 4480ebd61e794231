//! The deliverer: claims partition heads with a lease, hands runs to the
//! sink, settles or backs off, and purges delivered messages after retention.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, Value,
};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::entity as outbox;
use super::{DEAD, DELIVERED, DeliveryError, Entry, PENDING, Sink, extract_trace_context, now_ms};

/// A claim or a call that took this long is logged with its parts, so a
/// late delivery says whether it waited for this service's database or for
/// the receiver (docs/performance.md, round 31: a crossing that stalled
/// between scoring's answer and lifecycle's decision, with nothing logged).
const SLOW_STEP: Duration = Duration::from_millis(200);

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
    /// Calls to the sink in flight at the same time.
    pub concurrency: usize,
    /// Calls in flight to one tenant at most (see `OutboxSettings`).
    pub per_tenant_concurrency: usize,
    /// Consecutive failed calls that open a tenant's circuit.
    pub breaker_failures: u32,
    /// Backoff between attempts of one message.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Failed attempts, and age, after which a message is dead-lettered
    /// (0: never).
    pub max_attempts: u32,
    pub max_age: Duration,
    /// Delivered messages are deleted after this long.
    pub retention: Duration,
    /// Whether a delivered message keeps its payload until then (to inspect
    /// what was sent). Off (the default), the payload is cleared as the
    /// message is marked delivered: what names people (scores with their
    /// contacts, a lost deal's reason) is not kept after it served, and an
    /// erasure need not look for it. Nothing reads a delivered payload.
    pub keep_payloads: bool,
}

impl Default for DelivererConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            batch_size: 64,
            run_size: 256,
            concurrency: 8,
            per_tenant_concurrency: 2,
            breaker_failures: 5,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(60),
            max_attempts: 0,
            max_age: Duration::from_secs(24 * 3600),
            retention: Duration::from_secs(24 * 3600),
            keep_payloads: false,
        }
    }
}

/// How often the running deliverer samples its topic's backlog for metrics.
const BACKLOG_SAMPLE: std::time::Duration = std::time::Duration::from_secs(1);

/// What one call to the sink did.
#[derive(Debug, Clone, Copy)]
struct CallOutcome {
    delivered: usize,
    /// The sink failed on a message of the call (it will be retried).
    failed: bool,
}

/// How long a stopping deliverer lets its calls in flight finish before it
/// cuts them short and gives back their claims.
const STOP_PATIENCE: Duration = Duration::from_secs(3);

/// One tenant's destination as the running deliverer sees it.
#[derive(Debug, Default)]
struct Destination {
    in_flight: usize,
    /// Consecutive failed calls.
    failures: u32,
    /// Its circuit is open (nothing claimed for it) until then.
    open_until: Option<std::time::Instant>,
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

    /// Runs until `background` stops (or the task is aborted).
    pub fn spawn_in(self, background: &crate::server::Background) {
        let stop = background.stop_signal();
        background.add_draining(tokio::spawn(Arc::new(self).run(stop)));
    }

    /// Keeps up to `concurrency` calls in flight, claiming more as soon as
    /// one finishes: a slow call holds its own slot, never a whole round.
    /// A tenant has at most `per_tenant_concurrency` of the slots, and none
    /// while its circuit is open, so one tenant's hanging receiver cannot
    /// delay another's deliveries.
    ///
    /// Told to stop (the service shutting down), it claims nothing more,
    /// lets the calls in flight finish for a moment, and gives back the
    /// claims of any still running, so another replica takes those messages
    /// at once instead of after the lease (30 s; the calls cut short may be
    /// sent again, which receivers drop by message id).
    async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut calls: JoinSet<(String, Result<CallOutcome, DbErr>)> = JoinSet::new();
        // The messages each call in flight holds claims on.
        let mut claimed: HashMap<tokio::task::Id, Vec<String>> = HashMap::new();
        let mut destinations: HashMap<String, Destination> = HashMap::new();
        let mut rounds: u64 = 0;
        let mut sampled = std::time::Instant::now() - BACKLOG_SAMPLE;
        while !*stop.borrow() {
            if sampled.elapsed() >= BACKLOG_SAMPLE {
                sampled = std::time::Instant::now();
                if let Err(error) = self.sample_backlog().await {
                    tracing::debug!(topic = self.topic, %error, "outbox backlog not sampled");
                }
            }
            let free = self.config.concurrency.max(1).saturating_sub(calls.len());
            if free > 0 {
                match self.next_calls(free, &destinations).await {
                    Ok(next) => {
                        for call in next {
                            let destination = self.destination_of(&call[0][0].tenant_id);
                            destinations
                                .entry(destination.clone())
                                .or_default()
                                .in_flight += 1;
                            let ids: Vec<String> =
                                call.iter().flatten().map(|e| e.id.clone()).collect();
                            let this = self.clone();
                            let task = calls
                                .spawn(async move { (destination, this.deliver_call(call).await) });
                            claimed.insert(task.id(), ids);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(topic = self.topic, error = %crate::secret::redact_urls(&error.to_string()), "outbox claim failed");
                    }
                }
            }
            rounds += 1;
            if rounds.is_multiple_of(1000)
                && let Err(error) = self.prune().await
            {
                tracing::warn!(topic = self.topic, %error, "outbox prune failed");
            }
            tokio::select! {
                Some(done) = calls.join_next_with_id(), if !calls.is_empty() => {
                    if let Ok((id, (tenant, outcome))) = done {
                        claimed.remove(&id);
                        self.settle_destination(&mut destinations, &tenant, outcome);
                    }
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
                changed = stop.changed() => {
                    // Nobody left to say stop: the service is gone.
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        let finishing = async {
            while let Some(done) = calls.join_next_with_id().await {
                if let Ok((id, _)) = done {
                    claimed.remove(&id);
                }
            }
        };
        let _ = tokio::time::timeout(STOP_PATIENCE, finishing).await;
        // Cut short and ended before the claims go back: a call still
        // running could mark its message after another replica took it.
        calls.shutdown().await;
        let left: Vec<String> = claimed.into_values().flatten().collect();
        match self.release_all(&left).await {
            Ok(()) => tracing::info!(
                topic = self.topic,
                released = left.len(),
                "outbox deliverer stopped"
            ),
            Err(error) => {
                tracing::warn!(topic = self.topic, %error, "outbox claims not given back; they lapse with their lease")
            }
        }
    }

    /// Records the topic's backlog for the metrics: pending messages, the
    /// oldest one's age, dead letters (one grouped read of the partial index).
    async fn sample_backlog(&self) -> Result<(), DbErr> {
        let rows = self
            .db
            .query_all_raw(crate::db::statement(
                self.db.get_database_backend(),
                "SELECT state, COUNT(*) AS n, MIN(created_at_ms) AS oldest FROM outbox \
                 WHERE topic = $1 AND state IN ('PENDING', 'DEAD') GROUP BY state",
                [self.topic.into()],
            ))
            .await?;
        let (mut pending, mut dead, mut oldest_age) = (0_u64, 0_u64, 0.0_f64);
        for row in &rows {
            let state: String = row.try_get("", "state")?;
            let n = u64::try_from(row.try_get::<i64>("", "n")?).unwrap_or(0);
            if state == PENDING {
                pending = n;
                let oldest: Option<i64> = row.try_get("", "oldest")?;
                oldest_age = oldest.map_or(0.0, |ms| (now_ms() - ms).max(0) as f64 / 1000.0);
            } else {
                dead = n;
            }
        }
        crate::metrics::instruments().outbox_backlog(self.topic, pending, oldest_age, dead);
        Ok(())
    }

    /// Records how a call to `tenant` went: a failure counts toward opening
    /// its circuit, a success closes it.
    fn settle_destination(
        &self,
        destinations: &mut HashMap<String, Destination>,
        tenant: &str,
        outcome: Result<CallOutcome, DbErr>,
    ) {
        let Some(destination) = destinations.get_mut(tenant) else {
            return;
        };
        destination.in_flight = destination.in_flight.saturating_sub(1);
        match outcome {
            Ok(CallOutcome { failed: false, .. }) => {
                destination.failures = 0;
                destination.open_until = None;
            }
            Ok(CallOutcome { failed: true, .. }) => {
                destination.failures += 1;
                let threshold = self.config.breaker_failures;
                if threshold > 0 && destination.failures >= threshold {
                    let cool_down = self.backoff(
                        i32::try_from(destination.failures - threshold + 1).unwrap_or(i32::MAX),
                    );
                    if destination.failures == threshold {
                        tracing::warn!(
                            topic = self.topic,
                            tenant,
                            failures = destination.failures,
                            cool_down_ms = cool_down.as_millis() as u64,
                            "destination failing: circuit open, its messages wait"
                        );
                    }
                    destination.open_until = Some(std::time::Instant::now() + cool_down);
                }
            }
            Err(error) => {
                tracing::warn!(topic = self.topic, error = %crate::secret::redact_urls(&error.to_string()), "outbox bookkeeping failed");
            }
        }
        if destination.in_flight == 0 && destination.failures == 0 {
            destinations.remove(tenant);
        }
    }

    /// Whose receiver a tenant's messages go to: the tenant's own, or, for
    /// a sink with a shared destination, the one ("").
    fn destination_of(&self, tenant: &str) -> String {
        if self.sink.shared_destination() {
            String::new()
        } else {
            tenant.to_owned()
        }
    }

    /// Calls one destination may have in flight.
    fn destination_limit(&self) -> usize {
        if self.sink.shared_destination() {
            self.config.concurrency.max(1)
        } else {
            self.config.per_tenant_concurrency.max(1)
        }
    }

    /// Claims due partition heads for up to `free` calls, skipping tenants
    /// at their limit or with an open circuit, and reads their runs.
    async fn next_calls(
        &self,
        free: usize,
        destinations: &HashMap<String, Destination>,
    ) -> Result<Vec<Vec<Vec<Entry>>>, DbErr> {
        let now = std::time::Instant::now();
        let per_call = self.sink.partitions_per_call().max(1);
        let allowed = |d: &Destination| {
            // Half-open after the cool-down: one call probes the destination.
            let limit =
                if self.config.breaker_failures > 0 && d.failures >= self.config.breaker_failures {
                    1
                } else {
                    self.destination_limit()
                };
            if d.open_until.is_some_and(|until| until > now) {
                0
            } else {
                limit.saturating_sub(d.in_flight)
            }
        };
        if self.sink.shared_destination() && destinations.get("").is_some_and(|d| allowed(d) == 0) {
            // One destination: its circuit and limit hold for every tenant.
            return Ok(Vec::new());
        }
        let excluded: Vec<String> = if self.sink.shared_destination() {
            Vec::new()
        } else {
            destinations
                .iter()
                .filter(|(_, d)| allowed(d) == 0)
                .map(|(tenant, _)| tenant.clone())
                .collect()
        };
        let limit = u32::try_from(free.saturating_mul(per_call))
            .unwrap_or(u32::MAX)
            .min(self.config.batch_size);
        let heads = self.claim(limit, &excluded).await?;
        // Keep what each tenant may still start; give the rest back.
        let mut kept = Vec::with_capacity(heads.len());
        let mut surplus = Vec::new();
        let mut taken: HashMap<String, usize> = HashMap::new();
        for head in heads {
            let destination = self.destination_of(&head.tenant_id);
            let calls_left = destinations
                .get(&destination)
                .map_or(self.destination_limit(), allowed);
            let count = taken.entry(destination).or_default();
            if *count < calls_left * per_call && kept.len() < free * per_call {
                *count += 1;
                kept.push(head);
            } else {
                surplus.push(head.id);
            }
        }
        self.release_all(&surplus).await?;
        if kept.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.calls_of(self.runs(kept).await?))
    }

    /// Groups runs into calls of one tenant, up to what the sink takes at once.
    fn calls_of(&self, runs: Vec<Vec<Entry>>) -> Vec<Vec<Vec<Entry>>> {
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
        calls
    }

    /// One batch, start to end: claims due partition heads, delivers their
    /// runs, waits for every call; returns how many messages were delivered.
    /// (The running deliverer pipelines instead; tests drive it with this.)
    pub async fn round(&self) -> Result<usize, DbErr> {
        use futures::StreamExt;
        let heads = self.claim(self.config.batch_size, &[]).await?;
        if heads.is_empty() {
            return Ok(0);
        }
        let calls = self.calls_of(self.runs(heads).await?);
        let results: Vec<Result<CallOutcome, DbErr>> = futures::stream::iter(calls)
            .map(|call| self.deliver_call(call))
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        let mut delivered = 0;
        for result in results {
            delivered += result?.delivered;
        }
        Ok(delivered)
    }

    async fn claim(&self, limit: u32, excluded: &[String]) -> Result<Vec<Entry>, DbErr> {
        let started = std::time::Instant::now();
        let now = now_ms();
        let lease_until = now + self.config.lease.as_millis() as i64;
        // Claiming the most recently changed partitions first for half the
        // batch was tried for the crossing latency and gave nothing
        // measurable (docs/performance.md).
        let backend = self.db.get_database_backend();
        let (sql, excluded): (&str, Value) = if backend == sea_orm::DbBackend::Postgres {
            (
                include_str!("sql/outbox_claim.pg.sql"),
                excluded.to_vec().into(),
            )
        } else {
            (
                include_str!("sql/outbox_claim.sqlite.sql"),
                serde_json::to_string(excluded)
                    .unwrap_or_else(|_| "[]".to_owned())
                    .into(),
            )
        };
        // On SQLite the claim writes, so it waits for its turn among the
        // file's writers like any transaction (`write_turn`), not in
        // SQLite's busy handler: that one polls with growing sleeps, and
        // between writers that follow each other every few milliseconds it
        // lost every poll for its 328 ms of sleeps, which held a crossing's
        // delivery (docs/performance.md, round 32).
        let turn = crate::db::write_turn(&self.db).await?;
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
                    i64::from(limit).into(),
                    excluded,
                ],
            ))
            .await?;
        drop(turn);
        let mut entries = rows
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        let took = started.elapsed();
        if took >= SLOW_STEP {
            tracing::info!(
                topic = self.topic,
                claim_ms = took.as_millis() as u64,
                heads = entries.len(),
                "a slow outbox claim"
            );
        }
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
                    "SELECT id, tenant_id, topic, partition_key, payload, attempts, trace_context, created_at_ms \
                     FROM (SELECT id, tenant_id, topic, partition_key, payload, attempts, trace_context, created_at_ms, \
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
    async fn deliver_call(&self, runs: Vec<Vec<Entry>>) -> Result<CallOutcome, DbErr> {
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
        let calling = std::time::Instant::now();
        let results = if runs.len() == 1 {
            vec![self.sink.deliver(&runs[0]).instrument(span).await]
        } else {
            self.sink.deliver_many(&runs).instrument(span).await
        };
        let call = calling.elapsed();
        let now = now_ms();
        // Heads are marked last: while a head is pending (and leased by us)
        // its partition cannot be claimed, so no one sees a follower as the
        // new head between the statements below.
        let (mut followers, mut heads): (Vec<Value>, Vec<Value>) = (Vec::new(), Vec::new());
        let mut total = 0;
        let mut failed = false;
        for (i, run) in runs.iter().enumerate() {
            let result = results.get(i).cloned().unwrap_or_else(|| {
                Err((
                    0,
                    DeliveryError::internal("the sink returned no result for this run"),
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
                && let Some(message) = run.get(delivered)
            {
                failed = true;
                let outcome = self.retry_later(message, &error, now).await?;
                crate::metrics::instruments().outbox_delivered(
                    self.topic,
                    outcome,
                    Some(&error.code),
                    1,
                );
            } else if delivered < run.len() {
                // The sink took fewer than offered without an error: release the rest.
                self.release(&run[delivered]).await?;
            }
        }
        followers.append(&mut heads);
        let turn = crate::db::write_turn(&self.db).await?;
        for chunk in crate::db::statement_chunks(&followers, 1) {
            let mut update = without_lease(outbox::Entity::update_many())
                .col_expr(outbox::Column::State, Expr::value(DELIVERED))
                .col_expr(outbox::Column::DeliveredAtMs, Expr::value(now));
            if !self.config.keep_payloads {
                update = update.col_expr(outbox::Column::Payload, Expr::value(Vec::<u8>::new()));
            }
            update
                .filter(outbox::Column::Id.is_in(chunk.iter().cloned()))
                .exec(&self.db)
                .await?;
        }
        drop(turn);
        crate::metrics::instruments().outbox_delivered(
            self.topic,
            "delivered",
            None,
            u64::try_from(total).unwrap_or(u64::MAX),
        );
        let marked = calling.elapsed().saturating_sub(call);
        // age_ms runs from the oldest message's write to the receiver's
        // answer; age_ms - call_ms is what it waited before the call (a poll
        // or wake-up, the claim, the read of the run, a free slot). A slow
        // step is this service's or the receiver's (info); a quick call whose
        // message waited 200 ms or more before it is late (debug: under load
        // that is often).
        let age_ms = runs
            .iter()
            .map(|run| now.saturating_sub(run[0].created_at_ms))
            .max();
        macro_rules! call_line {
            ($level:expr, $message:literal) => {
                tracing::event!(
                    $level,
                    topic = self.topic,
                    messages,
                    call_ms = call.as_millis() as u64,
                    mark_ms = marked.as_millis() as u64,
                    age_ms,
                    $message
                )
            };
        }
        if call >= SLOW_STEP || marked >= SLOW_STEP {
            call_line!(tracing::Level::INFO, "a slow outbox call");
        } else if age_ms.is_some_and(|age| {
            age.saturating_sub(call.as_millis() as i64) >= SLOW_STEP.as_millis() as i64
        }) {
            call_line!(tracing::Level::DEBUG, "a late outbox call");
        }
        Ok(CallOutcome {
            delivered: total,
            failed,
        })
    }

    /// Schedules the next attempt of a message the sink failed on, or
    /// dead-letters it after `max_attempts` or `max_age`.
    async fn retry_later(
        &self,
        failed: &Entry,
        error: &DeliveryError,
        now: i64,
    ) -> Result<&'static str, DbErr> {
        let attempts = failed.attempts + 1;
        let age_ms = now.saturating_sub(failed.created_at_ms);
        let too_many = self.config.max_attempts > 0
            && u32::try_from(attempts).unwrap_or(u32::MAX) >= self.config.max_attempts;
        let too_old = !self.config.max_age.is_zero()
            && age_ms >= i64::try_from(self.config.max_age.as_millis()).unwrap_or(i64::MAX);
        let update = without_lease(outbox::Entity::update_many())
            .col_expr(outbox::Column::Attempts, Expr::value(attempts))
            .col_expr(
                outbox::Column::LastError,
                Expr::value(truncate(&error.message, 1000)),
            )
            .filter(outbox::Column::Id.eq(failed.id.as_str()));
        // Either way one write: one turn for it (SQLite).
        let turn = crate::db::write_turn(&self.db).await?;
        if too_many || too_old {
            tracing::error!(
                topic = self.topic,
                message = %failed.id,
                tenant = %failed.tenant_id,
                partition = %failed.partition_key,
                attempts,
                age_ms,
                %error,
                "outbox message dead-lettered: list and retry it with OutboxAdminService"
            );
            // The time of the last attempt stays in next_attempt_at_ms.
            update
                .col_expr(outbox::Column::State, Expr::value(DEAD))
                .col_expr(outbox::Column::NextAttemptAtMs, Expr::value(now))
                .exec(&self.db)
                .await?;
            // The sink writes in its own turn.
            drop(turn);
            self.sink.dead_lettered(failed).await;
            return Ok("dead");
        }
        let delay = self.backoff(attempts);
        tracing::warn!(
            topic = self.topic,
            message = %failed.id,
            attempts,
            retry_in_ms = delay.as_millis() as u64,
            %error,
            "outbox delivery failed; will retry"
        );
        update
            .col_expr(
                outbox::Column::NextAttemptAtMs,
                Expr::value(now + delay.as_millis() as i64),
            )
            .exec(&self.db)
            .await
            .map(|_| "failed")
    }

    async fn release(&self, entry: &Entry) -> Result<(), DbErr> {
        self.release_all(std::slice::from_ref(&entry.id)).await
    }

    /// Gives up our claims on `ids` in one statement (heads claimed beyond
    /// what their tenants may start now).
    async fn release_all(&self, ids: &[String]) -> Result<(), DbErr> {
        if ids.is_empty() {
            return Ok(());
        }
        let _turn = crate::db::write_turn(&self.db).await?;
        without_lease(outbox::Entity::update_many())
            .filter(outbox::Column::Id.is_in(ids.iter().map(String::as_str)))
            .filter(outbox::Column::LeaseOwner.eq(self.owner.as_str()))
            .exec(&self.db)
            .await
            .map(|_| ())
    }

    fn backoff(&self, attempts: i32) -> Duration {
        backoff(&self.config, attempts)
    }

    async fn prune(&self) -> Result<(), DbErr> {
        let cutoff = now_ms() - self.config.retention.as_millis() as i64;
        let _turn = crate::db::write_turn(&self.db).await?;
        outbox::Entity::delete_many()
            .filter(outbox::Column::Topic.eq(self.topic))
            .filter(outbox::Column::State.eq(DELIVERED))
            .filter(outbox::Column::DeliveredAtMs.lt(cutoff))
            .exec(&self.db)
            .await
            .map(|_| ())
    }
}

/// An update that also gives the message's lease up.
fn without_lease(
    update: sea_orm::UpdateMany<outbox::Entity>,
) -> sea_orm::UpdateMany<outbox::Entity> {
    update
        .col_expr(
            outbox::Column::LeaseOwner,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            outbox::Column::LeaseUntilMs,
            Expr::value(Option::<i64>::None),
        )
}

/// The delay before attempt `attempts + 1`: exponential from `min_backoff`,
/// with jitter, never above `max_backoff`.
fn backoff(config: &DelivererConfig, attempts: i32) -> Duration {
    let mut delays = crate::retry::delays(config.min_backoff, config.max_backoff);
    let n = usize::try_from(Ord::max(attempts, 1) - 1).unwrap_or(0);
    let n = Ord::min(n, 64);
    // The jitter adds to the delay; the configured maximum is a maximum.
    delays
        .nth(n)
        .unwrap_or(config.max_backoff)
        .min(config.max_backoff)
}

/// Pending (not yet delivered) messages of a topic, for tests and health.
pub async fn pending_count(conn: &impl ConnectionTrait, topic: &str) -> Result<i64, DbErr> {
    let pending = outbox::Entity::find()
        .filter(outbox::Column::Topic.eq(topic))
        .filter(outbox::Column::State.eq(PENDING))
        .count(conn)
        .await?;
    Ok(<i64 as TryFrom<u64>>::try_from(pending).unwrap_or(i64::MAX))
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
        created_at_ms: row.try_get("", "created_at_ms")?,
    })
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_grows_and_never_exceeds_its_maximum() {
        let config = DelivererConfig {
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
            ..DelivererConfig::default()
        };
        assert!(backoff(&config, 1) >= config.min_backoff);
        for attempts in 1..200 {
            assert!(
                backoff(&config, attempts) <= config.max_backoff,
                "attempt {attempts}"
            );
        }
        assert!(backoff(&config, 60) >= config.max_backoff / 2);
    }
}
