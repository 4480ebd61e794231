//! Cascade opportunity service: opportunities through the Discover /
//! Qualify / Propose / Win process with the minimum information each step
//! requires, won and lost, the pipeline report (per kind: new business,
//! renewal, upgrade), and opportunity events for lifecycle through the
//! outbox, including when a customer's contracts have ended.

pub mod api;
pub mod contracts;
pub mod delivery;
pub mod domain;
pub mod erasure;
pub mod settings;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use cascade_chassis::auth::Permission;
use cascade_chassis::outbox::Deliverer;
use cascade_chassis::server::{Application, Background};
use cascade_chassis::settings::{ServiceIdentity, ServiceSettings};
use cascade_proto::opportunity::v1::opportunity_service_server::OpportunityServiceServer;
use sea_orm::DatabaseConnection;

/// The service's settings: the common sections, `[lifecycle]` and
/// `[contracts]`.
pub type Settings = ServiceSettings<settings::OpportunitySections>;

/// Name, env prefix (`CASCADE_OPPORTUNITY__...`) and default port.
pub const IDENTITY: ServiceIdentity = ServiceIdentity {
    name: "opportunity",
    default_port: 50053,
    sqlite_connections: 8,
    permissions: permission,
    default_nice: 0,
    outbox_topics: &[storage::EVENT_TOPIC],
};

/// The permission each opportunity RPC needs (see `auth::Permissions`).
pub fn permission(service: &str, method: &str) -> Option<Permission> {
    use Permission as P;
    if service != "cascade.opportunity.v1.OpportunityService" {
        return None;
    }
    Some(match method {
        "GetOpportunity" | "ListOpportunities" | "GetPipelineReport" | "GetOpportunitySettings" => {
            P::Read
        }
        "CreateOpportunity"
        | "UpdateOpportunity"
        | "AdvanceOpportunity"
        | "CloseOpportunityWon"
        | "CloseOpportunityLost" => P::Write,
        "UpdateOpportunitySettings" => P::Admin,
        _ => return None,
    })
}

async fn service(
    database: DatabaseConnection,
    background: Background,
    settings: Settings,
) -> anyhow::Result<OpportunityServiceServer<api::OpportunityApi>> {
    let (lifecycle, internal) = cascade_chassis::client::lifecycle_clients(
        &settings.own.lifecycle,
        &settings.auth,
        &settings.tls,
        IDENTITY.name,
    )?;
    let deliverer = Deliverer::new(
        database.clone(),
        storage::EVENT_TOPIC,
        Arc::new(delivery::LifecycleEventSink::new(internal.clone())),
        settings.outbox.deliverer_config(),
    );
    let mut repository = storage::Repository::new(database);
    repository.set_event_waker(deliverer.waker());
    deliverer.spawn_in(&background);
    background.add(tokio::spawn(cascade_chassis::erasure::follow(
        internal,
        IDENTITY.name,
        Arc::new(erasure::OpportunityEraser(repository.clone())),
        Duration::from_millis(settings.own.lifecycle.erasure_poll_ms),
        Duration::from_millis(settings.own.lifecycle.erasure_settle_ms),
    )));
    background.add(tokio::spawn(contracts::follow(
        repository.clone(),
        Duration::from_millis(settings.own.contracts.check_interval_ms),
    )));
    Ok(
        OpportunityServiceServer::new(api::OpportunityApi::new(repository, lifecycle))
            .max_decoding_message_size(settings.server.max_message_bytes),
    )
}

/// Builds the service, bound but not yet running (tests use port 0).
pub async fn build(settings: &Settings) -> anyhow::Result<Application> {
    cascade_chassis::server::build::<storage::migration::Migrator, _, _, _, _>(
        settings, &IDENTITY, service,
    )
    .await
}

/// Runs the service with settings from the file and environment.
pub async fn run() -> anyhow::Result<()> {
    cascade_chassis::server::run_service::<storage::migration::Migrator, _, _, _, _>(
        IDENTITY, service,
    )
    .await
}
