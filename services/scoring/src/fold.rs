//! The folder (PostgreSQL): each replica folds pending groups
//! (`storage::fold`) once one of its own group transactions commits and
//! the folder has rested after its last fold (`rest_after`), and every
//! `SWEEP` for groups another replica left (one that stopped before folding
//! them). On SQLite groups fold themselves; no folder runs.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::storage::Repository;

/// How often a replica looks for pending groups it was not woken for.
const SWEEP: Duration = Duration::from_secs(1);

/// After folding, the folder rests this many times as long as the fold
/// took, at most `fold.max_rest_ms`: under load the next fold then takes in
/// many groups, so a hot contact's buckets and scores, each account's score
/// and its delivery to lifecycle are written once for all of them. At a few
/// groups a second a fold takes milliseconds and so does the rest. Reads
/// do not wait for it: a score read folds what its tenant has pending
/// first. Measured in docs/performance.md, rounds 15 and 16.
const REST_FACTOR: u32 = 2;

/// How long the folder rests after a fold that took `took`.
fn rest_after(took: Duration, max_rest: Duration) -> Duration {
    (took * REST_FACTOR).min(max_rest)
}

/// Folds until aborted, resting at most `max_rest` between folds.
pub async fn follow(repository: Repository, max_rest: Duration) {
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
        let started = std::time::Instant::now();
        match repository.fold_pending().await {
            Ok(folded) => {
                delays = retry();
                if folded > 0 {
                    tokio::time::sleep(rest_after(started.elapsed(), max_rest)).await;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_rests_twice_as_long_as_it_folded_up_to_a_bound() {
        let max = Duration::from_millis(200);
        assert_eq!(rest_after(Duration::ZERO, max), Duration::ZERO);
        assert_eq!(
            rest_after(Duration::from_millis(4), max),
            Duration::from_millis(8)
        );
        assert_eq!(
            rest_after(Duration::from_millis(99), max),
            Duration::from_millis(198)
        );
        assert_eq!(rest_after(Duration::from_millis(140), max), max);
        assert_eq!(rest_after(Duration::from_secs(5), max), max);
        assert_eq!(
            rest_after(Duration::from_millis(140), Duration::ZERO),
            Duration::ZERO
        );
    }
}
