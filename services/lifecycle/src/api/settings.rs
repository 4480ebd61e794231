//! The tenant's lifecycle settings: read and update.

use cascade_chassis::time::to_timestamp;
use cascade_chassis::validate::{Validator, Written, mask_path, mask_paths, not_writable};
use cascade_chassis::{RequestContext, ServiceError, ServiceResult};
use cascade_domain::valid_activity_type;
use cascade_proto::lifecycle::v1 as pb;
use tonic::{Request, Response, Status};

use super::LifecycleApi;
use crate::domain::settings::{LifecycleSettings, OnLostAction};
use cascade_chassis::secret::Secret;

const MAX_HAND_RAISE_TYPES: usize = 50;
/// Shortest webhook signing key (after a whsec_ prefix's base64 is decoded).
const MIN_WEBHOOK_KEY_BYTES: usize = 16;

/// A webhook URL as a caller who is not an admin reads it: its origin and
/// "/…". The URL is a credential (a Teams webhook URL lets anyone post to
/// the channel), and readers (a dashboard's token) need only know where
/// notifications go.
fn webhook_origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => format!("{}/…", parsed.origin().ascii_serialization()),
        Err(_) => "…".to_owned(),
    }
}

/// `admin`: whether the caller may read the webhook URL whole.
fn settings_to_proto(stored: crate::storage::StoredSettings, admin: bool) -> pb::LifecycleSettings {
    let s = stored.settings;
    pb::LifecycleSettings {
        version: s.version,
        engaged_threshold: s.engaged_threshold,
        prioritized_threshold: s.prioritized_threshold,
        qualified_stage_enabled: s.qualified_stage_enabled,
        on_lost_action: s.on_lost_action.to_proto(),
        hand_raise_activity_types: s.hand_raise_activity_types,
        renotify_on_hand_raise: s.renotify_on_hand_raise,
        webhook_url: match s.webhook_url {
            Some(url) if admin => url,
            Some(url) => webhook_origin(&url),
            None => String::new(),
        },
        // Write-only: never returned.
        webhook_secret: String::new(),
        webhook_secret_set: s.webhook_secret.is_some(),
        update_time: stored
            .updated_at_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(to_timestamp),
        updated_by: stored.updated_by.unwrap_or_default(),
        at_risk_engagement_threshold: s.at_risk_engagement_threshold,
        churn_on_lost_renewal: s.churn_on_lost_renewal,
        churn_when_contracts_end: s.churn_when_contracts_end,
    }
}

pub(super) async fn get_lifecycle_settings(
    api: &LifecycleApi,
    request: Request<pb::GetLifecycleSettingsRequest>,
) -> Result<Response<pb::GetLifecycleSettingsResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let version = request.get_ref().version;
    if version < 0 {
        return Err(ServiceError::invalid("version", "must not be negative").into());
    }
    let stored = api
        .repository
        .get_settings(&context.tenant, (version > 0).then_some(version))
        .await?;
    Ok(Response::new(pb::GetLifecycleSettingsResponse {
        settings: Some(settings_to_proto(stored, context.admin)),
    }))
}

/// Validates the masked fields and returns the change to apply.
fn settings_change(
    input: &pb::LifecycleSettings,
    paths: &[(usize, String)],
    private_webhooks: bool,
) -> ServiceResult<impl FnOnce(&mut LifecycleSettings) -> ServiceResult<()> + use<>> {
    let mut v = Validator::new();
    let mut engaged = None;
    let mut prioritized = None;
    let mut qualified = None;
    let mut on_lost = None;
    let mut hand_raise = None;
    let mut renotify = None;
    let mut webhook_url = None;
    let mut webhook_secret = None;
    let mut at_risk = None;
    let mut churn_on_lost_renewal = None;
    let mut churn_when_contracts_end = None;
    for (i, path) in paths {
        match path.as_str() {
            "engaged_threshold" => {
                let field = "settings.engaged_threshold";
                let x = v.finite(field, input.engaged_threshold);
                engaged = Some(v.engaged_threshold(field, x));
            }
            "prioritized_threshold" => {
                prioritized = Some(v.finite(
                    "settings.prioritized_threshold",
                    input.prioritized_threshold,
                ));
            }
            "qualified_stage_enabled" => qualified = Some(input.qualified_stage_enabled),
            "on_lost_action" => match OnLostAction::from_proto(input.on_lost_action) {
                Some(action) => on_lost = Some(action),
                None => v.add(
                    "settings.on_lost_action",
                    "must be NURTURE, DISQUALIFY or STAY",
                ),
            },
            "hand_raise_activity_types" => {
                let types = &input.hand_raise_activity_types;
                if types.len() > MAX_HAND_RAISE_TYPES {
                    v.add(
                        "settings.hand_raise_activity_types",
                        format!("at most {MAX_HAND_RAISE_TYPES}"),
                    );
                }
                for (i, t) in types.iter().enumerate() {
                    if !valid_activity_type(t) {
                        v.add(
                            format!("settings.hand_raise_activity_types[{i}]"),
                            "must be 1 to 64 characters of a-z, 0-9, '_', '-' or '.'",
                        );
                    }
                }
                let mut unique = types.clone();
                unique.sort();
                unique.dedup();
                hand_raise = Some(unique);
            }
            "renotify_on_hand_raise" => renotify = Some(input.renotify_on_hand_raise),
            "at_risk_engagement_threshold" => {
                let field = "settings.at_risk_engagement_threshold";
                let x = v.finite(field, input.at_risk_engagement_threshold);
                if x < 0.0 {
                    v.add(field, "must be 0 (the rule off) or more");
                }
                at_risk = Some(x);
            }
            "churn_on_lost_renewal" => churn_on_lost_renewal = Some(input.churn_on_lost_renewal),
            "churn_when_contracts_end" => {
                churn_when_contracts_end = Some(input.churn_when_contracts_end);
            }
            "webhook_url" => {
                let url = input.webhook_url.trim();
                if url.is_empty() {
                    webhook_url = Some(None);
                } else if url.len() > 2048 || {
                    // Schemes are case-insensitive (RFC 3986, 3.1).
                    let lower = url.to_ascii_lowercase();
                    !(lower.starts_with("https://") || lower.starts_with("http://"))
                } {
                    v.add(
                        "settings.webhook_url",
                        "must be an http:// or https:// URL of at most 2048 characters",
                    );
                } else {
                    match reqwest::Url::parse(url) {
                        Err(_) => v.add(
                            "settings.webhook_url",
                            "must be an http:// or https:// URL of at most 2048 characters",
                        ),
                        Ok(parsed) => match crate::webhook::refusal(&parsed) {
                            Some(why) if !private_webhooks => v.add(
                                "settings.webhook_url",
                                format!(
                                    "must reach a public address: {why} (an operator allows private \
                                     ones with lifecycle's webhook.allow_private_addresses)"
                                ),
                            ),
                            _ => webhook_url = Some(Some(url.to_owned())),
                        },
                    }
                }
            }
            "webhook_secret" => {
                let secret = &input.webhook_secret;
                match crate::webhook::signing_key(secret) {
                    _ if secret.len() > 512 => {
                        v.add("settings.webhook_secret", "must be at most 512 characters");
                    }
                    Err(why) => v.add("settings.webhook_secret", why),
                    // A short key can be guessed from signed payloads; empty
                    // clears the secret. Secrets stored before keep signing.
                    Ok(key) if !secret.is_empty() && key.len() < MIN_WEBHOOK_KEY_BYTES => v.add(
                        "settings.webhook_secret",
                        format!(
                            "must be a key of at least {MIN_WEBHOOK_KEY_BYTES} bytes \
                             (32 random bytes are usual; empty removes the secret)"
                        ),
                    ),
                    Ok(_) => {}
                }
                webhook_secret = Some((!secret.is_empty()).then(|| secret.clone()));
            }
            other => v.add(
                mask_path(*i),
                not_writable(
                    other,
                    &[
                        "engaged_threshold",
                        "prioritized_threshold",
                        "qualified_stage_enabled",
                        "on_lost_action",
                        "hand_raise_activity_types",
                        "renotify_on_hand_raise",
                        "webhook_url",
                        "webhook_secret",
                        "at_risk_engagement_threshold",
                        "churn_on_lost_renewal",
                        "churn_when_contracts_end",
                    ],
                ),
            ),
        }
    }
    v.finish()?;
    Ok(move |s: &mut LifecycleSettings| {
        if let Some(x) = engaged {
            s.engaged_threshold = x;
        }
        if let Some(x) = prioritized {
            s.prioritized_threshold = x;
        }
        if let Some(x) = qualified {
            s.qualified_stage_enabled = x;
        }
        if let Some(x) = on_lost {
            s.on_lost_action = x;
        }
        if let Some(x) = hand_raise {
            s.hand_raise_activity_types = x;
        }
        if let Some(x) = renotify {
            s.renotify_on_hand_raise = x;
        }
        if let Some(x) = webhook_url {
            s.webhook_url = x;
        }
        if let Some(x) = webhook_secret {
            s.webhook_secret = x.map(Secret::new);
        }
        if let Some(x) = at_risk {
            s.at_risk_engagement_threshold = x;
        }
        if let Some(x) = churn_on_lost_renewal {
            s.churn_on_lost_renewal = x;
        }
        if let Some(x) = churn_when_contracts_end {
            s.churn_when_contracts_end = x;
        }
        // The thresholds are checked together, against the values in force.
        let written = match (engaged, prioritized) {
            (Some(_), None) => Written::Engaged,
            (None, Some(_)) => Written::Prioritized,
            _ => Written::Both,
        };
        let mut v = Validator::new();
        v.thresholds(
            "settings.",
            s.engaged_threshold,
            s.prioritized_threshold,
            written,
        );
        v.finish()
    })
}

pub(super) async fn update_lifecycle_settings(
    api: &LifecycleApi,
    request: Request<pb::UpdateLifecycleSettingsRequest>,
) -> Result<Response<pb::UpdateLifecycleSettingsResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let paths = mask_paths(request.update_mask.as_ref())?;
    let input = request.settings.unwrap_or_default();
    let change = settings_change(&input, &paths, api.private_webhooks)?;
    let stored = api
        .repository
        .update_settings(&context.tenant, &context.actor, change)
        .await?;
    Ok(Response::new(pb::UpdateLifecycleSettingsResponse {
        settings: Some(settings_to_proto(stored, context.admin)),
    }))
}
