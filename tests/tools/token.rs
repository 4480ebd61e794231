//! `cascade-token`: issues an HS256 token for testing a suite running with
//! `auth.mode = "jwt"`. Production tokens come from your identity provider;
//! this signs with the shared secret the services verify.
//!
//! ```text
//! cascade-token --secret-file secret.txt --tenant acme --roles reader,writer [--subject jane@acme.test] [--ttl 3600]
//! cascade-token --secret-file secret.txt --service            # a service token (no tenant)
//! ```
//! The secret can also come from `CASCADE_TOKEN_SECRET`.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use cascade_chassis::auth::Role;
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// Signs an HS256 token for a suite running with auth.mode = "jwt".
#[derive(Debug, Parser)]
#[command(name = "cascade-token")]
struct Args {
    /// A file holding the shared secret (a trailing newline is not part of it);
    /// without it, the secret comes from CASCADE_TOKEN_SECRET (never a flag,
    /// which `ps` and shell history would show).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// The tenant a person's token is bound to.
    #[arg(long, required_unless_present = "service")]
    tenant: Option<String>,
    /// Comma-separated roles of a person's token (`service` is --service's).
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "service",
        value_parser = person_role
    )]
    roles: Vec<String>,
    /// A service token: the `service` role and no tenant.
    #[arg(long, conflicts_with_all = ["tenant", "roles"])]
    service: bool,
    /// The `sub` claim: who acts (default `cli-user`, or `service:cli`).
    #[arg(long)]
    subject: Option<String>,
    /// Seconds the token is valid; the services refuse more than their
    /// auth.max_token_lifetime_seconds (a day by default).
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    #[arg(long, default_value = "cascade")]
    issuer: String,
    #[arg(long, default_value = "cascade")]
    audience: String,
}

/// A person's role, spaces around it ignored (`reader, writer`).
/// The roles are the services' own table (`Role`), so the two cannot drift.
fn person_role(name: &str) -> Result<String, String> {
    let name = name.trim();
    match Role::parse(name) {
        Some(role) if role != Role::Service => Ok(name.to_owned()),
        _ => Err(format!(
            "{name} is not a person's role (one of {}; service is --service)",
            person_roles().join(", ")
        )),
    }
}

fn person_roles() -> Vec<&'static str> {
    Role::ALL
        .into_iter()
        .filter(|role| *role != Role::Service)
        .map(Role::name)
        .collect()
}

fn main() {
    if let Err(message) = run(Args::parse()) {
        eprintln!("cascade-token: {message}");
        std::process::exit(2);
    }
}

fn run(args: Args) -> Result<(), String> {
    let secret = match &args.secret_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .trim_end()
            .to_owned(),
        None => std::env::var("CASCADE_TOKEN_SECRET")
            .map_err(|_| "--secret-file or CASCADE_TOKEN_SECRET is required")?,
    };
    if secret.len() < 32 {
        return Err(
            "the secret must be at least 32 bytes (the services refuse shorter ones)".into(),
        );
    }
    let (tenant, roles) = if args.service {
        (None, vec![Role::Service.name().to_owned()])
    } else {
        (args.tenant, args.roles)
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let subject = args.subject.unwrap_or_else(|| {
        if args.service {
            "service:cli".into()
        } else {
            "cli-user".into()
        }
    });
    let mut claims = serde_json::json!({
        "sub": subject,
        "roles": roles,
        "iss": args.issuer,
        "aud": args.audience,
        "iat": now,
        "exp": now + args.ttl,
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
