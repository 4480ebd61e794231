//! cascade-testkit (tests only): what every Cascade test needs, once.
//!
//! - [`TestDatabase`] and [`on_each_database!`]: a fresh database per test on
//!   SQLite (always) and PostgreSQL (when `CASCADE_TEST_POSTGRES_URL` is set).
//! - [`TestServer`] and, with the `services` feature, [`TestSystem`]: the
//!   services in the test's runtime, listeners bound on port 0.
//! - [`Caller`] / [`request_for`]: requests with a tenant, actor or token.
//! - [`Lifecycle`], [`Scoring`], [`Opportunity`]: typed clients for the calls tests repeat
//!   (create an account, record activities, wait for a stage).
//! - [`fixtures`]: field masks, money, activities, status details.
//! - [`eventually`]: the one polling wait, bounded, failing with what it last saw.
//! - [`WebhookReceiver`]: a local HTTP receiver for notification webhooks.
//! - [`wait_until_delivered`]: the barrier before asserting that nothing
//!   more arrives (an outbox topic drained), and with the `services` feature
//!   [`wait_until_folded`] before it for scores; [`TempDir`] for files.

mod clients;
mod database;
pub mod fixtures;
mod outbox;
mod request;
mod server;
#[cfg(feature = "services")]
mod system;
mod tempdir;
mod wait;
mod webhook;

pub use clients::{Lifecycle, Opportunity, Scoring};
pub use database::{
    POSTGRES_URL_ENV, REQUIRE_POSTGRES_ENV, TestDatabase, someone_waits_for_a_lock,
};
pub use outbox::wait_until_delivered;
#[cfg(feature = "services")]
pub use outbox::wait_until_folded;
pub use request::{Caller, request_for};
pub use server::TestServer;
#[cfg(feature = "services")]
pub use system::{SETTLE_THROUGH_AN_OUTAGE_MS, Service, TENANT, TestSystem};
pub use tempdir::TempDir;
pub use wait::{WAIT_LIMIT, eventually, eventually_within, next_millisecond};
pub use webhook::{Received, WebhookReceiver};
