//! # meridian-inventory
//!
//! The API Repository. It folds the `SYNC` stream (what agents sent during
//! sync runs) into a repository in the local store, reconciles deletions (see [`domain`] for
//! the rules), and emits API lifecycle events (`created`, `updated`,
//! `deleted`, `restored`) on `API_LIFECYCLE` exactly once per change.
//!
//! It also feeds the public stream `MERIDIAN_EVENTS` (CloudEvents JSON): a
//! relay republishes `API_LIFECYCLE`, and a watcher publishes agent status
//! changes (see [`adapters::public`]).
//!
//! Consumes: `SYNC` (durable consumer `inventory-repository`),
//! `API_LIFECYCLE` (durable consumer `inventory-public-relay`),
//! `AGENT_HEARTBEATS`.
//! Publishes: `API_LIFECYCLE` (`lifecycle.api.<kind>`), `MERIDIAN_EVENTS`.
//!
//! Modules:
//! - [`domain`]: records and reconciliation rules (pure).
//! - [`adapters`]: the stored projection and queries, the outbox publisher.
//! - [`api`]: REST handlers.
//! - [`app`]: configuration and wiring, `rebuild`.

pub mod adapters;
pub mod api;
pub mod app;
pub mod domain;

pub use app::{App, Config, RebuildReport, rebuild};
