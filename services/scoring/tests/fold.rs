//! Scores folded behind the ledger (`storage::fold`), on SQLite and
//! PostgreSQL: a group stored by a replica that never folded it is folded by
//! another replica's folder and reaches lifecycle; an erasure removes what
//! waits in a fold, so the fold does not write the erased rows back, and what
//! waits in the outbox.

use cascade_chassis::TenantId;
use cascade_scoring::storage::migration::Migrator;
use cascade_scoring::storage::{DeliveryPayload, Erase, NewActivity, Repository, SCORE_TOPIC};
use cascade_testkit::{TENANT, TestDatabase, TestSystem, on_each_database};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use sea_orm_migration::MigratorTrait;

/// A replica's storage without its folder (or one that stopped before
/// folding): what it records waits in `pending_folds`.
async fn replica_without_folder(db: &TestDatabase) -> Repository {
    let conn = cascade_chassis::db::connect(&db.settings)
        .await
        .expect("the scoring database");
    Migrator::up(&conn, None).await.expect("migrated");
    Repository::new(conn)
}

fn activity(event_id: &str, kind: &str, account_id: &str, contact_id: &str) -> NewActivity {
    NewActivity {
        event_id: event_id.into(),
        activity_type: kind.into(),
        occurred_at_ms: cascade_chassis::time::now().timestamp_millis(),
        account_id: account_id.into(),
        contact_id: Some(contact_id.into()),
    }
}

/// Rows of `table` where `column` is `value`.
async fn count(repository: &Repository, table: &str, column: &str, value: &str) -> i64 {
    let db = repository.db();
    let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {column} = '{value}'");
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("counted")
        .expect("a row");
    row.try_get("", "n").expect("n")
}

async fn pending(repository: &Repository) -> i64 {
    count(repository, "pending_folds", "tenant_id", TENANT).await
}

async fn erase_contact(repository: &Repository, account_id: &str, contact_id: &str) {
    let tenant = TenantId::parse(TENANT).expect("tenant");
    let contact_ids = [contact_id.to_owned()];
    repository
        .erase(
            &tenant,
            Erase::Contacts {
                account_id,
                contact_ids: &contact_ids,
            },
        )
        .await
        .expect("contact erased");
}

/// A replica stores a group and stops before folding it: the running
/// replica's folder finds it (on its sweep, with no read or new group to
/// wake it) and lifecycle receives the scores.
async fn a_group_left_unfolded_is_folded_by_another_replica(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle
        .create_account("Left", "owner@seller.example")
        .await
        .account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@left.example")
        .await
        .contact_id;
    let bob = lifecycle
        .create_contact(&id, "bob@left.example")
        .await
        .contact_id;

    let stopped = replica_without_folder(&db).await;
    let tenant = TenantId::parse(TENANT).expect("tenant");
    let recorded = stopped
        .record(
            &tenant,
            vec![
                activity("l1", "demo_request", &id, &ann),
                activity("l2", "webinar_attended", &id, &bob),
            ],
        )
        .await
        .expect("recorded");
    assert!(recorded.iter().all(|r| r.new), "{recorded:?}");

    lifecycle
        .wait_for_account(&id, "lifecycle to get the folded scores", |a| {
            (a.engagement_score, a.average_engagement_score) == (125.0, 62.5)
        })
        .await;
    assert_eq!(pending(&stopped).await, 0);
    let score = scoring.score(&id).await;
    assert_eq!(
        (score.engagement_score, score.engaged_contact_count),
        (125.0, 2)
    );
    system.stop().await;
}

/// Activities stored but not yet folded, then erased: the erasure takes the
/// erased contact's (or account's) buckets out of the pending fold, so the
/// fold writes only what remains.
async fn an_erasure_removes_what_waits_in_a_fold(db: TestDatabase) {
    let replica = replica_without_folder(&db).await;
    let tenant = TenantId::parse(TENANT).expect("tenant");
    let (account, ann, bob) = ("acct-kept", "contact-ann", "contact-bob");
    let gone = "acct-gone";
    replica
        .record(
            &tenant,
            vec![
                activity("e1", "demo_request", account, ann),
                activity("e2", "webinar_attended", account, bob),
                activity("e3", "demo_request", gone, "contact-cy"),
            ],
        )
        .await
        .expect("recorded");
    assert_eq!(pending(&replica).await, 1, "nothing folded yet");

    erase_contact(&replica, account, ann).await;
    replica
        .erase(&tenant, Erase::Account { account_id: gone })
        .await
        .expect("account erased");
    assert_eq!(pending(&replica).await, 1, "bob's activity still waits");

    replica.fold_pending().await.expect("folded");
    assert_eq!(pending(&replica).await, 0);
    for (table, column, value) in [
        ("score_buckets", "contact_id", ann),
        ("contact_scores", "contact_id", ann),
        ("activities", "contact_id", ann),
        ("score_buckets", "account_id", gone),
        ("account_scores", "account_id", gone),
        ("contact_scores", "account_id", gone),
    ] {
        assert_eq!(
            count(&replica, table, column, value).await,
            0,
            "{table}.{column} = {value} after the erasure and the fold"
        );
    }
    let totals = replica
        .account_totals(&tenant, account)
        .await
        .expect("the kept account's score");
    assert_eq!(totals.engagement, 25.0, "bob's webinar only");
    assert_eq!(totals.engaged_contacts, 1);
    let erased = replica.contact_totals(&tenant, ann).await;
    assert!(
        erased.is_err(),
        "the erased contact has no score: {erased:?}"
    );
    assert!(replica.account_totals(&tenant, gone).await.is_err());

    // An erasure of everything pending leaves no row to fold.
    replica
        .record(&tenant, vec![activity("e4", "email_open", account, ann)])
        .await
        .expect("recorded again");
    erase_contact(&replica, account, ann).await;
    assert_eq!(pending(&replica).await, 0);
}

/// The erased people's names and activity types in the account's score
/// deliveries that still wait, by state, oldest first.
async fn waiting_deliveries(
    repository: &Repository,
    account_id: &str,
) -> Vec<(String, Vec<String>)> {
    let db = repository.db();
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            match db.get_database_backend() {
                DbBackend::Postgres => {
                    "SELECT state, payload FROM outbox WHERE topic = $1 AND partition_key = $2 \
                     AND state <> 'DELIVERED' ORDER BY id"
                }
                _ => {
                    "SELECT state, payload FROM outbox WHERE topic = ? AND partition_key = ? \
                     AND state <> 'DELIVERED' ORDER BY id"
                }
            },
            [SCORE_TOPIC.into(), account_id.into()],
        ))
        .await
        .expect("the account's deliveries");
    rows.iter()
        .map(|row| {
            let bytes: Vec<u8> = row.try_get("", "payload").expect("payload");
            let payload = DeliveryPayload::decode(&bytes).expect("a score delivery");
            let state = row.try_get("", "state").expect("state");
            (state, payload.contacts.into_keys().collect())
        })
        .collect()
}

/// A score delivery names each contact of the batch. One that still waits,
/// pending or dead (kept until an operator retries it), no longer names an
/// erased contact, nor any contact of an erased account; the others stay.
async fn an_erasure_takes_the_person_out_of_waiting_deliveries(db: TestDatabase) {
    // No deliverer runs here: what the fold enqueues waits.
    let replica = replica_without_folder(&db).await;
    let tenant = TenantId::parse(TENANT).expect("tenant");
    let (account, ann, bob) = ("acct-waits", "contact-ann", "contact-bob");
    let gone = "acct-gone";
    replica
        .record(
            &tenant,
            vec![
                activity("w1", "demo_request", account, ann),
                activity("w2", "webinar_attended", account, bob),
                activity("w3", "demo_request", gone, "contact-cy"),
            ],
        )
        .await
        .expect("recorded");
    replica.fold_pending().await.expect("folded");
    replica
        .record(&tenant, vec![activity("w4", "email_open", account, ann)])
        .await
        .expect("recorded");
    replica.fold_pending().await.expect("folded");
    // The first delivery was given up on.
    replica
        .db()
        .execute_unprepared(&format!(
            "UPDATE outbox SET state = 'DEAD' WHERE id = \
             (SELECT MIN(id) FROM outbox WHERE partition_key = '{account}')"
        ))
        .await
        .expect("a dead letter");
    let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(
        waiting_deliveries(&replica, account).await,
        vec![
            ("DEAD".to_owned(), names(&[ann, bob])),
            ("PENDING".to_owned(), names(&[ann])),
        ]
    );

    erase_contact(&replica, account, ann).await;
    replica
        .erase(&tenant, Erase::Account { account_id: gone })
        .await
        .expect("account erased");

    assert_eq!(
        waiting_deliveries(&replica, account).await,
        vec![
            ("DEAD".to_owned(), names(&[bob])),
            ("PENDING".to_owned(), names(&[])),
            // The erasure's own delivery of the recomputed score.
            ("PENDING".to_owned(), names(&[])),
        ]
    );
    assert_eq!(
        waiting_deliveries(&replica, gone).await,
        vec![("PENDING".to_owned(), names(&[]))]
    );
}

/// A score read right after RecordActivities counts it, while the folder
/// folds the same group beside the read: whichever commits first, the read
/// never misses the group (nor answers NOT_FOUND for an account it just
/// scored). Many fresh accounts, because the window between a read's
/// statements is short.
async fn a_read_racing_the_folder_still_sees_its_write(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let mut people = Vec::new();
    for n in 0..80 {
        let id = lifecycle
            .create_account(&format!("Race {n}"), "owner@seller.example")
            .await
            .account_id;
        let contact = lifecycle
            .create_contact(&id, &format!("p{n}@race.example"))
            .await
            .contact_id;
        people.push((id, contact));
    }
    for (n, (id, contact)) in people.iter().enumerate() {
        for (suffix, kind, total) in [("a", "email_open", 2.0), ("b", "demo_request", 102.0)] {
            let event_id = format!("r{n}{suffix}");
            let one = cascade_testkit::fixtures::activity(&event_id, kind, id, contact);
            scoring.record(vec![one]).await;
            let score = scoring.try_score(id).await;
            assert_eq!(
                score.map(|s| s.engagement_score).map_err(|s| s.code()),
                Ok(total),
                "account {n}, read right after {event_id}"
            );
        }
    }
    system.stop().await;
}

/// A group of 1,000 activities over 1,000 contacts waits as one pending row
/// (on PostgreSQL compressed with lz4 where the server has it: the
/// migration's choice) and its fold adds every activity to the buckets.
async fn a_large_group_waits_compressed_and_folds_whole(db: TestDatabase) {
    let replica = replica_without_folder(&db).await;
    let tenant = TenantId::parse(TENANT).expect("tenant");
    let items: Vec<NewActivity> = (0..1000)
        .map(|n| {
            let (account, contact) = (format!("acct-{}", n % 50), format!("contact-{n}"));
            activity(&format!("big{n}"), "email_open", &account, &contact)
        })
        .collect();
    replica.record(&tenant, items).await.expect("recorded");
    let db = replica.db();
    assert_eq!(pending(&replica).await, 1, "the group waits as one row");
    if db.get_database_backend() == DbBackend::Postgres {
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT pg_column_compression(buckets) AS method, \
                   pg_column_size(buckets)::bigint AS stored, octet_length(buckets)::bigint AS raw, \
                   (SELECT 'lz4' = ANY(enumvals) FROM pg_settings \
                     WHERE name = 'default_toast_compression') AS has_lz4 \
                 FROM pending_folds",
            ))
            .await
            .expect("pending row read")
            .expect("one pending row");
        let method: Option<String> = row.try_get("", "method").expect("method");
        let (stored, raw): (i64, i64) = (
            row.try_get("", "stored").expect("stored"),
            row.try_get("", "raw").expect("raw"),
        );
        let has_lz4: bool = row.try_get("", "has_lz4").expect("has_lz4");
        let expected = if has_lz4 { "lz4" } else { "pglz" };
        assert_eq!(method.as_deref(), Some(expected), "{stored} of {raw} bytes");
        assert!(stored * 2 < raw, "compressed: {stored} of {raw} bytes");
    }
    assert_eq!(replica.fold_pending().await.expect("folded").groups, 1);
    assert_eq!(pending(&replica).await, 0);
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT COUNT(*) AS n, CAST(SUM(activity_count) AS BIGINT) AS activities \
                 FROM score_buckets WHERE tenant_id = '{TENANT}'"
            ),
        ))
        .await
        .expect("buckets read")
        .expect("a row");
    let (n, activities): (i64, i64) = (
        row.try_get("", "n").expect("n"),
        row.try_get("", "activities").expect("activities"),
    );
    assert_eq!((n, activities), (1000, 1000));
}

/// Five groups of 2,500 activities, each over 2,200 contacts of its own and
/// 300 shared by all: one fold reads them a few at a time and writes their
/// 11,300 buckets in several statements. Every activity is in the buckets
/// once, and each shared bucket holds all five groups' activities.
async fn many_groups_fold_at_once_in_chunks(db: TestDatabase) {
    let replica = replica_without_folder(&db).await;
    let tenant = TenantId::parse(TENANT).expect("tenant");
    for group in 0..5 {
        let items: Vec<NewActivity> = (0..2500)
            .map(|n| {
                let contact = if n < 300 {
                    format!("shared-{n}")
                } else {
                    format!("own-{group}-{n}")
                };
                let account = format!("acct-{}", n % 40);
                activity(&format!("g{group}-{n}"), "email_open", &account, &contact)
            })
            .collect();
        replica.record(&tenant, items).await.expect("recorded");
    }
    assert_eq!(pending(&replica).await, 5);
    assert_eq!(replica.fold_pending().await.expect("folded").groups, 5);
    assert_eq!(pending(&replica).await, 0);
    let db = replica.db();
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT COUNT(*) AS n, CAST(SUM(activity_count) AS BIGINT) AS activities, \
                   CAST(SUM(CASE WHEN contact_id LIKE 'shared-%' THEN activity_count ELSE 0 END) AS BIGINT) AS shared \
                 FROM score_buckets WHERE tenant_id = '{TENANT}'"
            ),
        ))
        .await
        .expect("buckets read")
        .expect("a row");
    let (n, activities, shared): (i64, i64, i64) = (
        row.try_get("", "n").expect("n"),
        row.try_get("", "activities").expect("activities"),
        row.try_get("", "shared").expect("shared"),
    );
    assert_eq!((n, activities, shared), (11_300, 12_500, 1_500));
}

/// On SQLite a fold waits for the one writer: what it reports as held (and
/// the folder rests against, twice over) is the time it wrote, not the
/// wait. A fold that waited 300 ms behind another writer rested 0.6 s more
/// before, holding every score behind it (docs/performance.md, round 30).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fold_that_waited_for_the_writer_holds_it_only_while_it_writes() {
    let db = TestDatabase::sqlite();
    let replica = replica_without_folder(&db).await;
    let tenant = TenantId::parse(TENANT).expect("tenant");
    replica
        .record(
            &tenant,
            vec![activity("e1", "demo_request", "acct-1", "contact-1")],
        )
        .await
        .expect("recorded");
    let other_writer = cascade_chassis::db::begin_write(replica.db())
        .await
        .expect("the writer");
    let started = std::time::Instant::now();
    let fold = tokio::spawn({
        let replica = replica.clone();
        async move { replica.fold_pending().await.expect("folded") }
    });
    // The other writer keeps the lock this long: the fold waits for it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    other_writer.commit().await.expect("released");
    let folded = fold.await.expect("the fold");
    let took = started.elapsed();
    assert_eq!(folded.groups, 1);
    assert!(took >= std::time::Duration::from_millis(300), "{took:?}");
    assert!(
        folded.held + std::time::Duration::from_millis(250) <= took,
        "held {:?} of {took:?}",
        folded.held
    );
    assert_eq!(pending(&replica).await, 0);
}

/// Pending folds that cannot be read (damaged rows) are passed over: the
/// folder folds every other group, their own tenant's later ones too, and
/// keeps the damaged rows for an operator; a score read of their tenant
/// fails naming one. More damaged rows than the fold reads at a time, so it
/// pages past them.
async fn an_unreadable_fold_is_passed_over_and_kept(db: TestDatabase) {
    let replica = replica_without_folder(&db).await;
    let conn = replica.db();
    for _ in 0..5 {
        conn.execute_raw(cascade_chassis::db::statement(
            conn.get_database_backend(),
            "INSERT INTO pending_folds (tenant_id, recorded_at_ms, buckets) \
             VALUES ('damaged-tenant', 0, $1)",
            [sea_orm::Value::from(vec![0xFF_u8, 0xFF])],
        ))
        .await
        .expect("a damaged pending fold, older than the rest");
    }
    let damaged = TenantId::parse("damaged-tenant").expect("tenant");
    replica
        .record(
            &damaged,
            vec![activity("d1", "demo_request", "acct-d", "contact-d")],
        )
        .await
        .expect("recorded in the damaged tenant");
    let tenant = TenantId::parse(TENANT).expect("tenant");
    replica
        .record(
            &tenant,
            vec![
                activity("u1", "demo_request", "acct-u", "contact-u1"),
                activity("u2", "webinar_attended", "acct-u", "contact-u2"),
            ],
        )
        .await
        .expect("recorded");

    // Bounded: a fold that paged back to the damaged rows would never end.
    let folded = tokio::time::timeout(std::time::Duration::from_secs(30), replica.fold_pending())
        .await
        .expect("the fold ends")
        .expect("the folder goes on");
    assert_eq!(folded.groups, 2, "both readable groups");
    assert_eq!(folded.unreadable, 5, "the damaged rows, once each");
    assert_eq!(pending(&replica).await, 0);
    assert_eq!(
        count(&replica, "pending_folds", "tenant_id", "damaged-tenant").await,
        5,
        "the damaged rows are kept, the readable group folded"
    );
    assert_eq!(
        count(&replica, "score_buckets", "account_id", "acct-d").await,
        1,
        "the damaged tenant's readable group reached its buckets"
    );
    let totals = replica
        .account_totals(&tenant, "acct-u")
        .await
        .expect("the other tenant's score");
    assert_eq!(totals.engagement, 125.0);

    let read = replica.account_totals(&damaged, "acct-d").await;
    let error = format!("{:?}", read.expect_err("its tenant's read fails"));
    assert!(error.contains("cannot be read"), "{error}");

    // Every fold meets them again (the folder's gauge), until an operator
    // deletes them.
    let again = replica.fold_pending().await.expect("the folder goes on");
    assert_eq!((again.groups, again.unreadable), (0, 5));
    // More groups than one fold transaction takes (64): each of its passes
    // starts from the oldest rows and meets the same five.
    for n in 0..70 {
        replica
            .record(
                &tenant,
                vec![activity(
                    &format!("many-{n}"),
                    "email_open",
                    "acct-u",
                    "contact-u1",
                )],
            )
            .await
            .expect("recorded");
    }
    let passes = replica.fold_pending().await.expect("the folder goes on");
    assert_eq!((passes.groups, passes.unreadable), (70, 5));
    conn.execute_unprepared("DELETE FROM pending_folds WHERE tenant_id = 'damaged-tenant'")
        .await
        .expect("the operator deletes them");
    let repaired = replica.fold_pending().await.expect("folds");
    assert_eq!((repaired.groups, repaired.unreadable), (0, 0));
}

on_each_database!(
    many_groups_fold_at_once_in_chunks,
    a_group_left_unfolded_is_folded_by_another_replica,
    an_erasure_removes_what_waits_in_a_fold,
    an_erasure_takes_the_person_out_of_waiting_deliveries,
    a_read_racing_the_folder_still_sees_its_write,
    a_large_group_waits_compressed_and_folds_whole,
    an_unreadable_fold_is_passed_over_and_kept,
);
