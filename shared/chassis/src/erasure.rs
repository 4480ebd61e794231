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

use std::sync::Arc;
use std::time::Duration;

use cascade_proto::lifecycle::v1 as lifecycle;
use tonic::{Code, Status};

use crate::client::{CALL_DEADLINE, LifecycleInternalClient, outgoing, with_deadline};

/// How many pending changes one poll asks for.
const PAGE: i32 = 100;

/// A kind of change lifecycle keeps for a service until it confirms it.
#[tonic::async_trait]
pub trait PendingFeed: Send + Sync + 'static {
    type Change: Send + Sync;

    /// What the changes are, for logs ("erasures").
    const WHAT: &'static str;

    /// At most `page_size` changes `service` has not confirmed, oldest first.
    async fn list(
        &self,
        client: &mut LifecycleInternalClient,
        service: &'static str,
        page_size: i32,
    ) -> Result<Vec<Self::Change>, Status>;

    /// Applies this service's part of `change`; must be idempotent.
    async fn apply(&self, change: &Self::Change) -> anyhow::Result<()>;

    /// Tells lifecycle `service` has applied `change`.
    async fn confirm(
        &self,
        client: &mut LifecycleInternalClient,
        service: &'static str,
        change: &Self::Change,
    ) -> Result<(), Status>;

    /// The change's id and tenant, for logs.
    fn id_and_tenant(change: &Self::Change) -> (&str, &str);
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
            // A full page: there may be more; go on at once.
            Ok(n) if n >= PAGE as usize => continue,
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

/// One round: how many changes were pending (all of them applied and
/// confirmed).
pub async fn poll_once<F: PendingFeed>(
    internal: &LifecycleInternalClient,
    service: &'static str,
    feed: &F,
) -> Result<usize, Polled> {
    let mut client = internal.clone();
    let pending = match with_deadline(CALL_DEADLINE, feed.list(&mut client, service, PAGE)).await {
        Ok(pending) => pending,
        Err(status) if status.code() == Code::Unimplemented => return Err(Polled::Unimplemented),
        Err(status) => {
            return Err(Polled::Failed(anyhow::anyhow!(
                "listing pending {}: {}",
                F::WHAT,
                status.message()
            )));
        }
    };
    for change in &pending {
        let (id, tenant) = F::id_and_tenant(change);
        feed.apply(change).await.map_err(|error| {
            Polled::Failed(anyhow::anyhow!(
                "applying {} {id} of tenant {tenant}: {error:#}",
                F::WHAT
            ))
        })?;
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
    Ok(pending.len())
}

/// A service's part of erasures.
#[tonic::async_trait]
pub trait Eraser: Send + Sync + 'static {
    /// Erases this service's data of `erasure`; must be idempotent.
    async fn erase(&self, erasure: &lifecycle::PendingErasure) -> anyhow::Result<()>;
}

/// Erasures (DeleteContact, DeleteAccount) as a feed.
pub struct Erasures(pub Arc<dyn Eraser>);

#[tonic::async_trait]
impl PendingFeed for Erasures {
    type Change = lifecycle::PendingErasure;
    const WHAT: &'static str = "erasures";

    async fn list(
        &self,
        client: &mut LifecycleInternalClient,
        service: &'static str,
        page_size: i32,
    ) -> Result<Vec<Self::Change>, Status> {
        // Pending erasures of every tenant: the tenant header is not used.
        let request = lifecycle::ListPendingErasuresRequest {
            service: service.to_owned(),
            page_size,
        };
        Ok(client
            .list_pending_erasures(outgoing("default", service, request))
            .await?
            .into_inner()
            .erasures)
    }

    async fn apply(&self, erasure: &Self::Change) -> anyhow::Result<()> {
        self.0.erase(erasure).await
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
}

/// Polls lifecycle every `interval` for the erasures `service` has not
/// confirmed, erases each with `eraser` and confirms it. Runs until aborted.
pub async fn follow(
    internal: LifecycleInternalClient,
    service: &'static str,
    eraser: Arc<dyn Eraser>,
    interval: Duration,
) {
    follow_feed(internal, service, Arc::new(Erasures(eraser)), interval).await
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
        page_size: i32,
    ) -> Result<Vec<Self::Change>, Status> {
        // Pending changes of every tenant: the tenant header is not used.
        let request = lifecycle::ListPendingContactChangesRequest {
            service: service.to_owned(),
            page_size,
        };
        Ok(client
            .list_pending_contact_changes(outgoing("default", service, request))
            .await?
            .into_inner()
            .changes)
    }

    async fn apply(&self, change: &Self::Change) -> anyhow::Result<()> {
        self.0.apply(change).await
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
