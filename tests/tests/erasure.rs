//! Erasure (issue 18, item 1), through the three services' binaries on
//! SQLite and PostgreSQL: a contact erased while scoring is down is gone
//! from lifecycle at once, from opportunity soon after, and from scoring when
//! it is back; the account's score is recomputed without the person; then
//! the account itself is erased. Every table of every service's database is
//! read to show the person's email and name are nowhere.

mod common;

use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::opportunity::v1 as op;
use cascade_testkit::fixtures::{account, by_email, precondition_subjects};
use cascade_testkit::{TestDatabase, eventually, on_each_database};
use common::System;
use tonic::Code;

on_each_database!(a_person_is_erased_everywhere_even_from_a_service_that_was_down);

const T: &str = "erasure";
const PAT: &str = "pat@acme-erasure.example";
const ANN: &str = "ann@acme-erasure.example";
/// Pat's family name, also given to opportunity as a stakeholder's name.
const PAT_NAME: &str = "Erasable";

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
    // A deal with both in the buying group, Pat also a named stakeholder.
    let opportunity = system.opportunity_as(0, T);
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
    let erased = admin
        .public()
        .delete_contact(admin.req(lc::DeleteContactRequest {
            contact_id: pat.contact_id.clone(),
        }))
        .await
        .expect("erasure accepted")
        .into_inner()
        .erasure
        .expect("erasure");
    assert_eq!(erased.subject_type, lc::ErasureSubjectType::Contact as i32);
    assert_eq!(erased.subject_id, pat.contact_id);
    assert_eq!(erased.actor, "dpo@tenant.example");
    assert_eq!(erased.contact_count, 1);
    assert!(!erased.complete);
    // Lifecycle's part is done at once: the contact is gone.
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
    let cleaned = opportunity.get(&deal.opportunity_id).await;
    assert_eq!(cleaned.buying_group_contact_ids, [ann.contact_id.as_str()]);
    assert!(
        cleaned.stakeholders.is_empty(),
        "{:?}",
        cleaned.stakeholders
    );
    // Asking again is harmless: the same erasure.
    let again = admin
        .public()
        .delete_contact(admin.req(lc::DeleteContactRequest {
            contact_id: pat.contact_id.clone(),
        }))
        .await
        .expect("repeated erasure")
        .into_inner()
        .erasure
        .expect("erasure");
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
    assert!(
        contact_score.is_err(),
        "Pat has no score: {contact_score:?}"
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
    for needle in [ANN, "acme-erasure.example", PAT] {
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
