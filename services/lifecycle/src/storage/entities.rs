//! SeaORM entities of the lifecycle tables (see `migration.rs` for indexes).

pub mod account {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "accounts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: String,
        pub tenant_id: String,
        pub name: String,
        pub domain: Option<String>,
        pub owner_id: Option<String>,
        pub stage: String,
        pub customer_type: String,
        pub stage_entered_at: DateTimeUtc,
        pub engagement_score: f64,
        pub average_engagement_score: f64,
        pub intent_score: f64,
        pub create_request_id: Option<String>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod contact {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "contacts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        pub tenant_id: String,
        pub account_id: String,
        pub email: Option<String>,
        pub first_name: String,
        pub last_name: String,
        pub title: String,
        pub stage: String,
        pub stage_entered_at: DateTimeUtc,
        pub engagement_score: f64,
        pub create_request_id: Option<String>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
