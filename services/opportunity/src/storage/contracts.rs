//! When an account's contracts end, and telling lifecycle once per term.
//!
//! Won opportunities never change, so when an account's contracts end
//! (`domain::contracts_end`) changes only when one of its opportunities is
//! won: the win recomputes it into the account's `contract_terms` row, in
//! its transaction. `due_on` holds the end until it is reported, so the
//! periodic check reads only the accounts whose end has passed unreported
//! (one indexed range), and reports each with a conditional update in the
//! transaction that queues CONTRACTS_ENDED: exactly once per win, across
//! replicas. Every win makes the account's end due again, the same end
//! included (a customer won back on a contract that has also ended).

use cascade_chassis::db::{Stored, WriteTransaction, begin_write};
use cascade_chassis::{ServiceError, ServiceResult};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entities::{contract_terms, opportunity};
use super::events::enqueue;
use super::{Repository, of_tenant, parse};
use crate::domain::{self, Date, EventKind, Status};

/// Accounts reported per query of the periodic check.
const PAGE: u64 = 200;

/// Locks the account's row (made on first use) until `txn` ends: the
/// changes of one account's deals that lifecycle must see in order (wins,
/// losses) are made one after the other, each seeing the one before it.
pub(super) async fn lock_account(
    txn: &WriteTransaction,
    tenant_id: &str,
    account_id: &str,
) -> ServiceResult<contract_terms::Model> {
    contract_terms::Entity::insert(contract_terms::ActiveModel {
        tenant_id: Set(tenant_id.to_owned()),
        account_id: Set(account_id.to_owned()),
        ends_on: Set(None),
        last_opportunity_id: Set(None),
        due_on: Set(None),
        reported_on: Set(None),
    })
    .on_conflict(
        OnConflict::columns([
            contract_terms::Column::TenantId,
            contract_terms::Column::AccountId,
        ])
        .do_nothing()
        .to_owned(),
    )
    .exec_without_returning(txn)
    .await?;
    txn.lock_one(contract_terms::Entity::find_by_id((
        tenant_id.to_owned(),
        account_id.to_owned(),
    )))
    .await?
    .ok_or_else(|| ServiceError::internal(anyhow::anyhow!("contract terms row vanished")))
}

/// Recomputes when `account_id`'s contracts end, after one of its
/// opportunities was won in `txn` (already written there). The account's
/// row is locked first, so concurrent wins of one account apply one after
/// the other and each sees the other's won opportunity.
pub(super) async fn account_won(
    txn: &WriteTransaction,
    tenant_id: &str,
    account_id: &str,
) -> ServiceResult<()> {
    lock_account(txn, tenant_id, account_id).await?;
    let won = of_tenant(tenant_id)
        .filter(opportunity::Column::AccountId.eq(account_id))
        .filter(opportunity::Column::Status.eq(Stored(Status::Won)))
        .all(txn)
        .await?
        .iter()
        .map(parse)
        .collect::<ServiceResult<Vec<_>>>()?;
    let end = domain::contracts_end(&won);
    // A win starts a new term: its end is due, even one on or before the
    // end already reported (a customer won back on a contract that also
    // ended would otherwise stay a customer with every contract over).
    // Reports repeat only across wins: `report` clears `due_on`.
    let due = end.map(|(d, _)| d);
    contract_terms::Entity::update_many()
        .col_expr(
            contract_terms::Column::EndsOn,
            Expr::value(end.map(|(d, _)| d.iso())),
        )
        .col_expr(
            contract_terms::Column::LastOpportunityId,
            Expr::value(end.map(|(_, o)| o.opportunity_id.clone())),
        )
        .col_expr(
            contract_terms::Column::DueOn,
            Expr::value(due.map(Date::iso)),
        )
        .filter(contract_terms::Column::TenantId.eq(tenant_id))
        .filter(contract_terms::Column::AccountId.eq(account_id))
        .exec(txn)
        .await?;
    Ok(())
}

impl Repository {
    /// Reports to lifecycle (CONTRACTS_ENDED through the outbox) every
    /// account of every tenant whose contracts ended before `today` and
    /// were not reported for that end; returns how many it reported. Safe
    /// to run on every replica at once.
    pub async fn report_ended_contracts(&self, today: Date) -> ServiceResult<usize> {
        let mut reported = 0;
        let mut after: Option<(String, String)> = None;
        loop {
            let mut query = contract_terms::Entity::find()
                .filter(contract_terms::Column::DueOn.lt(today.iso()))
                .order_by_asc(contract_terms::Column::TenantId)
                .order_by_asc(contract_terms::Column::AccountId)
                .limit(PAGE);
            if let Some((tenant, account)) = &after {
                query = query.filter(
                    Expr::tuple([
                        Expr::col(contract_terms::Column::TenantId),
                        Expr::col(contract_terms::Column::AccountId),
                    ])
                    .gt(Expr::tuple([
                        Expr::value(tenant.clone()),
                        Expr::value(account.clone()),
                    ])),
                );
            }
            let due = query.all(&self.db).await?;
            for row in &due {
                // One account's trouble does not hold up the others.
                match self.report(row, today).await {
                    Ok(true) => reported += 1,
                    Ok(false) => {}
                    Err(error) => tracing::warn!(
                        tenant = row.tenant_id,
                        account = row.account_id,
                        %error,
                        "contracts ended: not reported; will try again"
                    ),
                }
            }
            match due.last() {
                Some(last) if due.len() as u64 == PAGE => {
                    after = Some((last.tenant_id.clone(), last.account_id.clone()));
                }
                _ => break,
            }
        }
        if reported > 0 {
            self.events_written.notify_one();
        }
        Ok(reported)
    }

    /// Reports one due account unless another replica (or a win in
    /// between) got there first; whether it did.
    async fn report(&self, row: &contract_terms::Model, today: Date) -> ServiceResult<bool> {
        let (Some(due), Some(last_id)) = (row.due_on.as_deref(), &row.last_opportunity_id) else {
            return Ok(false);
        };
        let Some(end) = Date::parse_iso(due).filter(|end| domain::has_ended(*end, today)) else {
            return Ok(false);
        };
        let t = row.tenant_id.as_str();
        let txn = begin_write(&self.db).await?;
        let claimed = contract_terms::Entity::update_many()
            .col_expr(contract_terms::Column::DueOn, Expr::value(None::<String>))
            .col_expr(contract_terms::Column::ReportedOn, Expr::value(due))
            .filter(contract_terms::Column::TenantId.eq(t))
            .filter(contract_terms::Column::AccountId.eq(row.account_id.as_str()))
            .filter(contract_terms::Column::DueOn.eq(due))
            .filter(contract_terms::Column::LastOpportunityId.eq(last_id.as_str()))
            .exec(&txn)
            .await?
            .rows_affected;
        if claimed == 0 {
            return Ok(false);
        }
        let last = of_tenant(t)
            .filter(opportunity::Column::OpportunityId.eq(last_id.as_str()))
            .one(&txn)
            .await?
            .ok_or_else(|| {
                ServiceError::internal(anyhow::anyhow!(
                    "the won opportunity {last_id} of account {} is gone",
                    row.account_id
                ))
            })?;
        let last = parse(&last)?;
        enqueue(
            &txn,
            t,
            &last,
            EventKind::ContractsEnded,
            Some(end),
            ("", 0),
        )
        .await?;
        txn.commit().await?;
        tracing::info!(
            tenant = t,
            account = row.account_id,
            ended = due,
            "contracts ended: reported to lifecycle"
        );
        Ok(true)
    }
}
