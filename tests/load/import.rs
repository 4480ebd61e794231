//! `import`: a tenant onboarding from its CRM. `--accounts` accounts, then
//! `--contacts` contacts per account naming their account by the CRM's id,
//! in BatchCreate calls of `--batch` records, `--concurrency` at a time;
//! then the whole import again, which must create nothing (idempotent by
//! external id). Each pass is timed.

use std::time::{Duration, Instant};

use cascade_proto::lifecycle::v1 as lc;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::scenarios::Clients;
use crate::stats::{Stats, round1, round3};
use crate::{Args, Result};

/// One pass's counts and timings.
struct Pass {
    created: u64,
    existing: u64,
    rejected: u64,
    accounts_s: f64,
    contacts_s: f64,
    stats: Stats,
}

fn account(run: &str, n: usize) -> lc::CreateAccountRequest {
    lc::CreateAccountRequest {
        account: Some(lc::Account {
            name: format!("Imported {n}"),
            domain: format!("i{n}-{run}.example"),
            external_id: format!("crm-a{n}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn contact(run: &str, n: usize, per_account: usize) -> lc::CreateContactRequest {
    let company = n / per_account;
    lc::CreateContactRequest {
        contact: Some(lc::Contact {
            email: format!("p{n}@i{company}-{run}.example"),
            external_id: format!("crm-p{n}"),
            ..Default::default()
        }),
        account_external_id: format!("crm-a{company}"),
        ..Default::default()
    }
}

/// Sends `batches` through `call`, `concurrency` at a time; returns (created,
/// existing, rejected) summed, recording each call's latency in `stats`.
async fn send<F, Fut>(
    batches: Vec<usize>,
    concurrency: usize,
    stats: &mut Stats,
    call: F,
) -> (u64, u64, u64)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(i32, i32, i32, usize), tonic::Status>>,
{
    let mut results = futures::stream::iter(batches.into_iter().map(|b| {
        let started = Instant::now();
        let call = call(b);
        async move { (started, call.await) }
    }))
    .buffer_unordered(concurrency.max(1));
    let mut totals = (0, 0, 0);
    while let Some((started, answer)) = results.next().await {
        match answer {
            Ok((created, existing, rejected, records)) => {
                stats.record(started, started, &Ok(records as u64));
                totals.0 += created as u64;
                totals.1 += existing as u64;
                totals.2 += rejected as u64;
            }
            Err(status) => stats.error(format!("{:?}", status.code())),
        }
    }
    totals
}

async fn pass(args: &Args, clients: &Clients, run: &str) -> Pass {
    let batch = args.batch.clamp(1, 1000);
    let accounts = args.accounts;
    let contacts = accounts * args.contacts;
    let batches = |total: usize| (0..total.div_ceil(batch)).collect::<Vec<_>>();
    let mut stats = Stats::new();
    let started = Instant::now();
    let a = send(batches(accounts), args.concurrency, &mut stats, |b| {
        let clients = clients.clone();
        let requests: Vec<_> = (b * batch..((b + 1) * batch).min(accounts))
            .map(|n| account(run, n))
            .collect();
        async move {
            let records = requests.len();
            let answer = clients
                .lifecycle(b as u64)
                .batch_create_accounts(clients.request(lc::BatchCreateAccountsRequest { requests }))
                .await?
                .into_inner();
            Ok((
                answer.created_count,
                answer.existing_count,
                answer.rejected_count,
                records,
            ))
        }
    })
    .await;
    let accounts_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let per_account = args.contacts;
    let c = send(batches(contacts), args.concurrency, &mut stats, |b| {
        let clients = clients.clone();
        let requests: Vec<_> = (b * batch..((b + 1) * batch).min(contacts))
            .map(|n| contact(run, n, per_account))
            .collect();
        async move {
            let records = requests.len();
            let answer = clients
                .lifecycle(b as u64)
                .batch_create_contacts(clients.request(lc::BatchCreateContactsRequest { requests }))
                .await?
                .into_inner();
            Ok((
                answer.created_count,
                answer.existing_count,
                answer.rejected_count,
                records,
            ))
        }
    })
    .await;
    Pass {
        created: a.0 + c.0,
        existing: a.1 + c.1,
        rejected: a.2 + c.2,
        accounts_s,
        contacts_s: started.elapsed().as_secs_f64(),
        stats,
    }
}

pub async fn run(args: &Args) -> Result<Value> {
    // A tenant of its own, so repeated bench runs start empty.
    let tenant = format!("import-{}", args.run_id);
    let clients = Clients::connect_as(args, &tenant).await?;
    let first = pass(args, &clients, &args.run_id).await;
    let again = pass(args, &clients, &args.run_id).await;
    let records = (args.accounts * (1 + args.contacts)) as f64;
    let first_s = first.accounts_s + first.contacts_s;
    let mut summary = first.stats.summary(Duration::from_secs_f64(first_s));
    summary["import"] = json!({
        "accounts": args.accounts,
        "contacts": args.accounts * args.contacts,
        "created": first.created,
        "rejected": first.rejected,
        "accounts_s": round3(first.accounts_s),
        "contacts_s": round3(first.contacts_s),
        "records_per_s": round1(records / first_s.max(1e-9)),
        "repeat_s": round3(again.accounts_s + again.contacts_s),
        "repeat_created": again.created,
        "repeat_existing": again.existing,
        "repeat_records_per_s": round1(records / (again.accounts_s + again.contacts_s).max(1e-9)),
    });
    summary["batch"] = json!(args.batch.clamp(1, 1000));
    Ok(summary)
}
