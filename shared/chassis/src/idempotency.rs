//! Idempotent creates: a `request_id` stands for the request it first came
//! with. A create stores, beside the request id, a digest of what it asked;
//! a later request with the same id is a retry only if it asks the same.
//! Otherwise it is refused: answering it with the first request's record
//! would drop its own content without a word (a client reusing one id for
//! every create would see each "created" and keep only the first).

use prost::Message;
use sha2::{Digest, Sha256};

use crate::ServiceError;

/// A caller's request id with the digest of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    pub id: String,
    pub digest: String,
}

impl RequestKey {
    /// `id` (when the caller sent one) for the request `canonical` stands for.
    pub fn of(id: Option<String>, canonical: &impl Message) -> Option<Self> {
        id.map(|id| Self {
            id,
            digest: digest(canonical),
        })
    }

    /// Whether a record made under this key's id, with `stored` as its
    /// digest, answers this request. A record made before digests were kept
    /// (`None`) answers any.
    pub fn matches(&self, stored: Option<&str>) -> bool {
        stored.is_none_or(|stored| stored == self.digest)
    }

    /// `Ok` when a record made under this key's id, with digest `stored`,
    /// answers this request; else the refusal, naming `request_id`.
    pub fn check(&self, stored: Option<&str>, resource: &str) -> Result<(), ServiceError> {
        if self.matches(stored) {
            Ok(())
        } else {
            Err(reuse_refusal(resource))
        }
    }
}

/// A reused request id refused: INVALID_ARGUMENT naming `request_id`.
pub fn reuse_refusal(resource: &str) -> ServiceError {
    ServiceError::invalid("request_id", reuse_reason(resource))
}

/// Why a reused request id is refused (a batch item's violation says the same).
pub fn reuse_reason(resource: &str) -> String {
    format!(
        "was used before for a different {resource}: a retry must repeat its request as it was; \
         a new {resource} needs a new request_id"
    )
}

/// Hex SHA-256 of `canonical`'s protobuf encoding. Callers build it from what
/// the create reads, normalized, without the request id. Fields left at their
/// default are not encoded, so a field added to the message later leaves the
/// digests of requests that do not set it as they were.
pub fn digest(canonical: &impl Message) -> String {
    hex::encode(Sha256::digest(canonical.encode_to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_proto::lifecycle::v1 as pb;

    fn account(name: &str, domain: &str) -> pb::Account {
        pb::Account {
            name: name.into(),
            domain: domain.into(),
            ..Default::default()
        }
    }

    fn key(canonical: &pb::Account) -> RequestKey {
        RequestKey::of(Some("r-1".into()), canonical).expect("an id was given")
    }

    #[test]
    fn the_same_request_matches_and_another_does_not() {
        let first = key(&account("Acme", "acme.com"));
        assert_eq!(first.digest.len(), 64, "hex SHA-256");
        assert!(first.matches(Some(&key(&account("Acme", "acme.com")).digest)));
        assert!(!first.matches(Some(&key(&account("Acme", "acme.org")).digest)));
        assert!(!first.matches(Some(&key(&account("Acme Inc", "acme.com")).digest)));
    }

    #[test]
    fn a_record_made_before_digests_answers_any_request() {
        assert!(key(&account("Acme", "acme.com")).matches(None));
    }

    #[test]
    fn no_id_no_key() {
        assert_eq!(RequestKey::of(None, &account("Acme", "acme.com")), None);
    }

    #[test]
    fn the_refusal_names_the_field_and_the_way_out() {
        let refusal = key(&account("Acme", "acme.com"))
            .check(Some("another digest"), "account")
            .expect_err("a different request");
        let ServiceError::InvalidArgument(violations) = refusal else {
            panic!("not INVALID_ARGUMENT: {refusal:?}");
        };
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "request_id");
        assert!(
            violations[0].description.contains("different account")
                && violations[0].description.contains("new request_id"),
            "{}",
            violations[0].description
        );
    }

    /// `pb::Account` as a later version might define it: one more field.
    #[derive(Clone, PartialEq, prost::Message)]
    struct AccountWithAField {
        #[prost(string, tag = "2")]
        name: String,
        #[prost(string, tag = "3")]
        domain: String,
        #[prost(string, tag = "99")]
        added_later: String,
    }

    #[test]
    fn a_field_added_later_leaves_the_digests_of_requests_without_it() {
        let now = account("Acme", "acme.com");
        let later = AccountWithAField {
            name: "Acme".into(),
            domain: "acme.com".into(),
            added_later: String::new(),
        };
        assert_eq!(digest(&now), digest(&later));
        let set = AccountWithAField {
            added_later: "x".into(),
            ..later
        };
        assert_ne!(digest(&now), digest(&set));
        // SHA-256 of the bytes 12 04 "Acme" 1a 08 "acme.com" (fields 2 and
        // 3), computed apart from this code: a stored digest never changes.
        assert_eq!(
            digest(&now),
            "9de9d86dd68f2ed021a8470684020f806d457dba8d76e4235b91b290b591b339"
        );
    }
}
