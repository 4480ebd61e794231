//! Faults, counted: lifecycle killed while activities stream in, scoring
//! killed in the middle of a batch, and the database unreachable for a while.
//! Each test prints the counts it checked.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use cascade_proto::common::v1::AccountStage as S;
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::opportunity::v1 as op;
use cascade_proto::scoring::v1 as sc;
use cascade_testkit::fixtures::{account, activity};
use cascade_testkit::{
    Caller, Lifecycle, Opportunity, Scoring, TempDir, TestDatabase, WebhookReceiver, eventually,
    on_each_database,
};
use common::{DatabaseProxy, Process, System, Verbatim, metric};
use sea_orm::ConnectionTrait;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const T: &str = "faults";

/// Creates an account owned by "owner" (request id `fault-<name>`); its id.
async fn create_account(lifecycle: &Lifecycle, name: &str) -> String {
    lifecycle
        .try_create_account(account(name, "", "owner"), &format!("fault-{name}"))
        .await
        .expect("account")
        .account_id
}

/// Scoring's outbox backlog for deliveries to lifecycle, as its Prometheus
/// endpoint shows it.
async fn scored_backlog(port: u16) -> Result<f64, String> {
    metric(
        port,
        "cascade_outbox_pending",
        &[r#"topic="engagement_scores""#],
    )
    .await
}

/// Scoring's settings for a lifecycle outage: it announces its metrics
/// port, and checks people it knows from what it remembers for as long as
/// its erasure settling lets it.
fn through_an_outage() -> Vec<(String, String)> {
    vec![
        (
            "CASCADE_SCORING__TELEMETRY__METRICS_PORT".to_owned(),
            "0".to_owned(),
        ),
        (
            "CASCADE_SCORING__LIFECYCLE__ERASURE_SETTLE_MS".to_owned(),
            cascade_testkit::SETTLE_THROUGH_AN_OUTAGE_MS.to_string(),
        ),
    ]
}

/// Lifecycle is SIGKILLed while activities stream in, then started again:
/// every account ends at the stage its score implies, with exactly the
/// expected transitions and one notification per prioritized account.
async fn lifecycle_killed_while_activities_stream(db: TestDatabase) {
    let mut system = System::start_with(&db, 1, through_an_outage()).await;
    let metrics = system.scoring[0].metrics_port().await;
    let receiver = WebhookReceiver::start().await;
    // Lifecycle comes back on the port it had: this client keeps working.
    let lifecycle = system.lifecycle_as(0, T);
    lifecycle.set_webhook(&receiver.url, None).await;
    // 12 accounts, one contact each; even accounts get 30 visits (120 points:
    // PRIORITIZED), odd ones 10 (40 points: ENGAGED).
    let mut accounts = Vec::new();
    for n in 0..12 {
        let id = create_account(&lifecycle, &format!("acct{n}")).await;
        let contact = lifecycle
            .create_contact(&id, &format!("p{n}@acct{n}.example"))
            .await
            .contact_id;
        accounts.push((id, contact, if n % 2 == 0 { 30 } else { 10 }));
    }
    let mut batches = Vec::new();
    for round in 0..30 {
        let batch: Vec<sc::Activity> = accounts
            .iter()
            .filter(|(_, _, visits)| round < *visits)
            .map(|(id, contact, _)| {
                activity(&format!("{id}-{round}"), "web_page_visit", id, contact)
            })
            .collect();
        batches.push(batch);
    }
    let scoring = system.scoring_as(0, T);
    let mut sent = 0;
    for (round, batch) in batches.into_iter().enumerate() {
        if round == 10 {
            system.lifecycle[0].kill().await;
        }
        if round == 20 {
            // Scoring's /metrics shows the deliveries piling up meanwhile.
            eventually(
                "the outbox backlog to show on /metrics",
                async || match scored_backlog(metrics).await {
                    Ok(pending) if pending > 0.0 => Ok(pending),
                    other => Err(other),
                },
            )
            .await;
            // ... and why: lifecycle answers nothing, so its calls fail
            // UNAVAILABLE and are retried. (Calls cut by the kill itself
            // fail UNKNOWN, a reset stream; under load those can be all
            // there is at first, so the refused connections are waited for.)
            eventually("deliveries failing UNAVAILABLE", async || {
                match metric(
                    metrics,
                    "cascade_outbox_deliveries_total",
                    &[
                        r#"topic="engagement_scores""#,
                        r#"outcome="failed""#,
                        r#"error_type="UNAVAILABLE""#,
                    ],
                )
                .await
                {
                    Ok(n) if n > 0.0 => Ok(n),
                    other => Err(other),
                }
            })
            .await;
            system.lifecycle[0].start().await;
        }
        sent += batch.len();
        let response = scoring
            .try_record(batch)
            .await
            .expect("scoring accepts while lifecycle is down");
        assert_eq!(response.rejected_count, 0);
    }
    let mut transitions_seen = 0;
    for (id, _, visits) in &accounts {
        let expected = if *visits == 30 {
            S::Prioritized
        } else {
            S::Engaged
        };
        let what = format!("the final score of {id} delivered");
        let account = lifecycle
            .wait_for_account(id, &what, |a| a.engagement_score == f64::from(*visits * 4))
            .await;
        assert_eq!(account.stage, expected as i32, "account {id}");
        let history = lifecycle.transitions(id).await;
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
    // Every outbox drained: a duplicate would have arrived by now.
    system.settled().await;
    eventually(
        "the backlog on /metrics to fall to zero",
        async || match scored_backlog(metrics).await {
            Ok(0.0) => Ok(()),
            other => Err(other),
        },
    )
    .await;
    // The pool's waiting writers and their waits are exported too, and
    // RPC durations fall in buckets of seconds.
    let waiting = metric(
        metrics,
        "cascade_db_pool_connections",
        &[r#"state="waiting""#],
    )
    .await;
    assert!(waiting.is_ok(), "{waiting:?}");
    let waits = metric(metrics, "cascade_db_pool_wait_seconds_count", &[]).await;
    assert!(matches!(waits, Ok(n) if n > 0.0), "{waits:?}");
    let fast = metric(
        metrics,
        "rpc_server_call_duration_seconds_bucket",
        &[r#"rpc_method="RecordActivities""#, r#"le="0.25""#],
    )
    .await;
    assert!(matches!(fast, Ok(n) if n > 0.0), "{fast:?}");
    let received = receiver.accepted();
    let distinct: HashSet<_> = received.iter().map(|r| r.notification_id()).collect();
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
    let id = create_account(&system.lifecycle_as(0, T), "batch").await;
    let batch: Vec<sc::Activity> = (0..1000)
        .map(|i| activity(&format!("kill-{i}"), "email_open", &id, ""))
        .collect();
    // Scoring comes back on the port it had: this client keeps working.
    let scoring = system.scoring_as(0, T);
    let request = {
        let (batch, scoring) = (batch.clone(), scoring.clone());
        tokio::spawn(async move { scoring.try_record(batch).await })
    };
    // Fault timing, not a wait: the kill lands while the batch is stored.
    tokio::time::sleep(Duration::from_millis(15)).await;
    system.scoring[0].kill().await;
    let first = request.await.expect("task");
    system.scoring[0].start().await;
    let stored_before = match scoring.try_score(&id).await {
        Ok(score) => score.intent_score,
        Err(status) if status.code() == Code::NotFound => 0.0,
        Err(status) => panic!("score read failed: {status:?}"),
    };
    assert!(
        stored_before == 0.0 || stored_before == 2000.0,
        "wholly or not at all: {stored_before}"
    );
    let retry = scoring.try_record(batch).await.expect("retry");
    assert_eq!(retry.recorded_count + retry.duplicate_count, 1000);
    let after = scoring.score(&id).await;
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

/// A damaged pending fold (a disk fault, a hand edit) shows on scoring's
/// /metrics, not only in one log line, and the gauge falls back to 0 once an
/// operator deletes the row.
async fn a_damaged_pending_fold_shows_on_metrics(db: TestDatabase) {
    let env = vec![(
        "CASCADE_SCORING__TELEMETRY__METRICS_PORT".to_owned(),
        "0".to_owned(),
    )];
    let system = System::start_with(&db, 1, env).await;
    let metrics = system.scoring[0].metrics_port().await;
    let conn = system.damage_a_pending_fold(T).await;
    let unreadable = async |expected: f64| match metric(
        metrics,
        "cascade_scoring_unreadable_pending_folds",
        &[],
    )
    .await
    {
        Ok(value) if value == expected => Ok(()),
        other => Err(other),
    };
    eventually("the gauge to count the damaged row", async || {
        unreadable(1.0).await
    })
    .await;
    conn.execute_unprepared("DELETE FROM pending_folds")
        .await
        .expect("the operator deletes it");
    eventually("the gauge to fall back to 0", async || {
        unreadable(0.0).await
    })
    .await;
    system.stop().await;
}

on_each_database!(
    lifecycle_killed_while_activities_stream,
    scoring_killed_mid_batch,
    a_damaged_pending_fold_shows_on_metrics,
    a_deal_lost_while_lifecycle_is_down_is_dated_when_it_was_lost,
    a_recycled_account_after_an_outage_counts_only_new_activity,
    a_recycled_account_counts_activity_whose_delivery_was_given_up,
);

/// The recycle tests' threshold: 20 points make an account PRIORITIZED.
async fn prioritize_at_20(lifecycle: &cascade_testkit::Lifecycle) {
    let settings = lc::LifecycleSettings {
        prioritized_threshold: 20.0,
        ..Default::default()
    };
    lifecycle
        .set_settings(settings, &["prioritized_threshold"])
        .await;
}

/// Score deliveries that pile up while lifecycle is down reach it merged
/// into one. A recycled account must count only its new activity as
/// earned: here the rescore after a change of decay, bringing 25 old points
/// back, and a batch of 2 new points arrive together. Read as "there was
/// activity", the 25 points back re-prioritized the account and notified
/// its owner again (a reviewer's finding).
async fn a_recycled_account_after_an_outage_counts_only_new_activity(db: TestDatabase) {
    const T: &str = "merged";
    let mut system = System::start_with(&db, 1, through_an_outage()).await;
    let metrics = system.scoring[0].metrics_port().await;
    let receiver = WebhookReceiver::start().await;
    let (lifecycle, scoring) = (system.lifecycle_as(0, T), system.scoring_as(0, T));
    lifecycle.set_webhook(&receiver.url, None).await;
    prioritize_at_20(&lifecycle).await;
    let decay = async |half_life_days: f64| {
        scoring
            .change_model(|model| model.decay_half_life_days = half_life_days)
            .await
    };
    decay(30.0).await;
    let id = create_account(&lifecycle, "Merged").await;
    let ann = lifecycle
        .create_contact(&id, "ann@merged.example")
        .await
        .contact_id;
    let bob = lifecycle
        .create_contact(&id, "bob@merged.example")
        .await
        .contact_id;
    // A demo 60 days ago, at a half-life of 30: 25 points. Bob's activity
    // of no points makes him known to scoring, which checks him again
    // without lifecycle.
    scoring
        .record(vec![
            sc::Activity {
                occur_time: Some(cascade_testkit::fixtures::days_ago(60)),
                ..activity("m1", "demo_request", &id, &ann)
            },
            activity("m0", "webinar_registered", &id, &bob),
        ])
        .await;
    lifecycle.wait_for_stage(&id, S::Prioritized).await;
    receiver.wait_for(1).await;
    // Its baseline: the score now.
    lifecycle.nurture(&id, "next quarter").await;

    system.lifecycle[0].kill().await;
    let pending = async |want: f64| {
        eventually(
            &format!("{want} score deliveries pending"),
            async || match scored_backlog(metrics).await {
                Ok(pending) if pending == want => Ok(()),
                other => Err(other),
            },
        )
        .await
    };
    // At a half-life of 60 the demo is worth 50: 25 points back, not
    // earned. The rescore writes its own delivery.
    decay(60.0).await;
    pending(1.0).await;
    scoring
        .record(vec![activity("m2", "email_open", &id, &bob)])
        .await;
    pending(2.0).await;

    system.lifecycle[0].start().await;
    let applied = eventually("the merged delivery applied", async || {
        let account = lifecycle.account(&id).await;
        if account.engagement_score == 52.0 {
            Ok(account)
        } else {
            Err(account.engagement_score)
        }
    })
    .await;
    assert_eq!(
        (applied.stage, applied.engagement_since_recycle),
        (S::Engaged as i32, 2.0),
        "only the 2 new points are earned since the Nurture"
    );
    assert_eq!(receiver.accepted().len(), 1, "the owner was told once");
    system.stop().await;
}

/// A batch whose own delivery never reaches lifecycle (dead-lettered after
/// an outage) still counts as earned by a recycled account: each delivery
/// carries scoring's running total of what new activity added, and
/// lifecycle counts its change since the last one it applied. Counted by
/// the batches each delivery names, the lost batch's 2 points read as
/// "coming back" (a known limit of that rule, December 2026).
async fn a_recycled_account_counts_activity_whose_delivery_was_given_up(db: TestDatabase) {
    const T: &str = "given-up";
    let mut settings = through_an_outage();
    // A delivery failing three times is dead-lettered (by default only
    // after 24 h): one failing once or twice and then delivered is not.
    settings.push((
        "CASCADE_SCORING__OUTBOX__MAX_ATTEMPTS".to_owned(),
        "3".to_owned(),
    ));
    let mut system = System::start_with(&db, 1, settings).await;
    let metrics = system.scoring[0].metrics_port().await;
    let (lifecycle, scoring) = (system.lifecycle_as(0, T), system.scoring_as(0, T));
    prioritize_at_20(&lifecycle).await;
    scoring
        .change_model(|model| model.decay_half_life_days = 0.0)
        .await;
    let id = create_account(&lifecycle, "Given up").await;
    let ann = lifecycle
        .create_contact(&id, "ann@given-up.example")
        .await
        .contact_id;
    scoring
        .record(vec![activity("g1", "demo_request", &id, &ann)])
        .await;
    let prioritized = lifecycle.wait_for_stage(&id, S::Prioritized).await;
    // Its baseline: the score now.
    lifecycle.nurture(&id, "next quarter").await;

    system.lifecycle[0].kill().await;
    scoring
        .record(vec![activity("g2", "email_open", &id, &ann)])
        .await;
    eventually("the delivery dead-lettered", async || {
        match metric(
            metrics,
            "cascade_outbox_dead",
            &[r#"topic="engagement_scores""#],
        )
        .await
        {
            Ok(dead) if dead >= 1.0 => Ok(()),
            other => Err(other),
        }
    })
    .await;
    system.lifecycle[0].start().await;
    scoring
        .record(vec![activity("g3", "email_open", &id, &ann)])
        .await;
    let want = prioritized.engagement_score + 4.0;
    let applied = eventually("the next delivery applied", async || {
        let account = lifecycle.account(&id).await;
        if account.engagement_score == want {
            Ok(account)
        } else {
            Err(account.engagement_score)
        }
    })
    .await;
    assert_eq!(
        applied.engagement_since_recycle, 4.0,
        "both email opens are earned since the Nurture, the given-up one too"
    );
    system.stop().await;
}

/// A deal lost while lifecycle is down reaches it later, through
/// opportunity's outbox; the account's move is dated when the deal was
/// lost, not when lifecycle heard of it, so its history, the funnel and
/// `GetAccountStageAt` tell the truth after an outage.
async fn a_deal_lost_while_lifecycle_is_down_is_dated_when_it_was_lost(db: TestDatabase) {
    use cascade_chassis::time::from_timestamp;
    const T: &str = "late-loss";
    let mut system = System::start(&db, 1).await;
    let lifecycle = system.lifecycle_as(0, T);
    let opportunity = system.opportunity_as(0, T);
    let acme = lifecycle
        .create_account_with(account("Acme", "acme-late.example", ""))
        .await;
    let deal = opportunity.create(&acme.account_id, "late").await;
    lifecycle
        .wait_for_stage(&acme.account_id, S::Pipeline)
        .await;

    system.lifecycle[0].kill().await;
    let lost = opportunity
        .try_lose(&deal.opportunity_id, "went quiet")
        .await
        .expect("lost while lifecycle is down");
    let lost_at = from_timestamp(lost.close_time.as_ref().expect("close time")).expect("time");
    // Lifecycle hears of it a while later (the outbox retries).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let back_at = cascade_chassis::time::now();
    system.lifecycle[0].start().await;
    lifecycle.wait_for_stage(&acme.account_id, S::Engaged).await;
    let moved = lifecycle
        .transitions(&acme.account_id)
        .await
        .into_iter()
        .last()
        .expect("the nurture");
    assert_eq!(moved.to_stage, S::Engaged as i32);
    let moved_at = from_timestamp(moved.transition_time.as_ref().expect("time")).expect("time");
    assert!(
        moved_at < back_at && moved_at >= lost_at - chrono::Duration::seconds(1),
        "lost at {lost_at}, lifecycle back at {back_at}, moved at {moved_at}"
    );
    system.stop().await;
}

/// A proxy in front of `db`'s PostgreSQL server, and the `host:port` its
/// URLs name (`through` puts the proxy's in its place).
async fn database_proxy(db: &TestDatabase) -> (DatabaseProxy, String) {
    let host_port = db
        .settings
        .url
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
    (DatabaseProxy::start(upstream).await, host_port)
}

/// `db`'s URL through `proxy`.
fn through(proxy: &DatabaseProxy, host_port: &str, db: &TestDatabase) -> String {
    db.settings
        .url
        .replacen(host_port, &format!("127.0.0.1:{}", proxy.port), 1)
}

/// A service started while its database is unreachable (a pod scheduled
/// during an outage) waits for it, saying so, and serves once it is back,
/// rather than exiting into a restart loop; told to stop while it waits, it
/// stops at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_during_a_database_outage_waits_for_it() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let (proxy, host_port) = database_proxy(&db).await;
    proxy.cut();
    let dir = TempDir::new("start-outage");
    let mut lifecycle = Process::new("lifecycle", &through(&proxy, &host_port, &db), dir.path());
    lifecycle.spawn();
    let waits = |process: &Process| {
        process
            .log_text()
            .lines()
            .filter(|l| l.contains("the database is not reachable yet"))
            .count()
    };
    // Two tries logged: it waits, and goes on trying.
    let waiting_for_it = async |process: &Process| {
        eventually(
            "the service to say it waits for the database",
            async || match waits(process) {
                0 | 1 => Err(Verbatim(process.log_text())),
                _ => Ok(()),
            },
        )
        .await
    };
    waiting_for_it(&lifecycle).await;
    proxy.restore();
    lifecycle.ready().await;
    let client = Lifecycle::new(lifecycle.channel(), Caller::tenant(T));
    create_account(&client, "after-the-outage").await;
    lifecycle.terminate().await;

    // Stopped while it waits: a clean exit, well inside a grace period.
    proxy.cut();
    let dir = TempDir::new("stop-while-waiting");
    let mut waiting = Process::new("lifecycle", &through(&proxy, &host_port, &db), dir.path());
    waiting.spawn();
    waiting_for_it(&waiting).await;
    let started = std::time::Instant::now();
    waiting.terminate().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped at once: {:?}",
        started.elapsed()
    );
}

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
    let (proxy, host_port) = database_proxy(&first).await;
    let proxied = |db: &TestDatabase| through(&proxy, &host_port, db);
    let dir = TempDir::new("outage");
    let mut lifecycle_process = Process::new("lifecycle", &proxied(&first), dir.path());
    lifecycle_process.start().await;
    let lifecycle_url = lifecycle_process.url();
    let mut scoring_process =
        Process::new("scoring", &proxied(&second), dir.path()).calling(&lifecycle_url);
    let mut opportunity_process =
        Process::new("opportunity", &proxied(&third), dir.path()).calling(&lifecycle_url);
    scoring_process.start().await;
    opportunity_process.start().await;
    let lifecycle = Lifecycle::new(lifecycle_process.channel(), Caller::tenant(T));
    let scoring = Scoring::new(scoring_process.channel(), Caller::tenant(T));
    let opportunity = Opportunity::new(opportunity_process.channel(), Caller::tenant(T));
    let id = create_account(&lifecycle, "outage").await;

    // One call per service that needs its database; Err(code) when refused.
    let probe = async || -> [Result<(), Code>; 3] {
        [
            lifecycle.try_account(&id).await.map(|_| ()),
            scoring
                .public()
                .get_scoring_model(scoring.req(sc::GetScoringModelRequest { version: 0 }))
                .await
                .map(|_| ()),
            opportunity
                .public()
                .get_opportunity_settings(
                    opportunity.req(op::GetOpportunitySettingsRequest { version: 0 }),
                )
                .await
                .map(|_| ()),
        ]
        .map(|answer| answer.map_err(|s| s.code()))
    };
    assert_eq!(probe().await, [Ok(()); 3]);

    proxy.cut();
    eventually("every service to answer UNAVAILABLE", async || {
        let answers = probe().await;
        if answers == [Err(Code::Unavailable); 3] {
            Ok(())
        } else {
            Err(answers)
        }
    })
    .await;
    let processes = [&lifecycle_process, &scoring_process, &opportunity_process];
    // The log says which UNAVAILABLE it was: a dependency down, not this
    // replica at its bound (OVERLOADED).
    for p in processes {
        let what = format!("{} to log a failed call with its reason", p.name);
        eventually(&what, async || {
            let log = p.log_text();
            if log
                .lines()
                .any(|l| l.contains("rpc failed") && l.contains("DEPENDENCY_UNAVAILABLE"))
            {
                Ok(())
            } else {
                Err(Verbatim(log))
            }
        })
        .await;
    }
    let mut not_serving = [false; 3];
    eventually("health to turn NOT_SERVING on every service", async || {
        for (n, p) in processes.iter().enumerate() {
            not_serving[n] |= !p.serving().await;
        }
        if not_serving.iter().all(|x| *x) {
            Ok(())
        } else {
            Err(not_serving)
        }
    })
    .await;
    // Liveness does not follow the database: an outage longer than the
    // liveness budget restarts no pod.
    for p in processes {
        assert_eq!(
            p.health(cascade_chassis::server::LIVENESS).await,
            Ok(ServingStatus::Serving),
            "{} is alive while its database is out",
            p.name
        );
    }

    proxy.restore();
    eventually("the services to recover without a restart", async || {
        for p in processes {
            if !p.serving().await {
                return Err(Verbatim(format!(
                    "{} not SERVING; lifecycle's log:\n{}",
                    p.name,
                    lifecycle_process.log_text()
                )));
            }
        }
        match probe().await {
            answers if answers == [Ok(()); 3] => Ok(()),
            answers => Err(Verbatim(format!(
                "{answers:?}; lifecycle's log:\n{}",
                lifecycle_process.log_text()
            ))),
        }
    })
    .await;
    println!(
        "database outage: 3 services answered UNAVAILABLE and turned NOT_SERVING, then recovered without restart"
    );
    opportunity_process.terminate().await;
    scoring_process.terminate().await;
    lifecycle_process.terminate().await;
}
