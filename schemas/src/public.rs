//! The public events: what outside consumers subscribe to, in any language.
//!
//! CloudEvents 1.0 in structured JSON mode (the NATS binding: the message body
//! is the whole event, `content-type: application/cloudevents+json`) on the
//! `MERIDIAN_EVENTS` stream. Each event type has a JSON Schema in
//! `schemas/json/` (generated from these types; a test fails when they
//! disagree) and `schemas/asyncapi.yaml` documents the channels.
//!
//! Subjects, filterable with ordinary NATS wildcards:
//! - `events.api.<kind>.<agent id>.<provider>`: `kind` is `created`,
//!   `updated`, `deleted` or `restored`;
//! - `events.agent.status_changed.<agent id>`.
//!
//! `<provider>` is the provider name escaped by [`streams::escape_token`]:
//! every byte other than `A-Z a-z 0-9 - _` is written `%XX` (upper-case hex
//! of the UTF-8 byte), so `team.a payments` becomes `team%2Ea%20payments`. A
//! dot, space, `*` or `>` in a name can never change routing. The stream and
//! its subjects are named in [`streams`], like every other.
//!
//! Event ids are deterministic (UUID v5 of the change's identity), and every
//! publish carries `Nats-Msg-Id` = the event id: consumers may dedupe on `id`.

use serde::{Deserialize, Serialize};
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

use crate::ids::{AgentId, MERIDIAN_NAMESPACE};
use crate::lifecycle::{LifecycleEvent, LifecycleKind};
use crate::streams;

/// `source` of API lifecycle events.
pub const API_SOURCE: &str = "urn:meridian:inventory";
/// `source` of agent status events.
pub const AGENT_SOURCE: &str = "urn:meridian:agents";
/// `source` of key, policy and OAuth client events.
pub const ACCESS_SOURCE: &str = "urn:meridian:key-issuer";
/// `source` of Product, Plan and provisioning events.
pub const PORTAL_SOURCE: &str = "urn:meridian:portal-sync";
/// The NATS header and value of structured-mode CloudEvents.
pub const CONTENT_TYPE: (&str, &str) = ("content-type", "application/cloudevents+json");

/// Every public event type, with the file of its JSON Schema.
pub const EVENT_TYPES: [(&str, &str); 26] = [
    ("io.meridian.api.created", "api.created.json"),
    ("io.meridian.api.updated", "api.updated.json"),
    ("io.meridian.api.deleted", "api.deleted.json"),
    ("io.meridian.api.restored", "api.restored.json"),
    (
        "io.meridian.agent.status_changed",
        "agent.status_changed.json",
    ),
    ("io.meridian.key.created", "key.created.json"),
    ("io.meridian.key.updated", "key.updated.json"),
    ("io.meridian.key.deleted", "key.deleted.json"),
    ("io.meridian.policy.created", "policy.created.json"),
    ("io.meridian.policy.updated", "policy.updated.json"),
    ("io.meridian.policy.deleted", "policy.deleted.json"),
    (
        "io.meridian.oauth_client.created",
        "oauth_client.created.json",
    ),
    (
        "io.meridian.oauth_client.updated",
        "oauth_client.updated.json",
    ),
    (
        "io.meridian.oauth_client.deleted",
        "oauth_client.deleted.json",
    ),
    ("io.meridian.product.created", "product.created.json"),
    ("io.meridian.product.updated", "product.updated.json"),
    ("io.meridian.product.hidden", "product.hidden.json"),
    ("io.meridian.product.restored", "product.restored.json"),
    ("io.meridian.product.deleted", "product.deleted.json"),
    ("io.meridian.plan.created", "plan.created.json"),
    ("io.meridian.plan.updated", "plan.updated.json"),
    ("io.meridian.plan.hidden", "plan.hidden.json"),
    ("io.meridian.plan.restored", "plan.restored.json"),
    ("io.meridian.plan.deleted", "plan.deleted.json"),
    (
        "io.meridian.provisioning.approved",
        "provisioning.approved.json",
    ),
    (
        "io.meridian.provisioning.rejected",
        "provisioning.rejected.json",
    ),
];

/// A CloudEvent in structured JSON mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudEvent<D> {
    /// Always `1.0`.
    pub specversion: String,
    /// Deterministic: the same change always has the same id.
    pub id: String,
    /// Which part of Meridian emitted it.
    pub source: String,
    /// `io.meridian.api.<kind>` or `io.meridian.agent.status_changed`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The API id, or the agent id.
    pub subject: String,
    /// When the change happened (RFC 3339).
    pub time: String,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// W3C trace context of the operation that caused the event (the
    /// CloudEvents distributed-tracing extension), when it was traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The payload.
    pub data: D,
}

/// `data` of the API lifecycle events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiEventData {
    /// The API's repository id.
    #[schema(format = Uuid)]
    pub api_id: String,
    /// The agent that reported it.
    #[schema(format = Uuid)]
    pub agent_id: String,
    /// The provider it lives in (unescaped).
    pub provider: String,
    /// The provider's kind (`tyk`, `aws`, ...).
    pub provider_type: String,
    /// The API's name at the time of the change.
    pub name: String,
    /// The API's version at the time of the change.
    pub version: String,
    /// SHA-256 (hex) of the normalized definition after the change.
    pub definition_hash: String,
    /// The sync run that caused the change.
    #[schema(format = Uuid)]
    pub run_id: String,
    /// For `updated`: what changed, among `name`, `version`, `paths`,
    /// `upstream`, `auth`, `tags`, `stages`, `spec`, `raw`. Empty otherwise.
    pub changed: Vec<String>,
}

/// `data` of `io.meridian.agent.status_changed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentStatusData {
    /// The agent.
    #[schema(format = Uuid)]
    pub agent_id: String,
    /// The new status.
    #[schema(pattern = "^(ACTIVE|INACTIVE)$")]
    pub status: String,
    /// The status before.
    #[schema(pattern = "^(ACTIVE|INACTIVE)$")]
    pub previous_status: String,
    /// The newest heartbeat the hub had received (RFC 3339).
    pub last_heartbeat: String,
}

/// `data` of `io.meridian.key.*`: never the key, only its hash and alias.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyEventData {
    /// SHA-256 (hex) of the key: what `GET /tyk/keys/{hash}?hashed=true` takes.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub key_hash: String,
    /// The key's alias (may be empty).
    pub alias: String,
    /// Its organisation (may be empty).
    pub org_id: String,
    /// The policies it applies (empty for a deletion).
    pub policies: Vec<String>,
    /// The APIs it grants access to, by API id (empty for a deletion).
    pub api_ids: Vec<String>,
    /// Position of the change in Meridian's `KEYS` log: increases with
    /// every change, so consumers can order what they receive.
    pub sequence: u64,
}

/// `data` of `io.meridian.policy.*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyEventData {
    /// The policy id.
    pub policy_id: String,
    /// Its name (empty for a deletion).
    pub name: String,
    /// Its organisation (may be empty).
    pub org_id: String,
    /// The APIs it grants access to, by API id (empty for a deletion).
    pub api_ids: Vec<String>,
    /// See [`KeyEventData::sequence`].
    pub sequence: u64,
}

/// `data` of `io.meridian.oauth_client.*`: never the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthClientEventData {
    /// The client id.
    pub client_id: String,
    /// The API it belongs to (may be empty when a policy names its APIs).
    pub api_id: String,
    /// The policy whose access rights its tokens get (may be empty).
    pub policy_id: String,
    /// Why the event: `created`, `updated`, `secret_rotated` or `deleted`.
    #[schema(pattern = "^(created|updated|secret_rotated|deleted)$")]
    pub change: String,
    /// See [`KeyEventData::sequence`].
    pub sequence: u64,
}

/// `data` of `io.meridian.product.*` and `io.meridian.plan.*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogueEventData {
    /// The Product's or Plan's portal id.
    #[schema(format = Uuid)]
    pub id: String,
    /// The portal provider it comes from.
    #[schema(format = Uuid)]
    pub provider_id: String,
    /// The provider's policy behind it.
    pub policy_id: String,
    /// Its name.
    pub name: String,
    /// Whether developers see it now.
    pub published: bool,
    /// Whether it is hidden (its policy was not retrieved by the last sync).
    pub hidden: bool,
    /// The APIs it grants access to, by the provider's API id (Plans: empty).
    pub api_ids: Vec<String>,
    /// Position of the change in Meridian's `PORTAL` log: increases with
    /// every change, so consumers can order what they receive.
    pub sequence: u64,
}

/// `data` of `io.meridian.provisioning.*`: never the key, only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningEventData {
    /// The provisioning request.
    #[schema(format = Uuid)]
    pub request_id: String,
    /// The app that asked.
    #[schema(format = Uuid)]
    pub app_id: String,
    /// The Product asked for.
    #[schema(format = Uuid)]
    pub product_id: String,
    /// The Plan asked for.
    #[schema(format = Uuid)]
    pub plan_id: String,
    /// `true` when the Plan approved it without an admin.
    pub automatic: bool,
    /// For `approved`: SHA-256 (hex) of the key the provider issued; empty
    /// for `rejected`.
    pub key_hash: String,
    /// See [`CatalogueEventData::sequence`].
    pub sequence: u64,
}

/// The public form of a portal change: `entity` is `product`, `plan` or
/// `provisioning`; `kind` the change; `subject` the entity's id. The id
/// derives from the `PORTAL` sequence, so relaying it again yields the same
/// id.
pub fn portal_event<D>(
    entity: &str,
    kind: &str,
    subject: &str,
    sequence: u64,
    at_ms: i64,
    data: D,
) -> CloudEvent<D> {
    CloudEvent {
        specversion: "1.0".into(),
        id: event_id(&format!("public:portal:{sequence}")),
        source: PORTAL_SOURCE.into(),
        event_type: format!("io.meridian.{entity}.{kind}"),
        subject: subject.to_owned(),
        time: rfc3339(at_ms),
        datacontenttype: "application/json".into(),
        traceparent: None,
        data,
    }
}

/// Which key-issuer entity a public event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessEntity {
    /// `io.meridian.key.*`
    Key,
    /// `io.meridian.policy.*`
    Policy,
    /// `io.meridian.oauth_client.*`
    OAuthClient,
}

impl AccessEntity {
    /// The type's and subject's token: `key`, `policy`, `oauth_client`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Policy => "policy",
            Self::OAuthClient => "oauth_client",
        }
    }
}

/// The public form of a key-issuer change: `kind` is `created`, `updated`
/// or `deleted`; `subject` the key hash, policy id or client id. The id is
/// derived from the `KEYS` sequence, so relaying it again yields the same id.
pub fn access_event<D>(
    entity: AccessEntity,
    kind: &str,
    subject: &str,
    sequence: u64,
    at_ms: i64,
    data: D,
) -> CloudEvent<D> {
    CloudEvent {
        specversion: "1.0".into(),
        id: event_id(&format!("public:keys:{sequence}")),
        source: ACCESS_SOURCE.into(),
        event_type: format!("io.meridian.{}.{kind}", entity.as_str()),
        subject: subject.to_owned(),
        time: rfc3339(at_ms),
        datacontenttype: "application/json".into(),
        traceparent: None,
        data,
    }
}

/// Why a filter of the public events is refused; the message starts with
/// the argument at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Not an event type.
    #[error("type: unknown event type {0:?} (created, updated, deleted, restored, status_changed)")]
    UnknownType(String),
    /// A provider with agent status events, which have none.
    #[error("provider: agent status events have no provider")]
    ProviderOfStatus,
    /// An empty provider.
    #[error("provider: must not be empty")]
    EmptyProvider,
}

impl FilterError {
    /// The argument at fault (`type` or `provider`).
    pub fn field(&self) -> &'static str {
        match self {
            Self::UnknownType(_) => "type",
            Self::ProviderOfStatus | Self::EmptyProvider => "provider",
        }
    }
}

/// The subject filter for a consumer that wants one event type (`created`,
/// `updated`, `deleted`, `restored`, `status_changed`, or the full
/// `io.meridian....` name) and/or one provider's events.
pub fn filter_for(event_type: Option<&str>, provider: Option<&str>) -> Result<String, FilterError> {
    let short = event_type.map(|t| {
        t.strip_prefix("io.meridian.api.")
            .or_else(|| t.strip_prefix("io.meridian.agent."))
            .unwrap_or(t)
    });
    let kind = match short {
        None => None,
        Some("created") => Some(LifecycleKind::Created),
        Some("updated") => Some(LifecycleKind::Updated),
        Some("deleted") => Some(LifecycleKind::Deleted),
        Some("restored") => Some(LifecycleKind::Restored),
        Some("status_changed") => {
            return match provider {
                Some(_) => Err(FilterError::ProviderOfStatus),
                None => Ok(streams::AGENT_STATUS_EVENTS.into()),
            };
        }
        Some(other) => return Err(FilterError::UnknownType(other.to_owned())),
    };
    if provider.is_some_and(str::is_empty) {
        return Err(FilterError::EmptyProvider);
    }
    Ok(match (kind, provider) {
        (None, None) => streams::ALL_EVENTS.into(),
        (kind, provider) => streams::api_event_filter(kind.map(LifecycleKind::as_str), provider),
    })
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "0001-01-01T00:00:00.000Z".to_owned())
}

fn event_id(identity: &str) -> String {
    Uuid::new_v5(&MERIDIAN_NAMESPACE, identity.as_bytes()).to_string()
}

/// The public form of an API lifecycle change.
pub fn api_event(e: &LifecycleEvent) -> CloudEvent<ApiEventData> {
    CloudEvent {
        specversion: "1.0".into(),
        id: event_id(&format!(
            "public:api:{}:{}:{}",
            e.api_id,
            e.kind.as_str(),
            e.source_seq
        )),
        source: API_SOURCE.into(),
        event_type: format!("io.meridian.api.{}", e.kind.as_str()),
        subject: e.api_id.to_string(),
        time: rfc3339(e.at_ms),
        datacontenttype: "application/json".into(),
        traceparent: None,
        data: ApiEventData {
            api_id: e.api_id.to_string(),
            agent_id: e.agent_id.to_string(),
            provider: e.provider.clone(),
            provider_type: e.provider_type.clone(),
            name: e.name.clone(),
            version: e.version.clone(),
            definition_hash: e.content_hash.clone(),
            run_id: e.run_id.to_string(),
            changed: e.changed.clone(),
        },
    }
}

/// The public form of an agent's status change. `since_ms` identifies the
/// change (the heartbeat that began the active period, or the instant the
/// agent's last heartbeat expired), so recomputing it yields the same id.
pub fn agent_status_event(
    agent: AgentId,
    active: bool,
    since_ms: i64,
    last_heartbeat_ms: Option<i64>,
) -> CloudEvent<AgentStatusData> {
    let (status, previous) = if active {
        ("ACTIVE", "INACTIVE")
    } else {
        ("INACTIVE", "ACTIVE")
    };
    CloudEvent {
        specversion: "1.0".into(),
        id: event_id(&format!("public:agent:{agent}:{status}:{since_ms}")),
        source: AGENT_SOURCE.into(),
        event_type: "io.meridian.agent.status_changed".into(),
        subject: agent.to_string(),
        time: rfc3339(since_ms),
        datacontenttype: "application/json".into(),
        traceparent: None,
        data: AgentStatusData {
            agent_id: agent.to_string(),
            status: status.into(),
            previous_status: previous.into(),
            last_heartbeat: last_heartbeat_ms
                .map_or_else(|| "0001-01-01T00:00:00.000Z".to_owned(), rfc3339),
        },
    }
}

/// The JSON Schema (2020-12) of one public event type, as checked in under
/// `schemas/json/`: the CloudEvents attributes with `type` fixed, and `data`
/// from the Rust type.
pub fn json_schema(event_type: &str) -> Option<serde_json::Value> {
    let file = EVENT_TYPES
        .iter()
        .find(|(t, _)| *t == event_type)
        .map(|(_, f)| *f)?;
    let uuid = serde_json::json!({"type": "string", "format": "uuid"});
    let (data, source, subject) = match event_type.split('.').nth(2) {
        Some("api") => (ApiEventData::schema(), API_SOURCE, uuid),
        Some("agent") => (AgentStatusData::schema(), AGENT_SOURCE, uuid),
        Some("key") => (
            KeyEventData::schema(),
            ACCESS_SOURCE,
            serde_json::json!({"type": "string", "pattern": "^[0-9a-f]{64}$",
                "description": "SHA-256 (hex) of the key"}),
        ),
        Some("policy") => (
            PolicyEventData::schema(),
            ACCESS_SOURCE,
            serde_json::json!({"type": "string", "description": "The policy id"}),
        ),
        Some("product" | "plan") => (CatalogueEventData::schema(), PORTAL_SOURCE, uuid),
        Some("provisioning") => (ProvisioningEventData::schema(), PORTAL_SOURCE, uuid),
        _ => (
            OAuthClientEventData::schema(),
            ACCESS_SOURCE,
            serde_json::json!({"type": "string", "description": "The OAuth client id"}),
        ),
    };
    let data = serde_json::to_value(data).ok()?;
    Some(serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("https://meridian.dev/schemas/{file}"),
        "title": event_type,
        "description": "A Meridian public event: CloudEvents 1.0, structured JSON mode.",
        "type": "object",
        "additionalProperties": false,
        "required": ["specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "format": "uuid"},
            "source": {"const": source},
            "type": {"const": event_type},
            "subject": subject,
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"const": "application/json"},
            "traceparent": {
                "type": "string",
                "description": "W3C trace context of the operation that caused the event (CloudEvents distributed-tracing extension); present when it was traced.",
                "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
            },
            "data": data,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_select_by_type_and_provider() {
        assert_eq!(filter_for(None, None).unwrap(), "events.>");
        assert_eq!(
            filter_for(Some("deleted"), None).unwrap(),
            "events.api.deleted.*.*"
        );
        assert_eq!(
            filter_for(Some("io.meridian.api.updated"), Some("team.a payments")).unwrap(),
            "events.api.updated.*.team%2Ea%20payments"
        );
        assert_eq!(filter_for(None, Some("tyk")).unwrap(), "events.api.*.*.tyk");
        assert_eq!(
            filter_for(Some("status_changed"), None).unwrap(),
            "events.agent.status_changed.*"
        );
        let status = filter_for(Some("status_changed"), Some("x")).unwrap_err();
        assert_eq!(status.field(), "provider");
        assert!(status.to_string().starts_with("provider"));
        let exploded = filter_for(Some("exploded"), None).unwrap_err();
        assert_eq!(exploded.field(), "type");
        assert!(exploded.to_string().starts_with("type"));
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_685_620_800_123), "2023-06-01T12:00:00.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    /// The checked-in schemas are what the Rust types say. To regenerate:
    /// `MERIDIAN_WRITE_SCHEMAS=1 cargo test -p meridian-schemas`.
    #[test]
    fn checked_in_json_schemas_match_the_rust_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
        for (event_type, file) in EVENT_TYPES {
            let generated = json_schema(event_type).unwrap();
            let path = dir.join(file);
            if std::env::var_os("MERIDIAN_WRITE_SCHEMAS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
                std::fs::write(&path, text).unwrap();
            }
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; regenerate with MERIDIAN_WRITE_SCHEMAS=1",
                    path.display()
                )
            });
            let checked_in: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                checked_in,
                generated,
                "{} disagrees with the Rust types; regenerate with MERIDIAN_WRITE_SCHEMAS=1 and review the diff",
                path.display()
            );
        }
    }

    #[test]
    fn asyncapi_documents_every_event_type_and_schema() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("asyncapi.yaml");
        let doc = std::fs::read_to_string(&path).unwrap();
        for (event_type, file) in EVENT_TYPES {
            assert!(doc.contains(event_type), "asyncapi.yaml lacks {event_type}");
            assert!(
                doc.contains(&format!("json/{file}")),
                "asyncapi.yaml lacks json/{file}"
            );
        }
        for channel in [
            "events.api.{kind}.{agentId}.{provider}",
            "events.agent.status_changed.{agentId}",
            "events.key.{kind}.{orgId}",
            "events.policy.{kind}.{orgId}",
            "events.oauth_client.{kind}.{apiId}",
            "events.product.{kind}.{providerId}",
            "events.plan.{kind}.{providerId}",
            "events.provisioning.{kind}.{appId}",
        ] {
            assert!(
                doc.contains(channel),
                "asyncapi.yaml lacks channel {channel}"
            );
        }
    }
}
