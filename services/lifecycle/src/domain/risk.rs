//! What a change of the at-risk flag records: the flag on the account, an
//! entry of the account's history (from its stage to itself, so the funnel
//! does not count it) and, when the account newly is at risk, a message to
//! its owner. The rules that decide the change are in `account_rules`.

use cascade_domain::{AccountStage, CustomerType};
use chrono::{DateTime, Utc};

use super::account_rules::{AtRiskSource, RiskChange, TransitionCause};
use super::{NotificationDraft, NotificationReason, Transition};

/// An account's at-risk flag.
#[derive(Debug, Clone, PartialEq)]
pub struct AtRisk {
    pub reason: String,
    pub source: AtRiskSource,
    pub actor: String,
    pub since: DateTime<Utc>,
}

/// What a change writes on the account row.
#[derive(Debug, Clone, PartialEq)]
pub enum RiskWrite {
    Set(AtRisk),
    Clear,
}

/// The account a change is recorded on, and who made it.
#[derive(Debug, Clone, Copy)]
pub struct RiskContext<'a> {
    pub account_id: &'a str,
    pub account_name: &'a str,
    /// The stage and type after the event's stage moves, if any.
    pub stage: AccountStage,
    pub customer_type: CustomerType,
    pub actor: &'a str,
    /// A person's reason (FlagAtRisk, ClearAtRisk); the rules explain their own.
    pub reason: Option<&'a str>,
    pub event_id: Option<&'a str>,
    pub settings_version: i64,
    pub now: DateTime<Utc>,
}

/// The records of `change`.
pub fn records(
    change: &RiskChange,
    cx: RiskContext<'_>,
) -> (Transition, RiskWrite, Option<NotificationDraft>) {
    let (cause, explanation) = match change {
        RiskChange::Flagged { explanation, .. } => (TransitionCause::AtRiskFlagged, explanation),
        RiskChange::Cleared { explanation } => (TransitionCause::AtRiskCleared, explanation),
    };
    let reason = explanation
        .clone()
        .or_else(|| cx.reason.map(str::to_owned))
        .unwrap_or_default();
    let transition = Transition {
        transition_id: cascade_domain::ids::new_id(),
        account_id: cx.account_id.to_owned(),
        from_stage: cx.stage,
        to_stage: cx.stage,
        from_customer_type: cx.customer_type,
        to_customer_type: cx.customer_type,
        cause,
        actor: cx.actor.to_owned(),
        reason: Some(reason.clone()),
        event_id: cx.event_id.map(str::to_owned),
        settings_version: cx.settings_version,
        occurred_at: cx.now,
    };
    match change {
        RiskChange::Flagged { source, notify, .. } => {
            let notification = notify.then(|| NotificationDraft {
                reason: NotificationReason::AtRisk,
                text: format!(
                    "{} ({}) is at risk of leaving: {reason}",
                    cx.account_name, cx.stage
                ),
                raiser_contact_id: None,
            });
            let flag = AtRisk {
                reason,
                source: *source,
                actor: cx.actor.to_owned(),
                since: cx.now,
            };
            (transition, RiskWrite::Set(flag), notification)
        }
        RiskChange::Cleared { .. } => (transition, RiskWrite::Clear, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(reason: Option<&str>) -> RiskContext<'_> {
        RiskContext {
            account_id: "acc",
            account_name: "Initech",
            stage: AccountStage::Expand,
            customer_type: CustomerType::Customer,
            actor: "user:csm",
            reason,
            event_id: None,
            settings_version: 3,
            now: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_flag_is_a_same_stage_entry_a_flag_and_a_message() {
        let change = RiskChange::Flagged {
            source: AtRiskSource::Person,
            explanation: None,
            notify: true,
        };
        let (t, write, note) = records(&change, cx(Some("champion left")));
        assert_eq!(
            (t.from_stage, t.to_stage),
            (AccountStage::Expand, AccountStage::Expand)
        );
        assert_eq!(t.cause, TransitionCause::AtRiskFlagged);
        assert_eq!(t.reason.as_deref(), Some("champion left"));
        match write {
            RiskWrite::Set(flag) => {
                assert_eq!(flag.reason, "champion left");
                assert_eq!(flag.source, AtRiskSource::Person);
                assert_eq!(flag.actor, "user:csm");
            }
            RiskWrite::Clear => panic!("expected a flag"),
        }
        let note = note.expect("the owner hears of it");
        assert_eq!(note.reason, NotificationReason::AtRisk);
        assert!(note.text.contains("Initech") && note.text.contains("champion left"));
    }

    #[test]
    fn the_rules_explanation_wins_and_a_repeat_is_silent() {
        let change = RiskChange::Flagged {
            source: AtRiskSource::Engagement,
            explanation: Some("engagement fell".into()),
            notify: false,
        };
        let (t, _, note) = records(&change, cx(None));
        assert_eq!(t.reason.as_deref(), Some("engagement fell"));
        assert_eq!(note, None);
        let (t, write, note) = records(
            &RiskChange::Cleared { explanation: None },
            cx(Some("renewed")),
        );
        assert_eq!(t.cause, TransitionCause::AtRiskCleared);
        assert_eq!(t.reason.as_deref(), Some("renewed"));
        assert_eq!((write, note), (RiskWrite::Clear, None));
    }
}
