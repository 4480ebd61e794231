//! The group's hand-written statements (`storage/sql/*.sql`), on SQLite and
//! PostgreSQL: the activities insert and the bucket upsert carry a batch as
//! one JSON array (SQLite) or column arrays (PostgreSQL), and lookups by
//! key take one JSON array or one array. Ids with quotes, backslashes and
//! characters outside ASCII are stored and found as sent; a contact-less
//! activity stores NULL; repeats are reported as stored before.

use cascade_chassis::TenantId;
use cascade_scoring::storage::migration::Migrator;
use cascade_scoring::storage::{NewActivity, Repository};
use cascade_testkit::{TENANT, TestDatabase, on_each_database};
use sea_orm::{ConnectionTrait, Statement};
use sea_orm_migration::MigratorTrait;

async fn repository(db: &TestDatabase) -> Repository {
    let conn = cascade_chassis::db::connect(&db.settings)
        .await
        .expect("the scoring database");
    Migrator::up(&conn, None).await.expect("migrated");
    Repository::new(conn)
}

fn activity(event_id: &str, kind: &str, account_id: &str, contact_id: Option<&str>) -> NewActivity {
    NewActivity {
        event_id: event_id.into(),
        activity_type: kind.into(),
        occurred_at_ms: 1_764_806_400_123,
        account_id: account_id.into(),
        contact_id: contact_id.map(Into::into),
    }
}

/// Ids a JSON array or a driver could mangle: quotes of both kinds, a
/// backslash, a JSON escape written out, non-ASCII letters and an emoji.
const ODD: [&str; 4] = [
    r#"evt "quoted" 'single'"#,
    r"evt back\slash \n \u0041",
    "evt Ünïcødé ß 東京",
    "evt 🚀 [1, 2]",
];

async fn stored_activities(
    repository: &Repository,
) -> Vec<(String, String, Option<String>, String, i64, i32, bool, bool)> {
    let db = repository.db();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT event_id, account_id, contact_id, activity_type, occurred_at_ms, \
             counted_points, capped, intent FROM activities",
        ))
        .await
        .expect("activities read");
    // Sorted here: PostgreSQL's collation need not order bytes as Rust does.
    let mut rows: Vec<_> = rows
        .iter()
        .map(|row| {
            (
                row.try_get("", "event_id").expect("event_id"),
                row.try_get("", "account_id").expect("account_id"),
                row.try_get("", "contact_id").expect("contact_id"),
                row.try_get("", "activity_type").expect("activity_type"),
                row.try_get("", "occurred_at_ms").expect("occurred_at_ms"),
                row.try_get("", "counted_points").expect("counted_points"),
                row.try_get("", "capped").expect("capped"),
                row.try_get("", "intent").expect("intent"),
            )
        })
        .collect();
    rows.sort_unstable();
    rows
}

/// The buckets, after folding what waits (on PostgreSQL a fold writes them).
async fn buckets(repository: &Repository) -> Vec<(String, String, String, bool, i64, i64)> {
    repository.fold_pending().await.expect("folded");
    let db = repository.db();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT account_id, contact_id, activity_type, intent, points, activity_count \
             FROM score_buckets",
        ))
        .await
        .expect("buckets read");
    let mut rows: Vec<_> = rows
        .iter()
        .map(|row| {
            (
                row.try_get("", "account_id").expect("account_id"),
                row.try_get("", "contact_id").expect("contact_id"),
                row.try_get("", "activity_type").expect("activity_type"),
                row.try_get("", "intent").expect("intent"),
                row.try_get("", "points").expect("points"),
                row.try_get("", "activity_count").expect("activity_count"),
            )
        })
        .collect();
    rows.sort_unstable();
    rows
}

async fn odd_ids_and_values_are_stored_as_sent(db: TestDatabase) {
    let repository = repository(&db).await;
    let tenant = TenantId::parse(TENANT).expect("tenant");
    let account = r#"acct "Ü" \ 🚀"#;
    let contact = "contact 'ß' \\ \"東\"";
    let items = vec![
        activity(ODD[0], "email_open", account, Some(contact)),
        activity(ODD[1], "email_open", account, Some(contact)),
        activity(ODD[2], "demo_request", account, Some(contact)),
        activity(ODD[3], "pricing_page_visit", account, None),
    ];
    let recorded = repository
        .record(&tenant, items.clone())
        .await
        .expect("recorded");
    assert!(recorded.iter().all(|r| r.new), "{recorded:?}");

    let mut expected_ids: Vec<&str> = ODD.to_vec();
    expected_ids.sort_unstable();
    let stored = stored_activities(&repository).await;
    assert_eq!(
        stored.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        expected_ids
    );
    for (row, item) in stored.iter().map(|row| {
        let item = items.iter().find(|i| i.event_id == row.0).expect("sent");
        (row, item)
    }) {
        assert_eq!(row.1, item.account_id, "{row:?}");
        assert_eq!(row.2, item.contact_id, "{row:?}");
        assert_eq!(row.3, item.activity_type, "{row:?}");
        assert_eq!(row.4, item.occurred_at_ms, "{row:?}");
    }
    // The default model's points (email_open 2, demo_request 100, pricing
    // page visit 50; without a contact it is intent), flags as booleans.
    let points: Vec<(i32, bool, bool)> = expected_ids
        .iter()
        .map(|id| {
            let row = stored.iter().find(|r| r.0 == *id).expect("stored");
            (row.5, row.6, row.7)
        })
        .collect();
    let by_id = |id: &str| points[expected_ids.iter().position(|e| *e == id).expect("id")];
    assert_eq!(by_id(ODD[0]), (2, false, false));
    assert_eq!(by_id(ODD[1]), (2, false, false));
    assert_eq!(by_id(ODD[2]), (100, false, false));
    assert_eq!(by_id(ODD[3]), (50, false, true));

    // One bucket per (contact or "", type, intent): the two opens add up.
    assert_eq!(
        buckets(&repository).await,
        vec![
            (
                account.to_owned(),
                String::new(),
                "pricing_page_visit".to_owned(),
                true,
                50,
                1
            ),
            (
                account.to_owned(),
                contact.to_owned(),
                "demo_request".to_owned(),
                false,
                100,
                1
            ),
            (
                account.to_owned(),
                contact.to_owned(),
                "email_open".to_owned(),
                false,
                4,
                2
            ),
        ]
    );

    // Sent again (with one new id): the repeats are found by their odd ids
    // and reported as stored, the new one is added to the same bucket.
    let mut again = items.clone();
    again.push(activity("evt new", "email_open", account, Some(contact)));
    let recorded = repository.record(&tenant, again).await.expect("recorded");
    assert_eq!(
        recorded.iter().map(|r| r.new).collect::<Vec<_>>(),
        [false, false, false, false, true]
    );
    assert_eq!(recorded[3].contact_id, None);
    assert_eq!(recorded[2].counted_points, 100);
    assert_eq!(stored_activities(&repository).await.len(), 5);
    let opens = buckets(&repository)
        .await
        .into_iter()
        .find(|b| b.2 == "email_open")
        .expect("the opens' bucket");
    assert_eq!((opens.4, opens.5), (6, 3));
}

on_each_database!(odd_ids_and_values_are_stored_as_sent);
