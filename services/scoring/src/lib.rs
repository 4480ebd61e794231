//! Cascade scoring service: activities, scoring models, contact and account
//! engagement scores, the score ledger and model simulation.
//!
//! Its RPCs are defined in the contract and answer UNIMPLEMENTED until the
//! scoring issue lands; the service already starts, migrates its database and
//! serves health and reflection like the others.

pub mod storage;

use cascade_proto::scoring::v1::scoring_service_server::{ScoringService, ScoringServiceServer};
use cascade_shared::server::{Application, Background};
use cascade_shared::settings::{ServiceIdentity, ServiceSettings};
use sea_orm::DatabaseConnection;

/// Name, env prefix (`CASCADE_SCORING__...`) and default port.
pub const IDENTITY: ServiceIdentity = ServiceIdentity {
    name: "scoring",
    default_port: 50052,
};

/// The gRPC handlers (every RPC answers UNIMPLEMENTED for now).
pub struct ScoringApi;

impl ScoringService for ScoringApi {}

async fn service(
    _database: DatabaseConnection,
    _background: Background,
    _settings: ServiceSettings,
) -> anyhow::Result<ScoringServiceServer<ScoringApi>> {
    Ok(ScoringServiceServer::new(ScoringApi))
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
