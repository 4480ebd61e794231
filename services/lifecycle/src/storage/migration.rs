//! Schema of the lifecycle service's own database.

use sea_orm_migration::prelude::*;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(AccountsAndContacts),
            Box::new(cascade_chassis::outbox::OutboxMigration),
            Box::new(super::migration_stage_engine::StageEngine),
            Box::new(cascade_chassis::outbox::OutboxPendingIndexMigration),
            Box::new(super::migration_histories::ContactHistoryAndDeliveries),
            Box::new(super::migration_sync::ExternalIdsAndSync),
            Box::new(super::migration_erasure::Erasures),
            Box::new(super::migration_after_sale::AfterTheSale),
            Box::new(cascade_chassis::outbox::OutboxChurnMigration),
            Box::new(ContactsRoomForScores),
            Box::new(AccountChangesHeard),
            Box::new(cascade_chassis::outbox::OutboxByteOrderMigration),
            Box::new(ErasedAccountsReasons),
            Box::new(CreateRequestDigests),
            Box::new(ContactChangeKinds),
            Box::new(NotificationRaisers),
            Box::new(OpportunityVersions),
            Box::new(ScoreDays),
            Box::new(HandRaisedInDeal),
            Box::new(ScoreAddedTotals),
        ]
    }
}

/// What each create with a request id asked (`cascade_chassis::idempotency`):
/// a request that reuses the id must ask the same. Records made before have
/// none and answer any request with their id, as they did.
struct CreateRequestDigests;

impl MigrationName for CreateRequestDigests {
    fn name(&self) -> &str {
        "m20261206_300001_create_request_digests"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateRequestDigests {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use super::migration_stage_engine::add_column;
        add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::CreateRequestDigest)
                .string_len(64)
                .null(),
        )
        .await?;
        add_column(
            manager,
            Contacts::Table,
            ColumnDef::new(Contacts::CreateRequestDigest)
                .string_len(64)
                .null(),
        )
        .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the create request digests migration is not reversible".into(),
        ))
    }
}

/// A contact change that is only an email change (`ChangeKind::Email`):
/// scoring forgets whom the old email resolved to and leaves the status it
/// holds. Changes recorded before are status changes, as they were read.
/// And the index a new change finds its contact's previous one by
/// (`record_contact_change`).
struct ContactChangeKinds;

impl MigrationName for ContactChangeKinds {
    fn name(&self) -> &str {
        "m20261206_400001_contact_change_kinds"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ContactChangeKinds {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::migration_stage_engine::add_column(
            manager,
            ContactChanges::Table,
            ColumnDef::new(ContactChanges::EmailOnly)
                .boolean()
                .not_null()
                .default(false),
        )
        .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_contact_changes_contact")
                    .table(ContactChanges::Table)
                    .col(ContactChanges::TenantId)
                    .col(ContactChanges::ContactId)
                    .col(ContactChanges::ChangeId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the contact change kinds migration is not reversible".into(),
        ))
    }
}

/// Whom a hand-raise notification names, by contact id, so that an erasure
/// finds the text whatever the person's email was when it was written and
/// on whichever account they were then; and the index it is found by.
/// Notifications written before have none, and are matched by the email the
/// person has at erasure, on their account, as before.
struct NotificationRaisers;

impl MigrationName for NotificationRaisers {
    fn name(&self) -> &str {
        "m20261207_100001_notification_raisers"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for NotificationRaisers {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::migration_stage_engine::add_column(
            manager,
            Notifications::Table,
            ColumnDef::new(Notifications::RaiserContactId)
                .string_len(36)
                .null(),
        )
        .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_notifications_raiser")
                    .table(Notifications::Table)
                    .col(Notifications::TenantId)
                    .col(Notifications::RaiserContactId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the notification raisers migration is not reversible".into(),
        ))
    }
}

/// The newest version of each deal lifecycle applied an event of, so an
/// older event sent again (a dead letter, after newer ones) changes nothing
/// (`mutation::decide`). Deals known before start at 0: none is stale.
struct OpportunityVersions;

impl MigrationName for OpportunityVersions {
    fn name(&self) -> &str {
        "m20261207_200001_opportunity_versions"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for OpportunityVersions {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::migration_stage_engine::add_column(
            manager,
            AccountOpportunities::Table,
            ColumnDef::new(AccountOpportunities::Version)
                .big_integer()
                .not_null()
                .default(0),
        )
        .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the opportunity versions migration is not reversible".into(),
        ))
    }
}

/// The running total of what an account's new activity added, as the last
/// applied delivery carried it, and that delivery's sequence
/// (`domain::scores::earned_by`). Accounts start without one: their next
/// delivery counts by its batches and stores it.
struct ScoreAddedTotals;

impl MigrationName for ScoreAddedTotals {
    fn name(&self) -> &str {
        "m20261208_100001_score_added_totals"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ScoreAddedTotals {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::migration_stage_engine::add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::ScoreAddedTotal).double().null(),
        )
        .await?;
        super::migration_stage_engine::add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::ScoreAddedSeq).big_integer().null(),
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Accounts::ScoreAddedTotal, Accounts::ScoreAddedSeq] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Accounts::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

/// When a contact last raised a hand while it was an OPPORTUNITY, the one
/// stage a hand-raise does not change: leaving the deal then makes it
/// MARKETING_QUALIFIED, where it went back to ENGAGED (a reviewer's case:
/// a demo requested during a deal was forgotten when it was lost).
struct HandRaisedInDeal;

impl MigrationName for HandRaisedInDeal {
    fn name(&self) -> &str {
        "m20261207_400001_hand_raised_in_deal"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for HandRaisedInDeal {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::migration_stage_engine::add_column(
            manager,
            Contacts::Table,
            ColumnDef::new(Contacts::HandRaisedAtMs)
                .big_integer()
                .null(),
        )
        .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the hand-raised-in-deal migration is not reversible".into(),
        ))
    }
}

/// The day an account's score and recycle baseline are at, and the half-life
/// they decay by (`account_rules::baseline_at`): the baseline decays with
/// the score. A recycled account takes its recycle's day (when the baseline
/// was taken; a little late, so it decays a little less, the safe side) and
/// the next delivery's half-life; others get both from their next delivery.
struct ScoreDays;

impl MigrationName for ScoreDays {
    fn name(&self) -> &str {
        "m20261207_300001_score_days"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ScoreDays {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::migration_stage_engine::add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::ScoreDay).big_integer().null(),
        )
        .await?;
        super::migration_stage_engine::add_column(
            manager,
            Accounts::Table,
            ColumnDef::new(Accounts::ScoreHalfLifeDays).double().null(),
        )
        .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE accounts SET score_day = (SELECT t.occurred_at_ms / 86400000 \
                 FROM account_transitions t WHERE t.transition_id = accounts.last_recycle_transition_id) \
                 WHERE score_baseline <> 0 AND last_recycle_transition_id IS NOT NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the score days migration is not reversible".into(),
        ))
    }
}

/// Accounts erased before erasure blanked the reasons in their history
/// (December 2026) lose them now: the free text can name the account's
/// people, and nobody reads it once the account is gone. Only transitions up
/// to the erasure: should the id come back, its new history is its own.
struct ErasedAccountsReasons;

impl MigrationName for ErasedAccountsReasons {
    fn name(&self) -> &str {
        "m20261206_200001_erased_accounts_reasons"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ErasedAccountsReasons {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE account_transitions SET reason = NULL \
                 WHERE reason IS NOT NULL AND EXISTS (SELECT 1 FROM erasures e \
                   WHERE e.tenant_id = account_transitions.tenant_id \
                     AND e.subject_id = account_transitions.account_id \
                     AND e.subject_type = 'ACCOUNT' \
                     AND account_transitions.occurred_at_ms <= e.created_at_ms)",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "erased reasons cannot be brought back".into(),
        ))
    }
}

/// PostgreSQL: a trigger notifies every change of an account row, so each
/// replica's account cache hears the others' writes (`storage::cache`).
/// SQLite serves one process, whose writes reach its cache directly.
struct AccountChangesHeard;

impl MigrationName for AccountChangesHeard {
    fn name(&self) -> &str {
        "m20261205_000001_account_changes_heard"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AccountChangesHeard {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared(include_str!("sql/account_changed.sql"))
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TRIGGER IF EXISTS accounts_changed ON accounts; \
                 DROP FUNCTION IF EXISTS cascade_account_changed()",
            )
            .await
            .map(|_| ())
    }
}

/// Score deliveries rewrite contacts' scores without touching an indexed
/// column; with a fifth of each page left free on PostgreSQL the new row
/// version stays on its page (a HOT update, no index entries): 94-96 % of
/// these updates instead of 86-89 %, and lifecycle's contact update took
/// 7-8 ms per delivery instead of 9-12 (docs/performance.md, round 14).
/// Accounts gain nothing from it: a delivery moves their `updated_at`,
/// which `ix_accounts_changed` indexes.
struct ContactsRoomForScores;

impl MigrationName for ContactsRoomForScores {
    fn name(&self) -> &str {
        "m20261203_400001_contacts_fillfactor"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ContactsRoomForScores {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        cascade_chassis::db::set_fill_factor(manager, "contacts", 80).await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the contacts fillfactor migration is not reversible".into(),
        ))
    }
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    AccountId,
    TenantId,
    Name,
    Domain,
    OwnerId,
    Stage,
    CustomerType,
    StageEnteredAt,
    EngagementScore,
    AverageEngagementScore,
    IntentScore,
    CreateRequestId,
    CreateRequestDigest,
    ScoreDay,
    ScoreHalfLifeDays,
    ScoreAddedTotal,
    ScoreAddedSeq,
    CreatedAt,
    UpdatedAt,
    Version,
}

#[derive(DeriveIden)]
enum AccountOpportunities {
    Table,
    Version,
}

#[derive(DeriveIden)]
enum Notifications {
    Table,
    TenantId,
    RaiserContactId,
}

#[derive(DeriveIden)]
enum ContactChanges {
    Table,
    TenantId,
    ContactId,
    ChangeId,
    EmailOnly,
}

#[derive(DeriveIden)]
enum Contacts {
    Table,
    HandRaisedAtMs,
    ContactId,
    TenantId,
    AccountId,
    Email,
    FirstName,
    LastName,
    Title,
    Stage,
    StageEnteredAt,
    EngagementScore,
    CreateRequestId,
    CreateRequestDigest,
    CreatedAt,
    UpdatedAt,
}

struct AccountsAndContacts;

impl MigrationName for AccountsAndContacts {
    fn name(&self) -> &str {
        "m20261124_000001_accounts_and_contacts"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AccountsAndContacts {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Accounts::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Accounts::AccountId)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Accounts::TenantId).string_len(64).not_null())
                    .col(ColumnDef::new(Accounts::Name).string_len(200).not_null())
                    .col(ColumnDef::new(Accounts::Domain).string_len(253).null())
                    .col(ColumnDef::new(Accounts::OwnerId).string_len(200).null())
                    .col(ColumnDef::new(Accounts::Stage).string_len(32).not_null())
                    .col(
                        ColumnDef::new(Accounts::CustomerType)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Accounts::StageEnteredAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Accounts::EngagementScore)
                            .double()
                            .not_null()
                            .default(0.0),
                    )
                    .col(
                        ColumnDef::new(Accounts::AverageEngagementScore)
                            .double()
                            .not_null()
                            .default(0.0),
                    )
                    .col(
                        ColumnDef::new(Accounts::IntentScore)
                            .double()
                            .not_null()
                            .default(0.0),
                    )
                    .col(
                        ColumnDef::new(Accounts::CreateRequestId)
                            .string_len(128)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Accounts::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Accounts::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Accounts::Version)
                            .big_integer()
                            .not_null()
                            .default(1),
                    )
                    .to_owned(),
            )
            .await?;
        // NULLs are distinct in unique indexes on both backends, so accounts
        // without a domain or request id do not collide.
        for (name, columns, unique) in [
            (
                "ux_accounts_tenant_domain",
                vec![Accounts::TenantId, Accounts::Domain],
                true,
            ),
            (
                "ux_accounts_tenant_request",
                vec![Accounts::TenantId, Accounts::CreateRequestId],
                true,
            ),
            (
                "ix_accounts_tenant_id",
                vec![Accounts::TenantId, Accounts::AccountId],
                false,
            ),
            (
                "ix_accounts_tenant_stage",
                vec![Accounts::TenantId, Accounts::Stage, Accounts::AccountId],
                false,
            ),
            (
                "ix_accounts_tenant_owner",
                vec![Accounts::TenantId, Accounts::OwnerId, Accounts::AccountId],
                false,
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table(Accounts::Table).if_not_exists();
            for column in columns {
                index.col(column);
            }
            if unique {
                index.unique();
            }
            manager.create_index(index.to_owned()).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(Contacts::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Contacts::ContactId)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Contacts::TenantId).string_len(64).not_null())
                    .col(
                        ColumnDef::new(Contacts::AccountId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Contacts::Email).string_len(254).null())
                    .col(
                        ColumnDef::new(Contacts::FirstName)
                            .string_len(100)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Contacts::LastName)
                            .string_len(100)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Contacts::Title).string_len(200).not_null())
                    .col(ColumnDef::new(Contacts::Stage).string_len(32).not_null())
                    .col(
                        ColumnDef::new(Contacts::StageEnteredAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Contacts::EngagementScore)
                            .double()
                            .not_null()
                            .default(0.0),
                    )
                    .col(
                        ColumnDef::new(Contacts::CreateRequestId)
                            .string_len(128)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Contacts::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Contacts::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_contacts_account")
                            .from(Contacts::Table, Contacts::AccountId)
                            .to(Accounts::Table, Accounts::AccountId),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, columns, unique) in [
            (
                "ux_contacts_tenant_email",
                vec![Contacts::TenantId, Contacts::Email],
                true,
            ),
            (
                "ux_contacts_tenant_request",
                vec![Contacts::TenantId, Contacts::CreateRequestId],
                true,
            ),
            (
                "ix_contacts_tenant_id",
                vec![Contacts::TenantId, Contacts::ContactId],
                false,
            ),
            (
                "ix_contacts_tenant_account",
                vec![Contacts::TenantId, Contacts::AccountId, Contacts::ContactId],
                false,
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table(Contacts::Table).if_not_exists();
            for column in columns {
                index.col(column);
            }
            if unique {
                index.unique();
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Contacts::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Accounts::Table).to_owned())
            .await
    }
}
