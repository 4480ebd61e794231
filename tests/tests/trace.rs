//! One trace across services: the real binaries export spans and metrics
//! over OTLP to a collector started by this test. An activity that
//! prioritizes an account produces scoring's and lifecycle's spans under one
//! trace id, through the delayed outbox delivery; so does a won opportunity.

mod common;

use std::sync::{Arc, Mutex};

use cascade_proto::common::v1::{AccountStage as S, Date};
use cascade_proto::opportunity::v1 as op;
use cascade_testkit::fixtures::{account, by_email, usd};
use cascade_testkit::{TestDatabase, eventually};
use common::System;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

const T: &str = "traced";

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    attributes: Vec<KeyValue>,
    /// How long it lasted.
    duration_ms: u64,
}

impl Span {
    fn attribute(&self, key: &str) -> Option<String> {
        self.attributes.iter().find(|a| a.key == key).and_then(|a| {
            match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                Value::IntValue(i) => Some(i.to_string()),
                other => Some(format!("{other:?}")),
            }
        })
    }
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    metrics: Arc<Mutex<Vec<(String, String)>>>,
}

fn service_name(attributes: &[KeyValue]) -> String {
    attributes
        .iter()
        .find(|a| a.key == "service.name")
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .as_ref()
                .map(|r| service_name(&r.attributes))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Span {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        attributes: span.attributes,
                        duration_ms: span
                            .end_time_unix_nano
                            .saturating_sub(span.start_time_unix_nano)
                            / 1_000_000,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut metrics = self.metrics.lock().expect("lock");
        for resource in request.into_inner().resource_metrics {
            let service = resource
                .resource
                .as_ref()
                .map(|r| service_name(&r.attributes))
                .unwrap_or_default();
            for scope in resource.scope_metrics {
                for metric in scope.metrics {
                    metrics.push((service.clone(), metric.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("lock").clone()
    }

    /// Waits (bounded) for a span of `service` named `name`.
    async fn wait_span(&self, service: &str, name: &str, trace: Option<&[u8]>) -> Span {
        let what = format!("a span {service}:{name} in the expected trace");
        eventually(&what, async || {
            let spans = self.spans();
            spans
                .iter()
                .find(|s| {
                    s.service == service && s.name == name && trace.is_none_or(|t| s.trace_id == t)
                })
                .cloned()
                .ok_or_else(|| {
                    spans
                        .iter()
                        .map(|s| format!("{}:{}", s.service, s.name))
                        .collect::<Vec<_>>()
                })
        })
        .await
    }

    /// An OTLP collector on port 0; its endpoint URL.
    async fn start() -> (Self, String) {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .add_service(MetricsServiceServer::new(collector.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, endpoint)
    }
}

/// The standard OpenTelemetry variables configure export (a signal's own
/// endpoint, the service name), and a JSON log line of a request carries that
/// request's trace and span ids and its tenant, so logs and traces join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_otel_variables_and_json_logs_join_the_trace() {
    let (collector, endpoint) = Collector::start().await;
    let db = TestDatabase::sqlite();
    let dir = cascade_testkit::TempDir::new("otel");
    let mut lifecycle = common::Process::new("lifecycle", &db.settings.url, dir.path())
        .with_env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint)
        .with_env("OTEL_SERVICE_NAME", "crm-lifecycle")
        .with_env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .with_env("CASCADE_LIFECYCLE__TELEMETRY__LOG_FORMAT", "json")
        // The harness sets RUST_LOG (it wins over the log_level setting).
        .with_env("RUST_LOG", "info,cascade_chassis::trace=debug");
    lifecycle.start().await;

    // The caller's own trace: the service joins it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = cascade_testkit::request_for(
        T,
        cascade_proto::lifecycle::v1::ListAccountsRequest::default(),
    );
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .expect("ascii"),
    );
    cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient::new(
        lifecycle.channel(),
    )
    .list_accounts(request)
    .await
    .expect("ListAccounts");

    let trace_bytes: Vec<u8> = (0..trace_id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&trace_id[i..i + 2], 16).expect("hex"))
        .collect();
    let span = collector
        .wait_span(
            "crm-lifecycle",
            "cascade.lifecycle.v1.LifecycleService/ListAccounts",
            Some(&trace_bytes),
        )
        .await;
    assert_eq!(span.attribute("tenant").as_deref(), Some(T));

    let line = eventually(
        "a JSON log line of the request with its trace id",
        async || {
            let log = lifecycle.log_text();
            log.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|l| l["trace_id"] == trace_id)
                .ok_or_else(|| common::Verbatim(log.clone()))
        },
    )
    .await;
    assert_eq!(line["span_id"].as_str().map(str::len), Some(16), "{line}");
    assert_eq!(line["span"]["tenant"], T, "{line}");
    // A streamed call is recorded when it ends, with its real status: a
    // watch the client leaves after 300 ms is CANCELLED and lasted that long.
    let watch =
        cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient::new(
            lifecycle.channel(),
        )
        .watch_account_events(cascade_testkit::request_for(
            T,
            cascade_proto::lifecycle::v1::WatchAccountEventsRequest::default(),
        ))
        .await
        .expect("watch opened");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // the call's length
    drop(watch);
    let watched = collector
        .wait_span(
            "crm-lifecycle",
            "cascade.lifecycle.v1.LifecycleService/WatchAccountEvents",
            None,
        )
        .await;
    assert_eq!(
        watched.attribute("rpc.grpc.status_code").as_deref(),
        Some("1")
    );
    assert!(
        watched.duration_ms >= 300,
        "lasted {} ms",
        watched.duration_ms
    );
    // Health checks make no spans (the harness polled health to start it).
    assert!(
        collector
            .spans()
            .iter()
            .all(|s| !s.name.starts_with("grpc.health")),
        "{:?}",
        collector
            .spans()
            .iter()
            .map(|s| &s.name)
            .collect::<Vec<_>>()
    );
    lifecycle.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_activity_to_stage_change() {
    let (collector, endpoint) = Collector::start().await;
    let db = TestDatabase::sqlite();
    let env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
        ("OTEL_METRIC_EXPORT_INTERVAL".to_owned(), "300".to_owned()),
    ];
    let system = System::start_with(&db, 1, env).await;
    let (lifecycle, scoring, opps) = (
        system.lifecycle_as(0, T),
        system.scoring_as(0, T),
        system.opportunity_as(0, T),
    );
    let id = lifecycle
        .create_account_with(account("Traced", "traced.example", ""))
        .await
        .account_id;

    // The single-activity RPC (RecordActivity), whose span is checked below.
    let recorded = scoring
        .record_one(by_email("trace-1", "demo_request", "tess@traced.example"))
        .await
        .result
        .expect("result");
    let contact = recorded.contact_id.clone();

    let ingest = collector
        .wait_span(
            "cascade-scoring",
            "cascade.scoring.v1.ScoringService/RecordActivity",
            None,
        )
        .await;
    assert_eq!(ingest.attribute("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        ingest.attribute("rpc.service").as_deref(),
        Some("cascade.scoring.v1.ScoringService")
    );
    assert_eq!(
        ingest.attribute("rpc.method").as_deref(),
        Some("RecordActivity")
    );
    assert_eq!(
        ingest.attribute("rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    let trace = ingest.trace_id.clone();
    // Email resolution, the delayed delivery and the stage change: one trace.
    collector
        .wait_span(
            "cascade-lifecycle",
            "cascade.lifecycle.v1.LifecycleService/BatchResolveContacts",
            Some(&trace),
        )
        .await;
    collector
        .wait_span("cascade-scoring", "outbox.deliver", Some(&trace))
        .await;
    let applied = collector
        .wait_span(
            "cascade-lifecycle",
            "cascade.lifecycle.v1.LifecycleInternalService/ApplyEngagementScore",
            Some(&trace),
        )
        .await;
    assert_eq!(
        applied.attribute("rpc.method").as_deref(),
        Some("ApplyEngagementScore")
    );

    // An opportunity won: its outbox delivery joins the CloseOpportunityWon trace.
    let oid = opps
        .try_create(op::Opportunity {
            account_id: id.clone(),
            name: "Traced deal".into(),
            estimated_deal_size: usd(1_000),
            close_date: Some(Date {
                year: 2027,
                month: 1,
                day: 1,
            }),
            amount: usd(1_000),
            current_situation: "x".into(),
            needs: "y".into(),
            buying_group_contact_ids: vec![contact],
            line_items: vec![op::LineItem {
                product: "p".into(),
                kind: 1,
                quantity: 1,
                unit_price: usd(1_000),
                end_date: None,
            }],
            new_reality: "z".into(),
            contract: Some(op::Contract {
                document_ref: "doc".into(),
                signed: true,
                sign_time: None,
                end_date: None,
            }),
            ..Default::default()
        })
        .await
        .expect("opportunity")
        .opportunity_id;
    for _ in 0..3 {
        opps.try_advance(&oid).await.expect("advance");
    }
    opps.try_win(&oid).await.expect("won");
    let won = collector
        .wait_span(
            "cascade-opportunity",
            "cascade.opportunity.v1.OpportunityService/CloseOpportunityWon",
            None,
        )
        .await;
    collector
        .wait_span("cascade-opportunity", "outbox.deliver", Some(&won.trace_id))
        .await;
    collector
        .wait_span(
            "cascade-lifecycle",
            "cascade.lifecycle.v1.LifecycleInternalService/ApplyOpportunityEvent",
            Some(&won.trace_id),
        )
        .await;
    lifecycle.wait_for_stage(&id, S::Implement).await;

    // Metrics per RPC arrive the same way.
    let metric_names = eventually("scoring's and lifecycle's RPC metrics", async || {
        let metric_names = collector.metrics.lock().expect("lock").clone();
        let has =
            |service: &str, name: &str| metric_names.iter().any(|(s, n)| s == service && n == name);
        if has("cascade-scoring", "rpc.server.call.duration")
            && has("cascade-lifecycle", "rpc.server.call.duration")
        {
            Ok(metric_names)
        } else {
            Err(metric_names)
        }
    })
    .await;
    assert!(
        metric_names
            .iter()
            .any(|(s, n)| s == "cascade-scoring" && n == "rpc.server.call.duration"),
        "{metric_names:?}"
    );
    assert!(
        metric_names
            .iter()
            .any(|(s, n)| s == "cascade-lifecycle" && n == "rpc.server.call.duration"),
        "{metric_names:?}"
    );
    println!(
        "trace: {} spans exported; activity trace and won-deal trace each cross scoring/opportunity, the outbox and lifecycle",
        collector.spans().len()
    );
    system.stop().await;
}
