//! The contact (person) stage rules (DESIGN.md "Contact (person) stages"):
//! ANONYMOUS, SUSPECT, ENGAGED, OPPORTUNITY and CUSTOMER move by themselves, a
//! hand-raise makes a contact MARKETING_QUALIFIED, the rest are set by people.

use cascade_domain::ContactStage;
use cascade_domain::domain_enum;
use cascade_proto::lifecycle::v1 as pb;

use super::Refusal;

domain_enum! {
    /// Why a contact changed stage.
    ContactTransitionCause => pb::ContactTransitionCause {
        Activity = "ACTIVITY",
        HandRaise = "HAND_RAISE",
        OpportunityOpened = "OPPORTUNITY_OPENED",
        OpportunityWon = "OPPORTUNITY_WON",
        OpportunityLost = "OPPORTUNITY_LOST",
        EmailChanged = "EMAIL_CHANGED",
        Manual = "MANUAL",
    }
}

/// A stage change the rules decided, before it is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContactMove {
    pub from: ContactStage,
    pub to: ContactStage,
    pub cause: ContactTransitionCause,
}

impl ContactMove {
    /// The move from `from` to `to`, or `None` when the stage stays.
    pub fn between(
        from: ContactStage,
        to: ContactStage,
        cause: ContactTransitionCause,
    ) -> Option<Self> {
        (from != to).then_some(Self { from, to, cause })
    }
}

/// A new contact is ANONYMOUS without an email and SUSPECT with one.
pub fn new_contact_stage(has_email: bool) -> ContactStage {
    if has_email {
        ContactStage::Suspect
    } else {
        ContactStage::Anonymous
    }
}

/// The contact's stage after its email is set or cleared: an ANONYMOUS
/// contact that gains an email becomes SUSPECT, and a SUSPECT one that loses
/// it becomes ANONYMOUS again. Later stages are about behaviour, not contact
/// details, and stay.
pub fn after_email_change(current: ContactStage, has_email: bool) -> ContactStage {
    match (current, has_email) {
        (ContactStage::Anonymous, true) => ContactStage::Suspect,
        (ContactStage::Suspect, false) => ContactStage::Anonymous,
        (stage, _) => stage,
    }
}

/// A stage set by a person. Only the manual stages may be set; the automatic
/// ones follow the contact's data and activity. The stage the contact has
/// already is no change, whichever it is: a sync writing back what it read
/// is answered alike with or without other fields changed.
pub fn set_by_person(current: ContactStage, target: ContactStage) -> Result<ContactStage, Refusal> {
    if target.is_manual() || target == current {
        return Ok(target);
    }
    let manual: Vec<_> = ContactStage::ALL
        .iter()
        .filter(|s| s.is_manual())
        .map(|s| s.as_str())
        .collect();
    Err(Refusal(format!(
        "contact stage {target} is set automatically and cannot be written (the contact is {current}); \
         a person may set {}",
        manual.join(", ")
    )))
}

/// Something that happened to a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactEvent {
    /// Inbound activity; `hand_raise` when one of its types is a hand-raise.
    Activity { hand_raise: bool },
    /// The contact is in the buying group of a newly opened opportunity.
    JoinedOpenOpportunity,
    /// An opportunity with the contact in its buying group was won.
    OpportunityWon,
    /// The contact is in no open opportunity's buying group any more: its
    /// last one was lost, or it was taken out of the group. `before` is the
    /// stage it had when it joined (from its history).
    LeftOpenOpportunities {
        has_email: bool,
        has_activity: bool,
        before: Option<ContactStage>,
        /// It raised a hand while in the deal.
        raised_hand: bool,
    },
}

impl ContactEvent {
    /// The cause a move made by this event is recorded with.
    pub fn cause(self) -> ContactTransitionCause {
        match self {
            ContactEvent::Activity { hand_raise: true } => ContactTransitionCause::HandRaise,
            ContactEvent::Activity { hand_raise: false } => ContactTransitionCause::Activity,
            ContactEvent::JoinedOpenOpportunity => ContactTransitionCause::OpportunityOpened,
            ContactEvent::OpportunityWon => ContactTransitionCause::OpportunityWon,
            ContactEvent::LeftOpenOpportunities { .. } => ContactTransitionCause::OpportunityLost,
        }
    }
}

/// The move an event makes, if the contact's stage changes.
pub fn move_on(current: ContactStage, event: ContactEvent) -> Option<ContactMove> {
    ContactMove::between(current, after_event(current, event), event.cause())
}

/// The contact's stage after an event. Automatic moves never undo a person's
/// decision (SALES_QUALIFIED, EVANGELIST, DISQUALIFIED, OTHER stay on
/// activity; EVANGELIST, DISQUALIFIED and OTHER on a win) and never move a
/// customer back. Joining a deal is a person's act too (someone put the
/// contact in its buying group), so it moves any stage but a customer's.
pub fn after_event(current: ContactStage, event: ContactEvent) -> ContactStage {
    use ContactStage as C;
    match event {
        ContactEvent::Activity { hand_raise } => match current {
            C::Anonymous | C::Suspect | C::Engaged if hand_raise => C::MarketingQualified,
            C::Anonymous | C::Suspect => C::Engaged,
            other => other,
        },
        ContactEvent::JoinedOpenOpportunity => match current {
            C::Customer | C::Evangelist => current,
            _ => C::Opportunity,
        },
        // A member a person disqualified or set apart (OTHER) while the deal
        // was open is not made a customer by its win.
        ContactEvent::OpportunityWon => match current {
            C::Evangelist | C::Disqualified | C::Other => current,
            _ => C::Customer,
        },
        ContactEvent::LeftOpenOpportunities {
            has_email,
            has_activity,
            before,
            raised_hand,
        } => match (current, before) {
            // A stage a person set, or a hand-raise, comes back: the deal
            // only lent the contact its OPPORTUNITY stage.
            (
                C::Opportunity,
                Some(b @ (C::MarketingQualified | C::SalesQualified | C::Disqualified | C::Other)),
            ) => b,
            // A hand raised during the deal counts as it would have
            // outside it (DESIGN: a hand-raise makes a contact
            // MARKETING_QUALIFIED); while in the deal it moved nothing.
            (C::Opportunity, _) if raised_hand => C::MarketingQualified,
            (C::Opportunity, _) if has_activity => C::Engaged,
            (C::Opportunity, _) => new_contact_stage(has_email),
            (other, _) => other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContactStage as C;

    #[test]
    fn new_contact_stage_follows_email() {
        assert_eq!(new_contact_stage(false), C::Anonymous);
        assert_eq!(new_contact_stage(true), C::Suspect);
    }

    #[test]
    fn email_changes_move_only_anonymous_and_suspect() {
        for &stage in C::ALL {
            for has_email in [false, true] {
                let expected = match (stage, has_email) {
                    (C::Anonymous, true) => C::Suspect,
                    (C::Suspect, false) => C::Anonymous,
                    _ => stage,
                };
                assert_eq!(
                    after_email_change(stage, has_email),
                    expected,
                    "{stage} email={has_email}"
                );
            }
        }
    }

    #[test]
    fn only_manual_stages_can_be_set_by_people() {
        for &current in C::ALL {
            for &target in C::ALL {
                match set_by_person(current, target) {
                    Ok(stage) => {
                        assert!(target.is_manual() || target == current, "{target} accepted");
                        assert_eq!(stage, target);
                    }
                    Err(Refusal(reason)) => {
                        assert!(!target.is_manual(), "{target} refused");
                        assert!(reason.contains(target.as_str()), "{reason}");
                        assert!(reason.contains("MARKETING_QUALIFIED"), "{reason}");
                    }
                }
            }
        }
    }

    #[test]
    fn moves_carry_the_cause_of_their_event_and_only_real_changes_move() {
        assert_eq!(
            move_on(C::Suspect, ContactEvent::Activity { hand_raise: false }),
            Some(ContactMove {
                from: C::Suspect,
                to: C::Engaged,
                cause: ContactTransitionCause::Activity
            })
        );
        assert_eq!(
            move_on(C::Engaged, ContactEvent::Activity { hand_raise: true })
                .map(|m| (m.to, m.cause)),
            Some((C::MarketingQualified, ContactTransitionCause::HandRaise))
        );
        assert_eq!(
            move_on(C::Engaged, ContactEvent::JoinedOpenOpportunity).map(|m| m.cause),
            Some(ContactTransitionCause::OpportunityOpened)
        );
        assert_eq!(
            move_on(C::Opportunity, ContactEvent::OpportunityWon).map(|m| m.cause),
            Some(ContactTransitionCause::OpportunityWon)
        );
        assert_eq!(
            move_on(
                C::Opportunity,
                ContactEvent::LeftOpenOpportunities {
                    has_email: true,
                    has_activity: false,
                    before: None,
                    raised_hand: false,
                }
            )
            .map(|m| (m.to, m.cause)),
            Some((C::Suspect, ContactTransitionCause::OpportunityLost))
        );
        // A person's decision stays on activity: no move, nothing recorded.
        assert_eq!(
            move_on(
                C::SalesQualified,
                ContactEvent::Activity { hand_raise: true }
            ),
            None
        );
    }

    /// Every stage against every event, with the expected stage.
    #[test]
    fn every_stage_against_every_event() {
        let left = |has_email, has_activity| ContactEvent::LeftOpenOpportunities {
            has_email,
            has_activity,
            before: None,
            raised_hand: false,
        };
        let events = [
            ContactEvent::Activity { hand_raise: false },
            ContactEvent::Activity { hand_raise: true },
            ContactEvent::JoinedOpenOpportunity,
            ContactEvent::OpportunityWon,
            left(true, true),
            left(true, false),
            left(false, false),
        ];
        #[rustfmt::skip]
        let table: [(C, [C; 7]); 10] = [
            //            activity  hand-raise               joined           won          left(e,a)    left(e,-)     left(-,-)
            (C::Anonymous, [C::Engaged, C::MarketingQualified, C::Opportunity, C::Customer, C::Anonymous, C::Anonymous, C::Anonymous]),
            (C::Suspect, [C::Engaged, C::MarketingQualified, C::Opportunity, C::Customer, C::Suspect, C::Suspect, C::Suspect]),
            (C::Engaged, [C::Engaged, C::MarketingQualified, C::Opportunity, C::Customer, C::Engaged, C::Engaged, C::Engaged]),
            (C::MarketingQualified, [C::MarketingQualified, C::MarketingQualified, C::Opportunity, C::Customer, C::MarketingQualified, C::MarketingQualified, C::MarketingQualified]),
            (C::SalesQualified, [C::SalesQualified, C::SalesQualified, C::Opportunity, C::Customer, C::SalesQualified, C::SalesQualified, C::SalesQualified]),
            (C::Opportunity, [C::Opportunity, C::Opportunity, C::Opportunity, C::Customer, C::Engaged, C::Suspect, C::Anonymous]),
            (C::Customer, [C::Customer, C::Customer, C::Customer, C::Customer, C::Customer, C::Customer, C::Customer]),
            (C::Evangelist, [C::Evangelist, C::Evangelist, C::Evangelist, C::Evangelist, C::Evangelist, C::Evangelist, C::Evangelist]),
            (C::Disqualified, [C::Disqualified, C::Disqualified, C::Opportunity, C::Disqualified, C::Disqualified, C::Disqualified, C::Disqualified]),
            (C::Other, [C::Other, C::Other, C::Opportunity, C::Other, C::Other, C::Other, C::Other]),
        ];
        assert_eq!(table.len(), C::ALL.len(), "every stage is in the table");
        for (stage, expected) in table {
            for (event, want) in events.iter().zip(expected) {
                assert_eq!(after_event(stage, *event), want, "{stage} on {event:?}");
            }
        }
    }

    /// Leaving its last open deal, a contact gets back the stage a person
    /// or a hand-raise gave it before it joined; an automatic stage before
    /// is worked out again from what the contact did meanwhile.
    #[test]
    fn leaving_a_deal_brings_back_the_stage_before_it() {
        for (before, want) in [
            (Some(C::SalesQualified), C::SalesQualified),
            (Some(C::Disqualified), C::Disqualified),
            (Some(C::Other), C::Other),
            (Some(C::MarketingQualified), C::MarketingQualified),
            (Some(C::Suspect), C::Engaged),
            (Some(C::Engaged), C::Engaged),
            (None, C::Engaged),
        ] {
            let event = ContactEvent::LeftOpenOpportunities {
                has_email: true,
                has_activity: true,
                before,
                raised_hand: false,
            };
            assert_eq!(after_event(C::Opportunity, event), want, "{before:?}");
            // A hand raised during the deal: MARKETING_QUALIFIED, unless a
            // person's stage comes back.
            let raised = ContactEvent::LeftOpenOpportunities {
                has_email: true,
                has_activity: true,
                before,
                raised_hand: true,
            };
            let person_set = matches!(before, Some(C::SalesQualified | C::Disqualified | C::Other));
            let want = if person_set {
                want
            } else {
                C::MarketingQualified
            };
            assert_eq!(
                after_event(C::Opportunity, raised),
                want,
                "raised, {before:?}"
            );
        }
        // Only a contact the deal made an OPPORTUNITY moves.
        let event = ContactEvent::LeftOpenOpportunities {
            has_email: true,
            has_activity: true,
            before: Some(C::SalesQualified),
            raised_hand: true,
        };
        assert_eq!(after_event(C::Customer, event), C::Customer);
    }
}
