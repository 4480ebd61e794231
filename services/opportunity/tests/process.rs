//! The opportunity process over real gRPC with a real lifecycle service, on
//! SQLite and PostgreSQL: the source document's walk from DISCOVER to won,
//! lost deals, the pipeline report, and the checks against lifecycle.

use cascade_proto::common::v1::{AccountStage as S, ContactStage as C, CustomerType, Date, Money};
use cascade_proto::opportunity::v1 as pb;
use cascade_testkit::fixtures::{
    mask, money, precondition_subjects, usd, violated_fields, violations,
};
use cascade_testkit::{Opportunity, TestDatabase, TestSystem, on_each_database};
use tonic::Code;

/// Everything a deal needs from QUALIFY on (a large one with stakeholders).
fn qualify_fields(amount: i64, buying_group: Vec<String>) -> pb::Opportunity {
    pb::Opportunity {
        close_date: Some(Date {
            year: 2027,
            month: 3,
            day: 31,
        }),
        amount: usd(amount),
        current_situation: "pipeline kept in spreadsheets".into(),
        needs: "one place for the revenue lifecycle".into(),
        buying_group_contact_ids: buying_group,
        ..Default::default()
    }
}

async fn the_source_process_from_discover_to_won(db: TestDatabase) {
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let id = lifecycle.create_account("Initech", "").await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@initech.example")
        .await
        .contact_id;
    let bob = lifecycle
        .create_contact(&id, "bob@initech.example")
        .await
        .contact_id;

    let created = opps
        .try_create(pb::Opportunity {
            account_id: id.clone(),
            name: "Initech platform".into(),
            owner_id: "peter@seller.example".into(),
            buying_group_contact_ids: vec![ann.clone()],
            ..Default::default()
        })
        .await
        .expect("created");
    let oid = created.opportunity_id.clone();
    assert_eq!(
        (created.step, created.status),
        (
            pb::OpportunityStep::Discover as i32,
            pb::OpportunityStatus::Open as i32
        )
    );
    assert_eq!(created.progress[0].display_name, "Discover");
    assert!(!created.progress[0].complete);
    lifecycle.wait_for_stage(&id, S::Pipeline).await;
    lifecycle.wait_for_contact_stage(&ann, C::Opportunity).await;

    // DISCOVER needs an estimated deal size.
    let refused = opps.try_advance(&oid).await.expect_err("no estimate");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(precondition_subjects(&refused), ["estimated_deal_size"]);
    opps.try_update(
        &oid,
        pb::Opportunity {
            estimated_deal_size: usd(250_000),
            ..Default::default()
        },
        &["estimated_deal_size"],
    )
    .await
    .expect("estimate");
    let qualify = opps.try_advance(&oid).await.expect("to QUALIFY");
    assert_eq!(qualify.step, pb::OpportunityStep::Qualify as i32);

    // QUALIFY: a large deal also needs stakeholders and a competitor. Bob joins the buying group.
    let filled = opps
        .try_update(
            &oid,
            qualify_fields(250_000, vec![ann.clone(), bob.clone()]),
            &[
                "close_date",
                "amount",
                "current_situation",
                "needs",
                "buying_group_contact_ids",
            ],
        )
        .await
        .expect("qualify fields");
    let qualify_progress = &filled.progress[1];
    assert!(!qualify_progress.complete);
    let refused = opps.try_advance(&oid).await.expect_err("large deal");
    assert_eq!(
        precondition_subjects(&refused),
        ["stakeholders", "competitors"]
    );
    lifecycle.wait_for_contact_stage(&bob, C::Opportunity).await;
    opps.try_update(
        &oid,
        pb::Opportunity {
            stakeholders: vec![
                pb::Stakeholder {
                    contact_id: ann.clone(),
                    name: String::new(),
                    role: pb::StakeholderRole::DecisionMaker as i32,
                },
                pb::Stakeholder {
                    contact_id: String::new(),
                    name: "Lena Legal".into(),
                    role: pb::StakeholderRole::Legal as i32,
                },
            ],
            competitors: vec![pb::Competitor {
                name: "Rival CRM".into(),
                notes: "incumbent".into(),
            }],
            ..Default::default()
        },
        &["stakeholders", "competitors"],
    )
    .await
    .expect("stakeholders");
    opps.try_advance(&oid).await.expect("to PROPOSE");

    // PROPOSE: line items and the new reality; the amount follows the items.
    let refused = opps.try_advance(&oid).await.expect_err("no proposal");
    assert_eq!(
        precondition_subjects(&refused),
        ["line_items", "new_reality"]
    );
    let proposed = opps
        .try_update(
            &oid,
            pb::Opportunity {
                line_items: vec![
                    pb::LineItem {
                        product: "Platform".into(),
                        kind: pb::LineItemKind::Product as i32,
                        quantity: 2,
                        unit_price: usd(100_000),
                        end_date: None,
                    },
                    pb::LineItem {
                        product: "Onboarding".into(),
                        kind: pb::LineItemKind::Service as i32,
                        quantity: 1,
                        unit_price: usd(30_000),
                        end_date: None,
                    },
                ],
                amount_from_line_items: true,
                new_reality: "one source of truth for every account".into(),
                ..Default::default()
            },
            &["line_items", "amount_from_line_items", "new_reality"],
        )
        .await
        .expect("proposal");
    assert_eq!(proposed.amount, usd(230_000));
    opps.try_advance(&oid).await.expect("to WIN");

    // WIN: a contract attached and marked signed by a person.
    let refused = opps.try_win(&oid).await.expect_err("no contract");
    assert_eq!(
        precondition_subjects(&refused),
        ["contract.document_ref", "contract.signed"]
    );
    opps.try_update(
        &oid,
        pb::Opportunity {
            contract: Some(pb::Contract {
                document_ref: "dms://contracts/initech-2027".into(),
                signed: true,
                sign_time: None,
                end_date: None,
            }),
            ..Default::default()
        },
        &["contract"],
    )
    .await
    .expect("contract");
    let won = opps.try_win(&oid).await.expect("won");
    assert_eq!(won.status, pb::OpportunityStatus::Won as i32);
    assert!(won.close_time.is_some());
    let steps: Vec<i32> = won.step_entries.iter().map(|e| e.step).collect();
    assert_eq!(steps, [1, 2, 3, 4], "every step entered once, in order");
    // A retry of the win (its answer lost) is answered with the deal as it
    // is; losing it now is refused.
    let again = opps.try_win(&oid).await.expect("a retried win");
    assert_eq!(again, won, "nothing changed");
    let lost = opps.try_lose(&oid, "too late").await.expect_err("won");
    assert_eq!(lost.code(), Code::FailedPrecondition);

    let customer = lifecycle.wait_for_stage(&id, S::Implement).await;
    assert_eq!(customer.customer_type, CustomerType::Customer as i32);
    lifecycle.wait_for_contact_stage(&ann, C::Customer).await;
    lifecycle.wait_for_contact_stage(&bob, C::Customer).await;

    let closed = opps
        .try_update(
            &oid,
            pb::Opportunity {
                name: "renamed".into(),
                ..Default::default()
            },
            &["name"],
        )
        .await
        .expect_err("closed");
    assert_eq!(closed.code(), Code::FailedPrecondition);
    system.stop().await;
}

async fn a_lost_deal_nurtures_only_when_it_was_the_last_open_one(db: TestDatabase) {
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let id = lifecycle.create_account("Globex", "").await.account_id;
    let first = opps.create(&id, "First").await.opportunity_id;
    let second = opps.create(&id, "Second").await.opportunity_id;
    lifecycle.wait_for_stage(&id, S::Pipeline).await;

    let no_reason = opps
        .try_lose(&first, "")
        .await
        .expect_err("reason required");
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    opps.try_lose(&first, "budget cut")
        .await
        .expect("first lost");
    // Once the delivery has arrived (opportunity's outbox drained), check it
    // did not nurture.
    system.settled().await;
    assert_eq!(lifecycle.account(&id).await.stage, S::Pipeline as i32);
    opps.try_lose(&second, "budget cut")
        .await
        .expect("second lost");
    let nurtured = lifecycle.wait_for_stage(&id, S::Engaged).await;
    assert_eq!(nurtured.recycle_summary.expect("summary").nurture_count, 1);
    // A retried loss with the same reason changes nothing and tells
    // lifecycle nothing more (no second nurture); another reason is refused.
    let before = opps.get(&second).await;
    let again = opps
        .try_lose(&second, "budget cut")
        .await
        .expect("a retried loss");
    assert_eq!(again, before);
    let other = opps
        .try_lose(&second, "a rival")
        .await
        .expect_err("lost already, for another reason");
    assert_eq!(other.code(), Code::FailedPrecondition);
    system.settled().await;
    let account = lifecycle.account(&id).await;
    assert_eq!(
        account.recycle_summary.expect("summary").nurture_count,
        1,
        "nurtured once"
    );

    // Creating for an unknown account is NOT_FOUND.
    let unknown = opps
        .try_create(pb::Opportunity {
            account_id: "0192f0c4-8b6e-7cc2-9d7e-7d1c7f3b5a10".into(),
            name: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown account");
    assert_eq!(unknown.code(), Code::NotFound);
    system.stop().await;
}

/// A contact is an OPPORTUNITY while in an open deal's buying group
/// (DESIGN): taken out of the group, or when the deal is lost, and in no
/// other open deal, it gets back the stage it had, a person's choice
/// included.
async fn leaving_a_buying_group_gives_a_contact_its_stage_back(db: TestDatabase) {
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let id = lifecycle.create_account("Hooli", "").await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@hooli.example")
        .await
        .contact_id;
    let bob = lifecycle
        .create_contact(&id, "bob@hooli.example")
        .await
        .contact_id;
    // A seller already judged Ann sales-qualified.
    lifecycle
        .public()
        .update_contact(
            lifecycle.req(cascade_proto::lifecycle::v1::UpdateContactRequest {
                contact: Some(cascade_proto::lifecycle::v1::Contact {
                    contact_id: ann.clone(),
                    stage: C::SalesQualified as i32,
                    ..Default::default()
                }),
                update_mask: mask(&["stage"]),
            }),
        )
        .await
        .expect("sales-qualified");
    let group = |ids: &[&String]| pb::Opportunity {
        buying_group_contact_ids: ids.iter().map(|s| (*s).clone()).collect(),
        ..Default::default()
    };
    let first = opps
        .try_create(pb::Opportunity {
            account_id: id.clone(),
            name: "First".into(),
            ..group(&[&ann, &bob])
        })
        .await
        .expect("first")
        .opportunity_id;
    let second = opps
        .try_create(pb::Opportunity {
            account_id: id.clone(),
            name: "Second".into(),
            ..group(&[&bob])
        })
        .await
        .expect("second")
        .opportunity_id;
    lifecycle.wait_for_contact_stage(&ann, C::Opportunity).await;
    lifecycle.wait_for_contact_stage(&bob, C::Opportunity).await;

    // Bob out of the first deal: still in the second, so still OPPORTUNITY.
    opps.try_update(&first, group(&[&ann]), &["buying_group_contact_ids"])
        .await
        .expect("bob out of the first");
    system.settled().await;
    assert_eq!(lifecycle.contact(&bob).await.stage, C::Opportunity as i32);
    // Out of the second too: in no open deal, back to SUSPECT (no activity).
    opps.try_update(&second, group(&[]), &["buying_group_contact_ids"])
        .await
        .expect("bob out of the second");
    lifecycle.wait_for_contact_stage(&bob, C::Suspect).await;

    // The first deal is lost: Ann is what the seller made her before.
    opps.try_lose(&first, "budget cut").await.expect("lost");
    lifecycle
        .wait_for_contact_stage(&ann, C::SalesQualified)
        .await;
    // Bob, out of that deal before it was lost, is left alone.
    system.settled().await;
    assert_eq!(lifecycle.contact(&bob).await.stage, C::Suspect as i32);
    system.stop().await;
}

/// `amount_from_line_items` makes the amount their total once there are
/// line items. Turned on before (an amount at QUALIFY, line items at
/// PROPOSE) it keeps the amount; an amount written that is not the total is
/// refused rather than dropped.
async fn the_amount_follows_the_line_items_once_there_are_any(db: TestDatabase) {
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let id = lifecycle.create_account("Flagged", "").await.account_id;
    let oid = opps
        .try_create(pb::Opportunity {
            account_id: id,
            name: "flag".into(),
            amount: usd(50_000),
            ..Default::default()
        })
        .await
        .expect("created")
        .opportunity_id;
    let flag = |on: bool| pb::Opportunity {
        amount_from_line_items: on,
        ..Default::default()
    };
    let on = opps
        .try_update(&oid, flag(true), &["amount_from_line_items"])
        .await
        .expect("flag on");
    assert_eq!(
        on.amount,
        usd(50_000),
        "no line items yet: the amount stays"
    );
    let items = pb::Opportunity {
        line_items: vec![pb::LineItem {
            product: "Seats".into(),
            kind: pb::LineItemKind::Product as i32,
            quantity: 2,
            unit_price: usd(1_000),
            end_date: None,
        }],
        ..Default::default()
    };
    // Items in another currency than the deal's are refused, not followed
    // into it (a tester's USD deal became JPY 500).
    let yen = pb::Opportunity {
        line_items: vec![pb::LineItem {
            unit_price: Some(money("JPY", 500, 0)),
            ..items.line_items[0].clone()
        }],
        ..Default::default()
    };
    let refused = opps
        .try_update(&oid, yen, &["line_items"])
        .await
        .expect_err("yen on a dollar deal");
    assert_eq!(
        violated_fields(&refused),
        ["opportunity.line_items[0].unit_price"]
    );
    assert_eq!(opps.get(&oid).await.amount, usd(50_000));
    let priced = opps
        .try_update(&oid, items, &["line_items"])
        .await
        .expect("line items");
    assert_eq!(priced.amount, usd(2_000));
    let amount = |units: i64| pb::Opportunity {
        amount: usd(units),
        ..Default::default()
    };
    let refused = opps
        .try_update(&oid, amount(9_999), &["amount"])
        .await
        .expect_err("not the total");
    assert_eq!(violated_fields(&refused), ["opportunity.amount"]);
    assert_eq!(opps.get(&oid).await.amount, usd(2_000));
    opps.try_update(&oid, amount(2_000), &["amount"])
        .await
        .expect("the total, echoed");
    // A read-modify-write changing the items echoes the amount as it was.
    let more = opps
        .try_update(
            &oid,
            pb::Opportunity {
                amount: usd(2_000),
                line_items: vec![pb::LineItem {
                    product: "Seats".into(),
                    kind: pb::LineItemKind::Product as i32,
                    quantity: 3,
                    unit_price: usd(1_000),
                    end_date: None,
                }],
                ..Default::default()
            },
            &["amount", "line_items"],
        )
        .await
        .expect("the old amount echoed beside new items");
    assert_eq!(more.amount, usd(3_000));
    let off = opps
        .try_update(
            &oid,
            pb::Opportunity {
                amount: usd(7_000),
                ..flag(false)
            },
            &["amount_from_line_items", "amount"],
        )
        .await
        .expect("flag off and an amount of its own");
    assert_eq!(off.amount, usd(7_000));
    system.stop().await;
}

/// A closed deal answers FAILED_PRECONDITION "closed" for any edit, also
/// one naming contacts or a kind (which used to ask lifecycle first, and
/// answered as lifecycle did, UNAVAILABLE while it was down).
async fn a_closed_deal_is_refused_as_closed_whatever_the_edit(db: TestDatabase) {
    const UNKNOWN: &str = "0192f0c4-8b6e-7cc2-9d7e-7d1c7f3b5a10";
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let id = lifecycle.create_account("Closed", "").await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@closed.example")
        .await
        .contact_id;
    let oid = opps.create(&id, "gone").await.opportunity_id;
    opps.try_lose(&oid, "no budget").await.expect("lost");
    for (fields, path) in [
        (
            pb::Opportunity {
                buying_group_contact_ids: vec![ann.clone(), UNKNOWN.into()],
                ..Default::default()
            },
            "buying_group_contact_ids",
        ),
        (
            pb::Opportunity {
                kind: cascade_proto::common::v1::OpportunityKind::Renewal as i32,
                ..Default::default()
            },
            "kind",
        ),
        (
            pb::Opportunity {
                name: "renamed".into(),
                ..Default::default()
            },
            "name",
        ),
    ] {
        let refused = opps
            .try_update(&oid, fields, &[path])
            .await
            .expect_err("closed");
        assert_eq!(
            refused.code(),
            Code::FailedPrecondition,
            "{path}: {refused:?}"
        );
        assert!(
            refused.message().contains("closed (LOST)"),
            "{path}: {}",
            refused.message()
        );
    }
    system.stop().await;
}

/// The account's last two open deals lost at the same moment: one of the
/// losses is the last, and the account is nurtured. (Each loss used to
/// count the other deal open on PostgreSQL, and neither nurtured.)
async fn the_last_two_deals_lost_at_once_nurture_the_account(db: TestDatabase) {
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    for trial in 0..5 {
        let id = lifecycle
            .create_account(&format!("Twice lost {trial}"), "")
            .await
            .account_id;
        let first = opps.create(&id, "first").await.opportunity_id;
        let second = opps.create(&id, "second").await.opportunity_id;
        lifecycle.wait_for_stage(&id, S::Pipeline).await;
        let (a, b) = tokio::join!(
            opps.try_lose(&first, "budget cut"),
            opps.try_lose(&second, "budget cut")
        );
        a.expect("first lost");
        b.expect("second lost");
        lifecycle.wait_for_stage(&id, S::Engaged).await;
    }
    system.stop().await;
}

async fn the_pipeline_report_matches_a_hand_computed_scenario(db: TestDatabase) {
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let id = lifecycle
        .create_account("Pipeline Inc", "")
        .await
        .account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@pipeline.example")
        .await
        .contact_id;
    let start = cascade_chassis::time::to_timestamp(
        cascade_chassis::time::now() - chrono::Duration::seconds(5),
    );
    let new = |name: &str, estimate: Option<Money>| pb::Opportunity {
        account_id: id.clone(),
        name: name.into(),
        estimated_deal_size: estimate,
        ..Default::default()
    };
    // o1: DISCOVER, estimate 10,000 USD.
    opps.try_create(new("o1", usd(10_000))).await.expect("o1");
    // o2: QUALIFY, amount 40,000 USD.
    let o2 = opps
        .try_create(new("o2", usd(40_000)))
        .await
        .expect("o2")
        .opportunity_id;
    opps.try_advance(&o2).await.expect("o2 to QUALIFY");
    opps.try_update(
        &o2,
        pb::Opportunity {
            amount: usd(40_000),
            ..Default::default()
        },
        &["amount"],
    )
    .await
    .expect("o2 amount");
    // o3: QUALIFY, 20,000 EUR: reported apart.
    let eur = Some(money("EUR", 20_000, 0));
    let o3 = opps
        .try_create(new("o3", eur))
        .await
        .expect("o3")
        .opportunity_id;
    opps.try_advance(&o3).await.expect("o3 to QUALIFY");
    // o4: won, 50,000 USD.
    let o4 = opps
        .try_create(new("o4", usd(50_000)))
        .await
        .expect("o4")
        .opportunity_id;
    opps.try_advance(&o4).await.expect("o4 to QUALIFY");
    opps.try_update(
        &o4,
        qualify_fields(50_000, vec![ann.clone()]),
        &[
            "close_date",
            "amount",
            "current_situation",
            "needs",
            "buying_group_contact_ids",
        ],
    )
    .await
    .expect("o4 qualify");
    opps.try_advance(&o4).await.expect("o4 to PROPOSE");
    opps.try_update(
        &o4,
        pb::Opportunity {
            line_items: vec![pb::LineItem {
                product: "Platform".into(),
                kind: 1,
                quantity: 1,
                unit_price: usd(50_000),
                end_date: None,
            }],
            new_reality: "done".into(),
            contract: Some(pb::Contract {
                document_ref: "doc".into(),
                signed: true,
                sign_time: None,
                end_date: None,
            }),
            ..Default::default()
        },
        &["line_items", "new_reality", "contract"],
    )
    .await
    .expect("o4 proposal");
    opps.try_advance(&o4).await.expect("o4 to WIN");
    opps.try_win(&o4).await.expect("o4 won");
    // o5: lost, estimate 5,000 USD.
    let o5 = opps
        .try_create(new("o5", usd(5_000)))
        .await
        .expect("o5")
        .opportunity_id;
    opps.try_lose(&o5, "no fit").await.expect("o5 lost");
    // o6: DISCOVER without any money yet; o7: lost without money. Counted,
    // in no currency's sums.
    opps.try_create(new("o6", None)).await.expect("o6");
    let o7 = opps
        .try_create(new("o7", None))
        .await
        .expect("o7")
        .opportunity_id;
    opps.try_lose(&o7, "went quiet").await.expect("o7 lost");
    let end = cascade_chassis::time::to_timestamp(
        cascade_chassis::time::now() + chrono::Duration::seconds(5),
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
    let usd_pipeline = report.pipeline.expect("tenant currency");
    assert_eq!(usd_pipeline.currency_code, "USD");
    let row = |p: &pb::CurrencyPipeline, i: usize| {
        let s = &p.steps[i];
        (
            s.open_count,
            s.total_amount.as_ref().map_or(0, |m| m.units),
            s.weighted_amount.as_ref().map_or(0, |m| m.units),
        )
    };
    assert_eq!(row(&usd_pipeline, 0), (1, 10_000, 1_000), "DISCOVER at 10%");
    assert_eq!(row(&usd_pipeline, 1), (1, 40_000, 10_000), "QUALIFY at 25%");
    assert_eq!(row(&usd_pipeline, 2), (0, 0, 0));
    assert_eq!(row(&usd_pipeline, 3), (0, 0, 0));
    assert_eq!(
        (
            usd_pipeline.won_count,
            usd_pipeline.won_amount.map(|m| m.units)
        ),
        (1, Some(50_000))
    );
    assert_eq!(
        (
            usd_pipeline.lost_count,
            usd_pipeline.lost_amount.map(|m| m.units)
        ),
        (1, Some(5_000))
    );
    assert_eq!(report.other_currencies.len(), 1);
    let eur_pipeline = &report.other_currencies[0];
    assert_eq!(eur_pipeline.currency_code, "EUR");
    assert_eq!(row(eur_pipeline, 1), (1, 20_000, 5_000));
    // Every deal counted, valued or not.
    let counts = report.counts.expect("counts");
    let open: Vec<(i64, i64)> = counts
        .steps
        .iter()
        .map(|s| (s.open_count, s.without_amount_count))
        .collect();
    assert_eq!(open, [(2, 1), (2, 0), (0, 0), (0, 0)], "o1+o6, o2+o3");
    assert_eq!(counts.steps[0].step, pb::OpportunityStep::Discover as i32);
    assert_eq!(
        (
            counts.won_count,
            counts.won_without_amount_count,
            counts.lost_count,
            counts.lost_without_amount_count
        ),
        (1, 0, 2, 1)
    );
    system.stop().await;
}

/// Amounts have a documented largest value: larger ones, and line items
/// totalling more, are refused per field; sums of the largest amounts are
/// reported exactly (they overflowed 64-bit SUMs before, answering INTERNAL).
async fn amounts_have_a_limit_and_report_sums_stay_exact(db: TestDatabase) {
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let id = lifecycle.create_account("Big Deals", "").await.account_id;
    let deal = |estimate: Money| pb::Opportunity {
        account_id: id.clone(),
        name: "huge".into(),
        estimated_deal_size: Some(estimate),
        ..Default::default()
    };
    let jpy = |units: i64, nanos: i32| money("JPY", units, nanos);
    for (units, nanos) in [
        (1_000_000_000_000, 1),
        (i64::MAX, 999_999_999),
        (i64::MAX / 2 + 1, 0),
    ] {
        let refused = opps
            .try_create(deal(jpy(units, nanos)))
            .await
            .expect_err("beyond the largest amount");
        assert_eq!(
            violations(&refused),
            [(
                "opportunity.estimated_deal_size.units".to_owned(),
                "must be at most 1,000,000,000,000 (a trillion) either way, nanos included"
                    .to_owned()
            )]
        );
    }
    // Every wrong field of an amount is named by its path, at once.
    let refused = opps
        .try_create(deal(money("dollars", -5, 0)))
        .await
        .expect_err("a bad currency and a negative amount");
    assert_eq!(
        violations(&refused),
        [
            (
                "opportunity.estimated_deal_size.currency_code".to_owned(),
                "must be a three-letter ISO 4217 code, e.g. USD".to_owned()
            ),
            (
                "opportunity.estimated_deal_size.units".to_owned(),
                "must not be negative".to_owned()
            )
        ]
    );
    for code in ["XYZ", "usd"] {
        let refused = opps
            .try_create(deal(money(code, 5, 0)))
            .await
            .expect_err("no such currency");
        assert_eq!(
            violations(&refused),
            [(
                "opportunity.estimated_deal_size.currency_code".to_owned(),
                if code == "XYZ" {
                    "is not an ISO 4217 currency code"
                } else {
                    "must be a three-letter ISO 4217 code, e.g. USD"
                }
                .to_owned()
            )]
        );
    }
    let refused = opps
        .try_create(pb::Opportunity {
            amount_from_line_items: true,
            line_items: vec![pb::LineItem {
                product: "everything".into(),
                kind: 1,
                quantity: 1_000_000_000,
                unit_price: Some(jpy(1_000_000_000_000, 0)),
                end_date: None,
            }],
            ..deal(jpy(1, 0))
        })
        .await
        .expect_err("line items beyond the largest amount");
    assert_eq!(
        violations(&refused),
        [(
            "opportunity.line_items".to_owned(),
            "total more than the largest amount, 1,000,000,000,000 units".to_owned()
        )]
    );
    assert!(
        opportunities_of(&opps, &id).await.is_empty(),
        "nothing stored"
    );

    // Three deals just under the largest amount, in one step: exact to the nano.
    for _ in 0..3 {
        opps.try_create(deal(jpy(999_999_999_999, 999_999_999)))
            .await
            .expect("the largest amount is accepted");
    }
    let now = cascade_chassis::time::now();
    let report = opps
        .public()
        .get_pipeline_report(opps.req(pb::GetPipelineReportRequest {
            start_time: Some(cascade_chassis::time::to_timestamp(
                now - chrono::Duration::hours(1),
            )),
            end_time: Some(cascade_chassis::time::to_timestamp(
                now + chrono::Duration::hours(1),
            )),
        }))
        .await
        .expect("the report sums them")
        .into_inner();
    let yen = &report.other_currencies[0];
    assert_eq!(yen.currency_code, "JPY");
    assert_eq!(yen.steps[0].open_count, 3);
    assert_eq!(
        yen.steps[0].total_amount,
        Some(jpy(2_999_999_999_999, 999_999_997))
    );
    system.stop().await;
}

async fn settings_change_the_discover_name_and_the_threshold(db: TestDatabase) {
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let updated = opps
        .public()
        .update_opportunity_settings(opps.req(pb::UpdateOpportunitySettingsRequest {
            settings: Some(pb::OpportunitySettings {
                discover_step_display_name: "Explore".into(),
                large_deal_threshold: usd(1_000),
                ..Default::default()
            }),
            update_mask: mask(&["discover_step_display_name", "large_deal_threshold"]),
        }))
        .await
        .expect("settings")
        .into_inner()
        .settings
        .expect("settings");
    assert_eq!(
        (updated.version, updated.discover_step_display_name.as_str()),
        (2, "Explore")
    );
    // Probabilities naming a step twice, or none: refused, no new version.
    let probability = |step: pb::OpportunityStep, percent: i32| pb::StepProbability {
        step: step as i32,
        percent,
    };
    for (probabilities, field) in [
        (
            vec![
                probability(pb::OpportunityStep::Qualify, 30),
                probability(pb::OpportunityStep::Qualify, 40),
            ],
            "settings.step_probabilities[1].step",
        ),
        (Vec::new(), "settings.step_probabilities"),
    ] {
        let refused = opps
            .public()
            .update_opportunity_settings(opps.req(pb::UpdateOpportunitySettingsRequest {
                settings: Some(pb::OpportunitySettings {
                    step_probabilities: probabilities,
                    ..Default::default()
                }),
                update_mask: mask(&["step_probabilities"]),
            }))
            .await
            .expect_err("ambiguous probabilities");
        assert_eq!(violated_fields(&refused), [field]);
    }
    // A well-formed code that is no currency: refused, as in amounts.
    let refused = opps
        .public()
        .update_opportunity_settings(opps.req(pb::UpdateOpportunitySettingsRequest {
            settings: Some(pb::OpportunitySettings {
                currency_code: "XYZ".into(),
                ..Default::default()
            }),
            update_mask: mask(&["currency_code"]),
        }))
        .await
        .expect_err("no such currency");
    assert_eq!(
        violations(&refused),
        [(
            "settings.currency_code".to_owned(),
            "is not an ISO 4217 currency code".to_owned()
        )]
    );
    let id = lifecycle.create_account("Small", "").await.account_id;
    let ann = lifecycle
        .create_contact(&id, "ann@small.example")
        .await
        .contact_id;
    let o = opps
        .try_create(pb::Opportunity {
            account_id: id,
            name: "tiny".into(),
            estimated_deal_size: usd(2_000),
            ..Default::default()
        })
        .await
        .expect("created");
    assert_eq!(o.progress[0].display_name, "Explore");
    opps.try_advance(&o.opportunity_id)
        .await
        .expect("to QUALIFY");
    opps.try_update(
        &o.opportunity_id,
        qualify_fields(2_000, vec![ann]),
        &[
            "close_date",
            "amount",
            "current_situation",
            "needs",
            "buying_group_contact_ids",
        ],
    )
    .await
    .expect("fields");
    let refused = opps
        .try_advance(&o.opportunity_id)
        .await
        .expect_err("large at 1,000");
    assert_eq!(
        precondition_subjects(&refused),
        ["stakeholders", "competitors"]
    );
    system.stop().await;
}

async fn opportunities_of(opps: &Opportunity, account_id: &str) -> Vec<pb::Opportunity> {
    opps.public()
        .list_opportunities(opps.req(pb::ListOpportunitiesRequest {
            account_id: account_id.into(),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner()
        .opportunities
}

/// Buying-group and stakeholder contacts must be contacts of the
/// opportunity's account: an unknown id or another account's contact is
/// refused per field, nothing is stored and the account does not move; with
/// lifecycle down the same calls are UNAVAILABLE, not bad input.
async fn buying_group_and_stakeholder_contacts_are_checked(db: TestDatabase) {
    let mut system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let acme = lifecycle.create_account("Acme", "").await.account_id;
    let globex = lifecycle.create_account("Globex", "").await.account_id;
    let ann = lifecycle
        .create_contact(&acme, "ann@acme.example")
        .await
        .contact_id;
    let gus = lifecycle
        .create_contact(&globex, "gus@globex.example")
        .await
        .contact_id;
    let made_up = cascade_domain::ids::new_id();
    let deal = |buying_group: Vec<String>, stakeholders: Vec<pb::Stakeholder>| pb::Opportunity {
        account_id: acme.clone(),
        name: "Acme platform".into(),
        estimated_deal_size: usd(20_000),
        buying_group_contact_ids: buying_group,
        stakeholders,
        ..Default::default()
    };
    let stakeholder = |contact_id: &str| pb::Stakeholder {
        contact_id: contact_id.into(),
        name: String::new(),
        role: pb::StakeholderRole::Champion as i32,
    };

    let refused = opps
        .try_create(deal(
            vec![ann.clone(), gus.clone(), made_up.clone()],
            vec![stakeholder(&gus)],
        ))
        .await
        .expect_err("another account's contact and a made-up id");
    assert_eq!(
        violations(&refused),
        [
            (
                "opportunity.buying_group_contact_ids[1]".to_owned(),
                format!("contact {gus} belongs to another account than {acme}")
            ),
            (
                "opportunity.buying_group_contact_ids[2]".to_owned(),
                format!("contact {made_up} does not exist")
            ),
            (
                "opportunity.stakeholders[0].contact_id".to_owned(),
                format!("contact {gus} belongs to another account than {acme}")
            ),
        ]
    );
    assert!(
        opportunities_of(&opps, &acme).await.is_empty(),
        "nothing stored"
    );
    assert_eq!(
        lifecycle.account(&acme).await.stage,
        S::Targeted as i32,
        "the account did not move to PIPELINE"
    );

    // A buying group is a set: repeats (in any case, anywhere in the list)
    // count once, where they first appear.
    let bob = lifecycle
        .create_contact(&acme, "bob@acme.example")
        .await
        .contact_id;
    let o = opps
        .try_create(deal(
            vec![ann.clone(), bob.clone(), ann.to_uppercase(), ann.clone()],
            vec![stakeholder(&ann)],
        ))
        .await
        .expect("the account's own contacts");
    assert_eq!(o.buying_group_contact_ids, vec![ann.clone(), bob.clone()]);

    // The QUALIFY gate cannot be passed with someone else's contact.
    let refused = opps
        .try_update(
            &o.opportunity_id,
            pb::Opportunity {
                buying_group_contact_ids: vec![made_up.clone(), ann.clone()],
                ..Default::default()
            },
            &["buying_group_contact_ids"],
        )
        .await
        .expect_err("a made-up id");
    assert_eq!(
        violations(&refused),
        [(
            "opportunity.buying_group_contact_ids[0]".to_owned(),
            format!("contact {made_up} does not exist")
        )]
    );
    let refused = opps
        .try_update(
            &o.opportunity_id,
            pb::Opportunity {
                stakeholders: vec![stakeholder(&ann), stakeholder(&gus)],
                ..Default::default()
            },
            &["stakeholders"],
        )
        .await
        .expect_err("another account's stakeholder");
    assert_eq!(
        violations(&refused)[0].0,
        "opportunity.stakeholders[1].contact_id"
    );
    let stored = &opportunities_of(&opps, &acme).await[0];
    assert_eq!(
        stored.buying_group_contact_ids,
        vec![ann.clone(), bob.clone()],
        "unchanged"
    );
    assert_eq!(stored.stakeholders.len(), 1, "unchanged");

    // Lifecycle down: the contacts cannot be checked, which is not bad input.
    system.stop_lifecycle().await;
    let down = opps
        .try_create(deal(vec![ann.clone()], vec![]))
        .await
        .expect_err("lifecycle is down");
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    let down = opps
        .try_update(
            &o.opportunity_id,
            pb::Opportunity {
                buying_group_contact_ids: vec![ann.clone()],
                ..Default::default()
            },
            &["buying_group_contact_ids"],
        )
        .await
        .expect_err("lifecycle is down");
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    system.stop().await;
}

on_each_database!(
    buying_group_and_stakeholder_contacts_are_checked,
    amounts_have_a_limit_and_report_sums_stay_exact,
    the_source_process_from_discover_to_won,
    a_lost_deal_nurtures_only_when_it_was_the_last_open_one,
    the_pipeline_report_matches_a_hand_computed_scenario,
    settings_change_the_discover_name_and_the_threshold,
    leaving_a_buying_group_gives_a_contact_its_stage_back,
    the_amount_follows_the_line_items_once_there_are_any,
    a_closed_deal_is_refused_as_closed_whatever_the_edit,
    the_last_two_deals_lost_at_once_nurture_the_account,
    each_field_that_cannot_be_written_says_why,
    a_buying_group_counts_a_repeated_contact_once_toward_its_limit,
    notes_keep_their_line_breaks,
);

/// Notes and reasons are prose a CRM sends with line breaks: kept, in
/// opportunity and in what lifecycle is told (a tester saw every multi-line
/// note refused as "control characters"). A name is still one line, and a
/// filter of only spaces is refused, not read as no filter.
async fn notes_keep_their_line_breaks(db: TestDatabase) {
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let id = lifecycle.create_account("Multiline", "").await.account_id;
    let deal = opps.create(&id, "Notes").await.opportunity_id;
    lifecycle.wait_for_stage(&id, S::Pipeline).await;
    let situation = "Uses spreadsheets.\r\nTwo teams:\n\t- sales\n\t- finance";
    let updated = opps
        .try_update(
            &deal,
            pb::Opportunity {
                current_situation: situation.into(),
                competitors: vec![pb::Competitor {
                    name: "Rival".into(),
                    notes: "Cheaper.\nSlower.".into(),
                }],
                ..Default::default()
            },
            &["current_situation", "competitors"],
        )
        .await
        .expect("multi-line notes");
    assert_eq!(updated.current_situation, situation);
    assert_eq!(updated.competitors[0].notes, "Cheaper.\nSlower.");
    // Written back as read, nothing changes: not even the update time.
    let again = opps
        .try_update(&deal, updated.clone(), &["current_situation", "name"])
        .await
        .expect("the same again");
    assert_eq!(again.update_time, updated.update_time);
    let one_line = opps
        .try_update(
            &deal,
            pb::Opportunity {
                name: "Two\nlines".into(),
                ..Default::default()
            },
            &["name"],
        )
        .await
        .expect_err("a name is one line");
    assert_eq!(violated_fields(&one_line), ["opportunity.name"]);
    let lost = opps
        .try_lose(&deal, "Price too high.\nChose Rival.")
        .await
        .expect("a multi-line reason");
    assert_eq!(lost.lost_reason, "Price too high.\nChose Rival.");
    // Lifecycle takes the loss with its reason and nurtures the account.
    lifecycle.wait_for_stage(&id, S::Engaged).await;

    for (owner_id, account_id) in [(" ", ""), ("", " ")] {
        let blank = opps
            .public()
            .list_opportunities(opps.req(pb::ListOpportunitiesRequest {
                owner_id: owner_id.into(),
                account_id: account_id.into(),
                ..Default::default()
            }))
            .await
            .expect_err("a blank filter");
        let field = if owner_id.is_empty() {
            "account_id"
        } else {
            "owner_id"
        };
        assert_eq!(violated_fields(&blank), [field]);
    }
    system.stop().await;
}

/// Each field an update may not write says why in its own words.
async fn each_field_that_cannot_be_written_says_why(db: TestDatabase) {
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let acme = lifecycle.create_account("Acme", "").await.account_id;
    let deal = opps.create(&acme, "Acme platform").await;
    for (path, why) in [
        (
            "account_id",
            "account_id is not writable: a deal stays with the account it was opened for",
        ),
        (
            "lost_reason",
            "lost_reason is not writable: CloseOpportunityLost sets it",
        ),
        (
            "step",
            "step is not writable: steps move through AdvanceOpportunity, status through CloseOpportunityWon / Lost",
        ),
        (
            "status",
            "status is not writable: steps move through AdvanceOpportunity, status through CloseOpportunityWon / Lost",
        ),
        ("create_time", "create_time is not writable: output only"),
        ("progress", "progress is not writable: output only"),
    ] {
        let refused = opps
            .try_update(
                &deal.opportunity_id,
                pb::Opportunity {
                    account_id: acme.clone(),
                    lost_reason: "too dear".into(),
                    ..Default::default()
                },
                &[path],
            )
            .await
            .expect_err(path);
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(
            violations(&refused),
            [("update_mask.paths[0]".to_owned(), why.to_owned())]
        );
    }
    system.stop().await;
}

/// A repeated contact is one member: 101 copies of one id are a group of
/// one, within the limit of 100.
async fn a_buying_group_counts_a_repeated_contact_once_toward_its_limit(db: TestDatabase) {
    let system = TestSystem::opportunity_on(&db).await;
    let (lifecycle, opps) = (system.lifecycle(), system.opportunity());
    let acme = lifecycle.create_account("Acme", "").await.account_id;
    let ann = lifecycle
        .create_contact(&acme, "ann@acme.example")
        .await
        .contact_id;
    let deal = opps
        .try_create(pb::Opportunity {
            account_id: acme.clone(),
            name: "Acme platform".into(),
            buying_group_contact_ids: vec![ann.clone(); 101],
            ..Default::default()
        })
        .await
        .expect("a group of one");
    assert_eq!(deal.buying_group_contact_ids, vec![ann.clone()]);
    let updated = opps
        .try_update(
            &deal.opportunity_id,
            pb::Opportunity {
                buying_group_contact_ids: [ann.clone(), ann.to_uppercase()]
                    .iter()
                    .cycle()
                    .take(120)
                    .cloned()
                    .collect(),
                ..Default::default()
            },
            &["buying_group_contact_ids"],
        )
        .await
        .expect("a group of one");
    assert_eq!(updated.buying_group_contact_ids, vec![ann.clone()]);
    // 101 different ids are too many.
    let many: Vec<String> = (0..101).map(|_| cascade_domain::ids::new_id()).collect();
    let refused = opps
        .try_update(
            &deal.opportunity_id,
            pb::Opportunity {
                buying_group_contact_ids: many,
                ..Default::default()
            },
            &["buying_group_contact_ids"],
        )
        .await
        .expect_err("too many");
    let found = violations(&refused);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "opportunity.buying_group_contact_ids");
    assert!(found[0].1.starts_with("at most 100"), "{found:?}");
    system.stop().await;
}
