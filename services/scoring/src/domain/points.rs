//! Points for activities: a rule's points, its daily cap per contact, and
//! first-occurrence rules, with the usage storage loads and locks.

use std::collections::HashMap;

use super::ScoringModel;

/// What a rule gives one activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scored {
    /// The rule's points (0 for an unknown type).
    pub rule_points: i32,
    /// Points counted after the cap or first-occurrence rule.
    pub counted_points: i32,
    /// True when a cap or first-occurrence rule reduced the points.
    pub capped: bool,
    pub intent: bool,
}

/// How much of a rule a subject (contact) has used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Points counted so far (in the period).
    pub points: i64,
    /// Activities counted so far (in the period).
    pub occurrences: i64,
}

/// A key of rule usage: the contact (or the account's anonymous visitors),
/// the activity type, and the period (`day` number, or `LIFETIME`).
pub type UsageKey = (String, String, i64);

/// Period of first-occurrence rules.
pub const LIFETIME: i64 = -1;

/// The usage keys an activity needs, so storage can load (and lock) them.
pub fn usage_keys(
    model: &ScoringModel,
    subject: &str,
    activity_type: &str,
    day: i64,
) -> Vec<UsageKey> {
    let mut keys = Vec::new();
    if let Some(rule) = model.rule(activity_type) {
        if rule.daily_cap_per_contact > 0 {
            keys.push((subject.to_owned(), activity_type.to_owned(), day));
        }
        if rule.first_occurrence_only {
            keys.push((subject.to_owned(), activity_type.to_owned(), LIFETIME));
        }
    }
    keys
}

/// Scores one activity and records its use of capped rules in `usage`.
pub fn score_activity(
    model: &ScoringModel,
    subject: &str,
    activity_type: &str,
    has_contact: bool,
    day: i64,
    usage: &mut HashMap<UsageKey, Usage>,
) -> Scored {
    let (rule_points, counted, intent) =
        score_activities(model, subject, activity_type, has_contact, day, 1, usage);
    // One activity never counts more than its rule's points, so it fits.
    let counted_points = i32::try_from(counted).unwrap_or(0);
    Scored {
        rule_points,
        counted_points,
        capped: counted_points != rule_points,
        intent,
    }
}

/// Scores `count` activities of one subject, type and day together, exactly
/// as `count` calls of [`score_activity`] in a row would (simulation replays
/// stored activities grouped this way). Answers the rule's points, the points
/// counted for all of them, and whether they are intent.
pub fn score_activities(
    model: &ScoringModel,
    subject: &str,
    activity_type: &str,
    has_contact: bool,
    day: i64,
    count: i64,
    usage: &mut HashMap<UsageKey, Usage>,
) -> (i32, i64, bool) {
    let intent = model.is_intent(activity_type, has_contact);
    let Some(rule) = model.rule(activity_type) else {
        return (0, 0, intent);
    };
    if count <= 0 {
        return (rule.points, 0, intent);
    }
    let points = i64::from(rule.points);
    // How many of them earn the rule's points before the daily cap.
    let mut earning = count;
    if rule.first_occurrence_only {
        let lifetime = usage
            .entry((subject.to_owned(), activity_type.to_owned(), LIFETIME))
            .or_default();
        earning = if lifetime.occurrences > 0 {
            0
        } else {
            count.min(1)
        };
        lifetime.occurrences += count;
    }
    let mut counted = earning * points;
    if rule.daily_cap_per_contact > 0 && counted > 0 {
        let today = usage
            .entry((subject.to_owned(), activity_type.to_owned(), day))
            .or_default();
        let room = (i64::from(rule.daily_cap_per_contact) - today.points).max(0);
        counted = counted.min(room);
        today.points += counted;
        today.occurrences += earning;
    }
    (rule.points, counted, intent)
}
