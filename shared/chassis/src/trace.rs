//! One tracing span per RPC of Cascade's services, named and attributed per
//! the OpenTelemetry RPC semantic conventions, joined to the caller's trace
//! through W3C trace context headers; and the RPC duration metric
//! (`rpc.server.call.duration`, seconds, per method and status). Health
//! checks and reflection make no spans and no metrics: probes every few
//! seconds would drown the traces.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use opentelemetry::propagation::Extractor;
use tower::Service;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Tower service wrapping each request in an `rpc` span.
#[derive(Debug, Clone)]
pub struct RpcTrace<S> {
    inner: S,
}

impl<S> RpcTrace<S> {
    /// The layer, for `ServiceBuilder::layer`.
    pub fn layer() -> impl tower::Layer<S, Service = Self> + Clone {
        tower::layer::layer_fn(|inner| Self { inner })
    }
}

impl<S, B, ResBody> Service<Request<B>> for RpcTrace<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !request.uri().path().starts_with("/cascade.") {
            return Box::pin(self.inner.call(request));
        }
        let path = request.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("unknown", "unknown"));
        let span = tracing::info_span!(
            "rpc",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            // Recorded by the request-context layer once the caller is known.
            tenant = tracing::field::Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        // Without an exporter there is no OpenTelemetry layer, and nothing to join.
        let _ = span.set_parent(parent);

        let started = Instant::now();
        let (service, method) = (service.to_owned(), method.to_owned());
        // Inside the span, so the layers below can record on it (the tenant).
        let future = span.in_scope(|| self.inner.call(request));
        let record_span = span.clone();
        Box::pin(
            async move {
                let result = future.await;
                let elapsed = started.elapsed().as_secs_f64();
                let elapsed_ms = elapsed * 1000.0;
                match &result {
                    Ok(response) => {
                        // Unary errors come back trailers-only, with grpc-status in
                        // the headers; a success carries it in the trailers (0).
                        let code = response
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<i32>().ok())
                            .unwrap_or(0);
                        record_span.record("rpc.grpc.status_code", code);
                        record_metrics(&service, &method, code, elapsed);
                        if is_server_fault(code) {
                            record_span.record("otel.status_code", "ERROR");
                            tracing::warn!(code, elapsed_ms, "rpc failed");
                        } else {
                            tracing::debug!(code, elapsed_ms, "rpc finished");
                        }
                    }
                    Err(error) => {
                        record_span.record("otel.status_code", "ERROR");
                        tracing::warn!(%error, elapsed_ms, "rpc transport error");
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}

/// The duration of each RPC (`rpc.server.call.duration`, in seconds, as the
/// current semantic conventions name it; its count is the number of calls).
/// Bound to the global meter provider on first use, which `telemetry::init`
/// sets before any request arrives.
fn rpc_duration() -> &'static Histogram<f64> {
    static DURATION: OnceLock<Histogram<f64>> = OnceLock::new();
    DURATION.get_or_init(|| {
        opentelemetry::global::meter("cascade")
            .f64_histogram("rpc.server.call.duration")
            .with_unit("s")
            .with_description("Duration of RPCs handled")
            .build()
    })
}

fn record_metrics(service: &str, method: &str, code: i32, elapsed_seconds: f64) {
    let attributes = [
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", service.to_owned()),
        KeyValue::new("rpc.method", method.to_owned()),
        KeyValue::new("rpc.grpc.status_code", i64::from(code)),
    ];
    rpc_duration().record(elapsed_seconds, &attributes);
}

/// Codes that mean the server (not the caller) has a problem: UNKNOWN,
/// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
fn is_server_fault(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
