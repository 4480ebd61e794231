//! The one server bootstrap of the three services: listener, gRPC health and
//! reflection, gRPC-Web and CORS for browsers, tower layers (request context,
//! tracing span, concurrency limit, timeout), a database health probe, and
//! graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request, Response};
use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;

use crate::db::SchemaStatus;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Service;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::{AUTHORIZATION, AuthMode, Authenticator, Permissions};
use crate::context::{ACTOR_HEADER, TENANT_HEADER};
use crate::context_layer::RequestContextLayer;
use crate::settings::{OwnSections, ServerSettings, ServiceIdentity, ServiceSettings};
use crate::trace::RpcTrace;

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const OUTBOX_ADMIN_SERVICE: &str = "cascade.admin.v1.OutboxAdminService";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";
/// The overall health entry, readiness: SERVING while the database answers
/// and its schema is current, NOT_SERVING from the start of a shutdown.
const OVERALL: &str = "";
/// The liveness entry: SERVING while the process runs, whatever the
/// database does, so a database outage restarts no pod (Kubernetes' liveness
/// and startup probes ask for it).
pub const LIVENESS: &str = "liveness";

/// The request headers a browser's gRPC-Web call may carry: the protocol's
/// own (grpc-web's and Connect's clients send the first four), the bearer
/// token, Cascade's tenant and actor metadata, and W3C trace context.
const CORS_REQUEST_HEADERS: [&str; 9] = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    AUTHORIZATION,
    TENANT_HEADER,
    ACTOR_HEADER,
    "traceparent",
    "tracestate",
];
/// The response headers a page's script may read: a failed call is answered
/// trailers-only, its status in these headers.
const CORS_EXPOSED_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];
/// How long a browser may reuse a preflight answer (Chromium caps it at 2 h).
const CORS_MAX_AGE: Duration = Duration::from_secs(2 * 60 * 60);

/// Reads whether the database's schema is current for this binary.
type SchemaProbe = Arc<
    dyn Fn(
            DatabaseConnection,
        ) -> futures::future::BoxFuture<'static, Result<SchemaStatus, sea_orm::DbErr>>
        + Send
        + Sync,
>;

/// A generated gRPC server, as the bootstrap needs it.
pub trait GrpcService:
    Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
    + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GrpcService for S where
    S: Service<
            Request<Body>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// What a service's `make_service` builds: its public gRPC service, or
/// that and an internal one for the other Cascade services (`WithInternal`),
/// served on the same port and listed apart by reflection.
pub trait Served: Send + 'static {
    /// The public service's fully-qualified gRPC name (health, logs).
    const NAME: &'static str;
    fn add_to(self, app: Application) -> Application;
}

impl<S: GrpcService> Served for S {
    const NAME: &'static str = <S as NamedService>::NAME;
    fn add_to(self, app: Application) -> Application {
        app.add_service(self)
    }
}

/// A public service and an internal one, served together.
pub struct WithInternal<P, I> {
    pub public: P,
    pub internal: I,
}

impl<P: GrpcService, I: GrpcService> Served for WithInternal<P, I> {
    const NAME: &'static str = <P as NamedService>::NAME;
    fn add_to(self, app: Application) -> Application {
        app.add_service(self.public)
            .add_internal_service(self.internal)
    }
}

/// Background tasks of a service (outbox deliverers), stopped with it.
#[derive(Clone)]
pub struct Background {
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// Tasks that finish by themselves once told to stop (the outbox
    /// deliverers, which give back their claims).
    draining: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    /// Turns true when the listener closes, before the server's grace:
    /// streams that would run forever end then (`drain_signal`).
    drain: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Background {
    fn default() -> Self {
        Self {
            tasks: Arc::default(),
            draining: Arc::default(),
            stop: Arc::new(tokio::sync::watch::channel(false).0),
            drain: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl Background {
    /// A task that runs until the service stops; it is aborted then.
    pub fn add(&self, task: tokio::task::JoinHandle<()>) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(task);
        }
    }

    /// A task that ends by itself once `stop_signal` turns true; waited for
    /// (up to `DRAIN_PATIENCE`) when the service stops, then aborted.
    pub fn add_draining(&self, task: tokio::task::JoinHandle<()>) {
        if let Ok(mut tasks) = self.draining.lock() {
            tasks.push(task);
        }
    }

    /// Turns true when the service stops.
    pub fn stop_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Turns true when the replica stops taking connections: a stream
    /// open until its client leaves (a watch) ends then, so the drain
    /// does not wait out the whole grace for it and its client reconnects
    /// to another replica.
    pub fn drain_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.drain.subscribe()
    }

    /// Tells the draining tasks to stop, waits for them a moment, and
    /// aborts whatever is left.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let draining: Vec<_> = self
            .draining
            .lock()
            .map(|mut tasks| tasks.drain(..).collect())
            .unwrap_or_default();
        let aborts: Vec<_> = draining.iter().map(|t| t.abort_handle()).collect();
        let waited =
            tokio::time::timeout(DRAIN_PATIENCE, futures::future::join_all(draining)).await;
        if waited.is_err() {
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
        self.abort_all();
    }

    fn abort_all(&self) {
        self.stop.send_replace(true);
        for tasks in [&self.tasks, &self.draining] {
            if let Ok(mut tasks) = tasks.lock() {
                for task in tasks.drain(..) {
                    task.abort();
                }
            }
        }
    }
}

/// How long a stopping service waits for its draining background tasks
/// (outbox deliverers: `STOP_PATIENCE` for calls in flight, then one
/// statement), inside the termination grace period's margin.
const DRAIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// The `main` of every service: load settings, start telemetry, connect and
/// migrate the database, build the gRPC service, serve until SIGTERM/SIGINT.
pub async fn run_service<M, S, F, Fut, X>(
    identity: ServiceIdentity,
    make_service: F,
) -> anyhow::Result<()>
where
    M: MigratorTrait,
    X: OwnSections,
    F: FnOnce(DatabaseConnection, Background, ServiceSettings<X>) -> Fut,
    Fut: Future<Output = anyhow::Result<S>>,
    S: Served,
{
    let cli = crate::cli::Cli::parse(identity);
    let settings = ServiceSettings::<X>::load(identity, cli.config.as_deref())?;
    let _telemetry =
        crate::telemetry::init(identity.name, &settings.telemetry, &settings.server.host).await?;
    // Before the service starts its work: its threads start from these.
    let session_group_nice = if settings.server.nice > 0 {
        if let Err(error) = crate::priority::at_least(settings.server.nice) {
            tracing::warn!(%error, nice = settings.server.nice, "server.nice was not applied");
        }
        crate::priority::session_group_at_least(settings.server.nice)
            .inspect_err(|error| {
                tracing::warn!(
                    %error,
                    nice = settings.server.nice,
                    "server.nice was not applied to the session's scheduling group"
                );
            })
            .unwrap_or(None)
    } else {
        None
    };
    // A pod created while the database is down (a scale-up, a drain) waits
    // for it rather than exiting into the kubelet's restart backoff, and
    // still stops at once when told to.
    let patience = if cli.migrate {
        MIGRATE_DATABASE_PATIENCE
    } else {
        DATABASE_PATIENCE
    };
    let stop = shutdown_signal();
    tokio::pin!(stop);
    tokio::select! {
        reached = wait_for_database(&settings.database, patience) => reached?,
        () = &mut stop => {
            tracing::info!("stopped before the database was reached");
            return Ok(());
        }
    }
    if cli.migrate {
        tracing::info!(database = ?settings.database, "migrating {}", identity.name);
        tokio::select! {
            migrated = crate::db::connect_and_migrate::<M>(&settings.database) => {
                migrated?;
            }
            () = &mut stop => anyhow::bail!(
                "stopped while migrating: the migrations' transaction is rolled back (PostgreSQL)"
            ),
        }
        tracing::info!("migrations applied");
        return Ok(());
    }
    if settings.auth.mode == AuthMode::Disabled {
        tracing::warn!(
            "AUTHENTICATION IS DISABLED: any caller can act for any tenant by sending x-tenant-id. \
             Development only; set auth.mode = \"jwt\" (CASCADE_{}__AUTH__MODE=jwt) anywhere else",
            identity.name.to_ascii_uppercase()
        );
    }
    // The settings that shape a run, as fields (the database URL without its
    // password; secrets are files and never printed).
    tracing::info!(
        service = identity.name,
        version = env!("CARGO_PKG_VERSION"),
        host = %settings.server.host,
        port = settings.server.port,
        database = %crate::secret::redact_urls(&settings.database.url),
        pool = settings.database.pool_size(),
        run_migrations = settings.database.run_migrations,
        auth = ?settings.auth.mode,
        tls = !settings.tls.cert_file.is_empty(),
        nice = settings.server.nice,
        session_group_nice = ?session_group_nice,
        grpc_web = settings.server.grpc_web,
        cors_allowed_origins = ?settings.server.cors_allowed_origins,
        outbox.max_age_ms = settings.outbox.max_age_ms,
        outbox.per_tenant_concurrency = settings.outbox.per_tenant_concurrency,
        log_format = ?settings.telemetry.log_format,
        "starting"
    );
    let application = tokio::select! {
        built = build::<M, S, F, Fut, X>(&settings, &identity, make_service) => built?,
        () = &mut stop => {
            tracing::info!("stopped while starting");
            return Ok(());
        }
    };
    application.run(stop).await
}

/// How long a starting service waits for its database: inside the startup
/// probe's minute (k8s/base), so that a pod created during an outage starts
/// within seconds of the database's return, not after the kubelet's restart
/// backoff (up to five minutes). The migrating init container has no probe
/// and waits longer.
const DATABASE_PATIENCE: Duration = Duration::from_secs(45);
const MIGRATE_DATABASE_PATIENCE: Duration = Duration::from_secs(300);

/// Returns once the database answers a ping (a pooler such as PgBouncer
/// takes connections while the server behind it is down), trying again with
/// backoff (each failure logged with its cause, so a wrong password shows at
/// once) until `patience` has passed; then the last error. No attempt runs
/// past the patience.
async fn wait_for_database(
    settings: &crate::db::DatabaseSettings,
    patience: Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + patience;
    let mut delays = crate::retry::delays(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        let redacted = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "cannot reach {}: {}",
                crate::secret::redact_urls(&settings.url),
                crate::secret::redact_urls(&e.to_string())
            )
        };
        let attempt = async {
            if settings.is_sqlite() {
                let database = crate::db::connect(settings).await?;
                let pinged = database.ping().await;
                let _ = database.close().await;
                return pinged.map_err(|e| redacted(&e));
            }
            // One connection, not a pool: a pool retries a refused
            // connection until its timeout and then says only that it
            // timed out, where this says "connection refused" (or the
            // password is wrong) at once.
            use sea_orm::sqlx::Connection;
            let mut connection = sea_orm::sqlx::postgres::PgConnection::connect(&settings.url)
                .await
                .map_err(|e| redacted(&e))?;
            let pinged = connection.ping().await.map_err(|e| redacted(&e));
            let _ = connection.close().await;
            pinged
        };
        // Each try at most the pool's own timeout, and never past the patience.
        let left = deadline
            .saturating_duration_since(std::time::Instant::now())
            .min(Duration::from_millis(settings.acquire_timeout_ms.max(1)));
        let outcome = match tokio::time::timeout(left, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Err(anyhow::anyhow!(
                "{} did not answer within {} ms",
                crate::secret::redact_urls(&settings.url),
                left.as_millis()
            )),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(error) if std::time::Instant::now() < deadline => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                // The jitter can take a delay past its cap: 5 s at most.
                let delay = delays
                    .next()
                    .unwrap_or(Duration::from_secs(5))
                    .min(Duration::from_secs(5))
                    .min(left);
                tracing::warn!(
                    error = %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "the database is not reachable yet; waiting for it"
                );
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Connects to and migrates the service's database, builds its gRPC service
/// with `make_service`, and binds the server (tests call this with port 0).
pub async fn build<M, S, F, Fut, X>(
    settings: &ServiceSettings<X>,
    identity: &ServiceIdentity,
    make_service: F,
) -> anyhow::Result<Application>
where
    M: MigratorTrait,
    X: OwnSections,
    F: FnOnce(DatabaseConnection, Background, ServiceSettings<X>) -> Fut,
    Fut: Future<Output = anyhow::Result<S>>,
    S: Served,
{
    let database = if settings.database.run_migrations {
        crate::db::connect_and_migrate::<M>(&settings.database).await?
    } else {
        crate::db::connect(&settings.database).await?
    };
    let background = Background::default();
    if let Some(checkpointer) = crate::db::spawn_wal_checkpointer(&settings.database)? {
        background.add(checkpointer);
    }
    if let Some(keeper) = crate::db::spawn_statistics_keeper(&database, &settings.database) {
        background.add(keeper);
    }
    let service = make_service(database.clone(), background.clone(), settings.clone()).await?;
    let mut app = service
        .add_to(Application::bind(settings, S::NAME, identity.permissions).await?)
        // Every service's operators can list and retry its dead letters.
        .add_service(
            cascade_proto::admin::v1::outbox_admin_service_server::OutboxAdminServiceServer::new(
                crate::outbox::OutboxAdmin::new(database.clone(), identity.outbox_topics),
            ),
        )
        .with_database_health(database)
        .with_schema_of::<M>();
    app.background = background;
    Ok(app)
}

/// A bound, not yet running gRPC server for one Cascade service.
pub struct Application {
    service_name: &'static str,
    /// Internal services served next to it (reflection lists them apart).
    internal: Vec<&'static str>,
    /// Every Cascade service on this port, public and internal: a call to
    /// another is told where it went (`RequestContextLayer`).
    served: Vec<&'static str>,
    settings: ServerSettings,
    auth: Arc<Authenticator>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    routes: Routes,
    health: HealthReporter,
    database: Option<DatabaseConnection>,
    schema: Option<SchemaProbe>,
    background: Background,
}

impl Application {
    /// Binds the listener (port 0 picks a free port) for a service whose
    /// fully-qualified gRPC name is `service_name`.
    pub async fn bind(
        service_settings: &ServiceSettings<impl OwnSections>,
        service_name: &'static str,
        permissions: Permissions,
    ) -> anyhow::Result<Self> {
        let settings = &service_settings.server;
        let auth = Arc::new(Authenticator::from_settings(
            &service_settings.auth,
            permissions,
        )?);
        let tls = service_settings.tls.server_config()?;
        let address: SocketAddr = format!("{}:{}", settings.host, settings.port)
            .parse()
            .map_err(|e| anyhow::anyhow!("server.host/server.port: {e}"))?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
        let local_addr = listener.local_addr()?;

        let (health, health_service) = tonic_health::server::health_reporter();
        // Health answers NOT_SERVING until `run` has checked the database.
        health
            .set_service_status(OVERALL, ServingStatus::NotServing)
            .await;
        health
            .set_service_status(service_name, ServingStatus::NotServing)
            .await;
        health
            .set_service_status(LIVENESS, ServingStatus::NotServing)
            .await;
        // Reflection is added by `run`, once every service is known.
        let routes = Routes::new(health_service);
        Ok(Self {
            service_name,
            internal: Vec::new(),
            served: Vec::new(),
            settings: settings.clone(),
            auth,
            tls,
            listener,
            local_addr,
            routes,
            health,
            database: None,
            schema: None,
            background: Background::default(),
        })
    }

    /// Adds the service's gRPC server.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: GrpcService,
    {
        self.served.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }

    /// Adds an internal gRPC server (for the other Cascade services), on the
    /// same port; its RPCs' permissions are in the service's table
    /// (`ServiceIdentity::permissions`).
    pub fn add_internal_service<S>(mut self, service: S) -> Self
    where
        S: GrpcService,
    {
        self.internal.push(S::NAME);
        self.served.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }

    /// Makes health follow the database: NOT_SERVING while it cannot be reached.
    pub fn with_database_health(mut self, database: DatabaseConnection) -> Self {
        self.database = Some(database);
        self
    }

    /// Makes readiness also require the schema to be current for the
    /// migrations `M` knows (when migrations run apart, `--migrate` in an init
    /// container or a Job, a pod is not ready before they are applied).
    pub fn with_schema_of<M: MigratorTrait>(mut self) -> Self {
        self.schema = Some(Arc::new(|database: DatabaseConnection| {
            Box::pin(async move { crate::db::schema_status::<M>(&database).await })
        }));
        self
    }

    /// The address actually bound (tests bind port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs until `shutdown` completes. Then health turns NOT_SERVING, after
    /// `drain_delay` the listener closes, and in-flight requests get up to
    /// `shutdown_grace` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            service_name,
            internal,
            served,
            settings,
            auth,
            tls,
            listener,
            local_addr,
            routes,
            health,
            database,
            schema,
            background,
        } = self;
        let routes = routes
            .add_service(
                reflection_for(service_name, &internal)
                    .build_v1()
                    .map_err(|e| anyhow::anyhow!("reflection: {e}"))?,
            )
            .add_service(
                reflection_for(service_name, &internal)
                    .build_v1alpha()
                    .map_err(|e| anyhow::anyhow!("reflection: {e}"))?,
            );
        let stopping = Arc::new(AtomicBool::new(false));
        health
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        let probe = match database {
            Some(database) => {
                let status = database_status(&database, schema.as_ref()).await;
                set_status(&health, service_name, status).await;
                Some(tokio::spawn(probe_database(
                    database,
                    schema,
                    health.clone(),
                    service_name,
                    settings.health_check_interval(),
                    stopping.clone(),
                    status,
                )))
            }
            None => {
                set_status(&health, service_name, ServingStatus::Serving).await;
                None
            }
        };

        let layers = tower::ServiceBuilder::new()
            // Outermost, so a preflight is answered before anything else and
            // every answer to an allowed origin, errors included, carries
            // the CORS headers.
            .option_layer(cors_layer(&settings)?)
            // gRPC-Web becomes gRPC here, so every layer below (auth, spans,
            // limits) and the services see one protocol.
            .option_layer(settings.grpc_web.then(tonic_web::GrpcWebLayer::new))
            // One body type with or without gRPC-Web (the layer is optional).
            .map_response(|response: Response<_>| response.map(Body::new))
            // A panic in a handler answers INTERNAL on that call only,
            // instead of tearing down the connection and its other calls.
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(RpcTrace::layer())
            // Inside the trace layer, so spans and metrics see the final code.
            .layer(crate::malformed::MalformedRequest::layer())
            .layer(RequestContextLayer::new(auth, served))
            .layer(crate::limit::ConcurrencyLimit::layer(
                settings.concurrency_limit,
            ))
            .into_inner();
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let (stop_listener, listener_stopped) = tokio::sync::oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| anyhow::anyhow!("tls: {e}"))?;
        }
        let server = builder
            // gRPC-Web comes over HTTP/1.1 from browsers without TLS or ALPN
            // (the gRPC-Web layer refuses any other HTTP/1.1 request).
            .accept_http1(settings.grpc_web)
            .timeout(settings.request_timeout())
            // Detect dead peers so idle connections do not pin resources.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_concurrent_streams(Some(settings.max_concurrent_streams))
            .max_connection_age(settings.max_connection_age())
            // Metadata is small; a client may not make the server buffer megabytes of headers.
            .http2_max_header_list_size(Some(64 * 1024))
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                listener_stopped.await.ok();
            });
        tokio::pin!(server);
        tracing::info!(service = service_name, address = %local_addr, "serving gRPC");

        tokio::select! {
            result = &mut server => {
                stopping.store(true, Ordering::SeqCst);
                background.abort_all();
                result?;
                return Ok(());
            }
            () = shutdown => {}
        }

        tracing::info!(
            service = service_name,
            "shutting down: health is NOT_SERVING"
        );
        stopping.store(true, Ordering::SeqCst);
        if let Some(probe) = probe {
            probe.abort();
        }
        set_status(&health, service_name, ServingStatus::NotServing).await;
        // The server keeps accepting and serving during the drain: a probe
        // or a client on a fresh connection reads NOT_SERVING (or is
        // served) instead of waiting for a listener nobody polls.
        tokio::select! {
            result = &mut server => {
                background.abort_all();
                result?;
                return Ok(());
            }
            () = tokio::time::sleep(settings.drain_delay()) => {}
        }
        stop_listener.send(()).ok();
        background.drain.send_replace(true);
        match tokio::time::timeout(settings.shutdown_grace(), server).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!(
                grace_ms = settings.shutdown_grace_ms,
                "shutdown grace elapsed; closing remaining connections"
            ),
        }
        background.stop().await;
        tracing::info!(service = service_name, "stopped");
        Ok(())
    }
}

/// CORS for gRPC-Web calls from pages of `server.cors_allowed_origins`;
/// none when the list is empty: no `Access-Control-Allow-Origin` is ever
/// granted, so browsers allow no cross-origin call.
fn cors_layer(settings: &ServerSettings) -> anyhow::Result<Option<CorsLayer>> {
    let origins = &settings.cors_allowed_origins;
    if !settings.grpc_web || origins.is_empty() {
        return Ok(None);
    }
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .map(|origin| {
                    HeaderValue::from_str(origin)
                        .map_err(|_| anyhow::anyhow!("server.cors_allowed_origins: {origin:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        )
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            // gRPC-Web calls are POSTs; no cookies (credentials) are
            // allowed: a browser client sends its token in `authorization`.
            .allow_methods([Method::POST])
            .allow_headers(CORS_REQUEST_HEADERS.map(HeaderName::from_static))
            .expose_headers(CORS_EXPOSED_HEADERS.map(HeaderName::from_static))
            .max_age(CORS_MAX_AGE),
    ))
}

/// The answer to a call whose handler panicked: INTERNAL, as for any bug.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %detail, "handler panicked");
    tonic::Status::internal("internal error").into_http()
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cascade_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Reflection lists only this service's own API (the descriptor set holds all
/// three), plus health and reflection.
fn reflection_for(
    service_name: &'static str,
    internal: &[&'static str],
) -> tonic_reflection::server::Builder<'static> {
    internal
        .iter()
        .fold(reflection(), |builder, name| {
            builder.with_service_name(*name)
        })
        .with_service_name(service_name)
        .with_service_name(OUTBOX_ADMIN_SERVICE)
        .with_service_name(HEALTH_SERVICE)
        .with_service_name(REFLECTION_V1)
        .with_service_name(REFLECTION_V1ALPHA)
}

async fn set_status(health: &HealthReporter, service_name: &str, status: ServingStatus) {
    health.set_service_status(OVERALL, status).await;
    health.set_service_status(service_name, status).await;
}

/// Readiness: the database answers and, when checked, its schema is current.
async fn database_status(
    database: &DatabaseConnection,
    schema: Option<&SchemaProbe>,
) -> ServingStatus {
    if let Err(error) = database.ping().await {
        tracing::warn!(error = %crate::secret::redact_urls(&error.to_string()), "database unreachable");
        return ServingStatus::NotServing;
    }
    let Some(schema) = schema else {
        return ServingStatus::Serving;
    };
    match schema(database.clone()).await {
        Ok(SchemaStatus::Current) => ServingStatus::Serving,
        Ok(SchemaStatus::Behind(pending)) => {
            tracing::warn!(
                ?pending,
                "schema is behind this binary: not ready until the migrations run (--migrate)"
            );
            ServingStatus::NotServing
        }
        Err(error) => {
            tracing::warn!(error = %crate::secret::redact_urls(&error.to_string()), "cannot read the schema version");
            ServingStatus::NotServing
        }
    }
}

async fn probe_database(
    database: DatabaseConnection,
    schema: Option<SchemaProbe>,
    health: HealthReporter,
    service_name: &'static str,
    interval: Duration,
    stopping: Arc<AtomicBool>,
    initial: ServingStatus,
) {
    // Only changes are published: health watchers see each transition once.
    let mut last = initial;
    loop {
        tokio::time::sleep(interval).await;
        let status = database_status(&database, schema.as_ref()).await;
        crate::metrics::sample_pool(&database);
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        if last != status {
            if status == ServingStatus::Serving {
                tracing::info!("database reachable and schema current: ready");
            }
            set_status(&health, service_name, status).await;
            last = status;
        }
    }
}

/// SIGINT or SIGTERM. The listeners are registered when this is called,
/// not when the future is first polled: a signal that arrives while the
/// service connects, migrates or builds is kept, where it used to be lost
/// (the handler, once installed, replaces the default "terminate").
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listeners = [
            ("SIGINT", signal(SignalKind::interrupt())),
            ("SIGTERM", signal(SignalKind::terminate())),
        ];
        async move {
            let received = listeners.into_iter().map(|(name, listener)| {
                Box::pin(async move {
                    match listener {
                        Ok(mut listener) => {
                            listener.recv().await;
                            tracing::info!("{name} received");
                        }
                        Err(error) => {
                            tracing::error!(%error, "cannot listen for {name}");
                            std::future::pending::<()>().await;
                        }
                    }
                })
            });
            futures::future::select_all(received).await;
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("SIGINT received");
    }
}
