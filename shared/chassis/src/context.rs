//! Who is calling: the tenant and the actor of a request.
//!
//! This is the one place the tenant is decided. `RequestContextLayer` reads it
//! from request metadata before any handler runs (`context_layer`) and stores
//! a [`RequestContext`] in the request's extensions; handlers only ever read
//! that. In `jwt` mode the `auth::Authenticator` takes the tenant and actor
//! from a verified token instead, and checks the caller's roles.

use std::fmt;
use std::time::{Duration, Instant};

use crate::error::ServiceError;

/// Metadata key naming the tenant while authentication is disabled.
pub const TENANT_HEADER: &str = "x-tenant-id";
/// Metadata key naming the person or system acting, recorded in histories.
pub const ACTOR_HEADER: &str = "x-actor-id";
/// Tenant used when a request names none.
pub const DEFAULT_TENANT: &str = "default";

const MAX_TENANT_LEN: usize = 64;
const MAX_ACTOR_LEN: usize = 200;

/// A validated tenant id: 1 to 64 characters of `[a-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(value: &str) -> Result<Self, ServiceError> {
        let valid = !value.is_empty()
            && value.len() <= MAX_TENANT_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(ServiceError::invalid(
                TENANT_HEADER,
                "must be 1 to 64 characters of a-z, 0-9, '-' or '_'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

tokio::task_local! {
    /// The tenant of the request being served on this task.
    static SERVING_TENANT: TenantId;
}

/// Runs `future` (a request's handling) as serving `tenant`: the context
/// layer does, so that an error can name the tenant it looked in.
pub fn serving<F: std::future::Future>(
    tenant: TenantId,
    future: F,
) -> tokio::task::futures::TaskLocalFuture<TenantId, F> {
    SERVING_TENANT.scope(tenant, future)
}

/// The tenant of the request being served on this task, if any: a
/// NOT_FOUND names it, since a caller that forgot its tenant (the
/// `x-tenant-id` header, or a token for another tenant) otherwise reads
/// "not found" as "does not exist". It is the caller's own tenant. A
/// spawned task does not inherit it: an error a stream's producer task
/// converts (WatchAccountEvents, a simulation's progress) names no tenant.
pub fn serving_tenant() -> Option<TenantId> {
    SERVING_TENANT.try_with(Clone::clone).ok()
}

/// The actor of a request whose caller names none.
pub const ANONYMOUS: &str = "anonymous";

/// The tenant and actor of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub tenant: TenantId,
    /// Recorded as the actor of changes; `anonymous` when the caller names none.
    pub actor: String,
    /// When the caller stops waiting (its `grpc-timeout`), if it said.
    pub deadline: Option<Instant>,
    /// Whether the caller holds the admin role (with authentication
    /// disabled, every caller does): what only admins may read.
    pub admin: bool,
}

impl RequestContext {
    /// The context the layer attached to a request. Its absence is a wiring
    /// bug (the layer is missing), reported as INTERNAL rather than guessed.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, ServiceError> {
        request
            .extensions()
            .get::<RequestContext>()
            .cloned()
            .ok_or_else(|| ServiceError::internal(anyhow::anyhow!("request context missing")))
    }

    /// The actor to relay to another service later (an outbox message):
    /// empty when the caller named none, or when the name could not travel
    /// as `x-actor-id` (a token subject longer than 200 characters, or not
    /// ASCII), so the relaying service is recorded instead.
    pub fn named_actor(&self) -> &str {
        if self.actor == ANONYMOUS {
            ""
        } else {
            relayable_actor(&self.actor).unwrap_or("")
        }
    }

    /// Reads the development-mode context from HTTP headers.
    pub fn from_headers(headers: &http::HeaderMap) -> Result<Self, ServiceError> {
        let tenant = tenant_header(headers)?.unwrap_or_else(|| TenantId(DEFAULT_TENANT.to_owned()));
        let actor = actor_header(headers)?.unwrap_or_else(|| ANONYMOUS.to_owned());
        Ok(Self {
            tenant,
            actor,
            deadline: deadline_header(headers),
            admin: true,
        })
    }

    /// How long a call to another service made for this request may take:
    /// `limit`, or less when the caller's own deadline is nearer.
    pub fn call_budget(&self, limit: Duration) -> Duration {
        self.deadline.map_or(limit, |deadline| {
            limit.min(deadline.saturating_duration_since(Instant::now()))
        })
    }
}

/// The header's one value, if sent. Sent twice, which one was meant? Taking
/// the first would act for a tenant the caller may not have meant.
fn single<'a>(
    headers: &'a http::HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, ServiceError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ServiceError::invalid(name, "must be sent once"));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| ServiceError::invalid(name, "must be printable ASCII"))
}

/// The tenant the `x-tenant-id` header names, if sent.
pub(crate) fn tenant_header(headers: &http::HeaderMap) -> Result<Option<TenantId>, ServiceError> {
    single(headers, TENANT_HEADER)?
        .map(TenantId::parse)
        .transpose()
}

/// `actor` as another service's `x-actor-id` accepts it (1 to 200
/// printable ASCII characters, trimmed), or `None`: a relay must never be
/// refused for a name the caller's token carried (a JWT subject may be 255
/// characters), since a refused outbox message is dropped.
pub fn relayable_actor(actor: &str) -> Option<&str> {
    let actor = actor.trim();
    (!actor.is_empty()
        && actor.len() <= MAX_ACTOR_LEN
        && actor.bytes().all(|b| (0x20..0x7f).contains(&b)))
    .then_some(actor)
}

/// The actor the `x-actor-id` header names, if sent.
pub(crate) fn actor_header(headers: &http::HeaderMap) -> Result<Option<String>, ServiceError> {
    let Some(actor) = single(headers, ACTOR_HEADER)? else {
        return Ok(None);
    };
    let actor = actor.trim();
    if actor.is_empty() || actor.len() > MAX_ACTOR_LEN {
        return Err(ServiceError::invalid(
            ACTOR_HEADER,
            "must be 1 to 200 characters",
        ));
    }
    Ok(Some(actor.to_owned()))
}

/// When the caller stops waiting, from its `grpc-timeout`.
pub(crate) fn deadline_header(headers: &http::HeaderMap) -> Option<Instant> {
    headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map(|timeout| Instant::now() + timeout)
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n).
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the callee's `x-actor-id` would refuse is not relayed: the
    /// relaying service is recorded instead of the call (or an outbox
    /// message) being refused.
    #[test]
    fn only_a_name_the_callee_accepts_is_relayed() {
        assert_eq!(relayable_actor(" jane@acme.test "), Some("jane@acme.test"));
        assert_eq!(relayable_actor(&"x".repeat(200)).map(str::len), Some(200));
        for refused in ["", "   ", &"x".repeat(201), "jöran@acme.test", "a\tb"] {
            assert_eq!(relayable_actor(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn tenant_defaults_and_validates() {
        let headers = http::HeaderMap::new();
        let context = RequestContext::from_headers(&headers).expect("default");
        assert_eq!(context.tenant.as_str(), DEFAULT_TENANT);
        assert_eq!(context.actor, "anonymous");

        let mut headers = http::HeaderMap::new();
        headers.insert(TENANT_HEADER, "acme-eu".parse().expect("header"));
        headers.insert(ACTOR_HEADER, "jane@acme.test".parse().expect("header"));
        let context = RequestContext::from_headers(&headers).expect("valid");
        assert_eq!(context.tenant.as_str(), "acme-eu");
        assert_eq!(context.actor, "jane@acme.test");

        for bad in ["", "Acme", "a b", "x/../y", &"a".repeat(65)] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_tenant_or_actor_sent_twice_is_refused() {
        for name in [TENANT_HEADER, ACTOR_HEADER] {
            let mut headers = http::HeaderMap::new();
            headers.append(name, "acme-eu".parse().expect("header"));
            headers.append(name, "acme-us".parse().expect("header"));
            match RequestContext::from_headers(&headers) {
                Err(ServiceError::InvalidArgument(v)) => {
                    assert_eq!(
                        (v[0].field.as_str(), v[0].description.as_str()),
                        (name, "must be sent once")
                    );
                }
                other => panic!("{name} twice: {other:?}"),
            }
        }
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "123456789S", "10x", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", "100m".parse().expect("header"));
        let context = RequestContext::from_headers(&headers).expect("context");
        assert!(context.call_budget(Duration::from_secs(5)) <= Duration::from_millis(100));
        let none = RequestContext::from_headers(&http::HeaderMap::new()).expect("context");
        assert_eq!(
            none.call_budget(Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }
}
