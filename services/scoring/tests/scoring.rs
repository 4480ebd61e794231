//! Scoring over real gRPC with a real lifecycle service, on SQLite and
//! PostgreSQL: the source document's example, duplicates, caps and decay,
//! batches with bad items, email resolution, the ledger, simulation,
//! delivery while lifecycle is down, and two scoring replicas.

use std::time::Duration;

use cascade_chassis::settings::ServiceSettings;
use cascade_proto::common::v1::AccountStage as S;
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use cascade_proto::scoring::v1 as pb;
use cascade_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use cascade_testkit::on_each_database;
use cascade_testkit::{TestDatabase, TestServer, request_for};
use tonic::Code;
use tonic::transport::Channel;

const T: &str = "acme";

type Lifecycle = LifecycleServiceClient<Channel>;
type Scoring = ScoringServiceClient<Channel>;

/// Each test gets its own lifecycle database next to scoring's.
struct Suite {
    lifecycle_db: TestDatabase,
    lifecycle: Option<TestServer>,
    lifecycle_port: u16,
    scoring: Vec<TestServer>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Suite {
    async fn start(scoring_db: &TestDatabase, backend_like: &TestDatabase) -> Self {
        let lifecycle_db = if backend_like.settings.is_sqlite() {
            TestDatabase::sqlite()
        } else {
            TestDatabase::postgres().await.expect("postgres configured")
        };
        let mut suite = Self {
            lifecycle_db,
            lifecycle: None,
            lifecycle_port: free_port(),
            scoring: Vec::new(),
        };
        suite.start_lifecycle().await;
        suite.start_scoring(scoring_db).await;
        suite
    }

    async fn start_lifecycle(&mut self) {
        let mut settings = ServiceSettings::for_tests(self.lifecycle_db.settings.clone());
        settings.server.port = self.lifecycle_port;
        let app = cascade_lifecycle::build(&settings)
            .await
            .expect("lifecycle builds");
        self.lifecycle = Some(TestServer::start(app));
    }

    async fn stop_lifecycle(&mut self) {
        if let Some(server) = self.lifecycle.take() {
            server.stop().await;
        }
    }

    async fn start_scoring(&mut self, db: &TestDatabase) {
        let mut settings = cascade_scoring::Settings::for_tests(db.settings.clone());
        settings.own.lifecycle.url = format!("http://127.0.0.1:{}", self.lifecycle_port);
        let app = cascade_scoring::build(&settings)
            .await
            .expect("scoring builds");
        self.scoring.push(TestServer::start(app));
    }

    async fn stop_scoring(&mut self) {
        for server in self.scoring.drain(..) {
            server.stop().await;
        }
    }

    fn lifecycle(&self) -> Lifecycle {
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "http://127.0.0.1:{}",
            self.lifecycle_port
        ))
        .expect("url")
        .connect_lazy();
        LifecycleServiceClient::new(channel)
    }

    fn scoring(&self, n: usize) -> Scoring {
        ScoringServiceClient::new(self.scoring[n].channel())
    }

    async fn stop(mut self) {
        self.stop_scoring().await;
        self.stop_lifecycle().await;
    }
}

async fn account(lifecycle: &mut Lifecycle, name: &str, domain: &str) -> String {
    lifecycle
        .create_account(request_for(
            T,
            lc::CreateAccountRequest {
                account: Some(lc::Account {
                    name: name.into(),
                    domain: domain.into(),
                    owner_id: "owner@seller.example".into(),
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
        .account_id
}

async fn contact(lifecycle: &mut Lifecycle, account_id: &str, email: &str) -> String {
    lifecycle
        .create_contact(request_for(
            T,
            lc::CreateContactRequest {
                contact: Some(lc::Contact {
                    account_id: account_id.into(),
                    email: email.into(),
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
        .contact_id
}

fn now_minus_days(days: i64) -> prost_types::Timestamp {
    cascade_chassis::time::to_timestamp(cascade_chassis::time::now() - chrono::Duration::days(days))
}

fn activity(event_id: &str, kind: &str, account_id: &str, contact_id: &str) -> pb::Activity {
    pb::Activity {
        event_id: event_id.into(),
        activity_type: kind.into(),
        occur_time: Some(now_minus_days(0)),
        account_id: account_id.into(),
        contact_id: contact_id.into(),
        contact_email: String::new(),
    }
}

async fn record(
    scoring: &mut Scoring,
    activities: Vec<pb::Activity>,
) -> pb::RecordActivitiesResponse {
    scoring
        .record_activities(request_for(T, pb::RecordActivitiesRequest { activities }))
        .await
        .expect("batch accepted")
        .into_inner()
}

async fn score(scoring: &mut Scoring, account_id: &str) -> pb::AccountScore {
    scoring
        .get_account_score(request_for(
            T,
            pb::GetAccountScoreRequest {
                account_id: account_id.into(),
            },
        ))
        .await
        .expect("score")
        .into_inner()
        .score
        .expect("score")
}

/// The tenant's current scoring model.
async fn current_model(scoring: &mut Scoring) -> pb::ScoringModel {
    scoring
        .get_scoring_model(request_for(T, pb::GetScoringModelRequest { version: 0 }))
        .await
        .expect("model")
        .into_inner()
        .model
        .expect("model")
}

/// The current model, changed by `change`, stored as the next version.
async fn change_model(
    scoring: &mut Scoring,
    change: impl FnOnce(&mut pb::ScoringModel),
) -> pb::ScoringModel {
    let mut model = current_model(scoring).await;
    change(&mut model);
    scoring
        .update_scoring_model(request_for(
            T,
            pb::UpdateScoringModelRequest { model: Some(model) },
        ))
        .await
        .expect("model updated")
        .into_inner()
        .model
        .expect("model")
}

/// Asserts scoring stored nothing for the account (its score is NOT_FOUND).
async fn assert_no_score(scoring: &mut Scoring, account_id: &str) {
    let status = scoring
        .get_account_score(request_for(
            T,
            pb::GetAccountScoreRequest {
                account_id: account_id.into(),
            },
        ))
        .await
        .expect_err("nothing stored for the account");
    assert_eq!(status.code(), Code::NotFound, "{account_id}: {status:?}");
}

/// A batch the service refuses whole; its status.
async fn refused_batch(
    scoring: &mut Scoring,
    request: tonic::Request<pb::RecordActivitiesRequest>,
) -> tonic::Status {
    scoring
        .record_activities(request)
        .await
        .expect_err("the batch is refused whole")
}

/// Waits (bounded) until lifecycle shows the account at `stage`.
async fn wait_for_stage(lifecycle: &mut Lifecycle, account_id: &str, stage: S) -> lc::Account {
    let mut last = None;
    for _ in 0..300 {
        if let Ok(response) = lifecycle
            .get_account(request_for(
                T,
                lc::GetAccountRequest {
                    account_id: account_id.into(),
                },
            ))
            .await
        {
            let account = response.into_inner().account.expect("account");
            if account.stage == stage as i32 {
                return account;
            }
            last = Some(account.stage);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("account never reached {stage:?}; last stage {last:?}");
}

async fn source_example_prioritizes_the_account(db: TestDatabase) {
    let suite = Suite::start(&db, &db).await;
    let (mut lifecycle, mut scoring) = (suite.lifecycle(), suite.scoring(0));
    let id = account(&mut lifecycle, "Initech", "initech.example").await;
    let ann = contact(&mut lifecycle, &id, "ann@initech.example").await;
    let bob = contact(&mut lifecycle, &id, "bob@initech.example").await;
    let cy = contact(&mut lifecycle, &id, "cy@initech.example").await;
    // Individually under 100 (37, 54, 25); together 116.
    let batch = vec![
        activity("e1", "webinar_attended", &id, &ann),
        activity("e2", "case_study_download", &id, &ann),
        activity("e3", "email_open", &id, &ann),
        activity("e4", "pricing_page_visit", &id, &bob),
        activity("e5", "web_page_visit", &id, &bob),
        activity("e6", "webinar_attended", &id, &cy),
    ];
    let response = record(&mut scoring, batch).await;
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

    let total = score(&mut scoring, &id).await;
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
            .get_contact_score(request_for(
                T,
                pb::GetContactScoreRequest {
                    contact_id: contact_id.clone(),
                },
            ))
            .await
            .expect("contact score")
            .into_inner()
            .score
            .expect("score");
        assert_eq!(s.engagement_score, expected);
        assert!(s.engagement_score < 100.0);
    }

    let prioritized = wait_for_stage(&mut lifecycle, &id, S::Prioritized).await;
    assert_eq!(prioritized.engagement_score, 116.0);
    let ann_in_lifecycle = lifecycle
        .get_contact(request_for(
            T,
            lc::GetContactRequest {
                contact_id: ann.clone(),
            },
        ))
        .await
        .expect("contact")
        .into_inner()
        .contact
        .expect("contact");
    assert_eq!(ann_in_lifecycle.engagement_score, 37.0);
    suite.stop().await;
}

async fn duplicates_are_counted_once(db: TestDatabase) {
    let suite = Suite::start(&db, &db).await;
    let (mut lifecycle, mut scoring) = (suite.lifecycle(), suite.scoring(0));
    let id = account(&mut lifecycle, "Dup", "").await;
    let ann = contact(&mut lifecycle, &id, "ann@dup.example").await;
    let first = record(
        &mut scoring,
        vec![
            activity("d1", "webinar_attended", &id, &ann),
            activity("d1", "webinar_attended", &id, &ann),
        ],
    )
    .await;
    assert_eq!((first.recorded_count, first.duplicate_count), (1, 1));
    let again = scoring
        .record_activity(request_for(
            T,
            pb::RecordActivityRequest {
                activity: Some(activity("d1", "webinar_attended", &id, &ann)),
            },
        ))
        .await
        .expect("accepted")
        .into_inner()
        .result
        .expect("result");
    assert_eq!(again.status, pb::ActivityStatus::Duplicate as i32);
    assert_eq!(
        (again.account_id.as_str(), again.points),
        (id.as_str(), 25.0)
    );
    assert_eq!(score(&mut scoring, &id).await.engagement_score, 25.0);

    // A batch mixing a stored id with new ones: the first attempt's insert
    // finds the stored one, is rolled back, and the retry checks first. The
    // stored one counts nothing twice; the new ones are scored as if alone
    // (the second webinar of the day is capped like any repeat).
    let mixed = record(
        &mut scoring,
        vec![
            activity("d2", "webinar_attended", &id, &ann),
            activity("d1", "webinar_attended", &id, &ann),
            activity("d3", "email_open", &id, &ann),
        ],
    )
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
    assert_eq!(
        score(&mut scoring, &id).await.engagement_score,
        25.0 + added
    );
    suite.stop().await;
}

async fn caps_and_decay_follow_the_model(db: TestDatabase) {
    let suite = Suite::start(&db, &db).await;
    let (mut lifecycle, mut scoring) = (suite.lifecycle(), suite.scoring(0));
    let id = account(&mut lifecycle, "Capped", "").await;
    let ann = contact(&mut lifecycle, &id, "ann@capped.example").await;
    let updated = change_model(&mut scoring, |model| {
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
    old_demo.occur_time = Some(now_minus_days(20));
    let response = record(
        &mut scoring,
        vec![
            activity("o1", "email_open", &id, &ann),
            activity("o2", "email_open", &id, &ann),
            activity("o3", "email_open", &id, &ann),
            activity("w1", "webinar_attended", &id, &ann),
            activity("w2", "webinar_attended", &id, &ann),
            activity("u1", "unsubscribe", &id, &ann),
            old_demo,
        ],
    )
    .await;
    let points: Vec<f64> = response.results.iter().map(|r| r.points).collect();
    assert_eq!(
        points,
        [2.0, 1.0, 0.0, 25.0, 0.0, -5.0, 100.0],
        "cap 3/day; first webinar only"
    );
    // 2 + 1 + 25 - 5 today, and 100 from 20 days ago at half-life 10: 25.
    let total = score(&mut scoring, &id).await;
    assert_eq!(total.engagement_score, 48.0);

    let ledger = scoring
        .explain_account_score(request_for(
            T,
            pb::ExplainAccountScoreRequest {
                account_id: id.clone(),
                page_size: 100,
                page_token: String::new(),
            },
        ))
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
    wait_for_score(&mut lifecycle, &id, 48.0, 48.0).await;

    // A second batch the same day adds to the stored score: what lifecycle
    // receives matches what the buckets give.
    let bob = contact(&mut lifecycle, &id, "bob@capped.example").await;
    record(
        &mut scoring,
        vec![
            activity("d2", "demo_request", &id, &ann),
            activity("k1", "email_click", &id, &bob),
        ],
    )
    .await;
    let total = score(&mut scoring, &id).await;
    assert_eq!(
        (total.engagement_score, total.engaged_contact_count),
        (150.0, 2)
    );
    wait_for_score(&mut lifecycle, &id, 150.0, 75.0).await;

    // Without decay the old demo counts in full again: the stored scores
    // were computed with the old half-life, so the next batch recomputes.
    let mut model = updated;
    model.decay_half_life_days = 0.0;
    scoring
        .update_scoring_model(request_for(
            T,
            pb::UpdateScoringModelRequest { model: Some(model) },
        ))
        .await
        .expect("model updated");
    assert_eq!(score(&mut scoring, &id).await.engagement_score, 225.0);
    record(&mut scoring, vec![activity("k2", "email_click", &id, &bob)]).await;
    assert_eq!(score(&mut scoring, &id).await.engagement_score, 227.0);
    wait_for_score(&mut lifecycle, &id, 227.0, 113.5).await;
    suite.stop().await;
}

/// The stored scores each batch adds to (what lifecycle is sent) count a
/// contact as engaged once, whatever the batches: a contact with intent
/// activity only is not engaged until it has engagement (activities without
/// a contact are intent), and every step agrees with the score computed
/// from all the activities (GetAccountScore).
async fn engaged_contacts_follow_batches(db: TestDatabase) {
    let suite = Suite::start(&db, &db).await;
    let (mut lifecycle, mut scoring) = (suite.lifecycle(), suite.scoring(0));
    let id = account(&mut lifecycle, "Engaged", "").await;
    let ann = contact(&mut lifecycle, &id, "ann@engaged.example").await;
    let bob = contact(&mut lifecycle, &id, "bob@engaged.example").await;
    let cy = contact(&mut lifecycle, &id, "cy@engaged.example").await;
    change_model(&mut scoring, |model| {
        model.rules.push(pb::ScoringRule {
            activity_type: "web_research".into(),
            points: 10,
            daily_cap_per_contact: 0,
            first_occurrence_only: false,
        });
        model.intent_activity_types = vec!["web_research".into()];
    })
    .await;

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
    ];
    for (batch, engagement, engaged) in batches {
        let response = record(&mut scoring, batch).await;
        assert_eq!(response.rejected_count, 0, "{response:?}");
        let computed = score(&mut scoring, &id).await;
        assert_eq!(
            (computed.engagement_score, computed.engaged_contact_count),
            (engagement, engaged)
        );
        wait_for_score(
            &mut lifecycle,
            &id,
            engagement,
            engagement / f64::from(engaged),
        )
        .await;
    }
    assert_eq!(score(&mut scoring, &id).await.intent_score, 28.0);
    suite.stop().await;
}

/// Waits (bounded) until lifecycle shows the account with these scores.
async fn wait_for_score(
    lifecycle: &mut Lifecycle,
    account_id: &str,
    engagement: f64,
    average: f64,
) {
    let mut last = None;
    for _ in 0..300 {
        let account = lifecycle
            .get_account(request_for(
                T,
                lc::GetAccountRequest {
                    account_id: account_id.into(),
                },
            ))
            .await
            .expect("account")
            .into_inner()
            .account
            .expect("account");
        let seen = (account.engagement_score, account.average_engagement_score);
        if seen == (engagement, average) {
            return;
        }
        last = Some(seen);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("lifecycle never showed scores ({engagement}, {average}); last {last:?}");
}

async fn a_batch_with_bad_items_keeps_the_good_ones(db: TestDatabase) {
    let suite = Suite::start(&db, &db).await;
    let (mut lifecycle, mut scoring) = (suite.lifecycle(), suite.scoring(0));
    let id = account(&mut lifecycle, "Globex", "globex.example").await;
    let known = contact(&mut lifecycle, &id, "known@globex.example").await;
    let mut no_type = activity("b2", "", &id, "");
    no_type.activity_type = String::new();
    let mut future = activity("b3", "email_open", &id, &known);
    future.occur_time = Some(prost_types::Timestamp {
        seconds: 4_000_000_000,
        nanos: 0,
    });
    let mut both = activity("b4", "email_open", &id, "");
    both.contact_email = "x@globex.example".into();
    let mut unknown_domain = activity("b5", "email_open", "", "");
    unknown_domain.contact_email = "who@nowhere.example".into();
    let mut by_email = activity("b6", "webinar_attended", "", "");
    by_email.contact_email = "known@globex.example".into();
    let mut new_person = activity("b7", "email_open", "", "");
    new_person.contact_email = "new.person@globex.example".into();
    let response = record(
        &mut scoring,
        vec![
            activity("b1", "email_open", &id, &known),
            no_type,
            future,
            both,
            unknown_domain,
            by_email,
            new_person,
        ],
    )
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
        [ok, rejected, rejected, rejected, not_found, ok, ok]
    );
    assert_eq!(response.rejected_count, 4);
    let field = |i: usize| response.results[i].violations[0].field.clone();
    assert_eq!(field(1), "activities[1].activity_type");
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
    let person = lifecycle
        .get_contact(request_for(
            T,
            lc::GetContactRequest {
                contact_id: created.contact_id.clone(),
            },
        ))
        .await
        .expect("created in lifecycle")
        .into_inner()
        .contact
        .expect("contact");
    assert_eq!(person.email, "new.person@globex.example");
    assert_eq!(
        score(&mut scoring, &id).await.engagement_score,
        2.0 + 25.0 + 2.0
    );

    let empty = scoring
        .record_activities(request_for(
            T,
            pb::RecordActivitiesRequest { activities: vec![] },
        ))
        .await
        .expect_err("empty batch");
    assert_eq!(empty.code(), Code::InvalidArgument);
    let oversized = scoring
        .record_activities(request_for(
            T,
            pb::RecordActivitiesRequest {
                activities: (0..1001)
                    .map(|i| activity(&format!("x{i}"), "email_open", &id, ""))
                    .collect(),
            },
        ))
        .await
        .expect_err("oversized batch");
    assert_eq!(oversized.code(), Code::InvalidArgument);
    suite.stop().await;
}

async fn the_ledger_sums_to_the_score(db: TestDatabase) {
    let suite = Suite::start(&db, &db).await;
    let (mut lifecycle, mut scoring) = (suite.lifecycle(), suite.scoring(0));
    let id = account(&mut lifecycle, "Ledger", "").await;
    let ann = contact(&mut lifecycle, &id, "ann@ledger.example").await;
    let bob = contact(&mut lifecycle, &id, "bob@ledger.example").await;
    let mut batch = vec![
        activity("l1", "demo_request", &id, &ann),
        activity("l2", "email_open", &id, &bob),
        activity("l3", "web_page_visit", &id, ""), // anonymous intent
        activity("l4", "meeting_agreed", &id, &bob),
        activity("l5", "something_new", &id, &ann), // unknown: 0 points, kept
    ];
    batch[1].occur_time = Some(now_minus_days(3));
    record(&mut scoring, batch).await;
    let mut entries = Vec::new();
    let mut token = String::new();
    let score = loop {
        let page = scoring
            .explain_account_score(request_for(
                T,
                pb::ExplainAccountScoreRequest {
                    account_id: id.clone(),
                    page_size: 2,
                    page_token: token,
                },
            ))
            .await
            .expect("ledger page")
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            break page.score.expect("score");
        }
        token = page.next_page_token;
    };
    assert_eq!(entries.len(), 5);
    assert_eq!(entries[0].event_id, "l2", "oldest activity first");
    let engagement: f64 = entries.iter().filter(|e| !e.intent).map(|e| e.points).sum();
    let intent: f64 = entries.iter().filter(|e| e.intent).map(|e| e.points).sum();
    assert_eq!(engagement, score.engagement_score);
    assert_eq!(intent, score.intent_score);
    assert_eq!((score.engagement_score, score.intent_score), (152.0, 4.0));
    suite.stop().await;
}

async fn simulation_matches_a_hand_computed_scenario(db: TestDatabase) {
    let suite = Suite::start(&db, &db).await;
    let (mut lifecycle, mut scoring) = (suite.lifecycle(), suite.scoring(0));
    let a = account(&mut lifecycle, "A", "").await;
    let b = account(&mut lifecycle, "B", "").await;
    let c = account(&mut lifecycle, "C", "").await;
    let ann = contact(&mut lifecycle, &a, "ann@a.example").await;
    let bea = contact(&mut lifecycle, &b, "bea@b.example").await;
    record(
        &mut scoring,
        vec![
            activity("s1", "email_open", &a, &ann),
            activity("s2", "email_open", &a, &ann),
            activity("s3", "email_open", &a, &ann),
            activity("s4", "demo_request", &b, &bea),
            activity("s5", "web_page_visit", &c, ""),
        ],
    )
    .await;
    let mut proposed = current_model(&mut scoring).await;
    for rule in &mut proposed.rules {
        if rule.activity_type == "email_open" {
            rule.points = 40;
        }
    }
    let result = scoring
        .simulate_scoring_model(request_for(
            T,
            pb::SimulateScoringModelRequest {
                model: Some(proposed),
                thresholds: Some(pb::SimulationThresholds {
                    engaged_threshold: 0.0,
                    prioritized_threshold: 100.0,
                }),
                start_time: None,
                end_time: None,
                sample_size: 10,
            },
        ))
        .await
        .expect("simulation")
        .into_inner();
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
    assert_eq!(score(&mut scoring, &a).await.engagement_score, 6.0);
    assert_eq!(current_model(&mut scoring).await.version, 1);
    suite.stop().await;
}

/// Simulation reads activities grouped by contact, type and day; with the
/// current model it must give every account the score ingest gave it, over
/// several days (decay), daily caps, first-occurrence rules and anonymous
/// visits, and a window must leave out what is outside it.
async fn simulation_replays_what_ingest_scored(db: TestDatabase) {
    let suite = Suite::start(&db, &db).await;
    let (mut lifecycle, mut scoring) = (suite.lifecycle(), suite.scoring(0));
    let model = change_model(&mut scoring, |model| {
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
        let id = account(&mut lifecycle, name, "").await;
        let ann = contact(&mut lifecycle, &id, &format!("ann@g{a}.example")).await;
        let bob = contact(&mut lifecycle, &id, &format!("bob@g{a}.example")).await;
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
                    open.occur_time = Some(now_minus_days(days));
                    activities.push(open);
                }
            }
            let mut webinar = activity(&format!("{name}-w-{days}"), "webinar_attended", &id, &ann);
            webinar.occur_time = Some(now_minus_days(days));
            activities.push(webinar);
            let mut visit = activity(&format!("{name}-v-{days}"), "web_page_visit", &id, "");
            visit.occur_time = Some(now_minus_days(days));
            activities.push(visit);
        }
        accounts.push(id);
    }
    let stored = activities.len() as i64;
    record(&mut scoring, activities).await;

    // Same model, thresholds every scored account crosses: each one changes
    // stage, so each shows in the sample with its replayed score.
    let simulator = scoring.clone();
    let simulate = |start_time| {
        let mut scoring = simulator.clone();
        let model = model.clone();
        async move {
            scoring
                .simulate_scoring_model(request_for(
                    T,
                    pb::SimulateScoringModelRequest {
                        model: Some(model),
                        thresholds: Some(pb::SimulationThresholds {
                            engaged_threshold: 0.0,
                            prioritized_threshold: 0.5,
                        }),
                        start_time,
                        end_time: None,
                        sample_size: 10,
                    },
                ))
                .await
                .expect("simulation")
                .into_inner()
        }
    };
    let result = simulate(None).await;
    assert_eq!(result.activity_count, stored);
    assert_eq!(result.changed_account_count, 2);
    for change in &result.sample {
        let live = score(&mut scoring, &change.account_id).await;
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

    let recent = simulate(Some(now_minus_days(5))).await;
    assert_eq!(recent.activity_count, stored - older_than_5_days as i64);
    suite.stop().await;
}

async fn nothing_is_lost_while_lifecycle_is_down(db: TestDatabase) {
    let mut suite = Suite::start(&db, &db).await;
    let mut lifecycle = suite.lifecycle();
    let mut accounts = Vec::new();
    for name in ["L1", "L2"] {
        let id = account(&mut lifecycle, name, "").await;
        let c = contact(
            &mut lifecycle,
            &id,
            &format!("p@{}.example", name.to_lowercase()),
        )
        .await;
        accounts.push((id, c));
    }
    // Scoring checks each person with lifecycle once and remembers them: an
    // activity type of no points introduces them without moving any stage.
    let mut scoring = suite.scoring(0);
    for (i, (id, c)) in accounts.iter().enumerate() {
        let response = record(
            &mut scoring,
            vec![activity(&format!("intro{i}"), "no_points_here", id, c)],
        )
        .await;
        assert_eq!(response.recorded_count, 1);
    }
    suite.stop_lifecycle().await;

    // Lifecycle is down: a person scoring has never checked cannot be
    // recorded, and the batch says retry rather than calling it bad input.
    let refused = refused_batch(
        &mut scoring,
        request_for(
            T,
            pb::RecordActivitiesRequest {
                activities: vec![
                    activity("unchecked", "demo_request", &accounts[0].0, NO_SUCH_ID),
                    activity("checked", "demo_request", &accounts[0].0, &accounts[0].1),
                ],
            },
        ),
    )
    .await;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("no activity was written"),
        "{refused:?}"
    );

    // People already checked: activities are still accepted.
    for (i, (id, c)) in accounts.iter().enumerate() {
        let response = record(
            &mut scoring,
            vec![activity(&format!("a{i}"), "webinar_attended", id, c)],
        )
        .await;
        assert_eq!(response.recorded_count, 1);
    }
    // Scoring restarts in between; the pending deliveries are in its
    // database. What it remembered of people is not: with lifecycle still
    // down, new activities are refused UNAVAILABLE (the client retries).
    suite.stop_scoring().await;
    suite.start_scoring(&db).await;
    let mut scoring = suite.scoring(0);
    let (id, c) = &accounts[0];
    let refused = refused_batch(
        &mut scoring,
        request_for(
            T,
            pb::RecordActivitiesRequest {
                activities: vec![activity("b0", "demo_request", id, c)],
            },
        ),
    )
    .await;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    suite.start_lifecycle().await;
    let mut lifecycle = suite.lifecycle();
    for (i, (id, c)) in accounts.iter().enumerate() {
        // The deliveries kept across the restart arrive ...
        let account = wait_for_stage(&mut lifecycle, id, S::Engaged).await;
        assert_eq!(account.engagement_score, 25.0);
        // ... and the retried batch is recorded once lifecycle answers.
        record(
            &mut scoring,
            vec![activity(&format!("b{i}"), "demo_request", id, c)],
        )
        .await;
    }
    for (id, _) in &accounts {
        let account = wait_for_stage(&mut lifecycle, id, S::Prioritized).await;
        assert_eq!(account.engagement_score, 125.0);
        let transitions = lifecycle
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
        let stages: Vec<i32> = transitions.iter().map(|t| t.to_stage).collect();
        assert_eq!(
            stages,
            [S::Engaged as i32, S::Prioritized as i32],
            "each move once"
        );
    }
    suite.stop().await;
}

const NO_SUCH_ID: &str = "0190a5a0-0000-7000-8000-00000000dead";

/// Every account and contact an activity names must exist in the tenant and
/// belong together; what does not is refused per item and leaves no trace.
async fn ids_are_checked_per_item(db: TestDatabase) {
    let suite = Suite::start(&db, &db).await;
    let (mut lifecycle, mut scoring) = (suite.lifecycle(), suite.scoring(0));
    let a = account(&mut lifecycle, "Alpha", "alpha.example").await;
    let b = account(&mut lifecycle, "Beta", "").await;
    let ca = contact(&mut lifecycle, &a, "ca@alpha.example").await;
    let response = record(
        &mut scoring,
        vec![
            activity("ok", "email_open", &a, &ca),
            // A's contact under B (which has none): must not make B PRIORITIZED.
            activity("mismatch", "demo_request", &b, &ca),
            activity("no-account", "demo_request", NO_SUCH_ID, ""),
            activity("no-account-with-contact", "demo_request", NO_SUCH_ID, &ca),
            activity("no-contact", "demo_request", &a, NO_SUCH_ID),
        ],
    )
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
    let a_score = score(&mut scoring, &a).await;
    assert_eq!(
        (a_score.engagement_score, a_score.engaged_contact_count),
        (2.0, 1)
    );
    for missing in [&b, NO_SUCH_ID] {
        assert_no_score(&mut scoring, missing).await;
    }
    let top = scoring
        .list_top_accounts(request_for(
            T,
            pb::ListTopAccountsRequest {
                page_size: 50,
                page_token: String::new(),
            },
        ))
        .await
        .expect("top accounts")
        .into_inner()
        .accounts;
    let listed: Vec<&str> = top.iter().map(|s| s.account_id.as_str()).collect();
    assert_eq!(listed, [a.as_str()]);
    let explained = scoring
        .explain_account_score(request_for(
            T,
            pb::ExplainAccountScoreRequest {
                account_id: a.clone(),
                page_size: 100,
                page_token: String::new(),
            },
        ))
        .await
        .expect("ledger")
        .into_inner()
        .entries;
    assert_eq!(explained.len(), 1);
    wait_for_stage(&mut lifecycle, &a, S::Engaged).await;
    let b_account = wait_for_stage(&mut lifecycle, &b, S::Targeted).await;
    assert_eq!(b_account.engagement_score, 0.0);

    // One at a time: NOT_FOUND for what does not exist, INVALID_ARGUMENT
    // naming the field for a contact under another account.
    let one = |a: pb::Activity| request_for(T, pb::RecordActivityRequest { activity: Some(a) });
    let unknown = scoring
        .record_activity(one(activity("u1", "demo_request", NO_SUCH_ID, "")))
        .await
        .expect_err("unknown account");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(unknown.message().contains(NO_SUCH_ID), "{unknown:?}");
    let unknown = scoring
        .record_activity(one(activity("u2", "demo_request", &a, NO_SUCH_ID)))
        .await
        .expect_err("unknown contact");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(unknown.message().contains("contact"), "{unknown:?}");
    let mismatch = scoring
        .record_activity(one(activity("u3", "demo_request", &b, &ca)))
        .await
        .expect_err("a contact of another account");
    assert_eq!(mismatch.code(), Code::InvalidArgument, "{mismatch:?}");
    let details = tonic_types::StatusExt::get_error_details(&mismatch);
    let fields: Vec<String> = details
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["activity.contact_id"]);
    assert_eq!(score(&mut scoring, &a).await.engagement_score, 2.0);
    suite.stop().await;
}

/// Lifecycle down: an emailed batch is refused whole and retryable, never
/// reported as bad input, and goes through once lifecycle is back.
async fn emails_while_lifecycle_is_down_are_retryable(db: TestDatabase) {
    let mut suite = Suite::start(&db, &db).await;
    let mut lifecycle = suite.lifecycle();
    let id = account(&mut lifecycle, "Gamma", "gamma.example").await;
    contact(&mut lifecycle, &id, "known@gamma.example").await;
    suite.stop_lifecycle().await;
    let by_email = |event: &str, email: &str| pb::Activity {
        contact_email: email.into(),
        ..activity(event, "webinar_attended", "", "")
    };
    let batch = vec![
        by_email("m1", "known@gamma.example"),
        by_email("m2", "new.person@gamma.example"),
    ];
    let mut scoring = suite.scoring(0);
    for _ in 0..2 {
        let request = request_for(
            T,
            pb::RecordActivitiesRequest {
                activities: batch.clone(),
            },
        );
        let status = refused_batch(&mut scoring, request).await;
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("retry"), "{status:?}");
    }
    assert_no_score(&mut scoring, &id).await;
    suite.start_lifecycle().await;
    let response = record(&mut scoring, batch).await;
    assert_eq!(response.recorded_count, 2, "{response:?}");
    assert!(response.results.iter().all(|r| r.account_id == id));
    assert_eq!(score(&mut scoring, &id).await.engagement_score, 50.0);
    suite.stop().await;
}

/// Lifecycle frozen (it accepts connections and never answers): a batch with
/// new emails answers UNAVAILABLE within the caller's deadline rather than
/// running into the server's request timeout.
async fn a_frozen_lifecycle_is_bounded_by_the_callers_deadline(db: TestDatabase) {
    let mut suite = Suite::start(&db, &db).await;
    let mut lifecycle = suite.lifecycle();
    let id = account(&mut lifecycle, "Delta", "delta.example").await;
    let known = contact(&mut lifecycle, &id, "known@delta.example").await;
    suite.stop_lifecycle().await;
    let frozen = tokio::net::TcpListener::bind(("127.0.0.1", suite.lifecycle_port))
        .await
        .expect("the lifecycle port again");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = frozen.accept().await {
            held.push(socket);
        }
    });
    let mut scoring = suite.scoring(0);
    let batch: Vec<pb::Activity> = (0..5)
        .map(|i| pb::Activity {
            contact_email: format!("new{i}@delta.example"),
            ..activity(&format!("f{i}"), "email_open", "", "")
        })
        .chain([activity("f-ids", "email_open", &id, &known)])
        .collect();
    for deadline in [Duration::from_millis(1500), Duration::from_secs(3)] {
        let mut request = request_for(
            T,
            pb::RecordActivitiesRequest {
                activities: batch.clone(),
            },
        );
        request.set_timeout(deadline);
        let status = refused_batch(&mut scoring, request).await;
        // Had the server not answered in time, the client would see its own
        // DEADLINE_EXCEEDED or CANCELLED instead.
        assert_eq!(status.code(), Code::Unavailable, "{deadline:?}: {status:?}");
    }
    assert_no_score(&mut scoring, &id).await;
    holder.abort();
    suite.stop().await;
}

async fn two_replicas_count_like_one(db: TestDatabase) {
    let mut suite = Suite::start(&db, &db).await;
    suite.start_scoring(&db).await;
    let mut lifecycle = suite.lifecycle();
    let id = account(&mut lifecycle, "Replicated", "").await;
    let mut contacts = Vec::new();
    for n in 0..4 {
        contacts.push(contact(&mut lifecycle, &id, &format!("p{n}@replicated.example")).await);
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
    let (mut one, mut two) = (suite.scoring(0), suite.scoring(1));
    let mut tasks = Vec::new();
    for chunk in batch.chunks(50) {
        let (a, b, chunk_a, chunk_b) = (one.clone(), two.clone(), chunk.to_vec(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            let (mut a, mut b) = (a, b);
            tokio::join!(record(&mut a, chunk_a), record(&mut b, chunk_b))
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
    assert_eq!(score(&mut one, &id).await.engagement_score, 600.0);
    assert_eq!(score(&mut two, &id).await.engagement_score, 600.0);
    let account = wait_for_stage(&mut lifecycle, &id, S::Prioritized).await;
    for _ in 0..100 {
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
        if a.engagement_score == 600.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let final_account = lifecycle
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
    assert_eq!(
        final_account.engagement_score, 600.0,
        "lifecycle got the final totals"
    );
    assert_eq!(account.stage, S::Prioritized as i32);
    suite.stop().await;
}

async fn streaming_ingests_chunks(db: TestDatabase) {
    let suite = Suite::start(&db, &db).await;
    let (mut lifecycle, mut scoring) = (suite.lifecycle(), suite.scoring(0));
    let id = account(&mut lifecycle, "Streamed", "").await;
    let ann = contact(&mut lifecycle, &id, "ann@streamed.example").await;
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
        .stream_activities(request_for(T, tokio_stream::iter(all)))
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
    assert_eq!(
        response.rejected[0].violations[0].field,
        "activities[9].event_id"
    );
    assert_eq!(score(&mut scoring, &id).await.engagement_score, 29.0 * 4.0);

    // A unary call naming an unknown email is NOT_FOUND.
    let mut unknown = activity("u", "email_open", "", "");
    unknown.contact_email = "nobody@unknown.example".into();
    let status = scoring
        .record_activity(request_for(
            T,
            pb::RecordActivityRequest {
                activity: Some(unknown),
            },
        ))
        .await
        .expect_err("unknown email");
    assert_eq!(status.code(), Code::NotFound);
    suite.stop().await;
}

on_each_database!(
    streaming_ingests_chunks,
    source_example_prioritizes_the_account,
    duplicates_are_counted_once,
    caps_and_decay_follow_the_model,
    a_batch_with_bad_items_keeps_the_good_ones,
    the_ledger_sums_to_the_score,
    simulation_matches_a_hand_computed_scenario,
    simulation_replays_what_ingest_scored,
    nothing_is_lost_while_lifecycle_is_down,
    two_replicas_count_like_one,
    ids_are_checked_per_item,
    emails_while_lifecycle_is_down_are_retryable,
    a_frozen_lifecycle_is_bounded_by_the_callers_deadline,
    engaged_contacts_follow_batches,
);
