//! Erasure (the right to erasure): what an erasure is, when it is complete,
//! and when an account may be erased. Plain values, no I/O.

use cascade_domain::domain_enum;
use cascade_proto::lifecycle::v1 as pb;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::Refusal;

domain_enum! {
    /// What an erasure erases.
    ErasureSubject => pb::ErasureSubjectType {
        Contact = "CONTACT",
        Account = "ACCOUNT",
    }
}

/// The services that erase their own copies after lifecycle has erased its
/// (scoring, opportunity), as ListPendingErasures and ConfirmErasure name
/// them.
pub const ERASING_SERVICES: [&str; 2] = ["scoring", "opportunity"];

/// One erasure and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Erasure {
    pub erasure_id: String,
    pub subject: ErasureSubject,
    pub subject_id: String,
    pub account_id: String,
    /// The erased contacts' ids.
    pub contact_ids: Vec<String>,
    pub actor: String,
    /// When it was asked; lifecycle's part is done in the same transaction.
    pub created_at: DateTime<Utc>,
    pub scoring_done_at: Option<DateTime<Utc>>,
    pub opportunity_done_at: Option<DateTime<Utc>>,
}

impl Erasure {
    /// When the last service finished, once every one has.
    pub fn complete_at(&self) -> Option<DateTime<Utc>> {
        Some(self.scoring_done_at?.max(self.opportunity_done_at?))
    }

    /// When the erasure has settled: `settle` after it was made.
    pub fn settles_at(&self, settle: Duration) -> DateTime<Utc> {
        TimeDelta::from_std(settle)
            .ok()
            .and_then(|settle| self.created_at.checked_add_signed(settle))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// `service` may confirm its part once the erasure has settled. Until
    /// then a replica of it that has not heard of the erasure may still
    /// store the person's data, which the service's second sweep, a settle
    /// after its first, takes (docs/decisions.md). Enforced here too, so a
    /// replica of an older version or with a shorter settle cannot cut it
    /// short. A service that confirmed already may say so again.
    pub fn may_confirm(
        &self,
        service: &str,
        now: DateTime<Utc>,
        settle: Duration,
    ) -> Result<(), Refusal> {
        let confirmed = self
            .steps()
            .iter()
            .any(|(step, done)| *step == service && done.is_some());
        let settled = self.settles_at(settle);
        if confirmed || now >= settled {
            return Ok(());
        }
        Err(Refusal(format!(
            "erasure {} settles until {}, {settle:?} after it was made (lifecycle's \
             erasure.min_settle_ms): confirm after that",
            self.erasure_id,
            settled.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )))
    }

    /// Each service's part: (service, done at), lifecycle first.
    pub fn steps(&self) -> [(&'static str, Option<DateTime<Utc>>); 3] {
        [
            ("lifecycle", Some(self.created_at)),
            ("scoring", self.scoring_done_at),
            ("opportunity", self.opportunity_done_at),
        ]
    }
}

/// An account with open opportunities is erased only when forced: erasing it
/// erases deals in flight, which a person should decide knowingly.
pub fn may_erase_account(open_opportunities: u32, force: bool) -> Result<(), Refusal> {
    if open_opportunities > 0 && !force {
        return Err(Refusal(format!(
            "the account has {open_opportunities} open opportunit{}; close {} or set force to \
             erase {} with the account",
            if open_opportunities == 1 { "y" } else { "ies" },
            if open_opportunities == 1 {
                "it"
            } else {
                "them"
            },
            if open_opportunities == 1 {
                "it"
            } else {
                "them"
            },
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).expect("time")
    }

    fn erasure(scoring: Option<i64>, opportunity: Option<i64>) -> Erasure {
        Erasure {
            erasure_id: "e1".into(),
            subject: ErasureSubject::Contact,
            subject_id: "c1".into(),
            account_id: "a1".into(),
            contact_ids: vec!["c1".into()],
            actor: "dpo".into(),
            created_at: at(1_000),
            scoring_done_at: scoring.map(at),
            opportunity_done_at: opportunity.map(at),
        }
    }

    #[test]
    fn complete_when_every_service_has_erased_its_part() {
        let cases = [
            (None, None, None),
            (Some(2_000), None, None),
            (None, Some(3_000), None),
            (Some(2_000), Some(3_000), Some(3_000)),
            (Some(4_000), Some(3_000), Some(4_000)),
        ];
        for (scoring, opportunity, complete) in cases {
            assert_eq!(
                erasure(scoring, opportunity).complete_at(),
                complete.map(at),
                "scoring {scoring:?}, opportunity {opportunity:?}"
            );
        }
        let steps = erasure(Some(2_000), None).steps();
        assert_eq!(
            steps,
            [
                ("lifecycle", Some(at(1_000))),
                ("scoring", Some(at(2_000))),
                ("opportunity", None)
            ]
        );
    }

    #[test]
    fn a_service_confirms_once_the_erasure_settled() {
        // Made at 1 s; settles 2 s after.
        let settle = Duration::from_secs(2);
        let pending = erasure(None, None);
        assert_eq!(pending.settles_at(settle), at(3_000));
        let refused = pending
            .may_confirm("scoring", at(2_999), settle)
            .expect_err("not settled yet");
        assert!(
            refused.0.contains("settles until 1970-01-01T00:00:03.000Z"),
            "{refused:?}"
        );
        assert!(refused.0.contains("erasure.min_settle_ms"), "{refused:?}");
        assert_eq!(pending.may_confirm("scoring", at(3_000), settle), Ok(()));
        assert_eq!(
            pending.may_confirm("opportunity", at(1_000), Duration::ZERO),
            Ok(())
        );
        // A repeated confirmation of a service that is done is taken.
        let scoring_done = erasure(Some(3_500), None);
        assert_eq!(
            scoring_done.may_confirm("scoring", at(1_500), settle),
            Ok(())
        );
        assert!(
            scoring_done
                .may_confirm("opportunity", at(1_500), settle)
                .is_err()
        );
        assert_eq!(
            pending.settles_at(Duration::MAX),
            DateTime::<Utc>::MAX_UTC,
            "a settle beyond the calendar never ends"
        );
    }

    #[test]
    fn an_account_with_open_deals_is_erased_only_when_forced() {
        assert_eq!(may_erase_account(0, false), Ok(()));
        assert_eq!(may_erase_account(0, true), Ok(()));
        assert_eq!(may_erase_account(2, true), Ok(()));
        assert_eq!(
            may_erase_account(1, false),
            Err(Refusal(
                "the account has 1 open opportunity; close it or set force to erase it with the \
                 account"
                    .into()
            ))
        );
        assert!(
            may_erase_account(3, false)
                .expect_err("three open deals")
                .0
                .starts_with("the account has 3 open opportunities")
        );
    }
}
