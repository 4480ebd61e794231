//! Checking and recording activities: one item, a batch or a stream; each
//! item's result, and the reasons an item is refused.

use std::collections::HashMap;

use cascade_chassis::validate::Validator;
use cascade_chassis::{FieldViolation, RequestContext, ServiceError, ServiceResult};
use cascade_domain::valid_activity_type;
use cascade_proto::common::v1::FieldViolation as PbViolation;
use cascade_proto::scoring::v1 as pb;

use crate::directory::{Checked, Person};
use crate::domain;
use crate::storage::{NewActivity, Recorded};

use super::{MAX_BATCH, ScoringApi};

/// How far in the future an activity's time may be (clock skew).
const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

struct Pending {
    event_id: String,
    activity_type: String,
    occurred_at_ms: i64,
}

/// Checks one activity; violations name the activity's own fields (the
/// caller puts them under the item's path, only when there are any: no
/// field name is built for a valid activity).
fn check(activity: &pb::Activity) -> Result<(Pending, Person), Vec<FieldViolation>> {
    let mut v = Validator::new();
    let event_id = v.required_text("event_id", &activity.event_id, 128);
    let activity_type = activity.activity_type.trim().to_owned();
    if activity_type.is_empty() {
        v.add("activity_type", "is required");
    } else if !valid_activity_type(&activity_type) {
        v.add(
            "activity_type",
            "must be 1 to 64 characters of a-z, 0-9, '_', '-' or '.'",
        );
    }
    let occurred = v.required_time("occur_time", activity.occur_time.as_ref());
    if let Some(time) = occurred
        && time.timestamp_millis() > cascade_chassis::time::now().timestamp_millis() + MAX_FUTURE_MS
    {
        v.add(
            "occur_time",
            "must not be more than 5 minutes in the future",
        );
    }
    let has_account = !activity.account_id.trim().is_empty();
    let has_email = !activity.contact_email.trim().is_empty();
    let who = match (has_account, has_email) {
        (true, false) => {
            let account_id = v.required_id("account_id", &activity.account_id);
            let contact_id = (!activity.contact_id.trim().is_empty())
                .then(|| v.required_id("contact_id", &activity.contact_id));
            Some(Person::Ids {
                account_id,
                contact_id,
            })
        }
        (false, true) => {
            if !activity.contact_id.trim().is_empty() {
                v.add(
                    "contact_id",
                    "give either contact_email or account_id with contact_id, not both",
                );
            }
            v.optional_email("contact_email", &activity.contact_email)
                .map(Person::Email)
        }
        (true, true) => {
            v.add(
                "contact_email",
                "give either account_id (with an optional contact_id) or contact_email, not both",
            );
            None
        }
        (false, false) => {
            v.add("account_id", "is required (or give contact_email)");
            None
        }
    };
    match (v.finish(), who, occurred) {
        (Ok(()), Some(who), Some(time)) => Ok((
            Pending {
                event_id,
                activity_type,
                occurred_at_ms: time.timestamp_millis(),
            },
            who,
        )),
        (Err(ServiceError::InvalidArgument(violations)), _, _) => Err(violations),
        _ => Err(vec![FieldViolation::new("activity", "is invalid")]),
    }
}

/// `violations` of an activity's fields, named under the item's `prefix`.
fn under(prefix: &str, violations: Vec<FieldViolation>) -> Vec<FieldViolation> {
    violations
        .into_iter()
        .map(|v| FieldViolation::new(format!("{prefix}{}", v.field), v.description))
        .collect()
}

/// The outcome of one submitted activity.
pub(super) enum ItemOutcome {
    /// Bad input: the activity itself is malformed, names a contact under
    /// an account it does not belong to, or reuses the event id of another
    /// activity.
    Rejected(Vec<FieldViolation>),
    /// An id or email that names nothing in the tenant.
    NotFound(Vec<FieldViolation>),
    /// A contact no longer at the company (DeactivateContact): REJECTED in a
    /// batch, FAILED_PRECONDITION alone.
    Inactive(Vec<FieldViolation>),
    Done(Recorded),
}

impl ScoringApi {
    /// Validates, checks and records a batch; one outcome per item.
    pub(super) async fn process(
        &self,
        context: &RequestContext,
        activities: &[pb::Activity],
        prefix: impl Fn(usize) -> String + Send + Sync,
    ) -> ServiceResult<Vec<ItemOutcome>> {
        let mut outcomes: Vec<Option<ItemOutcome>> = (0..activities.len()).map(|_| None).collect();
        let mut pending: Vec<(usize, Pending)> = Vec::new();
        // Who each pending activity is about, apart: the directory takes them.
        let mut people: Vec<Person> = Vec::new();
        for (i, activity) in activities.iter().enumerate() {
            match check(activity) {
                Ok((item, who)) => {
                    pending.push((i, item));
                    people.push(who);
                }
                Err(violations) => {
                    outcomes[i] = Some(ItemOutcome::Rejected(under(&prefix(i), violations)));
                }
            }
        }
        // Announced before the check: a call that waits for lifecycle (new
        // people) is waited for by the group gathering meanwhile.
        let announced = (!pending.is_empty()).then(|| self.repository.expect(pending.len()));
        // A repeat of an activity recorded before (or a reuse of its id) is
        // answered from what it was recorded for: checking an email in it
        // again would have lifecycle create a contact for a person new at a
        // known domain, for an activity that changes nothing. Looked up only
        // for emails the directory would ask about.
        let creating: Vec<&str> = pending
            .iter()
            .zip(&people)
            .filter(|(_, who)| self.directory.would_create(context, who))
            .map(|((_, item), _)| item.event_id.as_str())
            .collect();
        let recorded_before = if creating.is_empty() {
            HashMap::new()
        } else {
            self.repository
                .people_of_events(&context.tenant, &creating)
                .await?
        };
        // Likewise a repeat of an earlier item of this batch: it is
        // answered as that item is (its person is not checked, so a new
        // email in it creates no one).
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        let repeat_of: Vec<Option<usize>> = pending
            .iter()
            .enumerate()
            .map(|(n, (_, item))| {
                let first = *first_of.entry(item.event_id.as_str()).or_insert(n);
                (first != n).then_some(first)
            })
            .collect();
        let people: Vec<Person> = pending
            .iter()
            .zip(people)
            .zip(&repeat_of)
            .filter(|(((_, item), _), repeat)| {
                repeat.is_none() && !recorded_before.contains_key(&item.event_id)
            })
            .map(|((_, who), _)| who)
            .collect();
        let mut resolutions = if people.is_empty() {
            Vec::new()
        } else {
            self.directory.check(context, people).await?
        }
        .into_iter();
        let mut checked: Vec<Checked> = Vec::with_capacity(pending.len());
        for ((_, item), repeat) in pending.iter().zip(&repeat_of) {
            let resolution = match (recorded_before.get(&item.event_id), repeat) {
                (Some((account_id, contact_id)), _) => Checked::Found {
                    account_id: account_id.clone(),
                    contact_id: contact_id.clone(),
                },
                (None, Some(first)) => match &checked[*first] {
                    found @ Checked::Found { .. } => found.clone(),
                    _ => Checked::Mismatch {
                        field: "event_id",
                        description: format!(
                            "repeats the event id of {}event_id, which was refused",
                            prefix(pending[*first].0)
                        ),
                    },
                },
                // The directory answers every person it is given.
                (None, None) => resolutions.next().ok_or_else(|| {
                    ServiceError::internal(anyhow::anyhow!("a person left unchecked"))
                })?,
            };
            checked.push(resolution);
        }
        let resolutions = checked;
        // Positions and activities apart: the activities move into storage
        // without a copy.
        let mut positions: Vec<usize> = Vec::with_capacity(pending.len());
        let mut items: Vec<NewActivity> = Vec::with_capacity(pending.len());
        for ((i, item), resolution) in pending.into_iter().zip(resolutions) {
            let at = |field: &str| format!("{}{field}", prefix(i));
            match resolution {
                Checked::Found {
                    account_id,
                    contact_id,
                } => {
                    positions.push(i);
                    items.push(NewActivity {
                        event_id: item.event_id,
                        activity_type: item.activity_type,
                        occurred_at_ms: item.occurred_at_ms,
                        account_id,
                        contact_id,
                    });
                }
                Checked::NotFound { field, description } => {
                    outcomes[i] = Some(ItemOutcome::NotFound(vec![FieldViolation::new(
                        at(field),
                        description,
                    )]));
                }
                Checked::Mismatch { field, description } => {
                    outcomes[i] = Some(ItemOutcome::Rejected(vec![FieldViolation::new(
                        at(field),
                        description,
                    )]));
                }
                Checked::Inactive { field, .. } => {
                    outcomes[i] = Some(ItemOutcome::Inactive(vec![FieldViolation::new(
                        at(field),
                        domain::INACTIVE_CONTACT,
                    )]));
                }
            }
        }
        let recorded = match announced.filter(|_| !items.is_empty()) {
            Some(announced) => {
                self.repository
                    .record_announced(&context.tenant, items, announced)
                    .await?
            }
            None => Vec::new(),
        };
        for (i, recorded) in positions.into_iter().zip(recorded) {
            outcomes[i] = Some(match &recorded.recorded_as_other {
                Some((kind, at)) => ItemOutcome::Rejected(vec![FieldViolation::new(
                    format!("{}event_id", prefix(i)),
                    domain::event_id_reused(kind, *at),
                )]),
                None => ItemOutcome::Done(recorded),
            });
        }
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(ItemOutcome::Rejected(vec![FieldViolation::new(
                    "activities",
                    "not processed",
                )]))
            })
            .collect())
    }
}

/// Each activity's result, counted in the activities metric once per
/// outcome of the batch (an add per item looked up its attributes each time).
pub(super) fn results_of(
    activities: &[pb::Activity],
    outcomes: Vec<ItemOutcome>,
) -> Vec<pb::ActivityResult> {
    const OUTCOMES: [&str; 5] = ["recorded", "duplicate", "rejected", "not_found", "unknown"];
    let mut counts = [0_u64; OUTCOMES.len()];
    let results = activities
        .iter()
        .zip(outcomes)
        .map(|(activity, outcome)| {
            let result = answer_of(activity, outcome);
            let slot = match pb::ActivityStatus::try_from(result.status) {
                Ok(pb::ActivityStatus::Recorded) => 0,
                Ok(pb::ActivityStatus::Duplicate) => 1,
                Ok(pb::ActivityStatus::Rejected) => 2,
                Ok(pb::ActivityStatus::NotFound) => 3,
                _ => 4,
            };
            counts[slot] += 1;
            result
        })
        .collect();
    let metrics = cascade_chassis::metrics::instruments();
    for (outcome, count) in OUTCOMES.into_iter().zip(counts) {
        metrics.activities(outcome, count);
    }
    results
}

fn answer_of(activity: &pb::Activity, outcome: ItemOutcome) -> pb::ActivityResult {
    match outcome {
        ItemOutcome::Rejected(violations) | ItemOutcome::Inactive(violations) => {
            refused(activity, pb::ActivityStatus::Rejected, violations)
        }
        ItemOutcome::NotFound(violations) => {
            refused(activity, pb::ActivityStatus::NotFound, violations)
        }
        ItemOutcome::Done(recorded) => {
            let status = if recorded.new {
                pb::ActivityStatus::Recorded
            } else {
                pb::ActivityStatus::Duplicate
            };
            pb::ActivityResult {
                event_id: activity.event_id.trim().to_owned(),
                status: status as i32,
                points: f64::from(recorded.counted_points),
                account_id: recorded.account_id,
                contact_id: recorded.contact_id.unwrap_or_default(),
                violations: Vec::new(),
            }
        }
    }
}

pub(super) fn batch_prefix(i: usize) -> String {
    format!("activities[{i}].")
}

fn refused(
    activity: &pb::Activity,
    status: pb::ActivityStatus,
    violations: Vec<FieldViolation>,
) -> pb::ActivityResult {
    pb::ActivityResult {
        event_id: activity.event_id.trim().to_owned(),
        status: status as i32,
        violations: violations
            .into_iter()
            .map(|v| PbViolation {
                field: v.field,
                description: v.description,
            })
            .collect(),
        ..Default::default()
    }
}

pub(super) fn check_batch_size(n: usize, field: &str) -> ServiceResult<()> {
    if n == 0 {
        return Err(ServiceError::invalid(
            field,
            "must contain at least one activity",
        ));
    }
    if n > MAX_BATCH {
        return Err(ServiceError::invalid(
            field,
            format!("at most {MAX_BATCH} activities (got {n})"),
        ));
    }
    Ok(())
}
