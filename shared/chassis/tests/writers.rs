//! SQLite writers of one file queue in the process (`db::begin_write`): a
//! writer waiting for its turn holds no pool connection, so reads go on
//! while writers wait, and every queued writer commits in turn.

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

#[tokio::test]
async fn sqlite_writers_wait_their_turn_without_holding_connections() {
    let test = TestDatabase::sqlite();
    let mut settings = test.settings.clone();
    settings.max_connections = Some(2);
    settings.acquire_timeout_ms = 5_000;
    let conn = db::connect(&settings).await.expect("connect");
    // begin_write takes the lock with a statement on the migrations table.
    for sql in [
        "CREATE TABLE seaql_migrations (version TEXT PRIMARY KEY, applied_at BIGINT)",
        "CREATE TABLE t (n INTEGER)",
    ] {
        conn.execute_unprepared(sql).await.expect("schema");
    }
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
    for writer in waiting {
        writer
            .await
            .expect("writer task")
            .expect("a queued writer commits in its turn");
    }
    assert_eq!(count(&conn).await, 4);
}
