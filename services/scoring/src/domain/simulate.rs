//! Replaying stored activities through a proposed model beside the scores
//! they have now, one account at a time, in a single pass. Activities come
//! grouped by (contact, type, day): a rule treats those alike, so a group is
//! scored at once (`score_activities`) and the cost follows the number of
//! groups, not of activities.
//!
//! The current side does not rescore: it sums the points each activity was
//! counted when it was recorded, under the model version then in force, as
//! live scores do. Rescoring them with today's model gave figures no account
//! has after a model change, and hid the accounts the change would move.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use cascade_domain::AccountStage;

use super::{ScoringModel, Usage, UsageKey, decay_factor, score_activities};
use cascade_domain::stage_reached_by_score;

/// Score thresholds of the score-driven stages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub engaged: f64,
    pub prioritized: f64,
}

/// Stored activities of one account, contact, type, day and stored intent,
/// as the replay needs them. Pushed in day order within an account
/// (first-occurrence rules count the earliest).
#[derive(Debug, Clone, Copy)]
pub struct ReplayActivity<'a> {
    pub contact_id: Option<&'a str>,
    pub activity_type: &'a str,
    pub day: i64,
    /// How many activities the group holds.
    pub count: i64,
    /// The points they were counted when recorded (their sum).
    pub counted_points: i64,
    /// Whether they were recorded as intent.
    pub intent: bool,
    /// In the window replayed. Activities of the same people before it
    /// (`false`) only tell the proposed rules what was used already: a
    /// first occurrence, a day's cap.
    pub in_window: bool,
}

/// An account whose score-driven stage differs between the models.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub account_id: String,
    pub current_score: f64,
    pub proposed_score: f64,
    pub current_stage: AccountStage,
    pub proposed_stage: AccountStage,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SimulationResult {
    pub current_counts: BTreeMap<AccountStage, i64>,
    pub proposed_counts: BTreeMap<AccountStage, i64>,
    pub changed: i64,
    pub sample: Vec<Change>,
    pub activities: i64,
}

/// How far a replay has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Activities replayed so far.
    pub activities: i64,
    /// Accounts reached so far (the one being replayed included).
    pub accounts: i64,
}

/// When a replay reports its progress: at each tenth of the activities
/// counted before it started, so a replay of milliseconds still shows
/// movement, and otherwise once `interval` has passed since the last report,
/// so a long one neither floods the caller nor goes quiet.
#[derive(Debug, Clone)]
pub struct ProgressPace {
    total: i64,
    interval: Duration,
    /// The next tenth to report (1-9; 10: all reported; the end is reported
    /// anyway).
    next_tenth: i64,
    last: Instant,
}

impl ProgressPace {
    /// `start`: when the replay started (its first report).
    pub fn new(total: i64, interval: Duration, start: Instant) -> Self {
        Self {
            total,
            interval,
            next_tenth: 1,
            last: start,
        }
    }

    /// Whether to report with `replayed` activities at `now`; if so, the
    /// report is taken as made.
    pub fn due(&mut self, replayed: i64, now: Instant) -> bool {
        let mut due = now.saturating_duration_since(self.last) >= self.interval;
        while self.next_tenth < 10
            && replayed.saturating_mul(10) >= self.total.saturating_mul(self.next_tenth)
        {
            self.next_tenth += 1;
            due = true;
        }
        if due {
            self.last = now;
        }
        due
    }
}

/// One side's score of the account being replayed.
struct Tally {
    half_life_days: f64,
    thresholds: Thresholds,
    engagement: f64,
    intent: f64,
}

impl Tally {
    fn new((model, thresholds): (&ScoringModel, Thresholds)) -> Self {
        Self {
            half_life_days: model.decay_half_life_days,
            thresholds,
            engagement: 0.0,
            intent: 0.0,
        }
    }

    fn add(&mut self, points: i64, intent: bool, day: i64, today: i64) {
        let points = points as f64 * decay_factor(self.half_life_days, day, today);
        if intent {
            self.intent += points;
        } else {
            self.engagement += points;
        }
    }

    fn take(&mut self) -> (f64, AccountStage) {
        let stage = stage_reached_by_score(
            self.engagement,
            self.intent,
            self.thresholds.engaged,
            self.thresholds.prioritized,
        );
        let score = self.engagement;
        self.engagement = 0.0;
        self.intent = 0.0;
        (score, stage)
    }
}

/// Feed it activities ordered by account; `finish` gives the result.
pub struct Simulation {
    /// The stored points, decayed with the current model's half-life.
    current: Tally,
    proposed_model: ScoringModel,
    proposed: Tally,
    /// The proposed model's rule usage within the account being replayed.
    usage: HashMap<UsageKey, Usage>,
    /// Whether the account being replayed has activities in the window
    /// (one with activities before it only is not replayed).
    in_window: bool,
    today: i64,
    sample_size: usize,
    account: Option<String>,
    accounts: i64,
    result: SimulationResult,
}

impl Simulation {
    /// Of the current model only its decay is used: the points are the
    /// stored ones.
    pub fn new(
        current: (ScoringModel, Thresholds),
        proposed: (ScoringModel, Thresholds),
        today: i64,
        sample_size: usize,
    ) -> Self {
        Self {
            current: Tally::new((&current.0, current.1)),
            proposed: Tally::new((&proposed.0, proposed.1)),
            proposed_model: proposed.0,
            usage: HashMap::new(),
            in_window: false,
            today,
            sample_size,
            account: None,
            accounts: 0,
            result: SimulationResult::default(),
        }
    }

    pub fn push(&mut self, account_id: &str, activity: ReplayActivity<'_>) {
        if self.account.as_deref() != Some(account_id) {
            self.close_account();
            self.account = Some(account_id.to_owned());
        }
        let a = activity;
        let subject = a
            .contact_id
            .map_or_else(|| format!("account:{account_id}"), str::to_owned);
        let (_, counted, intent) = score_activities(
            &self.proposed_model,
            &subject,
            a.activity_type,
            a.contact_id.is_some(),
            a.day,
            a.count,
            &mut self.usage,
        );
        if !a.in_window {
            return;
        }
        if !self.in_window {
            self.in_window = true;
            self.accounts += 1;
        }
        self.current
            .add(a.counted_points, a.intent, a.day, self.today);
        self.proposed.add(counted, intent, a.day, self.today);
        self.result.activities += a.count;
    }

    /// How far the replay has got.
    pub fn progress(&self) -> Progress {
        Progress {
            activities: self.result.activities,
            accounts: self.accounts,
        }
    }

    fn close_account(&mut self) {
        let Some(account_id) = self.account.take() else {
            return;
        };
        let (current_score, current_stage) = self.current.take();
        let (proposed_score, proposed_stage) = self.proposed.take();
        self.usage.clear();
        if !std::mem::take(&mut self.in_window) {
            return;
        }
        *self.result.current_counts.entry(current_stage).or_default() += 1;
        *self
            .result
            .proposed_counts
            .entry(proposed_stage)
            .or_default() += 1;
        if current_stage != proposed_stage {
            self.result.changed += 1;
            if self.result.sample.len() < self.sample_size {
                self.result.sample.push(Change {
                    account_id,
                    current_score,
                    proposed_score,
                    current_stage,
                    proposed_stage,
                });
            }
        }
    }

    pub fn finish(mut self) -> SimulationResult {
        self.close_account();
        self.result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ScoringRule;

    #[test]
    fn counts_and_changes_per_account() {
        let current = ScoringModel::default();
        let mut proposed = ScoringModel::default();
        proposed.rules.push(ScoringRule {
            activity_type: "email_open".into(),
            points: 40,
            daily_cap_per_contact: 0,
            first_occurrence_only: false,
        });
        proposed
            .rules
            .retain(|r| r.activity_type != "email_open" || r.points == 40);
        let t = Thresholds {
            engaged: 0.0,
            prioritized: 100.0,
        };
        let mut sim = Simulation::new((current, t), (proposed, t), 10, 10);
        let open = |c, count| ReplayActivity {
            contact_id: Some(c),
            activity_type: "email_open",
            day: 10,
            count,
            counted_points: 2 * count,
            intent: false,
            in_window: true,
        };
        // a: 3 opens = 6 now, 120 proposed -> ENGAGED vs PRIORITIZED
        sim.push("a", open("ann", 1));
        sim.push("a", open("ann", 2));
        // b: anonymous visit only -> DETECTED under both
        sim.push(
            "b",
            ReplayActivity {
                contact_id: None,
                activity_type: "web_page_visit",
                day: 10,
                count: 1,
                counted_points: 4,
                intent: true,
                in_window: true,
            },
        );
        // c: a demo request -> PRIORITIZED under both
        sim.push(
            "c",
            ReplayActivity {
                contact_id: Some("cy"),
                activity_type: "demo_request",
                day: 10,
                count: 1,
                counted_points: 100,
                intent: false,
                in_window: true,
            },
        );
        assert_eq!(
            sim.progress(),
            Progress {
                activities: 5,
                accounts: 3
            }
        );
        let r = sim.finish();
        assert_eq!(r.activities, 5);
        assert_eq!(r.current_counts.get(&AccountStage::Engaged), Some(&1));
        assert_eq!(r.current_counts.get(&AccountStage::Detected), Some(&1));
        assert_eq!(r.current_counts.get(&AccountStage::Prioritized), Some(&1));
        assert_eq!(r.proposed_counts.get(&AccountStage::Prioritized), Some(&2));
        assert_eq!(r.changed, 1);
        assert_eq!(r.sample[0].account_id, "a");
        assert_eq!(
            (r.sample[0].current_score, r.sample[0].proposed_score),
            (6.0, 120.0)
        );
    }

    /// After a model change the current side keeps the points each
    /// activity was counted, as the live score does; only the proposed side
    /// applies rules.
    #[test]
    fn the_current_side_sums_stored_points() {
        let mut model = ScoringModel::default();
        for rule in &mut model.rules {
            if rule.activity_type == "email_open" {
                rule.points = 40;
            }
        }
        model.decay_half_life_days = 1.0;
        let t = Thresholds {
            engaged: 0.0,
            prioritized: 50.0,
        };
        let mut sim = Simulation::new((model.clone(), t), (model, t), 10, 10);
        // Recorded yesterday under the old model: 3 opens counted 2 each.
        sim.push(
            "a",
            ReplayActivity {
                contact_id: Some("ann"),
                activity_type: "email_open",
                day: 9,
                count: 3,
                counted_points: 6,
                intent: false,
                in_window: true,
            },
        );
        let r = sim.finish();
        assert_eq!(r.changed, 1);
        assert_eq!(
            (r.sample[0].current_score, r.sample[0].proposed_score),
            (3.0, 60.0),
            "both decayed a day at the current half-life"
        );
        assert_eq!(
            (r.sample[0].current_stage, r.sample[0].proposed_stage),
            (AccountStage::Engaged, AccountStage::Prioritized),
            "{r:?}"
        );
    }

    /// A window's replay knows what its people used before it: a first
    /// occurrence before the window leaves the one in it at 0, as it was
    /// scored, so the model in force shows no change (a tester saw one). An
    /// account with activities only before the window is not replayed.
    #[test]
    fn activities_before_the_window_count_as_used() {
        let mut model = ScoringModel::default();
        for rule in &mut model.rules {
            if rule.activity_type == "webinar_attended" {
                rule.first_occurrence_only = true;
            }
        }
        let t = Thresholds {
            engaged: 0.0,
            prioritized: 20.0,
        };
        let mut sim = Simulation::new((model.clone(), t), (model, t), 10, 10);
        let webinar = |day, counted_points, in_window| ReplayActivity {
            contact_id: Some("ann"),
            activity_type: "webinar_attended",
            day,
            count: 1,
            counted_points,
            intent: false,
            in_window,
        };
        sim.push("a", webinar(2, 25, false));
        sim.push("a", webinar(9, 0, true));
        sim.push("only-before", webinar(3, 25, false));
        assert_eq!(
            sim.progress(),
            Progress {
                activities: 1,
                accounts: 1
            }
        );
        let r = sim.finish();
        assert_eq!(r.changed, 0, "{r:?}");
        assert_eq!(r.current_counts, r.proposed_counts);
        assert_eq!(r.current_counts.values().sum::<i64>(), 1);
    }

    #[test]
    fn progress_is_paced_by_tenths_and_by_time() {
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        let mut pace = ProgressPace::new(1000, Duration::from_millis(250), start);
        assert!(!pace.due(50, ms(1)), "under a tenth, too soon");
        assert!(pace.due(100, ms(2)), "a tenth");
        assert!(!pace.due(150, ms(3)));
        // A group crossing several tenths reports once.
        assert!(pace.due(420, ms(4)));
        assert!(!pace.due(450, ms(5)));
        assert!(pace.due(460, ms(254)), "250 ms since the last report");
        assert!(!pace.due(470, ms(300)));
        assert!(pace.due(500, ms(301)), "the fifth tenth");
        assert!(pace.due(990, ms(302)));
        // All tenths reported (the end is reported by the caller): time only.
        assert!(!pace.due(1000, ms(303)));
        assert!(!pace.due(1200, ms(400)), "more than counted: no tenth left");
        assert!(pace.due(1200, ms(552)));
    }

    #[test]
    fn nothing_counted_reports_once_then_by_time() {
        let start = Instant::now();
        let mut pace = ProgressPace::new(0, Duration::from_millis(250), start);
        assert!(pace.due(0, start));
        assert!(!pace.due(7, start + Duration::from_millis(10)));
        assert!(pace.due(9, start + Duration::from_millis(260)));
    }
}
