//! The API contract's validation, across services, on SQLite and PostgreSQL:
//! every violation names the exact field path, and the same rule gives the
//! same answer on every RPC that applies it (issue 15).

mod common;

use cascade_domain::ids::new_id;
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::scoring::v1 as sc;
use cascade_testkit::fixtures::{account, mask, opportunity_event, score_delivery, violations};
use cascade_testkit::{TestDatabase, on_each_database};
use common::System;
use tonic::Status;

const T: &str = "contract";

/// The (field, description) pairs of a call refused INVALID_ARGUMENT.
fn refused<R: std::fmt::Debug>(result: Result<R, Status>) -> Vec<(String, String)> {
    violations(&result.expect_err("refused"))
}

fn pair(field: &str, description: &str) -> (String, String) {
    (field.to_owned(), description.to_owned())
}

fn seconds(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

async fn the_same_rule_gets_the_same_answer_everywhere(db: TestDatabase) {
    let system = System::start(&db, 1).await;
    let (lifecycle, scoring) = (system.lifecycle_as(0, T), system.scoring_as(0, T));

    // Domains: "." and ".." are refused, not stored empty; one trailing dot
    // is the DNS root and is dropped.
    for domain in [".", "..", "example.com.."] {
        let dots = lifecycle
            .try_create_account(account("Dots", domain, ""), "")
            .await;
        assert_eq!(
            refused(dots),
            [pair(
                "account.domain",
                "must be a domain name such as example.com"
            )],
            "{domain:?}"
        );
    }
    let rooted = lifecycle
        .try_create_account(account("Rooted", "Rooted.Example.", ""), "")
        .await
        .expect("a rooted domain");
    assert_eq!(rooted.domain, "rooted.example");
    let accounts = lifecycle
        .public()
        .list_accounts(lifecycle.req(lc::ListAccountsRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .accounts;
    assert_eq!(accounts.len(), 1, "nothing of the refused ones was stored");

    // Thresholds: the same field paths and descriptions in lifecycle's
    // settings and in scoring's simulation.
    let settings = |engaged: f64, prioritized: f64| {
        lifecycle.req(lc::UpdateLifecycleSettingsRequest {
            settings: Some(lc::LifecycleSettings {
                engaged_threshold: engaged,
                prioritized_threshold: prioritized,
                ..Default::default()
            }),
            update_mask: mask(&["engaged_threshold", "prioritized_threshold"]),
        })
    };
    let simulate = |engaged: f64, prioritized: f64| {
        scoring.req(sc::SimulateScoringModelRequest {
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
        })
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
        (-5.0, 50.0, vec![("engaged_threshold", "must be 0 or more")]),
        (
            f64::NEG_INFINITY,
            50.0,
            vec![("engaged_threshold", "must be a finite number")],
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
            refused(
                lifecycle
                    .public()
                    .update_lifecycle_settings(settings(engaged, prioritized))
                    .await
            ),
            expect("settings.")
        );
        assert_eq!(
            refused(
                scoring
                    .public()
                    .simulate_scoring_model(simulate(engaged, prioritized))
                    .await
            ),
            expect("thresholds.")
        );
    }
    // One threshold written alone, clashing with the other in force (0 and
    // 100 by default): the one written is named.
    for (path, engaged, prioritized, expected) in [
        (
            "engaged_threshold",
            150.0,
            0.0,
            pair(
                "settings.engaged_threshold",
                "must be less than the prioritized threshold (100)",
            ),
        ),
        (
            "prioritized_threshold",
            0.0,
            -1.0,
            pair(
                "settings.prioritized_threshold",
                "must be greater than the engaged threshold (0)",
            ),
        ),
    ] {
        let mut request = settings(engaged, prioritized);
        request.get_mut().update_mask = mask(&[path]);
        assert_eq!(
            refused(lifecycle.public().update_lifecycle_settings(request).await),
            [expected]
        );
    }

    // A mask path that names nothing writable: its exact place in the mask,
    // the caller's text quoted briefly, the whole list of writable fields.
    let long_path = "x".repeat(10_000);
    let mut request = settings(20.0, 50.0);
    request.get_mut().update_mask = mask(&["engaged_threshold", long_path.as_str()]);
    let unwritable = refused(lifecycle.public().update_lifecycle_settings(request).await);
    assert_eq!(unwritable.len(), 1, "{unwritable:?}");
    assert_eq!(unwritable[0].0, "update_mask.paths[1]");
    assert!(
        unwritable[0].1.starts_with(&format!(
            "\"{}...\" is not a writable field",
            "x".repeat(64)
        )),
        "{}",
        unwritable[0].1
    );
    assert!(
        unwritable[0]
            .1
            .ends_with("webhook_secret, at_risk_engagement_threshold, churn_on_lost_renewal, churn_when_contracts_end"),
        "the list is whole: {}",
        unwritable[0].1
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
        refused(
            scoring
                .public()
                .simulate_scoring_model(backwards(2_000_000_000, 1_900_000_000))
                .await
        ),
        [pair("end_time", "must be after start_time")]
    );
    assert_eq!(
        refused(
            scoring
                .public()
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
    let score = lifecycle
        .try_apply_score(lc::ApplyEngagementScoreRequest {
            compute_time: seconds(i64::MAX),
            ..score_delivery(&new_id(), &account, 1, 10.0)
        })
        .await;
    assert_eq!(
        refused(score),
        [pair(
            "compute_time",
            "must be a valid time between 1970-01-01 and 9999-12-31"
        )]
    );
    let event = lifecycle
        .try_apply_opportunity_event(lc::ApplyOpportunityEventRequest {
            occur_time: seconds(-62_135_596_801),
            ..opportunity_event(&account, &new_id(), lc::OpportunityEventType::Opened, &[])
        })
        .await;
    assert_eq!(
        refused(event),
        [pair(
            "occur_time",
            "must be a valid time between 1970-01-01 and 9999-12-31"
        )]
    );
    let account = lifecycle.account(&account).await;
    assert_eq!(
        account.stage,
        cascade_proto::common::v1::AccountStage::Targeted as i32,
        "the refused deliveries changed nothing"
    );

    // A lifecycle call sent to scoring's port is told where it went.
    let mut wrong_port =
        lc::lifecycle_service_client::LifecycleServiceClient::new(system.scoring[0].channel());
    let elsewhere = wrong_port
        .get_account(cascade_testkit::request_for(
            T,
            lc::GetAccountRequest {
                account_id: account.account_id.clone(),
            },
        ))
        .await
        .expect_err("lifecycle is not on scoring's port");
    assert_eq!(
        elsewhere.code(),
        tonic::Code::Unimplemented,
        "{elsewhere:?}"
    );
    assert!(
        elsewhere.message().starts_with(
            "cascade.lifecycle.v1.LifecycleService is not served on this port, which serves cascade.scoring.v1.ScoringService"
        ),
        "{elsewhere:?}"
    );
    system.stop().await;
}

on_each_database!(the_same_rule_gets_the_same_answer_everywhere);
