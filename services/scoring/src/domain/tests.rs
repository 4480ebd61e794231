//! Table tests of the scoring rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};

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
                        i64::from(score_activity(&m, "ann", "t", true, 7, &mut one).counted_points)
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

/// The running total of what new activity added decays as the score does,
/// and a batch adds its points (a penalty's too) on top.
#[test]
fn the_added_total_decays_like_the_score_and_adds_the_batch() {
    let decaying = ScoringModel {
        decay_half_life_days: 10.0,
        ..ScoringModel::default()
    };
    assert_eq!(added_total((40.0, 100), &decaying, 110, 5.0), 25.0);
    assert_eq!(added_total((40.0, 100), &decaying, 110, -5.0), 15.0);
    assert_eq!(
        added_total((40.0, 100), &ScoringModel::default(), 200, 1.0),
        41.0
    );
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

#[test]
fn oversized_models_are_refused_by_size_alone() {
    // A million bad intent types: refused as one problem, not a million.
    let mut m = model(vec![rule("Bad!", 1, 0, false)]);
    m.intent_activity_types = vec!["Bad!".into(); 1_000_000];
    assert_eq!(
        check_model(&m),
        [(
            "model.intent_activity_types".to_owned(),
            "at most 500 types (got 1000000)".to_owned()
        )]
    );
    m.intent_activity_types = vec!["demo".into(); MAX_MODEL_LIST];
    m.rules = (0..=MAX_MODEL_LIST)
        .map(|i| rule(&format!("t{i}"), 1, 0, false))
        .collect();
    let fields: Vec<String> = check_model(&m).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["model.rules"]);
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
                points: i64::from(*points),
                intent: *intent,
                activities: 1,
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
        // A type with no rule: recorded, but no sign of engagement.
        (Some("c6"), "webinar_registered", false, 103, 0),
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
            breakdown: before.breakdown.clone(),
            activities: before.activities,
            ..StoredScore::default()
        };
        let all: Vec<Activity> = earlier.iter().chain(&batch).copied().collect();
        let expected = totals_of(buckets(&all), &model, today);
        let engaged_before: BTreeSet<String> = earlier
            .iter()
            .filter(|a| !a.2 && a.4 > 0)
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
        // The breakdown GetAccountScore answers from the stored score.
        assert_eq!(got.activities, expected.activities, "{half_life}");
        assert_eq!(
            got.breakdown.keys().collect::<Vec<_>>(),
            expected.breakdown.keys().collect::<Vec<_>>(),
            "{half_life}"
        );
        for (kind, (count, points)) in &expected.breakdown {
            let (got_count, got_points) = got.breakdown[kind];
            assert_eq!(got_count, *count, "{half_life}: {kind}");
            assert!(close(got_points, *points), "{half_life}: {kind}");
        }
        for contact in ["c1", "c2", "c4", "c5", "c6", ""] {
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
            // c1, c2, c5 and the activities without a contact: not c3,
            // whose one activity is a penalty, nor c6, whose is worth 0.
            assert_eq!(got.engaged_contacts, 4);
            assert_eq!(got.activities, 11);
            assert_eq!(got.breakdown["email_open"], (3, 3.0));
            assert_eq!(got.breakdown["page_visit"], (3, 6.0));
        }
    }
}
