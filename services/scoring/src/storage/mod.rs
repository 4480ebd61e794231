//! Storage of the scoring service: models, activities (the ledger), rule
//! usage for caps, per-day score buckets, computed scores, and the outbox of
//! score deliveries to lifecycle. Every query is scoped by tenant; every
//! table has a SeaORM entity (`entities`) and statements are built with
//! SeaORM / sea-query, which write each backend's placeholders.
//!
//! - `models`: scoring model versions;
//! - `ingest`: storing and scoring batches (with `group`: group commit);
//! - `fold`: adding stored groups to the buckets and scores, behind ingest;
//! - `scores`: stored and computed scores, and what deliveries carry;
//! - `ledger`: an account's activities, oldest first;
//! - `simulation`: replaying stored activities through two models;
//! - `erasure`: deleting an erased contact's or account's rows;
//! - `contacts`: contacts marked inactive or active again;
//! - `decay`: bringing decayed scores up to the day.

mod contacts;
mod decay;
mod entities;
mod erasure;
mod fold;
mod group;
mod ingest;
mod ledger;
pub mod migration;
mod models;
mod scores;
mod simulation;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cascade_chassis::time;
use cascade_proto::outbox::v1 as outbox_pb;
use prost::Message as _;
use sea_orm::DatabaseConnection;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::domain;
pub use crate::domain::Totals;
pub use contacts::{ChangedContact, ContactChange};
pub use decay::{REFRESH_PAGE, Refreshed};
pub use erasure::Erase;
pub use fold::Folded;
pub use group::Expected;

/// Outbox topic of score deliveries to lifecycle; the partition is the account.
pub const SCORE_TOPIC: &str = "engagement_scores";

/// `computed_day` of a stored score that must be recomputed from the buckets.
const STALE_DAY: i64 = -1;

/// An activity ready to store (ids resolved and checked).
#[derive(Debug, Clone, PartialEq)]
pub struct NewActivity {
    pub event_id: String,
    pub activity_type: String,
    pub occurred_at_ms: i64,
    pub account_id: String,
    pub contact_id: Option<String>,
}

/// What storing one activity did.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Stored and scored by this call. Otherwise its event id was stored
    /// before (or earlier in the batch), and the ids and points are the
    /// ones it was stored with.
    pub new: bool,
    pub account_id: String,
    pub contact_id: Option<String>,
    pub counted_points: i32,
    /// Set when the event id was recorded as another activity
    /// (`domain::same_activity`), with that one's type and time: the item
    /// is refused, not a duplicate.
    pub recorded_as_other: Option<(String, i64)>,
}

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerLine {
    pub event_id: String,
    pub activity_type: String,
    pub contact_id: Option<String>,
    pub occurred_at_ms: i64,
    pub model_version: i64,
    pub rule_points: i32,
    pub counted_points: i32,
    pub capped: bool,
    pub intent: bool,
    pub decay_factor: f64,
}

/// What a score delivery carries through the outbox, stored as the
/// protobuf message `cascade.outbox.v1.ScoreChanged`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeliveryPayload {
    pub sequence: i64,
    /// Contact id -> activity types recorded in this batch.
    pub contacts: BTreeMap<String, BTreeSet<String>>,
    /// The engagement the batch's activities added and the day it is at;
    /// `None` in messages written before it was kept.
    #[serde(default)]
    pub new_engagement: Option<(f64, i64)>,
    /// The account's running total of what new activity added, after this
    /// batch, and the day it is at; `None` in messages written before it
    /// was kept.
    #[serde(default)]
    pub added_total: Option<(f64, i64)>,
}

impl DeliveryPayload {
    pub fn encode(self) -> Vec<u8> {
        outbox_pb::ScoreChanged {
            sequence: self.sequence,
            contacts: self
                .contacts
                .into_iter()
                .map(|(contact_id, types)| outbox_pb::ContactActivity {
                    contact_id,
                    activity_types: types.into_iter().collect(),
                })
                .collect(),
            new_engagement: self.new_engagement.map(|(points, _)| points),
            day: self.new_engagement.map_or(0, |(_, day)| day),
            added_total: self.added_total.map(|(total, _)| total),
            added_day: self.added_total.map_or(0, |(_, day)| day),
        }
        .encode_to_vec()
    }

    /// Reads a stored payload. Versions before the protobuf messages wrote
    /// JSON, which starts with `{` (0x7B, never the first byte of a
    /// ScoreChanged); those are read as JSON so an upgrade loses no pending
    /// delivery.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.first() == Some(&b'{') {
            return serde_json::from_slice(bytes).map_err(|e| e.to_string());
        }
        let message = outbox_pb::ScoreChanged::decode(bytes).map_err(|e| e.to_string())?;
        Ok(Self {
            sequence: message.sequence,
            contacts: message
                .contacts
                .into_iter()
                .map(|c| (c.contact_id, c.activity_types.into_iter().collect()))
                .collect(),
            new_engagement: message.new_engagement.map(|points| (points, message.day)),
            added_total: message.added_total.map(|total| (total, message.added_day)),
        })
    }
}

#[derive(Clone)]
pub struct Repository {
    db: DatabaseConnection,
    deliveries_written: Arc<Notify>,
    group: Arc<group::Queue>,
    /// Woken when a group commits a pending fold (the folder waits on it).
    fold_wanted: Arc<Notify>,
    /// Each tenant's latest model, for reads.
    models: Arc<models::ModelCache>,
    /// One reader's fold at a time per tenant.
    read_folds: Arc<fold::ReadFolds>,
}

/// Today's UTC day number, the day scores are computed for.
pub fn today() -> i64 {
    domain::day_of(time::now().timestamp_millis())
}

impl Repository {
    pub fn new(db: DatabaseConnection) -> Self {
        // SQLite has one writer: one group transaction at a time. On
        // PostgreSQL a group writes only its activities, the caps' usage and
        // a pending fold (the buckets and scores it once shared with the
        // next group are the folder's), so two groups run side by side and
        // the activities insert, the largest statement, uses both cores:
        // +19 % events/s against one leader, and three or four were no
        // faster (docs/performance.md, round 16). Replicas run groups side
        // by side too, hence the lock order in `ingest`.
        // SQLite's one leader gathers calls before a group (`group`);
        // PostgreSQL's are not measured with it yet.
        let postgres = db.get_database_backend() == sea_orm::DbBackend::Postgres;
        let leaders = if postgres { 2 } else { 1 };
        Self {
            db,
            deliveries_written: Arc::new(Notify::new()),
            group: Arc::new(group::Queue::new(leaders, !postgres)),
            fold_wanted: Arc::new(Notify::new()),
            models: Arc::default(),
            read_folds: Arc::default(),
        }
    }

    /// Wakes this notify after committing deliveries (the deliverer's waker).
    pub fn set_delivery_waker(&mut self, waker: Arc<Notify>) {
        self.deliveries_written = waker;
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_payload_reads_back_as_written_and_old_json_still_reads() {
        let payload = DeliveryPayload {
            sequence: 42,
            contacts: BTreeMap::from([
                ("c1".to_owned(), BTreeSet::from(["demo_request".to_owned()])),
                (
                    "c2".to_owned(),
                    BTreeSet::from(["email_open".to_owned(), "web_visit".to_owned()]),
                ),
            ]),
            new_engagement: Some((-2.5, 20_400)),
            added_total: Some((61.25, 20_400)),
        };
        let bytes = payload.clone().encode();
        assert_ne!(bytes.first(), Some(&b'{'));
        assert_eq!(DeliveryPayload::decode(&bytes), Ok(payload.clone()));
        // 0 new engagement is kept, not read as unset.
        let recompute = DeliveryPayload {
            new_engagement: Some((0.0, 20_400)),
            ..payload.clone()
        };
        assert_eq!(
            DeliveryPayload::decode(&recompute.clone().encode()),
            Ok(recompute)
        );
        // As versions before the protobuf messages stored it.
        let legacy = br#"{"sequence":42,"contacts":{"c1":["demo_request"],"c2":["email_open","web_visit"]}}"#;
        let older = DeliveryPayload {
            new_engagement: None,
            added_total: None,
            ..payload
        };
        assert_eq!(DeliveryPayload::decode(legacy), Ok(older));
        assert!(DeliveryPayload::decode(b"{not json").is_err());
        assert!(DeliveryPayload::decode(&[0x0A, 0xFF]).is_err());
    }
}
