//! Events of the `API_LIFECYCLE` stream, emitted by inventory exactly once per
//! change of an API in the repository.

use serde::{Deserialize, Serialize};

use crate::envelope::Event;
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

impl Event for LifecycleEvent {
    // 2: added `provider_type`.
    const SCHEMA_VERSION: u16 = 2;
    const STREAM: &'static str = streams::API_LIFECYCLE;

    fn event_type(&self) -> &'static str {
        match self.kind {
            LifecycleKind::Created => "api.created",
            LifecycleKind::Updated => "api.updated",
            LifecycleKind::Deleted => "api.deleted",
            LifecycleKind::Restored => "api.restored",
        }
    }

    fn subject(&self) -> String {
        streams::lifecycle_subject(self.kind.as_str())
    }

    fn dedup_id(&self) -> String {
        format!(
            "api:{}:{}:{}",
            self.api_id,
            self.kind.as_str(),
            self.source_seq
        )
    }
}
