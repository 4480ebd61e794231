//! A request id stands for the request it first came with, on SQLite and
//! PostgreSQL: a retry (the same request again, however its text is cased)
//! gets the record the first made; another request under the same id is
//! refused naming `request_id`, and writes nothing; a batch refuses such an
//! item alone. Records made before digests were kept answer as they did.

mod common;

use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::lifecycle::v1::BatchCreateOutcome as O;
use cascade_proto::opportunity::v1 as op;
use cascade_testkit::fixtures::{account, usd, violations};
use cascade_testkit::{Lifecycle, TestDatabase, on_each_database};
use common::System;
use sea_orm::ConnectionTrait;

on_each_database!(
    a_request_id_answers_only_its_own_request,
    racing_creates_under_one_request_id_make_one_record,
);

const T: &str = "idempotency";

/// The one violation of a refused reuse, checked to name the field and the
/// kind of record.
fn assert_reuse_refused(status: &tonic::Status, resource: &str) {
    let found = violations(status);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "request_id");
    assert!(
        found[0]
            .1
            .contains(&format!("used before for a different {resource}")),
        "{found:?}"
    );
}

async fn account_count(lifecycle: &Lifecycle) -> usize {
    lifecycle
        .public()
        .list_accounts(lifecycle.req(lc::ListAccountsRequest::default()))
        .await
        .expect("list accounts")
        .into_inner()
        .accounts
        .len()
}

async fn contact_count(lifecycle: &Lifecycle) -> usize {
    lifecycle
        .public()
        .list_contacts(lifecycle.req(lc::ListContactsRequest::default()))
        .await
        .expect("list contacts")
        .into_inner()
        .contacts
        .len()
}

async fn a_request_id_answers_only_its_own_request(db: TestDatabase) {
    let system = System::start(&db, 1).await;
    let (lifecycle, opps) = (system.lifecycle_as(0, T), system.opportunity_as(0, T));

    // Accounts: a retry, cased differently, is the same request.
    let acme = lifecycle
        .try_create_account(account("Acme", "acme.example", "jo"), "create-acme")
        .await
        .expect("first create");
    let retried = lifecycle
        .try_create_account(account("Acme", " ACME.example ", "jo"), "create-acme")
        .await
        .expect("a retry");
    assert_eq!(retried.account_id, acme.account_id);
    let reused = lifecycle
        .try_create_account(account("Globex", "globex.example", "jo"), "create-acme")
        .await
        .expect_err("another account under the same request id");
    assert_reuse_refused(&reused, "account");
    assert_eq!(account_count(&lifecycle).await, 1, "nothing written");

    // A batch: the same request again is EXISTING, another under a used id
    // is REJECTED naming request_id, and the batch's other item is created.
    let item = |name: &str, domain: &str, request_id: &str| lc::CreateAccountRequest {
        account: Some(account(name, domain, "jo")),
        request_id: request_id.into(),
    };
    let batch = lifecycle
        .public()
        .batch_create_accounts(lifecycle.req(lc::BatchCreateAccountsRequest {
            requests: vec![
                item("Acme", "acme.example", "create-acme"),
                item("Initech", "initech.example", "create-acme"),
                item("Umbrella", "umbrella.example", "create-umbrella"),
            ],
        }))
        .await
        .expect("batch")
        .into_inner();
    let outcomes: Vec<i32> = batch.results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [O::Existing as i32, O::Rejected as i32, O::Created as i32]
    );
    let existing = batch.results[0].account.as_ref().expect("the record");
    assert_eq!(existing.account_id, acme.account_id);
    let refused = &batch.results[1];
    assert!(refused.account.is_none());
    assert_eq!(refused.violations.len(), 1, "{:?}", refused.violations);
    assert_eq!(refused.violations[0].field, "request_id");
    assert!(
        refused.violations[0]
            .description
            .contains("different account"),
        "{:?}",
        refused.violations
    );
    assert_eq!(
        account_count(&lifecycle).await,
        2,
        "only Umbrella was added"
    );

    // Contacts: the email's case does not make another request; a different
    // person does.
    let pat = |email: &str, first_name: &str| lc::Contact {
        account_id: acme.account_id.clone(),
        email: email.into(),
        first_name: first_name.into(),
        ..Default::default()
    };
    let first = lifecycle
        .try_create_contact(pat("pat@acme.example", "Pat"), "create-pat")
        .await
        .expect("first contact");
    let again = lifecycle
        .try_create_contact(pat("Pat@Acme.example", "Pat"), "create-pat")
        .await
        .expect("a retry");
    assert_eq!(again.contact_id, first.contact_id);
    let reused = lifecycle
        .try_create_contact(pat("sam@acme.example", "Sam"), "create-pat")
        .await
        .expect_err("another person under the same request id");
    assert_reuse_refused(&reused, "contact");
    let batch = lifecycle
        .public()
        .batch_create_contacts(lifecycle.req(lc::BatchCreateContactsRequest {
            requests: vec![lc::CreateContactRequest {
                contact: Some(pat("sam@acme.example", "Sam")),
                request_id: "create-pat".into(),
                ..Default::default()
            }],
        }))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.results[0].outcome, O::Rejected as i32);
    assert_eq!(batch.results[0].violations[0].field, "request_id");
    assert_eq!(contact_count(&lifecycle).await, 1, "Sam was not written");

    // Opportunities: what the service sets is not part of the request, nor
    // how a value is written; another deal is.
    let deal = |name: &str| op::Opportunity {
        account_id: acme.account_id.clone(),
        name: name.into(),
        estimated_deal_size: usd(25_000),
        ..Default::default()
    };
    let create = async |opportunity: op::Opportunity| {
        opps.public()
            .create_opportunity(opps.req(op::CreateOpportunityRequest {
                opportunity: Some(opportunity),
                request_id: "open-platform-deal".into(),
            }))
            .await
            .map(|r| r.into_inner().opportunity.expect("opportunity"))
    };
    let opened = create(deal("Platform")).await.expect("first deal");
    // A retry built from the answer: every field the service set (id, step,
    // kind's default, progress, times), the account id upper-cased and the
    // name padded, as the service reads them the same.
    let copied = create(op::Opportunity {
        account_id: acme.account_id.to_uppercase(),
        name: " Platform ".into(),
        ..opened.clone()
    })
    .await
    .expect("a retry");
    assert_eq!(copied.opportunity_id, opened.opportunity_id);
    let reused = create(deal("Services"))
        .await
        .expect_err("another deal under the same request id");
    assert_reuse_refused(&reused, "opportunity");
    let listed = opps
        .public()
        .list_opportunities(opps.req(op::ListOpportunitiesRequest {
            account_id: acme.account_id.clone(),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner()
        .opportunities;
    assert_eq!(listed.len(), 1, "the second deal was not written");

    // A signed contract without a time: the service fills the time in, so
    // it is not part of what was asked. A retry is the same request, and so
    // is one built from the answer (which carries the filled-in time); one
    // giving another time is not.
    let signed = |sign_time: Option<prost_types::Timestamp>| op::Opportunity {
        account_id: acme.account_id.clone(),
        name: "Signed".into(),
        estimated_deal_size: usd(5_000),
        contract: Some(op::Contract {
            document_ref: "doc".into(),
            signed: true,
            sign_time,
            ..Default::default()
        }),
        ..Default::default()
    };
    let create_signed = async |opportunity: op::Opportunity| {
        opps.public()
            .create_opportunity(opps.req(op::CreateOpportunityRequest {
                opportunity: Some(opportunity),
                request_id: "signed-deal".into(),
            }))
            .await
            .map(|r| r.into_inner().opportunity.expect("opportunity"))
    };
    let first = create_signed(signed(None)).await.expect("a signed deal");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let retried = create_signed(signed(None)).await.expect("a retry");
    assert_eq!(retried.opportunity_id, first.opportunity_id);
    let filled = first.contract.as_ref().and_then(|c| c.sign_time);
    assert!(filled.is_some(), "{first:?}");
    let from_answer = create_signed(signed(filled))
        .await
        .expect("from the answer");
    assert_eq!(from_answer.opportunity_id, first.opportunity_id);
    let other_time = cascade_chassis::time::to_timestamp(
        cascade_chassis::time::now() - chrono::Duration::days(3),
    );
    let refused = create_signed(signed(Some(other_time)))
        .await
        .expect_err("another signature time");
    assert_reuse_refused(&refused, "opportunity");

    // An account made before digests were kept (none stored) answers any
    // request under its id, as it did then.
    let hooli = lifecycle
        .try_create_account(account("Hooli", "hooli.example", ""), "made-before")
        .await
        .expect("hooli");
    let conn = cascade_chassis::db::connect(&system.databases()[0].1.settings)
        .await
        .expect("lifecycle's database");
    let forgot = conn
        .execute_unprepared(
            "UPDATE accounts SET create_request_digest = NULL \
             WHERE create_request_id = 'made-before'",
        )
        .await
        .expect("digest removed");
    assert_eq!(forgot.rows_affected(), 1);
    let answered = lifecycle
        .try_create_account(account("Hooli XYZ", "", ""), "made-before")
        .await
        .expect("an old record answers any request");
    assert_eq!(answered.account_id, hooli.account_id);
    assert_eq!(answered.name, "Hooli", "returned unchanged");
    system.stop().await;
}

/// Eight creates under one request id at once: the same request eight times
/// makes one account, which all get; eight different ones make one, and the
/// seven others are refused naming `request_id` (the race is settled by the
/// unique index, then the digest).
async fn racing_creates_under_one_request_id_make_one_record(db: TestDatabase) {
    let system = System::start(&db, 1).await;
    let lifecycle = system.lifecycle_as(0, T);

    let same =
        futures::future::join_all((0..8).map(|_| {
            lifecycle.try_create_account(account("Acme", "acme.example", ""), "race-same")
        }))
        .await;
    let ids: std::collections::BTreeSet<String> = same
        .into_iter()
        .map(|r| r.expect("the same request").account_id)
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");

    let different = futures::future::join_all((0..8).map(|n| {
        lifecycle.try_create_account(
            account(&format!("Company {n}"), &format!("company{n}.example"), ""),
            "race-different",
        )
    }))
    .await;
    let (made, refused): (Vec<_>, Vec<_>) = different.into_iter().partition(Result::is_ok);
    assert_eq!(made.len(), 1, "one create wins: {refused:?}");
    for status in refused.iter().map(|r| r.as_ref().expect_err("refused")) {
        assert_reuse_refused(status, "account");
    }
    assert_eq!(
        account_count(&lifecycle).await,
        2,
        "Acme and the one winner"
    );
    system.stop().await;
}
