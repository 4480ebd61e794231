//! Decayed scores reach lifecycle without new activity: the stored scores
//! of tenants whose model decays are recomputed once their day has passed,
//! and every account whose totals moved is delivered (`crate::decay` runs
//! this every `decay.refresh_interval_ms`). Without it, a customer that goes
//! dark would keep its last score in lifecycle, and lifecycle's at-risk rule
//! (engagement below a threshold) would never see it fall.

use cascade_chassis::ServiceResult;
use cascade_chassis::db::begin_write;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::Repository;
use super::entities::{account_score, scoring_model};
use super::models::current_model;
use super::scores::{lock_stored_scores, store_recomputed};
use crate::domain;

/// Accounts recomputed per transaction: short transactions, so batches of
/// the same accounts wait little (on SQLite, every write waits).
pub const REFRESH_PAGE: usize = 256;

/// What one refresh did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Accounts whose stored scores were brought up to the day.
    pub accounts: usize,
    /// Of those, how many moved, so were delivered to lifecycle.
    pub delivered: usize,
}

impl Repository {
    /// Brings the stored scores of every tenant whose current model decays
    /// up to `today` (a UTC day number, `domain::day_of`) with
    /// [`refresh_stale_scores`](Self::refresh_stale_scores).
    pub async fn refresh_decayed_scores(&self, today: i64) -> ServiceResult<Refreshed> {
        // Tenants that ever had a decaying model; the current one decides.
        let tenants: Vec<String> = scoring_model::Entity::find()
            .select_only()
            .column(scoring_model::Column::TenantId)
            .filter(scoring_model::Column::DecayHalfLifeDays.gt(0.0))
            .distinct()
            .order_by_asc(scoring_model::Column::TenantId)
            .into_tuple()
            .all(&self.db)
            .await?;
        let mut done = Refreshed::default();
        for t in &tenants {
            if current_model(&self.db, t).await?.decays() {
                let tenant = self.refresh_stale_scores(t, today).await?;
                done.accounts += tenant.accounts;
                done.delivered += tenant.delivered;
            }
        }
        Ok(done)
    }

    /// Recomputes the tenant's stored scores that are stale at `today`
    /// (`domain::recompute_before`: of an earlier day with decay, or marked
    /// by a model change) through the path ingest uses, stores them, and
    /// delivers to lifecycle each account whose totals moved, so whatever
    /// brings stored scores up to date (this refresh, ListTopAccounts) also
    /// tells lifecycle. Pages of [`REFRESH_PAGE`] accounts in key order, each
    /// in its own transaction: memory and lock times stay bounded whatever
    /// the number of accounts. Safe on several replicas at once: each page
    /// locks its accounts and skips those another refreshed meanwhile.
    pub async fn refresh_stale_scores(&self, t: &str, today: i64) -> ServiceResult<Refreshed> {
        let mut done = Refreshed::default();
        let mut after = String::new();
        loop {
            let model = current_model(&self.db, t).await?;
            let stale: Vec<String> = account_score::Entity::find()
                .select_only()
                .column(account_score::Column::AccountId)
                .filter(account_score::Column::TenantId.eq(t))
                .filter(account_score::Column::AccountId.gt(after.as_str()))
                .filter(
                    account_score::Column::ComputedDay.lt(domain::recompute_before(&model, today)),
                )
                .order_by_asc(account_score::Column::AccountId)
                .limit(REFRESH_PAGE as u64)
                .into_tuple()
                .all(&self.db)
                .await?;
            let Some(last) = stale.last().cloned() else {
                break;
            };
            let page = self.refresh_page(t, today, &stale).await?;
            done.accounts += page.accounts;
            done.delivered += page.delivered;
            if stale.len() < REFRESH_PAGE {
                break;
            }
            after = last;
        }
        Ok(done)
    }

    /// One page of [`refresh_stale_scores`](Self::refresh_stale_scores) in
    /// one transaction.
    async fn refresh_page(
        &self,
        t: &str,
        today: i64,
        accounts: &[String],
    ) -> ServiceResult<Refreshed> {
        let ids: Vec<&str> = accounts.iter().map(String::as_str).collect();
        let txn = begin_write(&self.db).await?;
        let stored = lock_stored_scores(&txn, t, &ids).await?;
        // Read under the locks: a model changed meanwhile marked these
        // scores stale, and they are recomputed with the new one.
        let model = current_model(&txn, t).await?;
        let before = domain::recompute_before(&model, today);
        // A batch (or another replica) may have brought some up to date.
        let stale: Vec<&str> = ids
            .into_iter()
            .filter(|id| stored.get(*id).is_some_and(|s| s.computed_day < before))
            .collect();
        let delivered = store_recomputed(&txn, t, (&model, today), &stored, &stale, true).await?;
        txn.commit().await?;
        if delivered > 0 {
            self.deliveries_written.notify_one();
        }
        Ok(Refreshed {
            accounts: stale.len(),
            delivered,
        })
    }
}
