//! The stage engine over real gRPC, on SQLite and PostgreSQL: the TekStack
//! walk-through, recycling, the stage at a past time, idempotent Apply*
//! calls, the funnel, notifications that survive a receiver outage and a
//! restart, concurrency, settings and the watch stream.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use cascade_domain::ids::new_id;
use cascade_lifecycle::storage::NOTIFICATION_TOPIC;
use cascade_proto::common::v1::{AccountStage as S, ContactStage as C, CustomerType};
use cascade_proto::lifecycle::v1 as pb;
use cascade_proto::lifecycle::v1::OpportunityEventType as Opp;
use cascade_proto::lifecycle::v1::TransitionCause as Cause;
use cascade_testkit::fixtures::{mask, precondition_subjects, score_delivery, violated_fields};
use cascade_testkit::{
    Lifecycle, TestDatabase, TestSystem, WebhookReceiver, eventually, next_millisecond,
    on_each_database, wait_until_delivered,
};
use common::{opportunity, score};
use futures::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

fn stage_path(transitions: &[pb::AccountTransition]) -> Vec<(i32, i32, i32)> {
    transitions
        .iter()
        .map(|t| (t.from_stage, t.to_stage, t.cause))
        .collect()
}

fn reached(account: &pb::Account) -> Vec<i32> {
    let mut stages: Vec<i32> = account.stages_reached.iter().map(|s| s.stage).collect();
    stages.sort();
    stages
}

async fn tekstack_walkthrough(db: TestDatabase) {
    let receiver = WebhookReceiver::start().await;
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    lifecycle
        .set_webhook(&receiver.url, Some("s3cret-signing-key"))
        .await;

    let account = lifecycle
        .create_account("Initech", "peter@seller.example")
        .await;
    let id = account.account_id.clone();
    let ann = lifecycle.create_contact(&id, "ann@initech.example").await;
    let bob = lifecycle.create_contact(&id, "bob@initech.example").await;

    // Anonymous intent: TARGETED -> DETECTED.
    let detected = score(&lifecycle, &id, "score-1", 1, 0.0, 12.0, vec![]).await;
    assert_eq!(
        detected.account.as_ref().map(|a| a.stage),
        Some(S::Detected as i32)
    );

    // Ann opens emails and attends a webinar: ENGAGED (account and contact).
    let engaged = score(
        &lifecycle,
        &id,
        "score-2",
        2,
        27.0,
        12.0,
        vec![(
            ann.contact_id.clone(),
            27.0,
            vec!["email_open", "webinar_attended"],
        )],
    )
    .await;
    assert_eq!(
        engaged.account.as_ref().map(|a| a.stage),
        Some(S::Engaged as i32)
    );
    assert_eq!(
        lifecycle.contact(&ann.contact_id).await.stage,
        C::Engaged as i32
    );

    // Bob visits pricing and asks for a demo: 27 + 93 = 120 >= 100.
    let prioritized = score(
        &lifecycle,
        &id,
        "score-3",
        3,
        120.0,
        12.0,
        vec![(
            bob.contact_id.clone(),
            93.0,
            vec!["pricing_page_visit", "demo_request"],
        )],
    )
    .await;
    let after = prioritized.account.expect("account");
    assert_eq!(after.stage, S::Prioritized as i32);
    assert_eq!(after.engagement_score, 120.0);
    let bob_now = lifecycle.contact(&bob.contact_id).await;
    assert_eq!(
        bob_now.stage,
        C::MarketingQualified as i32,
        "a demo request is a hand-raise"
    );

    // The owner is told once, signed.
    let received = receiver.wait_for(1).await;
    assert_eq!(received.len(), 1);
    let hook = &received[0];
    let body: serde_json::Value = serde_json::from_str(&hook.body).expect("json body");
    assert_eq!(body["@type"], "MessageCard");
    assert_eq!(body["cascade"]["accountId"], id.as_str());
    assert_eq!(body["cascade"]["accountName"], "Initech");
    // The card shows the account by name (a tester saw its id).
    assert_eq!(body["sections"][0]["facts"][0]["value"], "Initech");
    assert_eq!(body["cascade"]["ownerId"], "peter@seller.example");
    assert_eq!(body["cascade"]["reason"], "PRIORITIZED");
    assert!(body["text"].as_str().expect("text").contains("Initech"));
    assert_eq!(
        hook.header("x-cascade-signature"),
        Some(cascade_lifecycle::storage::signature("s3cret-signing-key", &hook.body).as_str())
    );
    assert_eq!(
        hook.header("x-cascade-notification-id"),
        body["cascade"]["notificationId"].as_str()
    );
    // Standard Webhooks: id, a signed timestamp, and the signature over both
    // and the body, so a captured request cannot be replayed later.
    let webhook_id = hook.header("webhook-id").expect("webhook-id");
    assert_eq!(Some(webhook_id), body["cascade"]["notificationId"].as_str());
    let sent_at: i64 = hook
        .header("webhook-timestamp")
        .expect("webhook-timestamp")
        .parse()
        .expect("Unix seconds");
    assert!((cascade_chassis::time::now().timestamp() - sent_at).abs() < 60);
    assert_eq!(
        hook.header("webhook-signature"),
        Some(
            cascade_lifecycle::storage::standard_signature(
                "s3cret-signing-key",
                webhook_id,
                sent_at,
                &hook.body
            )
            .as_str()
        )
    );

    // Business development hands it to sales.
    let bdr = lifecycle.as_actor("bdr@seller.example");
    let qualified = bdr
        .public()
        .qualify_account(bdr.req(pb::QualifyAccountRequest {
            account_id: id.clone(),
            reason: "budget confirmed".into(),
        }))
        .await
        .expect("qualify")
        .into_inner();
    assert_eq!(
        qualified.account.map(|a| a.stage),
        Some(S::Qualified as i32)
    );

    let deal = new_id();
    let buying_group = [ann.contact_id.as_str(), bob.contact_id.as_str()];
    let opened = opportunity(
        &lifecycle,
        &id,
        "opp-1-opened",
        &deal,
        Opp::Opened,
        &buying_group,
        0,
    )
    .await;
    assert_eq!(opened.account.map(|a| a.stage), Some(S::Pipeline as i32));
    assert_eq!(
        lifecycle.contact(&ann.contact_id).await.stage,
        C::Opportunity as i32
    );

    let won = opportunity(
        &lifecycle,
        &id,
        "opp-1-won",
        &deal,
        Opp::Won,
        &buying_group,
        0,
    )
    .await;
    let won_account = won.account.expect("account");
    assert_eq!(won_account.stage, S::Implement as i32);
    assert_eq!(won_account.customer_type, CustomerType::Customer as i32);
    for contact in [&ann, &bob] {
        assert_eq!(
            lifecycle.contact(&contact.contact_id).await.stage,
            C::Customer as i32
        );
    }

    let csm = lifecycle.as_actor("csm@seller.example");
    for to in [S::Expand, S::Advocate] {
        let moved = csm
            .public()
            .advance_account(csm.req(pb::AdvanceAccountRequest {
                account_id: id.clone(),
                to_stage: to as i32,
                reason: String::new(),
            }))
            .await
            .expect("advance")
            .into_inner();
        assert_eq!(moved.account.map(|a| a.stage), Some(to as i32));
    }
    let refused = csm
        .public()
        .advance_account(csm.req(pb::AdvanceAccountRequest {
            account_id: id.clone(),
            ..Default::default()
        }))
        .await
        .expect_err("nothing after ADVOCATE");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("ADVOCATE"),
        "{}",
        refused.message()
    );
    assert_eq!(precondition_subjects(&refused)[0], format!("account/{id}"));

    let history = lifecycle.transitions(&id).await;
    assert_eq!(
        stage_path(&history),
        vec![
            (S::Targeted as i32, S::Detected as i32, Cause::Intent as i32),
            (S::Detected as i32, S::Engaged as i32, Cause::Score as i32),
            (
                S::Engaged as i32,
                S::Prioritized as i32,
                Cause::Score as i32
            ),
            (
                S::Prioritized as i32,
                S::Qualified as i32,
                Cause::Qualify as i32
            ),
            (
                S::Qualified as i32,
                S::Pipeline as i32,
                Cause::OpportunityOpened as i32
            ),
            (
                S::Pipeline as i32,
                S::Implement as i32,
                Cause::OpportunityWon as i32
            ),
            (S::Implement as i32, S::Expand as i32, Cause::Manual as i32),
            (S::Expand as i32, S::Advocate as i32, Cause::Manual as i32),
        ]
    );
    assert_eq!(history[0].event_id, "score-1");
    assert_eq!(history[0].actor, "scoring");
    assert_eq!(history[3].actor, "bdr@seller.example");
    assert_eq!(history[3].reason, "budget confirmed");
    assert_eq!(history[5].to_customer_type, CustomerType::Customer as i32);
    assert!(
        history.iter().all(|t| t.settings_version == 2),
        "settings v2 was in force"
    );
    let times: Vec<_> = history
        .iter()
        .map(|t| t.transition_time.expect("time"))
        .map(|t| (t.seconds, t.nanos))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "history in time order"
    );

    let final_account = lifecycle.account(&id).await;
    assert_eq!(final_account.stage, S::Advocate as i32);
    assert_eq!(
        reached(&final_account),
        (1..=9).collect::<Vec<_>>(),
        "all nine stages reached"
    );
    let bob_final = lifecycle.contact(&bob.contact_id).await;
    let bob_reached: Vec<i32> = bob_final.stages_reached.iter().map(|s| s.stage).collect();
    for stage in [
        C::Suspect,
        C::MarketingQualified,
        C::Opportunity,
        C::Customer,
    ] {
        assert!(
            bob_reached.contains(&(stage as i32)),
            "bob reached {stage:?}"
        );
    }
    assert_eq!(receiver.accepted().len(), 1, "exactly one notification");
    system.stop().await;
}

async fn disqualify_and_nurture_keep_history(db: TestDatabase) {
    let receiver = WebhookReceiver::start().await;
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    lifecycle.set_webhook(&receiver.url, None).await;
    let (ae, bdr) = (lifecycle.as_actor("ae"), lifecycle.as_actor("bdr"));
    let account = lifecycle
        .create_account("Globex", "hank@seller.example")
        .await;
    let id = account.account_id.clone();
    // Engagement names the contact who brought it: after a recycle, only a
    // delivery with new activity counts as earned (`baseline_at`).
    let ann = lifecycle.create_contact(&id, "ann@globex.example").await;
    let engaged = |score: f64| vec![(ann.contact_id.clone(), score, vec!["email_open"])];
    score(&lifecycle, &id, "s1", 1, 150.0, 0.0, engaged(150.0)).await;
    assert_eq!(lifecycle.account(&id).await.stage, S::Prioritized as i32);

    let no_reason = ae
        .public()
        .nurture_account(ae.req(pb::NurtureAccountRequest {
            account_id: id.clone(),
            reason: "  ".into(),
        }))
        .await
        .expect_err("reason required");
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&no_reason)[0], "reason");

    let nurtured = ae
        .public()
        .nurture_account(ae.req(pb::NurtureAccountRequest {
            account_id: id.clone(),
            reason: "not ready until next fiscal year".into(),
        }))
        .await
        .expect("nurture")
        .into_inner();
    let nurtured_account = nurtured.account.expect("account");
    assert_eq!(nurtured_account.stage, S::Engaged as i32);
    assert_eq!(
        nurtured_account.customer_type,
        CustomerType::Prospect as i32
    );
    let summary = nurtured_account.recycle_summary.clone().expect("summary");
    assert_eq!((summary.nurture_count, summary.disqualify_count), (1, 0));
    assert_eq!(
        summary.last_action.expect("last").reason,
        "not ready until next fiscal year"
    );
    assert!(
        reached(&nurtured_account).contains(&(S::Prioritized as i32)),
        "first PRIORITIZED kept"
    );

    // 50 new points since the nurture are not enough; 110 are.
    score(&lifecycle, &id, "s2", 2, 200.0, 0.0, engaged(200.0)).await;
    assert_eq!(lifecycle.account(&id).await.stage, S::Engaged as i32);
    score(&lifecycle, &id, "s3", 3, 260.0, 0.0, engaged(260.0)).await;
    assert_eq!(lifecycle.account(&id).await.stage, S::Prioritized as i32);
    receiver.wait_for(2).await;

    let disqualified = ae
        .public()
        .disqualify_account(ae.req(pb::DisqualifyAccountRequest {
            account_id: id.clone(),
            reason: "no budget".into(),
        }))
        .await
        .expect("disqualify")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(disqualified.stage, S::Detected as i32);
    assert_eq!(disqualified.customer_type, CustomerType::ReProspect as i32);
    let summary = disqualified.recycle_summary.expect("summary");
    assert_eq!((summary.nurture_count, summary.disqualify_count), (1, 1));

    let again = ae
        .public()
        .disqualify_account(ae.req(pb::DisqualifyAccountRequest {
            account_id: id.clone(),
            reason: "still no budget".into(),
        }))
        .await
        .expect_err("already DETECTED");
    assert_eq!(again.code(), Code::FailedPrecondition);
    let violation = &again
        .get_details_precondition_failure()
        .expect("detail")
        .violations[0];
    assert!(
        violation.description.contains("DETECTED"),
        "{}",
        violation.description
    );
    assert!(
        violation.description.contains("PRIORITIZED, QUALIFIED"),
        "{}",
        violation.description
    );

    // Re-engagement after Disqualify climbs back and notifies again.
    score(&lifecycle, &id, "s4", 4, 380.0, 0.0, engaged(380.0)).await;
    let back = lifecycle.account(&id).await;
    assert_eq!(back.stage, S::Prioritized as i32);
    assert_eq!(back.customer_type, CustomerType::ReProspect as i32);
    receiver.wait_for(3).await;

    // With the QUALIFIED stage off, Qualify is refused with the reason.
    lifecycle
        .set_settings(
            pb::LifecycleSettings {
                qualified_stage_enabled: false,
                ..Default::default()
            },
            &["qualified_stage_enabled"],
        )
        .await;
    let off = bdr
        .public()
        .qualify_account(bdr.req(pb::QualifyAccountRequest {
            account_id: id.clone(),
            reason: String::new(),
        }))
        .await
        .expect_err("stage turned off");
    assert!(
        off.message().contains("qualified_stage_enabled"),
        "{}",
        off.message()
    );

    let history = lifecycle.transitions(&id).await;
    let causes: Vec<i32> = history.iter().map(|t| t.cause).collect();
    assert_eq!(
        causes,
        [
            Cause::Score,
            Cause::Score,
            Cause::Nurture,
            Cause::Score,
            Cause::Disqualify,
            Cause::Score,
            Cause::Score
        ]
        .map(|c| c as i32)
    );
    system.stop().await;
}

async fn stage_at_answers_between_transitions(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let ae = lifecycle.as_actor("ae");
    let account = lifecycle.create_account("Hooli", "").await;
    let id = account.account_id.clone();
    let created = account.create_time.expect("create time");
    // Distinct timestamps between steps (history is kept in milliseconds):
    // each step starts in a millisecond after the last one's.
    next_millisecond().await;
    score(&lifecycle, &id, "a", 1, 10.0, 0.0, vec![]).await;
    next_millisecond().await;
    let between = cascade_chassis::time::to_timestamp(cascade_chassis::time::now());
    next_millisecond().await;
    score(&lifecycle, &id, "b", 2, 100.0, 0.0, vec![]).await;
    next_millisecond().await;
    ae.public()
        .disqualify_account(ae.req(pb::DisqualifyAccountRequest {
            account_id: id.clone(),
            reason: "wrong region".into(),
        }))
        .await
        .expect("disqualify");
    let history = lifecycle.transitions(&id).await;
    assert_eq!(history.len(), 3);

    let at = |time: prost_types::Timestamp| pb::GetAccountStageAtRequest {
        account_id: id.clone(),
        time: Some(time),
    };
    let ask = async |time: prost_types::Timestamp| {
        lifecycle
            .public()
            .get_account_stage_at(lifecycle.req(at(time)))
            .await
            .map(|r| r.into_inner())
    };
    let before = prost_types::Timestamp {
        seconds: created.seconds - 60,
        nanos: 0,
    };
    assert_eq!(
        ask(before).await.expect_err("not yet").code(),
        Code::NotFound
    );
    let initial = ask(created).await.expect("at creation");
    assert_eq!(
        (initial.stage, initial.customer_type),
        (S::Targeted as i32, CustomerType::Prospect as i32)
    );
    assert!(initial.last_transition.is_none());
    let engaged = ask(between).await.expect("between");
    assert_eq!(engaged.stage, S::Engaged as i32);
    assert_eq!(
        engaged.last_transition.map(|t| t.event_id),
        Some("a".to_owned())
    );
    let prioritized_time = history[1].transition_time.expect("time");
    assert_eq!(
        ask(prioritized_time).await.expect("at").stage,
        S::Prioritized as i32
    );
    let now = cascade_chassis::time::to_timestamp(cascade_chassis::time::now());
    let latest = ask(now).await.expect("now");
    assert_eq!(
        (latest.stage, latest.customer_type),
        (S::Detected as i32, CustomerType::ReProspect as i32)
    );
    system.stop().await;
}

async fn apply_calls_are_idempotent_and_ordered(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let id = lifecycle.create_account("Umbrella", "").await.account_id;
    let first = score(&lifecycle, &id, "e1", 5, 40.0, 0.0, vec![]).await;
    assert_eq!(first.outcome, pb::ApplyOutcome::Applied as i32);
    assert_eq!(first.transitions.len(), 1);

    let repeat = score(&lifecycle, &id, "e1", 5, 40.0, 0.0, vec![]).await;
    assert_eq!(repeat.outcome, pb::ApplyOutcome::Duplicate as i32);
    assert!(repeat.transitions.is_empty());

    // An older sequence arriving late changes nothing, even with a new id.
    let stale = score(&lifecycle, &id, "e0", 4, 500.0, 0.0, vec![]).await;
    assert_eq!(stale.outcome, pb::ApplyOutcome::Stale as i32);
    let account = lifecycle.account(&id).await;
    assert_eq!(
        (account.stage, account.engagement_score),
        (S::Engaged as i32, 40.0)
    );

    let deal = new_id();
    let opened = opportunity(&lifecycle, &id, "o1", &deal, Opp::Opened, &[], 0).await;
    assert_eq!(opened.outcome, pb::ApplyOutcome::Applied as i32);
    let opened_again = opportunity(&lifecycle, &id, "o1", &deal, Opp::Opened, &[], 0).await;
    assert_eq!(opened_again.outcome, pb::ApplyOutcome::Duplicate as i32);
    assert_eq!(lifecycle.transitions(&id).await.len(), 2);

    let bad = lifecycle
        .try_apply_score(pb::ApplyEngagementScoreRequest {
            event_id: String::new(),
            account_id: id.clone(),
            sequence: 0,
            engagement_score: f64::NAN,
            new_engagement: Some(pb::NewEngagement {
                batches: vec![pb::EngagementAdded {
                    sequence: 1,
                    engagement_score: f64::INFINITY,
                    compute_time: None,
                }],
            }),
            ..Default::default()
        })
        .await
        .expect_err("bad delivery");
    assert_eq!(
        violated_fields(&bad),
        [
            "event_id",
            "sequence",
            "engagement_score",
            "new_engagement.batches[0].sequence",
            "new_engagement.batches[0].engagement_score",
            "new_engagement.batches[0].compute_time",
        ]
    );
    let batch = pb::EngagementAdded {
        sequence: 1,
        engagement_score: 1.0,
        compute_time: Some(cascade_testkit::fixtures::days_ago(0)),
    };
    let many = lifecycle
        .try_apply_score(pb::ApplyEngagementScoreRequest {
            new_engagement: Some(pb::NewEngagement {
                batches: vec![batch; 1_001],
            }),
            ..score_delivery("many", &id, 9, 40.0)
        })
        .await
        .expect_err("too many batches");
    assert_eq!(violated_fields(&many), ["new_engagement.batches"]);
    // A batch repeated would count twice.
    let twice = lifecycle
        .try_apply_score(pb::ApplyEngagementScoreRequest {
            new_engagement: Some(pb::NewEngagement {
                batches: vec![batch, batch],
            }),
            ..score_delivery("twice", &id, 9, 40.0)
        })
        .await
        .expect_err("a repeated batch");
    assert_eq!(
        violated_fields(&twice),
        ["new_engagement.batches[1].sequence"]
    );
    system.stop().await;
}

/// A hand raised by someone in an open deal moves nothing while the deal is
/// open; when it is lost, that person leaves MARKETING_QUALIFIED, not back
/// at ENGAGED (a reviewer's case: a demo asked for during the deal was
/// forgotten), while a colleague who did not raise one goes back.
async fn a_hand_raised_during_a_deal_counts_when_it_is_lost(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let id = lifecycle.create_account("Initrode", "").await.account_id;
    let pat = lifecycle.create_contact(&id, "pat@initrode.example").await;
    let quinn = lifecycle
        .create_contact(&id, "quinn@initrode.example")
        .await;
    score(
        &lifecycle,
        &id,
        "s1",
        1,
        20.0,
        0.0,
        vec![
            (pat.contact_id.clone(), 10.0, vec!["webinar_attended"]),
            (quinn.contact_id.clone(), 10.0, vec!["webinar_attended"]),
        ],
    )
    .await;
    let deal = new_id();
    let group = [pat.contact_id.as_str(), quinn.contact_id.as_str()];
    opportunity(&lifecycle, &id, "open", &deal, Opp::Opened, &group, 0).await;
    score(
        &lifecycle,
        &id,
        "s2",
        2,
        120.0,
        0.0,
        vec![(pat.contact_id.clone(), 110.0, vec!["demo_request"])],
    )
    .await;
    assert_eq!(
        lifecycle.contact(&pat.contact_id).await.stage,
        C::Opportunity as i32,
        "in the deal, a hand-raise moves nothing"
    );
    opportunity(&lifecycle, &id, "lost", &deal, Opp::Lost, &group, 0).await;
    assert_eq!(
        lifecycle.contact(&pat.contact_id).await.stage,
        C::MarketingQualified as i32
    );
    assert_eq!(
        lifecycle.contact(&quinn.contact_id).await.stage,
        C::Engaged as i32
    );
    system.stop().await;
}

async fn lost_deal_nurtures_only_when_last_open(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let ae = lifecycle.as_actor("ae");
    let id = lifecycle.create_account("Soylent", "").await.account_id;
    let pat = lifecycle.create_contact(&id, "pat@soylent.example").await;
    score(
        &lifecycle,
        &id,
        "s",
        1,
        120.0,
        0.0,
        vec![(pat.contact_id.clone(), 120.0, vec!["webinar_attended"])],
    )
    .await;
    let (a, b) = (new_id(), new_id());
    opportunity(
        &lifecycle,
        &id,
        "a-open",
        &a,
        Opp::Opened,
        &[&pat.contact_id],
        0,
    )
    .await;
    opportunity(
        &lifecycle,
        &id,
        "b-open",
        &b,
        Opp::Opened,
        &[&pat.contact_id],
        1,
    )
    .await;
    assert_eq!(lifecycle.account(&id).await.stage, S::Pipeline as i32);

    // While another deal is open, a Disqualify is refused and a loss keeps PIPELINE.
    let refused = ae
        .public()
        .disqualify_account(ae.req(pb::DisqualifyAccountRequest {
            account_id: id.clone(),
            reason: "x".into(),
        }))
        .await
        .expect_err("open deals");
    assert!(
        refused.message().contains("2 open opportunities"),
        "{}",
        refused.message()
    );
    opportunity(
        &lifecycle,
        &id,
        "a-lost",
        &a,
        Opp::Lost,
        &[&pat.contact_id],
        1,
    )
    .await;
    assert_eq!(lifecycle.account(&id).await.stage, S::Pipeline as i32);
    assert_eq!(
        lifecycle.contact(&pat.contact_id).await.stage,
        C::Opportunity as i32
    );

    // The last one lost: the on-lost action (NURTURE) applies.
    let lost = opportunity(
        &lifecycle,
        &id,
        "b-lost",
        &b,
        Opp::Lost,
        &[&pat.contact_id],
        0,
    )
    .await;
    let account = lost.account.expect("account");
    assert_eq!(account.stage, S::Engaged as i32);
    assert_eq!(lost.transitions[0].cause, Cause::OpportunityLost as i32);
    assert_eq!(account.recycle_summary.expect("summary").nurture_count, 1);
    assert_eq!(
        lifecycle.contact(&pat.contact_id).await.stage,
        C::Engaged as i32
    );

    // A reason goes only with a loss: on another event it is refused,
    // naming it, and nothing is applied.
    let refused = lifecycle
        .try_apply_opportunity_event(pb::ApplyOpportunityEventRequest {
            lost_reason: "chose a rival".into(),
            ..cascade_testkit::fixtures::opportunity_event(&id, &b, Opp::Opened, &[])
        })
        .await
        .expect_err("a reason on an OPENED event");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        cascade_testkit::fixtures::violated_fields(&refused),
        ["lost_reason"]
    );
    assert_eq!(lifecycle.account(&id).await.stage, S::Engaged as i32);
    system.stop().await;
}

/// The funnel report for the window.
async fn funnel(
    lifecycle: &Lifecycle,
    start_time: prost_types::Timestamp,
    end_time: prost_types::Timestamp,
) -> pb::GetFunnelReportResponse {
    lifecycle
        .public()
        .get_funnel_report(lifecycle.req(pb::GetFunnelReportRequest {
            start_time: Some(start_time),
            end_time: Some(end_time),
        }))
        .await
        .expect("funnel")
        .into_inner()
}

fn stages_of(report: &pb::GetFunnelReportResponse) -> HashMap<i32, &pb::FunnelStage> {
    report.stages.iter().map(|s| (s.stage, s)).collect()
}

async fn funnel_matches_a_hand_computed_scenario(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let bdr = lifecycle.as_actor("bdr");
    let ae = lifecycle.as_actor("ae");
    let start_time = cascade_chassis::time::to_timestamp(
        cascade_chassis::time::now() - chrono::Duration::seconds(1),
    );
    let a = lifecycle.create_account("A", "").await.account_id;
    let b = lifecycle.create_account("B", "").await.account_id;
    let c = lifecycle.create_account("C", "").await.account_id;
    let _d = lifecycle.create_account("D", "").await.account_id;
    score(&lifecycle, &a, "a1", 1, 150.0, 0.0, vec![]).await; // ENGAGED, PRIORITIZED
    bdr.public()
        .qualify_account(bdr.req(pb::QualifyAccountRequest {
            account_id: a.clone(),
            reason: String::new(),
        }))
        .await
        .expect("qualify");
    opportunity(&lifecycle, &a, "a-open", &new_id(), Opp::Opened, &[], 0).await; // PIPELINE
    score(&lifecycle, &b, "b1", 1, 50.0, 0.0, vec![]).await; // ENGAGED
    score(&lifecycle, &c, "c1", 1, 150.0, 0.0, vec![]).await; // ENGAGED, PRIORITIZED
    ae.public()
        .nurture_account(ae.req(pb::NurtureAccountRequest {
            account_id: c.clone(),
            reason: "later".into(),
        }))
        .await
        .expect("nurture"); // back to ENGAGED
    let end_time = cascade_chassis::time::to_timestamp(
        cascade_chassis::time::now() + chrono::Duration::hours(1),
    );

    let report = funnel(&lifecycle, start_time, end_time).await;
    let by_stage = stages_of(&report);
    let row = |stage: S| {
        let r = by_stage[&(stage as i32)];
        (r.entered, r.moved_forward, r.moved_back, r.stayed)
    };
    // Hand-computed: entries, forward, back, stayed.
    assert_eq!(row(S::Targeted), (4, 3, 0, 1));
    assert_eq!(row(S::Detected), (0, 0, 0, 0));
    assert_eq!(row(S::Engaged), (4, 2, 0, 2));
    assert_eq!(row(S::Prioritized), (2, 1, 1, 0));
    assert_eq!(row(S::Qualified), (1, 1, 0, 0));
    assert_eq!(row(S::Pipeline), (1, 0, 0, 1));
    assert_eq!(row(S::Implement), (0, 0, 0, 0));
    // Entries against accounts: C entered ENGAGED twice (nurtured back).
    let accounts = |stage: S| by_stage[&(stage as i32)].accounts_entered;
    assert_eq!(
        [S::Targeted, S::Engaged, S::Prioritized, S::Qualified].map(accounts),
        [4, 3, 2, 1]
    );
    assert_eq!(by_stage[&(S::Targeted as i32)].conversion_rate, 0.75);
    assert_eq!(by_stage[&(S::Engaged as i32)].conversion_rate, 0.5);
    assert_eq!(report.qualified_to_pipeline_rate, 1.0);
    assert!(
        by_stage[&(S::Prioritized as i32)]
            .median_time_in_stage
            .is_some()
    );
    assert!(
        by_stage[&(S::Pipeline as i32)]
            .median_time_in_stage
            .is_none(),
        "no stay ended"
    );

    // A window before anything happened is empty.
    let early = lifecycle
        .public()
        .get_funnel_report(lifecycle.req(pb::GetFunnelReportRequest {
            start_time: Some(prost_types::Timestamp {
                seconds: start_time.seconds - 7200,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: start_time.seconds - 3600,
                nanos: 0,
            }),
        }))
        .await
        .expect("funnel")
        .into_inner();
    assert!(early.stages.iter().all(|s| s.entered == 0));
    let inverted = lifecycle
        .public()
        .get_funnel_report(lifecycle.req(pb::GetFunnelReportRequest {
            start_time: Some(start_time),
            end_time: Some(start_time),
        }))
        .await
        .expect_err("inverted window");
    assert_eq!(inverted.code(), Code::InvalidArgument);

    // C erased: it leaves the report whole (its creation and every stay),
    // not by its first stay alone.
    lifecycle
        .public()
        .delete_account(lifecycle.req(pb::DeleteAccountRequest {
            account_id: c.clone(),
            force: false,
        }))
        .await
        .expect("C erased");
    let after = funnel(&lifecycle, start_time, end_time).await;
    let by_stage = stages_of(&after);
    let row = |stage: S| {
        let r = by_stage[&(stage as i32)];
        (r.entered, r.moved_forward, r.moved_back, r.stayed)
    };
    assert_eq!(row(S::Targeted), (3, 2, 0, 1));
    assert_eq!(row(S::Engaged), (2, 1, 0, 1));
    assert_eq!(row(S::Prioritized), (1, 1, 0, 0));
    assert_eq!(row(S::Qualified), (1, 1, 0, 0));
    assert_eq!(row(S::Pipeline), (1, 0, 0, 1));
    let accounts = |stage: S| by_stage[&(stage as i32)].accounts_entered;
    assert_eq!(
        [S::Targeted, S::Engaged, S::Prioritized, S::Qualified].map(accounts),
        [3, 2, 1, 1]
    );
    system.stop().await;
}

async fn notifications_survive_receiver_outage_and_restart(db: TestDatabase) {
    let receiver = WebhookReceiver::start_down().await;
    let mut system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    lifecycle.set_webhook(&receiver.url, None).await;
    let mut expected = Vec::new();
    for name in ["One", "Two", "Three"] {
        let id = lifecycle.create_account(name, "owner").await.account_id;
        score(&lifecycle, &id, &format!("{name}-s"), 1, 100.0, 0.0, vec![]).await;
        expected.push(id);
    }
    // The receiver is down: deliveries fail and are retried.
    receiver.wait_for_refusals(3).await;
    system.stop_lifecycle().await;

    receiver.set_up(true);
    system.start_lifecycle().await;
    receiver.wait_for(3).await;
    // Count once every notification is marked delivered (none is left in
    // the outbox), so no duplicate can still be on its way.
    wait_until_delivered(&db.settings, NOTIFICATION_TOPIC).await;
    let received = receiver.accepted();
    let mut ids: Vec<String> = received
        .iter()
        .map(|r| {
            r.header("x-cascade-notification-id")
                .expect("id")
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 3, "every notification delivered once");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "no notification delivered twice");
    let mut accounts: Vec<String> = received
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_str(&r.body).expect("json");
            body["cascade"]["accountId"]
                .as_str()
                .expect("account")
                .to_owned()
        })
        .collect();
    accounts.sort();
    expected.sort();
    assert_eq!(accounts, expected);
    system.stop().await;
}

async fn concurrent_actions_do_not_interleave(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let ae = lifecycle.as_actor("ae");
    let id = lifecycle.create_account("Contested", "").await.account_id;
    score(&lifecycle, &id, "s", 1, 100.0, 0.0, vec![]).await;

    let nurture = |reason: &'static str| {
        let ae = ae.clone();
        let id = id.clone();
        async move {
            ae.public()
                .nurture_account(ae.req(pb::NurtureAccountRequest {
                    account_id: id,
                    reason: reason.into(),
                }))
                .await
        }
    };
    let (first, second) = tokio::join!(nurture("one"), nurture("two"));
    let outcomes = [first.is_ok(), second.is_ok()];
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        1,
        "exactly one Nurture wins"
    );
    let loser = first.err().or(second.err()).expect("one refused");
    assert_eq!(loser.code(), Code::FailedPrecondition);

    // A score racing a Disqualify: whatever the order, history replays to the stage.
    score(&lifecycle, &id, "s2", 2, 300.0, 0.0, vec![]).await;
    let mut disqualifier = ae.public();
    let (_, _) = tokio::join!(
        disqualifier.disqualify_account(ae.req(pb::DisqualifyAccountRequest {
            account_id: id.clone(),
            reason: "x".into(),
        })),
        score(&lifecycle, &id, "s3", 3, 420.0, 0.0, vec![])
    );
    let account = lifecycle.account(&id).await;
    let history = lifecycle.transitions(&id).await;
    assert_eq!(
        history.last().map(|t| t.to_stage),
        Some(account.stage),
        "history ends at the stage"
    );
    for pair in history.windows(2) {
        assert_eq!(
            pair[0].to_stage, pair[1].from_stage,
            "each move starts where the last ended"
        );
    }
    system.stop().await;
}

async fn settings_are_versioned(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let admin = system.lifecycle().as_actor("admin");
    let get = async |version: i64| {
        admin
            .public()
            .get_lifecycle_settings(admin.req(pb::GetLifecycleSettingsRequest { version }))
            .await
            .map(|r| r.into_inner().settings.expect("settings"))
    };
    let defaults = get(0).await.expect("defaults");
    assert_eq!(defaults.version, 1);
    assert_eq!(
        (defaults.engaged_threshold, defaults.prioritized_threshold),
        (0.0, 100.0)
    );
    assert!(defaults.qualified_stage_enabled);
    assert_eq!(defaults.on_lost_action, pb::OnLostAction::Nurture as i32);
    assert_eq!(defaults.hand_raise_activity_types, ["demo_request"]);

    admin
        .set_settings(
            pb::LifecycleSettings {
                prioritized_threshold: 80.0,
                webhook_secret: "hunter2-hunter2-hunter2".into(),
                ..Default::default()
            },
            &["prioritized_threshold", "webhook_secret"],
        )
        .await;
    let current = get(0).await.expect("current");
    assert_eq!((current.version, current.prioritized_threshold), (2, 80.0));
    assert!(current.webhook_secret_set);
    assert!(
        current.webhook_secret.is_empty(),
        "secrets are never returned"
    );
    assert_eq!(current.updated_by, "admin");
    assert_eq!(get(1).await.expect("v1").prioritized_threshold, 100.0);
    assert_eq!(get(9).await.expect_err("no v9").code(), Code::NotFound);
    // Writing the values in force again is no change: no version 3.
    system
        .lifecycle()
        .as_actor("sync")
        .set_settings(
            pb::LifecycleSettings {
                prioritized_threshold: 80.0,
                ..Default::default()
            },
            &["prioritized_threshold"],
        )
        .await;
    let again = get(0).await.expect("current");
    assert_eq!((again.version, again.updated_by.as_str()), (2, "admin"));

    let bad = admin
        .public()
        .update_lifecycle_settings(admin.req(pb::UpdateLifecycleSettingsRequest {
            settings: Some(pb::LifecycleSettings {
                engaged_threshold: 90.0,
                ..Default::default()
            }),
            update_mask: mask(&["engaged_threshold"]),
        }))
        .await
        .expect_err("engaged above prioritized");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(get(0).await.expect("unchanged").version, 2);
    // A secret in the Standard Webhooks format must be one: its libraries
    // decode what follows whsec_, and a receiver could never verify; nor may
    // its key be empty, which would let anyone sign.
    // A key shorter than 16 bytes could be guessed from what it signs.
    for (secret, what) in [
        ("whsec_not base64!", "a whsec_ secret that is not base64"),
        ("whsec_", "whsec_ with no key"),
        ("x", "a 1-character secret"),
        ("whsec_MTIzNDU2Nzg5MDEyMzQ1", "a whsec_ key of 15 bytes"),
    ] {
        let refused = admin
            .public()
            .update_lifecycle_settings(admin.req(pb::UpdateLifecycleSettingsRequest {
                settings: Some(pb::LifecycleSettings {
                    webhook_secret: secret.into(),
                    ..Default::default()
                }),
                update_mask: mask(&["webhook_secret"]),
            }))
            .await
            .expect_err(what);
        assert_eq!(
            violated_fields(&refused),
            ["settings.webhook_secret"],
            "{what}"
        );
    }
    assert_eq!(get(0).await.expect("unchanged").version, 2);

    // The new threshold applies to the next score; existing accounts did not move.
    let lifecycle = system.lifecycle();
    let id = lifecycle.create_account("Threshold", "").await.account_id;
    score(&lifecycle, &id, "t", 1, 85.0, 0.0, vec![]).await;
    assert_eq!(lifecycle.account(&id).await.stage, S::Prioritized as i32);
    system.stop().await;
}

async fn watch_streams_and_resumes(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let id = lifecycle
        .create_account("Watched", "owner")
        .await
        .account_id;
    let mut live = lifecycle
        .public()
        .watch_account_events(lifecycle.req(pb::WatchAccountEventsRequest::default()))
        .await
        .expect("watch")
        .into_inner();
    let mut prioritized_only = lifecycle
        .public()
        .watch_account_events(lifecycle.req(pb::WatchAccountEventsRequest {
            // Repeats count once (the stream holds the set while it is open).
            stages: vec![S::Prioritized as i32; 1000],
            ..Default::default()
        }))
        .await
        .expect("watch")
        .into_inner();
    score(&lifecycle, &id, "w1", 1, 120.0, 0.0, vec![]).await;

    let next = async |stream: &mut tonic::Streaming<pb::WatchAccountEventsResponse>| {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("ok")
    };
    let e1 = next(&mut live).await;
    let e2 = next(&mut live).await;
    let e3 = next(&mut live).await;
    let to_stage = |e: &pb::WatchAccountEventsResponse| match &e.event {
        Some(pb::watch_account_events_response::Event::Transition(t)) => Some(t.to_stage),
        _ => None,
    };
    assert_eq!(to_stage(&e1), Some(S::Engaged as i32));
    assert_eq!(to_stage(&e2), Some(S::Prioritized as i32));
    assert!(matches!(
        e3.event,
        Some(pb::watch_account_events_response::Event::Notification(_))
    ));

    let f1 = next(&mut prioritized_only).await;
    assert_eq!(
        to_stage(&f1),
        Some(S::Prioritized as i32),
        "ENGAGED filtered out"
    );

    // Resume after the first event: the rest arrive again, in order.
    drop(live);
    let mut resumed = lifecycle
        .public()
        .watch_account_events(lifecycle.req(pb::WatchAccountEventsRequest {
            cursor: e1.cursor.clone(),
            ..Default::default()
        }))
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(next(&mut resumed).await, e2);
    assert_eq!(next(&mut resumed).await, e3);
    let bad = lifecycle
        .public()
        .watch_account_events(lifecycle.req(pb::WatchAccountEventsRequest {
            cursor: "yesterday".into(),
            ..Default::default()
        }))
        .await
        .expect_err("bad cursor");
    assert_eq!(bad.code(), Code::InvalidArgument);
    // A cursor past the tenant's feed was never returned to it: refused,
    // where it used to wait silently and skip every new event.
    let last: i64 = e3.cursor.parse().expect("a number");
    let ahead = lifecycle
        .public()
        .watch_account_events(lifecycle.req(pb::WatchAccountEventsRequest {
            cursor: (last + 1_000).to_string(),
            ..Default::default()
        }))
        .await
        .expect_err("a cursor ahead of the feed");
    assert_eq!(violated_fields(&ahead), ["cursor"]);
    assert!(ahead.message().contains("ahead of"), "{}", ahead.message());
    // An account the tenant does not have: NOT_FOUND, not a quiet stream.
    let unknown = lifecycle
        .public()
        .watch_account_events(lifecycle.req(pb::WatchAccountEventsRequest {
            account_id: cascade_domain::ids::new_id(),
            ..Default::default()
        }))
        .await
        .expect_err("no such account");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // One tenant holds at most 50 streams open on a replica; the next is
    // RESOURCE_EXHAUSTED, other tenants are not held back, and a closed
    // stream's place comes free.
    let crowded = lifecycle.as_tenant("crowded");
    let watch = async |client: &Lifecycle| {
        client
            .public()
            .watch_account_events(client.req(pb::WatchAccountEventsRequest::default()))
            .await
    };
    let mut open = Vec::new();
    for _ in 0..50 {
        open.push(watch(&crowded).await.expect("within the bound"));
    }
    let refused = watch(&crowded).await.expect_err("over the bound");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("50 watch streams"),
        "{refused:?}"
    );
    let another = watch(&lifecycle).await.expect("another tenant watches");
    drop(open.pop());
    eventually("a closed stream's place to come free", async || {
        watch(&crowded).await.map(drop).map_err(|s| s.code())
    })
    .await;
    drop((another, open, resumed, prioritized_only));
    system.stop().await;
}

/// One ApplyEngagementScores call: each item gets the answer the unary call
/// would give, one item's problem does not stop the others, and the applied
/// items change accounts and contacts exactly as one call each would.
async fn batched_scores_answer_per_item(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let hot = lifecycle
        .create_account("Hot", "owner@seller.example")
        .await
        .account_id;
    let warm = lifecycle.create_account("Warm", "").await.account_id;
    let done = lifecycle.create_account("Done", "").await.account_id;
    let ann = lifecycle.create_contact(&hot, "ann@hot.example").await;
    let other = lifecycle.create_contact(&warm, "other@warm.example").await;
    let again = lifecycle.create_account("Again", "").await.account_id;
    score(&lifecycle, &done, "done-1", 5, 30.0, 0.0, vec![]).await;
    score(&lifecycle, &again, "again-1", 5, 30.0, 0.0, vec![]).await;

    let item = score_delivery;
    let mut hot_item = item("b-hot", &hot, 1, 150.0);
    hot_item.contacts = vec![
        pb::ContactEngagement {
            contact_id: ann.contact_id.clone(),
            engagement_score: 150.0,
            new_activity_types: vec!["webinar_attended".into()],
        },
        // Another account's contact is not this delivery's to change.
        pb::ContactEngagement {
            contact_id: other.contact_id.clone(),
            engagement_score: 999.0,
            new_activity_types: vec!["webinar_attended".into()],
        },
    ];
    let mut bad = item("", &new_id(), 0, f64::NAN);
    bad.contacts = vec![pb::ContactEngagement {
        contact_id: String::new(),
        engagement_score: 1.0,
        new_activity_types: vec!["Not A Type".into()],
    }];
    let items = vec![
        hot_item,
        item("b-warm", &warm, 1, 20.0),
        item("b-missing", &new_id(), 1, 20.0),
        bad,
        item("b-done-old", &done, 4, 500.0),
        item("again-1", &again, 9, 500.0),
    ];
    let scoring = lifecycle.as_actor("scoring");
    let results = scoring
        .internal()
        .apply_engagement_scores(scoring.req(pb::ApplyEngagementScoresRequest {
            items: items.clone(),
        }))
        .await
        .expect("batch applied")
        .into_inner()
        .results;
    let outcomes: Vec<i32> = results.iter().map(|r| r.outcome).collect();
    use pb::ApplyOutcome as O;
    assert_eq!(
        outcomes,
        [
            O::Applied as i32,
            O::Applied as i32,
            O::NotFound as i32,
            O::Rejected as i32,
            O::Stale as i32,
            O::Duplicate as i32,
        ]
    );
    let accounts: Vec<&str> = results.iter().map(|r| r.account_id.as_str()).collect();
    let sent: Vec<&str> = items.iter().map(|i| i.account_id.as_str()).collect();
    assert_eq!(accounts, sent, "results in request order");
    assert_eq!(
        stage_path(&results[0].transitions),
        vec![
            (S::Targeted as i32, S::Engaged as i32, Cause::Score as i32),
            (
                S::Engaged as i32,
                S::Prioritized as i32,
                Cause::Score as i32
            ),
        ]
    );
    let fields: Vec<&str> = results[3]
        .violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "items[3].event_id",
            "items[3].sequence",
            "items[3].engagement_score",
            "items[3].average_engagement_score",
            "items[3].contacts[0].contact_id",
            "items[3].contacts[0].new_activity_types[0]",
        ]
    );

    let hot_now = lifecycle.account(&hot).await;
    assert_eq!(
        (hot_now.stage, hot_now.engagement_score),
        (S::Prioritized as i32, 150.0)
    );
    assert_eq!(
        reached(&hot_now),
        [S::Targeted as i32, S::Engaged as i32, S::Prioritized as i32]
    );
    let ann_now = lifecycle.contact(&ann.contact_id).await;
    assert_eq!(
        (ann_now.stage, ann_now.engagement_score),
        (C::Engaged as i32, 150.0)
    );
    let other_now = lifecycle.contact(&other.contact_id).await;
    assert_eq!(
        (other_now.stage, other_now.engagement_score),
        (C::Suspect as i32, 0.0),
        "a contact of another account is left alone"
    );
    let warm_now = lifecycle.account(&warm).await;
    assert_eq!(
        (warm_now.stage, warm_now.engagement_score),
        (S::Engaged as i32, 20.0)
    );
    let done_now = lifecycle.account(&done).await;
    assert_eq!(
        done_now.engagement_score, 30.0,
        "stale and duplicate change nothing"
    );
    assert_eq!(lifecycle.transitions(&hot).await.len(), 2);

    // The same call again: every applied item is now a duplicate.
    let again = scoring
        .internal()
        .apply_engagement_scores(scoring.req(pb::ApplyEngagementScoresRequest {
            items: items[..2].to_vec(),
        }))
        .await
        .expect("repeat")
        .into_inner()
        .results;
    assert!(again.iter().all(|r| r.outcome == O::Duplicate as i32));
    assert_eq!(lifecycle.transitions(&hot).await.len(), 2);

    // Whole-call problems: none, too many, or one account twice.
    for (items, field) in [
        (Vec::new(), "items"),
        (vec![item("x", &warm, 7, 1.0); 501], "items"),
        (
            vec![item("y1", &warm, 7, 1.0), item("y2", &warm, 8, 1.0)],
            "items[1].account_id",
        ),
    ] {
        let status = scoring
            .internal()
            .apply_engagement_scores(scoring.req(pb::ApplyEngagementScoresRequest { items }))
            .await
            .expect_err("refused whole");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), [field]);
    }
    assert_eq!(lifecycle.account(&warm).await.engagement_score, 20.0);
    system.stop().await;
}

/// A sequence implausibly far past the last applied one (a forged or broken
/// delivery) is refused: alone with FAILED_PRECONDITION, in a batch as that
/// item's REJECTED while the others apply; the account's score is not frozen.
async fn a_far_sequence_jump_is_refused_per_delivery(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let frozen = lifecycle
        .create_account("Frozen Co", "fran")
        .await
        .account_id;
    let fine = lifecycle.create_account("Fine Co", "finn").await.account_id;
    let delivery = |account_id: &str, event_id: &str, sequence: i64| {
        score_delivery(event_id, account_id, sequence, 10.0)
    };

    let alone = lifecycle
        .try_apply_score(delivery(&frozen, "far-1", 1_000_000_001))
        .await
        .expect_err("a far jump");
    assert_eq!(alone.code(), Code::FailedPrecondition);
    let violation = &alone
        .get_details_precondition_failure()
        .expect("detail")
        .violations[0];
    assert_eq!(violation.r#type, "SCORE_SEQUENCE");
    assert!(
        violation.description.contains("1000000000"),
        "{}",
        violation.description
    );

    let scoring = lifecycle.as_actor("scoring");
    let batch = scoring
        .internal()
        .apply_engagement_scores(scoring.req(pb::ApplyEngagementScoresRequest {
            items: vec![
                delivery(&frozen, "far-2", 2_000_000_000),
                delivery(&fine, "ok-1", 1),
            ],
        }))
        .await
        .expect("the call itself succeeds")
        .into_inner();
    let outcomes: Vec<i32> = batch.results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            pb::ApplyOutcome::Rejected as i32,
            pb::ApplyOutcome::Applied as i32
        ]
    );
    assert_eq!(batch.results[0].violations[0].field, "items[0].sequence");
    assert_eq!(lifecycle.account(&fine).await.engagement_score, 10.0);

    // Nothing of the refused deliveries was stored: a real one still applies.
    assert_eq!(lifecycle.account(&frozen).await.engagement_score, 0.0);
    let real = score(&lifecycle, &frozen, "real-1", 1, 20.0, 0.0, vec![]).await;
    assert_eq!(real.outcome, pb::ApplyOutcome::Applied as i32);
    assert_eq!(lifecycle.account(&frozen).await.engagement_score, 20.0);
    system.stop().await;
}

on_each_database!(
    a_far_sequence_jump_is_refused_per_delivery,
    tekstack_walkthrough,
    disqualify_and_nurture_keep_history,
    stage_at_answers_between_transitions,
    apply_calls_are_idempotent_and_ordered,
    lost_deal_nurtures_only_when_last_open,
    a_hand_raised_during_a_deal_counts_when_it_is_lost,
    funnel_matches_a_hand_computed_scenario,
    notifications_survive_receiver_outage_and_restart,
    concurrent_actions_do_not_interleave,
    settings_are_versioned,
    watch_streams_and_resumes,
    batched_scores_answer_per_item,
    an_older_event_of_a_deal_changes_nothing,
    a_nurtured_accounts_baseline_decays_with_its_score,
);

/// Under decay the points a Nurture's baseline was taken from keep
/// decaying, and so does the baseline: 30 days after a Nurture at 150 (a
/// half-life of 30), a score of 175 is 75 old points and 100 earned since,
/// PRIORITIZED again. A tester saw such an account stay ENGAGED with 25
/// "earned since".
async fn a_nurtured_accounts_baseline_decays_with_its_score(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let id = lifecycle
        .create_account("Decaying", "owner")
        .await
        .account_id;
    let ann = lifecycle.create_contact(&id, "ann@decaying.example").await;
    let delivered =
        |event: &str, sequence: i64, score: f64, days_ago: i64| pb::ApplyEngagementScoreRequest {
            compute_time: Some(cascade_testkit::fixtures::days_ago(days_ago)),
            decay_half_life_days: 30.0,
            contacts: vec![pb::ContactEngagement {
                contact_id: ann.contact_id.clone(),
                engagement_score: score,
                new_activity_types: vec!["email_open".into()],
            }],
            ..score_delivery(event, &id, sequence, score)
        };
    lifecycle
        .try_apply_score(delivered("s1", 1, 150.0, 30))
        .await
        .expect("scored");
    assert_eq!(lifecycle.account(&id).await.stage, S::Prioritized as i32);
    lifecycle.nurture(&id, "next quarter").await;
    lifecycle
        .try_apply_score(delivered("s2", 2, 175.0, 0))
        .await
        .expect("scored");
    let account = lifecycle.account(&id).await;
    assert_eq!(account.stage, S::Prioritized as i32);
    assert_eq!(account.engagement_since_recycle, 100.0);
    system.stop().await;
}

/// Each event names the deal's whole buying group, and the deal's version:
/// one about an older version than one applied (a dead letter sent again
/// after newer events) answers STALE and changes nothing, so it cannot put
/// back a member taken out since, nor add one.
async fn an_older_event_of_a_deal_changes_nothing(db: TestDatabase) {
    use cascade_testkit::fixtures::opportunity_event;
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let id = lifecycle.create_account("Versioned", "").await.account_id;
    let [ann, bob, cy] = [
        "ann@versioned.example",
        "bob@versioned.example",
        "cy@versioned.example",
    ]
    .map(|email| {
        let lifecycle = lifecycle.clone();
        let id = id.clone();
        async move { lifecycle.create_contact(&id, email).await.contact_id }
    });
    let (ann, bob, cy) = (ann.await, bob.await, cy.await);
    let deal = cascade_domain::ids::new_id();
    let event = |version: i64, group: &[&str]| pb::ApplyOpportunityEventRequest {
        opportunity_version: version,
        ..opportunity_event(&id, &deal, Opp::Opened, group)
    };
    let outcome = |r: pb::ApplyOpportunityEventResponse| r.outcome;
    for (version, group) in [
        (1, vec![ann.as_str(), bob.as_str()]),
        (3, vec![ann.as_str()]),
    ] {
        let applied = lifecycle
            .try_apply_opportunity_event(event(version, &group))
            .await
            .expect("applied");
        assert_eq!(outcome(applied), pb::ApplyOutcome::Applied as i32);
    }
    assert_eq!(lifecycle.contact(&bob).await.stage, C::Suspect as i32);
    let stale = lifecycle
        .try_apply_opportunity_event(event(2, &[&ann, &bob, &cy]))
        .await
        .expect("answered");
    assert_eq!(outcome(stale), pb::ApplyOutcome::Stale as i32);
    assert_eq!(lifecycle.contact(&bob).await.stage, C::Suspect as i32);
    assert_eq!(lifecycle.contact(&cy).await.stage, C::Suspect as i32);
    assert_eq!(lifecycle.contact(&ann).await.stage, C::Opportunity as i32);
    // An event without a version (sent before versions were) is applied.
    let unversioned = lifecycle
        .try_apply_opportunity_event(event(0, &[&ann, &cy]))
        .await
        .expect("applied");
    assert_eq!(outcome(unversioned), pb::ApplyOutcome::Applied as i32);
    assert_eq!(lifecycle.contact(&cy).await.stage, C::Opportunity as i32);
    system.stop().await;
}
