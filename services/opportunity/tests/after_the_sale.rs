//! After the sale (issue 19), over real gRPC with a real lifecycle service,
//! on SQLite and PostgreSQL: what an opportunity sells (new business,
//! renewal, upgrade) and who may be sold a renewal or an upgrade; line-item
//! and contract end dates; lifecycle told once when a customer's contracts
//! have ended; the pipeline per kind; people who left the company.

use cascade_chassis::db::statement;
use cascade_opportunity::domain::Date as Day;
use cascade_opportunity::storage::{EVENT_TOPIC, EventKind, EventPayload, Repository};
use cascade_proto::common::v1::{AccountStage as S, Date, OpportunityKind as K};
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::opportunity::v1 as pb;
use cascade_testkit::fixtures::{usd, violations};
use cascade_testkit::{Opportunity, TestDatabase, TestSystem, eventually, on_each_database};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use tonic::Code;
use tonic_types::StatusExt;

on_each_database!(
    a_renewal_or_upgrade_is_for_a_customer_and_every_read_shows_the_kind,
    end_dates_are_real_dates_stored_and_returned,
    contracts_ended_is_reported_once_and_not_while_an_item_runs_on,
    a_renewal_with_a_later_end_defers_contracts_ended_to_its_end,
    the_pipeline_report_splits_every_figure_by_kind,
    a_person_who_left_joins_no_deal_but_stays_where_they_were,
    an_erasure_takes_the_people_out_of_events_that_wait,
    a_person_who_left_stays_whatever_the_case_of_their_id,
);

/// A loss told while lifecycle is down waits in the outbox with its buying
/// group and reason. Erasing a person takes them out of it; erasing the
/// account takes everyone and the reason (free text can name people).
async fn an_erasure_takes_the_people_out_of_events_that_wait(db: TestDatabase) {
    let mut system = keeping_deliveries(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let conn = connect(&db).await;
    let repository = Repository::new(conn.clone());
    let id = lifecycle.create_account("Waiting", "").await.account_id;
    let pat = lifecycle
        .create_contact(&id, "pat@waiting.example")
        .await
        .contact_id;
    let ann = lifecycle
        .create_contact(&id, "ann@waiting.example")
        .await
        .contact_id;
    let deal = opps
        .try_create(pb::Opportunity {
            account_id: id.clone(),
            name: "Waiting deal".into(),
            buying_group_contact_ids: vec![pat.clone(), ann.clone()],
            ..Default::default()
        })
        .await
        .expect("a deal")
        .opportunity_id;
    system.stop_lifecycle().await;
    opps.try_lose(&deal, "Pat Doe chose a rival")
        .await
        .expect("lost while lifecycle is down");
    let lost = async || -> Vec<(Vec<String>, String)> {
        events_of(&conn, &id)
            .await
            .into_iter()
            .filter(|e| e.kind == EventKind::Lost)
            .map(|e| (e.buying_group, e.lost_reason))
            .collect()
    };
    assert_eq!(
        lost().await,
        [(
            vec![pat.clone(), ann.clone()],
            "Pat Doe chose a rival".to_owned()
        )]
    );

    let tenant = cascade_chassis::TenantId::parse(cascade_testkit::TENANT).expect("tenant");
    repository
        .erase_contacts(&tenant, &id, std::slice::from_ref(&pat))
        .await
        .expect("Pat erased");
    assert_eq!(
        lost().await,
        [(vec![ann.clone()], "Pat Doe chose a rival".to_owned())]
    );
    repository
        .erase_account(&tenant, &id)
        .await
        .expect("the account erased");
    assert_eq!(lost().await, [(Vec::<String>::new(), String::new())]);
    system.start_lifecycle().await;
    system.stop().await;
}

fn today() -> chrono::NaiveDate {
    cascade_chassis::time::now().date_naive()
}

/// `days` from today (UTC), as the API takes a date.
fn date_in(days: i64) -> Date {
    let d = today() + chrono::Duration::days(days);
    let day = Day::from_chrono(d);
    Date {
        year: day.year,
        month: day.month as i32,
        day: day.day as i32,
    }
}

/// `days` from today (UTC), as the domain (and the check) takes it.
fn day_in(days: i64) -> Day {
    Day::from_chrono(today() + chrono::Duration::days(days))
}

fn day_of(d: &Date) -> Day {
    Day::new(d.year, d.month as u32, d.day as u32).expect("a real date")
}

/// A one-seat line item of `units` USD ending on `end_date`.
fn seat(units: i64, end_date: Option<Date>) -> pb::LineItem {
    pb::LineItem {
        product: "Seat".into(),
        kind: pb::LineItemKind::Product as i32,
        quantity: 1,
        unit_price: usd(units),
        end_date,
    }
}

/// A small deal with every field its steps need, up to a signed contract
/// ending on `contract_end`; its line items end on `item_ends`.
fn complete_deal(
    account_id: &str,
    buyer: &str,
    kind: K,
    item_ends: &[Option<Date>],
    contract_end: Option<Date>,
) -> pb::Opportunity {
    pb::Opportunity {
        account_id: account_id.into(),
        name: "deal".into(),
        kind: kind as i32,
        estimated_deal_size: usd(10_000),
        close_date: Some(date_in(30)),
        amount: usd(10_000 * item_ends.len() as i64),
        current_situation: "spreadsheets".into(),
        needs: "one place for the pipeline".into(),
        buying_group_contact_ids: vec![buyer.into()],
        line_items: item_ends.iter().map(|end| seat(10_000, *end)).collect(),
        new_reality: "one source of truth".into(),
        contract: Some(pb::Contract {
            document_ref: "dms://contracts/1".into(),
            signed: true,
            sign_time: None,
            end_date: contract_end,
        }),
        ..Default::default()
    }
}

/// Opens `deal`, walks it to WIN and wins it.
async fn win(opps: &Opportunity, deal: pb::Opportunity) -> pb::Opportunity {
    let id = opps.try_create(deal).await.expect("created").opportunity_id;
    for _ in 0..3 {
        opps.try_advance(&id).await.expect("the next step");
    }
    opps.try_win(&id).await.expect("won")
}

/// An account made a customer by winning a deal (items without end), and
/// one of its contacts.
async fn customer(system: &TestSystem, name: &str) -> (String, String) {
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let id = lifecycle.create_account(name, "").await.account_id;
    let buyer = lifecycle
        .create_contact(&id, &format!("buyer@{}.example", name.to_lowercase()))
        .await
        .contact_id;
    win(
        &opps,
        complete_deal(&id, &buyer, K::NewBusiness, &[None], None),
    )
    .await;
    lifecycle.wait_for_stage(&id, S::Implement).await;
    (id, buyer)
}

async fn list(opps: &Opportunity, request: pb::ListOpportunitiesRequest) -> Vec<pb::Opportunity> {
    opps.public()
        .list_opportunities(opps.req(request))
        .await
        .expect("list")
        .into_inner()
        .opportunities
}

/// The opportunity service's own database, read as a test inspects it.
async fn connect(db: &TestDatabase) -> DatabaseConnection {
    Database::connect(db.settings.url.as_str())
        .await
        .expect("the opportunity database is reachable")
}

/// Opportunity keeping delivered payloads, so `events_of` reads what was
/// delivered too (by default a payload is cleared at delivery).
async fn keeping_deliveries(db: &TestDatabase) -> TestSystem {
    TestSystem::opportunity_on_with(db, |settings| {
        settings.outbox.keep_delivered_payloads = true;
    })
    .await
}

/// The events queued for lifecycle about `account_id`, oldest first
/// (delivered ones are kept for a day, their payloads with
/// `keeping_deliveries`).
async fn events_of(conn: &DatabaseConnection, account_id: &str) -> Vec<EventPayload> {
    let rows = conn
        .query_all_raw(statement(
            conn.get_database_backend(),
            "SELECT payload FROM outbox WHERE topic = $1 AND partition_key = $2 ORDER BY id",
            [EVENT_TOPIC.into(), account_id.into()],
        ))
        .await
        .expect("the outbox");
    rows.iter()
        .map(|row| {
            let bytes: Vec<u8> = row.try_get("", "payload").expect("payload");
            EventPayload::decode(&bytes).expect("readable")
        })
        .collect()
}

async fn contracts_ended_of(conn: &DatabaseConnection, account_id: &str) -> Vec<EventPayload> {
    events_of(conn, account_id)
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::ContractsEnded)
        .collect()
}

/// The precondition failures of a FAILED_PRECONDITION: (type, subject, description).
fn preconditions(status: &tonic::Status) -> Vec<(String, String, String)> {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    status
        .get_details_precondition_failure()
        .map(|p| {
            p.violations
                .into_iter()
                .map(|v| (v.r#type, v.subject, v.description))
                .collect()
        })
        .unwrap_or_default()
}

async fn a_renewal_or_upgrade_is_for_a_customer_and_every_read_shows_the_kind(db: TestDatabase) {
    let system = keeping_deliveries(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let conn = connect(&db).await;
    let prospect = lifecycle.create_account("Prospect", "").await.account_id;

    // A renewal for a prospect: refused, naming the stage; nothing written.
    let refused = opps
        .try_create(pb::Opportunity {
            account_id: prospect.clone(),
            name: "renew?".into(),
            kind: K::Renewal as i32,
            ..Default::default()
        })
        .await
        .expect_err("not a customer");
    let failures = preconditions(&refused);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(
        (failures[0].0.as_str(), failures[0].1.clone()),
        ("NOT_A_CUSTOMER", format!("account/{prospect}"))
    );
    assert!(
        failures[0].2.contains("TARGETED") && failures[0].2.contains("RENEWAL"),
        "{}",
        failures[0].2
    );
    assert!(
        list(
            &opps,
            pb::ListOpportunitiesRequest {
                account_id: prospect.clone(),
                ..Default::default()
            }
        )
        .await
        .is_empty(),
        "nothing stored"
    );
    assert!(
        events_of(&conn, &prospect).await.is_empty(),
        "nothing queued"
    );
    assert_eq!(lifecycle.account(&prospect).await.stage, S::Targeted as i32);

    // Unspecified is new business; an unknown number is refused.
    let new_business = opps.create(&prospect, "first sale").await;
    assert_eq!(new_business.kind, K::NewBusiness as i32);
    let unknown = opps
        .try_create(pb::Opportunity {
            account_id: prospect.clone(),
            name: "?".into(),
            kind: 9,
            ..Default::default()
        })
        .await
        .expect_err("unknown kind");
    assert_eq!(violations(&unknown)[0].0, "opportunity.kind");

    // A customer may renew and upgrade.
    let (customer, _) = customer(&system, "Customer").await;
    let renewal = opps
        .try_create(pb::Opportunity {
            account_id: customer.clone(),
            name: "renewal 2027".into(),
            kind: K::Renewal as i32,
            ..Default::default()
        })
        .await
        .expect("a customer renews");
    assert_eq!(renewal.kind, K::Renewal as i32);
    assert_eq!(
        opps.get(&renewal.opportunity_id).await.kind,
        K::Renewal as i32
    );
    let upgrade = opps
        .try_create(pb::Opportunity {
            account_id: customer.clone(),
            name: "more seats".into(),
            kind: K::Upgrade as i32,
            ..Default::default()
        })
        .await
        .expect("a customer upgrades");

    let of_kind = async |kind: K| {
        let mut names: Vec<String> = list(
            &opps,
            pb::ListOpportunitiesRequest {
                kind: kind as i32,
                ..Default::default()
            },
        )
        .await
        .into_iter()
        .map(|o| {
            assert_eq!(o.kind, kind as i32);
            o.name
        })
        .collect();
        names.sort();
        names
    };
    assert_eq!(of_kind(K::Renewal).await, ["renewal 2027"]);
    assert_eq!(of_kind(K::Upgrade).await, ["more seats"]);
    assert_eq!(of_kind(K::NewBusiness).await, ["deal", "first sale"]);
    assert_eq!(
        list(&opps, pb::ListOpportunitiesRequest::default())
            .await
            .len(),
        4,
        "no kind: all"
    );
    let bad_filter = opps
        .public()
        .list_opportunities(opps.req(pb::ListOpportunitiesRequest {
            kind: 9,
            ..Default::default()
        }))
        .await
        .expect_err("unknown kind");
    assert_eq!(violations(&bad_filter)[0].0, "kind");

    // The kind changes while open, under the same rule.
    let kind_only = |kind: K| pb::Opportunity {
        kind: kind as i32,
        ..Default::default()
    };
    let refused = opps
        .try_update(
            &new_business.opportunity_id,
            kind_only(K::Upgrade),
            &["kind"],
        )
        .await
        .expect_err("the prospect is no customer");
    assert_eq!(preconditions(&refused)[0].0, "NOT_A_CUSTOMER");
    assert_eq!(
        opps.get(&new_business.opportunity_id).await.kind,
        K::NewBusiness as i32,
        "unchanged"
    );
    let changed = opps
        .try_update(
            &upgrade.opportunity_id,
            kind_only(K::NewBusiness),
            &["kind"],
        )
        .await
        .expect("an upgrade becomes new business");
    assert_eq!(changed.kind, K::NewBusiness as i32);
    let changed = opps
        .try_update(&upgrade.opportunity_id, kind_only(K::Upgrade), &["kind"])
        .await
        .expect("and back");
    assert_eq!(changed.kind, K::Upgrade as i32);

    // Every event lifecycle is told carries the kind: the first deal's
    // opening and win as new business, the renewal's and upgrade's opening,
    // and the upgrade's kind changes (opened again with the new kind).
    let told: Vec<(EventKind, String, K)> = events_of(&conn, &customer)
        .await
        .into_iter()
        .map(|e| {
            let kind = K::try_from(e.opportunity_kind.to_proto()).expect("a kind");
            (e.kind, e.opportunity_id, kind)
        })
        .collect();
    let (r, u) = (&renewal.opportunity_id, &upgrade.opportunity_id);
    assert_eq!(
        told[2..],
        [
            (EventKind::Opened, r.clone(), K::Renewal),
            (EventKind::Opened, u.clone(), K::Upgrade),
            (EventKind::Opened, u.clone(), K::NewBusiness),
            (EventKind::Opened, u.clone(), K::Upgrade),
        ]
    );
    assert_eq!(
        told[..2].iter().map(|t| (t.0, t.2)).collect::<Vec<_>>(),
        [
            (EventKind::Opened, K::NewBusiness),
            (EventKind::Won, K::NewBusiness)
        ]
    );
    // Lifecycle has them (Account.open_opportunities, with their kinds).
    let mut open = lifecycle
        .wait_for_account(&customer, "the renewal and upgrade in lifecycle", |a| {
            a.open_opportunities.len() == 2
                && a.open_opportunities
                    .iter()
                    .any(|o| o.opportunity_id == *u && o.kind == K::Upgrade as i32)
        })
        .await
        .open_opportunities;
    open.sort_by(|a, b| a.opportunity_id.cmp(&b.opportunity_id));
    let mut expected = vec![
        lc::OpenOpportunity {
            opportunity_id: r.clone(),
            kind: K::Renewal as i32,
        },
        lc::OpenOpportunity {
            opportunity_id: u.clone(),
            kind: K::Upgrade as i32,
        },
    ];
    expected.sort_by(|a, b| a.opportunity_id.cmp(&b.opportunity_id));
    assert_eq!(open, expected);
    system.stop().await;
}

async fn end_dates_are_real_dates_stored_and_returned(db: TestDatabase) {
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let id = lifecycle.create_account("Dates", "").await.account_id;
    let (leap, year_end) = (
        Date {
            year: 2028,
            month: 2,
            day: 29,
        },
        Date {
            year: 2027,
            month: 12,
            day: 31,
        },
    );
    let created = opps
        .try_create(pb::Opportunity {
            account_id: id.clone(),
            name: "terms".into(),
            line_items: vec![seat(100, Some(leap)), seat(200, None)],
            contract: Some(pb::Contract {
                document_ref: "doc".into(),
                signed: false,
                sign_time: None,
                end_date: Some(year_end),
            }),
            ..Default::default()
        })
        .await
        .expect("created");
    let ends = |o: &pb::Opportunity| {
        (
            o.line_items.iter().map(|i| i.end_date).collect::<Vec<_>>(),
            o.contract.as_ref().and_then(|c| c.end_date),
        )
    };
    assert_eq!(ends(&created), (vec![Some(leap), None], Some(year_end)));
    assert_eq!(
        ends(&opps.get(&created.opportunity_id).await),
        ends(&created)
    );

    // Only the contract's end date, through its own mask path.
    let later = Date {
        year: 2029,
        month: 1,
        day: 31,
    };
    let updated = opps
        .try_update(
            &created.opportunity_id,
            pb::Opportunity {
                contract: Some(pb::Contract {
                    end_date: Some(later),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &["contract.end_date"],
        )
        .await
        .expect("contract end date");
    assert_eq!(ends(&updated), (vec![Some(leap), None], Some(later)));
    assert_eq!(
        updated.contract.as_ref().map(|c| c.document_ref.as_str()),
        Some("doc"),
        "the rest of the contract stays"
    );

    // Not a calendar date: refused naming the field; nothing changes.
    let not_a_day = |year, month, day| Some(Date { year, month, day });
    let refused = opps
        .try_update(
            &created.opportunity_id,
            pb::Opportunity {
                line_items: vec![seat(100, None), seat(100, not_a_day(2027, 2, 29))],
                contract: Some(pb::Contract {
                    document_ref: "doc".into(),
                    end_date: not_a_day(2027, 13, 1),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &["line_items", "contract"],
        )
        .await
        .expect_err("not calendar dates");
    assert_eq!(
        violations(&refused),
        [
            (
                "opportunity.line_items[1].end_date".to_owned(),
                "must be a valid calendar date from 1970-01-01 to 9999-12-31".to_owned()
            ),
            (
                "opportunity.contract.end_date".to_owned(),
                "must be a valid calendar date from 1970-01-01 to 9999-12-31".to_owned()
            ),
        ]
    );
    let refused = opps
        .try_create(pb::Opportunity {
            account_id: id.clone(),
            name: "year zero".into(),
            line_items: vec![seat(1, not_a_day(0, 1, 1))],
            ..Default::default()
        })
        .await
        .expect_err("year 0");
    assert_eq!(
        violations(&refused)[0].0,
        "opportunity.line_items[0].end_date"
    );
    // A date a person could not have meant, a signature time on a contract
    // not signed (it would be dropped), and a signature yet to come: each
    // refused naming its field.
    let at = |time| Some(cascade_chassis::time::to_timestamp(time));
    let now = cascade_chassis::time::now();
    let refused = opps
        .try_update(
            &created.opportunity_id,
            pb::Opportunity {
                line_items: vec![seat(100, not_a_day(1900, 1, 1))],
                ..Default::default()
            },
            &["line_items"],
        )
        .await
        .expect_err("1900");
    assert_eq!(
        violations(&refused)[0].0,
        "opportunity.line_items[0].end_date"
    );
    for (contract, description) in [
        (
            pb::Contract {
                signed: false,
                sign_time: at(now),
                ..Default::default()
            },
            "is set only on a signed contract (contract.signed true)",
        ),
        (
            pb::Contract {
                signed: true,
                sign_time: at(now + chrono::Duration::days(365 * 70)),
                ..Default::default()
            },
            "must not be in the future",
        ),
    ] {
        let refused = opps
            .try_update(
                &created.opportunity_id,
                pb::Opportunity {
                    contract: Some(contract),
                    ..Default::default()
                },
                &["contract"],
            )
            .await
            .expect_err(description);
        assert_eq!(
            violations(&refused),
            [(
                "opportunity.contract.sign_time".to_owned(),
                description.to_owned()
            )]
        );
    }
    assert_eq!(
        ends(&opps.get(&created.opportunity_id).await),
        ends(&updated),
        "unchanged"
    );

    // Signed, then cleared by a client that sends back what it read: the
    // stored time is no news, and the time goes with the signature. Under
    // the mask `contract.signed` the time is not written at all.
    let signed_at = now - chrono::Duration::days(2);
    let signed = opps
        .try_update(
            &created.opportunity_id,
            pb::Opportunity {
                contract: Some(pb::Contract {
                    document_ref: "doc".into(),
                    signed: true,
                    sign_time: at(signed_at),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &["contract"],
        )
        .await
        .expect("signed");
    let mut read = signed.contract.clone().expect("the contract");
    assert_eq!(read.sign_time, at(signed_at));
    read.signed = false;
    let cleared = opps
        .try_update(
            &created.opportunity_id,
            pb::Opportunity {
                contract: Some(read.clone()),
                ..Default::default()
            },
            &["contract"],
        )
        .await
        .expect("cleared with the time it had");
    let contract = cleared.contract.expect("the contract");
    assert!(
        !contract.signed && contract.sign_time.is_none(),
        "{contract:?}"
    );
    opps.try_update(
        &created.opportunity_id,
        pb::Opportunity {
            contract: Some(pb::Contract {
                signed: false,
                sign_time: at(now),
                ..Default::default()
            }),
            ..Default::default()
        },
        &["contract.signed"],
    )
    .await
    .expect("the time is not under the mask");
    system.stop().await;
}

async fn contracts_ended_is_reported_once_and_not_while_an_item_runs_on(db: TestDatabase) {
    let system = keeping_deliveries(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let conn = connect(&db).await;
    let check = Repository::new(conn.clone());

    // Ended: every item's term is over (one by the contract's end date).
    let ended = lifecycle.create_account("Ended", "").await.account_id;
    let ann = lifecycle
        .create_contact(&ended, "ann@ended.example")
        .await
        .contact_id;
    let last_day = date_in(-10);
    // Open before the win, so that the report (any time after it) counts it.
    let open = opps.create(&ended, "still talking").await;
    let deal = win(
        &opps,
        complete_deal(
            &ended,
            &ann,
            K::NewBusiness,
            &[Some(date_in(-40)), None],
            Some(last_day),
        ),
    )
    .await;

    // Running on: one item has no end, and the contract neither.
    let running = lifecycle.create_account("Running", "").await.account_id;
    let bob = lifecycle
        .create_contact(&running, "bob@running.example")
        .await
        .contact_id;
    win(
        &opps,
        complete_deal(
            &running,
            &bob,
            K::NewBusiness,
            &[Some(date_in(-40)), None],
            None,
        ),
    )
    .await;

    // The service's own check finds the ended account.
    let reported = eventually("the check to report Ended", async || {
        let reported = contracts_ended_of(&conn, &ended).await;
        if reported.is_empty() {
            Err("not yet")
        } else {
            Ok(reported)
        }
    })
    .await;
    assert_eq!(
        reported,
        [EventPayload {
            kind: EventKind::ContractsEnded,
            opportunity_id: deal.opportunity_id.clone(),
            buying_group: Vec::new(),
            other_open: 1,
            opportunity_kind: cascade_opportunity::domain::OpportunityKind::NewBusiness,
            contracts_end: Some(day_of(&last_day)),
            lost_reason: String::new(),
            actor: String::new(),
            opportunity_version: 0,
        }]
    );
    assert_eq!(open.kind, K::NewBusiness as i32);

    // Checking again (as another replica would, or later) reports nothing
    // more, however late; Running is never reported.
    for today in [day_in(0), day_in(0), day_in(3650)] {
        assert_eq!(check.report_ended_contracts(today).await.expect("check"), 0);
    }
    system.settled().await;
    assert_eq!(contracts_ended_of(&conn, &ended).await.len(), 1, "once");
    assert!(contracts_ended_of(&conn, &running).await.is_empty());

    // Erasing the account erases what was reported of it.
    let terms_of = async |account: &str| {
        db.columns_containing(account)
            .await
            .into_iter()
            .filter(|column| !column.starts_with("outbox."))
            .collect::<Vec<_>>()
    };
    assert!(!terms_of(&ended).await.is_empty());
    let admin = lifecycle.as_actor("dpo@tenant.example");
    admin
        .public()
        .delete_account(admin.req(lc::DeleteAccountRequest {
            account_id: ended.clone(),
            force: true,
        }))
        .await
        .expect("erased");
    eventually("opportunity to erase the account", async || {
        let left = terms_of(&ended).await;
        if left.is_empty() { Ok(()) } else { Err(left) }
    })
    .await;
    assert!(!terms_of(&running).await.is_empty(), "only that account");
    system.stop().await;
}

async fn a_renewal_with_a_later_end_defers_contracts_ended_to_its_end(db: TestDatabase) {
    let system = keeping_deliveries(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let conn = connect(&db).await;
    let check = Repository::new(conn.clone());
    // Churn when the contracts end, to see lifecycle act on the report.
    lifecycle
        .set_settings(
            lc::LifecycleSettings {
                churn_when_contracts_end: true,
                ..Default::default()
            },
            &["churn_when_contracts_end"],
        )
        .await;
    let id = lifecycle.create_account("Renewing", "").await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@renewing.example")
        .await
        .contact_id;

    // The first term is over before the renewal is won: reported once.
    let first_end = date_in(-10);
    win(
        &opps,
        complete_deal(&id, &ann, K::NewBusiness, &[Some(first_end)], None),
    )
    .await;
    eventually(
        "the first end to be reported",
        async || match contracts_ended_of(&conn, &id).await.len() {
            1 => Ok(()),
            n => Err(n),
        },
    )
    .await;
    let churned = lifecycle.wait_for_stage(&id, S::Churned).await;
    let history = lifecycle.transitions(&id).await;
    let last = history.last().expect("the churn");
    assert_eq!(
        (last.to_stage, last.cause),
        (
            S::Churned as i32,
            lc::TransitionCause::ContractsEnded as i32
        )
    );
    let reported_as = format!("contracts-ended:{id}:{}:", day_of(&first_end).iso());
    assert!(last.event_id.starts_with(&reported_as), "{}", last.event_id);
    // Won back on a deal whose contract ended the same day: a new term,
    // over already, reported again (it used to be taken for the first
    // report, and the customer stayed one with every contract ended).
    win(
        &opps,
        complete_deal(&id, &ann, K::NewBusiness, &[Some(first_end)], None),
    )
    .await;
    eventually(
        "the same end to be reported for the new term",
        async || match contracts_ended_of(&conn, &id).await.len() {
            2 => Ok(()),
            n => Err(n),
        },
    )
    .await;
    lifecycle
        .wait_for_account(&id, "churned again", |a| {
            a.stage == S::Churned as i32 && a.stage_entered_time != churned.stage_entered_time
        })
        .await;
    assert_eq!(churned.stage, S::Churned as i32);

    // Won back as new business (a former customer cannot renew), then
    // renewed for a term running past today.
    let winback_end = date_in(20);
    win(
        &opps,
        complete_deal(&id, &ann, K::NewBusiness, &[Some(winback_end)], None),
    )
    .await;
    lifecycle.wait_for_stage(&id, S::Implement).await;
    let renewal_end = date_in(400);
    let renewal = win(
        &opps,
        complete_deal(
            &id,
            &ann,
            K::Renewal,
            &[Some(date_in(100)), Some(renewal_end)],
            None,
        ),
    )
    .await;
    let upgrade = opps
        .try_create(pb::Opportunity {
            account_id: id.clone(),
            name: "more seats".into(),
            kind: K::Upgrade as i32,
            ..Default::default()
        })
        .await
        .expect("an open upgrade");

    // Not while the renewal runs: not today, not after the win-back's end,
    // not on the renewal's last day.
    for today in [day_in(0), day_in(21), day_of(&renewal_end)] {
        assert_eq!(
            check.report_ended_contracts(today).await.expect("check"),
            0,
            "{today:?}"
        );
    }
    assert_eq!(contracts_ended_of(&conn, &id).await.len(), 2);
    // The day after it: reported, naming the renewal, once.
    let after = Day::from_chrono(
        day_of(&renewal_end)
            .to_chrono()
            .and_then(|d| d.succ_opt())
            .expect("a next day"),
    );
    assert_eq!(check.report_ended_contracts(after).await.expect("check"), 1);
    assert_eq!(check.report_ended_contracts(after).await.expect("check"), 0);
    let reported = contracts_ended_of(&conn, &id).await;
    assert_eq!(reported.len(), 3);
    assert_eq!(
        (
            reported[2].opportunity_id.as_str(),
            reported[2].opportunity_kind.to_proto(),
            reported[2].contracts_end,
            reported[2].other_open,
        ),
        (
            renewal.opportunity_id.as_str(),
            K::Renewal as i32,
            Some(day_of(&renewal_end)),
            1,
        )
    );
    assert_eq!(upgrade.kind, K::Upgrade as i32);
    system.settled().await;
    system.stop().await;
}

async fn the_pipeline_report_splits_every_figure_by_kind(db: TestDatabase) {
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let start = cascade_chassis::time::to_timestamp(
        cascade_chassis::time::now() - chrono::Duration::hours(1),
    );
    // Won new business: 10,000 USD (the deal that makes the customer).
    let (customer, buyer) = customer(&system, "Kinds").await;
    let prospect = lifecycle
        .create_account("Kinds prospect", "")
        .await
        .account_id;
    let deal =
        |account: &str, name: &str, kind: K, estimate: Option<cascade_proto::common::v1::Money>| {
            pb::Opportunity {
                account_id: account.into(),
                name: name.into(),
                kind: kind as i32,
                estimated_deal_size: estimate,
                ..Default::default()
            }
        };
    // New business open at DISCOVER: 1,000 USD.
    opps.try_create(deal(&prospect, "nb", K::NewBusiness, usd(1_000)))
        .await
        .expect("nb");
    // Renewal open at DISCOVER, 20,000 USD; another won at 20,000 USD.
    opps.try_create(deal(&customer, "r1", K::Renewal, usd(20_000)))
        .await
        .expect("r1");
    win(
        &opps,
        complete_deal(&customer, &buyer, K::Renewal, &[None, None], None),
    )
    .await;
    // Upgrades: one open without money, one lost at 5,000 USD.
    opps.try_create(deal(&customer, "u1", K::Upgrade, None))
        .await
        .expect("u1");
    let lost = opps
        .try_create(deal(&customer, "u2", K::Upgrade, usd(5_000)))
        .await
        .expect("u2")
        .opportunity_id;
    opps.try_lose(&lost, "no budget").await.expect("lost");
    let end = cascade_chassis::time::to_timestamp(
        cascade_chassis::time::now() + chrono::Duration::hours(1),
    );

    let report = opps
        .public()
        .get_pipeline_report(opps.req(pb::GetPipelineReportRequest {
            start_time: Some(start),
            end_time: Some(end),
        }))
        .await
        .expect("report")
        .into_inner();
    let kinds: Vec<i32> = report.by_kind.iter().map(|k| k.kind).collect();
    assert_eq!(
        kinds,
        [K::NewBusiness as i32, K::Renewal as i32, K::Upgrade as i32]
    );
    // (open per step (count, without money), won, won without, lost, lost without)
    type Counts = (Vec<(i64, i64)>, i64, i64, i64, i64);
    let counts = |c: &pb::PipelineCounts| -> Counts {
        (
            c.steps
                .iter()
                .map(|s| (s.open_count, s.without_amount_count))
                .collect(),
            c.won_count,
            c.won_without_amount_count,
            c.lost_count,
            c.lost_without_amount_count,
        )
    };
    // (open per step (count, total units), won (count, units), lost (count, units))
    type Sums = (Vec<(i64, i64)>, (i64, i64), (i64, i64));
    let sums = |p: &pb::CurrencyPipeline| -> Sums {
        assert_eq!(p.currency_code, "USD");
        let units =
            |m: &Option<cascade_proto::common::v1::Money>| m.as_ref().map_or(0, |m| m.units);
        (
            p.steps
                .iter()
                .map(|s| (s.open_count, units(&s.total_amount)))
                .collect(),
            (p.won_count, units(&p.won_amount)),
            (p.lost_count, units(&p.lost_amount)),
        )
    };
    let idle = [(0, 0); 3];
    let with_discover = |first: (i64, i64)| {
        let mut steps = vec![first];
        steps.extend(idle.iter().copied());
        steps
    };
    let by_kind: Vec<(Counts, Sums)> = report
        .by_kind
        .iter()
        .map(|k| {
            (
                counts(k.counts.as_ref().expect("counts")),
                sums(k.pipeline.as_ref().expect("pipeline")),
            )
        })
        .collect();
    assert_eq!(
        by_kind,
        [
            (
                (with_discover((1, 0)), 1, 0, 0, 0),
                (with_discover((1, 1_000)), (1, 10_000), (0, 0))
            ),
            (
                (with_discover((1, 0)), 1, 0, 0, 0),
                (with_discover((1, 20_000)), (1, 20_000), (0, 0))
            ),
            (
                (with_discover((1, 1)), 0, 0, 1, 0),
                (with_discover((0, 0)), (0, 0), (1, 5_000))
            ),
        ]
    );
    // The top-level figures are the sums over the kinds.
    assert_eq!(
        counts(report.counts.as_ref().expect("counts")),
        (with_discover((3, 1)), 2, 0, 1, 0)
    );
    assert_eq!(
        sums(report.pipeline.as_ref().expect("pipeline")),
        (with_discover((2, 21_000)), (2, 30_000), (1, 5_000))
    );
    let weighted: Vec<i64> = report
        .by_kind
        .iter()
        .map(|k| {
            k.pipeline.as_ref().expect("pipeline").steps[0]
                .weighted_amount
                .as_ref()
                .map_or(0, |m| m.units)
        })
        .collect();
    assert_eq!(weighted, [100, 2_000, 0], "DISCOVER at 10%");
    system.stop().await;
}

async fn a_person_who_left_joins_no_deal_but_stays_where_they_were(db: TestDatabase) {
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let id = lifecycle.create_account("Leavers", "").await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@leavers.example")
        .await
        .contact_id;
    let bob = lifecycle
        .create_contact(&id, "bob@leavers.example")
        .await
        .contact_id;
    let stakeholder = |contact_id: &str| pb::Stakeholder {
        contact_id: contact_id.into(),
        name: String::new(),
        role: pb::StakeholderRole::Champion as i32,
    };
    let deal = opps
        .try_create(pb::Opportunity {
            account_id: id.clone(),
            name: "before Ann left".into(),
            buying_group_contact_ids: vec![ann.clone()],
            stakeholders: vec![stakeholder(&ann)],
            ..Default::default()
        })
        .await
        .expect("created");
    lifecycle
        .public()
        .deactivate_contact(lifecycle.req(lc::DeactivateContactRequest {
            contact_id: ann.clone(),
            reason: "left the company".into(),
        }))
        .await
        .expect("Ann left");
    let left = format!("contact {ann} is no longer at the company (DeactivateContact)");

    // Named anew: refused, per field.
    let refused = opps
        .try_create(pb::Opportunity {
            account_id: id.clone(),
            name: "after Ann left".into(),
            buying_group_contact_ids: vec![bob.clone(), ann.clone()],
            stakeholders: vec![stakeholder(&ann)],
            ..Default::default()
        })
        .await
        .expect_err("Ann left");
    assert_eq!(
        violations(&refused),
        [
            (
                "opportunity.buying_group_contact_ids[1]".to_owned(),
                left.clone()
            ),
            (
                "opportunity.stakeholders[0].contact_id".to_owned(),
                left.clone()
            ),
        ]
    );
    // Where she already was, she stays: the update keeps her and adds Bob.
    let kept = opps
        .try_update(
            &deal.opportunity_id,
            pb::Opportunity {
                buying_group_contact_ids: vec![ann.clone(), bob.clone()],
                stakeholders: vec![stakeholder(&ann), stakeholder(&bob)],
                ..Default::default()
            },
            &["buying_group_contact_ids", "stakeholders"],
        )
        .await
        .expect("Ann stays, Bob joins");
    assert_eq!(kept.buying_group_contact_ids, [ann.clone(), bob.clone()]);
    // Moved into the buying group of a deal she was not in: refused.
    let other = opps
        .try_create(pb::Opportunity {
            account_id: id.clone(),
            name: "Bob's".into(),
            buying_group_contact_ids: vec![bob.clone()],
            ..Default::default()
        })
        .await
        .expect("Bob's deal");
    let refused = opps
        .try_update(
            &other.opportunity_id,
            pb::Opportunity {
                buying_group_contact_ids: vec![bob.clone(), ann.clone()],
                ..Default::default()
            },
            &["buying_group_contact_ids"],
        )
        .await
        .expect_err("Ann left");
    assert_eq!(
        violations(&refused),
        [(
            "opportunity.buying_group_contact_ids[1]".to_owned(),
            left.clone()
        )]
    );
    system.stop().await;
}

/// Someone who left stays in a buying group they were in whatever case a
/// client writes their id back in: ids compare as stored (lower case).
async fn a_person_who_left_stays_whatever_the_case_of_their_id(db: TestDatabase) {
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let id = lifecycle.create_account("Leavers", "").await.account_id;
    let cy = lifecycle
        .create_contact(&id, "cy@leavers.example")
        .await
        .contact_id;
    let deal = opps
        .try_create(pb::Opportunity {
            account_id: id.clone(),
            name: "before Cy left".into(),
            buying_group_contact_ids: vec![cy.clone()],
            ..Default::default()
        })
        .await
        .expect("created");
    lifecycle
        .public()
        .deactivate_contact(lifecycle.req(lc::DeactivateContactRequest {
            contact_id: cy.clone(),
            reason: "left the company".into(),
        }))
        .await
        .expect("Cy left");
    let kept = opps
        .try_update(
            &deal.opportunity_id,
            pb::Opportunity {
                buying_group_contact_ids: vec![cy.to_uppercase()],
                ..Default::default()
            },
            &["buying_group_contact_ids"],
        )
        .await
        .expect("Cy stays where Cy was");
    assert_eq!(kept.buying_group_contact_ids, vec![cy.clone()]);
    assert_eq!(
        opps.get(&deal.opportunity_id)
            .await
            .buying_group_contact_ids,
        [cy]
    );
    system.stop().await;
}
