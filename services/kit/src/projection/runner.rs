//! The runner: reads a projection's stream (durable or ordered consumer),
//! gathers messages into batches, applies each off the async runtime while
//! the next arrives, and moves the position (and the durable consumer's ack
//! floor) once a batch is committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::writer::Lock;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, consumer::pull};
use futures_util::{StreamExt, stream::BoxStream};
use meridian_schemas::Envelope;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    BATCH_LINGER, ConsumerKind, Fold, Progress, Projection, ProjectionError, ProjectionSpec,
    Source, StoredEvent, apply_events, read_checkpoint,
};
use crate::metrics::Metrics;
use crate::retry::Backoff;

/// Why a consumer is recreated after a reconnection.
const RECONNECTED: &str = "NATS reconnected; recreating the consumer";

/// Between attempts to resume after NATS failed.
const RESUME: Backoff = Backoff::forever(Duration::from_millis(100), Duration::from_secs(2));
use crate::store::{StoreError, Tree};

/// Where a [`Runner`] applies what it reads.
pub trait Sink: Send + Sync + 'static {
    /// The last stream sequence applied.
    fn checkpoint(&self) -> Result<u64, StoreError>;
    /// Applies events in order, skipping those at or below the checkpoint.
    /// Blocking: the runner calls it off the async runtime.
    fn apply(&self, id: &str, events: &[StoredEvent]) -> Result<(), ProjectionError>;
    /// Makes what was applied durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// How long a batch waits to fill once its first message arrived: worth
    /// it where each batch costs a commit, not where applying is a memory
    /// write (a writer waiting to read its own event would wait it out).
    fn linger(&self) -> Duration {
        BATCH_LINGER
    }
}

/// A [`Projection`] over a [`Tree`].
pub struct Stored<P> {
    tree: Tree,
    projection: Arc<P>,
}

impl<P: Projection> Sink for Stored<P> {
    fn checkpoint(&self) -> Result<u64, StoreError> {
        read_checkpoint(&self.tree)
    }

    fn apply(&self, id: &str, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        apply_events(&self.tree, &*self.projection, id, events)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.tree.flush()
    }
}

/// A [`Fold`] in memory.
pub struct InMemory<F> {
    state: Arc<Lock<F>>,
    checkpoint: AtomicU64,
}

impl<F: Fold> Sink for InMemory<F> {
    fn checkpoint(&self) -> Result<u64, StoreError> {
        Ok(self.checkpoint.load(Ordering::Acquire))
    }

    fn apply(&self, id: &str, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        for event in events {
            if event.seq <= self.checkpoint.load(Ordering::Acquire) {
                continue;
            }
            state
                .apply(event)
                .map_err(|source| ProjectionError::Poison {
                    id: id.to_owned(),
                    seq: event.seq,
                    source: source.into(),
                })?;
            self.checkpoint.store(event.seq, Ordering::Release);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// No wait: a batch is what has arrived (more queue while it applies).
    fn linger(&self) -> Duration {
        Duration::ZERO
    }
}

/// Runs one projection.
pub struct Runner<S> {
    js: jetstream::Context,
    sink: Arc<S>,
    spec: ProjectionSpec,
    position: watch::Sender<u64>,
    target: Arc<AtomicU64>,
    halted: watch::Sender<Option<String>>,
    metrics: Metrics,
    source: Source,
}

impl<P: Projection> Runner<Stored<P>> {
    /// Prepares a runner of a stored projection; nothing is read until it
    /// runs. What it consumes is counted in `metrics`.
    pub fn new(
        js: jetstream::Context,
        tree: Tree,
        projection: Arc<P>,
        spec: ProjectionSpec,
        metrics: &Metrics,
    ) -> (Self, Progress) {
        Self::with_sink(js, Stored { tree, projection }, spec, metrics)
    }
}

impl<F: Fold> Runner<InMemory<F>> {
    /// Prepares a runner that folds the stream from its start into `state`.
    pub fn in_memory(
        js: jetstream::Context,
        state: Arc<Lock<F>>,
        spec: ProjectionSpec,
        metrics: &Metrics,
    ) -> (Self, Progress) {
        let sink = InMemory {
            state,
            checkpoint: AtomicU64::new(0),
        };
        Self::with_sink(js, sink, spec, metrics)
    }
}

impl<S: Sink> Runner<S> {
    fn with_sink(
        js: jetstream::Context,
        sink: S,
        spec: ProjectionSpec,
        metrics: &Metrics,
    ) -> (Self, Progress) {
        let start = sink.checkpoint().unwrap_or(0);
        let (position, position_rx) = watch::channel(start);
        let (halted, halted_rx) = watch::channel(None);
        let target = Arc::new(AtomicU64::new(u64::MAX));
        let source = Source {
            js: js.clone(),
            stream: spec.stream,
            filter: spec.filter_subject,
        };
        let progress = Progress {
            position: position_rx,
            target: target.clone(),
            halted: halted_rx,
            source: source.clone(),
        };
        (
            Self {
                js,
                sink: Arc::new(sink),
                spec,
                position,
                target,
                halted,
                metrics: metrics.clone(),
                source,
            },
            progress,
        )
    }

    /// Follows the stream until `stop` is cancelled. Bus failures are retried
    /// with a pause; a poison message halts it and is returned.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> Result<(), ProjectionError> {
        let mut delays = RESUME.delays();
        loop {
            let before = *self.position.borrow();
            match self.run_once(&stop, false).await {
                Ok(()) => break,
                Err(e @ ProjectionError::Bus { .. }) => {
                    if *self.position.borrow() != before {
                        delays = RESUME.delays(); // it made progress: start over
                    }
                    let delay = delays.next().unwrap_or(RESUME.max);
                    tracing::warn!(error = %e, retry_in = ?delay, "projection interrupted, resuming from its checkpoint");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "projection halted");
                    self.halted.send_replace(Some(e.to_string()));
                    return Err(e);
                }
            }
        }
        self.flush().await
    }

    /// Applies everything in the stream up to its last sequence at call time,
    /// then returns (used by `rebuild`).
    pub async fn run_until_caught_up(self) -> Result<u64, ProjectionError> {
        self.run_once(&CancellationToken::new(), true).await?;
        self.flush().await?;
        Ok(*self.position.borrow())
    }

    async fn flush(&self) -> Result<(), ProjectionError> {
        let sink = self.sink.clone();
        tokio::task::spawn_blocking(move || sink.flush())
            .await
            .map_err(|e| self.bus(format!("flush task failed: {e}")))?
            .map_err(|source| self.storage(source))
    }

    fn storage(&self, source: StoreError) -> ProjectionError {
        ProjectionError::Storage {
            id: self.spec.id.clone(),
            source,
        }
    }

    fn bus(&self, message: impl std::fmt::Display) -> ProjectionError {
        ProjectionError::Bus {
            id: self.spec.id.clone(),
            message: message.to_string(),
        }
    }

    async fn run_once(
        &self,
        stop: &CancellationToken,
        until_caught_up: bool,
    ) -> Result<(), ProjectionError> {
        let mut checkpoint = self.sink.checkpoint().map_err(|s| self.storage(s))?;
        self.position.send_replace(checkpoint);
        let stream = self
            .js
            .get_stream(self.spec.stream)
            .await
            .map_err(|e| self.bus(e))?;
        let last = self.source.last_sequence().await.map_err(|e| self.bus(e))?;
        let filter_subject = self.spec.filter_subject.unwrap_or_default().to_owned();
        self.target.store(last, Ordering::Release);
        // Wakes those waiting to be caught up (`Progress::reached_start`):
        // with nothing to apply, the position would not move again.
        self.position.send_replace(checkpoint);
        if until_caught_up && checkpoint >= last {
            return Ok(());
        }
        let deliver_policy = if checkpoint == 0 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: checkpoint + 1,
            }
        };
        let durable = self.spec.consumer == ConsumerKind::Durable;
        let messages: BoxStream<'static, Result<jetstream::Message, String>> = if durable {
            // Recreate from the local checkpoint (see the module docs).
            let _ = stream.delete_consumer(&self.spec.id).await;
            let consumer = stream
                .create_consumer(pull::Config {
                    durable_name: Some(self.spec.id.clone()),
                    deliver_policy,
                    ack_policy: consumer::AckPolicy::All,
                    max_ack_pending: (self.spec.batch * 16) as i64,
                    ack_wait: Duration::from_secs(30),
                    filter_subject: filter_subject.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|e| self.bus(e))?;
            consumer
                .stream()
                .max_messages_per_batch(self.spec.batch * 2)
                .max_bytes_per_batch(self.spec.batch_bytes.saturating_mul(2).min(64 << 20))
                .messages()
                .await
                .map_err(|e| self.bus(e))?
                .map(|r| r.map_err(|e| e.to_string()))
                .boxed()
        } else {
            stream
                .create_consumer(pull::OrderedConfig {
                    deliver_policy,
                    filter_subject,
                    ..Default::default()
                })
                .await
                .map_err(|e| self.bus(e))?
                .messages()
                .await
                .map_err(|e| self.bus(e))?
                .map(|r| r.map_err(|e| e.to_string()))
                .boxed()
        };
        tracing::info!(projection = %self.spec.id, from = checkpoint + 1, stream_last = last, "projection following stream");
        let mut messages = messages;
        let client = self.js.client();
        let reconnected = crate::bus::reconnected(&client);
        tokio::pin!(reconnected);
        let consumed = self.metrics.consumed(self.spec.stream, &self.spec.id);
        let lag = self.metrics.consumer_lag(&self.spec.id);
        // One batch is applied (off the runtime) while the next one arrives
        // and is decoded; batches still commit strictly in order.
        let mut applying: Option<Applying> = None;
        let pumped: Result<(), ProjectionError> = async {
            loop {
                let first = match applying.as_mut() {
                    Some(flight) => tokio::select! {
                        () = stop.cancelled() => break,
                        () = &mut reconnected => return Err(self.bus(RECONNECTED)),
                        done = &mut flight.task => {
                            let flight = applying.take().expect("a batch is in flight");
                            checkpoint = self.finish(flight, done).await?;
                            if until_caught_up && checkpoint >= last {
                                return Ok(());
                            }
                            continue;
                        }
                        next = messages.next() => next,
                    },
                    None => tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = &mut reconnected => return Err(self.bus(RECONNECTED)),
                        next = messages.next() => next,
                    },
                };
                let first = first.ok_or_else(|| self.bus("message stream ended"))?;
                // Linger briefly so a busy stream is applied in full batches.
                let size = |m: &Result<jetstream::Message, String>| {
                    m.as_ref().map_or(0, |m| m.payload.len())
                };
                let mut bytes = size(&first);
                let mut chunk = vec![first];
                let linger = tokio::time::Instant::now() + self.sink.linger();
                while chunk.len() < self.spec.batch && bytes < self.spec.batch_bytes {
                    match tokio::time::timeout_at(linger, messages.next()).await {
                        Ok(Some(m)) => {
                            bytes += size(&m);
                            chunk.push(m);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                let mut events = Vec::with_capacity(chunk.len());
                let mut last_message = None;
                for item in chunk {
                    let message = item.map_err(|e| self.bus(e))?;
                    let info = message.info().map_err(|e| self.bus(e))?;
                    let seq = info.stream_sequence;
                    lag.set(i64::try_from(info.pending).unwrap_or(i64::MAX));
                    if seq > checkpoint {
                        let envelope = Envelope::from_bytes(&message.payload).map_err(|e| {
                            ProjectionError::Poison {
                                id: self.spec.id.clone(),
                                seq,
                                source: e.into(),
                            }
                        })?;
                        events.push(StoredEvent {
                            seq,
                            subject: message.subject.to_string(),
                            envelope,
                        });
                    }
                    last_message = Some(message);
                }
                if let Some(flight) = applying.take() {
                    checkpoint = self.settle(flight).await?;
                }
                consumed.inc_by(events.len() as u64);
                let newest = events.last().map(|e| e.seq);
                let sink = self.sink.clone();
                let id = self.spec.id.clone();
                applying = Some(Applying {
                    task: tokio::task::spawn_blocking(move || sink.apply(&id, &events)),
                    newest,
                    ack: last_message.filter(|_| durable),
                });
            }
            Ok(())
        }
        .await;
        // Whatever ended the loop, the batch being applied finishes first:
        // the next run must never apply beside it.
        if let Some(flight) = applying.take() {
            let settled = self.settle(flight).await;
            pumped?;
            settled?;
            return Ok(());
        }
        pumped
    }

    /// Waits for a batch to commit, then [`Runner::finish`]es it.
    async fn settle(&self, mut flight: Applying) -> Result<u64, ProjectionError> {
        let done = (&mut flight.task).await;
        self.finish(flight, done).await
    }

    /// Records a finished batch: moves the position and acks its messages.
    async fn finish(
        &self,
        flight: Applying,
        done: Result<Result<(), ProjectionError>, tokio::task::JoinError>,
    ) -> Result<u64, ProjectionError> {
        done.map_err(|e| self.bus(format!("apply task failed: {e}")))??;
        if let Some(newest) = flight.newest {
            self.position.send_replace(newest);
        }
        if let Some(message) = flight.ack {
            message.ack().await.map_err(|e| self.bus(e))?;
        }
        Ok(*self.position.borrow())
    }
}

/// A batch being applied.
struct Applying {
    task: tokio::task::JoinHandle<Result<(), ProjectionError>>,
    /// Its newest sequence (`None`: everything in it was applied before).
    newest: Option<u64>,
    /// Its last message, acked (ack-all) once it is committed.
    ack: Option<jetstream::Message>,
}
