//! Schema of the opportunity service's own database.

use sea_orm_migration::prelude::*;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(cascade_chassis::outbox::OutboxMigration),
            Box::new(Opportunities),
            Box::new(cascade_chassis::outbox::OutboxPendingIndexMigration),
            Box::new(KindsAndTerms),
            Box::new(cascade_chassis::outbox::OutboxChurnMigration),
            Box::new(cascade_chassis::outbox::OutboxByteOrderMigration),
            Box::new(CreateRequestDigests),
        ]
    }
}

struct Opportunities;

impl MigrationName for Opportunities {
    fn name(&self) -> &str {
        "m20261124_300001_opportunities"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Opportunities {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The opportunity itself is one JSON document (`data`); the columns
        // beside it are what lists and the pipeline report filter and sum.
        let statements = [
            "CREATE TABLE IF NOT EXISTS opportunities (
                opportunity_id VARCHAR(36) NOT NULL PRIMARY KEY,
                tenant_id VARCHAR(64) NOT NULL,
                account_id VARCHAR(36) NOT NULL,
                owner_id VARCHAR(200) NOT NULL,
                step VARCHAR(16) NOT NULL,
                status VARCHAR(16) NOT NULL,
                value_currency VARCHAR(3) NULL,
                value_units BIGINT NULL,
                value_nanos BIGINT NULL,
                closed_at_ms BIGINT NULL,
                create_request_id VARCHAR(128) NULL,
                data TEXT NOT NULL,
                version BIGINT NOT NULL)",
            "CREATE UNIQUE INDEX IF NOT EXISTS ux_opportunities_request ON opportunities (tenant_id, create_request_id)",
            "CREATE INDEX IF NOT EXISTS ix_opportunities_account ON opportunities (tenant_id, account_id, status)",
            "CREATE INDEX IF NOT EXISTS ix_opportunities_owner ON opportunities (tenant_id, owner_id)",
            "CREATE INDEX IF NOT EXISTS ix_opportunities_pipeline ON opportunities (tenant_id, status, step)",
            "CREATE INDEX IF NOT EXISTS ix_opportunities_closed ON opportunities (tenant_id, closed_at_ms)",
            "CREATE TABLE IF NOT EXISTS opportunity_settings (
                tenant_id VARCHAR(64) NOT NULL,
                version BIGINT NOT NULL,
                data TEXT NOT NULL,
                updated_at_ms BIGINT NOT NULL,
                updated_by VARCHAR(200) NOT NULL,
                PRIMARY KEY (tenant_id, version))",
        ];
        let conn = manager.get_connection();
        for statement in statements {
            conn.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the opportunity migration is not reversible: it would drop opportunities".into(),
        ))
    }
}

/// Issue 19: what an opportunity sells (`kind`, NEW_BUSINESS for the
/// opportunities before it), and when each account's contracts end
/// (`contract_terms`, see `contracts.rs`). Opportunities won before it have
/// no end dates, so they never end: no account needs a row yet.
struct KindsAndTerms;

impl MigrationName for KindsAndTerms {
    fn name(&self) -> &str {
        "m20261203_300001_opportunity_kinds_and_terms"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for KindsAndTerms {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = [
            "ALTER TABLE opportunities ADD COLUMN kind VARCHAR(16) NOT NULL DEFAULT 'NEW_BUSINESS'",
            "CREATE INDEX IF NOT EXISTS ix_opportunities_kind ON opportunities (tenant_id, kind, opportunity_id)",
            // Dates as yyyy-mm-dd text: ordered as dates on both backends.
            "CREATE TABLE IF NOT EXISTS contract_terms (
                tenant_id VARCHAR(64) NOT NULL,
                account_id VARCHAR(36) NOT NULL,
                ends_on VARCHAR(10) NULL,
                last_opportunity_id VARCHAR(36) NULL,
                due_on VARCHAR(10) NULL,
                reported_on VARCHAR(10) NULL,
                PRIMARY KEY (tenant_id, account_id))",
            // The periodic check reads only the accounts with an end due.
            "CREATE INDEX IF NOT EXISTS ix_contract_terms_due ON contract_terms (due_on)",
        ];
        let conn = manager.get_connection();
        for statement in statements {
            conn.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the opportunity kinds and terms migration is not reversible".into(),
        ))
    }
}

/// What each create with a request id asked (`cascade_chassis::idempotency`):
/// a request that reuses the id must ask the same. Opportunities made before
/// have none and answer any request with their id, as they did.
struct CreateRequestDigests;

impl MigrationName for CreateRequestDigests {
    fn name(&self) -> &str {
        "m20261206_300001_opportunity_request_digests"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateRequestDigests {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE opportunities ADD COLUMN create_request_digest VARCHAR(64) NULL",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the opportunity request digests migration is not reversible".into(),
        ))
    }
}
