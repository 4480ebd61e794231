//! Helpers for the lifecycle API tests: a server on an ephemeral port, a
//! client, requests with tenant and actor, and a local webhook receiver.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cascade_chassis::settings::ServiceSettings;
use cascade_proto::lifecycle::v1 as pb;
use cascade_proto::lifecycle::v1::lifecycle_internal_service_client::LifecycleInternalServiceClient;
use cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use cascade_testkit::{TestDatabase, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// Lifecycle's public client, with the internal one (deliveries) beside
/// it: `client.create_account(..)`, `client.internal.apply_engagement_score(..)`.
#[derive(Clone)]
pub struct Client {
    public: LifecycleServiceClient<Channel>,
    pub internal: LifecycleInternalServiceClient<Channel>,
}

impl Client {
    pub fn new(channel: Channel) -> Self {
        Self {
            public: LifecycleServiceClient::new(channel.clone()),
            internal: LifecycleInternalServiceClient::new(channel),
        }
    }
}

impl std::ops::Deref for Client {
    type Target = LifecycleServiceClient<Channel>;
    fn deref(&self) -> &Self::Target {
        &self.public
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.public
    }
}

pub const TENANT: &str = "acme";

pub async fn start(db: &TestDatabase) -> (TestServer, Client) {
    let app = cascade_lifecycle::build(&ServiceSettings::for_tests(db.settings.clone()))
        .await
        .expect("lifecycle builds");
    let server = TestServer::start(app);
    let client = Client::new(server.channel());
    (server, client)
}

/// A request of tenant `acme`, acting as `actor`.
pub fn req<T>(actor: &str, message: T) -> tonic::Request<T> {
    let mut request = cascade_testkit::request_for(TENANT, message);
    request
        .metadata_mut()
        .insert("x-actor-id", actor.parse().expect("ascii actor"));
    request
}

pub async fn create_account(client: &mut Client, name: &str, owner: &str) -> pb::Account {
    client
        .create_account(req(
            "test",
            pb::CreateAccountRequest {
                account: Some(pb::Account {
                    name: name.into(),
                    owner_id: owner.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .expect("account created")
        .into_inner()
        .account
        .expect("account")
}

pub async fn create_contact(client: &mut Client, account_id: &str, email: &str) -> pb::Contact {
    client
        .create_contact(req(
            "test",
            pb::CreateContactRequest {
                contact: Some(pb::Contact {
                    account_id: account_id.into(),
                    email: email.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .expect("contact created")
        .into_inner()
        .contact
        .expect("contact")
}

pub async fn get_account(client: &mut Client, account_id: &str) -> pb::Account {
    client
        .get_account(req(
            "test",
            pb::GetAccountRequest {
                account_id: account_id.into(),
            },
        ))
        .await
        .expect("get account")
        .into_inner()
        .account
        .expect("account")
}

pub async fn get_contact(client: &mut Client, contact_id: &str) -> pb::Contact {
    client
        .get_contact(req(
            "test",
            pb::GetContactRequest {
                contact_id: contact_id.into(),
            },
        ))
        .await
        .expect("get contact")
        .into_inner()
        .contact
        .expect("contact")
}

/// Delivers a score as scoring would.
pub async fn score(
    client: &mut Client,
    account_id: &str,
    event_id: &str,
    sequence: i64,
    engagement: f64,
    intent: f64,
    contacts: Vec<(String, f64, Vec<&str>)>,
) -> pb::ApplyEngagementScoreResponse {
    client
        .internal
        .apply_engagement_score(req(
            "scoring",
            pb::ApplyEngagementScoreRequest {
                event_id: event_id.into(),
                account_id: account_id.into(),
                sequence,
                engagement_score: engagement,
                average_engagement_score: engagement,
                intent_score: intent,
                contacts: contacts
                    .into_iter()
                    .map(|(contact_id, score, types)| pb::ContactEngagement {
                        contact_id,
                        engagement_score: score,
                        new_activity_types: types.into_iter().map(String::from).collect(),
                    })
                    .collect(),
                compute_time: None,
            },
        ))
        .await
        .expect("score applied")
        .into_inner()
}

pub async fn opportunity(
    client: &mut Client,
    account_id: &str,
    event_id: &str,
    opportunity_id: &str,
    kind: pb::OpportunityEventType,
    buying_group: &[&str],
    other_open: i32,
) -> pb::ApplyOpportunityEventResponse {
    client
        .internal
        .apply_opportunity_event(req(
            "opportunity",
            pb::ApplyOpportunityEventRequest {
                event_id: event_id.into(),
                account_id: account_id.into(),
                opportunity_id: opportunity_id.into(),
                r#type: kind as i32,
                buying_group_contact_ids: buying_group.iter().map(|s| s.to_string()).collect(),
                other_open_opportunities: other_open,
                occur_time: None,
            },
        ))
        .await
        .expect("opportunity event applied")
        .into_inner()
}

pub async fn transitions(client: &mut Client, account_id: &str) -> Vec<pb::AccountTransition> {
    client
        .list_account_transitions(req(
            "test",
            pb::ListAccountTransitionsRequest {
                account_id: account_id.into(),
                page_size: 500,
                page_token: String::new(),
            },
        ))
        .await
        .expect("transitions")
        .into_inner()
        .transitions
}

pub async fn set_settings(client: &mut Client, settings: pb::LifecycleSettings, paths: &[&str]) {
    client
        .update_lifecycle_settings(req(
            "admin",
            pb::UpdateLifecycleSettingsRequest {
                settings: Some(settings),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
            },
        ))
        .await
        .expect("settings updated");
}

/// A fresh opportunity id (a UUID, as the opportunity service assigns).
pub fn new_id() -> String {
    uuid_like()
}

fn uuid_like() -> String {
    cascade_domain::ids::new_id()
}

/// One request received by the webhook receiver.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A local HTTP receiver for notification webhooks that can be "down"
/// (answering 503) and counts what it accepted and refused.
#[derive(Clone)]
pub struct WebhookReceiver {
    pub url: String,
    state: Arc<Mutex<ReceiverState>>,
}

#[derive(Default)]
struct ReceiverState {
    up: bool,
    accepted: Vec<Received>,
    refused: usize,
}

impl WebhookReceiver {
    pub async fn start(up: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(ReceiverState {
            up,
            ..Default::default()
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move { serve(socket, state).await });
            }
        });
        Self { url, state }
    }

    pub fn set_up(&self, up: bool) {
        self.state.lock().expect("lock").up = up;
    }

    pub fn accepted(&self) -> Vec<Received> {
        self.state.lock().expect("lock").accepted.clone()
    }

    pub fn refused(&self) -> usize {
        self.state.lock().expect("lock").refused
    }

    /// Waits (bounded) until `n` requests were accepted.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..400 {
            let accepted = self.accepted();
            if accepted.len() >= n {
                return accepted;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "webhook received {} of {n} notifications",
            self.accepted().len()
        );
    }

    /// Waits (bounded) until `n` requests were refused.
    pub async fn wait_for_refusals(&self, n: usize) {
        for _ in 0..400 {
            if self.refused() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("webhook refused only {} of {n} attempts", self.refused());
    }
}

/// A minimal HTTP/1.1 exchange: read one request, answer, close.
async fn serve(mut socket: tokio::net::TcpStream, state: Arc<Mutex<ReceiverState>>) {
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 4096];
    let (head_end, content_length) = loop {
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..pos]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            break (pos + 4, length);
        }
    };
    while buffer.len() < head_end + content_length {
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = String::from_utf8_lossy(&buffer[head_end..]).to_string();
    let up = {
        let mut state = state.lock().expect("lock");
        if state.up {
            state.accepted.push(Received { headers, body });
        } else {
            state.refused += 1;
        }
        state.up
    };
    let status = if up {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}
