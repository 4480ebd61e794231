//! Delivers opportunity events to lifecycle through the outbox, one at a
//! time and in order per account (OPENED before WON or LOST).

use cascade_chassis::client::{CALL_DEADLINE, LifecycleInternalClient, outgoing, with_deadline};
use cascade_chassis::outbox::{DeliveryError, Entry, Sink, settle_peer_answer};
use cascade_proto::lifecycle::v1 as lifecycle;

use crate::storage::{EventKind, EventPayload};

/// The actor lifecycle records for opportunity-driven moves.
pub const ACTOR: &str = "opportunity-service";

pub struct LifecycleEventSink {
    client: LifecycleInternalClient,
}

impl LifecycleEventSink {
    pub fn new(client: LifecycleInternalClient) -> Self {
        Self { client }
    }

    async fn deliver_one(&self, entry: &Entry) -> Result<(), DeliveryError> {
        let payload = match EventPayload::decode(&entry.payload) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(message = %entry.id, %error, "unreadable opportunity event dropped");
                return Ok(());
            }
        };
        let kind = match payload.kind {
            EventKind::Opened => lifecycle::OpportunityEventType::Opened,
            EventKind::Won => lifecycle::OpportunityEventType::Won,
            EventKind::Lost => lifecycle::OpportunityEventType::Lost,
        };
        let request = lifecycle::ApplyOpportunityEventRequest {
            event_id: entry.id.clone(),
            account_id: entry.partition_key.clone(),
            opportunity_id: payload.opportunity_id,
            r#type: kind as i32,
            buying_group_contact_ids: payload.buying_group,
            other_open_opportunities: payload.other_open,
            occur_time: None,
        };
        let mut client = self.client.clone();
        let call = client.apply_opportunity_event(outgoing(&entry.tenant_id, ACTOR, request));
        settle_peer_answer(
            "lifecycle",
            "an opportunity event",
            &entry.partition_key,
            with_deadline(CALL_DEADLINE, call).await,
        )
    }
}

#[tonic::async_trait]
impl Sink for LifecycleEventSink {
    /// Every tenant's messages go to lifecycle: one destination.
    fn shared_destination(&self) -> bool {
        true
    }

    async fn deliver(&self, run: &[Entry]) -> Result<usize, (usize, DeliveryError)> {
        for (i, entry) in run.iter().enumerate() {
            self.deliver_one(entry).await.map_err(|e| (i, e))?;
        }
        Ok(run.len())
    }
}
