//! gRPC handlers of the opportunity service: validate and translate, check
//! the account with lifecycle, apply the step rules through the repository.

use cascade_proto::common::v1 as common;
use cascade_proto::lifecycle::v1 as lifecycle;
use cascade_proto::opportunity::v1 as pb;
use cascade_proto::opportunity::v1::opportunity_service_server::OpportunityService;
use cascade_shared::client::{CALL_DEADLINE, LifecycleClient, outgoing_for, with_deadline};
use cascade_shared::domain::Money;
use cascade_shared::page::PageRequest;
use cascade_shared::time::to_timestamp;
use cascade_shared::validate::{Validator, mask_path, not_writable};
use cascade_shared::{
    PreconditionViolation, RequestContext, ServiceError, ServiceResult, ids, time,
};
use tonic::{Code, Request, Response, Status};

use crate::domain::{
    self, Competitor, Contract, Date, LineItem, Opportunity, Refusal, Settings, Stakeholder,
    Status as OppStatus, Step,
};
use crate::storage::{EventKind, Filter, Repository};

const MAX_NAME: usize = 200;
const MAX_TEXT: usize = 10_000;
const MAX_LIST: usize = 100;
const MAX_LINE_ITEMS: usize = 200;

/// Fields a caller may write, on create and through the update mask.
const WRITABLE: [&str; 14] = [
    "name",
    "owner_id",
    "estimated_deal_size",
    "amount",
    "amount_from_line_items",
    "close_date",
    "current_situation",
    "needs",
    "buying_group_contact_ids",
    "stakeholders",
    "competitors",
    "line_items",
    "new_reality",
    "contract",
];

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

fn money(v: &mut Validator, field: &str, value: Option<&common::Money>) -> Option<Money> {
    let value = value?;
    match Money::from_proto(value) {
        Ok(m) if m.nanos < 0 => {
            v.add(field, "must not be negative");
            None
        }
        Ok(m) => Some(m),
        Err(problem) => {
            v.add(field, problem);
            None
        }
    }
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

/// Writes one field of `input` onto `o`.
/// `at` is the violation's field for a path that cannot be written (its
/// place in the update mask).
fn apply_field(
    o: &mut Opportunity,
    input: &pb::Opportunity,
    path: &str,
    at: &str,
    v: &mut Validator,
) {
    let f = |name: &str| format!("opportunity.{name}");
    match path {
        "name" => o.name = v.required_text(&f("name"), &input.name, MAX_NAME),
        "owner_id" => o.owner_id = v.optional_text(&f("owner_id"), &input.owner_id, MAX_NAME).unwrap_or_default(),
        "estimated_deal_size" => o.estimated_deal_size = money(v, &f("estimated_deal_size"), input.estimated_deal_size.as_ref()),
        "amount" => o.amount = money(v, &f("amount"), input.amount.as_ref()),
        "amount_from_line_items" => o.amount_from_line_items = input.amount_from_line_items,
        "close_date" => {
            o.close_date = input.close_date.as_ref().and_then(|d| {
                let valid = u32::try_from(d.month).ok().zip(u32::try_from(d.day).ok()).and_then(|(m, day)| {
                    chrono::NaiveDate::from_ymd_opt(d.year, m, day).filter(|_| (1..=9999).contains(&d.year))
                });
                match valid {
                    Some(_) => Some(Date { year: d.year, month: d.month as u32, day: d.day as u32 }),
                    None => {
                        v.add(f("close_date"), "must be a valid calendar date");
                        None
                    }
                }
            });
        }
        "current_situation" => {
            o.current_situation = v.optional_text(&f("current_situation"), &input.current_situation, MAX_TEXT).unwrap_or_default();
        }
        "needs" => o.needs = v.optional_text(&f("needs"), &input.needs, MAX_TEXT).unwrap_or_default(),
        "new_reality" => o.new_reality = v.optional_text(&f("new_reality"), &input.new_reality, MAX_TEXT).unwrap_or_default(),
        "buying_group_contact_ids" => {
            if input.buying_group_contact_ids.len() > MAX_LIST {
                v.add(f("buying_group_contact_ids"), format!("at most {MAX_LIST}"));
            }
            let mut ids: Vec<String> = input
                .buying_group_contact_ids
                .iter()
                .enumerate()
                .map(|(i, id)| v.required_id(&format!("opportunity.buying_group_contact_ids[{i}]"), id))
                .collect();
            ids.dedup();
            o.buying_group = ids;
        }
        "stakeholders" => {
            if input.stakeholders.len() > MAX_LIST {
                v.add(f("stakeholders"), format!("at most {MAX_LIST}"));
            }
            o.stakeholders = input
                .stakeholders
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let field = |n: &str| format!("opportunity.stakeholders[{i}].{n}");
                    let contact_id = (!s.contact_id.trim().is_empty()).then(|| v.required_id(&field("contact_id"), &s.contact_id));
                    let name = v.optional_text(&field("name"), &s.name, MAX_NAME).unwrap_or_default();
                    if contact_id.is_none() && name.is_empty() {
                        v.add(field("name"), "is required when there is no contact_id");
                    }
                    if pb::StakeholderRole::try_from(s.role).map_or(true, |r| r == pb::StakeholderRole::Unspecified) {
                        v.add(field("role"), "is required: DECISION_MAKER, CHAMPION, INFLUENCER, LEGAL, PROCUREMENT, SECURITY, IT or OTHER");
                    }
                    Stakeholder { contact_id, name, role: s.role }
                })
                .collect();
        }
        "competitors" => {
            if input.competitors.len() > MAX_LIST {
                v.add(f("competitors"), format!("at most {MAX_LIST}"));
            }
            o.competitors = input
                .competitors
                .iter()
                .enumerate()
                .map(|(i, c)| Competitor {
                    name: v.required_text(&format!("opportunity.competitors[{i}].name"), &c.name, MAX_NAME),
                    notes: v.optional_text(&format!("opportunity.competitors[{i}].notes"), &c.notes, 2000).unwrap_or_default(),
                })
                .collect();
        }
        "line_items" => {
            if input.line_items.len() > MAX_LINE_ITEMS {
                v.add(f("line_items"), format!("at most {MAX_LINE_ITEMS}"));
            }
            o.line_items = input
                .line_items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let field = |n: &str| format!("opportunity.line_items[{i}].{n}");
                    let product = v.required_text(&field("product"), &item.product, MAX_NAME);
                    if !(1..=1_000_000_000).contains(&item.quantity) {
                        v.add(field("quantity"), "must be between 1 and 1,000,000,000");
                    }
                    let kind = match pb::LineItemKind::try_from(item.kind) {
                        Ok(pb::LineItemKind::Unspecified) => pb::LineItemKind::Product as i32,
                        Ok(k) => k as i32,
                        Err(_) => {
                            v.add(field("kind"), "must be PRODUCT or SERVICE");
                            0
                        }
                    };
                    let price = money(v, &field("unit_price"), item.unit_price.as_ref());
                    if item.unit_price.is_none() {
                        v.add(field("unit_price"), "is required");
                    }
                    LineItem {
                        product,
                        kind,
                        quantity: item.quantity,
                        currency: price.map(|p| p.currency_code().to_owned()).unwrap_or_default(),
                        unit_price_nanos: price.map_or(0, |p| p.nanos),
                    }
                })
                .collect();
        }
        "contract" | "contract.document_ref" | "contract.signed" | "contract.sign_time" => {
            let given = input.contract.clone().unwrap_or_default();
            let mut contract = o.contract.clone().unwrap_or(Contract { document_ref: String::new(), signed: false, sign_time_ms: None });
            if matches!(path, "contract" | "contract.document_ref") {
                contract.document_ref = v.optional_text("opportunity.contract.document_ref", &given.document_ref, 2000).unwrap_or_default();
            }
            if matches!(path, "contract" | "contract.signed" | "contract.sign_time") {
                let sign_time = given.sign_time.as_ref().and_then(|t| v.required_time("opportunity.contract.sign_time", Some(t)));
                if path != "contract.sign_time" {
                    // A person marks it signed; nothing detects a signature.
                    contract.signed = given.signed;
                }
                contract.sign_time_ms = if contract.signed {
                    sign_time.map(|t| t.timestamp_millis()).or(contract.sign_time_ms).or(Some(time::now().timestamp_millis()))
                } else {
                    None
                };
            }
            o.contract = Some(contract);
        }
        "step" | "status" | "lost_reason" | "step_entries" | "progress" | "account_id" | "opportunity_id" => v.add(
            at,
            format!("{path} is not writable: steps move through AdvanceOpportunity, status through CloseOpportunityWon / Lost"),
        ),
        other => v.add(at, not_writable(other, &WRITABLE)),
    }
}

/// The amount follows the line items when asked to.
fn derive_amount(o: &mut Opportunity, v: &mut Validator) {
    if !o.amount_from_line_items {
        return;
    }
    match domain::line_items_total(&o.line_items) {
        Ok(total) => o.amount = total,
        Err(problem) => v.add("opportunity.line_items", problem),
    }
}

/// One currency's part of the pipeline report. A sum beyond what Money
/// carries is OUT_OF_RANGE, never a wrong figure.
fn currency_figures(
    settings: &Settings,
    currency: &str,
    sums: &crate::storage::CurrencySums,
) -> ServiceResult<pb::CurrencyPipeline> {
    let code: [u8; 3] = currency.as_bytes().try_into().map_err(|_| {
        ServiceError::internal(anyhow::anyhow!(
            "stored currency {currency:?} is not a code"
        ))
    })?;
    let amount = |what: &str, nanos: i128| {
        Money::sum_to_proto(code, nanos).map(Some).ok_or_else(|| {
            ServiceError::OutOfRange(format!(
                "the {what} in {currency} is beyond 9.2 * 10^18 units and cannot be reported"
            ))
        })
    };
    let mut steps = Vec::with_capacity(Step::ALL.len());
    for step in Step::ALL {
        let (count, total) = sums.open.get(step).copied().unwrap_or((0, 0));
        steps.push(pb::StepPipeline {
            step: step.to_proto(),
            display_name: settings.display_name(*step),
            open_count: count,
            total_amount: amount("open pipeline", total)?,
            weighted_amount: amount(
                "weighted pipeline",
                total * i128::from(settings.probability(*step)) / 100,
            )?,
        });
    }
    Ok(pb::CurrencyPipeline {
        currency_code: currency.to_owned(),
        steps,
        won_count: sums.won.0,
        won_amount: amount("won amount", sums.won.1)?,
        lost_count: sums.lost.0,
        lost_amount: amount("lost amount", sums.lost.1)?,
    })
}

fn money_to_proto(m: Option<Money>) -> Option<common::Money> {
    m.map(Money::to_proto)
}

fn to_proto(o: Opportunity, settings: &Settings) -> pb::Opportunity {
    let progress = Step::ALL
        .iter()
        .map(|step| {
            let p = domain::step_progress(&o, settings, *step);
            pb::StepProgress {
                step: step.to_proto(),
                display_name: settings.display_name(*step),
                complete: p.complete(),
                sections: p
                    .sections
                    .iter()
                    .map(|s| pb::SectionProgress {
                        section: s.section.to_owned(),
                        complete: s.complete(),
                        missing_fields: s.missing.iter().map(|m| (*m).to_owned()).collect(),
                    })
                    .collect(),
            }
        })
        .collect();
    let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(to_timestamp);
    pb::Opportunity {
        opportunity_id: o.opportunity_id,
        account_id: o.account_id,
        name: o.name,
        owner_id: o.owner_id,
        step: o.step.to_proto(),
        status: o.status.to_proto(),
        estimated_deal_size: money_to_proto(o.estimated_deal_size),
        amount: money_to_proto(o.amount),
        amount_from_line_items: o.amount_from_line_items,
        close_date: o.close_date.map(|d| common::Date {
            year: d.year,
            month: d.month as i32,
            day: d.day as i32,
        }),
        current_situation: o.current_situation,
        needs: o.needs,
        buying_group_contact_ids: o.buying_group,
        stakeholders: o
            .stakeholders
            .into_iter()
            .map(|s| pb::Stakeholder {
                contact_id: s.contact_id.unwrap_or_default(),
                name: s.name,
                role: s.role,
            })
            .collect(),
        competitors: o
            .competitors
            .into_iter()
            .map(|c| pb::Competitor {
                name: c.name,
                notes: c.notes,
            })
            .collect(),
        line_items: o
            .line_items
            .into_iter()
            .map(|i| pb::LineItem {
                product: i.product,
                kind: i.kind,
                quantity: i.quantity,
                unit_price: Money::from_proto(&common::Money {
                    currency_code: i.currency.clone(),
                    units: i64::try_from(i.unit_price_nanos.div_euclid(1_000_000_000)).unwrap_or(0),
                    nanos: i.unit_price_nanos.rem_euclid(1_000_000_000) as i32,
                })
                .ok()
                .map(Money::to_proto),
            })
            .collect(),
        new_reality: o.new_reality,
        contract: o.contract.map(|c| pb::Contract {
            document_ref: c.document_ref,
            signed: c.signed,
            sign_time: c.sign_time_ms.and_then(at),
        }),
        lost_reason: o.lost_reason,
        step_entries: o
            .step_entries
            .into_iter()
            .map(|(step, ms)| pb::StepEntry {
                step: step.to_proto(),
                enter_time: at(ms),
            })
            .collect(),
        progress,
        create_time: at(o.created_at_ms),
        update_time: at(o.updated_at_ms),
        close_time: o.closed_at_ms.and_then(at),
    }
}

fn settings_to_proto(s: &Settings) -> pb::OpportunitySettings {
    pb::OpportunitySettings {
        version: s.version,
        large_deal_threshold: Some(s.large_deal_threshold.to_proto()),
        discover_step_display_name: s.discover_display_name.clone(),
        step_probabilities: Step::ALL
            .iter()
            .map(|step| pb::StepProbability {
                step: step.to_proto(),
                percent: s.probability(*step),
            })
            .collect(),
        currency_code: s.currency.clone(),
        update_time: s
            .updated_at_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(to_timestamp),
        updated_by: s.updated_by.clone().unwrap_or_default(),
    }
}

fn id_of(v: &mut Validator, field: &str, value: &str) -> String {
    v.required_id(field, value)
}

/// The contact ids `input` names in the fields `written` selects, each with
/// its exact field path: the buying group and the stakeholders' contacts.
fn named_contacts(
    input: &pb::Opportunity,
    written: impl Fn(&str) -> bool,
) -> Vec<(String, String)> {
    let mut named = Vec::new();
    if written("buying_group_contact_ids") {
        for (i, id) in input.buying_group_contact_ids.iter().enumerate() {
            named.push((
                format!("opportunity.buying_group_contact_ids[{i}]"),
                id.trim().to_owned(),
            ));
        }
    }
    if written("stakeholders") {
        for (i, s) in input.stakeholders.iter().enumerate() {
            if !s.contact_id.trim().is_empty() {
                named.push((
                    format!("opportunity.stakeholders[{i}].contact_id"),
                    s.contact_id.trim().to_owned(),
                ));
            }
        }
    }
    named
}

impl OpportunityApi {
    /// The account exists in the caller's tenant, and every contact in
    /// `contacts` (field path, contact id) exists and belongs to it: one call
    /// to lifecycle whatever their number. Unknown or foreign contacts are
    /// INVALID_ARGUMENT naming each field; lifecycle unreachable is
    /// UNAVAILABLE, never bad input.
    async fn check_people(
        &self,
        context: &RequestContext,
        account_id: &str,
        contacts: &[(String, String)],
    ) -> ServiceResult<()> {
        let mut client = self.lifecycle.clone();
        let budget = context.call_budget(CALL_DEADLINE);
        let failure = |status: &Status| {
            cascade_shared::client::peer_failure(
                "lifecycle",
                "check the opportunity's account and contacts",
                "nothing was written",
                status,
            )
        };
        if contacts.is_empty() {
            let call = client.get_account(outgoing_for(
                context,
                lifecycle::GetAccountRequest {
                    account_id: account_id.to_owned(),
                },
            ));
            return match with_deadline(budget, call).await {
                Ok(_) => Ok(()),
                Err(status) if status.code() == Code::NotFound => {
                    Err(ServiceError::not_found("account", account_id))
                }
                Err(status) => Err(failure(&status)),
            };
        }
        let references = contacts
            .iter()
            .map(|(_, contact_id)| lifecycle::ContactReference {
                account_id: account_id.to_owned(),
                contact_id: contact_id.clone(),
                email: String::new(),
            })
            .collect();
        let call = client.batch_resolve_contacts(outgoing_for(
            context,
            lifecycle::BatchResolveContactsRequest { references },
        ));
        let resolutions = match with_deadline(budget, call).await {
            Ok(response) => response.into_inner().resolutions,
            Err(status) => return Err(failure(&status)),
        };
        if resolutions.len() != contacts.len() {
            return Err(ServiceError::Unavailable(format!(
                "lifecycle answered {} resolutions for {} contacts; nothing was written; retry",
                resolutions.len(),
                contacts.len()
            )));
        }
        let mut v = Validator::new();
        for ((field, contact_id), resolution) in contacts.iter().zip(resolutions) {
            use lifecycle::ResolutionStatus as R;
            match R::try_from(resolution.status) {
                Ok(R::Resolved) => {}
                Ok(R::NotFound) if resolution.field == "account_id" => {
                    return Err(ServiceError::not_found("account", account_id));
                }
                Ok(R::Mismatch) => v.add(
                    field.as_str(),
                    format!("contact {contact_id} belongs to another account than {account_id}"),
                ),
                _ => v.add(
                    field.as_str(),
                    format!("contact {contact_id} does not exist"),
                ),
            }
        }
        v.finish()
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
        let mut o = Opportunity {
            opportunity_id: ids::new_id(),
            account_id: account_id.clone(),
            name: String::new(),
            owner_id: String::new(),
            step: Step::Discover,
            status: OppStatus::Open,
            estimated_deal_size: None,
            amount: None,
            amount_from_line_items: false,
            close_date: None,
            current_situation: String::new(),
            needs: String::new(),
            buying_group: Vec::new(),
            stakeholders: Vec::new(),
            competitors: Vec::new(),
            line_items: Vec::new(),
            new_reality: String::new(),
            contract: None,
            lost_reason: String::new(),
            step_entries: vec![(Step::Discover, now)],
            created_at_ms: now,
            updated_at_ms: now,
            closed_at_ms: None,
        };
        for path in WRITABLE {
            apply_field(&mut o, &input, path, "opportunity", &mut v);
        }
        if input.contract.is_none() {
            o.contract = None;
        }
        derive_amount(&mut o, &mut v);
        v.finish()?;
        if let Some(request_id) = &request_id
            && let Some(existing) = self
                .repository
                .by_request(&context.tenant, request_id)
                .await?
        {
            return Ok(Response::new(pb::CreateOpportunityResponse {
                opportunity: Some(self.respond(&context, existing).await?),
            }));
        }
        self.check_people(&context, &account_id, &named_contacts(&input, |_| true))
            .await?;
        let created = self
            .repository
            .create(&context.tenant, o, request_id)
            .await?;
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
        let page = PageRequest::parse(request.page_size, &request.page_token)?;
        let mut v = Validator::new();
        let account_id = (!request.account_id.trim().is_empty())
            .then(|| id_of(&mut v, "account_id", &request.account_id));
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
        v.finish()?;
        let filter = Filter {
            account_id,
            owner_id,
            step,
            status,
        };
        let (items, next_page_token) = self
            .repository
            .list(&context.tenant, &filter, &page)
            .await?;
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
        let contacts = named_contacts(&input, |field| paths.iter().any(|(_, p)| p == field));
        if !contacts.is_empty() {
            // Checked against the opportunity's account before the write (a
            // contact moving accounts in between is not caught: lifecycle
            // moves only contacts of the event's account anyway). The input
            // is validated first, so a malformed id is not sent to lifecycle.
            let current = self.repository.get(&context.tenant, &id).await?;
            let mut scratch = current.clone();
            let mut v = Validator::new();
            for (i, path) in &paths {
                apply_field(&mut scratch, &input, path, &mask_path(*i), &mut v);
            }
            v.finish()?;
            self.check_people(&context, &current.account_id, &contacts)
                .await?;
        }
        let updated = self
            .repository
            .modify(&context.tenant, &id, |o, _settings| {
                domain::check_changeable(o).map_err(|r| refusal(&id, r))?;
                let before = o.buying_group.clone();
                let mut v = Validator::new();
                for (i, path) in &paths {
                    apply_field(o, &input, path, &mask_path(*i), &mut v);
                }
                derive_amount(o, &mut v);
                v.finish()?;
                // New members of the buying group join the open opportunity in lifecycle.
                Ok((o.buying_group != before).then_some(EventKind::Opened))
            })
            .await?;
        Ok(Response::new(pb::UpdateOpportunityResponse {
            opportunity: Some(self.respond(&context, updated).await?),
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
        let updated = self
            .repository
            .modify(&context.tenant, &id, |o, settings| {
                let next = domain::advance(o, settings, to).map_err(|r| refusal(&id, r))?;
                o.step = next;
                o.step_entries.push((next, time::now().timestamp_millis()));
                Ok(None)
            })
            .await?;
        Ok(Response::new(pb::AdvanceOpportunityResponse {
            opportunity: Some(self.respond(&context, updated).await?),
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
        let updated = self
            .repository
            .modify(&context.tenant, &id, |o, settings| {
                domain::close_won(o, settings).map_err(|r| refusal(&id, r))?;
                o.status = OppStatus::Won;
                o.closed_at_ms = Some(time::now().timestamp_millis());
                Ok(Some(EventKind::Won))
            })
            .await?;
        Ok(Response::new(pb::CloseOpportunityWonResponse {
            opportunity: Some(self.respond(&context, updated).await?),
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
        let reason = v.required_text("reason", &request.reason, 1000);
        v.finish()?;
        let updated = self
            .repository
            .modify(&context.tenant, &id, |o, _| {
                domain::close_lost(o).map_err(|r| refusal(&id, r))?;
                o.status = OppStatus::Lost;
                o.lost_reason = reason;
                o.closed_at_ms = Some(time::now().timestamp_millis());
                Ok(Some(EventKind::Lost))
            })
            .await?;
        Ok(Response::new(pb::CloseOpportunityLostResponse {
            opportunity: Some(self.respond(&context, updated).await?),
        }))
    }

    async fn get_pipeline_report(
        &self,
        request: Request<pb::GetPipelineReportRequest>,
    ) -> Result<Response<pb::GetPipelineReportResponse>, Status> {
        let context = RequestContext::of(&request)?;
        let request = request.into_inner();
        let mut v = Validator::new();
        let start = v.required_time("start_time", request.start_time.as_ref());
        let end = v.required_time("end_time", request.end_time.as_ref());
        if let (Some(s), Some(e)) = (start, end)
            && s >= e
        {
            v.add("end_time", "must be after start_time");
        }
        v.finish()?;
        let settings = self.repository.settings(&context.tenant, None).await?;
        let report = self
            .repository
            .pipeline(
                &context.tenant,
                start.map_or(0, |t| t.timestamp_millis()),
                end.map_or(0, |t| t.timestamp_millis()),
            )
            .await?;
        let empty = crate::storage::CurrencySums::default();
        let pipeline = currency_figures(
            &settings,
            &settings.currency,
            report.by_currency.get(&settings.currency).unwrap_or(&empty),
        )?;
        let other_currencies = report
            .by_currency
            .iter()
            .filter(|(c, _)| **c != settings.currency && c.len() == 3)
            .map(|(c, s)| currency_figures(&settings, c, s))
            .collect::<ServiceResult<_>>()?;
        let counts = pb::PipelineCounts {
            steps: Step::ALL
                .iter()
                .map(|step| {
                    let (open, without) = report.open.get(step).copied().unwrap_or((0, 0));
                    pb::StepCount {
                        step: step.to_proto(),
                        display_name: settings.display_name(*step),
                        open_count: open,
                        without_amount_count: without,
                    }
                })
                .collect(),
            won_count: report.won.0,
            won_without_amount_count: report.won.1,
            lost_count: report.lost.0,
            lost_without_amount_count: report.lost.1,
        };
        Ok(Response::new(pb::GetPipelineReportResponse {
            pipeline: Some(pipeline),
            other_currencies,
            counts: Some(counts),
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
                    for (i, p) in input.step_probabilities.iter().enumerate() {
                        match Step::from_proto(p.step) {
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
                    }
                }
                "currency_code" => {
                    let code = input.currency_code.trim();
                    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
                        currency = Some(code.to_owned());
                    } else {
                        v.add(
                            "settings.currency_code",
                            "must be a three-letter ISO 4217 code, e.g. USD",
                        );
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
        let stored = self
            .repository
            .update_settings(&context.tenant, &context.actor, move |s| {
                if let Some(t) = threshold {
                    s.large_deal_threshold = t;
                }
                if let Some(d) = display {
                    s.discover_display_name = d;
                }
                for (step, percent) in probabilities {
                    let index = Step::ALL.iter().position(|x| *x == step).unwrap_or(0);
                    s.probabilities[index] = percent;
                }
                if let Some(c) = currency {
                    s.currency = c;
                }
                Ok(())
            })
            .await?;
        Ok(Response::new(pb::UpdateOpportunitySettingsResponse {
            settings: Some(settings_to_proto(&stored)),
        }))
    }
}
