//! Scoring's part of contacts marked inactive (lifecycle's
//! DeactivateContact) or active again, or whose email changed
//! (`cascade_chassis::erasure` polls them for it). A status change
//! recomputes the account with or without the contact's engagement and
//! delivers it; an email change leaves status and scores alone. Either way
//! the directory forgets what it checked of the contact, so the next
//! activity naming it (or its old email) is checked with lifecycle (which
//! says whether it is inactive, and whom the email names now).
//!
//! Only the replica that applies a change hears of it from lifecycle, so
//! every replica also looks at the changes applied in the database since its
//! last look (`forget_changed`) and forgets those contacts too.

use std::time::Duration;

use cascade_chassis::erasure::ContactChangeApplier;
use cascade_chassis::{TenantId, time};
use cascade_proto::lifecycle::v1 as lifecycle;

use crate::directory::Directory;
use crate::storage::{ChangedContact, ContactChange, Repository};

pub struct ScoringContactChanges {
    pub repository: Repository,
    pub directory: Directory,
}

#[tonic::async_trait]
impl ContactChangeApplier for ScoringContactChanges {
    async fn apply(&self, change: &lifecycle::PendingContactChange) -> anyhow::Result<()> {
        let tenant = TenantId::parse(&change.tenant_id)?;
        if change.contact_id.is_empty() || change.account_id.is_empty() {
            anyhow::bail!("contact change {} names no contact", change.change_id);
        }
        let changed = [ChangedContact {
            tenant_id: change.tenant_id.clone(),
            account_id: change.account_id.clone(),
            contact_id: change.contact_id.clone(),
        }];
        // Before the scores change: once they show the change, this replica
        // checks the contact with lifecycle (which already knows) again.
        self.directory.forget_contacts(&changed);
        let status_change = matches!(
            lifecycle::ContactChangeKind::try_from(change.kind),
            Ok(lifecycle::ContactChangeKind::Unspecified | lifecycle::ContactChangeKind::Status)
        );
        if !status_change {
            // An email change (or a kind newer than this version): not the
            // status recorded beside it, which a status change recorded on
            // another lifecycle replica can outdate with an earlier id.
            self.repository
                .touch_contact(&tenant, &change.contact_id, &change.account_id)
                .await?;
            self.directory.forget_contacts(&changed);
            return Ok(());
        }
        self.repository
            .apply_contact_change(
                &tenant,
                &ContactChange {
                    change_id: &change.change_id,
                    contact_id: &change.contact_id,
                    account_id: &change.account_id,
                    inactive: change.inactive,
                },
            )
            .await?;
        // And after: a check that asked lifecycle before the change may have
        // remembered the contact as it was meanwhile.
        self.directory.forget_contacts(&changed);
        Ok(())
    }
}

/// How far back each look reaches before the previous one: replicas' clocks
/// and commits do not line up exactly, and forgetting twice costs one call
/// to lifecycle.
const OVERLAP_MS: i64 = 60_000;

/// Every `interval`, forgets the contacts whose status any replica changed
/// since the last look (less [`OVERLAP_MS`]). Runs until aborted.
pub async fn forget_changed(repository: Repository, directory: Directory, interval: Duration) {
    let mut since = time::now().timestamp_millis() - OVERLAP_MS;
    loop {
        tokio::time::sleep(interval).await;
        let look = time::now().timestamp_millis();
        match repository.contact_changes_since(since).await {
            Ok(changed) => {
                directory.forget_contacts(&changed);
                since = look - OVERLAP_MS;
            }
            Err(error) => tracing::warn!(%error, "contact changes: will look again"),
        }
    }
}
