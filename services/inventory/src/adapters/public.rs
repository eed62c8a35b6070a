//! The public stream `MERIDIAN_EVENTS`: CloudEvents JSON for outside consumers.
//!
//! - The **relay** republishes every change on `API_LIFECYCLE` (which the
//!   outbox writes exactly once per change, a batch per message) as one
//!   CloudEvent per change. It reads through a
//!   durable consumer whose position (ack floor) lives on the server, so
//!   neither a restart nor a `rebuild` of the local repository moves it back.
//!   After a crash it resumes at the ack floor and republishes what was not
//!   acknowledged; each publish carries `Nats-Msg-Id` = the event's
//!   deterministic id, so within the stream's 10-minute duplicate window the
//!   repeat is stored once (after a longer outage a consumer could see an id
//!   twice, which is why consumers dedupe on `id`).
//! - The **status watcher** follows `AGENT_HEARTBEATS` and publishes
//!   `io.meridian.agent.status_changed` when an agent turns ACTIVE or
//!   INACTIVE. It knows the last status it published per agent from the public
//!   stream itself, and publishes conditionally on that subject's last
//!   sequence, so a restart (or a second instance) never publishes a change
//!   twice.
//! - [`read_events`] serves `GET /api/events` to consumers without NATS.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use futures_util::StreamExt;
use meridian_kit::CancellationToken;
use meridian_kit::bus::{AckWindow, BusContext, BusError};
use meridian_kit::retry::{Backoff, retry};
use meridian_kit::time::now_ms;
use meridian_schemas::agents::Heartbeat;
use meridian_schemas::lifecycle;
use meridian_schemas::public::{self, AgentStatusData, CloudEvent};
use meridian_schemas::{AgentId, Envelope, streams};

use super::RelayError;

/// The relay's durable consumer on `API_LIFECYCLE`.
pub const RELAY_CONSUMER: &str = "inventory-public-relay";
// Messages per fetch; each carries up to `LifecycleBatch::MAX` changes.
const RELAY_BATCH: usize = 32;
/// The public stream's configuration: file storage, events kept for
/// `retention` (30 days by default).
pub fn stream_config(retention: Duration) -> stream::Config {
    meridian_kit::bus::public_stream_config(retention)
}

/// Why the relay or the watcher starts over after a reconnection: their
/// consumers' pull requests died with the old connection.
const RECONNECTED: &str = "NATS reconnected; recreating the consumer";

/// Between attempts of the relay and the status watcher after a failure.
const BACKOFF: Backoff = Backoff::forever(Duration::from_millis(200), Duration::from_secs(5));

/// Relays `API_LIFECYCLE` to the public stream until `stop`.
pub async fn relay_until_stopped(js: jetstream::Context, stop: CancellationToken) {
    let what = "relaying lifecycle events to the public stream";
    // It runs until it fails, and retries until stopped.
    let _ = retry(what, BACKOFF, &stop, || relay(&js)).await;
}

async fn relay(js: &jetstream::Context) -> Result<(), RelayError> {
    let stream = js
        .get_stream(streams::API_LIFECYCLE)
        .await
        .bus("getting the API_LIFECYCLE stream")?;
    // Resume at the server-side ack floor, recreating the consumer there:
    // with ack-all, messages an earlier (crashed) relay received but never
    // acked would otherwise be acked by the next ack, unpublished.
    let deliver_policy = match stream.consumer_info(RELAY_CONSUMER).await {
        Ok(info) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: info.ack_floor.stream_sequence + 1,
        },
        Err(_) => consumer::DeliverPolicy::All,
    };
    let _ = stream.delete_consumer(RELAY_CONSUMER).await;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(RELAY_CONSUMER.into()),
            deliver_policy,
            ack_policy: consumer::AckPolicy::All,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: (RELAY_BATCH * 8) as i64,
            ..Default::default()
        })
        .await
        .bus("creating the relay's consumer")?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(RELAY_BATCH)
        .messages()
        .await
        .bus("following the relay's consumer")?;
    let client = js.client();
    let reconnected = meridian_kit::bus::reconnected(&client);
    tokio::pin!(reconnected);
    loop {
        let first = tokio::select! {
            () = &mut reconnected => return Err(RelayError::Ended(RECONNECTED)),
            next = messages.next() => next,
        };
        let first = first
            .ok_or(RelayError::Ended("the lifecycle consumer ended"))?
            .bus("reading API_LIFECYCLE")?;
        let mut chunk = vec![first];
        while chunk.len() < RELAY_BATCH {
            match tokio::time::timeout(Duration::from_millis(2), messages.next()).await {
                Ok(Some(m)) => chunk.push(m.bus("reading API_LIFECYCLE")?),
                _ => break,
            }
        }
        let mut window = AckWindow::new(meridian_kit::bus::PUBLISH_WINDOW);
        for message in &chunk {
            let envelope = Envelope::from_bytes(&message.payload)?;
            let changes = lifecycle::changes(&envelope)?;
            for event in &changes {
                let mut public = public::api_event(event);
                public.traceparent.clone_from(&envelope.traceparent);
                let subject = streams::api_event_subject(
                    event.kind.as_str(),
                    event.agent_id,
                    &event.provider,
                );
                let ack = meridian_kit::bus::send_public(js, &subject, &public, None).await?;
                window.push_future(&subject, ack).await?;
            }
        }
        window.flush().await?;
        chunk
            .last()
            .expect("a chunk has a first message")
            .ack()
            .await
            .map_err(|e| BusError::Nats {
                what: "acking relayed lifecycle messages".into(),
                source: e,
            })?;
    }
}

/// The last status published per agent, with its stream sequence.
type Published = HashMap<AgentId, (bool, u64)>;

/// Publishes agent status changes until `stop`.
pub async fn watch_status_until_stopped(js: jetstream::Context, stop: CancellationToken) {
    // It runs until it fails, and retries until stopped.
    let _ = retry("watching agent status", BACKOFF, &stop, || {
        watch_status(&js)
    })
    .await;
}

/// Reads the newest message of each subject matching `filter` in `stream`
/// (by replaying it once with an ordered consumer).
async fn replay(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Result<Vec<(u64, bytes::Bytes)>, RelayError> {
    let stream = js
        .get_stream(stream)
        .await
        .bus("getting a stream to replay")?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.into(),
            ..Default::default()
        })
        .await
        .bus("creating a replay consumer")?;
    let mut pending = consumer.cached_info().num_pending;
    let mut out = Vec::new();
    let mut messages = consumer.messages().await.bus("replaying")?;
    while pending > 0 {
        let m = messages
            .next()
            .await
            .ok_or(RelayError::Ended("replay ended early"))?
            .bus("replaying")?;
        let info = m.info().map_err(|e| BusError::Nats {
            what: "reading a replayed message's info".into(),
            source: e,
        })?;
        pending = info.pending;
        out.push((info.stream_sequence, m.payload.clone()));
    }
    Ok(out)
}

async fn watch_status(js: &jetstream::Context) -> Result<(), RelayError> {
    let mut published: Published = HashMap::new();
    for (seq, payload) in replay(js, streams::EVENTS, streams::AGENT_STATUS_EVENTS).await? {
        let event: CloudEvent<AgentStatusData> = serde_json::from_slice(&payload)?;
        if let Ok(agent) = AgentId::parse(&event.data.agent_id) {
            published.insert(agent, (event.data.status == "ACTIVE", seq));
        }
    }
    let mut beats: HashMap<AgentId, Heartbeat> = HashMap::new();
    let stream = js
        .get_stream(streams::AGENT_HEARTBEATS)
        .await
        .bus("getting the AGENT_HEARTBEATS stream")?;
    let client = js.client();
    let reconnected = meridian_kit::bus::reconnected(&client);
    tokio::pin!(reconnected);
    let mut live = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .bus("following heartbeats")?
        .messages()
        .await
        .bus("following heartbeats")?;
    loop {
        let now = now_ms();
        for agent in beats.keys().copied().collect::<Vec<_>>() {
            settle(js, &mut published, agent, &beats[&agent], now).await?;
        }
        // Wake for the next heartbeat, or when the first ACTIVE agent expires.
        let next_expiry = beats
            .iter()
            .filter(|(a, _)| published.get(a).is_some_and(|(active, _)| *active))
            .map(|(_, hb)| hb.active_until_ms)
            .min();
        let wait = next_expiry.map_or(Duration::from_secs(60), |at| {
            Duration::from_millis(u64::try_from(at - now).unwrap_or(0) + 1)
        });
        let next = tokio::select! {
            () = &mut reconnected => return Err(RelayError::Ended(RECONNECTED)),
            next = tokio::time::timeout(wait, live.next()) => next,
        };
        match next {
            Ok(Some(message)) => {
                let message = message.bus("reading heartbeats")?;
                let beat: Heartbeat = Envelope::from_bytes(&message.payload)?.open()?;
                beats.insert(beat.agent_id, beat);
            }
            Ok(None) => return Err(RelayError::Ended("the heartbeat consumer ended")),
            Err(_) => {}
        }
    }
}

/// Publishes the agent's status if it differs from the last one published.
async fn settle(
    js: &jetstream::Context,
    published: &mut Published,
    agent: AgentId,
    beat: &Heartbeat,
    now: i64,
) -> Result<(), RelayError> {
    let active = now < beat.active_until_ms;
    let (was_active, last_seq) = published.get(&agent).copied().unwrap_or((false, 0));
    if active == was_active {
        return Ok(());
    }
    let since = if active {
        beat.at_ms
    } else {
        beat.active_until_ms
    };
    let event = public::agent_status_event(agent, active, since, Some(beat.at_ms));
    let subject = streams::agent_status_subject(agent);
    let ack = meridian_kit::bus::send_public(js, &subject, &event, Some(last_seq))
        .await?
        .await;
    match ack {
        Ok(ack) => {
            if !ack.duplicate {
                tracing::info!(%agent, status = %event.data.status, "agent status changed");
            }
            published.insert(agent, (active, ack.sequence));
            Ok(())
        }
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
            // Someone else published on this subject: learn what, and let the
            // next round decide again.
            let stream = js
                .get_stream_no_info(streams::EVENTS)
                .await
                .bus("getting the public stream")?;
            let last = stream
                .get_last_raw_message_by_subject(&subject)
                .await
                .bus("reading an agent's last status event")?;
            let event: CloudEvent<AgentStatusData> = serde_json::from_slice(&last.payload)?;
            published.insert(agent, (event.data.status == "ACTIVE", last.sequence));
            Ok(())
        }
        Err(e) => Err(BusError::Publish {
            subject,
            message: e.to_string(),
        }
        .into()),
    }
}

/// A page of public events.
pub struct EventsPage {
    /// The events, oldest first, as stored (CloudEvents JSON).
    pub events: Vec<serde_json::Value>,
    /// The stream sequence of the last event returned: pass it as `after` to
    /// get the next page (0 when nothing was returned and nothing precedes).
    pub last_seq: u64,
}

/// Where a read of the public stream starts.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    /// After this stream sequence.
    After(u64),
    /// At this time (ms since the epoch).
    Since(i64),
}

/// Reads up to `limit` public events on subjects matching `filter`.
pub async fn read_events(
    js: &jetstream::Context,
    filter: &str,
    from: Start,
    limit: usize,
) -> Result<EventsPage, RelayError> {
    if let Start::Since(ms) = from
        && ms > now_ms()
    {
        // JetStream starts a future start time at the first message it has.
        return Ok(EventsPage {
            events: Vec::new(),
            last_seq: 0,
        });
    }
    let deliver_policy = match from {
        Start::After(seq) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
        // A time before the epoch starts at the stream's first message.
        Start::Since(ms) => consumer::DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(ms.max(0)) * 1_000_000,
            )
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        },
    };
    let stream = js
        .get_stream(streams::EVENTS)
        .await
        .bus("getting the public stream")?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.into(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .bus("reading the public stream")?;
    let mut pending = consumer.cached_info().num_pending;
    let mut page = EventsPage {
        events: Vec::new(),
        last_seq: match from {
            Start::After(seq) => seq,
            Start::Since(_) => 0,
        },
    };
    if pending == 0 {
        return Ok(page);
    }
    let mut messages = consumer.messages().await.bus("reading the public stream")?;
    while pending > 0 && page.events.len() < limit {
        let m = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .map_err(|_| RelayError::Ended("the public stream did not answer in time"))?
            .ok_or(RelayError::Ended("the public stream consumer ended"))?
            .bus("reading the public stream")?;
        let info = m.info().map_err(|e| BusError::Nats {
            what: "reading a public event's info".into(),
            source: e,
        })?;
        pending = info.pending;
        page.last_seq = info.stream_sequence;
        page.events.push(serde_json::from_slice(&m.payload)?);
    }
    Ok(page)
}
