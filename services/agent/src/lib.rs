//! # meridian-agent
//!
//! The governance agent that runs beside API providers, discovers their APIs
//! and streams them to the hub over gRPC (`schemas/proto/agent.proto`).
//!
//! Modules: [`config`] (the documented `agent-config.yaml` with environment
//! overrides and `TYK_AGENT_...` aliases), [`session`] (the connection to
//! the hub), [`providers`] (where APIs are discovered), [`probe`] (liveness
//! and readiness).
//!
//! Not yet here (issue 3 is open): TLS towards the hub and Kubernetes leader
//! election. Their configuration is parsed and checked already; the agent
//! refuses to start with either enabled, saying so.

pub mod config;
pub mod probe;
pub mod providers;
pub mod session;
