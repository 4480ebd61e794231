//! gRPC handlers of the opportunity service: validate and translate, check
//! the account with lifecycle, apply the step rules through the repository.

use std::time::Duration;

use cascade_chassis::client::{CALL_DEADLINE, LifecycleClient, outgoing_for, with_deadline};
use cascade_chassis::idempotency::{RequestKey, reuse_refusal};
use cascade_chassis::page::PageRequest;
use cascade_chassis::validate::{Validator, mask_path, not_writable};
use cascade_chassis::{PreconditionViolation, RequestContext, ServiceError, ServiceResult, time};
use cascade_domain::ids;
use cascade_proto::lifecycle::v1 as lifecycle;
use cascade_proto::opportunity::v1 as pb;
use cascade_proto::opportunity::v1::opportunity_service_server::OpportunityService;
use tonic::{Code, Request, Response, Status};

use crate::domain::{
    self, AccountStage, Action, Opportunity, OpportunityKind, Refusal, Status as OppStatus, Step,
};
use crate::storage::{Filter, Repository};

mod convert;
mod fields;

use convert::{
    counts, currency_figures, settings_to_proto, tenant_currency_figures, to_proto, written,
};
use fields::{
    MAX_NAME, NamedContact, WRITABLE, apply_field, derive_amount, id_of, money, named_contacts,
};

pub struct OpportunityApi {
    repository: Repository,
    lifecycle: LifecycleClient,
}

impl OpportunityApi {
    pub fn new(repository: Repository, lifecycle: LifecycleClient) -> Self {
        Self {
            repository,
            lifecycle,
        }
    }
}

fn lifecycle_failure(status: &Status) -> ServiceError {
    cascade_chassis::client::peer_failure(
        "lifecycle",
        "check the opportunity's account and contacts",
        "nothing was written",
        status,
    )
}

fn refusal(opportunity_id: &str, refusal: Refusal) -> ServiceError {
    if refusal.missing.is_empty() {
        return ServiceError::precondition(
            "OPPORTUNITY_STATE",
            format!("opportunity/{opportunity_id}"),
            refusal.message,
        );
    }
    ServiceError::FailedPrecondition {
        message: refusal.message,
        retry_after: None,
        violations: refusal
            .missing
            .iter()
            .map(|field| {
                PreconditionViolation::new(
                    "MISSING_FIELD",
                    *field,
                    format!("{field} is required to leave this step"),
                )
            })
            .collect(),
    }
}

impl OpportunityApi {
    /// Checks with lifecycle what the opportunity names, in one call per
    /// question whatever the number of contacts: every contact in
    /// `contacts` exists and belongs to the account (INVALID_ARGUMENT naming
    /// each field otherwise; also a person no longer at the company who is
    /// not already where they are named), and, for `kind` RENEWAL or
    /// UPGRADE, the account is a customer now (FAILED_PRECONDITION
    /// NOT_A_CUSTOMER naming its stage). The account must exist (NOT_FOUND).
    /// Lifecycle unreachable is UNAVAILABLE, never bad input.
    async fn check_with_lifecycle(
        &self,
        context: &RequestContext,
        account_id: &str,
        contacts: &[NamedContact],
        kind: OpportunityKind,
    ) -> ServiceResult<()> {
        let budget = context.call_budget(CALL_DEADLINE);
        if !contacts.is_empty() {
            self.check_contacts(context, budget, account_id, contacts)
                .await?;
        }
        if contacts.is_empty() || kind.needs_customer() {
            let stage = self
                .account_stage(context, budget, account_id, lifecycle_failure)
                .await?;
            domain::check_kind(kind, stage).map_err(|r| {
                ServiceError::precondition(
                    "NOT_A_CUSTOMER",
                    format!("account/{account_id}"),
                    r.message,
                )
            })?;
        }
        Ok(())
    }

    /// The account's stage (`None`: one this version does not know);
    /// NOT_FOUND when the tenant has no such account. `failure` says what a
    /// lifecycle that could not answer means for the caller.
    async fn account_stage(
        &self,
        context: &RequestContext,
        budget: Duration,
        account_id: &str,
        failure: fn(&Status) -> ServiceError,
    ) -> ServiceResult<Option<AccountStage>> {
        let mut client = self.lifecycle.clone();
        let call = client.get_account(outgoing_for(
            context,
            lifecycle::GetAccountRequest {
                account_id: account_id.to_owned(),
            },
        ));
        match with_deadline(budget, call).await {
            Ok(response) => Ok(response
                .into_inner()
                .account
                .and_then(|a| AccountStage::from_proto(a.stage))),
            Err(status) if status.code() == Code::NotFound => {
                Err(ServiceError::not_found("account", account_id))
            }
            Err(status) => Err(failure(&status)),
        }
    }

    async fn check_contacts(
        &self,
        context: &RequestContext,
        budget: Duration,
        account_id: &str,
        contacts: &[NamedContact],
    ) -> ServiceResult<()> {
        let mut client = self.lifecycle.clone();
        let references = contacts
            .iter()
            .map(|c| lifecycle::ContactReference {
                account_id: account_id.to_owned(),
                contact_id: c.contact_id.clone(),
                email: String::new(),
            })
            .collect();
        let call = client.batch_resolve_contacts(outgoing_for(
            context,
            lifecycle::BatchResolveContactsRequest { references },
        ));
        let resolutions = match with_deadline(budget, call).await {
            Ok(response) => response.into_inner().resolutions,
            Err(status) => return Err(lifecycle_failure(&status)),
        };
        if resolutions.len() != contacts.len() {
            return Err(ServiceError::Unavailable(format!(
                "lifecycle answered {} resolutions for {} contacts; nothing was written; retry",
                resolutions.len(),
                contacts.len()
            )));
        }
        let mut v = Validator::new();
        for (named, resolution) in contacts.iter().zip(resolutions) {
            use lifecycle::ResolutionStatus as R;
            let (field, contact_id) = (named.field.as_str(), &named.contact_id);
            match R::try_from(resolution.status) {
                // Someone who has left stays where they were named, but
                // joins no buying group or stakeholders.
                Ok(R::Resolved) if resolution.contact_inactive && !named.present => v.add(
                    field,
                    format!("contact {contact_id} is no longer at the company (DeactivateContact)"),
                ),
                Ok(R::Resolved) => {}
                Ok(R::NotFound) if resolution.field == "account_id" => {
                    return Err(ServiceError::not_found("account", account_id));
                }
                Ok(R::Mismatch) => v.add(
                    field,
                    format!("contact {contact_id} belongs to another account than {account_id}"),
                ),
                _ => v.add(field, format!("contact {contact_id} does not exist")),
            }
        }
        v.finish()
    }

    /// Locks the opportunity, lets the process rules decide, saves, and
    /// answers with the saved opportunity.
    async fn act(
        &self,
        context: &RequestContext,
        id: &str,
        action: Action,
    ) -> ServiceResult<pb::Opportunity> {
        let locked = self.repository.lock(&context.tenant, id).await?;
        let decision = domain::decide(
            &locked.opportunity,
            action,
            &locked.settings,
            time::now().timestamp_millis(),
        )
        .map_err(|r| refusal(id, r))?;
        if decision.unchanged {
            let settings = locked.release().await?;
            return Ok(to_proto(decision.opportunity, &settings));
        }
        let (saved, settings) = locked.save(decision, context.named_actor()).await?;
        Ok(to_proto(saved, &settings))
    }

    async fn respond(
        &self,
        context: &RequestContext,
        o: Opportunity,
    ) -> ServiceResult<pb::Opportunity> {
        let settings = self.repository.settings(&context.tenant, None).await?;
        Ok(to_proto(o, &settings))
    }
}

#[tonic::async_trait]
impl OpportunityService for OpportunityApi {
    async fn create_opportunity(
        &self,
        request: Request<pb::CreateOpportunityRequest>,
    ) -> Result<Response<pb::CreateOpportunityResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let input = request.opportunity.unwrap_or_default();
        let mut v = Validator::new();
        let account_id = id_of(&mut v, "opportunity.account_id", &input.account_id);
        let request_id = v.request_id("request_id", &request.request_id);
        let now = time::now().timestamp_millis();
        let mut o = Opportunity::opened(ids::new_id(), account_id.clone(), now);
        for path in WRITABLE {
            apply_field(&mut o, &input, path, "opportunity", &mut v);
        }
        if input.contract.is_none() {
            o.contract = None;
        }
        derive_amount(&mut o, (input.amount.is_some(), true), None, &mut v);
        v.finish()?;
        // What the request asks, as the service keeps it (ids canonical,
        // text trimmed, defaults filled in): a retry that differs only in
        // how it wrote the same values is the same request.
        // A signature time is left out: the server fills it in when the
        // caller gives none, differently on every retry. A given one is
        // compared with the record's below.
        let mut asked = written(o.clone());
        if let Some(contract) = asked.contract.as_mut() {
            contract.sign_time = None;
        }
        let key = RequestKey::of(request_id, &asked);
        let given_sign_time = o
            .contract
            .as_ref()
            .and_then(|c| c.sign_time_ms)
            .filter(|_| {
                input
                    .contract
                    .as_ref()
                    .is_some_and(|c| c.sign_time.is_some())
            });
        let same_signature = |record: &Opportunity| {
            given_sign_time.is_none()
                || record.contract.as_ref().and_then(|c| c.sign_time_ms) == given_sign_time
        };
        if let Some(key) = &key
            && let Some(existing) = self.repository.by_request(&context.tenant, key).await?
        {
            if !same_signature(&existing) {
                return Err(reuse_refusal("opportunity").into());
            }
            return Ok(Response::new(pb::CreateOpportunityResponse {
                opportunity: Some(self.respond(&context, existing).await?),
            }));
        }
        let contacts = named_contacts(&input, |_| true, None);
        self.check_with_lifecycle(&context, &account_id, &contacts, o.kind)
            .await?;
        let created = self
            .repository
            .create(&context.tenant, o, key, context.named_actor())
            .await?;
        // A racing create under the same id may have made the record.
        if !same_signature(&created) {
            return Err(reuse_refusal("opportunity").into());
        }
        Ok(Response::new(pb::CreateOpportunityResponse {
            opportunity: Some(self.respond(&context, created).await?),
        }))
    }

    async fn get_opportunity(
        &self,
        request: Request<pb::GetOpportunityRequest>,
    ) -> Result<Response<pb::GetOpportunityResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let mut v = Validator::new();
        let id = id_of(&mut v, "opportunity_id", &request.get_ref().opportunity_id);
        v.finish()?;
        let o = self.repository.get(&context.tenant, &id).await?;
        Ok(Response::new(pb::GetOpportunityResponse {
            opportunity: Some(self.respond(&context, o).await?),
        }))
    }

    async fn list_opportunities(
        &self,
        request: Request<pb::ListOpportunitiesRequest>,
    ) -> Result<Response<pb::ListOpportunitiesResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let page = PageRequest::of(&context.tenant, &request)?;
        let mut v = Validator::new();
        let account_id = (!request.account_id.trim().is_empty())
            .then(|| id_of(&mut v, "account_id", &request.account_id));
        v.filter_not_blank("account_id", &request.account_id);
        v.filter_not_blank("owner_id", &request.owner_id);
        let owner_id = v.optional_text("owner_id", &request.owner_id, MAX_NAME);
        let step = match request.step {
            0 => None,
            n => Step::from_proto(n).or_else(|| {
                v.add("step", format!("unknown value {n}"));
                None
            }),
        };
        let status = match request.status {
            0 => None,
            n => OppStatus::from_proto(n).or_else(|| {
                v.add("status", format!("unknown value {n}"));
                None
            }),
        };
        let kind = match request.kind {
            0 => None,
            n => OpportunityKind::from_proto(n).or_else(|| {
                v.add("kind", format!("unknown value {n}"));
                None
            }),
        };
        v.finish()?;
        let filter = Filter {
            account_id,
            owner_id,
            step,
            status,
            kind,
        };
        let (items, next_page_token) = self
            .repository
            .list(&context.tenant, &filter, &page)
            .await?;
        // Nothing for an account: is there such an account? A mistyped or
        // another tenant's id is NOT_FOUND (lifecycle knows the accounts),
        // not an empty list a caller reads as "no deals". On any empty page:
        // a page token is not a secret, so it must not skip the check (an
        // empty page after a token is rare: tokens are given only when more
        // rows follow).
        if items.is_empty()
            && let Some(account_id) = &filter.account_id
        {
            let budget = context.call_budget(CALL_DEADLINE);
            self.account_stage(&context, budget, account_id, |status| {
                cascade_chassis::client::peer_failure(
                    "lifecycle",
                    "check the listing's account",
                    "nothing was listed",
                    status,
                )
            })
            .await?;
        }
        let settings = self.repository.settings(&context.tenant, None).await?;
        Ok(Response::new(pb::ListOpportunitiesResponse {
            opportunities: items.into_iter().map(|o| to_proto(o, &settings)).collect(),
            next_page_token,
        }))
    }

    async fn update_opportunity(
        &self,
        request: Request<pb::UpdateOpportunityRequest>,
    ) -> Result<Response<pb::UpdateOpportunityResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let input = request.opportunity.unwrap_or_default();
        let mut v = Validator::new();
        let id = id_of(&mut v, "opportunity.opportunity_id", &input.opportunity_id);
        let paths = v.mask_paths(request.update_mask.as_ref());
        v.finish()?;
        let writes = |field: &str| paths.iter().any(|(_, p)| p == field);
        if writes("buying_group_contact_ids") || writes("stakeholders") || writes("kind") {
            // Checked against the opportunity's account before the write (a
            // contact moving accounts in between is not caught: lifecycle
            // moves only contacts of the event's account anyway). The input
            // is validated first, so a malformed id is not sent to lifecycle.
            let current = self.repository.get(&context.tenant, &id).await?;
            // A closed deal is refused as such, before lifecycle is asked
            // about contacts it would never take (or while it is down).
            domain::check_changeable(&current).map_err(|r| refusal(&id, r))?;
            let mut scratch = current.clone();
            let mut v = Validator::new();
            for (i, path) in &paths {
                apply_field(&mut scratch, &input, path, &mask_path(*i), &mut v);
            }
            v.finish()?;
            let contacts = named_contacts(&input, writes, Some(&current));
            // A kind is checked when it changes: a renewal opened while the
            // account was a customer stays one.
            let kind = if scratch.kind != current.kind {
                scratch.kind
            } else {
                OpportunityKind::NewBusiness
            };
            if !contacts.is_empty() || kind.needs_customer() {
                self.check_with_lifecycle(&context, &current.account_id, &contacts, kind)
                    .await?;
            }
        }
        let locked = self.repository.lock(&context.tenant, &id).await?;
        domain::check_changeable(&locked.opportunity).map_err(|r| refusal(&id, r))?;
        let mut edited = locked.opportunity.clone();
        let mut v = Validator::new();
        for (i, path) in &paths {
            apply_field(&mut edited, &input, path, &mask_path(*i), &mut v);
        }
        // The estimate alone is an early guess: writing it does not hold an
        // old deal's items to its currency.
        let money_written = ["amount", "line_items", "amount_from_line_items"]
            .into_iter()
            .any(&writes);
        derive_amount(
            &mut edited,
            (writes("amount"), money_written),
            locked.opportunity.amount,
            &mut v,
        );
        v.finish()?;
        let decision = domain::decide(
            &locked.opportunity,
            Action::Edit(Box::new(edited)),
            &locked.settings,
            time::now().timestamp_millis(),
        )
        .map_err(|r| refusal(&id, r))?;
        if decision.unchanged {
            let settings = locked.release().await?;
            return Ok(Response::new(pb::UpdateOpportunityResponse {
                opportunity: Some(to_proto(decision.opportunity, &settings)),
            }));
        }
        let (updated, settings) = locked.save(decision, context.named_actor()).await?;
        Ok(Response::new(pb::UpdateOpportunityResponse {
            opportunity: Some(to_proto(updated, &settings)),
        }))
    }

    async fn advance_opportunity(
        &self,
        request: Request<pb::AdvanceOpportunityRequest>,
    ) -> Result<Response<pb::AdvanceOpportunityResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let mut v = Validator::new();
        let id = id_of(&mut v, "opportunity_id", &request.opportunity_id);
        let to = match request.to_step {
            0 => None,
            n => Step::from_proto(n).or_else(|| {
                v.add("to_step", format!("unknown value {n}"));
                None
            }),
        };
        v.finish()?;
        let updated = self.act(&context, &id, Action::Advance { to }).await?;
        Ok(Response::new(pb::AdvanceOpportunityResponse {
            opportunity: Some(updated),
        }))
    }

    async fn close_opportunity_won(
        &self,
        request: Request<pb::CloseOpportunityWonRequest>,
    ) -> Result<Response<pb::CloseOpportunityWonResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let mut v = Validator::new();
        let id = id_of(&mut v, "opportunity_id", &request.get_ref().opportunity_id);
        v.finish()?;
        let updated = self.act(&context, &id, Action::Win).await?;
        Ok(Response::new(pb::CloseOpportunityWonResponse {
            opportunity: Some(updated),
        }))
    }

    async fn close_opportunity_lost(
        &self,
        request: Request<pb::CloseOpportunityLostRequest>,
    ) -> Result<Response<pb::CloseOpportunityLostResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let mut v = Validator::new();
        let id = id_of(&mut v, "opportunity_id", &request.opportunity_id);
        let reason = v.required_prose("reason", &request.reason, 1000);
        v.finish()?;
        let updated = self.act(&context, &id, Action::Lose { reason }).await?;
        Ok(Response::new(pb::CloseOpportunityLostResponse {
            opportunity: Some(updated),
        }))
    }

    async fn get_pipeline_report(
        &self,
        request: Request<pb::GetPipelineReportRequest>,
    ) -> Result<Response<pb::GetPipelineReportResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let mut v = Validator::new();
        let (start, end) = v.window(request.start_time.as_ref(), request.end_time.as_ref());
        v.finish()?;
        let settings = self.repository.settings(&context.tenant, None).await?;
        let report = self
            .repository
            .pipeline(&context.tenant, start, end)
            .await?;
        let pipeline = tenant_currency_figures(&settings, &report.total)?;
        let other_currencies = report
            .total
            .by_currency
            .iter()
            .filter(|(c, _)| **c != settings.currency && c.len() == 3)
            .map(|(c, s)| currency_figures(&settings, c, s))
            .collect::<ServiceResult<_>>()?;
        let none = crate::storage::Pipeline::default();
        let by_kind = OpportunityKind::ALL
            .iter()
            .map(|kind| {
                let figures = report.by_kind.get(kind).unwrap_or(&none);
                Ok(pb::KindPipeline {
                    kind: kind.to_proto(),
                    counts: Some(counts(&settings, figures)),
                    pipeline: Some(tenant_currency_figures(&settings, figures)?),
                })
            })
            .collect::<ServiceResult<_>>()?;
        Ok(Response::new(pb::GetPipelineReportResponse {
            pipeline: Some(pipeline),
            other_currencies,
            counts: Some(counts(&settings, &report.total)),
            by_kind,
        }))
    }

    async fn get_opportunity_settings(
        &self,
        request: Request<pb::GetOpportunitySettingsRequest>,
    ) -> Result<Response<pb::GetOpportunitySettingsResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let version = request.get_ref().version;
        if version < 0 {
            return Err(ServiceError::invalid("version", "must not be negative").into());
        }
        let settings = self
            .repository
            .settings(&context.tenant, (version > 0).then_some(version))
            .await?;
        Ok(Response::new(pb::GetOpportunitySettingsResponse {
            settings: Some(settings_to_proto(&settings)),
        }))
    }

    async fn update_opportunity_settings(
        &self,
        request: Request<pb::UpdateOpportunitySettingsRequest>,
    ) -> Result<Response<pb::UpdateOpportunitySettingsResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let input = request.settings.unwrap_or_default();
        let mut v = Validator::new();
        let paths = v.mask_paths(request.update_mask.as_ref());
        let mut threshold = None;
        let mut display = None;
        let mut probabilities = Vec::new();
        let mut currency = None;
        for (i, path) in &paths {
            match path.as_str() {
                "large_deal_threshold" => {
                    threshold = money(
                        &mut v,
                        "settings.large_deal_threshold",
                        input.large_deal_threshold.as_ref(),
                    );
                    if input.large_deal_threshold.is_none() {
                        v.add("settings.large_deal_threshold", "is required");
                    }
                }
                "discover_step_display_name" => {
                    display = Some(v.required_text(
                        "settings.discover_step_display_name",
                        &input.discover_step_display_name,
                        40,
                    ));
                }
                "step_probabilities" => {
                    if input.step_probabilities.is_empty() {
                        v.add(
                            "settings.step_probabilities",
                            "name at least one step (leave the path out of the mask to keep them)",
                        );
                    }
                    let mut named = Vec::new();
                    for (i, p) in input.step_probabilities.iter().enumerate() {
                        let step = Step::from_proto(p.step);
                        match step {
                            // The same step twice: which percent was meant?
                            Some(step) if named.contains(&step) => v.add(
                                format!("settings.step_probabilities[{i}].step"),
                                format!("names {} again", step.as_str()),
                            ),
                            Some(step) if (0..=100).contains(&p.percent) => {
                                probabilities.push((step, p.percent))
                            }
                            Some(_) => v.add(
                                format!("settings.step_probabilities[{i}].percent"),
                                "must be between 0 and 100",
                            ),
                            None => v.add(
                                format!("settings.step_probabilities[{i}].step"),
                                "must be a step",
                            ),
                        }
                        named.extend(step);
                    }
                }
                "currency_code" => {
                    let code = input.currency_code.trim();
                    match cascade_domain::currency_code_problem(code) {
                        None => currency = Some(code.to_owned()),
                        Some(problem) => v.add("settings.currency_code", problem),
                    }
                }
                other => v.add(
                    mask_path(*i),
                    not_writable(
                        other,
                        &[
                            "large_deal_threshold",
                            "discover_step_display_name",
                            "step_probabilities",
                            "currency_code",
                        ],
                    ),
                ),
            }
        }
        v.finish()?;
        let mut next = self.repository.settings(&context.tenant, None).await?;
        if let Some(t) = threshold {
            next.large_deal_threshold = t;
        }
        if let Some(d) = display {
            next.discover_display_name = d;
        }
        for (step, percent) in probabilities {
            let index = Step::ALL.iter().position(|x| *x == step).unwrap_or(0);
            next.probabilities[index] = percent;
        }
        if let Some(c) = currency {
            next.currency = c;
        }
        let stored = self
            .repository
            .store_settings(&context.tenant, &context.actor, next)
            .await?;
        Ok(Response::new(pb::UpdateOpportunitySettingsResponse {
            settings: Some(settings_to_proto(&stored)),
        }))
    }
}
