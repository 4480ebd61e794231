//! The folder (PostgreSQL): each replica folds pending groups
//! (`storage::fold`) as soon as one of its own group transactions commits,
//! and every `SWEEP` for groups another replica left (one that stopped
//! before folding them). On SQLite groups fold themselves; no folder runs.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::storage::Repository;

/// How often a replica looks for pending groups it was not woken for.
const SWEEP: Duration = Duration::from_secs(1);

/// Folds until aborted.
pub async fn follow(repository: Repository) {
    let retry = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = retry();
    loop {
        match repository.fold_pending().await {
            Ok(()) => {
                delays = retry();
                tokio::select! {
                    () = repository.fold_wanted() => {}
                    () = tokio::time::sleep(SWEEP) => {}
                }
            }
            Err(error) => {
                let delay = delays.next().unwrap_or(SWEEP);
                tracing::warn!(%error, retry_in_ms = delay.as_millis(), "fold failed: will try again");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
