//! Contacts marked inactive (lifecycle's DeactivateContact) or active again:
//! the status row, and the account recomputed with or without the contact's
//! engagement and delivered to lifecycle, in one transaction. The
//! contact's activities, buckets and ledger lines stay: reads and
//! recomputes leave them out while it is inactive (`scores::counted_contacts`).

use cascade_chassis::db::begin_write;
use cascade_chassis::{ServiceResult, TenantId, time};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entities::{contact_score, contact_status};
use super::models::current_model;
use super::scores::{lock_stored_scores, store_recomputed};
use super::{Repository, STALE_DAY, today};

/// A contact change as lifecycle lists it.
#[derive(Debug, Clone, Copy)]
pub struct ContactChange<'a> {
    pub change_id: &'a str,
    pub contact_id: &'a str,
    pub account_id: &'a str,
    /// True: no longer at the company; false: active again.
    pub inactive: bool,
}

/// A contact whose status changed, as each replica's directory must hear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedContact {
    pub tenant_id: String,
    pub account_id: String,
    pub contact_id: String,
}

impl Repository {
    /// Applies a contact change: records the status, recomputes the
    /// contact's account with (or without) its engagement, and enqueues a
    /// delivery to lifecycle when the totals moved. False when a change as
    /// late or later was applied before (a retry, or another replica that
    /// applied a later change first): then nothing is written.
    pub async fn apply_contact_change(
        &self,
        tenant: &TenantId,
        change: &ContactChange<'_>,
    ) -> ServiceResult<bool> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        // Written only over an earlier change (`domain::change_is_later`,
        // here as SQL so that two replicas cannot both win).
        let row = contact_status::ActiveModel {
            tenant_id: Set(t.to_owned()),
            contact_id: Set(change.contact_id.to_owned()),
            account_id: Set(change.account_id.to_owned()),
            inactive: Set(change.inactive),
            since_ms: Set(time::now().timestamp_millis()),
            change_id: Set(change.change_id.to_owned()),
        };
        let later = Expr::col((contact_status::Entity, contact_status::Column::ChangeId)).lt(
            Expr::col((Alias::new("excluded"), contact_status::Column::ChangeId)),
        );
        let on_conflict = OnConflict::columns([
            contact_status::Column::TenantId,
            contact_status::Column::ContactId,
        ])
        .update_columns([
            contact_status::Column::AccountId,
            contact_status::Column::Inactive,
            contact_status::Column::SinceMs,
            contact_status::Column::ChangeId,
        ])
        .action_and_where(later)
        .to_owned();
        let written = contact_status::Entity::insert(row)
            .on_conflict(on_conflict)
            .exec_without_returning(&txn)
            .await?;
        if written == 0 {
            txn.commit().await?;
            return Ok(false);
        }
        // The account's score first, then the contact's: the order every
        // writer of scores locks them in.
        let stored = lock_stored_scores(&txn, t, &[change.account_id]).await?;
        // The contact's stored score no longer fits the account's: the next
        // batch naming it recomputes the account from the buckets.
        contact_score::Entity::update_many()
            .col_expr(contact_score::Column::ComputedDay, Expr::value(STALE_DAY))
            .filter(contact_score::Column::TenantId.eq(t))
            .filter(contact_score::Column::ContactId.eq(change.contact_id))
            .exec(&txn)
            .await?;
        let mut delivered = 0;
        if !stored.is_empty() {
            let model = current_model(&txn, t).await?;
            delivered = store_recomputed(
                &txn,
                t,
                (&model, today()),
                &stored,
                &[change.account_id],
                false,
            )
            .await?;
        }
        txn.commit().await?;
        if delivered > 0 {
            self.deliveries_written.notify_one();
        }
        Ok(true)
    }

    /// An email change: every replica's directory must forget whom the old
    /// email resolved to (`contact_changes_since` reads this row's time),
    /// but the contact's status and scores stay as they are, whatever the
    /// status lifecycle recorded beside the change. Only the time is
    /// written; a contact without a row gets an active one with no change
    /// id, which any status change replaces.
    pub async fn touch_contact(
        &self,
        tenant: &TenantId,
        contact_id: &str,
        account_id: &str,
    ) -> ServiceResult<()> {
        let row = contact_status::ActiveModel {
            tenant_id: Set(tenant.as_str().to_owned()),
            contact_id: Set(contact_id.to_owned()),
            account_id: Set(account_id.to_owned()),
            inactive: Set(false),
            since_ms: Set(time::now().timestamp_millis()),
            change_id: Set(String::new()),
        };
        let on_conflict = OnConflict::columns([
            contact_status::Column::TenantId,
            contact_status::Column::ContactId,
        ])
        .update_column(contact_status::Column::SinceMs)
        .to_owned();
        // Through the write queue, as every write of scoring is (SQLite).
        let txn = begin_write(&self.db).await?;
        contact_status::Entity::insert(row)
            .on_conflict(on_conflict)
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// The contacts whose status any replica changed at or after `since_ms`
    /// (by this database's rows, so every replica hears of every change).
    pub async fn contact_changes_since(&self, since_ms: i64) -> ServiceResult<Vec<ChangedContact>> {
        let rows = contact_status::Entity::find()
            .filter(contact_status::Column::SinceMs.gte(since_ms))
            .order_by_asc(contact_status::Column::SinceMs)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| ChangedContact {
                tenant_id: row.tenant_id,
                account_id: row.account_id,
                contact_id: row.contact_id,
            })
            .collect())
    }
}
