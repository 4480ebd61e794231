//! Storage of opportunities and opportunity settings, and the outbox of
//! opportunity events for lifecycle. Every query is scoped by tenant.

mod contracts;
mod entities;
mod erasure;
mod events;
pub mod migration;
mod pipeline;
mod settings;

use cascade_chassis::db::Stored;
use std::sync::Arc;

use cascade_chassis::db::{WriteTransaction, begin_write};
use cascade_chassis::error::is_unique_violation;
use cascade_chassis::idempotency::RequestKey;
use cascade_chassis::page::PageRequest;
use cascade_chassis::{ServiceError, ServiceResult, TenantId};
use cascade_domain::Money;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use tokio::sync::Notify;

use entities::opportunity;
pub use events::EventPayload;
use events::enqueue;
pub use pipeline::{CurrencySums, Pipeline, PipelineReport};
use settings::current_settings;

pub use crate::domain::EventKind;
use crate::domain::{
    Decision, Opportunity, OpportunityKind, Settings, Status, Step, pipeline_value,
};

/// Outbox topic of opportunity events for lifecycle; the partition is the account.
pub const EVENT_TOPIC: &str = "opportunity_events";

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
    /// Ends the lock without a change (a decision with nothing to save);
    /// the settings read under it come back.
    pub async fn release(self) -> ServiceResult<Settings> {
        self.txn.rollback().await?;
        Ok(self.settings)
    }

    /// Writes the decided opportunity and its event for lifecycle, and
    /// commits; the settings read under the lock come back with it, so the
    /// answer is rendered without reading them again.
    pub async fn save(
        self,
        decision: Decision,
        actor: &str,
    ) -> ServiceResult<(Opportunity, Settings)> {
        let Decision {
            opportunity, event, ..
        } = decision;
        let mut row = columns(&self.tenant_id, &opportunity, None)?;
        row.version = Set(self.version + 1);
        opportunity::Entity::update_many()
            .set(row)
            .filter(opportunity::Column::TenantId.eq(self.tenant_id.as_str()))
            .filter(opportunity::Column::OpportunityId.eq(opportunity.opportunity_id.as_str()))
            .exec(&self.txn)
            .await?;
        if event == Some(EventKind::Won) {
            // Before the event is queued: a contracts-ended report of the
            // account waits for this win, or comes before its event.
            contracts::account_won(&self.txn, &self.tenant_id, &opportunity.account_id).await?;
        } else if event == Some(EventKind::Lost) {
            // Closes of one account one after the other, so each counts the
            // other deals as they are after the one before: the last two
            // deals lost at once each counted the other open, and neither
            // loss nurtured the account (PostgreSQL; SQLite's writers take
            // turns anyway).
            contracts::lock_account(&self.txn, &self.tenant_id, &opportunity.account_id).await?;
        }
        if let Some(kind) = event {
            let version = self.version + 1;
            enqueue(
                &self.txn,
                &self.tenant_id,
                &opportunity,
                kind,
                None,
                (actor, version),
            )
            .await?;
        }
        self.txn.commit().await?;
        if event.is_some() {
            self.events_written.notify_one();
        }
        Ok((opportunity, self.settings))
    }
}

/// Filters of ListOpportunities.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub account_id: Option<String>,
    pub owner_id: Option<String>,
    pub step: Option<Step>,
    pub status: Option<Status>,
    pub kind: Option<OpportunityKind>,
}

#[derive(Clone)]
pub struct Repository {
    db: DatabaseConnection,
    events_written: Arc<Notify>,
}

/// An opportunity's row: the document and the columns lists and the
/// pipeline report read (the version is the caller's).
fn columns(
    tenant_id: &str,
    o: &Opportunity,
    create_request: Option<RequestKey>,
) -> ServiceResult<opportunity::ActiveModel> {
    // Set at creation only: an update leaves the columns as they are.
    let (create_request_id, create_request_digest) = match create_request {
        Some(key) => (Set(Some(key.id)), Set(Some(key.digest))),
        None => (NotSet, NotSet),
    };
    let value = pipeline_value(o);
    Ok(opportunity::ActiveModel {
        opportunity_id: Set(o.opportunity_id.clone()),
        tenant_id: Set(tenant_id.to_owned()),
        account_id: Set(o.account_id.clone()),
        owner_id: Set(o.owner_id.clone()),
        kind: Set(Stored(o.kind)),
        step: Set(Stored(o.step)),
        status: Set(Stored(o.status)),
        value_currency: Set(value.map(|m| m.currency_code().to_owned())),
        value_units: Set(value.map(units_of)),
        value_nanos: Set(
            value.map(|m| i64::try_from(m.nanos.rem_euclid(1_000_000_000)).unwrap_or(0))
        ),
        closed_at_ms: Set(o.closed_at_ms),
        create_request_id,
        create_request_digest,
        data: Set(serde_json::to_string(o).map_err(ServiceError::internal)?),
        version: NotSet,
    })
}

/// Whole units of an amount (accepted amounts are at most 10^12 units).
fn units_of(m: Money) -> i64 {
    i64::try_from(m.nanos.div_euclid(1_000_000_000)).unwrap_or(i64::MAX)
}

fn parse(row: &opportunity::Model) -> ServiceResult<Opportunity> {
    serde_json::from_str(&row.data)
        .map_err(|e| ServiceError::internal(anyhow::anyhow!("stored opportunity unreadable: {e}")))
}

/// The tenant's opportunities: every query starts here, so none forgets the
/// tenant.
fn of_tenant(tenant_id: &str) -> sea_orm::Select<opportunity::Entity> {
    opportunity::Entity::find().filter(opportunity::Column::TenantId.eq(tenant_id))
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

    /// The opportunity an earlier create under `key`'s request id made, if
    /// the request is the same; refused if it is not.
    pub async fn by_request(
        &self,
        tenant: &TenantId,
        key: &RequestKey,
    ) -> ServiceResult<Option<Opportunity>> {
        let Some(row) = of_tenant(tenant.as_str())
            .filter(opportunity::Column::CreateRequestId.eq(&key.id))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        key.check(row.create_request_digest.as_deref(), "opportunity")?;
        parse(&row).map(Some)
    }

    /// Stores a new opportunity and queues OPENED for lifecycle.
    pub async fn create(
        &self,
        tenant: &TenantId,
        opportunity: Opportunity,
        key: Option<RequestKey>,
        actor: &str,
    ) -> ServiceResult<Opportunity> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        let mut row = columns(t, &opportunity, key.clone())?;
        row.version = Set(1);
        let inserted = opportunity::Entity::insert(row)
            .exec_without_returning(&txn)
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                drop(txn);
                // The same request raced us: answer what it created.
                if let Some(key) = &key
                    && let Some(existing) = self.by_request(tenant, key).await?
                {
                    return Ok(existing);
                }
                return Err(ServiceError::Aborted(
                    "a conflicting opportunity was created; retry".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        enqueue(&txn, t, &opportunity, EventKind::Opened, None, (actor, 1)).await?;
        txn.commit().await?;
        self.events_written.notify_one();
        Ok(opportunity)
    }

    pub async fn get(&self, tenant: &TenantId, opportunity_id: &str) -> ServiceResult<Opportunity> {
        let row = of_tenant(tenant.as_str())
            .filter(opportunity::Column::OpportunityId.eq(opportunity_id))
            .one(&self.db)
            .await?
            .ok_or_else(|| ServiceError::not_found("opportunity", opportunity_id))?;
        parse(&row)
    }

    pub async fn list(
        &self,
        tenant: &TenantId,
        filter: &Filter,
        page: &PageRequest,
    ) -> ServiceResult<(Vec<Opportunity>, String)> {
        let mut query = of_tenant(tenant.as_str());
        if let Some(account) = &filter.account_id {
            query = query.filter(opportunity::Column::AccountId.eq(account.as_str()));
        }
        if let Some(owner) = &filter.owner_id {
            query = query.filter(opportunity::Column::OwnerId.eq(owner.as_str()));
        }
        if let Some(step) = filter.step {
            query = query.filter(opportunity::Column::Step.eq(Stored(step)));
        }
        if let Some(status) = filter.status {
            query = query.filter(opportunity::Column::Status.eq(Stored(status)));
        }
        if let Some(kind) = filter.kind {
            query = query.filter(opportunity::Column::Kind.eq(Stored(kind)));
        }
        if let Some(after) = &page.after {
            query = query.filter(opportunity::Column::OpportunityId.gt(after.as_str()));
        }
        let rows = query
            .order_by_asc(opportunity::Column::OpportunityId)
            .limit(page.fetch_limit())
            .all(&self.db)
            .await?;
        let opportunities = rows.iter().map(parse).collect::<ServiceResult<Vec<_>>>()?;
        Ok(page.finish(opportunities, |o| o.opportunity_id.clone()))
    }

    /// Locks an opportunity for a change and reads the tenant's settings;
    /// the lock holds until [`Locked::save`] commits, or the value is dropped
    /// (nothing written).
    pub async fn lock(&self, tenant: &TenantId, opportunity_id: &str) -> ServiceResult<Locked> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        let row = txn
            .lock_one(of_tenant(t).filter(opportunity::Column::OpportunityId.eq(opportunity_id)))
            .await?
            .ok_or_else(|| ServiceError::not_found("opportunity", opportunity_id))?;
        let opportunity = parse(&row)?;
        let settings = current_settings(&txn, t).await?;
        Ok(Locked {
            txn,
            tenant_id: t.to_owned(),
            version: row.version,
            opportunity,
            settings,
            events_written: self.events_written.clone(),
        })
    }
}
