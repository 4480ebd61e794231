//! Per-tenant rate limits (GCRA, from the `governor` crate): one tenant's
//! firehose cannot take the capacity every other tenant shares. And a bound
//! on the events a replica holds in flight, whoever sends them.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Bounds the events one replica holds in flight: activities decoded and
/// admitted, not yet answered, or scoring's replays. Past the bound a unary
/// call is refused at once with UNAVAILABLE (OVERLOADED) rather than waiting
/// with its batch in memory (or a pooled connection), so a flood from many
/// callers at once cannot grow the process without limit; the per-tenant
/// rate limit cannot, since it allows every tenant its own rate.
#[derive(Debug, Clone)]
pub struct InFlightLimit {
    permits: Option<Arc<Semaphore>>,
    limit: u32,
    what: &'static str,
    setting: &'static str,
}

impl InFlightLimit {
    /// At most `limit` events at once; 0 turns the bound off. `what` names
    /// the events and `setting` the bound in errors.
    pub fn new(limit: u32, what: &'static str, setting: &'static str) -> Self {
        let permits = (limit > 0).then(|| Arc::new(Semaphore::new(limit as usize)));
        Self {
            permits,
            limit,
            what,
            setting,
        }
    }

    /// Admits `events` until the permit is dropped, or OVERLOADED now.
    pub fn admit(&self, events: usize) -> Result<Option<OwnedSemaphorePermit>, ServiceError> {
        let Some(permits) = &self.permits else {
            return Ok(None);
        };
        let n = u32::try_from(events).unwrap_or(u32::MAX);
        permits
            .clone()
            .try_acquire_many_owned(n)
            .map(Some)
            .map_err(|_| {
                ServiceError::Overloaded(format!(
                    "this replica is at its bound of {} {} in flight ({}); retry with backoff",
                    self.limit, self.what, self.setting
                ))
            })
    }

    /// Waits until `events` are admitted: a stream is slowed down, not
    /// failed (the request timeout still bounds it).
    pub async fn wait(&self, events: usize) -> Option<OwnedSemaphorePermit> {
        let permits = self.permits.as_ref()?;
        let n = u32::try_from(events).unwrap_or(u32::MAX);
        // The semaphore is never closed.
        permits.clone().acquire_many_owned(n).await.ok()
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

    #[tokio::test]
    async fn in_flight_events_are_bounded_until_released() {
        let limit = InFlightLimit::new(1_000, "activities", "server.ingest_in_flight");
        let held = limit.admit(600).expect("admitted");
        let error = limit.admit(500).expect_err("over the bound");
        assert_eq!(error.code(), tonic::Code::Unavailable);
        assert!(matches!(error, ServiceError::Overloaded(_)), "{error:?}");
        assert!(
            error.to_string().contains("server.ingest_in_flight"),
            "{error}"
        );
        let _more = limit.admit(400).expect("what is left is admitted");
        drop(held);
        let _again = limit.admit(500).expect("released on drop");
        let waiting = limit.wait(600);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), waiting)
                .await
                .is_err(),
            "a stream waits while the bound is held"
        );
        assert!(
            InFlightLimit::new(0, "x", "x")
                .admit(1_000_000)
                .expect("0 is off")
                .is_none()
        );
    }
}

/// The bound on requests a server handles at once (`server.concurrency_limit`),
/// across all connections; more wait for a place. Health checks never wait:
/// the kubelet's probes time out in a second, and a liveness probe stuck
/// behind calls waiting on a slow database would restart a pod that is only
/// busy (docs/kubernetes.md: liveness never follows the database).
#[derive(Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    places: Arc<Semaphore>,
}

impl<S> ConcurrencyLimit<S> {
    /// The layer, for `ServiceBuilder::layer`: one bound shared by every
    /// connection's copy of the service.
    pub fn layer(limit: usize) -> impl tower::Layer<S, Service = Self> + Clone {
        let places = Arc::new(Semaphore::new(limit));
        tower::layer::layer_fn(move |inner| Self {
            inner,
            places: places.clone(),
        })
    }
}

/// gRPC health checks (`grpc.health.v1.Health`), which never wait for a place.
fn is_health_check(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
}

impl<S, B> tower::Service<http::Request<B>> for ConcurrencyLimit<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The service polled ready is the one called, after the wait.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let places = (!is_health_check(request.uri().path())).then(|| self.places.clone());
        Box::pin(async move {
            // Held until the response (its headers) is ready, as tower's
            // limit does; the semaphore is never closed.
            let _place = match places {
                Some(places) => places.acquire_owned().await.ok(),
                None => None,
            };
            inner.call(request).await
        })
    }
}
