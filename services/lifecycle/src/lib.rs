//! Cascade lifecycle service: accounts and contacts, their stages, the stage
//! history, lifecycle settings, notifications and the funnel report.

pub mod api;
pub mod convert;
pub mod domain;
pub mod settings;
pub mod storage;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use cascade_chassis::auth::Permission;
use cascade_chassis::outbox::Deliverer;
use cascade_chassis::server::{Application, Background, WithInternal};
use cascade_chassis::settings::{ServiceIdentity, ServiceSettings};
use cascade_proto::lifecycle::v1::lifecycle_internal_service_server::LifecycleInternalServiceServer;
use cascade_proto::lifecycle::v1::lifecycle_service_server::LifecycleServiceServer;
use sea_orm::DatabaseConnection;
use sea_orm::DbBackend;

/// Name, env prefix (`CASCADE_LIFECYCLE__...`) and default port.
pub const IDENTITY: ServiceIdentity = ServiceIdentity {
    name: "lifecycle",
    default_port: 50051,
    sqlite_connections: 8,
    permissions: permission,
    default_nice: 0,
    outbox_topics: &[storage::NOTIFICATION_TOPIC],
};

/// The permission each lifecycle RPC needs (see `auth::Permissions`).
pub fn permission(service: &str, method: &str) -> Option<Permission> {
    use Permission as P;
    Some(match (service, method) {
        ("cascade.lifecycle.v1.LifecycleService", method) => match method {
            "GetAccount"
            | "ListAccounts"
            | "GetContact"
            | "ListContacts"
            | "ListAccountTransitions"
            | "ListContactTransitions"
            | "ListNotifications"
            | "GetAccountStageAt"
            | "GetFunnelReport"
            | "GetLifecycleSettings"
            | "WatchAccountEvents" => P::Read,
            "CreateAccount"
            | "UpdateAccount"
            | "CreateContact"
            | "UpdateContact"
            | "BatchCreateAccounts"
            | "BatchCreateContacts"
            | "DeactivateContact"
            | "ReactivateContact" => P::Write,
            "ResolveContact" | "BatchResolveContacts" => P::Resolve,
            "QualifyAccount" | "DisqualifyAccount" | "NurtureAccount" | "AdvanceAccount"
            | "ChurnAccount" | "FlagAccountAtRisk" | "ClearAccountAtRisk" => P::Act,
            // Erasure is irreversible and reaches every service.
            "UpdateLifecycleSettings" | "DeleteContact" | "DeleteAccount" => P::Admin,
            "GetErasure" => P::Read,
            _ => return None,
        },
        // Only the other Cascade services deliver into lifecycle.
        (
            "cascade.lifecycle.v1.LifecycleInternalService",
            "ApplyEngagementScore"
            | "ApplyEngagementScores"
            | "ApplyOpportunityEvent"
            | "ListPendingErasures"
            | "ConfirmErasure"
            | "ListPendingContactChanges"
            | "ConfirmContactChange",
        ) => P::Apply,
        _ => return None,
    })
}

/// Lifecycle's settings: the common sections and `[cache]`.
pub type Settings = ServiceSettings<settings::LifecycleSections>;

/// How long a webhook receiver may take to answer.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

async fn service(
    database: DatabaseConnection,
    background: Background,
    settings: Settings,
) -> anyhow::Result<
    WithInternal<
        LifecycleServiceServer<api::LifecycleApi>,
        LifecycleInternalServiceServer<api::LifecycleInternalApi>,
    >,
> {
    let private_webhooks = settings.own.webhook.allow_private_addresses;
    let sink = storage::WebhookSink::new(database.clone(), WEBHOOK_TIMEOUT, private_webhooks)?;
    let deliverer = Deliverer::new(
        database.clone(),
        storage::NOTIFICATION_TOPIC,
        Arc::new(sink),
        settings.outbox.deliverer_config(),
    );
    let mut repository = storage::Repository::new(database.clone());
    repository.set_notification_waker(deliverer.waker());
    repository.set_erasure_settle(Duration::from_millis(settings.own.erasure.min_settle_ms));
    let entries = settings.own.cache.accounts;
    if entries > 0 {
        // PostgreSQL answers from memory only once it hears other replicas.
        let postgres = database.get_database_backend() == DbBackend::Postgres;
        let cache = Arc::new(storage::cache::AccountCache::new(entries, !postgres));
        if postgres {
            background.add(storage::cache::listen_for_changes(&database, cache.clone()));
        }
        repository.set_account_cache(cache);
    }
    deliverer.spawn_in(&background);
    let limit = settings.server.max_message_bytes;
    Ok(WithInternal {
        public: LifecycleServiceServer::new(api::LifecycleApi::new(
            repository.clone(),
            private_webhooks,
            background.drain_signal(),
        ))
        .max_decoding_message_size(limit),
        internal: LifecycleInternalServiceServer::new(api::LifecycleInternalApi::new(repository))
            .max_decoding_message_size(limit),
    })
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
