//! Cascade opportunity service: opportunities, their steps and required
//! information, stakeholders, line items, contracts, won and lost.
//!
//! Its RPCs are defined in the contract and answer UNIMPLEMENTED until the
//! opportunity issue lands; the service already starts, migrates its database and
//! serves health and reflection like the others.

pub mod storage;

use cascade_proto::opportunity::v1::opportunity_service_server::{
    OpportunityService, OpportunityServiceServer,
};
use cascade_shared::server::{Application, Background};
use cascade_shared::settings::{ServiceIdentity, ServiceSettings};
use sea_orm::DatabaseConnection;

/// Name, env prefix (`CASCADE_OPPORTUNITY__...`) and default port.
pub const IDENTITY: ServiceIdentity = ServiceIdentity {
    name: "opportunity",
    default_port: 50053,
};

/// The gRPC handlers (every RPC answers UNIMPLEMENTED for now).
pub struct OpportunityApi;

impl OpportunityService for OpportunityApi {}

async fn service(
    _database: DatabaseConnection,
    _background: Background,
    _settings: ServiceSettings,
) -> anyhow::Result<OpportunityServiceServer<OpportunityApi>> {
    Ok(OpportunityServiceServer::new(OpportunityApi))
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
