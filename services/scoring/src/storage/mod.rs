//! Storage of the scoring service: models, activities (the ledger), rule
//! usage for caps, per-day score buckets, computed scores, and the outbox of
//! score deliveries to lifecycle. Every query is scoped by tenant.

mod group;
pub mod migration;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cascade_shared::db::{begin_write, statement_chunks};
use cascade_shared::page::PageRequest;
use cascade_shared::{ServiceError, ServiceResult, TenantId, outbox, time};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement, TransactionTrait, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use crate::domain::Totals;
use crate::domain::simulate::{ReplayActivity, Simulation, SimulationResult, Thresholds};
use crate::domain::{self, ScoringModel, ScoringRule, Usage, UsageKey};

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

fn stmt(conn: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Statement {
    cascade_shared::db::statement(conn.get_database_backend(), sql, values)
}

fn placeholders(start: usize, count: usize) -> String {
    (start..start + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn today() -> i64 {
    domain::day_of(time::now().timestamp_millis())
}

fn subject(account_id: &str, contact_id: Option<&str>) -> String {
    contact_id.map_or_else(|| format!("account:{account_id}"), str::to_owned)
}

impl Repository {
    pub fn new(db: DatabaseConnection) -> Self {
        // SQLite has one writer; PostgreSQL takes a few group transactions
        // at once (on different accounts they do not wait for each other).
        let leaders = match db.get_database_backend() {
            sea_orm::DbBackend::Postgres => 2,
            _ => 1,
        };
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

    // ----- models -----

    pub async fn current_model(&self, tenant: &TenantId) -> ServiceResult<ScoringModel> {
        current_model(&self.db, tenant.as_str()).await
    }

    pub async fn model_version(
        &self,
        tenant: &TenantId,
        version: i64,
    ) -> ServiceResult<ScoringModel> {
        let row = self
            .db
            .query_one_raw(stmt(
                &self.db,
                "SELECT * FROM scoring_models WHERE tenant_id = $1 AND version = $2",
                vec![tenant.as_str().into(), version.into()],
            ))
            .await?;
        match row {
            Some(row) => model_from_row(&row),
            None if version == 1 => Ok(ScoringModel::default()),
            None => Err(ServiceError::not_found(
                "scoring model version",
                version.to_string(),
            )),
        }
    }

    /// Stores `model` as the next version.
    pub async fn update_model(
        &self,
        tenant: &TenantId,
        actor: &str,
        mut model: ScoringModel,
    ) -> ServiceResult<ScoringModel> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        let current = current_model(&txn, t).await?;
        model.version = current.version + 1;
        let now = time::now().timestamp_millis();
        let rules = serde_json::to_string(&model.rules).map_err(ServiceError::internal)?;
        let intent =
            serde_json::to_string(&model.intent_activity_types).map_err(ServiceError::internal)?;
        let result = txn
            .execute_raw(stmt(
                &txn,
                "INSERT INTO scoring_models (tenant_id, version, rules, decay_half_life_days, \
                 intent_activity_types, created_at_ms, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                vec![
                    t.into(),
                    model.version.into(),
                    rules.into(),
                    model.decay_half_life_days.into(),
                    intent.into(),
                    now.into(),
                    actor.into(),
                ],
            ))
            .await;
        match result {
            Ok(_) => {}
            Err(e) if cascade_shared::error::is_unique_violation(&e) => {
                return Err(ServiceError::Aborted(
                    "the model was changed by another call at the same time; read it again and retry"
                        .into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        // Stored scores carry the old model's decay: mark them stale, so the
        // next batch or read recomputes them from the buckets.
        for table in ["account_scores", "contact_scores"] {
            txn.execute_raw(stmt(
                &txn,
                &format!("UPDATE {table} SET computed_day = $1 WHERE tenant_id = $2"),
                vec![STALE_DAY.into(), t.into()],
            ))
            .await?;
        }
        txn.commit().await?;
        model.created_at_ms = Some(now);
        model.created_by = Some(actor.to_owned());
        Ok(model)
    }

    // ----- ingestion -----

    /// Stores and scores a batch in one transaction (see `group`).
    async fn record_now(
        &self,
        tenant: &TenantId,
        items: &[NewActivity],
    ) -> ServiceResult<Vec<Recorded>> {
        // The first attempt does not look for stored ids: the insert itself
        // (ON CONFLICT DO NOTHING) says whether any was stored before, and
        // then the attempt is rolled back and the next ones check first.
        // Repeats are rare (a client's retry), and the check was a quarter
        // of PostgreSQL's time per batch (docs/performance.md). A concurrent
        // replica may also insert some of the same ids between a check and
        // the insert; then the next attempt sees them as stored.
        for attempt in 0..4 {
            match self.try_record(tenant, items, attempt > 0).await? {
                Some(result) => {
                    if result.iter().any(|r| matches!(r, Recorded::New { .. })) {
                        self.deliveries_written.notify_one();
                    }
                    return Ok(result);
                }
                None => continue,
            }
        }
        Err(ServiceError::Aborted(
            "these activities are being recorded by another call; retry".into(),
        ))
    }

    async fn try_record(
        &self,
        tenant: &TenantId,
        items: &[NewActivity],
        check_stored: bool,
    ) -> ServiceResult<Option<Vec<Recorded>>> {
        // Every step below is one statement per chunk of rows, never one per
        // activity, account or contact: on SQLite the transaction holds the
        // only write lock, so its length is the service's ingest ceiling.
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
            // Plan each statement for the table as it is now. A generic plan
            // cached while the tables were nearly empty (a new database)
            // reads every activity of the tenant to check 256 event ids, and
            // stays cached until an ANALYZE: measured 3.3 s per batch after
            // 25 s of ingest. Custom plans cost ~1 ms of planning each.
            txn.execute_unprepared("SET LOCAL plan_cache_mode = force_custom_plan")
                .await?;
        }
        let model = current_model(&txn, t).await?;
        let stored = if check_stored {
            stored_before(&txn, t, items).await?
        } else {
            HashMap::new()
        };

        // The new ones, first occurrence of each id only.
        let mut fresh: Vec<(usize, &NewActivity)> = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            if !stored.contains_key(&item.event_id) && seen.insert(item.event_id.as_str()) {
                fresh.push((i, item));
            }
        }
        if fresh.is_empty() {
            txn.commit().await?;
            return Ok(Some(results(items, &stored, &[])));
        }

        // Load (and on PostgreSQL lock) the rule usage the new ones need.
        let mut keys: BTreeSet<UsageKey> = BTreeSet::new();
        for (_, item) in &fresh {
            let subject = subject(&item.account_id, item.contact_id.as_deref());
            keys.extend(domain::usage_keys(
                &model,
                &subject,
                &item.activity_type,
                domain::day_of(item.occurred_at_ms),
            ));
        }
        let mut usage = lock_usage(&txn, t, &keys).await?;
        let before = usage.clone();

        // Score in request order.
        let mut scored = Vec::with_capacity(fresh.len());
        for (i, item) in &fresh {
            let subject = subject(&item.account_id, item.contact_id.as_deref());
            let day = domain::day_of(item.occurred_at_ms);
            let s = domain::score_activity(
                &model,
                &subject,
                &item.activity_type,
                item.contact_id.is_some(),
                day,
                &mut usage,
            );
            scored.push(ScoredActivity {
                index: *i,
                item,
                scored: s,
                day,
            });
        }

        if insert_activities(&txn, t, model.version, &scored).await? != scored.len() {
            // Some of these ids were stored before (by an earlier call, or a
            // concurrent one meanwhile): try again, checking first.
            txn.rollback().await?;
            return Ok(None);
        }
        write_usage(&txn, t, &usage, &before).await?;

        let today = today();
        let batch = domain::BatchScores::of(
            scored.iter().map(|s| domain::BatchActivity {
                account_id: &s.item.account_id,
                contact_id: s.item.contact_id.as_deref(),
                activity_type: &s.item.activity_type,
                day: s.day,
                points: s.scored.counted_points,
                intent: s.scored.intent,
            }),
            &model,
            today,
        );
        let accounts = lock_account_scores(&txn, t, batch.accounts.keys()).await?;
        // Which contacts already counted as engaged, before this batch's buckets.
        let engaged_before = engaged_pairs(&txn, t, &batch).await?;
        upsert_buckets(&txn, t, &scored).await?;
        let scores = rescore(&txn, t, (&model, today), &batch, &accounts, &engaged_before).await?;
        let sequences = upsert_account_scores(&txn, t, today, &scores).await?;
        upsert_contact_scores(&txn, t, today, &batch, &scores).await?;

        let mut messages = Vec::with_capacity(batch.accounts.len());
        for (account_id, account) in &batch.accounts {
            let sequence = sequences.get(account_id.as_str()).copied().ok_or_else(|| {
                DbErr::Custom(format!("no delivery sequence for account {account_id}"))
            })?;
            let payload = DeliveryPayload {
                sequence,
                contacts: account.new_types.clone(),
            };
            messages.push(outbox::Message {
                partition_key: account_id.clone(),
                payload: serde_json::to_vec(&payload).map_err(ServiceError::internal)?,
            });
        }
        outbox::enqueue_many(&txn, t, SCORE_TOPIC, messages).await?;
        txn.commit().await?;
        Ok(Some(results(items, &stored, &scored)))
    }

    // ----- reads -----

    /// An account's totals today, or NOT_FOUND without any activity. The
    /// buckets are summed per type and day in the database (a read returns
    /// tens of rows, not one per contact, type and day); `per_contact` is
    /// left empty.
    pub async fn account_totals(
        &self,
        tenant: &TenantId,
        account_id: &str,
    ) -> ServiceResult<Totals> {
        let t = tenant.as_str();
        let model = current_model(&self.db, t).await?;
        let today = today();
        let rows = self
            .db
            .query_all_raw(stmt(
                &self.db,
                // PostgreSQL sums BIGINTs as NUMERIC; the cast keeps them integers.
                "SELECT activity_type, intent, day, CAST(SUM(points) AS BIGINT) AS points, \
                 CAST(SUM(activity_count) AS BIGINT) AS activity_count FROM score_buckets \
                 WHERE tenant_id = $1 AND account_id = $2 GROUP BY activity_type, intent, day",
                vec![t.into(), account_id.into()],
            ))
            .await?;
        let mut totals = Totals::default();
        for row in rows {
            let activity_type: String = row.try_get_by_index(0)?;
            let intent: bool = row.try_get_by_index(1)?;
            let day: i64 = row.try_get_by_index(2)?;
            let points: i64 = row.try_get_by_index(3)?;
            let count: i64 = row.try_get_by_index(4)?;
            let value =
                points as f64 * domain::decay_factor(model.decay_half_life_days, day, today);
            totals.activities += count;
            if intent {
                totals.intent += value;
            } else {
                totals.engagement += value;
                let entry = totals.breakdown.entry(activity_type).or_default();
                entry.0 += count;
                entry.1 += value;
            }
        }
        if totals.activities == 0 {
            return Err(ServiceError::not_found("account score", account_id));
        }
        let engaged = self
            .db
            .query_one_raw(stmt(
                &self.db,
                "SELECT COUNT(DISTINCT contact_id) AS n FROM score_buckets \
                 WHERE tenant_id = $1 AND account_id = $2 AND intent = $3",
                vec![t.into(), account_id.into(), false.into()],
            ))
            .await?;
        let engaged: i64 = match engaged {
            Some(row) => row.try_get_by_index(0)?,
            None => 0,
        };
        totals.engaged_contacts = i32::try_from(engaged).unwrap_or(i32::MAX);
        Ok(totals)
    }

    /// A contact's score today and its breakdown, or NOT_FOUND.
    pub async fn contact_totals(
        &self,
        tenant: &TenantId,
        contact_id: &str,
    ) -> ServiceResult<(String, Totals)> {
        let row = self
            .db
            .query_one_raw(stmt(
                &self.db,
                "SELECT account_id FROM contact_scores WHERE tenant_id = $1 AND contact_id = $2",
                vec![tenant.as_str().into(), contact_id.into()],
            ))
            .await?
            .ok_or_else(|| ServiceError::not_found("contact score", contact_id))?;
        let account_id: String = row.try_get("", "account_id")?;
        let model = current_model(&self.db, tenant.as_str()).await?;
        let rows = bucket_rows(&self.db, tenant.as_str(), &account_id, Some(contact_id)).await?;
        Ok((account_id, totals_from(rows, &model, today())))
    }

    /// Accounts by engagement score, highest first. With decay on, scores
    /// computed on an earlier day are brought up to today first.
    pub async fn top_accounts(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
    ) -> ServiceResult<(Vec<(String, Totals)>, String)> {
        // A bad token is refused before the stale scores are refreshed.
        let (after_score, after_id) = match &page.after {
            Some(token) => {
                let (score, id) = token
                    .split_once('|')
                    .and_then(|(s, id)| Some((s.parse::<f64>().ok()?, id.to_owned())))
                    .ok_or_else(|| {
                        ServiceError::invalid("page_token", "is not a token returned by this list")
                    })?;
                (Some(score), id)
            }
            None => (None, String::new()),
        };
        let t = tenant.as_str();
        let model = current_model(&self.db, t).await?;
        let today = today();
        // Scores of an earlier day miss that day's decay; marked ones follow
        // a model change. Each is recomputed unless a batch did it meanwhile.
        let stale_before = if model.decays() { today } else { 0 };
        let stale = self
            .db
            .query_all_raw(stmt(
                &self.db,
                "SELECT account_id, computed_day FROM account_scores WHERE tenant_id = $1 AND computed_day < $2",
                vec![t.into(), stale_before.into()],
            ))
            .await?;
        for row in stale {
            let account_id: String = row.try_get("", "account_id")?;
            let computed_day: i64 = row.try_get("", "computed_day")?;
            let totals = compute(&self.db, t, &account_id, &model, today).await?;
            self.db
                .execute_raw(stmt(
                    &self.db,
                    "UPDATE account_scores SET engagement_score = $1, intent_score = $2, \
                     engaged_contacts = $3, computed_day = $4 \
                     WHERE tenant_id = $5 AND account_id = $6 AND computed_day = $7",
                    vec![
                        totals.engagement.into(),
                        totals.intent.into(),
                        totals.engaged_contacts.into(),
                        today.into(),
                        t.into(),
                        account_id.into(),
                        computed_day.into(),
                    ],
                ))
                .await?;
        }
        let sql = if after_score.is_some() {
            "SELECT account_id FROM account_scores WHERE tenant_id = $1 AND \
             (engagement_score < $2 OR (engagement_score = $2 AND account_id > $3)) \
             ORDER BY engagement_score DESC, account_id LIMIT $4"
        } else {
            "SELECT account_id FROM account_scores WHERE tenant_id = $1 \
             ORDER BY engagement_score DESC, account_id LIMIT $2"
        };
        let mut values: Vec<Value> = vec![t.into()];
        if let Some(score) = after_score {
            values.push(score.into());
            values.push(after_id.into());
        }
        values.push((page.fetch_limit() as i64).into());
        let ids: Vec<String> = self
            .db
            .query_all_raw(stmt(&self.db, sql, values))
            .await?
            .iter()
            .map(|r| r.try_get("", "account_id"))
            .collect::<Result<_, _>>()?;
        let mut accounts = Vec::with_capacity(ids.len());
        for id in ids {
            let totals = compute(&self.db, t, &id, &model, today).await?;
            accounts.push((id, totals));
        }
        Ok(page.finish(accounts, |(id, totals)| {
            format!("{:?}|{id}", totals.engagement)
        }))
    }

    /// The ledger of an account, oldest activity first.
    pub async fn ledger(
        &self,
        tenant: &TenantId,
        account_id: &str,
        page: &PageRequest,
    ) -> ServiceResult<(Vec<LedgerLine>, String)> {
        let t = tenant.as_str();
        let model = current_model(&self.db, t).await?;
        let today = today();
        let (sql, values): (&str, Vec<Value>) = match &page.after {
            Some(token) => {
                let (ms, id) = token
                    .split_once('|')
                    .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_owned())))
                    .ok_or_else(|| {
                        ServiceError::invalid("page_token", "is not a token returned by this list")
                    })?;
                (
                    "SELECT * FROM activities WHERE tenant_id = $1 AND account_id = $2 AND \
                     (occurred_at_ms > $3 OR (occurred_at_ms = $3 AND event_id > $4)) \
                     ORDER BY occurred_at_ms, event_id LIMIT $5",
                    vec![
                        t.into(),
                        account_id.into(),
                        ms.into(),
                        id.into(),
                        (page.fetch_limit() as i64).into(),
                    ],
                )
            }
            None => (
                "SELECT * FROM activities WHERE tenant_id = $1 AND account_id = $2 \
                 ORDER BY occurred_at_ms, event_id LIMIT $3",
                vec![
                    t.into(),
                    account_id.into(),
                    (page.fetch_limit() as i64).into(),
                ],
            ),
        };
        let rows = self.db.query_all_raw(stmt(&self.db, sql, values)).await?;
        let mut lines = Vec::with_capacity(rows.len());
        for row in rows {
            let occurred_at_ms: i64 = row.try_get("", "occurred_at_ms")?;
            lines.push(LedgerLine {
                event_id: row.try_get("", "event_id")?,
                activity_type: row.try_get("", "activity_type")?,
                contact_id: row.try_get("", "contact_id")?,
                occurred_at_ms,
                model_version: row.try_get("", "model_version")?,
                rule_points: row.try_get("", "rule_points")?,
                counted_points: row.try_get("", "counted_points")?,
                capped: row.try_get("", "capped")?,
                intent: row.try_get("", "intent")?,
                decay_factor: domain::decay_factor(
                    model.decay_half_life_days,
                    domain::day_of(occurred_at_ms),
                    today,
                ),
            });
        }
        Ok(page.finish(lines, |l| format!("{}|{}", l.occurred_at_ms, l.event_id)))
    }

    /// Replays the stored activities of a window through the current and a
    /// proposed model, reading them in pages ordered by account (memory
    /// holds one account at a time).
    pub async fn simulate(
        &self,
        tenant: &TenantId,
        current: (ScoringModel, Thresholds),
        proposed: (ScoringModel, Thresholds),
        window: (i64, i64),
        sample_size: usize,
    ) -> ServiceResult<SimulationResult> {
        let t = tenant.as_str();
        let mut simulation = Simulation::new(current, proposed, today(), sample_size);
        // One read transaction: a consistent snapshot on both backends.
        let txn = self.db.begin().await?;
        let mut after: Option<(String, i64, String)> = None;
        loop {
            let (sql, mut values): (&str, Vec<Value>) = match &after {
                None => (
                    "SELECT account_id, contact_id, activity_type, occurred_at_ms, event_id FROM activities \
                     WHERE tenant_id = $1 AND occurred_at_ms >= $2 AND occurred_at_ms < $3 \
                     ORDER BY account_id, occurred_at_ms, event_id LIMIT $4",
                    vec![t.into(), window.0.into(), window.1.into()],
                ),
                Some(_) => (
                    "SELECT account_id, contact_id, activity_type, occurred_at_ms, event_id FROM activities \
                     WHERE tenant_id = $1 AND occurred_at_ms >= $2 AND occurred_at_ms < $3 AND \
                     (account_id > $5 OR (account_id = $5 AND (occurred_at_ms > $6 OR (occurred_at_ms = $6 AND event_id > $7)))) \
                     ORDER BY account_id, occurred_at_ms, event_id LIMIT $4",
                    vec![t.into(), window.0.into(), window.1.into()],
                ),
            };
            values.push(10_000_i64.into());
            if let Some((account, ms, event)) = &after {
                values.extend([account.clone().into(), (*ms).into(), event.clone().into()]);
            }
            let rows = txn.query_all_raw(stmt(&txn, sql, values)).await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let account_id: String = row.try_get("", "account_id")?;
                let contact_id: Option<String> = row.try_get("", "contact_id")?;
                let activity_type: String = row.try_get("", "activity_type")?;
                let ms: i64 = row.try_get("", "occurred_at_ms")?;
                simulation.push(
                    &account_id,
                    ReplayActivity {
                        contact_id: contact_id.as_deref(),
                        activity_type: &activity_type,
                        day: domain::day_of(ms),
                    },
                );
                after = Some((account_id, ms, row.try_get("", "event_id")?));
            }
            if rows.len() < 10_000 {
                break;
            }
        }
        txn.commit().await?;
        Ok(simulation.finish())
    }

    /// The totals to deliver for accounts now, with decay applied: the
    /// scores their last batch stored (what GetAccountScore computes from the
    /// buckets, without reading them), or recomputed for an account whose
    /// stored scores are stale. Each account's `per_contact` holds the
    /// contacts asked for only. Two reads for all the accounts, whatever
    /// their number, plus one per stale account.
    pub async fn delivery_totals(
        &self,
        tenant_id: &str,
        accounts: &[(&str, Vec<&str>)],
    ) -> ServiceResult<HashMap<String, Totals>> {
        let today = today();
        let mut found: HashMap<String, Totals> = HashMap::with_capacity(accounts.len());
        let ids: Vec<&str> = accounts.iter().map(|(id, _)| *id).collect();
        for chunk in statement_chunks(&ids, 1) {
            let sql = format!(
                "SELECT account_id, engagement_score, intent_score, engaged_contacts FROM account_scores \
                 WHERE tenant_id = $1 AND computed_day = $2 AND account_id IN ({})",
                placeholders(3, chunk.len())
            );
            let mut values: Vec<Value> = vec![tenant_id.into(), today.into()];
            values.extend(chunk.iter().map(|id| Value::from(*id)));
            for row in self.db.query_all_raw(stmt(&self.db, &sql, values)).await? {
                found.insert(
                    row.try_get("", "account_id")?,
                    Totals {
                        engagement: row.try_get("", "engagement_score")?,
                        intent: row.try_get("", "intent_score")?,
                        engaged_contacts: row.try_get("", "engaged_contacts")?,
                        ..Totals::default()
                    },
                );
            }
        }
        let contacts: Vec<&str> = accounts
            .iter()
            .filter(|(id, _)| found.contains_key(*id))
            .flat_map(|(_, contacts)| contacts.iter().copied())
            .collect();
        for chunk in statement_chunks(&contacts, 1) {
            let sql = format!(
                "SELECT account_id, contact_id, engagement_score FROM contact_scores \
                 WHERE tenant_id = $1 AND computed_day = $2 AND contact_id IN ({})",
                placeholders(3, chunk.len())
            );
            let mut values: Vec<Value> = vec![tenant_id.into(), today.into()];
            values.extend(chunk.iter().map(|c| Value::from(*c)));
            for row in self.db.query_all_raw(stmt(&self.db, &sql, values)).await? {
                let account_id: String = row.try_get("", "account_id")?;
                if let Some(totals) = found.get_mut(&account_id) {
                    totals.per_contact.insert(
                        row.try_get("", "contact_id")?,
                        row.try_get("", "engagement_score")?,
                    );
                }
            }
        }
        // Stale: no row for today, or a contact without today's score.
        let mut model = None;
        for (account_id, contacts) in accounts {
            let fresh = found
                .get(*account_id)
                .is_some_and(|totals| contacts.iter().all(|c| totals.per_contact.contains_key(*c)));
            if fresh {
                continue;
            }
            if model.is_none() {
                model = Some(current_model(&self.db, tenant_id).await?);
            }
            let model = model.as_ref().ok_or_else(|| {
                ServiceError::internal(anyhow::anyhow!("the scoring model was not loaded"))
            })?;
            let totals = compute(&self.db, tenant_id, account_id, model, today).await?;
            found.insert((*account_id).to_owned(), totals);
        }
        Ok(found)
    }
}

async fn current_model(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
) -> ServiceResult<ScoringModel> {
    let row = conn
        .query_one_raw(stmt(
            conn,
            "SELECT * FROM scoring_models WHERE tenant_id = $1 ORDER BY version DESC LIMIT 1",
            vec![tenant_id.into()],
        ))
        .await?;
    row.map_or_else(|| Ok(ScoringModel::default()), |r| model_from_row(&r))
}

fn model_from_row(row: &sea_orm::QueryResult) -> ServiceResult<ScoringModel> {
    let rules: String = row.try_get("", "rules")?;
    let intent: String = row.try_get("", "intent_activity_types")?;
    Ok(ScoringModel {
        version: row.try_get("", "version")?,
        rules: serde_json::from_str::<Vec<ScoringRule>>(&rules)
            .map_err(|e| ServiceError::internal(anyhow::anyhow!("stored rules unreadable: {e}")))?,
        decay_half_life_days: row.try_get("", "decay_half_life_days")?,
        intent_activity_types: serde_json::from_str(&intent).map_err(|e| {
            ServiceError::internal(anyhow::anyhow!("stored intent types unreadable: {e}"))
        })?,
        created_at_ms: Some(row.try_get("", "created_at_ms")?),
        created_by: Some(row.try_get("", "created_by")?),
    })
}

/// Each touched account's new stored score: the stored one plus the batch
/// while it is from today, or recomputed from the buckets (already holding
/// the batch) when it is new, misses a day's decay, or follows a model change.
async fn rescore(
    conn: &impl ConnectionTrait,
    t: &str,
    (model, today): (&ScoringModel, i64),
    batch: &domain::BatchScores,
    accounts: &HashMap<String, domain::StoredScore>,
    engaged_before: &BTreeSet<(String, String)>,
) -> ServiceResult<BTreeMap<String, Totals>> {
    let contacts = stored_contact_scores(conn, t, batch.contacts()).await?;
    let mut result = BTreeMap::new();
    let mut recompute = Vec::new();
    for (account_id, add) in &batch.accounts {
        let current = accounts
            .get(account_id)
            .filter(|row| row.computed_day == today);
        // Each contact's stored score must be this account's, of today, or
        // absent (then it has no buckets here either).
        let contacts_current = add.new_types.keys().all(|c| {
            contacts
                .get(c.as_str())
                .is_none_or(|(account, day, _)| account == account_id && *day == today)
        });
        match current {
            Some(current) if contacts_current => {
                let previous =
                    |contact: &str| contacts.get(contact).map_or(0.0, |(_, _, score)| *score);
                let was_engaged = |contact: &str| {
                    engaged_before.contains(&(account_id.clone(), contact.to_owned()))
                };
                result.insert(
                    account_id.clone(),
                    domain::add_batch(current, add, previous, was_engaged),
                );
            }
            _ => recompute.push(account_id.as_str()),
        }
    }
    for (account_id, rows) in bucket_rows_of(conn, t, &recompute).await? {
        result.insert(account_id, totals_from(rows, model, today));
    }
    Ok(result)
}

/// `($start, ...), (...)`: `rows` tuples of `width` placeholders.
fn tuples(start: usize, rows: usize, width: usize) -> String {
    use std::fmt::Write;
    let mut sql = String::with_capacity(rows * width * 6);
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..width {
            let _ = write!(
                sql,
                "{}${}",
                if c == 0 { "" } else { ", " },
                start + r * width + c
            );
        }
        sql.push(')');
    }
    sql
}

/// A fresh activity of a batch with its score.
struct ScoredActivity<'a> {
    /// Position in the request.
    index: usize,
    item: &'a NewActivity,
    scored: domain::Scored,
    day: i64,
}

/// Ids of `items` stored before, with what they were stored as.
async fn stored_before(
    conn: &impl ConnectionTrait,
    t: &str,
    items: &[NewActivity],
) -> Result<HashMap<String, Recorded>, DbErr> {
    let mut stored = HashMap::new();
    for chunk in statement_chunks(items, 1) {
        let sql = format!(
            "SELECT event_id, account_id, contact_id, counted_points FROM activities \
             WHERE tenant_id = $1 AND event_id IN ({})",
            placeholders(2, chunk.len())
        );
        let mut values: Vec<Value> = vec![t.into()];
        values.extend(chunk.iter().map(|i| Value::from(i.event_id.clone())));
        for row in conn.query_all_raw(stmt(conn, &sql, values)).await? {
            let event_id: String = row.try_get("", "event_id")?;
            stored.insert(
                event_id,
                Recorded::Duplicate {
                    account_id: row.try_get("", "account_id")?,
                    contact_id: row.try_get("", "contact_id")?,
                    counted_points: row.try_get("", "counted_points")?,
                },
            );
        }
    }
    Ok(stored)
}

/// One result per item, in request order.
fn results(
    items: &[NewActivity],
    stored: &HashMap<String, Recorded>,
    scored: &[ScoredActivity<'_>],
) -> Vec<Recorded> {
    let mut result: Vec<Option<Recorded>> = vec![None; items.len()];
    let mut first: HashMap<&str, &ScoredActivity<'_>> = HashMap::with_capacity(scored.len());
    for s in scored {
        result[s.index] = Some(Recorded::New {
            counted_points: s.scored.counted_points,
        });
        first.insert(s.item.event_id.as_str(), s);
    }
    items
        .iter()
        .zip(result)
        .map(|(item, recorded)| {
            // Otherwise stored before, or an earlier item of this batch had the id.
            recorded.unwrap_or_else(|| {
                stored.get(&item.event_id).cloned().unwrap_or_else(|| {
                    let first = first.get(item.event_id.as_str());
                    Recorded::Duplicate {
                        account_id: first
                            .map_or_else(|| item.account_id.clone(), |f| f.item.account_id.clone()),
                        contact_id: first
                            .map_or_else(|| item.contact_id.clone(), |f| f.item.contact_id.clone()),
                        counted_points: first.map_or(0, |f| f.scored.counted_points),
                    }
                })
            })
        })
        .collect()
}

/// The usage rows of `keys`, created at zero where missing, and locked until
/// commit on PostgreSQL (SQLite's transaction already holds the write lock).
/// Rows are created and locked in key order, so concurrent batches queue
/// rather than deadlock.
async fn lock_usage(
    conn: &impl ConnectionTrait,
    t: &str,
    keys: &BTreeSet<UsageKey>,
) -> Result<HashMap<UsageKey, Usage>, DbErr> {
    let keys: Vec<&UsageKey> = keys.iter().collect();
    let postgres = conn.get_database_backend() == sea_orm::DbBackend::Postgres;
    let mut usage = HashMap::with_capacity(keys.len());
    for chunk in statement_chunks(&keys, 6) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 4);
        for (subject, kind, period) in chunk {
            values.extend([
                t.into(),
                subject.clone().into(),
                kind.clone().into(),
                (*period).into(),
            ]);
        }
        // Keys are sorted, so rows are created (and locked) in key order.
        let mut zeros: Vec<Value> = Vec::with_capacity(chunk.len() * 6);
        for key in values.chunks(4) {
            zeros.extend(key.iter().cloned());
            zeros.extend([0_i64.into(), 0_i64.into()]);
        }
        let sql = format!(
            "INSERT INTO rule_usage (tenant_id, subject, activity_type, period, points, occurrences) \
             VALUES {} ON CONFLICT (tenant_id, subject, activity_type, period) DO NOTHING",
            tuples(1, chunk.len(), 6)
        );
        conn.execute_raw(stmt(conn, &sql, zeros)).await?;
        // Joined from the keys so each is one index lookup.
        let sql = format!(
            "SELECT u.subject, u.activity_type, u.period, u.points, u.occurrences \
             FROM (VALUES {}) AS k JOIN rule_usage u ON u.tenant_id = k.column1 \
             AND u.subject = k.column2 AND u.activity_type = k.column3 AND u.period = k.column4 \
             ORDER BY u.subject, u.activity_type, u.period{}",
            tuples(1, chunk.len(), 4),
            if postgres { " FOR UPDATE OF u" } else { "" }
        );
        for row in conn.query_all_raw(stmt(conn, &sql, values)).await? {
            usage.insert(
                (
                    row.try_get("", "subject")?,
                    row.try_get("", "activity_type")?,
                    row.try_get("", "period")?,
                ),
                Usage {
                    points: row.try_get("", "points")?,
                    occurrences: row.try_get("", "occurrences")?,
                },
            );
        }
    }
    if usage.len() != keys.len() {
        return Err(DbErr::Custom("rule usage rows missing".into()));
    }
    Ok(usage)
}

/// Adds what the batch used to the (locked) usage rows.
async fn write_usage(
    conn: &impl ConnectionTrait,
    t: &str,
    after: &HashMap<UsageKey, Usage>,
    before: &HashMap<UsageKey, Usage>,
) -> Result<(), DbErr> {
    let mut deltas: Vec<(&UsageKey, Usage)> = after
        .iter()
        .map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or_default();
            let delta = Usage {
                points: a.points - b.points,
                occurrences: a.occurrences - b.occurrences,
            };
            (k, delta)
        })
        .filter(|(_, d)| d.points != 0 || d.occurrences != 0)
        .collect();
    deltas.sort_by(|a, b| a.0.cmp(b.0));
    for chunk in statement_chunks(&deltas, 6) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 6);
        for ((subject, kind, period), delta) in chunk {
            values.extend([
                t.into(),
                subject.clone().into(),
                kind.clone().into(),
                (*period).into(),
                delta.points.into(),
                delta.occurrences.into(),
            ]);
        }
        let sql = format!(
            "INSERT INTO rule_usage (tenant_id, subject, activity_type, period, points, occurrences) \
             VALUES {} ON CONFLICT (tenant_id, subject, activity_type, period) DO UPDATE SET \
             points = rule_usage.points + excluded.points, \
             occurrences = rule_usage.occurrences + excluded.occurrences",
            tuples(1, chunk.len(), 6)
        );
        conn.execute_raw(stmt(conn, &sql, values)).await?;
    }
    Ok(())
}

/// Inserts the scored activities (in event id order, so concurrent batches
/// lock in the same order); returns how many were new.
async fn insert_activities(
    conn: &impl ConnectionTrait,
    t: &str,
    model_version: i64,
    scored: &[ScoredActivity<'_>],
) -> Result<usize, DbErr> {
    let now = time::now().timestamp_millis();
    let mut rows: Vec<&ScoredActivity<'_>> = scored.iter().collect();
    rows.sort_by(|a, b| a.item.event_id.cmp(&b.item.event_id));
    let mut inserted = 0;
    for chunk in statement_chunks(&rows, 12) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 12);
        for s in chunk {
            values.extend([
                t.into(),
                s.item.event_id.clone().into(),
                s.item.account_id.clone().into(),
                s.item.contact_id.clone().into(),
                s.item.activity_type.clone().into(),
                s.item.occurred_at_ms.into(),
                model_version.into(),
                s.scored.rule_points.into(),
                s.scored.counted_points.into(),
                s.scored.capped.into(),
                s.scored.intent.into(),
                now.into(),
            ]);
        }
        let sql = format!(
            "INSERT INTO activities (tenant_id, event_id, account_id, contact_id, activity_type, \
             occurred_at_ms, model_version, rule_points, counted_points, capped, intent, recorded_at_ms) \
             VALUES {} ON CONFLICT (tenant_id, event_id) DO NOTHING RETURNING event_id",
            tuples(1, chunk.len(), 12)
        );
        inserted += conn.query_all_raw(stmt(conn, &sql, values)).await?.len();
    }
    Ok(inserted)
}

/// The (account, contact or "") pairs of the batch's engagement that had
/// engagement buckets before it: those contacts were already engaged.
async fn engaged_pairs(
    conn: &impl ConnectionTrait,
    t: &str,
    batch: &domain::BatchScores,
) -> Result<BTreeSet<(String, String)>, DbErr> {
    let pairs: Vec<(&String, &String)> = batch
        .accounts
        .iter()
        .flat_map(|(account, add)| add.contact_points.keys().map(move |c| (account, c)))
        .collect();
    let mut engaged = BTreeSet::new();
    for chunk in statement_chunks(&pairs, 2) {
        let mut values: Vec<Value> = vec![t.into(), false.into()];
        for (account, contact) in chunk {
            values.extend([(*account).clone().into(), (*contact).clone().into()]);
        }
        let sql = format!(
            "SELECT k.column1 AS account_id, k.column2 AS contact_id FROM (VALUES {}) AS k \
             WHERE EXISTS (SELECT 1 FROM score_buckets b WHERE b.tenant_id = $1 \
             AND b.account_id = k.column1 AND b.contact_id = k.column2 AND b.intent = $2)",
            tuples(3, chunk.len(), 2)
        );
        for row in conn.query_all_raw(stmt(conn, &sql, values)).await? {
            engaged.insert((
                row.try_get("", "account_id")?,
                row.try_get("", "contact_id")?,
            ));
        }
    }
    Ok(engaged)
}

/// Adds the batch to the per-day buckets, aggregated per key first.
async fn upsert_buckets(
    conn: &impl ConnectionTrait,
    t: &str,
    scored: &[ScoredActivity<'_>],
) -> Result<(), DbErr> {
    let mut buckets: BTreeMap<BucketKey, (i64, i64)> = BTreeMap::new();
    for s in scored {
        let entry = buckets
            .entry((
                s.item.account_id.clone(),
                s.item.contact_id.clone().unwrap_or_default(),
                s.item.activity_type.clone(),
                s.scored.intent,
                s.day,
            ))
            .or_default();
        entry.0 += i64::from(s.scored.counted_points);
        entry.1 += 1;
    }
    let buckets: Vec<_> = buckets.into_iter().collect();
    for chunk in statement_chunks(&buckets, 8) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 8);
        for ((account, contact, kind, intent, day), (points, count)) in chunk {
            values.extend([
                t.into(),
                account.clone().into(),
                contact.clone().into(),
                kind.clone().into(),
                (*intent).into(),
                (*day).into(),
                (*points).into(),
                (*count).into(),
            ]);
        }
        let sql = format!(
            "INSERT INTO score_buckets (tenant_id, account_id, contact_id, activity_type, intent, day, points, activity_count) \
             VALUES {} ON CONFLICT (tenant_id, account_id, contact_id, activity_type, intent, day) \
             DO UPDATE SET points = score_buckets.points + excluded.points, \
             activity_count = score_buckets.activity_count + excluded.activity_count",
            tuples(1, chunk.len(), 8)
        );
        conn.execute_raw(stmt(conn, &sql, values)).await?;
    }
    Ok(())
}

/// The stored scores of these accounts, locked until commit on PostgreSQL so
/// concurrent batches of one account add up rather than overwrite each
/// other. A missing row is created first as a stale placeholder (a second
/// batch waits for it), which makes the caller compute it from the buckets.
async fn lock_account_scores<'a>(
    conn: &impl ConnectionTrait,
    t: &str,
    accounts: impl Iterator<Item = &'a String>,
) -> Result<HashMap<String, domain::StoredScore>, DbErr> {
    let accounts: Vec<&String> = accounts.collect();
    let postgres = conn.get_database_backend() == sea_orm::DbBackend::Postgres;
    let mut stored = HashMap::with_capacity(accounts.len());
    for chunk in statement_chunks(&accounts, 7) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 7);
        for account_id in chunk {
            values.extend([
                t.into(),
                (*account_id).clone().into(),
                0.0_f64.into(),
                0.0_f64.into(),
                0_i32.into(),
                STALE_DAY.into(),
                0_i64.into(),
            ]);
        }
        let sql = format!(
            "INSERT INTO account_scores (tenant_id, account_id, engagement_score, intent_score, \
             engaged_contacts, computed_day, delivery_seq) VALUES {} \
             ON CONFLICT (tenant_id, account_id) DO NOTHING",
            tuples(1, chunk.len(), 7)
        );
        conn.execute_raw(stmt(conn, &sql, values)).await?;
        let sql = format!(
            "SELECT account_id, engagement_score, intent_score, engaged_contacts, computed_day \
             FROM account_scores WHERE tenant_id = $1 AND account_id IN ({}) ORDER BY account_id{}",
            placeholders(2, chunk.len()),
            if postgres { " FOR UPDATE" } else { "" }
        );
        let mut values: Vec<Value> = vec![t.into()];
        values.extend(chunk.iter().map(|a| Value::from((*a).clone())));
        for row in conn.query_all_raw(stmt(conn, &sql, values)).await? {
            stored.insert(
                row.try_get("", "account_id")?,
                domain::StoredScore {
                    engagement: row.try_get("", "engagement_score")?,
                    intent: row.try_get("", "intent_score")?,
                    engaged_contacts: row.try_get("", "engaged_contacts")?,
                    computed_day: row.try_get("", "computed_day")?,
                },
            );
        }
    }
    Ok(stored)
}

/// Stored contact scores: contact -> (account, computed day, score).
async fn stored_contact_scores<'a>(
    conn: &impl ConnectionTrait,
    t: &str,
    contacts: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, (String, i64, f64)>, DbErr> {
    let contacts: Vec<&str> = contacts.collect();
    let mut stored = HashMap::with_capacity(contacts.len());
    for chunk in statement_chunks(&contacts, 1) {
        let sql = format!(
            "SELECT contact_id, account_id, computed_day, engagement_score FROM contact_scores \
             WHERE tenant_id = $1 AND contact_id IN ({})",
            placeholders(2, chunk.len())
        );
        let mut values: Vec<Value> = vec![t.into()];
        values.extend(chunk.iter().map(|c| Value::from(*c)));
        for row in conn.query_all_raw(stmt(conn, &sql, values)).await? {
            stored.insert(
                row.try_get("", "contact_id")?,
                (
                    row.try_get("", "account_id")?,
                    row.try_get("", "computed_day")?,
                    row.try_get("", "engagement_score")?,
                ),
            );
        }
    }
    Ok(stored)
}

/// Writes the accounts' scores; returns each account's new delivery sequence.
async fn upsert_account_scores(
    conn: &impl ConnectionTrait,
    t: &str,
    today: i64,
    scores: &BTreeMap<String, Totals>,
) -> Result<HashMap<String, i64>, DbErr> {
    let rows: Vec<(&String, &Totals)> = scores.iter().collect();
    let mut sequences = HashMap::with_capacity(rows.len());
    for chunk in statement_chunks(&rows, 7) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 7);
        for (account_id, totals) in chunk {
            values.extend([
                t.into(),
                (*account_id).clone().into(),
                totals.engagement.into(),
                totals.intent.into(),
                totals.engaged_contacts.into(),
                today.into(),
                1_i64.into(),
            ]);
        }
        let sql = format!(
            "INSERT INTO account_scores (tenant_id, account_id, engagement_score, intent_score, \
             engaged_contacts, computed_day, delivery_seq) VALUES {} ON CONFLICT (tenant_id, account_id) DO UPDATE SET \
             engagement_score = excluded.engagement_score, intent_score = excluded.intent_score, \
             engaged_contacts = excluded.engaged_contacts, computed_day = excluded.computed_day, \
             delivery_seq = account_scores.delivery_seq + 1 RETURNING account_id, delivery_seq",
            tuples(1, chunk.len(), 7)
        );
        for row in conn.query_all_raw(stmt(conn, &sql, values)).await? {
            sequences.insert(
                row.try_get("", "account_id")?,
                row.try_get("", "delivery_seq")?,
            );
        }
    }
    Ok(sequences)
}

/// Writes the scores of the batch's contacts.
async fn upsert_contact_scores(
    conn: &impl ConnectionTrait,
    t: &str,
    today: i64,
    batch: &domain::BatchScores,
    scores: &BTreeMap<String, Totals>,
) -> Result<(), DbErr> {
    // A contact seen under two accounts in one batch is written once (one
    // statement cannot update a row twice): the last account wins.
    let mut rows: BTreeMap<&String, (&String, f64)> = BTreeMap::new();
    for (account, add) in &batch.accounts {
        let per_contact = scores.get(account).map(|s| &s.per_contact);
        for contact in add.new_types.keys() {
            let score = per_contact
                .and_then(|p| p.get(contact))
                .copied()
                .unwrap_or(0.0);
            rows.insert(contact, (account, score));
        }
    }
    let rows: Vec<(&String, &String, f64)> =
        rows.into_iter().map(|(c, (a, s))| (c, a, s)).collect();
    for chunk in statement_chunks(&rows, 5) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 5);
        for (contact, account, score) in chunk {
            values.extend([
                t.into(),
                (*contact).clone().into(),
                (*account).clone().into(),
                (*score).into(),
                today.into(),
            ]);
        }
        let sql = format!(
            "INSERT INTO contact_scores (tenant_id, contact_id, account_id, engagement_score, computed_day) \
             VALUES {} ON CONFLICT (tenant_id, contact_id) DO UPDATE SET \
             account_id = excluded.account_id, engagement_score = excluded.engagement_score, \
             computed_day = excluded.computed_day",
            tuples(1, chunk.len(), 5)
        );
        conn.execute_raw(stmt(conn, &sql, values)).await?;
    }
    Ok(())
}

type BucketRow = (String, String, bool, i64, i64, i64);
/// (account, contact or "", activity type, intent, day) of a score bucket.
type BucketKey = (String, String, String, bool, i64);

async fn bucket_rows(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    account_id: &str,
    contact_id: Option<&str>,
) -> Result<Vec<BucketRow>, DbErr> {
    let (filter, mut values): (&str, Vec<Value>) = match contact_id {
        Some(contact) => (" AND contact_id = $3", vec![contact.into()]),
        None => ("", vec![]),
    };
    let sql = format!(
        "SELECT contact_id, activity_type, intent, day, points, activity_count FROM score_buckets \
         WHERE tenant_id = $1 AND account_id = $2{filter}"
    );
    let mut all: Vec<Value> = vec![tenant_id.into(), account_id.into()];
    all.append(&mut values);
    conn.query_all_raw(stmt(conn, &sql, all))
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("", "contact_id")?,
                r.try_get("", "activity_type")?,
                r.try_get("", "intent")?,
                r.try_get("", "day")?,
                r.try_get("", "points")?,
                r.try_get("", "activity_count")?,
            ))
        })
        .collect()
}

/// The buckets of several accounts, in one statement per chunk.
async fn bucket_rows_of(
    conn: &impl ConnectionTrait,
    t: &str,
    accounts: &[&str],
) -> Result<BTreeMap<String, Vec<BucketRow>>, DbErr> {
    let mut rows: BTreeMap<String, Vec<BucketRow>> = BTreeMap::new();
    for chunk in statement_chunks(accounts, 1) {
        let sql = format!(
            "SELECT account_id, contact_id, activity_type, intent, day, points, activity_count \
             FROM score_buckets WHERE tenant_id = $1 AND account_id IN ({})",
            placeholders(2, chunk.len())
        );
        let mut values: Vec<Value> = vec![t.into()];
        values.extend(chunk.iter().map(|a| Value::from(*a)));
        for r in conn.query_all_raw(stmt(conn, &sql, values)).await? {
            rows.entry(r.try_get("", "account_id")?).or_default().push((
                r.try_get("", "contact_id")?,
                r.try_get("", "activity_type")?,
                r.try_get("", "intent")?,
                r.try_get("", "day")?,
                r.try_get("", "points")?,
                r.try_get("", "activity_count")?,
            ));
        }
    }
    Ok(rows)
}

fn totals_from(rows: Vec<BucketRow>, model: &ScoringModel, today: i64) -> Totals {
    let mut totals = Totals::default();
    let mut engaged = BTreeSet::new();
    for (contact_id, activity_type, intent, day, points, count) in rows {
        let value = points as f64 * domain::decay_factor(model.decay_half_life_days, day, today);
        totals.activities += count;
        if intent {
            totals.intent += value;
            continue;
        }
        totals.engagement += value;
        let entry = totals.breakdown.entry(activity_type).or_default();
        entry.0 += count;
        entry.1 += value;
        *totals.per_contact.entry(contact_id.clone()).or_default() += value;
        engaged.insert(contact_id);
    }
    totals.engaged_contacts = i32::try_from(engaged.len()).unwrap_or(i32::MAX);
    totals
}

/// An account's totals at `today` from its buckets.
async fn compute(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    account_id: &str,
    model: &ScoringModel,
    today: i64,
) -> ServiceResult<Totals> {
    Ok(totals_from(
        bucket_rows(conn, tenant_id, account_id, None).await?,
        model,
        today,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountAddition, BatchActivity, BatchScores, StoredScore, add_batch};

    /// (contact, activity type, intent, day, points) of one activity.
    type Activity = (Option<&'static str>, &'static str, bool, i64, i32);

    fn buckets(activities: &[Activity]) -> Vec<BucketRow> {
        let mut rows: BTreeMap<(String, String, bool, i64), (i64, i64)> = BTreeMap::new();
        for (contact, kind, intent, day, points) in activities {
            let entry = rows
                .entry((
                    contact.unwrap_or_default().to_owned(),
                    (*kind).to_owned(),
                    *intent,
                    *day,
                ))
                .or_default();
            entry.0 += i64::from(*points);
            entry.1 += 1;
        }
        rows.into_iter()
            .map(|((c, k, i, d), (p, n))| (c, k, i, d, p, n))
            .collect()
    }

    fn addition(activities: &[Activity], model: &ScoringModel, today: i64) -> AccountAddition {
        let batch = BatchScores::of(
            activities
                .iter()
                .map(|(contact, kind, intent, day, points)| BatchActivity {
                    account_id: "a",
                    contact_id: *contact,
                    activity_type: kind,
                    day: *day,
                    points: *points,
                    intent: *intent,
                }),
            model,
            today,
        );
        batch.accounts.get("a").cloned().unwrap_or_default()
    }

    /// Adding a batch to the stored score gives what reading all the
    /// buckets again gives: the invariant the ingest path relies on.
    #[test]
    fn a_batch_added_to_the_stored_score_equals_the_recomputed_score() {
        let earlier: Vec<Activity> = vec![
            (Some("c1"), "email_open", false, 100, 1),
            (Some("c1"), "page_visit", false, 101, 2),
            (Some("c2"), "web_research", true, 101, 10),
            (None, "page_visit", false, 102, 2),
            (Some("c3"), "unsubscribe", false, 102, -5),
        ];
        let batch: Vec<Activity> = vec![
            (Some("c1"), "email_open", false, 103, 1),
            (Some("c2"), "demo_request", false, 103, 100),
            (Some("c4"), "web_research", true, 103, 10),
            (Some("c5"), "email_open", false, 99, 1),
            (None, "page_visit", false, 103, 2),
        ];
        let today = 103;
        for half_life in [0.0, 7.0] {
            let model = ScoringModel {
                decay_half_life_days: half_life,
                ..ScoringModel::default()
            };
            let before = totals_from(buckets(&earlier), &model, today);
            let stored = StoredScore {
                engagement: before.engagement,
                intent: before.intent,
                engaged_contacts: before.engaged_contacts,
                computed_day: today,
            };
            let all: Vec<Activity> = earlier.iter().chain(&batch).copied().collect();
            let expected = totals_from(buckets(&all), &model, today);
            let engaged_before: BTreeSet<String> = earlier
                .iter()
                .filter(|a| !a.2)
                .map(|a| a.0.unwrap_or_default().to_owned())
                .collect();
            let got = add_batch(
                &stored,
                &addition(&batch, &model, today),
                |c| before.per_contact.get(c).copied().unwrap_or(0.0),
                |c| engaged_before.contains(c),
            );
            let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
            assert!(
                close(got.engagement, expected.engagement),
                "{half_life}: {got:?} vs {expected:?}"
            );
            assert!(close(got.intent, expected.intent), "{half_life}");
            assert_eq!(
                got.engaged_contacts, expected.engaged_contacts,
                "{half_life}"
            );
            for contact in ["c1", "c2", "c4", "c5", ""] {
                assert!(
                    close(
                        got.per_contact.get(contact).copied().unwrap_or(0.0),
                        expected.per_contact.get(contact).copied().unwrap_or(0.0)
                    ),
                    "{half_life}: contact {contact}"
                );
            }
            if half_life == 0.0 {
                // Whole points: exactly equal, so delivered and read scores match.
                assert_eq!(got.engagement, expected.engagement);
                assert_eq!(
                    got.engagement,
                    1.0 + 2.0 + 2.0 - 5.0 + 1.0 + 100.0 + 1.0 + 2.0
                );
                assert_eq!(got.intent, 20.0);
                // c1, c2, c3, c5 and the activities without a contact.
                assert_eq!(got.engaged_contacts, 5);
            }
        }
    }

    #[test]
    fn tuples_number_placeholders_row_by_row() {
        assert_eq!(tuples(3, 2, 2), "($3, $4), ($5, $6)");
        assert_eq!(tuples(1, 1, 1), "($1)");
        assert_eq!(tuples(1, 0, 4), "");
    }
}
