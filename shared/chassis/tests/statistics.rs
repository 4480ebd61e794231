//! The statistics keeper (PostgreSQL): a table that grew since its statistics
//! were taken is analyzed, so batch lookups are planned as index probes; one
//! rewritten at the same size is not; a small one gets its first statistics.

use std::time::{Duration, Instant};

use cascade_chassis::db;
use cascade_testkit::TestDatabase;
use sea_orm::{ConnectionTrait, Statement};

async fn scalar(db: &sea_orm::DatabaseConnection, sql: &str) -> String {
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("query");
    rows.iter()
        .map(|r| r.try_get_by_index::<String>(0).expect("text column"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A table `name` of `rows` rows of one tenant, autovacuum off: the keeper,
/// not autovacuum, must analyze it.
async fn table_of(db: &sea_orm::DatabaseConnection, name: &str, rows: u32) {
    db.execute_unprepared(&format!(
        "CREATE TABLE {name} (tenant_id TEXT NOT NULL, id TEXT NOT NULL, \
         PRIMARY KEY (tenant_id, id)) WITH (autovacuum_enabled = false)"
    ))
    .await
    .expect("create");
    db.execute_unprepared(&format!(
        "INSERT INTO {name} SELECT 'one', g::text FROM generate_series(1, {rows}) g"
    ))
    .await
    .expect("insert");
}

/// Runs keeper rounds until one analyzes `table` (backends report their
/// changes asynchronously), then returns the rows its statistics counted.
async fn analyzed_by_a_round(db: &sea_orm::DatabaseConnection, table: &str) -> String {
    let name = format!("public.{table}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let analyzed = db::analyze_changed_tables(db).await.expect("round");
        if analyzed.contains(&name) {
            break;
        }
        assert!(Instant::now() < deadline, "{table} was never analyzed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    scalar(
        db,
        &format!("SELECT reltuples::bigint::text FROM pg_class WHERE relname = '{table}'"),
    )
    .await
}

/// Waits until the statistics collector shows `condition` on `table`'s row
/// of `pg_stat_user_tables`, so a round that follows sees the change.
async fn counted(db: &sea_orm::DatabaseConnection, table: &str, condition: &str) {
    let sql =
        format!("SELECT ({condition})::text FROM pg_stat_user_tables WHERE relname = '{table}'");
    let deadline = Instant::now() + Duration::from_secs(30);
    while scalar(db, &sql).await != "true" {
        assert!(Instant::now() < deadline, "{table}: never {condition}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether one keeper round now analyzes `table`.
async fn analyzed_again(db: &sea_orm::DatabaseConnection, table: &str) -> bool {
    let again = db::analyze_changed_tables(db).await.expect("round");
    again.contains(&format!("public.{table}"))
}

#[tokio::test]
async fn postgres_tables_that_grew_are_analyzed_and_planned_as_probes() {
    let Some(test) = TestDatabase::postgres().await else {
        return;
    };
    let conn = db::connect(&test.settings).await.expect("connect");
    table_of(&conn, "t", 20_000).await;
    let explain = "EXPLAIN SELECT * FROM t WHERE tenant_id = 'one' AND id IN ('1', '2', '3')";
    let before = scalar(&conn, explain).await;

    assert_eq!(analyzed_by_a_round(&conn, "t").await, "20000");
    // Up to date now: the next round leaves it alone.
    assert!(!analyzed_again(&conn, "t").await);
    // With statistics, the ids are index conditions, not a filter over the
    // tenant's rows (which is what the plan without them did).
    let after = scalar(&conn, explain).await;
    assert!(
        after.contains("Index Cond") && after.contains("id = ANY"),
        "after ANALYZE: {after}"
    );
    assert!(
        !after.contains("Filter"),
        "after ANALYZE the ids filter nothing: {after}"
    );
    assert_ne!(before, after, "the plan did not change");

    // Rewriting every row keeps the size and the plan: no ANALYZE for it
    // (hot score and usage tables are rewritten by every batch).
    conn.execute_unprepared("UPDATE t SET id = id || 'x'")
        .await
        .expect("update");
    counted(&conn, "t", "n_mod_since_analyze >= 20000").await;
    assert!(
        !analyzed_again(&conn, "t").await,
        "a table of the same size was analyzed again"
    );
}

#[tokio::test]
async fn postgres_small_tables_get_their_first_statistics() {
    let Some(test) = TestDatabase::postgres().await else {
        return;
    };
    let conn = db::connect(&test.settings).await.expect("connect");
    // Like lifecycle's accounts in the bench: 200 rows, far below the
    // growth threshold. Without any statistics the planner read one account
    // through another index, filtering all 200 rows (docs/performance.md).
    table_of(&conn, "small", 200).await;
    assert_eq!(analyzed_by_a_round(&conn, "small").await, "200");
    // Fifty rows more are not worth another ANALYZE (fewer than 100 rows and
    // than the 200 counted), once the statistics have seen them.
    conn.execute_unprepared(
        "INSERT INTO small SELECT 'one', 'x' || g FROM generate_series(1, 50) g",
    )
    .await
    .expect("insert more");
    counted(&conn, "small", "n_live_tup = 250").await;
    assert!(!analyzed_again(&conn, "small").await);
}

#[tokio::test]
async fn sqlite_has_no_keeper() {
    let test = TestDatabase::sqlite();
    let conn = db::connect(&test.settings).await.expect("connect");
    assert!(db::spawn_statistics_keeper(&conn, &test.settings).is_none());
}
