//! Who is calling: the tenant and the actor of a request.
//!
//! This is the one place the tenant is decided. `RequestContextLayer` reads it
//! from request metadata before any handler runs and stores a
//! [`RequestContext`] in the request's extensions; handlers only ever read that.
//! Authentication replaces this layer with one that takes the tenant from a
//! verified token.

use std::fmt;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

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

/// The tenant and actor of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub tenant: TenantId,
    /// Recorded as the actor of changes; `anonymous` when the caller names none.
    pub actor: String,
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

    /// Reads the development-mode context from HTTP headers.
    pub fn from_headers(headers: &http::HeaderMap) -> Result<Self, ServiceError> {
        let tenant =
            match headers.get(TENANT_HEADER) {
                None => TenantId(DEFAULT_TENANT.to_owned()),
                Some(value) => TenantId::parse(value.to_str().map_err(|_| {
                    ServiceError::invalid(TENANT_HEADER, "must be printable ASCII")
                })?)?,
            };
        let actor = match headers.get(ACTOR_HEADER) {
            None => "anonymous".to_owned(),
            Some(value) => {
                let actor = value
                    .to_str()
                    .map_err(|_| ServiceError::invalid(ACTOR_HEADER, "must be printable ASCII"))?
                    .trim();
                if actor.is_empty() || actor.len() > MAX_ACTOR_LEN {
                    return Err(ServiceError::invalid(
                        ACTOR_HEADER,
                        "must be 1 to 200 characters",
                    ));
                }
                actor.to_owned()
            }
        };
        Ok(Self { tenant, actor })
    }
}

/// Tower layer that attaches a [`RequestContext`] to every request, or answers
/// INVALID_ARGUMENT when the metadata is malformed.
#[derive(Debug, Clone, Default)]
pub struct RequestContextLayer;

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestContextService<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for RequestContextService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<S::Future, std::future::Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // Health and reflection are tenant-free; let them through untouched.
        if !request.uri().path().starts_with("/cascade.") {
            return futures::future::Either::Left(self.inner.call(request));
        }
        match RequestContext::from_headers(request.headers()) {
            Ok(context) => {
                request.extensions_mut().insert(context);
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(error) => {
                let response = tonic::Status::from(error).into_http::<ResBody>();
                futures::future::Either::Right(std::future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
