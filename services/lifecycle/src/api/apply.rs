//! Deliveries from scoring and opportunity: Apply* handlers.

use cascade_chassis::error::FieldViolation;
use cascade_chassis::validate::Validator;
use cascade_chassis::{RequestContext, ServiceError};
use cascade_domain::{OpportunityKind, valid_activity_type};
use cascade_proto::lifecycle::v1 as pb;
use tonic::{Request, Response, Status};

use super::LifecycleApi;
use crate::convert;
use crate::domain::scores::{ContactEngagement, EngagementAdded, ScoreDelivery};
use crate::storage::{ApplyOutcome, Mutation, MutationResult, OpportunityEventKind, ScoreApplied};

const MAX_EVENT_ID: usize = 128;
const MAX_CONTACTS_PER_DELIVERY: usize = 1000;
/// Scoring's batches in one delivery (a run of its outbox, 256 at most).
const MAX_BATCHES_PER_DELIVERY: usize = 1000;
/// As long as CloseOpportunityLost takes it, and a person's reason here.
const MAX_LOST_REASON: usize = 1000;
/// Deliveries per ApplyEngagementScores call.
const MAX_SCORE_ITEMS: usize = 500;

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
    let computed = v
        .optional_time(&field("compute_time"), request.compute_time.as_ref())
        .unwrap_or_else(cascade_chassis::time::now);
    let half_life = v.finite(&field("decay_half_life_days"), request.decay_half_life_days);
    if half_life < 0.0 {
        v.add(
            field("decay_half_life_days"),
            "must be 0 (no decay) or more",
        );
    }
    let engagement_score = v.finite(&field("engagement_score"), request.engagement_score);
    let average = v.finite(
        &field("average_engagement_score"),
        request.average_engagement_score,
    );
    let intent_score = v.finite(&field("intent_score"), request.intent_score);
    let added_total = request
        .engagement_added_total
        .map(|total| v.finite(&field("engagement_added_total"), total));
    let new_engagement = request.new_engagement.as_ref().map(|added| {
        if added.batches.len() > MAX_BATCHES_PER_DELIVERY {
            v.add(
                field("new_engagement.batches"),
                format!("at most {MAX_BATCHES_PER_DELIVERY} per delivery"),
            );
            return Vec::new();
        }
        let mut batches = Vec::with_capacity(added.batches.len());
        let mut seen = std::collections::HashSet::with_capacity(added.batches.len());
        let delivery_day = cascade_domain::decay::day_of(computed.timestamp_millis());
        for (i, batch) in added.batches.iter().enumerate() {
            let at = |name: &str| field(&format!("new_engagement.batches[{i}].{name}"));
            if batch.sequence <= 0 || batch.sequence > request.sequence {
                v.add(
                    at("sequence"),
                    "must be greater than 0 and at most the delivery's sequence",
                );
            } else if !seen.insert(batch.sequence) {
                // Counted twice otherwise.
                v.add(at("sequence"), "repeats an earlier batch's sequence");
            }
            let points = v.finite(&at("engagement_score"), batch.engagement_score);
            let day = v
                .required_time(&at("compute_time"), batch.compute_time.as_ref())
                .map_or(0, |t| cascade_domain::decay::day_of(t.timestamp_millis()));
            // A batch is scored before the totals that hold it; one of a
            // later day (another replica's clock past midnight) is taken as
            // of the delivery's day, so it escapes no decay.
            let day = day.min(delivery_day);
            batches.push(EngagementAdded {
                sequence: batch.sequence,
                points,
                day,
            });
        }
        batches
    });
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
            if !valid_activity_type(t) {
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
                day: cascade_domain::decay::day_of(computed.timestamp_millis()),
                decay_half_life_days: half_life,
                new_engagement,
                added_total,
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
        Ok(pb::OpportunityEventType::ContractsEnded) => Some(OpportunityEventKind::ContractsEnded),
        _ => {
            v.add("type", "must be OPENED, WON, LOST or CONTRACTS_ENDED");
            None
        }
    };
    let opportunity_kind = OpportunityKind::from_wire(request.opportunity_kind);
    if opportunity_kind.is_none() {
        v.add(
            "opportunity_kind",
            "must be NEW_BUSINESS, RENEWAL or UPGRADE (UNSPECIFIED reads as NEW_BUSINESS)",
        );
    }
    if request.other_open_opportunities < 0 {
        v.add("other_open_opportunities", "must not be negative");
    }
    if request.opportunity_version < 0 {
        v.add("opportunity_version", "must not be negative");
    }
    let occurred = v.optional_time("occur_time", request.occur_time.as_ref());
    let reason = v.optional_prose("lost_reason", &request.lost_reason, MAX_LOST_REASON);
    if reason.is_some() && kind.is_some_and(|k| k != OpportunityEventKind::Lost) {
        v.add("lost_reason", "is given only with type LOST");
    }
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
                opportunity_kind: opportunity_kind.unwrap_or(OpportunityKind::NewBusiness),
                buying_group,
                other_open: u32::try_from(request.other_open_opportunities).unwrap_or(0),
                occurred_at_ms: occurred.map(|at| at.timestamp_millis()),
                reason,
                version: request.opportunity_version,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch dated after its delivery (another scoring replica's clock
    /// past midnight) is taken as of the delivery's day: it escapes no decay,
    /// and the delivery is not refused (refused deliveries are dropped).
    #[test]
    fn a_batch_of_a_later_day_is_taken_as_of_the_delivery() {
        let now = cascade_chassis::time::now();
        let request = pb::ApplyEngagementScoreRequest {
            event_id: "e".into(),
            account_id: cascade_domain::ids::new_id(),
            sequence: 3,
            compute_time: Some(cascade_chassis::time::to_timestamp(now)),
            new_engagement: Some(pb::NewEngagement {
                batches: vec![pb::EngagementAdded {
                    sequence: 3,
                    engagement_score: 5.0,
                    compute_time: Some(cascade_chassis::time::to_timestamp(
                        now + chrono::Duration::days(1),
                    )),
                }],
            }),
            ..Default::default()
        };
        let (_, delivery) = score_delivery(&request, "").expect("accepted");
        let today = cascade_domain::decay::day_of(now.timestamp_millis());
        assert_eq!(
            delivery.new_engagement,
            Some(vec![EngagementAdded {
                sequence: 3,
                points: 5.0,
                day: today
            }])
        );
    }
}
