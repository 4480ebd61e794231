//! The decay refresh: every `decay.refresh_interval_ms`, each replica brings
//! the stored scores of tenants whose model decays up to the day and
//! delivers the ones that fell to lifecycle
//! (`Repository::refresh_decayed_scores`), so an account that goes dark is
//! seen to cool down (lifecycle's at-risk rule) without any new activity.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::storage::{Repository, today};

/// Where the API asks for a tenant's stored scores to be recomputed and
/// delivered now (after its model changed).
pub type Rescore = mpsc::UnboundedSender<String>;

/// Recomputes each tenant's stale scores when asked, one tenant at a time,
/// and delivers those that moved. Runs until the service stops (a replica
/// stopping meanwhile leaves them to the next batch or refresh).
pub async fn rescore_when_asked(
    repository: Repository,
    mut asked: mpsc::UnboundedReceiver<String>,
) {
    while let Some(tenant) = asked.recv().await {
        match repository.refresh_stale_scores(&tenant, today()).await {
            Ok(done) => tracing::info!(
                %tenant,
                accounts = done.accounts,
                delivered = done.delivered,
                "scores recomputed after a model change"
            ),
            Err(error) => tracing::warn!(
                %tenant,
                %error,
                "rescoring after a model change left to the next batch or refresh"
            ),
        }
    }
}

/// Refreshes now and then every `interval`. Runs until aborted.
pub async fn follow(repository: Repository, interval: Duration) {
    loop {
        match repository.refresh_decayed_scores(today()).await {
            Ok(done) if done.accounts > 0 => tracing::info!(
                accounts = done.accounts,
                delivered = done.delivered,
                "decayed scores brought up to the day"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "decay refresh: will try again"),
        }
        tokio::time::sleep(interval).await;
    }
}
