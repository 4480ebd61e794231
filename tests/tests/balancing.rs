//! Calls to lifecycle are spread over every address its name resolves to
//! (a headless Service in Kubernetes), and follow the name when it changes.
//! Two lifecycle instances stand behind one name; each has its own database
//! here, so what each received can be counted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cascade_chassis::client::{Resolver, balanced_channel};
use cascade_chassis::settings::ServiceSettings;
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use cascade_testkit::{TestDatabase, TestServer, request_for};

/// A name server for one name, whose answer the test changes.
struct StaticDns(Arc<Mutex<Vec<SocketAddr>>>);

impl Resolver for StaticDns {
    fn resolve(
        &self,
        host: String,
        _port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
    {
        let answer = if host == "lifecycle-headless.cascade.svc" {
            self.0.lock().expect("lock").clone()
        } else {
            Vec::new()
        };
        Box::pin(async move { Ok(answer) })
    }
}

async fn accounts_on(server: &TestServer) -> usize {
    LifecycleServiceClient::new(server.channel())
        .list_accounts(request_for(
            "lb",
            lc::ListAccountsRequest {
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner()
        .accounts
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_every_resolved_instance_and_follow_changes() {
    let (db_a, db_b) = (TestDatabase::sqlite(), TestDatabase::sqlite());
    let a = TestServer::start(
        cascade_lifecycle::build(&ServiceSettings::for_tests(db_a.settings.clone()))
            .await
            .expect("a"),
    );
    let b = TestServer::start(
        cascade_lifecycle::build(&ServiceSettings::for_tests(db_b.settings.clone()))
            .await
            .expect("b"),
    );
    let answer = Arc::new(Mutex::new(vec![a.addr, b.addr]));
    let channel = balanced_channel(
        "http://lifecycle-headless.cascade.svc:50051",
        Duration::from_secs(2),
        None,
        Arc::new(StaticDns(answer.clone())),
        Duration::from_millis(100),
    )
    .expect("channel");
    let client = LifecycleServiceClient::new(channel);

    // Concurrent calls, as scoring and opportunity make them.
    let create = |n: usize| {
        let mut client = client.clone();
        async move {
            client
                .create_account(request_for(
                    "lb",
                    lc::CreateAccountRequest {
                        account: Some(lc::Account {
                            name: format!("acct{n}"),
                            ..Default::default()
                        }),
                        request_id: String::new(),
                    },
                ))
                .await
                .expect("created through the balanced channel");
        }
    };
    for round in 0..10 {
        futures::future::join_all((0..8).map(|i| create(round * 8 + i))).await;
    }
    let (on_a, on_b) = (accounts_on(&a).await, accounts_on(&b).await);
    assert_eq!(on_a + on_b, 80);
    assert!(
        on_a > 0 && on_b > 0,
        "both instances received calls: {on_a} and {on_b}"
    );

    // The name now resolves to A only: after the next resolution, B gets nothing.
    answer.lock().expect("lock").retain(|addr| *addr == a.addr);
    tokio::time::sleep(Duration::from_millis(400)).await;
    for round in 0..5 {
        futures::future::join_all((0..8).map(|i| create(1000 + round * 8 + i))).await;
    }
    assert_eq!(
        accounts_on(&b).await,
        on_b,
        "no call reached the removed instance"
    );
    assert_eq!(accounts_on(&a).await, on_a + 40);
    println!(
        "balancing: 80 calls split {on_a}/{on_b} over two instances; 40 after the change all went to the remaining one"
    );
    a.stop().await;
    b.stop().await;
}
