//! Who a reference to a person means: the rule behind BatchResolveContacts,
//! over a snapshot of the tenant's directory (no I/O).
//!
//! A reference by ids must name an account of the tenant and, if it names a
//! contact, a contact of that very account (every contact belongs to exactly
//! one account). A reference by email is the contact with that email, or a
//! new contact under the account whose domain is the email's domain.

use std::collections::{HashMap, HashSet};

use cascade_chassis::validate::email_domain;

/// A reference as the caller gave it (already validated and normalised:
/// emails lower-case).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Ids {
        account_id: String,
        contact_id: Option<String>,
    },
    Email(String),
}

/// The part of the tenant's directory a batch of references touches.
#[derive(Debug, Default)]
pub struct Directory {
    /// Accounts named by id that exist.
    pub accounts: HashSet<String>,
    /// Contacts named by id that exist, with their account.
    pub contact_accounts: HashMap<String, String>,
    /// Contacts found by email: email -> (account, contact).
    pub by_email: HashMap<String, (String, String)>,
    /// Accounts found by domain: domain -> account.
    pub by_domain: HashMap<String, String>,
    /// Of the contacts found, those no longer at the company.
    pub inactive: HashSet<String>,
}

/// What a reference resolves to.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    Resolved {
        account_id: String,
        contact_id: Option<String>,
        /// The contact is no longer at the company: its activities are refused.
        inactive: bool,
    },
    /// A new contact with `email` is to be created under `account_id`.
    Create { account_id: String, email: String },
    /// Storage's outcome of a `Create`: the contact was made.
    Created {
        account_id: String,
        contact_id: String,
    },
    NotFound {
        field: &'static str,
        description: String,
    },
    Mismatch {
        field: &'static str,
        description: String,
    },
}

/// Resolves one reference against the directory.
pub fn resolve(reference: &Reference, directory: &Directory) -> Resolution {
    match reference {
        Reference::Ids {
            account_id,
            contact_id,
        } => {
            if !directory.accounts.contains(account_id) {
                return Resolution::NotFound {
                    field: "account_id",
                    description: format!("no account {account_id}"),
                };
            }
            let Some(contact_id) = contact_id else {
                return Resolution::Resolved {
                    account_id: account_id.clone(),
                    contact_id: None,
                    inactive: false,
                };
            };
            match directory.contact_accounts.get(contact_id) {
                None => Resolution::NotFound {
                    field: "contact_id",
                    description: format!("no contact {contact_id}"),
                },
                Some(owner) if owner != account_id => Resolution::Mismatch {
                    field: "contact_id",
                    description: format!(
                        "contact {contact_id} belongs to another account than {account_id}"
                    ),
                },
                Some(_) => Resolution::Resolved {
                    account_id: account_id.clone(),
                    contact_id: Some(contact_id.clone()),
                    inactive: directory.inactive.contains(contact_id),
                },
            }
        }
        Reference::Email(email) => {
            if let Some((account_id, contact_id)) = directory.by_email.get(email) {
                return Resolution::Resolved {
                    account_id: account_id.clone(),
                    contact_id: Some(contact_id.clone()),
                    inactive: directory.inactive.contains(contact_id),
                };
            }
            let account = email_domain(email).and_then(|d| directory.by_domain.get(d));
            match account {
                Some(account_id) => Resolution::Create {
                    account_id: account_id.clone(),
                    email: email.clone(),
                },
                None => Resolution::NotFound {
                    field: "email",
                    description: format!(
                        "no contact has the email {email} and no account has its domain"
                    ),
                },
            }
        }
    }
}

/// The domains of the emails the directory has no contact for: the accounts
/// to look up by domain.
pub fn domains_to_match<'a>(
    references: impl IntoIterator<Item = &'a Reference>,
    directory: &Directory,
) -> HashSet<String> {
    references
        .into_iter()
        .filter_map(|r| match r {
            Reference::Email(email) if !directory.by_email.contains_key(email) => {
                email_domain(email).map(str::to_owned)
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> Directory {
        Directory {
            accounts: ["a1", "a2"].map(String::from).into(),
            contact_accounts: [("c1", "a1"), ("c2", "a2")]
                .map(|(c, a)| (c.to_owned(), a.to_owned()))
                .into(),
            by_email: [("jo@acme.com", ("a1", "c1"))]
                .map(|(e, (a, c))| (e.to_owned(), (a.to_owned(), c.to_owned())))
                .into(),
            by_domain: [("acme.com", "a1")]
                .map(|(d, a)| (d.to_owned(), a.to_owned()))
                .into(),
            inactive: ["c2".to_owned()].into(),
        }
    }

    fn ids(account: &str, contact: Option<&str>) -> Reference {
        Reference::Ids {
            account_id: account.to_owned(),
            contact_id: contact.map(str::to_owned),
        }
    }

    #[test]
    fn references_by_ids() {
        let d = directory();
        let resolved = |a: &str, c: Option<&str>, inactive| Resolution::Resolved {
            account_id: a.to_owned(),
            contact_id: c.map(str::to_owned),
            inactive,
        };
        let cases = [
            (ids("a1", None), resolved("a1", None, false)),
            (ids("a1", Some("c1")), resolved("a1", Some("c1"), false)),
            // Found, and no longer at the company.
            (ids("a2", Some("c2")), resolved("a2", Some("c2"), true)),
        ];
        for (reference, expected) in cases {
            assert_eq!(resolve(&reference, &d), expected, "{reference:?}");
        }
        let field_of = |r: Resolution| match r {
            Resolution::NotFound { field, .. } => ("not found", field),
            Resolution::Mismatch { field, .. } => ("mismatch", field),
            other => panic!("expected a refusal, got {other:?}"),
        };
        // Unknown account, with or without a contact; the account is checked first.
        assert_eq!(
            field_of(resolve(&ids("a9", None), &d)),
            ("not found", "account_id")
        );
        assert_eq!(
            field_of(resolve(&ids("a9", Some("c1")), &d)),
            ("not found", "account_id")
        );
        assert_eq!(
            field_of(resolve(&ids("a1", Some("c9")), &d)),
            ("not found", "contact_id")
        );
        // A contact of a1 named under a2.
        assert_eq!(
            field_of(resolve(&ids("a2", Some("c1")), &d)),
            ("mismatch", "contact_id")
        );
    }

    #[test]
    fn references_by_email() {
        let d = directory();
        assert_eq!(
            resolve(&Reference::Email("jo@acme.com".into()), &d),
            Resolution::Resolved {
                account_id: "a1".into(),
                contact_id: Some("c1".into()),
                inactive: false,
            }
        );
        assert_eq!(
            resolve(&Reference::Email("new@acme.com".into()), &d),
            Resolution::Create {
                account_id: "a1".into(),
                email: "new@acme.com".into()
            }
        );
        assert!(matches!(
            resolve(&Reference::Email("who@elsewhere.org".into()), &d),
            Resolution::NotFound { field: "email", .. }
        ));
    }

    #[test]
    fn only_unknown_emails_need_their_domain() {
        let d = directory();
        let references = [
            Reference::Email("jo@acme.com".into()),
            Reference::Email("new@beta.io".into()),
            Reference::Email("other@beta.io".into()),
            ids("a1", None),
        ];
        let domains = domains_to_match(&references, &d);
        assert_eq!(domains, HashSet::from(["beta.io".to_owned()]));
    }
}
