//! The pipeline report's figures, summed by the database (a report query:
//! `sql/pipeline_*.sql`, the same text on both backends).

use std::collections::BTreeMap;

use cascade_chassis::db::Stored;
use cascade_chassis::{ServiceResult, TenantId};
use sea_orm::{ConnectionTrait, QueryResult};

use super::Repository;
use crate::domain::{OpportunityKind, Status, Step};

/// Sums of one currency for the pipeline report: the deals valued in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CurrencySums {
    /// Per open step: (count, total nanos).
    pub open: BTreeMap<Step, (i64, i128)>,
    pub won: (i64, i128),
    pub lost: (i64, i128),
}

/// The pipeline report's figures: every deal counted, valued or not, and
/// the sums per currency of the deals that have an amount or estimate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pipeline {
    /// Every open deal per step: (count, of which without amount or estimate).
    pub open: BTreeMap<Step, (i64, i64)>,
    /// Every deal won / lost in the window: (count, of which without money).
    pub won: (i64, i64),
    pub lost: (i64, i64),
    pub by_currency: BTreeMap<String, CurrencySums>,
}

/// The pipeline report's figures for all deals and per kind: each row of
/// the report queries (grouped by kind) adds to its kind and to the total.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineReport {
    pub total: Pipeline,
    /// Only the kinds that have deals; a kind without is all zeros.
    pub by_kind: BTreeMap<OpportunityKind, Pipeline>,
}

impl Pipeline {
    /// `n` open deals at `step` valued at `total` nanos of `currency`
    /// (`None`: deals without an amount or estimate).
    fn add_open(&mut self, step: Step, currency: Option<&str>, n: i64, total: i128) {
        let counts = self.open.entry(step).or_default();
        counts.0 += n;
        match currency {
            Some(currency) => {
                let sums = self.currency(currency).open.entry(step).or_default();
                sums.0 += n;
                sums.1 += total;
            }
            None => counts.1 += n,
        }
    }

    /// `n` deals won (or lost) in the window, as [`Pipeline::add_open`].
    fn add_closed(&mut self, won: bool, currency: Option<&str>, n: i64, total: i128) {
        let counts = if won { &mut self.won } else { &mut self.lost };
        counts.0 += n;
        let Some(currency) = currency else {
            counts.1 += n;
            return;
        };
        let sums = self.currency(currency);
        let sums = if won { &mut sums.won } else { &mut sums.lost };
        sums.0 += n;
        sums.1 += total;
    }

    fn currency(&mut self, currency: &str) -> &mut CurrencySums {
        self.by_currency.entry(currency.to_owned()).or_default()
    }
}

impl PipelineReport {
    fn kind(&mut self, row: &QueryResult) -> ServiceResult<&mut Pipeline> {
        let kind: Stored<OpportunityKind> = row.try_get("", "kind")?;
        Ok(self.by_kind.entry(kind.0).or_default())
    }
}

impl Repository {
    /// Open opportunities per step, and won / lost ones closed in
    /// `[start_ms, end_ms)`: counted, and summed per currency, in all and
    /// per kind.
    pub async fn pipeline(
        &self,
        tenant: &TenantId,
        start_ms: i64,
        end_ms: i64,
    ) -> ServiceResult<PipelineReport> {
        let t = tenant.as_str();
        let db = &self.db;
        let mut report = PipelineReport::default();
        let open = db
            .query_all_raw(cascade_chassis::db::statement(
                db.get_database_backend(),
                include_str!("sql/pipeline_open.sql"),
                [t.into(), Status::Open.as_str().into()],
            ))
            .await?;
        for row in open {
            let currency: Option<String> = row.try_get("", "value_currency")?;
            let step: Stored<Step> = row.try_get("", "step")?;
            let n: i64 = row.try_get("", "n")?;
            let total = sum_nanos(&row)?;
            report.total.add_open(step.0, currency.as_deref(), n, total);
            report
                .kind(&row)?
                .add_open(step.0, currency.as_deref(), n, total);
        }
        let closed = db
            .query_all_raw(cascade_chassis::db::statement(
                db.get_database_backend(),
                include_str!("sql/pipeline_closed.sql"),
                [
                    t.into(),
                    Status::Open.as_str().into(),
                    start_ms.into(),
                    end_ms.into(),
                ],
            ))
            .await?;
        for row in closed {
            let currency: Option<String> = row.try_get("", "value_currency")?;
            let status: Stored<Status> = row.try_get("", "status")?;
            let won = status.0 == Status::Won;
            let n: i64 = row.try_get("", "n")?;
            let total = sum_nanos(&row)?;
            report.total.add_closed(won, currency.as_deref(), n, total);
            report
                .kind(&row)?
                .add_closed(won, currency.as_deref(), n, total);
        }
        Ok(report)
    }
}

/// The summed amount of a row (millions, units and nanos summed apart so no
/// accepted input overflows; see the .sql files), in nanos.
fn sum_nanos(row: &QueryResult) -> ServiceResult<i128> {
    let millions: Option<i64> = row.try_get("", "millions")?;
    let units: Option<i64> = row.try_get("", "units")?;
    let nanos: Option<i64> = row.try_get("", "nanos")?;
    let units = i128::from(millions.unwrap_or(0)) * 1_000_000 + i128::from(units.unwrap_or(0));
    Ok(units * 1_000_000_000 + i128::from(nanos.unwrap_or(0)))
}
