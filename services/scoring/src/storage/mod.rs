//! Storage of the scoring service: models, activities (the ledger), rule
//! usage for caps, per-day score buckets, computed scores, and the outbox of
//! score deliveries to lifecycle. Every query is scoped by tenant.

pub mod migration;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cascade_shared::db::begin_write;
use cascade_shared::page::PageRequest;
use cascade_shared::{ServiceError, ServiceResult, TenantId, outbox, time};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement, TransactionTrait, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::domain::simulate::{ReplayActivity, Simulation, SimulationResult, Thresholds};
use crate::domain::{self, ScoringModel, ScoringRule, Usage, UsageKey};

/// Outbox topic of score deliveries to lifecycle; the partition is the account.
pub const SCORE_TOPIC: &str = "engagement_scores";

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

/// An account's or contact's score at a day, with decay applied.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Totals {
    pub engagement: f64,
    pub intent: f64,
    pub engaged_contacts: i32,
    /// Activity type -> (activities, points), engagement only.
    pub breakdown: BTreeMap<String, (i64, f64)>,
    pub per_contact: BTreeMap<String, f64>,
    pub activities: i64,
}

impl Totals {
    pub fn average(&self) -> f64 {
        if self.engaged_contacts > 0 {
            self.engagement / f64::from(self.engaged_contacts)
        } else {
            0.0
        }
    }
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
}

fn stmt(conn: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(conn.get_database_backend(), sql, values)
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
        Self {
            db,
            deliveries_written: Arc::new(Notify::new()),
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
        let current = current_model(&self.db, tenant.as_str()).await?;
        model.version = current.version + 1;
        let now = time::now().timestamp_millis();
        let rules = serde_json::to_string(&model.rules).map_err(ServiceError::internal)?;
        let intent =
            serde_json::to_string(&model.intent_activity_types).map_err(ServiceError::internal)?;
        let result = self
            .db
            .execute_raw(stmt(
                &self.db,
                "INSERT INTO scoring_models (tenant_id, version, rules, decay_half_life_days, \
                 intent_activity_types, created_at_ms, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                vec![
                    tenant.as_str().into(),
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
            Ok(_) => {
                model.created_at_ms = Some(now);
                model.created_by = Some(actor.to_owned());
                Ok(model)
            }
            Err(e) if cascade_shared::error::is_unique_violation(&e) => Err(ServiceError::Aborted(
                "the model was changed by another call at the same time; read it again and retry"
                    .into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    // ----- ingestion -----

    /// Stores and scores a batch in one transaction. Items are in request
    /// order; the result has one entry per item. Duplicate event ids (stored
    /// before, or repeated within the batch) are reported, not counted.
    pub async fn record(
        &self,
        tenant: &TenantId,
        items: &[NewActivity],
    ) -> ServiceResult<Vec<Recorded>> {
        // A concurrent replica may insert some of the same event ids between
        // our check and our insert; then we retry and see them as stored.
        for _ in 0..3 {
            match self.try_record(tenant, items).await? {
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
    ) -> ServiceResult<Option<Vec<Recorded>>> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        let model = current_model(&txn, t).await?;

        // Stored before?
        let mut stored: HashMap<String, Recorded> = HashMap::new();
        for chunk in items.chunks(500) {
            let sql = format!(
                "SELECT event_id, account_id, contact_id, counted_points FROM activities \
                 WHERE tenant_id = $1 AND event_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut values: Vec<Value> = vec![t.into()];
            values.extend(chunk.iter().map(|i| Value::from(i.event_id.clone())));
            for row in txn.query_all_raw(stmt(&txn, &sql, values)).await? {
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

        // The new ones, first occurrence of each id only.
        let mut fresh: Vec<(usize, &NewActivity)> = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            if !stored.contains_key(&item.event_id) && seen.insert(item.event_id.as_str()) {
                fresh.push((i, item));
            }
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
        let mut usage: HashMap<UsageKey, Usage> = HashMap::new();
        for key in &keys {
            usage.insert(key.clone(), lock_usage(&txn, t, key).await?);
        }
        let before = usage.clone();

        // Score in request order.
        let now = time::now().timestamp_millis();
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
            scored.push((*i, *item, s, day));
        }

        // Insert the activities, sorted by id so concurrent batches lock in
        // the same order.
        let mut rows: Vec<_> = scored.iter().collect();
        rows.sort_by(|a, b| a.1.event_id.cmp(&b.1.event_id));
        let mut inserted = 0;
        for chunk in rows.chunks(400) {
            let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 12);
            let mut tuples = Vec::with_capacity(chunk.len());
            for (n, (_, item, s, _)) in chunk.iter().enumerate() {
                tuples.push(format!("({})", placeholders(n * 12 + 1, 12)));
                values.extend([
                    t.into(),
                    item.event_id.clone().into(),
                    item.account_id.clone().into(),
                    item.contact_id.clone().into(),
                    item.activity_type.clone().into(),
                    item.occurred_at_ms.into(),
                    model.version.into(),
                    s.rule_points.into(),
                    s.counted_points.into(),
                    s.capped.into(),
                    s.intent.into(),
                    now.into(),
                ]);
            }
            let sql = format!(
                "INSERT INTO activities (tenant_id, event_id, account_id, contact_id, activity_type, \
                 occurred_at_ms, model_version, rule_points, counted_points, capped, intent, recorded_at_ms) \
                 VALUES {} ON CONFLICT (tenant_id, event_id) DO NOTHING RETURNING event_id",
                tuples.join(", ")
            );
            inserted += txn.query_all_raw(stmt(&txn, &sql, values)).await?.len();
        }
        if inserted != scored.len() {
            txn.rollback().await?;
            return Ok(None);
        }

        // Rule usage: write the deltas.
        let mut deltas: Vec<(&UsageKey, Usage)> = usage
            .iter()
            .map(|(k, after)| {
                let b = before.get(k).copied().unwrap_or_default();
                (
                    k,
                    Usage {
                        points: after.points - b.points,
                        occurrences: after.occurrences - b.occurrences,
                    },
                )
            })
            .filter(|(_, d)| d.points != 0 || d.occurrences != 0)
            .collect();
        deltas.sort_by(|a, b| a.0.cmp(b.0));
        for (key, delta) in deltas {
            txn.execute_raw(stmt(
                &txn,
                "UPDATE rule_usage SET points = points + $1, occurrences = occurrences + $2 \
                 WHERE tenant_id = $3 AND subject = $4 AND activity_type = $5 AND period = $6",
                vec![
                    delta.points.into(),
                    delta.occurrences.into(),
                    t.into(),
                    key.0.clone().into(),
                    key.1.clone().into(),
                    key.2.into(),
                ],
            ))
            .await?;
        }

        // Per-day buckets, aggregated in memory and written once per key.
        let mut buckets: BTreeMap<BucketKey, (i64, i64)> = BTreeMap::new();
        let mut touched: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        for (_, item, s, day) in &scored {
            let contact = item.contact_id.clone().unwrap_or_default();
            let entry = buckets
                .entry((
                    item.account_id.clone(),
                    contact,
                    item.activity_type.clone(),
                    s.intent,
                    *day,
                ))
                .or_default();
            entry.0 += i64::from(s.counted_points);
            entry.1 += 1;
            let contacts = touched.entry(item.account_id.clone()).or_default();
            if let Some(contact_id) = &item.contact_id {
                contacts
                    .entry(contact_id.clone())
                    .or_default()
                    .insert(item.activity_type.clone());
            }
        }
        for chunk in buckets.iter().collect::<Vec<_>>().chunks(400) {
            let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 8);
            let mut tuples = Vec::with_capacity(chunk.len());
            for (n, ((account, contact, kind, intent, day), (points, count))) in
                chunk.iter().enumerate()
            {
                tuples.push(format!("({})", placeholders(n * 8 + 1, 8)));
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
                tuples.join(", ")
            );
            txn.execute_raw(stmt(&txn, &sql, values)).await?;
        }

        // Scores of the touched accounts and contacts, and one delivery each.
        let today = today();
        for (account_id, contacts) in touched {
            let totals = compute(&txn, t, &account_id, &model, today).await?;
            let row = txn
                .query_one_raw(stmt(
                    &txn,
                    "INSERT INTO account_scores (tenant_id, account_id, engagement_score, intent_score, engaged_contacts, computed_day, delivery_seq) \
                     VALUES ($1, $2, $3, $4, $5, $6, 1) ON CONFLICT (tenant_id, account_id) DO UPDATE SET \
                     engagement_score = excluded.engagement_score, intent_score = excluded.intent_score, \
                     engaged_contacts = excluded.engaged_contacts, computed_day = excluded.computed_day, \
                     delivery_seq = account_scores.delivery_seq + 1 RETURNING delivery_seq",
                    vec![t.into(), account_id.clone().into(), totals.engagement.into(), totals.intent.into(), totals.engaged_contacts.into(), today.into()],
                ))
                .await?
                .ok_or_else(|| DbErr::Custom("account score upsert returned nothing".into()))?;
            let sequence: i64 = row.try_get("", "delivery_seq")?;
            for contact_id in contacts.keys() {
                let score = totals.per_contact.get(contact_id).copied().unwrap_or(0.0);
                txn.execute_raw(stmt(
                    &txn,
                    "INSERT INTO contact_scores (tenant_id, contact_id, account_id, engagement_score, computed_day) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, contact_id) DO UPDATE SET \
                     account_id = excluded.account_id, engagement_score = excluded.engagement_score, computed_day = excluded.computed_day",
                    vec![t.into(), contact_id.clone().into(), account_id.clone().into(), score.into(), today.into()],
                ))
                .await?;
            }
            let payload = serde_json::to_vec(&DeliveryPayload { sequence, contacts })
                .map_err(ServiceError::internal)?;
            outbox::enqueue(&txn, t, SCORE_TOPIC, &account_id, payload).await?;
        }
        txn.commit().await?;

        let mut result: Vec<Option<Recorded>> = vec![None; items.len()];
        for (i, _, s, _) in &scored {
            result[*i] = Some(Recorded::New {
                counted_points: s.counted_points,
            });
        }
        for (i, item) in items.iter().enumerate() {
            if result[i].is_none() {
                // Stored before, or an earlier item of this batch had the id.
                result[i] = Some(stored.get(&item.event_id).cloned().unwrap_or_else(|| {
                    let first = scored
                        .iter()
                        .find(|(_, f, _, _)| f.event_id == item.event_id);
                    Recorded::Duplicate {
                        account_id: first
                            .map_or_else(|| item.account_id.clone(), |f| f.1.account_id.clone()),
                        contact_id: first
                            .map_or_else(|| item.contact_id.clone(), |f| f.1.contact_id.clone()),
                        counted_points: first.map_or(0, |f| f.2.counted_points),
                    }
                }));
            }
        }
        Ok(Some(
            result
                .into_iter()
                .map(|r| r.unwrap_or(Recorded::New { counted_points: 0 }))
                .collect(),
        ))
    }

    // ----- reads -----

    /// An account's totals today, or NOT_FOUND without any activity.
    pub async fn account_totals(
        &self,
        tenant: &TenantId,
        account_id: &str,
    ) -> ServiceResult<Totals> {
        let model = current_model(&self.db, tenant.as_str()).await?;
        let totals = compute(&self.db, tenant.as_str(), account_id, &model, today()).await?;
        if totals.activities == 0 {
            return Err(ServiceError::not_found("account score", account_id));
        }
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
        if model.decays() {
            let stale = self
                .db
                .query_all_raw(stmt(
                    &self.db,
                    "SELECT account_id FROM account_scores WHERE tenant_id = $1 AND computed_day < $2",
                    vec![t.into(), today.into()],
                ))
                .await?;
            for row in stale {
                let account_id: String = row.try_get("", "account_id")?;
                let totals = compute(&self.db, t, &account_id, &model, today).await?;
                self.db
                    .execute_raw(stmt(
                        &self.db,
                        "UPDATE account_scores SET engagement_score = $1, intent_score = $2, computed_day = $3 \
                         WHERE tenant_id = $4 AND account_id = $5",
                        vec![totals.engagement.into(), totals.intent.into(), today.into(), t.into(), account_id.into()],
                    ))
                    .await?;
            }
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

    /// The totals to deliver for an account now, with decay applied.
    pub async fn delivery_totals(
        &self,
        tenant_id: &str,
        account_id: &str,
    ) -> ServiceResult<Totals> {
        let model = current_model(&self.db, tenant_id).await?;
        compute(&self.db, tenant_id, account_id, &model, today()).await
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

/// The usage row of a key, created at zero if missing, locked until commit
/// on PostgreSQL (SQLite's transaction already holds the write lock).
async fn lock_usage(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    key: &UsageKey,
) -> Result<Usage, DbErr> {
    conn.execute_raw(stmt(
        conn,
        "INSERT INTO rule_usage (tenant_id, subject, activity_type, period, points, occurrences) \
         VALUES ($1, $2, $3, $4, 0, 0) ON CONFLICT (tenant_id, subject, activity_type, period) DO NOTHING",
        vec![tenant_id.into(), key.0.clone().into(), key.1.clone().into(), key.2.into()],
    ))
    .await?;
    let lock = if conn.get_database_backend() == sea_orm::DbBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let sql = format!(
        "SELECT points, occurrences FROM rule_usage WHERE tenant_id = $1 AND subject = $2 \
         AND activity_type = $3 AND period = $4{lock}"
    );
    let row = conn
        .query_one_raw(stmt(
            conn,
            &sql,
            vec![
                tenant_id.into(),
                key.0.clone().into(),
                key.1.clone().into(),
                key.2.into(),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("rule usage row missing".into()))?;
    Ok(Usage {
        points: row.try_get("", "points")?,
        occurrences: row.try_get("", "occurrences")?,
    })
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
