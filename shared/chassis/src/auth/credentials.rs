//! The token a service sends on its own calls to other services.

use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::{
    AuthMode, AuthSettings, Claims, Role, SERVICE_TOKEN_LIFETIME, SERVICE_TOKEN_REFRESH, unix_now,
};
use crate::error::SettingsError;

/// Where a service's own token for calls to other services comes from.
enum TokenSource {
    None,
    File(String),
    Minted {
        key: EncodingKey,
        subject: String,
        issuer: String,
        audience: String,
    },
}

/// The token a service sends on its calls to other services, cached and
/// renewed before it expires (minted) or re-read periodically (file).
pub struct ServiceCredentials {
    source: TokenSource,
    cached: Mutex<Option<(String, Instant)>>,
}

impl fmt::Debug for ServiceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            TokenSource::None => "none",
            TokenSource::File(_) => "file",
            TokenSource::Minted { .. } => "minted",
        };
        f.debug_struct("ServiceCredentials")
            .field("source", &source)
            .finish_non_exhaustive()
    }
}

impl ServiceCredentials {
    /// No credentials: development mode.
    pub fn none() -> Self {
        Self {
            source: TokenSource::None,
            cached: Mutex::new(None),
        }
    }

    /// The credentials of service `name` under `settings`. In jwt mode a
    /// service that calls others needs a token file or the HS256 secret.
    pub fn from_settings(name: &str, settings: &AuthSettings) -> Result<Self, SettingsError> {
        let source = if settings.mode == AuthMode::Disabled {
            TokenSource::None
        } else if !settings.service_token_file.is_empty() {
            TokenSource::File(settings.service_token_file.clone())
        } else if let Some(secret) = settings.secret()? {
            TokenSource::Minted {
                key: EncodingKey::from_secret(&secret),
                subject: format!("service:{name}"),
                issuer: settings.issuer.clone(),
                audience: settings.audience.clone(),
            }
        } else {
            return Err(SettingsError::new(format!(
                "{name} calls other services: in jwt mode set auth.service_token_file or auth.hs256_secret_file"
            )));
        };
        let credentials = Self {
            source,
            cached: Mutex::new(None),
        };
        // Fail at start-up, not on the first call.
        credentials.token().map_err(SettingsError::new)?;
        Ok(credentials)
    }

    /// The bearer token to send, if any.
    pub fn token(&self) -> Result<Option<String>, String> {
        let mut cached = self
            .cached
            .lock()
            .map_err(|_| "service credentials lock poisoned".to_owned())?;
        if let Some((token, renew_at)) = cached.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(Some(token.clone()));
        }
        let fresh = match &self.source {
            TokenSource::None => return Ok(None),
            TokenSource::File(path) => {
                let token = std::fs::read_to_string(path)
                    .map_err(|e| format!("auth.service_token_file: cannot read {path}: {e}"))?
                    .trim()
                    .to_owned();
                (token, Instant::now() + SERVICE_TOKEN_REFRESH)
            }
            TokenSource::Minted {
                key,
                subject,
                issuer,
                audience,
            } => {
                let claims = Claims {
                    sub: subject.clone(),
                    tenant: None,
                    roles: vec![Role::Service.name().to_owned()],
                    iss: issuer.clone(),
                    aud: audience.clone(),
                    exp: unix_now() + SERVICE_TOKEN_LIFETIME.as_secs(),
                };
                let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
                    .map_err(|e| format!("cannot mint the service token: {e}"))?;
                (
                    token,
                    Instant::now() + SERVICE_TOKEN_LIFETIME - SERVICE_TOKEN_REFRESH,
                )
            }
        };
        let token = fresh.0.clone();
        *cached = Some(fresh);
        Ok(Some(token))
    }
}
