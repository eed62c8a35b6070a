//! JetStream stream names and subjects, internal and public. Nothing outside
//! this module spells them.
//!
//! Subject tokens built from user input are made safe first: agent and job
//! ids are UUIDs, and provider names (any UTF-8 of 1-128 bytes without control
//! characters, see [`validate_provider_name`]) are escaped by
//! [`escape_token`], so a `.`, `*`, `>` or space in a name can never change
//! routing.

use crate::ids::{AgentId, JobId};

/// The agent registry: registrations, updates, deletions, tokens, connections.
pub const AGENTS: &str = "AGENTS";
/// Latest heartbeat per agent (one message kept per subject).
pub const AGENT_HEARTBEATS: &str = "AGENT_HEARTBEATS";
/// Sync runs as the agents stream them: started, their APIs in chunks
/// (see [`crate::sync`]), then completed or failed.
pub const SYNC: &str = "SYNC";
/// API lifecycle events emitted by inventory: created, updated, deleted, restored.
pub const API_LIFECYCLE: &str = "API_LIFECYCLE";
/// Sync jobs and their firings, written by the scheduler.
pub const SCHEDULE: &str = "SCHEDULE";
/// The public events (CloudEvents JSON) outside consumers subscribe to.
pub const EVENTS: &str = "MERIDIAN_EVENTS";
/// Keys, policies, organisation sessions, OAuth clients and tokens, written
/// only by key-issuer (see [`crate::keys`]). Keys and secrets travel as
/// SHA-256 hashes, never in clear.
pub const KEYS: &str = "KEYS";
/// API definitions of Meridian's gateway, written only by the proxy's admin
/// side (see [`crate::apis`]).
pub const APIS: &str = "APIS";
/// The developer portal: providers, Products, Plans, apps, provisioning
/// requests and provider syncs, written only by portal-sync (see
/// [`crate::portal`]). Provider secrets travel sealed, credentials as hashes.
pub const PORTAL: &str = "PORTAL";
/// The web console's signed-out sessions (see [`crate::console`]), kept
/// for [`CONSOLE_RETENTION`].
pub const CONSOLE: &str = "CONSOLE";
/// The subject of every console session revocation.
pub const CONSOLE_REVOKED_SUBJECT: &str = "console.session.revoked";
/// How long `CONSOLE` keeps a revocation: a console session lasts twelve
/// hours, so an older revocation has nothing left to refuse.
pub const CONSOLE_RETENTION: std::time::Duration = std::time::Duration::from_secs(13 * 3600);

/// The key-value bucket of the gateway's rate-limit and quota counters
/// (one JSON record per budget, see `meridian_keys::limits`): written by
/// every proxy replica with revision-checked updates, read by key-issuer to
/// show a key's quota. Operational state, not an event log: one revision
/// kept per counter.
pub const LIMITS_BUCKET: &str = "GATEWAY_LIMITS";

/// Subject filter that captures a whole stream.
pub fn stream_subjects(stream: &str) -> &'static str {
    match stream {
        AGENTS => "agents.>",
        AGENT_HEARTBEATS => "heartbeats.>",
        SYNC => "sync.>",
        API_LIFECYCLE => "lifecycle.>",
        SCHEDULE => "schedule.>",
        KEYS => "keys.>",
        APIS => "apis.>",
        PORTAL => "portal.>",
        CONSOLE => "console.>",
        EVENTS => ALL_EVENTS,
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
    /// The run's APIs, in chunks of up to 64 (version 1: one per message).
    Api,
}

/// Sync events of one provider of one agent (the name escaped by
/// [`escape_token`]).
pub fn sync_subject(agent: AgentId, provider: &str, part: SyncPart) -> String {
    let part = match part {
        SyncPart::Run => "run",
        SyncPart::Api => "api",
    };
    format!("sync.{agent}.{}.{part}", escape_token(provider))
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

/// The `KEYS` subject of one entity: every change of a key, policy,
/// organisation session, OAuth client or token is on its own subject, so a
/// writer can publish expecting the entity's last sequence (no lost update
/// between replicas). `id` is escaped by [`escape_token`]; key and token
/// hashes are hex already.
pub fn keys_subject(kind: KeysEntity, id: &str) -> String {
    format!("keys.{}.{}", kind.as_str(), escape_token(id))
}

/// The `KEYS` subject of purges of every lapsed OAuth token.
pub const KEYS_PURGE_SUBJECT: &str = "keys.purge.tokens";

/// What a `KEYS` subject is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeysEntity {
    /// An API key (session), by the hash of the key.
    Key,
    /// A policy, by id.
    Policy,
    /// An organisation session, by organisation id.
    Org,
    /// An OAuth client, by client id.
    Client,
    /// An OAuth token, by the hash of the token.
    Token,
}

impl KeysEntity {
    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Policy => "policy",
            Self::Org => "org",
            Self::Client => "client",
            Self::Token => "token",
        }
    }
}

/// Core-NATS request subject served by every key-issuer replica: the proxy
/// records the OAuth tokens it issues there (see
/// [`crate::commands::RecordTokens`]), and the answer comes once they are
/// in `KEYS`.
pub const RECORD_TOKENS_SUBJECT: &str = "meridian.keys.tokens.record";

/// The `APIS` subject of one API definition (`id` escaped by
/// [`escape_token`]). Writers publish expecting the whole stream's last
/// sequence: a listen path must be unique among every API, so each change is
/// decided on the complete table.
pub fn api_definition_subject(api_id: &str) -> String {
    format!("apis.def.{}", escape_token(api_id))
}

/// Core-NATS subject on which every proxy replica announces, about once a
/// second and at once after each change it applied, how far it has folded
/// `APIS` and `KEYS` (see [`crate::apis::ReplicaApplied`]).
pub const PROXY_APPLIED_SUBJECT: &str = "meridian.proxy.applied";

/// Core-NATS subject of response-cache purges (`DELETE /tyk/cache/{apiID}`):
/// the payload is the API id, each proxy replica drops that API's kept
/// answers and replies with its replica id.
pub const PROXY_CACHE_PURGE_SUBJECT: &str = "meridian.proxy.cache.purge";

/// The `PORTAL` subject of one entity (`id` escaped by [`escape_token`]).
pub fn portal_subject(entity: crate::portal::PortalEntity, id: &str) -> String {
    format!("portal.{}.{}", entity.as_str(), escape_token(id))
}

/// The `PORTAL` subject of one provider's sync claims and reports. A replica
/// claims a sync by publishing expecting this subject's last sequence.
pub fn portal_sync_subject(provider_id: &str) -> String {
    format!("portal.sync.{}", escape_token(provider_id))
}

/// The public subject of a portal change: `entity` is `product`, `plan` or
/// `provisioning`, `scope` the provider id (Products, Plans) or the app id
/// (provisioning), escaped by [`escape_token`].
pub fn portal_event_subject(entity: &str, kind: &str, scope: &str) -> String {
    format!("events.{entity}.{kind}.{}", escape_token(scope))
}

/// Filters of every public portal event.
pub const PORTAL_EVENTS: [&str; 3] = ["events.product.>", "events.plan.>", "events.provisioning.>"];

/// Every subject of the public stream.
pub const ALL_EVENTS: &str = "events.>";

/// Every agent status event of the public stream.
pub const AGENT_STATUS_EVENTS: &str = "events.agent.status_changed.*";

/// The public subject of an API lifecycle event: `kind` is `created`,
/// `updated`, `deleted` or `restored`.
pub fn api_event_subject(kind: &str, agent: AgentId, provider: &str) -> String {
    format!("events.api.{kind}.{agent}.{}", escape_token(provider))
}

/// A filter of the public API events of one kind and/or one provider (every
/// kind / provider when `None`).
pub fn api_event_filter(kind: Option<&str>, provider: Option<&str>) -> String {
    format!(
        "events.api.{}.*.{}",
        kind.unwrap_or("*"),
        provider.map_or_else(|| "*".to_owned(), escape_token)
    )
}

/// The public subject of a key-issuer change: `entity` is `key`, `policy`
/// or `oauth_client`, `kind` is `created`, `updated` or `deleted`, `scope`
/// the organisation id (keys, policies) or the API id (OAuth clients),
/// escaped by [`escape_token`], `-` when there is none.
pub fn access_event_subject(entity: &str, kind: &str, scope: &str) -> String {
    let scope = if scope.is_empty() {
        "-".to_owned()
    } else {
        escape_token(scope)
    };
    format!("events.{entity}.{kind}.{scope}")
}

/// Filters of every public key-issuer event (keys, policies, OAuth clients).
pub const ACCESS_EVENTS: [&str; 3] = ["events.key.>", "events.policy.>", "events.oauth_client.>"];

/// The public subject of an agent's status changes.
pub fn agent_status_subject(agent: AgentId) -> String {
    format!("events.agent.status_changed.{agent}")
}

/// Escapes a subject token: bytes outside `A-Z a-z 0-9 - _` become `%XX`
/// (upper-case hex of the UTF-8 byte), so `team.a payments` becomes
/// `team%2Ea%20payments`. Different names give different tokens.
pub fn escape_token(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Core-NATS request subject answered by the agent-gateway replica that
/// holds a given run of the agent (see [`crate::commands::RunProbe`]); no
/// answer means no live sync stream holds it.
pub fn run_probe_subject(agent: AgentId) -> String {
    format!("meridian.agent.{agent}.runs")
}

/// Longest provider name accepted, in bytes.
pub const MAX_PROVIDER_NAME_BYTES: usize = 128;

/// Why a provider name is refused (the message follows the field's name).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// No name.
    #[error("must not be empty")]
    Empty,
    /// Over [`MAX_PROVIDER_NAME_BYTES`].
    #[error("must be at most {MAX_PROVIDER_NAME_BYTES} bytes")]
    TooLong,
    /// A control character.
    #[error("must not contain control characters (found {0:?})")]
    Control(char),
}

/// Checks a provider name: any UTF-8 of 1 to 128 bytes without control
/// characters (`tyk.eu prod` and `Production APIs` are fine: subjects carry
/// the name escaped).
pub fn validate_provider_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_PROVIDER_NAME_BYTES {
        return Err(NameError::TooLong);
    }
    match name.chars().find(|c| c.is_control()) {
        Some(c) => Err(NameError::Control(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_as_users_write_them_are_accepted_and_escaped() {
        for bad in ["", "a\tb", "a\u{0}b", "line\nbreak"] {
            assert!(validate_provider_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "tyk-provider",
            "aws_us-east-1",
            "Prod/EU",
            "ünïcode",
            "tyk.eu prod",
            "Production APIs",
            "a*b>c",
        ] {
            assert!(validate_provider_name(good).is_ok(), "{good:?} refused");
            let agent = AgentId(uuid::Uuid::nil());
            let subject = sync_subject(agent, good, SyncPart::Run);
            assert_eq!(
                subject.split('.').count(),
                4,
                "{good:?} changed the routing of {subject}"
            );
            assert!(!subject.contains(['*', '>', ' ']), "{subject}");
        }
        assert!(validate_provider_name(&"x".repeat(128)).is_ok());
        assert!(validate_provider_name(&"x".repeat(129)).is_err());
        // Names that differ keep different subjects.
        assert_ne!(escape_token("a.b"), escape_token("a%2Eb"));
    }

    #[test]
    fn escaping_keeps_routing_characters_out_of_tokens() {
        assert_eq!(escape_token("tyk-provider_1"), "tyk-provider_1");
        assert_eq!(escape_token("team.a payments"), "team%2Ea%20payments");
        assert_eq!(escape_token("a*b>c%"), "a%2Ab%3Ec%25");
        assert_eq!(escape_token("ü"), "%C3%BC");
        for name in ["team.a payments", "*", ">", "a.b.c", "x y\tz"] {
            let token = escape_token(name);
            assert!(
                !token.contains(['.', '*', '>', ' ', '\t']),
                "{name:?} -> {token:?}"
            );
        }
    }
}
