//! The account stage rules (DESIGN.md "Account stages"), as one pure function:
//! given an account's state, an event and the tenant's settings, which
//! transitions happen, or why the event is refused.

use cascade_domain::domain_enum;
use cascade_domain::{
    AccountStage, CustomerType, OpportunityKind, is_customer_stage, stage_reached_by_score,
};
use cascade_proto::lifecycle::v1 as pb;

use super::Refusal;
use super::settings::{LifecycleSettings, OnLostAction};

domain_enum! {
    /// Why an account changed stage.
    TransitionCause => pb::TransitionCause {
        Score = "SCORE",
        Intent = "INTENT",
        Qualify = "QUALIFY",
        Disqualify = "DISQUALIFY",
        Nurture = "NURTURE",
        OpportunityOpened = "OPPORTUNITY_OPENED",
        OpportunityWon = "OPPORTUNITY_WON",
        OpportunityLost = "OPPORTUNITY_LOST",
        Manual = "MANUAL",
        Churn = "CHURN",
        ContractsEnded = "CONTRACTS_ENDED",
        AtRiskFlagged = "AT_RISK_FLAGGED",
        AtRiskCleared = "AT_RISK_CLEARED",
    }
}

domain_enum! {
    /// Who or what flagged an account at risk.
    AtRiskSource => pb::AtRiskSource {
        Person = "PERSON",
        Engagement = "ENGAGEMENT",
    }
}

/// What the rules need to know about an account.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccountState {
    pub stage: AccountStage,
    pub customer_type: CustomerType,
    /// The engagement score when the account was last sent back by Disqualify
    /// or Nurture. Thresholds apply to engagement earned since then, so a
    /// recycled account must re-engage before it is prioritized again.
    pub score_baseline: f64,
    /// Whether it was ever sent back (Disqualify, Nurture, a lost deal's
    /// action): a baseline of 0 then is a floor reached, not "never".
    pub recycled: bool,
    /// Open opportunities lifecycle knows of for the account.
    pub open_opportunities: u32,
    /// The last engagement score applied (the at-risk rule sees it fall).
    pub engagement_score: f64,
    /// Set while the account is flagged at risk.
    pub at_risk: Option<AtRiskSource>,
}

/// The engagement the thresholds are compared with: what was earned since
/// the account was last sent back (the whole score if it never was), from
/// the lowest score since when it fell below the baseline (`baseline_at`),
/// and never from below 0, where an account never sent back starts.
pub fn earned_since_recycle(engagement_score: f64, score_baseline: f64) -> f64 {
    engagement_score - score_baseline.min(engagement_score.max(0.0))
}

/// What an account's stored score and baseline are at: their UTC day and
/// the decay half-life they decay by (`None`: not known, taken as the next
/// delivery's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreClock {
    pub day: i64,
    pub half_life_days: Option<f64>,
}

/// What a score delivery's new activity earned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Earned {
    /// The engagement the new activity added, at the delivery's day (a
    /// penalty makes it negative; 0 without new activity).
    Points(f64),
    /// A delivery of an older scoring with new activity, which says only
    /// that there was some: the whole change of the score counts.
    AllOfTheChange,
}

/// A recycle's baseline when a delivery brings `score` at `day` under
/// `half_life_days` (0: no decay), with `earned` the engagement its new
/// activity added.
///
/// What was earned since the recycle grows by new activity only: it decays
/// as the score does, and the delivery's new activity is added to it. The
/// rest of a change of the score is points leaving or coming back (a
/// contact deactivated, erased or reactivated; a model edited), which move
/// the baseline with the score. Otherwise points gone would be owed again
/// by the engagement earned after (a reviewer's case: Bob's new 100 left an
/// account ENGAGED after Ann's 100 left), and points back would count as
/// earned (a reactivation re-prioritized an account). Because the new
/// activity comes as an amount, deliveries merged while lifecycle lagged
/// give what they would have given one by one, apart from the bounds below
/// (one by one, each delivery is bounded on its own).
///
/// The points the baseline was taken from decay, so it decays alike: kept
/// fixed, a recycled account under decay needed its threshold plus whatever
/// its old points had lost since (a tester's finding). When the model's
/// half-life changed, scoring has recomputed every score under the new one:
/// what was earned decays by the old half-life up to the delivery (exact
/// when the change came on its day), not by the new one over the whole gap.
///
/// A baseline of unknown day (kept before days were) is taken as it is
/// (no decay); a baseline of 0 stays 0 (everything was earned since); and
/// a baseline is never above the score nor below 0, so a recycled account
/// never owes more than its score, and one whose score fell to 0 or below
/// counts from there like an account never sent back.
pub fn baseline_at(
    state: &AccountState,
    at: Option<ScoreClock>,
    (day, half_life_days): (i64, f64),
    score: f64,
    earned_now: Earned,
) -> f64 {
    let baseline = state.score_baseline;
    // Never sent back: everything is earned. A recycled account whose
    // baseline reached 0 goes on below (a tester's case: points coming
    // back after it reached 0 counted as earned and re-prioritized it).
    if baseline == 0.0 && !state.recycled {
        return 0.0;
    }
    let earned = earned_since_recycle(state.engagement_score, baseline);
    // The share left at `day` of what was stored, under `half_life`.
    let decay = |half_life: f64| {
        at.map_or(1.0, |at| {
            cascade_domain::decay::decay_factor(half_life, at.day, day)
        })
    };
    let at_day = match earned_now {
        // What was earned decays by the half-life it was stored under: after
        // a change, by the old one, as the daily refreshes before the change
        // decayed it (a reviewer's case: kept undecayed over a month's
        // outage, 16 earned read 21 with 5 new, where one by one it was 13);
        // new activity adds to it (another: a demo's 150 points after a
        // half-life change went into the baseline).
        Earned::Points(points) => {
            let stored_under = at
                .and_then(|at| at.half_life_days)
                .unwrap_or(half_life_days);
            score - (earned * decay(stored_under) + points)
        }
        Earned::AllOfTheChange => baseline * decay(half_life_days),
    };
    at_day.clamp(0.0, score.max(0.0))
}

/// Something that may move an account.
#[derive(Debug, Clone, PartialEq)]
pub enum AccountEvent {
    /// New totals from scoring.
    Engagement {
        engagement_score: f64,
        intent_score: f64,
    },
    Qualify,
    Disqualify,
    Nurture,
    OpportunityOpened,
    OpportunityWon {
        kind: OpportunityKind,
    },
    /// `other_open`: opportunities of the account still open besides this one.
    OpportunityLost {
        other_open: u32,
        kind: OpportunityKind,
    },
    /// Every contract and line item of the account's won deals has ended.
    ContractsEnded,
    /// IMPLEMENT to EXPAND to ADVOCATE; `to` guards against a repeated call.
    Advance {
        to: Option<AccountStage>,
    },
    /// A customer left.
    Churn,
    /// A person flags the customer at risk.
    FlagAtRisk,
    /// A person clears the flag.
    ClearAtRisk,
}

/// A change of the at-risk flag. The account keeps its stage; the history
/// records the change as an entry from the stage to itself.
#[derive(Debug, Clone, PartialEq)]
pub enum RiskChange {
    Flagged {
        source: AtRiskSource,
        /// The rule's explanation; `None` for a person's flag, whose reason
        /// is the one given.
        explanation: Option<String>,
        /// False when the account was already at risk (the reason changes).
        notify: bool,
    },
    Cleared {
        /// As for `Flagged`: `None` when a person cleared it.
        explanation: Option<String>,
    },
}

/// One stage change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub from_stage: AccountStage,
    pub to_stage: AccountStage,
    pub from_customer_type: CustomerType,
    pub to_customer_type: CustomerType,
    pub cause: TransitionCause,
}

/// What an event does to an account.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// In order. A score that crosses both thresholds at once passes through
    /// ENGAGED, so the history and the funnel see every stage it reached.
    pub steps: Vec<Step>,
    /// Entering PRIORITIZED notifies the owner.
    pub notify_prioritized: bool,
    /// Set when the account is sent back: the new score baseline.
    pub reset_baseline: bool,
    /// The at-risk flag set or cleared.
    pub risk: Option<RiskChange>,
}

impl Outcome {
    pub fn final_state(&self, state: &AccountState) -> (AccountStage, CustomerType) {
        self.steps
            .last()
            .map_or((state.stage, state.customer_type), |s| {
                (s.to_stage, s.to_customer_type)
            })
    }
}

/// Stages from which Disqualify and Nurture are allowed.
const RECYCLE_ORIGINS: [AccountStage; 3] = [
    AccountStage::Prioritized,
    AccountStage::Qualified,
    AccountStage::Pipeline,
];

/// Applies the rules. `Err` is a refusal saying the current stage and what is
/// allowed from it; `Ok` with no steps means the event changes nothing (a
/// score never moves an account backward or past PRIORITIZED).
pub fn apply(
    state: &AccountState,
    event: &AccountEvent,
    settings: &LifecycleSettings,
) -> Result<Outcome, Refusal> {
    use AccountStage as S;
    let mut out = Outcome::default();
    let push = |out: &mut Outcome, to_stage: AccountStage, to_type: CustomerType, cause| {
        let (from_stage, from_customer_type) = out.final_state(state);
        out.steps.push(Step {
            from_stage,
            to_stage,
            from_customer_type,
            to_customer_type: to_type,
            cause,
        });
    };
    let kind = state.customer_type;
    match event {
        AccountEvent::Engagement {
            engagement_score,
            intent_score,
        } => {
            let reached = stage_reached_by_score(
                earned_since_recycle(*engagement_score, state.score_baseline),
                *intent_score,
                settings.engaged_threshold,
                settings.prioritized_threshold,
            );
            // Forward only, and never past PRIORITIZED.
            if state.stage < S::Prioritized && reached == S::Prioritized {
                if state.stage < S::Engaged {
                    push(&mut out, S::Engaged, kind, TransitionCause::Score);
                }
                push(&mut out, S::Prioritized, kind, TransitionCause::Score);
                out.notify_prioritized = true;
            } else if state.stage < S::Engaged && reached == S::Engaged {
                push(&mut out, S::Engaged, kind, TransitionCause::Score);
            } else if state.stage == S::Targeted && reached == S::Detected {
                push(&mut out, S::Detected, kind, TransitionCause::Intent);
            }
            out.risk = engagement_risk(state, *engagement_score, settings);
        }
        AccountEvent::Qualify => {
            if !settings.qualified_stage_enabled {
                return Err(Refusal(format!(
                    "the QUALIFIED stage is turned off for this tenant (qualified_stage_enabled is false); \
                     the account is {}, and opening an opportunity moves it to PIPELINE",
                    state.stage
                )));
            }
            if state.stage != S::Prioritized {
                return Err(Refusal(format!(
                    "the account is {}; Qualify moves only PRIORITIZED accounts to QUALIFIED",
                    state.stage
                )));
            }
            push(&mut out, S::Qualified, kind, TransitionCause::Qualify);
        }
        AccountEvent::Disqualify | AccountEvent::Nurture => {
            let (action, to_stage, to_type, cause) = if matches!(event, AccountEvent::Disqualify) {
                (
                    "Disqualify",
                    S::Detected,
                    CustomerType::ReProspect,
                    TransitionCause::Disqualify,
                )
            } else {
                ("Nurture", S::Engaged, kind, TransitionCause::Nurture)
            };
            check_recycle_origin(state, action)?;
            push(&mut out, to_stage, to_type, cause);
            out.reset_baseline = true;
        }
        AccountEvent::OpportunityOpened if state.stage == S::Churned => {
            // A former customer on its way back.
            push(
                &mut out,
                S::Pipeline,
                CustomerType::ReProspect,
                TransitionCause::OpportunityOpened,
            );
        }
        AccountEvent::OpportunityOpened => {
            if kind != CustomerType::Customer && state.stage < S::Pipeline {
                push(
                    &mut out,
                    S::Pipeline,
                    kind,
                    TransitionCause::OpportunityOpened,
                );
            }
        }
        AccountEvent::OpportunityWon { .. } if state.stage == S::Churned => {
            // A deal opened before the customer was declared gone, won since:
            // the customer bought again (a deal opened after the churn took
            // the account to PIPELINE already).
            push(
                &mut out,
                S::Implement,
                CustomerType::Customer,
                TransitionCause::OpportunityWon,
            );
        }
        AccountEvent::OpportunityWon { kind: deal } => {
            if kind != CustomerType::Customer {
                push(
                    &mut out,
                    S::Implement,
                    CustomerType::Customer,
                    TransitionCause::OpportunityWon,
                );
            } else if is_customer_stage(state.stage) && deal.needs_customer() {
                // A customer that buys more is live and growing: one step,
                // as AdvanceAccount would take it. A renewal keeps the stage.
                if *deal == OpportunityKind::Upgrade
                    && let Some(next) = next_customer_stage(state.stage)
                {
                    push(&mut out, next, kind, TransitionCause::OpportunityWon);
                }
                // Either way the customer has just committed again.
                if state.at_risk.is_some() {
                    out.risk = Some(RiskChange::Cleared {
                        explanation: Some(format!(
                            "{} won: the customer committed again",
                            if *deal == OpportunityKind::Upgrade {
                                "an upgrade"
                            } else {
                                "a renewal"
                            }
                        )),
                    });
                }
            }
        }
        AccountEvent::OpportunityLost {
            kind: OpportunityKind::Renewal,
            ..
        } if settings.churn_on_lost_renewal && is_customer_stage(state.stage) => {
            // The contract is not renewed: the customer leaves.
            push(&mut out, S::Churned, kind, TransitionCause::OpportunityLost);
        }
        AccountEvent::ContractsEnded => {
            if settings.churn_when_contracts_end && is_customer_stage(state.stage) {
                push(&mut out, S::Churned, kind, TransitionCause::ContractsEnded);
            }
        }
        AccountEvent::OpportunityLost { other_open, .. } => {
            let last_open = *other_open == 0;
            if kind != CustomerType::Customer && last_open && state.stage == S::Pipeline {
                match settings.on_lost_action {
                    OnLostAction::Nurture => {
                        push(&mut out, S::Engaged, kind, TransitionCause::OpportunityLost);
                        out.reset_baseline = true;
                    }
                    OnLostAction::Disqualify => {
                        push(
                            &mut out,
                            S::Detected,
                            CustomerType::ReProspect,
                            TransitionCause::OpportunityLost,
                        );
                        out.reset_baseline = true;
                    }
                    OnLostAction::Stay => {}
                }
            }
        }
        AccountEvent::Advance { to } => {
            let Some(next) = next_customer_stage(state.stage) else {
                return Err(Refusal(format!(
                    "the account is {}; AdvanceAccount moves IMPLEMENT to EXPAND and EXPAND to ADVOCATE",
                    state.stage
                )));
            };
            if let Some(to) = to
                && *to != next
            {
                return Err(Refusal(format!(
                    "the account is {}; its next stage is {next}, not {to}",
                    state.stage
                )));
            }
            push(&mut out, next, kind, TransitionCause::Manual);
        }
        AccountEvent::Churn => {
            if !matches!(state.stage, S::Implement | S::Expand | S::Advocate) {
                return Err(Refusal(format!(
                    "the account is {}; only a customer (IMPLEMENT, EXPAND or ADVOCATE) can churn",
                    state.stage
                )));
            }
            push(&mut out, S::Churned, kind, TransitionCause::Churn);
        }
        AccountEvent::FlagAtRisk => {
            if !is_customer_stage(state.stage) {
                return Err(Refusal(format!(
                    "the account is {}; only a customer (IMPLEMENT, EXPAND or ADVOCATE) can be at risk",
                    state.stage
                )));
            }
            out.risk = Some(RiskChange::Flagged {
                source: AtRiskSource::Person,
                explanation: None,
                notify: state.at_risk.is_none(),
            });
        }
        AccountEvent::ClearAtRisk => {
            if state.at_risk.is_some() {
                out.risk = Some(RiskChange::Cleared { explanation: None });
            }
        }
    }
    // A flag is about a customer: one that left (or was never won back) is
    // no longer at risk of leaving.
    let (stage, _) = out.final_state(state);
    if state.at_risk.is_some() && !is_customer_stage(stage) && out.risk.is_none() {
        out.risk = Some(RiskChange::Cleared {
            explanation: Some(format!("the account is no longer a customer ({stage})")),
        });
    }
    Ok(out)
}

/// IMPLEMENT to EXPAND to ADVOCATE: a customer's next stage, if any.
fn next_customer_stage(stage: AccountStage) -> Option<AccountStage> {
    match stage {
        AccountStage::Implement => Some(AccountStage::Expand),
        AccountStage::Expand => Some(AccountStage::Advocate),
        _ => None,
    }
}

/// The engagement rule: a customer whose score falls from at or above the
/// tenant's threshold to below it is flagged; a flag the rule set is
/// cleared once the score is back at or above it. A person's flag is the
/// person's to clear, and a score that starts low (a new customer) does not
/// flag: the rule watches for a fall. Turned off (threshold 0), the rule's
/// own flag goes with the next score, as settings move nothing by
/// themselves.
fn engagement_risk(
    state: &AccountState,
    engagement_score: f64,
    settings: &LifecycleSettings,
) -> Option<RiskChange> {
    let threshold = settings.at_risk_engagement_threshold;
    if !is_customer_stage(state.stage) {
        return None;
    }
    if threshold <= 0.0 {
        return (state.at_risk == Some(AtRiskSource::Engagement)).then(|| RiskChange::Cleared {
            explanation: Some(
                "the engagement rule is off (at_risk_engagement_threshold is 0)".to_owned(),
            ),
        });
    }
    match state.at_risk {
        None if state.engagement_score >= threshold && engagement_score < threshold => {
            Some(RiskChange::Flagged {
                source: AtRiskSource::Engagement,
                explanation: Some(format!(
                    "engagement fell from {:.1} to {engagement_score:.1}, below the at-risk threshold {threshold}",
                    state.engagement_score
                )),
                notify: true,
            })
        }
        Some(AtRiskSource::Engagement) if engagement_score >= threshold => {
            Some(RiskChange::Cleared {
                explanation: Some(format!(
                    "engagement is back to {engagement_score:.1}, at or above the at-risk threshold {threshold}"
                )),
            })
        }
        _ => None,
    }
}

fn check_recycle_origin(state: &AccountState, action: &str) -> Result<(), Refusal> {
    if !RECYCLE_ORIGINS.contains(&state.stage) {
        return Err(Refusal(format!(
            "the account is {}; {action} is allowed from PRIORITIZED, QUALIFIED, or PIPELINE with no open opportunity",
            state.stage
        )));
    }
    if state.stage == AccountStage::Pipeline && state.open_opportunities > 0 {
        return Err(Refusal(format!(
            "the account is PIPELINE with {} open opportunit{}; close {} before {action}",
            state.open_opportunities,
            if state.open_opportunities == 1 {
                "y"
            } else {
                "ies"
            },
            if state.open_opportunities == 1 {
                "it"
            } else {
                "them"
            },
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccountStage as S;

    #[derive(Debug, Clone, Copy)]
    enum Expect {
        /// The stages passed through, in order.
        Moves(&'static [AccountStage]),
        Nothing,
        /// Refused; the reason names the current stage.
        Refused,
        /// Stays, and is flagged at risk.
        Flags,
    }
    use Expect::{Flags, Moves, Nothing, Refused};

    fn state(stage: AccountStage) -> AccountState {
        let customer = stage >= S::Implement;
        AccountState {
            stage,
            customer_type: if customer {
                CustomerType::Customer
            } else {
                CustomerType::Prospect
            },
            score_baseline: 0.0,
            recycled: false,
            // An account in PIPELINE normally has its opportunity open.
            open_opportunities: u32::from(stage == S::Pipeline),
            engagement_score: 0.0,
            at_risk: None,
        }
    }

    fn won_of(kind: OpportunityKind) -> AccountEvent {
        AccountEvent::OpportunityWon { kind }
    }

    fn lost_of(other_open: u32, kind: OpportunityKind) -> AccountEvent {
        AccountEvent::OpportunityLost { other_open, kind }
    }

    /// The tenant settings of the table: both churn rules on.
    fn churning() -> LifecycleSettings {
        LifecycleSettings {
            churn_on_lost_renewal: true,
            churn_when_contracts_end: true,
            ..LifecycleSettings::default()
        }
    }

    fn engagement(engagement_score: f64, intent_score: f64) -> AccountEvent {
        AccountEvent::Engagement {
            engagement_score,
            intent_score,
        }
    }

    /// Every stage against every cause, with both churn rules turned on
    /// (`churn_rules_are_off_by_default` shows them off).
    #[test]
    fn every_stage_against_every_cause() {
        use OpportunityKind::{NewBusiness, Renewal, Upgrade};
        let causes: [(&str, AccountEvent); 19] = [
            ("score 0", engagement(0.0, 0.0)),
            ("score 50", engagement(50.0, 0.0)),
            ("score 120", engagement(120.0, 0.0)),
            ("intent only", engagement(0.0, 5.0)),
            ("qualify", AccountEvent::Qualify),
            ("disqualify", AccountEvent::Disqualify),
            ("nurture", AccountEvent::Nurture),
            ("opened", AccountEvent::OpportunityOpened),
            ("won", won_of(NewBusiness)),
            ("won renewal", won_of(Renewal)),
            ("won upgrade", won_of(Upgrade)),
            ("lost, last open", lost_of(0, NewBusiness)),
            ("lost, another open", lost_of(1, NewBusiness)),
            ("lost renewal", lost_of(0, Renewal)),
            ("contracts ended", AccountEvent::ContractsEnded),
            ("advance", AccountEvent::Advance { to: None }),
            ("churn", AccountEvent::Churn),
            ("flag at risk", AccountEvent::FlagAtRisk),
            ("clear at risk", AccountEvent::ClearAtRisk),
        ];
        const E: &[AccountStage] = &[S::Engaged];
        const EP: &[AccountStage] = &[S::Engaged, S::Prioritized];
        const P: &[AccountStage] = &[S::Prioritized];
        const D: &[AccountStage] = &[S::Detected];
        const Q: &[AccountStage] = &[S::Qualified];
        const PL: &[AccountStage] = &[S::Pipeline];
        const I: &[AccountStage] = &[S::Implement];
        const X: &[AccountStage] = &[S::Expand];
        const A: &[AccountStage] = &[S::Advocate];
        const C: &[AccountStage] = &[S::Churned];
        #[rustfmt::skip]
        let table: [(AccountStage, [Expect; 19]); 10] = [
            //             score0   score50  score120  intent   qualify  disq     nurture  opened    won       won-ren   won-upg   lost0     lost1    lost-ren  ended     advance   churn     flag     clear
            (S::Targeted,    [Nothing, Moves(E), Moves(EP), Moves(D), Refused, Refused, Refused, Moves(PL), Moves(I), Moves(I), Moves(I), Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Nothing]),
            (S::Detected,    [Nothing, Moves(E), Moves(EP), Nothing, Refused, Refused, Refused, Moves(PL), Moves(I), Moves(I), Moves(I), Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Nothing]),
            (S::Engaged,     [Nothing, Nothing, Moves(P), Nothing, Refused, Refused, Refused, Moves(PL), Moves(I), Moves(I), Moves(I), Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Nothing]),
            (S::Prioritized, [Nothing, Nothing, Nothing, Nothing, Moves(Q), Moves(D), Moves(E), Moves(PL), Moves(I), Moves(I), Moves(I), Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Nothing]),
            (S::Qualified,   [Nothing, Nothing, Nothing, Nothing, Refused, Moves(D), Moves(E), Moves(PL), Moves(I), Moves(I), Moves(I), Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Nothing]),
            // A prospect's lost "renewal" is any lost deal: the on-lost action.
            (S::Pipeline,    [Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Nothing, Moves(I), Moves(I), Moves(I), Moves(E), Nothing, Moves(E), Nothing, Refused, Refused, Refused, Nothing]),
            // Customers: an upgrade moves them on, a lost renewal or ended
            // contracts churn them, and only they can be at risk.
            (S::Implement,   [Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Nothing, Nothing, Nothing, Moves(X), Nothing, Nothing, Moves(C), Moves(C), Moves(X), Moves(C), Flags, Nothing]),
            (S::Expand,      [Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Nothing, Nothing, Nothing, Moves(A), Nothing, Nothing, Moves(C), Moves(C), Moves(A), Moves(C), Flags, Nothing]),
            (S::Advocate,    [Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Nothing, Nothing, Nothing, Nothing, Nothing, Nothing, Moves(C), Moves(C), Refused, Moves(C), Flags, Nothing]),
            // A former customer: a new opportunity moves it (back to PIPELINE),
            // and a deal opened before the churn, won since, makes it a customer again.
            (S::Churned,     [Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Moves(PL), Moves(I), Moves(I), Moves(I), Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Nothing]),
        ];
        assert_eq!(
            table.len(),
            AccountStage::ALL.len(),
            "every stage is in the table"
        );
        let settings = churning();
        for (stage, expected) in table {
            let before = state(stage);
            for ((name, event), expect) in causes.iter().zip(expected) {
                let result = apply(&before, event, &settings);
                match (expect, result) {
                    (Moves(stages), Ok(outcome)) => {
                        let got: Vec<_> = outcome.steps.iter().map(|s| s.to_stage).collect();
                        assert_eq!(got, stages, "{stage} on {name}");
                        let mut from = stage;
                        for step in &outcome.steps {
                            assert_eq!(step.from_stage, from, "{stage} on {name}: steps chain");
                            from = step.to_stage;
                        }
                        assert_eq!(
                            outcome.notify_prioritized,
                            stages.last() == Some(&S::Prioritized),
                            "{stage} on {name}: notify exactly when entering PRIORITIZED"
                        );
                        assert_eq!(outcome.risk, None, "{stage} on {name}: not at risk");
                    }
                    (Nothing, Ok(outcome)) => {
                        assert!(
                            outcome.steps.is_empty(),
                            "{stage} on {name}: moved {:?}",
                            outcome.steps
                        );
                        assert!(!outcome.notify_prioritized);
                        assert_eq!(outcome.risk, None, "{stage} on {name}");
                    }
                    (Flags, Ok(outcome)) => {
                        assert!(outcome.steps.is_empty(), "{stage} on {name}: stays");
                        assert_eq!(
                            outcome.risk,
                            Some(RiskChange::Flagged {
                                source: AtRiskSource::Person,
                                explanation: None,
                                notify: true,
                            }),
                            "{stage} on {name}"
                        );
                    }
                    (Refused, Err(Refusal(reason))) => {
                        assert!(
                            reason.contains(stage.as_str()),
                            "{stage} on {name}: {reason}"
                        );
                    }
                    (expect, result) => {
                        panic!("{stage} on {name}: expected {expect:?}, got {result:?}")
                    }
                }
            }
        }
    }

    #[test]
    fn churn_rules_are_off_by_default() {
        let settings = LifecycleSettings::default();
        for stage in [S::Implement, S::Expand, S::Advocate] {
            for event in [
                lost_of(0, OpportunityKind::Renewal),
                AccountEvent::ContractsEnded,
            ] {
                let outcome = apply(&state(stage), &event, &settings).expect("never refused");
                assert!(outcome.steps.is_empty(), "{stage} on {event:?}");
            }
        }
        let ended = apply(
            &state(S::Expand),
            &AccountEvent::ContractsEnded,
            &churning(),
        )
        .expect("ended");
        assert_eq!(ended.steps[0].cause, TransitionCause::ContractsEnded);
        let lost = apply(
            &state(S::Expand),
            &lost_of(3, OpportunityKind::Renewal),
            &churning(),
        )
        .expect("lost renewal");
        assert_eq!(
            (lost.steps[0].to_stage, lost.steps[0].cause),
            (S::Churned, TransitionCause::OpportunityLost),
            "a lost renewal churns even with other deals open"
        );
    }

    /// The at-risk flag of a customer, set by a person or by the engagement
    /// rule, against every event that touches it.
    #[test]
    fn the_at_risk_flag_against_every_event() {
        use OpportunityKind::{NewBusiness, Renewal, Upgrade};
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Risk {
            Same,
            Flag(AtRiskSource, bool),
            Clear,
            Refused,
        }
        let settings = LifecycleSettings {
            at_risk_engagement_threshold: 20.0,
            ..churning()
        };
        let customer = |score: f64, at_risk: Option<AtRiskSource>| AccountState {
            engagement_score: score,
            at_risk,
            ..state(S::Expand)
        };
        let person = Some(AtRiskSource::Person);
        let rule = Some(AtRiskSource::Engagement);
        let cases: [(&str, AccountState, AccountEvent, Risk); 17] = [
            (
                "falls below",
                customer(30.0, None),
                engagement(19.0, 0.0),
                Risk::Flag(AtRiskSource::Engagement, true),
            ),
            (
                "falls to the threshold",
                customer(30.0, None),
                engagement(20.0, 0.0),
                Risk::Same,
            ),
            (
                "starts low",
                customer(0.0, None),
                engagement(5.0, 0.0),
                Risk::Same,
            ),
            (
                "stays low, flagged by the rule",
                customer(10.0, rule),
                engagement(9.0, 0.0),
                Risk::Same,
            ),
            (
                "back up, flagged by the rule",
                customer(10.0, rule),
                engagement(20.0, 0.0),
                Risk::Clear,
            ),
            (
                "back up, flagged by a person",
                customer(10.0, person),
                engagement(50.0, 0.0),
                Risk::Same,
            ),
            (
                "falls, flagged by a person",
                customer(30.0, person),
                engagement(5.0, 0.0),
                Risk::Same,
            ),
            (
                "person flags",
                customer(30.0, None),
                AccountEvent::FlagAtRisk,
                Risk::Flag(AtRiskSource::Person, true),
            ),
            (
                "person flags again",
                customer(30.0, rule),
                AccountEvent::FlagAtRisk,
                Risk::Flag(AtRiskSource::Person, false),
            ),
            (
                "person clears a rule's flag",
                customer(10.0, rule),
                AccountEvent::ClearAtRisk,
                Risk::Clear,
            ),
            (
                "person clears nothing",
                customer(10.0, None),
                AccountEvent::ClearAtRisk,
                Risk::Same,
            ),
            (
                "renewal won",
                customer(10.0, person),
                won_of(Renewal),
                Risk::Clear,
            ),
            (
                "upgrade won",
                customer(10.0, rule),
                won_of(Upgrade),
                Risk::Clear,
            ),
            (
                "new business won",
                customer(10.0, rule),
                won_of(NewBusiness),
                Risk::Same,
            ),
            (
                "churns",
                customer(10.0, person),
                AccountEvent::Churn,
                Risk::Clear,
            ),
            (
                "contracts end",
                customer(10.0, rule),
                AccountEvent::ContractsEnded,
                Risk::Clear,
            ),
            (
                "a prospect",
                AccountState {
                    at_risk: None,
                    ..state(S::Pipeline)
                },
                AccountEvent::FlagAtRisk,
                Risk::Refused,
            ),
        ];
        for (name, before, event, expect) in cases {
            let got = match apply(&before, &event, &settings) {
                Err(_) => Risk::Refused,
                Ok(outcome) => match outcome.risk {
                    None => Risk::Same,
                    Some(RiskChange::Flagged { source, notify, .. }) => Risk::Flag(source, notify),
                    Some(RiskChange::Cleared { .. }) => Risk::Clear,
                },
            };
            assert_eq!(got, expect, "{name}");
        }
        // The rule explains itself; a person's flag carries the person's reason.
        let fell = apply(&customer(30.0, None), &engagement(12.5, 0.0), &settings).expect("ok");
        match fell.risk {
            Some(RiskChange::Flagged {
                explanation: Some(text),
                ..
            }) => assert!(
                text.contains("30.0 to 12.5") && text.contains("20"),
                "{text}"
            ),
            other => panic!("expected the rule's flag, got {other:?}"),
        }
        // Off when the threshold is 0; and the rule's own flag goes with
        // the next score then, a person's stays.
        let off = apply(&customer(30.0, None), &engagement(1.0, 0.0), &churning()).expect("ok");
        assert_eq!(off.risk, None);
        let off = apply(&customer(10.0, rule), &engagement(5.0, 0.0), &churning()).expect("ok");
        assert!(
            matches!(off.risk, Some(RiskChange::Cleared { .. })),
            "{:?}",
            off.risk
        );
        let off = apply(&customer(10.0, person), &engagement(5.0, 0.0), &churning()).expect("ok");
        assert_eq!(off.risk, None);
    }

    #[test]
    fn a_churned_customer_comes_back_as_a_re_prospect_and_wins_again() {
        let settings = LifecycleSettings::default();
        let customer = state(S::Expand);
        let churned = apply(&customer, &AccountEvent::Churn, &settings).expect("a customer churns");
        assert_eq!(
            churned.steps,
            [Step {
                from_stage: S::Expand,
                to_stage: S::Churned,
                from_customer_type: CustomerType::Customer,
                to_customer_type: CustomerType::Customer,
                cause: TransitionCause::Churn,
            }]
        );
        assert!(!churned.reset_baseline && !churned.notify_prioritized);
        let former = state(S::Churned);
        let back = apply(&former, &AccountEvent::OpportunityOpened, &settings).expect("opened");
        assert_eq!(
            back.final_state(&former),
            (S::Pipeline, CustomerType::ReProspect)
        );
        let pipeline = AccountState {
            stage: S::Pipeline,
            customer_type: CustomerType::ReProspect,
            score_baseline: 0.0,
            recycled: false,
            open_opportunities: 1,
            engagement_score: 0.0,
            at_risk: None,
        };
        let won = apply(&pipeline, &won_of(OpportunityKind::NewBusiness), &settings).expect("won");
        assert_eq!(
            won.final_state(&pipeline),
            (S::Implement, CustomerType::Customer)
        );
        // Lost on the way back: the tenant's on-lost action, as for any prospect.
        let lost = apply(
            &pipeline,
            &lost_of(0, OpportunityKind::NewBusiness),
            &settings,
        )
        .expect("lost");
        assert_eq!(
            lost.final_state(&pipeline),
            (S::Engaged, CustomerType::ReProspect)
        );
    }

    #[test]
    fn customer_type_changes_with_disqualify_and_won_only() {
        let settings = LifecycleSettings::default();
        let disq =
            apply(&state(S::Qualified), &AccountEvent::Disqualify, &settings).expect("allowed");
        assert_eq!(
            disq.final_state(&state(S::Qualified)),
            (S::Detected, CustomerType::ReProspect)
        );
        assert!(disq.reset_baseline);
        let nurture =
            apply(&state(S::Qualified), &AccountEvent::Nurture, &settings).expect("allowed");
        assert_eq!(
            nurture.final_state(&state(S::Qualified)),
            (S::Engaged, CustomerType::Prospect)
        );
        let won = apply(
            &state(S::Pipeline),
            &won_of(OpportunityKind::NewBusiness),
            &settings,
        )
        .expect("won");
        assert_eq!(
            won.final_state(&state(S::Pipeline)),
            (S::Implement, CustomerType::Customer)
        );
        // A RE_PROSPECT that wins becomes a CUSTOMER too.
        let mut re = state(S::Pipeline);
        re.customer_type = CustomerType::ReProspect;
        let rewon = apply(&re, &won_of(OpportunityKind::NewBusiness), &settings).expect("won");
        assert_eq!(
            rewon.final_state(&re),
            (S::Implement, CustomerType::Customer)
        );
    }

    #[test]
    fn pipeline_without_open_opportunity_can_be_recycled() {
        let settings = LifecycleSettings::default();
        let mut pipeline = state(S::Pipeline);
        let refused = apply(&pipeline, &AccountEvent::Nurture, &settings).expect_err("open deal");
        assert!(refused.0.contains("1 open opportunity"), "{}", refused.0);
        pipeline.open_opportunities = 0;
        let outcome = apply(&pipeline, &AccountEvent::Disqualify, &settings).expect("allowed");
        assert_eq!(outcome.steps[0].to_stage, S::Detected);
    }

    #[test]
    fn qualify_needs_the_qualified_stage() {
        let settings = LifecycleSettings {
            qualified_stage_enabled: false,
            ..LifecycleSettings::default()
        };
        let refused = apply(&state(S::Prioritized), &AccountEvent::Qualify, &settings)
            .expect_err("stage turned off");
        assert!(
            refused.0.contains("qualified_stage_enabled"),
            "{}",
            refused.0
        );
        // Then an opportunity moves PRIORITIZED straight to PIPELINE.
        let opened = apply(
            &state(S::Prioritized),
            &AccountEvent::OpportunityOpened,
            &settings,
        )
        .expect("opened");
        assert_eq!(opened.steps[0].to_stage, S::Pipeline);
    }

    #[test]
    fn on_lost_setting_decides_what_a_lost_deal_does() {
        for (action, expected) in [
            (
                OnLostAction::Nurture,
                Some((S::Engaged, CustomerType::Prospect)),
            ),
            (
                OnLostAction::Disqualify,
                Some((S::Detected, CustomerType::ReProspect)),
            ),
            (OnLostAction::Stay, None),
        ] {
            let settings = LifecycleSettings {
                on_lost_action: action,
                ..LifecycleSettings::default()
            };
            let before = state(S::Pipeline);
            let outcome = apply(
                &before,
                &lost_of(0, OpportunityKind::NewBusiness),
                &settings,
            )
            .expect("lost is never refused");
            match expected {
                Some(end) => {
                    assert_eq!(outcome.final_state(&before), end, "{action}");
                    assert_eq!(outcome.steps[0].cause, TransitionCause::OpportunityLost);
                }
                None => assert!(outcome.steps.is_empty(), "{action}"),
            }
        }
    }

    #[test]
    fn thresholds_are_settings_and_apply_to_engagement_since_the_last_recycle() {
        let settings = LifecycleSettings {
            engaged_threshold: 10.0,
            prioritized_threshold: 50.0,
            ..LifecycleSettings::default()
        };
        let targeted = state(S::Targeted);
        let at = |score| {
            apply(&targeted, &engagement(score, 0.0), &settings)
                .expect("ok")
                .steps
                .len()
        };
        assert_eq!(at(10.0), 0, "ENGAGED needs more than the engaged threshold");
        assert_eq!(at(10.5), 1);
        assert_eq!(at(50.0), 2, "PRIORITIZED at the threshold itself");

        // A disqualified account with 120 points must earn 50 new ones.
        let recycled = AccountState {
            stage: S::Detected,
            customer_type: CustomerType::ReProspect,
            score_baseline: 120.0,
            recycled: true,
            open_opportunities: 0,
            engagement_score: 120.0,
            at_risk: None,
        };
        let still = apply(&recycled, &engagement(125.0, 0.0), &settings).expect("ok");
        assert!(
            still.steps.is_empty(),
            "5 new points do not re-engage past the threshold of 10"
        );
        let back = apply(&recycled, &engagement(170.0, 0.0), &settings).expect("ok");
        let stages: Vec<_> = back.steps.iter().map(|s| s.to_stage).collect();
        assert_eq!(stages, [S::Engaged, S::Prioritized]);
        assert!(back.notify_prioritized, "re-prioritizing notifies again");
        assert_eq!(back.steps[1].to_customer_type, CustomerType::ReProspect);
    }

    #[test]
    fn advance_guard_refuses_a_repeated_call() {
        let settings = LifecycleSettings::default();
        let refused = apply(
            &state(S::Expand),
            &AccountEvent::Advance {
                to: Some(S::Expand),
            },
            &settings,
        )
        .expect_err("already EXPAND");
        assert!(
            refused.0.contains("next stage is ADVOCATE"),
            "{}",
            refused.0
        );
        let ok = apply(
            &state(S::Implement),
            &AccountEvent::Advance {
                to: Some(S::Expand),
            },
            &settings,
        )
        .expect("guard matches");
        assert_eq!(ok.steps[0].cause, TransitionCause::Manual);
    }
}
