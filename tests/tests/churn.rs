//! Churn (issue 19, item 1), through lifecycle's API on SQLite and
//! PostgreSQL: a customer churns with a reason, the history and the funnel
//! show it, and a new opportunity brings it back to PIPELINE as a
//! re-prospect that can be won again, with its first-reached times kept.

use cascade_domain::ids::new_id;
use cascade_proto::common::v1::{AccountStage as S, CustomerType, OpportunityKind};
use cascade_proto::lifecycle::v1 as lc;
use cascade_testkit::fixtures::{days_ago, opportunity_event, precondition_subjects};
use cascade_testkit::{Lifecycle, TestDatabase, TestSystem, next_millisecond, on_each_database};
use tonic::Code;

on_each_database!(
    a_customer_churns_and_comes_back_through_a_new_opportunity,
    a_customer_is_flagged_at_risk_by_a_person_and_by_the_engagement_rule,
    renewals_upgrades_and_ended_contracts_move_customers_by_the_tenants_rules,
    a_person_no_longer_at_the_company_is_fed_to_scoring,
    a_deal_open_at_the_churn_is_edited_without_moving_the_account_and_won_back,
);

async fn deal(
    lifecycle: &Lifecycle,
    account_id: &str,
    opportunity: &str,
    kind: lc::OpportunityEventType,
) {
    lifecycle
        .try_apply_opportunity_event(opportunity_event(account_id, opportunity, kind, &[]))
        .await
        .unwrap_or_else(|status| panic!("{kind:?} applied: {status:?}"));
    next_millisecond().await;
}

async fn churn(
    lifecycle: &Lifecycle,
    account_id: &str,
    reason: &str,
) -> Result<lc::ChurnAccountResponse, tonic::Status> {
    lifecycle
        .public()
        .churn_account(lifecycle.req(lc::ChurnAccountRequest {
            account_id: account_id.to_owned(),
            reason: reason.to_owned(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

fn first_reached(account: &lc::Account, stage: S) -> Option<(i64, i32)> {
    account
        .stages_reached
        .iter()
        .find(|r| r.stage == stage as i32)
        .and_then(|r| r.first_reached_time)
        .map(|t| (t.seconds, t.nanos))
}

async fn a_customer_churns_and_comes_back_through_a_new_opportunity(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle().as_actor("csm@tenant.example");
    let account = lifecycle.create_account("Churny", "owner").await;
    let id = account.account_id.clone();

    // Not a customer yet: churn is refused, naming the stage.
    let early = churn(&lifecycle, &id, "never bought")
        .await
        .expect_err("a prospect");
    assert_eq!(early.code(), Code::FailedPrecondition);
    assert!(early.message().contains("TARGETED"), "{early:?}");
    assert_eq!(precondition_subjects(&early), [format!("account/{id}")]);

    let (first_deal, second_deal) = (new_id(), new_id());
    deal(
        &lifecycle,
        &id,
        &first_deal,
        lc::OpportunityEventType::Opened,
    )
    .await;
    deal(&lifecycle, &id, &first_deal, lc::OpportunityEventType::Won).await;
    let customer = lifecycle.account(&id).await;
    assert_eq!(customer.stage, S::Implement as i32);
    let first_implement = first_reached(&customer, S::Implement).expect("IMPLEMENT reached");

    // A reason is required.
    let no_reason = churn(&lifecycle, &id, " ").await.expect_err("no reason");
    assert_eq!(no_reason.code(), Code::InvalidArgument);

    let churned = churn(&lifecycle, &id, "moved to a competitor")
        .await
        .expect("churned");
    let account = churned.account.expect("account");
    assert_eq!(account.stage, S::Churned as i32);
    assert_eq!(
        account.customer_type,
        CustomerType::Customer as i32,
        "it was a customer"
    );
    let transition = churned.transition.expect("transition");
    assert_eq!(
        (transition.from_stage, transition.to_stage, transition.cause),
        (
            S::Implement as i32,
            S::Churned as i32,
            lc::TransitionCause::Churn as i32
        )
    );
    assert_eq!(transition.reason, "moved to a competitor");
    assert_eq!(transition.actor, "csm@tenant.example");
    // Churning twice is refused: the account is CHURNED.
    let again = churn(&lifecycle, &id, "again")
        .await
        .expect_err("already churned");
    assert!(again.message().contains("CHURNED"), "{again:?}");
    next_millisecond().await;

    // Back through a new opportunity: a re-prospect in PIPELINE, then a
    // customer again; the first IMPLEMENT time is kept.
    deal(
        &lifecycle,
        &id,
        &second_deal,
        lc::OpportunityEventType::Opened,
    )
    .await;
    let back = lifecycle.account(&id).await;
    assert_eq!(
        (back.stage, back.customer_type),
        (S::Pipeline as i32, CustomerType::ReProspect as i32)
    );
    deal(&lifecycle, &id, &second_deal, lc::OpportunityEventType::Won).await;
    let won_back = lifecycle.account(&id).await;
    assert_eq!(
        (won_back.stage, won_back.customer_type),
        (S::Implement as i32, CustomerType::Customer as i32)
    );
    assert_eq!(
        first_reached(&won_back, S::Implement),
        Some(first_implement)
    );
    assert!(first_reached(&won_back, S::Churned).is_some());

    let causes: Vec<(i32, i32)> = lifecycle
        .transitions(&id)
        .await
        .iter()
        .map(|t| (t.to_stage, t.cause))
        .collect();
    use lc::TransitionCause as T;
    assert_eq!(
        causes,
        [
            (S::Pipeline as i32, T::OpportunityOpened as i32),
            (S::Implement as i32, T::OpportunityWon as i32),
            (S::Churned as i32, T::Churn as i32),
            (S::Pipeline as i32, T::OpportunityOpened as i32),
            (S::Implement as i32, T::OpportunityWon as i32),
        ]
    );

    // The funnel counts the churn: CHURNED entered once and left forward
    // (back to PIPELINE); IMPLEMENT's first stay moved back into CHURNED.
    let report = lifecycle
        .public()
        .get_funnel_report(lifecycle.req(lc::GetFunnelReportRequest {
            start_time: Some(days_ago(1)),
            end_time: Some(days_ago(-1)),
        }))
        .await
        .expect("funnel")
        .into_inner();
    let row = |stage: S| {
        report
            .stages
            .iter()
            .find(|r| r.stage == stage as i32)
            .cloned()
            .unwrap_or_else(|| panic!("{stage:?} in the funnel: {report:?}"))
    };
    let churned_row = row(S::Churned);
    assert_eq!(
        (
            churned_row.entered,
            churned_row.moved_forward,
            churned_row.moved_back
        ),
        (1, 1, 0)
    );
    let implement = row(S::Implement);
    assert_eq!(
        (implement.entered, implement.moved_back, implement.stayed),
        (2, 1, 1)
    );
    assert_eq!(
        report.stages.last().map(|r| r.stage),
        Some(S::Churned as i32),
        "CHURNED comes last in funnel order"
    );
    system.stop().await;
}

/// An opportunity event of a kind, applied; the account after it.
async fn deal_of(
    lifecycle: &Lifecycle,
    account_id: &str,
    opportunity: &str,
    event: lc::OpportunityEventType,
    kind: OpportunityKind,
) -> lc::Account {
    let applied = lifecycle
        .try_apply_opportunity_event(lc::ApplyOpportunityEventRequest {
            opportunity_kind: kind as i32,
            ..opportunity_event(account_id, opportunity, event, &[])
        })
        .await
        .unwrap_or_else(|status| panic!("{event:?} {kind:?} applied: {status:?}"));
    next_millisecond().await;
    applied.account.expect("account")
}

/// A new account made a customer (IMPLEMENT) by a won deal.
async fn customer(lifecycle: &Lifecycle, name: &str) -> String {
    let id = lifecycle.create_account(name, "owner-1").await.account_id;
    let opportunity = new_id();
    use lc::OpportunityEventType as E;
    deal_of(
        lifecycle,
        &id,
        &opportunity,
        E::Opened,
        OpportunityKind::NewBusiness,
    )
    .await;
    let won = deal_of(
        lifecycle,
        &id,
        &opportunity,
        E::Won,
        OpportunityKind::NewBusiness,
    )
    .await;
    assert_eq!(won.stage, S::Implement as i32);
    id
}

/// A deal opened while the account was a customer, still open when it
/// churned. The opportunity service announces an edit of it (another kind, a
/// grown buying group) as OPENED again: that leaves the account CHURNED,
/// where it used to bring it back to PIPELINE as if a deal had opened.
/// Winning it since makes the account a customer again; a win from before
/// the churn, arriving late, does not.
async fn a_deal_open_at_the_churn_is_edited_without_moving_the_account_and_won_back(
    db: TestDatabase,
) {
    use lc::OpportunityEventType as E;
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle().as_actor("csm@tenant.example");
    let id = customer(&lifecycle, "Hooli").await;
    let upgrade = new_id();
    deal_of(
        &lifecycle,
        &id,
        &upgrade,
        E::Opened,
        OpportunityKind::Upgrade,
    )
    .await;
    churn(&lifecycle, &id, "moved to a competitor")
        .await
        .expect("churned");
    let history = async || {
        lifecycle
            .public()
            .list_account_transitions(lifecycle.req(lc::ListAccountTransitionsRequest {
                account_id: id.clone(),
                page_size: 500,
                ..Default::default()
            }))
            .await
            .expect("history")
            .into_inner()
            .transitions
            .len()
    };
    let churned = lifecycle.account(&id).await;
    let churned_history = history().await;
    assert_eq!(churned.stage, S::Churned as i32);

    let edited = deal_of(
        &lifecycle,
        &id,
        &upgrade,
        E::Opened,
        OpportunityKind::NewBusiness,
    )
    .await;
    assert_eq!(
        (edited.stage, edited.customer_type),
        (S::Churned as i32, CustomerType::Customer as i32),
        "an edit of the open deal is not a deal that opens"
    );
    assert_eq!(history().await, churned_history, "no transition recorded");
    assert_eq!(
        edited
            .open_opportunities
            .iter()
            .map(|o| (o.opportunity_id.as_str(), o.kind))
            .collect::<Vec<_>>(),
        [(upgrade.as_str(), OpportunityKind::NewBusiness as i32)],
        "the new kind is kept"
    );

    // A win from before the churn (its event late: retried, or a dead letter
    // sent again) leaves the person's churn as it is.
    let late = lifecycle
        .try_apply_opportunity_event(lc::ApplyOpportunityEventRequest {
            occur_time: Some(days_ago(1)),
            opportunity_kind: OpportunityKind::NewBusiness as i32,
            ..opportunity_event(&id, &upgrade, E::Won, &[])
        })
        .await
        .expect("applied")
        .account
        .expect("account");
    assert_eq!(late.stage, S::Churned as i32, "a win from before the churn");
    let won = deal_of(
        &lifecycle,
        &id,
        &upgrade,
        E::Won,
        OpportunityKind::NewBusiness,
    )
    .await;
    assert_eq!(
        (won.stage, won.customer_type),
        (S::Implement as i32, CustomerType::Customer as i32),
        "the customer bought again"
    );
    system.stop().await;
}

async fn flag(
    lifecycle: &Lifecycle,
    account_id: &str,
    reason: &str,
) -> Result<lc::FlagAccountAtRiskResponse, tonic::Status> {
    lifecycle
        .public()
        .flag_account_at_risk(lifecycle.req(lc::FlagAccountAtRiskRequest {
            account_id: account_id.to_owned(),
            reason: reason.to_owned(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

async fn clear(
    lifecycle: &Lifecycle,
    account_id: &str,
    reason: &str,
) -> lc::ClearAccountAtRiskResponse {
    lifecycle
        .public()
        .clear_account_at_risk(lifecycle.req(lc::ClearAccountAtRiskRequest {
            account_id: account_id.to_owned(),
            reason: reason.to_owned(),
        }))
        .await
        .expect("cleared")
        .into_inner()
}

async fn at_risk_notifications(lifecycle: &Lifecycle, account_id: &str) -> Vec<lc::Notification> {
    lifecycle
        .notifications(account_id)
        .await
        .into_iter()
        .filter(|n| n.reason == lc::NotificationReason::AtRisk as i32)
        .collect()
}

async fn funnel_now(lifecycle: &Lifecycle, stage: S) -> (i64, i64, i64) {
    let row = lifecycle.funnel_row(stage).await;
    (row.entered, row.accounts_now, row.at_risk_now)
}

async fn a_customer_is_flagged_at_risk_by_a_person_and_by_the_engagement_rule(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle().as_actor("csm@tenant.example");
    let id = customer(&lifecycle, "Initech").await;
    let prospect = lifecycle
        .create_account("Prospect", "owner-2")
        .await
        .account_id;

    // Only a customer can be at risk, and a reason is required.
    let refused = flag(&lifecycle, &prospect, "quiet")
        .await
        .expect_err("a prospect");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("TARGETED"), "{refused:?}");
    let no_reason = flag(&lifecycle, &id, "").await.expect_err("no reason");
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    let unknown = flag(&lifecycle, &new_id(), "x").await.expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    let before = lifecycle.account(&id).await;

    // A person flags it: on the account, in the history (same stage), and a
    // message to the owner.
    let flagged = flag(&lifecycle, &id, "champion left")
        .await
        .expect("flagged");
    let account = flagged.account.expect("account");
    let risk = account.at_risk.clone().expect("at risk");
    assert_eq!(risk.reason, "champion left");
    assert_eq!(risk.source, lc::AtRiskSource::Person as i32);
    assert_eq!(risk.actor, "csm@tenant.example");
    assert_eq!(account.stage, S::Implement as i32);
    assert_eq!(account.stage_entered_time, before.stage_entered_time);
    let entry = flagged.transition.expect("history entry");
    assert_eq!(
        (
            entry.from_stage,
            entry.to_stage,
            entry.cause,
            entry.reason.as_str()
        ),
        (
            S::Implement as i32,
            S::Implement as i32,
            lc::TransitionCause::AtRiskFlagged as i32,
            "champion left"
        )
    );
    let notes = at_risk_notifications(&lifecycle, &id).await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].owner_id, "owner-1");
    assert!(notes[0].text.contains("champion left"), "{}", notes[0].text);
    // Flagged again: the reason changes, no second message.
    let again = flag(&lifecycle, &id, "budget review").await.expect("again");
    assert_eq!(
        again
            .account
            .and_then(|a| a.at_risk)
            .map(|r| r.reason)
            .as_deref(),
        Some("budget review")
    );
    assert_eq!(at_risk_notifications(&lifecycle, &id).await.len(), 1);

    // The list filter and the funnel see it; the funnel does not count the
    // entries as stays (IMPLEMENT was entered once).
    let listed = lifecycle
        .public()
        .list_accounts(lifecycle.req(lc::ListAccountsRequest {
            at_risk_only: true,
            ..Default::default()
        }))
        .await
        .expect("listed")
        .into_inner()
        .accounts;
    assert_eq!(
        listed
            .iter()
            .map(|a| a.account_id.as_str())
            .collect::<Vec<_>>(),
        [id.as_str()]
    );
    assert_eq!(funnel_now(&lifecycle, S::Implement).await, (1, 1, 1));

    // Cleared by a person; clearing again records nothing.
    let cleared = clear(&lifecycle, &id, "exec sponsor found").await;
    assert_eq!(
        cleared.account.as_ref().and_then(|a| a.at_risk.clone()),
        None
    );
    let entry = cleared.transition.expect("entry");
    assert_eq!(entry.cause, lc::TransitionCause::AtRiskCleared as i32);
    assert_eq!(entry.reason, "exec sponsor found");
    let unchanged = clear(&lifecycle, &id, "again").await;
    assert_eq!(unchanged.transition, None);
    assert_eq!(
        unchanged.account.and_then(|a| a.update_time),
        cleared.account.and_then(|a| a.update_time),
        "a clear that changes nothing leaves the record alone"
    );
    assert_eq!(funnel_now(&lifecycle, S::Implement).await, (1, 1, 0));

    // The engagement rule: a customer falling below the tenant's threshold is
    // flagged, and cleared when it is back.
    lifecycle
        .set_settings(
            lc::LifecycleSettings {
                at_risk_engagement_threshold: 20.0,
                ..Default::default()
            },
            &["at_risk_engagement_threshold"],
        )
        .await;
    let score = |sequence: i64, engagement: f64| {
        lifecycle.try_apply_score(cascade_testkit::fixtures::score_delivery(
            &new_id(),
            &id,
            sequence,
            engagement,
        ))
    };
    score(1, 30.0).await.expect("30");
    assert_eq!(
        lifecycle.account(&id).await.at_risk,
        None,
        "above the threshold"
    );
    let fell = score(2, 12.5).await.expect("12.5");
    let risk = fell
        .account
        .and_then(|a| a.at_risk)
        .expect("flagged by the rule");
    assert_eq!(risk.source, lc::AtRiskSource::Engagement as i32);
    assert!(risk.reason.contains("30.0 to 12.5"), "{}", risk.reason);
    assert_eq!(risk.actor, "scoring");
    assert_eq!(at_risk_notifications(&lifecycle, &id).await.len(), 2);
    let back = score(3, 25.0).await.expect("25");
    assert_eq!(
        back.account.and_then(|a| a.at_risk),
        None,
        "back above: the rule clears its flag"
    );
    use lc::TransitionCause as T;
    let risk_entries: Vec<(i32, String)> = lifecycle
        .transitions(&id)
        .await
        .into_iter()
        .filter(|t| t.from_stage == t.to_stage)
        .map(|t| (t.cause, t.actor))
        .collect();
    assert_eq!(
        risk_entries,
        [
            (T::AtRiskFlagged as i32, "csm@tenant.example".to_owned()),
            (T::AtRiskFlagged as i32, "csm@tenant.example".to_owned()),
            (T::AtRiskCleared as i32, "csm@tenant.example".to_owned()),
            (T::AtRiskFlagged as i32, "scoring".to_owned()),
            (T::AtRiskCleared as i32, "scoring".to_owned()),
        ]
    );

    // A tenant's threshold must be 0 (off) or more.
    let bad = lifecycle
        .public()
        .update_lifecycle_settings(lifecycle.req(lc::UpdateLifecycleSettingsRequest {
            settings: Some(lc::LifecycleSettings {
                at_risk_engagement_threshold: -1.0,
                ..Default::default()
            }),
            update_mask: cascade_testkit::fixtures::mask(&["at_risk_engagement_threshold"]),
        }))
        .await
        .expect_err("negative");
    assert_eq!(bad.code(), Code::InvalidArgument);
    system.stop().await;
}

async fn renewals_upgrades_and_ended_contracts_move_customers_by_the_tenants_rules(
    db: TestDatabase,
) {
    use OpportunityKind as K;
    use lc::OpportunityEventType as E;
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle().as_actor("csm@tenant.example");

    // An open renewal shows on the account with its kind; winning it keeps
    // the stage and clears an at-risk flag.
    let id = customer(&lifecycle, "Renewer").await;
    flag(&lifecycle, &id, "usage dropped")
        .await
        .expect("flagged");
    let renewal = new_id();
    let open = deal_of(&lifecycle, &id, &renewal, E::Opened, K::Renewal).await;
    assert_eq!(
        open.stage,
        S::Implement as i32,
        "a customer's new deal keeps its stage"
    );
    assert_eq!(
        open.open_opportunities
            .iter()
            .map(|o| (o.opportunity_id.as_str(), o.kind))
            .collect::<Vec<_>>(),
        [(renewal.as_str(), K::Renewal as i32)]
    );
    let renewed = deal_of(&lifecycle, &id, &renewal, E::Won, K::Renewal).await;
    assert_eq!(renewed.stage, S::Implement as i32);
    assert_eq!(renewed.at_risk, None, "a won renewal clears the flag");
    assert!(renewed.open_opportunities.is_empty());

    // A won upgrade moves IMPLEMENT to EXPAND, then EXPAND to ADVOCATE.
    for expected in [S::Expand, S::Advocate] {
        let upgrade = new_id();
        deal_of(&lifecycle, &id, &upgrade, E::Opened, K::Upgrade).await;
        let won = deal_of(&lifecycle, &id, &upgrade, E::Won, K::Upgrade).await;
        assert_eq!(won.stage, expected as i32);
    }
    let last = lifecycle.transitions(&id).await.pop().expect("entries");
    assert_eq!(last.cause, lc::TransitionCause::OpportunityWon as i32);

    // A lost renewal: nothing by default, a churn when the tenant says so.
    let lost_once = new_id();
    deal_of(&lifecycle, &id, &lost_once, E::Opened, K::Renewal).await;
    let stays = deal_of(&lifecycle, &id, &lost_once, E::Lost, K::Renewal).await;
    assert_eq!(stays.stage, S::Advocate as i32, "off by default");
    lifecycle
        .set_settings(
            lc::LifecycleSettings {
                churn_on_lost_renewal: true,
                churn_when_contracts_end: true,
                ..Default::default()
            },
            &["churn_on_lost_renewal", "churn_when_contracts_end"],
        )
        .await;
    let lost = new_id();
    deal_of(&lifecycle, &id, &lost, E::Opened, K::Renewal).await;
    let churned = deal_of(&lifecycle, &id, &lost, E::Lost, K::Renewal).await;
    assert_eq!(churned.stage, S::Churned as i32);
    let last = lifecycle.transitions(&id).await.pop().expect("entries");
    assert_eq!(
        (last.from_stage, last.cause),
        (
            S::Advocate as i32,
            lc::TransitionCause::OpportunityLost as i32
        )
    );

    // Contracts ended: a customer churns (the setting is on); a repeat of
    // the event changes nothing more.
    let other = customer(&lifecycle, "Ender").await;
    let ended = deal_of(
        &lifecycle,
        &other,
        &new_id(),
        E::ContractsEnded,
        K::NewBusiness,
    )
    .await;
    assert_eq!(ended.stage, S::Churned as i32);
    let last = lifecycle.transitions(&other).await.pop().expect("entries");
    assert_eq!(last.cause, lc::TransitionCause::ContractsEnded as i32);
    let repeat = deal_of(
        &lifecycle,
        &other,
        &new_id(),
        E::ContractsEnded,
        K::NewBusiness,
    )
    .await;
    assert_eq!(repeat.stage, S::Churned as i32);
    assert_eq!(funnel_now(&lifecycle, S::Churned).await.1, 2);
    system.stop().await;
}

async fn a_person_no_longer_at_the_company_is_fed_to_scoring(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let account = lifecycle
        .create_account_with(cascade_testkit::fixtures::account(
            "Globex",
            "globex.example",
            "owner",
        ))
        .await;
    let contact = lifecycle
        .create_contact(&account.account_id, "hank@globex.example")
        .await;
    let deactivate = async |contact_id: &str| {
        lifecycle
            .public()
            .deactivate_contact(lifecycle.req(lc::DeactivateContactRequest {
                contact_id: contact_id.to_owned(),
                reason: "left the company".to_owned(),
            }))
            .await
    };
    let gone = deactivate(&contact.contact_id)
        .await
        .expect("deactivated")
        .into_inner()
        .contact
        .expect("contact");
    assert!(gone.inactive);
    assert_eq!(gone.inactive_reason, "left the company");
    assert!(gone.inactive_time.is_some());
    assert_eq!(gone.stage, contact.stage, "the stage and history stay");
    // Again: unchanged, nothing new for scoring.
    deactivate(&contact.contact_id).await.expect("again");
    // Another tenant's contact is not found.
    let other = lifecycle.as_tenant("other-tenant");
    let foreign = other
        .public()
        .deactivate_contact(other.req(lc::DeactivateContactRequest {
            contact_id: contact.contact_id.clone(),
            reason: String::new(),
        }))
        .await;
    assert_eq!(
        foreign.map(|_| ()).expect_err("foreign").code(),
        Code::NotFound
    );

    // Resolution tells scoring, by id and by email.
    let resolved = lifecycle
        .public()
        .batch_resolve_contacts(lifecycle.req(lc::BatchResolveContactsRequest {
            references: vec![
                lc::ContactReference {
                    account_id: account.account_id.clone(),
                    contact_id: contact.contact_id.clone(),
                    ..Default::default()
                },
                lc::ContactReference {
                    email: "hank@globex.example".to_owned(),
                    ..Default::default()
                },
            ],
        }))
        .await
        .expect("resolved")
        .into_inner()
        .resolutions;
    assert!(
        resolved
            .iter()
            .all(|r| r.status == lc::ResolutionStatus::Resolved as i32 && r.contact_inactive),
        "{resolved:?}"
    );

    // The feed: the change is pending for scoring until confirmed.
    let internal = lifecycle.as_actor("scoring");
    let pending_after = async |after: &str| {
        internal
            .internal()
            .list_pending_contact_changes(internal.req(lc::ListPendingContactChangesRequest {
                service: "scoring".to_owned(),
                page_size: 0,
                after_change_id: after.to_owned(),
            }))
            .await
    };
    let pending = async || {
        pending_after("")
            .await
            .expect("pending")
            .into_inner()
            .changes
    };
    let changes = pending().await;
    assert_eq!(changes.len(), 1, "one change, not two: {changes:?}");
    assert_eq!(
        (
            changes[0].contact_id.as_str(),
            changes[0].account_id.as_str(),
            changes[0].inactive
        ),
        (
            contact.contact_id.as_str(),
            account.account_id.as_str(),
            true
        )
    );
    // Pages go on after the last change of the previous one.
    let after_it = pending_after(&changes[0].change_id)
        .await
        .expect("the next page");
    assert!(after_it.get_ref().changes.is_empty(), "{after_it:?}");
    let malformed = pending_after("not-an-id")
        .await
        .expect_err("a malformed cursor");
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert_eq!(
        cascade_testkit::fixtures::violated_fields(&malformed),
        ["after_change_id"]
    );
    let confirm = async |change_id: String| {
        internal
            .internal()
            .confirm_contact_change(internal.req(lc::ConfirmContactChangeRequest {
                change_id,
                service: "scoring".to_owned(),
            }))
            .await
    };
    confirm(changes[0].change_id.clone())
        .await
        .expect("confirmed");
    confirm(changes[0].change_id.clone())
        .await
        .expect("idempotent");
    assert!(pending().await.is_empty());
    let missing = confirm(new_id()).await.expect_err("unknown change");
    assert_eq!(missing.code(), Code::NotFound);
    let wrong_service = internal
        .internal()
        .list_pending_contact_changes(internal.req(lc::ListPendingContactChangesRequest {
            service: "opportunity".to_owned(),
            page_size: 0,
            after_change_id: String::new(),
        }))
        .await
        .expect_err("only scoring reads it");
    assert_eq!(wrong_service.code(), Code::InvalidArgument);

    // Back at the company: active again, and scoring hears of it.
    let back = lifecycle
        .public()
        .reactivate_contact(lifecycle.req(lc::ReactivateContactRequest {
            contact_id: contact.contact_id.clone(),
        }))
        .await
        .expect("reactivated")
        .into_inner()
        .contact
        .expect("contact");
    assert!(!back.inactive && back.inactive_reason.is_empty() && back.inactive_time.is_none());
    let changes = pending().await;
    assert_eq!(
        changes
            .iter()
            .map(|c| (c.inactive, c.kind()))
            .collect::<Vec<_>>(),
        [(false, lc::ContactChangeKind::Status)]
    );

    // A new email is a change of its own kind: scoring forgets whom the old
    // email named, and leaves the status it holds alone.
    lifecycle
        .public()
        .update_contact(lifecycle.req(lc::UpdateContactRequest {
            contact: Some(lc::Contact {
                contact_id: contact.contact_id.clone(),
                email: "hank@globex-mail.example".into(),
                ..Default::default()
            }),
            update_mask: cascade_testkit::fixtures::mask(&["email"]),
        }))
        .await
        .expect("a new email");
    let changes = pending().await;
    assert_eq!(
        changes
            .iter()
            .map(|c| (c.contact_id.as_str(), c.kind()))
            .collect::<Vec<_>>(),
        [
            (contact.contact_id.as_str(), lc::ContactChangeKind::Status),
            (contact.contact_id.as_str(), lc::ContactChangeKind::Email)
        ]
    );
    system.stop().await;
}
