//! Applies a person's action or an opportunity event to an account, in one
//! transaction: lock the account, load a snapshot, let the pure
//! `domain::mutation::decide` rule, then write the decision (transitions,
//! first-reached dates, recycle counters, the buying group's moves,
//! lifecycle's view of the opportunity, notifications with their outbox
//! entries, watch events and the applied event id) together or not at all.

use cascade_chassis::db::Stored;
use std::collections::{BTreeSet, HashMap, HashSet};

use cascade_chassis::db::{WriteTransaction, among, begin_write};
use cascade_chassis::{ServiceError, ServiceResult, TenantId, time};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};

use super::accounts::{set_risk, store_risk};
use super::entities::{
    account, account_opportunity, applied_event, contact, contact_transition, opportunity_contact,
};
use super::history::{FeedEntry, append_events, insert_contact_transitions, transition_row};
use super::{
    OPEN, Repository, account_state, hydrate_account, lock_account, ms, notifications,
    record_firsts, settings,
};
use crate::domain::mutation::{self, AccountSnapshot, Changes, Context, Decision, MemberSnapshot};
use crate::domain::{Account, Transition};
use cascade_domain::{ContactStage, OpportunityKind};

pub use crate::domain::mutation::{Mutation, OpportunityEventKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Applied,
    /// The event id was applied before.
    Duplicate,
    /// A newer score was applied before.
    Stale,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MutationResult {
    pub account: Account,
    pub outcome: ApplyOutcome,
    pub transitions: Vec<Transition>,
}

impl Repository {
    /// Applies `mutation` to an account. Changes to one account are
    /// serialized by a row lock, so concurrent calls (two Nurtures, a score
    /// racing a Disqualify) each see the result of the one before.
    pub async fn mutate(
        &self,
        tenant: &TenantId,
        actor: &str,
        account_id: &str,
        mutation: Mutation,
    ) -> ServiceResult<MutationResult> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        let model = lock_account(&txn, t, account_id).await?;
        let settings = settings::current(&txn, t).await?.settings;
        let (snapshot, members) = load_snapshot(&txn, t, &model, &mutation).await?;
        let now = time::now();
        let cx = Context {
            actor,
            settings: &settings,
            now: mutation::effective_time(&mutation, &snapshot, now),
            written_at: now,
        };
        let changes = match mutation::decide(&snapshot, &members, &mutation, cx) {
            Ok(Decision::Apply(changes)) => *changes,
            Ok(decision @ (Decision::Duplicate | Decision::Stale)) => {
                let account = hydrate_account(&txn, model).await?;
                txn.commit().await?;
                return Ok(MutationResult {
                    account,
                    outcome: if decision == Decision::Stale {
                        ApplyOutcome::Stale
                    } else {
                        ApplyOutcome::Duplicate
                    },
                    transitions: Vec::new(),
                });
            }
            Err(refusal) => {
                return Err(ServiceError::precondition(
                    "ACCOUNT_STAGE",
                    format!("account/{account_id}"),
                    refusal.0,
                ));
            }
        };
        // A person's action that changes nothing leaves the record (and its
        // update time, which syncs follow) alone. Events are recorded as
        // applied whatever they did.
        if changes.is_empty() && mutation.event_id().is_none() {
            let account = hydrate_account(&txn, model).await?;
            txn.commit().await?;
            return Ok(MutationResult {
                account,
                outcome: ApplyOutcome::Applied,
                transitions: Vec::new(),
            });
        }
        let written = persist(&txn, t, model, &mutation, &changes, (now, cx.now)).await?;
        let version = written.account.version;
        let account = hydrate_account(&txn, written.account).await?;
        txn.commit().await?;
        self.account_written(t, account_id, version, Some(&account));
        super::count_transitions(&changes.transitions);
        if written.notified {
            self.notifications_written.notify_one();
        }
        if written.published {
            self.events_written.notify_waiters();
        }
        Ok(MutationResult {
            account,
            outcome: ApplyOutcome::Applied,
            transitions: changes.transitions,
        })
    }
}

/// The account as the rules see it and, for an opportunity event, the
/// buying group's contacts of this account (the members stored before and
/// the ones the event names), in contact id order.
async fn load_snapshot(
    txn: &WriteTransaction,
    tenant_id: &str,
    model: &account::Model,
    mutation: &Mutation,
) -> ServiceResult<(AccountSnapshot, Vec<MemberSnapshot>)> {
    let applied_before = match mutation.event_id() {
        Some(event_id) => {
            applied_event::Entity::find_by_id((tenant_id.to_owned(), event_id.to_owned()))
                .one(txn)
                .await?
                .is_some()
        }
        None => false,
    };
    let Deals {
        open_others: open,
        version: opportunity_version,
    } = deals(txn, tenant_id, &model.account_id, mutation).await?;
    // The account row lists its open deals: no statement needed.
    let opportunity_known_open = mutation.opportunity_id().is_some_and(|opportunity_id| {
        super::accounts::open_opportunities(model)
            .iter()
            .any(|(id, _)| id == opportunity_id)
    });
    let snapshot = AccountSnapshot {
        account_id: model.account_id.clone(),
        name: model.name.clone(),
        state: account_state(model, open)?,
        engagement_score: model.engagement_score,
        disqualify_count: model.disqualify_count,
        nurture_count: model.nurture_count,
        applied_before,
        opportunity_known_open,
        opportunity_version,
        stage_entered_at_ms: model.stage_entered_at.timestamp_millis(),
    };
    let members = match mutation {
        Mutation::Opportunity {
            opportunity_id,
            kind,
            buying_group,
            ..
        } if !applied_before => {
            load_members(
                txn,
                tenant_id,
                &model.account_id,
                opportunity_id,
                *kind,
                buying_group,
            )
            .await?
        }
        _ => Vec::new(),
    };
    Ok((snapshot, members))
}

/// What the rules need of the account's deals.
struct Deals {
    /// Open deals of the account other than the mutation's.
    open_others: u32,
    /// The newest version of the mutation's deal an event was applied of
    /// (0: none, or not an opportunity event).
    version: i64,
}

/// The account's open deals and the mutation's deal, in one statement.
async fn deals(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    account_id: &str,
    mutation: &Mutation,
) -> ServiceResult<Deals> {
    let this = mutation.opportunity_id();
    let mut wanted = Condition::any().add(
        Condition::all()
            .add(account_opportunity::Column::AccountId.eq(account_id))
            .add(account_opportunity::Column::Status.eq(OPEN)),
    );
    if let Some(opportunity_id) = this {
        wanted = wanted.add(account_opportunity::Column::OpportunityId.eq(opportunity_id));
    }
    let rows: Vec<(String, String, String, i64)> = account_opportunity::Entity::find()
        .select_only()
        .columns([
            account_opportunity::Column::OpportunityId,
            account_opportunity::Column::AccountId,
            account_opportunity::Column::Status,
            account_opportunity::Column::Version,
        ])
        .filter(account_opportunity::Column::TenantId.eq(tenant_id))
        .filter(wanted)
        .into_tuple()
        .all(conn)
        .await?;
    let mut deals = Deals {
        open_others: 0,
        version: 0,
    };
    for (opportunity_id, of_account, status, version) in rows {
        if Some(opportunity_id.as_str()) == this {
            if matches!(mutation, Mutation::Opportunity { .. }) {
                deals.version = version;
            }
        } else if of_account == account_id && status == OPEN {
            deals.open_others = deals.open_others.saturating_add(1);
        }
    }
    Ok(deals)
}

async fn load_members(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    account_id: &str,
    opportunity_id: &str,
    kind: OpportunityEventKind,
    buying_group: &[String],
) -> ServiceResult<Vec<MemberSnapshot>> {
    if kind == OpportunityEventKind::ContractsEnded {
        // About the account's won deals: no buying group changes.
        return Ok(Vec::new());
    }
    // The event carries the deal's whole buying group: whoever lifecycle
    // knew in it and the event leaves out was taken out of it.
    let named: BTreeSet<String> = opportunity_contact::Entity::find()
        .filter(opportunity_contact::Column::TenantId.eq(tenant_id))
        .filter(opportunity_contact::Column::OpportunityId.eq(opportunity_id))
        .all(conn)
        .await?
        .into_iter()
        .map(|m| m.contact_id)
        .collect();
    let group: BTreeSet<&str> = buying_group.iter().map(String::as_str).collect();
    let mut ids: BTreeSet<&str> = named.iter().map(String::as_str).collect();
    ids.extend(group.iter().copied());
    let ids: Vec<&str> = ids.into_iter().collect();
    let mut contacts = Vec::with_capacity(ids.len());
    for chunk in among(
        conn.get_database_backend(),
        contact::Column::ContactId,
        &ids,
    ) {
        contacts.extend(
            contact::Entity::find()
                .filter(contact::Column::TenantId.eq(tenant_id))
                .filter(contact::Column::AccountId.eq(account_id))
                .filter(chunk)
                .all(conn)
                .await?,
        );
    }
    contacts.sort_by(|a, b| a.contact_id.cmp(&b.contact_id));
    // Those leaving this deal (its group when it is lost, and whoever was
    // taken out of it): a contact still in another open deal stays, and
    // one that goes gets back the stage it had before.
    let leaving: Vec<&str> = contacts
        .iter()
        .map(|c| c.contact_id.as_str())
        .filter(|id| kind == OpportunityEventKind::Lost || !group.contains(id))
        .collect();
    let (still_open, before) = if leaving.is_empty() {
        (HashSet::new(), HashMap::new())
    } else {
        (
            in_other_open_opportunities(conn, tenant_id, opportunity_id, &leaving).await?,
            stages_before_opportunity(conn, tenant_id, &leaving).await?,
        )
    };
    contacts
        .into_iter()
        .map(|c| {
            Ok(MemberSnapshot {
                stage: *c.stage,
                has_email: c.email.is_some(),
                has_activity: c.has_activity,
                in_other_open_opportunity: still_open.contains(&c.contact_id),
                left_this_deal: !group.contains(c.contact_id.as_str()),
                already_in_this_deal: named.contains(&c.contact_id),
                stage_before_opportunity: before.get(&c.contact_id).copied(),
                // Raised since it entered its stage, as an OPPORTUNITY.
                raised_hand_in_deal: *c.stage == ContactStage::Opportunity
                    && c.hand_raised_at_ms
                        .is_some_and(|at| at >= ms(c.stage_entered_at)),
                contact_id: c.contact_id,
            })
        })
        .collect()
}

/// Of `contact_ids`, the stage each had when it last became an OPPORTUNITY
/// (its history's latest move into that stage), for those that ever did.
async fn stages_before_opportunity(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    contact_ids: &[&str],
) -> ServiceResult<HashMap<String, ContactStage>> {
    let mut before = HashMap::new();
    for chunk in among(
        conn.get_database_backend(),
        contact_transition::Column::ContactId,
        contact_ids,
    ) {
        let moves: Vec<(String, Stored<ContactStage>)> = contact_transition::Entity::find()
            .select_only()
            .column(contact_transition::Column::ContactId)
            .column(contact_transition::Column::FromStage)
            .filter(contact_transition::Column::TenantId.eq(tenant_id))
            .filter(chunk)
            .filter(contact_transition::Column::ToStage.eq(Stored(ContactStage::Opportunity)))
            .order_by_asc(contact_transition::Column::TransitionId)
            .into_tuple()
            .all(conn)
            .await?;
        // Oldest first: the latest move wins.
        before.extend(moves.into_iter().map(|(id, from)| (id, *from)));
    }
    Ok(before)
}

/// Of `contact_ids`, those in the buying group of another opportunity of the
/// tenant that lifecycle knows to be open.
async fn in_other_open_opportunities(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    opportunity_id: &str,
    contact_ids: &[&str],
) -> ServiceResult<HashSet<String>> {
    let open = account_opportunity::Entity::find()
        .select_only()
        .column(account_opportunity::Column::OpportunityId)
        .filter(account_opportunity::Column::TenantId.eq(tenant_id))
        .filter(account_opportunity::Column::Status.eq(OPEN))
        .into_query();
    let mut found = HashSet::new();
    for chunk in among(
        conn.get_database_backend(),
        opportunity_contact::Column::ContactId,
        contact_ids,
    ) {
        let rows = opportunity_contact::Entity::find()
            .filter(opportunity_contact::Column::TenantId.eq(tenant_id))
            .filter(chunk)
            .filter(opportunity_contact::Column::OpportunityId.ne(opportunity_id))
            .filter(opportunity_contact::Column::OpportunityId.in_subquery(open.clone()))
            .all(conn)
            .await?;
        found.extend(rows.into_iter().map(|r| r.contact_id));
    }
    Ok(found)
}

/// What persisting a decision wrote that the caller needs after commit.
struct Written {
    account: account::Model,
    /// A notification waits for the webhook deliverer.
    notified: bool,
    /// The watch feed grew.
    published: bool,
}

/// Writes `changes` in the caller's transaction.
async fn persist(
    txn: &WriteTransaction,
    tenant_id: &str,
    model: account::Model,
    mutation: &Mutation,
    changes: &Changes,
    // When it is written (update times, which syncs follow) and when the
    // moves took effect (`mutation::effective_time`).
    (now, at): (DateTime<Utc>, DateTime<Utc>),
) -> ServiceResult<Written> {
    let now_ms = ms(now);
    let account_id = model.account_id.clone();
    let mut open_now = None;
    if let Mutation::Opportunity {
        opportunity_id,
        kind,
        opportunity_kind,
        buying_group,
        version,
        ..
    } = mutation
    {
        open_now = record_opportunity(
            txn,
            tenant_id,
            &account_id,
            opportunity_id,
            (*kind, *opportunity_kind),
            buying_group,
            *version,
        )
        .await?;
    }

    let mut firsts: Vec<(&str, &str)> = Vec::new();
    for moved in &changes.contact_moves {
        contact::Entity::update_many()
            .col_expr(contact::Column::Stage, Expr::value(moved.to_stage.as_str()))
            .col_expr(contact::Column::StageEnteredAt, Expr::value(now))
            .col_expr(contact::Column::UpdatedAt, Expr::value(now))
            .filter(contact::Column::TenantId.eq(tenant_id))
            .filter(contact::Column::ContactId.eq(moved.contact_id.as_str()))
            .exec(txn)
            .await?;
        firsts.push((&moved.contact_id, moved.to_stage.as_str()));
    }
    insert_contact_transitions(txn, tenant_id, &changes.contact_moves).await?;
    // Contacts' moves are dated when written, the account's when they took
    // effect (`mutation::Context`).
    record_firsts(txn, tenant_id, &firsts, now_ms).await?;

    let mut firsts: Vec<(&str, &str)> = Vec::new();
    let mut seq = model.transition_count;
    for t in &changes.transitions {
        seq += 1;
        transition_row(tenant_id, seq, t).insert(txn).await?;
        firsts.push((&account_id, t.to_stage.as_str()));
    }
    record_firsts(txn, tenant_id, &firsts, ms(at)).await?;

    let owner = model.owner_id.clone().unwrap_or_default();
    let version = model.version;
    let mut model = model;
    if let Some(risk) = &changes.risk {
        set_risk(&mut model, risk);
        store_risk(txn, &model).await?;
    }
    let mut am = model.into_active_model();
    if let Some(open) = open_now {
        am.open_opportunities = Set(open);
    }
    if !changes.transitions.is_empty() {
        am.transition_count = Set(seq);
    }
    // An at-risk entry keeps the stage and the time it was entered.
    if changes
        .transitions
        .iter()
        .any(|t| t.from_stage != t.to_stage)
    {
        am.stage = Set(Stored(changes.stage));
        am.customer_type = Set(Stored(changes.customer_type));
        am.stage_entered_at = Set(at);
    }
    if let Some(baseline) = changes.score_baseline {
        am.score_baseline = Set(baseline);
    }
    if let Some(recycle) = &changes.recycle {
        am.disqualify_count = Set(recycle.disqualify_count);
        am.nurture_count = Set(recycle.nurture_count);
        am.last_recycle_transition_id = Set(Some(recycle.transition_id.clone()));
    }
    am.version = Set(version + 1);
    am.updated_at = Set(now);
    let updated = am.update(txn).await?;

    let mut feed: Vec<FeedEntry> = changes
        .transitions
        .iter()
        .map(FeedEntry::transition)
        .collect();
    let mut notified = false;
    if let Some(draft) = &changes.notification {
        let notification =
            notifications::record(txn, tenant_id, &account_id, &owner, draft.clone(), now_ms)
                .await?;
        feed.push(FeedEntry::notification(&notification));
        notified = true;
    }
    if let Some(event_id) = mutation.event_id() {
        applied_event::ActiveModel {
            tenant_id: Set(tenant_id.to_owned()),
            event_id: Set(event_id.to_owned()),
            account_id: Set(account_id.clone()),
            applied_at_ms: Set(now_ms),
        }
        .insert(txn)
        .await?;
    }
    let published = !feed.is_empty();
    // Last: the feed's counter row stays locked until commit.
    append_events(txn, tenant_id, feed, now_ms).await?;
    Ok(Written {
        account: updated,
        notified,
        published,
    })
}

/// Keeps lifecycle's view of the account's opportunities: the deal's status
/// and the buying group it has named so far. Returns the account's open
/// deals after it, as the account row keeps them (`None`: unchanged).
async fn record_opportunity(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    account_id: &str,
    opportunity_id: &str,
    (event, kind): (OpportunityEventKind, OpportunityKind),
    buying_group: &[String],
    version: i64,
) -> ServiceResult<Option<String>> {
    let status = match event {
        OpportunityEventKind::Opened => OPEN,
        OpportunityEventKind::Won => "WON",
        OpportunityEventKind::Lost => "LOST",
        // About the account's won deals, not a change of one.
        OpportunityEventKind::ContractsEnded => return Ok(None),
    };
    account_opportunity::Entity::insert(account_opportunity::ActiveModel {
        tenant_id: Set(tenant_id.to_owned()),
        opportunity_id: Set(opportunity_id.to_owned()),
        account_id: Set(account_id.to_owned()),
        status: Set(status.to_owned()),
        kind: Set(Stored(kind)),
        version: Set(version),
    })
    .on_conflict(
        OnConflict::columns([
            account_opportunity::Column::TenantId,
            account_opportunity::Column::OpportunityId,
        ])
        .update_columns([
            account_opportunity::Column::Status,
            account_opportunity::Column::Kind,
        ])
        .to_owned(),
    )
    .exec_without_returning(conn)
    .await?;
    // The newest version applied only grows (an event without one, 0,
    // leaves it); `mutation::decide` refused an older one as stale.
    if version > 0 {
        account_opportunity::Entity::update_many()
            .col_expr(account_opportunity::Column::Version, Expr::value(version))
            .filter(account_opportunity::Column::TenantId.eq(tenant_id))
            .filter(account_opportunity::Column::OpportunityId.eq(opportunity_id))
            .filter(account_opportunity::Column::Version.lt(version))
            .exec(conn)
            .await?;
    }
    let open: Vec<(String, OpportunityKind)> = account_opportunity::Entity::find()
        .filter(account_opportunity::Column::TenantId.eq(tenant_id))
        .filter(account_opportunity::Column::AccountId.eq(account_id))
        .filter(account_opportunity::Column::Status.eq(OPEN))
        .order_by_asc(account_opportunity::Column::OpportunityId)
        .all(conn)
        .await?
        .into_iter()
        .map(|row| (row.opportunity_id, *row.kind))
        .collect();
    let open = super::accounts::open_opportunities_text(&open);
    // The event names the whole buying group: whoever it leaves out was
    // taken out of it (`load_members` moved them).
    let named: BTreeSet<&String> = buying_group.iter().collect();
    let mut gone = opportunity_contact::Entity::delete_many()
        .filter(opportunity_contact::Column::TenantId.eq(tenant_id))
        .filter(opportunity_contact::Column::OpportunityId.eq(opportunity_id));
    if !named.is_empty() {
        gone = gone.filter(
            opportunity_contact::Column::ContactId.is_not_in(named.iter().map(|c| c.as_str())),
        );
    }
    gone.exec(conn).await?;
    if named.is_empty() {
        return Ok(Some(open));
    }
    opportunity_contact::Entity::insert_many(named.into_iter().map(|contact_id| {
        opportunity_contact::ActiveModel {
            tenant_id: Set(tenant_id.to_owned()),
            opportunity_id: Set(opportunity_id.to_owned()),
            contact_id: Set(contact_id.clone()),
        }
    }))
    .on_conflict(
        OnConflict::columns([
            opportunity_contact::Column::TenantId,
            opportunity_contact::Column::OpportunityId,
            opportunity_contact::Column::ContactId,
        ])
        .do_nothing()
        .to_owned(),
    )
    .exec_without_returning(conn)
    .await?;
    Ok(Some(open))
}
