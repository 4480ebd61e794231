//! A pooled PostgreSQL connection the server dropped (a restart, an
//! administrator, a proxy) fails the statement that finds it broken as
//! UNAVAILABLE, retryable, never as an internal error; the pool replaces it.
//! A statement prepared before a migration changed its result type fails
//! the same way once, and is prepared again.
//! Connections are pinged before use only after sitting idle (db::connect),
//! so a connection dropped while in use is found this way.
//!
//! A PostgreSQL or SQLite connection that owes nothing goes back to the pool
//! without sqlx's ping (vendor/sqlx-core/PATCHED.md); the tests after the
//! first show, on both backends, that the others still take the ping's path:
//! a dropped transaction's rollback reaches the database at once, and a
//! statement dropped midway leaves nothing for the connection's next user to
//! trip on.

use cascade_chassis::{ServiceError, db};
use cascade_testkit::TestDatabase;
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use tonic::Code;

async fn one(conn: &sea_orm::DatabaseConnection) -> Result<i64, ServiceError> {
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT CAST(1 AS BIGINT)",
        ))
        .await?
        .ok_or_else(|| ServiceError::internal(anyhow::anyhow!("no row")))?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

async fn count(conn: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    conn.query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .expect("query")
        .expect("row")
        .try_get_by_index::<i64>(0)
        .expect("count")
}

/// A pool of one connection, so each statement reuses the one before it.
async fn pool_of_one(test: &TestDatabase) -> sea_orm::DatabaseConnection {
    let mut settings = test.settings.clone();
    settings.max_connections = Some(1);
    db::connect(&settings).await.expect("connect")
}

#[tokio::test]
async fn postgres_a_dropped_connection_is_unavailable_then_replaced() {
    let Some(test) = TestDatabase::postgres().await else {
        return;
    };
    let pool = pool_of_one(&test).await;
    assert_eq!(one(&pool).await.expect("first statement"), 1);

    // Another session ends the pooled connection's backend, as a restart does.
    let admin = db::connect(&test.settings).await.expect("admin connection");
    let ended = count(
        &admin,
        "SELECT COUNT(pg_terminate_backend(pid))::bigint FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await;
    assert_eq!(ended, 1, "the pool's one connection");
    // The backend is gone once it no longer shows.
    for _ in 0..100 {
        let left = count(
            &admin,
            "SELECT COUNT(*)::bigint FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    match one(&pool).await {
        // sqlx may notice the closed socket at checkout and reconnect.
        Ok(n) => assert_eq!(n, 1),
        Err(error) => {
            let status = tonic::Status::from(error);
            assert_eq!(
                status.code(),
                Code::Unavailable,
                "a dropped connection is our fault and retryable: {status:?}"
            );
        }
    }
    assert_eq!(
        one(&pool).await.expect("the pool replaced the connection"),
        1
    );
}

async fn execute(conn: &impl ConnectionTrait, sql: &str) {
    conn.execute_unprepared(sql).await.expect(sql);
}

/// The one key of `keys`, read with a prepared statement (it has a value).
async fn key(conn: &impl ConnectionTrait) -> Result<String, ServiceError> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id FROM keys WHERE id = $1",
            ["k".into()],
        ))
        .await?
        .ok_or_else(|| ServiceError::internal(anyhow::anyhow!("no row")))?;
    Ok(row.try_get_by_index::<String>(0)?)
}

fn code(error: ServiceError) -> Code {
    tonic::Status::from(error).code()
}

/// A newer release's migration that changes a column's collation (or type)
/// makes PostgreSQL refuse this release's prepared statements that return
/// the column ("cached plan must not change result type"). The first use
/// fails UNAVAILABLE, retryable, and the connection prepares its statements
/// again: the retry succeeds on the same connection, and so does the next
/// transaction after one the refusal aborted. Published sqlx failed every
/// later use on that connection
/// (vendor/sqlx-postgres/PATCHED.md, change 2).
#[tokio::test]
async fn postgres_a_stale_statement_is_unavailable_then_prepared_again() {
    let Some(test) = TestDatabase::postgres().await else {
        return;
    };
    let pool = pool_of_one(&test).await;
    execute(&pool, "CREATE TABLE keys (id VARCHAR(36) PRIMARY KEY)").await;
    execute(&pool, "INSERT INTO keys VALUES ('k')").await;
    assert_eq!(key(&pool).await.expect("prepared"), "k");
    let backend = "SELECT pg_backend_pid()::bigint";
    let connection = count(&pool, backend).await;

    let migration = db::connect(&test.settings).await.expect("another session");
    execute(
        &migration,
        r#"ALTER TABLE keys ALTER COLUMN id TYPE VARCHAR(36) COLLATE "C""#,
    )
    .await;
    let stale = key(&pool)
        .await
        .expect_err("the stale statement is refused");
    assert_eq!(code(stale), Code::Unavailable);
    assert_eq!(key(&pool).await.expect("prepared again"), "k");
    assert_eq!(key(&pool).await.expect("and kept"), "k");
    assert_eq!(
        count(&pool, backend).await,
        connection,
        "the same connection"
    );

    // In a transaction the refusal aborts it; after the rollback the
    // connection's next transaction reads again.
    execute(
        &migration,
        r#"ALTER TABLE keys ALTER COLUMN id TYPE VARCHAR(36) COLLATE "default""#,
    )
    .await;
    let txn = pool.begin().await.expect("begin");
    let stale = key(&txn).await.expect_err("refused in the transaction");
    assert_eq!(code(stale), Code::Unavailable);
    txn.rollback().await.expect("rolled back");
    let txn = pool.begin().await.expect("begin again");
    assert_eq!(key(&txn).await.expect("prepared again"), "k");
    txn.commit().await.expect("committed");
    assert_eq!(
        count(&pool, backend).await,
        connection,
        "the same connection"
    );
}

#[tokio::test]
async fn postgres_a_dropped_transaction_leaves_no_lock_in_the_pool() {
    let Some(test) = TestDatabase::postgres().await else {
        return;
    };
    a_dropped_transaction_leaves_no_lock_in_the_pool(&test).await;
}

#[tokio::test]
async fn sqlite_a_dropped_transaction_leaves_no_lock_in_the_pool() {
    a_dropped_transaction_leaves_no_lock_in_the_pool(&TestDatabase::sqlite()).await;
}

async fn a_dropped_transaction_leaves_no_lock_in_the_pool(test: &TestDatabase) {
    let pool = pool_of_one(test).await;
    execute(&pool, "CREATE TABLE held (id bigint PRIMARY KEY, n bigint)").await;
    execute(&pool, "INSERT INTO held VALUES (1, 0)").await;

    let txn = pool.begin().await.expect("begin");
    execute(&txn, "UPDATE held SET n = n + 1 WHERE id = 1").await;
    // Dropped without commit or rollback, as when a request is cancelled.
    drop(txn);

    // Another session may take the row lock (on SQLite, the file's write
    // lock) at once: the pooled connection did not go idle inside the
    // transaction. Otherwise PostgreSQL fails after 2 s, SQLite after its
    // busy timeout.
    let other = db::connect(&test.settings).await.expect("other session");
    let txn = other.begin().await.expect("begin");
    if other.get_database_backend() == DbBackend::Postgres {
        execute(&txn, "SET LOCAL lock_timeout = '2s'").await;
    }
    execute(&txn, "UPDATE held SET n = n + 10 WHERE id = 1").await;
    txn.commit().await.expect("commit");
    assert_eq!(
        count(&other, "SELECT n FROM held WHERE id = 1").await,
        10,
        "the dropped transaction's update was rolled back"
    );
    assert_eq!(one(&pool).await.expect("the pool's connection"), 1);
}

#[tokio::test]
async fn postgres_a_statement_dropped_midway_leaves_the_connection_clean() {
    let Some(test) = TestDatabase::postgres().await else {
        return;
    };
    a_statement_dropped_midway_leaves_the_connection_clean(
        &test,
        "SELECT 7::bigint FROM pg_sleep(0.3)",
    )
    .await;
}

#[tokio::test]
async fn sqlite_a_statement_dropped_midway_leaves_the_connection_clean() {
    // Counting to three million takes SQLite well over the 50 ms below.
    a_statement_dropped_midway_leaves_the_connection_clean(
        &TestDatabase::sqlite(),
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) \
         SELECT 7 + 0 * MAX(x) FROM c",
    )
    .await;
}

async fn a_statement_dropped_midway_leaves_the_connection_clean(test: &TestDatabase, slow: &str) {
    let pool = pool_of_one(test).await;
    let slow = pool.query_one_raw(Statement::from_string(pool.get_database_backend(), slow));
    let cut = tokio::time::timeout(std::time::Duration::from_millis(50), slow).await;
    assert!(cut.is_err(), "the statement was dropped before its reply");
    // The one connection serves the next statements with their own replies,
    // not the dropped statement's 7.
    for _ in 0..3 {
        assert_eq!(one(&pool).await.expect("next statement"), 1);
    }
}
