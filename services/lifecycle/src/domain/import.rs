//! Bulk import (BatchCreateAccounts, BatchCreateContacts): which items of a
//! batch are new, which were created before (a repeated import), and which
//! are refused, decided over a snapshot of the keys the tenant already holds.

use std::collections::HashMap;

/// The unique keys of one item of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportKeys<'a> {
    pub request_id: Option<&'a str>,
    pub external_id: Option<&'a str>,
    /// The record's natural unique key: an account's domain, a contact's email.
    pub natural: Option<&'a str>,
}

/// Who holds each key in the tenant now (key to record id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders {
    pub by_request: HashMap<String, String>,
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
/// even if other fields changed since: updates are UpdateAccount's job). An
/// item whose natural key another record holds is refused, as is an item
/// repeating a key of an earlier item of the batch that will be created.
pub fn decide_import(
    items: &[ImportKeys<'_>],
    holders: &Holders,
    fields: ImportFields,
) -> Vec<ImportDecision> {
    // Keys taken by earlier items of this batch that will be created: item
    // number (from 0) by key.
    let mut batch_request: HashMap<&str, usize> = HashMap::new();
    let mut batch_external: HashMap<&str, usize> = HashMap::new();
    let mut batch_natural: HashMap<&str, usize> = HashMap::new();
    let mut decisions = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let held =
            |key: Option<&str>, by: &HashMap<String, String>| key.and_then(|k| by.get(k)).cloned();
        if let Some(id) = held(item.request_id, &holders.by_request)
            .or_else(|| held(item.external_id, &holders.by_external))
        {
            decisions.push(ImportDecision::Existing(id));
            continue;
        }
        let mut refusals = Vec::new();
        let repeated =
            |key: Option<&str>, seen: &HashMap<&str, usize>| key.and_then(|k| seen.get(k).copied());
        if let Some(earlier) = repeated(item.request_id, &batch_request) {
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
        if let Some(k) = item.request_id {
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
        request_id: Option<&'a str>,
        external_id: Option<&'a str>,
        natural: Option<&'a str>,
    ) -> ImportKeys<'a> {
        ImportKeys {
            request_id,
            external_id,
            natural,
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
        let held = holders(
            &[("r-old", "a1")],
            &[("crm-1", "a2")],
            &[("taken.example", "a3"), ("crm1.example", "a2")],
        );
        let cases: Vec<(&str, ImportKeys, ImportDecision)> = vec![
            ("nothing held: created", keys(None, None, None), Create),
            (
                "a new external id: created",
                keys(None, Some("crm-9"), Some("new.example")),
                Create,
            ),
            (
                "a known request id: the record it made",
                keys(Some("r-old"), None, None),
                Existing("a1".into()),
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
                keys(Some("r-old"), Some("crm-1"), None),
                Existing("a1".into()),
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
        let items = [
            keys(Some("r1"), Some("crm-1"), Some("a.example")),
            keys(Some("r1"), None, None),
            keys(None, Some("crm-1"), None),
            keys(None, None, Some("a.example")),
            keys(Some("r2"), Some("crm-2"), Some("b.example")),
        ];
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

    #[test]
    fn a_refused_item_takes_no_key_from_later_ones() {
        let held = holders(&[], &[], &[("taken.example", "a3")]);
        let items = [
            keys(None, Some("crm-1"), Some("taken.example")),
            keys(None, Some("crm-1"), Some("free.example")),
        ];
        let decided = decide_import(&items, &held, FIELDS);
        assert!(matches!(decided[0], ImportDecision::Rejected(_)));
        assert_eq!(decided[1], ImportDecision::Create);
    }
}
