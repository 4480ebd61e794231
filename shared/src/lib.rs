//! Cascade's shared crate: the domain vocabulary used by more than one
//! service, and the chassis every service is built on (one error type, one
//! settings loader, one telemetry set-up, one server bootstrap).

pub mod auth;
pub mod client;
pub mod context;
pub mod context_layer;
pub mod db;
pub mod domain;
pub mod error;
pub mod ids;
pub mod limit;
pub mod malformed;
pub mod outbox;
pub mod page;
pub mod secret;
pub mod server;
pub mod settings;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod trace;
pub mod validate;

#[cfg(feature = "testing")]
pub mod testing;

pub use context::{RequestContext, TenantId};
pub use error::{FieldViolation, PreconditionViolation, ServiceError};

#[doc(hidden)]
pub use serde as __serde;

/// The result of every handler and repository call.
pub type ServiceResult<T> = Result<T, ServiceError>;
