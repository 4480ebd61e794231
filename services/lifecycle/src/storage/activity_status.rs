//! Inactive contacts (no longer at the company): the flag on the contact,
//! and the change scoring reads (ListPendingContactChanges) to stop or
//! start counting the person's engagement, kept until scoring confirms it.
//! Both are written in one transaction, so scoring hears of every change.
//! A changed email is recorded the same way (`record_contact_change`), as
//! its own kind (`ChangeKind::Email`), so that scoring stops resolving the
//! old email to this contact without touching the status it holds.

use cascade_chassis::db::begin_write;
use cascade_chassis::{ServiceError, ServiceResult, TenantId, time};
use cascade_domain::ids;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait,
};

use super::contacts::contact_model;
use super::entities::contact_change;
use super::{Repository, hydrate_contact, ms};
use crate::domain::Contact;

/// A change scoring has still to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactChange {
    pub tenant_id: String,
    pub change_id: String,
    pub contact_id: String,
    pub account_id: String,
    pub inactive: bool,
    pub kind: ChangeKind,
}

/// What a recorded change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Marked inactive or active again: scoring applies `inactive`.
    Status,
    /// Only the email changed: scoring forgets whom the old email resolved
    /// to and leaves the status alone. The status is recorded too, for a
    /// reader that predates kinds (which applies it, as it always did), but
    /// a current reader must not: a status change recorded on another
    /// replica can carry an earlier id (clocks differ) and still be newer.
    Email,
}

/// The only service that reads the changes.
pub const CONTACT_CHANGE_READERS: [&str; 1] = ["scoring"];

/// Records for scoring that the contact changed, in the caller's
/// transaction: its status (`inactive`, as it now is), or its email
/// (`kind`). Either way scoring forgets what it checked of the contact, so
/// an email that moved to another person resolves anew, not to the one it
/// left.
///
/// Scoring keeps the status of the latest change id, and ids follow each
/// replica's clock, so the id is taken after the contact's previous change
/// (`ids::new_id_after`): a reactivation on a replica whose clock runs
/// behind the one that deactivated still wins. The caller has updated the
/// contact's row first, so its lock (PostgreSQL) or the write lock (SQLite)
/// orders the writers of one contact.
pub(super) async fn record_contact_change(
    conn: &impl sea_orm::ConnectionTrait,
    tenant_id: &str,
    contact_id: &str,
    account_id: &str,
    (kind, inactive): (ChangeKind, bool),
    at_ms: i64,
) -> Result<(), sea_orm::DbErr> {
    let previous: Option<String> = contact_change::Entity::find()
        .select_only()
        .column_as(contact_change::Column::ChangeId.max(), "previous")
        .filter(contact_change::Column::TenantId.eq(tenant_id))
        .filter(contact_change::Column::ContactId.eq(contact_id))
        .into_tuple()
        .one(conn)
        .await?
        .flatten();
    contact_change::ActiveModel {
        change_id: Set(ids::new_id_after(previous.as_deref())),
        tenant_id: Set(tenant_id.to_owned()),
        contact_id: Set(contact_id.to_owned()),
        account_id: Set(account_id.to_owned()),
        inactive: Set(inactive),
        email_only: Set(kind == ChangeKind::Email),
        created_at_ms: Set(at_ms),
        scoring_done_at_ms: Set(None),
    }
    .insert(conn)
    .await
    .map(|_| ())
}

impl Repository {
    /// Marks a contact inactive (`Some(reason)`) or active again (`None`),
    /// recording the change for scoring. A contact already in that state is
    /// returned unchanged, with nothing recorded.
    pub async fn set_contact_inactive(
        &self,
        tenant: &TenantId,
        contact_id: &str,
        inactive: Option<Option<String>>,
    ) -> ServiceResult<Contact> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        let model = contact_model(&txn, tenant, contact_id).await?;
        if model.inactive_since_ms.is_some() == inactive.is_some() {
            let contact = hydrate_contact(&txn, model).await?;
            txn.commit().await?;
            return Ok(contact);
        }
        let now = time::now();
        let account_id = model.account_id.clone();
        let mut am = model.into_active_model();
        am.inactive_since_ms = Set(inactive.as_ref().map(|_| ms(now)));
        am.inactive_reason = Set(inactive.clone().flatten());
        am.updated_at = Set(now);
        let updated = am.update(&txn).await?;
        record_contact_change(
            &txn,
            t,
            contact_id,
            &account_id,
            (ChangeKind::Status, inactive.is_some()),
            ms(now),
        )
        .await?;
        let contact = hydrate_contact(&txn, updated).await?;
        txn.commit().await?;
        Ok(contact)
    }

    /// Changes `service` has not confirmed, of every tenant, oldest first.
    pub async fn pending_contact_changes(
        &self,
        service: &str,
        after: Option<&str>,
        limit: u64,
    ) -> ServiceResult<Vec<ContactChange>> {
        check_reader(service)?;
        Ok(contact_change::Entity::find()
            .filter(contact_change::Column::ScoringDoneAtMs.is_null())
            .apply_if(after, |query, after| {
                query.filter(contact_change::Column::ChangeId.gt(after))
            })
            .order_by_asc(contact_change::Column::ChangeId)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| ContactChange {
                tenant_id: m.tenant_id,
                change_id: m.change_id,
                contact_id: m.contact_id,
                account_id: m.account_id,
                inactive: m.inactive,
                kind: if m.email_only {
                    ChangeKind::Email
                } else {
                    ChangeKind::Status
                },
            })
            .collect())
    }

    /// `service` has applied a change. Idempotent; NOT_FOUND for a change
    /// the tenant does not have.
    pub async fn confirm_contact_change(
        &self,
        tenant: &TenantId,
        change_id: &str,
        service: &str,
    ) -> ServiceResult<()> {
        check_reader(service)?;
        let _turn = cascade_chassis::db::write_turn(&self.db).await?;
        let found = contact_change::Entity::update_many()
            .col_expr(
                contact_change::Column::ScoringDoneAtMs,
                Expr::cust(format!("COALESCE(scoring_done_at_ms, {})", ms(time::now()))),
            )
            .filter(contact_change::Column::TenantId.eq(tenant.as_str()))
            .filter(contact_change::Column::ChangeId.eq(change_id))
            .exec(&self.db)
            .await?;
        if found.rows_affected == 0 {
            return Err(ServiceError::not_found("contact change", change_id));
        }
        Ok(())
    }
}

fn check_reader(service: &str) -> ServiceResult<()> {
    if CONTACT_CHANGE_READERS.contains(&service) {
        return Ok(());
    }
    Err(ServiceError::invalid(
        "service",
        format!(
            "must be one of {} (got {service:?})",
            CONTACT_CHANGE_READERS.join(", ")
        ),
    ))
}
