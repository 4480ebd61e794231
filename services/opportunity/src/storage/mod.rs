//! Storage of the opportunity service.

pub mod migration;
