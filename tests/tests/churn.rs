//! Churn (issue 19, item 1), through lifecycle's API on SQLite and
//! PostgreSQL: a customer churns with a reason, the history and the funnel
//! show it, and a new opportunity brings it back to PIPELINE as a
//! re-prospect that can be won again, with its first-reached times kept.

use cascade_domain::ids::new_id;
use cascade_proto::common::v1::{AccountStage as S, CustomerType};
use cascade_proto::lifecycle::v1 as lc;
use cascade_testkit::fixtures::{days_ago, opportunity_event, precondition_subjects};
use cascade_testkit::{Lifecycle, TestDatabase, TestSystem, next_millisecond, on_each_database};
use tonic::Code;

on_each_database!(a_customer_churns_and_comes_back_through_a_new_opportunity);

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
