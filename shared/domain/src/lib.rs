//! cascade-domain: the vocabulary and rules used by more than one service:
//! stages, customer type, money, activity-type syntax, the stage a score
//! reaches, ids. Plain types and pure functions with no I/O; conversions to the protobuf enums and to the
//! text stored in the database live here so every service agrees on them.

pub mod decay;
pub mod ids;

use cascade_proto::common::v1 as pb;

#[doc(hidden)]
pub use serde as __serde;

/// Generates a plain domain enum with its stored text (`as_str`, `FromStr`)
/// and its protobuf number (`from_proto`, `to_proto`). Services use it for
/// their own enums too, so every enum converts the same way.
#[macro_export]
macro_rules! domain_enum {
    (
        $(#[$meta:meta])*
        $name:ident => $proto:path {
            $($variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($variant,)+
        }

        impl $name {
            /// Every value, in declaration (funnel) order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stored and displayed name, e.g. `PRIORITIZED`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// From the protobuf enum number; `None` for UNSPECIFIED or unknown.
            pub fn from_proto(value: i32) -> Option<Self> {
                type P = $proto;
                match P::try_from(value).ok()? {
                    $(P::$variant => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The protobuf enum number.
            pub fn to_proto(self) -> i32 {
                type P = $proto;
                match self {
                    $($name::$variant => P::$variant as i32,)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::__serde::Serialize for $name {
            fn serialize<S: $crate::__serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> $crate::__serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <String as $crate::__serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(<D::Error as $crate::__serde::de::Error>::custom)
            }
        }

        impl $crate::NamedValue for $name {
            fn name(self) -> &'static str {
                self.as_str()
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::UnknownValue(s.to_owned())),
                }
            }
        }
    };
}

/// A closed set of values known by name: what `domain_enum!` generates.
/// Storage keeps such a value as its name (the chassis's `db::Stored`), so
/// every read gets the typed value and no caller parses text.
pub trait NamedValue:
    Copy + std::fmt::Debug + PartialEq + std::str::FromStr<Err = UnknownValue> + Send + Sync + 'static
{
    /// The stored and displayed name, e.g. `PRIORITIZED`.
    fn name(self) -> &'static str;
}

/// A stored value that names no known variant (a newer schema, or corruption).
#[derive(Debug, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownValue(pub String);

domain_enum! {
    /// Where an account stands in the revenue waterfall, in funnel order.
    AccountStage => pb::AccountStage {
        Targeted = "TARGETED",
        Detected = "DETECTED",
        Engaged = "ENGAGED",
        Prioritized = "PRIORITIZED",
        Qualified = "QUALIFIED",
        Pipeline = "PIPELINE",
        Implement = "IMPLEMENT",
        Expand = "EXPAND",
        Advocate = "ADVOCATE",
        Churned = "CHURNED",
    }
}

domain_enum! {
    /// The commercial relationship with an account.
    CustomerType => pb::CustomerType {
        Prospect = "PROSPECT",
        Customer = "CUSTOMER",
        ReProspect = "RE_PROSPECT",
    }
}

domain_enum! {
    /// What an opportunity sells. UNSPECIFIED on the wire reads as NewBusiness
    /// (`OpportunityKind::from_wire`).
    OpportunityKind => pb::OpportunityKind {
        NewBusiness = "NEW_BUSINESS",
        Renewal = "RENEWAL",
        Upgrade = "UPGRADE",
    }
}

impl OpportunityKind {
    /// The kind a request or event names; UNSPECIFIED (an older caller) is
    /// new business. `None` for a number that names no kind.
    pub fn from_wire(value: i32) -> Option<Self> {
        if value == pb::OpportunityKind::Unspecified as i32 {
            return Some(Self::NewBusiness);
        }
        Self::from_proto(value)
    }

    /// Renewals and upgrades are sold to an account that is a customer now.
    pub fn needs_customer(self) -> bool {
        self != Self::NewBusiness
    }
}

/// Whether an account at `stage` is a customer now (onboarding, live or an
/// advocate): the stages that can be at risk, churn, renew or upgrade.
pub fn is_customer_stage(stage: AccountStage) -> bool {
    matches!(
        stage,
        AccountStage::Implement | AccountStage::Expand | AccountStage::Advocate
    )
}

domain_enum! {
    /// Person-level stage of a contact.
    ContactStage => pb::ContactStage {
        Anonymous = "ANONYMOUS",
        Suspect = "SUSPECT",
        Engaged = "ENGAGED",
        MarketingQualified = "MARKETING_QUALIFIED",
        SalesQualified = "SALES_QUALIFIED",
        Opportunity = "OPPORTUNITY",
        Customer = "CUSTOMER",
        Evangelist = "EVANGELIST",
        Disqualified = "DISQUALIFIED",
        Other = "OTHER",
    }
}

impl ContactStage {
    /// Stages that only people set (the others move by themselves).
    pub fn is_manual(self) -> bool {
        matches!(
            self,
            ContactStage::MarketingQualified
                | ContactStage::SalesQualified
                | ContactStage::Evangelist
                | ContactStage::Disqualified
                | ContactStage::Other
        )
    }
}

/// An amount of money: whole units and nano units of an ISO 4217 currency.
/// Kept as integers so sums are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Money {
    pub currency: [u8; 3],
    /// The amount in nano units (10^-9 of the currency unit).
    pub nanos: i128,
}

const NANOS_PER_UNIT: i128 = 1_000_000_000;

/// The largest amount Cascade accepts, in whole units of any currency (a
/// trillion: above any real deal, and small enough that sums of millions of
/// them stay exact in 64-bit units; see `Money::sum_to_proto`).
pub const MAX_MONEY_UNITS: i64 = 1_000_000_000_000;

impl Money {
    /// From the protobuf message; `Err` names each of its fields that is
    /// wrong (`currency_code`, `units`, `nanos`) with what is wrong with it.
    pub fn from_proto(money: &pb::Money) -> Result<Self, Vec<(&'static str, &'static str)>> {
        let mut wrong = Vec::new();
        let code = money.currency_code.as_bytes();
        if let Some(problem) = currency_code_problem(&money.currency_code) {
            wrong.push(("currency_code", problem));
        }
        if money.nanos.unsigned_abs() >= 1_000_000_000 {
            wrong.push(("nanos", "must be between -999,999,999 and 999,999,999"));
        } else if (money.units > 0 && money.nanos < 0) || (money.units < 0 && money.nanos > 0) {
            wrong.push(("nanos", "must have the same sign as units"));
        }
        let nanos = i128::from(money.units) * NANOS_PER_UNIT + i128::from(money.nanos);
        // The amount's limit, once its nanos are well formed (else the sum
        // means nothing); `units`, where any excess but a nano's lies.
        if wrong.iter().all(|(field, _)| *field != "nanos")
            && nanos.abs() > i128::from(MAX_MONEY_UNITS) * NANOS_PER_UNIT
        {
            wrong.push((
                "units",
                "must be at most 1,000,000,000,000 (a trillion) either way, nanos included",
            ));
        }
        match code {
            [a, b, c] if wrong.is_empty() => Ok(Self {
                currency: [*a, *b, *c],
                nanos,
            }),
            _ => Err(wrong),
        }
    }

    /// At most `MAX_MONEY_UNITS` either way (what one amount may be).
    pub fn within_limit(&self) -> bool {
        self.nanos.abs() <= i128::from(MAX_MONEY_UNITS) * NANOS_PER_UNIT
    }

    /// An amount within `MAX_MONEY_UNITS` as the protobuf message.
    pub fn to_proto(self) -> pb::Money {
        Self::sum_to_proto(self.currency, self.nanos).unwrap_or_else(|| pb::Money {
            currency_code: self.currency_code().to_owned(),
            units: if self.nanos < 0 { i64::MIN } else { i64::MAX },
            nanos: 0,
        })
    }

    /// A sum of amounts as the protobuf message, or `None` when it is beyond
    /// what the message can carry (9.2 * 10^18 units: more than nine million
    /// deals at the largest amount); callers answer OUT_OF_RANGE then rather
    /// than a wrong figure.
    pub fn sum_to_proto(currency: [u8; 3], nanos: i128) -> Option<pb::Money> {
        Some(pb::Money {
            currency_code: std::str::from_utf8(&currency).unwrap_or("XXX").to_owned(),
            units: i64::try_from(nanos / NANOS_PER_UNIT).ok()?,
            nanos: i32::try_from(nanos % NANOS_PER_UNIT).ok()?,
        })
    }

    pub fn currency_code(&self) -> &str {
        std::str::from_utf8(&self.currency).unwrap_or("XXX")
    }
}

/// What is wrong with a currency code, if anything: it must be one of ISO
/// 4217's, in capitals as the standard writes them (a lower-case `usd` is
/// refused rather than guessed at, like every other code Cascade takes).
pub fn currency_code_problem(code: &str) -> Option<&'static str> {
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        Some("must be a three-letter ISO 4217 code, e.g. USD")
    } else if iso_currency::Currency::from_code(code).is_none() {
        Some("is not an ISO 4217 currency code")
    } else {
        None
    }
}

/// The largest batch an RPC accepts: RecordActivities (scoring) and
/// BatchResolveContacts (lifecycle, which scoring calls once per batch) must
/// agree; a tenant's ingest burst must hold at least one.
pub const LARGEST_BATCH: usize = 1000;

/// Longest activity type name.
pub const MAX_ACTIVITY_TYPE: usize = 64;

/// Whether an activity type name is acceptable: 1 to 64 of `a-z 0-9 _ - .`.
/// Scoring's rules and recorded activities, lifecycle's score deliveries and
/// hand-raise settings all name types, and must agree on what a name is.
pub fn valid_activity_type(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_ACTIVITY_TYPE
        && value.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        })
}

/// The stage a score alone reaches, by DESIGN's thresholds: PRIORITIZED at
/// or above the prioritized threshold, ENGAGED above the engaged one,
/// DETECTED with intent and no engagement past the threshold, TARGETED
/// otherwise. Lifecycle moves an account forward to it (never back, and from
/// engagement earned since a recycle); scoring's simulation counts it.
pub fn stage_reached_by_score(
    engagement: f64,
    intent: f64,
    engaged_threshold: f64,
    prioritized_threshold: f64,
) -> AccountStage {
    if engagement >= prioritized_threshold {
        AccountStage::Prioritized
    } else if engagement > engaged_threshold {
        AccountStage::Engaged
    } else if intent > 0.0 {
        AccountStage::Detected
    } else {
        AccountStage::Targeted
    }
}

#[cfg(test)]
mod tests {
    use super::{AccountStage as S, stage_reached_by_score};

    #[test]
    fn a_score_reaches_a_stage_by_the_thresholds() {
        // (engagement, intent, engaged threshold, prioritized threshold)
        let cases = [
            ((0.0, 0.0, 0.0, 100.0), S::Targeted),
            ((0.0, 3.0, 0.0, 100.0), S::Detected),
            ((10.0, 3.0, 10.0, 100.0), S::Detected),
            ((1.0, 0.0, 0.0, 100.0), S::Engaged),
            ((10.5, 0.0, 10.0, 100.0), S::Engaged),
            ((99.9, 5.0, 10.0, 100.0), S::Engaged),
            ((100.0, 0.0, 0.0, 100.0), S::Prioritized),
            ((250.0, 0.0, 10.0, 100.0), S::Prioritized),
            ((-5.0, 0.0, 0.0, 100.0), S::Targeted),
        ];
        for ((engagement, intent, engaged, prioritized), stage) in cases {
            assert_eq!(
                stage_reached_by_score(engagement, intent, engaged, prioritized),
                stage,
                "{engagement}/{intent} against {engaged}/{prioritized}"
            );
        }
    }

    #[test]
    fn activity_type_names_are_short_lowercase_words() {
        use super::valid_activity_type as ok;
        for good in ["email_open", "web-page.visit", "a", "x9", &"a".repeat(64)] {
            assert!(ok(good), "{good:?}");
        }
        for bad in [
            "",
            "Email",
            "email open",
            "é",
            "demo/request",
            &"a".repeat(65),
        ] {
            assert!(!ok(bad), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn enums_round_trip_through_text_and_proto() {
        for stage in AccountStage::ALL {
            assert_eq!(stage.as_str().parse::<AccountStage>().ok(), Some(*stage));
            assert_eq!(AccountStage::from_proto(stage.to_proto()), Some(*stage));
        }
        for stage in ContactStage::ALL {
            assert_eq!(stage.as_str().parse::<ContactStage>().ok(), Some(*stage));
            assert_eq!(ContactStage::from_proto(stage.to_proto()), Some(*stage));
        }
        for kind in CustomerType::ALL {
            assert_eq!(kind.as_str().parse::<CustomerType>().ok(), Some(*kind));
            assert_eq!(CustomerType::from_proto(kind.to_proto()), Some(*kind));
        }
        assert_eq!(AccountStage::from_proto(0), None);
        assert_eq!(AccountStage::from_proto(99), None);
    }

    #[test]
    fn account_stages_are_in_funnel_order() {
        assert!(AccountStage::Targeted < AccountStage::Prioritized);
        assert!(AccountStage::Pipeline < AccountStage::Advocate);
    }

    #[test]
    fn money_checks_currency_and_sign() {
        let ok = pb::Money {
            currency_code: "USD".into(),
            units: 12,
            nanos: 500_000_000,
        };
        let money = Money::from_proto(&ok).expect("valid");
        assert_eq!(money.nanos, 12_500_000_000);
        assert_eq!(money.to_proto(), ok);
        let mixed = pb::Money {
            units: 1,
            nanos: -1,
            ..ok.clone()
        };
        let wrong = |m: &pb::Money| -> Vec<&str> {
            Money::from_proto(m)
                .expect_err("refused")
                .into_iter()
                .map(|(field, _)| field)
                .collect()
        };
        assert_eq!(wrong(&mixed), ["nanos"]);
        let bad_code = pb::Money {
            currency_code: "usd".into(),
            ..ok.clone()
        };
        assert_eq!(wrong(&bad_code), ["currency_code"]);
        // Every wrong field is named, not only the first.
        let all_wrong = pb::Money {
            currency_code: "dollars".into(),
            units: i64::MAX,
            nanos: 1,
        };
        assert_eq!(wrong(&all_wrong), ["currency_code", "units"]);
        let bad_nanos = pb::Money {
            currency_code: "dollars".into(),
            units: i64::MAX,
            nanos: 1_000_000_000,
        };
        assert_eq!(wrong(&bad_nanos), ["currency_code", "nanos"]);
    }

    #[test]
    fn money_has_a_largest_amount_and_sums_are_checked() {
        let units = |units: i64, nanos: i32| pb::Money {
            currency_code: "EUR".into(),
            units,
            nanos,
        };
        assert!(Money::from_proto(&units(MAX_MONEY_UNITS, 0)).is_ok());
        assert!(Money::from_proto(&units(-MAX_MONEY_UNITS, 0)).is_ok());
        assert!(Money::from_proto(&units(MAX_MONEY_UNITS, 1)).is_err());
        assert!(Money::from_proto(&units(i64::MAX, 999_999_999)).is_err());
        assert!(Money::from_proto(&units(i64::MIN, -999_999_999)).is_err());
        // A sum of nine million deals at the largest amount still fits...
        let largest = i128::from(MAX_MONEY_UNITS) * NANOS_PER_UNIT;
        let sum = Money::sum_to_proto(*b"EUR", largest * 9_000_000).expect("fits");
        assert_eq!(sum.units, 9_000_000_000_000_000_000);
        // ...beyond what the message carries, the caller is told.
        assert_eq!(Money::sum_to_proto(*b"EUR", largest * 10_000_000), None);
        assert_eq!(
            Money::sum_to_proto(*b"EUR", -12_500_000_000),
            Some(units(-12, -500_000_000))
        );
    }
}
