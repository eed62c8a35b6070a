//! Events of the `APIS` stream, written only by the proxy's admin side: the
//! gateway's API definitions (Tyk's classic `APIDefinition`, and Tyk OAS
//! documents with the classic definition they are served as).
//!
//! A definition travels as the JSON the Gateway API takes and returns, in a
//! string, so every field a client sent is kept, including those Meridian
//! does not read yet. Each change carries a `change_id` chosen once per
//! request: a retried publish has the same `Nats-Msg-Id` and is stored once.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::Event;
use crate::streams;

/// A change to the gateway's API definitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApisEvent {
    /// A definition was created or replaced.
    ApiSaved {
        /// The API id.
        api_id: String,
        /// The definition, as Gateway API JSON.
        definition: String,
        /// `true` when the API did not exist before.
        created: bool,
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// A definition was deleted.
    ApiDeleted {
        /// The API id.
        api_id: String,
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// A Tyk OAS API was created or replaced (last: variants are
    /// numbered in order in the stored events): the OpenAPI document with its
    /// `x-tyk-api-gateway` extension, and the classic definition the
    /// gateway serves it as (so readers that know only the classic format,
    /// key-issuer's, read it as any other).
    OasSaved {
        /// The API id.
        api_id: String,
        /// The OpenAPI document as sent (JSON).
        document: String,
        /// The classic definition it converts to (Gateway API JSON).
        definition: String,
        /// `true` when the API did not exist before.
        created: bool,
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
}

impl ApisEvent {
    /// The API the change is about.
    pub fn api_id(&self) -> &str {
        match self {
            Self::ApiSaved { api_id, .. }
            | Self::OasSaved { api_id, .. }
            | Self::ApiDeleted { api_id, .. } => api_id,
        }
    }

    fn change_id(&self) -> Uuid {
        match self {
            Self::ApiSaved { change_id, .. }
            | Self::OasSaved { change_id, .. }
            | Self::ApiDeleted { change_id, .. } => *change_id,
        }
    }
}

impl Event for ApisEvent {
    const SCHEMA_VERSION: u16 = 1;
    const STREAM: &'static str = streams::APIS;

    fn event_type(&self) -> &'static str {
        match self {
            Self::ApiSaved { .. } => "apis.api_saved",
            Self::OasSaved { .. } => "apis.oas_saved",
            Self::ApiDeleted { .. } => "apis.api_deleted",
        }
    }

    fn subject(&self) -> String {
        streams::api_definition_subject(self.api_id())
    }

    fn dedup_id(&self) -> String {
        format!("{}:{}", self.event_type(), self.change_id())
    }
}

/// What a proxy replica has applied, announced on
/// [`streams::PROXY_APPLIED_SUBJECT`] (JSON). A replica heard from within
/// [`REPLICA_LIVE_WITHIN_MS`] is live; `leaving` says it is stopping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaApplied {
    /// The replica (a UUID chosen at each start).
    pub replica: Uuid,
    /// The last `APIS` sequence its routing table includes.
    pub apis: u64,
    /// The last `KEYS` sequence its key view includes.
    pub keys: u64,
    /// The replica is shutting down: forget it now.
    #[serde(default)]
    pub leaving: bool,
}

/// How often a replica announces what it applied when nothing changes.
pub const REPLICA_ANNOUNCE_EVERY_MS: u64 = 500;

/// A replica not heard from for this long is no longer counted as live.
pub const REPLICA_LIVE_WITHIN_MS: u64 = 2_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Envelope, EventMeta};

    #[test]
    fn events_round_trip_and_name_their_api() {
        let event = ApisEvent::ApiSaved {
            api_id: "pets v1".into(),
            definition: r#"{"api_id":"pets v1"}"#.into(),
            created: true,
            change_id: Uuid::from_u128(1),
            at_ms: 5,
        };
        let back: ApisEvent =
            Envelope::from_bytes(&Envelope::wrap(&event, EventMeta::default()).to_bytes())
                .unwrap()
                .open()
                .unwrap();
        assert_eq!(back, event);
        assert_eq!(event.subject(), "apis.def.pets%20v1");
        let deleted = ApisEvent::ApiDeleted {
            api_id: "pets v1".into(),
            change_id: Uuid::from_u128(1),
            at_ms: 6,
        };
        assert_ne!(event.dedup_id(), deleted.dedup_id());
        assert_eq!(deleted.subject(), event.subject());
    }
}
