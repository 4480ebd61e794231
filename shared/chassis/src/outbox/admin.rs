//! `cascade.admin.v1.OutboxAdminService`: an operator lists the dead letters
//! of the service's outbox and puts them back in line. Served by every
//! service for its own outbox, scoped to the caller's tenant.

use cascade_proto::admin::v1 as pb;
use cascade_proto::admin::v1::outbox_admin_service_server::OutboxAdminService;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use tonic::{Request, Response, Status};

use super::entity as outbox;
use super::{DEAD, PENDING, now_ms};
use crate::context::RequestContext;
use crate::error::ServiceError;
use crate::page::PageRequest;
use crate::validate::Validator;

/// Ids one RetryDeadLetters call takes at most.
const MAX_RETRY_IDS: usize = 1_000;

/// The admin service over one service's outbox.
#[derive(Clone)]
pub struct OutboxAdmin {
    db: DatabaseConnection,
    /// The service's topics: a filter naming another is a typo that would
    /// hide every dead letter, so it is refused.
    topics: &'static [&'static str],
}

impl OutboxAdmin {
    pub fn new(db: DatabaseConnection, topics: &'static [&'static str]) -> Self {
        Self { db, topics }
    }

    /// `topic` as a filter: empty for every topic, else one of the service's.
    fn topic_filter(&self, topic: &str) -> Result<Option<String>, ServiceError> {
        // Blank is not empty: read as "every topic", it would have
        // RetryDeadLetters `all` put back every topic's dead letters.
        let mut v = Validator::new();
        v.filter_not_blank("topic", topic);
        v.finish()?;
        let topic = topic.trim();
        if topic.is_empty() {
            return Ok(None);
        }
        if self.topics.contains(&topic) {
            return Ok(Some(topic.to_owned()));
        }
        Err(ServiceError::invalid(
            "topic",
            format!(
                "must be empty (every topic) or one of this service's: {}",
                self.topics.join(", ")
            ),
        ))
    }
}

fn dead_letter(m: outbox::Model) -> pb::DeadLetter {
    let time = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(crate::time::to_timestamp);
    pb::DeadLetter {
        id: m.id,
        topic: m.topic,
        partition_key: m.partition_key,
        attempts: m.attempts,
        last_error: m.last_error.unwrap_or_default(),
        create_time: time(m.created_at_ms),
        // Set to the last attempt's time when the message died.
        last_attempt_time: time(m.next_attempt_at_ms),
    }
}

#[tonic::async_trait]
impl OutboxAdminService for OutboxAdmin {
    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let topic = self.topic_filter(&request.topic)?;
        let page = PageRequest::of(&context.tenant, &request)?;
        let mut query = outbox::Entity::find()
            .filter(outbox::Column::TenantId.eq(context.tenant.as_str()))
            .filter(outbox::Column::State.eq(DEAD));
        if let Some(topic) = topic {
            query = query.filter(outbox::Column::Topic.eq(topic));
        }
        if let Some(after) = &page.after {
            query = query.filter(outbox::Column::Id.gt(after.as_str()));
        }
        let rows = query
            .order_by_asc(outbox::Column::Id)
            .limit(page.fetch_limit())
            .all(&self.db)
            .await
            .map_err(ServiceError::from)?;
        let (rows, next_page_token) = page.finish(rows, |m| m.id.clone());
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: rows.into_iter().map(dead_letter).collect(),
            next_page_token,
        }))
    }

    async fn retry_dead_letters(
        &self,
        request: Request<pb::RetryDeadLettersRequest>,
    ) -> Result<Response<pb::RetryDeadLettersResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        if request.ids.is_empty() && !request.all {
            return Err(ServiceError::invalid("ids", "name dead letters, or set all").into());
        }
        if !request.ids.is_empty() && request.all {
            // Which did the caller mean? Retrying everything by mistake is
            // not undone.
            return Err(ServiceError::invalid(
                "all",
                "name dead letters in ids or set all, not both",
            )
            .into());
        }
        if request.ids.len() > MAX_RETRY_IDS {
            return Err(
                ServiceError::invalid("ids", format!("at most {MAX_RETRY_IDS} per call")).into(),
            );
        }
        let topic = self.topic_filter(&request.topic)?;
        let mut v = Validator::new();
        let ids: Vec<String> = request
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| v.required_id(&format!("ids[{i}]"), id))
            .collect();
        v.finish()?;
        let mut update = outbox::Entity::update_many()
            .col_expr(outbox::Column::State, Expr::value(PENDING))
            .col_expr(outbox::Column::Attempts, Expr::value(0))
            .col_expr(outbox::Column::NextAttemptAtMs, Expr::value(now_ms()))
            .filter(outbox::Column::TenantId.eq(context.tenant.as_str()))
            .filter(outbox::Column::State.eq(DEAD));
        if let Some(topic) = topic {
            update = update.filter(outbox::Column::Topic.eq(topic));
        }
        if !request.all {
            update = update.filter(outbox::Column::Id.is_in(ids.iter().map(String::as_str)));
        }
        let _turn = crate::db::write_turn(&self.db)
            .await
            .map_err(ServiceError::from)?;
        let retried = update.exec(&self.db).await.map_err(ServiceError::from)?;
        tracing::info!(
            tenant = %context.tenant,
            retried = retried.rows_affected,
            "dead letters put back in line"
        );
        Ok(Response::new(pb::RetryDeadLettersResponse {
            retried_count: i32::try_from(retried.rows_affected).unwrap_or(i32::MAX),
        }))
    }
}
