//! Row locks on PostgreSQL (`cascade_chassis::db::WriteTransaction`): a row
//! locked to change it still lets rows that reference it be inserted, so a
//! contact can be created under an account while a score delivery holds the
//! account; a row locked to delete it holds such inserts off until the
//! deletion ends. SQLite has one writer at a time (`begin_write`), so there
//! no two writes overlap and the test has nothing to check there.

use cascade_chassis::db::{begin_write, connect};
use cascade_testkit::TestDatabase;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, TransactionTrait};

mod parent {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "parents")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub n: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Inserts a child of parent `p` from another connection, giving up after
/// 500 ms waiting for a lock.
async fn insert_child(conn: &DatabaseConnection, id: &str) -> Result<(), DbErr> {
    let txn = conn.begin().await?;
    txn.execute_unprepared("SET LOCAL lock_timeout = '500ms'")
        .await?;
    txn.execute_unprepared(&format!("INSERT INTO children VALUES ('{id}', 'p')"))
        .await?;
    txn.commit().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_locked_to_change_it_still_takes_new_references() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let conn = connect(&db.settings).await.expect("connect");
    for sql in [
        "CREATE TABLE parents (id TEXT PRIMARY KEY, n INTEGER NOT NULL)",
        "CREATE TABLE children (id TEXT PRIMARY KEY, parent_id TEXT NOT NULL REFERENCES parents (id))",
        "INSERT INTO parents VALUES ('p', 0)",
    ] {
        conn.execute_unprepared(sql).await.expect(sql);
    }

    // Locked to change it, as a score delivery locks its accounts.
    let txn = begin_write(&conn).await.expect("begin");
    let row = txn
        .lock_one(parent::Entity::find_by_id("p"))
        .await
        .expect("lock")
        .expect("the row");
    assert_eq!(row.n, 0);
    insert_child(&conn, "c1")
        .await
        .expect("a reference is inserted while the row is locked to change it");
    txn.commit().await.expect("commit");

    // Locked to delete it, as an account erasure does.
    let txn = begin_write(&conn).await.expect("begin");
    txn.lock_one_to_delete(parent::Entity::find_by_id("p"))
        .await
        .expect("lock")
        .expect("the row");
    let held_off = insert_child(&conn, "c2")
        .await
        .expect_err("no reference is inserted while the row is locked to delete it");
    assert!(held_off.to_string().contains("lock timeout"), "{held_off}");
    txn.rollback().await.expect("rollback");
    insert_child(&conn, "c2")
        .await
        .expect("inserted once the deletion ended");
}
