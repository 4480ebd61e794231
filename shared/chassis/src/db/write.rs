//! Writing to SQLite one writer at a time: the process-wide queue per file,
//! and transactions that hold the write lock from their first statement.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sea_orm::sea_query::LockType;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    ExecResult, QueryResult, QuerySelect, Select, Statement, TransactionTrait,
};

/// How long a SQLite writer waits for the file's write lock.
pub(super) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Writers of one SQLite file, queued in this process (see `begin_write`).
type WriterQueue = Arc<Writers>;

/// Whose write it is: a caller waiting for its answer, or background work
/// (score deliveries) that a caller may go before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePriority {
    Caller,
    Background,
}

/// How long a background writer lets callers go first; after it, it keeps
/// its place in line, so a stream of callers cannot hold a delivery back
/// until the busy timeout (which the outbox would count as a failed attempt).
const BACKGROUND_GIVES_WAY_FOR: Duration = Duration::from_secs(2);

/// One SQLite file's write turn. Callers queue for `turn` in arrival order;
/// background writers queue for `background` first, one at a time, and take
/// `turn` only while no caller waits for it (for up to
/// `BACKGROUND_GIVES_WAY_FOR`), so a caller waits for the transaction holding
/// the lock, not for every background one queued (docs/performance.md, round
/// 23).
#[derive(Default)]
pub(super) struct Writers {
    turn: Arc<tokio::sync::Mutex<()>>,
    background: Arc<tokio::sync::Mutex<()>>,
    callers_waiting: AtomicUsize,
    callers_served: tokio::sync::Notify,
}

/// A caller counted as waiting for the turn until it has it, or gives up
/// (its request cancelled, the busy timeout): a count left behind would
/// hold every background writer back.
struct CallerWaiting<'a>(&'a Writers);

impl<'a> CallerWaiting<'a> {
    fn new(writers: &'a Writers) -> Self {
        writers.callers_waiting.fetch_add(1, Ordering::AcqRel);
        Self(writers)
    }
}

impl Drop for CallerWaiting<'_> {
    fn drop(&mut self) {
        self.0.callers_waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.callers_served.notify_waiters();
    }
}

/// A held write turn: the file's lock, and for a background writer its
/// place at the head of the background queue.
pub struct WriteTurn {
    _turn: tokio::sync::OwnedMutexGuard<()>,
    _background: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Writers {
    async fn take(&self, priority: WritePriority) -> WriteTurn {
        match priority {
            WritePriority::Caller => {
                let waiting = CallerWaiting::new(self);
                let turn = self.turn.clone().lock_owned().await;
                drop(waiting);
                WriteTurn {
                    _turn: turn,
                    _background: None,
                }
            }
            WritePriority::Background => {
                let background = self.background.clone().lock_owned().await;
                let gives_way_until = tokio::time::Instant::now() + BACKGROUND_GIVES_WAY_FOR;
                loop {
                    // Past the limit it waits in line like a caller.
                    let _ =
                        tokio::time::timeout_at(gives_way_until, self.no_caller_waiting()).await;
                    let turn = self.turn.clone().lock_owned().await;
                    // A caller that queued meanwhile goes first.
                    if self.callers_waiting.load(Ordering::Acquire) == 0
                        || tokio::time::Instant::now() >= gives_way_until
                    {
                        return WriteTurn {
                            _turn: turn,
                            _background: Some(background),
                        };
                    }
                }
            }
        }
    }

    /// Returns once no caller waits for the turn.
    async fn no_caller_waiting(&self) {
        loop {
            let served = self.callers_served.notified();
            tokio::pin!(served);
            served.as_mut().enable();
            if self.callers_waiting.load(Ordering::Acquire) == 0 {
                return;
            }
            served.await;
        }
    }
}

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
    Some(writers_of(file))
}

/// The queue of the SQLite file at `file`. Keyed by the path as opened (no
/// filesystem call on this hot path): one service's connections, the WAL
/// checkpointer's among them, are all opened from the one `database.url`.
fn writers_of(file: &Path) -> WriterQueue {
    let mut queues = SQLITE_WRITERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(queue) = queues.get(file) {
        return queue.clone();
    }
    queues.entry(file.to_path_buf()).or_default().clone()
}

/// The write turn of the SQLite file at `file`, for a connection of its own
/// outside the pool (the WAL checkpointer), in line with the pool's writers.
pub(super) async fn file_write_turn(file: &Path) -> Result<WriteTurn, DbErr> {
    take_turn(&writers_of(file), WritePriority::Caller).await
}

/// A turn to write to `db`'s SQLite file, for a write outside `begin_write`
/// (an autocommit statement): hold it until the statement is done. `None` on
/// PostgreSQL. Waiting longer than SQLite's own busy timeout is reported as
/// the database being unavailable (retryable), as a busy file would be.
pub async fn write_turn(db: &DatabaseConnection) -> Result<Option<WriteTurn>, DbErr> {
    write_turn_as(db, WritePriority::Caller).await
}

async fn write_turn_as(
    db: &DatabaseConnection,
    priority: WritePriority,
) -> Result<Option<WriteTurn>, DbErr> {
    let Some(queue) = sqlite_writers(db) else {
        return Ok(None);
    };
    take_turn(&queue, priority).await.map(Some)
}

/// `queue`'s turn; waiting longer than SQLite's own busy timeout is reported
/// as the database being unavailable (retryable), as a busy file would be.
async fn take_turn(queue: &Writers, priority: WritePriority) -> Result<WriteTurn, DbErr> {
    tokio::time::timeout(SQLITE_BUSY_TIMEOUT, queue.take(priority))
        .await
        .map_err(|_| DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout))
}

/// A transaction that holds the write lock from its first statement (see
/// `begin_write`); use it as any connection, then `commit`.
pub struct WriteTransaction {
    // Field order matters: the transaction ends (rolls back if not
    // committed) before the next writer of the file is let in.
    txn: DatabaseTransaction,
    _turn: Option<WriteTurn>,
}

impl WriteTransaction {
    /// Reads rows in order to change them, locked until this transaction
    /// ends, so changes to them never interleave (across replicas too): on
    /// PostgreSQL `SELECT ... FOR NO KEY UPDATE`; on SQLite the transaction
    /// already holds the file's write lock (`begin_write`) and the clause is
    /// left out. The way Cascade locks rows it updates; order `select` by
    /// key when it locks several, so two transactions never wait for each
    /// other. The lock excludes every other writer of the rows but not the
    /// key-share lock a foreign key check takes: a contact can be inserted
    /// under an account while a score delivery holds it (with `FOR UPDATE`
    /// each such insert waited for the delivery's commit; docs/performance.md,
    /// round 19). Rows about to be deleted take [`lock_one_to_delete`](Self::lock_one_to_delete).
    pub async fn lock_all<E: EntityTrait>(
        &self,
        select: Select<E>,
    ) -> Result<Vec<E::Model>, DbErr> {
        select.lock(LockType::NoKeyUpdate).all(self).await
    }

    /// [`lock_all`](Self::lock_all) for at most one row.
    pub async fn lock_one<E: EntityTrait>(
        &self,
        select: Select<E>,
    ) -> Result<Option<E::Model>, DbErr> {
        select.lock(LockType::NoKeyUpdate).one(self).await
    }

    /// A row this transaction will delete, locked `FOR UPDATE`: that also
    /// holds off the foreign key checks of rows being inserted under it, so
    /// none can be added to what the deletion leaves behind.
    pub async fn lock_one_to_delete<E: EntityTrait>(
        &self,
        select: Select<E>,
    ) -> Result<Option<E::Model>, DbErr> {
        select.lock_exclusive().one(self).await
    }

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
/// readers need. PostgreSQL needs neither. The outbox's short autocommit
/// statements queue too, through `write_turn` (docs/performance.md, round
/// 32: in SQLite's wait a claim lost to back-to-back writers for 328 ms),
/// and the WAL checkpointer's TRUNCATE, through `file_write_turn` (round 33).
pub async fn begin_write(db: &DatabaseConnection) -> Result<WriteTransaction, DbErr> {
    begin_write_as(db, WritePriority::Caller).await
}

/// `begin_write` for background work (score deliveries): on SQLite a caller
/// waiting for the write lock goes first (`Writers`).
pub async fn begin_write_as(
    db: &DatabaseConnection,
    priority: WritePriority,
) -> Result<WriteTransaction, DbErr> {
    let turn = write_turn_as(db, priority).await?;
    let txn = {
        let _waiting = crate::metrics::PoolWait::start();
        db.begin().await?
    };
    if txn.get_database_backend() == DbBackend::Sqlite {
        // A write statement takes the lock even when it matches no row.
        txn.execute_unprepared("UPDATE seaql_migrations SET version = version WHERE 1 = 0")
            .await?;
    }
    Ok(WriteTransaction { txn, _turn: turn })
}
