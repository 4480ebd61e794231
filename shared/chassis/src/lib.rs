//! cascade-chassis: what every Cascade service is built on (one error type,
//! one settings loader, one telemetry set-up, one server bootstrap, one
//! outbox). The domain vocabulary is `cascade-domain`; the modules import each
//! other in one direction only (docs/architecture.md).

pub mod auth;
pub mod cli;
pub mod client;
pub mod context;
pub mod context_layer;
pub mod db;
pub mod erasure;
pub mod error;
pub mod idempotency;
pub mod limit;
pub mod malformed;
pub mod metrics;
pub mod outbox;
pub mod page;
pub mod priority;
pub mod retry;
pub mod secret;
pub mod server;
pub mod settings;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod trace;
pub mod validate;

pub use context::{RequestContext, TenantId};
pub use error::{FieldViolation, PreconditionViolation, ServiceError};

/// The result of every handler and repository call.
pub type ServiceResult<T> = Result<T, ServiceError>;
