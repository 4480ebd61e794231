//! The tower layer that decides who is calling before any handler runs: it
//! asks the [`Authenticator`] and stores the [`RequestContext`] in the
//! request's extensions, or answers the refusal itself.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use http::{Request, Response};
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

use crate::auth::Authenticator;
#[cfg(doc)]
use crate::context::RequestContext;
use crate::context::{TenantId, serving};

/// Tower layer that attaches a [`RequestContext`] to every Cascade RPC, or
/// answers INVALID_ARGUMENT (malformed metadata), UNAUTHENTICATED or
/// PERMISSION_DENIED before any handler runs.
#[derive(Debug, Clone)]
pub struct RequestContextLayer {
    auth: Arc<Authenticator>,
    served: Arc<[&'static str]>,
}

impl RequestContextLayer {
    /// `served`: the Cascade services on this port (fully-qualified names).
    pub fn new(auth: Arc<Authenticator>, served: Vec<&'static str>) -> Self {
        Self {
            auth,
            served: served.into(),
        }
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService {
            inner,
            auth: self.auth.clone(),
            served: self.served.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequestContextService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    served: Arc<[&'static str]>,
}

impl<S, B, ResBody> Service<Request<B>> for RequestContextService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<
        Either<S::Future, TaskLocalFuture<TenantId, S::Future>>,
        std::future::Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // Health and reflection are tenant-free; let them through untouched.
        if !request.uri().path().starts_with("/cascade.") {
            return Either::Left(Either::Left(self.inner.call(request)));
        }
        if let Some(elsewhere) = not_served(request.uri().path(), &self.served) {
            let response = elsewhere.into_http::<ResBody>();
            return Either::Right(std::future::ready(Ok(response)));
        }
        match self
            .auth
            .authenticate(request.uri().path(), request.headers())
        {
            Ok(context) => {
                // The rpc span (entered by the trace layer) carries the tenant
                // into traces and JSON logs.
                tracing::Span::current().record("tenant", context.tenant.as_str());
                let tenant = context.tenant.clone();
                request.extensions_mut().insert(context);
                Either::Left(Either::Right(serving(tenant, self.inner.call(request))))
            }
            Err(error) => {
                let response = tonic::Status::from(error).into_http::<ResBody>();
                Either::Right(std::future::ready(Ok(response)))
            }
        }
    }
}

/// UNIMPLEMENTED naming the service a call asked for and those this port
/// serves, for a call to a Cascade service that is not here (tonic's own
/// answer has no message): most often the right call on another service's
/// port.
fn not_served(path: &str, served: &[&str]) -> Option<tonic::Status> {
    let service = path.trim_start_matches('/').split('/').next()?;
    if served.is_empty() || served.contains(&service) {
        return None;
    }
    Some(tonic::Status::unimplemented(format!(
        "{} is not served on this port, which serves {}; each Cascade service \
         listens on its own port (make run: lifecycle 50051, scoring 50052, opportunity 50053)",
        crate::error::bounded(service),
        served.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::not_served;

    #[test]
    fn a_call_to_a_service_elsewhere_is_told_what_is_here() {
        let served = ["cascade.scoring.v1.ScoringService"];
        let elsewhere = not_served("/cascade.lifecycle.v1.LifecycleService/GetAccount", &served)
            .expect("not served here");
        assert_eq!(elsewhere.code(), tonic::Code::Unimplemented);
        assert!(
            elsewhere.message().starts_with(
                "cascade.lifecycle.v1.LifecycleService is not served on this port, which serves cascade.scoring.v1.ScoringService;"
            ),
            "{elsewhere:?}"
        );
        assert!(
            not_served(
                "/cascade.scoring.v1.ScoringService/GetAccountScore",
                &served
            )
            .is_none()
        );
    }
}
