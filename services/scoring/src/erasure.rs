//! Scoring's part of erasures (`cascade_chassis::erasure`): the rows of the
//! erased contacts or account, and what the directory remembers of people.

use std::time::Instant;

use cascade_chassis::TenantId;
use cascade_chassis::erasure::Eraser;
use cascade_proto::lifecycle::v1 as lifecycle;

use crate::directory::Directory;
use crate::storage::{Erase, Repository};

pub struct ScoringEraser {
    pub repository: Repository,
    pub directory: Directory,
}

#[tonic::async_trait]
impl Eraser for ScoringEraser {
    async fn erase(&self, erasure: &lifecycle::PendingErasure) -> anyhow::Result<()> {
        let tenant = TenantId::parse(&erasure.tenant_id)?;
        let what = match lifecycle::ErasureSubjectType::try_from(erasure.subject_type) {
            Ok(lifecycle::ErasureSubjectType::Account) => Erase::Account {
                account_id: &erasure.account_id,
            },
            Ok(lifecycle::ErasureSubjectType::Contact) => Erase::Contacts {
                account_id: &erasure.account_id,
                contact_ids: &erasure.contact_ids,
            },
            _ => anyhow::bail!("erasure {} names no subject type", erasure.erasure_id),
        };
        Ok(self.repository.erase(&tenant, what).await?)
    }

    /// A remembered pair would let an activity name the erased person
    /// without asking lifecycle. Forgotten before the rows are erased, and
    /// even if erasing them fails: a check asked after this gets lifecycle's
    /// answer (no such person), and one asked before is not remembered.
    fn hear(&self, _erasure: &lifecycle::PendingErasure) {
        self.directory.forget_everything();
    }

    fn heard_all(&self, started: Instant) {
        self.directory.heard_all(started);
    }
}
