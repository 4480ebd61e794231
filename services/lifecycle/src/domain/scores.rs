//! What a delivery of new engagement totals from scoring does to an account,
//! decided from a snapshot of the account and the delivery's contacts without
//! any I/O. Storage loads the snapshots of many deliveries at once, calls
//! [`decide`] for each, and writes all the decisions in one transaction.

use std::collections::HashMap;

use cascade_domain::{AccountStage, ContactStage, CustomerType};

use super::account_rules::{
    self, AccountEvent, AccountState, Earned, RiskChange, ScoreClock, Step,
};
use super::contact_rules::{self, ContactEvent, ContactMove};
use super::settings::LifecycleSettings;
use super::{NotificationDraft, NotificationReason, Refusal};

/// A contact's engagement delivered by scoring.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactEngagement {
    pub contact_id: String,
    pub engagement_score: f64,
    /// Distinct activity types recorded since the previous delivery.
    pub new_activity_types: Vec<String>,
}

/// New totals of one account, as scoring delivers them.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreDelivery {
    pub event_id: String,
    /// Per-account, increasing: an older delivery arriving late is stale.
    pub sequence: i64,
    pub engagement_score: f64,
    pub average_engagement_score: f64,
    pub intent_score: f64,
    pub contacts: Vec<ContactEngagement>,
    /// The UTC day the scores are at.
    pub day: i64,
    /// The half-life of the model they were computed under (0: no decay).
    pub decay_half_life_days: f64,
    /// What each of scoring's batches in the delivery added by new
    /// activity; `None` from a scoring older than this field.
    pub new_engagement: Option<Vec<EngagementAdded>>,
    /// Scoring's running total of what the account's new activity ever
    /// added, at `day`; `None` from a scoring older than this field.
    pub added_total: Option<f64>,
}

/// What one of scoring's batches (or one day's batches) added by new
/// activity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngagementAdded {
    /// The batch's sequence (the lowest of the day's): one at or below the
    /// account's last applied one was counted before (a delivery retried
    /// with more batches).
    pub sequence: i64,
    /// Points added, at `day`.
    pub points: f64,
    pub day: i64,
}

/// What the decision needs to know about the account.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountSnapshot {
    pub account_id: String,
    pub name: String,
    pub owner_id: Option<String>,
    pub state: AccountState,
    /// The sequence of the last delivery applied.
    pub score_sequence: i64,
    /// What the stored score (and so the baseline) is at; `None` before
    /// days were kept.
    pub score_clock: Option<ScoreClock>,
    /// The stored running total of new activity, at the clock's day.
    pub added_total: Option<AppliedTotal>,
    /// Whether this delivery's event id was applied before.
    pub applied_before: bool,
}

/// The running total of new activity a delivery brought, and its sequence.
/// It counts only while that is the account's last applied sequence: a
/// lifecycle older than it applies deliveries without storing their totals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AppliedTotal {
    pub total: f64,
    pub sequence: i64,
}

/// What the decision needs to know about a contact named in the delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactSnapshot {
    pub contact_id: String,
    /// The account the contact belongs to.
    pub account_id: String,
    pub email: Option<String>,
    pub stage: ContactStage,
    pub has_activity: bool,
}

/// A contact's new score, activity flag and, when it moves, stage.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactUpdate {
    pub contact_id: String,
    pub engagement_score: f64,
    pub has_activity: bool,
    /// `Some` only when the stage changes.
    pub moved: Option<ContactMove>,
    /// A hand-raise that moved nothing because the contact is in a deal:
    /// kept, so leaving the deal makes it MARKETING_QUALIFIED.
    pub raised_hand_in_deal: bool,
}

/// The changes a delivery makes.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreChanges {
    /// Account stage changes, in order.
    pub steps: Vec<Step>,
    /// Stage and customer type after the steps.
    pub stage: AccountStage,
    pub customer_type: CustomerType,
    /// The account's score baseline from now on: the delivered engagement
    /// score when the delivery sends it back, else the baseline decayed to
    /// the delivery's day.
    pub score_baseline: f64,
    /// What the stored score and baseline are at from now on.
    pub score_clock: ScoreClock,
    /// The running total of new activity to store with them.
    pub added_total: Option<f64>,
    pub contacts: Vec<ContactUpdate>,
    /// Contacts named in the delivery that are not the account's (another
    /// account's, or unknown): left alone.
    pub ignored_contacts: Vec<String>,
    /// The owner's messages: the account entering PRIORITIZED, or on an
    /// account past it one per contact that raised a hand (several people
    /// raising hands in one delivery are each news: a tester saw all but
    /// the first dropped).
    pub notifications: Vec<NotificationDraft>,
    /// The engagement rule set or cleared the at-risk flag: storage records
    /// it with `risk::records`, whose message to the owner replaces the
    /// hand-raises' (a customer falling below the threshold is the news).
    pub risk: Option<RiskChange>,
}

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum ScoreDecision {
    /// Its event id was applied before: nothing changes.
    Duplicate,
    /// A delivery with a higher sequence was applied: nothing changes.
    Stale,
    Apply(ScoreChanges),
}

/// Hand-raise notifications one delivery makes for an account, each naming
/// its person; more are told in one message counting them, so a backfill of
/// hand-raises does not flood the owner's webhook.
pub const MAX_HAND_RAISE_NOTIFICATIONS: usize = 10;

/// How far past the last applied sequence a delivery may be.
pub const MAX_SEQUENCE_JUMP: i64 = 1_000_000_000;

/// Decides what `delivery` does to `account`. `contacts` holds the stored
/// contacts the delivery names (missing ones are unknown).
pub fn decide(
    account: &AccountSnapshot,
    contacts: &HashMap<String, ContactSnapshot>,
    delivery: &ScoreDelivery,
    settings: &LifecycleSettings,
) -> Result<ScoreDecision, Refusal> {
    if account.applied_before {
        return Ok(ScoreDecision::Duplicate);
    }
    if delivery.sequence <= account.score_sequence {
        return Ok(ScoreDecision::Stale);
    }
    // Scoring counts an account's sequence up by one per batch; a far jump
    // would make every real delivery after it STALE (the score frozen).
    if delivery.sequence - account.score_sequence > MAX_SEQUENCE_JUMP {
        return Err(Refusal(format!(
            "sequence {} is more than {MAX_SEQUENCE_JUMP} past the last applied one ({}): \
             not a delivery of scoring's",
            delivery.sequence, account.score_sequence
        )));
    }
    // The baseline decays as the score it was taken from does. A delivery
    // of an earlier day than the stored score's (another replica's clock)
    // decays it no further back.
    let score_day = account
        .score_clock
        .map_or(delivery.day, |at| at.day.max(delivery.day));
    let earned = earned_by(account, delivery, score_day);
    let baseline = account_rules::baseline_at(
        &account.state,
        account.score_clock,
        (score_day, delivery.decay_half_life_days),
        delivery.engagement_score,
        earned,
    );
    let state = AccountState {
        score_baseline: baseline,
        ..account.state
    };
    let outcome = account_rules::apply(
        &state,
        &AccountEvent::Engagement {
            engagement_score: delivery.engagement_score,
            intent_score: delivery.intent_score,
        },
        settings,
    )?;
    let (stage, customer_type) = outcome.final_state(&state);

    let mut updates = Vec::with_capacity(delivery.contacts.len());
    let mut ignored = Vec::new();
    // (contact id, who, activity type) of each contact's first hand-raise.
    let mut hand_raises: Vec<(String, String, String)> = Vec::new();
    for engagement in &delivery.contacts {
        let Some(contact) = contacts
            .get(&engagement.contact_id)
            .filter(|c| c.account_id == account.account_id)
        else {
            ignored.push(engagement.contact_id.clone());
            continue;
        };
        let raised = engagement
            .new_activity_types
            .iter()
            .find(|t| settings.is_hand_raise(t));
        if let Some(activity_type) = raised {
            let who = contact
                .email
                .clone()
                .unwrap_or_else(|| contact.contact_id.clone());
            hand_raises.push((contact.contact_id.clone(), who, activity_type.clone()));
        }
        let active = !engagement.new_activity_types.is_empty();
        let moved = if active {
            contact_rules::move_on(
                contact.stage,
                ContactEvent::Activity {
                    hand_raise: raised.is_some(),
                },
            )
        } else {
            None
        };
        updates.push(ContactUpdate {
            contact_id: contact.contact_id.clone(),
            engagement_score: engagement.engagement_score,
            has_activity: contact.has_activity || active,
            moved,
            raised_hand_in_deal: raised.is_some() && contact.stage == ContactStage::Opportunity,
        });
    }

    let notifications = if outcome.notify_prioritized {
        vec![NotificationDraft {
            reason: NotificationReason::Prioritized,
            text: prioritized_text(
                &account.name,
                delivery.engagement_score,
                baseline,
                settings.prioritized_threshold,
            ),
            raiser_contact_id: None,
        }]
    } else if settings.renotify_on_hand_raise && stage >= AccountStage::Prioritized {
        let more = hand_raises
            .len()
            .saturating_sub(MAX_HAND_RAISE_NOTIFICATIONS);
        let mut told: Vec<NotificationDraft> = hand_raises
            .into_iter()
            .take(MAX_HAND_RAISE_NOTIFICATIONS)
            .map(|(contact_id, who, activity_type)| NotificationDraft {
                reason: NotificationReason::HandRaise,
                text: format!(
                    "{who} raised a hand ({activity_type}) on {}, which is {stage}.",
                    account.name
                ),
                raiser_contact_id: Some(contact_id),
            })
            .collect();
        if more > 0 {
            told.push(NotificationDraft {
                reason: NotificationReason::HandRaise,
                text: format!(
                    "{more} more people raised a hand on {}, which is {stage}: see its \
                     contacts' stage changes.",
                    account.name
                ),
                raiser_contact_id: None,
            });
        }
        told
    } else {
        Vec::new()
    };

    Ok(ScoreDecision::Apply(ScoreChanges {
        steps: outcome.steps,
        stage,
        customer_type,
        score_baseline: if outcome.reset_baseline {
            delivery.engagement_score
        } else {
            baseline
        },
        score_clock: ScoreClock {
            day: score_day,
            half_life_days: Some(delivery.decay_half_life_days),
        },
        added_total: added_total_at(delivery, score_day),
        contacts: updates,
        ignored_contacts: ignored,
        notifications,
        risk: outcome.risk,
    }))
}

/// What `delivery`'s new activity earned, at `score_day`. Scoring's running
/// total, when this delivery and the last applied one both carry it, counts
/// every batch between their sequences, those whose own delivery never came
/// too (a dead letter, a refused run); otherwise the batches the delivery
/// names count; an older scoring says only whether there was new activity.
fn earned_by(account: &AccountSnapshot, delivery: &ScoreDelivery, score_day: i64) -> Earned {
    let last = account
        .added_total
        .filter(|last| last.sequence == account.score_sequence);
    if let (Some(total), Some(last), Some(clock)) = (
        added_total_at(delivery, score_day),
        last,
        account.score_clock,
    ) {
        // Scoring decayed the last total by the half-life of each day since;
        // one half-life over the gap is that only when it did not change, or
        // when there is no gap. Otherwise the named batches count: they may
        // count too little, where the other half-life over the gap could read
        // much of the total as earned (a reviewer's case: 38 points).
        let same = clock.half_life_days == Some(delivery.decay_half_life_days);
        if same || clock.day == score_day {
            return Earned::Points(
                total
                    - last.total
                        * cascade_domain::decay::decay_factor(
                            delivery.decay_half_life_days,
                            clock.day,
                            score_day,
                        ),
            );
        }
    }
    match &delivery.new_engagement {
        // Each batch not applied before, decayed from its day as the score.
        Some(batches) => Earned::Points(
            batches
                .iter()
                .filter(|b| b.sequence > account.score_sequence)
                .map(|b| {
                    b.points
                        * cascade_domain::decay::decay_factor(
                            delivery.decay_half_life_days,
                            b.day,
                            score_day,
                        )
                })
                .sum(),
        ),
        // An older scoring says only whether there was new activity: an
        // engagement delivery names each contact with its new types; a
        // recompute or a decay refresh names none.
        None if delivery
            .contacts
            .iter()
            .any(|c| !c.new_activity_types.is_empty()) =>
        {
            Earned::AllOfTheChange
        }
        None => Earned::Points(0.0),
    }
}

/// The delivery's running total at `score_day`: a delivery of an earlier
/// day (another scoring replica's clock) decays to the stored score's day,
/// as the last total does.
fn added_total_at(delivery: &ScoreDelivery, score_day: i64) -> Option<f64> {
    delivery.added_total.map(|total| {
        total
            * cascade_domain::decay::decay_factor(
                delivery.decay_half_life_days,
                delivery.day,
                score_day,
            )
    })
}

/// The owner's message when an account enters PRIORITIZED.
/// After a recycle the threshold counts only what was earned since
/// (`score_baseline`), so the text says that figure and the score beside it
/// (a tester found "a score of 250 (threshold 100)" misleading there).
pub fn prioritized_text(
    account_name: &str,
    engagement_score: f64,
    score_baseline: f64,
    threshold: f64,
) -> String {
    if score_baseline == 0.0 {
        return format!(
            "{account_name} reached PRIORITIZED with an engagement score of {engagement_score:.0} \
             (threshold {threshold:.0}): it is ready for direct outreach."
        );
    }
    let earned = account_rules::earned_since_recycle(engagement_score, score_baseline);
    format!(
        "{account_name} reached PRIORITIZED with {earned:.0} points of engagement since it was \
         last sent back (threshold {threshold:.0}; score {engagement_score:.0}): it is ready \
         for direct outreach."
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account_rules::TransitionCause;
    use crate::domain::contact_rules::ContactTransitionCause;

    fn settings() -> LifecycleSettings {
        LifecycleSettings {
            engaged_threshold: 10.0,
            prioritized_threshold: 50.0,
            hand_raise_activity_types: vec!["demo_request".into()],
            renotify_on_hand_raise: true,
            ..LifecycleSettings::default()
        }
    }

    fn account(stage: AccountStage) -> AccountSnapshot {
        AccountSnapshot {
            account_id: "acc".into(),
            name: "Acme".into(),
            owner_id: Some("owner".into()),
            state: AccountState {
                stage,
                customer_type: CustomerType::Prospect,
                score_baseline: 0.0,
                recycled: false,
                open_opportunities: 0,
                engagement_score: 0.0,
                at_risk: None,
            },
            score_sequence: 3,
            score_clock: Some(ScoreClock {
                day: DAY,
                half_life_days: Some(30.0),
            }),
            added_total: None,
            applied_before: false,
        }
    }

    /// The day the test's stored scores are at.
    const DAY: i64 = 20_000;

    fn contact(id: &str, account_id: &str, stage: ContactStage) -> (String, ContactSnapshot) {
        (
            id.to_owned(),
            ContactSnapshot {
                contact_id: id.into(),
                account_id: account_id.into(),
                email: Some(format!("{id}@acme.test")),
                stage,
                has_activity: false,
            },
        )
    }

    fn delivery(score: f64, contacts: &[(&str, &[&str])]) -> ScoreDelivery {
        ScoreDelivery {
            event_id: "e1".into(),
            sequence: 4,
            engagement_score: score,
            average_engagement_score: score,
            intent_score: 0.0,
            contacts: contacts
                .iter()
                .map(|(id, types)| ContactEngagement {
                    contact_id: (*id).into(),
                    engagement_score: score,
                    new_activity_types: types.iter().map(|t| (*t).to_owned()).collect(),
                })
                .collect(),
            day: DAY,
            decay_half_life_days: 0.0,
            new_engagement: None,
            added_total: None,
        }
    }

    /// `d` as this scoring sends it: saying what its new activity earned,
    /// in one batch of its sequence and day.
    fn earning(points: f64, d: ScoreDelivery) -> ScoreDelivery {
        ScoreDelivery {
            new_engagement: Some(vec![EngagementAdded {
                sequence: d.sequence,
                points,
                day: d.day,
            }]),
            ..d
        }
    }

    /// `a` after `c` applied a delivery of `score`.
    fn after(a: &AccountSnapshot, c: &ScoreChanges, score: f64) -> AccountSnapshot {
        let mut a = a.clone();
        a.state.score_baseline = c.score_baseline;
        a.state.engagement_score = score;
        a.score_clock = Some(c.score_clock);
        a.score_sequence += 1;
        a
    }

    fn changes(decision: Result<ScoreDecision, Refusal>) -> ScoreChanges {
        match decision.expect("a score is never refused") {
            ScoreDecision::Apply(changes) => changes,
            other => panic!("expected changes, got {other:?}"),
        }
    }

    /// A recycled account at `stage` with its stored baseline and score of
    /// DAY under `half_life_days`.
    fn recycled(
        stage: AccountStage,
        baseline: f64,
        score: f64,
        half_life_days: f64,
    ) -> AccountSnapshot {
        let mut a = account(stage);
        a.state.score_baseline = baseline;
        a.state.engagement_score = score;
        a.state.recycled = true;
        a.score_clock = Some(ScoreClock {
            day: DAY,
            half_life_days: Some(half_life_days),
        });
        a
    }

    /// What `delivery` does to `account` (no contacts known).
    fn applied(account: &AccountSnapshot, delivery: &ScoreDelivery) -> ScoreChanges {
        changes(decide(account, &HashMap::new(), delivery, &settings()))
    }

    /// A Nurtured account's baseline (150, kept on DAY) decays as its old
    /// points do: 30 days on, at a half-life of 30, they count 75, and a
    /// score of 175 is 100 earned since, PRIORITIZED at 50 (a tester saw
    /// such an account stay ENGAGED, 25 "earned").
    #[test]
    fn a_recycled_baseline_decays_with_the_score() {
        let mut a = account(AccountStage::Engaged);
        a.state.score_baseline = 150.0;
        a.state.engagement_score = 150.0;
        let later = ScoreDelivery {
            day: DAY + 30,
            decay_half_life_days: 30.0,
            ..delivery(175.0, &[("c1", &["email_open"])])
        };
        let c = changes(decide(&a, &HashMap::new(), &later, &settings()));
        assert_eq!(c.stage, AccountStage::Prioritized);
        let clock = |day: i64| ScoreClock {
            day,
            half_life_days: Some(30.0),
        };
        assert_eq!((c.score_baseline, c.score_clock), (75.0, clock(DAY + 30)));
        // A half-life not known (kept before) is taken as the delivery's.
        a.score_clock = Some(ScoreClock {
            day: DAY,
            half_life_days: None,
        });
        let c = changes(decide(&a, &HashMap::new(), &later, &settings()));
        assert_eq!(c.score_baseline, 75.0);
        // Of unknown day, the baseline stays.
        a.score_clock = None;
        let c = changes(decide(&a, &HashMap::new(), &later, &settings()));
        assert_eq!(c.score_baseline, 150.0);
        // A delivery of an earlier day (another replica's clock) decays
        // nothing and keeps the later day.
        a.score_clock = Some(clock(DAY + 30));
        let earlier = ScoreDelivery {
            day: DAY + 29,
            ..later.clone()
        };
        let c = changes(decide(&a, &HashMap::new(), &earlier, &settings()));
        assert_eq!((c.score_baseline, c.score_clock), (150.0, clock(DAY + 30)));
    }

    /// A change of the model's decay moves no recycled account by itself:
    /// scoring rescored everything under the new half-life, and what was
    /// earned since the recycle is kept (a reviewer's case: a Nurture at
    /// 300, 60 days at a half-life of 30, then decay turned off: 300
    /// redelivered against a baseline decayed to 75 re-prioritized it).
    #[test]
    fn a_change_of_decay_keeps_what_was_earned_since_the_recycle() {
        let mut a = account(AccountStage::Engaged);
        a.state.score_baseline = 75.0;
        a.state.engagement_score = 85.0;
        let undecayed = ScoreDelivery {
            day: DAY,
            decay_half_life_days: 0.0,
            ..delivery(310.0, &[])
        };
        let c = changes(decide(&a, &HashMap::new(), &undecayed, &settings()));
        assert_eq!(c.score_baseline, 300.0, "the 10 earned, kept");
        assert_eq!(c.stage, AccountStage::Engaged);
        assert_eq!(c.score_clock.half_life_days, Some(0.0));
        // Never recycled (baseline 0): all of it is earned, whatever the decay.
        a.state.score_baseline = 0.0;
        let c = changes(decide(&a, &HashMap::new(), &undecayed, &settings()));
        assert_eq!(c.score_baseline, 0.0);
    }

    /// Without new activity a recycled account's score moves only by
    /// points leaving or coming back: what was earned since stays, and the
    /// baseline moves with the score. With activity it stays, never above
    /// the score nor below 0.
    #[test]
    fn a_baseline_moves_with_points_that_leave_or_come_back() {
        let mut a = recycled(AccountStage::Engaged, 150.0, 150.0, 0.0);
        // Ann's 100 leave (deactivated): not owed again.
        let fallen = applied(&a, &delivery(50.0, &[]));
        assert_eq!(
            (fallen.stage, fallen.score_baseline),
            (AccountStage::Engaged, 50.0)
        );
        a.state.score_baseline = fallen.score_baseline;
        a.state.engagement_score = 50.0;
        a.score_clock = Some(fallen.score_clock);
        a.score_sequence = 4;
        let next = |score: f64, contacts: &[(&str, &[&str])]| ScoreDelivery {
            sequence: 5,
            ..delivery(score, contacts)
        };
        // Bob earns 100: all of it counts.
        let c = applied(&a, &next(150.0, &[("bob", &["demo"])]));
        assert_eq!(
            (c.stage, c.score_baseline),
            (AccountStage::Prioritized, 50.0)
        );
        // Ann's 100 come back (reactivated): not earned.
        let c = applied(&a, &next(150.0, &[]));
        assert_eq!((c.stage, c.score_baseline), (AccountStage::Engaged, 150.0));
        // A penalty under 0: the baseline stops at 0, where an account
        // never sent back counts from.
        let c = applied(&a, &next(-30.0, &[("bob", &["unsubscribe"])]));
        assert_eq!(c.score_baseline, 0.0);
        // A stored baseline above the score reads as the score.
        assert_eq!(account_rules::earned_since_recycle(40.0, 150.0), 0.0);
        assert_eq!(account_rules::earned_since_recycle(-30.0, 150.0), -30.0);
    }

    /// A recycled account whose baseline reached 0 (all its points left
    /// without activity) still counts only new activity as earned: the
    /// points coming back are not (a tester saw them re-prioritize it and
    /// notify its owner again).
    #[test]
    fn a_baseline_at_0_after_a_recycle_still_follows_the_rule() {
        let mut a = recycled(AccountStage::Engaged, 0.0, 0.0, 0.0);
        let back = applied(&a, &delivery(120.0, &[]));
        assert_eq!(
            (back.stage, back.score_baseline),
            (AccountStage::Engaged, 120.0)
        );
        assert!(back.notifications.is_empty(), "{:?}", back.notifications);
        // Never sent back, the same score is all earned.
        a.state.recycled = false;
        let never = applied(&a, &delivery(120.0, &[]));
        assert_eq!(
            (never.stage, never.score_baseline),
            (AccountStage::Prioritized, 0.0)
        );
    }

    /// New activity in the first delivery after a change of half-life
    /// counts as earned; only a recompute keeps the earned figure as it was.
    #[test]
    fn activity_after_a_change_of_decay_counts() {
        let a = recycled(AccountStage::Detected, 0.0, 0.0, 30.0);
        let demo = ScoreDelivery {
            decay_half_life_days: 60.0,
            ..delivery(150.0, &[("ann", &["demo_request"])])
        };
        let c = applied(&a, &demo);
        assert_eq!(
            (c.stage, c.score_baseline),
            (AccountStage::Prioritized, 0.0)
        );
    }

    /// Deliveries merged while lifecycle lagged give what they would have
    /// given one by one: points that left or came back in the same delivery
    /// as new activity are not read as activity (a reviewer's finding
    /// against the rule that read only whether there was any).
    #[test]
    fn merged_deliveries_count_only_the_new_activity() {
        // Sent back at 150: Ann's 100 and Bob's 50.
        let a = recycled(AccountStage::Engaged, 150.0, 150.0, 0.0);
        let carl = |score: f64| {
            earning(
                100.0,
                ScoreDelivery {
                    sequence: 5,
                    ..delivery(score, &[("carl", &["demo"])])
                },
            )
        };
        // Ann deactivated and Carl's 100 new, in one delivery.
        let merged = applied(&a, &carl(150.0));
        assert_eq!(
            (merged.stage, merged.score_baseline),
            (AccountStage::Prioritized, 50.0)
        );
        // One by one: Ann's points leave, then Carl earns.
        let left = applied(&a, &earning(0.0, delivery(50.0, &[])));
        let then = applied(&after(&a, &left, 50.0), &carl(150.0));
        assert_eq!(
            (then.stage, then.score_baseline),
            (merged.stage, merged.score_baseline)
        );
        // Ann's 100 back and Bob's 10 new in one delivery: 10 earned, not 110.
        let low = recycled(AccountStage::Engaged, 50.0, 50.0, 0.0);
        let both = delivery(160.0, &[("bob", &["email_open"])]);
        let c = applied(&low, &earning(10.0, both.clone()));
        assert_eq!((c.stage, c.score_baseline), (AccountStage::Engaged, 150.0));
        // A penalty in new activity lowers what was earned: 40 earned, Ann's
        // 100 back and a penalty of 20 leave 20.
        let earned_40 = recycled(AccountStage::Engaged, 50.0, 90.0, 0.0);
        let c = applied(
            &earned_40,
            &earning(-20.0, delivery(170.0, &[("bob", &["unsubscribe"])])),
        );
        assert_eq!(c.score_baseline, 150.0);
        // An older scoring says only that there was activity: all of the
        // change counts, as before.
        let c = applied(&low, &both);
        assert_eq!(
            (c.stage, c.score_baseline),
            (AccountStage::Prioritized, 50.0)
        );
    }

    /// The amount earned decays with the score: 30 days at a half-life of
    /// 30 halve what was earned before, and the new activity adds to it.
    #[test]
    fn what_was_earned_decays_and_new_activity_adds_to_it() {
        // 40 earned since a recycle at 150.
        let a = recycled(AccountStage::Engaged, 150.0, 190.0, 30.0);
        let later = earning(
            40.0,
            ScoreDelivery {
                day: DAY + 30,
                decay_half_life_days: 30.0,
                ..delivery(135.0, &[("c1", &["email_open"])])
            },
        );
        let c = applied(&a, &later);
        // 20 of the 40 left, and 40 new: 60 earned, PRIORITIZED.
        assert_eq!(
            (c.stage, c.score_baseline),
            (AccountStage::Prioritized, 75.0)
        );
        // Under a new half-life (every score recomputed), what was earned
        // decays by the old one, as the daily refreshes before the change
        // decayed it: 20 and 40 (60 days kept undecayed read 80).
        let rescored = ScoreDelivery {
            decay_half_life_days: 60.0,
            ..later.clone()
        };
        assert_eq!(applied(&a, &rescored).score_baseline, 75.0);
        // A batch of an earlier day decays from its own day.
        let mut two_days = later;
        two_days.sequence = 5;
        two_days.new_engagement = Some(vec![
            EngagementAdded {
                sequence: 4,
                points: 20.0,
                day: DAY,
            },
            EngagementAdded {
                sequence: 5,
                points: 30.0,
                day: DAY + 30,
            },
        ]);
        assert_eq!(
            applied(&a, &two_days).score_baseline,
            135.0 - (20.0 + 10.0 + 30.0)
        );
    }

    /// A delivery applied whose answer was lost is sent again with the
    /// batches that came since: only those count (a reviewer's case: 15
    /// counted twice re-prioritized an account that had earned 18).
    #[test]
    fn a_batch_applied_before_is_not_counted_again() {
        let a = recycled(AccountStage::Engaged, 100.0, 115.0, 0.0);
        let batch = |sequence: i64, points: f64| EngagementAdded {
            sequence,
            points,
            day: DAY,
        };
        let retried = ScoreDelivery {
            sequence: 5,
            new_engagement: Some(vec![batch(3, 15.0), batch(5, 3.0)]),
            ..delivery(118.0, &[("c1", &["email_open"])])
        };
        let c = applied(&a, &retried);
        assert_eq!(c.score_baseline, 100.0, "15 earned before, 3 now");
        assert_eq!(c.stage, AccountStage::Engaged);
    }

    /// Scoring's running total counts every batch since the last applied
    /// delivery, one whose own delivery never came too (dead-lettered after
    /// an outage, or refused); without a stored total the batches the
    /// delivery names count.
    #[test]
    fn the_running_total_counts_a_batch_whose_delivery_never_came() {
        // 10 earned since a recycle at 100; the last delivery applied (the
        // account's sequence 3) brought a total of 50.
        let mut a = recycled(AccountStage::Engaged, 100.0, 110.0, 30.0);
        a.added_total = Some(AppliedTotal {
            total: 50.0,
            sequence: a.score_sequence,
        });
        // 30 days on, at a half-life of 30: a dead-lettered batch added 12
        // and this one 3. The score is 55 + 15, the total 25 + 15; the
        // delivery names only its own 3.
        let d = earning(
            3.0,
            ScoreDelivery {
                day: DAY + 30,
                decay_half_life_days: 30.0,
                added_total: Some(40.0),
                ..delivery(70.0, &[("c1", &["email_open"])])
            },
        );
        let c = applied(&a, &d);
        assert_eq!(
            c.score_baseline,
            70.0 - (5.0 + 15.0),
            "5 of 10 left, 15 new"
        );
        assert_eq!(c.added_total, Some(40.0), "kept for the next delivery");
        // A half-life changed over the gap: scoring decayed the total by
        // each day's, which lifecycle does not know. The named batch counts
        // (too little, where one half-life over the gap could read much of
        // the total as earned).
        let rescored = ScoreDelivery {
            decay_half_life_days: 7.0,
            ..d.clone()
        };
        assert_eq!(applied(&a, &rescored).score_baseline, 70.0 - (5.0 + 3.0));
        // Changed on the stored day itself, nothing decayed: the total.
        let same_day = earning(
            3.0,
            ScoreDelivery {
                decay_half_life_days: 7.0,
                added_total: Some(65.0),
                ..delivery(125.0, &[("c1", &["email_open"])])
            },
        );
        assert_eq!(applied(&a, &same_day).score_baseline, 125.0 - (10.0 + 15.0));
        // A delivery of the day before the stored score's (another scoring
        // replica's clock) decays its total to the stored day first: 104 a
        // half-life back is 52, and 2 earned (54 read as earned otherwise).
        let mut fast = recycled(AccountStage::Engaged, 100.0, 110.0, 1.0);
        fast.added_total = a.added_total;
        let behind = ScoreDelivery {
            day: DAY - 1,
            decay_half_life_days: 1.0,
            added_total: Some(104.0),
            ..delivery(62.0, &[("c1", &["email_open"])])
        };
        let c = applied(&fast, &behind);
        assert_eq!(c.score_baseline, 62.0 - (10.0 + 2.0));
        assert_eq!(c.added_total, Some(52.0), "stored at the stored day");

        // Without a stored total (before it was kept), the named batch.
        let mut before = a.clone();
        before.added_total = None;
        assert_eq!(applied(&before, &d).score_baseline, 70.0 - (5.0 + 3.0));
        // A total stored before a delivery an older lifecycle applied
        // (which stores none) misses what that one counted: the named batch.
        let mut older_lifecycle = a.clone();
        older_lifecycle.added_total = Some(AppliedTotal {
            total: 50.0,
            sequence: a.score_sequence - 1,
        });
        assert_eq!(
            applied(&older_lifecycle, &d).score_baseline,
            70.0 - (5.0 + 3.0)
        );
        // A delivery without one (an older scoring) stores none.
        let older = ScoreDelivery {
            added_total: None,
            ..d
        };
        let c = applied(&a, &older);
        assert_eq!(c.score_baseline, 70.0 - (5.0 + 3.0));
        assert_eq!(c.added_total, None);
    }

    #[test]
    fn a_sequence_far_past_the_last_is_refused() {
        let a = account(AccountStage::Targeted);
        let mut d = delivery(100.0, &[]);
        d.sequence = a.score_sequence + MAX_SEQUENCE_JUMP + 1;
        assert!(decide(&a, &HashMap::new(), &d, &settings()).is_err());
        d.sequence = a.score_sequence + MAX_SEQUENCE_JUMP;
        assert!(matches!(
            decide(&a, &HashMap::new(), &d, &settings()),
            Ok(ScoreDecision::Apply(_))
        ));
    }

    #[test]
    fn a_repeated_or_older_delivery_changes_nothing() {
        let mut a = account(AccountStage::Targeted);
        let d = delivery(100.0, &[]);
        a.applied_before = true;
        assert_eq!(
            decide(&a, &HashMap::new(), &d, &settings()),
            Ok(ScoreDecision::Duplicate)
        );
        a.applied_before = false;
        for sequence in [2, 3] {
            let old = ScoreDelivery {
                sequence,
                ..d.clone()
            };
            assert_eq!(
                decide(&a, &HashMap::new(), &old, &settings()),
                Ok(ScoreDecision::Stale),
                "sequence {sequence} after 3"
            );
        }
    }

    #[test]
    fn crossing_both_thresholds_passes_through_engaged_and_notifies_once() {
        let c = changes(decide(
            &account(AccountStage::Detected),
            &HashMap::new(),
            &delivery(60.0, &[]),
            &settings(),
        ));
        let stages: Vec<_> = c.steps.iter().map(|s| (s.to_stage, s.cause)).collect();
        assert_eq!(
            stages,
            vec![
                (AccountStage::Engaged, TransitionCause::Score),
                (AccountStage::Prioritized, TransitionCause::Score)
            ]
        );
        assert_eq!(c.stage, AccountStage::Prioritized);
        let [n] = &c.notifications[..] else {
            panic!("the owner is told once: {:?}", c.notifications)
        };
        assert_eq!(n.reason, NotificationReason::Prioritized);
        assert_eq!(
            n.text,
            "Acme reached PRIORITIZED with an engagement score of 60 (threshold 50): it is ready \
             for direct outreach."
        );
    }

    #[test]
    fn contacts_of_the_account_move_others_are_ignored() {
        let contacts: HashMap<_, _> = [
            contact("quiet", "acc", ContactStage::Suspect),
            contact("active", "acc", ContactStage::Suspect),
            contact("raiser", "acc", ContactStage::Engaged),
            contact("elsewhere", "other", ContactStage::Suspect),
        ]
        .into_iter()
        .collect();
        let c = changes(decide(
            &account(AccountStage::Targeted),
            &contacts,
            &delivery(
                5.0,
                &[
                    ("quiet", &[]),
                    ("active", &["web_visit"]),
                    ("raiser", &["demo_request"]),
                    ("elsewhere", &["web_visit"]),
                    ("nobody", &["web_visit"]),
                ],
            ),
            &settings(),
        ));
        assert_eq!(c.ignored_contacts, vec!["elsewhere", "nobody"]);
        let by_id: HashMap<_, _> = c
            .contacts
            .iter()
            .map(|u| (u.contact_id.as_str(), u))
            .collect();
        let to = |id: &str| by_id[id].moved.map(|m| (m.to, m.cause));
        assert_eq!(to("quiet"), None, "no new activity, no move");
        assert!(!by_id["quiet"].has_activity);
        assert_eq!(
            to("active"),
            Some((ContactStage::Engaged, ContactTransitionCause::Activity))
        );
        assert!(by_id["active"].has_activity);
        assert_eq!(
            to("raiser"),
            Some((
                ContactStage::MarketingQualified,
                ContactTransitionCause::HandRaise
            ))
        );
        assert!(c.steps.is_empty(), "5 points is below both thresholds");
        assert_eq!(
            c.notifications,
            [],
            "a hand-raise below PRIORITIZED is not a notification"
        );
    }

    #[test]
    fn a_hand_raise_on_a_prioritized_account_notifies_only_when_the_tenant_wants_it() {
        let contacts: HashMap<_, _> = [contact("raiser", "acc", ContactStage::Engaged)]
            .into_iter()
            .collect();
        let d = delivery(70.0, &[("raiser", &["demo_request"])]);
        let a = account(AccountStage::Prioritized);
        let c = changes(decide(&a, &contacts, &d, &settings()));
        let [n] = &c.notifications[..] else {
            panic!("re-notified once: {:?}", c.notifications)
        };
        assert_eq!(n.reason, NotificationReason::HandRaise);
        assert_eq!(
            n.text,
            "raiser@acme.test raised a hand (demo_request) on Acme, which is PRIORITIZED."
        );
        let quiet = LifecycleSettings {
            renotify_on_hand_raise: false,
            ..settings()
        };
        let c = changes(decide(&a, &contacts, &d, &quiet));
        assert_eq!(c.notifications, []);
        assert!(c.steps.is_empty(), "scores never move past PRIORITIZED");
    }

    #[test]
    fn after_a_recycle_the_text_says_what_was_earned_since() {
        assert_eq!(
            prioritized_text("Acme", 250.0, 150.0, 100.0),
            "Acme reached PRIORITIZED with 100 points of engagement since it was last sent back \
             (threshold 100; score 250): it is ready for direct outreach."
        );
    }

    /// Past ten hand-raisers in one delivery, the rest are counted in one
    /// message that names no one.
    #[test]
    fn a_flood_of_hand_raises_is_told_in_eleven_messages() {
        let ids: Vec<String> = (0..12).map(|i| format!("c{i:02}")).collect();
        let contacts: HashMap<_, _> = ids
            .iter()
            .map(|id| contact(id, "acc", ContactStage::Engaged))
            .collect();
        let raised: Vec<(&str, &[&str])> = ids
            .iter()
            .map(|id| (id.as_str(), &["demo_request"][..]))
            .collect();
        let c = changes(decide(
            &account(AccountStage::Prioritized),
            &contacts,
            &delivery(70.0, &raised),
            &settings(),
        ));
        assert_eq!(c.notifications.len(), MAX_HAND_RAISE_NOTIFICATIONS + 1);
        let last = c.notifications.last().expect("the count");
        assert_eq!(
            (last.raiser_contact_id.as_deref(), last.text.as_str()),
            (
                None,
                "2 more people raised a hand on Acme, which is PRIORITIZED: see its contacts' \
                 stage changes."
            )
        );
    }

    /// Each contact raising a hand in one delivery is told of, once each.
    #[test]
    fn every_hand_raised_in_a_delivery_is_told() {
        let contacts: HashMap<_, _> = [
            contact("p", "acc", ContactStage::Engaged),
            contact("q", "acc", ContactStage::Suspect),
            contact("r", "acc", ContactStage::Engaged),
        ]
        .into_iter()
        .collect();
        let d = delivery(
            70.0,
            &[
                ("p", &["demo_request"]),
                ("q", &["web_visit", "demo_request", "demo_request"]),
                ("r", &["web_visit"]),
            ],
        );
        let c = changes(decide(
            &account(AccountStage::Prioritized),
            &contacts,
            &d,
            &settings(),
        ));
        let raisers: Vec<_> = c
            .notifications
            .iter()
            .map(|n| (n.reason, n.raiser_contact_id.as_deref()))
            .collect();
        assert_eq!(
            raisers,
            [
                (NotificationReason::HandRaise, Some("p")),
                (NotificationReason::HandRaise, Some("q"))
            ]
        );
    }
}
