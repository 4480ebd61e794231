//! End-to-end journeys through the three real binaries, only through their
//! gRPC APIs, on SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use cascade_proto::common::v1::{AccountStage as S, ContactStage as C, CustomerType, Date, Money};
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use cascade_proto::opportunity::v1 as op;
use cascade_proto::scoring::v1 as sc;
use cascade_testkit::on_each_database;
use cascade_testkit::{TestDatabase, request_for};
use common::{System, WebhookReceiver};
use tonic::transport::Channel;

const T: &str = "journey";

type Lifecycle = LifecycleServiceClient<Channel>;

fn usd(units: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        units,
        nanos: 0,
    })
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn activity(event_id: &str, kind: &str, account_id: &str, contact_id: &str) -> sc::Activity {
    sc::Activity {
        event_id: event_id.into(),
        activity_type: kind.into(),
        occur_time: Some(cascade_chassis::time::to_timestamp(
            cascade_chassis::time::now(),
        )),
        account_id: account_id.into(),
        contact_id: contact_id.into(),
        contact_email: String::new(),
    }
}

async fn get_account(lifecycle: &mut Lifecycle, id: &str) -> lc::Account {
    lifecycle
        .get_account(request_for(
            T,
            lc::GetAccountRequest {
                account_id: id.into(),
            },
        ))
        .await
        .expect("account")
        .into_inner()
        .account
        .expect("account")
}

async fn wait_for(lifecycle: &mut Lifecycle, id: &str, stage: S) -> lc::Account {
    for _ in 0..400 {
        let account = get_account(lifecycle, id).await;
        if account.stage == stage as i32 {
            return account;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "account never reached {stage:?}: {:?}",
        get_account(lifecycle, id).await.stage
    );
}

async fn contact_stage(lifecycle: &mut Lifecycle, id: &str) -> i32 {
    lifecycle
        .get_contact(request_for(
            T,
            lc::GetContactRequest {
                contact_id: id.into(),
            },
        ))
        .await
        .expect("contact")
        .into_inner()
        .contact
        .expect("contact")
        .stage
}

async fn set_webhook(lifecycle: &mut Lifecycle, url: &str) {
    lifecycle
        .update_lifecycle_settings(request_for(
            T,
            lc::UpdateLifecycleSettingsRequest {
                settings: Some(lc::LifecycleSettings {
                    webhook_url: url.into(),
                    ..Default::default()
                }),
                update_mask: mask(&["webhook_url"]),
            },
        ))
        .await
        .expect("webhook set");
}

/// The source documents' story, from a targeted account to an advocate.
async fn the_full_journey(db: TestDatabase) {
    let system = System::start(&db, 1).await;
    let receiver = WebhookReceiver::start().await;
    let (mut lifecycle, mut scoring, mut opps) = (
        system.lifecycle(0),
        system.scoring(0),
        system.opportunity(0),
    );
    set_webhook(&mut lifecycle, &receiver.url).await;

    let account = lifecycle
        .create_account(request_for(
            T,
            lc::CreateAccountRequest {
                account: Some(lc::Account {
                    name: "Initech".into(),
                    domain: "initech.example".into(),
                    owner_id: "peter@seller.example".into(),
                    ..Default::default()
                }),
                request_id: "journey-initech".into(),
            },
        ))
        .await
        .expect("account")
        .into_inner()
        .account
        .expect("account");
    let id = account.account_id.clone();

    // Anonymous intent: company-level web traffic.
    scoring
        .record_activity(request_for(
            T,
            sc::RecordActivityRequest {
                activity: Some(activity("intent-1", "web_page_visit", &id, "")),
            },
        ))
        .await
        .expect("intent");
    wait_for(&mut lifecycle, &id, S::Detected).await;

    // Several people engage by email; none alone reaches 100, together they do.
    let batch = vec![
        sc::Activity {
            contact_email: "ann@initech.example".into(),
            account_id: String::new(),
            ..activity("j1", "webinar_attended", "", "")
        },
        sc::Activity {
            contact_email: "ann@initech.example".into(),
            account_id: String::new(),
            ..activity("j2", "case_study_download", "", "")
        },
        sc::Activity {
            contact_email: "bob@initech.example".into(),
            account_id: String::new(),
            ..activity("j3", "pricing_page_visit", "", "")
        },
        sc::Activity {
            contact_email: "cy@initech.example".into(),
            account_id: String::new(),
            ..activity("j4", "webinar_attended", "", "")
        },
    ];
    let recorded = scoring
        .record_activities(request_for(
            T,
            sc::RecordActivitiesRequest { activities: batch },
        ))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(recorded.recorded_count, 4, "{:?}", recorded.results);
    let ann = recorded.results[0].contact_id.clone();
    let bob = recorded.results[2].contact_id.clone();
    let prioritized = wait_for(&mut lifecycle, &id, S::Prioritized).await;
    assert_eq!(prioritized.engagement_score, 110.0);
    let notified = receiver.wait_for(1).await;
    assert!(
        notified[0].body.contains(&id),
        "the owner's notification names the account"
    );

    lifecycle
        .qualify_account(request_for(
            T,
            lc::QualifyAccountRequest {
                account_id: id.clone(),
                reason: "BDR call held".into(),
            },
        ))
        .await
        .expect("qualify");

    // The opportunity through all four steps.
    let opp = opps
        .create_opportunity(request_for(
            T,
            op::CreateOpportunityRequest {
                opportunity: Some(op::Opportunity {
                    account_id: id.clone(),
                    name: "Initech platform".into(),
                    estimated_deal_size: usd(60_000),
                    buying_group_contact_ids: vec![ann.clone(), bob.clone()],
                    ..Default::default()
                }),
                request_id: "journey-opp".into(),
            },
        ))
        .await
        .expect("opportunity")
        .into_inner()
        .opportunity
        .expect("opportunity");
    let oid = opp.opportunity_id.clone();
    wait_for(&mut lifecycle, &id, S::Pipeline).await;
    let update = |fields: op::Opportunity, paths: &'static [&'static str]| {
        let mut opps = opps.clone();
        let oid = oid.clone();
        async move {
            opps.update_opportunity(request_for(
                T,
                op::UpdateOpportunityRequest {
                    opportunity: Some(op::Opportunity {
                        opportunity_id: oid,
                        ..fields
                    }),
                    update_mask: mask(paths),
                },
            ))
            .await
            .expect("update");
        }
    };
    let advance = || {
        let mut opps = opps.clone();
        let oid = oid.clone();
        async move {
            opps.advance_opportunity(request_for(
                T,
                op::AdvanceOpportunityRequest {
                    opportunity_id: oid,
                    to_step: 0,
                },
            ))
            .await
            .expect("advance");
        }
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
    opps.close_opportunity_won(request_for(
        T,
        op::CloseOpportunityWonRequest {
            opportunity_id: oid.clone(),
        },
    ))
    .await
    .expect("won");
    let implement = wait_for(&mut lifecycle, &id, S::Implement).await;
    assert_eq!(implement.customer_type, CustomerType::Customer as i32);
    for contact in [&ann, &bob] {
        for _ in 0..200 {
            if contact_stage(&mut lifecycle, contact).await == C::Customer as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(
            contact_stage(&mut lifecycle, contact).await,
            C::Customer as i32
        );
    }

    for _ in 0..2 {
        lifecycle
            .advance_account(request_for(
                T,
                lc::AdvanceAccountRequest {
                    account_id: id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect("advance");
    }
    let advocate = get_account(&mut lifecycle, &id).await;
    assert_eq!(advocate.stage, S::Advocate as i32);
    let mut reached: Vec<i32> = advocate.stages_reached.iter().map(|s| s.stage).collect();
    reached.sort();
    assert_eq!(
        reached,
        (1..=9).collect::<Vec<_>>(),
        "first-reached date of every stage"
    );

    let history = lifecycle
        .list_account_transitions(request_for(
            T,
            lc::ListAccountTransitionsRequest {
                account_id: id.clone(),
                page_size: 100,
                page_token: String::new(),
            },
        ))
        .await
        .expect("history")
        .into_inner()
        .transitions;
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
    let (mut lifecycle, mut scoring, mut opps) = (
        system.lifecycle(0),
        system.scoring(0),
        system.opportunity(0),
    );
    set_webhook(&mut lifecycle, &receiver.url).await;
    let id = lifecycle
        .create_account(request_for(
            T,
            lc::CreateAccountRequest {
                account: Some(lc::Account {
                    name: "Globex".into(),
                    domain: "globex.example".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .expect("account")
        .into_inner()
        .account
        .expect("account")
        .account_id;
    let email = |event: &str, kind: &str| sc::Activity {
        contact_email: "hank@globex.example".into(),
        account_id: String::new(),
        ..activity(event, kind, "", "")
    };
    scoring
        .record_activity(request_for(
            T,
            sc::RecordActivityRequest {
                activity: Some(email("g1", "demo_request")),
            },
        ))
        .await
        .expect("demo");
    wait_for(&mut lifecycle, &id, S::Prioritized).await;
    receiver.wait_for(1).await;

    lifecycle
        .nurture_account(request_for(
            T,
            lc::NurtureAccountRequest {
                account_id: id.clone(),
                reason: "not this quarter".into(),
            },
        ))
        .await
        .expect("nurture");
    // Re-engagement after Nurture: 100 new points prioritize again.
    scoring
        .record_activity(request_for(
            T,
            sc::RecordActivityRequest {
                activity: Some(email("g2", "demo_request")),
            },
        ))
        .await
        .expect("demo");
    wait_for(&mut lifecycle, &id, S::Prioritized).await;
    receiver.wait_for(2).await;

    lifecycle
        .disqualify_account(request_for(
            T,
            lc::DisqualifyAccountRequest {
                account_id: id.clone(),
                reason: "no budget".into(),
            },
        ))
        .await
        .expect("disqualify");
    let re = get_account(&mut lifecycle, &id).await;
    assert_eq!(
        (re.stage, re.customer_type),
        (S::Detected as i32, CustomerType::ReProspect as i32)
    );
    // A RE_PROSPECT climbing back to PRIORITIZED notifies again.
    scoring
        .record_activity(request_for(
            T,
            sc::RecordActivityRequest {
                activity: Some(email("g3", "demo_request")),
            },
        ))
        .await
        .expect("demo");
    let back = wait_for(&mut lifecycle, &id, S::Prioritized).await;
    assert_eq!(back.customer_type, CustomerType::ReProspect as i32);
    receiver.wait_for(3).await;

    // A lost deal (the only open one) nurtures the account.
    let oid = opps
        .create_opportunity(request_for(
            T,
            op::CreateOpportunityRequest {
                opportunity: Some(op::Opportunity {
                    account_id: id.clone(),
                    name: "Globex deal".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .expect("opportunity")
        .into_inner()
        .opportunity
        .expect("opportunity")
        .opportunity_id;
    wait_for(&mut lifecycle, &id, S::Pipeline).await;
    opps.close_opportunity_lost(request_for(
        T,
        op::CloseOpportunityLostRequest {
            opportunity_id: oid,
            reason: "chose a rival".into(),
        },
    ))
    .await
    .expect("lost");
    let nurtured = wait_for(&mut lifecycle, &id, S::Engaged).await;
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
