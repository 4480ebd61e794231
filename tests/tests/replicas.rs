//! Two instances of each service on one PostgreSQL database, clients spread
//! over both, many concurrent activities and manual actions on the same
//! accounts: the invariants hold at the end. And each replica counts where
//! it answered GetAccount from (its cache or the database).

mod common;

use std::collections::{HashMap, HashSet};

use cascade_proto::lifecycle::v1 as lc;
use cascade_testkit::fixtures::{account, activity};
use cascade_testkit::{TestDatabase, eventually, on_each_database};
use common::{System, Verbatim, metric};

const T: &str = "replicas";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_the_invariants() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let system = System::start(&db, 2).await;
    let lifecycles = [system.lifecycle_as(0, T), system.lifecycle_as(1, T)];
    let scorings = [system.scoring_as(0, T), system.scoring_as(1, T)];

    // 8 accounts with 2 contacts each, created through both replicas.
    let mut accounts = Vec::new();
    for n in 0..8 {
        let lifecycle = &lifecycles[n % 2];
        let id = lifecycle
            .try_create_account(
                account(&format!("acct{n}"), "", ""),
                &format!("replica-{n}"),
            )
            .await
            .expect("account")
            .account_id;
        let mut contacts = Vec::new();
        for c in 0..2 {
            let email = format!("c{c}@acct{n}.example");
            contacts.push(lifecycle.create_contact(&id, &email).await.contact_id);
        }
        accounts.push((id, contacts));
    }

    // Every activity is sent to both scoring replicas; manual actions go to
    // both lifecycle replicas at the same time.
    let mut tasks = Vec::new();
    let mut distinct_points = HashMap::<String, f64>::new();
    for round in 0..12 {
        let kind = if round % 3 == 0 {
            "webinar_attended"
        } else {
            "email_open"
        };
        let batch: Vec<_> = accounts
            .iter()
            .enumerate()
            .map(|(n, (id, contacts))| {
                activity(&format!("r{round}-a{n}"), kind, id, &contacts[round % 2])
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
            let (scoring, batch) = (scoring.clone(), batch.clone());
            tasks.push(tokio::spawn(async move {
                scoring
                    .try_record(batch)
                    .await
                    .map(|_| ())
                    .map_err(|s| s.code())
            }));
        }
        if round % 4 == 3 {
            for (n, (id, _)) in accounts.iter().enumerate() {
                for lifecycle in &lifecycles {
                    let (lifecycle, id) = (lifecycle.clone(), id.clone());
                    tasks.push(tokio::spawn(async move {
                        let result = if n % 2 == 0 {
                            lifecycle
                                .public()
                                .nurture_account(lifecycle.req(lc::NurtureAccountRequest {
                                    account_id: id,
                                    reason: "race".into(),
                                }))
                                .await
                                .map(|_| ())
                        } else {
                            lifecycle
                                .public()
                                .qualify_account(lifecycle.req(lc::QualifyAccountRequest {
                                    account_id: id,
                                    reason: String::new(),
                                }))
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
    for (id, _) in &accounts {
        let score = scorings[0].score(id).await;
        assert_eq!(score.engagement_score, distinct_points[id], "account {id}");
    }

    // Lifecycle: the final totals arrive; the stage is what the history replays to;
    // no event id caused the same move twice.
    let lifecycle = &lifecycles[1];
    let mut transitions = 0;
    for (id, _) in &accounts {
        let what = format!("the final totals of {id} delivered");
        let account = lifecycle
            .wait_for_account(id, &what, |a| a.engagement_score == distinct_points[id])
            .await;
        let history = lifecycle.transitions(id).await;
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

/// `cascade_lifecycle_account_reads_total`: the first read of an account
/// comes from the database, the next ones from the cache.
async fn account_reads_are_counted_by_where_they_were_answered(db: TestDatabase) {
    let env = vec![(
        "CASCADE_LIFECYCLE__TELEMETRY__METRICS_PORT".to_owned(),
        "0".to_owned(),
    )];
    let system = System::start_with(&db, 1, env).await;
    let process = &system.lifecycle[0];
    let metrics = process.metrics_port().await;
    if db.settings.url.starts_with("postgres") {
        // On PostgreSQL the cache answers once the replica listens.
        eventually("lifecycle to listen for account changes", async || {
            let log = process.log_text();
            if log.contains("account cache: listening") {
                Ok(())
            } else {
                Err(Verbatim(log))
            }
        })
        .await;
    }
    let lifecycle = system.lifecycle_as(0, T);
    let id = lifecycle
        .try_create_account(account("Counted", "counted.com", "owner"), "counted")
        .await
        .expect("account")
        .account_id;
    for _ in 0..3 {
        assert_eq!(lifecycle.account(&id).await.name, "Counted");
    }
    let reads = async |from: &str| {
        let label = format!(r#"answered_from="{from}""#);
        metric(metrics, "cascade_lifecycle_account_reads_total", &[&label]).await
    };
    assert_eq!(reads("database").await, Ok(1.0));
    assert_eq!(reads("cache").await, Ok(2.0));
    system.stop().await;
}

on_each_database!(account_reads_are_counted_by_where_they_were_answered);
