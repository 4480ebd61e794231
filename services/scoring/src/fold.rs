//! The folder: each replica folds pending groups
//! (`storage::fold`) once one of its own group transactions commits and
//! the folder has rested after its last fold (`rest_after`), and every
//! `SWEEP` for groups another replica left (one that stopped before folding
//! them). On SQLite too: there the one writer takes a fold between groups.

use std::time::Duration;

use crate::storage::Repository;

/// How often a replica looks for pending groups it was not woken for.
const SWEEP: Duration = Duration::from_secs(1);

/// After folding, the folder rests this many times as long as the fold
/// held the writer (or as folds usually hold it, if less: `UsualHold`), at
/// most `fold.max_rest_ms`: under load the next fold then takes in many
/// groups, so a hot contact's buckets and scores, each account's score and
/// its delivery to lifecycle are written once for all of them, and under a
/// steady load folds hold the writer about a third of the time at most. At a few
/// groups a second a fold takes milliseconds and so does the rest. The wait
/// for the writer does not count: on SQLite a fold of two groups that
/// waited 150 ms behind ingest rested 0.3 s more and held every score
/// behind it (round 30). Reads do not wait for it: a score read folds what
/// its tenant has pending first. Measured in docs/performance.md, rounds
/// 15, 16 and 30.
const REST_FACTOR: u32 = 2;

/// A fold that took this long is logged at info, with the rest after it.
const SLOW_FOLD: Duration = Duration::from_millis(200);

/// How long the folder rests after a fold that held the writer for `held`.
fn rest_after(held: Duration, max_rest: Duration) -> Duration {
    (held * REST_FACTOR).min(max_rest)
}

/// How long folds usually hold the writer: a moving average in which each
/// fold weighs a fifth. A rest goes by the lower of the last fold's hold and
/// the usual one before it, so that one fold slowed by something else (on
/// SQLite, the WAL checkpointer copying beside it every 2 s) does not rest
/// twice as long as it was slowed and hold every score behind it: a fold of
/// one group that held the writer 56 ms among folds of 1-2 ms rested 113 ms
/// more, and a crossing waited 141 ms for lifecycle's decision (round 32).
/// Under a steady load the two agree; when load rises the rest follows it,
/// half the way in three folds and nine tenths in ten, and meanwhile folds
/// hold the writer more than a third of the time.
#[derive(Debug, Default)]
struct UsualHold(Option<Duration>);

impl UsualHold {
    /// Takes a fold's hold into the average and returns what its rest goes by.
    fn after(&mut self, held: Duration) -> Duration {
        let usual = self.0.unwrap_or(held);
        self.0 = Some((usual * 4 + held) / 5);
        held.min(usual)
    }
}

/// A rest is for groups still arriving: when none commits for this long,
/// ingest has paused, and the folder folds what came instead of resting
/// on. So the last groups of a burst are folded (and delivered) right
/// after it rather than up to `fold.max_rest_ms` later, and score reads
/// then find nothing pending to fold first. Under load groups commit every
/// few tens of milliseconds.
const IDLE_GAP: Duration = Duration::from_millis(50);

/// Rests for `rest`, or until no group committed (`group_committed`
/// resolved) for `gap`, whichever is first.
async fn rest_while_groups_come<F>(
    rest: Duration,
    gap: Duration,
    mut group_committed: impl FnMut() -> F,
) where
    F: std::future::Future<Output = ()>,
{
    let until = tokio::time::Instant::now() + rest;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero()
            || tokio::time::timeout(left.min(gap), group_committed())
                .await
                .is_err()
        {
            return;
        }
    }
}

/// Folds until aborted, resting at most `max_rest` between folds.
pub async fn follow(repository: Repository, max_rest: Duration) {
    let retry =
        || cascade_chassis::retry::delays(Duration::from_millis(50), Duration::from_secs(5));
    let mut delays = retry();
    let mut usual = UsualHold::default();
    loop {
        let started = std::time::Instant::now();
        match repository.fold_pending().await {
            Ok(folded) => {
                delays = retry();
                // Every fold, a sweep's empty one too, so the gauge falls
                // back to 0 once an operator repairs or deletes the rows.
                cascade_chassis::metrics::instruments()
                    .unreadable_pending_folds(folded.unreadable as u64);
                if folded.groups > 0 {
                    let took = started.elapsed();
                    let rest = rest_after(usual.after(folded.held), max_rest);
                    // A long fold and the rest after it delay every score
                    // it did not take in (docs/performance.md, round 29).
                    // Every fold at debug: a crossing that stalls in scoring
                    // can be lined up with the folds around it (round 32).
                    macro_rules! fold_line {
                        ($level:expr, $message:literal) => {
                            tracing::event!(
                                $level,
                                took_ms = took.as_millis() as u64,
                                held_ms = folded.held.as_millis() as u64,
                                rest_ms = rest.as_millis() as u64,
                                groups = folded.groups,
                                $message
                            )
                        };
                    }
                    if took >= SLOW_FOLD {
                        fold_line!(tracing::Level::INFO, "a long fold");
                    } else {
                        fold_line!(tracing::Level::DEBUG, "a fold");
                    }
                    rest_while_groups_come(rest, IDLE_GAP, || repository.fold_wanted()).await;
                    // Whatever committed during the rest (its wake-ups were
                    // taken by the rest).
                    continue;
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
    fn the_folder_rests_twice_as_long_as_it_held_the_writer_up_to_a_bound() {
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

    #[test]
    fn one_slow_fold_rests_by_the_usual_hold() {
        let ms = Duration::from_millis;
        let mut usual = UsualHold::default();
        // The first fold has nothing to go by but itself.
        assert_eq!(usual.after(ms(2)), ms(2));
        for _ in 0..10 {
            assert_eq!(usual.after(ms(2)), ms(2));
        }
        // A fold slowed to 56 ms rests as a 2 ms one would.
        assert_eq!(usual.after(ms(56)), ms(2));
        // It moves the average by a fifth of the difference, no more.
        assert_eq!(usual.after(ms(100)), ms(12) + ms(4) / 5);
        // A load that rose stays: within a few folds the rest follows it.
        let mut rest = Duration::ZERO;
        for _ in 0..20 {
            rest = usual.after(ms(100));
        }
        assert!(rest > ms(98) && rest <= ms(100), "{rest:?}");
        // A quicker fold rests by its own hold.
        assert_eq!(usual.after(ms(3)), ms(3));
    }

    #[tokio::test]
    async fn the_rest_ends_when_groups_stop_coming() {
        use std::sync::Arc;
        use std::time::Instant;
        use tokio::sync::Notify;
        let (long, gap) = (Duration::from_secs(30), Duration::from_millis(200));

        // No group at all: one gap, not the whole rest.
        let groups = Arc::new(Notify::new());
        let started = Instant::now();
        rest_while_groups_come(long, gap, || groups.notified()).await;
        let took = started.elapsed();
        assert!(took >= gap && took < Duration::from_secs(10), "{took:?}");

        // Groups every 10 ms for 600 ms: the rest lasts through them.
        let sender = groups.clone();
        let feeding = tokio::spawn(async move {
            for _ in 0..60 {
                sender.notify_one();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let started = Instant::now();
        rest_while_groups_come(long, gap, || groups.notified()).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_secs(10),
            "{took:?}"
        );
        feeding.await.expect("feeding");

        // Groups that keep coming: the rest still ends at its bound.
        let sender = groups.clone();
        let feeding = tokio::spawn(async move {
            loop {
                sender.notify_one();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let bound = Duration::from_millis(700);
        let started = Instant::now();
        rest_while_groups_come(bound, gap, || groups.notified()).await;
        let took = started.elapsed();
        feeding.abort();
        assert!(took >= bound && took < Duration::from_secs(10), "{took:?}");
    }
}
