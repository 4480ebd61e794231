//! Scores: the per-account and per-contact scores each batch stores (so
//! deliveries and the top list need not read every bucket), the reads that
//! compute totals from the buckets, and what a delivery carries.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use cascade_chassis::db::{WriteTransaction, among, insert_chunks, insert_chunks_returning};
use cascade_chassis::page::PageRequest;
use cascade_chassis::{ServiceError, ServiceResult, TenantId};
use sea_orm::sea_query::{Expr, ExprTrait, IntoCondition, OnConflict, Query, SelectStatement};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait,
    FromQueryResult, QueryFilter, QueryOrder, QuerySelect, Statement, Value, sea_query::SimpleExpr,
};

use super::entities::{account_score, contact_score, contact_status, score_bucket};
use super::models::current_model;
use super::{Repository, STALE_DAY, Totals, today};
use crate::domain::{self, Bucket, ScoringModel, StoredScore};
use cascade_proto::outbox::v1 as outbox_pb;
use prost::Message as _;

/// The (score, account) a ListTopAccounts token continues after. Scores
/// are finite: a NaN key matched no row and ended the listing early.
fn top_key(key: &str) -> Option<(f64, String)> {
    let (score, id) = key.split_once('|')?;
    let score = score.parse::<f64>().ok().filter(|s| s.is_finite())?;
    Some((score, id.to_owned()))
}

impl Repository {
    /// An account's totals today, or NOT_FOUND without any activity. The
    /// buckets are summed per type and day in the database (a read returns
    /// tens of rows, not one per contact, type and day); `per_contact` is
    /// left empty. Inactive contacts do not count (`domain::status`).
    ///
    /// One statement in the common case (`account_sums`): it also answers
    /// the engaged count, the model version and whether groups wait to be
    /// folded, from one snapshot. Only a pending fold or an account without
    /// buckets costs more (docs/performance.md, round 15).
    pub async fn account_totals(
        &self,
        tenant: &TenantId,
        account_id: &str,
    ) -> ServiceResult<Totals> {
        let t = tenant.as_str();
        if let Some(totals) = self.stored_totals(t, account_id).await? {
            return Ok(totals);
        }
        let mut rows = account_sums(&self.db, t, account_id).await?;
        match rows.first().map(|row| row.newest_fold) {
            // Nothing was pending in the sums' snapshot: they are current.
            Some(None) => {}
            // Groups were: fold them (later ones are not waited for), read again.
            Some(Some(newest)) => {
                self.fold_through(t, newest).await?;
                rows = account_sums(&self.db, t, account_id).await?;
            }
            // No rows, so no answer to "was anything pending". A check now
            // would come after the read it vouches for, and miss a fold that
            // committed in between: settle first, then read again.
            None => {
                self.settled(t).await?;
                rows = account_sums(&self.db, t, account_id).await?;
            }
        }
        let Some(first) = rows.first() else {
            return self.nothing_counts(t, account_id).await;
        };
        let model = self.model_at(t, first.model_version).await?;
        let engaged = first.engaged;
        let buckets = rows.into_iter().map(|row| Bucket {
            contact_id: String::new(),
            activity_type: row.activity_type,
            intent: row.intent,
            day: row.day,
            points: row.points,
            activities: row.activity_count,
        });
        let mut totals = domain::totals_of(buckets, &model, today());
        if totals.activities == 0 {
            return self.nothing_counts(t, account_id).await;
        }
        totals.engaged_contacts = i32::try_from(engaged).unwrap_or(i32::MAX);
        totals.per_contact.clear();
        Ok(totals)
    }

    /// The answer for an account none of whose activity counts: a score of
    /// 0 when it has a stored score (activity was recorded; its people have
    /// since left or been erased, as ListTopAccounts and lifecycle show it),
    /// NOT_FOUND when nothing was ever recorded for it.
    async fn nothing_counts(&self, t: &str, account_id: &str) -> ServiceResult<Totals> {
        if stored_read(&self.db, t, account_id).await?.is_some() {
            Ok(Totals::default())
        } else {
            Err(ServiceError::not_found("account score", account_id).because(NO_ACTIVITY))
        }
    }

    /// An account's totals from its stored score, when that is today's and
    /// no group waits to be folded: one row, where summing the buckets
    /// reads about a hundred (docs/performance.md, round 19). The stored
    /// score is written with the buckets in one transaction, so it is what
    /// the buckets sum to. Pending groups are folded first (later ones are
    /// not waited for). None when the stored score is stale, absent or
    /// counts no activity: the caller sums the buckets instead.
    async fn stored_totals(&self, t: &str, account_id: &str) -> ServiceResult<Option<Totals>> {
        let mut row = stored_read(&self.db, t, account_id).await?;
        if let Some(newest) = row.as_ref().and_then(|r| r.newest_fold) {
            self.fold_through(t, newest).await?;
            row = stored_read(&self.db, t, account_id).await?;
            if row
                .as_ref()
                .is_some_and(|r| r.newest_fold.is_some_and(|n| n <= newest))
            {
                return Ok(None);
            }
        }
        let Some(row) = row else {
            return Ok(None);
        };
        let stored = stored_score(row);
        if stored.computed_day != today() || stored.activities == 0 {
            return Ok(None);
        }
        Ok(Some(Totals {
            engagement: stored.engagement,
            intent: stored.intent,
            engaged_contacts: stored.engaged_contacts,
            breakdown: stored.breakdown,
            per_contact: BTreeMap::new(),
            activities: stored.activities,
        }))
    }

    /// A contact's score today and its breakdown, or NOT_FOUND.
    pub async fn contact_totals(
        &self,
        tenant: &TenantId,
        contact_id: &str,
    ) -> ServiceResult<(String, Totals)> {
        let t = tenant.as_str();
        self.settled(t).await?;
        let account_id: String = contact_score::Entity::find()
            .select_only()
            .column(contact_score::Column::AccountId)
            .filter(contact_score::Column::TenantId.eq(t))
            .filter(contact_score::Column::ContactId.eq(contact_id))
            .into_tuple()
            .one(&self.db)
            .await?
            .ok_or_else(|| {
                ServiceError::not_found("contact score", contact_id).because(NO_CONTACT_ACTIVITY)
            })?;
        let model = current_model(&self.db, t).await?;
        let buckets = buckets_of(
            &self.db,
            t,
            score_bucket::Column::AccountId.eq(&account_id),
            Some(contact_id),
        )
        .await?;
        let totals = domain::totals_of(buckets.into_values().flatten(), &model, today());
        Ok((account_id, totals))
    }

    /// Accounts by engagement score, highest first. Stale stored scores
    /// (`domain::recompute_before`) are brought up to today first.
    pub async fn top_accounts(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
    ) -> ServiceResult<(Vec<(String, Totals)>, String)> {
        // A bad token is refused before anything is written: pending groups
        // folded, stale scores refreshed.
        let after = match &page.after {
            Some(token) => Some(top_key(token).ok_or_else(|| {
                ServiceError::invalid("page_token", "is not a token returned by this list")
            })?),
            None => None,
        };
        let t = tenant.as_str();
        self.settled(t).await?;
        let model = current_model(&self.db, t).await?;
        let today = today();
        // Stored scores of an earlier day miss that day's decay; marked ones
        // follow a model change. The order below reads them, so they are
        // brought up to date first, and lifecycle is told of those that moved.
        self.refresh_stale_scores(t, today).await?;
        let mut query = account_score::Entity::find()
            .select_only()
            .column(account_score::Column::AccountId)
            .filter(account_score::Column::TenantId.eq(t));
        if let Some((score, id)) = after {
            query = query.filter(
                Condition::any()
                    .add(account_score::Column::EngagementScore.lt(score))
                    .add(
                        Condition::all()
                            .add(account_score::Column::EngagementScore.eq(score))
                            .add(account_score::Column::AccountId.gt(id)),
                    ),
            );
        }
        let ids: Vec<String> = query
            .order_by_desc(account_score::Column::EngagementScore)
            .order_by_asc(account_score::Column::AccountId)
            .limit(page.fetch_limit())
            .into_tuple()
            .all(&self.db)
            .await?;
        let mut accounts = Vec::with_capacity(ids.len());
        for id in ids {
            let totals = compute(&self.db, t, &id, &model, today).await?;
            accounts.push((id, totals));
        }
        Ok(page.finish(accounts, |(id, totals)| {
            format!("{:?}|{id}", totals.engagement)
        }))
    }

    /// The totals to deliver for accounts now, with decay applied: the
    /// scores their last batch stored (what GetAccountScore computes from the
    /// buckets, without reading them), or recomputed for an account whose
    /// stored scores are stale. Each account's `per_contact` holds the
    /// contacts asked for only. Three reads for all the accounts, whatever
    /// their number (the model, the account and the contact scores), plus
    /// one per stale account. With the model's decay half-life, which the
    /// deliveries carry: the one the totals were computed under.
    pub async fn delivery_totals(
        &self,
        tenant_id: &str,
        accounts: &[(&str, Vec<&str>)],
    ) -> ServiceResult<(HashMap<String, Totals>, f64)> {
        let today = today();
        let model = current_model(&self.db, tenant_id).await?;
        let mut found: HashMap<String, Totals> = HashMap::with_capacity(accounts.len());
        let ids: Vec<&str> = accounts.iter().map(|(id, _)| *id).collect();
        let backend = self.db.get_database_backend();
        for ids in among(backend, account_score::Column::AccountId, &ids) {
            // A later day than ours: computed by a replica whose clock is
            // past midnight already, or by a test refreshing as of a later
            // day (`refresh_decayed_scores`).
            let rows = account_score::Entity::find()
                .filter(account_score::Column::TenantId.eq(tenant_id))
                .filter(account_score::Column::ComputedDay.gte(today))
                .filter(ids)
                .all(&self.db)
                .await?;
            for row in rows {
                found.insert(
                    row.account_id,
                    Totals {
                        engagement: row.engagement_score,
                        intent: row.intent_score,
                        engaged_contacts: row.engaged_contacts,
                        ..Totals::default()
                    },
                );
            }
        }
        let contacts: Vec<&str> = accounts
            .iter()
            .filter(|(id, _)| found.contains_key(*id))
            .flat_map(|(_, contacts)| contacts.iter().copied())
            .collect();
        for ids in among(backend, contact_score::Column::ContactId, &contacts) {
            let rows = contact_score::Entity::find()
                .filter(contact_score::Column::TenantId.eq(tenant_id))
                .filter(contact_score::Column::ComputedDay.gte(today))
                .filter(ids)
                .all(&self.db)
                .await?;
            for row in rows {
                if let Some(totals) = found.get_mut(&row.account_id) {
                    totals
                        .per_contact
                        .insert(row.contact_id, row.engagement_score);
                }
            }
        }
        // Stale: no row for today (or later), or a contact without one.
        for (account_id, contacts) in accounts {
            let fresh = found
                .get(*account_id)
                .is_some_and(|totals| contacts.iter().all(|c| totals.per_contact.contains_key(*c)));
            if fresh {
                continue;
            }
            let totals = compute(&self.db, tenant_id, account_id, &model, today).await?;
            found.insert((*account_id).to_owned(), totals);
        }
        Ok((found, model.decay_half_life_days))
    }
}

/// Why an account has no score: scoring knows accounts only through their
/// activities, so it cannot tell an account without any from no account.
const NO_ACTIVITY: &str = "no activity has been recorded for this account";

/// Why a contact has no score (an erased contact's score is erased too).
const NO_CONTACT_ACTIVITY: &str =
    "no activity has been recorded for this contact, or the contact was erased";

/// The stored scores of these accounts, locked until commit so
/// concurrent batches of one account add up rather than overwrite each
/// other. On PostgreSQL a missing row is created first as a stale
/// placeholder (a second batch waits for it), which makes the caller
/// compute it from the buckets. SQLite's write transaction holds the file's
/// only write lock from its first statement, so no other writer can come
/// between this read and the caller's write: a missing row is left missing,
/// which the caller computes from the buckets all the same, and the
/// placeholders' insert (about 2 % of a group's lock) is saved.
pub(super) async fn lock_account_scores<'a>(
    txn: &WriteTransaction,
    t: &str,
    accounts: impl Iterator<Item = &'a String>,
) -> Result<HashMap<String, StoredScore>, DbErr> {
    let accounts: Vec<&String> = accounts.collect();
    let ids: Vec<&str> = accounts.iter().map(|a| a.as_str()).collect();
    if txn.get_database_backend() != DbBackend::Postgres {
        return lock_stored_scores(txn, t, &ids).await;
    }
    let placeholders = accounts
        .iter()
        .map(|account_id| account_score::ActiveModel {
            tenant_id: Set(t.to_owned()),
            account_id: Set((*account_id).clone()),
            engagement_score: Set(0.0),
            intent_score: Set(0.0),
            engaged_contacts: Set(0),
            computed_day: Set(STALE_DAY),
            delivery_seq: Set(0),
            breakdown: Set(None),
            activity_count: Set(0),
            breakdown_seq: Set(0),
            added_total: Set(0.0),
            added_day: Set(0),
        })
        .collect();
    insert_chunks(
        txn,
        placeholders,
        Some(&account_key().do_nothing().to_owned()),
    )
    .await?;
    lock_stored_scores(txn, t, &ids).await
}

/// The stored scores of those of `accounts` that have one, locked until
/// commit (in key order, as every writer of scores locks them).
pub(super) async fn lock_stored_scores(
    txn: &WriteTransaction,
    t: &str,
    accounts: &[&str],
) -> Result<HashMap<String, StoredScore>, DbErr> {
    let mut stored = HashMap::with_capacity(accounts.len());
    for ids in among(
        txn.get_database_backend(),
        account_score::Column::AccountId,
        accounts,
    ) {
        let rows = txn
            .lock_all(
                account_score::Entity::find()
                    .filter(account_score::Column::TenantId.eq(t))
                    .filter(ids)
                    .order_by_asc(account_score::Column::AccountId),
            )
            .await?;
        for row in rows {
            let account_id = row.account_id.clone();
            stored.insert(account_id, stored_score(ScoreRow::from(row)));
        }
    }
    Ok(stored)
}

/// The columns of an account's stored score that the domain reads; read
/// for an answer (`stored_read`), with the tenant's newest group not folded
/// yet from the same snapshot.
#[derive(Debug, FromQueryResult)]
struct ScoreRow {
    engagement_score: f64,
    intent_score: f64,
    engaged_contacts: i32,
    computed_day: i64,
    breakdown: Option<Vec<u8>>,
    activity_count: i64,
    delivery_seq: i64,
    breakdown_seq: i64,
    added_total: f64,
    added_day: i64,
    newest_fold: Option<i64>,
}

impl From<account_score::Model> for ScoreRow {
    fn from(row: account_score::Model) -> Self {
        Self {
            engagement_score: row.engagement_score,
            intent_score: row.intent_score,
            engaged_contacts: row.engaged_contacts,
            computed_day: row.computed_day,
            breakdown: row.breakdown,
            activity_count: row.activity_count,
            delivery_seq: row.delivery_seq,
            breakdown_seq: row.breakdown_seq,
            added_total: row.added_total,
            added_day: row.added_day,
            newest_fold: None,
        }
    }
}

/// A stored score row as the domain sees it. A row without a breakdown
/// (written before breakdowns were kept), with one an older replica's
/// write left behind (`breakdown_seq` behind `delivery_seq`), or with one
/// that does not decode reads as stale, so whoever uses it recomputes it
/// from the buckets.
fn stored_score(row: ScoreRow) -> StoredScore {
    let breakdown = row
        .breakdown
        .as_deref()
        .filter(|_| row.breakdown_seq == row.delivery_seq)
        .and_then(decode_breakdown);
    StoredScore {
        engagement: row.engagement_score,
        intent: row.intent_score,
        engaged_contacts: row.engaged_contacts,
        computed_day: if breakdown.is_some() {
            row.computed_day
        } else {
            STALE_DAY
        },
        breakdown: breakdown.unwrap_or_default(),
        activities: row.activity_count,
        added: (row.added_total, row.added_day),
    }
}

fn encode_breakdown(breakdown: &BTreeMap<String, (i64, f64)>) -> Vec<u8> {
    outbox_pb::StoredBreakdown {
        types: breakdown
            .iter()
            .map(
                |(activity_type, &(activity_count, points))| outbox_pb::TypeTotal {
                    activity_type: activity_type.clone(),
                    activity_count,
                    points,
                },
            )
            .collect(),
    }
    .encode_to_vec()
}

fn decode_breakdown(bytes: &[u8]) -> Option<BTreeMap<String, (i64, f64)>> {
    let stored = outbox_pb::StoredBreakdown::decode(bytes).ok()?;
    Some(
        stored
            .types
            .into_iter()
            .map(|t| (t.activity_type, (t.activity_count, t.points)))
            .collect(),
    )
}

/// What each write of an account's score sets (and a read answers from),
/// besides the sequences.
const SCORE_COLUMNS: [account_score::Column; 8] = [
    account_score::Column::EngagementScore,
    account_score::Column::IntentScore,
    account_score::Column::EngagedContacts,
    account_score::Column::ComputedDay,
    account_score::Column::Breakdown,
    account_score::Column::ActivityCount,
    account_score::Column::AddedTotal,
    account_score::Column::AddedDay,
];

fn account_key() -> OnConflict {
    OnConflict::columns([
        account_score::Column::TenantId,
        account_score::Column::AccountId,
    ])
}

/// An account's score after a batch, and which of the batch's contacts
/// have engagement in it now.
#[derive(Default)]
pub(super) struct NewScore {
    pub(super) totals: Totals,
    pub(super) engaged: BTreeSet<String>,
    /// The engagement the batch's activities added, decayed to its day (0
    /// for a recompute without activity): lifecycle counts it as earned by
    /// a recycled account.
    pub(super) new_engagement: f64,
}

/// Each touched account's new stored score: the stored one plus the batch
/// while it is from today, or recomputed from the buckets (already holding
/// the batch) when it is new, misses a day's decay, or follows a model change.
/// Whether a contact was engaged before the batch is its score row's
/// `engaged` (kept consistent by the account lock); a recomputed account
/// takes it from its buckets.
pub(super) async fn rescore(
    conn: &impl ConnectionTrait,
    t: &str,
    (model, today): (&ScoringModel, i64),
    batch: &domain::BatchScores,
    accounts: &HashMap<String, StoredScore>,
) -> ServiceResult<BTreeMap<String, NewScore>> {
    let contacts = stored_contact_scores(conn, t, batch.contacts()).await?;
    // A contact without a score row yet may be inactive as well.
    let unscored: Vec<&str> = batch
        .contacts()
        .filter(|c| !contacts.contains_key(*c))
        .collect();
    let inactive = inactive_among(conn, t, &unscored).await?;
    // A contact counts in its account unless marked inactive.
    let counts = |c: &str| !inactive.contains(c) && contacts.get(c).is_none_or(|row| !row.inactive);
    let mut result = BTreeMap::new();
    let mut recompute = Vec::new();
    for (account_id, add) in &batch.accounts {
        let current = accounts
            .get(account_id)
            .filter(|row| row.computed_day == today);
        // Each contact's stored score must be this account's, of today, or
        // absent (then it has no buckets here either). A contact marked
        // inactive after its activity was checked (another replica's cache,
        // or a change applied meanwhile) must not be added: the account is
        // recomputed, without it.
        let contacts_current = add.new_types.keys().all(|c| {
            counts(c)
                && contacts
                    .get(c.as_str())
                    .is_none_or(|row| &row.account_id == account_id && row.computed_day == today)
        });
        match current {
            Some(current) if contacts_current => {
                let previous = |contact: &str| {
                    contacts
                        .get(contact)
                        .map_or(0.0, |row| row.engagement_score)
                };
                // Activities without a contact are intent (`is_intent`), so
                // "" is never among `contact_points` and needs no flag.
                let was_engaged =
                    |contact: &str| contacts.get(contact).is_some_and(|row| row.engaged);
                let totals = domain::add_batch(current, add, previous, was_engaged);
                let engaged = add
                    .new_types
                    .keys()
                    .filter(|c| was_engaged(c) || add.engaging.contains(*c))
                    .cloned()
                    .collect();
                let new_engagement = add.engagement;
                result.insert(
                    account_id.clone(),
                    NewScore {
                        totals,
                        engaged,
                        new_engagement,
                    },
                );
            }
            _ => recompute.push(account_id.as_str()),
        }
    }
    let mut recomputed = recomputed(conn, t, (model, today), &recompute).await?;
    for (account_id, score) in &mut recomputed {
        score.new_engagement = batch.accounts.get(account_id).map_or(0.0, |add| {
            add.contact_points
                .iter()
                .filter(|(c, _)| counts(c))
                .map(|(_, points)| points)
                .sum()
        });
    }
    result.extend(recomputed);
    Ok(result)
}

/// The scores of `accounts` computed from their buckets; an account without
/// buckets is absent.
pub(super) async fn recomputed(
    conn: &impl ConnectionTrait,
    t: &str,
    (model, today): (&ScoringModel, i64),
    accounts: &[&str],
) -> Result<BTreeMap<String, NewScore>, DbErr> {
    let mut result = BTreeMap::new();
    for accounts in among(
        conn.get_database_backend(),
        score_bucket::Column::AccountId,
        accounts,
    ) {
        for (account_id, buckets) in buckets_of(conn, t, accounts, None).await? {
            let engaged = buckets
                .iter()
                .filter(|b| domain::engages(b))
                .map(|b| b.contact_id.clone())
                .collect();
            let totals = domain::totals_of(buckets, model, today);
            result.insert(
                account_id,
                NewScore {
                    totals,
                    engaged,
                    ..NewScore::default()
                },
            );
        }
    }
    Ok(result)
}

/// A contact's stored score as a batch reads it.
#[derive(Debug, FromQueryResult)]
struct StoredContact {
    contact_id: String,
    account_id: String,
    engagement_score: f64,
    computed_day: i64,
    engaged: bool,
    /// Marked inactive (DeactivateContact).
    inactive: bool,
}

/// Stored contact scores, by contact, with whether each is inactive (in the
/// same statement: no round trip more per batch).
async fn stored_contact_scores<'a>(
    conn: &impl ConnectionTrait,
    t: &str,
    contacts: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, StoredContact>, DbErr> {
    let contacts: Vec<&str> = contacts.collect();
    let mut stored = HashMap::with_capacity(contacts.len());
    for ids in among(
        conn.get_database_backend(),
        contact_score::Column::ContactId,
        &contacts,
    ) {
        let rows = contact_score::Entity::find()
            .select_only()
            .columns([
                contact_score::Column::ContactId,
                contact_score::Column::AccountId,
                contact_score::Column::EngagementScore,
                contact_score::Column::ComputedDay,
                contact_score::Column::Engaged,
            ])
            .column_as(
                Expr::col(contact_score::Column::ContactId.as_column_ref())
                    .in_subquery(inactive_contacts(t)),
                "inactive",
            )
            .filter(contact_score::Column::TenantId.eq(t))
            .filter(ids)
            .into_model::<StoredContact>()
            .all(conn)
            .await?;
        stored.extend(rows.into_iter().map(|row| (row.contact_id.clone(), row)));
    }
    Ok(stored)
}

/// Those of `contacts` marked inactive; no statement when there are none.
async fn inactive_among(
    conn: &impl ConnectionTrait,
    t: &str,
    contacts: &[&str],
) -> Result<HashSet<String>, DbErr> {
    let mut inactive = HashSet::new();
    for ids in among(
        conn.get_database_backend(),
        contact_status::Column::ContactId,
        contacts,
    ) {
        let rows: Vec<String> = contact_status::Entity::find()
            .select_only()
            .column(contact_status::Column::ContactId)
            .filter(contact_status::Column::TenantId.eq(t))
            .filter(contact_status::Column::Inactive.eq(true))
            .filter(ids)
            .into_tuple()
            .all(conn)
            .await?;
        inactive.extend(rows);
    }
    Ok(inactive)
}

/// The ids of the tenant's contacts marked inactive.
fn inactive_contacts(t: &str) -> SelectStatement {
    Query::select()
        .column((contact_status::Entity, contact_status::Column::ContactId))
        .from(contact_status::Entity)
        .and_where(Expr::col((contact_status::Entity, contact_status::Column::TenantId)).eq(t))
        .and_where(Expr::col((contact_status::Entity, contact_status::Column::Inactive)).eq(true))
        .to_owned()
}

/// Rows whose contact (`column`) counts toward its account: not marked
/// inactive. Buckets without a contact hold "" there, which is never
/// marked; activities hold NULL, see [`counted_activities`].
pub(super) fn counted_contacts<C: ColumnTrait>(t: &str, column: C) -> SimpleExpr {
    Expr::col(column.as_column_ref()).not_in_subquery(inactive_contacts(t))
}

/// [`counted_contacts`] for the activities table, whose anonymous rows have
/// no contact (NULL, which NOT IN would leave out).
pub(super) fn counted_activities<C: ColumnTrait>(t: &str, column: C) -> Condition {
    Condition::any()
        .add(column.is_null())
        .add(counted_contacts(t, column))
}

/// One row of [`account_sums`]: an account's counted buckets summed per
/// type, intent and day, and on every row what the read needs besides.
#[derive(Debug, FromQueryResult)]
struct AccountSums {
    activity_type: String,
    intent: bool,
    day: i64,
    points: i64,
    activity_count: i64,
    /// Counted contacts with any non-intent bucket.
    engaged: i64,
    /// The tenant's newest model version; none while it has the default.
    model_version: Option<i64>,
    /// The tenant's newest group not folded yet (PostgreSQL only).
    newest_fold: Option<i64>,
}

/// An account's read in one statement: the sums, with the engaged count,
/// the model version and the newest pending fold as uncorrelated scalar
/// subqueries (each evaluated once, on both backends). One snapshot
/// answers all four; as separate statements they were four round trips,
/// most of a read's cost on PostgreSQL (docs/performance.md, round 15).
/// No rows when the account has no counted buckets.
async fn account_sums(
    conn: &impl ConnectionTrait,
    t: &str,
    account_id: &str,
) -> Result<Vec<AccountSums>, DbErr> {
    use super::entities::scoring_model;
    // PostgreSQL sums BIGINTs as NUMERIC; the cast keeps them integers.
    let sum = |c: score_bucket::Column| Expr::col(c).sum().cast_as("BIGINT");
    let engaged = Query::select()
        .expr(Expr::col(score_bucket::Column::ContactId).count_distinct())
        .from(score_bucket::Entity)
        .and_where(score_bucket::Column::TenantId.eq(t))
        .and_where(score_bucket::Column::AccountId.eq(account_id))
        .and_where(counted_contacts(t, score_bucket::Column::ContactId))
        .and_where(score_bucket::Column::Intent.eq(false))
        .and_where(score_bucket::Column::Points.gt(0))
        .to_owned();
    let model_version = Query::select()
        .expr(Expr::col(scoring_model::Column::Version).max())
        .from(scoring_model::Entity)
        .and_where(scoring_model::Column::TenantId.eq(t))
        .to_owned();
    score_bucket::Entity::find()
        .select_only()
        .columns([
            score_bucket::Column::ActivityType,
            score_bucket::Column::Intent,
            score_bucket::Column::Day,
        ])
        .column_as(sum(score_bucket::Column::Points), "points")
        .column_as(sum(score_bucket::Column::ActivityCount), "activity_count")
        .column_as(Expr::from(engaged), "engaged")
        .column_as(Expr::from(model_version), "model_version")
        .column_as(Expr::from(newest_fold(t)), "newest_fold")
        .filter(score_bucket::Column::TenantId.eq(t))
        .filter(score_bucket::Column::AccountId.eq(account_id))
        .filter(counted_contacts(t, score_bucket::Column::ContactId))
        .group_by(score_bucket::Column::ActivityType)
        .group_by(score_bucket::Column::Intent)
        .group_by(score_bucket::Column::Day)
        .into_model::<AccountSums>()
        .all(conn)
        .await
}

/// An account's stored score and the tenant's newest pending fold, in one
/// statement (one snapshot, one round trip).
async fn stored_read(
    conn: &impl ConnectionTrait,
    t: &str,
    account_id: &str,
) -> Result<Option<ScoreRow>, DbErr> {
    account_score::Entity::find()
        .select_only()
        .columns(SCORE_COLUMNS)
        .columns([
            account_score::Column::DeliverySeq,
            account_score::Column::BreakdownSeq,
        ])
        .column_as(Expr::from(newest_fold(t)), "newest_fold")
        .filter(account_score::Column::TenantId.eq(t))
        .filter(account_score::Column::AccountId.eq(account_id))
        .into_model::<ScoreRow>()
        .one(conn)
        .await
}

/// The tenant's newest group not folded yet, as a scalar subquery.
fn newest_fold(t: &str) -> SelectStatement {
    use super::entities::pending_fold;
    Query::select()
        .expr(Expr::col(pending_fold::Column::Id).max())
        .from(pending_fold::Entity)
        .and_where(pending_fold::Column::TenantId.eq(t))
        .to_owned()
}

/// What writing an account's score gives its delivery message.
#[derive(Debug, Clone, Copy)]
pub(super) struct Written {
    pub(super) sequence: i64,
    /// The running total of what new activity added, and its day.
    pub(super) added: (f64, i64),
}

/// Writes the accounts' scores, with the running totals of what their new
/// activity added carried on from `stored` (the rows as locked); returns
/// each account's new delivery sequence and total.
pub(super) async fn upsert_account_scores(
    conn: &impl ConnectionTrait,
    t: &str,
    (model, today): (&ScoringModel, i64),
    stored: &HashMap<String, StoredScore>,
    scores: &BTreeMap<String, NewScore>,
) -> Result<HashMap<String, Written>, DbErr> {
    let rows = scores
        .iter()
        .map(|(account_id, new)| {
            let added = stored.get(account_id).map_or((0.0, today), |s| s.added);
            // A total of a later day (a replica whose clock is ahead) keeps
            // its day: written as of today, the day would be decayed twice.
            let added_day = Ord::max(today, added.1);
            account_score::ActiveModel {
                tenant_id: Set(t.to_owned()),
                account_id: Set(account_id.clone()),
                engagement_score: Set(new.totals.engagement),
                intent_score: Set(new.totals.intent),
                engaged_contacts: Set(new.totals.engaged_contacts),
                computed_day: Set(today),
                delivery_seq: Set(1),
                breakdown: Set(Some(encode_breakdown(&new.totals.breakdown))),
                activity_count: Set(new.totals.activities),
                breakdown_seq: Set(1),
                added_total: Set(domain::added_total(
                    added,
                    model,
                    added_day,
                    new.new_engagement,
                )),
                added_day: Set(added_day),
            }
        })
        .collect();
    let upsert = account_key()
        .update_columns(SCORE_COLUMNS)
        .value(
            account_score::Column::DeliverySeq,
            Expr::col((account_score::Entity, account_score::Column::DeliverySeq)).add(1),
        )
        // The same new value: this breakdown belongs to this write.
        .value(
            account_score::Column::BreakdownSeq,
            Expr::col((account_score::Entity, account_score::Column::DeliverySeq)).add(1),
        )
        .to_owned();
    Ok(insert_chunks_returning(conn, rows, Some(&upsert))
        .await?
        .into_iter()
        .map(|row| {
            let written = Written {
                sequence: row.delivery_seq,
                added: (row.added_total, row.added_day),
            };
            (row.account_id, written)
        })
        .collect())
}

/// Writes the scores of the batch's contacts.
pub(super) async fn upsert_contact_scores(
    conn: &impl ConnectionTrait,
    t: &str,
    today: i64,
    batch: &domain::BatchScores,
    scores: &BTreeMap<String, NewScore>,
) -> Result<(), DbErr> {
    // A contact seen under two accounts in one batch is written once (one
    // statement cannot update a row twice): the last account wins.
    let mut latest: BTreeMap<&String, (&String, f64, bool)> = BTreeMap::new();
    for (account, add) in &batch.accounts {
        let new = scores.get(account);
        for contact in add.new_types.keys() {
            let score = new
                .and_then(|n| n.totals.per_contact.get(contact))
                .copied()
                .unwrap_or(0.0);
            let engaged = new.is_some_and(|n| n.engaged.contains(contact));
            latest.insert(contact, (account, score, engaged));
        }
    }
    if conn.get_database_backend() == DbBackend::Postgres {
        let mut columns = (vec![], vec![], vec![], vec![]);
        for (contact, (account, score, engaged)) in latest {
            columns.0.push(contact.clone());
            columns.1.push(account.clone());
            columns.2.push(score);
            columns.3.push(engaged);
        }
        let values: Vec<Value> = vec![
            t.into(),
            today.into(),
            columns.0.into(),
            columns.1.into(),
            columns.2.into(),
            columns.3.into(),
        ];
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            include_str!("sql/upsert_contact_scores.pg.sql"),
            values,
        ))
        .await?;
        return Ok(());
    }
    let rows = latest
        .into_iter()
        .map(
            |(contact, (account, score, engaged))| contact_score::ActiveModel {
                tenant_id: Set(t.to_owned()),
                contact_id: Set(contact.clone()),
                account_id: Set(account.clone()),
                engagement_score: Set(score),
                computed_day: Set(today),
                engaged: Set(engaged),
            },
        )
        .collect();
    let upsert = OnConflict::columns([
        contact_score::Column::TenantId,
        contact_score::Column::ContactId,
    ])
    .update_columns([
        contact_score::Column::AccountId,
        contact_score::Column::EngagementScore,
        contact_score::Column::ComputedDay,
        contact_score::Column::Engaged,
    ])
    .to_owned();
    insert_chunks(conn, rows, Some(&upsert)).await?;
    Ok(())
}

/// The buckets of the accounts `accounts` selects, by account, without
/// those of inactive contacts; only one contact's when `contact_id` is given
/// (a contact's own score counts all its buckets, inactive or not).
async fn buckets_of(
    conn: &impl ConnectionTrait,
    t: &str,
    accounts: impl IntoCondition,
    contact_id: Option<&str>,
) -> Result<BTreeMap<String, Vec<Bucket>>, DbErr> {
    let mut query = score_bucket::Entity::find()
        .filter(score_bucket::Column::TenantId.eq(t))
        .filter(accounts);
    query = match contact_id {
        Some(contact) => query.filter(score_bucket::Column::ContactId.eq(contact)),
        None => query.filter(counted_contacts(t, score_bucket::Column::ContactId)),
    };
    let mut buckets: BTreeMap<String, Vec<Bucket>> = BTreeMap::new();
    for row in query.all(conn).await? {
        buckets.entry(row.account_id).or_default().push(Bucket {
            contact_id: row.contact_id,
            activity_type: row.activity_type,
            intent: row.intent,
            day: row.day,
            points: row.points,
            activities: row.activity_count,
        });
    }
    Ok(buckets)
}

/// An account's totals at `today` from its buckets.
async fn compute(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    account_id: &str,
    model: &ScoringModel,
    today: i64,
) -> ServiceResult<Totals> {
    let accounts = score_bucket::Column::AccountId.eq(account_id);
    let buckets = buckets_of(conn, tenant_id, accounts, None).await?;
    Ok(domain::totals_of(
        buckets.into_values().flatten(),
        model,
        today,
    ))
}

/// Recomputes `accounts` from their buckets (one without any scores zero),
/// stores the scores for `today`, and enqueues a delivery to lifecycle for
/// each whose totals differ from `stored` (its locked stored score): the
/// path decay refreshes and contact changes share with ingest's recompute.
/// With `with_contacts` the contacts' scores are stored too and the
/// delivery names each engaged contact (without new activity types), so
/// lifecycle's contact scores follow as well. How many were delivered.
pub(super) async fn store_recomputed(
    txn: &WriteTransaction,
    t: &str,
    (model, today): (&ScoringModel, i64),
    stored: &HashMap<String, StoredScore>,
    accounts: &[&str],
    with_contacts: bool,
) -> Result<usize, DbErr> {
    let mut scores = recomputed(txn, t, (model, today), accounts).await?;
    for account_id in accounts {
        scores
            .entry((*account_id).to_owned())
            .or_insert_with(NewScore::default);
    }
    if scores.is_empty() {
        return Ok(0);
    }
    let written = upsert_account_scores(txn, t, (model, today), stored, &scores).await?;
    // What each delivery names: every contact with engagement buckets (a
    // penalty's decays too, though it engages no one), no new activity types.
    let named = |new: &NewScore| -> BTreeMap<String, BTreeSet<String>> {
        if with_contacts {
            new.totals
                .per_contact
                .keys()
                .filter(|c| !c.is_empty())
                .map(|c| (c.clone(), BTreeSet::new()))
                .collect()
        } else {
            BTreeMap::new()
        }
    };
    if with_contacts {
        let batch = domain::BatchScores {
            accounts: scores
                .iter()
                .map(|(account_id, new)| {
                    let addition = domain::AccountAddition {
                        new_types: named(new),
                        ..domain::AccountAddition::default()
                    };
                    (account_id.clone(), addition)
                })
                .collect(),
        };
        upsert_contact_scores(txn, t, today, &batch, &scores).await?;
    }
    let mut messages = Vec::new();
    for (account_id, new) in &scores {
        let changed = stored
            .get(account_id)
            .is_none_or(|before| domain::totals_changed(before, &new.totals));
        let Some(&Written { sequence, added }) = written.get(account_id) else {
            continue;
        };
        if changed {
            let payload = super::DeliveryPayload {
                sequence,
                contacts: named(new),
                new_engagement: Some((0.0, today)),
                added_total: Some(added),
            };
            messages.push(cascade_chassis::outbox::Message {
                partition_key: account_id.clone(),
                payload: payload.encode(),
            });
        }
    }
    let delivered = messages.len();
    cascade_chassis::outbox::enqueue_many(txn, t, super::SCORE_TOPIC, messages).await?;
    Ok(delivered)
}

#[cfg(test)]
mod tests {
    use super::top_key;

    #[test]
    fn top_keys_are_finite_scores_and_an_account() {
        assert_eq!(top_key("12.5|acct"), Some((12.5, "acct".to_owned())));
        assert_eq!(top_key("-0|a|b"), Some((0.0, "a|b".to_owned())));
        for bad in ["NaN|acct", "inf|acct", "-inf|acct", "12.5", "x|acct"] {
            assert_eq!(top_key(bad), None, "{bad}");
        }
    }
}
