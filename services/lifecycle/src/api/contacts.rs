//! People no longer at the company: DeactivateContact, ReactivateContact,
//! and the feed of those changes scoring reads (internal).

use cascade_chassis::RequestContext;
use cascade_chassis::validate::Validator;
use cascade_proto::lifecycle::v1 as pb;
use tonic::{Request, Response, Status};

use super::LifecycleApi;
use crate::convert;
use crate::storage::ChangeKind;

const MAX_REASON: usize = 500;
const MAX_PAGE_SIZE: u64 = 500;

pub(super) async fn deactivate_contact(
    api: &LifecycleApi,
    request: Request<pb::DeactivateContactRequest>,
) -> Result<Response<pb::DeactivateContactResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let mut v = Validator::new();
    let contact_id = v.required_id("contact_id", &request.contact_id);
    let reason = v.optional_prose("reason", &request.reason, MAX_REASON);
    v.finish()?;
    let contact = api
        .repository
        .set_contact_inactive(&context.tenant, &contact_id, Some(reason))
        .await?;
    Ok(Response::new(pb::DeactivateContactResponse {
        contact: Some(convert::contact(contact)),
    }))
}

pub(super) async fn reactivate_contact(
    api: &LifecycleApi,
    request: Request<pb::ReactivateContactRequest>,
) -> Result<Response<pb::ReactivateContactResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let mut v = Validator::new();
    let contact_id = v.required_id("contact_id", &request.get_ref().contact_id);
    v.finish()?;
    let contact = api
        .repository
        .set_contact_inactive(&context.tenant, &contact_id, None)
        .await?;
    Ok(Response::new(pb::ReactivateContactResponse {
        contact: Some(convert::contact(contact)),
    }))
}

pub(super) async fn list_pending_contact_changes(
    api: &LifecycleApi,
    request: Request<pb::ListPendingContactChangesRequest>,
) -> Result<Response<pb::ListPendingContactChangesResponse>, Status> {
    let request = request.into_inner();
    let mut v = Validator::new();
    let limit = match u64::try_from(request.page_size) {
        Ok(0) => 100,
        Ok(n) if n <= MAX_PAGE_SIZE => n,
        _ => {
            v.add("page_size", format!("must be 0 to {MAX_PAGE_SIZE}"));
            0
        }
    };
    let after = v.optional_id("after_change_id", &request.after_change_id);
    v.finish()?;
    let pending = api
        .repository
        .pending_contact_changes(&request.service, after.as_deref(), limit)
        .await?;
    Ok(Response::new(pb::ListPendingContactChangesResponse {
        changes: pending
            .into_iter()
            .map(|c| pb::PendingContactChange {
                tenant_id: c.tenant_id,
                change_id: c.change_id,
                contact_id: c.contact_id,
                account_id: c.account_id,
                inactive: c.inactive,
                kind: match c.kind {
                    ChangeKind::Status => pb::ContactChangeKind::Status,
                    ChangeKind::Email => pb::ContactChangeKind::Email,
                }
                .into(),
            })
            .collect(),
    }))
}

pub(super) async fn confirm_contact_change(
    api: &LifecycleApi,
    request: Request<pb::ConfirmContactChangeRequest>,
) -> Result<Response<pb::ConfirmContactChangeResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let mut v = Validator::new();
    let change_id = v.required_id("change_id", &request.change_id);
    v.finish()?;
    api.repository
        .confirm_contact_change(&context.tenant, &change_id, &request.service)
        .await?;
    Ok(Response::new(pb::ConfirmContactChangeResponse {}))
}
