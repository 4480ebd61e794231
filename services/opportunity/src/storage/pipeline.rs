//! The pipeline report's figures, summed by the database (a report query:
//! `sql/pipeline_*.sql`, the same text on both backends).

use std::collections::BTreeMap;

use cascade_chassis::{ServiceError, ServiceResult, TenantId};
use sea_orm::{ConnectionTrait, QueryResult};

use super::Repository;
use crate::domain::{Status, Step};

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

impl Repository {
    /// Open opportunities per step, and won / lost ones closed in
    /// `[start_ms, end_ms)`: counted, and summed per currency.
    pub async fn pipeline(
        &self,
        tenant: &TenantId,
        start_ms: i64,
        end_ms: i64,
    ) -> ServiceResult<Pipeline> {
        let t = tenant.as_str();
        let db = &self.db;
        let mut pipeline = Pipeline::default();
        let open = db
            .query_all_raw(cascade_chassis::db::statement(
                db.get_database_backend(),
                include_str!("sql/pipeline_open.sql"),
                [t.into(), Status::Open.as_str().into()],
            ))
            .await?;
        for row in open {
            let currency: Option<String> = row.try_get("", "value_currency")?;
            let step: String = row.try_get("", "step")?;
            let step: Step = step
                .parse()
                .map_err(|e| ServiceError::internal(anyhow::anyhow!("{e}")))?;
            let n: i64 = row.try_get("", "n")?;
            let counts = pipeline.open.entry(step).or_default();
            counts.0 += n;
            match currency {
                Some(currency) => {
                    let total = sum_nanos(&row)?;
                    pipeline
                        .by_currency
                        .entry(currency)
                        .or_default()
                        .open
                        .insert(step, (n, total));
                }
                None => counts.1 += n,
            }
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
            let won = row.try_get::<String>("", "status")? == Status::Won.as_str();
            let n: i64 = row.try_get("", "n")?;
            let counts = if won {
                &mut pipeline.won
            } else {
                &mut pipeline.lost
            };
            counts.0 += n;
            let Some(currency) = currency else {
                counts.1 += n;
                continue;
            };
            let figures = (n, sum_nanos(&row)?);
            let entry = pipeline.by_currency.entry(currency).or_default();
            if won {
                entry.won = figures;
            } else {
                entry.lost = figures;
            }
        }
        Ok(pipeline)
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
