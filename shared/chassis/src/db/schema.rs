//! How a database's schema compares with the migrations a binary knows.
//!
//! Readiness follows it (a pod whose schema is behind must not take
//! traffic), and `--migrate` uses it so that an older binary started during
//! a rolling upgrade accepts a schema that a newer one already moved on:
//! migrations only add, so every migration it knows being applied is enough.
//! SeaORM's own status check refuses a schema with migrations it has no file
//! for, which would stop the old pods of an upgrade.

use std::collections::BTreeSet;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use sea_orm_migration::MigratorTrait;

/// The schema as this binary sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaStatus {
    /// Every migration this binary knows is applied (and maybe newer ones).
    Current,
    /// These migrations of this binary are not applied yet.
    Behind(Vec<String>),
}

/// Reads which of `M`'s migrations are applied, without creating anything.
pub async fn schema_status<M: MigratorTrait>(
    conn: &impl ConnectionTrait,
) -> Result<SchemaStatus, DbErr> {
    let known: Vec<String> = M::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let table = M::migration_table_name().to_string();
    let applied: BTreeSet<String> = if has_table(conn, &table).await? {
        conn.query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT version FROM {table}"),
        ))
        .await?
        .iter()
        .map(|row| row.try_get::<String>("", "version"))
        .collect::<Result<_, _>>()?
    } else {
        BTreeSet::new()
    };
    let pending: Vec<String> = known
        .into_iter()
        .filter(|name| !applied.contains(name))
        .collect();
    Ok(if pending.is_empty() {
        SchemaStatus::Current
    } else {
        SchemaStatus::Behind(pending)
    })
}

async fn has_table(conn: &impl ConnectionTrait, table: &str) -> Result<bool, DbErr> {
    let backend = conn.get_database_backend();
    let sql = match backend {
        DbBackend::Sqlite => {
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = ?"
        }
        _ => {
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1"
        }
    };
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(backend, sql, [table.into()]))
        .await?;
    Ok(row
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0)
        > 0)
}
