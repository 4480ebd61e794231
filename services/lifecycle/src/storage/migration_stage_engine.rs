//! Tables of the stage engine: history, first-reached dates, applied events,
//! opportunities known to lifecycle, settings versions, notifications and the
//! watch feed.

use sea_orm_migration::prelude::*;

pub struct StageEngine;

impl MigrationName for StageEngine {
    fn name(&self) -> &str {
        "m20261124_000002_stage_engine"
    }
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    TenantId,
    ScoreSequence,
    ScoreBaseline,
    DisqualifyCount,
    NurtureCount,
    LastRecycleTransitionId,
    TransitionCount,
    CreatedAtMs,
}

#[derive(DeriveIden)]
enum Contacts {
    Table,
    HasActivity,
}

#[derive(DeriveIden)]
enum AccountTransitions {
    Table,
    TransitionId,
    TenantId,
    AccountId,
    Seq,
    FromStage,
    ToStage,
    FromRank,
    ToRank,
    FromCustomerType,
    ToCustomerType,
    Cause,
    Actor,
    Reason,
    EventId,
    SettingsVersion,
    OccurredAtMs,
}

#[derive(DeriveIden)]
enum StageFirsts {
    Table,
    SubjectId,
    Stage,
    TenantId,
    FirstReachedAtMs,
}

#[derive(DeriveIden)]
enum AppliedEvents {
    Table,
    TenantId,
    EventId,
    AccountId,
    AppliedAtMs,
}

#[derive(DeriveIden)]
enum AccountOpportunities {
    Table,
    TenantId,
    OpportunityId,
    AccountId,
    Status,
}

#[derive(DeriveIden)]
enum OpportunityContacts {
    Table,
    TenantId,
    OpportunityId,
    ContactId,
}

#[derive(DeriveIden)]
enum LifecycleSettings {
    Table,
    TenantId,
    Version,
    EngagedThreshold,
    PrioritizedThreshold,
    QualifiedStageEnabled,
    OnLostAction,
    HandRaiseActivityTypes,
    RenotifyOnHandRaise,
    WebhookUrl,
    WebhookSecret,
    UpdatedAtMs,
    UpdatedBy,
}

#[derive(DeriveIden)]
enum Notifications {
    Table,
    NotificationId,
    TenantId,
    AccountId,
    OwnerId,
    Reason,
    Text,
    CreatedAtMs,
    State,
    DeliveredAtMs,
}

#[derive(DeriveIden)]
enum AccountEvents {
    Table,
    TenantId,
    Seq,
    AccountId,
    ToStage,
    Payload,
    CreatedAtMs,
}

#[derive(DeriveIden)]
enum TenantEventCounters {
    Table,
    TenantId,
    LastSeq,
}

pub(super) async fn add_column(
    manager: &SchemaManager<'_>,
    table: impl IntoTableRef,
    column: &mut ColumnDef,
) -> Result<(), DbErr> {
    // One column per statement: SQLite's ALTER TABLE takes one at a time.
    manager
        .alter_table(Table::alter().table(table).add_column(column).to_owned())
        .await
}

/// Accounts created before this migration get `created_at_ms` from
/// `created_at` (converted here, as the two backends store times differently).
async fn backfill_created_at_ms(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let conn = manager.get_connection();
    let backend = conn.get_database_backend();
    let rows = conn
        .query_all_raw(sea_orm::Statement::from_string(
            backend,
            "SELECT account_id, created_at FROM accounts",
        ))
        .await?;
    for row in rows {
        let id: String = row.try_get("", "account_id")?;
        let created: chrono::DateTime<chrono::Utc> = row.try_get("", "created_at")?;
        conn.execute_raw(sea_orm::Statement::from_sql_and_values(
            backend,
            "UPDATE accounts SET created_at_ms = $1 WHERE account_id = $2",
            [created.timestamp_millis().into(), id.into()],
        ))
        .await?;
    }
    Ok(())
}

pub(super) async fn index(
    manager: &SchemaManager<'_>,
    name: &str,
    table: impl IntoTableRef,
    columns: Vec<DynIden>,
) -> Result<(), DbErr> {
    let mut index = Index::create();
    index.name(name).table(table).if_not_exists();
    for column in columns {
        index.col(column);
    }
    manager.create_index(index.to_owned()).await
}

#[async_trait::async_trait]
impl MigrationTrait for StageEngine {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::ScoreSequence)
                .big_integer()
                .not_null()
                .default(0),
        )
        .await?;
        add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::ScoreBaseline)
                .double()
                .not_null()
                .default(0.0),
        )
        .await?;
        add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::DisqualifyCount)
                .integer()
                .not_null()
                .default(0),
        )
        .await?;
        add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::NurtureCount)
                .integer()
                .not_null()
                .default(0),
        )
        .await?;
        add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::LastRecycleTransitionId)
                .string_len(36)
                .null(),
        )
        .await?;
        add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::TransitionCount)
                .big_integer()
                .not_null()
                .default(0),
        )
        .await?;
        add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::CreatedAtMs)
                .big_integer()
                .not_null()
                .default(0),
        )
        .await?;
        backfill_created_at_ms(manager).await?;
        // The funnel reads creations as entries into TARGETED.
        index(
            manager,
            "ix_accounts_tenant_created",
            Accounts::Table,
            vec![
                Accounts::TenantId.into_iden(),
                Accounts::CreatedAtMs.into_iden(),
            ],
        )
        .await?;
        add_column(
            manager,
            Contacts::Table,
            ColumnDef::new(Contacts::HasActivity)
                .boolean()
                .not_null()
                .default(false),
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(AccountTransitions::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(AccountTransitions::TransitionId)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(AccountTransitions::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountTransitions::AccountId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountTransitions::Seq)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountTransitions::FromStage)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountTransitions::ToStage)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountTransitions::FromRank)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountTransitions::ToRank)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountTransitions::FromCustomerType)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountTransitions::ToCustomerType)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountTransitions::Cause)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountTransitions::Actor)
                            .string_len(200)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountTransitions::Reason)
                            .string_len(1000)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(AccountTransitions::EventId)
                            .string_len(128)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(AccountTransitions::SettingsVersion)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountTransitions::OccurredAtMs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_transitions_account_seq")
                    .table(AccountTransitions::Table)
                    .col(AccountTransitions::AccountId)
                    .col(AccountTransitions::Seq)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "ix_transitions_tenant_time",
            AccountTransitions::Table,
            vec![
                AccountTransitions::TenantId.into_iden(),
                AccountTransitions::OccurredAtMs.into_iden(),
            ],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(StageFirsts::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(StageFirsts::SubjectId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(ColumnDef::new(StageFirsts::Stage).string_len(32).not_null())
                    .col(
                        ColumnDef::new(StageFirsts::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(StageFirsts::FirstReachedAtMs)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(StageFirsts::SubjectId)
                            .col(StageFirsts::Stage),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AppliedEvents::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(AppliedEvents::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AppliedEvents::EventId)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AppliedEvents::AccountId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AppliedEvents::AppliedAtMs)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(AppliedEvents::TenantId)
                            .col(AppliedEvents::EventId),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AccountOpportunities::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(AccountOpportunities::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountOpportunities::OpportunityId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountOpportunities::AccountId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AccountOpportunities::Status)
                            .string_len(16)
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(AccountOpportunities::TenantId)
                            .col(AccountOpportunities::OpportunityId),
                    )
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "ix_account_opportunities_account",
            AccountOpportunities::Table,
            vec![
                AccountOpportunities::TenantId.into_iden(),
                AccountOpportunities::AccountId.into_iden(),
                AccountOpportunities::Status.into_iden(),
            ],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(OpportunityContacts::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(OpportunityContacts::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OpportunityContacts::OpportunityId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OpportunityContacts::ContactId)
                            .string_len(36)
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(OpportunityContacts::TenantId)
                            .col(OpportunityContacts::OpportunityId)
                            .col(OpportunityContacts::ContactId),
                    )
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "ix_opportunity_contacts_contact",
            OpportunityContacts::Table,
            vec![
                OpportunityContacts::TenantId.into_iden(),
                OpportunityContacts::ContactId.into_iden(),
            ],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(LifecycleSettings::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(LifecycleSettings::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(LifecycleSettings::Version)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(LifecycleSettings::EngagedThreshold)
                            .double()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(LifecycleSettings::PrioritizedThreshold)
                            .double()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(LifecycleSettings::QualifiedStageEnabled)
                            .boolean()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(LifecycleSettings::OnLostAction)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(LifecycleSettings::HandRaiseActivityTypes)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(LifecycleSettings::RenotifyOnHandRaise)
                            .boolean()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(LifecycleSettings::WebhookUrl)
                            .string_len(2048)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(LifecycleSettings::WebhookSecret)
                            .string_len(512)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(LifecycleSettings::UpdatedAtMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(LifecycleSettings::UpdatedBy)
                            .string_len(200)
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(LifecycleSettings::TenantId)
                            .col(LifecycleSettings::Version),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Notifications::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Notifications::NotificationId)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Notifications::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Notifications::AccountId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Notifications::OwnerId)
                            .string_len(200)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Notifications::Reason)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Notifications::Text)
                            .string_len(2000)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Notifications::CreatedAtMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Notifications::State)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Notifications::DeliveredAtMs)
                            .big_integer()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "ix_notifications_account",
            Notifications::Table,
            vec![
                Notifications::TenantId.into_iden(),
                Notifications::AccountId.into_iden(),
            ],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(AccountEvents::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(AccountEvents::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(AccountEvents::Seq).big_integer().not_null())
                    .col(
                        ColumnDef::new(AccountEvents::AccountId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(ColumnDef::new(AccountEvents::ToStage).string_len(32).null())
                    .col(ColumnDef::new(AccountEvents::Payload).blob().not_null())
                    .col(
                        ColumnDef::new(AccountEvents::CreatedAtMs)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(AccountEvents::TenantId)
                            .col(AccountEvents::Seq),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(TenantEventCounters::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(TenantEventCounters::TenantId)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(TenantEventCounters::LastSeq)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the stage engine migration is not reversible: it would drop history".into(),
        ))
    }
}
