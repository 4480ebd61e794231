//! SeaORM entities of the opportunity tables (see `migration.rs` for indexes).

pub mod opportunity {
    use sea_orm::entity::prelude::*;

    use crate::domain::{OpportunityKind, Status, Step};
    use cascade_chassis::db::Stored;

    /// An opportunity: the document (`data`, JSON) and beside it the columns
    /// lists and the pipeline report filter and sum.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "opportunities")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub opportunity_id: String,
        pub tenant_id: String,
        pub account_id: String,
        pub owner_id: String,
        pub kind: Stored<OpportunityKind>,
        pub step: Stored<Step>,
        pub status: Stored<Status>,
        pub value_currency: Option<String>,
        pub value_units: Option<i64>,
        pub value_nanos: Option<i64>,
        pub closed_at_ms: Option<i64>,
        pub create_request_id: Option<String>,
        #[sea_orm(column_type = "Text")]
        pub data: String,
        pub version: i64,
        /// What the create under `create_request_id` asked (hex SHA-256).
        pub create_request_digest: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod settings {
    use sea_orm::entity::prelude::*;

    /// One version of a tenant's opportunity settings (`data`, JSON).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "opportunity_settings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub version: i64,
        #[sea_orm(column_type = "Text")]
        pub data: String,
        pub updated_at_ms: i64,
        pub updated_by: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod contract_terms {
    use sea_orm::entity::prelude::*;

    /// When an account's contracts end and what lifecycle has been told
    /// (see `contracts.rs`). Dates are `yyyy-mm-dd` text.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "contract_terms")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: String,
        /// The last day of the account's won terms; `None` while one never ends.
        pub ends_on: Option<String>,
        /// The won opportunity whose term ends last.
        pub last_opportunity_id: Option<String>,
        /// `ends_on` while it is not yet reported to lifecycle.
        pub due_on: Option<String>,
        /// The end last reported to lifecycle.
        pub reported_on: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
