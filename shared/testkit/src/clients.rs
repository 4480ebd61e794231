//! Typed clients for the calls tests make over and over. Each holds a
//! [`Caller`] and a lazily connected channel; the helpers panic with the
//! status when a call that should work fails, and `public()` gives the
//! generated client for any call under test itself.

use cascade_proto::common::v1::{AccountStage, ContactStage};
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::lifecycle::v1::lifecycle_internal_service_client::LifecycleInternalServiceClient;
use cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use cascade_proto::opportunity::v1 as op;
use cascade_proto::opportunity::v1::opportunity_service_client::OpportunityServiceClient;
use cascade_proto::scoring::v1 as sc;
use cascade_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use tonic::transport::Channel;

use crate::fixtures::mask;
use crate::request::Caller;
use crate::wait::eventually;

/// The lifecycle service as a test uses it.
#[derive(Clone)]
pub struct Lifecycle {
    channel: Channel,
    caller: Caller,
}

impl Lifecycle {
    /// A client of `channel` calling as `caller`.
    pub fn new(channel: Channel, caller: Caller) -> Self {
        Self { channel, caller }
    }

    /// The same service, called as another caller.
    pub fn as_caller(&self, caller: Caller) -> Self {
        Self::new(self.channel.clone(), caller)
    }

    /// The same service, called as `tenant`.
    pub fn as_tenant(&self, tenant: &str) -> Self {
        self.as_caller(Caller::tenant(tenant))
    }

    /// The same caller acting as `actor` (kept in history): a person, or
    /// `scoring` / `opportunity` for their deliveries.
    pub fn as_actor(&self, actor: &str) -> Self {
        self.as_caller(self.caller.clone().actor(actor))
    }

    /// The generated public client.
    pub fn public(&self) -> LifecycleServiceClient<Channel> {
        LifecycleServiceClient::new(self.channel.clone())
    }

    /// The generated internal client (scoring's and opportunity's deliveries).
    pub fn internal(&self) -> LifecycleInternalServiceClient<Channel> {
        LifecycleInternalServiceClient::new(self.channel.clone())
    }

    /// Who the calls come from.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// `message` as a request from this client's caller.
    pub fn req<T>(&self, message: T) -> tonic::Request<T> {
        self.caller.req(message)
    }

    /// Creates an account named `name` owned by `owner` (may be empty).
    pub async fn create_account(&self, name: &str, owner: &str) -> lc::Account {
        self.create_account_with(lc::Account {
            name: name.to_owned(),
            owner_id: owner.to_owned(),
            ..Default::default()
        })
        .await
    }

    /// Creates `account` (any fields set), without a request id.
    pub async fn create_account_with(&self, account: lc::Account) -> lc::Account {
        self.try_create_account(account, "")
            .await
            .unwrap_or_else(|status| panic!("account created: {status:?}"))
    }

    /// Creates `account` with `request_id`; the status when refused.
    pub async fn try_create_account(
        &self,
        account: lc::Account,
        request_id: &str,
    ) -> Result<lc::Account, tonic::Status> {
        let response = self
            .public()
            .create_account(self.req(lc::CreateAccountRequest {
                account: Some(account),
                request_id: request_id.to_owned(),
            }))
            .await?;
        Ok(response
            .into_inner()
            .account
            .expect("account in the answer"))
    }

    /// Creates a contact of `account_id` with `email`.
    pub async fn create_contact(&self, account_id: &str, email: &str) -> lc::Contact {
        self.create_contact_with(lc::Contact {
            account_id: account_id.to_owned(),
            email: email.to_owned(),
            ..Default::default()
        })
        .await
    }

    /// Creates `contact` (any fields set), without a request id.
    pub async fn create_contact_with(&self, contact: lc::Contact) -> lc::Contact {
        self.try_create_contact(contact, "")
            .await
            .unwrap_or_else(|status| panic!("contact created: {status:?}"))
    }

    /// Creates `contact` with `request_id`; the status when refused.
    pub async fn try_create_contact(
        &self,
        contact: lc::Contact,
        request_id: &str,
    ) -> Result<lc::Contact, tonic::Status> {
        let response = self
            .public()
            .create_contact(self.req(lc::CreateContactRequest {
                contact: Some(contact),
                request_id: request_id.to_owned(),
                ..Default::default()
            }))
            .await?;
        Ok(response
            .into_inner()
            .contact
            .expect("contact in the answer"))
    }

    /// The account as GetAccount answers it.
    pub async fn account(&self, account_id: &str) -> lc::Account {
        self.try_account(account_id)
            .await
            .unwrap_or_else(|status| panic!("get account {account_id}: {status:?}"))
    }

    /// GetAccount, the status when refused.
    pub async fn try_account(&self, account_id: &str) -> Result<lc::Account, tonic::Status> {
        let response = self
            .public()
            .get_account(self.req(lc::GetAccountRequest {
                account_id: account_id.to_owned(),
            }))
            .await?;
        Ok(response
            .into_inner()
            .account
            .expect("account in the answer"))
    }

    /// The contact as GetContact answers it.
    pub async fn contact(&self, contact_id: &str) -> lc::Contact {
        self.public()
            .get_contact(self.req(lc::GetContactRequest {
                contact_id: contact_id.to_owned(),
            }))
            .await
            .unwrap_or_else(|status| panic!("get contact {contact_id}: {status:?}"))
            .into_inner()
            .contact
            .expect("contact in the answer")
    }

    /// The account's stage history, oldest first (one page of 500).
    pub async fn transitions(&self, account_id: &str) -> Vec<lc::AccountTransition> {
        self.public()
            .list_account_transitions(self.req(lc::ListAccountTransitionsRequest {
                account_id: account_id.to_owned(),
                page_size: 500,
                page_token: String::new(),
            }))
            .await
            .unwrap_or_else(|status| panic!("transitions of {account_id}: {status:?}"))
            .into_inner()
            .transitions
    }

    /// Moves the account to NURTURED (NurtureAccount) with `reason`.
    pub async fn nurture(&self, account_id: &str, reason: &str) {
        self.public()
            .nurture_account(self.req(lc::NurtureAccountRequest {
                account_id: account_id.to_owned(),
                reason: reason.to_owned(),
            }))
            .await
            .unwrap_or_else(|status| panic!("{account_id} nurtured: {status:?}"));
    }

    /// Updates the tenant's lifecycle settings named by `paths`.
    pub async fn set_settings(&self, settings: lc::LifecycleSettings, paths: &[&str]) {
        self.public()
            .update_lifecycle_settings(self.req(lc::UpdateLifecycleSettingsRequest {
                settings: Some(settings),
                update_mask: mask(paths),
            }))
            .await
            .unwrap_or_else(|status| panic!("settings {paths:?} updated: {status:?}"));
    }

    /// Points the tenant's owner notifications at `url`, signed with
    /// `secret` when given.
    pub async fn set_webhook(&self, url: &str, secret: Option<&str>) {
        let mut paths = vec!["webhook_url"];
        if secret.is_some() {
            paths.push("webhook_secret");
        }
        self.set_settings(
            lc::LifecycleSettings {
                webhook_url: url.to_owned(),
                webhook_secret: secret.unwrap_or_default().to_owned(),
                ..Default::default()
            },
            &paths,
        )
        .await;
    }

    /// Delivers a score on the internal service as scoring does (actor
    /// `scoring`); the status when refused.
    pub async fn try_apply_score(
        &self,
        delivery: lc::ApplyEngagementScoreRequest,
    ) -> Result<lc::ApplyEngagementScoreResponse, tonic::Status> {
        let scoring = self.as_actor("scoring");
        Ok(scoring
            .internal()
            .apply_engagement_score(scoring.req(delivery))
            .await?
            .into_inner())
    }

    /// Delivers an opportunity event as the opportunity service does
    /// (actor `opportunity`); the status when refused.
    pub async fn try_apply_opportunity_event(
        &self,
        event: lc::ApplyOpportunityEventRequest,
    ) -> Result<lc::ApplyOpportunityEventResponse, tonic::Status> {
        let opportunity = self.as_actor("opportunity");
        Ok(opportunity
            .internal()
            .apply_opportunity_event(opportunity.req(event))
            .await?
            .into_inner())
    }

    /// The account's notifications, newest first.
    pub async fn notifications(&self, account_id: &str) -> Vec<lc::Notification> {
        self.public()
            .list_notifications(self.req(lc::ListNotificationsRequest {
                account_id: account_id.to_owned(),
                ..Default::default()
            }))
            .await
            .expect("notifications")
            .into_inner()
            .notifications
    }

    /// The funnel report's row of `stage` for the window from a day ago to a
    /// day ahead (everything a test did).
    pub async fn funnel_row(&self, stage: AccountStage) -> lc::FunnelStage {
        let report = self
            .public()
            .get_funnel_report(self.req(lc::GetFunnelReportRequest {
                start_time: Some(crate::fixtures::days_ago(1)),
                end_time: Some(crate::fixtures::days_ago(-1)),
            }))
            .await
            .expect("funnel report")
            .into_inner();
        report
            .stages
            .into_iter()
            .find(|r| r.stage == stage as i32)
            .unwrap_or_else(|| panic!("{} in the funnel report", stage.as_str_name()))
    }

    /// Waits until `ready` holds for the account; `what` names the wait.
    pub async fn wait_for_account(
        &self,
        account_id: &str,
        what: &str,
        ready: impl Fn(&lc::Account) -> bool,
    ) -> lc::Account {
        eventually(what, async || {
            let account = self
                .try_account(account_id)
                .await
                .map_err(|s| format!("{s:?}"))?;
            if ready(&account) {
                Ok(account)
            } else {
                Err(format!("{account:?}"))
            }
        })
        .await
    }

    /// Waits until the account is at `stage` (a score or opportunity
    /// delivery crossing the services).
    pub async fn wait_for_stage(&self, account_id: &str, stage: AccountStage) -> lc::Account {
        let what = format!("account {account_id} to reach {}", stage.as_str_name());
        self.wait_for_account(account_id, &what, |a| a.stage == stage as i32)
            .await
    }

    /// Waits until the contact is at `stage`.
    pub async fn wait_for_contact_stage(
        &self,
        contact_id: &str,
        stage: ContactStage,
    ) -> lc::Contact {
        let what = format!("contact {contact_id} to reach {}", stage.as_str_name());
        eventually(&what, async || {
            let contact = self.contact(contact_id).await;
            if contact.stage == stage as i32 {
                Ok(contact)
            } else {
                Err(ContactStage::try_from(contact.stage))
            }
        })
        .await
    }
}

/// The scoring service as a test uses it.
#[derive(Clone)]
pub struct Scoring {
    channel: Channel,
    caller: Caller,
}

impl Scoring {
    /// A client of `channel` calling as `caller`.
    pub fn new(channel: Channel, caller: Caller) -> Self {
        Self { channel, caller }
    }

    /// The same service, called as `tenant`.
    pub fn as_tenant(&self, tenant: &str) -> Self {
        Self::new(self.channel.clone(), Caller::tenant(tenant))
    }

    /// The generated client.
    pub fn public(&self) -> ScoringServiceClient<Channel> {
        ScoringServiceClient::new(self.channel.clone())
    }

    /// `message` as a request from this client's caller.
    pub fn req<T>(&self, message: T) -> tonic::Request<T> {
        self.caller.req(message)
    }

    /// RecordActivity (one activity, answered synchronously).
    pub async fn record_one(&self, activity: sc::Activity) -> sc::RecordActivityResponse {
        self.public()
            .record_activity(self.req(sc::RecordActivityRequest {
                activity: Some(activity),
            }))
            .await
            .unwrap_or_else(|status| panic!("activity recorded: {status:?}"))
            .into_inner()
    }

    /// The tenant's current scoring model.
    pub async fn model(&self) -> sc::ScoringModel {
        self.public()
            .get_scoring_model(self.req(sc::GetScoringModelRequest { version: 0 }))
            .await
            .unwrap_or_else(|status| panic!("scoring model: {status:?}"))
            .into_inner()
            .model
            .expect("model in the answer")
    }

    /// The current model changed by `change`, stored as the next version.
    pub async fn change_model(
        &self,
        change: impl FnOnce(&mut sc::ScoringModel),
    ) -> sc::ScoringModel {
        let mut model = self.model().await;
        change(&mut model);
        self.public()
            .update_scoring_model(self.req(sc::UpdateScoringModelRequest { model: Some(model) }))
            .await
            .unwrap_or_else(|status| panic!("scoring model updated: {status:?}"))
            .into_inner()
            .model
            .expect("model in the answer")
    }

    /// RecordActivities; the call must succeed (items may still be refused:
    /// look at the results).
    pub async fn record(&self, activities: Vec<sc::Activity>) -> sc::RecordActivitiesResponse {
        self.try_record(activities)
            .await
            .unwrap_or_else(|status| panic!("activities recorded: {status:?}"))
    }

    /// RecordActivities; the status when the whole call is refused.
    pub async fn try_record(
        &self,
        activities: Vec<sc::Activity>,
    ) -> Result<sc::RecordActivitiesResponse, tonic::Status> {
        Ok(self
            .public()
            .record_activities(self.req(sc::RecordActivitiesRequest { activities }))
            .await?
            .into_inner())
    }

    /// The account's score; NOT_FOUND and other refusals as the status.
    pub async fn try_score(&self, account_id: &str) -> Result<sc::AccountScore, tonic::Status> {
        let response = self
            .public()
            .get_account_score(self.req(sc::GetAccountScoreRequest {
                account_id: account_id.to_owned(),
            }))
            .await?;
        Ok(response.into_inner().score.expect("score in the answer"))
    }

    /// The account's score.
    pub async fn score(&self, account_id: &str) -> sc::AccountScore {
        self.try_score(account_id)
            .await
            .unwrap_or_else(|status| panic!("score of {account_id}: {status:?}"))
    }

    /// SimulateScoringModelStream read to its end: the progress messages in
    /// order, and the result, which must be the last message and come once.
    /// The status when the call or the stream fails.
    pub async fn try_simulate_with_progress(
        &self,
        request: sc::SimulateScoringModelStreamRequest,
    ) -> Result<
        (
            Vec<sc::SimulateScoringModelProgress>,
            sc::SimulateScoringModelResponse,
        ),
        tonic::Status,
    > {
        use sc::simulate_scoring_model_stream_response::Update;
        let mut stream = self
            .public()
            .simulate_scoring_model_stream(self.req(request))
            .await?
            .into_inner();
        let mut progress = Vec::new();
        let mut result = None;
        while let Some(message) = stream.message().await? {
            assert!(result.is_none(), "a message after the result: {message:?}");
            match message.update {
                Some(Update::Progress(p)) => progress.push(p),
                Some(Update::Result(r)) => result = Some(r),
                None => panic!("a message with neither progress nor result"),
            }
        }
        Ok((progress, result.expect("the stream ends with the result")))
    }
}

/// The opportunity service as a test uses it. The `try_*` calls answer the
/// status, since refusals (a step's missing fields) are what most tests
/// look at.
#[derive(Clone)]
pub struct Opportunity {
    channel: Channel,
    caller: Caller,
}

impl Opportunity {
    /// A client of `channel` calling as `caller`.
    pub fn new(channel: Channel, caller: Caller) -> Self {
        Self { channel, caller }
    }

    /// The same service, called as `tenant`.
    pub fn as_tenant(&self, tenant: &str) -> Self {
        Self::new(self.channel.clone(), Caller::tenant(tenant))
    }

    /// The same service, called by `actor` (x-actor-id).
    pub fn as_actor(&self, actor: &str) -> Self {
        Self::new(self.channel.clone(), self.caller.clone().actor(actor))
    }

    /// The generated client.
    pub fn public(&self) -> OpportunityServiceClient<Channel> {
        OpportunityServiceClient::new(self.channel.clone())
    }

    /// `message` as a request from this client's caller.
    pub fn req<T>(&self, message: T) -> tonic::Request<T> {
        self.caller.req(message)
    }

    /// CreateOpportunity without a request id.
    pub async fn try_create(
        &self,
        opportunity: op::Opportunity,
    ) -> Result<op::Opportunity, tonic::Status> {
        let response = self
            .public()
            .create_opportunity(self.req(op::CreateOpportunityRequest {
                opportunity: Some(opportunity),
                request_id: String::new(),
            }))
            .await?;
        Ok(response
            .into_inner()
            .opportunity
            .expect("opportunity in the answer"))
    }

    /// Creates a deal named `name` for `account_id`.
    pub async fn create(&self, account_id: &str, name: &str) -> op::Opportunity {
        self.try_create(op::Opportunity {
            account_id: account_id.to_owned(),
            name: name.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("opportunity created: {status:?}"))
    }

    /// UpdateOpportunity of the fields named by `paths`, taken from `fields`.
    pub async fn try_update(
        &self,
        id: &str,
        fields: op::Opportunity,
        paths: &[&str],
    ) -> Result<op::Opportunity, tonic::Status> {
        let response = self
            .public()
            .update_opportunity(self.req(op::UpdateOpportunityRequest {
                opportunity: Some(op::Opportunity {
                    opportunity_id: id.to_owned(),
                    ..fields
                }),
                update_mask: mask(paths),
            }))
            .await?;
        Ok(response
            .into_inner()
            .opportunity
            .expect("opportunity in the answer"))
    }

    /// AdvanceOpportunity to the next step.
    pub async fn try_advance(&self, id: &str) -> Result<op::Opportunity, tonic::Status> {
        let response = self
            .public()
            .advance_opportunity(self.req(op::AdvanceOpportunityRequest {
                opportunity_id: id.to_owned(),
                to_step: 0,
            }))
            .await?;
        Ok(response
            .into_inner()
            .opportunity
            .expect("opportunity in the answer"))
    }

    /// CloseOpportunityWon.
    pub async fn try_win(&self, id: &str) -> Result<op::Opportunity, tonic::Status> {
        let response = self
            .public()
            .close_opportunity_won(self.req(op::CloseOpportunityWonRequest {
                opportunity_id: id.to_owned(),
            }))
            .await?;
        Ok(response
            .into_inner()
            .opportunity
            .expect("opportunity in the answer"))
    }

    /// CloseOpportunityLost with `reason`.
    pub async fn try_lose(&self, id: &str, reason: &str) -> Result<op::Opportunity, tonic::Status> {
        let response = self
            .public()
            .close_opportunity_lost(self.req(op::CloseOpportunityLostRequest {
                opportunity_id: id.to_owned(),
                reason: reason.to_owned(),
            }))
            .await?;
        Ok(response
            .into_inner()
            .opportunity
            .expect("opportunity in the answer"))
    }

    /// GetOpportunity.
    pub async fn get(&self, id: &str) -> op::Opportunity {
        self.public()
            .get_opportunity(self.req(op::GetOpportunityRequest {
                opportunity_id: id.to_owned(),
            }))
            .await
            .unwrap_or_else(|status| panic!("get opportunity {id}: {status:?}"))
            .into_inner()
            .opportunity
            .expect("opportunity in the answer")
    }
}
