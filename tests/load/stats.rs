//! Latency histograms and the two ways of applying load.
//!
//! Open loop: requests are due at fixed intervals whatever the service does,
//! and each latency is measured from the time the request was *due*, so a
//! stalled service is charged for every request it delayed (no coordinated
//! omission). Closed loop: N workers send back to back; this finds the
//! throughput, and its latencies are service times at that concurrency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tonic::Status;

/// One request of a scenario: the argument is the request's sequence number,
/// the answer how many events it stored (0 for reads).
pub type Op = Arc<dyn Fn(u64) -> BoxFuture<'static, Result<u64, Status>> + Send + Sync>;

/// Longest latency the histograms hold, in microseconds (larger ones are
/// clamped): two minutes.
const HIGHEST_US: u64 = 120_000_000;

pub struct Stats {
    /// From the intended send time (open loop) or the send (closed loop).
    latency: Histogram<u64>,
    /// From the actual send: what the service and transport took.
    service: Histogram<u64>,
    pub requests: u64,
    pub events: u64,
    pub errors: BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        let histogram =
            || Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds");
        Self {
            latency: histogram(),
            service: histogram(),
            requests: 0,
            events: 0,
            errors: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, intended: Instant, sent: Instant, outcome: &Result<u64, Status>) {
        let now = Instant::now();
        let micros = |from: Instant| (now.duration_since(from).as_micros() as u64).max(1);
        match outcome {
            Ok(events) => {
                self.requests += 1;
                self.events += events;
                self.latency.saturating_record(micros(intended));
                self.service.saturating_record(micros(sent));
            }
            Err(status) => self.error(format!("{:?}", status.code())),
        }
    }

    /// A latency without a request count (the crossing probe's delay).
    pub fn record_latency(&mut self, latency: Duration) {
        let micros = (latency.as_micros() as u64).max(1);
        self.requests += 1;
        self.latency.saturating_record(micros);
        self.service.saturating_record(micros);
    }

    pub fn error(&mut self, code: String) {
        *self.errors.entry(code).or_default() += 1;
    }

    /// Throughput over `elapsed`, percentiles in milliseconds, errors by code.
    pub fn summary(&self, elapsed: Duration) -> Value {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let percentiles = |h: &Histogram<u64>| {
            let ms = |q: f64| round3(h.value_at_quantile(q) as f64 / 1000.0);
            json!({
                "p50": ms(0.50),
                "p90": ms(0.90),
                "p99": ms(0.99),
                "p99_9": ms(0.999),
                "max": round3(h.max() as f64 / 1000.0),
                "mean": round3(h.mean() / 1000.0),
            })
        };
        json!({
            "elapsed_s": round3(seconds),
            "requests": self.requests,
            "requests_per_s": round1(self.requests as f64 / seconds),
            "events": self.events,
            "events_per_s": round1(self.events as f64 / seconds),
            "latency_ms": percentiles(&self.latency),
            "service_time_ms": percentiles(&self.service),
            "errors_total": self.errors.values().sum::<u64>(),
            "errors": self.errors,
        })
    }
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub type Shared = Arc<Mutex<Stats>>;

pub fn lock(stats: &Shared) -> std::sync::MutexGuard<'_, Stats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Open { rate: f64 },
    Closed { concurrency: usize },
}

impl Mode {
    pub fn describe(&self) -> Value {
        match self {
            Mode::Open { rate } => json!({"loop": "open", "rate_per_s": rate}),
            Mode::Closed { concurrency } => json!({"loop": "closed", "concurrency": concurrency}),
        }
    }
}

/// How long requests still in flight at the end may take before they count
/// as DeadlineExceeded.
const DRAIN: Duration = Duration::from_secs(10);

/// Applies `op` for `duration`; returns the statistics and the time from the
/// first send to the last answer.
pub async fn run(op: Op, mode: Mode, duration: Duration) -> (Stats, Duration) {
    let stats: Shared = Arc::new(Mutex::new(Stats::new()));
    let start = Instant::now();
    match mode {
        Mode::Closed { concurrency } => {
            let deadline = start + duration;
            let next = Arc::new(AtomicU64::new(0));
            let workers: Vec<_> = (0..concurrency.max(1))
                .map(|_| {
                    let (op, stats, next) = (op.clone(), stats.clone(), next.clone());
                    tokio::spawn(async move {
                        while Instant::now() < deadline {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let sent = Instant::now();
                            let outcome = op(i).await;
                            lock(&stats).record(sent, sent, &outcome);
                        }
                    })
                })
                .collect();
            for worker in workers {
                let _ = worker.await;
            }
        }
        Mode::Open { rate } => {
            let inflight = Arc::new(AtomicU64::new(0));
            // The schedule runs on its own thread: tokio's timer has 1 ms
            // granularity, which would add up to a millisecond to every
            // latency measured from the intended time.
            let handle = tokio::runtime::Handle::current();
            let (done, scheduled) = tokio::sync::oneshot::channel();
            {
                let (op, stats, inflight) = (op.clone(), stats.clone(), inflight.clone());
                std::thread::spawn(move || {
                    let mut i: u64 = 0;
                    loop {
                        let offset = Duration::from_secs_f64(i as f64 / rate.max(1e-3));
                        if offset >= duration {
                            break;
                        }
                        let intended = start + offset;
                        let now = Instant::now();
                        if intended > now {
                            std::thread::sleep(intended - now);
                        }
                        let (op, stats, inflight) = (op.clone(), stats.clone(), inflight.clone());
                        inflight.fetch_add(1, Ordering::SeqCst);
                        handle.spawn(async move {
                            let sent = Instant::now();
                            let outcome = op(i).await;
                            lock(&stats).record(intended, sent, &outcome);
                            inflight.fetch_sub(1, Ordering::SeqCst);
                        });
                        i += 1;
                    }
                    let _ = done.send(i);
                });
            }
            let _ = scheduled.await;
            let drain_until = Instant::now() + DRAIN;
            while inflight.load(Ordering::SeqCst) > 0 && Instant::now() < drain_until {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let left = inflight.load(Ordering::SeqCst);
            if left > 0 {
                let mut stats = lock(&stats);
                *stats.errors.entry("DeadlineExceeded".into()).or_default() += left;
            }
        }
    }
    let elapsed = start.elapsed();
    let stats = std::mem::take(&mut *lock(&stats));
    (stats, elapsed)
}
