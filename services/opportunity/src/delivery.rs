//! Delivers opportunity events to lifecycle through the outbox, one at a
//! time and in order per account (OPENED before WON or LOST).

use cascade_chassis::client::{CALL_DEADLINE, LifecycleInternalClient, outgoing, with_deadline};
use cascade_chassis::outbox::{DeliveryError, Entry, Sink, settle_peer_answer};
use cascade_proto::lifecycle::v1 as lifecycle;

use crate::domain::Date;
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
        // The person who made the change, relayed; the service itself for
        // contracts ending and for events written before actors were sent.
        let actor = cascade_chassis::context::relayable_actor(&payload.actor)
            .unwrap_or(ACTOR)
            .to_owned();
        let request = request_of(entry, payload);
        let mut client = self.client.clone();
        let call = client.apply_opportunity_event(outgoing(&entry.tenant_id, &actor, request));
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

/// The call lifecycle gets for an outbox entry. Opened, won and lost carry
/// the entry's id as the event id. Contracts ending carries one that names
/// the account and the end date, and the entry
/// (`contracts-ended:{account_id}:{yyyy-mm-dd}:{entry}`): one report is
/// claimed by one replica (`storage::contracts`), and the same end reported
/// again after a win-back is a new event, not a repeat; it happens at the
/// start (UTC) of the day after the end date.
fn request_of(entry: &Entry, payload: EventPayload) -> lifecycle::ApplyOpportunityEventRequest {
    let account_id = entry.partition_key.clone();
    let (event_type, event_id, occur_time) = match (payload.kind, payload.contracts_end) {
        (EventKind::ContractsEnded, Some(end)) => (
            lifecycle::OpportunityEventType::ContractsEnded,
            contracts_ended_event_id(&account_id, end, &entry.id),
            day_after(end),
        ),
        (kind, _) => {
            let event_type = match kind {
                EventKind::Opened => lifecycle::OpportunityEventType::Opened,
                EventKind::Won => lifecycle::OpportunityEventType::Won,
                EventKind::Lost => lifecycle::OpportunityEventType::Lost,
                // Not decodable without its end date.
                EventKind::ContractsEnded => lifecycle::OpportunityEventType::ContractsEnded,
            };
            // When it happened: the entry was written with the change, and
            // its id is a UUIDv7 (lifecycle tells a win from before a churn).
            let at = cascade_domain::ids::created_at_ms(&entry.id)
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(cascade_chassis::time::to_timestamp);
            (event_type, entry.id.clone(), at)
        }
    };
    lifecycle::ApplyOpportunityEventRequest {
        event_id,
        account_id,
        opportunity_id: payload.opportunity_id,
        r#type: event_type as i32,
        buying_group_contact_ids: payload.buying_group,
        other_open_opportunities: payload.other_open,
        occur_time,
        opportunity_kind: payload.opportunity_kind.to_proto(),
        lost_reason: payload.lost_reason,
        opportunity_version: payload.opportunity_version,
    }
}

/// The event id of the account's contracts ending on `end`.
pub fn contracts_ended_event_id(account_id: &str, end: Date, entry_id: &str) -> String {
    format!("contracts-ended:{account_id}:{}:{entry_id}", end.iso())
}

/// 00:00 UTC of the day after `end`: when a term whose last day is `end`
/// has ended.
fn day_after(end: Date) -> Option<prost_types::Timestamp> {
    let next = end.to_chrono()?.succ_opt()?;
    Some(cascade_chassis::time::to_timestamp(
        next.and_time(chrono::NaiveTime::MIN).and_utc(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OpportunityKind;

    fn entry(payload: &EventPayload) -> Entry {
        Entry {
            id: "0192f0c4-0000-7000-8000-000000000001".into(),
            tenant_id: "acme".into(),
            topic: crate::storage::EVENT_TOPIC.into(),
            partition_key: "account-1".into(),
            payload: payload.encode(),
            attempts: 0,
            trace_context: None,
            created_at_ms: 0,
        }
    }

    fn payload(kind: EventKind, contracts_end: Option<Date>) -> EventPayload {
        EventPayload {
            kind,
            opportunity_id: "o1".into(),
            buying_group: vec!["c1".into()],
            other_open: 1,
            opportunity_kind: OpportunityKind::Renewal,
            contracts_end,
            lost_reason: if kind == EventKind::Lost {
                "went with a rival".into()
            } else {
                String::new()
            },
            actor: String::new(),
            opportunity_version: 2,
        }
    }

    #[test]
    fn every_event_carries_the_opportunity_kind_and_a_loss_its_reason() {
        use lifecycle::OpportunityEventType as T;
        for (kind, event_type) in [
            (EventKind::Opened, T::Opened),
            (EventKind::Won, T::Won),
            (EventKind::Lost, T::Lost),
        ] {
            let payload = payload(kind, None);
            let request = request_of(&entry(&payload), payload);
            assert_eq!(
                request,
                lifecycle::ApplyOpportunityEventRequest {
                    event_id: "0192f0c4-0000-7000-8000-000000000001".into(),
                    account_id: "account-1".into(),
                    opportunity_id: "o1".into(),
                    r#type: event_type as i32,
                    buying_group_contact_ids: vec!["c1".into()],
                    other_open_opportunities: 1,
                    // The entry id's time: 0x0192f0c40000 ms, 2024-11-03
                    // 06:43:49.888 UTC.
                    occur_time: Some(prost_types::Timestamp {
                        seconds: 1_730_616_229,
                        nanos: 888_000_000,
                    }),
                    opportunity_kind: cascade_proto::common::v1::OpportunityKind::Renewal as i32,
                    lost_reason: if kind == EventKind::Lost {
                        "went with a rival".into()
                    } else {
                        String::new()
                    },
                    opportunity_version: 2,
                }
            );
        }
    }

    #[test]
    fn contracts_ended_is_named_by_the_account_and_day_and_happens_the_next_morning() {
        // The last day of February in a leap year, and the last of a year.
        for (end, next_day) in [
            ((2028, 2, 29), "2028-03-01T00:00:00+00:00"),
            ((2026, 12, 31), "2027-01-01T00:00:00+00:00"),
        ] {
            let end = Date::new(end.0, end.1, end.2).expect("a date");
            let payload = EventPayload {
                buying_group: Vec::new(),
                ..payload(EventKind::ContractsEnded, Some(end))
            };
            let request = request_of(&entry(&payload), payload);
            assert_eq!(
                request.r#type,
                lifecycle::OpportunityEventType::ContractsEnded as i32
            );
            assert_eq!(
                request.event_id,
                format!(
                    "contracts-ended:account-1:{}:0192f0c4-0000-7000-8000-000000000001",
                    end.iso()
                )
            );
            assert_eq!(
                request.opportunity_kind,
                cascade_proto::common::v1::OpportunityKind::Renewal as i32
            );
            let at = request
                .occur_time
                .as_ref()
                .and_then(cascade_chassis::time::from_timestamp)
                .expect("a time");
            assert_eq!(at.to_rfc3339(), next_day);
        }
    }
}
