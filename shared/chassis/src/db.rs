//! Database connection and migrations at start-up, for SQLite (the embedded
//! default: one file per service, created on first start) and PostgreSQL.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::secret::redact_urls;
use sea_orm::sea_query::OnConflict;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ActiveModelTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, ExecResult, IntoActiveModel, Iterable,
    QueryResult, Statement, TransactionTrait, Value,
};
use sea_orm_migration::MigratorTrait;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

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
    M::up(&txn, None).await?;
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
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|opts| {
            // WAL lets readers run beside the writer; NORMAL sync is durable
            // across process crashes in WAL mode. Writers wait for the lock
            // rather than failing at once.
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
                .statement_cache_capacity(SQLITE_STATEMENT_CACHE)
        });
    Database::connect(options).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to {}: {}",
            redact_urls(&settings.url),
            redact_urls(&e.to_string())
        )
    })
}

/// Prepared statements each SQLite connection keeps (sqlx's default is 100).
/// A prepared multi-row INSERT of 256 rows is a large program, and each
/// connection kept its own copy of every size of every statement: with 40,
/// scoring's peak RSS over the bench fell from 64.6 to 61.3 MiB, its plateau
/// under ingest from 58 to 52 MiB, with ingest within run-to-run noise
/// (docs/performance.md, round 6). The hot statements of a service fit.
const SQLITE_STATEMENT_CACHE: usize = 40;

/// How often the SQLite write-ahead log is folded back into the database.
const WAL_CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
/// How long a checkpoint waits for readers (holding writers back meanwhile).
const WAL_CHECKPOINT_PATIENCE: Duration = Duration::from_millis(50);

/// On SQLite, a task that checkpoints the write-ahead log every 2 s and
/// truncates it. SQLite's own automatic checkpoint is passive: under a
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
    use sea_orm::sqlx::sqlite::SqliteConnectOptions;
    use sea_orm::sqlx::{ConnectOptions as _, Executor as _};
    if !settings.url.starts_with("sqlite:") || settings.url.contains(":memory:") {
        return Ok(None);
    }
    let options: SqliteConnectOptions = prepare_sqlite(&settings.url)?
        .parse()
        .map_err(|e| anyhow::anyhow!("database.url: {}", redact_urls(&format!("{e}"))))?;
    // The same journal settings as the pool's connections (connect()).
    let options = options
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(WAL_CHECKPOINT_PATIENCE);
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
            if let Err(error) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").await {
                tracing::debug!(%error, "WAL checkpoint skipped");
            }
        }
    })))
}

/// Tables whose statistics are this far behind get an ANALYZE: more than
/// `ANALYZE_MIN_CHANGES` rows changed, and more than `ANALYZE_GROWTH` of the
/// rows the last statistics counted.
const ANALYZE_MIN_CHANGES: f64 = 1_000.0;
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
             WHERE s.n_mod_since_analyze > $1 + $2 * GREATEST(c.reltuples, 0)",
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

/// Bound values per statement at most (SQLite allows 32,766, PostgreSQL 65,535).
pub const MAX_BINDS: usize = 30_000;

/// Splits rows for multi-row statements of `width` values per row into
/// chunks of 256, 64, 16, 4 or 1 rows. Statements are cached per connection
/// by their text; with a few fixed sizes the texts repeat, so a batch reuses
/// prepared statements instead of parsing (and caching) one statement per
/// batch size, which had scoring hold hundreds of MiB. Larger statements
/// saved little time and cost memory in every connection's cache.
pub fn statement_chunks<T>(rows: &[T], width: usize) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let mut rest = rows;
    for size in chunk_sizes(rows.len(), width) {
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// `column` among `keys`, in as few conditions as the backend allows, one
/// per statement: on PostgreSQL one `column = ANY($1)` taking an array (one
/// statement and one plan however many keys: a group's reads were ~16
/// IN-list statements each, planned one by one), on SQLite IN lists of the
/// `statement_chunks` sizes.
pub fn among<C: sea_orm::ColumnTrait>(
    backend: DbBackend,
    column: C,
    keys: &[&str],
) -> Vec<sea_orm::sea_query::SimpleExpr> {
    if keys.is_empty() {
        return Vec::new();
    }
    if backend == DbBackend::Postgres {
        let array: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        use sea_orm::sea_query::extension::postgres::PgFunc;
        use sea_orm::sea_query::{Expr, ExprTrait};
        return vec![ExprTrait::eq(
            Expr::col(column.as_column_ref()),
            PgFunc::any(Expr::val(array)),
        )];
    }
    statement_chunks(keys, 1)
        .into_iter()
        .map(|chunk| column.is_in(chunk.iter().copied()))
        .collect()
}

/// The sizes `statement_chunks` cuts `rows` rows into.
fn chunk_sizes(mut rows: usize, width: usize) -> Vec<usize> {
    let fits = (MAX_BINDS / width.max(1)).max(1);
    let mut sizes = Vec::new();
    while rows > 0 {
        let size = [256, 64, 16, 4, 1]
            .into_iter()
            .find(|&size| size <= rows && size <= fits)
            .unwrap_or(1);
        sizes.push(size);
        rows -= size;
    }
    sizes
}

/// Inserts `rows` with one multi-row INSERT per chunk (`statement_chunks`
/// sizes, so the statement texts repeat), each with `on_conflict` when
/// given. Returns the rows written (on a conflict, what the clause did:
/// with DO NOTHING, only the new rows count).
pub async fn insert_chunks<A>(
    conn: &impl ConnectionTrait,
    rows: Vec<A>,
    on_conflict: Option<&OnConflict>,
) -> Result<u64, DbErr>
where
    A: ActiveModelTrait,
{
    let mut written = 0;
    for chunk in chunks_of(rows) {
        let mut insert = A::Entity::insert_many(chunk);
        if let Some(on_conflict) = on_conflict {
            insert = insert.on_conflict(on_conflict.clone());
        }
        written += insert.exec_without_returning(conn).await?;
    }
    Ok(written)
}

/// `insert_chunks` that returns the rows as written (`RETURNING`): for
/// upserts whose result the caller needs, such as a counter it increments.
pub async fn insert_chunks_returning<A>(
    conn: &impl ConnectionTrait,
    rows: Vec<A>,
    on_conflict: Option<&OnConflict>,
) -> Result<Vec<<A::Entity as EntityTrait>::Model>, DbErr>
where
    A: ActiveModelTrait,
    <A::Entity as EntityTrait>::Model: IntoActiveModel<A>,
{
    let mut written = Vec::with_capacity(rows.len());
    for chunk in chunks_of(rows) {
        let mut insert = A::Entity::insert_many(chunk);
        if let Some(on_conflict) = on_conflict {
            insert = insert.on_conflict(on_conflict.clone());
        }
        written.extend(insert.exec_with_returning(conn).await?);
    }
    Ok(written)
}

/// Active models in `statement_chunks` sizes, one value per column and row.
fn chunks_of<A: ActiveModelTrait>(rows: Vec<A>) -> Vec<Vec<A>> {
    let width = <A::Entity as EntityTrait>::Column::iter().count();
    let mut rows = rows.into_iter();
    chunk_sizes(rows.len(), width)
        .into_iter()
        .map(|size| rows.by_ref().take(size).collect())
        .collect()
}

/// A statement written with PostgreSQL's `$1` placeholders, for either
/// backend. SQLite gets anonymous `?` placeholders, with the values in the
/// order they appear: SQLite takes `$12` as a *named* parameter and finds
/// each name by a linear search, when parsing and again (through sqlx) when
/// binding, so a 6,000-value INSERT spent most of its time there (profile in
/// docs/performance.md). `$` inside a quoted literal is left alone.
pub fn statement(
    backend: DbBackend,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Statement {
    if backend != DbBackend::Sqlite {
        return Statement::from_sql_and_values(backend, sql, values);
    }
    let bytes = sql.as_bytes();
    let mut values: Vec<Option<Value>> = values.into_iter().map(Some).collect();
    // Where each value went on its first use, for a second use to copy.
    let mut first_use: Vec<usize> = vec![0; values.len()];
    let mut taken: Vec<Value> = Vec::with_capacity(values.len());
    let mut text = String::with_capacity(sql.len());
    let (mut copied, mut i, mut quoted) = (0, 0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            b'$' if !quoted => {
                let end = i
                    + 1
                    + bytes[i + 1..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                let index = sql[i + 1..end]
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| n.checked_sub(1));
                if let Some(slot) = index.filter(|&k| k < values.len()) {
                    // The usual single use moves the value; a second one copies it.
                    let value = match values[slot].take() {
                        Some(value) => {
                            first_use[slot] = taken.len();
                            value
                        }
                        None => taken[first_use[slot]].clone(),
                    };
                    text.push_str(&sql[copied..i]);
                    text.push('?');
                    taken.push(value);
                    copied = end;
                    i = end;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    text.push_str(&sql[copied..]);
    Statement::from_sql_and_values(backend, text, taken)
}

/// How long a SQLite writer waits for the file's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Writers of one SQLite file, queued in this process (see `begin_write`).
type WriterQueue = Arc<tokio::sync::Mutex<()>>;

static SQLITE_WRITERS: LazyLock<std::sync::Mutex<HashMap<PathBuf, WriterQueue>>> =
    LazyLock::new(Default::default);

/// The queue of the SQLite file `db` writes to (`None` on PostgreSQL, and for
/// in-memory databases, which are private to one connection).
fn sqlite_writers(db: &DatabaseConnection) -> Option<WriterQueue> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return None;
    }
    let options = db.get_sqlite_connection_pool().connect_options();
    let file = options.get_filename();
    if file.as_os_str().is_empty() || file.to_string_lossy().contains(":memory:") {
        return None;
    }
    // Keyed by the path the pool opened (no filesystem call on this hot
    // path): one service's pool always names its file the same way.
    let mut queues = SQLITE_WRITERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(queue) = queues.get(file) {
        return Some(queue.clone());
    }
    Some(queues.entry(file.to_path_buf()).or_default().clone())
}

/// A turn to write to `db`'s SQLite file, for a write outside `begin_write`
/// (an autocommit statement): hold it until the statement is done. `None` on
/// PostgreSQL. Waiting longer than SQLite's own busy timeout is reported as
/// the database being unavailable (retryable), as a busy file would be.
pub async fn write_turn(
    db: &DatabaseConnection,
) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>, DbErr> {
    let Some(queue) = sqlite_writers(db) else {
        return Ok(None);
    };
    tokio::time::timeout(SQLITE_BUSY_TIMEOUT, queue.lock_owned())
        .await
        .map(Some)
        .map_err(|_| DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout))
}

/// A transaction that holds the write lock from its first statement (see
/// `begin_write`); use it as any connection, then `commit`.
pub struct WriteTransaction {
    // Field order matters: the transaction ends (rolls back if not
    // committed) before the next writer of the file is let in.
    txn: DatabaseTransaction,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTransaction {
    pub async fn commit(self) -> Result<(), DbErr> {
        self.txn.commit().await
    }

    pub async fn rollback(self) -> Result<(), DbErr> {
        self.txn.rollback().await
    }

    /// A nested transaction (a savepoint) inside this one.
    pub async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        self.txn.begin().await
    }
}

#[sea_orm::prelude::async_trait::async_trait]
impl ConnectionTrait for WriteTransaction {
    fn get_database_backend(&self) -> DbBackend {
        self.txn.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.txn.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.txn.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.txn.query_one_raw(stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.txn.query_all_raw(stmt).await
    }
}

/// Begins a transaction that holds the write lock from its first statement.
/// On SQLite a transaction that reads first and writes later can fail with
/// SQLITE_BUSY when another writer commits in between; taking the lock up
/// front makes it wait instead. Writers of the file in this process first
/// queue in the process (FIFO), before taking a pool connection: SQLite's
/// own wait (the busy timeout) polls with sleeps of up to 100 ms, leaving the
/// lock idle after each commit, and each waiter would hold a connection the
/// readers need. PostgreSQL needs neither. (The outbox's short autocommit
/// statements do not queue: measured, queuing them beside ingest's
/// transactions cost ingest 15-25 %; see docs/performance.md.)
pub async fn begin_write(db: &DatabaseConnection) -> Result<WriteTransaction, DbErr> {
    let turn = write_turn(db).await?;
    let txn = db.begin().await?;
    if txn.get_database_backend() == DbBackend::Sqlite {
        // A write statement takes the lock even when it matches no row.
        txn.execute_unprepared("UPDATE seaql_migrations SET version = version WHERE 1 = 0")
            .await?;
    }
    Ok(WriteTransaction { txn, _turn: turn })
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

/// Updates many rows of one tenant: `WITH v (key, columns...) AS (...)
/// UPDATE table SET column = v.column ... FROM v`, where `v` is one UNNEST of
/// column arrays on PostgreSQL (one statement) and VALUES lists of the
/// `statement_chunks` sizes on SQLite. Each row of `rows` holds the key's value, then one
/// value per column. `also` is added to the SET list as written (for example
/// `version = accounts.version + 1`). One statement for hundreds of rows
/// instead of one per row: on PostgreSQL each statement is a round trip and
/// an executor start, which is what lifecycle's per-account apply spent its
/// CPU on (docs/performance.md). Works on PostgreSQL and SQLite >= 3.33.
pub async fn update_from_values(
    conn: &impl ConnectionTrait,
    table: &str,
    tenant_id: &str,
    key: &str,
    columns: &[&str],
    also: Option<&str>,
    rows: Vec<Vec<Value>>,
) -> Result<(), DbErr> {
    let width = columns.len() + 1;
    let mut sets: Vec<String> = columns.iter().map(|c| format!("{c} = v.{c}")).collect();
    sets.extend(also.map(str::to_owned));
    let sets = sets.join(", ");
    let names = std::iter::once(key)
        .chain(columns.iter().copied())
        .collect::<Vec<_>>()
        .join(", ");
    if rows.is_empty() {
        return Ok(());
    }
    if conn.get_database_backend() == DbBackend::Postgres {
        // One statement taking one array per column, however many rows: the
        // chunked VALUES form was up to five statements, each parsed, bound
        // value by value and planned (docs/performance.md, round 6).
        let mut arrays: Vec<Vec<Value>> = vec![Vec::with_capacity(rows.len()); width];
        for row in rows {
            debug_assert_eq!(row.len(), width, "one value per column and the key");
            for (column, value) in arrays.iter_mut().zip(row) {
                column.push(value);
            }
        }
        let params = (0..width)
            .map(|c| format!("${}", c + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "WITH v ({names}) AS (SELECT * FROM UNNEST({params})) UPDATE {table} SET {sets} FROM v \
             WHERE {table}.tenant_id = $1 AND {table}.{key} = v.{key}"
        );
        let mut values: Vec<Value> = Vec::with_capacity(1 + width);
        values.push(tenant_id.into());
        for column in arrays {
            let kind = column[0].array_type();
            values.push(Value::Array(kind, Some(Box::new(column))));
        }
        conn.execute_raw(statement(DbBackend::Postgres, &sql, values))
            .await?;
        return Ok(());
    }
    for chunk in statement_chunks(&rows, width) {
        let tuples = (0..chunk.len())
            .map(|r| {
                let cells = (0..width)
                    .map(|c| format!("${}", 2 + r * width + c))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("({cells})")
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "WITH v ({names}) AS (VALUES {tuples}) UPDATE {table} SET {sets} FROM v \
             WHERE {table}.tenant_id = $1 AND {table}.{key} = v.{key}"
        );
        let mut values: Vec<Value> = Vec::with_capacity(1 + chunk.len() * width);
        values.push(tenant_id.into());
        for row in chunk {
            debug_assert_eq!(row.len(), width, "one value per column and the key");
            values.extend(row.iter().cloned());
        }
        conn.execute_raw(statement(conn.get_database_backend(), &sql, values))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn chunks_take_a_few_fixed_sizes() {
        let rows: Vec<u32> = (0..1_500).collect();
        let sizes: Vec<usize> = statement_chunks(&rows, 12)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [256, 256, 256, 256, 256, 64, 64, 64, 16, 4, 4, 4]);
        assert_eq!(sizes.iter().sum::<usize>(), 1_500);
        // Wide rows: never more than MAX_BINDS values in one statement.
        let sizes: Vec<usize> = statement_chunks(&rows[..300], 200)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [64, 64, 64, 64, 16, 16, 4, 4, 4]);
        assert!(statement_chunks(&rows[..0], 3).is_empty());
    }

    #[test]
    fn sqlite_statements_get_positional_placeholders_in_use_order() {
        let values: Vec<Value> = vec![1_i64.into(), "two".into(), 3_i64.into()];
        let sql = "SELECT '$1 stays', $2 WHERE a = $1 AND b = $3 OR c = $1 AND d = $10";
        let s = statement(DbBackend::Sqlite, sql, values.clone());
        assert_eq!(
            s.sql,
            "SELECT '$1 stays', ? WHERE a = ? AND b = ? OR c = ? AND d = $10"
        );
        let expected: Vec<Value> = vec!["two".into(), 1_i64.into(), 3_i64.into(), 1_i64.into()];
        assert_eq!(s.values.expect("values").0, expected);

        let pg = statement(DbBackend::Postgres, sql, values.clone());
        assert_eq!(pg.sql, sql);
        assert_eq!(pg.values.expect("values").0, values);
    }

    #[tokio::test]
    async fn sqlite_runs_the_rewritten_statement() {
        let db = Database::connect("sqlite::memory:").await.expect("connect");
        let row = db
            .query_one_raw(statement(
                DbBackend::Sqlite,
                "SELECT $2 - $1 AS d, $1 + $1 AS twice",
                vec![10_i64.into(), 52_i64.into()],
            ))
            .await
            .expect("query")
            .expect("row");
        assert_eq!(row.try_get::<i64>("", "d").expect("d"), 42);
        assert_eq!(row.try_get::<i64>("", "twice").expect("twice"), 20);
    }
}
