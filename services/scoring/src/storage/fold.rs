//! Folding stored groups into the scores, behind the ledger.
//!
//! A group transaction (`ingest`) writes what its callers' answers need:
//! the activities, the caps' usage, and one `pending_folds` row with the
//! group's activities summed per bucket. A fold then takes pending groups of
//! any replica and, in one transaction, adds them to the buckets, rescores
//! the accounts and contacts they touch, enqueues one delivery per account
//! and deletes the rows. It runs beside the next group's transaction, and
//! under load takes every group committed while the previous fold ran
//! (docs/performance.md, round 13). A replica that stops between a group
//! and its fold leaves the row to the next fold of any replica: nothing
//! acknowledged is lost. SQLite folds the same way: its one writer takes a
//! fold between groups, and a fold of many groups writes each hot bucket,
//! contact score and account delivery once for all of them. A group that
//! folded its own sums spent more of the writer's time on them than on its
//! activities (docs/performance.md, round 27).
//!
//! A score read first folds what its tenant has pending, waiting for any
//! fold that holds those rows (`settled`): a score read after an
//! acknowledged RecordActivities sees its activities, on any replica. When
//! nothing is pending (the common case of reads) that costs one lookup, or
//! nothing extra in GetAccountScore, whose one statement asks it as well.
//!
//! The fold's transaction joins the trace of its oldest group's request, so
//! the deliveries it enqueues do too (as the outbox's deliverer joins the
//! trace of its oldest message).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cascade_chassis::db::{WriteTransaction, begin_write};
use cascade_chassis::{ServiceError, ServiceResult, outbox, time};
use cascade_proto::outbox::v1 as outbox_pb;
use prost::Message as _;
use sea_orm::sea_query::{LockBehavior, LockType};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement, Value,
};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::entities::pending_fold;
use super::models::current_model;
use super::{DeliveryPayload, Repository, SCORE_TOPIC, scores, today};
use crate::domain;

/// (account, contact or "", activity type, intent, day) of a bucket.
pub(super) type BucketKey<'a> = (&'a str, &'a str, &'a str, bool, i64);

/// Points and activities added per bucket, in key order (the order rows are
/// written and so locked in).
pub(super) type BucketSums<'a> = BTreeMap<BucketKey<'a>, (i64, i64)>;

/// (bucket, points, activities) summed per bucket.
pub(super) fn sum_buckets<'a>(
    items: impl IntoIterator<Item = (BucketKey<'a>, i64, i64)>,
) -> BucketSums<'a> {
    let mut sums = BucketSums::new();
    for (key, points, count) in items {
        let sum = sums.entry(key).or_default();
        sum.0 += points;
        sum.1 += count;
    }
    sums
}

/// At most this many groups in one fold transaction (each at most 5,000
/// activities); under load the folder takes the next ones right away. A
/// fold of many groups writes a hot contact's buckets and score, and each
/// account's score and delivery, once for all of them: 64 against 16
/// stored 15-25 % more events per second on PostgreSQL with a quarter less
/// of its CPU per event (docs/performance.md, round 26).
const MAX_FOLD_GROUPS: usize = 64;

/// Pending groups are read this many at a time and merged as they come, so
/// a fold holds its distinct buckets and a few groups' rows, never all 64
/// (each ~100 kB): reading them all at once kept scoring's peak RSS over
/// 64 MiB (round 26).
const READ_GROUPS: usize = 4;

/// A fold stops taking groups once it holds this many distinct buckets
/// (about half a kilobyte each while it runs): its memory grows with them,
/// not with the groups. The bench's 2,000 contacts fill ~20,000 in a day;
/// a budget of 20,000 measured 4-6 % fewer events per second than this one
/// at the same peak RSS (docs/performance.md, round 26).
const MAX_FOLD_BUCKETS: usize = 40_000;

/// A gate per tenant that its readers' folds pass one at a time
/// (`Repository::fold_through`). One entry per tenant that read while
/// groups were pending.
#[derive(Debug, Default)]
pub(super) struct ReadFolds(std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl ReadFolds {
    fn gate(&self, t: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        gates.entry(t.to_owned()).or_default().clone()
    }
}

/// Which pending groups a fold takes.
#[derive(Clone, Copy)]
enum Take<'a> {
    /// The oldest of any tenant, skipping those another fold holds (the folder).
    Any,
    /// The tenant's up to this id, waiting for a fold that holds some (a read).
    Tenant(&'a str, i64),
}

/// Writes a group's sums as a pending fold, in the group's transaction.
pub(super) async fn enqueue(
    conn: &impl ConnectionTrait,
    t: &str,
    sums: &BucketSums<'_>,
) -> Result<(), DbErr> {
    let message = outbox_pb::PendingFold {
        buckets: sums
            .iter()
            .map(
                |(&(account, contact, kind, intent, day), &(points, count))| {
                    outbox_pb::BucketDelta {
                        account_id: account.to_owned(),
                        contact_id: contact.to_owned(),
                        activity_type: kind.to_owned(),
                        intent,
                        day,
                        points,
                        activity_count: count,
                    }
                },
            )
            .collect(),
    };
    pending_fold::Entity::insert(pending_fold::ActiveModel {
        id: NotSet,
        tenant_id: Set(t.to_owned()),
        recorded_at_ms: Set(time::now().timestamp_millis()),
        buckets: Set(message.encode_to_vec()),
        trace_context: Set(outbox::current_trace_context()),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

/// Whether this process has not reported the unreadable pending fold `id`
/// yet: every fold meets it again, and one error line says it.
fn first_report(id: i64) -> bool {
    static REPORTED: std::sync::LazyLock<std::sync::Mutex<BTreeSet<i64>>> =
        std::sync::LazyLock::new(Default::default);
    REPORTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id)
}

fn decode(row: &pending_fold::Model) -> Result<outbox_pb::PendingFold, DbErr> {
    outbox_pb::PendingFold::decode(row.buckets.as_slice())
        .map_err(|e| DbErr::Custom(format!("pending fold {} cannot be read: {e}", row.id)))
}

/// Removes the buckets `erased` names from the tenant's pending folds, so
/// that a fold after an erasure does not write the erased rows back. Locks
/// the rows until commit (waiting for a fold that holds them), first of
/// everything an erasure takes, as a fold takes them first too.
pub(super) async fn scrub(
    conn: &impl ConnectionTrait,
    t: &str,
    erased: impl Fn(&outbox_pb::BucketDelta) -> bool,
) -> Result<(), DbErr> {
    let mut pending = pending_fold::Entity::find()
        .filter(pending_fold::Column::TenantId.eq(t))
        .order_by_asc(pending_fold::Column::Id);
    // SQLite's write transaction already excludes every other writer.
    if conn.get_database_backend() == DbBackend::Postgres {
        pending = pending.lock(LockType::Update);
    }
    for row in pending.all(conn).await? {
        let mut fold = decode(&row)?;
        let before = fold.buckets.len();
        fold.buckets.retain(|bucket| !erased(bucket));
        if fold.buckets.len() == before {
            continue;
        }
        if fold.buckets.is_empty() {
            pending_fold::Entity::delete_by_id(row.id)
                .exec(conn)
                .await?;
        } else {
            pending_fold::Entity::update_many()
                .col_expr(
                    pending_fold::Column::Buckets,
                    sea_orm::sea_query::Expr::value(fold.encode_to_vec()),
                )
                .filter(pending_fold::Column::Id.eq(row.id))
                .exec(conn)
                .await?;
        }
    }
    Ok(())
}

impl Repository {
    /// A group with new activities committed its pending fold.
    pub(super) fn group_committed(&self) {
        self.fold_wanted.notify_one();
    }

    /// Resolves when a group was committed since the folder last looked.
    pub async fn fold_wanted(&self) {
        self.fold_wanted.notified().await;
    }

    /// Folds what the tenant has pending before a score is read.
    pub(super) async fn settled(&self, t: &str) -> ServiceResult<()> {
        match self.newest_fold(t).await? {
            Some(newest) => self.fold_through(t, newest).await,
            None => Ok(()),
        }
    }

    /// The tenant's newest group not folded yet.
    pub(super) async fn newest_fold(&self, t: &str) -> ServiceResult<Option<i64>> {
        Ok(pending_fold::Entity::find()
            .select_only()
            .column_as(pending_fold::Column::Id.max(), "newest")
            .filter(pending_fold::Column::TenantId.eq(t))
            .into_tuple()
            .one(&self.db)
            .await?
            .flatten())
    }

    /// How many groups of every tenant wait for a fold: none once the
    /// scores of everything acknowledged are written and their deliveries
    /// enqueued (a test's barrier before it waits for the outbox). A damaged
    /// group a fold passes over (`Folded::unreadable`) stays counted.
    pub async fn pending_folds(&self) -> ServiceResult<u64> {
        Ok(pending_fold::Entity::find().count(&self.db).await?)
    }

    /// Folds the tenant's groups up to `newest` before a score is read.
    /// Readers of one tenant fold one at a time: the others wait here, not
    /// in a transaction of their own holding a pooled connection while it
    /// waits for the first one's row locks, and then find little or nothing
    /// left to fold.
    pub(super) async fn fold_through(&self, t: &str, newest: i64) -> ServiceResult<()> {
        let gate = self.read_folds.gate(t);
        let _turn = gate.lock().await;
        while self.fold_once(Take::Tenant(t, newest)).await?.1 {}
        Ok(())
    }

    /// Folds every pending group, oldest first, in transactions of up to
    /// `MAX_FOLD_GROUPS`; groups another fold holds are left to it.
    pub async fn fold_pending(&self) -> ServiceResult<Folded> {
        let mut folded = Folded::default();
        loop {
            let (once, more) = self.fold_once(Take::Any).await?;
            folded.groups += once.groups;
            folded.held += once.held;
            // Each pass starts from the oldest rows, so each meets the same
            // unreadable ones.
            folded.unreadable = folded.unreadable.max(once.unreadable);
            if !more {
                return Ok(folded);
            }
        }
    }

    /// One fold transaction: what it folded, and whether it stopped at its
    /// limits with more perhaps pending.
    async fn fold_once(&self, take: Take<'_>) -> ServiceResult<(Folded, bool)> {
        let txn = begin_write(&self.db).await?;
        // From here the fold holds the writer (SQLite's one; on PostgreSQL
        // its rows), which the wait for it above did not.
        let holding = std::time::Instant::now();
        let postgres = txn.get_database_backend() == DbBackend::Postgres;
        // Each group is decoded and merged into its tenant's sums, then
        // dropped: a fold of many groups holds the distinct buckets once,
        // not every group's deltas.
        let mut ids: Vec<i64> = Vec::new();
        let mut by_tenant: BTreeMap<String, OwnedSums> = BTreeMap::new();
        let mut buckets = 0;
        let mut trace_context = None;
        // The last row read, folded or not (an unreadable one is passed over).
        let mut after = None;
        let mut unreadable = 0;
        let mut more = true;
        while more && ids.len() < MAX_FOLD_GROUPS && buckets < MAX_FOLD_BUCKETS {
            let read = READ_GROUPS.min(MAX_FOLD_GROUPS - ids.len());
            let mut claim = pending_fold::Entity::find()
                .order_by_asc(pending_fold::Column::Id)
                .limit(read as u64);
            if let Some(last) = after {
                claim = claim.filter(pending_fold::Column::Id.gt(last));
            }
            match take {
                Take::Any if postgres => {
                    claim = claim.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
                }
                Take::Tenant(t, newest) => {
                    claim = claim
                        .filter(pending_fold::Column::TenantId.eq(t))
                        .filter(pending_fold::Column::Id.lte(newest));
                    if postgres {
                        claim = claim.lock(LockType::Update);
                    }
                }
                Take::Any => {}
            }
            let rows = claim.all(&txn).await?;
            more = rows.len() == read;
            for row in rows {
                after = Some(row.id);
                let fold = match (decode(&row), take) {
                    (Ok(fold), _) => fold,
                    // The folder passes over it and folds every other group,
                    // its tenant's later ones too (sums add up in any order,
                    // as when replicas fold side by side). It stays pending,
                    // so a score read of its tenant fails naming it.
                    (Err(error), Take::Any) => {
                        unreadable += 1;
                        if first_report(row.id) {
                            tracing::error!(
                                tenant = %row.tenant_id,
                                pending_fold = row.id,
                                %error,
                                "a pending fold cannot be read: its tenant's score reads fail until it is repaired or deleted"
                            );
                        }
                        continue;
                    }
                    (Err(error), Take::Tenant(..)) => return Err(error.into()),
                };
                ids.push(row.id);
                trace_context = trace_context.or(row.trace_context);
                let sums = by_tenant.entry(row.tenant_id).or_default();
                buckets -= sums.0.len();
                sums.merge(fold);
                buckets += sums.0.len();
            }
        }
        if ids.is_empty() {
            txn.commit().await?;
            let folded = Folded {
                unreadable,
                ..Folded::default()
            };
            return Ok((folded, false));
        }
        let span = tracing::info_span!("fold", groups = ids.len());
        if let Some(context) = trace_context.as_deref() {
            let _ = span.set_parent(outbox::extract_trace_context(context));
        }
        let delivered = async {
            let mut delivered = false;
            for (t, sums) in &by_tenant {
                delivered |= fold_sums(&txn, t, &sums.borrowed()).await?;
            }
            pending_fold::Entity::delete_many()
                .filter(pending_fold::Column::Id.is_in(ids.iter().copied()))
                .exec(&txn)
                .await?;
            txn.commit().await?;
            ServiceResult::Ok(delivered)
        }
        .instrument(span)
        .await?;
        if delivered {
            self.deliveries_written.notify_one();
        }
        let folded = Folded {
            groups: ids.len(),
            held: holding.elapsed(),
            unreadable,
        };
        Ok((folded, more))
    }
}

/// What folding did: the groups folded, how long its transactions held
/// the writer, which is what the folder's rest is measured against
/// (`crate::fold`), and the unreadable pending folds it passed over (kept
/// for an operator; the folder reports them as a gauge).
#[derive(Debug, Default, Clone, Copy)]
pub struct Folded {
    pub groups: usize,
    pub held: std::time::Duration,
    pub unreadable: usize,
}

/// `BucketKey` with owned strings.
type OwnedBucketKey = (String, String, String, bool, i64);

/// A tenant's pending groups summed per bucket, with owned keys.
#[derive(Default)]
struct OwnedSums(BTreeMap<OwnedBucketKey, (i64, i64)>);

impl OwnedSums {
    fn merge(&mut self, fold: outbox_pb::PendingFold) {
        for bucket in fold.buckets {
            let key = (
                bucket.account_id,
                bucket.contact_id,
                bucket.activity_type,
                bucket.intent,
                bucket.day,
            );
            let sum = self.0.entry(key).or_default();
            sum.0 += bucket.points;
            sum.1 += bucket.activity_count;
        }
    }

    fn borrowed(&self) -> BucketSums<'_> {
        self.0
            .iter()
            .map(|((account, contact, kind, intent, day), &sums)| {
                (
                    (
                        account.as_str(),
                        contact.as_str(),
                        kind.as_str(),
                        *intent,
                        *day,
                    ),
                    sums,
                )
            })
            .collect()
    }
}

/// Adds bucket sums to a tenant's buckets and scores and enqueues a
/// delivery per account; whether it enqueued any.
pub(super) async fn fold_sums(
    conn: &WriteTransaction,
    t: &str,
    sums: &BucketSums<'_>,
) -> ServiceResult<bool> {
    if sums.is_empty() {
        return Ok(false);
    }
    upsert_buckets(conn, t, sums).await?;
    // Buckets, then accounts, then contacts, each in key order: the order
    // every writer of scores takes them in, so they queue, not deadlock.
    let account_ids: BTreeSet<String> = sums.keys().map(|key| key.0.to_owned()).collect();
    let accounts = scores::lock_account_scores(conn, t, account_ids.iter()).await?;
    // The model after the locks: a model change marks these scores stale
    // and commits before the locks are granted, so a recompute here uses
    // the model it was marked for, never the one before it.
    let model = current_model(conn, t).await?;
    let today = today();
    let batch = domain::BatchScores::of(
        sums.iter().map(
            |(&(account_id, contact, activity_type, intent, day), &(points, activities))| {
                domain::BatchActivity {
                    account_id,
                    contact_id: (!contact.is_empty()).then_some(contact),
                    activity_type,
                    day,
                    points,
                    intent,
                    activities,
                }
            },
        ),
        &model,
        today,
    );
    let new_scores = scores::rescore(conn, t, (&model, today), &batch, &accounts).await?;
    let written =
        scores::upsert_account_scores(conn, t, (&model, today), &accounts, &new_scores).await?;
    scores::upsert_contact_scores(conn, t, today, &batch, &new_scores).await?;

    let mut messages = Vec::with_capacity(batch.accounts.len());
    for (account_id, account) in batch.accounts {
        let new_engagement = new_scores
            .get(&account_id)
            .map_or(0.0, |score| score.new_engagement);
        let written = written.get(account_id.as_str()).copied().ok_or_else(|| {
            ServiceError::internal(anyhow::anyhow!(
                "no delivery sequence for account {account_id}"
            ))
        })?;
        let payload = DeliveryPayload {
            sequence: written.sequence,
            contacts: account.new_types,
            new_engagement: Some((new_engagement, today)),
            added_total: Some(written.added),
        };
        messages.push(outbox::Message {
            partition_key: account_id,
            payload: payload.encode(),
        });
    }
    let any = !messages.is_empty();
    outbox::enqueue_many(conn, t, SCORE_TOPIC, messages).await?;
    Ok(any)
}

/// At most this many buckets in one statement: a statement's values are
/// built, copied once more by the driver and encoded before it is sent, so
/// a fold of 20,000 buckets in one statement held all of that at once
/// (scoring's peak RSS 78 MiB against 55-57 in chunks, docs/performance.md,
/// round 26). Keys stay in order across chunks, and so do the row locks.
const BUCKETS_PER_STATEMENT: usize = 2_048;

/// Adds the sums to the per-day buckets.
async fn upsert_buckets(
    conn: &impl ConnectionTrait,
    t: &str,
    sums: &BucketSums<'_>,
) -> Result<(), DbErr> {
    let sums: Vec<_> = sums.iter().collect();
    for chunk in sums.chunks(BUCKETS_PER_STATEMENT) {
        conn.execute_raw(add_to_buckets(conn.get_database_backend(), t, chunk)?)
            .await?;
    }
    Ok(())
}

/// The statement adding `sums` to their buckets.
fn add_to_buckets(
    backend: DbBackend,
    t: &str,
    sums: &[(&BucketKey<'_>, &(i64, i64))],
) -> Result<Statement, DbErr> {
    if backend == DbBackend::Postgres {
        let mut columns = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for &(&(account, contact, kind, intent, day), &(points, count)) in sums {
            columns.0.push(account.to_owned());
            columns.1.push(contact.to_owned());
            columns.2.push(kind.to_owned());
            columns.3.push(intent);
            columns.4.push(day);
            columns.5.push(points);
            columns.6.push(count);
        }
        let values: Vec<Value> = vec![
            t.into(),
            columns.0.into(),
            columns.1.into(),
            columns.2.into(),
            columns.3.into(),
            columns.4.into(),
            columns.5.into(),
            columns.6.into(),
        ];
        return Ok(Statement::from_sql_and_values(
            DbBackend::Postgres,
            include_str!("sql/add_to_buckets.pg.sql"),
            values,
        ));
    }
    let rows: Vec<_> = sums
        .iter()
        .map(
            |&(&(account, contact, kind, intent, day), &(points, count))| {
                (account, contact, kind, intent, day, points, count)
            },
        )
        .collect();
    let rows = serde_json::to_string(&rows).map_err(|e| DbErr::Custom(e.to_string()))?;
    Ok(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        include_str!("sql/add_to_buckets.sqlite.sql"),
        [t.into(), rows.into()],
    ))
}
