//! Storage of the scoring service.

pub mod migration;
