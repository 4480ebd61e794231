//! Storage of opportunities and opportunity settings, and the outbox of
//! opportunity events for lifecycle. Every query is scoped by tenant.

pub mod migration;

use std::collections::BTreeMap;
use std::sync::Arc;

use cascade_chassis::db::{WriteTransaction, begin_write};
use cascade_chassis::error::is_unique_violation;
use cascade_chassis::page::PageRequest;
use cascade_chassis::{ServiceError, ServiceResult, TenantId, outbox, time};
use cascade_domain::Money;
use cascade_proto::outbox::v1 as outbox_pb;
use prost::Message as _;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use crate::domain::EventKind;
use crate::domain::{Decision, Opportunity, Settings, Status, Step, pipeline_value};

/// Outbox topic of opportunity events for lifecycle; the partition is the account.
pub const EVENT_TOPIC: &str = "opportunity_events";

/// An opportunity event as it travels through the outbox, stored as the
/// protobuf message `cascade.outbox.v1.OpportunityChanged`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EventPayload {
    pub kind: EventKind,
    pub opportunity_id: String,
    pub buying_group: Vec<String>,
    /// Other open opportunities of the account when this happened.
    pub other_open: i32,
}

impl EventPayload {
    pub fn encode(&self) -> Vec<u8> {
        let kind = match self.kind {
            EventKind::Opened => outbox_pb::OpportunityEventKind::Opened,
            EventKind::Won => outbox_pb::OpportunityEventKind::Won,
            EventKind::Lost => outbox_pb::OpportunityEventKind::Lost,
        };
        outbox_pb::OpportunityChanged {
            kind: kind as i32,
            opportunity_id: self.opportunity_id.clone(),
            buying_group_contact_ids: self.buying_group.clone(),
            other_open_opportunities: self.other_open,
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
        let message = outbox_pb::OpportunityChanged::decode(bytes).map_err(|e| e.to_string())?;
        let kind = match outbox_pb::OpportunityEventKind::try_from(message.kind) {
            Ok(outbox_pb::OpportunityEventKind::Opened) => EventKind::Opened,
            Ok(outbox_pb::OpportunityEventKind::Won) => EventKind::Won,
            Ok(outbox_pb::OpportunityEventKind::Lost) => EventKind::Lost,
            _ => return Err(format!("unknown opportunity event kind {}", message.kind)),
        };
        Ok(Self {
            kind,
            opportunity_id: message.opportunity_id,
            buying_group: message.buying_group_contact_ids,
            other_open: message.other_open_opportunities,
        })
    }
}

/// An opportunity locked for a change (`Repository::lock`).
pub struct Locked {
    txn: WriteTransaction,
    tenant_id: String,
    version: i64,
    pub opportunity: Opportunity,
    pub settings: Settings,
    events_written: Arc<Notify>,
}

impl Locked {
    /// Writes the decided opportunity and its event for lifecycle, and
    /// commits.
    pub async fn save(self, decision: Decision) -> ServiceResult<Opportunity> {
        let Decision { opportunity, event } = decision;
        let txn = &self.txn;
        let (currency, units, nanos) = money_columns(pipeline_value(&opportunity));
        let data = serde_json::to_string(&opportunity).map_err(ServiceError::internal)?;
        txn.execute_raw(stmt(
            txn,
            "UPDATE opportunities SET owner_id = $1, step = $2, status = $3, value_currency = $4, \
             value_units = $5, value_nanos = $6, closed_at_ms = $7, data = $8, version = $9 \
             WHERE tenant_id = $10 AND opportunity_id = $11",
            vec![
                opportunity.owner_id.clone().into(),
                opportunity.step.as_str().into(),
                opportunity.status.as_str().into(),
                currency,
                units,
                nanos,
                opportunity.closed_at_ms.into(),
                data.into(),
                (self.version + 1).into(),
                self.tenant_id.as_str().into(),
                opportunity.opportunity_id.clone().into(),
            ],
        ))
        .await?;
        if let Some(kind) = event {
            enqueue(txn, &self.tenant_id, &opportunity, kind).await?;
        }
        self.txn.commit().await?;
        if event.is_some() {
            self.events_written.notify_one();
        }
        Ok(opportunity)
    }
}

/// Filters of ListOpportunities.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub account_id: Option<String>,
    pub owner_id: Option<String>,
    pub step: Option<Step>,
    pub status: Option<Status>,
}

/// Sums of one currency for the pipeline report: the deals valued in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CurrencySums {
    /// Per open step: (count, total nanos).
    pub open: BTreeMap<Step, (i64, i128)>,
    pub won: (i64, i128),
    pub lost: (i64, i128),
}

/// The pipeline report's figures: every deal counted, valued or not, and
/// the sums per currency of the deals that have an amount or estimate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pipeline {
    /// Every open deal per step: (count, of which without amount or estimate).
    pub open: BTreeMap<Step, (i64, i64)>,
    /// Every deal won / lost in the window: (count, of which without money).
    pub won: (i64, i64),
    pub lost: (i64, i64),
    pub by_currency: BTreeMap<String, CurrencySums>,
}

#[derive(Clone)]
pub struct Repository {
    db: DatabaseConnection,
    events_written: Arc<Notify>,
}

fn stmt(conn: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Statement {
    cascade_chassis::db::statement(conn.get_database_backend(), sql, values)
}

fn money_columns(money: Option<Money>) -> (Value, Value, Value) {
    match money {
        Some(m) => (
            m.currency_code().to_owned().into(),
            i64::try_from(m.nanos.div_euclid(1_000_000_000))
                .unwrap_or(i64::MAX)
                .into(),
            i64::try_from(m.nanos.rem_euclid(1_000_000_000))
                .unwrap_or(0)
                .into(),
        ),
        None => (
            Option::<String>::None.into(),
            Option::<i64>::None.into(),
            Option::<i64>::None.into(),
        ),
    }
}

fn parse(data: &str) -> ServiceResult<Opportunity> {
    serde_json::from_str(data)
        .map_err(|e| ServiceError::internal(anyhow::anyhow!("stored opportunity unreadable: {e}")))
}

impl Repository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            events_written: Arc::new(Notify::new()),
        }
    }

    /// Wakes this notify after committing events (the deliverer's waker).
    pub fn set_event_waker(&mut self, waker: Arc<Notify>) {
        self.events_written = waker;
    }

    pub async fn by_request(
        &self,
        tenant: &TenantId,
        request_id: &str,
    ) -> ServiceResult<Option<Opportunity>> {
        let row = self
            .db
            .query_one_raw(stmt(
                &self.db,
                "SELECT data FROM opportunities WHERE tenant_id = $1 AND create_request_id = $2",
                vec![tenant.as_str().into(), request_id.into()],
            ))
            .await?;
        row.map(|r| {
            r.try_get::<String>("", "data")
                .map_err(ServiceError::from)
                .and_then(|d| parse(&d))
        })
        .transpose()
    }

    /// Stores a new opportunity and queues OPENED for lifecycle.
    pub async fn create(
        &self,
        tenant: &TenantId,
        opportunity: Opportunity,
        request_id: Option<String>,
    ) -> ServiceResult<Opportunity> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        let (currency, units, nanos) = money_columns(pipeline_value(&opportunity));
        let data = serde_json::to_string(&opportunity).map_err(ServiceError::internal)?;
        let inserted = txn
            .execute_raw(stmt(
                &txn,
                "INSERT INTO opportunities (opportunity_id, tenant_id, account_id, owner_id, step, status, \
                 value_currency, value_units, value_nanos, closed_at_ms, create_request_id, data, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10, $11, 1)",
                vec![
                    opportunity.opportunity_id.clone().into(),
                    t.into(),
                    opportunity.account_id.clone().into(),
                    opportunity.owner_id.clone().into(),
                    opportunity.step.as_str().into(),
                    opportunity.status.as_str().into(),
                    currency,
                    units,
                    nanos,
                    request_id.clone().into(),
                    data.into(),
                ],
            ))
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                drop(txn);
                // The same request raced us: answer what it created.
                if let Some(request_id) = &request_id
                    && let Some(existing) = self.by_request(tenant, request_id).await?
                {
                    return Ok(existing);
                }
                return Err(ServiceError::Aborted(
                    "a conflicting opportunity was created; retry".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        enqueue(&txn, t, &opportunity, EventKind::Opened).await?;
        txn.commit().await?;
        self.events_written.notify_one();
        Ok(opportunity)
    }

    pub async fn get(&self, tenant: &TenantId, opportunity_id: &str) -> ServiceResult<Opportunity> {
        let row = self
            .db
            .query_one_raw(stmt(
                &self.db,
                "SELECT data FROM opportunities WHERE tenant_id = $1 AND opportunity_id = $2",
                vec![tenant.as_str().into(), opportunity_id.into()],
            ))
            .await?
            .ok_or_else(|| ServiceError::not_found("opportunity", opportunity_id))?;
        parse(&row.try_get::<String>("", "data")?)
    }

    pub async fn list(
        &self,
        tenant: &TenantId,
        filter: &Filter,
        page: &PageRequest,
    ) -> ServiceResult<(Vec<Opportunity>, String)> {
        let mut sql =
            String::from("SELECT opportunity_id, data FROM opportunities WHERE tenant_id = $1");
        let mut values: Vec<Value> = vec![tenant.as_str().into()];
        let mut add = |column: &str, value: Value, sql: &mut String| {
            values.push(value);
            sql.push_str(&format!(" AND {column} ${}", values.len()));
        };
        if let Some(account) = &filter.account_id {
            add("account_id =", account.clone().into(), &mut sql);
        }
        if let Some(owner) = &filter.owner_id {
            add("owner_id =", owner.clone().into(), &mut sql);
        }
        if let Some(step) = filter.step {
            add("step =", step.as_str().into(), &mut sql);
        }
        if let Some(status) = filter.status {
            add("status =", status.as_str().into(), &mut sql);
        }
        if let Some(after) = &page.after {
            add("opportunity_id >", after.clone().into(), &mut sql);
        }
        values.push((page.fetch_limit() as i64).into());
        sql.push_str(&format!(" ORDER BY opportunity_id LIMIT ${}", values.len()));
        let rows = self.db.query_all_raw(stmt(&self.db, &sql, values)).await?;
        let opportunities = rows
            .iter()
            .map(|r| parse(&r.try_get::<String>("", "data")?))
            .collect::<ServiceResult<Vec<_>>>()?;
        Ok(page.finish(opportunities, |o| o.opportunity_id.clone()))
    }

    /// Locks an opportunity for a change and reads the tenant's settings;
    /// the lock holds until [`Locked::save`] commits, or the value is dropped
    /// (nothing written).
    pub async fn lock(&self, tenant: &TenantId, opportunity_id: &str) -> ServiceResult<Locked> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        let lock = if txn.get_database_backend() == DbBackend::Postgres {
            " FOR UPDATE"
        } else {
            ""
        };
        let row = txn
            .query_one_raw(stmt(
                &txn,
                &format!("SELECT data, version FROM opportunities WHERE tenant_id = $1 AND opportunity_id = $2{lock}"),
                vec![t.into(), opportunity_id.into()],
            ))
            .await?
            .ok_or_else(|| ServiceError::not_found("opportunity", opportunity_id))?;
        let opportunity = parse(&row.try_get::<String>("", "data")?)?;
        let version: i64 = row.try_get("", "version")?;
        let settings = current_settings(&txn, t).await?;
        Ok(Locked {
            txn,
            tenant_id: t.to_owned(),
            version,
            opportunity,
            settings,
            events_written: self.events_written.clone(),
        })
    }

    pub async fn settings(
        &self,
        tenant: &TenantId,
        version: Option<i64>,
    ) -> ServiceResult<Settings> {
        let Some(version) = version else {
            return current_settings(&self.db, tenant.as_str()).await;
        };
        let row = self
            .db
            .query_one_raw(stmt(
                &self.db,
                "SELECT * FROM opportunity_settings WHERE tenant_id = $1 AND version = $2",
                vec![tenant.as_str().into(), version.into()],
            ))
            .await?;
        match row {
            Some(row) => settings_from_row(&row),
            None if version == 1 => Ok(Settings::default()),
            None => Err(ServiceError::not_found(
                "opportunity settings version",
                version.to_string(),
            )),
        }
    }

    /// Stores `edited`, a change of the version it was read as, as the next
    /// version; ABORTED when another call stored that version first.
    pub async fn store_settings(
        &self,
        tenant: &TenantId,
        actor: &str,
        mut next: Settings,
    ) -> ServiceResult<Settings> {
        next.version += 1;
        let now = time::now().timestamp_millis();
        let data =
            serde_json::to_string(&StoredSettings::from(&next)).map_err(ServiceError::internal)?;
        let result = self
            .db
            .execute_raw(stmt(
                &self.db,
                "INSERT INTO opportunity_settings (tenant_id, version, data, updated_at_ms, updated_by) \
                 VALUES ($1, $2, $3, $4, $5)",
                vec![tenant.as_str().into(), next.version.into(), data.into(), now.into(), actor.into()],
            ))
            .await;
        match result {
            Ok(_) => {
                next.updated_at_ms = Some(now);
                next.updated_by = Some(actor.to_owned());
                Ok(next)
            }
            Err(e) if is_unique_violation(&e) => Err(ServiceError::Aborted(
                "the settings were changed by another call at the same time; read them again and retry".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Sums per currency: open opportunities per step, and won / lost ones
    /// closed in `[start_ms, end_ms)`. Summed by the database.
    pub async fn pipeline(
        &self,
        tenant: &TenantId,
        start_ms: i64,
        end_ms: i64,
    ) -> ServiceResult<Pipeline> {
        let t = tenant.as_str();
        let mut pipeline = Pipeline::default();
        // Deals without an amount or estimate have no currency: they are
        // counted (currency NULL) and in no currency's sums.
        let open = self
            .db
            .query_all_raw(stmt(
                &self.db,
                &format!(
                    "SELECT value_currency, step, COUNT(*) AS n, {SUMS} FROM opportunities \
                     WHERE tenant_id = $1 AND status = $2 GROUP BY value_currency, step"
                ),
                vec![t.into(), Status::Open.as_str().into()],
            ))
            .await?;
        for row in open {
            let currency: Option<String> = row.try_get("", "value_currency")?;
            let step: String = row.try_get("", "step")?;
            let step: Step = step
                .parse()
                .map_err(|e| ServiceError::internal(anyhow::anyhow!("{e}")))?;
            let n: i64 = row.try_get("", "n")?;
            let counts = pipeline.open.entry(step).or_default();
            counts.0 += n;
            match currency {
                Some(currency) => {
                    let total = sum_nanos(&row)?;
                    pipeline
                        .by_currency
                        .entry(currency)
                        .or_default()
                        .open
                        .insert(step, (n, total));
                }
                None => counts.1 += n,
            }
        }
        let closed = self
            .db
            .query_all_raw(stmt(
                &self.db,
                &format!(
                    "SELECT value_currency, status, COUNT(*) AS n, {SUMS} FROM opportunities \
                     WHERE tenant_id = $1 AND status <> $2 AND closed_at_ms >= $3 \
                     AND closed_at_ms < $4 GROUP BY value_currency, status"
                ),
                vec![
                    t.into(),
                    Status::Open.as_str().into(),
                    start_ms.into(),
                    end_ms.into(),
                ],
            ))
            .await?;
        for row in closed {
            let currency: Option<String> = row.try_get("", "value_currency")?;
            let won = row.try_get::<String>("", "status")? == Status::Won.as_str();
            let n: i64 = row.try_get("", "n")?;
            let counts = if won {
                &mut pipeline.won
            } else {
                &mut pipeline.lost
            };
            counts.0 += n;
            let Some(currency) = currency else {
                counts.1 += n;
                continue;
            };
            let figures = (n, sum_nanos(&row)?);
            let entry = pipeline.by_currency.entry(currency).or_default();
            if won {
                entry.won = figures;
            } else {
                entry.lost = figures;
            }
        }
        Ok(pipeline)
    }
}

/// The sums of a group's amounts, split so that no accepted input can
/// overflow a 64-bit SUM on either backend: units at most 10^12 each, so
/// the millions part is at most 10^6 and the rest below 10^6 per deal (SUM
/// overflows after 9 * 10^12 deals, not after 9 million largest ones);
/// cast because PostgreSQL sums BIGINT into NUMERIC.
const SUMS: &str = "CAST(SUM(value_units / 1000000) AS BIGINT) AS millions, \
                    CAST(SUM(value_units % 1000000) AS BIGINT) AS units, \
                    CAST(SUM(value_nanos) AS BIGINT) AS nanos";

/// The summed amount of a row (see `SUMS`), in nanos.
fn sum_nanos(row: &sea_orm::QueryResult) -> ServiceResult<i128> {
    let millions: Option<i64> = row.try_get("", "millions")?;
    let units: Option<i64> = row.try_get("", "units")?;
    let nanos: Option<i64> = row.try_get("", "nanos")?;
    let units = i128::from(millions.unwrap_or(0)) * 1_000_000 + i128::from(units.unwrap_or(0));
    Ok(units * 1_000_000_000 + i128::from(nanos.unwrap_or(0)))
}

async fn current_settings(conn: &impl ConnectionTrait, tenant_id: &str) -> ServiceResult<Settings> {
    let row = conn
        .query_one_raw(stmt(
            conn,
            "SELECT * FROM opportunity_settings WHERE tenant_id = $1 ORDER BY version DESC LIMIT 1",
            vec![tenant_id.into()],
        ))
        .await?;
    row.map_or_else(|| Ok(Settings::default()), |r| settings_from_row(&r))
}

/// Settings as stored (JSON).
#[derive(Serialize, Deserialize)]
struct StoredSettings {
    large_deal_threshold: Money,
    discover_display_name: String,
    probabilities: [i32; 4],
    currency: String,
}

impl From<&Settings> for StoredSettings {
    fn from(s: &Settings) -> Self {
        Self {
            large_deal_threshold: s.large_deal_threshold,
            discover_display_name: s.discover_display_name.clone(),
            probabilities: s.probabilities,
            currency: s.currency.clone(),
        }
    }
}

fn settings_from_row(row: &sea_orm::QueryResult) -> ServiceResult<Settings> {
    let data: String = row.try_get("", "data")?;
    let stored: StoredSettings = serde_json::from_str(&data)
        .map_err(|e| ServiceError::internal(anyhow::anyhow!("stored settings unreadable: {e}")))?;
    Ok(Settings {
        version: row.try_get("", "version")?,
        large_deal_threshold: stored.large_deal_threshold,
        discover_display_name: stored.discover_display_name,
        probabilities: stored.probabilities,
        currency: stored.currency,
        updated_at_ms: Some(row.try_get("", "updated_at_ms")?),
        updated_by: Some(row.try_get("", "updated_by")?),
    })
}

/// Queues an event for lifecycle in the caller's transaction.
async fn enqueue(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    opportunity: &Opportunity,
    kind: EventKind,
) -> ServiceResult<()> {
    let row = conn
        .query_one_raw(stmt(
            conn,
            "SELECT COUNT(*) AS n FROM opportunities WHERE tenant_id = $1 AND account_id = $2 \
             AND status = $3 AND opportunity_id <> $4",
            vec![
                tenant_id.into(),
                opportunity.account_id.clone().into(),
                Status::Open.as_str().into(),
                opportunity.opportunity_id.clone().into(),
            ],
        ))
        .await?;
    let other_open = row
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0);
    let payload = EventPayload {
        kind,
        opportunity_id: opportunity.opportunity_id.clone(),
        buying_group: opportunity.buying_group.clone(),
        other_open: i32::try_from(other_open).unwrap_or(i32::MAX),
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

    #[test]
    fn an_event_payload_reads_back_as_written_and_old_json_still_reads() {
        for kind in [EventKind::Opened, EventKind::Won, EventKind::Lost] {
            let payload = EventPayload {
                kind,
                opportunity_id: "o1".into(),
                buying_group: vec!["c1".into(), "c2".into()],
                other_open: 2,
            };
            let bytes = payload.encode();
            assert_ne!(bytes.first(), Some(&b'{'));
            assert_eq!(EventPayload::decode(&bytes), Ok(payload));
        }
        // As versions before the protobuf messages stored it.
        let legacy =
            br#"{"kind":"Won","opportunity_id":"o1","buying_group":["c1"],"other_open":0}"#;
        assert_eq!(
            EventPayload::decode(legacy),
            Ok(EventPayload {
                kind: EventKind::Won,
                opportunity_id: "o1".into(),
                buying_group: vec!["c1".into()],
                other_open: 0,
            })
        );
        let unspecified = outbox_pb::OpportunityChanged::default().encode_to_vec();
        assert!(EventPayload::decode(&unspecified).is_err());
    }
}
