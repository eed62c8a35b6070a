//! # meridian-agent-gateway
//!
//! Terminates the agents' gRPC streams and owns the agent registry and tokens.
//!
//! - Agents authenticate with a JWT (`authorization: Bearer ...`) that the
//!   REST API issues; the registry keeps only the current token's id.
//! - The health stream announces providers and carries heartbeats; status is
//!   `ACTIVE` until `missed_heartbeats x heartbeat_interval` passes without one.
//! - The sync stream carries sync requests to the agent and the runs back,
//!   appended to `SYNC` with idempotent ids.
//!
//! Publishes: `AGENTS` (registry events), `AGENT_HEARTBEATS`, `SYNC`.
//! Consumes: `AGENTS` (ordered consumer, rebuilt in memory at start).
//! Serves: core-NATS requests on `meridian.agent.<id>.sync` for the agents
//! whose sync stream it holds.
//!
//! Modules: [`domain`] (registry rules, pure), [`adapters`] (registry
//! projection, tokens, gRPC), [`api`] (REST), [`app`] (wiring).

pub mod adapters;
pub mod api;
pub mod app;
pub mod domain;

pub use app::{App, Config};
