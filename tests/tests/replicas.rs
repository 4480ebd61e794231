//! Two instances of each service on one PostgreSQL database, clients spread
//! over both, many concurrent activities and manual actions on the same
//! accounts: the invariants hold at the end.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::scoring::v1 as sc;
use cascade_testkit::{TestDatabase, request_for};
use common::System;

const T: &str = "replicas";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_the_invariants() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let system = System::start(&db, 2).await;
    let lifecycles = [system.lifecycle(0), system.lifecycle(1)];
    let scorings = [system.scoring(0), system.scoring(1)];

    // 8 accounts with 2 contacts each, created through both replicas.
    let mut accounts = Vec::new();
    for n in 0..8 {
        let mut lifecycle = lifecycles[n % 2].clone();
        let id = lifecycle
            .create_account(request_for(
                T,
                lc::CreateAccountRequest {
                    account: Some(lc::Account {
                        name: format!("acct{n}"),
                        ..Default::default()
                    }),
                    request_id: format!("replica-{n}"),
                },
            ))
            .await
            .expect("account")
            .into_inner()
            .account
            .expect("account")
            .account_id;
        let mut contacts = Vec::new();
        for c in 0..2 {
            let contact = lifecycle
                .create_contact(request_for(
                    T,
                    lc::CreateContactRequest {
                        contact: Some(lc::Contact {
                            account_id: id.clone(),
                            email: format!("c{c}@acct{n}.example"),
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
            contacts.push(contact);
        }
        accounts.push((id, contacts));
    }

    // Every activity is sent to both scoring replicas; manual actions go to
    // both lifecycle replicas at the same time.
    let mut tasks = Vec::new();
    let mut distinct_points = HashMap::<String, f64>::new();
    for round in 0..12 {
        let batch: Vec<sc::Activity> = accounts
            .iter()
            .enumerate()
            .map(|(n, (id, contacts))| sc::Activity {
                event_id: format!("r{round}-a{n}"),
                activity_type: if round % 3 == 0 {
                    "webinar_attended".into()
                } else {
                    "email_open".into()
                },
                occur_time: Some(cascade_chassis::time::to_timestamp(
                    cascade_chassis::time::now(),
                )),
                account_id: id.clone(),
                contact_id: contacts[round % 2].clone(),
                contact_email: String::new(),
            })
            .collect();
        for a in &batch {
            *distinct_points.entry(a.account_id.clone()).or_default() +=
                if a.activity_type == "webinar_attended" {
                    25.0
                } else {
                    2.0
                };
        }
        for scoring in &scorings {
            let (mut scoring, batch) = (scoring.clone(), batch.clone());
            tasks.push(tokio::spawn(async move {
                scoring
                    .record_activities(request_for(
                        T,
                        sc::RecordActivitiesRequest { activities: batch },
                    ))
                    .await
                    .map(|_| ())
                    .map_err(|s| s.code())
            }));
        }
        if round % 4 == 3 {
            for (n, (id, _)) in accounts.iter().enumerate() {
                for lifecycle in &lifecycles {
                    let (mut lifecycle, id) = (lifecycle.clone(), id.clone());
                    tasks.push(tokio::spawn(async move {
                        let result = if n % 2 == 0 {
                            lifecycle
                                .nurture_account(request_for(
                                    T,
                                    lc::NurtureAccountRequest {
                                        account_id: id,
                                        reason: "race".into(),
                                    },
                                ))
                                .await
                                .map(|_| ())
                        } else {
                            lifecycle
                                .qualify_account(request_for(
                                    T,
                                    lc::QualifyAccountRequest {
                                        account_id: id,
                                        reason: String::new(),
                                    },
                                ))
                                .await
                                .map(|_| ())
                        };
                        // Refusals are expected: only one of two racing actions can apply.
                        result.or_else(|s| {
                            if s.code() == tonic::Code::FailedPrecondition {
                                Ok(())
                            } else {
                                Err(s.code())
                            }
                        })
                    }));
                }
            }
        }
    }
    let mut failures = Vec::new();
    for task in tasks {
        if let Err(code) = task.await.expect("task") {
            failures.push(code);
        }
    }
    assert!(failures.is_empty(), "calls failed: {failures:?}");

    // Scores: each activity counted once, on both replicas.
    let mut scoring = scorings[0].clone();
    for (id, _) in &accounts {
        let score = scoring
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
        assert_eq!(score.engagement_score, distinct_points[id], "account {id}");
    }

    // Lifecycle: the final totals arrive; the stage is what the history replays to;
    // no event id caused the same move twice.
    let mut lifecycle = lifecycles[1].clone();
    let mut transitions = 0;
    for (id, _) in &accounts {
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
            if a.engagement_score == distinct_points[id] {
                account = Some(a);
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let account = account.expect("final totals delivered");
        let history = lifecycle
            .list_account_transitions(request_for(
                T,
                lc::ListAccountTransitionsRequest {
                    account_id: id.clone(),
                    page_size: 500,
                    page_token: String::new(),
                },
            ))
            .await
            .expect("history")
            .into_inner()
            .transitions;
        let replayed = history.last().map_or(1, |t| t.to_stage);
        assert_eq!(
            account.stage, replayed,
            "account {id}: stage matches its history"
        );
        for pair in history.windows(2) {
            assert_eq!(
                pair[0].to_stage, pair[1].from_stage,
                "account {id}: history chains"
            );
        }
        let mut seen = HashSet::new();
        for t in history.iter().filter(|t| !t.event_id.is_empty()) {
            assert!(
                seen.insert((t.event_id.clone(), t.from_stage, t.to_stage)),
                "event {} applied twice",
                t.event_id
            );
        }
        transitions += history.len();
    }
    println!(
        "replicas: 2 x 3 services, {} accounts, {} distinct activities each sent to both scoring replicas, {transitions} transitions, invariants hold",
        accounts.len(),
        12 * accounts.len()
    );
    system.stop().await;
}
