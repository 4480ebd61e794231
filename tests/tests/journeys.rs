//! End-to-end journeys through the three real binaries, only through their
//! gRPC APIs, on SQLite and PostgreSQL.

mod common;

use cascade_proto::common::v1::{AccountStage as S, ContactStage as C, CustomerType, Date};
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::opportunity::v1 as op;
use cascade_testkit::fixtures::{account, activity, by_email, usd};
use cascade_testkit::{TestDatabase, WebhookReceiver, on_each_database};
use common::System;

const T: &str = "journey";

/// The source documents' story, from a targeted account to an advocate.
async fn the_full_journey(db: TestDatabase) {
    let system = System::start(&db, 1).await;
    let receiver = WebhookReceiver::start().await;
    let (lifecycle, scoring, opps) = (
        system.lifecycle_as(0, T),
        system.scoring_as(0, T),
        system.opportunity_as(0, T),
    );
    lifecycle.set_webhook(&receiver.url, None).await;

    let account = lifecycle
        .try_create_account(
            account("Initech", "initech.example", "peter@seller.example"),
            "journey-initech",
        )
        .await
        .expect("account");
    let id = account.account_id.clone();

    // Anonymous intent: company-level web traffic.
    scoring
        .record_one(activity("intent-1", "web_page_visit", &id, ""))
        .await;
    lifecycle.wait_for_stage(&id, S::Detected).await;

    // Several people engage by email; none alone reaches 100, together they do.
    let recorded = scoring
        .record(vec![
            by_email("j1", "webinar_attended", "ann@initech.example"),
            by_email("j2", "case_study_download", "ann@initech.example"),
            by_email("j3", "pricing_page_visit", "bob@initech.example"),
            by_email("j4", "webinar_attended", "cy@initech.example"),
        ])
        .await;
    assert_eq!(recorded.recorded_count, 4, "{:?}", recorded.results);
    let ann = recorded.results[0].contact_id.clone();
    let bob = recorded.results[2].contact_id.clone();
    let prioritized = lifecycle.wait_for_stage(&id, S::Prioritized).await;
    assert_eq!(prioritized.engagement_score, 110.0);
    let notified = receiver.wait_for(1).await;
    assert!(
        notified[0].body.contains(&id),
        "the owner's notification names the account"
    );

    lifecycle
        .public()
        .qualify_account(lifecycle.req(lc::QualifyAccountRequest {
            account_id: id.clone(),
            reason: "BDR call held".into(),
        }))
        .await
        .expect("qualify");

    // The opportunity through all four steps (created with a request id).
    let opp = opps
        .public()
        .create_opportunity(opps.req(op::CreateOpportunityRequest {
            opportunity: Some(op::Opportunity {
                account_id: id.clone(),
                name: "Initech platform".into(),
                estimated_deal_size: usd(60_000),
                buying_group_contact_ids: vec![ann.clone(), bob.clone()],
                ..Default::default()
            }),
            request_id: "journey-opp".into(),
        }))
        .await
        .expect("opportunity")
        .into_inner()
        .opportunity
        .expect("opportunity");
    let oid = opp.opportunity_id.clone();
    lifecycle.wait_for_stage(&id, S::Pipeline).await;
    let update = async |fields: op::Opportunity, paths: &[&str]| {
        opps.try_update(&oid, fields, paths).await.expect("update");
    };
    let advance = async || {
        opps.try_advance(&oid).await.expect("advance");
    };
    advance().await; // DISCOVER -> QUALIFY
    update(
        op::Opportunity {
            close_date: Some(Date {
                year: 2027,
                month: 6,
                day: 30,
            }),
            amount: usd(60_000),
            current_situation: "spreadsheets".into(),
            needs: "one lifecycle".into(),
            ..Default::default()
        },
        &["close_date", "amount", "current_situation", "needs"],
    )
    .await;
    advance().await; // -> PROPOSE
    update(
        op::Opportunity {
            line_items: vec![op::LineItem {
                product: "Platform".into(),
                kind: 1,
                quantity: 1,
                unit_price: usd(60_000),
            }],
            new_reality: "every account in one place".into(),
            ..Default::default()
        },
        &["line_items", "new_reality"],
    )
    .await;
    advance().await; // -> WIN
    update(
        op::Opportunity {
            contract: Some(op::Contract {
                document_ref: "dms://initech".into(),
                signed: true,
                sign_time: None,
            }),
            ..Default::default()
        },
        &["contract"],
    )
    .await;
    opps.try_win(&oid).await.expect("won");
    let implement = lifecycle.wait_for_stage(&id, S::Implement).await;
    assert_eq!(implement.customer_type, CustomerType::Customer as i32);
    for contact in [&ann, &bob] {
        lifecycle.wait_for_contact_stage(contact, C::Customer).await;
    }

    for _ in 0..2 {
        lifecycle
            .public()
            .advance_account(lifecycle.req(lc::AdvanceAccountRequest {
                account_id: id.clone(),
                ..Default::default()
            }))
            .await
            .expect("advance");
    }
    let advocate = lifecycle.account(&id).await;
    assert_eq!(advocate.stage, S::Advocate as i32);
    let mut reached: Vec<i32> = advocate.stages_reached.iter().map(|s| s.stage).collect();
    reached.sort();
    assert_eq!(
        reached,
        (1..=9).collect::<Vec<_>>(),
        "first-reached date of every stage"
    );

    let history = lifecycle.transitions(&id).await;
    let path: Vec<(i32, i32)> = history.iter().map(|t| (t.from_stage, t.to_stage)).collect();
    assert_eq!(
        path,
        [
            (1, 2),
            (2, 3),
            (3, 4),
            (4, 5),
            (5, 6),
            (6, 7),
            (7, 8),
            (8, 9)
        ],
        "complete, ordered history"
    );
    assert_eq!(history[1].actor, "scoring-service");
    assert_eq!(history[4].actor, "opportunity-service");
    assert_eq!(receiver.accepted().len(), 1, "one notification");
    system.stop().await;
}

/// Disqualify and Nurture, a lost deal that nurtures, and re-engagement
/// after Disqualify notifying again.
async fn recycling_journeys(db: TestDatabase) {
    let system = System::start(&db, 1).await;
    let receiver = WebhookReceiver::start().await;
    let (lifecycle, scoring, opps) = (
        system.lifecycle_as(0, T),
        system.scoring_as(0, T),
        system.opportunity_as(0, T),
    );
    lifecycle.set_webhook(&receiver.url, None).await;
    let id = lifecycle
        .create_account_with(account("Globex", "globex.example", ""))
        .await
        .account_id;
    let demo = |event: &str| by_email(event, "demo_request", "hank@globex.example");
    scoring.record_one(demo("g1")).await;
    lifecycle.wait_for_stage(&id, S::Prioritized).await;
    receiver.wait_for(1).await;

    lifecycle
        .public()
        .nurture_account(lifecycle.req(lc::NurtureAccountRequest {
            account_id: id.clone(),
            reason: "not this quarter".into(),
        }))
        .await
        .expect("nurture");
    // Re-engagement after Nurture: 100 new points prioritize again.
    scoring.record_one(demo("g2")).await;
    lifecycle.wait_for_stage(&id, S::Prioritized).await;
    receiver.wait_for(2).await;

    lifecycle
        .public()
        .disqualify_account(lifecycle.req(lc::DisqualifyAccountRequest {
            account_id: id.clone(),
            reason: "no budget".into(),
        }))
        .await
        .expect("disqualify");
    let re = lifecycle.account(&id).await;
    assert_eq!(
        (re.stage, re.customer_type),
        (S::Detected as i32, CustomerType::ReProspect as i32)
    );
    // A RE_PROSPECT climbing back to PRIORITIZED notifies again.
    scoring.record_one(demo("g3")).await;
    let back = lifecycle.wait_for_stage(&id, S::Prioritized).await;
    assert_eq!(back.customer_type, CustomerType::ReProspect as i32);
    receiver.wait_for(3).await;

    // A lost deal (the only open one) nurtures the account.
    let oid = opps.create(&id, "Globex deal").await.opportunity_id;
    lifecycle.wait_for_stage(&id, S::Pipeline).await;
    opps.try_lose(&oid, "chose a rival").await.expect("lost");
    let nurtured = lifecycle.wait_for_stage(&id, S::Engaged).await;
    let summary = nurtured.recycle_summary.expect("summary");
    assert_eq!((summary.nurture_count, summary.disqualify_count), (2, 1));
    assert_eq!(
        receiver.accepted().len(),
        3,
        "one notification per prioritization"
    );
    system.stop().await;
}

on_each_database!(the_full_journey, recycling_journeys);
