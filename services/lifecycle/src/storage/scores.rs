//! Applies score deliveries from scoring: many accounts of a tenant in one
//! transaction. The snapshots of all of them are loaded with a few set-based
//! reads, each delivery is decided by the pure `domain::scores::decide`, and
//! the decisions are written with a few set-based statements. One delivery per
//! account per transaction used to cost 22 statements and a commit each, and
//! that was most of PostgreSQL's CPU during ingest (docs/performance.md).

use cascade_chassis::db::Stored;
use std::collections::{BTreeMap, HashMap, HashSet};

use cascade_chassis::db::{
    WritePriority, WriteTransaction, among, begin_write_as, statement_chunks, update_from_values,
};
use cascade_chassis::{ServiceResult, TenantId, time};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Value,
};

use super::accounts::{set_risk, store_risk};
use super::entities::{account, account_opportunity, applied_event, contact, transition};
use super::history::{FeedEntry, append_events, insert_contact_transitions, transition_row};
use super::{
    OPEN, Repository, account_state, from_ms, hydrate_accounts, ms, notifications, record_firsts,
    settings,
};
use crate::domain::account_rules::ScoreClock;
use crate::domain::risk::{self, RiskContext};
use crate::domain::scores::{
    self, AccountSnapshot, AppliedTotal, ContactSnapshot, ScoreDecision, ScoreDelivery,
};
use crate::domain::{Account, ContactTransition, Transition};

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum ScoreApplied {
    /// No such account in the tenant; nothing changed.
    NotFound,
    /// Its event id was applied before.
    Duplicate,
    /// A newer delivery was applied before.
    Stale,
    Applied {
        transitions: Vec<Transition>,
    },
    /// The rules refused it (a sequence far past the last applied one);
    /// nothing of it was written, the others of the call were.
    Refused {
        reason: String,
    },
}

/// A delivery's result and, when asked for, the account after the call.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreResult {
    pub applied: ScoreApplied,
    pub account: Option<Account>,
}

impl Repository {
    /// Applies deliveries of distinct accounts of one tenant in one
    /// transaction; results are in the order of `deliveries`. With
    /// `with_accounts`, each result carries its account as stored after the
    /// call (the unary ApplyEngagementScore returns it).
    pub async fn apply_scores(
        &self,
        tenant: &TenantId,
        actor: &str,
        deliveries: &[(String, ScoreDelivery)],
        with_accounts: bool,
    ) -> ServiceResult<Vec<ScoreResult>> {
        let t = tenant.as_str();
        // SQLite: the write lock from the start (the accounts are locked by
        // it), after any caller waiting for it: deliveries are background
        // work, and a caller (an ingest batch creating new people) should not
        // queue behind several of them (docs/performance.md, round 23).
        let txn = begin_write_as(&self.db, WritePriority::Background).await?;
        let account_ids: Vec<&str> = deliveries.iter().map(|(id, _)| id.as_str()).collect();
        let mut models = lock_accounts(&txn, t, &account_ids).await?;
        let event_ids: Vec<&str> = deliveries
            .iter()
            .map(|(_, d)| d.event_id.as_str())
            .collect();
        let applied_before = applied_events(&txn, t, &event_ids).await?;
        let settings = settings::current(&txn, t).await?.settings;
        let open = open_opportunities(&txn, t, &account_ids).await?;
        let contact_ids: Vec<&str> = deliveries
            .iter()
            .flat_map(|(_, d)| d.contacts.iter().map(|c| c.contact_id.as_str()))
            .collect();
        let contacts = load_contacts(&txn, t, &contact_ids).await?;

        let now = time::now();
        let now_ms = ms(now);
        let mut writes = Writes::default();
        let mut results = Vec::with_capacity(deliveries.len());
        for (account_id, delivery) in deliveries {
            let Some(model) = models.get_mut(account_id) else {
                results.push(ScoreApplied::NotFound);
                continue;
            };
            let snapshot = AccountSnapshot {
                account_id: account_id.clone(),
                name: model.name.clone(),
                owner_id: model.owner_id.clone(),
                state: account_state(model, open.get(account_id.as_str()).copied().unwrap_or(0))?,
                score_sequence: model.score_sequence,
                score_clock: model.score_day.map(|day| ScoreClock {
                    day,
                    half_life_days: model.score_half_life_days,
                }),
                added_total: model
                    .score_added_total
                    .zip(model.score_added_seq)
                    .map(|(total, sequence)| AppliedTotal { total, sequence }),
                applied_before: applied_before.contains(delivery.event_id.as_str()),
            };
            let decision = match scores::decide(&snapshot, &contacts, delivery, &settings) {
                Ok(decision) => decision,
                Err(refusal) => {
                    results.push(ScoreApplied::Refused { reason: refusal.0 });
                    continue;
                }
            };
            let changes = match decision {
                ScoreDecision::Duplicate => {
                    results.push(ScoreApplied::Duplicate);
                    continue;
                }
                ScoreDecision::Stale => {
                    results.push(ScoreApplied::Stale);
                    continue;
                }
                ScoreDecision::Apply(changes) => changes,
            };
            for ignored in &changes.ignored_contacts {
                tracing::warn!(contact = %ignored, account = %account_id, "score for a contact not of this account ignored");
            }

            // The account row as it will be stored.
            let mut transitions = Vec::with_capacity(changes.steps.len());
            for step in &changes.steps {
                model.transition_count += 1;
                let transition = Transition::of_step(
                    step,
                    account_id,
                    actor,
                    None,
                    Some(delivery.event_id.clone()),
                    settings.version,
                    now,
                );
                writes
                    .firsts
                    .push((account_id.clone(), step.to_stage.as_str()));
                writes
                    .transitions
                    .push((model.transition_count, transition.clone()));
                transitions.push(transition);
            }
            if !changes.steps.is_empty() {
                model.stage = Stored(changes.stage);
                model.customer_type = Stored(changes.customer_type);
                model.stage_entered_at = now;
            }
            let mut notifications = changes.notifications;
            if let Some(change) = &changes.risk {
                let (entry, write, message) = risk::records(
                    change,
                    RiskContext {
                        account_id,
                        account_name: &model.name,
                        stage: changes.stage,
                        customer_type: changes.customer_type,
                        actor,
                        reason: None,
                        event_id: Some(&delivery.event_id),
                        settings_version: settings.version,
                        now,
                    },
                );
                model.transition_count += 1;
                writes
                    .transitions
                    .push((model.transition_count, entry.clone()));
                transitions.push(entry);
                set_risk(model, &write);
                writes.risks.push(account_id.clone());
                if let Some(message) = message {
                    notifications = vec![message];
                }
            }
            model.engagement_score = delivery.engagement_score;
            model.average_engagement_score = delivery.average_engagement_score;
            model.intent_score = delivery.intent_score;
            model.score_sequence = delivery.sequence;
            model.score_baseline = changes.score_baseline;
            model.score_day = Some(changes.score_clock.day);
            model.score_half_life_days = changes.score_clock.half_life_days;
            model.score_added_total = changes.added_total;
            model.score_added_seq = changes.added_total.map(|_| delivery.sequence);
            model.version += 1;
            model.updated_at = now;
            writes.accounts.push(account_id.clone());

            for update in changes.contacts {
                let Some(stored) = contacts.get(&update.contact_id) else {
                    continue;
                };
                if let Some(moved) = &update.moved {
                    writes
                        .firsts
                        .push((update.contact_id.clone(), moved.to.as_str()));
                    writes.contact_transitions.push(ContactTransition::of_move(
                        moved,
                        &update.contact_id,
                        account_id,
                        actor,
                        Some(delivery.event_id.clone()),
                        now,
                    ));
                }
                writes.contacts.insert(
                    update.contact_id.clone(),
                    ContactRow {
                        engagement_score: update.engagement_score,
                        has_activity: update.has_activity,
                        stage: update.moved.map_or(stored.stage, |m| m.to).as_str(),
                        moved: update.moved.is_some(),
                        raised_hand_in_deal: update.raised_hand_in_deal,
                    },
                );
            }
            // Watchers see the moves, then the message about them.
            writes
                .events
                .extend(transitions.iter().map(FeedEntry::transition));
            for draft in notifications {
                let owner = model.owner_id.clone().unwrap_or_default();
                let notification =
                    notifications::record(&txn, t, account_id, &owner, draft, now_ms).await?;
                writes.events.push(FeedEntry::notification(&notification));
                writes.notified = true;
            }
            writes
                .applied
                .push((delivery.event_id.clone(), account_id.clone()));
            results.push(ScoreApplied::Applied { transitions });
        }

        // `persist` takes the events; watchers are woken after the commit.
        let wrote_events = !writes.events.is_empty();
        writes.persist(&txn, t, &models, now_ms).await?;
        // The cache takes the accounts as written, so the next GetAccount of
        // each needs no statement (a tombstone would send it to the
        // database: beside ingest, p99 12.4-12.9 ms against 9.0-10.0 with
        // them; docs/performance.md, round 28).
        let accounts = if with_accounts || self.accounts.is_some() {
            let touched: Vec<account::Model> = deliveries
                .iter()
                .filter_map(|(id, _)| models.get(id).cloned())
                .collect();
            let mut hydrated: HashMap<String, Account> = hydrate_accounts(&txn, touched)
                .await?
                .into_iter()
                .map(|a| (a.account_id.clone(), a))
                .collect();
            deliveries
                .iter()
                .map(|(id, _)| hydrated.remove(id))
                .collect()
        } else {
            vec![None; deliveries.len()]
        };
        txn.commit().await?;
        let rewritten: HashSet<&String> = writes.accounts.iter().collect();
        for (i, (account_id, _)) in deliveries.iter().enumerate() {
            if let Some(model) = models.get(account_id)
                && rewritten.contains(account_id)
            {
                self.account_written(t, account_id, model.version, accounts[i].as_ref());
            }
        }
        for result in &results {
            if let ScoreApplied::Applied { transitions } = result {
                super::count_transitions(transitions);
            }
        }
        if writes.notified {
            self.notifications_written.notify_one();
        }
        if wrote_events {
            self.events_written.notify_waiters();
        }
        Ok(results
            .into_iter()
            .zip(accounts)
            .map(|(applied, account)| ScoreResult { applied, account })
            .collect())
    }
}

/// A contact's row after the deliveries of the transaction.
struct ContactRow {
    engagement_score: f64,
    has_activity: bool,
    stage: &'static str,
    moved: bool,
    /// Raised a hand while in a deal (`ContactUpdate::raised_hand_in_deal`).
    raised_hand_in_deal: bool,
}

/// Everything the transaction writes, gathered while deciding.
#[derive(Default)]
struct Writes {
    /// Accounts whose row changed (scores at least).
    accounts: Vec<String>,
    contacts: BTreeMap<String, ContactRow>,
    /// (transition count after it, transition).
    transitions: Vec<(i64, Transition)>,
    contact_transitions: Vec<ContactTransition>,
    /// (subject, stage) reached now; kept only if first.
    firsts: Vec<(String, &'static str)>,
    /// (event id, account) applied.
    applied: Vec<(String, String)>,
    events: Vec<FeedEntry>,
    notified: bool,
    /// Accounts whose at-risk flag changed (rare: stored one by one).
    risks: Vec<String>,
}

impl Writes {
    async fn persist(
        &mut self,
        conn: &impl ConnectionTrait,
        tenant_id: &str,
        models: &HashMap<String, account::Model>,
        now_ms: i64,
    ) -> ServiceResult<()> {
        for id in &self.risks {
            if let Some(m) = models.get(id) {
                store_risk(conn, m).await?;
            }
        }
        if !self.accounts.is_empty() {
            let rows = self
                .accounts
                .iter()
                .filter_map(|id| models.get(id))
                .map(|m| {
                    vec![
                        Value::from(m.account_id.clone()),
                        m.stage.into(),
                        m.customer_type.into(),
                        m.stage_entered_at.into(),
                        m.transition_count.into(),
                        m.engagement_score.into(),
                        m.average_engagement_score.into(),
                        m.intent_score.into(),
                        m.score_sequence.into(),
                        m.score_baseline.into(),
                        m.score_day.into(),
                        m.score_half_life_days.into(),
                        m.score_added_total.into(),
                        m.score_added_seq.into(),
                        m.updated_at.into(),
                    ]
                })
                .collect();
            update_from_values(
                conn,
                "accounts",
                tenant_id,
                "account_id",
                &[
                    "stage",
                    "customer_type",
                    "stage_entered_at",
                    "transition_count",
                    "engagement_score",
                    "average_engagement_score",
                    "intent_score",
                    "score_sequence",
                    "score_baseline",
                    "score_day",
                    "score_half_life_days",
                    "score_added_total",
                    "score_added_seq",
                    "updated_at",
                ],
                Some("version = accounts.version + 1"),
                rows,
            )
            .await?;
        }
        // A score alone leaves a contact's stage and update time as they are;
        // a move sets both.
        let now = from_ms(now_ms);
        for moved in [false, true] {
            let rows: Vec<Vec<Value>> = self
                .contacts
                .iter()
                .filter(|(_, r)| r.moved == moved)
                .map(|(id, r)| {
                    let mut row = vec![
                        Value::from(id.clone()),
                        r.engagement_score.into(),
                        r.has_activity.into(),
                    ];
                    if moved {
                        row.extend([r.stage.into(), now.into(), now.into()]);
                    }
                    row
                })
                .collect();
            if rows.is_empty() {
                continue;
            }
            let columns: &[&str] = if moved {
                &[
                    "engagement_score",
                    "has_activity",
                    "stage",
                    "stage_entered_at",
                    "updated_at",
                ]
            } else {
                &["engagement_score", "has_activity"]
            };
            update_from_values(
                conn,
                "contacts",
                tenant_id,
                "contact_id",
                columns,
                None,
                rows,
            )
            .await?;
        }
        // Rare (a hand-raise of someone in an open deal): one statement.
        let raised: Vec<&str> = self
            .contacts
            .iter()
            .filter(|(_, r)| r.raised_hand_in_deal)
            .map(|(id, _)| id.as_str())
            .collect();
        if !raised.is_empty() {
            contact::Entity::update_many()
                .col_expr(contact::Column::HandRaisedAtMs, Expr::value(now_ms))
                .filter(contact::Column::TenantId.eq(tenant_id))
                .filter(contact::Column::ContactId.is_in(raised))
                .exec(conn)
                .await?;
        }
        for chunk in statement_chunks(&self.transitions, 16) {
            transition::Entity::insert_many(
                chunk
                    .iter()
                    .map(|(seq, t)| transition_row(tenant_id, *seq, t)),
            )
            .exec_without_returning(conn)
            .await?;
        }
        insert_contact_transitions(conn, tenant_id, &self.contact_transitions).await?;
        record_firsts(conn, tenant_id, &self.firsts, now_ms).await?;
        for chunk in statement_chunks(&self.applied, 4) {
            applied_event::Entity::insert_many(chunk.iter().map(|(event_id, account_id)| {
                applied_event::ActiveModel {
                    tenant_id: sea_orm::Set(tenant_id.to_owned()),
                    event_id: sea_orm::Set(event_id.clone()),
                    account_id: sea_orm::Set(account_id.clone()),
                    applied_at_ms: sea_orm::Set(now_ms),
                }
            }))
            .exec_without_returning(conn)
            .await?;
        }
        // Last: the feed's counter row stays locked until commit.
        append_events(conn, tenant_id, std::mem::take(&mut self.events), now_ms).await?;
        Ok(())
    }
}

/// Locks the accounts' rows for the rest of the transaction, in account id
/// order so that two transactions never wait for each other in a cycle.
/// PostgreSQL: row locks; SQLite: the transaction already holds the
/// database's write lock (`begin_write`).
async fn lock_accounts(
    txn: &WriteTransaction,
    tenant_id: &str,
    account_ids: &[&str],
) -> ServiceResult<HashMap<String, account::Model>> {
    let mut sorted: Vec<&str> = account_ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut found = HashMap::with_capacity(sorted.len());
    for ids in among(
        txn.get_database_backend(),
        account::Column::AccountId,
        &sorted,
    ) {
        let query = account::Entity::find()
            .filter(account::Column::TenantId.eq(tenant_id))
            .filter(ids)
            .order_by_asc(account::Column::AccountId);
        let models = txn.lock_all(query).await?;
        found.extend(models.into_iter().map(|m| (m.account_id.clone(), m)));
    }
    Ok(found)
}

async fn applied_events(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    event_ids: &[&str],
) -> ServiceResult<HashSet<String>> {
    let mut found = HashSet::new();
    for ids in among(
        conn.get_database_backend(),
        applied_event::Column::EventId,
        event_ids,
    ) {
        found.extend(
            applied_event::Entity::find()
                .select_only()
                .column(applied_event::Column::EventId)
                .filter(applied_event::Column::TenantId.eq(tenant_id))
                .filter(ids)
                .into_tuple::<String>()
                .all(conn)
                .await?,
        );
    }
    Ok(found)
}

/// Open opportunities lifecycle knows of, per account (absent: none).
async fn open_opportunities(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    account_ids: &[&str],
) -> ServiceResult<HashMap<String, u32>> {
    let mut open = HashMap::new();
    for ids in among(
        conn.get_database_backend(),
        account_opportunity::Column::AccountId,
        account_ids,
    ) {
        let rows = account_opportunity::Entity::find()
            .select_only()
            .column(account_opportunity::Column::AccountId)
            .column_as(account_opportunity::Column::OpportunityId.count(), "n")
            .filter(account_opportunity::Column::TenantId.eq(tenant_id))
            .filter(account_opportunity::Column::Status.eq(OPEN))
            .filter(ids)
            .group_by(account_opportunity::Column::AccountId)
            .into_tuple::<(String, i64)>()
            .all(conn)
            .await?;
        open.extend(
            rows.into_iter()
                .map(|(id, n)| (id, u32::try_from(n).unwrap_or(u32::MAX))),
        );
    }
    Ok(open)
}

/// (contact_id, account_id, email, stage, has_activity): what the rules read.
type ContactColumns = (
    String,
    String,
    Option<String>,
    Stored<cascade_domain::ContactStage>,
    bool,
);

async fn load_contacts(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    contact_ids: &[&str],
) -> ServiceResult<HashMap<String, ContactSnapshot>> {
    let mut sorted: Vec<&str> = contact_ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut found = HashMap::with_capacity(sorted.len());
    for ids in among(
        conn.get_database_backend(),
        contact::Column::ContactId,
        &sorted,
    ) {
        // Only the columns the rules read: a fold's delivery loads thousands
        // of contacts, and on SQLite each column of each row is copied out
        // (docs/performance.md, round 28).
        let rows: Vec<ContactColumns> = contact::Entity::find()
            .select_only()
            .columns([
                contact::Column::ContactId,
                contact::Column::AccountId,
                contact::Column::Email,
                contact::Column::Stage,
                contact::Column::HasActivity,
            ])
            .filter(contact::Column::TenantId.eq(tenant_id))
            .filter(ids)
            .into_tuple()
            .all(conn)
            .await?;
        for (contact_id, account_id, email, stage, has_activity) in rows {
            let snapshot = ContactSnapshot {
                stage: *stage,
                contact_id: contact_id.clone(),
                account_id,
                email,
                has_activity,
            };
            found.insert(contact_id, snapshot);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use cascade_chassis::db;
    use cascade_testkit::TestDatabase;
    use futures::FutureExt;

    use super::*;
    use crate::domain::NewAccount;
    use crate::domain::scores::ContactEngagement;

    /// Watchers wait on `events_written` and poll only as a fallback (every
    /// 500 ms): a delivery that moves an account must wake them itself.
    #[tokio::test]
    async fn a_delivery_that_moves_an_account_wakes_the_watchers() {
        let test = TestDatabase::sqlite();
        let conn = db::connect_and_migrate::<super::super::migration::Migrator>(&test.settings)
            .await
            .expect("database");
        let repository = Repository::new(conn);
        let tenant = TenantId::parse("acme").expect("tenant");
        let account = repository
            .create_account(
                &tenant,
                NewAccount {
                    name: "Woken".into(),
                    domain: None,
                    owner_id: None,
                    external_id: None,
                },
                None,
            )
            .await
            .expect("account");
        let written = repository.events_written();
        let woken = written.notified();
        let delivery = ScoreDelivery {
            event_id: "e1".into(),
            sequence: 1,
            engagement_score: 150.0,
            average_engagement_score: 150.0,
            intent_score: 0.0,
            contacts: Vec::<ContactEngagement>::new(),
            day: 20_000,
            decay_half_life_days: 0.0,
            new_engagement: Some(Vec::new()),
            added_total: Some(0.0),
        };
        let results = repository
            .apply_scores(
                &tenant,
                "test",
                &[(account.account_id.clone(), delivery)],
                false,
            )
            .await
            .expect("applied");
        let ScoreApplied::Applied { transitions } = &results[0].applied else {
            panic!("not applied: {:?}", results[0].applied);
        };
        assert!(!transitions.is_empty(), "150 points move a new account");
        assert!(
            woken.now_or_never().is_some(),
            "the watchers were not woken by the delivery's events"
        );
    }
}
