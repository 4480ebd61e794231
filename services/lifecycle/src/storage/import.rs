//! Bulk import (BatchCreateAccounts, BatchCreateContacts): up to 1000 records
//! in one transaction with a fixed number of statements per batch (a read
//! per key kind, chunked inserts), never one per item. What each item
//! becomes is decided by `domain::import` over what the reads found.

use std::collections::{BTreeMap, HashMap};

use cascade_chassis::db::{among, begin_write, insert_chunks};
use cascade_chassis::error::is_unique_violation;
use cascade_chassis::{ServiceError, ServiceResult, TenantId, time};
use cascade_domain::ids;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};

use super::accounts::new_account_model;
use super::contacts::new_contact_model;
use super::entities::{account, contact};
use super::{Repository, hydrate_accounts, hydrate_contacts, ms, record_firsts};
use crate::domain::import::{Holders, ImportDecision, ImportFields, ImportKeys, decide_import};
use crate::domain::{Account, AccountRef, Contact, NEW_ACCOUNT_STAGE, NewAccount, NewContact};

/// What became of one item of a batch create.
#[derive(Debug, Clone, PartialEq)]
pub enum Imported<T> {
    Created(T),
    /// Created before (same request id or external id), returned unchanged.
    Existing(T),
    /// Refused: the fields at fault and why.
    Rejected(Vec<(String, String)>),
}

/// Concurrent imports of the same keys: the loser's insert hits a unique
/// index, and the batch is decided again over what the winner wrote.
const ATTEMPTS: usize = 3;

const ACCOUNT_FIELDS: ImportFields = ImportFields {
    resource: "account",
    external_id: "account.external_id",
    natural: "account.domain",
    natural_name: "domain",
};

const CONTACT_FIELDS: ImportFields = ImportFields {
    resource: "contact",
    external_id: "contact.external_id",
    natural: "contact.email",
    natural_name: "email",
};

/// The rows of `E` in the tenant whose `column` is among `keys`.
async fn rows_among<E: EntityTrait>(
    conn: &impl ConnectionTrait,
    tenant: (E::Column, &str),
    column: E::Column,
    keys: &[&str],
) -> Result<Vec<E::Model>, DbErr> {
    let mut rows = Vec::new();
    for condition in among(conn.get_database_backend(), column, keys) {
        let found = E::find()
            .filter(tenant.0.eq(tenant.1))
            .filter(condition)
            .all(conn)
            .await?;
        rows.extend(found);
    }
    Ok(rows)
}

/// The distinct present values of `key` over `items`.
fn present<'a, T>(items: &'a [T], key: impl Fn(&'a T) -> Option<&'a str>) -> Vec<&'a str> {
    let mut keys: Vec<&str> = items.iter().filter_map(key).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Fits each decision with its record, in item order.
fn settle<T: Clone>(
    decisions: Vec<ImportDecision>,
    created_ids: &[Option<String>],
    records: &HashMap<String, T>,
) -> ServiceResult<Vec<Imported<T>>> {
    let record = |id: &str| {
        records.get(id).cloned().ok_or_else(|| {
            ServiceError::internal(anyhow::anyhow!("imported record {id} not read back"))
        })
    };
    decisions
        .into_iter()
        .zip(created_ids)
        .map(|(decision, created)| match (decision, created) {
            (ImportDecision::Create, Some(id)) => record(id).map(Imported::Created),
            (ImportDecision::Existing(id), _) => record(&id).map(Imported::Existing),
            (ImportDecision::Rejected(why), _) => Ok(Imported::Rejected(why)),
            (ImportDecision::Create, None) => Err(ServiceError::internal(anyhow::anyhow!(
                "an item to create got no id"
            ))),
        })
        .collect()
}

impl Repository {
    /// Creates the accounts of a batch that are new, in one transaction.
    pub async fn batch_create_accounts(
        &self,
        tenant: &TenantId,
        items: &[(NewAccount, Option<String>)],
    ) -> ServiceResult<Vec<Imported<Account>>> {
        for _ in 0..ATTEMPTS {
            if let Some(done) = self.try_create_accounts(tenant, items).await? {
                return Ok(done);
            }
        }
        Err(ServiceError::Aborted(
            "these accounts are being imported by another call; retry".into(),
        ))
    }

    async fn try_create_accounts(
        &self,
        tenant: &TenantId,
        items: &[(NewAccount, Option<String>)],
    ) -> ServiceResult<Option<Vec<Imported<Account>>>> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        let scope = (account::Column::TenantId, t);
        let mut held = Vec::new();
        for (column, keys) in [
            (
                account::Column::CreateRequestId,
                present(items, |(_, r)| r.as_deref()),
            ),
            (
                account::Column::ExternalId,
                present(items, |(n, _)| n.external_id.as_deref()),
            ),
            (
                account::Column::Domain,
                present(items, |(n, _)| n.domain.as_deref()),
            ),
        ] {
            held.extend(rows_among::<account::Entity>(&txn, scope, column, &keys).await?);
        }
        let mut holders = Holders::default();
        for row in &held {
            let id = &row.account_id;
            if let Some(k) = &row.create_request_id {
                holders.by_request.insert(k.clone(), id.clone());
            }
            if let Some(k) = &row.external_id {
                holders.by_external.insert(k.clone(), id.clone());
            }
            if let Some(k) = &row.domain {
                holders.by_natural.insert(k.clone(), id.clone());
            }
        }
        let keys: Vec<ImportKeys> = items
            .iter()
            .map(|(new, request_id)| ImportKeys {
                request_id: request_id.as_deref(),
                external_id: new.external_id.as_deref(),
                natural: new.domain.as_deref(),
            })
            .collect();
        let decisions = decide_import(&keys, &holders, ACCOUNT_FIELDS);

        let now = time::now();
        let mut rows = Vec::new();
        let mut created_ids = Vec::with_capacity(items.len());
        for ((new, request_id), decision) in items.iter().zip(&decisions) {
            if *decision == ImportDecision::Create {
                let id = ids::new_id();
                rows.push(new_account_model(
                    t,
                    id.clone(),
                    new.clone(),
                    request_id.clone(),
                    now,
                ));
                created_ids.push(Some(id));
            } else {
                created_ids.push(None);
            }
        }
        match insert_chunks(&txn, rows, None).await {
            Err(error) if is_unique_violation(&error) => {
                txn.rollback().await?;
                return Ok(None);
            }
            other => other?,
        };
        let stage = NEW_ACCOUNT_STAGE.0.as_str();
        let reached: Vec<(&str, &str)> = created_ids
            .iter()
            .flatten()
            .map(|id| (id.as_str(), stage))
            .collect();
        record_firsts(&txn, t, &reached, ms(now)).await?;

        let mut ids: Vec<&str> = created_ids.iter().flatten().map(String::as_str).collect();
        for decision in &decisions {
            if let ImportDecision::Existing(id) = decision {
                ids.push(id);
            }
        }
        let models =
            rows_among::<account::Entity>(&txn, scope, account::Column::AccountId, &ids).await?;
        let records: HashMap<String, Account> = hydrate_accounts(&txn, models)
            .await?
            .into_iter()
            .map(|a| (a.account_id.clone(), a))
            .collect();
        txn.commit().await?;
        settle(decisions, &created_ids, &records).map(Some)
    }

    /// Creates the contacts of a batch that are new, in one transaction.
    pub async fn batch_create_contacts(
        &self,
        tenant: &TenantId,
        items: &[(NewContact, Option<String>)],
    ) -> ServiceResult<Vec<Imported<Contact>>> {
        for _ in 0..ATTEMPTS {
            if let Some(done) = self.try_create_contacts(tenant, items).await? {
                return Ok(done);
            }
        }
        Err(ServiceError::Aborted(
            "these contacts are being imported by another call; retry".into(),
        ))
    }

    async fn try_create_contacts(
        &self,
        tenant: &TenantId,
        items: &[(NewContact, Option<String>)],
    ) -> ServiceResult<Option<Vec<Imported<Contact>>>> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;

        // The accounts the items name, by our id or by theirs.
        let account_scope = (account::Column::TenantId, t);
        let by_id = present(items, |(n, _)| match &n.account {
            AccountRef::Id(id) => Some(id.as_str()),
            AccountRef::ExternalId(_) => None,
        });
        let by_external = present(items, |(n, _)| match &n.account {
            AccountRef::ExternalId(id) => Some(id.as_str()),
            AccountRef::Id(_) => None,
        });
        let mut accounts: HashMap<AccountRef, String> = HashMap::new();
        for row in
            rows_among::<account::Entity>(&txn, account_scope, account::Column::AccountId, &by_id)
                .await?
        {
            accounts.insert(AccountRef::Id(row.account_id.clone()), row.account_id);
        }
        for row in rows_among::<account::Entity>(
            &txn,
            account_scope,
            account::Column::ExternalId,
            &by_external,
        )
        .await?
        {
            if let Some(external_id) = row.external_id {
                accounts.insert(AccountRef::ExternalId(external_id), row.account_id);
            }
        }

        let scope = (contact::Column::TenantId, t);
        let mut held = Vec::new();
        for (column, keys) in [
            (
                contact::Column::CreateRequestId,
                present(items, |(_, r)| r.as_deref()),
            ),
            (
                contact::Column::ExternalId,
                present(items, |(n, _)| n.external_id.as_deref()),
            ),
            (
                contact::Column::Email,
                present(items, |(n, _)| n.email.as_deref()),
            ),
        ] {
            held.extend(rows_among::<contact::Entity>(&txn, scope, column, &keys).await?);
        }
        let mut holders = Holders::default();
        for row in &held {
            let id = &row.contact_id;
            if let Some(k) = &row.create_request_id {
                holders.by_request.insert(k.clone(), id.clone());
            }
            if let Some(k) = &row.external_id {
                holders.by_external.insert(k.clone(), id.clone());
            }
            if let Some(k) = &row.email {
                holders.by_natural.insert(k.clone(), id.clone());
            }
        }
        let keys: Vec<ImportKeys> = items
            .iter()
            .map(|(new, request_id)| ImportKeys {
                request_id: request_id.as_deref(),
                external_id: new.external_id.as_deref(),
                natural: new.email.as_deref(),
            })
            .collect();
        let mut decisions = decide_import(&keys, &holders, CONTACT_FIELDS);
        // A new contact needs its account: every id a caller sends is checked.
        for ((new, _), decision) in items.iter().zip(decisions.iter_mut()) {
            if *decision == ImportDecision::Create && !accounts.contains_key(&new.account) {
                let refusal = match &new.account {
                    AccountRef::Id(id) => (
                        "contact.account_id".to_owned(),
                        format!("no account {id} in this tenant"),
                    ),
                    AccountRef::ExternalId(id) => (
                        "account_external_id".to_owned(),
                        format!("no account with external id {id} in this tenant"),
                    ),
                };
                *decision = ImportDecision::Rejected(vec![refusal]);
            }
        }

        let now = time::now();
        // Inserted in account order: each insert takes a key-share lock on
        // its account (the foreign key), and score deliveries lock accounts
        // in id order (see resolve.rs).
        let mut rows = BTreeMap::new();
        let mut created_ids = Vec::with_capacity(items.len());
        for (i, ((new, request_id), decision)) in items.iter().zip(&decisions).enumerate() {
            match (decision, accounts.get(&new.account)) {
                (ImportDecision::Create, Some(account_id)) => {
                    let id = ids::new_id();
                    let (row, stage) = new_contact_model(
                        t,
                        id.clone(),
                        account_id,
                        new.clone(),
                        request_id.clone(),
                        now,
                    );
                    rows.insert((account_id.clone(), i), (id.clone(), row, stage));
                    created_ids.push(Some(id));
                }
                _ => created_ids.push(None),
            }
        }
        let mut reached = Vec::with_capacity(rows.len());
        let mut models = Vec::with_capacity(rows.len());
        for (id, model, stage) in rows.into_values() {
            reached.push((id, stage.as_str()));
            models.push(model);
        }
        match insert_chunks(&txn, models, None).await {
            Err(error) if is_unique_violation(&error) => {
                txn.rollback().await?;
                return Ok(None);
            }
            other => other?,
        };
        record_firsts(&txn, t, &reached, ms(now)).await?;

        let mut ids: Vec<&str> = created_ids.iter().flatten().map(String::as_str).collect();
        for decision in &decisions {
            if let ImportDecision::Existing(id) = decision {
                ids.push(id);
            }
        }
        let models =
            rows_among::<contact::Entity>(&txn, scope, contact::Column::ContactId, &ids).await?;
        let records: HashMap<String, Contact> = hydrate_contacts(&txn, models)
            .await?
            .into_iter()
            .map(|c| (c.contact_id.clone(), c))
            .collect();
        txn.commit().await?;
        settle(decisions, &created_ids, &records).map(Some)
    }
}
