//! Scores and scoring models as the API shows them, and a model from a
//! request.

use cascade_chassis::time::to_timestamp;
use cascade_chassis::validate::Validator;
use cascade_chassis::{ServiceError, ServiceResult};
use cascade_proto::scoring::v1 as pb;

use crate::domain::{self, ScoringModel, ScoringRule};
use crate::storage::Totals;

pub(super) fn score_to_proto(account_id: String, totals: &Totals) -> pb::AccountScore {
    pb::AccountScore {
        account_id,
        engagement_score: totals.engagement,
        average_engagement_score: totals.average(),
        engaged_contact_count: totals.engaged_contacts,
        intent_score: totals.intent,
        breakdown: breakdown(totals),
        compute_time: Some(to_timestamp(cascade_chassis::time::now())),
    }
}

pub(super) fn breakdown(totals: &Totals) -> Vec<pb::ActivityTypeScore> {
    totals
        .breakdown
        .iter()
        .map(|(activity_type, (count, points))| pb::ActivityTypeScore {
            activity_type: activity_type.clone(),
            activity_count: *count,
            points: *points,
        })
        .collect()
}

pub(super) fn model_to_proto(model: ScoringModel) -> pb::ScoringModel {
    pb::ScoringModel {
        version: model.version,
        rules: model
            .rules
            .into_iter()
            .map(|r| pb::ScoringRule {
                activity_type: r.activity_type,
                points: r.points,
                daily_cap_per_contact: r.daily_cap_per_contact,
                first_occurrence_only: r.first_occurrence_only,
            })
            .collect(),
        decay_half_life_days: model.decay_half_life_days,
        intent_activity_types: model.intent_activity_types,
        create_time: model
            .created_at_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(to_timestamp),
        created_by: model.created_by.unwrap_or_default(),
    }
}

pub(super) fn model_from_proto(model: Option<pb::ScoringModel>) -> ServiceResult<ScoringModel> {
    let Some(model) = model else {
        return Err(ServiceError::invalid("model", "is required"));
    };
    let model = ScoringModel {
        version: 0,
        rules: model
            .rules
            .into_iter()
            .map(|r| ScoringRule {
                activity_type: r.activity_type.trim().to_owned(),
                points: r.points,
                daily_cap_per_contact: r.daily_cap_per_contact,
                first_occurrence_only: r.first_occurrence_only,
            })
            .collect(),
        decay_half_life_days: model.decay_half_life_days,
        intent_activity_types: model
            .intent_activity_types
            .iter()
            .map(|t| t.trim().to_owned())
            .collect(),
        created_at_ms: None,
        created_by: None,
    };
    // Checked as sent, so a violation names the index the caller used.
    // Through a Validator: the same bound and count as every refusal.
    let mut v = Validator::new();
    for (field, description) in domain::check_model(&model) {
        v.add(field, description);
    }
    v.finish()?;
    let mut model = model;
    // A set: a type named twice is kept once (as the hand-raise types are),
    // so a model stored before with a repeat can be written back.
    let mut seen = std::collections::HashSet::new();
    model
        .intent_activity_types
        .retain(|t| seen.insert(t.clone()));
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Intent types are a set: a repeat is kept once, in first place.
    #[test]
    fn an_intent_type_named_twice_is_kept_once() {
        let model = model_from_proto(Some(pb::ScoringModel {
            intent_activity_types: vec![
                "web_research".into(),
                " g2_visit".into(),
                "web_research".into(),
            ],
            ..Default::default()
        }))
        .expect("a model");
        assert_eq!(model.intent_activity_types, ["web_research", "g2_visit"]);
    }

    /// A bad intent type is named at the index the caller sent it, repeats
    /// before it included (a tester saw [1] for the third).
    #[test]
    fn a_bad_intent_type_is_named_where_it_was_sent() {
        let refused = model_from_proto(Some(pb::ScoringModel {
            intent_activity_types: vec!["a".into(), "a".into(), "BAD".into()],
            ..Default::default()
        }))
        .expect_err("a bad type");
        let ServiceError::InvalidArgument(violations) = refused else {
            panic!("{refused:?}")
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["model.intent_activity_types[2]"]);
    }
}
