//! Opportunities and settings as the API shows them.

use cascade_chassis::time::to_timestamp;
use cascade_chassis::{ServiceError, ServiceResult};
use cascade_domain::Money;
use cascade_proto::common::v1 as common;
use cascade_proto::opportunity::v1 as pb;

use crate::domain::{self, Date, Opportunity, Settings, Step};
use crate::storage::Pipeline;

/// One currency's part of the pipeline report. A sum beyond what Money
/// carries is OUT_OF_RANGE, never a wrong figure.
pub(super) fn currency_figures(
    settings: &Settings,
    currency: &str,
    sums: &crate::storage::CurrencySums,
) -> ServiceResult<pb::CurrencyPipeline> {
    let code: [u8; 3] = currency.as_bytes().try_into().map_err(|_| {
        ServiceError::internal(anyhow::anyhow!(
            "stored currency {currency:?} is not a code"
        ))
    })?;
    let amount = |what: &str, nanos: i128| {
        Money::sum_to_proto(code, nanos).map(Some).ok_or_else(|| {
            ServiceError::OutOfRange(format!(
                "the {what} in {currency} is beyond 9.2 * 10^18 units and cannot be reported"
            ))
        })
    };
    let mut steps = Vec::with_capacity(Step::ALL.len());
    for step in Step::ALL {
        let (count, total) = sums.open.get(step).copied().unwrap_or((0, 0));
        steps.push(pb::StepPipeline {
            step: step.to_proto(),
            display_name: settings.display_name(*step),
            open_count: count,
            total_amount: amount("open pipeline", total)?,
            weighted_amount: amount(
                "weighted pipeline",
                total * i128::from(settings.probability(*step)) / 100,
            )?,
        });
    }
    Ok(pb::CurrencyPipeline {
        currency_code: currency.to_owned(),
        steps,
        won_count: sums.won.0,
        won_amount: amount("won amount", sums.won.1)?,
        lost_count: sums.lost.0,
        lost_amount: amount("lost amount", sums.lost.1)?,
    })
}

/// Every deal of `figures` counted, valued or not.
pub(super) fn counts(settings: &Settings, figures: &Pipeline) -> pb::PipelineCounts {
    pb::PipelineCounts {
        steps: Step::ALL
            .iter()
            .map(|step| {
                let (open, without) = figures.open.get(step).copied().unwrap_or((0, 0));
                pb::StepCount {
                    step: step.to_proto(),
                    display_name: settings.display_name(*step),
                    open_count: open,
                    without_amount_count: without,
                }
            })
            .collect(),
        won_count: figures.won.0,
        won_without_amount_count: figures.won.1,
        lost_count: figures.lost.0,
        lost_without_amount_count: figures.lost.1,
    }
}

/// `figures` in the tenant's currency.
pub(super) fn tenant_currency_figures(
    settings: &Settings,
    figures: &Pipeline,
) -> ServiceResult<pb::CurrencyPipeline> {
    let empty = crate::storage::CurrencySums::default();
    currency_figures(
        settings,
        &settings.currency,
        figures
            .by_currency
            .get(&settings.currency)
            .unwrap_or(&empty),
    )
}

fn date_to_proto(d: Date) -> common::Date {
    common::Date {
        year: d.year,
        month: d.month as i32,
        day: d.day as i32,
    }
}

fn money_to_proto(m: Option<Money>) -> Option<common::Money> {
    m.map(Money::to_proto)
}

pub(super) fn to_proto(o: Opportunity, settings: &Settings) -> pb::Opportunity {
    let progress = Step::ALL
        .iter()
        .map(|step| {
            let p = domain::step_progress(&o, settings, *step);
            pb::StepProgress {
                step: step.to_proto(),
                display_name: settings.display_name(*step),
                complete: p.complete(),
                sections: p
                    .sections
                    .iter()
                    .map(|s| pb::SectionProgress {
                        section: s.section.to_owned(),
                        complete: s.complete(),
                        missing_fields: s.missing.iter().map(|m| (*m).to_owned()).collect(),
                    })
                    .collect(),
            }
        })
        .collect();
    let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(to_timestamp);
    pb::Opportunity {
        opportunity_id: o.opportunity_id,
        account_id: o.account_id,
        name: o.name,
        owner_id: o.owner_id,
        kind: o.kind.to_proto(),
        step: o.step.to_proto(),
        status: o.status.to_proto(),
        estimated_deal_size: money_to_proto(o.estimated_deal_size),
        amount: money_to_proto(o.amount),
        amount_from_line_items: o.amount_from_line_items,
        close_date: o.close_date.map(date_to_proto),
        current_situation: o.current_situation,
        needs: o.needs,
        buying_group_contact_ids: o.buying_group,
        stakeholders: o
            .stakeholders
            .into_iter()
            .map(|s| pb::Stakeholder {
                contact_id: s.contact_id.unwrap_or_default(),
                name: s.name,
                role: s.role,
            })
            .collect(),
        competitors: o
            .competitors
            .into_iter()
            .map(|c| pb::Competitor {
                name: c.name,
                notes: c.notes,
            })
            .collect(),
        line_items: o
            .line_items
            .into_iter()
            .map(|i| pb::LineItem {
                product: i.product,
                kind: i.kind,
                quantity: i.quantity,
                unit_price: Money::from_proto(&common::Money {
                    currency_code: i.currency.clone(),
                    units: i64::try_from(i.unit_price_nanos.div_euclid(1_000_000_000)).unwrap_or(0),
                    nanos: i.unit_price_nanos.rem_euclid(1_000_000_000) as i32,
                })
                .ok()
                .map(Money::to_proto),
                end_date: i.end_date.map(date_to_proto),
            })
            .collect(),
        new_reality: o.new_reality,
        contract: o.contract.map(|c| pb::Contract {
            document_ref: c.document_ref,
            signed: c.signed,
            sign_time: c.sign_time_ms.and_then(at),
            end_date: c.end_date.map(date_to_proto),
        }),
        lost_reason: o.lost_reason,
        step_entries: o
            .step_entries
            .into_iter()
            .map(|(step, ms)| pb::StepEntry {
                step: step.to_proto(),
                enter_time: at(ms),
            })
            .collect(),
        progress,
        create_time: at(o.created_at_ms),
        update_time: at(o.updated_at_ms),
        close_time: o.closed_at_ms.and_then(at),
    }
}

pub(super) fn settings_to_proto(s: &Settings) -> pb::OpportunitySettings {
    pb::OpportunitySettings {
        version: s.version,
        large_deal_threshold: Some(s.large_deal_threshold.to_proto()),
        discover_step_display_name: s.discover_display_name.clone(),
        step_probabilities: Step::ALL
            .iter()
            .map(|step| pb::StepProbability {
                step: step.to_proto(),
                percent: s.probability(*step),
            })
            .collect(),
        currency_code: s.currency.clone(),
        update_time: s
            .updated_at_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(to_timestamp),
        updated_by: s.updated_by.clone().unwrap_or_default(),
    }
}
