//! The outbox table as a SeaORM entity (see `migration.rs` for its indexes).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub tenant_id: String,
    pub topic: String,
    pub partition_key: String,
    pub payload: Vec<u8>,
    pub trace_context: Option<String>,
    /// `PENDING` or `DELIVERED`.
    pub state: String,
    pub attempts: i32,
    pub created_at_ms: i64,
    pub next_attempt_at_ms: i64,
    pub lease_owner: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub delivered_at_ms: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
