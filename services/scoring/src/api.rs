//! gRPC handlers of the scoring service: validate and translate requests,
//! check who activities name (the directory, backed by lifecycle), call the
//! repository.

use cascade_proto::common::v1::FieldViolation as PbViolation;
use cascade_proto::lifecycle::v1 as lifecycle;
use cascade_proto::scoring::v1 as pb;
use cascade_proto::scoring::v1::scoring_service_server::ScoringService;
use cascade_shared::client::{
    CALL_DEADLINE, LifecycleClient, outgoing_for, peer_failure, with_deadline,
};
use cascade_shared::limit::TenantRateLimiter;
use cascade_shared::page::PageRequest;
use cascade_shared::settings::LifecycleClientSettings;
use cascade_shared::time::to_timestamp;
use cascade_shared::validate::Validator;
use cascade_shared::{FieldViolation, RequestContext, ServiceError, ServiceResult};
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::directory::{Checked, Directory, Person};
use crate::domain::simulate::Thresholds;
use crate::domain::{self, ScoringModel, ScoringRule};
use crate::storage::{NewActivity, Recorded, Repository, Totals};

/// Largest batch (RecordActivities) or stream chunk (StreamActivities).
pub const MAX_BATCH: usize = cascade_shared::limit::LARGEST_BATCH;
/// How far in the future an activity's time may be (clock skew).
const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

pub struct ScoringApi {
    repository: Repository,
    lifecycle: LifecycleClient,
    directory: Directory,
    ingest_limit: TenantRateLimiter,
}

impl ScoringApi {
    pub fn new(
        repository: Repository,
        lifecycle: LifecycleClient,
        directory_settings: &LifecycleClientSettings,
        ingest_limit: TenantRateLimiter,
    ) -> Self {
        Self {
            repository,
            directory: Directory::new(lifecycle.clone(), directory_settings),
            lifecycle,
            ingest_limit,
        }
    }
}

struct Pending {
    event_id: String,
    activity_type: String,
    occurred_at_ms: i64,
    who: Person,
}

/// Checks one activity; violations are named under `prefix`.
fn check(activity: &pb::Activity, prefix: &str) -> Result<Pending, Vec<FieldViolation>> {
    let mut v = Validator::new();
    let field = |name: &str| format!("{prefix}{name}");
    let event_id = v.required_text(&field("event_id"), &activity.event_id, 128);
    let activity_type = activity.activity_type.trim().to_owned();
    if !domain::valid_activity_type(&activity_type) {
        v.add(
            field("activity_type"),
            "is required: 1 to 64 characters of a-z, 0-9, '_', '-' or '.'",
        );
    }
    let occurred = v.required_time(&field("occur_time"), activity.occur_time.as_ref());
    if let Some(time) = occurred
        && time.timestamp_millis() > cascade_shared::time::now().timestamp_millis() + MAX_FUTURE_MS
    {
        v.add(
            field("occur_time"),
            "must not be more than 5 minutes in the future",
        );
    }
    let has_account = !activity.account_id.trim().is_empty();
    let has_email = !activity.contact_email.trim().is_empty();
    let who = match (has_account, has_email) {
        (true, false) => {
            let account_id = v.required_id(&field("account_id"), &activity.account_id);
            let contact_id = (!activity.contact_id.trim().is_empty())
                .then(|| v.required_id(&field("contact_id"), &activity.contact_id));
            Some(Person::Ids {
                account_id,
                contact_id,
            })
        }
        (false, true) => {
            if !activity.contact_id.trim().is_empty() {
                v.add(
                    field("contact_id"),
                    "give either contact_email or account_id with contact_id, not both",
                );
            }
            v.optional_email(&field("contact_email"), &activity.contact_email)
                .map(Person::Email)
        }
        (true, true) => {
            v.add(
                field("contact_email"),
                "give either account_id (with an optional contact_id) or contact_email, not both",
            );
            None
        }
        (false, false) => {
            v.add(field("account_id"), "is required (or give contact_email)");
            None
        }
    };
    match (v.finish(), who, occurred) {
        (Ok(()), Some(who), Some(time)) => Ok(Pending {
            event_id,
            activity_type,
            occurred_at_ms: time.timestamp_millis(),
            who,
        }),
        (Err(ServiceError::InvalidArgument(violations)), _, _) => Err(violations),
        _ => Err(vec![FieldViolation::new(field("activity"), "is invalid")]),
    }
}

/// The outcome of one submitted activity.
enum ItemOutcome {
    /// Bad input: the activity itself is malformed, or names a contact under
    /// an account it does not belong to.
    Rejected(Vec<FieldViolation>),
    /// An id or email that names nothing in the tenant.
    NotFound(Vec<FieldViolation>),
    Done {
        account_id: String,
        contact_id: Option<String>,
        recorded: Recorded,
    },
}

impl ScoringApi {
    /// Validates, checks and records a batch; one outcome per item.
    async fn process(
        &self,
        context: &RequestContext,
        activities: &[pb::Activity],
        prefix: fn(usize) -> String,
    ) -> ServiceResult<Vec<ItemOutcome>> {
        let mut outcomes: Vec<Option<ItemOutcome>> = (0..activities.len()).map(|_| None).collect();
        let mut pending: Vec<(usize, Pending)> = Vec::new();
        for (i, activity) in activities.iter().enumerate() {
            match check(activity, &prefix(i)) {
                Ok(item) => pending.push((i, item)),
                Err(violations) => outcomes[i] = Some(ItemOutcome::Rejected(violations)),
            }
        }
        let people: Vec<&Person> = pending.iter().map(|(_, p)| &p.who).collect();
        let resolutions = if people.is_empty() {
            Vec::new()
        } else {
            self.directory.check(context, &people).await?
        };
        let mut ready: Vec<(usize, NewActivity)> = Vec::new();
        for ((i, item), resolution) in pending.into_iter().zip(resolutions) {
            let at = |field: &str| format!("{}{field}", prefix(i));
            match resolution {
                Checked::Found {
                    account_id,
                    contact_id,
                } => ready.push((
                    i,
                    NewActivity {
                        event_id: item.event_id,
                        activity_type: item.activity_type,
                        occurred_at_ms: item.occurred_at_ms,
                        account_id,
                        contact_id,
                    },
                )),
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
            }
        }
        let items: Vec<NewActivity> = ready.iter().map(|(_, a)| a.clone()).collect();
        let recorded = if items.is_empty() {
            Vec::new()
        } else {
            self.repository.record(&context.tenant, &items).await?
        };
        for ((i, item), recorded) in ready.into_iter().zip(recorded) {
            let (account_id, contact_id) = match &recorded {
                Recorded::Duplicate {
                    account_id,
                    contact_id,
                    ..
                } => (account_id.clone(), contact_id.clone()),
                Recorded::New { .. } => (item.account_id, item.contact_id),
            };
            outcomes[i] = Some(ItemOutcome::Done {
                account_id,
                contact_id,
                recorded,
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

fn result_of(activity: &pb::Activity, outcome: ItemOutcome) -> pb::ActivityResult {
    match outcome {
        ItemOutcome::Rejected(violations) => {
            refused(activity, pb::ActivityStatus::Rejected, violations)
        }
        ItemOutcome::NotFound(violations) => {
            refused(activity, pb::ActivityStatus::NotFound, violations)
        }
        ItemOutcome::Done {
            account_id,
            contact_id,
            recorded,
        } => {
            let (status, points) = match recorded {
                Recorded::New { counted_points } => (pb::ActivityStatus::Recorded, counted_points),
                Recorded::Duplicate { counted_points, .. } => {
                    (pb::ActivityStatus::Duplicate, counted_points)
                }
            };
            pb::ActivityResult {
                event_id: activity.event_id.trim().to_owned(),
                status: status as i32,
                points: f64::from(points),
                account_id,
                contact_id: contact_id.unwrap_or_default(),
                violations: Vec::new(),
            }
        }
    }
}

fn batch_prefix(i: usize) -> String {
    format!("activities[{i}].")
}

fn refused(
    activity: &pb::Activity,
    status: pb::ActivityStatus,
    violations: Vec<FieldViolation>,
) -> pb::ActivityResult {
    pb::ActivityResult {
        event_id: activity.event_id.clone(),
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

fn check_batch_size(n: usize, field: &str) -> ServiceResult<()> {
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

fn score_to_proto(account_id: String, totals: &Totals) -> pb::AccountScore {
    pb::AccountScore {
        account_id,
        engagement_score: totals.engagement,
        average_engagement_score: totals.average(),
        engaged_contact_count: totals.engaged_contacts,
        intent_score: totals.intent,
        breakdown: breakdown(totals),
        compute_time: Some(to_timestamp(cascade_shared::time::now())),
    }
}

fn breakdown(totals: &Totals) -> Vec<pb::ActivityTypeScore> {
    totals
        .breakdown
        .iter()
        .map(|(activity_type, (count, points))| pb::ActivityTypeScore {
            activity_type: activity_type.clone(),
            activity_count: *count,
            points: *points,
        })
        .collect()
}

fn model_to_proto(model: ScoringModel) -> pb::ScoringModel {
    pb::ScoringModel {
        version: model.version,
        rules: model
            .rules
            .into_iter()
            .map(|r| pb::ScoringRule {
                activity_type: r.activity_type,
                points: r.points,
                daily_cap_per_contact: r.daily_cap_per_contact,
                first_occurrence_only: r.first_occurrence_only,
            })
            .collect(),
        decay_half_life_days: model.decay_half_life_days,
        intent_activity_types: model.intent_activity_types,
        create_time: model
            .created_at_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(to_timestamp),
        created_by: model.created_by.unwrap_or_default(),
    }
}

fn model_from_proto(model: Option<pb::ScoringModel>) -> ServiceResult<ScoringModel> {
    let Some(model) = model else {
        return Err(ServiceError::invalid("model", "is required"));
    };
    let model = ScoringModel {
        version: 0,
        rules: model
            .rules
            .into_iter()
            .map(|r| ScoringRule {
                activity_type: r.activity_type.trim().to_owned(),
                points: r.points,
                daily_cap_per_contact: r.daily_cap_per_contact,
                first_occurrence_only: r.first_occurrence_only,
            })
            .collect(),
        decay_half_life_days: model.decay_half_life_days,
        intent_activity_types: model
            .intent_activity_types
            .iter()
            .map(|t| t.trim().to_owned())
            .collect(),
        created_at_ms: None,
        created_by: None,
    };
    let problems = domain::check_model(&model);
    if !problems.is_empty() {
        return Err(ServiceError::InvalidArgument(
            problems
                .into_iter()
                .map(|(f, d)| FieldViolation::new(f, d))
                .collect(),
        ));
    }
    Ok(model)
}

#[tonic::async_trait]
impl ScoringService for ScoringApi {
    async fn record_activity(
        &self,
        request: Request<pb::RecordActivityRequest>,
    ) -> Result<Response<pb::RecordActivityResponse>, Status> {
        let context = RequestContext::of(&request)?;
        self.ingest_limit.check(&context.tenant, 1)?;
        let activity = request.into_inner().activity.unwrap_or_default();
        let outcome = self
            .process(&context, std::slice::from_ref(&activity), |_| {
                "activity.".to_owned()
            })
            .await?
            .pop();
        match outcome {
            Some(outcome @ ItemOutcome::Done { .. }) => {
                Ok(Response::new(pb::RecordActivityResponse {
                    result: Some(result_of(&activity, outcome)),
                }))
            }
            Some(ItemOutcome::Rejected(violations)) => {
                Err(ServiceError::InvalidArgument(violations).into())
            }
            Some(ItemOutcome::NotFound(violations)) => {
                let field = violations
                    .first()
                    .map(|v| v.field.as_str())
                    .unwrap_or_default();
                let (resource, id) = if field.ends_with("contact_email") {
                    (
                        "contact",
                        format!(
                            "with email {} (nor an account with its domain)",
                            activity.contact_email.trim()
                        ),
                    )
                } else if field.ends_with("contact_id") {
                    ("contact", activity.contact_id.trim().to_owned())
                } else {
                    ("account", activity.account_id.trim().to_owned())
                };
                Err(ServiceError::NotFound { resource, id }.into())
            }
            None => {
                Err(ServiceError::internal(anyhow::anyhow!("no result for the activity")).into())
            }
        }
    }

    async fn record_activities(
        &self,
        request: Request<pb::RecordActivitiesRequest>,
    ) -> Result<Response<pb::RecordActivitiesResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let activities = request.into_inner().activities;
        check_batch_size(activities.len(), "activities")?;
        self.ingest_limit.check(&context.tenant, activities.len())?;
        let outcomes = self.process(&context, &activities, batch_prefix).await?;
        let results: Vec<pb::ActivityResult> = activities
            .iter()
            .zip(outcomes)
            .map(|(a, o)| result_of(a, o))
            .collect();
        let count =
            |s: pb::ActivityStatus| results.iter().filter(|r| r.status == s as i32).count() as i32;
        Ok(Response::new(pb::RecordActivitiesResponse {
            recorded_count: count(pb::ActivityStatus::Recorded),
            duplicate_count: count(pb::ActivityStatus::Duplicate),
            rejected_count: count(pb::ActivityStatus::Rejected)
                + count(pb::ActivityStatus::NotFound),
            results,
        }))
    }

    async fn stream_activities(
        &self,
        request: Request<Streaming<pb::StreamActivitiesRequest>>,
    ) -> Result<Response<pb::StreamActivitiesResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let mut stream = request.into_inner();
        let mut response = pb::StreamActivitiesResponse::default();
        while let Some(chunk) = stream.next().await {
            let activities = chunk?.activities;
            if activities.is_empty() {
                continue;
            }
            check_batch_size(activities.len(), "activities")?;
            // A stream over its tenant's rate is slowed down, not failed:
            // reading stops until the allowance refills (the request
            // timeout still bounds the whole stream).
            loop {
                match self.ingest_limit.check(&context.tenant, activities.len()) {
                    Ok(()) => break,
                    Err(ServiceError::ResourceExhausted {
                        retry_after: Some(wait),
                        ..
                    }) => tokio::time::sleep(wait).await,
                    Err(error) => return Err(error.into()),
                }
            }
            let outcomes = self.process(&context, &activities, batch_prefix).await?;
            for (activity, outcome) in activities.iter().zip(outcomes) {
                let result = result_of(activity, outcome);
                match pb::ActivityStatus::try_from(result.status) {
                    Ok(pb::ActivityStatus::Recorded) => response.recorded_count += 1,
                    Ok(pb::ActivityStatus::Duplicate) => response.duplicate_count += 1,
                    _ => {
                        response.rejected_count += 1;
                        if response.rejected.len() < MAX_BATCH {
                            response.rejected.push(result);
                        }
                    }
                }
            }
        }
        Ok(Response::new(response))
    }

    async fn get_account_score(
        &self,
        request: Request<pb::GetAccountScoreRequest>,
    ) -> Result<Response<pb::GetAccountScoreResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let mut v = Validator::new();
        let account_id = v.required_id("account_id", &request.get_ref().account_id);
        v.finish()?;
        let totals = self
            .repository
            .account_totals(&context.tenant, &account_id)
            .await?;
        Ok(Response::new(pb::GetAccountScoreResponse {
            score: Some(score_to_proto(account_id, &totals)),
        }))
    }

    async fn get_contact_score(
        &self,
        request: Request<pb::GetContactScoreRequest>,
    ) -> Result<Response<pb::GetContactScoreResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let mut v = Validator::new();
        let contact_id = v.required_id("contact_id", &request.get_ref().contact_id);
        v.finish()?;
        let (account_id, totals) = self
            .repository
            .contact_totals(&context.tenant, &contact_id)
            .await?;
        Ok(Response::new(pb::GetContactScoreResponse {
            score: Some(pb::ContactScore {
                contact_id,
                account_id,
                engagement_score: totals.engagement,
                breakdown: breakdown(&totals),
                compute_time: Some(to_timestamp(cascade_shared::time::now())),
            }),
        }))
    }

    async fn list_top_accounts(
        &self,
        request: Request<pb::ListTopAccountsRequest>,
    ) -> Result<Response<pb::ListTopAccountsResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let page = PageRequest::parse(request.page_size, &request.page_token)?;
        let (accounts, next_page_token) =
            self.repository.top_accounts(&context.tenant, &page).await?;
        Ok(Response::new(pb::ListTopAccountsResponse {
            accounts: accounts
                .into_iter()
                .map(|(id, t)| score_to_proto(id, &t))
                .collect(),
            next_page_token,
        }))
    }

    async fn explain_account_score(
        &self,
        request: Request<pb::ExplainAccountScoreRequest>,
    ) -> Result<Response<pb::ExplainAccountScoreResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let mut v = Validator::new();
        let account_id = v.required_id("account_id", &request.account_id);
        v.finish()?;
        let size = if request.page_size == 0 {
            100
        } else {
            request.page_size
        };
        let page = PageRequest::parse(size, &request.page_token)?;
        let totals = self
            .repository
            .account_totals(&context.tenant, &account_id)
            .await?;
        let (lines, next_page_token) = self
            .repository
            .ledger(&context.tenant, &account_id, &page)
            .await?;
        let entries = lines
            .into_iter()
            .map(|l| pb::LedgerEntry {
                event_id: l.event_id,
                activity_type: l.activity_type,
                contact_id: l.contact_id.unwrap_or_default(),
                occur_time: chrono::DateTime::from_timestamp_millis(l.occurred_at_ms)
                    .map(to_timestamp),
                model_version: l.model_version,
                rule_points: l.rule_points,
                counted_points: l.counted_points,
                capped: l.capped,
                decay_factor: l.decay_factor,
                points: f64::from(l.counted_points) * l.decay_factor,
                intent: l.intent,
            })
            .collect();
        Ok(Response::new(pb::ExplainAccountScoreResponse {
            score: Some(score_to_proto(account_id, &totals)),
            entries,
            next_page_token,
        }))
    }

    async fn get_scoring_model(
        &self,
        request: Request<pb::GetScoringModelRequest>,
    ) -> Result<Response<pb::GetScoringModelResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let version = request.get_ref().version;
        let model = match version {
            v if v < 0 => {
                return Err(ServiceError::invalid("version", "must not be negative").into());
            }
            0 => self.repository.current_model(&context.tenant).await?,
            v => self.repository.model_version(&context.tenant, v).await?,
        };
        Ok(Response::new(pb::GetScoringModelResponse {
            model: Some(model_to_proto(model)),
        }))
    }

    async fn update_scoring_model(
        &self,
        request: Request<pb::UpdateScoringModelRequest>,
    ) -> Result<Response<pb::UpdateScoringModelResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let model = model_from_proto(request.into_inner().model)?;
        let stored = self
            .repository
            .update_model(&context.tenant, &context.actor, model)
            .await?;
        Ok(Response::new(pb::UpdateScoringModelResponse {
            model: Some(model_to_proto(stored)),
        }))
    }

    async fn simulate_scoring_model(
        &self,
        request: Request<pb::SimulateScoringModelRequest>,
    ) -> Result<Response<pb::SimulateScoringModelResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let proposed = model_from_proto(request.model)?;
        let mut v = Validator::new();
        let thresholds = match request.thresholds {
            Some(t) => {
                v.thresholds("thresholds.", t.engaged_threshold, t.prioritized_threshold);
                Thresholds {
                    engaged: t.engaged_threshold,
                    prioritized: t.prioritized_threshold,
                }
            }
            None => {
                v.add("thresholds", "is required");
                Thresholds {
                    engaged: 0.0,
                    prioritized: 0.0,
                }
            }
        };
        let start = v.optional_time("start_time", request.start_time.as_ref());
        let end = v.optional_time("end_time", request.end_time.as_ref());
        if let (Some(start), Some(end)) = (start, end)
            && start >= end
        {
            v.add("end_time", "must be after start_time");
        }
        if request.sample_size < 0 || request.sample_size > 1000 {
            v.add("sample_size", "must be between 0 and 1000");
        }
        v.finish()?;
        let window = (
            start.map_or(i64::MIN, |t| t.timestamp_millis()),
            end.map_or(i64::MAX, |t| t.timestamp_millis()),
        );
        // The comparison is with the current model under lifecycle's current thresholds.
        let mut client = self.lifecycle.clone();
        let call = client.get_lifecycle_settings(outgoing_for(
            &context,
            lifecycle::GetLifecycleSettingsRequest { version: 0 },
        ));
        let settings = with_deadline(context.call_budget(CALL_DEADLINE), call)
            .await
            .map_err(|status| {
                peer_failure(
                    "lifecycle",
                    "give the current thresholds",
                    "nothing was simulated",
                    &status,
                )
            })?
            .into_inner()
            .settings
            .unwrap_or_default();
        let current = (
            self.repository.current_model(&context.tenant).await?,
            Thresholds {
                engaged: settings.engaged_threshold,
                prioritized: settings.prioritized_threshold,
            },
        );
        let sample = if request.sample_size == 0 {
            20
        } else {
            request.sample_size as usize
        };
        let result = self
            .repository
            .simulate(
                &context.tenant,
                current,
                (proposed, thresholds),
                window,
                sample,
            )
            .await?;
        let counts =
            |counts: &std::collections::BTreeMap<cascade_shared::domain::AccountStage, i64>| {
                counts
                    .iter()
                    .map(|(stage, n)| pb::StageCount {
                        stage: stage.to_proto(),
                        account_count: *n,
                    })
                    .collect()
            };
        Ok(Response::new(pb::SimulateScoringModelResponse {
            current_counts: counts(&result.current_counts),
            proposed_counts: counts(&result.proposed_counts),
            changed_account_count: result.changed,
            sample: result
                .sample
                .into_iter()
                .map(|c| pb::SimulatedAccountChange {
                    account_id: c.account_id,
                    current_score: c.current_score,
                    proposed_score: c.proposed_score,
                    current_stage: c.current_stage.to_proto(),
                    proposed_stage: c.proposed_stage.to_proto(),
                })
                .collect(),
            activity_count: result.activities,
        }))
    }
}
