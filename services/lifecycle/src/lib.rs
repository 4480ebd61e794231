//! Cascade lifecycle service: accounts and contacts, their stages, the stage
//! history, lifecycle settings, notifications and the funnel report.

pub mod api;
pub mod domain;
pub mod storage;

use cascade_proto::lifecycle::v1::lifecycle_service_server::LifecycleServiceServer;
use cascade_shared::server::Application;
use cascade_shared::settings::{ServiceIdentity, ServiceSettings};
use sea_orm::DatabaseConnection;

/// Name, env prefix (`CASCADE_LIFECYCLE__...`) and default port.
pub const IDENTITY: ServiceIdentity = ServiceIdentity {
    name: "lifecycle",
    default_port: 50051,
};

async fn service(
    database: DatabaseConnection,
) -> anyhow::Result<LifecycleServiceServer<api::LifecycleApi>> {
    Ok(LifecycleServiceServer::new(api::LifecycleApi::new(
        storage::Repository::new(database),
    )))
}

/// Builds the service, bound but not yet running (tests use port 0).
pub async fn build(settings: &ServiceSettings) -> anyhow::Result<Application> {
    cascade_shared::server::build::<storage::migration::Migrator, _, _, _>(settings, service).await
}

/// Runs the service with settings from the file and environment.
pub async fn run() -> anyhow::Result<()> {
    cascade_shared::server::run_service::<storage::migration::Migrator, _, _, _>(IDENTITY, service)
        .await
}
