//! Waiting for the asynchronous path to finish: a service's outbox has no
//! pending message of a topic left. This is the barrier a test uses before
//! asserting that something did NOT happen (no second notification, no
//! nurture), instead of sleeping and hoping.

use cascade_chassis::db::DatabaseSettings;
use sea_orm::{Database, DatabaseConnection};

use crate::wait::eventually;

/// Waits until the outbox in `db` holds no pending message of `topic`
/// (every one delivered, or given up on).
pub async fn wait_until_delivered(db: &DatabaseSettings, topic: &str) {
    let what = format!("the {topic} outbox to drain");
    wait_until_none(db, &what, async |conn| {
        cascade_chassis::outbox::pending_count(conn, topic)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
}

/// Waits until scoring's database in `db` holds no group waiting for a fold.
/// Scores reach the outbox through a fold, so an empty outbox before this
/// can mean only that the fold has not run yet.
#[cfg(feature = "services")]
pub async fn wait_until_folded(db: &DatabaseSettings) {
    wait_until_none(db, "scoring's pending groups to fold", async |conn| {
        cascade_scoring::storage::Repository::new(conn.clone())
            .pending_folds()
            .await
            .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
            .map_err(|e| e.to_string())
    })
    .await;
}

/// Polls `count` over one connection to `db` until it answers 0.
async fn wait_until_none(
    db: &DatabaseSettings,
    what: &str,
    count: impl AsyncFn(&DatabaseConnection) -> Result<i64, String>,
) {
    let conn = Database::connect(db.url.as_str())
        .await
        .expect("the service's database is reachable");
    eventually(what, async || match count(&conn).await? {
        0 => Ok(()),
        pending => Err(format!("{pending} pending")),
    })
    .await;
    conn.close().await.ok();
}
