//! Erasure: lifecycle's part (the contact or account and everything of it
//! that holds personal data, deleted in one transaction with the erasure's
//! record), and the record the other services read their part from
//! (ListPendingErasures) and confirm it on (ConfirmErasure).
//!
//! Kept: the stage histories (ids, stages, causes, times: the fact that
//! something happened) and applied event ids. Deleted: the contact rows
//! (email, names, title), first-reached dates, buying-group memberships, and
//! for an account its notifications and watch feed entries (their text names
//! the account) and every reason in its stage history. A contact leaves the
//! texts that name them (a hand-raise notification, as stored and as the
//! watch feed replays it), whatever their email was then.

use cascade_chassis::db::{Stored, begin_write};
use cascade_chassis::{ServiceError, ServiceResult, TenantId, time};
use cascade_domain::ids;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};
use std::collections::{BTreeSet, HashMap};

use super::contacts::contact_model;
use super::entities::{
    account, account_event, account_opportunity, contact, contact_change, erasure, notification,
    opportunity_contact, stage_first, transition,
};
use super::{OPEN, Repository, lock_account, lock_account_to_delete};
use crate::domain::erasure::{ERASING_SERVICES, Erasure, ErasureSubject, may_erase_account};

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn from_model(m: erasure::Model) -> Erasure {
    Erasure {
        erasure_id: m.erasure_id,
        subject: *m.subject_type,
        subject_id: m.subject_id,
        account_id: m.account_id,
        contact_ids: m
            .contact_ids
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        actor: m.actor,
        created_at: at(m.created_at_ms),
        scoring_done_at: m.scoring_done_at_ms.map(at),
        opportunity_done_at: m.opportunity_done_at_ms.map(at),
    }
}

/// Deletes what lifecycle holds of `contact_ids` beside the contact rows:
/// first-reached dates and buying-group memberships.
async fn delete_contact_traces(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    contact_ids: &[String],
) -> Result<(), DbErr> {
    if contact_ids.is_empty() {
        return Ok(());
    }
    for chunk in cascade_chassis::db::statement_chunks(contact_ids, 1) {
        stage_first::Entity::delete_many()
            .filter(stage_first::Column::TenantId.eq(tenant_id))
            .filter(stage_first::Column::SubjectId.is_in(chunk.iter().cloned()))
            .exec(conn)
            .await?;
        opportunity_contact::Entity::delete_many()
            .filter(opportunity_contact::Column::TenantId.eq(tenant_id))
            .filter(opportunity_contact::Column::ContactId.is_in(chunk.iter().cloned()))
            .exec(conn)
            .await?;
        contact::Entity::delete_many()
            .filter(contact::Column::TenantId.eq(tenant_id))
            .filter(contact::Column::ContactId.is_in(chunk.iter().cloned()))
            .exec(conn)
            .await?;
        // A pending inactive/active change would bring the erased id back
        // into scoring after its erasure; the erasure supersedes it.
        contact_change::Entity::delete_many()
            .filter(contact_change::Column::TenantId.eq(tenant_id))
            .filter(contact_change::Column::ContactId.is_in(chunk.iter().cloned()))
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// What a text says instead of an erased person's email.
pub const ERASED_PERSON: &str = "a person since erased";

/// `text` naming `email` as who raised a hand, with the erased person in
/// its place; `None` when it does not (another person whose email merely
/// contains this one, `joann@` for `ann@`, keeps theirs). For texts written
/// before notifications recorded whom they name.
pub(crate) fn without_raiser(text: &str, email: &str) -> Option<String> {
    let rest = text.strip_prefix(email)?;
    rest.starts_with(" raised a hand")
        .then(|| format!("{ERASED_PERSON}{rest}"))
}

/// A hand-raise text known to name the erased person, with the erased
/// person in place of whoever it names (an email or, for a person without
/// one, a contact id: neither holds a space). `None` when it is not a
/// hand-raise text or names nobody any more.
fn without_named_raiser(text: &str) -> Option<String> {
    let at = text.find(" raised a hand")?;
    let scrubbed = format!("{ERASED_PERSON}{}", &text[at..]);
    (scrubbed != text).then_some(scrubbed)
}

/// Takes an erased person out of the notification texts that name them as
/// who raised a hand, and out of the watch feed's copies of them. Texts
/// written since notifications record whom they name are found by contact
/// id, on any account and whatever the person's email was then; older ones
/// by the email the person has now, on their account. The webhook call is
/// built from the notification's row when delivered, so one still waiting
/// goes out without it too. Emails are matched in Rust, not by LIKE: an
/// email may hold LIKE's escape character.
async fn scrub_raiser(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    contact: &contact::Model,
) -> Result<(), DbErr> {
    let named: Vec<(String, String, String)> = notification::Entity::find()
        .select_only()
        .column(notification::Column::NotificationId)
        .column(notification::Column::AccountId)
        .column(notification::Column::Text)
        .filter(notification::Column::TenantId.eq(tenant_id))
        .filter(notification::Column::RaiserContactId.eq(contact.contact_id.as_str()))
        .into_tuple()
        .all(conn)
        .await?;
    let mut scrubbed: HashMap<String, String> = HashMap::new();
    let mut accounts: BTreeSet<String> = BTreeSet::new();
    for (id, account_id, text) in named {
        if let Some(text) = without_named_raiser(&text) {
            scrubbed.insert(id, text);
            accounts.insert(account_id);
        }
    }
    if let Some(email) = contact.email.as_deref() {
        let older: Vec<(String, String)> = notification::Entity::find()
            .select_only()
            .column(notification::Column::NotificationId)
            .column(notification::Column::Text)
            .filter(notification::Column::TenantId.eq(tenant_id))
            .filter(notification::Column::AccountId.eq(contact.account_id.as_str()))
            .filter(notification::Column::RaiserContactId.is_null())
            .into_tuple()
            .all(conn)
            .await?;
        for (id, text) in older {
            if let Some(text) = without_raiser(&text, email) {
                scrubbed.insert(id, text);
                accounts.insert(contact.account_id.clone());
            }
        }
    }
    for (id, text) in &scrubbed {
        notification::Entity::update_many()
            .col_expr(notification::Column::Text, Expr::value(text.as_str()))
            .filter(notification::Column::TenantId.eq(tenant_id))
            .filter(notification::Column::NotificationId.eq(id.as_str()))
            .exec(conn)
            .await?;
    }
    // Feed entries are protobuf: read the accounts' notifications back.
    for account_id in &accounts {
        let entries: Vec<(i64, Vec<u8>)> = account_event::Entity::find()
            .select_only()
            .column(account_event::Column::Seq)
            .column(account_event::Column::Payload)
            .filter(account_event::Column::TenantId.eq(tenant_id))
            .filter(account_event::Column::AccountId.eq(account_id.as_str()))
            .filter(account_event::Column::ToStage.is_null())
            .into_tuple()
            .all(conn)
            .await?;
        for (seq, payload) in entries {
            let Some(payload) = super::history::with_notification_texts(&payload, &scrubbed) else {
                continue;
            };
            account_event::Entity::update_many()
                .col_expr(account_event::Column::Payload, Expr::value(payload))
                .filter(account_event::Column::TenantId.eq(tenant_id))
                .filter(account_event::Column::Seq.eq(seq))
                .exec(conn)
                .await?;
        }
    }
    Ok(())
}

async fn record(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    actor: &str,
    subject: (ErasureSubject, &str),
    account_id: &str,
    contact_ids: &[String],
) -> Result<erasure::Model, DbErr> {
    erasure::ActiveModel {
        erasure_id: Set(ids::new_id()),
        tenant_id: Set(tenant_id.to_owned()),
        subject_type: Set(Stored(subject.0)),
        subject_id: Set(subject.1.to_owned()),
        account_id: Set(account_id.to_owned()),
        contact_ids: Set(contact_ids.join("\n")),
        actor: Set(actor.to_owned()),
        created_at_ms: Set(time::now().timestamp_millis()),
        scoring_done_at_ms: Set(None),
        opportunity_done_at_ms: Set(None),
    }
    .insert(conn)
    .await
}

impl Repository {
    /// The erasure of `subject_id` in the tenant, if any.
    async fn erasure_of(
        &self,
        tenant: &TenantId,
        subject_id: &str,
    ) -> ServiceResult<Option<Erasure>> {
        Ok(erasure::Entity::find()
            .filter(erasure::Column::TenantId.eq(tenant.as_str()))
            .filter(erasure::Column::SubjectId.eq(subject_id))
            .one(&self.db)
            .await?
            .map(from_model))
    }

    /// The erasure of an account that took `contact_id` with it, if any.
    async fn account_erasure_with(
        &self,
        tenant: &TenantId,
        contact_id: &str,
    ) -> ServiceResult<Option<Erasure>> {
        Ok(erasure::Entity::find()
            .filter(erasure::Column::TenantId.eq(tenant.as_str()))
            .filter(erasure::Column::SubjectType.eq(Stored(ErasureSubject::Account)))
            .filter(erasure::Column::ContactIds.contains(contact_id))
            .all(&self.db)
            .await?
            .into_iter()
            .map(from_model)
            .find(|e| e.contact_ids.iter().any(|c| c == contact_id)))
    }

    /// Erases a contact here and records the erasure for the other services.
    /// A contact erased with its account answers with that erasure.
    pub async fn erase_contact(
        &self,
        tenant: &TenantId,
        actor: &str,
        contact_id: &str,
    ) -> ServiceResult<Erasure> {
        if let Some(done) = self.erasure_of(tenant, contact_id).await? {
            return Ok(done);
        }
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        let found = match contact_model(&txn, tenant, contact_id).await {
            Err(ServiceError::NotFound { .. }) => {
                drop(txn);
                if let Some(with_account) = self.account_erasure_with(tenant, contact_id).await? {
                    return Ok(with_account);
                }
                return Err(ServiceError::not_found("contact", contact_id));
            }
            found => found?,
        };
        // Changes to a contact serialize on its account, like the engine's;
        // read again under the lock, for the email as it is now.
        lock_account(&txn, t, &found.account_id).await?;
        let found = contact_model(&txn, tenant, contact_id).await?;
        let erased = [contact_id.to_owned()];
        delete_contact_traces(&txn, t, &erased).await?;
        scrub_raiser(&txn, t, &found).await?;
        let model = record(
            &txn,
            t,
            actor,
            (ErasureSubject::Contact, contact_id),
            &found.account_id,
            &erased,
        )
        .await?;
        txn.commit().await?;
        Ok(from_model(model))
    }

    /// Erases an account with its contacts here (refused while it has open
    /// opportunities, unless forced) and records the erasure.
    pub async fn erase_account(
        &self,
        tenant: &TenantId,
        actor: &str,
        account_id: &str,
        force: bool,
    ) -> ServiceResult<Erasure> {
        if let Some(done) = self.erasure_of(tenant, account_id).await? {
            return Ok(done);
        }
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        lock_account_to_delete(&txn, t, account_id).await?;
        let open = account_opportunity::Entity::find()
            .filter(account_opportunity::Column::TenantId.eq(t))
            .filter(account_opportunity::Column::AccountId.eq(account_id))
            .filter(account_opportunity::Column::Status.eq(OPEN))
            .count(&txn)
            .await?;
        may_erase_account(u32::try_from(open).unwrap_or(u32::MAX), force).map_err(|refusal| {
            ServiceError::precondition(
                "OPEN_OPPORTUNITIES",
                format!("account/{account_id}"),
                refusal.0,
            )
        })?;
        let contact_ids: Vec<String> = contact::Entity::find()
            .select_only()
            .column(contact::Column::ContactId)
            .filter(contact::Column::TenantId.eq(t))
            .filter(contact::Column::AccountId.eq(account_id))
            .order_by_asc(contact::Column::ContactId)
            .into_tuple()
            .all(&txn)
            .await?;
        delete_contact_traces(&txn, t, &contact_ids).await?;
        stage_first::Entity::delete_many()
            .filter(stage_first::Column::TenantId.eq(t))
            .filter(stage_first::Column::SubjectId.eq(account_id))
            .exec(&txn)
            .await?;
        // The account's deals, and what was said about it: notifications
        // and the watch feed carry its name.
        let opportunities = account_opportunity::Entity::find()
            .select_only()
            .column(account_opportunity::Column::OpportunityId)
            .filter(account_opportunity::Column::TenantId.eq(t))
            .filter(account_opportunity::Column::AccountId.eq(account_id))
            .into_query();
        opportunity_contact::Entity::delete_many()
            .filter(opportunity_contact::Column::TenantId.eq(t))
            .filter(opportunity_contact::Column::OpportunityId.in_subquery(opportunities))
            .exec(&txn)
            .await?;
        account_opportunity::Entity::delete_many()
            .filter(account_opportunity::Column::TenantId.eq(t))
            .filter(account_opportunity::Column::AccountId.eq(account_id))
            .exec(&txn)
            .await?;
        notification::Entity::delete_many()
            .filter(notification::Column::TenantId.eq(t))
            .filter(notification::Column::AccountId.eq(account_id))
            .exec(&txn)
            .await?;
        account_event::Entity::delete_many()
            .filter(account_event::Column::TenantId.eq(t))
            .filter(account_event::Column::AccountId.eq(account_id))
            .exec(&txn)
            .await?;
        account::Entity::delete_many()
            .filter(account::Column::TenantId.eq(t))
            .filter(account::Column::AccountId.eq(account_id))
            .exec(&txn)
            .await?;
        // The history stays, but its reasons are free text (an operator's
        // for a manual move, the at-risk explanations) that may name the
        // account's people.
        transition::Entity::update_many()
            .col_expr(
                transition::Column::Reason,
                Expr::value(Option::<String>::None),
            )
            .filter(transition::Column::TenantId.eq(t))
            .filter(transition::Column::AccountId.eq(account_id))
            .filter(transition::Column::Reason.is_not_null())
            .exec(&txn)
            .await?;
        let model = record(
            &txn,
            t,
            actor,
            (ErasureSubject::Account, account_id),
            account_id,
            &contact_ids,
        )
        .await?;
        txn.commit().await?;
        self.account_written(t, account_id, super::cache::ERASED, None);
        Ok(from_model(model))
    }

    pub async fn get_erasure(&self, tenant: &TenantId, erasure_id: &str) -> ServiceResult<Erasure> {
        erasure::Entity::find_by_id(erasure_id)
            .filter(erasure::Column::TenantId.eq(tenant.as_str()))
            .one(&self.db)
            .await?
            .map(from_model)
            .ok_or_else(|| ServiceError::not_found("erasure", erasure_id))
    }

    /// Erasures `service` has not confirmed, of every tenant, oldest first
    /// (after `after`, an erasure id): (tenant, erasure).
    pub async fn pending_erasures(
        &self,
        service: &str,
        after: Option<&str>,
        limit: u64,
    ) -> ServiceResult<Vec<(String, Erasure)>> {
        let pending = match service {
            "scoring" => erasure::Column::ScoringDoneAtMs.is_null(),
            "opportunity" => erasure::Column::OpportunityDoneAtMs.is_null(),
            other => return Err(unknown_service(other)),
        };
        Ok(erasure::Entity::find()
            .filter(pending)
            .apply_if(after, |query, after| {
                query.filter(erasure::Column::ErasureId.gt(after))
            })
            .order_by_asc(erasure::Column::ErasureId)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| (m.tenant_id.clone(), from_model(m)))
            .collect())
    }

    /// `service` has erased its part of an erasure; whether all have now.
    pub async fn confirm_erasure(
        &self,
        tenant: &TenantId,
        erasure_id: &str,
        service: &str,
    ) -> ServiceResult<bool> {
        let column = match service {
            "scoring" => erasure::Column::ScoringDoneAtMs,
            "opportunity" => erasure::Column::OpportunityDoneAtMs,
            other => return Err(unknown_service(other)),
        };
        let erasure = self.get_erasure(tenant, erasure_id).await?;
        let now = time::now();
        erasure
            .may_confirm(service, now, self.erasure_settle)
            .map_err(|refusal| {
                let refused = ServiceError::precondition(
                    cascade_chassis::erasure::ERASURE_SETTLING,
                    format!("erasure/{erasure_id}"),
                    refusal.0,
                );
                // How long until it settles (refused, so still ahead), so the
                // service waits that long rather than erasing on every poll.
                let left = erasure.settles_at(self.erasure_settle) - now;
                refused.holds_after(left.to_std().unwrap_or_default())
            })?;
        let _turn = cascade_chassis::db::write_turn(&self.db).await?;
        // The first confirmation's time stays.
        erasure::Entity::update_many()
            .col_expr(column, Expr::value(time::now().timestamp_millis()))
            .filter(erasure::Column::TenantId.eq(tenant.as_str()))
            .filter(erasure::Column::ErasureId.eq(erasure_id))
            .filter(column.is_null())
            .exec(&self.db)
            .await?;
        drop(_turn);
        let now = self.get_erasure(tenant, erasure_id).await?;
        Ok(now.complete_at().is_some())
    }
}

fn unknown_service(service: &str) -> ServiceError {
    ServiceError::invalid(
        "service",
        format!(
            "must be one of {} (got {service:?})",
            ERASING_SERVICES.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_raiser_named_by_the_email_is_erased_from_a_text() {
        let text = "ann@acme.com raised a hand (demo_request) on Acme, which is PRIORITIZED.";
        assert_eq!(
            without_raiser(text, "ann@acme.com").as_deref(),
            Some(
                "a person since erased raised a hand (demo_request) on Acme, which is PRIORITIZED."
            )
        );
        // Another person whose email holds this one keeps theirs.
        let joann = "joann@acme.com raised a hand (demo_request) on Acme, which is PRIORITIZED.";
        assert_eq!(without_raiser(joann, "ann@acme.com"), None);
        // A text that names no raiser is left alone.
        assert_eq!(
            without_raiser("Acme reached PRIORITIZED", "ann@acme.com"),
            None
        );
    }

    #[test]
    fn a_text_known_to_name_the_person_loses_whatever_it_named() {
        // The email the person had then, not the one they have now.
        let text = "old@acme.com raised a hand (demo_request) on Acme, which is PRIORITIZED.";
        assert_eq!(
            without_named_raiser(text).as_deref(),
            Some(
                "a person since erased raised a hand (demo_request) on Acme, which is PRIORITIZED."
            )
        );
        let scrubbed = without_named_raiser(text).expect("scrubbed");
        assert_eq!(without_named_raiser(&scrubbed), None, "once is enough");
        assert_eq!(without_named_raiser("Acme reached PRIORITIZED"), None);
    }
}
