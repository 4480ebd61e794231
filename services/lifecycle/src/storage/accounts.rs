//! Accounts as records: create, read, list, update.

use cascade_chassis::db::Stored;
use std::collections::HashMap;

use cascade_chassis::db::begin_write;
use cascade_chassis::error::is_unique_violation;
use cascade_chassis::idempotency::RequestKey;
use cascade_chassis::page::PageRequest;
use cascade_chassis::{ServiceError, ServiceResult, TenantId, time};
use cascade_domain::ids;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait,
    FromQueryResult, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};

use super::contacts::external_id_taken;
use super::entities::{account, stage_first};
use super::{
    AccountFilter, Repository, changed_key, changed_since, hydrate_account, hydrate_accounts,
    hydrate_accounts_with, lock_account, ms, record_firsts,
};
use crate::domain::risk::{AtRisk, RiskWrite};
use crate::domain::{Account, AccountChanges, NEW_ACCOUNT_STAGE, NewAccount, writes_nothing};
use cascade_domain::OpportunityKind;

impl Repository {
    pub async fn create_account(
        &self,
        tenant: &TenantId,
        new: NewAccount,
        key: Option<RequestKey>,
    ) -> ServiceResult<Account> {
        if let Some(key) = &key
            && let Some(existing) = self.account_by_request(tenant, key).await?
        {
            return Ok(existing);
        }
        let now = time::now();
        let stage = NEW_ACCOUNT_STAGE.0;
        let model = new_account_model(
            tenant.as_str(),
            ids::new_id(),
            new.clone(),
            key.clone(),
            now,
        );
        let txn = begin_write(&self.db).await?;
        let inserted = match model.insert(&txn).await {
            Ok(model) => model,
            Err(error) if is_unique_violation(&error) => {
                drop(txn);
                // Either the same request raced us (return its account) or
                // the domain belongs to another account.
                if let Some(key) = &key
                    && let Some(existing) = self.account_by_request(tenant, key).await?
                {
                    return Ok(existing);
                }
                return Err(self
                    .account_taken(
                        tenant,
                        None,
                        new.domain.as_deref(),
                        new.external_id.as_deref(),
                    )
                    .await);
            }
            Err(error) => return Err(error.into()),
        };
        record_firsts(
            &txn,
            tenant.as_str(),
            &[(&inserted.account_id, stage.as_str())],
            ms(now),
        )
        .await?;
        let account = hydrate_account(&txn, inserted).await?;
        txn.commit().await?;
        Ok(account)
    }

    /// Which unique field of an account another account holds: the external
    /// id when it is taken, else the domain. `updating` is the account being
    /// updated: it holds its own external id, which is no clash.
    async fn account_taken(
        &self,
        tenant: &TenantId,
        updating: Option<&str>,
        domain: Option<&str>,
        external_id: Option<&str>,
    ) -> ServiceError {
        if let Some(external_id) = external_id {
            let mut holder = account::Entity::find()
                .filter(account::Column::TenantId.eq(tenant.as_str()))
                .filter(account::Column::ExternalId.eq(external_id));
            if let Some(account_id) = updating {
                holder = holder.filter(account::Column::AccountId.ne(account_id));
            }
            let holder = holder.one(&self.db).await;
            match holder {
                Ok(Some(_)) => return external_id_taken("account", external_id),
                Ok(None) => {}
                Err(error) => return error.into(),
            }
        }
        domain_taken(domain)
    }

    /// The account an earlier create under `key`'s request id made, if the
    /// request is the same; refused if it is not.
    async fn account_by_request(
        &self,
        tenant: &TenantId,
        key: &RequestKey,
    ) -> ServiceResult<Option<Account>> {
        match account::Entity::find()
            .filter(account::Column::TenantId.eq(tenant.as_str()))
            .filter(account::Column::CreateRequestId.eq(&key.id))
            .one(&self.db)
            .await?
        {
            Some(model) => {
                key.check(model.create_request_digest.as_deref(), "account")?;
                Ok(Some(hydrate_account(&self.db, model).await?))
            }
            None => Ok(None),
        }
    }

    /// GetAccount: from this replica's cache when it holds the account
    /// (`cache`), else from the database, keeping what it read.
    pub async fn get_account(&self, tenant: &TenantId, account_id: &str) -> ServiceResult<Account> {
        let metrics = cascade_chassis::metrics::instruments();
        let Some(cache) = &self.accounts else {
            metrics.account_read("database");
            return Ok(self.read_account(tenant, account_id).await?.1);
        };
        if let Some(account) = cache.get(tenant.as_str(), account_id) {
            metrics.account_read("cache");
            return Ok(account);
        }
        metrics.account_read("database");
        let ticket = cache.ticket();
        let (version, account) = self.read_account(tenant, account_id).await?;
        cache.fill(ticket, tenant.as_str(), version, &account);
        Ok(account)
    }

    /// One statement for the account and the stages it reached (a LEFT
    /// JOIN, one row per stage) instead of one each: GetAccount is the
    /// hottest read, and on PostgreSQL a statement's fixed cost is most of
    /// its price (docs/performance.md). With the row's version.
    async fn read_account(
        &self,
        tenant: &TenantId,
        account_id: &str,
    ) -> ServiceResult<(i64, Account)> {
        let mut query = account::Entity::find()
            .filter(account::Column::TenantId.eq(tenant.as_str()))
            .filter(account::Column::AccountId.eq(account_id))
            .into_query();
        query
            .left_join(
                stage_first::Entity,
                Condition::all()
                    .add(
                        Expr::col((stage_first::Entity, stage_first::Column::SubjectId))
                            .equals((account::Entity, account::Column::AccountId)),
                    )
                    .add(
                        Expr::col((stage_first::Entity, stage_first::Column::TenantId))
                            .equals((account::Entity, account::Column::TenantId)),
                    ),
            )
            .expr_as(
                Expr::col((stage_first::Entity, stage_first::Column::Stage)),
                "first_stage",
            )
            .expr_as(
                Expr::col((stage_first::Entity, stage_first::Column::FirstReachedAtMs)),
                "first_reached_at_ms",
            );
        let rows = self.db.query_all(&query).await?;
        let first = rows
            .first()
            .ok_or_else(|| ServiceError::not_found("account", account_id))?;
        let model = account::Model::from_query_result(first, "")?;
        let mut reached = Vec::with_capacity(rows.len());
        for row in &rows {
            let stage: Option<String> = row.try_get("", "first_stage")?;
            let at: Option<i64> = row.try_get("", "first_reached_at_ms")?;
            if let (Some(stage), Some(at)) = (stage, at) {
                reached.push((stage, at));
            }
        }
        let version = model.version;
        let firsts = HashMap::from([(model.account_id.clone(), reached)]);
        let account = hydrate_accounts_with(&self.db, vec![model], firsts)
            .await?
            .pop()
            .ok_or_else(|| ServiceError::internal(anyhow::anyhow!("hydrated no account")))?;
        Ok((version, account))
    }

    pub async fn list_accounts(
        &self,
        tenant: &TenantId,
        filter: &AccountFilter,
        page: &PageRequest,
    ) -> ServiceResult<(Vec<Account>, String)> {
        let mut query = account::Entity::find()
            .filter(account::Column::TenantId.eq(tenant.as_str()))
            .limit(page.fetch_limit());
        if let Some(stage) = filter.stage {
            query = query.filter(account::Column::Stage.eq(Stored(stage)));
        }
        if let Some(customer_type) = filter.customer_type {
            query = query.filter(account::Column::CustomerType.eq(Stored(customer_type)));
        }
        if let Some(owner_id) = &filter.owner_id {
            query = query.filter(account::Column::OwnerId.eq(owner_id.as_str()));
        }
        if let Some(domain) = &filter.domain {
            query = query.filter(account::Column::Domain.eq(domain.as_str()));
        }
        if filter.at_risk_only {
            query = query.filter(account::Column::AtRiskSource.is_not_null());
        }
        if let Some(external_id) = &filter.external_id {
            query = query.filter(account::Column::ExternalId.eq(external_id.as_str()));
        }
        let models = if let Some(since) = filter.changed_since {
            let columns = (account::Column::UpdatedAt, account::Column::AccountId);
            let query = changed_since(query, columns, since, page.after.as_deref())?;
            page.finish(query.all(&self.db).await?, |m| {
                changed_key(m.updated_at, &m.account_id)
            })
        } else {
            if let Some(after) = &page.after {
                query = query.filter(account::Column::AccountId.gt(after.as_str()));
            }
            let query = query.order_by_asc(account::Column::AccountId);
            page.finish(query.all(&self.db).await?, |m| m.account_id.clone())
        };
        let (models, token) = models;
        Ok((hydrate_accounts(&self.db, models).await?, token))
    }

    pub async fn update_account(
        &self,
        tenant: &TenantId,
        account_id: &str,
        changes: AccountChanges,
    ) -> ServiceResult<Account> {
        let txn = begin_write(&self.db).await?;
        let existing = lock_account(&txn, tenant.as_str(), account_id).await?;
        // A write of what is there already is no change (`writes_nothing`).
        let unchanged = writes_nothing(changes.name.as_ref(), &existing.name)
            && writes_nothing(changes.domain.as_ref(), &existing.domain)
            && writes_nothing(changes.owner_id.as_ref(), &existing.owner_id)
            && writes_nothing(changes.external_id.as_ref(), &existing.external_id);
        if unchanged {
            let account = hydrate_account(&txn, existing).await?;
            txn.commit().await?;
            return Ok(account);
        }
        let version = existing.version;
        let mut model = existing.into_active_model();
        if let Some(name) = changes.name {
            model.name = Set(name);
        }
        if let Some(domain) = changes.domain.clone() {
            model.domain = Set(domain);
        }
        if let Some(owner_id) = changes.owner_id {
            model.owner_id = Set(owner_id);
        }
        if let Some(external_id) = changes.external_id.clone() {
            model.external_id = Set(external_id);
        }
        model.updated_at = Set(time::now());
        model.version = Set(version + 1);
        let updated = match model.update(&txn).await {
            Ok(model) => model,
            Err(error) if is_unique_violation(&error) => {
                drop(txn);
                return Err(self
                    .account_taken(
                        tenant,
                        Some(account_id),
                        changes.domain.flatten().as_deref(),
                        changes.external_id.flatten().as_deref(),
                    )
                    .await);
            }
            Err(error) => return Err(error.into()),
        };
        let version = updated.version;
        let account = hydrate_account(&txn, updated).await?;
        txn.commit().await?;
        self.account_written(tenant.as_str(), account_id, version, Some(&account));
        Ok(account)
    }
}

/// The row of a new account (TARGETED / PROSPECT), created `now`.
pub(super) fn new_account_model(
    tenant_id: &str,
    account_id: String,
    new: NewAccount,
    key: Option<RequestKey>,
    now: DateTime<Utc>,
) -> account::ActiveModel {
    let (request_id, request_digest) = key.map(|k| (k.id, k.digest)).unzip();
    let (stage, customer_type) = NEW_ACCOUNT_STAGE;
    account::ActiveModel {
        account_id: Set(account_id),
        tenant_id: Set(tenant_id.to_owned()),
        name: Set(new.name),
        domain: Set(new.domain),
        owner_id: Set(new.owner_id),
        stage: Set(Stored(stage)),
        customer_type: Set(Stored(customer_type)),
        stage_entered_at: Set(now),
        engagement_score: Set(0.0),
        average_engagement_score: Set(0.0),
        intent_score: Set(0.0),
        create_request_id: Set(request_id),
        create_request_digest: Set(request_digest),
        created_at: Set(now),
        updated_at: Set(now),
        version: Set(1),
        score_sequence: Set(0),
        score_baseline: Set(0.0),
        score_day: Set(None),
        score_half_life_days: Set(None),
        score_added_total: Set(None),
        score_added_seq: Set(None),
        disqualify_count: Set(0),
        nurture_count: Set(0),
        last_recycle_transition_id: Set(None),
        transition_count: Set(0),
        created_at_ms: Set(ms(now)),
        external_id: Set(new.external_id),
        open_opportunities: Set(String::new()),
        at_risk_reason: Set(None),
        at_risk_source: Set(None),
        at_risk_actor: Set(None),
        at_risk_since_ms: Set(None),
    }
}

/// An account's open deals as its row keeps them: one "id:KIND" per line.
pub(crate) fn open_opportunities_text(open: &[(String, OpportunityKind)]) -> String {
    open.iter()
        .map(|(id, kind)| format!("{id}:{kind}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The account's open deals from its row (a line that does not parse, which
/// only a hand edit could make, is skipped).
pub(crate) fn open_opportunities(m: &account::Model) -> Vec<(String, OpportunityKind)> {
    m.open_opportunities
        .lines()
        .filter_map(|line| {
            let (id, kind) = line.rsplit_once(':')?;
            Some((id.to_owned(), kind.parse().ok()?))
        })
        .collect()
}

/// Writes an at-risk change on the account row as the caller will store it.
pub(crate) fn set_risk(m: &mut account::Model, risk: &RiskWrite) {
    match risk {
        RiskWrite::Set(flag) => {
            m.at_risk_reason = Some(flag.reason.clone());
            m.at_risk_source = Some(Stored(flag.source));
            m.at_risk_actor = Some(flag.actor.clone());
            m.at_risk_since_ms = Some(ms(flag.since));
        }
        RiskWrite::Clear => {
            m.at_risk_reason = None;
            m.at_risk_source = None;
            m.at_risk_actor = None;
            m.at_risk_since_ms = None;
        }
    }
}

/// Stores the at-risk columns of `m` (after `set_risk`), and nothing else.
pub(crate) async fn store_risk(
    conn: &impl ConnectionTrait,
    m: &account::Model,
) -> Result<(), sea_orm::DbErr> {
    account::Entity::update_many()
        .col_expr(
            account::Column::AtRiskReason,
            Expr::value(m.at_risk_reason.clone()),
        )
        .col_expr(account::Column::AtRiskSource, Expr::value(m.at_risk_source))
        .col_expr(
            account::Column::AtRiskActor,
            Expr::value(m.at_risk_actor.clone()),
        )
        .col_expr(
            account::Column::AtRiskSinceMs,
            Expr::value(m.at_risk_since_ms),
        )
        .filter(account::Column::TenantId.eq(m.tenant_id.as_str()))
        .filter(account::Column::AccountId.eq(m.account_id.as_str()))
        .exec(conn)
        .await?;
    Ok(())
}

/// The account's at-risk flag as stored.
pub(crate) fn risk_of(m: &account::Model) -> Option<AtRisk> {
    Some(AtRisk {
        source: *m.at_risk_source?,
        reason: m.at_risk_reason.clone().unwrap_or_default(),
        actor: m.at_risk_actor.clone().unwrap_or_default(),
        since: super::from_ms(m.at_risk_since_ms.unwrap_or_default()),
    })
}

pub(crate) async fn account_model(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    account_id: &str,
) -> ServiceResult<account::Model> {
    account::Entity::find_by_id(account_id)
        .filter(account::Column::TenantId.eq(tenant.as_str()))
        .one(conn)
        .await?
        .ok_or_else(|| ServiceError::not_found("account", account_id))
}

fn domain_taken(domain: Option<&str>) -> ServiceError {
    let domain = domain.unwrap_or_default();
    ServiceError::already_exists(
        "account",
        domain,
        format!("another account of this tenant already has the domain {domain}"),
    )
}
