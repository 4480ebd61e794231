//! Storing and scoring a batch of activities in one transaction: a fixed
//! number of statements per chunk of rows, never one per activity, account
//! or contact. The transaction writes what the callers' answers need (the
//! activities with their points, and the caps' usage) and the group's
//! bucket sums as a pending fold, whose buckets, scores and deliveries a
//! fold writes after it (`fold`). On SQLite the transaction holds the only
//! write lock, so its length, with the folds' between groups, is the
//! service's ingest ceiling (docs/performance.md).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use cascade_chassis::db::{begin_write, insert_chunks, statement_chunks};
use cascade_chassis::error::is_unique_violation;
use cascade_chassis::{ServiceError, ServiceResult, TenantId, time};
use sea_orm::sea_query::{
    Alias, Condition, Expr, ExprTrait, LockType, OnConflict, Query, ValueTuple,
};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, FromQueryResult,
    Iterable, QueryFilter, QuerySelect, Statement, TransactionTrait, Value,
};

use super::entities::{activity, rule_usage};
use super::fold::{self, BucketSums};
use super::models::{self, current_model};
use super::{NewActivity, Recorded, Repository};
use crate::domain::{self, Usage, UsageKey};

/// A fresh activity of a batch with its score.
pub(super) struct ScoredActivity<'a> {
    /// Position in the request.
    index: usize,
    pub(super) item: &'a NewActivity,
    pub(super) scored: domain::Scored,
    pub(super) day: i64,
}

/// What storing one activity did, before the item's own ids are attached
/// (`with_ids`, which moves them rather than copying).
#[derive(Debug, Clone)]
pub(super) enum Outcome {
    /// Stored and scored with these counted points.
    New { counted_points: i32 },
    /// Stored before (or earlier in the batch), as this.
    Duplicate(Recorded),
}

/// Each item's outcome with its ids: a new activity's are the item's own.
pub(super) fn with_ids(outcomes: Vec<Outcome>, items: Vec<NewActivity>) -> Vec<Recorded> {
    outcomes
        .into_iter()
        .zip(items)
        .map(|(outcome, item)| match outcome {
            Outcome::New { counted_points } => Recorded {
                new: true,
                account_id: item.account_id,
                contact_id: item.contact_id,
                counted_points,
                recorded_as_other: None,
            },
            Outcome::Duplicate(recorded) => recorded,
        })
        .collect()
}

/// Who caps count against: the contact, or the account for activities
/// without one.
fn subject<'a>(account_id: &str, contact_id: Option<&'a str>) -> Cow<'a, str> {
    contact_id.map_or_else(
        || Cow::Owned(format!("account:{account_id}")),
        Cow::Borrowed,
    )
}

impl Repository {
    /// Stores and scores a batch in one transaction (see `group`).
    pub(super) async fn record_now(
        &self,
        tenant: &TenantId,
        items: &[NewActivity],
    ) -> ServiceResult<Vec<Outcome>> {
        // The first attempt does not look for stored ids: the insert itself
        // (ON CONFLICT DO NOTHING) says whether any was stored before, and
        // then the attempt is rolled back and the next ones check first.
        // Repeats are rare (a client's retry), and the check was a quarter
        // of PostgreSQL's time per batch (docs/performance.md). A concurrent
        // replica may also insert some of the same ids between a check and
        // the insert; then the next attempt sees them as stored.
        for attempt in 0..4 {
            match self.try_record(tenant, items, attempt > 0).await? {
                Some((result, pending)) => {
                    if pending {
                        self.group_committed();
                    }
                    return Ok(result);
                }
                None => continue,
            }
        }
        Err(ServiceError::Aborted(
            "these activities are being recorded by another call; retry".into(),
        ))
    }

    /// One attempt: each item's outcome, and whether it wrote a pending fold
    /// (the folder is then woken); `None` when some ids turned out stored
    /// before and the attempt was rolled back.
    async fn try_record(
        &self,
        tenant: &TenantId,
        items: &[NewActivity],
        check_stored: bool,
    ) -> ServiceResult<Option<(Vec<Outcome>, bool)>> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        begin_batch(&txn, t).await?;
        let model = current_model(&txn, t).await?;
        let stored = if check_stored {
            let ids: Vec<&str> = items.iter().map(|i| i.event_id.as_str()).collect();
            stored_before(&txn, t, &ids).await?
        } else {
            HashMap::new()
        };

        // The new ones, first occurrence of each id only.
        let mut fresh: Vec<(usize, &NewActivity)> = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            if !stored.contains_key(&item.event_id) && seen.insert(item.event_id.as_str()) {
                fresh.push((i, item));
            }
        }
        if fresh.is_empty() {
            txn.commit().await?;
            return Ok(Some((results(items, &stored, &[]), false)));
        }

        // Load (and on PostgreSQL lock) the rule usage the new ones need.
        let mut keys: BTreeSet<UsageKey> = BTreeSet::new();
        for (_, item) in &fresh {
            let subject = subject(&item.account_id, item.contact_id.as_deref());
            keys.extend(domain::usage_keys(
                &model,
                &subject,
                &item.activity_type,
                domain::day_of(item.occurred_at_ms),
            ));
        }
        let mut usage = lock_usage(&txn, t, &keys).await?;
        let before = usage.clone();

        // Score in request order.
        let mut scored = Vec::with_capacity(fresh.len());
        for (i, item) in &fresh {
            let subject = subject(&item.account_id, item.contact_id.as_deref());
            let day = domain::day_of(item.occurred_at_ms);
            let s = domain::score_activity(
                &model,
                &subject,
                &item.activity_type,
                item.contact_id.is_some(),
                day,
                &mut usage,
            );
            scored.push(ScoredActivity {
                index: *i,
                item,
                scored: s,
                day,
            });
        }

        if !insert_activities(&txn, t, model.version, &scored).await? {
            // Some of these ids were stored before (by an earlier call, or a
            // concurrent one meanwhile): try again, checking first.
            txn.rollback().await?;
            return Ok(None);
        }
        write_usage(&txn, t, &usage, &before).await?;
        // The buckets, scores and deliveries follow in a fold (`fold`),
        // which takes every group committed meanwhile.
        fold::enqueue(&txn, t, &bucket_sums(&scored)).await?;
        txn.commit().await?;
        Ok(Some((results(items, &stored, &scored), true)))
    }
}

impl Repository {
    /// The account and contact each of `event_ids` was recorded for, of
    /// those recorded before: such an activity is a repeat (or a reuse of
    /// its id), answered without checking its person again, so an email
    /// in it creates no contact.
    pub async fn people_of_events(
        &self,
        tenant: &TenantId,
        event_ids: &[&str],
    ) -> ServiceResult<HashMap<String, (String, Option<String>)>> {
        // A transaction only for the planner setting; it reads one statement.
        let txn = self.db.begin().await?;
        plan_for_the_table_now(&txn).await?;
        let stored = stored_before(&txn, tenant.as_str(), event_ids).await?;
        txn.commit().await?;
        Ok(stored
            .into_iter()
            .map(|(event_id, (recorded, _))| (event_id, (recorded.account_id, recorded.contact_id)))
            .collect())
    }
}

/// On PostgreSQL, plans each statement of the transaction for the tables as
/// they are now. A generic plan cached while the tables were nearly empty (a
/// new database) reads every activity of the tenant to check 256 event ids,
/// and stays cached until an ANALYZE: measured 3.3 s per batch after 25 s of
/// ingest. Custom plans cost ~1 ms of planning each.
async fn plan_for_the_table_now(txn: &impl ConnectionTrait) -> Result<(), DbErr> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared("SET LOCAL plan_cache_mode = force_custom_plan")
            .await?;
    }
    Ok(())
}

/// Readies a batch's transaction: on PostgreSQL, plans for the tables now
/// (`plan_for_the_table_now`) and shares the tenant's model lock
/// (`models::MODEL_LOCK`), in one statement, before the model is read.
async fn begin_batch(txn: &impl ConnectionTrait, t: &str) -> Result<(), DbErr> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "SELECT set_config('plan_cache_mode', 'force_custom_plan', true), \
                 pg_advisory_xact_lock_shared({})",
                models::MODEL_LOCK
            ),
            [models::model_lock_key(t).into()],
        ))
        .await?;
    }
    Ok(())
}

/// Which of `event_ids` were stored before, with what they were stored as.
async fn stored_before(
    conn: &impl ConnectionTrait,
    t: &str,
    event_ids: &[&str],
) -> Result<HashMap<String, Stored>, DbErr> {
    let mut stored = HashMap::new();
    for chunk in statement_chunks(event_ids, 1) {
        let rows: Vec<StoredRow> = activity::Entity::find()
            .select_only()
            .columns([
                activity::Column::EventId,
                activity::Column::AccountId,
                activity::Column::ContactId,
                activity::Column::CountedPoints,
                activity::Column::ActivityType,
                activity::Column::OccurredAtMs,
            ])
            .filter(activity::Column::TenantId.eq(t))
            .filter(activity::Column::EventId.is_in(chunk.iter().copied()))
            .into_tuple()
            .all(conn)
            .await?;
        for (event_id, account_id, contact_id, counted_points, activity_type, occurred_at_ms) in
            rows
        {
            stored.insert(
                event_id,
                (
                    Recorded {
                        new: false,
                        account_id,
                        contact_id,
                        counted_points,
                        recorded_as_other: None,
                    },
                    (activity_type, occurred_at_ms),
                ),
            );
        }
    }
    Ok(stored)
}

/// A stored activity as `stored_before` reads it.
type StoredRow = (String, String, Option<String>, i32, String, i64);

/// An activity stored before: what it was stored as, and its type and time.
type Stored = (Recorded, (String, i64));

/// `recorded`, marked as another activity than `item` when what it was
/// recorded as (`as_recorded`: its type and time) is not `item`
/// (`domain::same_activity`).
fn duplicate_of(item: &NewActivity, mut recorded: Recorded, as_recorded: (&str, i64)) -> Recorded {
    if !domain::same_activity(&item.activity_type, as_recorded.0) {
        recorded.recorded_as_other = Some((as_recorded.0.to_owned(), as_recorded.1));
    }
    recorded
}

/// One result per item, in request order.
fn results(
    items: &[NewActivity],
    stored: &HashMap<String, Stored>,
    scored: &[ScoredActivity<'_>],
) -> Vec<Outcome> {
    let mut result: Vec<Option<Outcome>> = vec![None; items.len()];
    for s in scored {
        result[s.index] = Some(Outcome::New {
            counted_points: s.scored.counted_points,
        });
    }
    if scored.len() == items.len() {
        // All new: the common case, without an index of first occurrences.
        return result.into_iter().flatten().collect();
    }
    let first: HashMap<&str, &ScoredActivity<'_>> = scored
        .iter()
        .map(|s| (s.item.event_id.as_str(), s))
        .collect();
    items
        .iter()
        .zip(result)
        .map(|(item, outcome)| {
            // Otherwise stored before, or an earlier item of this batch had the id.
            outcome.unwrap_or_else(|| {
                if let Some((recorded, (kind, at))) = stored.get(&item.event_id) {
                    return Outcome::Duplicate(duplicate_of(item, recorded.clone(), (kind, *at)));
                }
                // Its first occurrence is earlier in this batch.
                let first = first.get(item.event_id.as_str());
                let recorded = Recorded {
                    new: false,
                    account_id: first
                        .map_or_else(|| item.account_id.clone(), |f| f.item.account_id.clone()),
                    contact_id: first
                        .map_or_else(|| item.contact_id.clone(), |f| f.item.contact_id.clone()),
                    counted_points: first.map_or(0, |f| f.scored.counted_points),
                    recorded_as_other: None,
                };
                let as_first = first.map_or(item, |f| f.item);
                Outcome::Duplicate(duplicate_of(
                    item,
                    recorded,
                    (as_first.activity_type.as_str(), as_first.occurred_at_ms),
                ))
            })
        })
        .collect()
}

/// The usage rows of `keys`, created at zero where missing, and locked until
/// commit on PostgreSQL (SQLite's transaction already holds the write lock).
/// Rows are created and locked in key order, so concurrent batches queue
/// rather than deadlock.
async fn lock_usage(
    conn: &impl ConnectionTrait,
    t: &str,
    keys: &BTreeSet<UsageKey>,
) -> Result<HashMap<UsageKey, Usage>, DbErr> {
    let keys: Vec<&UsageKey> = keys.iter().collect();
    let mut usage = HashMap::with_capacity(keys.len());
    for chunk in statement_chunks(&keys, rule_usage::Column::iter().count()) {
        // Keys are sorted, so rows are created (and locked) in key order.
        let zeros = chunk
            .iter()
            .map(|(subject, kind, period)| rule_usage::ActiveModel {
                tenant_id: Set(t.to_owned()),
                subject: Set(subject.clone()),
                activity_type: Set(kind.clone()),
                period: Set(*period),
                points: Set(0),
                occurrences: Set(0),
            });
        insert_chunks(
            conn,
            zeros.collect(),
            Some(&usage_key().do_nothing().to_owned()),
        )
        .await?;
        // Joined from the keys so each is one index lookup.
        let k = Alias::new("k");
        let on = |column: rule_usage::Column, value: &str| {
            Expr::col((rule_usage::Entity, column)).equals((k.clone(), Alias::new(value)))
        };
        let query = Query::select()
            .columns(rule_usage::Column::iter().map(|c| (rule_usage::Entity, c)))
            .from_values(
                chunk.iter().map(|(subject, kind, period)| {
                    ValueTuple::Three(
                        subject.as_str().into(),
                        kind.as_str().into(),
                        (*period).into(),
                    )
                }),
                k.clone(),
            )
            .inner_join(
                rule_usage::Entity,
                Condition::all()
                    .add(Expr::col((rule_usage::Entity, rule_usage::Column::TenantId)).eq(t))
                    .add(on(rule_usage::Column::Subject, "column1"))
                    .add(on(rule_usage::Column::ActivityType, "column2"))
                    .add(on(rule_usage::Column::Period, "column3")),
            )
            .order_by_columns(
                [
                    rule_usage::Column::Subject,
                    rule_usage::Column::ActivityType,
                    rule_usage::Column::Period,
                ]
                .map(|c| ((rule_usage::Entity, c), sea_orm::Order::Asc)),
            )
            .lock_with_tables(LockType::Update, [rule_usage::Entity])
            .to_owned();
        for row in conn.query_all(&query).await? {
            let row = rule_usage::Model::from_query_result(&row, "")?;
            usage.insert(
                (row.subject, row.activity_type, row.period),
                Usage {
                    points: row.points,
                    occurrences: row.occurrences,
                },
            );
        }
    }
    if usage.len() != keys.len() {
        return Err(DbErr::Custom("rule usage rows missing".into()));
    }
    Ok(usage)
}

/// Adds what the batch used to the (locked) usage rows.
async fn write_usage(
    conn: &impl ConnectionTrait,
    t: &str,
    after: &HashMap<UsageKey, Usage>,
    before: &HashMap<UsageKey, Usage>,
) -> Result<(), DbErr> {
    let mut deltas: Vec<(&UsageKey, Usage)> = after
        .iter()
        .map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or_default();
            let delta = Usage {
                points: a.points - b.points,
                occurrences: a.occurrences - b.occurrences,
            };
            (k, delta)
        })
        .filter(|(_, d)| d.points != 0 || d.occurrences != 0)
        .collect();
    deltas.sort_by(|a, b| a.0.cmp(b.0));
    let rows = deltas
        .into_iter()
        .map(|((subject, kind, period), delta)| rule_usage::ActiveModel {
            tenant_id: Set(t.to_owned()),
            subject: Set(subject.clone()),
            activity_type: Set(kind.clone()),
            period: Set(*period),
            points: Set(delta.points),
            occurrences: Set(delta.occurrences),
        })
        .collect();
    let add = adding(
        usage_key(),
        rule_usage::Entity,
        [rule_usage::Column::Points, rule_usage::Column::Occurrences],
    );
    insert_chunks(conn, rows, Some(&add)).await?;
    Ok(())
}

/// The conflict target of `rule_usage`: its primary key.
fn usage_key() -> OnConflict {
    OnConflict::columns([
        rule_usage::Column::TenantId,
        rule_usage::Column::Subject,
        rule_usage::Column::ActivityType,
        rule_usage::Column::Period,
    ])
}

/// `target` with `column = table.column + excluded.column` for each of
/// `columns`: an upsert that adds to the stored row.
fn adding<T, C>(
    mut target: OnConflict,
    table: T,
    columns: impl IntoIterator<Item = C>,
) -> OnConflict
where
    T: sea_orm::sea_query::IntoIden + Copy,
    C: sea_orm::sea_query::IntoIden + Copy,
{
    for column in columns {
        target.value(
            column,
            Expr::col((table, column)).add(Expr::col((Alias::new("excluded"), column))),
        );
    }
    target
}

/// Inserts the scored activities (in event id order, so concurrent batches
/// lock in the same order); whether every one was new. When one was not,
/// the transaction is to be rolled back: a stored id either was skipped
/// (SQLite's `ON CONFLICT DO NOTHING`) or failed the statement (PostgreSQL's
/// plain insert).
async fn insert_activities(
    conn: &impl ConnectionTrait,
    t: &str,
    model_version: i64,
    scored: &[ScoredActivity<'_>],
) -> Result<bool, DbErr> {
    let now = time::now().timestamp_millis();
    let mut sorted: Vec<&ScoredActivity<'_>> = scored.iter().collect();
    sorted.sort_by(|a, b| a.item.event_id.cmp(&b.item.event_id));
    let inserted = if conn.get_database_backend() == DbBackend::Postgres {
        insert_activities_unnest(conn, t, model_version, now, &sorted).await
    } else {
        insert_activities_json(conn, t, model_version, now, &sorted).await
    };
    match inserted {
        Ok(rows) => Ok(rows == scored.len() as u64),
        Err(error) if is_unique_violation(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

/// SQLite: `insert_activities` as one statement over a JSON array of the
/// rows, skipping stored ids.
async fn insert_activities_json(
    conn: &impl ConnectionTrait,
    t: &str,
    model_version: i64,
    now: i64,
    sorted: &[&ScoredActivity<'_>],
) -> Result<u64, DbErr> {
    let rows: Vec<_> = sorted
        .iter()
        .map(|s| {
            (
                &s.item.event_id,
                &s.item.account_id,
                &s.item.contact_id,
                &s.item.activity_type,
                s.item.occurred_at_ms,
                s.scored.rule_points,
                s.scored.counted_points,
                s.scored.capped,
                s.scored.intent,
            )
        })
        .collect();
    let rows = serde_json::to_string(&rows).map_err(|e| DbErr::Custom(e.to_string()))?;
    let statement = Statement::from_sql_and_values(
        DbBackend::Sqlite,
        include_str!("sql/insert_activities.sqlite.sql"),
        [t.into(), model_version.into(), now.into(), rows.into()],
    );
    Ok(conn.execute_raw(statement).await?.rows_affected())
}

/// PostgreSQL: `insert_activities` as one statement of column arrays.
async fn insert_activities_unnest(
    conn: &impl ConnectionTrait,
    t: &str,
    model_version: i64,
    now: i64,
    sorted: &[&ScoredActivity<'_>],
) -> Result<u64, DbErr> {
    let text = |f: fn(&ScoredActivity<'_>) -> String| -> Value {
        sorted.iter().map(|s| f(s)).collect::<Vec<String>>().into()
    };
    let flag = |f: fn(&ScoredActivity<'_>) -> bool| -> Value {
        sorted.iter().map(|s| f(s)).collect::<Vec<bool>>().into()
    };
    let points = |f: fn(&ScoredActivity<'_>) -> i32| -> Value {
        sorted.iter().map(|s| f(s)).collect::<Vec<i32>>().into()
    };
    let occurred: Vec<i64> = sorted.iter().map(|s| s.item.occurred_at_ms).collect();
    let values: Vec<Value> = vec![
        t.into(),
        model_version.into(),
        now.into(),
        text(|s| s.item.event_id.clone()),
        text(|s| s.item.account_id.clone()),
        text(|s| s.item.contact_id.clone().unwrap_or_default()),
        text(|s| s.item.activity_type.clone()),
        occurred.into(),
        points(|s| s.scored.rule_points),
        points(|s| s.scored.counted_points),
        flag(|s| s.scored.capped),
        flag(|s| s.scored.intent),
    ];
    let statement = Statement::from_sql_and_values(
        DbBackend::Postgres,
        include_str!("sql/insert_activities.pg.sql"),
        values,
    );
    Ok(conn.execute_raw(statement).await?.rows_affected())
}

/// The batch's counted points and activities summed per bucket.
fn bucket_sums<'a>(scored: &'a [ScoredActivity<'_>]) -> BucketSums<'a> {
    fold::sum_buckets(scored.iter().map(|s| {
        let key = (
            s.item.account_id.as_str(),
            s.item.contact_id.as_deref().unwrap_or_default(),
            s.item.activity_type.as_str(),
            s.scored.intent,
            s.day,
        );
        (key, i64::from(s.scored.counted_points), 1)
    }))
}
