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
        for name in ["", service, cascade_chassis::server::LIVENESS] {
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
            // Every service's operators list and retry its dead letters.
            "cascade.admin.v1.OutboxAdminService".to_owned(),
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
    // A fresh connection per probe, as the kubelet makes them: accepted and
    // answered during the drain (readiness NOT_SERVING, liveness SERVING),
    // not left waiting until the listener closes.
    for (service, expected) in [
        ("", ServingStatus::NotServing),
        (cascade_chassis::server::LIVENESS, ServingStatus::Serving),
    ] {
        let fresh = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect_lazy();
        let status = tokio::time::timeout(Duration::from_millis(700), health(fresh, service))
            .await
            .unwrap_or_else(|_| panic!("{service:?} answered on a fresh connection while draining"))
            .expect("health answers");
        assert_eq!(status, expected as i32, "{service:?} while draining");
    }
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

/// Migrations run apart (`--migrate` in an init container): a service on a
/// schema that is behind is alive but not ready, and turns ready once they
/// are applied; the upgrade from the previous version's schema is one
/// `--migrate`, and an older binary accepts a schema a newer one moved on.
async fn readiness_waits_for_the_schema(db: TestDatabase) {
    use cascade_lifecycle::storage::migration::Migrator;
    use sea_orm::ConnectionTrait;
    use sea_orm_migration::MigratorTrait;

    let conn = cascade_chassis::db::connect(&db.settings)
        .await
        .expect("connect");
    let previous = u32::try_from(Migrator::migrations().len() - 1).expect("few migrations");
    Migrator::up(&conn, Some(previous))
        .await
        .expect("the previous version's schema");

    let mut settings = ServiceSettings::for_tests(db.settings.clone());
    settings.database.run_migrations = false;
    settings.server.health_check_interval_ms = 50;
    let server = cascade_testkit::TestServer::start(
        cascade_lifecycle::build(&settings)
            .await
            .expect("lifecycle builds without migrating"),
    );
    let readiness = async || health(server.channel(), "").await.map_err(|s| s.code());
    assert_eq!(readiness().await, Ok(ServingStatus::NotServing as i32));
    assert_eq!(
        health(server.channel(), cascade_chassis::server::LIVENESS)
            .await
            .map_err(|s| s.code()),
        Ok(ServingStatus::Serving as i32)
    );

    // The upgrade: what `cascade-lifecycle --migrate` runs.
    cascade_chassis::db::migrate::<Migrator>(&conn)
        .await
        .expect("migrated");
    cascade_testkit::eventually(
        "readiness once the schema is current",
        async || match readiness().await {
            Ok(status) if status == ServingStatus::Serving as i32 => Ok(()),
            other => Err(other),
        },
    )
    .await;

    // A newer version migrated further (its pods roll out first): this
    // binary's --migrate leaves it alone and the service stays ready.
    conn.execute_unprepared(
        "INSERT INTO seaql_migrations (version, applied_at) \
         VALUES ('m20991231_000000_from_a_newer_version', 0)",
    )
    .await
    .expect("a newer migration recorded");
    cascade_chassis::db::migrate::<Migrator>(&conn)
        .await
        .expect("an older binary accepts a newer schema");
    assert_eq!(
        cascade_chassis::db::schema_status::<Migrator>(&conn)
            .await
            .expect("schema read"),
        cascade_chassis::db::SchemaStatus::Current
    );
    tokio::time::sleep(Duration::from_millis(150)).await; // three probe intervals
    assert_eq!(readiness().await, Ok(ServingStatus::Serving as i32));
    server.stop().await;
}

cascade_testkit::on_each_database!(readiness_waits_for_the_schema);
