//! The API contract's validation, across services, on SQLite and PostgreSQL:
//! every violation names the exact field path, and the same rule gives the
//! same answer on every RPC that applies it (issue 15).

mod common;

use cascade_domain::ids::new_id;
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::scoring::v1 as sc;
use cascade_testkit::on_each_database;
use cascade_testkit::{TestDatabase, request_for};
use common::System;
use tonic::{Code, Response, Status};
use tonic_types::StatusExt;

const T: &str = "contract";

/// The (field, description) pairs of an INVALID_ARGUMENT.
fn violations<R: std::fmt::Debug>(result: Result<Response<R>, Status>) -> Vec<(String, String)> {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("a BadRequest")
        .field_violations
        .into_iter()
        .map(|v| (v.field, v.description))
        .collect()
}

fn pair(field: &str, description: &str) -> (String, String) {
    (field.to_owned(), description.to_owned())
}

fn seconds(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

async fn the_same_rule_gets_the_same_answer_everywhere(db: TestDatabase) {
    let system = System::start(&db, 1).await;
    let (mut lifecycle, mut scoring) = (system.lifecycle(0), system.scoring(0));

    // Domains: "." and ".." are refused, not stored empty; one trailing dot
    // is the DNS root and is dropped.
    for domain in [".", "..", "example.com.."] {
        let refused = lifecycle
            .create_account(request_for(
                T,
                lc::CreateAccountRequest {
                    account: Some(lc::Account {
                        name: "Dots".into(),
                        domain: domain.into(),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                },
            ))
            .await;
        assert_eq!(
            violations(refused),
            [pair(
                "account.domain",
                "must be a domain name such as example.com"
            )],
            "{domain:?}"
        );
    }
    let rooted = lifecycle
        .create_account(request_for(
            T,
            lc::CreateAccountRequest {
                account: Some(lc::Account {
                    name: "Rooted".into(),
                    domain: "Rooted.Example.".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .expect("a rooted domain")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(rooted.domain, "rooted.example");
    let accounts = lifecycle
        .list_accounts(request_for(T, lc::ListAccountsRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .accounts;
    assert_eq!(accounts.len(), 1, "nothing of the refused ones was stored");

    // Thresholds: the same field paths and descriptions in lifecycle's
    // settings and in scoring's simulation.
    let settings = |engaged: f64, prioritized: f64| {
        request_for(
            T,
            lc::UpdateLifecycleSettingsRequest {
                settings: Some(lc::LifecycleSettings {
                    engaged_threshold: engaged,
                    prioritized_threshold: prioritized,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["engaged_threshold".into(), "prioritized_threshold".into()],
                }),
            },
        )
    };
    let simulate = |engaged: f64, prioritized: f64| {
        request_for(
            T,
            sc::SimulateScoringModelRequest {
                model: Some(sc::ScoringModel {
                    rules: vec![sc::ScoringRule {
                        activity_type: "webinar_attended".into(),
                        points: 10,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                thresholds: Some(sc::SimulationThresholds {
                    engaged_threshold: engaged,
                    prioritized_threshold: prioritized,
                }),
                ..Default::default()
            },
        )
    };
    for (engaged, prioritized, expected) in [
        (
            f64::NAN,
            50.0,
            vec![("engaged_threshold", "must be a finite number")],
        ),
        (
            20.0,
            f64::INFINITY,
            vec![("prioritized_threshold", "must be a finite number")],
        ),
        (
            40.0,
            40.0,
            vec![(
                "prioritized_threshold",
                "must be greater than the engaged threshold (40)",
            )],
        ),
    ] {
        let expect = |prefix: &str| -> Vec<(String, String)> {
            expected
                .iter()
                .map(|(field, description)| pair(&format!("{prefix}{field}"), description))
                .collect()
        };
        assert_eq!(
            violations(
                lifecycle
                    .update_lifecycle_settings(settings(engaged, prioritized))
                    .await
            ),
            expect("settings.")
        );
        assert_eq!(
            violations(
                scoring
                    .simulate_scoring_model(simulate(engaged, prioritized))
                    .await
            ),
            expect("thresholds.")
        );
    }

    // A mask path that names nothing writable: its exact place in the mask,
    // the caller's text quoted briefly, the whole list of writable fields.
    let long_path = "x".repeat(10_000);
    let mut request = settings(20.0, 50.0);
    request.get_mut().update_mask = Some(prost_types::FieldMask {
        paths: vec!["engaged_threshold".into(), long_path],
    });
    let refused = violations(lifecycle.update_lifecycle_settings(request).await);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, "update_mask.paths[1]");
    assert!(
        refused[0].1.starts_with(&format!(
            "\"{}...\" is not a writable field",
            "x".repeat(64)
        )),
        "{}",
        refused[0].1
    );
    assert!(
        refused[0]
            .1
            .ends_with("renotify_on_hand_raise, webhook_url, webhook_secret"),
        "the list is whole: {}",
        refused[0].1
    );

    // A window that ends before it starts: the simulation refuses it as the
    // reports do.
    let backwards = |start: i64, end: i64| {
        let mut request = simulate(20.0, 50.0);
        request.get_mut().start_time = seconds(start);
        request.get_mut().end_time = seconds(end);
        request
    };
    assert_eq!(
        violations(
            scoring
                .simulate_scoring_model(backwards(2_000_000_000, 1_900_000_000))
                .await
        ),
        [pair("end_time", "must be after start_time")]
    );
    assert_eq!(
        violations(
            scoring
                .simulate_scoring_model(backwards(i64::MAX, 1_900_000_000))
                .await
        ),
        [pair(
            "start_time",
            "must be a valid time between 1970-01-01 and 9999-12-31"
        )]
    );

    // Timestamps outside the protobuf range on the internal RPCs.
    let account = rooted.account_id;
    let mut internal = system.lifecycle_internal(0);
    let refused = internal
        .apply_engagement_score(request_for(
            T,
            lc::ApplyEngagementScoreRequest {
                event_id: new_id(),
                account_id: account.clone(),
                sequence: 1,
                engagement_score: 10.0,
                compute_time: seconds(i64::MAX),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(
        violations(refused),
        [pair(
            "compute_time",
            "must be a valid time between 1970-01-01 and 9999-12-31"
        )]
    );
    let refused = internal
        .apply_opportunity_event(request_for(
            T,
            lc::ApplyOpportunityEventRequest {
                event_id: new_id(),
                account_id: account.clone(),
                opportunity_id: new_id(),
                r#type: lc::OpportunityEventType::Opened as i32,
                occur_time: seconds(-62_135_596_801),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(
        violations(refused),
        [pair(
            "occur_time",
            "must be a valid time between 1970-01-01 and 9999-12-31"
        )]
    );
    let account = lifecycle
        .get_account(request_for(
            T,
            lc::GetAccountRequest {
                account_id: account,
            },
        ))
        .await
        .expect("account")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(
        account.stage,
        cascade_proto::common::v1::AccountStage::Targeted as i32,
        "the refused deliveries changed nothing"
    );
    system.stop().await;
}

on_each_database!(the_same_rule_gets_the_same_answer_everywhere);
