//! A tenant's lifecycle settings and their defaults.

use cascade_chassis::secret::Secret;
use cascade_domain::domain_enum;
use cascade_proto::lifecycle::v1 as pb;

domain_enum! {
    /// What a lost deal does to an account with no other open opportunity.
    OnLostAction => pb::OnLostAction {
        Nurture = "NURTURE",
        Disqualify = "DISQUALIFY",
        Stay = "STAY",
    }
}

/// The settings in force for a tenant (one version of them).
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleSettings {
    /// Version 1 is the built-in defaults; every change adds one.
    pub version: i64,
    /// A score above this moves TARGETED / DETECTED to ENGAGED.
    pub engaged_threshold: f64,
    /// A score at or above this moves accounts before PRIORITIZED to it.
    pub prioritized_threshold: f64,
    /// Whether the QUALIFIED stage is used (separate BDR and sales teams).
    pub qualified_stage_enabled: bool,
    pub on_lost_action: OnLostAction,
    /// Activity types that make a contact MARKETING_QUALIFIED.
    pub hand_raise_activity_types: Vec<String>,
    /// Notify the owner again when a contact raises a hand on an account at
    /// or past PRIORITIZED.
    pub renotify_on_hand_raise: bool,
    /// A customer whose engagement falls below this is flagged at risk; 0
    /// turns the rule off.
    pub at_risk_engagement_threshold: f64,
    /// A lost renewal churns the customer.
    pub churn_on_lost_renewal: bool,
    /// A customer churns when all its contracts and line items have ended.
    pub churn_when_contracts_end: bool,
    pub webhook_url: Option<String>,
    /// Signs webhook calls; never printed.
    pub webhook_secret: Option<Secret<String>>,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            version: 1,
            engaged_threshold: 0.0,
            prioritized_threshold: 100.0,
            qualified_stage_enabled: true,
            on_lost_action: OnLostAction::Nurture,
            hand_raise_activity_types: vec!["demo_request".to_owned()],
            renotify_on_hand_raise: false,
            at_risk_engagement_threshold: 0.0,
            churn_on_lost_renewal: false,
            churn_when_contracts_end: false,
            webhook_url: None,
            webhook_secret: None,
        }
    }
}

impl LifecycleSettings {
    pub fn is_hand_raise(&self, activity_type: &str) -> bool {
        self.hand_raise_activity_types
            .iter()
            .any(|t| t == activity_type)
    }
}
