//! The ledger: an account's stored activities, oldest first, with what each
//! was scored as and its decay today. Those of inactive contacts are left
//! out: they are kept, but are no part of the account's score.

use cascade_chassis::page::PageRequest;
use cascade_chassis::{ServiceError, ServiceResult, TenantId};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entities::activity;
use super::models::current_model;
use super::scores::counted_activities;
use super::{LedgerLine, Repository, today};
use crate::domain;

impl Repository {
    /// The ledger of an account, oldest activity first.
    pub async fn ledger(
        &self,
        tenant: &TenantId,
        account_id: &str,
        page: &PageRequest,
    ) -> ServiceResult<(Vec<LedgerLine>, String)> {
        let t = tenant.as_str();
        let mut query = activity::Entity::find()
            .filter(activity::Column::TenantId.eq(t))
            .filter(activity::Column::AccountId.eq(account_id))
            .filter(counted_activities(t, activity::Column::ContactId));
        if let Some(token) = &page.after {
            let (ms, id) = token
                .split_once('|')
                .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_owned())))
                .ok_or_else(|| {
                    ServiceError::invalid("page_token", "is not a token returned by this list")
                })?;
            query = query.filter(
                Condition::any()
                    .add(activity::Column::OccurredAtMs.gt(ms))
                    .add(
                        Condition::all()
                            .add(activity::Column::OccurredAtMs.eq(ms))
                            .add(activity::Column::EventId.gt(id)),
                    ),
            );
        }
        let model = current_model(&self.db, t).await?;
        let today = today();
        let rows = query
            .order_by_asc(activity::Column::OccurredAtMs)
            .order_by_asc(activity::Column::EventId)
            .limit(page.fetch_limit())
            .all(&self.db)
            .await?;
        let lines = rows
            .into_iter()
            .map(|row| LedgerLine {
                decay_factor: domain::decay_factor(
                    model.decay_half_life_days,
                    domain::day_of(row.occurred_at_ms),
                    today,
                ),
                event_id: row.event_id,
                activity_type: row.activity_type,
                contact_id: row.contact_id,
                occurred_at_ms: row.occurred_at_ms,
                model_version: row.model_version,
                rule_points: row.rule_points,
                counted_points: row.counted_points,
                capped: row.capped,
                intent: row.intent,
            })
            .collect();
        Ok(page.finish(lines, |l| format!("{}|{}", l.occurred_at_ms, l.event_id)))
    }
}
