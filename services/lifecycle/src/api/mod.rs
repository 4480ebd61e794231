//! gRPC handlers: validate and translate requests, call the repository, and
//! translate the answer. No rules live here.

use std::sync::Arc;

use cascade_chassis::idempotency::RequestKey;
use cascade_chassis::page::PageRequest;
use cascade_chassis::validate::{Validator, mask_path, mask_paths, not_writable};
use cascade_chassis::{RequestContext, ServiceResult};
use cascade_domain::{AccountStage, ContactStage, CustomerType};
use cascade_proto::lifecycle::v1 as pb;
use cascade_proto::lifecycle::v1::lifecycle_internal_service_server::LifecycleInternalService;
use cascade_proto::lifecycle::v1::lifecycle_service_server::LifecycleService;
use tonic::{Request, Response, Status};

mod actions;
mod apply;
mod contacts;
mod erasure;
mod history;
mod import;
mod reports;
mod resolve;
mod settings;
mod watch;

use crate::convert;
use crate::domain::{AccountChanges, AccountRef, ContactChanges, NewAccount, NewContact};
use crate::storage::{AccountFilter, ContactFilter, Repository};

const MAX_NAME: usize = 200;
const MAX_OWNER: usize = 200;
const MAX_PERSON_NAME: usize = 100;
const MAX_TITLE: usize = 200;
const MAX_EXTERNAL_ID: usize = 128;

/// A CreateAccount request (alone or an item of a batch) as a new account
/// and its request key; violations go to `v`.
fn new_account(
    v: &mut Validator,
    request: pb::CreateAccountRequest,
) -> (NewAccount, Option<RequestKey>) {
    let account = request.account.unwrap_or_default();
    let new = NewAccount {
        name: v.required_text("account.name", &account.name, MAX_NAME),
        domain: v.optional_domain("account.domain", &account.domain),
        owner_id: v.optional_text("account.owner_id", &account.owner_id, MAX_OWNER),
        external_id: v.optional_text("account.external_id", &account.external_id, MAX_EXTERNAL_ID),
    };
    let key = RequestKey::of(
        v.request_id("request_id", &request.request_id),
        &asked_account(&new),
    );
    (new, key)
}

/// What a CreateAccount asks, normalized (the domain lower-cased): its
/// request key's digest.
fn asked_account(new: &NewAccount) -> pb::Account {
    pb::Account {
        name: new.name.clone(),
        domain: new.domain.clone().unwrap_or_default(),
        owner_id: new.owner_id.clone().unwrap_or_default(),
        external_id: new.external_id.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// A CreateContact request (alone or an item of a batch) as a new contact
/// and its request key; violations go to `v`.
fn new_contact(
    v: &mut Validator,
    request: pb::CreateContactRequest,
) -> (NewContact, Option<RequestKey>) {
    let contact = request.contact.unwrap_or_default();
    let by_external = v.optional_text(
        "account_external_id",
        &request.account_external_id,
        MAX_EXTERNAL_ID,
    );
    let account = match by_external {
        Some(external_id) => {
            if !contact.account_id.trim().is_empty() {
                v.add(
                    "account_external_id",
                    "name the account by contact.account_id or by account_external_id, not both",
                );
            }
            AccountRef::ExternalId(external_id)
        }
        None => AccountRef::Id(v.required_id("contact.account_id", &contact.account_id)),
    };
    let new = NewContact {
        account,
        email: v.optional_email("contact.email", &contact.email),
        first_name: v
            .optional_text("contact.first_name", &contact.first_name, MAX_PERSON_NAME)
            .unwrap_or_default(),
        last_name: v
            .optional_text("contact.last_name", &contact.last_name, MAX_PERSON_NAME)
            .unwrap_or_default(),
        title: v
            .optional_text("contact.title", &contact.title, MAX_TITLE)
            .unwrap_or_default(),
        external_id: v.optional_text("contact.external_id", &contact.external_id, MAX_EXTERNAL_ID),
    };
    let key = RequestKey::of(
        v.request_id("request_id", &request.request_id),
        &asked_contact(&new),
    );
    (new, key)
}

/// What a CreateContact asks, normalized (the email lower-cased), its
/// account as the caller named it: its request key's digest.
fn asked_contact(new: &NewContact) -> pb::CreateContactRequest {
    let (account_id, account_external_id) = match &new.account {
        AccountRef::Id(id) => (id.clone(), String::new()),
        AccountRef::ExternalId(id) => (String::new(), id.clone()),
    };
    pb::CreateContactRequest {
        contact: Some(pb::Contact {
            account_id,
            email: new.email.clone().unwrap_or_default(),
            first_name: new.first_name.clone(),
            last_name: new.last_name.clone(),
            title: new.title.clone(),
            external_id: new.external_id.clone().unwrap_or_default(),
            ..Default::default()
        }),
        account_external_id,
        request_id: String::new(),
    }
}

pub struct LifecycleApi {
    pub(crate) repository: Repository,
    /// Whether a webhook URL may name a private address (`crate::webhook`).
    pub(crate) private_webhooks: bool,
    /// The watch streams open on this replica (`watch`).
    pub(crate) watchers: Arc<watch::Watchers>,
    /// Turns true when the replica drains: open watch streams end then.
    pub(crate) draining: tokio::sync::watch::Receiver<bool>,
}

impl LifecycleApi {
    pub fn new(
        repository: Repository,
        private_webhooks: bool,
        draining: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            repository,
            private_webhooks,
            watchers: Arc::default(),
            draining,
        }
    }
}

/// The internal service: deliveries from scoring and opportunity, on the
/// same repository (and port) as the public one.
pub struct LifecycleInternalApi(LifecycleApi);

impl LifecycleInternalApi {
    pub fn new(repository: Repository) -> Self {
        // It writes no settings: no webhook URL to check.
        // It serves no stream: the drain signal is never read.
        Self(LifecycleApi::new(
            repository,
            false,
            tokio::sync::watch::channel(false).1,
        ))
    }
}

#[tonic::async_trait]
impl LifecycleInternalService for LifecycleInternalApi {
    async fn apply_engagement_score(
        &self,
        request: Request<pb::ApplyEngagementScoreRequest>,
    ) -> Result<Response<pb::ApplyEngagementScoreResponse>, Status> {
        apply::apply_engagement_score(&self.0, request).await
    }

    async fn apply_engagement_scores(
        &self,
        request: Request<pb::ApplyEngagementScoresRequest>,
    ) -> Result<Response<pb::ApplyEngagementScoresResponse>, Status> {
        apply::apply_engagement_scores(&self.0, request).await
    }

    async fn apply_opportunity_event(
        &self,
        request: Request<pb::ApplyOpportunityEventRequest>,
    ) -> Result<Response<pb::ApplyOpportunityEventResponse>, Status> {
        apply::apply_opportunity_event(&self.0, request).await
    }

    async fn list_pending_erasures(
        &self,
        request: Request<pb::ListPendingErasuresRequest>,
    ) -> Result<Response<pb::ListPendingErasuresResponse>, Status> {
        erasure::list_pending_erasures(&self.0, request).await
    }

    async fn confirm_erasure(
        &self,
        request: Request<pb::ConfirmErasureRequest>,
    ) -> Result<Response<pb::ConfirmErasureResponse>, Status> {
        erasure::confirm_erasure(&self.0, request).await
    }

    async fn list_pending_contact_changes(
        &self,
        request: Request<pb::ListPendingContactChangesRequest>,
    ) -> Result<Response<pb::ListPendingContactChangesResponse>, Status> {
        contacts::list_pending_contact_changes(&self.0, request).await
    }

    async fn confirm_contact_change(
        &self,
        request: Request<pb::ConfirmContactChangeRequest>,
    ) -> Result<Response<pb::ConfirmContactChangeResponse>, Status> {
        contacts::confirm_contact_change(&self.0, request).await
    }
}

#[tonic::async_trait]
impl LifecycleService for LifecycleApi {
    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::CreateAccountResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let mut v = Validator::new();
        let (new, key) = new_account(&mut v, request.into_inner());
        v.finish()?;
        let account = self
            .repository
            .create_account(&context.tenant, new, key)
            .await?;
        Ok(Response::new(pb::CreateAccountResponse {
            account: Some(convert::account(account)),
        }))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let account_id = required_id("account_id", &request.get_ref().account_id)?;
        let account = self
            .repository
            .get_account(&context.tenant, &account_id)
            .await?;
        Ok(Response::new(pb::GetAccountResponse {
            account: Some(convert::account(account)),
        }))
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let page = PageRequest::of(&context.tenant, &request)?;
        let mut v = Validator::new();
        for (field, value) in [
            ("owner_id", &request.owner_id),
            ("domain", &request.domain),
            ("external_id", &request.external_id),
        ] {
            v.filter_not_blank(field, value);
        }
        let filter = AccountFilter {
            stage: optional_enum(&mut v, "stage", request.stage, AccountStage::from_proto),
            customer_type: optional_enum(
                &mut v,
                "customer_type",
                request.customer_type,
                CustomerType::from_proto,
            ),
            owner_id: v.optional_text("owner_id", &request.owner_id, MAX_OWNER),
            domain: v.optional_domain("domain", &request.domain),
            external_id: v.optional_text("external_id", &request.external_id, MAX_EXTERNAL_ID),
            changed_since: v.optional_time("changed_since", request.changed_since.as_ref()),
            at_risk_only: request.at_risk_only,
        };
        v.finish()?;
        let (accounts, next_page_token) = self
            .repository
            .list_accounts(&context.tenant, &filter, &page)
            .await?;
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: accounts.into_iter().map(convert::account).collect(),
            next_page_token,
        }))
    }

    async fn update_account(
        &self,
        request: Request<pb::UpdateAccountRequest>,
    ) -> Result<Response<pb::UpdateAccountResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let account = request.account.unwrap_or_default();
        let account_id = required_id("account.account_id", &account.account_id)?;
        let mut v = Validator::new();
        let mut changes = AccountChanges::default();
        for (i, path) in mask_paths(request.update_mask.as_ref())? {
            match path.as_str() {
                "name" => {
                    changes.name = Some(v.required_text("account.name", &account.name, MAX_NAME));
                }
                "domain" => {
                    changes.domain = Some(v.optional_domain("account.domain", &account.domain));
                }
                "owner_id" => {
                    changes.owner_id =
                        Some(v.optional_text("account.owner_id", &account.owner_id, MAX_OWNER));
                }
                "external_id" => {
                    changes.external_id = Some(v.optional_text(
                        "account.external_id",
                        &account.external_id,
                        MAX_EXTERNAL_ID,
                    ));
                }
                "stage" | "customer_type" => v.add(
                    mask_path(i),
                    format!(
                        "{path} is not writable here: it moves only through the lifecycle rules \
                         (QualifyAccount, DisqualifyAccount, NurtureAccount, AdvanceAccount, scores \
                         and opportunities)"
                    ),
                ),
                other => v.add(
                    mask_path(i),
                    not_writable(other, &["name", "domain", "owner_id", "external_id"]),
                ),
            }
        }
        v.finish()?;
        let account = self
            .repository
            .update_account(&context.tenant, &account_id, changes)
            .await?;
        Ok(Response::new(pb::UpdateAccountResponse {
            account: Some(convert::account(account)),
        }))
    }

    async fn create_contact(
        &self,
        request: Request<pb::CreateContactRequest>,
    ) -> Result<Response<pb::CreateContactResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let mut v = Validator::new();
        let (new, key) = new_contact(&mut v, request.into_inner());
        v.finish()?;
        let contact = self
            .repository
            .create_contact(&context.tenant, new, key)
            .await?;
        Ok(Response::new(pb::CreateContactResponse {
            contact: Some(convert::contact(contact)),
        }))
    }

    async fn get_contact(
        &self,
        request: Request<pb::GetContactRequest>,
    ) -> Result<Response<pb::GetContactResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let contact_id = required_id("contact_id", &request.get_ref().contact_id)?;
        let contact = self
            .repository
            .get_contact(&context.tenant, &contact_id)
            .await?;
        Ok(Response::new(pb::GetContactResponse {
            contact: Some(convert::contact(contact)),
        }))
    }

    async fn list_contacts(
        &self,
        request: Request<pb::ListContactsRequest>,
    ) -> Result<Response<pb::ListContactsResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let page = PageRequest::of(&context.tenant, &request)?;
        let mut v = Validator::new();
        for (field, value) in [
            ("account_id", &request.account_id),
            ("email", &request.email),
            ("external_id", &request.external_id),
        ] {
            v.filter_not_blank(field, value);
        }
        let account_id = (!request.account_id.trim().is_empty())
            .then(|| v.required_id("account_id", &request.account_id));
        let filter = ContactFilter {
            account_id,
            stage: optional_enum(&mut v, "stage", request.stage, ContactStage::from_proto),
            email: v.optional_email("email", &request.email),
            external_id: v.optional_text("external_id", &request.external_id, MAX_EXTERNAL_ID),
            changed_since: v.optional_time("changed_since", request.changed_since.as_ref()),
        };
        v.finish()?;
        let (contacts, next_page_token) = self
            .repository
            .list_contacts(&context.tenant, &filter, &page)
            .await?;
        Ok(Response::new(pb::ListContactsResponse {
            contacts: contacts.into_iter().map(convert::contact).collect(),
            next_page_token,
        }))
    }

    async fn update_contact(
        &self,
        request: Request<pb::UpdateContactRequest>,
    ) -> Result<Response<pb::UpdateContactResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let contact = request.contact.unwrap_or_default();
        let contact_id = required_id("contact.contact_id", &contact.contact_id)?;
        let mut v = Validator::new();
        let mut changes = ContactChanges::default();
        for (i, path) in mask_paths(request.update_mask.as_ref())? {
            match path.as_str() {
                "email" => changes.email = Some(v.optional_email("contact.email", &contact.email)),
                "first_name" => {
                    changes.first_name = Some(
                        v.optional_text("contact.first_name", &contact.first_name, MAX_PERSON_NAME)
                            .unwrap_or_default(),
                    );
                }
                "last_name" => {
                    changes.last_name = Some(
                        v.optional_text("contact.last_name", &contact.last_name, MAX_PERSON_NAME)
                            .unwrap_or_default(),
                    );
                }
                "title" => {
                    changes.title = Some(
                        v.optional_text("contact.title", &contact.title, MAX_TITLE)
                            .unwrap_or_default(),
                    );
                }
                "external_id" => {
                    changes.external_id = Some(v.optional_text(
                        "contact.external_id",
                        &contact.external_id,
                        MAX_EXTERNAL_ID,
                    ));
                }
                "stage" => match ContactStage::from_proto(contact.stage) {
                    Some(stage) => changes.stage = Some(stage),
                    None => v.add("contact.stage", "must be a contact stage"),
                },
                "account_id" => v.add(
                    mask_path(i),
                    "account_id cannot be changed: a contact belongs to one account",
                ),
                other => v.add(
                    mask_path(i),
                    not_writable(
                        other,
                        &[
                            "email",
                            "first_name",
                            "last_name",
                            "title",
                            "stage",
                            "external_id",
                        ],
                    ),
                ),
            }
        }
        v.finish()?;
        let contact = self
            .repository
            .update_contact(&context.tenant, &context.actor, &contact_id, changes)
            .await?;
        Ok(Response::new(pb::UpdateContactResponse {
            contact: Some(convert::contact(contact)),
        }))
    }

    async fn batch_create_accounts(
        &self,
        request: Request<pb::BatchCreateAccountsRequest>,
    ) -> Result<Response<pb::BatchCreateAccountsResponse>, Status> {
        import::batch_create_accounts(self, request).await
    }

    async fn batch_create_contacts(
        &self,
        request: Request<pb::BatchCreateContactsRequest>,
    ) -> Result<Response<pb::BatchCreateContactsResponse>, Status> {
        import::batch_create_contacts(self, request).await
    }

    async fn delete_contact(
        &self,
        request: Request<pb::DeleteContactRequest>,
    ) -> Result<Response<pb::DeleteContactResponse>, Status> {
        erasure::delete_contact(self, request).await
    }

    async fn delete_account(
        &self,
        request: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteAccountResponse>, Status> {
        erasure::delete_account(self, request).await
    }

    async fn get_erasure(
        &self,
        request: Request<pb::GetErasureRequest>,
    ) -> Result<Response<pb::GetErasureResponse>, Status> {
        erasure::get_erasure(self, request).await
    }

    async fn resolve_contact(
        &self,
        request: Request<pb::ResolveContactRequest>,
    ) -> Result<Response<pb::ResolveContactResponse>, Status> {
        resolve::resolve_contact(self, request).await
    }

    async fn batch_resolve_contacts(
        &self,
        request: Request<pb::BatchResolveContactsRequest>,
    ) -> Result<Response<pb::BatchResolveContactsResponse>, Status> {
        resolve::batch_resolve_contacts(self, request).await
    }

    async fn qualify_account(
        &self,
        request: Request<pb::QualifyAccountRequest>,
    ) -> Result<Response<pb::QualifyAccountResponse>, Status> {
        actions::qualify_account(self, request).await
    }

    async fn disqualify_account(
        &self,
        request: Request<pb::DisqualifyAccountRequest>,
    ) -> Result<Response<pb::DisqualifyAccountResponse>, Status> {
        actions::disqualify_account(self, request).await
    }

    async fn nurture_account(
        &self,
        request: Request<pb::NurtureAccountRequest>,
    ) -> Result<Response<pb::NurtureAccountResponse>, Status> {
        actions::nurture_account(self, request).await
    }

    async fn advance_account(
        &self,
        request: Request<pb::AdvanceAccountRequest>,
    ) -> Result<Response<pb::AdvanceAccountResponse>, Status> {
        actions::advance_account(self, request).await
    }

    async fn churn_account(
        &self,
        request: Request<pb::ChurnAccountRequest>,
    ) -> Result<Response<pb::ChurnAccountResponse>, Status> {
        actions::churn_account(self, request).await
    }

    async fn flag_account_at_risk(
        &self,
        request: Request<pb::FlagAccountAtRiskRequest>,
    ) -> Result<Response<pb::FlagAccountAtRiskResponse>, Status> {
        actions::flag_account_at_risk(self, request).await
    }

    async fn clear_account_at_risk(
        &self,
        request: Request<pb::ClearAccountAtRiskRequest>,
    ) -> Result<Response<pb::ClearAccountAtRiskResponse>, Status> {
        actions::clear_account_at_risk(self, request).await
    }

    async fn deactivate_contact(
        &self,
        request: Request<pb::DeactivateContactRequest>,
    ) -> Result<Response<pb::DeactivateContactResponse>, Status> {
        contacts::deactivate_contact(self, request).await
    }

    async fn reactivate_contact(
        &self,
        request: Request<pb::ReactivateContactRequest>,
    ) -> Result<Response<pb::ReactivateContactResponse>, Status> {
        contacts::reactivate_contact(self, request).await
    }

    async fn list_account_transitions(
        &self,
        request: Request<pb::ListAccountTransitionsRequest>,
    ) -> Result<Response<pb::ListAccountTransitionsResponse>, Status> {
        history::list_account_transitions(self, request).await
    }

    async fn list_contact_transitions(
        &self,
        request: Request<pb::ListContactTransitionsRequest>,
    ) -> Result<Response<pb::ListContactTransitionsResponse>, Status> {
        history::list_contact_transitions(self, request).await
    }

    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        history::list_notifications(self, request).await
    }

    async fn get_account_stage_at(
        &self,
        request: Request<pb::GetAccountStageAtRequest>,
    ) -> Result<Response<pb::GetAccountStageAtResponse>, Status> {
        history::get_account_stage_at(self, request).await
    }

    async fn get_funnel_report(
        &self,
        request: Request<pb::GetFunnelReportRequest>,
    ) -> Result<Response<pb::GetFunnelReportResponse>, Status> {
        reports::get_funnel_report(self, request).await
    }

    async fn get_lifecycle_settings(
        &self,
        request: Request<pb::GetLifecycleSettingsRequest>,
    ) -> Result<Response<pb::GetLifecycleSettingsResponse>, Status> {
        settings::get_lifecycle_settings(self, request).await
    }

    async fn update_lifecycle_settings(
        &self,
        request: Request<pb::UpdateLifecycleSettingsRequest>,
    ) -> Result<Response<pb::UpdateLifecycleSettingsResponse>, Status> {
        settings::update_lifecycle_settings(self, request).await
    }

    async fn watch_account_events(
        &self,
        request: Request<pb::WatchAccountEventsRequest>,
    ) -> Result<Response<watch::WatchStream>, Status> {
        watch::watch_account_events(self, request).await
    }
}

/// A required id field, or INVALID_ARGUMENT naming it.
pub(crate) fn required_id(field: &str, value: &str) -> ServiceResult<String> {
    let mut v = Validator::new();
    let id = v.required_id(field, value);
    v.finish()?;
    Ok(id)
}

/// An optional enum filter: UNSPECIFIED means no filter; unknown numbers are refused.
pub(crate) fn optional_enum<T>(
    v: &mut Validator,
    field: &str,
    value: i32,
    parse: impl Fn(i32) -> Option<T>,
) -> Option<T> {
    if value == 0 {
        return None;
    }
    let parsed = parse(value);
    if parsed.is_none() {
        v.add(field, format!("unknown value {value}"));
    }
    parsed
}
