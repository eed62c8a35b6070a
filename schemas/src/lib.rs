//! # meridian-schemas
//!
//! The contract between Meridian services, and the one place other teams need
//! to read to talk to the hub:
//!
//! - [`proto`]: `agent.proto`, the gRPC contract between agents and the hub.
//! - [`streams`]: JetStream stream names and subject builders. No other crate
//!   spells a stream or subject name.
//! - [`envelope`]: the versioned envelope every event travels in (postcard).
//! - [`ids`]: id newtypes, including the deterministic API id.
//! - [`agents`], [`sync`], [`lifecycle`], [`schedule`], [`keys`], [`apis`],
//!   [`portal`], [`console`]: the event types of the `AGENTS`,
//!   `AGENT_HEARTBEATS`, `SYNC`, `API_LIFECYCLE`, `SCHEDULE`, `KEYS`, `APIS`,
//!   `PORTAL` and `CONSOLE` streams.
//! - [`public`]: the public events (CloudEvents JSON on `MERIDIAN_EVENTS`)
//!   that outside consumers subscribe to, and their JSON Schemas.
//! - [`commands`]: request/reply commands sent over core NATS between services.
//!
//! postcard is not self-describing: fields and variants are only ever
//! appended, and a change of shape bumps the stream's schema version.
#![deny(missing_docs)]

pub mod agents;
pub mod apis;
pub mod commands;
pub mod console;
pub mod envelope;
pub mod ids;
pub mod keys;
pub mod lifecycle;
pub mod portal;
pub mod public;
pub mod schedule;
pub mod streams;
pub mod sync;

/// Generated types and client/server stubs of `proto/agent.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("meridian.agent.v1");
}

/// gRPC metadata on the sync stream carrying the opener's fencing token
/// (see `SyncMessage.fencing_token` in `agent.proto`).
pub const FENCING_TOKEN_METADATA: &str = "x-meridian-fencing-token";

pub use envelope::{DecodeError, Envelope, Event, EventMeta};
pub use ids::{AgentId, ApiId, JobId, RunId};
