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
//!
//! Modules: [`runner`] (reading the stream, batching, acking),
//! [`apply`] (one atomic batch per run of events), [`layout`] (the
//! checkpoint, the layout version and the digest of a tree).

mod apply;
mod layout;
mod runner;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use meridian_schemas::Envelope;
use tokio::sync::watch;

use crate::store::{StoreError, Tree, Value};

pub use apply::{CorruptList, apply_events, items};
pub use layout::{CHECKPOINT_KEY, FORMAT_KEY, digest, ensure_format, read_checkpoint};
pub use runner::{InMemory, Runner, Sink, Stored};

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
    pub fn append(&mut self, key: impl Into<Vec<u8>>, item: &[u8]) -> Result<(), StoreError> {
        let key = key.into();
        let value = match self.appends.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let existing = match self.writes.get(e.key()) {
                    Some(pending) => pending.clone(),
                    None => self.tree.get(e.key())?,
                };
                e.insert(existing.map(|v| v.to_vec()).unwrap_or_default())
            }
        };
        let len = u32::try_from(item.len())
            .map_err(|_| StoreError::Io(std::io::Error::other("a list item over 4 GiB")))?;
        value.extend_from_slice(&len.to_be_bytes());
        value.extend_from_slice(item);
        Ok(())
    }

    /// The value of `key` as this batch sees it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value>, StoreError> {
        match self.writes.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => self.tree.get(key),
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
    /// What applying can fail with: the projection's own error type, which
    /// a store failure converts into.
    type Error: std::error::Error + From<StoreError> + Send + Sync + 'static;

    /// Applies one event. It must depend only on the state it reads through
    /// `ctx` and the event. An error discards the whole batch and halts the
    /// projection (the message is poison: an operator must look).
    fn apply(&self, ctx: &mut Ctx<'_>, event: &StoredEvent) -> Result<(), Self::Error>;

    /// Whether the event needs to scan state; such an event starts a new
    /// batch after everything before it is committed.
    fn is_barrier(&self, _event: &StoredEvent) -> bool {
        false
    }

    /// For a barrier: reads the rows it needs from the committed tree before
    /// its batch starts. Everything before a barrier is committed and the
    /// runner is the only writer, so this is exactly the state the barrier
    /// applies to.
    fn scan(&self, _committed: &Tree, _event: &StoredEvent) -> Result<Scanned, Self::Error> {
        Ok(Vec::new())
    }

    /// Called with the committed tree before every batch: the place to load
    /// an in-memory view of committed state once (an index of what exists,
    /// say). Such a view must stay a superset-safe hint: a batch that fails
    /// is discarded, and whatever `apply` remembered from it stays.
    fn prepare(&self, _committed: &Tree) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Called after a batch's last event, before it commits: the place to
    /// write what the projection kept in memory while applying the batch.
    fn finish(&self, _ctx: &mut Ctx<'_>) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A fold of a stream into plain in-memory state, rebuilt at every start.
pub trait Fold: Send + Sync + 'static {
    /// What applying can fail with.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies one event. An error halts the runner (the message is poison).
    fn apply(&mut self, event: &StoredEvent) -> Result<(), Self::Error>;
}

/// In-memory state folded event by event: [`Fold`] for it opens each
/// envelope as [`EventFold::Event`] and applies it at its sequence. The
/// key-issuer, proxy and portal-sync folds are this.
pub trait EventFold: Send + Sync + 'static {
    /// The stream's event type.
    type Event: meridian_schemas::Event;
    /// What a decoded event can still be refused for (an entity inside it
    /// that does not parse).
    type Corrupt: std::error::Error + Send + Sync + 'static;

    /// Applies one event stored at `seq`; applying one at or below the
    /// state's position changes nothing.
    fn apply_event(&mut self, event: &Self::Event, seq: u64) -> Result<(), Self::Corrupt>;
}

/// A view that says what it holds and how far it has read: what
/// `/api/.../digest` answers, compared between replicas and against a
/// rebuild from the log.
pub trait Digested {
    /// SHA-256 (hex) over the whole view.
    fn digest(&self) -> String;
    /// The last stream sequence the view reflects.
    fn position(&self) -> u64;
}

/// Folds `stream` from its first message into a fresh in-memory `S`, as a
/// restarted replica does, and answers its digest and position: what a live
/// replica that read as far answers. `service` names the NATS connection
/// (`meridian-{service}-rebuild`) and the ordered consumer.
pub async fn rebuild_in_memory<S, E>(
    nats_url: &str,
    service: &str,
    stream: &'static str,
) -> Result<crate::http::DigestView, E>
where
    S: Fold + Digested + Default,
    E: From<crate::bus::BusError> + From<ProjectionError>,
{
    let metrics = crate::metrics::Metrics::new();
    let client = crate::bus::connect(
        nats_url,
        &format!("meridian-{service}-rebuild"),
        std::time::Duration::from_secs(10),
        &metrics,
    )
    .await?;
    let js = async_nats::jetstream::new(client);
    crate::bus::ensure_streams(&js, &[stream]).await?;
    let state = std::sync::Arc::new(crate::writer::Lock::new(S::default()));
    let (runner, _) = Runner::in_memory(
        js,
        state.clone(),
        ProjectionSpec::ordered(&format!("{service}-rebuild"), stream),
        &metrics,
    );
    let position = runner.run_until_caught_up().await?;
    let digest = crate::writer::read(&state).digest();
    Ok(crate::http::DigestView { digest, position })
}

/// Why an event could not be applied by an [`EventFold`] (the fold halts).
#[derive(Debug, thiserror::Error)]
pub enum EventFoldError<C: std::error::Error + 'static> {
    /// The envelope or event does not decode.
    #[error(transparent)]
    Decode(#[from] meridian_schemas::DecodeError),
    /// Something inside the event does not parse.
    #[error(transparent)]
    Corrupt(C),
}

impl<T: EventFold> Fold for T {
    type Error = EventFoldError<T::Corrupt>;

    fn apply(&mut self, stored: &StoredEvent) -> Result<(), Self::Error> {
        let event: T::Event = stored.envelope.open()?;
        self.apply_event(&event, stored.seq)
            .map_err(EventFoldError::Corrupt)
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

impl ProjectionSpec {
    /// An in-memory fold's reading: an ordered consumer over the whole
    /// stream, 512 messages a batch.
    pub fn ordered(id: &str, stream: &'static str) -> Self {
        Self {
            id: id.into(),
            stream,
            consumer: ConsumerKind::Ordered,
            batch: 512,
            batch_bytes: usize::MAX,
            filter_subject: None,
        }
    }

    /// Only the stream's messages on `subject` (a NATS wildcard).
    pub fn filtered(self, subject: Option<&'static str>) -> Self {
        Self {
            filter_subject: subject,
            ..self
        }
    }
}

/// Why a projection stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// A message could not be decoded or applied. Not retried.
    #[error("projection {id} halted at stream sequence {seq}: {source}")]
    Poison {
        /// The projection.
        id: String,
        /// The message's sequence.
        seq: u64,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
    /// Where the projection reads, to ask how far the stream is now.
    source: Source,
}

/// A projection's stream (and subject filter), as NATS has it.
#[derive(Clone)]
struct Source {
    js: jetstream::Context,
    stream: &'static str,
    filter: Option<&'static str>,
}

impl Source {
    /// The sequence of the stream's newest message the projection reads (0:
    /// none yet).
    async fn last_sequence(&self) -> Result<u64, crate::bus::BusError> {
        use crate::bus::BusContext;
        let stream = self
            .js
            .get_stream(self.stream)
            .await
            .bus("getting a projection's stream")?;
        match self.filter {
            None => Ok(stream
                .get_info()
                .await
                .bus("reading a stream's state")?
                .state
                .last_sequence),
            Some(filter) => match stream.get_last_raw_message_by_subject(filter).await {
                Ok(message) => Ok(message.sequence),
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    Ok(0)
                }
                Err(e) => Err(e).bus("reading a stream's newest message"),
            },
        }
    }
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

    /// Resolves once the projection has applied everything its stream held
    /// when the projection started ([`Progress::caught_up`]); `Err` with the
    /// reason if it halts first. What a service waits for before it answers
    /// traffic: a view that is behind must not answer.
    pub async fn reached_start(&self) -> Result<(), String> {
        let mut position = self.position.clone();
        let mut halted = self.halted.clone();
        loop {
            if let Some(why) = self.halted() {
                return Err(why);
            }
            if self.caught_up() {
                return Ok(());
            }
            // The runner announces the position again once it has read the
            // stream's end, so a stream with nothing to apply wakes this.
            tokio::select! {
                changed = position.changed() => if changed.is_err() { return Err("the projection stopped".into()) },
                changed = halted.changed() => if changed.is_err() { return Err("the projection stopped".into()) },
            }
        }
    }

    /// A receiver that changes whenever the position moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.position.clone()
    }

    /// Waits (at most `patience`) until the projection has applied every
    /// message its stream holds now: what a read does before it answers
    /// "not found", so that something just written elsewhere (or replayed
    /// after a restart) is found. False when it did not get there in time.
    pub async fn catch_up(&self, patience: Duration) -> bool {
        let caught = tokio::time::timeout(patience, async {
            let last = self.source.last_sequence().await.ok()?;
            self.wait_for(last, patience).await.then_some(())
        })
        .await;
        matches!(caught, Ok(Some(())))
    }
}
