//! Reading stored activities for SimulateScoringModel.

use cascade_shared::{ServiceResult, TenantId};
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use super::entities::activity;
use super::{Repository, today};
use crate::domain::simulate::{ReplayActivity, Simulation, SimulationResult, Thresholds};
use crate::domain::{self, ScoringModel};

/// Activities read per statement.
const PAGE: u64 = 10_000;

impl Repository {
    /// Replays the stored activities of a window through the current and a
    /// proposed model, reading them in pages ordered by account (memory
    /// holds one page and one account's state at a time).
    pub async fn simulate(
        &self,
        tenant: &TenantId,
        current: (ScoringModel, Thresholds),
        proposed: (ScoringModel, Thresholds),
        window: (i64, i64),
        sample_size: usize,
    ) -> ServiceResult<SimulationResult> {
        let mut simulation = Simulation::new(current, proposed, today(), sample_size);
        // One read transaction: a consistent snapshot on both backends.
        let txn = self.db.begin().await?;
        let mut after: Option<(String, i64, String)> = None;
        loop {
            let mut query = activity::Entity::find()
                .select_only()
                .columns([
                    activity::Column::AccountId,
                    activity::Column::ContactId,
                    activity::Column::ActivityType,
                    activity::Column::OccurredAtMs,
                    activity::Column::EventId,
                ])
                .filter(activity::Column::TenantId.eq(tenant.as_str()))
                .filter(activity::Column::OccurredAtMs.gte(window.0))
                .filter(activity::Column::OccurredAtMs.lt(window.1));
            if let Some((account, ms, event)) = after.take() {
                query = query.filter(
                    Condition::any()
                        .add(activity::Column::AccountId.gt(account.clone()))
                        .add(
                            Condition::all()
                                .add(activity::Column::AccountId.eq(account))
                                .add(
                                    Condition::any()
                                        .add(activity::Column::OccurredAtMs.gt(ms))
                                        .add(
                                            Condition::all()
                                                .add(activity::Column::OccurredAtMs.eq(ms))
                                                .add(activity::Column::EventId.gt(event)),
                                        ),
                                ),
                        ),
                );
            }
            let rows: Vec<(String, Option<String>, String, i64, String)> = query
                .order_by_asc(activity::Column::AccountId)
                .order_by_asc(activity::Column::OccurredAtMs)
                .order_by_asc(activity::Column::EventId)
                .limit(PAGE)
                .into_tuple()
                .all(&txn)
                .await?;
            let full = rows.len() as u64 == PAGE;
            for (account_id, contact_id, activity_type, ms, event_id) in rows {
                simulation.push(
                    &account_id,
                    ReplayActivity {
                        contact_id: contact_id.as_deref(),
                        activity_type: &activity_type,
                        day: domain::day_of(ms),
                    },
                );
                after = Some((account_id, ms, event_id));
            }
            if !full {
                break;
            }
        }
        txn.commit().await?;
        Ok(simulation.finish())
    }
}
