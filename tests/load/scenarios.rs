//! The scenarios: what one request of each does, the accounts and contacts
//! they need, and the checks after an ingest run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cascade_proto::common::v1::AccountStage;
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use cascade_proto::scoring::v1 as sc;
use cascade_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::stats::{self, Mode, Op, Stats, round3};
use crate::{Args, Result};

/// The default scoring model's activity types (services/scoring
/// `DEFAULT_POINTS`), weighted like a marketing-automation feed: mostly
/// opens and visits, a few high-value hand-raises.
const MIX: [(&str, u64); 10] = [
    ("email_open", 40),
    ("web_page_visit", 25),
    ("email_click", 12),
    ("link_click", 10),
    ("case_study_download", 5),
    ("webinar_attended", 3),
    ("pricing_page_visit", 2),
    ("meeting_agreed", 1),
    ("appointment_attended", 1),
    ("demo_request", 1),
];

/// A cheap, deterministic mix of a sequence number (splitmix64), so requests
/// need no shared random generator.
pub fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn activity_type(seed: u64) -> &'static str {
    let total: u64 = MIX.iter().map(|(_, w)| w).sum();
    let mut pick = seed % total;
    for (name, weight) in MIX {
        if pick < weight {
            return name;
        }
        pick -= weight;
    }
    MIX[0].0
}

/// Clients over `--channels` separate HTTP/2 connections; request `i` uses
/// connection `i % channels`.
#[derive(Clone)]
pub struct Clients {
    tenant: AsciiMetadataValue,
    lifecycle: Vec<LifecycleServiceClient<Channel>>,
    scoring: Vec<ScoringServiceClient<Channel>>,
}

async fn channels(url: &str, count: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..count.max(1) {
        let channel = Endpoint::from_shared(url.to_owned())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        out.push(channel);
    }
    Ok(out)
}

impl Clients {
    pub async fn connect(args: &Args) -> Result<Self> {
        Self::connect_as(args, &args.tenant).await
    }

    /// Clients acting for `tenant` instead of `--tenant`.
    pub async fn connect_as(args: &Args, tenant: &str) -> Result<Self> {
        Ok(Self {
            tenant: MetadataValue::try_from(tenant)?,
            lifecycle: channels(&args.lifecycle, args.channels)
                .await?
                .into_iter()
                .map(|c| {
                    LifecycleServiceClient::new(c)
                        .max_decoding_message_size(16 << 20)
                        .max_encoding_message_size(16 << 20)
                })
                .collect(),
            scoring: channels(&args.scoring, args.channels)
                .await?
                .into_iter()
                .map(|c| {
                    ScoringServiceClient::new(c)
                        .max_decoding_message_size(16 << 20)
                        .max_encoding_message_size(16 << 20)
                })
                .collect(),
        })
    }

    pub fn lifecycle(&self, i: u64) -> LifecycleServiceClient<Channel> {
        self.lifecycle[i as usize % self.lifecycle.len()].clone()
    }

    fn scoring(&self, i: u64) -> ScoringServiceClient<Channel> {
        self.scoring[i as usize % self.scoring.len()].clone()
    }

    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("x-tenant-id", self.tenant.clone());
        request
            .metadata_mut()
            .insert("x-actor-id", MetadataValue::from_static("cascade-load"));
        request
    }
}

/// Accounts (with domains) and their contacts, made through lifecycle.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub accounts: Vec<(String, Vec<String>)>,
    /// Each account's domain (its contacts are `c{n}@domain`), in the same order.
    pub domains: Vec<String>,
}

impl Fixture {
    fn to_json(&self, tenant: &str) -> Value {
        json!({
            "tenant": tenant,
            "accounts": self.accounts.iter().zip(&self.domains)
                .map(|((a, cs), d)| json!({"account_id": a, "domain": d, "contacts": cs}))
                .collect::<Vec<_>>(),
        })
    }

    fn from_json(value: &Value, tenant: &str) -> Option<Self> {
        if value.get("tenant")?.as_str()? != tenant {
            return None;
        }
        let (accounts, domains) = value
            .get("accounts")?
            .as_array()?
            .iter()
            .map(|a| {
                let id = a.get("account_id")?.as_str()?.to_owned();
                let domain = a.get("domain")?.as_str()?.to_owned();
                let contacts = a
                    .get("contacts")?
                    .as_array()?
                    .iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect();
                Some(((id, contacts), domain))
            })
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .unzip();
        Some(Self { accounts, domains })
    }

    /// An account and one of its contacts, `hot` of the time among the
    /// first 5 % of accounts (the few that cross thresholds quickly).
    fn pick(&self, seed: u64, hot_percent: u64) -> (&str, &str) {
        let (index, c) = self.pick_index(seed, hot_percent);
        let (account, contacts) = &self.accounts[index];
        (account, &contacts[c])
    }

    /// The account's index and the contact's index within it.
    fn pick_index(&self, seed: u64, hot_percent: u64) -> (usize, usize) {
        let n = self.accounts.len() as u64;
        let r = mix(seed);
        let index = if (r >> 40) % 100 < hot_percent {
            (r % (n / 20).max(1)) as usize
        } else {
            (r % n) as usize
        };
        let contacts = self.accounts[index].1.len() as u64;
        (index, ((r >> 20) % contacts) as usize)
    }

    /// The email of the contact `pick` would give (`c{n}@domain`).
    fn pick_email(&self, seed: u64) -> String {
        let (index, c) = self.pick_index(seed, 0);
        format!("c{c}@{}", self.domains[index])
    }
}

/// Creates `accounts` accounts with `contacts` contacts each.
pub async fn create_accounts(
    clients: &Clients,
    tag: &str,
    accounts: usize,
    contacts: usize,
) -> Result<Fixture> {
    let made = futures::stream::iter(0..accounts)
        .map(|a| {
            let clients = clients.clone();
            let tag = tag.to_owned();
            async move {
                let domain = format!("a{a}-{tag}.example");
                let account = clients
                    .lifecycle(a as u64)
                    .create_account(clients.request(lc::CreateAccountRequest {
                        account: Some(lc::Account {
                            name: format!("Bench account {a} {tag}"),
                            domain: domain.clone(),
                            owner_id: "owner@seller.example".into(),
                            ..Default::default()
                        }),
                        request_id: format!("bench-{tag}-a{a}"),
                    }))
                    .await?
                    .into_inner()
                    .account
                    .ok_or_else(|| Status::internal("CreateAccount answered no account"))?;
                let mut ids = Vec::new();
                for c in 0..contacts.max(1) {
                    let contact = clients
                        .lifecycle(c as u64)
                        .create_contact(clients.request(lc::CreateContactRequest {
                            contact: Some(lc::Contact {
                                account_id: account.account_id.clone(),
                                email: format!("c{c}@{domain}"),
                                first_name: format!("C{c}"),
                                last_name: "Bench".into(),
                                ..Default::default()
                            }),
                            request_id: format!("bench-{tag}-a{a}-c{c}"),
                            ..Default::default()
                        }))
                        .await?
                        .into_inner()
                        .contact
                        .ok_or_else(|| Status::internal("CreateContact answered no contact"))?;
                    ids.push(contact.contact_id);
                }
                Ok::<_, Status>(((account.account_id, ids), domain))
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let (accounts, domains) = made
        .into_iter()
        .collect::<std::result::Result<Vec<_>, Status>>()
        .map_err(|s| format!("setup failed: {:?} {}", s.code(), s.message()))?
        .into_iter()
        .unzip();
    Ok(Fixture { accounts, domains })
}

/// The shared accounts of a bench run: read from `--fixture` when it was
/// made for this tenant, made (and saved there) otherwise.
pub async fn fixture(clients: &Clients, args: &Args) -> Result<Fixture> {
    if let Some(path) = &args.fixture
        && let Ok(text) = std::fs::read_to_string(path)
        && let Ok(value) = serde_json::from_str::<Value>(&text)
        && let Some(fixture) = Fixture::from_json(&value, &args.tenant)
    {
        return Ok(fixture);
    }
    let started = Instant::now();
    let fixture = create_accounts(clients, &args.run_id, args.accounts, args.contacts).await?;
    eprintln!(
        "setup: {} accounts with {} contacts each in {:.1} s",
        args.accounts,
        args.contacts,
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.fixture {
        std::fs::write(path, fixture.to_json(&args.tenant).to_string())?;
    }
    Ok(fixture)
}

fn now_timestamp() -> prost_types::Timestamp {
    cascade_chassis::time::to_timestamp(cascade_chassis::time::now())
}

/// `batch` activities of the default mix for request `i`, ids unique to
/// this run.
fn activities(
    run: &str,
    fixture: &Fixture,
    i: u64,
    batch: usize,
    hot_percent: u64,
) -> Vec<sc::Activity> {
    let occur_time = Some(now_timestamp());
    (0..batch as u64)
        .map(|k| {
            let seed = i.wrapping_mul(1_000_003).wrapping_add(k);
            let (account, contact) = fixture.pick(seed, hot_percent);
            sc::Activity {
                event_id: format!("{run}-{i}-{k}"),
                activity_type: activity_type(mix(seed ^ 0xA5A5)).into(),
                occur_time,
                account_id: account.into(),
                contact_id: contact.into(),
                contact_email: String::new(),
            }
        })
        .collect()
}

/// Like `activities`, but each names only the contact's email, as a
/// marketing-automation system would: known contacts of the fixture, and one
/// in a hundred a new person at a known domain (created on the way in).
fn activities_by_email(run: &str, fixture: &Fixture, i: u64, batch: usize) -> Vec<sc::Activity> {
    let occur_time = Some(now_timestamp());
    (0..batch as u64)
        .map(|k| {
            let seed = i.wrapping_mul(1_000_003).wrapping_add(k);
            let email = if mix(seed ^ 0x5A5A).is_multiple_of(100) {
                let (index, _) = fixture.pick_index(seed, 0);
                format!("new-{run}-{i}-{k}@{}", fixture.domains[index])
            } else {
                fixture.pick_email(seed)
            };
            sc::Activity {
                event_id: format!("{run}-{i}-{k}"),
                activity_type: activity_type(mix(seed ^ 0xA5A5)).into(),
                occur_time,
                account_id: String::new(),
                contact_id: String::new(),
                contact_email: email,
            }
        })
        .collect()
}

fn ingest_op(
    clients: &Clients,
    fixture: &Fixture,
    args: &Args,
    hot_percent: u64,
    by_email: bool,
) -> Op {
    let (clients, fixture, run, batch) = (
        clients.clone(),
        Arc::new(fixture.clone()),
        args.run_id.clone(),
        args.batch,
    );
    Arc::new(move |i| {
        let (clients, fixture, run) = (clients.clone(), fixture.clone(), run.clone());
        async move {
            let items = if by_email {
                activities_by_email(&run, &fixture, i, batch)
            } else {
                activities(&run, &fixture, i, batch, hot_percent)
            };
            let answer = clients
                .scoring(i)
                .record_activities(
                    clients.request(sc::RecordActivitiesRequest { activities: items }),
                )
                .await?
                .into_inner();
            Ok(answer.recorded_count as u64)
        }
        .boxed()
    })
}

/// Builds the request function of a load scenario.
pub async fn op(name: &str, args: &Args, clients: &Clients, fixture: &Fixture) -> Result<Op> {
    let fixture = Arc::new(fixture.clone());
    let clients = clients.clone();
    let run = args.run_id.clone();
    let batch = args.batch;
    let op: Op = match name {
        "record-activity" => Arc::new(move |i| {
            let (clients, fixture, run) = (clients.clone(), fixture.clone(), run.clone());
            async move {
                let activity = activities(&run, &fixture, i, 1, 0).pop();
                let answer = clients
                    .scoring(i)
                    .record_activity(clients.request(sc::RecordActivityRequest { activity }))
                    .await?
                    .into_inner();
                let recorded = answer
                    .result
                    .is_some_and(|r| r.status == sc::ActivityStatus::Recorded as i32);
                Ok(u64::from(recorded))
            }
            .boxed()
        }),
        "record-activities" => ingest_op(&clients, &fixture, args, 0, false),
        "record-activities-by-email" => ingest_op(&clients, &fixture, args, 0, true),
        "stream-activities" => {
            // One call streams `STREAM_CHUNKS` messages of `batch` activities.
            const STREAM_CHUNKS: u64 = 10;
            Arc::new(move |i| {
                let (clients, fixture, run) = (clients.clone(), fixture.clone(), run.clone());
                async move {
                    let chunks: Vec<sc::StreamActivitiesRequest> = (0..STREAM_CHUNKS)
                        .map(|c| sc::StreamActivitiesRequest {
                            activities: activities(&run, &fixture, i * STREAM_CHUNKS + c, batch, 0),
                        })
                        .collect();
                    let answer = clients
                        .scoring(i)
                        .stream_activities(clients.request(tokio_stream::iter(chunks)))
                        .await?
                        .into_inner();
                    Ok(answer.recorded_count as u64)
                }
                .boxed()
            })
        }
        "get-account" => Arc::new(move |i| {
            let (clients, fixture) = (clients.clone(), fixture.clone());
            async move {
                let (account, _) = fixture.pick(i, 0);
                clients
                    .lifecycle(i)
                    .get_account(clients.request(lc::GetAccountRequest {
                        account_id: account.into(),
                    }))
                    .await?;
                Ok(0)
            }
            .boxed()
        }),
        "get-account-score" => Arc::new(move |i| {
            let (clients, fixture) = (clients.clone(), fixture.clone());
            async move {
                let (account, _) = fixture.pick(i, 0);
                clients
                    .scoring(i)
                    .get_account_score(clients.request(sc::GetAccountScoreRequest {
                        account_id: account.into(),
                    }))
                    .await?;
                Ok(0)
            }
            .boxed()
        }),
        "mixed" => {
            // 8 in 10 requests are activity batches, half of their events on
            // the hottest 5 % of accounts; 2 in 10 read an account.
            let ingest = ingest_op(&clients, &fixture, args, 50, false);
            Arc::new(move |i| {
                if mix(i ^ 0x5EED) % 10 < 2 {
                    let (clients, fixture) = (clients.clone(), fixture.clone());
                    async move {
                        let (account, _) = fixture.pick(i, 50);
                        clients
                            .lifecycle(i)
                            .get_account(clients.request(lc::GetAccountRequest {
                                account_id: account.into(),
                            }))
                            .await?;
                        Ok(0)
                    }
                    .boxed()
                } else {
                    ingest(i)
                }
            })
        }
        other => return Err(format!("unknown scenario {other:?}").into()),
    };
    Ok(op)
}

/// After an ingest run: the share of accounts whose score in lifecycle
/// already equals scoring's (their score and stage change reached
/// lifecycle), then how long until all do.
pub async fn lifecycle_sync(clients: &Clients, fixture: &Fixture) -> Value {
    let started = Instant::now();
    let mut first_share = None;
    loop {
        let checks = futures::stream::iter(fixture.accounts.iter().enumerate())
            .map(|(i, (account, _))| {
                let clients = clients.clone();
                let account = account.clone();
                async move {
                    let scored = clients
                        .scoring(i as u64)
                        .get_account_score(clients.request(sc::GetAccountScoreRequest {
                            account_id: account.clone(),
                        }))
                        .await
                        .ok()?
                        .into_inner()
                        .score?
                        .engagement_score;
                    let seen = clients
                        .lifecycle(i as u64)
                        .get_account(clients.request(lc::GetAccountRequest {
                            account_id: account,
                        }))
                        .await
                        .ok()?
                        .into_inner()
                        .account?
                        .engagement_score;
                    Some((scored - seen).abs() <= 1e-6 * scored.abs().max(1.0))
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        let in_sync = checks.iter().filter(|c| **c == Some(true)).count();
        let share = in_sync as f64 / checks.len().max(1) as f64;
        let first = *first_share.get_or_insert(share);
        if in_sync == checks.len() || started.elapsed() > Duration::from_secs(60) {
            return json!({
                "accounts": checks.len(),
                "lifecycle_in_sync_share_at_end": round3(first),
                "lifecycle_in_sync_share_final": round3(share),
                "lifecycle_catch_up_s": (in_sync == checks.len())
                    .then(|| round3(started.elapsed().as_secs_f64())),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Serves grpc.health.v1 on 127.0.0.1:0 inside this process; the baseline
/// calls it, so it costs only the transport (HTTP/2, protobuf, tonic).
pub async fn baseline_op(args: &Args) -> Result<Op> {
    let (_reporter, service) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let clients: Vec<HealthClient<Channel>> = channels(&url, args.channels)
        .await?
        .into_iter()
        .map(HealthClient::new)
        .collect();
    Ok(Arc::new(move |i| {
        let mut client = clients[i as usize % clients.len()].clone();
        async move {
            client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
            Ok(0)
        }
        .boxed()
    }))
}

/// RecordActivities at `rate` events/s (open loop, `--batch` per call) for
/// the scenario's duration, beside another scenario.
pub fn background_ingest(
    args: &Args,
    clients: &Clients,
    fixture: &Fixture,
    rate: f64,
) -> tokio::task::JoinHandle<(stats::Stats, Duration)> {
    tokio::spawn(stats::run(
        ingest_op(clients, fixture, args, 0, false),
        Mode::Open {
            rate: rate / args.batch.max(1) as f64,
        },
        Duration::from_secs_f64(args.duration),
    ))
}

/// One probe's moments, as wall-clock times (the services share the
/// machine's clock): sent, answered by scoring, decided by lifecycle (the
/// transition's time, taken inside its write transaction) and seen on the
/// watch stream.
#[derive(Default, Clone, Copy)]
struct Probe {
    sent: Option<std::time::SystemTime>,
    recorded: Option<std::time::SystemTime>,
    decided: Option<std::time::SystemTime>,
    seen: Option<std::time::SystemTime>,
}

impl Probe {
    /// Milliseconds from `from` to `to`, when both are known.
    fn span(from: Option<std::time::SystemTime>, to: Option<std::time::SystemTime>) -> Option<f64> {
        Some(to?.duration_since(from?).unwrap_or_default().as_secs_f64() * 1000.0)
    }

    /// The crossing's stages in milliseconds: scoring's answer (the group
    /// commit), from it to lifecycle's decision (outbox claim, delivery
    /// call, lifecycle's write lock), and from the decision to the watch
    /// stream (lifecycle's commit and the broadcast).
    fn stages(&self) -> [Option<f64>; 3] {
        [
            Self::span(self.sent, self.recorded),
            Self::span(self.recorded, self.decided),
            Self::span(self.decided, self.seen),
        ]
    }
}

/// Background ingest at `--rate` events/s in batches of `--batch`; every
/// `--probe-interval-ms` one demo_request (100 points, the default
/// PRIORITIZED threshold) on a fresh account, timed until lifecycle's
/// WatchAccountEvents shows the account entering PRIORITIZED.
/// The JSON adds each stage of the crossings under `stages` (`crossing_stages`).
pub async fn crossing_latency(args: &Args, clients: &Clients, fixture: &Fixture) -> Result<Value> {
    let duration = Duration::from_secs_f64(args.duration);
    let probes = ((args.duration * 1000.0) / args.probe_interval_ms as f64).ceil() as usize;
    let fresh = create_accounts(clients, &format!("{}-probe", args.run_id), probes, 1).await?;

    let pending: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let moments: Arc<Mutex<HashMap<String, Probe>>> = Arc::default();
    let crossings: stats::Shared = Arc::default();
    let mut watch = clients
        .lifecycle(0)
        .watch_account_events(clients.request(lc::WatchAccountEventsRequest {
            stages: vec![AccountStage::Prioritized as i32],
            ..Default::default()
        }))
        .await?
        .into_inner();
    {
        let (pending, moments, crossings) = (pending.clone(), moments.clone(), crossings.clone());
        tokio::spawn(async move {
            while let Some(Ok(event)) = watch.next().await {
                if let Some(lc::watch_account_events_response::Event::Transition(t)) = event.event
                    && t.to_stage == AccountStage::Prioritized as i32
                {
                    let sent = pending
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&t.account_id);
                    if let Some(sent) = sent {
                        stats::lock(&crossings).record_latency(sent.elapsed());
                        let mut moments = moments
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let probe = moments.entry(t.account_id.clone()).or_default();
                        probe.seen = Some(std::time::SystemTime::now());
                        probe.decided = t
                            .transition_time
                            .and_then(|at| std::time::SystemTime::try_from(at).ok());
                    }
                }
            }
        });
    }

    let rate = args.rate.unwrap_or(1000.0) / args.batch.max(1) as f64;
    let background = tokio::spawn(stats::run(
        ingest_op(clients, fixture, args, 0, false),
        Mode::Open { rate },
        duration,
    ));
    let mut ticks = tokio::time::interval(Duration::from_millis(args.probe_interval_ms));
    for (n, (account, contacts)) in fresh.accounts.iter().enumerate() {
        ticks.tick().await;
        let activity = sc::Activity {
            event_id: format!("{}-probe-{n}", args.run_id),
            activity_type: "demo_request".into(),
            occur_time: Some(now_timestamp()),
            account_id: account.clone(),
            contact_id: contacts[0].clone(),
            contact_email: String::new(),
        };
        pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(account.clone(), Instant::now());
        let sent_at = std::time::SystemTime::now();
        let answer = clients
            .scoring(n as u64)
            .record_activities(clients.request(sc::RecordActivitiesRequest {
                activities: vec![activity],
            }))
            .await;
        let recorded_at = std::time::SystemTime::now();
        {
            let mut moments = moments
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let probe = moments.entry(account.clone()).or_default();
            probe.sent = Some(sent_at);
            probe.recorded = answer.is_ok().then_some(recorded_at);
        }
        if let Err(status) = answer {
            stats::lock(&crossings).error(format!("{:?}", status.code()));
        }
    }
    let (background, background_elapsed) = background.await?;
    // Probes not seen within 5 s of the last one count as missed.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until
        && !pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let missed = pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len() as u64;
    let mut crossings = std::mem::take(&mut *stats::lock(&crossings));
    if missed > 0 {
        *crossings
            .errors
            .entry("not PRIORITIZED within 5 s".into())
            .or_default() += missed;
    }
    let mut summary = crossings.summary(duration);
    summary["probes"] = json!(probes);
    summary["background"] = background.summary(background_elapsed);
    summary["background_rate_events_per_s"] = json!(args.rate.unwrap_or(1000.0));
    // The probe's RecordActivities on its own is the stages' `recorded`.
    let moments = std::mem::take(
        &mut *moments
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    summary["stages"] = crossing_stages(moments.into_values().collect());
    Ok(summary)
}

/// Where the crossings' time went: each stage's percentiles over the probes
/// seen, and the five slowest probes stage by stage with the unix time they
/// were sent (to find them in the services' logs).
fn crossing_stages(mut probes: Vec<Probe>) -> Value {
    const NAMES: [&str; 3] = ["recorded", "to_decision", "to_stream"];
    probes.retain(|p| p.seen.is_some());
    let mut stages = serde_json::Map::new();
    for (i, name) in NAMES.iter().enumerate() {
        let mut stage = Stats::new();
        for probe in &probes {
            if let Some(ms) = probe.stages()[i] {
                stage.record_latency(Duration::from_secs_f64(ms / 1000.0));
            }
        }
        stages.insert(
            (*name).into(),
            stage.summary(Duration::from_secs(1))["latency_ms"].clone(),
        );
    }
    let total = |p: &Probe| Probe::span(p.sent, p.seen).unwrap_or_default();
    probes.sort_by(|a, b| total(b).total_cmp(&total(a)));
    let slowest: Vec<Value> = probes
        .iter()
        .take(5)
        .map(|p| {
            let [recorded, to_decision, to_stream] = p.stages().map(|ms| ms.map(round3));
            json!({
                "sent_unix_ms": p.sent.and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_millis() as u64),
                "total_ms": round3(total(p)),
                "recorded_ms": recorded,
                "to_decision_ms": to_decision,
                "to_stream_ms": to_stream,
            })
        })
        .collect();
    stages.insert("slowest".into(), json!(slowest));
    Value::Object(stages)
}

/// Stores activities (closed loop, batches of `--batch`) until the tenant
/// holds `--activities` or `--duration` has passed, then times
/// SimulateScoringModel with the current model over all of them.
pub async fn simulate(args: &Args, clients: &Clients, fixture: &Fixture) -> Result<Value> {
    let model = clients
        .scoring(0)
        .get_scoring_model(clients.request(sc::GetScoringModelRequest { version: 0 }))
        .await?
        .into_inner()
        .model;
    let simulate = || {
        let (clients, model) = (clients.clone(), model.clone());
        async move {
            let started = Instant::now();
            let answer = clients
                .scoring(0)
                .simulate_scoring_model(clients.request(sc::SimulateScoringModelRequest {
                    model,
                    thresholds: Some(sc::SimulationThresholds {
                        engaged_threshold: 0.0,
                        prioritized_threshold: 100.0,
                    }),
                    ..Default::default()
                }))
                .await?
                .into_inner();
            Ok::<_, Status>((answer.activity_count, started.elapsed()))
        }
    };
    let (before, _) = simulate().await?;
    let wanted = args.activities.saturating_sub(before.max(0) as u64);
    let mut fill = Value::Null;
    if wanted > 0 {
        let stored = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let inner = ingest_op(clients, fixture, args, 0, false);
        let counted = stored.clone();
        let op: Op = Arc::new(move |i| {
            let (inner, counted) = (inner.clone(), counted.clone());
            async move {
                if counted.load(std::sync::atomic::Ordering::Relaxed) >= wanted {
                    return Ok(0);
                }
                let n = inner(i).await?;
                counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                Ok(n)
            }
            .boxed()
        });
        let (stats, elapsed) = stats::run(
            op,
            Mode::Closed {
                concurrency: args.concurrency,
            },
            Duration::from_secs_f64(args.duration),
        )
        .await;
        fill = stats.summary(elapsed);
    }
    let mut timings = Stats::new();
    let mut count = 0;
    let mut seconds = Vec::new();
    for _ in 0..3 {
        let (n, took) = simulate().await?;
        count = n;
        seconds.push(took.as_secs_f64());
        timings.record_latency(took);
    }
    seconds.sort_by(f64::total_cmp);
    let median = seconds[seconds.len() / 2];
    let mut summary = timings.summary(Duration::from_secs_f64(seconds.iter().sum()));
    summary["activity_count"] = json!(count);
    summary["simulate_s_median"] = json!(round3(median));
    summary["simulate_s_per_million"] = json!(round3(median * 1_000_000.0 / (count.max(1) as f64)));
    summary["fill"] = fill;
    Ok(summary)
}

/// Polls grpc.health.v1 Check until SERVING; answers the milliseconds since
/// `since` (the script's clock reading just before it started the process).
pub async fn wait_serving(url: &str, since_unix_ns: u128) -> Result<f64> {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = Endpoint::from_shared(url.to_owned())?.connect().await {
            let mut client = HealthClient::new(channel);
            loop {
                match client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    Ok(answer) if answer.get_ref().status == ServingStatus::Serving as i32 => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)?
                            .as_nanos();
                        return Ok(now.saturating_sub(since_unix_ns) as f64 / 1e6);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
                if Instant::now() > give_up {
                    return Err(format!("{url} did not report SERVING within 60 s").into());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        if Instant::now() > give_up {
            return Err(format!("{url} did not report SERVING within 60 s").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
