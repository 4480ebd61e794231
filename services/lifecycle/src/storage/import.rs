//! Bulk import (BatchCreateAccounts, BatchCreateContacts): up to 1000 records
//! in one transaction with a fixed number of statements per batch (a read
//! per key kind, chunked inserts), never one per item. What each item
//! becomes is decided by `domain::import` over what the reads found.

use std::collections::{BTreeMap, HashMap};

use cascade_chassis::db::{among, begin_write, insert_chunks};
use cascade_chassis::error::is_unique_violation;
use cascade_chassis::idempotency::RequestKey;
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

/// One item of a batch create that passed its checks.
#[derive(Debug, Clone)]
pub struct ImportItem<T> {
    /// Its place in the request (from 0), which refusals name.
    pub position: usize,
    pub new: T,
    pub request: Option<RequestKey>,
}

impl<T> ImportItem<T> {
    fn keys<'a>(
        &'a self,
        external_id: Option<&'a str>,
        natural: Option<&'a str>,
    ) -> ImportKeys<'a> {
        ImportKeys {
            position: self.position,
            request: self.request.as_ref(),
            external_id,
            natural,
        }
    }
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

/// A table bulk import writes: its unique keys, as `ImportKeys` names them.
trait Keyed: EntityTrait {
    fn tenant_column() -> Self::Column;
    fn id_column() -> Self::Column;
    /// The request id, external id and natural key columns.
    fn key_columns() -> [Self::Column; 3];
    /// A row's id and its request id, external id and natural key.
    fn keys(row: &Self::Model) -> (&str, [Option<&str>; 3]);
    /// What the create under the row's request id asked.
    fn request_digest(row: &Self::Model) -> Option<&str>;
}

impl Keyed for account::Entity {
    fn tenant_column() -> Self::Column {
        account::Column::TenantId
    }
    fn id_column() -> Self::Column {
        account::Column::AccountId
    }
    fn key_columns() -> [Self::Column; 3] {
        [
            account::Column::CreateRequestId,
            account::Column::ExternalId,
            account::Column::Domain,
        ]
    }
    fn keys(row: &account::Model) -> (&str, [Option<&str>; 3]) {
        (
            &row.account_id,
            [
                row.create_request_id.as_deref(),
                row.external_id.as_deref(),
                row.domain.as_deref(),
            ],
        )
    }
    fn request_digest(row: &account::Model) -> Option<&str> {
        row.create_request_digest.as_deref()
    }
}

impl Keyed for contact::Entity {
    fn tenant_column() -> Self::Column {
        contact::Column::TenantId
    }
    fn id_column() -> Self::Column {
        contact::Column::ContactId
    }
    fn key_columns() -> [Self::Column; 3] {
        [
            contact::Column::CreateRequestId,
            contact::Column::ExternalId,
            contact::Column::Email,
        ]
    }
    fn keys(row: &contact::Model) -> (&str, [Option<&str>; 3]) {
        (
            &row.contact_id,
            [
                row.create_request_id.as_deref(),
                row.external_id.as_deref(),
                row.email.as_deref(),
            ],
        )
    }
    fn request_digest(row: &contact::Model) -> Option<&str> {
        row.create_request_digest.as_deref()
    }
}

/// Who in the tenant holds the items' keys: one read per kind of key.
async fn holders<E: Keyed>(
    conn: &impl ConnectionTrait,
    t: &str,
    items: &[ImportKeys<'_>],
) -> Result<Holders, DbErr> {
    let wanted: [Vec<&str>; 3] = [
        present(items, |k| k.request.map(|r| r.id.as_str())),
        present(items, |k| k.external_id),
        present(items, |k| k.natural),
    ];
    let mut holders = Holders::default();
    for (column, keys) in E::key_columns().into_iter().zip(&wanted) {
        for row in rows_among::<E>(conn, (E::tenant_column(), t), column, keys).await? {
            let (id, [request, external, natural]) = E::keys(&row);
            if let (Some(request), Some(digest)) = (request, E::request_digest(&row)) {
                holders
                    .request_digests
                    .insert(request.to_owned(), digest.to_owned());
            }
            for (key, map) in [
                (request, &mut holders.by_request),
                (external, &mut holders.by_external),
                (natural, &mut holders.by_natural),
            ] {
                if let Some(key) = key {
                    map.insert(key.to_owned(), id.to_owned());
                }
            }
        }
    }
    Ok(holders)
}

/// The rows the batch's results show: those it created and those that
/// existed.
async fn read_back<E: Keyed>(
    conn: &impl ConnectionTrait,
    t: &str,
    decisions: &[ImportDecision],
    created_ids: &[Option<String>],
) -> Result<Vec<E::Model>, DbErr> {
    let mut ids: Vec<&str> = created_ids.iter().flatten().map(String::as_str).collect();
    for decision in decisions {
        if let ImportDecision::Existing(id) = decision {
            ids.push(id);
        }
    }
    rows_among::<E>(conn, (E::tenant_column(), t), E::id_column(), &ids).await
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
        items: &[ImportItem<NewAccount>],
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
        items: &[ImportItem<NewAccount>],
    ) -> ServiceResult<Option<Vec<Imported<Account>>>> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        let keys: Vec<ImportKeys> = items
            .iter()
            .map(|item| item.keys(item.new.external_id.as_deref(), item.new.domain.as_deref()))
            .collect();
        let holders = holders::<account::Entity>(&txn, t, &keys).await?;
        let decisions = decide_import(&keys, &holders, ACCOUNT_FIELDS);

        let now = time::now();
        let mut rows = Vec::new();
        let mut created_ids = Vec::with_capacity(items.len());
        for (item, decision) in items.iter().zip(&decisions) {
            if *decision == ImportDecision::Create {
                let id = ids::new_id();
                rows.push(new_account_model(
                    t,
                    id.clone(),
                    item.new.clone(),
                    item.request.clone(),
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

        let models = read_back::<account::Entity>(&txn, t, &decisions, &created_ids).await?;
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
        items: &[ImportItem<NewContact>],
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
        items: &[ImportItem<NewContact>],
    ) -> ServiceResult<Option<Vec<Imported<Contact>>>> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;

        // The accounts the items name, by our id or by theirs.
        let account_scope = (account::Column::TenantId, t);
        let by_id = present(items, |item| match &item.new.account {
            AccountRef::Id(id) => Some(id.as_str()),
            AccountRef::ExternalId(_) => None,
        });
        let by_external = present(items, |item| match &item.new.account {
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

        let keys: Vec<ImportKeys> = items
            .iter()
            .map(|item| item.keys(item.new.external_id.as_deref(), item.new.email.as_deref()))
            .collect();
        let holders = holders::<contact::Entity>(&txn, t, &keys).await?;
        let mut decisions = decide_import(&keys, &holders, CONTACT_FIELDS);
        // A new contact needs its account: every id a caller sends is checked.
        for (item, decision) in items.iter().zip(decisions.iter_mut()) {
            if *decision == ImportDecision::Create && !accounts.contains_key(&item.new.account) {
                let refusal = match &item.new.account {
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
        for (item, decision) in items.iter().zip(&decisions) {
            match (decision, accounts.get(&item.new.account)) {
                (ImportDecision::Create, Some(account_id)) => {
                    let id = ids::new_id();
                    let (row, stage) = new_contact_model(
                        t,
                        id.clone(),
                        account_id,
                        item.new.clone(),
                        item.request.clone(),
                        now,
                    );
                    rows.insert(
                        (account_id.clone(), item.position),
                        (id.clone(), row, stage),
                    );
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

        let models = read_back::<contact::Entity>(&txn, t, &decisions, &created_ids).await?;
        let records: HashMap<String, Contact> = hydrate_contacts(&txn, models)
            .await?
            .into_iter()
            .map(|c| (c.contact_id.clone(), c))
            .collect();
        txn.commit().await?;
        settle(decisions, &created_ids, &records).map(Some)
    }
}
