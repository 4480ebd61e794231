//! Upgrading a scoring database: the engaged flags migration fills the new
//! column from the buckets already stored, and stored scores from before
//! breakdowns were kept are recomputed, not trusted, and keys compare byte
//! by byte once the byte order migration ran (SQLite and PostgreSQL).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cascade_chassis::TenantId;
use cascade_scoring::storage::migration::Migrator;
use cascade_scoring::storage::{NewActivity, Totals};
use cascade_testkit::TestDatabase;
use cascade_testkit::on_each_database;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use sea_orm_migration::MigratorTrait;
use tonic::Code;

/// Account a1's score in tenant t, as the service reads it after the upgrade.
async fn totals_of_a1(conn: DatabaseConnection) -> Totals {
    cascade_scoring::storage::Repository::new(conn)
        .account_totals(&TenantId::parse("t").expect("tenant"), "a1")
        .await
        .expect("score")
}

/// Connects to `db` and applies the migrations before the one named `name`.
async fn schema_before(db: &TestDatabase, name: &str) -> DatabaseConnection {
    let conn = cascade_chassis::db::connect(&db.settings)
        .await
        .expect("connect");
    let before = Migrator::migrations()
        .iter()
        .position(|m| m.name() == name)
        .unwrap_or_else(|| panic!("no migration {name}"));
    Migrator::up(&conn, Some(u32::try_from(before).expect("few migrations")))
        .await
        .expect("older schema");
    conn
}

async fn engaged_flags_are_filled_from_the_buckets(db: TestDatabase) {
    let conn = schema_before(&db, "m20261201_100001_scores_engaged_flags").await;
    for sql in [
        // ann has engagement, bob intent only, cy engagement under another account.
        "INSERT INTO score_buckets VALUES ('t', 'a1', 'ann', 'email_open', FALSE, 1, 2, 1)",
        "INSERT INTO score_buckets VALUES ('t', 'a1', 'bob', 'web_research', TRUE, 1, 10, 1)",
        "INSERT INTO score_buckets VALUES ('t', 'a2', 'cy', 'email_open', FALSE, 1, 2, 1)",
        "INSERT INTO contact_scores VALUES ('t', 'ann', 'a1', 2.0, 1)",
        "INSERT INTO contact_scores VALUES ('t', 'bob', 'a1', 0.0, 1)",
        "INSERT INTO contact_scores VALUES ('t', 'cy', 'a1', 0.0, 1)",
    ] {
        conn.execute_unprepared(sql).await.expect(sql);
    }
    Migrator::up(&conn, None).await.expect("upgraded");
    let rows = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT contact_id, engaged FROM contact_scores ORDER BY contact_id",
        ))
        .await
        .expect("read");
    let flags: Vec<(String, bool)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get("", "contact_id").expect("id"),
                r.try_get("", "engaged").expect("flag"),
            )
        })
        .collect();
    assert_eq!(
        flags,
        [
            ("ann".to_owned(), true),
            ("bob".to_owned(), false),
            // cy's engagement is under a2, not the account its row names.
            ("cy".to_owned(), false),
        ]
    );
}

/// A stored score written before breakdowns were kept has none: reads and
/// batches must recompute it from the buckets rather than answer from it.
async fn scores_from_before_breakdowns_are_recomputed(db: TestDatabase) {
    let conn = schema_before(&db, "m20261204_100001_stored_breakdowns").await;
    let today = cascade_scoring::storage::today();
    for sql in [
        format!(
            "INSERT INTO score_buckets VALUES ('t', 'a1', 'ann', 'email_open', FALSE, {today}, 2, 1)"
        ),
        format!(
            "INSERT INTO score_buckets VALUES ('t', 'a1', 'bob', 'webinar_attended', FALSE, {today}, 25, 1)"
        ),
        // Today's, but not what the buckets say: only a recompute corrects it.
        format!(
            "INSERT INTO account_scores (tenant_id, account_id, engagement_score, intent_score, \
             engaged_contacts, computed_day, delivery_seq) VALUES ('t', 'a1', 999.0, 0.0, 1, {today}, 3)"
        ),
    ] {
        conn.execute_unprepared(&sql).await.expect(&sql);
    }
    Migrator::up(&conn, None).await.expect("upgraded");
    let totals = totals_of_a1(conn).await;
    assert_eq!(
        (
            totals.engagement,
            totals.engaged_contacts,
            totals.activities
        ),
        (27.0, 2, 2)
    );
    assert_eq!(totals.breakdown["webinar_attended"], (1, 25.0));
}

/// The byte order migration: rows stored before it are read through the
/// rebuilt indexes and still deduplicated, and on PostgreSQL every key
/// column (`VARCHAR`) of scoring's tables and outbox compares in "C" while
/// free text (`TEXT`) keeps the server's collation (SeaORM's own table of
/// applied migrations is not Cascade's to change).
async fn keys_compare_byte_by_byte_after_the_upgrade(db: TestDatabase) {
    let conn = schema_before(&db, "m20261206_100001_byte_order_keys").await;
    let today = cascade_scoring::storage::today();
    let activity = "INSERT INTO activities VALUES ('t', 'e-1', 'a1', 'ann', 'email_open', 0, 1, 2, 2, FALSE, FALSE, 0)";
    for sql in [
        activity.to_owned(),
        format!(
            "INSERT INTO score_buckets VALUES ('t', 'a1', 'ann', 'email_open', FALSE, {today}, 2, 1)"
        ),
        format!(
            "INSERT INTO score_buckets VALUES ('t', 'a1', 'Bob', 'webinar_attended', FALSE, {today}, 25, 1)"
        ),
    ] {
        conn.execute_unprepared(&sql).await.expect(&sql);
    }
    Migrator::up(&conn, None).await.expect("upgraded");
    let repeated = conn.execute_unprepared(activity).await;
    assert!(
        repeated.is_err(),
        "the event id is still unique per tenant: {repeated:?}"
    );
    let backend = conn.get_database_backend();
    if backend == sea_orm::DbBackend::Postgres {
        let columns = |condition: &str| {
            let sql = format!(
                "SELECT table_name || '.' || column_name AS name FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name <> 'seaql_migrations' \
                 AND {condition} ORDER BY 1"
            );
            let conn = &conn;
            async move {
                conn.query_all_raw(Statement::from_string(backend, sql))
                    .await
                    .expect("columns")
                    .iter()
                    .map(|r| r.try_get::<String>("", "name").expect("name"))
                    .collect::<Vec<_>>()
            }
        };
        let keys = columns("data_type = 'character varying'").await;
        assert!(keys.contains(&"activities.event_id".to_owned()), "{keys:?}");
        assert!(
            keys.contains(&"outbox.partition_key".to_owned()),
            "{keys:?}"
        );
        assert_eq!(
            columns("data_type = 'character varying' AND collation_name IS DISTINCT FROM 'C'")
                .await,
            Vec::<String>::new(),
            "every key compares byte by byte"
        );
        let free_text = columns("data_type = 'text'").await;
        assert!(
            free_text.contains(&"scoring_models.rules".to_owned()),
            "{free_text:?}"
        );
        assert_eq!(
            columns("data_type = 'text' AND collation_name = 'C'").await,
            Vec::<String>::new(),
            "free text keeps the server's collation"
        );
    }
    let totals = totals_of_a1(conn).await;
    assert_eq!((totals.engagement, totals.engaged_contacts), (27.0, 2));
}

/// The byte order migration beside a steady ingest and folds on the same
/// database, as in a rolling upgrade, through the path production takes
/// (`migrate`, one transaction): it completes, both go on around it, and a
/// call refused meanwhile (a prepared statement gone stale) is refused
/// UNAVAILABLE, retryable, never anything else. A migration that waited for
/// its locks in one order failed here with `deadlock detected`: a fold takes
/// its tables in another order than an ingest (docs/performance.md, round
/// 38).
async fn the_byte_order_upgrade_runs_beside_ingest(db: TestDatabase) {
    let conn = schema_before(&db, "m20261206_100001_byte_order_keys").await;
    let repository = Arc::new(cascade_scoring::storage::Repository::new(conn));
    let tenant = TenantId::parse("t").expect("tenant");
    let stop = Arc::new(AtomicBool::new(false));
    let batch = |writer: usize, round: usize| -> Vec<NewActivity> {
        (0..50)
            .map(|i| NewActivity {
                event_id: format!("w{writer}-r{round}-{i}"),
                activity_type: "email_open".into(),
                occurred_at_ms: 1_764_806_400_000,
                account_id: format!("a{}", i % 5),
                contact_id: Some(format!("c{i}")),
            })
            .collect()
    };
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (repository, tenant, stop) = (repository.clone(), tenant.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut stored, mut refused) = (0, Vec::new());
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    match repository.record(&tenant, batch(writer, round)).await {
                        Ok(_) => stored += 1,
                        Err(e) => refused.push((e.code(), e.to_string())),
                    }
                    round += 1;
                }
                (stored, refused)
            })
        })
        .collect();
    let folder = {
        let (repository, stop) = (repository.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut folds, mut refused) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match repository.fold_pending().await {
                    Ok(_) => folds += 1,
                    Err(e) => refused.push((e.code(), e.to_string())),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (folds, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let migrating = cascade_chassis::db::connect(&db.settings)
        .await
        .expect("connect");
    cascade_chassis::db::migrate::<Migrator>(&migrating)
        .await
        .expect("the upgrade completes beside ingest");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut stored = 0;
    for writer in writers {
        let (batches, refused) = writer.await.expect("writer");
        stored += batches;
        for (code, message) in refused {
            assert_eq!(code, Code::Unavailable, "{message}");
        }
    }
    assert!(
        stored > 8,
        "ingest went on around the upgrade: {stored} batches"
    );
    let (folds, refused) = folder.await.expect("folder");
    assert!(folds > 8, "folds went on around the upgrade: {folds}");
    for (code, message) in refused {
        assert_eq!(code, Code::Unavailable, "{message}");
    }
    let status = cascade_chassis::db::schema_status::<Migrator>(&migrating)
        .await
        .expect("status");
    assert_eq!(status, cascade_chassis::db::SchemaStatus::Current);
}

on_each_database!(
    engaged_flags_are_filled_from_the_buckets,
    scores_from_before_breakdowns_are_recomputed,
    keys_compare_byte_by_byte_after_the_upgrade,
    the_byte_order_upgrade_runs_beside_ingest,
);
