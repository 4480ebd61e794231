//! SeaORM entities of the scoring tables (see `migration.rs` for the schema
//! and indexes). Every table is keyed by tenant first.

pub mod scoring_model {
    use sea_orm::entity::prelude::*;

    /// One version of a tenant's scoring model; rules and intent types are JSON.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "scoring_models")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub version: i64,
        pub rules: String,
        pub decay_half_life_days: f64,
        pub intent_activity_types: String,
        pub created_at_ms: i64,
        pub created_by: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod activity {
    use sea_orm::entity::prelude::*;

    /// One stored activity: the ledger line, with what it was scored as.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "activities")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub account_id: String,
        pub contact_id: Option<String>,
        pub activity_type: String,
        pub occurred_at_ms: i64,
        pub model_version: i64,
        pub rule_points: i32,
        pub counted_points: i32,
        pub capped: bool,
        pub intent: bool,
        pub recorded_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod rule_usage {
    use sea_orm::entity::prelude::*;

    /// Points and occurrences a subject used of a rule in one cap period.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "rule_usage")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub subject: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub activity_type: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub period: i64,
        pub points: i64,
        pub occurrences: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod score_bucket {
    use sea_orm::entity::prelude::*;

    /// Points and activities per account, contact ("" without one), type,
    /// intent flag and day: what scores are computed from.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "score_buckets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub activity_type: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub intent: bool,
        #[sea_orm(primary_key, auto_increment = false)]
        pub day: i64,
        pub points: i64,
        pub activity_count: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod account_score {
    use sea_orm::entity::prelude::*;

    /// An account's scores as of `computed_day` (-1: to recompute), and the
    /// sequence of its last delivery to lifecycle.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "account_scores")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: String,
        pub engagement_score: f64,
        pub intent_score: f64,
        pub engaged_contacts: i32,
        pub computed_day: i64,
        pub delivery_seq: i64,
        /// `StoredBreakdown` (protobuf) as of `computed_day`; NULL in a row
        /// from before it was kept, which is then recomputed.
        pub breakdown: Option<Vec<u8>>,
        /// Every activity counted as of `computed_day`, intent ones too.
        pub activity_count: i64,
        /// The `delivery_seq` the breakdown was written with: a replica of
        /// an older version rewrites the scores (and the sequence) but not
        /// the breakdown, which then no longer matches and is recomputed.
        pub breakdown_seq: i64,
        /// The running total of what the account's new activity added
        /// (`domain::added_total`), at `added_day`: apart from
        /// `computed_day`, which a model change resets.
        pub added_total: f64,
        pub added_day: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod contact_score {
    use sea_orm::entity::prelude::*;

    /// A contact's engagement score as of `computed_day`, under its account.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact_scores")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        pub account_id: String,
        pub engagement_score: f64,
        pub computed_day: i64,
        /// The contact has engagement activities under `account_id`.
        pub engaged: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod contact_status {
    use sea_orm::entity::prelude::*;

    /// A contact lifecycle marked inactive (or active again): while
    /// `inactive`, its buckets do not count toward its account's scores.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact_status")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        pub account_id: String,
        pub inactive: bool,
        /// When this replica's service applied the change (since when the
        /// contact has this status, as scoring knows it).
        pub since_ms: i64,
        /// Lifecycle's id of the change applied last (UUIDv7: later changes
        /// have greater ids).
        pub change_id: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod pending_fold {
    use sea_orm::entity::prelude::*;

    /// A group's activities, stored but not yet folded into the scores;
    /// `buckets` is a `cascade.outbox.v1.PendingFold`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "pending_folds")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub tenant_id: String,
        pub recorded_at_ms: i64,
        pub buckets: Vec<u8>,
        /// W3C trace context of the group's first request (`key=value` lines).
        pub trace_context: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
