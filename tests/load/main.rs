//! `cascade-load`: the load generator behind `make bench`
//! (docs/performance.md). One scenario per run; prints its numbers and
//! writes them as JSON.

mod import;
mod raw_insert;
mod report;
mod scenarios;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The scenarios, listed under `--help`.
const SCENARIOS: &str = "\
scenarios:
  baseline            grpc.health.v1 Check on a server inside this process (transport only)
  record-activity     unary RecordActivity, one activity per call
  record-activities   RecordActivities, --batch activities per call
  record-activities-by-email
                      the same, each activity naming only a contact's email (1 in 100 a new person)
  stream-activities   StreamActivities, 10 messages of --batch activities per call
  get-account         lifecycle GetAccount
  get-account-score   scoring GetAccountScore
  mixed               8/10 batches of the default activity mix (half on 5 % hot accounts), 2/10 GetAccount
  crossing-latency    --rate events/s in the background; every --probe-interval-ms a fresh account
                      gets a demo_request, timed until lifecycle reports it PRIORITIZED
  simulate            store up to --activities activities (at most --duration s), time SimulateScoringModel
  import              a tenant's onboarding: BatchCreateAccounts of --accounts accounts, then
                      BatchCreateContacts of --contacts per account (--batch per call, at most 1000),
                      then the same import again (creates nothing); a fresh tenant per run
  raw-insert          the same rows straight into a fresh database (--database-url): the ceiling
  wait-serving        poll --target's health until SERVING; print ms since --since-unix-ns
  report              gather DIR/*.json into DIR/report.md and report.json (--dir DIR)";

const SCENARIO_NAMES: [&str; 14] = [
    "baseline",
    "record-activity",
    "record-activities",
    "record-activities-by-email",
    "stream-activities",
    "get-account",
    "get-account-score",
    "mixed",
    "crossing-latency",
    "simulate",
    "import",
    "raw-insert",
    "wait-serving",
    "report",
];

/// One scenario per run; prints its numbers and writes them as JSON.
#[derive(Debug, Parser)]
// A flag given twice takes its last value: bench.sh appends its own
// `--duration` to the common options for the ingest run beside a read.
#[command(name = "cascade-load", after_help = SCENARIOS, args_override_self = true)]
pub struct Args {
    /// The scenario to run (listed below).
    #[arg(long, value_parser = SCENARIO_NAMES)]
    scenario: String,
    /// Name of the run in the report (default: the scenario).
    #[arg(long)]
    label: Option<String>,
    /// How long to apply load, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Open loop: N requests/s, latency from each intended send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop (the default loop): N workers back to back.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// HTTP/2 connections per service.
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    channels: usize,
    /// The generator's worker threads (default: 1 with --rate, open loop;
    /// one per core otherwise).
    #[arg(long, value_parser = at_least_one)]
    threads: Option<usize>,
    /// Activities per call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    lifecycle: String,
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    scoring: String,
    /// x-tenant-id of the calls.
    #[arg(long, default_value = "bench")]
    tenant: String,
    /// Accounts made for the run.
    #[arg(long, default_value_t = 200, value_parser = at_least_one)]
    accounts: usize,
    /// Contacts per account.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    contacts: usize,
    /// Reuse (or save) the accounts made for this tenant.
    #[arg(long, value_name = "FILE")]
    fixture: Option<PathBuf>,
    /// Write the result there.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// raw-insert: sqlite://FILE or a PostgreSQL server URL (a fresh database is created).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// raw-insert: `scoring` (scoring's activities table and its indexes) or
    /// `bare` (the same columns, primary key only).
    #[arg(long, default_value = "scoring", value_parser = ["scoring", "bare"])]
    raw_table: String,
    /// simulate: how many stored activities to aim for.
    #[arg(long, default_value_t = 1_000_000)]
    activities: u64,
    /// crossing-latency: time between probes, in ms.
    #[arg(long, default_value_t = 100)]
    probe_interval_ms: u64,
    /// Load scenarios: RecordActivities at N events/s (open loop, --batch per
    /// call) in the background while the scenario runs.
    #[arg(long)]
    ingest_rate: Option<f64>,
    /// wait-serving: the service's URL.
    #[arg(long, value_name = "URL")]
    target: Option<String>,
    /// wait-serving: the time the wait started, in ns since the Unix epoch.
    #[arg(long)]
    since_unix_ns: Option<u128>,
    /// report: the folder of JSON results.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Makes event ids, request ids and domains unique to this run.
    #[arg(skip = run_id())]
    run_id: String,
}

fn at_least_one(value: &str) -> std::result::Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn run_id() -> String {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("r{unix_ms}-{}", std::process::id())
}

fn mode(args: &Args) -> stats::Mode {
    match args.rate {
        Some(rate) => stats::Mode::Open { rate },
        None => stats::Mode::Closed {
            concurrency: args.concurrency,
        },
    }
}

async fn scenario(args: &Args) -> Result<Value> {
    let duration = Duration::from_secs_f64(args.duration);
    let mut result = match args.scenario.as_str() {
        "baseline" => {
            let op = scenarios::baseline_op(args).await?;
            let (stats, elapsed) = stats::run(op, mode(args), duration).await;
            stats.summary(elapsed)
        }
        "raw-insert" => raw_insert::run(args).await?,
        "import" => import::run(args).await?,
        name => {
            let clients = scenarios::Clients::connect(args).await?;
            let fixture = scenarios::fixture(&clients, args).await?;
            match name {
                "crossing-latency" => scenarios::crossing_latency(args, &clients, &fixture).await?,
                "simulate" => scenarios::simulate(args, &clients, &fixture).await?,
                _ => {
                    let op = scenarios::op(name, args, &clients, &fixture).await?;
                    let background = args
                        .ingest_rate
                        .map(|rate| scenarios::background_ingest(args, &clients, &fixture, rate));
                    let (stats, elapsed) = stats::run(op, mode(args), duration).await;
                    let mut summary = stats.summary(elapsed);
                    if let Some(background) = background {
                        let (ingest, ingest_elapsed) = background.await?;
                        summary["background_ingest"] = ingest.summary(ingest_elapsed);
                    }
                    if stats.events > 0 {
                        summary["lifecycle"] = scenarios::lifecycle_sync(&clients, &fixture).await;
                    }
                    summary
                }
            }
        }
    };
    result["scenario"] = json!(args.scenario);
    result["label"] = json!(args.label.as_deref().unwrap_or(&args.scenario));
    result["duration_s"] = json!(args.duration);
    result["channels"] = json!(args.channels);
    if matches!(
        args.scenario.as_str(),
        "record-activities"
            | "record-activities-by-email"
            | "stream-activities"
            | "mixed"
            | "crossing-latency"
            | "simulate"
            | "raw-insert"
    ) {
        result["batch"] = json!(args.batch);
    }
    result["tenant"] = json!(args.tenant);
    if result.get("load").is_none() {
        result["load"] = match args.scenario.as_str() {
            "crossing-latency" => {
                json!({"loop": "open", "rate_per_s": args.rate.unwrap_or(1000.0)})
            }
            _ => mode(args).describe(),
        };
    }
    Ok(result)
}

fn print(result: &Value) {
    let label = result["label"].as_str().unwrap_or("");
    let l = &result["latency_ms"];
    println!(
        "{label:<20} {:>10} req/s {:>11} events/s   p50 {} p90 {} p99 {} p99.9 {} max {} ms   errors {}",
        result["requests_per_s"],
        result["events_per_s"],
        l["p50"],
        l["p90"],
        l["p99"],
        l["p99_9"],
        l["max"],
        result["errors"]
    );
}

async fn main_result(args: Args) -> Result<()> {
    match args.scenario.as_str() {
        "report" => {
            let dir = args.dir.as_ref().ok_or("report needs --dir")?;
            report::write(dir)?;
            println!("{}", dir.join("report.md").display());
            return Ok(());
        }
        "wait-serving" => {
            let target = args
                .target
                .as_deref()
                .ok_or("wait-serving needs --target")?;
            let since = args
                .since_unix_ns
                .ok_or("wait-serving needs --since-unix-ns")?;
            let ms = scenarios::wait_serving(target, since).await?;
            println!("{ms:.1}");
            return Ok(());
        }
        _ => {}
    }
    let result = scenario(&args).await?;
    print(&result);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)?;
    }
    Ok(())
}

/// The generator's worker threads. An open-loop run needs little CPU but
/// wakes a worker for every request it schedules; with two workers each
/// request also hopped between them (tonic's buffer task, the connection
/// task), which cost 0.16 ms of CPU per GetAccount on the cores the services
/// share, against 0.13 ms with one, and widened the services' own tail
/// (docs/performance.md, round 18). Closed loops and raw-insert keep one
/// worker per core: they can need more than one.
fn worker_threads(args: &Args) -> usize {
    args.threads.unwrap_or_else(|| match args.rate {
        Some(_) => 1,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

fn main() {
    let args = Args::parse();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads(&args))
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|runtime| runtime.block_on(main_result(args)));
    if let Err(error) = outcome {
        eprintln!("cascade-load: {error}");
        std::process::exit(1);
    }
}
