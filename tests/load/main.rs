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

use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const USAGE: &str = "\
usage: cascade-load --scenario NAME [options]

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
  report              gather DIR/*.json into DIR/report.md and report.json (--dir DIR)

options:
  --duration SECS        how long to apply load (default 10)
  --rate N               open loop: N requests/s, latency from each intended send time
  --concurrency N        closed loop: N workers back to back (default 8; the default loop)
  --channels N           HTTP/2 connections per service (default 2)
  --threads N            the generator's worker threads (default: 1 with --rate, open loop;
                         one per core otherwise)
  --batch N              activities per call (default 100)
  --lifecycle URL        default http://127.0.0.1:50051
  --scoring URL          default http://127.0.0.1:50052
  --tenant T             x-tenant-id (default bench)
  --accounts N           accounts made for the run (default 200)
  --contacts N           contacts per account (default 10)
  --fixture FILE         reuse (or save) the accounts made for this tenant
  --json FILE            write the result there
  --label NAME           name of the run in the report (default: the scenario)
  --database-url URL     raw-insert: sqlite://FILE or a PostgreSQL server URL (a fresh database is created)
  --raw-table T          raw-insert: `scoring` (scoring's activities table and its indexes, the default)
                         or `bare` (the same columns, primary key only)
  --activities N         simulate: how many stored activities to aim for (default 1000000)
  --probe-interval-ms N  crossing-latency: time between probes (default 100)
  --ingest-rate N        load scenarios: RecordActivities at N events/s (open loop, --batch per call)
                         in the background while the scenario runs
";

pub struct Args {
    scenario: String,
    label: Option<String>,
    duration: f64,
    rate: Option<f64>,
    concurrency: usize,
    channels: usize,
    threads: Option<usize>,
    batch: usize,
    lifecycle: String,
    scoring: String,
    tenant: String,
    accounts: usize,
    contacts: usize,
    fixture: Option<PathBuf>,
    json: Option<PathBuf>,
    database_url: Option<String>,
    raw_table: String,
    activities: u64,
    probe_interval_ms: u64,
    ingest_rate: Option<f64>,
    target: Option<String>,
    since_unix_ns: Option<u128>,
    dir: Option<PathBuf>,
    /// Makes event ids, request ids and domains unique to this run.
    run_id: String,
}

fn parse() -> Result<Args> {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let mut args = Args {
        scenario: String::new(),
        label: None,
        duration: 10.0,
        rate: None,
        concurrency: 8,
        channels: 2,
        threads: None,
        batch: 100,
        lifecycle: "http://127.0.0.1:50051".into(),
        scoring: "http://127.0.0.1:50052".into(),
        tenant: "bench".into(),
        accounts: 200,
        contacts: 10,
        fixture: None,
        json: None,
        database_url: None,
        raw_table: "scoring".into(),
        activities: 1_000_000,
        probe_interval_ms: 100,
        ingest_rate: None,
        target: None,
        since_unix_ns: None,
        dir: None,
        run_id: format!("r{unix_ms}-{}", std::process::id()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            print!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--scenario" => args.scenario = value,
            "--label" => args.label = Some(value),
            "--duration" => args.duration = value.parse().map_err(|e| bad(&e))?,
            "--rate" => args.rate = Some(value.parse().map_err(|e| bad(&e))?),
            "--concurrency" => args.concurrency = value.parse().map_err(|e| bad(&e))?,
            "--channels" => args.channels = value.parse().map_err(|e| bad(&e))?,
            "--threads" => args.threads = Some(value.parse().map_err(|e| bad(&e))?),
            "--batch" => args.batch = value.parse().map_err(|e| bad(&e))?,
            "--lifecycle" => args.lifecycle = value,
            "--scoring" => args.scoring = value,
            "--tenant" => args.tenant = value,
            "--accounts" => args.accounts = value.parse().map_err(|e| bad(&e))?,
            "--contacts" => args.contacts = value.parse().map_err(|e| bad(&e))?,
            "--fixture" => args.fixture = Some(value.into()),
            "--json" => args.json = Some(value.into()),
            "--database-url" => args.database_url = Some(value),
            "--raw-table" if value == "scoring" || value == "bare" => args.raw_table = value,
            "--activities" => args.activities = value.parse().map_err(|e| bad(&e))?,
            "--probe-interval-ms" => args.probe_interval_ms = value.parse().map_err(|e| bad(&e))?,
            "--ingest-rate" => args.ingest_rate = Some(value.parse().map_err(|e| bad(&e))?),
            "--target" => args.target = Some(value),
            "--since-unix-ns" => args.since_unix_ns = Some(value.parse().map_err(|e| bad(&e))?),
            "--dir" => args.dir = Some(value.into()),
            _ => return Err(format!("unknown option {flag}\n\n{USAGE}").into()),
        }
    }
    if args.scenario.is_empty() {
        return Err(format!("--scenario is required\n\n{USAGE}").into());
    }
    if args.accounts == 0 || args.contacts == 0 || args.channels == 0 || args.threads == Some(0) {
        return Err("--accounts, --contacts, --channels and --threads must be at least 1".into());
    }
    Ok(args)
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
    let outcome = parse().and_then(|args| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads(&args))
            .enable_all()
            .build()?;
        runtime.block_on(main_result(args))
    });
    if let Err(error) = outcome {
        eprintln!("cascade-load: {error}");
        std::process::exit(1);
    }
}
