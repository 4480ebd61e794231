//! Group commit: concurrent `record` calls of one tenant share one write
//! transaction. On SQLite a write transaction holds the only write lock and
//! its commit writes every page it touched to the WAL, so eight batches of
//! 500 in one transaction cost far less than eight transactions (the index
//! and score pages they share are written once); on PostgreSQL it saves
//! commits. A call's result is the same as if it had run alone after the
//! calls before it in the group.
//!
//! On SQLite a leader whose last group held several calls first gathers:
//! it waits up to `GATHER_FOR` for the calls in flight before it takes the
//! next group. A group's writes grow more slowly than its activities (the
//! same contacts, buckets and score pages recur), so under concurrent load
//! fewer, larger groups store more per second; a lone caller, whose leader
//! had no group before, never waits (docs/performance.md, round 22). A call
//! announces itself (`expect`) before its people are checked, and the leader
//! gathers longer (`GATHER_EXPECTED_FOR`) while announced calls have not
//! queued: an emailed batch with new people waits for lifecycle to create
//! them before it can queue (round 23).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cascade_chassis::{ServiceError, ServiceResult, TenantId};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::ingest::with_ids;
use super::{NewActivity, Recorded, Repository};

/// At most this many activities in one group transaction.
const MAX_GROUP_ACTIVITIES: usize = 5_000;

/// How long a SQLite leader gathers calls before a group when the group
/// before it held more than one call; it stops early once 4,000 activities
/// wait. Alternating runs with the bench's 8 clients of 500: 0 ms 27-32k
/// events/s, 5 ms 34-37k, 10 ms 37-38k, 20 ms 36-37k; ingest's p99 did not
/// rise (docs/performance.md, round 22).
const GATHER_FOR: Duration = Duration::from_millis(10);
const GATHER_ENOUGH: usize = 4_000;
/// How long it gathers while calls are still being checked (`expect`): an
/// emailed batch with new people waits 15-25 ms for lifecycle before it can
/// queue; with 10 ms such groups held 3.9-4.1 calls of the bench's 8, with
/// this 5.0-5.5, as by ids (docs/performance.md, round 23). Announcements
/// are counted over all tenants: another tenant's call can stretch a gather
/// to this, never longer.
const GATHER_EXPECTED_FOR: Duration = Duration::from_millis(30);

struct Job {
    /// The caller's span: the group's transaction (and the outbox messages
    /// it writes) continue the first caller's trace.
    span: tracing::Span,
    tenant: TenantId,
    items: Vec<NewActivity>,
    reply: oneshot::Sender<ServiceResult<Vec<Recorded>>>,
}

/// Calls waiting for a transaction, and how many leaders commit them.
pub(super) struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    leaders: AtomicUsize,
    /// 1 on SQLite (one writer at a time anyway); more on PostgreSQL.
    max_leaders: usize,
    /// Whether a leader gathers calls first (SQLite; see `GATHER_FOR`).
    gather: bool,
    /// Activities of calls announced but not yet queued (`expect`).
    expected: AtomicUsize,
    /// A call was queued, or an announced one gave up.
    arrived: tokio::sync::Notify,
}

/// A call being checked before it queues; queued (or given up) when dropped.
pub struct Expected {
    queue: Arc<Queue>,
    activities: usize,
}

impl Drop for Expected {
    fn drop(&mut self) {
        self.queue
            .expected
            .fetch_sub(self.activities, Ordering::AcqRel);
        if self.queue.gather {
            self.queue.arrived.notify_one();
        }
    }
}

impl Queue {
    pub(super) fn new(max_leaders: usize, gather: bool) -> Self {
        Self {
            jobs: Mutex::new(VecDeque::new()),
            leaders: AtomicUsize::new(0),
            max_leaders: max_leaders.max(1),
            gather,
            expected: AtomicUsize::new(0),
            arrived: tokio::sync::Notify::new(),
        }
    }

    fn expect(self: &Arc<Self>, activities: usize) -> Expected {
        self.expected.fetch_add(activities, Ordering::AcqRel);
        Expected {
            queue: Arc::clone(self),
            activities,
        }
    }

    /// Waits up to `GATHER_FOR` (`GATHER_EXPECTED_FOR` while announced
    /// calls are being checked) for `GATHER_ENOUGH` activities to queue.
    async fn gather(&self) {
        let start = tokio::time::Instant::now();
        loop {
            let queued: usize = self.jobs().iter().map(|job| job.items.len()).sum();
            if queued >= GATHER_ENOUGH {
                return;
            }
            let until = if self.expected.load(Ordering::Acquire) > 0 {
                start + GATHER_EXPECTED_FOR
            } else {
                start + GATHER_FOR
            };
            if tokio::time::Instant::now() >= until {
                return;
            }
            tokio::select! {
                () = self.arrived.notified() => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        // A panic while holding the lock leaves the queue itself consistent.
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn try_lead(&self) -> bool {
        self.leaders
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_leaders).then_some(n + 1)
            })
            .is_ok()
    }

    /// The oldest job and the jobs right after it of the same tenant, up to
    /// the group's size (order across tenants is kept).
    fn take_group(&self) -> Vec<Job> {
        let mut jobs = self.jobs();
        let Some(first) = jobs.pop_front() else {
            return Vec::new();
        };
        let mut size = first.items.len();
        let mut group = vec![first];
        while let Some(next) = jobs.front() {
            if next.tenant != group[0].tenant || size + next.items.len() > MAX_GROUP_ACTIVITIES {
                break;
            }
            size += next.items.len();
            group.extend(jobs.pop_front());
        }
        group
    }
}

/// Gives the leader's place back even if committing panics.
struct Leading<'a>(&'a Queue);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.leaders.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Repository {
    /// Announces a call of `activities` that will `record` once checked, so
    /// that a gathering leader waits for it (`GATHER_EXPECTED_FOR`). Hand
    /// the announcement to `record`; dropping it gives up.
    pub fn expect(&self, activities: usize) -> Expected {
        self.group.expect(activities)
    }

    /// Stores and scores a batch, in a transaction shared with the calls of
    /// the same tenant waiting at the same time. Items are in request order;
    /// the result has one entry per item. Duplicate event ids (stored
    /// before, or repeated earlier in the batch or the group) are reported,
    /// not counted.
    pub async fn record(
        &self,
        tenant: &TenantId,
        items: Vec<NewActivity>,
    ) -> ServiceResult<Vec<Recorded>> {
        self.queue_and_wait(tenant, items, None).await
    }

    /// `record` for a call announced by `expect`.
    pub async fn record_announced(
        &self,
        tenant: &TenantId,
        items: Vec<NewActivity>,
        announced: Expected,
    ) -> ServiceResult<Vec<Recorded>> {
        self.queue_and_wait(tenant, items, Some(announced)).await
    }

    async fn queue_and_wait(
        &self,
        tenant: &TenantId,
        items: Vec<NewActivity>,
        announced: Option<Expected>,
    ) -> ServiceResult<Vec<Recorded>> {
        let (reply, answer) = oneshot::channel();
        self.group.jobs().push_back(Job {
            span: tracing::Span::current(),
            tenant: tenant.clone(),
            items,
            reply,
        });
        // Dropping the announcement wakes a gathering leader.
        match announced {
            Some(announced) => drop(announced),
            None if self.group.gather => self.group.arrived.notify_one(),
            None => {}
        }
        if self.group.try_lead() {
            // Its own task: a caller that goes away must not roll back the
            // others' writes.
            tokio::spawn(self.clone().lead());
        }
        answer.await.map_err(|_| {
            ServiceError::internal(anyhow::anyhow!(
                "the transaction recording this batch ended without an answer"
            ))
        })?
    }

    async fn lead(self) {
        loop {
            {
                let _leading = Leading(&self.group);
                let mut last_calls = 0;
                loop {
                    if self.group.gather && last_calls > 1 {
                        self.group.gather().await;
                    }
                    let group = self.group.take_group();
                    if group.is_empty() {
                        break;
                    }
                    last_calls = group.len();
                    let span = group[0].span.clone();
                    self.commit_group(group).instrument(span).await;
                }
            }
            // A job queued after the last take found no free leader place.
            if self.group.jobs().is_empty() || !self.group.try_lead() {
                return;
            }
        }
    }

    async fn commit_group(&self, group: Vec<Job>) {
        let Some(tenant) = group.first().map(|job| job.tenant.clone()) else {
            return;
        };
        if group.len() == 1 {
            for job in group {
                let _ = job.reply.send(self.record_owned(&tenant, job.items).await);
            }
            return;
        }
        // The jobs' items moved into one batch, and each job's share of the
        // results (or of the items again) taken back by its length.
        let mut items = Vec::with_capacity(group.iter().map(|job| job.items.len()).sum());
        let mut replies = Vec::with_capacity(group.len());
        for job in group {
            replies.push((job.items.len(), job.reply));
            items.extend(job.items);
        }
        match self.record_now(&tenant, &items).await {
            Ok(outcomes) => {
                let mut recorded = with_ids(outcomes, items).into_iter();
                for (n, reply) in replies {
                    let _ = reply.send(Ok(recorded.by_ref().take(n).collect()));
                }
            }
            // Each call on its own then, so each gets its own answer.
            Err(_) => {
                let mut items = items.into_iter();
                for (n, reply) in replies {
                    let mine: Vec<NewActivity> = items.by_ref().take(n).collect();
                    let _ = reply.send(self.record_owned(&tenant, mine).await);
                }
            }
        }
    }

    async fn record_owned(
        &self,
        tenant: &TenantId,
        items: Vec<NewActivity>,
    ) -> ServiceResult<Vec<Recorded>> {
        let outcomes = self.record_now(tenant, &items).await?;
        Ok(with_ids(outcomes, items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An announcement counts until it is dropped (queued or given up), so
    /// a leader never waits for a call that is no longer coming.
    #[tokio::test]
    async fn an_announcement_counts_until_dropped_and_wakes_the_leader() {
        let queue = Arc::new(Queue::new(1, true));
        let first = queue.expect(500);
        let second = queue.expect(20);
        assert_eq!(queue.expected.load(Ordering::Acquire), 520);
        drop(first);
        assert_eq!(queue.expected.load(Ordering::Acquire), 20);
        // The drop left a wake-up for the gathering leader.
        tokio::time::timeout(Duration::from_secs(1), queue.arrived.notified())
            .await
            .expect("a dropped announcement wakes the leader");
        drop(second);
        assert_eq!(queue.expected.load(Ordering::Acquire), 0);
    }

    /// With nothing announced a leader gathers `GATHER_FOR`; while a call
    /// is announced, up to `GATHER_EXPECTED_FOR`, and it stops as soon as
    /// the announcement is dropped (paused clock: no real waiting).
    #[tokio::test(start_paused = true)]
    async fn a_leader_gathers_longer_only_while_a_call_is_announced() {
        let queue = Arc::new(Queue::new(1, true));
        let start = tokio::time::Instant::now();
        queue.gather().await;
        assert_eq!(start.elapsed(), GATHER_FOR);

        let announced = queue.expect(500);
        let start = tokio::time::Instant::now();
        queue.gather().await;
        assert_eq!(start.elapsed(), GATHER_EXPECTED_FOR);

        let start = tokio::time::Instant::now();
        let dropper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(15)).await;
            drop(announced);
        });
        queue.gather().await;
        dropper.await.expect("dropped");
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(15).max(GATHER_FOR),
            "the leader stops gathering once nothing is announced and GATHER_FOR is over"
        );
    }
}
