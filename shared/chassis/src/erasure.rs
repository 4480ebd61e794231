//! Changes that reach scoring and opportunity by pull: erasures and (for
//! scoring) contacts marked inactive or active again.
//!
//! Lifecycle records each change (DeleteContact, DeleteAccount;
//! DeactivateContact, ReactivateContact) in the transaction that makes it,
//! and keeps it until each service that must apply it confirms. Every
//! replica of those services polls lifecycle for the changes its service has
//! not confirmed, applies its part, and confirms. A service that was down
//! applies them on its return: nothing is lost, and a repeat is harmless,
//! since applying is idempotent. Lifecycle needs no client of its peers.
//!
//! One loop ([`follow_feed`]) serves every kind of change; a kind is a
//! [`PendingFeed`]: how to list the pending ones, apply one, and confirm it.
//! Changes are applied in the order lifecycle lists them (oldest first). A
//! round of contact changes stops at the first that fails, so a later
//! change of the same contact is never applied before an earlier one by the
//! same replica; erasures do not depend on each other, so one that fails
//! (a damaged row of its tenant) holds back no other.
//!
//! An erasure settles before it is confirmed ([`Erasures`]): a replica erases
//! when it first sees one, and confirms only after erasing again
//! `erasure_settle_ms` later. Meanwhile it stays pending, so every replica
//! hears of it (and forgets what it remembered of the person), and the
//! second sweep takes what calls already in flight stored after the first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cascade_proto::lifecycle::v1 as lifecycle;
use tonic::{Code, Status};

use crate::client::{CALL_DEADLINE, LifecycleInternalClient, outgoing, with_deadline};

/// How many pending changes one page lists (lifecycle's most).
const PAGE: i32 = 500;

/// The PreconditionFailure type of lifecycle's refusal of a confirmation
/// that comes before the erasure has settled (`erasure.min_settle_ms`).
pub const ERASURE_SETTLING: &str = "ERASURE_SETTLING";

/// What applying a change came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied for good: confirm it.
    Done,
    /// Applied for now; keep it pending and look again next round (an
    /// erasure that is settling).
    Later,
}

/// A kind of change lifecycle keeps for a service until it confirms it.
#[tonic::async_trait]
pub trait PendingFeed: Send + Sync + 'static {
    type Change: Send + Sync;

    /// What the changes are, for logs ("erasures").
    const WHAT: &'static str;

    /// Whether a change that fails holds back the ones listed after it.
    const IN_ORDER: bool;

    /// At most `page_size` changes `service` has not confirmed, oldest
    /// first, after the change with id `after`.
    async fn list(
        &self,
        client: &mut LifecycleInternalClient,
        service: &'static str,
        after: &str,
        page_size: i32,
    ) -> Result<Vec<Self::Change>, Status>;

    /// Applies this service's part of `change`; must be idempotent.
    async fn apply(&self, change: &Self::Change) -> anyhow::Result<Applied>;

    /// Tells lifecycle `service` has applied `change`: `Done` when lifecycle
    /// took it, `Later` when it asked to be told again later.
    async fn confirm(
        &self,
        client: &mut LifecycleInternalClient,
        service: &'static str,
        change: &Self::Change,
    ) -> Result<Applied, Status>;

    /// The change's id (lifecycle lists by it) and tenant.
    fn id_and_tenant(change: &Self::Change) -> (&str, &str);

    /// Lifecycle took the confirmation of `change`.
    fn confirmed(&self, _change: &Self::Change) {}

    /// A round that began at `started` listed every pending change (each
    /// applied, or failed and to be tried again).
    fn heard_all(&self, _started: Instant) {}
}

/// Polls lifecycle every `interval` for the changes of `feed` that `service`
/// has not confirmed, applies each and confirms it. Runs until aborted.
pub async fn follow_feed<F: PendingFeed>(
    internal: LifecycleInternalClient,
    service: &'static str,
    feed: Arc<F>,
    interval: Duration,
) {
    let mut warned = false;
    loop {
        match poll_once(&internal, service, feed.as_ref()).await {
            Ok(_) => warned = false,
            // A lifecycle older than this service: nothing to apply yet, but
            // nothing heard either (scoring's directory then asks lifecycle
            // about every batch), so the operator is told once per outage.
            Err(Polled::Unimplemented) if !warned => {
                warned = true;
                tracing::warn!(
                    what = F::WHAT,
                    "lifecycle does not offer these yet (older than this service): upgrade lifecycle first"
                )
            }
            Err(Polled::Unimplemented) => {
                tracing::debug!(what = F::WHAT, "lifecycle does not offer these yet")
            }
            Err(Polled::Failed(error)) => {
                tracing::warn!(what = F::WHAT, %error, "will try again")
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Why a round stopped.
#[derive(Debug)]
pub enum Polled {
    /// Lifecycle does not know the listing RPC (an older version).
    Unimplemented,
    Failed(anyhow::Error),
}

impl std::fmt::Display for Polled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unimplemented => f.write_str("lifecycle does not offer this feed"),
            Self::Failed(error) => write!(f, "{error:#}"),
        }
    }
}

impl std::error::Error for Polled {}

/// One round, page by page: how many changes were pending. Each was
/// applied, and confirmed unless it is to be applied again later; the
/// round's error names every change that failed (one log line a round).
pub async fn poll_once<F: PendingFeed>(
    internal: &LifecycleInternalClient,
    service: &'static str,
    feed: &F,
) -> Result<usize, Polled> {
    let started = Instant::now();
    let mut client = internal.clone();
    let mut after = String::new();
    let mut pending = 0;
    let mut failed = Vec::new();
    loop {
        let page = match with_deadline(CALL_DEADLINE, feed.list(&mut client, service, &after, PAGE))
            .await
        {
            Ok(page) => page,
            Err(status) if status.code() == Code::Unimplemented => {
                return Err(Polled::Unimplemented);
            }
            Err(status) => {
                return Err(Polled::Failed(anyhow::anyhow!(
                    "listing pending {}: {}",
                    F::WHAT,
                    status.message()
                )));
            }
        };
        // A lifecycle from before paging ignores `after` and lists the
        // first page again.
        if let Some(first) = page.first()
            && !after.is_empty()
            && F::id_and_tenant(first).0 <= after.as_str()
        {
            return Err(Polled::Failed(anyhow::anyhow!(
                "lifecycle listed pending {} from the start again instead of after {after}: upgrade lifecycle",
                F::WHAT
            )));
        }
        for change in &page {
            let (id, tenant) = F::id_and_tenant(change);
            match feed.apply(change).await {
                Ok(Applied::Done) => {}
                Ok(Applied::Later) => continue,
                Err(error) => {
                    let error =
                        anyhow::anyhow!("applying {} {id} of tenant {tenant}: {error:#}", F::WHAT);
                    change_failed::<F>(error, &mut failed)?;
                    continue;
                }
            }
            match with_deadline(CALL_DEADLINE, feed.confirm(&mut client, service, change)).await {
                Ok(Applied::Done) => {}
                Ok(Applied::Later) => continue,
                Err(status) => {
                    let error =
                        anyhow::anyhow!("confirming {} {id}: {}", F::WHAT, status.message());
                    change_failed::<F>(error, &mut failed)?;
                    continue;
                }
            }
            feed.confirmed(change);
            tracing::info!(what = F::WHAT, change = %id, %tenant, "applied this service's part");
        }
        pending += page.len();
        match page.last() {
            Some(last) if page.len() >= PAGE as usize => {
                after = F::id_and_tenant(last).0.to_owned();
            }
            _ => break,
        }
    }
    feed.heard_all(started);
    match failed.len() {
        0 => Ok(pending),
        1 => Err(Polled::Failed(failed.remove(0))),
        n => Err(Polled::Failed(anyhow::anyhow!(
            "{n} of {pending} pending {} failed, the others went on: {}",
            F::WHAT,
            failed
                .iter()
                .map(|error| format!("{error:#}"))
                .collect::<Vec<_>>()
                .join("; ")
        ))),
    }
}

/// A change that failed to apply or confirm: the round's error at once when
/// changes are in order; otherwise kept for the round's error, and the
/// round goes on with the others.
fn change_failed<F: PendingFeed>(
    error: anyhow::Error,
    failed: &mut Vec<anyhow::Error>,
) -> Result<(), Polled> {
    if F::IN_ORDER {
        return Err(Polled::Failed(error));
    }
    failed.push(error);
    Ok(())
}

/// A service's part of erasures.
#[tonic::async_trait]
pub trait Eraser: Send + Sync + 'static {
    /// This replica sees `erasure` for the first time (before it erases):
    /// what it keeps in memory of the person is to be dropped now, even if
    /// erasing its rows fails and is tried again.
    fn hear(&self, _erasure: &lifecycle::PendingErasure) {}

    /// Erases this service's data of `erasure`; must be idempotent. Called
    /// when the replica first sees the erasure and again once it settled.
    async fn erase(&self, erasure: &lifecycle::PendingErasure) -> anyhow::Result<()>;

    /// This replica has heard of every erasure that was pending when a
    /// round began at `started` (scoring's directory trusts what it
    /// remembers of people only for a while after).
    fn heard_all(&self, _started: Instant) {}
}

/// Erasures (DeleteContact, DeleteAccount) as a feed. An erasure is erased
/// when this replica first sees it, and again, then confirmed, once
/// `settle` has passed since: calls that checked the person before the
/// erasure and store after the first sweep are caught by the second, and
/// until then the erasure stays pending, so every replica's poll sees it.
pub struct Erasures {
    eraser: Arc<dyn Eraser>,
    settle: Duration,
    /// The erasures this replica has heard of and not confirmed.
    seen: Mutex<HashMap<String, Seen>>,
}

/// What this replica did of one erasure.
#[derive(Clone, Copy)]
struct Seen {
    heard_at: Instant,
    /// When its first sweep succeeded.
    swept_at: Option<Instant>,
    /// Lifecycle refused the confirmation until then (its
    /// `erasure.min_settle_ms` is longer than this replica's settle): the
    /// second sweep waits for it rather than running on every poll.
    confirm_after: Option<Instant>,
}

impl Erasures {
    pub fn new(eraser: Arc<dyn Eraser>, settle: Duration) -> Self {
        Self {
            eraser,
            settle,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        // A panic elsewhere cannot leave the map half-written.
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[tonic::async_trait]
impl PendingFeed for Erasures {
    type Change = lifecycle::PendingErasure;
    const WHAT: &'static str = "erasures";
    const IN_ORDER: bool = false;

    async fn list(
        &self,
        client: &mut LifecycleInternalClient,
        service: &'static str,
        after: &str,
        page_size: i32,
    ) -> Result<Vec<Self::Change>, Status> {
        // Pending erasures of every tenant: the tenant header is not used.
        let request = lifecycle::ListPendingErasuresRequest {
            service: service.to_owned(),
            page_size,
            after_erasure_id: after.to_owned(),
        };
        Ok(client
            .list_pending_erasures(outgoing("default", service, request))
            .await?
            .into_inner()
            .erasures)
    }

    async fn apply(&self, erasure: &Self::Change) -> anyhow::Result<Applied> {
        let id = &erasure.erasure_id;
        let seen = self.seen().get(id).copied();
        if seen
            .and_then(|seen| seen.confirm_after)
            .is_some_and(|after| Instant::now() < after)
        {
            return Ok(Applied::Later);
        }
        let swept_at = match seen {
            Some(seen) => seen.swept_at,
            None => {
                self.eraser.hear(erasure);
                let heard = Seen {
                    heard_at: Instant::now(),
                    swept_at: None,
                    confirm_after: None,
                };
                self.seen().insert(id.clone(), heard);
                None
            }
        };
        match swept_at {
            Some(swept_at) if swept_at.elapsed() < self.settle => Ok(Applied::Later),
            Some(_) => {
                // Kept until confirmed: a failed confirmation is tried again
                // next round, after erasing again, without a new settle.
                self.eraser.erase(erasure).await?;
                Ok(Applied::Done)
            }
            None => {
                self.eraser.erase(erasure).await?;
                if self.settle.is_zero() {
                    return Ok(Applied::Done);
                }
                if let Some(seen) = self.seen().get_mut(id) {
                    seen.swept_at = Some(Instant::now());
                }
                tracing::info!(
                    erasure = %id,
                    tenant = %erasure.tenant_id,
                    settle_ms = self.settle.as_millis() as u64,
                    "erased; erasing again and confirming once it settled"
                );
                Ok(Applied::Later)
            }
        }
    }

    async fn confirm(
        &self,
        client: &mut LifecycleInternalClient,
        service: &'static str,
        erasure: &Self::Change,
    ) -> Result<Applied, Status> {
        let confirm = lifecycle::ConfirmErasureRequest {
            erasure_id: erasure.erasure_id.clone(),
            service: service.to_owned(),
        };
        match client
            .confirm_erasure(outgoing(&erasure.tenant_id, service, confirm))
            .await
        {
            Ok(_) => Ok(Applied::Done),
            // Lifecycle's settle is longer than this replica's: erased again
            // and confirmed once it says it settled (its RetryInfo), or on
            // the next round when it does not say.
            Err(status) if is_settling(&status) => {
                let wait = settling_for(&status);
                tracing::debug!(erasure = %erasure.erasure_id, refusal = %status.message(), wait_ms = wait.map(|w| w.as_millis() as u64), "lifecycle asks to confirm later");
                if let (Some(wait), Some(seen)) = (wait, self.seen().get_mut(&erasure.erasure_id)) {
                    seen.confirm_after = Some(Instant::now() + wait);
                }
                Ok(Applied::Later)
            }
            Err(status) => Err(status),
        }
    }

    fn id_and_tenant(erasure: &Self::Change) -> (&str, &str) {
        (&erasure.erasure_id, &erasure.tenant_id)
    }

    fn confirmed(&self, erasure: &Self::Change) {
        self.seen().remove(&erasure.erasure_id);
    }

    fn heard_all(&self, started: Instant) {
        // Erasures another replica confirmed are no longer listed; one
        // forgotten here while still pending is heard and swept again.
        let keep = self.settle.saturating_mul(4);
        let now = Instant::now();
        self.seen().retain(|_, seen| {
            // Kept a while past a wait lifecycle asked for, so that the
            // round after it erases again and confirms rather than hearing
            // the erasure anew and settling once more.
            seen.confirm_after.is_some_and(|after| now < after + keep)
                || seen.swept_at.unwrap_or(seen.heard_at).elapsed() < keep
        });
        self.eraser.heard_all(started);
    }
}

/// Whether lifecycle refused a confirmation because the erasure has not
/// settled yet ([`ERASURE_SETTLING`]).
fn is_settling(status: &Status) -> bool {
    use tonic_types::StatusExt;
    status.code() == Code::FailedPrecondition
        && status
            .get_details_precondition_failure()
            .is_some_and(|failure| {
                failure
                    .violations
                    .iter()
                    .any(|v| v.r#type == ERASURE_SETTLING)
            })
}

/// How long lifecycle said an erasure still settles (RetryInfo on its
/// refusal), at most `MAX_SETTLING_WAIT`.
fn settling_for(status: &Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .map(|delay| delay.min(MAX_SETTLING_WAIT))
}

/// The longest a refused confirmation waits before it is tried again,
/// whatever lifecycle says: a wrong clock or setting there cannot park an
/// erasure here for days.
const MAX_SETTLING_WAIT: Duration = Duration::from_secs(3_600);

/// Polls lifecycle every `interval` for the erasures `service` has not
/// confirmed, erases each with `eraser`, and erases again and confirms it
/// once `settle` has passed. Runs until aborted.
pub async fn follow(
    internal: LifecycleInternalClient,
    service: &'static str,
    eraser: Arc<dyn Eraser>,
    interval: Duration,
    settle: Duration,
) {
    let erasures = Arc::new(Erasures::new(eraser, settle));
    follow_feed(internal, service, erasures, interval).await
}

/// A service's part of contacts marked inactive (DeactivateContact) or
/// active again (ReactivateContact): scoring's.
#[tonic::async_trait]
pub trait ContactChangeApplier: Send + Sync + 'static {
    /// Applies `change`; must be idempotent, and must ignore a change older
    /// than one it applied for the same contact (another replica may apply
    /// a later one first).
    async fn apply(&self, change: &lifecycle::PendingContactChange) -> anyhow::Result<()>;
}

/// Contact status changes as a feed.
pub struct ContactChanges(pub Arc<dyn ContactChangeApplier>);

#[tonic::async_trait]
impl PendingFeed for ContactChanges {
    type Change = lifecycle::PendingContactChange;
    const WHAT: &'static str = "contact changes";
    const IN_ORDER: bool = true;

    async fn list(
        &self,
        client: &mut LifecycleInternalClient,
        service: &'static str,
        after: &str,
        page_size: i32,
    ) -> Result<Vec<Self::Change>, Status> {
        // Pending changes of every tenant: the tenant header is not used.
        let request = lifecycle::ListPendingContactChangesRequest {
            service: service.to_owned(),
            page_size,
            after_change_id: after.to_owned(),
        };
        Ok(client
            .list_pending_contact_changes(outgoing("default", service, request))
            .await?
            .into_inner()
            .changes)
    }

    async fn apply(&self, change: &Self::Change) -> anyhow::Result<Applied> {
        self.0.apply(change).await?;
        Ok(Applied::Done)
    }

    async fn confirm(
        &self,
        client: &mut LifecycleInternalClient,
        service: &'static str,
        change: &Self::Change,
    ) -> Result<Applied, Status> {
        let confirm = lifecycle::ConfirmContactChangeRequest {
            change_id: change.change_id.clone(),
            service: service.to_owned(),
        };
        client
            .confirm_contact_change(outgoing(&change.tenant_id, service, confirm))
            .await?;
        Ok(Applied::Done)
    }

    fn id_and_tenant(change: &Self::Change) -> (&str, &str) {
        (&change.change_id, &change.tenant_id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A client that is never called: the fakes below answer instead.
    fn unused_client() -> LifecycleInternalClient {
        let settings = crate::client::LifecycleClientSettings {
            url: "http://127.0.0.1:9".into(),
            ..Default::default()
        };
        crate::client::lifecycle_clients(
            &settings,
            &crate::auth::AuthSettings::default(),
            &crate::tls::TlsSettings::default(),
            "scoring",
        )
        .expect("clients")
        .1
    }

    /// A feed of ids in lifecycle's order: `later` ones stay pending,
    /// `failing` ones fail; a confirmed one leaves the listing.
    #[derive(Default)]
    struct Fake<const IN_ORDER: bool> {
        pending: Mutex<Vec<String>>,
        later: HashSet<String>,
        failing: HashSet<String>,
        /// Lifecycle before paging: `after` is not read.
        ignores_cursor: bool,
        cursors: Mutex<Vec<String>>,
        confirmed: Mutex<Vec<String>>,
        heard: AtomicUsize,
    }

    impl<const IN_ORDER: bool> Fake<IN_ORDER> {
        fn with(ids: impl IntoIterator<Item = String>) -> Self {
            Self {
                pending: Mutex::new(ids.into_iter().collect()),
                ..Self::default()
            }
        }
    }

    #[tonic::async_trait]
    impl<const IN_ORDER: bool> PendingFeed for Fake<IN_ORDER> {
        type Change = String;
        const WHAT: &'static str = "fakes";
        const IN_ORDER: bool = IN_ORDER;

        async fn list(
            &self,
            _client: &mut LifecycleInternalClient,
            _service: &'static str,
            after: &str,
            page_size: i32,
        ) -> Result<Vec<String>, Status> {
            self.cursors.lock().expect("lock").push(after.to_owned());
            let after = if self.ignores_cursor { "" } else { after };
            Ok(self
                .pending
                .lock()
                .expect("lock")
                .iter()
                .filter(|id| id.as_str() > after)
                .take(page_size as usize)
                .cloned()
                .collect())
        }

        async fn apply(&self, id: &String) -> anyhow::Result<Applied> {
            if self.failing.contains(id) {
                anyhow::bail!("{id} fails");
            }
            Ok(if self.later.contains(id) {
                Applied::Later
            } else {
                Applied::Done
            })
        }

        async fn confirm(
            &self,
            _client: &mut LifecycleInternalClient,
            _service: &'static str,
            id: &String,
        ) -> Result<Applied, Status> {
            self.pending.lock().expect("lock").retain(|p| p != id);
            self.confirmed.lock().expect("lock").push(id.clone());
            Ok(Applied::Done)
        }

        fn id_and_tenant(id: &String) -> (&str, &str) {
            (id, "t")
        }

        fn heard_all(&self, _started: Instant) {
            self.heard.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("id-{i:04}")).collect()
    }

    /// A round lists page after page, each after the last id of the one
    /// before, confirms what is done, keeps what is to be applied later,
    /// and says once that it heard everything.
    #[tokio::test]
    async fn a_round_pages_after_the_last_id_and_confirms_what_is_done() {
        let all = ids(1_001);
        let later: HashSet<String> = all.iter().step_by(3).cloned().collect();
        let feed = Fake::<false> {
            later: later.clone(),
            ..Fake::with(all.clone())
        };
        let listed = poll_once(&unused_client(), "scoring", &feed)
            .await
            .expect("a round");
        assert_eq!(listed, 1_001);
        assert_eq!(
            *feed.cursors.lock().expect("lock"),
            ["", "id-0499", "id-0999"],
            "pages of 500 after the last id"
        );
        let confirmed = feed.confirmed.lock().expect("lock").clone();
        assert_eq!(confirmed.len(), 1_001 - later.len());
        assert!(confirmed.iter().all(|id| !later.contains(id)));
        assert_eq!(feed.heard.load(Ordering::SeqCst), 1);
    }

    /// A failing erasure holds back no other, and the round still heard
    /// every one; a failing contact change stops its round there.
    #[tokio::test]
    async fn a_failing_change_stops_only_an_ordered_round() {
        let failing: HashSet<String> = ["id-0001".to_owned()].into();
        let erasures = Fake::<false> {
            failing: failing.clone(),
            ..Fake::with(ids(3))
        };
        let error = poll_once(&unused_client(), "scoring", &erasures)
            .await
            .expect_err("one failed");
        assert!(error.to_string().contains("id-0001 fails"), "{error}");
        assert_eq!(
            *erasures.confirmed.lock().expect("lock"),
            ["id-0000", "id-0002"]
        );
        assert_eq!(erasures.heard.load(Ordering::SeqCst), 1);
        // Every failure of a round in one error: one log line a round.
        let two = Fake::<false> {
            failing: ["id-0000".to_owned(), "id-0002".to_owned()].into(),
            ..Fake::with(ids(3))
        };
        let error = poll_once(&unused_client(), "scoring", &two)
            .await
            .expect_err("two failed");
        let error = error.to_string();
        assert!(error.starts_with("2 of 3 pending"), "{error}");
        assert!(
            error.contains("id-0000 fails") && error.contains("id-0002 fails"),
            "{error}"
        );
        assert_eq!(*two.confirmed.lock().expect("lock"), ["id-0001"]);

        let changes = Fake::<true> {
            failing,
            ..Fake::with(ids(3))
        };
        poll_once(&unused_client(), "scoring", &changes)
            .await
            .expect_err("one failed");
        assert_eq!(*changes.confirmed.lock().expect("lock"), ["id-0000"]);
        assert_eq!(changes.heard.load(Ordering::SeqCst), 0);
    }

    /// A lifecycle from before paging lists the first page again: the
    /// round ends with an error instead of going round for ever.
    #[tokio::test]
    async fn a_lifecycle_that_ignores_the_cursor_ends_the_round() {
        let all = ids(600);
        let feed = Fake::<false> {
            later: all.iter().cloned().collect(),
            ignores_cursor: true,
            ..Fake::with(all)
        };
        let error = poll_once(&unused_client(), "scoring", &feed)
            .await
            .expect_err("the same page twice");
        assert!(error.to_string().contains("upgrade lifecycle"), "{error}");
        assert_eq!(feed.cursors.lock().expect("lock").len(), 2);
        assert_eq!(feed.heard.load(Ordering::SeqCst), 0);
    }

    #[derive(Default)]
    struct CountingEraser {
        hears: AtomicUsize,
        erases: AtomicUsize,
        /// The next this many erases fail.
        failures: AtomicUsize,
    }

    impl CountingEraser {
        /// (hears, erases) so far.
        fn counts(&self) -> (usize, usize) {
            (
                self.hears.load(Ordering::SeqCst),
                self.erases.load(Ordering::SeqCst),
            )
        }
    }

    /// A pending erasure `e1` of tenant `t`.
    fn pending_e1() -> lifecycle::PendingErasure {
        lifecycle::PendingErasure {
            erasure_id: "e1".into(),
            tenant_id: "t".into(),
            ..Default::default()
        }
    }

    #[tonic::async_trait]
    impl Eraser for CountingEraser {
        fn hear(&self, _erasure: &lifecycle::PendingErasure) {
            self.hears.fetch_add(1, Ordering::SeqCst);
        }

        async fn erase(&self, _erasure: &lifecycle::PendingErasure) -> anyhow::Result<()> {
            self.erases.fetch_add(1, Ordering::SeqCst);
            let failing = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if failing.is_ok() {
                anyhow::bail!("a damaged row");
            }
            Ok(())
        }
    }

    /// Only lifecycle's settling refusal reads as "later": another
    /// precondition or code is a failure.
    #[test]
    fn a_settling_refusal_is_told_from_a_failure() {
        let refusal = |kind: &str| -> Status {
            crate::ServiceError::precondition(kind, "erasure/e1", "not yet").into()
        };
        assert!(is_settling(&refusal(ERASURE_SETTLING)));
        assert!(!is_settling(&refusal("OPEN_OPPORTUNITIES")));
        assert!(!is_settling(&Status::failed_precondition("no details")));
        assert!(!is_settling(&Status::unavailable(ERASURE_SETTLING)));
    }

    /// An erasure is heard once, erased at once (again after a failure),
    /// kept pending while it settles, and erased again when it is to be
    /// confirmed, until the confirmation is taken.
    #[tokio::test]
    async fn an_erasure_settles_between_its_two_sweeps() {
        let eraser = Arc::new(CountingEraser {
            failures: AtomicUsize::new(1),
            ..CountingEraser::default()
        });
        // Long enough that a stalled test machine does not settle it early.
        let settle = Duration::from_secs(2);
        let erasures = Erasures::new(eraser.clone(), settle);
        let erasure = pending_e1();
        let counts = || eraser.counts();

        erasures
            .apply(&erasure)
            .await
            .expect_err("the first erase fails");
        assert_eq!(counts(), (1, 1), "heard before erasing, even if that fails");
        assert_eq!(
            erasures.apply(&erasure).await.expect("erased"),
            Applied::Later
        );
        assert_eq!(counts(), (1, 2), "heard once, erased again");
        assert_eq!(
            erasures.apply(&erasure).await.expect("settling"),
            Applied::Later
        );
        assert_eq!(counts(), (1, 2), "nothing to do while it settles");

        tokio::time::sleep(settle).await;
        assert_eq!(
            erasures.apply(&erasure).await.expect("settled"),
            Applied::Done
        );
        assert_eq!(counts(), (1, 3), "the second sweep");
        // The confirmation failed: the next round erases and confirms again.
        assert_eq!(
            erasures.apply(&erasure).await.expect("settled"),
            Applied::Done
        );
        assert_eq!(counts(), (1, 4));

        erasures.confirmed(&erasure);
        assert_eq!(
            erasures.apply(&erasure).await.expect("erased"),
            Applied::Later
        );
        assert_eq!(counts(), (2, 5), "once confirmed, it is new again");
    }

    /// How long lifecycle's settling refusal says is left is read from its
    /// RetryInfo, at most an hour; no RetryInfo, no wait.
    #[test]
    fn a_settling_refusal_says_how_long_to_wait() {
        let refusal = |delay: Option<Duration>| -> Status {
            let refused =
                crate::ServiceError::precondition(ERASURE_SETTLING, "erasure/e1", "not yet");
            match delay {
                Some(delay) => refused.holds_after(delay),
                None => refused,
            }
            .into()
        };
        let wait = Duration::from_millis(1_500);
        assert!(is_settling(&refusal(Some(wait))));
        assert_eq!(settling_for(&refusal(Some(wait))), Some(wait));
        assert_eq!(
            settling_for(&refusal(Some(Duration::from_secs(86_400)))),
            Some(MAX_SETTLING_WAIT)
        );
        assert_eq!(settling_for(&refusal(None)), None);
    }

    /// While lifecycle asked to wait, a swept erasure is neither erased
    /// again nor forgotten by the round's end; after the wait it is erased
    /// again and confirmed, without being heard anew.
    #[tokio::test]
    async fn a_wait_lifecycle_asked_for_is_kept() {
        let eraser = Arc::new(CountingEraser::default());
        let settle = Duration::from_millis(200);
        let erasures = Erasures::new(eraser.clone(), settle);
        let erasure = pending_e1();
        let counts = || eraser.counts();
        assert_eq!(
            erasures.apply(&erasure).await.expect("swept"),
            Applied::Later
        );
        tokio::time::sleep(settle).await;
        assert_eq!(
            erasures.apply(&erasure).await.expect("settled"),
            Applied::Done
        );
        assert_eq!(counts(), (1, 2));
        // As `confirm` does on lifecycle's refusal with RetryInfo.
        let wait = settle * 10;
        if let Some(seen) = erasures.seen().get_mut("e1") {
            seen.confirm_after = Some(Instant::now() + wait);
        }
        // Past the 4 settles a heard erasure is otherwise kept for.
        tokio::time::sleep(settle * 5).await;
        assert_eq!(
            erasures.apply(&erasure).await.expect("waiting"),
            Applied::Later
        );
        erasures.heard_all(Instant::now());
        assert_eq!(counts(), (1, 2), "not erased while it waits");
        tokio::time::sleep(settle * 6).await;
        erasures.heard_all(Instant::now());
        assert_eq!(
            erasures.apply(&erasure).await.expect("waited"),
            Applied::Done
        );
        assert_eq!(counts(), (1, 3), "erased again, not heard anew");
    }
}
