//! Accounts and contacts as records: create, read, list, update.

use std::collections::{BTreeMap, HashMap, HashSet};

use cascade_chassis::db::begin_write;
use cascade_chassis::error::is_unique_violation;
use cascade_chassis::page::PageRequest;
use cascade_chassis::validate::email_domain;
use cascade_chassis::{ServiceError, ServiceResult, TenantId, time};
use cascade_domain::ids;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait,
    FromQueryResult, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};

use super::entities::{account, contact, stage_first};
use super::history::insert_contact_transitions;
use super::{
    AccountFilter, ContactFilter, Repository, hydrate_account, hydrate_accounts,
    hydrate_accounts_with, hydrate_contact, hydrate_contacts, lock_account, ms, record_first,
};
use crate::domain::contact_rules::{self, ContactMove, ContactTransitionCause};
use crate::domain::resolve::{self, Directory, Reference, Resolution};
use crate::domain::{
    Account, AccountChanges, Contact, ContactChanges, ContactTransition, NEW_ACCOUNT_STAGE,
    NewAccount, NewContact,
};

impl Repository {
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
        let (stage, customer_type) = NEW_ACCOUNT_STAGE;
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
            score_sequence: Set(0),
            score_baseline: Set(0.0),
            disqualify_count: Set(0),
            nurture_count: Set(0),
            last_recycle_transition_id: Set(None),
            transition_count: Set(0),
            created_at_ms: Set(ms(now)),
        };
        let txn = begin_write(&self.db).await?;
        let inserted = match model.insert(&txn).await {
            Ok(model) => model,
            Err(error) if is_unique_violation(&error) => {
                drop(txn);
                // Either the same request raced us (return its account) or
                // the domain belongs to another account.
                if let Some(request_id) = &request_id
                    && let Some(existing) = self.account_by_request(tenant, request_id).await?
                {
                    return Ok(existing);
                }
                return Err(domain_taken(new.domain.as_deref()));
            }
            Err(error) => return Err(error.into()),
        };
        record_first(
            &txn,
            tenant.as_str(),
            &inserted.account_id,
            stage.as_str(),
            ms(now),
        )
        .await?;
        let account = hydrate_account(&txn, inserted).await?;
        txn.commit().await?;
        Ok(account)
    }

    async fn account_by_request(
        &self,
        tenant: &TenantId,
        request_id: &str,
    ) -> ServiceResult<Option<Account>> {
        match account::Entity::find()
            .filter(account::Column::TenantId.eq(tenant.as_str()))
            .filter(account::Column::CreateRequestId.eq(request_id))
            .one(&self.db)
            .await?
        {
            Some(model) => Ok(Some(hydrate_account(&self.db, model).await?)),
            None => Ok(None),
        }
    }

    /// One statement for the account and the stages it reached (a LEFT
    /// JOIN, one row per stage) instead of one each: GetAccount is the
    /// hottest read, and on PostgreSQL a statement's fixed cost is most of
    /// its price (docs/performance.md).
    pub async fn get_account(&self, tenant: &TenantId, account_id: &str) -> ServiceResult<Account> {
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
        let firsts = HashMap::from([(model.account_id.clone(), reached)]);
        hydrate_accounts_with(&self.db, vec![model], firsts)
            .await?
            .pop()
            .ok_or_else(|| ServiceError::internal(anyhow::anyhow!("hydrated no account")))
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
        let (models, token) = page.finish(query.all(&self.db).await?, |m| m.account_id.clone());
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
        let updated = match model.update(&txn).await {
            Ok(model) => model,
            Err(error) if is_unique_violation(&error) => {
                return Err(domain_taken(changes.domain.flatten().as_deref()));
            }
            Err(error) => return Err(error.into()),
        };
        let account = hydrate_account(&txn, updated).await?;
        txn.commit().await?;
        Ok(account)
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
        let email = new.email.clone();
        // Reads before it writes: take the write lock first (SQLite).
        let txn = begin_write(&self.db).await?;
        // The account must exist in this tenant; the check and the insert
        // share a transaction so a contact never dangles.
        account_model(&txn, tenant, &new.account_id).await?;
        match insert_contact(&txn, tenant, new, request_id.clone()).await {
            Ok(contact) => {
                txn.commit().await?;
                Ok(contact)
            }
            Err(ServiceError::AlreadyExists { .. }) => {
                drop(txn);
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

    /// The contact with `email`, or a new one under the account whose domain
    /// matches the email's domain. Returns whether it was created.
    pub async fn resolve_contact(
        &self,
        tenant: &TenantId,
        email: &str,
    ) -> ServiceResult<(Contact, bool)> {
        if let Some(existing) = self.contact_by_email(tenant, email).await? {
            return Ok((existing, false));
        }
        let domain = email_domain(email)
            .ok_or_else(|| ServiceError::invalid("email", "must be an email address"))?;
        let account = account::Entity::find()
            .filter(account::Column::TenantId.eq(tenant.as_str()))
            .filter(account::Column::Domain.eq(domain))
            .one(&self.db)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                resource: "account",
                id: format!("domain {domain}"),
            })?;
        let new = NewContact {
            account_id: account.account_id,
            email: Some(email.to_owned()),
            first_name: String::new(),
            last_name: String::new(),
            title: String::new(),
        };
        let txn = begin_write(&self.db).await?;
        match insert_contact(&txn, tenant, new, None).await {
            Ok(contact) => {
                txn.commit().await?;
                Ok((contact, true))
            }
            Err(ServiceError::AlreadyExists { .. }) => {
                // Another resolve of the same email won the race.
                drop(txn);
                let existing = self
                    .contact_by_email(tenant, email)
                    .await?
                    .ok_or_else(|| ServiceError::Aborted("contact changed; retry".into()))?;
                Ok((existing, false))
            }
            Err(error) => Err(error),
        }
    }

    /// Resolves a batch of references in a handful of statements, whatever
    /// its size: one read per kind of key, then one transaction creating the
    /// contacts of new emails. Returns each reference's resolution, with
    /// every `Create` carried out (`Created`, or `Resolved` when another
    /// call created that email first).
    pub async fn resolve_references(
        &self,
        tenant: &TenantId,
        references: &[Reference],
    ) -> ServiceResult<Vec<Resolution>> {
        let mut account_ids = HashSet::new();
        let mut contact_ids = HashSet::new();
        let mut emails = HashSet::new();
        for reference in references {
            match reference {
                Reference::Ids {
                    account_id,
                    contact_id,
                } => {
                    account_ids.insert(account_id.clone());
                    contact_ids.extend(contact_id.iter().cloned());
                }
                Reference::Email(email) => {
                    emails.insert(email.clone());
                }
            }
        }
        let mut directory = Directory::default();
        if !account_ids.is_empty() {
            directory.accounts = account::Entity::find()
                .select_only()
                .column(account::Column::AccountId)
                .filter(account::Column::TenantId.eq(tenant.as_str()))
                .filter(account::Column::AccountId.is_in(account_ids))
                .into_tuple::<String>()
                .all(&self.db)
                .await?
                .into_iter()
                .collect();
        }
        if !contact_ids.is_empty() {
            directory.contact_accounts = contact::Entity::find()
                .select_only()
                .columns([contact::Column::ContactId, contact::Column::AccountId])
                .filter(contact::Column::TenantId.eq(tenant.as_str()))
                .filter(contact::Column::ContactId.is_in(contact_ids))
                .into_tuple::<(String, String)>()
                .all(&self.db)
                .await?
                .into_iter()
                .collect();
        }
        if !emails.is_empty() {
            directory.by_email = contacts_by_email(&self.db, tenant, emails).await?;
        }
        let domains = resolve::domains_to_match(references, &directory);
        if !domains.is_empty() {
            directory.by_domain = account::Entity::find()
                .select_only()
                .columns([account::Column::Domain, account::Column::AccountId])
                .filter(account::Column::TenantId.eq(tenant.as_str()))
                .filter(account::Column::Domain.is_in(domains))
                .into_tuple::<(Option<String>, String)>()
                .all(&self.db)
                .await?
                .into_iter()
                .filter_map(|(domain, account_id)| Some((domain?, account_id)))
                .collect();
        }
        let mut resolutions: Vec<Resolution> = references
            .iter()
            .map(|r| resolve::resolve(r, &directory))
            .collect();
        // Sorted, so concurrent batches creating the same emails take the
        // unique-index locks in the same order (no deadlock on PostgreSQL).
        let to_create: BTreeMap<String, String> = resolutions
            .iter()
            .filter_map(|r| match r {
                Resolution::Create { account_id, email } => {
                    Some((email.clone(), account_id.clone()))
                }
                _ => None,
            })
            .collect();
        if !to_create.is_empty() {
            let made = self.create_contacts_for(tenant, &to_create).await?;
            for resolution in &mut resolutions {
                if let Resolution::Create { email, .. } = resolution
                    && let Some(outcome) = made.get(email.as_str())
                {
                    *resolution = outcome.clone();
                }
            }
        }
        Ok(resolutions)
    }

    /// Creates a contact for each new email under its account, in one
    /// transaction; answers `Created` for each. An email another call gave
    /// a contact meanwhile is read back instead (each insert runs under a
    /// savepoint, so a unique violation does not abort the others) and
    /// answers `Resolved` with that contact's own account.
    async fn create_contacts_for(
        &self,
        tenant: &TenantId,
        to_create: &BTreeMap<String, String>,
    ) -> ServiceResult<HashMap<String, Resolution>> {
        let mut made = HashMap::new();
        let mut raced = HashSet::new();
        // In account order: each insert takes a key-share lock on its account
        // (the foreign key), and score deliveries lock accounts in id order;
        // inserting in email order deadlocked with them on PostgreSQL.
        let mut ordered: Vec<(&String, &String)> = to_create.iter().collect();
        ordered.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
        let txn = begin_write(&self.db).await?;
        for (email, account_id) in ordered {
            let new = NewContact {
                account_id: account_id.clone(),
                email: Some(email.clone()),
                first_name: String::new(),
                last_name: String::new(),
                title: String::new(),
            };
            let savepoint = txn.begin().await?;
            match insert_contact(&savepoint, tenant, new, None).await {
                Ok(contact) => {
                    savepoint.commit().await?;
                    made.insert(
                        email.clone(),
                        Resolution::Created {
                            account_id: contact.account_id,
                            contact_id: contact.contact_id,
                        },
                    );
                }
                Err(ServiceError::AlreadyExists { .. }) => {
                    savepoint.rollback().await?;
                    raced.insert(email.clone());
                }
                Err(error) => return Err(error),
            }
        }
        txn.commit().await?;
        if !raced.is_empty() {
            let found = contacts_by_email(&self.db, tenant, raced.clone()).await?;
            for email in raced {
                let (account_id, contact_id) = found.get(&email).cloned().ok_or_else(|| {
                    ServiceError::Aborted(format!(
                        "the contact with email {email} changed while it was being created; retry"
                    ))
                })?;
                made.insert(
                    email,
                    Resolution::Resolved {
                        account_id,
                        contact_id: Some(contact_id),
                    },
                );
            }
        }
        Ok(made)
    }

    async fn contact_by_email(
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

    async fn contact_by_request(
        &self,
        tenant: &TenantId,
        request_id: &str,
    ) -> ServiceResult<Option<Contact>> {
        match contact::Entity::find()
            .filter(contact::Column::TenantId.eq(tenant.as_str()))
            .filter(contact::Column::CreateRequestId.eq(request_id))
            .one(&self.db)
            .await?
        {
            Some(model) => Ok(Some(hydrate_contact(&self.db, model).await?)),
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
        let (models, token) = page.finish(query.all(&self.db).await?, |m| m.contact_id.clone());
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
        let current = existing
            .stage
            .parse()
            .map_err(|e| super::corrupt("contacts.stage", e))?;
        let mut stage = current;
        let mut moves = Vec::new();
        let account_id = existing.account_id.clone();
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
        if let Some(target) = changes.stage {
            let next = contact_rules::set_by_person(stage, target).map_err(|refusal| {
                ServiceError::precondition(
                    "CONTACT_STAGE",
                    format!("contact/{contact_id}"),
                    refusal.0,
                )
            })?;
            moves.extend(ContactMove::between(
                stage,
                next,
                ContactTransitionCause::Manual,
            ));
            stage = next;
        }
        let now = time::now();
        if stage != current {
            model.stage = Set(stage.as_str().to_owned());
            model.stage_entered_at = Set(now);
        }
        // Each step is history (an email added, then MQL set by a person),
        // even when the last one returns to where the contact was.
        let transitions: Vec<ContactTransition> = moves
            .iter()
            .map(|m| ContactTransition::of_move(m, contact_id, &account_id, actor, None, now))
            .collect();
        insert_contact_transitions(&txn, tenant.as_str(), &transitions).await?;
        for m in &moves {
            record_first(&txn, tenant.as_str(), contact_id, m.to.as_str(), ms(now)).await?;
        }
        model.updated_at = Set(now);
        let updated = match model.update(&txn).await {
            Ok(model) => model,
            Err(error) if is_unique_violation(&error) => {
                return Err(email_taken(changes.email.flatten().as_deref()));
            }
            Err(error) => return Err(error.into()),
        };
        let contact = hydrate_contact(&txn, updated).await?;
        txn.commit().await?;
        Ok(contact)
    }
}

async fn insert_contact(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    new: NewContact,
    request_id: Option<String>,
) -> ServiceResult<Contact> {
    let now = time::now();
    let stage = contact_rules::new_contact_stage(new.email.is_some());
    let email = new.email.clone();
    let model = contact::ActiveModel {
        contact_id: Set(ids::new_id()),
        tenant_id: Set(tenant.as_str().to_owned()),
        account_id: Set(new.account_id),
        email: Set(new.email),
        first_name: Set(new.first_name),
        last_name: Set(new.last_name),
        title: Set(new.title),
        stage: Set(stage.as_str().to_owned()),
        stage_entered_at: Set(now),
        engagement_score: Set(0.0),
        create_request_id: Set(request_id),
        created_at: Set(now),
        updated_at: Set(now),
        has_activity: Set(false),
    };
    let inserted = model.insert(conn).await.map_err(|error| {
        if is_unique_violation(&error) {
            email_taken(email.as_deref())
        } else {
            error.into()
        }
    })?;
    record_first(
        conn,
        tenant.as_str(),
        &inserted.contact_id,
        stage.as_str(),
        ms(now),
    )
    .await?;
    hydrate_contact(conn, inserted).await
}

/// Contacts with one of `emails`: email -> (account, contact).
async fn contacts_by_email(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    emails: HashSet<String>,
) -> ServiceResult<HashMap<String, (String, String)>> {
    Ok(contact::Entity::find()
        .select_only()
        .columns([
            contact::Column::Email,
            contact::Column::AccountId,
            contact::Column::ContactId,
        ])
        .filter(contact::Column::TenantId.eq(tenant.as_str()))
        .filter(contact::Column::Email.is_in(emails))
        .into_tuple::<(Option<String>, String, String)>()
        .all(conn)
        .await?
        .into_iter()
        .filter_map(|(email, account_id, contact_id)| Some((email?, (account_id, contact_id))))
        .collect())
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
