//! Delivers score changes to lifecycle through the outbox. Several pending
//! changes of one account are coalesced into one call carrying the account's
//! totals at delivery time and the newest sequence number.

use cascade_proto::lifecycle::v1 as lifecycle;
use cascade_shared::client::{CALL_DEADLINE, LifecycleClient, outgoing, with_deadline};
use cascade_shared::outbox::{DeliveryError, Entry, Sink};
use tonic::Code;

use crate::storage::{DeliveryPayload, Repository};

/// The actor lifecycle records for score-driven moves.
pub const ACTOR: &str = "scoring-service";

pub struct LifecycleScoreSink {
    repository: Repository,
    client: LifecycleClient,
}

impl LifecycleScoreSink {
    pub fn new(repository: Repository, client: LifecycleClient) -> Self {
        Self { repository, client }
    }
}

#[tonic::async_trait]
impl Sink for LifecycleScoreSink {
    async fn deliver(&self, run: &[Entry]) -> Result<usize, (usize, DeliveryError)> {
        let Some(last) = run.last() else {
            return Ok(0);
        };
        let mut merged = DeliveryPayload {
            sequence: 0,
            contacts: Default::default(),
        };
        for entry in run {
            let payload: DeliveryPayload = match serde_json::from_slice(&entry.payload) {
                Ok(payload) => payload,
                Err(error) => {
                    tracing::error!(message = %entry.id, %error, "unreadable score delivery dropped");
                    continue;
                }
            };
            merged.sequence = merged.sequence.max(payload.sequence);
            for (contact, types) in payload.contacts {
                merged.contacts.entry(contact).or_default().extend(types);
            }
        }
        let account_id = &last.partition_key;
        let contacts: Vec<&str> = merged.contacts.keys().map(String::as_str).collect();
        let totals = self
            .repository
            .delivery_totals(&last.tenant_id, account_id, &contacts)
            .await
            .map_err(|e| (0, DeliveryError(format!("computing totals: {e}"))))?;
        let request = lifecycle::ApplyEngagementScoreRequest {
            // The newest message's id: a retry of this delivery is a duplicate.
            event_id: last.id.clone(),
            account_id: account_id.clone(),
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
            compute_time: Some(cascade_shared::time::to_timestamp(
                cascade_shared::time::now(),
            )),
        };
        let mut client = self.client.clone();
        let call = client.apply_engagement_score(outgoing(&last.tenant_id, ACTOR, request));
        match with_deadline(CALL_DEADLINE, call).await {
            Ok(_) => Ok(run.len()),
            // Lifecycle will never accept these: an unknown account, or a
            // delivery it finds malformed. Retrying would block the account.
            Err(status) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => {
                tracing::warn!(
                    account = %account_id,
                    code = ?status.code(),
                    message = status.message(),
                    "lifecycle refused a score delivery; dropped"
                );
                Ok(run.len())
            }
            Err(status) => Err((
                0,
                DeliveryError(format!(
                    "lifecycle answered {:?}: {}",
                    status.code(),
                    status.message()
                )),
            )),
        }
    }
}
