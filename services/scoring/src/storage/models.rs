//! Scoring model versions: the current one, a given one, the next one.

use cascade_chassis::db::begin_write;
use cascade_chassis::{ServiceError, ServiceResult, TenantId, time};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
};

use super::entities::{account_score, contact_score, scoring_model};
use super::{Repository, STALE_DAY};
use crate::domain::{ScoringModel, ScoringRule};

impl Repository {
    pub async fn current_model(&self, tenant: &TenantId) -> ServiceResult<ScoringModel> {
        current_model(&self.db, tenant.as_str()).await
    }

    pub async fn model_version(
        &self,
        tenant: &TenantId,
        version: i64,
    ) -> ServiceResult<ScoringModel> {
        let row = scoring_model::Entity::find_by_id((tenant.as_str().to_owned(), version))
            .one(&self.db)
            .await?;
        match row {
            Some(row) => model_from_row(row),
            None if version == 1 => Ok(ScoringModel::default()),
            None => Err(ServiceError::not_found(
                "scoring model version",
                version.to_string(),
            )),
        }
    }

    /// Stores `model` as the next version.
    pub async fn update_model(
        &self,
        tenant: &TenantId,
        actor: &str,
        mut model: ScoringModel,
    ) -> ServiceResult<ScoringModel> {
        let t = tenant.as_str();
        let txn = begin_write(&self.db).await?;
        let current = current_model(&txn, t).await?;
        model.version = current.version + 1;
        let now = time::now().timestamp_millis();
        let row = scoring_model::ActiveModel {
            tenant_id: Set(t.to_owned()),
            version: Set(model.version),
            rules: Set(serde_json::to_string(&model.rules).map_err(ServiceError::internal)?),
            decay_half_life_days: Set(model.decay_half_life_days),
            intent_activity_types: Set(serde_json::to_string(&model.intent_activity_types)
                .map_err(ServiceError::internal)?),
            created_at_ms: Set(now),
            created_by: Set(actor.to_owned()),
        };
        match scoring_model::Entity::insert(row)
            .exec_without_returning(&txn)
            .await
        {
            Ok(_) => {}
            Err(e) if cascade_chassis::error::is_unique_violation(&e) => {
                return Err(ServiceError::Aborted(
                    "the model was changed by another call at the same time; read it again and retry"
                        .into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        // Stored scores carry the old model's decay: mark them stale, so the
        // next batch or read recomputes them from the buckets.
        account_score::Entity::update_many()
            .col_expr(account_score::Column::ComputedDay, Expr::value(STALE_DAY))
            .filter(account_score::Column::TenantId.eq(t))
            .exec(&txn)
            .await?;
        contact_score::Entity::update_many()
            .col_expr(contact_score::Column::ComputedDay, Expr::value(STALE_DAY))
            .filter(contact_score::Column::TenantId.eq(t))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        model.created_at_ms = Some(now);
        model.created_by = Some(actor.to_owned());
        Ok(model)
    }
}

/// The tenant's latest model, or the default one before any was stored.
pub(super) async fn current_model(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
) -> ServiceResult<ScoringModel> {
    scoring_model::Entity::find()
        .filter(scoring_model::Column::TenantId.eq(tenant_id))
        .order_by_desc(scoring_model::Column::Version)
        .one(conn)
        .await?
        .map_or_else(|| Ok(ScoringModel::default()), model_from_row)
}

fn model_from_row(row: scoring_model::Model) -> ServiceResult<ScoringModel> {
    Ok(ScoringModel {
        version: row.version,
        rules: serde_json::from_str::<Vec<ScoringRule>>(&row.rules)
            .map_err(|e| ServiceError::internal(anyhow::anyhow!("stored rules unreadable: {e}")))?,
        decay_half_life_days: row.decay_half_life_days,
        intent_activity_types: serde_json::from_str(&row.intent_activity_types).map_err(|e| {
            ServiceError::internal(anyhow::anyhow!("stored intent types unreadable: {e}"))
        })?,
        created_at_ms: Some(row.created_at_ms),
        created_by: Some(row.created_by),
    })
}
