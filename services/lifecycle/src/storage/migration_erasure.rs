//! Erasures (DeleteContact, DeleteAccount): what was erased, and which
//! service has erased its part.

use sea_orm_migration::prelude::*;

use super::migration_stage_engine::index;

pub struct Erasures;

impl MigrationName for Erasures {
    fn name(&self) -> &str {
        "m20261202_000002_erasures"
    }
}

#[derive(DeriveIden)]
enum Erasures_ {
    #[sea_orm(iden = "erasures")]
    Table,
    ErasureId,
    TenantId,
    SubjectType,
    SubjectId,
    AccountId,
    ContactIds,
    Actor,
    CreatedAtMs,
    ScoringDoneAtMs,
    OpportunityDoneAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Erasures {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Erasures_::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Erasures_::ErasureId)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Erasures_::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Erasures_::SubjectType)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Erasures_::SubjectId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Erasures_::AccountId)
                            .string_len(36)
                            .not_null(),
                    )
                    // The erased contacts' ids, one per line.
                    .col(ColumnDef::new(Erasures_::ContactIds).text().not_null())
                    .col(ColumnDef::new(Erasures_::Actor).string_len(200).not_null())
                    .col(
                        ColumnDef::new(Erasures_::CreatedAtMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Erasures_::ScoringDoneAtMs)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Erasures_::OpportunityDoneAtMs)
                            .big_integer()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        // A repeated DeleteContact / DeleteAccount finds its erasure.
        index(
            manager,
            "ix_erasures_subject",
            Erasures_::Table,
            vec![
                Erasures_::TenantId.into_iden(),
                Erasures_::SubjectId.into_iden(),
            ],
        )
        .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the erasures migration is not reversible: it would drop the record of erasures".into(),
        ))
    }
}
