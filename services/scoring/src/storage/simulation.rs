//! Reading stored activities for SimulateScoringModel.

use std::ops::ControlFlow;

use cascade_chassis::{ServiceResult, TenantId};
use futures::TryStreamExt;
use sea_orm::sea_query::{Alias, Asterisk, Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Select,
};

use super::entities::{activity, contact_status};
use super::scores::counted_activities;
use super::{Repository, today};
use crate::domain::ScoringModel;
use crate::domain::simulate::{Progress, ReplayActivity, Simulation, SimulationResult, Thresholds};

const DAY_MS: i64 = 86_400_000;

/// The tenant's activities that happened in `[window.0, window.1)`.
fn in_window(tenant: &TenantId, window: (i64, i64)) -> Select<activity::Entity> {
    activity::Entity::find()
        .filter(activity::Column::TenantId.eq(tenant.as_str()))
        .filter(activity::Column::OccurredAtMs.gte(window.0))
        .filter(activity::Column::OccurredAtMs.lt(window.1))
}

/// Of those, the activities of inactive contacts (they count toward no
/// score, so the replay leaves them out), found through their accounts (the
/// ledger index) rather than by reading every activity's contact.
fn of_inactive_contacts(tenant: &TenantId, window: (i64, i64)) -> Select<activity::Entity> {
    let t = tenant.as_str();
    let inactive = |column: contact_status::Column| {
        Query::select()
            .column((contact_status::Entity, column))
            .from(contact_status::Entity)
            .and_where(Expr::col((contact_status::Entity, contact_status::Column::TenantId)).eq(t))
            .and_where(
                Expr::col((contact_status::Entity, contact_status::Column::Inactive)).eq(true),
            )
            .to_owned()
    };
    in_window(tenant, window)
        .filter(
            Expr::col(activity::Column::AccountId.as_column_ref())
                .in_subquery(inactive(contact_status::Column::AccountId)),
        )
        .filter(
            Expr::col(activity::Column::ContactId.as_column_ref())
                .in_subquery(inactive(contact_status::Column::ContactId)),
        )
}

async fn count(
    conn: &impl ConnectionTrait,
    select: Select<activity::Entity>,
) -> Result<i64, DbErr> {
    Ok(select
        .select_only()
        .column_as(Expr::col(Asterisk).count(), "activities")
        .into_tuple::<i64>()
        .one(conn)
        .await?
        .unwrap_or(0))
}

impl Repository {
    /// How many activities a replay of the window reads: the total its
    /// progress is measured against. `COUNT(*)` over the window index alone,
    /// less the inactive contacts' activities.
    pub async fn count_in_window(
        &self,
        tenant: &TenantId,
        window: (i64, i64),
    ) -> ServiceResult<i64> {
        let all = count(&self.db, in_window(tenant, window)).await?;
        let left_out = count(&self.db, of_inactive_contacts(tenant, window)).await?;
        Ok(all - left_out)
    }

    /// Replays the stored activities of a window through a proposed model
    /// beside the points they were counted. The database groups them by
    /// account, contact, type, UTC day and stored intent (a rule scores those
    /// alike), sums their counted points, and streams the groups ordered by
    /// account and day: one scan of the window, and memory holds one group
    /// and one account's state at a time. Reading activities one by one
    /// through the ledger index instead cost a random table read each
    /// (22-34 s per million, docs/performance.md).
    ///
    /// `watch` sees the progress after every group and may stop the replay
    /// (`ControlFlow::Break`: the caller is gone), which then answers `None`.
    pub async fn simulate(
        &self,
        tenant: &TenantId,
        current: (ScoringModel, Thresholds),
        proposed: (ScoringModel, Thresholds),
        window: (i64, i64),
        sample_size: usize,
        mut watch: impl FnMut(Progress) -> ControlFlow<()>,
    ) -> ServiceResult<Option<SimulationResult>> {
        // A window that starts later also reads, of the types whose rules
        // remember use (a first occurrence, a daily cap), what came before
        // it: the proposed side then knows what its people used already.
        let remembered: Vec<String> = proposed
            .0
            .rules
            .iter()
            .filter(|r| r.first_occurrence_only || r.daily_cap_per_contact > 0)
            .map(|r| r.activity_type.clone())
            .collect();
        let mut read = activity::Entity::find()
            .filter(activity::Column::TenantId.eq(tenant.as_str()))
            .filter(activity::Column::OccurredAtMs.lt(window.1));
        if window.0 > i64::MIN {
            let mut wanted = Condition::any().add(activity::Column::OccurredAtMs.gte(window.0));
            if !remembered.is_empty() {
                wanted = wanted.add(activity::Column::ActivityType.is_in(remembered));
            }
            read = read.filter(wanted);
        }
        let mut simulation = Simulation::new(current, proposed, today(), sample_size);
        // Times are validated to be after 1970, so integer division is the
        // UTC day (`domain::day_of`) on both backends.
        let day = Expr::col(activity::Column::OccurredAtMs).div(DAY_MS);
        let by_day = || Expr::col(Alias::new("day"));
        let replayed = || Expr::col(Alias::new("in_window"));
        // One statement: a consistent snapshot on both backends.
        let mut groups = read
            .filter(counted_activities(
                tenant.as_str(),
                activity::Column::ContactId,
            ))
            .select_only()
            .columns([
                activity::Column::AccountId,
                activity::Column::ContactId,
                activity::Column::ActivityType,
            ])
            .column_as(day, "day")
            .column_as(
                Expr::col(activity::Column::OccurredAtMs).gte(window.0),
                "in_window",
            )
            .column(activity::Column::Intent)
            .column_as(Expr::col(activity::Column::EventId).count(), "activities")
            // SUM of an INTEGER column is a BIGINT on both backends.
            .column_as(Expr::col(activity::Column::CountedPoints).sum(), "points")
            .group_by(activity::Column::AccountId)
            .group_by(activity::Column::ContactId)
            .group_by(activity::Column::ActivityType)
            .group_by(by_day())
            .group_by(replayed())
            .group_by(activity::Column::Intent)
            .order_by_asc(activity::Column::AccountId)
            .order_by_asc(by_day())
            // On the window's first day, what came before it first.
            .order_by_asc(replayed())
            .into_tuple::<(String, Option<String>, String, i64, bool, bool, i64, i64)>()
            .stream(&self.db)
            .await?;
        while let Some((
            account_id,
            contact_id,
            activity_type,
            day,
            in_window,
            intent,
            count,
            points,
        )) = groups.try_next().await?
        {
            simulation.push(
                &account_id,
                ReplayActivity {
                    contact_id: contact_id.as_deref(),
                    activity_type: &activity_type,
                    day,
                    count,
                    counted_points: points,
                    intent,
                    in_window,
                },
            );
            if watch(simulation.progress()).is_break() {
                return Ok(None);
            }
        }
        Ok(Some(simulation.finish()))
    }
}
