//! Authentication and authorisation, shared by the three services.
//!
//! Two modes. `disabled` (development, the default of `make run`) trusts the
//! `x-tenant-id` header. `jwt` requires `authorization: Bearer <token>` on
//! every Cascade RPC: the signature (HS256 with a shared secret, RS256 or
//! ES256 with public keys from files), issuer, audience and expiry are checked
//! by the `jsonwebtoken` crate, and the tenant and roles come from the claims.
//! Each RPC needs one [`Permission`]; each [`Role`] grants a set of them.
//! Health and reflection stay open so probes and grpcurl's `list` work.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::context::{RequestContext, TenantId, actor_header, deadline_header, tenant_header};
use crate::error::ServiceError;
use crate::error::SettingsError;
use crate::secret::Secret;

mod credentials;

pub use credentials::ServiceCredentials;

/// Metadata key carrying the bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// Shortest accepted HS256 secret, in bytes (RFC 7518 §3.2: at least the hash size).
const MIN_SECRET_BYTES: usize = 32;
/// Longest clock skew `auth.leeway_seconds` may tolerate: a leeway is also
/// how long an expired token is still accepted.
const MAX_LEEWAY_SECONDS: u64 = 300;
/// Default for `auth.max_token_lifetime_seconds`: a day.
const DEFAULT_MAX_TOKEN_LIFETIME_SECONDS: u64 = 86_400;
/// Lifetime of the tokens a service mints for its own calls.
const SERVICE_TOKEN_LIFETIME: Duration = Duration::from_secs(600);
/// A minted or file token is replaced when it is this close to expiry, or
/// (for files) this old, so rotated files are picked up.
const SERVICE_TOKEN_REFRESH: Duration = Duration::from_secs(120);

/// How callers are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Development only: the tenant comes from `x-tenant-id`, every role is granted.
    Disabled,
    /// Bearer JWTs on every Cascade RPC.
    Jwt,
}

/// The `[auth]` section of every service's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// Required `iss` claim.
    pub issuer: String,
    /// Required `aud` claim.
    pub audience: String,
    /// File holding the HS256 shared secret (a Kubernetes Secret mount).
    pub hs256_secret_file: String,
    /// The HS256 secret itself, for development; prefer the file.
    pub hs256_secret: Secret<String>,
    /// Comma-separated PEM files of RS256 / ES256 public keys (rotation: list old and new).
    pub public_key_files: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// Longest a token may still be valid when it is presented, in seconds: a
    /// token whose `exp` lies further ahead is refused, so a leaked token
    /// cannot have been minted to last for years.
    pub max_token_lifetime_seconds: u64,
    /// File holding the token this service sends on its calls to other
    /// services (re-read when it changes). Without it, a service holding the
    /// HS256 secret mints its own short-lived service token.
    pub service_token_file: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::Disabled,
            issuer: "cascade".into(),
            audience: "cascade".into(),
            hs256_secret_file: String::new(),
            hs256_secret: Secret::default(),
            public_key_files: String::new(),
            leeway_seconds: 30,
            max_token_lifetime_seconds: DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
            service_token_file: String::new(),
        }
    }
}

impl AuthSettings {
    /// The HS256 secret from the file or the value, if one is configured.
    fn secret(&self) -> Result<Option<Vec<u8>>, SettingsError> {
        let secret = if !self.hs256_secret_file.is_empty() {
            std::fs::read(&self.hs256_secret_file)
                .map_err(|e| {
                    SettingsError::new(format!(
                        "auth.hs256_secret_file: cannot read {}: {e}",
                        self.hs256_secret_file
                    ))
                })
                .map(|mut bytes| {
                    // Files written by `echo` end in a newline that is not part of the secret.
                    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
                        bytes.pop();
                    }
                    bytes
                })?
        } else {
            self.hs256_secret.expose().as_bytes().to_vec()
        };
        if secret.is_empty() {
            return Ok(None);
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SettingsError::new(format!(
                "auth.hs256_secret: must be at least {MIN_SECRET_BYTES} bytes (got {})",
                secret.len()
            )));
        }
        Ok(Some(secret))
    }
}

/// What an RPC needs the caller to be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Get, List, reports, scores, explanations, watch.
    Read,
    /// Create and update accounts, contacts, opportunities; record activities.
    Write,
    /// Find or create a contact by email (writers and the scoring service).
    Resolve,
    /// The manual lifecycle actions: qualify, disqualify, nurture, advance.
    Act,
    /// Change settings and scoring models, and simulate models.
    Admin,
    /// The internal Apply* RPCs, called by other Cascade services only.
    Apply,
}

/// A role named in a token's `roles` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Reader,
    Writer,
    Operator,
    Admin,
    Service,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Reader,
        Role::Writer,
        Role::Operator,
        Role::Admin,
        Role::Service,
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }

    pub fn grants(self, permission: Permission) -> bool {
        use Permission as P;
        match self {
            Role::Reader => matches!(permission, P::Read),
            Role::Writer => matches!(permission, P::Read | P::Write | P::Resolve),
            Role::Operator => matches!(permission, P::Read | P::Act),
            Role::Admin => !matches!(permission, P::Apply),
            Role::Service => matches!(permission, P::Read | P::Resolve | P::Apply),
        }
    }
}

/// The permission each RPC of a service needs, by gRPC service and method
/// name (`cascade.lifecycle.v1.LifecycleService`, `GetAccount`). Each service
/// supplies its own (`ServiceIdentity::permissions`). `None` for an RPC the
/// table does not name: refused in `jwt` mode, so a new RPC cannot be
/// reachable before it is given a permission.
pub type Permissions = fn(service: &str, method: &str) -> Option<Permission>;

/// The permissions of the RPCs the chassis serves in every service (the
/// outbox's admin service); each service's own table names only its RPCs.
pub fn chassis_permission(service: &str, method: &str) -> Option<Permission> {
    match (service, method) {
        ("cascade.admin.v1.OutboxAdminService", "ListDeadLetters" | "RetryDeadLetters") => {
            Some(Permission::Admin)
        }
        _ => None,
    }
}

/// The claims Cascade reads from a token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The person or system; recorded as the actor of changes.
    pub sub: String,
    /// The tenant; absent on service tokens, which act for the tenant named
    /// in `x-tenant-id` by the calling service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
}

/// A verification key and the algorithm it is for.
struct VerifyingKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Decides who is calling, from request headers.
pub struct Authenticator {
    mode: AuthMode,
    permissions: Permissions,
    /// Each key with the checks its tokens must pass, built once.
    keys: Vec<(VerifyingKey, Validation)>,
    /// `auth.max_token_lifetime_seconds` plus the leeway.
    max_ahead_seconds: u64,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Development mode: the tenant header is trusted.
    pub fn disabled() -> Self {
        Self {
            mode: AuthMode::Disabled,
            permissions: |_, _| None,
            keys: Vec::new(),
            max_ahead_seconds: 0,
        }
    }

    /// Loads the keys the settings name; a missing or unreadable key stops
    /// start-up. `permissions` is the service's table.
    pub fn from_settings(
        settings: &AuthSettings,
        permissions: Permissions,
    ) -> Result<Self, SettingsError> {
        if settings.mode == AuthMode::Disabled {
            return Ok(Self::disabled());
        }
        if settings.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(SettingsError::new(format!(
                "auth.leeway_seconds: {} is more than {MAX_LEEWAY_SECONDS}; it is the clock skew \
                 tolerated, and an expired token is accepted for that long",
                settings.leeway_seconds
            )));
        }
        if settings.max_token_lifetime_seconds == 0 {
            return Err(SettingsError::new(
                "auth.max_token_lifetime_seconds: must be greater than 0 (the longest a token \
                 may still be valid when presented; 86400 by default)",
            ));
        }
        let mut keys = Vec::new();
        if let Some(secret) = settings.secret()? {
            keys.push(VerifyingKey {
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(&secret),
            });
        }
        for path in settings
            .public_key_files
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            keys.push(read_public_key(Path::new(path))?);
        }
        if keys.is_empty() {
            return Err(SettingsError::new(
                "auth.mode = \"jwt\" needs auth.hs256_secret_file (or auth.hs256_secret) or auth.public_key_files",
            ));
        }
        if settings.issuer.is_empty() || settings.audience.is_empty() {
            return Err(SettingsError::new(
                "auth.issuer and auth.audience must not be empty in jwt mode",
            ));
        }
        let keys = keys
            .into_iter()
            .map(|key| {
                let mut validation = Validation::new(key.algorithm);
                validation.set_issuer(&[&settings.issuer]);
                validation.set_audience(&[&settings.audience]);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                validation.leeway = settings.leeway_seconds;
                validation.validate_nbf = true;
                (key, validation)
            })
            .collect();
        Ok(Self {
            mode: AuthMode::Jwt,
            permissions,
            keys,
            max_ahead_seconds: settings
                .max_token_lifetime_seconds
                .saturating_add(settings.leeway_seconds),
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The context of a request to the Cascade RPC at `path`, or why it is refused.
    pub fn authenticate(
        &self,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<RequestContext, ServiceError> {
        if self.mode == AuthMode::Disabled {
            return RequestContext::from_headers(headers);
        }
        // Who calls first: an unauthenticated caller is told so, whatever
        // else its headers hold, and a header the token makes irrelevant (a
        // person's x-actor-id) is not read at all.
        let token = bearer_token(headers)?;
        let claims = self.verify(token)?;
        let roles: Vec<Role> = claims.roles.iter().filter_map(|r| Role::parse(r)).collect();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", path));
        let permission = chassis_permission(service, method)
            .or_else(|| (self.permissions)(service, method))
            .ok_or_else(|| {
                ServiceError::PermissionDenied(format!("{method} is not open to any role"))
            })?;
        if !roles.iter().any(|role| role.grants(permission)) {
            let held: Vec<&str> = roles.iter().map(|r| r.name()).collect();
            let needed: Vec<&str> = Role::ALL
                .iter()
                .filter(|r| r.grants(permission))
                .map(|r| r.name())
                .collect();
            // A role Cascade does not know (`Admin`, `cascade-reader`) grants
            // nothing; naming it saves the caller guessing why.
            let unknown: Vec<&str> = claims
                .roles
                .iter()
                .map(String::as_str)
                .filter(|name| Role::parse(name).is_none())
                .collect();
            let unknown = if unknown.is_empty() {
                String::new()
            } else {
                format!(
                    " and roles Cascade does not know [{}] (role names are lowercase: {})",
                    unknown.join(", "),
                    Role::ALL.map(Role::name).join(", ")
                )
            };
            return Err(ServiceError::PermissionDenied(format!(
                "{method} needs one of the roles [{}]; the token has [{}]{unknown}",
                needed.join(", "),
                held.join(", ")
            )));
        }
        let is_service = roles.contains(&Role::Service);
        // Services act for many tenants (the pending erasures of all of
        // them); a token bound to one tenant holding the role would reach
        // the others'. Cascade's own service tokens carry no tenant.
        if is_service && claims.tenant.is_some() {
            return Err(ServiceError::PermissionDenied(
                "a token bound to a tenant may not hold the service role, which is for \
                 Cascade's own services (their tokens carry no tenant claim)"
                    .into(),
            ));
        }
        let named = tenant_header(headers)?;
        let tenant = match (claims.tenant.as_deref(), named) {
            // A person's token is bound to its tenant; a header may only repeat it.
            (Some(tenant), named) => {
                let tenant = TenantId::parse(tenant).map_err(|_| {
                    ServiceError::Unauthenticated(
                        "the token's tenant claim is not a valid tenant id".into(),
                    )
                })?;
                if let Some(named) = named
                    && named != tenant
                {
                    return Err(ServiceError::PermissionDenied(format!(
                        "the token is for tenant {tenant}, not {named}"
                    )));
                }
                tenant
            }
            // A service token acts for the tenant its caller names.
            (None, Some(named)) if is_service => named,
            (None, None) if is_service => {
                return Err(ServiceError::Unauthenticated(
                    "a service token names the tenant it acts for in x-tenant-id; none was sent"
                        .into(),
                ));
            }
            (None, _) => {
                return Err(ServiceError::Unauthenticated(
                    "the token has no tenant claim (only service tokens may name the tenant in x-tenant-id)"
                        .into(),
                ));
            }
        };
        // Changes are recorded against the token's subject; a service relays
        // the actor it acts for.
        let relayed = if is_service {
            actor_header(headers)?
        } else {
            None
        };
        Ok(RequestContext {
            tenant,
            actor: relayed.unwrap_or(claims.sub),
            deadline: deadline_header(headers),
            admin: roles.contains(&Role::Admin),
        })
    }

    fn verify(&self, token: &str) -> Result<Claims, ServiceError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ServiceError::Unauthenticated("the bearer token is not a JWT".into()))?;
        let mut last = None;
        for (key, validation) in self.keys.iter().filter(|(k, _)| k.algorithm == header.alg) {
            match jsonwebtoken::decode::<Claims>(token, &key.key, validation) {
                Ok(data) => return self.within_lifetime(data.claims),
                Err(error) => last = Some(error),
            }
        }
        // Only the kind of failure is told: never the token or the key.
        let reason = match last.as_ref().map(jsonwebtoken::errors::Error::kind) {
            None => format!("tokens signed with {:?} are not accepted", header.alg),
            Some(ErrorKind::ExpiredSignature) => "the token has expired".into(),
            Some(ErrorKind::ImmatureSignature) => "the token is not valid yet (nbf)".into(),
            Some(ErrorKind::InvalidIssuer) => "the token's issuer is not accepted".into(),
            Some(ErrorKind::InvalidAudience) => "the token's audience is not accepted".into(),
            Some(ErrorKind::InvalidSignature) => "the token's signature does not verify".into(),
            Some(ErrorKind::MissingRequiredClaim(claim)) => {
                format!("the token has no {claim} claim")
            }
            Some(_) => "the token is malformed".into(),
        };
        Err(ServiceError::Unauthenticated(reason))
    }

    /// A verified token is refused when it stays valid for longer than
    /// `auth.max_token_lifetime_seconds` from now. `exp - now` rather than
    /// `exp - iat`: it bounds what a stolen token is worth, and needs no `iat`.
    fn within_lifetime(&self, claims: Claims) -> Result<Claims, ServiceError> {
        let ahead = claims.exp.saturating_sub(unix_now());
        if ahead > self.max_ahead_seconds {
            return Err(ServiceError::Unauthenticated(format!(
                "the token is valid for another {ahead} s, longer than this service accepts \
                 ({} s, auth.max_token_lifetime_seconds plus the leeway); issue shorter-lived tokens",
                self.max_ahead_seconds
            )));
        }
        Ok(claims)
    }
}

fn bearer_token(headers: &http::HeaderMap) -> Result<&str, ServiceError> {
    let value = headers.get(AUTHORIZATION).ok_or_else(|| {
        ServiceError::Unauthenticated(
            "missing credentials: send authorization: Bearer <token>".into(),
        )
    })?;
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ServiceError::Unauthenticated(
                "the authorization header must be \"Bearer <token>\"".into(),
            )
        })
}

fn read_public_key(path: &Path) -> Result<VerifyingKey, SettingsError> {
    let pem = std::fs::read(path).map_err(|e| {
        SettingsError::new(format!(
            "auth.public_key_files: cannot read {}: {e}",
            path.display()
        ))
    })?;
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok(VerifyingKey {
            algorithm: Algorithm::ES256,
            key,
        });
    }
    DecodingKey::from_rsa_pem(&pem)
        .map(|key| VerifyingKey {
            algorithm: Algorithm::RS256,
            key,
        })
        .map_err(|_| {
            SettingsError::new(format!(
                "auth.public_key_files: {} is not a PEM RSA or EC (P-256) public key",
                path.display()
            ))
        })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
