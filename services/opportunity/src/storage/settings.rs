//! A tenant's opportunity settings, one row per version.

use cascade_chassis::error::is_unique_violation;
use cascade_chassis::{ServiceError, ServiceResult, TenantId, time};
use cascade_domain::Money;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
};
use serde::{Deserialize, Serialize};

use super::Repository;
use super::entities::settings;
use crate::domain::Settings;

/// Settings as stored (JSON in `data`).
#[derive(Serialize, Deserialize)]
struct StoredSettings {
    large_deal_threshold: Money,
    discover_display_name: String,
    probabilities: [i32; 4],
    currency: String,
}

impl Repository {
    /// The settings in force, or the given version of them.
    pub async fn settings(
        &self,
        tenant: &TenantId,
        version: Option<i64>,
    ) -> ServiceResult<Settings> {
        let Some(version) = version else {
            return current_settings(&self.db, tenant.as_str()).await;
        };
        let row = settings::Entity::find_by_id((tenant.as_str().to_owned(), version))
            .one(&self.db)
            .await?;
        match row {
            Some(row) => from_model(row),
            None if version == 1 => Ok(Settings::default()),
            None => Err(ServiceError::not_found(
                "opportunity settings version",
                version.to_string(),
            )),
        }
    }

    /// Stores `next`, a change of the version it was read as, as the next
    /// version; ABORTED when another call stored that version first.
    pub async fn store_settings(
        &self,
        tenant: &TenantId,
        actor: &str,
        mut next: Settings,
    ) -> ServiceResult<Settings> {
        next.version += 1;
        let now = time::now().timestamp_millis();
        let stored = StoredSettings {
            large_deal_threshold: next.large_deal_threshold,
            discover_display_name: next.discover_display_name.clone(),
            probabilities: next.probabilities,
            currency: next.currency.clone(),
        };
        let data = serde_json::to_string(&stored).map_err(ServiceError::internal)?;
        // On SQLite, in line with the file's other writers (`begin_write`).
        let _turn = cascade_chassis::db::write_turn(&self.db).await?;
        let result = settings::Entity::insert(settings::ActiveModel {
            tenant_id: Set(tenant.as_str().to_owned()),
            version: Set(next.version),
            data: Set(data),
            updated_at_ms: Set(now),
            updated_by: Set(actor.to_owned()),
        })
        .exec_without_returning(&self.db)
        .await;
        match result {
            Ok(_) => {
                next.updated_at_ms = Some(now);
                next.updated_by = Some(actor.to_owned());
                Ok(next)
            }
            Err(e) if is_unique_violation(&e) => Err(ServiceError::Aborted(
                "the settings were changed by another call at the same time; read them again and retry".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

/// The newest version of a tenant's settings, or the defaults (version 1).
pub(super) async fn current_settings(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
) -> ServiceResult<Settings> {
    let row = settings::Entity::find()
        .filter(settings::Column::TenantId.eq(tenant_id))
        .order_by_desc(settings::Column::Version)
        .one(conn)
        .await?;
    row.map_or_else(|| Ok(Settings::default()), from_model)
}

fn from_model(row: settings::Model) -> ServiceResult<Settings> {
    let stored: StoredSettings = serde_json::from_str(&row.data)
        .map_err(|e| ServiceError::internal(anyhow::anyhow!("stored settings unreadable: {e}")))?;
    Ok(Settings {
        version: row.version,
        large_deal_threshold: stored.large_deal_threshold,
        discover_display_name: stored.discover_display_name,
        probabilities: stored.probabilities,
        currency: stored.currency,
        updated_at_ms: Some(row.updated_at_ms),
        updated_by: Some(row.updated_by),
    })
}
