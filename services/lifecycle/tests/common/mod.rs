//! What only the lifecycle API tests need beyond cascade-testkit: the
//! internal deliveries with what the kit's fixtures leave out (intent and
//! contacts of a score; the event id and open-deal count of an opportunity
//! event, which histories and idempotence checks look at). Both are sent
//! as the kit sends them: actor `scoring` or `opportunity`.

use cascade_proto::lifecycle::v1 as pb;
use cascade_testkit::Lifecycle;
use cascade_testkit::fixtures::{opportunity_event, score_delivery};

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
    lifecycle
        .try_apply_score(pb::ApplyEngagementScoreRequest {
            intent_score: intent,
            contacts: contacts
                .into_iter()
                .map(|(contact_id, score, types)| pb::ContactEngagement {
                    contact_id,
                    engagement_score: score,
                    new_activity_types: types.into_iter().map(String::from).collect(),
                })
                .collect(),
            ..score_delivery(event_id, account_id, sequence, engagement)
        })
        .await
        .expect("score applied")
}

/// Delivers an opportunity event as the opportunity service would, with
/// `event_id` and `other_open` other open deals.
pub async fn opportunity(
    lifecycle: &Lifecycle,
    account_id: &str,
    event_id: &str,
    opportunity_id: &str,
    kind: pb::OpportunityEventType,
    buying_group: &[&str],
    other_open: i32,
) -> pb::ApplyOpportunityEventResponse {
    lifecycle
        .try_apply_opportunity_event(pb::ApplyOpportunityEventRequest {
            event_id: event_id.into(),
            other_open_opportunities: other_open,
            ..opportunity_event(account_id, opportunity_id, kind, buying_group)
        })
        .await
        .expect("opportunity event applied")
}
