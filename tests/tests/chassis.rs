//! The chassis every service shares: health (including the empty service
//! name Kubernetes asks for), reflection of the service's own API, the
//! request-context layer, and graceful shutdown.

use std::time::Duration;

use cascade_chassis::settings::ServiceSettings;
use cascade_proto::lifecycle::v1 as lifecycle;
use cascade_testkit::{Service, TestDatabase, TestSystem, request_for};
use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const LIFECYCLE: &str = "cascade.lifecycle.v1.LifecycleService";
const SCORING: &str = "cascade.scoring.v1.ScoringService";
const OPPORTUNITY: &str = "cascade.opportunity.v1.OpportunityService";

async fn health(channel: Channel, service: &str) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

async fn listed_services(channel: Channel) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("one response")
        .expect("ok response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a list response")
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn every_service_serves_health_and_its_own_reflection() {
    let system = TestSystem::all_like(&TestDatabase::sqlite()).await;
    for (running, service) in [
        (Service::Lifecycle, LIFECYCLE),
        (Service::Scoring, SCORING),
        (Service::Opportunity, OPPORTUNITY),
    ] {
        let channel = system.channel(running);
        for name in ["", service] {
            assert_eq!(
                health(channel.clone(), name).await.expect("health answers"),
                ServingStatus::Serving as i32,
                "{service}: health of {name:?}"
            );
        }
        let unknown = health(channel.clone(), "no.such.Service")
            .await
            .expect_err("unknown service");
        assert_eq!(unknown.code(), Code::NotFound);

        let mut expected = vec![
            "grpc.health.v1.Health".to_owned(),
            "grpc.reflection.v1.ServerReflection".to_owned(),
            "grpc.reflection.v1alpha.ServerReflection".to_owned(),
            service.to_owned(),
        ];
        // Lifecycle also serves its internal service (deliveries), listed apart.
        if service == LIFECYCLE {
            expected.push("cascade.lifecycle.v1.LifecycleInternalService".to_owned());
        }
        expected.sort();
        assert_eq!(listed_services(channel).await, expected, "{service}");
    }
    system.stop().await;
}

/// On shutdown, health turns NOT_SERVING first; during the drain delay the
/// server still answers, then it stops.
#[tokio::test]
async fn shutdown_reports_not_serving_before_the_listener_closes() {
    let db = TestDatabase::sqlite();
    let mut settings = ServiceSettings::for_tests(db.settings.clone());
    settings.server.drain_delay_ms = 1_500;
    let app = cascade_lifecycle::build(&settings)
        .await
        .expect("lifecycle builds");
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run(async {
        stopped.await.ok();
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect_lazy();

    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("first status").expect("ok");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    stop.send(()).expect("server running");
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("status change arrives")
        .expect("stream open")
        .expect("ok");
    assert_eq!(next.status, ServingStatus::NotServing as i32);

    // Still draining: new calls are answered, and say NOT_SERVING.
    let during_drain = health(channel.clone(), "")
        .await
        .expect("answered while draining");
    assert_eq!(during_drain, ServingStatus::NotServing as i32);
    let list = lifecycle::lifecycle_service_client::LifecycleServiceClient::new(channel)
        .list_accounts(request_for("t1", lifecycle::ListAccountsRequest::default()))
        .await;
    assert!(list.is_ok(), "in-flight work is still served: {list:?}");

    drop(watch);
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("server stops within the grace period")
        .expect("task")
        .expect("clean stop");
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "listener closed after shutdown");
}
