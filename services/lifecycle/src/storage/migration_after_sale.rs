//! After the sale (issue 19): the at-risk flag on accounts, inactive
//! contacts and the feed scoring reads their changes from, the kind of each
//! opportunity lifecycle knows of, and the tenant settings of the rules.

use sea_orm_migration::prelude::*;

use super::migration_stage_engine::{add_column, index};

pub struct AfterTheSale;

/// Accounts with deals open before this migration get them listed (all new
/// business: kinds did not exist).
async fn backfill_open_opportunities(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let conn = manager.get_connection();
    let backend = conn.get_database_backend();
    let rows = conn
        .query_all_raw(sea_orm::Statement::from_string(
            backend,
            "SELECT tenant_id, account_id, opportunity_id FROM account_opportunities \
             WHERE status = 'OPEN' ORDER BY tenant_id, account_id, opportunity_id",
        ))
        .await?;
    let mut lists: std::collections::BTreeMap<(String, String), Vec<String>> =
        std::collections::BTreeMap::new();
    for row in rows {
        let tenant: String = row.try_get("", "tenant_id")?;
        let account: String = row.try_get("", "account_id")?;
        let opportunity: String = row.try_get("", "opportunity_id")?;
        lists
            .entry((tenant, account))
            .or_default()
            .push(format!("{opportunity}:NEW_BUSINESS"));
    }
    for ((tenant, account), list) in lists {
        manager
            .exec_stmt(
                Query::update()
                    .table(Accounts::Table)
                    .value(Accounts::OpenOpportunities, list.join("\n"))
                    .and_where(Expr::col(Accounts::TenantId).eq(tenant))
                    .and_where(Expr::col(Accounts::AccountId).eq(account))
                    .to_owned(),
            )
            .await?;
    }
    Ok(())
}

impl MigrationName for AfterTheSale {
    fn name(&self) -> &str {
        "m20261203_000001_after_the_sale"
    }
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    TenantId,
    AccountId,
    OpenOpportunities,
    AtRiskReason,
    AtRiskSource,
    AtRiskActor,
    AtRiskSinceMs,
}

#[derive(DeriveIden)]
enum Contacts {
    Table,
    InactiveSinceMs,
    InactiveReason,
}

#[derive(DeriveIden)]
enum AccountOpportunities {
    Table,
    Kind,
}

#[derive(DeriveIden)]
enum LifecycleSettings {
    Table,
    AtRiskEngagementThreshold,
    ChurnOnLostRenewal,
    ChurnWhenContractsEnd,
}

#[derive(DeriveIden)]
enum ContactChanges {
    Table,
    ChangeId,
    TenantId,
    ContactId,
    AccountId,
    Inactive,
    CreatedAtMs,
    ScoringDoneAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for AfterTheSale {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The open deals with their kinds, on the row GetAccount reads
        // anyway: a query of its own made every GetAccount a quarter dearer.
        add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::OpenOpportunities)
                .text()
                .not_null()
                .default(""),
        )
        .await?;
        backfill_open_opportunities(manager).await?;
        add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::AtRiskReason).text().null(),
        )
        .await?;
        add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::AtRiskSource).string_len(16).null(),
        )
        .await?;
        add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::AtRiskActor).string_len(200).null(),
        )
        .await?;
        add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::AtRiskSinceMs).big_integer().null(),
        )
        .await?;
        add_column(
            manager,
            Contacts::Table,
            ColumnDef::new(Contacts::InactiveSinceMs)
                .big_integer()
                .null(),
        )
        .await?;
        add_column(
            manager,
            Contacts::Table,
            ColumnDef::new(Contacts::InactiveReason).text().null(),
        )
        .await?;
        // Deals lifecycle heard of before kinds existed were new business.
        add_column(
            manager,
            AccountOpportunities::Table,
            ColumnDef::new(AccountOpportunities::Kind)
                .string_len(16)
                .not_null()
                .default("NEW_BUSINESS"),
        )
        .await?;
        add_column(
            manager,
            LifecycleSettings::Table,
            ColumnDef::new(LifecycleSettings::AtRiskEngagementThreshold)
                .double()
                .not_null()
                .default(0.0),
        )
        .await?;
        add_column(
            manager,
            LifecycleSettings::Table,
            ColumnDef::new(LifecycleSettings::ChurnOnLostRenewal)
                .boolean()
                .not_null()
                .default(false),
        )
        .await?;
        add_column(
            manager,
            LifecycleSettings::Table,
            ColumnDef::new(LifecycleSettings::ChurnWhenContractsEnd)
                .boolean()
                .not_null()
                .default(false),
        )
        .await?;
        manager
            .create_table(
                Table::create()
                    .table(ContactChanges::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ContactChanges::ChangeId)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ContactChanges::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactChanges::ContactId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactChanges::AccountId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactChanges::Inactive)
                            .boolean()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactChanges::CreatedAtMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactChanges::ScoringDoneAtMs)
                            .big_integer()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        // Scoring's poll: the unconfirmed ones, oldest first.
        index(
            manager,
            "ix_contact_changes_pending",
            ContactChanges::Table,
            vec![
                ContactChanges::ScoringDoneAtMs.into_iden(),
                ContactChanges::ChangeId.into_iden(),
            ],
        )
        .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the after-the-sale migration is not reversible: it would drop at-risk flags and inactive contacts".into(),
        ))
    }
}
