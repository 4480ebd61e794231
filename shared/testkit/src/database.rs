//! A fresh database per test: a SQLite file in its own folder, or a new
//! PostgreSQL database when `CASCADE_TEST_POSTGRES_URL` names a server.

use sea_orm::{ConnectionTrait, Database, Statement};

use cascade_chassis::db::DatabaseSettings;

/// Names the PostgreSQL server for tests, e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
pub const POSTGRES_URL_ENV: &str = "CASCADE_TEST_POSTGRES_URL";
/// When set (CI sets it), a missing PostgreSQL URL fails the PostgreSQL tests
/// instead of skipping them.
pub const REQUIRE_POSTGRES_ENV: &str = "CASCADE_TEST_REQUIRE_POSTGRES";

/// A database that exists for one test and is removed afterwards.
pub struct TestDatabase {
    pub settings: DatabaseSettings,
    cleanup: Cleanup,
}

enum Cleanup {
    Directory(std::path::PathBuf),
    PostgresDatabase { admin_url: String, name: String },
}

impl TestDatabase {
    /// A new SQLite file in a new temporary folder.
    pub fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(format!("cascade-test-{}", uuid::Uuid::now_v7()));
        let settings = DatabaseSettings::sqlite_file(&dir.join("test.db"));
        Self {
            settings,
            cleanup: Cleanup::Directory(dir),
        }
    }

    /// A new, empty PostgreSQL database; `None` (the test is skipped, with a
    /// message) when no server is configured and none is required.
    pub async fn postgres() -> Option<Self> {
        let admin_url = match std::env::var(POSTGRES_URL_ENV) {
            Ok(url) if !url.is_empty() => url,
            _ => {
                assert!(
                    std::env::var_os(REQUIRE_POSTGRES_ENV).is_none(),
                    "{REQUIRE_POSTGRES_ENV} is set but {POSTGRES_URL_ENV} is not"
                );
                eprintln!("skipped: set {POSTGRES_URL_ENV} to run the PostgreSQL variant");
                return None;
            }
        };
        let name = format!("cascade_test_{}", uuid::Uuid::now_v7().simple());
        let admin = Database::connect(admin_url.as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_URL_ENV}: {e}"));
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database: {e}"));
        admin.close().await.ok();
        let url = replace_database(&admin_url, &name);
        Some(Self {
            settings: DatabaseSettings {
                url,
                max_connections: None,
                acquire_timeout_ms: 5_000,
                run_migrations: true,
                analyze_interval_ms: cascade_chassis::db::DEFAULT_ANALYZE_INTERVAL_MS,
            },
            cleanup: Cleanup::PostgresDatabase { admin_url, name },
        })
    }
}

impl TestDatabase {
    /// Another new database on the same backend as this one (each service
    /// of a suite has its own, as in a deployment).
    pub async fn like(&self) -> Self {
        if self.settings.is_sqlite() {
            Self::sqlite()
        } else {
            Self::postgres()
                .await
                .expect("PostgreSQL is configured: this database is on it")
        }
    }
}

impl TestDatabase {
    /// Every `table.column` of this database holding `needle` in some row,
    /// text and binary columns alike (protobuf payloads, JSON documents):
    /// how erasure tests show a person's data is gone.
    pub async fn columns_containing(&self, needle: &str) -> Vec<String> {
        let db = Database::connect(self.settings.url.as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot open the test database: {e}"));
        let backend = db.get_database_backend();
        let columns: Vec<(String, String, String)> = if self.settings.is_sqlite() {
            let tables = db
                .query_all_raw(Statement::from_string(
                    backend,
                    "SELECT name FROM sqlite_master WHERE type = 'table'",
                ))
                .await
                .expect("tables");
            let mut columns = Vec::new();
            for table in tables {
                let table: String = table.try_get_by_index(0).expect("name");
                for column in db
                    .query_all_raw(Statement::from_string(
                        backend,
                        format!("SELECT name, type FROM pragma_table_info('{table}')"),
                    ))
                    .await
                    .expect("columns")
                {
                    columns.push((
                        table.clone(),
                        column.try_get_by_index(0).expect("column"),
                        column.try_get_by_index(1).expect("type"),
                    ));
                }
            }
            columns
        } else {
            db.query_all_raw(Statement::from_string(
                backend,
                "SELECT table_name::text, column_name::text, data_type::text \
                 FROM information_schema.columns WHERE table_schema = 'public'",
            ))
            .await
            .expect("columns")
            .into_iter()
            .map(|row| {
                (
                    row.try_get_by_index(0).expect("table"),
                    row.try_get_by_index(1).expect("column"),
                    row.try_get_by_index(2).expect("type"),
                )
            })
            .collect()
        };
        let mut found = Vec::new();
        for (table, column, kind) in columns {
            let condition = if self.settings.is_sqlite() {
                // Both as BLOBs: a byte search, which stops at no NUL.
                format!("instr(CAST(\"{column}\" AS BLOB), CAST(? AS BLOB)) > 0")
            } else if kind == "bytea" {
                format!("position(convert_to($1, 'UTF8') in \"{column}\") > 0")
            } else {
                format!("strpos(\"{column}\"::text, $1) > 0")
            };
            let sql = format!("SELECT COUNT(*) FROM \"{table}\" WHERE {condition}");
            let statement = Statement::from_sql_and_values(backend, sql, [needle.into()]);
            let row = db
                .query_one_raw(statement)
                .await
                .unwrap_or_else(|e| panic!("searching {table}.{column}: {e}"))
                .expect("a count");
            let count: i64 = row.try_get_by_index(0).expect("count");
            if count > 0 {
                found.push(format!("{table}.{column}"));
            }
        }
        db.close().await.ok();
        found
    }
}

/// Waits until a session of the PostgreSQL database at `url` waits for a
/// lock (of `kind`, as `pg_stat_activity.wait_event` names it: `relation`,
/// `advisory`, `transactionid`...; any kind when `None`). How a race test
/// knows the call it started is held where it means to hold it.
pub async fn someone_waits_for_a_lock(url: &str, kind: Option<&str>) {
    let watching = Database::connect(url).await.expect("the database");
    let kind = kind
        .map(|k| format!(" AND wait_event = '{k}'"))
        .unwrap_or_default();
    let sql = format!(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock'{kind}"
    );
    crate::eventually("someone to wait for a lock", async || {
        let row = watching
            .query_one_raw(Statement::from_string(
                watching.get_database_backend(),
                sql.as_str(),
            ))
            .await
            .map_err(|e| e.to_string())?
            .expect("a count");
        let waiting: i64 = row.try_get_by_index(0).map_err(|e| e.to_string())?;
        if waiting > 0 {
            Ok(())
        } else {
            Err(format!("no one waits ({sql})"))
        }
    })
    .await;
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Directory(dir) => {
                std::fs::remove_dir_all(dir).ok();
            }
            Cleanup::PostgresDatabase { admin_url, name } => {
                // Drop runs inside the test's runtime: use a thread with its own.
                let (admin_url, db_name) = (admin_url.clone(), name.clone());
                let dropped = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()?;
                    runtime.block_on(async {
                        let admin = Database::connect(admin_url.as_str()).await.ok()?;
                        admin
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
                            ))
                            .await
                            .ok()?;
                        admin.close().await.ok()
                    })
                })
                .join();
                if !matches!(dropped, Ok(Some(()))) {
                    eprintln!("could not drop test database {name}");
                }
            }
        }
    }
}

/// `postgres://u@h:5432/postgres?x=y` with the database replaced by `name`.
fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    }
}

/// Generates one `#[tokio::test]` per database backend for each listed
/// scenario `async fn name(db: TestDatabase)`.
#[macro_export]
macro_rules! on_each_database {
    ($($scenario:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::TestDatabase::sqlite()).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    if let Some(db) = $crate::TestDatabase::postgres().await {
                        super::$scenario(db).await;
                    }
                }
            )+
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            replace_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            replace_database("postgres://u:p@h/db?sslmode=disable", "t2"),
            "postgres://u:p@h/t2?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://h", "t3"), "postgres://h/t3");
    }
}
