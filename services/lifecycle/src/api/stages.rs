//! Handlers of the stage engine: manual actions, Apply* deliveries, history,
//! the funnel, settings and the watch stream.

use std::pin::Pin;
use std::time::Duration;

use cascade_proto::lifecycle::v1 as pb;
use cascade_shared::domain::AccountStage;
use cascade_shared::error::FieldViolation;
use cascade_shared::page::PageRequest;
use cascade_shared::time::to_timestamp;
use cascade_shared::validate::{Validator, mask_path, mask_paths, not_writable};
use cascade_shared::{RequestContext, ServiceError, ServiceResult};
use prost::Message;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{LifecycleApi, optional_enum, required_id};
use crate::convert;
use crate::domain::DeliveryState;
use crate::domain::account_rules::AccountEvent;
use crate::domain::resolve::{Reference, Resolution};
use crate::domain::scores::{ContactEngagement, ScoreDelivery};
use crate::domain::settings::{LifecycleSettings, OnLostAction};
use crate::storage::{
    ApplyOutcome, Mutation, MutationResult, NotificationFilter, OpportunityEventKind, ScoreApplied,
};

/// The stream type of WatchAccountEvents.
pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchAccountEventsResponse, Status>> + Send + 'static>>;

const MAX_REASON: usize = 1000;
const MAX_EVENT_ID: usize = 128;
const MAX_CONTACTS_PER_DELIVERY: usize = 1000;
/// Deliveries per ApplyEngagementScores call.
const MAX_SCORE_ITEMS: usize = 500;
const MAX_ACTIVITY_TYPE: usize = 64;
const MAX_HAND_RAISE_TYPES: usize = 50;
/// How often a watcher looks for events written by other replicas.
const WATCH_POLL: Duration = Duration::from_millis(500);

fn reason(v: &mut Validator, value: &str, required: bool) -> Option<String> {
    if required {
        Some(v.required_text("reason", value, MAX_REASON))
    } else {
        v.optional_text("reason", value, MAX_REASON)
    }
}

async fn manual(
    api: &LifecycleApi,
    context: &RequestContext,
    account_id: &str,
    event: AccountEvent,
    reason: Option<String>,
) -> ServiceResult<(pb::Account, pb::AccountTransition)> {
    let result = api
        .repository
        .mutate(
            &context.tenant,
            &context.actor,
            account_id,
            Mutation::Manual { event, reason },
        )
        .await?;
    let transition = result
        .transitions
        .first()
        .map(convert::transition)
        .ok_or_else(|| {
            ServiceError::internal(anyhow::anyhow!("a manual action recorded no transition"))
        })?;
    Ok((convert::account(result.account), transition))
}

pub(super) async fn qualify_account(
    api: &LifecycleApi,
    request: Request<pb::QualifyAccountRequest>,
) -> Result<Response<pb::QualifyAccountResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let mut v = Validator::new();
    let account_id = v.required_id("account_id", &request.account_id);
    let reason = reason(&mut v, &request.reason, false);
    v.finish()?;
    let (account, transition) =
        manual(api, &context, &account_id, AccountEvent::Qualify, reason).await?;
    Ok(Response::new(pb::QualifyAccountResponse {
        account: Some(account),
        transition: Some(transition),
    }))
}

pub(super) async fn disqualify_account(
    api: &LifecycleApi,
    request: Request<pb::DisqualifyAccountRequest>,
) -> Result<Response<pb::DisqualifyAccountResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let mut v = Validator::new();
    let account_id = v.required_id("account_id", &request.account_id);
    let reason = reason(&mut v, &request.reason, true);
    v.finish()?;
    let (account, transition) =
        manual(api, &context, &account_id, AccountEvent::Disqualify, reason).await?;
    Ok(Response::new(pb::DisqualifyAccountResponse {
        account: Some(account),
        transition: Some(transition),
    }))
}

pub(super) async fn nurture_account(
    api: &LifecycleApi,
    request: Request<pb::NurtureAccountRequest>,
) -> Result<Response<pb::NurtureAccountResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let mut v = Validator::new();
    let account_id = v.required_id("account_id", &request.account_id);
    let reason = reason(&mut v, &request.reason, true);
    v.finish()?;
    let (account, transition) =
        manual(api, &context, &account_id, AccountEvent::Nurture, reason).await?;
    Ok(Response::new(pb::NurtureAccountResponse {
        account: Some(account),
        transition: Some(transition),
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
    let (account, transition) = manual(
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
    let largest = cascade_shared::limit::LARGEST_BATCH;
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
        } => pb::ContactResolution {
            status: pb::ResolutionStatus::Resolved as i32,
            account_id,
            contact_id: contact_id.unwrap_or_default(),
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

pub(super) async fn list_account_transitions(
    api: &LifecycleApi,
    request: Request<pb::ListAccountTransitionsRequest>,
) -> Result<Response<pb::ListAccountTransitionsResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let account_id = required_id("account_id", &request.account_id)?;
    let page = PageRequest::parse(request.page_size, &request.page_token)?;
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
    let page = PageRequest::parse(request.page_size, &request.page_token)?;
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
    let page = PageRequest::parse(request.page_size, &request.page_token)?;
    let mut v = Validator::new();
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

fn outcome_to_proto(outcome: ApplyOutcome) -> i32 {
    match outcome {
        ApplyOutcome::Applied => pb::ApplyOutcome::Applied as i32,
        ApplyOutcome::Duplicate => pb::ApplyOutcome::Duplicate as i32,
        ApplyOutcome::Stale => pb::ApplyOutcome::Stale as i32,
    }
}

fn applied(result: MutationResult) -> (Option<pb::Account>, i32, Vec<pb::AccountTransition>) {
    (
        Some(convert::account(result.account)),
        outcome_to_proto(result.outcome),
        result.transitions.iter().map(convert::transition).collect(),
    )
}

fn activity_type_ok(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_ACTIVITY_TYPE
        && value.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' || b == b'.'
        })
}

/// Checks one score delivery; violations are named under `prefix` (empty
/// for the unary call, `items[i].` in a batch).
fn score_delivery(
    request: &pb::ApplyEngagementScoreRequest,
    prefix: &str,
) -> Result<(String, ScoreDelivery), Vec<FieldViolation>> {
    let field = |name: &str| format!("{prefix}{name}");
    let mut v = Validator::new();
    let event_id = v.required_text(&field("event_id"), &request.event_id, MAX_EVENT_ID);
    let account_id = v.required_id(&field("account_id"), &request.account_id);
    if request.sequence <= 0 {
        v.add(field("sequence"), "must be greater than 0");
    }
    v.optional_time(&field("compute_time"), request.compute_time.as_ref());
    let engagement_score = v.finite(&field("engagement_score"), request.engagement_score);
    let average = v.finite(
        &field("average_engagement_score"),
        request.average_engagement_score,
    );
    let intent_score = v.finite(&field("intent_score"), request.intent_score);
    if request.contacts.len() > MAX_CONTACTS_PER_DELIVERY {
        v.add(
            field("contacts"),
            format!("at most {MAX_CONTACTS_PER_DELIVERY} per delivery"),
        );
    }
    let mut contacts = Vec::with_capacity(request.contacts.len());
    let mut seen = std::collections::HashSet::new();
    for (i, c) in request.contacts.iter().enumerate() {
        let contact_id = v.required_id(&field(&format!("contacts[{i}].contact_id")), &c.contact_id);
        // One entry per contact: two would each be judged against the stored
        // stage, and the history would show moves that never happened.
        if !contact_id.is_empty() && !seen.insert(contact_id.clone()) {
            v.add(
                field(&format!("contacts[{i}].contact_id")),
                "repeats a contact of an earlier entry; send one entry per contact",
            );
        }
        let score = v.finite(
            &field(&format!("contacts[{i}].engagement_score")),
            c.engagement_score,
        );
        for (j, t) in c.new_activity_types.iter().enumerate() {
            if !activity_type_ok(t) {
                v.add(
                    field(&format!("contacts[{i}].new_activity_types[{j}]")),
                    "must be 1 to 64 characters of a-z, 0-9, '_', '-' or '.'",
                );
            }
        }
        contacts.push(ContactEngagement {
            contact_id,
            engagement_score: score,
            new_activity_types: c.new_activity_types.clone(),
        });
    }
    match v.finish() {
        Ok(()) => Ok((
            account_id,
            ScoreDelivery {
                event_id,
                sequence: request.sequence,
                engagement_score,
                average_engagement_score: average,
                intent_score,
                contacts,
            },
        )),
        Err(ServiceError::InvalidArgument(violations)) => Err(violations),
        Err(_) => Err(vec![FieldViolation::new(field("event_id"), "is invalid")]),
    }
}

fn score_outcome(applied: &ScoreApplied) -> (i32, Vec<pb::AccountTransition>) {
    match applied {
        ScoreApplied::NotFound => (pb::ApplyOutcome::NotFound as i32, Vec::new()),
        ScoreApplied::Duplicate => (pb::ApplyOutcome::Duplicate as i32, Vec::new()),
        ScoreApplied::Stale => (pb::ApplyOutcome::Stale as i32, Vec::new()),
        ScoreApplied::Applied { transitions } => (
            pb::ApplyOutcome::Applied as i32,
            transitions.iter().map(convert::transition).collect(),
        ),
        ScoreApplied::Refused { .. } => (pb::ApplyOutcome::Rejected as i32, Vec::new()),
    }
}

pub(super) async fn apply_engagement_score(
    api: &LifecycleApi,
    request: Request<pb::ApplyEngagementScoreRequest>,
) -> Result<Response<pb::ApplyEngagementScoreResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let delivery = score_delivery(request.get_ref(), "").map_err(ServiceError::InvalidArgument)?;
    let account_id = delivery.0.clone();
    let mut results = api
        .repository
        .apply_scores(&context.tenant, &context.actor, &[delivery], true)
        .await?;
    let result = results
        .pop()
        .ok_or_else(|| ServiceError::internal(anyhow::anyhow!("no result for the delivery")))?;
    match &result.applied {
        ScoreApplied::NotFound => {
            return Err(ServiceError::not_found("account", &account_id).into());
        }
        ScoreApplied::Refused { reason } => {
            return Err(ServiceError::precondition(
                "SCORE_SEQUENCE",
                format!("account/{account_id}"),
                reason.clone(),
            )
            .into());
        }
        _ => {}
    }
    let (outcome, transitions) = score_outcome(&result.applied);
    Ok(Response::new(pb::ApplyEngagementScoreResponse {
        account: result.account.map(convert::account),
        outcome,
        transitions,
    }))
}

pub(super) async fn apply_engagement_scores(
    api: &LifecycleApi,
    request: Request<pb::ApplyEngagementScoresRequest>,
) -> Result<Response<pb::ApplyEngagementScoresResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let items = &request.get_ref().items;
    if items.is_empty() || items.len() > MAX_SCORE_ITEMS {
        return Err(ServiceError::invalid(
            "items",
            format!("must hold 1 to {MAX_SCORE_ITEMS} deliveries"),
        )
        .into());
    }
    let mut deliveries = Vec::with_capacity(items.len());
    // Where each item's result comes from: its index among the deliveries,
    // or its violations.
    let mut slots: Vec<Result<usize, Vec<FieldViolation>>> = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashSet::new();
    for (i, item) in items.iter().enumerate() {
        match score_delivery(item, &format!("items[{i}].")) {
            Ok(delivery) => {
                // Two deliveries of one account in a call would have no order.
                if !seen.insert(delivery.0.clone()) {
                    return Err(ServiceError::invalid(
                        format!("items[{i}].account_id"),
                        "repeats an account of an earlier item; send one delivery per account",
                    )
                    .into());
                }
                slots.push(Ok(deliveries.len()));
                deliveries.push(delivery);
            }
            Err(violations) => slots.push(Err(violations)),
        }
    }
    let applied = if deliveries.is_empty() {
        Vec::new()
    } else {
        api.repository
            .apply_scores(&context.tenant, &context.actor, &deliveries, false)
            .await?
    };
    let results = items
        .iter()
        .zip(slots)
        .enumerate()
        .map(|(i, (item, slot))| match slot {
            Ok(index) => {
                let (outcome, transitions) = score_outcome(&applied[index].applied);
                // A refusal is about the item's sequence, the only rule a
                // score delivery can break once it is well-formed.
                let violations = match &applied[index].applied {
                    ScoreApplied::Refused { reason } => {
                        vec![cascade_proto::common::v1::FieldViolation {
                            field: format!("items[{i}].sequence"),
                            description: reason.clone(),
                        }]
                    }
                    _ => Vec::new(),
                };
                pb::ApplyEngagementScoreResult {
                    account_id: item.account_id.clone(),
                    outcome,
                    transitions,
                    violations,
                }
            }
            Err(violations) => pb::ApplyEngagementScoreResult {
                account_id: item.account_id.clone(),
                outcome: pb::ApplyOutcome::Rejected as i32,
                transitions: Vec::new(),
                violations: violations
                    .into_iter()
                    .map(|v| cascade_proto::common::v1::FieldViolation {
                        field: v.field,
                        description: v.description,
                    })
                    .collect(),
            },
        })
        .collect();
    Ok(Response::new(pb::ApplyEngagementScoresResponse { results }))
}

pub(super) async fn apply_opportunity_event(
    api: &LifecycleApi,
    request: Request<pb::ApplyOpportunityEventRequest>,
) -> Result<Response<pb::ApplyOpportunityEventResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let mut v = Validator::new();
    let event_id = v.required_text("event_id", &request.event_id, MAX_EVENT_ID);
    let account_id = v.required_id("account_id", &request.account_id);
    let opportunity_id = v.required_id("opportunity_id", &request.opportunity_id);
    let kind = match pb::OpportunityEventType::try_from(request.r#type) {
        Ok(pb::OpportunityEventType::Opened) => Some(OpportunityEventKind::Opened),
        Ok(pb::OpportunityEventType::Won) => Some(OpportunityEventKind::Won),
        Ok(pb::OpportunityEventType::Lost) => Some(OpportunityEventKind::Lost),
        _ => {
            v.add("type", "must be OPENED, WON or LOST");
            None
        }
    };
    if request.other_open_opportunities < 0 {
        v.add("other_open_opportunities", "must not be negative");
    }
    v.optional_time("occur_time", request.occur_time.as_ref());
    if request.buying_group_contact_ids.len() > MAX_CONTACTS_PER_DELIVERY {
        v.add(
            "buying_group_contact_ids",
            format!("at most {MAX_CONTACTS_PER_DELIVERY}"),
        );
    }
    let buying_group: Vec<String> = request
        .buying_group_contact_ids
        .iter()
        .enumerate()
        .map(|(i, id)| v.required_id(&format!("buying_group_contact_ids[{i}]"), id))
        .collect();
    v.finish()?;
    let result = api
        .repository
        .mutate(
            &context.tenant,
            &context.actor,
            &account_id,
            Mutation::Opportunity {
                event_id,
                opportunity_id,
                kind: kind.unwrap_or(OpportunityEventKind::Opened),
                buying_group,
                other_open: u32::try_from(request.other_open_opportunities).unwrap_or(0),
            },
        )
        .await?;
    let (account, outcome, transitions) = applied(result);
    Ok(Response::new(pb::ApplyOpportunityEventResponse {
        account,
        outcome,
        transitions,
    }))
}

pub(super) async fn get_funnel_report(
    api: &LifecycleApi,
    request: Request<pb::GetFunnelReportRequest>,
) -> Result<Response<pb::GetFunnelReportResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let mut v = Validator::new();
    let start = v.required_time("start_time", request.start_time.as_ref());
    let end = v.required_time("end_time", request.end_time.as_ref());
    if let (Some(start), Some(end)) = (start, end)
        && start >= end
    {
        v.add("end_time", "must be after start_time");
    }
    v.finish()?;
    let (start, end) = (
        start.map_or(0, |t| t.timestamp_millis()),
        end.map_or(0, |t| t.timestamp_millis()),
    );
    let rows = api.repository.funnel(&context.tenant, start, end).await?;
    let rate = |part: i64, whole: i64| {
        if whole > 0 {
            part as f64 / whole as f64
        } else {
            0.0
        }
    };
    let qualified_to_pipeline_rate = rows
        .iter()
        .find(|r| r.stage == AccountStage::Qualified)
        .map_or(0.0, |r| rate(r.to_pipeline, r.entered));
    let stages = rows
        .into_iter()
        .map(|r| pb::FunnelStage {
            stage: r.stage.to_proto(),
            entered: r.entered,
            accounts_entered: r.accounts,
            moved_forward: r.moved_forward,
            moved_back: r.moved_back,
            stayed: r.stayed,
            conversion_rate: rate(r.moved_forward, r.entered),
            median_time_in_stage: r.median_ms.map(|ms| prost_types::Duration {
                seconds: ms.div_euclid(1000),
                nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
            }),
        })
        .collect();
    Ok(Response::new(pb::GetFunnelReportResponse {
        stages,
        qualified_to_pipeline_rate,
    }))
}

fn settings_to_proto(stored: crate::storage::StoredSettings) -> pb::LifecycleSettings {
    let s = stored.settings;
    pb::LifecycleSettings {
        version: s.version,
        engaged_threshold: s.engaged_threshold,
        prioritized_threshold: s.prioritized_threshold,
        qualified_stage_enabled: s.qualified_stage_enabled,
        on_lost_action: s.on_lost_action.to_proto(),
        hand_raise_activity_types: s.hand_raise_activity_types,
        renotify_on_hand_raise: s.renotify_on_hand_raise,
        webhook_url: s.webhook_url.unwrap_or_default(),
        // Write-only: never returned.
        webhook_secret: String::new(),
        webhook_secret_set: s.webhook_secret.is_some(),
        update_time: stored
            .updated_at_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(to_timestamp),
        updated_by: stored.updated_by.unwrap_or_default(),
    }
}

pub(super) async fn get_lifecycle_settings(
    api: &LifecycleApi,
    request: Request<pb::GetLifecycleSettingsRequest>,
) -> Result<Response<pb::GetLifecycleSettingsResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let version = request.get_ref().version;
    if version < 0 {
        return Err(ServiceError::invalid("version", "must not be negative").into());
    }
    let stored = api
        .repository
        .get_settings(&context.tenant, (version > 0).then_some(version))
        .await?;
    Ok(Response::new(pb::GetLifecycleSettingsResponse {
        settings: Some(settings_to_proto(stored)),
    }))
}

/// Validates the masked fields and returns the change to apply.
fn settings_change(
    input: &pb::LifecycleSettings,
    paths: &[(usize, String)],
) -> ServiceResult<impl FnOnce(&mut LifecycleSettings) -> ServiceResult<()> + use<>> {
    let mut v = Validator::new();
    let mut engaged = None;
    let mut prioritized = None;
    let mut qualified = None;
    let mut on_lost = None;
    let mut hand_raise = None;
    let mut renotify = None;
    let mut webhook_url = None;
    let mut webhook_secret = None;
    for (i, path) in paths {
        match path.as_str() {
            "engaged_threshold" => {
                engaged = Some(v.finite("settings.engaged_threshold", input.engaged_threshold));
            }
            "prioritized_threshold" => {
                prioritized = Some(v.finite(
                    "settings.prioritized_threshold",
                    input.prioritized_threshold,
                ));
            }
            "qualified_stage_enabled" => qualified = Some(input.qualified_stage_enabled),
            "on_lost_action" => match OnLostAction::from_proto(input.on_lost_action) {
                Some(action) => on_lost = Some(action),
                None => v.add(
                    "settings.on_lost_action",
                    "must be NURTURE, DISQUALIFY or STAY",
                ),
            },
            "hand_raise_activity_types" => {
                let types = &input.hand_raise_activity_types;
                if types.len() > MAX_HAND_RAISE_TYPES {
                    v.add(
                        "settings.hand_raise_activity_types",
                        format!("at most {MAX_HAND_RAISE_TYPES}"),
                    );
                }
                for (i, t) in types.iter().enumerate() {
                    if !activity_type_ok(t) {
                        v.add(
                            format!("settings.hand_raise_activity_types[{i}]"),
                            "must be 1 to 64 characters of a-z, 0-9, '_', '-' or '.'",
                        );
                    }
                }
                let mut unique = types.clone();
                unique.sort();
                unique.dedup();
                hand_raise = Some(unique);
            }
            "renotify_on_hand_raise" => renotify = Some(input.renotify_on_hand_raise),
            "webhook_url" => {
                let url = input.webhook_url.trim();
                if url.is_empty() {
                    webhook_url = Some(None);
                } else if url.len() > 2048
                    || !(url.starts_with("https://") || url.starts_with("http://"))
                    || reqwest::Url::parse(url).is_err()
                {
                    v.add(
                        "settings.webhook_url",
                        "must be an http:// or https:// URL of at most 2048 characters",
                    );
                } else {
                    webhook_url = Some(Some(url.to_owned()));
                }
            }
            "webhook_secret" => {
                let secret = &input.webhook_secret;
                if secret.len() > 512 {
                    v.add("settings.webhook_secret", "must be at most 512 characters");
                }
                webhook_secret = Some((!secret.is_empty()).then(|| secret.clone()));
            }
            other => v.add(
                mask_path(*i),
                not_writable(
                    other,
                    &[
                        "engaged_threshold",
                        "prioritized_threshold",
                        "qualified_stage_enabled",
                        "on_lost_action",
                        "hand_raise_activity_types",
                        "renotify_on_hand_raise",
                        "webhook_url",
                        "webhook_secret",
                    ],
                ),
            ),
        }
    }
    v.finish()?;
    Ok(move |s: &mut LifecycleSettings| {
        if let Some(x) = engaged {
            s.engaged_threshold = x;
        }
        if let Some(x) = prioritized {
            s.prioritized_threshold = x;
        }
        if let Some(x) = qualified {
            s.qualified_stage_enabled = x;
        }
        if let Some(x) = on_lost {
            s.on_lost_action = x;
        }
        if let Some(x) = hand_raise {
            s.hand_raise_activity_types = x;
        }
        if let Some(x) = renotify {
            s.renotify_on_hand_raise = x;
        }
        if let Some(x) = webhook_url {
            s.webhook_url = x;
        }
        if let Some(x) = webhook_secret {
            s.webhook_secret = x;
        }
        // The thresholds are checked together, against the values in force.
        let mut v = Validator::new();
        v.thresholds("settings.", s.engaged_threshold, s.prioritized_threshold);
        v.finish()
    })
}

pub(super) async fn update_lifecycle_settings(
    api: &LifecycleApi,
    request: Request<pb::UpdateLifecycleSettingsRequest>,
) -> Result<Response<pb::UpdateLifecycleSettingsResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let paths = mask_paths(request.update_mask.as_ref())?;
    let input = request.settings.unwrap_or_default();
    let change = settings_change(&input, &paths)?;
    let stored = api
        .repository
        .update_settings(&context.tenant, &context.actor, change)
        .await?;
    Ok(Response::new(pb::UpdateLifecycleSettingsResponse {
        settings: Some(settings_to_proto(stored)),
    }))
}

pub(super) async fn watch_account_events(
    api: &LifecycleApi,
    request: Request<pb::WatchAccountEventsRequest>,
) -> Result<Response<WatchStream>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let mut v = Validator::new();
    let mut stages = Vec::new();
    for (i, stage) in request.stages.iter().enumerate() {
        match AccountStage::from_proto(*stage) {
            Some(stage) => stages.push(stage.as_str().to_owned()),
            None => v.add(format!("stages[{i}]"), "must be an account stage"),
        }
    }
    let account_id = (!request.account_id.trim().is_empty())
        .then(|| v.required_id("account_id", &request.account_id));
    let cursor = request.cursor.trim();
    let after = if cursor.is_empty() {
        None
    } else {
        match cursor.parse::<i64>() {
            Ok(seq) if seq >= 0 => Some(seq),
            _ => {
                v.add("cursor", "is not a cursor returned by this stream");
                None
            }
        }
    };
    v.finish()?;
    let repository = api.repository.clone();
    let tenant = context.tenant.clone();
    let mut after = match after {
        Some(seq) => seq,
        None => repository.latest_event_seq(&tenant).await?,
    };
    let written = repository.events_written();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // Registered before reading, so a commit in between still wakes us.
            let notified = written.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let events = match repository.events_after(&tenant, after, 256).await {
                Ok(events) => events,
                Err(error) => {
                    let _ = tx.send(Err(Status::from(error))).await;
                    return;
                }
            };
            let full = events.len() == 256;
            for event in events {
                after = event.seq;
                if account_id
                    .as_ref()
                    .is_some_and(|id| *id != event.account_id)
                {
                    continue;
                }
                if let Some(stage) = &event.to_stage
                    && !stages.is_empty()
                    && !stages.contains(stage)
                {
                    continue;
                }
                let Ok(mut message) =
                    pb::WatchAccountEventsResponse::decode(event.payload.as_slice())
                else {
                    tracing::error!(seq = event.seq, "unreadable watch event skipped");
                    continue;
                };
                message.cursor = event.seq.to_string();
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(WATCH_POLL) => {}
                () = tx.closed() => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Response::new(Box::pin(stream)))
}
