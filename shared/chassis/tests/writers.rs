//! SQLite writers of one file queue in the process (`db::begin_write`): a
//! writer waiting for its turn holds no pool connection, so reads go on
//! while writers wait, every queued writer commits in turn, and a caller
//! goes before background writers. Every
//! pooled connection has the journal settings writers rely on.

use std::time::Duration;

use cascade_chassis::db;
use cascade_testkit::TestDatabase;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

async fn count(db: &DatabaseConnection) -> i64 {
    db.query_one_raw(Statement::from_string(
        db.get_database_backend(),
        "SELECT COUNT(*) FROM t",
    ))
    .await
    .expect("count")
    .expect("a row")
    .try_get_by_index::<i64>(0)
    .expect("a number")
}

/// A SQLite file with a table `t`, on a pool of `connections`; keep the
/// `TestDatabase` while the connection is used.
async fn file_with_table(connections: u32) -> (TestDatabase, DatabaseConnection) {
    let test = TestDatabase::sqlite();
    let mut settings = test.settings.clone();
    settings.max_connections = Some(connections);
    settings.acquire_timeout_ms = 5_000;
    let conn = db::connect(&settings).await.expect("connect");
    // begin_write takes the lock with a statement on the migrations table.
    for sql in [
        "CREATE TABLE seaql_migrations (version TEXT PRIMARY KEY, applied_at BIGINT)",
        "CREATE TABLE t (n INTEGER)",
    ] {
        conn.execute_unprepared(sql).await.expect("schema");
    }
    (test, conn)
}

/// Waits for queued writers; each must have committed.
async fn all_commit(writers: Vec<tokio::task::JoinHandle<Result<(), sea_orm::DbErr>>>) {
    for writer in writers {
        writer
            .await
            .expect("writer task")
            .expect("a queued writer commits in its turn");
    }
}

#[tokio::test]
async fn sqlite_writers_wait_their_turn_without_holding_connections() {
    let (_test, conn) = file_with_table(2).await;
    let first = db::begin_write(&conn).await.expect("first writer");
    first
        .execute_unprepared("INSERT INTO t VALUES (1)")
        .await
        .expect("insert");
    let waiting: Vec<_> = (2..5)
        .map(|n| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let txn = db::begin_write(&conn).await?;
                txn.execute_unprepared(&format!("INSERT INTO t VALUES ({n})"))
                    .await?;
                txn.commit().await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Had a waiting writer taken the pool's second connection (to sit in
    // SQLite's busy wait), this read would wait for the first commit.
    let seen = tokio::time::timeout(Duration::from_secs(2), count(&conn))
        .await
        .expect("a read is not held up by writers waiting for the lock");
    assert_eq!(seen, 0, "nothing is committed yet");
    first.commit().await.expect("commit");
    all_commit(waiting).await;
    assert_eq!(count(&conn).await, 4);
}

/// A caller waiting for the write lock goes before background writers
/// (score deliveries) queued earlier, which then commit in their order.
#[tokio::test]
async fn a_caller_goes_before_queued_background_writers() {
    let (_test, conn) = file_with_table(3).await;
    let write = |n: i64, priority: db::WritePriority| {
        let conn = conn.clone();
        tokio::spawn(async move {
            let txn = db::begin_write_as(&conn, priority).await?;
            txn.execute_unprepared(&format!("INSERT INTO t VALUES ({n})"))
                .await?;
            txn.commit().await
        })
    };
    let first = db::begin_write(&conn).await.expect("first writer");
    first
        .execute_unprepared("INSERT INTO t VALUES (1)")
        .await
        .expect("insert");
    // Queued in this order while the first holds the lock.
    let mut waiting = Vec::new();
    for (n, priority) in [
        (2, db::WritePriority::Background),
        (3, db::WritePriority::Background),
        (4, db::WritePriority::Caller),
    ] {
        waiting.push(write(n, priority));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.commit().await.expect("commit");
    all_commit(waiting).await;
    let order: Vec<i64> = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT n FROM t ORDER BY rowid",
        ))
        .await
        .expect("rows")
        .iter()
        .map(|row| row.try_get_by_index::<i64>(0).expect("a number"))
        .collect();
    assert_eq!(
        order,
        [1, 4, 2, 3],
        "the caller commits right after the lock's holder, before the background writers"
    );
}

/// A caller that gives up waiting for the write lock (its request
/// cancelled, a timeout) no longer holds back a background writer waiting
/// behind it: the background writer gets the lock when its holder commits,
/// well before it would stop giving way to callers (2 s).
#[tokio::test]
async fn a_caller_that_gives_up_waiting_lets_background_writers_in() {
    let (_test, conn) = file_with_table(3).await;
    let first = db::begin_write(&conn).await.expect("first writer");
    let caller = {
        let conn = conn.clone();
        tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(300), db::begin_write(&conn))
                .await
                .is_err()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Waits while the caller is counted as waiting.
    let background = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let txn = db::begin_write_as(&conn, db::WritePriority::Background).await?;
            txn.execute_unprepared("INSERT INTO t VALUES (1)").await?;
            txn.commit().await
        })
    };
    assert!(
        caller.await.expect("caller task"),
        "the lock is held: the caller gave up waiting"
    );
    first.commit().await.expect("commit");
    tokio::time::timeout(Duration::from_millis(1_000), background)
        .await
        .expect("the background writer got the lock when its holder committed")
        .expect("background task")
        .expect("background writer");
    assert_eq!(count(&conn).await, 1);
}

/// Every pooled SQLite connection gets all of `db::connect`'s settings:
/// the write-ahead log with NORMAL sync, the busy timeout writers wait
/// with, foreign keys, and checkpoints every 10,000 log pages. (SeaORM
/// keeps one SQLite options hook, so a second one set on the options would
/// silently drop the others: this fails then.)
#[tokio::test]
async fn every_sqlite_connection_gets_the_journal_settings() {
    let test = TestDatabase::sqlite();
    let mut settings = test.settings.clone();
    settings.max_connections = Some(3);
    let conn = db::connect(&settings).await.expect("connect");
    // Three transactions held at once: three different pooled connections.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            sea_orm::TransactionTrait::begin(&conn)
                .await
                .expect("begin"),
        );
    }
    for txn in &held {
        let read = |sql: &str| {
            txn.query_one_raw(Statement::from_string(
                txn.get_database_backend(),
                sql.to_owned(),
            ))
        };
        let journal = read("PRAGMA journal_mode")
            .await
            .expect("pragma")
            .expect("row");
        assert_eq!(journal.try_get_by_index::<String>(0).expect("text"), "wal");
        for (name, expected) in [
            ("synchronous", 1), // NORMAL
            ("busy_timeout", 10_000),
            ("foreign_keys", 1),
            ("wal_autocheckpoint", 10_000),
        ] {
            let row = read(&format!("PRAGMA {name}"))
                .await
                .expect("pragma")
                .expect("row");
            assert_eq!(
                row.try_get_by_index::<i64>(0).expect("a number"),
                expected,
                "PRAGMA {name}"
            );
        }
    }
}
