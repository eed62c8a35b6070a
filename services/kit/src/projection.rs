//! Projections: a stream folded into a [`Tree`].
//!
//! A projection applies a batch of messages and records the last stream
//! sequence it reached (the checkpoint) in the same atomic batch
//! ([`Tree::apply`]), so its state and its position can never disagree.
//! The runner is the projection's only writer, so a batch reads committed
//! state directly and keeps its own writes in an overlay ([`Ctx`]) until the
//! commit; this costs a fraction of a transaction. Messages at or below the
//! checkpoint are skipped, which makes a redelivery change nothing. On start it
//! resumes from the checkpoint; a wiped tree replays from sequence 1.
//!
//! Two ways to read the stream:
//! - [`ConsumerKind::Durable`]: a durable pull consumer named after the
//!   projection, acked (ack-all) after each committed batch. It is recreated at
//!   start from the local checkpoint: the local state, not the server's ack
//!   floor, decides where to resume, so a wiped or restored data directory
//!   replays exactly what it lacks instead of waiting out ack timeouts.
//! - [`ConsumerKind::Ordered`]: an ordered consumer, for in-memory state that
//!   every replica rebuilds at start, and for `rebuild`.
//!
//! Two places to apply it: a [`Tree`] through a [`Projection`]
//! ([`Runner::new`]), or plain in-memory state through a [`Fold`]
//! ([`Runner::in_memory`]) for small state every replica rebuilds at start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::store::{StoreError, Tree, Value};
use async_nats::jetstream::{self, consumer, consumer::pull};
use futures_util::{StreamExt, stream::BoxStream};
use meridian_schemas::Envelope;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Key of the checkpoint inside a projection's tree. Keys starting with
/// `0xff 0xff` are bookkeeping and excluded from [`digest`].
pub const CHECKPOINT_KEY: &[u8] = b"\xff\xffcheckpoint";
const META_PREFIX: &[u8] = b"\xff\xff";
/// How long a batch waits to fill once its first message arrived.
const BATCH_LINGER: Duration = Duration::from_millis(5);

/// One message as a projection sees it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Stream sequence.
    pub seq: u64,
    /// Subject it was published on.
    pub subject: String,
    /// The decoded envelope; [`Envelope::open`] gives the event.
    pub envelope: Envelope,
}

/// Rows a barrier's [`Projection::scan`] read before its batch.
pub type Scanned = Vec<(Value, Value)>;

/// What a projection may touch while applying an event: reads see the
/// committed tree with this batch's earlier writes on top; writes are held
/// until the batch commits atomically with its checkpoint.
pub struct Ctx<'a> {
    tree: &'a Tree,
    writes: HashMap<Vec<u8>, Option<Value>>,
    /// Values grown by [`Ctx::append`], written after `writes`.
    appends: HashMap<Vec<u8>, Vec<u8>>,
    batch_start: u64,
    /// For a barrier event: what [`Projection::scan`] returned. Empty for
    /// other events.
    pub scanned: &'a Scanned,
}

impl<'a> Ctx<'a> {
    fn new(tree: &'a Tree, scanned: &'a Scanned, batch_start: u64) -> Self {
        Self {
            tree,
            writes: HashMap::new(),
            appends: HashMap::new(),
            batch_start,
            scanned,
        }
    }

    /// Stream sequence of the first event of this atomic batch: unique per
    /// batch, and batches commit in its order (a key for per-batch values).
    pub fn batch_start(&self) -> u64 {
        self.batch_start
    }

    /// Adds `item` to the value at `key`, a list of length-prefixed items
    /// ([`items`] reads it). Many items under one key cost one write per
    /// batch instead of one per item.
    pub fn append(&mut self, key: impl Into<Vec<u8>>, item: &[u8]) -> Result<(), String> {
        let key = key.into();
        let value = match self.appends.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let existing = match self.writes.get(e.key()) {
                    Some(pending) => pending.clone(),
                    None => self
                        .tree
                        .get(e.key())
                        .map_err(|e| format!("storage: {e}"))?,
                };
                e.insert(existing.map(|v| v.to_vec()).unwrap_or_default())
            }
        };
        let len = u32::try_from(item.len()).map_err(|_| "item over 4 GiB".to_owned())?;
        value.extend_from_slice(&len.to_be_bytes());
        value.extend_from_slice(item);
        Ok(())
    }

    /// The value of `key` as this batch sees it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value>, String> {
        match self.writes.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => self.tree.get(key).map_err(|e| format!("storage: {e}")),
        }
    }

    /// Sets `key` when the batch commits.
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Value>) {
        self.writes.insert(key.into(), Some(value.into()));
    }

    /// Removes `key` when the batch commits.
    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), None);
    }
}

/// A fold of a stream into a [`Tree`].
pub trait Projection: Send + Sync + 'static {
    /// Applies one event. It must depend only on the state it reads through
    /// `ctx` and the event. An error discards the whole batch and halts the
    /// projection (the message is poison: an operator must look).
    fn apply(&self, ctx: &mut Ctx<'_>, event: &StoredEvent) -> Result<(), String>;

    /// Whether the event needs to scan state; such an event starts a new
    /// batch after everything before it is committed.
    fn is_barrier(&self, _event: &StoredEvent) -> bool {
        false
    }

    /// For a barrier: reads the rows it needs from the committed tree before
    /// its batch starts. Everything before a barrier is committed and the
    /// runner is the only writer, so this is exactly the state the barrier
    /// applies to.
    fn scan(&self, _committed: &Tree, _event: &StoredEvent) -> Result<Scanned, String> {
        Ok(Vec::new())
    }

    /// Called with the committed tree before every batch: the place to load
    /// an in-memory view of committed state once (an index of what exists,
    /// say). Such a view must stay a superset-safe hint: a batch that fails
    /// is discarded, and whatever `apply` remembered from it stays.
    fn prepare(&self, _committed: &Tree) -> Result<(), String> {
        Ok(())
    }

    /// Called after a batch's last event, before it commits: the place to
    /// write what the projection kept in memory while applying the batch.
    fn finish(&self, _ctx: &mut Ctx<'_>) -> Result<(), String> {
        Ok(())
    }
}

/// A fold of a stream into plain in-memory state, rebuilt at every start.
pub trait Fold: Send + Sync + 'static {
    /// Applies one event. An error halts the runner (the message is poison).
    fn apply(&mut self, event: &StoredEvent) -> Result<(), String>;
}

/// Where a [`Runner`] applies what it reads.
pub trait Sink: Send + Sync + 'static {
    /// The last stream sequence applied.
    fn checkpoint(&self) -> Result<u64, StoreError>;
    /// Applies events in order, skipping those at or below the checkpoint.
    /// Blocking: the runner calls it off the async runtime.
    fn apply(&self, id: &str, events: &[StoredEvent]) -> Result<(), ProjectionError>;
    /// Makes what was applied durable.
    fn flush(&self) -> Result<(), StoreError>;
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
    state: Arc<RwLock<F>>,
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
                .map_err(|message| ProjectionError::Poison {
                    id: id.to_owned(),
                    seq: event.seq,
                    message,
                })?;
            self.checkpoint.store(event.seq, Ordering::Release);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// How the projection reads its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerKind {
    /// Durable pull consumer named after the projection.
    Durable,
    /// Ordered (ephemeral) consumer.
    Ordered,
}

/// What a projection is.
#[derive(Clone, Debug)]
pub struct ProjectionSpec {
    /// Stable id: the durable consumer's name.
    pub id: String,
    /// The stream it folds.
    pub stream: &'static str,
    /// How it reads.
    pub consumer: ConsumerKind,
    /// Most messages applied in one atomic batch.
    pub batch: usize,
    /// Most payload bytes applied in one atomic batch (a batch holds at
    /// least one message), for streams whose messages carry many items each.
    pub batch_bytes: usize,
    /// Only the stream's messages on these subjects (a NATS wildcard); all
    /// of them when `None`.
    pub filter_subject: Option<&'static str>,
}

/// Why a projection stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// A message could not be decoded or applied. Not retried.
    #[error("projection {id} halted at stream sequence {seq}: {message}")]
    Poison {
        /// The projection.
        id: String,
        /// The message's sequence.
        seq: u64,
        /// Why.
        message: String,
    },
    /// The store failed.
    #[error("projection {id}: storage error: {source}")]
    Storage {
        /// The projection.
        id: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// NATS failed; retried by [`Runner::run_until_stopped`].
    #[error("projection {id}: {message}")]
    Bus {
        /// The projection.
        id: String,
        /// Why.
        message: String,
    },
}

/// Read side of a running projection: where it is and whether it caught up.
#[derive(Clone)]
pub struct Progress {
    position: watch::Receiver<u64>,
    target: Arc<AtomicU64>,
    halted: watch::Receiver<Option<String>>,
}

impl Progress {
    /// Last stream sequence applied.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// True once the projection reached the end of the stream as it was when
    /// the projection started.
    pub fn caught_up(&self) -> bool {
        self.halted.borrow().is_none() && self.position() >= self.target.load(Ordering::Acquire)
    }

    /// Why the projection halted, if it did.
    pub fn halted(&self) -> Option<String> {
        self.halted.borrow().clone()
    }

    /// Waits until the projection applied `seq` (read-your-writes after a
    /// publish). False on timeout.
    pub async fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.position.clone();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A receiver that changes whenever the position moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.position.clone()
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
        state: Arc<RwLock<F>>,
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
        let progress = Progress {
            position: position_rx,
            target: target.clone(),
            halted: halted_rx,
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
            },
            progress,
        )
    }

    /// Follows the stream until `stop` is cancelled. Bus failures are retried
    /// with a pause; a poison message halts it and is returned.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> Result<(), ProjectionError> {
        loop {
            match self.run_once(&stop, false).await {
                Ok(()) => break,
                Err(e @ ProjectionError::Bus { .. }) => {
                    tracing::warn!(error = %e, "projection interrupted, resuming from its checkpoint");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
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
        let last = match self.spec.filter_subject {
            None => {
                stream
                    .get_info()
                    .await
                    .map_err(|e| self.bus(e))?
                    .state
                    .last_sequence
            }
            Some(filter) => match stream.get_last_raw_message_by_subject(filter).await {
                Ok(message) => message.sequence,
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    0
                }
                Err(e) => return Err(self.bus(e)),
            },
        };
        let filter_subject = self.spec.filter_subject.unwrap_or_default().to_owned();
        self.target.store(last, Ordering::Release);
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
        let consumed = self.metrics.consumed(self.spec.stream, &self.spec.id);
        let lag = self.metrics.consumer_lag(&self.spec.id);
        // One batch is applied (off the runtime) while the next one arrives
        // and is decoded; batches still commit strictly in order.
        let mut applying: Option<Applying> = None;
        loop {
            let first = match applying.as_mut() {
                Some(flight) => tokio::select! {
                    () = stop.cancelled() => break,
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
                    next = messages.next() => next,
                },
            };
            let first = first.ok_or_else(|| self.bus("message stream ended"))?;
            // Linger briefly so a busy stream is applied in full batches.
            let size =
                |m: &Result<jetstream::Message, String>| m.as_ref().map_or(0, |m| m.payload.len());
            let mut bytes = size(&first);
            let mut chunk = vec![first];
            let linger = tokio::time::Instant::now() + BATCH_LINGER;
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
                            message: e.to_string(),
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
        if let Some(flight) = applying.take() {
            self.settle(flight).await?;
        }
        Ok(())
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

/// Applies events in order, one atomic batch per run of events between
/// barriers, each committing its last sequence as the checkpoint. Events at or
/// below the stored checkpoint are skipped. Synchronous: call it off the async
/// runtime. The runner uses it; so do tests that drive a projection directly.
pub fn apply_events<P: Projection>(
    tree: &Tree,
    projection: &P,
    id: &str,
    events: &[StoredEvent],
) -> Result<(), ProjectionError> {
    let checkpoint = read_checkpoint(tree).map_err(|source| ProjectionError::Storage {
        id: id.to_owned(),
        source,
    })?;
    let fresh: Vec<&StoredEvent> = events.iter().filter(|e| e.seq > checkpoint).collect();
    let mut start = 0;
    while start < fresh.len() {
        let mut end = start + 1;
        while end < fresh.len() && !projection.is_barrier(fresh[end]) {
            end += 1;
        }
        apply_batch(tree, projection, id, &fresh[start..end])?;
        start = end;
    }
    Ok(())
}

fn apply_batch<P: Projection>(
    tree: &Tree,
    projection: &P,
    id: &str,
    events: &[&StoredEvent],
) -> Result<(), ProjectionError> {
    let newest = events.last().map_or(0, |e| e.seq);
    let poison = |seq, message| ProjectionError::Poison {
        id: id.to_owned(),
        seq,
        message,
    };
    if let Some(first) = events.first() {
        projection.prepare(tree).map_err(|m| poison(first.seq, m))?;
    }
    let scanned = match events.first() {
        Some(first) if projection.is_barrier(first) => projection
            .scan(tree, first)
            .map_err(|m| poison(first.seq, m))?,
        _ => Scanned::new(),
    };
    let no_scan = Scanned::new();
    let mut ctx = Ctx::new(tree, &scanned, events.first().map_or(0, |e| e.seq));
    for (i, event) in events.iter().enumerate() {
        if i == 1 {
            ctx.scanned = &no_scan;
        }
        projection
            .apply(&mut ctx, event)
            .map_err(|m| poison(event.seq, m))?;
    }
    projection.finish(&mut ctx).map_err(|m| poison(newest, m))?;
    let mut batch = tree.batch();
    for (key, value) in ctx.writes {
        match value {
            Some(v) => batch.insert(key, v),
            None => batch.remove(key),
        }
    }
    for (key, value) in ctx.appends {
        batch.insert(key, value);
    }
    batch.insert(CHECKPOINT_KEY, newest.to_be_bytes());
    tree.apply(batch)
        .map_err(|source| ProjectionError::Storage {
            id: id.to_owned(),
            source,
        })
}

/// The items of a value built by [`Ctx::append`], in the order appended.
pub fn items(value: &[u8]) -> impl Iterator<Item = Result<&[u8], String>> {
    let mut rest = value;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let item = rest
            .split_first_chunk::<4>()
            .map(|(len, tail)| (u32::from_be_bytes(*len) as usize, tail))
            .filter(|(len, tail)| *len <= tail.len())
            .map(|(len, tail)| tail.split_at(len));
        match item {
            Some((item, tail)) => {
                rest = tail;
                Some(Ok(item))
            }
            None => {
                rest = &[];
                Some(Err("truncated item list".to_owned()))
            }
        }
    })
}

/// Key of the layout version of a projection's tree (bookkeeping).
pub const FORMAT_KEY: &[u8] = b"\xff\xffformat";

/// Makes sure `tree` holds state in layout `version`. A tree written in
/// another layout (or before layouts were versioned) is a cache the log can
/// rebuild, so it is cleared and its projection replays from sequence 1.
/// Returns the layout found when it cleared the tree (0: unversioned).
pub fn ensure_format(tree: &Tree, version: u32) -> Result<Option<u32>, StoreError> {
    let found = tree
        .get(FORMAT_KEY)?
        .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
        .map(u32::from_be_bytes);
    if found == Some(version) {
        return Ok(None);
    }
    let replaced = if tree.is_empty()? {
        None
    } else {
        tree.clear()?;
        Some(found.unwrap_or(0))
    };
    tree.insert(FORMAT_KEY, version.to_be_bytes())?;
    Ok(replaced)
}

/// The checkpoint stored in `tree` (0 when none).
pub fn read_checkpoint(tree: &Tree) -> Result<u64, StoreError> {
    Ok(tree
        .get(CHECKPOINT_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// SHA-256 over every key and value of the tree except bookkeeping, hex. Two
/// trees with the same digest hold the same projection.
pub fn digest(tree: &Tree) -> Result<String, StoreError> {
    let mut hasher = Sha256::new();
    for entry in tree.iter() {
        let (k, v) = entry?;
        if k.starts_with(META_PREFIX) {
            continue;
        }
        hasher.update((k.len() as u64).to_be_bytes());
        hasher.update(&k);
        hasher.update((v.len() as u64).to_be_bytes());
        hasher.update(&v);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends each event's subject to one key, and its sequence to a key
    /// per batch.
    struct Appender;

    impl Projection for Appender {
        fn apply(&self, ctx: &mut Ctx<'_>, event: &StoredEvent) -> Result<(), String> {
            let per_batch = [b"batch/".as_slice(), &ctx.batch_start().to_be_bytes()].concat();
            ctx.append(per_batch, &event.seq.to_be_bytes())?;
            ctx.append(b"all".to_vec(), event.subject.as_bytes())
        }
    }

    fn event(seq: u64) -> StoredEvent {
        StoredEvent {
            seq,
            subject: format!("s{seq}"),
            envelope: Envelope {
                event_id: uuid::Uuid::nil(),
                event_type: "test".into(),
                schema_version: 1,
                occurred_at_ms: 0,
                causation_id: None,
                correlation_id: None,
                traceparent: None,
                payload: Vec::new(),
            },
        }
    }

    #[test]
    fn appended_items_accumulate_per_key_across_batches_once_each() {
        let db = crate::store::Db::temporary().unwrap();
        let tree = db.open_tree("t").unwrap();
        let events: Vec<StoredEvent> = (1..=5).map(event).collect();
        apply_events(&tree, &Appender, "t", &events[..3]).unwrap();
        apply_events(&tree, &Appender, "t", &events[1..]).unwrap(); // 2 and 3 again
        let all = tree.get(b"all").unwrap().unwrap();
        let subjects: Vec<&[u8]> = items(&all).collect::<Result<_, _>>().unwrap();
        assert_eq!(subjects, [&b"s1"[..], b"s2", b"s3", b"s4", b"s5"]);
        let batches: Vec<(Vec<u8>, Vec<u64>)> = tree
            .scan_prefix(b"batch/")
            .map(|e| {
                let (k, v) = e.unwrap();
                let seqs = items(&v)
                    .map(|i| u64::from_be_bytes(i.unwrap().try_into().unwrap()))
                    .collect();
                (k[6..].to_vec(), seqs)
            })
            .collect();
        assert_eq!(
            batches,
            [
                (1u64.to_be_bytes().to_vec(), vec![1, 2, 3]),
                (4u64.to_be_bytes().to_vec(), vec![4, 5]),
            ]
        );
        assert!(
            items(&[0, 0, 0, 9, 1]).next().unwrap().is_err(),
            "truncated"
        );
    }

    #[test]
    fn a_tree_in_another_layout_is_cleared_for_a_replay() {
        let db = crate::store::Db::temporary().unwrap();
        let tree = db.open_tree("t").unwrap();
        assert_eq!(ensure_format(&tree, 2).unwrap(), None, "empty: just marked");
        tree.insert(b"a1", b"x").unwrap();
        tree.insert(CHECKPOINT_KEY, 7u64.to_be_bytes()).unwrap();
        assert_eq!(ensure_format(&tree, 2).unwrap(), None, "same layout: kept");
        assert_eq!(read_checkpoint(&tree).unwrap(), 7);

        assert_eq!(ensure_format(&tree, 3).unwrap(), Some(2));
        assert_eq!(read_checkpoint(&tree).unwrap(), 0, "replays from the start");
        assert!(tree.get(b"a1").unwrap().is_none());
        assert_eq!(ensure_format(&tree, 3).unwrap(), None);

        tree.remove(FORMAT_KEY).unwrap();
        tree.insert(b"a1", b"x").unwrap();
        assert_eq!(ensure_format(&tree, 3).unwrap(), Some(0), "unversioned");
        assert_eq!(tree.len().unwrap(), 1, "only the layout mark is left");
    }
}
