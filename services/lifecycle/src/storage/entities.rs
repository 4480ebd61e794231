//! SeaORM entities of the lifecycle tables (see `migration.rs` for indexes).

pub mod account {
    use sea_orm::entity::prelude::*;

    use crate::domain::account_rules::AtRiskSource;
    use cascade_chassis::db::Stored;
    use cascade_domain::{AccountStage, CustomerType};

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "accounts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: String,
        pub tenant_id: String,
        pub name: String,
        pub domain: Option<String>,
        pub owner_id: Option<String>,
        pub stage: Stored<AccountStage>,
        pub customer_type: Stored<CustomerType>,
        pub stage_entered_at: DateTimeUtc,
        pub engagement_score: f64,
        pub average_engagement_score: f64,
        pub intent_score: f64,
        pub create_request_id: Option<String>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub version: i64,
        pub score_sequence: i64,
        pub score_baseline: f64,
        /// The UTC day the engagement score and the baseline are at (the
        /// last applied delivery's); `None` before days were kept.
        pub score_day: Option<i64>,
        /// The decay half-life the score and baseline decay by (the last
        /// applied delivery's); `None` before it was kept.
        pub score_half_life_days: Option<f64>,
        /// The last applied delivery's running total of what new activity
        /// added, at `score_day` (`domain::scores::ScoreDelivery::added_total`);
        /// `None` before it was kept or from an older scoring.
        pub score_added_total: Option<f64>,
        /// The sequence of the delivery that brought `score_added_total`:
        /// it counts while that is `score_sequence` (an older lifecycle
        /// applies deliveries without storing their totals).
        pub score_added_seq: Option<i64>,
        pub disqualify_count: i32,
        pub nurture_count: i32,
        pub last_recycle_transition_id: Option<String>,
        pub transition_count: i64,
        pub created_at_ms: i64,
        pub external_id: Option<String>,
        /// The open deals lifecycle knows of, "opportunity_id:KIND" per line
        /// (`accounts::open_opportunities`).
        pub open_opportunities: String,
        pub at_risk_reason: Option<String>,
        pub at_risk_source: Option<Stored<AtRiskSource>>,
        pub at_risk_actor: Option<String>,
        pub at_risk_since_ms: Option<i64>,
        /// What the create under `create_request_id` asked (hex SHA-256).
        pub create_request_digest: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod contact {
    use sea_orm::entity::prelude::*;

    use cascade_chassis::db::Stored;
    use cascade_domain::ContactStage;

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
        pub stage: Stored<ContactStage>,
        pub stage_entered_at: DateTimeUtc,
        pub engagement_score: f64,
        pub create_request_id: Option<String>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub has_activity: bool,
        pub external_id: Option<String>,
        pub inactive_since_ms: Option<i64>,
        pub inactive_reason: Option<String>,
        /// What the create under `create_request_id` asked (hex SHA-256).
        pub create_request_digest: Option<String>,
        /// The last hand-raise while the contact was an OPPORTUNITY
        /// (`contact_rules::after_event`, leaving a deal).
        pub hand_raised_at_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod transition {
    use sea_orm::entity::prelude::*;

    use crate::domain::account_rules::TransitionCause;
    use cascade_chassis::db::Stored;
    use cascade_domain::{AccountStage, CustomerType};

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "account_transitions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub transition_id: String,
        pub tenant_id: String,
        pub account_id: String,
        pub seq: i64,
        pub from_stage: Stored<AccountStage>,
        pub to_stage: Stored<AccountStage>,
        pub from_rank: i32,
        pub to_rank: i32,
        pub from_customer_type: Stored<CustomerType>,
        pub to_customer_type: Stored<CustomerType>,
        pub cause: Stored<TransitionCause>,
        pub actor: String,
        pub reason: Option<String>,
        pub event_id: Option<String>,
        pub settings_version: i64,
        pub occurred_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod contact_transition {
    use sea_orm::entity::prelude::*;

    use crate::domain::contact_rules::ContactTransitionCause;
    use cascade_chassis::db::Stored;
    use cascade_domain::ContactStage;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact_transitions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub transition_id: String,
        pub tenant_id: String,
        pub contact_id: String,
        pub account_id: String,
        pub from_stage: Stored<ContactStage>,
        pub to_stage: Stored<ContactStage>,
        pub cause: Stored<ContactTransitionCause>,
        pub actor: String,
        pub event_id: Option<String>,
        pub occurred_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod stage_first {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "stage_firsts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub subject_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub stage: String,
        pub tenant_id: String,
        pub first_reached_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod applied_event {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "applied_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub account_id: String,
        pub applied_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod account_opportunity {
    use sea_orm::entity::prelude::*;

    use cascade_chassis::db::Stored;
    use cascade_domain::OpportunityKind;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "account_opportunities")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub opportunity_id: String,
        pub account_id: String,
        pub status: String,
        pub kind: Stored<OpportunityKind>,
        /// The newest version of the deal an event was applied of (0: none
        /// with a version); an older one is stale.
        pub version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod opportunity_contact {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "opportunity_contacts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub opportunity_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod settings {
    use sea_orm::entity::prelude::*;

    use crate::domain::settings::OnLostAction;
    use cascade_chassis::db::Stored;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "lifecycle_settings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub version: i64,
        pub engaged_threshold: f64,
        pub prioritized_threshold: f64,
        pub qualified_stage_enabled: bool,
        pub on_lost_action: Stored<OnLostAction>,
        /// Activity types joined by newlines.
        pub hand_raise_activity_types: String,
        pub renotify_on_hand_raise: bool,
        pub webhook_url: Option<String>,
        pub webhook_secret: Option<String>,
        pub updated_at_ms: i64,
        pub updated_by: String,
        pub at_risk_engagement_threshold: f64,
        pub churn_on_lost_renewal: bool,
        pub churn_when_contracts_end: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod notification {
    use sea_orm::entity::prelude::*;

    use crate::domain::{DeliveryState, NotificationReason};
    use cascade_chassis::db::Stored;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "notifications")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub notification_id: String,
        pub tenant_id: String,
        pub account_id: String,
        pub owner_id: String,
        pub reason: Stored<NotificationReason>,
        pub text: String,
        pub created_at_ms: i64,
        pub state: Stored<DeliveryState>,
        /// When it was delivered, or set aside for want of a webhook.
        pub delivered_at_ms: Option<i64>,
        pub failed_attempts: i32,
        pub last_error: Option<String>,
        pub last_attempt_at_ms: Option<i64>,
        /// Whom a hand-raise text names (`NotificationDraft`); none on
        /// other notifications and on those written before.
        pub raiser_contact_id: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod account_event {
    use sea_orm::entity::prelude::*;

    /// One entry of a tenant's watch feed: the WatchAccountEvents message as
    /// sent, by its sequence number in the tenant's feed.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "account_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub account_id: String,
        pub to_stage: Option<String>,
        pub payload: Vec<u8>,
        pub created_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod tenant_event_counter {
    use sea_orm::entity::prelude::*;

    /// The last sequence number given out in a tenant's watch feed.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "tenant_event_counters")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        pub last_seq: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod erasure {
    use sea_orm::entity::prelude::*;

    use crate::domain::erasure::ErasureSubject;
    use cascade_chassis::db::Stored;

    /// One erasure: what it erased, and when each service had erased its part.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "erasures")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub erasure_id: String,
        pub tenant_id: String,
        pub subject_type: Stored<ErasureSubject>,
        pub subject_id: String,
        pub account_id: String,
        /// The erased contacts' ids, one per line.
        #[sea_orm(column_type = "Text")]
        pub contact_ids: String,
        pub actor: String,
        pub created_at_ms: i64,
        pub scoring_done_at_ms: Option<i64>,
        pub opportunity_done_at_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod contact_change {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact_changes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub change_id: String,
        pub tenant_id: String,
        pub contact_id: String,
        pub account_id: String,
        pub inactive: bool,
        /// Only the email changed: `inactive` is informative, not applied.
        pub email_only: bool,
        pub created_at_ms: i64,
        pub scoring_done_at_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
