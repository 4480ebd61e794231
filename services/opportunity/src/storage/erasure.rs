//! Opportunity's part of an erasure (`cascade_chassis::erasure`): erased
//! contacts leave buying groups and stakeholders (`domain::without_contacts`);
//! an erased account's opportunities are deleted, with when its contracts
//! end and what lifecycle was told of it. Idempotent.

use cascade_chassis::db::begin_write;
use cascade_chassis::{ServiceResult, TenantId};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::entities::{contract_terms, opportunity};
use super::{Repository, of_tenant, parse};
use crate::domain;

impl Repository {
    /// Removes `contact_ids` (contacts of `account_id`) from the tenant's
    /// opportunities; returns how many changed.
    pub async fn erase_contacts(
        &self,
        tenant: &TenantId,
        contact_ids: &[String],
    ) -> ServiceResult<usize> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        // Buying groups are checked against lifecycle, but a contact id is
        // looked for in every opportunity of the tenant rather than trusting
        // that: the documents are searched for it, then read.
        let mut changed = 0;
        for contact_id in contact_ids {
            let rows = of_tenant(t)
                .filter(opportunity::Column::Data.contains(contact_id.as_str()))
                .all(&txn)
                .await?;
            for row in rows {
                let current = parse(&row)?;
                let Some(cleaned) = domain::without_contacts(&current, contact_ids) else {
                    continue;
                };
                let data = serde_json::to_string(&cleaned)
                    .map_err(cascade_chassis::ServiceError::internal)?;
                opportunity::Entity::update_many()
                    .col_expr(opportunity::Column::Data, Expr::value(data))
                    .col_expr(opportunity::Column::Version, Expr::value(row.version + 1))
                    .filter(opportunity::Column::TenantId.eq(t))
                    .filter(opportunity::Column::OpportunityId.eq(row.opportunity_id.as_str()))
                    .exec(&txn)
                    .await?;
                changed += 1;
            }
        }
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
        txn.commit().await?;
        Ok(deleted)
    }
}
