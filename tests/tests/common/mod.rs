//! Runs the real service binaries (built by cargo next to this test), each
//! with its own database, and talks to them only through their gRPC APIs.
//! A process listens on a port the system picks (port 0), learned from the
//! log line announcing its listener; restarted, it comes back on that port,
//! so clients and the services calling it keep working.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cascade_proto::lifecycle::v1::lifecycle_internal_service_client::LifecycleInternalServiceClient;
use cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use cascade_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use cascade_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use cascade_testkit::{Caller, TestDatabase, eventually, wait_until_delivered, wait_until_folded};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The folder holding the workspace's binaries (`target/debug`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .to_path_buf()
}

/// Text shown as it is (a log, with its line breaks) when a wait fails.
pub struct Verbatim(pub String);

impl std::fmt::Debug for Verbatim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One running service binary.
pub struct Process {
    pub name: &'static str,
    /// Learned from the log at the first start, reused by restarts.
    port: Option<u16>,
    database_url: String,
    /// The lifecycle a scoring or opportunity process calls.
    lifecycle_url: Option<String>,
    extra_env: Vec<(String, String)>,
    /// Set when the service serves TLS: how this test's client connects.
    tls: Option<ClientTlsConfig>,
    /// Started through `setsid`: the leader of a session of its own.
    own_session: bool,
    child: Option<Child>,
    log: PathBuf,
    /// Where the current start's lines begin in the log.
    log_start: u64,
}

impl Process {
    /// A service binary not yet started; its log goes to `log_dir`.
    /// Scoring and opportunity also need [`Process::calling`].
    pub fn new(name: &'static str, database_url: &str, log_dir: &Path) -> Self {
        let log = log_dir.join(format!("{name}-{}.log", cascade_domain::ids::new_id()));
        Self::logging_to(name, database_url, log)
    }

    fn logging_to(name: &'static str, database_url: &str, log: PathBuf) -> Self {
        Self {
            name,
            port: None,
            database_url: database_url.to_owned(),
            lifecycle_url: None,
            extra_env: Vec::new(),
            tls: None,
            own_session: false,
            child: None,
            log,
            log_start: 0,
        }
    }

    /// The lifecycle this service calls (`CASCADE_<SERVICE>__LIFECYCLE__URL`).
    pub fn calling(mut self, lifecycle_url: &str) -> Self {
        self.lifecycle_url = Some(lifecycle_url.to_owned());
        self
    }

    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.set_env(key, value);
        self
    }

    /// Sets `key` for the next start (replacing an earlier value).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.retain(|(k, _)| k != key);
        self.extra_env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts the binary as the leader of a session of its own (through
    /// util-linux's `setsid`, which runs it in place: the pid is the
    /// service's), as a systemd unit or a process started from its own shell
    /// would be. `setsid` forks only when it leads its process group, so
    /// `start` must not give the child a group of its own.
    pub fn in_own_session(mut self) -> Self {
        self.own_session = true;
        self
    }

    /// The test's clients (and the readiness check) connect with `tls`.
    pub fn with_client_tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        tokio::time::timeout(limit, child.wait())
            .await
            .expect("exited in time")
            .expect("exit status")
    }

    /// The port it listens on (known once it was started).
    pub fn port(&self) -> u16 {
        self.port
            .unwrap_or_else(|| panic!("{} was never started: no port yet", self.name))
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port())
    }

    pub fn channel(&self) -> Channel {
        let mut endpoint = Endpoint::from_shared(self.url()).expect("url");
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).expect("tls config");
        }
        endpoint.connect_lazy()
    }

    /// Starts the binary (on port 0 the first time, on the port it had
    /// after that) and waits until it is SERVING.
    /// Starts the binary and waits until it serves.
    pub async fn start(&mut self) {
        self.spawn();
        self.ready().await;
    }

    /// Starts the binary without waiting for it (`ready` waits).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let path = bin_dir().join(format!("cascade-{}", self.name));
        assert!(
            path.exists(),
            "{} is missing: run `cargo build --workspace --bins` (make test does)",
            path.display()
        );
        let upper = self.name.to_ascii_uppercase();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        // This start's lines come after what earlier runs wrote.
        let log_start = log.metadata().expect("log metadata").len();
        self.log_start = log_start;
        let mut command = if self.own_session {
            let mut command = Command::new("setsid");
            command.arg(path);
            command
        } else {
            Command::new(path)
        };
        command
            .env(
                format!("CASCADE_{upper}__SERVER__PORT"),
                self.port.unwrap_or(0).to_string(),
            )
            .env(
                format!("CASCADE_{upper}__DATABASE__URL"),
                &self.database_url,
            )
            .env(format!("CASCADE_{upper}__OUTBOX__POLL_INTERVAL_MS"), "50")
            .env(format!("CASCADE_{upper}__OUTBOX__MIN_BACKOFF_MS"), "50")
            .env(format!("CASCADE_{upper}__OUTBOX__MAX_BACKOFF_MS"), "500")
            .env(
                format!("CASCADE_{upper}__SERVER__HEALTH_CHECK_INTERVAL_MS"),
                "200",
            )
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        // Lifecycle has no [lifecycle] section (it would refuse the key).
        match &self.lifecycle_url {
            Some(url) => {
                command.env(format!("CASCADE_{upper}__LIFECYCLE__URL"), url);
                // Erasures are polled for, and settle: quickly in tests.
                command.env(
                    format!("CASCADE_{upper}__LIFECYCLE__ERASURE_POLL_MS"),
                    "100",
                );
                command.env(
                    format!("CASCADE_{upper}__LIFECYCLE__ERASURE_SETTLE_MS"),
                    "2000",
                );
            }
            None => {
                assert_eq!(
                    self.name, "lifecycle",
                    "{} calls lifecycle: give its URL with Process::calling",
                    self.name
                );
                // Confirmations are taken as soon as the services' settle allows.
                command.env("CASCADE_LIFECYCLE__ERASURE__MIN_SETTLE_MS", "2000");
                // The tests' webhook receivers listen on 127.0.0.1.
                command.env(
                    "CASCADE_LIFECYCLE__WEBHOOK__ALLOW_PRIVATE_ADDRESSES",
                    "true",
                );
            }
        }
        for (k, v) in &self.extra_env {
            command.env(k, v);
        }
        self.child = Some(command.spawn().expect("service starts"));
    }

    /// Waits until the process `spawn` started serves.
    pub async fn ready(&mut self) {
        let log_start = self.log_start;
        if self.port.is_none() {
            let what = format!("{} to announce its listener", self.name);
            let port = eventually(&what, async || {
                self.assert_running();
                let printed = self.log_since(log_start);
                announced_port(&printed).ok_or(Verbatim(printed))
            })
            .await;
            self.port = Some(port);
        }
        let what = format!("{} to be SERVING on port {}", self.name, self.port());
        eventually(&what, async || {
            self.assert_running();
            if self.serving().await {
                Ok(())
            } else {
                Err(Verbatim(self.log_since(log_start)))
            }
        })
        .await;
    }

    /// Fails the test with the log if the process has exited.
    fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("started");
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{} exited with {status}; log:\n{}",
                self.name,
                self.log_text()
            );
        }
    }

    pub async fn serving(&self) -> bool {
        self.health("").await == Ok(ServingStatus::Serving)
    }

    /// The health status of `service` ("" is readiness, `liveness` the
    /// process), or the call's status code when it is not answered.
    pub async fn health(&self, service: &str) -> Result<ServingStatus, tonic::Code> {
        let mut health = HealthClient::new(self.channel());
        let answer = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map_err(|s| s.code())?;
        Ok(ServingStatus::try_from(answer.get_ref().status).unwrap_or(ServingStatus::Unknown))
    }

    /// SIGKILL: no shutdown, no flushing.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill");
            let _ = child.wait().await;
        }
    }

    /// Sends SIGTERM and returns at once (`wait_exit` waits).
    pub fn sigterm(&self) {
        let pid = self.pid().expect("running");
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn terminate(&mut self) {
        let running = self.pid().is_some();
        if running {
            self.sigterm();
        }
        if let Some(mut child) = self.child.take()
            && running
        {
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .expect("stops within 30 s")
                .expect("exit status");
            assert!(status.success(), "{} exited with {status}", self.name);
        }
    }

    /// The port of the Prometheus endpoint it announced (started with
    /// `..._TELEMETRY__METRICS_PORT=0`).
    pub async fn metrics_port(&self) -> u16 {
        eventually(
            &format!("{} to announce its metrics port", self.name),
            async || {
                let log = self.log_text();
                announced_in(&log, "serving metrics").ok_or(Verbatim(log))
            },
        )
        .await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the log holds after its first `from` bytes.
    fn log_since(&self, from: u64) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }
}

/// The port in the line announcing the gRPC listener, as the chassis logs
/// it (`server.rs`: `serving gRPC` with `address=127.0.0.1:PORT` in text
/// logs, `"address":"127.0.0.1:PORT"` in JSON ones).
fn announced_port(log: &str) -> Option<u16> {
    announced_in(log, "serving gRPC")
}

/// The port a log line containing `what` announces (`address=...`).
fn announced_in(log: &str, what: &str) -> Option<u16> {
    log.lines()
        .filter(|line| line.contains(what))
        .find_map(|line| {
            let (_, rest) = line
                .split_once("address=")
                .or_else(|| line.split_once("\"address\":\""))?;
            let address = rest.split(|c: char| c.is_whitespace() || c == '"').next()?;
            address
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.port())
        })
}

/// The value of the first sample of `name` on a Prometheus endpoint that has
/// all of `labels` (`key="value"`), or the whole page when none has.
pub async fn metric(port: u16, name: &str, labels: &[&str]) -> Result<f64, String> {
    let text = http_get(port, "/metrics").await?;
    text.lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
                && labels.iter().all(|label| l.contains(label))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .ok_or(text)
}

/// A plain HTTP/1.1 GET on 127.0.0.1 (the metrics endpoint); the body, or
/// why there is none.
pub async fn http_get(port: u16, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let response = String::from_utf8_lossy(&response).into_owned();
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(response),
    }
}

/// The three services, each with its own database on one backend.
pub struct System {
    pub lifecycle: Vec<Process>,
    pub scoring: Vec<Process>,
    pub opportunity: Vec<Process>,
    lifecycle_db: TestDatabase,
    scoring_db: TestDatabase,
    opportunity_db: TestDatabase,
    _dir: cascade_testkit::TempDir,
}

impl System {
    /// Starts `replicas` instances of each service (replicas share a database).
    pub async fn start(backend: &TestDatabase, replicas: usize) -> Self {
        Self::start_with(backend, replicas, Vec::new()).await
    }

    pub async fn start_with(
        backend: &TestDatabase,
        replicas: usize,
        extra_env: Vec<(String, String)>,
    ) -> Self {
        Self::start_full(backend, replicas, extra_env, None).await
    }

    /// One replica each, with `password` in PostgreSQL database URLs
    /// (trust authentication accepts any), to check it is never printed.
    pub async fn start_with_password(
        backend: &TestDatabase,
        extra_env: Vec<(String, String)>,
        password: &str,
    ) -> Self {
        Self::start_full(backend, 1, extra_env, Some(password)).await
    }

    /// Lifecycle first, on port 0; scoring and opportunity then call the
    /// address the first lifecycle replica announced.
    async fn start_full(
        backend: &TestDatabase,
        replicas: usize,
        extra_env: Vec<(String, String)>,
        password: Option<&str>,
    ) -> Self {
        let dir = cascade_testkit::TempDir::new("e2e");
        let (lifecycle_db, scoring_db, opportunity_db) = (
            backend.like().await,
            backend.like().await,
            backend.like().await,
        );
        let make = |name: &'static str, db: &TestDatabase, n: usize| {
            let url = match password {
                Some(password) if !db.settings.is_sqlite() => {
                    db.settings
                        .url
                        .replacen("://postgres@", &format!("://postgres:{password}@"), 1)
                }
                _ => db.settings.url.clone(),
            };
            let mut process =
                Process::logging_to(name, &url, dir.path().join(format!("{name}-{n}.log")));
            process.extra_env.clone_from(&extra_env);
            process
        };
        let mut lifecycle: Vec<Process> = (0..replicas)
            .map(|n| make("lifecycle", &lifecycle_db, n))
            .collect();
        // Replicas one after another: the first applies the migrations.
        for p in &mut lifecycle {
            p.start().await;
        }
        let lifecycle_url = lifecycle[0].url();
        let mut system = Self {
            lifecycle,
            scoring: (0..replicas)
                .map(|n| make("scoring", &scoring_db, n).calling(&lifecycle_url))
                .collect(),
            opportunity: (0..replicas)
                .map(|n| make("opportunity", &opportunity_db, n).calling(&lifecycle_url))
                .collect(),
            lifecycle_db,
            scoring_db,
            opportunity_db,
            _dir: dir,
        };
        for p in system
            .scoring
            .iter_mut()
            .chain(system.opportunity.iter_mut())
        {
            p.start().await;
        }
        system
    }

    /// The databases of lifecycle, scoring and opportunity.
    pub fn databases(&self) -> [(&'static str, &TestDatabase); 3] {
        [
            ("lifecycle", &self.lifecycle_db),
            ("scoring", &self.scoring_db),
            ("opportunity", &self.opportunity_db),
        ]
    }

    pub fn lifecycle(&self, n: usize) -> LifecycleServiceClient<Channel> {
        LifecycleServiceClient::new(self.lifecycle[n].channel())
    }

    /// Lifecycle's internal service (what scoring and opportunity call).
    pub fn lifecycle_internal(&self, n: usize) -> LifecycleInternalServiceClient<Channel> {
        LifecycleInternalServiceClient::new(self.lifecycle[n].channel())
    }

    /// Lifecycle replica `n`'s typed client (cascade-testkit), as `tenant`.
    pub fn lifecycle_as(&self, n: usize, tenant: &str) -> cascade_testkit::Lifecycle {
        self.lifecycle_with(n, Caller::tenant(tenant))
    }

    /// Lifecycle replica `n`'s typed client, calling as `caller` (a token).
    pub fn lifecycle_with(&self, n: usize, caller: Caller) -> cascade_testkit::Lifecycle {
        cascade_testkit::Lifecycle::new(self.lifecycle[n].channel(), caller)
    }

    /// Scoring replica `n`'s typed client (cascade-testkit), as `tenant`.
    pub fn scoring_as(&self, n: usize, tenant: &str) -> cascade_testkit::Scoring {
        self.scoring_with(n, Caller::tenant(tenant))
    }

    /// Scoring replica `n`'s typed client, calling as `caller` (a token).
    pub fn scoring_with(&self, n: usize, caller: Caller) -> cascade_testkit::Scoring {
        cascade_testkit::Scoring::new(self.scoring[n].channel(), caller)
    }

    /// Opportunity replica `n`'s typed client (cascade-testkit), as `tenant`.
    pub fn opportunity_as(&self, n: usize, tenant: &str) -> cascade_testkit::Opportunity {
        self.opportunity_with(n, Caller::tenant(tenant))
    }

    /// Opportunity replica `n`'s typed client, calling as `caller` (a token).
    pub fn opportunity_with(&self, n: usize, caller: Caller) -> cascade_testkit::Opportunity {
        cascade_testkit::Opportunity::new(self.opportunity[n].channel(), caller)
    }

    pub fn scoring(&self, n: usize) -> ScoringServiceClient<Channel> {
        ScoringServiceClient::new(self.scoring[n].channel())
    }

    pub fn opportunity(&self, n: usize) -> OpportunityServiceClient<Channel> {
        OpportunityServiceClient::new(self.opportunity[n].channel())
    }

    /// Waits until every outbox is drained: scores folded and delivered to
    /// lifecycle, opportunity events applied, notifications sent. Then
    /// nothing more is on its way (the barrier before asserting that
    /// something did not happen).
    pub async fn settled(&self) {
        wait_until_folded(&self.scoring_db.settings).await;
        wait_until_delivered(&self.scoring_db.settings, "engagement_scores").await;
        wait_until_delivered(&self.opportunity_db.settings, "opportunity_events").await;
        wait_until_delivered(&self.lifecycle_db.settings, "notifications").await;
    }

    /// Writes a pending fold of `tenant` that cannot be read (a disk fault,
    /// a hand edit) into scoring's database; the connection, to repair it.
    pub async fn damage_a_pending_fold(&self, tenant: &str) -> sea_orm::DatabaseConnection {
        use sea_orm::ConnectionTrait;
        let conn = cascade_chassis::db::connect(&self.scoring_db.settings)
            .await
            .expect("scoring's database");
        conn.execute_raw(cascade_chassis::db::statement(
            conn.get_database_backend(),
            "INSERT INTO pending_folds (tenant_id, recorded_at_ms, buckets) VALUES ($1, 0, $2)",
            [tenant.into(), sea_orm::Value::from(vec![0xFF_u8, 0xFF])],
        ))
        .await
        .expect("a damaged pending fold");
        conn
    }

    /// Stops every process with SIGTERM (they must exit cleanly).
    pub async fn stop(mut self) {
        for p in self
            .opportunity
            .iter_mut()
            .chain(self.scoring.iter_mut())
            .chain(self.lifecycle.iter_mut())
        {
            p.terminate().await;
        }
    }
}

/// A TCP proxy in front of PostgreSQL that a test can cut and restore, to
/// make the database unreachable without stopping the shared server.
pub struct DatabaseProxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    /// Bumped by every cut; each connection ends when it changes.
    cuts: Arc<tokio::sync::watch::Sender<u64>>,
}

impl DatabaseProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let cuts = Arc::new(tokio::sync::watch::Sender::new(0_u64));
        let (accepting, cut_signal) = (up.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                // Subscribed before the task runs, so a cut from now on is seen.
                let mut cut = cut_signal.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut cr, &mut sw) => {}
                        _ = tokio::io::copy(&mut sr, &mut cw) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { port, up, cuts }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
