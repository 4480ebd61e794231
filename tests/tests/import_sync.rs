//! Bulk import, external ids and sync (issue 18, items 2 and 3), on SQLite
//! and PostgreSQL: a tenant onboards its CRM's accounts and contacts in
//! batches, repeats the import without creating anything twice, looks
//! records up by the CRM's ids, and pages through only what changed.

use std::collections::{BTreeMap, BTreeSet};

use cascade_proto::common::v1::ContactStage as C;
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::lifecycle::v1::BatchCreateOutcome as O;
use cascade_testkit::fixtures::{account, mask, score_delivery, violations};
use cascade_testkit::{Lifecycle, TestDatabase, TestSystem, next_millisecond, on_each_database};
use tonic::Code;

on_each_database!(
    ten_thousand_contacts_import_once_however_often_the_import_runs,
    a_batch_refuses_items_one_by_one_and_stores_none_of_them,
    records_are_found_by_the_crm_ids_domain_and_email,
    a_changed_since_listing_returns_exactly_what_changed,
);

const ACCOUNTS: usize = 100;
const CONTACTS: usize = 10_000;

fn crm_account(n: usize) -> lc::CreateAccountRequest {
    lc::CreateAccountRequest {
        account: Some(lc::Account {
            name: format!("Company {n}"),
            domain: format!("company{n}.example"),
            external_id: format!("crm-acct-{n}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn crm_contact(n: usize) -> lc::CreateContactRequest {
    let company = n % ACCOUNTS;
    lc::CreateContactRequest {
        contact: Some(lc::Contact {
            email: format!("person{n}@company{company}.example"),
            first_name: format!("P{n}"),
            external_id: format!("crm-person-{n}"),
            ..Default::default()
        }),
        account_external_id: format!("crm-acct-{company}"),
        ..Default::default()
    }
}

async fn import_accounts(
    lifecycle: &Lifecycle,
    requests: Vec<lc::CreateAccountRequest>,
) -> lc::BatchCreateAccountsResponse {
    lifecycle
        .public()
        .batch_create_accounts(lifecycle.req(lc::BatchCreateAccountsRequest { requests }))
        .await
        .expect("batch of accounts")
        .into_inner()
}

async fn import_contacts(
    lifecycle: &Lifecycle,
    requests: Vec<lc::CreateContactRequest>,
) -> lc::BatchCreateContactsResponse {
    lifecycle
        .public()
        .batch_create_contacts(lifecycle.req(lc::BatchCreateContactsRequest { requests }))
        .await
        .expect("batch of contacts")
        .into_inner()
}

/// Every contact of the tenant, paging through ListContacts.
async fn all_contacts(lifecycle: &Lifecycle) -> Vec<lc::Contact> {
    let mut contacts = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = lifecycle
            .public()
            .list_contacts(lifecycle.req(lc::ListContactsRequest {
                page_size: 500,
                page_token,
                ..Default::default()
            }))
            .await
            .expect("list contacts")
            .into_inner();
        contacts.extend(page.contacts);
        if page.next_page_token.is_empty() {
            return contacts;
        }
        page_token = page.next_page_token;
    }
}

/// The CRM's accounts, then 10,000 contacts in batches of 1,000 naming their
/// accounts by the CRM's ids; then the whole import again.
async fn ten_thousand_contacts_import_once_however_often_the_import_runs(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let mut first_ids: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..2 {
        let accounts = import_accounts(&lifecycle, (0..ACCOUNTS).map(crm_account).collect()).await;
        let expected = if round == 0 { (100, 0) } else { (0, 100) };
        assert_eq!(
            (
                accounts.created_count,
                accounts.existing_count,
                accounts.rejected_count
            ),
            (expected.0, expected.1, 0),
            "accounts, round {round}"
        );
        let mut created = 0;
        let mut existing = 0;
        for batch in 0..CONTACTS / 1000 {
            let requests: Vec<_> = (batch * 1000..(batch + 1) * 1000)
                .map(crm_contact)
                .collect();
            let answer = import_contacts(&lifecycle, requests).await;
            assert_eq!(answer.results.len(), 1000);
            assert_eq!(
                answer.rejected_count,
                0,
                "round {round}: {:?}",
                answer
                    .results
                    .iter()
                    .find(|r| r.outcome == O::Rejected as i32)
            );
            created += answer.created_count;
            existing += answer.existing_count;
            for (i, result) in answer.results.into_iter().enumerate() {
                let n = batch * 1000 + i;
                let contact = result.contact.expect("a contact");
                assert_eq!(contact.external_id, format!("crm-person-{n}"), "in order");
                assert_eq!(
                    contact.stage,
                    C::Suspect as i32,
                    "an emailed contact is a SUSPECT"
                );
                let company = &accounts.results[n % ACCOUNTS];
                assert_eq!(
                    contact.account_id,
                    company.account.as_ref().expect("account").account_id
                );
                // The repeated import returns the very contacts of the first.
                let first = first_ids
                    .entry(contact.external_id.clone())
                    .or_insert_with(|| contact.contact_id.clone());
                assert_eq!(*first, contact.contact_id, "round {round}");
            }
        }
        let expected = if round == 0 { (10_000, 0) } else { (0, 10_000) };
        assert_eq!((created, existing), expected, "contacts, round {round}");
    }
    let stored = all_contacts(&lifecycle).await;
    assert_eq!(stored.len(), CONTACTS, "each contact stored once");
    let distinct: BTreeSet<_> = stored.iter().map(|c| c.external_id.as_str()).collect();
    assert_eq!(distinct.len(), CONTACTS);
    system.stop().await;
}

/// Bad items, taken keys, repeats and unknown accounts are refused item by
/// item, naming the field; the good items of the same batch are created,
/// and nothing of a refused item is stored.
async fn a_batch_refuses_items_one_by_one_and_stores_none_of_them(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let held = lifecycle
        .create_account_with(lc::Account {
            external_id: "crm-held".into(),
            ..account("Held", "held.example", "")
        })
        .await;
    lifecycle
        .create_contact(&held.account_id, "taken@held.example")
        .await;

    let item = |name: &str, domain: &str, external_id: &str| lc::CreateAccountRequest {
        account: Some(lc::Account {
            external_id: external_id.into(),
            ..account(name, domain, "")
        }),
        ..Default::default()
    };
    let accounts = import_accounts(
        &lifecycle,
        vec![
            item("", "noname.example", "crm-noname"),
            item("Fresh", "fresh.example", "crm-fresh"),
            item("Clash", "held.example", "crm-clash"),
            item("Again", "again.example", "crm-fresh"),
            item("Held again", "", "crm-held"),
        ],
    )
    .await;
    let outcomes: Vec<(i32, Vec<(String, String)>)> = accounts
        .results
        .iter()
        .map(|r| {
            (
                r.outcome,
                r.violations
                    .iter()
                    .map(|v| (v.field.clone(), v.description.clone()))
                    .collect(),
            )
        })
        .collect();
    let pair = |f: &str, d: &str| vec![(f.to_owned(), d.to_owned())];
    assert_eq!(
        outcomes,
        vec![
            (O::Rejected as i32, pair("account.name", "is required")),
            (O::Created as i32, vec![]),
            (
                O::Rejected as i32,
                pair(
                    "account.domain",
                    "another account of this tenant already has the domain held.example"
                )
            ),
            (
                O::Rejected as i32,
                pair(
                    "account.external_id",
                    // Its place in the request, counting the refused item 0.
                    "repeats the external id of item 1 of this batch"
                )
            ),
            (O::Existing as i32, vec![]),
        ]
    );
    assert_eq!(
        accounts.results[4]
            .account
            .as_ref()
            .expect("held")
            .account_id,
        held.account_id
    );
    assert_eq!(
        (
            accounts.created_count,
            accounts.existing_count,
            accounts.rejected_count
        ),
        (1, 1, 3)
    );

    let contact = |email: &str, external_id: &str, account: &str| lc::CreateContactRequest {
        contact: Some(lc::Contact {
            email: email.into(),
            external_id: external_id.into(),
            ..Default::default()
        }),
        account_external_id: account.into(),
        ..Default::default()
    };
    let other_tenant = lifecycle
        .as_tenant("someone-else")
        .create_account_with(lc::Account {
            external_id: "crm-theirs".into(),
            ..account("Theirs", "theirs.example", "")
        })
        .await;
    let by_their_id = lc::CreateContactRequest {
        contact: Some(lc::Contact {
            account_id: other_tenant.account_id.clone(),
            email: "spy@theirs.example".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let contacts = import_contacts(
        &lifecycle,
        vec![
            contact("ok@fresh.example", "crm-p1", "crm-fresh"),
            contact("taken@held.example", "crm-p2", "crm-held"),
            contact("nobody@fresh.example", "crm-p3", "crm-missing"),
            contact("OK@fresh.example", "crm-p4", "crm-fresh"),
            contact("not-an-email", "crm-p5", "crm-fresh"),
            contact("theirs@fresh.example", "crm-p6", "crm-theirs"),
            by_their_id,
        ],
    )
    .await;
    let outcomes: Vec<(i32, Vec<String>)> = contacts
        .results
        .iter()
        .map(|r| {
            (
                r.outcome,
                r.violations.iter().map(|v| v.field.clone()).collect(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (O::Created as i32, vec![]),
            (O::Rejected as i32, vec!["contact.email".to_owned()]),
            (O::Rejected as i32, vec!["account_external_id".to_owned()]),
            // Emails are compared lower-cased: a repeat of item 0.
            (O::Rejected as i32, vec!["contact.email".to_owned()]),
            (O::Rejected as i32, vec!["contact.email".to_owned()]),
            // Another tenant's external id and id are not this tenant's.
            (O::Rejected as i32, vec!["account_external_id".to_owned()]),
            (O::Rejected as i32, vec!["contact.account_id".to_owned()]),
        ]
    );
    assert_eq!(
        contacts.results[2].violations[0].description,
        "no account with external id crm-missing in this tenant"
    );
    // Only item 0 and the contact made before are stored.
    let stored: BTreeSet<String> = all_contacts(&lifecycle)
        .await
        .into_iter()
        .map(|c| c.email)
        .collect();
    assert_eq!(
        stored,
        BTreeSet::from([
            "ok@fresh.example".to_owned(),
            "taken@held.example".to_owned()
        ])
    );
    let theirs = all_contacts(&lifecycle.as_tenant("someone-else")).await;
    assert!(
        theirs.is_empty(),
        "nothing written to the other tenant: {theirs:?}"
    );

    // The batch's size is checked as a whole.
    let empty = lifecycle
        .public()
        .batch_create_accounts(lifecycle.req(lc::BatchCreateAccountsRequest::default()))
        .await
        .expect_err("an empty batch");
    assert_eq!(
        violations(&empty),
        [("requests".to_owned(), "1 to 1000 items (got 0)".to_owned())]
    );
    let oversized = lifecycle
        .public()
        .batch_create_contacts(lifecycle.req(lc::BatchCreateContactsRequest {
            requests: (0..1001).map(crm_contact).collect(),
        }))
        .await
        .expect_err("1001 items");
    assert_eq!(oversized.code(), Code::InvalidArgument);
    system.stop().await;
}

/// Look-ups by the CRM's ids, by domain and by email, and the uniqueness of
/// external ids on create and update.
async fn records_are_found_by_the_crm_ids_domain_and_email(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let acme = lifecycle
        .create_account_with(lc::Account {
            external_id: "0015g00000ACME".into(),
            ..account("Acme", "acme.example", "")
        })
        .await;
    lifecycle.create_account("Other", "").await;
    let ann = lifecycle
        .public()
        .create_contact(lifecycle.req(lc::CreateContactRequest {
            contact: Some(lc::Contact {
                email: "ann@acme.example".into(),
                external_id: "0035g00000ANN".into(),
                ..Default::default()
            }),
            account_external_id: "0015g00000ACME".into(),
            ..Default::default()
        }))
        .await
        .expect("a contact under the account's external id")
        .into_inner()
        .contact
        .expect("contact");
    assert_eq!(ann.account_id, acme.account_id);
    assert_eq!(ann.external_id, "0035g00000ANN");

    let accounts = |request: lc::ListAccountsRequest| {
        let lifecycle = lifecycle.clone();
        async move {
            lifecycle
                .public()
                .list_accounts(lifecycle.req(request))
                .await
                .expect("list accounts")
                .into_inner()
                .accounts
                .into_iter()
                .map(|a| a.account_id)
                .collect::<Vec<_>>()
        }
    };
    let by_external = accounts(lc::ListAccountsRequest {
        external_id: "0015g00000ACME".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_external, [acme.account_id.as_str()]);
    let by_domain = accounts(lc::ListAccountsRequest {
        domain: "ACME.example".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_domain, [acme.account_id.as_str()]);
    let unknown = accounts(lc::ListAccountsRequest {
        external_id: "nobody".into(),
        ..Default::default()
    })
    .await;
    assert!(unknown.is_empty());

    let contacts = |request: lc::ListContactsRequest| {
        let lifecycle = lifecycle.clone();
        async move {
            lifecycle
                .public()
                .list_contacts(lifecycle.req(request))
                .await
                .expect("list contacts")
                .into_inner()
                .contacts
                .into_iter()
                .map(|c| c.contact_id)
                .collect::<Vec<_>>()
        }
    };
    let by_external = contacts(lc::ListContactsRequest {
        external_id: "0035g00000ANN".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_external, [ann.contact_id.as_str()]);
    let by_email = contacts(lc::ListContactsRequest {
        email: "Ann@Acme.example".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_email, [ann.contact_id.as_str()]);

    // External ids are unique per tenant, on create and on update, and the
    // refusal names the external id (not the domain or email).
    let taken = lifecycle
        .try_create_account(
            lc::Account {
                external_id: "0015g00000ACME".into(),
                ..account("Copy", "copy.example", "")
            },
            "",
        )
        .await
        .expect_err("external id taken");
    assert_eq!(taken.code(), Code::AlreadyExists);
    assert!(
        taken.message().contains("external id 0015g00000ACME"),
        "{taken:?}"
    );
    let bob = lifecycle
        .create_contact(&acme.account_id, "bob@acme.example")
        .await;
    let update = lifecycle
        .public()
        .update_contact(lifecycle.req(lc::UpdateContactRequest {
            contact: Some(lc::Contact {
                contact_id: bob.contact_id.clone(),
                external_id: "0035g00000ANN".into(),
                ..Default::default()
            }),
            update_mask: mask(&["external_id"]),
        }))
        .await
        .expect_err("external id taken by Ann");
    assert_eq!(update.code(), Code::AlreadyExists);
    assert!(
        update.message().contains("external id 0035g00000ANN"),
        "{update:?}"
    );
    // Another tenant has its own namespace of external ids.
    lifecycle
        .as_tenant("another")
        .create_account_with(lc::Account {
            external_id: "0015g00000ACME".into(),
            ..account("Acme elsewhere", "acme.example", "")
        })
        .await;
    // An external id can be set, and cleared, later.
    let renamed = lifecycle
        .public()
        .update_account(lifecycle.req(lc::UpdateAccountRequest {
            account: Some(lc::Account {
                account_id: acme.account_id.clone(),
                external_id: "crm-2".into(),
                ..Default::default()
            }),
            update_mask: mask(&["external_id"]),
        }))
        .await
        .expect("external id changed")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(renamed.external_id, "crm-2");
    system.stop().await;
}

/// Changes made after a point in time, paged in the order they happened:
/// created, edited and moved by a score delivery, and nothing else; a
/// contact whose score alone changed is not among them.
async fn a_changed_since_listing_returns_exactly_what_changed(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let unchanged = lifecycle.create_account("Unchanged", "").await;
    let edited = lifecycle.create_account("Edited", "").await;
    let scored = lifecycle.create_account("Scored", "").await;
    let quiet_contact = lifecycle
        .create_contact(&unchanged.account_id, "quiet@x.example")
        .await;
    let moved_contact = lifecycle
        .create_contact(&edited.account_id, "moved@x.example")
        .await;
    let scored_contact = lifecycle
        .create_contact(&scored.account_id, "scored@x.example")
        .await;
    next_millisecond().await;
    let since = cascade_chassis::time::to_timestamp(cascade_chassis::time::now());

    lifecycle
        .public()
        .update_account(lifecycle.req(lc::UpdateAccountRequest {
            account: Some(lc::Account {
                account_id: edited.account_id.clone(),
                name: "Edited, renamed".into(),
                ..Default::default()
            }),
            update_mask: mask(&["name"]),
        }))
        .await
        .expect("rename");
    // A sync writing back what it read changes nothing, so lists nothing
    // (a tester saw each such write move update_time).
    let written_back = lifecycle
        .public()
        .update_account(lifecycle.req(lc::UpdateAccountRequest {
            account: Some(lc::Account {
                account_id: unchanged.account_id.clone(),
                name: "Unchanged".into(),
                ..Default::default()
            }),
            update_mask: mask(&["name"]),
        }))
        .await
        .expect("the same name")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(written_back.update_time, unchanged.update_time);
    lifecycle
        .public()
        .update_contact(lifecycle.req(lc::UpdateContactRequest {
            contact: Some(lc::Contact {
                contact_id: quiet_contact.contact_id.clone(),
                email: "QUIET@x.example".into(),
                title: quiet_contact.title.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["email", "title"]),
        }))
        .await
        .expect("the same email and title");
    next_millisecond().await;
    lifecycle
        .try_apply_score(lc::ApplyEngagementScoreRequest {
            contacts: vec![lc::ContactEngagement {
                contact_id: scored_contact.contact_id.clone(),
                engagement_score: 5.0,
                new_activity_types: Vec::new(),
            }],
            ..score_delivery("sync-1", &scored.account_id, 1, 30.0)
        })
        .await
        .expect("score applied");
    next_millisecond().await;
    let created = lifecycle.create_account("Created", "").await;
    lifecycle
        .public()
        .update_contact(lifecycle.req(lc::UpdateContactRequest {
            contact: Some(lc::Contact {
                contact_id: moved_contact.contact_id.clone(),
                title: "CTO".into(),
                ..Default::default()
            }),
            update_mask: mask(&["title"]),
        }))
        .await
        .expect("contact edited");

    // Two per page: the pages hold each change once, in the order made.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = lifecycle
            .public()
            .list_accounts(lifecycle.req(lc::ListAccountsRequest {
                page_size: 2,
                page_token,
                changed_since: Some(since),
                ..Default::default()
            }))
            .await
            .expect("changed accounts")
            .into_inner();
        pages += 1;
        seen.extend(page.accounts);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let names: Vec<&str> = seen.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["Edited, renamed", "Scored", "Created"]);
    assert_eq!(pages, 2);
    assert_eq!(
        seen[1].engagement_score, 30.0,
        "the score's change is the change"
    );
    assert_eq!(seen[2].account_id, created.account_id);
    let times: Vec<_> = seen
        .iter()
        .map(|a| a.update_time.expect("update time"))
        .map(|t| (t.seconds, t.nanos))
        .collect();
    assert!(times.is_sorted(), "in the order they changed: {times:?}");

    let contacts = lifecycle
        .public()
        .list_contacts(lifecycle.req(lc::ListContactsRequest {
            changed_since: Some(since),
            ..Default::default()
        }))
        .await
        .expect("changed contacts")
        .into_inner()
        .contacts;
    let ids: Vec<&str> = contacts.iter().map(|c| c.contact_id.as_str()).collect();
    assert_eq!(
        ids,
        [moved_contact.contact_id.as_str()],
        "a contact whose score alone changed is not listed (docs/decisions.md)"
    );
    assert_ne!(quiet_contact.contact_id, moved_contact.contact_id);
    let rescored = lifecycle.contact(&scored_contact.contact_id).await;
    assert_eq!(rescored.engagement_score, 5.0, "the delivery reached it");
    assert_eq!(rescored.update_time, scored_contact.update_time);

    // A token of this listing does not fit another, and a time that is not
    // one is refused.
    let refused = lifecycle
        .public()
        .list_accounts(lifecycle.req(lc::ListAccountsRequest {
            changed_since: Some(prost_types::Timestamp {
                seconds: -1,
                nanos: 0,
            }),
            ..Default::default()
        }))
        .await
        .expect_err("a time before 1970");
    assert_eq!(violations(&refused)[0].0, "changed_since");
    system.stop().await;
}
