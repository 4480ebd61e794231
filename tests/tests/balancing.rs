//! Calls to lifecycle are spread over every address its name resolves to
//! (a headless Service in Kubernetes), and follow the name when it changes.
//! Two lifecycle instances stand behind one name; each has its own database
//! here, so what each received can be counted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cascade_chassis::client::{Resolver, balanced_channel};
use cascade_proto::lifecycle::v1 as lc;
use cascade_testkit::{Caller, Lifecycle, Service, TestDatabase, TestSystem, eventually};

/// The tenant every call here is made for.
const TENANT: &str = "lb";

/// What the name server answers, and how often it was asked.
struct Answer {
    addresses: Vec<SocketAddr>,
    resolutions: usize,
}

/// A name server for one name, whose answer the test changes.
struct StaticDns(Arc<Mutex<Answer>>);

impl Resolver for StaticDns {
    fn resolve(
        &self,
        host: String,
        _port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
    {
        let answer = if host == "lifecycle-headless.cascade.svc" {
            let mut answer = self.0.lock().expect("lock");
            answer.resolutions += 1;
            answer.addresses.clone()
        } else {
            Vec::new()
        };
        Box::pin(async move { Ok(answer) })
    }
}

async fn accounts_on(lifecycle: &Lifecycle) -> usize {
    lifecycle
        .public()
        .list_accounts(lifecycle.req(lc::ListAccountsRequest {
            page_size: 500,
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner()
        .accounts
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_every_resolved_instance_and_follow_changes() {
    let (db_a, db_b) = (TestDatabase::sqlite(), TestDatabase::sqlite());
    let a = TestSystem::lifecycle_on(&db_a).await;
    let b = TestSystem::lifecycle_on(&db_b).await;
    let (a_addr, b_addr) = (a.addr(Service::Lifecycle), b.addr(Service::Lifecycle));
    let (lifecycle_a, lifecycle_b) = (
        a.lifecycle().as_tenant(TENANT),
        b.lifecycle().as_tenant(TENANT),
    );
    let dns = Arc::new(Mutex::new(Answer {
        addresses: vec![a_addr, b_addr],
        resolutions: 0,
    }));
    let channel = balanced_channel(
        "http://lifecycle-headless.cascade.svc:50051",
        Duration::from_secs(2),
        None,
        Arc::new(StaticDns(dns.clone())),
        Duration::from_millis(100),
    )
    .expect("channel");
    let client = Lifecycle::new(channel, Caller::tenant(TENANT));

    // Concurrent calls, as scoring and opportunity make them.
    let create = |n: usize| {
        let client = client.clone();
        async move {
            client.create_account(&format!("acct{n}"), "").await;
        }
    };
    for round in 0..10 {
        futures::future::join_all((0..8).map(|i| create(round * 8 + i))).await;
    }
    let (on_a, on_b) = (
        accounts_on(&lifecycle_a).await,
        accounts_on(&lifecycle_b).await,
    );
    assert_eq!(on_a + on_b, 80);
    assert!(
        on_a > 0 && on_b > 0,
        "both instances received calls: {on_a} and {on_b}"
    );

    // The name now resolves to A only. A resolution that sees the change
    // hands B's removal to the channel before the next one starts: once
    // that next one has started, B gets nothing.
    let seen = {
        let mut answer = dns.lock().expect("lock");
        answer.addresses.retain(|addr| *addr == a_addr);
        answer.resolutions
    };
    eventually(
        "the name to be resolved again after the change",
        async || {
            let resolutions = dns.lock().expect("lock").resolutions;
            if resolutions >= seen + 2 {
                Ok(())
            } else {
                Err(resolutions)
            }
        },
    )
    .await;
    for round in 0..5 {
        futures::future::join_all((0..8).map(|i| create(1000 + round * 8 + i))).await;
    }
    assert_eq!(
        accounts_on(&lifecycle_b).await,
        on_b,
        "no call reached the removed instance"
    );
    assert_eq!(accounts_on(&lifecycle_a).await, on_a + 40);
    println!(
        "balancing: 80 calls split {on_a}/{on_b} over two instances; 40 after the change all went to the remaining one"
    );
    a.stop().await;
    b.stop().await;
}
