//! Browsers cannot read HTTP/2 trailers, so they speak gRPC-Web: every
//! service answers it on its gRPC port over HTTP/1.1, with CORS for the
//! configured origins only. These tests act as a browser does (a preflight,
//! then POSTs of gRPC-Web frames over plain HTTP/1.1) and check that such
//! calls pass the same layers as gRPC: tenant metadata, validation with its
//! details, authentication.

use cascade_chassis::auth::AuthMode;
use cascade_chassis::secret::Secret;
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::opportunity::v1 as op;
use cascade_proto::scoring::v1 as sc;
use cascade_testkit::fixtures::{violated_fields, violations};
use cascade_testkit::{Service, TempDir, TestDatabase, TestSystem, on_each_database};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use tonic::Code;

/// The origin the service allows (where the web app is served from).
const ALLOWED: &str = "https://app.cascade.test";
/// Any other site.
const OTHER: &str = "https://elsewhere.test";
const TENANT: &str = "browser";
const CREATE: &str = "cascade.lifecycle.v1.LifecycleService/CreateAccount";
const GET: &str = "cascade.lifecycle.v1.LifecycleService/GetAccount";
/// gRPC-Web's binary content type, as grpc-web and Connect clients send it.
const GRPC_WEB: &str = "application/grpc-web+proto";
/// The flag of the frame that carries the trailers.
const TRAILERS_FLAG: u8 = 0x80;
/// What a browser client asks to send in its preflight.
const REQUESTED_HEADERS: &str =
    "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization,x-tenant-id,x-actor-id";
const SECRET: &str = "test-only-hs256-secret-0123456789abcdef";

/// A message as a gRPC-Web frame: flag 0 (uncompressed), its length
/// big-endian, the message.
fn frame(message: &impl Message) -> Vec<u8> {
    let message = message.encode_to_vec();
    let length = u32::try_from(message.len()).expect("a small message");
    let mut framed = vec![0];
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(&message);
    framed
}

/// A gRPC-Web answer as a browser client reads it.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    /// The data frames' messages.
    messages: Vec<Vec<u8>>,
    /// The trailer frame's text (`name:value` lines), when there is one.
    trailer_text: Option<String>,
}

impl Answer {
    /// Splits a response body into frames; fails on anything malformed.
    fn read(status: StatusCode, headers: HeaderMap, body: &[u8]) -> Self {
        let mut answer = Self {
            status,
            headers,
            messages: Vec::new(),
            trailer_text: None,
        };
        let mut rest = body;
        while !rest.is_empty() {
            assert!(
                answer.trailer_text.is_none(),
                "nothing follows the trailers: {body:?}"
            );
            assert!(rest.len() >= 5, "a frame header is 5 bytes: {body:?}");
            let length = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            assert!(rest.len() >= 5 + length, "a frame cut short: {body:?}");
            let payload = &rest[5..5 + length];
            match rest[0] {
                0 => answer.messages.push(payload.to_vec()),
                TRAILERS_FLAG => {
                    let text = String::from_utf8(payload.to_vec()).expect("trailers are text");
                    answer.trailer_text = Some(text);
                }
                flag => panic!("unexpected frame flag {flag:#x}: {body:?}"),
            }
            rest = &rest[5 + length..];
        }
        answer
    }

    /// The trailers, as headers (names are case-insensitive in gRPC-Web).
    fn trailers(&self) -> HeaderMap {
        let mut trailers = HeaderMap::new();
        for line in self.trailer_text.iter().flat_map(|t| t.split("\r\n")) {
            if line.is_empty() {
                continue;
            }
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("a trailer line: {line:?}"));
            trailers.append(
                HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
                    .expect("trailer name"),
                HeaderValue::from_str(value.trim()).expect("trailer value"),
            );
        }
        trailers
    }

    /// The only message, decoded, from a call that succeeded: status 0 in
    /// the trailer frame.
    fn ok<M: Message + Default>(&self) -> M {
        assert_eq!(self.status, StatusCode::OK);
        assert_eq!(header_of(&self.headers, "content-type"), Some(GRPC_WEB));
        let text = self.trailer_text.as_deref().expect("a trailer frame");
        assert!(
            text.split("\r\n").any(|line| line == "grpc-status:0"),
            "{text:?}"
        );
        assert_eq!(self.messages.len(), 1, "one response message");
        M::decode(self.messages[0].as_slice()).expect("a response message")
    }

    /// The status of a call that failed. Errors are answered trailers-only:
    /// the status is in the HTTP headers and the body is empty.
    fn error(&self) -> tonic::Status {
        assert_eq!(self.status, StatusCode::OK);
        assert!(
            self.messages.is_empty() && self.trailer_text.is_none(),
            "trailers-only"
        );
        tonic::Status::from_header_map(&self.headers).expect("grpc-status in the headers")
    }
}

fn header_of<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().expect("ASCII header"))
}

/// A comma-separated header as lower-case items.
fn items(headers: &HeaderMap, name: &str) -> Vec<String> {
    header_of(headers, name)
        .unwrap_or_default()
        .split(',')
        .map(|item| item.trim().to_ascii_lowercase())
        .filter(|item| !item.is_empty())
        .collect()
}

/// A browser-like client: HTTP/1.1 only, no TLS, as a page's `fetch` to a
/// plain-HTTP service.
struct Browser {
    http: reqwest::Client,
    base: String,
}

impl Browser {
    fn new(system: &TestSystem) -> Self {
        Self::of(system, Service::Lifecycle)
    }

    /// A page calling `service`.
    fn of(system: &TestSystem, service: Service) -> Self {
        Self {
            http: reqwest::Client::builder()
                .http1_only()
                .build()
                .expect("HTTP client"),
            base: system.url(service),
        }
    }

    /// A gRPC-Web call from a page of the service's own origin (no CORS),
    /// as [`TENANT`].
    async fn same_origin(&self, method: &str, message: &impl Message) -> Answer {
        self.call(method, message, None, &as_tenant(TENANT)).await
    }

    /// The CORS preflight a browser sends before a gRPC-Web call from `origin`.
    async fn preflight(&self, origin: &str) -> reqwest::Response {
        self.http
            .request(reqwest::Method::OPTIONS, format!("{}/{CREATE}", self.base))
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, REQUESTED_HEADERS)
            .send()
            .await
            .expect("preflight answered")
    }

    /// A gRPC-Web call of `method` with `message`, from a page of `origin`,
    /// with extra `metadata` (tenant, actor, token).
    async fn call(
        &self,
        method: &str,
        message: &impl Message,
        origin: Option<&str>,
        metadata: &[(&str, &str)],
    ) -> Answer {
        let mut request = self
            .http
            .post(format!("{}/{method}", self.base))
            .header(header::CONTENT_TYPE, GRPC_WEB)
            .header("x-grpc-web", "1")
            .header("x-user-agent", "grpc-web-javascript/0.1")
            .header("grpc-timeout", "10S")
            .body(frame(message));
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        for (name, value) in metadata {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("gRPC-Web call answered");
        // Plain HTTP is HTTP/1.1, as from a browser; over TLS, what ALPN chose.
        let expected = if self.base.starts_with("https:") {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(response.version(), expected);
        let (status, headers) = (response.status(), response.headers().clone());
        let body = response.bytes().await.expect("response body");
        Answer::read(status, headers, &body)
    }
}

fn as_tenant(tenant: &str) -> [(&str, &str); 2] {
    [
        ("x-tenant-id", tenant),
        ("x-actor-id", "jane@app.cascade.test"),
    ]
}

fn create(name: &str) -> lc::CreateAccountRequest {
    lc::CreateAccountRequest {
        account: Some(lc::Account {
            name: name.to_owned(),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

fn get(account_id: &str) -> lc::GetAccountRequest {
    lc::GetAccountRequest {
        account_id: account_id.to_owned(),
    }
}

/// A page of the allowed origin creates and reads an account through
/// gRPC-Web; another origin is granted nothing; bad input is refused as over
/// gRPC, with its details readable by the page.
async fn a_browser_calls_through_grpc_web(db: TestDatabase) {
    let system = TestSystem::lifecycle_with(&db, |settings| {
        settings.server.cors_allowed_origins = vec![ALLOWED.to_owned()];
    })
    .await;
    let browser = Browser::new(&system);

    // (a) The preflight: granted to the allowed origin, for POST and every
    // header a gRPC-Web client sends, cached by the browser for a while.
    let preflight = browser.preflight(ALLOWED).await;
    assert!(preflight.status().is_success(), "{preflight:?}");
    let granted = preflight.headers();
    assert_eq!(
        header_of(granted, "access-control-allow-origin"),
        Some(ALLOWED)
    );
    assert_eq!(
        items(granted, "access-control-allow-methods"),
        ["post"],
        "{granted:?}"
    );
    let allowed_headers = items(granted, "access-control-allow-headers");
    for requested in REQUESTED_HEADERS.split(',') {
        assert!(
            allowed_headers.iter().any(|h| h == requested),
            "{requested} not allowed: {allowed_headers:?}"
        );
    }
    assert_eq!(header_of(granted, "access-control-max-age"), Some("7200"));
    let denied = browser.preflight(OTHER).await;
    assert_eq!(
        denied.headers().get("access-control-allow-origin"),
        None,
        "another origin is granted nothing: {denied:?}"
    );

    // (b) CreateAccount: one data frame with the account, then the trailer
    // frame with status 0; the page may read the answer and its status.
    let created = browser
        .call(
            CREATE,
            &create("Initech (web)"),
            Some(ALLOWED),
            &as_tenant(TENANT),
        )
        .await;
    assert_eq!(
        header_of(&created.headers, "access-control-allow-origin"),
        Some(ALLOWED)
    );
    let exposed = items(&created.headers, "access-control-expose-headers");
    for status_header in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(
            exposed.iter().any(|h| h == status_header),
            "{status_header} not exposed: {exposed:?}"
        );
    }
    let account = created
        .ok::<lc::CreateAccountResponse>()
        .account
        .expect("the account in the answer");
    assert!(!account.account_id.is_empty(), "{account:?}");
    assert_eq!(account.name, "Initech (web)");

    // GetAccount the same way returns it.
    let fetched = browser
        .call(
            GET,
            &get(&account.account_id),
            Some(ALLOWED),
            &as_tenant(TENANT),
        )
        .await
        .ok::<lc::GetAccountResponse>()
        .account
        .expect("the account in the answer");
    assert_eq!(
        (fetched.account_id.as_str(), fetched.name.as_str()),
        (account.account_id.as_str(), "Initech (web)")
    );
    // It is the same account over gRPC (HTTP/2), in the tenant the header
    // named; another tenant does not see it through gRPC-Web either.
    let over_grpc = system.lifecycle().as_tenant(TENANT);
    assert_eq!(
        over_grpc.account(&account.account_id).await.name,
        "Initech (web)"
    );
    let elsewhere = browser
        .call(
            GET,
            &get(&account.account_id),
            Some(ALLOWED),
            &as_tenant("other"),
        )
        .await;
    assert_eq!(elsewhere.error().code(), Code::NotFound);

    // (c) Bad input: INVALID_ARGUMENT, the message and the BadRequest details
    // naming the field, with the CORS grant so the page can read them.
    let refused = browser
        .call(CREATE, &create(""), Some(ALLOWED), &as_tenant(TENANT))
        .await;
    assert_eq!(
        header_of(&refused.headers, "grpc-status"),
        Some("3"),
        "INVALID_ARGUMENT"
    );
    assert!(
        header_of(&refused.headers, "grpc-message")
            .is_some_and(|message| message.contains("account.name")),
        "{:?}",
        refused.headers
    );
    assert_eq!(
        header_of(&refused.headers, "access-control-allow-origin"),
        Some(ALLOWED)
    );
    let status = refused.error();
    assert!(
        violations(&status)
            .iter()
            .any(|(field, _)| field == "account.name"),
        "{status:?}"
    );

    // CORS is the browser's rule: the server answers another origin's call,
    // but without the grant, so its browser hides the answer from the page.
    let foreign = browser
        .call(
            GET,
            &get(&account.account_id),
            Some(OTHER),
            &as_tenant(TENANT),
        )
        .await;
    assert_eq!(
        foreign.headers.get("access-control-allow-origin"),
        None,
        "{:?}",
        foreign.headers
    );
    system.stop().await;
}

/// Without `server.cors_allowed_origins`, no origin is granted anything;
/// gRPC-Web itself still answers (a page served from the service's own
/// origin through a proxy, or a non-browser client).
async fn cross_origin_access_is_closed_by_default(db: TestDatabase) {
    let system = TestSystem::lifecycle_on(&db).await;
    let browser = Browser::new(&system);
    let preflight = browser.preflight(ALLOWED).await;
    assert!(!preflight.status().is_success(), "{preflight:?}");
    assert_eq!(
        preflight.headers().get("access-control-allow-origin"),
        None,
        "{preflight:?}"
    );

    let created = browser
        .call(CREATE, &create("Same origin"), None, &as_tenant(TENANT))
        .await;
    assert_eq!(created.headers.get("access-control-allow-origin"), None);
    let account = created
        .ok::<lc::CreateAccountResponse>()
        .account
        .expect("the account");
    assert_eq!(account.name, "Same origin");
    // The trailer frame carries the status as the trailers of gRPC would.
    assert_eq!(
        created.trailers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    system.stop().await;
}

/// In jwt mode a gRPC-Web call needs its bearer token like any other call.
async fn grpc_web_calls_are_authenticated(db: TestDatabase) {
    let system = TestSystem::lifecycle_with(&db, |settings| {
        settings.server.cors_allowed_origins = vec![ALLOWED.to_owned()];
        settings.auth.mode = AuthMode::Jwt;
        settings.auth.hs256_secret = Secret::new(SECRET.to_owned());
    })
    .await;
    let browser = Browser::new(&system);

    let anonymous = browser
        .call(CREATE, &create("Nobody's"), Some(ALLOWED), &[])
        .await;
    assert_eq!(anonymous.error().code(), Code::Unauthenticated);
    assert_eq!(
        header_of(&anonymous.headers, "access-control-allow-origin"),
        Some(ALLOWED),
        "the page can read why it was refused"
    );

    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({
            "sub": "jane@app.cascade.test", "tenant": TENANT, "roles": ["writer"],
            "iss": "cascade", "aud": "cascade", "exp": exp,
        }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token");
    let bearer = format!("Bearer {token}");
    let account = browser
        .call(
            CREATE,
            &create("Jane's"),
            Some(ALLOWED),
            &[("authorization", &bearer)],
        )
        .await
        .ok::<lc::CreateAccountResponse>()
        .account
        .expect("the account");
    assert_eq!(account.name, "Jane's");
    system.stop().await;
}

/// With `server.grpc_web = false` the port speaks HTTP/2 only: a browser's
/// HTTP/1.1 call gets no answer, gRPC is served as before.
async fn grpc_web_can_be_turned_off(db: TestDatabase) {
    let system = TestSystem::lifecycle_with(&db, |settings| {
        settings.server.grpc_web = false;
    })
    .await;
    let browser = Browser::new(&system);
    let refused = browser
        .http
        .post(format!("{}/{CREATE}", browser.base))
        .header(header::CONTENT_TYPE, GRPC_WEB)
        .body(frame(&create("Never")))
        .send()
        .await;
    assert!(refused.is_err(), "HTTP/1.1 is not served: {refused:?}");
    let account = system
        .lifecycle()
        .as_tenant(TENANT)
        .create_account("Over gRPC", "")
        .await;
    assert_eq!(account.name, "Over gRPC");
    system.stop().await;
}

/// Over TLS a browser negotiates HTTP/2 by ALPN (the only protocol tonic
/// offers there) and gRPC-Web works over it, preflight included.
async fn grpc_web_over_tls_is_http2(db: TestDatabase) {
    let dir = TempDir::new("grpc-web-tls");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("sign");
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).expect("write");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    let system = TestSystem::lifecycle_with(&db, |settings| {
        settings.server.cors_allowed_origins = vec![ALLOWED.to_owned()];
        settings.tls.cert_file = cert_file.display().to_string();
        settings.tls.key_file = key_file.display().to_string();
    })
    .await;
    let addr = system.addr(Service::Lifecycle);
    let browser = Browser {
        // A browser offers both HTTP/2 and HTTP/1.1 in ALPN, as this client does.
        http: reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA"))
            .resolve("localhost", addr)
            .build()
            .expect("HTTP client"),
        base: format!("https://localhost:{}", addr.port()),
    };

    let preflight = browser.preflight(ALLOWED).await;
    assert_eq!(preflight.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        header_of(preflight.headers(), "access-control-allow-origin"),
        Some(ALLOWED)
    );
    let account = browser
        .call(CREATE, &create("Secure"), Some(ALLOWED), &as_tenant(TENANT))
        .await
        .ok::<lc::CreateAccountResponse>()
        .account
        .expect("the account");
    assert_eq!(account.name, "Secure");
    system.stop().await;
}

/// Scoring and opportunity answer gRPC-Web too (one server bootstrap for
/// the three): a page of the same origin reads scoring's model and
/// opportunity's settings, and reads the field a bad request names.
async fn every_service_answers_grpc_web(db: TestDatabase) {
    let system = TestSystem::all_like(&db).await;

    let scoring = Browser::of(&system, Service::Scoring);
    let model = scoring
        .same_origin(
            "cascade.scoring.v1.ScoringService/GetScoringModel",
            &sc::GetScoringModelRequest { version: 0 },
        )
        .await
        .ok::<sc::GetScoringModelResponse>()
        .model
        .expect("the model");
    assert_eq!(model.version, 1, "the default model: {model:?}");
    let no_account = sc::GetAccountScoreRequest {
        account_id: String::new(),
    };
    let refused = scoring
        .same_origin(
            "cascade.scoring.v1.ScoringService/GetAccountScore",
            &no_account,
        )
        .await;
    assert_refused_naming(&refused.error(), "account_id");

    let opportunity = Browser::of(&system, Service::Opportunity);
    let settings = opportunity
        .same_origin(
            "cascade.opportunity.v1.OpportunityService/GetOpportunitySettings",
            &op::GetOpportunitySettingsRequest { version: 0 },
        )
        .await
        .ok::<op::GetOpportunitySettingsResponse>()
        .settings
        .expect("the settings");
    assert_eq!(settings.version, 1, "the default settings: {settings:?}");
    let no_opportunity = op::GetOpportunityRequest {
        opportunity_id: String::new(),
    };
    let refused = opportunity
        .same_origin(
            "cascade.opportunity.v1.OpportunityService/GetOpportunity",
            &no_opportunity,
        )
        .await;
    assert_refused_naming(&refused.error(), "opportunity_id");
    system.stop().await;
}

/// INVALID_ARGUMENT naming `field` alone, readable from gRPC-Web.
fn assert_refused_naming(refused: &tonic::Status, field: &str) {
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(violated_fields(refused), [field], "{refused:?}");
}

on_each_database!(
    every_service_answers_grpc_web,
    a_browser_calls_through_grpc_web,
    cross_origin_access_is_closed_by_default,
    grpc_web_calls_are_authenticated,
    grpc_web_can_be_turned_off,
    grpc_web_over_tls_is_http2,
);
