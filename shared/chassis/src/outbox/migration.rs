//! The outbox table and its pending index.

use sea_orm_migration::prelude::*;

/// The outbox table; every service that uses the outbox lists this migration.
pub struct OutboxMigration;

impl MigrationName for OutboxMigration {
    fn name(&self) -> &str {
        "m20261124_100000_outbox"
    }
}

/// A partial index over pending messages only: the claim (heads by
/// partition) and the run read touch the pending rows, not the delivered
/// ones kept for `retention`.
pub struct OutboxPendingIndexMigration;

impl MigrationName for OutboxPendingIndexMigration {
    fn name(&self) -> &str {
        "m20261201_000000_outbox_pending_indexes"
    }
}

#[tonic::async_trait]
impl MigrationTrait for OutboxPendingIndexMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Plain SQL, the same on PostgreSQL and SQLite: the predicate must
        // match the literal `state = 'PENDING'` the claim and run queries use.
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS ix_outbox_pending_partition \
             ON outbox (topic, tenant_id, partition_key, id) WHERE state = 'PENDING'",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX IF EXISTS ix_outbox_pending_partition")
            .await?;
        Ok(())
    }
}

/// Less index work per message: every message is inserted, leased and
/// marked delivered, and each non-HOT update writes an entry into every
/// index (docs/performance.md, round 14).
/// - `ix_outbox_partition` goes: the pending index serves the claim and the
///   run read, and `ix_outbox_due`'s (topic, state) prefix the counts and
///   the purge.
/// - On PostgreSQL the table leaves 40 % of each page free, so the lease
///   update (no indexed column changes) stays on its page as a HOT update,
///   with no index entries at all. SQLite has no such setting.
pub struct OutboxChurnMigration;

impl MigrationName for OutboxChurnMigration {
    fn name(&self) -> &str {
        "m20261203_400000_outbox_churn"
    }
}

#[tonic::async_trait]
impl MigrationTrait for OutboxChurnMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS ix_outbox_partition")
            .await?;
        crate::db::set_fill_factor(manager, "outbox", 60).await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the outbox churn migration is not reversible".into(),
        ))
    }
}

/// PostgreSQL: the outbox's keys (id, tenant, topic, partition, state)
/// compare byte by byte (`crate::db::byte_order_keys`): every message is
/// inserted, claimed and marked through its indexes. A service whose own
/// migration converts its outbox with its other tables (scoring) finds
/// nothing left to do here.
pub struct OutboxByteOrderMigration;

impl MigrationName for OutboxByteOrderMigration {
    fn name(&self) -> &str {
        "m20261206_000000_outbox_byte_order_keys"
    }
}

#[tonic::async_trait]
impl MigrationTrait for OutboxByteOrderMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::db::byte_order_keys(manager, &["outbox"]).await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the outbox byte order migration is not reversible".into(),
        ))
    }
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    TenantId,
    Topic,
    PartitionKey,
    Payload,
    TraceContext,
    State,
    Attempts,
    CreatedAtMs,
    NextAttemptAtMs,
    LeaseOwner,
    LeaseUntilMs,
    DeliveredAtMs,
    LastError,
}

#[tonic::async_trait]
impl MigrationTrait for OutboxMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Outbox::Id)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Outbox::TenantId).string_len(64).not_null())
                    .col(ColumnDef::new(Outbox::Topic).string_len(64).not_null())
                    .col(
                        ColumnDef::new(Outbox::PartitionKey)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Outbox::Payload).blob().not_null())
                    .col(ColumnDef::new(Outbox::TraceContext).text().null())
                    .col(ColumnDef::new(Outbox::State).string_len(16).not_null())
                    .col(
                        ColumnDef::new(Outbox::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(Outbox::CreatedAtMs).big_integer().not_null())
                    .col(
                        ColumnDef::new(Outbox::NextAttemptAtMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Outbox::LeaseOwner).string_len(36).null())
                    .col(ColumnDef::new(Outbox::LeaseUntilMs).big_integer().null())
                    .col(ColumnDef::new(Outbox::DeliveredAtMs).big_integer().null())
                    .col(ColumnDef::new(Outbox::LastError).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_outbox_partition")
                    .table(Outbox::Table)
                    .col(Outbox::Topic)
                    .col(Outbox::State)
                    .col(Outbox::PartitionKey)
                    .col(Outbox::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_outbox_due")
                    .table(Outbox::Table)
                    .col(Outbox::Topic)
                    .col(Outbox::State)
                    .col(Outbox::NextAttemptAtMs)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Outbox::Table).to_owned())
            .await
    }
}
