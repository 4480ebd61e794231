//! Contacts no longer at the company (lifecycle's DeactivateContact) and
//! what scores do about them and about decay, as plain functions.
//!
//! An inactive contact's activities, buckets and ledger lines stay stored
//! (history is kept), but its engagement stops counting toward its account:
//! account totals are computed from the buckets of the account's other
//! contacts (storage leaves the inactive contacts' buckets out of every
//! account read, `storage::scores::counted_contacts`). Its new activities
//! are refused at ingest. Reactivation counts its past engagement again.

use super::{ScoringModel, StoredScore, Totals};

/// Whether a contact change with id `incoming` is later than the change
/// applied last for the contact (`applied`). Lifecycle's change ids are
/// UUIDv7, which sort by creation time, so a change another replica already
/// followed with a later one is recognised as older and ignored.
pub fn change_is_later(applied: Option<&str>, incoming: &str) -> bool {
    applied.is_none_or(|applied| incoming > applied)
}

/// Stored scores computed for a day before this one must be recomputed
/// before they are used at `today`: with decay, those of any earlier day
/// (they miss a day's decay); without, only those a model change marked
/// stale (day -1).
pub fn recompute_before(model: &ScoringModel, today: i64) -> i64 {
    if model.decays() { today } else { 0 }
}

/// Whether totals recomputed for a later day (decay) or without a contact
/// differ from the stored ones, so lifecycle must be told.
pub fn totals_changed(stored: &StoredScore, new: &Totals) -> bool {
    stored.engagement != new.engagement
        || stored.intent != new.intent
        || stored.engaged_contacts != new.engaged_contacts
}

/// Why an activity naming an inactive contact is refused.
pub const INACTIVE_CONTACT: &str = "names a contact that is no longer at the company (DeactivateContact); its activities are not recorded until ReactivateContact";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_later_change_applies() {
        let early = "0192f000-0000-7000-8000-000000000001";
        let late = "0192f000-0001-7000-8000-000000000000";
        let cases = [
            (None, early, true),
            (Some(early), late, true),
            (Some(late), early, false),
            // The same change again (a retry): already applied.
            (Some(early), early, false),
        ];
        for (applied, incoming, later) in cases {
            assert_eq!(
                change_is_later(applied, incoming),
                later,
                "{applied:?} then {incoming}"
            );
        }
    }

    #[test]
    fn stale_scores_are_those_of_an_earlier_day_with_decay_only() {
        let decaying = ScoringModel {
            decay_half_life_days: 7.0,
            ..ScoringModel::default()
        };
        let flat = ScoringModel::default();
        let today = 20_000;
        // (model, computed day, stale)
        let cases = [
            (&decaying, today, false),
            (&decaying, today - 1, true),
            (&decaying, -1, true),
            (&flat, today - 1, false),
            (&flat, -1, true),
            // A later day (a replica past midnight already): not stale.
            (&decaying, today + 1, false),
        ];
        for (model, day, stale) in cases {
            assert_eq!(
                day < recompute_before(model, today),
                stale,
                "{} {day}",
                model.decay_half_life_days
            );
        }
    }

    #[test]
    fn lifecycle_is_told_when_a_total_moved() {
        let stored = StoredScore {
            engagement: 100.0,
            intent: 10.0,
            engaged_contacts: 2,
            computed_day: 20_000,
            ..StoredScore::default()
        };
        let totals = |engagement, intent, engaged_contacts| Totals {
            engagement,
            intent,
            engaged_contacts,
            ..Totals::default()
        };
        let cases = [
            (totals(100.0, 10.0, 2), false),
            (totals(50.0, 10.0, 2), true),
            (totals(100.0, 5.0, 2), true),
            (totals(100.0, 10.0, 1), true),
        ];
        for (new, changed) in cases {
            assert_eq!(totals_changed(&stored, &new), changed, "{new:?}");
        }
    }
}
