//! Storage of the scoring service: models, activities (the ledger), rule
//! usage for caps, per-day score buckets, computed scores, and the outbox of
//! score deliveries to lifecycle. Every query is scoped by tenant; every
//! table has a SeaORM entity (`entities`) and statements are built with
//! SeaORM / sea-query, which write each backend's placeholders.
//!
//! - `models`: scoring model versions;
//! - `ingest`: storing and scoring batches (with `group`: group commit);
//! - `scores`: stored and computed scores, and what deliveries carry;
//! - `ledger`: an account's activities, oldest first;
//! - `simulation`: replaying stored activities through two models.

mod entities;
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
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::domain;
pub use crate::domain::Totals;

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
pub enum Recorded {
    /// Stored and scored with these counted points.
    New { counted_points: i32 },
    /// Stored before, with these ids and points.
    Duplicate {
        account_id: String,
        contact_id: Option<String>,
        counted_points: i32,
    },
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

/// What a score delivery carries through the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryPayload {
    pub sequence: i64,
    /// Contact id -> activity types recorded in this batch.
    pub contacts: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Clone)]
pub struct Repository {
    db: DatabaseConnection,
    deliveries_written: Arc<Notify>,
    group: Arc<group::Queue>,
}

fn today() -> i64 {
    domain::day_of(time::now().timestamp_millis())
}

impl Repository {
    pub fn new(db: DatabaseConnection) -> Self {
        // One group transaction at a time per replica on both backends:
        // SQLite has one writer, and on PostgreSQL a second leader's group
        // shares the first's buckets and accounts and waits for its commit
        // anyway; two leaders measured no faster and cost PostgreSQL 15 %
        // more CPU (docs/performance.md, round 5). Replicas still run
        // groups side by side, hence the lock order in `ingest`.
        let leaders = 1;
        Self {
            db,
            deliveries_written: Arc::new(Notify::new()),
            group: Arc::new(group::Queue::new(leaders)),
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
