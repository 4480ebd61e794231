//! Scoring's part of an erasure (`chassis::erasure`): the erased contacts'
//! activities (the ledger lines), buckets, scores, status and cap usage are deleted,
//! and the account's score is recomputed from what remains and delivered to
//! lifecycle, in one transaction; the score deliveries still waiting (pending
//! or dead) no longer name them. An erased account loses every row of it.
//! Idempotent: a second run finds nothing to delete and delivers the same
//! totals again (lifecycle sees a new sequence with the same scores).

use std::collections::BTreeMap;

use cascade_chassis::db::{among, begin_write};
use cascade_chassis::{ServiceResult, TenantId, outbox};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};

use super::entities::{
    account_score, activity, contact_score, contact_status, rule_usage, score_bucket,
};
use super::fold;
use super::models::current_model;
use super::scores::{lock_account_scores, recomputed, upsert_account_scores};
use super::{DeliveryPayload, Repository, SCORE_TOPIC, today};

/// What to erase.
pub enum Erase<'a> {
    /// These contacts of `account_id`; the account stays.
    Contacts {
        account_id: &'a str,
        contact_ids: &'a [String],
    },
    /// The account and everything of it.
    Account { account_id: &'a str },
}

/// Deletes the rows of `column` among `keys` in `E`, for the tenant; how many.
async fn delete_among<E: EntityTrait>(
    conn: &impl ConnectionTrait,
    tenant: (E::Column, &str),
    column: E::Column,
    keys: &[&str],
) -> Result<u64, DbErr> {
    let mut deleted = 0;
    for condition in among(conn.get_database_backend(), column, keys) {
        deleted += E::delete_many()
            .filter(tenant.0.eq(tenant.1))
            .filter(condition)
            .exec(conn)
            .await?
            .rows_affected;
    }
    Ok(deleted)
}

/// Takes the erased contacts out of the account's score deliveries that wait
/// (pending, or dead letters kept for an operator): a delivery names each
/// contact with the types of its activities. What is left still carries the
/// account's sequence, so a pending delivery still goes to lifecycle. An
/// unreadable payload is left as it is (the deliverer drops it).
async fn scrub_undelivered(
    conn: &impl ConnectionTrait,
    t: &str,
    account_id: &str,
    erased: impl Fn(&str) -> bool,
) -> Result<(), DbErr> {
    outbox::rewrite_undelivered(conn, t, SCORE_TOPIC, account_id, |bytes| {
        let mut payload = DeliveryPayload::decode(bytes).ok()?;
        let named = payload.contacts.len();
        payload.contacts.retain(|contact, _| !erased(contact));
        (payload.contacts.len() < named).then(|| payload.encode())
    })
    .await?;
    Ok(())
}

impl Repository {
    pub async fn erase(&self, tenant: &TenantId, what: Erase<'_>) -> ServiceResult<()> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        // First of all: a fold after this one must not write the erased
        // buckets back from groups stored before it.
        match what {
            Erase::Contacts { contact_ids, .. } => {
                fold::scrub(&txn, t, |b| contact_ids.contains(&b.contact_id)).await?;
            }
            Erase::Account { account_id } => {
                fold::scrub(&txn, t, |b| b.account_id == account_id).await?;
            }
        }
        match what {
            Erase::Contacts {
                account_id,
                contact_ids,
            } => {
                let ids: Vec<&str> = contact_ids.iter().map(String::as_str).collect();
                // In ingest's and the fold's lock order (pending folds, usage,
                // activities, buckets, then the account's score, then contact
                // scores), so they queue rather than deadlock.
                delete_among::<rule_usage::Entity>(
                    &txn,
                    (rule_usage::Column::TenantId, t),
                    rule_usage::Column::Subject,
                    &ids,
                )
                .await?;
                let activities = delete_among::<activity::Entity>(
                    &txn,
                    (activity::Column::TenantId, t),
                    activity::Column::ContactId,
                    &ids,
                )
                .await?;
                let buckets = delete_among::<score_bucket::Entity>(
                    &txn,
                    (score_bucket::Column::TenantId, t),
                    score_bucket::Column::ContactId,
                    &ids,
                )
                .await?;
                // Before the account's score, as a contact change takes them.
                delete_among::<contact_status::Entity>(
                    &txn,
                    (contact_status::Column::TenantId, t),
                    contact_status::Column::ContactId,
                    &ids,
                )
                .await?;
                scrub_undelivered(&txn, t, account_id, |c| {
                    contact_ids.iter().any(|id| id == c)
                })
                .await?;
                if activities == 0 && buckets == 0 {
                    // Nothing of them was scored: no score to recompute.
                    txn.commit().await?;
                    return Ok(());
                }
                // Held until commit: batches of this account wait, so the
                // recomputed score is not overwritten by one that still
                // counted the contact.
                let account = account_id.to_owned();
                let stored = lock_account_scores(&txn, t, std::iter::once(&account)).await?;
                delete_among::<contact_score::Entity>(
                    &txn,
                    (contact_score::Column::TenantId, t),
                    contact_score::Column::ContactId,
                    &ids,
                )
                .await?;

                let model = current_model(&txn, t).await?;
                let today = today();
                // An account left without buckets scores zero.
                let score = recomputed(&txn, t, (&model, today), &[account_id])
                    .await?
                    .remove(account_id)
                    .unwrap_or_default();
                let scores = BTreeMap::from([(account.clone(), score)]);
                let written =
                    upsert_account_scores(&txn, t, (&model, today), &stored, &scores).await?;
                if let Some(written) = written.get(account_id) {
                    let payload = DeliveryPayload {
                        sequence: written.sequence,
                        contacts: BTreeMap::new(),
                        new_engagement: Some((0.0, today)),
                        added_total: Some(written.added),
                    };
                    outbox::enqueue(&txn, t, SCORE_TOPIC, account_id, payload.encode()).await?;
                }
                txn.commit().await?;
                self.deliveries_written.notify_one();
            }
            Erase::Account { account_id } => {
                // The account's contacts as scoring knows them (rule usage is
                // kept per contact, or per account for activities without one).
                let contacts: Vec<String> = contact_score::Entity::find()
                    .filter(contact_score::Column::TenantId.eq(t))
                    .filter(contact_score::Column::AccountId.eq(account_id))
                    .all(&txn)
                    .await?
                    .into_iter()
                    .map(|row| row.contact_id)
                    .collect();
                let account_subject = format!("account:{account_id}");
                let mut subjects: Vec<&str> = contacts.iter().map(String::as_str).collect();
                subjects.push(&account_subject);
                delete_among::<rule_usage::Entity>(
                    &txn,
                    (rule_usage::Column::TenantId, t),
                    rule_usage::Column::Subject,
                    &subjects,
                )
                .await?;
                let one = [account_id];
                delete_among::<activity::Entity>(
                    &txn,
                    (activity::Column::TenantId, t),
                    activity::Column::AccountId,
                    &one,
                )
                .await?;
                delete_among::<score_bucket::Entity>(
                    &txn,
                    (score_bucket::Column::TenantId, t),
                    score_bucket::Column::AccountId,
                    &one,
                )
                .await?;
                delete_among::<contact_status::Entity>(
                    &txn,
                    (contact_status::Column::TenantId, t),
                    contact_status::Column::AccountId,
                    &one,
                )
                .await?;
                delete_among::<contact_score::Entity>(
                    &txn,
                    (contact_score::Column::TenantId, t),
                    contact_score::Column::AccountId,
                    &one,
                )
                .await?;
                delete_among::<account_score::Entity>(
                    &txn,
                    (account_score::Column::TenantId, t),
                    account_score::Column::AccountId,
                    &one,
                )
                .await?;
                scrub_undelivered(&txn, t, account_id, |_| true).await?;
                txn.commit().await?;
            }
        }
        Ok(())
    }
}
