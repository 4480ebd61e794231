//! Opportunity's part of an erasure (`cascade_chassis::erasure`): erased
//! contacts leave buying groups and stakeholders (`domain::without_contacts`);
//! an erased account's opportunities are deleted, with when its contracts
//! end and what lifecycle was told of it. Either way the account's events
//! that wait for lifecycle (pending, or dead letters kept for an operator)
//! lose what they said of the erased people. Idempotent.

use cascade_chassis::db::begin_write;
use cascade_chassis::outbox;
use cascade_chassis::{ServiceResult, TenantId};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
};

use super::entities::{contract_terms, opportunity};
use super::events::EventPayload;
use super::{EVENT_TOPIC, Repository, of_tenant, parse};
use crate::domain;

/// Takes erased contacts out of the buying groups of the account's events
/// that wait, and, for an erased account (`whole`), the seller's free text
/// too (a lost reason can name people). What is left is still delivered:
/// the account's stage moves do not depend on who was erased. An unreadable
/// payload is left as it is (the deliverer drops it).
async fn scrub_undelivered(
    conn: &impl ConnectionTrait,
    t: &str,
    account_id: &str,
    erased: impl Fn(&str) -> bool,
    whole: bool,
) -> Result<u64, DbErr> {
    outbox::rewrite_undelivered(conn, t, EVENT_TOPIC, account_id, |bytes| {
        let mut payload = EventPayload::decode(bytes).ok()?;
        let before = (payload.buying_group.len(), payload.lost_reason.len());
        payload.buying_group.retain(|contact| !erased(contact));
        if whole {
            payload.lost_reason.clear();
        }
        ((payload.buying_group.len(), payload.lost_reason.len()) != before)
            .then(|| payload.encode())
    })
    .await
}

impl Repository {
    /// Removes `contact_ids` (contacts of `account_id`) from the tenant's
    /// opportunities and from the account's events that wait; returns how
    /// many opportunities changed.
    pub async fn erase_contacts(
        &self,
        tenant: &TenantId,
        account_id: &str,
        contact_ids: &[String],
    ) -> ServiceResult<usize> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        // Buying groups are checked against lifecycle, but a contact id is
        // looked for in every opportunity of the tenant rather than trusting
        // that: the documents are searched for it, then read. Locked as a
        // change locks them (in id order, so two erasures cannot deadlock):
        // a change committed meanwhile is read, not overwritten with the
        // copy read before it (a reviewer found saves lost on PostgreSQL).
        let mut naming = Condition::any();
        for contact_id in contact_ids {
            naming = naming.add(opportunity::Column::Data.contains(contact_id.as_str()));
        }
        let rows = txn
            .lock_all(
                of_tenant(t)
                    .filter(naming)
                    .order_by_asc(opportunity::Column::OpportunityId),
            )
            .await?;
        let mut changed = 0;
        for row in rows {
            let current = parse(&row)?;
            let Some(cleaned) = domain::without_contacts(&current, contact_ids) else {
                continue;
            };
            let data =
                serde_json::to_string(&cleaned).map_err(cascade_chassis::ServiceError::internal)?;
            opportunity::Entity::update_many()
                .col_expr(opportunity::Column::Data, Expr::value(data))
                .col_expr(opportunity::Column::Version, Expr::value(row.version + 1))
                .filter(opportunity::Column::TenantId.eq(t))
                .filter(opportunity::Column::OpportunityId.eq(row.opportunity_id.as_str()))
                .exec(&txn)
                .await?;
            changed += 1;
        }
        scrub_undelivered(
            &txn,
            t,
            account_id,
            |c| contact_ids.iter().any(|e| e == c),
            false,
        )
        .await?;
        txn.commit().await?;
        Ok(changed)
    }

    /// Deletes an erased account's opportunities, and when its contracts
    /// end; returns how many opportunities.
    pub async fn erase_account(&self, tenant: &TenantId, account_id: &str) -> ServiceResult<u64> {
        let txn = begin_write(&self.db).await?;
        let deleted = opportunity::Entity::delete_many()
            .filter(opportunity::Column::TenantId.eq(tenant.as_str()))
            .filter(opportunity::Column::AccountId.eq(account_id))
            .exec(&txn)
            .await?
            .rows_affected;
        contract_terms::Entity::delete_many()
            .filter(contract_terms::Column::TenantId.eq(tenant.as_str()))
            .filter(contract_terms::Column::AccountId.eq(account_id))
            .exec(&txn)
            .await?;
        scrub_undelivered(&txn, tenant.as_str(), account_id, |_| true, true).await?;
        txn.commit().await?;
        Ok(deleted)
    }
}
