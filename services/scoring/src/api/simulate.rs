//! SimulateScoringModel and SimulateScoringModelStream: one check of the
//! request and one replay (`Repository::simulate`); the stream watches the
//! replay's progress and reports it as it goes.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::time::{Duration, Instant};

use cascade_chassis::client::{CALL_DEADLINE, outgoing_for, peer_failure, with_deadline};
use cascade_chassis::validate::{Validator, Written};
use cascade_chassis::{RequestContext, ServiceError, TenantId};
use cascade_domain::AccountStage;
use cascade_proto::lifecycle::v1 as lifecycle;
use cascade_proto::scoring::v1 as pb;
use cascade_proto::scoring::v1::simulate_scoring_model_stream_response::Update;
use futures::Stream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::ScoringApi;
use super::convert::model_from_proto;
use crate::domain::ScoringModel;
use crate::domain::simulate::{Progress, ProgressPace, SimulationResult, Thresholds};
use crate::storage::Repository;

/// The stream type of SimulateScoringModelStream.
pub type SimulationStream = Pin<
    Box<dyn Stream<Item = Result<pb::SimulateScoringModelStreamResponse, Status>> + Send + 'static>,
>;

/// Between tenths, a replay reports at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Progress messages waiting for a slow reader. When they are all unread the
/// next report is skipped rather than waited for: the replay never stalls on
/// progress, only the result is always delivered.
const PROGRESS_BUFFER: usize = 8;

/// A checked simulation request and what it compares against.
struct Plan {
    /// Its place among the replays in flight (`simulation.max_in_flight`),
    /// held until the plan is dropped with its replay.
    _place: Option<OwnedSemaphorePermit>,
    tenant: TenantId,
    current: (ScoringModel, Thresholds),
    proposed: (ScoringModel, Thresholds),
    window: (i64, i64),
    sample: usize,
}

impl Plan {
    /// Validates the request, takes a place among the replays in flight,
    /// then reads the current model and lifecycle's current thresholds. A
    /// malformed request is refused INVALID_ARGUMENT even at the bound.
    async fn of(
        api: &ScoringApi,
        context: &RequestContext,
        request: pb::SimulateScoringModelRequest,
    ) -> Result<Self, ServiceError> {
        let mut v = Validator::new();
        let proposed = v.join(model_from_proto(request.model))?;
        let thresholds = match request.thresholds {
            Some(t) => {
                v.engaged_threshold("thresholds.engaged_threshold", t.engaged_threshold);
                v.thresholds(
                    "thresholds.",
                    t.engaged_threshold,
                    t.prioritized_threshold,
                    Written::Both,
                );
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
        let proposed = proposed.ok_or_else(|| {
            ServiceError::internal(anyhow::anyhow!("a refused model passed validation"))
        })?;
        let place = api.simulations.admit(1)?;
        let window = (
            start.map_or(i64::MIN, |t| t.timestamp_millis()),
            end.map_or(i64::MAX, |t| t.timestamp_millis()),
        );
        // The comparison is with the current model under lifecycle's current thresholds.
        let mut client = api.lifecycle.clone();
        let call = client.get_lifecycle_settings(outgoing_for(
            context,
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
            api.repository.current_model(&context.tenant).await?,
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
        Ok(Self {
            _place: place,
            tenant: context.tenant.clone(),
            current,
            proposed: (proposed, thresholds),
            window,
            sample,
        })
    }

    /// Replays the window; `watch` sees the progress after every group and
    /// may stop it (then `None`).
    async fn run(
        self,
        repository: &Repository,
        watch: impl FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<Option<SimulationResult>, ServiceError> {
        repository
            .simulate(
                &self.tenant,
                self.current,
                self.proposed,
                self.window,
                self.sample,
                watch,
            )
            .await
    }
}

pub(super) async fn simulate_scoring_model(
    api: &ScoringApi,
    request: Request<pb::SimulateScoringModelRequest>,
) -> Result<Response<pb::SimulateScoringModelResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let plan = Plan::of(api, &context, request.into_inner()).await?;
    let result = plan
        .run(&api.repository, |_| ControlFlow::Continue(()))
        .await?
        .ok_or_else(|| ServiceError::internal(anyhow::anyhow!("an unwatched replay stopped")))?;
    Ok(Response::new(response(result)))
}

pub(super) async fn simulate_scoring_model_stream(
    api: &ScoringApi,
    request: Request<pb::SimulateScoringModelStreamRequest>,
) -> Result<Response<SimulationStream>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    // Checked before the stream opens: a bad request or an unreachable
    // lifecycle fails the call itself, within the server's request timeout.
    let plan = Plan::of(
        api,
        &context,
        pb::SimulateScoringModelRequest {
            model: request.model,
            thresholds: request.thresholds,
            start_time: request.start_time,
            end_time: request.end_time,
            sample_size: request.sample_size,
        },
    )
    .await?;
    let repository = api.repository.clone();
    let (tx, mut rx) = mpsc::channel(PROGRESS_BUFFER);
    // The server's request timeout ends with the handler (once the stream is
    // returned), so the caller's own deadline is applied here, to the whole
    // replay.
    let deadline = context.deadline.map(tokio::time::Instant::from_std);
    let span = tracing::Span::current();
    tokio::spawn(
        async move {
            let replay = replay_reporting(plan, &repository, &tx);
            let bounded = async {
                match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, replay)
                        .await
                        .unwrap_or_else(|_| {
                            Err(Status::deadline_exceeded(
                                "the caller's deadline passed during the replay; nothing was changed",
                            ))
                        }),
                    None => replay.await,
                }
            };
            let outcome = tokio::select! {
                outcome = bounded => outcome,
                // The caller went away: dropping the replay ends it at once,
                // even while the database is still computing a group.
                () = tx.closed() => return,
            };
            if let Err(status) = outcome {
                let _ = tx.send(Err(status)).await;
            }
        }
        // Logs of the replay (an internal error) stay under the call's span.
        .instrument(span),
    );
    Ok(Response::new(Box::pin(futures::stream::poll_fn(
        move |cx| rx.poll_recv(cx),
    ))))
}

/// Counts the window, replays it reporting progress on `tx`, and ends with
/// the result. Returns early, without error, when it finds the caller gone
/// (the receiver dropped).
async fn replay_reporting(
    plan: Plan,
    repository: &Repository,
    tx: &mpsc::Sender<Result<pb::SimulateScoringModelStreamResponse, Status>>,
) -> Result<(), Status> {
    let started = Instant::now();
    let total = repository
        .count_in_window(&plan.tenant, plan.window)
        .await?;
    let report = |progress: Progress| {
        Ok(pb::SimulateScoringModelStreamResponse {
            update: Some(Update::Progress(pb::SimulateScoringModelProgress {
                replayed_activity_count: progress.activities,
                total_activity_count: total,
                replayed_account_count: progress.accounts,
                elapsed: prost_types::Duration::try_from(started.elapsed()).ok(),
            })),
        })
    };
    if tx.send(report(Progress::default())).await.is_err() {
        return Ok(());
    }
    let mut pace = ProgressPace::new(total, PROGRESS_INTERVAL, started);
    let mut reported = Progress::default();
    let result = plan
        .run(repository, |progress| {
            if pace.due(progress.activities, Instant::now()) {
                match tx.try_send(report(progress)) {
                    Ok(()) => reported = progress,
                    Err(TrySendError::Full(_)) => {}
                    Err(TrySendError::Closed(_)) => return ControlFlow::Break(()),
                }
            }
            ControlFlow::Continue(())
        })
        .await?;
    let Some(result) = result else {
        return Ok(());
    };
    // The last progress carries the final figures (every account replayed
    // sits at exactly one current stage), unless the last report did.
    let last = Progress {
        activities: result.activities,
        accounts: result.current_counts.values().sum(),
    };
    if last != reported && tx.send(report(last)).await.is_err() {
        return Ok(());
    }
    let _ = tx
        .send(Ok(pb::SimulateScoringModelStreamResponse {
            update: Some(Update::Result(response(result))),
        }))
        .await;
    Ok(())
}

fn response(result: SimulationResult) -> pb::SimulateScoringModelResponse {
    let counts = |counts: &BTreeMap<AccountStage, i64>| {
        counts
            .iter()
            .map(|(stage, n)| pb::StageCount {
                stage: stage.to_proto(),
                account_count: *n,
            })
            .collect()
    };
    pb::SimulateScoringModelResponse {
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
    }
}
