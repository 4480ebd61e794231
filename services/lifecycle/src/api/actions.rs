//! Manual actions: qualify, disqualify, nurture, advance, churn, and the
//! at-risk flag.

use cascade_chassis::validate::Validator;
use cascade_chassis::{RequestContext, ServiceError, ServiceResult};
use cascade_domain::AccountStage;
use cascade_proto::lifecycle::v1 as pb;
use tonic::{Request, Response, Status};

use super::{LifecycleApi, optional_enum};
use crate::convert;
use crate::domain::account_rules::AccountEvent;
use crate::storage::Mutation;

const MAX_REASON: usize = 1000;

fn reason(v: &mut Validator, value: &str, required: bool) -> Option<String> {
    if required {
        Some(v.required_prose("reason", value, MAX_REASON))
    } else {
        v.optional_prose("reason", value, MAX_REASON)
    }
}

async fn manual(
    api: &LifecycleApi,
    context: &RequestContext,
    account_id: &str,
    event: AccountEvent,
    reason: Option<String>,
) -> ServiceResult<(pb::Account, Option<pb::AccountTransition>)> {
    let result = api
        .repository
        .mutate(
            &context.tenant,
            &context.actor,
            account_id,
            Mutation::Manual { event, reason },
        )
        .await?;
    // The action's own entry; a flag cleared by a churn comes after it.
    let transition = result.transitions.first().map(convert::transition);
    Ok((convert::account(result.account), transition))
}

/// `manual` for an action that always records an entry (the rules refuse
/// it otherwise).
async fn recorded(
    api: &LifecycleApi,
    context: &RequestContext,
    account_id: &str,
    event: AccountEvent,
    reason: Option<String>,
) -> ServiceResult<(pb::Account, pb::AccountTransition)> {
    let (account, transition) = manual(api, context, account_id, event, reason).await?;
    let transition = transition.ok_or_else(|| {
        ServiceError::internal(anyhow::anyhow!("a manual action recorded no transition"))
    })?;
    Ok((account, transition))
}

/// Checks an action that names an account and a reason, and runs it.
async fn action_with_reason<R>(
    api: &LifecycleApi,
    request: Request<R>,
    fields: fn(&R) -> (&str, &str),
    event: AccountEvent,
    reason_required: bool,
) -> Result<(Option<pb::Account>, Option<pb::AccountTransition>), Status> {
    let context = RequestContext::of(&request)?;
    let (account_id, reason_text) = fields(request.get_ref());
    let mut v = Validator::new();
    let account_id = v.required_id("account_id", account_id);
    let reason = reason(&mut v, reason_text, reason_required);
    v.finish()?;
    let (account, transition) = manual(api, &context, &account_id, event, reason).await?;
    Ok((Some(account), transition))
}

pub(super) async fn qualify_account(
    api: &LifecycleApi,
    request: Request<pb::QualifyAccountRequest>,
) -> Result<Response<pb::QualifyAccountResponse>, Status> {
    let fields: fn(&pb::QualifyAccountRequest) -> (&str, &str) = |r| (&r.account_id, &r.reason);
    let (account, transition) =
        action_with_reason(api, request, fields, AccountEvent::Qualify, false).await?;
    Ok(Response::new(pb::QualifyAccountResponse {
        account,
        transition,
    }))
}

pub(super) async fn disqualify_account(
    api: &LifecycleApi,
    request: Request<pb::DisqualifyAccountRequest>,
) -> Result<Response<pb::DisqualifyAccountResponse>, Status> {
    let fields: fn(&pb::DisqualifyAccountRequest) -> (&str, &str) = |r| (&r.account_id, &r.reason);
    let (account, transition) =
        action_with_reason(api, request, fields, AccountEvent::Disqualify, true).await?;
    Ok(Response::new(pb::DisqualifyAccountResponse {
        account,
        transition,
    }))
}

pub(super) async fn nurture_account(
    api: &LifecycleApi,
    request: Request<pb::NurtureAccountRequest>,
) -> Result<Response<pb::NurtureAccountResponse>, Status> {
    let fields: fn(&pb::NurtureAccountRequest) -> (&str, &str) = |r| (&r.account_id, &r.reason);
    let (account, transition) =
        action_with_reason(api, request, fields, AccountEvent::Nurture, true).await?;
    Ok(Response::new(pb::NurtureAccountResponse {
        account,
        transition,
    }))
}

pub(super) async fn churn_account(
    api: &LifecycleApi,
    request: Request<pb::ChurnAccountRequest>,
) -> Result<Response<pb::ChurnAccountResponse>, Status> {
    let fields: fn(&pb::ChurnAccountRequest) -> (&str, &str) = |r| (&r.account_id, &r.reason);
    let (account, transition) =
        action_with_reason(api, request, fields, AccountEvent::Churn, true).await?;
    Ok(Response::new(pb::ChurnAccountResponse {
        account,
        transition,
    }))
}

pub(super) async fn advance_account(
    api: &LifecycleApi,
    request: Request<pb::AdvanceAccountRequest>,
) -> Result<Response<pb::AdvanceAccountResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let mut v = Validator::new();
    let account_id = v.required_id("account_id", &request.account_id);
    let to = optional_enum(
        &mut v,
        "to_stage",
        request.to_stage,
        AccountStage::from_proto,
    );
    if let Some(to) = to
        && !matches!(to, AccountStage::Expand | AccountStage::Advocate)
    {
        v.add(
            "to_stage",
            "must be ACCOUNT_STAGE_EXPAND or ACCOUNT_STAGE_ADVOCATE",
        );
    }
    let reason = reason(&mut v, &request.reason, false);
    v.finish()?;
    let (account, transition) = recorded(
        api,
        &context,
        &account_id,
        AccountEvent::Advance { to },
        reason,
    )
    .await?;
    Ok(Response::new(pb::AdvanceAccountResponse {
        account: Some(account),
        transition: Some(transition),
    }))
}

pub(super) async fn flag_account_at_risk(
    api: &LifecycleApi,
    request: Request<pb::FlagAccountAtRiskRequest>,
) -> Result<Response<pb::FlagAccountAtRiskResponse>, Status> {
    let fields: fn(&pb::FlagAccountAtRiskRequest) -> (&str, &str) = |r| (&r.account_id, &r.reason);
    let (account, transition) =
        action_with_reason(api, request, fields, AccountEvent::FlagAtRisk, true).await?;
    Ok(Response::new(pb::FlagAccountAtRiskResponse {
        account,
        transition,
    }))
}

/// Clearing an account that is not at risk records nothing: `transition`
/// is then unset.
pub(super) async fn clear_account_at_risk(
    api: &LifecycleApi,
    request: Request<pb::ClearAccountAtRiskRequest>,
) -> Result<Response<pb::ClearAccountAtRiskResponse>, Status> {
    let fields: fn(&pb::ClearAccountAtRiskRequest) -> (&str, &str) = |r| (&r.account_id, &r.reason);
    let (account, transition) =
        action_with_reason(api, request, fields, AccountEvent::ClearAtRisk, true).await?;
    Ok(Response::new(pb::ClearAccountAtRiskResponse {
        account,
        transition,
    }))
}
