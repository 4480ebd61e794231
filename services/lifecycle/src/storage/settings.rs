//! Versioned lifecycle settings per tenant. Version 1 is the built-in
//! defaults; each update stores the next version, and old ones stay readable.

use cascade_chassis::db::Stored;
use cascade_chassis::error::is_unique_violation;
use cascade_chassis::{ServiceError, ServiceResult, TenantId, time};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder,
};

use super::entities::settings;
use super::{Repository, ms};
use crate::domain::settings::LifecycleSettings;
use cascade_chassis::secret::Secret;

/// Settings as stored, with who changed them and when.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSettings {
    pub settings: LifecycleSettings,
    pub updated_at_ms: Option<i64>,
    pub updated_by: Option<String>,
}

/// The settings in force for a tenant.
pub(crate) async fn current(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
) -> ServiceResult<StoredSettings> {
    let latest = settings::Entity::find()
        .filter(settings::Column::TenantId.eq(tenant_id))
        .order_by_desc(settings::Column::Version)
        .one(conn)
        .await?;
    latest.map_or_else(|| Ok(defaults()), from_model)
}

fn defaults() -> StoredSettings {
    StoredSettings {
        settings: LifecycleSettings::default(),
        updated_at_ms: None,
        updated_by: None,
    }
}

fn from_model(model: settings::Model) -> ServiceResult<StoredSettings> {
    Ok(StoredSettings {
        settings: LifecycleSettings {
            version: model.version,
            engaged_threshold: model.engaged_threshold,
            prioritized_threshold: model.prioritized_threshold,
            qualified_stage_enabled: model.qualified_stage_enabled,
            on_lost_action: *model.on_lost_action,
            hand_raise_activity_types: model
                .hand_raise_activity_types
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            renotify_on_hand_raise: model.renotify_on_hand_raise,
            at_risk_engagement_threshold: model.at_risk_engagement_threshold,
            churn_on_lost_renewal: model.churn_on_lost_renewal,
            churn_when_contracts_end: model.churn_when_contracts_end,
            webhook_url: model.webhook_url,
            webhook_secret: model.webhook_secret.map(Secret::new),
        },
        updated_at_ms: Some(model.updated_at_ms),
        updated_by: Some(model.updated_by),
    })
}

impl Repository {
    /// The current settings, or the given version.
    pub async fn get_settings(
        &self,
        tenant: &TenantId,
        version: Option<i64>,
    ) -> ServiceResult<StoredSettings> {
        let Some(version) = version else {
            return current(&self.db, tenant.as_str()).await;
        };
        let stored = settings::Entity::find_by_id((tenant.as_str().to_owned(), version))
            .one(&self.db)
            .await?;
        match stored {
            Some(model) => from_model(model),
            None if version == 1 => Ok(defaults()),
            None => Err(ServiceError::not_found(
                "lifecycle settings version",
                version.to_string(),
            )),
        }
    }

    /// Stores `change(current)` as the next version. Two concurrent updates
    /// cannot both become the same version: the loser gets ABORTED.
    pub async fn update_settings(
        &self,
        tenant: &TenantId,
        actor: &str,
        change: impl FnOnce(&mut LifecycleSettings) -> ServiceResult<()>,
    ) -> ServiceResult<StoredSettings> {
        let stored = current(&self.db, tenant.as_str()).await?;
        let mut next = stored.settings.clone();
        change(&mut next)?;
        // Writing the values already in force is no change: no new version
        // (a sync writing back what it read made one per run). The defaults
        // a tenant never wrote are version 1 already.
        if next == stored.settings {
            return Ok(stored);
        }
        next.version += 1;
        let now = ms(time::now());
        let model = settings::ActiveModel {
            tenant_id: Set(tenant.as_str().to_owned()),
            version: Set(next.version),
            engaged_threshold: Set(next.engaged_threshold),
            prioritized_threshold: Set(next.prioritized_threshold),
            qualified_stage_enabled: Set(next.qualified_stage_enabled),
            on_lost_action: Set(Stored(next.on_lost_action)),
            hand_raise_activity_types: Set(next.hand_raise_activity_types.join("\n")),
            renotify_on_hand_raise: Set(next.renotify_on_hand_raise),
            webhook_url: Set(next.webhook_url.clone()),
            webhook_secret: Set(next.webhook_secret.as_ref().map(|s| s.expose().clone())),
            updated_at_ms: Set(now),
            updated_by: Set(actor.to_owned()),
            at_risk_engagement_threshold: Set(next.at_risk_engagement_threshold),
            churn_on_lost_renewal: Set(next.churn_on_lost_renewal),
            churn_when_contracts_end: Set(next.churn_when_contracts_end),
        };
        match model.insert(&self.db).await {
            Ok(model) => from_model(model),
            Err(error) if is_unique_violation(&error) => Err(ServiceError::Aborted(
                "the settings were changed by another call at the same time; read them again and retry"
                    .into(),
            )),
            Err(error) => Err(error.into()),
        }
    }
}
