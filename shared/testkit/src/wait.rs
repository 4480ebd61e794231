//! The one way a test waits for something asynchronous (a delivery, a stage
//! move, a process becoming healthy): poll, bounded, and fail with what was
//! last seen. No test sleeps a fixed time hoping the work is done.

use std::fmt::Debug;
use std::time::Duration;

/// How long [`eventually`] waits before failing the test: long enough for a
/// loaded CI machine, short enough that a hang is reported, not timed out.
pub const WAIT_LIMIT: Duration = Duration::from_secs(15);

/// Polls `probe` until it answers `Ok`, first every 5 ms then backing off
/// to 100 ms; panics after [`WAIT_LIMIT`] naming `what` and the last `Err`
/// (the state the test saw instead).
pub async fn eventually<T, E: Debug>(what: &str, probe: impl AsyncFnMut() -> Result<T, E>) -> T {
    eventually_within(WAIT_LIMIT, what, probe).await
}

/// [`eventually`] with another limit.
pub async fn eventually_within<T, E: Debug>(
    limit: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("waited {limit:?} for {what}; last seen: {last:?}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Waits until the clock has passed the current millisecond, so the next
/// change gets a later timestamp than the last (histories order by time).
pub async fn next_millisecond() {
    let mark = cascade_chassis::time::now();
    eventually("the clock to pass the last millisecond", async || {
        let now = cascade_chassis::time::now();
        if now > mark { Ok(()) } else { Err(now) }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_ok() {
        let mut calls = 0;
        let value = eventually("the third call", async || {
            calls += 1;
            if calls == 3 { Ok(calls) } else { Err(calls) }
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "last seen: \"not yet\"")]
    async fn fails_with_what_it_last_saw() {
        eventually_within(Duration::from_millis(30), "never", async || {
            Err::<(), _>("not yet")
        })
        .await;
    }
}
