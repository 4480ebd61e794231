//! Delays between attempts at work that must succeed in the end (an outbox
//! delivery, a fold, a listening connection): exponential from `min` to
//! `max`, with jitter, with no limit on attempts.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The delays, in order; the iterator never ends.
pub fn delays(min: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}
