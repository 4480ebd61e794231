//! Opportunity events for lifecycle as they wait in the outbox, and queuing
//! them in the transaction of the change they tell of.

use cascade_chassis::db::Stored;
use cascade_chassis::{ServiceResult, outbox};
use cascade_proto::common::v1 as common;
use prost::Message as _;
use sea_orm::{ColumnTrait, ConnectionTrait, PaginatorTrait, QueryFilter};
use serde::Deserialize;

use super::entities::opportunity;
use super::{EVENT_TOPIC, of_tenant};
use crate::domain::{Date, EventKind, Opportunity, OpportunityKind, Status};

/// An opportunity event as it travels through the outbox (the protobuf
/// message `cascade.outbox.v1.OpportunityChanged`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EventPayload {
    pub kind: EventKind,
    pub opportunity_id: String,
    pub buying_group: Vec<String>,
    /// Other open opportunities of the account when this happened.
    pub other_open: i32,
    /// What the opportunity sells (events written before kinds existed
    /// are new business).
    #[serde(default = "new_business")]
    pub opportunity_kind: OpportunityKind,
    /// CONTRACTS_ENDED: the last day of the account's contracts.
    #[serde(default)]
    pub contracts_end: Option<Date>,
    /// LOST: why, as the seller gave it (empty otherwise, and in events
    /// written before reasons were sent).
    #[serde(default)]
    pub lost_reason: String,
    /// Who made the change; empty for contracts ending and in events
    /// written before actors were sent (lifecycle then records the
    /// service).
    #[serde(default)]
    pub actor: String,
    /// The opportunity's version when this happened (0: unknown, for
    /// contracts ending and events written before versions were sent).
    #[serde(default)]
    pub opportunity_version: i64,
}

fn new_business() -> OpportunityKind {
    OpportunityKind::NewBusiness
}

use cascade_proto::outbox::v1::{OpportunityChanged, OpportunityEventKind as Wire};

impl EventPayload {
    pub fn encode(&self) -> Vec<u8> {
        let kind = match self.kind {
            EventKind::Opened => Wire::Opened,
            EventKind::Won => Wire::Won,
            EventKind::Lost => Wire::Lost,
            EventKind::ContractsEnded => Wire::ContractsEnded,
        };
        OpportunityChanged {
            kind: kind as i32,
            opportunity_id: self.opportunity_id.clone(),
            buying_group_contact_ids: self.buying_group.clone(),
            other_open_opportunities: self.other_open,
            opportunity_kind: self.opportunity_kind.to_proto(),
            contracts_end_date: self.contracts_end.map(|d| common::Date {
                year: d.year,
                month: d.month as i32,
                day: d.day as i32,
            }),
            lost_reason: self.lost_reason.clone(),
            actor: self.actor.clone(),
            opportunity_version: self.opportunity_version,
        }
        .encode_to_vec()
    }

    /// Reads a stored payload. Versions before the protobuf messages wrote
    /// JSON, which starts with `{` (0x7B, never the first byte of an
    /// OpportunityChanged); those are read as JSON so an upgrade loses no
    /// pending event.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.first() == Some(&b'{') {
            return serde_json::from_slice(bytes).map_err(|e| e.to_string());
        }
        let message = OpportunityChanged::decode(bytes).map_err(|e| e.to_string())?;
        let kind = match Wire::try_from(message.kind) {
            Ok(Wire::Opened) => EventKind::Opened,
            Ok(Wire::Won) => EventKind::Won,
            Ok(Wire::Lost) => EventKind::Lost,
            Ok(Wire::ContractsEnded) => EventKind::ContractsEnded,
            _ => return Err(format!("unknown opportunity event kind {}", message.kind)),
        };
        let opportunity_kind = OpportunityKind::from_wire(message.opportunity_kind)
            .ok_or_else(|| format!("unknown opportunity kind {}", message.opportunity_kind))?;
        let contracts_end = match message.contracts_end_date {
            None => None,
            Some(d) => Some(
                u32::try_from(d.month)
                    .ok()
                    .zip(u32::try_from(d.day).ok())
                    .and_then(|(month, day)| Date::new(d.year, month, day))
                    .ok_or_else(|| format!("invalid contracts end date {d:?}"))?,
            ),
        };
        if kind == EventKind::ContractsEnded && contracts_end.is_none() {
            return Err("a CONTRACTS_ENDED event without its end date".into());
        }
        Ok(Self {
            kind,
            opportunity_id: message.opportunity_id,
            buying_group: message.buying_group_contact_ids,
            other_open: message.other_open_opportunities,
            opportunity_kind,
            contracts_end,
            lost_reason: message.lost_reason,
            actor: message.actor,
            opportunity_version: message.opportunity_version,
        })
    }
}

/// Queues `kind` of `opportunity` for lifecycle in the caller's
/// transaction; `contracts_end` for CONTRACTS_ENDED; `actor` who made the
/// change (empty for none) and the opportunity's `version` after it (0
/// for contracts ending).
pub(super) async fn enqueue(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    opportunity: &Opportunity,
    kind: EventKind,
    contracts_end: Option<Date>,
    (actor, version): (&str, i64),
) -> ServiceResult<()> {
    let other_open = of_tenant(tenant_id)
        .filter(opportunity::Column::AccountId.eq(opportunity.account_id.as_str()))
        .filter(opportunity::Column::Status.eq(Stored(Status::Open)))
        .filter(opportunity::Column::OpportunityId.ne(opportunity.opportunity_id.as_str()))
        .count(conn)
        .await?;
    let payload = EventPayload {
        kind,
        opportunity_id: opportunity.opportunity_id.clone(),
        // Contracts ending moves no one of a buying group.
        buying_group: if kind == EventKind::ContractsEnded {
            Vec::new()
        } else {
            opportunity.buying_group.clone()
        },
        other_open: i32::try_from(other_open).unwrap_or(i32::MAX),
        opportunity_kind: opportunity.kind,
        contracts_end,
        lost_reason: if kind == EventKind::Lost {
            opportunity.lost_reason.clone()
        } else {
            String::new()
        },
        actor: actor.to_owned(),
        opportunity_version: version,
    };
    outbox::enqueue(
        conn,
        tenant_id,
        EVENT_TOPIC,
        &opportunity.account_id,
        payload.encode(),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_proto::outbox::v1 as outbox_pb;

    fn payload(kind: EventKind, opportunity_kind: OpportunityKind) -> EventPayload {
        EventPayload {
            kind,
            opportunity_id: "o1".into(),
            buying_group: vec!["c1".into(), "c2".into()],
            other_open: 2,
            opportunity_kind,
            contracts_end: (kind == EventKind::ContractsEnded).then_some(Date {
                year: 2026,
                month: 2,
                day: 28,
            }),
            lost_reason: if kind == EventKind::Lost {
                "no budget".into()
            } else {
                String::new()
            },
            actor: "seller@tenant.example".into(),
            opportunity_version: 3,
        }
    }

    #[test]
    fn an_event_payload_reads_back_as_written() {
        for kind in [
            EventKind::Opened,
            EventKind::Won,
            EventKind::Lost,
            EventKind::ContractsEnded,
        ] {
            for &opportunity_kind in OpportunityKind::ALL {
                let payload = payload(kind, opportunity_kind);
                let bytes = payload.encode();
                assert_ne!(bytes.first(), Some(&b'{'));
                assert_eq!(EventPayload::decode(&bytes), Ok(payload));
            }
        }
        let unspecified = outbox_pb::OpportunityChanged::default().encode_to_vec();
        assert!(EventPayload::decode(&unspecified).is_err());
        let no_end = OpportunityChanged {
            kind: Wire::ContractsEnded as i32,
            ..Default::default()
        };
        assert!(EventPayload::decode(&no_end.encode_to_vec()).is_err());
    }

    /// Messages written before kinds existed (no kind field, and the JSON
    /// before the protobuf messages) read as new business.
    #[test]
    fn older_messages_read_as_new_business() {
        let older = outbox_pb::OpportunityChanged {
            kind: outbox_pb::OpportunityEventKind::Won as i32,
            opportunity_id: "o1".into(),
            buying_group_contact_ids: vec!["c1".into()],
            other_open_opportunities: 1,
            ..Default::default()
        };
        let expected = EventPayload {
            kind: EventKind::Won,
            opportunity_id: "o1".into(),
            buying_group: vec!["c1".into()],
            other_open: 1,
            opportunity_kind: OpportunityKind::NewBusiness,
            contracts_end: None,
            lost_reason: String::new(),
            actor: String::new(),
            opportunity_version: 0,
        };
        assert_eq!(
            EventPayload::decode(&older.encode_to_vec()),
            Ok(expected.clone())
        );
        let legacy =
            br#"{"kind":"Won","opportunity_id":"o1","buying_group":["c1"],"other_open":1}"#;
        assert_eq!(EventPayload::decode(legacy), Ok(expected));
    }
}
