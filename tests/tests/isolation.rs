//! Tenant isolation, end to end: tenant B fills all three services through
//! their APIs, then a caller of tenant A tries every RPC with B's ids and
//! keys. A must never see, change or even learn of B's records: a lookup of a
//! B record fails exactly like a lookup of an id that never existed, A's lists,
//! reports and streams hold nothing of B's, and B reads everything back
//! unchanged afterwards. On SQLite and PostgreSQL.

mod common;

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use cascade_chassis::time::{now, to_timestamp};
use cascade_domain::ids::new_id;
use cascade_proto::common::v1::{AccountStage as S, ContactStage as C};
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::lifecycle::v1::watch_account_events_response::Event;
use cascade_proto::opportunity::v1 as op;
use cascade_proto::scoring::v1 as sc;
use cascade_testkit::fixtures::{
    account, activity, by_email, mask, opportunity_event, score_delivery, usd,
};
use cascade_testkit::{Lifecycle, TestDatabase, on_each_database, request_for};
use common::System;
use tonic::{Code, Response, Status, Streaming};
use tonic_types::StatusExt;

/// The tenant that probes.
const A: &str = "tenant-a";
/// The tenant whose records must stay out of A's reach.
const B: &str = "tenant-b";

// ----- the oracle -----

/// Asserts that A's call about B's record (`about_b`) failed exactly like the
/// same call about a record that never existed (`about_fresh`): NOT_FOUND,
/// with the same message and error details once B's id text is swapped for
/// the fresh one. Success, FAILED_PRECONDITION or any other difference tells
/// A that B's record exists.
fn assert_hidden<T: Debug>(
    what: &str,
    about_b: Result<Response<T>, Status>,
    b_text: &str,
    about_fresh: Result<Response<T>, Status>,
    fresh_text: &str,
) {
    let about_b = match about_b {
        Ok(response) => panic!("{what}: A reached B's {b_text}: {response:?}"),
        Err(status) => status,
    };
    let about_fresh = match about_fresh {
        Ok(response) => panic!("{what}: a never-existing {fresh_text} answered {response:?}"),
        Err(status) => status,
    };
    assert_eq!(
        about_fresh.code(),
        Code::NotFound,
        "{what}: a never-existing id answers NOT_FOUND: {about_fresh:?}"
    );
    // ... naming where it looked: the caller's own tenant, never B's.
    assert!(
        about_fresh
            .message()
            .contains(&format!(" not found in tenant {A}")),
        "{what}: NOT_FOUND names the caller's tenant: {about_fresh:?}"
    );
    assert_eq!(
        about_b.code(),
        about_fresh.code(),
        "{what}: B's {b_text} answers A differently from a missing one: {about_b:?}"
    );
    assert_eq!(
        about_b.message().replace(b_text, fresh_text),
        about_fresh.message(),
        "{what}: the message tells B's {b_text} from a missing one"
    );
    assert_eq!(
        format!("{:?}", about_b.get_error_details()).replace(b_text, fresh_text),
        format!("{:?}", about_fresh.get_error_details()),
        "{what}: the error details tell B's {b_text} from a missing one"
    );
}

/// Makes the same call as A with B's id (or key) and with a fresh one.
async fn check_hidden<T: Debug, Fut>(
    what: &str,
    b_text: &str,
    fresh_text: &str,
    call: impl Fn(String) -> Fut,
) where
    Fut: Future<Output = Result<Response<T>, Status>>,
{
    let about_b = call(b_text.to_owned()).await;
    let about_fresh = call(fresh_text.to_owned()).await;
    assert_hidden(what, about_b, b_text, about_fresh, fresh_text);
}

/// `hidden!("Rpc", client, b_id, |id| rpc(Request { field: id }))`: A's
/// call with B's id must answer like the call with a freshly generated id.
/// `hidden!(..., b_text => fresh_text, ...)` swaps other text (a domain, a
/// version number) instead.
macro_rules! hidden {
    ($what:literal, $client:expr, $b:expr $(=> $fresh:expr)?, |$id:ident| { $rpc:ident($message:expr) }) => {
        hidden!($what, $client, $b $(=> $fresh)?, |$id| $rpc($message))
    };
    ($what:literal, $client:expr, $b:expr => $fresh:expr, |$id:ident| $rpc:ident($message:expr)) => {
        check_hidden($what, &$b, &$fresh, |$id: String| {
            let mut client = $client.clone();
            async move { client.$rpc(request_for(A, $message)).await }
        })
        .await
    };
    ($what:literal, $client:expr, $b:expr, |$id:ident| $rpc:ident($message:expr)) => {
        hidden!($what, $client, $b => new_id(), |$id| $rpc($message))
    };
}

// ----- small helpers -----

/// A fresh domain for "a domain nobody has".
fn fresh_domain() -> String {
    format!("d{}.example", &new_id()[..8])
}

/// Creates an account of the client's tenant, owned by
/// `owner@{tenant}.example` (the owner filter probes rely on it).
async fn create_account(
    lifecycle: &Lifecycle,
    name: &str,
    domain: &str,
    request_id: &str,
) -> lc::Account {
    let tenant = lifecycle.caller().tenant_id().expect("a tenant's client");
    let owner = format!("owner@{tenant}.example");
    lifecycle
        .try_create_account(account(name, domain, &owner), request_id)
        .await
        .expect("account created")
}

/// Creates a contact (first name Pat) of the client's tenant.
async fn create_contact(
    lifecycle: &Lifecycle,
    account_id: &str,
    email: &str,
    request_id: &str,
) -> lc::Contact {
    lifecycle
        .try_create_contact(
            lc::Contact {
                account_id: account_id.into(),
                email: email.into(),
                first_name: "Pat".into(),
                ..Default::default()
            },
            request_id,
        )
        .await
        .expect("contact created")
}

/// The window every report of the test asks about.
fn window() -> (
    Option<prost_types::Timestamp>,
    Option<prost_types::Timestamp>,
) {
    let now = now();
    (
        Some(to_timestamp(now - chrono::Duration::hours(1))),
        Some(to_timestamp(now + chrono::Duration::hours(1))),
    )
}

fn simulation() -> sc::SimulateScoringModelRequest {
    sc::SimulateScoringModelRequest {
        model: Some(sc::ScoringModel {
            rules: vec![sc::ScoringRule {
                activity_type: "demo_request".into(),
                points: 1,
                ..Default::default()
            }],
            ..Default::default()
        }),
        thresholds: Some(sc::SimulationThresholds {
            engaged_threshold: 0.0,
            prioritized_threshold: 100.0,
        }),
        sample_size: 1000,
        ..Default::default()
    }
}

// ----- tenant B's records -----

/// Everything tenant B created, by id and by key.
struct TenantB {
    /// PRIORITIZED by a demo request (Qualify, Disqualify, Nurture would all
    /// move it).
    acme: String,
    acme_domain: String,
    acme_request_id: String,
    /// IMPLEMENT / CUSTOMER (Advance would move it).
    initech: String,
    /// PIPELINE with B's open opportunity.
    globex: String,
    globex_domain: String,
    /// Moved to PRIORITIZED while the watch streams listened.
    hooli: String,
    /// MARKETING_QUALIFIED contact of acme, with a score.
    ann: String,
    ann_email: String,
    ann_request_id: String,
    /// OPPORTUNITY contact of globex (buying group of B's opportunity).
    bob: String,
    /// B's opportunity on globex, at DISCOVER and complete enough to advance.
    deal: String,
    deal_request_id: String,
    /// The event id of B's demo request.
    demo_event_id: String,
    lifecycle_settings_version: i64,
    scoring_model_version: i64,
    opportunity_settings_version: i64,
}

impl TenantB {
    fn account_ids(&self) -> [&str; 4] {
        [&self.acme, &self.initech, &self.globex, &self.hooli]
    }

    fn contact_ids(&self) -> [&str; 2] {
        [&self.ann, &self.bob]
    }
}

/// B sets up one of each kind of record, through the APIs.
async fn populate_b(system: &System) -> TenantB {
    let (lifecycle, scoring, opps) = (
        system.lifecycle_as(0, B),
        system.scoring_as(0, B),
        system.opportunity_as(0, B),
    );

    // Settings of all three services, each a new version.
    let lifecycle_settings_version = lifecycle
        .public()
        .update_lifecycle_settings(lifecycle.req(lc::UpdateLifecycleSettingsRequest {
            settings: Some(lc::LifecycleSettings {
                hand_raise_activity_types: vec![
                    "demo_request".into(),
                    "b_secret_hand_raise".into(),
                ],
                renotify_on_hand_raise: true,
                ..Default::default()
            }),
            update_mask: mask(&["hand_raise_activity_types", "renotify_on_hand_raise"]),
        }))
        .await
        .expect("B's lifecycle settings")
        .into_inner()
        .settings
        .expect("settings")
        .version;
    let scoring_model_version = scoring
        .change_model(|model| {
            model.rules.push(sc::ScoringRule {
                activity_type: "b_secret_activity".into(),
                points: 7,
                ..Default::default()
            });
        })
        .await
        .version;
    let opportunity_settings_version = opps
        .public()
        .update_opportunity_settings(opps.req(op::UpdateOpportunitySettingsRequest {
            settings: Some(op::OpportunitySettings {
                discover_step_display_name: "B's discovery".into(),
                ..Default::default()
            }),
            update_mask: mask(&["discover_step_display_name"]),
        }))
        .await
        .expect("B's opportunity settings")
        .into_inner()
        .settings
        .expect("settings")
        .version;

    // acme: anonymous intent, then a demo request from a known contact.
    let acme_domain = "acme-b.example".to_owned();
    let acme_request_id = "b-create-acme".to_owned();
    let acme = create_account(&lifecycle, "Acme (B)", &acme_domain, &acme_request_id)
        .await
        .account_id;
    let ann_email = format!("ann@{acme_domain}");
    let ann_request_id = "b-create-ann".to_owned();
    let ann = create_contact(&lifecycle, &acme, &ann_email, &ann_request_id)
        .await
        .contact_id;
    let demo_event_id = "b-demo-1".to_owned();
    scoring
        .record_one(activity("b-intent-1", "web_page_visit", &acme, ""))
        .await;
    scoring
        .record_one(activity(&demo_event_id, "demo_request", &acme, &ann))
        .await;
    lifecycle
        .wait_for_account(&acme, "B's acme PRIORITIZED with intent", |a| {
            a.stage == S::Prioritized as i32 && a.intent_score > 0.0
        })
        .await;
    lifecycle
        .wait_for_contact_stage(&ann, C::MarketingQualified)
        .await;

    // initech: a customer (won deal, applied directly as opportunity does).
    let initech = create_account(&lifecycle, "Initech (B)", "initech-b.example", "")
        .await
        .account_id;
    let won_deal = new_id();
    for kind in [
        lc::OpportunityEventType::Opened,
        lc::OpportunityEventType::Won,
    ] {
        lifecycle
            .try_apply_opportunity_event(opportunity_event(&initech, &won_deal, kind, &[]))
            .await
            .expect("B's opportunity event");
    }
    assert_eq!(lifecycle.account(&initech).await.stage, S::Implement as i32);

    // globex: an open opportunity with a buying group.
    let globex_domain = "globex-b.example".to_owned();
    let globex = create_account(&lifecycle, "Globex (B)", &globex_domain, "")
        .await
        .account_id;
    let bob_email = format!("bob@{globex_domain}");
    let bob = create_contact(&lifecycle, &globex, &bob_email, "")
        .await
        .contact_id;
    scoring
        .record_one(activity("b-webinar-1", "webinar_attended", &globex, &bob))
        .await;
    lifecycle.wait_for_stage(&globex, S::Engaged).await;
    let deal_request_id = "b-create-deal".to_owned();
    let deal = opps
        .public()
        .create_opportunity(opps.req(op::CreateOpportunityRequest {
            opportunity: Some(op::Opportunity {
                account_id: globex.clone(),
                name: "Globex expansion (B)".into(),
                owner_id: "seller@b.example".into(),
                estimated_deal_size: usd(50_000),
                buying_group_contact_ids: vec![bob.clone()],
                ..Default::default()
            }),
            request_id: deal_request_id.clone(),
        }))
        .await
        .expect("B's opportunity")
        .into_inner()
        .opportunity
        .expect("opportunity")
        .opportunity_id;
    lifecycle.wait_for_stage(&globex, S::Pipeline).await;
    lifecycle.wait_for_contact_stage(&bob, C::Opportunity).await;

    TenantB {
        acme,
        acme_domain,
        acme_request_id,
        initech,
        globex,
        globex_domain,
        hooli: String::new(),
        ann,
        ann_email,
        ann_request_id,
        bob,
        deal,
        deal_request_id,
        demo_event_id,
        lifecycle_settings_version,
        scoring_model_version,
        opportunity_settings_version,
    }
}

/// Everything B can read back about its records. Score compute times are
/// cleared: they are the time of the call, not data.
#[derive(Debug, PartialEq)]
struct Snapshot {
    accounts: Vec<lc::Account>,
    account_list: Vec<lc::Account>,
    transitions: Vec<Vec<lc::AccountTransition>>,
    contacts: Vec<lc::Contact>,
    contact_list: Vec<lc::Contact>,
    account_scores: Vec<sc::AccountScore>,
    ledgers: Vec<Vec<sc::LedgerEntry>>,
    contact_scores: Vec<sc::ContactScore>,
    top_accounts: Vec<sc::AccountScore>,
    opportunity: op::Opportunity,
    opportunity_list: Vec<op::Opportunity>,
    lifecycle_settings: lc::LifecycleSettings,
    scoring_model: sc::ScoringModel,
    opportunity_settings: op::OpportunitySettings,
}

fn timeless(mut score: sc::AccountScore) -> sc::AccountScore {
    score.compute_time = None;
    score
}

async fn snapshot_b(system: &System, b: &TenantB) -> Snapshot {
    let (mut lifecycle, mut scoring, mut opps) = (
        system.lifecycle(0),
        system.scoring(0),
        system.opportunity(0),
    );
    let (lifecycle_b, scoring_b, opps_b) = (
        system.lifecycle_as(0, B),
        system.scoring_as(0, B),
        system.opportunity_as(0, B),
    );
    let mut accounts = Vec::new();
    let mut transitions = Vec::new();
    for id in b.account_ids() {
        accounts.push(lifecycle_b.account(id).await);
        transitions.push(lifecycle_b.transitions(id).await);
    }
    let mut contacts = Vec::new();
    let mut contact_scores = Vec::new();
    for id in b.contact_ids() {
        contacts.push(lifecycle_b.contact(id).await);
        let mut score = scoring
            .get_contact_score(request_for(
                B,
                sc::GetContactScoreRequest {
                    contact_id: id.into(),
                },
            ))
            .await
            .expect("B's contact score")
            .into_inner()
            .score
            .expect("score");
        score.compute_time = None;
        contact_scores.push(score);
    }
    let mut account_scores = Vec::new();
    let mut ledgers = Vec::new();
    for id in [&b.acme, &b.globex, &b.hooli] {
        let explained = scoring
            .explain_account_score(request_for(
                B,
                sc::ExplainAccountScoreRequest {
                    account_id: id.clone(),
                    page_size: 500,
                    ..Default::default()
                },
            ))
            .await
            .expect("B's ledger")
            .into_inner();
        account_scores.push(timeless(explained.score.expect("score")));
        ledgers.push(explained.entries);
    }
    Snapshot {
        accounts,
        account_list: lifecycle
            .list_accounts(request_for(
                B,
                lc::ListAccountsRequest {
                    page_size: 500,
                    ..Default::default()
                },
            ))
            .await
            .expect("B's accounts")
            .into_inner()
            .accounts,
        transitions,
        contacts,
        contact_list: lifecycle
            .list_contacts(request_for(
                B,
                lc::ListContactsRequest {
                    page_size: 500,
                    ..Default::default()
                },
            ))
            .await
            .expect("B's contacts")
            .into_inner()
            .contacts,
        account_scores,
        ledgers,
        contact_scores,
        top_accounts: scoring
            .list_top_accounts(request_for(
                B,
                sc::ListTopAccountsRequest {
                    page_size: 500,
                    ..Default::default()
                },
            ))
            .await
            .expect("B's top accounts")
            .into_inner()
            .accounts
            .into_iter()
            .map(timeless)
            .collect(),
        opportunity: opps_b.get(&b.deal).await,
        opportunity_list: opps
            .list_opportunities(request_for(
                B,
                op::ListOpportunitiesRequest {
                    page_size: 500,
                    ..Default::default()
                },
            ))
            .await
            .expect("B's opportunities")
            .into_inner()
            .opportunities,
        lifecycle_settings: lifecycle
            .get_lifecycle_settings(request_for(B, lc::GetLifecycleSettingsRequest::default()))
            .await
            .expect("B's settings")
            .into_inner()
            .settings
            .expect("settings"),
        scoring_model: scoring_b.model().await,
        opportunity_settings: opps
            .get_opportunity_settings(request_for(B, op::GetOpportunitySettingsRequest::default()))
            .await
            .expect("B's opportunity settings")
            .into_inner()
            .settings
            .expect("settings"),
    }
}

// ----- watch streams -----

async fn watch(
    lifecycle: &Lifecycle,
    request: lc::WatchAccountEventsRequest,
) -> Streaming<lc::WatchAccountEventsResponse> {
    lifecycle
        .public()
        .watch_account_events(lifecycle.req(request))
        .await
        .expect("watch")
        .into_inner()
}

/// Asserts that a stream delivers nothing within half a second.
async fn assert_silent(what: &str, stream: &mut Streaming<lc::WatchAccountEventsResponse>) {
    match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
        Err(_elapsed) => {}
        Ok(got) => panic!("{what}: A's watch stream got {got:?}"),
    }
}

/// A subscribes to the event stream (live, replayed from the start, and
/// filtered on B's account) and B to its own; B moves an account to
/// PRIORITIZED. B's stream gets the transition and the owner's notification;
/// A's streams get nothing.
async fn b_events_do_not_reach_a(system: &System, b: &mut TenantB) {
    let (lifecycle_a, lifecycle_b) = (system.lifecycle_as(0, A), system.lifecycle_as(0, B));
    let mut b_live = watch(&lifecycle_b, Default::default()).await;
    let mut a_live = watch(&lifecycle_a, Default::default()).await;
    let mut a_replay = watch(
        &lifecycle_a,
        lc::WatchAccountEventsRequest {
            cursor: "0".into(),
            ..Default::default()
        },
    )
    .await;

    let hooli = create_account(&lifecycle_b, "Hooli (B)", "hooli-b.example", "")
        .await
        .account_id;
    // A watching B's account: NOT_FOUND, word for word as an account that
    // never existed (before, the stream opened and stayed quiet).
    let watch_of = async |account_id: &str| {
        lifecycle_a
            .public()
            .watch_account_events(lifecycle_a.req(lc::WatchAccountEventsRequest {
                account_id: account_id.to_owned(),
                cursor: "0".into(),
                ..Default::default()
            }))
            .await
            .map(|_| ())
            .expect_err("not A's account")
    };
    let never = new_id();
    let (on_b, on_nothing) = (watch_of(&hooli).await, watch_of(&never).await);
    assert_eq!(on_b.code(), Code::NotFound, "{on_b:?}");
    assert_eq!(on_b.message().replace(&hooli, &never), on_nothing.message());
    let gavin = create_contact(&lifecycle_b, &hooli, "gavin@hooli-b.example", "")
        .await
        .contact_id;
    system
        .scoring_as(0, B)
        .record_one(activity("b-hooli-demo", "demo_request", &hooli, &gavin))
        .await;

    let (mut prioritized, mut notified) = (false, false);
    while !(prioritized && notified) {
        let event = tokio::time::timeout(Duration::from_secs(10), b_live.message())
            .await
            .expect("B's stream gets B's events")
            .expect("B's stream")
            .expect("B's stream open");
        match event.event {
            Some(Event::Transition(t)) if t.account_id == hooli => {
                prioritized |= t.to_stage == S::Prioritized as i32;
            }
            Some(Event::Notification(n)) if n.account_id == hooli => notified = true,
            _ => {}
        }
    }
    assert_silent("live", &mut a_live).await;
    assert_silent("replayed from cursor 0", &mut a_replay).await;
    b.hooli = hooli;
}

// ----- A's attempts -----

/// Every single-record RPC of the three services, called by A with B's ids
/// (and keys), answers like a record that never existed; writes that name a
/// B record are refused the same way.
async fn a_cannot_reach_b_records(system: &System, b: &TenantB) {
    let (lifecycle, scoring, opps) = (
        system.lifecycle(0),
        system.scoring(0),
        system.opportunity(0),
    );

    // cascade.lifecycle.v1.LifecycleService
    hidden!("GetAccount", lifecycle, b.acme, |id| get_account(
        lc::GetAccountRequest { account_id: id }
    ));
    hidden!("UpdateAccount", lifecycle, b.acme, |id| update_account(
        lc::UpdateAccountRequest {
            account: Some(lc::Account {
                account_id: id,
                name: "taken over by A".into(),
                owner_id: "a@a.example".into(),
                ..Default::default()
            }),
            update_mask: mask(&["name", "owner_id"]),
        }
    ));
    hidden!("CreateContact in B's account", lifecycle, b.acme, |id| {
        create_contact(lc::CreateContactRequest {
            contact: Some(lc::Contact {
                account_id: id,
                email: "spy@a.example".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    });
    hidden!("GetContact", lifecycle, b.ann, |id| get_contact(
        lc::GetContactRequest { contact_id: id }
    ));
    hidden!("UpdateContact", lifecycle, b.ann, |id| update_contact(
        lc::UpdateContactRequest {
            contact: Some(lc::Contact {
                contact_id: id,
                title: "taken over by A".into(),
                stage: C::Disqualified as i32,
                ..Default::default()
            }),
            update_mask: mask(&["title", "stage"]),
        }
    ));
    // A has no account with B's domain yet: B's contact's email resolves to
    // nothing, like an email at a domain nobody has.
    let fresh = fresh_domain();
    hidden!("ResolveContact", lifecycle, b.acme_domain => fresh, |domain| resolve_contact(
        lc::ResolveContactRequest { email: format!("ann@{domain}") }
    ));
    hidden!("QualifyAccount", lifecycle, b.acme, |id| qualify_account(
        lc::QualifyAccountRequest {
            account_id: id,
            reason: "A says so".into(),
        }
    ));
    hidden!("DisqualifyAccount", lifecycle, b.acme, |id| {
        disqualify_account(lc::DisqualifyAccountRequest {
            account_id: id,
            reason: "A says so".into(),
        })
    });
    hidden!("NurtureAccount", lifecycle, b.acme, |id| nurture_account(
        lc::NurtureAccountRequest {
            account_id: id,
            reason: "A says so".into(),
        }
    ));
    hidden!(
        "AdvanceAccount",
        lifecycle,
        b.initech,
        |id| advance_account(lc::AdvanceAccountRequest {
            account_id: id,
            to_stage: S::Expand as i32,
            reason: "A says so".into(),
        })
    );
    hidden!("ListAccountTransitions", lifecycle, b.acme, |id| {
        list_account_transitions(lc::ListAccountTransitionsRequest {
            account_id: id,
            ..Default::default()
        })
    });
    hidden!("ListContactTransitions", lifecycle, b.ann, |id| {
        list_contact_transitions(lc::ListContactTransitionsRequest {
            contact_id: id,
            ..Default::default()
        })
    });
    hidden!("ListNotifications", lifecycle, b.acme, |id| {
        list_notifications(lc::ListNotificationsRequest {
            account_id: id,
            ..Default::default()
        })
    });
    hidden!("GetAccountStageAt", lifecycle, b.acme, |id| {
        get_account_stage_at(lc::GetAccountStageAtRequest {
            account_id: id,
            time: Some(to_timestamp(now())),
        })
    });
    // Erasing B's records as A: NOT_FOUND, as for ids nobody has (the
    // snapshot of B compared at the end shows nothing was erased).
    hidden!("DeleteContact", lifecycle, b.ann, |id| delete_contact(
        lc::DeleteContactRequest { contact_id: id }
    ));
    hidden!("DeleteAccount", lifecycle, b.acme, |id| delete_account(
        lc::DeleteAccountRequest {
            account_id: id,
            force: true,
        }
    ));
    // cascade.lifecycle.v1.LifecycleInternalService
    let internal = system.lifecycle_internal(0);
    hidden!("ApplyEngagementScore", internal, b.acme, |id| {
        apply_engagement_score(lc::ApplyEngagementScoreRequest {
            contacts: vec![lc::ContactEngagement {
                contact_id: b.ann.clone(),
                engagement_score: 0.0,
                new_activity_types: vec!["demo_request".into()],
            }],
            compute_time: Some(to_timestamp(now())),
            ..score_delivery(&new_id(), &id, 1_000_000, 0.0)
        })
    });
    for (account, kind) in [
        (&b.globex, lc::OpportunityEventType::Lost),
        (&b.acme, lc::OpportunityEventType::Opened),
        (&b.acme, lc::OpportunityEventType::Won),
    ] {
        hidden!("ApplyOpportunityEvent", internal, *account, |id| {
            apply_opportunity_event(opportunity_event(&id, &b.deal, kind, &[b.bob.as_str()]))
        });
    }
    // B's settings versions exist only for B; A has only version 1 (the
    // defaults), so B's version numbers answer like any unknown version.
    let b_version = b.lifecycle_settings_version.to_string();
    assert_ne!(b_version, "1", "B's settings changed");
    hidden!("GetLifecycleSettings", lifecycle, b_version => "9", |v| get_lifecycle_settings(
        lc::GetLifecycleSettingsRequest { version: v.parse().expect("number") }
    ));

    // cascade.scoring.v1.ScoringService
    hidden!("GetAccountScore", scoring, b.acme, |id| get_account_score(
        sc::GetAccountScoreRequest { account_id: id }
    ));
    hidden!("GetContactScore", scoring, b.ann, |id| get_contact_score(
        sc::GetContactScoreRequest { contact_id: id }
    ));
    hidden!("ExplainAccountScore", scoring, b.acme, |id| {
        explain_account_score(sc::ExplainAccountScoreRequest {
            account_id: id,
            ..Default::default()
        })
    });
    let b_version = b.scoring_model_version.to_string();
    assert_ne!(b_version, "1", "B's model changed");
    hidden!("GetScoringModel", scoring, b_version => "9", |v| get_scoring_model(
        sc::GetScoringModelRequest { version: v.parse().expect("number") }
    ));
    // An activity naming B's contact by email: resolved through lifecycle
    // as A, so not found, like an email at a domain nobody has.
    let fresh = fresh_domain();
    hidden!("RecordActivity by B's email", scoring, b.acme_domain => fresh, |domain| {
        record_activity(sc::RecordActivityRequest {
            activity: Some(by_email(&new_id(), "demo_request", &format!("ann@{domain}"))),
        })
    });
    // Batches and streams refuse such items one by one, with the same words.
    let fresh = fresh_domain();
    let batch = |domain: &str| sc::RecordActivitiesRequest {
        activities: vec![by_email(
            &new_id(),
            "demo_request",
            &format!("bob@{domain}"),
        )],
    };
    let mut client = scoring.clone();
    let about_b = client
        .record_activities(request_for(A, batch(&b.globex_domain)))
        .await
        .expect("batch")
        .into_inner();
    let about_fresh = client
        .record_activities(request_for(A, batch(&fresh)))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(about_b.rejected_count, 1, "{about_b:?}");
    assert_eq!(
        format!("{:?}", about_b.results[0].violations).replace(&b.globex_domain, &fresh),
        format!("{:?}", about_fresh.results[0].violations),
        "RecordActivities: the refusal tells B's email from an unknown one"
    );
    let about_b = client
        .stream_activities(request_for(
            A,
            futures::stream::iter(vec![sc::StreamActivitiesRequest {
                activities: batch(&b.globex_domain).activities,
            }]),
        ))
        .await
        .expect("stream")
        .into_inner();
    let about_fresh = client
        .stream_activities(request_for(
            A,
            futures::stream::iter(vec![sc::StreamActivitiesRequest {
                activities: batch(&fresh).activities,
            }]),
        ))
        .await
        .expect("stream")
        .into_inner();
    assert_eq!(
        (about_b.recorded_count, about_b.rejected_count),
        (0, 1),
        "{about_b:?}"
    );
    assert_eq!(
        format!("{:?}", about_b.rejected[0].violations).replace(&b.globex_domain, &fresh),
        format!("{:?}", about_fresh.rejected[0].violations),
        "StreamActivities: the refusal tells B's email from an unknown one"
    );

    // cascade.opportunity.v1.OpportunityService
    hidden!("CreateOpportunity on B's account", opps, b.globex, |id| {
        create_opportunity(op::CreateOpportunityRequest {
            opportunity: Some(op::Opportunity {
                account_id: id,
                name: "A's deal".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
    });
    hidden!("GetOpportunity", opps, b.deal, |id| get_opportunity(
        op::GetOpportunityRequest { opportunity_id: id }
    ));
    hidden!("UpdateOpportunity", opps, b.deal, |id| update_opportunity(
        op::UpdateOpportunityRequest {
            opportunity: Some(op::Opportunity {
                opportunity_id: id,
                name: "taken over by A".into(),
                ..Default::default()
            }),
            update_mask: mask(&["name"]),
        }
    ));
    hidden!(
        "AdvanceOpportunity",
        opps,
        b.deal,
        |id| advance_opportunity(op::AdvanceOpportunityRequest {
            opportunity_id: id,
            to_step: op::OpportunityStep::Qualify as i32,
        })
    );
    hidden!("CloseOpportunityWon", opps, b.deal, |id| {
        close_opportunity_won(op::CloseOpportunityWonRequest { opportunity_id: id })
    });
    hidden!("CloseOpportunityLost", opps, b.deal, |id| {
        close_opportunity_lost(op::CloseOpportunityLostRequest {
            opportunity_id: id,
            reason: "A says so".into(),
        })
    });
    let b_version = b.opportunity_settings_version.to_string();
    assert_ne!(b_version, "1", "B's opportunity settings changed");
    hidden!("GetOpportunitySettings", opps, b_version => "9", |v| get_opportunity_settings(
        op::GetOpportunitySettingsRequest { version: v.parse().expect("number") }
    ));
}

/// A's lists, reports, simulations and current settings hold nothing of
/// B's, while B's own hold B's records (so each check can fail).
async fn a_lists_and_reports_hold_nothing_of_b(system: &System, b: &TenantB) {
    let (mut lifecycle, mut scoring, mut opps) = (
        system.lifecycle(0),
        system.scoring(0),
        system.opportunity(0),
    );
    let b_accounts = b.account_ids();

    // ListAccounts: unfiltered and on B's owner.
    for (tenant, owner_id) in [(A, ""), (A, "owner@tenant-b.example"), (B, "")] {
        let ids: Vec<String> = lifecycle
            .list_accounts(request_for(
                tenant,
                lc::ListAccountsRequest {
                    page_size: 500,
                    owner_id: owner_id.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect("ListAccounts")
            .into_inner()
            .accounts
            .into_iter()
            .map(|a| a.account_id)
            .collect();
        if tenant == A {
            assert!(
                ids.is_empty(),
                "ListAccounts for A (owner {owner_id:?}): {ids:?}"
            );
        } else {
            assert!(b_accounts.iter().all(|id| ids.iter().any(|i| i == id)));
        }
    }
    // A's changed-since listings hold nothing of B's (B's records changed
    // after 1970, but they are B's).
    let since = Some(prost_types::Timestamp {
        seconds: 0,
        nanos: 0,
    });
    let accounts = lifecycle
        .list_accounts(request_for(
            A,
            lc::ListAccountsRequest {
                changed_since: since,
                ..Default::default()
            },
        ))
        .await
        .expect("changed accounts")
        .into_inner()
        .accounts;
    assert!(accounts.is_empty(), "A's changed accounts: {accounts:?}");
    let contacts = lifecycle
        .list_contacts(request_for(
            A,
            lc::ListContactsRequest {
                changed_since: since,
                ..Default::default()
            },
        ))
        .await
        .expect("changed contacts")
        .into_inner()
        .contacts;
    assert!(contacts.is_empty(), "A's changed contacts: {contacts:?}");
    // ListContacts and ListOpportunities on B's account: A has no such
    // account, so NOT_FOUND, word for word as for one that never existed.
    let mut contacts_of = async |account_id: &str| {
        lifecycle
            .list_contacts(request_for(
                A,
                lc::ListContactsRequest {
                    account_id: account_id.to_owned(),
                    ..Default::default()
                },
            ))
            .await
    };
    let never = new_id();
    assert_hidden(
        "ListContacts",
        contacts_of(&b.acme).await,
        &b.acme,
        contacts_of(&never).await,
        &never,
    );
    let mut deals_of = async |account_id: &str| {
        opps.list_opportunities(request_for(
            A,
            op::ListOpportunitiesRequest {
                account_id: account_id.to_owned(),
                ..Default::default()
            },
        ))
        .await
    };
    assert_hidden(
        "ListOpportunities",
        deals_of(&b.globex).await,
        &b.globex,
        deals_of(&never).await,
        &never,
    );
    // ListContacts: unfiltered, on B's email.
    for (tenant, account_id, email) in [
        (A, "", ""),
        (A, "", b.ann_email.as_str()),
        (B, b.acme.as_str(), b.ann_email.as_str()),
    ] {
        let ids: Vec<String> = lifecycle
            .list_contacts(request_for(
                tenant,
                lc::ListContactsRequest {
                    page_size: 500,
                    account_id: account_id.into(),
                    email: email.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect("ListContacts")
            .into_inner()
            .contacts
            .into_iter()
            .map(|c| c.contact_id)
            .collect();
        if tenant == A {
            assert!(ids.is_empty(), "ListContacts for A: {ids:?}");
        } else {
            assert_eq!(ids, vec![b.ann.clone()]);
        }
    }
    // GetFunnelReport: nothing entered any stage for A.
    for tenant in [A, B] {
        let (start_time, end_time) = window();
        let entered: i64 = lifecycle
            .get_funnel_report(request_for(
                tenant,
                lc::GetFunnelReportRequest {
                    start_time,
                    end_time,
                },
            ))
            .await
            .expect("funnel")
            .into_inner()
            .stages
            .iter()
            .map(|s| s.entered)
            .sum();
        assert_eq!(
            entered == 0,
            tenant == A,
            "{tenant}'s funnel: {entered} entered"
        );
    }
    // GetLifecycleSettings: A's current settings are the defaults, not B's.
    let a_settings = lifecycle
        .get_lifecycle_settings(request_for(A, lc::GetLifecycleSettingsRequest::default()))
        .await
        .expect("A's settings")
        .into_inner()
        .settings
        .expect("settings");
    assert_eq!(a_settings.version, 1, "{a_settings:?}");
    assert_eq!(a_settings.hand_raise_activity_types, vec!["demo_request"]);
    assert!(!a_settings.renotify_on_hand_raise);

    // ListTopAccounts.
    for tenant in [A, B] {
        let ids: Vec<String> = scoring
            .list_top_accounts(request_for(
                tenant,
                sc::ListTopAccountsRequest {
                    page_size: 500,
                    ..Default::default()
                },
            ))
            .await
            .expect("top accounts")
            .into_inner()
            .accounts
            .into_iter()
            .map(|a| a.account_id)
            .collect();
        let of_b = ids.iter().filter(|id| b_accounts.contains(&id.as_str()));
        assert_eq!(
            of_b.count() == 0,
            tenant == A,
            "{tenant}'s top accounts: {ids:?}"
        );
    }
    // SimulateScoringModel replays only the caller's activities.
    for tenant in [A, B] {
        let simulated = scoring
            .simulate_scoring_model(request_for(tenant, simulation()))
            .await
            .expect("simulation")
            .into_inner();
        let counted: i64 = simulated
            .current_counts
            .iter()
            .chain(&simulated.proposed_counts)
            .map(|c| c.account_count)
            .sum();
        if tenant == A {
            assert_eq!(simulated.activity_count, 0, "{simulated:?}");
            assert_eq!(counted, 0, "{simulated:?}");
            assert!(simulated.sample.is_empty(), "{simulated:?}");
        } else {
            assert!(simulated.activity_count > 0 && counted > 0, "{simulated:?}");
            assert!(
                simulated
                    .sample
                    .iter()
                    .all(|s| b_accounts.contains(&s.account_id.as_str())),
                "{simulated:?}"
            );
        }
    }
    // GetScoringModel: A's current model is the default, without B's rule.
    let a_model = system.scoring_as(0, A).model().await;
    assert_eq!(a_model.version, 1, "{a_model:?}");
    assert!(
        a_model
            .rules
            .iter()
            .all(|r| r.activity_type != "b_secret_activity"),
        "{a_model:?}"
    );

    // ListOpportunities: unfiltered, and B's on its account.
    for (tenant, account_id) in [(A, ""), (B, b.globex.as_str())] {
        let ids: Vec<String> = opps
            .list_opportunities(request_for(
                tenant,
                op::ListOpportunitiesRequest {
                    page_size: 500,
                    account_id: account_id.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect("opportunities")
            .into_inner()
            .opportunities
            .into_iter()
            .map(|o| o.opportunity_id)
            .collect();
        if tenant == A {
            assert!(ids.is_empty(), "ListOpportunities for A: {ids:?}");
        } else {
            assert_eq!(ids, vec![b.deal.clone()]);
        }
    }
    // GetPipelineReport: nothing open for A.
    for tenant in [A, B] {
        let (start_time, end_time) = window();
        let report = opps
            .get_pipeline_report(request_for(
                tenant,
                op::GetPipelineReportRequest {
                    start_time,
                    end_time,
                },
            ))
            .await
            .expect("pipeline")
            .into_inner();
        let open: i64 = report
            .pipeline
            .iter()
            .chain(&report.other_currencies)
            .flat_map(|p| &p.steps)
            .map(|s| s.open_count)
            .sum();
        assert_eq!(open == 0, tenant == A, "{tenant}'s pipeline: {report:?}");
    }
    // GetOpportunitySettings: A's current settings are the defaults.
    let a_opp_settings = opps
        .get_opportunity_settings(request_for(A, op::GetOpportunitySettingsRequest::default()))
        .await
        .expect("A's opportunity settings")
        .into_inner()
        .settings
        .expect("settings");
    assert_eq!(a_opp_settings.version, 1, "{a_opp_settings:?}");
    assert_ne!(a_opp_settings.discover_step_display_name, "B's discovery");
}

/// A's own writes that reuse B's keys (domain, email, request ids, event id)
/// are stored under A only: domains, emails, request ids and event ids are
/// unique per tenant. Writes that point at B's ids (activities of B's
/// accounts, B's contacts in A's buying group) are refused exactly like ids
/// that exist nowhere. Whether B was touched is checked by the snapshot
/// afterwards.
async fn a_writes_stay_in_a(system: &System, b: &TenantB) {
    let (mut lifecycle, mut scoring) = (system.lifecycle(0), system.scoring(0));
    let (lifecycle_a, scoring_a, opps_a) = (
        system.lifecycle_as(0, A),
        system.scoring_as(0, A),
        system.opportunity_as(0, A),
    );

    // CreateAccount with B's domain and B's request id: a new account of A,
    // not B's account back (no ALREADY_EXISTS either).
    let twin = create_account(
        &lifecycle_a,
        "A's twin of Acme",
        &b.acme_domain,
        &b.acme_request_id,
    )
    .await;
    assert_ne!(twin.account_id, b.acme, "A got B's account back");
    assert_eq!(twin.name, "A's twin of Acme");
    assert_eq!(twin.stage, S::Targeted as i32);
    // CreateContact with B's email and B's request id.
    let a_ann = create_contact(
        &lifecycle_a,
        &twin.account_id,
        &b.ann_email,
        &b.ann_request_id,
    )
    .await;
    assert_ne!(a_ann.contact_id, b.ann, "A got B's contact back");
    assert_eq!(a_ann.account_id, twin.account_id);
    // BatchCreateContacts under B's account: refused for that item, naming
    // the account; A's own item of the same batch is created.
    let batch = lifecycle
        .batch_create_contacts(request_for(
            A,
            lc::BatchCreateContactsRequest {
                requests: vec![
                    lc::CreateContactRequest {
                        contact: Some(lc::Contact {
                            account_id: b.acme.clone(),
                            email: "imported-spy@a.example".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    lc::CreateContactRequest {
                        contact: Some(lc::Contact {
                            account_id: twin.account_id.clone(),
                            email: "imported@a.example".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
            },
        ))
        .await
        .expect("a batch of A")
        .into_inner();
    let outcomes: Vec<(i32, Vec<String>)> = batch
        .results
        .iter()
        .map(|r| {
            (
                r.outcome,
                r.violations.iter().map(|v| v.field.clone()).collect(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (
                lc::BatchCreateOutcome::Rejected as i32,
                vec!["contact.account_id".to_owned()]
            ),
            (lc::BatchCreateOutcome::Created as i32, vec![]),
        ]
    );
    // ResolveContact of that email now finds A's contact, not B's.
    let resolved = lifecycle
        .resolve_contact(request_for(
            A,
            lc::ResolveContactRequest {
                email: b.ann_email.clone(),
            },
        ))
        .await
        .expect("A's contact")
        .into_inner();
    assert_eq!(
        resolved.contact.map(|c| c.contact_id),
        Some(a_ann.contact_id.clone())
    );
    // ApplyEngagementScore and ApplyOpportunityEvent on A's own account
    // naming B's contacts: applied to A's account; B's contacts are not A's
    // to move.
    let applied = lifecycle_a
        .try_apply_score(lc::ApplyEngagementScoreRequest {
            contacts: vec![
                lc::ContactEngagement {
                    contact_id: b.ann.clone(),
                    engagement_score: 5.0,
                    new_activity_types: vec!["demo_request".into()],
                },
                lc::ContactEngagement {
                    contact_id: b.bob.clone(),
                    engagement_score: 5.0,
                    new_activity_types: vec!["demo_request".into()],
                },
            ],
            compute_time: Some(to_timestamp(now())),
            ..score_delivery(&new_id(), &twin.account_id, 1, 5.0)
        })
        .await
        .expect("A's score applied");
    assert_eq!(
        applied.account.map(|a| a.stage),
        Some(S::Engaged as i32),
        "A's account moved"
    );
    for kind in [
        lc::OpportunityEventType::Opened,
        lc::OpportunityEventType::Won,
    ] {
        let b_contacts = [b.ann.as_str(), b.bob.as_str()];
        lifecycle_a
            .try_apply_opportunity_event(opportunity_event(
                &twin.account_id,
                &b.deal,
                kind,
                &b_contacts,
            ))
            .await
            .expect("A's opportunity event");
    }
    // UpdateAccount / AdvanceAccount on A's own customer work as usual.
    lifecycle
        .advance_account(request_for(
            A,
            lc::AdvanceAccountRequest {
                account_id: twin.account_id.clone(),
                to_stage: S::Expand as i32,
                reason: String::new(),
            },
        ))
        .await
        .expect("A advances its own customer");
    // UpdateLifecycleSettings changes A's settings only.
    lifecycle
        .update_lifecycle_settings(request_for(
            A,
            lc::UpdateLifecycleSettingsRequest {
                settings: Some(lc::LifecycleSettings {
                    hand_raise_activity_types: vec!["webinar_attended".into()],
                    qualified_stage_enabled: false,
                    ..Default::default()
                }),
                update_mask: mask(&["hand_raise_activity_types", "qualified_stage_enabled"]),
            },
        ))
        .await
        .expect("A's settings");

    // Scoring: activities naming B's account and contacts, with B's event id.
    // Refused NOT_FOUND exactly as for ids that exist nowhere (never
    // DUPLICATE, which would reveal B's event and its account).
    let nowhere = new_id();
    let one = |event: &str, account: &str, contact: &str| {
        request_for(
            A,
            sc::RecordActivityRequest {
                activity: Some(activity(event, "demo_request", account, contact)),
            },
        )
    };
    let with_b = scoring
        .record_activity(one(&b.demo_event_id, &b.acme, &b.ann))
        .await
        .expect_err("B's ids are not A's");
    let with_random = scoring
        .record_activity(one(&b.demo_event_id, &nowhere, &b.ann))
        .await
        .expect_err("ids of nobody");
    assert_eq!(with_b.code(), Code::NotFound, "{with_b:?}");
    assert_eq!(
        (with_b.code(), with_b.message().replace(&b.acme, "ID")),
        (
            with_random.code(),
            with_random.message().replace(&nowhere, "ID")
        ),
        "B's account id answers like an id of nobody"
    );
    let batch = scoring
        .record_activities(request_for(
            A,
            sc::RecordActivitiesRequest {
                activities: vec![
                    activity("b-webinar-1", "webinar_attended", &b.globex, &b.bob),
                    activity("a-intent", "b_secret_activity", &b.hooli, ""),
                ],
            },
        ))
        .await
        .expect("A's batch")
        .into_inner();
    assert_eq!(
        (batch.recorded_count, batch.rejected_count),
        (0, 2),
        "{batch:?}"
    );
    assert!(
        batch
            .results
            .iter()
            .all(|r| r.status == sc::ActivityStatus::NotFound as i32),
        "{batch:?}"
    );
    let streamed = scoring
        .stream_activities(request_for(
            A,
            futures::stream::iter(vec![sc::StreamActivitiesRequest {
                activities: vec![activity("b-intent-1", "web_page_visit", &b.acme, "")],
            }]),
        ))
        .await
        .expect("A's stream")
        .into_inner();
    assert_eq!(
        (streamed.recorded_count, streamed.rejected_count),
        (0, 1),
        "{streamed:?}"
    );
    // A's own scored account and contact, last: when its delivery has
    // landed, lifecycle has applied everything scoring had for A.
    let scored = create_account(&lifecycle_a, "A's scored", "", "").await;
    let pat = create_contact(&lifecycle_a, &scored.account_id, "pat@a-scored.example", "")
        .await
        .contact_id;
    scoring_a
        .record_one(activity("a-demo", "demo_request", &scored.account_id, &pat))
        .await;
    lifecycle_a
        .wait_for_stage(&scored.account_id, S::Prioritized)
        .await;
    // UpdateScoringModel changes A's model only.
    scoring
        .update_scoring_model(request_for(
            A,
            sc::UpdateScoringModelRequest {
                model: Some(sc::ScoringModel {
                    rules: vec![sc::ScoringRule {
                        activity_type: "demo_request".into(),
                        points: 1,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("A's model");

    // Opportunity: B's contacts in the buying group are refused exactly like
    // contacts that never existed (INVALID_ARGUMENT naming each field).
    // Created with B's request id.
    let deal_with = async |buying_group: Vec<String>| {
        opps_a
            .public()
            .create_opportunity(opps_a.req(op::CreateOpportunityRequest {
                opportunity: Some(op::Opportunity {
                    account_id: scored.account_id.clone(),
                    name: "A's deal".into(),
                    estimated_deal_size: usd(10),
                    buying_group_contact_ids: buying_group,
                    ..Default::default()
                }),
                request_id: b.deal_request_id.clone(),
            }))
            .await
    };
    let (fresh_ann, fresh_bob) = (new_id(), new_id());
    let about_b = deal_with(vec![b.ann.clone(), b.bob.clone()])
        .await
        .expect_err("B's contacts in A's buying group");
    let about_fresh = deal_with(vec![fresh_ann.clone(), fresh_bob.clone()])
        .await
        .expect_err("never-existing contacts");
    assert_eq!(about_fresh.code(), Code::InvalidArgument, "{about_fresh:?}");
    assert_eq!(about_b.code(), about_fresh.code(), "{about_b:?}");
    let swapped = |text: String| text.replace(&b.ann, &fresh_ann).replace(&b.bob, &fresh_bob);
    assert_eq!(swapped(about_b.message().to_owned()), about_fresh.message());
    assert_eq!(
        swapped(format!("{:?}", about_b.get_error_details())),
        format!("{:?}", about_fresh.get_error_details()),
        "the error details tell B's contacts from missing ones"
    );
    // B's request id with A's own (empty) buying group: a new deal of A.
    let a_deal = deal_with(Vec::new())
        .await
        .expect("A's opportunity")
        .into_inner()
        .opportunity
        .expect("opportunity");
    assert_ne!(a_deal.opportunity_id, b.deal, "A got B's opportunity back");
    assert_eq!(a_deal.name, "A's deal");
    opps_a
        .public()
        .update_opportunity_settings(opps_a.req(op::UpdateOpportunitySettingsRequest {
            settings: Some(op::OpportunitySettings {
                discover_step_display_name: "A's discovery".into(),
                ..Default::default()
            }),
            update_mask: mask(&["discover_step_display_name"]),
        }))
        .await
        .expect("A's opportunity settings");
    opps_a
        .try_lose(&a_deal.opportunity_id, "A's own")
        .await
        .expect("A closes its own deal");
    // Both opportunity events delivered: opened (PIPELINE), then lost (the
    // default on-lost action nurtures back to ENGAGED).
    lifecycle_a
        .wait_for_account(&scored.account_id, "A's ENGAGED after PIPELINE", |a| {
            a.stage == S::Engaged as i32
                && a.stages_reached
                    .iter()
                    .any(|r| r.stage == S::Pipeline as i32)
        })
        .await;
}

/// Tenant B's records, then every RPC of the three services as tenant A.
async fn tenant_a_cannot_see_or_change_tenant_b(db: TestDatabase) {
    let system = System::start(&db, 1).await;
    let mut b = populate_b(&system).await;
    b_events_do_not_reach_a(&system, &mut b).await;
    let before = snapshot_b(&system, &b).await;

    a_cannot_reach_b_records(&system, &b).await;
    a_lists_and_reports_hold_nothing_of_b(&system, &b).await;
    a_writes_stay_in_a(&system, &b).await;

    let after = snapshot_b(&system, &b).await;
    assert_eq!(before, after, "B's records changed while A probed them");
    // The snapshot holds what it should (so the comparison means something).
    let stages: Vec<i32> = after.accounts.iter().map(|a| a.stage).collect();
    assert_eq!(
        stages,
        [S::Prioritized, S::Implement, S::Pipeline, S::Prioritized].map(|s| s as i32)
    );
    let contact_stages: Vec<i32> = after.contacts.iter().map(|c| c.stage).collect();
    assert_eq!(
        contact_stages,
        [C::MarketingQualified, C::Opportunity].map(|s| s as i32)
    );
    assert_eq!(after.account_scores[0].engagement_score, 100.0);
    system.stop().await;
}

/// Score deliveries of two tenants for the same account id never merge.
/// Scoring checks every account and contact with lifecycle for the caller's
/// tenant, so A cannot record under B's ids at all: not while lifecycle is
/// down (UNAVAILABLE: what scoring remembers of B is B's), nor after
/// (NOT_FOUND). B's own deliveries wait in the outbox and arrive with B's
/// totals, and B's contact is not made a hand-raiser by A.
async fn score_deliveries_of_two_tenants_stay_apart(db: TestDatabase) {
    let settle = vec![(
        "CASCADE_SCORING__LIFECYCLE__ERASURE_SETTLE_MS".to_owned(),
        cascade_testkit::SETTLE_THROUGH_AN_OUTAGE_MS.to_string(),
    )];
    let mut system = System::start_with(&db, 1, settle).await;
    let (lifecycle, scoring) = (system.lifecycle_as(0, B), system.scoring_as(0, B));
    let scoring_a = system.scoring_as(0, A);
    let acme = create_account(&lifecycle, "Acme (B)", "acme-b.example", "")
        .await
        .account_id;
    let ann = create_contact(&lifecycle, &acme, "ann@acme-b.example", "")
        .await
        .contact_id;
    scoring
        .record_one(activity("b-open", "email_open", &acme, &ann))
        .await;
    lifecycle
        .wait_for_account(&acme, "B's score 2", |a| a.engagement_score == 2.0)
        .await;
    lifecycle.wait_for_contact_stage(&ann, C::Engaged).await;

    system.lifecycle[0].kill().await;
    // A names B's ids while lifecycle is down: scoring cannot check them for
    // A (what it remembers of B is B's), so nothing is stored for A ...
    let a_demo = |event: &str| {
        scoring_a.req(sc::RecordActivityRequest {
            activity: Some(activity(event, "demo_request", &acme, &ann)),
        })
    };
    let refused = scoring_a
        .public()
        .record_activity(a_demo("a-demo"))
        .await
        .expect_err("A's use of B's ids cannot be checked");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // ... while B's own activity for people it was checked for goes in.
    scoring
        .record_one(activity("b-visit", "web_page_visit", &acme, &ann))
        .await;
    system.lifecycle[0].start().await;

    let account = lifecycle
        .wait_for_account(&acme, "B's score 6 (B's own)", |a| {
            a.engagement_score == 6.0
        })
        .await;
    assert_eq!(account.stage, S::Engaged as i32, "{account:?}");
    let ann_now = lifecycle.contact(&ann).await;
    assert_eq!(
        ann_now.stage,
        C::Engaged as i32,
        "A's demo request reached B's contact: {ann_now:?}"
    );
    // With lifecycle back, A's retry is told B's account does not exist for A,
    // exactly as for an id that exists nowhere.
    let refused = scoring_a
        .public()
        .record_activity(a_demo("a-demo"))
        .await
        .expect_err("B's account is not A's");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    system.stop().await;
}

on_each_database!(
    tenant_a_cannot_see_or_change_tenant_b,
    score_deliveries_of_two_tenants_stay_apart
);
