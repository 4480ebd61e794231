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
    // What the service sets, taken before the rest moves into `written`.
    let opportunity_id = o.opportunity_id.clone();
    let (step, status) = (o.step.to_proto(), o.status.to_proto());
    let lost_reason = o.lost_reason.clone();
    let step_entries = o
        .step_entries
        .iter()
        .map(|(step, ms)| pb::StepEntry {
            step: step.to_proto(),
            enter_time: at(*ms),
        })
        .collect();
    let (create_time, update_time) = (at(o.created_at_ms), at(o.updated_at_ms));
    let close_time = o.closed_at_ms.and_then(at);
    pb::Opportunity {
        opportunity_id,
        step,
        status,
        lost_reason,
        step_entries,
        progress,
        create_time,
        update_time,
        close_time,
        ..written(o)
    }
}

/// The fields a caller writes (`account_id` on create, and `fields::WRITABLE`),
/// as the service keeps them: ids canonical, text trimmed, kinds' defaults
/// filled in, an amount derived from line items. What a CreateOpportunity
/// asks, for its request key's digest, is exactly this.
pub(super) fn written(o: Opportunity) -> pb::Opportunity {
    pb::Opportunity {
        account_id: o.account_id,
        name: o.name,
        owner_id: o.owner_id,
        kind: o.kind.to_proto(),
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
                // As stored, without the checks a new price gets: a code
                // accepted before ISO 4217 was checked still reads back.
                unit_price: <[u8; 3]>::try_from(i.currency.as_bytes())
                    .ok()
                    .map(|currency| {
                        Money {
                            currency,
                            nanos: i.unit_price_nanos,
                        }
                        .to_proto()
                    }),
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
        ..Default::default()
    }
}

fn at(ms: i64) -> Option<prost_types::Timestamp> {
    chrono::DateTime::from_timestamp_millis(ms).map(to_timestamp)
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use cascade_chassis::idempotency::digest;

    use super::*;
    use crate::api::fields::WRITABLE;
    use crate::domain::{Competitor, Contract, LineItem, OpportunityKind, Stakeholder, Status};

    const ID: &str = "0192f0c4-8b6e-7cc2-9d7e-7d1c7f3b5a10";

    fn usd(units: i128) -> Option<Money> {
        Some(Money {
            currency: *b"USD",
            nanos: units * 1_000_000_000,
        })
    }

    fn deal() -> Opportunity {
        Opportunity {
            name: "Platform".into(),
            owner_id: "jo".into(),
            estimated_deal_size: usd(25_000),
            buying_group: vec![ID.into()],
            ..Opportunity::opened(
                "0192f0c4-8b6e-7cc2-9d7e-7d1c7f3b5a99".into(),
                ID.into(),
                1_000,
            )
        }
    }

    fn asked(o: &Opportunity) -> String {
        digest(&written(o.clone()))
    }

    #[test]
    fn what_the_service_sets_is_not_written() {
        let later = Opportunity {
            opportunity_id: "0192f0c4-8b6e-7cc2-9d7e-7d1c7f3b5a98".into(),
            step: Step::Propose,
            status: Status::Won,
            lost_reason: "copied".into(),
            step_entries: vec![(Step::Discover, 2_000), (Step::Qualify, 3_000)],
            created_at_ms: 2_000,
            updated_at_ms: 3_000,
            closed_at_ms: Some(3_000),
            ..deal()
        };
        assert_eq!(asked(&deal()), asked(&later));
    }

    #[test]
    fn every_field_a_caller_writes_is_written() {
        let changes: Vec<(&str, Opportunity)> = vec![
            (
                "account_id",
                Opportunity {
                    account_id: "0192f0c4-8b6e-7cc2-9d7e-7d1c7f3b5a11".into(),
                    ..deal()
                },
            ),
            (
                "name",
                Opportunity {
                    name: "Services".into(),
                    ..deal()
                },
            ),
            (
                "kind",
                Opportunity {
                    kind: OpportunityKind::Renewal,
                    ..deal()
                },
            ),
            (
                "owner_id",
                Opportunity {
                    owner_id: "sam".into(),
                    ..deal()
                },
            ),
            (
                "estimated_deal_size",
                Opportunity {
                    estimated_deal_size: usd(26_000),
                    ..deal()
                },
            ),
            (
                "amount",
                Opportunity {
                    amount: usd(1),
                    ..deal()
                },
            ),
            (
                "amount_from_line_items",
                Opportunity {
                    amount_from_line_items: true,
                    ..deal()
                },
            ),
            (
                "close_date",
                Opportunity {
                    close_date: Date::new(2027, 6, 30),
                    ..deal()
                },
            ),
            (
                "current_situation",
                Opportunity {
                    current_situation: "spreadsheets".into(),
                    ..deal()
                },
            ),
            (
                "needs",
                Opportunity {
                    needs: "one lifecycle".into(),
                    ..deal()
                },
            ),
            (
                "buying_group_contact_ids",
                Opportunity {
                    buying_group: Vec::new(),
                    ..deal()
                },
            ),
            (
                "stakeholders",
                Opportunity {
                    stakeholders: vec![Stakeholder {
                        contact_id: None,
                        name: "CFO".into(),
                        role: 1,
                    }],
                    ..deal()
                },
            ),
            (
                "competitors",
                Opportunity {
                    competitors: vec![Competitor {
                        name: "Rival".into(),
                        notes: String::new(),
                    }],
                    ..deal()
                },
            ),
            (
                "line_items",
                Opportunity {
                    line_items: vec![LineItem {
                        product: "Platform".into(),
                        kind: 1,
                        quantity: 1,
                        currency: "USD".into(),
                        unit_price_nanos: 1_000_000_000,
                        end_date: None,
                    }],
                    ..deal()
                },
            ),
            (
                "new_reality",
                Opportunity {
                    new_reality: "one place".into(),
                    ..deal()
                },
            ),
            (
                "contract",
                Opportunity {
                    contract: Some(Contract {
                        document_ref: "doc-1".into(),
                        signed: false,
                        sign_time_ms: None,
                        end_date: None,
                    }),
                    ..deal()
                },
            ),
        ];
        // A field added to WRITABLE needs a line here, and in `written`.
        let covered: BTreeSet<&str> = changes.iter().map(|(path, _)| *path).collect();
        let writable: BTreeSet<&str> = WRITABLE.iter().copied().chain(["account_id"]).collect();
        assert_eq!(covered, writable);
        let base = asked(&deal());
        for (path, changed) in &changes {
            assert_ne!(asked(changed), base, "{path} is not part of the request");
        }
    }

    /// A line item stored before currency codes were checked against ISO
    /// 4217 (any three capitals were taken) still reads back with its price.
    #[test]
    fn a_price_stored_in_a_code_no_longer_accepted_reads_back() {
        let o = Opportunity {
            line_items: vec![crate::domain::LineItem {
                product: "old".into(),
                kind: 1,
                quantity: 1,
                currency: "XYZ".into(),
                unit_price_nanos: 2_500_000_000,
                end_date: None,
            }],
            ..deal()
        };
        let read = to_proto(o, &crate::domain::Settings::default());
        let price = read.line_items[0].unit_price.as_ref().expect("a price");
        assert_eq!(
            (price.currency_code.as_str(), price.units, price.nanos),
            ("XYZ", 2, 500_000_000)
        );
    }
}
