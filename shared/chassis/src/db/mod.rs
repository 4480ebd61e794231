//! Database connection and migrations at start-up, for SQLite (the embedded
//! default: one file per service, created on first start) and PostgreSQL.
use std::time::Duration;

use crate::secret::redact_urls;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
    TransactionTrait,
};
use sea_orm_migration::MigratorTrait;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

mod schema;
mod statements;
mod stored;
mod write;

pub use schema::{SchemaStatus, schema_status};
pub use statements::{
    MAX_BINDS, RowsUpdate, among, insert_chunks, insert_chunks_returning, statement,
    statement_chunks, update_from_values,
};
pub use stored::Stored;
use write::SQLITE_BUSY_TIMEOUT;
pub use write::{
    WritePriority, WriteTransaction, WriteTurn, begin_write, begin_write_as, write_turn,
};

/// `database.analyze_interval_ms` by default.
pub const DEFAULT_ANALYZE_INTERVAL_MS: u64 = 2_000;

/// Where a service keeps its data.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path/to/file.db` or `postgres://user:password@host/db`.
    pub url: String,
    /// Largest number of pooled connections; unset: the service's SQLite
    /// default (`ServiceIdentity`) or 8.
    pub max_connections: Option<u32>,
    /// How long to wait for a connection before answering UNAVAILABLE.
    pub acquire_timeout_ms: u64,
    /// Apply migrations at start-up. Off when a separate step runs them
    /// once (`<binary> --migrate`, a Kubernetes Job) before replicas start.
    pub run_migrations: bool,
    /// PostgreSQL: how often to look for tables that grew a lot since their
    /// statistics were gathered, and ANALYZE them (0: leave it to autovacuum).
    pub analyze_interval_ms: u64,
}

impl DatabaseSettings {
    /// `max_connections`, or 8 when unset.
    pub fn pool_size(&self) -> u32 {
        self.max_connections.unwrap_or(8)
    }

    /// Sets `max_connections` to the service's SQLite default
    /// (`ServiceIdentity::sqlite_connections`) when it is unset and the
    /// database is SQLite.
    pub fn default_pool(&mut self, sqlite_connections: u32) {
        if self.max_connections.is_none() && self.is_sqlite() {
            self.max_connections = Some(sqlite_connections);
        }
    }

    pub fn sqlite_file(path: &Path) -> Self {
        Self {
            url: format!("sqlite://{}", path.display()),
            max_connections: None,
            acquire_timeout_ms: 5_000,
            run_migrations: true,
            analyze_interval_ms: DEFAULT_ANALYZE_INTERVAL_MS,
        }
    }

    pub fn is_sqlite(&self) -> bool {
        self.url.starts_with("sqlite:")
    }
}

// The URL may carry a password: never print it.
impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_urls(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout_ms", &self.acquire_timeout_ms)
            .field("run_migrations", &self.run_migrations)
            .field("analyze_interval_ms", &self.analyze_interval_ms)
            .finish()
    }
}

/// Connects to the configured database, creating a SQLite file (and its
/// folder) if it does not exist, and applies the service's migrations.
pub async fn connect_and_migrate<M: MigratorTrait>(
    settings: &DatabaseSettings,
) -> anyhow::Result<DatabaseConnection> {
    let database = connect(settings).await?;
    migrate::<M>(&database).await.map_err(|e| {
        anyhow::anyhow!("database migration failed: {}", redact_urls(&e.to_string()))
    })?;
    Ok(database)
}

/// For migrations: on PostgreSQL, leaves `100 - percent` % of each page of
/// `table` free, so that an update changing no indexed column can keep the
/// new row version on its page (a HOT update: no index entries). SQLite has
/// no such setting; there it does nothing.
pub async fn set_fill_factor(
    manager: &sea_orm_migration::SchemaManager<'_>,
    table: &str,
    percent: u8,
) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    manager
        .get_connection()
        .execute_unprepared(&format!("ALTER TABLE {table} SET (fillfactor = {percent})"))
        .await
        .map(|_| ())
}

/// How long `byte_order_keys` tries to take its tables' locks.
const KEYS_LOCK_TIMEOUT: &str = "10s";
/// How long one try waits for each table's lock: a try over nine tables
/// stays under PostgreSQL's `deadlock_timeout` (1 s by default).
const KEYS_LOCK_TRY: &str = "100ms";

/// For migrations: on PostgreSQL, declares every `VARCHAR` column of
/// `tables` `COLLATE "C"`, so their B-trees compare keys byte by byte instead
/// of through the server's locale (`strcoll`, about a tenth of the
/// pipeline's CPU on an `en_US.UTF-8` server: docs/performance.md, round 35).
/// In the tables it is given `VARCHAR` holds ids, tenants, types, states and
/// actors, opaque keys that any order serves and whose equality is the same
/// under every deterministic collation; `TEXT` holds free text and JSON,
/// which keep the server's collation.
///
/// No row is rewritten; the indexes on those columns are rebuilt under an
/// exclusive lock on each table, held until the migrating transaction
/// commits: about 4 s per million activities measured (docs/kubernetes.md
/// says what that costs an upgrade). Columns already in "C" are left alone,
/// so an operator may convert a large table ahead of the upgrade, at a quiet
/// hour. SQLite compares bytes already (`BINARY`); there it does nothing.
///
/// Every table is locked first, all or none, before any index is rebuilt.
/// Locking each as it is converted deadlocks with the service's own
/// transactions, which hold one table while they wait for the next, and
/// after a long rebuild PostgreSQL aborts the migration as the side that
/// closed the cycle. The service's transactions touch the tables in no one
/// order (an ingest reads the model before it queues a pending group, a
/// fold takes pending groups before it reads the model), so no order of
/// waiting locks is safe: each try waits at most `KEYS_LOCK_TRY` for each
/// table's lock, then lets all go and tries again, for about
/// `KEYS_LOCK_TIMEOUT` (a try begun before then runs to its end).
/// After that the migration fails, and the init container retries it,
/// rather than queue every write behind a long transaction (a simulation's
/// read).
pub async fn byte_order_keys(
    manager: &sea_orm_migration::SchemaManager<'_>,
    tables: &[&str],
) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres || tables.is_empty() {
        return Ok(());
    }
    let conn = manager.get_connection();
    let c_collation = "(SELECT oid FROM pg_collation \
        WHERE collname = 'C' AND collnamespace = 'pg_catalog'::regnamespace)";
    let mut alters = Vec::new();
    for table in tables {
        let keys = conn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
                     FROM pg_attribute a \
                     WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped \
                       AND a.atttypid = 'varchar'::regtype AND a.attcollation <> {c_collation} \
                     ORDER BY a.attnum"
                ),
                [(*table).into()],
            ))
            .await?;
        let mut columns = Vec::with_capacity(keys.len());
        for key in keys {
            let column: String = key.try_get_by_index(0)?;
            let declared: String = key.try_get_by_index(1)?;
            columns.push(format!(
                "ALTER COLUMN \"{column}\" TYPE {declared} COLLATE \"C\""
            ));
        }
        if !columns.is_empty() {
            alters.push(format!("ALTER TABLE \"{table}\" {}", columns.join(", ")));
        }
    }
    if alters.is_empty() {
        return Ok(());
    }
    let quoted: Vec<String> = tables.iter().map(|t| format!("\"{t}\"")).collect();
    // Each try waits at most KEYS_LOCK_TRY for each table's lock, then lets
    // go of all it took (the block is a subtransaction) and tries again
    // shortly after, until KEYS_LOCK_TIMEOUT. A service transaction that
    // holds a later table and waits for an earlier one (a fold reads the
    // model after it took pending groups) is let through before PostgreSQL
    // looks for a deadlock (`deadlock_timeout`, 1 s by default; with a
    // shorter one that transaction is aborted, and retried), and what
    // queues behind a try waits at most as long as the try. The notices
    // reach the migration's log (sqlx logs them at INFO): how long the locks
    // took is what an operator asks of a slow init container.
    let lock_all = format!(
        "DO $$ \
         DECLARE started timestamptz := clock_timestamp(); tries int := 0; \
         BEGIN LOOP BEGIN \
           tries := tries + 1; \
           LOCK TABLE {} IN ACCESS EXCLUSIVE MODE; \
           RAISE NOTICE 'byte order keys: tables locked at try % after % ms', \
             tries, round(extract(epoch FROM clock_timestamp() - started) * 1000); \
           RETURN; \
         EXCEPTION WHEN lock_not_available OR deadlock_detected THEN \
           IF clock_timestamp() > started + interval '{KEYS_LOCK_TIMEOUT}' THEN \
             RAISE NOTICE 'byte order keys: tables not locked in % tries', tries; \
             RAISE; \
           END IF; \
           PERFORM pg_sleep(0.01 + random() * 0.04); \
         END; END LOOP; END $$",
        quoted.join(", ")
    );
    for statement in [
        format!("SET LOCAL lock_timeout = '{KEYS_LOCK_TRY}'"),
        lock_all,
        // The rest of the migrating transaction waits as it did before.
        "SET LOCAL lock_timeout TO DEFAULT".to_owned(),
    ]
    .into_iter()
    .chain(alters)
    {
        conn.execute_unprepared(&statement).await?;
    }
    Ok(())
}

/// Key of the PostgreSQL advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x0CA5_CADE;

/// Applies pending migrations in one transaction that first takes a lock
/// (PostgreSQL: an advisory lock; SQLite: the write lock): processes starting
/// together apply them once, one after the other, and a failed migration
/// leaves nothing half-applied.
pub async fn migrate<M: MigratorTrait>(database: &DatabaseConnection) -> Result<(), DbErr> {
    let txn = if database.get_database_backend() == DbBackend::Postgres {
        let txn = database.begin().await?;
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .await?;
        txn
    } else {
        // The migrations table may not exist yet: take the lock with a
        // statement that needs no table.
        let txn = database.begin().await?;
        txn.execute_unprepared("CREATE TABLE IF NOT EXISTS cascade_migration_lock (id INTEGER)")
            .await?;
        txn
    };
    match schema_status::<M>(&txn).await? {
        // Also when the schema is newer than this binary (an older pod
        // starting during an upgrade): migrations only add.
        SchemaStatus::Current => tracing::info!("schema is current"),
        SchemaStatus::Behind(pending) => {
            tracing::info!(?pending, "applying migrations");
            M::up(&txn, None).await?;
        }
    }
    txn.commit().await
}

/// Connects without migrating.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<DatabaseConnection> {
    let url = if settings.is_sqlite() {
        prepare_sqlite(&settings.url)?
    } else {
        settings.url.clone()
    };
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(settings.pool_size())
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .connect_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        // Statements are traced by our own spans; sqlx's per-statement logs
        // would sit on the hot path.
        .sqlx_logging(false);
    if settings.is_sqlite() {
        // A ping of a file that is open in this process proves nothing, and
        // costs two thread hops to the connection's worker per checkout.
        options.test_before_acquire(false);
    } else {
        if let Some((host, why)) = unchecked_transport(&settings.url) {
            // The host, not the URL: sqlx also takes a password as a query
            // parameter, which redact_urls does not mask.
            tracing::warn!(
                host,
                "the database server is not verified: {why}; for a database across a network set sslmode=verify-full (with sslrootcert) in database.url"
            );
        }
        // sqlx pings every connection it hands out: one more round trip to
        // PostgreSQL per transaction or lone statement (GetAccount is one),
        // measured at a fifth of GetAccount's median (docs/performance.md,
        // round 10). What the ping catches is a connection the server, a
        // proxy or a firewall dropped while it sat idle, so only those are
        // pinged.
        options.test_before_acquire_if_idle_for(PING_IF_IDLE_FOR);
    }
    options.map_sqlx_sqlite_opts(|opts| {
        // WAL lets readers run beside the writer; NORMAL sync is durable
        // across process crashes in WAL mode. Writers wait for the lock
        // rather than failing at once.
        opts.journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true)
            .statement_cache_capacity(SQLITE_STATEMENT_CACHE)
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string())
    });
    Database::connect(options).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to {}: {}",
            redact_urls(&settings.url),
            redact_urls(&e.to_string())
        )
    })
}

/// What a PostgreSQL URL leaves unchecked about the way to its server, with
/// the server's host, for a warning at start-up; `None` when the server's
/// certificate is verified, when the server is on this host (loopback, a Unix
/// socket), or when sqlx cannot parse the URL (connecting says why). The
/// mode is sqlx's: the URL's `sslmode`, else `PGSSLMODE`. sqlx's default,
/// `sslmode=prefer`, encrypts only when the server offers TLS, never checks
/// its certificate, and falls back to plain text without a word: fine on one
/// machine, not across a network. A warning rather than a refusal: some
/// networks are private by other means (a service mesh's mTLS, a VPC).
pub fn unchecked_transport(url: &str) -> Option<(String, &'static str)> {
    use sea_orm::sqlx::postgres::{PgConnectOptions, PgSslMode};
    use std::str::FromStr;
    let options = PgConnectOptions::from_str(url).ok()?;
    let host = options
        .get_host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let local = options.get_socket().is_some()
        || host.starts_with('/')
        || host.trim_end_matches('.').eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if local {
        return None;
    }
    let why = match options.get_ssl_mode() {
        PgSslMode::VerifyFull => return None,
        PgSslMode::VerifyCa => {
            "sslmode=verify-ca checks who signed the server's certificate, not that it names the host"
        }
        PgSslMode::Require => {
            "sslmode=require encrypts but does not check the server's certificate"
        }
        PgSslMode::Prefer => {
            "sslmode=prefer (the default) does not check the server's certificate, and falls back to plain text when the server offers no TLS"
        }
        // sqlx does not implement allow: it connects as with disable.
        PgSslMode::Allow => "sslmode=allow (in sqlx the same as disable) uses plain text",
        PgSslMode::Disable => "sslmode=disable sends queries and results in plain text",
    };
    Some((host.to_owned(), why))
}

/// A pooled PostgreSQL connection idle this long is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(30);

/// Prepared statements each SQLite connection keeps (sqlx's default is 100).
/// A prepared multi-row INSERT of 256 rows is a large program, and each
/// connection kept its own copy of every size of every statement: with 40,
/// scoring's peak RSS over the bench fell from 64.6 to 61.3 MiB, its plateau
/// under ingest from 58 to 52 MiB, with ingest within run-to-run noise
/// (docs/performance.md, round 6). The hot statements of a service fit.
const SQLITE_STATEMENT_CACHE: usize = 40;

/// The write-ahead log's length, in pages, at which the commit that
/// reaches it copies the log back into the database file (SQLite's default
/// is 1,000). A checkpoint copies each page once however many times the log
/// holds it, and a scoring group rewrites the same bucket, score and index
/// pages as the groups before it (about 2,000 pages a group): at 1,000 every
/// group's pages were copied after it, at 10,000 once every five groups.
/// Ingest rose by 11-15 %, the raw ceiling (new pages mostly) did not move
/// (docs/performance.md, round 22). The log reaches about 40 MiB before it
/// is copied, and the checkpointer below restarts it every 2 s.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// How often the SQLite write-ahead log is folded back into the database.
const WAL_CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
/// A TRUNCATE checkpoint that held writers back this long is logged.
const SLOW_CHECKPOINT: Duration = Duration::from_millis(100);
/// How long a checkpoint waits for readers (holding writers back meanwhile).
const WAL_CHECKPOINT_PATIENCE: Duration = Duration::from_millis(50);

/// On SQLite, a task that checkpoints the write-ahead log every 2 s and
/// truncates it: first PASSIVE, which copies the log beside the writer,
/// then TRUNCATE, which holds writers back while it copies what the first
/// could not (the commits meanwhile). SQLite's own automatic checkpoint
/// (`WAL_AUTOCHECKPOINT_PAGES`) is passive: under a
/// steady mix of reads and writes some reader always holds an older
/// snapshot, the log is never restarted, and it grew past 200 MB in a 10 s
/// ingest run, slowing every later read (each page is looked up in the
/// log's index first). The checkpoint runs on a connection of its own with
/// a 50 ms busy timeout: it waits that long for the readers of the moment,
/// else gives up until the next tick, so writers are never held back for
/// the pool's 10 s. None on PostgreSQL or an in-memory database.
pub fn spawn_wal_checkpointer(
    settings: &DatabaseSettings,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    use sea_orm::sqlx::ConnectOptions as _;
    if !settings.url.starts_with("sqlite:") || settings.url.contains(":memory:") {
        return Ok(None);
    }
    let options = checkpointer_options(&settings.url)?;
    Ok(Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(WAL_CHECKPOINT_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connection = None;
        loop {
            ticks.tick().await;
            if connection.is_none() {
                connection = options.connect().await.ok();
            }
            let Some(conn) = connection.as_mut() else {
                continue;
            };
            match checkpoint(conn, options.get_filename()).await {
                // Writers wait meanwhile: a long one shows as a stall of
                // every write path (docs/performance.md, round 29).
                Ok(done) if done.held >= SLOW_CHECKPOINT => tracing::info!(
                    held_writers_ms = done.held.as_millis() as u64,
                    turn_ms = done.turn.as_millis() as u64,
                    total_ms = done.total.as_millis() as u64,
                    truncated = done.truncated,
                    "WAL checkpoint held writers back"
                ),
                Ok(done) => tracing::debug!(
                    held_writers_ms = done.held.as_millis() as u64,
                    turn_ms = done.turn.as_millis() as u64,
                    total_ms = done.total.as_millis() as u64,
                    truncated = done.truncated,
                    "a WAL checkpoint"
                ),
                Err(error) => tracing::debug!(%error, "WAL checkpoint skipped"),
            }
        }
    })))
}

/// The checkpointer's own connection: the pool's journal settings
/// (`connect`), its file named as the pool names it (`write::writers_of`),
/// and a short busy timeout.
fn checkpointer_options(url: &str) -> anyhow::Result<sea_orm::sqlx::sqlite::SqliteConnectOptions> {
    let options: sea_orm::sqlx::sqlite::SqliteConnectOptions = prepare_sqlite(url)?
        .parse()
        .map_err(|e| anyhow::anyhow!("database.url: {}", redact_urls(&format!("{e}"))))?;
    Ok(options
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(WAL_CHECKPOINT_PATIENCE))
}

/// How long one checkpoint took: waiting in line for the write turn, the
/// TRUNCATE (writers wait meanwhile), and in all; and whether the TRUNCATE
/// emptied the log, or gave up after its patience (a reader still in the
/// log, or a writer outside the turn: another process).
struct Checkpointed {
    turn: Duration,
    held: Duration,
    total: Duration,
    truncated: bool,
}

/// One checkpoint of the SQLite file at `file`, PASSIVE then TRUNCATE. The
/// TRUNCATE takes the file's write turn (`write::file_write_turn`) like any
/// other writer. On its own, under a steady stream of writers it gave up on
/// SQLite's lock in a third of its tries (the log then not emptied), and
/// writers that came while it ran waited in SQLite's busy handler, which
/// sleeps up to 100 ms between tries; in line, it emptied the log in every
/// measured run, and the writer after it is woken as it ends
/// (docs/performance.md, round 33).
async fn checkpoint(
    conn: &mut sea_orm::sqlx::SqliteConnection,
    file: &Path,
) -> anyhow::Result<Checkpointed> {
    use sea_orm::sqlx::{Executor as _, Row as _};
    let started = std::time::Instant::now();
    // PASSIVE first copies what it can beside the writer, so that the
    // TRUNCATE after it, which holds writers back, has little left.
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").await?;
    let queued = std::time::Instant::now();
    let _turn = write::file_write_turn(file)
        .await
        .map_err(|e| anyhow::anyhow!("waiting for the write turn: {e}"))?;
    let truncating = std::time::Instant::now();
    // One row: busy (1 when a reader kept it from finishing), the log's
    // frames, the frames copied.
    let busy: i64 = conn
        .fetch_one("PRAGMA wal_checkpoint(TRUNCATE)")
        .await?
        .try_get(0)?;
    Ok(Checkpointed {
        turn: truncating - queued,
        held: truncating.elapsed(),
        total: started.elapsed(),
        truncated: busy == 0,
    })
}

/// Tables whose size is this far from what their statistics counted get an
/// ANALYZE: more than `ANALYZE_MIN_CHANGES` rows, and more than
/// `ANALYZE_GROWTH` of the rows the last statistics counted. A table never
/// analyzed gets its first statistics as soon as it has a row.
const ANALYZE_MIN_CHANGES: f64 = 100.0;
const ANALYZE_GROWTH: f64 = 1.0;

/// PostgreSQL: every `database.analyze_interval_ms`, ANALYZEs this
/// database's tables that changed a lot since their statistics were taken.
///
/// PostgreSQL plans with the statistics it has. A new database has none:
/// the planner then thinks each tenant has a row or two, and plans a batch's
/// `contact_id IN (...)` as "all rows of the tenant, filtered" instead of one
/// index probe per id, which grows with the table (measured: 15-35 ms per
/// statement after seconds of ingest, and a fifth of PostgreSQL's CPU).
/// Autovacuum fixes that, but only on its next round for the database
/// (`autovacuum_naptime`, one minute by default), which is the whole first
/// minute of a new deployment or tenant import, and of every benchmark. It
/// runs once per doubling of a young table: the planner scales the last
/// statistics by the table's current size, so proportions taken at half the
/// size still plan right (at 20 % growth the ANALYZEs were a sixth of
/// PostgreSQL's CPU in an ingest run); on a mature table autovacuum's own
/// 10 % comes first.
/// It goes by the table's size, not by the rows changed: the small, hot
/// tables rewritten by every batch (scores, rule usage, outboxes) keep their
/// size and their plans, and counted by changes they were analyzed on every
/// round, 11 % of PostgreSQL's statement time in an ingest run
/// (docs/performance.md, round 12). Small tables need statistics too: without
/// any, lifecycle's 200 accounts were read through the wrong index (GetAccount
/// filtered all 200 rows, 0.7 ms instead of 0.08).
/// None on SQLite (its planner reads no such statistics unless asked) or
/// when the interval is 0.
pub fn spawn_statistics_keeper(
    db: &DatabaseConnection,
    settings: &DatabaseSettings,
) -> Option<tokio::task::JoinHandle<()>> {
    if db.get_database_backend() != DbBackend::Postgres || settings.analyze_interval_ms == 0 {
        return None;
    }
    let db = db.clone();
    let every = Duration::from_millis(settings.analyze_interval_ms);
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(error) = analyze_changed_tables(&db).await {
                tracing::debug!(%error, "statistics check skipped");
            }
        }
    }))
}

/// One round of `spawn_statistics_keeper`; returns the tables analyzed.
pub async fn analyze_changed_tables(db: &DatabaseConnection) -> Result<Vec<String>, DbErr> {
    let stale = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT format('%I.%I', s.schemaname, s.relname) AS name FROM pg_stat_user_tables s \
             JOIN pg_class c ON c.oid = s.relid \
             WHERE (c.reltuples < 0 AND s.n_live_tup > 0) \
                OR abs(s.n_live_tup - GREATEST(c.reltuples, 0)) > $1 + $2 * GREATEST(c.reltuples, 0)",
            [ANALYZE_MIN_CHANGES.into(), ANALYZE_GROWTH.into()],
        ))
        .await?;
    let mut analyzed = Vec::with_capacity(stale.len());
    for row in stale {
        let name: String = row.try_get("", "name")?;
        // The name comes from the catalog, quoted by format('%I').
        db.execute_unprepared(&format!("ANALYZE {name}")).await?;
        tracing::debug!(table = %name, "statistics refreshed");
        analyzed.push(name);
    }
    Ok(analyzed)
}

/// Creates the SQLite file's folder and asks sqlx to create the file.
fn prepare_sqlite(url: &str) -> anyhow::Result<String> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", parent.display()))?;
    }
    let query = if query.contains("mode=") {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_across_a_network_unverified_is_named() {
        use std::str::FromStr;
        let remote = "postgres://cascade:secret@postgres:5432/lifecycle";
        let says = |url: &str| unchecked_transport(url).map_or("verified", |(_, why)| why);
        // sqlx takes the default mode from PGSSLMODE, when set.
        if std::env::var_os("PGSSLMODE").is_none() {
            assert!(says(remote).starts_with("sslmode=prefer (the default)"));
        }
        assert_eq!(
            unchecked_transport(&format!("{remote}?sslmode=prefer")).map(|(host, _)| host),
            Some("postgres".to_owned()),
            "the host, not the URL with its password"
        );
        assert!(says(&format!("{remote}?sslmode=require")).starts_with("sslmode=require"));
        assert!(says(&format!("{remote}?sslmode=verify-ca")).starts_with("sslmode=verify-ca"));
        assert!(says(&format!("{remote}?sslmode=allow")).starts_with("sslmode=allow"));
        assert!(says(&format!("{remote}?sslmode=disable")).starts_with("sslmode=disable"));
        assert_eq!(
            says(&format!(
                "{remote}?sslmode=verify-full&sslrootcert=/etc/cascade/db/ca.crt"
            )),
            "verified"
        );
        for local in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://u:p@localhost/x?sslmode=disable",
            "postgres://u@[::1]:5432/x",
            "postgres://u@LOCALHOST/x",
            "postgres:///x?host=/var/run/postgresql",
        ] {
            // None only because it is local: each parses.
            assert!(
                sea_orm::sqlx::postgres::PgConnectOptions::from_str(local).is_ok(),
                "{local}"
            );
            assert_eq!(unchecked_transport(local), None, "{local}");
        }
    }

    #[test]
    fn sqlite_urls_create_the_file() {
        let dir = std::env::temp_dir().join(format!("cascade-db-{}", std::process::id()));
        let url = format!("sqlite://{}/sub/x.db", dir.display());
        let prepared = prepare_sqlite(&url).expect("prepared");
        assert_eq!(prepared, format!("{url}?mode=rwc"));
        assert!(dir.join("sub").is_dir());
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            prepare_sqlite("sqlite::memory:").expect("memory"),
            "sqlite://:memory:?mode=rwc"
        );
    }

    /// A SQLite file with a write in its log, a pool on it, and the
    /// checkpointer's connection and its name for the file.
    async fn logged_file(
        name: &str,
    ) -> (
        std::path::PathBuf,
        DatabaseConnection,
        sea_orm::sqlx::SqliteConnection,
        std::path::PathBuf,
    ) {
        use sea_orm::sqlx::ConnectOptions as _;
        let dir = std::env::temp_dir().join(format!("cascade-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let url = format!("sqlite://{}/x.db", dir.display());
        let settings = DatabaseSettings {
            url: url.clone(),
            max_connections: Some(2),
            acquire_timeout_ms: 5_000,
            run_migrations: false,
            analyze_interval_ms: 0,
        };
        let db = connect(&settings).await.expect("pool");
        db.execute_unprepared(&format!("CREATE TABLE t (v TEXT); {LOGGED_WRITE}"))
            .await
            .expect("a write to the log");
        let options = checkpointer_options(&url).expect("options");
        let conn = options.connect().await.expect("checkpointer connection");
        let file = options.get_filename().to_path_buf();
        (dir, db, conn, file)
    }

    const LOGGED_WRITE: &str = "INSERT INTO t VALUES (hex(randomblob(9000)))";

    fn log_len(dir: &std::path::Path) -> u64 {
        std::fs::metadata(dir.join("x.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// A checkpoint empties the log; a reader still in the log keeps it
    /// from doing so, and holds writers back no longer than the patience.
    #[tokio::test]
    async fn a_checkpoint_empties_the_log_unless_a_reader_is_in_it() {
        let (dir, db, mut conn, file) = logged_file("ckpt-reader").await;
        assert!(log_len(&dir) > 0, "the write is in the log");
        let done = checkpoint(&mut conn, &file).await.expect("checkpoint");
        assert!(done.truncated, "no reader was in the log");
        assert_eq!(log_len(&dir), 0, "TRUNCATE emptied the log");

        db.execute_unprepared(LOGGED_WRITE)
            .await
            .expect("another write");
        let reader = db.begin().await.expect("a read transaction");
        reader
            .execute_unprepared("SELECT count(*) FROM t")
            .await
            .expect("a read in the log");
        let done = checkpoint(&mut conn, &file).await.expect("checkpoint");
        assert!(!done.truncated, "the reader kept the log");
        assert!(log_len(&dir) > 0, "the log is still there");
        assert!(
            done.held >= WAL_CHECKPOINT_PATIENCE && done.held < Duration::from_secs(1),
            "held writers back for {:?}",
            done.held
        );
        reader.commit().await.expect("the read ends");
        let done = checkpoint(&mut conn, &file).await.expect("checkpoint");
        assert!(done.truncated, "the reader is gone");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A checkpoint's TRUNCATE waits for the write turn the pool's writers
    /// take: while one holds it, the log is not touched; once it is let go,
    /// the checkpoint runs and empties the log.
    #[tokio::test]
    async fn a_checkpoint_takes_the_pools_write_turn() {
        let (dir, db, mut conn, file) = logged_file("ckpt-turn").await;
        let turn = write_turn(&db)
            .await
            .expect("turn")
            .expect("SQLite takes turns");
        let checkpointing = tokio::spawn(async move { checkpoint(&mut conn, &file).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !checkpointing.is_finished(),
            "the checkpoint waits for the turn"
        );
        assert!(log_len(&dir) > 0, "nothing emptied the log meanwhile");
        drop(turn);
        let done = checkpointing.await.expect("task").expect("checkpoint");
        assert!(done.truncated, "no reader kept it from finishing");
        // Its clock starts after PASSIVE, within the test's 300 ms.
        assert!(
            done.turn >= Duration::from_millis(200),
            "waited {:?}",
            done.turn
        );
        assert_eq!(log_len(&dir), 0, "TRUNCATE emptied the log");
        std::fs::remove_dir_all(&dir).ok();
    }
}
