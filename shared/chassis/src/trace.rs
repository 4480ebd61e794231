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
use tonic_types::StatusExt as _;
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
    ResBody: http_body::Body + Unpin + Send + 'static,
{
    type Response = Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !request.uri().path().starts_with("/cascade.") {
            let future = self.inner.call(request);
            return Box::pin(async move {
                Ok(future.await?.map(|inner| TracedBody { inner, end: None }))
            });
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
                match future.await {
                    Ok(response) => {
                        // An error is answered trailers-only, with grpc-status in
                        // the headers; otherwise the status comes in the trailers
                        // at the end of the body, after every streamed message:
                        // the call ends there, and is recorded there.
                        let in_headers = grpc_status(response.headers());
                        let end = CallEnd {
                            span: record_span,
                            service,
                            method,
                            started,
                            code: in_headers,
                            fault: in_headers.and_then(|code| fault(code, response.headers())),
                        };
                        Ok(response.map(|inner| TracedBody {
                            inner,
                            end: Some(end),
                        }))
                    }
                    Err(error) => {
                        record_span.record("otel.status_code", "ERROR");
                        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
                        tracing::warn!(%error, elapsed_ms, "rpc transport error");
                        Err(error)
                    }
                }
            }
            .instrument(span),
        )
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
}

/// The message and ErrorInfo reason of a status that is our fault, for its
/// log line: UNAVAILABLE alone does not tell an operator a dependency down
/// (DEPENDENCY_UNAVAILABLE) from this replica at its bound (OVERLOADED).
fn fault(code: i32, headers: &HeaderMap) -> Option<Fault> {
    if !is_server_fault(code) {
        return None;
    }
    let status = tonic::Status::from_header_map(headers)?;
    let reason = status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default();
    Some(Fault {
        reason,
        message: status.message().to_owned(),
    })
}

struct Fault {
    reason: String,
    message: String,
}

/// What is known of a call until its body ends.
struct CallEnd {
    span: tracing::Span,
    service: String,
    method: String,
    started: Instant,
    /// The status, once seen (headers of a trailers-only answer, or trailers).
    code: Option<i32>,
    /// The status's message and reason, when it is a fault of ours.
    fault: Option<Fault>,
}

impl CallEnd {
    /// Records the call's status and duration on its span and metric.
    fn finish(self, code: i32) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let elapsed_ms = elapsed * 1000.0;
        self.span.record("rpc.grpc.status_code", code);
        record_metrics(&self.service, &self.method, code, elapsed);
        let _entered = self.span.enter();
        if is_server_fault(code) {
            self.span.record("otel.status_code", "ERROR");
            let (reason, message) = self
                .fault
                .as_ref()
                .map_or(("", ""), |f| (f.reason.as_str(), f.message.as_str()));
            tracing::warn!(code, reason, message, elapsed_ms, "rpc failed");
        } else {
            tracing::debug!(code, elapsed_ms, "rpc finished");
        }
    }
}

/// A response body that records its call when it ends: the status in its
/// trailers, and the duration to the last streamed message. A body dropped
/// before its end is a call the client gave up on (CANCELLED).
pub struct TracedBody<B> {
    inner: B,
    end: Option<CallEnd>,
}

impl<B: http_body::Body + Unpin> http_body::Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(code) = grpc_status(trailers)
                    && let Some(end) = this.end.as_mut()
                {
                    end.code = Some(code);
                    end.fault = fault(code, trailers);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(end) = this.end.take() {
                    end.finish(2);
                }
            }
            Poll::Ready(None) => {
                if let Some(end) = this.end.take() {
                    let code = end.code.unwrap_or(0);
                    end.finish(code);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for TracedBody<B> {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            // Trailers already read count as the end; otherwise the client left.
            let code = end.code.unwrap_or(1);
            end.finish(code);
        }
    }
}

/// The duration of each RPC (`rpc.server.call.duration`, in seconds, as the
/// current semantic conventions name it; its count is the number of calls).
/// Bound to the global meter provider on first use, which `telemetry::init`
/// sets before any request arrives.
fn rpc_duration() -> &'static Histogram<f64> {
    static DURATION: OnceLock<Histogram<f64>> = OnceLock::new();
    DURATION.get_or_init(|| {
        crate::metrics::seconds_histogram("rpc.server.call.duration", "Duration of RPCs handled")
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
