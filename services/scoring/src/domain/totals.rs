//! Decay and totals: per-day buckets, an account's and a contact's score at
//! a day, and what a batch adds to a stored score.

use std::collections::{BTreeMap, BTreeSet};

use super::ScoringModel;

pub use cascade_domain::decay::{day_of, decay_factor};

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

/// Whether a bucket shows its contact engaged: engagement worth points. A
/// type with no rule (or 0 points) is no signal, and a penalty alone is
/// none either; counted, they lowered the account's average.
pub fn engages(bucket: &Bucket) -> bool {
    !bucket.intent && bucket.points > 0
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
        if engages(&bucket) {
            engaged.insert(bucket.contact_id.clone());
        }
        let entry = totals.breakdown.entry(bucket.activity_type).or_default();
        entry.0 += bucket.activities;
        entry.1 += value;
        *totals.per_contact.entry(bucket.contact_id).or_default() += value;
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
    /// Engagement by activity type, as in [`Totals::breakdown`].
    pub breakdown: BTreeMap<String, (i64, f64)>,
    /// Every activity counted, intent ones too.
    pub activities: i64,
    /// The running total of what new activity added (see [`added_total`])
    /// and the day it is at.
    pub added: (f64, i64),
}

/// The running total of the engagement an account's new activity ever
/// added (a penalty lowers it) at `today`: the stored one, decayed as the
/// score decays, plus `added` now. Each delivery to lifecycle carries it,
/// and lifecycle counts its change between two deliveries as earned by a
/// recycled account, whether or not the deliveries between them arrived.
pub fn added_total(stored: (f64, i64), model: &ScoringModel, today: i64, added: f64) -> f64 {
    let (total, day) = stored;
    total * decay_factor(model.decay_half_life_days, day, today) + added
}

/// Activities of a batch as the roll-up sees them: one scored activity, or
/// the sum of a fold's activities of one bucket (the roll-up is linear in
/// points, so both give the same additions).
#[derive(Debug, Clone, Copy)]
pub struct BatchActivity<'a> {
    pub account_id: &'a str,
    pub contact_id: Option<&'a str>,
    pub activity_type: &'a str,
    pub day: i64,
    pub points: i64,
    pub intent: bool,
    /// How many activities: 1, or a fold's count for the bucket.
    pub activities: i64,
}

/// What a batch adds to one account, decayed to today.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccountAddition {
    pub engagement: f64,
    pub intent: f64,
    /// Contact ("" without one) -> engagement points added.
    pub contact_points: BTreeMap<String, f64>,
    /// Contacts engaged by the batch (`engages`: engagement worth points).
    pub engaging: BTreeSet<String>,
    /// Contact -> activity types recorded (intent ones too): what the
    /// delivery tells lifecycle, and whose contact scores are written.
    pub new_types: BTreeMap<String, BTreeSet<String>>,
    /// Activity type -> (activities, points added), engagement only.
    pub breakdown: BTreeMap<String, (i64, f64)>,
    /// Activities added, intent ones too.
    pub activities: i64,
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
            let add = slot(&mut accounts, a.account_id);
            let value = a.points as f64 * decay_factor(model.decay_half_life_days, a.day, today);
            if let Some(contact) = a.contact_id {
                let types = slot(&mut add.new_types, contact);
                if !types.contains(a.activity_type) {
                    types.insert(a.activity_type.to_owned());
                }
            }
            add.activities += a.activities;
            if a.intent {
                add.intent += value;
            } else {
                add.engagement += value;
                *slot(&mut add.contact_points, a.contact_id.unwrap_or_default()) += value;
                let contact = a.contact_id.unwrap_or_default();
                if a.points > 0 && !add.engaging.contains(contact) {
                    add.engaging.insert(contact.to_owned());
                }
                let by_type = slot(&mut add.breakdown, a.activity_type);
                by_type.0 += a.activities;
                by_type.1 += value;
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

/// `map[key]`, inserted as the default when missing. The key is copied only
/// then: a batch names each account, contact and type many times.
fn slot<'m, V: Default>(map: &'m mut BTreeMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key).expect("inserted above when missing")
}

/// An account's score after a batch, from its stored score of the same day:
/// the sum of the same buckets [`totals_of`] would read, without reading
/// them. `previous` is a contact's stored score in this account (0 if
/// none); `was_engaged` tells whether a contact had engagement before.
/// `per_contact` holds the batch's contacts only.
pub fn add_batch(
    current: &StoredScore,
    add: &AccountAddition,
    previous: impl Fn(&str) -> f64,
    was_engaged: impl Fn(&str) -> bool,
) -> Totals {
    let newly_engaged = add.engaging.iter().filter(|c| !was_engaged(c)).count();
    let mut per_contact = BTreeMap::new();
    for contact in add.new_types.keys().chain(add.contact_points.keys()) {
        let added = add.contact_points.get(contact).copied().unwrap_or(0.0);
        per_contact.insert(contact.clone(), previous(contact) + added);
    }
    let mut breakdown = current.breakdown.clone();
    for (activity_type, (activities, points)) in &add.breakdown {
        let by_type = slot(&mut breakdown, activity_type);
        by_type.0 += activities;
        by_type.1 += points;
    }
    Totals {
        engagement: current.engagement + add.engagement,
        intent: current.intent + add.intent,
        engaged_contacts: current
            .engaged_contacts
            .saturating_add(i32::try_from(newly_engaged).unwrap_or(i32::MAX)),
        breakdown,
        per_contact,
        activities: current.activities + add.activities,
    }
}
