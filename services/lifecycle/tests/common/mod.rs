//! What only the lifecycle API tests need beyond cascade-testkit: the
//! internal deliveries scoring and opportunity make, sent as those services
//! send them (their name is the actor the history keeps).

#![allow(dead_code)]

use cascade_proto::lifecycle::v1 as pb;
use cascade_testkit::Lifecycle;

/// A fresh id (a UUID, as the services assign), e.g. an opportunity's.
pub use cascade_domain::ids::new_id;

/// A score delivery of `account_id` with no intent and no contacts;
/// `engagement` is also the average.
pub fn delivery(
    event_id: &str,
    account_id: &str,
    sequence: i64,
    engagement: f64,
) -> pb::ApplyEngagementScoreRequest {
    pb::ApplyEngagementScoreRequest {
        event_id: event_id.into(),
        account_id: account_id.into(),
        sequence,
        engagement_score: engagement,
        average_engagement_score: engagement,
        ..Default::default()
    }
}

/// The same client calling as the service `name` (actor `name`).
pub fn as_service(lifecycle: &Lifecycle, name: &str) -> Lifecycle {
    lifecycle.as_caller(lifecycle.caller().clone().actor(name))
}

/// Delivers a score as scoring would; `contacts` are (id, score, new
/// activity types).
pub async fn score(
    lifecycle: &Lifecycle,
    account_id: &str,
    event_id: &str,
    sequence: i64,
    engagement: f64,
    intent: f64,
    contacts: Vec<(String, f64, Vec<&str>)>,
) -> pb::ApplyEngagementScoreResponse {
    let scoring = as_service(lifecycle, "scoring");
    scoring
        .internal()
        .apply_engagement_score(
            scoring.req(pb::ApplyEngagementScoreRequest {
                intent_score: intent,
                contacts: contacts
                    .into_iter()
                    .map(|(contact_id, score, types)| pb::ContactEngagement {
                        contact_id,
                        engagement_score: score,
                        new_activity_types: types.into_iter().map(String::from).collect(),
                    })
                    .collect(),
                ..delivery(event_id, account_id, sequence, engagement)
            }),
        )
        .await
        .expect("score applied")
        .into_inner()
}

/// Delivers an opportunity event as the opportunity service would.
pub async fn opportunity(
    lifecycle: &Lifecycle,
    account_id: &str,
    event_id: &str,
    opportunity_id: &str,
    kind: pb::OpportunityEventType,
    buying_group: &[&str],
    other_open: i32,
) -> pb::ApplyOpportunityEventResponse {
    let service = as_service(lifecycle, "opportunity");
    service
        .internal()
        .apply_opportunity_event(service.req(pb::ApplyOpportunityEventRequest {
            event_id: event_id.into(),
            account_id: account_id.into(),
            opportunity_id: opportunity_id.into(),
            r#type: kind as i32,
            buying_group_contact_ids: buying_group.iter().map(|s| s.to_string()).collect(),
            other_open_opportunities: other_open,
            occur_time: None,
        }))
        .await
        .expect("opportunity event applied")
        .into_inner()
}
