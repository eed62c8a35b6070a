//! Events of the `AGENTS` and `AGENT_HEARTBEATS` streams, written by
//! agent-gateway.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::Event;
use crate::ids::AgentId;
use crate::streams;

/// A provider as an agent reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRef {
    /// Unique within the agent.
    pub name: String,
    /// Provider kind, for example `tyk` or `aws`.
    pub provider_type: String,
}

/// A change to the agent registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentEvent {
    /// An operator registered an agent.
    Registered {
        /// The new agent.
        agent_id: AgentId,
        /// Display name.
        name: String,
        /// Free text.
        description: String,
    },
    /// An operator changed an agent's name or description.
    Updated {
        /// The agent.
        agent_id: AgentId,
        /// New display name.
        name: String,
        /// New description.
        description: String,
        /// Distinguishes successive updates for deduplication.
        update_id: Uuid,
    },
    /// An operator removed the agent; its tokens are revoked with it.
    Deleted {
        /// The agent.
        agent_id: AgentId,
    },
    /// A token was issued; it replaces any earlier token of the agent.
    TokenIssued {
        /// The agent.
        agent_id: AgentId,
        /// The token's `jti`. The token itself is never stored.
        token_id: Uuid,
        /// Expiry, milliseconds since the Unix epoch.
        expires_at_ms: i64,
    },
    /// The agent's current token was revoked.
    TokenRevoked {
        /// The agent.
        agent_id: AgentId,
        /// The revoked token's `jti`.
        token_id: Uuid,
    },
    /// The agent opened its health stream and reported its providers.
    Connected {
        /// The agent.
        agent_id: AgentId,
        /// One id per connection.
        connection_id: Uuid,
        /// The providers it reported.
        providers: Vec<ProviderRef>,
        /// The agent's version string.
        agent_version: String,
    },
    /// A replica of the agent opened a sync stream as leader with a fencing
    /// token newer than any seen before; older tokens are refused from now on.
    LeaderFenced {
        /// The agent.
        agent_id: AgentId,
        /// The Lease's transition count the new leader presented.
        fencing_token: u64,
    },
}

impl AgentEvent {
    /// The agent the event is about.
    pub fn agent_id(&self) -> AgentId {
        match self {
            Self::Registered { agent_id, .. }
            | Self::Updated { agent_id, .. }
            | Self::Deleted { agent_id }
            | Self::TokenIssued { agent_id, .. }
            | Self::TokenRevoked { agent_id, .. }
            | Self::Connected { agent_id, .. }
            | Self::LeaderFenced { agent_id, .. } => *agent_id,
        }
    }
}

impl Event for AgentEvent {
    const SCHEMA_VERSION: u16 = 1;
    const STREAM: &'static str = streams::AGENTS;

    fn event_type(&self) -> &'static str {
        match self {
            Self::Registered { .. } => "agent.registered",
            Self::Updated { .. } => "agent.updated",
            Self::Deleted { .. } => "agent.deleted",
            Self::TokenIssued { .. } => "agent.token_issued",
            Self::TokenRevoked { .. } => "agent.token_revoked",
            Self::Connected { .. } => "agent.connected",
            Self::LeaderFenced { .. } => "agent.leader_fenced",
        }
    }

    fn subject(&self) -> String {
        streams::agent_subject(self.agent_id())
    }

    fn dedup_id(&self) -> String {
        let agent = self.agent_id();
        match self {
            Self::Registered { .. } => format!("agent:{agent}:registered"),
            Self::Updated { update_id, .. } => format!("agent:{agent}:updated:{update_id}"),
            Self::Deleted { .. } => format!("agent:{agent}:deleted"),
            Self::TokenIssued { token_id, .. } => format!("agent:{agent}:token:{token_id}"),
            Self::TokenRevoked { token_id, .. } => format!("agent:{agent}:revoked:{token_id}"),
            Self::Connected { connection_id, .. } => format!("agent:{agent}:conn:{connection_id}"),
            Self::LeaderFenced { fencing_token, .. } => {
                format!("agent:{agent}:fence:{fencing_token}")
            }
        }
    }
}

/// The latest sign of life of an agent; the `AGENT_HEARTBEATS` stream keeps
/// one per agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The agent.
    pub agent_id: AgentId,
    /// When the hub received it, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The agent counts as `ACTIVE` until then (at + missed beats x interval).
    pub active_until_ms: i64,
}

impl Event for Heartbeat {
    const SCHEMA_VERSION: u16 = 1;
    const STREAM: &'static str = streams::AGENT_HEARTBEATS;

    fn event_type(&self) -> &'static str {
        "agent.heartbeat"
    }

    fn subject(&self) -> String {
        streams::heartbeat_subject(self.agent_id)
    }

    fn dedup_id(&self) -> String {
        format!("hb:{}:{}", self.agent_id, self.at_ms)
    }
}

/// An agent's connection status as the hub reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentStatus {
    /// Heartbeats arrive.
    Active,
    /// No heartbeat within the missed-heartbeat window (or never).
    Inactive,
}

impl AgentStatus {
    /// Upper-case name, as the REST API prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Inactive => "INACTIVE",
        }
    }

    /// The status implied by an agent's latest heartbeat at `now_ms`.
    pub fn at(latest: Option<&Heartbeat>, now_ms: i64) -> Self {
        match latest {
            Some(h) if now_ms < h.active_until_ms => Self::Active,
            _ => Self::Inactive,
        }
    }
}
