//! Opportunity's part of erasures (`cascade_chassis::erasure`).

use cascade_chassis::TenantId;
use cascade_chassis::erasure::Eraser;
use cascade_proto::lifecycle::v1 as lifecycle;

use crate::storage::Repository;

pub struct OpportunityEraser(pub Repository);

#[tonic::async_trait]
impl Eraser for OpportunityEraser {
    async fn erase(&self, erasure: &lifecycle::PendingErasure) -> anyhow::Result<()> {
        let tenant = TenantId::parse(&erasure.tenant_id)?;
        match lifecycle::ErasureSubjectType::try_from(erasure.subject_type) {
            Ok(lifecycle::ErasureSubjectType::Account) => {
                self.0.erase_account(&tenant, &erasure.account_id).await?;
            }
            Ok(lifecycle::ErasureSubjectType::Contact) => {
                self.0
                    .erase_contacts(&tenant, &erasure.account_id, &erasure.contact_ids)
                    .await?;
            }
            _ => anyhow::bail!("erasure {} names no subject type", erasure.erasure_id),
        }
        Ok(())
    }
}
