//! Per-tenant rate limits (GCRA, from the `governor` crate): one tenant's
//! firehose cannot take the capacity every other tenant shares.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::context::TenantId;
use crate::error::ServiceError;

/// Admits up to `per_second` events a second per tenant, with bursts of up
/// to `burst`; beyond that, RESOURCE_EXHAUSTED with RetryInfo saying when.
pub struct TenantRateLimiter {
    limiter: Option<DefaultKeyedRateLimiter<TenantId>>,
    what: &'static str,
}

impl std::fmt::Debug for TenantRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantRateLimiter")
            .field("enabled", &self.limiter.is_some())
            .field("what", &self.what)
            .finish()
    }
}

impl TenantRateLimiter {
    /// `per_second` 0 turns the limit off. `what` names the events in errors.
    pub fn new(per_second: u32, burst: u32, what: &'static str) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self { limiter, what }
    }

    /// Takes `events` from the tenant's allowance, or says how long to wait.
    pub fn check(&self, tenant: &TenantId, events: usize) -> Result<(), ServiceError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let Some(n) = u32::try_from(events).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match limiter.check_key_n(tenant, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                // Round up so a client that sleeps exactly this long succeeds.
                let wait = Duration::from_millis(
                    u64::try_from(wait.as_millis())
                        .unwrap_or(u64::MAX)
                        .saturating_add(1),
                );
                Err(ServiceError::ResourceExhausted {
                    message: format!(
                        "tenant {tenant} is over its {} rate limit; retry in {} ms",
                        self.what,
                        wait.as_millis()
                    ),
                    retry_after: Some(wait),
                })
            }
            Err(_) => Err(ServiceError::ResourceExhausted {
                message: format!(
                    "{events} {} at once exceed the tenant's burst limit; send smaller batches",
                    self.what
                ),
                retry_after: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_have_separate_allowances() {
        let limiter = TenantRateLimiter::new(10, 20, "activities");
        let a = TenantId::parse("a").expect("tenant");
        let b = TenantId::parse("b").expect("tenant");
        limiter.check(&a, 20).expect("burst allowed");
        let error = limiter.check(&a, 5).expect_err("over the limit");
        assert_eq!(error.code(), tonic::Code::ResourceExhausted);
        let ServiceError::ResourceExhausted { retry_after, .. } = error else {
            panic!("not resource exhausted");
        };
        let wait = retry_after.expect("retry info");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(501),
            "{wait:?}"
        );
        limiter
            .check(&b, 20)
            .expect("another tenant is not limited by a");
        assert!(
            limiter.check(&b, 21).is_err(),
            "more than the burst at once"
        );
        TenantRateLimiter::new(0, 0, "x")
            .check(&a, 1_000_000)
            .expect("0 disables the limit");
    }
}
