//! The suite in the test's own runtime: lifecycle first on port 0, then the
//! services that call it, pointed at the address lifecycle really bound.
//! A stopped lifecycle comes back on the same address, so the services
//! calling it keep their settings, as in a deployment behind a Service.

use std::net::SocketAddr;

use cascade_chassis::db::DatabaseSettings;

use crate::clients::{Lifecycle, Opportunity, Scoring};
use crate::database::TestDatabase;
use crate::request::Caller;
use crate::server::TestServer;

/// The tenant [`TestSystem`]'s clients call as.
pub const TENANT: &str = "acme";

/// `lifecycle.erasure_settle_ms` for a test that ingests through an outage
/// of lifecycle: scoring answers from what it remembers of people for half
/// the settle after its last poll of erasures, and the 2 s of the test
/// settings would end that within a second.
pub const SETTLE_THROUGH_AN_OUTAGE_MS: u64 = 60_000;

/// A service of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Lifecycle,
    Scoring,
    Opportunity,
}

/// Lifecycle plus, optionally, scoring replicas and opportunity, each with
/// its own database on the backend of the test's.
pub struct TestSystem {
    lifecycle_settings: cascade_lifecycle::Settings,
    lifecycle: Option<TestServer>,
    lifecycle_addr: SocketAddr,
    scoring: Vec<TestServer>,
    scoring_db: Option<DatabaseSettings>,
    opportunity: Option<TestServer>,
    opportunity_db: Option<DatabaseSettings>,
    /// Databases the system made itself (dropped, so removed, with it).
    _owned: Vec<TestDatabase>,
}

impl TestSystem {
    /// Lifecycle alone, on `db`.
    pub async fn lifecycle_on(db: &TestDatabase) -> Self {
        Self::lifecycle_with(db, |_| {}).await
    }

    /// Lifecycle alone, on `db`, with its test settings changed by `change`
    /// (e.g. the outbox's limits).
    pub async fn lifecycle_with(
        db: &TestDatabase,
        change: impl FnOnce(&mut cascade_lifecycle::Settings),
    ) -> Self {
        let mut settings = cascade_lifecycle::Settings::for_tests(db.settings.clone());
        change(&mut settings);
        Self::start_lifecycle_on(settings, Vec::new()).await
    }

    /// Scoring on `db`, with lifecycle on a new database beside it.
    pub async fn scoring_on(db: &TestDatabase) -> Self {
        Self::scoring_with(db, |_| {}).await
    }

    /// Scoring on `db` with its test settings changed by `change`, with
    /// lifecycle on a new database beside it.
    pub async fn scoring_with(
        db: &TestDatabase,
        change: impl FnOnce(&mut cascade_scoring::Settings),
    ) -> Self {
        let mut system = Self::beside(db).await;
        system.add_scoring_with(db, change).await;
        system
    }

    /// Opportunity on `db`, with lifecycle on a new database beside it.
    pub async fn opportunity_on(db: &TestDatabase) -> Self {
        Self::opportunity_on_with(db, |_| {}).await
    }

    /// `opportunity_on` with opportunity's settings changed by `configure`.
    pub async fn opportunity_on_with(
        db: &TestDatabase,
        configure: impl FnOnce(&mut cascade_opportunity::Settings),
    ) -> Self {
        let mut system = Self::beside(db).await;
        let mut settings = cascade_opportunity::Settings::for_tests(db.settings.clone());
        settings.own.lifecycle.url = system.url(Service::Lifecycle);
        configure(&mut settings);
        let app = cascade_opportunity::build(&settings)
            .await
            .expect("opportunity builds");
        system.opportunity = Some(TestServer::start(app));
        system.opportunity_db = Some(db.settings.clone());
        system
    }

    /// All three services, each on a new database like `db`.
    pub async fn all_like(db: &TestDatabase) -> Self {
        let scoring_db = db.like().await;
        let opportunity_db = db.like().await;
        let mut system = Self::opportunity_on(&opportunity_db).await;
        system.add_scoring(&scoring_db).await;
        system._owned.extend([scoring_db, opportunity_db]);
        system
    }

    async fn beside(db: &TestDatabase) -> Self {
        let lifecycle_db = db.like().await;
        let settings = cascade_lifecycle::Settings::for_tests(lifecycle_db.settings.clone());
        Self::start_lifecycle_on(settings, vec![lifecycle_db]).await
    }

    async fn start_lifecycle_on(
        settings: cascade_lifecycle::Settings,
        owned: Vec<TestDatabase>,
    ) -> Self {
        let server = lifecycle_server(&settings, 0).await;
        Self {
            lifecycle_settings: settings,
            lifecycle_addr: server.addr,
            lifecycle: Some(server),
            scoring: Vec::new(),
            scoring_db: None,
            opportunity: None,
            opportunity_db: None,
            _owned: owned,
        }
    }

    /// Keeps `db` for as long as the system, removed with it (a database a
    /// helper made for one of the system's services).
    pub fn own(&mut self, db: TestDatabase) {
        self._owned.push(db);
    }

    /// Starts another scoring replica on `db` (the same database for
    /// replicas of one deployment).
    pub async fn add_scoring(&mut self, db: &TestDatabase) {
        self.add_scoring_with(db, |_| {}).await;
    }

    async fn add_scoring_with(
        &mut self,
        db: &TestDatabase,
        change: impl FnOnce(&mut cascade_scoring::Settings),
    ) {
        let mut settings = cascade_scoring::Settings::for_tests(db.settings.clone());
        settings.own.lifecycle.url = self.url(Service::Lifecycle);
        change(&mut settings);
        let app = cascade_scoring::build(&settings)
            .await
            .expect("scoring builds");
        self.scoring.push(TestServer::start(app));
        self.scoring_db = Some(db.settings.clone());
    }

    /// Waits until every outbox of the running system is drained: scores
    /// folded and delivered to lifecycle, opportunity events applied, notifications
    /// sent. Then nothing more is on its way.
    pub async fn settled(&self) {
        use crate::outbox::{wait_until_delivered, wait_until_folded};
        if let Some(db) = &self.scoring_db {
            wait_until_folded(db).await;
            wait_until_delivered(db, "engagement_scores").await;
        }
        if let Some(db) = &self.opportunity_db {
            wait_until_delivered(db, "opportunity_events").await;
        }
        wait_until_delivered(&self.lifecycle_settings.database, "notifications").await;
    }

    /// Stops every scoring replica gracefully.
    pub async fn stop_scoring(&mut self) {
        for server in self.scoring.drain(..) {
            server.stop().await;
        }
    }

    /// Stops lifecycle gracefully; its address stays reserved for
    /// [`TestSystem::start_lifecycle`].
    pub async fn stop_lifecycle(&mut self) {
        if let Some(server) = self.lifecycle.take() {
            server.stop().await;
        }
    }

    /// Starts lifecycle again on the address it had, with the same database.
    pub async fn start_lifecycle(&mut self) {
        assert!(self.lifecycle.is_none(), "lifecycle is already running");
        let server = lifecycle_server(&self.lifecycle_settings, self.lifecycle_addr.port()).await;
        self.lifecycle = Some(server);
    }

    /// Where `service` listens (the first scoring replica for scoring).
    pub fn addr(&self, service: Service) -> SocketAddr {
        match service {
            Service::Lifecycle => self.lifecycle_addr,
            Service::Scoring => self.scoring_server(0).addr,
            Service::Opportunity => self.opportunity_server().addr,
        }
    }

    /// `http://127.0.0.1:PORT` of `service`.
    pub fn url(&self, service: Service) -> String {
        format!("http://{}", self.addr(service))
    }

    /// A lazily connected channel to `service`.
    pub fn channel(&self, service: Service) -> tonic::transport::Channel {
        channel_to(self.addr(service))
    }

    /// Lifecycle's typed client, calling as tenant [`TENANT`] (the
    /// address survives restarts, so the client does too).
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle::new(channel_to(self.lifecycle_addr), Caller::tenant(TENANT))
    }

    /// Scoring's typed client (the first replica), as tenant [`TENANT`].
    pub fn scoring(&self) -> Scoring {
        self.scoring_at(0)
    }

    /// Scoring replica `n`'s typed client, as tenant [`TENANT`].
    pub fn scoring_at(&self, n: usize) -> Scoring {
        Scoring::new(self.scoring_server(n).channel(), Caller::tenant(TENANT))
    }

    /// Opportunity's typed client, as tenant [`TENANT`].
    pub fn opportunity(&self) -> Opportunity {
        Opportunity::new(self.opportunity_server().channel(), Caller::tenant(TENANT))
    }

    fn scoring_server(&self, n: usize) -> &TestServer {
        self.scoring
            .get(n)
            .expect("that scoring replica is running")
    }

    fn opportunity_server(&self) -> &TestServer {
        self.opportunity.as_ref().expect("opportunity is running")
    }

    /// Stops everything gracefully, callers of lifecycle first.
    pub async fn stop(mut self) {
        if let Some(server) = self.opportunity.take() {
            server.stop().await;
        }
        self.stop_scoring().await;
        self.stop_lifecycle().await;
    }
}

async fn lifecycle_server(settings: &cascade_lifecycle::Settings, port: u16) -> TestServer {
    let mut settings = settings.clone();
    settings.server.port = port;
    let app = cascade_lifecycle::build(&settings)
        .await
        .expect("lifecycle builds");
    TestServer::start(app)
}

fn channel_to(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid url")
        .connect_lazy()
}
