//! Erasures reach scoring and opportunity by pull. Lifecycle records each
//! erasure (DeleteContact, DeleteAccount) in the transaction that erases its
//! own data and keeps it until each service confirms. Every replica of scoring
//! and opportunity polls lifecycle for the erasures its service has not
//! confirmed, erases its part, and confirms. A service that was down erases on
//! its return: nothing is lost, and a repeat is harmless, since erasing is
//! idempotent. Lifecycle needs no client of its peers, and each replica
//! hears of each erasure it polls while it is pending, so it can also forget
//! what it cached of the person.

use std::sync::Arc;
use std::time::Duration;

use cascade_proto::lifecycle::v1 as lifecycle;

use crate::client::{CALL_DEADLINE, LifecycleInternalClient, outgoing, with_deadline};

/// A service's part of erasures.
#[tonic::async_trait]
pub trait Eraser: Send + Sync + 'static {
    /// Erases this service's data of `erasure`; must be idempotent.
    async fn erase(&self, erasure: &lifecycle::PendingErasure) -> anyhow::Result<()>;
}

/// How many pending erasures one poll asks for.
const PAGE: i32 = 100;

/// Polls lifecycle every `interval` for the erasures `service` has not
/// confirmed, erases each with `eraser` and confirms it. Runs until aborted.
pub async fn follow(
    internal: LifecycleInternalClient,
    service: &'static str,
    eraser: Arc<dyn Eraser>,
    interval: Duration,
) {
    loop {
        match poll_once(&internal, service, eraser.as_ref()).await {
            // A full page: there may be more; go on at once.
            Ok(n) if n >= PAGE as usize => continue,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "erasures: will try again"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// One round: how many erasures were pending.
pub async fn poll_once(
    internal: &LifecycleInternalClient,
    service: &'static str,
    eraser: &dyn Eraser,
) -> anyhow::Result<usize> {
    let mut client = internal.clone();
    // Pending erasures of every tenant: the tenant header is not used.
    let request = lifecycle::ListPendingErasuresRequest {
        service: service.to_owned(),
        page_size: PAGE,
    };
    let pending = with_deadline(
        CALL_DEADLINE,
        client.list_pending_erasures(outgoing("default", service, request)),
    )
    .await
    .map_err(|status| anyhow::anyhow!("listing pending erasures: {}", status.message()))?
    .into_inner()
    .erasures;
    for erasure in &pending {
        eraser.erase(erasure).await.map_err(|error| {
            anyhow::anyhow!(
                "erasing {} of tenant {}: {error:#}",
                erasure.erasure_id,
                erasure.tenant_id
            )
        })?;
        let confirm = lifecycle::ConfirmErasureRequest {
            erasure_id: erasure.erasure_id.clone(),
            service: service.to_owned(),
        };
        with_deadline(
            CALL_DEADLINE,
            client.confirm_erasure(outgoing(&erasure.tenant_id, service, confirm)),
        )
        .await
        .map_err(|status| anyhow::anyhow!("confirming an erasure: {}", status.message()))?;
        tracing::info!(
            erasure = %erasure.erasure_id,
            tenant = %erasure.tenant_id,
            contacts = erasure.contact_ids.len(),
            "erased this service's part of an erasure"
        );
    }
    Ok(pending.len())
}
