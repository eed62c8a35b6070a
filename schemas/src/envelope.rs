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
    #[serde(with = "as_bytes")]
    pub payload: Vec<u8>,
}

/// Serializes a byte vector as one byte string instead of a sequence of
/// `u8`. In postcard both are a length and the raw bytes, so logs written
/// either way decode either way; this way costs one copy instead of a call
/// per byte.
mod as_bytes {
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
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
    /// The schema version this Rust type writes.
    const SCHEMA_VERSION: u16;
    /// The oldest version this type still reads: versions from it up to
    /// [`Event::SCHEMA_VERSION`] decode as this type (each only added to the
    /// one before), any other fails. By default only the current one.
    const OLDEST_READABLE: u16 = Self::SCHEMA_VERSION;
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
    #[error(
        "event {event_type} has schema version {found}, this build reads versions {oldest} to {expected}"
    )]
    UnknownVersion {
        /// The type named in the envelope.
        event_type: String,
        /// The version found.
        found: u16,
        /// The oldest version this build reads.
        oldest: u16,
        /// The version this build writes (the newest it reads).
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
        if !(E::OLDEST_READABLE..=E::SCHEMA_VERSION).contains(&self.schema_version) {
            return Err(DecodeError::UnknownVersion {
                event_type: self.event_type.clone(),
                found: self.schema_version,
                oldest: E::OLDEST_READABLE,
                expected: E::SCHEMA_VERSION,
            });
        }
        postcard::from_bytes(&self.payload).map_err(|source| DecodeError::Payload {
            event_type: self.event_type.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The envelope as it was written before the payload was a byte string.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct PayloadAsSequence {
        event_id: Uuid,
        event_type: String,
        schema_version: u16,
        occurred_at_ms: i64,
        causation_id: Option<Uuid>,
        correlation_id: Option<Uuid>,
        traceparent: Option<String>,
        payload: Vec<u8>,
    }

    #[test]
    fn payload_bytes_are_wire_compatible_with_a_byte_sequence() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        let old = PayloadAsSequence {
            event_id: Uuid::from_u128(7),
            event_type: "sync.api".into(),
            schema_version: 1,
            occurred_at_ms: 1_700_000_000_000,
            causation_id: None,
            correlation_id: Some(Uuid::from_u128(9)),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            payload: payload.clone(),
        };
        let new = Envelope {
            event_id: old.event_id,
            event_type: old.event_type.clone(),
            schema_version: 1,
            occurred_at_ms: old.occurred_at_ms,
            causation_id: None,
            correlation_id: old.correlation_id,
            traceparent: old.traceparent.clone(),
            payload,
        };
        let old_bytes = postcard::to_allocvec(&old).unwrap();
        assert_eq!(new.to_bytes(), old_bytes);
        assert_eq!(Envelope::from_bytes(&old_bytes).unwrap(), new);
        let back: PayloadAsSequence = postcard::from_bytes(&new.to_bytes()).unwrap();
        assert_eq!(back, old);
    }
}
