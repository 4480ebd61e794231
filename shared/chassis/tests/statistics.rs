//! The statistics keeper: a table that grew since its statistics were taken
//! is analyzed (PostgreSQL), so batch lookups are planned as index probes.

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

#[tokio::test]
async fn postgres_tables_that_grew_are_analyzed_and_planned_as_probes() {
    let Some(test) = TestDatabase::postgres().await else {
        return;
    };
    let conn = db::connect(&test.settings).await.expect("connect");
    // Autovacuum off for this table: the keeper, not autovacuum, must do it.
    conn.execute_unprepared(
        "CREATE TABLE t (tenant_id TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (tenant_id, id)) \
         WITH (autovacuum_enabled = false)",
    )
    .await
    .expect("create");
    conn.execute_unprepared("INSERT INTO t SELECT 'one', g::text FROM generate_series(1, 20000) g")
        .await
        .expect("insert");
    let explain = "EXPLAIN SELECT * FROM t WHERE tenant_id = 'one' AND id IN ('1', '2', '3')";
    let before = scalar(&conn, explain).await;

    // Backends report their changes asynchronously: poll.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let analyzed = db::analyze_changed_tables(&conn).await.expect("round");
        if analyzed.iter().any(|t| t == "public.t") {
            break;
        }
        assert!(Instant::now() < deadline, "t was never analyzed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counted = scalar(
        &conn,
        "SELECT reltuples::bigint::text FROM pg_class WHERE relname = 't'",
    )
    .await;
    assert_eq!(counted, "20000");
    // Up to date now: the next round leaves it alone.
    let again = db::analyze_changed_tables(&conn).await.expect("round");
    assert!(!again.iter().any(|t| t == "public.t"), "{again:?}");
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while scalar(
        &conn,
        "SELECT (n_mod_since_analyze >= 20000)::text FROM pg_stat_user_tables WHERE relname = 't'",
    )
    .await
        != "true"
    {
        assert!(Instant::now() < deadline, "the update was never counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let churned = db::analyze_changed_tables(&conn).await.expect("round");
    assert!(
        !churned.iter().any(|t| t == "public.t"),
        "a table of the same size was analyzed again: {churned:?}"
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
    conn.execute_unprepared(
        "CREATE TABLE small (tenant_id TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (tenant_id, id)) \
         WITH (autovacuum_enabled = false)",
    )
    .await
    .expect("create");
    conn.execute_unprepared(
        "INSERT INTO small SELECT 'one', g::text FROM generate_series(1, 200) g",
    )
    .await
    .expect("insert");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let analyzed = db::analyze_changed_tables(&conn).await.expect("round");
        if analyzed.iter().any(|t| t == "public.small") {
            break;
        }
        assert!(Instant::now() < deadline, "small was never analyzed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counted = scalar(
        &conn,
        "SELECT reltuples::bigint::text FROM pg_class WHERE relname = 'small'",
    )
    .await;
    assert_eq!(counted, "200");
    // Fifty rows more are not worth another ANALYZE (fewer than 100 rows and
    // than the 200 counted), once the statistics have seen them.
    conn.execute_unprepared(
        "INSERT INTO small SELECT 'one', 'x' || g FROM generate_series(1, 50) g",
    )
    .await
    .expect("insert more");
    let deadline = Instant::now() + Duration::from_secs(30);
    while scalar(
        &conn,
        "SELECT (n_live_tup = 250)::text FROM pg_stat_user_tables WHERE relname = 'small'",
    )
    .await
        != "true"
    {
        assert!(Instant::now() < deadline, "the rows were never counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let again = db::analyze_changed_tables(&conn).await.expect("round");
    assert!(!again.iter().any(|t| t == "public.small"), "{again:?}");
}

#[tokio::test]
async fn sqlite_has_no_keeper() {
    let test = TestDatabase::sqlite();
    let conn = db::connect(&test.settings).await.expect("connect");
    assert!(db::spawn_statistics_keeper(&conn, &test.settings).is_none());
}
