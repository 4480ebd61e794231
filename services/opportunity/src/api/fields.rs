//! Reading a request's fields: what a caller may write, money, dates,
//! contacts, and applying one field of the update mask.

use cascade_chassis::time;
use cascade_chassis::validate::{Validator, not_writable};
use cascade_domain::Money;
use cascade_proto::common::v1 as common;
use cascade_proto::opportunity::v1 as pb;

use crate::domain::{
    self, Competitor, Contract, Date, LineItem, Opportunity, OpportunityKind, Stakeholder,
};

pub(super) const MAX_NAME: usize = 200;
const MAX_TEXT: usize = 10_000;
const MAX_LIST: usize = 100;
const MAX_LINE_ITEMS: usize = 200;

/// Fields a caller may write, on create and through the update mask.
pub(super) const WRITABLE: [&str; 15] = [
    "name",
    "kind",
    "owner_id",
    "estimated_deal_size",
    "amount",
    "amount_from_line_items",
    "close_date",
    "current_situation",
    "needs",
    "buying_group_contact_ids",
    "stakeholders",
    "competitors",
    "line_items",
    "new_reality",
    "contract",
];

pub(super) fn money(
    v: &mut Validator,
    field: &str,
    value: Option<&common::Money>,
) -> Option<Money> {
    let value = value?;
    // Checked beside the message's own rules, so that every wrong field is
    // named at once (a bad currency and a negative amount).
    let negative = value.units < 0 || (value.units == 0 && value.nanos < 0);
    let mut refused = Vec::new();
    let money = match Money::from_proto(value) {
        Ok(money) => Some(money),
        Err(wrong) => {
            for (part, problem) in wrong {
                refused.push(part);
                v.add(format!("{field}.{part}"), problem);
            }
            None
        }
    };
    if negative {
        let part = if value.units < 0 { "units" } else { "nanos" };
        // One answer per field: a part already refused keeps that reason.
        if !refused.contains(&part) {
            v.add(format!("{field}.{part}"), "must not be negative");
        }
        return None;
    }
    money
}

/// A signature a little ahead of this server's clock is the caller's clock,
/// not a signature yet to come.
const SIGN_TIME_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// A calendar date a caller gave, or a violation of `field`: a real day in
/// the years times are taken in (1970 to 9999), since a close or end date
/// in 1900 is a typing slip, not a deal.
fn date(v: &mut Validator, field: &str, value: Option<&common::Date>) -> Option<Date> {
    let d = value?;
    let valid = u32::try_from(d.month)
        .ok()
        .zip(u32::try_from(d.day).ok())
        .filter(|_| (1970..=9999).contains(&d.year))
        .and_then(|(month, day)| Date::new(d.year, month, day));
    if valid.is_none() {
        v.add(
            field,
            "must be a valid calendar date from 1970-01-01 to 9999-12-31",
        );
    }
    valid
}

/// Writes one field of `input` onto `o`.
/// `at` is the violation's field for a path that cannot be written (its
/// place in the update mask).
pub(super) fn apply_field(
    o: &mut Opportunity,
    input: &pb::Opportunity,
    path: &str,
    at: &str,
    v: &mut Validator,
) {
    let f = |name: &str| format!("opportunity.{name}");
    match path {
        "name" => o.name = v.required_text(&f("name"), &input.name, MAX_NAME),
        "owner_id" => o.owner_id = v.optional_text(&f("owner_id"), &input.owner_id, MAX_NAME).unwrap_or_default(),
        "estimated_deal_size" => o.estimated_deal_size = money(v, &f("estimated_deal_size"), input.estimated_deal_size.as_ref()),
        "amount" => o.amount = money(v, &f("amount"), input.amount.as_ref()),
        "amount_from_line_items" => o.amount_from_line_items = input.amount_from_line_items,
        "close_date" => o.close_date = date(v, &f("close_date"), input.close_date.as_ref()),
        "kind" => match OpportunityKind::from_wire(input.kind) {
            Some(kind) => o.kind = kind,
            None => v.add(f("kind"), "must be NEW_BUSINESS, RENEWAL or UPGRADE"),
        },
        "current_situation" => {
            o.current_situation = v.optional_prose(&f("current_situation"), &input.current_situation, MAX_TEXT).unwrap_or_default();
        }
        "needs" => o.needs = v.optional_prose(&f("needs"), &input.needs, MAX_TEXT).unwrap_or_default(),
        "new_reality" => o.new_reality = v.optional_prose(&f("new_reality"), &input.new_reality, MAX_TEXT).unwrap_or_default(),
        "buying_group_contact_ids" => {
            let mut ids: Vec<String> = input
                .buying_group_contact_ids
                .iter()
                .enumerate()
                .map(|(i, id)| v.required_id(&format!("opportunity.buying_group_contact_ids[{i}]"), id))
                .collect();
            // A group is a set: a repeat (also in another case) counts once,
            // where it first appears, and so only once toward the limit.
            let mut seen = std::collections::HashSet::new();
            ids.retain(|id| seen.insert(id.clone()));
            if ids.len() > MAX_LIST {
                v.add(f("buying_group_contact_ids"), format!("at most {MAX_LIST} contacts (got {})", ids.len()));
            }
            o.buying_group = ids;
        }
        "stakeholders" => {
            if input.stakeholders.len() > MAX_LIST {
                v.add(f("stakeholders"), format!("at most {MAX_LIST}"));
            }
            o.stakeholders = input
                .stakeholders
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let field = |n: &str| format!("opportunity.stakeholders[{i}].{n}");
                    let contact_id = (!s.contact_id.trim().is_empty()).then(|| v.required_id(&field("contact_id"), &s.contact_id));
                    let name = v.optional_text(&field("name"), &s.name, MAX_NAME).unwrap_or_default();
                    if contact_id.is_none() && name.is_empty() {
                        v.add(field("name"), "is required when there is no contact_id");
                    }
                    match pb::StakeholderRole::try_from(s.role) {
                        Ok(pb::StakeholderRole::Unspecified) => v.add(field("role"), "is required: DECISION_MAKER, CHAMPION, INFLUENCER, LEGAL, PROCUREMENT, SECURITY, IT or OTHER"),
                        Ok(_) => {}
                        Err(_) => v.add(field("role"), "must be DECISION_MAKER, CHAMPION, INFLUENCER, LEGAL, PROCUREMENT, SECURITY, IT or OTHER"),
                    }
                    Stakeholder { contact_id, name, role: s.role }
                })
                .collect();
        }
        "competitors" => {
            if input.competitors.len() > MAX_LIST {
                v.add(f("competitors"), format!("at most {MAX_LIST}"));
            }
            o.competitors = input
                .competitors
                .iter()
                .enumerate()
                .map(|(i, c)| Competitor {
                    name: v.required_text(&format!("opportunity.competitors[{i}].name"), &c.name, MAX_NAME),
                    notes: v.optional_prose(&format!("opportunity.competitors[{i}].notes"), &c.notes, 2000).unwrap_or_default(),
                })
                .collect();
        }
        "line_items" => {
            if input.line_items.len() > MAX_LINE_ITEMS {
                v.add(f("line_items"), format!("at most {MAX_LINE_ITEMS}"));
            }
            o.line_items = input
                .line_items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let field = |n: &str| format!("opportunity.line_items[{i}].{n}");
                    let product = v.required_text(&field("product"), &item.product, MAX_NAME);
                    if !(1..=1_000_000_000).contains(&item.quantity) {
                        v.add(field("quantity"), "must be between 1 and 1,000,000,000");
                    }
                    let kind = match pb::LineItemKind::try_from(item.kind) {
                        Ok(pb::LineItemKind::Unspecified) => pb::LineItemKind::Product as i32,
                        Ok(k) => k as i32,
                        Err(_) => {
                            v.add(field("kind"), "must be PRODUCT or SERVICE");
                            0
                        }
                    };
                    let price = money(v, &field("unit_price"), item.unit_price.as_ref());
                    if item.unit_price.is_none() {
                        v.add(field("unit_price"), "is required");
                    }
                    LineItem {
                        product,
                        kind,
                        quantity: item.quantity,
                        currency: price.map(|p| p.currency_code().to_owned()).unwrap_or_default(),
                        unit_price_nanos: price.map_or(0, |p| p.nanos),
                        end_date: date(v, &field("end_date"), item.end_date.as_ref()),
                    }
                })
                .collect();
        }
        "contract" | "contract.document_ref" | "contract.signed" | "contract.sign_time" | "contract.end_date" => {
            let given = input.contract.clone().unwrap_or_default();
            let mut contract = o.contract.clone().unwrap_or(Contract { document_ref: String::new(), signed: false, sign_time_ms: None, end_date: None });
            if matches!(path, "contract" | "contract.end_date") {
                contract.end_date = date(v, "opportunity.contract.end_date", given.end_date.as_ref());
            }
            if matches!(path, "contract" | "contract.document_ref") {
                contract.document_ref = v.optional_text("opportunity.contract.document_ref", &given.document_ref, 2000).unwrap_or_default();
            }
            if matches!(path, "contract" | "contract.signed" | "contract.sign_time") {
                let sign_time = given.sign_time.as_ref().and_then(|t| v.required_time("opportunity.contract.sign_time", Some(t)));
                if path != "contract.sign_time" {
                    // A person marks it signed; nothing detects a signature.
                    contract.signed = given.signed;
                }
                let now = time::now();
                let stored = contract.sign_time_ms;
                if contract.signed {
                    if sign_time.is_some_and(|t| t > now + SIGN_TIME_SKEW) {
                        v.add("opportunity.contract.sign_time", "must not be in the future");
                    }
                    contract.sign_time_ms = sign_time.map(|t| t.timestamp_millis()).or(stored).or(Some(now.timestamp_millis()));
                } else {
                    // A time on a contract not signed would be dropped without a
                    // word; the stored time sent back by a client that clears
                    // `signed` (read, edit, write) is not news, and under the
                    // mask `contract.signed` the time is not written at all.
                    let echoed = sign_time.map(|t| t.timestamp_millis()) == stored;
                    if path != "contract.signed" && given.sign_time.is_some() && !echoed {
                        v.add("opportunity.contract.sign_time", "is set only on a signed contract (contract.signed true)");
                    }
                    contract.sign_time_ms = None;
                }
            }
            o.contract = Some(contract);
        }
        "step" | "status" => v.add(
            at,
            format!("{path} is not writable: steps move through AdvanceOpportunity, status through CloseOpportunityWon / Lost"),
        ),
        "account_id" => v.add(at, "account_id is not writable: a deal stays with the account it was opened for"),
        "lost_reason" => v.add(at, "lost_reason is not writable: CloseOpportunityLost sets it"),
        "opportunity_id" | "step_entries" | "progress" | "create_time" | "update_time" | "close_time" => {
            v.add(at, format!("{path} is not writable: output only"));
        }
        other => v.add(at, not_writable(other, &WRITABLE)),
    }
}

/// The amount follows the line items when asked to, once there are any:
/// until then the amount as it was stays (QUALIFY asks for an amount before
/// PROPOSE brings line items, and turning the flag on early must not lose
/// it). An amount written (`amount_written`) that is not their total is
/// refused, not dropped; the total itself, or the amount as it was
/// (`before`), which a read-modify-write echoes while changing the items,
/// is accepted.
///
/// Line items in another currency than the opportunity's are refused when
/// the money fields are written (`money_written`), before anything follows
/// them: a deal changes currency by having its amount written in the new one.
pub(super) fn derive_amount(
    o: &mut Opportunity,
    (amount_written, money_written): (bool, bool),
    before: Option<Money>,
    v: &mut Validator,
) {
    if money_written && let Some((currency, foreign)) = domain::foreign_line_items(o) {
        for i in foreign {
            v.add(
                format!("opportunity.line_items[{i}].unit_price"),
                format!(
                    "must be in the opportunity's currency, {currency}; to change it, write the \
                     amount in the new one too"
                ),
            );
        }
        return;
    }
    if !o.amount_from_line_items {
        return;
    }
    match domain::line_items_total(&o.line_items) {
        Ok(None) => {}
        Ok(Some(total)) => {
            if amount_written && o.amount != Some(total) && o.amount != before {
                v.add(
                    "opportunity.amount",
                    "follows the line items while amount_from_line_items is set: leave it out, \
                     give their total, or set amount_from_line_items false",
                );
            }
            o.amount = Some(total);
        }
        Err(problem) => v.add("opportunity.line_items", problem),
    }
}

pub(super) fn id_of(v: &mut Validator, field: &str, value: &str) -> String {
    v.required_id(field, value)
}

/// A contact an opportunity names: where, and whether it is already there.
pub(super) struct NamedContact {
    /// The exact field path, e.g. `opportunity.buying_group_contact_ids[1]`.
    pub field: String,
    pub contact_id: String,
    /// Already in the same list of the opportunity as stored (a person
    /// who has left the company stays where they were, but joins nothing).
    pub present: bool,
}

/// The contact ids `input` names in the fields `written` selects: the
/// buying group and the stakeholders' contacts, compared with `current`
/// (the opportunity as stored; `None` on create).
pub(super) fn named_contacts(
    input: &pb::Opportunity,
    written: impl Fn(&str) -> bool,
    current: Option<&Opportunity>,
) -> Vec<NamedContact> {
    // Ids as stored (canonical, as `apply_field` has validated them), so
    // that one in another case is found where it already is.
    let canonical = cascade_chassis::validate::canonical_id;
    let mut named = Vec::new();
    if written("buying_group_contact_ids") {
        let mut seen = std::collections::HashSet::new();
        for (i, id) in input.buying_group_contact_ids.iter().enumerate() {
            let contact_id = canonical(id);
            // A repeat is the same member: asked about once, where it first
            // appears.
            if !seen.insert(contact_id.clone()) {
                continue;
            }
            named.push(NamedContact {
                field: format!("opportunity.buying_group_contact_ids[{i}]"),
                present: current.is_some_and(|o| o.buying_group.contains(&contact_id)),
                contact_id,
            });
        }
    }
    if written("stakeholders") {
        for (i, s) in input.stakeholders.iter().enumerate() {
            if !s.contact_id.trim().is_empty() {
                let contact_id = canonical(&s.contact_id);
                named.push(NamedContact {
                    field: format!("opportunity.stakeholders[{i}].contact_id"),
                    present: current.is_some_and(|o| {
                        o.stakeholders
                            .iter()
                            .any(|s| s.contact_id.as_ref() == Some(&contact_id))
                    }),
                    contact_id,
                });
            }
        }
    }
    named
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_chassis::ServiceError;

    /// A role left out is missing; a number no role has is wrong: each
    /// said as it is.
    #[test]
    fn a_role_missing_or_unknown_is_said_as_it_is() {
        let id = "0192f0c4-8b6e-7cc2-9d7e-7d1c7f3b5a10";
        let mut o = Opportunity::opened(id.into(), id.into(), 0);
        let stakeholder = |name: &str, role| pb::Stakeholder {
            name: name.into(),
            role,
            ..Default::default()
        };
        let input = pb::Opportunity {
            stakeholders: vec![
                stakeholder("Pat", 0),
                stakeholder("Sam", 99),
                stakeholder("Lee", 1),
            ],
            ..Default::default()
        };
        let mut v = Validator::new();
        apply_field(
            &mut o,
            &input,
            "stakeholders",
            "update_mask.paths[0]",
            &mut v,
        );
        let Err(ServiceError::InvalidArgument(violations)) = v.finish() else {
            panic!("two roles refused")
        };
        let said: Vec<(&str, &str)> = violations
            .iter()
            .map(|v| {
                (
                    v.field.as_str(),
                    v.description.split(':').next().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            said,
            [
                ("opportunity.stakeholders[0].role", "is required"),
                (
                    "opportunity.stakeholders[1].role",
                    "must be DECISION_MAKER, CHAMPION, INFLUENCER, LEGAL, PROCUREMENT, SECURITY, IT or OTHER"
                ),
            ]
        );
    }
}
