//! The stage history: transitions, the stage at a past time, the funnel
//! report (computed in SQL from the history table), and the watch feed.

use std::collections::HashMap;

use cascade_chassis::db::Stored;
use cascade_chassis::db::insert_chunks;
use cascade_chassis::page::PageRequest;
use cascade_chassis::{ServiceError, ServiceResult, TenantId};
use cascade_domain::{AccountStage, CustomerType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::accounts::account_model;
use super::contacts::contact_model;
use super::entities::{
    account, account_event, contact_transition, tenant_event_counter, transition,
};
use super::{Repository, from_ms, ms, statement};
use crate::convert;
use crate::domain::{ContactTransition, Notification, Transition};
use cascade_proto::lifecycle::v1 as pb;
use prost::Message;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};

/// The funnel report's figures per stage (`sql/funnel.sql`, after the stays
/// of `sql/funnel_stays.sql`).
const FUNNEL: &str = concat!(
    include_str!("sql/funnel_stays.sql"),
    include_str!("sql/funnel.sql")
);
/// The middle stays of a stage, by length (`sql/funnel_median.sql`).
const FUNNEL_MEDIAN: &str = concat!(
    include_str!("sql/funnel_stays.sql"),
    include_str!("sql/funnel_median.sql")
);

pub(crate) fn transition_from_model(m: transition::Model) -> ServiceResult<Transition> {
    Ok(Transition {
        from_stage: *m.from_stage,
        to_stage: *m.to_stage,
        from_customer_type: *m.from_customer_type,
        to_customer_type: *m.to_customer_type,
        cause: *m.cause,
        transition_id: m.transition_id,
        account_id: m.account_id,
        actor: m.actor,
        reason: m.reason,
        event_id: m.event_id,
        settings_version: m.settings_version,
        occurred_at: from_ms(m.occurred_at_ms),
    })
}

/// Position of a stage in the funnel, stored with each transition so SQL can
/// tell forward from backward moves. CHURNED ranks below TARGETED: losing a
/// customer is a move back, and winning it back a move forward.
pub(crate) fn rank(stage: AccountStage) -> i32 {
    if stage == AccountStage::Churned {
        return 0;
    }
    AccountStage::ALL
        .iter()
        .position(|s| *s == stage)
        .map_or(0, |i| i as i32 + 1)
}

/// Funnel figures of one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct FunnelRow {
    pub stage: AccountStage,
    /// Stays that began in the window (an account entering twice counts twice).
    pub entered: i64,
    /// Distinct accounts among them.
    pub accounts: i64,
    pub moved_forward: i64,
    pub moved_back: i64,
    pub stayed: i64,
    /// Stays that ended in the window went to PIPELINE (for QUALIFIED).
    pub to_pipeline: i64,
    pub median_ms: Option<i64>,
    /// Accounts at the stage now, and of them the ones at risk.
    pub now: (i64, i64),
}

/// One event of the watch feed.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchedEvent {
    pub seq: i64,
    pub account_id: String,
    pub to_stage: Option<String>,
    pub payload: Vec<u8>,
}

/// A transition as its stored row; `seq` is its number in the account's history.
pub(crate) fn transition_row(tenant_id: &str, seq: i64, t: &Transition) -> transition::ActiveModel {
    use sea_orm::ActiveValue::Set;
    transition::ActiveModel {
        transition_id: Set(t.transition_id.clone()),
        tenant_id: Set(tenant_id.to_owned()),
        account_id: Set(t.account_id.clone()),
        seq: Set(seq),
        from_stage: Set(Stored(t.from_stage)),
        to_stage: Set(Stored(t.to_stage)),
        from_rank: Set(rank(t.from_stage)),
        to_rank: Set(rank(t.to_stage)),
        from_customer_type: Set(Stored(t.from_customer_type)),
        to_customer_type: Set(Stored(t.to_customer_type)),
        cause: Set(Stored(t.cause)),
        actor: Set(t.actor.clone()),
        reason: Set(t.reason.clone()),
        event_id: Set(t.event_id.clone()),
        settings_version: Set(t.settings_version),
        occurred_at_ms: Set(ms(t.occurred_at)),
    }
}

/// One entry of a tenant's watch feed, stored as the message
/// WatchAccountEvents sends (so a resumed watch replays it as it was).
pub(crate) struct FeedEntry {
    account_id: String,
    /// Set for a transition: the stage filter of a watch matches on it.
    to_stage: Option<String>,
    payload: Vec<u8>,
}

impl FeedEntry {
    pub(crate) fn transition(t: &Transition) -> Self {
        Self::of(
            &t.account_id,
            Some(t.to_stage.as_str().to_owned()),
            pb::watch_account_events_response::Event::Transition(convert::transition(t)),
        )
    }

    pub(crate) fn notification(n: &Notification) -> Self {
        Self::of(
            &n.account_id,
            None,
            pb::watch_account_events_response::Event::Notification(convert::notification(n)),
        )
    }

    fn of(
        account_id: &str,
        to_stage: Option<String>,
        event: pb::watch_account_events_response::Event,
    ) -> Self {
        let message = pb::WatchAccountEventsResponse {
            cursor: String::new(),
            event: Some(event),
        };
        Self {
            account_id: account_id.to_owned(),
            to_stage,
            payload: message.encode_to_vec(),
        }
    }
}

/// A feed entry's payload with the notification it carries given its new
/// text from `texts` (by notification id, as an erasure rewrote them);
/// `None` when it carries none of them (or is not one this version reads).
pub(crate) fn with_notification_texts(
    payload: &[u8],
    texts: &HashMap<String, String>,
) -> Option<Vec<u8>> {
    let mut message = pb::WatchAccountEventsResponse::decode(payload).ok()?;
    let Some(pb::watch_account_events_response::Event::Notification(notification)) =
        message.event.as_mut()
    else {
        return None;
    };
    notification.text = texts.get(&notification.notification_id)?.clone();
    Some(message.encode_to_vec())
}

/// Appends events to a tenant's feed. The counter row is locked until the
/// transaction commits, so sequence numbers become visible in order and a
/// watcher resuming after `seq` never misses an earlier one.
pub(crate) async fn append_events(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    events: Vec<FeedEntry>,
    now_ms: i64,
) -> Result<(), DbErr> {
    if events.is_empty() {
        return Ok(());
    }
    let n = events.len() as i64;
    // Upsert the counter and read it back in one statement; the row stays
    // locked until commit.
    let counter = tenant_event_counter::Entity::insert(tenant_event_counter::ActiveModel {
        tenant_id: Set(tenant_id.to_owned()),
        last_seq: Set(n),
    })
    .on_conflict(
        OnConflict::column(tenant_event_counter::Column::TenantId)
            .value(
                tenant_event_counter::Column::LastSeq,
                Expr::col((
                    tenant_event_counter::Entity,
                    tenant_event_counter::Column::LastSeq,
                ))
                .add(n),
            )
            .to_owned(),
    )
    .exec_with_returning(conn)
    .await?;
    let first = counter.last_seq - n + 1;
    let rows: Vec<account_event::ActiveModel> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| account_event::ActiveModel {
            tenant_id: Set(tenant_id.to_owned()),
            seq: Set(first + i as i64),
            account_id: Set(e.account_id),
            to_stage: Set(e.to_stage),
            payload: Set(e.payload),
            created_at_ms: Set(now_ms),
        })
        .collect();
    insert_chunks(conn, rows, None).await?;
    Ok(())
}

/// Records contacts' stage changes, in the caller's transaction.
pub(crate) async fn insert_contact_transitions(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    transitions: &[ContactTransition],
) -> Result<(), DbErr> {
    use sea_orm::ActiveValue::Set;
    for chunk in cascade_chassis::db::statement_chunks(transitions, 10) {
        contact_transition::Entity::insert_many(chunk.iter().map(|t| {
            contact_transition::ActiveModel {
                transition_id: Set(t.transition_id.clone()),
                tenant_id: Set(tenant_id.to_owned()),
                contact_id: Set(t.contact_id.clone()),
                account_id: Set(t.account_id.clone()),
                from_stage: Set(Stored(t.from_stage)),
                to_stage: Set(Stored(t.to_stage)),
                cause: Set(Stored(t.cause)),
                actor: Set(t.actor.clone()),
                event_id: Set(t.event_id.clone()),
                occurred_at_ms: Set(ms(t.occurred_at)),
            }
        }))
        .exec_without_returning(conn)
        .await?;
    }
    Ok(())
}

fn contact_transition_from_model(m: contact_transition::Model) -> ServiceResult<ContactTransition> {
    Ok(ContactTransition {
        from_stage: *m.from_stage,
        to_stage: *m.to_stage,
        cause: *m.cause,
        transition_id: m.transition_id,
        contact_id: m.contact_id,
        account_id: m.account_id,
        actor: m.actor,
        event_id: m.event_id,
        occurred_at: from_ms(m.occurred_at_ms),
    })
}

impl Repository {
    /// A contact's stage changes, oldest first (ids are UUIDv7).
    pub async fn list_contact_transitions(
        &self,
        tenant: &TenantId,
        contact_id: &str,
        page: &PageRequest,
    ) -> ServiceResult<(Vec<ContactTransition>, String)> {
        contact_model(&self.db, tenant, contact_id).await?;
        let mut query = contact_transition::Entity::find()
            .filter(contact_transition::Column::TenantId.eq(tenant.as_str()))
            .filter(contact_transition::Column::ContactId.eq(contact_id))
            .order_by_asc(contact_transition::Column::TransitionId)
            .limit(page.fetch_limit());
        if let Some(after) = &page.after {
            query = query.filter(contact_transition::Column::TransitionId.gt(after.as_str()));
        }
        let (rows, token) = page.finish(query.all(&self.db).await?, |t| t.transition_id.clone());
        let transitions = rows
            .into_iter()
            .map(contact_transition_from_model)
            .collect::<ServiceResult<Vec<_>>>()?;
        Ok((transitions, token))
    }

    pub async fn list_transitions(
        &self,
        tenant: &TenantId,
        account_id: &str,
        page: &PageRequest,
    ) -> ServiceResult<(Vec<Transition>, String)> {
        account_model(&self.db, tenant, account_id).await?;
        let mut query = transition::Entity::find()
            .filter(transition::Column::TenantId.eq(tenant.as_str()))
            .filter(transition::Column::AccountId.eq(account_id))
            .order_by_asc(transition::Column::Seq)
            .limit(page.fetch_limit());
        if let Some(after) = &page.after {
            let after: i64 = after.parse().map_err(|_| {
                ServiceError::invalid("page_token", "is not a token returned by this list")
            })?;
            query = query.filter(transition::Column::Seq.gt(after));
        }
        let (rows, token) = page.finish(query.all(&self.db).await?, |t| t.seq.to_string());
        let transitions = rows
            .into_iter()
            .map(transition_from_model)
            .collect::<ServiceResult<Vec<_>>>()?;
        Ok((transitions, token))
    }

    /// The stage and customer type at `at_ms`, and the transition that set
    /// them (none while the account was still as created).
    pub async fn stage_at(
        &self,
        tenant: &TenantId,
        account_id: &str,
        at_ms: i64,
    ) -> ServiceResult<(AccountStage, CustomerType, Option<Transition>)> {
        let account = account_model(&self.db, tenant, account_id).await?;
        if at_ms < ms(account.created_at) {
            return Err(ServiceError::not_found("account", account_id)
                .because("it did not exist yet at that time"));
        }
        let last = transition::Entity::find()
            .filter(transition::Column::TenantId.eq(tenant.as_str()))
            .filter(transition::Column::AccountId.eq(account_id))
            .filter(transition::Column::OccurredAtMs.lte(at_ms))
            .order_by_desc(transition::Column::Seq)
            .one(&self.db)
            .await?;
        match last {
            Some(model) => {
                let t = transition_from_model(model)?;
                Ok((t.to_stage, t.to_customer_type, Some(t)))
            }
            None => {
                let (stage, customer_type) = crate::domain::NEW_ACCOUNT_STAGE;
                Ok((stage, customer_type, None))
            }
        }
    }

    /// Funnel figures for `[start_ms, end_ms)`, per stage. A stay is one entry
    /// into a stage (account creation enters TARGETED); it moved forward or
    /// back if the account's next transition came before the window's end,
    /// and stayed otherwise.
    pub async fn funnel(
        &self,
        tenant: &TenantId,
        start_ms: i64,
        end_ms: i64,
    ) -> ServiceResult<Vec<FunnelRow>> {
        let rows = self
            .db
            .query_all_raw(statement(
                &self.db,
                FUNNEL,
                [tenant.as_str().into(), start_ms.into(), end_ms.into()],
            ))
            .await?;
        let now = self.accounts_now(tenant).await?;
        let mut report = Vec::new();
        for stage in AccountStage::ALL {
            let row = rows.iter().find(|r| {
                r.try_get::<String>("", "stage")
                    .is_ok_and(|s| s == stage.as_str())
            });
            let get = |name: &str| -> ServiceResult<i64> {
                match row {
                    Some(r) => Ok(r.try_get::<Option<i64>>("", name)?.unwrap_or(0)),
                    None => Ok(0),
                }
            };
            let ended = get("ended")?;
            let median_ms = if ended > 0 {
                Some(
                    self.median_stay(tenant, *stage, start_ms, end_ms, ended)
                        .await?,
                )
            } else {
                None
            };
            report.push(FunnelRow {
                stage: *stage,
                entered: get("entered")?,
                accounts: get("accounts")?,
                moved_forward: get("moved_forward")?,
                moved_back: get("moved_back")?,
                stayed: get("stayed")?,
                to_pipeline: get("to_pipeline")?,
                median_ms,
                now: now.get(stage.as_str()).copied().unwrap_or_default(),
            });
        }
        Ok(report)
    }

    /// Accounts per stage now, and of them the ones at risk, by stage name.
    async fn accounts_now(
        &self,
        tenant: &TenantId,
    ) -> ServiceResult<std::collections::HashMap<String, (i64, i64)>> {
        #[derive(sea_orm::FromQueryResult)]
        struct Row {
            stage: String,
            accounts: i64,
            at_risk: i64,
        }
        let rows = account::Entity::find()
            .select_only()
            .column(account::Column::Stage)
            .column_as(account::Column::AccountId.count(), "accounts")
            .column_as(account::Column::AtRiskSource.count(), "at_risk")
            .filter(account::Column::TenantId.eq(tenant.as_str()))
            .group_by(account::Column::Stage)
            .into_model::<Row>()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.stage, (r.accounts, r.at_risk)))
            .collect())
    }

    /// The median length of the `ended` stays of a stage, found by the
    /// database (ORDER BY ... OFFSET), not by loading them.
    async fn median_stay(
        &self,
        tenant: &TenantId,
        stage: AccountStage,
        start_ms: i64,
        end_ms: i64,
        ended: i64,
    ) -> ServiceResult<i64> {
        // The two middle values (the same one when the count is odd).
        let take = if ended % 2 == 0 { 2_i64 } else { 1 };
        let rows = self
            .db
            .query_all_raw(statement(
                &self.db,
                FUNNEL_MEDIAN,
                [
                    tenant.as_str().into(),
                    start_ms.into(),
                    end_ms.into(),
                    stage.as_str().into(),
                    take.into(),
                    ((ended - 1) / 2).into(),
                ],
            ))
            .await?;
        let values = rows
            .iter()
            .map(|r| r.try_get::<i64>("", "duration"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(values.iter().sum::<i64>() / values.len().max(1) as i64)
    }

    /// Events of a tenant's feed after `after_seq`, oldest first.
    pub async fn events_after(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u64,
    ) -> ServiceResult<Vec<WatchedEvent>> {
        let rows = account_event::Entity::find()
            .filter(account_event::Column::TenantId.eq(tenant.as_str()))
            .filter(account_event::Column::Seq.gt(after_seq))
            .order_by_asc(account_event::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| WatchedEvent {
                seq: r.seq,
                account_id: r.account_id,
                to_stage: r.to_stage,
                payload: r.payload,
            })
            .collect())
    }

    /// The newest sequence number of a tenant's feed (0 when empty).
    pub async fn latest_event_seq(&self, tenant: &TenantId) -> ServiceResult<i64> {
        Ok(
            tenant_event_counter::Entity::find_by_id(tenant.as_str().to_owned())
                .one(&self.db)
                .await?
                .map_or(0, |c| c.last_seq),
        )
    }
}
