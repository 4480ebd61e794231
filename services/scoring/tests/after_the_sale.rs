//! After the sale (issue 19), scoring's part, over real gRPC with a real
//! lifecycle on SQLite and PostgreSQL: decayed scores reach lifecycle
//! without new activity, and a contact no longer at the company stops
//! counting toward its account (and counts again when reactivated).

use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::scoring::v1 as pb;
use cascade_scoring::storage::{NewActivity, Refreshed, Repository, today};
use cascade_testkit::fixtures::{activity, by_email, days_ago, precondition_subjects};
use cascade_testkit::{
    Caller, Lifecycle, Scoring, Service, TENANT, TestDatabase, TestServer, TestSystem, eventually,
    on_each_database,
};
use tonic::Code;

/// Who the accounts belong to on the seller's side.
const OWNER: &str = "owner@seller.example";

/// Waits until lifecycle shows the account with these scores.
async fn wait_for_scores(lifecycle: &Lifecycle, account_id: &str, engagement: f64, average: f64) {
    let what = format!("lifecycle to show scores ({engagement}, {average})");
    lifecycle
        .wait_for_account(account_id, &what, |a| {
            (a.engagement_score, a.average_engagement_score) == (engagement, average)
        })
        .await;
}

/// Waits until scoring's GetAccountScore shows (engagement, engaged contacts).
async fn wait_for_score(scoring: &Scoring, account_id: &str, engagement: f64, engaged: i32) {
    let what = format!("scoring to show ({engagement}, {engaged} engaged)");
    eventually(&what, async || {
        let score = scoring
            .try_score(account_id)
            .await
            .map_err(|s| format!("{s:?}"))?;
        if (score.engagement_score, score.engaged_contact_count) == (engagement, engaged) {
            Ok(())
        } else {
            Err(format!("{score:?}"))
        }
    })
    .await;
}

async fn repository_on(db: &TestDatabase) -> Repository {
    let conn = cascade_chassis::db::connect(&db.settings)
        .await
        .expect("the scoring database");
    Repository::new(conn)
}

/// A customer that goes dark: with a decaying model, the refresh recomputes
/// the stored scores for a later day and lifecycle receives the lower
/// totals (account and contacts), once per day; a tenant without decay is
/// left alone.
async fn decayed_scores_reach_lifecycle_without_new_activity(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    scoring
        .change_model(|model| model.decay_half_life_days = 10.0)
        .await;
    let id = lifecycle.create_account("Dark", OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@dark.example")
        .await
        .contact_id;
    let bob = lifecycle
        .create_contact(&id, "bob@dark.example")
        .await
        .contact_id;
    scoring
        .record(vec![
            activity("d1", "demo_request", &id, &ann),
            activity("d2", "webinar_attended", &id, &bob),
        ])
        .await;
    wait_for_scores(&lifecycle, &id, 125.0, 62.5).await;

    // Another tenant, without decay: its scores are never refreshed.
    let (plain_lifecycle, plain_scoring) =
        (lifecycle.as_tenant("plain"), scoring.as_tenant("plain"));
    let plain = plain_lifecycle
        .create_account("Plain", OWNER)
        .await
        .account_id;
    let cy = plain_lifecycle
        .create_contact(&plain, "cy@plain.example")
        .await
        .contact_id;
    plain_scoring
        .record(vec![activity("p1", "demo_request", &plain, &cy)])
        .await;
    wait_for_scores(&plain_lifecycle, &plain, 100.0, 100.0).await;

    let repository = repository_on(&db).await;
    // Today: the stored scores are of today already.
    assert_eq!(
        repository
            .refresh_decayed_scores(today())
            .await
            .expect("refresh"),
        Refreshed::default()
    );
    // Ten days on, one half-life: half of everything.
    let refreshed = repository
        .refresh_decayed_scores(today() + 10)
        .await
        .expect("refresh");
    assert_eq!(
        refreshed,
        Refreshed {
            accounts: 1,
            delivered: 1
        }
    );
    wait_for_scores(&lifecycle, &id, 62.5, 31.25).await;
    for (contact, score) in [(&ann, 50.0), (&bob, 12.5)] {
        let what = format!("lifecycle to show contact {contact} at {score}");
        eventually(&what, async || {
            let contact = lifecycle.contact(contact).await;
            if contact.engagement_score == score {
                Ok(())
            } else {
                Err(contact.engagement_score)
            }
        })
        .await;
    }
    // The same day again: nothing to do.
    assert_eq!(
        repository
            .refresh_decayed_scores(today() + 10)
            .await
            .expect("refresh"),
        Refreshed::default()
    );
    // Another half-life.
    repository
        .refresh_decayed_scores(today() + 20)
        .await
        .expect("refresh");
    wait_for_scores(&lifecycle, &id, 31.25, 15.625).await;
    system.settled().await;
    assert_eq!(
        plain_lifecycle.account(&plain).await.engagement_score,
        100.0
    );
    system.stop().await;
}

/// The refresh runs by itself every `decay.refresh_interval_ms`: scores
/// stored without decay and marked stale by a change to a decaying model
/// are recomputed and delivered without any new activity.
async fn the_refresh_runs_in_the_background(db: TestDatabase) {
    let lifecycle_db = db.like().await;
    let system = TestSystem::lifecycle_on(&lifecycle_db).await;
    let mut settings = cascade_scoring::Settings::for_tests(db.settings.clone());
    settings.own.lifecycle.url = system.url(Service::Lifecycle);
    settings.own.decay.refresh_interval_ms = 50;
    let server = TestServer::start(
        cascade_scoring::build(&settings)
            .await
            .expect("scoring builds"),
    );
    let (lifecycle, scoring) = (
        system.lifecycle(),
        Scoring::new(server.channel(), Caller::tenant(TENANT)),
    );
    let id = lifecycle.create_account("Cooling", OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@cooling.example")
        .await
        .contact_id;
    let mut old_demo = activity("c1", "demo_request", &id, &ann);
    old_demo.occur_time = Some(days_ago(14));
    scoring.record(vec![old_demo]).await;
    wait_for_scores(&lifecycle, &id, 100.0, 100.0).await;
    // Fourteen days at a half-life of seven: a quarter.
    scoring
        .change_model(|model| model.decay_half_life_days = 7.0)
        .await;
    wait_for_scores(&lifecycle, &id, 25.0, 25.0).await;
    assert_eq!(scoring.score(&id).await.engagement_score, 25.0);
    server.stop().await;
    system.stop().await;
}

/// Deactivates (or reactivates) a contact through lifecycle's public API.
async fn set_inactive(lifecycle: &Lifecycle, contact_id: &str, inactive: bool) -> lc::Contact {
    let contact = if inactive {
        lifecycle
            .public()
            .deactivate_contact(lifecycle.req(lc::DeactivateContactRequest {
                contact_id: contact_id.to_owned(),
                reason: "left the company".into(),
            }))
            .await
            .expect("DeactivateContact")
            .into_inner()
            .contact
    } else {
        lifecycle
            .public()
            .reactivate_contact(lifecycle.req(lc::ReactivateContactRequest {
                contact_id: contact_id.to_owned(),
            }))
            .await
            .expect("ReactivateContact")
            .into_inner()
            .contact
    };
    let contact = contact.expect("the contact");
    assert_eq!(contact.inactive, inactive);
    contact
}

/// A person who left: their engagement stops counting toward the account in
/// scoring and lifecycle (history is kept), their new activities are refused
/// naming the field that named them, and reactivating them counts it again.
async fn an_inactive_contact_stops_counting(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle
        .create_account_with(cascade_testkit::fixtures::account(
            "Leavers",
            "leavers.example",
            OWNER,
        ))
        .await
        .account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@leavers.example")
        .await
        .contact_id;
    let bob = lifecycle
        .create_contact(&id, "bob@leavers.example")
        .await
        .contact_id;
    scoring
        .record(vec![
            activity("a1", "demo_request", &id, &ann),
            activity("b1", "webinar_attended", &id, &bob),
        ])
        .await;
    wait_for_scores(&lifecycle, &id, 125.0, 62.5).await;

    set_inactive(&lifecycle, &ann, true).await;
    // Within the poll interval: bob's engagement alone.
    wait_for_score(&scoring, &id, 25.0, 1).await;
    wait_for_scores(&lifecycle, &id, 25.0, 25.0).await;

    // Her new activities are refused, by id or by email, and nothing of them
    // is stored.
    let response = scoring
        .record(vec![
            activity("a2", "email_open", &id, &ann),
            by_email("a3", "email_open", "ann@leavers.example"),
            activity("b2", "email_open", &id, &bob),
        ])
        .await;
    let outcome: Vec<(i32, String)> = response
        .results
        .iter()
        .map(|r| {
            (
                r.status,
                r.violations
                    .first()
                    .map(|v| v.field.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    let (recorded, rejected) = (
        pb::ActivityStatus::Recorded as i32,
        pb::ActivityStatus::Rejected as i32,
    );
    assert_eq!(
        outcome,
        [
            (rejected, "activities[0].contact_id".to_owned()),
            (rejected, "activities[1].contact_email".to_owned()),
            (recorded, String::new()),
        ]
    );
    assert!(
        response.results[0].violations[0]
            .description
            .contains("no longer at the company"),
        "{:?}",
        response.results[0]
    );
    let alone = scoring
        .public()
        .record_activity(scoring.req(pb::RecordActivityRequest {
            activity: Some(activity("a4", "email_open", &id, &ann)),
        }))
        .await
        .expect_err("an inactive contact's activity");
    assert_eq!(alone.code(), Code::FailedPrecondition, "{alone:?}");
    assert_eq!(precondition_subjects(&alone), ["activity.contact_id"]);
    wait_for_score(&scoring, &id, 27.0, 1).await;
    wait_for_scores(&lifecycle, &id, 27.0, 27.0).await;

    // Activities of hers checked just before the change (or by a replica
    // that has not heard of it yet) are stored, but do not count either:
    // the first batch after the change recomputes the account anyway, a
    // later one must see that she is inactive.
    let tenant = cascade_chassis::TenantId::parse(TENANT).expect("tenant");
    let repository = repository_on(&db).await;
    for (event_id, activity_type) in [("a-late", "pricing_page_visit"), ("a-later", "email_open")] {
        repository
            .record(
                &tenant,
                vec![NewActivity {
                    event_id: event_id.into(),
                    activity_type: activity_type.into(),
                    occurred_at_ms: cascade_chassis::time::now().timestamp_millis(),
                    account_id: id.clone(),
                    contact_id: Some(ann.clone()),
                }],
            )
            .await
            .expect("recorded");
    }
    // That replica's folder, which this stand-in does not run.
    repository.fold_pending().await.expect("folded");
    wait_for_score(&scoring, &id, 27.0, 1).await;
    system.settled().await;
    wait_for_scores(&lifecycle, &id, 27.0, 27.0).await;

    // The reads agree: the ledger lists what makes up the score (her lines
    // are kept, but left out), the top list ranks by it, and her own score
    // is still hers.
    let explained = scoring
        .public()
        .explain_account_score(scoring.req(pb::ExplainAccountScoreRequest {
            account_id: id.clone(),
            page_size: 100,
            page_token: String::new(),
        }))
        .await
        .expect("ledger")
        .into_inner();
    let events: Vec<&str> = explained
        .entries
        .iter()
        .map(|e| e.event_id.as_str())
        .collect();
    assert_eq!(events, ["b1", "b2"]);
    assert_eq!(explained.score.expect("score").engagement_score, 27.0);
    let top = scoring
        .public()
        .list_top_accounts(scoring.req(pb::ListTopAccountsRequest {
            page_size: 10,
            page_token: String::new(),
        }))
        .await
        .expect("top accounts")
        .into_inner()
        .accounts;
    assert_eq!(top[0].engagement_score, 27.0);
    let hers = scoring
        .public()
        .get_contact_score(scoring.req(pb::GetContactScoreRequest {
            contact_id: ann.clone(),
        }))
        .await
        .expect("her score")
        .into_inner()
        .score
        .expect("score");
    assert_eq!(hers.engagement_score, 152.0);

    // Back at the company: her past engagement counts again (the late
    // ones' too), and so do her new activities.
    set_inactive(&lifecycle, &ann, false).await;
    wait_for_score(&scoring, &id, 179.0, 2).await;
    wait_for_scores(&lifecycle, &id, 179.0, 89.5).await;
    let again = scoring
        .record(vec![activity("a5", "email_open", &id, &ann)])
        .await;
    assert_eq!(again.recorded_count, 1, "{again:?}");
    wait_for_score(&scoring, &id, 181.0, 2).await;
    wait_for_scores(&lifecycle, &id, 181.0, 90.5).await;
    system.stop().await;
}

/// Two replicas: whichever applies the change, the other one, which
/// remembered the contact as active, refuses her activities soon after, and
/// whatever it accepted before does not count while she is inactive.
async fn every_replica_hears_of_an_inactive_contact(db: TestDatabase) {
    let mut system = TestSystem::scoring_on(&db).await;
    system.add_scoring(&db).await;
    let lifecycle = system.lifecycle();
    let id = lifecycle.create_account("Replicas", OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@replicas.example")
        .await
        .contact_id;
    let bob = lifecycle
        .create_contact(&id, "bob@replicas.example")
        .await
        .contact_id;
    let (one, two) = (system.scoring_at(0), system.scoring_at(1));
    // Both replicas check (and remember) both people.
    one.record(vec![
        activity("r1", "demo_request", &id, &ann),
        activity("r2", "webinar_attended", &id, &bob),
    ])
    .await;
    two.record(vec![
        activity("r3", "email_open", &id, &ann),
        activity("r4", "email_open", &id, &bob),
    ])
    .await;
    wait_for_scores(&lifecycle, &id, 129.0, 64.5).await;

    set_inactive(&lifecycle, &ann, true).await;
    wait_for_score(&one, &id, 27.0, 1).await;
    for (n, replica) in [&one, &two].into_iter().enumerate() {
        let mut attempt = 0;
        eventually(&format!("replica {n} to refuse her"), async || {
            attempt += 1;
            let response = replica
                .record(vec![activity(
                    &format!("late-{n}-{attempt}"),
                    "email_open",
                    &id,
                    &ann,
                )])
                .await;
            if response.results[0].status == pb::ActivityStatus::Rejected as i32 {
                Ok(())
            } else {
                Err(response)
            }
        })
        .await;
    }
    // Accepted or not meanwhile, her activities do not count.
    for replica in [&one, &two] {
        wait_for_score(replica, &id, 27.0, 1).await;
    }
    system.settled().await;
    wait_for_scores(&lifecycle, &id, 27.0, 27.0).await;
    system.stop().await;
}

/// Lifecycle on `db`, scoring beside it, and an account whose two people
/// (Ann, Bob) engaged 100 and 25 points, delivered: (system, account, Ann).
async fn two_people_engaged(db: &TestDatabase, name: &str) -> (TestSystem, String, String) {
    let scoring_db = db.like().await;
    let mut system = TestSystem::lifecycle_on(db).await;
    system.add_scoring(&scoring_db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let domain = format!("{}.example", name.to_ascii_lowercase());
    let id = lifecycle.create_account(name, OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&id, &format!("ann@{domain}"))
        .await
        .contact_id;
    let bob = lifecycle
        .create_contact(&id, &format!("bob@{domain}"))
        .await
        .contact_id;
    scoring
        .record(vec![
            activity(&format!("{name}-1"), "demo_request", &id, &ann),
            activity(&format!("{name}-2"), "webinar_attended", &id, &bob),
        ])
        .await;
    wait_for_scores(&lifecycle, &id, 125.0, 62.5).await;
    system.own(scoring_db);
    (system, id, ann)
}

/// Records a contact change in lifecycle's database as another lifecycle
/// replica would have (no API makes two replicas' clocks disagree), and
/// waits until scoring has applied and confirmed it.
async fn recorded_elsewhere(
    db: &TestDatabase,
    lifecycle: &Lifecycle,
    change: (&str, &str, &str),
    (inactive, email_only): (bool, bool),
) {
    use sea_orm::ConnectionTrait;
    let (change_id, account_id, contact_id) = change;
    let conn = cascade_chassis::db::connect(&db.settings)
        .await
        .expect("lifecycle's database");
    let flag = |b: bool| if b { "TRUE" } else { "FALSE" };
    conn.execute_unprepared(&format!(
        "INSERT INTO contact_changes (change_id, tenant_id, contact_id, account_id, \
         inactive, email_only, created_at_ms) \
         VALUES ('{change_id}', '{TENANT}', '{contact_id}', '{account_id}', {}, {}, 0)",
        flag(inactive),
        flag(email_only)
    ))
    .await
    .expect("the change recorded elsewhere");
    let internal = lifecycle.as_actor("scoring");
    eventually("scoring to apply the change", async || {
        let pending = internal
            .internal()
            .list_pending_contact_changes(internal.req(lc::ListPendingContactChangesRequest {
                service: "scoring".to_owned(),
                page_size: 0,
                after_change_id: String::new(),
            }))
            .await
            .map_err(|s| format!("{s:?}"))?
            .into_inner()
            .changes;
        if pending.iter().any(|c| c.change_id == change_id) {
            Err(format!("{pending:?}"))
        } else {
            Ok(())
        }
    })
    .await;
}

/// An email change recorded on a lifecycle replica whose clock runs ahead,
/// before a deactivation on another: its id is the later one, and the
/// status recorded beside it (active) the older fact. Scoring forgets whom
/// the email named and leaves the contact inactive; before change kinds it
/// applied that status, counting her again.
async fn an_email_change_leaves_the_status_alone(db: TestDatabase) {
    let (system, id, ann) = two_people_engaged(&db, "Skewed").await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    set_inactive(&lifecycle, &ann, true).await;
    wait_for_score(&scoring, &id, 25.0, 1).await;

    // The email change as the replica ahead recorded it: a later id, and
    // Ann still active.
    let change_id = cascade_domain::ids::new_id();
    recorded_elsewhere(&db, &lifecycle, (&change_id, &id, &ann), (false, true)).await;
    let score = scoring.score(&id).await;
    assert_eq!(
        (score.engagement_score, score.engaged_contact_count),
        (25.0, 1),
        "Ann is still inactive: {score:?}"
    );
    // Forgotten and checked again with lifecycle: still refused.
    let response = scoring
        .record(vec![activity("s3", "email_open", &id, &ann)])
        .await;
    assert_eq!(
        response.results[0].status,
        pb::ActivityStatus::Rejected as i32,
        "{response:?}"
    );
    system.settled().await;
    wait_for_scores(&lifecycle, &id, 25.0, 25.0).await;
    system.stop().await;
}

/// A deactivation recorded by a lifecycle replica whose clock runs an hour
/// ahead, then a reactivation on one with the right clock: the reactivation
/// is the later change, and its id sorts after the deactivation's, so
/// scoring counts the person again. Before, its id was the earlier one and
/// scoring kept her inactive.
async fn a_reactivation_wins_over_a_clock_ahead(db: TestDatabase) {
    let (system, id, ann) = two_people_engaged(&db, "Ahead").await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    set_inactive(&lifecycle, &ann, true).await;
    // The deactivation as the replica ahead recorded it: an id an hour
    // from now.
    let ahead = cascade_domain::ids::created_at_ms(&cascade_domain::ids::new_id())
        .expect("a UUIDv7")
        + 3_600_000;
    let ahead_id = cascade_domain::ids::id_made_at(ahead).expect("an id");
    recorded_elsewhere(&db, &lifecycle, (&ahead_id, &id, &ann), (true, false)).await;
    wait_for_score(&scoring, &id, 25.0, 1).await;

    set_inactive(&lifecycle, &ann, false).await;
    wait_for_score(&scoring, &id, 125.0, 2).await;
    wait_for_scores(&lifecycle, &id, 125.0, 62.5).await;
    system.stop().await;
}

on_each_database!(
    decayed_scores_reach_lifecycle_without_new_activity,
    a_reactivation_wins_over_a_clock_ahead,
    an_email_change_leaves_the_status_alone,
    the_refresh_runs_in_the_background,
    an_inactive_contact_stops_counting,
    every_replica_hears_of_an_inactive_contact,
    an_account_whose_people_all_left_scores_zero,
);

/// Every person of an account with activity left: its score is 0, as
/// lifecycle and the top list have it, not NOT_FOUND "no activity has been
/// recorded" (found by a tester); an account with none recorded still is.
async fn an_account_whose_people_all_left_scores_zero(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle.create_account("Emptied", OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@emptied.example")
        .await
        .contact_id;
    scoring
        .record(vec![activity("e1", "demo_request", &id, &ann)])
        .await;
    wait_for_scores(&lifecycle, &id, 100.0, 100.0).await;
    set_inactive(&lifecycle, &ann, true).await;
    wait_for_scores(&lifecycle, &id, 0.0, 0.0).await;
    let score = cascade_testkit::eventually("a score of 0", async || {
        match scoring.try_score(&id).await {
            Ok(score) if score.engagement_score == 0.0 => Ok(score),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(score.engaged_contact_count, 0);
    let explained = scoring
        .public()
        .explain_account_score(scoring.req(pb::ExplainAccountScoreRequest {
            account_id: id.clone(),
            page_size: 100,
            ..Default::default()
        }))
        .await
        .expect("explained")
        .into_inner();
    assert_eq!(
        explained.score.map(|s| s.engagement_score),
        Some(0.0),
        "the explanation adds up to it"
    );
    let never = lifecycle.create_account("Quiet", OWNER).await.account_id;
    let refused = scoring
        .try_score(&never)
        .await
        .expect_err("nothing recorded");
    assert_eq!(refused.code(), Code::NotFound);
    system.stop().await;
}
