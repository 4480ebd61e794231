//! What a person's action (Qualify, Disqualify, Nurture, Advance) or an
//! opportunity event (opened, won, lost) does to an account and to the
//! contacts of the opportunity's buying group, decided from a snapshot
//! without any I/O. Storage locks the account, loads the snapshot, calls
//! [`decide`] and writes the decision in the same transaction
//! (`storage::engine`). Score deliveries have their own decision (`scores`).

use cascade_domain::{AccountStage, ContactStage, CustomerType, OpportunityKind};
use chrono::{DateTime, Utc};

use super::account_rules::{self, AccountEvent, AccountState, Step, TransitionCause};
use super::contact_rules::{self, ContactEvent};
use super::risk::{self, RiskContext, RiskWrite};
use super::scores::prioritized_text;
use super::settings::LifecycleSettings;
use super::{ContactTransition, NotificationDraft, NotificationReason, Refusal, Transition};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpportunityEventKind {
    Opened,
    Won,
    Lost,
    /// Every contract and line item of the account's won deals has ended.
    ContractsEnded,
}

/// A change to apply to one account.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Qualify, Disqualify, Nurture, Advance, Churn or the at-risk flag, by
    /// a person.
    Manual {
        event: AccountEvent,
        reason: Option<String>,
    },
    /// An opportunity opened, won or lost, as the opportunity service tells it.
    Opportunity {
        event_id: String,
        opportunity_id: String,
        kind: OpportunityEventKind,
        /// What the opportunity sells.
        opportunity_kind: OpportunityKind,
        buying_group: Vec<String>,
        /// Other open deals of the account the opportunity service knows of.
        other_open: u32,
        /// When it happened, if the opportunity service said (ms).
        occurred_at_ms: Option<i64>,
        /// LOST: why, as the seller gave it; the reason of the moves.
        reason: Option<String>,
        /// The opportunity's version when it happened (0: unknown).
        version: i64,
    },
}

impl Mutation {
    /// The id that makes a redelivered event a duplicate.
    pub fn event_id(&self) -> Option<&str> {
        match self {
            Mutation::Manual { .. } => None,
            Mutation::Opportunity { event_id, .. } => Some(event_id),
        }
    }

    pub fn opportunity_id(&self) -> Option<&str> {
        match self {
            Mutation::Manual { .. } => None,
            Mutation::Opportunity { opportunity_id, .. } => Some(opportunity_id),
        }
    }
}

/// What the decision needs to know about the account, read under its lock.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountSnapshot {
    pub account_id: String,
    pub name: String,
    /// Its stage, type, baseline and the open opportunities lifecycle knows
    /// of, not counting the event's own opportunity.
    pub state: AccountState,
    pub engagement_score: f64,
    pub disqualify_count: i32,
    pub nurture_count: i32,
    /// Whether the mutation's event id was applied before.
    pub applied_before: bool,
    /// Whether lifecycle already knows the event's own opportunity as open:
    /// an OPENED event for it then tells of a grown buying group or another
    /// kind, not of a deal that opens.
    pub opportunity_known_open: bool,
    /// The newest version of the event's opportunity lifecycle applied an
    /// event of (0: none, or none with a version).
    pub opportunity_version: i64,
    /// When the account entered its stage (ms).
    pub stage_entered_at_ms: i64,
}

/// A contact of the account in the opportunity's buying group (the members
/// lifecycle knew of before and the ones the event names).
#[derive(Debug, Clone, PartialEq)]
pub struct MemberSnapshot {
    pub contact_id: String,
    pub stage: ContactStage,
    pub has_email: bool,
    pub has_activity: bool,
    /// In the buying group of another opportunity that is still open.
    pub in_other_open_opportunity: bool,
    /// Taken out of this deal's buying group: named before, not by the
    /// event (which carries the whole group).
    pub left_this_deal: bool,
    /// In this deal's buying group before the event: an edit of the deal
    /// (an OPENED event carrying the group again) does not move it, so a
    /// stage a person set since it joined stays.
    pub already_in_this_deal: bool,
    /// The stage the contact had when it last joined an open deal (from
    /// its history); leaving the deal brings back one a person set.
    pub stage_before_opportunity: Option<ContactStage>,
    /// It raised a hand while in the deal (an OPPORTUNITY since).
    pub raised_hand_in_deal: bool,
}

/// Who acts, under which settings, and when.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub actor: &'a str,
    pub settings: &'a LifecycleSettings,
    /// When the account's changes take effect (`effective_time`).
    pub now: DateTime<Utc>,
    /// When lifecycle writes them: the contacts' moves are dated by it, as
    /// a contact's own history is not kept in order by `effective_time`
    /// (which knows only the account's stage entry).
    pub written_at: DateTime<Utc>,
}

/// The counters of an account sent back by Disqualify or Nurture (by a
/// person or by a lost deal), and the transition that sent it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recycle {
    pub disqualify_count: i32,
    pub nurture_count: i32,
    pub transition_id: String,
}

/// The changes a mutation makes.
#[derive(Debug, Clone, PartialEq)]
pub struct Changes {
    /// The account's stage changes in order, as they are recorded.
    pub transitions: Vec<Transition>,
    /// Stage and customer type after the transitions.
    pub stage: AccountStage,
    pub customer_type: CustomerType,
    /// The new score baseline when the account is sent back: thresholds then
    /// count only engagement earned from here on.
    pub score_baseline: Option<f64>,
    pub recycle: Option<Recycle>,
    /// Stage changes of the buying group's contacts.
    pub contact_moves: Vec<ContactTransition>,
    pub notification: Option<NotificationDraft>,
    /// The at-risk flag set or cleared (its history entry is among
    /// `transitions`, after the stage moves).
    pub risk: Option<RiskWrite>,
}

impl Changes {
    /// Nothing to write (ClearAtRisk on an account that is not at risk).
    pub fn is_empty(&self) -> bool {
        self.transitions.is_empty()
            && self.score_baseline.is_none()
            && self.recycle.is_none()
            && self.contact_moves.is_empty()
            && self.notification.is_none()
            && self.risk.is_none()
    }
}

/// What to do with a mutation.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Its event id was applied before: nothing changes.
    Duplicate,
    /// An opportunity event older than one applied for its deal: nothing
    /// changes.
    Stale,
    /// Boxed: the changes are large beside `Duplicate`.
    Apply(Box<Changes>),
}

/// When the changes `mutation` makes take effect: for an opportunity event,
/// when it happened, so that one held back (lifecycle down, a dead letter
/// sent again) still dates the account's and its people's moves, the
/// funnel and `GetAccountStageAt` by the win or loss itself. Never before
/// the account entered its stage (its history stays in order), never after
/// `now`; without a time, `now`.
pub fn effective_time(
    mutation: &Mutation,
    account: &AccountSnapshot,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let Mutation::Opportunity {
        occurred_at_ms: Some(at),
        ..
    } = mutation
    else {
        return now;
    };
    // Strictly after the stage entry: a move at the same millisecond would
    // make the stage at that instant ambiguous.
    let at = (*at).max(account.stage_entered_at_ms + 1);
    if at >= now.timestamp_millis() {
        return now;
    }
    DateTime::from_timestamp_millis(at).unwrap_or(now)
}

/// Decides what `mutation` does. `members` are the buying group's contacts
/// that belong to the account (empty for a person's action). `Err` is the
/// stage rules' refusal, naming the account's stage and what is allowed.
pub fn decide(
    account: &AccountSnapshot,
    members: &[MemberSnapshot],
    mutation: &Mutation,
    cx: Context<'_>,
) -> Result<Decision, Refusal> {
    if account.applied_before {
        return Ok(Decision::Duplicate);
    }
    // An event about an older version of the deal than one applied (a dead
    // letter sent again after newer events) would set an outdated buying
    // group and status: it changes nothing.
    if let Mutation::Opportunity { kind, version, .. } = mutation
        && *kind != OpportunityEventKind::ContractsEnded
        && *version > 0
        && *version < account.opportunity_version
    {
        return Ok(Decision::Stale);
    }
    let state = &account.state;
    let (event, reason) = match mutation {
        Mutation::Manual { event, reason } => (event.clone(), reason.clone()),
        Mutation::Opportunity {
            kind,
            opportunity_kind,
            other_open,
            reason,
            ..
        } => (
            opportunity_event(*kind, *opportunity_kind, *other_open, state),
            reason.clone(),
        ),
    };
    let reannounced = matches!(
        mutation,
        Mutation::Opportunity {
            kind: OpportunityEventKind::Opened,
            ..
        }
    ) && account.opportunity_known_open;
    // A win that happened before the account was churned (its event held
    // back by retries, or a dead letter sent again) is no news: the churn,
    // a person's decision, came after it. Without a time it cannot be told.
    let won_before_churn = match mutation {
        Mutation::Opportunity {
            kind: OpportunityEventKind::Won,
            occurred_at_ms,
            ..
        } if state.stage == AccountStage::Churned => {
            !occurred_at_ms.is_some_and(|at| at > account.stage_entered_at_ms)
        }
        _ => false,
    };
    // The stage rules see a deal open once: an edit of an open deal (its
    // buying group, its kind) moves its contacts, never the account (a
    // churned account whose old deal is edited stays CHURNED).
    let outcome = if reannounced || won_before_churn {
        account_rules::Outcome::default()
    } else {
        account_rules::apply(state, &event, cx.settings)?
    };
    let (stage, customer_type) = outcome.final_state(state);

    let mut transitions: Vec<Transition> = outcome
        .steps
        .iter()
        .map(|step| {
            Transition::of_step(
                step,
                &account.account_id,
                cx.actor,
                reason.clone(),
                mutation.event_id().map(str::to_owned),
                cx.settings.version,
                cx.now,
            )
        })
        .collect();
    // The rules send an account back at most once per event.
    let recycle = outcome
        .steps
        .iter()
        .zip(&transitions)
        .rev()
        .find_map(|(step, t)| recycled(step).map(|kind| (kind, t)))
        .map(|(kind, t)| Recycle {
            disqualify_count: account.disqualify_count + i32::from(kind == Recycled::Disqualified),
            nurture_count: account.nurture_count + i32::from(kind == Recycled::Nurtured),
            transition_id: t.transition_id.clone(),
        });
    let contact_moves = match mutation {
        Mutation::Opportunity { event_id, kind, .. } => {
            buying_group_moves(account, members, *kind, event_id, cx)
        }
        Mutation::Manual { .. } => Vec::new(),
    };
    let mut notification = outcome.notify_prioritized.then(|| NotificationDraft {
        reason: NotificationReason::Prioritized,
        text: prioritized_text(
            &account.name,
            account.engagement_score,
            account.state.score_baseline,
            cx.settings.prioritized_threshold,
        ),
        raiser_contact_id: None,
    });
    let risk = outcome.risk.as_ref().map(|change| {
        let (entry, write, message) = risk::records(
            change,
            RiskContext {
                account_id: &account.account_id,
                account_name: &account.name,
                stage,
                customer_type,
                actor: cx.actor,
                reason: reason.as_deref(),
                event_id: mutation.event_id(),
                settings_version: cx.settings.version,
                now: cx.now,
            },
        );
        transitions.push(entry);
        // Entering PRIORITIZED and a new risk never come together: one is a
        // prospect's, the other a customer's.
        notification = notification.take().or(message);
        write
    });

    Ok(Decision::Apply(Box::new(Changes {
        transitions,
        stage,
        customer_type,
        score_baseline: outcome.reset_baseline.then_some(account.engagement_score),
        recycle,
        contact_moves,
        notification,
        risk,
    })))
}

/// The account event an opportunity event is. A lost deal sends the account
/// back only when it was the last open one; either side may know of another.
fn opportunity_event(
    kind: OpportunityEventKind,
    opportunity_kind: OpportunityKind,
    other_open: u32,
    state: &AccountState,
) -> AccountEvent {
    match kind {
        OpportunityEventKind::Opened => AccountEvent::OpportunityOpened,
        OpportunityEventKind::Won => AccountEvent::OpportunityWon {
            kind: opportunity_kind,
        },
        OpportunityEventKind::Lost => AccountEvent::OpportunityLost {
            other_open: other_open.max(state.open_opportunities),
            kind: opportunity_kind,
        },
        OpportunityEventKind::ContractsEnded => AccountEvent::ContractsEnded,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recycled {
    Disqualified,
    Nurtured,
}

/// Whether a step sends the account back, and how: a person's Disqualify or
/// Nurture, or a lost deal doing the same under the tenant's setting.
fn recycled(step: &Step) -> Option<Recycled> {
    match (step.cause, step.to_stage) {
        (TransitionCause::Disqualify, _)
        | (TransitionCause::OpportunityLost, AccountStage::Detected) => {
            Some(Recycled::Disqualified)
        }
        (TransitionCause::Nurture, _)
        | (TransitionCause::OpportunityLost, AccountStage::Engaged) => Some(Recycled::Nurtured),
        _ => None,
    }
}

/// The buying group follows the deal: contacts join OPPORTUNITY when it
/// opens (or when an edit adds them: an edit moves only new members) and
/// become CUSTOMER when it is won; when it is lost, a contact still in
/// another open deal stays, the others fall back by their data.
fn buying_group_moves(
    account: &AccountSnapshot,
    members: &[MemberSnapshot],
    kind: OpportunityEventKind,
    event_id: &str,
    cx: Context<'_>,
) -> Vec<ContactTransition> {
    members
        .iter()
        .filter_map(|m| {
            let left = ContactEvent::LeftOpenOpportunities {
                has_email: m.has_email,
                has_activity: m.has_activity,
                before: m.stage_before_opportunity,
                raised_hand: m.raised_hand_in_deal,
            };
            let event = match kind {
                // Not a deal of its own: the buying groups are as they were.
                OpportunityEventKind::ContractsEnded => return None,
                // Out of this deal (taken out of its group, or it was lost),
                // and in no other open one.
                _ if m.in_other_open_opportunity
                    && (m.left_this_deal || kind == OpportunityEventKind::Lost) =>
                {
                    return None;
                }
                _ if m.left_this_deal => left,
                OpportunityEventKind::Opened if m.already_in_this_deal => return None,
                OpportunityEventKind::Opened => ContactEvent::JoinedOpenOpportunity,
                OpportunityEventKind::Won => ContactEvent::OpportunityWon,
                OpportunityEventKind::Lost => left,
            };
            contact_rules::move_on(m.stage, event).map(|moved| {
                ContactTransition::of_move(
                    &moved,
                    &m.contact_id,
                    &account.account_id,
                    cx.actor,
                    Some(event_id.to_owned()),
                    cx.written_at,
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::settings::OnLostAction;
    use AccountStage as S;
    use ContactStage as C;

    fn settings() -> LifecycleSettings {
        LifecycleSettings {
            engaged_threshold: 10.0,
            prioritized_threshold: 50.0,
            ..LifecycleSettings::default()
        }
    }

    fn account(stage: AccountStage, open_opportunities: u32) -> AccountSnapshot {
        AccountSnapshot {
            account_id: "acc".into(),
            name: "Acme".into(),
            state: AccountState {
                stage,
                customer_type: if stage >= S::Implement {
                    CustomerType::Customer
                } else {
                    CustomerType::Prospect
                },
                score_baseline: 5.0,
                recycled: true,
                open_opportunities,
                engagement_score: 70.0,
                at_risk: None,
            },
            engagement_score: 70.0,
            disqualify_count: 2,
            nurture_count: 1,
            applied_before: false,
            opportunity_known_open: false,
            opportunity_version: 0,
            stage_entered_at_ms: 1_000,
        }
    }

    fn member(id: &str, stage: ContactStage, in_other_open: bool) -> MemberSnapshot {
        MemberSnapshot {
            contact_id: id.into(),
            stage,
            has_email: true,
            has_activity: true,
            in_other_open_opportunity: in_other_open,
            left_this_deal: false,
            already_in_this_deal: false,
            stage_before_opportunity: None,
            raised_hand_in_deal: false,
        }
    }

    fn opportunity(kind: OpportunityEventKind, other_open: u32) -> Mutation {
        Mutation::Opportunity {
            event_id: "ev1".into(),
            opportunity_id: "opp1".into(),
            kind,
            opportunity_kind: OpportunityKind::NewBusiness,
            buying_group: vec!["c1".into()],
            other_open,
            occurred_at_ms: Some(2_000),
            reason: (kind == OpportunityEventKind::Lost).then(|| "went with a rival".into()),
            version: 0,
        }
    }

    fn manual(event: AccountEvent) -> Mutation {
        Mutation::Manual {
            event,
            reason: Some("budget cut".into()),
        }
    }

    fn changes(
        account: &AccountSnapshot,
        members: &[MemberSnapshot],
        mutation: &Mutation,
        settings: &LifecycleSettings,
    ) -> Changes {
        let cx = Context {
            actor: "user:1",
            settings,
            now: DateTime::UNIX_EPOCH,
            written_at: DateTime::UNIX_EPOCH,
        };
        match decide(account, members, mutation, cx) {
            Ok(Decision::Apply(changes)) => *changes,
            other => panic!("expected changes, got {other:?}"),
        }
    }

    fn moves(c: &Changes) -> Vec<(&str, ContactStage, ContactStage)> {
        c.contact_moves
            .iter()
            .map(|m| (m.contact_id.as_str(), m.from_stage, m.to_stage))
            .collect()
    }

    /// An opportunity event takes effect when it happened, within the
    /// account's current stage and not after now.
    #[test]
    fn a_late_event_takes_effect_when_it_happened() {
        let at = |ms: i64| DateTime::from_timestamp_millis(ms).expect("time");
        let a = account(S::Pipeline, 1); // in PIPELINE since 1,000
        let now = at(10_000);
        let lost = |occurred: Option<i64>| {
            let mut m = opportunity(OpportunityEventKind::Lost, 0);
            if let Mutation::Opportunity { occurred_at_ms, .. } = &mut m {
                *occurred_at_ms = occurred;
            }
            m
        };
        for (occurred, expected) in [
            (Some(4_000), 4_000),
            (Some(500), 1_001),
            (Some(1_000), 1_001),
            (Some(12_000), 10_000),
            (None, 10_000),
        ] {
            assert_eq!(
                effective_time(&lost(occurred), &a, now),
                at(expected),
                "{occurred:?}"
            );
        }
        assert_eq!(effective_time(&manual(AccountEvent::Qualify), &a, now), now);
    }

    #[test]
    fn a_redelivered_event_changes_nothing() {
        let mut a = account(S::Prioritized, 0);
        a.applied_before = true;
        let cx = Context {
            actor: "opportunity",
            settings: &settings(),
            now: DateTime::UNIX_EPOCH,
            written_at: DateTime::UNIX_EPOCH,
        };
        let d = decide(&a, &[], &opportunity(OpportunityEventKind::Opened, 0), cx);
        assert_eq!(d, Ok(Decision::Duplicate));
    }

    /// An OPENED event for a deal lifecycle knows as open (its buying group
    /// grew, or its kind changed) moves the new members, never the account:
    /// a churned account whose old deal is edited stays CHURNED.
    #[test]
    fn an_edited_open_deal_moves_its_people_not_the_account() {
        let members = [member("c1", C::Engaged, false)];
        for stage in [S::Churned, S::Prioritized, S::Implement] {
            let mut a = account(stage, 0);
            a.opportunity_known_open = true;
            let edited = changes(
                &a,
                &members,
                &opportunity(OpportunityEventKind::Opened, 0),
                &settings(),
            );
            assert!(edited.transitions.is_empty(), "{stage}: {edited:?}");
            assert_eq!(
                (edited.stage, edited.customer_type),
                (stage, a.state.customer_type)
            );
            assert_eq!(
                moves(&edited),
                [("c1", C::Engaged, C::Opportunity)],
                "{stage}"
            );
        }
        // The same event for a deal lifecycle did not know: it opens.
        let opened = changes(
            &account(S::Churned, 0),
            &members,
            &opportunity(OpportunityEventKind::Opened, 0),
            &settings(),
        );
        assert_eq!(
            (opened.stage, opened.customer_type),
            (S::Pipeline, CustomerType::ReProspect)
        );
    }

    /// A deal open at the churn and won since makes the account a customer
    /// again; a win from before the churn (its event late), or of no known
    /// time, leaves the person's churn as it is.
    #[test]
    fn only_a_win_after_the_churn_brings_the_account_back() {
        let churned = account(S::Churned, 0); // entered at 1,000
        for (occurred_at_ms, expected) in [
            (Some(2_000), S::Implement),
            (Some(1_000), S::Churned),
            (Some(500), S::Churned),
            (None, S::Churned),
        ] {
            let mut won = opportunity(OpportunityEventKind::Won, 0);
            if let Mutation::Opportunity {
                occurred_at_ms: at, ..
            } = &mut won
            {
                *at = occurred_at_ms;
            }
            let c = changes(&churned, &[], &won, &settings());
            assert_eq!(c.stage, expected, "won at {occurred_at_ms:?}");
        }
    }

    #[test]
    fn a_refusal_names_the_stage() {
        let cx = Context {
            actor: "user:1",
            settings: &settings(),
            now: DateTime::UNIX_EPOCH,
            written_at: DateTime::UNIX_EPOCH,
        };
        let refusal = decide(
            &account(S::Engaged, 0),
            &[],
            &manual(AccountEvent::Qualify),
            cx,
        )
        .expect_err("Qualify from ENGAGED is refused");
        assert!(refusal.0.contains("ENGAGED"), "{}", refusal.0);
    }

    /// Each recycle: which counter goes up, the baseline, and the records.
    #[test]
    fn recycles_count_and_reset_the_baseline() {
        let cases = [
            (
                "disqualify",
                manual(AccountEvent::Disqualify),
                S::Prioritized,
                OnLostAction::Nurture,
                Some((3, 1)),
                S::Detected,
            ),
            (
                "nurture",
                manual(AccountEvent::Nurture),
                S::Qualified,
                OnLostAction::Nurture,
                Some((2, 2)),
                S::Engaged,
            ),
            (
                "lost, nurture",
                opportunity(OpportunityEventKind::Lost, 0),
                S::Pipeline,
                OnLostAction::Nurture,
                Some((2, 2)),
                S::Engaged,
            ),
            (
                "lost, disqualify",
                opportunity(OpportunityEventKind::Lost, 0),
                S::Pipeline,
                OnLostAction::Disqualify,
                Some((3, 1)),
                S::Detected,
            ),
            (
                "lost, stay",
                opportunity(OpportunityEventKind::Lost, 0),
                S::Pipeline,
                OnLostAction::Stay,
                None,
                S::Pipeline,
            ),
            (
                "advance",
                manual(AccountEvent::Advance { to: None }),
                S::Implement,
                OnLostAction::Nurture,
                None,
                S::Expand,
            ),
        ];
        for (name, mutation, stage, on_lost, counters, to) in cases {
            let settings = LifecycleSettings {
                on_lost_action: on_lost,
                ..settings()
            };
            let c = changes(&account(stage, 0), &[], &mutation, &settings);
            assert_eq!(c.stage, to, "{name}");
            let got = c
                .recycle
                .as_ref()
                .map(|r| (r.disqualify_count, r.nurture_count));
            assert_eq!(got, counters, "{name}");
            assert_eq!(
                c.score_baseline,
                counters.map(|_| 70.0),
                "{name}: the baseline becomes the current score"
            );
            if let Some(r) = &c.recycle {
                assert_eq!(r.transition_id, c.transitions[0].transition_id, "{name}");
            }
            // A person's reason, or the seller's for a lost deal.
            let reason = match mutation {
                Mutation::Manual { .. } => Some("budget cut".to_owned()),
                Mutation::Opportunity { .. } => Some("went with a rival".to_owned()),
            };
            for t in &c.transitions {
                assert_eq!(t.reason, reason, "{name}");
                assert_eq!(t.event_id.as_deref(), mutation.event_id(), "{name}");
                assert_eq!(t.actor, "user:1", "{name}");
            }
        }
    }

    #[test]
    fn a_lost_deal_with_another_open_one_leaves_the_account() {
        // Known to the opportunity service only, to lifecycle only, to both.
        for (other_open, known_here) in [(1, 0), (0, 1), (1, 1)] {
            let c = changes(
                &account(S::Pipeline, known_here),
                &[],
                &opportunity(OpportunityEventKind::Lost, other_open),
                &settings(),
            );
            assert!(c.transitions.is_empty(), "{other_open}/{known_here}");
            assert_eq!(c.recycle, None);
        }
    }

    #[test]
    fn the_buying_group_follows_the_deal() {
        let members = [
            member("c1", C::Engaged, false),
            member("c2", C::Evangelist, false),
            member("c3", C::Opportunity, true),
            member("c4", C::Opportunity, false),
        ];
        let opened = changes(
            &account(S::Prioritized, 0),
            &members,
            &opportunity(OpportunityEventKind::Opened, 0),
            &settings(),
        );
        assert_eq!(opened.stage, S::Pipeline);
        assert_eq!(moves(&opened), [("c1", C::Engaged, C::Opportunity)]);
        assert!(
            opened
                .contact_moves
                .iter()
                .all(|m| m.event_id.as_deref() == Some("ev1") && m.account_id == "acc")
        );

        let won = changes(
            &account(S::Pipeline, 0),
            &members,
            &opportunity(OpportunityEventKind::Won, 0),
            &settings(),
        );
        assert_eq!(
            (won.stage, won.customer_type),
            (S::Implement, CustomerType::Customer)
        );
        assert_eq!(
            moves(&won),
            [
                ("c1", C::Engaged, C::Customer),
                ("c3", C::Opportunity, C::Customer),
                ("c4", C::Opportunity, C::Customer),
            ]
        );

        // c3 is still in another open deal; c4 falls back to ENGAGED.
        let lost = changes(
            &account(S::Pipeline, 0),
            &members,
            &opportunity(OpportunityEventKind::Lost, 0),
            &settings(),
        );
        assert_eq!(moves(&lost), [("c4", C::Opportunity, C::Engaged)]);
    }

    /// A member the event leaves out was taken out of the deal's group: it
    /// leaves the deal (unless in another open one) whatever the event, and
    /// a win does not make it a CUSTOMER.
    #[test]
    fn a_member_taken_out_of_the_group_leaves_the_deal() {
        let out = |id: &str, in_other_open: bool| MemberSnapshot {
            left_this_deal: true,
            already_in_this_deal: true,
            stage_before_opportunity: Some(C::SalesQualified),
            raised_hand_in_deal: false,
            ..member(id, C::Opportunity, in_other_open)
        };
        let members = [
            member("c1", C::Opportunity, false),
            out("c2", false),
            out("c3", true),
        ];
        for (kind, c1) in [
            (OpportunityEventKind::Opened, None),
            (OpportunityEventKind::Won, Some(C::Customer)),
            (OpportunityEventKind::Lost, Some(C::Engaged)),
        ] {
            let mut a = account(S::Pipeline, 0);
            a.opportunity_known_open = true;
            let c = changes(&a, &members, &opportunity(kind, 0), &settings());
            let mut expected: Vec<(&str, ContactStage, ContactStage)> = c1
                .map(|to| ("c1", C::Opportunity, to))
                .into_iter()
                .collect();
            expected.push(("c2", C::Opportunity, C::SalesQualified));
            assert_eq!(moves(&c), expected, "{kind:?}");
        }
    }

    /// An edit of an open deal (an OPENED event again) moves only the
    /// members it adds: one already in the group keeps the stage a person
    /// gave it since (a tester saw a reordered group undo SALES_QUALIFIED).
    #[test]
    fn an_edit_moves_only_new_members() {
        let kept = |id: &str, stage: ContactStage| MemberSnapshot {
            already_in_this_deal: true,
            ..member(id, stage, false)
        };
        let members = [
            kept("c1", C::SalesQualified),
            kept("c2", C::Disqualified),
            member("c3", C::Engaged, false),
        ];
        let mut a = account(S::Pipeline, 0);
        a.opportunity_known_open = true;
        let c = changes(
            &a,
            &members,
            &opportunity(OpportunityEventKind::Opened, 0),
            &settings(),
        );
        assert_eq!(moves(&c), [("c3", C::Engaged, C::Opportunity)]);
    }

    #[test]
    fn only_entering_prioritized_notifies() {
        let c = changes(
            &account(S::Prioritized, 0),
            &[],
            &manual(AccountEvent::Qualify),
            &settings(),
        );
        assert_eq!(c.stage, S::Qualified);
        assert_eq!(c.notification, None);
    }
}
