//! Calls from one Cascade service to another: a channel that connects lazily
//! (a service starts even when its peer is down), and requests that carry
//! the tenant, the actor and the W3C trace context of the current span.

use std::collections::HashMap;
use std::time::Duration;

use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::context::{ACTOR_HEADER, TENANT_HEADER};
use crate::settings::LifecycleClientSettings;

/// A channel to lifecycle; it connects on first use and reconnects after failures.
pub fn lifecycle_channel(settings: &LifecycleClientSettings) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(settings.url.clone())
        .map_err(|e| anyhow::anyhow!("lifecycle.url: {e}"))?
        .connect_timeout(Duration::from_millis(settings.timeout_ms))
        .timeout(Duration::from_millis(settings.timeout_ms))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// A request to another service on behalf of `tenant`, acting as `actor`,
/// joined to the current trace.
pub fn outgoing<T>(tenant: &str, actor: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    if let Ok(value) = MetadataValue::try_from(tenant) {
        metadata.insert(TENANT_HEADER, value);
    }
    if let Ok(value) = MetadataValue::try_from(actor) {
        metadata.insert(ACTOR_HEADER, value);
    }
    let context = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    for (key, value) in carrier {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            metadata.insert(key, value);
        }
    }
    request
}
