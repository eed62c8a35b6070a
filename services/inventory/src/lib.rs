//! # meridian-inventory
//!
//! The API Repository. It folds the `SYNC` stream (what agents sent during
//! sync runs) into a sled repository, reconciles deletions (see [`domain`] for
//! the rules), and emits API lifecycle events (`created`, `updated`,
//! `deleted`, `restored`) on `API_LIFECYCLE` exactly once per change.
//!
//! Consumes: `SYNC` (durable consumer `inventory-repository`); reads the
//! latest heartbeat per agent from `AGENT_HEARTBEATS`.
//! Publishes: `API_LIFECYCLE` (`lifecycle.api.<kind>`).
//!
//! Modules:
//! - [`domain`]: records and reconciliation rules (pure).
//! - [`adapters`]: the sled projection and queries, the outbox publisher.
//! - [`api`]: REST handlers.
//! - [`app`]: configuration and wiring, `rebuild`.

pub mod adapters;
pub mod api;
pub mod app;
pub mod domain;

pub use app::{App, Config, RebuildReport, rebuild};
