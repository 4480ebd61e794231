//! The periodic check that tells lifecycle when a customer's contracts have
//! ended (`storage::contracts`): every replica runs it; each end is reported
//! once.

use std::time::Duration;

use cascade_chassis::time;

use crate::domain::Date;
use crate::storage::Repository;

/// Checks every `interval` for accounts whose contracts ended before today
/// (UTC) and reports them. Runs until aborted.
pub async fn follow(repository: Repository, interval: Duration) {
    loop {
        let today = Date::from_chrono(time::now().date_naive());
        if let Err(error) = repository.report_ended_contracts(today).await {
            tracing::warn!(%error, "contracts ended: will check again");
        }
        tokio::time::sleep(interval).await;
    }
}
