//! Waiting for the asynchronous path to finish: a service's outbox has no
//! pending message of a topic left. This is the barrier a test uses before
//! asserting that something did NOT happen (no second notification, no
//! nurture), instead of sleeping and hoping.

use cascade_chassis::db::DatabaseSettings;
use sea_orm::Database;

use crate::wait::eventually;

/// Waits until the outbox in `db` holds no pending message of `topic`
/// (every one delivered, or given up on).
pub async fn wait_until_delivered(db: &DatabaseSettings, topic: &str) {
    let conn = Database::connect(db.url.as_str())
        .await
        .expect("the service's database is reachable");
    eventually(&format!("the {topic} outbox to drain"), async || {
        let pending = cascade_chassis::outbox::pending_count(&conn, topic)
            .await
            .map_err(|e| e.to_string())?;
        if pending == 0 {
            Ok(())
        } else {
            Err(format!("{pending} pending"))
        }
    })
    .await;
    conn.close().await.ok();
}
