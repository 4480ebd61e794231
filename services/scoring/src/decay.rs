//! The decay refresh: every `decay.refresh_interval_ms`, each replica brings
//! the stored scores of tenants whose model decays up to the day and
//! delivers the ones that fell to lifecycle
//! (`Repository::refresh_decayed_scores`), so an account that goes dark is
//! seen to cool down (lifecycle's at-risk rule) without any new activity.

use std::time::Duration;

use crate::storage::{Repository, today};

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
