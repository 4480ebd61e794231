//! BatchCreateAccounts and BatchCreateContacts: each item checked as its
//! single-record RPC checks it; the valid ones go to the repository in one
//! call, and every item gets a result, in order.

use cascade_chassis::error::FieldViolation;
use cascade_chassis::idempotency::RequestKey;
use cascade_chassis::validate::Validator;
use cascade_chassis::{RequestContext, ServiceError, ServiceResult};
use cascade_proto::common::v1 as common;
use cascade_proto::lifecycle::v1 as pb;
use tonic::{Request, Response, Status};

use super::{LifecycleApi, new_account, new_contact};
use crate::convert;
use crate::storage::{ImportItem, Imported};

/// One item after its checks: what to store, or why it is refused.
type Checked<T> = Result<T, Vec<FieldViolation>>;

/// One item's result: outcome, record, violations.
type Outcome<R> = (
    pb::BatchCreateOutcome,
    Option<R>,
    Vec<common::FieldViolation>,
);

/// Checks the batch's size (1 to LARGEST_BATCH), then every item with
/// `check`, each on its own.
fn check_each<R, T>(
    requests: Vec<R>,
    check: impl Fn(&mut Validator, R) -> T,
) -> Result<Vec<Checked<T>>, ServiceError> {
    let largest = cascade_domain::LARGEST_BATCH;
    if requests.is_empty() || requests.len() > largest {
        return Err(ServiceError::invalid(
            "requests",
            format!("1 to {largest} items (got {})", requests.len()),
        ));
    }
    Ok(requests
        .into_iter()
        .map(|request| {
            let mut v = Validator::new();
            let item = check(&mut v, request);
            match v.finish() {
                Ok(()) => Ok(item),
                Err(ServiceError::InvalidArgument(violations)) => Err(violations),
                Err(other) => Err(vec![FieldViolation::new("", other.to_string())]),
            }
        })
        .collect())
}

fn to_proto(violations: impl IntoIterator<Item = (String, String)>) -> Vec<common::FieldViolation> {
    violations
        .into_iter()
        .map(|(field, description)| common::FieldViolation { field, description })
        .collect()
}

/// The results in request order: refused items where they were, and the
/// repository's results (one per valid item, in order) in between.
fn merge<T, R>(checked: &[Checked<T>], stored: Vec<Imported<R>>) -> ServiceResult<Vec<Outcome<R>>> {
    let mut stored = stored.into_iter();
    checked
        .iter()
        .map(|item| match item {
            Err(refused) => Ok((
                pb::BatchCreateOutcome::Rejected,
                None,
                to_proto(
                    refused
                        .iter()
                        .map(|v| (v.field.clone(), v.description.clone())),
                ),
            )),
            Ok(_) => match stored.next() {
                Some(Imported::Created(r)) => {
                    Ok((pb::BatchCreateOutcome::Created, Some(r), vec![]))
                }
                Some(Imported::Existing(r)) => {
                    Ok((pb::BatchCreateOutcome::Existing, Some(r), vec![]))
                }
                Some(Imported::Rejected(why)) => {
                    Ok((pb::BatchCreateOutcome::Rejected, None, to_proto(why)))
                }
                None => Err(ServiceError::internal(anyhow::anyhow!(
                    "the repository returned fewer results than items"
                ))),
            },
        })
        .collect()
}

/// Created, existing and rejected counts.
fn counts<R>(outcomes: &[Outcome<R>]) -> (i32, i32, i32) {
    let count = |wanted: pb::BatchCreateOutcome| {
        i32::try_from(outcomes.iter().filter(|o| o.0 == wanted).count()).unwrap_or(i32::MAX)
    };
    (
        count(pb::BatchCreateOutcome::Created),
        count(pb::BatchCreateOutcome::Existing),
        count(pb::BatchCreateOutcome::Rejected),
    )
}

/// Checks every item, stores the valid ones with `store` (not called when
/// none is), and answers each item in request order, with the counts.
async fn import<Req, T: Clone, R, Fut>(
    requests: Vec<Req>,
    check: impl Fn(&mut Validator, Req) -> (T, Option<RequestKey>),
    store: impl FnOnce(Vec<ImportItem<T>>) -> Fut,
) -> ServiceResult<(Vec<Outcome<R>>, (i32, i32, i32))>
where
    Fut: std::future::Future<Output = ServiceResult<Vec<Imported<R>>>>,
{
    let checked = check_each(requests, check)?;
    let valid: Vec<ImportItem<T>> = checked
        .iter()
        .enumerate()
        .filter_map(|(position, c)| {
            let (new, request) = c.as_ref().ok()?;
            Some(ImportItem {
                position,
                new: new.clone(),
                request: request.clone(),
            })
        })
        .collect();
    let stored = if valid.is_empty() {
        Vec::new()
    } else {
        store(valid).await?
    };
    let outcomes = merge(&checked, stored)?;
    let counts = counts(&outcomes);
    Ok((outcomes, counts))
}

pub(super) async fn batch_create_accounts(
    api: &LifecycleApi,
    request: Request<pb::BatchCreateAccountsRequest>,
) -> Result<Response<pb::BatchCreateAccountsResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let (outcomes, (created_count, existing_count, rejected_count)) =
        import(request.into_inner().requests, new_account, async |valid| {
            api.repository
                .batch_create_accounts(&context.tenant, &valid)
                .await
        })
        .await?;
    Ok(Response::new(pb::BatchCreateAccountsResponse {
        results: outcomes
            .into_iter()
            .map(
                |(outcome, account, violations)| pb::BatchCreateAccountResult {
                    outcome: outcome as i32,
                    account: account.map(convert::account),
                    violations,
                },
            )
            .collect(),
        created_count,
        existing_count,
        rejected_count,
    }))
}

pub(super) async fn batch_create_contacts(
    api: &LifecycleApi,
    request: Request<pb::BatchCreateContactsRequest>,
) -> Result<Response<pb::BatchCreateContactsResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let (outcomes, (created_count, existing_count, rejected_count)) =
        import(request.into_inner().requests, new_contact, async |valid| {
            api.repository
                .batch_create_contacts(&context.tenant, &valid)
                .await
        })
        .await?;
    Ok(Response::new(pb::BatchCreateContactsResponse {
        results: outcomes
            .into_iter()
            .map(
                |(outcome, contact, violations)| pb::BatchCreateContactResult {
                    outcome: outcome as i32,
                    contact: contact.map(convert::contact),
                    violations,
                },
            )
            .collect(),
        created_count,
        existing_count,
        rejected_count,
    }))
}
