//! The account stage rules (DESIGN.md "Account stages"), as one pure function:
//! given an account's state, an event and the tenant's settings, which
//! transitions happen, or why the event is refused.

use cascade_domain::domain_enum;
use cascade_domain::{AccountStage, CustomerType, stage_reached_by_score};
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
    /// Open opportunities lifecycle knows of for the account.
    pub open_opportunities: u32,
}

/// The engagement the thresholds are compared with: what was earned since
/// the account was last sent back (the whole score if it never was).
pub fn earned_since_recycle(engagement_score: f64, score_baseline: f64) -> f64 {
    engagement_score - score_baseline
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
    OpportunityWon,
    /// `other_open`: opportunities of the account still open besides this one.
    OpportunityLost {
        other_open: u32,
    },
    /// IMPLEMENT to EXPAND to ADVOCATE; `to` guards against a repeated call.
    Advance {
        to: Option<AccountStage>,
    },
    /// A customer left.
    Churn,
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
        AccountEvent::OpportunityWon => {
            if kind != CustomerType::Customer {
                push(
                    &mut out,
                    S::Implement,
                    CustomerType::Customer,
                    TransitionCause::OpportunityWon,
                );
            }
        }
        AccountEvent::OpportunityLost { other_open } => {
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
            let next = match state.stage {
                S::Implement => S::Expand,
                S::Expand => S::Advocate,
                other => {
                    return Err(Refusal(format!(
                        "the account is {other}; AdvanceAccount moves IMPLEMENT to EXPAND and EXPAND to ADVOCATE"
                    )));
                }
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
    }
    Ok(out)
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
    }
    use Expect::{Moves, Nothing, Refused};

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
            // An account in PIPELINE normally has its opportunity open.
            open_opportunities: u32::from(stage == S::Pipeline),
        }
    }

    fn engagement(engagement_score: f64, intent_score: f64) -> AccountEvent {
        AccountEvent::Engagement {
            engagement_score,
            intent_score,
        }
    }

    /// Every stage against every cause with the default settings.
    #[test]
    fn every_stage_against_every_cause() {
        let causes: [(&str, AccountEvent); 13] = [
            ("score 0", engagement(0.0, 0.0)),
            ("score 50", engagement(50.0, 0.0)),
            ("score 120", engagement(120.0, 0.0)),
            ("intent only", engagement(0.0, 5.0)),
            ("qualify", AccountEvent::Qualify),
            ("disqualify", AccountEvent::Disqualify),
            ("nurture", AccountEvent::Nurture),
            ("opened", AccountEvent::OpportunityOpened),
            ("won", AccountEvent::OpportunityWon),
            (
                "lost, last open",
                AccountEvent::OpportunityLost { other_open: 0 },
            ),
            (
                "lost, another open",
                AccountEvent::OpportunityLost { other_open: 1 },
            ),
            ("advance", AccountEvent::Advance { to: None }),
            ("churn", AccountEvent::Churn),
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
        let table: [(AccountStage, [Expect; 13]); 10] = [
            //             score0   score50  score120  intent   qualify  disq     nurture  opened   won      lost0    lost1    advance  churn
            (S::Targeted,    [Nothing, Moves(E), Moves(EP), Moves(D), Refused, Refused, Refused, Moves(PL), Moves(I), Nothing, Nothing, Refused, Refused]),
            (S::Detected,    [Nothing, Moves(E), Moves(EP), Nothing, Refused, Refused, Refused, Moves(PL), Moves(I), Nothing, Nothing, Refused, Refused]),
            (S::Engaged,     [Nothing, Nothing, Moves(P), Nothing, Refused, Refused, Refused, Moves(PL), Moves(I), Nothing, Nothing, Refused, Refused]),
            (S::Prioritized, [Nothing, Nothing, Nothing, Nothing, Moves(Q), Moves(D), Moves(E), Moves(PL), Moves(I), Nothing, Nothing, Refused, Refused]),
            (S::Qualified,   [Nothing, Nothing, Nothing, Nothing, Refused, Moves(D), Moves(E), Moves(PL), Moves(I), Nothing, Nothing, Refused, Refused]),
            (S::Pipeline,    [Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Nothing, Moves(I), Moves(E), Nothing, Refused, Refused]),
            (S::Implement,   [Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Nothing, Nothing, Nothing, Nothing, Moves(X), Moves(C)]),
            (S::Expand,      [Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Nothing, Nothing, Nothing, Nothing, Moves(A), Moves(C)]),
            (S::Advocate,    [Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Nothing, Nothing, Nothing, Nothing, Refused, Moves(C)]),
            // A former customer: only a new opportunity moves it (back to PIPELINE).
            (S::Churned,     [Nothing, Nothing, Nothing, Nothing, Refused, Refused, Refused, Moves(PL), Nothing, Nothing, Nothing, Refused, Refused]),
        ];
        assert_eq!(
            table.len(),
            AccountStage::ALL.len(),
            "every stage is in the table"
        );
        let settings = LifecycleSettings::default();
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
                    }
                    (Nothing, Ok(outcome)) => {
                        assert!(
                            outcome.steps.is_empty(),
                            "{stage} on {name}: moved {:?}",
                            outcome.steps
                        );
                        assert!(!outcome.notify_prioritized);
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
            open_opportunities: 1,
        };
        let won = apply(&pipeline, &AccountEvent::OpportunityWon, &settings).expect("won");
        assert_eq!(
            won.final_state(&pipeline),
            (S::Implement, CustomerType::Customer)
        );
        // Lost on the way back: the tenant's on-lost action, as for any prospect.
        let lost = apply(
            &pipeline,
            &AccountEvent::OpportunityLost { other_open: 0 },
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
            &AccountEvent::OpportunityWon,
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
        let won = apply(&re, &AccountEvent::OpportunityWon, &settings).expect("won");
        assert_eq!(won.final_state(&re), (S::Implement, CustomerType::Customer));
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
                &AccountEvent::OpportunityLost { other_open: 0 },
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
            open_opportunities: 0,
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
