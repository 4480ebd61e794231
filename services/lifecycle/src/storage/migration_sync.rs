//! External ids (a CRM's own ids) on accounts and contacts, and the indexes
//! a sync pages through: what changed since a time, in the order it changed.

use sea_orm_migration::prelude::*;

use super::migration_stage_engine::{add_column, index};

pub struct ExternalIdsAndSync;

impl MigrationName for ExternalIdsAndSync {
    fn name(&self) -> &str {
        "m20261202_000001_external_ids_and_sync"
    }
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    TenantId,
    AccountId,
    ExternalId,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Contacts {
    Table,
    TenantId,
    ContactId,
    ExternalId,
    UpdatedAt,
}

/// At most one record per tenant has a given external id; records without
/// one (NULL) are not counted, on both backends.
async fn unique_external_id(
    manager: &SchemaManager<'_>,
    name: &str,
    table: impl IntoTableRef,
    tenant: impl IntoIden,
    external_id: impl IntoIden,
) -> Result<(), DbErr> {
    manager
        .create_index(
            Index::create()
                .name(name)
                .table(table)
                .col(tenant)
                .col(external_id)
                .unique()
                .if_not_exists()
                .to_owned(),
        )
        .await
}

#[async_trait::async_trait]
impl MigrationTrait for ExternalIdsAndSync {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::ExternalId).string_len(128).null(),
        )
        .await?;
        add_column(
            manager,
            Contacts::Table,
            ColumnDef::new(Contacts::ExternalId).string_len(128).null(),
        )
        .await?;
        unique_external_id(
            manager,
            "ux_accounts_external_id",
            Accounts::Table,
            Accounts::TenantId,
            Accounts::ExternalId,
        )
        .await?;
        unique_external_id(
            manager,
            "ux_contacts_external_id",
            Contacts::Table,
            Contacts::TenantId,
            Contacts::ExternalId,
        )
        .await?;
        // ListAccounts / ListContacts with changed_since: by update time, then id.
        index(
            manager,
            "ix_accounts_changed",
            Accounts::Table,
            vec![
                Accounts::TenantId.into_iden(),
                Accounts::UpdatedAt.into_iden(),
                Accounts::AccountId.into_iden(),
            ],
        )
        .await?;
        index(
            manager,
            "ix_contacts_changed",
            Contacts::Table,
            vec![
                Contacts::TenantId.into_iden(),
                Contacts::UpdatedAt.into_iden(),
                Contacts::ContactId.into_iden(),
            ],
        )
        .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the external id migration is not reversible: it would drop callers' ids".into(),
        ))
    }
}
