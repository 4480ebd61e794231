//! Lifecycle's own settings sections: `[cache]`, what each replica keeps in
//! memory, `[erasure]`, when a service may confirm its part of one, and
//! `[webhook]`, where tenants' webhooks may point.

use cascade_chassis::settings::OwnSections;
use serde::{Deserialize, Serialize};

/// `[cache]`, `CASCADE_LIFECYCLE__CACHE__<KEY>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// How many accounts each replica keeps for GetAccount (`storage::cache`;
    /// about 1 KiB each). On PostgreSQL the replica hears other replicas'
    /// writes through LISTEN/NOTIFY and answers from memory only while it
    /// hears them; a connection pooler in transaction mode cannot carry
    /// LISTEN, so turn the cache off behind one. 0 turns it off.
    pub accounts: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self { accounts: 10_000 }
    }
}

/// `[erasure]`, `CASCADE_LIFECYCLE__ERASURE__<KEY>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureSettings {
    /// ConfirmErasure is refused (FAILED_PRECONDITION, `ERASURE_SETTLING`)
    /// until this long after the erasure was made, so every replica of
    /// scoring and opportunity hears of it while it is pending, whatever
    /// their own `lifecycle.erasure_settle_ms` or version says. Set it to
    /// at most theirs (the same 5 min by default); 0 turns the check off.
    pub min_settle_ms: u64,
}

impl Default for ErasureSettings {
    fn default() -> Self {
        Self {
            min_settle_ms: 300_000,
        }
    }
}

/// `[webhook]`, `CASCADE_LIFECYCLE__WEBHOOK__<KEY>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Whether a tenant's webhook may reach loopback, private and
    /// link-local addresses (`crate::webhook`). Off by default: a webhook
    /// URL is a tenant admin's input, called from inside the deployment.
    /// Turn it on to deliver to a receiver inside your own network.
    pub allow_private_addresses: bool,
}

/// Lifecycle's sections beside the common ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LifecycleSections {
    pub cache: CacheSettings,
    pub erasure: ErasureSettings,
    #[serde(default)]
    pub webhook: WebhookSettings,
}

impl OwnSections for LifecycleSections {
    const SECTIONS: &'static [&'static str] = &["cache", "erasure", "webhook"];

    fn defaults() -> Self {
        Self::default()
    }

    /// As the consumers' test settle (`LifecycleClientSettings::for_tests`);
    /// webhooks may reach the tests' receivers on 127.0.0.1.
    fn for_tests() -> Self {
        Self {
            erasure: ErasureSettings {
                min_settle_ms: 2_000,
            },
            webhook: WebhookSettings {
                allow_private_addresses: true,
            },
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IDENTITY;
    use cascade_chassis::settings::{ServiceSettings, load_from};

    use cascade_chassis::settings::environment_of as env;

    #[test]
    fn the_cache_has_its_own_section() {
        let settings: ServiceSettings<LifecycleSections> =
            load_from(IDENTITY, None, env(&[])).unwrap_or_else(|e| panic!("defaults load: {e}"));
        assert_eq!(settings.own.cache.accounts, 10_000);
        let settings: ServiceSettings<LifecycleSections> = load_from(
            IDENTITY,
            None,
            env(&[("CASCADE_LIFECYCLE__CACHE__ACCOUNTS", "0")]),
        )
        .unwrap_or_else(|e| panic!("the section loads: {e}"));
        assert_eq!(settings.own.cache.accounts, 0);
        let error = load_from::<LifecycleSections>(
            IDENTITY,
            None,
            env(&[("CASCADE_LIFECYCLE__CACHE__ACCOUNT", "1")]),
        )
        .expect_err("an unknown key is refused");
        assert!(error.to_string().contains("account"), "{error}");
        let error = load_from::<LifecycleSections>(
            IDENTITY,
            None,
            env(&[("CASCADE_LIFECYCLE__CACHE__ACCOUNTS", "many")]),
        )
        .expect_err("not a number");
        assert!(error.to_string().contains("accounts"), "{error}");
    }

    #[test]
    fn the_erasure_settle_has_its_own_section() {
        let settings: ServiceSettings<LifecycleSections> =
            load_from(IDENTITY, None, env(&[])).unwrap_or_else(|e| panic!("defaults load: {e}"));
        assert_eq!(settings.own.erasure.min_settle_ms, 300_000);
        let settings: ServiceSettings<LifecycleSections> = load_from(
            IDENTITY,
            None,
            env(&[("CASCADE_LIFECYCLE__ERASURE__MIN_SETTLE_MS", "2000")]),
        )
        .unwrap_or_else(|e| panic!("the section loads: {e}"));
        assert_eq!(settings.own.erasure.min_settle_ms, 2_000);
        assert_eq!(LifecycleSections::for_tests().erasure.min_settle_ms, 2_000);
    }

    #[test]
    fn webhooks_reach_public_addresses_unless_allowed() {
        let settings: ServiceSettings<LifecycleSections> =
            load_from(IDENTITY, None, env(&[])).unwrap_or_else(|e| panic!("defaults load: {e}"));
        assert!(!settings.own.webhook.allow_private_addresses);
        let settings: ServiceSettings<LifecycleSections> = load_from(
            IDENTITY,
            None,
            env(&[(
                "CASCADE_LIFECYCLE__WEBHOOK__ALLOW_PRIVATE_ADDRESSES",
                "true",
            )]),
        )
        .unwrap_or_else(|e| panic!("the section loads: {e}"));
        assert!(settings.own.webhook.allow_private_addresses);
    }
}
