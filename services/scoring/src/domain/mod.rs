//! Engagement scoring rules (DESIGN.md "Engagement scoring"), as plain
//! functions over plain types: the model (`mod.rs`), points with caps
//! (`points`), decay and totals (`totals`), inactive contacts and decay
//! refreshes (`status`), and simulation (`simulate`).

mod points;
pub mod simulate;
mod status;
mod totals;

use cascade_domain::valid_activity_type;

pub use points::{LIFETIME, Scored, Usage, UsageKey, score_activities, score_activity, usage_keys};
pub use status::{INACTIVE_CONTACT, change_is_later, recompute_before, totals_changed};
pub use totals::{
    AccountAddition, BatchActivity, BatchScores, Bucket, StoredScore, Totals, add_batch,
    added_total, day_of, decay_factor, engages, totals_of,
};

/// Whether an activity sent under an event id recorded before is that
/// activity again (a retry) rather than another one reusing the id, which is
/// refused: answered DUPLICATE it would be dropped without a word. A retry
/// never changes what happened, its type. Its time is not compared: a relay
/// may stamp each attempt anew, and refusing a real retry as bad input is
/// the worse mistake. Nor is who it names: a retry by email may resolve to
/// another person since (the email moved).
pub fn same_activity(sent_type: &str, recorded_type: &str) -> bool {
    sent_type == recorded_type
}

/// Why an activity reusing another one's event id is refused.
pub fn event_id_reused(recorded_type: &str, recorded_at_ms: i64) -> String {
    let at = chrono::DateTime::from_timestamp_millis(recorded_at_ms)
        .map_or_else(|| recorded_at_ms.to_string(), |t| t.to_rfc3339());
    format!(
        "was recorded before as another activity ({recorded_type} at {at}): a retry repeats \
         its activity; a new activity needs a new event_id"
    )
}

/// Points for one activity type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScoringRule {
    pub activity_type: String,
    /// May be negative (an unsubscribe).
    pub points: i32,
    /// At most this many points of the type per contact per UTC day; 0: no cap.
    pub daily_cap_per_contact: i32,
    /// Count only the contact's first activity of the type.
    pub first_occurrence_only: bool,
}

/// A versioned scoring model.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoringModel {
    /// Version 1 is the built-in default model.
    pub version: i64,
    pub rules: Vec<ScoringRule>,
    /// 0: no decay.
    pub decay_half_life_days: f64,
    /// Activity types that count as anonymous intent even with a contact.
    pub intent_activity_types: Vec<String>,
    pub created_at_ms: Option<i64>,
    pub created_by: Option<String>,
}

/// The default points, from TekStack's engagement-scoring table.
pub const DEFAULT_POINTS: [(&str, i32); 10] = [
    ("demo_request", 100),
    ("webinar_attended", 25),
    ("case_study_download", 10),
    ("email_open", 2),
    ("email_click", 2),
    ("link_click", 2),
    ("web_page_visit", 4),
    ("pricing_page_visit", 50),
    ("meeting_agreed", 50),
    ("appointment_attended", 50),
];

impl Default for ScoringModel {
    fn default() -> Self {
        Self {
            version: 1,
            rules: DEFAULT_POINTS
                .iter()
                .map(|(activity_type, points)| ScoringRule {
                    activity_type: (*activity_type).to_owned(),
                    points: *points,
                    daily_cap_per_contact: 0,
                    first_occurrence_only: false,
                })
                .collect(),
            decay_half_life_days: 0.0,
            intent_activity_types: Vec::new(),
            created_at_ms: None,
            created_by: None,
        }
    }
}

impl ScoringModel {
    pub fn rule(&self, activity_type: &str) -> Option<&ScoringRule> {
        self.rules.iter().find(|r| r.activity_type == activity_type)
    }

    /// Anonymous intent: no identified contact, or an intent activity type.
    pub fn is_intent(&self, activity_type: &str, has_contact: bool) -> bool {
        !has_contact
            || self
                .intent_activity_types
                .iter()
                .any(|t| t == activity_type)
    }

    pub fn decays(&self) -> bool {
        self.decay_half_life_days > 0.0
    }
}

/// The most rules, and the most intent types, a model may have.
pub const MAX_MODEL_LIST: usize = 500;

/// Checks a proposed model; each problem as (field, description).
pub fn check_model(model: &ScoringModel) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    // Sizes first, and nothing more when one is over: every batch reads
    // the model and every activity looks its type up in these lists, and
    // a refusal need not name each of a million entries.
    if model.rules.len() > MAX_MODEL_LIST {
        problems.push((
            "model.rules".into(),
            format!("at most {MAX_MODEL_LIST} rules (got {})", model.rules.len()),
        ));
    }
    if model.intent_activity_types.len() > MAX_MODEL_LIST {
        problems.push((
            "model.intent_activity_types".into(),
            format!(
                "at most {MAX_MODEL_LIST} types (got {})",
                model.intent_activity_types.len()
            ),
        ));
    }
    if !problems.is_empty() {
        return problems;
    }
    let mut seen = std::collections::HashSet::new();
    for (i, rule) in model.rules.iter().enumerate() {
        if !valid_activity_type(&rule.activity_type) {
            problems.push((
                format!("model.rules[{i}].activity_type"),
                "must be 1 to 64 characters of a-z, 0-9, '_', '-' or '.'".into(),
            ));
        } else if !seen.insert(rule.activity_type.as_str()) {
            problems.push((
                format!("model.rules[{i}].activity_type"),
                format!("{} has another rule in this model", rule.activity_type),
            ));
        }
        if !(-10_000..=10_000).contains(&rule.points) {
            problems.push((
                format!("model.rules[{i}].points"),
                "must be between -10000 and 10000".into(),
            ));
        }
        if rule.daily_cap_per_contact < 0 {
            problems.push((
                format!("model.rules[{i}].daily_cap_per_contact"),
                "must not be negative".into(),
            ));
        }
    }
    let h = model.decay_half_life_days;
    if !h.is_finite() || h < 0.0 || (h > 0.0 && h < 1.0) || h > 3650.0 {
        problems.push((
            "model.decay_half_life_days".into(),
            "must be 0 (no decay) or between 1 and 3650 days".into(),
        ));
    }
    for (i, t) in model.intent_activity_types.iter().enumerate() {
        if !valid_activity_type(t) {
            problems.push((
                format!("model.intent_activity_types[{i}]"),
                "must be 1 to 64 characters of a-z, 0-9, '_', '-' or '.'".into(),
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests;
