//! Scoring model versions: the current one, a given one, the next one; and
//! the reads' cache of each tenant's latest.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use cascade_chassis::db::begin_write;
use cascade_chassis::{ServiceError, ServiceResult, TenantId, time};
use sea_orm::sea_query::{Asterisk, Expr, ExprTrait, OnConflict, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, Statement,
};

use super::entities::{account_score, activity, contact_score, rule_usage, scoring_model};
use super::{Repository, STALE_DAY};
use crate::domain::{LIFETIME, ScoringModel, ScoringRule};

/// A tenant's model lock on PostgreSQL, an advisory lock keyed by
/// `model_lock_key`: each ingest batch shares it from its first statement to
/// its commit, and a model change holds it alone. So a change waits for the
/// batches being written under the model it replaces, and its first-occurrence
/// backfill (`remember_first_occurrences`) sees them; a batch begun meanwhile
/// waits for the change and reads the new model. On SQLite writers take
/// turns already. Two tenants whose keys collide only wait for each other.
pub(super) const MODEL_LOCK: &str = "hashtextextended($1, 0)";

/// What `MODEL_LOCK` hashes for tenant `t`.
pub(super) fn model_lock_key(t: &str) -> String {
    format!("cascade.scoring.model/{t}")
}

impl Repository {
    pub async fn current_model(&self, tenant: &TenantId) -> ServiceResult<ScoringModel> {
        current_model(&self.db, tenant.as_str()).await
    }

    pub async fn model_version(
        &self,
        tenant: &TenantId,
        version: i64,
    ) -> ServiceResult<ScoringModel> {
        match stored_model(&self.db, tenant.as_str(), version).await? {
            Some(model) => Ok(model),
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
        if txn.get_database_backend() == DbBackend::Postgres {
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!("SELECT pg_advisory_xact_lock({MODEL_LOCK})"),
                [model_lock_key(t).into()],
            ))
            .await?;
        }
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
        remember_first_occurrences(&txn, t, &current, &model).await?;
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

/// Records, for each rule `model` makes first-occurrence and `current` did
/// not, the subjects that already have an activity of its type as having
/// had their first one: usage is kept only while a rule is first-occurrence,
/// so an activity recorded before the rule was did not count and the next
/// one earned the rule's points again (a tester's finding). Usage already
/// kept stays as it is. One statement over the tenant's activities of those
/// types, on the model change that switches them on (rare, an operator's
/// act), after the batches written under the old model (`MODEL_LOCK`).
async fn remember_first_occurrences(
    conn: &impl ConnectionTrait,
    t: &str,
    current: &ScoringModel,
    model: &ScoringModel,
) -> Result<(), DbErr> {
    let was_first_occurrence = |activity_type: &str| {
        current
            .rule(activity_type)
            .is_some_and(|r| r.first_occurrence_only)
    };
    let types: Vec<&str> = model
        .rules
        .iter()
        .filter(|r| r.first_occurrence_only && !was_first_occurrence(&r.activity_type))
        .map(|r| r.activity_type.as_str())
        .collect();
    if types.is_empty() {
        return Ok(());
    }
    // The subject ingest keys usage by (`ingest::subject`).
    let subject = || Expr::cust("COALESCE(contact_id, 'account:' || account_id)");
    let mut used = Query::select();
    used.column(activity::Column::TenantId)
        .expr(subject())
        .column(activity::Column::ActivityType)
        .expr(Expr::val(LIFETIME))
        .expr(Expr::col(activity::Column::CountedPoints).sum())
        .expr(Expr::col(Asterisk).count())
        .from(activity::Entity)
        // A WHERE clause also keeps SQLite from reading the upsert's ON as
        // a join's.
        .and_where(Expr::col(activity::Column::TenantId).eq(t))
        .and_where(Expr::col(activity::Column::ActivityType).is_in(types))
        .add_group_by([
            Expr::col(activity::Column::TenantId),
            subject(),
            Expr::col(activity::Column::ActivityType),
        ]);
    let insert = Query::insert()
        .into_table(rule_usage::Entity)
        .columns([
            rule_usage::Column::TenantId,
            rule_usage::Column::Subject,
            rule_usage::Column::ActivityType,
            rule_usage::Column::Period,
            rule_usage::Column::Points,
            rule_usage::Column::Occurrences,
        ])
        .select_from(used)
        .map_err(|e| DbErr::Custom(e.to_string()))?
        .on_conflict(
            OnConflict::columns([
                rule_usage::Column::TenantId,
                rule_usage::Column::Subject,
                rule_usage::Column::ActivityType,
                rule_usage::Column::Period,
            ])
            .do_nothing()
            .to_owned(),
        )
        .to_owned();
    conn.execute(&insert).await?;
    Ok(())
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

/// The latest model a read used, per tenant. A stored version is never
/// changed, so a version number names its model for good: a read that
/// learned the tenant's current version in its own statement takes the
/// model from here instead of another round trip (`Repository::model_at`).
/// One entry per tenant, replaced when a newer version is read.
#[derive(Debug, Default)]
pub(super) struct ModelCache(Mutex<HashMap<String, Arc<ScoringModel>>>);

impl ModelCache {
    fn get(&self, t: &str, version: i64) -> Option<Arc<ScoringModel>> {
        let models = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        models.get(t).filter(|m| m.version == version).cloned()
    }

    fn keep(&self, t: &str, model: Arc<ScoringModel>) {
        let mut models = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match models.get_mut(t) {
            Some(kept) if kept.version >= model.version => {}
            Some(kept) => *kept = model,
            None => {
                models.insert(t.to_owned(), model);
            }
        }
    }
}

impl Repository {
    /// The model of `version` (the tenant's newest stored version, none
    /// while it has the default), from the cache when it holds that one.
    pub(super) async fn model_at(
        &self,
        t: &str,
        version: Option<i64>,
    ) -> ServiceResult<Arc<ScoringModel>> {
        static DEFAULT: LazyLock<Arc<ScoringModel>> =
            LazyLock::new(|| Arc::new(ScoringModel::default()));
        let Some(version) = version else {
            return Ok(DEFAULT.clone());
        };
        if let Some(model) = self.models.get(t, version) {
            return Ok(model);
        }
        let model = stored_model(&self.db, t, version).await?.ok_or_else(|| {
            ServiceError::internal(anyhow::anyhow!("scoring model {version} vanished"))
        })?;
        let model = Arc::new(model);
        self.models.keep(t, model.clone());
        Ok(model)
    }
}

/// The stored model of `version`, if there is one.
async fn stored_model(
    conn: &impl ConnectionTrait,
    t: &str,
    version: i64,
) -> ServiceResult<Option<ScoringModel>> {
    scoring_model::Entity::find_by_id((t.to_owned(), version))
        .one(conn)
        .await?
        .map(model_from_row)
        .transpose()
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
