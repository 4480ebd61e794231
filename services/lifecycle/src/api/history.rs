//! History and the audit reads: account and contact transitions,
//! notifications, an account's stage at a time.

use cascade_chassis::RequestContext;
use cascade_chassis::page::PageRequest;
use cascade_chassis::validate::Validator;
use cascade_proto::lifecycle::v1 as pb;
use tonic::{Request, Response, Status};

use super::{LifecycleApi, optional_enum, required_id};
use crate::convert;
use crate::domain::DeliveryState;
use crate::storage::NotificationFilter;

pub(super) async fn list_account_transitions(
    api: &LifecycleApi,
    request: Request<pb::ListAccountTransitionsRequest>,
) -> Result<Response<pb::ListAccountTransitionsResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let account_id = required_id("account_id", &request.account_id)?;
    let page = PageRequest::of(&context.tenant, &request)?;
    let (transitions, next_page_token) = api
        .repository
        .list_transitions(&context.tenant, &account_id, &page)
        .await?;
    Ok(Response::new(pb::ListAccountTransitionsResponse {
        transitions: transitions.iter().map(convert::transition).collect(),
        next_page_token,
    }))
}

pub(super) async fn list_contact_transitions(
    api: &LifecycleApi,
    request: Request<pb::ListContactTransitionsRequest>,
) -> Result<Response<pb::ListContactTransitionsResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let contact_id = required_id("contact_id", &request.contact_id)?;
    let page = PageRequest::of(&context.tenant, &request)?;
    let (transitions, next_page_token) = api
        .repository
        .list_contact_transitions(&context.tenant, &contact_id, &page)
        .await?;
    Ok(Response::new(pb::ListContactTransitionsResponse {
        transitions: transitions
            .iter()
            .map(convert::contact_transition)
            .collect(),
        next_page_token,
    }))
}

pub(super) async fn list_notifications(
    api: &LifecycleApi,
    request: Request<pb::ListNotificationsRequest>,
) -> Result<Response<pb::ListNotificationsResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let page = PageRequest::of(&context.tenant, &request)?;
    let mut v = Validator::new();
    v.filter_not_blank("account_id", &request.account_id);
    let filter = NotificationFilter {
        account_id: (!request.account_id.trim().is_empty())
            .then(|| v.required_id("account_id", &request.account_id)),
        state: optional_enum(
            &mut v,
            "delivery_state",
            request.delivery_state,
            DeliveryState::from_proto,
        ),
    };
    v.finish()?;
    let (notifications, next_page_token) = api
        .repository
        .list_notifications(&context.tenant, filter, &page)
        .await?;
    Ok(Response::new(pb::ListNotificationsResponse {
        notifications: notifications.iter().map(convert::notification).collect(),
        next_page_token,
    }))
}

pub(super) async fn get_account_stage_at(
    api: &LifecycleApi,
    request: Request<pb::GetAccountStageAtRequest>,
) -> Result<Response<pb::GetAccountStageAtResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let mut v = Validator::new();
    let account_id = v.required_id("account_id", &request.account_id);
    let time = v.required_time("time", request.time.as_ref());
    v.finish()?;
    let at_ms = time.map_or(0, |t| t.timestamp_millis());
    let (stage, customer_type, last) = api
        .repository
        .stage_at(&context.tenant, &account_id, at_ms)
        .await?;
    Ok(Response::new(pb::GetAccountStageAtResponse {
        stage: stage.to_proto(),
        customer_type: customer_type.to_proto(),
        last_transition: last.as_ref().map(convert::transition),
    }))
}
