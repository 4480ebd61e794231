//! Upgrading a lifecycle database: accounts erased before erasure blanked
//! the reasons in their history lose them with the upgrade, and every other
//! account keeps its own (SQLite and PostgreSQL).

use cascade_lifecycle::storage::migration::Migrator;
use cascade_testkit::{TestDatabase, on_each_database};
use sea_orm::{ConnectionTrait, Statement};
use sea_orm_migration::MigratorTrait;

const BLANKING: &str = "m20261206_200001_erased_accounts_reasons";

async fn reasons_of_accounts_erased_before_are_blanked(db: TestDatabase) {
    let conn = cascade_chassis::db::connect(&db.settings)
        .await
        .expect("connect");
    let before = Migrator::migrations()
        .iter()
        .position(|m| m.name() == BLANKING)
        .expect("the migration");
    Migrator::up(&conn, Some(u32::try_from(before).expect("few migrations")))
        .await
        .expect("older schema");
    let transition = |id: &str, tenant: &str, account: &str, seq: i64, at: i64, reason: &str| {
        format!(
            "INSERT INTO account_transitions (transition_id, tenant_id, account_id, seq, \
             from_stage, to_stage, from_rank, to_rank, from_customer_type, to_customer_type, \
             cause, actor, reason, event_id, settings_version, occurred_at_ms) VALUES \
             ('{id}', '{tenant}', '{account}', {seq}, 'PRIORITIZED', 'ENGAGED', 3, 2, 'PROSPECT', \
             'PROSPECT', 'NURTURE', 'ops@tenant.example', '{reason}', NULL, 1, {at})"
        )
    };
    let erasure = |id: &str, tenant: &str, kind: &str, subject: &str, account: &str| {
        format!(
            "INSERT INTO erasures (erasure_id, tenant_id, subject_type, subject_id, account_id, \
             contact_ids, actor, created_at_ms, scoring_done_at_ms, opportunity_done_at_ms) \
             VALUES ('{id}', '{tenant}', '{kind}', '{subject}', '{account}', '', 'dpo', 10, \
             NULL, NULL)"
        )
    };
    for sql in [
        // a1 was erased at 10 (x4 came after: a history of its own); a2
        // only lost a person; the same id in another tenant (a sequence of
        // its own: the unique key has no tenant) lives.
        transition("x1", "t", "a1", 1, 0, "Ann Doe asked us to wait"),
        transition("x2", "t", "a2", 1, 0, "Bob Roe is on leave"),
        transition("x3", "u", "a1", 2, 0, "budget next quarter"),
        transition("x4", "t", "a1", 3, 20, "came back"),
        erasure("e1", "t", "ACCOUNT", "a1", "a1"),
        erasure("e2", "t", "CONTACT", "c9", "a2"),
    ] {
        conn.execute_unprepared(&sql).await.expect(&sql);
    }
    Migrator::up(&conn, None).await.expect("upgraded");
    let rows = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT transition_id, reason FROM account_transitions ORDER BY transition_id",
        ))
        .await
        .expect("read");
    let reasons: Vec<(String, Option<String>)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get("", "transition_id").expect("id"),
                r.try_get("", "reason").expect("reason"),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("x1".to_owned(), None),
            ("x2".to_owned(), Some("Bob Roe is on leave".to_owned())),
            ("x3".to_owned(), Some("budget next quarter".to_owned())),
            ("x4".to_owned(), Some("came back".to_owned())),
        ]
    );
}

on_each_database!(reasons_of_accounts_erased_before_are_blanked);
