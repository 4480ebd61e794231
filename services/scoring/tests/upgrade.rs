//! Upgrading a scoring database: the engaged flags migration fills the new
//! column from the buckets already stored (SQLite and PostgreSQL).

use cascade_scoring::storage::migration::Migrator;
use cascade_testkit::TestDatabase;
use cascade_testkit::on_each_database;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use sea_orm_migration::MigratorTrait;

/// Applies the migrations before the one named `name`.
async fn up_to(conn: &DatabaseConnection, name: &str) {
    let before = Migrator::migrations()
        .iter()
        .position(|m| m.name() == name)
        .unwrap_or_else(|| panic!("no migration {name}"));
    Migrator::up(conn, Some(u32::try_from(before).expect("few migrations")))
        .await
        .expect("older schema");
}

async fn engaged_flags_are_filled_from_the_buckets(db: TestDatabase) {
    let conn = cascade_chassis::db::connect(&db.settings)
        .await
        .expect("connect");
    up_to(&conn, "m20261201_100001_scores_engaged_flags").await;
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

on_each_database!(engaged_flags_are_filled_from_the_buckets);
