//! The ceiling: the same rows as scoring's `activities` table, inserted as
//! multi-row INSERTs of `--batch` rows, one transaction per batch, into a
//! fresh database with scoring's own schema and connection settings. No
//! duplicate check, no scoring, no outbox: what the database alone does.
//! `--raw-table bare` inserts into a table of the same columns with only the
//! primary key: what the database does for these rows without scoring's
//! secondary indexes (the ledger index costs most of the difference; see
//! docs/performance.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cascade_chassis::db::DatabaseSettings;
use futures::FutureExt;
use sea_orm::{ConnectionTrait, DbBackend, TransactionTrait, Value};
use serde_json::{Value as Json, json};
use tonic::Status;

use crate::stats::{self, Mode, Op};
use crate::{Args, Result};

const COLUMNS: &str = "tenant_id, event_id, account_id, contact_id, activity_type, \
    occurred_at_ms, model_version, rule_points, counted_points, capped, intent, recorded_at_ms";
const PER_ROW: usize = 12;

/// A server URL (`postgres://user@host:port/db`) becomes a fresh database on
/// that server; a SQLite URL is used as given (the script names a new file).
/// Answers the URL to use and, for PostgreSQL, the database to drop after.
async fn fresh_database(url: &str, run: &str) -> Result<(String, Option<String>)> {
    if url.starts_with("sqlite:") {
        return Ok((url.to_owned(), None));
    }
    let admin = cascade_chassis::db::connect(&settings(url, 1)).await?;
    let name = format!("cascade_raw_{}", run.replace(['-', '.'], "_"));
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await?;
    let (base, _) = url.split_once('?').unwrap_or((url, ""));
    let server = base
        .rsplit_once('/')
        .map(|(server, _)| server)
        .filter(|s| !s.ends_with('/'))
        .unwrap_or(base);
    Ok((format!("{server}/{name}"), Some(name)))
}

async fn drop_database(url: &str, name: &str) -> Result<()> {
    let admin = cascade_chassis::db::connect(&settings(url, 1)).await?;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
        .await?;
    Ok(())
}

fn settings(url: &str, connections: usize) -> DatabaseSettings {
    DatabaseSettings {
        url: url.to_owned(),
        max_connections: Some(connections.max(1) as u32),
        acquire_timeout_ms: 30_000,
        run_migrations: true,
        // Inserts only: no plans to keep current.
        analyze_interval_ms: 0,
    }
}

pub async fn run(args: &Args) -> Result<Json> {
    let url = args
        .database_url
        .as_deref()
        .ok_or("raw-insert needs --database-url")?;
    let server = url;
    let (url, made) = fresh_database(server, &args.run_id).await?;
    let db = cascade_chassis::db::connect(&settings(&url, args.concurrency)).await?;
    cascade_chassis::db::migrate::<cascade_scoring::storage::migration::Migrator>(&db).await?;
    let backend = db.get_database_backend();
    let table = if args.raw_table == "bare" {
        db.execute_unprepared(
            "CREATE TABLE activities_bare AS SELECT * FROM activities WHERE 1 = 0",
        )
        .await?;
        db.execute_unprepared(
            "CREATE UNIQUE INDEX ix_activities_bare_key ON activities_bare (tenant_id, event_id)",
        )
        .await?;
        "activities_bare"
    } else {
        "activities"
    };
    let db = Arc::new(db);
    let pool = db.clone();
    let batch = args.batch.max(1);
    let sql = format!(
        "INSERT INTO {table} ({COLUMNS}) VALUES {}",
        (0..batch)
            .map(|r| {
                let cells: Vec<String> = (1..=PER_ROW)
                    .map(|c| format!("${}", r * PER_ROW + c))
                    .collect();
                format!("({})", cells.join(", "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let sql = Arc::new(sql);
    let accounts: Arc<Vec<String>> = Arc::new(
        (0..args.accounts)
            .map(|a| format!("00000000-0000-7000-8000-{a:012}"))
            .collect(),
    );
    let run = args.run_id.clone();
    let rows = Arc::new(AtomicU64::new(0));
    let counted = rows.clone();
    let op: Op = Arc::new(move |i| {
        let (db, sql, accounts, run, counted) = (
            db.clone(),
            sql.clone(),
            accounts.clone(),
            run.clone(),
            counted.clone(),
        );
        async move {
            let now = cascade_chassis::time::now().timestamp_millis();
            let mut values: Vec<Value> = Vec::with_capacity(batch * PER_ROW);
            for k in 0..batch as u64 {
                let seed = crate::scenarios::mix(i.wrapping_mul(1_000_003).wrapping_add(k));
                let account = &accounts[(seed % accounts.len() as u64) as usize];
                values.extend([
                    Value::from("bench"),
                    Value::from(format!("{run}-{i}-{k}")),
                    Value::from(account.clone()),
                    Value::from(format!("{}{:04}", &account[..32], seed % 10_000)),
                    Value::from("email_open"),
                    Value::from(now),
                    Value::from(1_i64),
                    Value::from(2_i32),
                    Value::from(2_i32),
                    Value::from(false),
                    Value::from(false),
                    Value::from(now),
                ]);
            }
            let failed = |e: sea_orm::DbErr| Status::internal(e.to_string());
            let txn = db.begin().await.map_err(failed)?;
            txn.execute_raw(cascade_chassis::db::statement(backend, &sql, values))
                .await
                .map_err(failed)?;
            txn.commit().await.map_err(failed)?;
            counted.fetch_add(batch as u64, Ordering::Relaxed);
            Ok(batch as u64)
        }
        .boxed()
    });
    let (stats, elapsed) = stats::run(
        op,
        Mode::Closed {
            concurrency: args.concurrency,
        },
        Duration::from_secs_f64(args.duration),
    )
    .await;
    let mut summary = stats.summary(elapsed);
    summary["database"] = json!(match backend {
        DbBackend::Postgres => "postgres",
        _ => "sqlite",
    });
    summary["table"] = json!(table);
    summary["rows"] = json!(rows.load(Ordering::Relaxed));
    summary["rows_per_s"] = summary["events_per_s"].clone();
    let _ = pool.close_by_ref().await;
    if let Some(name) = made {
        drop_database(server, &name).await?;
    }
    Ok(summary)
}
