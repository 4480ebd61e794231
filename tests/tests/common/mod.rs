//! Runs the real service binaries (built by cargo next to this test) on
//! ephemeral ports, each with its own database, and talks to them only
//! through their gRPC APIs.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cascade_chassis::db::DatabaseSettings;
use cascade_proto::lifecycle::v1::lifecycle_internal_service_client::LifecycleInternalServiceClient;
use cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use cascade_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use cascade_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use cascade_testkit::TestDatabase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One running service binary.
pub struct Process {
    pub name: &'static str,
    pub port: u16,
    database_url: String,
    lifecycle_url: String,
    extra_env: Vec<(String, String)>,
    /// Set when the service serves TLS: how this test's client connects.
    tls: Option<ClientTlsConfig>,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// A service binary not yet started; its log goes to `log_dir`.
    pub fn new(
        name: &'static str,
        database_url: &str,
        lifecycle_url: &str,
        log_dir: &std::path::Path,
    ) -> Self {
        Self {
            name,
            port: free_port(),
            database_url: database_url.to_owned(),
            lifecycle_url: lifecycle_url.to_owned(),
            extra_env: Vec::new(),
            tls: None,
            child: None,
            log: log_dir.join(format!("{name}-{}.log", cascade_domain::ids::new_id())),
        }
    }

    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.extra_env.push((key.to_owned(), value.to_owned()));
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

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn channel(&self) -> Channel {
        let mut endpoint = Endpoint::from_shared(self.url()).expect("url");
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).expect("tls config");
        }
        endpoint.connect_lazy()
    }

    /// Starts (or restarts) the binary and waits until it is SERVING.
    pub async fn start(&mut self) {
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
        let mut command = Command::new(path);
        command
            .env(
                format!("CASCADE_{upper}__SERVER__PORT"),
                self.port.to_string(),
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
        if self.name != "lifecycle" {
            command.env(
                format!("CASCADE_{upper}__LIFECYCLE__URL"),
                &self.lifecycle_url,
            );
        }
        for (k, v) in &self.extra_env {
            command.env(k, v);
        }
        self.child = Some(command.spawn().expect("service starts"));
        for _ in 0..200 {
            if self.serving().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{} did not become SERVING; log:\n{}",
            self.name,
            self.log_text()
        );
    }

    pub async fn serving(&self) -> bool {
        let mut health = HealthClient::new(self.channel());
        matches!(
            health.check(HealthCheckRequest { service: String::new() }).await,
            Ok(r) if r.get_ref().status == 1
        )
    }

    /// SIGKILL: no shutdown, no flushing.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill");
            let _ = child.wait().await;
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn terminate(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Some(pid) = child.id()
        {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .expect("stops within 30 s")
                .expect("exit status");
            assert!(status.success(), "{} exited with {status}", self.name);
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The three services, each with its own database on one backend.
pub struct System {
    pub lifecycle: Vec<Process>,
    pub scoring: Vec<Process>,
    pub opportunity: Vec<Process>,
    _databases: Vec<TestDatabase>,
    _dir: TempDir,
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

async fn database_like(sqlite: bool) -> TestDatabase {
    if sqlite {
        TestDatabase::sqlite()
    } else {
        TestDatabase::postgres().await.expect("postgres configured")
    }
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

    async fn start_full(
        backend: &TestDatabase,
        replicas: usize,
        extra_env: Vec<(String, String)>,
        password: Option<&str>,
    ) -> Self {
        let sqlite = backend.settings.is_sqlite();
        let dir = TempDir(
            std::env::temp_dir().join(format!("cascade-e2e-{}", cascade_domain::ids::new_id())),
        );
        std::fs::create_dir_all(&dir.0).expect("temp dir");
        let databases = vec![
            database_like(sqlite).await,
            database_like(sqlite).await,
            database_like(sqlite).await,
        ];
        let lifecycle_ports: Vec<u16> = (0..replicas).map(|_| free_port()).collect();
        let lifecycle_url = format!("http://127.0.0.1:{}", lifecycle_ports[0]);
        let make = |name: &'static str, db: &DatabaseSettings, port: u16, n: usize| Process {
            name,
            port,
            database_url: match password {
                Some(password) if !sqlite => {
                    db.url
                        .replacen("://postgres@", &format!("://postgres:{password}@"), 1)
                }
                _ => db.url.clone(),
            },
            lifecycle_url: lifecycle_url.clone(),
            extra_env: extra_env.clone(),
            tls: None,
            child: None,
            log: dir.0.join(format!("{name}-{n}.log")),
        };
        let mut system = Self {
            lifecycle: lifecycle_ports
                .iter()
                .enumerate()
                .map(|(n, port)| make("lifecycle", &databases[0].settings, *port, n))
                .collect(),
            scoring: (0..replicas)
                .map(|n| make("scoring", &databases[1].settings, free_port(), n))
                .collect(),
            opportunity: (0..replicas)
                .map(|n| make("opportunity", &databases[2].settings, free_port(), n))
                .collect(),
            _databases: databases,
            _dir: dir,
        };
        for p in system
            .lifecycle
            .iter_mut()
            .chain(system.scoring.iter_mut())
            .chain(system.opportunity.iter_mut())
        {
            p.start().await;
        }
        system
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
        cascade_testkit::Lifecycle::new(
            self.lifecycle[n].channel(),
            cascade_testkit::Caller::tenant(tenant),
        )
    }

    /// Scoring replica `n`'s typed client (cascade-testkit), as `tenant`.
    pub fn scoring_as(&self, n: usize, tenant: &str) -> cascade_testkit::Scoring {
        cascade_testkit::Scoring::new(
            self.scoring[n].channel(),
            cascade_testkit::Caller::tenant(tenant),
        )
    }

    pub fn scoring(&self, n: usize) -> ScoringServiceClient<Channel> {
        ScoringServiceClient::new(self.scoring[n].channel())
    }

    pub fn opportunity(&self, n: usize) -> OpportunityServiceClient<Channel> {
        OpportunityServiceClient::new(self.opportunity[n].channel())
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

/// One request received by the webhook receiver.
#[derive(Debug, Clone)]
pub struct Received {
    pub notification_id: String,
    pub body: String,
}

/// A local HTTP receiver for notification webhooks.
#[derive(Clone)]
pub struct WebhookReceiver {
    pub url: String,
    accepted: Arc<Mutex<Vec<Received>>>,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let shared = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0_u8; 8192];
                    loop {
                        let Ok(n) = socket.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buffer).to_string();
                        if let Some(pos) = text.find("\r\n\r\n") {
                            let head = &text[..pos];
                            let length = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if buffer.len() >= pos + 4 + length {
                                let id = head
                                    .lines()
                                    .find_map(|l| {
                                        let (k, v) = l.split_once(':')?;
                                        k.eq_ignore_ascii_case("x-cascade-notification-id")
                                            .then(|| v.trim().to_owned())
                                    })
                                    .unwrap_or_default();
                                let body =
                                    String::from_utf8_lossy(&buffer[pos + 4..pos + 4 + length])
                                        .to_string();
                                shared.lock().expect("lock").push(Received {
                                    notification_id: id,
                                    body,
                                });
                                let _ = socket
                                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                    .await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self { url, accepted }
    }

    pub fn accepted(&self) -> Vec<Received> {
        self.accepted.lock().expect("lock").clone()
    }

    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..400 {
            if self.accepted().len() >= n {
                return self.accepted();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("webhook got {} of {n} notifications", self.accepted().len());
    }
}

/// A TCP proxy in front of PostgreSQL that a test can cut and restore, to
/// make the database unreachable without stopping the shared server.
pub struct DatabaseProxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl DatabaseProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (up2, generation2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let my_generation = generation2.load(Ordering::SeqCst);
                let generation = generation2.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let cut = async {
                        while generation.load(Ordering::SeqCst) == my_generation {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy(&mut cr, &mut sw) => {}
                        _ = tokio::io::copy(&mut sr, &mut cw) => {}
                        () = cut => {}
                    }
                });
            }
        });
        Self {
            port,
            up,
            generation,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
