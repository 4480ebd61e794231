//! SimulateScoringModelStream, the simulation for large tenants, on SQLite and
//! PostgreSQL: it reports progress while it replays and ends with exactly
//! the answer SimulateScoringModel gives; it checks a request like the
//! unary call, and needs the same admin role.

use cascade_chassis::auth::AuthMode;
use cascade_chassis::secret::Secret;
use cascade_proto::scoring::v1 as sc;
use cascade_testkit::fixtures::{activity, days_ago, violations};
use cascade_testkit::{
    Caller, Scoring, Service, TestDatabase, TestServer, TestSystem, on_each_database,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tonic::Code;

const OWNER: &str = "ae-simulation";
const SECRET: &str = "test-only-hs256-secret-0123456789abcdef";
const DAYS: i64 = 20;

/// The fields of a unary request, for the stream (the two carry the same).
fn streamed(request: &sc::SimulateScoringModelRequest) -> sc::SimulateScoringModelStreamRequest {
    sc::SimulateScoringModelStreamRequest {
        model: request.model.clone(),
        thresholds: request.thresholds,
        start_time: request.start_time,
        end_time: request.end_time,
        sample_size: request.sample_size,
    }
}

async fn unary(
    scoring: &Scoring,
    request: &sc::SimulateScoringModelRequest,
) -> sc::SimulateScoringModelResponse {
    scoring
        .public()
        .simulate_scoring_model(scoring.req(request.clone()))
        .await
        .unwrap_or_else(|status| panic!("unary simulation: {status:?}"))
        .into_inner()
}

/// A few thousand activities over twelve accounts and twenty days, in
/// hundreds of groups (account, contact, type, day). Proposed: email opens
/// worth nothing, so the six accounts that only open emails fall from
/// PRIORITIZED to DETECTED (their anonymous visits), and the six with
/// webinars stay.
async fn the_stream_reports_progress_and_ends_with_the_unary_answer(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let (lifecycle, scoring) = (system.lifecycle(), system.scoring());
    let mut openers_only = Vec::new();
    let mut activities = Vec::new();
    for i in 0..12_i64 {
        let account = lifecycle
            .create_account(&format!("Replay {i}"), OWNER)
            .await
            .account_id;
        let mut contacts = Vec::new();
        for j in 0..2 {
            let email = format!("p{j}@replay{i}.example");
            contacts.push(lifecycle.create_contact(&account, &email).await.contact_id);
        }
        let kinds: &[&str] = if i % 2 == 0 {
            &["email_open", "webinar_attended"]
        } else {
            openers_only.push(account.clone());
            &["email_open"]
        };
        for day in 0..DAYS {
            let mut add = |kind: &str, contact: &str, n: i64| {
                for k in 0..n {
                    let mut a = activity(
                        &format!("{account}-{day}-{contact}-{kind}-{k}"),
                        kind,
                        &account,
                        contact,
                    );
                    a.occur_time = Some(days_ago(day));
                    activities.push(a);
                }
            };
            for (j, contact) in contacts.iter().enumerate() {
                for kind in kinds {
                    add(kind, contact, 1 + (i + day + j as i64) % 7);
                }
            }
            add("web_page_visit", "", 1 + (i + day) % 3);
        }
    }
    let stored = activities.len() as i64;
    assert!(stored > 2_000, "{stored} activities");
    let mut recorded = 0;
    for batch in activities.chunks(1_000) {
        recorded += scoring.record(batch.to_vec()).await.recorded_count;
    }
    assert_eq!(i64::from(recorded), stored);

    let mut proposed = scoring.model().await;
    for rule in &mut proposed.rules {
        if rule.activity_type == "email_open" {
            rule.points = 0;
        }
    }
    let request = sc::SimulateScoringModelRequest {
        model: Some(proposed),
        thresholds: Some(sc::SimulationThresholds {
            engaged_threshold: 10.0,
            prioritized_threshold: 50.0,
        }),
        start_time: None,
        end_time: None,
        sample_size: 20,
    };
    let (progress, result) = scoring
        .try_simulate_with_progress(streamed(&request))
        .await
        .expect("the stream");

    // The result is the unary call's answer, whole.
    let expected = unary(&scoring, &request).await;
    assert_eq!(result, expected);
    assert_eq!(result.activity_count, stored);
    assert_eq!(result.changed_account_count, 6);
    let mut changed: Vec<&str> = result
        .sample
        .iter()
        .map(|c| c.account_id.as_str())
        .collect();
    changed.sort_unstable();
    openers_only.sort_unstable();
    assert_eq!(changed, openers_only);

    // Progress: from nothing, through the replay, to the final figures.
    assert!(progress.len() >= 3, "{progress:?}");
    let first = &progress[0];
    assert_eq!(
        (first.replayed_activity_count, first.replayed_account_count),
        (0, 0)
    );
    assert!(
        progress
            .iter()
            .any(|p| p.replayed_activity_count > 0 && p.replayed_activity_count < stored),
        "no progress reported during the replay: {progress:?}"
    );
    for pair in progress.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert!(
            after.replayed_activity_count >= before.replayed_activity_count
                && after.replayed_account_count >= before.replayed_account_count,
            "progress went back: {pair:?}"
        );
        let elapsed = |p: &sc::SimulateScoringModelProgress| {
            let e = p.elapsed.expect("elapsed");
            (e.seconds, e.nanos)
        };
        assert!(elapsed(after) >= elapsed(before), "{pair:?}");
    }
    assert!(
        progress.iter().all(|p| p.total_activity_count == stored),
        "the total is counted once, before the replay: {progress:?}"
    );
    let last = progress.last().expect("progress");
    assert_eq!(last.replayed_activity_count, result.activity_count);
    assert_eq!(last.replayed_account_count, 12);

    // A window with nothing in it: counted 0, replayed 0, the same answer as
    // the unary call.
    let empty = sc::SimulateScoringModelRequest {
        start_time: Some(days_ago(DAYS + 30)),
        end_time: Some(days_ago(DAYS + 10)),
        ..request
    };
    let (progress, result) = scoring
        .try_simulate_with_progress(streamed(&empty))
        .await
        .expect("the stream over an empty window");
    assert_eq!(result, unary(&scoring, &empty).await);
    assert_eq!(result.activity_count, 0);
    // The first report has the final figures already: it is the only one.
    let figures: Vec<_> = progress
        .iter()
        .map(|p| {
            (
                p.replayed_activity_count,
                p.total_activity_count,
                p.replayed_account_count,
            )
        })
        .collect();
    assert_eq!(figures, [(0, 0, 0)]);
    system.stop().await;
}

/// A bad request fails the call itself, before any message, naming the same
/// fields as the unary call.
async fn a_bad_request_fails_before_the_stream_opens(db: TestDatabase) {
    let system = TestSystem::scoring_on(&db).await;
    let scoring = system.scoring();
    let refused = |request: sc::SimulateScoringModelRequest| {
        let scoring = scoring.clone();
        async move {
            let stream = scoring
                .public()
                .simulate_scoring_model_stream(scoring.req(streamed(&request)))
                .await
                .map(|_| "a stream")
                .expect_err("refused before the stream opens");
            let unary = scoring
                .public()
                .simulate_scoring_model(scoring.req(request))
                .await
                .expect_err("refused");
            assert_eq!(violations(&unary), violations(&stream));
            violations(&stream)
        }
    };
    let pair = |field: &str, description: &str| (field.to_owned(), description.to_owned());

    let no_model = refused(sc::SimulateScoringModelRequest {
        thresholds: Some(sc::SimulationThresholds {
            engaged_threshold: 10.0,
            prioritized_threshold: 50.0,
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(no_model, [pair("model", "is required")]);

    let model = scoring.model().await;
    let several = refused(sc::SimulateScoringModelRequest {
        model: Some(model),
        thresholds: None,
        start_time: Some(days_ago(1)),
        end_time: Some(days_ago(2)),
        sample_size: 1001,
    })
    .await;
    assert_eq!(
        several,
        [
            pair("thresholds", "is required"),
            pair("end_time", "must be after start_time"),
            pair("sample_size", "must be between 0 and 1000"),
        ]
    );
    system.stop().await;
}

fn token(role: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({
            "sub": "jane@acme.test", "tenant": "acme", "roles": [role],
            "iss": "cascade", "aud": "cascade", "exp": exp,
        }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

/// With authentication on, the stream needs the admin role, as the unary
/// call does: a writer is refused, an admin gets the answer.
async fn the_stream_needs_the_admin_role(db: TestDatabase) {
    let system = TestSystem::lifecycle_with(&db, |settings| {
        settings.auth.mode = AuthMode::Jwt;
        settings.auth.hs256_secret = Secret::new(SECRET.to_owned());
    })
    .await;
    let scoring_db = db.like().await;
    let mut settings = cascade_scoring::Settings::for_tests(scoring_db.settings.clone());
    settings.auth.mode = AuthMode::Jwt;
    settings.auth.hs256_secret = Secret::new(SECRET.to_owned());
    settings.own.lifecycle.url = system.url(Service::Lifecycle);
    let server = TestServer::start(
        cascade_scoring::build(&settings)
            .await
            .expect("scoring builds"),
    );
    let as_role = |role: &str| Scoring::new(server.channel(), Caller::bearer(&token(role)));
    let admin = as_role("admin");
    let request = sc::SimulateScoringModelRequest {
        model: Some(admin.model().await),
        thresholds: Some(sc::SimulationThresholds {
            engaged_threshold: 10.0,
            prioritized_threshold: 50.0,
        }),
        ..Default::default()
    };

    let writer = as_role("writer");
    let denied = writer
        .try_simulate_with_progress(streamed(&request))
        .await
        .expect_err("a writer may not simulate");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("admin"), "{}", denied.message());
    let unary_denied = writer
        .public()
        .simulate_scoring_model(writer.req(request.clone()))
        .await
        .expect_err("nor with the unary call");
    assert_eq!(unary_denied.code(), Code::PermissionDenied);

    let (progress, result) = admin
        .try_simulate_with_progress(streamed(&request))
        .await
        .expect("an admin simulates");
    assert_eq!(result, unary(&admin, &request).await);
    assert_eq!(result.activity_count, 0);
    assert!(!progress.is_empty());
    server.stop().await;
    system.stop().await;
}

on_each_database!(
    the_stream_reports_progress_and_ends_with_the_unary_answer,
    a_bad_request_fails_before_the_stream_opens,
    the_stream_needs_the_admin_role,
);
