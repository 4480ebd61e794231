//! GetAccount answers from each replica's cache (`storage::cache`): a
//! replica reads its own writes at once, on both backends, whichever path
//! wrote the account; on PostgreSQL every replica hears the others' writes,
//! and one that stopped hearing them (its listening connection cut) does not
//! keep what it missed.

use std::time::Duration;

use cascade_proto::common::v1::AccountStage;
use cascade_proto::lifecycle::v1 as pb;
use cascade_testkit::fixtures::{account, mask};
use cascade_testkit::{
    Caller, Lifecycle, TestDatabase, TestServer, TestSystem, eventually_within, on_each_database,
};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use tonic::Code;

/// How long another replica may take to hear a change (it normally takes
/// milliseconds; the limit only bounds a failing test).
const HEARD_WITHIN: Duration = Duration::from_secs(10);

async fn rename(lifecycle: &Lifecycle, account_id: &str, name: &str) {
    lifecycle
        .public()
        .update_account(lifecycle.req(pb::UpdateAccountRequest {
            account: Some(pb::Account {
                account_id: account_id.into(),
                name: name.into(),
                ..Default::default()
            }),
            update_mask: mask(&["name"]),
        }))
        .await
        .expect("renamed");
}

/// One score delivery through the batch call (it writes the account row).
async fn deliver_score(lifecycle: &Lifecycle, account_id: &str, sequence: i64, score: f64) {
    let results = lifecycle
        .internal()
        .apply_engagement_scores(lifecycle.req(pb::ApplyEngagementScoresRequest {
            items: vec![pb::ApplyEngagementScoreRequest {
                event_id: format!("{account_id}-{sequence}"),
                account_id: account_id.into(),
                sequence,
                engagement_score: score,
                average_engagement_score: score,
                ..Default::default()
            }],
        }))
        .await
        .expect("delivered")
        .into_inner()
        .results;
    assert_eq!(
        results[0].outcome,
        pb::ApplyOutcome::Applied as i32,
        "{results:?}"
    );
}

/// Creates the account "Acme" through `creator` and reads it twice through
/// `reader` (the second answer may come from the cache); its id.
async fn acme_read_through(creator: &Lifecycle, reader: &Lifecycle) -> String {
    let id = creator
        .create_account_with(account("Acme", "acme.com", "jane"))
        .await
        .account_id;
    assert_eq!(reader.account(&id).await.name, "Acme");
    assert_eq!(reader.account(&id).await.name, "Acme");
    id
}

async fn delete(lifecycle: &Lifecycle, account_id: &str) {
    lifecycle
        .public()
        .delete_account(lifecycle.req(pb::DeleteAccountRequest {
            account_id: account_id.into(),
            force: true,
        }))
        .await
        .expect("erased");
}

/// Every path that writes an account shows in this replica's next read,
/// with no wait: the update, a score delivery, a person's action, an erasure.
async fn a_replica_reads_its_own_writes_at_once(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let id = acme_read_through(&lifecycle, &lifecycle).await;

    rename(&lifecycle, &id, "Acme Corp").await;
    assert_eq!(lifecycle.account(&id).await.name, "Acme Corp");

    // A score far over every threshold: PRIORITIZED.
    deliver_score(&lifecycle, &id, 1, 10_000.0).await;
    let scored = lifecycle.account(&id).await;
    assert_eq!(scored.engagement_score, 10_000.0);
    assert_eq!(scored.stage, AccountStage::Prioritized as i32);
    assert_eq!(lifecycle.account(&id).await, scored, "read again, the same");

    lifecycle.nurture(&id, "not now").await;
    assert_eq!(
        lifecycle.account(&id).await.stage,
        AccountStage::Engaged as i32
    );

    delete(&lifecycle, &id).await;
    let gone = lifecycle.try_account(&id).await.expect_err("erased");
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
}

/// `cache.accounts = 0` turns the cache off (behind a pooler that cannot
/// carry LISTEN): no listening connection, and every read from the database.
async fn the_cache_can_be_turned_off(db: TestDatabase) {
    let system = TestSystem::lifecycle_with(&db, |s| s.own.cache.accounts = 0).await;
    let lifecycle = system.lifecycle();
    let id = acme_read_through(&lifecycle, &lifecycle).await;
    rename(&lifecycle, &id, "Acme Corp").await;
    assert_eq!(lifecycle.account(&id).await.name, "Acme Corp");
    if db.settings.url.starts_with("postgres") {
        let conn = Database::connect(db.settings.url.as_str())
            .await
            .expect("connect");
        // A listener starts within milliseconds of the server (the tests
        // above wait for it); give a wrong one time to show.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(listening(&conn).await, 0, "no listening connection");
    }
}

on_each_database!(
    a_replica_reads_its_own_writes_at_once,
    the_cache_can_be_turned_off
);

/// Two lifecycle replicas on one PostgreSQL database.
async fn two_replicas(db: &TestDatabase) -> (TestServer, TestServer) {
    let settings = cascade_lifecycle::Settings::for_tests(db.settings.clone());
    let a = TestServer::start(cascade_lifecycle::build(&settings).await.expect("a builds"));
    let b = TestServer::start(cascade_lifecycle::build(&settings).await.expect("b builds"));
    (a, b)
}

/// Connections of this database that listen for account changes.
async fn listening(conn: &DatabaseConnection) -> i64 {
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        ))
        .await
        .expect("pg_stat_activity")
        .expect("a row");
    row.try_get_by_index(0).expect("a count")
}

async fn both_listening(conn: &DatabaseConnection) {
    eventually_within(
        HEARD_WITHIN,
        "both replicas listen",
        async || match listening(conn).await {
            2 => Ok(()),
            n => Err(n),
        },
    )
    .await;
}

async fn shows_name(lifecycle: &Lifecycle, id: &str, name: &str) {
    eventually_within(HEARD_WITHIN, &format!("the name {name}"), async || {
        let seen = lifecycle.account(id).await.name;
        if seen == name { Ok(()) } else { Err(seen) }
    })
    .await;
}

/// Two replicas listening on one PostgreSQL database, and an account created
/// through A that B has read (and kept).
struct Replicas {
    _servers: (TestServer, TestServer),
    conn: DatabaseConnection,
    a: Lifecycle,
    b: Lifecycle,
    id: String,
}

async fn replicas_sharing_an_account(db: &TestDatabase) -> Replicas {
    let (a, b) = two_replicas(db).await;
    let conn = Database::connect(db.settings.url.as_str())
        .await
        .expect("connect");
    both_listening(&conn).await;
    let clients = (
        Lifecycle::new(a.channel(), Caller::tenant("cache")),
        Lifecycle::new(b.channel(), Caller::tenant("cache")),
    );
    let id = acme_read_through(&clients.0, &clients.1).await;
    Replicas {
        _servers: (a, b),
        conn,
        a: clients.0,
        b: clients.1,
        id,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_hear_each_others_writes() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let Replicas { a, b, id, .. } = &replicas_sharing_an_account(&db).await;

    rename(a, id, "Acme Corp").await;
    shows_name(b, id, "Acme Corp").await;

    deliver_score(a, id, 1, 42.0).await;
    eventually_within(HEARD_WITHIN, "the delivered score", async || {
        let score = b.account(id).await.engagement_score;
        if score == 42.0 { Ok(()) } else { Err(score) }
    })
    .await;

    delete(a, id).await;
    eventually_within(HEARD_WITHIN, "the erasure", async || {
        match b.try_account(id).await {
            Err(status) if status.code() == Code::NotFound => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// A change made while a replica's listening connection is cut is never
/// heard by it: the replica forgets everything when it listens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_changes_does_not_keep_them() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let Replicas { conn, a, b, id, .. } = &replicas_sharing_an_account(&db).await;

    // Cut every listening connection, then commit a change (as a hand edit
    // would) before the replicas can listen again: its notification goes
    // to no one.
    conn.execute_unprepared(&format!(
        "BEGIN; \
         UPDATE accounts SET name = 'Renamed unheard', version = version + 1 \
         WHERE account_id = '{id}'; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'; \
         COMMIT"
    ))
    .await
    .expect("the change, unheard");
    shows_name(b, id, "Renamed unheard").await;
    shows_name(a, id, "Renamed unheard").await;
    // Listening again, they hear the next change as before.
    both_listening(conn).await;
    rename(a, id, "Heard again").await;
    shows_name(b, id, "Heard again").await;
}
