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
}

impl RequestContextLayer {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequestContextService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B, ResBody> Service<Request<B>> for RequestContextService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        futures::future::Either<S::Future, TaskLocalFuture<TenantId, S::Future>>,
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
