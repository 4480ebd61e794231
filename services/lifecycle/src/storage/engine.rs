//! Applies the stage rules to an account inside one transaction: the
//! account row is locked, the rules decide, and the transitions, first-reached
//! dates, contact stages, notifications (with their outbox entries), watch
//! events and the applied event id are written together or not at all.

use std::collections::BTreeSet;

use cascade_proto::lifecycle::v1 as pb;
use cascade_shared::db::{WriteTransaction, begin_write};
use cascade_shared::domain::{AccountStage, ContactStage};
use cascade_shared::{ServiceError, ServiceResult, TenantId, time};
use prost::Message;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel,
    PaginatorTrait, QueryFilter,
};

use super::entities::{account, account_opportunity, applied_event, contact, opportunity_contact};
use super::history::{append_events, insert_contact_transitions, transition_row};
use super::{
    Repository, account_state, corrupt, hydrate_account, lock_account, ms, notifications,
    record_first, settings, statement,
};
use crate::convert;
use crate::domain::account_rules::{self, AccountEvent, TransitionCause};
use crate::domain::contact_rules::{self, ContactEvent, ContactMove};
use crate::domain::scores::prioritized_text;
use crate::domain::{Account, ContactTransition, Notification, NotificationReason, Transition};
use chrono::{DateTime, Utc};

const OPEN: &str = "OPEN";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpportunityEventKind {
    Opened,
    Won,
    Lost,
}

/// A change to apply to an account. (Score deliveries from scoring are
/// applied many accounts at a time, by `scores.rs`.)
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Qualify, Disqualify, Nurture or Advance, by a person.
    Manual {
        event: AccountEvent,
        reason: Option<String>,
    },
    /// An opportunity opened, won or lost.
    Opportunity {
        event_id: String,
        opportunity_id: String,
        kind: OpportunityEventKind,
        buying_group: Vec<String>,
        other_open: u32,
    },
}

impl Mutation {
    fn event_id(&self) -> Option<&str> {
        match self {
            Mutation::Manual { .. } => None,
            Mutation::Opportunity { event_id, .. } => Some(event_id),
        }
    }
}

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

/// Everything written for one mutation, gathered while applying it.
struct Writes {
    transitions: Vec<Transition>,
    notifications: Vec<Notification>,
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
        let txn = begin_write(&self.db).await?;
        let model = lock_account(&txn, tenant.as_str(), account_id).await?;

        if let Some(event_id) = mutation.event_id()
            && applied_event::Entity::find_by_id((tenant.as_str().to_owned(), event_id.to_owned()))
                .one(&txn)
                .await?
                .is_some()
        {
            return unchanged(txn, model, ApplyOutcome::Duplicate).await;
        }

        let settings = settings::current(&txn, tenant.as_str()).await?.settings;
        let now = time::now();
        let now_ms = ms(now);
        let excluded = match &mutation {
            Mutation::Opportunity { opportunity_id, .. } => Some(opportunity_id.as_str()),
            _ => None,
        };
        let open = open_opportunities(&txn, tenant.as_str(), account_id, excluded).await?;
        let state = account_state(&model, open)?;
        let event = match &mutation {
            Mutation::Manual { event, .. } => event.clone(),
            Mutation::Opportunity {
                kind, other_open, ..
            } => match kind {
                OpportunityEventKind::Opened => AccountEvent::OpportunityOpened,
                OpportunityEventKind::Won => AccountEvent::OpportunityWon,
                // Either side may know of another open deal.
                OpportunityEventKind::Lost => AccountEvent::OpportunityLost {
                    other_open: (*other_open).max(open),
                },
            },
        };
        let outcome = account_rules::apply(&state, &event, &settings).map_err(|refusal| {
            ServiceError::precondition("ACCOUNT_STAGE", format!("account/{account_id}"), refusal.0)
        })?;

        if let Mutation::Opportunity {
            event_id,
            opportunity_id,
            kind,
            buying_group,
            ..
        } = &mutation
        {
            apply_opportunity_to_contacts(
                &txn,
                OpportunityChange {
                    tenant_id: tenant.as_str(),
                    account_id,
                    opportunity_id,
                    kind: *kind,
                    actor,
                    event_id,
                },
                buying_group,
                now,
            )
            .await?;
        }

        let mut writes = Writes {
            transitions: Vec::new(),
            notifications: Vec::new(),
        };
        let reason = match &mutation {
            Mutation::Manual { reason, .. } => reason.clone(),
            _ => None,
        };
        let mut seq = model.transition_count;
        for step in &outcome.steps {
            seq += 1;
            let t = Transition::of_step(
                step,
                account_id,
                actor,
                reason.clone(),
                mutation.event_id().map(str::to_owned),
                settings.version,
                now,
            );
            transition_row(tenant.as_str(), seq, &t)
                .insert(&txn)
                .await?;
            record_first(
                &txn,
                tenant.as_str(),
                account_id,
                t.to_stage.as_str(),
                now_ms,
            )
            .await?;
            writes.transitions.push(t);
        }

        let (stage, customer_type) = outcome.final_state(&state);
        let account_name = model.name.clone();
        let owner = model.owner_id.clone().unwrap_or_default();
        let previous_score = model.engagement_score;
        let mut am = model.clone().into_active_model();
        if !outcome.steps.is_empty() {
            am.stage = Set(stage.as_str().to_owned());
            am.customer_type = Set(customer_type.as_str().to_owned());
            am.stage_entered_at = Set(now);
            am.transition_count = Set(seq);
        }
        let current_score = previous_score;
        if outcome.reset_baseline {
            am.score_baseline = Set(current_score);
        }
        for t in &writes.transitions {
            let recycled_to = match (t.cause, t.to_stage) {
                (TransitionCause::Disqualify, _)
                | (TransitionCause::OpportunityLost, AccountStage::Detected) => Some(true),
                (TransitionCause::Nurture, _)
                | (TransitionCause::OpportunityLost, AccountStage::Engaged) => Some(false),
                _ => None,
            };
            if let Some(disqualified) = recycled_to {
                if disqualified {
                    am.disqualify_count = Set(model.disqualify_count + 1);
                } else {
                    am.nurture_count = Set(model.nurture_count + 1);
                }
                am.last_recycle_transition_id = Set(Some(t.transition_id.clone()));
            }
        }
        am.version = Set(model.version + 1);
        am.updated_at = Set(now);
        let updated = am.update(&txn).await?;

        if outcome.notify_prioritized {
            let text =
                prioritized_text(&account_name, current_score, settings.prioritized_threshold);
            writes.notifications.push(
                notifications::record(
                    &txn,
                    tenant.as_str(),
                    account_id,
                    &owner,
                    NotificationReason::Prioritized,
                    text,
                    now_ms,
                )
                .await?,
            );
        }

        let mut events = Vec::new();
        for t in &writes.transitions {
            let message = pb::WatchAccountEventsResponse {
                cursor: String::new(),
                event: Some(pb::watch_account_events_response::Event::Transition(
                    convert::transition(t),
                )),
            };
            events.push((
                account_id.to_owned(),
                Some(t.to_stage.as_str().to_owned()),
                message.encode_to_vec(),
            ));
        }
        for n in &writes.notifications {
            let message = pb::WatchAccountEventsResponse {
                cursor: String::new(),
                event: Some(pb::watch_account_events_response::Event::Notification(
                    convert::notification(n),
                )),
            };
            events.push((account_id.to_owned(), None, message.encode_to_vec()));
        }
        let wrote_events = !events.is_empty();
        if let Some(event_id) = mutation.event_id() {
            applied_event::ActiveModel {
                tenant_id: Set(tenant.as_str().to_owned()),
                event_id: Set(event_id.to_owned()),
                account_id: Set(account_id.to_owned()),
                applied_at_ms: Set(now_ms),
            }
            .insert(&txn)
            .await?;
        }
        // Last: the feed's counter row stays locked until commit.
        append_events(&txn, tenant.as_str(), events, now_ms).await?;

        let account = hydrate_account(&txn, updated).await?;
        txn.commit().await?;
        if !writes.notifications.is_empty() {
            self.notifications_written.notify_one();
        }
        if wrote_events {
            self.events_written.notify_waiters();
        }
        Ok(MutationResult {
            account,
            outcome: ApplyOutcome::Applied,
            transitions: writes.transitions,
        })
    }
}

async fn unchanged(
    txn: WriteTransaction,
    model: account::Model,
    outcome: ApplyOutcome,
) -> ServiceResult<MutationResult> {
    let account = hydrate_account(&txn, model).await?;
    txn.commit().await?;
    Ok(MutationResult {
        account,
        outcome,
        transitions: Vec::new(),
    })
}

async fn open_opportunities(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    account_id: &str,
    excluding: Option<&str>,
) -> ServiceResult<u32> {
    let mut query = account_opportunity::Entity::find()
        .filter(account_opportunity::Column::TenantId.eq(tenant_id))
        .filter(account_opportunity::Column::AccountId.eq(account_id))
        .filter(account_opportunity::Column::Status.eq(OPEN));
    if let Some(opportunity_id) = excluding {
        query = query.filter(account_opportunity::Column::OpportunityId.ne(opportunity_id));
    }
    Ok(u32::try_from(query.count(conn).await?).unwrap_or(u32::MAX))
}

/// Moves a contact, records the move in its history and keeps its
/// first-reached date.
async fn move_contact(
    conn: &impl ConnectionTrait,
    change: &OpportunityChange<'_>,
    contact_id: &str,
    moved: &ContactMove,
    now: DateTime<Utc>,
) -> ServiceResult<()> {
    conn.execute_raw(statement(
        conn,
        "UPDATE contacts SET stage = $1, stage_entered_at = $2, updated_at = $2 WHERE contact_id = $3",
        [moved.to.as_str().into(), now.into(), contact_id.into()],
    ))
    .await?;
    let transition = ContactTransition::of_move(
        moved,
        contact_id,
        change.account_id,
        change.actor,
        Some(change.event_id.to_owned()),
        now,
    );
    insert_contact_transitions(conn, change.tenant_id, &[transition]).await?;
    record_first(
        conn,
        change.tenant_id,
        contact_id,
        moved.to.as_str(),
        ms(now),
    )
    .await?;
    Ok(())
}

/// An opportunity event as the buying group's contacts see it.
struct OpportunityChange<'a> {
    tenant_id: &'a str,
    account_id: &'a str,
    opportunity_id: &'a str,
    kind: OpportunityEventKind,
    actor: &'a str,
    event_id: &'a str,
}

async fn account_contact(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    account_id: &str,
    contact_id: &str,
) -> ServiceResult<Option<contact::Model>> {
    Ok(contact::Entity::find_by_id(contact_id)
        .filter(contact::Column::TenantId.eq(tenant_id))
        .filter(contact::Column::AccountId.eq(account_id))
        .one(conn)
        .await?)
}

/// Keeps lifecycle's view of the account's opportunities and moves the
/// buying group's contacts.
async fn apply_opportunity_to_contacts(
    conn: &impl ConnectionTrait,
    change: OpportunityChange<'_>,
    buying_group: &[String],
    now: DateTime<Utc>,
) -> ServiceResult<()> {
    let OpportunityChange {
        tenant_id,
        account_id,
        opportunity_id,
        kind,
        ..
    } = change;
    let status = match kind {
        OpportunityEventKind::Opened => OPEN,
        OpportunityEventKind::Won => "WON",
        OpportunityEventKind::Lost => "LOST",
    };
    conn.execute_raw(statement(
        conn,
        "INSERT INTO account_opportunities (tenant_id, opportunity_id, account_id, status) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant_id, opportunity_id) DO UPDATE SET status = $4",
        [tenant_id.into(), opportunity_id.into(), account_id.into(), status.into()],
    ))
    .await?;
    for contact_id in buying_group {
        conn.execute_raw(statement(
            conn,
            "INSERT INTO opportunity_contacts (tenant_id, opportunity_id, contact_id) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, opportunity_id, contact_id) DO NOTHING",
            [tenant_id.into(), opportunity_id.into(), contact_id.clone().into()],
        ))
        .await?;
    }
    let members: BTreeSet<String> = opportunity_contact::Entity::find()
        .filter(opportunity_contact::Column::TenantId.eq(tenant_id))
        .filter(opportunity_contact::Column::OpportunityId.eq(opportunity_id))
        .all(conn)
        .await?
        .into_iter()
        .map(|m| m.contact_id)
        .collect();
    for contact_id in &members {
        let Some(model) = account_contact(conn, tenant_id, account_id, contact_id).await? else {
            continue;
        };
        let current: ContactStage = model
            .stage
            .parse()
            .map_err(|e| corrupt("contacts.stage", e))?;
        let event = match kind {
            OpportunityEventKind::Opened => ContactEvent::JoinedOpenOpportunity,
            OpportunityEventKind::Won => ContactEvent::OpportunityWon,
            OpportunityEventKind::Lost => {
                if in_other_open_opportunity(conn, tenant_id, contact_id, opportunity_id).await? {
                    continue;
                }
                ContactEvent::LeftOpenOpportunities {
                    has_email: model.email.is_some(),
                    has_activity: model.has_activity,
                }
            }
        };
        if let Some(moved) = contact_rules::move_on(current, event) {
            move_contact(conn, &change, contact_id, &moved, now).await?;
        }
    }
    Ok(())
}

async fn in_other_open_opportunity(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    contact_id: &str,
    opportunity_id: &str,
) -> ServiceResult<bool> {
    let row = conn
        .query_one_raw(statement(
            conn,
            "SELECT COUNT(*) AS n FROM opportunity_contacts oc JOIN account_opportunities ao \
             ON ao.tenant_id = oc.tenant_id AND ao.opportunity_id = oc.opportunity_id \
             WHERE oc.tenant_id = $1 AND oc.contact_id = $2 AND oc.opportunity_id <> $3 AND ao.status = $4",
            [tenant_id.into(), contact_id.into(), opportunity_id.into(), OPEN.into()],
        ))
        .await?;
    Ok(row
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0)
        > 0)
}
