//! A local HTTP receiver for notification webhooks: it can be "down"
//! (answering 503), and it keeps what it accepted (headers and body) and
//! how many it refused.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::wait::eventually;

/// One request received by the webhook receiver.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    /// A header's value (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The notification's id (`x-cascade-notification-id`).
    pub fn notification_id(&self) -> &str {
        self.header("x-cascade-notification-id").unwrap_or_default()
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
    /// Read requests and never answer (a receiver that hangs).
    hanging: bool,
    /// Requests read while hanging.
    held: usize,
    accepted: Vec<Received>,
    refused: usize,
}

impl WebhookReceiver {
    /// A receiver that accepts (200).
    pub async fn start() -> Self {
        Self::start_as(true).await
    }

    /// A receiver that reads each request and never answers, as a hung
    /// server does: the caller's own timeout is all that ends the call.
    pub async fn start_hanging() -> Self {
        let receiver = Self::start_as(false).await;
        receiver.state.lock().expect("lock").hanging = true;
        receiver
    }

    /// How many requests a hanging receiver has read (and holds).
    pub fn held(&self) -> usize {
        self.state.lock().expect("lock").held
    }

    /// A receiver that is down (503) until [`WebhookReceiver::set_up`].
    pub async fn start_down() -> Self {
        Self::start_as(false).await
    }

    async fn start_as(up: bool) -> Self {
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

    /// Answer 200 (`true`) or 503 from now on.
    pub fn set_up(&self, up: bool) {
        self.state.lock().expect("lock").up = up;
    }

    /// What was accepted so far, in arrival order.
    pub fn accepted(&self) -> Vec<Received> {
        self.state.lock().expect("lock").accepted.clone()
    }

    /// How many requests were answered 503.
    pub fn refused(&self) -> usize {
        self.state.lock().expect("lock").refused
    }

    /// Waits until at least `n` requests were accepted; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(&format!("{n} webhook notifications"), async || {
            let accepted = self.accepted();
            if accepted.len() >= n {
                Ok(accepted)
            } else {
                Err(format!("{} accepted", accepted.len()))
            }
        })
        .await
    }

    /// Waits until at least `n` requests were refused.
    pub async fn wait_for_refusals(&self, n: usize) {
        eventually(&format!("{n} refused webhook attempts"), async || {
            let refused = self.refused();
            if refused >= n { Ok(()) } else { Err(refused) }
        })
        .await;
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
    let hanging = {
        let mut state = state.lock().expect("lock");
        state.held += usize::from(state.hanging);
        state.hanging
    };
    if hanging {
        // Hold the connection open without a word, until the caller gives up.
        let mut rest = [0_u8; 64];
        while matches!(socket.read(&mut rest).await, Ok(n) if n > 0) {}
        return;
    }
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
