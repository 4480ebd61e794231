//! Schema of the scoring service's own database.

use sea_orm_migration::prelude::*;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(cascade_chassis::outbox::OutboxMigration),
            Box::new(Scoring),
            Box::new(cascade_chassis::outbox::OutboxPendingIndexMigration),
            Box::new(EngagedFlags),
            Box::new(ContactStatus),
            Box::new(PendingFolds),
            Box::new(cascade_chassis::outbox::OutboxChurnMigration),
            Box::new(ScoreRowsRoom),
            Box::new(ActivitiesStatistics),
            Box::new(StoredBreakdowns),
            Box::new(PendingFoldsLz4),
            // Before the long byte-order rebuild, though written later: this
            // code writes the columns, and an upgrade from before that
            // rebuild runs it beside the rebuild (`tests/upgrade.rs`). A database
            // past the rebuild applies it as the one pending.
            Box::new(AddedTotals),
            Box::new(ByteOrderKeys),
            Box::new(cascade_chassis::outbox::OutboxByteOrderMigration),
            Box::new(EngagedMeansPoints),
        ]
    }
}

struct Scoring;

impl MigrationName for Scoring {
    fn name(&self) -> &str {
        "m20261124_200001_scoring"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Scoring {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Plain SQL that both backends accept keeps the schema easy to read.
        let double = match manager.get_database_backend() {
            sea_orm::DbBackend::Postgres => "DOUBLE PRECISION",
            _ => "DOUBLE",
        };
        let statements = [
            "CREATE TABLE IF NOT EXISTS scoring_models (
                tenant_id VARCHAR(64) NOT NULL,
                version BIGINT NOT NULL,
                rules TEXT NOT NULL,
                decay_half_life_days DOUBLE_T NOT NULL,
                intent_activity_types TEXT NOT NULL,
                created_at_ms BIGINT NOT NULL,
                created_by VARCHAR(200) NOT NULL,
                PRIMARY KEY (tenant_id, version))",
            "CREATE TABLE IF NOT EXISTS activities (
                tenant_id VARCHAR(64) NOT NULL,
                event_id VARCHAR(128) NOT NULL,
                account_id VARCHAR(36) NOT NULL,
                contact_id VARCHAR(36) NULL,
                activity_type VARCHAR(64) NOT NULL,
                occurred_at_ms BIGINT NOT NULL,
                model_version BIGINT NOT NULL,
                rule_points INTEGER NOT NULL,
                counted_points INTEGER NOT NULL,
                capped BOOLEAN NOT NULL,
                intent BOOLEAN NOT NULL,
                recorded_at_ms BIGINT NOT NULL,
                PRIMARY KEY (tenant_id, event_id))",
            "CREATE INDEX IF NOT EXISTS ix_activities_ledger ON activities (tenant_id, account_id, occurred_at_ms, event_id)",
            "CREATE INDEX IF NOT EXISTS ix_activities_window ON activities (tenant_id, occurred_at_ms)",
            "CREATE TABLE IF NOT EXISTS rule_usage (
                tenant_id VARCHAR(64) NOT NULL,
                subject VARCHAR(80) NOT NULL,
                activity_type VARCHAR(64) NOT NULL,
                period BIGINT NOT NULL,
                points BIGINT NOT NULL,
                occurrences BIGINT NOT NULL,
                PRIMARY KEY (tenant_id, subject, activity_type, period))",
            "CREATE TABLE IF NOT EXISTS score_buckets (
                tenant_id VARCHAR(64) NOT NULL,
                account_id VARCHAR(36) NOT NULL,
                contact_id VARCHAR(36) NOT NULL,
                activity_type VARCHAR(64) NOT NULL,
                intent BOOLEAN NOT NULL,
                day BIGINT NOT NULL,
                points BIGINT NOT NULL,
                activity_count BIGINT NOT NULL,
                PRIMARY KEY (tenant_id, account_id, contact_id, activity_type, intent, day))",
            "CREATE TABLE IF NOT EXISTS account_scores (
                tenant_id VARCHAR(64) NOT NULL,
                account_id VARCHAR(36) NOT NULL,
                engagement_score DOUBLE_T NOT NULL,
                intent_score DOUBLE_T NOT NULL,
                engaged_contacts INTEGER NOT NULL,
                computed_day BIGINT NOT NULL,
                delivery_seq BIGINT NOT NULL,
                PRIMARY KEY (tenant_id, account_id))",
            "CREATE INDEX IF NOT EXISTS ix_account_scores_top ON account_scores (tenant_id, engagement_score, account_id)",
            "CREATE TABLE IF NOT EXISTS contact_scores (
                tenant_id VARCHAR(64) NOT NULL,
                contact_id VARCHAR(36) NOT NULL,
                account_id VARCHAR(36) NOT NULL,
                engagement_score DOUBLE_T NOT NULL,
                computed_day BIGINT NOT NULL,
                PRIMARY KEY (tenant_id, contact_id))",
        ];
        let conn = manager.get_connection();
        for statement in statements {
            conn.execute_unprepared(&statement.replace("DOUBLE_T", double))
                .await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the scoring migration is not reversible: it would drop activities".into(),
        ))
    }
}

/// Whether a contact has engagement under its account, kept on the score
/// row a batch reads anyway, instead of a probe of the buckets per contact
/// and batch, which grew with the history (docs/performance.md).
struct EngagedFlags;

impl MigrationName for EngagedFlags {
    fn name(&self) -> &str {
        "m20261201_100001_scores_engaged_flags"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for EngagedFlags {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = [
            "ALTER TABLE contact_scores ADD COLUMN engaged BOOLEAN NOT NULL DEFAULT FALSE",
            "UPDATE contact_scores SET engaged = TRUE WHERE EXISTS (SELECT 1 FROM score_buckets b \
             WHERE b.tenant_id = contact_scores.tenant_id AND b.account_id = contact_scores.account_id \
             AND b.contact_id = contact_scores.contact_id AND b.intent = FALSE)",
        ];
        let conn = manager.get_connection();
        for statement in statements {
            conn.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the engaged flags migration is not reversible".into(),
        ))
    }
}

/// Contacts lifecycle marked inactive (DeactivateContact): their engagement
/// stops counting toward their account. A reactivated contact keeps its row
/// (`inactive` false) with the id of the change applied last, so an older
/// change arriving late through another replica is recognised and ignored.
struct ContactStatus;

impl MigrationName for ContactStatus {
    fn name(&self) -> &str {
        "m20261203_200001_contact_status"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ContactStatus {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = [
            "CREATE TABLE IF NOT EXISTS contact_status (
                tenant_id VARCHAR(64) NOT NULL,
                contact_id VARCHAR(36) NOT NULL,
                account_id VARCHAR(36) NOT NULL,
                inactive BOOLEAN NOT NULL,
                since_ms BIGINT NOT NULL,
                change_id VARCHAR(64) NOT NULL,
                PRIMARY KEY (tenant_id, contact_id))",
            // Each replica looks for the changes applied since its last look
            // (`Repository::contact_changes_since`).
            "CREATE INDEX IF NOT EXISTS ix_contact_status_since ON contact_status (since_ms)",
        ];
        let conn = manager.get_connection();
        for statement in statements {
            conn.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the contact status migration is not reversible".into(),
        ))
    }
}

/// Groups whose activities are stored but not yet folded into the buckets
/// and scores (`storage::fold`): one row per group transaction, deleted by
/// the fold that applies it, so a replica that stops between the two loses
/// nothing.
struct PendingFolds;

impl MigrationName for PendingFolds {
    fn name(&self) -> &str {
        "m20261203_300001_pending_folds"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for PendingFolds {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The id orders folds oldest first; each backend generates it its own way.
        let statement = match manager.get_database_backend() {
            sea_orm::DbBackend::Postgres => {
                "CREATE TABLE IF NOT EXISTS pending_folds (
                    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                    tenant_id VARCHAR(64) NOT NULL,
                    recorded_at_ms BIGINT NOT NULL,
                    buckets BYTEA NOT NULL,
                    trace_context TEXT NULL)"
            }
            _ => {
                "CREATE TABLE IF NOT EXISTS pending_folds (
                    id INTEGER PRIMARY KEY,
                    tenant_id VARCHAR(64) NOT NULL,
                    recorded_at_ms BIGINT NOT NULL,
                    buckets BLOB NOT NULL,
                    trace_context TEXT NULL)"
            }
        };
        let conn = manager.get_connection();
        conn.execute_unprepared(statement).await?;
        // A score read looks for its tenant's newest pending group.
        conn.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS ix_pending_folds_tenant ON pending_folds (tenant_id, id)",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the pending folds migration is not reversible: it would drop unfolded groups".into(),
        ))
    }
}

/// Folds rewrite contact scores and buckets in place (no indexed column
/// changes); with free room on each page PostgreSQL keeps the new version
/// on the same page (a HOT update: no index entries, less for vacuum).
/// `account_scores` gains nothing: its top index holds the score itself.
struct ScoreRowsRoom;

impl MigrationName for ScoreRowsRoom {
    fn name(&self) -> &str {
        "m20261203_400001_score_rows_fillfactor"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ScoreRowsRoom {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        cascade_chassis::db::set_fill_factor(manager, "contact_scores", 80).await?;
        cascade_chassis::db::set_fill_factor(manager, "score_buckets", 90).await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the score rows fillfactor migration is not reversible".into(),
        ))
    }
}

/// PostgreSQL: ANALYZE of `activities` samples 3,000 rows instead of 30,000.
/// The table only grows, and the statistics keeper analyzes it each time it
/// doubles (`cascade_chassis::db`); at the default target each of those
/// read 30,000 rows, about 400 ms, a tenth of PostgreSQL's time in a 15 s
/// ingest run (docs/performance.md, round 16). Its plans only choose between
/// an index and a scan, which a smaller sample decides as well.
struct ActivitiesStatistics;

impl MigrationName for ActivitiesStatistics {
    fn name(&self) -> &str {
        "m20261203_500001_activities_statistics"
    }
}

/// Every column: ANALYZE samples for the largest target of the table.
const ACTIVITY_COLUMNS: [&str; 12] = [
    "tenant_id",
    "event_id",
    "account_id",
    "contact_id",
    "activity_type",
    "occurred_at_ms",
    "model_version",
    "rule_points",
    "counted_points",
    "capped",
    "intent",
    "recorded_at_ms",
];

/// Sets the statistics target of every column of `activities` (PostgreSQL).
async fn activities_statistics(manager: &SchemaManager<'_>, target: i32) -> Result<(), DbErr> {
    if manager.get_database_backend() != sea_orm::DbBackend::Postgres {
        return Ok(()); // the statistics keeper runs on PostgreSQL only
    }
    let columns: Vec<String> = ACTIVITY_COLUMNS
        .iter()
        .map(|c| format!("ALTER COLUMN {c} SET STATISTICS {target}"))
        .collect();
    manager
        .get_connection()
        .execute_unprepared(&format!("ALTER TABLE activities {}", columns.join(", ")))
        .await?;
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for ActivitiesStatistics {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        activities_statistics(manager, 10).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        activities_statistics(manager, -1).await
    }
}

/// An account's stored score keeps its breakdown by activity type and its
/// activity count, so GetAccountScore answers from that one row instead of
/// summing the account's ~100 buckets (docs/performance.md, round 19).
/// Existing rows get NULL, which marks them to recompute; `breakdown_seq`
/// tells a breakdown that a replica of an older version left behind when it
/// rewrote the scores (there `breakdown_seq` trails `delivery_seq`).
struct StoredBreakdowns;

impl MigrationName for StoredBreakdowns {
    fn name(&self) -> &str {
        "m20261204_100001_stored_breakdowns"
    }
}

#[derive(DeriveIden)]
enum AccountScores {
    Table,
    Breakdown,
    ActivityCount,
    BreakdownSeq,
    AddedTotal,
    AddedDay,
}

/// One column per statement: SQLite drops one at a time.
async fn drop_account_score_columns(
    manager: &SchemaManager<'_>,
    columns: impl IntoIterator<Item = AccountScores>,
) -> Result<(), DbErr> {
    for column in columns {
        manager
            .alter_table(
                Table::alter()
                    .table(AccountScores::Table)
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for StoredBreakdowns {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(AccountScores::Table)
                    .add_column(ColumnDef::new(AccountScores::Breakdown).binary().null())
                    .to_owned(),
            )
            .await?;
        for column in [AccountScores::ActivityCount, AccountScores::BreakdownSeq] {
            manager
                .alter_table(
                    Table::alter()
                        .table(AccountScores::Table)
                        .add_column(ColumnDef::new(column).big_integer().not_null().default(0))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_account_score_columns(
            manager,
            [
                AccountScores::Breakdown,
                AccountScores::ActivityCount,
                AccountScores::BreakdownSeq,
            ],
        )
        .await
    }
}

/// PostgreSQL: a pending group's buckets (~95 kB of protobuf for a group of
/// 1,000 activities) are compressed with lz4 instead of pglz. The value is
/// written once and read once, and pglz made its insert cost 1.6 ms of
/// PostgreSQL's CPU per group against 0.38 ms with lz4, and the fold's read
/// of it about twice as long (docs/performance.md, round 25). A server built
/// without lz4 (or older than 14) keeps pglz: the statement is skipped, not
/// failed, since the column works either way.
struct PendingFoldsLz4;

impl MigrationName for PendingFoldsLz4 {
    fn name(&self) -> &str {
        "m20261205_100001_pending_folds_lz4"
    }
}

/// Sets the compression of `pending_folds.buckets` where the server has it.
async fn pending_folds_compression(manager: &SchemaManager<'_>, method: &str) -> Result<(), DbErr> {
    if manager.get_database_backend() != sea_orm::DbBackend::Postgres {
        return Ok(()); // SQLite does not compress values
    }
    manager
        .get_connection()
        .execute_unprepared(&format!(
            "DO $$ BEGIN \
               ALTER TABLE pending_folds ALTER COLUMN buckets SET COMPRESSION {method}; \
             EXCEPTION WHEN feature_not_supported OR syntax_error THEN \
               RAISE NOTICE 'pending_folds.buckets keeps its compression: %', SQLERRM; \
             END $$"
        ))
        .await?;
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for PendingFoldsLz4 {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        pending_folds_compression(manager, "lz4").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        pending_folds_compression(manager, "pglz").await
    }
}

/// PostgreSQL: every key column (`VARCHAR`) of scoring's tables and its
/// outbox compares byte by byte (`cascade_chassis::db::byte_order_keys`): on
/// a server whose locale is a real one (`en_US.UTF-8`) the pipeline spent
/// about a tenth of its CPU in the B-trees' `strcoll` (docs/performance.md,
/// round 35). Its outbox is converted with the rest, so that all of
/// scoring's tables are locked at once, before any index is rebuilt (the
/// helper says why); the outbox migration after it then finds nothing to do.
struct ByteOrderKeys;

impl MigrationName for ByteOrderKeys {
    fn name(&self) -> &str {
        "m20261206_100001_byte_order_keys"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ByteOrderKeys {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        cascade_chassis::db::byte_order_keys(
            manager,
            &[
                "scoring_models",
                "contact_status",
                "activities",
                "rule_usage",
                "pending_folds",
                "score_buckets",
                "account_scores",
                "contact_scores",
                "outbox",
            ],
        )
        .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the byte order keys migration is not reversible".into(),
        ))
    }
}

/// A contact is engaged by activity worth points (`domain::engages`): one
/// with only unscored types (no rule, 0 points) or penalties was counted,
/// and lowered its account's average. Only the rows that change are
/// written, few in practice: the accounts owning such a contact are marked
/// stale (recomputed on their next batch or read), then the contacts'
/// flags cleared; accounts before contacts, the order ingest locks them in.
struct EngagedMeansPoints;

impl MigrationName for EngagedMeansPoints {
    fn name(&self) -> &str {
        "m20261207_100001_engaged_means_points"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for EngagedMeansPoints {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The flag set on contact score row `c` without a bucket worth points.
        let unengaged = |c: &str| {
            format!(
                "{c}.engaged AND NOT EXISTS (SELECT 1 FROM score_buckets b \
                 WHERE b.tenant_id = {c}.tenant_id AND b.account_id = {c}.account_id \
                 AND b.contact_id = {c}.contact_id AND b.intent = FALSE AND b.points > 0)"
            )
        };
        let statements = [
            format!(
                "UPDATE account_scores SET computed_day = -1 WHERE EXISTS (SELECT 1 FROM \
                 contact_scores c WHERE c.tenant_id = account_scores.tenant_id \
                 AND c.account_id = account_scores.account_id AND {})",
                unengaged("c")
            ),
            format!(
                "UPDATE contact_scores SET engaged = FALSE WHERE {}",
                unengaged("contact_scores")
            ),
        ];
        let conn = manager.get_connection();
        for statement in statements {
            conn.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }
}

/// The running total of what each account's new activity added
/// (`domain::added_total`), sent with each delivery. Accounts start at 0:
/// lifecycle counts an account's first delivery after this by the batches it
/// names, and the change of the total from then on.
struct AddedTotals;

impl MigrationName for AddedTotals {
    fn name(&self) -> &str {
        "m20261208_100001_added_totals"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AddedTotals {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one at a time.
        for column in [
            ColumnDef::new(AccountScores::AddedTotal)
                .double()
                .not_null()
                .default(0.0)
                .to_owned(),
            ColumnDef::new(AccountScores::AddedDay)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(AccountScores::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_account_score_columns(
            manager,
            [AccountScores::AddedTotal, AccountScores::AddedDay],
        )
        .await
    }
}
