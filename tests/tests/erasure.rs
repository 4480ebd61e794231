//! Erasure (issue 18, item 1), through the three services' binaries on
//! SQLite and PostgreSQL: a contact erased while scoring is down is gone
//! from lifecycle at once, from opportunity soon after, and from scoring when
//! it is back; the account's score is recomputed without the person; then
//! the account itself is erased. Every table of every service's database is
//! read to show the person's email and name are nowhere.
//!
//! With two scoring replicas: each forgets an erased person it had checked
//! (an erasure stays pending while it settles, so both hear of it), and an
//! activity stored after the first sweep is taken by the second. Lifecycle
//! itself refuses a confirmation that comes before the settle.

mod common;

use std::time::Duration;

use cascade_proto::common::v1::AccountStage;
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::opportunity::v1 as op;
use cascade_proto::scoring::v1 as sc;
use cascade_testkit::fixtures::{account, activity, by_email, precondition_subjects};
use cascade_testkit::{
    TestDatabase, eventually, eventually_within, on_each_database, someone_waits_for_a_lock,
};
use common::System;
use sea_orm::ConnectionTrait;
use tonic::Code;

on_each_database!(
    a_person_is_erased_everywhere_even_from_a_service_that_was_down,
    every_replica_forgets_an_erased_person,
    an_activity_stored_while_an_erasure_settles_is_erased_too,
    a_failing_erasure_holds_back_no_other,
    a_confirmation_before_the_settle_is_refused,
    a_longer_settle_in_lifecycle_is_waited_for,
    an_earlier_email_leaves_the_hand_raise_texts_too,
);

/// PostgreSQL only: on SQLite writers take turns, so a save cannot fall
/// between the erasure's read and its write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_saved_during_an_erasure_is_kept_on_postgres() {
    if let Some(db) = TestDatabase::postgres().await {
        a_change_saved_during_an_erasure_is_kept(db).await;
    }
}

const T: &str = "erasure";
const PAT: &str = "pat@acme-erasure.example";
const ANN: &str = "ann@acme-erasure.example";
/// Pat's family name, also given to opportunity as a stakeholder's name.
const PAT_NAME: &str = "Erasable";
/// The reason an operator typed for a manual move: kept with the history,
/// blanked when the account is erased.
const NURTURE_REASON: &str = "Ann Doe asked us to wait a quarter";
/// Why an earlier deal was lost: free text, gone with the account. Its
/// event was delivered to lifecycle: the delivered message must not keep it.
const LOST_REASON: &str = "Ann Doe chose a rival suite";

/// Where `needle` is still stored, per service: (service, table.column).
async fn found_anywhere(system: &System, needle: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (service, db) in system.databases() {
        for column in db.columns_containing(needle).await {
            found.push((service.to_owned(), column));
        }
    }
    found
}

async fn erasure(lifecycle: &cascade_testkit::Lifecycle, id: &str) -> lc::Erasure {
    lifecycle
        .public()
        .get_erasure(lifecycle.req(lc::GetErasureRequest {
            erasure_id: id.to_owned(),
        }))
        .await
        .expect("erasure")
        .into_inner()
        .erasure
        .expect("erasure in the answer")
}

fn done(erasure: &lc::Erasure) -> Vec<(&str, bool)> {
    erasure
        .steps
        .iter()
        .map(|s| (s.service.as_str(), s.done))
        .collect()
}

async fn a_person_is_erased_everywhere_even_from_a_service_that_was_down(db: TestDatabase) {
    let mut system = System::start(&db, 1).await;
    let lifecycle = system.lifecycle_as(0, T);
    let admin = lifecycle.as_actor("dpo@tenant.example");
    let acme = lifecycle
        .create_account_with(account("Acme", "acme-erasure.example", "owner"))
        .await;
    let pat = lifecycle
        .create_contact_with(lc::Contact {
            account_id: acme.account_id.clone(),
            email: PAT.into(),
            first_name: "Pat".into(),
            last_name: PAT_NAME.into(),
            title: "CFO".into(),
            ..Default::default()
        })
        .await;
    let ann = lifecycle.create_contact(&acme.account_id, ANN).await;

    // Both engage (by email, as a marketing system sends it): 100 + 2 for
    // Pat, 2 for Ann.
    let scoring = system.scoring_as(0, T);
    let recorded = scoring
        .record(vec![
            by_email("e-pat-1", "demo_request", PAT),
            by_email("e-pat-2", "email_click", PAT),
            by_email("e-ann-1", "email_click", ANN),
        ])
        .await;
    assert_eq!(recorded.recorded_count, 3, "{recorded:?}");
    lifecycle
        .wait_for_account(&acme.account_id, "both people's points", |a| {
            a.engagement_score == 104.0
        })
        .await;
    lifecycle
        .wait_for_stage(&acme.account_id, AccountStage::Prioritized)
        .await;
    // Pat raises a hand on the prioritized account: the owner's
    // notification names her by email, as stored and in the watch feed.
    notify_hand_raises(&lifecycle, "email_click").await;
    scoring
        .record(vec![by_email("e-pat-3", "email_click", PAT)])
        .await;
    wait_for_notification(
        &lifecycle,
        &acme.account_id,
        &format!("{PAT} raised a hand"),
    )
    .await;
    lifecycle.nurture(&acme.account_id, NURTURE_REASON).await;
    let opportunity = system.opportunity_as(0, T);
    let pilot = opportunity.create(&acme.account_id, "Acme pilot").await;
    opportunity
        .try_lose(&pilot.opportunity_id, LOST_REASON)
        .await
        .expect("the pilot lost");
    // A deal with both in the buying group, Pat also a named stakeholder.
    let deal = opportunity
        .try_create(op::Opportunity {
            account_id: acme.account_id.clone(),
            name: "Acme platform".into(),
            buying_group_contact_ids: vec![pat.contact_id.clone(), ann.contact_id.clone()],
            stakeholders: vec![op::Stakeholder {
                contact_id: pat.contact_id.clone(),
                name: format!("Pat {PAT_NAME}"),
                role: op::StakeholderRole::DecisionMaker as i32,
            }],
            ..Default::default()
        })
        .await
        .expect("a deal");
    system.settled().await;
    assert!(
        !found_anywhere(&system, PAT).await.is_empty(),
        "Pat is stored before"
    );

    // Scoring is down when the erasure is asked for.
    system.scoring[0].kill().await;
    let erased = erase_contact(&lifecycle, &pat.contact_id).await;
    assert_eq!(erased.subject_type, lc::ErasureSubjectType::Contact as i32);
    assert_eq!(erased.subject_id, pat.contact_id);
    assert_eq!(erased.actor, "dpo@tenant.example");
    assert_eq!(erased.contact_count, 1);
    assert!(!erased.complete);
    // Lifecycle's part is done at once: the contact is gone, and the
    // notification names nobody.
    let notified = notification_texts(&lifecycle, &acme.account_id).await;
    assert!(
        notified
            .iter()
            .any(|t| t.starts_with("a person since erased raised a hand (email_click)")),
        "{notified:?}"
    );
    // The watch feed replays it the same way.
    let replayed = replayed_notifications(&lifecycle, &acme.account_id).await;
    assert!(
        replayed
            .iter()
            .any(|t| t.starts_with("a person since erased raised a hand (email_click)")),
        "{replayed:?}"
    );
    assert!(!replayed.iter().any(|t| t.contains(PAT)), "{replayed:?}");
    let gone = lifecycle
        .public()
        .get_contact(lifecycle.req(lc::GetContactRequest {
            contact_id: pat.contact_id.clone(),
        }))
        .await
        .expect_err("erased");
    assert_eq!(gone.code(), Code::NotFound);
    let lifecycle_db = system.databases()[0].1;
    assert_eq!(
        lifecycle_db.columns_containing(PAT).await,
        Vec::<String>::new()
    );
    // Opportunity erases its part; scoring cannot yet.
    let waiting = eventually("opportunity's part of the erasure", async || {
        let now = erasure(&lifecycle, &erased.erasure_id).await;
        if done(&now)
            == [
                ("lifecycle", true),
                ("scoring", false),
                ("opportunity", true),
            ]
        {
            Ok(now)
        } else {
            Err(now)
        }
    })
    .await;
    assert!(!waiting.complete);
    // Pending for scoring, listed in pages after a cursor.
    let pending_after = async |after: &str| {
        let internal = lifecycle.as_actor("scoring");
        internal
            .internal()
            .list_pending_erasures(internal.req(lc::ListPendingErasuresRequest {
                service: "scoring".to_owned(),
                page_size: 0,
                after_erasure_id: after.to_owned(),
            }))
            .await
            .map(|response| {
                response
                    .into_inner()
                    .erasures
                    .into_iter()
                    .map(|e| e.erasure_id)
                    .collect::<Vec<_>>()
            })
    };
    assert!(
        pending_after("")
            .await
            .expect("pending")
            .contains(&erased.erasure_id)
    );
    assert!(
        !pending_after(&erased.erasure_id)
            .await
            .expect("the next page")
            .contains(&erased.erasure_id)
    );
    let malformed = pending_after("1").await.expect_err("a malformed cursor");
    assert_eq!(
        cascade_testkit::fixtures::violated_fields(&malformed),
        ["after_erasure_id"]
    );
    let cleaned = opportunity.get(&deal.opportunity_id).await;
    assert_eq!(cleaned.buying_group_contact_ids, [ann.contact_id.as_str()]);
    assert!(
        cleaned.stakeholders.is_empty(),
        "{:?}",
        cleaned.stakeholders
    );
    // Asking again is harmless: the same erasure.
    let again = erase_contact(&lifecycle, &pat.contact_id).await;
    assert_eq!(again.erasure_id, erased.erasure_id);

    // Scoring comes back and erases its part.
    system.scoring[0].start().await;
    let complete = eventually("the erasure to complete", async || {
        let now = erasure(&lifecycle, &erased.erasure_id).await;
        if now.complete { Ok(now) } else { Err(now) }
    })
    .await;
    assert!(complete.complete_time.is_some());
    // The account's score is recomputed without Pat: Ann's 2 points.
    lifecycle
        .wait_for_account(&acme.account_id, "the score without Pat", |a| {
            a.engagement_score == 2.0
        })
        .await;
    let score = system.scoring_as(0, T).score(&acme.account_id).await;
    assert_eq!(score.engagement_score, 2.0);
    let contact_score = system
        .scoring_as(0, T)
        .public()
        .get_contact_score(system.scoring_as(0, T).req(
            cascade_proto::scoring::v1::GetContactScoreRequest {
                contact_id: pat.contact_id.clone(),
            },
        ))
        .await;
    let status = contact_score.expect_err("Pat has no score");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status.message().ends_with(
            ": no activity has been recorded for this contact, or the contact was erased"
        ),
        "the refusal says why: {status:?}"
    );
    system.settled().await;
    assert_eq!(
        found_anywhere(&system, PAT).await,
        Vec::<(String, String)>::new()
    );
    assert_eq!(
        found_anywhere(&system, PAT_NAME).await,
        Vec::<(String, String)>::new()
    );
    // Ann is untouched.
    assert!(!found_anywhere(&system, ANN).await.is_empty());

    // The account: refused while its deal is open, then forced.
    // A person's erasure keeps the account's history and watch feed as
    // they are.
    let mut reason_kept = found_anywhere(&system, NURTURE_REASON).await;
    reason_kept.sort();
    assert_eq!(
        reason_kept,
        [
            ("lifecycle".to_owned(), "account_events.payload".to_owned()),
            (
                "lifecycle".to_owned(),
                "account_transitions.reason".to_owned()
            )
        ]
    );
    let refused = admin
        .public()
        .delete_account(admin.req(lc::DeleteAccountRequest {
            account_id: acme.account_id.clone(),
            force: false,
        }))
        .await
        .expect_err("an open deal");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        precondition_subjects(&refused),
        [format!("account/{}", acme.account_id)]
    );
    let account_erasure = admin
        .public()
        .delete_account(admin.req(lc::DeleteAccountRequest {
            account_id: acme.account_id.clone(),
            force: true,
        }))
        .await
        .expect("forced")
        .into_inner()
        .erasure
        .expect("erasure");
    assert_eq!(account_erasure.contact_count, 1, "Ann");
    // Asking to erase Ann now answers with the erasure that took her.
    let ann_again = erase_contact(&lifecycle, &ann.contact_id).await;
    assert_eq!(ann_again.erasure_id, account_erasure.erasure_id);
    eventually("the account's erasure to complete", async || {
        let now = erasure(&lifecycle, &account_erasure.erasure_id).await;
        if now.complete { Ok(()) } else { Err(now) }
    })
    .await;
    assert_eq!(
        lifecycle
            .try_account(&acme.account_id)
            .await
            .expect_err("erased")
            .code(),
        Code::NotFound
    );
    let deal_gone = opportunity
        .public()
        .get_opportunity(opportunity.req(op::GetOpportunityRequest {
            opportunity_id: deal.opportunity_id.clone(),
        }))
        .await
        .expect_err("the deal went with the account");
    assert_eq!(deal_gone.code(), Code::NotFound);
    let scored = system.scoring_as(0, T).try_score(&acme.account_id).await;
    assert_eq!(scored.expect_err("no score").code(), Code::NotFound);
    system.settled().await;
    for needle in [
        ANN,
        "acme-erasure.example",
        PAT,
        NURTURE_REASON,
        LOST_REASON,
    ] {
        assert_eq!(
            found_anywhere(&system, needle).await,
            Vec::<(String, String)>::new(),
            "{needle}"
        );
    }
    println!(
        "erasure: contact erased in lifecycle at once, opportunity next, scoring after its restart; account erased with its deal"
    );
    system.stop().await;
}

/// Where scoring still holds `contact_id` (its delivered scores keep no
/// payload, so not in the outbox either).
async fn scoring_rows_naming(system: &System, contact_id: &str) -> Vec<String> {
    system.databases()[1].1.columns_containing(contact_id).await
}

/// Hand-raises of `activity_type` notify the owner again on an account
/// already PRIORITIZED.
async fn notify_hand_raises(lifecycle: &cascade_testkit::Lifecycle, activity_type: &str) {
    lifecycle
        .set_settings(
            lc::LifecycleSettings {
                hand_raise_activity_types: vec![activity_type.into()],
                renotify_on_hand_raise: true,
                ..Default::default()
            },
            &["hand_raise_activity_types", "renotify_on_hand_raise"],
        )
        .await;
}

/// The texts of the account's notifications, newest first.
async fn notification_texts(
    lifecycle: &cascade_testkit::Lifecycle,
    account_id: &str,
) -> Vec<String> {
    lifecycle
        .notifications(account_id)
        .await
        .into_iter()
        .map(|n| n.text)
        .collect()
}

/// Waits for a notification of the account whose text starts with `prefix`.
async fn wait_for_notification(
    lifecycle: &cascade_testkit::Lifecycle,
    account_id: &str,
    prefix: &str,
) {
    eventually("the notification", async || {
        let texts = notification_texts(lifecycle, account_id).await;
        if texts.iter().any(|t| t.starts_with(prefix)) {
            Ok(())
        } else {
            Err(texts)
        }
    })
    .await;
}

/// The texts of the notifications the account's watch feed replays from
/// its start.
async fn replayed_notifications(
    lifecycle: &cascade_testkit::Lifecycle,
    account_id: &str,
) -> Vec<String> {
    let mut feed = lifecycle
        .public()
        .watch_account_events(lifecycle.req(lc::WatchAccountEventsRequest {
            account_id: account_id.to_owned(),
            cursor: "0".into(),
            ..Default::default()
        }))
        .await
        .expect("the feed")
        .into_inner();
    let mut replayed = Vec::new();
    while let Ok(Ok(Some(event))) =
        tokio::time::timeout(Duration::from_millis(500), feed.message()).await
    {
        if let Some(lc::watch_account_events_response::Event::Notification(n)) = event.event {
            replayed.push(n.text);
        }
    }
    replayed
}

/// A hand-raise text names the person by the email they had when they
/// raised a hand. Erasing them after an email change takes that email out
/// too, as stored and as the watch feed replays it: the notification
/// records whom it names, by contact id.
async fn an_earlier_email_leaves_the_hand_raise_texts_too(db: TestDatabase) {
    const NEW_PAT: &str = "pat.new@acme-erasure.example";
    let system = System::start(&db, 1).await;
    let lifecycle = system.lifecycle_as(0, T);
    notify_hand_raises(&lifecycle, "demo_request").await;
    let acme = lifecycle
        .create_account_with(account("Acme", "acme-erasure.example", "owner"))
        .await;
    let pat = lifecycle.create_contact(&acme.account_id, PAT).await;
    // 100 points make Acme PRIORITIZED (a notification naming nobody); the
    // next demo request is a hand-raise on a prioritized account.
    let scoring = system.scoring_as(0, T);
    scoring
        .record(vec![by_email("e-pat-1", "demo_request", PAT)])
        .await;
    lifecycle
        .wait_for_stage(&acme.account_id, AccountStage::Prioritized)
        .await;
    scoring
        .record(vec![by_email("e-pat-2", "demo_request", PAT)])
        .await;
    let raised = format!("{PAT} raised a hand (demo_request)");
    wait_for_notification(&lifecycle, &acme.account_id, &raised).await;
    lifecycle
        .public()
        .update_contact(lifecycle.req(lc::UpdateContactRequest {
            contact: Some(lc::Contact {
                contact_id: pat.contact_id.clone(),
                email: NEW_PAT.into(),
                ..Default::default()
            }),
            update_mask: cascade_testkit::fixtures::mask(&["email"]),
        }))
        .await
        .expect("a new email");

    erase_contact(&lifecycle, &pat.contact_id).await;
    let erased_text = "a person since erased raised a hand (demo_request)";
    let notified = notification_texts(&lifecycle, &acme.account_id).await;
    assert!(
        notified.iter().any(|t| t.starts_with(erased_text)),
        "{notified:?}"
    );
    let replayed = replayed_notifications(&lifecycle, &acme.account_id).await;
    assert!(
        replayed.iter().any(|t| t.starts_with(erased_text)),
        "{replayed:?}"
    );
    let lifecycle_db = system.databases()[0].1;
    for email in [PAT, NEW_PAT] {
        assert_eq!(
            lifecycle_db.columns_containing(email).await,
            Vec::<String>::new(),
            "{email}"
        );
    }
    system.stop().await;
}

/// A change to a deal saved while opportunity erases a person from it is
/// kept: the erasure reads the deal under the change's lock, after it. A
/// reviewer found the erasure writing back the copy it had read before,
/// dropping the change. The test's own transaction stands in for the save,
/// held open until the erasure waits for it.
async fn a_change_saved_during_an_erasure_is_kept(db: TestDatabase) {
    const T: &str = "erasure-race";
    let system = System::start(&db, 1).await;
    let lifecycle = system.lifecycle_as(0, T);
    let acme = lifecycle
        .create_account_with(account("Acme", "acme-race.example", "owner"))
        .await;
    let pat = lifecycle
        .create_contact(&acme.account_id, "pat@acme-race.example")
        .await;
    let ann = lifecycle
        .create_contact(&acme.account_id, "ann@acme-race.example")
        .await;
    let opportunity = system.opportunity_as(0, T);
    let deal = opportunity
        .try_create(op::Opportunity {
            account_id: acme.account_id.clone(),
            name: "Race deal".into(),
            buying_group_contact_ids: vec![pat.contact_id.clone(), ann.contact_id.clone()],
            ..Default::default()
        })
        .await
        .expect("a deal");

    let url = system.databases()[2].1.settings.url.clone();
    let saving = sea_orm::Database::connect(url.as_str())
        .await
        .expect("the opportunity database");
    let backend = saving.get_database_backend();
    let save = sea_orm::TransactionTrait::begin(&saving)
        .await
        .expect("a transaction");
    save.execute_raw(sea_orm::Statement::from_string(
        backend,
        format!(
            "UPDATE opportunities SET data = replace(data, '\"Race deal\"', '\"Race deal, renamed\"') \
             WHERE opportunity_id = '{}'",
            deal.opportunity_id
        ),
    ))
    .await
    .expect("the save, uncommitted");
    let erased = erase_contact(&lifecycle, &pat.contact_id).await;
    // The erasure waits for the save.
    someone_waits_for_a_lock(&url, None).await;
    save.commit().await.expect("the save committed");
    wait_until_complete(&lifecycle, &erased.erasure_id).await;
    let after = opportunity.get(&deal.opportunity_id).await;
    assert_eq!(
        (after.name.as_str(), after.buying_group_contact_ids),
        ("Race deal, renamed", vec![ann.contact_id.clone()]),
        "the change kept, Pat erased"
    );
    system.stop().await;
}

async fn erase_contact(lifecycle: &cascade_testkit::Lifecycle, contact_id: &str) -> lc::Erasure {
    let admin = lifecycle.as_actor("dpo@tenant.example");
    admin
        .public()
        .delete_contact(admin.req(lc::DeleteContactRequest {
            contact_id: contact_id.to_owned(),
        }))
        .await
        .expect("erasure accepted")
        .into_inner()
        .erasure
        .expect("erasure")
}

/// Creates `account` with a contact at `email`, and erases the contact.
async fn erase_a_new_contact(
    lifecycle: &cascade_testkit::Lifecycle,
    account: &str,
    email: &str,
) -> lc::Erasure {
    let account = lifecycle
        .create_account(account, "owner@seller.example")
        .await
        .account_id;
    let contact = lifecycle.create_contact(&account, email).await.contact_id;
    erase_contact(lifecycle, &contact).await
}

async fn wait_until_complete(lifecycle: &cascade_testkit::Lifecycle, erasure_id: &str) {
    // Well past the longest settle these tests give a replica (10 s).
    eventually_within(
        Duration::from_secs(30),
        "the erasure to complete",
        async || {
            let now = erasure(lifecycle, erasure_id).await;
            if now.complete { Ok(()) } else { Err(now) }
        },
    )
    .await;
}

/// Two scoring replicas have each checked Pat (and remember her). Only one
/// of them may apply the erasure first, but it stays pending while it
/// settles, so the other hears of it too: once the erasure is complete,
/// neither replica accepts an activity naming her.
async fn every_replica_forgets_an_erased_person(db: TestDatabase) {
    const T: &str = "erasure-replicas";
    let system = System::start(&db, 2).await;
    let lifecycle = system.lifecycle_as(0, T);
    let acme = lifecycle
        .create_account_with(account("Acme", "acme-replicas.example", "owner"))
        .await;
    let pat = lifecycle
        .create_contact(&acme.account_id, "pat@acme-replicas.example")
        .await;
    let about_pat = |event: &str| activity(event, "email_click", &acme.account_id, &pat.contact_id);
    for n in 0..2 {
        let recorded = system
            .scoring_as(n, T)
            .record(vec![about_pat(&format!("e-before-{n}"))])
            .await;
        assert_eq!(recorded.recorded_count, 1, "replica {n}: {recorded:?}");
    }

    let erased = erase_contact(&lifecycle, &pat.contact_id).await;
    wait_until_complete(&lifecycle, &erased.erasure_id).await;
    for n in 0..2 {
        let refused = system
            .scoring_as(n, T)
            .record(vec![about_pat(&format!("e-after-{n}"))])
            .await;
        assert_eq!(refused.recorded_count, 0, "replica {n}: {refused:?}");
        assert_eq!(
            refused.results[0].status,
            sc::ActivityStatus::NotFound as i32,
            "replica {n}: {refused:?}"
        );
    }
    system.settled().await;
    assert_eq!(
        scoring_rows_naming(&system, &pat.contact_id).await,
        Vec::<String>::new(),
        "nothing of Pat in scoring"
    );
    system.stop().await;
}

/// An activity that names Pat and is stored after scoring's first sweep of
/// her erasure (as a call that checked her just before the erasure would)
/// is erased by the second sweep, before the erasure is complete. Replica 1
/// stands in for such a call: it polls for erasures only every minute, so
/// it still trusts what it checked of Pat.
async fn an_activity_stored_while_an_erasure_settles_is_erased_too(db: TestDatabase) {
    const T: &str = "erasure-settles";
    let mut system = System::start(&db, 2).await;
    // Replica 0's second sweep comes 10 s after its first: time enough for
    // the late activity below to be stored in between.
    system.scoring[0].kill().await;
    system.scoring[0].set_env("CASCADE_SCORING__LIFECYCLE__ERASURE_SETTLE_MS", "10000");
    system.scoring[0].start().await;
    system.scoring[1].kill().await;
    system.scoring[1].set_env("CASCADE_SCORING__LIFECYCLE__ERASURE_POLL_MS", "60000");
    system.scoring[1].set_env("CASCADE_SCORING__LIFECYCLE__ERASURE_SETTLE_MS", "240000");
    system.scoring[1].start().await;
    let lifecycle = system.lifecycle_as(0, T);
    let acme = lifecycle
        .create_account_with(account("Acme", "acme-settles.example", "owner"))
        .await;
    let pat = lifecycle
        .create_contact(&acme.account_id, "pat@acme-settles.example")
        .await;
    let ann = lifecycle
        .create_contact(&acme.account_id, "ann@acme-settles.example")
        .await;
    let slow = system.scoring_as(1, T);
    let recorded = slow
        .record(vec![
            activity("e-pat-1", "demo_request", &acme.account_id, &pat.contact_id),
            activity("e-ann-1", "email_click", &acme.account_id, &ann.contact_id),
        ])
        .await;
    assert_eq!(recorded.recorded_count, 2, "{recorded:?}");
    lifecycle
        .wait_for_account(&acme.account_id, "both people's points", |a| {
            a.engagement_score == 102.0
        })
        .await;

    let erased = erase_contact(&lifecycle, &pat.contact_id).await;
    // Replica 0's first sweep: the score without Pat reaches lifecycle.
    lifecycle
        .wait_for_account(&acme.account_id, "the score without Pat", |a| {
            a.engagement_score == 2.0
        })
        .await;
    // Replica 1 has not polled since: it still accepts Pat.
    let late = slow
        .record(vec![activity(
            "e-pat-2",
            "demo_request",
            &acme.account_id,
            &pat.contact_id,
        )])
        .await;
    assert_eq!(late.recorded_count, 1, "{late:?}");
    let settling = erasure(&lifecycle, &erased.erasure_id).await;
    assert!(
        done(&settling).contains(&("scoring", false)),
        "stored before the second sweep: {settling:?}"
    );

    wait_until_complete(&lifecycle, &erased.erasure_id).await;
    system.settled().await;
    assert_eq!(
        scoring_rows_naming(&system, &pat.contact_id).await,
        Vec::<String>::new(),
        "the second sweep took the late activity"
    );
    let score = system.scoring_as(0, T).score(&acme.account_id).await;
    assert_eq!(score.engagement_score, 2.0, "Ann's points only");
    lifecycle
        .wait_for_account(&acme.account_id, "Ann's points only", |a| {
            a.engagement_score == 2.0
        })
        .await;
    system.stop().await;
}

/// Scoring cannot apply an erasure in a tenant with a damaged pending fold
/// (its first step reads the tenant's pending folds). That erasure waits,
/// and holds back no other: a later one of another tenant completes. Once
/// an operator deletes the damaged row, the first completes too.
async fn a_failing_erasure_holds_back_no_other(db: TestDatabase) {
    const DAMAGED: &str = "erasure-damaged";
    const OTHER: &str = "erasure-other";
    let system = System::start(&db, 1).await;
    let mut erasures = Vec::new();
    for tenant in [DAMAGED, OTHER] {
        let lifecycle = system.lifecycle_as(0, tenant);
        let domain = format!("{tenant}.example");
        let acme = lifecycle
            .create_account_with(account("Acme", &domain, "owner"))
            .await;
        let pat = lifecycle
            .create_contact(&acme.account_id, &format!("pat@{domain}"))
            .await;
        erasures.push((lifecycle, pat.contact_id));
    }
    let conn = system.damage_a_pending_fold(DAMAGED).await;

    // The damaged tenant's erasure is older, so listed first.
    let stuck = erase_contact(&erasures[0].0, &erasures[0].1).await;
    let other = erase_contact(&erasures[1].0, &erasures[1].1).await;
    wait_until_complete(&erasures[1].0, &other.erasure_id).await;
    let waiting = erasure(&erasures[0].0, &stuck.erasure_id).await;
    assert!(done(&waiting).contains(&("scoring", false)), "{waiting:?}");

    conn.execute_raw(cascade_chassis::db::statement(
        conn.get_database_backend(),
        "DELETE FROM pending_folds WHERE tenant_id = $1",
        [DAMAGED.into()],
    ))
    .await
    .expect("the damaged row deleted");
    wait_until_complete(&erasures[0].0, &stuck.erasure_id).await;
    system.stop().await;
}

/// Scoring and opportunity settle for 400 ms, lifecycle for 4 s: each
/// confirms after its own settle, is refused with how long lifecycle's
/// settle has left, and waits that long before it erases again and
/// confirms, rather than erasing and being refused on every poll (100 ms).
async fn a_longer_settle_in_lifecycle_is_waited_for(db: TestDatabase) {
    const T: &str = "erasure-longer";
    let env = [
        ("CASCADE_SCORING__LIFECYCLE__ERASURE_SETTLE_MS", "400"),
        ("CASCADE_OPPORTUNITY__LIFECYCLE__ERASURE_SETTLE_MS", "400"),
        ("CASCADE_LIFECYCLE__TELEMETRY__METRICS_PORT", "0"),
        // Long enough that a stalled service still confirms before it.
        ("CASCADE_LIFECYCLE__ERASURE__MIN_SETTLE_MS", "4000"),
    ];
    let system = System::start_with(
        &db,
        1,
        env.map(|(k, v)| (k.to_owned(), v.to_owned())).into(),
    )
    .await;
    let metrics = system.lifecycle[0].metrics_port().await;
    let lifecycle = system.lifecycle_as(0, T);
    let erased = erase_a_new_contact(&lifecycle, "Acme Longer", "pat@acme-longer.example").await;
    wait_until_complete(&lifecycle, &erased.erasure_id).await;
    let refused = common::metric(
        metrics,
        "rpc_server_call_duration_seconds_count",
        &[
            r#"rpc_method="ConfirmErasure""#,
            r#"rpc_grpc_status_code="9""#,
        ],
    )
    .await;
    // One refusal per service; one more each should a clock tick round
    // the wait short. Refused on every poll, it was 24 in all with a 2 s
    // settle, and more with this one.
    assert!(
        matches!(refused, Ok(n) if (2.0..=4.0).contains(&n)),
        "refused confirmations: {refused:?}"
    );
    system.stop().await;
}

/// A replica that confirms at once (an older version, or a shorter settle)
/// is refused FAILED_PRECONDITION `ERASURE_SETTLING` until the erasure has
/// settled (`erasure.min_settle_ms`, 2 s here), so the erasure stays pending
/// and every replica hears of it; once settled, the confirmation is taken.
async fn a_confirmation_before_the_settle_is_refused(db: TestDatabase) {
    const T: &str = "erasure-early";
    let system = System::start(&db, 1).await;
    let lifecycle = system.lifecycle_as(0, T);
    let erased = erase_a_new_contact(&lifecycle, "Acme Early", "pat@acme-early.example").await;
    let (made, settles) = (
        erased.create_time.expect("made"),
        erased.settle_time.expect("settles"),
    );
    assert_eq!(
        (settles.seconds * 1_000 + i64::from(settles.nanos / 1_000_000))
            - (made.seconds * 1_000 + i64::from(made.nanos / 1_000_000)),
        2_000,
        "the erasure says when it settles: {erased:?}"
    );
    let confirm = async || {
        let internal = lifecycle.as_actor("scoring");
        internal
            .internal()
            .confirm_erasure(internal.req(lc::ConfirmErasureRequest {
                erasure_id: erased.erasure_id.clone(),
                service: "scoring".to_owned(),
            }))
            .await
    };
    let early = confirm().await.expect_err("before the settle");
    assert_eq!(early.code(), Code::FailedPrecondition, "{early:?}");
    assert_eq!(
        precondition_subjects(&early),
        [format!("erasure/{}", erased.erasure_id)],
        "{early:?}"
    );
    assert!(
        early.message().contains("erasure.min_settle_ms"),
        "{early:?}"
    );
    // ... and how long until it settles, for the caller to wait.
    let wait = {
        use tonic_types::StatusExt;
        early.get_details_retry_info().and_then(|i| i.retry_delay)
    };
    assert!(
        wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_secs(2)),
        "RetryInfo within the 2 s settle: {wait:?}"
    );
    assert!(
        done(&erasure(&lifecycle, &erased.erasure_id).await).contains(&("scoring", false)),
        "the refused confirmation left scoring's part pending"
    );
    eventually_within(
        Duration::from_secs(10),
        "the confirmation to be taken once settled",
        async || confirm().await.map_err(|status| format!("{status:?}")),
    )
    .await;
    wait_until_complete(&lifecycle, &erased.erasure_id).await;
    system.stop().await;
}
