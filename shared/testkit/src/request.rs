//! Who a test request comes from: the tenant header (development mode), an
//! actor, or a bearer token (JWT mode).

use cascade_chassis::context::{ACTOR_HEADER, TENANT_HEADER};

/// The metadata a request carries. `Caller::tenant("acme").actor("ae")`.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    tenant: Option<String>,
    actor: Option<String>,
    bearer: Option<String>,
}

impl Caller {
    /// A caller of `tenant` in development mode (`x-tenant-id`).
    pub fn tenant(tenant: &str) -> Self {
        Self {
            tenant: Some(tenant.to_owned()),
            ..Self::default()
        }
    }

    /// A caller presenting a bearer token (JWT mode); the tenant is the token's.
    pub fn bearer(token: &str) -> Self {
        Self {
            bearer: Some(token.to_owned()),
            ..Self::default()
        }
    }

    /// The same caller acting as `actor` (`x-actor-id`, kept in history).
    pub fn actor(mut self, actor: &str) -> Self {
        self.actor = Some(actor.to_owned());
        self
    }

    /// The tenant this caller names, if any.
    pub fn tenant_id(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// `message` as a request from this caller.
    pub fn req<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        if let Some(tenant) = &self.tenant {
            metadata.insert(TENANT_HEADER, tenant.parse().expect("ascii tenant"));
        }
        if let Some(actor) = &self.actor {
            metadata.insert(ACTOR_HEADER, actor.parse().expect("ascii actor"));
        }
        if let Some(token) = &self.bearer {
            metadata.insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii token"),
            );
        }
        request
    }
}

/// A request carrying the development-mode tenant header.
pub fn request_for<T>(tenant: &str, message: T) -> tonic::Request<T> {
    Caller::tenant(tenant).req(message)
}
