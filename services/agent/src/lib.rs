//! # meridian-agent
//!
//! The governance agent that runs beside API providers, discovers their APIs
//! and streams them to the hub over gRPC (`schemas/proto/agent.proto`).
//!
//! So far: [`config`], the documented `agent-config.yaml` with environment
//! overrides and `TYK_AGENT_...` aliases. The connection, the providers, the
//! health probe and leader election follow (issue 3); until then the
//! development launcher's demo agent (`meridian::demo_agent`) speaks the
//! protocol.

pub mod config;
