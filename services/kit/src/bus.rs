//! The event bus: NATS connection, stream set-up and idempotent publishing.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::header::{
    HeaderMap, NATS_EXPECTED_LAST_SEQUENCE, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID,
};
use async_nats::jetstream::{self, context::PublishAckFuture, publish::PublishAck, stream};
use meridian_schemas::commands;
use meridian_schemas::envelope::{HEADER_EVENT_TYPE, HEADER_SCHEMA_VERSION};
use meridian_schemas::{Envelope, Event, EventMeta, streams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::metrics::Metrics;
use crate::retry::{Backoff, RetryError, retry};
use tokio_util::sync::CancellationToken;

/// How many publish acks may be outstanding at once in [`Publisher::publish_all`].
pub const PUBLISH_WINDOW: usize = 512;

/// A failure talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Could not connect.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
    /// Stream creation or lookup failed.
    #[error("stream {stream}: {message}")]
    Stream {
        /// The stream.
        stream: String,
        /// Why.
        message: String,
    },
    /// A conditional publish found the subject moved on: someone else
    /// published there first.
    #[error("publish to {subject} lost a race: the subject moved past the expected sequence")]
    WrongLastSequence {
        /// The subject.
        subject: String,
    },
    /// A publish was not acknowledged.
    #[error("publish to {subject} failed: {message}")]
    Publish {
        /// The subject.
        subject: String,
        /// Why.
        message: String,
    },
    /// Another NATS call failed.
    #[error("{what}: {source}")]
    Nats {
        /// What was asked of NATS.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Names the NATS call a result came from:
/// `js.get_stream(name).await.bus("getting the SYNC stream")?`.
pub trait BusContext<T> {
    /// The error as [`BusError::Nats`], saying what was asked.
    fn bus(self, what: &str) -> Result<T, BusError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> BusContext<T> for Result<T, E> {
    fn bus(self, what: &str) -> Result<T, BusError> {
        self.map_err(|e| BusError::Nats {
            what: what.to_owned(),
            source: Box::new(e),
        })
    }
}

/// The most a client waits between two reconnection attempts: however long
/// NATS was away, every service is back within about this long of its
/// return (the client's default doubles up to 4 s, so a key deleted right
/// after an outage kept working that long on a proxy still waiting).
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_millis(250);

/// The pause before reconnection attempt `attempts` (from 1): 50 ms more
/// per attempt up to [`RECONNECT_DELAY_MAX`], less up to a fifth for jitter
/// so that many clients do not knock together.
pub fn reconnect_delay(attempts: usize) -> Duration {
    let base = Duration::from_millis(50)
        .saturating_mul(u32::try_from(attempts).unwrap_or(u32::MAX))
        .min(RECONNECT_DELAY_MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base - base / 5 * (nanos % 1_000) / 1_000
}

/// Connects to NATS, retrying for up to `patience` while the server comes up.
/// Once connected, the client reconnects by itself (at most
/// [`RECONNECT_DELAY_MAX`] apart) and logs each change.
pub async fn connect(
    url: &str,
    name: &str,
    patience: Duration,
    metrics: &Metrics,
) -> Result<async_nats::Client, BusError> {
    let reconnects = metrics.nats_reconnects();
    let attempt = || {
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reconnects = reconnects.clone();
        let metrics = metrics.clone();
        async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                let (lost, reconnects, metrics) =
                    (lost.clone(), reconnects.clone(), metrics.clone());
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            lost.store(true, std::sync::atomic::Ordering::Relaxed);
                            metrics.nats_lost();
                            tracing::warn!("NATS connection lost, reconnecting")
                        }
                        async_nats::Event::Connected => {
                            metrics.nats_back();
                            if lost.swap(false, std::sync::atomic::Ordering::Relaxed) {
                                reconnects.inc();
                            }
                            tracing::info!("NATS connected")
                        }
                        other => tracing::debug!(%other, "NATS event"),
                    }
                }
            })
            .connect(url)
    };
    let backoff = Backoff::within(patience, Duration::from_millis(100), Duration::from_secs(1));
    let what = format!("connecting to NATS at {url}");
    retry(&what, backoff, &CancellationToken::new(), attempt)
        .await
        .map_err(|e| match e {
            RetryError::GaveUp(source) => BusError::Connect {
                url: url.to_owned(),
                source,
            },
            RetryError::Stopped => unreachable!("nothing cancels this token"),
        })
}

/// Resolves once `client` has connected again since the call (NATS was
/// restarted, or the connection dropped and came back). A consumer's pull
/// requests die with the old connection, and the client would notice only
/// after missed heartbeats (15 s and more), so consumers watch this and
/// recreate themselves at once.
pub async fn reconnected(client: &async_nats::Client) {
    let stats = client.statistics();
    let connects = || stats.connects.load(std::sync::atomic::Ordering::Relaxed);
    let at = connects();
    while connects() == at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The configuration of one of Meridian's streams.
pub fn stream_config(name: &str) -> stream::Config {
    let mut config = stream::Config {
        name: name.to_owned(),
        subjects: vec![streams::stream_subjects(name).to_owned()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    if name == streams::AGENT_HEARTBEATS {
        // Only the latest heartbeat of each agent matters.
        config.max_messages_per_subject = 1;
        config.duplicate_window = Duration::from_secs(10);
    }
    if name == streams::CONSOLE {
        // A revocation outlives the session it ends, and no more.
        config.max_age = streams::CONSOLE_RETENTION;
    }
    config
}

/// How long the public stream remembers message ids: covers a relay's crash
/// and restart (its unacked messages come back after their ack wait).
pub const PUBLIC_DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// How long the public stream keeps events unless configured otherwise.
pub const DEFAULT_EVENTS_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The public stream's configuration: file storage, events kept for
/// `retention`.
pub fn public_stream_config(retention: Duration) -> stream::Config {
    let mut config = stream_config(streams::EVENTS);
    config.max_age = retention;
    config.duplicate_window = PUBLIC_DUPLICATE_WINDOW.min(retention);
    config
}

/// Makes sure the public stream exists without changing it: inventory owns
/// its configuration (retention); another service that publishes to it
/// creates it with the default retention only when it is missing.
pub async fn ensure_public_stream(js: &jetstream::Context) -> Result<(), BusError> {
    js.get_or_create_stream(public_stream_config(DEFAULT_EVENTS_RETENTION))
        .await
        .map(|_| ())
        .map_err(|e| BusError::Stream {
            stream: streams::EVENTS.to_owned(),
            message: e.to_string(),
        })
}

/// Sends a public event (a CloudEvent, structured JSON) on `subject` with
/// `Nats-Msg-Id` = its id, the CloudEvents content type and its trace
/// context; await the returned future (or an [`AckWindow`]) for the ack.
/// With `expected_last`, the stream stores it only if the subject's last
/// message has that sequence (a compare-and-set among publishers).
pub async fn send_public<D: Serialize>(
    js: &jetstream::Context,
    subject: &str,
    event: &meridian_schemas::public::CloudEvent<D>,
    expected_last: Option<u64>,
) -> Result<PublishAckFuture, BusError> {
    let mut headers = HeaderMap::new();
    if let Some(seq) = expected_last {
        headers.insert(
            NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            seq.to_string().as_str(),
        );
    }
    headers.insert(NATS_MESSAGE_ID, event.id.as_str());
    headers.insert(
        meridian_schemas::public::CONTENT_TYPE.0,
        meridian_schemas::public::CONTENT_TYPE.1,
    );
    crate::telemetry::inject_nats(&mut headers, event.traceparent.as_deref());
    let body = serde_json::to_vec(event).expect("a CloudEvent always serializes");
    js.publish_with_headers(subject.to_owned(), headers, body.into())
        .await
        .map_err(|e| BusError::Publish {
            subject: subject.to_owned(),
            message: e.to_string(),
        })
}

/// Creates the named streams, or updates them to the current configuration.
pub async fn ensure_streams(js: &jetstream::Context, names: &[&str]) -> Result<(), BusError> {
    for name in names {
        js.create_or_update_stream(stream_config(name))
            .await
            .map_err(|e| BusError::Stream {
                stream: (*name).to_owned(),
                message: e.to_string(),
            })?;
    }
    Ok(())
}

/// Creates the key-value bucket `bucket` (file storage, one revision kept
/// per key), or updates it to that configuration, and opens it.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
) -> Result<jetstream::kv::Store, BusError> {
    js.create_or_update_key_value(jetstream::kv::Config {
        bucket: bucket.to_owned(),
        description: description.to_owned(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| BusError::Stream {
        stream: format!("KV_{bucket}"),
        message: e.to_string(),
    })
}

/// Publishes events with `Nats-Msg-Id` set to their dedup id, awaiting acks.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    metrics: Metrics,
}

impl Publisher {
    /// Wraps a JetStream context; publishes are counted in `metrics`.
    pub fn new(js: jetstream::Context, metrics: &Metrics) -> Self {
        Self {
            js,
            metrics: metrics.clone(),
        }
    }

    /// The JetStream context.
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// Publishes one event and waits for the stream to store it. A duplicate
    /// (same dedup id within the stream's window) is acknowledged with
    /// `duplicate: true` and stored once.
    pub async fn publish<E: Event>(
        &self,
        event: &E,
        meta: EventMeta,
    ) -> Result<PublishAck, BusError> {
        let subject = event.subject();
        let fut = self.send(event, meta).await?;
        fut.await.map_err(|e| BusError::Publish {
            subject,
            message: e.to_string(),
        })
    }

    /// Publishes one event only if the last message stored on its subject
    /// has stream sequence `expected_last` (0: no message yet), which makes
    /// the publish a compare-and-set among competing writers. A loser gets
    /// [`BusError::WrongLastSequence`], or an ack with `duplicate: true` when
    /// the winner published the same dedup id.
    pub async fn publish_expecting<E: Event>(
        &self,
        event: &E,
        meta: EventMeta,
        expected_last: u64,
    ) -> Result<PublishAck, BusError> {
        self.publish_checked(
            event,
            meta,
            NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected_last,
        )
        .await
    }

    /// Like [`Publisher::publish_expecting`], but the whole stream's last
    /// sequence must be `expected_last`: for decisions that depend on every
    /// entity of the stream (a listen path unique among all APIs).
    pub async fn publish_expecting_stream<E: Event>(
        &self,
        event: &E,
        meta: EventMeta,
        expected_last: u64,
    ) -> Result<PublishAck, BusError> {
        self.publish_checked(event, meta, NATS_EXPECTED_LAST_SEQUENCE, expected_last)
            .await
    }

    async fn publish_checked<E: Event>(
        &self,
        event: &E,
        meta: EventMeta,
        header: async_nats::header::HeaderName,
        expected_last: u64,
    ) -> Result<PublishAck, BusError> {
        let subject = event.subject();
        let mut headers = self.headers(event);
        crate::telemetry::inject_nats(&mut headers, meta.traceparent.as_deref());
        headers.insert(header, expected_last.to_string().as_str());
        let payload = Envelope::wrap(event, meta).to_bytes();
        let fut = self
            .js
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .map_err(|e| BusError::Publish {
                subject: subject.clone(),
                message: e.to_string(),
            })?;
        fut.await.map_err(|e| match e.kind() {
            jetstream::context::PublishErrorKind::WrongLastSequence => {
                BusError::WrongLastSequence {
                    subject: subject.clone(),
                }
            }
            _ => BusError::Publish {
                subject: subject.clone(),
                message: e.to_string(),
            },
        })
    }

    /// Publishes many events, keeping up to [`PUBLISH_WINDOW`] acks in
    /// flight, and returns the last ack. Stops at the first failure; events
    /// before it are stored, and a retry of the whole batch stores nothing
    /// twice.
    pub async fn publish_all<E: Event>(
        &self,
        events: impl IntoIterator<Item = (E, EventMeta)>,
    ) -> Result<Option<PublishAck>, BusError> {
        let mut window = AckWindow::new(PUBLISH_WINDOW);
        for (event, meta) in events {
            window.push(self.start(&event, meta).await?).await?;
        }
        window.flush().await
    }

    async fn settle((subject, fut): (String, PublishAckFuture)) -> Result<PublishAck, BusError> {
        fut.await.map_err(|e| BusError::Publish {
            subject,
            message: e.to_string(),
        })
    }

    /// Sends an event without waiting for its ack; await the returned
    /// [`PendingAck`] (or put it in an [`AckWindow`]) to know it is stored.
    pub async fn start<E: Event>(
        &self,
        event: &E,
        meta: EventMeta,
    ) -> Result<PendingAck, BusError> {
        Ok(PendingAck {
            subject: event.subject(),
            fut: self.send(event, meta).await?,
        })
    }

    fn headers<E: Event>(&self, event: &E) -> HeaderMap {
        self.metrics.published(E::STREAM).inc();
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, event.dedup_id().as_str());
        headers.insert(HEADER_EVENT_TYPE, event.event_type());
        headers.insert(
            HEADER_SCHEMA_VERSION,
            E::SCHEMA_VERSION.to_string().as_str(),
        );
        headers
    }

    async fn send<E: Event>(
        &self,
        event: &E,
        meta: EventMeta,
    ) -> Result<PublishAckFuture, BusError> {
        let subject = event.subject();
        let mut headers = self.headers(event);
        crate::telemetry::inject_nats(&mut headers, meta.traceparent.as_deref());
        let envelope = Envelope::wrap(event, meta);
        self.js
            .publish_with_headers(subject.clone(), headers, envelope.to_bytes().into())
            .await
            .map_err(|e| BusError::Publish {
                subject,
                message: e.to_string(),
            })
    }
}

/// A publish whose ack has not arrived yet.
pub struct PendingAck {
    subject: String,
    fut: PublishAckFuture,
}

impl PendingAck {
    /// Waits for the stream to store the event.
    pub async fn wait(self) -> Result<PublishAck, BusError> {
        Publisher::settle((self.subject, self.fut)).await
    }
}

/// A bounded window of in-flight publishes: pushing beyond the bound waits for
/// the oldest ack, so a fast producer keeps many publishes in flight without
/// one round trip each, and without unbounded memory.
pub struct AckWindow {
    pending: VecDeque<PendingAck>,
    limit: usize,
}

impl AckWindow {
    /// A window of at most `limit` outstanding acks.
    pub fn new(limit: usize) -> Self {
        Self {
            pending: VecDeque::new(),
            limit: limit.max(1),
        }
    }

    /// Adds a publish, first settling the oldest if the window is full.
    pub async fn push(&mut self, ack: PendingAck) -> Result<(), BusError> {
        while self.pending.len() >= self.limit {
            self.pending.pop_front().expect("non-empty").wait().await?;
        }
        self.pending.push_back(ack);
        Ok(())
    }

    /// Adds a raw publish's ack future (for publishers outside [`Publisher`]).
    pub async fn push_future(
        &mut self,
        subject: &str,
        fut: PublishAckFuture,
    ) -> Result<(), BusError> {
        self.push(PendingAck {
            subject: subject.to_owned(),
            fut,
        })
        .await
    }

    /// Waits for every outstanding ack; returns the last one.
    pub async fn flush(&mut self) -> Result<Option<PublishAck>, BusError> {
        let mut last = None;
        while let Some(p) = self.pending.pop_front() {
            last = Some(p.wait().await?);
        }
        Ok(last)
    }
}

/// The newest event stored on `subject` of the event's stream, if any.
pub async fn last_event<E: Event>(
    js: &jetstream::Context,
    subject: &str,
) -> Result<Option<(E, Envelope)>, BusError> {
    let stream_err = |message: String| BusError::Stream {
        stream: E::STREAM.to_owned(),
        message,
    };
    let stream = js
        .get_stream_no_info(E::STREAM)
        .await
        .map_err(|e| stream_err(e.to_string()))?;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => {
            let envelope =
                Envelope::from_bytes(&message.payload).map_err(|e| stream_err(e.to_string()))?;
            let event = envelope
                .open::<E>()
                .map_err(|e| stream_err(e.to_string()))?;
            Ok(Some((event, envelope)))
        }
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(stream_err(e.to_string())),
    }
}

/// Why a core-NATS request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Nobody serves the subject.
    #[error("no responder on {0}")]
    NoResponders(String),
    /// The responder did not answer in time.
    #[error("no answer on {subject} within {patience:?}")]
    TimedOut {
        /// The subject.
        subject: String,
        /// How long the caller waited.
        patience: Duration,
    },
    /// NATS failed.
    #[error("request on {subject} failed: {source}")]
    Failed {
        /// The subject.
        subject: String,
        /// Why.
        #[source]
        source: async_nats::RequestError,
    },
    /// The answer could not be decoded.
    #[error("malformed answer on {subject}: {source}")]
    Malformed {
        /// The subject.
        subject: String,
        /// Why.
        #[source]
        source: postcard::Error,
    },
}

/// Sends a command over core-NATS request/reply (postcard, the current
/// trace context in the headers) and decodes the answer, waiting at most
/// `patience`.
pub async fn request<Q: Serialize, A: DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    command: &Q,
    patience: Duration,
) -> Result<A, RequestError> {
    let mut headers = async_nats::HeaderMap::new();
    crate::telemetry::inject_nats(
        &mut headers,
        crate::telemetry::current_traceparent().as_deref(),
    );
    let payload = commands::encode(command);
    let answer = tokio::time::timeout(
        patience,
        client.request_with_headers(subject.clone(), headers, payload.into()),
    )
    .await
    .map_err(|_| RequestError::TimedOut {
        subject: subject.clone(),
        patience,
    })?;
    let message = match answer {
        Ok(m) => m,
        Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
            return Err(RequestError::NoResponders(subject));
        }
        Err(source) => return Err(RequestError::Failed { subject, source }),
    };
    commands::decode(&message.payload).map_err(|source| RequestError::Malformed { subject, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_grow_to_the_cap_and_never_pass_it() {
        assert!(reconnect_delay(0) == Duration::ZERO);
        let first = reconnect_delay(1);
        assert!(first > Duration::from_millis(35) && first <= Duration::from_millis(50));
        for attempts in [5, 6, 100, usize::MAX] {
            let d = reconnect_delay(attempts);
            assert!(
                d >= RECONNECT_DELAY_MAX * 4 / 5 && d <= RECONNECT_DELAY_MAX,
                "attempt {attempts}: {d:?}"
            );
        }
    }
}
