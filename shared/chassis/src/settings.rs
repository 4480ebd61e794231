//! Settings loading, shared by the three services: defaults, then an optional
//! TOML file, then environment variables `CASCADE_<SERVICE>__<SECTION>__<KEY>`.
//! An unknown key or a bad value stops start-up with a message naming it.

use std::path::Path;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthSettings, Authenticator, Permissions};
use crate::db::{DEFAULT_ANALYZE_INTERVAL_MS, DatabaseSettings};
pub use crate::error::SettingsError;
use crate::outbox::OutboxSettings;
use crate::secret::redact_urls;
use crate::telemetry::TelemetrySettings;
use crate::tls::TlsSettings;

/// Environment variable naming an optional settings file (also `--config PATH`).
pub const CONFIG_FILE_ENV: &str = "CASCADE_CONFIG_FILE";

/// The listener and the request-handling limits of a service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on; 0 picks a free one.
    pub port: u16,
    /// Longest a request may run before DEADLINE_EXCEEDED / CANCELLED.
    pub request_timeout_ms: u64,
    /// Requests handled at once across all connections; more wait.
    pub concurrency_limit: usize,
    /// After SIGTERM: how long health reports NOT_SERVING before the listener
    /// closes, so load balancers stop sending new calls.
    pub drain_delay_ms: u64,
    /// After the listener closes: how long in-flight requests may finish.
    /// As long as `request_timeout_ms` by default, so a call that started
    /// just before the listener closed may run its whole course.
    pub shutdown_grace_ms: u64,
    /// How often the database is checked for the health status.
    pub health_check_interval_ms: u64,
    /// Largest request message accepted, in bytes; larger ones get
    /// RESOURCE_EXHAUSTED before they are decoded.
    pub max_message_bytes: usize,
    /// Streams (calls) one HTTP/2 connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Connections are closed (gracefully) after this long, so no client
    /// pins a replica forever and load spreads after scaling.
    pub max_connection_age_ms: u64,
    /// Ingested events (activities) a tenant may send per second; 0: no limit.
    pub ingest_rate_per_tenant: u32,
    /// Events a tenant may send at once above its rate (at least the largest batch).
    pub ingest_burst_per_tenant: u32,
    /// Events (activities) one replica holds in flight at once, from every
    /// tenant; past it calls are refused with UNAVAILABLE (OVERLOADED) and
    /// streams slowed down. 0: no bound; else at least the largest batch.
    pub ingest_in_flight: u32,
    /// The nice value (0-19) the service's threads run at least at: a
    /// higher one lets other processes on the host take a free core first.
    /// Scoring's default is 10, the others' 0 (`priority`). It has effect
    /// between processes of one cgroup (one host, `make run`, systemd);
    /// pods compete through their CPU requests instead.
    pub nice: i32,
    /// Also serve gRPC-Web (browsers) on the same port: HTTP/1.1 is
    /// accepted, for gRPC-Web only.
    pub grpc_web: bool,
    /// Web origins (`https://app.example.com`) whose pages may call the
    /// service through gRPC-Web; `*` for any. Empty: no cross-origin access.
    /// From the environment: comma-separated.
    // An empty list vanishes from the `config` defaults; serde fills it.
    #[serde(default)]
    pub cors_allowed_origins: Vec<String>,
}

impl ServerSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.drain_delay_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
    pub fn health_check_interval(&self) -> Duration {
        Duration::from_millis(self.health_check_interval_ms)
    }

    /// Defaults for a service on `port`.
    pub fn with_port(port: u16) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port,
            request_timeout_ms: 30_000,
            concurrency_limit: 1024,
            drain_delay_ms: 0,
            shutdown_grace_ms: 30_000,
            health_check_interval_ms: 5_000,
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 256,
            max_connection_age_ms: 30 * 60 * 1000,
            ingest_rate_per_tenant: 200_000,
            ingest_burst_per_tenant: 400_000,
            // 16 batches of the largest size: ~16 MiB of decoded
            // activities (docs/decisions.md).
            ingest_in_flight: 16_000,
            nice: 0,
            grpc_web: true,
            cors_allowed_origins: Vec::new(),
        }
    }

    pub fn max_connection_age(&self) -> Duration {
        Duration::from_millis(self.max_connection_age_ms)
    }
}

/// The settings read from the environment as comma-separated lists.
const LIST_KEYS: [&str; 1] = ["server.cors_allowed_origins"];

/// The sections every service has; a service adds its own (`OwnSections`).
pub const COMMON_SECTIONS: [&str; 6] = ["server", "database", "telemetry", "outbox", "auth", "tls"];

/// The sections a service reads beyond the common ones, so its settings show
/// exactly what it reads: a key of another service's section is refused.
pub trait OwnSections:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static
{
    /// Their top-level keys.
    const SECTIONS: &'static [&'static str];
    fn defaults() -> Self;
    /// Defaults for in-process tests.
    fn for_tests() -> Self {
        Self::defaults()
    }
    /// Checks across sections, with the whole settings at hand.
    fn validate(_settings: &ServiceSettings<Self>) -> Result<(), SettingsError> {
        Ok(())
    }
}

/// No sections of its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NoSections {}

impl OwnSections for NoSections {
    const SECTIONS: &'static [&'static str] = &[];
    fn defaults() -> Self {
        Self {}
    }
}

/// The settings of a service: the common sections and its own (`own`, whose
/// sections sit at the top level beside the common ones: `[lifecycle]`,
/// `CASCADE_SCORING__LIFECYCLE__URL`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceSettings<X = NoSections> {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub telemetry: TelemetrySettings,
    pub outbox: OutboxSettings,
    pub auth: AuthSettings,
    pub tls: TlsSettings,
    #[serde(flatten)]
    pub own: X,
}

impl<X: OwnSections> ServiceSettings<X> {
    /// Loads and validates a service's settings (see [`load_from`]): the
    /// defaults, then `file` (from `--config` or `CASCADE_CONFIG_FILE`),
    /// then the environment.
    pub fn load(identity: ServiceIdentity, file: Option<&Path>) -> Result<Self, SettingsError> {
        let mut settings: Self = load_from(identity, file, None)?;
        settings.database.default_pool(identity.sqlite_connections);
        validate_common(&settings.server, &settings.database, &settings.telemetry)?;
        let outbox = &settings.outbox;
        if outbox.poll_interval_ms == 0 || outbox.min_backoff_ms == 0 || outbox.lease_ms == 0 {
            return Err(SettingsError::new(
                "outbox.poll_interval_ms, outbox.min_backoff_ms and outbox.lease_ms must be greater than 0",
            ));
        }
        // Keys and certificates are read now so a bad path stops start-up.
        Authenticator::from_settings(&settings.auth, identity.permissions)?;
        settings.tls.server_config()?;
        if outbox.max_backoff_ms < outbox.min_backoff_ms {
            return Err(SettingsError::new(
                "outbox.max_backoff_ms: must be at least outbox.min_backoff_ms",
            ));
        }
        X::validate(&settings)?;
        Ok(settings)
    }

    /// The same common sections with other own sections (tests build one
    /// service's settings from another's).
    pub fn with_own<Y: OwnSections>(self, own: Y) -> ServiceSettings<Y> {
        ServiceSettings {
            server: self.server,
            database: self.database,
            telemetry: self.telemetry,
            outbox: self.outbox,
            auth: self.auth,
            tls: self.tls,
            own,
        }
    }

    /// Settings for tests: an ephemeral port on 127.0.0.1 and the given database.
    pub fn for_tests(database: DatabaseSettings) -> Self {
        let mut server = ServerSettings::with_port(0);
        server.shutdown_grace_ms = 5_000;
        server.health_check_interval_ms = 500;
        Self {
            server,
            database,
            telemetry: TelemetrySettings::default(),
            outbox: OutboxSettings {
                poll_interval_ms: 50,
                min_backoff_ms: 50,
                max_backoff_ms: 300,
                lease_ms: 5_000,
                ..OutboxSettings::default()
            },
            auth: AuthSettings::default(),
            tls: TlsSettings::default(),
            own: X::for_tests(),
        }
    }
}

/// Which service is loading, for its env prefix and defaults.
#[derive(Debug, Clone, Copy)]
pub struct ServiceIdentity {
    /// `lifecycle`, `scoring` or `opportunity`.
    pub name: &'static str,
    pub default_port: u16,
    /// Pool size on SQLite unless `database.max_connections` is set. A
    /// service whose writes queue in process (scoring's group commit) needs
    /// few: SQLite writes one transaction at a time and each connection keeps
    /// its own cache and prepared statements (~5 MiB each in scoring). One
    /// whose concurrent writers wait for SQLite's lock while holding a
    /// connection (lifecycle) needs more, or its reads wait behind them
    /// (docs/performance.md).
    pub sqlite_connections: u32,
    /// The permission each of its RPCs needs in `jwt` mode.
    pub permissions: Permissions,
    /// `server.nice` unless set: 10 for scoring, whose ingest is
    /// throughput work that yields a core to reads (`priority`).
    pub default_nice: i32,
    /// The topics of its outbox, the ones OutboxAdminService names.
    pub outbox_topics: &'static [&'static str],
}

impl ServiceIdentity {
    /// `CASCADE_LIFECYCLE` for lifecycle.
    pub fn env_prefix(&self) -> String {
        format!("CASCADE_{}", self.name.to_ascii_uppercase())
    }
}

/// An environment for [`load_from`] made of these variables only (tests).
pub fn environment_of(pairs: &[(&str, &str)]) -> Option<config::Map<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// A service's settings: built-in defaults, then `file`, then the environment
/// (given here by tests; the process's own otherwise).
pub fn load_from<X: OwnSections>(
    identity: ServiceIdentity,
    file: Option<&Path>,
    environment: Option<config::Map<String, String>>,
) -> Result<ServiceSettings<X>, SettingsError> {
    let defaults = ServiceSettings {
        server: ServerSettings {
            nice: identity.default_nice,
            ..ServerSettings::with_port(identity.default_port)
        },
        database: DatabaseSettings {
            url: format!("sqlite://data/{}.db", identity.name),
            max_connections: None,
            acquire_timeout_ms: 5_000,
            run_migrations: true,
            analyze_interval_ms: DEFAULT_ANALYZE_INTERVAL_MS,
        },
        telemetry: TelemetrySettings::default(),
        outbox: OutboxSettings::default(),
        auth: AuthSettings::default(),
        tls: TlsSettings::default(),
        own: X::defaults(),
    };
    let defaults = Config::try_from(&defaults).map_err(|e| SettingsError::new(e.to_string()))?;
    let mut builder = Config::builder().add_source(defaults);
    if let Some(path) = file {
        // Read here so that every failure names the file.
        let text = std::fs::read_to_string(path).map_err(|e| {
            SettingsError::new(format!(
                "cannot read the settings file {}: {e}",
                path.display()
            ))
        })?;
        let parsed = Config::builder()
            .add_source(File::from_str(&text, FileFormat::Toml))
            .build()
            .map_err(|e| {
                SettingsError::new(format!("the settings file {}: {e}", path.display()))
            })?;
        builder = builder.add_source(parsed);
    }
    let env = Environment::with_prefix(&identity.env_prefix())
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",");
    let env = LIST_KEYS
        .iter()
        .fold(env, |env, key| env.with_list_parse_key(key))
        .source(environment);
    let config = builder
        .add_source(env)
        .build()
        .map_err(|e| SettingsError::new(redact_urls(&e.to_string())))?;
    // Each section refuses keys it does not know; the sections themselves
    // are checked here (the service's own sit beside the common ones).
    let sections: std::collections::BTreeMap<String, serde::de::IgnoredAny> = config
        .clone()
        .try_deserialize()
        .map_err(|e| SettingsError::new(redact_urls(&e.to_string())))?;
    if let Some(unknown) = sections
        .keys()
        .find(|k| !COMMON_SECTIONS.contains(&k.as_str()) && !X::SECTIONS.contains(&k.as_str()))
    {
        let mut known: Vec<&str> = COMMON_SECTIONS.to_vec();
        known.extend(X::SECTIONS);
        return Err(SettingsError::new(format!(
            "unknown section `{unknown}`: {} reads {} (environment variables: {}__<SECTION>__<KEY>)",
            identity.name,
            known.join(", "),
            identity.env_prefix()
        )));
    }
    let mut settings: ServiceSettings<X> = config.clone().try_deserialize().map_err(|e| {
        // Through `flatten` a bad value of the service's own sections loses
        // its key; read alone, the config crate names it.
        let e = match config.try_deserialize::<X>() {
            Err(named) => named,
            Ok(_) => e,
        };
        SettingsError::new(format!(
            "{} (environment variables: {}__<SECTION>__<KEY>)",
            redact_urls(&e.to_string()),
            identity.env_prefix()
        ))
    })?;
    // Browsers send origins lower-case and match them byte for byte; an
    // empty variable (or a trailing comma) means no origin, not "".
    settings.server.cors_allowed_origins = settings
        .server
        .cors_allowed_origins
        .iter()
        .map(|origin| origin.trim().to_ascii_lowercase())
        .filter(|origin| !origin.is_empty())
        .collect();
    Ok(settings)
}

/// Checks the shared sections; services call it from their own validation.
pub fn validate_common(
    server: &ServerSettings,
    database: &DatabaseSettings,
    telemetry: &TelemetrySettings,
) -> Result<(), SettingsError> {
    if server.host.parse::<std::net::IpAddr>().is_err() {
        return Err(SettingsError::new(format!(
            "server.host: {:?} is not an IP address (use 0.0.0.0 to listen on all interfaces)",
            server.host
        )));
    }
    if server.request_timeout_ms == 0 {
        return Err(SettingsError::new(
            "server.request_timeout_ms: must be greater than 0",
        ));
    }
    if server.concurrency_limit == 0 {
        return Err(SettingsError::new(
            "server.concurrency_limit: must be greater than 0",
        ));
    }
    if server.max_message_bytes < 1024 || server.max_concurrent_streams == 0 {
        return Err(SettingsError::new(
            "server.max_message_bytes must be at least 1024 and server.max_concurrent_streams greater than 0",
        ));
    }
    if server.ingest_rate_per_tenant > 0
        && (server.ingest_burst_per_tenant as usize) < cascade_domain::LARGEST_BATCH
    {
        return Err(SettingsError::new(format!(
            "server.ingest_burst_per_tenant: must be at least {} (the largest batch)",
            cascade_domain::LARGEST_BATCH
        )));
    }
    if server.ingest_in_flight > 0
        && (server.ingest_in_flight as usize) < cascade_domain::LARGEST_BATCH
    {
        return Err(SettingsError::new(format!(
            "server.ingest_in_flight: must be 0 (no bound) or at least {} (the largest batch)",
            cascade_domain::LARGEST_BATCH
        )));
    }
    if !(0..=19).contains(&server.nice) {
        return Err(SettingsError::new(format!(
            "server.nice: {} is not between 0 and 19 (a service only ever lowers its own priority)",
            server.nice
        )));
    }
    if server.health_check_interval_ms == 0 {
        return Err(SettingsError::new(
            "server.health_check_interval_ms: must be greater than 0",
        ));
    }
    validate_cors(server)?;
    let scheme_ok = ["sqlite:", "postgres://", "postgresql://"]
        .iter()
        .any(|p| database.url.starts_with(p));
    if !scheme_ok {
        return Err(SettingsError::new(format!(
            "database.url: {:?} must start with sqlite:, postgres:// or postgresql://",
            redact_urls(&database.url)
        )));
    }
    if database.max_connections == Some(0) {
        return Err(SettingsError::new(
            "database.max_connections: must be greater than 0",
        ));
    }
    if tracing_subscriber::EnvFilter::try_new(&telemetry.log_level).is_err() {
        return Err(SettingsError::new(format!(
            "telemetry.log_level: {:?} is not a tracing filter such as \"info\"",
            telemetry.log_level
        )));
    }
    Ok(())
}

/// Origins are what a browser sends in `Origin` (`scheme://host[:port]`),
/// since anything else would never match and silently deny every page.
fn validate_cors(server: &ServerSettings) -> Result<(), SettingsError> {
    let origins = &server.cors_allowed_origins;
    if origins.is_empty() {
        return Ok(());
    }
    if !server.grpc_web {
        return Err(SettingsError::new(
            "server.cors_allowed_origins: set, but server.grpc_web is false (browsers reach a service only through gRPC-Web)",
        ));
    }
    if origins.iter().any(|origin| origin == "*") {
        if origins.len() > 1 {
            return Err(SettingsError::new(
                "server.cors_allowed_origins: \"*\" already allows every origin; list it alone",
            ));
        }
        return Ok(());
    }
    for origin in origins {
        let host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        let well_formed = host.is_some_and(|host| {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        });
        if !well_formed {
            return Err(SettingsError::new(format!(
                "server.cors_allowed_origins: {origin:?} is not an origin such as \"https://app.example.com\" or \"http://localhost:3000\" (scheme, host and port only, no path or trailing slash)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Example = ServiceSettings;

    const ID: ServiceIdentity = ServiceIdentity {
        name: "lifecycle",
        default_port: 50051,
        sqlite_connections: 8,
        permissions: |_, _| None,
        default_nice: 0,
        outbox_topics: &[],
    };

    use super::environment_of as env;

    #[test]
    fn defaults_then_environment() {
        let s: Example = load_from(ID, None, env(&[])).expect("defaults load");
        assert_eq!(s.server.port, 50051);
        assert_eq!(s.database.url, "sqlite://data/lifecycle.db");
        assert_eq!(
            (s.database.max_connections, s.database.pool_size()),
            (None, 8)
        );
        let mut scoring_like = s.database.clone();
        scoring_like.default_pool(4);
        assert_eq!(scoring_like.pool_size(), 4);

        let s: Example = load_from(
            ID,
            None,
            env(&[
                ("CASCADE_LIFECYCLE__SERVER__PORT", "6000"),
                ("CASCADE_LIFECYCLE__DATABASE__URL", "postgres://u:p@h/db"),
            ]),
        )
        .expect("env loads");
        assert_eq!(s.server.port, 6000);
        assert_eq!(s.database.url, "postgres://u:p@h/db");
        let mut database = s.database.clone();
        database.default_pool(4);
        assert_eq!(database.pool_size(), 8, "the SQLite default is for SQLite");

        let s: Example = load_from(
            ID,
            None,
            env(&[("CASCADE_LIFECYCLE__DATABASE__MAX_CONNECTIONS", "12")]),
        )
        .expect("env loads");
        let mut database = s.database.clone();
        database.default_pool(4);
        assert_eq!(database.pool_size(), 12, "an explicit size wins");
    }

    #[test]
    fn file_then_environment() {
        let dir = std::env::temp_dir().join(format!("cascade-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("lifecycle.toml");
        std::fs::write(&path, "[server]\nport = 7000\nhost = \"0.0.0.0\"\n").expect("write");
        let s: Example = load_from(ID, Some(&path), env(&[])).expect("file loads");
        assert_eq!((s.server.port, s.server.host.as_str()), (7000, "0.0.0.0"));
        let s: Example = load_from(
            ID,
            Some(&path),
            env(&[("CASCADE_LIFECYCLE__SERVER__PORT", "7001")]),
        )
        .expect("env wins");
        assert_eq!(s.server.port, 7001);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = load_from::<NoSections>(
            ID,
            None,
            env(&[("CASCADE_LIFECYCLE__SERVER__PORT", "not-a-port")]),
        )
        .expect_err("bad port refused");
        assert!(err.to_string().contains("server.port"), "{err}");

        let err =
            load_from::<NoSections>(ID, None, env(&[("CASCADE_LIFECYCLE__SERVER__PROT", "1")]))
                .expect_err("unknown key refused");
        assert!(err.to_string().contains("prot"), "{err}");

        let s: Example = load_from(
            ID,
            None,
            env(&[("CASCADE_LIFECYCLE__DATABASE__URL", "mysql://u:secret@h/db")]),
        )
        .expect("loads");
        let err = validate_common(&s.server, &s.database, &TelemetrySettings::default())
            .expect_err("scheme refused");
        assert!(err.to_string().contains("database.url"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");

        // A bound on activities in flight below the largest batch would
        // refuse that batch forever; 0 turns the bound off.
        let check = |value: &str| {
            let s: Example = load_from(
                ID,
                None,
                env(&[("CASCADE_LIFECYCLE__SERVER__INGEST_IN_FLIGHT", value)]),
            )
            .expect("loads");
            validate_common(&s.server, &s.database, &s.telemetry)
        };
        let err = check("999").expect_err("below the largest batch");
        assert!(err.to_string().contains("server.ingest_in_flight"), "{err}");
        check("1000").expect("the largest batch");
        check("0").expect("no bound");

        // Nice within 0-19: below 0 would ask for a privilege.
        let nice = |value: &str| {
            let s: Example =
                load_from(ID, None, env(&[("CASCADE_LIFECYCLE__SERVER__NICE", value)]))
                    .expect("loads");
            validate_common(&s.server, &s.database, &s.telemetry)
        };
        for refused in ["-1", "20"] {
            let err = nice(refused).expect_err(refused);
            assert!(err.to_string().contains("server.nice"), "{err}");
        }
        nice("0").expect("the usual priority");
        nice("19").expect("the lowest");
    }

    #[test]
    fn each_service_has_its_own_nice_by_default() {
        let lifecycle: Example = load_from(ID, None, env(&[])).expect("defaults");
        assert_eq!(lifecycle.server.nice, 0);
        const SCORING: ServiceIdentity = ServiceIdentity {
            name: "scoring",
            default_nice: 10,
            outbox_topics: &[],
            ..ID
        };
        let scoring: Example = load_from(SCORING, None, env(&[])).expect("defaults");
        assert_eq!(scoring.server.nice, 10);
        let set: Example = load_from(
            SCORING,
            None,
            env(&[("CASCADE_SCORING__SERVER__NICE", "0")]),
        )
        .expect("set");
        assert_eq!(set.server.nice, 0);
    }

    #[test]
    fn cors_origins_are_a_list_in_the_environment_and_the_file() {
        let s: Example = load_from(ID, None, env(&[])).expect("defaults load");
        assert!(s.server.grpc_web, "gRPC-Web is on by default");
        assert!(
            s.server.cors_allowed_origins.is_empty(),
            "no cross-origin access by default"
        );

        let s: Example = load_from(
            ID,
            None,
            env(&[(
                "CASCADE_LIFECYCLE__SERVER__CORS_ALLOWED_ORIGINS",
                "https://App.example.com, http://localhost:3000,",
            )]),
        )
        .expect("a comma-separated list loads");
        assert_eq!(
            s.server.cors_allowed_origins,
            ["https://app.example.com", "http://localhost:3000"],
            "trimmed, lower-cased as browsers send them, empty entries dropped"
        );
        validate_common(&s.server, &s.database, &s.telemetry).expect("valid origins");

        let s: Example = load_from(
            ID,
            None,
            env(&[
                ("CASCADE_LIFECYCLE__SERVER__CORS_ALLOWED_ORIGINS", "*"),
                ("CASCADE_LIFECYCLE__SERVER__GRPC_WEB", "true"),
            ]),
        )
        .expect("a single value is a list of one");
        assert_eq!(s.server.cors_allowed_origins, ["*"]);
        validate_common(&s.server, &s.database, &s.telemetry).expect("* alone is valid");

        let s: Example = load_from(
            ID,
            None,
            env(&[("CASCADE_LIFECYCLE__AUTH__PUBLIC_KEY_FILES", "a.pem,b.pem")]),
        )
        .expect("loads");
        assert_eq!(
            s.auth.public_key_files, "a.pem,b.pem",
            "only the list settings are split at commas"
        );

        let s: Example = load_from(
            ID,
            None,
            env(&[("CASCADE_LIFECYCLE__SERVER__CORS_ALLOWED_ORIGINS", "")]),
        )
        .expect("an empty variable loads");
        assert!(s.server.cors_allowed_origins.is_empty(), "empty means none");

        let dir = std::env::temp_dir().join(format!("cascade-cors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("lifecycle.toml");
        std::fs::write(
            &path,
            "[server]\ngrpc_web = false\ncors_allowed_origins = [\"https://a.example\"]\n",
        )
        .expect("write");
        let s: Example = load_from(ID, Some(&path), env(&[])).expect("file loads");
        assert!(!s.server.grpc_web);
        assert_eq!(s.server.cors_allowed_origins, ["https://a.example"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn origins_that_no_browser_sends_are_refused() {
        let refused = |origins: &[&str], grpc_web: bool| {
            let mut server = ServerSettings::with_port(0);
            server.grpc_web = grpc_web;
            server.cors_allowed_origins = origins.iter().map(|o| (*o).to_owned()).collect();
            let database = DatabaseSettings {
                url: "sqlite::memory:".into(),
                max_connections: None,
                acquire_timeout_ms: 1,
                run_migrations: true,
                analyze_interval_ms: 0,
            };
            validate_common(&server, &database, &TelemetrySettings::default())
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(
            refused(&["https://a.example", "http://[::1]:8080"], true),
            None
        );
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/path",
            "app.example.com",
            "ftp://app.example.com",
            "https://",
            "https://a b.example",
        ] {
            let error = refused(&[bad], true).unwrap_or_else(|| panic!("{bad:?} refused"));
            assert!(
                error.contains("server.cors_allowed_origins") && error.contains(bad),
                "{error}"
            );
        }
        let error = refused(&["*", "https://a.example"], true).expect("* with others refused");
        assert!(error.contains("alone"), "{error}");
        let error = refused(&["https://a.example"], false).expect("origins without gRPC-Web");
        assert!(error.contains("server.grpc_web"), "{error}");
    }

    #[test]
    fn a_service_reads_exactly_its_own_sections() {
        use crate::client::LifecycleSection;
        const SCORING: ServiceIdentity = ServiceIdentity {
            name: "scoring",
            ..ID
        };
        // Lifecycle calls no lifecycle: the section is not its own.
        let err = load_from::<NoSections>(
            ID,
            None,
            env(&[("CASCADE_LIFECYCLE__LIFECYCLE__URL", "http://x:1")]),
        )
        .expect_err("a section lifecycle does not read is refused");
        assert!(
            err.to_string().contains("unknown section `lifecycle`"),
            "{err}"
        );
        assert!(err.to_string().contains("server, database"), "{err}");

        let s: ServiceSettings<LifecycleSection> = load_from(
            SCORING,
            None,
            env(&[("CASCADE_SCORING__LIFECYCLE__URL", "http://lifecycle:50051")]),
        )
        .expect("scoring reads [lifecycle]");
        assert_eq!(s.own.lifecycle.url, "http://lifecycle:50051");
        assert_eq!(s.own.lifecycle.timeout_ms, 5_000, "defaults fill the rest");
        assert_eq!(s.server.port, 50051);

        let err = load_from::<LifecycleSection>(
            SCORING,
            None,
            env(&[("CASCADE_SCORING__LIFECYCLE__URLL", "http://x:1")]),
        )
        .expect_err("an unknown key of its own section is refused");
        assert!(err.to_string().contains("urll"), "{err}");

        // An erasure must settle for several polls: every replica hears of
        // it before it is confirmed.
        let settle = |ms: &str| {
            let s: ServiceSettings<LifecycleSection> = load_from(
                SCORING,
                None,
                env(&[("CASCADE_SCORING__LIFECYCLE__ERASURE_SETTLE_MS", ms)]),
            )
            .expect("read");
            LifecycleSection::validate(&s).map(|()| s.own.lifecycle.erasure_settle_ms)
        };
        let err = settle("19999").expect_err("less than 4 polls of 5 s");
        assert!(
            err.to_string()
                .contains("lifecycle.erasure_settle_ms: 19999"),
            "{err}"
        );
        assert_eq!(settle("20000").expect("4 polls"), 20_000);

        let err = load_from::<LifecycleSection>(
            SCORING,
            None,
            env(&[("CASCADE_SCORING__WEBHOOK__URL", "http://x:1")]),
        )
        .expect_err("a section no service reads is refused");
        assert!(
            err.to_string().contains("unknown section `webhook`"),
            "{err}"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_urls("connect postgres://app:s3cret@db:5432/cascade failed"),
            "connect postgres://app:***@db:5432/cascade failed"
        );
        assert_eq!(redact_urls("sqlite://data/x.db"), "sqlite://data/x.db");
        let settings = DatabaseSettings {
            url: "postgres://app:s3cret@db/cascade".into(),
            max_connections: Some(1),
            acquire_timeout_ms: 1,
            run_migrations: true,
            analyze_interval_ms: 0,
        };
        assert!(!format!("{settings:?}").contains("s3cret"));
    }

    #[test]
    fn an_unreadable_settings_file_is_named() {
        let missing = Path::new("/nonexistent/cascade.toml");
        let error = load_from::<NoSections>(ID, Some(missing), env(&[])).expect_err("no file");
        assert!(
            error.to_string().contains("/nonexistent/cascade.toml"),
            "{error}"
        );
        let dir = std::env::temp_dir().join(format!("cascade-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let broken = dir.join("broken.toml");
        std::fs::write(&broken, "[server\nport = ").expect("write");
        let error = load_from::<NoSections>(ID, Some(&broken), env(&[])).expect_err("bad toml");
        assert!(error.to_string().contains("broken.toml"), "{error}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
