//! Logs and traces. Logs go to stderr (text by default, JSON when asked);
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported over
//! OTLP/gRPC, and W3C trace context is read from and written to calls.

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
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_level: "info".into(),
        }
    }
}

/// Flushes and stops the exporters when dropped (at the end of `main`).
#[must_use = "dropping the guard stops trace and metric export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
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

/// Installs the global log subscriber and, if configured, the OTLP exporter.
pub fn init(service_name: &str, settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => EnvFilter::try_new(value)?,
        _ => EnvFilter::try_new(&settings.log_level)?,
    };
    let (provider, meters) = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => (
            Some(tracer_provider(service_name)?),
            Some(meter_provider(service_name)?),
        ),
        _ => (None, None),
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
                    .with_current_span(true),
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
    Ok(TelemetryGuard { provider, meters })
}

fn resource(service_name: &str) -> Resource {
    Resource::builder()
        .with_service_name(format!("cascade-{service_name}"))
        .build()
}

fn meter_provider(service_name: &str) -> anyhow::Result<SdkMeterProvider> {
    // Interval and endpoint come from OTEL_METRIC_EXPORT_INTERVAL and OTEL_EXPORTER_OTLP_*.
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .build()?;
    let reader = PeriodicReader::builder(exporter).build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource(service_name))
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    Ok(provider)
}

fn tracer_provider(service_name: &str) -> anyhow::Result<SdkTracerProvider> {
    // Endpoint, headers and timeout come from the standard OTEL_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(service_name))
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}
