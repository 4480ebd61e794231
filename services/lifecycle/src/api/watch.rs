//! WatchAccountEvents: the account's events as a stream.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
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

/// The most watch streams one tenant may hold open on one replica. Each
/// holds a task and reads the feed on every commit, so one tenant's
/// thousand forgotten streams would slow every tenant's writes.
pub const MAX_WATCHES_PER_TENANT: usize = 50;

/// The watch streams open on this replica, per tenant.
#[derive(Debug, Default)]
pub struct Watchers(Mutex<HashMap<String, usize>>);

/// One open stream's place, given back when its task ends.
struct WatchSlot {
    watchers: Arc<Watchers>,
    tenant: String,
}

impl Watchers {
    fn claim(self: &Arc<Self>, tenant: &str) -> Option<WatchSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(tenant.to_owned()).or_default();
        if *count >= MAX_WATCHES_PER_TENANT {
            return None;
        }
        *count += 1;
        Some(WatchSlot {
            watchers: self.clone(),
            tenant: tenant.to_owned(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.watchers.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

pub(super) async fn watch_account_events(
    api: &LifecycleApi,
    request: Request<pb::WatchAccountEventsRequest>,
) -> Result<Response<WatchStream>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let mut v = Validator::new();
    // A set of at most the nine stages, however often the request repeats
    // them: the stream holds it as long as it is open.
    let mut stages: Vec<String> = Vec::new();
    for (i, stage) in request.stages.iter().enumerate() {
        match AccountStage::from_proto(*stage) {
            Some(stage) if stages.iter().any(|s| s == stage.as_str()) => {}
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
    let Some(slot) = api.watchers.claim(tenant.as_str()) else {
        return Err(ServiceError::ResourceExhausted {
            message: format!(
                "this tenant has {MAX_WATCHES_PER_TENANT} watch streams open on this replica; \
                 close one (or watch the tenant's whole feed in one stream, filtering by account)"
            ),
            retry_after: None,
        }
        .into());
    };
    let written = repository.events_written();
    let mut draining = api.draining.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let _slot = slot;
        // Ends when the replica drains; a sender gone (a test's API) never.
        let drained = async move {
            if draining.wait_for(|d| *d).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(drained);
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
            // `after` moves past an event once it is sent (or filtered out),
            // so the cursor a drain names resumes exactly there.
            for event in events {
                if account_id
                    .as_ref()
                    .is_some_and(|id| *id != event.account_id)
                {
                    after = event.seq;
                    continue;
                }
                if let Some(stage) = &event.to_stage
                    && !stages.is_empty()
                    && !stages.contains(stage)
                {
                    after = event.seq;
                    continue;
                }
                let Ok(mut message) =
                    pb::WatchAccountEventsResponse::decode(event.payload.as_slice())
                else {
                    tracing::error!(seq = event.seq, "unreadable watch event skipped");
                    after = event.seq;
                    continue;
                };
                message.cursor = event.seq.to_string();
                // A client that stops reading must not hold the drain.
                tokio::select! {
                    sent = tx.send(Ok(message)) => {
                        if sent.is_err() {
                            return;
                        }
                    }
                    () = &mut drained => return end_for_drain(&tx, after).await,
                }
                after = event.seq;
            }
            if full {
                continue;
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(WATCH_POLL) => {}
                () = tx.closed() => return,
                () = &mut drained => return end_for_drain(&tx, after).await,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Response::new(Box::pin(stream)))
}

/// Ends a stream as its replica drains: UNAVAILABLE naming the cursor to
/// resume from. A client whose buffer is full gets a second to make room;
/// after that the stream is cut without the status, as the grace would.
async fn end_for_drain(
    tx: &tokio::sync::mpsc::Sender<Result<pb::WatchAccountEventsResponse, Status>>,
    after: i64,
) {
    let status = Status::unavailable(format!(
        "this replica is shutting down; watch again with cursor {after} \
         to resume where this stream ended"
    ));
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Err(status))).await;
}
