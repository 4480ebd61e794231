//! Opportunity's own settings sections: `[lifecycle]` (how to reach it,
//! shared with scoring) and `[contracts]` (telling lifecycle when customers'
//! contracts have ended).

use cascade_chassis::client::{LifecycleClientSettings, LifecycleSection};
use cascade_chassis::error::SettingsError;
use cascade_chassis::settings::{OwnSections, ServiceSettings};
use serde::{Deserialize, Serialize};

/// `[contracts]`, `CASCADE_OPPORTUNITY__CONTRACTS__<KEY>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractsSettings {
    /// How often each replica looks for accounts whose contracts have ended
    /// and tells lifecycle (CONTRACTS_ENDED, once per won term). A term
    /// ends at midnight UTC after its last day; the default tells lifecycle
    /// within the minute.
    pub check_interval_ms: u64,
}

impl Default for ContractsSettings {
    fn default() -> Self {
        Self {
            check_interval_ms: 60_000,
        }
    }
}

/// Opportunity's sections beside the common ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpportunitySections {
    pub lifecycle: LifecycleClientSettings,
    pub contracts: ContractsSettings,
}

impl OwnSections for OpportunitySections {
    const SECTIONS: &'static [&'static str] = &["lifecycle", "contracts"];

    fn defaults() -> Self {
        Self::default()
    }

    fn for_tests() -> Self {
        Self {
            lifecycle: LifecycleSection::for_tests().lifecycle,
            // Tests see an end reported soon after the win that made it due.
            contracts: ContractsSettings {
                check_interval_ms: 100,
            },
        }
    }

    fn validate(settings: &ServiceSettings<Self>) -> Result<(), SettingsError> {
        if settings.own.contracts.check_interval_ms == 0 {
            return Err(SettingsError::new(
                "contracts.check_interval_ms: must be greater than 0",
            ));
        }
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

    fn load(pairs: &[(&str, &str)]) -> Result<ServiceSettings<OpportunitySections>, SettingsError> {
        let environment = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        load_from(IDENTITY, None, Some(environment))
    }

    #[test]
    fn contracts_have_their_own_section() {
        let defaults = load(&[]).unwrap_or_else(|e| panic!("defaults load: {e}"));
        assert_eq!(defaults.own.contracts.check_interval_ms, 60_000);
        let settings = load(&[
            ("CASCADE_OPPORTUNITY__CONTRACTS__CHECK_INTERVAL_MS", "5000"),
            (
                "CASCADE_OPPORTUNITY__LIFECYCLE__URL",
                "http://lifecycle:50051",
            ),
        ])
        .unwrap_or_else(|e| panic!("the section loads: {e}"));
        assert_eq!(settings.own.contracts.check_interval_ms, 5_000);
        assert_eq!(settings.own.lifecycle.url, "http://lifecycle:50051");
        let error = load(&[("CASCADE_OPPORTUNITY__CONTRACTS__INTERVAL_MS", "1")])
            .expect_err("an unknown key is refused");
        assert!(error.to_string().contains("interval_ms"), "{error}");
    }

    #[test]
    fn a_zero_interval_and_a_bad_lifecycle_url_stop_start_up() {
        let mut settings = load(&[]).unwrap_or_else(|e| panic!("defaults load: {e}"));
        assert!(OpportunitySections::validate(&settings).is_ok());
        settings.own.contracts.check_interval_ms = 0;
        let error = OpportunitySections::validate(&settings).expect_err("0");
        assert!(
            error.to_string().contains("contracts.check_interval_ms"),
            "{error}"
        );
        settings.own.contracts.check_interval_ms = 1;
        settings.own.lifecycle.url = "ftp://lifecycle".into();
        let error = OpportunitySections::validate(&settings).expect_err("not http");
        assert!(error.to_string().contains("lifecycle.url"), "{error}");
    }
}
