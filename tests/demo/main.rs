//! `make demo`: plays the source documents' story against the services
//! started by `make run`, through their public gRPC APIs, and prints each
//! step as it happens.

use std::time::Duration;

use cascade_proto::common::v1::{AccountStage, Date, Money};
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use cascade_proto::opportunity::v1 as op;
use cascade_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use cascade_proto::scoring::v1 as sc;
use cascade_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn endpoint(var: &str, default: &str) -> Result<Channel> {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    Ok(Endpoint::from_shared(url)?.connect_lazy())
}

/// Each run uses its own tenant, so the demo can be replayed on the same data.
fn request<T>(tenant: &str, actor: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-tenant-id", tenant.parse().expect("ascii"));
    request
        .metadata_mut()
        .insert("x-actor-id", actor.parse().expect("ascii"));
    request
}

fn stage(n: i32) -> String {
    AccountStage::try_from(n)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("ACCOUNT_STAGE_")
                .to_owned()
        })
        .unwrap_or_else(|_| n.to_string())
}

fn usd(units: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        units,
        nanos: 0,
    })
}

fn now() -> prost_types::Timestamp {
    cascade_chassis::time::to_timestamp(cascade_chassis::time::now())
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

async fn pause() {
    tokio::time::sleep(Duration::from_millis(400)).await;
}

#[tokio::main]
async fn main() -> Result<()> {
    let tenant = format!("demo-{}", cascade_chassis::time::now().timestamp());
    let mut lifecycle = LifecycleServiceClient::new(endpoint(
        "CASCADE_DEMO_LIFECYCLE",
        "http://127.0.0.1:50051",
    )?);
    let mut scoring =
        ScoringServiceClient::new(endpoint("CASCADE_DEMO_SCORING", "http://127.0.0.1:50052")?);
    let mut opps = OpportunityServiceClient::new(endpoint(
        "CASCADE_DEMO_OPPORTUNITY",
        "http://127.0.0.1:50053",
    )?);
    println!("Cascade demo (tenant {tenant}); start the services with `make run` first.\n");

    // Watch transitions and notifications as they happen.
    let mut events = lifecycle
        .watch_account_events(request(
            &tenant,
            "demo",
            lc::WatchAccountEventsRequest::default(),
        ))
        .await
        .map_err(|e| {
            format!(
                "cannot reach lifecycle on :50051 ({}); is `make run` running?",
                e.message()
            )
        })?
        .into_inner();
    tokio::spawn(async move {
        while let Some(Ok(event)) = events.next().await {
            match event.event {
                Some(lc::watch_account_events_response::Event::Transition(t)) => println!(
                    "    ↳ stage {} → {} (cause {}, by {})",
                    stage(t.from_stage),
                    stage(t.to_stage),
                    lc::TransitionCause::try_from(t.cause)
                        .map(|c| c
                            .as_str_name()
                            .trim_start_matches("TRANSITION_CAUSE_")
                            .to_owned())
                        .unwrap_or_default(),
                    t.actor
                ),
                Some(lc::watch_account_events_response::Event::Notification(n)) => {
                    println!("    🔔 notification for {}: {}", n.owner_id, n.text)
                }
                None => {}
            }
        }
    });

    println!("1. A target account: Initech (owner peter@seller.example)");
    let account = lifecycle
        .create_account(request(
            &tenant,
            "marketing",
            lc::CreateAccountRequest {
                account: Some(lc::Account {
                    name: "Initech".into(),
                    domain: "initech.example".into(),
                    owner_id: "peter@seller.example".into(),
                    ..Default::default()
                }),
                request_id: "demo-initech".into(),
            },
        ))
        .await?
        .into_inner()
        .account
        .ok_or("no account")?;
    let id = account.account_id.clone();
    println!("   stage {}", stage(account.stage));
    pause().await;

    println!("2. Anonymous buying signal: company-level web traffic");
    scoring
        .record_activity(request(
            &tenant,
            "marketing-automation",
            sc::RecordActivityRequest {
                activity: Some(sc::Activity {
                    event_id: "demo-intent".into(),
                    activity_type: "web_page_visit".into(),
                    occur_time: Some(now()),
                    account_id: id.clone(),
                    ..Default::default()
                }),
            },
        ))
        .await?;
    pause().await;

    println!("3. People at Initech engage; their points add up on the account");
    let steps = [
        ("ann@initech.example", "webinar_attended"),
        ("ann@initech.example", "case_study_download"),
        ("bob@initech.example", "email_open"),
        ("bob@initech.example", "pricing_page_visit"),
        ("cy@initech.example", "webinar_attended"),
    ];
    let mut contacts = Vec::new();
    for (n, (email, kind)) in steps.iter().enumerate() {
        let result = scoring
            .record_activity(request(
                &tenant,
                "marketing-automation",
                sc::RecordActivityRequest {
                    activity: Some(sc::Activity {
                        event_id: format!("demo-{n}"),
                        activity_type: (*kind).into(),
                        occur_time: Some(now()),
                        contact_email: (*email).into(),
                        ..Default::default()
                    }),
                },
            ))
            .await?
            .into_inner()
            .result
            .ok_or("no result")?;
        if !contacts.contains(&result.contact_id) {
            contacts.push(result.contact_id.clone());
        }
        let score = scoring
            .get_account_score(request(
                &tenant,
                "demo",
                sc::GetAccountScoreRequest {
                    account_id: id.clone(),
                },
            ))
            .await?
            .into_inner()
            .score
            .ok_or("no score")?;
        println!(
            "   {email} {kind} +{} → account score {} (average {:.1} over {} contacts)",
            result.points,
            score.engagement_score,
            score.average_engagement_score,
            score.engaged_contact_count
        );
        pause().await;
    }

    println!("4. Business development qualifies the account");
    lifecycle
        .qualify_account(request(
            &tenant,
            "bdr@seller.example",
            lc::QualifyAccountRequest {
                account_id: id.clone(),
                reason: "budget and timeline confirmed".into(),
            },
        ))
        .await?;
    pause().await;

    println!("5. Sales opens an opportunity");
    let opportunity = opps
        .create_opportunity(request(
            &tenant,
            "peter@seller.example",
            op::CreateOpportunityRequest {
                opportunity: Some(op::Opportunity {
                    account_id: id.clone(),
                    name: "Initech platform".into(),
                    owner_id: "peter@seller.example".into(),
                    buying_group_contact_ids: contacts.clone(),
                    ..Default::default()
                }),
                request_id: "demo-opportunity".into(),
            },
        ))
        .await?
        .into_inner()
        .opportunity
        .ok_or("no opportunity")?;
    let oid = opportunity.opportunity_id.clone();
    pause().await;
    let advance = |opps: &mut OpportunityServiceClient<Channel>| {
        let (tenant, oid) = (tenant.clone(), oid.clone());
        let mut opps = opps.clone();
        async move {
            opps.advance_opportunity(request(
                &tenant,
                "peter@seller.example",
                op::AdvanceOpportunityRequest {
                    opportunity_id: oid,
                    to_step: 0,
                },
            ))
            .await
        }
    };
    match advance(&mut opps).await {
        Err(status) => {
            let missing: Vec<String> = status
                .get_details_precondition_failure()
                .map(|f| f.violations.into_iter().map(|v| v.subject).collect())
                .unwrap_or_default();
            println!(
                "   advance refused ({:?}): missing {}",
                status.code(),
                missing.join(", ")
            );
        }
        Ok(_) => println!("   (unexpected: advanced without an estimate)"),
    }
    let updater = opps.clone();
    let update = |fields: op::Opportunity, paths: &'static [&'static str]| {
        let (tenant, oid) = (tenant.clone(), oid.clone());
        let mut opps = updater.clone();
        async move {
            opps.update_opportunity(request(
                &tenant,
                "peter@seller.example",
                op::UpdateOpportunityRequest {
                    opportunity: Some(op::Opportunity {
                        opportunity_id: oid,
                        ..fields
                    }),
                    update_mask: mask(paths),
                },
            ))
            .await
        }
    };
    update(
        op::Opportunity {
            estimated_deal_size: usd(60_000),
            ..Default::default()
        },
        &["estimated_deal_size"],
    )
    .await?;
    advance(&mut opps).await?;
    println!("   DISCOVER done (estimate 60,000 USD) → QUALIFY");
    update(
        op::Opportunity {
            close_date: Some(Date {
                year: 2027,
                month: 6,
                day: 30,
            }),
            amount: usd(60_000),
            current_situation: "pipeline in spreadsheets".into(),
            needs: "one view of every account".into(),
            ..Default::default()
        },
        &["close_date", "amount", "current_situation", "needs"],
    )
    .await?;
    advance(&mut opps).await?;
    println!("   QUALIFY done (close date, amount, situation, needs, buying group) → PROPOSE");
    update(
        op::Opportunity {
            line_items: vec![op::LineItem {
                product: "Cascade platform".into(),
                kind: 1,
                quantity: 1,
                unit_price: usd(60_000),
                end_date: None,
            }],
            new_reality: "every account in one lifecycle".into(),
            ..Default::default()
        },
        &["line_items", "new_reality"],
    )
    .await?;
    advance(&mut opps).await?;
    println!("   PROPOSE done (line items, new reality) → WIN");
    update(
        op::Opportunity {
            contract: Some(op::Contract {
                document_ref: "dms://contracts/initech".into(),
                signed: true,
                sign_time: None,
                end_date: None,
            }),
            ..Default::default()
        },
        &["contract"],
    )
    .await?;
    opps.close_opportunity_won(request(
        &tenant,
        "peter@seller.example",
        op::CloseOpportunityWonRequest {
            opportunity_id: oid.clone(),
        },
    ))
    .await?;
    println!("6. Contract signed; the opportunity is won");
    for _ in 0..40 {
        let a = lifecycle
            .get_account(request(
                &tenant,
                "demo",
                lc::GetAccountRequest {
                    account_id: id.clone(),
                },
            ))
            .await?
            .into_inner();
        if a.account
            .as_ref()
            .is_some_and(|a| a.stage == AccountStage::Implement as i32)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pause().await;

    println!("7. Onboarding goes well: the customer expands and becomes an advocate");
    for _ in 0..2 {
        lifecycle
            .advance_account(request(
                &tenant,
                "csm@seller.example",
                lc::AdvanceAccountRequest {
                    account_id: id.clone(),
                    ..Default::default()
                },
            ))
            .await?;
        pause().await;
    }

    println!("8. The funnel for today");
    let day = cascade_chassis::time::now();
    let report = lifecycle
        .get_funnel_report(request(
            &tenant,
            "dashboard",
            lc::GetFunnelReportRequest {
                start_time: Some(cascade_chassis::time::to_timestamp(
                    day - chrono::Duration::hours(1),
                )),
                end_time: Some(cascade_chassis::time::to_timestamp(
                    day + chrono::Duration::hours(1),
                )),
            },
        ))
        .await?
        .into_inner();
    println!(
        "   {:<12} {:>7} {:>8} {:>5} {:>7} {:>11}",
        "stage", "entered", "forward", "back", "stayed", "conversion"
    );
    for s in report.stages {
        println!(
            "   {:<12} {:>7} {:>8} {:>5} {:>7} {:>10.0}%",
            stage(s.stage),
            s.entered,
            s.moved_forward,
            s.moved_back,
            s.stayed,
            s.conversion_rate * 100.0
        );
    }
    println!(
        "   QUALIFIED → PIPELINE: {:.0}%",
        report.qualified_to_pipeline_rate * 100.0
    );
    println!("\nDone. Explore with grpcurl: -H 'x-tenant-id: {tenant}' (see README).");
    Ok(())
}
