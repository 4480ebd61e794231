//! What a client can see of the engine's work, over real gRPC on SQLite and
//! PostgreSQL: a contact's stage history, notifications with their webhook
//! delivery state, the engagement the thresholds see after a recycle, and
//! the times of one change agreeing to the millisecond.

mod common;

use cascade_domain::ids::new_id;
use cascade_proto::common::v1::{AccountStage as S, ContactStage as C};
use cascade_proto::lifecycle::v1 as pb;
use cascade_proto::lifecycle::v1::ContactTransitionCause as Why;
use cascade_proto::lifecycle::v1::NotificationDeliveryState as Delivery;
use cascade_proto::lifecycle::v1::OpportunityEventType as Opp;
use cascade_testkit::fixtures::{mask, score_delivery, violated_fields};
use cascade_testkit::{
    Lifecycle, Service, TestDatabase, TestSystem, WebhookReceiver, eventually, on_each_database,
    request_for,
};
use common::{opportunity, score};
use tonic::Code;

async fn contact_history(
    lifecycle: &Lifecycle,
    contact_id: &str,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListContactTransitionsResponse, tonic::Status> {
    lifecycle
        .public()
        .list_contact_transitions(lifecycle.req(pb::ListContactTransitionsRequest {
            contact_id: contact_id.into(),
            page_size,
            page_token: page_token.into(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

/// Updates `contact` acting as `actor` (kept in the contact's history).
async fn update_contact(lifecycle: &Lifecycle, actor: &str, contact: pb::Contact, paths: &[&str]) {
    let editor = lifecycle.as_actor(actor);
    editor
        .public()
        .update_contact(editor.req(pb::UpdateContactRequest {
            contact: Some(contact),
            update_mask: mask(paths),
        }))
        .await
        .expect("contact updated");
}

async fn contacts_keep_a_stage_history(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let account = lifecycle
        .create_account("Umbrella", "owner@seller.example")
        .await;
    let id = account.account_id.clone();
    let jill = lifecycle.create_contact(&id, "").await;
    let jill_id = jill.contact_id.clone();
    assert_eq!(jill.stage, C::Anonymous as i32);
    let fresh = contact_history(&lifecycle, &jill_id, 0, "")
        .await
        .expect("history");
    assert!(
        fresh.transitions.is_empty(),
        "creation is not a change: {:?}",
        fresh.transitions
    );

    // Every way a contact moves, in order.
    update_contact(
        &lifecycle,
        "marketing-ops",
        pb::Contact {
            contact_id: jill_id.clone(),
            email: "jill@umbrella.example".into(),
            ..Default::default()
        },
        &["email"],
    )
    .await;
    score(
        &lifecycle,
        &id,
        "score-1",
        1,
        10.0,
        0.0,
        vec![(jill_id.clone(), 10.0, vec!["email_open"])],
    )
    .await;
    score(
        &lifecycle,
        &id,
        "score-2",
        2,
        30.0,
        0.0,
        vec![(jill_id.clone(), 30.0, vec!["demo_request"])],
    )
    .await;
    // Activity that changes nothing leaves no entry.
    score(
        &lifecycle,
        &id,
        "score-3",
        3,
        35.0,
        0.0,
        vec![(jill_id.clone(), 35.0, vec!["email_open"])],
    )
    .await;
    let deal = new_id();
    opportunity(
        &lifecycle,
        &id,
        "opp-open",
        &deal,
        Opp::Opened,
        &[&jill_id],
        0,
    )
    .await;
    opportunity(&lifecycle, &id, "opp-lost", &deal, Opp::Lost, &[], 0).await;
    update_contact(
        &lifecycle,
        "sdr@seller.example",
        pb::Contact {
            contact_id: jill_id.clone(),
            stage: C::SalesQualified as i32,
            ..Default::default()
        },
        &["stage"],
    )
    .await;

    let history = contact_history(&lifecycle, &jill_id, 0, "")
        .await
        .expect("history");
    let path: Vec<(i32, i32, i32, &str, &str)> = history
        .transitions
        .iter()
        .map(|t| {
            (
                t.from_stage,
                t.to_stage,
                t.cause,
                t.actor.as_str(),
                t.event_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        path,
        vec![
            (
                C::Anonymous as i32,
                C::Suspect as i32,
                Why::EmailChanged as i32,
                "marketing-ops",
                ""
            ),
            (
                C::Suspect as i32,
                C::Engaged as i32,
                Why::Activity as i32,
                "scoring",
                "score-1"
            ),
            (
                C::Engaged as i32,
                C::MarketingQualified as i32,
                Why::HandRaise as i32,
                "scoring",
                "score-2"
            ),
            (
                C::MarketingQualified as i32,
                C::Opportunity as i32,
                Why::OpportunityOpened as i32,
                "opportunity",
                "opp-open"
            ),
            // Back to the stage the hand-raise gave her before the deal.
            (
                C::Opportunity as i32,
                C::MarketingQualified as i32,
                Why::OpportunityLost as i32,
                "opportunity",
                "opp-lost"
            ),
            (
                C::MarketingQualified as i32,
                C::SalesQualified as i32,
                Why::Manual as i32,
                "sdr@seller.example",
                ""
            ),
        ]
    );
    assert!(history.next_page_token.is_empty());
    for t in &history.transitions {
        assert_eq!(t.contact_id, jill_id);
        assert_eq!(t.account_id, id);
        assert!(!t.transition_id.is_empty());
    }
    // The last move is the contact's current stage, entered at its time.
    let now = lifecycle.contact(&jill_id).await;
    let last = history.transitions.last().expect("a last move");
    assert_eq!(now.stage, C::SalesQualified as i32);
    assert_eq!(now.stage_entered_time, last.transition_time);

    // Pages of two, continuing where the last one stopped.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = contact_history(&lifecycle, &jill_id, 2, &token)
            .await
            .expect("page");
        assert!(page.transitions.len() <= 2);
        paged.extend(page.transitions);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, history.transitions);

    // A delivery naming a contact twice is refused whole: each entry would be
    // judged against the stored stage, and the history would show moves
    // that never happened.
    let entry = |types: &[&str]| pb::ContactEngagement {
        contact_id: jill_id.clone(),
        engagement_score: 50.0,
        new_activity_types: types.iter().map(|t| t.to_string()).collect(),
    };
    let twice = lifecycle
        .try_apply_score(pb::ApplyEngagementScoreRequest {
            contacts: vec![entry(&["email_open"]), entry(&[])],
            ..score_delivery("score-twice", &id, 9, 50.0)
        })
        .await
        .expect_err("a contact twice in one delivery");
    assert_eq!(twice.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&twice)[0], "contacts[1].contact_id");
    let unchanged = contact_history(&lifecycle, &jill_id, 0, "")
        .await
        .expect("history");
    assert_eq!(unchanged.transitions, history.transitions);

    // Ids are checked: missing, unknown, and another tenant's.
    let missing = contact_history(&lifecycle, " ", 0, "")
        .await
        .expect_err("contact_id is required");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&missing)[0], "contact_id");
    let unknown = contact_history(&lifecycle, &new_id(), 0, "")
        .await
        .expect_err("unknown contact");
    assert_eq!(unknown.code(), Code::NotFound);
    let foreign = lifecycle
        .public()
        .list_contact_transitions(request_for(
            "globex",
            pb::ListContactTransitionsRequest {
                contact_id: jill_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("another tenant's contact");
    assert_eq!(foreign.code(), Code::NotFound);
    let bad_token = contact_history(&lifecycle, &jill_id, 0, "not-a-token")
        .await
        .expect_err("bad token");
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    system.stop().await;
}

async fn list_notifications(
    lifecycle: &Lifecycle,
    request: pb::ListNotificationsRequest,
) -> Result<pb::ListNotificationsResponse, tonic::Status> {
    lifecycle
        .public()
        .list_notifications(lifecycle.req(request))
        .await
        .map(tonic::Response::into_inner)
}

/// Waits until the account's only notification satisfies `done`.
async fn notification_of(
    lifecycle: &Lifecycle,
    account_id: &str,
    done: impl Fn(&pb::Notification) -> bool,
) -> pb::Notification {
    let what = format!("the notification of {account_id} to reach the expected state");
    eventually(&what, async || {
        let listed = list_notifications(
            lifecycle,
            pb::ListNotificationsRequest {
                account_id: account_id.into(),
                ..Default::default()
            },
        )
        .await
        .expect("list");
        assert_eq!(listed.notifications.len(), 1, "{listed:?}");
        let n = listed.notifications[0].clone();
        if done(&n) { Ok(n) } else { Err(n) }
    })
    .await
}

async fn notifications_show_their_delivery_state(db: TestDatabase) {
    let receiver = WebhookReceiver::start_down().await;
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();

    // No webhook yet: the notification is set aside, not retried.
    let quiet = lifecycle.create_account("Quiet Co", "quinn").await;
    score(&lifecycle, &quiet.account_id, "q-1", 1, 120.0, 0.0, vec![]).await;
    let set_aside = notification_of(&lifecycle, &quiet.account_id, |n| {
        n.delivery_state == Delivery::NoWebhook as i32
    })
    .await;
    assert_eq!(set_aside.failed_attempts, 0);
    assert!(set_aside.settle_time.is_some());
    assert_eq!(set_aside.owner_id, "quinn");
    assert_eq!(set_aside.reason, pb::NotificationReason::Prioritized as i32);

    // A webhook that is down: pending, with the failures counted.
    lifecycle.set_webhook(&receiver.url, None).await;
    let loud = lifecycle.create_account("Loud Co", "lou").await;
    score(&lifecycle, &loud.account_id, "l-1", 1, 150.0, 0.0, vec![]).await;
    receiver.wait_for_refusals(2).await;
    let failing = notification_of(&lifecycle, &loud.account_id, |n| n.failed_attempts >= 2).await;
    assert_eq!(failing.delivery_state, Delivery::Pending as i32);
    assert!(
        failing.last_error.contains("503"),
        "last error: {}",
        failing.last_error
    );
    assert!(failing.last_attempt_time.is_some());
    assert!(failing.settle_time.is_none());
    let pending = list_notifications(
        &lifecycle,
        pb::ListNotificationsRequest {
            delivery_state: Delivery::Pending as i32,
            ..Default::default()
        },
    )
    .await
    .expect("pending ones");
    assert_eq!(
        pending
            .notifications
            .iter()
            .map(|n| n.account_id.as_str())
            .collect::<Vec<_>>(),
        vec![loud.account_id.as_str()]
    );

    // The webhook comes back: delivered, and the failures stay on record.
    receiver.set_up(true);
    let delivered = notification_of(&lifecycle, &loud.account_id, |n| {
        n.delivery_state == Delivery::Delivered as i32
    })
    .await;
    assert!(delivered.failed_attempts >= 2);
    assert!(delivered.settle_time.is_some());
    assert_eq!(
        receiver.accepted()[0].header("x-cascade-notification-id"),
        Some(delivered.notification_id.as_str())
    );

    // Newest first, in pages.
    let first = list_notifications(
        &lifecycle,
        pb::ListNotificationsRequest {
            page_size: 1,
            ..Default::default()
        },
    )
    .await
    .expect("first page");
    assert_eq!(first.notifications[0].account_id, loud.account_id);
    let second = list_notifications(
        &lifecycle,
        pb::ListNotificationsRequest {
            page_size: 1,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("second page");
    assert_eq!(second.notifications[0].account_id, quiet.account_id);
    assert!(second.next_page_token.is_empty());

    // Bad filters name their field; another tenant sees none of them.
    let bad_state = list_notifications(
        &lifecycle,
        pb::ListNotificationsRequest {
            delivery_state: 42,
            ..Default::default()
        },
    )
    .await
    .expect_err("unknown state");
    assert_eq!(bad_state.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&bad_state)[0], "delivery_state");
    let unknown_account = list_notifications(
        &lifecycle,
        pb::ListNotificationsRequest {
            account_id: new_id(),
            ..Default::default()
        },
    )
    .await
    .expect_err("unknown account");
    assert_eq!(unknown_account.code(), Code::NotFound);
    let foreign = lifecycle
        .public()
        .list_notifications(request_for(
            "globex",
            pb::ListNotificationsRequest::default(),
        ))
        .await
        .expect("another tenant lists its own")
        .into_inner();
    assert!(foreign.notifications.is_empty());
    system.stop().await;
}

async fn engagement_since_recycle_is_what_the_thresholds_see(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let ae = lifecycle.as_actor("ae");
    let id = lifecycle.create_account("Hooli", "gavin").await.account_id;
    let ann = lifecycle.create_contact(&id, "ann@hooli.example").await;
    // A delivery of new engagement names who brought it; one without (a
    // contact deactivated or reactivated: points leaving or coming back)
    // names no new activity.
    let active = |score: f64| vec![(ann.contact_id.clone(), score, vec!["email_open"])];
    score(&lifecycle, &id, "h-1", 1, 150.0, 0.0, active(150.0)).await;
    let prioritized = lifecycle.account(&id).await;
    assert_eq!(prioritized.stage, S::Prioritized as i32);
    assert_eq!(
        prioritized.engagement_since_recycle, 150.0,
        "never recycled"
    );

    ae.public()
        .nurture_account(ae.req(pb::NurtureAccountRequest {
            account_id: id.clone(),
            reason: "next quarter".into(),
        }))
        .await
        .expect("nurture");
    let nurtured = lifecycle.account(&id).await;
    assert_eq!(nurtured.engagement_score, 150.0);
    assert_eq!(nurtured.engagement_since_recycle, 0.0);

    // 90 earned since: below the threshold of 100, so still ENGAGED.
    score(&lifecycle, &id, "h-2", 2, 240.0, 0.0, active(240.0)).await;
    let climbing = lifecycle.account(&id).await;
    assert_eq!(climbing.engagement_since_recycle, 90.0);
    assert_eq!(climbing.stage, S::Engaged as i32);
    score(&lifecycle, &id, "h-3", 3, 250.0, 0.0, active(250.0)).await;
    let back = lifecycle.account(&id).await;
    assert_eq!(back.engagement_since_recycle, 100.0);
    assert_eq!(back.stage, S::Prioritized as i32);

    // Points that leave without activity (a contact deactivated) are not
    // owed again: the baseline follows the score down, and what is earned
    // from there counts whole. Points that come back without activity (a
    // reactivation) are not earned either.
    ae.public()
        .disqualify_account(ae.req(pb::DisqualifyAccountRequest {
            account_id: id.clone(),
            reason: "no budget".into(),
        }))
        .await
        .expect("disqualify");
    score(&lifecycle, &id, "h-4", 4, 200.0, 0.0, vec![]).await;
    let fallen = lifecycle.account(&id).await;
    assert_eq!(fallen.engagement_since_recycle, 0.0);
    assert_eq!(fallen.stage, S::Detected as i32);
    score(&lifecycle, &id, "h-5", 5, 210.0, 0.0, active(210.0)).await;
    let engaged = lifecycle.account(&id).await;
    assert_eq!(engaged.engagement_since_recycle, 10.0);
    assert_eq!(engaged.stage, S::Engaged as i32);
    score(&lifecycle, &id, "h-6", 6, 320.0, 0.0, vec![]).await;
    let returned = lifecycle.account(&id).await;
    assert_eq!(returned.engagement_since_recycle, 10.0);
    assert_eq!(
        returned.stage,
        S::Engaged as i32,
        "points back are not earned"
    );
    system.stop().await;
}

fn first_reached(account: &pb::Account, stage: S) -> Option<prost_types::Timestamp> {
    account
        .stages_reached
        .iter()
        .find(|s| s.stage == stage as i32)
        .and_then(|s| s.first_reached_time)
}

async fn times_of_one_change_are_equal(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let created = lifecycle.create_account("Pied Piper", "richard").await;
    assert!(created.create_time.is_some());
    assert_eq!(created.stage_entered_time, created.create_time);
    assert_eq!(first_reached(&created, S::Targeted), created.create_time);
    let stored = lifecycle.account(&created.account_id).await;
    assert_eq!(
        stored.create_time, created.create_time,
        "read back as written"
    );
    assert_eq!(first_reached(&stored, S::Targeted), stored.create_time);
    let millis = |t: &prost_types::Timestamp| t.nanos % 1_000_000;
    assert_eq!(millis(&stored.create_time.expect("time")), 0);

    let contact = lifecycle
        .create_contact(&created.account_id, "dinesh@piper.example")
        .await;
    assert_eq!(contact.stage_entered_time, contact.create_time);
    assert_eq!(
        contact
            .stages_reached
            .iter()
            .find(|s| s.stage == C::Suspect as i32)
            .and_then(|s| s.first_reached_time),
        contact.create_time
    );

    let engaged = score(&lifecycle, &created.account_id, "p-1", 1, 5.0, 0.0, vec![])
        .await
        .account
        .expect("account");
    assert_eq!(engaged.stage, S::Engaged as i32);
    let moves = lifecycle.transitions(&created.account_id).await;
    let last = moves.last().expect("a transition");
    assert_eq!(engaged.stage_entered_time, last.transition_time);
    assert_eq!(first_reached(&engaged, S::Engaged), last.transition_time);
    assert_eq!(engaged.update_time, last.transition_time);
    system.stop().await;
}

/// One tenant's webhook hangs (every call waits for the 10 s timeout) while
/// it has many notifications queued; another tenant's notification still
/// arrives within a second: a tenant takes at most its share of the
/// deliverer's calls, and the deliverer does not wait for a whole round.
async fn a_hanging_webhook_delays_no_other_tenant(db: TestDatabase) {
    let hanging = WebhookReceiver::start_hanging().await;
    let healthy = WebhookReceiver::start().await;
    let system = TestSystem::lifecycle_on(&db).await;
    let slow = system.lifecycle().as_tenant("slow-tenant");
    let quick = system.lifecycle().as_tenant("quick-tenant");
    slow.set_webhook(&hanging.url, None).await;
    quick.set_webhook(&healthy.url, None).await;

    for n in 0..12 {
        let account = slow.create_account(&format!("Slow {n}"), "sam").await;
        score(
            &slow,
            &account.account_id,
            &format!("s-{n}"),
            1,
            150.0,
            0.0,
            vec![],
        )
        .await;
    }
    eventually("the hanging webhook to hold calls", async || {
        if hanging.held() >= 1 {
            Ok(())
        } else {
            Err(hanging.held())
        }
    })
    .await;

    let account = quick.create_account("Quick Co", "quin").await;
    let started = std::time::Instant::now();
    score(&quick, &account.account_id, "q-1", 1, 150.0, 0.0, vec![]).await;
    cascade_testkit::eventually_within(
        std::time::Duration::from_secs(1),
        "the other tenant's notification within a second",
        async || {
            let accepted = healthy.accepted();
            if accepted.len() == 1 {
                Ok(())
            } else {
                Err(accepted.len())
            }
        },
    )
    .await;
    println!(
        "notification arrived in {} ms beside {} held calls to a hanging webhook",
        started.elapsed().as_millis(),
        hanging.held()
    );
    assert!(
        hanging.held() <= 2,
        "the hanging tenant holds at most its two calls: {}",
        hanging.held()
    );
    system.stop().await;
}

/// A notification its webhook keeps refusing is dead-lettered after the
/// configured attempts, listed for the operator with the real cause, and
/// delivered once retried; another tenant sees none of it.
async fn undeliverable_notifications_are_dead_lettered_and_retried(db: TestDatabase) {
    use cascade_proto::admin::v1 as admin;
    use cascade_proto::admin::v1::outbox_admin_service_client::OutboxAdminServiceClient;

    let receiver = WebhookReceiver::start_down().await;
    let system = TestSystem::lifecycle_with(&db, |settings| {
        settings.outbox.max_attempts = 3;
    })
    .await;
    let lifecycle = system.lifecycle();
    lifecycle.set_webhook(&receiver.url, None).await;
    let account = lifecycle.create_account("Refused Co", "rae").await;
    score(
        &lifecycle,
        &account.account_id,
        "r-1",
        1,
        150.0,
        0.0,
        vec![],
    )
    .await;

    let admin_client = || OutboxAdminServiceClient::new(system.channel(Service::Lifecycle));
    let list = async |caller: &cascade_testkit::Lifecycle| {
        admin_client()
            .list_dead_letters(caller.req(admin::ListDeadLettersRequest::default()))
            .await
            .expect("ListDeadLetters")
            .into_inner()
            .dead_letters
    };
    let dead = eventually("the notification to be dead-lettered", async || {
        let dead = list(&lifecycle).await;
        if dead.len() == 1 { Ok(dead) } else { Err(dead) }
    })
    .await;
    assert_eq!(receiver.refused(), 3, "three attempts, then given up");
    assert_eq!(dead[0].topic, "notifications");
    assert_eq!(dead[0].partition_key, account.account_id);
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].last_error.contains("503"),
        "the real cause: {}",
        dead[0].last_error
    );
    assert!(dead[0].create_time.is_some() && dead[0].last_attempt_time.is_some());
    assert!(list(&lifecycle.as_tenant("someone-else")).await.is_empty());
    // A topic this service does not have is a typo, not an empty list.
    let typo = admin_client()
        .list_dead_letters(lifecycle.req(admin::ListDeadLettersRequest {
            topic: "notification".into(),
            ..Default::default()
        }))
        .await
        .expect_err("no such topic");
    assert_eq!(violated_fields(&typo), ["topic"]);
    // Blank is not "every topic" (a retry of `all` would take them all).
    let blank = admin_client()
        .list_dead_letters(lifecycle.req(admin::ListDeadLettersRequest {
            topic: " ".into(),
            ..Default::default()
        }))
        .await
        .expect_err("a blank topic");
    assert_eq!(violated_fields(&blank), ["topic"]);
    assert!(
        cascade_testkit::fixtures::violations(&typo)[0]
            .1
            .ends_with("one of this service's: notifications"),
        "{typo:?}"
    );
    let by_topic = admin_client()
        .list_dead_letters(lifecycle.req(admin::ListDeadLettersRequest {
            topic: "notifications".into(),
            ..Default::default()
        }))
        .await
        .expect("its own topic")
        .into_inner()
        .dead_letters;
    assert_eq!(by_topic.len(), 1);
    // The notification says it was given up on (a tester saw it PENDING).
    let dead_one = notification_of(&lifecycle, &account.account_id, |n| {
        n.delivery_state == Delivery::DeadLettered as i32
    })
    .await;
    assert_eq!(dead_one.failed_attempts, 3);
    // Its dead letter goes by the notification's id, which the operator has.
    assert_eq!(dead[0].id, dead_one.notification_id);
    let listed = list_notifications(
        &lifecycle,
        pb::ListNotificationsRequest {
            delivery_state: Delivery::DeadLettered as i32,
            ..Default::default()
        },
    )
    .await
    .expect("filtered by state")
    .notifications;
    assert_eq!(listed.len(), 1);

    // Another tenant cannot retry it; naming nothing is refused.
    let other = admin_client()
        .retry_dead_letters(lifecycle.as_tenant("someone-else").req(
            admin::RetryDeadLettersRequest {
                ids: vec![dead[0].id.clone()],
                ..Default::default()
            },
        ))
        .await
        .expect("retry answered")
        .into_inner();
    assert_eq!(other.retried_count, 0);
    let nothing = admin_client()
        .retry_dead_letters(lifecycle.req(admin::RetryDeadLettersRequest::default()))
        .await
        .expect_err("nothing named");
    assert_eq!(violated_fields(&nothing), ["ids"]);
    // Both ids and all, or something that is not an id: refused, naming it.
    for (request, field) in [
        (
            admin::RetryDeadLettersRequest {
                ids: vec![dead[0].id.clone()],
                all: true,
                ..Default::default()
            },
            "all",
        ),
        (
            admin::RetryDeadLettersRequest {
                ids: vec!["the-first-one".into()],
                ..Default::default()
            },
            "ids[0]",
        ),
        (
            admin::RetryDeadLettersRequest {
                all: true,
                topic: "notification".into(),
                ..Default::default()
            },
            "topic",
        ),
    ] {
        let refused = admin_client()
            .retry_dead_letters(lifecycle.req(request))
            .await
            .expect_err("ambiguous or malformed");
        assert_eq!(violated_fields(&refused), [field]);
    }

    receiver.set_up(true);
    let retried = admin_client()
        .retry_dead_letters(lifecycle.req(admin::RetryDeadLettersRequest {
            ids: vec![dead[0].id.clone()],
            ..Default::default()
        }))
        .await
        .expect("retried")
        .into_inner();
    assert_eq!(retried.retried_count, 1);
    let delivered = notification_of(&lifecycle, &account.account_id, |n| {
        n.delivery_state == Delivery::Delivered as i32
    })
    .await;
    assert_eq!(
        receiver.accepted()[0].header("x-cascade-notification-id"),
        Some(delivered.notification_id.as_str())
    );
    assert!(list(&lifecycle).await.is_empty());
    system.stop().await;
}

/// By default a webhook reaches only public addresses: a URL naming
/// loopback, a private network or the metadata endpoint is refused when
/// written, naming the field; one written while an operator allowed it is
/// refused when called (recorded as the failure), and the receiver hears
/// nothing.
async fn webhooks_reach_only_public_addresses_by_default(db: TestDatabase) {
    let receiver = WebhookReceiver::start().await;
    // Written while private addresses were allowed (the tests' default).
    let allowed = TestSystem::lifecycle_on(&db).await;
    allowed.lifecycle().set_webhook(&receiver.url, None).await;
    allowed.stop().await;

    let system = TestSystem::lifecycle_with(&db, |settings| {
        settings.own.webhook.allow_private_addresses = false;
    })
    .await;
    let lifecycle = system.lifecycle();
    for url in [
        receiver.url.as_str(),
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hook",
        "http://localhost:8080/hook",
        "http://10.0.0.7/hook",
        // The scheme in capitals is read as the same (RFC 3986): refused
        // for the address, not for the scheme.
        "HTTP://10.0.0.7/hook",
    ] {
        let refused = lifecycle
            .public()
            .update_lifecycle_settings(lifecycle.req(pb::UpdateLifecycleSettingsRequest {
                settings: Some(pb::LifecycleSettings {
                    webhook_url: url.into(),
                    ..Default::default()
                }),
                update_mask: cascade_testkit::fixtures::mask(&["webhook_url"]),
            }))
            .await
            .expect_err(url);
        assert_eq!(refused.code(), Code::InvalidArgument, "{url}");
        let violations = cascade_testkit::fixtures::violations(&refused);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].0, "settings.webhook_url");
        assert!(
            violations[0].1.starts_with("must reach a public address"),
            "{violations:?}"
        );
    }
    let account = lifecycle.create_account("Inside Co", "owner").await;
    score(
        &lifecycle,
        &account.account_id,
        "in-1",
        1,
        150.0,
        0.0,
        vec![],
    )
    .await;
    let failed = notification_of(&lifecycle, &account.account_id, |n| n.failed_attempts > 0).await;
    assert!(
        failed.last_error.contains("webhook address refused"),
        "{failed:?}"
    );
    assert!(receiver.accepted().is_empty(), "the receiver heard nothing");
    system.stop().await;
}

on_each_database!(
    webhooks_reach_only_public_addresses_by_default,
    contacts_keep_a_stage_history,
    a_hanging_webhook_delays_no_other_tenant,
    undeliverable_notifications_are_dead_lettered_and_retried,
    notifications_show_their_delivery_state,
    engagement_since_recycle_is_what_the_thresholds_see,
    times_of_one_change_are_equal,
);
