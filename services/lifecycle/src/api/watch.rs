//! WatchAccountEvents: the account's events as a stream.

use std::pin::Pin;
use std::time::Duration;

use cascade_chassis::validate::Validator;
use cascade_chassis::{RequestContext, ServiceError};
use cascade_domain::AccountStage;
use cascade_proto::lifecycle::v1 as pb;
use prost::Message;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::LifecycleApi;

/// The stream type of WatchAccountEvents.
pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchAccountEventsResponse, Status>> + Send + 'static>>;

/// How often a watcher looks for events written by other replicas.
const WATCH_POLL: Duration = Duration::from_millis(500);

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
    v.filter_not_blank("account_id", &request.account_id);
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
    // Every id a caller sends is checked: watching an account of another
    // tenant (or none) would stream nothing, as if it were quiet.
    if let Some(account_id) = &account_id {
        repository.get_account(&tenant, account_id).await?;
    }
    let latest = repository.latest_event_seq(&tenant).await?;
    let mut after = match after {
        // A cursor past the tenant's feed was never returned to it (another
        // tenant's, or made up): read as given it would wait for events
        // that never come and skip every new one.
        Some(seq) if seq > latest => {
            return Err(ServiceError::invalid(
                "cursor",
                format!(
                    "{seq} is ahead of this tenant's feed (its last event is {latest}): \
                     not a cursor this stream returned; leave it empty to watch from now"
                ),
            )
            .into());
        }
        Some(seq) => seq,
        None => latest,
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
