//! `cascade-token`: issues an HS256 token for testing a suite running with
//! `auth.mode = "jwt"`. Production tokens come from your identity provider;
//! this signs with the shared secret the services verify.
//!
//! ```text
//! cascade-token --secret-file secret.txt --tenant acme --roles reader,writer [--subject jane@acme.test] [--ttl 3600]
//! cascade-token --secret-file secret.txt --service            # a service token (no tenant)
//! ```
//! The secret can also come from `CASCADE_TOKEN_SECRET`.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

const USAGE: &str = "usage: cascade-token (--secret-file FILE | env CASCADE_TOKEN_SECRET) \
(--tenant TENANT --roles ROLE[,ROLE] | --service) [--subject SUB] [--ttl SECONDS] \
[--issuer ISS] [--audience AUD]\nroles: reader, writer, operator, admin, service";

fn main() {
    if let Err(message) = run() {
        eprintln!("cascade-token: {message}\n{USAGE}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut secret = std::env::var("CASCADE_TOKEN_SECRET").unwrap_or_default();
    let (mut tenant, mut roles, mut subject) = (None, Vec::new(), None);
    let (mut ttl, mut issuer, mut audience) =
        (3600_u64, "cascade".to_owned(), "cascade".to_owned());
    let mut service = false;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--secret-file" => {
                let path = value()?;
                secret = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {path}: {e}"))?
                    .trim_end()
                    .to_owned();
            }
            "--tenant" => tenant = Some(value()?),
            "--roles" => roles = value()?.split(',').map(|r| r.trim().to_owned()).collect(),
            "--subject" => subject = Some(value()?),
            "--ttl" => ttl = value()?.parse().map_err(|_| "--ttl takes seconds")?,
            "--issuer" => issuer = value()?,
            "--audience" => audience = value()?,
            "--service" => service = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if secret.len() < 32 {
        return Err(
            "the secret must be at least 32 bytes (the services refuse shorter ones)".into(),
        );
    }
    if service {
        roles = vec!["service".into()];
        tenant = None;
    } else if tenant.is_none() || roles.is_empty() {
        return Err("a person's token needs --tenant and --roles".into());
    } else if roles.iter().any(|role| role == "service") {
        return Err("the service role is for --service tokens, which carry no tenant".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = serde_json::json!({
        "sub": subject.unwrap_or_else(|| if service { "service:cli".into() } else { "cli-user".into() }),
        "roles": roles,
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "exp": now + ttl,
    });
    if let Some(tenant) = tenant {
        claims["tenant"] = tenant.into();
    }
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(())
}
