//! # meridian-agent
//!
//! The governance agent that runs beside API providers, discovers their APIs
//! and streams them to the hub over gRPC (`schemas/proto/agent.proto`).
//!
//! Modules: [`app`] (wiring), [`config`] (the documented `agent-config.yaml`
//! with environment overrides and `TYK_AGENT_...` aliases), [`session`] (the connection to
//! the hub), [`tls`] (TLS and mTLS towards it), [`election`] (Kubernetes
//! Lease leader election and the fencing token), [`providers`] (where APIs
//! are discovered), [`probe`] (liveness and readiness).

pub mod app;
pub mod config;
pub mod election;
pub mod probe;
pub mod providers;
pub mod session;
pub mod tls;
