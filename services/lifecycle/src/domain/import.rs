//! Bulk import (BatchCreateAccounts, BatchCreateContacts): which items of a
//! batch are new, which were created before (a repeated import), and which
//! are refused, decided over a snapshot of the keys the tenant already holds.

use std::collections::HashMap;

use cascade_chassis::idempotency::{RequestKey, reuse_reason};

/// The unique keys of one item of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportKeys<'a> {
    /// The item's place in the request (from 0): refusals name earlier
    /// items by it, and items refused before this decision have one too.
    pub position: usize,
    /// The request id, with the digest of what the item asks.
    pub request: Option<&'a RequestKey>,
    pub external_id: Option<&'a str>,
    /// The record's natural unique key: an account's domain, a contact's email.
    pub natural: Option<&'a str>,
}

/// Who holds each key in the tenant now (key to record id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders {
    pub by_request: HashMap<String, String>,
    /// What the create under each request id asked (records made before
    /// digests were kept have none).
    pub request_digests: HashMap<String, String>,
    pub by_external: HashMap<String, String>,
    pub by_natural: HashMap<String, String>,
}

/// How the fields of an item are named in violations.
#[derive(Debug, Clone, Copy)]
pub struct ImportFields {
    /// "account" or "contact".
    pub resource: &'static str,
    /// The field of the external id (`account.external_id`).
    pub external_id: &'static str,
    /// The field of the natural key (`account.domain`).
    pub natural: &'static str,
    /// The natural key in words ("domain").
    pub natural_name: &'static str,
}

/// What to do with one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportDecision {
    /// Create it.
    Create,
    /// It was created before (same request id or external id): this record.
    Existing(String),
    /// Refuse it: the fields at fault and why.
    Rejected(Vec<(String, String)>),
}

/// Decides every item in order. An item whose request id or external id a
/// record already holds is that record (a repeated import creates nothing,
/// even if other fields changed since: updates are UpdateAccount's job),
/// except that a request id made a record for a different request refuses
/// the item (`cascade_chassis::idempotency`). An item whose natural key
/// another record holds is refused, as is an item repeating a key of an
/// earlier item of the batch that is not refused, whether that one is
/// created or found: so a retry of the batch answers each item as the first
/// call did (a repeat was refused then, and is refused again, rather than
/// taken for the record its earlier twin made).
pub fn decide_import(
    items: &[ImportKeys<'_>],
    holders: &Holders,
    fields: ImportFields,
) -> Vec<ImportDecision> {
    // Keys of earlier items of this batch that are not refused: the item's
    // place in the request by key. Natural keys only of those to be created (a found
    // record's is in `holders`).
    let mut batch_request: HashMap<&str, usize> = HashMap::new();
    let mut batch_external: HashMap<&str, usize> = HashMap::new();
    let mut batch_natural: HashMap<&str, usize> = HashMap::new();
    let mut decisions = Vec::with_capacity(items.len());
    for item in items {
        let i = item.position;
        let request_id = item.request.map(|key| key.id.as_str());
        // A request id a record holds for another request: that says most.
        let held_request = item
            .request
            .and_then(|key| holders.by_request.get(&key.id).map(|id| (key, id)));
        if let Some((key, _)) = held_request
            && !key.matches(holders.request_digests.get(&key.id).map(String::as_str))
        {
            decisions.push(ImportDecision::Rejected(vec![(
                "request_id".to_owned(),
                reuse_reason(fields.resource),
            )]));
            continue;
        }
        let repeated =
            |key: Option<&str>, seen: &HashMap<&str, usize>| key.and_then(|k| seen.get(k).copied());
        let mut refusals = Vec::new();
        if let Some(earlier) = repeated(request_id, &batch_request) {
            refusals.push((
                "request_id".to_owned(),
                format!("repeats the request_id of item {earlier} of this batch"),
            ));
        }
        if let Some(earlier) = repeated(item.external_id, &batch_external) {
            refusals.push((
                fields.external_id.to_owned(),
                format!("repeats the external id of item {earlier} of this batch"),
            ));
        }
        if !refusals.is_empty() {
            decisions.push(ImportDecision::Rejected(refusals));
            continue;
        }
        let found = held_request
            .map(|(_, id)| id)
            .or_else(|| item.external_id.and_then(|k| holders.by_external.get(k)));
        if let Some(id) = found {
            if let Some(k) = request_id {
                batch_request.insert(k, i);
            }
            if let Some(k) = item.external_id {
                batch_external.insert(k, i);
            }
            decisions.push(ImportDecision::Existing(id.clone()));
            continue;
        }
        if let Some(natural) = item.natural {
            if holders.by_natural.contains_key(natural) {
                refusals.push((
                    fields.natural.to_owned(),
                    format!(
                        "another {} of this tenant already has the {} {natural}",
                        fields.resource, fields.natural_name
                    ),
                ));
            } else if let Some(earlier) = batch_natural.get(natural) {
                refusals.push((
                    fields.natural.to_owned(),
                    format!(
                        "repeats the {} of item {earlier} of this batch",
                        fields.natural_name
                    ),
                ));
            }
        }
        if !refusals.is_empty() {
            decisions.push(ImportDecision::Rejected(refusals));
            continue;
        }
        if let Some(k) = request_id {
            batch_request.insert(k, i);
        }
        if let Some(k) = item.external_id {
            batch_external.insert(k, i);
        }
        if let Some(k) = item.natural {
            batch_natural.insert(k, i);
        }
        decisions.push(ImportDecision::Create);
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: ImportFields = ImportFields {
        resource: "account",
        external_id: "account.external_id",
        natural: "account.domain",
        natural_name: "domain",
    };

    fn keys<'a>(
        request: Option<&'a RequestKey>,
        external_id: Option<&'a str>,
        natural: Option<&'a str>,
    ) -> ImportKeys<'a> {
        ImportKeys {
            position: 0,
            request,
            external_id,
            natural,
        }
    }

    /// The items as a request of only these would number them.
    fn in_order<const N: usize>(mut items: [ImportKeys<'_>; N]) -> [ImportKeys<'_>; N] {
        for (i, item) in items.iter_mut().enumerate() {
            item.position = i;
        }
        items
    }

    /// A request id with a stand-in digest.
    fn request(id: &str, digest: &str) -> RequestKey {
        RequestKey {
            id: id.to_owned(),
            digest: digest.to_owned(),
        }
    }

    fn holders(
        request: &[(&str, &str)],
        external: &[(&str, &str)],
        natural: &[(&str, &str)],
    ) -> Holders {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        Holders {
            by_request: map(request),
            request_digests: HashMap::new(),
            by_external: map(external),
            by_natural: map(natural),
        }
    }

    fn rejected(field: &str, description: &str) -> ImportDecision {
        ImportDecision::Rejected(vec![(field.to_owned(), description.to_owned())])
    }

    #[test]
    fn every_case_of_an_item_in_a_table() {
        use ImportDecision::{Create, Existing};
        let mut held = holders(
            &[("r-old", "a1"), ("r-before-digests", "a4")],
            &[("crm-1", "a2")],
            &[("taken.example", "a3"), ("crm1.example", "a2")],
        );
        held.request_digests
            .insert("r-old".to_owned(), "asked-then".to_owned());
        let (r_old, r_old_other) = (request("r-old", "asked-then"), request("r-old", "other"));
        let r_before = request("r-before-digests", "anything");
        let cases: Vec<(&str, ImportKeys, ImportDecision)> = vec![
            ("nothing held: created", keys(None, None, None), Create),
            (
                "a new external id: created",
                keys(None, Some("crm-9"), Some("new.example")),
                Create,
            ),
            (
                "a known request id, the same request: the record it made",
                keys(Some(&r_old), None, None),
                Existing("a1".into()),
            ),
            (
                "a known request id, another request: refused",
                keys(Some(&r_old_other), None, None),
                rejected("request_id", &reuse_reason("account")),
            ),
            (
                "a request id of a record made before digests: the record",
                keys(Some(&r_before), None, None),
                Existing("a4".into()),
            ),
            (
                "a known external id: the record",
                keys(None, Some("crm-1"), None),
                Existing("a2".into()),
            ),
            (
                "a known external id with its own domain: the record, not a domain clash",
                keys(None, Some("crm-1"), Some("crm1.example")),
                Existing("a2".into()),
            ),
            (
                "the request id wins over the external id",
                keys(Some(&r_old), Some("crm-1"), None),
                Existing("a1".into()),
            ),
            (
                "a request id reused for another request is refused whatever the external id",
                keys(Some(&r_old_other), Some("crm-1"), None),
                rejected("request_id", &reuse_reason("account")),
            ),
            (
                "a domain another account has",
                keys(None, Some("crm-8"), Some("taken.example")),
                rejected(
                    "account.domain",
                    "another account of this tenant already has the domain taken.example",
                ),
            ),
        ];
        for (what, item, expected) in cases {
            let decided = decide_import(&[item], &held, FIELDS);
            assert_eq!(decided, vec![expected], "{what}");
        }
    }

    #[test]
    fn repeats_within_a_batch_are_refused_after_the_first() {
        let r1 = request("r1", "asked");
        let r2 = request("r2", "asked");
        let items = in_order([
            keys(Some(&r1), Some("crm-1"), Some("a.example")),
            keys(Some(&r1), None, None),
            keys(None, Some("crm-1"), None),
            keys(None, None, Some("a.example")),
            keys(Some(&r2), Some("crm-2"), Some("b.example")),
        ]);
        let decided = decide_import(&items, &Holders::default(), FIELDS);
        assert_eq!(
            decided,
            vec![
                ImportDecision::Create,
                rejected(
                    "request_id",
                    "repeats the request_id of item 0 of this batch"
                ),
                rejected(
                    "account.external_id",
                    "repeats the external id of item 0 of this batch"
                ),
                rejected(
                    "account.domain",
                    "repeats the domain of item 0 of this batch"
                ),
                ImportDecision::Create,
            ]
        );
    }

    /// A retry of a batch whose first call created item 0 and refused its
    /// twin: item 0 is now found, and the twin is refused again, not taken
    /// for the record item 0 made.
    #[test]
    fn a_retried_batch_answers_each_item_as_the_first_call_did() {
        let r1 = request("r1", "asked");
        let items = in_order([
            keys(Some(&r1), Some("crm-1"), Some("a.example")),
            keys(None, Some("crm-1"), Some("b.example")),
            keys(Some(&r1), None, None),
        ]);
        let first = decide_import(&items, &Holders::default(), FIELDS);
        let mut held = holders(&[("r1", "a1")], &[("crm-1", "a1")], &[("a.example", "a1")]);
        held.request_digests
            .insert("r1".to_owned(), "asked".to_owned());
        let retried = decide_import(&items, &held, FIELDS);
        assert_eq!(first[0], ImportDecision::Create);
        assert_eq!(retried[0], ImportDecision::Existing("a1".into()));
        assert_eq!(first[1..], retried[1..]);
        assert_eq!(
            retried[1],
            rejected(
                "account.external_id",
                "repeats the external id of item 0 of this batch"
            )
        );
    }

    #[test]
    fn a_refused_item_takes_no_key_from_later_ones() {
        let held = holders(&[], &[], &[("taken.example", "a3")]);
        let items = in_order([
            keys(None, Some("crm-1"), Some("taken.example")),
            keys(None, Some("crm-1"), Some("free.example")),
        ]);
        let decided = decide_import(&items, &held, FIELDS);
        assert!(matches!(decided[0], ImportDecision::Rejected(_)));
        assert_eq!(decided[1], ImportDecision::Create);
    }

    /// Items refused before the decision (malformed) are not among `items`:
    /// a repeat still names its twin by the twin's place in the request.
    #[test]
    fn repeats_name_the_earlier_item_by_its_place_in_the_request() {
        let items = [
            ImportKeys {
                position: 1,
                ..keys(None, Some("crm-1"), Some("a.example"))
            },
            ImportKeys {
                position: 3,
                ..keys(None, None, Some("a.example"))
            },
        ];
        let decided = decide_import(&items, &Holders::default(), FIELDS);
        assert_eq!(
            decided[1],
            rejected(
                "account.domain",
                "repeats the domain of item 1 of this batch"
            )
        );
    }
}
