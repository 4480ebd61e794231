//! Tokens, roles and service credentials, with keys made at test time.

use super::*;
use crate::context::{ACTOR_HEADER, TENANT_HEADER};
use jsonwebtoken::{EncodingKey, Header};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn settings() -> AuthSettings {
    AuthSettings {
        mode: AuthMode::Jwt,
        hs256_secret: Secret::new(SECRET.into()),
        ..AuthSettings::default()
    }
}

fn token(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

fn headers(token: &str, tenant: Option<&str>) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    if let Some(tenant) = tenant {
        headers.insert(TENANT_HEADER, tenant.parse().expect("header"));
    }
    headers
}

#[test]
fn settings_never_print_the_secret() {
    let printed = format!("{:?}", settings());
    assert!(!printed.contains(SECRET), "{printed}");
    assert!(printed.contains("hs256_secret: ***"), "{printed}");
}

/// A service's table, as the tests' paths need it.
fn permissions(service: &str, method: &str) -> Option<Permission> {
    match (service, method) {
        ("cascade.lifecycle.v1.LifecycleService", "GetAccount") => Some(Permission::Read),
        ("cascade.lifecycle.v1.LifecycleService", "QualifyAccount") => Some(Permission::Act),
        ("cascade.lifecycle.v1.LifecycleInternalService", "ApplyEngagementScore") => {
            Some(Permission::Apply)
        }
        _ => None,
    }
}

const GET: &str = "/cascade.lifecycle.v1.LifecycleService/GetAccount";
const QUALIFY: &str = "/cascade.lifecycle.v1.LifecycleService/QualifyAccount";
const APPLY: &str = "/cascade.lifecycle.v1.LifecycleInternalService/ApplyEngagementScore";

fn claims(roles: &[&str], tenant: Option<&str>, exp: u64) -> serde_json::Value {
    let mut value = serde_json::json!({
        "sub": "jane@acme.test", "roles": roles, "iss": "cascade", "aud": "cascade", "exp": exp,
    });
    if let Some(tenant) = tenant {
        value["tenant"] = tenant.into();
    }
    value
}

#[test]
fn tokens_are_verified_and_roles_enforced() {
    let auth = Authenticator::from_settings(&settings(), permissions).expect("auth");
    let later = unix_now() + 600;
    let reader = token(claims(&["reader"], Some("acme"), later), SECRET);
    let context = auth
        .authenticate(GET, &headers(&reader, None))
        .expect("reader may read");
    assert_eq!(context.tenant.as_str(), "acme");
    assert_eq!(context.actor, "jane@acme.test");

    let refused = |path: &str, headers: &http::HeaderMap| {
        auth.authenticate(path, headers)
            .expect_err("refused")
            .code()
    };
    use tonic::Code;
    assert_eq!(
        refused(QUALIFY, &headers(&reader, None)),
        Code::PermissionDenied
    );
    assert_eq!(
        refused(GET, &headers(&reader, Some("other"))),
        Code::PermissionDenied
    );
    assert_eq!(refused(GET, &http::HeaderMap::new()), Code::Unauthenticated);
    let expired = token(claims(&["admin"], Some("acme"), unix_now() - 3600), SECRET);
    assert_eq!(
        refused(GET, &headers(&expired, None)),
        Code::Unauthenticated
    );
    let forged = token(
        claims(&["admin"], Some("acme"), later),
        &SECRET.replace('0', "1"),
    );
    assert_eq!(refused(GET, &headers(&forged, None)), Code::Unauthenticated);
    let mut wrong_issuer = claims(&["admin"], Some("acme"), later);
    wrong_issuer["iss"] = "someone-else".into();
    assert_eq!(
        refused(GET, &headers(&token(wrong_issuer, SECRET), None)),
        Code::Unauthenticated
    );
    let admin = token(claims(&["admin"], Some("acme"), later), SECRET);
    assert_eq!(
        refused(APPLY, &headers(&admin, None)),
        Code::PermissionDenied
    );
    assert_eq!(
        refused(
            "/cascade.lifecycle.v1.LifecycleService/Nope",
            &headers(&admin, None)
        ),
        Code::PermissionDenied
    );
}

/// Who calls is settled before the headers are read: a caller without a
/// valid token is UNAUTHENTICATED whatever its headers, and a person's
/// token makes x-actor-id irrelevant, so it is not read (a service's relay
/// of it still is).
#[test]
fn the_token_is_checked_before_the_headers() {
    let settings = settings();
    let auth = Authenticator::from_settings(&settings, permissions).expect("auth");
    let twice = |mut headers: http::HeaderMap, name: &'static str| {
        headers.append(name, "one".parse().expect("header"));
        headers.append(name, "two".parse().expect("header"));
        headers
    };
    let forged = token(
        claims(&["reader"], Some("acme"), unix_now() + 600),
        "not the secret",
    );
    let refused = auth
        .authenticate(GET, &twice(headers(&forged, None), TENANT_HEADER))
        .expect_err("a forged token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let reader = token(claims(&["reader"], Some("acme"), unix_now() + 600), SECRET);
    let context = auth
        .authenticate(GET, &twice(headers(&reader, None), ACTOR_HEADER))
        .expect("a person's x-actor-id is not read");
    assert_eq!(context.actor, "jane@acme.test");
    let refused = auth
        .authenticate(GET, &twice(headers(&reader, None), TENANT_HEADER))
        .expect_err("the tenant header is read when sent");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let credentials = ServiceCredentials::from_settings("scoring", &settings).expect("creds");
    let minted = credentials.token().expect("token").expect("some token");
    let refused = auth
        .authenticate(APPLY, &twice(headers(&minted, Some("acme")), ACTOR_HEADER))
        .expect_err("a service's relayed actor twice");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}

#[test]
fn service_tokens_act_for_the_named_tenant() {
    let settings = settings();
    let auth = Authenticator::from_settings(&settings, permissions).expect("auth");
    let credentials = ServiceCredentials::from_settings("scoring", &settings).expect("creds");
    let minted = credentials.token().expect("token").expect("some token");
    assert_eq!(credentials.token().expect("cached"), Some(minted.clone()));
    let context = auth
        .authenticate(APPLY, &headers(&minted, Some("acme")))
        .expect("service may apply");
    assert_eq!(context.tenant.as_str(), "acme");
    assert_eq!(context.actor, "service:scoring");
    // Without a tenant header a service token names no tenant, and is
    // told so (it used to hear it had no tenant claim, as a person would).
    let untenanted = auth
        .authenticate(APPLY, &headers(&minted, None))
        .expect_err("no tenant");
    assert_eq!(untenanted.code(), tonic::Code::Unauthenticated);
    assert!(
        untenanted
            .to_string()
            .contains("names the tenant it acts for in x-tenant-id"),
        "{untenanted}"
    );
    assert_eq!(
        auth.authenticate(QUALIFY, &headers(&minted, Some("acme")))
            .expect_err("no act")
            .code(),
        tonic::Code::PermissionDenied
    );
}

#[test]
fn a_token_bound_to_a_tenant_cannot_hold_the_service_role() {
    // The service role reads every tenant's pending erasures; bound to one
    // tenant it would let that tenant's token read (and confirm) the
    // others'.
    let auth = Authenticator::from_settings(&settings(), permissions).expect("auth");
    let bound = token(
        claims(&["service", "reader"], Some("acme"), unix_now() + 600),
        SECRET,
    );
    for (path, tenant) in [(APPLY, None), (APPLY, Some("acme")), (GET, None)] {
        let error = auth
            .authenticate(path, &headers(&bound, tenant))
            .expect_err("refused");
        assert_eq!(error.code(), tonic::Code::PermissionDenied, "{path}");
        assert!(error.to_string().contains("service role"), "{error}");
    }
}

#[test]
fn rs256_tokens_verify_against_a_public_key_file() {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
    let public_pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("public pem");
    let private_pem = private.to_pkcs8_pem(LineEnding::LF).expect("private pem");
    let path = std::env::temp_dir().join(format!("cascade-rs256-{}.pem", std::process::id()));
    std::fs::write(&path, public_pem).expect("write key");
    let settings = AuthSettings {
        mode: AuthMode::Jwt,
        public_key_files: path.display().to_string(),
        ..AuthSettings::default()
    };
    let auth = Authenticator::from_settings(&settings, permissions).expect("auth");
    std::fs::remove_file(&path).ok();
    let sign = |claims: &serde_json::Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            claims,
            &EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("encoding key"),
        )
        .expect("rs256 token")
    };
    let good = sign(&claims(&["reader"], Some("acme"), unix_now() + 600));
    let context = auth
        .authenticate(GET, &headers(&good, None))
        .expect("RS256 accepted");
    assert_eq!(context.tenant.as_str(), "acme");
    // Without an HS256 secret configured, an HS256 token is refused
    // (the keys decide the algorithms, not the token's header).
    let hs = token(claims(&["reader"], Some("acme"), unix_now() + 600), SECRET);
    let error = auth
        .authenticate(GET, &headers(&hs, None))
        .expect_err("HS256 refused");
    assert_eq!(error.code(), tonic::Code::Unauthenticated);
    assert!(error.to_string().contains("HS256"), "{error}");
}

#[test]
fn short_secrets_and_missing_keys_stop_start_up() {
    let mut s = settings();
    s.hs256_secret = Secret::new("short".into());
    assert!(Authenticator::from_settings(&s, permissions).is_err());
    s.hs256_secret = Secret::default();
    assert!(Authenticator::from_settings(&s, permissions).is_err());
    let s = settings();
    assert!(!format!("{s:?}").contains(SECRET));
}

/// A token valid for longer than `auth.max_token_lifetime_seconds` (plus
/// the leeway) from now is refused, whatever it grants; one within is not.
#[test]
fn a_token_valid_for_too_long_is_refused() {
    let mut s = settings();
    s.max_token_lifetime_seconds = 3600;
    let auth = Authenticator::from_settings(&s, permissions).expect("auth");
    let within = token(claims(&["reader"], Some("acme"), unix_now() + 3600), SECRET);
    auth.authenticate(GET, &headers(&within, None))
        .expect("an hour is within the limit");
    // A minute past the limit and the 30 s leeway.
    let beyond = token(
        claims(&["admin"], Some("acme"), unix_now() + 3600 + 30 + 60),
        SECRET,
    );
    let status = auth
        .authenticate(GET, &headers(&beyond, None))
        .expect_err("valid for too long");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status
            .to_string()
            .contains("auth.max_token_lifetime_seconds"),
        "{status:?}"
    );
    // The default is a day: a year-long token is refused.
    let auth = Authenticator::from_settings(&settings(), permissions).expect("auth");
    let year = token(
        claims(&["reader"], Some("acme"), unix_now() + 365 * 86_400),
        SECRET,
    );
    assert_eq!(
        auth.authenticate(GET, &headers(&year, None))
            .expect_err("a year")
            .code(),
        tonic::Code::Unauthenticated
    );
    s.max_token_lifetime_seconds = 0;
    let error = Authenticator::from_settings(&s, permissions).expect_err("0 is no limit");
    assert!(
        error
            .to_string()
            .contains("auth.max_token_lifetime_seconds"),
        "{error}"
    );
}

/// A role name Cascade does not know grants nothing, and the refusal says
/// which names it did not know, so `Admin` is not a mystery.
#[test]
fn unknown_role_names_are_named_in_the_refusal() {
    let auth = Authenticator::from_settings(&settings(), permissions).expect("auth");
    let capitalised = token(
        claims(&["Admin", "reader"], Some("acme"), unix_now() + 600),
        SECRET,
    );
    let status = auth
        .authenticate(QUALIFY, &headers(&capitalised, None))
        .expect_err("Admin is not admin");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let message = status.to_string();
    assert!(message.contains("the token has [reader]"), "{message}");
    assert!(message.contains("does not know [Admin]"), "{message}");
    // Known roles alone: no such clause.
    let reader = token(claims(&["reader"], Some("acme"), unix_now() + 600), SECRET);
    let status = auth
        .authenticate(QUALIFY, &headers(&reader, None))
        .expect_err("a reader may not qualify");
    assert!(!status.to_string().contains("does not know"), "{status:?}");
}

#[test]
fn a_leeway_past_five_minutes_stops_start_up() {
    // A leeway is also how long an expired token still passes.
    let mut s = settings();
    s.leeway_seconds = 300;
    assert!(Authenticator::from_settings(&s, permissions).is_ok());
    s.leeway_seconds = 301;
    let error = Authenticator::from_settings(&s, permissions).expect_err("refused");
    assert!(error.to_string().contains("auth.leeway_seconds"), "{error}");
}
