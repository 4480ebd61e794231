//! Delivers score changes to lifecycle through the outbox. Several pending
//! changes of one account are coalesced into one delivery carrying the
//! account's totals at delivery time and the newest sequence number, and the
//! deliveries of many accounts of a tenant go in one ApplyEngagementScores
//! call, which lifecycle applies in one transaction.

use std::collections::{BTreeMap, BTreeSet};

use cascade_chassis::client::{CALL_DEADLINE, LifecycleInternalClient, outgoing, with_deadline};
use cascade_chassis::outbox::{DeliveryError, Entry, Sink, settle_peer_answer};
use cascade_proto::lifecycle::v1 as lifecycle;
use tonic::Code;

use crate::storage::{DeliveryPayload, Repository, Totals};

/// The actor lifecycle records for score-driven moves.
pub const ACTOR: &str = "scoring-service";

/// Accounts per ApplyEngagementScores call (lifecycle takes up to 500). A
/// round claims `CLAIM_PER_ROUND` accounts and sends them in calls of this
/// size, several at once. With 500 per call, lifecycle's transaction on
/// SQLite held the write lock long enough to delay the contacts that
/// email-keyed ingest creates (p99 1.3-1.4 s against 0.4-0.7 s with 64);
/// on PostgreSQL both sizes ingest at the same rate (docs/performance.md).
pub const ACCOUNTS_PER_CALL: usize = 64;

/// Accounts claimed per delivery round.
pub const CLAIM_PER_ROUND: u32 = 512;

/// Bytes of items per call, well under lifecycle's 4 MiB message limit.
const CALL_BYTES: usize = 1024 * 1024;

pub struct LifecycleScoreSink {
    repository: Repository,
    client: LifecycleInternalClient,
}

impl LifecycleScoreSink {
    pub fn new(repository: Repository, client: LifecycleInternalClient) -> Self {
        Self { repository, client }
    }
}

/// A run of one account's messages, merged.
struct Merged {
    /// The id of the message of the highest sequence: a retry of this
    /// delivery is a duplicate.
    event_id: String,
    account_id: String,
    sequence: i64,
    contacts: BTreeMap<String, BTreeSet<String>>,
    /// New engagement per day, with the lowest sequence of its batches
    /// (`add_batch`); `None` when a message written before it was kept is
    /// among them.
    new_engagement: Option<Vec<(i64, f64, i64)>>,
    /// The running total of what new activity added, and its day, as of the
    /// highest sequence (`None` when that message was written before it
    /// was kept).
    added_total: Option<(f64, i64)>,
}

fn merge(run: &[Entry]) -> Option<Merged> {
    let last = run.last()?;
    let mut merged = Merged {
        event_id: String::new(),
        account_id: last.partition_key.clone(),
        sequence: 0,
        contacts: BTreeMap::new(),
        new_engagement: Some(Vec::new()),
        added_total: None,
    };
    // A run whose first message failed before is a retry: lifecycle may have
    // applied part of it with the answer lost, so each batch goes under its
    // own sequence (see `add_batch`).
    let retry = run.first().is_some_and(|head| head.attempts > 0);
    for entry in run {
        let payload = match DeliveryPayload::decode(&entry.payload) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(message = %entry.id, %error, "unreadable score delivery dropped");
                continue;
            }
        };
        // The event id is the newest batch's: ids follow the writing
        // replica's clock, so across replicas whose clocks differ the last
        // id need not be the highest sequence, and a later run could repeat
        // an applied run's id (lifecycle would drop it as DUPLICATE).
        if merged.event_id.is_empty() || payload.sequence > merged.sequence {
            merged.event_id = entry.id.clone();
            merged.added_total = payload.added_total;
        }
        merged.sequence = merged.sequence.max(payload.sequence);
        merged.new_engagement = match (merged.new_engagement, payload.new_engagement) {
            (Some(mut parts), Some((points, day))) => {
                add_batch(&mut parts, (payload.sequence, points, day), retry);
                Some(parts)
            }
            _ => None,
        };
        for (contact, types) in payload.contacts {
            merged.contacts.entry(contact).or_default().extend(types);
        }
    }
    if merged.event_id.is_empty() {
        merged.event_id = last.id.clone();
    }
    Some(merged)
}

/// Adds a batch's new engagement (sequence, points, day) to a run's.
/// Lifecycle skips an entry at or below the last sequence it applied and
/// decays each from its day. A first attempt goes one entry per day, under
/// the lowest sequence of its batches: a lagging run of 256 batches for each
/// of 512 accounts held 130,000 entries one per batch (scoring's peak RSS
/// 63.4 MiB on PostgreSQL against 54.9, round 45). A retry (`exact`) goes
/// one entry per batch: lifecycle may have applied its first batches with
/// the answer lost, and a day's entry under their sequence would be skipped
/// whole. Batches that added nothing (a recompute) are left out.
fn add_batch(
    parts: &mut Vec<(i64, f64, i64)>,
    (sequence, points, day): (i64, f64, i64),
    exact: bool,
) {
    if points == 0.0 {
        return;
    }
    match parts.iter_mut().find(|part| part.2 == day && !exact) {
        Some(part) => {
            part.0 = part.0.min(sequence);
            part.1 += points;
        }
        None => parts.push((sequence, points, day)),
    }
}

/// What the merged batches' activities added, by sequence and day.
fn new_engagement(parts: Vec<(i64, f64, i64)>) -> lifecycle::NewEngagement {
    lifecycle::NewEngagement {
        batches: parts
            .into_iter()
            .map(|(sequence, points, day)| lifecycle::EngagementAdded {
                sequence,
                engagement_score: points,
                compute_time: Some(cascade_chassis::time::to_timestamp(
                    chrono::DateTime::from_timestamp_millis(day.saturating_mul(86_400_000))
                        .unwrap_or_default(),
                )),
            })
            .collect(),
    }
}

/// The delivery of `merged` with `totals`, computed `now` under a model of
/// this half-life.
fn request(
    merged: Merged,
    totals: &Totals,
    decay_half_life_days: f64,
    now: chrono::DateTime<chrono::Utc>,
) -> lifecycle::ApplyEngagementScoreRequest {
    let today = cascade_domain::decay::day_of(now.timestamp_millis());
    lifecycle::ApplyEngagementScoreRequest {
        // Decayed to the delivery's day (`compute_time`'s), as lifecycle
        // reads it.
        engagement_added_total: merged.added_total.map(|(total, day)| {
            total * cascade_domain::decay::decay_factor(decay_half_life_days, day, today)
        }),
        event_id: merged.event_id,
        sequence: merged.sequence,
        engagement_score: totals.engagement,
        average_engagement_score: totals.average(),
        intent_score: totals.intent,
        contacts: merged
            .contacts
            .into_iter()
            .map(|(contact_id, types)| lifecycle::ContactEngagement {
                engagement_score: totals.per_contact.get(&contact_id).copied().unwrap_or(0.0),
                contact_id,
                new_activity_types: types.into_iter().collect(),
            })
            .collect(),
        compute_time: Some(cascade_chassis::time::to_timestamp(now)),
        account_id: merged.account_id,
        decay_half_life_days,
        new_engagement: merged.new_engagement.map(new_engagement),
    }
}

/// Lifecycle will never accept these: an unknown account, or a delivery it
/// finds malformed. Retrying would block the account, so they are dropped.
fn refused(account_id: &str, code: impl std::fmt::Debug, message: &str) {
    tracing::warn!(
        account = %account_id,
        ?code,
        message,
        "lifecycle refused a score delivery; dropped"
    );
}

impl LifecycleScoreSink {
    /// One ApplyEngagementScores call for the runs at `sent`; sets their
    /// results (an error: the whole call failed and is retried).
    async fn apply(
        &self,
        tenant_id: &str,
        runs: &[Vec<Entry>],
        sent: &[usize],
        items: Vec<lifecycle::ApplyEngagementScoreRequest>,
        results: &mut [Result<usize, (usize, DeliveryError)>],
    ) -> Result<(), DeliveryError> {
        let mut client = self.client.clone();
        let call = client.apply_engagement_scores(outgoing(
            tenant_id,
            ACTOR,
            lifecycle::ApplyEngagementScoresRequest { items },
        ));
        let answer = match with_deadline(CALL_DEADLINE, call).await {
            Ok(answer) => answer.into_inner(),
            // A lifecycle older than this scoring: one call per account.
            Err(status) if status.code() == Code::Unimplemented => {
                for &run in sent {
                    results[run] = self.deliver(&runs[run]).await;
                }
                return Ok(());
            }
            Err(status) => return Err(DeliveryError::from_peer("lifecycle", &status)),
        };
        if answer.results.len() != sent.len() {
            return Err(DeliveryError::internal(format!(
                "lifecycle answered {} results for {} deliveries",
                answer.results.len(),
                sent.len()
            )));
        }
        for (result, &run) in answer.results.iter().zip(sent) {
            let outcome = lifecycle::ApplyOutcome::try_from(result.outcome)
                .unwrap_or(lifecycle::ApplyOutcome::Unspecified);
            match outcome {
                lifecycle::ApplyOutcome::Applied
                | lifecycle::ApplyOutcome::Duplicate
                | lifecycle::ApplyOutcome::Stale => {}
                lifecycle::ApplyOutcome::NotFound | lifecycle::ApplyOutcome::Rejected => {
                    let why: Vec<String> = result
                        .violations
                        .iter()
                        .map(|v| format!("{}: {}", v.field, v.description))
                        .collect();
                    refused(&result.account_id, outcome, &why.join("; "));
                }
                lifecycle::ApplyOutcome::Unspecified => {
                    results[run] = Err((
                        0,
                        DeliveryError::internal(format!(
                            "lifecycle answered no outcome for account {}",
                            result.account_id
                        )),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The requests for `runs`, in order (`None` for a run with nothing to say).
    async fn requests(
        &self,
        runs: &[Vec<Entry>],
    ) -> Result<Vec<Option<lifecycle::ApplyEngagementScoreRequest>>, DeliveryError> {
        let merged: Vec<Option<Merged>> = runs.iter().map(|run| merge(run)).collect();
        let Some(tenant_id) = runs
            .first()
            .and_then(|run| run.first())
            .map(|e| &e.tenant_id)
        else {
            return Ok(Vec::new());
        };
        let wanted: Vec<(&str, Vec<&str>)> = merged
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.account_id.as_str(),
                    m.contacts.keys().map(String::as_str).collect(),
                )
            })
            .collect();
        let (totals, half_life) = self
            .repository
            .delivery_totals(tenant_id, &wanted)
            .await
            .map_err(|e| DeliveryError::internal(format!("computing totals: {e}")))?;
        let now = cascade_chassis::time::now();
        Ok(merged
            .into_iter()
            .map(|m| {
                let m = m?;
                let totals = totals.get(&m.account_id).cloned().unwrap_or_default();
                Some(request(m, &totals, half_life, now))
            })
            .collect())
    }
}

#[tonic::async_trait]
impl Sink for LifecycleScoreSink {
    /// Every tenant's messages go to lifecycle: one destination.
    fn shared_destination(&self) -> bool {
        true
    }

    async fn deliver(&self, run: &[Entry]) -> Result<usize, (usize, DeliveryError)> {
        let runs = [run.to_vec()];
        let request = match self.requests(&runs).await {
            Ok(mut requests) => requests.pop().flatten(),
            Err(error) => return Err((0, error)),
        };
        let (Some(request), Some(last)) = (request, run.last()) else {
            return Ok(run.len());
        };
        let account_id = request.account_id.clone();
        let mut client = self.client.clone();
        let call = client.apply_engagement_score(outgoing(&last.tenant_id, ACTOR, request));
        settle_peer_answer(
            "lifecycle",
            "a score delivery",
            &account_id,
            with_deadline(CALL_DEADLINE, call).await,
        )
        .map(|()| run.len())
        .map_err(|error| (0, error))
    }

    fn partitions_per_call(&self) -> usize {
        ACCOUNTS_PER_CALL
    }

    async fn deliver_many(
        &self,
        runs: &[Vec<Entry>],
    ) -> Vec<Result<usize, (usize, DeliveryError)>> {
        let fail_all =
            |error: DeliveryError| runs.iter().map(|_| Err((0, error.clone()))).collect();
        let requests = match self.requests(runs).await {
            Ok(requests) => requests,
            Err(error) => return fail_all(error),
        };
        let Some(tenant_id) = runs
            .first()
            .and_then(|run| run.first())
            .map(|e| e.tenant_id.clone())
        else {
            return Vec::new();
        };
        let mut results: Vec<Result<usize, (usize, DeliveryError)>> =
            runs.iter().map(|run| Ok(run.len())).collect();
        // Calls of at most CALL_BYTES each (lifecycle refuses messages over
        // its `max_message_bytes`, 4 MiB by default): (run index, item).
        let mut calls: Vec<Vec<(usize, lifecycle::ApplyEngagementScoreRequest)>> = Vec::new();
        let mut bytes = 0;
        for (i, request) in requests.into_iter().enumerate() {
            let Some(request) = request else { continue };
            let size = prost::Message::encoded_len(&request) + 8;
            match calls.last_mut() {
                Some(call) if bytes + size <= CALL_BYTES && call.len() < ACCOUNTS_PER_CALL => {
                    bytes += size;
                    call.push((i, request));
                }
                _ => {
                    bytes = size;
                    calls.push(vec![(i, request)]);
                }
            }
        }
        for call in calls {
            let (sent, items): (Vec<usize>, Vec<_>) = call.into_iter().unzip();
            if let Err(error) = self
                .apply(&tenant_id, runs, &sent, items, &mut results)
                .await
            {
                for &run in &sent {
                    results[run] = Err((0, error.clone()));
                }
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_chassis::time::from_timestamp;

    fn entry(id: &str, payload: DeliveryPayload) -> Entry {
        Entry {
            id: id.into(),
            tenant_id: "t".into(),
            topic: "engagement_scores".into(),
            partition_key: "acc".into(),
            payload: payload.encode(),
            attempts: 0,
            trace_context: None,
            created_at_ms: 0,
        }
    }

    fn payload(sequence: i64, new_engagement: Option<(f64, i64)>) -> DeliveryPayload {
        DeliveryPayload {
            sequence,
            contacts: BTreeMap::new(),
            new_engagement,
            added_total: None,
        }
    }

    /// A merged run sends its highest sequence's running total, decayed to
    /// the delivery's day: it covers every batch up to that sequence, and
    /// none after it. A highest message without one (written by an older
    /// scoring) sends none.
    #[test]
    fn a_merged_run_sends_its_highest_sequence_total() {
        let now = cascade_chassis::time::now();
        let today = crate::domain::day_of(now.timestamp_millis());
        let with_total = |sequence, total| DeliveryPayload {
            added_total: Some((total, today - 30)),
            ..payload(sequence, Some((1.0, today)))
        };
        let run = [
            entry("m2", with_total(6, 80.0)),
            entry("m1", with_total(5, 70.0)),
        ];
        let sent = request(merge(&run).expect("merged"), &Totals::default(), 30.0, now);
        assert_eq!(
            sent.engagement_added_total,
            Some(40.0),
            "80 a half-life ago"
        );
        let older_last = [
            entry("m1", with_total(5, 70.0)),
            entry("m2", payload(6, None)),
        ];
        let sent = request(
            merge(&older_last).expect("merged"),
            &Totals::default(),
            30.0,
            now,
        );
        assert_eq!(sent.engagement_added_total, None);
    }

    /// A merged run says what its batches added per day, under the lowest
    /// sequence of the day's batches, leaving out those that added nothing
    /// (a recompute); one message written
    /// before the amounts were kept leaves them unset (lifecycle then
    /// applies the older rule).
    #[test]
    fn a_merged_run_says_what_its_batches_added_per_day() {
        let now = cascade_chassis::time::now();
        let run = [
            entry("m1", payload(3, Some((15.0, 20_400)))),
            entry("m2", payload(4, Some((0.0, 20_401)))),
            entry("m3", payload(5, Some((-2.5, 20_401)))),
            entry("m4", payload(6, Some((4.0, 20_401)))),
        ];
        let merged = merge(&run).expect("merged");
        assert_eq!((merged.event_id.as_str(), merged.sequence), ("m4", 6));
        let sent = request(merged, &Totals::default(), 30.0, now);
        let batches: Vec<(i64, f64, i64)> = sent
            .new_engagement
            .expect("amounts sent")
            .batches
            .iter()
            .map(|b| {
                let at = from_timestamp(b.compute_time.as_ref().expect("time")).expect("valid");
                (
                    b.sequence,
                    b.engagement_score,
                    crate::domain::day_of(at.timestamp_millis()),
                )
            })
            .collect();
        // One entry per day, under its lowest sequence with points.
        assert_eq!(batches, [(3, 15.0, 20_400), (5, 1.5, 20_401)]);

        // A retry (its first message failed before) names each batch: its
        // first batches may have been applied with the answer lost.
        let mut retried = run.clone();
        retried[0].attempts = 1;
        let sent = request(
            merge(&retried).expect("merged"),
            &Totals::default(),
            30.0,
            now,
        );
        let sequences: Vec<i64> = sent
            .new_engagement
            .expect("amounts sent")
            .batches
            .iter()
            .map(|b| b.sequence)
            .collect();
        assert_eq!(sequences, [3, 5, 6]);

        // Ids follow the writing replica's clock: the highest sequence
        // names the delivery even when its id sorts first.
        let skewed = [
            entry("m8", payload(6, Some((1.0, 20_401)))),
            entry("m9", payload(5, Some((1.0, 20_401)))),
        ];
        let merged = merge(&skewed).expect("merged");
        assert_eq!((merged.event_id.as_str(), merged.sequence), ("m8", 6));

        let older = [
            entry("m1", payload(3, None)),
            entry("m2", payload(4, Some((1.0, 1)))),
        ];
        let sent = request(merge(&older).expect("merged"), &Totals::default(), 0.0, now);
        assert_eq!(sent.new_engagement, None);
    }
}
