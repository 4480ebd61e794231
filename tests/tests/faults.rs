//! Faults, counted: lifecycle killed while activities stream in, scoring
//! killed in the middle of a batch, and the database unreachable for a while.
//! Each test prints the counts it checked.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use cascade_proto::common::v1::AccountStage as S;
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::scoring::v1 as sc;
use cascade_testkit::on_each_database;
use cascade_testkit::{TestDatabase, request_for};
use common::{DatabaseProxy, Process, System, TempDir, WebhookReceiver};
use tonic::Code;

const T: &str = "faults";

fn activity(event_id: String, kind: &str, account_id: &str, contact_id: &str) -> sc::Activity {
    sc::Activity {
        event_id,
        activity_type: kind.into(),
        occur_time: Some(cascade_chassis::time::to_timestamp(
            cascade_chassis::time::now(),
        )),
        account_id: account_id.into(),
        contact_id: contact_id.into(),
        contact_email: String::new(),
    }
}

async fn create_account(lifecycle: &mut common_client::Lifecycle, name: &str) -> String {
    lifecycle
        .create_account(request_for(
            T,
            lc::CreateAccountRequest {
                account: Some(lc::Account {
                    name: name.into(),
                    owner_id: "owner".into(),
                    ..Default::default()
                }),
                request_id: format!("fault-{name}"),
            },
        ))
        .await
        .expect("account")
        .into_inner()
        .account
        .expect("account")
        .account_id
}

mod common_client {
    pub type Lifecycle =
        cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient<
            tonic::transport::Channel,
        >;
}

/// Lifecycle is SIGKILLed while activities stream in, then started again:
/// every account ends at the stage its score implies, with exactly the
/// expected transitions and one notification per prioritized account.
async fn lifecycle_killed_while_activities_stream(db: TestDatabase) {
    let mut system = System::start(&db, 1).await;
    let receiver = WebhookReceiver::start().await;
    let mut lifecycle = system.lifecycle(0);
    lifecycle
        .update_lifecycle_settings(request_for(
            T,
            lc::UpdateLifecycleSettingsRequest {
                settings: Some(lc::LifecycleSettings {
                    webhook_url: receiver.url.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["webhook_url".into()],
                }),
            },
        ))
        .await
        .expect("webhook");
    // 12 accounts, one contact each; even accounts get 30 visits (120 points:
    // PRIORITIZED), odd ones 10 (40 points: ENGAGED).
    let mut accounts = Vec::new();
    for n in 0..12 {
        let id = create_account(&mut lifecycle, &format!("acct{n}")).await;
        let contact = lifecycle
            .create_contact(request_for(
                T,
                lc::CreateContactRequest {
                    contact: Some(lc::Contact {
                        account_id: id.clone(),
                        email: format!("p{n}@acct{n}.example"),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                },
            ))
            .await
            .expect("contact")
            .into_inner()
            .contact
            .expect("contact")
            .contact_id;
        accounts.push((id, contact, if n % 2 == 0 { 30 } else { 10 }));
    }
    let mut batches = Vec::new();
    for round in 0..30 {
        let batch: Vec<sc::Activity> = accounts
            .iter()
            .filter(|(_, _, visits)| round < *visits)
            .map(|(id, contact, _)| {
                activity(format!("{id}-{round}"), "web_page_visit", id, contact)
            })
            .collect();
        batches.push(batch);
    }
    let mut scoring = system.scoring(0);
    let mut sent = 0;
    for (round, batch) in batches.into_iter().enumerate() {
        if round == 10 {
            system.lifecycle[0].kill().await;
        }
        if round == 20 {
            system.lifecycle[0].start().await;
        }
        sent += batch.len();
        let response = scoring
            .record_activities(request_for(
                T,
                sc::RecordActivitiesRequest { activities: batch },
            ))
            .await
            .expect("scoring accepts while lifecycle is down");
        assert_eq!(response.into_inner().rejected_count, 0);
    }
    let mut lifecycle = system.lifecycle(0);
    let mut transitions_seen = 0;
    for (id, _, visits) in &accounts {
        let expected = if *visits == 30 {
            S::Prioritized
        } else {
            S::Engaged
        };
        let mut account = None;
        for _ in 0..400 {
            let a = lifecycle
                .get_account(request_for(
                    T,
                    lc::GetAccountRequest {
                        account_id: id.clone(),
                    },
                ))
                .await
                .expect("account")
                .into_inner()
                .account
                .expect("account");
            if a.engagement_score == f64::from(*visits * 4) {
                account = Some(a);
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let account = account.expect("final score delivered");
        assert_eq!(account.stage, expected as i32, "account {id}");
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
        let expected_transitions = if expected == S::Prioritized { 2 } else { 1 };
        assert_eq!(
            history.len(),
            expected_transitions,
            "account {id}: {history:?}"
        );
        transitions_seen += history.len();
    }
    let prioritized = accounts.iter().filter(|a| a.2 == 30).count();
    receiver.wait_for(prioritized).await;
    // Give a duplicate the chance to arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = receiver.accepted();
    let distinct: HashSet<_> = received.iter().map(|r| r.notification_id.clone()).collect();
    assert_eq!(received.len(), prioritized, "no duplicate notification");
    assert_eq!(distinct.len(), prioritized);
    println!(
        "lifecycle SIGKILL: {sent} activities sent, {} accounts at their score's stage, {transitions_seen} transitions (expected {}), {} notifications for {prioritized} prioritized accounts",
        accounts.len(),
        prioritized * 2 + (accounts.len() - prioritized),
        received.len()
    );
    system.stop().await;
}

/// Scoring is SIGKILLed while a batch is being stored: the batch is stored
/// wholly or not at all, and the client's retry counts it exactly once.
async fn scoring_killed_mid_batch(db: TestDatabase) {
    let mut system = System::start(&db, 1).await;
    let mut lifecycle = system.lifecycle(0);
    let id = create_account(&mut lifecycle, "batch").await;
    let batch: Vec<sc::Activity> = (0..1000)
        .map(|i| activity(format!("kill-{i}"), "email_open", &id, ""))
        .collect();
    let mut scoring = system.scoring(0);
    let request = {
        let batch = batch.clone();
        let mut scoring = scoring.clone();
        tokio::spawn(async move {
            scoring
                .record_activities(request_for(
                    T,
                    sc::RecordActivitiesRequest { activities: batch },
                ))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(15)).await;
    system.scoring[0].kill().await;
    let first = request.await.expect("task");
    system.scoring[0].start().await;
    let stored_before = match scoring
        .get_account_score(request_for(
            T,
            sc::GetAccountScoreRequest {
                account_id: id.clone(),
            },
        ))
        .await
    {
        Ok(r) => r.into_inner().score.expect("score").intent_score,
        Err(status) if status.code() == Code::NotFound => 0.0,
        Err(status) => panic!("score read failed: {status:?}"),
    };
    assert!(
        stored_before == 0.0 || stored_before == 2000.0,
        "wholly or not at all: {stored_before}"
    );
    let retry = scoring
        .record_activities(request_for(
            T,
            sc::RecordActivitiesRequest { activities: batch },
        ))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retry.recorded_count + retry.duplicate_count, 1000);
    let after = scoring
        .get_account_score(request_for(
            T,
            sc::GetAccountScoreRequest {
                account_id: id.clone(),
            },
        ))
        .await
        .expect("score")
        .into_inner()
        .score
        .expect("score");
    assert_eq!(after.intent_score, 2000.0, "exactly once");
    println!(
        "scoring SIGKILL mid-batch: first call {}, {} points stored before the retry, retry recorded {} and saw {} duplicates, final intent score {}",
        if first.is_ok() { "answered" } else { "failed" },
        stored_before,
        retry.recorded_count,
        retry.duplicate_count,
        after.intent_score
    );
    system.stop().await;
}

on_each_database!(
    lifecycle_killed_while_activities_stream,
    scoring_killed_mid_batch
);

/// PostgreSQL unreachable for a while (a proxy cut between the three
/// services and the server): requests answer UNAVAILABLE, health turns
/// NOT_SERVING, and every service recovers by itself when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_unavailable_then_recovers() {
    let Some(first) = TestDatabase::postgres().await else {
        return;
    };
    let (Some(second), Some(third)) = (
        TestDatabase::postgres().await,
        TestDatabase::postgres().await,
    ) else {
        return;
    };
    let url = first.settings.url.clone();
    let host_port = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5432")
        .to_owned();
    let upstream: std::net::SocketAddr = tokio::net::lookup_host(host_port.as_str())
        .await
        .expect("resolve database host")
        .next()
        .expect("an address");
    let proxy = DatabaseProxy::start(upstream).await;
    let proxied = |db: &TestDatabase| {
        db.settings
            .url
            .replacen(&host_port, &format!("127.0.0.1:{}", proxy.port), 1)
    };
    let dir = TempDir(
        std::env::temp_dir().join(format!("cascade-outage-{}", cascade_domain::ids::new_id())),
    );
    std::fs::create_dir_all(&dir.0).expect("dir");
    let mut lifecycle_process =
        Process::new("lifecycle", &proxied(&first), "http://127.0.0.1:9", &dir.0);
    lifecycle_process.start().await;
    let lifecycle_url = lifecycle_process.url();
    let mut scoring_process = Process::new("scoring", &proxied(&second), &lifecycle_url, &dir.0);
    let mut opportunity_process =
        Process::new("opportunity", &proxied(&third), &lifecycle_url, &dir.0);
    scoring_process.start().await;
    opportunity_process.start().await;
    let mut lifecycle =
        cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient::new(
            lifecycle_process.channel(),
        );
    let mut scoring = cascade_proto::scoring::v1::scoring_service_client::ScoringServiceClient::new(
        scoring_process.channel(),
    );
    let mut opps =
        cascade_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient::new(
            opportunity_process.channel(),
        );
    let id = create_account(&mut lifecycle, "outage").await;

    // One call per service that needs its database; Err(code) when refused.
    let mut probe = async || -> [Result<(), Code>; 3] {
        [
            lifecycle
                .get_account(request_for(
                    T,
                    lc::GetAccountRequest {
                        account_id: id.clone(),
                    },
                ))
                .await
                .map(|_| ())
                .map_err(|s| s.code()),
            scoring
                .get_scoring_model(request_for(T, sc::GetScoringModelRequest { version: 0 }))
                .await
                .map(|_| ())
                .map_err(|s| s.code()),
            opps.get_opportunity_settings(request_for(
                T,
                cascade_proto::opportunity::v1::GetOpportunitySettingsRequest { version: 0 },
            ))
            .await
            .map(|_| ())
            .map_err(|s| s.code()),
        ]
    };
    assert_eq!(probe().await, [Ok(()), Ok(()), Ok(())]);

    proxy.cut();
    // The proxy notices the cut within 20 ms.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        probe().await,
        [
            Err(Code::Unavailable),
            Err(Code::Unavailable),
            Err(Code::Unavailable)
        ]
    );
    let processes = [&lifecycle_process, &scoring_process, &opportunity_process];
    let mut not_serving = [false; 3];
    for _ in 0..100 {
        for (n, p) in processes.iter().enumerate() {
            not_serving[n] |= !p.serving().await;
        }
        if not_serving.iter().all(|x| *x) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        not_serving, [true; 3],
        "health turned NOT_SERVING on every service"
    );

    proxy.restore();
    let mut recovered = false;
    for _ in 0..100 {
        let mut serving = true;
        for p in processes {
            serving &= p.serving().await;
        }
        if serving && probe().await == [Ok(()), Ok(()), Ok(())] {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "the services recovered without a restart; log:\n{}",
        lifecycle_process.log_text()
    );
    println!(
        "database outage: 3 services answered UNAVAILABLE and turned NOT_SERVING, then recovered without restart"
    );
    opportunity_process.terminate().await;
    scoring_process.terminate().await;
    lifecycle_process.terminate().await;
}
