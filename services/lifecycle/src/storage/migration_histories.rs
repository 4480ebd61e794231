//! Contacts' stage history, and the webhook delivery state of notifications
//! (failed attempts and the last error, which the outbox alone kept).

use sea_orm_migration::prelude::*;

use super::migration_stage_engine::{add_column, index};

pub struct ContactHistoryAndDeliveries;

impl MigrationName for ContactHistoryAndDeliveries {
    fn name(&self) -> &str {
        "m20261201_000003_contact_history_and_deliveries"
    }
}

#[derive(DeriveIden)]
enum ContactTransitions {
    Table,
    TransitionId,
    TenantId,
    ContactId,
    AccountId,
    FromStage,
    ToStage,
    Cause,
    Actor,
    EventId,
    OccurredAtMs,
}

#[derive(DeriveIden)]
enum Notifications {
    Table,
    TenantId,
    NotificationId,
    FailedAttempts,
    LastError,
    LastAttemptAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for ContactHistoryAndDeliveries {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ContactTransitions::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ContactTransitions::TransitionId)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ContactTransitions::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactTransitions::ContactId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactTransitions::AccountId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactTransitions::FromStage)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactTransitions::ToStage)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactTransitions::Cause)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactTransitions::Actor)
                            .string_len(200)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactTransitions::EventId)
                            .string_len(200)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ContactTransitions::OccurredAtMs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // ListContactTransitions: one contact's moves in id (time) order.
        index(
            manager,
            "ix_contact_transitions_contact",
            ContactTransitions::Table,
            vec![
                ContactTransitions::TenantId.into_iden(),
                ContactTransitions::ContactId.into_iden(),
                ContactTransitions::TransitionId.into_iden(),
            ],
        )
        .await?;

        add_column(
            manager,
            Notifications::Table,
            ColumnDef::new(Notifications::FailedAttempts)
                .integer()
                .not_null()
                .default(0),
        )
        .await?;
        add_column(
            manager,
            Notifications::Table,
            ColumnDef::new(Notifications::LastError)
                .string_len(1000)
                .null(),
        )
        .await?;
        add_column(
            manager,
            Notifications::Table,
            ColumnDef::new(Notifications::LastAttemptAtMs)
                .big_integer()
                .null(),
        )
        .await?;
        // ListNotifications: a tenant's notifications, newest first.
        index(
            manager,
            "ix_notifications_tenant",
            Notifications::Table,
            vec![
                Notifications::TenantId.into_iden(),
                Notifications::NotificationId.into_iden(),
            ],
        )
        .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the contact history migration is not reversible: it would drop history".into(),
        ))
    }
}
