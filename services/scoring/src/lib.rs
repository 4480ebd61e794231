//! Cascade scoring service: activities, versioned scoring models, contact
//! and account engagement scores, the score ledger, model simulation, and the
//! delivery of score changes to lifecycle through the outbox: after stored
//! batches are folded into the scores (`fold`), after a decay day
//! (`decay`), and after an erasure or a contact marked inactive (`erasure`,
//! `contacts`).

pub mod api;
pub mod contacts;
pub mod decay;
pub mod delivery;
pub mod directory;
pub mod domain;
pub mod erasure;
pub mod fold;
pub mod settings;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use cascade_chassis::auth::Permission;
use cascade_chassis::client::lifecycle_clients;
use cascade_chassis::erasure::{ContactChanges, follow_feed};
use cascade_chassis::limit::{InFlightLimit, TenantRateLimiter};
use cascade_chassis::outbox::Deliverer;
use cascade_chassis::server::{Application, Background};
use cascade_chassis::settings::{ServiceIdentity, ServiceSettings};
use cascade_proto::scoring::v1::scoring_service_server::ScoringServiceServer;
use sea_orm::DatabaseConnection;

/// The service's settings: the common sections, `[lifecycle]` and `[decay]`.
pub type Settings = ServiceSettings<settings::ScoringSections>;

/// Name, env prefix (`CASCADE_SCORING__...`) and default port.
pub const IDENTITY: ServiceIdentity = ServiceIdentity {
    name: "scoring",
    default_port: 50052,
    sqlite_connections: 4,
    permissions: permission,
    // Ingest is throughput work: lifecycle's reads take a free core first
    // (chassis::priority, docs/performance.md round 30).
    default_nice: 10,
    outbox_topics: &[storage::SCORE_TOPIC],
};

/// The permission each scoring RPC needs (see `auth::Permissions`).
pub fn permission(service: &str, method: &str) -> Option<Permission> {
    use Permission as P;
    if service != "cascade.scoring.v1.ScoringService" {
        return None;
    }
    Some(match method {
        "GetAccountScore"
        | "GetContactScore"
        | "ListTopAccounts"
        | "ExplainAccountScore"
        | "GetScoringModel" => P::Read,
        "RecordActivity" | "RecordActivities" | "StreamActivities" => P::Write,
        // Simulation changes nothing but scans every stored activity.
        "UpdateScoringModel" | "SimulateScoringModel" | "SimulateScoringModelStream" => P::Admin,
        _ => return None,
    })
}

async fn service(
    database: DatabaseConnection,
    background: Background,
    settings: Settings,
) -> anyhow::Result<ScoringServiceServer<api::ScoringApi>> {
    let (lifecycle, internal) = lifecycle_clients(
        &settings.own.lifecycle,
        &settings.auth,
        &settings.tls,
        IDENTITY.name,
    )?;
    let mut repository = storage::Repository::new(database.clone());
    let internal_for_erasure = internal.clone();
    let internal_for_contacts = internal.clone();
    let sink = delivery::LifecycleScoreSink::new(repository.clone(), internal);
    // A round claims enough accounts for several ApplyEngagementScores calls.
    let mut config = settings.outbox.deliverer_config();
    config.batch_size = delivery::CLAIM_PER_ROUND;
    let deliverer = Deliverer::new(database, storage::SCORE_TOPIC, Arc::new(sink), config);
    repository.set_delivery_waker(deliverer.waker());
    deliverer.spawn_in(&background);
    let max_rest = Duration::from_millis(settings.own.fold.max_rest_ms);
    background.add(tokio::spawn(fold::follow(repository.clone(), max_rest)));
    let (rescore, rescore_asked) = tokio::sync::mpsc::unbounded_channel();
    background.add(tokio::spawn(decay::rescore_when_asked(
        repository.clone(),
        rescore_asked,
    )));
    let api = api::ScoringApi::new(
        repository.clone(),
        lifecycle,
        &settings.own.lifecycle,
        TenantRateLimiter::new(
            settings.server.ingest_rate_per_tenant,
            settings.server.ingest_burst_per_tenant,
            "activity",
        ),
        InFlightLimit::new(
            settings.server.ingest_in_flight,
            "activities",
            "server.ingest_in_flight",
        ),
        InFlightLimit::new(
            settings.own.simulation.max_in_flight,
            "simulations",
            "simulation.max_in_flight",
        ),
        rescore,
    );
    let poll = Duration::from_millis(settings.own.lifecycle.erasure_poll_ms);
    let eraser = erasure::ScoringEraser {
        repository: repository.clone(),
        directory: api.directory().clone(),
    };
    background.add(tokio::spawn(cascade_chassis::erasure::follow(
        internal_for_erasure,
        IDENTITY.name,
        Arc::new(eraser),
        poll,
        Duration::from_millis(settings.own.lifecycle.erasure_settle_ms),
    )));
    let contact_changes = contacts::ScoringContactChanges {
        repository: repository.clone(),
        directory: api.directory().clone(),
    };
    background.add(tokio::spawn(follow_feed(
        internal_for_contacts,
        IDENTITY.name,
        Arc::new(ContactChanges(Arc::new(contact_changes))),
        poll,
    )));
    background.add(tokio::spawn(contacts::forget_changed(
        repository.clone(),
        api.directory().clone(),
        poll,
    )));
    if settings.own.decay.refresh_interval_ms > 0 {
        background.add(tokio::spawn(decay::follow(
            repository,
            Duration::from_millis(settings.own.decay.refresh_interval_ms),
        )));
    }
    Ok(ScoringServiceServer::new(api).max_decoding_message_size(settings.server.max_message_bytes))
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
