//! The lifecycle rules, as plain functions over plain types (no I/O), and
//! the plain types they work on.

pub mod account_rules;
pub mod contact_rules;
pub mod erasure;
pub mod import;
pub mod mutation;
pub mod resolve;
pub mod risk;
pub mod scores;
pub mod settings;

use cascade_domain::{AccountStage, ContactStage, CustomerType};
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
    pub disqualify_count: i32,
    pub nurture_count: i32,
    /// The first time the account reached each stage.
    pub stages_reached: Vec<(AccountStage, DateTime<Utc>)>,
    /// The most recent Disqualify or Nurture (by a person or a lost deal).
    pub last_recycle: Option<Transition>,
    /// Engagement earned since the last recycle: what the thresholds see.
    pub engagement_since_recycle: f64,
    /// The caller's own id for it (a CRM's).
    pub external_id: Option<String>,
    /// Set while the account is flagged at risk.
    pub at_risk: Option<risk::AtRisk>,
    /// Its open opportunities lifecycle knows of: (id, kind).
    pub open_opportunities: Vec<(String, cascade_domain::OpportunityKind)>,
}

/// One recorded stage change of a contact.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactTransition {
    pub transition_id: String,
    pub contact_id: String,
    pub account_id: String,
    pub from_stage: ContactStage,
    pub to_stage: ContactStage,
    pub cause: contact_rules::ContactTransitionCause,
    pub actor: String,
    pub event_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

impl ContactTransition {
    /// The record of a move the rules decided, with a new id.
    pub fn of_move(
        change: &contact_rules::ContactMove,
        contact_id: &str,
        account_id: &str,
        actor: &str,
        event_id: Option<String>,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        Self {
            transition_id: cascade_domain::ids::new_id(),
            contact_id: contact_id.to_owned(),
            account_id: account_id.to_owned(),
            from_stage: change.from,
            to_stage: change.to,
            cause: change.cause,
            actor: actor.to_owned(),
            event_id,
            occurred_at,
        }
    }
}

/// One recorded stage change of an account.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub transition_id: String,
    pub account_id: String,
    pub from_stage: AccountStage,
    pub to_stage: AccountStage,
    pub from_customer_type: CustomerType,
    pub to_customer_type: CustomerType,
    pub cause: account_rules::TransitionCause,
    pub actor: String,
    pub reason: Option<String>,
    pub event_id: Option<String>,
    pub settings_version: i64,
    pub occurred_at: DateTime<Utc>,
}

impl Transition {
    /// The record of one step the rules decided, with a new id.
    pub fn of_step(
        step: &account_rules::Step,
        account_id: &str,
        actor: &str,
        reason: Option<String>,
        event_id: Option<String>,
        settings_version: i64,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        Self {
            transition_id: cascade_domain::ids::new_id(),
            account_id: account_id.to_owned(),
            from_stage: step.from_stage,
            to_stage: step.to_stage,
            from_customer_type: step.from_customer_type,
            to_customer_type: step.to_customer_type,
            cause: step.cause,
            actor: actor.to_owned(),
            reason,
            event_id,
            settings_version,
            occurred_at,
        }
    }
}

cascade_domain::domain_enum! {
    /// Why an account owner is notified.
    NotificationReason => cascade_proto::lifecycle::v1::NotificationReason {
        Prioritized = "PRIORITIZED",
        HandRaise = "HAND_RAISE",
        AtRisk = "AT_RISK",
    }
}

cascade_domain::domain_enum! {
    /// Where a notification's webhook delivery stands.
    DeliveryState => cascade_proto::lifecycle::v1::NotificationDeliveryState {
        Pending = "PENDING",
        Delivered = "DELIVERED",
        NoWebhook = "NO_WEBHOOK",
        DeadLettered = "DEAD_LETTERED",
    }
}

/// A message to the account's owner, before it has an id.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationDraft {
    pub reason: NotificationReason,
    pub text: String,
    /// The contact a hand-raise text names, so that erasing them finds
    /// the text whatever their email was when it was written, and on
    /// whichever account they were then.
    pub raiser_contact_id: Option<String>,
}

/// A message to an account owner.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub notification_id: String,
    pub account_id: String,
    pub owner_id: String,
    pub reason: NotificationReason,
    pub text: String,
    pub created_at: DateTime<Utc>,
    pub delivery: Delivery,
}

/// A notification's webhook delivery so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub state: DeliveryState,
    pub failed_attempts: i32,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// Delivered, or set aside for want of a webhook.
    pub settled_at: Option<DateTime<Utc>>,
}

impl Delivery {
    /// A notification just raised.
    pub fn pending() -> Self {
        Self {
            state: DeliveryState::Pending,
            failed_attempts: 0,
            last_error: None,
            last_attempt_at: None,
            settled_at: None,
        }
    }
}

/// Fields a caller supplies for a new account.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAccount {
    pub name: String,
    pub domain: Option<String>,
    pub owner_id: Option<String>,
    pub external_id: Option<String>,
}

/// Whether writing `change` (`None`: not written) over `current` leaves it
/// as it is. An update all of whose writes do is no change: no new version
/// or update time for `changed_since` listings to report, so a two-way sync
/// writing back what it read cannot keep another busy (accounts, contacts;
/// opportunity's `decide` compares whole deals).
pub fn writes_nothing<T: PartialEq>(change: Option<&T>, current: &T) -> bool {
    change.is_none_or(|value| value == current)
}

/// Changes to an account's descriptive fields; `None` leaves a field as is,
/// `Some(None)` clears an optional one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountChanges {
    pub name: Option<String>,
    pub domain: Option<Option<String>>,
    pub owner_id: Option<Option<String>>,
    pub external_id: Option<Option<String>>,
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
    /// The first time the contact reached each stage.
    pub stages_reached: Vec<(ContactStage, DateTime<Utc>)>,
    /// The caller's own id for the person (a CRM's).
    pub external_id: Option<String>,
    /// Set while the person is no longer at the company: since when, and why.
    pub inactive: Option<(DateTime<Utc>, Option<String>)>,
}

/// Fields a caller supplies for a new contact.
#[derive(Debug, Clone, PartialEq)]
pub struct NewContact {
    pub account: AccountRef,
    pub email: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub title: String,
    pub external_id: Option<String>,
}

/// How a caller names an account: by our id, or by its own (external) id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccountRef {
    Id(String),
    ExternalId(String),
}

/// Changes to a contact; `None` leaves a field as is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactChanges {
    pub email: Option<Option<String>>,
    pub external_id: Option<Option<String>>,
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
