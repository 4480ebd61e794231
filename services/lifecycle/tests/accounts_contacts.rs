//! Accounts and contacts over real gRPC, on SQLite and on PostgreSQL.

use cascade_proto::common::v1::{AccountStage, ContactStage, CustomerType};
use cascade_proto::lifecycle::v1 as pb;
use cascade_testkit::fixtures::{account, mask, violated_fields, violations};
use cascade_testkit::{TestDatabase, TestSystem, on_each_database, request_for};
use tonic::Code;

/// A contact of `account_id` named Pat.
fn pat(account_id: &str, email: &str) -> pb::Contact {
    pb::Contact {
        account_id: account_id.into(),
        email: email.into(),
        first_name: "Pat".into(),
        ..Default::default()
    }
}

async fn accounts_round_trip(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let t1 = system.lifecycle().as_tenant("t1");
    let created = t1
        .create_account_with(account("Acme", "Acme.com", "jane"))
        .await;
    assert_eq!(created.name, "Acme");
    assert_eq!(created.domain, "acme.com", "domains are stored lower-case");
    assert_eq!(created.stage, AccountStage::Targeted as i32);
    assert_eq!(created.customer_type, CustomerType::Prospect as i32);
    assert!(uuid_v7(&created.account_id), "{}", created.account_id);
    assert_eq!(created.stages_reached.len(), 1);
    assert_eq!(
        created.stages_reached[0].stage,
        AccountStage::Targeted as i32
    );

    let fetched = t1.account(&created.account_id).await;
    assert_eq!(fetched, created);

    let updated = t1
        .public()
        .update_account(t1.req(pb::UpdateAccountRequest {
            account: Some(pb::Account {
                account_id: created.account_id.clone(),
                name: "Acme Corp".into(),
                owner_id: "ignored: not in the mask".into(),
                ..Default::default()
            }),
            update_mask: mask(&["name"]),
        }))
        .await
        .expect("update")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(updated.name, "Acme Corp");
    assert_eq!(updated.owner_id, "jane", "fields outside the mask stay");
    assert_eq!(updated.domain, "acme.com");

    // Stage and customer type move only through the lifecycle rules.
    let refused = t1
        .public()
        .update_account(t1.req(pb::UpdateAccountRequest {
            account: Some(pb::Account {
                account_id: created.account_id.clone(),
                stage: AccountStage::Pipeline as i32,
                ..Default::default()
            }),
            update_mask: mask(&["stage"]),
        }))
        .await
        .expect_err("stage is not writable");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&refused), ["update_mask.paths[0]"]);
    assert!(
        refused.message().contains("lifecycle rules"),
        "{}",
        refused.message()
    );

    let no_mask = t1
        .public()
        .update_account(t1.req(pb::UpdateAccountRequest {
            account: Some(pb::Account {
                account_id: created.account_id.clone(),
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .expect_err("mask required");
    assert_eq!(violated_fields(&no_mask), ["update_mask"]);

    let missing = t1
        .try_account("0192f0c4-8b6e-7cc2-9d7e-7d1c7f3b5a10")
        .await
        .expect_err("unknown id");
    assert_eq!(missing.code(), Code::NotFound);
    system.stop().await;
}

async fn list_accounts_filters_and_pages(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let t1 = lifecycle.as_tenant("t1");
    let t2 = lifecycle.as_tenant("t2");
    let mut ids = Vec::new();
    for i in 0..5 {
        let owner = if i % 2 == 0 { "even" } else { "odd" };
        let created = t1
            .create_account_with(account(&format!("A{i}"), "", owner))
            .await;
        ids.push(created.account_id);
    }
    t2.create_account_with(account("Other tenant", "", "even"))
        .await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = t1
            .public()
            .list_accounts(t1.req(pb::ListAccountsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        assert!(page.accounts.len() <= 2);
        seen.extend(page.accounts.into_iter().map(|a| a.account_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids, "every account once, in creation order");
    assert_eq!(pages, 3);

    let even = t1
        .public()
        .list_accounts(t1.req(pb::ListAccountsRequest {
            owner_id: "even".into(),
            stage: AccountStage::Targeted as i32,
            customer_type: CustomerType::Prospect as i32,
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(even.accounts.len(), 3);
    let engaged = t1
        .public()
        .list_accounts(t1.req(pb::ListAccountsRequest {
            stage: AccountStage::Engaged as i32,
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert!(engaged.accounts.is_empty());

    let bad = t1
        .public()
        .list_accounts(t1.req(pb::ListAccountsRequest {
            page_size: 100_000,
            ..Default::default()
        }))
        .await
        .expect_err("page too large");
    assert_eq!(violated_fields(&bad), ["page_size"]);
    let bad = t1
        .public()
        .list_accounts(t1.req(pb::ListAccountsRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        }))
        .await
        .expect_err("bad token");
    assert_eq!(violated_fields(&bad), ["page_token"]);

    // A token serves the listing that returned it: a CRM sync's token
    // (changed_since) on the plain listing, or with another owner, is
    // refused, where it used to read as an empty last page.
    let list = async |request: pb::ListAccountsRequest| {
        t1.public()
            .list_accounts(t1.req(request))
            .await
            .map(tonic::Response::into_inner)
    };
    let sync = pb::ListAccountsRequest {
        page_size: 1,
        changed_since: Some(prost_types::Timestamp::default()),
        ..Default::default()
    };
    let first = list(sync.clone()).await.expect("sync page");
    assert!(!first.next_page_token.is_empty());
    let second = list(pb::ListAccountsRequest {
        page_size: 3,
        page_token: first.next_page_token.clone(),
        ..sync.clone()
    })
    .await
    .expect("the same listing, another page size");
    assert_eq!(second.accounts.len(), 3);
    for other in [
        pb::ListAccountsRequest {
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
        pb::ListAccountsRequest {
            page_token: first.next_page_token.clone(),
            owner_id: "even".into(),
            ..sync.clone()
        },
    ] {
        let refused = list(other).await.expect_err("another listing");
        assert_eq!(violated_fields(&refused), ["page_token"]);
        assert!(
            refused.message().contains("another list"),
            "{}",
            refused.message()
        );
    }
    system.stop().await;
}

async fn create_account_validates_and_is_idempotent(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let t1 = lifecycle.as_tenant("t1");
    let t2 = lifecycle.as_tenant("t2");
    let bad = t1
        .try_create_account(account("  ", "not a domain", ""), "")
        .await
        .expect_err("empty name refused");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&bad), ["account.name", "account.domain"]);

    let globex = account("Globex", "globex.com", "");
    let first = t1
        .try_create_account(globex.clone(), "import-42")
        .await
        .expect("first");
    let again = t1
        .try_create_account(globex, "import-42")
        .await
        .expect("retry answers the same account");
    assert_eq!(first.account_id, again.account_id);

    let listed = t1
        .public()
        .list_accounts(t1.req(pb::ListAccountsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.accounts.len(), 1, "the retry created nothing");

    let duplicate = t1
        .try_create_account(account("Globex again", "GLOBEX.com", ""), "")
        .await
        .expect_err("domain taken");
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    // The same domain in another tenant is a different account.
    t2.create_account_with(account("Globex", "globex.com", ""))
        .await;
    system.stop().await;
}

async fn contacts_follow_their_rules(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let t1 = system.lifecycle().as_tenant("t1");
    let acme = t1
        .create_account_with(account("Acme", "acme.com", ""))
        .await;

    let anonymous = t1
        .try_create_contact(pat(&acme.account_id, ""), "")
        .await
        .expect("anonymous contact");
    assert_eq!(anonymous.stage, ContactStage::Anonymous as i32);
    let suspect = t1
        .try_create_contact(pat(&acme.account_id, "Pat@Acme.com"), "")
        .await
        .expect("contact with email");
    assert_eq!(suspect.stage, ContactStage::Suspect as i32);
    assert_eq!(suspect.email, "pat@acme.com");

    let taken = t1
        .try_create_contact(pat(&acme.account_id, "pat@acme.com"), "")
        .await
        .expect_err("email unique in tenant");
    assert_eq!(taken.code(), Code::AlreadyExists);

    let orphan = t1
        .try_create_contact(
            pat("0192f0c4-8b6e-7cc2-9d7e-7d1c7f3b5a10", "x@acme.com"),
            "",
        )
        .await
        .expect_err("account must exist");
    assert_eq!(orphan.code(), Code::NotFound);

    let bad = t1
        .try_create_contact(pat("", "not-an-email"), "")
        .await
        .expect_err("bad fields");
    assert_eq!(
        violated_fields(&bad),
        ["contact.account_id", "contact.email"]
    );

    // Adding an email to an ANONYMOUS contact makes it SUSPECT.
    let identified = t1
        .public()
        .update_contact(t1.req(pb::UpdateContactRequest {
            contact: Some(pb::Contact {
                contact_id: anonymous.contact_id.clone(),
                email: "sam@acme.com".into(),
                ..Default::default()
            }),
            update_mask: mask(&["email"]),
        }))
        .await
        .expect("email added")
        .into_inner()
        .contact
        .expect("contact");
    assert_eq!(identified.stage, ContactStage::Suspect as i32);
    assert_eq!(identified.email, "sam@acme.com");
    assert_eq!(identified.first_name, "Pat", "unmasked fields stay");

    // People set the manual stages; the automatic ones are refused.
    let qualified = t1
        .public()
        .update_contact(t1.req(pb::UpdateContactRequest {
            contact: Some(pb::Contact {
                contact_id: identified.contact_id.clone(),
                stage: ContactStage::SalesQualified as i32,
                ..Default::default()
            }),
            update_mask: mask(&["stage"]),
        }))
        .await
        .expect("manual stage")
        .into_inner()
        .contact
        .expect("contact");
    assert_eq!(qualified.stage, ContactStage::SalesQualified as i32);
    let automatic = t1
        .public()
        .update_contact(t1.req(pb::UpdateContactRequest {
            contact: Some(pb::Contact {
                contact_id: identified.contact_id.clone(),
                stage: ContactStage::Customer as i32,
                ..Default::default()
            }),
            update_mask: mask(&["stage"]),
        }))
        .await
        .expect_err("automatic stage refused");
    let found = violations(&automatic);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "contact.stage");
    assert!(found[0].1.contains("CUSTOMER"), "{found:?}");

    let listed = t1
        .public()
        .list_contacts(t1.req(pb::ListContactsRequest {
            account_id: acme.account_id.clone(),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.contacts.len(), 2);
    let by_email = t1
        .public()
        .list_contacts(t1.req(pb::ListContactsRequest {
            email: "PAT@acme.com".into(),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(by_email.contacts.len(), 1);
    assert_eq!(by_email.contacts[0].contact_id, suspect.contact_id);
    system.stop().await;
}

async fn tenants_never_see_each_other(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let lifecycle = system.lifecycle();
    let a = lifecycle.as_tenant("tenant-a");
    let b = lifecycle.as_tenant("tenant-b");
    let theirs = b.create_account_with(account("B's", "b.com", "")).await;
    let their_contact = b
        .try_create_contact(pat(&theirs.account_id, "x@b.com"), "")
        .await
        .expect("contact");

    let get = a.try_account(&theirs.account_id).await.expect_err("hidden");
    assert_eq!(get.code(), Code::NotFound);
    let update = a
        .public()
        .update_account(a.req(pb::UpdateAccountRequest {
            account: Some(pb::Account {
                account_id: theirs.account_id.clone(),
                name: "hijacked".into(),
                ..Default::default()
            }),
            update_mask: mask(&["name"]),
        }))
        .await
        .expect_err("hidden");
    assert_eq!(update.code(), Code::NotFound);
    let contact = a
        .try_create_contact(pat(&theirs.account_id, ""), "")
        .await
        .expect_err("cannot attach to another tenant's account");
    assert_eq!(contact.code(), Code::NotFound);
    let get_contact = a
        .public()
        .get_contact(a.req(pb::GetContactRequest {
            contact_id: their_contact.contact_id.clone(),
        }))
        .await
        .expect_err("hidden");
    assert_eq!(get_contact.code(), Code::NotFound);
    let listed = a
        .public()
        .list_accounts(a.req(pb::ListAccountsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.accounts.is_empty());
    let listed = a
        .public()
        .list_contacts(a.req(pb::ListContactsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.contacts.is_empty());

    // Nothing of tenant-b changed.
    let unchanged = b.account(&theirs.account_id).await;
    assert_eq!(unchanged, theirs, "visible to its tenant, unchanged");

    let bad_tenant = lifecycle
        .public()
        .list_accounts(request_for("Not Valid", pb::ListAccountsRequest::default()))
        .await
        .expect_err("malformed tenant");
    assert_eq!(bad_tenant.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&bad_tenant), ["x-tenant-id"]);
    system.stop().await;
}

async fn data_survives_a_restart(db: TestDatabase) {
    let mut system = TestSystem::lifecycle_on(&db).await;
    let t1 = system.lifecycle().as_tenant("t1");
    let created = t1.create_account_with(account("Durable", "", "")).await;
    system.stop_lifecycle().await;

    system.start_lifecycle().await;
    let fetched = t1.account(&created.account_id).await;
    assert_eq!(fetched, created, "still there");
    system.stop().await;
}

fn uuid_v7(id: &str) -> bool {
    id.len() == 36 && id.as_bytes()[14] == b'7'
}

/// Concurrent BatchResolveContacts calls creating the same new emails: none
/// fails (no deadlock, no unique violation reaches the caller), every call
/// gets the same contact for an email, and exactly one contact per email is
/// stored, under the account of its domain.
async fn concurrent_batch_resolves_create_each_contact_once(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let race = system.lifecycle().as_tenant("race");
    let acme = race
        .create_account_with(account("Acme", "acme.example", ""))
        .await;
    let references: Vec<pb::ContactReference> = (0..20)
        .map(|i| pb::ContactReference {
            email: format!("person{i}@acme.example"),
            ..Default::default()
        })
        .collect();
    let calls = (0..4).map(|n| {
        let race = race.clone();
        // Each call names the emails in another order.
        let mut references = references.clone();
        references.rotate_left(n * 5);
        async move {
            race.public()
                .batch_resolve_contacts(race.req(pb::BatchResolveContactsRequest { references }))
                .await
                .map(|r| r.into_inner().resolutions)
        }
    });
    let answers = futures::future::join_all(calls).await;
    let mut by_email: std::collections::HashMap<String, String> = Default::default();
    for (n, answer) in answers.into_iter().enumerate() {
        let mut resolutions = answer.expect("no call fails");
        resolutions.rotate_right(n * 5);
        for (reference, resolution) in references.iter().zip(resolutions) {
            assert!(
                resolution.status == pb::ResolutionStatus::Created as i32
                    || resolution.status == pb::ResolutionStatus::Resolved as i32,
                "{resolution:?}"
            );
            assert_eq!(resolution.account_id, acme.account_id);
            let first = by_email
                .entry(reference.email.clone())
                .or_insert_with(|| resolution.contact_id.clone());
            assert_eq!(*first, resolution.contact_id, "{}", reference.email);
        }
    }
    let listed = race
        .public()
        .list_contacts(race.req(pb::ListContactsRequest {
            account_id: acme.account_id.clone(),
            page_size: 100,
            ..Default::default()
        }))
        .await
        .expect("contacts")
        .into_inner()
        .contacts;
    assert_eq!(listed.len(), 20);
    // Each created contact starts as a SUSPECT with that stage's first date.
    for contact in &listed {
        assert_eq!(contact.stage, ContactStage::Suspect as i32, "{contact:?}");
        let suspect: Vec<_> = contact
            .stages_reached
            .iter()
            .filter(|r| r.stage == ContactStage::Suspect as i32)
            .collect();
        assert_eq!(suspect.len(), 1, "{contact:?}");
        let ms = |t: &Option<prost_types::Timestamp>| {
            t.as_ref()
                .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
        };
        assert_eq!(
            ms(&suspect[0].first_reached_time),
            ms(&contact.stage_entered_time),
            "{contact:?}"
        );
    }
    // Ids checked in the same call: the created contacts belong to Acme.
    let checked = race
        .public()
        .batch_resolve_contacts(
            race.req(pb::BatchResolveContactsRequest {
                references: listed
                    .iter()
                    .map(|c| pb::ContactReference {
                        account_id: acme.account_id.clone(),
                        contact_id: c.contact_id.clone(),
                        email: String::new(),
                    })
                    .collect(),
            }),
        )
        .await
        .expect("check")
        .into_inner()
        .resolutions;
    assert!(
        checked
            .iter()
            .all(|r| r.status == pb::ResolutionStatus::Resolved as i32)
    );
}

/// An update that keeps its own external id and takes another record's
/// email (or domain) is told the email (domain) is taken: the record being
/// updated holding its own external id is no clash.
async fn an_update_clash_names_the_field_another_record_holds(db: TestDatabase) {
    use tonic_types::StatusExt;
    let system = TestSystem::lifecycle_on(&db).await;
    let t1 = system.lifecycle().as_tenant("t1");
    let named = |status: &tonic::Status| {
        assert_eq!(status.code(), Code::AlreadyExists, "{}", status.message());
        let info = status.get_details_resource_info().expect("ResourceInfo");
        (info.resource_name, status.message().to_owned())
    };

    let acme = t1
        .create_account_with(account("Acme", "acme.com", ""))
        .await;
    let a = t1
        .try_create_contact(
            pb::Contact {
                external_id: "crm-1".into(),
                ..pat(&acme.account_id, "a@x.com")
            },
            "",
        )
        .await
        .expect("contact A");
    t1.try_create_contact(pat(&acme.account_id, "b@x.com"), "")
        .await
        .expect("contact B");
    let clash = t1
        .public()
        .update_contact(t1.req(pb::UpdateContactRequest {
            contact: Some(pb::Contact {
                contact_id: a.contact_id.clone(),
                email: "b@x.com".into(),
                external_id: "crm-1".into(),
                ..Default::default()
            }),
            update_mask: mask(&["email", "external_id"]),
        }))
        .await
        .expect_err("B has the email");
    let (name, message) = named(&clash);
    assert_eq!(name, "b@x.com", "{message}");
    assert!(message.contains("b@x.com"), "{message}");
    assert!(!message.contains("crm-1"), "{message}");

    let mine = t1
        .create_account_with(pb::Account {
            external_id: "crm-acc-1".into(),
            ..account("Mine", "mine.com", "")
        })
        .await;
    t1.create_account_with(account("Theirs", "theirs.com", ""))
        .await;
    let clash = t1
        .public()
        .update_account(t1.req(pb::UpdateAccountRequest {
            account: Some(pb::Account {
                account_id: mine.account_id.clone(),
                domain: "theirs.com".into(),
                external_id: "crm-acc-1".into(),
                ..Default::default()
            }),
            update_mask: mask(&["domain", "external_id"]),
        }))
        .await
        .expect_err("Theirs has the domain");
    let (name, message) = named(&clash);
    assert_eq!(name, "theirs.com", "{message}");
    assert!(!message.contains("crm-acc-1"), "{message}");

    // An external id another record holds is still named as such.
    let clash = t1
        .public()
        .update_account(t1.req(pb::UpdateAccountRequest {
            account: Some(pb::Account {
                account_id: acme.account_id.clone(),
                external_id: "crm-acc-1".into(),
                ..Default::default()
            }),
            update_mask: mask(&["external_id"]),
        }))
        .await
        .expect_err("Mine has the external id");
    assert_eq!(named(&clash).0, "crm-acc-1");
    system.stop().await;
}

/// A request id of white space alone is refused: read as none, it would
/// turn idempotency off without a word, and a retry would create twice.
async fn a_blank_request_id_is_refused(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let t1 = system.lifecycle().as_tenant("t1");
    for blank in ["   ", "\t"] {
        let refused = t1
            .try_create_account(account("Globex", "globex.com", ""), blank)
            .await
            .expect_err("a blank request id");
        let found = violations(&refused);
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "request_id");
        assert!(found[0].1.starts_with("must not be blank"), "{found:?}");
    }
    let acme = t1
        .create_account_with(account("Acme", "acme.com", ""))
        .await;
    let refused = t1
        .try_create_contact(pat(&acme.account_id, "pat@acme.com"), "  ")
        .await
        .expect_err("a blank request id");
    assert_eq!(violated_fields(&refused), ["request_id"]);
    let listed = t1
        .public()
        .list_accounts(t1.req(pb::ListAccountsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.accounts.len(), 1, "nothing was created");
    // Empty is no request id: each call creates.
    t1.try_create_account(account("Globex", "", ""), "")
        .await
        .expect("no request id");
    system.stop().await;
}

on_each_database!(
    accounts_round_trip,
    list_accounts_filters_and_pages,
    create_account_validates_and_is_idempotent,
    contacts_follow_their_rules,
    tenants_never_see_each_other,
    data_survives_a_restart,
    concurrent_batch_resolves_create_each_contact_once,
    an_update_clash_names_the_field_another_record_holds,
    a_blank_request_id_is_refused,
);
