//! JetStream stream names and subjects. Nothing outside this module spells
//! them.
//!
//! Subject tokens built from user input are validated first: agent ids are
//! UUIDs, and provider names pass [`validate_provider_name`], so a `.`, `*`,
//! `>` or space in a name can never change routing.

use crate::ids::{AgentId, JobId};

/// The agent registry: registrations, updates, deletions, tokens, connections.
pub const AGENTS: &str = "AGENTS";
/// Latest heartbeat per agent (one message kept per subject).
pub const AGENT_HEARTBEATS: &str = "AGENT_HEARTBEATS";
/// Sync runs as the agents stream them: started, api, completed, failed.
pub const SYNC: &str = "SYNC";
/// API lifecycle events emitted by inventory: created, updated, deleted, restored.
pub const API_LIFECYCLE: &str = "API_LIFECYCLE";
/// Sync jobs and their firings, written by the scheduler.
pub const SCHEDULE: &str = "SCHEDULE";

/// Subject filter that captures a whole stream.
pub fn stream_subjects(stream: &str) -> &'static str {
    match stream {
        AGENTS => "agents.>",
        AGENT_HEARTBEATS => "heartbeats.>",
        SYNC => "sync.>",
        API_LIFECYCLE => "lifecycle.>",
        SCHEDULE => "schedule.>",
        crate::public::EVENTS => crate::public::ALL_EVENTS,
        other => panic!("unknown stream {other}"),
    }
}

/// Registry events of one agent.
pub fn agent_subject(agent: AgentId) -> String {
    format!("agents.{agent}")
}

/// Heartbeats of one agent.
pub fn heartbeat_subject(agent: AgentId) -> String {
    format!("heartbeats.{agent}")
}

/// Which messages of a run a `SYNC` subject carries: the run's start and end
/// (`run`), or its discovered APIs (`api`). Consumers that only follow runs
/// (the scheduler) filter on [`SYNC_RUN_EVENTS`] and skip the bulk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPart {
    /// `started`, `completed`, `failed`.
    Run,
    /// One message per discovered API.
    Api,
}

/// Sync events of one provider of one agent. `provider` must have passed
/// [`validate_provider_name`].
pub fn sync_subject(agent: AgentId, provider: &str, part: SyncPart) -> String {
    debug_assert!(validate_provider_name(provider).is_ok());
    let part = match part {
        SyncPart::Run => "run",
        SyncPart::Api => "api",
    };
    format!("sync.{agent}.{provider}.{part}")
}

/// Filter of every run start and end in `SYNC`, without the APIs.
pub const SYNC_RUN_EVENTS: &str = "sync.*.*.run";

/// Definitions and changes of one agent's sync jobs.
pub fn job_subject(agent: AgentId, job: JobId) -> String {
    format!("schedule.jobs.{agent}.{job}")
}

/// Firings of one job. The scheduler publishes each firing expecting this
/// subject's last sequence to be the one it knows, so of several replicas
/// only one can fire a job for a given due time.
pub fn job_fire_subject(job: JobId) -> String {
    format!("schedule.fires.{job}")
}

/// What became of each firing of one job.
pub fn job_outcome_subject(job: JobId) -> String {
    format!("schedule.outcomes.{job}")
}

/// Lifecycle messages of one type (`changes`).
pub fn lifecycle_subject(kind: &str) -> String {
    format!("lifecycle.api.{kind}")
}

/// Core-NATS request subject served by the agent-gateway replica that holds
/// the agent's sync stream. No responder means the agent is not connected.
pub fn sync_request_subject(agent: AgentId) -> String {
    format!("meridian.agent.{agent}.sync")
}

/// Longest provider name accepted, in bytes.
pub const MAX_PROVIDER_NAME_BYTES: usize = 128;

/// Checks a provider name: 1 to 128 bytes, no `.`, `*`, `>`, whitespace or
/// control characters. The error says why, for use in an error message.
pub fn validate_provider_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_PROVIDER_NAME_BYTES {
        return Err(format!("must be at most {MAX_PROVIDER_NAME_BYTES} bytes"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "must not contain {c:?} ('.', '*', '>', whitespace and control characters are not allowed)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_that_would_change_routing_are_refused() {
        for bad in ["", "a.b", "a*", "a>", "a b", "a\tb", "a\u{0}b"] {
            assert!(validate_provider_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["tyk-provider", "aws_us-east-1", "Prod/EU", "ünïcode"] {
            assert!(validate_provider_name(good).is_ok(), "{good:?} refused");
        }
        assert!(validate_provider_name(&"x".repeat(129)).is_err());
    }
}
