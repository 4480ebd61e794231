//! Contacts as records: create, read, list, update.

use cascade_chassis::db::Stored;
use cascade_chassis::db::begin_write;
use cascade_chassis::error::is_unique_violation;
use cascade_chassis::idempotency::RequestKey;
use cascade_chassis::page::PageRequest;
use cascade_chassis::{ServiceError, ServiceResult, TenantId, time};
use cascade_domain::{ContactStage, ids};
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder, QuerySelect,
};

use super::accounts::account_model;
use super::activity_status::{ChangeKind, record_contact_change};
use super::entities::{account, contact};
use super::history::insert_contact_transitions;
use super::{
    ContactFilter, Repository, changed_key, changed_since, hydrate_contact, hydrate_contacts,
    lock_account, ms, record_firsts,
};
use crate::domain::contact_rules::{self, ContactMove, ContactTransitionCause};
use crate::domain::{
    AccountRef, Contact, ContactChanges, ContactTransition, NewContact, writes_nothing,
};

impl Repository {
    pub async fn create_contact(
        &self,
        tenant: &TenantId,
        new: NewContact,
        key: Option<RequestKey>,
    ) -> ServiceResult<Contact> {
        if let Some(key) = &key
            && let Some(existing) = self.contact_by_request(tenant, key).await?
        {
            return Ok(existing);
        }
        let email = new.email.clone();
        let external_id = new.external_id.clone();
        // Reads before it writes: take the write lock first (SQLite).
        let txn = begin_write(&self.db).await?;
        // The account must exist in this tenant; the check and the insert
        // share a transaction so a contact never dangles.
        let account = account_of(&txn, tenant, &new.account).await?;
        match insert_contact(&txn, tenant, &account.account_id, new, key.clone()).await {
            Ok(contact) => {
                txn.commit().await?;
                Ok(contact)
            }
            Err(ServiceError::AlreadyExists { .. }) => {
                drop(txn);
                if let Some(key) = &key
                    && let Some(existing) = self.contact_by_request(tenant, key).await?
                {
                    return Ok(existing);
                }
                Err(self
                    .contact_taken(tenant, None, email.as_deref(), external_id.as_deref())
                    .await)
            }
            Err(error) => Err(error),
        }
    }

    /// Which unique field of a contact another contact holds: the external
    /// id when it is taken, else the email. `updating` is the contact being
    /// updated: it holds its own external id, which is no clash.
    async fn contact_taken(
        &self,
        tenant: &TenantId,
        updating: Option<&str>,
        email: Option<&str>,
        external_id: Option<&str>,
    ) -> ServiceError {
        if let Some(external_id) = external_id {
            let mut holder = contact::Entity::find()
                .filter(contact::Column::TenantId.eq(tenant.as_str()))
                .filter(contact::Column::ExternalId.eq(external_id));
            if let Some(contact_id) = updating {
                holder = holder.filter(contact::Column::ContactId.ne(contact_id));
            }
            let holder = holder.one(&self.db).await;
            match holder {
                Ok(Some(_)) => return external_id_taken("contact", external_id),
                Ok(None) => {}
                Err(error) => return error.into(),
            }
        }
        email_taken(email)
    }

    pub(super) async fn contact_by_email(
        &self,
        tenant: &TenantId,
        email: &str,
    ) -> ServiceResult<Option<Contact>> {
        match contact::Entity::find()
            .filter(contact::Column::TenantId.eq(tenant.as_str()))
            .filter(contact::Column::Email.eq(email))
            .one(&self.db)
            .await?
        {
            Some(model) => Ok(Some(hydrate_contact(&self.db, model).await?)),
            None => Ok(None),
        }
    }

    /// The contact an earlier create under `key`'s request id made, if the
    /// request is the same; refused if it is not.
    async fn contact_by_request(
        &self,
        tenant: &TenantId,
        key: &RequestKey,
    ) -> ServiceResult<Option<Contact>> {
        match contact::Entity::find()
            .filter(contact::Column::TenantId.eq(tenant.as_str()))
            .filter(contact::Column::CreateRequestId.eq(&key.id))
            .one(&self.db)
            .await?
        {
            Some(model) => {
                key.check(model.create_request_digest.as_deref(), "contact")?;
                Ok(Some(hydrate_contact(&self.db, model).await?))
            }
            None => Ok(None),
        }
    }

    pub async fn get_contact(&self, tenant: &TenantId, contact_id: &str) -> ServiceResult<Contact> {
        let model = contact_model(&self.db, tenant, contact_id).await?;
        hydrate_contact(&self.db, model).await
    }

    pub async fn list_contacts(
        &self,
        tenant: &TenantId,
        filter: &ContactFilter,
        page: &PageRequest,
    ) -> ServiceResult<(Vec<Contact>, String)> {
        let mut query = contact::Entity::find()
            .filter(contact::Column::TenantId.eq(tenant.as_str()))
            .limit(page.fetch_limit());
        if let Some(account_id) = &filter.account_id {
            query = query.filter(contact::Column::AccountId.eq(account_id.as_str()));
        }
        if let Some(stage) = filter.stage {
            query = query.filter(contact::Column::Stage.eq(Stored(stage)));
        }
        if let Some(email) = &filter.email {
            query = query.filter(contact::Column::Email.eq(email.as_str()));
        }
        if let Some(external_id) = &filter.external_id {
            query = query.filter(contact::Column::ExternalId.eq(external_id.as_str()));
        }
        let (models, token) = if let Some(since) = filter.changed_since {
            let columns = (contact::Column::UpdatedAt, contact::Column::ContactId);
            let query = changed_since(query, columns, since, page.after.as_deref())?;
            page.finish(query.all(&self.db).await?, |m| {
                changed_key(m.updated_at, &m.contact_id)
            })
        } else {
            if let Some(after) = &page.after {
                query = query.filter(contact::Column::ContactId.gt(after.as_str()));
            }
            let query = query.order_by_asc(contact::Column::ContactId);
            page.finish(query.all(&self.db).await?, |m| m.contact_id.clone())
        };
        // Nothing for an account: is there such an account? A mistyped or
        // another tenant's id is NOT_FOUND, as ListNotifications answers,
        // not an empty list a caller reads as "no contacts". Only on a first
        // page: a walk under way ends as it began.
        if models.is_empty()
            && page.after.is_none()
            && let Some(account_id) = &filter.account_id
        {
            super::accounts::account_model(&self.db, tenant, account_id).await?;
        }
        Ok((hydrate_contacts(&self.db, models).await?, token))
    }

    pub async fn update_contact(
        &self,
        tenant: &TenantId,
        actor: &str,
        contact_id: &str,
        changes: ContactChanges,
    ) -> ServiceResult<Contact> {
        // Reads before it writes: take the write lock first (SQLite).
        let txn = begin_write(&self.db).await?;
        let existing = contact_model(&txn, tenant, contact_id).await?;
        // Changes to a contact serialize on its account, like the engine's.
        lock_account(&txn, tenant.as_str(), &existing.account_id).await?;
        let existing = contact_model(&txn, tenant, contact_id).await?;
        let current = *existing.stage;
        let mut stage = current;
        let mut moves = Vec::new();
        let account_id = existing.account_id.clone();
        // Scoring resolves emails to contacts: it hears of a change.
        let email_moves = changes
            .email
            .as_ref()
            .is_some_and(|email| *email != existing.email);
        // A write of what is there already is no change (`writes_nothing`).
        let unchanged = !email_moves
            && writes_nothing(changes.external_id.as_ref(), &existing.external_id)
            && writes_nothing(changes.first_name.as_ref(), &existing.first_name)
            && writes_nothing(changes.last_name.as_ref(), &existing.last_name)
            && writes_nothing(changes.title.as_ref(), &existing.title)
            && writes_nothing(changes.stage.as_ref(), &*existing.stage);
        if unchanged {
            let contact = hydrate_contact(&txn, existing).await?;
            txn.commit().await?;
            return Ok(contact);
        }
        let mut model = existing.into_active_model();
        if let Some(email) = changes.email.clone() {
            let next = contact_rules::after_email_change(stage, email.is_some());
            moves.extend(ContactMove::between(
                stage,
                next,
                ContactTransitionCause::EmailChanged,
            ));
            stage = next;
            model.email = Set(email);
        }
        if let Some(first_name) = changes.first_name {
            model.first_name = Set(first_name);
        }
        if let Some(last_name) = changes.last_name {
            model.last_name = Set(last_name);
        }
        if let Some(title) = changes.title {
            model.title = Set(title);
        }
        if let Some(external_id) = changes.external_id.clone() {
            model.external_id = Set(external_id);
        }
        if let Some(target) = changes.stage {
            // A stage set automatically is never writable (but as the one
            // the contact has: no change): bad input, not a precondition.
            let next = contact_rules::set_by_person(stage, target)
                .map_err(|refusal| ServiceError::invalid("contact.stage", refusal.0))?;
            moves.extend(ContactMove::between(
                stage,
                next,
                ContactTransitionCause::Manual,
            ));
            stage = next;
        }
        let now = time::now();
        if stage != current {
            model.stage = Set(Stored(stage));
            model.stage_entered_at = Set(now);
        }
        // Each step is history (an email added, then MQL set by a person),
        // even when the last one returns to where the contact was.
        let transitions: Vec<ContactTransition> = moves
            .iter()
            .map(|m| ContactTransition::of_move(m, contact_id, &account_id, actor, None, now))
            .collect();
        insert_contact_transitions(&txn, tenant.as_str(), &transitions).await?;
        let reached: Vec<(&str, &str)> =
            moves.iter().map(|m| (contact_id, m.to.as_str())).collect();
        record_firsts(&txn, tenant.as_str(), &reached, ms(now)).await?;
        model.updated_at = Set(now);
        let updated = match model.update(&txn).await {
            Ok(model) => model,
            Err(error) if is_unique_violation(&error) => {
                drop(txn);
                return Err(self
                    .contact_taken(
                        tenant,
                        Some(contact_id),
                        changes.email.flatten().as_deref(),
                        changes.external_id.flatten().as_deref(),
                    )
                    .await);
            }
            Err(error) => return Err(error.into()),
        };
        if email_moves {
            // The status goes along only for scoring replicas older than
            // change kinds (which apply it): as the update left the row (on
            // PostgreSQL, after a concurrent DeactivateContact's commit it
            // waited for), so that they do not put back a status read before.
            let inactive = updated.inactive_since_ms.is_some();
            record_contact_change(
                &txn,
                tenant.as_str(),
                contact_id,
                &account_id,
                (ChangeKind::Email, inactive),
                ms(now),
            )
            .await?;
        }
        let contact = hydrate_contact(&txn, updated).await?;
        txn.commit().await?;
        Ok(contact)
    }
}

/// The account a caller names, in its tenant, or NOT_FOUND.
pub(super) async fn account_of(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    account: &AccountRef,
) -> ServiceResult<account::Model> {
    match account {
        AccountRef::Id(id) => account_model(conn, tenant, id).await,
        AccountRef::ExternalId(external_id) => account::Entity::find()
            .filter(account::Column::TenantId.eq(tenant.as_str()))
            .filter(account::Column::ExternalId.eq(external_id.as_str()))
            .one(conn)
            .await?
            .ok_or_else(|| {
                ServiceError::not_found("account", external_id.as_str())
                    .because("no account has this external id")
            }),
    }
}

/// Inserts a contact of `account_id` (an account of the tenant: the caller
/// checked).
pub(super) async fn insert_contact(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    account_id: &str,
    new: NewContact,
    key: Option<RequestKey>,
) -> ServiceResult<Contact> {
    let now = time::now();
    let email = new.email.clone();
    let (model, stage) =
        new_contact_model(tenant.as_str(), ids::new_id(), account_id, new, key, now);
    let inserted = model.insert(conn).await.map_err(|error| {
        if is_unique_violation(&error) {
            email_taken(email.as_deref())
        } else {
            error.into()
        }
    })?;
    record_firsts(
        conn,
        tenant.as_str(),
        &[(&inserted.contact_id, stage.as_str())],
        ms(now),
    )
    .await?;
    hydrate_contact(conn, inserted).await
}

/// The row of a new contact of `account_id`, created `now`, and its stage
/// (ANONYMOUS without an email, SUSPECT with one).
pub(super) fn new_contact_model(
    tenant_id: &str,
    contact_id: String,
    account_id: &str,
    new: NewContact,
    key: Option<RequestKey>,
    now: DateTime<Utc>,
) -> (contact::ActiveModel, ContactStage) {
    let (request_id, request_digest) = key.map(|k| (k.id, k.digest)).unzip();
    let stage = contact_rules::new_contact_stage(new.email.is_some());
    let model = contact::ActiveModel {
        contact_id: Set(contact_id),
        tenant_id: Set(tenant_id.to_owned()),
        account_id: Set(account_id.to_owned()),
        email: Set(new.email),
        first_name: Set(new.first_name),
        last_name: Set(new.last_name),
        title: Set(new.title),
        stage: Set(Stored(stage)),
        stage_entered_at: Set(now),
        engagement_score: Set(0.0),
        create_request_id: Set(request_id),
        create_request_digest: Set(request_digest),
        created_at: Set(now),
        updated_at: Set(now),
        has_activity: Set(false),
        external_id: Set(new.external_id),
        inactive_since_ms: Set(None),
        inactive_reason: Set(None),
        hand_raised_at_ms: Set(None),
    };
    (model, stage)
}

pub(crate) async fn contact_model(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    contact_id: &str,
) -> ServiceResult<contact::Model> {
    contact::Entity::find_by_id(contact_id)
        .filter(contact::Column::TenantId.eq(tenant.as_str()))
        .one(conn)
        .await?
        .ok_or_else(|| ServiceError::not_found("contact", contact_id))
}

/// Another record of the tenant has this external id.
pub(super) fn external_id_taken(resource: &'static str, external_id: &str) -> ServiceError {
    ServiceError::already_exists(
        resource,
        external_id,
        format!("another {resource} of this tenant already has the external id {external_id}"),
    )
}

fn email_taken(email: Option<&str>) -> ServiceError {
    let email = email.unwrap_or_default();
    ServiceError::already_exists(
        "contact",
        email,
        format!("another contact of this tenant already has the email {email}"),
    )
}
