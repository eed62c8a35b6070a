//! The `API_LIFECYCLE` stream: inventory's changes to the repository, each
//! emitted exactly once, in order. One message carries the changes of one
//! run from one projection batch ([`LifecycleBatch`], up to
//! [`LifecycleBatch::MAX`]): a first sync of 100,000 APIs is a few hundred
//! messages, not 100,000. Outside consumers read the public stream instead,
//! one CloudEvent per change.

use serde::{Deserialize, Serialize};

use crate::envelope::{DecodeError, Envelope, Event};
use crate::ids::{AgentId, ApiId, RunId};
use crate::streams;

/// The kind of change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LifecycleKind {
    /// First seen.
    Created,
    /// Seen again with a different definition.
    Updated,
    /// Missing from a completed run of its provider.
    Deleted,
    /// Seen again after being deleted.
    Restored,
}

impl LifecycleKind {
    /// Lower-case name, as used in subjects and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::Restored => "restored",
        }
    }
}

/// One change of one API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// The API.
    pub api_id: ApiId,
    /// What happened.
    pub kind: LifecycleKind,
    /// The agent that reported the API.
    pub agent_id: AgentId,
    /// The provider the API lives in.
    pub provider: String,
    /// The provider's kind (`tyk`, `aws`, ...).
    pub provider_type: String,
    /// The API's name at the time.
    pub name: String,
    /// The API's version at the time.
    pub version: String,
    /// Content hash of the definition at the time.
    pub content_hash: String,
    /// The sync run that caused the change.
    pub run_id: RunId,
    /// For `Updated`: which fields changed (`name`, `version`, `paths`,
    /// `upstream`, `auth`, `tags`, `stages`, `spec`, `raw`).
    pub changed: Vec<String>,
    /// The `SYNC` stream sequence that caused the change. Events are emitted in
    /// this order, which is what makes re-emission after a rebuild detectable.
    pub source_seq: u64,
    /// When the change happened (the causing sync event's time), ms since epoch.
    pub at_ms: i64,
}

impl LifecycleEvent {
    /// Where the change sorts in the stream: (causing `SYNC` sequence, API
    /// id). Unique per change.
    pub fn mark(&self) -> (u64, [u8; 16]) {
        (self.source_seq, *self.api_id.0.as_bytes())
    }
}

/// Consecutive changes caused by one run, in stream order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleBatch {
    /// The changes, ordered by [`LifecycleEvent::mark`]; never empty.
    pub events: Vec<LifecycleEvent>,
}

impl LifecycleBatch {
    /// Most changes in one message (about 300 bytes each encoded, so a
    /// message stays far below NATS's 1 MiB default payload limit).
    pub const MAX: usize = 1024;
}

impl Event for LifecycleBatch {
    // 3: a batch of changes per message (2: one change per message, with
    // `provider_type`).
    const SCHEMA_VERSION: u16 = 3;
    const STREAM: &'static str = streams::API_LIFECYCLE;

    fn event_type(&self) -> &'static str {
        "api.changes"
    }

    fn subject(&self) -> String {
        streams::lifecycle_subject("changes")
    }

    /// The first and last change it carries: a retry of the same batch
    /// repeats it.
    fn dedup_id(&self) -> String {
        let id = |e: Option<&LifecycleEvent>| {
            e.map(|e| format!("{}:{}", e.source_seq, e.api_id))
                .unwrap_or_default()
        };
        format!(
            "api-changes:{}:{}:{}",
            id(self.events.first()),
            id(self.events.last()),
            self.events.len()
        )
    }
}

/// The changes one `API_LIFECYCLE` message carries, in order: a
/// [`LifecycleBatch`], or a single change as written before batches (schema
/// version 2, type `api.created` etc.), which a stream may still hold after
/// an upgrade.
pub fn changes(envelope: &Envelope) -> Result<Vec<LifecycleEvent>, DecodeError> {
    const ONE_CHANGE_VERSION: u16 = 2;
    if envelope.schema_version == ONE_CHANGE_VERSION && envelope.event_type.starts_with("api.") {
        return postcard::from_bytes(&envelope.payload)
            .map(|event| vec![event])
            .map_err(|source| DecodeError::Payload {
                event_type: envelope.event_type.clone(),
                source,
            });
    }
    envelope.open::<LifecycleBatch>().map(|batch| batch.events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::EventMeta;

    fn change(seq: u64, kind: LifecycleKind) -> LifecycleEvent {
        LifecycleEvent {
            api_id: ApiId::derive(AgentId(uuid::Uuid::nil()), "p", &seq.to_string()),
            kind,
            agent_id: AgentId(uuid::Uuid::nil()),
            provider: "p".into(),
            provider_type: "tyk".into(),
            name: "n".into(),
            version: "v1".into(),
            content_hash: "0".repeat(64),
            run_id: RunId(uuid::Uuid::nil()),
            changed: Vec::new(),
            source_seq: seq,
            at_ms: 1,
        }
    }

    #[test]
    fn a_batch_and_an_older_single_change_both_read_as_changes() {
        let batch = LifecycleBatch {
            events: vec![
                change(1, LifecycleKind::Created),
                change(2, LifecycleKind::Deleted),
            ],
        };
        let wrapped = Envelope::wrap(&batch, EventMeta::default());
        assert_eq!(changes(&wrapped).unwrap(), batch.events);

        // What version 2 wrote: one change per message, typed by its kind.
        let old = change(3, LifecycleKind::Restored);
        let legacy = Envelope {
            event_type: "api.restored".into(),
            schema_version: 2,
            payload: postcard::to_allocvec(&old).unwrap(),
            ..wrapped.clone()
        };
        assert_eq!(changes(&legacy).unwrap(), vec![old]);

        let unknown = Envelope {
            schema_version: 9,
            ..wrapped
        };
        assert!(matches!(
            changes(&unknown),
            Err(DecodeError::UnknownVersion { found: 9, .. })
        ));
    }

    #[test]
    fn a_retried_batch_keeps_its_id_and_another_batch_gets_another() {
        let a = LifecycleBatch {
            events: vec![change(1, LifecycleKind::Created)],
        };
        let b = LifecycleBatch {
            events: vec![
                change(1, LifecycleKind::Created),
                change(2, LifecycleKind::Created),
            ],
        };
        assert_eq!(a.dedup_id(), a.clone().dedup_id());
        assert_ne!(a.dedup_id(), b.dedup_id());
    }
}
