//! Scoring's own settings sections: `[lifecycle]` (how to reach it, shared
//! with opportunity), `[decay]` (bringing decayed scores to lifecycle),
//! `[fold]` (how the folder batches under load, PostgreSQL) and
//! `[simulation]` (how many replays run at once).

use cascade_chassis::client::{LifecycleClientSettings, LifecycleSection};
use cascade_chassis::error::SettingsError;
use cascade_chassis::settings::{OwnSections, ServiceSettings};
use serde::{Deserialize, Serialize};

/// `[decay]`, `CASCADE_SCORING__DECAY__<KEY>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecaySettings {
    /// How often each replica recomputes the stored scores of tenants whose
    /// model decays when they were computed for an earlier day, and delivers
    /// the lower totals to lifecycle (`decay::follow`). Decay moves scores
    /// once a day, at midnight UTC; the default finds them within the hour.
    /// 0 turns the refresh off.
    pub refresh_interval_ms: u64,
}

impl Default for DecaySettings {
    fn default() -> Self {
        Self {
            refresh_interval_ms: 3_600_000,
        }
    }
}

/// `[fold]`, `CASCADE_SCORING__FOLD__<KEY>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FoldSettings {
    /// The longest the folder rests between folds (it rests twice as long
    /// as the last fold held the writer). Under load a longer rest lets one fold take
    /// in more groups, so each bucket, score and delivery is written once
    /// for all of them; the price is how late lifecycle hears of scores
    /// while ingest saturates the machine. Score reads never wait for it.
    /// 0: fold again as soon as a group commits.
    pub max_rest_ms: u64,
}

impl Default for FoldSettings {
    fn default() -> Self {
        Self { max_rest_ms: 1_000 }
    }
}

/// `[simulation]`, `CASCADE_SCORING__SIMULATION__<KEY>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulationSettings {
    /// How many SimulateScoringModel calls (unary or streamed) one replica
    /// runs at once; more are refused UNAVAILABLE (OVERLOADED) at once. A
    /// replay reads a tenant's whole window, a core and a pooled connection
    /// for seconds per million activities: unbounded, a few callers
    /// clicking "simulate" would take the pool ingest needs. 0: no bound.
    pub max_in_flight: u32,
}

impl Default for SimulationSettings {
    fn default() -> Self {
        Self { max_in_flight: 2 }
    }
}

/// Scoring's sections beside the common ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScoringSections {
    pub lifecycle: LifecycleClientSettings,
    pub decay: DecaySettings,
    pub fold: FoldSettings,
    pub simulation: SimulationSettings,
}

impl OwnSections for ScoringSections {
    const SECTIONS: &'static [&'static str] = &["lifecycle", "decay", "fold", "simulation"];

    fn defaults() -> Self {
        Self::default()
    }

    fn for_tests() -> Self {
        Self {
            lifecycle: LifecycleSection::for_tests().lifecycle,
            // Tests that follow decay set a short interval themselves: a
            // refresh delivering in the middle of another test's assertions
            // would only make it harder to read.
            decay: DecaySettings::default(),
            fold: FoldSettings::default(),
            simulation: SimulationSettings::default(),
        }
    }

    fn validate(settings: &ServiceSettings<Self>) -> Result<(), SettingsError> {
        let lifecycle = LifecycleSection {
            lifecycle: settings.own.lifecycle.clone(),
        };
        LifecycleSection::validate(&settings.clone().with_own(lifecycle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IDENTITY;
    use cascade_chassis::settings::load_from;

    use cascade_chassis::settings::environment_of as env;

    #[test]
    fn decay_and_fold_have_their_own_sections() {
        let settings: ServiceSettings<ScoringSections> =
            load_from(IDENTITY, None, env(&[])).unwrap_or_else(|e| panic!("defaults load: {e}"));
        assert_eq!(settings.own.decay.refresh_interval_ms, 3_600_000);
        assert_eq!(settings.own.fold.max_rest_ms, 1_000);
        assert_eq!(settings.own.simulation.max_in_flight, 2);
        let settings: ServiceSettings<ScoringSections> = load_from(
            IDENTITY,
            None,
            env(&[
                ("CASCADE_SCORING__DECAY__REFRESH_INTERVAL_MS", "60000"),
                ("CASCADE_SCORING__LIFECYCLE__URL", "http://lifecycle:50051"),
                ("CASCADE_SCORING__FOLD__MAX_REST_MS", "250"),
                ("CASCADE_SCORING__SIMULATION__MAX_IN_FLIGHT", "1"),
            ]),
        )
        .unwrap_or_else(|e| panic!("the section loads: {e}"));
        assert_eq!(settings.own.decay.refresh_interval_ms, 60_000);
        assert_eq!(settings.own.fold.max_rest_ms, 250);
        assert_eq!(settings.own.simulation.max_in_flight, 1);
        assert_eq!(settings.own.lifecycle.url, "http://lifecycle:50051");
        let error = load_from::<ScoringSections>(
            IDENTITY,
            None,
            env(&[("CASCADE_SCORING__DECAY__REFRESH_INTERVAL", "1")]),
        )
        .expect_err("an unknown key is refused");
        assert!(error.to_string().contains("refresh_interval"), "{error}");
    }

    #[test]
    fn the_lifecycle_url_is_still_checked() {
        let mut settings =
            ServiceSettings::<ScoringSections>::for_tests(cascade_chassis::db::DatabaseSettings {
                url: "sqlite::memory:".into(),
                max_connections: Some(1),
                acquire_timeout_ms: 1_000,
                run_migrations: true,
                analyze_interval_ms: 0,
            });
        assert!(ScoringSections::validate(&settings).is_ok());
        settings.own.lifecycle.url = "ftp://lifecycle".into();
        let error = ScoringSections::validate(&settings).expect_err("not http");
        assert!(error.to_string().contains("lifecycle.url"), "{error}");
    }
}
