//! Relays an internal stream's changes to the public stream as CloudEvents.
//!
//! Every replica of the owning service relays. Each public event's id
//! derives from its internal sequence and travels as `Nats-Msg-Id`, so when
//! two replicas send the same change the public stream stores it once; and
//! each relay starts (and, every few hundred messages, resumes) after the
//! newest change the public stream already has, read from the events'
//! `data.sequence`, so a restart sends nothing twice and a replica that lags
//! behind another skips what is there.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use meridian_schemas::Envelope;
use meridian_schemas::public::CloudEvent;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::bus::{AckWindow, BusContext, BusError, PUBLISH_WINDOW, send_public};
use crate::retry::{Backoff, retry};

/// Messages relayed between two reads of the public stream's high water.
const RESYNC_EVERY: u64 = 512;

/// Between attempts after a failure.
const BACKOFF: Backoff = Backoff::forever(Duration::from_millis(200), Duration::from_secs(5));

/// A change's public form: its subject and event.
pub type Public = (String, CloudEvent<serde_json::Value>);

/// Why turning a change into its public form failed.
pub type MapError = Box<dyn std::error::Error + Send + Sync>;

/// What to relay.
#[derive(Clone, Copy, Debug)]
pub struct RelaySpec {
    /// The internal stream.
    pub source: &'static str,
    /// Filters of the public subjects its events go to (the high water is
    /// the newest `data.sequence` among them).
    pub public: &'static [&'static str],
}

/// Why the relay starts over.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A change could not be mapped (it does not decode).
    #[error("unreadable change at {seq}: {source}")]
    Map {
        /// Its sequence.
        seq: u64,
        /// Why.
        source: MapError,
    },
    /// A public event does not parse.
    #[error("unreadable public event: {0}")]
    Json(#[from] serde_json::Error),
    /// The consumer ended (NATS reconnected, or the stream went away).
    #[error("{0}")]
    Ended(&'static str),
}

/// Relays until `stop`, starting over after any failure. `to_public` maps a
/// stored change (its envelope and sequence) to its public form, if it has
/// one; the envelope's trace context is carried over.
pub async fn relay_until_stopped<F>(
    js: jetstream::Context,
    spec: RelaySpec,
    to_public: F,
    stop: CancellationToken,
) where
    F: Fn(&Envelope, u64) -> Result<Option<Public>, MapError> + Send + Sync,
{
    let what = format!("relaying {} changes to the public stream", spec.source);
    let _ = retry(&what, BACKOFF, &stop, || relay(&js, spec, &to_public)).await;
}

#[derive(Deserialize)]
struct Sequenced {
    data: SequencedData,
}

#[derive(Deserialize)]
struct SequencedData {
    sequence: u64,
}

/// The internal sequence of the newest change the public stream holds
/// among `filters` (0: none).
pub async fn high_water(js: &jetstream::Context, filters: &[&str]) -> Result<u64, RelayError> {
    let stream = js
        .get_stream_no_info(meridian_schemas::streams::EVENTS)
        .await
        .bus("getting the public stream")?;
    let mut newest = 0;
    for filter in filters {
        match stream.get_last_raw_message_by_subject(filter).await {
            Ok(message) => {
                let event: Sequenced = serde_json::from_slice(&message.payload)?;
                newest = newest.max(event.data.sequence);
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(e).bus("reading the public stream's newest event")?,
        }
    }
    Ok(newest)
}

async fn relay<F>(js: &jetstream::Context, spec: RelaySpec, to_public: &F) -> Result<(), RelayError>
where
    F: Fn(&Envelope, u64) -> Result<Option<Public>, MapError>,
{
    let mut published = high_water(js, spec.public).await?;
    let what = format!("following {} for the public stream", spec.source);
    let stream = js.get_stream(spec.source).await.bus(&what)?;
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: published + 1,
            },
            ..Default::default()
        })
        .await
        .bus(&what)?
        .messages()
        .await
        .bus(&what)?;
    let client = js.client();
    let reconnected = crate::bus::reconnected(&client);
    tokio::pin!(reconnected);
    let mut since_resync = 0u64;
    let mut window = AckWindow::new(PUBLISH_WINDOW);
    loop {
        let next = tokio::select! {
            () = &mut reconnected => return Err(RelayError::Ended("NATS reconnected; recreating the consumer")),
            next = tokio::time::timeout(Duration::from_millis(50), messages.next()) => next,
        };
        let message = match next {
            Err(_) => {
                // Idle: make sure what was sent is stored before waiting on.
                window.flush().await?;
                continue;
            }
            Ok(None) => return Err(RelayError::Ended("the consumer ended")),
            Ok(Some(m)) => m.bus(&what)?,
        };
        let seq = message
            .info()
            .map_err(|e| BusError::Nats {
                what: "reading a message's info".into(),
                source: e,
            })?
            .stream_sequence;
        since_resync += 1;
        if since_resync >= RESYNC_EVERY {
            window.flush().await?;
            published = published.max(high_water(js, spec.public).await?);
            since_resync = 0;
        }
        if seq <= published {
            continue;
        }
        let envelope = Envelope::from_bytes(&message.payload).map_err(|e| RelayError::Map {
            seq,
            source: e.into(),
        })?;
        if let Some((subject, mut event)) =
            to_public(&envelope, seq).map_err(|source| RelayError::Map { seq, source })?
        {
            event.traceparent.clone_from(&envelope.traceparent);
            let ack = send_public(js, &subject, &event, None).await?;
            window.push_future(spec.source, ack).await?;
        }
    }
}
