//! Finding contacts by email or id for callers that know emails: one
//! contact (ResolveContact) or a batch of references (BatchResolveContacts),
//! creating contacts under the account whose domain matches.

use std::collections::{BTreeMap, HashMap, HashSet};

use cascade_chassis::db::begin_write;
use cascade_chassis::db::insert_chunks_returning;
use cascade_chassis::time;
use cascade_chassis::validate::email_domain;
use cascade_chassis::{ServiceError, ServiceResult, TenantId};
use cascade_domain::ids;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};

use super::contacts::{insert_contact, new_contact_model};
use super::entities::{account, contact};
use super::{Repository, ms, record_firsts};
use crate::domain::resolve::{self, Directory, Reference, Resolution};
use crate::domain::{AccountRef, Contact, NewContact};

impl Repository {
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
            .ok_or_else(|| {
                ServiceError::not_found("account domain", domain)
                    .because("no account has this domain")
            })?;
        let account_id = account.account_id;
        let new = known_only_by_email(&account_id, email);
        let txn = begin_write(&self.db).await?;
        match insert_contact(&txn, tenant, &account_id, new, None).await {
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
            for (contact_id, account_id, inactive_since) in contact::Entity::find()
                .select_only()
                .columns([
                    contact::Column::ContactId,
                    contact::Column::AccountId,
                    contact::Column::InactiveSinceMs,
                ])
                .filter(contact::Column::TenantId.eq(tenant.as_str()))
                .filter(contact::Column::ContactId.is_in(contact_ids))
                .into_tuple::<(String, String, Option<i64>)>()
                .all(&self.db)
                .await?
            {
                if inactive_since.is_some() {
                    directory.inactive.insert(contact_id.clone());
                }
                directory.contact_accounts.insert(contact_id, account_id);
            }
        }
        if !emails.is_empty() {
            let found = contacts_by_email(&self.db, tenant, emails).await?;
            for (email, (account_id, contact_id, inactive)) in found {
                if inactive {
                    directory.inactive.insert(contact_id.clone());
                }
                directory.by_email.insert(email, (account_id, contact_id));
            }
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
    /// transaction of two statements per chunk of rows: the contacts, then
    /// their first stage (one insert per contact, under a savepoint each,
    /// was five statements a contact: docs/performance.md, round 20).
    /// Answers `Created` for each; an email another call gave a contact
    /// meanwhile is skipped by the insert (`ON CONFLICT DO NOTHING`), read
    /// back after the commit, and answers `Resolved` with that contact's own
    /// account.
    async fn create_contacts_for(
        &self,
        tenant: &TenantId,
        to_create: &BTreeMap<String, String>,
    ) -> ServiceResult<HashMap<String, Resolution>> {
        // In account order: each insert takes a key-share lock on its account
        // (the foreign key), and score deliveries lock accounts in id order;
        // inserting in email order deadlocked with them on PostgreSQL. One
        // statement takes its rows' locks in the order of its rows.
        let mut ordered: Vec<(&String, &String)> = to_create.iter().collect();
        ordered.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
        let now = time::now();
        // Every one has an email, so every one starts in the same stage.
        let mut stage = None;
        let rows: Vec<contact::ActiveModel> = ordered
            .into_iter()
            .map(|(email, account_id)| {
                let new = known_only_by_email(account_id, email);
                let (model, first) =
                    new_contact_model(tenant.as_str(), ids::new_id(), account_id, new, None, now);
                stage = Some(first);
                model
            })
            .collect();
        let txn = begin_write(&self.db).await?;
        // No conflict target: the tenant's email index is the one a new
        // contact can collide on (its id is new, it has no request or
        // external id).
        let skip_taken = OnConflict::new().do_nothing().to_owned();
        let inserted = insert_chunks_returning(&txn, rows, Some(&skip_taken)).await?;
        if let Some(stage) = stage {
            let firsts: Vec<(&str, &str)> = inserted
                .iter()
                .map(|m| (m.contact_id.as_str(), stage.as_str()))
                .collect();
            record_firsts(&txn, tenant.as_str(), &firsts, ms(now)).await?;
        }
        let mut made = HashMap::new();
        for m in inserted {
            if let Some(email) = m.email {
                made.insert(
                    email,
                    Resolution::Created {
                        account_id: m.account_id,
                        contact_id: m.contact_id,
                    },
                );
            }
        }
        let raced: HashSet<String> = to_create
            .keys()
            .filter(|email| !made.contains_key(email.as_str()))
            .cloned()
            .collect();
        txn.commit().await?;
        if !raced.is_empty() {
            let found = contacts_by_email(&self.db, tenant, raced.clone()).await?;
            for email in raced {
                let (account_id, contact_id, inactive) = found.get(&email).cloned().ok_or_else(|| {
                    ServiceError::Aborted(format!(
                        "the contact with email {email} changed while it was being created; retry"
                    ))
                })?;
                made.insert(
                    email,
                    Resolution::Resolved {
                        account_id,
                        contact_id: Some(contact_id),
                        inactive,
                    },
                );
            }
        }
        Ok(made)
    }
}

/// A new contact of `account_id` of whom only the email is known (a person
/// an activity named by email).
fn known_only_by_email(account_id: &str, email: &str) -> NewContact {
    NewContact {
        account: AccountRef::Id(account_id.to_owned()),
        email: Some(email.to_owned()),
        first_name: String::new(),
        last_name: String::new(),
        title: String::new(),
        external_id: None,
    }
}

/// Contacts with one of `emails`: email -> (account, contact, inactive).
async fn contacts_by_email(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    emails: HashSet<String>,
) -> ServiceResult<HashMap<String, (String, String, bool)>> {
    Ok(contact::Entity::find()
        .select_only()
        .columns([
            contact::Column::Email,
            contact::Column::AccountId,
            contact::Column::ContactId,
            contact::Column::InactiveSinceMs,
        ])
        .filter(contact::Column::TenantId.eq(tenant.as_str()))
        .filter(contact::Column::Email.is_in(emails))
        .into_tuple::<(Option<String>, String, String, Option<i64>)>()
        .all(conn)
        .await?
        .into_iter()
        .filter_map(|(email, account_id, contact_id, inactive)| {
            Some((email?, (account_id, contact_id, inactive.is_some())))
        })
        .collect())
}
