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
//! Changes are applied in the order lifecycle lists them (oldest first), and
//! a round stops at the first that fails, so a later change of the same
//! subject is never applied before an earlier one by the same replica.
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

    /// Tells lifecycle `service` has applied `change`.
    async fn confirm(
        &self,
        client: &mut LifecycleInternalClient,
        service: &'static str,
        change: &Self::Change,
    ) -> Result<(), Status>;

    /// The change's id (lifecycle lists by it) and tenant.
    fn id_and_tenant(change: &Self::Change) -> (&str, &str);

    /// A round that began at `started` listed every pending change and
    /// applied each.
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
    loop {
        match poll_once(&internal, service, feed.as_ref()).await {
            Ok(_) => {}
            // A lifecycle older than this service: nothing to apply yet.
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
/// applied, and confirmed unless it is to be applied again later.
pub async fn poll_once<F: PendingFeed>(
    internal: &LifecycleInternalClient,
    service: &'static str,
    feed: &F,
) -> Result<usize, Polled> {
    let started = Instant::now();
    let mut client = internal.clone();
    let mut after = String::new();
    let mut pending = 0;
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
            let applied = feed.apply(change).await.map_err(|error| {
                Polled::Failed(anyhow::anyhow!(
                    "applying {} {id} of tenant {tenant}: {error:#}",
                    F::WHAT
                ))
            })?;
            if applied == Applied::Later {
                continue;
            }
            with_deadline(CALL_DEADLINE, feed.confirm(&mut client, service, change))
                .await
                .map_err(|status| {
                    Polled::Failed(anyhow::anyhow!(
                        "confirming {} {id}: {}",
                        F::WHAT,
                        status.message()
                    ))
                })?;
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
    Ok(pending)
}

/// A service's part of erasures.
#[tonic::async_trait]
pub trait Eraser: Send + Sync + 'static {
    /// Erases this service's data of `erasure`; must be idempotent. Called
    /// when the replica first sees the erasure and again once it settled.
    async fn erase(&self, erasure: &lifecycle::PendingErasure) -> anyhow::Result<()>;

    /// This replica has seen every erasure that was pending when a round
    /// began at `started` (scoring's directory trusts what it remembers of
    /// people only for a while after).
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
    /// When this replica first erased each erasure it has not confirmed.
    first_swept: Mutex<HashMap<String, Instant>>,
}

impl Erasures {
    pub fn new(eraser: Arc<dyn Eraser>, settle: Duration) -> Self {
        Self {
            eraser,
            settle,
            first_swept: Mutex::new(HashMap::new()),
        }
    }

    fn first_swept(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // A panic elsewhere cannot leave the map half-written.
        self.first_swept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[tonic::async_trait]
impl PendingFeed for Erasures {
    type Change = lifecycle::PendingErasure;
    const WHAT: &'static str = "erasures";

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
        let first = self.first_swept().get(id).copied();
        match first {
            Some(first) if first.elapsed() < self.settle => Ok(Applied::Later),
            Some(_) => {
                self.eraser.erase(erasure).await?;
                // Confirmed next; if that fails, the next round starts over.
                self.first_swept().remove(id);
                Ok(Applied::Done)
            }
            None => {
                self.eraser.erase(erasure).await?;
                if self.settle.is_zero() {
                    return Ok(Applied::Done);
                }
                self.first_swept().insert(id.clone(), Instant::now());
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
    ) -> Result<(), Status> {
        let confirm = lifecycle::ConfirmErasureRequest {
            erasure_id: erasure.erasure_id.clone(),
            service: service.to_owned(),
        };
        client
            .confirm_erasure(outgoing(&erasure.tenant_id, service, confirm))
            .await?;
        Ok(())
    }

    fn id_and_tenant(erasure: &Self::Change) -> (&str, &str) {
        (&erasure.erasure_id, &erasure.tenant_id)
    }

    fn heard_all(&self, started: Instant) {
        // Erasures another replica confirmed are no longer listed.
        let settle = self.settle;
        self.first_swept()
            .retain(|_, first| first.elapsed() < settle.saturating_mul(4));
        self.eraser.heard_all(started);
    }
}

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
    ) -> Result<(), Status> {
        let confirm = lifecycle::ConfirmContactChangeRequest {
            change_id: change.change_id.clone(),
            service: service.to_owned(),
        };
        client
            .confirm_contact_change(outgoing(&change.tenant_id, service, confirm))
            .await?;
        Ok(())
    }

    fn id_and_tenant(change: &Self::Change) -> (&str, &str) {
        (&change.change_id, &change.tenant_id)
    }
}
