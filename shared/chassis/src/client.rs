//! Calls from one Cascade service to another: a channel that connects lazily
//! (a service starts even when its peer is down) and spreads calls over every
//! address the peer's name resolves to, following DNS changes (a headless
//! Service in Kubernetes); and requests that carry the tenant, the actor and
//! the W3C trace context of the current span.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cascade_proto::lifecycle::v1::lifecycle_internal_service_client::LifecycleInternalServiceClient;
use cascade_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::{AUTHORIZATION, AuthSettings, ServiceCredentials};
use crate::context::{ACTOR_HEADER, TENANT_HEADER};
use crate::error::SettingsError;
use crate::settings::{OwnSections, ServiceSettings};
use crate::tls::TlsSettings;
use serde::{Deserialize, Serialize};

/// How scoring and opportunity reach the lifecycle service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleClientSettings {
    /// `http://host:port` of lifecycle (a headless Service name in Kubernetes).
    pub url: String,
    /// Deadline of each call to lifecycle.
    pub timeout_ms: u64,
    /// Scoring: how many checked (account, contact) pairs and resolved
    /// emails it remembers, so that a batch naming people it has seen needs
    /// no call to lifecycle (0: ask lifecycle for every batch).
    pub directory_cache_entries: u64,
    /// Scoring: how long a resolved email is trusted (an email can be given
    /// to another contact). Checked id pairs do not expire: a contact never
    /// changes account.
    pub email_cache_ttl_ms: u64,
    /// How often each replica asks lifecycle for erasures its service has
    /// not applied yet, and scoring for people marked inactive or active
    /// again (`chassis::erasure`).
    pub erasure_poll_ms: u64,
    /// How long each erasure settles before this service confirms it: a
    /// replica erases when it first sees an erasure, and again, then
    /// confirms, this long after. Scoring trusts what it remembers of
    /// people only for half of it after its last complete poll, so half of
    /// it must cover a call in flight (the server's `request_timeout_ms`);
    /// and it must hold several polls of every replica: at least 4 ×
    /// `erasure_poll_ms`. The same on every replica.
    pub erasure_settle_ms: u64,
}

impl Default for LifecycleClientSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:50051".into(),
            timeout_ms: 5_000,
            directory_cache_entries: 50_000,
            email_cache_ttl_ms: 60_000,
            erasure_poll_ms: 5_000,
            erasure_settle_ms: 300_000,
        }
    }
}

/// The section a service that calls lifecycle adds to its settings
/// (`[lifecycle]`, `CASCADE_<SERVICE>__LIFECYCLE__<KEY>`): scoring's and
/// opportunity's. Lifecycle's settings have no such section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LifecycleSection {
    pub lifecycle: LifecycleClientSettings,
}

impl OwnSections for LifecycleSection {
    const SECTIONS: &'static [&'static str] = &["lifecycle"];

    fn defaults() -> Self {
        Self::default()
    }

    fn for_tests() -> Self {
        Self {
            lifecycle: LifecycleClientSettings {
                // Tests that talk to lifecycle set the URL of theirs.
                url: "http://127.0.0.1:9".into(),
                timeout_ms: 2_000,
                erasure_poll_ms: 100,
                erasure_settle_ms: 2_000,
                ..LifecycleClientSettings::default()
            },
        }
    }

    fn validate(settings: &ServiceSettings<Self>) -> Result<(), SettingsError> {
        let lifecycle = &settings.own.lifecycle;
        if lifecycle.erasure_poll_ms == 0
            || lifecycle.erasure_settle_ms < lifecycle.erasure_poll_ms.saturating_mul(4)
        {
            return Err(SettingsError::new(format!(
                "lifecycle.erasure_settle_ms: {} must be at least 4 × lifecycle.erasure_poll_ms ({}), which must be greater than 0: every replica polls within half of it",
                lifecycle.erasure_settle_ms, lifecycle.erasure_poll_ms
            )));
        }
        let url = &lifecycle.url;
        if url.parse::<http::Uri>().is_err() || !url.starts_with("http") {
            return Err(SettingsError::new(format!(
                "lifecycle.url: {url:?} is not an http:// or https:// URL"
            )));
        }
        if url.starts_with("https://") && settings.tls.ca_file.is_empty() {
            return Err(SettingsError::new(
                "lifecycle.url is https:// but tls.ca_file (the CA lifecycle's certificate chains to) is not set",
            ));
        }
        Ok(())
    }
}

impl ServiceSettings<LifecycleSection> {
    /// Clients of lifecycle's public and internal services for service
    /// `name`, from the `lifecycle`, `auth` and `tls` sections.
    pub fn lifecycle_clients(
        &self,
        name: &str,
    ) -> anyhow::Result<(LifecycleClient, LifecycleInternalClient)> {
        lifecycle_clients(&self.own.lifecycle, &self.auth, &self.tls, name)
    }
}

/// Deadline sent with every call to another service (`grpc-timeout`).
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);

/// How often a peer's name is resolved again.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);

/// Turns a host name into addresses. The system resolver in production;
/// tests give their own.
pub trait Resolver: Send + Sync + 'static {
    fn resolve(
        &self,
        host: String,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;
}

/// The system resolver (getaddrinfo, so also /etc/hosts and cluster DNS).
pub struct SystemDns;

impl Resolver for SystemDns {
    fn resolve(
        &self,
        host: String,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// Adds this service's own bearer token to each call it makes (jwt mode).
#[derive(Clone, Debug)]
pub struct ServiceAuth(Arc<ServiceCredentials>);

impl Interceptor for ServiceAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        match self.0.token() {
            Ok(None) => {}
            Ok(Some(token)) => {
                let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                    tonic::Status::unauthenticated("the service token is not valid ASCII")
                })?;
                request.metadata_mut().insert(AUTHORIZATION, value);
            }
            Err(error) => {
                tracing::error!(%error, "no service token for a call to another service");
                return Err(tonic::Status::unauthenticated(
                    "this service has no usable service token",
                ));
            }
        }
        Ok(request)
    }
}

/// A client of lifecycle, as scoring and opportunity hold it.
pub type LifecycleClient = LifecycleServiceClient<InterceptedService<Channel, ServiceAuth>>;
/// Lifecycle's internal service (score and opportunity deliveries).
pub type LifecycleInternalClient =
    LifecycleInternalServiceClient<InterceptedService<Channel, ServiceAuth>>;

/// Clients of lifecycle's public and internal services for service `name`,
/// over one channel: it connects on first use, reconnects after failures,
/// speaks TLS when the URL is `https://`, and carries the service's
/// credentials.
pub fn lifecycle_clients(
    lifecycle: &LifecycleClientSettings,
    auth: &AuthSettings,
    tls: &TlsSettings,
    name: &str,
) -> anyhow::Result<(LifecycleClient, LifecycleInternalClient)> {
    let credentials = ServiceCredentials::from_settings(name, auth)?;
    let tls = if lifecycle.url.starts_with("https://") {
        let uri: http::Uri = lifecycle
            .url
            .parse()
            .map_err(|e| anyhow::anyhow!("lifecycle.url: {e}"))?;
        Some(tls.client_config(uri.host().unwrap_or_default())?)
    } else {
        None
    };
    let channel = balanced_channel(
        &lifecycle.url,
        Duration::from_millis(lifecycle.timeout_ms),
        tls,
        Arc::new(SystemDns),
        RESOLVE_INTERVAL,
    )?;
    let channel = InterceptedService::new(channel, ServiceAuth(Arc::new(credentials)));
    Ok((
        LifecycleServiceClient::new(channel.clone()),
        LifecycleInternalServiceClient::new(channel),
    ))
}

fn endpoint(
    url: &str,
    timeout: Duration,
    tls: Option<&ClientTlsConfig>,
) -> anyhow::Result<Endpoint> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| anyhow::anyhow!("lifecycle.url: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| anyhow::anyhow!("tls: {e}"))?;
    }
    Ok(endpoint)
}

/// A channel that balances over every address `url`'s host resolves to,
/// resolving again every `interval` and adding or removing addresses as they
/// come and go. An IP address in the URL gives a plain channel.
pub fn balanced_channel(
    url: &str,
    timeout: Duration,
    tls: Option<ClientTlsConfig>,
    resolver: Arc<dyn Resolver>,
    interval: Duration,
) -> anyhow::Result<Channel> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("lifecycle.url: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("lifecycle.url: no host in {url}"))?;
    let scheme = uri.scheme_str().unwrap_or("http").to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    if host
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok()
    {
        return Ok(endpoint(url, timeout, tls.as_ref())?.connect_lazy());
    }
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
    let host = host.to_owned();
    tokio::spawn(async move {
        let mut current: HashSet<SocketAddr> = HashSet::new();
        loop {
            match resolver.resolve(host.clone(), port).await {
                Ok(addresses) if !addresses.is_empty() => {
                    let found: HashSet<SocketAddr> = addresses.into_iter().collect();
                    for gone in current.difference(&found) {
                        if changes.send(Change::Remove(*gone)).await.is_err() {
                            return;
                        }
                    }
                    for new in found.difference(&current) {
                        let address = format!("{scheme}://{new}");
                        let Ok(endpoint) = endpoint(&address, timeout, tls.as_ref()) else {
                            continue;
                        };
                        if changes.send(Change::Insert(*new, endpoint)).await.is_err() {
                            return;
                        }
                    }
                    current = found;
                }
                // Keep the last known addresses while the name does not resolve.
                Ok(_) => tracing::warn!(%host, "peer name resolved to no address"),
                Err(error) => tracing::warn!(%host, %error, "cannot resolve peer name"),
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = changes.closed() => return,
            }
        }
    });
    Ok(channel)
}

/// Runs a call to another service with a deadline. The deadline also covers
/// waiting for a reachable address (a balanced channel with none waits), and
/// is sent along (`grpc-timeout`) so the callee stops when the caller has.
pub async fn with_deadline<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {} ms",
            limit.as_millis()
        )))
    })
}

/// What a failed call to another service means for our caller. The peer
/// down, slow or overloaded is retryable (UNAVAILABLE, with `consequence`,
/// e.g. "nothing was written"); a peer without the RPC (an upgrade done in
/// the wrong order) is a precondition a retry will not fix; anything else is
/// a fault on our side (INTERNAL). Never the caller's bad input.
pub fn peer_failure(
    peer: &str,
    doing: &str,
    consequence: &str,
    status: &tonic::Status,
) -> crate::ServiceError {
    use tonic::Code;
    tracing::warn!(
        peer,
        code = ?status.code(),
        message = status.message(),
        "a call to {peer} failed while trying to {doing}"
    );
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::Cancelled
        | Code::Unknown => crate::ServiceError::Unavailable(format!(
            "{peer} could not {doing} ({:?}: {}); {consequence}; retry",
            status.code(),
            status.message()
        )),
        Code::Unimplemented => crate::ServiceError::precondition(
            format!("{}_VERSION", peer.to_uppercase()),
            peer,
            format!("{peer} is older than this service: upgrade {peer} first"),
        ),
        _ => crate::ServiceError::internal(anyhow::anyhow!(
            "{peer} refused to {doing}: {:?}: {}",
            status.code(),
            status.message()
        )),
    }
}

/// A request to another service made while handling a request with
/// `context`: same tenant and actor, and a deadline no later than the
/// caller's own, so the callee stops when nobody waits any more.
pub fn outgoing_for<T>(context: &crate::RequestContext, message: T) -> tonic::Request<T> {
    let mut request = outgoing(context.tenant.as_str(), &context.actor, message);
    request.set_timeout(context.call_budget(CALL_DEADLINE));
    request
}

/// A request to another service on behalf of `tenant`, acting as `actor`,
/// joined to the current trace.
pub fn outgoing<T>(tenant: &str, actor: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_DEADLINE);
    let metadata = request.metadata_mut();
    if let Ok(value) = MetadataValue::try_from(tenant) {
        metadata.insert(TENANT_HEADER, value);
    }
    // An actor the callee would refuse is left out: it then records this
    // service (the token's subject), rather than refusing the call.
    if let Some(value) =
        crate::context::relayable_actor(actor).and_then(|a| MetadataValue::try_from(a).ok())
    {
        metadata.insert(ACTOR_HEADER, value);
    }
    let context = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    for (key, value) in carrier {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            metadata.insert(key, value);
        }
    }
    request
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_faults_a_retry_can_cure_are_unavailable() {
        use tonic::Code;
        let cases = [
            (Code::Unavailable, Code::Unavailable),
            (Code::DeadlineExceeded, Code::Unavailable),
            (Code::ResourceExhausted, Code::Unavailable),
            (Code::Aborted, Code::Unavailable),
            (Code::Unimplemented, Code::FailedPrecondition),
            (Code::PermissionDenied, Code::Internal),
            (Code::Unauthenticated, Code::Internal),
            (Code::InvalidArgument, Code::Internal),
        ];
        for (from_lifecycle, to_caller) in cases {
            let error = peer_failure(
                "lifecycle",
                "check people",
                "nothing was written",
                &tonic::Status::new(from_lifecycle, "x"),
            );
            assert_eq!(error.code(), to_caller, "{from_lifecycle:?}");
        }
    }

    use super::*;

    fn sent_timeout<T>(request: &tonic::Request<T>) -> Duration {
        request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::context::parse_grpc_timeout)
            .expect("a valid grpc-timeout sent")
    }

    #[test]
    fn calls_carry_the_callers_remaining_deadline() {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", "200m".parse().expect("header"));
        let context = crate::RequestContext::from_headers(&headers).expect("context");
        let sent = sent_timeout(&outgoing_for(&context, ()));
        assert!(
            sent <= Duration::from_millis(200) && sent > Duration::from_millis(100),
            "{sent:?}"
        );
        // Without a caller deadline, the call still has one.
        let context =
            crate::RequestContext::from_headers(&http::HeaderMap::new()).expect("context");
        assert_eq!(sent_timeout(&outgoing_for(&context, ())), CALL_DEADLINE);
        // A caller that allows more than the service-to-service limit gets the limit.
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", "1H".parse().expect("header"));
        let context = crate::RequestContext::from_headers(&headers).expect("context");
        assert_eq!(sent_timeout(&outgoing_for(&context, ())), CALL_DEADLINE);
    }
}
