//! Storage of the lifecycle service. Every query is scoped by tenant; a row
//! of another tenant is indistinguishable from a missing one.

mod accounts;
mod activity_status;
pub mod cache;
mod contacts;
mod engine;
mod entities;
mod erasure;
mod history;
mod import;
pub mod migration;
mod migration_after_sale;
mod migration_erasure;
mod migration_histories;
mod migration_stage_engine;
mod migration_sync;
mod notifications;
mod resolve;
mod scores;
mod settings;

pub use activity_status::{ChangeKind, ContactChange};
pub use import::{ImportItem, Imported};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cascade_chassis::db::{WriteTransaction, statement_chunks};
use cascade_chassis::{ServiceError, ServiceResult};
use cascade_domain::{AccountStage, ContactStage, CustomerType};
use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    QueryOrder, Select, Statement,
};
use tokio::sync::Notify;

use crate::domain::account_rules::{self, AccountState};
use crate::domain::{Account, Contact, Transition};
use entities::{account, contact, stage_first, transition};

pub use engine::{ApplyOutcome, Mutation, MutationResult, OpportunityEventKind};
pub use history::{FunnelRow, WatchedEvent};
pub use notifications::{
    NOTIFICATION_ID_HEADER, NOTIFICATION_TOPIC, NotificationFilter, SIGNATURE_HEADER, WebhookSink,
    signature, standard_signature,
};
pub use scores::{ScoreApplied, ScoreResult};
pub use settings::StoredSettings;

/// An opportunity lifecycle knows to be open (`account_opportunities.status`;
/// the others are WON and LOST).
const OPEN: &str = "OPEN";

/// Filters of ListAccounts.
#[derive(Debug, Clone, Default)]
pub struct AccountFilter {
    pub stage: Option<AccountStage>,
    pub customer_type: Option<CustomerType>,
    pub owner_id: Option<String>,
    pub domain: Option<String>,
    pub external_id: Option<String>,
    /// Changed at or after: lists by update time, then id.
    pub changed_since: Option<DateTime<Utc>>,
    /// Only accounts flagged at risk.
    pub at_risk_only: bool,
}

/// Filters of ListContacts.
#[derive(Debug, Clone, Default)]
pub struct ContactFilter {
    pub account_id: Option<String>,
    pub stage: Option<ContactStage>,
    pub email: Option<String>,
    pub external_id: Option<String>,
    /// Changed at or after: lists by update time, then id.
    pub changed_since: Option<DateTime<Utc>>,
}

/// Orders `query` for a changed-since listing: records changed at or after
/// `since`, by update time then id, continuing after the page key `after`
/// (see `changed_key`). Times are stored at millisecond precision. On SQLite
/// they are RFC 3339 text in UTC ("...:15.086+00:00", or "...:15+00:00" on a
/// whole second), and bound values are written the same way, so text order
/// is time order: within a second "+" sorts before ".".
fn changed_since<E: EntityTrait>(
    query: Select<E>,
    (updated_at, id): (E::Column, E::Column),
    since: DateTime<Utc>,
    after: Option<&str>,
) -> ServiceResult<Select<E>> {
    let mut query = query
        .filter(updated_at.gte(since))
        .order_by_asc(updated_at)
        .order_by_asc(id);
    if let Some(after) = after {
        let invalid =
            || ServiceError::invalid("page_token", "is not a token returned by this list");
        let (ms, last_id) = after.split_once('/').ok_or_else(invalid)?;
        let at = ms
            .parse::<i64>()
            .ok()
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .ok_or_else(invalid)?;
        query = query.filter(
            Condition::any().add(updated_at.gt(at)).add(
                Condition::all()
                    .add(updated_at.eq(at))
                    .add(id.gt(last_id.to_owned())),
            ),
        );
    }
    Ok(query)
}

/// The page key of a changed-since listing's last record.
fn changed_key(updated_at: DateTime<Utc>, id: &str) -> String {
    format!("{}/{id}", updated_at.timestamp_millis())
}

/// The lifecycle service's storage. Cheap to clone.
#[derive(Clone)]
pub struct Repository {
    db: DatabaseConnection,
    /// GetAccount's answers (`cache`); `None` when turned off.
    accounts: Option<Arc<cache::AccountCache>>,
    /// Woken after a commit that wrote watch events (WatchAccountEvents).
    events_written: Arc<Notify>,
    /// Woken after a commit that wrote notifications (the webhook deliverer).
    notifications_written: Arc<Notify>,
    /// How long after an erasure a service may confirm its part
    /// (`erasure.min_settle_ms`); zero until set.
    erasure_settle: Duration,
}

impl Repository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            accounts: None,
            events_written: Arc::new(Notify::new()),
            notifications_written: Arc::new(Notify::new()),
            erasure_settle: Duration::ZERO,
        }
    }

    /// Refuses a service's confirmation of an erasure until `settle` after it.
    pub fn set_erasure_settle(&mut self, settle: Duration) {
        self.erasure_settle = settle;
    }

    /// How long after an erasure a service may confirm its part.
    pub fn erasure_settle(&self) -> Duration {
        self.erasure_settle
    }

    /// Answers GetAccount from `cache` when it holds the account, and keeps
    /// it current through this repository's writes.
    pub fn set_account_cache(&mut self, cache: Arc<cache::AccountCache>) {
        self.accounts = Some(cache);
    }

    /// After a commit that wrote the account row at `version` (with the
    /// account as written, when the write has it).
    pub(crate) fn account_written(
        &self,
        tenant: &str,
        account_id: &str,
        version: i64,
        account: Option<&Account>,
    ) {
        if let Some(cache) = &self.accounts {
            cache.written(tenant, account_id, version, account);
        }
    }

    /// Wakes this notify after committing notifications (the deliverer's waker).
    pub fn set_notification_waker(&mut self, waker: Arc<Notify>) {
        self.notifications_written = waker;
    }

    pub fn events_written(&self) -> Arc<Notify> {
        self.events_written.clone()
    }
}

pub(crate) fn ms(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Counts committed stage moves for the metrics (stage entered, cause).
pub(crate) fn count_transitions(transitions: &[crate::domain::Transition]) {
    let metrics = cascade_chassis::metrics::instruments();
    for t in transitions {
        metrics.transition(t.to_stage.as_str(), t.cause.as_str());
    }
}

pub(crate) fn corrupt(column: &str, error: impl std::fmt::Display) -> ServiceError {
    ServiceError::internal(anyhow::anyhow!("stored {column} is unreadable: {error}"))
}

fn statement(
    conn: &impl ConnectionTrait,
    sql: &str,
    values: impl IntoIterator<Item = sea_orm::Value>,
) -> Statement {
    cascade_chassis::db::statement(conn.get_database_backend(), sql, values)
}

/// Keeps the first time each subject (account or contact) reached a stage:
/// `reached` holds (subject, stage) pairs reached at `at_ms`; a pair stored
/// before keeps its earlier time.
pub(crate) async fn record_firsts<S: AsRef<str>>(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    reached: &[(S, &str)],
    at_ms: i64,
) -> Result<(), DbErr> {
    for chunk in statement_chunks(reached, 4) {
        stage_first::Entity::insert_many(chunk.iter().map(|(subject, stage)| {
            stage_first::ActiveModel {
                subject_id: Set(subject.as_ref().to_owned()),
                stage: Set((*stage).to_owned()),
                tenant_id: Set(tenant_id.to_owned()),
                first_reached_at_ms: Set(at_ms),
            }
        }))
        .on_conflict(
            OnConflict::columns([stage_first::Column::SubjectId, stage_first::Column::Stage])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await?;
    }
    Ok(())
}

/// What the stage rules need to know of a stored account.
pub(crate) fn account_state(
    model: &account::Model,
    open_opportunities: u32,
) -> ServiceResult<AccountState> {
    Ok(AccountState {
        stage: *model.stage,
        customer_type: *model.customer_type,
        score_baseline: model.score_baseline,
        recycled: model.nurture_count > 0
            || model.disqualify_count > 0
            || model.last_recycle_transition_id.is_some(),
        open_opportunities,
        engagement_score: model.engagement_score,
        at_risk: model.at_risk_source.map(|s| *s),
    })
}

/// Locks an account row for the rest of the transaction, so changes to one
/// account never interleave (across replicas too). Contacts can still be
/// inserted under it meanwhile (`WriteTransaction::lock_all`).
pub(crate) async fn lock_account(
    txn: &WriteTransaction,
    tenant_id: &str,
    account_id: &str,
) -> ServiceResult<account::Model> {
    txn.lock_one(account_row(tenant_id, account_id))
        .await?
        .ok_or_else(|| ServiceError::not_found("account", account_id))
}

/// [`lock_account`] for an account this transaction deletes: no contact can
/// be inserted under it until the transaction ends.
pub(crate) async fn lock_account_to_delete(
    txn: &WriteTransaction,
    tenant_id: &str,
    account_id: &str,
) -> ServiceResult<account::Model> {
    txn.lock_one_to_delete(account_row(tenant_id, account_id))
        .await?
        .ok_or_else(|| ServiceError::not_found("account", account_id))
}

fn account_row(tenant_id: &str, account_id: &str) -> Select<account::Entity> {
    account::Entity::find_by_id(account_id).filter(account::Column::TenantId.eq(tenant_id))
}

async fn firsts_of(
    conn: &impl ConnectionTrait,
    subject_ids: Vec<String>,
) -> Result<HashMap<String, Vec<(String, i64)>>, DbErr> {
    let mut map: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    if subject_ids.is_empty() {
        return Ok(map);
    }
    for row in stage_first::Entity::find()
        .filter(stage_first::Column::SubjectId.is_in(subject_ids))
        .all(conn)
        .await?
    {
        map.entry(row.subject_id)
            .or_default()
            .push((row.stage, row.first_reached_at_ms));
    }
    Ok(map)
}

fn parse_firsts<S: std::str::FromStr + Ord + Copy>(
    rows: Vec<(String, i64)>,
) -> ServiceResult<Vec<(S, DateTime<Utc>)>>
where
    S::Err: std::fmt::Display,
{
    let mut firsts = rows
        .into_iter()
        .map(|(stage, at)| {
            let stage = stage
                .parse::<S>()
                .map_err(|e| corrupt("stage_firsts.stage", e))?;
            Ok((stage, from_ms(at)))
        })
        .collect::<ServiceResult<Vec<_>>>()?;
    firsts.sort_by_key(|(stage, at)| (*at, *stage));
    Ok(firsts)
}

/// Accounts with their first-reached dates and last recycle action.
pub(crate) async fn hydrate_accounts(
    conn: &impl ConnectionTrait,
    models: Vec<account::Model>,
) -> ServiceResult<Vec<Account>> {
    let firsts = firsts_of(conn, models.iter().map(|m| m.account_id.clone()).collect()).await?;
    hydrate_accounts_with(conn, models, firsts).await
}

/// `hydrate_accounts` with the first-reached dates already read (account
/// id -> (stage, first reached at ms)).
pub(crate) async fn hydrate_accounts_with(
    conn: &impl ConnectionTrait,
    models: Vec<account::Model>,
    mut firsts: HashMap<String, Vec<(String, i64)>>,
) -> ServiceResult<Vec<Account>> {
    let recycle_ids: Vec<String> = models
        .iter()
        .filter_map(|m| m.last_recycle_transition_id.clone())
        .collect();
    let mut recycles: HashMap<String, Transition> = HashMap::new();
    if !recycle_ids.is_empty() {
        for row in transition::Entity::find()
            .filter(transition::Column::TransitionId.is_in(recycle_ids))
            .all(conn)
            .await?
        {
            let t = history::transition_from_model(row)?;
            recycles.insert(t.transition_id.clone(), t);
        }
    }
    models
        .into_iter()
        .map(|m| {
            let stages_reached = parse_firsts(firsts.remove(&m.account_id).unwrap_or_default())?;
            let last_recycle = m
                .last_recycle_transition_id
                .as_ref()
                .and_then(|id| recycles.get(id).cloned());
            Ok(Account {
                at_risk: accounts::risk_of(&m),
                open_opportunities: accounts::open_opportunities(&m),
                stage: *m.stage,
                customer_type: *m.customer_type,
                account_id: m.account_id,
                name: m.name,
                domain: m.domain,
                owner_id: m.owner_id,
                stage_entered_at: m.stage_entered_at,
                engagement_score: m.engagement_score,
                average_engagement_score: m.average_engagement_score,
                intent_score: m.intent_score,
                created_at: m.created_at,
                updated_at: m.updated_at,
                disqualify_count: m.disqualify_count,
                nurture_count: m.nurture_count,
                stages_reached,
                last_recycle,
                engagement_since_recycle: account_rules::earned_since_recycle(
                    m.engagement_score,
                    m.score_baseline,
                ),
                external_id: m.external_id,
            })
        })
        .collect()
}

pub(crate) async fn hydrate_account(
    conn: &impl ConnectionTrait,
    model: account::Model,
) -> ServiceResult<Account> {
    let mut accounts = hydrate_accounts(conn, vec![model]).await?;
    accounts
        .pop()
        .ok_or_else(|| ServiceError::internal(anyhow::anyhow!("hydrated no account")))
}

/// Contacts with their first-reached dates.
pub(crate) async fn hydrate_contacts(
    conn: &impl ConnectionTrait,
    models: Vec<contact::Model>,
) -> ServiceResult<Vec<Contact>> {
    let mut firsts = firsts_of(conn, models.iter().map(|m| m.contact_id.clone()).collect()).await?;
    models
        .into_iter()
        .map(|m| {
            Ok(Contact {
                stage: *m.stage,
                stages_reached: parse_firsts(firsts.remove(&m.contact_id).unwrap_or_default())?,
                contact_id: m.contact_id,
                account_id: m.account_id,
                email: m.email,
                first_name: m.first_name,
                last_name: m.last_name,
                title: m.title,
                stage_entered_at: m.stage_entered_at,
                engagement_score: m.engagement_score,
                created_at: m.created_at,
                updated_at: m.updated_at,
                external_id: m.external_id,
                inactive: m
                    .inactive_since_ms
                    .map(|since| (from_ms(since), m.inactive_reason)),
            })
        })
        .collect()
}

pub(crate) async fn hydrate_contact(
    conn: &impl ConnectionTrait,
    model: contact::Model,
) -> ServiceResult<Contact> {
    let mut contacts = hydrate_contacts(conn, vec![model]).await?;
    contacts
        .pop()
        .ok_or_else(|| ServiceError::internal(anyhow::anyhow!("hydrated no contact")))
}
