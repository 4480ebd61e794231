//! TLS for the gRPC servers and for calls between services (rustls, through
//! tonic). Certificates and keys are PEM files, read at start-up: a rotated
//! certificate takes effect when the pod restarts (cert-manager plus a
//! rolling restart, or Reloader).

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::error::SettingsError;

/// The `[tls]` section. With `cert_file` and `key_file` set the server
/// speaks only TLS; with `require_client_cert` too, callers must present a
/// certificate signed by `ca_file` (mTLS). The same certificate is this
/// service's client certificate on its calls to other services, which are
/// verified against `ca_file` when their URL is `https://`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM certificate chain of this service.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
    /// PEM CA bundle: verifies client certificates, and the servers this
    /// service calls.
    pub ca_file: String,
    /// Refuse callers without a certificate signed by `ca_file`.
    pub require_client_cert: bool,
}

fn read(key: &str, path: &str) -> Result<Vec<u8>, SettingsError> {
    std::fs::read(path)
        .map_err(|e| SettingsError::new(format!("tls.{key}: cannot read {path}: {e}")))
}

impl TlsSettings {
    fn identity(&self) -> Result<Option<Identity>, SettingsError> {
        match (self.cert_file.is_empty(), self.key_file.is_empty()) {
            (true, true) => Ok(None),
            (false, false) => Ok(Some(Identity::from_pem(
                read("cert_file", &self.cert_file)?,
                read("key_file", &self.key_file)?,
            ))),
            _ => Err(SettingsError::new(
                "tls.cert_file and tls.key_file must be set together",
            )),
        }
    }

    fn ca(&self) -> Result<Option<Certificate>, SettingsError> {
        if self.ca_file.is_empty() {
            return Ok(None);
        }
        Ok(Some(Certificate::from_pem(read("ca_file", &self.ca_file)?)))
    }

    /// The server's TLS configuration; `None` serves plaintext.
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>, SettingsError> {
        let Some(identity) = self.identity()? else {
            if self.require_client_cert {
                return Err(SettingsError::new(
                    "tls.require_client_cert needs tls.cert_file and tls.key_file",
                ));
            }
            return Ok(None);
        };
        let mut config = ServerTlsConfig::new().identity(identity);
        if self.require_client_cert {
            let ca = self
                .ca()?
                .ok_or_else(|| SettingsError::new("tls.require_client_cert needs tls.ca_file"))?;
            config = config.client_ca_root(ca).client_auth_optional(false);
        }
        Ok(Some(config))
    }

    /// TLS for calls to the service at `host` (the name its certificate
    /// carries, also when the call goes to one of its resolved addresses).
    pub fn client_config(&self, host: &str) -> Result<ClientTlsConfig, SettingsError> {
        let mut config = ClientTlsConfig::new().domain_name(host);
        if let Some(ca) = self.ca()? {
            config = config.ca_certificate(ca);
        }
        if let Some(identity) = self.identity()? {
            config = config.identity(identity);
        }
        Ok(config)
    }
}
