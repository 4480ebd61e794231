//! Domain values to protobuf messages, used by the handlers and by the watch
//! feed (which stores events as the messages it streams).

use cascade_chassis::time::to_timestamp;
use cascade_proto::lifecycle::v1 as pb;

use crate::domain::{Account, Contact, ContactTransition, Notification, Transition};

pub fn account(account: Account) -> pb::Account {
    let recycle_summary =
        (account.disqualify_count > 0 || account.nurture_count > 0).then(|| pb::RecycleSummary {
            disqualify_count: account.disqualify_count,
            nurture_count: account.nurture_count,
            last_action: account.last_recycle.as_ref().map(transition),
        });
    pb::Account {
        account_id: account.account_id,
        name: account.name,
        domain: account.domain.unwrap_or_default(),
        owner_id: account.owner_id.unwrap_or_default(),
        stage: account.stage.to_proto(),
        customer_type: account.customer_type.to_proto(),
        stage_entered_time: Some(to_timestamp(account.stage_entered_at)),
        stages_reached: account
            .stages_reached
            .into_iter()
            .map(|(stage, at)| pb::StageReached {
                stage: stage.to_proto(),
                first_reached_time: Some(to_timestamp(at)),
            })
            .collect(),
        recycle_summary,
        engagement_score: account.engagement_score,
        average_engagement_score: account.average_engagement_score,
        intent_score: account.intent_score,
        create_time: Some(to_timestamp(account.created_at)),
        update_time: Some(to_timestamp(account.updated_at)),
        engagement_since_recycle: account.engagement_since_recycle,
        external_id: account.external_id.unwrap_or_default(),
        at_risk: account.at_risk.map(|r| pb::AtRisk {
            reason: r.reason,
            source: r.source.to_proto(),
            actor: r.actor,
            since_time: Some(to_timestamp(r.since)),
        }),
        open_opportunities: account
            .open_opportunities
            .into_iter()
            .map(|(opportunity_id, kind)| pb::OpenOpportunity {
                opportunity_id,
                kind: kind.to_proto(),
            })
            .collect(),
    }
}

pub fn contact(contact: Contact) -> pb::Contact {
    pb::Contact {
        contact_id: contact.contact_id,
        account_id: contact.account_id,
        email: contact.email.unwrap_or_default(),
        first_name: contact.first_name,
        last_name: contact.last_name,
        title: contact.title,
        stage: contact.stage.to_proto(),
        stage_entered_time: Some(to_timestamp(contact.stage_entered_at)),
        engagement_score: contact.engagement_score,
        create_time: Some(to_timestamp(contact.created_at)),
        update_time: Some(to_timestamp(contact.updated_at)),
        stages_reached: contact
            .stages_reached
            .into_iter()
            .map(|(stage, at)| pb::ContactStageReached {
                stage: stage.to_proto(),
                first_reached_time: Some(to_timestamp(at)),
            })
            .collect(),
        external_id: contact.external_id.unwrap_or_default(),
        inactive: contact.inactive.is_some(),
        inactive_time: contact.inactive.as_ref().map(|(at, _)| to_timestamp(*at)),
        inactive_reason: contact
            .inactive
            .and_then(|(_, reason)| reason)
            .unwrap_or_default(),
    }
}

pub fn transition(t: &Transition) -> pb::AccountTransition {
    pb::AccountTransition {
        transition_id: t.transition_id.clone(),
        account_id: t.account_id.clone(),
        from_stage: t.from_stage.to_proto(),
        to_stage: t.to_stage.to_proto(),
        from_customer_type: t.from_customer_type.to_proto(),
        to_customer_type: t.to_customer_type.to_proto(),
        cause: t.cause.to_proto(),
        actor: t.actor.clone(),
        reason: t.reason.clone().unwrap_or_default(),
        transition_time: Some(to_timestamp(t.occurred_at)),
        event_id: t.event_id.clone().unwrap_or_default(),
        settings_version: t.settings_version,
    }
}

pub fn notification(n: &Notification) -> pb::Notification {
    pb::Notification {
        notification_id: n.notification_id.clone(),
        account_id: n.account_id.clone(),
        owner_id: n.owner_id.clone(),
        reason: n.reason.to_proto(),
        text: n.text.clone(),
        create_time: Some(to_timestamp(n.created_at)),
        delivery_state: n.delivery.state.to_proto(),
        failed_attempts: n.delivery.failed_attempts,
        last_error: n.delivery.last_error.clone().unwrap_or_default(),
        last_attempt_time: n.delivery.last_attempt_at.map(to_timestamp),
        settle_time: n.delivery.settled_at.map(to_timestamp),
    }
}

pub fn contact_transition(t: &ContactTransition) -> pb::ContactTransition {
    pb::ContactTransition {
        transition_id: t.transition_id.clone(),
        contact_id: t.contact_id.clone(),
        account_id: t.account_id.clone(),
        from_stage: t.from_stage.to_proto(),
        to_stage: t.to_stage.to_proto(),
        cause: t.cause.to_proto(),
        actor: t.actor.clone(),
        event_id: t.event_id.clone().unwrap_or_default(),
        transition_time: Some(to_timestamp(t.occurred_at)),
    }
}
