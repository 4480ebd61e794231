//! The opportunity process (DESIGN.md "Opportunity process"), as plain types
//! and pure functions: what each step requires, whether a move is allowed,
//! and the money arithmetic of the pipeline.

use cascade_domain::Money;
use cascade_domain::domain_enum;
pub use cascade_domain::{AccountStage, OpportunityKind};
use cascade_proto::opportunity::v1 as pb;

domain_enum! {
    /// The steps of the process, in order.
    Step => pb::OpportunityStep {
        Discover = "DISCOVER",
        Qualify = "QUALIFY",
        Propose = "PROPOSE",
        Win = "WIN",
    }
}

domain_enum! {
    /// Whether an opportunity is still being worked.
    Status => pb::OpportunityStatus {
        Open = "OPEN",
        Won = "WON",
        Lost = "LOST",
    }
}

impl Step {
    pub fn next(self) -> Option<Step> {
        match self {
            Step::Discover => Some(Step::Qualify),
            Step::Qualify => Some(Step::Propose),
            Step::Propose => Some(Step::Win),
            Step::Win => None,
        }
    }
}

/// A calendar date. Ordered by year, then month, then day.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Date {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

impl Date {
    /// A real calendar date in years 1 to 9999, or `None`.
    pub fn new(year: i32, month: u32, day: u32) -> Option<Date> {
        chrono::NaiveDate::from_ymd_opt(year, month, day)
            .filter(|_| (1..=9999).contains(&year))
            .map(|_| Date { year, month, day })
    }

    pub fn from_chrono(date: chrono::NaiveDate) -> Date {
        use chrono::Datelike as _;
        Date {
            year: date.year(),
            month: date.month(),
            day: date.day(),
        }
    }

    pub fn to_chrono(self) -> Option<chrono::NaiveDate> {
        chrono::NaiveDate::from_ymd_opt(self.year, self.month, self.day)
    }

    /// `yyyy-mm-dd`: how storage keeps a date, so that text order is date
    /// order on both backends.
    pub fn iso(self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// Reads [`Date::iso`]'s form.
    pub fn parse_iso(text: &str) -> Option<Date> {
        chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .map(Date::from_chrono)
    }
}

/// A person in the buying decision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stakeholder {
    pub contact_id: Option<String>,
    pub name: String,
    /// The protobuf StakeholderRole number (validated on input).
    pub role: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Competitor {
    pub name: String,
    pub notes: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LineItem {
    pub product: String,
    /// The protobuf LineItemKind number.
    pub kind: i32,
    pub quantity: i64,
    pub currency: String,
    pub unit_price_nanos: i128,
    /// The last day of the item's term; `None`: the contract's end date.
    #[serde(default)]
    pub end_date: Option<Date>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Contract {
    pub document_ref: String,
    pub signed: bool,
    pub sign_time_ms: Option<i64>,
    /// The last day of the contract's term, for the line items without
    /// their own; `None`: no end.
    #[serde(default)]
    pub end_date: Option<Date>,
}

/// An opportunity as the rules see it (and as storage keeps it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Opportunity {
    pub opportunity_id: String,
    pub account_id: String,
    pub name: String,
    pub owner_id: String,
    /// What it sells (documents stored before kinds existed are new business).
    #[serde(default = "new_business")]
    pub kind: OpportunityKind,
    pub step: Step,
    pub status: Status,
    pub estimated_deal_size: Option<Money>,
    pub amount: Option<Money>,
    pub amount_from_line_items: bool,
    pub close_date: Option<Date>,
    pub current_situation: String,
    pub needs: String,
    pub buying_group: Vec<String>,
    pub stakeholders: Vec<Stakeholder>,
    pub competitors: Vec<Competitor>,
    pub line_items: Vec<LineItem>,
    pub new_reality: String,
    pub contract: Option<Contract>,
    pub lost_reason: String,
    /// (step, time in ms) each step was entered.
    pub step_entries: Vec<(Step, i64)>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub closed_at_ms: Option<i64>,
    /// What it was when it passed QUALIFY (`complete_through`); `None`
    /// before then, and for deals that passed it before this was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualified: Option<Qualified>,
}

/// A deal as it passed QUALIFY: whether it was large then (under the
/// tenant's threshold then), and its amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Qualified {
    pub large: bool,
    pub amount: Option<Money>,
}

impl Qualified {
    /// Whether a deal that passed QUALIFY as this must still show a large
    /// deal's sections now it is large: when it was large then (so they
    /// were asked for, and clearing them later cannot slip it through), or
    /// its amount grew since (it became large by itself). A threshold
    /// lowered since, alone, does not ask for them.
    fn asks_large_again(&self, amount_now: Option<Money>) -> bool {
        self.large
            || match (self.amount, amount_now) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(then), Some(now)) => then.currency != now.currency || now.nanos > then.nanos,
            }
    }
}

impl Opportunity {
    /// A new opportunity of `account_id`, open in DISCOVER since `now_ms`,
    /// with nothing written yet: a create fills in what the caller wrote.
    pub fn opened(opportunity_id: String, account_id: String, now_ms: i64) -> Self {
        Self {
            opportunity_id,
            account_id,
            name: String::new(),
            owner_id: String::new(),
            kind: OpportunityKind::NewBusiness,
            step: Step::Discover,
            status: Status::Open,
            estimated_deal_size: None,
            amount: None,
            amount_from_line_items: false,
            close_date: None,
            current_situation: String::new(),
            needs: String::new(),
            buying_group: Vec::new(),
            stakeholders: Vec::new(),
            competitors: Vec::new(),
            line_items: Vec::new(),
            new_reality: String::new(),
            contract: None,
            lost_reason: String::new(),
            step_entries: vec![(Step::Discover, now_ms)],
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            closed_at_ms: None,
            qualified: None,
        }
    }
}

fn new_business() -> OpportunityKind {
    OpportunityKind::NewBusiness
}

/// A tenant's opportunity settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub version: i64,
    /// Deals with an amount at or above this (same currency) are large.
    pub large_deal_threshold: Money,
    pub discover_display_name: String,
    /// Percent per step: DISCOVER, QUALIFY, PROPOSE, WIN.
    pub probabilities: [i32; 4],
    pub currency: String,
    pub updated_at_ms: Option<i64>,
    pub updated_by: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            version: 1,
            large_deal_threshold: Money {
                currency: *b"USD",
                nanos: 100_000 * 1_000_000_000,
            },
            discover_display_name: "Discover".into(),
            probabilities: [10, 25, 50, 90],
            currency: "USD".into(),
            updated_at_ms: None,
            updated_by: None,
        }
    }
}

impl Settings {
    pub fn display_name(&self, step: Step) -> String {
        match step {
            Step::Discover => self.discover_display_name.clone(),
            Step::Qualify => "Qualify".into(),
            Step::Propose => "Propose".into(),
            Step::Win => "Win".into(),
        }
    }

    pub fn probability(&self, step: Step) -> i32 {
        let index = Step::ALL.iter().position(|s| *s == step).unwrap_or(0);
        self.probabilities[index]
    }
}

/// Completeness of one section of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionProgress {
    pub section: &'static str,
    pub missing: Vec<&'static str>,
}

impl SectionProgress {
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Completeness of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepProgress {
    pub step: Step,
    pub sections: Vec<SectionProgress>,
}

impl StepProgress {
    pub fn complete(&self) -> bool {
        self.sections.iter().all(SectionProgress::complete)
    }

    pub fn missing(&self) -> Vec<&'static str> {
        self.sections
            .iter()
            .flat_map(|s| s.missing.iter().copied())
            .collect()
    }
}

fn section(section: &'static str, checks: &[(&'static str, bool)]) -> SectionProgress {
    SectionProgress {
        section,
        missing: checks
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(f, _)| *f)
            .collect(),
    }
}

/// A deal is large when its amount reaches the tenant's threshold in the
/// same currency (amounts in another currency cannot be compared).
pub fn is_large(opportunity: &Opportunity, settings: &Settings) -> bool {
    opportunity.amount.is_some_and(|amount| {
        amount.currency == settings.large_deal_threshold.currency
            && amount.nanos >= settings.large_deal_threshold.nanos
    })
}

/// What each step requires, and what is still missing.
pub fn step_progress(opportunity: &Opportunity, settings: &Settings, step: Step) -> StepProgress {
    let o = opportunity;
    let filled = |s: &str| !s.trim().is_empty();
    let sections = match step {
        Step::Discover => vec![section(
            "deal_size",
            // An estimate of 0 is no estimate (a tester's finding).
            &[(
                "estimated_deal_size",
                o.estimated_deal_size.is_some_and(|m| m.nanos > 0),
            )],
        )],
        Step::Qualify => {
            let mut sections = vec![
                section(
                    "timing_and_value",
                    &[
                        ("close_date", o.close_date.is_some()),
                        ("amount", o.amount.is_some()),
                    ],
                ),
                section(
                    "situation",
                    &[
                        ("current_situation", filled(&o.current_situation)),
                        ("needs", filled(&o.needs)),
                    ],
                ),
                section(
                    "buying_group",
                    &[("buying_group_contact_ids", !o.buying_group.is_empty())],
                ),
            ];
            if is_large(o, settings) {
                sections.push(section(
                    "stakeholders",
                    &[("stakeholders", !o.stakeholders.is_empty())],
                ));
                sections.push(section(
                    "competitors",
                    &[("competitors", !o.competitors.is_empty())],
                ));
            }
            sections
        }
        Step::Propose => vec![section(
            "solution",
            &[
                ("line_items", !o.line_items.is_empty()),
                ("new_reality", filled(&o.new_reality)),
            ],
        )],
        Step::Win => {
            let contract = o.contract.as_ref();
            vec![section(
                "contract",
                &[
                    (
                        "contract.document_ref",
                        contract.is_some_and(|c| filled(&c.document_ref)),
                    ),
                    ("contract.signed", contract.is_some_and(|c| c.signed)),
                ],
            )]
        }
    };
    StepProgress { step, sections }
}

/// Why a move was refused: a message and the missing fields, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub missing: Vec<&'static str>,
}

impl Refusal {
    fn plain(message: String) -> Self {
        Self {
            message,
            missing: Vec::new(),
        }
    }
}

fn check_open(o: &Opportunity) -> Result<(), Refusal> {
    if o.status != Status::Open {
        return Err(Refusal::plain(format!(
            "the opportunity is closed ({}); a closed opportunity cannot change",
            o.status
        )));
    }
    Ok(())
}

/// Moves one step forward when the current step is complete.
fn advance(o: &Opportunity, settings: &Settings, to: Option<Step>) -> Result<Step, Refusal> {
    check_open(o)?;
    let Some(next) = o.step.next() else {
        return Err(Refusal::plain(
            "the opportunity is at WIN, the last step; close it as won or lost".into(),
        ));
    };
    if let Some(to) = to
        && to != next
    {
        return Err(Refusal::plain(format!(
            "the opportunity is at {}; its next step is {next}, not {to}",
            o.step
        )));
    }
    complete_through(o, settings, o.step)?;
    Ok(next)
}

/// Every step up to `last` complete: a step once passed keeps asking for
/// its information, so clearing it later (the amount, the buying group)
/// cannot slip a deal on or through to a win. A large deal's stakeholders
/// and competitors are asked of a step passed when the deal was large as it
/// passed QUALIFY or its amount grew since (`Qualified::asks_large_again`;
/// a reviewer won a deal qualified at 50,000 and grown to 400,000 without
/// them), not when only the tenant's threshold was lowered since. The
/// refusal names each incomplete step and, in `missing`, every field it
/// lacks.
fn complete_through(o: &Opportunity, settings: &Settings, last: Step) -> Result<(), Refusal> {
    const LARGE_DEAL_SECTIONS: [&str; 2] = ["stakeholders", "competitors"];
    let through = Step::ALL.iter().position(|s| *s == last).unwrap_or(0);
    let large_again = o.qualified.is_some_and(|q| q.asks_large_again(o.amount));
    let mut messages = Vec::new();
    let mut missing = Vec::new();
    for step in &Step::ALL[..=through] {
        let progress = step_progress(o, settings, *step);
        let lacking: Vec<&'static str> = progress
            .sections
            .iter()
            .filter(|s| *step == last || large_again || !LARGE_DEAL_SECTIONS.contains(&s.section))
            .flat_map(|s| s.missing.iter().copied())
            .collect();
        if !lacking.is_empty() {
            messages.push(format!(
                "the {} step is incomplete; missing: {}",
                settings.display_name(*step),
                lacking.join(", ")
            ));
            missing.extend(lacking);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Refusal {
            message: messages.join("; "),
            missing,
        })
    }
}

/// Closing as won needs the WIN step complete, and every step before it.
fn close_won(o: &Opportunity, settings: &Settings) -> Result<(), Refusal> {
    check_open(o)?;
    if o.step != Step::Win {
        return Err(Refusal::plain(format!(
            "the opportunity is at {}; it can be won only at WIN",
            o.step
        )));
    }
    complete_through(o, settings, Step::Win)
}

/// Any change to an opportunity needs it open.
pub fn check_changeable(o: &Opportunity) -> Result<(), Refusal> {
    check_open(o)
}

/// RENEWAL and UPGRADE are sold to an account that is a customer now (at
/// IMPLEMENT, EXPAND or ADVOCATE); NEW_BUSINESS to any account, a former
/// customer's win-back included. `stage` is the account's stage as
/// lifecycle answers it (`None`: a stage this version does not know).
pub fn check_kind(kind: OpportunityKind, stage: Option<AccountStage>) -> Result<(), Refusal> {
    if !kind.needs_customer() || stage.is_some_and(cascade_domain::is_customer_stage) {
        return Ok(());
    }
    let at = stage.map_or_else(|| "an unknown stage".to_owned(), |s| s.to_string());
    Err(Refusal::plain(format!(
        "a {kind} opportunity is only for a customer (an account at IMPLEMENT, EXPAND or \
         ADVOCATE); the account is at {at}"
    )))
}

/// The last day of an opportunity's term: the latest effective end of its
/// line items (an item's own `end_date`, else the contract's), or, with no
/// line items, the contract's. `None` when it never ends (an item without
/// either, or no items and no contract end).
pub fn term_end(o: &Opportunity) -> Option<Date> {
    let contract_end = o.contract.as_ref().and_then(|c| c.end_date);
    if o.line_items.is_empty() {
        return contract_end;
    }
    let mut last = None;
    for item in &o.line_items {
        last = last.max(Some(item.end_date.or(contract_end)?));
    }
    last
}

/// When an account's contracts end: the last day of the terms of its won
/// opportunities, with the won opportunity whose term ends last (on a tie,
/// the one closed last). `None` while it has no won opportunity or one of
/// them never ends. Open and lost opportunities do not count. The
/// contracts have ended once that day is before today ([`has_ended`]).
pub fn contracts_end(opportunities: &[Opportunity]) -> Option<(Date, &Opportunity)> {
    let mut last: Option<(Date, &Opportunity)> = None;
    for o in opportunities.iter().filter(|o| o.status == Status::Won) {
        let end = term_end(o)?;
        if last.is_none_or(|(e, l)| rank(e, l) < rank(end, o)) {
            last = Some((end, o));
        }
    }
    last
}

fn rank(end: Date, o: &Opportunity) -> (Date, Option<i64>, &str) {
    (end, o.closed_at_ms, &o.opportunity_id)
}

/// A term ending on `end` has ended on `today` (UTC) when `end` is past:
/// the last day of a term is still covered.
pub fn has_ended(end: Date, today: Date) -> bool {
    end < today
}

/// What lifecycle is told of an opportunity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EventKind {
    /// Opened, or its buying group changed (new members join the open deal,
    /// members no longer named leave it), or its kind changed.
    Opened,
    Won,
    Lost,
    /// Every term of the account's won opportunities has ended
    /// ([`contracts_end`]); never the outcome of an [`Action`].
    ContractsEnded,
}

/// What a person does to an opportunity.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Fields written through the update mask: the opportunity as edited.
    Edit(Box<Opportunity>),
    /// One step forward; `to` guards against a repeated call.
    Advance {
        to: Option<Step>,
    },
    Win,
    /// Closing as lost, with the reason (checked on input).
    Lose {
        reason: String,
    },
}

/// The opportunity after an action, and the event lifecycle is told of.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub opportunity: Opportunity,
    pub event: Option<EventKind>,
    /// Nothing to save (a repeated close, an edit of nothing): the caller
    /// is answered with the opportunity as it is.
    pub unchanged: bool,
}

/// Decides what `action` does to `current` at `now_ms`, or why it is refused.
pub fn decide(
    current: &Opportunity,
    action: Action,
    settings: &Settings,
    now_ms: i64,
) -> Result<Decision, Refusal> {
    // A repeated close (a retry after a lost answer) finds the deal closed
    // as it asks: answered as it is, with nothing to save or tell.
    let repeated = match &action {
        Action::Win => current.status == Status::Won,
        Action::Lose { reason } => current.status == Status::Lost && current.lost_reason == *reason,
        _ => false,
    };
    if repeated {
        return Ok(Decision {
            opportunity: current.clone(),
            event: None,
            unchanged: true,
        });
    }
    check_open(current)?;
    // An edit that changes nothing (a sync writing back what it read) is
    // no change: no new update time for `changed_since` listings to report,
    // nothing to tell lifecycle.
    if let Action::Edit(edited) = &action
        && **edited == *current
    {
        return Ok(Decision {
            opportunity: current.clone(),
            event: None,
            unchanged: true,
        });
    }
    let mut o = current.clone();
    let event = match action {
        Action::Edit(edited) => {
            o = *edited;
            // Lifecycle keeps the open opportunities with their kind.
            (o.buying_group != current.buying_group || o.kind != current.kind)
                .then_some(EventKind::Opened)
        }
        Action::Advance { to } => {
            let next = advance(current, settings, to)?;
            if current.step == Step::Qualify {
                o.qualified = Some(Qualified {
                    large: is_large(current, settings),
                    amount: current.amount,
                });
            }
            o.step = next;
            o.step_entries.push((next, now_ms));
            None
        }
        Action::Win => {
            close_won(current, settings)?;
            o.status = Status::Won;
            o.closed_at_ms = Some(now_ms);
            Some(EventKind::Won)
        }
        Action::Lose { reason } => {
            o.status = Status::Lost;
            o.lost_reason = reason;
            o.closed_at_ms = Some(now_ms);
            Some(EventKind::Lost)
        }
    };
    o.updated_at_ms = now_ms;
    Ok(Decision {
        opportunity: o,
        event,
        unchanged: false,
    })
}

/// The line items priced in another currency than the opportunity's (its
/// amount's, else its estimate's; none when it has neither): their
/// positions and that currency. A line item is "in the opportunity's
/// currency" (the contract), and one in another would have the amount
/// follow it into that currency without a word (a tester's USD deal became
/// JPY 500).
pub fn foreign_line_items(o: &Opportunity) -> Option<(&str, Vec<usize>)> {
    let currency = o
        .amount
        .as_ref()
        .or(o.estimated_deal_size.as_ref())?
        .currency_code();
    let foreign: Vec<usize> = o
        .line_items
        .iter()
        .enumerate()
        .filter(|(_, item)| item.currency != currency)
        .map(|(i, _)| i)
        .collect();
    (!foreign.is_empty()).then_some((currency, foreign))
}

/// The sum of the line items, if they are all in one currency.
pub fn line_items_total(items: &[LineItem]) -> Result<Option<Money>, &'static str> {
    let Some(first) = items.first() else {
        return Ok(None);
    };
    if items.iter().any(|i| i.currency != first.currency) {
        return Err("must all be in one currency when amount_from_line_items is set");
    }
    let code = first.currency.as_bytes();
    let currency = match code {
        [a, b, c] => [*a, *b, *c],
        _ => return Err("must all be in one currency when amount_from_line_items is set"),
    };
    // Prices and quantities are bounded, so this cannot overflow i128; the
    // total must still be an amount Cascade accepts.
    let nanos = items.iter().try_fold(0_i128, |sum, i| {
        sum.checked_add(i.unit_price_nanos.checked_mul(i128::from(i.quantity))?)
    });
    match nanos.map(|nanos| Money { currency, nanos }) {
        Some(total) if total.within_limit() => Ok(Some(total)),
        _ => Err("total more than the largest amount, 1,000,000,000,000 units"),
    }
}

/// The value of an opportunity in the pipeline: its amount, or its estimate.
pub fn pipeline_value(o: &Opportunity) -> Option<Money> {
    o.amount.or(o.estimated_deal_size)
}

#[cfg(test)]
mod tests;

/// The opportunity without the erased contacts (buying group members and
/// stakeholders who are them: a stakeholder carries the person's name), or
/// `None` when it names none of them. Erasure is not a step of the process:
/// nothing else changes, and no event goes to lifecycle (lifecycle erased
/// its side first).
pub fn without_contacts(o: &Opportunity, erased: &[String]) -> Option<Opportunity> {
    let is_erased = |id: &str| erased.iter().any(|e| e == id);
    let named = o.buying_group.iter().any(|c| is_erased(c))
        || o.stakeholders
            .iter()
            .any(|s| s.contact_id.as_deref().is_some_and(is_erased));
    if !named {
        return None;
    }
    let mut cleaned = o.clone();
    cleaned.buying_group.retain(|c| !is_erased(c));
    cleaned
        .stakeholders
        .retain(|s| !s.contact_id.as_deref().is_some_and(is_erased));
    Some(cleaned)
}
