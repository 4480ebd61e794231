//! Small builders and readers every test binary used to write itself:
//! field masks, money, activities, timestamps and status details.

use cascade_proto::common::v1::Money;
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::scoring::v1 as sc;
use tonic_types::StatusExt;

/// An update mask naming `paths`.
pub fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

/// `units` whole units of `currency` (ISO 4217) plus `nanos`.
pub fn money(currency: &str, units: i64, nanos: i32) -> Money {
    Money {
        currency_code: currency.to_owned(),
        units,
        nanos,
    }
}

/// A whole number of US dollars, as an optional field takes it.
pub fn usd(units: i64) -> Option<Money> {
    Some(money("USD", units, 0))
}

/// The time `days` days before now, as a protobuf timestamp.
pub fn days_ago(days: i64) -> prost_types::Timestamp {
    cascade_chassis::time::to_timestamp(cascade_chassis::time::now() - chrono::Duration::days(days))
}

/// An account to create: `name`, `domain` and `owner` (may be empty).
pub fn account(name: &str, domain: &str, owner: &str) -> lc::Account {
    lc::Account {
        name: name.to_owned(),
        domain: domain.to_owned(),
        owner_id: owner.to_owned(),
        ..Default::default()
    }
}

/// A score delivery of `account_id` as scoring sends it, with no intent and
/// no contacts; `engagement` is also the average.
pub fn score_delivery(
    event_id: &str,
    account_id: &str,
    sequence: i64,
    engagement: f64,
) -> lc::ApplyEngagementScoreRequest {
    lc::ApplyEngagementScoreRequest {
        event_id: event_id.to_owned(),
        account_id: account_id.to_owned(),
        sequence,
        engagement_score: engagement,
        average_engagement_score: engagement,
        ..Default::default()
    }
}

/// An opportunity event of `account_id` as the opportunity service sends
/// it, happening now, with a new event id.
pub fn opportunity_event(
    account_id: &str,
    opportunity_id: &str,
    kind: lc::OpportunityEventType,
    buying_group: &[&str],
) -> lc::ApplyOpportunityEventRequest {
    lc::ApplyOpportunityEventRequest {
        event_id: cascade_domain::ids::new_id(),
        account_id: account_id.to_owned(),
        opportunity_id: opportunity_id.to_owned(),
        r#type: kind as i32,
        buying_group_contact_ids: buying_group.iter().map(|c| (*c).to_owned()).collect(),
        other_open_opportunities: 0,
        occur_time: Some(days_ago(0)),
        opportunity_kind: 0,
        lost_reason: String::new(),
        opportunity_version: 0,
    }
}

/// An activity happening now, addressed by Cascade's ids.
pub fn activity(event_id: &str, kind: &str, account_id: &str, contact_id: &str) -> sc::Activity {
    sc::Activity {
        event_id: event_id.to_owned(),
        activity_type: kind.to_owned(),
        occur_time: Some(days_ago(0)),
        account_id: account_id.to_owned(),
        contact_id: contact_id.to_owned(),
        contact_email: String::new(),
    }
}

/// An activity happening now, addressed by the person's email (how a
/// marketing-automation system knows people).
pub fn by_email(event_id: &str, kind: &str, email: &str) -> sc::Activity {
    sc::Activity {
        contact_email: email.to_owned(),
        ..activity(event_id, kind, "", "")
    }
}

/// The field violations of an INVALID_ARGUMENT status, as (field, description);
/// panics on any other code.
pub fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "expected INVALID_ARGUMENT: {status:?}"
    );
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// The fields an INVALID_ARGUMENT status names (see [`violations`]).
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    violations(status)
        .into_iter()
        .map(|(field, _)| field)
        .collect()
}

/// The subjects of a FAILED_PRECONDITION status's precondition failures.
pub fn precondition_subjects(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_precondition_failure()
        .map(|p| p.violations.into_iter().map(|v| v.subject).collect())
        .unwrap_or_default()
}
