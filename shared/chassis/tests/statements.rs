//! `update_from_values` on both backends: it updates the tenant's rows by
//! key and nothing of another tenant, and on SQLite each row is one
//! primary-key probe, however large the tenant (docs/performance.md, round 10).

use cascade_chassis::db::{self, RowsUpdate};
use cascade_testkit::TestDatabase;
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

const ONE: usize = 2_000;

async fn table(conn: &sea_orm::DatabaseConnection) {
    // The shape of lifecycle's contacts: a primary key, the tenant, and two
    // indexes that start with the tenant (ix_contacts_tenant_id and
    // ix_contacts_changed): with both, SQLite 3.51 chose the wrong loop.
    conn.execute_unprepared(
        "CREATE TABLE t (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, \
         score DOUBLE PRECISION NOT NULL, updated BIGINT NOT NULL)",
    )
    .await
    .expect("create");
    for index in [
        "CREATE INDEX ix_t_tenant_id ON t (tenant_id, id)",
        "CREATE INDEX ix_t_changed ON t (tenant_id, updated, id)",
    ] {
        conn.execute_unprepared(index).await.expect("index");
    }
    let rows: Vec<String> = (0..ONE)
        .map(|i| format!("('one-{i:05}', 'one', 0, {i})"))
        .chain((0..10).map(|i| format!("('two-{i:05}', 'two', 0, {i})")))
        .collect();
    conn.execute_unprepared(&format!("INSERT INTO t VALUES {}", rows.join(", ")))
        .await
        .expect("insert");
}

const UPDATE: RowsUpdate<'static> = RowsUpdate {
    table: "t",
    key: "id",
    columns: &["score"],
    also: Some("updated = t.updated + 1"),
};

/// 300 rows of tenant `one` (chunks of 256, 16, 16, 4, 4, 4 on SQLite), one
/// of them naming tenant `two`'s row.
fn rows() -> Vec<Vec<Value>> {
    let mut rows: Vec<Vec<Value>> = (0..299)
        .map(|i| vec![format!("one-{i:05}").into(), 7.5_f64.into()])
        .collect();
    rows.push(vec!["two-00003".into(), 7.5_f64.into()]);
    rows
}

async fn count(conn: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    conn.query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .expect("query")
        .expect("row")
        .try_get_by_index::<i64>(0)
        .expect("count")
}

async fn updates_by_key_within_the_tenant(test: TestDatabase) {
    let conn = db::connect(&test.settings).await.expect("connect");
    table(&conn).await;
    db::update_from_values(
        &conn,
        UPDATE.table,
        "one",
        UPDATE.key,
        UPDATE.columns,
        UPDATE.also,
        rows(),
    )
    .await
    .expect("update");
    assert_eq!(
        count(&conn, "SELECT COUNT(*) FROM t WHERE score = 7.5").await,
        299,
        "every named row of the tenant, and no other"
    );
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM t WHERE tenant_id = 'one' AND score = 7.5 AND updated = \
             CAST(SUBSTR(id, 5) AS INTEGER) + 1"
        )
        .await,
        299,
        "`also` applied once per row"
    );
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM t WHERE tenant_id = 'two' AND score <> 0"
        )
        .await,
        0,
        "another tenant's row named by key is left alone"
    );
}

#[tokio::test]
async fn sqlite_updates_by_key_within_the_tenant() {
    updates_by_key_within_the_tenant(TestDatabase::sqlite()).await;
}

#[tokio::test]
async fn postgres_updates_by_key_within_the_tenant() {
    if let Some(test) = TestDatabase::postgres().await {
        updates_by_key_within_the_tenant(test).await;
    }
}

/// A NULL among the values is written as NULL. On PostgreSQL the driver
/// binds arrays of non-NULL values only, and a NULL panicked the call:
/// lifecycle's score update then failed for every delivery without a
/// running total (from an older scoring).
async fn writes_a_null(test: TestDatabase) {
    let conn = db::connect(&test.settings).await.expect("connect");
    conn.execute_unprepared(
        "CREATE TABLE n (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, \
         total DOUBLE PRECISION NULL, day BIGINT NULL)",
    )
    .await
    .expect("create");
    conn.execute_unprepared("INSERT INTO n VALUES ('a', 'one', 1, 1), ('b', 'one', 2, 2)")
        .await
        .expect("insert");
    let rows = vec![
        vec!["a".into(), Value::Double(None), Value::BigInt(Some(10))],
        vec!["b".into(), Value::Double(Some(2.5)), Value::BigInt(None)],
    ];
    db::update_from_values(&conn, "n", "one", "id", &["total", "day"], None, rows)
        .await
        .expect("update with NULLs");
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM n WHERE (id = 'a' AND total IS NULL AND day = 10) \
             OR (id = 'b' AND total = 2.5 AND day IS NULL)"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn sqlite_writes_a_null() {
    writes_a_null(TestDatabase::sqlite()).await;
}

#[tokio::test]
async fn postgres_writes_a_null() {
    if let Some(test) = TestDatabase::postgres().await {
        writes_a_null(test).await;
    }
}

/// Without statistics SQLite planned `tenant_id = ?` on the tenant index as
/// the outer loop from 64 rows on: the whole tenant read once per row.
#[tokio::test]
async fn sqlite_probes_the_primary_key_once_per_row() {
    let test = TestDatabase::sqlite();
    let conn = db::connect(&test.settings).await.expect("connect");
    table(&conn).await;
    let statements = UPDATE.statements(DbBackend::Sqlite, "one", rows());
    assert_eq!(statements.len(), 6, "chunks of 256, 16, 16, 4, 4, 4");
    for statement in statements {
        let explain = Statement {
            sql: format!("EXPLAIN QUERY PLAN {}", statement.sql),
            ..statement
        };
        let plan: Vec<String> = conn
            .query_all_raw(explain)
            .await
            .expect("plan")
            .iter()
            .map(|row| row.try_get::<String>("", "detail").expect("detail"))
            .collect();
        let on_t: Vec<&String> = plan
            .iter()
            .filter(|line| line.contains(" t ") || line.ends_with(" t"))
            .collect();
        assert!(
            !on_t.is_empty() && on_t.iter().all(|line| line.contains("(id=?)")),
            "each row of v must be a probe of t's primary key, got {plan:?}"
        );
    }
}
