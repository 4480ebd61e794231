//! Security of the real binaries: JWT authentication and roles, service
//! tokens between services, TLS and mTLS with certificates made at test
//! time, request limits, and secrets kept out of logs and errors.

mod common;

use std::time::Duration;

use cascade_proto::common::v1::AccountStage as S;
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use cascade_proto::opportunity::v1 as op;
use cascade_proto::scoring::v1 as sc;
use cascade_testkit::fixtures::{account, by_email, score_delivery};
use cascade_testkit::{
    Caller, Lifecycle, Scoring, TempDir, TestDatabase, WebhookReceiver, request_for,
};
use common::{Process, System};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_types::StatusExt;

const SECRET: &str = "test-only-hs256-secret-0123456789abcdef";
const SERVICES: [&str; 3] = ["LIFECYCLE", "SCORING", "OPPORTUNITY"];

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn claims(sub: &str, tenant: Option<&str>, roles: &[&str]) -> serde_json::Value {
    let mut claims = serde_json::json!({
        "sub": sub, "roles": roles, "iss": "cascade", "aud": "cascade", "exp": unix_now() + 600,
    });
    if let Some(tenant) = tenant {
        claims["tenant"] = tenant.into();
    }
    claims
}

fn hs256(claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

fn token(tenant: &str, roles: &[&str]) -> String {
    hs256(&claims("jane@acme.test", Some(tenant), roles), SECRET)
}

/// A caller presenting a token of `tenant` with `roles` (and no tenant
/// header: the token names it).
fn bearer(tenant: &str, roles: &[&str]) -> Caller {
    Caller::bearer(&token(tenant, roles))
}

fn jwt_env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for service in SERVICES {
        env.push((format!("CASCADE_{service}__AUTH__MODE"), "jwt".to_owned()));
        env.push((
            format!("CASCADE_{service}__AUTH__HS256_SECRET"),
            SECRET.to_owned(),
        ));
        for (key, value) in extra {
            env.push((format!("CASCADE_{service}__{key}"), (*value).to_owned()));
        }
    }
    env
}

/// Activities by email that take a fresh account at `domain` to PRIORITIZED:
/// scoring resolves each email through lifecycle and delivers the score.
fn prioritizing_batch(domain: &str) -> Vec<sc::Activity> {
    vec![
        by_email("s1", "webinar_attended", &format!("ann@{domain}")),
        by_email("s2", "case_study_download", &format!("ann@{domain}")),
        by_email("s3", "pricing_page_visit", &format!("bob@{domain}")),
        by_email("s4", "webinar_attended", &format!("cy@{domain}")),
    ]
}

#[tokio::test]
async fn jwt_mode_checks_tokens_roles_and_tenants() {
    let dir = TempDir::new("jwt");
    // An ES256 key pair, as an identity provider would hold it.
    let es_key = KeyPair::generate().expect("P-256 key");
    let public_pem = dir.path().join("issuer-es256.pub.pem");
    std::fs::write(&public_pem, es_key.public_key_pem()).expect("write key");
    let public_path = public_pem.display().to_string();
    let system = System::start_with(
        &TestDatabase::sqlite(),
        1,
        jwt_env(&[("AUTH__PUBLIC_KEY_FILES", &public_path)]),
    )
    .await;
    let mut lifecycle = system.lifecycle(0);
    let mut scoring = system.scoring(0);
    let mut opportunity = system.opportunity(0);

    // No credentials, or bad ones: UNAUTHENTICATED, and the message says why.
    let missing = lifecycle
        .list_accounts(request_for("acme", lc::ListAccountsRequest::default()))
        .await
        .expect_err("no token");
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    assert!(
        missing.message().contains("Bearer"),
        "{}",
        missing.message()
    );
    let mut expired = claims("jane", Some("acme"), &["admin"]);
    expired["exp"] = (unix_now() - 3600).into();
    let mut wrong_audience = claims("jane", Some("acme"), &["admin"]);
    wrong_audience["aud"] = "another-system".into();
    // A year-long token: more than auth.max_token_lifetime_seconds (a day).
    let mut lasting = claims("jane", Some("acme"), &["admin"]);
    lasting["exp"] = (unix_now() + 365 * 86_400).into();
    let bad_tokens = [
        ("expired", hs256(&expired, SECRET), "expired"),
        (
            "valid for a year",
            hs256(&lasting, SECRET),
            "max_token_lifetime_seconds",
        ),
        (
            "forged",
            hs256(
                &claims("jane", Some("acme"), &["admin"]),
                "an-attackers-secret-0123456789abcdef",
            ),
            "signature",
        ),
        ("wrong audience", hs256(&wrong_audience, SECRET), "audience"),
        ("garbage", "not.a.jwt".to_owned(), "not a JWT"),
    ];
    for (what, bad, reason) in &bad_tokens {
        let status = scoring
            .get_scoring_model(Caller::bearer(bad).req(sc::GetScoringModelRequest::default()))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(
            status.message().contains(reason),
            "{what}: {}",
            status.message()
        );
        assert!(
            !status.message().contains(bad.as_str()),
            "{what}: token echoed"
        );
    }
    // Health stays open for probes.
    assert!(system.lifecycle[0].serving().await);

    // Roles: each RPC needs its permission.
    let reader = bearer("acme", &["reader"]);
    let writer = bearer("acme", &["writer"]);
    let operator = bearer("acme", &["operator"]);
    let admin = bearer("acme", &["admin"]);
    let as_reader = system.lifecycle_with(0, reader.clone());
    let denied = as_reader
        .try_create_account(account("Initech", "initech.example", ""), "")
        .await
        .expect_err("reader cannot write");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("writer"), "{}", denied.message());
    // A token made by `cascade-token` (README, "Security") is accepted.
    let secret_file = dir.path().join("hs256-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write secret");
    let minted = std::process::Command::new(env!("CARGO_BIN_EXE_cascade-token"))
        .arg("--secret-file")
        .arg(&secret_file)
        .args(["--tenant", "acme", "--roles", "reader,writer"])
        .output()
        .expect("cascade-token runs");
    assert!(minted.status.success(), "{minted:?}");
    let minted = String::from_utf8(minted.stdout).expect("utf-8");
    system
        .lifecycle_with(0, Caller::bearer(minted.trim()))
        .try_create_account(account("Hooli", "hooli.example", ""), "")
        .await
        .expect("a cascade-token writer creates");
    let id = system
        .lifecycle_with(0, writer.clone())
        .try_create_account(account("Initech", "initech.example", ""), "")
        .await
        .expect("writer creates")
        .account_id;
    let account = as_reader.try_account(&id).await.expect("reader reads");
    assert_eq!(account.name, "Initech");
    let qualify = |caller: &Caller| {
        caller.req(lc::QualifyAccountRequest {
            account_id: id.clone(),
            reason: "security test".into(),
        })
    };
    let denied = lifecycle
        .qualify_account(qualify(&writer))
        .await
        .expect_err("writer cannot act");
    assert_eq!(denied.code(), Code::PermissionDenied);
    // The operator passes authorisation; the stage rules then decide (the
    // account is TARGETED, so qualifying it is refused by the rules, not by auth).
    let ruled = lifecycle.qualify_account(qualify(&operator)).await;
    assert!(
        ruled
            .as_ref()
            .err()
            .is_none_or(|s| s.code() == Code::FailedPrecondition),
        "{ruled:?}"
    );
    let denied = scoring
        .update_scoring_model(writer.req(sc::UpdateScoringModelRequest::default()))
        .await
        .expect_err("writer cannot change the model");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = opportunity
        .update_opportunity_settings(operator.req(op::UpdateOpportunitySettingsRequest::default()))
        .await
        .expect_err("operator cannot change settings");
    assert_eq!(denied.code(), Code::PermissionDenied);
    // The webhook URL is a credential: admins read it whole, other roles
    // only where it points, in the current version and in older ones.
    let hook = "https://hooks.example.com/webhookb2/abc@def/IncomingWebhook/0123456789";
    let written = lifecycle
        .update_lifecycle_settings(admin.req(lc::UpdateLifecycleSettingsRequest {
            settings: Some(lc::LifecycleSettings {
                webhook_url: hook.into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["webhook_url".into()],
            }),
        }))
        .await
        .expect("admin sets the webhook")
        .into_inner()
        .settings
        .expect("settings");
    assert_eq!(written.webhook_url, hook);
    let read_as = async |caller: &Caller, version: i64| {
        lifecycle
            .clone()
            .get_lifecycle_settings(caller.req(lc::GetLifecycleSettingsRequest { version }))
            .await
            .expect("settings read")
            .into_inner()
            .settings
            .expect("settings")
            .webhook_url
    };
    assert_eq!(read_as(&admin, 0).await, hook);
    for version in [0, written.version] {
        assert_eq!(
            read_as(&reader, version).await,
            "https://hooks.example.com/…"
        );
        assert_eq!(
            read_as(&operator, version).await,
            "https://hooks.example.com/…"
        );
    }
    // Cleared again: the test's notifications are not sent anywhere.
    lifecycle
        .update_lifecycle_settings(admin.req(lc::UpdateLifecycleSettingsRequest {
            settings: Some(lc::LifecycleSettings::default()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["webhook_url".into()],
            }),
        }))
        .await
        .expect("admin clears the webhook");
    // Only services may call the internal Apply* RPCs; not even an admin
    // (its token, no actor header: not the kit's delivery as scoring).
    let apply = score_delivery("forged-score", &id, 1, 500.0);
    let denied = system
        .lifecycle_internal(0)
        .apply_engagement_score(admin.req(apply))
        .await
        .expect_err("admin cannot apply");
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Tenants come from the token: another tenant's token sees nothing, and
    // a header cannot switch a person's token to another tenant.
    let hidden = system
        .lifecycle_with(0, bearer("globex", &["admin"]))
        .try_account(&id)
        .await
        .expect_err("other tenant");
    assert_eq!(hidden.code(), Code::NotFound);
    let mut switched = reader.req(lc::GetAccountRequest {
        account_id: id.clone(),
    });
    switched
        .metadata_mut()
        .insert("x-tenant-id", "globex".parse().expect("ascii"));
    let denied = lifecycle
        .get_account(switched)
        .await
        .expect_err("tenant switch");
    assert_eq!(denied.code(), Code::PermissionDenied);

    // ES256 tokens verify against the configured public key.
    let es256 = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims("idp-user", Some("acme"), &["reader"]),
        &EncodingKey::from_ec_pem(es_key.serialize_pem().as_bytes()).expect("ec key"),
    )
    .expect("es256 token");
    system
        .lifecycle_with(0, Caller::bearer(&es256))
        .try_account(&id)
        .await
        .expect("ES256 token accepted");

    // Service to service: scoring resolves emails through lifecycle and
    // delivers scores with its own minted service token; opportunity checks
    // the account with its token.
    let recorded = system
        .scoring_with(0, writer.clone())
        .try_record(prioritizing_batch("initech.example"))
        .await
        .expect("writer records");
    assert_eq!(recorded.recorded_count, 4, "{:?}", recorded.results);
    as_reader.wait_for_stage(&id, S::Prioritized).await;
    lifecycle
        .qualify_account(qualify(&operator))
        .await
        .expect("the operator qualifies a PRIORITIZED account");
    system
        .opportunity_with(0, writer.clone())
        .create(&id, "Initech platform")
        .await;
    as_reader.wait_for_stage(&id, S::Pipeline).await;
    // The history records the token's subject as the actor.
    let transitions = as_reader.transitions(&id).await;
    assert!(
        transitions
            .iter()
            .any(|t| t.actor == "jane@acme.test" && t.to_stage == S::Qualified as i32),
        "{transitions:?}"
    );
    system.stop().await;
}

/// A CA, and certificates it signs for `localhost` / 127.0.0.1.
struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let dir = TempDir::new("pki");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Cascade test CA");
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca");
        Self { dir, ca }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Writes `<name>.pem` and `<name>.key` and returns their PEM text.
    fn issue(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let (cert, key) = (cert.pem(), key.serialize_pem());
        std::fs::write(self.path(&format!("{name}.pem")), &cert).expect("write");
        std::fs::write(self.path(&format!("{name}.key")), &key).expect("write");
        (cert, key)
    }

    fn client_tls(&self, identity: Option<(String, String)>) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(Certificate::from_pem(self.ca.pem()));
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tls
    }

    fn server_env(&self, service: &str, name: &str) -> Vec<(String, String)> {
        [
            ("CERT_FILE", self.path(&format!("{name}.pem"))),
            ("KEY_FILE", self.path(&format!("{name}.key"))),
            ("CA_FILE", self.path("ca.pem")),
            ("REQUIRE_CLIENT_CERT", "true".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("CASCADE_{service}__TLS__{k}"), v))
        .collect()
    }
}

/// Whether the call failed in the transport (the server dropped the
/// connection during or right after the TLS handshake) rather than being
/// answered by a handler. The status code varies with when the client
/// notices (UNAVAILABLE, CANCELLED, or INTERNAL when it reads a TLS alert as
/// HTTP/2), so the test looks at the cause instead.
fn is_transport_refusal(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    status
        .source()
        .is_some_and(|cause| cause.downcast_ref::<tonic::transport::Error>().is_some())
}

#[tokio::test]
async fn mtls_between_callers_and_services() {
    let pki = Pki::new();
    let client_identity = pki.issue("test-client");
    pki.issue("lifecycle");
    pki.issue("scoring");
    let dir = TempDir::new("tls");
    let lifecycle_db = TestDatabase::sqlite();
    let scoring_db = TestDatabase::sqlite();

    let mut lifecycle = Process::new("lifecycle", &lifecycle_db.settings.url, dir.path())
        .with_client_tls(pki.client_tls(Some(client_identity.clone())));
    for (k, v) in pki.server_env("LIFECYCLE", "lifecycle") {
        lifecycle = lifecycle.with_env(&k, &v);
    }
    lifecycle.start().await;
    // Scoring calls lifecycle over https, presenting its own certificate.
    let lifecycle_url = format!("https://localhost:{}", lifecycle.port());
    let mut scoring = Process::new("scoring", &scoring_db.settings.url, dir.path())
        .calling(&lifecycle_url)
        .with_client_tls(pki.client_tls(Some(client_identity.clone())));
    for (k, v) in pki.server_env("SCORING", "scoring") {
        scoring = scoring.with_env(&k, &v);
    }
    scoring.start().await;

    // Plaintext, TLS without a client certificate, and a certificate from
    // another CA get nowhere.
    let refused_with = async |tls: Option<ClientTlsConfig>, what: &str| {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            Channel::from_shared(format!("{scheme}://127.0.0.1:{}", lifecycle.port()))
                .expect("url");
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).expect("tls");
        }
        let refused = LifecycleServiceClient::new(endpoint.connect_lazy())
            .list_accounts(request_for("acme", lc::ListAccountsRequest::default()))
            .await
            .expect_err(what);
        assert!(is_transport_refusal(&refused), "{what}: {refused:?}");
    };
    refused_with(None, "plaintext refused").await;
    refused_with(Some(pki.client_tls(None)), "no client certificate refused").await;
    let (cert, key) = Pki::new().issue("stranger");
    let foreign = pki.client_tls(None).identity(Identity::from_pem(cert, key));
    refused_with(Some(foreign), "a certificate from another CA was accepted").await;

    // With the certificate: calls work, and scoring reaches lifecycle over mTLS.
    let client = Lifecycle::new(lifecycle.channel(), Caller::tenant("acme"));
    let id = client
        .try_create_account(account("Initech", "initech.example", ""), "")
        .await
        .expect("mTLS call")
        .account_id;
    let recorded = Scoring::new(scoring.channel(), Caller::tenant("acme"))
        .try_record(prioritizing_batch("initech.example"))
        .await
        .expect("scoring over mTLS");
    assert_eq!(recorded.recorded_count, 4, "{:?}", recorded.results);
    client
        .wait_for_account(&id, "scores to reach lifecycle over mTLS", |a| {
            a.stage == S::Prioritized as i32
        })
        .await;
    scoring.terminate().await;
    lifecycle.terminate().await;
}

#[tokio::test]
async fn limits_answer_with_clear_statuses() {
    let mut env = Vec::new();
    for service in SERVICES {
        env.push((
            format!("CASCADE_{service}__SERVER__MAX_MESSAGE_BYTES"),
            "262144".to_owned(),
        ));
        env.push((
            format!("CASCADE_{service}__SERVER__INGEST_RATE_PER_TENANT"),
            "10".to_owned(),
        ));
        env.push((
            format!("CASCADE_{service}__SERVER__INGEST_BURST_PER_TENANT"),
            "1000".to_owned(),
        ));
    }
    let system = System::start_with(&TestDatabase::sqlite(), 1, env).await;
    let lifecycle = system.lifecycle_as(0, "acme");
    let scoring = system.scoring_as(0, "acme");

    // Oversized message: refused before decoding.
    let huge = lifecycle
        .try_create_account(account(&"x".repeat(300_000), "big.example", ""), "")
        .await
        .expect_err("oversized");
    // tonic's code for a message over the decoding limit.
    assert_eq!(huge.code(), Code::OutOfRange, "{huge:?}");
    assert!(huge.message().contains("too large"), "{}", huge.message());
    // Too long a field, too large a page: INVALID_ARGUMENT naming the field.
    let long = lifecycle
        .try_create_account(account(&"x".repeat(1_000), "long.example", ""), "")
        .await
        .expect_err("name too long");
    assert_eq!(long.code(), Code::InvalidArgument);
    assert!(
        long.message().contains("account.name"),
        "{}",
        long.message()
    );
    let page = lifecycle
        .public()
        .list_accounts(lifecycle.req(lc::ListAccountsRequest {
            page_size: 100_000,
            ..Default::default()
        }))
        .await
        .expect_err("page too large");
    assert_eq!(page.code(), Code::InvalidArgument);
    assert!(page.message().contains("page_size"), "{}", page.message());

    // Ingestion rate per tenant: the burst passes, the next batch waits.
    let id = lifecycle
        .try_create_account(account("Initech", "initech.example", ""), "")
        .await
        .expect("account")
        .account_id;
    let batch = |prefix: &str, n: usize| -> Vec<sc::Activity> {
        (0..n)
            .map(|i| sc::Activity {
                account_id: id.clone(),
                ..by_email(&format!("{prefix}-{i}"), "email_open", "")
            })
            .collect()
    };
    let too_big = scoring
        .try_record(batch("big", 1001))
        .await
        .expect_err("batch too large");
    assert_eq!(too_big.code(), Code::InvalidArgument);
    scoring
        .try_record(batch("a", 1000))
        .await
        .expect("the burst passes");
    let limited = scoring
        .try_record(batch("b", 50))
        .await
        .expect_err("over the rate");
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    let retry = limited
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(6),
        "{retry:?}"
    );
    // Another tenant has its own allowance.
    let other = system
        .lifecycle_as(0, "globex")
        .try_create_account(account("Globex", "globex.example", ""), "")
        .await
        .expect("account")
        .account_id;
    system
        .scoring_as(0, "globex")
        .try_record(vec![sc::Activity {
            account_id: other,
            ..by_email("g-1", "email_open", "")
        }])
        .await
        .expect("another tenant is not limited");
    // Not a wait: honouring the delay the server advised is what is tested.
    tokio::time::sleep(retry).await;
    scoring
        .try_record(batch("c", 5))
        .await
        .expect("allowed again after RetryInfo's delay");
    system.stop().await;
}

#[tokio::test]
async fn secrets_never_reach_logs_or_errors() {
    let database_password = "db-password-never-logged";
    // PostgreSQL (trust auth ignores the password) when configured, so a
    // real password sits in the database URL; SQLite otherwise.
    let backend = match TestDatabase::postgres().await {
        Some(db) => db,
        None => TestDatabase::sqlite(),
    };
    let mut env = jwt_env(&[]);
    env.push(("RUST_LOG".to_owned(), "debug".to_owned()));
    let system = System::start_with_password(&backend, env, database_password).await;
    let webhook_secret = "webhook-secret-never-logged";
    let receiver = WebhookReceiver::start().await;
    let mut lifecycle = system.lifecycle(0);
    let admin = token("acme", &["admin"]);
    let writer = token("acme", &["writer"]);
    let bad_token = hs256(
        &claims("mallory", Some("acme"), &["admin"]),
        "mallorys-own-secret-0123456789abcdef",
    );

    system
        .lifecycle_with(0, Caller::bearer(&admin))
        .set_webhook(&receiver.url, Some(webhook_secret))
        .await;
    let read_back = lifecycle
        .get_lifecycle_settings(
            Caller::bearer(&admin).req(lc::GetLifecycleSettingsRequest::default()),
        )
        .await
        .expect("settings")
        .into_inner()
        .settings
        .expect("settings");
    assert!(read_back.webhook_secret.is_empty() && read_back.webhook_secret_set);
    let refused = lifecycle
        .list_accounts(Caller::bearer(&bad_token).req(lc::ListAccountsRequest::default()))
        .await
        .expect_err("bad token");
    assert!(!format!("{refused:?}").contains(&bad_token));
    let as_writer = system.lifecycle_with(0, Caller::bearer(&writer));
    let id = as_writer
        .create_account_with(account("Initech", "initech.example", ""))
        .await
        .account_id;
    system
        .scoring_with(0, Caller::bearer(&writer))
        .record(prioritizing_batch("initech.example"))
        .await;
    as_writer.wait_for_stage(&id, S::Prioritized).await;
    // The signed notification went out: the secret was used, not printed.
    let delivered = receiver.wait_for(1).await;
    assert!(!delivered[0].body.contains(webhook_secret));

    let logs: String = system
        .lifecycle
        .iter()
        .chain(&system.scoring)
        .chain(&system.opportunity)
        .map(Process::log_text)
        .collect();
    assert!(
        logs.contains("DEBUG"),
        "the services did not log at debug level"
    );
    for secret in [
        SECRET,
        &admin,
        &writer,
        &bad_token,
        webhook_secret,
        database_password,
    ] {
        assert!(
            !logs.contains(secret),
            "a secret appears in the logs: {secret}"
        );
    }
    system.stop().await;
}

/// Every RPC in the API is given a permission by exactly one service's table
/// (in `jwt` mode an RPC no table names is refused, so one forgotten here
/// would be unreachable).
#[test]
fn every_rpc_has_a_permission_in_its_service() {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(cascade_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let tables = [
        ("lifecycle", cascade_lifecycle::IDENTITY.permissions),
        ("scoring", cascade_scoring::IDENTITY.permissions),
        ("opportunity", cascade_opportunity::IDENTITY.permissions),
    ];
    let mut rpcs = 0;
    for file in set.file {
        let package = file.package.unwrap_or_default();
        if !package.starts_with("cascade.") {
            continue;
        }
        for service in file.service {
            let service_name = format!("{package}.{}", service.name.unwrap_or_default());
            for method in service.method {
                let method = method.name.unwrap_or_default();
                if package == "cascade.admin.v1" {
                    // Served by the chassis in every service, with one table.
                    assert!(
                        cascade_chassis::auth::chassis_permission(&service_name, &method).is_some(),
                        "{service_name}/{method} has no permission in the chassis"
                    );
                    rpcs += 1;
                    continue;
                }
                let owners: Vec<&str> = tables
                    .iter()
                    .filter(|(_, table)| table(&service_name, &method).is_some())
                    .map(|(name, _)| *name)
                    .collect();
                assert_eq!(
                    owners.len(),
                    1,
                    "{service_name}/{method}: named by {owners:?}"
                );
                assert!(
                    service_name.contains(&format!(".{}.", owners[0])),
                    "{service_name}/{method} is given a permission by {}",
                    owners[0]
                );
                rpcs += 1;
            }
        }
    }
    assert!(rpcs >= 40, "found only {rpcs} RPCs");
}
