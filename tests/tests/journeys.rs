//! End-to-end journeys through the three real binaries, only through their
//! gRPC APIs, on SQLite and PostgreSQL.

mod common;

use cascade_proto::common::v1::{
    AccountStage as S, ContactStage as C, CustomerType, Date, OpportunityKind,
};
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::opportunity::v1 as op;
use cascade_testkit::fixtures::{account, activity, by_email, days_ago, usd};
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
                end_date: None,
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
                end_date: None,
            }),
            ..Default::default()
        },
        &["contract"],
    )
    .await;
    // A seller wins it: lifecycle records them as the actor of the moves.
    opps.as_actor("peter@seller.example")
        .try_win(&oid)
        .await
        .expect("won");
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
    // Opened by a caller who named no one: the service; won by the seller.
    assert_eq!(history[4].actor, "opportunity-service");
    assert_eq!(history[5].actor, "peter@seller.example");
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

    lifecycle.nurture(&id, "not this quarter").await;
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
    // The account's history says why: the seller's reason.
    let last = lifecycle.transitions(&id).await.pop().expect("entries");
    assert_eq!(
        (last.to_stage, last.cause, last.reason.as_str()),
        (
            S::Engaged as i32,
            lc::TransitionCause::OpportunityLost as i32,
            "chose a rival"
        )
    );
    assert_eq!(
        receiver.accepted().len(),
        3,
        "one notification per prioritization"
    );
    system.stop().await;
}

on_each_database!(
    the_full_journey,
    recycling_journeys,
    after_the_sale,
    people_judged_during_a_deal_keep_their_stage
);

/// A stage a person gives a buying-group member during the deal stays: an
/// edit of the group (reordered, a member added) moves only the member it
/// adds, and the win makes customers of the others but not of one a person
/// disqualified. A tester saw a reordered group undo SALES_QUALIFIED, and a
/// win turn DISQUALIFIED into CUSTOMER.
async fn people_judged_during_a_deal_keep_their_stage(db: TestDatabase) {
    const T: &str = "judged";
    let system = System::start(&db, 1).await;
    let (lifecycle, opps) = (system.lifecycle_as(0, T), system.opportunity_as(0, T));
    let acme = lifecycle
        .create_account_with(account("Judged", "judged.example", "owner"))
        .await
        .account_id;
    let [ann, bob, cy] = ["ann", "bob", "cy"].map(|n| format!("{n}@judged.example"));
    let ann = lifecycle.create_contact(&acme, &ann).await.contact_id;
    let bob = lifecycle.create_contact(&acme, &bob).await.contact_id;
    let cy = lifecycle.create_contact(&acme, &cy).await.contact_id;
    let deal = deal_at_win(
        &opps,
        &acme,
        "Judged deal",
        OpportunityKind::NewBusiness,
        &[&ann, &bob],
    )
    .await;
    lifecycle.wait_for_contact_stage(&ann, C::Opportunity).await;
    lifecycle.wait_for_contact_stage(&bob, C::Opportunity).await;
    for (contact_id, stage) in [(&ann, C::SalesQualified), (&bob, C::Disqualified)] {
        lifecycle
            .public()
            .update_contact(lifecycle.req(lc::UpdateContactRequest {
                contact: Some(lc::Contact {
                    contact_id: contact_id.clone(),
                    stage: stage as i32,
                    ..Default::default()
                }),
                update_mask: cascade_testkit::fixtures::mask(&["stage"]),
            }))
            .await
            .expect("a person's judgement");
    }
    opps.try_update(
        &deal,
        op::Opportunity {
            buying_group_contact_ids: vec![cy.clone(), bob.clone(), ann.clone()],
            ..Default::default()
        },
        &["buying_group_contact_ids"],
    )
    .await
    .expect("Cy added, the group reordered");
    lifecycle.wait_for_contact_stage(&cy, C::Opportunity).await;
    system.settled().await;
    let stage = async |id: &str| C::try_from(lifecycle.contact(id).await.stage).expect("a stage");
    assert_eq!(
        (stage(&ann).await, stage(&bob).await),
        (C::SalesQualified, C::Disqualified),
        "the edit moved only Cy"
    );
    opps.try_win(&deal).await.expect("won");
    lifecycle.wait_for_contact_stage(&ann, C::Customer).await;
    lifecycle.wait_for_contact_stage(&cy, C::Customer).await;
    system.settled().await;
    assert_eq!(stage(&bob).await, C::Disqualified, "not a customer");
    system.stop().await;
}

/// Opens a deal of `kind` for the account and takes it through every step
/// to WIN (not closed): its id.
async fn deal_at_win(
    opps: &cascade_testkit::Opportunity,
    account_id: &str,
    name: &str,
    kind: OpportunityKind,
    buying_group: &[&str],
) -> String {
    let created = opps
        .public()
        .create_opportunity(opps.req(op::CreateOpportunityRequest {
            opportunity: Some(op::Opportunity {
                account_id: account_id.to_owned(),
                name: name.to_owned(),
                kind: kind as i32,
                estimated_deal_size: usd(30_000),
                buying_group_contact_ids: buying_group.iter().map(|c| (*c).to_owned()).collect(),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .expect("opportunity")
        .into_inner()
        .opportunity
        .expect("opportunity");
    let oid = created.opportunity_id;
    let steps: [(op::Opportunity, &[&str]); 3] = [
        (
            op::Opportunity {
                close_date: Some(Date {
                    year: 2027,
                    month: 6,
                    day: 30,
                }),
                amount: usd(30_000),
                current_situation: "renewal due".into(),
                needs: "keep the lifecycle running".into(),
                ..Default::default()
            },
            &["close_date", "amount", "current_situation", "needs"],
        ),
        (
            op::Opportunity {
                line_items: vec![op::LineItem {
                    product: "Platform".into(),
                    kind: 1,
                    quantity: 1,
                    unit_price: usd(30_000),
                    end_date: None,
                }],
                new_reality: "one more year".into(),
                ..Default::default()
            },
            &["line_items", "new_reality"],
        ),
        (
            op::Opportunity {
                contract: Some(op::Contract {
                    document_ref: format!("dms://{name}"),
                    signed: true,
                    sign_time: None,
                    end_date: None,
                }),
                ..Default::default()
            },
            &["contract"],
        ),
    ];
    for (fields, paths) in steps {
        opps.try_advance(&oid).await.expect("advance");
        opps.try_update(&oid, fields, paths).await.expect("update");
    }
    oid
}

/// After the sale (issue 19), through the three binaries: the person who
/// engaged leaves, the customer's engagement falls below the tenant's
/// threshold and it is flagged at risk (the owner hears of it); its renewal
/// is lost and it churns; a new deal brings it back. The funnel and the
/// pipeline report show each state.
async fn after_the_sale(db: TestDatabase) {
    let system = System::start(&db, 1).await;
    let receiver = WebhookReceiver::start().await;
    let (lifecycle, scoring, opps) = (
        system.lifecycle_as(0, T),
        system.scoring_as(0, T),
        system.opportunity_as(0, T),
    );
    lifecycle.set_webhook(&receiver.url, None).await;
    lifecycle
        .set_settings(
            lc::LifecycleSettings {
                at_risk_engagement_threshold: 20.0,
                churn_on_lost_renewal: true,
                ..Default::default()
            },
            &["at_risk_engagement_threshold", "churn_on_lost_renewal"],
        )
        .await;
    let id = lifecycle
        .try_create_account(
            account("Umbrella", "umbrella.example", "owner@seller.example"),
            "after-sale-umbrella",
        )
        .await
        .expect("account")
        .account_id;

    // Ann engages a lot, Bob a little: 52 points.
    let recorded = scoring
        .record(vec![
            by_email("u1", "pricing_page_visit", "ann@umbrella.example"),
            by_email("u2", "email_open", "bob@umbrella.example"),
        ])
        .await;
    assert_eq!(recorded.recorded_count, 2, "{:?}", recorded.results);
    let (ann, bob) = (
        recorded.results[0].contact_id.clone(),
        recorded.results[1].contact_id.clone(),
    );
    lifecycle
        .wait_for_account(&id, "52 points in lifecycle", |a| {
            a.engagement_score == 52.0
        })
        .await;

    // Won: a customer.
    let first = deal_at_win(
        &opps,
        &id,
        "Umbrella platform",
        OpportunityKind::NewBusiness,
        &[&ann, &bob],
    )
    .await;
    opps.try_win(&first).await.expect("won");
    lifecycle.wait_for_stage(&id, S::Implement).await;

    // Ann leaves the company. Scoring stops counting her: the account falls
    // to Bob's 2 points, below 20, and the engagement rule flags it.
    lifecycle
        .public()
        .deactivate_contact(lifecycle.req(lc::DeactivateContactRequest {
            contact_id: ann.clone(),
            reason: "left Umbrella".into(),
        }))
        .await
        .expect("deactivated");
    let at_risk = lifecycle
        .wait_for_account(&id, "the account flagged at risk", |a| a.at_risk.is_some())
        .await;
    assert_eq!(at_risk.engagement_score, 2.0);
    assert_eq!(at_risk.stage, S::Implement as i32, "the stage stays");
    let risk = at_risk.at_risk.expect("at risk");
    assert_eq!(risk.source, lc::AtRiskSource::Engagement as i32);
    assert!(risk.reason.contains("52.0 to 2.0"), "{}", risk.reason);
    let notes = receiver.wait_for(1).await;
    assert!(
        notes
            .iter()
            .any(|n| n.body.contains("AT_RISK") && n.body.contains(&id)),
        "the owner hears of it: {notes:?}"
    );
    // Her new activity is refused, naming the field; nothing of it counts.
    let refused = scoring
        .record(vec![by_email(
            "u3",
            "pricing_page_visit",
            "ann@umbrella.example",
        )])
        .await;
    assert_eq!(refused.recorded_count, 0, "{:?}", refused.results);
    assert_eq!(
        refused.results[0]
            .violations
            .iter()
            .map(|v| v.field.as_str())
            .collect::<Vec<_>>(),
        ["activities[0].contact_email"]
    );

    // The renewal is lost: with churn_on_lost_renewal on, the customer
    // churns, and the flag goes with it.
    let renewal = deal_at_win(
        &opps,
        &id,
        "Umbrella renewal",
        OpportunityKind::Renewal,
        &[&bob],
    )
    .await;
    let open = lifecycle
        .wait_for_account(&id, "the renewal among the open deals", |a| {
            !a.open_opportunities.is_empty()
        })
        .await;
    assert_eq!(
        open.open_opportunities[0].kind,
        OpportunityKind::Renewal as i32
    );
    opps.try_lose(&renewal, "went with a competitor")
        .await
        .expect("lost");
    let churned = lifecycle.wait_for_stage(&id, S::Churned).await;
    assert_eq!(churned.at_risk, None, "a former customer is not at risk");

    // A new deal brings it back: a re-prospect in PIPELINE, then a customer.
    let back = deal_at_win(
        &opps,
        &id,
        "Umbrella win-back",
        OpportunityKind::NewBusiness,
        &[&bob],
    )
    .await;
    let pipeline = lifecycle.wait_for_stage(&id, S::Pipeline).await;
    assert_eq!(pipeline.customer_type, CustomerType::ReProspect as i32);
    opps.try_win(&back).await.expect("won back");
    let again = lifecycle.wait_for_stage(&id, S::Implement).await;
    assert_eq!(again.customer_type, CustomerType::Customer as i32);

    use lc::TransitionCause as TC;
    let causes: Vec<(i32, i32)> = lifecycle
        .transitions(&id)
        .await
        .iter()
        .map(|t| (t.to_stage, t.cause))
        .collect();
    assert_eq!(
        causes,
        [
            (S::Engaged as i32, TC::Score as i32),
            (S::Pipeline as i32, TC::OpportunityOpened as i32),
            (S::Implement as i32, TC::OpportunityWon as i32),
            (S::Implement as i32, TC::AtRiskFlagged as i32),
            (S::Churned as i32, TC::OpportunityLost as i32),
            (S::Churned as i32, TC::AtRiskCleared as i32),
            (S::Pipeline as i32, TC::OpportunityOpened as i32),
            (S::Implement as i32, TC::OpportunityWon as i32),
        ]
    );

    // The funnel counts the churn and the way back.
    let churn_row = lifecycle.funnel_row(S::Churned).await;
    assert_eq!((churn_row.entered, churn_row.moved_forward), (1, 1));
    let implement = lifecycle.funnel_row(S::Implement).await;
    assert_eq!(
        (
            implement.entered,
            implement.moved_back,
            implement.accounts_now,
            implement.at_risk_now
        ),
        (2, 1, 1, 0)
    );

    // The pipeline report by kind: one renewal lost, two new deals won.
    let report = opps
        .public()
        .get_pipeline_report(opps.req(op::GetPipelineReportRequest {
            start_time: Some(days_ago(1)),
            end_time: Some(days_ago(-1)),
        }))
        .await
        .expect("pipeline")
        .into_inner();
    let by_kind: Vec<(i32, i64, i64)> = report
        .by_kind
        .iter()
        .map(|k| {
            let counts = k.counts.clone().unwrap_or_default();
            (k.kind, counts.won_count, counts.lost_count)
        })
        .collect();
    assert_eq!(
        by_kind,
        [
            (OpportunityKind::NewBusiness as i32, 2, 0),
            (OpportunityKind::Renewal as i32, 0, 1),
            (OpportunityKind::Upgrade as i32, 0, 0),
        ]
    );
    system.stop().await;
}
