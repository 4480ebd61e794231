//! Scoring over real gRPC with a real lifecycle service, on SQLite and
//! PostgreSQL: the source document's example, duplicates, caps and decay,
//! batches with bad items, email resolution, the ledger, simulation,
//! delivery while lifecycle is down, and two scoring replicas.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cascade_proto::common::v1::AccountStage as S;
use cascade_proto::scoring::v1 as pb;
use cascade_testkit::fixtures::{
    account, activity, by_email, days_ago, violated_fields, violations,
};
use cascade_testkit::{
    Lifecycle, SETTLE_THROUGH_AN_OUTAGE_MS, Scoring, Service, TestDatabase, TestSystem,
    eventually_within, on_each_database, someone_waits_for_a_lock,
};
use sea_orm::ConnectionTrait;
use tonic::Code;

/// Who the accounts belong to on the seller's side.
const OWNER: &str = "owner@seller.example";

/// Asserts scoring stored nothing for the account (its score is NOT_FOUND).
async fn assert_no_score(scoring: &Scoring, account_id: &str) {
    let status = scoring
        .try_score(account_id)
        .await
        .expect_err("nothing stored for the account");
    assert_eq!(status.code(), Code::NotFound, "{account_id}: {status:?}");
    assert!(
        status
            .message()
            .ends_with(": no activity has been recorded for this account"),
        "{account_id}: {status:?}"
    );
}

/// Adds `web_research` (10 points) to the model as its intent type.
fn research_is_intent(model: &mut pb::ScoringModel) {
    model.rules.push(pb::ScoringRule {
        activity_type: "web_research".into(),
        points: 10,
        daily_cap_per_contact: 0,
        first_occurrence_only: false,
    });
    model.intent_activity_types = vec!["web_research".into()];
}

/// Waits until lifecycle shows the account with these scores.
async fn wait_for_scores(lifecycle: &Lifecycle, account_id: &str, engagement: f64, average: f64) {
    let what = format!("lifecycle to show scores ({engagement}, {average})");
    lifecycle
        .wait_for_account(account_id, &what, |a| {
            (a.engagement_score, a.average_engagement_score) == (engagement, average)
        })
        .await;
}
async fn source_example_prioritizes_the_account(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle
        .create_account_with(account("Initech", "initech.example", OWNER))
        .await
        .account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@initech.example")
        .await
        .contact_id;
    let bob = lifecycle
        .create_contact(&id, "bob@initech.example")
        .await
        .contact_id;
    let cy = lifecycle
        .create_contact(&id, "cy@initech.example")
        .await
        .contact_id;
    // Individually under 100 (37, 54, 25); together 116.
    let batch = vec![
        activity("e1", "webinar_attended", &id, &ann),
        activity("e2", "case_study_download", &id, &ann),
        activity("e3", "email_open", &id, &ann),
        activity("e4", "pricing_page_visit", &id, &bob),
        activity("e5", "web_page_visit", &id, &bob),
        activity("e6", "webinar_attended", &id, &cy),
    ];
    let response = scoring.record(batch).await;
    assert_eq!(
        (
            response.recorded_count,
            response.duplicate_count,
            response.rejected_count
        ),
        (6, 0, 0)
    );
    let points: Vec<f64> = response.results.iter().map(|r| r.points).collect();
    assert_eq!(points, [25.0, 10.0, 2.0, 50.0, 4.0, 25.0]);

    let total = scoring.score(&id).await;
    assert_eq!(total.engagement_score, 116.0);
    assert_eq!(total.engaged_contact_count, 3);
    assert!((total.average_engagement_score - 116.0 / 3.0).abs() < 1e-9);
    let webinar = total
        .breakdown
        .iter()
        .find(|b| b.activity_type == "webinar_attended")
        .expect("type");
    assert_eq!((webinar.activity_count, webinar.points), (2, 50.0));
    for (contact_id, expected) in [(&ann, 37.0), (&bob, 54.0), (&cy, 25.0)] {
        let s = scoring
            .public()
            .get_contact_score(scoring.req(pb::GetContactScoreRequest {
                contact_id: contact_id.clone(),
            }))
            .await
            .expect("contact score")
            .into_inner()
            .score
            .expect("score");
        assert_eq!(s.engagement_score, expected);
        assert!(s.engagement_score < 100.0);
    }

    let prioritized = lifecycle.wait_for_stage(&id, S::Prioritized).await;
    assert_eq!(prioritized.engagement_score, 116.0);
    let ann_in_lifecycle = lifecycle.contact(&ann).await;
    assert_eq!(ann_in_lifecycle.engagement_score, 37.0);
    system.stop().await;
}

async fn duplicates_are_counted_once(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle.create_account("Dup", OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@dup.example")
        .await
        .contact_id;
    let first = scoring
        .record(vec![
            activity("d1", "webinar_attended", &id, &ann),
            activity("d1", "webinar_attended", &id, &ann),
        ])
        .await;
    assert_eq!((first.recorded_count, first.duplicate_count), (1, 1));
    let again = scoring
        .record_one(activity("d1", "webinar_attended", &id, &ann))
        .await
        .result
        .expect("result");
    assert_eq!(again.status, pb::ActivityStatus::Duplicate as i32);
    assert_eq!(
        (again.account_id.as_str(), again.points),
        (id.as_str(), 25.0)
    );
    assert_eq!(scoring.score(&id).await.engagement_score, 25.0);

    // A batch mixing a stored id with new ones: the first attempt's insert
    // finds the stored one, is rolled back, and the retry checks first. The
    // stored one counts nothing twice; the new ones are scored as if alone
    // (the second webinar of the day is capped like any repeat).
    let mixed = scoring
        .record(vec![
            activity("d2", "webinar_attended", &id, &ann),
            activity("d1", "webinar_attended", &id, &ann),
            activity("d3", "email_open", &id, &ann),
        ])
        .await;
    assert_eq!((mixed.recorded_count, mixed.duplicate_count), (2, 1));
    let statuses: Vec<i32> = mixed.results.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [
            pb::ActivityStatus::Recorded as i32,
            pb::ActivityStatus::Duplicate as i32,
            pb::ActivityStatus::Recorded as i32
        ]
    );
    let added: f64 = [&mixed.results[0], &mixed.results[2]]
        .iter()
        .map(|r| r.points)
        .sum();
    assert_eq!(scoring.score(&id).await.engagement_score, 25.0 + added);

    // An event id is one activity: sent again as another type it is refused
    // naming event_id, not answered DUPLICATE and dropped; a retry stamped
    // with another time is still the same activity.
    let before = scoring.score(&id).await.engagement_score;
    let restamped = scoring
        .record_one(pb::Activity {
            occur_time: Some(days_ago(1)),
            ..activity("d1", "webinar_attended", &id, &ann)
        })
        .await
        .result
        .expect("result");
    assert_eq!(restamped.status, pb::ActivityStatus::Duplicate as i32);
    let reused = scoring
        .public()
        .record_activity(scoring.req(pb::RecordActivityRequest {
            activity: Some(activity("d1", "demo_request", &id, &ann)),
        }))
        .await
        .expect_err("another activity under d1");
    let found = violations(&reused);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "activity.event_id");
    assert!(
        found[0].1.contains("another activity (webinar_attended at"),
        "{found:?}"
    );
    let batch = scoring
        .record(vec![
            activity("d4", "email_open", &id, &ann),
            activity("d4", "demo_request", &id, &ann),
            activity("d2", "pricing_page_visit", &id, &ann),
        ])
        .await;
    let statuses: Vec<i32> = batch.results.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [
            pb::ActivityStatus::Recorded as i32,
            pb::ActivityStatus::Rejected as i32,
            pb::ActivityStatus::Rejected as i32
        ]
    );
    let fields: Vec<&str> = batch.results[1..]
        .iter()
        .map(|r| r.violations[0].field.as_str())
        .collect();
    assert_eq!(fields, ["activities[1].event_id", "activities[2].event_id"]);
    let email_open = batch.results[0].points;
    assert_eq!(
        scoring.score(&id).await.engagement_score,
        before + email_open,
        "only d4's first activity counted"
    );
    system.stop().await;
}

async fn caps_and_decay_follow_the_model(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle.create_account("Capped", OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@capped.example")
        .await
        .contact_id;
    let updated = scoring
        .change_model(|model| {
            assert_eq!(model.version, 1);
            for rule in &mut model.rules {
                match rule.activity_type.as_str() {
                    "email_open" => rule.daily_cap_per_contact = 3,
                    "webinar_attended" => rule.first_occurrence_only = true,
                    _ => {}
                }
            }
            model.rules.push(pb::ScoringRule {
                activity_type: "unsubscribe".into(),
                points: -5,
                daily_cap_per_contact: 0,
                first_occurrence_only: false,
            });
            model.decay_half_life_days = 10.0;
        })
        .await;
    assert_eq!(updated.version, 2);

    let mut old_demo = activity("old", "demo_request", &id, &ann);
    old_demo.occur_time = Some(days_ago(20));
    let response = scoring
        .record(vec![
            activity("o1", "email_open", &id, &ann),
            activity("o2", "email_open", &id, &ann),
            activity("o3", "email_open", &id, &ann),
            activity("w1", "webinar_attended", &id, &ann),
            activity("w2", "webinar_attended", &id, &ann),
            activity("u1", "unsubscribe", &id, &ann),
            old_demo,
        ])
        .await;
    let points: Vec<f64> = response.results.iter().map(|r| r.points).collect();
    assert_eq!(
        points,
        [2.0, 1.0, 0.0, 25.0, 0.0, -5.0, 100.0],
        "cap 3/day; first webinar only"
    );
    // 2 + 1 + 25 - 5 today, and 100 from 20 days ago at half-life 10: 25.
    let total = scoring.score(&id).await;
    assert_eq!(total.engagement_score, 48.0);

    let ledger = scoring
        .public()
        .explain_account_score(scoring.req(pb::ExplainAccountScoreRequest {
            account_id: id.clone(),
            page_size: 100,
            page_token: String::new(),
        }))
        .await
        .expect("ledger")
        .into_inner();
    let demo = ledger
        .entries
        .iter()
        .find(|e| e.event_id == "old")
        .expect("old demo");
    assert_eq!(
        (demo.decay_factor, demo.points, demo.model_version),
        (0.25, 25.0, 2)
    );
    let third = ledger
        .entries
        .iter()
        .find(|e| e.event_id == "o3")
        .expect("third open");
    assert!(third.capped);
    assert_eq!((third.rule_points, third.counted_points), (2, 0));
    wait_for_scores(&lifecycle, &id, 48.0, 48.0).await;

    // A second batch the same day adds to the stored score: what lifecycle
    // receives matches what the buckets give.
    let bob = lifecycle
        .create_contact(&id, "bob@capped.example")
        .await
        .contact_id;
    scoring
        .record(vec![
            activity("d2", "demo_request", &id, &ann),
            activity("k1", "email_click", &id, &bob),
        ])
        .await;
    let total = scoring.score(&id).await;
    assert_eq!(
        (total.engagement_score, total.engaged_contact_count),
        (150.0, 2)
    );
    wait_for_scores(&lifecycle, &id, 150.0, 75.0).await;

    // Without decay the old demo counts in full again: the stored scores
    // were computed with the old half-life, so the next batch recomputes.
    scoring
        .change_model(|model| model.decay_half_life_days = 0.0)
        .await;
    assert_eq!(scoring.score(&id).await.engagement_score, 225.0);
    scoring
        .record(vec![activity("k2", "email_click", &id, &bob)])
        .await;
    assert_eq!(scoring.score(&id).await.engagement_score, 227.0);
    wait_for_scores(&lifecycle, &id, 227.0, 113.5).await;
    system.stop().await;
}

/// The stored scores each batch adds to (what lifecycle is sent) count a
/// contact as engaged once, whatever the batches: a contact with intent
/// activity only is not engaged until it has engagement (activities without
/// a contact are intent), and every step agrees with the score computed
/// from all the activities (GetAccountScore).
async fn engaged_contacts_follow_batches(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle.create_account("Engaged", OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@engaged.example")
        .await
        .contact_id;
    let bob = lifecycle
        .create_contact(&id, "bob@engaged.example")
        .await
        .contact_id;
    let cy = lifecycle
        .create_contact(&id, "cy@engaged.example")
        .await
        .contact_id;
    let dee = lifecycle
        .create_contact(&id, "dee@engaged.example")
        .await
        .contact_id;
    scoring.change_model(research_is_intent).await;

    let batches = [
        // (batch, engagement, engaged contacts)
        (vec![activity("b1", "email_open", &id, &ann)], 2.0, 1),
        (
            vec![
                activity("b2", "email_open", &id, &ann),
                activity("b3", "web_research", &id, &bob),
                activity("b4", "web_page_visit", &id, ""),
            ],
            4.0,
            1,
        ),
        (
            vec![
                activity("b5", "pricing_page_visit", &id, &bob),
                activity("b6", "web_page_visit", &id, ""),
                activity("b7", "web_research", &id, &cy),
            ],
            54.0,
            2,
        ),
        (vec![activity("b8", "email_open", &id, &ann)], 56.0, 2),
        // A type with no rule is recorded but is no engagement: Dee does
        // not lower the average until she earns points.
        (
            vec![activity("b9", "webinar_registered", &id, &dee)],
            56.0,
            2,
        ),
        (vec![activity("b10", "email_open", &id, &dee)], 58.0, 3),
    ];
    for (batch, engagement, engaged) in batches {
        let response = scoring.record(batch).await;
        assert_eq!(response.rejected_count, 0, "{response:?}");
        let computed = scoring.score(&id).await;
        assert_eq!(
            (computed.engagement_score, computed.engaged_contact_count),
            (engagement, engaged)
        );
        wait_for_scores(&lifecycle, &id, engagement, engagement / f64::from(engaged)).await;
    }
    assert_eq!(scoring.score(&id).await.intent_score, 28.0);
    system.stop().await;
}

async fn a_batch_with_bad_items_keeps_the_good_ones(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle
        .create_account_with(account("Globex", "globex.example", OWNER))
        .await
        .account_id;
    let known = lifecycle
        .create_contact(&id, "known@globex.example")
        .await
        .contact_id;
    let mut no_type = activity("b2", "", &id, "");
    no_type.activity_type = String::new();
    let mut future = activity("b3", "email_open", &id, &known);
    future.occur_time = Some(prost_types::Timestamp {
        seconds: 4_000_000_000,
        nanos: 0,
    });
    let mut both = activity("b4", "email_open", &id, "");
    both.contact_email = "x@globex.example".into();
    let response = scoring
        .record(vec![
            activity("b1", "email_open", &id, &known),
            no_type,
            future,
            both,
            by_email("b5", "email_open", "who@nowhere.example"),
            by_email("b6", "webinar_attended", "known@globex.example"),
            by_email("b7", "email_open", "new.person@globex.example"),
            activity("b8", "Email_Open", &id, &known),
        ])
        .await;
    let statuses: Vec<i32> = response.results.iter().map(|r| r.status).collect();
    let (ok, rejected, not_found) = (
        pb::ActivityStatus::Recorded as i32,
        pb::ActivityStatus::Rejected as i32,
        pb::ActivityStatus::NotFound as i32,
    );
    // Malformed items are REJECTED; an email of no known domain is NOT_FOUND.
    assert_eq!(
        statuses,
        [
            ok, rejected, rejected, rejected, not_found, ok, ok, rejected
        ]
    );
    assert_eq!(response.rejected_count, 5);
    let field = |i: usize| response.results[i].violations[0].field.clone();
    assert_eq!(field(1), "activities[1].activity_type");
    // Missing, or sent but not a type: each said as it is.
    let said = |i: usize| response.results[i].violations[0].description.clone();
    assert_eq!(said(1), "is required");
    assert_eq!(field(7), "activities[7].activity_type");
    assert!(
        said(7).starts_with("must be 1 to 64 characters"),
        "{}",
        said(7)
    );
    assert_eq!(field(2), "activities[2].occur_time");
    assert_eq!(field(3), "activities[3].contact_email");
    assert_eq!(field(4), "activities[4].contact_email");
    assert!(
        response.results[4].violations[0]
            .description
            .contains("nowhere.example")
    );
    // Email resolution: the known contact, and a new one under the matching domain.
    assert_eq!(response.results[5].contact_id, known);
    let created = &response.results[6];
    assert_eq!(created.account_id, id);
    let person = lifecycle.contact(&created.contact_id).await;
    assert_eq!(person.email, "new.person@globex.example");
    assert_eq!(scoring.score(&id).await.engagement_score, 2.0 + 25.0 + 2.0);

    let empty = scoring.try_record(vec![]).await.expect_err("empty batch");
    assert_eq!(empty.code(), Code::InvalidArgument);
    let oversized = scoring
        .try_record(
            (0..1001)
                .map(|i| activity(&format!("x{i}"), "email_open", &id, ""))
                .collect(),
        )
        .await
        .expect_err("oversized batch");
    assert_eq!(oversized.code(), Code::InvalidArgument);
    system.stop().await;
}

/// An account's whole ledger, read `page_size` entries at a time, and the
/// score the last page carried.
async fn ledger(
    scoring: &Scoring,
    account_id: &str,
    page_size: i32,
) -> (Vec<pb::LedgerEntry>, pb::AccountScore) {
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let page = scoring
            .public()
            .explain_account_score(scoring.req(pb::ExplainAccountScoreRequest {
                account_id: account_id.to_owned(),
                page_size,
                page_token: token,
            }))
            .await
            .expect("ledger page")
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return (entries, page.score.expect("score"));
        }
        token = page.next_page_token;
    }
}

/// Asserts a score equals what the account's stored activities (its
/// ledger) give: engagement, intent, engaged contacts and the breakdown.
async fn assert_score_is_the_ledgers(
    scoring: &Scoring,
    account_id: &str,
    score: &pb::AccountScore,
) {
    let (entries, _) = ledger(scoring, account_id, 100).await;
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    let engagement: Vec<&pb::LedgerEntry> = entries.iter().filter(|e| !e.intent).collect();
    let total: f64 = engagement.iter().map(|e| e.points).sum();
    let intent: f64 = entries.iter().filter(|e| e.intent).map(|e| e.points).sum();
    assert!(close(score.engagement_score, total), "{score:?} vs {total}");
    assert!(close(score.intent_score, intent), "{score:?} vs {intent}");
    let engaged: std::collections::BTreeSet<&str> =
        engagement.iter().map(|e| e.contact_id.as_str()).collect();
    assert_eq!(
        score.engaged_contact_count as usize,
        engaged.len(),
        "{score:?}"
    );
    let mut by_type: std::collections::BTreeMap<&str, (i64, f64)> = Default::default();
    for e in &engagement {
        let entry = by_type.entry(e.activity_type.as_str()).or_default();
        entry.0 += 1;
        entry.1 += e.points;
    }
    let got: Vec<&str> = score
        .breakdown
        .iter()
        .map(|b| b.activity_type.as_str())
        .collect();
    assert_eq!(
        got,
        by_type.keys().copied().collect::<Vec<_>>(),
        "{score:?}"
    );
    for b in &score.breakdown {
        let (count, points) = by_type[b.activity_type.as_str()];
        assert_eq!(b.activity_count, count, "{}", b.activity_type);
        assert!(
            close(b.points, points),
            "{}: {} vs {points}",
            b.activity_type,
            b.points
        );
    }
}

/// GetAccountScore answers from the account's stored score, which each
/// batch adds to (decayed points, breakdown and all): after every batch it
/// is what the stored activities give, and what the buckets give when a
/// model change makes the next read sum them.
async fn the_stored_score_answers_like_the_activities(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle.create_account("Stored", OWNER).await.account_id;
    let mut contacts = Vec::new();
    for name in ["ann", "bob", "cy"] {
        let email = format!("{name}@stored.example");
        contacts.push(lifecycle.create_contact(&id, &email).await.contact_id);
    }
    let [ann, bob, cy] = [&contacts[0], &contacts[1], &contacts[2]];
    scoring
        .change_model(|model| {
            research_is_intent(model);
            model.decay_half_life_days = 7.0;
        })
        .await;
    let dated = |event: &str, kind: &str, contact: &str, days: i64| {
        let mut a = activity(event, kind, &id, contact);
        a.occur_time = Some(days_ago(days));
        a
    };
    let batches = [
        vec![
            dated("s1", "email_open", ann, 0),
            dated("s2", "webinar_attended", ann, 3),
            dated("s3", "web_page_visit", "", 1),
        ],
        vec![
            dated("s4", "pricing_page_visit", bob, 2),
            dated("s5", "email_open", ann, 5),
            dated("s6", "web_research", cy, 4),
        ],
        vec![
            dated("s7", "email_open", bob, 10),
            dated("s8", "webinar_attended", cy, 0),
            dated("s9", "web_research", ann, 6),
        ],
    ];
    let mut last = None;
    for batch in batches {
        let response = scoring.record(batch).await;
        assert_eq!(response.rejected_count, 0, "{response:?}");
        let score = scoring.score(&id).await;
        assert_score_is_the_ledgers(&scoring, &id, &score).await;
        last = Some(score);
    }
    let stored = last.expect("three batches");
    assert_eq!(stored.engaged_contact_count, 3);
    assert_eq!(stored.breakdown.len(), 3, "{stored:?}");

    // A replica of an older version rewrites the totals and the delivery
    // sequence but not the breakdown: that row is not answered from (here
    // its totals are made wrong on purpose, so only a bucket sum is right).
    let conn = cascade_chassis::db::connect(&db.settings)
        .await
        .expect("connect");
    conn.execute_unprepared(
        "UPDATE account_scores SET engagement_score = engagement_score + 1000, \
         delivery_seq = delivery_seq + 1",
    )
    .await
    .expect("an older replica's write");
    let summed = scoring.score(&id).await;
    assert_score_is_the_ledgers(&scoring, &id, &summed).await;

    // A model change with the same points marks the stored score stale: the
    // read sums the buckets, and gives the same answer.
    scoring
        .change_model(|model| {
            model.rules.push(pb::ScoringRule {
                activity_type: "never_recorded".into(),
                points: 1,
                daily_cap_per_contact: 0,
                first_occurrence_only: false,
            });
        })
        .await;
    let summed = scoring.score(&id).await;
    assert_score_is_the_ledgers(&scoring, &id, &summed).await;
    assert!((summed.engagement_score - stored.engagement_score).abs() < 1e-9);
    assert_eq!(summed.breakdown.len(), stored.breakdown.len());
    system.stop().await;
}

async fn the_ledger_sums_to_the_score(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle.create_account("Ledger", OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@ledger.example")
        .await
        .contact_id;
    let bob = lifecycle
        .create_contact(&id, "bob@ledger.example")
        .await
        .contact_id;
    let mut batch = vec![
        activity("l1", "demo_request", &id, &ann),
        activity("l2", "email_open", &id, &bob),
        activity("l3", "web_page_visit", &id, ""), // anonymous intent
        activity("l4", "meeting_agreed", &id, &bob),
        activity("l5", "something_new", &id, &ann), // unknown: 0 points, kept
    ];
    batch[1].occur_time = Some(days_ago(3));
    scoring.record(batch).await;
    let (entries, score) = ledger(&scoring, &id, 2).await;
    assert_eq!(entries.len(), 5);
    assert_eq!(entries[0].event_id, "l2", "oldest activity first");
    let engagement: f64 = entries.iter().filter(|e| !e.intent).map(|e| e.points).sum();
    let intent: f64 = entries.iter().filter(|e| e.intent).map(|e| e.points).sum();
    assert_eq!(engagement, score.engagement_score);
    assert_eq!(intent, score.intent_score);
    assert_eq!((score.engagement_score, score.intent_score), (152.0, 4.0));
    system.stop().await;
}

/// SimulateScoringModel of `model` from `start_time` on, with thresholds 0
/// and `prioritized` and a sample of ten.
async fn simulate(
    scoring: &Scoring,
    model: pb::ScoringModel,
    prioritized: f64,
    start_time: Option<prost_types::Timestamp>,
) -> pb::SimulateScoringModelResponse {
    scoring
        .public()
        .simulate_scoring_model(scoring.req(pb::SimulateScoringModelRequest {
            model: Some(model),
            thresholds: Some(pb::SimulationThresholds {
                engaged_threshold: 0.0,
                prioritized_threshold: prioritized,
            }),
            start_time,
            end_time: None,
            sample_size: 10,
        }))
        .await
        .expect("simulation")
        .into_inner()
}

async fn simulation_matches_a_hand_computed_scenario(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let a = lifecycle.create_account("A", OWNER).await.account_id;
    let b = lifecycle.create_account("B", OWNER).await.account_id;
    let c = lifecycle.create_account("C", OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&a, "ann@a.example")
        .await
        .contact_id;
    let bea = lifecycle
        .create_contact(&b, "bea@b.example")
        .await
        .contact_id;
    scoring
        .record(vec![
            activity("s1", "email_open", &a, &ann),
            activity("s2", "email_open", &a, &ann),
            activity("s3", "email_open", &a, &ann),
            activity("s4", "demo_request", &b, &bea),
            activity("s5", "web_page_visit", &c, ""),
        ])
        .await;
    let mut proposed = scoring.model().await;
    for rule in &mut proposed.rules {
        if rule.activity_type == "email_open" {
            rule.points = 40;
        }
    }
    let result = simulate(&scoring, proposed, 100.0, None).await;
    let counts = |counts: &[pb::StageCount]| {
        let mut v: Vec<(i32, i64)> = counts.iter().map(|c| (c.stage, c.account_count)).collect();
        v.sort();
        v
    };
    // Now: A 6 (ENGAGED), B 100 (PRIORITIZED), C intent only (DETECTED).
    assert_eq!(
        counts(&result.current_counts),
        [
            (S::Detected as i32, 1),
            (S::Engaged as i32, 1),
            (S::Prioritized as i32, 1)
        ]
    );
    // Proposed: A 120 (PRIORITIZED).
    assert_eq!(
        counts(&result.proposed_counts),
        [(S::Detected as i32, 1), (S::Prioritized as i32, 2)]
    );
    assert_eq!(
        (result.changed_account_count, result.activity_count),
        (1, 5)
    );
    let change = &result.sample[0];
    assert_eq!(
        (
            change.account_id.as_str(),
            change.current_score,
            change.proposed_score
        ),
        (a.as_str(), 6.0, 120.0)
    );
    // It changed nothing.
    assert_eq!(scoring.score(&a).await.engagement_score, 6.0);
    assert_eq!(scoring.model().await.version, 1);
    system.stop().await;
}

/// After a model change, the current side is the score accounts have (the
/// points counted when each activity was recorded), not a rescoring with the
/// new model: a tester found "current" figures no account had, and proposing
/// the model in force showed no change for accounts it would move.
async fn simulation_compares_with_the_scores_accounts_have(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let a = lifecycle.create_account("A", OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&a, "ann@sim-model.example")
        .await
        .contact_id;
    scoring
        .record(vec![
            activity("m1", "email_open", &a, &ann),
            activity("m2", "email_open", &a, &ann),
            activity("m3", "email_open", &a, &ann),
        ])
        .await;
    // Opens are worth 40 from now on; the three recorded keep their 2 each.
    let model = scoring
        .change_model(|model| {
            for rule in &mut model.rules {
                if rule.activity_type == "email_open" {
                    rule.points = 40;
                }
            }
        })
        .await;
    let live = scoring.score(&a).await.engagement_score;
    assert_eq!(live, 6.0);
    let result = simulate(&scoring, model, 100.0, None).await;
    assert_eq!(result.changed_account_count, 1, "{result:?}");
    let change = &result.sample[0];
    assert_eq!((change.current_score, change.proposed_score), (live, 120.0));
    assert_eq!(
        (change.current_stage, change.proposed_stage),
        (S::Engaged as i32, S::Prioritized as i32)
    );
    system.stop().await;
}

/// Simulation reads activities grouped by contact, type and day; with the
/// current model it must give every account the score ingest gave it, over
/// several days (decay), daily caps, first-occurrence rules and anonymous
/// visits, and a window must leave out what is outside it.
async fn simulation_replays_what_ingest_scored(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let model = scoring
        .change_model(|model| {
            for rule in &mut model.rules {
                match rule.activity_type.as_str() {
                    "email_open" => rule.daily_cap_per_contact = 5,
                    "webinar_attended" => rule.first_occurrence_only = true,
                    _ => {}
                }
            }
            model.decay_half_life_days = 7.0;
        })
        .await;
    let mut accounts = Vec::new();
    let mut activities = Vec::new();
    let mut older_than_5_days = 0;
    for (a, name) in ["Grouped A", "Grouped B"].iter().enumerate() {
        let id = lifecycle.create_account(name, OWNER).await.account_id;
        let ann = lifecycle
            .create_contact(&id, &format!("ann@g{a}.example"))
            .await
            .contact_id;
        let bob = lifecycle
            .create_contact(&id, &format!("bob@g{a}.example"))
            .await
            .contact_id;
        // Oldest first: ingest gives a first-occurrence rule's points to the
        // first one recorded, the replay to the earliest.
        for (days, opens) in [(10, 6), (3, 2 * a + 1), (1, 3), (0, 4 + a)] {
            if days > 5 {
                older_than_5_days += 2 * opens + 2;
            }
            for (who, person) in [("ann", &ann), ("bob", &bob)] {
                for k in 0..opens {
                    let mut open = activity(
                        &format!("{name}-{who}-{days}-{k}"),
                        "email_open",
                        &id,
                        person,
                    );
                    open.occur_time = Some(days_ago(days));
                    activities.push(open);
                }
            }
            let mut webinar = activity(&format!("{name}-w-{days}"), "webinar_attended", &id, &ann);
            webinar.occur_time = Some(days_ago(days));
            activities.push(webinar);
            let mut visit = activity(&format!("{name}-v-{days}"), "web_page_visit", &id, "");
            visit.occur_time = Some(days_ago(days));
            activities.push(visit);
        }
        accounts.push(id);
    }
    let stored = activities.len() as i64;
    scoring.record(activities).await;

    // Same model, thresholds every scored account crosses: each one changes
    // stage, so each shows in the sample with its replayed score.
    let result = simulate(&scoring, model.clone(), 0.5, None).await;
    assert_eq!(result.activity_count, stored);
    assert_eq!(result.changed_account_count, 2);
    for change in &result.sample {
        let live = scoring.score(&change.account_id).await;
        assert!(
            (change.current_score - live.engagement_score).abs() < 1e-9,
            "{}: replayed {} against {} scored at ingest",
            change.account_id,
            change.current_score,
            live.engagement_score
        );
        assert_eq!(change.current_score, change.proposed_score);
    }
    let mut sampled: Vec<&str> = result
        .sample
        .iter()
        .map(|c| c.account_id.as_str())
        .collect();
    sampled.sort_unstable();
    let mut expected: Vec<&str> = accounts.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(sampled, expected);

    let recent = simulate(&scoring, model, 0.5, Some(days_ago(5))).await;
    assert_eq!(recent.activity_count, stored - older_than_5_days as i64);
    system.stop().await;
}

async fn nothing_is_lost_while_lifecycle_is_down(db: TestDatabase) {
    let mut system = TestSystem::scoring_with(&db, |s| {
        s.own.lifecycle.erasure_settle_ms = SETTLE_THROUGH_AN_OUTAGE_MS;
    })
    .await;
    let lifecycle = system.lifecycle();
    let mut accounts = Vec::new();
    for name in ["L1", "L2"] {
        let id = lifecycle.create_account(name, OWNER).await.account_id;
        let c = lifecycle
            .create_contact(&id, &format!("p@{}.example", name.to_lowercase()))
            .await
            .contact_id;
        accounts.push((id, c));
    }
    // Scoring checks each person with lifecycle once and remembers them: an
    // activity type of no points introduces them without moving any stage.
    let scoring = system.scoring();
    for (i, (id, c)) in accounts.iter().enumerate() {
        let response = scoring
            .record(vec![activity(
                &format!("intro{i}"),
                "no_points_here",
                id,
                c,
            )])
            .await;
        assert_eq!(response.recorded_count, 1);
    }
    system.stop_lifecycle().await;

    // Lifecycle is down: a person scoring has never checked cannot be
    // recorded, and the batch says retry rather than calling it bad input.
    let refused = scoring
        .try_record(vec![
            activity("unchecked", "demo_request", &accounts[0].0, NO_SUCH_ID),
            activity("checked", "demo_request", &accounts[0].0, &accounts[0].1),
        ])
        .await
        .expect_err("the batch is refused whole");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("no activity was written"),
        "{refused:?}"
    );

    // People already checked: activities are still accepted.
    for (i, (id, c)) in accounts.iter().enumerate() {
        let response = scoring
            .record(vec![activity(&format!("a{i}"), "webinar_attended", id, c)])
            .await;
        assert_eq!(response.recorded_count, 1);
    }
    // Scoring restarts in between; the pending deliveries are in its
    // database. What it remembered of people is not: with lifecycle still
    // down, new activities are refused UNAVAILABLE (the client retries).
    system.stop_scoring().await;
    system.add_scoring(&db).await;
    let scoring = system.scoring();
    let (id, c) = &accounts[0];
    let refused = scoring
        .try_record(vec![activity("b0", "demo_request", id, c)])
        .await
        .expect_err("the batch is refused whole");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    system.start_lifecycle().await;
    let lifecycle = system.lifecycle();
    for (i, (id, c)) in accounts.iter().enumerate() {
        // The deliveries kept across the restart arrive ...
        let account = lifecycle.wait_for_stage(id, S::Engaged).await;
        assert_eq!(account.engagement_score, 25.0);
        // ... and the retried batch is recorded once lifecycle answers.
        scoring
            .record(vec![activity(&format!("b{i}"), "demo_request", id, c)])
            .await;
    }
    for (id, _) in &accounts {
        let account = lifecycle.wait_for_stage(id, S::Prioritized).await;
        assert_eq!(account.engagement_score, 125.0);
        let transitions = lifecycle.transitions(id).await;
        let stages: Vec<i32> = transitions.iter().map(|t| t.to_stage).collect();
        assert_eq!(
            stages,
            [S::Engaged as i32, S::Prioritized as i32],
            "each move once"
        );
    }
    system.stop().await;
}

const NO_SUCH_ID: &str = "0190a5a0-0000-7000-8000-00000000dead";

/// Every account and contact an activity names must exist in the tenant and
/// belong together; what does not is refused per item and leaves no trace.
async fn ids_are_checked_per_item(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let a = lifecycle
        .create_account_with(account("Alpha", "alpha.example", OWNER))
        .await
        .account_id;
    let b = lifecycle.create_account("Beta", OWNER).await.account_id;
    let ca = lifecycle
        .create_contact(&a, "ca@alpha.example")
        .await
        .contact_id;
    let response = scoring
        .record(vec![
            activity("ok", "email_open", &a, &ca),
            // A's contact under B (which has none): must not make B PRIORITIZED.
            activity("mismatch", "demo_request", &b, &ca),
            activity("no-account", "demo_request", NO_SUCH_ID, ""),
            activity("no-account-with-contact", "demo_request", NO_SUCH_ID, &ca),
            activity("no-contact", "demo_request", &a, NO_SUCH_ID),
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
    let (ok, rejected, not_found) = (
        pb::ActivityStatus::Recorded as i32,
        pb::ActivityStatus::Rejected as i32,
        pb::ActivityStatus::NotFound as i32,
    );
    assert_eq!(
        outcome,
        [
            (ok, String::new()),
            (rejected, "activities[1].contact_id".into()),
            (not_found, "activities[2].account_id".into()),
            (not_found, "activities[3].account_id".into()),
            (not_found, "activities[4].contact_id".into()),
        ]
    );
    assert!(
        response.results[1].violations[0]
            .description
            .contains("another account"),
        "{:?}",
        response.results[1]
    );
    assert_eq!((response.recorded_count, response.rejected_count), (1, 4));

    // Nothing of the refused items is stored, scored or delivered.
    let a_score = scoring.score(&a).await;
    assert_eq!(
        (a_score.engagement_score, a_score.engaged_contact_count),
        (2.0, 1)
    );
    for missing in [&b, NO_SUCH_ID] {
        assert_no_score(&scoring, missing).await;
    }
    let top = scoring
        .public()
        .list_top_accounts(scoring.req(pb::ListTopAccountsRequest {
            page_size: 50,
            page_token: String::new(),
        }))
        .await
        .expect("top accounts")
        .into_inner()
        .accounts;
    let listed: Vec<&str> = top.iter().map(|s| s.account_id.as_str()).collect();
    assert_eq!(listed, [a.as_str()]);
    let explained = scoring
        .public()
        .explain_account_score(scoring.req(pb::ExplainAccountScoreRequest {
            account_id: a.clone(),
            page_size: 100,
            page_token: String::new(),
        }))
        .await
        .expect("ledger")
        .into_inner()
        .entries;
    assert_eq!(explained.len(), 1);
    lifecycle.wait_for_stage(&a, S::Engaged).await;
    let b_account = lifecycle.wait_for_stage(&b, S::Targeted).await;
    assert_eq!(b_account.engagement_score, 0.0);

    // One at a time: NOT_FOUND for what does not exist, INVALID_ARGUMENT
    // naming the field for a contact under another account.
    let one = |a: pb::Activity| scoring.req(pb::RecordActivityRequest { activity: Some(a) });
    let unknown = scoring
        .public()
        .record_activity(one(activity("u1", "demo_request", NO_SUCH_ID, "")))
        .await
        .expect_err("unknown account");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(unknown.message().contains(NO_SUCH_ID), "{unknown:?}");
    let unknown = scoring
        .public()
        .record_activity(one(activity("u2", "demo_request", &a, NO_SUCH_ID)))
        .await
        .expect_err("unknown contact");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(unknown.message().contains("contact"), "{unknown:?}");
    let mismatch = scoring
        .public()
        .record_activity(one(activity("u3", "demo_request", &b, &ca)))
        .await
        .expect_err("a contact of another account");
    assert_eq!(mismatch.code(), Code::InvalidArgument, "{mismatch:?}");
    assert_eq!(violated_fields(&mismatch), ["activity.contact_id"]);
    assert_eq!(scoring.score(&a).await.engagement_score, 2.0);
    system.stop().await;
}

/// Lifecycle down: an emailed batch is refused whole and retryable, never
/// reported as bad input, and goes through once lifecycle is back.
async fn emails_while_lifecycle_is_down_are_retryable(db: TestDatabase) {
    let mut system = TestSystem::scoring_on(&db).await;
    let lifecycle = system.lifecycle();
    let id = lifecycle
        .create_account_with(account("Gamma", "gamma.example", OWNER))
        .await
        .account_id;
    lifecycle.create_contact(&id, "known@gamma.example").await;
    system.stop_lifecycle().await;
    let batch = vec![
        by_email("m1", "webinar_attended", "known@gamma.example"),
        by_email("m2", "webinar_attended", "new.person@gamma.example"),
    ];
    let scoring = system.scoring();
    for _ in 0..2 {
        let status = scoring
            .try_record(batch.clone())
            .await
            .expect_err("the batch is refused whole");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("retry"), "{status:?}");
    }
    assert_no_score(&scoring, &id).await;
    system.start_lifecycle().await;
    let response = scoring.record(batch).await;
    assert_eq!(response.recorded_count, 2, "{response:?}");
    assert!(response.results.iter().all(|r| r.account_id == id));
    assert_eq!(scoring.score(&id).await.engagement_score, 50.0);
    system.stop().await;
}

/// Lifecycle stopped, and its port taken by a listener that accepts
/// connections and never answers (a frozen lifecycle); abort the handle to
/// let them go.
async fn freeze_lifecycle(system: &mut TestSystem) -> tokio::task::JoinHandle<()> {
    system.stop_lifecycle().await;
    let frozen = tokio::net::TcpListener::bind(system.addr(Service::Lifecycle))
        .await
        .expect("the lifecycle port again");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = frozen.accept().await {
            held.push(socket);
        }
    })
}

/// An account `name` at `domain` with one contact, known@`domain`: their ids.
async fn account_with_a_contact(system: &TestSystem, name: &str, domain: &str) -> (String, String) {
    let lifecycle = system.lifecycle();
    let id = lifecycle
        .create_account_with(account(name, domain, OWNER))
        .await
        .account_id;
    let known = lifecycle
        .create_contact(&id, &format!("known@{domain}"))
        .await
        .contact_id;
    (id, known)
}

/// Lifecycle frozen (it accepts connections and never answers): a batch with
/// new emails answers UNAVAILABLE within the caller's deadline rather than
/// running into the server's request timeout.
async fn a_frozen_lifecycle_is_bounded_by_the_callers_deadline(db: TestDatabase) {
    let mut system = TestSystem::scoring_on(&db).await;
    let (id, known) = account_with_a_contact(&system, "Delta", "delta.example").await;
    let holder = freeze_lifecycle(&mut system).await;
    let scoring = system.scoring();
    let batch: Vec<pb::Activity> = (0..5)
        .map(|i| {
            by_email(
                &format!("f{i}"),
                "email_open",
                &format!("new{i}@delta.example"),
            )
        })
        .chain([activity("f-ids", "email_open", &id, &known)])
        .collect();
    for deadline in [Duration::from_millis(1500), Duration::from_secs(3)] {
        let mut request = scoring.req(pb::RecordActivitiesRequest {
            activities: batch.clone(),
        });
        request.set_timeout(deadline);
        let status = scoring
            .public()
            .record_activities(request)
            .await
            .expect_err("the batch is refused whole");
        // Had the server not answered in time, the client would see its own
        // DEADLINE_EXCEEDED or CANCELLED instead.
        assert_eq!(status.code(), Code::Unavailable, "{deadline:?}: {status:?}");
    }
    assert_no_score(&scoring, &id).await;
    holder.abort();
    system.stop().await;
}

/// The ErrorInfo reason of a status (`OVERLOADED`, `DEPENDENCY_UNAVAILABLE`).
fn reason(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
}

/// Holds one of this replica's bounds for a test: sends `call` again while
/// it is refused OVERLOADED (a probe may hold the place for its moment) or
/// `probing` is still set (a held call may end before any probe came), then
/// answers what it answered.
fn hold_while_probed<T: Send + 'static, F>(
    probing: &Arc<AtomicBool>,
    call: impl Fn() -> F + Send + 'static,
) -> tokio::task::JoinHandle<Result<T, tonic::Status>>
where
    F: Future<Output = Result<T, tonic::Status>> + Send,
{
    let probing = probing.clone();
    tokio::spawn(async move {
        loop {
            let answer = call().await;
            let overloaded =
                matches!(&answer, Err(status) if reason(status).as_deref() == Some("OVERLOADED"));
            if !overloaded && !probing.load(Ordering::SeqCst) {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// A replica holds at most `server.ingest_in_flight` activities at once:
/// while a full batch waits (for a frozen lifecycle), another call is
/// refused at once with UNAVAILABLE, reason OVERLOADED, before anything is
/// checked; once the full batch has answered, a call is admitted again.
async fn activities_in_flight_are_bounded(db: TestDatabase) {
    let mut system = TestSystem::scoring_with(&db, |s| {
        s.server.ingest_in_flight = 1_000;
        s.own.lifecycle.erasure_settle_ms = SETTLE_THROUGH_AN_OUTAGE_MS;
    })
    .await;
    let (id, known) = account_with_a_contact(&system, "Echo", "echo.example").await;
    let scoring = system.scoring();
    // Checked once while lifecycle answers: later activities naming this
    // person need no call to it.
    let first = scoring
        .record(vec![activity("e-first", "email_open", &id, &known)])
        .await;
    assert_eq!(first.recorded_count, 1, "{first:?}");
    let before = scoring.score(&id).await.engagement_score;

    let holder = freeze_lifecycle(&mut system).await;
    // 1,000 new people: the whole bound, held until its deadline (sent
    // again while a probe below holds a permit for its moment).
    let full: Vec<pb::Activity> = (0..1_000)
        .map(|i| {
            by_email(
                &format!("e-new{i}"),
                "email_open",
                &format!("new{i}@echo.example"),
            )
        })
        .collect();
    let sender = scoring.clone();
    let probing = Arc::new(AtomicBool::new(true));
    let waiting = hold_while_probed(&probing, move || {
        let sender = sender.clone();
        let mut request = sender.req(pb::RecordActivitiesRequest {
            activities: full.clone(),
        });
        request.set_timeout(Duration::from_secs(5));
        async move { sender.public().record_activities(request).await }
    });
    // A probe that is answered at once when admitted (its one item is
    // malformed: REJECTED, nothing to check), refused once the bound is held.
    let mut malformed = activity("e-probe", "email_open", &id, &known);
    malformed.activity_type.clear();
    eventually_within(
        Duration::from_secs(4),
        "a call refused OVERLOADED",
        async || match scoring.try_record(vec![malformed.clone()]).await {
            Ok(answer) => Err(format!("admitted: {answer:?}")),
            Err(status) if reason(&status).as_deref() == Some("OVERLOADED") => Ok(()),
            Err(status) => panic!("{status:?}"),
        },
    )
    .await;
    // A good activity now: refused whole, before anything is checked or
    // written, and retryable.
    let second = vec![activity("e-second", "email_open", &id, &known)];
    let refused = scoring
        .try_record(second.clone())
        .await
        .expect_err("over the bound");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        reason(&refused).as_deref(),
        Some("OVERLOADED"),
        "{refused:?}"
    );
    assert!(refused.message().contains("in flight"), "{refused:?}");
    assert_eq!(
        scoring.score(&id).await.engagement_score,
        before,
        "nothing stored"
    );
    probing.store(false, Ordering::SeqCst);

    let full = waiting
        .await
        .expect("the task")
        .expect_err("lifecycle frozen");
    assert_eq!(full.code(), Code::Unavailable, "{full:?}");
    assert_eq!(
        reason(&full).as_deref(),
        Some("DEPENDENCY_UNAVAILABLE"),
        "{full:?}"
    );
    let recorded = scoring
        .try_record(second)
        .await
        .expect("admitted again once the full batch answered");
    assert_eq!(recorded.recorded_count, 1, "{recorded:?}");
    assert!(scoring.score(&id).await.engagement_score > before);
    holder.abort();
    system.stop().await;
}

/// A replica runs at most `simulation.max_in_flight` replays at once: while
/// one waits (for a frozen lifecycle's thresholds), another is refused at
/// once with UNAVAILABLE, reason OVERLOADED, naming the setting, streamed or
/// not; a malformed one is still told what is wrong; once the first has
/// answered, a replay runs again.
async fn simulations_in_flight_are_bounded(db: TestDatabase) {
    let mut system = TestSystem::scoring_with(&db, |s| s.own.simulation.max_in_flight = 1).await;
    let scoring = system.scoring();
    let replay = pb::SimulateScoringModelRequest {
        model: Some(scoring.model().await),
        thresholds: Some(pb::SimulationThresholds {
            engaged_threshold: 10.0,
            prioritized_threshold: 100.0,
        }),
        start_time: None,
        end_time: None,
        sample_size: 0,
    };
    let unary = replay.clone();
    let simulate = move |deadline: Duration| {
        let scoring = scoring.clone();
        let replay = unary.clone();
        async move {
            let mut request = scoring.req(replay);
            request.set_timeout(deadline);
            scoring.public().simulate_scoring_model(request).await
        }
    };
    let holder = freeze_lifecycle(&mut system).await;
    // Waits for the frozen lifecycle (up to its client timeout).
    let first = simulate.clone();
    let probing = Arc::new(AtomicBool::new(true));
    let waiting = hold_while_probed(&probing, move || first(Duration::from_secs(5)));
    let refused = eventually_within(
        Duration::from_secs(4),
        "a replay refused OVERLOADED",
        async || match simulate.clone()(Duration::from_millis(300)).await {
            Err(status) if reason(&status).as_deref() == Some("OVERLOADED") => Ok(status),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("simulation.max_in_flight"),
        "{refused:?}"
    );
    // The streamed replay counts against the same bound.
    let streamed = eventually_within(
        Duration::from_secs(4),
        "a streamed replay refused OVERLOADED",
        async || {
            let scoring = system.scoring();
            let mut request = scoring.req(pb::SimulateScoringModelStreamRequest {
                model: replay.model.clone(),
                thresholds: replay.thresholds,
                start_time: None,
                end_time: None,
                sample_size: 0,
            });
            request.set_timeout(Duration::from_millis(300));
            match scoring
                .public()
                .simulate_scoring_model_stream(request)
                .await
            {
                Err(status) if reason(&status).as_deref() == Some("OVERLOADED") => Ok(status),
                other => Err(format!("{:?}", other.map(|_| "a stream"))),
            }
        },
    )
    .await;
    assert_eq!(streamed.code(), Code::Unavailable, "{streamed:?}");
    // A malformed request is told all that is wrong (a tester was told
    // only of the model), bound or not.
    let mut twice = replay.model.clone().expect("a model");
    twice.rules.push(twice.rules[0].clone());
    let repeated = format!("model.rules[{}].activity_type", twice.rules.len() - 1);
    let mut malformed = system.scoring().req(pb::SimulateScoringModelRequest {
        model: Some(twice),
        thresholds: None,
        sample_size: 5000,
        ..replay.clone()
    });
    malformed.set_timeout(Duration::from_secs(2));
    let malformed = system
        .scoring()
        .public()
        .simulate_scoring_model(malformed)
        .await
        .expect_err("no thresholds");
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");
    assert_eq!(
        violated_fields(&malformed),
        [repeated.as_str(), "thresholds", "sample_size"],
        "{malformed:?}"
    );
    probing.store(false, Ordering::SeqCst);
    waiting
        .await
        .expect("the task")
        .expect_err("lifecycle frozen");

    holder.abort();
    system.start_lifecycle().await;
    simulate(Duration::from_secs(10))
        .await
        .expect("a replay once the first has answered");
    system.stop().await;
}

async fn two_replicas_count_like_one(db: TestDatabase) {
    let mut system = TestSystem::scoring_on(&db).await;
    system.add_scoring(&db).await;
    let lifecycle = system.lifecycle();
    let id = lifecycle
        .create_account("Replicated", OWNER)
        .await
        .account_id;
    let mut contacts = Vec::new();
    for n in 0..4 {
        contacts.push(
            lifecycle
                .create_contact(&id, &format!("p{n}@replicated.example"))
                .await
                .contact_id,
        );
    }
    let batch: Vec<pb::Activity> = (0..200)
        .map(|i| {
            activity(
                &format!("r{i}"),
                if i % 2 == 0 {
                    "email_open"
                } else {
                    "web_page_visit"
                },
                &id,
                &contacts[i % 4],
            )
        })
        .collect();
    let (one, two) = (system.scoring_at(0), system.scoring_at(1));
    let mut tasks = Vec::new();
    for chunk in batch.chunks(50) {
        let (a, b, chunk_a, chunk_b) = (one.clone(), two.clone(), chunk.to_vec(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            tokio::join!(a.record(chunk_a), b.record(chunk_b))
        }));
    }
    let mut recorded = 0;
    for task in tasks {
        let (x, y) = task.await.expect("task");
        recorded += x.recorded_count + y.recorded_count;
        assert_eq!(
            x.recorded_count + x.duplicate_count + y.recorded_count + y.duplicate_count,
            100
        );
    }
    assert_eq!(
        recorded, 200,
        "each activity stored once across both replicas"
    );
    // 100 opens x 2 + 100 visits x 4.
    assert_eq!(one.score(&id).await.engagement_score, 600.0);
    assert_eq!(two.score(&id).await.engagement_score, 600.0);
    let account = lifecycle.wait_for_stage(&id, S::Prioritized).await;
    let final_account = lifecycle
        .wait_for_account(&id, "lifecycle to get the final totals", |a| {
            a.engagement_score == 600.0
        })
        .await;
    assert_eq!(
        final_account.engagement_score, 600.0,
        "lifecycle got the final totals"
    );
    assert_eq!(account.stage, S::Prioritized as i32);
    system.stop().await;
}

/// One replica commits two groups side by side on PostgreSQL: the same
/// batches sent at once are still stored once (the second insert of an id
/// fails, and its group is retried checking first).
async fn one_replica_stores_a_batch_sent_at_once_once(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle.create_account("Twice", OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@twice.example")
        .await
        .contact_id;
    let batch: Vec<pb::Activity> = (0..120)
        .map(|i| activity(&format!("t{i}"), "email_open", &id, &ann))
        .collect();
    let mut tasks = Vec::new();
    for chunk in batch.chunks(40) {
        for _ in 0..3 {
            let (scoring, chunk) = (scoring.clone(), chunk.to_vec());
            tasks.push(tokio::spawn(async move { scoring.record(chunk).await }));
        }
    }
    let (mut recorded, mut duplicates) = (0, 0);
    for task in tasks {
        let answer = task.await.expect("task");
        recorded += answer.recorded_count;
        duplicates += answer.duplicate_count;
    }
    assert_eq!((recorded, duplicates), (120, 240), "each id stored once");
    // 120 opens at 2 points each.
    assert_eq!(scoring.score(&id).await.engagement_score, 240.0);
    system.stop().await;
}

async fn streaming_ingests_chunks(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle.create_account("Streamed", OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@streamed.example")
        .await
        .contact_id;
    let chunks: Vec<pb::StreamActivitiesRequest> = (0..3)
        .map(|c| pb::StreamActivitiesRequest {
            activities: (0..10)
                .map(|i| {
                    let mut a = activity(&format!("st{c}-{i}"), "web_page_visit", &id, &ann);
                    if c == 2 && i == 9 {
                        a.event_id = String::new(); // one bad item
                    }
                    a
                })
                .collect(),
        })
        .collect();
    // The first chunk again at the end: all duplicates.
    let mut all = chunks.clone();
    all.push(chunks[0].clone());
    let response = scoring
        .public()
        .stream_activities(scoring.req(tokio_stream::iter(all)))
        .await
        .expect("stream accepted")
        .into_inner();
    assert_eq!(
        (
            response.recorded_count,
            response.duplicate_count,
            response.rejected_count
        ),
        (29, 10, 1)
    );
    // Named by its place in the stream: the 10th of the third chunk.
    assert_eq!(
        response.rejected[0].violations[0].field,
        "activities[29].event_id"
    );
    assert_eq!(scoring.score(&id).await.engagement_score, 29.0 * 4.0);

    // A unary call naming an unknown email is NOT_FOUND.
    let unknown = by_email("u", "email_open", "nobody@unknown.example");
    let status = scoring
        .public()
        .record_activity(scoring.req(pb::RecordActivityRequest {
            activity: Some(unknown),
        }))
        .await
        .expect_err("unknown email");
    assert_eq!(status.code(), Code::NotFound);
    // ... naming the email, and why nothing was found for it.
    let info = {
        use tonic_types::StatusExt;
        status.get_details_resource_info().expect("ResourceInfo")
    };
    assert_eq!(
        (info.resource_type.as_str(), info.resource_name.as_str()),
        ("contact email", "nobody@unknown.example"),
        "{status:?}"
    );
    assert!(
        status
            .message()
            .ends_with(": no contact has this email, nor an account its domain"),
        "{status:?}"
    );
    system.stop().await;
}

/// Score reads take the model from a cache per replica, keyed by the
/// version their own statement reads: a model stored through one replica
/// scores the very next read on the other, each time it changes.
async fn a_model_change_scores_the_next_read_on_any_replica(db: TestDatabase) {
    let mut system = TestSystem::scoring_on(&db).await;
    system.add_scoring(&db).await;
    let lifecycle = system.lifecycle();
    let id = lifecycle
        .create_account("Remodelled", OWNER)
        .await
        .account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@remodelled.example")
        .await
        .contact_id;
    let (one, two) = (system.scoring_at(0), system.scoring_at(1));
    let mut old_demo = activity("old", "demo_request", &id, &ann);
    old_demo.occur_time = Some(days_ago(20));
    one.record(vec![old_demo]).await;
    // The default model does not decay.
    assert_eq!(one.score(&id).await.engagement_score, 100.0);
    // 100 points 20 days ago: half-life 10 leaves 25, 20 leaves 50, none 100.
    for (half_life, expected) in [(10.0, 25.0), (20.0, 50.0), (0.0, 100.0)] {
        two.change_model(|model| model.decay_half_life_days = half_life)
            .await;
        assert_eq!(
            one.score(&id).await.engagement_score,
            expected,
            "the other replica, half-life {half_life}"
        );
        assert_eq!(
            two.score(&id).await.engagement_score,
            expected,
            "the changing replica, half-life {half_life}"
        );
    }
    system.stop().await;
}

on_each_database!(
    streaming_ingests_chunks,
    source_example_prioritizes_the_account,
    duplicates_are_counted_once,
    caps_and_decay_follow_the_model,
    a_batch_with_bad_items_keeps_the_good_ones,
    the_ledger_sums_to_the_score,
    the_stored_score_answers_like_the_activities,
    simulation_matches_a_hand_computed_scenario,
    simulation_compares_with_the_scores_accounts_have,
    simulation_replays_what_ingest_scored,
    nothing_is_lost_while_lifecycle_is_down,
    two_replicas_count_like_one,
    one_replica_stores_a_batch_sent_at_once_once,
    ids_are_checked_per_item,
    emails_while_lifecycle_is_down_are_retryable,
    a_frozen_lifecycle_is_bounded_by_the_callers_deadline,
    activities_in_flight_are_bounded,
    simulations_in_flight_are_bounded,
    engaged_contacts_follow_batches,
    a_model_change_scores_the_next_read_on_any_replica,
    an_email_given_to_another_person_resolves_to_them,
    a_repeated_event_id_creates_no_one,
    every_hand_raised_in_one_batch_is_told,
    a_first_occurrence_rule_counts_what_came_before_it,
    a_window_replays_the_model_in_force_unchanged,
    a_model_change_reaches_lifecycle_without_new_activity,
);

/// Lifecycle is told the scores a model change gives, without waiting for
/// an activity or the decay refresh (hourly): a tester saw it keep the old
/// score, which a Nurture then took as its baseline.
async fn a_model_change_reaches_lifecycle_without_new_activity(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle.create_account("Decaying", OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@decaying.example")
        .await
        .contact_id;
    let mut old = activity("old", "webinar_attended", &id, &ann);
    old.occur_time = Some(days_ago(60));
    scoring
        .record(vec![activity("now", "demo_request", &id, &ann), old])
        .await;
    lifecycle
        .wait_for_account(&id, "125 points", |a| a.engagement_score == 125.0)
        .await;
    scoring
        .change_model(|model| model.decay_half_life_days = 30.0)
        .await;
    // The webinar, two half-lives old, now counts a quarter of its 25.
    lifecycle
        .wait_for_account(&id, "the decayed score", |a| a.engagement_score == 106.25)
        .await;
    system.stop().await;
}

/// Simulating the model in force over a window shows no change, even when
/// a first occurrence fell before the window: the replay reads what the
/// window's people did before it (a tester saw a change that was not).
async fn a_window_replays_the_model_in_force_unchanged(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let model = scoring
        .change_model(|model| {
            for rule in &mut model.rules {
                if rule.activity_type == "webinar_attended" {
                    rule.first_occurrence_only = true;
                }
            }
        })
        .await;
    let id = lifecycle.create_account("Windowed", OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@windowed.example")
        .await
        .contact_id;
    let mut first = activity("ww1", "webinar_attended", &id, &ann);
    first.occur_time = Some(days_ago(30));
    let mut again = activity("ww2", "webinar_attended", &id, &ann);
    again.occur_time = Some(days_ago(2));
    scoring.record(vec![first]).await;
    scoring.record(vec![again]).await;
    let result = simulate(&scoring, model, 100.0, Some(days_ago(10))).await;
    assert_eq!(
        (result.changed_account_count, result.activity_count),
        (0, 1),
        "{result:?}"
    );
    assert_eq!(result.current_counts, result.proposed_counts);
    system.stop().await;
}

/// PostgreSQL only (SQLite's writers take turns): a batch written under the
/// old model while a rule is made first-occurrence is counted by the
/// change, which waits for it. Before, the change's backfill missed it and
/// the person's next webinar earned its points again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_written_during_a_model_change_is_counted_by_it_on_postgres() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle.create_account("Webinars", OWNER).await.account_id;
    let bob = lifecycle
        .create_contact(&id, "bob@webinars.example")
        .await
        .contact_id;
    scoring
        .record(vec![activity("w0", "pricing_page_visit", &id, &bob)])
        .await;
    let before = scoring.score(&id).await.engagement_score;

    // Another connection keeps activities from being written: Bob's first
    // webinar waits inside its transaction, under the old model.
    let url = db.settings.url.clone();
    let blocker = sea_orm::Database::connect(url.as_str())
        .await
        .expect("the scoring database");
    let block = sea_orm::TransactionTrait::begin(&blocker)
        .await
        .expect("a transaction");
    block
        .execute_unprepared("LOCK TABLE activities IN SHARE MODE")
        .await
        .expect("the table locked");
    let first = tokio::spawn({
        let (scoring, id, bob) = (scoring.clone(), id.clone(), bob.clone());
        async move {
            scoring
                .record(vec![activity("w1", "webinar_attended", &id, &bob)])
                .await
        }
    });
    someone_waits_for_a_lock(&url, Some("relation")).await;
    let change = tokio::spawn({
        let scoring = scoring.clone();
        async move {
            scoring
                .change_model(|model| {
                    for rule in &mut model.rules {
                        if rule.activity_type == "webinar_attended" {
                            rule.first_occurrence_only = true;
                        }
                    }
                })
                .await
        }
    });
    // The change waits for the batch (the model lock)...
    someone_waits_for_a_lock(&url, Some("advisory")).await;
    assert!(!change.is_finished());
    block.commit().await.expect("the table released");
    // ...which is written under the old model, then the change is made.
    assert_eq!(first.await.expect("the batch").recorded_count, 1);
    change.await.expect("the change");
    scoring
        .record(vec![activity("w2", "webinar_attended", &id, &bob)])
        .await;
    // Bob's first webinar counted 25; his second, under the new rule, nothing.
    assert_eq!(scoring.score(&id).await.engagement_score, before + 25.0);
    system.stop().await;
}

/// A rule made first-occurrence counts an activity recorded before it as
/// the first: a tester saw the next webinar earn its points again.
async fn a_first_occurrence_rule_counts_what_came_before_it(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle.create_account("Webinars", OWNER).await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@webinars.example")
        .await
        .contact_id;
    let bob = lifecycle
        .create_contact(&id, "bob@webinars.example")
        .await
        .contact_id;
    scoring
        .record(vec![activity("w1", "webinar_attended", &id, &ann)])
        .await;
    assert_eq!(scoring.score(&id).await.engagement_score, 25.0);
    scoring
        .change_model(|model| {
            for rule in &mut model.rules {
                if rule.activity_type == "webinar_attended" {
                    rule.first_occurrence_only = true;
                }
            }
        })
        .await;
    scoring
        .record(vec![
            activity("w2", "webinar_attended", &id, &ann),
            activity("w3", "webinar_attended", &id, &bob),
        ])
        .await;
    // Ann's second counts nothing; Bob's first counts.
    assert_eq!(scoring.score(&id).await.engagement_score, 50.0);
    system.stop().await;
}

/// Three people raising hands in one batch on a PRIORITIZED account are
/// three notifications to its owner: a tester saw only the first of a
/// delivery told (the others became MARKETING_QUALIFIED unannounced).
async fn every_hand_raised_in_one_batch_is_told(db: TestDatabase) {
    use cascade_proto::lifecycle::v1 as lc;
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    lifecycle
        .set_settings(
            lc::LifecycleSettings {
                renotify_on_hand_raise: true,
                ..Default::default()
            },
            &["renotify_on_hand_raise"],
        )
        .await;
    let id = lifecycle
        .create_account_with(account("Raisers", "raisers.example", OWNER))
        .await
        .account_id;
    scoring
        .record_one(by_email("h0", "demo_request", "first@raisers.example"))
        .await;
    lifecycle.wait_for_stage(&id, S::Prioritized).await;
    let raisers = ["p", "q", "r"].map(|n| format!("{n}@raisers.example"));
    scoring
        .record(
            raisers
                .iter()
                .enumerate()
                .map(|(i, email)| by_email(&format!("h{}", i + 1), "demo_request", email))
                .collect(),
        )
        .await;
    let told = eventually_within(
        Duration::from_secs(10),
        "three hand-raise notifications",
        async || {
            let mut told: Vec<String> = lifecycle
                .notifications(&id)
                .await
                .into_iter()
                .filter(|n| n.reason == lc::NotificationReason::HandRaise as i32)
                .map(|n| n.text)
                .collect();
            told.sort();
            if told.len() >= 3 { Ok(told) } else { Err(told) }
        },
    )
    .await;
    let named: Vec<&str> = told
        .iter()
        .map(|t| t.split_once(' ').map_or("", |(who, _)| who))
        .collect();
    assert_eq!(
        named,
        raisers.iter().map(String::as_str).collect::<Vec<_>>(),
        "{told:?}"
    );
    system.stop().await;
}

/// A repeat of an activity recorded before, or a reuse of its event id,
/// names a new person by email: it is answered (DUPLICATE, or refused on
/// `event_id`) and no contact is created for that email (a tester found
/// phantom people in lifecycle after such calls).
async fn a_repeated_event_id_creates_no_one(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let id = lifecycle
        .create_account_with(account("Initech", "initech-dup.example", OWNER))
        .await
        .account_id;
    let first = scoring
        .record_one(by_email("evt-1", "demo_request", "ann@initech-dup.example"))
        .await
        .result
        .expect("result");
    assert_eq!(first.status, pb::ActivityStatus::Recorded as i32);
    let repeat = scoring
        .record_one(by_email("evt-1", "demo_request", "bob@initech-dup.example"))
        .await
        .result
        .expect("result");
    assert_eq!(repeat.status, pb::ActivityStatus::Duplicate as i32);
    let reused = scoring
        .public()
        .record_activity(scoring.req(pb::RecordActivityRequest {
            activity: Some(by_email("evt-1", "email_open", "carl@initech-dup.example")),
        }))
        .await
        .expect_err("an event id reused for another activity");
    assert_eq!(reused.code(), Code::InvalidArgument);
    // In one batch, repeats of an id new to scoring (a tester saw each
    // create its person): answered as the first, creating no one.
    let batch = scoring
        .record(vec![
            by_email("evt-1", "email_open", "dan@initech-dup.example"),
            by_email("evt-2", "email_open", "eve@initech-dup.example"),
            by_email("evt-2", "email_open", "fay@initech-dup.example"),
            by_email("evt-2", "demo_request", "gus@initech-dup.example"),
            by_email("evt-3", "email_open", "nobody@elsewhere.example"),
            by_email("evt-3", "email_open", "hal@initech-dup.example"),
        ])
        .await;
    assert_eq!(
        batch.results.iter().map(|r| r.status).collect::<Vec<_>>(),
        [
            pb::ActivityStatus::Rejected as i32,
            pb::ActivityStatus::Recorded as i32,
            pb::ActivityStatus::Duplicate as i32,
            pb::ActivityStatus::Rejected as i32,
            pb::ActivityStatus::NotFound as i32,
            pb::ActivityStatus::Rejected as i32,
        ]
    );
    assert_eq!(batch.results[2].contact_id, batch.results[1].contact_id);
    let violations_of = |result: &pb::ActivityResult| -> Vec<(String, String)> {
        result
            .violations
            .iter()
            .map(|v| (v.field.clone(), v.description.clone()))
            .collect()
    };
    assert_eq!(
        violations_of(&batch.results[5]),
        [(
            "activities[5].event_id".to_owned(),
            "repeats the event id of activities[4].event_id, which was refused".to_owned()
        )]
    );
    let people: Vec<String> = lifecycle
        .public()
        .list_contacts(
            lifecycle.req(cascade_proto::lifecycle::v1::ListContactsRequest {
                account_id: id.clone(),
                ..Default::default()
            }),
        )
        .await
        .expect("contacts")
        .into_inner()
        .contacts
        .into_iter()
        .map(|c| c.email)
        .collect();
    assert_eq!(
        people,
        ["ann@initech-dup.example", "eve@initech-dup.example"],
        "only the people of activities recorded"
    );
    system.stop().await;
}

/// Scoring remembers whom an email resolved to for `email_cache_ttl_ms` (60 s
/// here, as by default). When the email moves to another person, lifecycle
/// records the change for scoring, which forgets the old owner: the next
/// activity by the email goes to the new one within a poll, not a minute.
async fn an_email_given_to_another_person_resolves_to_them(db: TestDatabase) {
    use cascade_proto::lifecycle::v1 as lc;
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let cache = lifecycle
        .create_account_with(account("Cache", "cache.example", OWNER))
        .await
        .account_id;
    let other = lifecycle
        .create_account_with(account("Other", "other.example", OWNER))
        .await
        .account_id;
    let x = lifecycle
        .create_contact(&cache, "a@cache.example")
        .await
        .contact_id;
    let first = scoring
        .record(vec![by_email("k1", "email_open", "a@cache.example")])
        .await;
    assert_eq!(first.results[0].contact_id, x, "{first:?}");

    lifecycle
        .public()
        .update_contact(lifecycle.req(lc::UpdateContactRequest {
            contact: Some(lc::Contact {
                contact_id: x.clone(),
                email: "x2@cache.example".into(),
                ..Default::default()
            }),
            update_mask: cascade_testkit::fixtures::mask(&["email"]),
        }))
        .await
        .expect("X's email changed");
    let y = lifecycle
        .create_contact(&other, "a@cache.example")
        .await
        .contact_id;

    let mut attempt = 0;
    let landed = eventually_within(
        Duration::from_secs(15),
        "the email resolving to Y",
        async || {
            attempt += 1;
            let sent = scoring
                .record(vec![by_email(
                    &format!("k-after-{attempt}"),
                    "email_open",
                    "a@cache.example",
                )])
                .await;
            let result = &sent.results[0];
            if result.contact_id == y {
                Ok(result.account_id.clone())
            } else {
                Err(result.contact_id.clone())
            }
        },
    )
    .await;
    assert_eq!(landed, other);
    system.stop().await;
}
