//! Contact resolution: one reference or a batch, by id or email.

use cascade_chassis::validate::Validator;
use cascade_chassis::{RequestContext, ServiceError, ServiceResult};
use cascade_proto::lifecycle::v1 as pb;
use tonic::{Request, Response, Status};

use super::LifecycleApi;
use crate::convert;
use crate::domain::resolve::{Reference, Resolution};

pub(super) async fn resolve_contact(
    api: &LifecycleApi,
    request: Request<pb::ResolveContactRequest>,
) -> Result<Response<pb::ResolveContactResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let mut v = Validator::new();
    let email = v.optional_email("email", &request.get_ref().email);
    if email.is_none() {
        v.add("email", "is required");
    }
    v.finish()?;
    let email = email.unwrap_or_default();
    let (contact, created) = api
        .repository
        .resolve_contact(&context.tenant, &email)
        .await?;
    Ok(Response::new(pb::ResolveContactResponse {
        contact: Some(convert::contact(contact)),
        created,
    }))
}

pub(super) async fn batch_resolve_contacts(
    api: &LifecycleApi,
    request: Request<pb::BatchResolveContactsRequest>,
) -> Result<Response<pb::BatchResolveContactsResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let references = request.into_inner().references;
    let largest = cascade_domain::LARGEST_BATCH;
    if references.is_empty() || references.len() > largest {
        return Err(ServiceError::invalid(
            "references",
            format!("1 to {largest} references (got {})", references.len()),
        )
        .into());
    }
    let mut v = Validator::new();
    let references: Vec<Reference> = references
        .iter()
        .enumerate()
        .map(|(i, r)| reference_of(&mut v, i, r))
        .collect();
    v.finish()?;
    let resolutions = api
        .repository
        .resolve_references(&context.tenant, &references)
        .await?;
    let resolutions = resolutions
        .into_iter()
        .map(resolution_to_proto)
        .collect::<ServiceResult<Vec<_>>>()?;
    Ok(Response::new(pb::BatchResolveContactsResponse {
        resolutions,
    }))
}

fn resolution_to_proto(resolution: Resolution) -> ServiceResult<pb::ContactResolution> {
    let refused =
        |status: pb::ResolutionStatus, field: &str, description: String| pb::ContactResolution {
            status: status as i32,
            field: field.to_owned(),
            description,
            ..Default::default()
        };
    Ok(match resolution {
        Resolution::Resolved {
            account_id,
            contact_id,
            inactive,
        } => pb::ContactResolution {
            status: pb::ResolutionStatus::Resolved as i32,
            account_id,
            contact_id: contact_id.unwrap_or_default(),
            contact_inactive: inactive,
            ..Default::default()
        },
        Resolution::Created {
            account_id,
            contact_id,
        } => pb::ContactResolution {
            status: pb::ResolutionStatus::Created as i32,
            account_id,
            contact_id,
            ..Default::default()
        },
        // Storage carries out every Create: one left over is our fault, never
        // something to report as an unknown email.
        Resolution::Create { email, .. } => {
            return Err(ServiceError::internal(anyhow::anyhow!(
                "the contact for {email} was decided but not created"
            )));
        }
        Resolution::NotFound { field, description } => {
            refused(pb::ResolutionStatus::NotFound, field, description)
        }
        Resolution::Mismatch { field, description } => {
            refused(pb::ResolutionStatus::Mismatch, field, description)
        }
    })
}

/// Validates one reference; violations are named `references[i].<field>`.
fn reference_of(v: &mut Validator, i: usize, r: &pb::ContactReference) -> Reference {
    let field = |name: &str| format!("references[{i}].{name}");
    let has_ids = !r.account_id.trim().is_empty() || !r.contact_id.trim().is_empty();
    match (has_ids, r.email.trim().is_empty()) {
        (true, false) => {
            v.add(field("email"), "give either ids or an email, not both");
            Reference::Email(String::new())
        }
        (false, false) => Reference::Email(
            v.optional_email(&field("email"), &r.email)
                .unwrap_or_default(),
        ),
        _ => Reference::Ids {
            account_id: v.required_id(&field("account_id"), &r.account_id),
            contact_id: (!r.contact_id.trim().is_empty())
                .then(|| v.required_id(&field("contact_id"), &r.contact_id)),
        },
    }
}
