//! The versioned envelope every event travels in.
//!
//! Inside the hub, events are postcard-encoded inside an [`Envelope`]; the NATS
//! headers [`HEADER_EVENT_TYPE`] and [`HEADER_SCHEMA_VERSION`] repeat the type
//! and version so tools can filter without decoding. Every publish carries a
//! `Nats-Msg-Id` of [`Event::dedup_id`], so a retried publish is stored once.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::ids::MERIDIAN_NAMESPACE;

/// NATS header carrying the event type (for example `sync.api`).
pub const HEADER_EVENT_TYPE: &str = "Meridian-Event-Type";
/// NATS header carrying the schema version of the payload.
pub const HEADER_SCHEMA_VERSION: &str = "Meridian-Schema-Version";

/// One event as stored on a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Deterministic: UUID v5 of the event's dedup id.
    pub event_id: Uuid,
    /// The event type, for example `sync.api`.
    pub event_type: String,
    /// Schema version of `payload`.
    pub schema_version: u16,
    /// When the event happened, milliseconds since the Unix epoch.
    pub occurred_at_ms: i64,
    /// The event or request that caused this one.
    pub causation_id: Option<Uuid>,
    /// The conversation this event belongs to (for example a sync run).
    pub correlation_id: Option<Uuid>,
    /// W3C `traceparent` of the span that produced the event.
    pub traceparent: Option<String>,
    /// The postcard-encoded event.
    pub payload: Vec<u8>,
}

/// Metadata the producer supplies when wrapping an event.
#[derive(Clone, Debug, Default)]
pub struct EventMeta {
    /// When the event happened, milliseconds since the Unix epoch.
    pub occurred_at_ms: i64,
    /// See [`Envelope::causation_id`].
    pub causation_id: Option<Uuid>,
    /// See [`Envelope::correlation_id`].
    pub correlation_id: Option<Uuid>,
    /// See [`Envelope::traceparent`].
    pub traceparent: Option<String>,
}

/// An event type of one stream.
pub trait Event: Serialize + DeserializeOwned {
    /// The schema version of this Rust type; decoding any other version fails.
    const SCHEMA_VERSION: u16;
    /// The stream the event belongs on.
    const STREAM: &'static str;
    /// Dotted event type, for example `sync.api`.
    fn event_type(&self) -> &'static str;
    /// The subject to publish on.
    fn subject(&self) -> String;
    /// The event's identity: equal for a retry of the same event, different
    /// for any other event. Used as `Nats-Msg-Id`.
    fn dedup_id(&self) -> String;
}

/// Why bytes could not be turned into an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The envelope itself is not valid postcard.
    #[error("malformed envelope: {0}")]
    Envelope(#[source] postcard::Error),
    /// A version this build does not know; upgrade the consumer.
    #[error("event {event_type} has schema version {found}, this build reads version {expected}")]
    UnknownVersion {
        /// The type named in the envelope.
        event_type: String,
        /// The version found.
        found: u16,
        /// The version this build reads.
        expected: u16,
    },
    /// The payload does not decode as the expected type.
    #[error("malformed {event_type} payload: {source}")]
    Payload {
        /// The type named in the envelope.
        event_type: String,
        /// The decoding failure.
        #[source]
        source: postcard::Error,
    },
}

impl Envelope {
    /// Wraps an event. The event id is derived from its dedup id.
    pub fn wrap<E: Event>(event: &E, meta: EventMeta) -> Self {
        Self {
            event_id: Uuid::new_v5(&MERIDIAN_NAMESPACE, event.dedup_id().as_bytes()),
            event_type: event.event_type().to_owned(),
            schema_version: E::SCHEMA_VERSION,
            occurred_at_ms: meta.occurred_at_ms,
            causation_id: meta.causation_id,
            correlation_id: meta.correlation_id,
            traceparent: meta.traceparent,
            payload: postcard::to_allocvec(event)
                .expect("postcard encoding into a Vec cannot fail"),
        }
    }

    /// Encodes the envelope for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("postcard encoding into a Vec cannot fail")
    }

    /// Decodes an envelope from the wire.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        postcard::from_bytes(bytes).map_err(DecodeError::Envelope)
    }

    /// Decodes the payload, refusing versions this build does not read.
    pub fn open<E: Event>(&self) -> Result<E, DecodeError> {
        if self.schema_version != E::SCHEMA_VERSION {
            return Err(DecodeError::UnknownVersion {
                event_type: self.event_type.clone(),
                found: self.schema_version,
                expected: E::SCHEMA_VERSION,
            });
        }
        postcard::from_bytes(&self.payload).map_err(|source| DecodeError::Payload {
            event_type: self.event_type.clone(),
            source,
        })
    }
}
