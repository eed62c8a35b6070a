//! Publishes the lifecycle events the projection leaves in its outbox.
//!
//! Exactly once per change, across restarts and rebuilds:
//! - the projection writes each event into the outbox in the same transaction
//!   as the change: one entry per batch, events in (causing `SYNC` sequence,
//!   API id) order, an order that replay reproduces exactly;
//! - this publisher sends them in key order from one task, so the
//!   `API_LIFECYCLE` stream holds them in that order (one message per run's
//!   consecutive changes, see [`LifecycleBatch`]), and removes them once
//!   acknowledged;
//! - at start, and after any failure, it reads the newest event in the stream:
//!   every outbox entry at or below that key was published before (by this
//!   process, or before a crash or a rebuild) and is dropped unsent;
//! - `Nats-Msg-Id` deduplication covers a crash between an ack and the removal.
//!
//! This relies on one inventory instance writing the stream (by design).

use std::time::Duration;

use async_nats::jetstream;
use meridian_kit::CancellationToken;
use meridian_kit::bus::{BusContext, Publisher};
use meridian_kit::projection::Progress;
use meridian_kit::retry::{Backoff, retry};
use meridian_kit::store::Tree;
use meridian_schemas::lifecycle::{self, LifecycleBatch, LifecycleEvent};
use meridian_schemas::{Envelope, EventMeta, streams};

use super::RelayError;
use super::store::{OUTBOX_PREFIX, OutboxMark as Mark, RepositoryError, outbox_entry};

const CHUNK: usize = 2048;
/// Between attempts to publish after a failure.
const BACKOFF: Backoff = Backoff::forever(Duration::from_millis(200), Duration::from_secs(5));

/// The newest published event's (source sequence, API id), if any.
pub async fn high_water(js: &jetstream::Context) -> Result<Option<Mark>, RelayError> {
    let stream = js
        .get_stream(streams::API_LIFECYCLE)
        .await
        .bus("getting the API_LIFECYCLE stream")?;
    let last = stream
        .get_info()
        .await
        .bus("reading API_LIFECYCLE's state")?
        .state
        .last_sequence;
    if last == 0 {
        return Ok(None);
    }
    let message = stream
        .get_raw_message(last)
        .await
        .bus("reading API_LIFECYCLE's last message")?;
    let changes = Envelope::from_bytes(&message.payload).and_then(|e| lifecycle::changes(&e))?;
    Ok(changes.last().map(LifecycleEvent::mark))
}

/// Drains the outbox whenever the projection moves, until `stop`; then one
/// last drain.
pub async fn run_until_stopped(
    tree: Tree,
    publisher: Publisher,
    progress: Progress,
    stop: CancellationToken,
) {
    let mut moved = progress.subscribe();
    // The newest event known to be in the stream: `None` until read, and
    // read again after any failure (the stream may hold more than we saw).
    let mut mark: Option<Option<Mark>> = None;
    loop {
        let mut known = Some(mark);
        let what = "publishing lifecycle events";
        let drained = retry(what, BACKOFF, &stop, || {
            drain(&tree, &publisher, known.take().flatten())
        })
        .await;
        match drained {
            Ok(newest) => mark = Some(newest),
            Err(_) => return, // stopped: what is left goes out at the next start
        }
        tokio::select! {
            () = stop.cancelled() => break,
            _ = moved.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    if let Err(e) = drain(&tree, &publisher, mark).await {
        tracing::warn!(error = %e, "lifecycle events left unpublished at shutdown; they go out at next start");
    }
}

/// Publishes what the outbox holds, given the newest event known to be in
/// the stream (`None`: read it first); returns the newest one after.
async fn drain(
    tree: &Tree,
    publisher: &Publisher,
    mark: Option<Option<Mark>>,
) -> Result<Option<Mark>, RelayError> {
    let mut mark = mark;
    drain_once(tree, publisher, &mut mark).await?;
    Ok(mark.flatten())
}

async fn drain_once(
    tree: &Tree,
    publisher: &Publisher,
    mark: &mut Option<Option<Mark>>,
) -> Result<(), RelayError> {
    loop {
        let hw = match mark {
            Some(m) => *m,
            None => *mark.insert(high_water(publisher.context()).await?),
        };
        // Whole entries (one per projection batch) until about CHUNK events.
        let mut keys = Vec::new();
        let mut fresh_events: Vec<LifecycleEvent> = Vec::new();
        for entry in tree.scan_prefix(OUTBOX_PREFIX) {
            let (key, value) = entry.map_err(RepositoryError::from)?;
            keys.push(key);
            fresh_events.extend(
                outbox_entry(&value)?
                    .into_iter()
                    .filter(|event| hw.is_none_or(|hw| event.mark() > hw)),
            );
            if fresh_events.len() >= CHUNK {
                break;
            }
        }
        if keys.is_empty() {
            return Ok(());
        }
        let newest = fresh_events.last().map(LifecycleEvent::mark);
        // One message per run's consecutive changes (its trace context and
        // correlation id on the envelope), at most LifecycleBatch::MAX each.
        let mut batches: Vec<(LifecycleBatch, EventMeta)> = Vec::new();
        for event in fresh_events {
            match batches.last_mut() {
                Some((batch, _))
                    if batch.events[0].run_id == event.run_id
                        && batch.events.len() < LifecycleBatch::MAX =>
                {
                    batch.events.push(event);
                }
                _ => {
                    let traceparent = tree
                        .get(super::store::trace_key(event.run_id))
                        .ok()
                        .flatten()
                        .map(|v| String::from_utf8_lossy(&v).into_owned());
                    let meta = EventMeta {
                        occurred_at_ms: event.at_ms,
                        causation_id: None,
                        correlation_id: Some(event.run_id.0),
                        traceparent,
                    };
                    batches.push((
                        LifecycleBatch {
                            events: vec![event],
                        },
                        meta,
                    ));
                }
            }
        }
        publisher.publish_all(batches).await?;
        if let Some(newest) = newest {
            *mark = Some(Some(newest));
        }
        let mut batch = tree.batch();
        for key in keys {
            batch.remove(key);
        }
        tree.apply(batch).map_err(RepositoryError::from)?;
    }
}
