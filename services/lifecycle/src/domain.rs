//! The lifecycle rules, as plain functions over plain types (no I/O).

use cascade_shared::domain::{AccountStage, ContactStage, CustomerType};
use chrono::{DateTime, Utc};

/// An account as the rules and the API see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    pub account_id: String,
    pub name: String,
    pub domain: Option<String>,
    pub owner_id: Option<String>,
    pub stage: AccountStage,
    pub customer_type: CustomerType,
    pub stage_entered_at: DateTime<Utc>,
    pub engagement_score: f64,
    pub average_engagement_score: f64,
    pub intent_score: f64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Fields a caller supplies for a new account.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAccount {
    pub name: String,
    pub domain: Option<String>,
    pub owner_id: Option<String>,
}

/// Changes to an account's descriptive fields; `None` leaves a field as is,
/// `Some(None)` clears an optional one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountChanges {
    pub name: Option<String>,
    pub domain: Option<Option<String>>,
    pub owner_id: Option<Option<String>>,
}

/// A contact as the rules and the API see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    pub contact_id: String,
    pub account_id: String,
    pub email: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub title: String,
    pub stage: ContactStage,
    pub stage_entered_at: DateTime<Utc>,
    pub engagement_score: f64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Fields a caller supplies for a new contact.
#[derive(Debug, Clone, PartialEq)]
pub struct NewContact {
    pub account_id: String,
    pub email: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub title: String,
}

/// Changes to a contact; `None` leaves a field as is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactChanges {
    pub email: Option<Option<String>>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub title: Option<String>,
    pub stage: Option<ContactStage>,
}

/// A rule refused a change; the text says why and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// Every new account starts at TARGETED as a PROSPECT.
pub const NEW_ACCOUNT_STAGE: (AccountStage, CustomerType) =
    (AccountStage::Targeted, CustomerType::Prospect);

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
pub fn contact_stage_after_email_change(current: ContactStage, has_email: bool) -> ContactStage {
    match (current, has_email) {
        (ContactStage::Anonymous, true) => ContactStage::Suspect,
        (ContactStage::Suspect, false) => ContactStage::Anonymous,
        (stage, _) => stage,
    }
}

/// A stage set by a person on a contact. Only the manual stages may be set;
/// the automatic ones (ANONYMOUS, SUSPECT, ENGAGED, OPPORTUNITY, CUSTOMER)
/// follow the contact's data and activity.
pub fn set_manual_contact_stage(
    current: ContactStage,
    target: ContactStage,
) -> Result<ContactStage, Refusal> {
    if target.is_manual() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_contact_stage_follows_email() {
        assert_eq!(new_contact_stage(false), ContactStage::Anonymous);
        assert_eq!(new_contact_stage(true), ContactStage::Suspect);
    }

    #[test]
    fn email_changes_move_only_anonymous_and_suspect() {
        for &stage in ContactStage::ALL {
            for has_email in [false, true] {
                let after = contact_stage_after_email_change(stage, has_email);
                let expected = match (stage, has_email) {
                    (ContactStage::Anonymous, true) => ContactStage::Suspect,
                    (ContactStage::Suspect, false) => ContactStage::Anonymous,
                    _ => stage,
                };
                assert_eq!(after, expected, "{stage} with email={has_email}");
            }
        }
    }

    #[test]
    fn only_manual_stages_can_be_set_by_people() {
        for &current in ContactStage::ALL {
            for &target in ContactStage::ALL {
                let result = set_manual_contact_stage(current, target);
                if target.is_manual() {
                    assert_eq!(result, Ok(target));
                } else {
                    let Err(Refusal(reason)) = result else {
                        panic!("{target} accepted from {current}")
                    };
                    assert!(reason.contains(target.as_str()), "{reason}");
                    assert!(reason.contains("MARKETING_QUALIFIED"), "{reason}");
                }
            }
        }
    }
}
