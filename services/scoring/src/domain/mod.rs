//! Engagement scoring rules (DESIGN.md "Engagement scoring"), as plain
//! functions over plain types: the model, points with caps, decay, and the
//! score-driven stage used by simulation.

pub mod simulate;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cascade_domain::valid_activity_type;

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

/// Checks a proposed model; each problem as (field, description).
pub fn check_model(model: &ScoringModel) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if model.rules.len() > 500 {
        problems.push(("model.rules".into(), "at most 500 rules".into()));
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

/// The UTC day number (days since 1970-01-01) of a time in milliseconds.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// The share of an activity's points left after decay: halves every
/// `half_life_days`, counted in whole UTC days (activities of the same day
/// decay together, so a score changes only at midnight).
pub fn decay_factor(half_life_days: f64, activity_day: i64, today: i64) -> f64 {
    if half_life_days <= 0.0 {
        return 1.0;
    }
    let age = (today - activity_day).max(0) as f64;
    0.5_f64.powf(age / half_life_days)
}

/// An account's or contact's score at a day, with decay applied.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Totals {
    pub engagement: f64,
    pub intent: f64,
    /// Contacts with engagement activity ("" counts the activities without a contact).
    pub engaged_contacts: i32,
    /// Activity type -> (activities, points), engagement only.
    pub breakdown: BTreeMap<String, (i64, f64)>,
    pub per_contact: BTreeMap<String, f64>,
    pub activities: i64,
}

impl Totals {
    pub fn average(&self) -> f64 {
        if self.engaged_contacts > 0 {
            self.engagement / f64::from(self.engaged_contacts)
        } else {
            0.0
        }
    }
}

/// One per-day bucket of an account's activities: what scores are
/// computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// "" for the activities without a contact.
    pub contact_id: String,
    pub activity_type: String,
    pub intent: bool,
    pub day: i64,
    pub points: i64,
    pub activities: i64,
}

/// Totals at `today` of the buckets given (an account's, or one contact's).
pub fn totals_of(
    buckets: impl IntoIterator<Item = Bucket>,
    model: &ScoringModel,
    today: i64,
) -> Totals {
    let mut totals = Totals::default();
    let mut engaged = BTreeSet::new();
    for bucket in buckets {
        let value =
            bucket.points as f64 * decay_factor(model.decay_half_life_days, bucket.day, today);
        totals.activities += bucket.activities;
        if bucket.intent {
            totals.intent += value;
            continue;
        }
        totals.engagement += value;
        let entry = totals.breakdown.entry(bucket.activity_type).or_default();
        entry.0 += bucket.activities;
        entry.1 += value;
        *totals
            .per_contact
            .entry(bucket.contact_id.clone())
            .or_default() += value;
        engaged.insert(bucket.contact_id);
    }
    totals.engaged_contacts = i32::try_from(engaged.len()).unwrap_or(i32::MAX);
    totals
}

/// An account's score as stored after its last batch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoredScore {
    pub engagement: f64,
    pub intent: f64,
    pub engaged_contacts: i32,
    /// The day its decay was computed for.
    pub computed_day: i64,
}

/// One scored activity of a batch, as the roll-up sees it.
#[derive(Debug, Clone, Copy)]
pub struct BatchActivity<'a> {
    pub account_id: &'a str,
    pub contact_id: Option<&'a str>,
    pub activity_type: &'a str,
    pub day: i64,
    pub points: i32,
    pub intent: bool,
}

/// What a batch adds to one account, decayed to today.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccountAddition {
    pub engagement: f64,
    pub intent: f64,
    /// Contact ("" without one) -> engagement points added.
    pub contact_points: BTreeMap<String, f64>,
    /// Contact -> activity types recorded (intent ones too): what the
    /// delivery tells lifecycle, and whose contact scores are written.
    pub new_types: BTreeMap<String, BTreeSet<String>>,
}

/// A batch's additions, per account.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchScores {
    pub accounts: BTreeMap<String, AccountAddition>,
}

impl BatchScores {
    pub fn of<'a>(
        activities: impl IntoIterator<Item = BatchActivity<'a>>,
        model: &ScoringModel,
        today: i64,
    ) -> Self {
        let mut accounts: BTreeMap<String, AccountAddition> = BTreeMap::new();
        for a in activities {
            let add = accounts.entry(a.account_id.to_owned()).or_default();
            let value =
                f64::from(a.points) * decay_factor(model.decay_half_life_days, a.day, today);
            if let Some(contact) = a.contact_id {
                add.new_types
                    .entry(contact.to_owned())
                    .or_default()
                    .insert(a.activity_type.to_owned());
            }
            if a.intent {
                add.intent += value;
            } else {
                add.engagement += value;
                *add.contact_points
                    .entry(a.contact_id.unwrap_or_default().to_owned())
                    .or_default() += value;
            }
        }
        Self { accounts }
    }

    /// The contacts (with an id) the batch touches.
    pub fn contacts(&self) -> impl Iterator<Item = &str> {
        let unique: BTreeSet<&str> = self
            .accounts
            .values()
            .flat_map(|a| a.new_types.keys().map(String::as_str))
            .collect();
        unique.into_iter()
    }
}

/// An account's score after a batch, from its stored score of the same day:
/// the sum of the same buckets `totals_from` would read, without reading
/// them. `previous` is a contact's stored score in this account (0 if
/// none); `was_engaged` tells whether a contact had engagement before.
/// `per_contact` holds the batch's contacts only.
pub fn add_batch(
    current: &StoredScore,
    add: &AccountAddition,
    previous: impl Fn(&str) -> f64,
    was_engaged: impl Fn(&str) -> bool,
) -> Totals {
    let newly_engaged = add
        .contact_points
        .keys()
        .filter(|c| !was_engaged(c))
        .count();
    let mut per_contact = BTreeMap::new();
    for contact in add.new_types.keys().chain(add.contact_points.keys()) {
        let added = add.contact_points.get(contact).copied().unwrap_or(0.0);
        per_contact.insert(contact.clone(), previous(contact) + added);
    }
    Totals {
        engagement: current.engagement + add.engagement,
        intent: current.intent + add.intent,
        engaged_contacts: current
            .engaged_contacts
            .saturating_add(i32::try_from(newly_engaged).unwrap_or(i32::MAX)),
        breakdown: BTreeMap::new(),
        per_contact,
        activities: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(rules: Vec<ScoringRule>) -> ScoringModel {
        ScoringModel {
            rules,
            ..ScoringModel::default()
        }
    }

    fn rule(t: &str, points: i32, cap: i32, first: bool) -> ScoringRule {
        ScoringRule {
            activity_type: t.into(),
            points,
            daily_cap_per_contact: cap,
            first_occurrence_only: first,
        }
    }

    #[test]
    fn default_points_come_from_the_source_table() {
        let m = ScoringModel::default();
        let mut usage = HashMap::new();
        let mut points = |t: &str| score_activity(&m, "c", t, true, 0, &mut usage).counted_points;
        assert_eq!(points("demo_request"), 100);
        assert_eq!(points("webinar_attended"), 25);
        assert_eq!(points("case_study_download"), 10);
        assert_eq!(points("email_open"), 2);
        assert_eq!(points("link_click"), 2);
        assert_eq!(points("web_page_visit"), 4);
        assert_eq!(points("pricing_page_visit"), 50);
        assert_eq!(points("meeting_agreed"), 50);
        assert_eq!(points("unknown_thing"), 0, "unknown types score 0");
    }

    /// Grouped scoring (simulation) must equal scoring one at a time (ingest)
    /// for every kind of rule, from fresh and from partly used caps.
    #[test]
    fn scoring_a_group_equals_scoring_its_activities_one_by_one() {
        let rules = [
            rule("t", 2, 0, false),
            rule("t", 2, 5, false),
            rule("t", 3, 3, false),
            rule("t", 10, 0, true),
            rule("t", 10, 4, true),
            rule("t", -5, 0, false),
            rule("t", -5, 3, false),
            rule("t", 0, 2, false),
        ];
        for r in rules {
            let m = model(vec![r.clone()]);
            for before in 0..3 {
                for count in 0..8 {
                    let mut one = HashMap::new();
                    let mut many = HashMap::new();
                    // Earlier use of the rule the same day (and over the lifetime).
                    for _ in 0..before {
                        score_activity(&m, "ann", "t", true, 7, &mut one);
                        score_activity(&m, "ann", "t", true, 7, &mut many);
                    }
                    let single: i64 = (0..count)
                        .map(|_| {
                            i64::from(
                                score_activity(&m, "ann", "t", true, 7, &mut one).counted_points,
                            )
                        })
                        .sum();
                    let (points, grouped, intent) =
                        score_activities(&m, "ann", "t", true, 7, count, &mut many);
                    assert_eq!(
                        (points, grouped, intent),
                        (r.points, single, false),
                        "{r:?} after {before}, {count} at once"
                    );
                    assert_eq!(one, many, "{r:?} after {before}, {count}: usage differs");
                }
            }
        }
    }

    #[test]
    fn daily_caps_limit_points_per_contact_per_day() {
        let m = model(vec![rule("email_open", 2, 5, false)]);
        let mut usage = HashMap::new();
        let day1: Vec<_> = (0..4)
            .map(|_| score_activity(&m, "ann", "email_open", true, 100, &mut usage))
            .map(|s| (s.counted_points, s.capped))
            .collect();
        assert_eq!(day1, [(2, false), (2, false), (1, true), (0, true)]);
        // Another contact, and the next day, start afresh.
        assert_eq!(
            score_activity(&m, "bob", "email_open", true, 100, &mut usage).counted_points,
            2
        );
        assert_eq!(
            score_activity(&m, "ann", "email_open", true, 101, &mut usage).counted_points,
            2
        );
    }

    #[test]
    fn first_occurrence_only_counts_once() {
        let m = model(vec![rule("webinar_attended", 25, 0, true)]);
        let mut usage = HashMap::new();
        let first = score_activity(&m, "ann", "webinar_attended", true, 1, &mut usage);
        let second = score_activity(&m, "ann", "webinar_attended", true, 9, &mut usage);
        assert_eq!((first.counted_points, first.capped), (25, false));
        assert_eq!((second.counted_points, second.capped), (0, true));
    }

    #[test]
    fn negative_points_are_not_capped() {
        let m = model(vec![rule("unsubscribe", -20, 5, false)]);
        let mut usage = HashMap::new();
        let s = score_activity(&m, "ann", "unsubscribe", true, 1, &mut usage);
        assert_eq!((s.counted_points, s.capped), (-20, false));
    }

    #[test]
    fn intent_without_contact_or_by_type() {
        let m = ScoringModel {
            intent_activity_types: vec!["intent_surge".into()],
            ..ScoringModel::default()
        };
        assert!(m.is_intent("web_page_visit", false));
        assert!(!m.is_intent("web_page_visit", true));
        assert!(m.is_intent("intent_surge", true));
    }

    #[test]
    fn decay_halves_per_half_life_in_whole_days() {
        assert_eq!(decay_factor(0.0, 0, 1000), 1.0);
        assert_eq!(decay_factor(10.0, 100, 100), 1.0);
        assert_eq!(decay_factor(10.0, 100, 110), 0.5);
        assert_eq!(decay_factor(10.0, 100, 120), 0.25);
        assert_eq!(decay_factor(10.0, 120, 100), 1.0, "future days do not grow");
        assert_eq!(day_of(86_400_000 * 3 + 5), 3);
        assert_eq!(day_of(-1), -1);
    }

    #[test]
    fn models_are_checked() {
        let mut m = model(vec![
            rule("a", 1, -1, false),
            rule("a", 1, 0, false),
            rule("Bad!", 1, 0, false),
        ]);
        m.decay_half_life_days = 0.5;
        let fields: Vec<String> = check_model(&m).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "model.rules[0].daily_cap_per_contact",
                "model.rules[1].activity_type",
                "model.rules[2].activity_type",
                "model.decay_half_life_days"
            ]
        );
        assert!(check_model(&ScoringModel::default()).is_empty());
    }

    /// (contact, activity type, intent, day, points) of one activity.
    type Activity = (Option<&'static str>, &'static str, bool, i64, i32);

    fn buckets(activities: &[Activity]) -> Vec<Bucket> {
        let mut rows: BTreeMap<(String, String, bool, i64), (i64, i64)> = BTreeMap::new();
        for (contact, kind, intent, day, points) in activities {
            let entry = rows
                .entry((
                    contact.unwrap_or_default().to_owned(),
                    (*kind).to_owned(),
                    *intent,
                    *day,
                ))
                .or_default();
            entry.0 += i64::from(*points);
            entry.1 += 1;
        }
        rows.into_iter()
            .map(
                |((contact_id, activity_type, intent, day), (points, activities))| Bucket {
                    contact_id,
                    activity_type,
                    intent,
                    day,
                    points,
                    activities,
                },
            )
            .collect()
    }

    fn addition(activities: &[Activity], model: &ScoringModel, today: i64) -> AccountAddition {
        let batch = BatchScores::of(
            activities
                .iter()
                .map(|(contact, kind, intent, day, points)| BatchActivity {
                    account_id: "a",
                    contact_id: *contact,
                    activity_type: kind,
                    day: *day,
                    points: *points,
                    intent: *intent,
                }),
            model,
            today,
        );
        batch.accounts.get("a").cloned().unwrap_or_default()
    }

    /// Adding a batch to the stored score gives what reading all the
    /// buckets again gives: the invariant the ingest path relies on.
    #[test]
    fn a_batch_added_to_the_stored_score_equals_the_recomputed_score() {
        let earlier: Vec<Activity> = vec![
            (Some("c1"), "email_open", false, 100, 1),
            (Some("c1"), "page_visit", false, 101, 2),
            (Some("c2"), "web_research", true, 101, 10),
            (None, "page_visit", false, 102, 2),
            (Some("c3"), "unsubscribe", false, 102, -5),
        ];
        let batch: Vec<Activity> = vec![
            (Some("c1"), "email_open", false, 103, 1),
            (Some("c2"), "demo_request", false, 103, 100),
            (Some("c4"), "web_research", true, 103, 10),
            (Some("c5"), "email_open", false, 99, 1),
            (None, "page_visit", false, 103, 2),
        ];
        let today = 103;
        for half_life in [0.0, 7.0] {
            let model = ScoringModel {
                decay_half_life_days: half_life,
                ..ScoringModel::default()
            };
            let before = totals_of(buckets(&earlier), &model, today);
            let stored = StoredScore {
                engagement: before.engagement,
                intent: before.intent,
                engaged_contacts: before.engaged_contacts,
                computed_day: today,
            };
            let all: Vec<Activity> = earlier.iter().chain(&batch).copied().collect();
            let expected = totals_of(buckets(&all), &model, today);
            let engaged_before: BTreeSet<String> = earlier
                .iter()
                .filter(|a| !a.2)
                .map(|a| a.0.unwrap_or_default().to_owned())
                .collect();
            let got = add_batch(
                &stored,
                &addition(&batch, &model, today),
                |c| before.per_contact.get(c).copied().unwrap_or(0.0),
                |c| engaged_before.contains(c),
            );
            let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
            assert!(
                close(got.engagement, expected.engagement),
                "{half_life}: {got:?} vs {expected:?}"
            );
            assert!(close(got.intent, expected.intent), "{half_life}");
            assert_eq!(
                got.engaged_contacts, expected.engaged_contacts,
                "{half_life}"
            );
            for contact in ["c1", "c2", "c4", "c5", ""] {
                assert!(
                    close(
                        got.per_contact.get(contact).copied().unwrap_or(0.0),
                        expected.per_contact.get(contact).copied().unwrap_or(0.0)
                    ),
                    "{half_life}: contact {contact}"
                );
            }
            if half_life == 0.0 {
                // Whole points: exactly equal, so delivered and read scores match.
                assert_eq!(got.engagement, expected.engagement);
                assert_eq!(
                    got.engagement,
                    1.0 + 2.0 + 2.0 - 5.0 + 1.0 + 100.0 + 1.0 + 2.0
                );
                assert_eq!(got.intent, 20.0);
                // c1, c2, c3, c5 and the activities without a contact.
                assert_eq!(got.engaged_contacts, 5);
            }
        }
    }
}
