//! Real binaries: on SIGTERM while serving requests, health turns
//! NOT_SERVING before the listener closes, requests in the drain window are
//! still answered, and the process exits cleanly within the grace period;
//! health checks are answered while every place for requests is taken; and
//! each runs at the CPU priority its `server.nice` gives it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cascade_chassis::priority::autogroup_nice;
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use cascade_testkit::{TempDir, TestDatabase, eventually, request_for};
use common::Process;
use futures::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Lifecycle started on `db`, with the drain delay and shutdown grace given.
async fn draining_lifecycle(
    db: &TestDatabase,
    dir: &TempDir,
    drain_ms: u64,
    grace_ms: u64,
) -> Process {
    let mut process = Process::new("lifecycle", &db.settings.url, dir.path())
        .with_env(
            "CASCADE_LIFECYCLE__SERVER__DRAIN_DELAY_MS",
            &drain_ms.to_string(),
        )
        .with_env(
            "CASCADE_LIFECYCLE__SERVER__SHUTDOWN_GRACE_MS",
            &grace_ms.to_string(),
        );
    process.start().await;
    process
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_stops_within_the_grace_period() {
    let db = TestDatabase::sqlite();
    let dir = TempDir::new("shutdown");
    let mut process = draining_lifecycle(&db, &dir, 1500, 5000).await;
    let mut lifecycle = LifecycleServiceClient::new(process.channel());
    let mut watch = HealthClient::new(process.channel())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        watch.next().await.expect("status").expect("ok").status,
        ServingStatus::Serving as i32
    );

    // Requests keep coming while the process is told to stop.
    let answered = Arc::new(AtomicUsize::new(0));
    let load = {
        let (mut client, answered) = (lifecycle.clone(), answered.clone());
        tokio::spawn(async move {
            let (mut ok, mut refused) = (0, 0);
            for _ in 0..400 {
                match client
                    .list_accounts(request_for("t", lc::ListAccountsRequest::default()))
                    .await
                {
                    Ok(_) => {
                        ok += 1;
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => refused += 1,
                }
                // Pacing of the load, not a wait.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, refused)
        })
    };
    eventually("the load to be answered", async || {
        match answered.load(Ordering::SeqCst) {
            0 => Err("no call answered yet"),
            _ => Ok(()),
        }
    })
    .await;
    let started = Instant::now();
    process.sigterm();

    let status = tokio::time::timeout(Duration::from_secs(3), watch.next())
        .await
        .expect("status change in time")
        .expect("stream open")
        .expect("ok");
    assert_eq!(
        status.status,
        ServingStatus::NotServing as i32,
        "NOT_SERVING is the next status"
    );
    let not_serving_after = started.elapsed();
    // Still inside the drain window: new calls are answered.
    lifecycle
        .list_accounts(request_for("t", lc::ListAccountsRequest::default()))
        .await
        .expect("answered while draining");
    drop(watch);
    let exit = process.wait_exit(Duration::from_secs(10)).await;
    let stopped_after = started.elapsed();
    assert!(exit.success(), "clean exit: {exit}");
    assert!(
        stopped_after >= Duration::from_millis(1500),
        "the listener stayed open for the drain delay"
    );
    assert!(
        stopped_after < Duration::from_secs(8),
        "stopped within drain + grace: {stopped_after:?}"
    );
    let (ok, refused) = load.await.expect("load");
    assert!(ok > 0);
    println!(
        "shutdown: NOT_SERVING after {not_serving_after:?}, exited after {stopped_after:?}; {ok} calls answered, {refused} refused after the listener closed"
    );
}

/// An open WatchAccountEvents stream ends when the replica stops taking
/// connections, with UNAVAILABLE naming the cursor to resume from: the
/// process exits then, rather than holding the stream (and itself) for
/// the whole shutdown grace, and the watcher reconnects elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_end_when_the_replica_drains() {
    let db = TestDatabase::sqlite();
    let dir = TempDir::new("shutdown-watch");
    let mut process = draining_lifecycle(&db, &dir, 500, 20_000).await;
    let mut lifecycle = LifecycleServiceClient::new(process.channel());
    let mut stream = lifecycle
        .watch_account_events(request_for("t", lc::WatchAccountEventsRequest::default()))
        .await
        .expect("watch")
        .into_inner();
    let started = Instant::now();
    process.sigterm();
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends before the grace")
        .expect("an answer");
    let status = ended.expect_err("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("cursor 0"), "{status:?}");
    let exit = process.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "clean exit: {exit}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "exited without waiting out the 20 s grace: {:?}",
        started.elapsed()
    );
}

/// With every place for requests taken by a call waiting on the database,
/// health checks are still answered at once: a liveness probe stuck behind
/// them would restart a pod that is only busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_answered_while_every_place_is_taken() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let db = TestDatabase::sqlite();
    let dir = TempDir::new("health-limit");
    let mut process = Process::new("lifecycle", &db.settings.url, dir.path())
        .with_env("CASCADE_LIFECYCLE__SERVER__CONCURRENCY_LIMIT", "1");
    process.start().await;
    let lifecycle = LifecycleServiceClient::new(process.channel());
    // Another writer holds the database: a create waits for it (up to
    // SQLite's 10 s busy timeout), in the only place there is.
    let other = sea_orm::Database::connect(db.settings.url.as_str())
        .await
        .expect("connect");
    let holding = other.begin().await.expect("begin");
    holding
        .execute_unprepared("CREATE TABLE held_by_the_test (x INTEGER)")
        .await
        .expect("the write lock");
    let create = {
        let mut client = lifecycle.clone();
        tokio::spawn(async move {
            client
                .create_account(request_for(
                    "t",
                    lc::CreateAccountRequest {
                        account: Some(lc::Account {
                            name: "Waiting".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ))
                .await
        })
    };
    // The place is taken once a read (which the held lock does not stop)
    // waits too.
    eventually("the create to take the only place", async || {
        let mut client = lifecycle.clone();
        let list = client.list_accounts(request_for("t", lc::ListAccountsRequest::default()));
        match tokio::time::timeout(Duration::from_millis(300), list).await {
            Err(_) => Ok(()),
            Ok(answered) => Err(format!("answered: {:?}", answered.map(|_| ()))),
        }
    })
    .await;
    let status = tokio::time::timeout(
        Duration::from_secs(3),
        HealthClient::new(process.channel()).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("health answers while the place is taken")
    .expect("health")
    .into_inner()
    .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    holding.rollback().await.expect("let go");
    create
        .await
        .expect("the create")
        .expect("created once the database is free");
    process.terminate().await;
}

/// Where the kernel groups processes by session (autogroup), a service
/// leading its own session sets its group's nice too: scoring's group at
/// nice 10, lifecycle's left at 0 (a new session's group starts there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_leading_its_session_sets_its_groups_nice() {
    if !cascade_chassis::priority::autogroups_on().unwrap_or(false) {
        // A kernel without autogroup, or with it turned off: the service
        // leaves such groups alone, and there is nothing to check.
        println!("autogroup is not on in this kernel: nothing to check");
        return;
    }
    let dir = TempDir::new("session-nice");
    let (lifecycle_db, scoring_db) = (TestDatabase::sqlite(), TestDatabase::sqlite());
    let mut lifecycle =
        Process::new("lifecycle", &lifecycle_db.settings.url, dir.path()).in_own_session();
    lifecycle.start().await;
    let mut scoring = Process::new("scoring", &scoring_db.settings.url, dir.path())
        .calling(&lifecycle.url())
        .in_own_session();
    scoring.start().await;
    let (lifecycle_pid, scoring_pid) = (
        lifecycle.pid().expect("running"),
        scoring.pid().expect("running"),
    );
    // Each leads a session, so each is a group: not this test's.
    let own_group = std::fs::read_to_string("/proc/self/autogroup").expect("own group");
    for pid in [lifecycle_pid, scoring_pid] {
        assert_ne!(
            std::fs::read_to_string(format!("/proc/{pid}/autogroup")).expect("group"),
            own_group
        );
    }
    assert_eq!(autogroup_nice(lifecycle_pid).expect("lifecycle's group"), 0);
    assert_eq!(autogroup_nice(scoring_pid).expect("scoring's group"), 10);
    scoring.terminate().await;
    lifecycle.terminate().await;
}

/// The nice value of every thread of process `pid`.
fn thread_nices(pid: u32) -> Vec<i32> {
    use cascade_chassis::priority::{thread_ids, thread_nice};
    thread_ids(pid)
        .expect("the process's threads")
        .into_iter()
        .filter_map(|tid| thread_nice(tid).ok())
        .collect()
}

/// Scoring yields a core to the reads of lifecycle on one host: every one
/// of its threads (the runtime's workers included, started before the
/// settings were read) runs at nice 10 or whatever it was started at if
/// higher; lifecycle keeps the priority it was started at; and the setting
/// moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_runs_at_its_nice() {
    let own =
        cascade_chassis::priority::thread_nice(i32::try_from(std::process::id()).expect("pid"))
            .expect("this process's nice");
    let group_before = autogroup_nice(std::process::id()).ok();
    let dir = TempDir::new("nice");
    let (lifecycle_db, scoring_db) = (TestDatabase::sqlite(), TestDatabase::sqlite());
    let mut lifecycle = Process::new("lifecycle", &lifecycle_db.settings.url, dir.path());
    lifecycle.start().await;
    let mut scoring =
        Process::new("scoring", &scoring_db.settings.url, dir.path()).calling(&lifecycle.url());
    scoring.start().await;
    let lifecycle_nices = thread_nices(lifecycle.pid().expect("running"));
    let scoring_nices = thread_nices(scoring.pid().expect("running"));
    // Not leading a session of its own, scoring leaves the group it shares
    // with this test as it was.
    if let Some(before) = group_before {
        assert_eq!(autogroup_nice(std::process::id()).ok(), Some(before));
    }
    assert!(
        scoring_nices.len() > 2,
        "the runtime's threads: {scoring_nices:?}"
    );
    assert!(
        lifecycle_nices.iter().all(|&n| n == own),
        "{lifecycle_nices:?}"
    );
    assert!(
        scoring_nices.iter().all(|&n| n == own.max(10)),
        "{scoring_nices:?}"
    );
    scoring.terminate().await;
    lifecycle.terminate().await;

    let mut set = Process::new("lifecycle", &lifecycle_db.settings.url, dir.path())
        .with_env("CASCADE_LIFECYCLE__SERVER__NICE", "15");
    set.start().await;
    let nices = thread_nices(set.pid().expect("running"));
    assert!(nices.iter().all(|&n| n == own.max(15)), "{nices:?}");
    set.terminate().await;
}
