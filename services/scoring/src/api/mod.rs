//! gRPC handlers of the scoring service: validate and translate requests,
//! check who activities name (the directory, backed by lifecycle), call the
//! repository.

use cascade_chassis::client::{LifecycleClient, LifecycleClientSettings};
use cascade_chassis::limit::{InFlightLimit, TenantRateLimiter};
use cascade_chassis::page::PageRequest;
use cascade_chassis::time::to_timestamp;
use cascade_chassis::validate::Validator;
use cascade_chassis::{PreconditionViolation, RequestContext, ServiceError};
use cascade_proto::scoring::v1 as pb;
use cascade_proto::scoring::v1::scoring_service_server::ScoringService;
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::decay::Rescore;
use crate::directory::Directory;
use crate::storage::Repository;

/// Largest batch (RecordActivities) or stream chunk (StreamActivities).
pub const MAX_BATCH: usize = cascade_domain::LARGEST_BATCH;

mod convert;
mod ingest;
mod simulate;

use convert::{breakdown, model_from_proto, model_to_proto, score_to_proto};
use ingest::{ItemOutcome, batch_prefix, check_batch_size, results_of};

pub struct ScoringApi {
    repository: Repository,
    lifecycle: LifecycleClient,
    directory: Directory,
    ingest_limit: TenantRateLimiter,
    in_flight: InFlightLimit,
    /// Replays running at once (`simulation.max_in_flight`).
    simulations: InFlightLimit,
    /// Asks for a tenant's scores to be recomputed (`decay::rescore_when_asked`).
    rescore: Rescore,
}

impl ScoringApi {
    pub fn new(
        repository: Repository,
        lifecycle: LifecycleClient,
        directory_settings: &LifecycleClientSettings,
        ingest_limit: TenantRateLimiter,
        in_flight: InFlightLimit,
        simulations: InFlightLimit,
        rescore: Rescore,
    ) -> Self {
        Self {
            repository,
            directory: Directory::new(lifecycle.clone(), directory_settings),
            lifecycle,
            ingest_limit,
            in_flight,
            simulations,
            rescore,
        }
    }

    /// Who activities name, as this API checks them (shared with erasure).
    pub fn directory(&self) -> &Directory {
        &self.directory
    }
}

#[tonic::async_trait]
impl ScoringService for ScoringApi {
    async fn record_activity(
        &self,
        request: Request<pb::RecordActivityRequest>,
    ) -> Result<Response<pb::RecordActivityResponse>, Status> {
        let context = RequestContext::of(&request)?;
        // Admitted before the tenant's allowance is taken, so a refusal
        // costs the tenant nothing.
        let _held = self.in_flight.admit(1)?;
        self.ingest_limit.check(&context.tenant, 1)?;
        let activity = request.into_inner().activity.unwrap_or_default();
        let outcome = self
            .process(&context, std::slice::from_ref(&activity), |_| {
                "activity.".to_owned()
            })
            .await?
            .pop();
        match outcome {
            Some(outcome @ ItemOutcome::Done(_)) => {
                Ok(Response::new(pb::RecordActivityResponse {
                    result: results_of(std::slice::from_ref(&activity), vec![outcome]).pop(),
                }))
            }
            Some(ItemOutcome::Rejected(violations)) => {
                Err(ServiceError::InvalidArgument(violations).into())
            }
            // The activity is well formed; the person is no longer there.
            Some(ItemOutcome::Inactive(violations)) => Err(ServiceError::FailedPrecondition {
                message: "the contact is no longer at the company (DeactivateContact); the activity was not recorded".into(),
                retry_after: None,
                violations: violations
                    .into_iter()
                    .map(|v| PreconditionViolation::new("CONTACT_INACTIVE", v.field, v.description))
                    .collect(),
            }
            .into()),
            Some(ItemOutcome::NotFound(violations)) => {
                let field = violations
                    .first()
                    .map(|v| v.field.as_str())
                    .unwrap_or_default();
                let refused = if field.ends_with("contact_email") {
                    ServiceError::not_found("contact email", activity.contact_email.trim())
                        .because("no contact has this email, nor an account its domain")
                } else if field.ends_with("contact_id") {
                    ServiceError::not_found("contact", activity.contact_id.trim())
                } else {
                    ServiceError::not_found("account", activity.account_id.trim())
                };
                Err(refused.into())
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
        let _held = self.in_flight.admit(activities.len())?;
        self.ingest_limit.check(&context.tenant, activities.len())?;
        let outcomes = self.process(&context, &activities, batch_prefix).await?;
        let results = results_of(&activities, outcomes);
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
        // Items are named by their place in the whole stream, not in their
        // chunk, so a refusal points at one activity.
        let mut streamed = 0;
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
            let _held = self.in_flight.wait(activities.len()).await;
            let first = streamed;
            streamed += activities.len();
            let outcomes = self
                .process(&context, &activities, |i| batch_prefix(first + i))
                .await?;
            for result in results_of(&activities, outcomes) {
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
                compute_time: Some(to_timestamp(cascade_chassis::time::now())),
            }),
        }))
    }

    async fn list_top_accounts(
        &self,
        request: Request<pb::ListTopAccountsRequest>,
    ) -> Result<Response<pb::ListTopAccountsResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let page = PageRequest::of(&context.tenant, &request)?;
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
        let page = PageRequest::of_sized(&context.tenant, &request, size)?;
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
        // The change marked the stored scores stale: recompute them now and
        // deliver those that moved, so lifecycle does not keep the old ones
        // until the next activity or decay refresh (a tester saw a Nurture
        // take its baseline from one). Not waited for: a tenant's every
        // account. The task ends only with the service.
        if self
            .rescore
            .send(context.tenant.as_str().to_owned())
            .is_err()
        {
            tracing::warn!("rescoring stopped: scores are recomputed by the next batch or refresh");
        }
        Ok(Response::new(pb::UpdateScoringModelResponse {
            model: Some(model_to_proto(stored)),
        }))
    }

    async fn simulate_scoring_model(
        &self,
        request: Request<pb::SimulateScoringModelRequest>,
    ) -> Result<Response<pb::SimulateScoringModelResponse>, Status> {
        simulate::simulate_scoring_model(self, request).await
    }

    async fn simulate_scoring_model_stream(
        &self,
        request: Request<pb::SimulateScoringModelStreamRequest>,
    ) -> Result<Response<simulate::SimulationStream>, Status> {
        simulate::simulate_scoring_model_stream(self, request).await
    }
}
