//! Logs, traces and metrics. Logs go to stderr (text by default, JSON when
//! asked; JSON lines carry the `trace_id` and `span_id` of the request they
//! belong to). The standard OpenTelemetry variables configure export:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
//! `..._METRICS_ENDPOINT` for one signal) turns OTLP/gRPC export on,
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the resource
//! (default `cascade-<service>`), and W3C trace context is read from and
//! written to calls.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs (traces go over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `info,cascade_lifecycle=debug`;
    /// `RUST_LOG` overrides it.
    pub log_level: String,
    /// Port of a Prometheus `/metrics` endpoint on `server.host`; unset (the
    /// default) serves none, 0 picks a free port (announced in the log).
    pub metrics_port: Option<u16>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_level: "info".into(),
            metrics_port: None,
        }
    }
}

/// Flushes and stops the exporters when dropped (at the end of `main`).
#[must_use = "dropping the guard stops trace and metric export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
    prometheus: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(endpoint) = self.prometheus.take() {
            endpoint.abort();
        }
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("trace exporter did not shut down cleanly: {error}");
        }
        if let Some(meters) = self.meters.take()
            && let Err(error) = meters.shutdown()
        {
            eprintln!("metric exporter did not shut down cleanly: {error}");
        }
    }
}

/// Installs the global log subscriber and, if configured, the OTLP exporters
/// and the Prometheus endpoint (on `host`, the server's listen address).
pub async fn init(
    service_name: &str,
    settings: &TelemetrySettings,
    host: &str,
) -> anyhow::Result<TelemetryGuard> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => EnvFilter::try_new(value)?,
        _ => EnvFilter::try_new(&settings.log_level)?,
    };
    let export_traces =
        env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let export_metrics =
        env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
    let json = settings.log_format == LogFormat::Json;
    // JSON logs carry trace ids, so spans get OpenTelemetry contexts even
    // when nothing is exported (text logs, for a person, skip that cost).
    let provider = if export_traces || json {
        Some(tracer_provider(service_name, export_traces)?)
    } else {
        None
    };
    let registry = settings.metrics_port.map(|_| prometheus::Registry::new());
    let meters = if export_metrics || registry.is_some() {
        Some(meter_provider(
            service_name,
            export_metrics,
            registry.as_ref(),
        )?)
    } else {
        None
    };
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer().with_tracer(p.tracer(format!("cascade-{service_name}")))
    });
    let (text, json) = match settings.log_format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_target(true)
                    // Colour only for a person at a terminal, not in log files.
                    .with_ansi(std::io::stderr().is_terminal()),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .map_event_format(WithTraceIds),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text.map(|l| l.with_writer(std::io::stderr)))
        .with(json.map(|l| l.with_writer(std::io::stderr)))
        .with(otel_layer)
        .try_init()?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let prometheus = match registry {
        Some(registry) => {
            let port = settings.metrics_port.unwrap_or_default();
            let address: std::net::SocketAddr = format!("{host}:{port}")
                .parse()
                .map_err(|e| anyhow::anyhow!("server.host/telemetry.metrics_port: {e}"))?;
            Some(crate::metrics::serve_prometheus(address, registry).await?)
        }
        None => None,
    };
    Ok(TelemetryGuard {
        provider,
        meters,
        prometheus,
    })
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// The resource: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` when set
/// (the builder's detectors read them), `cascade-<service>` otherwise.
fn resource(service_name: &str) -> Resource {
    let builder = Resource::builder();
    if env_set("OTEL_SERVICE_NAME") {
        builder.build()
    } else {
        builder
            .with_service_name(format!("cascade-{service_name}"))
            .build()
    }
}

/// Wraps the JSON event format: `"trace_id"` and `"span_id"` of the
/// current OpenTelemetry context lead each line that has one, so a log line
/// and its trace join in the collector.
struct WithTraceIds<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use opentelemetry::trace::TraceContextExt as _;
        let mut line = String::with_capacity(256);
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let context = opentelemetry::Context::current();
        let span = context.span();
        let ids = span.span_context();
        match line.strip_prefix('{') {
            Some(rest) if ids.is_valid() => write!(
                writer,
                "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",{rest}",
                ids.trace_id(),
                ids.span_id()
            ),
            _ => writer.write_str(&line),
        }
    }
}

fn meter_provider(
    service_name: &str,
    export: bool,
    registry: Option<&prometheus::Registry>,
) -> anyhow::Result<SdkMeterProvider> {
    let mut builder = SdkMeterProvider::builder().with_resource(resource(service_name));
    if export {
        // Interval and endpoint come from OTEL_METRIC_EXPORT_INTERVAL and OTEL_EXPORTER_OTLP_*.
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()?;
        builder = builder.with_reader(PeriodicReader::builder(exporter).build());
    }
    if let Some(registry) = registry {
        let reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()?;
        builder = builder.with_reader(reader);
    }
    let provider = builder.build();
    opentelemetry::global::set_meter_provider(provider.clone());
    Ok(provider)
}

fn tracer_provider(service_name: &str, export: bool) -> anyhow::Result<SdkTracerProvider> {
    let mut builder = SdkTracerProvider::builder().with_resource(resource(service_name));
    if export {
        // Endpoint, headers and timeout come from the standard OTEL_* variables.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}
