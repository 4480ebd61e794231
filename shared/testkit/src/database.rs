//! A fresh database per test: a SQLite file in its own folder, or a new
//! PostgreSQL database when `CASCADE_TEST_POSTGRES_URL` names a server.

use sea_orm::{ConnectionTrait, Database};

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
