//! Storage of accounts and contacts. Every query is scoped by tenant; a row
//! of another tenant is indistinguishable from a missing one.

mod entities;
pub mod migration;

use cascade_shared::domain::{AccountStage, ContactStage, CustomerType};
use cascade_shared::error::is_unique_violation;
use cascade_shared::page::PageRequest;
use cascade_shared::{ServiceError, ServiceResult, TenantId, ids, time};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use crate::domain::{
    self, Account, AccountChanges, Contact, ContactChanges, NewAccount, NewContact,
};
use entities::{account, contact};

/// Filters of ListAccounts.
#[derive(Debug, Clone, Default)]
pub struct AccountFilter {
    pub stage: Option<AccountStage>,
    pub customer_type: Option<CustomerType>,
    pub owner_id: Option<String>,
}

/// Filters of ListContacts.
#[derive(Debug, Clone, Default)]
pub struct ContactFilter {
    pub account_id: Option<String>,
    pub stage: Option<ContactStage>,
    pub email: Option<String>,
}

#[derive(Clone)]
pub struct Repository {
    db: DatabaseConnection,
}

impl Repository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    pub async fn create_account(
        &self,
        tenant: &TenantId,
        new: NewAccount,
        request_id: Option<String>,
    ) -> ServiceResult<Account> {
        if let Some(request_id) = &request_id
            && let Some(existing) = self.account_by_request(tenant, request_id).await?
        {
            return Ok(existing);
        }
        let now = time::now();
        let (stage, customer_type) = domain::NEW_ACCOUNT_STAGE;
        let model = account::ActiveModel {
            account_id: Set(ids::new_id()),
            tenant_id: Set(tenant.as_str().to_owned()),
            name: Set(new.name),
            domain: Set(new.domain.clone()),
            owner_id: Set(new.owner_id),
            stage: Set(stage.as_str().to_owned()),
            customer_type: Set(customer_type.as_str().to_owned()),
            stage_entered_at: Set(now),
            engagement_score: Set(0.0),
            average_engagement_score: Set(0.0),
            intent_score: Set(0.0),
            create_request_id: Set(request_id.clone()),
            created_at: Set(now),
            updated_at: Set(now),
            version: Set(1),
        };
        match model.insert(&self.db).await {
            Ok(model) => account_from_model(model),
            Err(error) if is_unique_violation(&error) => {
                // Either the same request raced us (return its account) or
                // the domain belongs to another account.
                if let Some(request_id) = &request_id
                    && let Some(existing) = self.account_by_request(tenant, request_id).await?
                {
                    return Ok(existing);
                }
                Err(domain_taken(new.domain.as_deref()))
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn account_by_request(
        &self,
        tenant: &TenantId,
        request_id: &str,
    ) -> ServiceResult<Option<Account>> {
        account::Entity::find()
            .filter(account::Column::TenantId.eq(tenant.as_str()))
            .filter(account::Column::CreateRequestId.eq(request_id))
            .one(&self.db)
            .await?
            .map(account_from_model)
            .transpose()
    }

    pub async fn get_account(&self, tenant: &TenantId, account_id: &str) -> ServiceResult<Account> {
        account_from_model(self.account_model(tenant, account_id).await?)
    }

    async fn account_model(
        &self,
        tenant: &TenantId,
        account_id: &str,
    ) -> ServiceResult<account::Model> {
        account::Entity::find_by_id(account_id)
            .filter(account::Column::TenantId.eq(tenant.as_str()))
            .one(&self.db)
            .await?
            .ok_or_else(|| ServiceError::not_found("account", account_id))
    }

    pub async fn list_accounts(
        &self,
        tenant: &TenantId,
        filter: &AccountFilter,
        page: &PageRequest,
    ) -> ServiceResult<(Vec<Account>, String)> {
        let mut query = account::Entity::find()
            .filter(account::Column::TenantId.eq(tenant.as_str()))
            .order_by_asc(account::Column::AccountId)
            .limit(page.fetch_limit());
        if let Some(stage) = filter.stage {
            query = query.filter(account::Column::Stage.eq(stage.as_str()));
        }
        if let Some(customer_type) = filter.customer_type {
            query = query.filter(account::Column::CustomerType.eq(customer_type.as_str()));
        }
        if let Some(owner_id) = &filter.owner_id {
            query = query.filter(account::Column::OwnerId.eq(owner_id.as_str()));
        }
        if let Some(after) = &page.after {
            query = query.filter(account::Column::AccountId.gt(after.as_str()));
        }
        let rows = query
            .all(&self.db)
            .await?
            .into_iter()
            .map(account_from_model)
            .collect::<ServiceResult<Vec<_>>>()?;
        Ok(page.finish(rows, |a| a.account_id.clone()))
    }

    pub async fn update_account(
        &self,
        tenant: &TenantId,
        account_id: &str,
        changes: AccountChanges,
    ) -> ServiceResult<Account> {
        let existing = self.account_model(tenant, account_id).await?;
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
        model.updated_at = Set(time::now());
        model.version = Set(version + 1);
        // Only the changed columns are written, so a concurrent stage change
        // is not overwritten; the version records that the row changed.
        match model.update(&self.db).await {
            Ok(model) => account_from_model(model),
            Err(error) if is_unique_violation(&error) => {
                Err(domain_taken(changes.domain.flatten().as_deref()))
            }
            Err(DbErr::RecordNotUpdated) => Err(ServiceError::not_found("account", account_id)),
            Err(error) => Err(error.into()),
        }
    }

    pub async fn create_contact(
        &self,
        tenant: &TenantId,
        new: NewContact,
        request_id: Option<String>,
    ) -> ServiceResult<Contact> {
        if let Some(request_id) = &request_id
            && let Some(existing) = self.contact_by_request(tenant, request_id).await?
        {
            return Ok(existing);
        }
        let now = time::now();
        let stage = domain::contact_rules::new_contact_stage(new.email.is_some());
        let email = new.email.clone();
        let tenant_id = tenant.as_str().to_owned();
        let create_request_id = request_id.clone();
        let inserted = self
            .db
            .transaction::<_, contact::Model, ServiceError>(|txn| {
                Box::pin(async move {
                    // The account must exist in this tenant; the read and the
                    // insert share a transaction so a contact never dangles.
                    let exists = account::Entity::find_by_id(new.account_id.as_str())
                        .filter(account::Column::TenantId.eq(tenant_id.as_str()))
                        .select_only()
                        .column(account::Column::AccountId)
                        .into_tuple::<String>()
                        .one(txn)
                        .await?;
                    if exists.is_none() {
                        return Err(ServiceError::not_found("account", new.account_id));
                    }
                    let model = contact::ActiveModel {
                        contact_id: Set(ids::new_id()),
                        tenant_id: Set(tenant_id),
                        account_id: Set(new.account_id),
                        email: Set(new.email),
                        first_name: Set(new.first_name),
                        last_name: Set(new.last_name),
                        title: Set(new.title),
                        stage: Set(stage.as_str().to_owned()),
                        stage_entered_at: Set(now),
                        engagement_score: Set(0.0),
                        create_request_id: Set(create_request_id),
                        created_at: Set(now),
                        updated_at: Set(now),
                    };
                    model.insert(txn).await.map_err(|error| {
                        if is_unique_violation(&error) {
                            ServiceError::Aborted(UNIQUE_CONFLICT.into())
                        } else {
                            error.into()
                        }
                    })
                })
            })
            .await;
        match inserted.map_err(unwrap_transaction_error) {
            Ok(model) => contact_from_model(model),
            Err(ServiceError::Aborted(reason)) if reason == UNIQUE_CONFLICT => {
                if let Some(request_id) = &request_id
                    && let Some(existing) = self.contact_by_request(tenant, request_id).await?
                {
                    return Ok(existing);
                }
                Err(email_taken(email.as_deref()))
            }
            Err(error) => Err(error),
        }
    }

    async fn contact_by_request(
        &self,
        tenant: &TenantId,
        request_id: &str,
    ) -> ServiceResult<Option<Contact>> {
        contact::Entity::find()
            .filter(contact::Column::TenantId.eq(tenant.as_str()))
            .filter(contact::Column::CreateRequestId.eq(request_id))
            .one(&self.db)
            .await?
            .map(contact_from_model)
            .transpose()
    }

    pub async fn get_contact(&self, tenant: &TenantId, contact_id: &str) -> ServiceResult<Contact> {
        contact_from_model(self.contact_model(tenant, contact_id).await?)
    }

    async fn contact_model(
        &self,
        tenant: &TenantId,
        contact_id: &str,
    ) -> ServiceResult<contact::Model> {
        contact::Entity::find_by_id(contact_id)
            .filter(contact::Column::TenantId.eq(tenant.as_str()))
            .one(&self.db)
            .await?
            .ok_or_else(|| ServiceError::not_found("contact", contact_id))
    }

    pub async fn list_contacts(
        &self,
        tenant: &TenantId,
        filter: &ContactFilter,
        page: &PageRequest,
    ) -> ServiceResult<(Vec<Contact>, String)> {
        let mut query = contact::Entity::find()
            .filter(contact::Column::TenantId.eq(tenant.as_str()))
            .order_by_asc(contact::Column::ContactId)
            .limit(page.fetch_limit());
        if let Some(account_id) = &filter.account_id {
            query = query.filter(contact::Column::AccountId.eq(account_id.as_str()));
        }
        if let Some(stage) = filter.stage {
            query = query.filter(contact::Column::Stage.eq(stage.as_str()));
        }
        if let Some(email) = &filter.email {
            query = query.filter(contact::Column::Email.eq(email.as_str()));
        }
        if let Some(after) = &page.after {
            query = query.filter(contact::Column::ContactId.gt(after.as_str()));
        }
        let rows = query
            .all(&self.db)
            .await?
            .into_iter()
            .map(contact_from_model)
            .collect::<ServiceResult<Vec<_>>>()?;
        Ok(page.finish(rows, |c| c.contact_id.clone()))
    }

    pub async fn update_contact(
        &self,
        tenant: &TenantId,
        contact_id: &str,
        changes: ContactChanges,
    ) -> ServiceResult<Contact> {
        let existing = self.contact_model(tenant, contact_id).await?;
        let current = contact_from_model(existing.clone())?;
        let mut stage = current.stage;
        let mut model = existing.into_active_model();
        if let Some(email) = changes.email.clone() {
            stage = domain::contact_rules::after_email_change(stage, email.is_some());
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
        if let Some(target) = changes.stage {
            stage = domain::contact_rules::set_by_person(stage, target).map_err(|refusal| {
                ServiceError::precondition(
                    "CONTACT_STAGE",
                    format!("contact/{contact_id}"),
                    refusal.0,
                )
            })?;
        }
        let now = time::now();
        if stage != current.stage {
            model.stage = Set(stage.as_str().to_owned());
            model.stage_entered_at = Set(now);
        }
        model.updated_at = Set(now);
        // The stage is written only if it is still the one the rule saw, so a
        // concurrent automatic move is not overwritten by a stale decision.
        let result = contact::Entity::update_many()
            .set(model)
            .filter(contact::Column::TenantId.eq(tenant.as_str()))
            .filter(contact::Column::ContactId.eq(contact_id))
            .filter(contact::Column::Stage.eq(current.stage.as_str()))
            .exec(&self.db)
            .await;
        match result {
            Ok(outcome) if outcome.rows_affected == 1 => self.get_contact(tenant, contact_id).await,
            Ok(_) => Err(ServiceError::Aborted(
                "the contact changed while it was being updated; read it again and retry".into(),
            )),
            Err(error) if is_unique_violation(&error) => {
                Err(email_taken(changes.email.flatten().as_deref()))
            }
            Err(error) => Err(error.into()),
        }
    }
}

const UNIQUE_CONFLICT: &str = "unique conflict";

fn unwrap_transaction_error(error: sea_orm::TransactionError<ServiceError>) -> ServiceError {
    match error {
        sea_orm::TransactionError::Connection(error) => error.into(),
        sea_orm::TransactionError::Transaction(error) => error,
    }
}

fn domain_taken(domain: Option<&str>) -> ServiceError {
    let domain = domain.unwrap_or_default();
    ServiceError::already_exists(
        "account",
        domain,
        format!("another account of this tenant already has the domain {domain}"),
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

fn corrupt(column: &str, error: impl std::fmt::Display) -> ServiceError {
    ServiceError::internal(anyhow::anyhow!("stored {column} is unreadable: {error}"))
}

fn account_from_model(model: account::Model) -> ServiceResult<Account> {
    Ok(Account {
        stage: model
            .stage
            .parse()
            .map_err(|e| corrupt("accounts.stage", e))?,
        customer_type: model
            .customer_type
            .parse()
            .map_err(|e| corrupt("accounts.customer_type", e))?,
        account_id: model.account_id,
        name: model.name,
        domain: model.domain,
        owner_id: model.owner_id,
        stage_entered_at: model.stage_entered_at,
        engagement_score: model.engagement_score,
        average_engagement_score: model.average_engagement_score,
        intent_score: model.intent_score,
        created_at: model.created_at,
        updated_at: model.updated_at,
    })
}

fn contact_from_model(model: contact::Model) -> ServiceResult<Contact> {
    Ok(Contact {
        stage: model
            .stage
            .parse()
            .map_err(|e| corrupt("contacts.stage", e))?,
        contact_id: model.contact_id,
        account_id: model.account_id,
        email: model.email,
        first_name: model.first_name,
        last_name: model.last_name,
        title: model.title,
        stage_entered_at: model.stage_entered_at,
        engagement_score: model.engagement_score,
        created_at: model.created_at,
        updated_at: model.updated_at,
    })
}
