//! DeleteContact, DeleteAccount and GetErasure (public), and the internal
//! ListPendingErasures / ConfirmErasure through which scoring and
//! opportunity erase their parts.

use std::time::Duration;

use cascade_chassis::RequestContext;
use cascade_chassis::page::MAX_PAGE_SIZE;
use cascade_chassis::time::to_timestamp;
use cascade_chassis::validate::Validator;
use cascade_proto::lifecycle::v1 as pb;
use tonic::{Request, Response, Status};

use super::{LifecycleApi, required_id};
use crate::domain::erasure::{ERASING_SERVICES, Erasure};

fn to_proto(erasure: Erasure, settle: Duration) -> pb::Erasure {
    let complete_time = erasure.complete_at();
    pb::Erasure {
        settle_time: Some(to_timestamp(erasure.settles_at(settle))),
        steps: erasure
            .steps()
            .into_iter()
            .map(|(service, done)| pb::ErasureStep {
                service: service.to_owned(),
                done: done.is_some(),
                complete_time: done.map(to_timestamp),
            })
            .collect(),
        complete: complete_time.is_some(),
        complete_time: complete_time.map(to_timestamp),
        contact_count: i32::try_from(erasure.contact_ids.len()).unwrap_or(i32::MAX),
        erasure_id: erasure.erasure_id,
        subject_type: erasure.subject.to_proto(),
        subject_id: erasure.subject_id,
        account_id: erasure.account_id,
        actor: erasure.actor,
        create_time: Some(to_timestamp(erasure.created_at)),
    }
}

pub(super) async fn delete_contact(
    api: &LifecycleApi,
    request: Request<pb::DeleteContactRequest>,
) -> Result<Response<pb::DeleteContactResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let contact_id = required_id("contact_id", &request.get_ref().contact_id)?;
    let erasure = api
        .repository
        .erase_contact(&context.tenant, &context.actor, &contact_id)
        .await?;
    Ok(Response::new(pb::DeleteContactResponse {
        erasure: Some(to_proto(erasure, api.repository.erasure_settle())),
    }))
}

pub(super) async fn delete_account(
    api: &LifecycleApi,
    request: Request<pb::DeleteAccountRequest>,
) -> Result<Response<pb::DeleteAccountResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let account_id = required_id("account_id", &request.get_ref().account_id)?;
    let erasure = api
        .repository
        .erase_account(
            &context.tenant,
            &context.actor,
            &account_id,
            request.get_ref().force,
        )
        .await?;
    Ok(Response::new(pb::DeleteAccountResponse {
        erasure: Some(to_proto(erasure, api.repository.erasure_settle())),
    }))
}

pub(super) async fn get_erasure(
    api: &LifecycleApi,
    request: Request<pb::GetErasureRequest>,
) -> Result<Response<pb::GetErasureResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let erasure_id = required_id("erasure_id", &request.get_ref().erasure_id)?;
    let erasure = api
        .repository
        .get_erasure(&context.tenant, &erasure_id)
        .await?;
    Ok(Response::new(pb::GetErasureResponse {
        erasure: Some(to_proto(erasure, api.repository.erasure_settle())),
    }))
}

/// The service naming itself, checked.
fn service(v: &mut Validator, service: &str) -> String {
    if !ERASING_SERVICES.contains(&service) {
        v.add(
            "service",
            format!("must be one of {}", ERASING_SERVICES.join(", ")),
        );
    }
    service.to_owned()
}

pub(super) async fn list_pending_erasures(
    api: &LifecycleApi,
    request: Request<pb::ListPendingErasuresRequest>,
) -> Result<Response<pb::ListPendingErasuresResponse>, Status> {
    let request = request.into_inner();
    let mut v = Validator::new();
    let service = service(&mut v, &request.service);
    let limit = match u64::try_from(request.page_size) {
        Ok(0) => 100,
        Ok(n) if n <= MAX_PAGE_SIZE => n,
        _ => {
            v.add("page_size", format!("must be 0 to {MAX_PAGE_SIZE}"));
            0
        }
    };
    let after = v.optional_id("after_erasure_id", &request.after_erasure_id);
    v.finish()?;
    let pending = api
        .repository
        .pending_erasures(&service, after.as_deref(), limit)
        .await?;
    Ok(Response::new(pb::ListPendingErasuresResponse {
        erasures: pending
            .into_iter()
            .map(|(tenant_id, e)| pb::PendingErasure {
                tenant_id,
                subject_type: e.subject.to_proto(),
                erasure_id: e.erasure_id,
                subject_id: e.subject_id,
                account_id: e.account_id,
                contact_ids: e.contact_ids,
            })
            .collect(),
    }))
}

pub(super) async fn confirm_erasure(
    api: &LifecycleApi,
    request: Request<pb::ConfirmErasureRequest>,
) -> Result<Response<pb::ConfirmErasureResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let mut v = Validator::new();
    let erasure_id = v.required_id("erasure_id", &request.erasure_id);
    let service = service(&mut v, &request.service);
    v.finish()?;
    let complete = api
        .repository
        .confirm_erasure(&context.tenant, &erasure_id, &service)
        .await?;
    Ok(Response::new(pb::ConfirmErasureResponse { complete }))
}
