//! Decay in whole UTC days: scoring decays points with it, and lifecycle
//! decays a recycled account's score baseline alike, so the engagement
//! earned since a recycle is what was earned, not less the old points'
//! decay.

/// The UTC day number (days since 1970-01-01) of a time in milliseconds.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// The share of points of `from_day` left at `today`: halves every
/// `half_life_days` (0: no decay), counted in whole UTC days (points of the
/// same day decay together, so a score changes only at midnight).
pub fn decay_factor(half_life_days: f64, from_day: i64, today: i64) -> f64 {
    if half_life_days <= 0.0 {
        return 1.0;
    }
    let age = (today - from_day).max(0) as f64;
    0.5_f64.powf(age / half_life_days)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_per_half_life_and_never_grows() {
        assert_eq!(decay_factor(30.0, 100, 160), 0.25);
        assert_eq!(decay_factor(0.0, 100, 160), 1.0);
        assert_eq!(
            decay_factor(30.0, 160, 100),
            1.0,
            "a later day does not grow"
        );
        assert_eq!(day_of(-1), -1);
        assert_eq!(day_of(86_400_000), 1);
    }
}
